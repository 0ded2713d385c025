/* vm.c - QEMU lifecycle and the host side of the control channel. */
#define _GNU_SOURCE
#include "vm.h"

#include "ctl/proto.h"
#include "image/image.h"
#include "vm_int.h"
#include "vm_tail.h"

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

#define DEFAULT_WINDOW (256u * 1024u)
#define MAX_STDIN_CREDIT (4u << 20)
#define KVM_WATCHDOG_MS 8000     /* a real KVM boot takes well under a second */
#define RESTORE_TIMEOUT_MS 20000 /* a restore takes well under a second even under TCG */

enum vm_state { VM_NEW, VM_STARTING, VM_READY, VM_STOPPING, VM_DEAD };

struct gd_exec {
    gd_vm *vm;
    uint32_t id;
    struct gd_exec_cbs cbs;
    void *ud;
    uint32_t window;
    int manual_ack;
    uint32_t credit[3];  /* [0] stdin credit from guest; [1],[2] output credit granted */
    uint32_t pending[3]; /* output consumed, not yet granted back */
    int started, done;
    struct gd_exec *next;
};

struct gd_vm {
    uv_loop_t *loop;
    struct gd_vm_opts o;
    struct gd_vm_fs fs[GD_VM_MAX_FS]; /* o.fs points here; tags and guest paths owned */
    size_t fs_order[GD_VM_MAX_FS];    /* parents first */
    struct gd_image img;
    char *append;
    char qemu[256];
    char disk[1200]; /* cow: the qcow2 overlay (opts.disk) */
    char accel[8];
    int accel_auto;    /* KVM being tried under the watchdog */
    char kvm_why[512]; /* KVM was tried and failed: what happened (notice and verdict wait
                          for the TCG boot) */
    enum vm_state state;
    pid_t pid;
    int pidfd;
    uv_poll_t pid_poll;
    uv_pipe_t ctl, errp, conp;
    int ctl_open, errp_open, conp_open, pid_poll_open, timer_open, kill_timer_open;
    uv_poll_t raw_poll;
    int raw_poll_open;
    int relaunch; /* the KVM watchdog fired: boot again under TCG once QEMU is gone */
    uv_timer_t timer, kill_timer;
    int raw_fd;
    uint8_t *rbuf;
    struct gd_reader rd;
    struct tail err_tail, con_tail;
    char errmsg[1024];
    char agent[128];
    unsigned agent_minor; /* the agent's protocol minor version */
    char console_clean[2048];
    struct gd_exec *execs;
    uint32_t next_id;
    gd_vm_ready_cb ready_cb;
    gd_vm_exit_cb exit_cb;
    void *ud;
    int ready_fired, exit_fired;
    int pending_close;
    int reaped;
    int status;
    unsigned agent_notes;
    void (*ping_cb)(gd_vm *, int, void *);
    void *ping_ud;
    gd_qmp *qmp; /* QEMU's monitor (snapshot.c drives it) */
    int qmp_open;
    struct gd__bootsnap *snap;  /* booted snapshot: restore, or save after boot; NULL: off */
    struct gd__memsave *msave;  /* a memory snapshot being saved (memsave.c), or NULL */
    uint8_t resync[64];         /* a resumed guest: bytes before this mark are skipped */
    struct gd_vm_resume resume; /* o.resume's copy */
    char resume_path[1200];
    size_t resync_len;
};

