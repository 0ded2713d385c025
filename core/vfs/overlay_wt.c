/* overlay_wt.c - the overlay's whiteouts as a tree of path components (overlay_int.h):
 * "is any prefix of this path whited out" costs one hash lookup per component, and
 * dropping everything beneath a directory costs the size of that subtree. */
#include "vfs/overlay_int.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static uint64_t wkey(const struct gd__wnode *parent, const char *name, size_t len)
{
    uint64_t h = 1469598103934665603ULL ^ (uint64_t)(uintptr_t)parent;
    for (size_t i = 0; i < len; i++)
        h = (h ^ (unsigned char)name[i]) * 1099511628211ULL;
    return h;
}

static struct gd__wnode *child(const struct gd__wtree *t, const struct gd__wnode *parent,
                               const char *name, size_t len)
{
    uint64_t k = wkey(parent, name, len);
    for (struct gd__hlink *l = gd__htab_first(&t->h, k); l; l = l->next) {
        struct gd__wnode *w = (struct gd__wnode *)l;
        if (l->key == k && w->parent == parent && w->namelen == len && !memcmp(w->name, name, len))
            return w;
    }
    return NULL;
}

int gd__wt_init(struct gd__wtree *t, size_t max)
{
    memset(t, 0, sizeof(*t));
    t->max = max;
    return gd__htab_init(&t->h);
}

static void free_below(struct gd__wtree *t, struct gd__wnode *w)
{
    while (w->first) {
        struct gd__wnode *c = w->first;
        free_below(t, c);
        w->first = c->next;
        gd__htab_del(&t->h, &c->link);
        free(c);
        t->n--;
    }
}

void gd__wt_fini(struct gd__wtree *t)
{
    free_below(t, &t->root);
    gd__htab_fini(&t->h);
}

/* Walks path's components: the node of the last one reached, and whether path was
 * reached whole; *masked when a node on the way (the last included) is white. */
static struct gd__wnode *walk(const struct gd__wtree *t, const char *path, int *whole, int *masked)
{
    struct gd__wnode *w = (struct gd__wnode *)&t->root;
    *masked = w->white;
    *whole = 1;
    const char *c = path;
    while (*c) {
        const char *slash = strchr(c, '/');
        size_t len = slash ? (size_t)(slash - c) : strlen(c);
        struct gd__wnode *n = child(t, w, c, len);
        if (!n) {
            *whole = 0;
            return w;
        }
        w = n;
        *masked |= w->white;
        if (!slash)
            break;
        c = slash + 1;
    }
    return w;
}

int gd__wt_masked(const struct gd__wtree *t, const char *path)
{
    int whole, masked;
    if (t->n == 0)
        return 0;
    walk(t, path, &whole, &masked);
    return masked;
}

int gd__wt_is(const struct gd__wtree *t, const char *path)
{
    int whole, masked;
    if (t->n == 0)
        return 0;
    struct gd__wnode *w = walk(t, path, &whole, &masked);
    return whole && w->white;
}

/* frees w and its childless, non-white ancestors */
static void prune(struct gd__wtree *t, struct gd__wnode *w)
{
    while (w != &t->root && !w->white && !w->first) {
        struct gd__wnode *p = w->parent;
        if (w->prev)
            w->prev->next = w->next;
        else
            p->first = w->next;
        if (w->next)
            w->next->prev = w->prev;
        gd__htab_del(&t->h, &w->link);
        free(w);
        t->n--;
        w = p;
    }
}

int gd__wt_add(struct gd__wtree *t, const char *path)
{
    struct gd__wnode *w = &t->root, *made = NULL;
    const char *c = path;
    while (*c) {
        const char *slash = strchr(c, '/');
        size_t len = slash ? (size_t)(slash - c) : strlen(c);
        struct gd__wnode *n = child(t, w, c, len);
        if (!n) {
            if (t->n >= t->max || !(n = calloc(1, sizeof(*n) + len + 1))) {
                if (made)
                    prune(t, w);
                return t->n >= t->max ? -ENOSPC : -ENOMEM;
            }
            memcpy(n->name, c, len);
            n->namelen = len;
            n->parent = w;
            n->link.key = wkey(w, c, len);
            gd__htab_add(&t->h, &n->link);
            n->next = w->first;
            if (w->first)
                w->first->prev = n;
            w->first = n;
            t->n++;
            made = n;
        }
        w = n;
        if (!slash)
            break;
        c = slash + 1;
    }
    w->white = 1;
    free_below(t, w);
    return 0;
}

void gd__wt_del(struct gd__wtree *t, const char *path)
{
    int whole, masked;
    struct gd__wnode *w = walk(t, path, &whole, &masked);
    if (!whole || w == &t->root)
        return;
    w->white = 0;
    prune(t, w);
}

static int walk_all(const struct gd__wnode *w, char *buf, size_t len,
                    int (*fn)(void *ud, const char *path), void *ud)
{
    for (const struct gd__wnode *c = w->first; c; c = c->next) {
        size_t l = len + (len ? 1 : 0) + c->namelen;
        if (l + 1 > PATH_MAX)
            continue; /* cannot be: paths come from the session, within PATH_MAX */
        if (len)
            buf[len] = '/';
        memcpy(buf + l - c->namelen, c->name, c->namelen);
        buf[l] = 0;
        int r = c->white ? fn(ud, buf) : 0;
        if (!r)
            r = walk_all(c, buf, l, fn, ud);
        if (r)
            return r;
    }
    return 0;
}

int gd__wt_walk(const struct gd__wtree *t, int (*fn)(void *ud, const char *path), void *ud)
{
    char buf[PATH_MAX];
    buf[0] = 0;
    return walk_all(&t->root, buf, 0, fn, ud);
}
