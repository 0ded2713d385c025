/* overlay.c - the overlay provider (vfs.h): reads from a lower provider that is never
 * changed, every change goes to an upper one. Both are addressed by the same paths: the
 * upper tree mirrors the parts of the overlay that changed (parent directories are
 * copied up on demand), and the paths whose lower entry is gone are kept in a whiteout
 * tree of our own (overlay_wt.c), never as files. An upper entry always wins; a lower
 * entry is seen unless a whiteout covers it or an ancestor.
 *
 * Invariants the operations keep: an upper directory whose lower counterpart must not
 * show through carries a whiteout (it is opaque); an upper non-directory never sits over
 * a visible lower directory. Directories are renamed only when no lower entry shows
 * through them (else EXDEV, and the guest's mv copies). */
#define _GNU_SOURCE
#include "base/err.h"
#include "vfs/overlay_int.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/xattr.h>

#define OVL_UPPER_ONLY (1ull << 63) /* st_ino of an entry made in the upper layer */
#define OVL_MAX_WHITEOUTS (1u << 20)
#define OVL_COPY_CHUNK (128u << 10)

struct inomap {
    struct gd__hlink link; /* key: the upper ino */
    uint64_t lower;
};

static void unlock_cb(pthread_mutex_t **m)
{
    pthread_mutex_unlock(*m);
}
#define LOCKED(o)                                                                                  \
    pthread_mutex_t *lk_ __attribute__((cleanup(unlock_cb))) = &(o)->mu;                           \
    pthread_mutex_lock(lk_)

#define LO(o, op, ...)                                                                             \
    ((o)->lower->ops->op ? (o)->lower->ops->op((o)->lower->p, __VA_ARGS__) : -ENOSYS)
#define UP(o, op, ...)                                                                             \
    ((o)->upper->ops->op ? (o)->upper->ops->op((o)->upper->p, __VA_ARGS__) : -ENOSYS)

/* ---- paths and attributes ---- */

/* the parent of path ("" for a top-level name) in out[PATH_MAX] */
static void parent_of(char *out, const char *path)
{
    const char *slash = strrchr(path, '/');
    size_t n = slash ? (size_t)(slash - path) : 0;
    memcpy(out, path, n);
    out[n] = 0;
}

uint64_t gd__ovl_upper_ino(const struct gd__ovl *o, uint64_t ino)
{
    for (struct gd__hlink *l = gd__htab_first(&o->inos, ino); l; l = l->next)
        if (l->key == ino)
            return ((const struct inomap *)l)->lower;
    return ino | OVL_UPPER_ONLY;
}

static void map_upper(const struct gd__ovl *o, struct stat *st)
{
    st->st_ino = gd__ovl_upper_ino(o, st->st_ino);
}

static int upper_stat(struct gd__ovl *o, const char *path, struct stat *st)
{
    int e = UP(o, getattr, path, st);
    if (!e)
        map_upper(o, st);
    return e;
}

int gd__ovl_lower_stat(struct gd__ovl *o, const char *path, struct stat *st)
{
    if (gd__wt_masked(&o->wt, path))
        return -ENOENT;
    return LO(o, getattr, path, st);
}

/* the entry as the guest sees it; *layer 1 lower, 2 upper */
static int ostat(struct gd__ovl *o, const char *path, struct stat *st, int *layer)
{
    int e = upper_stat(o, path, st);
    if (!e) {
        if (layer)
            *layer = 2;
        return 0;
    }
    if (e != -ENOENT && e != -ENOTDIR)
        return e;
    e = gd__ovl_lower_stat(o, path, st);
    if (!e && layer)
        *layer = 1;
    return e == -ENOTDIR ? -ENOENT : e;
}

static int has_upper(struct gd__ovl *o, const char *path)
{
    struct stat st;
    return UP(o, getattr, path, &st) == 0;
}

/* Does the lower directory at path show its entries (it exists, nothing masks it)? */
static int lower_shows(struct gd__ovl *o, const char *path)
{
    struct stat st;
    return gd__ovl_lower_stat(o, path, &st) == 0 && S_ISDIR(st.st_mode);
}

