/* The shadow provider (core/vfs/shadow.c) and its globs (core/vfs/glob.c) over a real
 * hostfs of a temp dir: hidden paths are absent for every operation, in readdir, through
 * a guest symlink and through host hard links; MEMORY mode keeps the guest's writes away
 * from the host. */
#define _GNU_SOURCE
#include "base/err.h"
#include "test.h"
#include "vfs/vfs.h"
#include "vfs_client.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

static char root[64];

static void w(const char *rel, const char *data)
{
    char p[PATH_MAX];
    snprintf(p, sizeof(p), "%s/%s", root, rel);
    FILE *f = fopen(p, "w");
    if (!f)
        FAIL_AT("fopen %s", p);
    fputs(data, f);
    fclose(f);
}

static void d(const char *rel)
{
    char p[PATH_MAX];
    snprintf(p, sizeof(p), "%s/%s", root, rel);
    CHECK_EQ(mkdir(p, 0755), 0);
}

static void tree(void)
{
    snprintf(root, sizeof(root), "/tmp/gd-shadow-XXXXXX");
    CHECK(mkdtemp(root));
    w(".env", "SECRET=1");
    w("app.py", "print()");
    d("src");
    w("src/.env", "SECRET=2");
    w("src/key.pem", "PEM");
    w("src/main.c", "int main;");
    d("src/deep");
    w("src/deep/x.pem", "PEM2");
    d("node_modules");
    d("node_modules/pkg");
    w("node_modules/pkg/index.js", "js");
    d(".git");
    w(".git/config", "[remote]");
    w(".git/HEAD", "ref");
    char a[PATH_MAX], b[PATH_MAX];
    snprintf(a, sizeof(a), "%s/.env", root);
    snprintf(b, sizeof(b), "%s/innocent.txt", root);
    CHECK_EQ(link(a, b), 0); /* a host hard link to the secret */
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

static const char *globs[] = {".env", "**/*.pem", ".git/config", "node_modules", NULL};

static gd_vfs_provider *shadow(int mode, int readonly)
{
    struct gd_err err = {{0}};
    gd_vfs_provider *in, *sh;
    if (gd_vfs_hostfs_new(root, readonly, &in, &err))
        FAIL_AT("hostfs: %s", err.msg);
    if (gd_vfs_shadow_new(in, globs, mode, 0, &sh, &err))
        FAIL_AT("shadow: %s", err.msg);
    return sh;
}

#define OP(pv, op, ...) ((pv)->ops->op((pv)->p, __VA_ARGS__))

static int gattr(gd_vfs_provider *pv, const char *path)
{
    struct stat st;
    return OP(pv, getattr, path, &st);
}

static char listing[4096];

static int ls_fill(void *ctx, const char *name, uint64_t off, unsigned type, const struct stat *st)
{
    (void)ctx, (void)off, (void)type, (void)st;
    if (strcmp(name, ".") && strcmp(name, "..")) {
        strcat(listing, name);
        strcat(listing, " ");
    }
    return 0;
}

static const char *ls(gd_vfs_provider *pv, const char *dir)
{
    uint64_t fh;
    listing[0] = 0;
    int e = OP(pv, opendir, dir, &fh);
    if (e)
        return strerror(-e);
    CHECK_EQ(OP(pv, readdir, dir, fh, 0, ls_fill, NULL), 0);
    CHECK_EQ(OP(pv, releasedir, fh), 0);
    return listing;
}

static const char *host_cat(const char *rel)
{
    static char buf[256];
    char p[PATH_MAX];
    snprintf(p, sizeof(p), "%s/%s", root, rel);
    FILE *f = fopen(p, "r");
    if (!f)
        return "(none)";
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    buf[n] = 0;
    fclose(f);
    return buf;
}

TEST(vfs_glob_matching)
{
    CHECK(gd_vfs_glob_match(".env", ".env"));
    CHECK(gd_vfs_glob_match(".env", "a/b/.env"));
    CHECK(!gd_vfs_glob_match(".env", "a/.env.example"));
    CHECK(gd_vfs_glob_match("*.pem", "x/y/k.pem"));
    CHECK(gd_vfs_glob_match("*.pem", ".hidden.pem")); /* a leading dot is not special */
    CHECK(gd_vfs_glob_match("**/*.pem", "k.pem"));
    CHECK(gd_vfs_glob_match("**/*.pem", "a/b/k.pem"));
    CHECK(!gd_vfs_glob_match("**/*.pem", "a/b/k.pem/x"));
    CHECK(gd_vfs_glob_match(".git/config", ".git/config"));
    CHECK(!gd_vfs_glob_match(".git/config", "sub/.git/config"));
    CHECK(gd_vfs_glob_match("/secrets", "secrets"));
    CHECK(!gd_vfs_glob_match("/secrets", "a/secrets"));
    CHECK(gd_vfs_glob_match("node_modules/", "a/node_modules"));
    CHECK(gd_vfs_glob_match("a/**/z", "a/z"));
    CHECK(gd_vfs_glob_match("a/**/z", "a/b/c/z"));
    CHECK(gd_vfs_glob_match("src/*.key", "src/x.key"));
    CHECK(!gd_vfs_glob_match("src/*.key", "src/d/x.key"));
    CHECK_EQ(gd_vfs_glob_check(""), -EINVAL);
    CHECK_EQ(gd_vfs_glob_check("!x"), -EINVAL);
    CHECK_EQ(gd_vfs_glob_check("a/../b"), -EINVAL);
    CHECK_EQ(gd_vfs_glob_check("a//b"), -EINVAL);
    CHECK_EQ(gd_vfs_glob_check("/"), -EINVAL);
    CHECK_EQ(gd_vfs_glob_check("**/*.pem"), 0);
}

TEST(shadow_hide_makes_paths_absent)
{
    tree();
    gd_vfs_provider *sh = shadow(GD_VFS_SHADOW_HIDE, 0);
    struct stat st;
    uint64_t fh;
    CHECK_EQ(gattr(sh, ".env"), -ENOENT);
    CHECK_EQ(gattr(sh, "src/.env"), -ENOENT);
    CHECK_EQ(gattr(sh, "src/key.pem"), -ENOENT);
    CHECK_EQ(gattr(sh, "src/deep/x.pem"), -ENOENT);
    CHECK_EQ(gattr(sh, ".git/config"), -ENOENT);
    CHECK_EQ(gattr(sh, ".git/HEAD"), 0);
    CHECK_EQ(gattr(sh, "node_modules"), -ENOENT);
    CHECK_EQ(gattr(sh, "node_modules/pkg/index.js"), -ENOENT); /* the subtree too */
    CHECK_EQ(gattr(sh, "src/main.c"), 0);
    CHECK_STR(ls(sh, ""), strstr(ls(sh, ""), ".env") ? "has .env" : listing);
    CHECK(!strstr(ls(sh, ""), ".env") && !strstr(listing, "node_modules") &&
          strstr(listing, "app.py"));
    CHECK(!strstr(listing, "innocent.txt")); /* the host hard link */
    CHECK(!strstr(ls(sh, "src"), "pem") && !strstr(listing, ".env") && strstr(listing, "main.c"));
    CHECK(!strstr(ls(sh, ".git"), "config") && strstr(listing, "HEAD"));
    CHECK_STR(ls(sh, "node_modules"), strerror(ENOENT));
    CHECK_EQ(OP(sh, open, ".env", O_RDONLY, &fh), -ENOENT);
    CHECK_EQ(OP(sh, open, "innocent.txt", O_RDONLY, &fh), -ENOENT);
    CHECK_EQ(gattr(sh, "innocent.txt"), -ENOENT);
    CHECK_EQ(OP(sh, readlink, ".env", listing, 10), -ENOENT);
    CHECK_EQ(OP(sh, unlink, ".env"), -ENOENT);
    CHECK_EQ(OP(sh, unlink, "innocent.txt"), -ENOENT);
    CHECK_EQ(OP(sh, rename, ".env", "stolen", 0), -ENOENT);
    CHECK_EQ(OP(sh, rename, "app.py", ".env", 0), -EACCES);
    CHECK_EQ(OP(sh, rename, "app.py", "src/new.pem", 0), -EACCES);
    CHECK_EQ(OP(sh, rename, "app.py", "innocent.txt", 0), -EACCES);
    CHECK_EQ(OP(sh, rename, ".git", "git", 0), -EXDEV); /* .git/config would show */
    CHECK_EQ(OP(sh, rename, "src", "src2", 0), 0);      /* basename globs move along */
    CHECK_EQ(gattr(sh, "src2/.env"), -ENOENT);
    CHECK_EQ(OP(sh, link, ".env", "copy", &st), -ENOENT);
    CHECK_EQ(OP(sh, link, "innocent.txt", "copy", &st), -ENOENT);
    CHECK_EQ(OP(sh, link, "app.py", "x/.env", &st), -EACCES);
    CHECK_EQ(OP(sh, link, "app.py", ".env", &st), -EACCES);
    CHECK_EQ(OP(sh, create, "new.pem", O_WRONLY, 0644, &fh, &st), -EACCES);
    CHECK_EQ(OP(sh, mkdir, "node_modules", 0755, &st), -EACCES);
    CHECK_EQ(OP(sh, mknod, ".env", S_IFREG | 0644, 0, &st), -EACCES);
    CHECK_EQ(OP(sh, symlink, "x", ".env", &st), -EACCES);
    struct gd_vfs_setattr a = {.valid = GD_VFS_SET_SIZE, .size = 0};
    CHECK_EQ(OP(sh, setattr, ".env", 0, &a, &st), -ENOENT);
    CHECK_EQ(OP(sh, setxattr, ".env", "user.x", "1", 1, 0), -ENOENT);
    CHECK_EQ(OP(sh, getxattr, ".env", "user.x", listing, 10), -ENOENT);
    /* a guest symlink to .env: allowed as a string, resolves to nothing (the guest
     * kernel looks the target up by name) */
    CHECK_EQ(OP(sh, symlink, ".env", "ptr", &st), 0);
    CHECK_EQ(OP(sh, readlink, "ptr", listing, sizeof(listing)), 4);
    CHECK_EQ(gattr(sh, ".env"), -ENOENT);
    CHECK_STR(host_cat(".env"), "SECRET=1");
    CHECK_STR(host_cat("innocent.txt"), "SECRET=1");
    gd_vfs_provider_free(sh);
    nftw(root, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

TEST(shadow_hide_through_the_session)
{
    tree();
    struct vc c;
    vc_open(&c, shadow(GD_VFS_SHADOW_HIDE, 0), NULL);
    struct fuse_entry_out e, src;
    CHECK_EQ(vc_lookup(&c, 1, ".env", &e), -ENOENT);
    CHECK_EQ(vc_lookup(&c, 1, "innocent.txt", &e), -ENOENT);
    CHECK_EQ(vc_lookup(&c, 1, "src", &src), 0);
    CHECK_EQ(vc_lookup(&c, src.nodeid, "key.pem", &e), -ENOENT);
    CHECK_EQ(vc_symlink(&c, 1, "s", "src/key.pem", &e), 0);
    char t[64];
    CHECK_EQ(vc_readlink(&c, e.nodeid, t, sizeof(t)), 0); /* then LOOKUP src, key.pem: ENOENT */
    CHECK(!memcmp(t, "src/key.pem", 11));
    struct fuse_entry_out app;
    CHECK_EQ(vc_lookup(&c, 1, "app.py", &app), 0);
    CHECK_EQ(vc_link(&c, app.nodeid, 1, ".env", &e), -EACCES);
    uint64_t fh;
    CHECK_EQ(vc_create(&c, src.nodeid, "new.pem", O_WRONLY, 0644, &e, &fh), -EACCES);
    CHECK_EQ(vc_opendir(&c, 1, &fh), 0);
    CHECK_EQ(vc_readdir(&c, 1, fh, 0, 8192, 1), 0);
    CHECK(!memmem(c.payload, c.paylen, ".env", 4));
    CHECK(!memmem(c.payload, c.paylen, "innocent", 8));
    CHECK(memmem(c.payload, c.paylen, "app.py", 6));
    CHECK_EQ(vc_releasedir(&c, 1, fh), 0);
    vc_close(&c);
    nftw(root, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

TEST(shadow_memory_keeps_writes_off_the_host)
{
    tree();
    gd_vfs_provider *sh = shadow(GD_VFS_SHADOW_MEMORY, 0);
    struct stat st;
    uint64_t fh;
    CHECK_EQ(gattr(sh, ".env"), -ENOENT); /* only what the guest wrote */
    CHECK_EQ(OP(sh, create, ".env", O_WRONLY, 0600, &fh, &st), 0);
    CHECK_EQ(OP(sh, write, fh, "GUEST=1", 7, 0), 7);
    CHECK_EQ(OP(sh, release, fh), 0);
    CHECK_EQ(OP(sh, create, "src/deep/y.pem", O_WRONLY, 0600, &fh, &st), 0);
    CHECK_EQ(OP(sh, release, fh), 0);
    CHECK_EQ(OP(sh, mkdir, "node_modules", 0755, &st), 0);
    CHECK_EQ(OP(sh, mkdir, "node_modules/mine", 0755, &st), 0);
    CHECK_EQ(OP(sh, open, ".env", O_RDONLY, &fh), 0);
    char buf[32] = {0};
    CHECK_EQ(OP(sh, read, fh, buf, sizeof(buf), 0), 7);
    CHECK_STR(buf, "GUEST=1");
    CHECK_EQ(OP(sh, release, fh), 0);
    CHECK_STR(host_cat(".env"), "SECRET=1");
    CHECK_STR(host_cat("src/deep/y.pem"), "(none)");
    const char *l = ls(sh, "");
    CHECK(strstr(l, ".env") && strstr(l, "node_modules") && strstr(l, "app.py"));
    CHECK(!strstr(l, "innocent"));
    CHECK_STR(ls(sh, "node_modules"), "mine ");
    CHECK(strstr(ls(sh, "src/deep"), "y.pem") && !strstr(listing, "x.pem"));
    CHECK_EQ(OP(sh, rename, ".env", "env.txt", 0), -EXDEV);
    CHECK_EQ(OP(sh, rename, "app.py", "x.pem", 0), -EXDEV);
    CHECK_EQ(OP(sh, rmdir, "src/deep"), -ENOTEMPTY);
    CHECK_EQ(OP(sh, unlink, ".env"), 0);
    CHECK_STR(host_cat(".env"), "SECRET=1");
    gd_vfs_provider_free(sh);
    nftw(root, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

TEST(shadow_mount_specs)
{
    tree();
    struct gd_mount m = {.kind = GD_MOUNT_OVERLAY, .guest = "/w", .host = root, .hide = globs};
    struct gd_err err = {{0}};
    gd_vfs_provider *pv;
    if (gd_mount_provider(&m, &pv, &err))
        FAIL_AT("mount: %s", err.msg);
    CHECK_EQ(gattr(pv, ".env"), -ENOENT);
    struct stat st;
    uint64_t fh;
    CHECK_EQ(OP(pv, create, "new", O_WRONLY, 0644, &fh, &st), 0);
    CHECK_EQ(OP(pv, release, fh), 0);
    CHECK_STR(host_cat("new"), "(none)");
    gd_vfs_provider_free(pv);
    const char *bad[] = {"!x", NULL};
    m.kind = GD_MOUNT_HOSTFS;
    m.hide = bad;
    CHECK_EQ(gd_mount_provider(&m, &pv, &err), -EINVAL);
    nftw(root, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}
