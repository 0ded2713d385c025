/* overlay_diff.c - what changed in an overlay (vfs.h: gd_vfs_overlay_changes,
 * gd_vfs_overlay_export). Added and modified entries are found by walking the upper
 * layer against the lower one; deleted ones are the whiteouts without an upper entry,
 * plus the lower entries of an opaque directory that the upper one does not have.
 * Everything is gathered under the overlay's lock, then sorted and reported unlocked. */
#define _GNU_SOURCE
#include "base/err.h"
#include "vfs/overlay_int.h"

#include <archive.h>
#include <archive_entry.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>

struct change {
    char *path;
    int kind;
    struct stat st;
};

struct clist {
    struct gd__ovl *o;
    struct change *v;
    size_t n, cap;
    int err;
};

static int add(struct clist *l, const char *path, int kind, const struct stat *st)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 64;
        struct change *v = realloc(l->v, cap * sizeof(*v));
        if (!v)
            return l->err = -ENOMEM;
        l->v = v;
        l->cap = cap;
    }
    if (!(l->v[l->n].path = strdup(path)))
        return l->err = -ENOMEM;
    l->v[l->n].kind = kind;
    l->v[l->n].st = *st;
    l->n++;
    return 0;
}

static void clist_free(struct clist *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->v[i].path);
    free(l->v);
}

/* the names of a directory of one layer, as one block of NUL-ended strings */
struct names {
    char *b;
    size_t n, cap;
};

static int names_fill(void *ctx, const char *name, uint64_t off, unsigned type,
                      const struct stat *st)
{
    struct names *n = ctx;
    size_t l = strlen(name) + 1;
    (void)off, (void)type, (void)st;
    if (name[0] == '.' && (!name[1] || (name[1] == '.' && !name[2])))
        return 0;
    if (n->n + l > n->cap) {
        size_t cap = n->cap ? n->cap * 2 : 1024;
        while (cap < n->n + l)
            cap *= 2;
        char *b = realloc(n->b, cap);
        if (!b)
            return -ENOMEM;
        n->b = b;
        n->cap = cap;
    }
    memcpy(n->b + n->n, name, l);
    n->n += l;
    return 0;
}

static int list_names(const gd_vfs_provider *pv, const char *dir, struct names *out)
{
    *out = (struct names){0};
    int e = gd__list_dir(pv, dir, names_fill, out);
    if (e) {
        free(out->b);
        *out = (struct names){0};
    }
    return e;
}

/* Same bytes in both layers' files at path? 1 yes, 0 no, negative error. */
static int same_data(struct gd__ovl *o, const char *path, const struct stat *st)
{
    const gd_vfs_provider *lo = o->lower, *up = o->upper;
    uint64_t lf, uf;
    int e = lo->ops->open(lo->p, path, O_RDONLY, &lf);
    if (e)
        return e;
    if ((e = up->ops->open(up->p, path, O_RDONLY, &uf))) {
        lo->ops->release(lo->p, lf);
        return e;
    }
    size_t chunk = 64u << 10;
    char *a = malloc(chunk), *b = malloc(chunk);
    int same = a && b ? 1 : -ENOMEM;
    for (uint64_t off = 0; same == 1 && off < (uint64_t)st->st_size; off += chunk) {
        ssize_t x = lo->ops->read(lo->p, lf, a, chunk, off);
        ssize_t y = up->ops->read(up->p, uf, b, chunk, off);
        if (x < 0 || y < 0)
            same = x < 0 ? (int)x : (int)y;
        else if (x != y || memcmp(a, b, (size_t)x))
            same = 0;
        else if (x == 0)
            break;
    }
    free(a);
    free(b);
    lo->ops->release(lo->p, lf);
    up->ops->release(up->p, uf);
    return same;
}

/* Is the upper entry at path (us) a change of the lower one (ls)? */
static int differs(struct gd__ovl *o, const char *path, const struct stat *us,
                   const struct stat *ls)
{
    if ((us->st_mode & S_IFMT) != (ls->st_mode & S_IFMT))
        return 1;
    if ((!S_ISLNK(us->st_mode) && (us->st_mode & 07777) != (ls->st_mode & 07777)) ||
        us->st_uid != ls->st_uid || us->st_gid != ls->st_gid)
        return 1;
    if (S_ISDIR(us->st_mode))
        return 0; /* its entries speak for themselves */
    if (us->st_size != ls->st_size || us->st_mtim.tv_sec != ls->st_mtim.tv_sec ||
        us->st_mtim.tv_nsec != ls->st_mtim.tv_nsec)
        return 1;
    if (S_ISLNK(us->st_mode)) {
        char a[PATH_MAX], b[PATH_MAX];
        int x = o->lower->ops->readlink(o->lower->p, path, a, sizeof(a));
        int y = o->upper->ops->readlink(o->upper->p, path, b, sizeof(b));
        return x != y || (x > 0 && memcmp(a, b, (size_t)x));
    }
    if (S_ISREG(us->st_mode)) {
        int s = same_data(o, path, us);
        return s != 1; /* unreadable counts as changed */
    }
    return us->st_rdev != ls->st_rdev;
}

