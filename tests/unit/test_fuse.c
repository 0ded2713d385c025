/* The FUSE wire codec (core/vfs/fuse.c): every family of request decodes, every malformed
 * one is refused with the right errno, replies are byte-exact, dirents round-trip. */
#include "test.h"
#include "vfs/fuse.h"

#include <dirent.h>
#include <errno.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>

#define HDR sizeof(struct fuse_in_header)

/* A request: header (len = the whole) + up to three body parts. */
struct msg {
    uint8_t b[8192];
    size_t n;
};

static void add(struct msg *m, const void *p, size_t n)
{
    if (m->n + n > sizeof(m->b))
        FAIL_AT("test message too long");
    memcpy(m->b + m->n, p, n);
    m->n += n;
}

static void addstr(struct msg *m, const char *s)
{
    add(m, s, strlen(s) + 1);
}

static void start(struct msg *m, uint32_t op, uint64_t nodeid)
{
    struct fuse_in_header h = {.opcode = op, .unique = 42, .nodeid = nodeid, .uid = 1000};
    m->n = 0;
    add(m, &h, sizeof(h));
}

/* fixes up len to the message's size */
static int decode(struct msg *m, struct gd_fuse_req *r)
{
    uint32_t len = (uint32_t)m->n;
    memcpy(m->b, &len, sizeof(len));
    return gd_fuse_decode(m->b, m->n, r);
}

/* A valid request per decoded opcode: opcode, fixed struct size, and what follows. */
struct sample {
    uint32_t op;
    size_t fixed;
    const char *s1, *s2; /* strings after the fixed part (with their NULs) */
    size_t data;         /* bytes of data after them (WRITE, SETXATTR, BATCH_FORGET) */
};

static const struct sample samples[] = {
    {FUSE_INIT, sizeof(struct fuse_init_in), NULL, NULL, 0},
    {FUSE_DESTROY, 0, NULL, NULL, 0},
    {FUSE_LOOKUP, 0, "file.txt", NULL, 0},
    {FUSE_FORGET, sizeof(struct fuse_forget_in), NULL, NULL, 0},
    {FUSE_BATCH_FORGET, sizeof(struct fuse_batch_forget_in), NULL, NULL, 32},
    {FUSE_GETATTR, sizeof(struct fuse_getattr_in), NULL, NULL, 0},
    {FUSE_SETATTR, sizeof(struct fuse_setattr_in), NULL, NULL, 0},
    {FUSE_READLINK, 0, NULL, NULL, 0},
    {FUSE_SYMLINK, 0, "link", "../target/x", 0},
    {FUSE_MKNOD, sizeof(struct fuse_mknod_in), "fifo", NULL, 0},
    {FUSE_MKDIR, sizeof(struct fuse_mkdir_in), "dir", NULL, 0},
    {FUSE_UNLINK, 0, "gone", NULL, 0},
    {FUSE_RMDIR, 0, "olddir", NULL, 0},
    {FUSE_RENAME, sizeof(struct fuse_rename_in), "a", "b", 0},
    {FUSE_RENAME2, sizeof(struct fuse_rename2_in), "a", "b", 0},
    {FUSE_LINK, sizeof(struct fuse_link_in), "hard", NULL, 0},
    {FUSE_OPEN, sizeof(struct fuse_open_in), NULL, NULL, 0},
    {FUSE_READ, sizeof(struct fuse_read_in), NULL, NULL, 0},
    {FUSE_WRITE, sizeof(struct fuse_write_in), NULL, NULL, 5},
    {FUSE_STATFS, 0, NULL, NULL, 0},
    {FUSE_RELEASE, sizeof(struct fuse_release_in), NULL, NULL, 0},
    {FUSE_FSYNC, sizeof(struct fuse_fsync_in), NULL, NULL, 0},
    {FUSE_SETXATTR, FUSE_COMPAT_SETXATTR_IN_SIZE, "user.k", NULL, 3},
    {FUSE_GETXATTR, sizeof(struct fuse_getxattr_in), "user.k", NULL, 0},
    {FUSE_LISTXATTR, sizeof(struct fuse_getxattr_in), NULL, NULL, 0},
    {FUSE_REMOVEXATTR, 0, "user.k", NULL, 0},
    {FUSE_FLUSH, sizeof(struct fuse_flush_in), NULL, NULL, 0},
    {FUSE_OPENDIR, sizeof(struct fuse_open_in), NULL, NULL, 0},
    {FUSE_READDIR, sizeof(struct fuse_read_in), NULL, NULL, 0},
    {FUSE_READDIRPLUS, sizeof(struct fuse_read_in), NULL, NULL, 0},
    {FUSE_RELEASEDIR, sizeof(struct fuse_release_in), NULL, NULL, 0},
    {FUSE_FSYNCDIR, sizeof(struct fuse_fsync_in), NULL, NULL, 0},
    {FUSE_GETLK, sizeof(struct fuse_lk_in), NULL, NULL, 0},
    {FUSE_SETLK, sizeof(struct fuse_lk_in), NULL, NULL, 0},
    {FUSE_SETLKW, sizeof(struct fuse_lk_in), NULL, NULL, 0},
    {FUSE_ACCESS, sizeof(struct fuse_access_in), NULL, NULL, 0},
    {FUSE_CREATE, sizeof(struct fuse_create_in), "new.c", NULL, 0},
    {FUSE_INTERRUPT, sizeof(struct fuse_interrupt_in), NULL, NULL, 0},
    {FUSE_FALLOCATE, sizeof(struct fuse_fallocate_in), NULL, NULL, 0},
    {FUSE_LSEEK, sizeof(struct fuse_lseek_in), NULL, NULL, 0},
    {FUSE_COPY_FILE_RANGE, sizeof(struct fuse_copy_file_range_in), NULL, NULL, 0},
    {FUSE_SYNCFS, sizeof(struct fuse_syncfs_in), NULL, NULL, 0},
};

