/* vfs_client.c - see vfs_client.h. */
#include "vfs_client.h"

#include "base/err.h"
#include "test.h"

#include <errno.h>

#define OUTCAP (GD_FUSE_MAX_IO + 4096)

static long last;

void vc_open(struct vc *c, gd_vfs_provider *pv, const struct gd_vfs_session_opts *o)
{
    memset(c, 0, sizeof(*c));
    struct gd_err err = {{0}};
    c->out = malloc(OUTCAP);
    CHECK(c->out);
    if (gd_vfs_session_new(pv, o, &c->s, &err))
        FAIL_AT("session: %s", err.msg);
    CHECK_EQ(vc_init(c), 0);
}

void vc_close(struct vc *c)
{
    gd_vfs_session_free(c->s);
    free(c->out);
    c->s = NULL;
}

long vc_last(const struct vc *c)
{
    (void)c;
    return last;
}

int vc_req(struct vc *c, uint32_t op, uint64_t nodeid, const void *body, size_t blen,
           const char *s1, const char *s2, const void *data, size_t dlen)
{
    size_t l1 = s1 ? strlen(s1) + 1 : 0, l2 = s2 ? strlen(s2) + 1 : 0;
    size_t n = sizeof(struct fuse_in_header) + blen + l1 + l2 + dlen;
    uint8_t *m = malloc(n);
    CHECK(m);
    struct fuse_in_header h = {
        .len = (uint32_t)n, .opcode = op, .unique = ++c->unique, .nodeid = nodeid};
    size_t at = 0;
    memcpy(m, &h, sizeof(h));
    at += sizeof(h);
    if (blen)
        memcpy(m + at, body, blen);
    at += blen;
    if (l1)
        memcpy(m + at, s1, l1);
    at += l1;
    if (l2)
        memcpy(m + at, s2, l2);
    at += l2;
    if (dlen)
        memcpy(m + at, data, dlen);
    last = gd_vfs_session_handle(c->s, m, n, c->out, OUTCAP);
    free(m);
    c->payload = NULL, c->paylen = 0;
    if (last == 0)
        return 0;
    if (last < (long)sizeof(struct fuse_out_header))
        FAIL_AT("%s: reply length %ld", gd_fuse_opname(op), last);
    struct fuse_out_header oh;
    memcpy(&oh, c->out, sizeof(oh));
    if (oh.len != (uint32_t)last || oh.unique != c->unique)
        FAIL_AT("%s: reply header len %u (returned %ld), unique %llu (sent %llu)",
                gd_fuse_opname(op), oh.len, last, (unsigned long long)oh.unique,
                (unsigned long long)c->unique);
    if (oh.error && oh.len != sizeof(oh))
        FAIL_AT("%s: an error reply with a body", gd_fuse_opname(op));
    c->payload = c->out + sizeof(oh);
    c->paylen = (size_t)last - sizeof(oh);
    return oh.error;
}

int vc_init(struct vc *c)
{
    struct fuse_init_in in = {
        .major = 7, .minor = 38, .max_readahead = 1 << 20, .flags = GD_FUSE_INIT_SUPPORTED};
    int e = vc_req(c, FUSE_INIT, 0, &in, sizeof(in), NULL, NULL, NULL, 0);
    if (!e) {
        struct fuse_init_out o;
        CHECK_EQ(c->paylen, sizeof(o));
        memcpy(&o, c->payload, sizeof(o));
        c->init_flags = o.flags;
    }
    return e;
}

static int entry(struct vc *c, int e, struct fuse_entry_out *out)
{
    if (!e && out) {
        CHECK(c->paylen >= sizeof(*out));
        memcpy(out, c->payload, sizeof(*out));
    }
    return e;
}

int vc_lookup(struct vc *c, uint64_t dir, const char *name, struct fuse_entry_out *e)
{
    int r = entry(c, vc_req(c, FUSE_LOOKUP, dir, NULL, 0, name, NULL, NULL, 0), e);
    if (!r && e && e->nodeid == 0)
        return -ENOENT; /* a cached absence */
    return r;
}

int vc_getattr(struct vc *c, uint64_t node, struct fuse_attr *a)
{
    struct fuse_getattr_in in = {0};
    int e = vc_req(c, FUSE_GETATTR, node, &in, sizeof(in), NULL, NULL, NULL, 0);
    if (!e && a) {
        struct fuse_attr_out o;
        CHECK_EQ(c->paylen, sizeof(o));
        memcpy(&o, c->payload, sizeof(o));
        *a = o.attr;
    }
    return e;
}

