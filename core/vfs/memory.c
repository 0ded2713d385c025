/* memory.c - the memory provider (vfs.h): a tmpfs-like tree in this process, bounded by
 * a byte cap (file data, symlink targets, xattr names and values) and a node cap. Special
 * files are inert nodes: the guest kernel serves FIFOs and devices itself. */
#define _GNU_SOURCE
#include "base/err.h"
#include "vfs/vfs.h"
#include "vfs/vfs_int.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#define MEM_DEFAULT_CAP (64ull << 20)
#define MEM_XATTR_NODE_MAX (128u << 10) /* names + values on one node */

struct mxattr {
    struct mxattr *next;
    size_t vlen;
    char *value;
    char name[];
};

struct mdent;

struct mnode {
    struct mnode *all_prev, *all_next; /* every node, for destroy */
    uint64_t ino;
    mode_t mode;
    uid_t uid;
    gid_t gid;
    dev_t rdev;
    struct timespec atime, mtime, ctime;
    unsigned dents; /* names pointing here */
    unsigned opens; /* handles */
    struct mxattr *xattrs;
    size_t xattr_bytes;
    /* directories */
    struct mnode *parent;
    struct mdent *first, *last;
    uint64_t next_cookie;
    unsigned subdirs;
    /* regular files (data) and symlinks (the target) */
    char *data;
    size_t size, alloc;
};

struct mdent {
    struct gd__hlink link; /* key: the directory's ino and the name */
    struct mnode *dir, *node;
    struct mdent *prev, *next; /* the directory's order */
    uint64_t cookie;
    size_t namelen;
    char name[];
};

struct mhandle {
    struct mnode *n; /* NULL: free */
    int flags;
    size_t next_free;
};

struct mem {
    struct gd__htab dents;
    struct mnode *root, *all;
    uint64_t cap, used;
    size_t nodes, max_nodes;
    uint64_t next_ino;
    struct mhandle *h;
    size_t nh, free_h; /* free_h: first free slot + 1, or 0 */
};

static struct timespec now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return t;
}

static uint64_t dent_key(const struct mnode *dir, const char *name, size_t len)
{
    uint64_t h = 1469598103934665603ULL ^ dir->ino;
    for (size_t i = 0; i < len; i++)
        h = (h ^ (unsigned char)name[i]) * 1099511628211ULL;
    return h;
}

/* ---- nodes ---- */

static int node_new(struct mem *m, mode_t mode, struct mnode **out)
{
    if (m->nodes >= m->max_nodes)
        return -ENOSPC;
    struct mnode *n = calloc(1, sizeof(*n));
    if (!n)
        return -ENOMEM;
    n->ino = m->next_ino++;
    n->mode = mode;
    n->atime = n->mtime = n->ctime = now();
    n->next_cookie = 1;
    n->all_next = m->all;
    if (m->all)
        m->all->all_prev = n;
    m->all = n;
    m->nodes++;
    *out = n;
    return 0;
}

static void node_free(struct mem *m, struct mnode *n)
{
    if (n->all_prev)
        n->all_prev->all_next = n->all_next;
    else
        m->all = n->all_next;
    if (n->all_next)
        n->all_next->all_prev = n->all_prev;
    for (struct mxattr *x = n->xattrs, *nx; x; x = nx) {
        nx = x->next;
        free(x->value);
        free(x);
    }
    m->used -= n->xattr_bytes + (S_ISDIR(n->mode) ? 0 : n->size);
    free(n->data);
    free(n);
    m->nodes--;
}

/* frees n once no name and no handle refers to it */
static void node_put(struct mem *m, struct mnode *n)
{
    if (n->dents == 0 && n->opens == 0 && n != m->root)
        node_free(m, n);
}

static void fill_stat(const struct mnode *n, struct stat *st)
{
    memset(st, 0, sizeof(*st));
    st->st_ino = n->ino;
    st->st_mode = n->mode;
    st->st_nlink = S_ISDIR(n->mode) ? 2 + n->subdirs : n->dents;
    st->st_uid = n->uid;
    st->st_gid = n->gid;
    st->st_rdev = n->rdev;
    st->st_size = S_ISDIR(n->mode) ? 4096 : (off_t)n->size;
    st->st_blksize = 4096;
    st->st_blocks = (blkcnt_t)((st->st_size + 511) / 512);
    st->st_atim = n->atime;
    st->st_mtim = n->mtime;
    st->st_ctim = n->ctime;
}