static void vm_fail(gd_vm *vm, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static unsigned kvm_watchdog_ms(void)
{
    const char *e = getenv("GONDOLIN_KVM_WATCHDOG_MS");
    unsigned v = e ? (unsigned)strtoul(e, NULL, 10) : 0;
    return v ? v : KVM_WATCHDOG_MS;
}
static int launch(gd_vm *vm);

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

static long cpu_khz(void)
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
static gd_vm *vm_alloc(uv_loop_t *loop)
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
    gd_vm *vm = vm_alloc(loop);
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

static void maybe_finish(gd_vm *vm);

static void on_handle_closed(uv_handle_t *h)
{
    gd_vm *vm = h->data;
    vm->pending_close--;
    maybe_finish(vm);
}

static void close_handle(gd_vm *vm, uv_handle_t *h, int *flag)
{
    if (!*flag)
        return;
    *flag = 0;
    h->data = vm;
    vm->pending_close++;
    uv_close(h, on_handle_closed);
}

static void exec_end(struct gd_exec *x, const struct gd_exec_result *r)
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

static void fail_execs(gd_vm *vm, const char *why)
{
    while (vm->execs) {
        struct gd_exec_result r = {.error = GD_EXEC_VM_GONE, .exit_code = 255, .message = why};
        exec_end(vm->execs, &r);
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
static void kvm_fall_back(gd_vm *vm)
{
    vm->accel_auto = 0;
    strcpy(vm->accel, "tcg");
    vm->relaunch = 1;
}

static void fire_ready(gd_vm *vm, int status)
{
    if (vm->ready_fired)
        return;
    vm->ready_fired = 1;
    kvm_settle(vm, status == 0);
    if (vm->ready_cb)
        vm->ready_cb(vm, status, vm->ud);
}

static void maybe_finish(gd_vm *vm)
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
    fail_execs(vm, reason ? reason : "the VM was stopped");
    fire_ready(vm, -EIO);
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
    maybe_finish(vm);
}

/* Begin stopping: close the channel, terminate QEMU; maybe_finish completes it. */
static void vm_stop(gd_vm *vm, int sig)
{
    if (vm->state == VM_STOPPING || vm->state == VM_DEAD)
        return;
    vm->state = VM_STOPPING;
    close_handle(vm, (uv_handle_t *)&vm->ctl, &vm->ctl_open);
    if (vm->qmp_open) {
        vm->qmp_open = 0;
        vm->pending_close++;
        gd_qmp_close(vm->qmp, on_qmp_closed, vm);
        vm->qmp = NULL;
    }
    gd__bootsnap_stop(vm->snap);
    gd__memsave_stop(vm);
    close_handle(vm, (uv_handle_t *)&vm->raw_poll, &vm->raw_poll_open);
    if (vm->raw_fd >= 0) {
        close(vm->raw_fd);
        vm->raw_fd = -1;
    }
    close_handle(vm, (uv_handle_t *)&vm->timer, &vm->timer_open);
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
    maybe_finish(vm);
}

static void vm_fail(gd_vm *vm, const char *fmt, ...)
{
    if (!vm->errmsg[0]) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(vm->errmsg, sizeof(vm->errmsg), fmt, ap);
        va_end(ap);
    }
    vm_stop(vm, SIGKILL);
}

void gd_vm_close(gd_vm *vm)
{
    if (vm->state == VM_NEW) {
        vm->state = VM_DEAD;
        return;
    }
    vm_stop(vm, SIGTERM);
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

static void on_pid_exit(uv_poll_t *p, int status, int events)
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
    close_handle(vm, (uv_handle_t *)&vm->pid_poll, &vm->pid_poll_open);
    close_handle(vm, (uv_handle_t *)&vm->kill_timer, &vm->kill_timer_open);
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
        kvm_fall_back(vm);
        close_handle(vm, (uv_handle_t *)&vm->errp, &vm->errp_open);
        close_handle(vm, (uv_handle_t *)&vm->conp, &vm->conp_open);
        vm_stop(vm, SIGKILL);
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
            close_handle(vm, (uv_handle_t *)&vm->errp, &vm->errp_open);
            close_handle(vm, (uv_handle_t *)&vm->conp, &vm->conp_open);
            vm_stop(vm, SIGKILL);
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
            vm_fail(vm, "%s (QEMU killed by signal %d)%s%s", what, WTERMSIG(st),
                    tail[0] ? "; qemu: " : "", tail);
        else
            vm_fail(vm, "%s (QEMU exit status %d)%s%s", what, WEXITSTATUS(st),
                    tail[0] ? "; qemu: " : "", tail);
    }
    /* drain remaining stderr/console before closing them */
    close_handle(vm, (uv_handle_t *)&vm->errp, &vm->errp_open);
    close_handle(vm, (uv_handle_t *)&vm->conp, &vm->conp_open);
    maybe_finish(vm);
}

static void alloc_small(uv_handle_t *h, size_t sz, uv_buf_t *b)
{
    (void)h;
    (void)sz;
    static char buf[4096];
    b->base = buf;
    b->len = sizeof(buf);
}

