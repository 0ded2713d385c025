/* Files in the guest: providers, the FUSE session that serves them, and mount specs.
 *
 * This header is also the plugin SDK's VFS part: a provider is a table of path-based
 * operations (struct gd_vfs_ops) plus an opaque pointer. Paths given to a provider are
 * relative to the mount root, never start or end with '/', contain no empty, "." or ".."
 * component, and "" is the root itself. Operations return 0 (or a byte count) on
 * success and a negative errno on failure; an operation left NULL answers ENOSYS
 * (EROFS for the mutating ones).
 *
 * A session (gd_vfs_session) owns the guest's view of one mount: the node table
 * (nodeid -> parent + name, lookup counts), open handles, INIT negotiation and the
 * mapping of FUSE requests onto the provider. It is transport-independent: the
 * transport hands it one whole request in a private buffer (never guest-shared memory)
 * and a buffer for the reply.
 *
 * Threading: a session and its provider are used from one thread at a time (the
 * transport's); a provider that needs another thread (Lua) hops there itself. */
#ifndef GD_VFS_VFS_H
#define GD_VFS_VFS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/types.h>

struct gd_err;

/* ---- providers ---- */

/* setattr: which fields are set (the FUSE FATTR_* meaning) */
enum {
    GD_VFS_SET_MODE = 1 << 0,
    GD_VFS_SET_UID = 1 << 1,
    GD_VFS_SET_GID = 1 << 2,
    GD_VFS_SET_SIZE = 1 << 3,
    GD_VFS_SET_ATIME = 1 << 4, /* to atime */
    GD_VFS_SET_MTIME = 1 << 5, /* to mtime */
    GD_VFS_SET_ATIME_NOW = 1 << 6,
    GD_VFS_SET_MTIME_NOW = 1 << 7,
    GD_VFS_SET_CTIME = 1 << 8,
};

struct gd_vfs_setattr {
    unsigned valid; /* GD_VFS_SET_* */
    mode_t mode;    /* permission bits only (07777) */
    uid_t uid;
    gid_t gid;
    uint64_t size;
    struct timespec atime, mtime, ctime;
};

/* readdir: called once per entry in order; off is the cookie that continues after this
 * entry. st is the entry's full attributes when the provider has them cheaply (then the
 * session can answer READDIRPLUS from it), else NULL and only type (DT_*) is known.
 * Returns 0 to continue, 1 when the reader's buffer is full (stop; the same entry comes
 * again on the next call), negative to abort. */
typedef int (*gd_vfs_fill_fn)(void *ctx, const char *name, uint64_t off, unsigned type,
                              const struct stat *st);

struct gd_vfs_ops {
    /* Attributes of a path (serves LOOKUP and GETATTR). st_ino is the provider's own
     * number (reported to the guest as is); st_dev is ignored. */
    int (*getattr)(void *p, const char *path, struct stat *st);
    /* fh: a handle from open/create when the guest had the file open, else 0 (use path) */
    int (*setattr)(void *p, const char *path, uint64_t fh, const struct gd_vfs_setattr *a,
                   struct stat *out);
    /* the target, not NUL-terminated; returns its length (<= cap) */
    int (*readlink)(void *p, const char *path, char *buf, size_t cap);
    int (*mknod)(void *p, const char *path, mode_t mode, dev_t rdev, struct stat *out);
    int (*mkdir)(void *p, const char *path, mode_t mode, struct stat *out);
    int (*unlink)(void *p, const char *path);
    int (*rmdir)(void *p, const char *path);
    int (*symlink)(void *p, const char *target, const char *path, struct stat *out);
    /* flags: RENAME_NOREPLACE / RENAME_EXCHANGE / RENAME_WHITEOUT */
    int (*rename)(void *p, const char *from, const char *to, unsigned flags);
    int (*link)(void *p, const char *from, const char *to, struct stat *out);
    /* flags: the guest's open flags (O_ACCMODE, O_APPEND, O_TRUNC, ...; never O_CREAT) */
    int (*open)(void *p, const char *path, int flags, uint64_t *fh);
    int (*create)(void *p, const char *path, int flags, mode_t mode, uint64_t *fh,
                  struct stat *out);
    /* byte counts; short only at end of file (read) */
    ssize_t (*read)(void *p, uint64_t fh, void *buf, size_t n, uint64_t off);
    ssize_t (*write)(void *p, uint64_t fh, const void *buf, size_t n, uint64_t off);
    int (*flush)(void *p, uint64_t fh);
    int (*fsync)(void *p, uint64_t fh, int datasync);
    int (*release)(void *p, uint64_t fh);
    int (*opendir)(void *p, const char *path, uint64_t *fh);
    /* entries after cookie off (0: from the start, "." and ".." included or not; the
     * session adds them when the provider does not) */
    int (*readdir)(void *p, const char *path, uint64_t fh, uint64_t off, gd_vfs_fill_fn fill,
                   void *ctx);
    int (*releasedir)(void *p, uint64_t fh);
    int (*statfs)(void *p, const char *path, struct statvfs *st);
    int (*setxattr)(void *p, const char *path, const char *name, const void *value, size_t n,
                    int flags);
    /* cap 0: return the size only */
    ssize_t (*getxattr)(void *p, const char *path, const char *name, void *buf, size_t cap);
    ssize_t (*listxattr)(void *p, const char *path, char *buf, size_t cap);
    int (*removexattr)(void *p, const char *path, const char *name);
    int (*fallocate)(void *p, uint64_t fh, int mode, uint64_t off, uint64_t len);
    /* SEEK_DATA / SEEK_HOLE; returns the offset */
    int64_t (*lseek)(void *p, uint64_t fh, int64_t off, int whence);
    void (*destroy)(void *p);
    /* Plugins register ops with their sizeof (plugin API level 2): new operations are
     * only ever appended below destroy. */
};