/* ---- names ---- */

static struct mdent *dent_find(const struct mem *m, const struct mnode *dir, const char *name,
                               size_t len)
{
    uint64_t k = dent_key(dir, name, len);
    for (struct gd__hlink *l = gd__htab_first(&m->dents, k); l; l = l->next) {
        struct mdent *d = (struct mdent *)l;
        if (l->key == k && d->dir == dir && d->namelen == len && !memcmp(d->name, name, len))
            return d;
    }
    return NULL;
}

static int dent_add(struct mem *m, struct mnode *dir, const char *name, size_t len, struct mnode *n)
{
    struct mdent *d = calloc(1, sizeof(*d) + len + 1);
    if (!d)
        return -ENOMEM;
    memcpy(d->name, name, len);
    d->namelen = len;
    d->dir = dir;
    d->node = n;
    d->cookie = dir->next_cookie++;
    d->link.key = dent_key(dir, name, len);
    gd__htab_add(&m->dents, &d->link);
    d->prev = dir->last;
    if (dir->last)
        dir->last->next = d;
    else
        dir->first = d;
    dir->last = d;
    n->dents++;
    if (S_ISDIR(n->mode)) {
        n->parent = dir;
        dir->subdirs++;
    }
    dir->mtime = dir->ctime = now();
    return 0;
}

/* unlinks the name; the node is the caller's to put */
static void dent_del(struct mem *m, struct mdent *d)
{
    struct mnode *dir = d->dir, *n = d->node;
    gd__htab_del(&m->dents, &d->link);
    if (d->prev)
        d->prev->next = d->next;
    else
        dir->first = d->next;
    if (d->next)
        d->next->prev = d->prev;
    else
        dir->last = d->prev;
    n->dents--;
    if (S_ISDIR(n->mode))
        dir->subdirs--;
    n->ctime = dir->mtime = dir->ctime = now();
    free(d);
}

/* The node at path[0..len). */
static int resolve_n(const struct mem *m, const char *path, size_t len, struct mnode **out)
{
    struct mnode *n = m->root;
    size_t i = 0;
    while (i < len) {
        const char *c = path + i;
        const char *slash = memchr(c, '/', len - i);
        size_t cl = slash ? (size_t)(slash - c) : len - i;
        if (!S_ISDIR(n->mode))
            return -ENOTDIR;
        struct mdent *d = dent_find(m, n, c, cl);
        if (!d)
            return -ENOENT;
        n = d->node;
        i += cl + (slash ? 1 : 0);
    }
    *out = n;
    return 0;
}

static int resolve(const struct mem *m, const char *path, struct mnode **out)
{
    return resolve_n(m, path, strlen(path), out);
}

/* The directory that holds path's last name, and the name. */
static int resolve_parent(const struct mem *m, const char *path, struct mnode **dir,
                          const char **name, size_t *len)
{
    const char *slash = strrchr(path, '/');
    *name = slash ? slash + 1 : path;
    *len = strlen(*name);
    if (*len == 0 || (**name == '.' && (*len == 1 || (*len == 2 && (*name)[1] == '.'))))
        return -EINVAL;
    int e = resolve_n(m, path, slash ? (size_t)(slash - path) : 0, dir);
    if (e)
        return e;
    return S_ISDIR((*dir)->mode) ? 0 : -ENOTDIR;
}

/* ---- handles ---- */

static int handle_add(struct mem *m, struct mnode *n, int flags, uint64_t *fh)
{
    size_t i;
    if (m->free_h) {
        i = m->free_h - 1;
        m->free_h = m->h[i].next_free;
    } else {
        if (m->nh % 64 == 0) {
            struct mhandle *nh = realloc(m->h, (m->nh + 64) * sizeof(*nh));
            if (!nh)
                return -ENOMEM;
            m->h = nh;
        }
        i = m->nh++;
    }
    m->h[i] = (struct mhandle){.n = n, .flags = flags};
    n->opens++;
    *fh = i + 1;
    return 0;
}

static struct mnode *handle_get(const struct mem *m, uint64_t fh, int *flags)
{
    if (fh == 0 || fh > m->nh || !m->h[fh - 1].n)
        return NULL;
    if (flags)
        *flags = m->h[fh - 1].flags;
    return m->h[fh - 1].n;
}

