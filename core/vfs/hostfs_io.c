/* hostfs_io.c - the host directory provider's open files, directories and xattrs (see
 * hostfs.c for how paths are resolved). Only regular files are ever opened for I/O: a
 * FIFO, socket or device found in DIR is refused before it is opened (and, if one is
 * swapped in between, after an O_NONBLOCK open that cannot block). Only the "user."
 * xattr namespace is served: trusted.*, security.* (file capabilities!) and ACLs stay
 * the host's. */
#define _GNU_SOURCE
#include "vfs/hostfs_int.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/xattr.h>
#include <unistd.h>

/* ---- handles ---- */

int gd__hostfs_handle_add(struct hostfs *h, int fd, DIR *dir, uint64_t *fh)
{
    size_t i;
    if (h->free_h) {
        i = h->free_h - 1;
        h->free_h = h->h[i].next_free;
    } else {
        if (h->nh % 64 == 0) {
            struct hhandle *nh = realloc(h->h, (h->nh + 64) * sizeof(*nh));
            if (!nh)
                return -ENOMEM;
            h->h = nh;
        }
        i = h->nh++;
    }
    h->h[i] = (struct hhandle){.fd = fd, .dir = dir};
    *fh = i + 1;
    return 0;
}

static struct hhandle *handle(const struct hostfs *h, uint64_t fh)
{
    if (fh == 0 || fh > h->nh || h->h[fh - 1].fd < 0)
        return NULL;
    return &h->h[fh - 1];
}

int gd__hostfs_handle_fd(const struct hostfs *h, uint64_t fh)
{
    struct hhandle *x = handle(h, fh);
    return x && !x->dir ? x->fd : -1;
}

static void handle_close(struct hostfs *h, size_t i)
{
    if (h->h[i].dir)
        closedir(h->h[i].dir);
    else
        close(h->h[i].fd);
    h->h[i] = (struct hhandle){.fd = -1, .next_free = h->free_h};
    h->free_h = i + 1;
}

void gd__hostfs_handles_close(struct hostfs *h)
{
    for (size_t i = 0; i < h->nh; i++)
        if (h->h[i].fd >= 0)
            handle_close(h, i);
    free(h->h);
    h->h = NULL;
    h->nh = h->free_h = 0;
}

int gd__hostfs_release(void *p, uint64_t fh)
{
    struct hostfs *h = p;
    if (!handle(h, fh))
        return -EBADF;
    handle_close(h, fh - 1);
    return 0;
}

/* ---- files ---- */

/* The open flags we pass on: access mode, append, truncate, sync. Never O_CREAT (create
 * is separate), O_NOATIME (EPERM on others' files), O_DIRECT (alignment the guest's page
 * cache does not keep) or O_PATH; O_NOFOLLOW always. */
static int host_flags(int flags)
{
    return flags & (O_ACCMODE | O_APPEND | O_TRUNC | O_SYNC | O_DSYNC);
}

/* A just-opened fd: a regular file (or, read-only, a directory), made blocking again. */
static int finish_open(struct hostfs *h, int fd, int wr, uint64_t *fh)
{
    struct stat st;
    int e = fstat(fd, &st) ? -errno : 0;
    if (!e && S_ISDIR(st.st_mode) && wr)
        e = -EISDIR;
    else if (!e && !S_ISREG(st.st_mode) && !S_ISDIR(st.st_mode))
        e = -EACCES; /* a FIFO or device swapped in after the check */
    if (!e) {
        int fl = fcntl(fd, F_GETFL);
        if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK))
            e = -errno;
    }
    if (!e)
        e = gd__hostfs_handle_add(h, fd, NULL, fh);
    if (e)
        close(fd);
    return e;
}