/* Builds sample s; the fixed struct is zero but for the sizes its tail needs. */
static void build(struct msg *m, const struct sample *s)
{
    uint8_t fixed[128] = {0};
    start(m, s->op, 7);
    if (s->op == FUSE_INIT) {
        struct fuse_init_in in = {
            .major = 7, .minor = 38, .max_readahead = 131072, .flags = 0xffffffffu};
        memcpy(fixed, &in, sizeof(in));
    } else if (s->op == FUSE_WRITE) {
        struct fuse_write_in in = {.fh = 3, .offset = 100, .size = (uint32_t)s->data};
        memcpy(fixed, &in, sizeof(in));
    } else if (s->op == FUSE_SETXATTR) {
        struct fuse_setxattr_in in = {.size = (uint32_t)s->data};
        memcpy(fixed, &in, FUSE_COMPAT_SETXATTR_IN_SIZE);
    } else if (s->op == FUSE_BATCH_FORGET) {
        struct fuse_batch_forget_in in = {.count = (uint32_t)(s->data / 16)};
        memcpy(fixed, &in, sizeof(in));
    }
    add(m, fixed, s->fixed);
    if (s->s1)
        addstr(m, s->s1);
    if (s->s2)
        addstr(m, s->s2);
    for (size_t i = 0; i < s->data; i++)
        add(m, &(uint8_t){(uint8_t)(i + 1)}, 1);
}

TEST(fuse_every_family_decodes)
{
    struct msg m;
    struct gd_fuse_req r;
    for (size_t i = 0; i < sizeof(samples) / sizeof(samples[0]); i++) {
        const struct sample *s = &samples[i];
        build(&m, s);
        int e = decode(&m, &r);
        if (e)
            FAIL_AT("%s: %d", gd_fuse_opname(s->op), e);
        CHECK(r.hdr_ok);
        CHECK_EQ(r.h.opcode, s->op);
        CHECK_EQ(r.h.unique, 42);
        CHECK_EQ(r.h.nodeid, 7);
        CHECK_EQ(r.h.uid, 1000);
        if (s->s1) {
            CHECK_STR(r.name, s->s1);
            CHECK_EQ(r.namelen, strlen(s->s1));
        } else {
            CHECK(!r.name);
        }
        if (s->s2)
            CHECK_STR(r.name2, s->s2);
        CHECK_EQ(r.datalen, s->data);
        if (s->data)
            CHECK_EQ(((const uint8_t *)r.data)[0], 1);
        CHECK(strcmp(gd_fuse_opname(s->op), "?"));
        CHECK_EQ(gd_fuse_op_has_reply(s->op), s->op != FUSE_FORGET && s->op != FUSE_BATCH_FORGET);
    }
}

/* Every prefix of a valid request (len adjusted) and the request with one more byte are
 * refused: no layout is accepted loosely. */
TEST(fuse_every_truncation_and_extension_refused)
{
    struct msg m, t;
    struct gd_fuse_req r;
    for (size_t i = 0; i < sizeof(samples) / sizeof(samples[0]); i++) {
        build(&m, &samples[i]);
        for (size_t n = HDR; n < m.n; n++) {
            if (samples[i].op == FUSE_INIT && n == HDR + 16)
                continue; /* a pre-7.36 kernel's INIT */
            memcpy(t.b, m.b, n);
            t.n = n;
            int e = decode(&t, &r);
            if (e != -EPROTO)
                FAIL_AT("%s cut to %zu: %d", gd_fuse_opname(samples[i].op), n, e);
            CHECK(r.hdr_ok);
        }
        t = m;
        add(&t, "x", 1);
        int e = decode(&t, &r);
        if (e != -EPROTO)
            FAIL_AT("%s with a byte more: %d", gd_fuse_opname(samples[i].op), e);
    }
}

