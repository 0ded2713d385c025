/* mounts.c - the sandbox's files: the mounts given in its options and its policy's, each
 * a provider behind a FUSE session behind a virtio-fs back-end, handed to the VM as a
 * vhost-user-fs device and mounted by the guest's init (parents first). */
#define _GNU_SOURCE
#include "sandbox_int.h"

#include "vfs/vhost.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct gd__mount {
    char guest[1024];
    char tag[16];
    gd_vfs_session *s;
    gd_vfs_provider *pv; /* borrowed: the session owns it (change listings) */
    gd_vhost_fs *v;
    int qemu_fd;
    struct gd_vfs_hooks hooks;
};

static long handle(void *ud, const void *in, size_t n, void *out, size_t cap)
{
    return gd_vfs_session_handle(ud, in, n, out, cap);
}

static int by_length(const void *a, const void *b)
{
    const struct gd_mount *x = *(const struct gd_mount *const *)a,
                          *y = *(const struct gd_mount *const *)b;
    size_t lx = strlen(x->guest), ly = strlen(y->guest);
    return lx < ly ? -1 : lx > ly ? 1 : strcmp(x->guest, y->guest);
}

/* The options' mounts, then the policy's at paths the options leave free; parents first. */
static size_t collect(gd_sandbox *sb, const struct gd_sandbox_opts *o, const struct gd_mount **all)
{
    size_t n = 0, np = 0;
    for (size_t i = 0; i < o->nmounts && n < GD_VFS_MAX_MOUNTS; i++)
        all[n++] = &o->mounts[i];
    const struct gd_mount *pm = sb->eng ? gd_engine_mounts(sb->eng, &np) : NULL;
    for (size_t i = 0; i < np; i++) {
        int taken = 0;
        for (size_t k = 0; k < o->nmounts; k++)
            taken |= !strcmp(o->mounts[k].guest, pm[i].guest);
        if (taken)
            gd__sandbox_log(sb, "mount %s: the command line's replaces the policy's", pm[i].guest);
        else if (n < GD_VFS_MAX_MOUNTS)
            all[n++] = &pm[i];
    }
    qsort(all, n, sizeof(*all), by_length);
    return n;
}

int gd__mounts_start(gd_sandbox *sb, const struct gd_sandbox_opts *o, struct gd_err *err)
{
    const struct gd_mount *all[2 * GD_VFS_MAX_MOUNTS];
    size_t n = collect(sb, o, all);
    if (!n)
        return 0;
    if (!(sb->mounts = calloc(n, sizeof(*sb->mounts))))
        return gd_err_set(err, -ENOMEM, "out of memory");
    /* hooks and Lua providers hop from the back-ends' threads to the loop */
    if (sb->eng && gd_engine_vfs_start(sb->eng, sb->loop))
        return gd_err_set(err, -EIO, "cannot start the policy's file bridge");
    for (size_t i = 0; i < n; i++) {
        struct gd__mount *m = &sb->mounts[i];
        m->qemu_fd = -1;
        sb->nmounts++;
        snprintf(m->guest, sizeof(m->guest), "%s", all[i]->guest);
        snprintf(m->tag, sizeof(m->tag), "gdfs%zu", i);
        gd_vfs_provider *pv = NULL;
        int policy_kind = all[i]->kind == GD_MOUNT_LUA || all[i]->kind == GD_MOUNT_PLUGIN;
        int rc = policy_kind && sb->eng ? gd_engine_mount_provider(sb->eng, all[i], &pv, err)
                                        : gd_mount_provider(all[i], &pv, err);
        if (rc) {
            gd_err_prefix(err, "mount %s: ", m->guest);
            return rc;
        }
        struct gd_vfs_session_opts so = {.mount = m->guest};
        if (sb->eng && !gd_engine_vfs_hooks(sb->eng, m->guest, &m->hooks))
            so.hooks = &m->hooks;
        m->pv = pv;
        if ((rc = gd_vfs_session_new(pv, &so, &m->s, err)) ||
            (rc = gd_vhost_fs_start(handle, m->s, &m->qemu_fd, &m->v, err))) {
            gd_err_prefix(err, "mount %s: ", m->guest);
            return rc;
        }
        sb->vmfs[i] = (struct gd_vm_fs){.tag = m->tag, .guest = m->guest, .fd = m->qemu_fd};
    }
    return 0;
}

void gd__mounts_stop(gd_sandbox *sb)
{
    /* a back-end waiting for the loop (a hook, a Lua provider) gets EIO and returns */
    if (sb->eng && sb->nmounts)
        gd_engine_vfs_stop(sb->eng);
    for (size_t i = 0; i < sb->nmounts; i++) {
        struct gd__mount *m = &sb->mounts[i];
        if (m->v) {
            gd_vhost_fs_stop(m->v);
            m->v = NULL;
        }
        if (m->qemu_fd >= 0) {
            close(m->qemu_fd);
            m->qemu_fd = -1;
        }
    }
}

void gd__mounts_free(gd_sandbox *sb)
{
    gd__mounts_stop(sb);
    for (size_t i = 0; i < sb->nmounts; i++)
        gd_vfs_session_free(sb->mounts[i].s);
    free(sb->mounts);
    sb->mounts = NULL;
    sb->nmounts = 0;
}

gd_vfs_provider *gd_sandbox_mount_provider(gd_sandbox *sb, const char *guest, const char **rel)
{
    struct gd__mount *best = NULL;
    size_t bl = 0;
    for (size_t i = 0; i < sb->nmounts; i++) {
        struct gd__mount *m = &sb->mounts[i];
        size_t l = strlen(m->guest);
        if (!m->s || strncmp(guest, m->guest, l) || (guest[l] && guest[l] != '/' && l > 1))
            continue;
        if (!best || l > bl)
            best = m, bl = l;
    }
    if (!best)
        return NULL;
    if (rel) {
        const char *r = guest + bl;
        while (*r == '/')
            r++;
        *rel = r;
    }
    return best->pv;
}
