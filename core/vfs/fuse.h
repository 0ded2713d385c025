/* fuse.h - the FUSE wire codec: one guest request decoded and validated, replies encoded
 * into caller buffers. Transport-independent (virtio-fs and FUSE over virtio-serial carry
 * the same messages); no allocation, no I/O, no state.
 *
 * Opcodes and struct layouts are the kernel's own (<linux/fuse.h>, protocol 7.x); this
 * header only adds what the kernel leaves to the server: which messages are well formed.
 *
 * What the decoder does NOT do, and every caller must: treat fuse_in_header.nodeid, the
 * file handles (fh, fh_in, fh_out), nodeid_out, oldnodeid, newdir, lock owners and the
 * uid/gid/pid as plain numbers chosen by the guest. They are never pointers; the provider
 * looks each up in its own table and answers ENOENT/EBADF (or ESTALE) for one it did not
 * hand out. Offsets and lengths (READ/WRITE offset, FALLOCATE, COPY_FILE_RANGE, LSEEK)
 * are checked for nothing but their field size: overflow of offset + length is the
 * provider's to refuse (EINVAL/EFBIG).
 *
 * Negotiation this codec assumes (gd_fuse_reply_init offers nothing else): no
 * FUSE_SETXATTR_EXT (SETXATTR carries the 8-byte compat fuse_setxattr_in), no FUSE_INIT_EXT
 * flags2 features (no security contexts: total_extlen must be 0), no FUSE_EXPORT_SUPPORT
 * (so LOOKUP never carries "." or ".."). A caller must decode nothing but INIT before
 * INIT has been answered; that order is the caller's (the codec is stateless). */
#ifndef GD_VFS_FUSE_H
#define GD_VFS_FUSE_H

#include <linux/fuse.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>

/* The oldest kernel protocol gd_fuse_reply_init accepts (7.31: Linux 5.4). Every layout
 * the decoder checks is the same from there to FUSE_KERNEL_MINOR_VERSION, except INIT's
 * own body, which grew at 7.36 (both sizes are accepted). */
#define GD_FUSE_MIN_MINOR 31
/* Largest WRITE payload, READ/READDIR size, and max_write offered (256 pages of 4 KiB:
 * the kernel's default max_pages_limit). */
#define GD_FUSE_MAX_IO (1u << 20)
/* Smallest max_write gd_fuse_reply_init offers. */
#define GD_FUSE_MIN_MAX_WRITE (128u << 10)
/* Limits on names (NAME_MAX), symlink targets (PATH_MAX - 1), xattr names, values and
 * lists (XATTR_NAME_MAX, XATTR_SIZE_MAX, XATTR_LIST_MAX). */
#define GD_FUSE_NAME_MAX 255
#define GD_FUSE_LINK_MAX 4095
#define GD_FUSE_XATTR_NAME_MAX 255
#define GD_FUSE_XATTR_SIZE_MAX 65536

/* One decoded request. Fixed-size parts are copied (the buffer need not be aligned);
 * names, the symlink target, WRITE data, the SETXATTR value and BATCH_FORGET's entries
 * are borrowed from the decoded buffer and live as long as it does. */
struct gd_fuse_req {
    struct fuse_in_header h; /* valid whenever hdr_ok */
    int hdr_ok;              /* the header was intact and len matched: h.unique can be answered */
    union {
        struct fuse_init_in init; /* a 7.31-7.35 kernel's 16 bytes: the rest stays 0 */
        struct fuse_forget_in forget;
        struct fuse_batch_forget_in batch_forget; /* entries: gd_fuse_forget_at */
        struct fuse_getattr_in getattr;
        struct fuse_setattr_in setattr;
        struct fuse_mknod_in mknod;
        struct fuse_mkdir_in mkdir;
        struct fuse_rename2_in rename; /* RENAME and RENAME2 (RENAME: flags 0) */
        struct fuse_link_in link;
        struct fuse_open_in open;     /* OPEN, OPENDIR */
        struct fuse_create_in create; /* CREATE, TMPFILE */
        struct fuse_read_in read;     /* READ, READDIR, READDIRPLUS */
        struct fuse_write_in write;
        struct fuse_release_in release; /* RELEASE, RELEASEDIR */
        struct fuse_fsync_in fsync;     /* FSYNC, FSYNCDIR */
        struct fuse_flush_in flush;
        struct fuse_setxattr_in setxattr; /* size and flags only (no SETXATTR_EXT) */
        struct fuse_getxattr_in getxattr; /* GETXATTR, LISTXATTR */
        struct fuse_access_in access;
        struct fuse_interrupt_in interrupt;
        struct fuse_fallocate_in fallocate;
        struct fuse_lseek_in lseek;
        struct fuse_copy_file_range_in copy_file_range;
        struct fuse_lk_in lk; /* GETLK, SETLK, SETLKW */
    } in;
    /* LOOKUP, MKNOD, MKDIR, UNLINK, RMDIR, CREATE, TMPFILE, LINK: the entry's name;
     * SYMLINK: the new link's name; RENAME/RENAME2: the old name; xattr ops: the
     * attribute name. NUL-terminated at name[namelen]. */
    const char *name;
    size_t namelen;
    /* SYMLINK: the target; RENAME/RENAME2: the new name. NUL-terminated. */
    const char *name2;
    size_t name2len;
    /* WRITE: in.write.size bytes; SETXATTR: the value (in.setxattr.size bytes);
     * BATCH_FORGET: in.batch_forget.count packed struct fuse_forget_one. */
    const void *data;
    size_t datalen;
};