TEST(fuse_fields_decode)
{
    struct msg m;
    struct gd_fuse_req r;

    start(&m, FUSE_RENAME2, 5);
    add(&m, &(struct fuse_rename2_in){.newdir = 9, .flags = 1}, sizeof(struct fuse_rename2_in));
    addstr(&m, "old");
    addstr(&m, "new");
    CHECK_EQ(decode(&m, &r), 0);
    CHECK_EQ(r.in.rename.newdir, 9);
    CHECK_EQ(r.in.rename.flags, 1);
    CHECK_STR(r.name, "old");
    CHECK_STR(r.name2, "new");

    start(&m, FUSE_RENAME, 5);
    add(&m, &(struct fuse_rename_in){.newdir = 11}, sizeof(struct fuse_rename_in));
    addstr(&m, "old");
    addstr(&m, "new");
    CHECK_EQ(decode(&m, &r), 0);
    CHECK_EQ(r.in.rename.newdir, 11);
    CHECK_EQ(r.in.rename.flags, 0);

    start(&m, FUSE_WRITE, 5);
    add(&m, &(struct fuse_write_in){.fh = 77, .offset = 1 << 20, .size = 4},
        sizeof(struct fuse_write_in));
    add(&m, "data", 4);
    CHECK_EQ(decode(&m, &r), 0);
    CHECK_EQ(r.in.write.fh, 77);
    CHECK_EQ(r.in.write.offset, 1 << 20);
    CHECK(r.datalen == 4 && !memcmp(r.data, "data", 4));

    start(&m, FUSE_BATCH_FORGET, 0);
    add(&m, &(struct fuse_batch_forget_in){.count = 2}, sizeof(struct fuse_batch_forget_in));
    add(&m, &(struct fuse_forget_one){.nodeid = 10, .nlookup = 1}, 16);
    add(&m, &(struct fuse_forget_one){.nodeid = 20, .nlookup = 3}, 16);
    CHECK_EQ(decode(&m, &r), 0);
    struct fuse_forget_one f;
    gd_fuse_forget_at(&r, 1, &f);
    CHECK_EQ(f.nodeid, 20);
    CHECK_EQ(f.nlookup, 3);

    start(&m, FUSE_SETXATTR, 5);
    add(&m, &(struct fuse_setxattr_in){.size = 0, .flags = XATTR_CREATE}, 8);
    addstr(&m, "user.empty/with.slash"); /* '/' is legal in an xattr name */
    CHECK_EQ(decode(&m, &r), 0);
    CHECK_EQ(r.in.setxattr.flags, XATTR_CREATE);
    CHECK_EQ(r.datalen, 0);

    /* a 7.31-7.35 kernel's 16-byte INIT */
    start(&m, FUSE_INIT, 0);
    add(&m, &(struct fuse_init_in){.major = 7, .minor = 31, .max_readahead = 4096, .flags = 3}, 16);
    CHECK_EQ(decode(&m, &r), 0);
    CHECK_EQ(r.in.init.minor, 31);
    CHECK_EQ(r.in.init.flags, 3);
    CHECK_EQ(r.in.init.flags2, 0);

    /* the buffer need not be aligned */
    static uint8_t odd[sizeof(m.b) + 1];
    build(&m, &samples[4]); /* BATCH_FORGET */
    decode(&m, &r);
    memcpy(odd + 1, m.b, m.n);
    CHECK_EQ(gd_fuse_decode(odd + 1, m.n, &r), 0);
    gd_fuse_forget_at(&r, 1, &f);
    CHECK(!memcmp(&f, m.b + HDR + 8 + 16, 16));
}

static int lookup(const char *name, size_t len, struct gd_fuse_req *r)
{
    struct msg m;
    start(&m, FUSE_LOOKUP, 1);
    add(&m, name, len);
    return decode(&m, r);
}

TEST(fuse_bad_names_refused)
{
    struct gd_fuse_req r;
    char big[300];
    CHECK_EQ(lookup("ok", 3, &r), 0);
    CHECK_EQ(lookup("ok", 2, &r), -EPROTO);   /* no NUL */
    CHECK_EQ(lookup("a/b", 4, &r), -EPROTO);  /* '/' */
    CHECK_EQ(lookup("/", 2, &r), -EPROTO);    /* '/' */
    CHECK_EQ(lookup(".", 2, &r), -EPROTO);    /* the VFS resolves "." */
    CHECK_EQ(lookup("..", 3, &r), -EPROTO);   /* and ".." */
    CHECK_EQ(lookup("", 1, &r), -EPROTO);     /* empty */
    CHECK_EQ(lookup("a\0b", 4, &r), -EPROTO); /* NUL inside: bytes after the name */
    CHECK_EQ(lookup("...", 4, &r), 0);        /* only "." and ".." are special */
    CHECK_EQ(lookup(".hidden", 8, &r), 0);
    memset(big, 'n', sizeof(big));
    big[255] = 0;
    CHECK_EQ(lookup(big, 256, &r), 0);
    CHECK_EQ(r.namelen, 255);
    big[255] = 'n';
    big[256] = 0;
    CHECK_EQ(lookup(big, 257, &r), -ENAMETOOLONG);
    CHECK(r.hdr_ok);

    /* the second name of a rename, and a symlink's target */
    struct msg m;
    start(&m, FUSE_RENAME, 1);
    add(&m, &(struct fuse_rename_in){.newdir = 1}, 8);
    addstr(&m, "a");
    addstr(&m, "..");
    CHECK_EQ(decode(&m, &r), -EPROTO);
    start(&m, FUSE_SYMLINK, 1);
    addstr(&m, "l");
    addstr(&m, "");
    CHECK_EQ(decode(&m, &r), -EPROTO); /* empty target */
    static char target[4097];
    memset(target, 'x', 4095);
    start(&m, FUSE_SYMLINK, 1);
    addstr(&m, "l");
    addstr(&m, target); /* 4095 bytes */
    CHECK_EQ(decode(&m, &r), 0);
    CHECK_EQ(r.name2len, 4095);
    target[4095] = 'x';
    start(&m, FUSE_SYMLINK, 1);
    addstr(&m, "l");
    addstr(&m, target); /* 4096 bytes */
    CHECK_EQ(decode(&m, &r), -EPROTO);

    /* xattr names: 1..255 */
    start(&m, FUSE_GETXATTR, 1);
    add(&m, &(struct fuse_getxattr_in){.size = 10}, 8);
    addstr(&m, "");
    CHECK_EQ(decode(&m, &r), -EPROTO);
    start(&m, FUSE_REMOVEXATTR, 1);
    big[256] = 0;
    addstr(&m, big);
    CHECK_EQ(decode(&m, &r), -EPROTO);
}

