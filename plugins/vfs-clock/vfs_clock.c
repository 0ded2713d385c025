/*
 * vfs-clock - a first-party gondolin plugin showing both halves of the plugin VFS API:
 *
 *   provider "clock": a read-only directory with one file, `now`, whose content is the
 *   current UTC time ("2026-01-02T03:04:05Z\n", always 21 bytes):
 *     mounts = { ["/run/clock"] = { provider = "clock" } }
 *
 *   fs hook "lock-ro" (opt-in): every *.lock file on every mount is read-only for the
 *   guest (open for writing, truncate, unlink, rename of or onto it: EACCES):
 *     plugins = { ["vfs-clock"] = { lock_readonly = true } }
 *
 * Provider ops run on the mount's transport thread, the hook on the loop thread; the
 * provider keeps no state, so nothing is shared between them.
 */
#define _GNU_SOURCE
#include <gondolin/plugin.h>
#include <gondolin/vfs.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#define NOW_LEN 21

static void now_text(char *buf)
{
    time_t t = time(NULL);
    struct tm tm;
    gmtime_r(&t, &tm);
    char tmp[64];
    snprintf(tmp, sizeof(tmp), "%04d-%02d-%02dT%02d:%02d:%02dZ\n", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
    memcpy(buf, tmp, NOW_LEN);
}

static int c_getattr(void *p, const char *path, struct stat *st)
{
    (void)p;
    memset(st, 0, sizeof(*st));
    st->st_mtime = st->st_atime = st->st_ctime = time(NULL);
    if (!*path) {
        st->st_mode = S_IFDIR | 0555;
        st->st_nlink = 2;
        st->st_ino = 1;
        return 0;
    }
    if (strcmp(path, "now"))
        return -ENOENT;
    st->st_mode = S_IFREG | 0444;
    st->st_nlink = 1;
    st->st_ino = 2;
    st->st_size = NOW_LEN;
    return 0;
}

static int c_open(void *p, const char *path, int flags, uint64_t *fh)
{
    (void)p;
    if (strcmp(path, "now"))
        return *path ? -ENOENT : -EISDIR;
    if ((flags & O_ACCMODE) != O_RDONLY || (flags & O_TRUNC))
        return -EROFS;
    *fh = 1;
    return 0;
}

static ssize_t c_read(void *p, uint64_t fh, void *buf, size_t n, uint64_t off)
{
    (void)p;
    if (fh != 1)
        return -EBADF;
    if (off >= NOW_LEN)
        return 0;
    char text[NOW_LEN];
    now_text(text);
    size_t k = NOW_LEN - (size_t)off < n ? NOW_LEN - (size_t)off : n;
    memcpy(buf, text + off, k);
    return (ssize_t)k;
}

static int c_release(void *p, uint64_t fh)
{
    (void)p;
    return fh == 1 ? 0 : -EBADF;
}

static int c_opendir(void *p, const char *path, uint64_t *fh)
{
    (void)p;
    if (*path)
        return -ENOTDIR;
    *fh = 2;
    return 0;
}

static int c_readdir(void *p, const char *path, uint64_t fh, uint64_t off, gd_vfs_fill_fn fill,
                     void *ctx)
{
    (void)p, (void)path, (void)fh;
    if (off == 0)
        return fill(ctx, "now", 1, DT_REG, NULL) < 0 ? -EIO : 0;
    return 0;
}

static int c_releasedir(void *p, uint64_t fh)
{
    (void)p;
    return fh == 2 ? 0 : -EBADF;
}

static const struct gd_vfs_ops clock_ops = {
    .getattr = c_getattr,
    .open = c_open,
    .read = c_read,
    .release = c_release,
    .opendir = c_opendir,
    .readdir = c_readdir,
    .releasedir = c_releasedir,
};

static int clock_factory(void *ud, const char *mount, const char *config, void **p, char *err,
                         size_t errcap)
{
    (void)ud, (void)mount, (void)err, (void)errcap;
    if (strcmp(config, "{}")) {
        snprintf(err, errcap, "the clock provider takes no config");
        return -1;
    }
    *p = NULL; /* stateless */
    return 0;
}

static int is_lock(const char *path)
{
    size_t n = path ? strlen(path) : 0;
    return n >= 5 && !strcmp(path + n - 5, ".lock");
}

static int lock_before(void *ud, const struct gd_vfs_event *ev, char *reason, size_t cap)
{
    (void)ud;
    if (!ev->mutating || !(is_lock(ev->path) || is_lock(ev->path2)))
        return 0;
    snprintf(reason, cap, "*.lock files are read-only");
    return -EACCES;
}

static int init(const struct gd_host_api *api, gd_plugin_host *host, const char *config,
                void **state, char *err, size_t errcap)
{
    (void)state;
    if (!GD_PLUGIN_API_HAS(api, register_fs_hook)) {
        snprintf(err, errcap, "this gondolin has no VFS plugin API (level 2)");
        return -1;
    }
    int rc = api->register_vfs_provider(host, "clock", &clock_ops, sizeof(clock_ops), clock_factory,
                                        NULL);
    if (!rc && strstr(config, "\"lock_readonly\":true"))
        rc = api->register_fs_hook(host, "lock-ro", lock_before, NULL, NULL);
    if (rc)
        snprintf(err, errcap, "registration failed (%d)", rc);
    return rc;
}

GD_PLUGIN_EXPORT const struct gd_plugin_desc *gondolin_plugin_entry(void)
{
    static const struct gd_plugin_desc d = {
        GONDOLIN_PLUGIN_ABI_VERSION, sizeof(struct gd_plugin_desc), "vfs-clock", "1.0", init, NULL};
    return &d;
}
