/* shadow.c - the shadow provider (vfs.h): paths matched by globs are hidden from the
 * guest (HIDE) or served from a private memory provider (MEMORY). The guest kernel
 * resolves symlinks itself (READLINK, then LOOKUP by name), so every path reaching a
 * provider is the path of what the guest names: checking each of its components against
 * the globs closes symlinks as a way in. Host hard links are closed by inode: hidden
 * inodes met so far (a bounded scan at creation, then every operation) make any other
 * name of them hidden too. */
#define _GNU_SOURCE
#include "base/err.h"
#include "vfs/layer_int.h"
#include "vfs/vfs_int.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SH_MEM_INO (1ull << 62) /* st_ino of an entry of the memory layer */
#define SH_SCAN_MAX 100000      /* entries the creation scan looks at */
#define SH_INOS_MAX (1u << 20)  /* hidden inodes remembered */

struct sh_handle {
    int layer; /* 0 free, 1 inner, 2 memory */
    int dir;
    uint64_t fh;
    struct gd__dmerge dm;
    size_t next_free;
};

struct shadow {
    gd_vfs_provider *inner, *mem; /* mem: MEMORY mode only */
    char **globs;
    size_t nglobs;
    struct gd__htab inos; /* hidden inodes (links with no payload beyond the key) */
    size_t ninos;
    struct sh_handle *h;
    size_t nh, free_h;
    size_t scan_left;
};

#define PV(s, l) ((l) == 2 ? (s)->mem : (s)->inner)
#define CALL(pv, op, ...) ((pv)->ops->op ? (pv)->ops->op((pv)->p, __VA_ARGS__) : -ENOSYS)

/* ---- what is hidden ---- */

static int hidden(const struct shadow *s, const char *path)
{
    char pre[PATH_MAX];
    size_t n = strlen(path);
    if (n >= sizeof(pre))
        return 1;
    memcpy(pre, path, n + 1);
    /* path itself, then each ancestor */
    for (;;) {
        for (size_t i = 0; i < s->nglobs; i++)
            if (gd_vfs_glob_match(s->globs[i], pre))
                return 1;
        char *slash = strrchr(pre, '/');
        if (!slash)
            return 0;
        *slash = 0;
    }
}

/* could a rename of the directory path change what is hidden below it? */
static int globs_below(const struct shadow *s, const char *path)
{
    for (size_t i = 0; i < s->nglobs; i++)
        if (gd__glob_below(s->globs[i], path))
            return 1;
    return 0;
}

static int linked(const struct stat *st)
{
    return !S_ISDIR(st->st_mode) && st->st_nlink > 1;
}

static int ino_hidden(const struct shadow *s, const struct stat *st)
{
    if (!linked(st) || !s->ninos)
        return 0;
    for (struct gd__hlink *l = gd__htab_first(&s->inos, st->st_ino); l; l = l->next)
        if (l->key == st->st_ino)
            return 1;
    return 0;
}

static void ino_note(struct shadow *s, const struct stat *st)
{
    if (!linked(st) || ino_hidden(s, st) || s->ninos >= SH_INOS_MAX)
        return;
    struct gd__hlink *l = calloc(1, sizeof(*l));
    if (!l)
        return;
    l->key = st->st_ino;
    gd__htab_add(&s->inos, l);
    s->ninos++;
}

/* a hidden path of the inner provider was named: remember its inode */
static void note_path(struct shadow *s, const char *path)
{
    struct stat st;
    if (CALL(s->inner, getattr, path, &st) == 0)
        ino_note(s, &st);
}

/* ---- the creation scan ---- */

struct scan {
    struct shadow *s;
    const char *dir;
    int in_hidden;
    char *names;
    size_t n, cap;
};

