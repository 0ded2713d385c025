/* vm.c - the VM object: options, QEMU's process and its teardown, the start's timeout,
 * what snapshot.c and memsave.c reach (vm_priv.h: launch.c, channel.c). */
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

void gd__vm_failf(gd_vm *vm, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

unsigned gd__vm_kvm_watchdog_ms(void)
{
    const char *e = getenv("GONDOLIN_KVM_WATCHDOG_MS");
    unsigned v = e ? (unsigned)strtoul(e, NULL, 10) : 0;
    return v ? v : KVM_WATCHDOG_MS;
}
int gd__vm_launch(gd_vm *vm);

const char *gd_vm_error(const gd_vm *vm)
{
    return vm->errmsg;
}
const char *gd_vm_accel(const gd_vm *vm)
{
    return vm->accel;
}
const char *gd_vm_agent(const gd_vm *vm)
{
    return vm->agent;
}
int gd_vm_raw_fd(gd_vm *vm)
{
    return vm->raw_fd;
}

const char *gd_vm_console_tail(const gd_vm *vm)
{
    gd_vm *m = (gd_vm *)vm;
    gd__tail_get(&m->con_tail, m->console_clean, sizeof(m->console_clean), 12);
    return m->console_clean;
}

long gd__vm_cpu_khz(void)
{
    FILE *f = fopen("/proc/cpuinfo", "re");
    if (!f)
        return 0;
    char line[256];
    double mhz = 0;
    while (fgets(line, sizeof(line), f))
        if (!strncmp(line, "cpu MHz", 7)) {
            char *c = strchr(line, ':');
            if (c)
                mhz = strtod(c + 1, NULL);
            break;
        }
    fclose(f);
    return (long)(mhz * 1000);
}

/* A VM object with no QEMU yet: defaults and the channel's frame buffer. */
gd_vm *gd__vm_alloc(uv_loop_t *loop)
{
    gd_vm *vm = calloc(1, sizeof(*vm));
    if (!vm)
        return NULL;
    vm->loop = loop;
    vm->pidfd = -1;
    vm->raw_fd = -1;
    vm->next_id = 1;
    vm->rbuf = malloc(GD_PROTO_HDR_LEN + GD_PROTO_MAX_BODY);
    if (!vm->rbuf) {
        free(vm);
        return NULL;
    }
    gd_reader_init(&vm->rd, vm->rbuf, GD_PROTO_HDR_LEN + GD_PROTO_MAX_BODY);
    return vm;
}

/* A guest mount point: see struct gd_vm_fs. It ends up on the kernel command line,
 * where ',', ':' and spaces would split it. */
static int fs_path_ok(const char *p)
{
    size_t n = strlen(p);
    if (n < 2 || n > 255 || p[0] != '/' || p[n - 1] == '/')
        return 0;
    for (const char *c = p; *c; c++)
        if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') ||
              strchr("/._+@=~-", *c)))
            return 0;
    for (const char *c = p; *c; c++) {
        if (*c != '/')
            continue;
        size_t l = strcspn(c + 1, "/");
        if (l == 0 || (l == 1 && c[1] == '.') || (l == 2 && c[1] == '.' && c[2] == '.'))
            return 0;
    }
    static const char *const sys[] = {"/proc", "/sys", "/dev"};
    for (size_t i = 0; i < 3; i++) {
        size_t l = strlen(sys[i]);
        if (!strncmp(p, sys[i], l) && (p[l] == 0 || p[l] == '/'))
            return 0;
    }
    return 1;
}

static size_t fs_depth(const char *p)
{
    size_t d = 0;
    for (; *p; p++)
        d += *p == '/';
    return d;
}