static int handle_del(struct mem *m, uint64_t fh)
{
    struct mnode *n = handle_get(m, fh, NULL);
    if (!n)
        return -EBADF;
    m->h[fh - 1] = (struct mhandle){.next_free = m->free_h};
    m->free_h = fh;
    n->opens--;
    node_put(m, n);
    return 0;
}

/* ---- data ---- */

/* Sets a regular file's (or symlink's) size, zero-filling growth; the cap counts sizes. */
static int resize(struct mem *m, struct mnode *n, uint64_t size)
{
    if (size > n->size && size - n->size > m->cap - m->used)
        return -ENOSPC;
    if (size > n->alloc) {
        size_t want = n->alloc * 2 > size ? n->alloc * 2 : (size_t)size;
        if (want > size + (16u << 20)) /* grow by at most 16 MiB past the need */
            want = (size_t)size + (16u << 20);
        char *p = realloc(n->data, want);
        if (!p)
            return -ENOSPC;
        n->data = p;
        n->alloc = want;
    }
    if (size > n->size)
        memset(n->data + n->size, 0, (size_t)size - n->size);
    m->used = m->used - n->size + size;
    n->size = (size_t)size;
    return 0;
}

/* ---- operations ---- */

static int m_getattr(void *p, const char *path, struct stat *st)
{
    struct mnode *n;
    int e = resolve(p, path, &n);
    if (!e)
        fill_stat(n, st);
    return e;
}

static int m_setattr(void *p, const char *path, uint64_t fh, const struct gd_vfs_setattr *a,
                     struct stat *out)
{
    struct mem *m = p;
    struct mnode *n = NULL;
    int e = fh ? ((n = handle_get(m, fh, NULL)) ? 0 : -EBADF) : resolve(m, path, &n);
    if (e)
        return e;
    if (a->valid & GD_VFS_SET_SIZE) {
        if (S_ISDIR(n->mode))
            return -EISDIR;
        if (!S_ISREG(n->mode))
            return -EINVAL;
        if ((e = resize(m, n, a->size)))
            return e;
        n->mtime = now();
    }
    struct timespec t = now();
    if (a->valid & GD_VFS_SET_MODE)
        n->mode = (n->mode & S_IFMT) | (a->mode & 07777);
    if (a->valid & GD_VFS_SET_UID)
        n->uid = a->uid;
    if (a->valid & GD_VFS_SET_GID)
        n->gid = a->gid;
    if (a->valid & GD_VFS_SET_ATIME_NOW)
        n->atime = t;
    else if (a->valid & GD_VFS_SET_ATIME)
        n->atime = a->atime;
    if (a->valid & GD_VFS_SET_MTIME_NOW)
        n->mtime = t;
    else if (a->valid & GD_VFS_SET_MTIME)
        n->mtime = a->mtime;
    if (a->valid)
        n->ctime = (a->valid & GD_VFS_SET_CTIME) ? a->ctime : t;
    fill_stat(n, out);
    return 0;
}

static int m_readlink(void *p, const char *path, char *buf, size_t cap)
{
    struct mnode *n;
    int e = resolve(p, path, &n);
    if (e)
        return e;
    if (!S_ISLNK(n->mode))
        return -EINVAL;
    size_t k = n->size < cap ? n->size : cap;
    memcpy(buf, n->data, k);
    return (int)k;
}

/* A new node named path (its parent must exist, the name must not). */
static int make(struct mem *m, const char *path, mode_t mode, struct mnode **out)
{
    struct mnode *dir, *n;
    const char *name;
    size_t len;
    int e = resolve_parent(m, path, &dir, &name, &len);
    if (e)
        return e;
    if (dent_find(m, dir, name, len))
        return -EEXIST;
    if ((e = node_new(m, mode, &n)))
        return e;
    if ((e = dent_add(m, dir, name, len, n))) {
        node_free(m, n);
        return e;
    }
    *out = n;
    return 0;
}

static int m_mknod(void *p, const char *path, mode_t mode, dev_t rdev, struct stat *out)
{
    if ((mode & S_IFMT) == 0)
        mode |= S_IFREG;
    if (S_ISDIR(mode) || S_ISLNK(mode))
        return -EINVAL;
    struct mnode *n;
    int e = make(p, path, mode & (S_IFMT | 07777), &n);
    if (e)
        return e;
    if (S_ISCHR(mode) || S_ISBLK(mode))
        n->rdev = rdev;
    fill_stat(n, out);
    return 0;
}