TEST(fuse_bad_headers_refused)
{
    struct msg m;
    struct gd_fuse_req r;
    build(&m, &samples[2]); /* LOOKUP */
    CHECK_EQ(decode(&m, &r), 0);
    for (size_t n = 0; n < HDR; n++) {
        CHECK_EQ(gd_fuse_decode(m.b, n, &r), -EPROTO); /* short header */
        CHECK(!r.hdr_ok);
    }
    CHECK_EQ(gd_fuse_decode(m.b, m.n - 1, &r), -EPROTO); /* len says more than there is */
    CHECK(!r.hdr_ok);
    add(&m, "", 1);
    CHECK_EQ(gd_fuse_decode(m.b, m.n, &r), -EPROTO); /* len says less */
    CHECK(!r.hdr_ok);

    build(&m, &samples[2]);
    struct fuse_in_header h;
    memcpy(&h, m.b, sizeof(h));
    h.unique = 0; /* the notification id */
    memcpy(m.b, &h, sizeof(h));
    CHECK_EQ(decode(&m, &r), -EPROTO);
    CHECK(!r.hdr_ok);
    h.unique = 42;
    h.total_extlen = 1; /* extensions we never negotiate */
    memcpy(m.b, &h, sizeof(h));
    add(&m, "\0\0\0\0\0\0\0\0", 8);
    CHECK_EQ(decode(&m, &r), -EPROTO);
    CHECK(r.hdr_ok);
}

TEST(fuse_unknown_opcodes_enosys)
{
    uint32_t ops[] = {0,
                      7,
                      19,
                      FUSE_BMAP,
                      FUSE_IOCTL,
                      FUSE_POLL,
                      FUSE_NOTIFY_REPLY,
                      FUSE_SETUPMAPPING,
                      FUSE_REMOVEMAPPING,
                      FUSE_TMPFILE,
                      52,
                      CUSE_INIT,
                      FUSE_INIT_BSWAP_RESERVED,
                      0xffffffffu};
    for (size_t i = 0; i < sizeof(ops) / sizeof(ops[0]); i++) {
        struct msg m;
        struct gd_fuse_req r;
        start(&m, ops[i], 1);
        add(&m, "\0\0\0\0\0\0\0\0", 8);
        CHECK_EQ(decode(&m, &r), -ENOSYS);
        CHECK(r.hdr_ok);
        CHECK_EQ(r.h.unique, 42);
        CHECK_STR(gd_fuse_opname(ops[i]), "?");
    }
}

