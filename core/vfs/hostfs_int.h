/* hostfs_int.h - the host directory provider's parts (hostfs.c: resolution and the tree;
 * hostfs_io.c: open files, directories, xattrs). Module-private. */
#ifndef GD_VFS_HOSTFS_INT_H
#define GD_VFS_HOSTFS_INT_H

#include "vfs/vfs.h"

#include <dirent.h>
#include <stdint.h>
#include <sys/stat.h>

struct hhandle {
    int fd; /* -1: free */
    DIR *dir;
    size_t next_free;
};

struct hostfs {
    int root; /* O_PATH | O_DIRECTORY of DIR */
    int readonly;
    int privileged; /* gondolin runs as root: owners are honoured as they are */
    uid_t uid;      /* the user running gondolin: the guest's root */
    gid_t gid;
    struct hhandle *h;
    size_t nh, free_h;
};

/* path (relative, "" = DIR) opened beneath DIR with openat2: RESOLVE_BENEATH |
 * RESOLVE_NO_SYMLINKS (which implies RESOLVE_NO_MAGICLINKS), O_NOFOLLOW | O_CLOEXEC
 * added. The fd or a negative errno. */
int gd__hostfs_open(const struct hostfs *h, const char *path, int flags, mode_t mode);
/* The directory holding path's last name (O_PATH, resolved as above) and that name
 * (pointing into path); the root itself has no parent: -EBUSY. */
int gd__hostfs_parent(const struct hostfs *h, const char *path, const char **name);
/* path's own attributes (O_PATH, resolved as above: a symlink is itself), unmapped. */
int gd__hostfs_lstat(const struct hostfs *h, const char *path, struct stat *st);
/* The guest's view of a host stat: the user running gondolin is root there. */
void gd__hostfs_map(const struct hostfs *h, struct stat *st);
/* A regular file or directory at path, opened for real (not O_PATH) without following
 * or blocking: for fchmod/fsetxattr. Other types: -EPERM. */
int gd__hostfs_open_plain(const struct hostfs *h, const char *path, int flags);

/* hostfs_io.c: handles */
int gd__hostfs_handle_add(struct hostfs *h, int fd, DIR *dir, uint64_t *fh);
/* the handle's fd, or -1 */
int gd__hostfs_handle_fd(const struct hostfs *h, uint64_t fh);
void gd__hostfs_handles_close(struct hostfs *h);

/* the operations of hostfs_io.c, for the ops table in hostfs.c */
int gd__hostfs_open_op(void *p, const char *path, int flags, uint64_t *fh);
int gd__hostfs_create(void *p, const char *path, int flags, mode_t mode, uint64_t *fh,
                      struct stat *out);
ssize_t gd__hostfs_read(void *p, uint64_t fh, void *buf, size_t n, uint64_t off);
ssize_t gd__hostfs_write(void *p, uint64_t fh, const void *buf, size_t n, uint64_t off);
int gd__hostfs_fsync(void *p, uint64_t fh, int datasync);
int gd__hostfs_release(void *p, uint64_t fh);
int gd__hostfs_opendir(void *p, const char *path, uint64_t *fh);
int gd__hostfs_readdir(void *p, const char *path, uint64_t fh, uint64_t off, gd_vfs_fill_fn fill,
                       void *ctx);
int gd__hostfs_setxattr(void *p, const char *path, const char *name, const void *value, size_t n,
                        int flags);
ssize_t gd__hostfs_getxattr(void *p, const char *path, const char *name, void *buf, size_t cap);
ssize_t gd__hostfs_listxattr(void *p, const char *path, char *buf, size_t cap);
int gd__hostfs_removexattr(void *p, const char *path, const char *name);
int gd__hostfs_fallocate(void *p, uint64_t fh, int mode, uint64_t off, uint64_t len);
int64_t gd__hostfs_lseek(void *p, uint64_t fh, int64_t off, int whence);

#endif
