/*
 * vfs_provider.c - the providers of policy mounts (engine.h): a Lua table of functions
 * adapted to struct gd_vfs_ops (each op hops to the loop through the bridge; open
 * handles are a table of paths here, on the transport's side), and a plugin's
 * registered provider made by its factory.
 */
#define _GNU_SOURCE
#include "engine/engine_int.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_HANDLES 65536

struct handle {
    char *path; /* NULL: a free slot */
};

struct lprov {
    gd_engine *e;
    char *mount;
    struct handle *h; /* fh = index + 1 */
    size_t nh;
};

/* ---- one call on the loop ---- */

struct pcall {
    struct lprov *pv;
    struct gd_lua_fscall c;
};

static long run_call(gd_engine *e, void *arg)
{
    struct pcall *p = arg;
    /* the current revision's table while it serves this mount, else the running one's */
    struct rev *r = e->cur;
    if (!r->lua || !gd_lua_has_provider(r->lua, p->pv->mount))
        r = e->boot;
    if (!r || !r->lua) {
        snprintf(p->c.why, sizeof(p->c.why), "no Lua provider at %s", p->pv->mount);
        return -EIO;
    }
    long rc = gd_lua_provider_call(r->lua, p->pv->mount, &p->c);
    if (p->c.why[0])
        gd__engine_log(e, "mount %s: %s", p->pv->mount, p->c.why);
    return rc;
}

/* path is the provider's ("" = the root, "a/b"); Lua sees "/" and "/a/b". */
static long call(struct lprov *pv, enum gd_lua_fsop op, const char *path, const char *path2,
                 struct gd_lua_fscall *in)
{
    char p1[4200], p2[4200];
    if (snprintf(p1, sizeof(p1), "/%s", path) >= (int)sizeof(p1) ||
        (path2 && snprintf(p2, sizeof(p2), "/%s", path2) >= (int)sizeof(p2)))
        return -ENAMETOOLONG;
    struct pcall p = {.pv = pv};
    if (in)
        p.c = *in;
    p.c.op = op;
    p.c.path = p1;
    p.c.path2 = path2 ? p2 : NULL;
    return gd__vfs_call(pv->e, run_call, &p);
}

static const char *fh_path(struct lprov *pv, uint64_t fh)
{
    return fh && fh <= pv->nh ? pv->h[fh - 1].path : NULL;
}

static int fh_new(struct lprov *pv, const char *path, uint64_t *fh)
{
    size_t i = 0;
    while (i < pv->nh && pv->h[i].path)
        i++;
    if (i == pv->nh) {
        if (pv->nh >= MAX_HANDLES)
            return -EMFILE;
        size_t n = pv->nh ? pv->nh * 2 : 16;
        struct handle *q = realloc(pv->h, n * sizeof(*q));
        if (!q)
            return -ENOMEM;
        memset(q + pv->nh, 0, (n - pv->nh) * sizeof(*q));
        pv->h = q;
        pv->nh = n;
    }
    if (!(pv->h[i].path = strdup(path)))
        return -ENOMEM;
    *fh = i + 1;
    return 0;
}

static int fh_free(struct lprov *pv, uint64_t fh)
{
    if (!fh_path(pv, fh))
        return -EBADF;
    free(pv->h[fh - 1].path);
    pv->h[fh - 1].path = NULL;
    return 0;
}

/* ---- the ops ---- */

static int l_getattr(void *p, const char *path, struct stat *st)
{
    struct gd_lua_fscall c = {.st = st};
    return (int)call(p, GD_LUA_FS_GETATTR, path, NULL, &c);
}

/* After a call that made or changed path: its attributes. */
static int stat_after(void *p, int rc, const char *path, struct stat *out)
{
    return rc ? rc : out ? l_getattr(p, path, out) : 0;
}

static int l_setattr(void *p, const char *path, uint64_t fh, const struct gd_vfs_setattr *a,
                     struct stat *out)
{
    if (fh && fh_path(p, fh))
        path = fh_path(p, fh);
    if (a->valid & (GD_VFS_SET_MODE | GD_VFS_SET_UID | GD_VFS_SET_GID))
        return -EPERM;
    int rc = 0;
    if (a->valid & GD_VFS_SET_SIZE) {
        struct gd_lua_fscall c = {.size = a->size};
        rc = (int)call(p, GD_LUA_FS_TRUNCATE, path, NULL, &c);
    }
    return stat_after(p, rc, path, out); /* times are the provider's own */
}

static int l_readlink(void *p, const char *path, char *buf, size_t cap)
{
    struct gd_lua_fscall c = {.buf = buf, .n = cap};
    return (int)call(p, GD_LUA_FS_READLINK, path, NULL, &c);
}

static int l_mkdir(void *p, const char *path, mode_t mode, struct stat *out)
{
    struct gd_lua_fscall c = {.mode = mode};
    return stat_after(p, (int)call(p, GD_LUA_FS_MKDIR, path, NULL, &c), path, out);
}

static int l_unlink(void *p, const char *path)
{
    return (int)call(p, GD_LUA_FS_UNLINK, path, NULL, NULL);
}

static int l_rmdir(void *p, const char *path)
{
    return (int)call(p, GD_LUA_FS_RMDIR, path, NULL, NULL);
}

static int l_rename(void *p, const char *from, const char *to, unsigned flags)
{
    if (flags)
        return -EINVAL; /* RENAME_NOREPLACE / EXCHANGE / WHITEOUT: not in the Lua contract */
    return (int)call(p, GD_LUA_FS_RENAME, from, to, NULL);
}

