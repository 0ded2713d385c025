/* session.c - the FUSE session (vfs.h): one guest mount's requests mapped onto a
 * provider. The guest's nodeids and file handles are keys into our tables (table.c);
 * paths handed to the provider are rebuilt from the node table on every request. */
#define _GNU_SOURCE
#include "base/err.h"
#include "vfs/fuse.h"
#include "vfs/vfs.h"
#include "vfs/vfs_int.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* One request being answered. */
struct rq {
    gd_vfs_session *s;
    const struct gd_fuse_req *r;
    uint8_t *out;
    size_t cap;
};

#define OUTH sizeof(struct fuse_out_header)

static size_t rerr(const struct rq *q, int e)
{
    return gd_fuse_reply_err(q->out, q->cap, q->r->h.unique, e);
}

/* A provider's result as an errno for the guest: negative values the kernel accepts pass
 * untouched, anything else is EIO. */
int gd__vfs_perr(long e)
{
    return e < 0 && e > -512 ? (int)e : -EIO;
}
#define perr gd__vfs_perr

static int readonly(const gd_vfs_session *s)
{
    return (s->pv->flags & GD_VFS_READONLY) != 0;
}

static int wants_write(int flags)
{
    return (flags & O_ACCMODE) != O_RDONLY || (flags & O_TRUNC);
}

/* ---- paths ---- */

static struct gd__vnode *node(gd_vfs_session *s, uint64_t id)
{
    return gd__vnodes_get(&s->nodes, id);
}

static int path_of(const struct gd__vnode *n, char *buf)
{
    long k = gd__vnodes_path(n, buf, PATH_MAX);
    return k < 0 ? (int)k : 0;
}

static int child_path(const struct gd__vnode *dir, const char *name, size_t len, char *buf)
{
    long k = gd__vnodes_path(dir, buf, PATH_MAX);
    if (k < 0)
        return (int)k;
    size_t at = (size_t)k + (k ? 1 : 0);
    if (at + len >= PATH_MAX)
        return -ENAMETOOLONG;
    if (k)
        buf[k] = '/';
    memcpy(buf + at, name, len);
    buf[at + len] = 0;
    return 0;
}

/* The absolute guest path of a provider path: the mount, then the path. */
static const char *gpath(const gd_vfs_session *s, const char *path, char *buf)
{
    size_t m = strlen(s->mount);
    memcpy(buf, s->mount, m + 1);
    if (*path) {
        if (m == 0 || buf[m - 1] != '/')
            buf[m++] = '/';
        memcpy(buf + m, path, strlen(path) + 1);
    }
    return buf;
}

/* ---- hooks ---- */

static void ev_init(gd_vfs_session *s, struct gd_vfs_event *ev, const char *op, const char *path,
                    const char *path2)
{
    memset(ev, 0, sizeof(*ev));
    ev->mount = s->mount;
    ev->op = op;
    ev->path = gpath(s, path, s->g1);
    ev->path2 = path2 ? gpath(s, path2, s->g2) : NULL;
    ev->mutating = 1;
}

static int hook_before(gd_vfs_session *s, const struct gd_vfs_event *ev)
{
    if (!s->hooks || !s->hooks->before)
        return 0;
    char reason[256] = "";
    int e = s->hooks->before(s->hooks->ud, ev, reason, sizeof(reason));
    if (e >= 0)
        return 0;
    return e > -512 ? e : -EACCES; /* a deny that is not an errno still denies */
}

static void hook_after(gd_vfs_session *s, struct gd_vfs_event *ev, int result)
{
    if (s->hooks && s->hooks->after) {
        ev->result = result;
        s->hooks->after(s->hooks->ud, ev);
    }
}

/* ---- replies ---- */

static void ttl(unsigned ms, uint64_t *sec, uint32_t *nsec)
{
    *sec = ms / 1000;
    *nsec = (ms % 1000) * 1000000u;
}

void gd__vfs_fill_entry(const gd_vfs_session *s, struct fuse_entry_out *e, uint64_t nodeid,
                        const struct stat *st)
{
    memset(e, 0, sizeof(*e));
    e->nodeid = nodeid;
    ttl(s->entry_ttl_ms, &e->entry_valid, &e->entry_valid_nsec);
    ttl(s->attr_ttl_ms, &e->attr_valid, &e->attr_valid_nsec);
    if (st)
        gd_fuse_attr_from_stat(&e->attr, st);
}

/* The node for parent/name as it now is on the provider (st): a node whose type changed
 * (the host replaced a file by a directory) is detached and a new one made, as the
 * kernel would refuse the old nodeid with another type. */
int gd__vfs_make_node(gd_vfs_session *s, struct gd__vnode *parent, const char *name, size_t len,
                      const struct stat *st, struct gd__vnode **out)
{
    struct gd__vnode *n = gd__vnodes_child(&s->nodes, parent, name, len);
    if (n && n->type && n->type != (st->st_mode & S_IFMT))
        gd__vnodes_detach(&s->nodes, n);
    return gd__vnodes_make(&s->nodes, parent, name, len, out);
}

/* Answers an entry for n (made by make_node) and counts the lookup once it is written;
 * 0 when the reply does not fit (nothing counted). */
