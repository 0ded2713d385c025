/* fuse.c - the FUSE wire codec (see fuse.h). */
#include "vfs/fuse.h"

#include <errno.h>
#include <string.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>

/* What follows an opcode's fixed struct. */
enum tail {
    T_NONE,        /* nothing */
    T_NAME,        /* an entry name */
    T_TWO_NAMES,   /* RENAME: old and new entry names */
    T_SYMLINK,     /* an entry name, then the target */
    T_XNAME,       /* an xattr name */
    T_XNAME_VALUE, /* SETXATTR: an xattr name, then the value */
    T_WRITE,       /* WRITE's data */
    T_FORGETS,     /* BATCH_FORGET's entries */
};

struct shape {
    const char *name; /* NULL: not decoded (ENOSYS) */
    uint16_t fixed;   /* the body's fixed struct */
    uint8_t tail;
};

#define OP(op, size, t) [FUSE_##op] = {#op, size, t}
static const struct shape shapes[] = {
    OP(LOOKUP, 0, T_NAME),
    OP(FORGET, sizeof(struct fuse_forget_in), T_NONE),
    OP(GETATTR, sizeof(struct fuse_getattr_in), T_NONE),
    OP(SETATTR, sizeof(struct fuse_setattr_in), T_NONE),
    OP(READLINK, 0, T_NONE),
    OP(SYMLINK, 0, T_SYMLINK),
    OP(MKNOD, sizeof(struct fuse_mknod_in), T_NAME),
    OP(MKDIR, sizeof(struct fuse_mkdir_in), T_NAME),
    OP(UNLINK, 0, T_NAME),
    OP(RMDIR, 0, T_NAME),
    OP(RENAME, sizeof(struct fuse_rename_in), T_TWO_NAMES),
    OP(LINK, sizeof(struct fuse_link_in), T_NAME),
    OP(OPEN, sizeof(struct fuse_open_in), T_NONE),
    OP(READ, sizeof(struct fuse_read_in), T_NONE),
    OP(WRITE, sizeof(struct fuse_write_in), T_WRITE),
    OP(STATFS, 0, T_NONE),
    OP(RELEASE, sizeof(struct fuse_release_in), T_NONE),
    OP(FSYNC, sizeof(struct fuse_fsync_in), T_NONE),
    OP(SETXATTR, FUSE_COMPAT_SETXATTR_IN_SIZE, T_XNAME_VALUE),
    OP(GETXATTR, sizeof(struct fuse_getxattr_in), T_XNAME),
    OP(LISTXATTR, sizeof(struct fuse_getxattr_in), T_NONE),
    OP(REMOVEXATTR, 0, T_XNAME),
    OP(FLUSH, sizeof(struct fuse_flush_in), T_NONE),
    OP(INIT, sizeof(struct fuse_init_in), T_NONE),
    OP(OPENDIR, sizeof(struct fuse_open_in), T_NONE),
    OP(READDIR, sizeof(struct fuse_read_in), T_NONE),
    OP(RELEASEDIR, sizeof(struct fuse_release_in), T_NONE),
    OP(FSYNCDIR, sizeof(struct fuse_fsync_in), T_NONE),
    OP(GETLK, sizeof(struct fuse_lk_in), T_NONE),
    OP(SETLK, sizeof(struct fuse_lk_in), T_NONE),
    OP(SETLKW, sizeof(struct fuse_lk_in), T_NONE),
    OP(ACCESS, sizeof(struct fuse_access_in), T_NONE),
    OP(CREATE, sizeof(struct fuse_create_in), T_NAME),
    OP(INTERRUPT, sizeof(struct fuse_interrupt_in), T_NONE),
    OP(DESTROY, 0, T_NONE),
    OP(BATCH_FORGET, sizeof(struct fuse_batch_forget_in), T_FORGETS),
    OP(FALLOCATE, sizeof(struct fuse_fallocate_in), T_NONE),
    OP(READDIRPLUS, sizeof(struct fuse_read_in), T_NONE),
    OP(RENAME2, sizeof(struct fuse_rename2_in), T_TWO_NAMES),
    OP(LSEEK, sizeof(struct fuse_lseek_in), T_NONE),
    OP(COPY_FILE_RANGE, sizeof(struct fuse_copy_file_range_in), T_NONE),
    OP(SYNCFS, sizeof(struct fuse_syncfs_in), T_NONE),
    /* Not decoded: BMAP (block devices), IOCTL and POLL (variable, not needed),
     * NOTIFY_REPLY (we never send RETRIEVE), SETUPMAPPING/REMOVEMAPPING (DAX), TMPFILE
     * (its name is "/"; the kernel falls back to EOPNOTSUPP on ENOSYS). */
};
#undef OP