static int fs_copy(gd_vm *vm, const struct gd_vm_opts *o, struct gd_err *err)
{
    vm->o.fs = NULL;
    vm->o.nfs = 0;
    if (!o->nfs)
        return 0;
    if (o->nfs > GD_VM_MAX_FS || !o->fs)
        return gd_err_set(err, -EINVAL, "at most %d file system mounts", GD_VM_MAX_FS);
    for (size_t i = 0; i < o->nfs; i++) {
        const char *g = o->fs[i].guest;
        if (!g || !fs_path_ok(g))
            return gd_err_set(err, -EINVAL,
                              "mount point '%s': must be an absolute, normalised path of "
                              "letters, digits and ._+@=~- outside /proc, /sys and /dev",
                              g ? g : "");
        if (o->fs[i].fd < 0)
            return gd_err_set(err, -EBADF, "mount point '%s': no back-end socket", g);
        for (size_t j = 0; j < i; j++)
            if (!strcmp(vm->fs[j].guest, g))
                return gd_err_set(err, -EINVAL, "mount point '%s' given twice", g);
        char tag[32];
        const char *t = o->fs[i].tag;
        if (t && (!*t || strlen(t) >= sizeof(tag) ||
                  strspn(t, "abcdefghijklmnopqrstuvwxyz0123456789_-") != strlen(t)))
            return gd_err_set(err, -EINVAL, "mount point '%s': bad tag", g);
        snprintf(tag, sizeof(tag), "%s", t ? t : "");
        if (!t)
            snprintf(tag, sizeof(tag), "gdfs%zu", i);
        for (size_t j = 0; j < i; j++)
            if (!strcmp(vm->fs[j].tag, tag))
                return gd_err_set(err, -EINVAL, "mount tag '%s' given twice", tag);
        vm->fs[i].tag = strdup(tag);
        vm->fs[i].guest = strdup(g);
        vm->o.nfs = i + 1; /* both freed by gd_vm_free */
        if (!vm->fs[i].tag || !vm->fs[i].guest)
            return gd_err_set(err, -ENOMEM, "out of memory");
        vm->fs[i].fd = o->fs[i].fd;
        /* insertion by depth, stable: a parent is mounted before what lies in it */
        size_t k = i;
        while (k > 0 && fs_depth(vm->fs[vm->fs_order[k - 1]].guest) > fs_depth(g)) {
            vm->fs_order[k] = vm->fs_order[k - 1];
            k--;
        }
        vm->fs_order[k] = i;
    }
    vm->o.fs = vm->fs;
    return 0;
}

