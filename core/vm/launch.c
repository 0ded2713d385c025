/* launch.c - QEMU's command line for a VM, and spawning QEMU with its channels (the
 * control channel, the NIC, virtio-fs back-ends, QMP, a snapshot's stream). */
#define _GNU_SOURCE
#include "vm_priv.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/sockios.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

int gd__vm_build_args(gd_vm *vm, char **argv, size_t cap, char *bufs, size_t bcap)
{
    size_t n = 0, used = 0;
#define ARG(...)                                                                                   \
    do {                                                                                           \
        if (n + 1 >= cap || used >= bcap)                                                          \
            return -E2BIG;                                                                         \
        int _l = snprintf(bufs + used, bcap - used, __VA_ARGS__);                                  \
        if (_l < 0 || (size_t)_l >= bcap - used)                                                   \
            return -E2BIG;                                                                         \
        argv[n++] = bufs + used;                                                                   \
        used += (size_t)_l + 1;                                                                    \
    } while (0)
    int kvm = !strcmp(vm->accel, "kvm");
    ARG("%s", vm->qemu);
    ARG("-nodefaults");
    ARG("-no-user-config");
    ARG("-display");
    ARG("none");
    ARG("-no-reboot");
    ARG("-monitor");
    ARG("none");
    ARG("-chardev"); /* QMP (snapshots) on a socketpair, like the control channel */
    ARG("socket,id=qmp,fd=%d", GD__VM_QMP_FD);
    ARG("-mon");
    ARG("chardev=qmp,mode=control");
    size_t nfs = vm->o.nfs;
    if (nfs) {
        /* vhost-user back-ends map guest RAM: it must be a shared memfd */
        ARG("-object");
        ARG("memory-backend-memfd,id=mem,size=%uM,share=on", vm->o.memory_mb);
    }
    ARG("-machine");
    ARG("microvm,accel=%s,isa-serial=on,rtc=on%s", vm->accel, nfs ? ",memory-backend=mem" : "");
    ARG("-cpu");
    ARG("%s", kvm ? "host" : "max");
    ARG("-m");
    ARG("%u", vm->o.memory_mb);
    ARG("-smp");
    ARG("%u", vm->o.cpus);
    ARG("-kernel");
    ARG("%s", vm->img.kernel);
    ARG("-initrd");
    ARG("%s", vm->img.initramfs);
    /* TCG: QEMU's TSC is the host's plus one offset for every vCPU, in step and at the
     * host's rate, but the kernel's sync check fails on the uneven scheduling of vCPU
     * threads and falls back to refined-jiffies, which loses time whenever a tick is
     * late: on a loaded host the guest's clock fell 1 s behind in 6 s. tsc=reliable
     * keeps the TSC (KVM guests have kvm-clock). */
    long khz = kvm ? 0 : gd__vm_cpu_khz();
    char tsc[80] = "";
    if (!kvm)
        snprintf(tsc, sizeof(tsc), " tsc=reliable");
    if (khz > 0)
        snprintf(tsc + strlen(tsc), sizeof(tsc) - strlen(tsc), " tsc_early_khz=%ld", khz);
    const char *mode = vm->o.rootfs_mode ? vm->o.rootfs_mode : vm->img.rootfs_mode;
    int rw = mode && !strcmp(mode, "rw"), cow = vm->o.disk != NULL;
    const char *rootarg = rw || cow                           ? " gondolin.rootfs=rw"
                          : mode && !strcmp(mode, "readonly") ? " gondolin.rootfs=readonly"
                                                              : "";
    /* " gondolin.mounts=gdfs0:/a,gdfs1:/a/b": tags and paths, parents first */
    char mounts[GD_VM_MAX_FS * 300 + 32] = "";
    for (size_t i = 0, l = 0; i < nfs; i++) {
        size_t k = vm->fs_order[i];
        l += (size_t)snprintf(mounts + l, sizeof(mounts) - l, "%s%s:%s",
                              i ? "," : " gondolin.mounts=", vm->fs[k].tag, vm->fs[k].guest);
    }
    ARG("-append");
    /* async probe: the disk and the port probe while init loads the next module */
    ARG("console=ttyS0 quiet loglevel=1 panic=-1 reboot=t 8250.nr_uarts=1 i8042.noaux "
        "i8042.nokbd cryptomgr.notests driver_async_probe=virtio_blk,virtio_console%s%s%s%s%s%s%s",
        tsc, rootarg, vm->o.bare ? " gondolin.poweroff" : "",
        vm->o.rawecho ? " gondolin.rawecho" : "", mounts, vm->o.append ? " " : "",
        vm->o.append ? vm->o.append : "");
    if (nfs && strlen(argv[n - 1]) > 2047)
        return -E2BIG; /* the kernel's COMMAND_LINE_SIZE: the mounts would be cut off */
    ARG("-chardev");
    ARG("stdio,id=con,signal=off");
    ARG("-serial");
    ARG("chardev:con");
    ARG("-drive");
    if (cow) /* its backing chain (the image, a checkpoint) is opened read-only */
        ARG("file=%s,format=qcow2,if=none,id=root,cache=writeback,discard=unmap", vm->o.disk);
    else if (rw)
        ARG("file=%s,format=raw,if=none,id=root,cache=writeback", vm->img.rootfs);
    else
        ARG("file=%s,format=raw,if=none,id=root,readonly=on,cache=unsafe", vm->img.rootfs);
    ARG("-device");
    ARG("virtio-blk-device,drive=root");
    ARG("-chardev");
    ARG("socket,id=ctl,fd=3");
    ARG("-device");
    ARG("virtio-serial-device,max_ports=2");
    ARG("-device");
    ARG("virtserialport,chardev=ctl,name=gondolin.ctl");
    if (vm->o.net_fd > 0) {
        ARG("-netdev");
        ARG("socket,id=n0,fd=4");
        ARG("-device");
        ARG("virtio-net-device,netdev=n0,mac=52:54:00:67:64:01");
    }
    if (nfs) {
        /* vhost-user-fs needs modern virtio-mmio (legacy: QEMU's vring setup fails) */
        ARG("-global");
        ARG("virtio-mmio.force-legacy=false");
    }
    for (size_t i = 0; i < nfs; i++) {
        ARG("-chardev");
        ARG("socket,id=fs%zu,fd=%zu", i, 5 + i); /* gd__vm_launch() puts mount i's socket there */
        ARG("-device");
        ARG("vhost-user-fs-device,queue-size=1024,chardev=fs%zu,tag=%s", i, vm->fs[i].tag);
    }
    argv[n] = NULL;
    return 0;
#undef ARG
}

