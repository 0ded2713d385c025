/* The FUSE session (core/vfs/session.c) over the memory and readonly providers, driven
 * with hand-encoded requests: INIT order, lookups and node accounting, files, links,
 * renames, attributes, xattrs, caps, hooks. (hostfs: test_vfs_host.c.) */
#define _GNU_SOURCE
#include "base/err.h"
#include "test.h"
#include "vfs/vfs_int.h"
#include "vfs_client.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <sys/xattr.h>

static gd_vfs_provider *mem(uint64_t cap)
{
    gd_vfs_provider *pv;
    struct gd_err err;
    if (gd_vfs_memory_new(cap, &pv, &err))
        FAIL_AT("memory: %s", err.msg);
    return pv;
}

static size_t nodes(const struct vc *c)
{
    return c->s->nodes.n;
}

static uint64_t nlookup(const struct vc *c, uint64_t id)
{
    struct gd__vnode *n = gd__vnodes_get(&c->s->nodes, id);
    return n ? n->nlookup : 0;
}

/* a file with content; its node and an open handle */
static uint64_t mkfile(struct vc *c, uint64_t dir, const char *name, const char *text, uint64_t *fh)
{
    struct fuse_entry_out e;
    uint64_t h;
    CHECK_EQ(vc_create(c, dir, name, O_RDWR, 0644, &e, &h), 0);
    CHECK_EQ(vc_write(c, e.nodeid, h, 0, text, strlen(text)), (long)strlen(text));
    if (fh)
        *fh = h;
    else
        CHECK_EQ(vc_release(c, e.nodeid, h), 0);
    return e.nodeid;
}

static void check_content(struct vc *c, uint64_t dir, const char *name, const char *want)
{
    struct fuse_entry_out e;
    uint64_t fh;
    char buf[256];
    CHECK_EQ(vc_lookup(c, dir, name, &e), 0);
    CHECK_EQ(vc_open_file(c, e.nodeid, O_RDONLY, &fh), 0);
    long n = vc_read(c, e.nodeid, fh, 0, buf, sizeof(buf) - 1);
    CHECK(n >= 0);
    buf[n] = 0;
    CHECK_STR(buf, want);
    CHECK_EQ(vc_release(c, e.nodeid, fh), 0);
}

TEST(vfs_session_init_comes_first)
{
    struct vc c;
    memset(&c, 0, sizeof(c));
    struct gd_err err;
    c.out = malloc(GD_FUSE_MAX_IO + 4096);
    CHECK_EQ(gd_vfs_session_new(mem(0), NULL, &c.s, &err), 0);
    CHECK_EQ(vc_getattr(&c, 1, NULL), -EIO);
    struct fuse_entry_out e;
    CHECK_EQ(vc_lookup(&c, 1, "x", &e), -EIO);
    CHECK_EQ(vc_init(&c), 0);
    CHECK(c.init_flags & FUSE_WRITEBACK_CACHE); /* memory is exclusive */
    CHECK(c.init_flags & FUSE_DO_READDIRPLUS);
    CHECK_EQ(vc_init(&c), -EPROTO);
    struct fuse_attr a;
    CHECK_EQ(vc_getattr(&c, 1, &a), 0);
    CHECK(S_ISDIR(a.mode));
    /* a header that cannot be trusted drops the channel; a short body is EIO */
    uint8_t junk[8] = {0};
    CHECK_EQ(gd_vfs_session_handle(c.s, junk, sizeof(junk), c.out, 4096), -EPROTO);
    struct fuse_in_header h = {.len = sizeof(h) + 2, .opcode = FUSE_READ, .unique = 5};
    uint8_t m[sizeof(h) + 2] = {0};
    memcpy(m, &h, sizeof(h));
    CHECK_EQ(gd_vfs_session_handle(c.s, m, sizeof(m), c.out, 4096), 16);
    /* unknown ids */
    CHECK_EQ(vc_getattr(&c, 12345, NULL), -ENOENT);
    CHECK_EQ(vc_release(&c, 1, 999), -EBADF);
    char buf[4];
    CHECK_EQ(vc_read(&c, 1, 999, 0, buf, 4), -EBADF);
    /* DESTROY, then a new mount */
    CHECK_EQ(vc_req(&c, FUSE_DESTROY, 0, NULL, 0, NULL, NULL, NULL, 0), 0);
    CHECK_EQ(vc_getattr(&c, 1, NULL), -EIO);
    CHECK_EQ(vc_init(&c), 0);
    vc_close(&c);
}

TEST(vfs_memory_create_write_read)
{
    struct vc c;
    vc_open(&c, mem(0), NULL);
    struct fuse_entry_out e;
    CHECK_EQ(vc_lookup(&c, 1, "a.txt", &e), -ENOENT);
    uint64_t fh;
    uint64_t id = mkfile(&c, 1, "a.txt", "hello world", &fh);
    CHECK(id > 1);
    char buf[64];
    CHECK_EQ(vc_read(&c, id, fh, 6, buf, sizeof(buf)), 5);
    CHECK(!memcmp(buf, "world", 5));
    CHECK_EQ(vc_read(&c, id, fh, 100, buf, sizeof(buf)), 0);
    /* offset + size past a file position */
    CHECK_EQ(vc_read(&c, id, fh, UINT64_MAX - 2, buf, sizeof(buf)), -EINVAL);
    CHECK_EQ(vc_write(&c, id, fh, (uint64_t)INT64_MAX, "x", 1), -EFBIG);
    CHECK_EQ(vc_release(&c, id, fh), 0);
    CHECK_EQ(vc_release(&c, id, fh), -EBADF);
    CHECK_EQ(vc_lookup(&c, 1, "a.txt", &e), 0);
    CHECK_EQ(e.nodeid, id); /* the same name, the same node */
    CHECK_EQ(e.attr.size, 11);
    CHECK(S_ISREG(e.attr.mode));
    CHECK_EQ(e.entry_valid, 60); /* exclusive: long TTLs */
    CHECK_EQ(nlookup(&c, id), 2);
    check_content(&c, 1, "a.txt", "hello world");
    /* a directory, a file inside */
    CHECK_EQ(vc_mkdir(&c, 1, "d", 0755, &e), 0);
    uint64_t d = e.nodeid;
    mkfile(&c, d, "in", "inside", NULL);
    check_content(&c, d, "in", "inside");
    CHECK_EQ(vc_rmdir(&c, 1, "d"), -ENOTEMPTY);
    CHECK_EQ(vc_unlink(&c, d, "in"), 0);
    CHECK_EQ(vc_lookup(&c, d, "in", &e), -ENOENT);
    CHECK_EQ(vc_rmdir(&c, 1, "d"), 0);
    /* the removed directory's node is detached: its path is gone */
    CHECK_EQ(vc_getattr(&c, d, NULL), -ENOENT);
    vc_close(&c);
}