static size_t reply_entry(struct rq *q, struct gd__vnode *n, const struct stat *st,
                          const struct fuse_open_out *o)
{
    struct fuse_entry_out e;
    gd__vfs_fill_entry(q->s, &e, n->by_id.key, st);
    size_t k = o ? gd_fuse_reply_create(q->out, q->cap, q->r->h.unique, &e, o)
                 : gd_fuse_reply_entry(q->out, q->cap, q->r->h.unique, &e);
    if (!k)
        return 0; /* the caller releases n */
    n->nlookup++;
    n->type = st->st_mode & S_IFMT;
    return k;
}

static size_t reply_attr(struct rq *q, const struct stat *st)
{
    struct fuse_attr_out a = {0};
    ttl(q->s->attr_ttl_ms, &a.attr_valid, &a.attr_valid_nsec);
    gd_fuse_attr_from_stat(&a.attr, st);
    return gd_fuse_reply_attr(q->out, q->cap, q->r->h.unique, &a);
}

/* ---- INIT, DESTROY, FORGET ---- */

static size_t op_init(struct rq *q)
{
    gd_vfs_session *s = q->s;
    if (s->inited)
        return rerr(q, -EPROTO);
    struct gd_fuse_init_opts o = {
        .writeback_cache = (s->pv->flags & GD_VFS_EXCLUSIVE) && !readonly(s),
        .max_write = GD_FUSE_MAX_IO,
    };
    struct gd_fuse_init_result res;
    size_t k = gd_fuse_reply_init(q->out, q->cap, q->r, &o, &res);
    if (k && !res.error) {
        s->inited = 1;
        s->writeback = (res.flags & FUSE_WRITEBACK_CACHE) != 0;
    }
    return k ? k : rerr(q, -EIO);
}

static void release_handle(gd_vfs_session *s, struct gd__vhandle *h)
{
    int e = 0;
    if (h->dir) {
        if (s->ops->releasedir)
            e = s->ops->releasedir(s->pv->p, h->pfh);
    } else {
        if (s->ops->release)
            e = s->ops->release(s->pv->p, h->pfh);
        struct gd_vfs_event ev;
        ev_init(s, &ev, "close", h->path, NULL);
        ev.flags = h->flags;
        ev.mutating = wants_write(h->flags);
        ev.bytes_read = h->bytes_read;
        ev.bytes_written = h->bytes_written;
        hook_after(s, &ev, e < 0 ? perr(e) : 0);
    }
    gd__vhandles_del(&s->handles, h);
}

static void release_all(gd_vfs_session *s)
{
    struct gd__vhandle *h;
    size_t cur = 0;
    while ((h = gd__vhandles_next(&s->handles, &cur)))
        release_handle(s, h);
}

static size_t op_destroy(struct rq *q)
{
    /* the guest unmounted: a later INIT (a new mount) starts over */
    release_all(q->s);
    gd__vnodes_reset(&q->s->nodes);
    q->s->inited = 0;
    q->s->writeback = 0;
    return rerr(q, 0);
}

static void op_forget(gd_vfs_session *s, const struct gd_fuse_req *r)
{
    if (r->h.opcode == FUSE_FORGET) {
        gd__vnodes_forget(&s->nodes, r->h.nodeid, r->in.forget.nlookup);
        return;
    }
    for (uint32_t i = 0; i < r->in.batch_forget.count; i++) {
        struct fuse_forget_one f;
        gd_fuse_forget_at(r, i, &f);
        gd__vnodes_forget(&s->nodes, f.nodeid, f.nlookup);
    }
}

/* ---- lookups and attributes ---- */

static size_t op_lookup(struct rq *q)
{
    gd_vfs_session *s = q->s;
    const struct gd_fuse_req *r = q->r;
    struct gd__vnode *dir = node(s, r->h.nodeid), *n;
    if (!dir)
        return rerr(q, -ENOENT);
    int e = child_path(dir, r->name, r->namelen, s->p1);
    if (e)
        return rerr(q, e);
    if (!s->ops->getattr)
        return rerr(q, -ENOSYS);
    struct stat st;
    e = s->ops->getattr(s->pv->p, s->p1, &st);
    if (e == -ENOENT) {
        /* gone on the provider (the host's side may have removed it) */
        if ((n = gd__vnodes_child(&s->nodes, dir, r->name, r->namelen)))
            gd__vnodes_detach(&s->nodes, n);
        struct fuse_entry_out neg;
        gd__vfs_fill_entry(s, &neg, 0, NULL); /* nodeid 0: the kernel caches the absence */
        size_t k = gd_fuse_reply_entry(q->out, q->cap, r->h.unique, &neg);
        return k ? k : rerr(q, -ENOENT);
    }
    if (e < 0)
        return rerr(q, perr(e));
    if ((e = gd__vfs_make_node(s, dir, r->name, r->namelen, &st, &n)))
        return rerr(q, e);
    size_t k = reply_entry(q, n, &st, NULL);
    if (!k)
        goto fail;
    return k;
fail:
    gd__vnodes_release(&s->nodes, n);
    return rerr(q, -EIO);
}

/* An open file handle of node id, for a node whose name is gone and a request that came
 * without one (the writeback cache flushes times without a handle when only read-only
 * ones are open; stat of /proc/PID/fd/N). One scan of the handle table (<= 65536). */
static struct gd__vhandle *handle_of(gd_vfs_session *s, uint64_t id)
{
    return gd__vhandles_of_node(&s->handles, id);
}