static void on_err_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    gd_vm *vm = s->data;
    if (n > 0)
        gd__tail_add(&vm->err_tail, b->base, (size_t)n);
    else if (n < 0)
        close_handle(vm, (uv_handle_t *)&vm->errp, &vm->errp_open);
}

static void on_con_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    gd_vm *vm = s->data;
    if (n > 0) {
        gd__tail_add(&vm->con_tail, b->base, (size_t)n);
        if (getenv("GONDOLIN_CONSOLE"))
            fwrite(b->base, 1, (size_t)n, stderr);
    } else if (n < 0) {
        close_handle(vm, (uv_handle_t *)&vm->conp, &vm->conp_open);
    }
}

/* ---- channel: host -> guest ---- */

struct wreq {
    uv_write_t req;
    uint8_t data[];
};

static void on_written(uv_write_t *r, int status)
{
    gd_vm *vm = r->handle->data;
    free(r);
    if (status < 0 && status != UV_ECANCELED && vm->state == VM_READY)
        vm_fail(vm, "control channel write failed: %s", uv_strerror(status));
}

/* Sends an encoded frame (copied); starting: also before the VM is ready. */
static int send_frame_in(gd_vm *vm, const uint8_t *frame, size_t n, int starting)
{
    if (!vm->ctl_open || !(vm->state == VM_READY || (starting && vm->state == VM_STARTING)))
        return -EPIPE;
    struct wreq *w = malloc(sizeof(*w) + n);
    if (!w)
        return -ENOMEM;
    memcpy(w->data, frame, n);
    uv_buf_t b = uv_buf_init((char *)w->data, (unsigned)n);
    int rc = uv_write(&w->req, (uv_stream_t *)&vm->ctl, &b, 1, on_written);
    if (rc) {
        free(w);
        return rc;
    }
    return 0;
}

static int send_frame(gd_vm *vm, const uint8_t *frame, size_t n)
{
    return send_frame_in(vm, frame, n, 0);
}

static int send_enc(gd_vm *vm, struct gd_enc *e)
{
    long n = gd_enc_finish(e);
    if (n < 0)
        return (int)n;
    return send_frame(vm, e->buf, (size_t)n);
}

static int send_u32x2(gd_vm *vm, uint8_t type, uint32_t id, uint32_t a, uint32_t b, int two)
{
    uint8_t buf[32];
    struct gd_enc e;
    gd_enc_init(&e, buf, sizeof(buf), type, 0, id);
    gd_enc_u32(&e, a);
    if (two)
        gd_enc_u32(&e, b);
    return send_enc(vm, &e);
}

/* ---- channel: guest -> host ---- */

static struct gd_exec *find_exec(gd_vm *vm, uint32_t id)
{
    for (struct gd_exec *x = vm->execs; x; x = x->next)
        if (x->id == id)
            return x;
    return NULL;
}

static void flush_grants(gd_vm *vm)
{
    for (struct gd_exec *x = vm->execs; x; x = x->next) {
        if (!x->pending[1] && !x->pending[2])
            continue;
        if (send_u32x2(vm, GD_MSG_WINDOW, x->id, x->pending[1], x->pending[2], 1) == 0) {
            x->credit[1] += x->pending[1];
            x->credit[2] += x->pending[2];
        }
        x->pending[1] = x->pending[2] = 0;
    }
}