/* Before 7.36 the kernel's fuse_init_in was major, minor, max_readahead, flags. */
#define INIT_IN_SIZE_PRE_36 16

static const struct shape *shape_of(uint32_t op)
{
    if (op >= sizeof(shapes) / sizeof(shapes[0]) || !shapes[op].name)
        return NULL;
    return &shapes[op];
}

const char *gd_fuse_opname(uint32_t opcode)
{
    const struct shape *s = shape_of(opcode);
    return s ? s->name : "?";
}

int gd_fuse_op_has_reply(uint32_t opcode)
{
    return opcode != FUSE_FORGET && opcode != FUSE_BATCH_FORGET;
}

/* The NUL-terminated string at the start of (*b, *n), consumed with its NUL. */
static int take_str(const uint8_t **b, size_t *n, const char **s, size_t *len)
{
    const uint8_t *z = memchr(*b, 0, *n);
    if (!z)
        return -EPROTO;
    *s = (const char *)*b;
    *len = (size_t)(z - *b);
    *n -= *len + 1;
    *b = z + 1;
    return 0;
}

/* A directory entry's name, as the VFS hands it to the filesystem. */
static int take_entry_name(const uint8_t **b, size_t *n, const char **s, size_t *len)
{
    int e = take_str(b, n, s, len);
    if (e)
        return e;
    const char *p = *s;
    if (*len == 0 || memchr(p, '/', *len) ||
        (p[0] == '.' && (*len == 1 || (*len == 2 && p[1] == '.'))))
        return -EPROTO;
    return *len > GD_FUSE_NAME_MAX ? -ENAMETOOLONG : 0;
}

/* A string of 1..max bytes the VFS has already bounded (symlink target, xattr name). */
static int take_bounded(const uint8_t **b, size_t *n, const char **s, size_t *len, size_t max)
{
    int e = take_str(b, n, s, len);
    return e ? e : (*len == 0 || *len > max) ? -EPROTO : 0;
}

static int decode_tail(struct gd_fuse_req *r, int tail, const uint8_t *b, size_t n)
{
    int e = 0;
    switch (tail) {
    case T_NONE:
        break;
    case T_NAME:
        e = take_entry_name(&b, &n, &r->name, &r->namelen);
        break;
    case T_TWO_NAMES:
        e = take_entry_name(&b, &n, &r->name, &r->namelen);
        if (!e)
            e = take_entry_name(&b, &n, &r->name2, &r->name2len);
        break;
    case T_SYMLINK:
        e = take_entry_name(&b, &n, &r->name, &r->namelen);
        if (!e)
            e = take_bounded(&b, &n, &r->name2, &r->name2len, GD_FUSE_LINK_MAX);
        break;
    case T_XNAME:
        e = take_bounded(&b, &n, &r->name, &r->namelen, GD_FUSE_XATTR_NAME_MAX);
        break;
    case T_XNAME_VALUE:
        e = take_bounded(&b, &n, &r->name, &r->namelen, GD_FUSE_XATTR_NAME_MAX);
        if (e)
            return e;
        if (n != r->in.setxattr.size)
            return -EPROTO;
        if (n > GD_FUSE_XATTR_SIZE_MAX)
            return -EINVAL;
        r->data = b, r->datalen = n, n = 0;
        break;
    case T_WRITE:
        if (n != r->in.write.size)
            return -EPROTO;
        if (n > GD_FUSE_MAX_IO)
            return -EINVAL;
        r->data = b, r->datalen = n, n = 0;
        break;
    case T_FORGETS:
        if ((uint64_t)r->in.batch_forget.count * sizeof(struct fuse_forget_one) != n)
            return -EPROTO;
        r->data = b, r->datalen = n, n = 0;
        break;
    }
    if (e)
        return e;
    return n ? -EPROTO : 0; /* nothing after the last part */
}

