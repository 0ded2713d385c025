/* vfs_client.h - the guest kernel's side of a FUSE session, for tests: requests encoded
 * by hand (fuse_in_header + body), replies checked for their framing (length, unique)
 * and decoded. Every call returns 0 or the reply's negative errno. */
#ifndef GD_TEST_VFS_CLIENT_H
#define GD_TEST_VFS_CLIENT_H

#include "vfs/fuse.h"
#include "vfs/vfs.h"

#include <stddef.h>
#include <stdint.h>

struct vc {
    gd_vfs_session *s;
    uint64_t unique;
    uint32_t init_flags; /* what INIT negotiated */
    uint8_t *out;        /* the last reply (GD_FUSE_MAX_IO + 4096 bytes) */
    size_t outlen;
    const uint8_t *payload; /* the last reply's body */
    size_t paylen;
};

/* A session over pv (owned), opts may be NULL; INIT done. */
void vc_open(struct vc *c, gd_vfs_provider *pv, const struct gd_vfs_session_opts *o);
void vc_close(struct vc *c);

/* One raw request: header for op/nodeid, then body[blen], s1 and s2 with their NULs (when
 * not NULL), then data[dlen]. Returns the reply's error (0 for none: FORGET). */
int vc_req(struct vc *c, uint32_t op, uint64_t nodeid, const void *body, size_t blen,
           const char *s1, const char *s2, const void *data, size_t dlen);
/* vc_req's reply length as the session returned it. */
long vc_last(const struct vc *c);

int vc_init(struct vc *c);
int vc_lookup(struct vc *c, uint64_t dir, const char *name, struct fuse_entry_out *e);
int vc_getattr(struct vc *c, uint64_t node, struct fuse_attr *a);
int vc_create(struct vc *c, uint64_t dir, const char *name, int flags, uint32_t mode,
              struct fuse_entry_out *e, uint64_t *fh);
int vc_mkdir(struct vc *c, uint64_t dir, const char *name, uint32_t mode, struct fuse_entry_out *e);
int vc_mknod(struct vc *c, uint64_t dir, const char *name, uint32_t mode, uint32_t rdev,
             struct fuse_entry_out *e);
int vc_symlink(struct vc *c, uint64_t dir, const char *name, const char *target,
               struct fuse_entry_out *e);
int vc_link(struct vc *c, uint64_t old, uint64_t dir, const char *name, struct fuse_entry_out *e);
int vc_unlink(struct vc *c, uint64_t dir, const char *name);
int vc_rmdir(struct vc *c, uint64_t dir, const char *name);
int vc_rename(struct vc *c, uint64_t dir, const char *name, uint64_t newdir, const char *newname,
              unsigned flags);
int vc_open_file(struct vc *c, uint64_t node, int flags, uint64_t *fh);
int vc_release(struct vc *c, uint64_t node, uint64_t fh);
/* >= 0: bytes */
long vc_write(struct vc *c, uint64_t node, uint64_t fh, uint64_t off, const void *p, size_t n);
long vc_read(struct vc *c, uint64_t node, uint64_t fh, uint64_t off, void *p, size_t n);
int vc_setattr(struct vc *c, uint64_t node, const struct fuse_setattr_in *in, struct fuse_attr *a);
int vc_readlink(struct vc *c, uint64_t node, char *buf, size_t cap);
int vc_opendir(struct vc *c, uint64_t node, uint64_t *fh);
int vc_releasedir(struct vc *c, uint64_t node, uint64_t fh);
/* one READDIR(PLUS) call: the payload is c->payload/c->paylen */
int vc_readdir(struct vc *c, uint64_t node, uint64_t fh, uint64_t off, uint32_t size, int plus);
void vc_forget(struct vc *c, uint64_t node, uint64_t n);
int vc_setxattr(struct vc *c, uint64_t node, const char *name, const void *v, size_t n, int flags);
/* >= 0: the value's length (copied to buf) or, with cap 0, the size */
long vc_getxattr(struct vc *c, uint64_t node, const char *name, void *buf, uint32_t cap);
long vc_listxattr(struct vc *c, uint64_t node, void *buf, uint32_t cap);
int vc_removexattr(struct vc *c, uint64_t node, const char *name);

#endif