static int m_mkdir(void *p, const char *path, mode_t mode, struct stat *out)
{
    struct mnode *n;
    int e = make(p, path, S_IFDIR | (mode & 07777), &n);
    if (!e)
        fill_stat(n, out);
    return e;
}

static int m_symlink(void *p, const char *target, const char *path, struct stat *out)
{
    struct mem *m = p;
    size_t len = strlen(target);
    if (len == 0 || len > GD_FUSE_LINK_MAX)
        return -EINVAL;
    if (len > m->cap - m->used)
        return -ENOSPC;
    struct mnode *n;
    int e = make(m, path, S_IFLNK | 0777, &n);
    if (e)
        return e;
    if ((e = resize(m, n, len))) {
        struct mnode *dir;
        const char *name;
        size_t nl;
        resolve_parent(m, path, &dir, &name, &nl);
        dent_del(m, dent_find(m, dir, name, nl));
        node_put(m, n);
        return e;
    }
    memcpy(n->data, target, len);
    fill_stat(n, out);
    return 0;
}

static int lookup_dent(struct mem *m, const char *path, struct mdent **out)
{
    struct mnode *dir;
    const char *name;
    size_t len;
    int e = resolve_parent(m, path, &dir, &name, &len);
    if (e)
        return e;
    *out = dent_find(m, dir, name, len);
    return *out ? 0 : -ENOENT;
}

static int m_unlink(void *p, const char *path)
{
    struct mem *m = p;
    struct mdent *d;
    int e = lookup_dent(m, path, &d);
    if (e)
        return e;
    struct mnode *n = d->node;
    if (S_ISDIR(n->mode))
        return -EISDIR;
    dent_del(m, d);
    node_put(m, n);
    return 0;
}

static int m_rmdir(void *p, const char *path)
{
    struct mem *m = p;
    if (!*path)
        return -EBUSY;
    struct mdent *d;
    int e = lookup_dent(m, path, &d);
    if (e)
        return e;
    struct mnode *n = d->node;
    if (!S_ISDIR(n->mode))
        return -ENOTDIR;
    if (n->first)
        return -ENOTEMPTY;
    dent_del(m, d);
    node_put(m, n);
    return 0;
}

/* Is a (a directory) d itself or above it? */
static int above(const struct mnode *a, const struct mnode *d)
{
    for (; d; d = d->parent == d ? NULL : d->parent)
        if (d == a)
            return 1;
    return 0;
}

static int m_rename(void *p, const char *from, const char *to, unsigned flags)
{
    struct mem *m = p;
    if (flags & ~(unsigned)(RENAME_NOREPLACE | RENAME_EXCHANGE) ||
        ((flags & RENAME_NOREPLACE) && (flags & RENAME_EXCHANGE)))
        return -EINVAL;
    struct mnode *d1, *d2;
    const char *n1, *n2;
    size_t l1, l2;
    int e = resolve_parent(m, from, &d1, &n1, &l1);
    if (!e)
        e = resolve_parent(m, to, &d2, &n2, &l2);
    if (e)
        return e;
    struct mdent *a = dent_find(m, d1, n1, l1), *b = dent_find(m, d2, n2, l2);
    if (!a)
        return -ENOENT;
    struct mnode *na = a->node, *nb = b ? b->node : NULL;
    if ((S_ISDIR(na->mode) && above(na, d2)) ||
        ((flags & RENAME_EXCHANGE) && nb && S_ISDIR(nb->mode) && above(nb, d1)))
        return -EINVAL;
    if (flags & RENAME_EXCHANGE) {
        if (!b)
            return -ENOENT;
        if (a == b)
            return 0;
        /* the two names trade nodes */
        a->node = nb, b->node = na;
        if (S_ISDIR(na->mode) != S_ISDIR(nb->mode)) {
            struct mnode *dn = S_ISDIR(na->mode) ? na : nb;
            struct mnode *from_dir = dn == na ? d1 : d2, *to_dir = dn == na ? d2 : d1;
            from_dir->subdirs--, to_dir->subdirs++;
        }
        if (S_ISDIR(na->mode))
            na->parent = d2;
        if (S_ISDIR(nb->mode))
            nb->parent = d1;
        na->ctime = nb->ctime = d1->mtime = d2->mtime = now();
        return 0;
    }
    if (b) {
        if (flags & RENAME_NOREPLACE)
            return -EEXIST;
        if (na == nb)
            return 0; /* two names of one file: nothing to do */
        if (S_ISDIR(na->mode) && !S_ISDIR(nb->mode))
            return -ENOTDIR;
        if (!S_ISDIR(na->mode) && S_ISDIR(nb->mode))
            return -EISDIR;
        if (S_ISDIR(nb->mode) && nb->first)
            return -ENOTEMPTY;
    }
    /* the new name first (it can fail), then the old one goes */
    struct mdent *old_b = b;
    if (b)
        dent_del(m, b); /* frees b */
    if ((e = dent_add(m, d2, n2, l2, na)))
        return e; /* out of memory: the target is gone, the source stays */
    dent_del(m, a);
    if (old_b)
        node_put(m, nb);
    return 0;
}