/* GETATTR with a file handle on a node whose name is gone (fstat of an unlinked file):
 * the provider's setattr with nothing to set reports the attributes by handle. */
static int getattr_fh(gd_vfs_session *s, struct gd__vhandle *h, struct stat *st)
{
    if (!h || h->dir || !s->ops->setattr)
        return -ENOENT;
    struct gd_vfs_setattr a = {0};
    return s->ops->setattr(s->pv->p, h->path, h->pfh, &a, st);
}

static size_t op_getattr(struct rq *q)
{
    gd_vfs_session *s = q->s;
    struct gd__vnode *n = node(s, q->r->h.nodeid);
    if (!n)
        return rerr(q, -ENOENT);
    struct gd__vhandle *h = NULL;
    if (q->r->in.getattr.getattr_flags & FUSE_GETATTR_FH)
        h = gd__vhandles_get(&s->handles, q->r->in.getattr.fh);
    if (h && h->nodeid != n->by_id.key)
        h = NULL; /* another file's handle: never its attributes under this node */
    if (!s->ops->getattr)
        return rerr(q, -ENOSYS);
    struct stat st;
    int e = path_of(n, s->p1);
    if (!e)
        e = s->ops->getattr(s->pv->p, s->p1, &st);
    else if (e == -ENOENT)
        e = getattr_fh(s, h ? h : handle_of(s, n->by_id.key), &st);
    return e < 0 ? rerr(q, perr(e)) : reply_attr(q, &st);
}

static unsigned setattr_valid(uint32_t v)
{
    unsigned out = 0;
    if (v & FATTR_MODE)
        out |= GD_VFS_SET_MODE;
    if (v & FATTR_UID)
        out |= GD_VFS_SET_UID;
    if (v & FATTR_GID)
        out |= GD_VFS_SET_GID;
    if (v & FATTR_SIZE)
        out |= GD_VFS_SET_SIZE;
    if (v & FATTR_ATIME_NOW)
        out |= GD_VFS_SET_ATIME_NOW;
    else if (v & FATTR_ATIME)
        out |= GD_VFS_SET_ATIME;
    if (v & FATTR_MTIME_NOW)
        out |= GD_VFS_SET_MTIME_NOW;
    else if (v & FATTR_MTIME)
        out |= GD_VFS_SET_MTIME;
    if (v & FATTR_CTIME)
        out |= GD_VFS_SET_CTIME;
    return out;
}

static size_t op_setattr(struct rq *q)
{
    gd_vfs_session *s = q->s;
    const struct fuse_setattr_in *in = &q->r->in.setattr;
    struct gd__vnode *n = node(s, q->r->h.nodeid);
    if (!n)
        return rerr(q, -ENOENT);
    struct gd__vhandle *h = NULL;
    if (in->valid & FATTR_FH) {
        h = gd__vhandles_get(&s->handles, in->fh);
        /* the kernel sends the node's own handle; another file's would carry the change
         * past the hook, which sees this node's path */
        if (!h || h->dir || h->nodeid != n->by_id.key)
            return rerr(q, -EBADF);
    }
    int e = path_of(n, s->p1);
    if (e == -ENOENT && !h)
        h = handle_of(s, n->by_id.key);
    if (e == -ENOENT && h) { /* ftruncate of an unlinked file: the handle's path */
        snprintf(s->p1, PATH_MAX, "%s", h->path);
        e = 0;
    }
    if (e)
        return rerr(q, e);
    struct gd_vfs_setattr a = {
        .valid = setattr_valid(in->valid),
        .mode = in->mode & 07777,
        .uid = in->uid,
        .gid = in->gid,
        .size = in->size,
        .atime = {(time_t)in->atime, in->atimensec},
        .mtime = {(time_t)in->mtime, in->mtimensec},
        .ctime = {(time_t)in->ctime, in->ctimensec},
    };
    if ((a.valid & GD_VFS_SET_SIZE) && a.size > INT64_MAX)
        return rerr(q, -EFBIG);
    if (a.atime.tv_nsec >= 1000000000 || a.mtime.tv_nsec >= 1000000000 ||
        a.ctime.tv_nsec >= 1000000000)
        return rerr(q, -EINVAL);
    struct stat st;
    if (!a.valid) { /* nothing to change: report */
        e = h                 ? getattr_fh(s, h, &st)
            : s->ops->getattr ? s->ops->getattr(s->pv->p, s->p1, &st)
                              : -ENOSYS;
        return e < 0 ? rerr(q, perr(e)) : reply_attr(q, &st);
    }
    if (readonly(s) || !s->ops->setattr)
        return rerr(q, -EROFS);
    struct gd_vfs_event ev;
    ev_init(s, &ev, "setattr", s->p1, NULL);
    ev.mode = a.mode;
    ev.size = (a.valid & GD_VFS_SET_SIZE) ? a.size : 0;
    ev.valid = a.valid;
    if ((e = hook_before(s, &ev)))
        return rerr(q, e);
    e = s->ops->setattr(s->pv->p, s->p1, h ? h->pfh : 0, &a, &st);
    e = e < 0 ? perr(e) : 0;
    hook_after(s, &ev, e);
    return e ? rerr(q, e) : reply_attr(q, &st);
}