static int scan_fill(void *ctx, const char *name, uint64_t off, unsigned type,
                     const struct stat *st)
{
    struct scan *c = ctx;
    char p[PATH_MAX];
    (void)off;
    if (name[0] == '.' && (!name[1] || (name[1] == '.' && !name[2])))
        return 0;
    if (!c->s->scan_left)
        return 1;
    c->s->scan_left--;
    if (gd__path_join(p, c->dir, name))
        return 0;
    int hid = c->in_hidden || hidden(c->s, p);
    if (hid && type != DT_DIR) {
        if (st)
            ino_note(c->s, st);
        else
            note_path(c->s, p);
    }
    if (type == DT_DIR) { /* visit later: one directory open at a time */
        size_t l = strlen(name) + 2;
        if (c->n + l > c->cap) {
            size_t cap = c->cap ? c->cap * 2 : 1024;
            while (cap < c->n + l)
                cap *= 2;
            char *b = realloc(c->names, cap);
            if (!b)
                return 1;
            c->names = b;
            c->cap = cap;
        }
        c->names[c->n] = hid ? 'h' : '-';
        memcpy(c->names + c->n + 1, name, l - 1);
        c->n += l;
    }
    return 0;
}

static void scan(struct shadow *s, const char *dir, int in_hidden, int depth)
{
    struct scan c = {.s = s, .dir = dir, .in_hidden = in_hidden};
    if (depth > 64 || gd__list_dir(s->inner, dir, scan_fill, &c) < 0) {
        free(c.names);
        return;
    }
    char p[PATH_MAX];
    for (size_t i = 0; i < c.n && s->scan_left; i += strlen(c.names + i) + 1)
        if (!gd__path_join(p, dir, c.names + i + 1))
            scan(s, p, c.names[i] == 'h', depth + 1);
    free(c.names);
}

/* ---- handles ---- */

static int handle_add(struct shadow *s, int layer, int dir, uint64_t fh, uint64_t *out)
{
    size_t i;
    if (s->free_h) {
        i = s->free_h - 1;
        s->free_h = s->h[i].next_free;
    } else {
        if (s->nh % 64 == 0) {
            struct sh_handle *nh = realloc(s->h, (s->nh + 64) * sizeof(*nh));
            if (!nh)
                return -ENOMEM;
            s->h = nh;
        }
        i = s->nh++;
    }
    s->h[i] = (struct sh_handle){.layer = layer, .dir = dir, .fh = fh};
    *out = i + 1;
    return 0;
}

static struct sh_handle *handle_get(struct shadow *s, uint64_t fh, int dir)
{
    if (fh == 0 || fh > s->nh || !s->h[fh - 1].layer || s->h[fh - 1].dir != dir)
        return NULL;
    return &s->h[fh - 1];
}

static void handle_del(struct shadow *s, uint64_t fh)
{
    s->h[fh - 1] = (struct sh_handle){.next_free = s->free_h};
    s->free_h = fh;
}

/* ---- routing ---- */

/* The layer that serves an existing path: 1 inner, 2 memory, or -ENOENT (hidden). */
static int route(struct shadow *s, const char *path)
{
    if (!hidden(s, path))
        return 1;
    if (s->mem)
        return 2;
    note_path(s, path);
    return -ENOENT;
}

/* ... and for a name to be made: EACCES instead */
static int route_new(struct shadow *s, const char *path)
{
    int l = route(s, path);
    return l == -ENOENT ? -EACCES : l;
}

static void fix_ino(int layer, struct stat *st)
{
    if (layer == 2)
        st->st_ino |= SH_MEM_INO;
}

static int sh_stat(struct shadow *s, int layer, const char *path, struct stat *st)
{
    int e = CALL(PV(s, layer), getattr, path, st);
    if (e)
        return e;
    if (layer == 1 && ino_hidden(s, st))
        return -ENOENT;
    fix_ino(layer, st);
    return 0;
}

/* the memory layer's copy of every directory of path (the guest sees them in inner) */
static int mem_dirs(struct shadow *s, const char *path)
{
    struct stat st;
    if (!*path || CALL(s->mem, getattr, path, &st) == 0)
        return 0;
    char parent[PATH_MAX];
    const char *slash = strrchr(path, '/');
    size_t n = slash ? (size_t)(slash - path) : 0;
    memcpy(parent, path, n);
    parent[n] = 0;
    int e = mem_dirs(s, parent);
    return e ? e : CALL(s->mem, mkdir, path, 0755, &st);
}

