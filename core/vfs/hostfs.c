/* hostfs.c - the host directory provider (vfs.h): paths resolved beneath DIR, the tree's
 * operations (attributes, names, links, renames). Open files, directories and xattrs are
 * in hostfs_io.c.
 *
 * Every path is opened with openat2(DIR's fd, path, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS
 * | RESOLVE_NO_MAGICLINKS) plus O_NOFOLLOW: the kernel refuses "..", absolute paths and
 * any symlink on the way, at the moment of the call, so no rename race can lead out of
 * DIR. The guest kernel follows symlinks itself (READLINK, then LOOKUP of the target's
 * components), so a path from the session never needs one of ours. An operation on a
 * last name opens its parent that way (O_PATH) and uses the *at() call with the name and
 * without following (fstatat/utimensat AT_SYMLINK_NOFOLLOW, unlinkat, mkdirat, mknodat,
 * symlinkat, renameat2, linkat without AT_SYMLINK_FOLLOW, readlinkat); calls that need
 * the file itself get an fd opened that way (fchown AT_EMPTY_PATH, fchmod, fsetxattr).
 *
 * Owners: the user running gondolin is the guest's root (uid/gid 0 in the guest: git's
 * safe.directory check passes for the user's own files); other owners show as 65534.
 * chown to 0 maps back to that user; to anyone else it is EPERM. When gondolin runs as
 * root nothing is mapped and owners are honoured. setuid/setgid bits are stripped from
 * every mode the guest sets (create, mkdir, mknod, chmod): a host user must never find a
 * setuid file the guest made. Only regular files can be made (no FIFOs, devices or
 * sockets: EPERM). */
#define _GNU_SOURCE
#include "base/err.h"
#include "vfs/hostfs_int.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/openat2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef SYS_fchmodat2
#define SYS_fchmodat2 452 /* Linux 6.6, the same number on every architecture */
#endif

#define NOBODY 65534

int gd__hostfs_open(const struct hostfs *h, const char *path, int flags, mode_t mode)
{
    struct open_how how = {
        .flags = (uint64_t)(flags | O_NOFOLLOW | O_CLOEXEC),
        .mode = (flags & O_CREAT) ? mode : 0,
        .resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS,
    };
    for (int i = 0; i < 8; i++) {
        long fd = syscall(SYS_openat2, h->root, *path ? path : ".", &how, sizeof(how));
        if (fd >= 0)
            return (int)fd;
        if (errno != EAGAIN && errno != EINTR) /* EAGAIN: a rename raced the walk */
            break;
    }
    return -errno;
}

int gd__hostfs_parent(const struct hostfs *h, const char *path, const char **name)
{
    if (!*path)
        return -EBUSY;
    const char *slash = strrchr(path, '/');
    *name = slash ? slash + 1 : path;
    const char *n = *name;
    if (!*n || (n[0] == '.' && (!n[1] || (n[1] == '.' && !n[2]))))
        return -EINVAL;
    if (!slash) {
        int fd = fcntl(h->root, F_DUPFD_CLOEXEC, 0);
        return fd < 0 ? -errno : fd;
    }
    char dir[PATH_MAX];
    size_t len = (size_t)(slash - path);
    if (len >= sizeof(dir))
        return -ENAMETOOLONG;
    memcpy(dir, path, len);
    dir[len] = 0;
    return gd__hostfs_open(h, dir, O_PATH | O_DIRECTORY, 0);
}

void gd__hostfs_map(const struct hostfs *h, struct stat *st)
{
    if (h->privileged)
        return;
    st->st_uid = st->st_uid == h->uid ? 0 : NOBODY;
    st->st_gid = st->st_gid == h->gid ? 0 : NOBODY;
}

static int stat_fd(const struct hostfs *h, int fd, struct stat *st)
{
    if (fstat(fd, st))
        return -errno;
    gd__hostfs_map(h, st);
    return 0;
}

int gd__hostfs_lstat(const struct hostfs *h, const char *path, struct stat *st)
{
    int fd = gd__hostfs_open(h, path, O_PATH, 0);
    if (fd < 0)
        return fd;
    int e = fstat(fd, st) ? -errno : 0;
    close(fd);
    return e;
}

