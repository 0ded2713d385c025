/* The overlay (core/vfs/overlay*.c) over a real hostfs of a temp dir and a memory upper
 * layer, and the shadow (core/vfs/shadow.c), driven through gd_vfs_ops as the session
 * would, plus a few requests through the FUSE session. The host tree is hashed before
 * and after: the overlay never changes it. */
#define _GNU_SOURCE
#include "base/err.h"
#include "test.h"
#include "vfs/vfs.h"
#include "vfs_client.h"

#include <archive.h>
#include <archive_entry.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- the host tree ---- */

static char root[64];

static void host_write(const char *rel, const char *data)
{
    char p[PATH_MAX];
    snprintf(p, sizeof(p), "%s/%s", root, rel);
    FILE *f = fopen(p, "w");
    if (!f)
        FAIL_AT("fopen %s: %s", p, strerror(errno));
    fputs(data, f);
    fclose(f);
}

static void host_mkdir(const char *rel)
{
    char p[PATH_MAX];
    snprintf(p, sizeof(p), "%s/%s", root, rel);
    CHECK_EQ(mkdir(p, 0755), 0);
}

static void host_tree(void)
{
    snprintf(root, sizeof(root), "/tmp/gd-ovl-XXXXXX");
    CHECK(mkdtemp(root));
    host_mkdir("a");
    host_mkdir("a/sub");
    host_mkdir("b");
    host_mkdir("empty");
    host_write("a/f", "hello");
    host_write("a/g", "gee");
    host_write("a/sub/deep", "deep");
    host_write("b/x", "x");
    host_write("top", "top");
    char p[PATH_MAX];
    snprintf(p, sizeof(p), "%s/link", root);
    CHECK_EQ(symlink("a/f", p), 0);
    snprintf(p, sizeof(p), "%s/a/f", root);
    struct timespec ts[2] = {{1000000, 5}, {2000000, 7}};
    CHECK_EQ(utimensat(AT_FDCWD, p, ts, AT_SYMLINK_NOFOLLOW), 0);
}

static uint64_t tree_hash;

static void mix(const void *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        tree_hash = (tree_hash ^ ((const unsigned char *)p)[i]) * 1099511628211ULL;
}

static int hash_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)flag, (void)ftw;
    mix(path, strlen(path) + 1);
    mix(&st->st_mode, sizeof(st->st_mode));
    mix(&st->st_ino, sizeof(st->st_ino));
    mix(&st->st_nlink, sizeof(st->st_nlink));
    mix(&st->st_mtim, sizeof(st->st_mtim));
    if (!S_ISDIR(st->st_mode))
        mix(&st->st_size, sizeof(st->st_size));
    if (S_ISREG(st->st_mode)) {
        FILE *f = fopen(path, "r");
        char buf[4096];
        size_t n;
        CHECK(f);
        while ((n = fread(buf, 1, sizeof(buf), f)) > 0)
            mix(buf, n);
        fclose(f);
    } else if (S_ISLNK(st->st_mode)) {
        char t[PATH_MAX];
        ssize_t n = readlink(path, t, sizeof(t));
        CHECK(n > 0);
        mix(t, (size_t)n);
    }
    return 0;
}