/* the parent of a name to be made must be a directory the guest sees */
static int check_parent(struct gd__ovl *o, const char *path, char *pbuf)
{
    struct stat st;
    parent_of(pbuf, path);
    int e = ostat(o, pbuf, &st, NULL);
    if (e)
        return e;
    return S_ISDIR(st.st_mode) ? 0 : -ENOTDIR;
}

/* ---- copy-up ---- */

static void copy_xattrs(struct gd__ovl *o, const char *path)
{
    if (!o->lower->ops->listxattr || !o->lower->ops->getxattr || !o->upper->ops->setxattr)
        return;
    ssize_t n = LO(o, listxattr, path, NULL, 0);
    if (n <= 0 || n > GD_FUSE_XATTR_SIZE_MAX)
        return;
    char *names = malloc((size_t)n), *val = malloc(GD_FUSE_XATTR_SIZE_MAX);
    if (names && val && (n = LO(o, listxattr, path, names, (size_t)n)) > 0) {
        for (char *x = names; x < names + n; x += strlen(x) + 1) {
            ssize_t v = LO(o, getxattr, path, x, val, GD_FUSE_XATTR_SIZE_MAX);
            if (v >= 0)
                UP(o, setxattr, path, x, val, (size_t)v, 0); /* best effort */
        }
    }
    free(names);
    free(val);
}

/* mode, owner and times of the lower entry onto its upper copy */
static int copy_attrs(struct gd__ovl *o, const char *path, const struct stat *lst)
{
    struct gd_vfs_setattr a = {
        .valid =
            GD_VFS_SET_MODE | GD_VFS_SET_UID | GD_VFS_SET_GID | GD_VFS_SET_ATIME | GD_VFS_SET_MTIME,
        .mode = lst->st_mode & 07777,
        .uid = lst->st_uid,
        .gid = lst->st_gid,
        .atime = lst->st_atim,
        .mtime = lst->st_mtim,
    };
    if (S_ISLNK(lst->st_mode))
        a.valid &= ~(unsigned)GD_VFS_SET_MODE;
    struct stat st;
    int e = UP(o, setattr, path, 0, &a, &st);
    if (e)
        return e;
    copy_xattrs(o, path);
    /* the guest sees the copy under the lower number */
    struct inomap *m = calloc(1, sizeof(*m));
    if (!m)
        return -ENOMEM;
    m->link.key = st.st_ino;
    m->lower = lst->st_ino;
    gd__htab_add(&o->inos, &m->link);
    return 0;
}

static int copy_data(struct gd__ovl *o, const char *path, uint64_t ufh)
{
    uint64_t lfh;
    int e = LO(o, open, path, O_RDONLY, &lfh);
    if (e)
        return e;
    char *buf = malloc(OVL_COPY_CHUNK);
    uint64_t off = 0;
    e = buf ? 0 : -ENOMEM;
    while (!e) {
        ssize_t n = LO(o, read, lfh, buf, OVL_COPY_CHUNK, off);
        if (n <= 0) {
            e = (int)n;
            break;
        }
        ssize_t w = UP(o, write, ufh, buf, (size_t)n, off);
        if (w != n)
            e = w < 0 ? (int)w : -EIO;
        off += (uint64_t)n;
    }
    free(buf);
    if (o->lower->ops->release)
        LO(o, release, lfh);
    return e;
}

static int copy_up(struct gd__ovl *o, const char *path, int data);

/* every directory of path (path included) in the upper layer */
static int copy_up_dirs(struct gd__ovl *o, const char *path)
{
    if (!*path || has_upper(o, path))
        return 0;
    char parent[PATH_MAX];
    parent_of(parent, path);
    int e = copy_up_dirs(o, parent);
    return e ? e : copy_up(o, path, 0);
}