static size_t op_readlink(struct rq *q)
{
    gd_vfs_session *s = q->s;
    struct gd__vnode *n = node(s, q->r->h.nodeid);
    if (!n)
        return rerr(q, -ENOENT);
    int e = path_of(n, s->p1);
    if (e)
        return rerr(q, e);
    if (!s->ops->readlink)
        return rerr(q, -ENOSYS);
    size_t room = q->cap - OUTH < GD_FUSE_LINK_MAX ? q->cap - OUTH : GD_FUSE_LINK_MAX;
    int k = s->ops->readlink(s->pv->p, s->p1, (char *)q->out + OUTH, room);
    if (k < 0 || (size_t)k > room)
        return rerr(q, k < 0 ? perr(k) : -EIO);
    return gd_fuse_reply_hdr(q->out, q->cap, q->r->h.unique, (size_t)k);
}

/* With the writeback cache the kernel reads through a write-only handle to fill partial
 * pages and keeps O_APPEND itself: ask for read-write, without O_APPEND (a provider that
 * refuses reading, EACCES, gets the guest's access mode back). */
static int writeback_flags(const gd_vfs_session *s, int flags)
{
    if (!s->writeback)
        return flags;
    if ((flags & O_ACCMODE) == O_WRONLY)
        flags = (flags & ~O_ACCMODE) | O_RDWR;
    return flags & ~O_APPEND;
}

/* ---- new entries: MKNOD, MKDIR, SYMLINK, LINK, CREATE ---- */

static size_t op_new_entry(struct rq *q)
{
    gd_vfs_session *s = q->s;
    const struct gd_fuse_req *r = q->r;
    uint32_t op = r->h.opcode;
    struct gd__vnode *dir = node(s, r->h.nodeid), *n, *old = NULL;
    if (!dir)
        return rerr(q, -ENOENT);
    int e = child_path(dir, r->name, r->namelen, s->p1);
    if (!e && op == FUSE_LINK) {
        if (!(old = node(s, r->in.link.oldnodeid)))
            return rerr(q, -ENOENT);
        e = path_of(old, s->p2);
    }
    if (e)
        return rerr(q, e);
    if (readonly(s))
        return rerr(q, -EROFS);
    struct gd_vfs_event ev;
    const char *name = op == FUSE_MKNOD     ? "mknod"
                       : op == FUSE_MKDIR   ? "mkdir"
                       : op == FUSE_SYMLINK ? "symlink"
                       : op == FUSE_LINK    ? "link"
                                            : "create";
    if (op == FUSE_LINK)
        ev_init(s, &ev, name, s->p2, s->p1);
    else
        ev_init(s, &ev, name, s->p1, NULL);
    if (op == FUSE_SYMLINK)
        ev.path2 = r->name2; /* the target, verbatim: the guest resolves it */
    if (op == FUSE_MKNOD)
        ev.mode = r->in.mknod.mode;
    else if (op == FUSE_MKDIR)
        ev.mode = r->in.mkdir.mode & 07777;
    else if (op == FUSE_CREATE) {
        ev.mode = r->in.create.mode & 07777;
        ev.flags = (int)r->in.create.flags;
    }
    /* the node and the handle are reserved first: past a cap nothing is created */
    if ((e = gd__vnodes_make(&s->nodes, dir, r->name, r->namelen, &n)))
        return rerr(q, e);
    struct gd__vhandle *h = NULL;
    if (op == FUSE_CREATE &&
        (e = gd__vhandles_add(&s->handles, 0, n->by_id.key, s->p1, 0, ev.flags, &h)))
        goto fail;
    if ((e = hook_before(s, &ev)))
        goto fail;
    struct stat st;
    void *p = s->pv->p;
    const struct gd_vfs_ops *o = s->ops;
    switch (op) {
    case FUSE_MKNOD:
        e = o->mknod ? o->mknod(p, s->p1, r->in.mknod.mode, r->in.mknod.rdev, &st) : -EROFS;
        break;
    case FUSE_MKDIR:
        e = o->mkdir ? o->mkdir(p, s->p1, r->in.mkdir.mode & 07777, &st) : -EROFS;
        break;
    case FUSE_SYMLINK:
        e = o->symlink ? o->symlink(p, r->name2, s->p1, &st) : -EROFS;
        break;
    case FUSE_LINK:
        e = o->link ? o->link(p, s->p2, s->p1, &st) : -EROFS;
        break;
    default: {
        int fl = writeback_flags(s, (int)r->in.create.flags);
        e = o->create ? o->create(p, s->p1, fl, r->in.create.mode & 07777, &h->pfh, &st) : -EROFS;
        if (e == -EACCES && fl != ((int)r->in.create.flags & ~O_APPEND))
            e = o->create(p, s->p1, (int)r->in.create.flags & ~O_APPEND, r->in.create.mode & 07777,
                          &h->pfh, &st);
    }
    }
    e = e < 0 ? perr(e) : 0;
    hook_after(s, &ev, e);
    if (e)
        goto fail;
    struct fuse_open_out oo = {.fh = h ? h->by_id.key : 0};
    if (s->pv->flags & GD_VFS_EXCLUSIVE)
        oo.open_flags = FOPEN_KEEP_CACHE;
    size_t k = reply_entry(q, n, &st, op == FUSE_CREATE ? &oo : NULL);
    if (k)
        return k;
    e = -EIO; /* the reply did not fit: nobody would release the handle or the node */
    if (h)
        release_handle(s, h), h = NULL;
fail:
    if (h)
        gd__vhandles_del(&s->handles, h);
    gd__vnodes_release(&s->nodes, n);
    return rerr(q, e);
}