/* Values the layout allows but we refuse. */
static int check_values(const struct gd_fuse_req *r)
{
    switch (r->h.opcode) {
    case FUSE_READ:
    case FUSE_READDIR:
    case FUSE_READDIRPLUS:
        return r->in.read.size > GD_FUSE_MAX_IO ? -EINVAL : 0;
    case FUSE_GETXATTR:
    case FUSE_LISTXATTR:
        return r->in.getxattr.size > GD_FUSE_XATTR_SIZE_MAX ? -EINVAL : 0;
    case FUSE_SETXATTR:
        return r->in.setxattr.flags & ~(uint32_t)(XATTR_CREATE | XATTR_REPLACE) ? -EINVAL : 0;
    case FUSE_RENAME2: /* RENAME_NOREPLACE | RENAME_EXCHANGE | RENAME_WHITEOUT */
        return r->in.rename.flags & ~7u ? -EINVAL : 0;
    default:
        return 0;
    }
}

int gd_fuse_decode(const void *buf, size_t n, struct gd_fuse_req *out)
{
    memset(out, 0, sizeof(*out));
    if (n < sizeof(out->h))
        return -EPROTO;
    memcpy(&out->h, buf, sizeof(out->h));
    if (out->h.len != n || out->h.unique == 0)
        return -EPROTO;
    out->hdr_ok = 1;
    if (out->h.total_extlen)
        return -EPROTO;
    const struct shape *s = shape_of(out->h.opcode);
    if (!s)
        return -ENOSYS;
    const uint8_t *b = (const uint8_t *)buf + sizeof(out->h);
    size_t blen = n - sizeof(out->h), fixed = s->fixed;
    if (out->h.opcode == FUSE_INIT && blen == INIT_IN_SIZE_PRE_36)
        fixed = INIT_IN_SIZE_PRE_36;
    if (blen < fixed)
        return -EPROTO;
    memcpy(&out->in, b, fixed); /* every member of the union starts at 0 */
    int e = decode_tail(out, s->tail, b + fixed, blen - fixed);
    return e ? e : check_values(out);
}

void gd_fuse_forget_at(const struct gd_fuse_req *r, uint32_t i, struct fuse_forget_one *out)
{
    memcpy(out, (const uint8_t *)r->data + (size_t)i * sizeof(*out), sizeof(*out));
}

/* ---- replies ---- */

static size_t put_reply(void *buf, size_t cap, uint64_t unique, int32_t err, const void *a,
                        size_t an, const void *b, size_t bn)
{
    struct fuse_out_header oh = {.error = err, .unique = unique};
    size_t len = sizeof(oh) + an + bn;
    if (len > cap || len > UINT32_MAX)
        return 0;
    oh.len = (uint32_t)len;
    uint8_t *p = buf;
    if (an)
        memmove(p + sizeof(oh), a, an);
    if (bn)
        memmove(p + sizeof(oh) + an, b, bn);
    memcpy(p, &oh, sizeof(oh));
    return len;
}

size_t gd_fuse_reply_err(void *buf, size_t cap, uint64_t unique, int err)
{
    if (err > 0)
        err = -err;
    if (err <= -512) /* the kernel refuses anything from -ERESTARTSYS on */
        err = -EIO;
    return put_reply(buf, cap, unique, err, NULL, 0, NULL, 0);
}

size_t gd_fuse_reply_data(void *buf, size_t cap, uint64_t unique, const void *p, size_t n)
{
    return put_reply(buf, cap, unique, 0, p, n, NULL, 0);
}

size_t gd_fuse_reply_hdr(void *buf, size_t cap, uint64_t unique, size_t payload)
{
    struct fuse_out_header oh = {.error = 0, .unique = unique};
    if (cap < sizeof(oh) || payload > cap - sizeof(oh) || payload > UINT32_MAX - sizeof(oh))
        return 0;
    oh.len = (uint32_t)(sizeof(oh) + payload);
    memcpy(buf, &oh, sizeof(oh));
    return oh.len;
}

size_t gd_fuse_reply_entry(void *buf, size_t cap, uint64_t unique, const struct fuse_entry_out *e)
{
    return put_reply(buf, cap, unique, 0, e, sizeof(*e), NULL, 0);
}

size_t gd_fuse_reply_attr(void *buf, size_t cap, uint64_t unique, const struct fuse_attr_out *a)
{
    return put_reply(buf, cap, unique, 0, a, sizeof(*a), NULL, 0);
}

size_t gd_fuse_reply_open(void *buf, size_t cap, uint64_t unique, const struct fuse_open_out *o)
{
    return put_reply(buf, cap, unique, 0, o, sizeof(*o), NULL, 0);
}