int gd_vm_new(uv_loop_t *loop, const struct gd_vm_opts *o, gd_vm **out, struct gd_err *err)
{
    if (!o->image_dir)
        return gd_err_set(err, -EINVAL, "no image directory given");
    gd_vm *vm = gd__vm_alloc(loop);
    if (!vm)
        return gd_err_set(err, -ENOMEM, "out of memory");
    vm->o = *o;
    int rc = fs_copy(vm, o, err);
    if (rc)
        goto fail;
    rc = gd_image_load(o->image_dir, 1, &vm->img, err);
    if (rc)
        goto fail;
    vm->o.image_dir = vm->img.dir;
    const char *mode = o->rootfs_mode ? o->rootfs_mode : vm->img.rootfs_mode;
    if (mode && !strcmp(mode, "cow")) {
        /* the guest's root is the overlay itself, read-write */
        if (!o->disk || !*o->disk || strlen(o->disk) >= sizeof(vm->disk) || strchr(o->disk, ',')) {
            rc = gd_err_set(err, -EINVAL,
                            "rootfs mode cow needs a qcow2 overlay (gd_sandbox makes one)%s",
                            o->disk && strchr(o->disk, ',') ? ": its path has a ','" : "");
            goto fail;
        }
        snprintf(vm->disk, sizeof(vm->disk), "%s", o->disk);
    }
    vm->o.disk = vm->disk[0] ? vm->disk : NULL;
    if (!vm->o.memory_mb)
        vm->o.memory_mb = 1024;
    if (!vm->o.cpus)
        vm->o.cpus = 2; /* as the reference; MTTCG runs them on two host threads */
    if (vm->o.memory_mb < 128 || vm->o.memory_mb > 1024 * 1024) {
        rc = gd_err_set(err, -EINVAL, "memory must be between 128 MiB and 1 TiB");
        goto fail;
    }
    if (vm->o.cpus > 64) {
        rc = gd_err_set(err, -EINVAL, "cpus must be between 1 and 64");
        goto fail;
    }
    if (!vm->o.start_timeout_ms) {
        const char *t = getenv("GONDOLIN_START_TIMEOUT_MS");
        vm->o.start_timeout_ms = t ? (unsigned)strtoul(t, NULL, 10) : 0;
        if (!vm->o.start_timeout_ms)
            vm->o.start_timeout_ms = 60000;
    }
    snprintf(vm->qemu, sizeof(vm->qemu), "%s",
             o->qemu && *o->qemu ? o->qemu : gd_qemu_binary(vm->img.arch));
    const char *append = o->append ? o->append : getenv("GONDOLIN_APPEND");
    vm->append = append ? strdup(append) : NULL;
    vm->o.append = vm->append;
    const char *accel = o->accel && *o->accel ? o->accel : getenv("GONDOLIN_ACCEL");
    if (!accel || !*accel || !strcmp(accel, "auto")) {
        char why[256];
        int verdict = gd_kvm_cached_verdict(vm->qemu, NULL, 0);
        int api_ok = gd_kvm_api_probe(why, sizeof(why)) == 0;
        if (!api_ok || verdict == 0) {
            strcpy(vm->accel, "tcg");
        } else {
            strcpy(vm->accel, "kvm");
            vm->accel_auto = verdict < 0;
        }
    } else if (!strcmp(accel, "kvm") || !strcmp(accel, "tcg")) {
        snprintf(vm->accel, sizeof(vm->accel), "%s", accel);
    } else {
        rc = gd_err_set(err, -EINVAL, "unknown accelerator '%s' (use kvm, tcg or auto)", accel);
        goto fail;
    }
    const char *rootfs = vm->o.rootfs_mode ? vm->o.rootfs_mode : vm->img.rootfs_mode;
    /* rw writes the image, cow gives each sandbox its own disk (a guest that wrote to its
     * disk before the save would not match another sandbox's fresh disk) */
    if (o->resume) {
        vm->resume = *o->resume;
        snprintf(vm->resume_path, sizeof(vm->resume_path), "%s", o->resume->path);
        vm->resume.path = vm->resume_path;
        vm->o.resume = &vm->resume;
        if ((rc = gd__bootsnap_new_resume(vm, vm->img.build_id, &vm->resume, &vm->snap))) {
            rc = gd_err_set(err, rc, "memory snapshot %s: bad stream bounds", o->resume->path);
            goto fail;
        }
    } else if (o->boot_snapshot && !vm->o.rawecho && !vm->o.bare && !vm->o.nfs &&
               !(rootfs && (!strcmp(rootfs, "rw") || !strcmp(rootfs, "cow"))) &&
               (rc = gd__bootsnap_new(vm, vm->img.build_id, vm->o.memory_mb, vm->o.cpus,
                                      &vm->snap))) {
        rc = gd_err_set(err, rc, "out of memory");
        goto fail;
    }
    *out = vm;
    return 0;
fail:
    gd_vm_free(vm);
    return rc;
}

/* ---- teardown ---- */

void gd__vm_maybe_finish(gd_vm *vm);

static void on_handle_closed(uv_handle_t *h)
{
    gd_vm *vm = h->data;
    vm->pending_close--;
    gd__vm_maybe_finish(vm);
}

void gd__vm_close_handle(gd_vm *vm, uv_handle_t *h, int *flag)
{
    if (!*flag)
        return;
    *flag = 0;
    h->data = vm;
    vm->pending_close++;
    uv_close(h, on_handle_closed);
}

void gd__vm_exec_end(struct gd_exec *x, const struct gd_exec_result *r)
{
    gd_vm *vm = x->vm;
    struct gd_exec **pp = &vm->execs;
    while (*pp && *pp != x)
        pp = &(*pp)->next;
    if (*pp)
        *pp = x->next;
    x->done = 1;
    if (x->cbs.on_exit)
        x->cbs.on_exit(x, r, x->ud);
    free(x);
}