int vc_create(struct vc *c, uint64_t dir, const char *name, int flags, uint32_t mode,
              struct fuse_entry_out *e, uint64_t *fh)
{
    struct fuse_create_in in = {.flags = (uint32_t)flags, .mode = S_IFREG | mode};
    int r = entry(c, vc_req(c, FUSE_CREATE, dir, &in, sizeof(in), name, NULL, NULL, 0), e);
    if (!r) {
        struct fuse_open_out o;
        CHECK_EQ(c->paylen, sizeof(struct fuse_entry_out) + sizeof(o));
        memcpy(&o, c->payload + sizeof(struct fuse_entry_out), sizeof(o));
        if (fh)
            *fh = o.fh;
    }
    return r;
}

int vc_mkdir(struct vc *c, uint64_t dir, const char *name, uint32_t mode, struct fuse_entry_out *e)
{
    struct fuse_mkdir_in in = {.mode = mode};
    return entry(c, vc_req(c, FUSE_MKDIR, dir, &in, sizeof(in), name, NULL, NULL, 0), e);
}

int vc_mknod(struct vc *c, uint64_t dir, const char *name, uint32_t mode, uint32_t rdev,
             struct fuse_entry_out *e)
{
    struct fuse_mknod_in in = {.mode = mode, .rdev = rdev};
    return entry(c, vc_req(c, FUSE_MKNOD, dir, &in, sizeof(in), name, NULL, NULL, 0), e);
}

int vc_symlink(struct vc *c, uint64_t dir, const char *name, const char *target,
               struct fuse_entry_out *e)
{
    return entry(c, vc_req(c, FUSE_SYMLINK, dir, NULL, 0, name, target, NULL, 0), e);
}

int vc_link(struct vc *c, uint64_t old, uint64_t dir, const char *name, struct fuse_entry_out *e)
{
    struct fuse_link_in in = {.oldnodeid = old};
    return entry(c, vc_req(c, FUSE_LINK, dir, &in, sizeof(in), name, NULL, NULL, 0), e);
}

int vc_unlink(struct vc *c, uint64_t dir, const char *name)
{
    return vc_req(c, FUSE_UNLINK, dir, NULL, 0, name, NULL, NULL, 0);
}

int vc_rmdir(struct vc *c, uint64_t dir, const char *name)
{
    return vc_req(c, FUSE_RMDIR, dir, NULL, 0, name, NULL, NULL, 0);
}

int vc_rename(struct vc *c, uint64_t dir, const char *name, uint64_t newdir, const char *newname,
              unsigned flags)
{
    struct fuse_rename2_in in = {.newdir = newdir, .flags = flags};
    return vc_req(c, FUSE_RENAME2, dir, &in, sizeof(in), name, newname, NULL, 0);
}

static int open_common(struct vc *c, uint32_t op, uint64_t node, int flags, uint64_t *fh)
{
    struct fuse_open_in in = {.flags = (uint32_t)flags};
    int e = vc_req(c, op, node, &in, sizeof(in), NULL, NULL, NULL, 0);
    if (!e) {
        struct fuse_open_out o;
        CHECK_EQ(c->paylen, sizeof(o));
        memcpy(&o, c->payload, sizeof(o));
        *fh = o.fh;
    }
    return e;
}

int vc_open_file(struct vc *c, uint64_t node, int flags, uint64_t *fh)
{
    return open_common(c, FUSE_OPEN, node, flags, fh);
}

int vc_opendir(struct vc *c, uint64_t node, uint64_t *fh)
{
    return open_common(c, FUSE_OPENDIR, node, 0, fh);
}

int vc_release(struct vc *c, uint64_t node, uint64_t fh)
{
    struct fuse_release_in in = {.fh = fh};
    return vc_req(c, FUSE_RELEASE, node, &in, sizeof(in), NULL, NULL, NULL, 0);
}

int vc_releasedir(struct vc *c, uint64_t node, uint64_t fh)
{
    struct fuse_release_in in = {.fh = fh};
    return vc_req(c, FUSE_RELEASEDIR, node, &in, sizeof(in), NULL, NULL, NULL, 0);
}