int gd__hostfs_open_op(void *p, const char *path, int flags, uint64_t *fh)
{
    struct hostfs *h = p;
    if ((flags & O_ACCMODE) == O_ACCMODE)
        return -EINVAL;
    struct stat st;
    int e = gd__hostfs_lstat(h, path, &st);
    if (e)
        return e;
    if (S_ISLNK(st.st_mode))
        return -ELOOP;
    if (!S_ISREG(st.st_mode) && !S_ISDIR(st.st_mode))
        return -EACCES; /* a host FIFO or device: never opened */
    int wr = (flags & O_ACCMODE) != O_RDONLY || (flags & O_TRUNC);
    if (S_ISDIR(st.st_mode) && wr)
        return -EISDIR;
    int fd = gd__hostfs_open(h, path, host_flags(flags) | O_NONBLOCK | O_NOCTTY, 0);
    return fd < 0 ? fd : finish_open(h, fd, wr, fh);
}

int gd__hostfs_create(void *p, const char *path, int flags, mode_t mode, uint64_t *fh,
                      struct stat *out)
{
    struct hostfs *h = p;
    const char *name;
    int pfd = gd__hostfs_parent(h, path, &name);
    if (pfd < 0)
        return pfd == -EBUSY ? -EISDIR : pfd;
    struct stat st;
    if (!(flags & O_EXCL) && !fstatat(pfd, name, &st, AT_SYMLINK_NOFOLLOW) &&
        !S_ISREG(st.st_mode)) {
        close(pfd);
        return S_ISDIR(st.st_mode) ? -EISDIR : S_ISLNK(st.st_mode) ? -ELOOP : -EACCES;
    }
    struct hostfs at = *h; /* the same resolution, beneath the parent */
    at.root = pfd;
    int fd = gd__hostfs_open(&at, name,
                             host_flags(flags) | (flags & O_EXCL) | O_CREAT | O_NONBLOCK | O_NOCTTY,
                             mode & 01777); /* no setuid/setgid */
    close(pfd);
    if (fd < 0)
        return fd;
    int e = fstat(fd, out) ? -errno : 0;
    if (e) {
        close(fd);
        return e;
    }
    gd__hostfs_map(h, out);
    return finish_open(h, fd, 1, fh);
}

ssize_t gd__hostfs_read(void *p, uint64_t fh, void *buf, size_t n, uint64_t off)
{
    int fd = gd__hostfs_handle_fd(p, fh);
    if (fd < 0)
        return -EBADF;
    size_t done = 0;
    while (done < n) {
        ssize_t k = pread(fd, (char *)buf + done, n - done, (off_t)(off + done));
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0)
            return done ? (ssize_t)done : -errno;
        if (k == 0)
            break;
        done += (size_t)k;
    }
    return (ssize_t)done;
}

ssize_t gd__hostfs_write(void *p, uint64_t fh, const void *buf, size_t n, uint64_t off)
{
    int fd = gd__hostfs_handle_fd(p, fh);
    if (fd < 0)
        return -EBADF;
    size_t done = 0;
    while (done < n) {
        /* with O_APPEND, Linux's pwrite appends: two guest writers do not overwrite */
        ssize_t k = pwrite(fd, (const char *)buf + done, n - done, (off_t)(off + done));
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0)
            return done ? (ssize_t)done : -errno;
        done += (size_t)k;
    }
    return (ssize_t)done;
}

int gd__hostfs_fsync(void *p, uint64_t fh, int datasync)
{
    int fd = gd__hostfs_handle_fd(p, fh);
    if (fd < 0)
        return -EBADF;
    return (datasync ? fdatasync(fd) : fsync(fd)) ? -errno : 0;
}

int gd__hostfs_fallocate(void *p, uint64_t fh, int mode, uint64_t off, uint64_t len)
{
    int fd = gd__hostfs_handle_fd(p, fh);
    if (fd < 0)
        return -EBADF;
    return fallocate(fd, mode, (off_t)off, (off_t)len) ? -errno : 0;
}

int64_t gd__hostfs_lseek(void *p, uint64_t fh, int64_t off, int whence)
{
    int fd = gd__hostfs_handle_fd(p, fh);
    if (fd < 0)
        return -EBADF;
    if (whence != SEEK_DATA && whence != SEEK_HOLE)
        return -EINVAL;
    off_t r = lseek(fd, (off_t)off, whence);
    return r < 0 ? -errno : (int64_t)r;
}

/* ---- directories ---- */