size_t gd_fuse_reply_create(void *buf, size_t cap, uint64_t unique, const struct fuse_entry_out *e,
                            const struct fuse_open_out *o)
{
    return put_reply(buf, cap, unique, 0, e, sizeof(*e), o, sizeof(*o));
}

size_t gd_fuse_reply_write(void *buf, size_t cap, uint64_t unique, uint32_t written)
{
    struct fuse_write_out w = {.size = written};
    return put_reply(buf, cap, unique, 0, &w, sizeof(w), NULL, 0);
}

size_t gd_fuse_reply_statfs(void *buf, size_t cap, uint64_t unique, const struct fuse_kstatfs *st)
{
    struct fuse_statfs_out o = {.st = *st};
    return put_reply(buf, cap, unique, 0, &o, sizeof(o), NULL, 0);
}

size_t gd_fuse_reply_xattr_size(void *buf, size_t cap, uint64_t unique, uint32_t size)
{
    struct fuse_getxattr_out o = {.size = size};
    return put_reply(buf, cap, unique, 0, &o, sizeof(o), NULL, 0);
}

size_t gd_fuse_reply_lseek(void *buf, size_t cap, uint64_t unique, uint64_t offset)
{
    struct fuse_lseek_out o = {.offset = offset};
    return put_reply(buf, cap, unique, 0, &o, sizeof(o), NULL, 0);
}

void gd_fuse_attr_from_stat(struct fuse_attr *a, const struct stat *st)
{
    unsigned maj = major(st->st_rdev), min = minor(st->st_rdev);
    *a = (struct fuse_attr){
        .ino = st->st_ino,
        .size = (uint64_t)st->st_size,
        .blocks = (uint64_t)st->st_blocks,
        /* the kernel reads the seconds back as signed: times before 1970 survive */
        .atime = (uint64_t)st->st_atim.tv_sec,
        .mtime = (uint64_t)st->st_mtim.tv_sec,
        .ctime = (uint64_t)st->st_ctim.tv_sec,
        .atimensec = (uint32_t)st->st_atim.tv_nsec,
        .mtimensec = (uint32_t)st->st_mtim.tv_nsec,
        .ctimensec = (uint32_t)st->st_ctim.tv_nsec,
        .mode = st->st_mode,
        .nlink = (uint32_t)st->st_nlink,
        .uid = st->st_uid,
        .gid = st->st_gid,
        /* the kernel's new_decode_dev() layout */
        .rdev = (min & 0xff) | (maj << 8) | ((min & ~0xffu) << 12),
        .blksize = (uint32_t)st->st_blksize,
    };
}

/* ---- INIT ---- */

#define GD_FUSE_PAGE 4096u
#define GD_FUSE_DEFAULT_MAX_PAGES 32u /* the kernel's without FUSE_MAX_PAGES */

