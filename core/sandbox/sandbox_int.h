/* sandbox_int.h - what the files of core/sandbox share. */
#ifndef GD_SANDBOX_INT_H
#define GD_SANDBOX_INT_H

#include "http/http.h"
#include "image/image.h"
#include "net/net.h"
#include "sandbox/sandbox.h"
#include "snap/snap.h"
#include "ssh/ssh.h"
#include "tls/tls.h"

/* The egress stack of one sandbox (netstack.c): MITM CA, proxy, guest network. */
struct gd_netstack {
    gd_engine *eng; /* borrowed */
    uv_loop_t *loop;
    gd_tls *tls;
    gd_proxy *px;
    gd_ssh_proxy *sshpx; /* NULL until the policy has an SSH rule */
    char ssh_pub[400];   /* its host key, "TYPE:BASE64" (once sshpx is made) */
    gd_net *net;
    int qemu_fd;  /* the end QEMU gets; closed once QEMU has it */
    char **env;   /* secret placeholders for the guest, NULL-terminated */
    char *kernel; /* the guest's kernel arguments: network and CA */
};

/* Starts CA, proxy and network on loop for the engine's current revision. */
int gd__netstack_start(struct gd_netstack *n, uv_loop_t *loop, gd_engine *eng, struct gd_err *err);
/* Closes proxy and network (their handles finish closing on the loop). */
void gd__netstack_stop(struct gd_netstack *n);
void gd__netstack_free(struct gd_netstack *n);
/* The guest's /etc/ssh/ssh_known_hosts for the current revision's SSH rules (one line:
 * every rule's name, the proxy's host key; the proxy is made if it was not), malloc'd;
 * NULL without rules (or memory). */
char *gd__netstack_known_hosts(struct gd_netstack *n);
/* Writes it into the guest (known_hosts.c) when it differs from what the guest has:
 * after the VM is ready (then calls sb->ready) and after every reload; one write at a
 * time, the last revision's wins. */
void gd__known_hosts_ready(gd_sandbox *sb);
void gd__known_hosts_reloaded(gd_sandbox *sb);
/* The VM has gone: no more writes, the timer closes (on the loop). */
void gd__known_hosts_stop(gd_sandbox *sb);

/* A guest command run to completion (run.c): stdin from a buffer (copied), stdout and
 * stderr collected (first 4 KiB each). code: exit status, 128+N for a signal, -1 when it
 * could not start (err then says why), -2 when the VM went away under it. */
typedef void (*gd__run_cb)(gd_sandbox *sb, int code, const char *out, const char *err, void *ud);
int gd__sandbox_run(gd_sandbox *sb, const char *const *argv, const void *in, size_t in_len,
                    gd__run_cb cb, void *ud);

/* The sandbox's ingress listeners (expose.c). */
struct gd__fwd {
    gd_forward *fw;
    struct gd_sandbox_forward info;
    struct gd__fwd *next;
};
void gd__sandbox_close_forwards(gd_sandbox *sb);
/* The SSH state (ssh.c), freed with the sandbox. */
struct gd__ssh;
void gd__ssh_free(struct gd__ssh *s);
/* The sandbox's mounts (mounts.c): providers, sessions and virtio-fs back-ends for the
 * options' and the policy's mounts; fills sb->vmfs for the VM. */
struct gd__mount;
int gd__mounts_start(gd_sandbox *sb, const struct gd_sandbox_opts *o, struct gd_err *err);
void gd__mounts_stop(gd_sandbox *sb); /* joins the back-ends' threads */
void gd__mounts_free(gd_sandbox *sb);
void gd__sandbox_log(gd_sandbox *sb, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The root disk in rootfs mode cow (disk.c): a qcow2 overlay in a private state
 * directory, removed with the sandbox unless a checkpoint took it. */
struct gd__disk {
    char state[1100];  /* "" when the root is not a disk overlay */
    char path[1200];   /* state/disk.qcow2; "" once a checkpoint took it */
    char rootfs[1200]; /* the image's rootfs.ext4 */
    int resumed;       /* its backing is a checkpoint */
};
/* Resolves the image of a resume (o->resume verified into *t, *m) when none was given,
 * and checks the checkpoint fits it. */
int gd__disk_resume_image(gd_sandbox *sb, const struct gd_sandbox_opts *o,
                          struct gd_snap_trailer *t, struct gd_snap_meta *m, struct gd_err *err);
/* In rootfs mode cow (or a resume), makes the overlay; sb->disk says where. */
int gd__disk_prepare(gd_sandbox *sb, const struct gd_sandbox_opts *o, const struct gd_image *img,
                     const struct gd_snap_trailer *t, const struct gd_snap_meta *m,
                     struct gd_err *err);
void gd__disk_free(gd_sandbox *sb);
/* A checkpoint in progress (snapshot.c); the VM's exit finishes it at the latest (its
 * record is freed when its timer has closed, before the sandbox may be freed). */
struct gd__snap;
void gd__snapshot_on_exit(gd_sandbox *sb, const char *reason);

/* Memory snapshots (memsnap.c). */
struct gd__memsnap;
int gd__memsnap_start(gd_sandbox *sb, const struct gd_sandbox_snapshot_opts *o,
                      gd_sandbox_snapshot_cb cb, void *ud, struct gd_err *err);
/* The sandbox goes: a snapshot still being written finishes without it. */
void gd__memsnap_detach(gd_sandbox *sb);
/* A memory snapshot to resume (o->resume, t and m read): the VM options for it. */
int gd__memsnap_resume_opts(gd_sandbox *sb, const struct gd_sandbox_opts *o,
                            const struct gd_snap_trailer *t, const struct gd_snap_meta *m,
                            struct gd_vm_resume *out, struct gd_err *err);
/* The new VM's shape is the snapshot's, or a one-line refusal. */
int gd__memsnap_check_shape(gd_sandbox *sb, const char *path, const struct gd_snap_meta *m,
                            struct gd_err *err);

struct gd_sandbox {
    uv_loop_t *loop;
    gd_engine *eng;
    struct gd_netstack ns;
    int have_ns;
    gd_vm *vm;
    char image_dir[1024];
    char build_id[65];
    char *policy;
    char **env; /* placeholders, the policy's vm.env, opts.env: "K=V", NULL-ended */
    char *append;
    void (*log)(void *ud, const char *line);
    void (*on_reload)(void *ud, int ok, const char *revision, const char *msg);
    void *log_ud;
    gd_sandbox_ready_cb ready;
    gd_sandbox_exit_cb exit_cb;
    void *ud;
    int closing;
    struct gd__fwd *fwds;
    struct gd__ssh *ssh;
    struct gd__mount *mounts;
    size_t nmounts;
    struct gd_vm_fs vmfs[GD_VFS_MAX_MOUNTS];
    struct gd__disk disk;
    struct gd__snap *snap;
    struct gd__memsnap *msnap;
    struct gd_snap_meta meta; /* what a checkpoint records: image, shape, mounts */
    /* known_hosts.c: what the guest's file holds, a write in flight, another wanted */
    char *kh_line;
    int kh_state; /* 0 before ready, 1 idle, 2 writing, 3 writing and another wanted */
    int kh_ready_pending;
    uv_timer_t *kh_timer; /* the write's deadline before ready is reported anyway */
};

#endif