int gd__hostfs_opendir(void *p, const char *path, uint64_t *fh)
{
    struct hostfs *h = p;
    int fd = gd__hostfs_open(h, path, O_RDONLY | O_DIRECTORY, 0);
    if (fd < 0)
        return fd;
    DIR *d = fdopendir(fd);
    if (!d) {
        int e = -errno;
        close(fd);
        return e;
    }
    int e = gd__hostfs_handle_add(h, fd, d, fh);
    if (e)
        closedir(d);
    return e;
}

int gd__hostfs_readdir(void *p, const char *path, uint64_t fh, uint64_t off, gd_vfs_fill_fn fill,
                       void *ctx)
{
    struct hostfs *h = p;
    (void)path;
    struct hhandle *x = handle(h, fh);
    if (!x || !x->dir)
        return -EBADF;
    if (off == 0)
        rewinddir(x->dir);
    else
        seekdir(x->dir, (long)off); /* d_off cookies are the directory's own */
    for (;;) {
        errno = 0;
        struct dirent *de = readdir(x->dir);
        if (!de)
            return errno ? -errno : 0;
        struct stat st, *stp = &st;
        if (!strcmp(de->d_name, ".."))
            stp = NULL; /* above DIR at its root: never looked at */
        else if (!strcmp(de->d_name, ".") ? fstat(x->fd, &st)
                                          : fstatat(x->fd, de->d_name, &st, AT_SYMLINK_NOFOLLOW))
            stp = NULL; /* gone meanwhile: the name alone */
        if (stp)
            gd__hostfs_map(h, stp);
        int r = fill(ctx, de->d_name, (uint64_t)de->d_off, de->d_type, stp);
        if (r)
            return r < 0 ? r : 0;
    }
}

/* ---- xattrs ---- */

static int user_ns(const char *name)
{
    return !strncmp(name, "user.", 5);
}

int gd__hostfs_setxattr(void *p, const char *path, const char *name, const void *value, size_t n,
                        int flags)
{
    if (!user_ns(name))
        return -EOPNOTSUPP;
    int fd = gd__hostfs_open_plain(p, path, O_RDONLY);
    if (fd < 0)
        return fd;
    int e = fsetxattr(fd, name, value, n, flags) ? -errno : 0;
    close(fd);
    return e;
}

ssize_t gd__hostfs_getxattr(void *p, const char *path, const char *name, void *buf, size_t cap)
{
    if (!user_ns(name))
        return -ENODATA;
    int fd = gd__hostfs_open_plain(p, path, O_RDONLY);
    if (fd < 0)
        return fd == -EPERM ? -ENODATA : fd;
    ssize_t k = fgetxattr(fd, name, buf, cap);
    ssize_t e = k < 0 ? -errno : k;
    close(fd);
    return e;
}

ssize_t gd__hostfs_listxattr(void *p, const char *path, char *buf, size_t cap)
{
    int fd = gd__hostfs_open_plain(p, path, O_RDONLY);
    if (fd < 0)
        return fd == -EPERM ? 0 : fd;
    char *all = malloc(XATTR_LIST_MAX);
    ssize_t k = all ? flistxattr(fd, all, XATTR_LIST_MAX) : -1;
    ssize_t e = k < 0 ? (all ? -errno : -ENOMEM) : 0;
    close(fd);
    size_t total = 0;
    for (ssize_t i = 0; i < k; i += (ssize_t)strlen(all + i) + 1) {
        size_t l = strlen(all + i) + 1;
        if (!user_ns(all + i))
            continue;
        if (cap && total + l > cap) {
            e = -ERANGE;
            break;
        }
        if (cap)
            memcpy(buf + total, all + i, l);
        total += l;
    }
    free(all);
    return e ? e : (ssize_t)total;
}

int gd__hostfs_removexattr(void *p, const char *path, const char *name)
{
    if (!user_ns(name))
        return -EOPNOTSUPP;
    int fd = gd__hostfs_open_plain(p, path, O_RDONLY);
    if (fd < 0)
        return fd;
    int e = fremovexattr(fd, name) ? -errno : 0;
    close(fd);
    return e;
}