/* before making a name in the memory layer: its parent exists for the guest */
static int mem_prepare(struct shadow *s, const char *path)
{
    char parent[PATH_MAX];
    struct stat st;
    const char *slash = strrchr(path, '/');
    size_t n = slash ? (size_t)(slash - path) : 0;
    memcpy(parent, path, n);
    parent[n] = 0;
    int pl = route(s, parent);
    if (pl < 0)
        return pl;
    if (pl == 2)
        return 0; /* the memory layer checks */
    int e = sh_stat(s, 1, parent, &st);
    if (e)
        return e;
    if (!S_ISDIR(st.st_mode))
        return -ENOTDIR;
    return mem_dirs(s, parent);
}

/* ---- operations ---- */

static int s_getattr(void *p, const char *path, struct stat *st)
{
    struct shadow *s = p;
    int l = route(s, path);
    return l < 0 ? l : sh_stat(s, l, path, st);
}

static int s_setattr(void *p, const char *path, uint64_t fh, const struct gd_vfs_setattr *a,
                     struct stat *out)
{
    struct shadow *s = p;
    struct sh_handle *h = fh ? handle_get(s, fh, 0) : NULL;
    if (fh && !h)
        return -EBADF;
    int l = h ? h->layer : route(s, path);
    if (l < 0)
        return l;
    int e = CALL(PV(s, l), setattr, path, h ? h->fh : 0, a, out);
    if (!e)
        fix_ino(l, out);
    return e;
}

static int s_readlink(void *p, const char *path, char *buf, size_t cap)
{
    struct shadow *s = p;
    int l = route(s, path);
    return l < 0 ? l : CALL(PV(s, l), readlink, path, buf, cap);
}

static int s_mknod(void *p, const char *path, mode_t mode, dev_t rdev, struct stat *out)
{
    struct shadow *s = p;
    int l = route_new(s, path), e;
    if (l < 0)
        return l;
    if (l == 2 && (e = mem_prepare(s, path)))
        return e;
    if (!(e = CALL(PV(s, l), mknod, path, mode, rdev, out)))
        fix_ino(l, out);
    return e;
}

static int s_mkdir(void *p, const char *path, mode_t mode, struct stat *out)
{
    struct shadow *s = p;
    int l = route_new(s, path), e;
    if (l < 0)
        return l;
    if (l == 2 && (e = mem_prepare(s, path)))
        return e;
    if (!(e = CALL(PV(s, l), mkdir, path, mode, out)))
        fix_ino(l, out);
    return e;
}

static int s_symlink(void *p, const char *target, const char *path, struct stat *out)
{
    struct shadow *s = p;
    int l = route_new(s, path), e;
    if (l < 0)
        return l;
    if (l == 2 && (e = mem_prepare(s, path)))
        return e;
    if (!(e = CALL(PV(s, l), symlink, target, path, out)))
        fix_ino(l, out);
    return e;
}

static int s_unlink(void *p, const char *path)
{
    struct shadow *s = p;
    struct stat st;
    int l = route(s, path), e;
    if (l < 0)
        return l;
    if (l == 1 && (e = sh_stat(s, 1, path, &st)))
        return e;
    return CALL(PV(s, l), unlink, path);
}

/* the memory layer's entries below the inner directory path: none, or ENOTEMPTY */
static int mem_empty_fill(void *ctx, const char *name, uint64_t off, unsigned type,
                          const struct stat *st)
{
    (void)off, (void)type, (void)st;
    if (name[0] == '.' && (!name[1] || (name[1] == '.' && !name[2])))
        return 0;
    *(int *)ctx = 1;
    return 1;
}

