/*
 * vm.h - the gondolin C API: boot a micro-VM and run processes in it.
 *
 * Everything runs on a caller-provided libuv loop. A gd_vm owns one QEMU process
 * (killed by the kernel if this process dies: PR_SET_PDEATHSIG), one control channel
 * (a socketpair handed to QEMU as a virtio-serial chardev: no socket files), and the
 * exec sessions on it. Objects are freed only from their close/exit callbacks.
 *
 * Errors: functions return 0 or a negative errno; when they do, no callback fires.
 */
#ifndef GD_VM_H
#define GD_VM_H

#include "base/err.h"

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct gd_vm gd_vm;
typedef struct gd_exec gd_exec;

/* A virtio-fs mount: QEMU's end of a vhost-user back-end (gd_vhost_fs_start's qemu_fd)
 * and where the guest mounts it. The guest path must be absolute and normalised (no
 * "//", ".", ".." or trailing '/'), at most 255 bytes of [A-Za-z0-9._+@=~-] and '/',
 * not "/" and not under /proc, /sys or /dev. The tag (the device's name in the guest)
 * is 1-31 bytes of [a-z0-9_-], unique; NULL: "gdfs<i>". */
#define GD_VM_MAX_FS 8
struct gd_vm_fs {
    const char *tag;   /* copied */
    const char *guest; /* copied */
    int fd;            /* borrowed: open until the VM is freed (a KVM fallback relaunches
                          QEMU on it); dup'ed into QEMU */
};

struct gd_vm_opts {
    const char *image_dir;     /* required: directory with manifest.json (borrowed) */
    const char *accel;         /* "kvm", "tcg" or NULL/"auto" */
    unsigned memory_mb;        /* 0 = 1024 */
    unsigned cpus;             /* 0 = 2 */
    unsigned start_timeout_ms; /* 0 = 60000 (or GONDOLIN_START_TIMEOUT_MS) */
    const char *qemu;          /* NULL = qemu-system-<arch> from PATH */
    const char *append;        /* extra kernel arguments, or NULL */
    int rawecho;               /* benchmark: the agent echoes raw bytes, no protocol */
    int bare;                  /* benchmark: the guest powers off at once */
    int verbose;               /* print the QEMU command line */
    const char *rootfs_mode;   /* "readonly", "memory" (tmpfs overlay), "cow" (the root is
                                  the qcow2 overlay `disk`, read-write), "rw" (build VMs:
                                  the image itself is written), or NULL: the image's
                                  runtimeDefaults, else memory */
    const char *disk;          /* cow: the qcow2 overlay over the image's rootfs.ext4 (made
                                  by gd_sandbox, core/snap); copied. Ignored otherwise */
    int net_fd;                /* > 0: a stream socket carrying the guest NIC's frames
                                  (QEMU socket netdev); borrowed, dup'ed into QEMU */
    /* virtio-fs mounts (at most GD_VM_MAX_FS); the guest mounts them parents first. With
     * any, guest RAM is a shared memfd (the back-ends map it) and virtio-mmio runs in
     * modern mode. */
    const struct gd_vm_fs *fs;
    size_t nfs;
    /* Booted snapshot (docs/snapshots.md): restore this VM shape's snapshot from the
     * image store instead of booting, or boot and save one at the agent's HELLO when
     * there is none yet. A snapshot that fails to load is discarded with a one-line
     * notice on stderr and the VM boots. Ignored with fs mounts (vhost-user-fs is not
     * migratable), rootfs "rw" and "cow", rawecho, bare, and while KVM is on trial. */
    int boot_snapshot;
    /* A memory snapshot to resume instead of booting (docs/snapshots.md; copied): QEMU
     * starts paused and loads the stream, whose SHA-256 is checked before the guest
     * runs; the guest then gets fresh entropy, the host's clock and drops the exec
     * sessions of its old host. A command line whose gd_vm_shape differs, a failed load
     * or a bad checksum fails the start (gd_vm_error says why); nothing else boots. */
    const struct gd_vm_resume *resume;
};

struct gd_vm_resume {
    const char *path;        /* the snapshot file */
    uint64_t offset, length; /* QEMU's migration stream in it */
    uint8_t sha256[32];      /* of the stream */
    uint8_t shape[32];       /* gd_vm_shape of the VM it was taken of */
};