/* READDIRPLUS counts a lookup per entry but "." and ".."; FORGET gives them back. */
TEST(vfs_readdirplus_node_accounting)
{
    struct vc c;
    vc_open(&c, mem(0), NULL);
    struct fuse_entry_out e;
    CHECK_EQ(vc_mkdir(&c, 1, "d", 0755, &e), 0);
    uint64_t d = e.nodeid;
    char name[32];
    for (int i = 0; i < 50; i++) {
        snprintf(name, sizeof(name), "file-%02d", i);
        mkfile(&c, d, name, "x", NULL);
        vc_forget(&c, c.s->nodes.next_id - 1, 1); /* the kernel let go of it */
    }
    CHECK_EQ(nodes(&c), 1);
    uint64_t fh, off = 0;
    CHECK_EQ(vc_opendir(&c, d, &fh), 0);
    int seen = 0, dots = 0, calls = 0;
    uint64_t ids[64] = {0};
    for (;;) {
        CHECK_EQ(vc_readdir(&c, d, fh, off, 1024, 1), 0); /* a small buffer: many calls */
        if (c.paylen == 0)
            break;
        calls++;
        size_t pos = 0;
        struct gd_fuse_dirent_view v;
        int r;
        while ((r = gd_fuse_dirent_next(c.payload, c.paylen, &pos, 1, &v)) == 1) {
            off = v.off;
            if (v.namelen <= 2 && v.name[0] == '.') {
                CHECK_EQ(v.entry.nodeid, 0);
                dots++;
                continue;
            }
            CHECK(v.entry.nodeid > 1);
            CHECK(seen < 64);
            ids[seen++] = v.entry.nodeid;
            CHECK_EQ(v.entry.attr.size, 1);
            CHECK_EQ(v.type, DT_REG);
        }
        CHECK_EQ(r, 0);
    }
    CHECK(calls > 3);
    CHECK_EQ(seen, 50);
    CHECK_EQ(dots, 2);
    CHECK_EQ(nodes(&c), 51);
    for (int i = 0; i < seen; i++)
        CHECK_EQ(nlookup(&c, ids[i]), 1);
    /* LOOKUP finds the same node and counts again */
    CHECK_EQ(vc_lookup(&c, d, "file-07", &e), 0);
    uint64_t id7 = e.nodeid;
    CHECK_EQ(nlookup(&c, id7), 2);
    /* plain READDIR counts nothing */
    CHECK_EQ(vc_readdir(&c, d, fh, 0, 65536, 0), 0);
    size_t pos = 0;
    struct gd_fuse_dirent_view v;
    int plain = 0;
    while (gd_fuse_dirent_next(c.payload, c.paylen, &pos, 0, &v) == 1)
        plain++;
    CHECK_EQ(plain, 52);
    CHECK_EQ(nlookup(&c, id7), 2);
    CHECK_EQ(vc_releasedir(&c, d, fh), 0);
    /* FORGET one node, then BATCH_FORGET the rest */
    vc_forget(&c, id7, 2);
    CHECK(!gd__vnodes_get(&c.s->nodes, id7));
    CHECK_EQ(nodes(&c), 50);
    struct {
        struct fuse_batch_forget_in h;
        struct fuse_forget_one f[64];
    } bf = {.h = {.count = 0}};
    for (int i = 0; i < seen; i++)
        if (ids[i] != id7)
            bf.f[bf.h.count++] = (struct fuse_forget_one){.nodeid = ids[i], .nlookup = 1};
    bf.f[bf.h.count++] = (struct fuse_forget_one){.nodeid = 999999, .nlookup = 1}; /* unknown */
    CHECK_EQ(vc_req(&c, FUSE_BATCH_FORGET, 0, &bf,
                    sizeof(bf.h) + bf.h.count * sizeof(struct fuse_forget_one), NULL, NULL, NULL,
                    0),
             0);
    CHECK_EQ(vc_last(&c), 0);
    /* d stays: the kernel still holds its lookup from MKDIR */
    CHECK_EQ(nodes(&c), 1);
    CHECK(gd__vnodes_get(&c.s->nodes, d));
    vc_forget(&c, d, 1);
    CHECK_EQ(nodes(&c), 0);
    vc_close(&c);
}

/* A child keeps its forgotten parent alive (paths are built through it). */
TEST(vfs_children_keep_parents)
{
    struct vc c;
    vc_open(&c, mem(0), NULL);
    struct fuse_entry_out e;
    CHECK_EQ(vc_mkdir(&c, 1, "p", 0755, &e), 0);
    uint64_t p = e.nodeid;
    uint64_t f = mkfile(&c, p, "f", "data", NULL);
    vc_forget(&c, p, 1);
    CHECK(gd__vnodes_get(&c.s->nodes, p));
    struct fuse_attr a;
    CHECK_EQ(vc_getattr(&c, f, &a), 0);
    CHECK_EQ(a.size, 4);
    vc_forget(&c, f, 1);
    CHECK_EQ(nodes(&c), 0);
    vc_close(&c);
}