static uint64_t host_hash(void)
{
    tree_hash = 1469598103934665603ULL;
    CHECK_EQ(nftw(root, hash_one, 16, FTW_PHYS), 0);
    return tree_hash;
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

static void host_clean(void)
{
    nftw(root, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* ---- providers ---- */

static gd_vfs_provider *overlay(void)
{
    struct gd_err err = {{0}};
    gd_vfs_provider *lo, *up, *ov;
    if (gd_vfs_hostfs_new(root, 1, &lo, &err))
        FAIL_AT("hostfs: %s", err.msg);
    CHECK_EQ(gd_vfs_memory_new(1 << 20, &up, &err), 0);
    CHECK_EQ(gd_vfs_overlay_new(lo, up, &ov, &err), 0);
    return ov;
}

#define OP(pv, op, ...) ((pv)->ops->op((pv)->p, __VA_ARGS__))

static int st_of(gd_vfs_provider *pv, const char *path, struct stat *st)
{
    return OP(pv, getattr, path, st);
}

static int exists(gd_vfs_provider *pv, const char *path)
{
    struct stat st;
    return st_of(pv, path, &st) == 0;
}

/* the whole file as a string (static buffer) */
static const char *cat(gd_vfs_provider *pv, const char *path)
{
    static char buf[8192];
    uint64_t fh;
    int e = OP(pv, open, path, O_RDONLY, &fh);
    if (e)
        return strerror(-e);
    ssize_t n = OP(pv, read, fh, buf, sizeof(buf) - 1, 0);
    CHECK(n >= 0);
    buf[n] = 0;
    CHECK_EQ(OP(pv, release, fh), 0);
    return buf;
}

static void put(gd_vfs_provider *pv, const char *path, const char *data)
{
    uint64_t fh;
    struct stat st;
    int e = OP(pv, open, path, O_WRONLY | O_TRUNC, &fh);
    if (e == -ENOENT)
        e = OP(pv, create, path, O_WRONLY | O_CREAT, 0644, &fh, &st);
    if (e)
        FAIL_AT("put %s: %s", path, strerror(-e));
    CHECK_EQ(OP(pv, write, fh, data, strlen(data), 0), (long)strlen(data));
    CHECK_EQ(OP(pv, release, fh), 0);
}

/* the names of a directory, sorted, joined with ' ', read in steps of `step` entries */
struct lsctx {
    char names[256][64];
    int n, in_call, step;
    uint64_t last;
};

static int ls_fill(void *vc, const char *name, uint64_t off, unsigned type, const struct stat *st)
{
    struct lsctx *c = vc;
    (void)type, (void)st;
    if (c->in_call == c->step || c->n == 256)
        return 1;
    if (off >= (uint64_t)INT64_MAX - 2)
        FAIL_AT("cookie %llu too big", (unsigned long long)off);
    c->in_call++;
    c->last = off;
    if (!strcmp(name, ".") || !strcmp(name, ".."))
        return 0;
    snprintf(c->names[c->n++], 64, "%s", name);
    return 0;
}

static int by_name(const void *a, const void *b)
{
    return strcmp(a, b);
}

static const char *ls_step(gd_vfs_provider *pv, const char *dir, int step)
{
    static char out[256 * 65];
    struct lsctx c = {.step = step};
    uint64_t fh, off = 0;
    int e = OP(pv, opendir, dir, &fh);
    if (e)
        return strerror(-e);
    for (;;) {
        c.in_call = 0;
        CHECK_EQ(OP(pv, readdir, dir, fh, off, ls_fill, &c), 0);
        if (c.in_call == 0)
            break;
        off = c.last;
    }
    CHECK_EQ(OP(pv, releasedir, fh), 0);
    qsort(c.names, (size_t)c.n, sizeof(c.names[0]), by_name);
    out[0] = 0;
    for (int i = 0; i < c.n; i++) {
        if (i)
            strcat(out, " ");
        strcat(out, c.names[i]);
    }
    return out;
}

static const char *ls(gd_vfs_provider *pv, const char *dir)
{
    return ls_step(pv, dir, 1000);
}

/* ---- overlay ---- */

TEST(overlay_reads_the_lower_layer)
{
    host_tree();
    uint64_t h0 = host_hash();
    gd_vfs_provider *ov = overlay();
    CHECK_STR(ls(ov, ""), "a b empty link top");
    CHECK_STR(ls(ov, "a"), "f g sub");
    CHECK_STR(cat(ov, "a/f"), "hello");
    char t[64];
    CHECK_EQ(OP(ov, readlink, "link", t, sizeof(t)), 3);
    CHECK_EQ(OP(ov, getattr, "nope", &(struct stat){0}), -ENOENT);
    CHECK_EQ(OP(ov, getattr, "top/x", &(struct stat){0}), -ENOENT);
    gd_vfs_provider_free(ov);
    CHECK_EQ(host_hash(), h0);
    host_clean();
}

TEST(overlay_copy_up_keeps_data_mode_times_and_ino)
{
    host_tree();
    uint64_t h0 = host_hash();
    gd_vfs_provider *ov = overlay();
    struct stat before, after;
    CHECK_EQ(st_of(ov, "a/f", &before), 0);
    uint64_t rfh, wfh;
    CHECK_EQ(OP(ov, open, "a/f", O_RDONLY, &rfh), 0);
    CHECK_EQ(OP(ov, open, "a/f", O_RDWR, &wfh), 0);
    CHECK_EQ(OP(ov, write, wfh, "J", 1, 0), 1);
    char buf[16] = {0};
    CHECK_EQ(OP(ov, read, wfh, buf, sizeof(buf), 0), 5);
    CHECK_STR(buf, "Jello");
    CHECK_EQ(OP(ov, release, wfh), 0);
    CHECK_EQ(OP(ov, release, rfh), 0);
    CHECK_STR(cat(ov, "a/f"), "Jello");
    CHECK_EQ(st_of(ov, "a/f", &after), 0);
    CHECK_EQ(after.st_ino, before.st_ino);
    CHECK_EQ(after.st_mode, before.st_mode);
    CHECK_EQ(after.st_uid, before.st_uid);
    /* setattr copies up without touching data; mtime and ino kept */
    CHECK_EQ(st_of(ov, "a/g", &before), 0);
    struct gd_vfs_setattr a = {.valid = GD_VFS_SET_MODE, .mode = 0600};
    CHECK_EQ(OP(ov, setattr, "a/g", 0, &a, &after), 0);
    CHECK_EQ(after.st_mode & 07777, 0600);
    CHECK_EQ(after.st_mtim.tv_sec, before.st_mtim.tv_sec);
    CHECK_EQ(after.st_mtim.tv_nsec, before.st_mtim.tv_nsec);
    CHECK_EQ(after.st_ino, before.st_ino);
    CHECK_STR(cat(ov, "a/g"), "gee");
    /* O_TRUNC copies up empty */
    put(ov, "a/sub/deep", "new");
    CHECK_STR(cat(ov, "a/sub/deep"), "new");
    /* xattrs and a new file in a lower dir */
    CHECK_EQ(OP(ov, setxattr, "b/x", "user.k", "v", 1, 0), 0);
    CHECK_EQ(OP(ov, getxattr, "b/x", "user.k", buf, sizeof(buf)), 1);
    put(ov, "b/new", "n");
    CHECK_STR(ls(ov, "b"), "new x");
    gd_vfs_provider_free(ov);
    CHECK_EQ(host_hash(), h0);
    host_clean();
}

TEST(overlay_whiteouts_and_opaque_dirs)
{
    host_tree();
    uint64_t h0 = host_hash();
    gd_vfs_provider *ov = overlay();
    CHECK_EQ(OP(ov, unlink, "a/f"), 0);
    CHECK(!exists(ov, "a/f"));
    CHECK_EQ(OP(ov, unlink, "a/f"), -ENOENT);
    CHECK_STR(ls(ov, "a"), "g sub");
    put(ov, "a/f", "again");
    CHECK_STR(cat(ov, "a/f"), "again");
    CHECK_EQ(OP(ov, rmdir, "a/sub"), -ENOTEMPTY);
    CHECK_EQ(OP(ov, unlink, "a/sub/deep"), 0);
    CHECK_EQ(OP(ov, rmdir, "a/sub"), 0);
    CHECK(!exists(ov, "a/sub"));
    CHECK_EQ(OP(ov, rmdir, "b"), -ENOTEMPTY);
    CHECK_EQ(OP(ov, unlink, "b/x"), 0);
    CHECK_EQ(OP(ov, rmdir, "b"), 0);
    struct stat st;
    CHECK_EQ(OP(ov, mkdir, "b", 0755, &st), 0);
    CHECK_STR(ls(ov, "b"), ""); /* opaque: b/x stays gone */
    CHECK(!exists(ov, "b/x"));
    CHECK_EQ(OP(ov, mkdir, "a/sub", 0755, &st), 0);
    CHECK(!exists(ov, "a/sub/deep"));
    CHECK_EQ(OP(ov, rmdir, "empty"), 0);
    CHECK_EQ(OP(ov, unlink, "link"), 0);
    CHECK_STR(ls(ov, ""), "a b top");
    gd_vfs_provider_free(ov);
    CHECK_EQ(host_hash(), h0);
    host_clean();
}

TEST(overlay_readdir_merges_with_stable_cookies)
{
    host_tree();
    char n[32];
    host_mkdir("many");
    for (int i = 0; i < 100; i++) {
        snprintf(n, sizeof(n), "many/l%03d", i);
        host_write(n, "l");
    }
    gd_vfs_provider *ov = overlay();
    for (int i = 0; i < 5; i++) {
        snprintf(n, sizeof(n), "many/u%d", i);
        put(ov, n, "u");
    }
    put(ov, "many/l010", "changed");
    CHECK_EQ(OP(ov, unlink, "many/l020"), 0);
    CHECK_EQ(OP(ov, unlink, "many/l021"), 0);
    /* read in steps of 7 entries, copying files up in the middle of the listing */
    struct lsctx c = {.step = 7};
    uint64_t fh, off = 0;
    CHECK_EQ(OP(ov, opendir, "many", &fh), 0);
    for (int round = 0;; round++) {
        c.in_call = 0;
        CHECK_EQ(OP(ov, readdir, "many", fh, off, ls_fill, &c), 0);
        if (!c.in_call)
            break;
        off = c.last;
        if (round == 3) {
            put(ov, "many/l000", "up"); /* already listed */
            put(ov, "many/l099", "up"); /* not yet */
            put(ov, "many/zz", "new");  /* added during: may or may not show */
        }
    }
    CHECK_EQ(OP(ov, releasedir, fh), 0);
    qsort(c.names, (size_t)c.n, sizeof(c.names[0]), by_name);
    int seen_l = 0, seen_u = 0;
    for (int i = 0; i < c.n; i++) {
        if (i)
            CHECK(strcmp(c.names[i - 1], c.names[i]) != 0); /* each name once */
        seen_l += c.names[i][0] == 'l';
        seen_u += c.names[i][0] == 'u';
        CHECK(strcmp(c.names[i], "l020") && strcmp(c.names[i], "l021"));
    }
    CHECK_EQ(seen_l, 98);
    CHECK_EQ(seen_u, 5);
    /* a fresh listing, one entry per call, agrees */
    const char *one = ls_step(ov, "many", 1);
    CHECK_CONTAINS(one, "l000 l001");
    CHECK_CONTAINS(one, "u4 zz");
    gd_vfs_provider_free(ov);
    host_clean();
}

TEST(overlay_rename_link_symlink)
{
    host_tree();
    uint64_t h0 = host_hash();
    gd_vfs_provider *ov = overlay();
    struct stat st;
    CHECK_EQ(OP(ov, rename, "a/f", "b/f2", 0), 0);
    CHECK(!exists(ov, "a/f"));
    CHECK_STR(cat(ov, "b/f2"), "hello");
    CHECK_EQ(OP(ov, rename, "b/f2", "top", 0), 0); /* over a lower file */
    CHECK_STR(cat(ov, "top"), "hello");
    CHECK_EQ(OP(ov, rename, "a", "a2", 0), -EXDEV); /* lower entries below */
    CHECK_EQ(OP(ov, mkdir, "d", 0755, &st), 0);
    put(ov, "d/in", "in");
    CHECK_EQ(OP(ov, rename, "d", "empty", 0), 0); /* an upper dir over an empty lower one */
    CHECK_STR(ls(ov, "empty"), "in");
    CHECK_EQ(OP(ov, rename, "empty", "e2", 0), 0); /* pure upper now: it moves */
    CHECK(!exists(ov, "empty"));
    CHECK_STR(ls(ov, "e2"), "in");
    CHECK_EQ(OP(ov, rename, "a/g", "b", 0), -EISDIR);
    CHECK_EQ(OP(ov, rename, "a/g", "b/x", RENAME_NOREPLACE), -EEXIST);
    CHECK_EQ(OP(ov, rename, "a/g", "b/x", RENAME_EXCHANGE), 0);
    CHECK_STR(cat(ov, "b/x"), "gee");
    CHECK_STR(cat(ov, "a/g"), "x");
    /* hard links live in the upper layer */
    CHECK_EQ(OP(ov, link, "a/sub/deep", "a/deep2", &st), 0);
    CHECK_EQ(st.st_nlink, 2);
    put(ov, "a/deep2", "via link");
    CHECK_STR(cat(ov, "a/sub/deep"), "via link");
    CHECK_EQ(OP(ov, link, "a", "a3", &st), -EPERM);
    CHECK_EQ(OP(ov, symlink, "../top", "a/s", &st), 0);
    char t[64];
    CHECK_EQ(OP(ov, readlink, "a/s", t, sizeof(t)), 6);
    struct statvfs vs;
    CHECK_EQ(OP(ov, statfs, "", &vs), 0);
    CHECK(vs.f_bfree > 0);
    gd_vfs_provider_free(ov);
    CHECK_EQ(host_hash(), h0);
    host_clean();
}

struct chg {
    char s[4096];
};

static int on_change(void *ud, const char *path, int kind, const struct stat *st)
{
    struct chg *c = ud;
    (void)st;
    char line[PATH_MAX + 4];
    snprintf(line, sizeof(line), "%c %s\n", kind, path);
    strcat(c->s, line);
    return 0;
}

TEST(overlay_changes_list_exactly_what_changed)
{
    host_tree();
    gd_vfs_provider *ov = overlay();
    struct chg c = {{0}};
    CHECK_EQ(gd_vfs_overlay_changes(ov, on_change, &c), 0);
    CHECK_STR(c.s, "");
    struct stat st;
    uint64_t fh;
    CHECK_EQ(OP(ov, open, "a/g", O_RDWR, &fh), 0); /* copied up, unchanged */
    CHECK_EQ(OP(ov, release, fh), 0);
    put(ov, "a/f", "changed");
    put(ov, "a/sub/new", "n");
    CHECK_EQ(OP(ov, unlink, "top"), 0);
    CHECK_EQ(OP(ov, unlink, "b/x"), 0);
    CHECK_EQ(OP(ov, rmdir, "b"), 0);
    CHECK_EQ(OP(ov, mkdir, "nd", 0755, &st), 0);
    put(ov, "nd/f", "f");
    CHECK_EQ(OP(ov, rename, "link", "link2", 0), 0);
    struct gd_vfs_setattr a = {.valid = GD_VFS_SET_MODE, .mode = 0700};
    CHECK_EQ(OP(ov, setattr, "empty", 0, &a, &st), 0);
    CHECK_EQ(gd_vfs_overlay_changes(ov, on_change, &c), 0);
    CHECK_STR(c.s, "M a/f\nA a/sub/new\nD b\nM empty\nD link\nA link2\nA nd\nA nd/f\nD top\n");
    /* a directory removed and made again: its lower entries are deleted */
    c.s[0] = 0;
    CHECK_EQ(OP(ov, unlink, "a/sub/deep"), 0);
    CHECK_EQ(OP(ov, unlink, "a/sub/new"), 0);
    CHECK_EQ(OP(ov, rmdir, "a/sub"), 0);
    CHECK_EQ(OP(ov, mkdir, "a/sub", 0755, &st), 0);
    CHECK_EQ(gd_vfs_overlay_changes(ov, on_change, &c), 0);
    CHECK_CONTAINS(c.s, "D a/sub/deep\n");
    CHECK(!strstr(c.s, "a/sub/new"));
    /* through a shadow too */
    struct gd_err err = {{0}};
    const char *globs[] = {".env", NULL};
    gd_vfs_provider *sh;
    CHECK_EQ(gd_vfs_shadow_new(ov, globs, GD_VFS_SHADOW_HIDE, 0, &sh, &err), 0);
    c.s[0] = 0;
    CHECK_EQ(gd_vfs_overlay_changes(sh, on_change, &c), 0);
    CHECK_CONTAINS(c.s, "M a/f\n");
    gd_vfs_provider *mem;
    CHECK_EQ(gd_vfs_memory_new(0, &mem, &err), 0);
    CHECK_EQ(gd_vfs_overlay_changes(mem, on_change, &c), -EINVAL);
    gd_vfs_provider_free(mem);
    gd_vfs_provider_free(sh);
    host_clean();
}

TEST(overlay_export_writes_a_tar_of_the_changes)
{
    host_tree();
    gd_vfs_provider *ov = overlay();
    struct stat st;
    put(ov, "a/f", "changed");
    CHECK_EQ(OP(ov, mkdir, "nd", 0755, &st), 0);
    put(ov, "nd/f", "f");
    CHECK_EQ(OP(ov, symlink, "nd/f", "sl", &st), 0);
    CHECK_EQ(OP(ov, unlink, "top"), 0);
    char tar[96];
    snprintf(tar, sizeof(tar), "%s.tar", root);
    int fd = open(tar, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    CHECK(fd >= 0);
    struct gd_err err = {{0}};
    if (gd_vfs_overlay_export(ov, "", fd, GD_VFS_EXPORT_WHITEOUTS, &err))
        FAIL_AT("export: %s", err.msg);
    close(fd);
    struct archive *a = archive_read_new();
    archive_read_support_format_tar(a);
    CHECK_EQ(archive_read_open_filename(a, tar, 10240), ARCHIVE_OK);
    struct archive_entry *en;
    char names[512] = "";
    while (archive_read_next_header(a, &en) == ARCHIVE_OK) {
        strcat(names, archive_entry_pathname(en));
        if (!strcmp(archive_entry_pathname(en), "a/f")) {
            char buf[32] = {0};
            CHECK_EQ(archive_read_data(a, buf, sizeof(buf)), 7);
            CHECK_STR(buf, "changed");
        }
        if (archive_entry_symlink(en))
            CHECK_STR(archive_entry_symlink(en), "nd/f");
        strcat(names, " ");
    }
    archive_read_free(a);
    CHECK_STR(names, "a/f nd/ nd/f sl .wh.top ");
    unlink(tar);
    gd_vfs_provider_free(ov);
    host_clean();
}

TEST(overlay_torture_leaves_the_host_unchanged)
{
    host_tree();
    char p[64];
    for (int i = 0; i < 20; i++) {
        snprintf(p, sizeof(p), "a/t%d", i);
        host_write(p, "t");
    }
    uint64_t h0 = host_hash();
    gd_vfs_provider *ov = overlay();
    struct stat st;
    uint64_t fh;
    for (int i = 0; i < 20; i++) {
        snprintf(p, sizeof(p), "a/t%d", i);
        switch (i % 5) {
        case 0:
            put(ov, p, "overwritten");
            break;
        case 1:
            OP(ov, unlink, p);
            break;
        case 2: {
            char q[64];
            snprintf(q, sizeof(q), "b/r%d", i);
            CHECK_EQ(OP(ov, rename, p, q, 0), 0);
            break;
        }
        case 3: {
            struct gd_vfs_setattr a = {.valid =
                                           GD_VFS_SET_SIZE | GD_VFS_SET_MODE | GD_VFS_SET_MTIME,
                                       .size = 100000,
                                       .mode = 0777,
                                       .mtime = {1, 1}};
            CHECK_EQ(OP(ov, setattr, p, 0, &a, &st), 0);
            break;
        }
        default:
            CHECK_EQ(OP(ov, setxattr, p, "user.x", "1", 1, 0), 0);
        }
    }
    CHECK_EQ(OP(ov, open, "a/sub/deep", O_WRONLY | O_APPEND, &fh), 0);
    CHECK_EQ(OP(ov, write, fh, "+", 1, 0), 1);
    CHECK_EQ(OP(ov, fallocate, fh, 0, 0, 50000), 0);
    CHECK_EQ(OP(ov, release, fh), 0);
    CHECK_EQ(OP(ov, link, "top", "b/top", &st), 0);
    CHECK_EQ(OP(ov, symlink, "/etc/passwd", "a/evil", &st), 0);
    CHECK_EQ(OP(ov, mknod, "a/fifo", S_IFIFO | 0644, 0, &st), 0);
    CHECK_EQ(OP(ov, rmdir, "empty"), 0);
    CHECK_EQ(OP(ov, mkdir, "empty", 0700, &st), 0);
    CHECK_EQ(OP(ov, rename, "b", "empty/b", 0), -EXDEV);
    CHECK_EQ(OP(ov, unlink, "link"), 0);
    CHECK_EQ(OP(ov, symlink, "b", "link", &st), 0);
    struct gd_vfs_setattr a = {.valid = GD_VFS_SET_UID | GD_VFS_SET_ATIME_NOW, .uid = 4242};
    CHECK_EQ(OP(ov, setattr, "a", 0, &a, &st), 0);
    CHECK_EQ(OP(ov, removexattr, "b/x", "user.none"), -ENODATA);
    CHECK(strlen(ls(ov, "a")) > 0);
    gd_vfs_provider_free(ov);
    CHECK_EQ(host_hash(), h0);
    host_clean();
}

TEST(overlay_through_the_session)
{
    host_tree();
    uint64_t h0 = host_hash();
    struct vc c;
    vc_open(&c, overlay(), NULL);
    struct fuse_entry_out a, f, n;
    CHECK_EQ(vc_lookup(&c, 1, "a", &a), 0);
    CHECK_EQ(vc_lookup(&c, a.nodeid, "f", &f), 0);
    uint64_t fh;
    CHECK_EQ(vc_open_file(&c, f.nodeid, O_RDWR, &fh), 0);
    CHECK_EQ(vc_write(&c, f.nodeid, fh, 5, " world", 6), 6);
    char buf[32] = {0};
    CHECK_EQ(vc_read(&c, f.nodeid, fh, 0, buf, sizeof(buf)), 11);
    CHECK_STR(buf, "hello world");
    CHECK_EQ(vc_release(&c, f.nodeid, fh), 0);
    CHECK_EQ(vc_create(&c, a.nodeid, "n", O_WRONLY, 0644, &n, &fh), 0);
    CHECK_EQ(vc_release(&c, n.nodeid, fh), 0);
    CHECK_EQ(vc_unlink(&c, a.nodeid, "g"), 0);
    CHECK_EQ(vc_lookup(&c, a.nodeid, "g", &n), -ENOENT);
    CHECK_EQ(vc_rename(&c, 1, "top", a.nodeid, "top", 0), 0);
    uint64_t dh;
    CHECK_EQ(vc_opendir(&c, a.nodeid, &dh), 0);
    CHECK_EQ(vc_readdir(&c, a.nodeid, dh, 0, 4096, 1), 0);
    CHECK(c.paylen > 0);
    CHECK_EQ(vc_releasedir(&c, a.nodeid, dh), 0);
    vc_close(&c);
    CHECK_EQ(host_hash(), h0);
    host_clean();
}