/* Decodes the one request in buf[0..n): fuse_in_header.len must equal n (the transport
 * frames: virtio-fs by descriptor chain, virtio-serial by this very length), unique must
 * not be 0 (replies with unique 0 are notifications) and total_extlen must be 0. The body
 * must have exactly the layout of its opcode: fixed structs at their full size, each name
 * NUL-terminated with nothing after the NUL but the next part.
 *
 * Entry names must be non-empty, contain no '/' and not be "." or ".." (-EPROTO: the
 * kernel never sends those) and be at most GD_FUSE_NAME_MAX bytes (-ENAMETOOLONG: a
 * guest program can ask for a longer name, the kernel passes up to 1024). Symlink
 * targets: non-empty, <= GD_FUSE_LINK_MAX. Xattr names: non-empty, <= 255 ('/' and dots
 * are legal there); SETXATTR's value must be the rest of the body, of the declared size,
 * <= GD_FUSE_XATTR_SIZE_MAX. WRITE's data must be the rest of the body, of in.write.size
 * bytes (-EPROTO otherwise) and <= GD_FUSE_MAX_IO (-EINVAL). READ/READDIR(PLUS) sizes
 * <= GD_FUSE_MAX_IO, GETXATTR/LISTXATTR sizes <= 64 KiB (-EINVAL). BATCH_FORGET: count
 * entries must fill the rest of the body exactly (-EPROTO).
 *
 * Returns 0, or:
 *   -EPROTO  malformed; if out->hdr_ok the request can still be answered (EIO is right),
 *            otherwise nothing in it can be trusted: drop the channel;
 *   -ENOSYS  an opcode this codec does not decode (BMAP, IOCTL, POLL, NOTIFY_REPLY,
 *            SETUPMAPPING, REMOVEMAPPING, CUSE_INIT, anything unknown): answer ENOSYS,
 *            and the kernel stops sending it;
 *   -EINVAL, -ENAMETOOLONG  well-formed but refused: answer with that errno.
 * Whatever the result, never answer FORGET or BATCH_FORGET (gd_fuse_op_has_reply). */
int gd_fuse_decode(const void *buf, size_t n, struct gd_fuse_req *out);

/* BATCH_FORGET's entry i (i < in.batch_forget.count), copied out. */
void gd_fuse_forget_at(const struct gd_fuse_req *r, uint32_t i, struct fuse_forget_one *out);

/* 0 for the opcodes the kernel expects no reply to (FORGET, BATCH_FORGET), else 1. */
int gd_fuse_op_has_reply(uint32_t opcode);

/* "LOOKUP", "WRITE", ... or "?" (for logs and audit lines). */
const char *gd_fuse_opname(uint32_t opcode);

/* ---- replies ---------------------------------------------------------------------
 * Every encoder writes one whole reply (fuse_out_header + body) at buf and returns its
 * length, or 0 when cap is too small (nothing useful written). */

/* An error (either sign of an errno; the kernel takes -511..-1, anything else is sent as
 * -EIO) or, with err 0, an empty success (UNLINK, RMDIR, RELEASE, FLUSH, FSYNC, ...). */
size_t gd_fuse_reply_err(void *buf, size_t cap, uint64_t unique, int err);
/* Success carrying n bytes copied from p (READ, READLINK, GETXATTR/LISTXATTR data). */
size_t gd_fuse_reply_data(void *buf, size_t cap, uint64_t unique, const void *p, size_t n);
/* Success whose payload the caller has already put at buf + sizeof(struct
 * fuse_out_header) (READ into place, READDIR packed with gd_fuse_add_dirent): writes only
 * the header. */
size_t gd_fuse_reply_hdr(void *buf, size_t cap, uint64_t unique, size_t payload);

size_t gd_fuse_reply_entry(void *buf, size_t cap, uint64_t unique, const struct fuse_entry_out *e);
size_t gd_fuse_reply_attr(void *buf, size_t cap, uint64_t unique, const struct fuse_attr_out *a);
size_t gd_fuse_reply_open(void *buf, size_t cap, uint64_t unique, const struct fuse_open_out *o);
/* CREATE: entry then open. */
size_t gd_fuse_reply_create(void *buf, size_t cap, uint64_t unique, const struct fuse_entry_out *e,
                            const struct fuse_open_out *o);
size_t gd_fuse_reply_write(void *buf, size_t cap, uint64_t unique, uint32_t written);
size_t gd_fuse_reply_statfs(void *buf, size_t cap, uint64_t unique, const struct fuse_kstatfs *st);
/* GETXATTR/LISTXATTR with size 0: the size the value or list would take. */
size_t gd_fuse_reply_xattr_size(void *buf, size_t cap, uint64_t unique, uint32_t size);
size_t gd_fuse_reply_lseek(void *buf, size_t cap, uint64_t unique, uint64_t offset);

