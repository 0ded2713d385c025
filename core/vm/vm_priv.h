/* vm_priv.h - the VM object's insides, shared by its files: vm.c (lifecycle, QEMU's
 * process, teardown), launch.c (QEMU's command line and spawn) and channel.c (the
 * control channel: frames both ways, exec sessions). Not part of the API. */
#ifndef GD_VM_PRIV_H
#define GD_VM_PRIV_H

#include "ctl/proto.h"
#include "image/image.h"
#include "vm.h"
#include "vm_int.h"
#include "vm_tail.h"

#include <stdint.h>
#include <uv.h>
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

/* ---- vm.c ---- */
gd_vm *gd__vm_alloc(uv_loop_t *loop);
void gd__vm_failf(gd_vm *vm, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void gd__vm_stop(gd_vm *vm, int sig);
void gd__vm_maybe_finish(gd_vm *vm);
void gd__vm_fire_ready(gd_vm *vm, int status);
void gd__vm_exec_end(struct gd_exec *x, const struct gd_exec_result *r);
void gd__vm_fail_execs(gd_vm *vm, const char *why);
void gd__vm_kvm_fall_back(gd_vm *vm);
unsigned gd__vm_kvm_watchdog_ms(void);
long gd__vm_cpu_khz(void);
void gd__vm_alloc_small(uv_handle_t *h, size_t sz, uv_buf_t *b);
void gd__vm_on_err_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b);
void gd__vm_on_con_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b);
void gd__vm_on_pid_exit(uv_poll_t *p, int status, int events);

/* ---- launch.c ---- */
/* QEMU's command line for this VM (argv NULL-terminated, strings in bufs). */
int gd__vm_build_args(gd_vm *vm, char **argv, size_t cap, char *bufs, size_t bcap);
/* Spawns QEMU with its channels; a booted or memory snapshot restore starts here. */
int gd__vm_launch(gd_vm *vm);

/* ---- channel.c ---- */
int gd__vm_send_frame_in(gd_vm *vm, const uint8_t *frame, size_t n, int starting);
void gd__vm_flush_grants(gd_vm *vm);
void gd__vm_alloc_ctl(uv_handle_t *h, size_t sz, uv_buf_t *b);
void gd__vm_on_ctl_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b);
void gd__vm_on_raw_ready(uv_poll_t *p, int status, int events);

#endif