/* rename over an open file: the handle keeps the old file, the name the new one */
TEST(vfs_rename_over_open_file)
{
    struct vc c;
    vc_open(&c, mem(0), NULL);
    uint64_t fh_old;
    uint64_t old = mkfile(&c, 1, "a", "old", &fh_old);
    uint64_t nw = mkfile(&c, 1, "b", "new!", NULL);
    CHECK_EQ(vc_rename(&c, 1, "b", 1, "a", 0), 0);
    char buf[16];
    CHECK_EQ(vc_read(&c, old, fh_old, 0, buf, sizeof(buf)), 3);
    CHECK(!memcmp(buf, "old", 3));
    struct fuse_entry_out e;
    CHECK_EQ(vc_lookup(&c, 1, "a", &e), 0);
    CHECK_EQ(e.nodeid, nw); /* the node moved with the file */
    CHECK_EQ(vc_lookup(&c, 1, "b", &e), -ENOENT);
    check_content(&c, 1, "a", "new!");
    /* the replaced node: no path, but fstat through its handle works, and so do requests
     * without a handle while one is open (the writeback cache's time flush, a stat of
     * /proc/PID/fd/N): they go through that handle, never the new file at the name */
    struct fuse_getattr_in gi = {.getattr_flags = FUSE_GETATTR_FH, .fh = fh_old};
    CHECK_EQ(vc_req(&c, FUSE_GETATTR, old, &gi, sizeof(gi), NULL, NULL, NULL, 0), 0);
    struct fuse_attr_out ao;
    memcpy(&ao, c.payload, sizeof(ao));
    CHECK_EQ(ao.attr.size, 3);
    struct fuse_attr oa;
    CHECK_EQ(vc_getattr(&c, old, &oa), 0);
    CHECK_EQ(oa.size, 3);
    struct fuse_setattr_in si = {.valid = FATTR_MTIME, .mtime = 12345};
    CHECK_EQ(vc_setattr(&c, old, &si, &oa), 0);
    CHECK_EQ(oa.mtime, 12345);
    CHECK_EQ(vc_getattr(&c, nw, &oa), 0);
    CHECK(oa.mtime != 12345);
    CHECK_EQ(vc_release(&c, old, fh_old), 0);
    /* no handle left: the node is unreachable */
    CHECK_EQ(vc_getattr(&c, old, NULL), -ENOENT);
    CHECK_EQ(vc_setattr(&c, old, &si, NULL), -ENOENT);
    /* a directory into itself */
    CHECK_EQ(vc_mkdir(&c, 1, "d", 0755, &e), 0);
    uint64_t d = e.nodeid;
    CHECK_EQ(vc_mkdir(&c, d, "sub", 0755, &e), 0);
    CHECK_EQ(vc_rename(&c, 1, "d", e.nodeid, "x", 0), -EINVAL);
    /* moved directories carry their children's paths */
    CHECK_EQ(vc_rename(&c, 1, "a", d, "a2", 0), 0);
    CHECK_EQ(vc_rename(&c, 1, "d", 1, "d2", 0), 0);
    check_content(&c, d, "a2", "new!");
    struct fuse_attr a;
    CHECK_EQ(vc_getattr(&c, nw, &a), 0);
    CHECK_EQ(a.size, 4);
    vc_close(&c);
}

TEST(vfs_rename_flags)
{
    struct vc c;
    vc_open(&c, mem(0), NULL);
    uint64_t a = mkfile(&c, 1, "a", "AAA", NULL);
    uint64_t b = mkfile(&c, 1, "b", "BB", NULL);
    CHECK_EQ(vc_rename(&c, 1, "a", 1, "b", RENAME_NOREPLACE), -EEXIST);
    check_content(&c, 1, "b", "BB");
    CHECK_EQ(vc_rename(&c, 1, "a", 1, "b", RENAME_EXCHANGE), 0);
    check_content(&c, 1, "a", "BB");
    check_content(&c, 1, "b", "AAA");
    struct fuse_entry_out e;
    CHECK_EQ(vc_lookup(&c, 1, "a", &e), 0);
    CHECK_EQ(e.nodeid, b); /* the nodes traded places */
    CHECK_EQ(vc_lookup(&c, 1, "b", &e), 0);
    CHECK_EQ(e.nodeid, a);
    CHECK_EQ(vc_rename(&c, 1, "a", 1, "zz", RENAME_EXCHANGE), -ENOENT);
    CHECK_EQ(vc_rename(&c, 1, "a", 1, "c", RENAME_NOREPLACE), 0);
    check_content(&c, 1, "c", "BB");
    CHECK_EQ(vc_rename(&c, 1, "c", 1, "d", RENAME_WHITEOUT), -EINVAL);
    /* a file over a directory, a directory over a non-empty one */
    CHECK_EQ(vc_mkdir(&c, 1, "dir", 0755, &e), 0);
    CHECK_EQ(vc_rename(&c, 1, "c", 1, "dir", 0), -EISDIR);
    CHECK_EQ(vc_rename(&c, 1, "dir", 1, "c", 0), -ENOTDIR);
    vc_close(&c);
}

TEST(vfs_hard_links_and_symlinks)
{
    struct vc c;
    vc_open(&c, mem(0), NULL);
    uint64_t a = mkfile(&c, 1, "a", "shared", NULL);
    struct fuse_entry_out e;
    CHECK_EQ(vc_link(&c, a, 1, "b", &e), 0);
    CHECK_EQ(e.attr.nlink, 2);
    CHECK(e.nodeid != a);
    CHECK_EQ(vc_link(&c, a, 1, "b", &e), -EEXIST);
    uint64_t fh;
    CHECK_EQ(vc_open_file(&c, e.nodeid, O_WRONLY, &fh), 0);
    CHECK_EQ(vc_write(&c, e.nodeid, fh, 0, "SH", 2), 2);
    CHECK_EQ(vc_release(&c, e.nodeid, fh), 0);
    check_content(&c, 1, "a", "SHared");
    CHECK_EQ(vc_unlink(&c, 1, "a"), 0);
    check_content(&c, 1, "b", "SHared");
    CHECK_EQ(vc_mkdir(&c, 1, "d", 0755, &e), 0);
    CHECK_EQ(vc_link(&c, e.nodeid, 1, "dl", &e), -EPERM);
    CHECK_EQ(vc_symlink(&c, 1, "s", "../../etc/passwd", &e), 0);
    CHECK(S_ISLNK(e.attr.mode));
    char buf[64];
    CHECK_EQ(vc_readlink(&c, e.nodeid, buf, sizeof(buf)), 0);
    CHECK_STR(buf, "../../etc/passwd");
    uint64_t fh2;
    CHECK_EQ(vc_open_file(&c, e.nodeid, O_RDONLY, &fh2), -ELOOP);
    vc_close(&c);
}