static int mem_below(struct shadow *s, const char *path)
{
    int found = 0;
    struct stat st;
    if (!s->mem || CALL(s->mem, getattr, path, &st) || !S_ISDIR(st.st_mode))
        return 0;
    gd__list_dir(s->mem, path, mem_empty_fill, &found);
    return found ? -ENOTEMPTY : 0;
}

static int s_rmdir(void *p, const char *path)
{
    struct shadow *s = p;
    int l = route(s, path), e;
    if (l < 0)
        return l;
    if (l == 1 && (e = mem_below(s, path)))
        return e; /* the guest's hidden files are in there */
    if ((e = CALL(PV(s, l), rmdir, path)))
        return e;
    if (l == 1 && s->mem)
        CALL(s->mem, rmdir, path); /* the memory layer's copy of the directory */
    return 0;
}

static int s_rename(void *p, const char *from, const char *to, unsigned flags)
{
    struct shadow *s = p;
    struct stat sa, sb;
    int la = route(s, from), lb, e;
    if (la < 0)
        return la;
    lb = (flags & RENAME_EXCHANGE) ? route(s, to) : route_new(s, to);
    if (lb < 0)
        return lb;
    if (la != lb)
        return -EXDEV;
    if ((e = sh_stat(s, la, from, &sa)))
        return e;
    int eb = sh_stat(s, lb, to, &sb);
    if (la == 1) {
        if ((S_ISDIR(sa.st_mode) && (globs_below(s, from) || globs_below(s, to))) ||
            (!eb && S_ISDIR(sb.st_mode) && (flags & RENAME_EXCHANGE)))
            return -EXDEV; /* what is hidden below would change */
        if (!eb && S_ISDIR(sb.st_mode) && (e = mem_below(s, to)))
            return e;
        if (eb == -ENOENT && CALL(s->inner, getattr, to, &sb) == 0)
            return -EACCES; /* a hidden host hard link is not replaced */
    } else if ((e = mem_prepare(s, to))) {
        return e;
    }
    if ((e = CALL(PV(s, la), rename, from, to, flags)))
        return e;
    if (la == 1 && s->mem && S_ISDIR(sa.st_mode) && CALL(s->mem, getattr, from, &sa) == 0) {
        /* the memory layer's hidden files below the directory move with it */
        char parent[PATH_MAX];
        const char *slash = strrchr(to, '/');
        size_t n = slash ? (size_t)(slash - to) : 0;
        memcpy(parent, to, n);
        parent[n] = 0;
        if (!mem_dirs(s, parent)) {
            CALL(s->mem, rmdir, to);
            CALL(s->mem, rename, from, to, 0);
        }
    }
    return 0;
}

static int s_link(void *p, const char *from, const char *to, struct stat *out)
{
    struct shadow *s = p;
    struct stat st;
    int la = route(s, from), lb = route_new(s, to), e;
    if (la < 0)
        return la;
    if (lb < 0)
        return lb;
    if (la != lb)
        return -EXDEV;
    if ((e = sh_stat(s, la, from, &st)))
        return e;
    if (la == 2 && (e = mem_prepare(s, to)))
        return e;
    if (!(e = CALL(PV(s, la), link, from, to, out)))
        fix_ino(la, out);
    return e;
}

static int open_at(struct shadow *s, int l, const char *path, int flags, uint64_t *fh)
{
    uint64_t ifh;
    int e = CALL(PV(s, l), open, path, flags, &ifh);
    if (e)
        return e;
    if ((e = handle_add(s, l, 0, ifh, fh)) && PV(s, l)->ops->release)
        CALL(PV(s, l), release, ifh);
    return e;
}

static int s_open(void *p, const char *path, int flags, uint64_t *fh)
{
    struct shadow *s = p;
    struct stat st;
    int l = route(s, path), e;
    if (l < 0)
        return l;
    if (l == 1 && (e = sh_stat(s, 1, path, &st)))
        return e; /* another name of a hidden file */
    return open_at(s, l, path, flags, fh);
}