/* Makes the upper copy of the lower entry at path (data: a regular file's bytes too). */
static int copy_up(struct gd__ovl *o, const char *path, int data)
{
    struct stat lst, st;
    if (has_upper(o, path))
        return 0;
    int e = gd__ovl_lower_stat(o, path, &lst);
    if (e)
        return e == -ENOTDIR ? -ENOENT : e;
    char parent[PATH_MAX];
    parent_of(parent, path);
    if ((e = copy_up_dirs(o, parent)))
        return e;
    mode_t perm = 0600 | (lst.st_mode & 07777);
    if (S_ISDIR(lst.st_mode)) {
        e = UP(o, mkdir, path, 0700 | perm, &st);
    } else if (S_ISLNK(lst.st_mode)) {
        char *t = malloc(PATH_MAX);
        int n = t ? LO(o, readlink, path, t, PATH_MAX - 1) : -ENOMEM;
        if (n >= 0) {
            t[n] = 0;
            e = UP(o, symlink, t, path, &st);
        } else {
            e = n;
        }
        free(t);
    } else if (S_ISREG(lst.st_mode)) {
        uint64_t ufh;
        e = UP(o, create, path, O_WRONLY | O_CREAT | O_EXCL, perm, &ufh, &st);
        if (!e) {
            if (data && lst.st_size > 0)
                e = copy_data(o, path, ufh);
            if (o->upper->ops->release)
                UP(o, release, ufh);
        }
    } else {
        e = UP(o, mknod, path, lst.st_mode, lst.st_rdev, &st);
    }
    if (!e)
        e = copy_attrs(o, path, &lst);
    if (e && has_upper(o, path)) { /* a partial copy must not hide the original */
        if (S_ISDIR(lst.st_mode))
            UP(o, rmdir, path);
        else
            UP(o, unlink, path);
    }
    return e;
}

/* Is the directory at path empty as the guest sees it? 1 yes, 0 no, negative error. */
struct empty_ctx {
    struct gd__ovl *o;
    const char *dir; /* NULL: every entry counts (the upper layer) */
    int found;
};

static int empty_fill(void *ctx, const char *name, uint64_t off, unsigned type,
                      const struct stat *st)
{
    struct empty_ctx *c = ctx;
    char p[PATH_MAX];
    (void)off, (void)type, (void)st;
    if (name[0] == '.' && (!name[1] || (name[1] == '.' && !name[2])))
        return 0;
    if (!c->dir || gd__path_join(p, c->dir, name) || !gd__wt_masked(&c->o->wt, p)) {
        c->found = 1;
        return 1;
    }
    return 0;
}

static int dir_empty(struct gd__ovl *o, const char *path)
{
    struct empty_ctx c = {.o = o};
    int e = 0;
    if (has_upper(o, path))
        e = gd__list_dir(o->upper, path, empty_fill, &c);
    if (e >= 0 && !c.found && lower_shows(o, path)) {
        c.dir = path;
        e = gd__list_dir(o->lower, path, empty_fill, &c);
    }
    return e < 0 ? e : !c.found;
}

/* ---- handles ---- */

static int handle_add(struct gd__ovl *o, int layer, int dir, uint64_t fh, uint64_t *out)
{
    size_t i;
    if (o->free_h) {
        i = o->free_h - 1;
        o->free_h = o->h[i].next_free;
    } else {
        if (o->nh % 64 == 0) {
            struct gd__ohandle *nh = realloc(o->h, (o->nh + 64) * sizeof(*nh));
            if (!nh)
                return -ENOMEM;
            o->h = nh;
        }
        i = o->nh++;
    }
    o->h[i] = (struct gd__ohandle){.layer = layer, .dir = dir, .fh = fh};
    *out = i + 1;
    return 0;
}

static struct gd__ohandle *handle_get(struct gd__ovl *o, uint64_t fh, int dir)
{
    if (fh == 0 || fh > o->nh || !o->h[fh - 1].layer || o->h[fh - 1].dir != dir)
        return NULL;
    return &o->h[fh - 1];
}

static void handle_del(struct gd__ovl *o, uint64_t fh)
{
    o->h[fh - 1] = (struct gd__ohandle){.next_free = o->free_h};
    o->free_h = fh;
}

static const gd_vfs_provider *layer_pv(const struct gd__ovl *o, const struct gd__ohandle *h)
{
    return h->layer == 1 ? o->lower : o->upper;
}

/* ---- operations ---- */

static int o_getattr(void *p, const char *path, struct stat *st)
{
    struct gd__ovl *o = p;
    LOCKED(o);
    return ostat(o, path, st, NULL);
}

