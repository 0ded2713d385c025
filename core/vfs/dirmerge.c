/* dirmerge.c - a directory listed from two providers with stable cookies (layer_int.h).
 * The first layer's own cookies are never handed out: an entry's cookie is its position
 * in that layer's order, so any 64-bit cookie scheme below fits, and the last position
 * and the layer cookie that followed it are kept per open directory so reading on is a
 * seek, not a rescan (a cookie from elsewhere costs one rescan up to it). */
#include "vfs/layer_int.h"

#include <errno.h>
#include <limits.h>
#include <string.h>

struct dm_ctx {
    struct gd__dmerge *m;
    int layer;
    int stopped;
    uint64_t idx;     /* first layer: the position of the entry at hand */
    uint64_t skip_to; /* first layer: positions up to this one were listed before */
    gd__dm_filter_fn filter;
    void *ud;
    gd_vfs_fill_fn fill;
    void *ctx;
};

static int is_dots(const char *name)
{
    return name[0] == '.' && (!name[1] || (name[1] == '.' && !name[2]));
}

static int dm_fill(void *vc, const char *name, uint64_t off, unsigned type, const struct stat *st)
{
    struct dm_ctx *c = vc;
    uint64_t cookie;
    if (c->layer == 0) {
        uint64_t idx = ++c->idx;
        if (idx >= GD__DM_SECOND)
            return -EOVERFLOW;
        if (idx <= c->skip_to || is_dots(name)) {
            c->m->idx = idx;
            c->m->cookie = off;
            return 0;
        }
        cookie = idx;
    } else {
        if (is_dots(name))
            return 0;
        if (off > (uint64_t)INT64_MAX - 3 - GD__DM_SECOND)
            return -EOVERFLOW;
        cookie = GD__DM_SECOND + off;
    }
    struct stat s;
    const struct stat *sp = NULL;
    if (st) {
        s = *st;
        sp = &s;
    } else {
        memset(&s, 0, sizeof(s));
    }
    unsigned t = type;
    int r = c->filter(c->ud, c->layer, name, &t, &s, &sp);
    if (r < 0)
        return r;
    if (r > 0) {
        int f = c->fill(c->ctx, name, cookie, t, sp);
        if (f) {
            c->stopped = 1;
            return f;
        }
    }
    if (c->layer == 0) {
        c->m->idx = cookie;
        c->m->cookie = off;
    }
    return 0;
}

static int empty_ok(int e)
{
    return e == -ENOENT || e == -ENOTDIR ? 0 : e;
}

int gd__dmerge_readdir(struct gd__dmerge *m, const struct gd__dm_layer *first,
                       const struct gd__dm_layer *second, const char *path, uint64_t off,
                       gd__dm_filter_fn filter, void *ud, gd_vfs_fill_fn fill, void *ctx)
{
    struct dm_ctx c = {.m = m, .filter = filter, .ud = ud, .fill = fill, .ctx = ctx};
    uint64_t off2 = 0;
    if (off < GD__DM_SECOND) {
        const gd_vfs_provider *pv = first ? first->pv : NULL;
        if (pv && pv->ops->readdir) {
            uint64_t start = 0;
            if (off && m->idx == off) {
                c.idx = off;
                start = m->cookie;
            } else {
                c.skip_to = off;
            }
            int e = empty_ok(pv->ops->readdir(pv->p, path, first->fh, start, dm_fill, &c));
            if (e < 0 || c.stopped)
                return e < 0 ? e : 0;
        }
    } else {
        off2 = off - GD__DM_SECOND;
    }
    const gd_vfs_provider *pv = second ? second->pv : NULL;
    if (!pv || !pv->ops->readdir)
        return 0;
    c.layer = 1;
    int e = empty_ok(pv->ops->readdir(pv->p, path, second->fh, off2, dm_fill, &c));
    return e < 0 ? e : 0;
}

int gd__path_join(char *out, const char *dir, const char *name)
{
    size_t dl = strlen(dir), nl = strlen(name);
    if (dl + 1 + nl + 1 > PATH_MAX)
        return -ENAMETOOLONG;
    if (dl) {
        memcpy(out, dir, dl);
        out[dl] = '/';
        memcpy(out + dl + 1, name, nl + 1);
    } else {
        memcpy(out, name, nl + 1);
    }
    return 0;
}

int gd__list_dir(const gd_vfs_provider *pv, const char *path, gd_vfs_fill_fn fill, void *ctx)
{
    const struct gd_vfs_ops *ops = pv->ops;
    uint64_t fh = 0;
    if (!ops->readdir)
        return -ENOSYS;
    if (ops->opendir) {
        int e = ops->opendir(pv->p, path, &fh);
        if (e)
            return e;
    }
    int e = ops->readdir(pv->p, path, fh, 0, fill, ctx);
    if (ops->opendir && ops->releasedir)
        ops->releasedir(pv->p, fh);
    return e < 0 ? e : 0;
}
