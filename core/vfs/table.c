/* table.c - the session's node and handle tables (vfs_int.h). */
#define _GNU_SOURCE
#include "vfs/vfs_int.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define container_of(p, type, member) ((type *)((char *)(p)-offsetof(type, member)))

/* ---- hash table ---- */

static size_t slot(const struct gd__htab *t, uint64_t key)
{
    key ^= key >> 33;
    key *= 0xff51afd7ed558ccdULL;
    key ^= key >> 33;
    return (size_t)key & t->mask;
}

int gd__htab_init(struct gd__htab *t)
{
    t->mask = 63;
    t->n = 0;
    t->b = calloc(t->mask + 1, sizeof(*t->b));
    return t->b ? 0 : -ENOMEM;
}

void gd__htab_fini(struct gd__htab *t)
{
    free(t->b);
    t->b = NULL;
}

/* Doubles the buckets when the chains grow past one link on average; when that
 * allocation fails the chains just get longer. */
static void grow(struct gd__htab *t)
{
    size_t nb = (t->mask + 1) * 2;
    struct gd__hlink **b = calloc(nb, sizeof(*b));
    if (!b)
        return;
    struct gd__htab nt = {.b = b, .mask = nb - 1, .n = t->n};
    for (size_t i = 0; i <= t->mask; i++) {
        struct gd__hlink *l = t->b[i];
        while (l) {
            struct gd__hlink *next = l->next;
            size_t s = slot(&nt, l->key);
            l->next = b[s];
            b[s] = l;
            l = next;
        }
    }
    free(t->b);
    *t = nt;
}

void gd__htab_add(struct gd__htab *t, struct gd__hlink *l)
{
    if (t->n > t->mask)
        grow(t);
    size_t s = slot(t, l->key);
    l->next = t->b[s];
    t->b[s] = l;
    t->n++;
}

void gd__htab_del(struct gd__htab *t, struct gd__hlink *l)
{
    for (struct gd__hlink **pp = &t->b[slot(t, l->key)]; *pp; pp = &(*pp)->next)
        if (*pp == l) {
            *pp = l->next;
            t->n--;
            return;
        }
}

struct gd__hlink *gd__htab_first(const struct gd__htab *t, uint64_t key)
{
    return t->b[slot(t, key)];
}

/* ---- nodes ---- */

static uint64_t name_key(const struct gd__vnode *parent, const char *name, size_t len)
{
    uint64_t h = 1469598103934665603ULL ^ parent->by_id.key;
    for (size_t i = 0; i < len; i++)
        h = (h ^ (unsigned char)name[i]) * 1099511628211ULL;
    return h;
}

int gd__vnodes_init(struct gd__vnodes *t, size_t max)
{
    memset(t, 0, sizeof(*t));
    t->max = max;
    t->next_id = 2;
    t->root.by_id.key = 1;
    t->root.name = "";
    if (gd__htab_init(&t->ids))
        return -ENOMEM;
    if (gd__htab_init(&t->names)) {
        gd__htab_fini(&t->ids);
        return -ENOMEM;
    }
    gd__htab_add(&t->ids, &t->root.by_id);
    return 0;
}

static void node_free(struct gd__vnodes *t, struct gd__vnode *n)
{
    gd__htab_del(&t->ids, &n->by_id);
    if (!n->detached)
        gd__htab_del(&t->names, &n->by_name);
    t->n--;
    free(n->name);
    free(n);
}

void gd__vnodes_reset(struct gd__vnodes *t)
{
    for (size_t i = 0; i <= t->ids.mask; i++) {
        struct gd__hlink *l = t->ids.b[i];
        while (l) {
            struct gd__hlink *next = l->next;
            struct gd__vnode *n = container_of(l, struct gd__vnode, by_id);
            if (n != &t->root)
                node_free(t, n);
            l = next;
        }
    }
    t->root.children = 0;
}