/* A hash of what a memory snapshot needs to be loaded into this VM: the gondolin
 * version, the image's buildId, the QEMU binary and its command line without
 * per-sandbox paths (the root disk's file). */
int gd_vm_shape(gd_vm *vm, uint8_t shape[32]);

/* Saves the running VM's memory and device state (QEMU's migration stream) into fd,
 * which must be a regular file open for writing at offset 0. The guest is paused for
 * the save; cb fires once: status 0 with the stream's length, or negative with error
 * (borrowed, one line). Afterwards the guest runs on, or, with stay_paused, stays
 * paused until the VM is closed. Refused (-EBUSY, -ENOTSUP with err) while starting,
 * stopping or saving, with virtio-fs mounts (vhost-user-fs cannot be migrated) or an
 * agent older than protocol 1.3. */
typedef void (*gd_vm_save_cb)(gd_vm *vm, int status, uint64_t length, const char *error, void *ud);
int gd_vm_save_memory(gd_vm *vm, int fd, int stay_paused, gd_vm_save_cb cb, void *ud,
                      struct gd_err *err);
/* The guest agent's protocol minor version (after HELLO). */
unsigned gd_vm_agent_minor(const gd_vm *vm);

/* status 0: the agent said HELLO (or, for rawecho, its ready byte); negative: boot
 * failed and gd_vm_error() says why. */
typedef void (*gd_vm_ready_cb)(gd_vm *vm, int status, void *ud);
/* The VM stopped (QEMU exited, or the channel failed). reason is NULL after
 * gd_vm_close, else a one-line description (borrowed, valid during the call). */
typedef void (*gd_vm_exit_cb)(gd_vm *vm, const char *reason, void *ud);

/* Validates options and the image; copies what it keeps. */
int gd_vm_new(uv_loop_t *loop, const struct gd_vm_opts *o, gd_vm **out, struct gd_err *err);
/* Launches QEMU. ready fires once. exit_cb (optional) fires once, when QEMU is gone;
 * after it returns, the VM may be freed with gd_vm_free. */
int gd_vm_start(gd_vm *vm, gd_vm_ready_cb ready, gd_vm_exit_cb exit_cb, void *ud);
/* Stops the VM: live execs end with GD_EXEC_VM_GONE, QEMU is terminated (SIGTERM,
 * SIGKILL after 2 s). exit_cb then fires with reason NULL. */
void gd_vm_close(gd_vm *vm);
/* Frees a VM that never started or whose exit_cb has fired. */
void gd_vm_free(gd_vm *vm);

const char *gd_vm_error(const gd_vm *vm);        /* last error, "" if none */
const char *gd_vm_accel(const gd_vm *vm);        /* "kvm" or "tcg" once started */
const char *gd_vm_agent(const gd_vm *vm);        /* agent version from HELLO */
const char *gd_vm_console_tail(const gd_vm *vm); /* sanitized guest console tail */
/* How the last start went: "restore" (a booted snapshot), "boot+save" (booted and saved
 * one), "boot". */
const char *gd_vm_start_mode(const gd_vm *vm);
int gd_vm_raw_fd(gd_vm *vm); /* rawecho mode, once ready: the channel fd (blocking) */

/* Echo round trip through the agent (framing + dispatch); cb(status) when PONG
 * arrives. One outstanding ping at a time. */
int gd_vm_ping(gd_vm *vm, const void *data, size_t n, void (*cb)(gd_vm *, int, void *), void *ud);

/* Test hook: push raw bytes to the host side of the channel as if the guest sent them
 * (exercises the decoders on a live VM without a malicious guest image). */
void gd_vm_inject(gd_vm *vm, const uint8_t *p, size_t n);

/* ---- exec ---- */

enum { GD_EXEC_OK = 0, GD_EXEC_START_FAILED = 1, GD_EXEC_VM_GONE = 2 };

struct gd_exec_result {
    int error;           /* GD_EXEC_* */
    int exit_code;       /* valid when error == 0 and signal == 0 */
    int signal;          /* terminating signal, or 0 */
    const char *message; /* error text (borrowed, valid during the callback) */
};