TEST(fuse_sizes_and_flags_refused)
{
    struct msg m;
    struct gd_fuse_req r;
    size_t big = GD_FUSE_MAX_IO + 1 + HDR + sizeof(struct fuse_write_in);
    uint8_t *w = calloc(1, big);
    CHECK(w);
    struct fuse_in_header h = {.len = (uint32_t)big, .opcode = FUSE_WRITE, .unique = 9};
    struct fuse_write_in wi = {.size = GD_FUSE_MAX_IO + 1};
    memcpy(w, &h, sizeof(h));
    memcpy(w + HDR, &wi, sizeof(wi));
    CHECK_EQ(gd_fuse_decode(w, big, &r), -EINVAL); /* oversized write */
    CHECK(r.hdr_ok);
    h.len = (uint32_t)(big - 1);
    wi.size = GD_FUSE_MAX_IO;
    memcpy(w, &h, sizeof(h));
    memcpy(w + HDR, &wi, sizeof(wi));
    CHECK_EQ(gd_fuse_decode(w, big - 1, &r), 0); /* the largest */
    CHECK_EQ(r.datalen, GD_FUSE_MAX_IO);
    free(w);

    /* write size mismatch, both ways */
    start(&m, FUSE_WRITE, 5);
    add(&m, &(struct fuse_write_in){.size = 5}, sizeof(struct fuse_write_in));
    add(&m, "abcd", 4);
    CHECK_EQ(decode(&m, &r), -EPROTO);
    add(&m, "ef", 2);
    CHECK_EQ(decode(&m, &r), -EPROTO);

    /* batch forget counts the body does not hold */
    uint32_t counts[] = {0, 1, 3, 0x10000000u, 0xffffffffu};
    for (size_t i = 0; i < sizeof(counts) / sizeof(counts[0]); i++) {
        start(&m, FUSE_BATCH_FORGET, 0);
        add(&m, &(struct fuse_batch_forget_in){.count = counts[i]}, 8);
        add(&m, &(struct fuse_forget_one){.nodeid = 1, .nlookup = 1}, 16);
        add(&m, &(struct fuse_forget_one){.nodeid = 2, .nlookup = 1}, 16);
        CHECK_EQ(decode(&m, &r), -EPROTO);
    }

    /* read sizes */
    uint32_t rops[] = {FUSE_READ, FUSE_READDIR, FUSE_READDIRPLUS};
    for (size_t i = 0; i < 3; i++) {
        start(&m, rops[i], 5);
        add(&m, &(struct fuse_read_in){.size = GD_FUSE_MAX_IO}, sizeof(struct fuse_read_in));
        CHECK_EQ(decode(&m, &r), 0);
        start(&m, rops[i], 5);
        add(&m, &(struct fuse_read_in){.size = GD_FUSE_MAX_IO + 1}, sizeof(struct fuse_read_in));
        CHECK_EQ(decode(&m, &r), -EINVAL);
    }
    start(&m, FUSE_LISTXATTR, 5);
    add(&m, &(struct fuse_getxattr_in){.size = GD_FUSE_XATTR_SIZE_MAX + 1}, 8);
    CHECK_EQ(decode(&m, &r), -EINVAL);

    /* xattr values: declared size, the limit, flags */
    static uint8_t val[GD_FUSE_XATTR_SIZE_MAX + 1];
    start(&m, FUSE_SETXATTR, 5);
    add(&m, &(struct fuse_setxattr_in){.size = 4}, 8);
    addstr(&m, "user.k");
    add(&m, val, 3);
    CHECK_EQ(decode(&m, &r), -EPROTO);
    start(&m, FUSE_SETXATTR, 5);
    add(&m, &(struct fuse_setxattr_in){.size = 3, .flags = 4}, 8);
    addstr(&m, "user.k");
    add(&m, val, 3);
    CHECK_EQ(decode(&m, &r), -EINVAL);
    size_t xn = HDR + 8 + 7 + sizeof(val);
    uint8_t *x = calloc(1, xn);
    CHECK(x);
    h = (struct fuse_in_header){.len = (uint32_t)xn, .opcode = FUSE_SETXATTR, .unique = 3};
    memcpy(x, &h, sizeof(h));
    memcpy(x + HDR, &(struct fuse_setxattr_in){.size = sizeof(val)}, 8);
    memcpy(x + HDR + 8, "user.k", 7);
    CHECK_EQ(gd_fuse_decode(x, xn, &r), -EINVAL);
    free(x);

    /* rename flags beyond NOREPLACE | EXCHANGE | WHITEOUT */
    start(&m, FUSE_RENAME2, 5);
    add(&m, &(struct fuse_rename2_in){.newdir = 1, .flags = 8}, 16);
    addstr(&m, "a");
    addstr(&m, "b");
    CHECK_EQ(decode(&m, &r), -EINVAL);
}

/* ---- replies ---- */

static void check_out_header(const uint8_t *b, uint32_t len, int32_t err, uint64_t unique)
{
    struct fuse_out_header oh;
    memcpy(&oh, b, sizeof(oh));
    CHECK_EQ(oh.len, len);
    CHECK_EQ(oh.error, err);
    CHECK_EQ(oh.unique, unique);
}