/* Provider capabilities (gd_vfs_provider.flags) */
enum {
    GD_VFS_READONLY = 1 << 0,  /* every mutating op is EROFS without asking */
    GD_VFS_EXCLUSIVE = 1 << 1, /* nobody else changes the tree: long cache TTLs and the
                                  guest's writeback cache are safe */
    GD_VFS_DOTS = 1 << 2,      /* readdir lists "." and ".." itself, with cookies of its
                                  own (hostfs); without it the session makes them up and
                                  the provider's cookies must stay below INT64_MAX - 2 */
};

typedef struct gd_vfs_provider {
    const struct gd_vfs_ops *ops;
    void *p;
    unsigned flags;   /* GD_VFS_* */
    const char *name; /* "hostfs", "memory", ... (static) */
} gd_vfs_provider;

/* Frees a provider (ops->destroy, then the struct itself). NULL is fine. */
void gd_vfs_provider_free(gd_vfs_provider *pv);

/* ---- built-in providers ---- */

/* hostfs: DIR on the host, every path resolved beneath it (openat2 RESOLVE_BENEATH |
 * RESOLVE_NO_MAGICLINKS). Files the guest creates belong to the user running gondolin;
 * special files, setuid/setgid bits and chown to other users are refused. */
int gd_vfs_hostfs_new(const char *dir, int readonly, gd_vfs_provider **out, struct gd_err *err);
/* memory: a tmpfs-like tree of at most cap bytes of data (0: 64 MiB). */
int gd_vfs_memory_new(uint64_t cap, gd_vfs_provider **out, struct gd_err *err);
/* readonly: wraps inner (takes ownership); mutating ops are EROFS. */
int gd_vfs_readonly_new(gd_vfs_provider *inner, gd_vfs_provider **out, struct gd_err *err);

/* overlay: reads from lower, every change goes to upper (takes ownership of both, also
 * when it fails). lower is never asked to change anything (a hostfs opened read-only);
 * upper is where writes land (a memory provider: its cap bounds what the guest may
 * write). Files are copied up on open for writing, setattr, xattr changes, link and
 * rename; deleted lower entries are remembered as whiteouts (in the overlay, never as
 * files); a directory with lower entries below it cannot be renamed (EXDEV: mv copies).
 * Thread-safe: the change listing may run on another thread than the session. */
int gd_vfs_overlay_new(gd_vfs_provider *lower, gd_vfs_provider *upper, gd_vfs_provider **out,
                       struct gd_err *err);

/* One change of an overlay, relative to the mount root ("a/b"). st: the entry now (added,
 * modified; st_ino as the guest sees it) or as it was in the lower layer (deleted). */