long vc_write(struct vc *c, uint64_t node, uint64_t fh, uint64_t off, const void *p, size_t n)
{
    struct fuse_write_in in = {.fh = fh, .offset = off, .size = (uint32_t)n};
    int e = vc_req(c, FUSE_WRITE, node, &in, sizeof(in), NULL, NULL, p, n);
    if (e)
        return e;
    struct fuse_write_out o;
    CHECK_EQ(c->paylen, sizeof(o));
    memcpy(&o, c->payload, sizeof(o));
    return o.size;
}

long vc_read(struct vc *c, uint64_t node, uint64_t fh, uint64_t off, void *p, size_t n)
{
    struct fuse_read_in in = {.fh = fh, .offset = off, .size = (uint32_t)n};
    int e = vc_req(c, FUSE_READ, node, &in, sizeof(in), NULL, NULL, NULL, 0);
    if (e)
        return e;
    CHECK(c->paylen <= n);
    memcpy(p, c->payload, c->paylen);
    return (long)c->paylen;
}

int vc_setattr(struct vc *c, uint64_t node, const struct fuse_setattr_in *in, struct fuse_attr *a)
{
    int e = vc_req(c, FUSE_SETATTR, node, in, sizeof(*in), NULL, NULL, NULL, 0);
    if (!e && a) {
        struct fuse_attr_out o;
        CHECK_EQ(c->paylen, sizeof(o));
        memcpy(&o, c->payload, sizeof(o));
        *a = o.attr;
    }
    return e;
}

int vc_readlink(struct vc *c, uint64_t node, char *buf, size_t cap)
{
    int e = vc_req(c, FUSE_READLINK, node, NULL, 0, NULL, NULL, NULL, 0);
    if (!e) {
        CHECK(c->paylen < cap);
        memcpy(buf, c->payload, c->paylen);
        buf[c->paylen] = 0;
    }
    return e;
}

int vc_readdir(struct vc *c, uint64_t node, uint64_t fh, uint64_t off, uint32_t size, int plus)
{
    struct fuse_read_in in = {.fh = fh, .offset = off, .size = size};
    int e = vc_req(c, plus ? FUSE_READDIRPLUS : FUSE_READDIR, node, &in, sizeof(in), NULL, NULL,
                   NULL, 0);
    if (!e)
        CHECK(c->paylen <= size);
    return e;
}

void vc_forget(struct vc *c, uint64_t node, uint64_t n)
{
    struct fuse_forget_in in = {.nlookup = n};
    CHECK_EQ(vc_req(c, FUSE_FORGET, node, &in, sizeof(in), NULL, NULL, NULL, 0), 0);
    CHECK_EQ(last, 0);
}

int vc_setxattr(struct vc *c, uint64_t node, const char *name, const void *v, size_t n, int flags)
{
    struct fuse_setxattr_in in = {.size = (uint32_t)n, .flags = (uint32_t)flags};
    return vc_req(c, FUSE_SETXATTR, node, &in, FUSE_COMPAT_SETXATTR_IN_SIZE, name, NULL, v, n);
}

static long xattr_reply(struct vc *c, int e, uint32_t cap, void *buf)
{
    if (e)
        return e;
    if (cap == 0) {
        struct fuse_getxattr_out o;
        CHECK_EQ(c->paylen, sizeof(o));
        memcpy(&o, c->payload, sizeof(o));
        return o.size;
    }
    memcpy(buf, c->payload, c->paylen);
    return (long)c->paylen;
}

long vc_getxattr(struct vc *c, uint64_t node, const char *name, void *buf, uint32_t cap)
{
    struct fuse_getxattr_in in = {.size = cap};
    return xattr_reply(c, vc_req(c, FUSE_GETXATTR, node, &in, sizeof(in), name, NULL, NULL, 0), cap,
                       buf);
}

long vc_listxattr(struct vc *c, uint64_t node, void *buf, uint32_t cap)
{
    struct fuse_getxattr_in in = {.size = cap};
    return xattr_reply(c, vc_req(c, FUSE_LISTXATTR, node, &in, sizeof(in), NULL, NULL, NULL, 0),
                       cap, buf);
}

int vc_removexattr(struct vc *c, uint64_t node, const char *name)
{
    return vc_req(c, FUSE_REMOVEXATTR, node, NULL, 0, name, NULL, NULL, 0);
}