TEST(fuse_reply_layouts)
{
    /* the sizes the kernel checks replies against */
    CHECK_EQ(sizeof(struct fuse_out_header), 16);
    CHECK_EQ(sizeof(struct fuse_entry_out), 128);
    CHECK_EQ(sizeof(struct fuse_attr_out), 104);
    CHECK_EQ(sizeof(struct fuse_open_out), 16);
    CHECK_EQ(sizeof(struct fuse_write_out), 8);
    CHECK_EQ(sizeof(struct fuse_statfs_out), 80);
    CHECK_EQ(sizeof(struct fuse_init_out), 64);

    uint8_t b[512];
    CHECK_EQ(gd_fuse_reply_err(b, sizeof(b), 77, -ENOENT), 16);
    check_out_header(b, 16, -ENOENT, 77);
    CHECK_EQ(gd_fuse_reply_err(b, sizeof(b), 77, EACCES), 16); /* either sign */
    check_out_header(b, 16, -EACCES, 77);
    gd_fuse_reply_err(b, sizeof(b), 77, -512); /* the kernel would refuse the reply */
    check_out_header(b, 16, -EIO, 77);
    gd_fuse_reply_err(b, sizeof(b), 77, -2147483647 - 1);
    check_out_header(b, 16, -EIO, 77);
    gd_fuse_reply_err(b, sizeof(b), 77, 0);
    check_out_header(b, 16, 0, 77);
    CHECK_EQ(gd_fuse_reply_err(b, 15, 77, -ENOENT), 0);

    struct fuse_entry_out e = {.nodeid = 5, .generation = 1, .entry_valid = 2, .attr_valid = 3};
    e.attr.ino = 5;
    e.attr.mode = S_IFREG | 0644;
    CHECK_EQ(gd_fuse_reply_entry(b, sizeof(b), 8, &e), 144);
    check_out_header(b, 144, 0, 8);
    CHECK(!memcmp(b + 16, &e, sizeof(e)));
    CHECK_EQ(gd_fuse_reply_entry(b, 143, 8, &e), 0);

    struct fuse_attr_out a = {.attr_valid = 1, .attr = e.attr};
    CHECK_EQ(gd_fuse_reply_attr(b, sizeof(b), 8, &a), 120);
    CHECK(!memcmp(b + 16, &a, sizeof(a)));

    struct fuse_open_out o = {.fh = 99, .open_flags = FOPEN_KEEP_CACHE};
    CHECK_EQ(gd_fuse_reply_open(b, sizeof(b), 8, &o), 32);
    CHECK(!memcmp(b + 16, &o, sizeof(o)));
    CHECK_EQ(gd_fuse_reply_create(b, sizeof(b), 8, &e, &o), 160);
    check_out_header(b, 160, 0, 8);
    CHECK(!memcmp(b + 16, &e, sizeof(e)) && !memcmp(b + 144, &o, sizeof(o)));

    CHECK_EQ(gd_fuse_reply_write(b, sizeof(b), 8, 4096), 24);
    uint32_t u;
    memcpy(&u, b + 16, 4);
    CHECK_EQ(u, 4096);
    memcpy(&u, b + 20, 4);
    CHECK_EQ(u, 0); /* padding */

    struct fuse_kstatfs st = {.blocks = 10, .bsize = 4096, .namelen = 255, .frsize = 4096};
    CHECK_EQ(gd_fuse_reply_statfs(b, sizeof(b), 8, &st), 96);
    CHECK(!memcmp(b + 16, &st, sizeof(st)));

    CHECK_EQ(gd_fuse_reply_xattr_size(b, sizeof(b), 8, 33), 24);
    memcpy(&u, b + 16, 4);
    CHECK_EQ(u, 33);
    CHECK_EQ(gd_fuse_reply_lseek(b, sizeof(b), 8, 1ull << 40), 24);
    uint64_t off;
    memcpy(&off, b + 16, 8);
    CHECK_EQ(off, 1ull << 40);

    CHECK_EQ(gd_fuse_reply_data(b, sizeof(b), 8, "target", 6), 22);
    CHECK(!memcmp(b + 16, "target", 6));
    CHECK_EQ(gd_fuse_reply_data(b, 21, 8, "target", 6), 0);
    memcpy(b + 16, "in place", 8);
    CHECK_EQ(gd_fuse_reply_hdr(b, sizeof(b), 8, 8), 24);
    check_out_header(b, 24, 0, 8);
    CHECK(!memcmp(b + 16, "in place", 8));
    CHECK_EQ(gd_fuse_reply_hdr(b, 23, 8, 8), 0);
    CHECK_EQ(gd_fuse_reply_hdr(b, 10, 8, 0), 0);
}

TEST(fuse_attr_from_stat)
{
    struct stat st = {.st_ino = 123,
                      .st_size = 5000,
                      .st_blocks = 16,
                      .st_mode = S_IFCHR | 0600,
                      .st_nlink = 2,
                      .st_uid = 1000,
                      .st_gid = 100,
                      .st_blksize = 4096};
    st.st_mtim.tv_sec = -1; /* 1969 */
    st.st_mtim.tv_nsec = 5;
    st.st_rdev = makedev(1, 0x123);
    struct fuse_attr a;
    gd_fuse_attr_from_stat(&a, &st);
    CHECK_EQ(a.ino, 123);
    CHECK_EQ(a.size, 5000);
    CHECK_EQ(a.blocks, 16);
    CHECK_EQ((int64_t)a.mtime, -1);
    CHECK_EQ(a.mtimensec, 5);
    CHECK_EQ(a.mode, S_IFCHR | 0600);
    CHECK_EQ(a.nlink, 2);
    CHECK_EQ(a.uid, 1000);
    CHECK_EQ(a.gid, 100);
    CHECK_EQ(a.blksize, 4096);
    CHECK_EQ(a.rdev, 0x100123); /* new_encode_dev: minor low byte, major, minor high bits */
    st.st_rdev = makedev(8, 1);
    gd_fuse_attr_from_stat(&a, &st);
    CHECK_EQ(a.rdev, 0x801);
}

static void init_req(struct gd_fuse_req *r, uint32_t major, uint32_t minor, uint32_t flags)
{
    struct msg m;
    start(&m, FUSE_INIT, 0);
    struct fuse_init_in in = {
        .major = major, .minor = minor, .max_readahead = 128 << 10, .flags = flags};
    add(&m, &in, sizeof(in));
    CHECK_EQ(decode(&m, r), 0);
}