TEST(vfs_setattr_chmod_truncate_times)
{
    struct vc c;
    vc_open(&c, mem(0), NULL);
    uint64_t f = mkfile(&c, 1, "prog", "0123456789", NULL);
    struct fuse_setattr_in in = {.valid = FATTR_MODE, .mode = S_IFREG | 0755};
    struct fuse_attr a;
    CHECK_EQ(vc_setattr(&c, f, &in, &a), 0);
    CHECK_EQ(a.mode, S_IFREG | 0755); /* chmod +x */
    in = (struct fuse_setattr_in){.valid = FATTR_SIZE, .size = 4};
    CHECK_EQ(vc_setattr(&c, f, &in, &a), 0);
    CHECK_EQ(a.size, 4);
    check_content(&c, 1, "prog", "0123");
    in = (struct fuse_setattr_in){.valid = FATTR_SIZE, .size = 8};
    CHECK_EQ(vc_setattr(&c, f, &in, &a), 0);
    struct fuse_entry_out e;
    uint64_t fh;
    char buf[16];
    CHECK_EQ(vc_lookup(&c, 1, "prog", &e), 0);
    CHECK_EQ(vc_open_file(&c, f, O_RDONLY, &fh), 0);
    CHECK_EQ(vc_read(&c, f, fh, 0, buf, sizeof(buf)), 8);
    CHECK(!memcmp(buf, "0123\0\0\0\0", 8));
    /* ftruncate through the handle */
    in = (struct fuse_setattr_in){.valid = FATTR_SIZE | FATTR_FH, .size = 1, .fh = fh};
    CHECK_EQ(vc_setattr(&c, f, &in, &a), 0);
    CHECK_EQ(a.size, 1);
    in.fh = 4242;
    CHECK_EQ(vc_setattr(&c, f, &in, &a), -EBADF);
    CHECK_EQ(vc_release(&c, f, fh), 0);
    in = (struct fuse_setattr_in){
        .valid = FATTR_MTIME | FATTR_ATIME, .mtime = 1000000, .atime = 7, .mtimensec = 5};
    CHECK_EQ(vc_setattr(&c, f, &in, &a), 0);
    CHECK_EQ(a.mtime, 1000000);
    CHECK_EQ(a.mtimensec, 5);
    CHECK_EQ(a.atime, 7);
    in = (struct fuse_setattr_in){.valid = FATTR_UID | FATTR_GID, .uid = 1000, .gid = 100};
    CHECK_EQ(vc_setattr(&c, f, &in, &a), 0);
    CHECK_EQ(a.uid, 1000);
    CHECK_EQ(a.gid, 100);
    vc_close(&c);
}

TEST(vfs_xattrs)
{
    struct vc c;
    vc_open(&c, mem(0), NULL);
    uint64_t f = mkfile(&c, 1, "x", "", NULL);
    char buf[128];
    CHECK_EQ(vc_getxattr(&c, f, "user.k", buf, sizeof(buf)), -ENODATA);
    CHECK_EQ(vc_setxattr(&c, f, "user.k", "value", 5, 0), 0);
    CHECK_EQ(vc_setxattr(&c, f, "user.k", "v2", 2, XATTR_CREATE), -EEXIST);
    CHECK_EQ(vc_setxattr(&c, f, "user.none", "v2", 2, XATTR_REPLACE), -ENODATA);
    CHECK_EQ(vc_setxattr(&c, f, "user.other", "", 0, 0), 0);
    CHECK_EQ(vc_getxattr(&c, f, "user.k", NULL, 0), 5);
    CHECK_EQ(vc_getxattr(&c, f, "user.k", buf, sizeof(buf)), 5);
    CHECK(!memcmp(buf, "value", 5));
    CHECK_EQ(vc_getxattr(&c, f, "user.k", buf, 2), -ERANGE);
    CHECK_EQ(vc_listxattr(&c, f, NULL, 0), 7 + 11);
    CHECK_EQ(vc_listxattr(&c, f, buf, sizeof(buf)), 18);
    CHECK(!memcmp(buf, "user.k\0user.other\0", 18));
    CHECK_EQ(vc_removexattr(&c, f, "user.k"), 0);
    CHECK_EQ(vc_removexattr(&c, f, "user.k"), -ENODATA);
    CHECK_EQ(vc_listxattr(&c, f, buf, sizeof(buf)), 11);
    /* bounded per node */
    static char big[65536];
    char name[32];
    int e = 0;
    for (int i = 0; i < 4 && !e; i++) {
        snprintf(name, sizeof(name), "user.big%d", i);
        e = vc_setxattr(&c, f, name, big, sizeof(big), 0);
    }
    CHECK_EQ(e, -ENOSPC);
    vc_close(&c);
}

TEST(vfs_memory_cap_is_enospc)
{
    struct vc c;
    vc_open(&c, mem(64 << 10), NULL);
    struct fuse_entry_out e;
    uint64_t fh;
    CHECK_EQ(vc_create(&c, 1, "big", O_RDWR, 0644, &e, &fh), 0);
    static char chunk[16 << 10];
    long r = 0;
    uint64_t off = 0;
    for (int i = 0; i < 8; i++) {
        r = vc_write(&c, e.nodeid, fh, off, chunk, sizeof(chunk));
        if (r < 0)
            break;
        off += (uint64_t)r;
    }
    CHECK_EQ(r, -ENOSPC);
    CHECK_EQ(off, 64 << 10);
    struct fuse_setattr_in in = {.valid = FATTR_SIZE, .size = 1ull << 30};
    CHECK_EQ(vc_setattr(&c, e.nodeid, &in, NULL), -ENOSPC);
    /* freeing space makes room again */
    in.size = 0;
    CHECK_EQ(vc_setattr(&c, e.nodeid, &in, NULL), 0);
    CHECK_EQ(vc_write(&c, e.nodeid, fh, 0, chunk, sizeof(chunk)), (long)sizeof(chunk));
    CHECK_EQ(vc_release(&c, e.nodeid, fh), 0);
    /* the node cap (1024 for a small cap) */
    char name[32];
    int err = 0, made = 0;
    for (int i = 0; i < 2000 && !err; i++) {
        snprintf(name, sizeof(name), "n%d", i);
        err = vc_mknod(&c, 1, name, S_IFREG | 0644, 0, &e);
        if (!err) {
            made++;
            vc_forget(&c, e.nodeid, 1);
        }
    }
    CHECK_EQ(err, -ENOSPC);
    CHECK(made >= 1000 && made < 1024);
    vc_close(&c);
}