int gd__hostfs_open_plain(const struct hostfs *h, const char *path, int flags)
{
    struct stat st;
    int e = gd__hostfs_lstat(h, path, &st);
    if (e)
        return e;
    if (!S_ISREG(st.st_mode) && !S_ISDIR(st.st_mode))
        return -EPERM; /* never opened: a device's open has effects, a FIFO's blocks */
    int fd = gd__hostfs_open(h, path, flags | O_NONBLOCK | O_NOCTTY, 0);
    if (fd < 0)
        return fd;
    /* swapped between the two opens? */
    if (fstat(fd, &st) || (!S_ISREG(st.st_mode) && !S_ISDIR(st.st_mode))) {
        close(fd);
        return -EPERM;
    }
    return fd;
}

/* ---- attributes ---- */

static int h_getattr(void *p, const char *path, struct stat *st)
{
    int e = gd__hostfs_lstat(p, path, st);
    if (!e)
        gd__hostfs_map(p, st);
    return e;
}

static int do_chmod(const struct hostfs *h, const char *path, int fd, const struct stat *st,
                    mode_t mode, int by_handle)
{
    if (S_ISLNK(st->st_mode))
        return -EOPNOTSUPP; /* as lchmod */
    if (by_handle)
        return fchmod(fd, mode) ? -errno : 0;
    const char *name;
    int pfd = gd__hostfs_parent(h, path, &name);
    if (pfd >= 0) {
        int e = syscall(SYS_fchmodat2, pfd, name, mode, AT_SYMLINK_NOFOLLOW) ? -errno : 0;
        close(pfd);
        if (e != -ENOSYS)
            return e;
    } else if (pfd != -EBUSY) {
        return pfd;
    }
    /* before Linux 6.6 (or DIR itself): the file itself, opened beneath DIR */
    int ofd = gd__hostfs_open_plain(h, path, O_RDONLY);
    if (ofd < 0)
        return ofd;
    int e = fchmod(ofd, mode) ? -errno : 0;
    close(ofd);
    return e;
}

static int do_chown(const struct hostfs *h, int fd, const struct gd_vfs_setattr *a)
{
    uid_t uid = (uid_t)-1;
    gid_t gid = (gid_t)-1;
    if (a->valid & GD_VFS_SET_UID) {
        if (h->privileged)
            uid = a->uid;
        else if (a->uid == 0)
            uid = h->uid;
        else
            return -EPERM;
    }
    if (a->valid & GD_VFS_SET_GID) {
        if (h->privileged)
            gid = a->gid;
        else if (a->gid == 0)
            gid = h->gid;
        else
            return -EPERM;
    }
    return fchownat(fd, "", uid, gid, AT_EMPTY_PATH) ? -errno : 0;
}

static int do_truncate(const struct hostfs *h, const char *path, int fd, const struct stat *st,
                       uint64_t size, int by_handle)
{
    if (by_handle)
        return ftruncate(fd, (off_t)size) ? -errno : 0;
    if (S_ISDIR(st->st_mode))
        return -EISDIR;
    if (!S_ISREG(st->st_mode))
        return -EINVAL;
    int wfd = gd__hostfs_open_plain(h, path, O_WRONLY);
    if (wfd < 0)
        return wfd;
    int e = ftruncate(wfd, (off_t)size) ? -errno : 0;
    close(wfd);
    return e;
}