TEST(fuse_init_negotiates)
{
    struct gd_fuse_req r;
    struct gd_fuse_init_result res;
    uint8_t b[128];
    init_req(&r, 7, 38, 0xffffffffu);
    CHECK_EQ(gd_fuse_reply_init(b, sizeof(b), &r, NULL, &res), 80);
    check_out_header(b, 80, 0, 42);
    struct fuse_init_out o;
    memcpy(&o, b + 16, sizeof(o));
    CHECK_EQ(o.major, 7);
    CHECK_EQ(o.minor, FUSE_KERNEL_MINOR_VERSION);
    CHECK_EQ(o.flags, GD_FUSE_INIT_DEFAULT);
    CHECK(o.flags & FUSE_ASYNC_READ && o.flags & FUSE_PARALLEL_DIROPS &&
          o.flags & FUSE_DO_READDIRPLUS && o.flags & FUSE_READDIRPLUS_AUTO &&
          o.flags & FUSE_BIG_WRITES && o.flags & FUSE_MAX_PAGES);
    CHECK(!(o.flags & FUSE_WRITEBACK_CACHE));
    CHECK_EQ(o.max_write, 1 << 20);
    CHECK_EQ(o.max_pages, 256);
    CHECK_EQ(o.max_readahead, 128 << 10); /* the kernel's was smaller than ours */
    CHECK_EQ(o.max_background, 64);
    CHECK_EQ(o.congestion_threshold, 48);
    CHECK_EQ(o.time_gran, 1);
    CHECK_EQ(o.flags2, 0);
    CHECK_EQ(res.error, 0);
    CHECK_EQ(res.minor, 38);
    CHECK_EQ(res.max_write, 1 << 20);
    CHECK_EQ(res.max_pages, 256);

    /* writeback on request; flags the kernel lacks are not taken; odd max_write */
    struct gd_fuse_init_opts opts = {.writeback_cache = 1,
                                     .max_write = 200000,
                                     .max_readahead = 65536,
                                     .want = FUSE_ASYNC_READ | FUSE_EXPORT_SUPPORT};
    init_req(&r, 7, 33,
             FUSE_ASYNC_READ | FUSE_WRITEBACK_CACHE | FUSE_MAX_PAGES | FUSE_EXPORT_SUPPORT);
    CHECK_EQ(gd_fuse_reply_init(b, sizeof(b), &r, &opts, &res), 80);
    memcpy(&o, b + 16, sizeof(o));
    CHECK_EQ(o.flags, FUSE_ASYNC_READ | FUSE_WRITEBACK_CACHE | FUSE_MAX_PAGES); /* no EXPORT */
    CHECK_EQ(o.max_write, 196608);                                              /* whole pages */
    CHECK_EQ(o.max_pages, 48);
    CHECK_EQ(o.max_readahead, 65536);
    CHECK_EQ(res.minor, 33);

    /* no FUSE_MAX_PAGES from the kernel: 32 pages; a max_write below 128 KiB is raised */
    opts = (struct gd_fuse_init_opts){.max_write = 4096};
    init_req(&r, 7, 38, FUSE_ASYNC_READ);
    gd_fuse_reply_init(b, sizeof(b), &r, &opts, &res);
    memcpy(&o, b + 16, sizeof(o));
    CHECK_EQ(o.max_write, 128 << 10);
    CHECK_EQ(res.max_write, 128 << 10);
    CHECK_EQ(res.max_pages, 32);
    CHECK_EQ(res.flags, FUSE_ASYNC_READ);
    opts.max_write = 0;
    gd_fuse_reply_init(b, sizeof(b), &r, &opts, &res);
    CHECK_EQ(res.max_write, 128 << 10);

    /* protocols we do not speak */
    uint32_t bad[][2] = {{8, 0}, {6, 40}, {7, GD_FUSE_MIN_MINOR - 1}};
    for (size_t i = 0; i < 3; i++) {
        init_req(&r, bad[i][0], bad[i][1], 0xffffffffu);
        CHECK_EQ(gd_fuse_reply_init(b, sizeof(b), &r, NULL, &res), 16);
        check_out_header(b, 16, -EPROTO, 42);
        CHECK_EQ(res.error, -EPROTO);
    }
    init_req(&r, 7, 38, 0);
    CHECK_EQ(gd_fuse_reply_init(b, 79, &r, NULL, &res), 0);
}

/* ---- READDIR ---- */

TEST(fuse_dirent_packing)
{
    uint8_t b[256];
    memset(b, 0xee, sizeof(b));
    /* header 24 bytes, then the name, padded to 8 */
    CHECK_EQ(gd_fuse_add_dirent(b, sizeof(b), "a", 1, 10, 1, DT_REG), 32);
    CHECK_EQ(gd_fuse_add_dirent(b + 32, sizeof(b) - 32, "abcdefgh", 8, 11, 2, DT_DIR), 32);
    CHECK_EQ(gd_fuse_add_dirent(b + 64, sizeof(b) - 64, "abcdefghi", 9, 12, 3, DT_LNK), 40);
    for (int i = 25; i < 32; i++)
        CHECK_EQ(b[i], 0); /* padding is zero */
    for (int i = 64 + 33; i < 104; i++)
        CHECK_EQ(b[i], 0);
    CHECK_EQ(b[104], 0xee); /* nothing written past the entry */
    struct fuse_dirent d;
    memcpy(&d, b + 32, sizeof(d));
    CHECK_EQ(d.ino, 11);
    CHECK_EQ(d.off, 2);
    CHECK_EQ(d.namelen, 8);
    CHECK_EQ(d.type, DT_DIR);
    CHECK(!memcmp(b + 32 + FUSE_NAME_OFFSET, "abcdefgh", 8));

    /* it stops when the reader's size would be exceeded */
    CHECK_EQ(gd_fuse_add_dirent(b, 31, "a", 1, 10, 1, DT_REG), 0);
    CHECK_EQ(gd_fuse_add_dirent(b, 32, "a", 1, 10, 1, DT_REG), 32);

    /* names the kernel would refuse */
    char big[GD_FUSE_NAME_MAX + 1];
    memset(big, 'x', sizeof(big));
    CHECK_EQ(gd_fuse_add_dirent(b, sizeof(b), "", 0, 1, 1, DT_REG), -EINVAL);
    CHECK_EQ(gd_fuse_add_dirent(b, sizeof(b), "a/b", 3, 1, 1, DT_REG), -EINVAL);
    CHECK_EQ(gd_fuse_add_dirent(b, sizeof(b), "a\0b", 3, 1, 1, DT_REG), -EINVAL);
    CHECK_EQ(gd_fuse_add_dirent(b, sizeof(b), big, sizeof(big), 1, 1, DT_REG), -EINVAL);
    CHECK_EQ(gd_fuse_add_dirent(b, 8, big, sizeof(big), 1, 1, DT_REG), -EINVAL);

    /* direntplus: entry_out, then the dirent; ino and type from the attributes */
    struct fuse_entry_out e = {.nodeid = 33, .attr_valid = 1};
    e.attr.ino = 1234;
    e.attr.mode = S_IFDIR | 0755;
    CHECK_EQ(gd_fuse_add_direntplus(b, sizeof(b), "sub", 3, &e, 7), 160); /* 152 + 3 -> 160 */
    CHECK(!memcmp(b, &e, sizeof(e)));
    memcpy(&d, b + sizeof(e), sizeof(d));
    CHECK_EQ(d.ino, 1234);
    CHECK_EQ(d.type, DT_DIR);
    CHECK_EQ(d.off, 7);
    CHECK_EQ(FUSE_NAME_OFFSET_DIRENTPLUS, 152);
    CHECK_EQ(gd_fuse_add_direntplus(b, 159, "sub", 3, &e, 7), 0);
}