TEST(vfs_node_and_handle_caps)
{
    struct vc c;
    struct gd_vfs_session_opts o = {.max_nodes = 4, .max_handles = 2};
    vc_open(&c, mem(0), &o);
    struct fuse_entry_out e;
    char name[8];
    for (int i = 0; i < 4; i++) {
        snprintf(name, sizeof(name), "f%d", i);
        CHECK_EQ(vc_mknod(&c, 1, name, S_IFREG | 0644, 0, &e), 0);
    }
    /* past the cap: nothing is created */
    CHECK_EQ(vc_mknod(&c, 1, "f4", S_IFREG | 0644, 0, &e), -ENOMEM);
    vc_forget(&c, e.nodeid, 1); /* f3 */
    CHECK_EQ(vc_mknod(&c, 1, "f4", S_IFREG | 0644, 0, &e), 0);
    CHECK_EQ(vc_lookup(&c, 1, "f3", &e), -ENOMEM);
    /* READDIRPLUS past the cap lists names without nodes */
    uint64_t dfh;
    CHECK_EQ(vc_opendir(&c, 1, &dfh), 0);
    CHECK_EQ(vc_readdir(&c, 1, dfh, 0, 65536, 1), 0);
    size_t pos = 0;
    struct gd_fuse_dirent_view v;
    int without = 0, total = 0;
    while (gd_fuse_dirent_next(c.payload, c.paylen, &pos, 1, &v) == 1) {
        total++;
        without += v.entry.nodeid == 0;
    }
    CHECK_EQ(total, 2 + 5);
    CHECK_EQ(without, 2 + 1); /* the dots and f3 */
    /* handles: two open (the dir and one file), the third is refused */
    uint64_t fh, fh2;
    CHECK_EQ(vc_lookup(&c, 1, "f0", &e), 0);
    CHECK_EQ(vc_open_file(&c, e.nodeid, O_RDONLY, &fh), 0);
    CHECK_EQ(vc_open_file(&c, e.nodeid, O_RDONLY, &fh2), -ENFILE);
    CHECK_EQ(vc_release(&c, e.nodeid, fh), 0);
    CHECK_EQ(vc_open_file(&c, e.nodeid, O_RDONLY, &fh2), 0);
    vc_close(&c); /* releases the open handles */
}

TEST(vfs_path_too_deep)
{
    struct vc c;
    vc_open(&c, mem(0), NULL);
    char name[256];
    memset(name, 'd', 255);
    name[255] = 0;
    struct fuse_entry_out e;
    uint64_t dir = 1;
    int err = 0, depth = 0;
    while (!err && depth < 40) {
        err = vc_mkdir(&c, dir, name, 0755, &e);
        if (!err)
            dir = e.nodeid, depth++;
    }
    CHECK_EQ(err, -ENAMETOOLONG);
    CHECK_EQ(depth, 16); /* 16 x 256 bytes: 4095, the 17th passes PATH_MAX */
    vc_close(&c);
}

struct events {
    char log[4096];
    int deny_create;
};

static int before(void *ud, const struct gd_vfs_event *ev, char *reason, size_t cap)
{
    struct events *x = ud;
    if (x->deny_create && !strcmp(ev->op, "create")) {
        snprintf(reason, cap, "no");
        return -EACCES;
    }
    return 0;
}

static void after(void *ud, const struct gd_vfs_event *ev)
{
    struct events *x = ud;
    size_t n = strlen(x->log);
    snprintf(x->log + n, sizeof(x->log) - n, "%s %s%s%s r=%d w=%llu m=%d;", ev->op, ev->path,
             ev->path2 ? " " : "", ev->path2 ? ev->path2 : "", ev->result,
             (unsigned long long)ev->bytes_written, ev->mutating);
}

TEST(vfs_hooks_see_guest_paths)
{
    struct events x = {.deny_create = 1};
    struct gd_vfs_hooks hooks = {.before = before, .after = after, .ud = &x};
    struct gd_vfs_session_opts o = {.mount = "/work", .hooks = &hooks};
    struct vc c;
    vc_open(&c, mem(0), &o);
    struct fuse_entry_out e;
    uint64_t fh;
    CHECK_EQ(vc_create(&c, 1, "no", O_RDWR, 0644, &e, &fh), -EACCES);
    CHECK_EQ(vc_lookup(&c, 1, "no", &e), -ENOENT);
    CHECK_EQ(nodes(&c), 0);
    x.deny_create = 0;
    CHECK_EQ(vc_mkdir(&c, 1, "d", 0755, &e), 0);
    uint64_t f = mkfile(&c, e.nodeid, "f", "12345", NULL);
    (void)f;
    CHECK_EQ(vc_rename(&c, e.nodeid, "f", 1, "g", 0), 0);
    CHECK_STR(x.log, "mkdir /work/d r=0 w=0 m=1;create /work/d/f r=0 w=0 m=1;"
                     "close /work/d/f r=0 w=5 m=1;rename /work/d/f /work/g r=0 w=0 m=1;");
    vc_close(&c);
}

TEST(vfs_readonly_wrapper)
{
    gd_vfs_provider *inner = mem(0), *ro;
    /* something to read, made before wrapping */
    uint64_t fh;
    struct stat st;
    CHECK_EQ(inner->ops->create(inner->p, "f", O_RDWR, 0644, &fh, &st), 0);
    CHECK_EQ(inner->ops->write(inner->p, fh, "ro", 2, 0), 2);
    CHECK_EQ(inner->ops->release(inner->p, fh), 0);
    struct gd_err err;
    CHECK_EQ(gd_vfs_readonly_new(inner, &ro, &err), 0);
    CHECK(ro->flags & GD_VFS_READONLY);
    struct vc c;
    vc_open(&c, ro, NULL);
    CHECK(!(c.init_flags & FUSE_WRITEBACK_CACHE));
    check_content(&c, 1, "f", "ro");
    struct fuse_entry_out e;
    CHECK_EQ(vc_lookup(&c, 1, "f", &e), 0);
    uint64_t h;
    CHECK_EQ(vc_open_file(&c, e.nodeid, O_WRONLY, &h), -EROFS);
    CHECK_EQ(vc_open_file(&c, e.nodeid, O_RDONLY | O_TRUNC, &h), -EROFS);
    CHECK_EQ(vc_create(&c, 1, "g", O_RDWR, 0644, &e, &h), -EROFS);
    CHECK_EQ(vc_mkdir(&c, 1, "d", 0755, &e), -EROFS);
    CHECK_EQ(vc_unlink(&c, 1, "f"), -EROFS);
    CHECK_EQ(vc_rename(&c, 1, "f", 1, "g", 0), -EROFS);
    CHECK_EQ(vc_setxattr(&c, e.nodeid, "user.a", "b", 1, 0), -EROFS);
    struct fuse_setattr_in in = {.valid = FATTR_MODE, .mode = 0777};
    CHECK_EQ(vc_setattr(&c, e.nodeid, &in, NULL), -EROFS);
    /* and directly, without the session */
    CHECK_EQ(ro->ops->open(ro->p, "f", O_RDWR, &h), -EROFS);
    CHECK(!ro->ops->write && !ro->ops->unlink);
    vc_close(&c);
}