void gd__vnodes_fini(struct gd__vnodes *t)
{
    gd__vnodes_reset(t);
    gd__htab_fini(&t->ids);
    gd__htab_fini(&t->names);
}

struct gd__vnode *gd__vnodes_get(const struct gd__vnodes *t, uint64_t id)
{
    for (struct gd__hlink *l = gd__htab_first(&t->ids, id); l; l = l->next)
        if (l->key == id)
            return container_of(l, struct gd__vnode, by_id);
    return NULL;
}

struct gd__vnode *gd__vnodes_child(const struct gd__vnodes *t, const struct gd__vnode *parent,
                                   const char *name, size_t len)
{
    uint64_t k = name_key(parent, name, len);
    for (struct gd__hlink *l = gd__htab_first(&t->names, k); l; l = l->next) {
        struct gd__vnode *n = container_of(l, struct gd__vnode, by_name);
        if (l->key == k && n->parent == parent && n->namelen == len && !memcmp(n->name, name, len))
            return n;
    }
    return NULL;
}

int gd__vnodes_make(struct gd__vnodes *t, struct gd__vnode *parent, const char *name, size_t len,
                    struct gd__vnode **out)
{
    struct gd__vnode *n = gd__vnodes_child(t, parent, name, len);
    if (n) {
        *out = n;
        return 0;
    }
    if (t->n >= t->max)
        return -ENOMEM;
    n = calloc(1, sizeof(*n));
    if (!n || !(n->name = strndup(name, len))) {
        free(n);
        return -ENOMEM;
    }
    n->namelen = len;
    n->parent = parent;
    parent->children++;
    n->by_id.key = t->next_id++;
    n->by_name.key = name_key(parent, name, len);
    gd__htab_add(&t->ids, &n->by_id);
    gd__htab_add(&t->names, &n->by_name);
    t->n++;
    *out = n;
    return 0;
}

void gd__vnodes_release(struct gd__vnodes *t, struct gd__vnode *n)
{
    while (n && n != &t->root && n->nlookup == 0 && n->children == 0) {
        struct gd__vnode *p = n->parent;
        node_free(t, n);
        p->children--;
        n = p;
    }
}

void gd__vnodes_forget(struct gd__vnodes *t, uint64_t id, uint64_t count)
{
    struct gd__vnode *n = gd__vnodes_get(t, id);
    if (!n || n == &t->root)
        return;
    n->nlookup = count < n->nlookup ? n->nlookup - count : 0;
    gd__vnodes_release(t, n);
}

void gd__vnodes_detach(struct gd__vnodes *t, struct gd__vnode *n)
{
    if (n == &t->root || n->detached)
        return;
    gd__htab_del(&t->names, &n->by_name);
    n->detached = 1;
}

static void attach(struct gd__vnodes *t, struct gd__vnode *n, struct gd__vnode *parent)
{
    if (n->parent != parent) {
        struct gd__vnode *old = n->parent;
        parent->children++;
        n->parent = parent;
        old->children--;
        gd__vnodes_release(t, old);
    }
    n->by_name.key = name_key(parent, n->name, n->namelen);
    gd__htab_add(&t->names, &n->by_name);
    n->detached = 0;
}

int gd__vnodes_move(struct gd__vnodes *t, struct gd__vnode *n, struct gd__vnode *newparent,
                    const char *name, size_t len)
{
    if (n == &t->root)
        return 0;
    gd__vnodes_detach(t, n);
    char *s = strndup(name, len);
    if (!s)
        return -ENOMEM;
    free(n->name);
    n->name = s;
    n->namelen = len;
    attach(t, n, newparent);
    return 0;
}