static int o_setattr(void *p, const char *path, uint64_t fh, const struct gd_vfs_setattr *a,
                     struct stat *out)
{
    struct gd__ovl *o = p;
    LOCKED(o);
    struct gd__ohandle *h = fh ? handle_get(o, fh, 0) : NULL;
    if (fh && !h)
        return -EBADF;
    if (!a->valid) { /* a report (fstat), maybe of a file whose name is gone */
        if (h && h->layer == 2) {
            int e = UP(o, setattr, path, h->fh, a, out);
            if (!e)
                map_upper(o, out);
            return e;
        }
        return h ? LO(o, getattr, path, out) : ostat(o, path, out, NULL);
    }
    int e = copy_up(o, path, !(a->valid & GD_VFS_SET_SIZE) || a->size > 0);
    if (e && !(h && h->layer == 2))
        return e;
    e = UP(o, setattr, path, h && h->layer == 2 ? h->fh : 0, a, out);
    if (!e)
        map_upper(o, out);
    return e;
}

static int o_readlink(void *p, const char *path, char *buf, size_t cap)
{
    struct gd__ovl *o = p;
    LOCKED(o);
    int layer;
    struct stat st;
    int e = ostat(o, path, &st, &layer);
    if (e)
        return e;
    return layer == 2 ? UP(o, readlink, path, buf, cap) : LO(o, readlink, path, buf, cap);
}

/* Before making a name: its parent is a directory, the name is free, the upper layer has
 * the parent. */
static int prepare_new(struct gd__ovl *o, const char *path)
{
    struct stat st;
    int e = check_parent(o, path, o->b1);
    if (e)
        return e;
    e = ostat(o, path, &st, NULL);
    if (e == 0)
        return -EEXIST;
    if (e != -ENOENT)
        return e;
    return copy_up_dirs(o, o->b1);
}

static int o_mknod(void *p, const char *path, mode_t mode, dev_t rdev, struct stat *out)
{
    struct gd__ovl *o = p;
    LOCKED(o);
    int e = prepare_new(o, path);
    if (!e && !(e = UP(o, mknod, path, mode, rdev, out)))
        map_upper(o, out);
    return e;
}

static int o_mkdir(void *p, const char *path, mode_t mode, struct stat *out)
{
    struct gd__ovl *o = p;
    LOCKED(o);
    /* a whiteout left where a lower directory was removed makes the new one opaque */
    int e = prepare_new(o, path);
    if (!e && !(e = UP(o, mkdir, path, mode, out)))
        map_upper(o, out);
    return e;
}

static int o_symlink(void *p, const char *target, const char *path, struct stat *out)
{
    struct gd__ovl *o = p;
    LOCKED(o);
    int e = prepare_new(o, path);
    if (!e && !(e = UP(o, symlink, target, path, out)))
        map_upper(o, out);
    return e;
}

/* The name at path goes (the upper entry, if any, already removed by the caller or about
 * to be): a visible lower entry gets a whiteout. */
static int white_if_lower(struct gd__ovl *o, const char *path, int *added)
{
    struct stat st;
    *added = 0;
    if (gd__ovl_lower_stat(o, path, &st))
        return 0;
    int e = gd__wt_add(&o->wt, path);
    *added = !e;
    return e;
}

static int o_unlink(void *p, const char *path)
{
    struct gd__ovl *o = p;
    LOCKED(o);
    struct stat st;
    int layer, added;
    int e = ostat(o, path, &st, &layer);
    if (e)
        return e;
    if (S_ISDIR(st.st_mode))
        return -EISDIR;
    if ((e = white_if_lower(o, path, &added)))
        return e;
    if (layer == 2 && (e = UP(o, unlink, path)) && added)
        gd__wt_del(&o->wt, path);
    return e;
}

static int o_rmdir(void *p, const char *path)
{
    struct gd__ovl *o = p;
    LOCKED(o);
    struct stat st;
    int layer, added;
    if (!*path)
        return -EBUSY;
    int e = ostat(o, path, &st, &layer);
    if (e)
        return e;
    if (!S_ISDIR(st.st_mode))
        return -ENOTDIR;
    if ((e = dir_empty(o, path)) <= 0)
        return e ? e : -ENOTEMPTY;
    if ((e = white_if_lower(o, path, &added)))
        return e;
    if (has_upper(o, path) && (e = UP(o, rmdir, path)) && added)
        gd__wt_del(&o->wt, path);
    return e;
}