static int walk_upper(struct clist *l, const char *dir, int added);

/* the lower entries of an opaque directory that the upper one lacks are deleted */
static int lower_gone(struct clist *l, const char *dir)
{
    struct gd__ovl *o = l->o;
    struct names n;
    if (list_names(o->lower, dir, &n))
        return 0;
    char path[PATH_MAX];
    struct stat st;
    for (size_t i = 0; i < n.n && !l->err; i += strlen(n.b + i) + 1) {
        if (gd__path_join(path, dir, n.b + i))
            continue;
        if (o->upper->ops->getattr(o->upper->p, path, &st) == 0)
            continue;
        if (o->lower->ops->getattr(o->lower->p, path, &st) == 0)
            add(l, path, GD_VFS_DELETED, &st);
    }
    free(n.b);
    return l->err;
}

/* one upper entry; added: an ancestor is new, so is this */
static int visit(struct clist *l, const char *path, int added)
{
    struct gd__ovl *o = l->o;
    struct stat us, ls;
    if (o->upper->ops->getattr(o->upper->p, path, &us))
        return 0;
    us.st_ino = gd__ovl_upper_ino(o, us.st_ino);
    int lower = !added && o->lower->ops->getattr(o->lower->p, path, &ls) == 0;
    if (!lower)
        add(l, path, GD_VFS_ADDED, &us);
    else if (differs(o, path, &us, &ls))
        add(l, path, GD_VFS_MODIFIED, &us);
    if (l->err || !S_ISDIR(us.st_mode))
        return l->err;
    if (lower && S_ISDIR(ls.st_mode) && gd__wt_masked(&o->wt, path) && lower_gone(l, path))
        return l->err;
    return walk_upper(l, path, !lower || !S_ISDIR(ls.st_mode));
}

static int walk_upper(struct clist *l, const char *dir, int added)
{
    struct names n;
    int e = list_names(l->o->upper, dir, &n);
    if (e)
        return l->err = e;
    char path[PATH_MAX];
    for (size_t i = 0; i < n.n && !l->err; i += strlen(n.b + i) + 1)
        if (!gd__path_join(path, dir, n.b + i))
            visit(l, path, added);
    free(n.b);
    return l->err;
}

static int on_whiteout(void *ud, const char *path)
{
    struct clist *l = ud;
    struct stat st;
    if (l->o->upper->ops->getattr(l->o->upper->p, path, &st) == 0)
        return 0; /* replaced: the upper walk reports it */
    if (l->o->lower->ops->getattr(l->o->lower->p, path, &st) == 0)
        add(l, path, GD_VFS_DELETED, &st);
    return l->err;
}

static int by_path(const void *a, const void *b)
{
    return strcmp(((const struct change *)a)->path, ((const struct change *)b)->path);
}

static int collect(struct gd__ovl *o, struct clist *l)
{
    *l = (struct clist){.o = o};
    if (!gd__wt_walk(&o->wt, on_whiteout, l))
        walk_upper(l, "", 0);
    if (l->err) {
        int e = l->err;
        clist_free(l);
        *l = (struct clist){0};
        return e;
    }
    if (l->n)
        qsort(l->v, l->n, sizeof(*l->v), by_path);
    return 0;
}

static gd_vfs_provider *unwrap(gd_vfs_provider *pv)
{
    for (gd_vfs_provider *in; (in = gd__shadow_inner(pv));)
        pv = in;
    return pv;
}

int gd_vfs_overlay_changes(gd_vfs_provider *ov, gd_vfs_change_fn fn, void *ud)
{
    struct gd__ovl *o = gd__ovl_of(unwrap(ov));
    if (!o)
        return -EINVAL;
    struct clist l;
    pthread_mutex_lock(&o->mu);
    int e = collect(o, &l);
    pthread_mutex_unlock(&o->mu);
    if (e)
        return e;
    for (size_t i = 0; i < l.n && !e; i++)
        e = fn(ud, l.v[i].path, l.v[i].kind, &l.v[i].st);
    clist_free(&l);
    return e;
}

/* ---- export ---- */