struct gd_exec_opts {
    const char *const *argv; /* NULL-terminated; or NULL with shell */
    const char *shell;       /* command string run as /bin/sh -lc STRING */
    const char *const *env;  /* NULL-terminated "K=V" overrides, or NULL */
    const char *cwd;         /* or NULL */
    int pty;                 /* run on a pseudo-terminal */
    unsigned rows, cols;     /* initial pty size */
    int stdin_stream;        /* caller feeds stdin with gd_exec_write; else /dev/null */
    uint32_t window;         /* stdout/stderr credit per stream; 0 = 256 KiB */
    int manual_ack;          /* caller returns credit with gd_exec_ack; else automatic */
    /* > 0: a TCP tunnel to this guest loopback port (127.0.0.1, else ::1) instead of a
     * process; argv, shell, env, cwd, pty and stdin_stream are ignored. The connection is
     * stdin (gd_exec_write; eof = a half-close) and stdout; on_exit: 0 once the guest side
     * closed and its bytes were delivered, 1 if it reset, 128+N after gd_exec_signal(N)
     * (which resets it); GD_EXEC_START_FAILED with a message such as "connect to guest
     * port 8000: Connection refused". -ENOTSUP from an agent older than protocol 1.1. */
    unsigned connect_port;
};

struct gd_exec_cbs {
    /* stream: 1 stdout, 2 stderr. data is borrowed for the call. */
    void (*on_output)(gd_exec *x, int stream, const uint8_t *data, size_t n, void *ud);
    /* the guest granted stdin credit: gd_exec_write may accept more (optional) */
    void (*on_stdin_credit)(gd_exec *x, size_t credit, void *ud);
    /* terminal; x is freed after this returns */
    void (*on_exit)(gd_exec *x, const struct gd_exec_result *r, void *ud);
    /* the process runs, with this pid in the guest (optional) */
    void (*on_started)(gd_exec *x, uint32_t pid, void *ud);
};

/* Copies every option it keeps. */
int gd_exec_start(gd_vm *vm, const struct gd_exec_opts *o, const struct gd_exec_cbs *cbs, void *ud,
                  gd_exec **out);
/* Sends up to the granted stdin credit; returns bytes accepted (copied) or negative
 * errno. eof is sent only with the call that consumes the last byte given. */
long gd_exec_write(gd_exec *x, const void *data, size_t n, int eof);
size_t gd_exec_stdin_credit(const gd_exec *x);
int gd_exec_signal(gd_exec *x, int sig);
int gd_exec_resize(gd_exec *x, unsigned rows, unsigned cols);
void gd_exec_ack(gd_exec *x, int stream, size_t n);
uint32_t gd_exec_id(const gd_exec *x);

/* ---- accelerator ---- */

/* The device the probe opens: GONDOLIN_KVM_DEVICE if set (tests: a missing path plays a
 * host without KVM), else /dev/kvm. */
const char *gd_kvm_device(void);
/* Quick check of the KVM API (open, create a VM and a vCPU). 0 if it looks usable,
 * else negative errno and why. Does not prove a guest will run: see docs.
 * GONDOLIN_ASSUME_KVM_API=1 (tests) answers 0 without opening anything. */
int gd_kvm_api_probe(char *why, size_t cap);
/* Cached verdict of a real boot under KVM with this QEMU on this host kernel: 1 works,
 * 0 does not (why, if not NULL: what happened, e.g. "QEMU crashed under KVM (SIGABRT):
 * ..." or "the guest hung under KVM ..."), -1 unknown. */
int gd_kvm_cached_verdict(const char *qemu, char *why, size_t cap);
void gd_kvm_record_verdict(const char *qemu, int works, const char *why);
/* Where verdicts are kept (~/.cache/gondolin/kvm-verdict). */
void gd_kvm_verdict_path(char *buf, size_t cap);
/* The QEMU binary a VM of this architecture runs: GONDOLIN_QEMU, else
 * qemu-system-<arch>. */
const char *gd_qemu_binary(const char *arch);

/* Internal, for tests: a VM whose channel is `fd` (the peer plays the guest), with no
 * QEMU behind it. */
int gd__vm_attach_fd(uv_loop_t *loop, int fd, gd_vm **out, gd_vm_ready_cb ready,
                     gd_vm_exit_cb exit_cb, void *ud);

#endif
