/* readonly.c - the read-only wrapper (vfs.h): reads go to the inner provider, every
 * mutating operation is EROFS, and so is an open for writing or truncating. The session
 * refuses those already for a provider flagged GD_VFS_READONLY; the wrapper refuses them
 * again so it holds whoever calls it. */
#include "base/err.h"
#include "vfs/vfs.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>

#define INNER(p) ((gd_vfs_provider *)(p))

static int r_getattr(void *p, const char *path, struct stat *st)
{
    return INNER(p)->ops->getattr ? INNER(p)->ops->getattr(INNER(p)->p, path, st) : -ENOSYS;
}

/* setattr with nothing to set only reports (the session's GETATTR of an unlinked file) */
static int r_setattr(void *p, const char *path, uint64_t fh, const struct gd_vfs_setattr *a,
                     struct stat *out)
{
    if (a->valid || !INNER(p)->ops->setattr)
        return -EROFS;
    return INNER(p)->ops->setattr(INNER(p)->p, path, fh, a, out);
}

static int r_readlink(void *p, const char *path, char *buf, size_t cap)
{
    return INNER(p)->ops->readlink ? INNER(p)->ops->readlink(INNER(p)->p, path, buf, cap) : -ENOSYS;
}

static int r_open(void *p, const char *path, int flags, uint64_t *fh)
{
    if ((flags & O_ACCMODE) != O_RDONLY || (flags & (O_TRUNC | O_CREAT)))
        return -EROFS;
    return INNER(p)->ops->open ? INNER(p)->ops->open(INNER(p)->p, path, flags, fh) : -ENOSYS;
}

static ssize_t r_read(void *p, uint64_t fh, void *buf, size_t n, uint64_t off)
{
    return INNER(p)->ops->read ? INNER(p)->ops->read(INNER(p)->p, fh, buf, n, off) : -ENOSYS;
}

static int r_flush(void *p, uint64_t fh)
{
    return INNER(p)->ops->flush ? INNER(p)->ops->flush(INNER(p)->p, fh) : 0;
}

static int r_release(void *p, uint64_t fh)
{
    return INNER(p)->ops->release ? INNER(p)->ops->release(INNER(p)->p, fh) : 0;
}

static int r_opendir(void *p, const char *path, uint64_t *fh)
{
    return INNER(p)->ops->opendir ? INNER(p)->ops->opendir(INNER(p)->p, path, fh) : 0;
}

static int r_readdir(void *p, const char *path, uint64_t fh, uint64_t off, gd_vfs_fill_fn fill,
                     void *ctx)
{
    return INNER(p)->ops->readdir ? INNER(p)->ops->readdir(INNER(p)->p, path, fh, off, fill, ctx)
                                  : -ENOSYS;
}

static int r_releasedir(void *p, uint64_t fh)
{
    return INNER(p)->ops->releasedir ? INNER(p)->ops->releasedir(INNER(p)->p, fh) : 0;
}

static int r_statfs(void *p, const char *path, struct statvfs *st)
{
    return INNER(p)->ops->statfs ? INNER(p)->ops->statfs(INNER(p)->p, path, st) : -ENOSYS;
}

static ssize_t r_getxattr(void *p, const char *path, const char *name, void *buf, size_t cap)
{
    return INNER(p)->ops->getxattr ? INNER(p)->ops->getxattr(INNER(p)->p, path, name, buf, cap)
                                   : -EOPNOTSUPP;
}

static ssize_t r_listxattr(void *p, const char *path, char *buf, size_t cap)
{
    return INNER(p)->ops->listxattr ? INNER(p)->ops->listxattr(INNER(p)->p, path, buf, cap)
                                    : -EOPNOTSUPP;
}

static int64_t r_lseek(void *p, uint64_t fh, int64_t off, int whence)
{
    return INNER(p)->ops->lseek ? INNER(p)->ops->lseek(INNER(p)->p, fh, off, whence) : -ENOSYS;
}

static void r_destroy(void *p)
{
    gd_vfs_provider_free(INNER(p));
}

/* Every mutating op is left NULL: the session answers EROFS for those. */
static const struct gd_vfs_ops readonly_ops = {
    .getattr = r_getattr,
    .setattr = r_setattr,
    .readlink = r_readlink,
    .open = r_open,
    .read = r_read,
    .flush = r_flush,
    .release = r_release,
    .opendir = r_opendir,
    .readdir = r_readdir,
    .releasedir = r_releasedir,
    .statfs = r_statfs,
    .getxattr = r_getxattr,
    .listxattr = r_listxattr,
    .lseek = r_lseek,
    .destroy = r_destroy,
};

int gd_vfs_readonly_new(gd_vfs_provider *inner, gd_vfs_provider **out, struct gd_err *err)
{
    if (!inner || !inner->ops) {
        gd_vfs_provider_free(inner);
        return gd_err_set(err, -EINVAL, "readonly provider: nothing to wrap");
    }
    gd_vfs_provider *pv = calloc(1, sizeof(*pv));
    if (!pv) {
        gd_vfs_provider_free(inner);
        return gd_err_set(err, -ENOMEM, "readonly provider: out of memory");
    }
    pv->ops = &readonly_ops;
    pv->p = inner;
    /* nothing changes through this mount, but the inner tree may change under it (a
     * host directory): its EXCLUSIVE says whether long caches are safe */
    pv->flags = GD_VFS_READONLY | (inner->flags & (GD_VFS_EXCLUSIVE | GD_VFS_DOTS));
    pv->name = "readonly";
    *out = pv;
    return 0;
}