size_t gd_fuse_reply_init(void *buf, size_t cap, const struct gd_fuse_req *r,
                          const struct gd_fuse_init_opts *opts, struct gd_fuse_init_result *res)
{
    struct gd_fuse_init_opts o = opts ? *opts : (struct gd_fuse_init_opts){0};
    struct gd_fuse_init_result rr = {0};
    const struct fuse_init_in *in = &r->in.init;
    if (r->h.opcode != FUSE_INIT || in->major != FUSE_KERNEL_VERSION ||
        in->minor < GD_FUSE_MIN_MINOR) {
        rr.error = -EPROTO;
        if (res)
            *res = rr;
        return gd_fuse_reply_err(buf, cap, r->h.unique, -EPROTO);
    }
    uint32_t want = (o.want ? o.want : GD_FUSE_INIT_DEFAULT) | FUSE_MAX_PAGES;
    if (o.writeback_cache)
        want |= FUSE_WRITEBACK_CACHE;
    uint32_t mw = o.max_write ? o.max_write : GD_FUSE_MAX_IO;
    mw = mw < GD_FUSE_MIN_MAX_WRITE ? GD_FUSE_MIN_MAX_WRITE
         : mw > GD_FUSE_MAX_IO      ? GD_FUSE_MAX_IO
                                    : mw;
    mw &= ~(GD_FUSE_PAGE - 1);
    uint32_t ra = o.max_readahead ? o.max_readahead : GD_FUSE_MAX_IO;
    uint16_t bg = o.max_background ? o.max_background : 64;
    struct fuse_init_out out = {
        .major = FUSE_KERNEL_VERSION,
        .minor = FUSE_KERNEL_MINOR_VERSION,
        .max_readahead = in->max_readahead < ra ? in->max_readahead : ra,
        .flags = want & (uint32_t)GD_FUSE_INIT_SUPPORTED & in->flags,
        .max_background = bg,
        .congestion_threshold =
            o.congestion_threshold ? o.congestion_threshold : (uint16_t)(bg * 3 / 4),
        .max_write = mw,
        .time_gran = o.time_gran ? o.time_gran : 1,
        .max_pages = (uint16_t)(mw / GD_FUSE_PAGE),
    };
    rr.major = FUSE_KERNEL_VERSION;
    rr.minor = in->minor < FUSE_KERNEL_MINOR_VERSION ? in->minor : FUSE_KERNEL_MINOR_VERSION;
    rr.flags = out.flags;
    rr.max_readahead = out.max_readahead;
    rr.max_pages = (out.flags & FUSE_MAX_PAGES) ? out.max_pages : GD_FUSE_DEFAULT_MAX_PAGES;
    rr.max_write = mw < rr.max_pages * GD_FUSE_PAGE ? mw : rr.max_pages * GD_FUSE_PAGE;
    size_t len = put_reply(buf, cap, r->h.unique, 0, &out, sizeof(out), NULL, 0);
    if (res)
        *res = rr;
    return len;
}

/* ---- READDIR / READDIRPLUS ---- */

#define GD_FUSE_KERNEL_NAME_MAX 1024 /* fs/fuse: FUSE_NAME_MAX */

static long put_dirent(void *buf, size_t cap, const struct fuse_entry_out *e, const char *name,
                       size_t namelen, uint64_t ino, uint64_t off, uint32_t type)
{
    if (!namelen || namelen > GD_FUSE_NAME_MAX || memchr(name, '/', namelen) ||
        memchr(name, 0, namelen))
        return -EINVAL;
    size_t pre = e ? sizeof(*e) : 0, used = pre + FUSE_NAME_OFFSET + namelen;
    size_t rec = FUSE_DIRENT_ALIGN(used);
    if (rec > cap)
        return 0;
    struct fuse_dirent d = {.ino = ino, .off = off, .namelen = (uint32_t)namelen, .type = type};
    uint8_t *p = buf;
    if (e)
        memcpy(p, e, pre);
    memcpy(p + pre, &d, FUSE_NAME_OFFSET);
    memcpy(p + pre + FUSE_NAME_OFFSET, name, namelen);
    memset(p + used, 0, rec - used);
    return (long)rec;
}

long gd_fuse_add_dirent(void *buf, size_t cap, const char *name, size_t namelen, uint64_t ino,
                        uint64_t off, uint32_t type)
{
    return put_dirent(buf, cap, NULL, name, namelen, ino, off, type);
}

long gd_fuse_add_direntplus(void *buf, size_t cap, const char *name, size_t namelen,
                            const struct fuse_entry_out *e, uint64_t off)
{
    return put_dirent(buf, cap, e, name, namelen, e->attr.ino, off, (e->attr.mode & S_IFMT) >> 12);
}

int gd_fuse_dirent_next(const void *buf, size_t n, size_t *pos, int plus,
                        struct gd_fuse_dirent_view *v)
{
    size_t pre = plus ? sizeof(struct fuse_entry_out) : 0, hdr = pre + FUSE_NAME_OFFSET;
    memset(v, 0, sizeof(*v));
    if (*pos > n || n - *pos < hdr)
        return 0;
    const uint8_t *p = (const uint8_t *)buf + *pos;
    struct fuse_dirent d;
    memcpy(&d, p + pre, FUSE_NAME_OFFSET);
    if (!d.namelen || d.namelen > GD_FUSE_KERNEL_NAME_MAX)
        return -EPROTO;
    size_t rec = FUSE_DIRENT_ALIGN(hdr + d.namelen);
    if (rec > n - *pos || memchr(p + hdr, '/', d.namelen))
        return -EPROTO;
    if (plus)
        memcpy(&v->entry, p, pre);
    v->ino = d.ino, v->off = d.off, v->type = d.type;
    v->name = (const char *)p + hdr, v->namelen = d.namelen;
    *pos += rec;
    return 1;
}
