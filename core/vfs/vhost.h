/* virtio-fs transport: our process is the vhost-user back-end of QEMU's
 * vhost-user-fs-device, and the guest kernel's virtiofs driver is the FUSE client.
 *
 * One back-end per mount. It runs on a thread of its own: it answers the vhost-user
 * messages on its end of a socketpair (the other end is given to QEMU as
 * `-chardev socket,fd=N`), maps the guest memory QEMU shares (memfd), and serves the
 * request queues: every descriptor chain is bounds-checked against the mapped regions,
 * the request is copied into a private buffer before it is parsed (the guest can change
 * shared memory at any time), handed to the session, and the reply copied out. */
#ifndef GD_VFS_VHOST_H
#define GD_VFS_VHOST_H

#include "vfs/vfs.h"

typedef struct gd_vhost_fs gd_vhost_fs;

/* One FUSE request (a private copy) -> its reply; the gd_vfs_session_handle contract:
 * the reply length, 0 for none, -EPROTO to drop the device. */
typedef long (*gd_vhost_fs_handler)(void *ud, const void *in, size_t n, void *out, size_t cap);

/* Creates the socketpair and starts the thread. *qemu_fd gets the end QEMU must inherit
 * (close-on-exec set: the VM layer dups it into the child). handle(ud, ...) is called
 * only from the back-end's thread until gd_vhost_fs_stop returns (for a mount:
 * gd_vfs_session_handle with the session). */
int gd_vhost_fs_start(gd_vhost_fs_handler handle, void *ud, int *qemu_fd, gd_vhost_fs **out,
                      struct gd_err *err);
/* Stops the thread: a handler call in progress returns, nothing more is served; then
 * unmaps guest memory, closes, frees. NULL is fine. */
void gd_vhost_fs_stop(gd_vhost_fs *v);
/* Why the back-end dropped the device (a protocol error by QEMU or the guest), or "". */
const char *gd_vhost_fs_error(const gd_vhost_fs *v);

#endif