enum gd_vfs_change_kind { GD_VFS_ADDED = 'A', GD_VFS_MODIFIED = 'M', GD_VFS_DELETED = 'D' };
typedef int (*gd_vfs_change_fn)(void *ud, const char *path, int kind, const struct stat *st);

/* Every change of ov (an overlay, or a shadow around one), sorted by path (bytewise):
 * added entries (every one, a new directory's contents included), modified ones (type,
 * permissions, owner, size, mtime or bytes differ from the lower entry; a directory only
 * for its own attributes) and deleted ones (the topmost: a deleted directory is one
 * line). fn's nonzero result stops the listing and is returned; -EINVAL when ov is not
 * an overlay, -ENOMEM. The mount root's own attributes are not compared. */
int gd_vfs_overlay_changes(gd_vfs_provider *ov, gd_vfs_change_fn fn, void *ud);

enum { GD_VFS_EXPORT_WHITEOUTS = 1 << 0 }; /* deleted paths as OCI whiteouts (.wh.NAME) */
/* A pax tar stream to fd of the added and modified entries (regular files with their
 * bytes, directories, symlinks; modes, owners and mtimes kept; devices and fifos left
 * out), names relative to the mount root, in path order; only the changes at or below
 * under ("" or NULL: all). The guest's file operations on
 * the mount wait while it is written. */
int gd_vfs_overlay_export(gd_vfs_provider *ov, const char *under, int fd, unsigned flags,
                          struct gd_err *err);
/* Is path under (equal to it, or below it; "" holds everything)? */
int gd_vfs_path_under(const char *path, const char *under);

/* Path globs (hide lists), like .gitignore: a glob without '/' (a trailing '/' is
 * ignored) matches an entry's name at any depth ("node_modules", "*.pem", ".env"); a glob
 * with '/' is anchored at the mount root (a leading '/' is optional): ".git/config",
 * "**" + "/" + "*.pem" ("**" as a whole component matches zero or more components). Within a
 * component: fnmatch(3) without flags ('*', '?', '[...]', '\' escapes; a leading '.' is
 * not special). No negation ('!'). check: 0 or -EINVAL (empty, '!', "." or ".."
 * components, "a//b", too long). match: does glob match the provider path itself? */
int gd_vfs_glob_check(const char *glob);
int gd_vfs_glob_match(const char *glob, const char *path);

/* shadow: hides the paths that globs match (NULL-ended, copied) in inner (takes ownership,
 * also when it fails). A path is hidden when it or one of its ancestors matches (a hidden
 * directory hides its subtree).
 * GD_VFS_SHADOW_HIDE: a hidden path does not exist: ENOENT for lookups, getattr, open,
 * unlink, rmdir, readlink, xattrs, the source of rename and link; left out of readdir;
 * making one (create, mknod, mkdir, symlink, the target of rename or link) is EACCES.
 * GD_VFS_SHADOW_MEMORY: hidden paths live in a private memory provider of cap bytes
 * (0: 64 MiB): the guest sees only what it wrote there, inner never sees those writes.
 * Either way: a rename across the boundary, or of a directory below which an anchored
 * glob could match, is EXDEV (the guest's mv copies, through the shadow); a non-hidden
 * name whose inode is the inode of a hidden file (a host hard link) is hidden too, for
 * the inodes seen: every hidden entry met by a scan at creation (its first 100 000
 * entries) or by an operation since. */
enum { GD_VFS_SHADOW_HIDE = 0, GD_VFS_SHADOW_MEMORY = 1 };
int gd_vfs_shadow_new(gd_vfs_provider *inner, const char *const *globs, int mode, uint64_t cap,
                      gd_vfs_provider **out, struct gd_err *err);

/* ---- hooks (policy: Lua on_fs/on_fs_done, .so fs hooks, the audit) ---- */

/* One guest operation as hooks see it. Before: open (flags say read/write/trunc/append),
 * create, mknod, mkdir, symlink, link, unlink, rmdir, rename, setattr (truncate, chmod,
 * chown, utimes), setxattr, removexattr. After: the same, plus "close" with the bytes
 * read and written through the handle. Reads and writes themselves are not hooked: the
 * open that made them possible was. */