/* May the directory at path move as a whole (no lower entry shows through it)? */
static int pure_upper_dir(struct gd__ovl *o, const char *path)
{
    return has_upper(o, path) && (gd__wt_masked(&o->wt, path) || !lower_shows(o, path));
}

/* A directory that now sits where a lower entry is visible hides that entry's subtree. */
static int opaque_if_lower(struct gd__ovl *o, const char *path)
{
    struct stat st;
    if (UP(o, getattr, path, &st) || !S_ISDIR(st.st_mode) || gd__ovl_lower_stat(o, path, &st))
        return 0;
    return gd__wt_add(&o->wt, path);
}

static int o_rename(void *p, const char *from, const char *to, unsigned flags)
{
    struct gd__ovl *o = p;
    LOCKED(o);
    if (flags & ~(unsigned)(RENAME_NOREPLACE | RENAME_EXCHANGE) ||
        ((flags & RENAME_NOREPLACE) && (flags & RENAME_EXCHANGE)))
        return -EINVAL;
    struct stat sa, sb;
    int e = ostat(o, from, &sa, NULL);
    if (e)
        return e;
    if ((e = check_parent(o, to, o->b1)))
        return e;
    int eb = ostat(o, to, &sb, NULL);
    if (eb && eb != -ENOENT)
        return eb;
    int xchg = flags & RENAME_EXCHANGE;
    if (xchg && eb)
        return -ENOENT;
    if (!eb && (flags & RENAME_NOREPLACE))
        return -EEXIST;
    if (!strcmp(from, to))
        return 0;
    size_t fl = strlen(from);
    if ((S_ISDIR(sa.st_mode) && !strncmp(to, from, fl) && to[fl] == '/') ||
        (xchg && S_ISDIR(sb.st_mode) && !strncmp(from, to, strlen(to)) && from[strlen(to)] == '/'))
        return -EINVAL;
    if (!eb && !xchg) {
        if (S_ISDIR(sa.st_mode) && !S_ISDIR(sb.st_mode))
            return -ENOTDIR;
        if (!S_ISDIR(sa.st_mode) && S_ISDIR(sb.st_mode))
            return -EISDIR;
        if (S_ISDIR(sb.st_mode) && (e = dir_empty(o, to)) <= 0)
            return e ? e : -ENOTEMPTY;
    }
    /* what moves must be whole in the upper layer */
    if (S_ISDIR(sa.st_mode) ? !pure_upper_dir(o, from) : (e = copy_up(o, from, 1)) != 0)
        return e ? e : -EXDEV;
    if (xchg && (S_ISDIR(sb.st_mode) ? !pure_upper_dir(o, to) : (e = copy_up(o, to, 1)) != 0))
        return e ? e : -EXDEV;
    if ((e = copy_up_dirs(o, o->b1)))
        return e;
    int added = 0;
    if (!xchg && (e = white_if_lower(o, from, &added)))
        return e;
    /* the upper layer may lack the target where only a lower entry was: nothing to
     * replace there, the merged checks above decided */
    if ((e = UP(o, rename, from, to, xchg ? RENAME_EXCHANGE : 0))) {
        if (added)
            gd__wt_del(&o->wt, from);
        return e;
    }
    e = opaque_if_lower(o, to);
    if (!e && xchg)
        e = opaque_if_lower(o, from);
    return e;
}

static int o_link(void *p, const char *from, const char *to, struct stat *out)
{
    struct gd__ovl *o = p;
    LOCKED(o);
    struct stat st;
    int e = ostat(o, from, &st, NULL);
    if (e)
        return e;
    if (S_ISDIR(st.st_mode))
        return -EPERM;
    if ((e = prepare_new(o, to)) || (e = copy_up(o, from, 1)))
        return e;
    if (!(e = UP(o, link, from, to, out)))
        map_upper(o, out);
    return e;
}

static int wants_write(int flags)
{
    return (flags & O_ACCMODE) != O_RDONLY || (flags & O_TRUNC);
}

