/* vfs_int.h - the session's tables (core/vfs/table.c): the guest's nodes and open handles.
 * Module-private. Every number in them that the guest sends back (nodeid, fh) is a key
 * looked up here, never a pointer. */
#ifndef GD_VFS_VFS_INT_H
#define GD_VFS_VFS_INT_H

#include "vfs/fuse.h"
#include "vfs/vfs.h"

#include <limits.h>
#include <stddef.h>
#include <stdint.h>

/* An intrusive hash table keyed by 64-bit numbers; chains hold every link whose key
 * hashes to the bucket (the caller compares what the key alone does not decide). */
struct gd__hlink {
    struct gd__hlink *next;
    uint64_t key;
};
struct gd__htab {
    struct gd__hlink **b;
    size_t mask; /* buckets - 1 */
    size_t n;
};
int gd__htab_init(struct gd__htab *t);
void gd__htab_fini(struct gd__htab *t);
void gd__htab_add(struct gd__htab *t, struct gd__hlink *l);
void gd__htab_del(struct gd__htab *t, struct gd__hlink *l);
/* the first link of key's chain (check ->key and walk ->next) */
struct gd__hlink *gd__htab_first(const struct gd__htab *t, uint64_t key);

/* A node: what the guest kernel knows as one inode, named by its parent and its name.
 * Nodes are kept while the kernel holds lookups on them or while children hang below
 * them; a node unlinked or replaced on the provider is detached (no longer found by
 * name, its path is gone) but keeps its id until forgotten. Ids are never reused. */
struct gd__vnode {
    struct gd__hlink by_id, by_name;
    struct gd__vnode *parent; /* NULL for the root */
    char *name;
    size_t namelen;
    uint64_t nlookup;
    uint32_t children; /* nodes whose parent this is */
    int detached;
    unsigned type; /* S_IFMT bits last reported to the guest (0: not yet) */
};

struct gd__vnodes {
    struct gd__htab ids, names;
    struct gd__vnode root; /* nodeid 1, never freed, never forgotten */
    size_t n, max;         /* nodes besides the root */
    uint64_t next_id;
};

int gd__vnodes_init(struct gd__vnodes *t, size_t max);
/* Frees every node. */
void gd__vnodes_fini(struct gd__vnodes *t);
/* Frees every node but the root (a new INIT after DESTROY). */
void gd__vnodes_reset(struct gd__vnodes *t);
struct gd__vnode *gd__vnodes_get(const struct gd__vnodes *t, uint64_t id);
/* The attached child name of parent, or NULL. */
struct gd__vnode *gd__vnodes_child(const struct gd__vnodes *t, const struct gd__vnode *parent,
                                   const char *name, size_t len);
/* Finds or makes the child; a new one has nlookup 0: count the lookup once the reply is
 * written, or gd__vnodes_release it. -ENOMEM past max. */
int gd__vnodes_make(struct gd__vnodes *t, struct gd__vnode *parent, const char *name, size_t len,
                    struct gd__vnode **out);
/* Frees n when nothing holds it any more (no lookups, no children), then its parents. */
void gd__vnodes_release(struct gd__vnodes *t, struct gd__vnode *n);
/* FORGET: nlookup -= count (clamped at 0) for a known id; unknown ids are ignored. */
void gd__vnodes_forget(struct gd__vnodes *t, uint64_t id, uint64_t count);
/* The name is gone on the provider. */
void gd__vnodes_detach(struct gd__vnodes *t, struct gd__vnode *n);
/* Renamed on the provider: n is now newparent/name (its old place is gone). -ENOMEM
 * leaves it detached. */
int gd__vnodes_move(struct gd__vnodes *t, struct gd__vnode *n, struct gd__vnode *newparent,
                    const char *name, size_t len);
/* RENAME_EXCHANGE on the provider: a and b trade places. */
void gd__vnodes_exchange(struct gd__vnodes *t, struct gd__vnode *a, struct gd__vnode *b);
/* Is a equal to b or an ancestor of it? */
int gd__vnodes_is_ancestor(const struct gd__vnode *a, const struct gd__vnode *b);
/* The provider path of n ("" for the root, "a/b" below it) in buf[cap]: its length, or
 * -ENOENT (n or an ancestor detached), -ENAMETOOLONG (cap exceeded). */
long gd__vnodes_path(const struct gd__vnode *n, char *buf, size_t cap);

/* An open file or directory. */
struct gd__vhandle {
    struct gd__hlink by_id; /* key: the fh the guest got */
    uint64_t pfh;           /* the provider's handle */
    uint64_t nodeid;
    char *path; /* provider path at open (events, fallback for detached nodes) */
    int dir;
    int flags; /* the guest's open flags */
    uint64_t bytes_read, bytes_written;
};

struct gd__vhandles {
    struct gd__htab ids;
    size_t n, max;
    uint64_t next_id;
};

int gd__vhandles_init(struct gd__vhandles *t, size_t max);
void gd__vhandles_fini(struct gd__vhandles *t); /* the caller released them first */
/* A new handle (path copied); -ENFILE past max, -ENOMEM. */
int gd__vhandles_add(struct gd__vhandles *t, uint64_t pfh, uint64_t nodeid, const char *path,
                     int dir, int flags, struct gd__vhandle **out);
struct gd__vhandle *gd__vhandles_get(const struct gd__vhandles *t, uint64_t id);
void gd__vhandles_del(struct gd__vhandles *t, struct gd__vhandle *h);
/* A handle in a bucket >= *cursor (start at 0), or NULL: to release them all, deleting
 * each before asking for the next. */
struct gd__vhandle *gd__vhandles_next(const struct gd__vhandles *t, size_t *cursor);
/* An open file (not directory) handle of nodeid, or NULL: one scan of the table. */
struct gd__vhandle *gd__vhandles_of_node(const struct gd__vhandles *t, uint64_t nodeid);

/* ---- the session (session.c, session_dir.c) ---- */

/* the guest path of an event: the mount, '/', a provider path */
#define GD__GPATH_MAX (2 * PATH_MAX + 2)

struct gd_vfs_session {
    gd_vfs_provider *pv;
    const struct gd_vfs_ops *ops;
    struct gd__vnodes nodes;
    struct gd__vhandles handles;
    const struct gd_vfs_hooks *hooks;
    char *mount;
    unsigned entry_ttl_ms, attr_ttl_ms;
    int inited, writeback;
    /* scratch, one request at a time: provider paths, then guest paths for events */
    char p1[PATH_MAX], p2[PATH_MAX];
    char g1[GD__GPATH_MAX], g2[GD__GPATH_MAX];
};

/* a provider's result as the guest's errno: values the kernel takes pass, others EIO */
int gd__vfs_perr(long e);
/* an entry reply's body for nodeid (0: a cached absence) with the session's TTLs */
void gd__vfs_fill_entry(const gd_vfs_session *s, struct fuse_entry_out *e, uint64_t nodeid,
                        const struct stat *st);
/* the node of parent/name as it now is (st): a node of another type is replaced */
int gd__vfs_make_node(gd_vfs_session *s, struct gd__vnode *parent, const char *name, size_t len,
                      const struct stat *st, struct gd__vnode **out);
/* READDIR and READDIRPLUS: the reply's length */
size_t gd__vfs_readdir(gd_vfs_session *s, const struct gd_fuse_req *r, uint8_t *out, size_t cap);

#endif