void gd__vm_fail_execs(gd_vm *vm, const char *why)
{
    while (vm->execs) {
        struct gd_exec_result r = {.error = GD_EXEC_VM_GONE, .exit_code = 255, .message = why};
        gd__vm_exec_end(vm->execs, &r);
    }
}

/* The boot is over (ok or not): remember what KVM did. A KVM attempt that failed is
 * reported (one line) and remembered only once TCG has booted the same VM: if TCG fails
 * too, QEMU's trouble was not KVM's, so the error alone is reported and nothing is
 * remembered. */
static void kvm_settle(gd_vm *vm, int ok)
{
    if (ok && vm->accel_auto)
        gd_kvm_record_verdict(vm->qemu, 1, "a guest booted under KVM");
    vm->accel_auto = 0;
    if (ok && vm->kvm_why[0]) {
        fprintf(stderr,
                "gondolin: KVM is present but unusable: %s; using TCG (remembered; --accel kvm "
                "to force)\n",
                vm->kvm_why);
        gd_kvm_record_verdict(vm->qemu, 0, vm->kvm_why);
    }
    vm->kvm_why[0] = 0;
}

/* The KVM attempt failed: boot again under TCG once this QEMU is gone. */
void gd__vm_kvm_fall_back(gd_vm *vm)
{
    vm->accel_auto = 0;
    strcpy(vm->accel, "tcg");
    vm->relaunch = 1;
}

void gd__vm_fire_ready(gd_vm *vm, int status)
{
    if (vm->ready_fired)
        return;
    vm->ready_fired = 1;
    kvm_settle(vm, status == 0);
    if (vm->ready_cb)
        vm->ready_cb(vm, status, vm->ud);
}

void gd__vm_maybe_finish(gd_vm *vm)
{
    if (vm->pending_close || !vm->reaped || vm->ctl_open || vm->errp_open || vm->conp_open ||
        vm->pid_poll_open || vm->timer_open || vm->kill_timer_open || vm->raw_poll_open ||
        vm->qmp_open)
        return;
    if (vm->state == VM_DEAD)
        return;
    if (vm->relaunch) {
        vm->relaunch = 0;
        if (vm->pidfd >= 0)
            close(vm->pidfd);
        vm->pidfd = -1;
        memset(&vm->err_tail, 0, sizeof(vm->err_tail));
        memset(&vm->con_tail, 0, sizeof(vm->con_tail));
        vm->state = VM_NEW;
        int rc = gd_vm_start(vm, vm->ready_cb, vm->exit_cb, vm->ud);
        if (rc == 0)
            return;
        snprintf(vm->errmsg, sizeof(vm->errmsg), "cannot restart QEMU: %s", strerror(-rc));
        vm->reaped = 1;
    }
    vm->state = VM_DEAD;
    const char *reason = vm->errmsg[0] ? vm->errmsg : NULL;
    gd__vm_fail_execs(vm, reason ? reason : "the VM was stopped");
    gd__vm_fire_ready(vm, -EIO);
    if (!vm->exit_fired) {
        vm->exit_fired = 1;
        if (vm->exit_cb)
            vm->exit_cb(vm, reason, vm->ud);
    }
}

static void kill_qemu(gd_vm *vm, int sig)
{
    if (vm->pid > 0 && !vm->reaped)
        kill(vm->pid, sig);
}

static void on_kill_timer(uv_timer_t *t)
{
    gd_vm *vm = t->data;
    kill_qemu(vm, SIGKILL);
}

static void on_qmp_closed(void *ud)
{
    gd_vm *vm = ud;
    vm->pending_close--;
    gd__vm_maybe_finish(vm);
}

