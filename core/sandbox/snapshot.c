/* snapshot.c - disk checkpoints of a running sandbox (docs/snapshots.md): sync the
 * guest, stop the VM, and once QEMU is gone (its qcow2 metadata written out) turn the
 * overlay into a checkpoint file. */
#define _GNU_SOURCE
#include "sandbox_int.h"

#include <errno.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* How long the guest may take to sync (a guest that never answers must not hold
 * `gondolin snapshot` forever): then the checkpoint fails and the sandbox runs on. */
#define SYNC_TIMEOUT_MS 120000

struct gd__snap {
    gd_sandbox *sb;
    char path[1200], name[128], session[40];
    gd_sandbox_snapshot_cb cb;
    void *ud;
    unsigned gen; /* which checkpoint of this sandbox (a late sync reply is matched) */
    int stopping; /* the guest synced; the VM is being stopped for us */
    uv_timer_t timer;
};

static void on_timer_closed(uv_handle_t *h)
{
    free(h->data);
}

/* The end of a checkpoint: cb fires, the record goes (freed once its timer closed). */
static void finish(gd_sandbox *sb, const char *path, uint64_t size, const char *error)
{
    struct gd__snap *s = sb->snap;
    if (!s)
        return;
    sb->snap = NULL;
    if (error)
        gd__sandbox_log(sb, "checkpoint failed: %s", error);
    s->cb(sb, path, size, error, s->ud);
    uv_close((uv_handle_t *)&s->timer, on_timer_closed);
}

static void on_sync_timeout(uv_timer_t *t)
{
    struct gd__snap *s = t->data;
    finish(s->sb, NULL, 0, "the guest did not sync its filesystems within 120 s; it keeps running");
}

static void on_synced(gd_sandbox *sb, int code, const char *out, const char *err, void *ud)
{
    (void)out;
    struct gd__snap *s = sb->snap;
    if (!s || s->gen != (unsigned)(uintptr_t)ud || s->stopping)
        return; /* (an answer after the timeout) */
    uv_timer_stop(&s->timer);
    if (code != 0) {
        char why[600];
        snprintf(why, sizeof(why), "the guest could not sync its filesystems (status %d)%s%.400s",
                 code, err && err[0] ? ": " : "", err ? err : "");
        why[strcspn(why, "\n")] = 0;
        finish(sb, NULL, 0, why);
        return;
    }
    s->stopping = 1;
    gd_sandbox_close(sb);
}

int gd_sandbox_snapshot(gd_sandbox *sb, const struct gd_sandbox_snapshot_opts *o,
                        gd_sandbox_snapshot_cb cb, void *ud, struct gd_err *err)
{
    if (o->memory) {
        if (sb->closing || sb->snap || sb->msnap)
            return gd_err_set(err, -EBUSY, "the sandbox is stopping or being snapshotted");
        if (!o->path || strlen(o->path) >= 1200)
            return gd_err_set(err, -EINVAL, "no snapshot path, or a path too long");
        return gd__memsnap_start(sb, o, cb, ud, err);
    }
    if (!gd_sandbox_cow(sb))
        return gd_err_set(err, -ENOTSUP,
                          "this sandbox's root is not on a disk overlay (its writes live in "
                          "guest memory): start it with --rootfs-mode cow to checkpoint it");
    if (sb->closing || sb->snap || sb->msnap)
        return gd_err_set(err, -EBUSY, "the sandbox is stopping or being checkpointed");
    if (!o->path || strlen(o->path) >= sizeof(sb->snap->path))
        return gd_err_set(err, -EINVAL, "no checkpoint path, or a path too long");
    if (access(o->path, F_OK) == 0)
        return gd_err_set(err, -EEXIST, "%s exists already", o->path);
    char d[1200];
    snprintf(d, sizeof(d), "%s", o->path);
    if (access(dirname(d), W_OK))
        return gd_err_set(err, -errno, "cannot write checkpoint %s: %s", o->path, strerror(errno));
    static unsigned gens;
    struct gd__snap *s = calloc(1, sizeof(*s));
    if (!s)
        return gd_err_set(err, -ENOMEM, "out of memory");
    s->sb = sb;
    s->gen = ++gens;
    snprintf(s->path, sizeof(s->path), "%s", o->path);
    snprintf(s->name, sizeof(s->name), "%s", o->name ? o->name : "");
    snprintf(s->session, sizeof(s->session), "%s", o->session ? o->session : "");
    s->cb = cb;
    s->ud = ud;
    /* sync, then keep the root from changing until QEMU is gone: freeze it, else
     * remount it read-only (clean on disk; refused while a file is open for writing);
     * when neither works the checkpoint holds what was synced */
    static const char *const argv[] = {
        "/bin/sh", "-c",
        "sync || exit 1; fsfreeze -f / 2>/dev/null || mount -o remount,ro / 2>/dev/null; exit 0",
        NULL};
    int rc = gd__sandbox_run(sb, argv, NULL, 0, on_synced, (void *)(uintptr_t)s->gen);
    if (rc) {
        free(s);
        return gd_err_set(err, rc, "cannot run sync in the guest: %s", strerror(-rc));
    }
    uv_timer_init(sb->loop, &s->timer);
    s->timer.data = s;
    uv_timer_start(&s->timer, on_sync_timeout, SYNC_TIMEOUT_MS, 0);
    sb->snap = s;
    gd__sandbox_log(sb, "checkpoint: syncing the guest, then stopping it");
    return 0;
}

void gd__snapshot_on_exit(gd_sandbox *sb, const char *reason)
{
    struct gd__snap *s = sb->snap;
    if (!s)
        return;
    if (!s->stopping) {
        char why[600];
        snprintf(why, sizeof(why), "the sandbox stopped before the checkpoint was taken%s%.500s",
                 reason ? ": " : "", reason ? reason : "");
        finish(sb, NULL, 0, why);
        return;
    }
    struct gd__disk *d = &sb->disk;
    struct gd_err err = {{0}};
    /* a resumed overlay sits on the checkpoint it came from: copy what it needs from
     * there, so the new checkpoint depends on the image alone */
    if (d->resumed && gd_snap_overlay_flatten(d->path, d->rootfs, &err)) {
        finish(sb, NULL, 0, err.msg);
        return;
    }
    struct gd_snap_meta m = sb->meta;
    snprintf(m.name, sizeof(m.name), "%s", s->name);
    snprintf(m.session, sizeof(m.session), "%s", s->session);
    m.created = (long long)time(NULL);
    uint64_t size = 0;
    if (gd_snap_write(d->path, &m, s->path, &size, &err)) {
        finish(sb, NULL, 0, err.msg);
        return;
    }
    d->path[0] = 0; /* the checkpoint has it now */
    gd__sandbox_log(sb, "checkpoint written: %s (%.1f MB)", s->path, (double)size / 1e6);
    finish(sb, s->path, size, NULL);
}
