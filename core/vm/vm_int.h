/* vm_int.h - what vm.c shares with snapshot.c (booted snapshots: save after the first
 * HELLO, restore instead of booting). Not part of the API. */
#ifndef GD_VM_INT_H
#define GD_VM_INT_H

#include "vm/qmp.h"
#include "vm/vm.h"

#include <stdint.h>

/* QEMU's fds: 3 control channel, 4 network, 5.. virtio-fs back-ends, then these. */
#define GD__VM_QMP_FD 13
#define GD__VM_INCOMING_FD 14

/* ---- vm.c, for snapshot.c ---- */
uv_loop_t *gd__vm_loop(gd_vm *vm);
gd_qmp *gd__vm_qmp(gd_vm *vm); /* NULL once stopping */
unsigned gd__vm_agent_minor(const gd_vm *vm);
/* Sends a frame on the control channel while the VM is still starting (RESUME). */
int gd__vm_send_starting(gd_vm *vm, const uint8_t *frame, size_t n);
/* While a start is held (saving a snapshot): 1 lets gd_exec_start run (a warm-up
 * command), 0 returns to starting (the next HELLO makes the VM ready). */
void gd__vm_hold_exec(gd_vm *vm, int on);
/* The snapshot failed the start: stop this QEMU and boot again (cold). */
void gd__vm_restart(gd_vm *vm);
/* uv_close with the VM's accounting (teardown waits for it); *flag cleared. */
void gd__vm_close_handle(gd_vm *vm, uv_handle_t *h, int *flag);

void gd__vm_fail(gd_vm *vm, const char *why);
int gd__vm_is_ready(const gd_vm *vm);
size_t gd__vm_nfs(const gd_vm *vm);
/* Bytes of frames to the agent not yet taken by QEMU (queued here or in the socket). */
size_t gd__vm_ctl_pending(gd_vm *vm);
/* Frames resume after mark (a resumed guest's old frames are skipped). */
void gd__vm_resync(gd_vm *vm, const uint8_t *mark, size_t n);
struct gd__memsave;
struct gd__memsave **gd__vm_msave(gd_vm *vm);
/* The key of a command line (argv NULL-terminated): shape 0 for booted snapshots (the
 * whole line), 1 for gd_vm_shape (per-sandbox paths left out). */
void gd__vm_argv_key(const char *build_id, char *const *argv, const char *qemu, int shape,
                     uint8_t key[32]);

/* ---- memsave.c, for vm.c ---- */
void gd__memsave_on_event(gd_vm *vm, const char *name, const cJSON *data);
/* The VM is stopping: a save in progress fails (its callback fires). */
void gd__memsave_stop(gd_vm *vm);

/* ---- snapshot.c, for vm.c ---- */
struct gd__bootsnap;
/* NULL (and errno-free) when o asks for no booted snapshot. */
int gd__bootsnap_new(gd_vm *vm, const char *build_id, unsigned memory_mb, unsigned cpus,
                     struct gd__bootsnap **out);
void gd__bootsnap_free(struct gd__bootsnap *s); /* waits for a save still being written */
/* For gd_vm_opts.resume: that file, never discarded; a shape that differs from the
 * command line's makes gd__bootsnap_prepare return -2 with gd__bootsnap_refusal. */
int gd__bootsnap_new_resume(gd_vm *vm, const char *build_id, const struct gd_vm_resume *r,
                            struct gd__bootsnap **out);
const char *gd__bootsnap_refusal(const struct gd__bootsnap *s);
/* Before QEMU is spawned with argv (NULL-terminated, without the -incoming arguments):
 * decides restore or boot (+ save). Returns the fd QEMU gets as GD__VM_INCOMING_FD
 * (the caller closes it once QEMU has it), -1 for a boot, -2 for a refused resume. */
int gd__bootsnap_prepare(struct gd__bootsnap *s, char *const *argv, const char *qemu);
/* QEMU runs: start feeding the stream (restore). */
void gd__bootsnap_launched(struct gd__bootsnap *s);
/* The agent said HELLO: 1 when the snapshot holds the start back (saving, or waiting
 * for the HELLO that answers RESUME), 0 when the VM may be ready. */
int gd__bootsnap_on_hello(struct gd__bootsnap *s);
void gd__bootsnap_on_event(struct gd__bootsnap *s, const char *name, const cJSON *data);
/* QEMU died or the start timed out before ready: 1 when the snapshot was the cause
 * (restoring: discarded with a notice; the caller boots again), 0 otherwise. */
int gd__bootsnap_on_start_failure(struct gd__bootsnap *s, const char *why);
/* The VM is stopping: close handles (through gd__vm_close_handle). */
void gd__bootsnap_stop(struct gd__bootsnap *s);
/* "restore", "boot+save", "boot": what this start did (for -v and the benchmark). */
const char *gd__bootsnap_mode(const struct gd__bootsnap *s);

#endif