/* ---- removals and renames ---- */

static size_t op_remove(struct rq *q)
{
    gd_vfs_session *s = q->s;
    const struct gd_fuse_req *r = q->r;
    struct gd__vnode *dir = node(s, r->h.nodeid);
    if (!dir)
        return rerr(q, -ENOENT);
    int e = child_path(dir, r->name, r->namelen, s->p1);
    if (e)
        return rerr(q, e);
    if (readonly(s))
        return rerr(q, -EROFS);
    int rm = r->h.opcode == FUSE_RMDIR;
    struct gd_vfs_event ev;
    ev_init(s, &ev, rm ? "rmdir" : "unlink", s->p1, NULL);
    if ((e = hook_before(s, &ev)))
        return rerr(q, e);
    int (*fn)(void *, const char *) = rm ? s->ops->rmdir : s->ops->unlink;
    e = fn ? fn(s->pv->p, s->p1) : -EROFS;
    e = e < 0 ? perr(e) : 0;
    hook_after(s, &ev, e);
    if (!e) {
        struct gd__vnode *n = gd__vnodes_child(&s->nodes, dir, r->name, r->namelen);
        if (n)
            gd__vnodes_detach(&s->nodes, n);
    }
    return rerr(q, e);
}

static size_t op_rename(struct rq *q)
{
    gd_vfs_session *s = q->s;
    const struct gd_fuse_req *r = q->r;
    unsigned flags = r->in.rename.flags;
    struct gd__vnode *d1 = node(s, r->h.nodeid), *d2 = node(s, r->in.rename.newdir);
    if (!d1 || !d2)
        return rerr(q, -ENOENT);
    int e = child_path(d1, r->name, r->namelen, s->p1);
    if (!e)
        e = child_path(d2, r->name2, r->name2len, s->p2);
    if (e)
        return rerr(q, e);
    if (readonly(s))
        return rerr(q, -EROFS);
    struct gd__vnode *a = gd__vnodes_child(&s->nodes, d1, r->name, r->namelen);
    struct gd__vnode *b = gd__vnodes_child(&s->nodes, d2, r->name2, r->name2len);
    /* a directory into itself: the provider should refuse it too, but our table must
     * stay a tree whatever the provider says */
    if ((a && gd__vnodes_is_ancestor(a, d2)) ||
        ((flags & RENAME_EXCHANGE) && b && gd__vnodes_is_ancestor(b, d1)))
        return rerr(q, -EINVAL);
    struct gd_vfs_event ev;
    ev_init(s, &ev, "rename", s->p1, s->p2);
    ev.flags = (int)flags;
    if ((e = hook_before(s, &ev)))
        return rerr(q, e);
    e = s->ops->rename ? s->ops->rename(s->pv->p, s->p1, s->p2, flags) : -EROFS;
    e = e < 0 ? perr(e) : 0;
    hook_after(s, &ev, e);
    if (e)
        return rerr(q, e);
    if (flags & RENAME_EXCHANGE) {
        if (a && b)
            gd__vnodes_exchange(&s->nodes, a, b);
        else if (a)
            gd__vnodes_move(&s->nodes, a, d2, r->name2, r->name2len);
        else if (b)
            gd__vnodes_move(&s->nodes, b, d1, r->name, r->namelen);
    } else if (a != b) {
        if (b)
            gd__vnodes_detach(&s->nodes, b); /* replaced */
        if (a)
            gd__vnodes_move(&s->nodes, a, d2, r->name2, r->name2len);
    }
    return rerr(q, 0);
}

/* ---- open files ---- */

static size_t op_open(struct rq *q)
{
    gd_vfs_session *s = q->s;
    const struct gd_fuse_req *r = q->r;
    int dir = r->h.opcode == FUSE_OPENDIR, flags = (int)r->in.open.flags;
    struct gd__vnode *n = node(s, r->h.nodeid);
    if (!n)
        return rerr(q, -ENOENT);
    int e = path_of(n, s->p1);
    if (e)
        return rerr(q, e);
    if (!dir && readonly(s) && wants_write(flags))
        return rerr(q, -EROFS);
    struct gd_vfs_event ev;
    ev_init(s, &ev, "open", s->p1, NULL);
    ev.flags = flags;
    ev.mutating = !dir && wants_write(flags);
    struct gd__vhandle *h;
    if ((e = gd__vhandles_add(&s->handles, 0, n->by_id.key, s->p1, dir, flags, &h)))
        return rerr(q, e);
    if (!dir && (e = hook_before(s, &ev)))
        goto fail;
    if (dir) {
        e = s->ops->opendir ? s->ops->opendir(s->pv->p, s->p1, &h->pfh) : 0;
    } else {
        int fl = writeback_flags(s, flags);
        e = s->ops->open ? s->ops->open(s->pv->p, s->p1, fl, &h->pfh) : -ENOSYS;
        if (e == -EACCES && fl != (flags & ~O_APPEND))
            e = s->ops->open(s->pv->p, s->p1, flags & ~O_APPEND, &h->pfh);
    }
    e = e < 0 ? perr(e) : 0;
    if (!dir)
        hook_after(s, &ev, e);
    if (e)
        goto fail;
    struct fuse_open_out o = {.fh = h->by_id.key};
    if (s->pv->flags & GD_VFS_EXCLUSIVE)
        o.open_flags = dir ? FOPEN_CACHE_DIR : FOPEN_KEEP_CACHE;
    size_t k = gd_fuse_reply_open(q->out, q->cap, r->h.unique, &o);
    if (!k) {
        release_handle(s, h);
        return rerr(q, -EIO);
    }
    return k;
fail:
    gd__vhandles_del(&s->handles, h);
    return rerr(q, e);
}