TEST(vfs_statfs_and_misc_ops)
{
    struct vc c;
    vc_open(&c, mem(1 << 20), NULL);
    CHECK_EQ(vc_req(&c, FUSE_STATFS, 1, NULL, 0, NULL, NULL, NULL, 0), 0);
    struct fuse_statfs_out so;
    memcpy(&so, c.payload, sizeof(so));
    CHECK_EQ(so.st.blocks, 256);
    CHECK_EQ(so.st.bsize, 4096);
    struct fuse_access_in ai = {.mask = 4};
    CHECK_EQ(vc_req(&c, FUSE_ACCESS, 1, &ai, sizeof(ai), NULL, NULL, NULL, 0), -ENOSYS);
    struct fuse_interrupt_in ii = {.unique = 3};
    CHECK_EQ(vc_req(&c, FUSE_INTERRUPT, 0, &ii, sizeof(ii), NULL, NULL, NULL, 0), 0);
    CHECK_EQ(vc_last(&c), 0);
    struct fuse_syncfs_in si = {0};
    CHECK_EQ(vc_req(&c, FUSE_SYNCFS, 1, &si, sizeof(si), NULL, NULL, NULL, 0), 0);
    uint64_t fh;
    uint64_t f = mkfile(&c, 1, "f", "abc", &fh);
    struct fuse_fallocate_in fa = {.fh = fh, .offset = 0, .length = 100};
    CHECK_EQ(vc_req(&c, FUSE_FALLOCATE, f, &fa, sizeof(fa), NULL, NULL, NULL, 0), 0);
    fa.offset = UINT64_MAX;
    CHECK_EQ(vc_req(&c, FUSE_FALLOCATE, f, &fa, sizeof(fa), NULL, NULL, NULL, 0), -EFBIG);
    struct fuse_lseek_in li = {.fh = fh, .offset = 5, .whence = SEEK_HOLE};
    CHECK_EQ(vc_req(&c, FUSE_LSEEK, f, &li, sizeof(li), NULL, NULL, NULL, 0), 0);
    struct fuse_lseek_out lo;
    memcpy(&lo, c.payload, sizeof(lo));
    CHECK_EQ(lo.offset, 100);
    struct fuse_flush_in fl = {.fh = fh};
    /* memory has nothing to do at close: ENOSYS, and the kernel stops sending FLUSH */
    CHECK_EQ(vc_req(&c, FUSE_FLUSH, f, &fl, sizeof(fl), NULL, NULL, NULL, 0), -ENOSYS);
    struct fuse_fsync_in fs = {.fh = fh};
    CHECK_EQ(vc_req(&c, FUSE_FSYNC, f, &fs, sizeof(fs), NULL, NULL, NULL, 0), 0);
    struct fuse_lk_in lk = {.fh = fh};
    CHECK_EQ(vc_req(&c, FUSE_GETLK, f, &lk, sizeof(lk), NULL, NULL, NULL, 0), -ENOSYS);
    /* a reply buffer too small for the reply: EIO, nothing done */
    struct fuse_in_header h = {
        .len = sizeof(h) + 2, .opcode = FUSE_LOOKUP, .unique = 99, .nodeid = 1};
    uint8_t m[sizeof(h) + 2];
    memcpy(m, &h, sizeof(h));
    memcpy(m + sizeof(h), "f", 2);
    uint8_t small[32];
    CHECK_EQ(gd_vfs_session_handle(c.s, m, sizeof(m), small, sizeof(small)), 16);
    struct fuse_out_header oh;
    memcpy(&oh, small, sizeof(oh));
    CHECK_EQ(oh.error, -EIO);
    CHECK_EQ(gd_vfs_session_handle(c.s, m, sizeof(m), small, 8), -EPROTO);
    CHECK_EQ(vc_release(&c, f, fh), 0);
    vc_close(&c);
}