void gd__vnodes_exchange(struct gd__vnodes *t, struct gd__vnode *a, struct gd__vnode *b)
{
    if (a == b || a == &t->root || b == &t->root)
        return;
    gd__vnodes_detach(t, a);
    gd__vnodes_detach(t, b);
    struct gd__vnode *pa = a->parent, *pb = b->parent;
    char *na = a->name;
    size_t la = a->namelen;
    /* hold both parents while the children move between them */
    pa->children++, pb->children++;
    a->name = b->name, a->namelen = b->namelen;
    b->name = na, b->namelen = la;
    attach(t, a, pb);
    attach(t, b, pa);
    pa->children--, pb->children--;
}

int gd__vnodes_is_ancestor(const struct gd__vnode *a, const struct gd__vnode *b)
{
    for (; b; b = b->parent)
        if (b == a)
            return 1;
    return 0;
}

long gd__vnodes_path(const struct gd__vnode *n, char *buf, size_t cap)
{
    size_t len = 0;
    /* first the length (bounded by cap: a cycle cannot loop forever), then the names
     * from the end */
    for (const struct gd__vnode *m = n; m->parent; m = m->parent) {
        if (m->detached)
            return -ENOENT;
        len += m->namelen + (m->parent->parent ? 1 : 0);
        if (len >= cap)
            return -ENAMETOOLONG;
    }
    buf[len] = 0;
    size_t end = len;
    for (const struct gd__vnode *m = n; m->parent; m = m->parent) {
        end -= m->namelen;
        memcpy(buf + end, m->name, m->namelen);
        if (m->parent->parent)
            buf[--end] = '/';
    }
    return (long)len;
}

/* ---- handles ---- */

int gd__vhandles_init(struct gd__vhandles *t, size_t max)
{
    memset(t, 0, sizeof(*t));
    t->max = max;
    t->next_id = 1;
    return gd__htab_init(&t->ids);
}

void gd__vhandles_fini(struct gd__vhandles *t)
{
    struct gd__vhandle *h;
    size_t cur = 0;
    while ((h = gd__vhandles_next(t, &cur)))
        gd__vhandles_del(t, h);
    gd__htab_fini(&t->ids);
}

int gd__vhandles_add(struct gd__vhandles *t, uint64_t pfh, uint64_t nodeid, const char *path,
                     int dir, int flags, struct gd__vhandle **out)
{
    if (t->n >= t->max)
        return -ENFILE;
    struct gd__vhandle *h = calloc(1, sizeof(*h));
    if (!h || !(h->path = strdup(path))) {
        free(h);
        return -ENOMEM;
    }
    h->pfh = pfh;
    h->nodeid = nodeid;
    h->dir = dir;
    h->flags = flags;
    h->by_id.key = t->next_id++;
    gd__htab_add(&t->ids, &h->by_id);
    t->n++;
    *out = h;
    return 0;
}

struct gd__vhandle *gd__vhandles_get(const struct gd__vhandles *t, uint64_t id)
{
    for (struct gd__hlink *l = gd__htab_first(&t->ids, id); l; l = l->next)
        if (l->key == id)
            return container_of(l, struct gd__vhandle, by_id);
    return NULL;
}

void gd__vhandles_del(struct gd__vhandles *t, struct gd__vhandle *h)
{
    gd__htab_del(&t->ids, &h->by_id);
    t->n--;
    free(h->path);
    free(h);
}

struct gd__vhandle *gd__vhandles_next(const struct gd__vhandles *t, size_t *cursor)
{
    for (; *cursor <= t->ids.mask; ++*cursor)
        if (t->ids.b[*cursor])
            return container_of(t->ids.b[*cursor], struct gd__vhandle, by_id);
    return NULL;
}

struct gd__vhandle *gd__vhandles_of_node(const struct gd__vhandles *t, uint64_t nodeid)
{
    for (size_t i = 0; i <= t->ids.mask; i++)
        for (struct gd__hlink *l = t->ids.b[i]; l; l = l->next) {
            struct gd__vhandle *h = container_of(l, struct gd__vhandle, by_id);
            if (!h->dir && h->nodeid == nodeid)
                return h;
        }
    return NULL;
}