/* Returns 0, or -1 after failing the VM with a protocol error. */
static int handle_frame(gd_vm *vm, const struct gd_hdr *h, const uint8_t *body)
{
    struct gd_exec *x = h->id ? find_exec(vm, h->id) : NULL;
    const char *tn = gd_msg_type_name(h->type);
    /* before HELLO only a channel-level ERROR (a note: e.g. RESUME could not reseed) */
    if (vm->state == VM_STARTING && h->type != GD_MSG_HELLO &&
        !(h->type == GD_MSG_ERROR && h->id == 0)) {
        vm_fail(vm, "guest protocol error: %s before HELLO", tn);
        return -1;
    }
    switch (h->type) {
    case GD_MSG_HELLO: {
        struct gd_msg_hello m;
        if (gd_dec_hello(body, h->len, &m)) {
            vm_fail(vm, "guest protocol error: malformed HELLO");
            return -1;
        }
        if (vm->state != VM_STARTING) {
            vm_fail(vm, "guest protocol error: HELLO repeated");
            return -1;
        }
        if (m.major != GD_PROTO_MAJOR) {
            vm_fail(vm,
                    "guest agent speaks protocol %u.%u, this host speaks %u.%u: rebuild the "
                    "image (gondolin build --default)",
                    m.major, m.minor, GD_PROTO_MAJOR, GD_PROTO_MINOR);
            return -1;
        }
        gd_sanitize(vm->agent, sizeof(vm->agent), m.agent.p, m.agent.len > 100 ? 100 : m.agent.len);
        vm->agent_minor = m.minor;
        uint8_t buf[128];
        struct gd_enc e;
        gd_enc_init(&e, buf, sizeof(buf), GD_MSG_HELLO, 0, 0);
        gd_enc_u16(&e, GD_PROTO_MAJOR);
        gd_enc_u16(&e, GD_PROTO_MINOR);
        gd_enc_u32(&e, 0);
        gd_enc_str(&e, "gondolin-host", 13);
        long fl = gd_enc_finish(&e);
        if (fl > 0)
            send_frame_in(vm, buf, (size_t)fl, 1);
        /* a booted snapshot may hold the start: saving one, or the restored guest's
         * HELLO answering RESUME still to come */
        if (gd__bootsnap_on_hello(vm->snap))
            return 0;
        vm->state = VM_READY;
        close_handle(vm, (uv_handle_t *)&vm->timer, &vm->timer_open);
        fire_ready(vm, 0);
        return 0;
    }
    case GD_MSG_STARTED: {
        uint32_t pid;
        if (!x || x->started || gd_dec_u32(body, h->len, &pid))
            goto bad;
        x->started = 1;
        if (x->cbs.on_started)
            x->cbs.on_started(x, pid, x->ud);
        return 0;
    }
    case GD_MSG_STDIN_WINDOW: {
        uint32_t g;
        /* the credit is what we may queue toward a guest that does not read: cap it */
        if (!x || gd_dec_u32(body, h->len, &g) || g > MAX_STDIN_CREDIT)
            goto bad;
        x->credit[0] += g;
        if (x->credit[0] > MAX_STDIN_CREDIT)
            goto bad;
        if (x->cbs.on_stdin_credit)
            x->cbs.on_stdin_credit(x, x->credit[0], x->ud);
        return 0;
    }
    case GD_MSG_OUTPUT: {
        if (!x || (h->flags != GD_STREAM_STDOUT && h->flags != GD_STREAM_STDERR) ||
            h->len > GD_PROTO_MAX_CHUNK || h->len > x->credit[h->flags])
            goto bad;
        x->credit[h->flags] -= h->len;
        if (!x->manual_ack)
            x->pending[h->flags] += h->len;
        if (x->cbs.on_output && h->len)
            x->cbs.on_output(x, h->flags, body, h->len, x->ud);
        return 0;
    }
    case GD_MSG_EXIT: {
        struct gd_msg_exit m;
        if (!x || gd_dec_exit(body, h->len, &m))
            goto bad;
        struct gd_exec_result r = {.exit_code = m.signal ? 128 + (int)m.signal : m.code,
                                   .signal = (int)m.signal};
        exec_end(x, &r);
        return 0;
    }
    case GD_MSG_ERROR: {
        struct gd_msg_error m;
        if (gd_dec_error(body, h->len, &m))
            goto bad;
        char msg[512];
        gd_sanitize(msg, sizeof(msg), m.message.p, m.message.len > 400 ? 400 : m.message.len);
        if (!h->id) {
            /* channel-level notes from the agent; capped so a guest cannot flood us */
            if (vm->agent_notes++ < 10)
                fprintf(stderr, "gondolin: guest agent: %s\n", msg);
            return 0;
        }
        if (!x)
            goto bad;
        struct gd_exec_result r = {.error = GD_EXEC_START_FAILED,
                                   .exit_code = m.code == GD_ERR_EXEC_FAILED ? 127 : 126,
                                   .message = msg};
        exec_end(x, &r);
        return 0;
    }
    case GD_MSG_PONG: {
        void (*cb)(gd_vm *, int, void *) = vm->ping_cb;
        if (!cb)
            goto bad;
        vm->ping_cb = NULL;
        cb(vm, 0, vm->ping_ud);
        return 0;
    }
    default:
        goto bad;
    }
bad:
    vm_fail(vm,
            "guest protocol error: unexpected or malformed %s frame (session %u, %u bytes); "
            "channel closed",
            tn, h->id, h->len);
    return -1;
}