static int h_setattr(void *p, const char *path, uint64_t fh, const struct gd_vfs_setattr *a,
                     struct stat *out)
{
    struct hostfs *h = p;
    int fd = fh ? gd__hostfs_handle_fd(h, fh) : gd__hostfs_open(h, path, O_PATH, 0);
    if (fh && fd < 0)
        return -EBADF;
    if (fd < 0)
        return fd;
    struct stat st;
    int e = fstat(fd, &st) ? -errno : 0;
    if (!e && (a->valid & GD_VFS_SET_SIZE))
        e = do_truncate(h, path, fd, &st, a->size, fh != 0);
    if (!e && (a->valid & GD_VFS_SET_MODE))
        e = do_chmod(h, path, fd, &st, a->mode & 01777, fh != 0);
    if (!e && (a->valid & (GD_VFS_SET_UID | GD_VFS_SET_GID)))
        e = do_chown(h, fd, a);
    if (!e && (a->valid & (GD_VFS_SET_ATIME | GD_VFS_SET_MTIME | GD_VFS_SET_ATIME_NOW |
                           GD_VFS_SET_MTIME_NOW))) {
        struct timespec ts[2] = {{.tv_nsec = UTIME_OMIT}, {.tv_nsec = UTIME_OMIT}};
        if (a->valid & GD_VFS_SET_ATIME_NOW)
            ts[0].tv_nsec = UTIME_NOW;
        else if (a->valid & GD_VFS_SET_ATIME)
            ts[0] = a->atime;
        if (a->valid & GD_VFS_SET_MTIME_NOW)
            ts[1].tv_nsec = UTIME_NOW;
        else if (a->valid & GD_VFS_SET_MTIME)
            ts[1] = a->mtime;
        /* the fd itself (O_PATH or open): never a path that could be swapped */
        e = utimensat(fd, "", ts, AT_EMPTY_PATH) ? -errno : 0;
    }
    /* ctime cannot be set on the host: it moves by itself */
    if (!e)
        e = stat_fd(h, fd, out);
    if (!fh)
        close(fd);
    return e;
}

/* ---- names ---- */

static int h_readlink(void *p, const char *path, char *buf, size_t cap)
{
    const char *name;
    int pfd = gd__hostfs_parent(p, path, &name);
    if (pfd < 0)
        return pfd == -EBUSY ? -EINVAL : pfd;
    ssize_t k = readlinkat(pfd, name, buf, cap);
    int e = k < 0 ? -errno : (int)k;
    close(pfd);
    return e;
}

/* After a *at() call made name in pfd: its attributes, not following it. */
static int stat_new(const struct hostfs *h, int pfd, const char *name, int e, struct stat *out)
{
    if (!e) {
        if (fstatat(pfd, name, out, AT_SYMLINK_NOFOLLOW))
            e = -errno;
        else
            gd__hostfs_map(h, out);
    }
    close(pfd);
    return e;
}

static int h_mknod(void *p, const char *path, mode_t mode, dev_t rdev, struct stat *out)
{
    (void)rdev;
    if ((mode & S_IFMT) != 0 && !S_ISREG(mode))
        return -EPERM; /* no FIFOs, sockets or devices on the host */
    const char *name;
    int pfd = gd__hostfs_parent(p, path, &name);
    if (pfd < 0)
        return pfd == -EBUSY ? -EEXIST : pfd;
    int e = mknodat(pfd, name, S_IFREG | (mode & 01777), 0) ? -errno : 0;
    return stat_new(p, pfd, name, e, out);
}

static int h_mkdir(void *p, const char *path, mode_t mode, struct stat *out)
{
    const char *name;
    int pfd = gd__hostfs_parent(p, path, &name);
    if (pfd < 0)
        return pfd == -EBUSY ? -EEXIST : pfd;
    int e = mkdirat(pfd, name, mode & 01777) ? -errno : 0;
    return stat_new(p, pfd, name, e, out);
}

static int remove_name(void *p, const char *path, int flags)
{
    const char *name;
    int pfd = gd__hostfs_parent(p, path, &name);
    if (pfd < 0)
        return pfd;
    int e = unlinkat(pfd, name, flags) ? -errno : 0;
    close(pfd);
    return e;
}

static int h_unlink(void *p, const char *path)
{
    return remove_name(p, path, 0);
}

static int h_rmdir(void *p, const char *path)
{
    return remove_name(p, path, AT_REMOVEDIR);
}

static int h_symlink(void *p, const char *target, const char *path, struct stat *out)
{
    const char *name;
    int pfd = gd__hostfs_parent(p, path, &name);
    if (pfd < 0)
        return pfd == -EBUSY ? -EEXIST : pfd;
    /* the target is stored verbatim: only the guest resolves it, never we */
    int e = symlinkat(target, pfd, name) ? -errno : 0;
    return stat_new(p, pfd, name, e, out);
}