static int s_create(void *p, const char *path, int flags, mode_t mode, uint64_t *fh,
                    struct stat *out)
{
    struct shadow *s = p;
    int l = route_new(s, path), e;
    if (l < 0)
        return l;
    if (l == 1 && CALL(s->inner, getattr, path, out) == 0 && ino_hidden(s, out))
        return -EACCES;
    if (l == 2 && (e = mem_prepare(s, path)))
        return e;
    uint64_t ifh;
    if ((e = CALL(PV(s, l), create, path, flags, mode, &ifh, out)))
        return e;
    fix_ino(l, out);
    if ((e = handle_add(s, l, 0, ifh, fh)) && PV(s, l)->ops->release)
        CALL(PV(s, l), release, ifh);
    return e;
}

#define BY_FH(s, fh, dir, h)                                                                       \
    struct sh_handle *h = handle_get(s, fh, dir);                                                  \
    if (!h)                                                                                        \
        return -EBADF;

static ssize_t s_read(void *p, uint64_t fh, void *buf, size_t n, uint64_t off)
{
    struct shadow *s = p;
    BY_FH(s, fh, 0, h);
    return CALL(PV(s, h->layer), read, h->fh, buf, n, off);
}

static ssize_t s_write(void *p, uint64_t fh, const void *buf, size_t n, uint64_t off)
{
    struct shadow *s = p;
    BY_FH(s, fh, 0, h);
    return CALL(PV(s, h->layer), write, h->fh, buf, n, off);
}

static int s_flush(void *p, uint64_t fh)
{
    struct shadow *s = p;
    BY_FH(s, fh, 0, h);
    const gd_vfs_provider *pv = PV(s, h->layer);
    return pv->ops->flush ? pv->ops->flush(pv->p, h->fh) : 0;
}

static int s_fsync(void *p, uint64_t fh, int datasync)
{
    struct shadow *s = p;
    BY_FH(s, fh, 0, h);
    const gd_vfs_provider *pv = PV(s, h->layer);
    return pv->ops->fsync ? pv->ops->fsync(pv->p, h->fh, datasync) : 0;
}

static int s_release(void *p, uint64_t fh)
{
    struct shadow *s = p;
    BY_FH(s, fh, 0, h);
    const gd_vfs_provider *pv = PV(s, h->layer);
    int e = pv->ops->release ? pv->ops->release(pv->p, h->fh) : 0;
    handle_del(s, fh);
    return e;
}

static int s_fallocate(void *p, uint64_t fh, int mode, uint64_t off, uint64_t len)
{
    struct shadow *s = p;
    BY_FH(s, fh, 0, h);
    return CALL(PV(s, h->layer), fallocate, h->fh, mode, off, len);
}

static int64_t s_lseek(void *p, uint64_t fh, int64_t off, int whence)
{
    struct shadow *s = p;
    BY_FH(s, fh, 0, h);
    const gd_vfs_provider *pv = PV(s, h->layer);
    return pv->ops->lseek ? pv->ops->lseek(pv->p, h->fh, off, whence) : -ENOSYS;
}

static int s_opendir(void *p, const char *path, uint64_t *fh)
{
    struct shadow *s = p;
    int l = route(s, path);
    if (l < 0)
        return l;
    const gd_vfs_provider *pv = PV(s, l);
    uint64_t ifh = 0;
    int e = pv->ops->opendir ? pv->ops->opendir(pv->p, path, &ifh) : 0;
    if (e)
        return e;
    if ((e = handle_add(s, l, 1, ifh, fh)) && pv->ops->opendir && pv->ops->releasedir)
        pv->ops->releasedir(pv->p, ifh);
    return e;
}

struct rd_ctx {
    struct shadow *s;
    const char *dir;
};