static void process_input(gd_vm *vm)
{
    struct gd_hdr h;
    const uint8_t *body;
    int rc;
    if (vm->resync_len) { /* the old host's frames (or the tail of one) come first */
        if (!gd_reader_skip_to(&vm->rd, vm->resync, vm->resync_len))
            return;
        vm->resync_len = 0;
    }
    while (vm->state == VM_STARTING || vm->state == VM_READY) {
        rc = gd_reader_next(&vm->rd, &h, &body);
        if (rc == 0)
            break;
        if (rc < 0) {
            vm_fail(vm, "guest protocol error: %s frame header; channel closed",
                    rc == -EMSGSIZE ? "oversized" : "invalid");
            return;
        }
        if (handle_frame(vm, &h, body))
            return;
    }
    if (vm->state == VM_READY)
        flush_grants(vm);
}

void gd_vm_inject(gd_vm *vm, const uint8_t *p, size_t n)
{
    while (n && (vm->state == VM_STARTING || vm->state == VM_READY)) {
        size_t room;
        uint8_t *dst = gd_reader_space(&vm->rd, &room);
        size_t k = n < room ? n : room;
        if (!k) {
            process_input(vm);
            if (gd_reader_space(&vm->rd, &room) && !room) {
                vm_fail(vm, "guest protocol error: frame larger than the channel buffer");
                return;
            }
            continue;
        }
        memcpy(dst, p, k);
        gd_reader_commit(&vm->rd, k);
        p += k;
        n -= k;
        process_input(vm);
    }
}

static void alloc_ctl(uv_handle_t *h, size_t sz, uv_buf_t *b)
{
    (void)sz;
    gd_vm *vm = h->data;
    size_t room;
    b->base = (char *)gd_reader_space(&vm->rd, &room);
    b->len = room;
}

static void on_ctl_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    (void)b;
    gd_vm *vm = s->data;
    if (n > 0) {
        gd_reader_commit(&vm->rd, (size_t)n);
        process_input(vm);
    } else if (n < 0) {
        if (vm->state == VM_READY || vm->state == VM_STARTING) {
            /* QEMU closed its end: it is exiting; on_pid_exit explains why */
            if (vm->reaped && !vm->errmsg[0])
                snprintf(vm->errmsg, sizeof(vm->errmsg), "control channel closed by the guest");
            close_handle(vm, (uv_handle_t *)&vm->ctl, &vm->ctl_open);
            if (vm->reaped)
                vm_stop(vm, SIGKILL);
        }
    }
}

/* rawecho: ready when the agent's single ready byte arrives */
static void on_raw_ready(uv_poll_t *p, int status, int events)
{
    (void)events;
    gd_vm *vm = p->data;
    char c;
    if (status < 0 || read(vm->raw_fd, &c, 1) != 1 || c != 'R') {
        vm_fail(vm, "raw echo agent did not start");
        return;
    }
    vm->state = VM_READY;
    close_handle(vm, (uv_handle_t *)&vm->timer, &vm->timer_open);
    close_handle(vm, (uv_handle_t *)p, &vm->raw_poll_open);
    int fl = fcntl(vm->raw_fd, F_GETFL); /* uv_poll made it non-blocking */
    fcntl(vm->raw_fd, F_SETFL, fl & ~O_NONBLOCK);
    fire_ready(vm, 0);
}

