/*
 * sandbox.h - one sandbox: a VM, its egress stack (policy engine, MITM CA, HTTP proxy,
 * guest network) and its policy revision, built from one typed options struct. Every
 * front end goes through it: `gondolin exec/bash`, the session supervisor behind
 * `gondolin start` and its control socket, and C programs.
 *
 * Runs on a caller-provided libuv loop; core/vm/ stays the QEMU/agent layer below it.
 * Functions return 0 or a negative errno (err, where given, says why in one line).
 */
#ifndef GD_SANDBOX_H
#define GD_SANDBOX_H

#include "base/err.h"
#include "engine/engine.h"
#include "forward/forward.h"
#include "policy/egress.h"
#include "vfs/vfs.h"
#include "vm/vm.h"

#include <uv.h>

typedef struct gd_sandbox gd_sandbox;

struct gd_sandbox_opts {
    /* The image: a directory or a store reference. NULL: the policy's vm.image, else
     * the default image. resolve_image (optional) turns the reference (NULL = default)
     * into a directory, e.g. building the default image on first use; without it a
     * reference goes through the image store and the default image must exist. */
    const char *image;
    int (*resolve_image)(void *ud, const char *ref, char *out, size_t cap, struct gd_err *err);
    void *image_ud;
    const char *accel;        /* "kvm", "tcg", NULL/"auto" */
    unsigned memory_mb, cpus; /* 0 = the policy's vm settings, else 1024 / 2 */
    const char *rootfs_mode;  /* NULL = the image's default; "cow": the root is a qcow2
                                 overlay on disk (needs qemu-img), which a checkpoint can
                                 keep (gd_sandbox_snapshot) */
    /* A disk checkpoint file to resume (docs/snapshots.md): verified (checksums, this
     * gondolin's version, the image's buildId) before use, never written; the root is
     * a new overlay over it. The image defaults to the checkpoint's, memory and cpus
     * to its; the rootfs mode is cow. */
    const char *resume;
    unsigned start_timeout_ms; /* 0 = the VM layer's default */
    int verbose;               /* print the QEMU command line */
    const char *append;        /* extra kernel arguments, or NULL */
    /* Boot instead of restoring the image's booted snapshot (docs/snapshots.md). Runs
     * with mounts always boot: vhost-user-fs devices cannot be migrated. */
    int cold_boot;

    /* Egress. no_network: no guest NIC at all (no policy may be given then). */
    int no_network;
    const char *policy;                      /* Lua policy file, or NULL */
    const struct gd_egress *egress;          /* typed rules (copied), or NULL = none */
    const char *const *plugin_dirs;          /* NULL-ended, scanned in order */
    const char *const *plugins;              /* NULL-ended .so paths */
    int quiet;                               /* no denial lines through log */
    void (*log)(void *ud, const char *line); /* policy, plugin and denial lines */
    /* after every reload attempt (watch, SIGHUP, gd_sandbox_reload) */
    void (*on_reload)(void *ud, int ok, const char *revision, const char *msg);
    void *ud; /* for the three callbacks above */

    const char *const *env; /* "K=V" for every exec (after placeholders and vm.env) */

    /* Ingress listeners opened with the sandbox (see gd_sandbox_expose); a port that
     * cannot be bound fails gd_sandbox_new. */
    const struct gd_sandbox_listen *listen;
    size_t nlisten;

    /* Files (docs/vfs.md): mounted in the guest before any command runs, together with
     * the policy's mounts (one given here replaces the policy's at the same path). */
    const struct gd_mount *mounts;
    size_t nmounts;
};

struct gd_sandbox_listen {
    struct gd_forward_spec spec;
    int raw;
};

typedef void (*gd_sandbox_ready_cb)(gd_sandbox *sb, int status, void *ud);
typedef void (*gd_sandbox_exit_cb)(gd_sandbox *sb, const char *reason, void *ud);

/* Builds the policy engine (first revision), resolves the image, prepares the egress
 * stack, the disk overlay (cow) and the VM; nothing runs yet. Fails with -EINVAL when
 * the policy or its rules are bad or the checkpoint to resume is corrupt or does not
 * fit, -ENOENT when the image cannot be found (or built), -EIO when the egress stack,
 * the overlay or the VM cannot be prepared; err says why. After a failure, run the loop once
 * so handles the egress stack had opened finish closing. */
int gd_sandbox_new(uv_loop_t *loop, const struct gd_sandbox_opts *o, gd_sandbox **out,
                   struct gd_err *err);
/* Starts the egress stack and boots the VM; ready(status) fires once (0: the agent is
 * up), exit_cb once when the VM is gone (reason NULL after gd_sandbox_close). */
int gd_sandbox_start(gd_sandbox *sb, gd_sandbox_ready_cb ready, gd_sandbox_exit_cb exit_cb,
                     void *ud);
/* Runs a process: like gd_exec_start, with the environment merged (placeholders, the
 * policy's vm.env, opts.env, then o->env; later wins). */
int gd_sandbox_exec(gd_sandbox *sb, const struct gd_exec_opts *o, const struct gd_exec_cbs *cbs,
                    void *ud, gd_exec **out);
/* Rebuilds the policy; on failure the old revision stays and err says why. */
int gd_sandbox_reload(gd_sandbox *sb, struct gd_err *err);
/* Stops the VM and the egress stack; exit_cb fires (reason NULL). */
void gd_sandbox_close(gd_sandbox *sb);
/* After exit_cb and a run of the loop that let the handles finish closing (or if the
 * sandbox never started). */