static int tar_data(struct gd__ovl *o, struct archive *a, const char *path, struct gd_err *err)
{
    const gd_vfs_provider *up = o->upper;
    uint64_t fh;
    int e = up->ops->open(up->p, path, O_RDONLY, &fh);
    if (e)
        return gd_err_set(err, e, "%s: %s", path, strerror(-e));
    size_t chunk = 128u << 10;
    char *buf = malloc(chunk);
    e = buf ? 0 : gd_err_set(err, -ENOMEM, "out of memory");
    for (uint64_t off = 0; !e;) {
        ssize_t n = up->ops->read(up->p, fh, buf, chunk, off);
        if (n < 0)
            e = gd_err_set(err, (int)n, "%s: %s", path, strerror((int)-n));
        if (n <= 0)
            break;
        if (archive_write_data(a, buf, (size_t)n) != n)
            e = gd_err_set(err, -EIO, "tar: %s", archive_error_string(a));
        off += (uint64_t)n;
    }
    free(buf);
    up->ops->release(up->p, fh);
    return e;
}

static int tar_entry(struct gd__ovl *o, struct archive *a, const struct change *c, unsigned flags,
                     struct gd_err *err)
{
    struct archive_entry *en = archive_entry_new();
    if (!en)
        return gd_err_set(err, -ENOMEM, "out of memory");
    int e = 0;
    if (c->kind == GD_VFS_DELETED) {
        /* an OCI whiteout: DIR/.wh.NAME */
        char wh[PATH_MAX + 8];
        const char *slash = strrchr(c->path, '/');
        int dl = slash ? (int)(slash - c->path) + 1 : 0;
        snprintf(wh, sizeof(wh), "%.*s.wh.%s", dl, c->path, c->path + dl);
        archive_entry_set_pathname(en, wh);
        archive_entry_set_filetype(en, AE_IFREG);
        archive_entry_set_perm(en, 0644);
        archive_entry_set_size(en, 0);
    } else {
        struct stat st = c->st;
        if (!S_ISREG(st.st_mode) && !S_ISDIR(st.st_mode) && !S_ISLNK(st.st_mode)) {
            archive_entry_free(en);
            return 0; /* devices, fifos, sockets: not exported */
        }
        if (!S_ISREG(st.st_mode))
            st.st_size = 0;
        archive_entry_copy_stat(en, &st);
        archive_entry_set_pathname(en, c->path);
        archive_entry_set_nlink(en, 1);
        if (S_ISLNK(st.st_mode)) {
            char t[PATH_MAX];
            int n = o->upper->ops->readlink(o->upper->p, c->path, t, sizeof(t) - 1);
            if (n < 0) {
                archive_entry_free(en);
                return gd_err_set(err, n, "%s: %s", c->path, strerror(-n));
            }
            t[n] = 0;
            archive_entry_set_symlink(en, t);
        }
    }
    (void)flags;
    if (archive_write_header(a, en) != ARCHIVE_OK)
        e = gd_err_set(err, -EIO, "tar: %s", archive_error_string(a));
    else if (c->kind != GD_VFS_DELETED && S_ISREG(c->st.st_mode))
        e = tar_data(o, a, c->path, err);
    archive_entry_free(en);
    return e;
}

int gd_vfs_path_under(const char *path, const char *under)
{
    size_t n = under ? strlen(under) : 0;
    return !n || (!strncmp(path, under, n) && (path[n] == 0 || path[n] == '/'));
}

int gd_vfs_overlay_export(gd_vfs_provider *ov, const char *under, int fd, unsigned flags,
                          struct gd_err *err)
{
    struct gd__ovl *o = gd__ovl_of(unwrap(ov));
    if (!o)
        return gd_err_set(err, -EINVAL, "not an overlay mount");
    struct archive *a = archive_write_new();
    if (!a)
        return gd_err_set(err, -ENOMEM, "out of memory");
    int e = 0;
    if (archive_write_set_format_pax_restricted(a) != ARCHIVE_OK ||
        archive_write_open_fd(a, fd) != ARCHIVE_OK) {
        e = gd_err_set(err, -EIO, "tar: %s", archive_error_string(a));
        archive_write_free(a);
        return e;
    }
    struct clist l;
    /* the guest's file operations on this mount wait while the layer is read */
    pthread_mutex_lock(&o->mu);
    if ((e = collect(o, &l)))
        gd_err_set(err, e, "listing the changes: %s", strerror(-e));
    for (size_t i = 0; !e && i < l.n; i++)
        if ((l.v[i].kind != GD_VFS_DELETED || (flags & GD_VFS_EXPORT_WHITEOUTS)) &&
            gd_vfs_path_under(l.v[i].path, under))
            e = tar_entry(o, a, &l.v[i], flags, err);
    pthread_mutex_unlock(&o->mu);
    clist_free(&l);
    if (archive_write_close(a) != ARCHIVE_OK && !e)
        e = gd_err_set(err, -EIO, "tar: %s", archive_error_string(a));
    archive_write_free(a);
    return e;
}