static int l_open(void *p, const char *path, int flags, uint64_t *fh)
{
    struct gd_lua_fscall c = {.flags = flags};
    int rc = (int)call(p, GD_LUA_FS_OPEN, path, NULL, &c);
    return rc ? rc : fh_new(p, path, fh);
}

static int l_create(void *p, const char *path, int flags, mode_t mode, uint64_t *fh,
                    struct stat *out)
{
    (void)flags;
    struct gd_lua_fscall c = {.mode = mode};
    int rc = stat_after(p, (int)call(p, GD_LUA_FS_CREATE, path, NULL, &c), path, out);
    return rc ? rc : fh_new(p, path, fh);
}

static ssize_t l_read(void *p, uint64_t fh, void *buf, size_t n, uint64_t off)
{
    const char *path = fh_path(p, fh);
    if (!path)
        return -EBADF;
    struct gd_lua_fscall c = {.buf = buf, .n = n, .off = off};
    return call(p, GD_LUA_FS_READ, path, NULL, &c);
}

static ssize_t l_write(void *p, uint64_t fh, const void *buf, size_t n, uint64_t off)
{
    const char *path = fh_path(p, fh);
    if (!path)
        return -EBADF;
    struct gd_lua_fscall c = {.data = buf, .n = n, .off = off};
    return call(p, GD_LUA_FS_WRITE, path, NULL, &c);
}

static int l_flush(void *p, uint64_t fh)
{
    return fh_path(p, fh) ? 0 : -EBADF;
}

static int l_fsync(void *p, uint64_t fh, int datasync)
{
    (void)datasync;
    return l_flush(p, fh);
}

static int l_release(void *p, uint64_t fh)
{
    return fh_free(p, fh);
}

static int l_opendir(void *p, const char *path, uint64_t *fh)
{
    return fh_new(p, path, fh);
}

static int l_readdir(void *p, const char *path, uint64_t fh, uint64_t off, gd_vfs_fill_fn fill,
                     void *ctx)
{
    if (fh && fh_path(p, fh))
        path = fh_path(p, fh);
    struct gd_lua_fscall c = {.off = off, .fill = fill, .fill_ctx = ctx};
    return (int)call(p, GD_LUA_FS_READDIR, path, NULL, &c);
}

static int l_statfs(void *p, const char *path, struct statvfs *st)
{
    (void)p, (void)path;
    memset(st, 0, sizeof(*st));
    st->f_bsize = st->f_frsize = 4096;
    st->f_namemax = 255;
    return 0;
}

static void l_destroy(void *p)
{
    struct lprov *pv = p;
    for (size_t i = 0; i < pv->nh; i++)
        free(pv->h[i].path);
    free(pv->h);
    free(pv->mount);
    free(pv);
}

static const struct gd_vfs_ops lua_ops = {
    .getattr = l_getattr,
    .setattr = l_setattr,
    .readlink = l_readlink,
    .mkdir = l_mkdir,
    .unlink = l_unlink,
    .rmdir = l_rmdir,
    .rename = l_rename,
    .open = l_open,
    .create = l_create,
    .read = l_read,
    .write = l_write,
    .flush = l_flush,
    .fsync = l_fsync,
    .release = l_release,
    .opendir = l_opendir,
    .readdir = l_readdir,
    .releasedir = l_release,
    .statfs = l_statfs,
    .destroy = l_destroy,
};

/* ---- building them ---- */

static const struct gd_plugin_vfs *find_plugin_provider(struct rev *r, const char *name)
{
    for (size_t k = 0; r && k < r->ninst; k++) {
        const struct gd_plugin_vfs *v = gd_plugin_vfs_provider(r->inst[k], name);
        if (v)
            return v;
    }
    return NULL;
}

int gd_engine_mount_provider(gd_engine *e, const struct gd_mount *m, gd_vfs_provider **out,
                             struct gd_err *err)
{
    *out = NULL;
    if (m->kind != GD_MOUNT_LUA && m->kind != GD_MOUNT_PLUGIN)
        return gd_err_set(err, -ENOTSUP, "mount %s: built by gd_mount_provider, not the engine",
                          m->guest);
    gd_vfs_provider *pv = calloc(1, sizeof(*pv));
    if (!pv)
        return gd_err_set(err, -ENOMEM, "out of memory");
    pv->flags = m->readonly ? GD_VFS_READONLY : 0;
    if (m->kind == GD_MOUNT_LUA) {
        struct lprov *lp = calloc(1, sizeof(*lp));
        if (!lp || !(lp->mount = strdup(m->guest))) {
            free(lp);
            free(pv);
            return gd_err_set(err, -ENOMEM, "out of memory");
        }
        lp->e = e;
        pv->ops = &lua_ops;
        pv->p = lp;
        pv->name = "lua";
        *out = pv;
        return 0;
    }
    /* a plugin's: from the running mounts' revision (pinned, so the plugin instance and
     * the ops it registered outlive the provider) */
    const struct gd_plugin_vfs *v = find_plugin_provider(e->boot, m->provider);
    if (!v) {
        free(pv);
        return gd_err_set(err, -ENOENT, "mount %s: no loaded plugin registers a VFS provider '%s'",
                          m->guest, m->provider);
    }
    char why[256] = "";
    void *p = NULL;
    if (v->factory(v->ud, m->guest, m->config ? m->config : "{}", &p, why, sizeof(why))) {
        char clean[256];
        gd_sanitize(clean, sizeof(clean), why, strnlen(why, sizeof(why)));
        free(pv);
        return gd_err_set(err, -EINVAL, "mount %s: provider %s refused: %s", m->guest, v->name,
                          clean[0] ? clean : "no reason given");
    }
    pv->ops = &v->ops;
    pv->p = p;
    pv->name = v->name;
    *out = pv;
    return 0;
}
