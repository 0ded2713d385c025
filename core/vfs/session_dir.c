/* session_dir.c - READDIR and READDIRPLUS: the provider's entries packed for the kernel.
 *
 * READDIRPLUS looks every entry up as LOOKUP does (a node made or found, its lookup
 * counted once the entry is in the reply), except "." and "..", which go out with nodeid
 * 0: the kernel lists them and counts nothing. A provider without GD_VFS_DOTS gets "."
 * and ".." made up here: guest cookie 1 is after ".", 2 after "..", and the provider's
 * cookie c is guest cookie c + 2. */
#include "vfs/vfs_int.h"

#include <dirent.h>
#include <errno.h>
#include <string.h>

#define OUTH sizeof(struct fuse_out_header)

struct rd {
    gd_vfs_session *s;
    struct gd__vnode *dir;
    int plus;
    uint64_t shift; /* 2 when the session makes up the dots, else 0 */
    uint8_t *buf;   /* the payload */
    size_t cap, used;
    size_t dirlen; /* the directory's path is in s->p1 */
};

static int is_dot(const char *name, size_t len)
{
    return name[0] == '.' && (len == 1 || (len == 2 && name[1] == '.'));
}

/* a stable nonzero d_ino for an entry the provider gave no attributes for */
static uint64_t name_ino(const char *name, size_t len)
{
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < len; i++)
        h = (h ^ (unsigned char)name[i]) * 1099511628211ULL;
    return h | 1;
}

/* One entry, plain; 1: the buffer is full. */
static int add_plain(struct rd *c, const char *name, size_t len, uint64_t off, unsigned type,
                     const struct stat *st)
{
    uint64_t ino = st ? st->st_ino : name_ino(name, len);
    if (st)
        type = (st->st_mode & S_IFMT) >> 12;
    long k = gd_fuse_add_dirent(c->buf + c->used, c->cap - c->used, name, len, ino, off, type);
    if (k == 0)
        return 1;
    if (k > 0)
        c->used += (size_t)k;
    return 0;
}

/* The attributes of dir/name into st (the provider's, else asked for). */
static int entry_attr(struct rd *c, const char *name, size_t len, const struct stat *given,
                      struct stat *st)
{
    gd_vfs_session *s = c->s;
    if (given) {
        *st = *given;
        return 0;
    }
    if (!s->ops->getattr)
        return -ENOSYS;
    size_t at = c->dirlen + (c->dirlen ? 1 : 0);
    if (at + len >= PATH_MAX)
        return -ENAMETOOLONG;
    memcpy(s->p2, s->p1, c->dirlen);
    if (c->dirlen)
        s->p2[c->dirlen] = '/';
    memcpy(s->p2 + at, name, len);
    s->p2[at + len] = 0;
    return s->ops->getattr(s->pv->p, s->p2, st);
}

/* One entry with its lookup; 1: the buffer is full. */
static int add_plus(struct rd *c, const char *name, size_t len, uint64_t off, unsigned type,
                    const struct stat *given)
{
    gd_vfs_session *s = c->s;
    struct fuse_entry_out e;
    struct stat st;
    struct gd__vnode *n = NULL;
    if (is_dot(name, len)) {
        gd__vfs_fill_entry(s, &e, 0, given);
        if (!given) {
            e.attr.ino = name_ino(name, len);
            e.attr.mode = S_IFDIR;
        }
    } else if (entry_attr(c, name, len, given, &st) < 0) {
        /* gone since the provider listed it, or no attributes: list the name only */
        gd__vfs_fill_entry(s, &e, 0, NULL);
        e.attr.ino = name_ino(name, len);
        e.attr.mode = (uint32_t)type << 12;
    } else {
        if (gd__vfs_make_node(s, c->dir, name, len, &st, &n))
            n = NULL; /* past the node cap: the name alone, the kernel looks it up later */
        gd__vfs_fill_entry(s, &e, n ? n->by_id.key : 0, &st);
    }
    long k = gd_fuse_add_direntplus(c->buf + c->used, c->cap - c->used, name, len, &e, off);
    if (k <= 0) {
        if (n)
            gd__vnodes_release(&s->nodes, n);
        return k == 0;
    }
    c->used += (size_t)k;
    if (n) {
        n->nlookup++;
        n->type = st.st_mode & S_IFMT;
    }
    return 0;
}

static int add(struct rd *c, const char *name, size_t len, uint64_t off, unsigned type,
               const struct stat *st)
{
    return c->plus ? add_plus(c, name, len, off, type, st) : add_plain(c, name, len, off, type, st);
}

static int fill(void *ctx, const char *name, uint64_t off, unsigned type, const struct stat *st)
{
    struct rd *c = ctx;
    if (!name)
        return 0;
    size_t len = strnlen(name, GD_FUSE_NAME_MAX + 1);
    if (len == 0 || len > GD_FUSE_NAME_MAX || memchr(name, '/', len))
        return 0; /* a name the kernel would refuse: skipped */
    if (c->shift && is_dot(name, len))
        return 0; /* made up here already */
    if (off > (uint64_t)INT64_MAX - c->shift)
        return -EOVERFLOW;
    return add(c, name, len, off + c->shift, type, st);
}

size_t gd__vfs_readdir(gd_vfs_session *s, const struct gd_fuse_req *r, uint8_t *out, size_t cap)
{
    const struct fuse_read_in *in = &r->in.read;
    struct gd__vhandle *h = gd__vhandles_get(&s->handles, in->fh);
    if (!h || !h->dir)
        return gd_fuse_reply_err(out, cap, r->h.unique, -EBADF);
    struct gd__vnode *dir = gd__vnodes_get(&s->nodes, h->nodeid);
    if (!dir)
        return gd_fuse_reply_err(out, cap, r->h.unique, -ESTALE);
    long plen = gd__vnodes_path(dir, s->p1, PATH_MAX);
    if (plen < 0)
        return gd_fuse_reply_err(out, cap, r->h.unique, (int)plen);
    if (!s->ops->readdir)
        return gd_fuse_reply_err(out, cap, r->h.unique, -ENOSYS);
    struct rd c = {
        .s = s,
        .dir = dir,
        .plus = r->h.opcode == FUSE_READDIRPLUS,
        .shift = (s->pv->flags & GD_VFS_DOTS) ? 0 : 2,
        .buf = out + OUTH,
        .cap = in->size < cap - OUTH ? in->size : cap - OUTH,
        .dirlen = (size_t)plen,
    };
    uint64_t off = in->offset;
    int e = 0;
    if (c.shift && off < 2) {
        struct stat st, *stp = NULL;
        if (c.plus && s->ops->getattr && s->ops->getattr(s->pv->p, s->p1, &st) == 0)
            stp = &st;
        if (off == 0)
            e = add(&c, ".", 1, 1, DT_DIR, stp);
        if (!e)
            e = add(&c, "..", 2, 2, DT_DIR, NULL);
        if (e) /* full */
            return gd_fuse_reply_hdr(out, cap, r->h.unique, c.used);
        off = 2;
    }
    e = s->ops->readdir(s->pv->p, s->p1, h->pfh, off - c.shift, fill, &c);
    if (e < 0 && c.used == 0)
        return gd_fuse_reply_err(out, cap, r->h.unique, gd__vfs_perr(e));
    return gd_fuse_reply_hdr(out, cap, r->h.unique, c.used);
}