static void on_start_timeout(uv_timer_t *t)
{
    gd_vm *vm = t->data;
    if (vm->state != VM_STARTING)
        return;
    if (vm->accel_auto) {
        /* KVM opened fine but the guest never spoke: nested or broken KVM. */
        snprintf(vm->kvm_why, sizeof(vm->kvm_why),
                 "the guest hung under KVM (QEMU ran, no boot within %u ms)", kvm_watchdog_ms());
        kvm_fall_back(vm);
        vm_stop(vm, SIGKILL);
        return;
    }
    char why[64];
    snprintf(why, sizeof(why), "no answer within %.1f s", RESTORE_TIMEOUT_MS / 1e3);
    /* only the restore's own limit condemns the snapshot; a shorter start timeout is the
     * caller's and fails the start as it would a boot */
    if (vm->o.start_timeout_ms > RESTORE_TIMEOUT_MS &&
        gd__bootsnap_on_start_failure(vm->snap, why)) {
        vm->relaunch = 1;
        vm_stop(vm, SIGKILL);
        return;
    }
    char tail[1024];
    gd__tail_get(&vm->err_tail, tail, sizeof(tail), 6);
    vm_fail(vm, "the VM did not start within %u ms (accel %s)%s%s", vm->o.start_timeout_ms,
            vm->accel, tail[0] ? "; qemu: " : "", tail);
}

static int build_args(gd_vm *vm, char **argv, size_t cap, char *bufs, size_t bcap)
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
    long khz = kvm ? 0 : cpu_khz();
    char tsc[64] = "";
    if (khz > 0)
        snprintf(tsc, sizeof(tsc), " tsc_early_khz=%ld", khz);
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
        ARG("socket,id=fs%zu,fd=%zu", i, 5 + i); /* launch() puts mount i's socket there */
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
        uv_read_start((uv_stream_t *)p, alloc_small, cb);
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

static int launch(gd_vm *vm)
{
    char *argv[96]; /* 40 without mounts; 4 more with any, and 4 per mount */
    char *bufs = malloc(16384);
    if (!bufs)
        return -ENOMEM;
    int rc = build_args(vm, argv, 96, bufs, 16384);
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
    uv_poll_start(&vm->pid_poll, UV_READABLE, on_pid_exit);
    if (gd_qmp_new(vm->loop, qp[0], on_qmp_event, vm, &vm->qmp) == 0)
        vm->qmp_open = 1;
    open_pipe(vm, &vm->errp, ep[0], &vm->errp_open, on_err_read);
    open_pipe(vm, &vm->conp, cp[0], &vm->conp_open, on_con_read);
    gd_reader_init(&vm->rd, vm->rbuf, GD_PROTO_HDR_LEN + GD_PROTO_MAX_BODY);
    if (vm->o.rawecho) {
        vm->raw_fd = sp[0];
        uv_poll_init(vm->loop, &vm->raw_poll, vm->raw_fd);
        vm->raw_poll.data = vm;
        vm->raw_poll_open = 1;
        uv_poll_start(&vm->raw_poll, UV_READABLE, on_raw_ready);
    } else {
        uv_pipe_init(vm->loop, &vm->ctl, 0);
        vm->ctl.data = vm;
        if ((rc = uv_pipe_open(&vm->ctl, sp[0]))) {
            close(sp[0]);
            return rc;
        }
        vm->ctl_open = 1;
        uv_read_start((uv_stream_t *)&vm->ctl, alloc_ctl, on_ctl_read);
    }
    gd__bootsnap_launched(vm->snap);
    return 0;
}