TEST(vfs_mount_parse)
{
    struct gd_mount m;
    char buf[4096];
    struct gd_err err;
    CHECK_EQ(gd_mount_parse(GD_MOUNT_MEMORY, "/data:64M", &m, buf, sizeof(buf), &err), 0);
    CHECK_STR(m.guest, "/data");
    CHECK_EQ(m.size, 64ull << 20);
    CHECK_EQ(gd_mount_parse(GD_MOUNT_MEMORY, "/scratch", &m, buf, sizeof(buf), &err), 0);
    CHECK_EQ(m.size, 0);
    CHECK_EQ(gd_mount_parse(GD_MOUNT_MEMORY, "/a/b:2g", &m, buf, sizeof(buf), &err), 0);
    CHECK_EQ(m.size, 2ull << 30);
    CHECK_EQ(gd_mount_parse(GD_MOUNT_MEMORY, "/a:4096", &m, buf, sizeof(buf), &err), 0);
    CHECK_EQ(m.size, 4096);
    CHECK_EQ(gd_mount_parse(GD_MOUNT_HOSTFS, "/tmp:/work:ro", &m, buf, sizeof(buf), &err), 0);
    CHECK_STR(m.host, "/tmp");
    CHECK_STR(m.guest, "/work");
    CHECK_EQ(m.readonly, 1);
    CHECK_EQ(m.kind, GD_MOUNT_HOSTFS);
    CHECK_EQ(gd_mount_parse(GD_MOUNT_HOSTFS, "/tmp/../tmp:/w", &m, buf, sizeof(buf), &err), 0);
    CHECK_STR(m.host, "/tmp"); /* made absolute and real */
    CHECK_EQ(m.readonly, 0);
    CHECK_EQ(gd_mount_parse(GD_MOUNT_OVERLAY, "/tmp:/w", &m, buf, sizeof(buf), &err), 0);
    CHECK_EQ(m.kind, GD_MOUNT_OVERLAY);
    CHECK_EQ(m.cache_always, 0);
    /* options after the guest path, in any order; the last of each wins */
    static const struct {
        enum gd_mount_kind k;
        const char *arg, *guest;
        int ro, cache;
    } opts[] = {
        {GD_MOUNT_HOSTFS, "/tmp:/w:ro:cache=always", "/w", 1, 1},
        {GD_MOUNT_HOSTFS, "/tmp:/w:cache=always:ro:rw", "/w", 0, 1},
        {GD_MOUNT_HOSTFS, "/tmp:/w:cache=always:cache=auto", "/w", 0, 0},
        {GD_MOUNT_OVERLAY, "/tmp:/src:cache=always", "/src", 0, 1},
    };
    for (size_t i = 0; i < sizeof(opts) / sizeof(*opts); i++) {
        CHECK_EQ(gd_mount_parse(opts[i].k, opts[i].arg, &m, buf, sizeof(buf), &err), 0);
        CHECK_STR(m.guest, opts[i].guest);
        CHECK_EQ(m.readonly, opts[i].ro);
        CHECK_EQ(m.cache_always, opts[i].cache);
    }
    static const struct {
        enum gd_mount_kind k;
        const char *arg, *msg;
    } bad[] = {
        {GD_MOUNT_MEMORY, "data", "absolute"},
        {GD_MOUNT_MEMORY, "/", "over the guest's /"},
        {GD_MOUNT_MEMORY, "/a/", "end with '/'"},
        {GD_MOUNT_MEMORY, "/a//b", "'//'"},
        {GD_MOUNT_MEMORY, "/a/../b", "'..'"},
        {GD_MOUNT_MEMORY, "/a/./b", "'.'"},
        {GD_MOUNT_MEMORY, "/a b", "spaces"},
        {GD_MOUNT_MEMORY, "/a,b", "','"},
        {GD_MOUNT_MEMORY, "/a\tb", "non-printable"},
        {GD_MOUNT_MEMORY, "/a:", "not a number"},
        {GD_MOUNT_MEMORY, "/a:12X", "not a number"},
        {GD_MOUNT_MEMORY, "/a:0", "more than 0"},
        {GD_MOUNT_MEMORY, "/a:99999999999999999999", "too large"},
        {GD_MOUNT_MEMORY, "/a:17179869184G", "too large"},
        {GD_MOUNT_HOSTFS, "/tmp", "expected HOST:GUEST"},
        {GD_MOUNT_HOSTFS, ":/w", "expected HOST:GUEST"},
        {GD_MOUNT_HOSTFS, "/nonexistent-gd:/w", "No such file"},
        {GD_MOUNT_HOSTFS, "/etc/passwd:/w", "not a directory"},
        {GD_MOUNT_HOSTFS, "/tmp:w", "absolute"},
        {GD_MOUNT_HOSTFS, "/tmp:/w:x", "absolute"}, /* the last ':' splits */
        {GD_MOUNT_HOSTFS, "/tmp:/w:cache=never", "cache is 'auto' or 'always', got 'never'"},
        {GD_MOUNT_HOSTFS, "/tmp:/w:cache=", "cache is 'auto' or 'always'"},
        {GD_MOUNT_OVERLAY, "/tmp:/w:ro", "absolute"}, /* ro is hostfs's */
        {GD_MOUNT_HOSTFS, "/tmp:ro", "expected HOST:GUEST[:ro][:cache=always]"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(*bad); i++) {
        err.msg[0] = 0;
        if (gd_mount_parse(bad[i].k, bad[i].arg, &m, buf, sizeof(buf), &err) >= 0)
            FAIL_AT("'%s' was accepted", bad[i].arg);
        CHECK_CONTAINS(err.msg, bad[i].msg);
        CHECK(!strchr(err.msg, '\n'));
    }
    CHECK(gd_mount_parse(GD_MOUNT_HOSTFS, "/tmp:/w", &m, buf, 6, &err) < 0);
}

TEST(vfs_mount_provider)
{
    struct gd_mount m;
    char buf[4096];
    struct gd_err err;
    gd_vfs_provider *pv;
    CHECK_EQ(gd_mount_parse(GD_MOUNT_MEMORY, "/d:1M", &m, buf, sizeof(buf), &err), 0);
    CHECK_EQ(gd_mount_provider(&m, &pv, &err), 0);
    CHECK_STR(pv->name, "memory");
    gd_vfs_provider_free(pv);
    CHECK_EQ(gd_mount_parse(GD_MOUNT_HOSTFS, "/tmp:/w:ro", &m, buf, sizeof(buf), &err), 0);
    CHECK_EQ(gd_mount_provider(&m, &pv, &err), 0);
    CHECK_STR(pv->name, "readonly");
    CHECK(pv->flags & GD_VFS_READONLY);
    gd_vfs_provider_free(pv);
    CHECK_EQ(gd_mount_parse(GD_MOUNT_HOSTFS, "/tmp:/w", &m, buf, sizeof(buf), &err), 0);
    CHECK_EQ(gd_mount_provider(&m, &pv, &err), 0);
    CHECK_STR(pv->name, "hostfs");
    CHECK(!(pv->flags & GD_VFS_EXCLUSIVE));
    gd_vfs_provider_free(pv);
    const char *hide[] = {".env", NULL};
    m.hide = hide;
    CHECK_EQ(gd_mount_provider(&m, &pv, &err), 0); /* hide: a shadow around it */
    CHECK_STR(pv->name, "shadow");
    gd_vfs_provider_free(pv);
    CHECK_EQ(gd_mount_parse(GD_MOUNT_OVERLAY, "/tmp:/w", &m, buf, sizeof(buf), &err), 0);
    CHECK_EQ(gd_mount_provider(&m, &pv, &err), 0);
    CHECK_STR(pv->name, "overlay");
    CHECK(!(pv->flags & GD_VFS_EXCLUSIVE));
    gd_vfs_provider_free(pv);
    /* cache=always: exclusive (long TTLs, writeback), through the hide wrapper too */
    CHECK_EQ(gd_mount_parse(GD_MOUNT_OVERLAY, "/tmp:/w:cache=always", &m, buf, sizeof(buf), &err),
             0);
    CHECK_EQ(gd_mount_provider(&m, &pv, &err), 0);
    CHECK(pv->flags & GD_VFS_EXCLUSIVE);
    gd_vfs_provider_free(pv);
    CHECK_EQ(gd_mount_parse(GD_MOUNT_HOSTFS, "/tmp:/w:cache=always", &m, buf, sizeof(buf), &err),
             0);
    m.hide = hide;
    CHECK_EQ(gd_mount_provider(&m, &pv, &err), 0);
    CHECK_STR(pv->name, "shadow");
    CHECK(pv->flags & GD_VFS_EXCLUSIVE);
    gd_vfs_provider_free(pv);
    gd_vfs_provider_free(NULL);
}

/* A provider that trusts the session to send WRITE only through writable handles (as a
 * Lua or plugin provider may): it counts the writes it got. */
static int wstub_writes;
static int wstub_getattr(void *p, const char *path, struct stat *st)
{
    (void)p;
    memset(st, 0, sizeof(*st));
    st->st_mode = *path ? S_IFREG | 0644 : S_IFDIR | 0755;
    st->st_ino = *path ? 2 : 1;
    st->st_nlink = 1;
    return 0;
}
static int wstub_open(void *p, const char *path, int flags, uint64_t *fh)
{
    (void)p, (void)path, (void)flags;
    *fh = 7;
    return 0;
}
static ssize_t wstub_write(void *p, uint64_t fh, const void *buf, size_t n, uint64_t off)
{
    (void)p, (void)fh, (void)buf, (void)off;
    wstub_writes++;
    return (ssize_t)n;
}
static int wstub_fallocate(void *p, uint64_t fh, int mode, uint64_t off, uint64_t len)
{
    (void)p, (void)fh, (void)mode, (void)off, (void)len;
    wstub_writes++;
    return 0;
}
static ssize_t wstub_read(void *p, uint64_t fh, void *buf, size_t n, uint64_t off)
{
    (void)p, (void)fh, (void)buf, (void)n, (void)off;
    return 0;
}
static const struct gd_vfs_ops wstub_ops = {
    .getattr = wstub_getattr,
    .read = wstub_read,
    .open = wstub_open,
    .write = wstub_write,
    .fallocate = wstub_fallocate,
};

/* A session over a stub provider; e: the lookup of its file "f". */
static void stub_session(struct vc *c, const struct gd_vfs_ops *ops, unsigned flags,
                         struct fuse_entry_out *e)
{
    gd_vfs_provider *pv = calloc(1, sizeof(*pv));
    CHECK(pv);
    pv->ops = ops;
    pv->name = "stub";
    pv->flags = flags;
    vc_open(c, pv, NULL);
    CHECK_EQ(vc_lookup(c, 1, "f", e), 0);
}

/* The open hook saw a read-only open: no WRITE or FALLOCATE may follow on that handle. */
TEST(vfs_write_through_readonly_handle)
{
    struct vc c;
    struct fuse_entry_out e;
    stub_session(&c, &wstub_ops, 0, &e);
    uint64_t fh;
    CHECK_EQ(vc_open_file(&c, e.nodeid, O_RDONLY, &fh), 0);
    wstub_writes = 0;
    CHECK_EQ(vc_write(&c, e.nodeid, fh, 0, "x", 1), -EBADF);
    struct fuse_fallocate_in fa = {.fh = fh, .length = 10};
    CHECK_EQ(vc_req(&c, FUSE_FALLOCATE, e.nodeid, &fa, sizeof(fa), NULL, NULL, NULL, 0), -EBADF);
    CHECK_EQ(wstub_writes, 0);
    CHECK_EQ(vc_open_file(&c, e.nodeid, O_WRONLY, &fh), 0);
    CHECK_EQ(vc_write(&c, e.nodeid, fh, 0, "x", 1), 1);
    CHECK_EQ(wstub_writes, 1);
    /* and no READ through a write-only handle (no writeback cache here) */
    char buf[4];
    CHECK_EQ(vc_read(&c, e.nodeid, fh, 0, buf, sizeof(buf)), -EBADF);
    vc_close(&c);
}

/* With the writeback cache a write-only open is asked read-write (the kernel fills partial
 * pages through it); a provider that refuses reading gets the guest's own mode back. */
static int wo_opens[4], wo_nopens;
static int wo_open(void *p, const char *path, int flags, uint64_t *fh)
{
    (void)p, (void)path;
    if (wo_nopens < 4)
        wo_opens[wo_nopens++] = flags;
    if ((flags & O_ACCMODE) == O_RDWR)
        return -EACCES; /* a 0200 file on the host */
    *fh = 9;
    return 0;
}
static const struct gd_vfs_ops wo_ops = {
    .getattr = wstub_getattr,
    .read = wstub_read,
    .open = wo_open,
    .write = wstub_write,
};

TEST(vfs_writeback_write_only_file)
{
    struct vc c;
    struct fuse_entry_out e;
    stub_session(&c, &wo_ops, GD_VFS_EXCLUSIVE, &e);
    CHECK(c.init_flags & FUSE_WRITEBACK_CACHE);
    uint64_t fh;
    wo_nopens = 0;
    CHECK_EQ(vc_open_file(&c, e.nodeid, O_WRONLY | O_APPEND, &fh), 0);
    CHECK_EQ(wo_nopens, 2);
    CHECK_EQ(wo_opens[0], O_RDWR);   /* asked read-write, without O_APPEND */
    CHECK_EQ(wo_opens[1], O_WRONLY); /* refused: the guest's mode (O_APPEND stays ours) */
    CHECK_EQ(vc_write(&c, e.nodeid, fh, 0, "x", 1), 1);
    CHECK_EQ(vc_release(&c, e.nodeid, fh), 0);
    /* a read-only open is never retried */
    wo_nopens = 0;
    CHECK_EQ(vc_open_file(&c, e.nodeid, O_RDONLY, &fh), 0);
    CHECK_EQ(wo_nopens, 1);
    CHECK_EQ(vc_release(&c, e.nodeid, fh), 0);
    vc_close(&c);
}