static int open_layer(struct gd__ovl *o, const char *path, int flags, uint64_t *fh)
{
    struct stat st;
    int layer, e;
    if (wants_write(flags)) {
        int trunc = (flags & O_TRUNC) && (flags & O_ACCMODE) != O_RDONLY;
        if ((e = copy_up(o, path, !trunc)))
            return e;
        layer = 2;
    } else if ((e = ostat(o, path, &st, &layer))) {
        return e;
    }
    uint64_t lfh;
    e = layer == 2 ? UP(o, open, path, flags, &lfh) : LO(o, open, path, flags, &lfh);
    if (e)
        return e;
    if ((e = handle_add(o, layer, 0, lfh, fh))) {
        const gd_vfs_provider *pv = layer == 2 ? o->upper : o->lower;
        if (pv->ops->release)
            pv->ops->release(pv->p, lfh);
    }
    return e;
}

static int o_open(void *p, const char *path, int flags, uint64_t *fh)
{
    struct gd__ovl *o = p;
    LOCKED(o);
    return open_layer(o, path, flags, fh);
}

static int o_create(void *p, const char *path, int flags, mode_t mode, uint64_t *fh,
                    struct stat *out)
{
    struct gd__ovl *o = p;
    LOCKED(o);
    int e = ostat(o, path, out, NULL);
    if (e == 0) { /* it came to be since the guest looked */
        if (flags & O_EXCL)
            return -EEXIST;
        if (S_ISDIR(out->st_mode))
            return -EISDIR;
        if ((e = open_layer(o, path, flags & ~(O_CREAT | O_EXCL), fh)))
            return e;
        return ostat(o, path, out, NULL);
    }
    if ((e = prepare_new(o, path)))
        return e;
    uint64_t ufh;
    if ((e = UP(o, create, path, flags, mode, &ufh, out)))
        return e;
    map_upper(o, out);
    if ((e = handle_add(o, 2, 0, ufh, fh)) && o->upper->ops->release)
        UP(o, release, ufh);
    return e;
}

static ssize_t o_read(void *p, uint64_t fh, void *buf, size_t n, uint64_t off)
{
    struct gd__ovl *o = p;
    LOCKED(o);
    struct gd__ohandle *h = handle_get(o, fh, 0);
    if (!h)
        return -EBADF;
    const gd_vfs_provider *pv = layer_pv(o, h);
    return pv->ops->read ? pv->ops->read(pv->p, h->fh, buf, n, off) : -ENOSYS;
}

static ssize_t o_write(void *p, uint64_t fh, const void *buf, size_t n, uint64_t off)
{
    struct gd__ovl *o = p;
    LOCKED(o);
    struct gd__ohandle *h = handle_get(o, fh, 0);
    if (!h || h->layer != 2)
        return -EBADF;
    return UP(o, write, h->fh, buf, n, off);
}

static int o_flush(void *p, uint64_t fh)
{
    struct gd__ovl *o = p;
    LOCKED(o);
    struct gd__ohandle *h = handle_get(o, fh, 0);
    if (!h)
        return -EBADF;
    const gd_vfs_provider *pv = layer_pv(o, h);
    return pv->ops->flush ? pv->ops->flush(pv->p, h->fh) : 0;
}

static int o_fsync(void *p, uint64_t fh, int datasync)
{
    struct gd__ovl *o = p;
    LOCKED(o);
    struct gd__ohandle *h = handle_get(o, fh, 0);
    if (!h)
        return -EBADF;
    const gd_vfs_provider *pv = layer_pv(o, h);
    return pv->ops->fsync ? pv->ops->fsync(pv->p, h->fh, datasync) : 0;
}

static int o_release(void *p, uint64_t fh)
{
    struct gd__ovl *o = p;
    LOCKED(o);
    struct gd__ohandle *h = handle_get(o, fh, 0);
    if (!h)
        return -EBADF;
    const gd_vfs_provider *pv = layer_pv(o, h);
    int e = pv->ops->release ? pv->ops->release(pv->p, h->fh) : 0;
    handle_del(o, fh);
    return e;
}