/* Begin stopping: close the channel, terminate QEMU; gd__vm_maybe_finish completes it. */
void gd__vm_stop(gd_vm *vm, int sig)
{
    if (vm->state == VM_STOPPING || vm->state == VM_DEAD)
        return;
    vm->state = VM_STOPPING;
    gd__vm_close_handle(vm, (uv_handle_t *)&vm->ctl, &vm->ctl_open);
    if (vm->qmp_open) {
        vm->qmp_open = 0;
        vm->pending_close++;
        gd_qmp_close(vm->qmp, on_qmp_closed, vm);
        vm->qmp = NULL;
    }
    gd__bootsnap_stop(vm->snap);
    gd__memsave_stop(vm);
    gd__vm_close_handle(vm, (uv_handle_t *)&vm->raw_poll, &vm->raw_poll_open);
    if (vm->raw_fd >= 0) {
        close(vm->raw_fd);
        vm->raw_fd = -1;
    }
    gd__vm_close_handle(vm, (uv_handle_t *)&vm->timer, &vm->timer_open);
    if (!vm->reaped) {
        kill_qemu(vm, sig);
        if (!vm->kill_timer_open) {
            uv_timer_init(vm->loop, &vm->kill_timer);
            vm->kill_timer.data = vm;
            vm->kill_timer_open = 1;
            uv_timer_start(&vm->kill_timer, on_kill_timer, 2000, 0);
            uv_unref((uv_handle_t *)&vm->kill_timer);
        }
    }
    gd__vm_maybe_finish(vm);
}

void gd__vm_failf(gd_vm *vm, const char *fmt, ...)
{
    if (!vm->errmsg[0]) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(vm->errmsg, sizeof(vm->errmsg), fmt, ap);
        va_end(ap);
    }
    gd__vm_stop(vm, SIGKILL);
}

void gd_vm_close(gd_vm *vm)
{
    if (vm->state == VM_NEW) {
        vm->state = VM_DEAD;
        return;
    }
    gd__vm_stop(vm, SIGTERM);
}

void gd_vm_free(gd_vm *vm)
{
    if (!vm)
        return;
    if (vm->pidfd >= 0)
        close(vm->pidfd);
    gd__bootsnap_free(vm->snap);
    free(vm->rbuf);
    free(vm->append);
    for (size_t i = 0; i < vm->o.nfs; i++) {
        free((char *)vm->fs[i].tag);
        free((char *)vm->fs[i].guest);
    }
    free(vm);
}

/* ---- QEMU process ---- */

static void drain_into(uv_pipe_t *p, struct tail *t)
{
    uv_os_fd_t fd;
    if (!p || uv_fileno((uv_handle_t *)p, &fd))
        return;
    char buf[4096];
    ssize_t n;
    for (int i = 0; i < 64 && (n = read(fd, buf, sizeof(buf))) > 0; i++)
        gd__tail_add(t, buf, (size_t)n);
}

