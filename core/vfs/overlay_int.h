/* overlay_int.h - the overlay provider's state (overlay.c), its whiteout tree
 * (overlay_wt.c) and its change listing (overlay_diff.c). Module-private. */
#ifndef GD_VFS_OVERLAY_INT_H
#define GD_VFS_OVERLAY_INT_H

#include "vfs/layer_int.h"
#include "vfs/vfs.h"
#include "vfs/vfs_int.h"

#include <limits.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

/* ---- whiteouts (overlay_wt.c) ----
 * The paths whose lower entry is gone, as a tree of path components. A whiteout at P
 * hides the lower entry at P and everything beneath it; an upper entry at P is seen
 * anyway (upper always wins), so a whiteout under an upper directory makes that
 * directory opaque. Adding a whiteout drops the ones beneath it (they hide nothing
 * more). */
struct gd__wnode {
    struct gd__hlink link; /* key: the parent's address and the name */
    struct gd__wnode *parent, *first, *prev, *next;
    int white;
    size_t namelen;
    char name[];
};

struct gd__wtree {
    struct gd__htab h;
    struct gd__wnode root;
    size_t n, max; /* nodes besides the root */
};

int gd__wt_init(struct gd__wtree *t, size_t max);
void gd__wt_fini(struct gd__wtree *t);
/* Is path or one of its ancestors whited out? */
int gd__wt_masked(const struct gd__wtree *t, const char *path);
/* Is path itself? */
int gd__wt_is(const struct gd__wtree *t, const char *path);
/* -ENOSPC past max nodes, -ENOMEM */
int gd__wt_add(struct gd__wtree *t, const char *path);
void gd__wt_del(struct gd__wtree *t, const char *path);
/* Every whiteout, parents before children; fn's nonzero result stops the walk. */
int gd__wt_walk(const struct gd__wtree *t, int (*fn)(void *ud, const char *path), void *ud);

/* ---- the overlay ---- */

struct gd__ohandle {
    int layer; /* 0: free, 1: lower, 2: upper */
    int dir;
    uint64_t fh; /* the layer's handle (a directory: the lower one, or 0) */
    struct gd__dmerge dm;
    size_t next_free;
};

struct gd__ovl {
    gd_vfs_provider *lower, *upper;
    struct gd__wtree wt;
    struct gd__htab inos; /* upper ino -> the lower ino it was copied from */
    struct gd__ohandle *h;
    size_t nh, free_h;
    pthread_mutex_t mu; /* every op, and the change listing from another thread */
    char b1[PATH_MAX], b2[PATH_MAX];
};

/* the overlay of a provider, or NULL when pv is not one */
struct gd__ovl *gd__ovl_of(gd_vfs_provider *pv);
/* the lower entry at path unless whited out */
int gd__ovl_lower_stat(struct gd__ovl *o, const char *path, struct stat *st);
/* an upper node's number as the guest sees it (the lower one for a copy) */
uint64_t gd__ovl_upper_ino(const struct gd__ovl *o, uint64_t ino);

#endif