static int o_opendir(void *p, const char *path, uint64_t *fh)
{
    struct gd__ovl *o = p;
    LOCKED(o);
    struct stat st;
    int e = ostat(o, path, &st, NULL);
    if (e)
        return e;
    if (!S_ISDIR(st.st_mode))
        return -ENOTDIR;
    uint64_t lfh = 0;
    int lower = !gd__wt_is(&o->wt, path) && lower_shows(o, path);
    if (lower && o->lower->ops->opendir && (e = LO(o, opendir, path, &lfh)))
        return e;
    if ((e = handle_add(o, lower ? 1 : 2, 1, lfh, fh)) && lower && o->lower->ops->releasedir)
        LO(o, releasedir, lfh);
    return e;
}

struct rd_ctx {
    struct gd__ovl *o;
    const char *dir;
    int lower; /* the lower directory shows */
};

/* First the lower names (each as the upper entry when there is one), then the upper
 * names the lower layer does not have: a name is listed once even when it is copied up
 * in the middle of a listing. */
static int rd_filter(void *ud, int layer, const char *name, unsigned *type, struct stat *st,
                     const struct stat **stp)
{
    struct rd_ctx *c = ud;
    struct stat u;
    char path[PATH_MAX];
    if (gd__path_join(path, c->dir, name))
        return 0;
    if (layer == 0) {
        if (upper_stat(c->o, path, &u) == 0) {
            *st = u;
            *stp = st;
            *type = IFTODT(u.st_mode);
            return 1;
        }
        return !gd__wt_masked(&c->o->wt, path);
    }
    if (c->lower && LO(c->o, getattr, path, &u) == 0)
        return 0;
    if (*stp)
        map_upper(c->o, st);
    return 1;
}

static int o_readdir(void *p, const char *path, uint64_t fh, uint64_t off, gd_vfs_fill_fn fill,
                     void *ctx)
{
    struct gd__ovl *o = p;
    LOCKED(o);
    struct gd__ohandle *h = fh ? handle_get(o, fh, 1) : NULL, tmp = {0};
    if (fh && !h)
        return -EBADF;
    if (!h) {
        h = &tmp;
        h->layer = lower_shows(o, path) ? 1 : 2;
    }
    struct rd_ctx c = {.o = o, .dir = path};
    c.lower = h->layer == 1 && !gd__wt_is(&o->wt, path) && lower_shows(o, path);
    struct gd__dm_layer l1 = {c.lower ? o->lower : NULL, h->fh}, l2 = {o->upper, 0};
    return gd__dmerge_readdir(&h->dm, &l1, &l2, path, off, rd_filter, &c, fill, ctx);
}

static int o_releasedir(void *p, uint64_t fh)
{
    struct gd__ovl *o = p;
    LOCKED(o);
    struct gd__ohandle *h = handle_get(o, fh, 1);
    if (!h)
        return -EBADF;
    int e = 0;
    if (h->layer == 1 && o->lower->ops->opendir && o->lower->ops->releasedir)
        e = LO(o, releasedir, h->fh);
    handle_del(o, fh);
    return e;
}

static int o_statfs(void *p, const char *path, struct statvfs *st)
{
    struct gd__ovl *o = p;
    LOCKED(o);
    (void)path;
    /* the room left is the upper layer's: that is where writes go */
    return UP(o, statfs, "", st);
}

static int o_setxattr(void *p, const char *path, const char *name, const void *value, size_t n,
                      int flags)
{
    struct gd__ovl *o = p;
    LOCKED(o);
    int e = copy_up(o, path, 1);
    return e ? e : UP(o, setxattr, path, name, value, n, flags);
}

static ssize_t o_getxattr(void *p, const char *path, const char *name, void *buf, size_t cap)
{
    struct gd__ovl *o = p;
    LOCKED(o);
    struct stat st;
    int layer, e = ostat(o, path, &st, &layer);
    if (e)
        return e;
    return layer == 2 ? UP(o, getxattr, path, name, buf, cap)
                      : LO(o, getxattr, path, name, buf, cap);
}

static ssize_t o_listxattr(void *p, const char *path, char *buf, size_t cap)
{
    struct gd__ovl *o = p;
    LOCKED(o);
    struct stat st;
    int layer, e = ostat(o, path, &st, &layer);
    if (e)
        return e;
    return layer == 2 ? UP(o, listxattr, path, buf, cap) : LO(o, listxattr, path, buf, cap);
}

static int o_removexattr(void *p, const char *path, const char *name)
{
    struct gd__ovl *o = p;
    LOCKED(o);
    int e = copy_up(o, path, 1);
    return e ? e : UP(o, removexattr, path, name);
}