void gd__vm_on_pid_exit(uv_poll_t *p, int status, int events)
{
    (void)status;
    (void)events;
    gd_vm *vm = p->data;
    int st;
    pid_t r = waitpid(vm->pid, &st, WNOHANG);
    if (r == 0)
        return;
    vm->reaped = 1;
    vm->status = st;
    gd__vm_close_handle(vm, (uv_handle_t *)&vm->pid_poll, &vm->pid_poll_open);
    gd__vm_close_handle(vm, (uv_handle_t *)&vm->kill_timer, &vm->kill_timer_open);
    if (vm->state == VM_STARTING && vm->accel_auto) {
        /* QEMU died while trying KVM ("failed to set MSR ... Assertion failed", "KVM
         * internal error"): say how, with the line of its stderr that explains it */
        char line[320];
        drain_into(vm->errp_open ? &vm->errp : NULL, &vm->err_tail);
        gd__tail_relevant(&vm->err_tail, line, sizeof(line));
        const char *sig = WIFSIGNALED(st) ? sigabbrev_np(WTERMSIG(st)) : NULL;
        if (WIFSIGNALED(st))
            snprintf(vm->kvm_why, sizeof(vm->kvm_why), "QEMU crashed under KVM (SIG%s)%s%s",
                     sig ? sig : "?", line[0] ? ": " : "", line);
        else
            snprintf(vm->kvm_why, sizeof(vm->kvm_why), "QEMU exited with status %d under KVM%s%s",
                     WEXITSTATUS(st), line[0] ? ": " : "", line);
        gd__vm_kvm_fall_back(vm);
        gd__vm_close_handle(vm, (uv_handle_t *)&vm->errp, &vm->errp_open);
        gd__vm_close_handle(vm, (uv_handle_t *)&vm->conp, &vm->conp_open);
        gd__vm_stop(vm, SIGKILL);
        return;
    }
    /* QEMU is gone, so all it wrote is in the pipes: take it before explaining */
    drain_into(vm->errp_open ? &vm->errp : NULL, &vm->err_tail);
    drain_into(vm->conp_open ? &vm->conp : NULL, &vm->con_tail);
    if (vm->state == VM_STARTING) {
        char tail[1024], why[1100];
        gd__tail_get(&vm->err_tail, tail, sizeof(tail), 2);
        snprintf(why, sizeof(why), "QEMU exited%s%s", tail[0] ? ": " : "", tail);
        if (gd__bootsnap_on_start_failure(vm->snap, why)) {
            vm->relaunch = 1;
            gd__vm_close_handle(vm, (uv_handle_t *)&vm->errp, &vm->errp_open);
            gd__vm_close_handle(vm, (uv_handle_t *)&vm->conp, &vm->conp_open);
            gd__vm_stop(vm, SIGKILL);
            return;
        }
    }
    if (vm->state != VM_STOPPING) {
        char tail[1024];
        gd__tail_get(&vm->err_tail, tail, sizeof(tail), 6);
        const char *what = gd__tail_contains(&vm->con_tail, "Kernel panic")
                               ? "the guest kernel panicked"
                           : vm->state == VM_STARTING ? "QEMU exited during boot"
                                                      : "the VM stopped (guest powered off)";
        if (WIFSIGNALED(st))
            gd__vm_failf(vm, "%s (QEMU killed by signal %d)%s%s", what, WTERMSIG(st),
                         tail[0] ? "; qemu: " : "", tail);
        else
            gd__vm_failf(vm, "%s (QEMU exit status %d)%s%s", what, WEXITSTATUS(st),
                         tail[0] ? "; qemu: " : "", tail);
    }
    /* drain remaining stderr/console before closing them */
    gd__vm_close_handle(vm, (uv_handle_t *)&vm->errp, &vm->errp_open);
    gd__vm_close_handle(vm, (uv_handle_t *)&vm->conp, &vm->conp_open);
    gd__vm_maybe_finish(vm);
}

void gd__vm_alloc_small(uv_handle_t *h, size_t sz, uv_buf_t *b)
{
    (void)h;
    (void)sz;
    static char buf[4096];
    b->base = buf;
    b->len = sizeof(buf);
}

void gd__vm_on_err_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    gd_vm *vm = s->data;
    if (n > 0)
        gd__tail_add(&vm->err_tail, b->base, (size_t)n);
    else if (n < 0)
        gd__vm_close_handle(vm, (uv_handle_t *)&vm->errp, &vm->errp_open);
}

void gd__vm_on_con_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    gd_vm *vm = s->data;
    if (n > 0) {
        gd__tail_add(&vm->con_tail, b->base, (size_t)n);
        if (getenv("GONDOLIN_CONSOLE"))
            fwrite(b->base, 1, (size_t)n, stderr);
    } else if (n < 0) {
        gd__vm_close_handle(vm, (uv_handle_t *)&vm->conp, &vm->conp_open);
    }
}

static void on_start_timeout(uv_timer_t *t)
{
    gd_vm *vm = t->data;
    if (vm->state != VM_STARTING)
        return;
    if (vm->accel_auto) {
        /* KVM opened fine but the guest never spoke: nested or broken KVM. */
        snprintf(vm->kvm_why, sizeof(vm->kvm_why),
                 "the guest hung under KVM (QEMU ran, no boot within %u ms)",
                 gd__vm_kvm_watchdog_ms());
        gd__vm_kvm_fall_back(vm);
        gd__vm_stop(vm, SIGKILL);
        return;
    }
    char why[64];
    snprintf(why, sizeof(why), "no answer within %.1f s", RESTORE_TIMEOUT_MS / 1e3);
    /* only the restore's own limit condemns the snapshot; a shorter start timeout is the
     * caller's and fails the start as it would a boot */
    if (vm->o.start_timeout_ms > RESTORE_TIMEOUT_MS &&
        gd__bootsnap_on_start_failure(vm->snap, why)) {
        vm->relaunch = 1;
        gd__vm_stop(vm, SIGKILL);
        return;
    }
    char tail[1024];
    gd__tail_get(&vm->err_tail, tail, sizeof(tail), 6);
    gd__vm_failf(vm, "the VM did not start within %u ms (accel %s)%s%s", vm->o.start_timeout_ms,
                 vm->accel, tail[0] ? "; qemu: " : "", tail);
}