static int open_pipe(gd_vm *vm, uv_pipe_t *p, int fd, int *flag, uv_read_cb cb)
{
    uv_pipe_init(vm->loop, p, 0);
    p->data = vm;
    int rc = uv_pipe_open(p, fd);
    if (rc) {
        close(fd);
        return rc;
    }
    *flag = 1;
    if (cb)
        uv_read_start((uv_stream_t *)p, gd__vm_alloc_small, cb);
    return 0;
}

static void close_pair(int *p, int other)
{
    close(p[0]);
    close(p[1]);
    if (other >= 0)
        close(other);
}

static void on_qmp_event(gd_qmp *q, const char *name, const cJSON *data, void *ud)
{
    (void)q;
    gd_vm *vm = ud;
    gd__bootsnap_on_event(vm->snap, name, data);
    gd__memsave_on_event(vm, name, data);
}

int gd__vm_launch(gd_vm *vm)
{
    char *argv[96]; /* 40 without mounts; 4 more with any, and 4 per mount */
    char *bufs = malloc(16384);
    if (!bufs)
        return -ENOMEM;
    int rc = gd__vm_build_args(vm, argv, 96, bufs, 16384);
    if (rc) {
        free(bufs);
        return rc;
    }
    /* a booted snapshot of this very command line: restore it (-S: the guest runs only
     * once the stream is in and its checksum matched). Not while KVM is on trial. */
    int inc = vm->snap && (!vm->accel_auto || vm->o.resume)
                  ? gd__bootsnap_prepare(vm->snap, argv, vm->qemu)
                  : -1;
    if (inc == -2) { /* a memory snapshot that does not fit: the start fails */
        snprintf(vm->errmsg, sizeof(vm->errmsg), "%s", gd__bootsnap_refusal(vm->snap));
        free(bufs);
        return -EINVAL;
    }
    if (inc >= 0) {
        size_t n = 0;
        while (argv[n])
            n++;
        /* defer: snapshot.c turns on migration events first, then migrate-incoming */
        static char incoming[] = "-incoming", paused[] = "-S", defer[] = "defer";
        argv[n++] = paused;
        argv[n++] = incoming;
        argv[n++] = defer;
        argv[n] = NULL;
    }
    if (vm->o.verbose) {
        fprintf(stderr, "gondolin: qemu:");
        for (char **a = argv; *a; a++)
            fprintf(stderr, " %s", *a);
        fputc('\n', stderr);
    }
    int sp[2], ep[2], cp[2], qp[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, qp)) {
        rc = -errno;
        if (inc >= 0)
            close(inc);
        free(bufs);
        return rc;
    }
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp)) {
        rc = -errno;
        close(qp[0]);
        close(qp[1]);
        if (inc >= 0)
            close(inc);
        free(bufs);
        return rc;
    }
    if (pipe2(ep, O_CLOEXEC)) {
        rc = -errno;
        close_pair(qp, inc);
        close(sp[0]);
        close(sp[1]);
        free(bufs);
        return rc;
    }
    if (pipe2(cp, O_CLOEXEC)) {
        rc = -errno;
        close_pair(qp, inc);
        close(sp[0]);
        close(sp[1]);
        close(ep[0]);
        close(ep[1]);
        free(bufs);
        return rc;
    }
    int setsize = 1 << 20; /* bigger socket buffers: fewer wakeups on bulk output */
    setsockopt(sp[0], SOL_SOCKET, SO_RCVBUF, &setsize, sizeof(setsize));
    setsockopt(sp[1], SOL_SOCKET, SO_SNDBUF, &setsize, sizeof(setsize));
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        rc = -errno;
        close_pair(qp, inc);
        close(sp[0]);
        close(sp[1]);
        close(ep[0]);
        close(ep[1]);
        close(cp[0]);
        close(cp[1]);
        free(bufs);
        return rc;
    }
    if (pid == 0) {
        /* the VM dies with us, even on SIGKILL */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        setpgid(0, 0); /* terminal signals (Ctrl-C) go to us, not QEMU */
        int nfd = vm->o.net_fd > 0 ? fcntl(vm->o.net_fd, F_DUPFD, 10) : -1;
        /* out of the way of every target below before any dup2 */
        int ffd[GD_VM_MAX_FS];
        for (size_t i = 0; i < vm->o.nfs; i++)
            ffd[i] = fcntl(vm->fs[i].fd, F_DUPFD, 100);
        int qfd = fcntl(qp[1], F_DUPFD, 200);
        int ifd = inc >= 0 ? fcntl(inc, F_DUPFD, 200) : -1;
        int nul = open("/dev/null", O_RDWR);
        dup2(nul, 0);
        dup2(cp[1], 1);
        dup2(ep[1], 2);
        dup2(sp[1], 3);
        if (nfd >= 0)
            dup2(nfd, 4);
        else if (vm->o.nfs)
            close(4);
        for (size_t i = 0; i < vm->o.nfs; i++)
            dup2(ffd[i], (int)(5 + i)); /* QEMU's -chardev socket,fd=5+i */
        dup2(qfd, GD__VM_QMP_FD);
        if (ifd >= 0)
            dup2(ifd, GD__VM_INCOMING_FD);
        syscall(SYS_close_range,
                vm->o.nfs  ? (unsigned)(5 + vm->o.nfs)
                : nfd >= 0 ? 5
                           : 4,
                GD__VM_QMP_FD - 1, 0);
        syscall(SYS_close_range, ifd >= 0 ? GD__VM_INCOMING_FD + 1 : GD__VM_QMP_FD + 1, ~0u, 0);
        execvp(argv[0], argv);
        dprintf(2, "cannot execute %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    free(bufs);
    close(sp[1]);
    close(ep[1]);
    close(cp[1]);
    close(qp[1]);
    if (inc >= 0)
        close(inc);
    vm->pid = pid;
    vm->reaped = 0;
    vm->pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
    if (vm->pidfd < 0) {
        rc = -errno;
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        close(qp[0]);
        close(sp[0]);
        close(ep[0]);
        close(cp[0]);
        return rc;
    }
    uv_poll_init(vm->loop, &vm->pid_poll, vm->pidfd);
    vm->pid_poll.data = vm;
    vm->pid_poll_open = 1;
    uv_poll_start(&vm->pid_poll, UV_READABLE, gd__vm_on_pid_exit);
    if (gd_qmp_new(vm->loop, qp[0], on_qmp_event, vm, &vm->qmp) == 0)
        vm->qmp_open = 1;
    open_pipe(vm, &vm->errp, ep[0], &vm->errp_open, gd__vm_on_err_read);
    open_pipe(vm, &vm->conp, cp[0], &vm->conp_open, gd__vm_on_con_read);
    gd_reader_init(&vm->rd, vm->rbuf, GD_PROTO_HDR_LEN + GD_PROTO_MAX_BODY);
    if (vm->o.rawecho) {
        vm->raw_fd = sp[0];
        uv_poll_init(vm->loop, &vm->raw_poll, vm->raw_fd);
        vm->raw_poll.data = vm;
        vm->raw_poll_open = 1;
        uv_poll_start(&vm->raw_poll, UV_READABLE, gd__vm_on_raw_ready);
    } else {
        uv_pipe_init(vm->loop, &vm->ctl, 0);
        vm->ctl.data = vm;
        if ((rc = uv_pipe_open(&vm->ctl, sp[0]))) {
            close(sp[0]);
            return rc;
        }
        vm->ctl_open = 1;
        uv_read_start((uv_stream_t *)&vm->ctl, gd__vm_alloc_ctl, gd__vm_on_ctl_read);
    }
    gd__bootsnap_launched(vm->snap);
    return 0;
}

int gd_vm_shape(gd_vm *vm, uint8_t shape[32])
{
    char *argv[96];
    char *bufs = malloc(16384);
    if (!bufs)
        return -ENOMEM;
    int rc = gd__vm_build_args(vm, argv, 96, bufs, 16384);
    if (!rc)
        gd__vm_argv_key(vm->img.build_id, argv, vm->qemu, 1, shape);
    free(bufs);
    return rc;
}