static struct gd__vhandle *file_handle(gd_vfs_session *s, uint64_t fh, int dir)
{
    struct gd__vhandle *h = gd__vhandles_get(&s->handles, fh);
    return h && h->dir == dir ? h : NULL;
}

/* offset + len must stay a file position */
static int range_ok(uint64_t off, uint64_t len)
{
    return off <= INT64_MAX && len <= INT64_MAX - off;
}

static size_t op_read(struct rq *q)
{
    gd_vfs_session *s = q->s;
    const struct fuse_read_in *in = &q->r->in.read;
    struct gd__vhandle *h = file_handle(s, in->fh, 0);
    /* write-only: only the kernel's writeback cache reads through it */
    if (!h || (!s->writeback && (h->flags & O_ACCMODE) == O_WRONLY))
        return rerr(q, -EBADF);
    if (!range_ok(in->offset, in->size))
        return rerr(q, -EINVAL);
    if (!s->ops->read)
        return rerr(q, -ENOSYS);
    size_t n = in->size < q->cap - OUTH ? in->size : q->cap - OUTH;
    ssize_t k = s->ops->read(s->pv->p, h->pfh, q->out + OUTH, n, in->offset);
    if (k < 0 || (size_t)k > n)
        return rerr(q, k < 0 ? perr(k) : -EIO);
    h->bytes_read += (uint64_t)k;
    return gd_fuse_reply_hdr(q->out, q->cap, q->r->h.unique, (size_t)k);
}

static size_t op_write(struct rq *q)
{
    gd_vfs_session *s = q->s;
    const struct fuse_write_in *in = &q->r->in.write;
    struct gd__vhandle *h = file_handle(s, in->fh, 0);
    if (!h)
        return rerr(q, -EBADF);
    if ((h->flags & O_ACCMODE) == O_RDONLY)
        return rerr(q, -EBADF); /* the open (and its hook) was read-only */
    if (!range_ok(in->offset, q->r->datalen))
        return rerr(q, -EFBIG);
    if (readonly(s) || !s->ops->write)
        return rerr(q, -EROFS);
    ssize_t k = s->ops->write(s->pv->p, h->pfh, q->r->data, q->r->datalen, in->offset);
    if (k < 0 || (size_t)k > q->r->datalen)
        return rerr(q, k < 0 ? perr(k) : -EIO);
    h->bytes_written += (uint64_t)k;
    return gd_fuse_reply_write(q->out, q->cap, q->r->h.unique, (uint32_t)k);
}

static size_t op_release(struct rq *q)
{
    int dir = q->r->h.opcode == FUSE_RELEASEDIR;
    struct gd__vhandle *h = file_handle(q->s, q->r->in.release.fh, dir);
    if (!h)
        return rerr(q, -EBADF);
    release_handle(q->s, h);
    return rerr(q, 0);
}

static size_t op_flush_fsync(struct rq *q)
{
    gd_vfs_session *s = q->s;
    const struct gd_fuse_req *r = q->r;
    uint32_t op = r->h.opcode;
    uint64_t fh = op == FUSE_FLUSH ? r->in.flush.fh : r->in.fsync.fh;
    struct gd__vhandle *h = file_handle(s, fh, op == FUSE_FSYNCDIR);
    if (!h)
        return rerr(q, -EBADF);
    int e = 0;
    if (op == FUSE_FLUSH && !s->ops->flush)
        return rerr(q, -ENOSYS); /* nothing to do at close: the kernel stops sending FLUSH */
    if (op == FUSE_FLUSH)
        e = s->ops->flush(s->pv->p, h->pfh);
    else if (op == FUSE_FSYNC && s->ops->fsync)
        e = s->ops->fsync(s->pv->p, h->pfh, r->in.fsync.fsync_flags & FUSE_FSYNC_FDATASYNC);
    return rerr(q, e < 0 ? perr(e) : 0);
}

static size_t op_fallocate(struct rq *q)
{
    gd_vfs_session *s = q->s;
    const struct fuse_fallocate_in *in = &q->r->in.fallocate;
    struct gd__vhandle *h = file_handle(s, in->fh, 0);
    if (!h || (h->flags & O_ACCMODE) == O_RDONLY)
        return rerr(q, -EBADF);
    if (!range_ok(in->offset, in->length))
        return rerr(q, -EFBIG);
    if (readonly(s))
        return rerr(q, -EROFS);
    if (!s->ops->fallocate)
        return rerr(q, -EOPNOTSUPP);
    int e = s->ops->fallocate(s->pv->p, h->pfh, (int)in->mode, in->offset, in->length);
    return rerr(q, e < 0 ? perr(e) : 0);
}