void gd_sandbox_free(gd_sandbox *sb);

gd_vm *gd_sandbox_vm(gd_sandbox *sb);
gd_engine *gd_sandbox_engine(gd_sandbox *sb); /* NULL with no_network */
const char *gd_sandbox_image_dir(const gd_sandbox *sb);
const char *gd_sandbox_build_id(const gd_sandbox *sb);
const char *gd_sandbox_revision(const gd_sandbox *sb); /* "" with no_network */
unsigned gd_sandbox_generation(const gd_sandbox *sb);
const char *gd_sandbox_policy(const gd_sandbox *sb); /* the policy path, or NULL */
/* The provider of the mount that holds the absolute guest path (the longest mount path
 * that is a prefix of it on a '/' boundary), borrowed: valid while the sandbox is; *rel
 * (when rel is not NULL) is the rest of the path, relative to the mount root ("" for the
 * root itself). NULL when no mount holds it. Providers are used from their transport's
 * thread: only the thread-safe calls (gd_vfs_overlay_changes, _export) may be made. */
gd_vfs_provider *gd_sandbox_mount_provider(gd_sandbox *sb, const char *guest, const char **rel);

/* ---- disk checkpoints (snapshot.c, docs/snapshots.md) ---- */

/* Whether the guest's root is a disk overlay (rootfs mode cow, or a resume). */
int gd_sandbox_cow(const gd_sandbox *sb);
struct gd_sandbox_snapshot_opts {
    const char *path;    /* the checkpoint file to create; must not exist (copied) */
    const char *name;    /* recorded in its metadata, or NULL (copied) */
    const char *session; /* the session's id, recorded, or NULL (copied) */
    /* A memory snapshot: RAM and device state too, taken while the guest is paused for
     * the save; the sandbox runs on, or stops once it is saved (stop). Not for a root
     * on a disk overlay or a sandbox with mounts (-ENOTSUP). */
    int memory, stop;
};
/* path and error are borrowed for the call; exactly one of them is NULL. */
typedef void (*gd_sandbox_snapshot_cb)(gd_sandbox *sb, const char *path, uint64_t size,
                                       const char *error, void *ud);
/* Disk checkpoint: syncs the guest's filesystems (and freezes the root, or remounts it read-only),
 * stops the sandbox, and keeps its disk overlay as a checkpoint at o->path (written as
 * a hidden temporary, fsync'ed and renamed into place: never a partial file under that
 * name). cb fires once, before the sandbox's exit_cb. Fails at once (-ENOTSUP) when
 * the root is not a disk overlay, -EEXIST when the file exists, -EBUSY while stopping
 * or checkpointing; err says why. If the guest's sync fails (or takes over 120 s), the
 * sandbox keeps running and cb reports the error. */
int gd_sandbox_snapshot(gd_sandbox *sb, const struct gd_sandbox_snapshot_opts *o,
                        gd_sandbox_snapshot_cb cb, void *ud, struct gd_err *err);

/* ---- ingress (expose.c) ---- */

/* A host listener forwarding to a port on the guest's loopback through the agent (no
 * guest NIC): HTTP-aware (the ingress proxy: the policy's ingress hooks and the audit
 * see every request; WebSocket upgrades are tunneled; a guest port with no listener is
 * 502), or raw bytes. Lives until the sandbox closes. *port (optional) gets the bound
 * port. */
int gd_sandbox_expose(gd_sandbox *sb, const struct gd_forward_spec *spec, int raw, unsigned *port,
                      struct gd_err *err);
/* The open forwards (bound ports), newest first: fills up to cap, returns how many. */
struct gd_sandbox_forward {
    char host[64];
    unsigned port, guest_port;
    int raw;
};
size_t gd_sandbox_forwards(const gd_sandbox *sb, struct gd_sandbox_forward *out, size_t cap);

/* ---- host -> guest SSH (ssh.c) ---- */

struct gd_ssh_opts {
    const char *user;        /* NULL = root */
    const char *listen_host; /* NULL = 127.0.0.1 */
    unsigned listen_port;    /* 0 = ephemeral */
    const char *key_dir;     /* required: an existing private (0700) directory where the
                                client key and known_hosts file are written */
};
struct gd_ssh_access {
    const char *host, *user, *identity, *known_hosts;
    unsigned port;
    const char *command; /* "ssh -i ... -p PORT USER@HOST" (no host-key prompt: the
                            host key is pinned in known_hosts) */
};
/* a is NULL on failure, with error one line. Borrowed for the call. */
typedef void (*gd_ssh_cb)(gd_sandbox *sb, const struct gd_ssh_access *a, const char *error,
                          void *ud);
/* Starts sshd in the guest on 127.0.0.1:22 with an ephemeral host key and client key
 * pair (made with the host's ssh-keygen), hardened options (keys only, the one user, no
 * forwarding of agents, TCP, X11 or tunnels), and a raw forward from a host loopback
 * port to it. A second call answers with the same access. Fails (through cb) with a
 * clear message when the image has no sshd. */
int gd_sandbox_ssh(gd_sandbox *sb, const struct gd_ssh_opts *o, gd_ssh_cb cb, void *ud);

#endif