/* inner entries that are not hidden, then the memory layer's hidden ones */
static int rd_filter(void *ud, int layer, const char *name, unsigned *type, struct stat *st,
                     const struct stat **stp)
{
    struct rd_ctx *c = ud;
    char path[PATH_MAX];
    (void)type;
    if (gd__path_join(path, c->dir, name))
        return 0;
    int hid = hidden(c->s, path);
    if (layer == 1) {
        if (*stp)
            fix_ino(2, st);
        return hid;
    }
    if (hid) {
        if (*stp)
            ino_note(c->s, st);
        else
            note_path(c->s, path);
        return 0;
    }
    if (*stp)
        return !ino_hidden(c->s, st);
    if (*type != DT_DIR && *type != DT_UNKNOWN)
        return 1;
    struct stat full; /* a hard link is only known by its attributes */
    return CALL(c->s->inner, getattr, path, &full) != 0 || !ino_hidden(c->s, &full);
}

/* HIDE: the inner provider's own cookies pass through */
struct pass_ctx {
    struct rd_ctx rc;
    gd_vfs_fill_fn fill;
    void *ctx;
};

static int pass_fill(void *vc, const char *name, uint64_t off, unsigned type, const struct stat *st)
{
    struct pass_ctx *c = vc;
    struct stat s;
    const struct stat *sp = NULL;
    if (st) {
        s = *st;
        sp = &s;
    }
    if (!(name[0] == '.' && (!name[1] || (name[1] == '.' && !name[2])))) {
        int r = rd_filter(&c->rc, 0, name, &type, &s, &sp);
        if (r <= 0)
            return r;
    }
    return c->fill(c->ctx, name, off, type, sp);
}

static int s_readdir(void *p, const char *path, uint64_t fh, uint64_t off, gd_vfs_fill_fn fill,
                     void *ctx)
{
    struct shadow *s = p;
    BY_FH(s, fh, 1, h);
    const gd_vfs_provider *pv = PV(s, h->layer);
    if (h->layer == 2) /* a hidden directory: all of it is the memory layer's */
        return CALL(pv, readdir, path, h->fh, off, fill, ctx);
    struct pass_ctx c = {{s, path}, fill, ctx};
    if (!s->mem)
        return CALL(pv, readdir, path, h->fh, off, pass_fill, &c);
    struct gd__dm_layer l1 = {s->inner, h->fh}, l2 = {s->mem, 0};
    return gd__dmerge_readdir(&h->dm, &l1, &l2, path, off, rd_filter, &c.rc, fill, ctx);
}

static int s_releasedir(void *p, uint64_t fh)
{
    struct shadow *s = p;
    BY_FH(s, fh, 1, h);
    const gd_vfs_provider *pv = PV(s, h->layer);
    int e = pv->ops->opendir && pv->ops->releasedir ? pv->ops->releasedir(pv->p, h->fh) : 0;
    handle_del(s, fh);
    return e;
}

static int s_statfs(void *p, const char *path, struct statvfs *st)
{
    struct shadow *s = p;
    int l = route(s, path);
    return l < 0 ? l : CALL(PV(s, l), statfs, path, st);
}

static int s_setxattr(void *p, const char *path, const char *name, const void *value, size_t n,
                      int flags)
{
    struct shadow *s = p;
    int l = route(s, path);
    return l < 0 ? l : CALL(PV(s, l), setxattr, path, name, value, n, flags);
}

static ssize_t s_getxattr(void *p, const char *path, const char *name, void *buf, size_t cap)
{
    struct shadow *s = p;
    int l = route(s, path);
    return l < 0 ? l : CALL(PV(s, l), getxattr, path, name, buf, cap);
}

static ssize_t s_listxattr(void *p, const char *path, char *buf, size_t cap)
{
    struct shadow *s = p;
    int l = route(s, path);
    return l < 0 ? l : CALL(PV(s, l), listxattr, path, buf, cap);
}

static int s_removexattr(void *p, const char *path, const char *name)
{
    struct shadow *s = p;
    int l = route(s, path);
    return l < 0 ? l : CALL(PV(s, l), removexattr, path, name);
}