static int m_link(void *p, const char *from, const char *to, struct stat *out)
{
    struct mem *m = p;
    struct mnode *n, *dir;
    const char *name;
    size_t len;
    int e = resolve(m, from, &n);
    if (!e)
        e = resolve_parent(m, to, &dir, &name, &len);
    if (e)
        return e;
    if (S_ISDIR(n->mode))
        return -EPERM;
    if (dent_find(m, dir, name, len))
        return -EEXIST;
    if ((e = dent_add(m, dir, name, len, n)))
        return e;
    n->ctime = now();
    fill_stat(n, out);
    return 0;
}

static int open_node(struct mem *m, struct mnode *n, int flags, uint64_t *fh)
{
    int wr = (flags & O_ACCMODE) != O_RDONLY;
    if (S_ISDIR(n->mode) && (wr || (flags & O_TRUNC)))
        return -EISDIR;
    if ((flags & O_DIRECTORY) && !S_ISDIR(n->mode))
        return -ENOTDIR;
    if (S_ISLNK(n->mode))
        return -ELOOP;
    if ((flags & O_TRUNC) && wr && S_ISREG(n->mode)) {
        int e = resize(m, n, 0);
        if (e)
            return e;
        n->mtime = n->ctime = now();
    }
    return handle_add(m, n, flags, fh);
}

static int m_open(void *p, const char *path, int flags, uint64_t *fh)
{
    struct mnode *n;
    int e = resolve(p, path, &n);
    return e ? e : open_node(p, n, flags, fh);
}

static int m_create(void *p, const char *path, int flags, mode_t mode, uint64_t *fh,
                    struct stat *out)
{
    struct mem *m = p;
    struct mnode *n;
    int e = resolve(m, path, &n);
    if (e == 0 && (flags & O_EXCL))
        return -EEXIST;
    if (e == -ENOENT) {
        if ((e = make(m, path, S_IFREG | (mode & 07777), &n)))
            return e;
        flags &= ~O_TRUNC;
    } else if (e) {
        return e;
    }
    if ((e = open_node(m, n, flags, fh)))
        return e; /* a new file stays, as after open(O_CREAT) fails late */
    fill_stat(n, out);
    return 0;
}

static ssize_t m_read(void *p, uint64_t fh, void *buf, size_t n, uint64_t off)
{
    struct mnode *f = handle_get(p, fh, NULL);
    if (!f)
        return -EBADF;
    if (S_ISDIR(f->mode))
        return -EISDIR;
    if (!S_ISREG(f->mode))
        return -EINVAL;
    if (off >= f->size)
        return 0;
    size_t k = f->size - off < n ? f->size - (size_t)off : n;
    memcpy(buf, f->data + off, k);
    return (ssize_t)k;
}

static ssize_t m_write(void *p, uint64_t fh, const void *buf, size_t n, uint64_t off)
{
    struct mem *m = p;
    int flags;
    struct mnode *f = handle_get(m, fh, &flags);
    if (!f)
        return -EBADF;
    if ((flags & O_ACCMODE) == O_RDONLY)
        return -EBADF;
    if (!S_ISREG(f->mode))
        return -EINVAL;
    if (flags & O_APPEND)
        off = f->size;
    if (off > (uint64_t)SSIZE_MAX - n)
        return -EFBIG;
    if (off + n > f->size) {
        int e = resize(m, f, off + n);
        if (e)
            return e;
    }
    if (n)
        memcpy(f->data + off, buf, n);
    f->mtime = f->ctime = now();
    return (ssize_t)n;
}

static int m_release(void *p, uint64_t fh)
{
    return handle_del(p, fh);
}