int gd_vm_start(gd_vm *vm, gd_vm_ready_cb ready, gd_vm_exit_cb exit_cb, void *ud)
{
    if (vm->state != VM_NEW)
        return -EALREADY;
    vm->ready_cb = ready;
    vm->exit_cb = exit_cb;
    vm->ud = ud;
    vm->errmsg[0] = 0;
    int rc = gd__vm_launch(vm);
    if (rc)
        return rc;
    vm->state = VM_STARTING;
    uv_timer_init(vm->loop, &vm->timer);
    vm->timer.data = vm;
    vm->timer_open = 1;
    unsigned ms = vm->accel_auto ? gd__vm_kvm_watchdog_ms() : vm->o.start_timeout_ms;
    if (!strcmp(gd__bootsnap_mode(vm->snap), "restore") && ms > RESTORE_TIMEOUT_MS)
        ms = RESTORE_TIMEOUT_MS; /* then boot: the start still succeeds */
    uv_timer_start(&vm->timer, on_start_timeout, ms, 0);
    return 0;
}

const char *gd_vm_start_mode(const gd_vm *vm)
{
    return gd__bootsnap_mode(vm->snap);
}

/* ---- for snapshot.c ---- */

uv_loop_t *gd__vm_loop(gd_vm *vm)
{
    return vm->loop;
}
gd_qmp *gd__vm_qmp(gd_vm *vm)
{
    return vm->qmp_open ? vm->qmp : NULL;
}
unsigned gd__vm_agent_minor(const gd_vm *vm)
{
    return vm->agent_minor;
}
unsigned gd_vm_agent_minor(const gd_vm *vm)
{
    return vm->agent_minor;
}
int gd__vm_send_starting(gd_vm *vm, const uint8_t *frame, size_t n)
{
    return gd__vm_send_frame_in(vm, frame, n, 1);
}
void gd__vm_hold_exec(gd_vm *vm, int on)
{
    if (on && vm->state == VM_STARTING)
        vm->state = VM_READY;
    else if (!on && vm->state == VM_READY)
        vm->state = VM_STARTING;
}
void gd__vm_restart(gd_vm *vm)
{
    if (vm->state != VM_STARTING)
        return;
    vm->relaunch = 1;
    gd__vm_stop(vm, SIGKILL);
}
void gd__vm_fail(gd_vm *vm, const char *why)
{
    gd__vm_failf(vm, "%s", why);
}
int gd__vm_is_ready(const gd_vm *vm)
{
    return vm->state == VM_READY;
}
struct gd__memsave **gd__vm_msave(gd_vm *vm)
{
    return &vm->msave;
}
void gd__vm_resync(gd_vm *vm, const uint8_t *mark, size_t n)
{
    if (n <= sizeof(vm->resync)) {
        memcpy(vm->resync, mark, n);
        vm->resync_len = n;
    }
}
size_t gd__vm_ctl_pending(gd_vm *vm)
{
    if (!vm->ctl_open)
        return 0;
    size_t n = uv_stream_get_write_queue_size((uv_stream_t *)&vm->ctl);
    uv_os_fd_t fd;
    int q = 0;
    if (uv_fileno((uv_handle_t *)&vm->ctl, &fd) == 0 && ioctl(fd, SIOCOUTQ, &q) == 0 && q > 0)
        n += (size_t)q;
    return n;
}
size_t gd__vm_nfs(const gd_vm *vm)
{
    return vm->o.nfs;
}