/* fuse_attr from a stat (ino, size, blocks, times, mode, nlink, uid, gid, rdev, blksize). */
void gd_fuse_attr_from_stat(struct fuse_attr *a, const struct stat *st);

/* ---- INIT --------------------------------------------------------------------------- */

/* Flags offered by default, and every flag a caller may add (the decoder handles what
 * they make the kernel send). FUSE_MAX_PAGES is always offered. */
#define GD_FUSE_INIT_DEFAULT                                                                       \
    (FUSE_ASYNC_READ | FUSE_BIG_WRITES | FUSE_PARALLEL_DIROPS | FUSE_DO_READDIRPLUS |              \
     FUSE_READDIRPLUS_AUTO | FUSE_MAX_PAGES)
#define GD_FUSE_INIT_SUPPORTED                                                                     \
    (GD_FUSE_INIT_DEFAULT | FUSE_WRITEBACK_CACHE | FUSE_ATOMIC_O_TRUNC | FUSE_AUTO_INVAL_DATA |    \
     FUSE_EXPLICIT_INVAL_DATA | FUSE_ASYNC_DIO | FUSE_POSIX_LOCKS | FUSE_FLOCK_LOCKS |             \
     FUSE_DONT_MASK | FUSE_CACHE_SYMLINKS | FUSE_HANDLE_KILLPRIV)

/* Zero fields take the defaults. */
struct gd_fuse_init_opts {
    uint32_t want;           /* flags to offer; 0: GD_FUSE_INIT_DEFAULT. Masked by SUPPORTED */
    int writeback_cache;     /* also offer FUSE_WRITEBACK_CACHE (the provider allows it) */
    uint32_t max_write;      /* 0: GD_FUSE_MAX_IO; clamped to [MIN_MAX_WRITE, MAX_IO], pages */
    uint32_t max_readahead;  /* upper bound; 0: GD_FUSE_MAX_IO. The reply takes the min */
    uint16_t max_background; /* requests in flight; 0: 64 */
    uint16_t congestion_threshold; /* 0: 3/4 of max_background */
    uint32_t time_gran;            /* ns; 0: 1 */
};

/* What the kernel will use once it reads the reply. error: 0, or -EPROTO when the
 * kernel's protocol is not 7.x with x >= GD_FUSE_MIN_MINOR (the reply is then that error;
 * the session is over). */
struct gd_fuse_init_result {
    int error;
    uint32_t major, minor; /* the negotiated protocol: 7, min(kernel's, ours) */
    uint32_t flags;        /* offered by both */
    uint32_t max_write;    /* capped at 128 KiB when the kernel lacks FUSE_MAX_PAGES */
    uint32_t max_readahead;
    uint16_t max_pages;
};

/* Answers the decoded INIT request r (opts may be NULL). res may be NULL. */
size_t gd_fuse_reply_init(void *buf, size_t cap, const struct gd_fuse_req *r,
                          const struct gd_fuse_init_opts *opts, struct gd_fuse_init_result *res);

/* ---- READDIR / READDIRPLUS ------------------------------------------------------------
 * Appenders pack one entry at buf (the payload part of the reply, cap = what is left of
 * min(in.read.size, the reply buffer)), zero-padded to FUSE_DIRENT_ALIGN. off is the
 * cookie the kernel passes back in the next READDIR to continue after this entry; type
 * is a DT_* value. Return the bytes used, 0 when the entry does not fit (stop: the rest
 * goes in the next READDIR), or -EINVAL for a name the kernel would refuse (empty, longer
 * than GD_FUSE_NAME_MAX, containing '/' or NUL): skip it. */
long gd_fuse_add_dirent(void *buf, size_t cap, const char *name, size_t namelen, uint64_t ino,
                        uint64_t off, uint32_t type);
/* READDIRPLUS: e (its nodeid 0 means "no lookup": the kernel then only lists the name);
 * ino and type come from e->attr. The kernel counts a lookup for every nonzero nodeid it
 * reads, as for LOOKUP. */
long gd_fuse_add_direntplus(void *buf, size_t cap, const char *name, size_t namelen,
                            const struct fuse_entry_out *e, uint64_t off);

/* Reads back a packed READDIR (plus 0) or READDIRPLUS (plus 1) payload as the kernel
 * does (tests, fuzzing): the next entry at *pos, advancing it. Returns 1, 0 at the end (a
 * remainder smaller than an entry header is ignored, as by the kernel), -EPROTO for an
 * entry with an empty name, a name over 1024 bytes or one with '/' (the kernel's EIO),
 * and, stricter than the kernel (which stops there), for one that overruns n. */
struct gd_fuse_dirent_view {
    uint64_t ino, off;
    uint32_t type;
    const char *name; /* not NUL-terminated */
    size_t namelen;
    struct fuse_entry_out entry; /* plus only */
};
int gd_fuse_dirent_next(const void *buf, size_t n, size_t *pos, int plus,
                        struct gd_fuse_dirent_view *v);

#endif
