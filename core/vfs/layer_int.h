/* layer_int.h - helpers shared by the providers that stack other providers (overlay.c,
 * shadow.c): a two-layer directory listing with stable cookies (dirmerge.c). Module-private. */
#ifndef GD_VFS_LAYER_INT_H
#define GD_VFS_LAYER_INT_H

#include "vfs/vfs.h"

#include <stdint.h>

/* Cookies of a merged listing. The first layer's entries are numbered by their position
 * in that layer's own order (1, 2, ...), whatever its cookies are (hostfs hands out
 * telldir values that may use all 63 bits); the second layer's entries are GD__DM_SECOND
 * plus the second layer's cookie. Both stay below INT64_MAX - 2 as the session wants. */
#define GD__DM_SECOND (1ull << 62)

/* Where a listing of the first layer stopped, kept per open directory so that reading
 * on costs one seek, not a rescan: entry number idx ended at the layer's cookie. */
struct gd__dmerge {
    uint64_t idx;
    uint64_t cookie;
};

/* Decides one entry of a layer (0: the first, 1: the second): 1 to list it (type and st
 * may be changed; *stp may be set to NULL or to st), 0 to skip it, negative to fail.
 * "." and ".." never reach it. */
typedef int (*gd__dm_filter_fn)(void *ud, int layer, const char *name, unsigned *type,
                                struct stat *st, const struct stat **stp);

struct gd__dm_layer {
    const gd_vfs_provider *pv; /* NULL: the layer has nothing here */
    uint64_t fh;               /* an open directory of pv, or 0 (by path) */
};

/* Lists path: the first layer's entries, then the second's, after cookie off, through
 * filter into fill. A layer that answers ENOENT or ENOTDIR counts as empty. */
int gd__dmerge_readdir(struct gd__dmerge *m, const struct gd__dm_layer *first,
                       const struct gd__dm_layer *second, const char *path, uint64_t off,
                       gd__dm_filter_fn filter, void *ud, gd_vfs_fill_fn fill, void *ctx);

/* Every entry of the directory at path (opendir, one readdir from the start, releasedir);
 * fill returning 1 stops early. */
int gd__list_dir(const gd_vfs_provider *pv, const char *path, gd_vfs_fill_fn fill, void *ctx);

/* the provider a shadow wraps, or NULL when pv is not a shadow (shadow.c) */
gd_vfs_provider *gd__shadow_inner(gd_vfs_provider *pv);

/* May the glob match an entry strictly below path (an anchored glob whose leading
 * components path matches)? glob.c */
int gd__glob_below(const char *glob, const char *path);

/* dir + '/' + name (or name alone at the root) into out[PATH_MAX]: 0 or -ENAMETOOLONG */
int gd__path_join(char *out, const char *dir, const char *name);

#endif