static int m_opendir(void *p, const char *path, uint64_t *fh)
{
    struct mnode *n;
    int e = resolve(p, path, &n);
    if (e)
        return e;
    return S_ISDIR(n->mode) ? handle_add(p, n, O_RDONLY, fh) : -ENOTDIR;
}

static int m_readdir(void *p, const char *path, uint64_t fh, uint64_t off, gd_vfs_fill_fn fill,
                     void *ctx)
{
    struct mem *m = p;
    struct mnode *dir = fh ? handle_get(m, fh, NULL) : NULL;
    if (!dir) {
        int e = resolve(m, path, &dir);
        if (e)
            return e;
    }
    if (!S_ISDIR(dir->mode))
        return -ENOTDIR;
    for (struct mdent *d = dir->first; d; d = d->next) {
        if (d->cookie <= off)
            continue;
        struct stat st;
        fill_stat(d->node, &st);
        int r = fill(ctx, d->name, d->cookie, IFTODT(d->node->mode), &st);
        if (r)
            return r < 0 ? r : 0;
    }
    dir->atime = now();
    return 0;
}

static int m_releasedir(void *p, uint64_t fh)
{
    return handle_del(p, fh);
}

static int m_statfs(void *p, const char *path, struct statvfs *st)
{
    struct mem *m = p;
    (void)path;
    memset(st, 0, sizeof(*st));
    st->f_bsize = st->f_frsize = 4096;
    st->f_blocks = m->cap / 4096;
    st->f_bfree = st->f_bavail = (m->cap - m->used) / 4096;
    st->f_files = m->max_nodes;
    st->f_ffree = st->f_favail = m->max_nodes - m->nodes;
    st->f_namemax = GD_FUSE_NAME_MAX;
    return 0;
}

/* ---- xattrs ---- */

static struct mxattr **xfind(struct mnode *n, const char *name)
{
    struct mxattr **pp = &n->xattrs;
    for (; *pp; pp = &(*pp)->next)
        if (!strcmp((*pp)->name, name))
            return pp;
    return pp;
}

static int m_setxattr(void *p, const char *path, const char *name, const void *value, size_t n,
                      int flags)
{
    struct mem *m = p;
    struct mnode *node;
    int e = resolve(m, path, &node);
    if (e)
        return e;
    size_t nl = strlen(name);
    if (nl == 0 || nl > GD_FUSE_XATTR_NAME_MAX || n > GD_FUSE_XATTR_SIZE_MAX)
        return -ERANGE;
    struct mxattr **pp = xfind(node, name), *x = *pp;
    if (x && (flags & XATTR_CREATE))
        return -EEXIST;
    if (!x && (flags & XATTR_REPLACE))
        return -ENODATA;
    size_t old = x ? nl + 1 + x->vlen : 0, add = nl + 1 + n;
    if (node->xattr_bytes - old + add > MEM_XATTR_NODE_MAX)
        return -ENOSPC;
    if (add > old && add - old > m->cap - m->used)
        return -ENOSPC;
    char *v = malloc(n ? n : 1);
    if (!v)
        return -ENOMEM;
    if (n)
        memcpy(v, value, n);
    if (!x) {
        if (!(x = calloc(1, sizeof(*x) + nl + 1))) {
            free(v);
            return -ENOMEM;
        }
        memcpy(x->name, name, nl + 1);
        *pp = x;
    }
    free(x->value);
    x->value = v;
    x->vlen = n;
    node->xattr_bytes = node->xattr_bytes - old + add;
    m->used = m->used - old + add;
    node->ctime = now();
    return 0;
}

static ssize_t m_getxattr(void *p, const char *path, const char *name, void *buf, size_t cap)
{
    struct mnode *n;
    int e = resolve(p, path, &n);
    if (e)
        return e;
    struct mxattr *x = *xfind(n, name);
    if (!x)
        return -ENODATA;
    if (cap == 0)
        return (ssize_t)x->vlen;
    if (x->vlen > cap)
        return -ERANGE;
    memcpy(buf, x->value, x->vlen);
    return (ssize_t)x->vlen;
}

static ssize_t m_listxattr(void *p, const char *path, char *buf, size_t cap)
{
    struct mnode *n;
    int e = resolve(p, path, &n);
    if (e)
        return e;
    size_t total = 0;
    for (struct mxattr *x = n->xattrs; x; x = x->next) {
        size_t l = strlen(x->name) + 1;
        if (cap && total + l > cap)
            return -ERANGE;
        if (cap)
            memcpy(buf + total, x->name, l);
        total += l;
    }
    return (ssize_t)total;
}