static int h_rename(void *p, const char *from, const char *to, unsigned flags)
{
    if (flags & ~(unsigned)(RENAME_NOREPLACE | RENAME_EXCHANGE))
        return -EINVAL; /* RENAME_WHITEOUT makes a device node */
    const char *n1, *n2;
    int p1 = gd__hostfs_parent(p, from, &n1);
    if (p1 < 0)
        return p1;
    int p2 = gd__hostfs_parent(p, to, &n2);
    if (p2 < 0) {
        close(p1);
        return p2;
    }
    int e = renameat2(p1, n1, p2, n2, flags) ? -errno : 0;
    close(p1);
    close(p2);
    return e;
}

static int h_link(void *p, const char *from, const char *to, struct stat *out)
{
    const char *n1, *n2;
    int p1 = gd__hostfs_parent(p, from, &n1);
    if (p1 < 0)
        return p1 == -EBUSY ? -EPERM : p1;
    int p2 = gd__hostfs_parent(p, to, &n2);
    if (p2 < 0) {
        close(p1);
        return p2;
    }
    /* no AT_SYMLINK_FOLLOW: a symlink is linked as itself */
    int e = linkat(p1, n1, p2, n2, 0) ? -errno : 0;
    close(p1);
    return stat_new(p, p2, n2, e, out);
}

static int h_statfs(void *p, const char *path, struct statvfs *st)
{
    (void)path;
    return fstatvfs(((struct hostfs *)p)->root, st) ? -errno : 0;
}

static void h_destroy(void *p)
{
    struct hostfs *h = p;
    gd__hostfs_handles_close(h);
    close(h->root);
    free(h);
}

static const struct gd_vfs_ops hostfs_ops = {
    .getattr = h_getattr,
    .setattr = h_setattr,
    .readlink = h_readlink,
    .mknod = h_mknod,
    .mkdir = h_mkdir,
    .unlink = h_unlink,
    .rmdir = h_rmdir,
    .symlink = h_symlink,
    .rename = h_rename,
    .link = h_link,
    .open = gd__hostfs_open_op,
    .create = gd__hostfs_create,
    .read = gd__hostfs_read,
    .write = gd__hostfs_write,
    .fsync = gd__hostfs_fsync,
    .release = gd__hostfs_release,
    .opendir = gd__hostfs_opendir,
    .readdir = gd__hostfs_readdir,
    .releasedir = gd__hostfs_release,
    .statfs = h_statfs,
    .setxattr = gd__hostfs_setxattr,
    .getxattr = gd__hostfs_getxattr,
    .listxattr = gd__hostfs_listxattr,
    .removexattr = gd__hostfs_removexattr,
    .fallocate = gd__hostfs_fallocate,
    .lseek = gd__hostfs_lseek,
    .destroy = h_destroy,
};

int gd_vfs_hostfs_new(const char *dir, int readonly, gd_vfs_provider **out, struct gd_err *err)
{
    int root = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (root < 0)
        return gd_err_set(err, -errno, "hostfs: %s: %s", dir, strerror(errno));
    struct hostfs *h = calloc(1, sizeof(*h));
    gd_vfs_provider *pv = calloc(1, sizeof(*pv));
    if (!h || !pv) {
        free(h);
        free(pv);
        close(root);
        return gd_err_set(err, -ENOMEM, "hostfs: out of memory");
    }
    h->root = root;
    h->uid = geteuid();
    h->gid = getegid();
    h->privileged = h->uid == 0;
    int fd = gd__hostfs_open(h, "", O_PATH | O_DIRECTORY, 0);
    if (fd < 0) {
        free(h);
        free(pv);
        close(root);
        return gd_err_set(err, fd, "hostfs: %s: openat2 (Linux 5.6 or later): %s", dir,
                          strerror(-fd));
    }
    close(fd);
    pv->ops = &hostfs_ops;
    pv->p = h;
    /* the host can change DIR behind the guest's back: short caches, no writeback */
    pv->flags = GD_VFS_DOTS;
    pv->name = "hostfs";
    if (!readonly) {
        *out = pv;
        return 0;
    }
    return gd_vfs_readonly_new(pv, out, err);
}