static void s_destroy(void *p)
{
    struct shadow *s = p;
    for (size_t i = 0; i < s->nh; i++) {
        struct sh_handle *h = &s->h[i];
        if (!h->layer)
            continue;
        const gd_vfs_provider *pv = PV(s, h->layer);
        if (!h->dir && pv->ops->release)
            pv->ops->release(pv->p, h->fh);
        else if (h->dir && pv->ops->opendir && pv->ops->releasedir)
            pv->ops->releasedir(pv->p, h->fh);
    }
    free(s->h);
    for (size_t i = 0; s->inos.b && i <= s->inos.mask; i++)
        for (struct gd__hlink *l = s->inos.b[i], *next; l; l = next) {
            next = l->next;
            free(l);
        }
    gd__htab_fini(&s->inos);
    for (size_t i = 0; i < s->nglobs; i++)
        free(s->globs[i]);
    free(s->globs);
    gd_vfs_provider_free(s->inner);
    gd_vfs_provider_free(s->mem);
    free(s);
}

static const struct gd_vfs_ops shadow_ops = {
    .getattr = s_getattr,
    .setattr = s_setattr,
    .readlink = s_readlink,
    .mknod = s_mknod,
    .mkdir = s_mkdir,
    .unlink = s_unlink,
    .rmdir = s_rmdir,
    .symlink = s_symlink,
    .rename = s_rename,
    .link = s_link,
    .open = s_open,
    .create = s_create,
    .read = s_read,
    .write = s_write,
    .flush = s_flush,
    .fsync = s_fsync,
    .release = s_release,
    .opendir = s_opendir,
    .readdir = s_readdir,
    .releasedir = s_releasedir,
    .statfs = s_statfs,
    .setxattr = s_setxattr,
    .getxattr = s_getxattr,
    .listxattr = s_listxattr,
    .removexattr = s_removexattr,
    .fallocate = s_fallocate,
    .lseek = s_lseek,
    .destroy = s_destroy,
};

gd_vfs_provider *gd__shadow_inner(gd_vfs_provider *pv)
{
    return pv && pv->ops == &shadow_ops ? ((struct shadow *)pv->p)->inner : NULL;
}

int gd_vfs_shadow_new(gd_vfs_provider *inner, const char *const *globs, int mode, uint64_t cap,
                      gd_vfs_provider **out, struct gd_err *err)
{
    size_t n = 0;
    for (; globs && globs[n]; n++)
        if (gd_vfs_glob_check(globs[n])) {
            gd_vfs_provider_free(inner);
            return gd_err_set(err, -EINVAL, "hide: bad glob '%s'", globs[n]);
        }
    if (mode != GD_VFS_SHADOW_HIDE && mode != GD_VFS_SHADOW_MEMORY) {
        gd_vfs_provider_free(inner);
        return gd_err_set(err, -EINVAL, "shadow: unknown mode %d", mode);
    }
    struct shadow *s = calloc(1, sizeof(*s));
    gd_vfs_provider *pv = calloc(1, sizeof(*pv));
    int e = s && pv && !gd__htab_init(&s->inos) ? 0 : -ENOMEM;
    if (!e) {
        s->inner = inner;
        inner = NULL;
        s->globs = calloc(n + 1, sizeof(char *));
        e = s->globs ? 0 : -ENOMEM;
        for (size_t i = 0; !e && i < n; i++, s->nglobs++)
            if (!(s->globs[i] = strdup(globs[i])))
                e = -ENOMEM;
    }
    if (!e && mode == GD_VFS_SHADOW_MEMORY)
        e = gd_vfs_memory_new(cap, &s->mem, err);
    if (e) {
        gd_vfs_provider_free(inner);
        if (s)
            s_destroy(s);
        free(pv);
        return gd_err_set(err, e, "shadow provider: out of memory");
    }
    s->scan_left = SH_SCAN_MAX;
    if (s->nglobs)
        scan(s, "", 0, 0);
    pv->ops = &shadow_ops;
    pv->p = s;
    pv->flags = s->inner->flags & (GD_VFS_READONLY | GD_VFS_EXCLUSIVE);
    if (!s->mem)
        pv->flags |= s->inner->flags & GD_VFS_DOTS;
    pv->name = "shadow";
    *out = pv;
    return 0;
}