static int m_removexattr(void *p, const char *path, const char *name)
{
    struct mem *m = p;
    struct mnode *n;
    int e = resolve(m, path, &n);
    if (e)
        return e;
    struct mxattr **pp = xfind(n, name), *x = *pp;
    if (!x)
        return -ENODATA;
    size_t sz = strlen(x->name) + 1 + x->vlen;
    *pp = x->next;
    n->xattr_bytes -= sz;
    m->used -= sz;
    free(x->value);
    free(x);
    n->ctime = now();
    return 0;
}

static int m_fallocate(void *p, uint64_t fh, int mode, uint64_t off, uint64_t len)
{
    struct mem *m = p;
    struct mnode *f = handle_get(m, fh, NULL);
    if (!f)
        return -EBADF;
    if (!S_ISREG(f->mode))
        return -ENODEV;
    if (mode == 0) {
        return off + len > f->size ? resize(m, f, off + len) : 0;
    } else if (mode == FALLOC_FL_KEEP_SIZE) {
        return 0;
    } else if (mode == (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)) {
        if (off < f->size) {
            size_t end = off + len < f->size ? (size_t)(off + len) : f->size;
            memset(f->data + off, 0, end - (size_t)off);
            f->mtime = f->ctime = now();
        }
        return 0;
    }
    return -EOPNOTSUPP;
}

static int64_t m_lseek(void *p, uint64_t fh, int64_t off, int whence)
{
    struct mnode *f = handle_get(p, fh, NULL);
    if (!f)
        return -EBADF;
    if (whence != SEEK_DATA && whence != SEEK_HOLE)
        return -EINVAL;
    if (off < 0 || (uint64_t)off >= f->size)
        return -ENXIO;
    return whence == SEEK_DATA ? off : (int64_t)f->size;
}

static void m_destroy(void *p)
{
    struct mem *m = p;
    for (size_t i = 0; i <= m->dents.mask; i++)
        for (struct gd__hlink *l = m->dents.b[i], *next; l; l = next) {
            next = l->next;
            free(l);
        }
    gd__htab_fini(&m->dents);
    while (m->all)
        node_free(m, m->all);
    free(m->h);
    free(m);
}

static const struct gd_vfs_ops memory_ops = {
    .getattr = m_getattr,
    .setattr = m_setattr,
    .readlink = m_readlink,
    .mknod = m_mknod,
    .mkdir = m_mkdir,
    .unlink = m_unlink,
    .rmdir = m_rmdir,
    .symlink = m_symlink,
    .rename = m_rename,
    .link = m_link,
    .open = m_open,
    .create = m_create,
    .read = m_read,
    .write = m_write,
    .release = m_release,
    .opendir = m_opendir,
    .readdir = m_readdir,
    .releasedir = m_releasedir,
    .statfs = m_statfs,
    .setxattr = m_setxattr,
    .getxattr = m_getxattr,
    .listxattr = m_listxattr,
    .removexattr = m_removexattr,
    .fallocate = m_fallocate,
    .lseek = m_lseek,
    .destroy = m_destroy,
};

int gd_vfs_memory_new(uint64_t cap, gd_vfs_provider **out, struct gd_err *err)
{
    struct mem *m = calloc(1, sizeof(*m));
    gd_vfs_provider *pv = calloc(1, sizeof(*pv));
    if (!m || !pv || gd__htab_init(&m->dents)) {
        free(m);
        free(pv);
        return gd_err_set(err, -ENOMEM, "memory provider: out of memory");
    }
    m->cap = cap ? cap : MEM_DEFAULT_CAP;
    /* one node per 256 bytes of the cap, within [1024, 1 Mi] */
    uint64_t nodes = m->cap / 256;
    m->max_nodes = nodes < 1024 ? 1024 : nodes > (1u << 20) ? (1u << 20) : (size_t)nodes;
    m->next_ino = 1;
    m->max_nodes++; /* the root */
    if (node_new(m, S_IFDIR | 0755, &m->root)) {
        m_destroy(m);
        free(pv);
        return gd_err_set(err, -ENOMEM, "memory provider: out of memory");
    }
    m->root->parent = m->root;
    pv->ops = &memory_ops;
    pv->p = m;
    pv->flags = GD_VFS_EXCLUSIVE;
    pv->name = "memory";
    *out = pv;
    return 0;
}