/* Pack names of every length into a reader-sized buffer until one does not fit, read
 * them back as the kernel would, compare. */
static void round_trip(int plus, size_t reader)
{
    uint8_t *b = malloc(reader);
    CHECK(b);
    char name[GD_FUSE_NAME_MAX + 1];
    size_t used = 0, count = 0;
    for (;; count++) {
        size_t len = 1 + count % GD_FUSE_NAME_MAX;
        for (size_t i = 0; i < len; i++)
            name[i] = (char)('a' + (count + i) % 26);
        struct fuse_entry_out e = {.nodeid = 100 + count};
        e.attr.ino = 1000 + count;
        e.attr.mode = (count % 2 ? S_IFDIR : S_IFREG) | 0644;
        long n = plus ? gd_fuse_add_direntplus(b + used, reader - used, name, len, &e, count + 1)
                      : gd_fuse_add_dirent(b + used, reader - used, name, len, 1000 + count,
                                           count + 1, DT_REG);
        CHECK(n >= 0);
        if (n == 0)
            break;
        CHECK_EQ(n % 8, 0);
        used += (size_t)n;
    }
    CHECK(count > 0 || reader < 32);
    CHECK(used <= reader);
    size_t pos = 0, seen = 0;
    struct gd_fuse_dirent_view v;
    int r;
    while ((r = gd_fuse_dirent_next(b, used, &pos, plus, &v)) == 1) {
        size_t len = 1 + seen % GD_FUSE_NAME_MAX;
        CHECK_EQ(v.namelen, len);
        for (size_t i = 0; i < len; i++)
            CHECK_EQ(v.name[i], (char)('a' + (seen + i) % 26));
        CHECK_EQ(v.ino, 1000 + seen);
        CHECK_EQ(v.off, seen + 1);
        if (plus) {
            CHECK_EQ(v.entry.nodeid, 100 + seen);
            CHECK_EQ(v.type, seen % 2 ? DT_DIR : DT_REG);
        } else {
            CHECK_EQ(v.type, DT_REG);
        }
        seen++;
    }
    CHECK_EQ(r, 0);
    CHECK_EQ(pos, used);
    CHECK_EQ(seen, count);
    free(b);
}

TEST(fuse_dirent_round_trip)
{
    round_trip(0, 4096);
    round_trip(0, 65536);
    round_trip(1, 4096);
    round_trip(1, 65536);
    round_trip(0, 24); /* not even one entry */
}

TEST(fuse_dirent_reader_refuses_bad)
{
    uint8_t b[64] = {0};
    size_t pos = 0;
    struct gd_fuse_dirent_view v;
    struct fuse_dirent d = {.ino = 1, .off = 1, .namelen = 0};
    memcpy(b, &d, sizeof(d));
    CHECK_EQ(gd_fuse_dirent_next(b, 32, &pos, 0, &v), -EPROTO); /* empty name */
    d.namelen = 2;
    memcpy(b, &d, sizeof(d));
    memcpy(b + FUSE_NAME_OFFSET, "a/", 2);
    CHECK_EQ(gd_fuse_dirent_next(b, 32, &pos, 0, &v), -EPROTO); /* '/' */
    d.namelen = 9;
    memcpy(b, &d, sizeof(d));
    CHECK_EQ(gd_fuse_dirent_next(b, 32, &pos, 0, &v), -EPROTO); /* overruns */
    d.namelen = 2000;
    memcpy(b, &d, sizeof(d));
    CHECK_EQ(gd_fuse_dirent_next(b, 64, &pos, 0, &v), -EPROTO); /* over the kernel's max */
    CHECK_EQ(gd_fuse_dirent_next(b, 23, &pos, 0, &v), 0);       /* a tail shorter than a header */
    CHECK_EQ(pos, 0);
}
