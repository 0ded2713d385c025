/* memsnap.c - memory snapshots of a running sandbox and their resume (docs/snapshots.md).
 *
 * Save: QEMU's migration stream goes into a hidden temporary next to the destination
 * while the guest is paused (gd_vm_save_memory); the guest runs on (or stays paused and
 * the sandbox stops, with --stop); a worker thread hashes the stream, appends the
 * metadata and the trailer, fsyncs and links the file into place.
 *
 * Resume: the VM starts paused with the same shape and loads the stream (core/vm). The
 * guest's root in memory comes back with it; the image is the same by buildId. */
#define _GNU_SOURCE
#include "sandbox_int.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

struct gd__memsnap {
    gd_sandbox *sb; /* NULL once the sandbox is gone (the file is still finished) */
    char path[1200], tmp[1400];
    int fd;
    int stop;
    gd_sandbox_snapshot_cb cb;
    void *ud;
    struct gd_snap_meta meta;
    uint64_t len, size;
    int rc;
    struct gd_err err;
    uv_work_t work;
    uint64_t t0, t_saved;
};

static void end(struct gd__memsnap *s, const char *path, uint64_t size, const char *error)
{
    gd_sandbox *sb = s->sb;
    if (sb) {
        sb->msnap = NULL;
        if (error)
            gd__sandbox_log(sb, "memory snapshot failed: %s", error);
        s->cb(sb, path, size, error, s->ud);
        if (s->stop && path) /* (a failed save left the guest running) */
            gd_sandbox_close(sb);
    }
    free(s);
}

static void seal_work(uv_work_t *w)
{
    struct gd__memsnap *s = w->data;
    s->rc = gd_snap_mem_finish(s->fd, s->tmp, s->len, &s->meta, s->path, &s->size, &s->err);
    s->fd = -1;
}

static void seal_done(uv_work_t *w, int status)
{
    struct gd__memsnap *s = w->data;
    if (status) { /* cancelled: never started */
        close(s->fd);
        unlink(s->tmp);
        end(s, NULL, 0, "the snapshot was cancelled");
        return;
    }
    if (s->rc) {
        end(s, NULL, 0, s->err.msg);
        return;
    }
    if (s->sb)
        gd__sandbox_log(s->sb,
                        "memory snapshot written: %s (%.1f MB; guest paused %.0f ms, sealed "
                        "%.0f ms later)",
                        s->path, (double)s->size / 1e6, (double)(s->t_saved - s->t0) / 1e6,
                        (double)(uv_hrtime() - s->t_saved) / 1e6);
    end(s, s->path, s->size, NULL);
}

static void on_saved(gd_vm *vm, int status, uint64_t len, const char *error, void *ud)
{
    (void)vm;
    struct gd__memsnap *s = ud;
    s->t_saved = uv_hrtime();
    if (status) {
        close(s->fd);
        unlink(s->tmp);
        end(s, NULL, 0, error);
        return;
    }
    s->len = len;
    s->work.data = s;
    if (uv_queue_work(s->sb->loop, &s->work, seal_work, seal_done)) {
        close(s->fd);
        unlink(s->tmp);
        end(s, NULL, 0, "cannot start the worker that writes the snapshot");
    }
}

int gd__memsnap_start(gd_sandbox *sb, const struct gd_sandbox_snapshot_opts *o,
                      gd_sandbox_snapshot_cb cb, void *ud, struct gd_err *err)
{
    if (gd_sandbox_cow(sb))
        return gd_err_set(err, -ENOTSUP,
                          "memory snapshots of a sandbox whose root is a disk overlay (rootfs "
                          "mode cow) are not supported; take a disk checkpoint instead");
    struct gd__memsnap *s = calloc(1, sizeof(*s));
    if (!s)
        return gd_err_set(err, -ENOMEM, "out of memory");
    s->sb = sb;
    s->stop = o->stop;
    s->cb = cb;
    s->ud = ud;
    s->t0 = uv_hrtime();
    snprintf(s->path, sizeof(s->path), "%s", o->path);
    s->meta = sb->meta;
    snprintf(s->meta.name, sizeof(s->meta.name), "%s", o->name ? o->name : "");
    snprintf(s->meta.session, sizeof(s->meta.session), "%s", o->session ? o->session : "");
    s->meta.created = (long long)time(NULL);
    s->meta.nmounts = 0; /* (none: a sandbox with mounts cannot be migrated) */
    s->meta.agent_minor = gd_vm_agent_minor(sb->vm);
    int rc = gd_vm_shape(sb->vm, s->meta.shape);
    if (rc) {
        free(s);
        return gd_err_set(err, rc, "cannot describe the VM's shape: %s", strerror(-rc));
    }
    s->fd = gd_snap_mem_begin(o->path, s->tmp, sizeof(s->tmp), err);
    if (s->fd < 0) {
        rc = s->fd;
        free(s);
        return rc;
    }
    if ((rc = gd_vm_save_memory(sb->vm, s->fd, o->stop, on_saved, s, err))) {
        close(s->fd);
        unlink(s->tmp);
        free(s);
        return rc;
    }
    sb->msnap = s;
    gd__sandbox_log(sb, "memory snapshot: saving to %s", o->path);
    return 0;
}

void gd__memsnap_detach(gd_sandbox *sb)
{
    if (sb->msnap)
        sb->msnap->sb = NULL;
    sb->msnap = NULL;
}

int gd__memsnap_resume_opts(gd_sandbox *sb, const struct gd_sandbox_opts *o,
                            const struct gd_snap_trailer *t, const struct gd_snap_meta *m,
                            struct gd_vm_resume *out, struct gd_err *err)
{
    if (!strcmp(m->rootfs, "cow"))
        return gd_err_set(err, -EINVAL,
                          "memory snapshot %s has its root on a disk overlay, which this "
                          "gondolin does not resume",
                          o->resume);
    if (sb->nmounts)
        return gd_err_set(err, -EINVAL,
                          "memory snapshot %s resumes without mounts (QEMU cannot migrate "
                          "vhost-user-fs devices): drop --mount-* and the policy's mounts",
                          o->resume);
    if (o->rootfs_mode && strcmp(o->rootfs_mode, m->rootfs))
        return gd_err_set(err, -EINVAL, "memory snapshot %s has rootfs mode %s, not %s", o->resume,
                          m->rootfs, o->rootfs_mode);
    if (m->agent_minor < 3)
        return gd_err_set(err, -EINVAL, "memory snapshot %s has a guest agent older than 1.3",
                          o->resume);
    memset(out, 0, sizeof(*out));
    out->path = o->resume;
    out->offset = t->qcow2_len;
    out->length = t->mem_len;
    memcpy(out->sha256, m->mem_sha, 32);
    memcpy(out->shape, m->shape, 32);
    return 0;
}

int gd__memsnap_check_shape(gd_sandbox *sb, const char *path, const struct gd_snap_meta *m,
                            struct gd_err *err)
{
    uint8_t shape[32];
    int rc = gd_vm_shape(sb->vm, shape);
    if (rc)
        return gd_err_set(err, rc, "cannot describe the VM's shape: %s", strerror(-rc));
    if (memcmp(shape, m->shape, 32))
        return gd_err_set(err, -EINVAL,
                          "memory snapshot %s was taken of a VM of another shape (it had %u MiB, "
                          "%u cpus; this one %u MiB, %u cpus; or the network, accelerator or "
                          "kernel arguments differ)",
                          path, m->memory_mb, m->cpus, sb->meta.memory_mb, sb->meta.cpus);
    return 0;
}