static size_t op_lseek(struct rq *q)
{
    gd_vfs_session *s = q->s;
    const struct fuse_lseek_in *in = &q->r->in.lseek;
    struct gd__vhandle *h = file_handle(s, in->fh, 0);
    if (!h)
        return rerr(q, -EBADF);
    if (!s->ops->lseek)
        return rerr(q, -ENOSYS);
    if (in->offset > INT64_MAX)
        return rerr(q, -ENXIO);
    int64_t k = s->ops->lseek(s->pv->p, h->pfh, (int64_t)in->offset, (int)in->whence);
    if (k < 0)
        return rerr(q, perr((long)k));
    return gd_fuse_reply_lseek(q->out, q->cap, q->r->h.unique, (uint64_t)k);
}

/* ---- the file system ---- */

static size_t op_statfs(struct rq *q)
{
    gd_vfs_session *s = q->s;
    struct statvfs sv = {.f_bsize = 4096, .f_frsize = 4096, .f_namemax = GD_FUSE_NAME_MAX};
    if (s->ops->statfs) {
        int e = s->ops->statfs(s->pv->p, "", &sv);
        if (e < 0)
            return rerr(q, perr(e));
    }
    struct fuse_kstatfs k = {
        .blocks = sv.f_blocks,
        .bfree = sv.f_bfree,
        .bavail = sv.f_bavail,
        .files = sv.f_files,
        .ffree = sv.f_ffree,
        .bsize = (uint32_t)sv.f_bsize,
        .namelen = (uint32_t)(sv.f_namemax ? sv.f_namemax : GD_FUSE_NAME_MAX),
        .frsize = (uint32_t)sv.f_frsize,
    };
    return gd_fuse_reply_statfs(q->out, q->cap, q->r->h.unique, &k);
}

/* ---- xattrs ---- */

static size_t op_xattr(struct rq *q)
{
    gd_vfs_session *s = q->s;
    const struct gd_fuse_req *r = q->r;
    uint32_t op = r->h.opcode;
    struct gd__vnode *n = node(s, r->h.nodeid);
    if (!n)
        return rerr(q, -ENOENT);
    int e = path_of(n, s->p1);
    if (e)
        return rerr(q, e);
    void *p = s->pv->p;
    if (op == FUSE_GETXATTR || op == FUSE_LISTXATTR) {
        if (op == FUSE_GETXATTR ? !s->ops->getxattr : !s->ops->listxattr)
            return rerr(q, -EOPNOTSUPP);
        uint32_t want = r->in.getxattr.size;
        size_t room = want < q->cap - OUTH ? want : q->cap - OUTH;
        char *buf = want ? (char *)q->out + OUTH : NULL;
        ssize_t k = op == FUSE_GETXATTR ? s->ops->getxattr(p, s->p1, r->name, buf, room)
                                        : s->ops->listxattr(p, s->p1, buf, room);
        if (k < 0)
            return rerr(q, perr(k));
        if (!want)
            return k > GD_FUSE_XATTR_SIZE_MAX
                       ? rerr(q, -E2BIG)
                       : gd_fuse_reply_xattr_size(q->out, q->cap, r->h.unique, (uint32_t)k);
        if ((size_t)k > room)
            return rerr(q, -ERANGE);
        return gd_fuse_reply_hdr(q->out, q->cap, r->h.unique, (size_t)k);
    }
    if (readonly(s))
        return rerr(q, -EROFS);
    struct gd_vfs_event ev;
    ev_init(s, &ev, op == FUSE_SETXATTR ? "setxattr" : "removexattr", s->p1, NULL);
    if (op == FUSE_SETXATTR)
        ev.flags = (int)r->in.setxattr.flags;
    if ((e = hook_before(s, &ev)))
        return rerr(q, e);
    if (op == FUSE_SETXATTR)
        e = s->ops->setxattr ? s->ops->setxattr(p, s->p1, r->name, r->data, r->datalen,
                                                (int)r->in.setxattr.flags)
                             : -EOPNOTSUPP;
    else
        e = s->ops->removexattr ? s->ops->removexattr(p, s->p1, r->name) : -EOPNOTSUPP;
    e = e < 0 ? perr(e) : 0;
    hook_after(s, &ev, e);
    return rerr(q, e);
}

/* ---- the request loop ---- */

/* The smallest reply buffer a request can be answered in (its fixed reply). */
static size_t min_reply(uint32_t op)
{
    switch (op) {
    case FUSE_LOOKUP:
    case FUSE_MKNOD:
    case FUSE_MKDIR:
    case FUSE_SYMLINK:
    case FUSE_LINK:
        return OUTH + sizeof(struct fuse_entry_out);
    case FUSE_CREATE:
        return OUTH + sizeof(struct fuse_entry_out) + sizeof(struct fuse_open_out);
    case FUSE_GETATTR:
    case FUSE_SETATTR:
        return OUTH + sizeof(struct fuse_attr_out);
    case FUSE_OPEN:
    case FUSE_OPENDIR:
        return OUTH + sizeof(struct fuse_open_out);
    case FUSE_STATFS:
        return OUTH + sizeof(struct fuse_statfs_out);
    case FUSE_WRITE:
        return OUTH + sizeof(struct fuse_write_out);
    case FUSE_GETXATTR:
    case FUSE_LISTXATTR:
        return OUTH + sizeof(struct fuse_getxattr_out);
    case FUSE_LSEEK:
        return OUTH + sizeof(struct fuse_lseek_out);
    case FUSE_INIT:
        return OUTH + sizeof(struct fuse_init_out);
    default:
        return OUTH;
    }
}