struct gd_vfs_event {
    const char *mount; /* the mount's guest path, e.g. "/workspace" */
    const char *op;    /* "open", "create", ... "close" */
    const char *path;  /* absolute guest path */
    const char *path2; /* rename/link: the new path; symlink: the target; else NULL */
    int flags;         /* open/create: the guest's open flags; rename: RENAME_* */
    mode_t mode;       /* create/mknod/mkdir, setattr mode */
    uint64_t size;     /* setattr size (truncate), else 0 */
    unsigned valid;    /* setattr: GD_VFS_SET_* */
    int mutating;      /* changes the tree (open for write counts) */
    int result;        /* after: 0 or a negative errno */
    uint64_t bytes_read, bytes_written; /* after "close" */
};

struct gd_vfs_hooks {
    /* 0: go on; a negative errno: deny (the guest sees it; reason, NUL-terminated, goes
     * to the audit line). Called on the transport's thread. */
    int (*before)(void *ud, const struct gd_vfs_event *ev, char *reason, size_t cap);
    void (*after)(void *ud, const struct gd_vfs_event *ev);
    void *ud;
};

/* ---- the session ---- */

typedef struct gd_vfs_session gd_vfs_session;

struct gd_vfs_session_opts {
    /* entry and attribute cache TTLs in ms; 0: 1000 (GD_VFS_EXCLUSIVE: 60000) */
    unsigned entry_ttl_ms, attr_ttl_ms;
    unsigned max_nodes;               /* nodes the guest may hold; 0: 1 << 20 */
    unsigned max_handles;             /* open files and dirs; 0: 65536 */
    const char *mount;                /* the guest path (events); NULL: "/" */
    const struct gd_vfs_hooks *hooks; /* or NULL (borrowed; outlives the session) */
};

/* Takes ownership of pv. */
int gd_vfs_session_new(gd_vfs_provider *pv, const struct gd_vfs_session_opts *o,
                       gd_vfs_session **out, struct gd_err *err);
/* Releases every handle and node, then frees the provider. */
void gd_vfs_session_free(gd_vfs_session *s);

/* One request (in, n bytes, a private copy) -> its reply in out (cap bytes: what the
 * guest gave for the reply). Returns the reply length (> 0), 0 when the request has no
 * reply (FORGET), or -EPROTO when the channel must be dropped (not even the request id
 * can be trusted). */
long gd_vfs_session_handle(gd_vfs_session *s, const void *in, size_t n, void *out, size_t cap);

/* ---- mount specs (sandbox options, CLI, Lua) ---- */

/* GD_MOUNT_LUA and GD_MOUNT_PLUGIN come from a policy (the engine builds their
 * providers: gd_engine_mount_provider); gd_mount_provider builds the others. */
enum gd_mount_kind {
    GD_MOUNT_HOSTFS,
    GD_MOUNT_OVERLAY,
    GD_MOUNT_MEMORY,
    GD_MOUNT_LUA,    /* a table of Lua functions in the policy */
    GD_MOUNT_PLUGIN, /* a provider a .so plugin registered under the name `provider` */
};

struct gd_mount {
    enum gd_mount_kind kind;
    const char *guest;       /* absolute guest path, normalised */
    const char *host;        /* hostfs / overlay: the host directory */
    int readonly;            /* hostfs: ro */
    int cache_always;        /* hostfs / overlay: nothing but this sandbox changes HOST
                                while it runs (cache=always): the guest caches entries and
                                attributes for 60 s and writes back (GD_VFS_EXCLUSIVE).
                                0 (cache=auto): 1 s, host edits show within a second */
    uint64_t size;           /* memory (and overlay writes): the cap in bytes; 0: default */
    const char *const *hide; /* NULL-ended globs hidden from the guest, or NULL */
    const char *provider;    /* GD_MOUNT_PLUGIN: the registered provider name */
    const char *config;      /* GD_MOUNT_PLUGIN: its config as JSON text ("{}") */
};

#define GD_VFS_MAX_MOUNTS 8

/* Parses the CLI forms: "HOST:GUEST[:ro][:cache=always]" (hostfs),
 * "HOST:GUEST[:cache=always]" (overlay),
 * "GUEST[:SIZE]" (memory; SIZE like 64M). Strings point into buf (cap bytes). */
int gd_mount_parse(enum gd_mount_kind kind, const char *arg, struct gd_mount *out, char *buf,
                   size_t cap, struct gd_err *err);
/* Builds the provider a spec names. */
int gd_mount_provider(const struct gd_mount *m, gd_vfs_provider **out, struct gd_err *err);

#endif