int gd_vm_start(gd_vm *vm, gd_vm_ready_cb ready, gd_vm_exit_cb exit_cb, void *ud)
{
    if (vm->state != VM_NEW)
        return -EALREADY;
    vm->ready_cb = ready;
    vm->exit_cb = exit_cb;
    vm->ud = ud;
    vm->errmsg[0] = 0;
    int rc = launch(vm);
    if (rc)
        return rc;
    vm->state = VM_STARTING;
    uv_timer_init(vm->loop, &vm->timer);
    vm->timer.data = vm;
    vm->timer_open = 1;
    unsigned ms = vm->accel_auto ? kvm_watchdog_ms() : vm->o.start_timeout_ms;
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
    return send_frame_in(vm, frame, n, 1);
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
    vm_stop(vm, SIGKILL);
}
void gd__vm_close_handle(gd_vm *vm, uv_handle_t *h, int *flag)
{
    close_handle(vm, h, flag);
}
void gd__vm_fail(gd_vm *vm, const char *why)
{
    vm_fail(vm, "%s", why);
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

int gd_vm_shape(gd_vm *vm, uint8_t shape[32])
{
    char *argv[96];
    char *bufs = malloc(16384);
    if (!bufs)
        return -ENOMEM;
    int rc = build_args(vm, argv, 96, bufs, 16384);
    if (!rc)
        gd__vm_argv_key(vm->img.build_id, argv, vm->qemu, 1, shape);
    free(bufs);
    return rc;
}

int gd_vm_ping(gd_vm *vm, const void *data, size_t n, void (*cb)(gd_vm *, int, void *), void *ud)
{
    if (vm->ping_cb)
        return -EBUSY;
    if (n > GD_PROTO_MAX_CHUNK)
        return -EMSGSIZE;
    uint8_t buf[GD_PROTO_HDR_LEN + 256];
    uint8_t *p = n <= 256 ? buf : malloc(GD_PROTO_HDR_LEN + n);
    if (!p)
        return -ENOMEM;
    struct gd_enc e;
    gd_enc_init(&e, p, GD_PROTO_HDR_LEN + n, GD_MSG_PING, 0, 0);
    gd_enc_bytes(&e, data, n);
    int rc = send_enc(vm, &e);
    if (p != buf)
        free(p);
    if (rc == 0) {
        vm->ping_cb = cb;
        vm->ping_ud = ud;
    }
    return rc;
}

/* ---- exec ---- */

uint32_t gd_exec_id(const gd_exec *x)
{
    return x->id;
}
size_t gd_exec_stdin_credit(const gd_exec *x)
{
    return x->credit[0];
}

int gd_exec_start(gd_vm *vm, const struct gd_exec_opts *o, const struct gd_exec_cbs *cbs, void *ud,
                  gd_exec **out)
{
    if (vm->state != VM_READY)
        return -ENOTCONN;
    char port[8];
    const char *tunnel_argv[] = {port, NULL};
    struct gd_exec_opts tunnel;
    if (o->connect_port) {
        if (o->connect_port > 65535)
            return -EINVAL;
        if (vm->agent_minor < 1)
            return -ENOTSUP; /* tunnels came with protocol 1.1 */
        snprintf(port, sizeof(port), "%u", o->connect_port);
        tunnel = (struct gd_exec_opts){.argv = tunnel_argv,
                                       .window = o->window,
                                       .manual_ack = o->manual_ack,
                                       .stdin_stream = 1,
                                       .connect_port = o->connect_port};
        o = &tunnel;
    }
    if (!o->argv && !o->shell)
        return -EINVAL;
    if (o->argv && !o->argv[0])
        return -EINVAL;
    struct gd_exec *x = calloc(1, sizeof(*x));
    if (!x)
        return -ENOMEM;
    x->vm = vm;
    x->id = vm->next_id++;
    if (!vm->next_id)
        vm->next_id = 1;
    x->cbs = *cbs;
    x->ud = ud;
    x->window = o->window ? o->window : DEFAULT_WINDOW;
    x->manual_ack = o->manual_ack;
    x->credit[1] = x->credit[2] = x->window;

    size_t cap = 256;
    const char *const *v;
    for (v = o->argv; v && *v; v++)
        cap += 4 + strlen(*v);
    for (v = o->env; v && *v; v++)
        cap += 4 + strlen(*v);
    cap += o->shell ? 4 + strlen(o->shell) : 0;
    cap += o->cwd ? strlen(o->cwd) : 0;
    if (cap > GD_PROTO_HDR_LEN + GD_PROTO_MAX_BODY) {
        free(x);
        return -E2BIG;
    }
    uint8_t *buf = malloc(cap);
    if (!buf) {
        free(x);
        return -ENOMEM;
    }
    uint32_t flags = (o->pty ? GD_EXEC_PTY : 0) | (o->stdin_stream ? GD_EXEC_STDIN : 0) |
                     (o->shell ? GD_EXEC_SHELL : 0) | (o->connect_port ? GD_EXEC_CONNECT : 0);
    struct gd_enc e;
    gd_enc_init(&e, buf, cap, GD_MSG_EXEC, 0, x->id);
    gd_enc_u32(&e, flags);
    gd_enc_u32(&e, x->window);
    gd_enc_u32(&e, x->window);
    gd_enc_u16(&e, (uint16_t)(o->rows > 0xffff ? 0xffff : o->rows));
    gd_enc_u16(&e, (uint16_t)(o->cols > 0xffff ? 0xffff : o->cols));
    if (o->shell) {
        gd_enc_u32(&e, 1);
        gd_enc_str(&e, o->shell, strlen(o->shell));
    } else {
        uint32_t argc = 0;
        for (v = o->argv; *v; v++)
            argc++;
        gd_enc_u32(&e, argc);
        for (v = o->argv; *v; v++)
            gd_enc_str(&e, *v, strlen(*v));
    }
    uint32_t envc = 0;
    for (v = o->env; v && *v; v++) {
        if (!strchr(*v, '=') || **v == '=') {
            free(buf);
            free(x);
            return -EINVAL;
        }
        envc++;
    }
    gd_enc_u32(&e, envc);
    for (v = o->env; v && *v; v++)
        gd_enc_str(&e, *v, strlen(*v));
    gd_enc_str(&e, o->cwd ? o->cwd : "", o->cwd ? strlen(o->cwd) : 0);
    int rc = send_enc(vm, &e);
    free(buf);
    if (rc) {
        free(x);
        return rc;
    }
    x->next = vm->execs;
    vm->execs = x;
    if (out)
        *out = x;
    return 0;
}

long gd_exec_write(gd_exec *x, const void *data, size_t n, int eof)
{
    gd_vm *vm = x->vm;
    size_t k = n;
    if (k > x->credit[0])
        k = x->credit[0];
    if (k > GD_PROTO_MAX_CHUNK)
        k = GD_PROTO_MAX_CHUNK;
    if (k == 0 && !(eof && n == 0))
        return 0;
    int send_eof = eof && k == n;
    uint8_t *buf = malloc(GD_PROTO_HDR_LEN + k);
    if (!buf)
        return -ENOMEM;
    struct gd_enc e;
    gd_enc_init(&e, buf, GD_PROTO_HDR_LEN + k, GD_MSG_STDIN, send_eof ? GD_STDIN_EOF : 0, x->id);
    gd_enc_bytes(&e, data, k);
    int rc = send_enc(vm, &e);
    free(buf);
    if (rc)
        return rc;
    x->credit[0] -= (uint32_t)k;
    return (long)k;
}

int gd_exec_signal(gd_exec *x, int sig)
{
    if (sig <= 0 || sig >= 65)
        return -EINVAL;
    return send_u32x2(x->vm, GD_MSG_SIGNAL, x->id, (uint32_t)sig, 0, 0);
}

int gd_exec_resize(gd_exec *x, unsigned rows, unsigned cols)
{
    uint8_t buf[32];
    struct gd_enc e;
    gd_enc_init(&e, buf, sizeof(buf), GD_MSG_RESIZE, 0, x->id);
    gd_enc_u16(&e, (uint16_t)(rows > 0xffff ? 0xffff : rows));
    gd_enc_u16(&e, (uint16_t)(cols > 0xffff ? 0xffff : cols));
    return send_enc(x->vm, &e);
}

void gd_exec_ack(gd_exec *x, int stream, size_t n)
{
    if (stream != 1 && stream != 2)
        return;
    x->pending[stream] += (uint32_t)n;
    flush_grants(x->vm);
}

/* ---- test support ---- */

int gd__vm_attach_fd(uv_loop_t *loop, int fd, gd_vm **out, gd_vm_ready_cb ready,
                     gd_vm_exit_cb exit_cb, void *ud)
{
    gd_vm *vm = vm_alloc(loop);
    if (!vm)
        return -ENOMEM;
    vm->reaped = 1; /* no QEMU behind this channel */
    vm->ready_cb = ready;
    vm->exit_cb = exit_cb;
    vm->ud = ud;
    uv_pipe_init(loop, &vm->ctl, 0);
    vm->ctl.data = vm;
    int rc = uv_pipe_open(&vm->ctl, fd);
    if (rc) {
        free(vm->rbuf);
        free(vm);
        return rc;
    }
    vm->ctl_open = 1;
    vm->state = VM_STARTING;
    uv_read_start((uv_stream_t *)&vm->ctl, alloc_ctl, on_ctl_read);
    *out = vm;
    return 0;
}