static size_t dispatch(struct rq *q)
{
    switch (q->r->h.opcode) {
    case FUSE_INIT:
        return op_init(q);
    case FUSE_DESTROY:
        return op_destroy(q);
    case FUSE_LOOKUP:
        return op_lookup(q);
    case FUSE_GETATTR:
        return op_getattr(q);
    case FUSE_SETATTR:
        return op_setattr(q);
    case FUSE_READLINK:
        return op_readlink(q);
    case FUSE_MKNOD:
    case FUSE_MKDIR:
    case FUSE_SYMLINK:
    case FUSE_LINK:
    case FUSE_CREATE:
        return op_new_entry(q);
    case FUSE_UNLINK:
    case FUSE_RMDIR:
        return op_remove(q);
    case FUSE_RENAME:
    case FUSE_RENAME2:
        return op_rename(q);
    case FUSE_OPEN:
    case FUSE_OPENDIR:
        return op_open(q);
    case FUSE_READ:
        return op_read(q);
    case FUSE_WRITE:
        return op_write(q);
    case FUSE_RELEASE:
    case FUSE_RELEASEDIR:
        return op_release(q);
    case FUSE_FLUSH:
    case FUSE_FSYNC:
    case FUSE_FSYNCDIR:
        return op_flush_fsync(q);
    case FUSE_READDIR:
    case FUSE_READDIRPLUS:
        return gd__vfs_readdir(q->s, q->r, q->out, q->cap);
    case FUSE_STATFS:
        return op_statfs(q);
    case FUSE_SETXATTR:
    case FUSE_GETXATTR:
    case FUSE_LISTXATTR:
    case FUSE_REMOVEXATTR:
        return op_xattr(q);
    case FUSE_FALLOCATE:
        return op_fallocate(q);
    case FUSE_LSEEK:
        return op_lseek(q);
    case FUSE_SYNCFS:
        return rerr(q, 0);
    default:
        /* ACCESS: the guest kernel checks permissions from the attributes itself;
         * GETLK/SETLK(W): it keeps the locks locally; COPY_FILE_RANGE: it copies */
        return rerr(q, -ENOSYS);
    }
}

long gd_vfs_session_handle(gd_vfs_session *s, const void *in, size_t n, void *out, size_t cap)
{
    struct gd_fuse_req r;
    int e = gd_fuse_decode(in, n, &r);
    if (!r.hdr_ok)
        return -EPROTO;
    if (!gd_fuse_op_has_reply(r.h.opcode)) {
        if (!e && s->inited)
            op_forget(s, &r);
        return 0;
    }
    if (r.h.opcode == FUSE_INTERRUPT && !e)
        return 0; /* requests are answered in order: nothing to interrupt */
    if (cap < OUTH)
        return -EPROTO; /* no room even for an error: the transport is broken */
    struct rq q = {.s = s, .r = &r, .out = out, .cap = cap};
    if (e)
        return (long)rerr(&q, e == -EPROTO ? -EIO : e);
    if (!s->inited && r.h.opcode != FUSE_INIT)
        return (long)rerr(&q, -EIO);
    if (cap < min_reply(r.h.opcode))
        return (long)rerr(&q, -EIO);
    return (long)dispatch(&q);
}

/* ---- life cycle ---- */

int gd_vfs_session_new(gd_vfs_provider *pv, const struct gd_vfs_session_opts *o,
                       gd_vfs_session **out, struct gd_err *err)
{
    struct gd_vfs_session_opts d = {0};
    if (!o)
        o = &d;
    if (!pv || !pv->ops) {
        gd_vfs_provider_free(pv);
        return gd_err_set(err, -EINVAL, "vfs session: no provider");
    }
    gd_vfs_session *s = calloc(1, sizeof(*s));
    if (!s)
        goto nomem;
    s->mount = strdup(o->mount ? o->mount : "/");
    if (!s->mount)
        goto nomem_s;
    if (strlen(s->mount) >= PATH_MAX) {
        free(s->mount);
        free(s);
        gd_vfs_provider_free(pv);
        return gd_err_set(err, -ENAMETOOLONG, "vfs session: mount path too long");
    }
    if (gd__vnodes_init(&s->nodes, o->max_nodes ? o->max_nodes : 1u << 20))
        goto nomem_m;
    if (gd__vhandles_init(&s->handles, o->max_handles ? o->max_handles : 65536))
        goto nomem_n;
    int excl = (pv->flags & GD_VFS_EXCLUSIVE) != 0;
    s->entry_ttl_ms = o->entry_ttl_ms ? o->entry_ttl_ms : excl ? 60000 : 1000;
    s->attr_ttl_ms = o->attr_ttl_ms ? o->attr_ttl_ms : excl ? 60000 : 1000;
    s->hooks = o->hooks;
    s->pv = pv;
    s->ops = pv->ops;
    *out = s;
    return 0;
nomem_n:
    gd__vnodes_fini(&s->nodes);
nomem_m:
    free(s->mount);
nomem_s:
    free(s);
nomem:
    gd_vfs_provider_free(pv);
    return gd_err_set(err, -ENOMEM, "vfs session: out of memory");
}

void gd_vfs_session_free(gd_vfs_session *s)
{
    if (!s)
        return;
    release_all(s);
    gd__vhandles_fini(&s->handles);
    gd__vnodes_fini(&s->nodes);
    gd_vfs_provider_free(s->pv);
    free(s->mount);
    free(s);
}