static int o_fallocate(void *p, uint64_t fh, int mode, uint64_t off, uint64_t len)
{
    struct gd__ovl *o = p;
    LOCKED(o);
    struct gd__ohandle *h = handle_get(o, fh, 0);
    if (!h || h->layer != 2)
        return -EBADF;
    return UP(o, fallocate, h->fh, mode, off, len);
}

static int64_t o_lseek(void *p, uint64_t fh, int64_t off, int whence)
{
    struct gd__ovl *o = p;
    LOCKED(o);
    struct gd__ohandle *h = handle_get(o, fh, 0);
    if (!h)
        return -EBADF;
    const gd_vfs_provider *pv = layer_pv(o, h);
    return pv->ops->lseek ? pv->ops->lseek(pv->p, h->fh, off, whence) : -ENOSYS;
}

static void o_destroy(void *p)
{
    struct gd__ovl *o = p;
    for (size_t i = 0; i < o->nh; i++) { /* handles the session did not release */
        struct gd__ohandle *h = &o->h[i];
        const gd_vfs_provider *pv = h->layer ? layer_pv(o, h) : NULL;
        if (!pv || (h->dir && (h->layer != 1 || !pv->ops->opendir)))
            continue;
        if (h->dir ? pv->ops->releasedir != NULL : pv->ops->release != NULL)
            h->dir ? pv->ops->releasedir(pv->p, h->fh) : pv->ops->release(pv->p, h->fh);
    }
    free(o->h);
    for (size_t i = 0; o->inos.b && i <= o->inos.mask; i++)
        for (struct gd__hlink *l = o->inos.b[i], *next; l; l = next) {
            next = l->next;
            free(l);
        }
    gd__htab_fini(&o->inos);
    gd__wt_fini(&o->wt);
    gd_vfs_provider_free(o->lower);
    gd_vfs_provider_free(o->upper);
    pthread_mutex_destroy(&o->mu);
    free(o);
}

static const struct gd_vfs_ops overlay_ops = {
    .getattr = o_getattr,
    .setattr = o_setattr,
    .readlink = o_readlink,
    .mknod = o_mknod,
    .mkdir = o_mkdir,
    .unlink = o_unlink,
    .rmdir = o_rmdir,
    .symlink = o_symlink,
    .rename = o_rename,
    .link = o_link,
    .open = o_open,
    .create = o_create,
    .read = o_read,
    .write = o_write,
    .flush = o_flush,
    .fsync = o_fsync,
    .release = o_release,
    .opendir = o_opendir,
    .readdir = o_readdir,
    .releasedir = o_releasedir,
    .statfs = o_statfs,
    .setxattr = o_setxattr,
    .getxattr = o_getxattr,
    .listxattr = o_listxattr,
    .removexattr = o_removexattr,
    .fallocate = o_fallocate,
    .lseek = o_lseek,
    .destroy = o_destroy,
};

struct gd__ovl *gd__ovl_of(gd_vfs_provider *pv)
{
    return pv && pv->ops == &overlay_ops ? pv->p : NULL;
}

int gd_vfs_overlay_new(gd_vfs_provider *lower, gd_vfs_provider *upper, gd_vfs_provider **out,
                       struct gd_err *err)
{
    struct gd__ovl *o = calloc(1, sizeof(*o));
    gd_vfs_provider *pv = calloc(1, sizeof(*pv));
    if (!o || !pv || gd__htab_init(&o->inos) || gd__wt_init(&o->wt, OVL_MAX_WHITEOUTS)) {
        if (o) {
            gd__htab_fini(&o->inos);
            gd__wt_fini(&o->wt);
        }
        free(o);
        free(pv);
        gd_vfs_provider_free(lower);
        gd_vfs_provider_free(upper);
        return gd_err_set(err, -ENOMEM, "overlay provider: out of memory");
    }
    pthread_mutex_init(&o->mu, NULL);
    o->lower = lower;
    o->upper = upper;
    pv->ops = &overlay_ops;
    pv->p = o;
    /* the host directory may change under us: no long caches */
    pv->flags = 0;
    pv->name = "overlay";
    *out = pv;
    return 0;
}
