/*
 * vfs_bridge.c - guest file operations meet the policy: the fs hook chain (plugin fs
 * hooks, then Lua on_fs / on_fs_done), its audit lines, and the bridge that carries a
 * call from a transport thread to the loop thread, where the Lua states and plugin
 * hooks live, and waits for the answer (see engine.h); and what a revision collects
 * for files while it builds.
 *
 * The bridge: a queue under a mutex, a uv_async_t to wake the loop, a condition
 * variable per call (on the caller's stack: the caller waits until the loop marked it
 * done, and the loop touches it no more after that). uv_async_send happens under the
 * mutex and the closing flag is set under it, so no send can race uv_close.
 */
#define _GNU_SOURCE
#include "engine/engine_int.h"

#include "base/text.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct vfs_job {
    long (*fn)(gd_engine *e, void *arg);
    void *arg;
    long rc;
    int done;
    pthread_cond_t cv;
    struct vfs_job *next;
};

struct vfs_mount_ud {
    gd_engine *e;
    struct vfs_mount_ud *next;
    char mount[];
};

/* ---- the bridge ---- */

static void run_jobs(uv_async_t *a)
{
    gd_engine *e = a->data;
    struct vfs_bridge *b = &e->vb;
    for (;;) {
        pthread_mutex_lock(&b->mu);
        struct vfs_job *j = b->head;
        if (j && !(b->head = j->next))
            b->tail = NULL;
        pthread_mutex_unlock(&b->mu);
        if (!j)
            return;
        long rc = j->fn(e, j->arg);
        pthread_mutex_lock(&b->mu);
        j->rc = rc;
        j->done = 1;
        pthread_cond_signal(&j->cv);
        pthread_mutex_unlock(&b->mu); /* j may be gone from here on */
    }
}

int gd_engine_vfs_start(gd_engine *e, uv_loop_t *loop)
{
    struct vfs_bridge *b = &e->vb;
    if (b->started)
        return -EALREADY;
    int rc = uv_async_init(loop, &b->async, run_jobs);
    if (rc)
        return rc;
    b->async.data = e;
    b->loop_thread = pthread_self();
    b->started = 1;
    return 0;
}

void gd_engine_vfs_stop(gd_engine *e)
{
    struct vfs_bridge *b = &e->vb;
    if (!b->started)
        return;
    pthread_mutex_lock(&b->mu);
    int was = b->closing;
    b->closing = 1;
    for (struct vfs_job *j = b->head, *n; j; j = n) {
        n = j->next;
        j->rc = -EIO;
        j->done = 1;
        pthread_cond_signal(&j->cv);
    }
    b->head = b->tail = NULL;
    pthread_mutex_unlock(&b->mu);
    if (!was)
        uv_close((uv_handle_t *)&b->async, NULL);
}

long gd__vfs_call(gd_engine *e, long (*fn)(gd_engine *e, void *arg), void *arg)
{
    struct vfs_bridge *b = &e->vb;
    if (!b->started)
        return -EIO;
    if (pthread_equal(pthread_self(), b->loop_thread)) {
        pthread_mutex_lock(&b->mu);
        int closing = b->closing;
        pthread_mutex_unlock(&b->mu);
        return closing ? -EIO : fn(e, arg);
    }
    struct vfs_job j = {.fn = fn, .arg = arg};
    pthread_cond_init(&j.cv, NULL);
    pthread_mutex_lock(&b->mu);
    if (b->closing) {
        pthread_mutex_unlock(&b->mu);
        pthread_cond_destroy(&j.cv);
        return -EIO;
    }
    if (b->tail)
        b->tail->next = &j;
    else
        b->head = &j;
    b->tail = &j;
    uv_async_send(&b->async);
    /* a transport stopping this thread must not leave j queued: wait it out */
    int old;
    pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &old);
    while (!j.done)
        pthread_cond_wait(&j.cv, &b->mu);
    pthread_mutex_unlock(&b->mu);
    pthread_setcancelstate(old, NULL);
    pthread_cond_destroy(&j.cv);
    return j.rc;
}

void gd__vfs_update_need(gd_engine *e)
{
    atomic_store(&e->vb.need, e->cur ? e->cur->fs_need : 0);
}

void gd__vfs_free(gd_engine *e)
{
    for (struct vfs_mount_ud *u = e->vb.uds, *n; u; u = n) {
        n = u->next;
        free(u);
    }
    e->vb.uds = NULL;
    pthread_mutex_destroy(&e->vb.mu);
}

const struct gd_mount *gd_engine_mounts(gd_engine *e, size_t *n)
{
    const struct gd_lua_conf *c = e->boot && e->boot->lua ? gd_lua_conf(e->boot->lua) : NULL;
    *n = c ? c->nmounts : 0;
    return c ? c->mounts : NULL;
}

/* ---- revisions ---- */

int gd__vfs_rev_build(struct rev *r, const struct gd_lua_conf *c, struct gd_err *err)
{
    for (size_t k = 0; k < r->ninst; k++) {
        size_t n;
        const struct gd_plugin_fs_hook *h = gd_plugin_fs_hooks(r->inst[k], &n);
        if (!n)
            continue;
        struct gd_plugin_fs_hook *q = realloc(r->fsh, (r->nfsh + n) * sizeof(*q));
        if (!q)
            return gd_err_set(err, -ENOMEM, "out of memory");
        r->fsh = q;
        for (size_t j = 0; j < n; j++) {
            q[r->nfsh++] = h[j];
            r->fs_need |= (h[j].before ? FS_NEED_BEFORE : 0) | (h[j].after ? FS_NEED_AFTER : 0);
        }
    }
    for (size_t i = 0; c && i < c->nmounts; i++) {
        const struct gd_mount *m = &c->mounts[i];
        if (m->kind != GD_MOUNT_PLUGIN)
            continue;
        size_t found = 0;
        for (size_t k = 0; k < r->ninst; k++)
            found += gd_plugin_vfs_provider(r->inst[k], m->provider) != NULL;
        if (found != 1)
            return gd_err_set(err, found ? -EEXIST : -ENOENT,
                              "%s: mounts['%s']: %s VFS provider '%s'%s", r->e->policy, m->guest,
                              found ? "more than one plugin registers the"
                                    : "no loaded plugin "
                                      "registers a",
                              m->provider,
                              found ? "" : " (give --plugin PATH or --plugin-dir DIR)");
    }
    if (c && (c->fs_hooks & GD_LUA_FS_BEFORE))
        r->fs_need |= FS_NEED_BEFORE;
    if ((c && (c->fs_hooks & GD_LUA_FS_AFTER)) || r->e->base.audit_fs)
        r->fs_need |= FS_NEED_AFTER;
    return 0;
}

static int same_str(const char *a, const char *b)
{
    return a ? b && !strcmp(a, b) : !b;
}

int gd__vfs_same_mounts(const struct rev *a, const struct rev *b)
{
    const struct gd_lua_conf *x = a && a->lua ? gd_lua_conf(a->lua) : NULL;
    const struct gd_lua_conf *y = b->lua ? gd_lua_conf(b->lua) : NULL;
    size_t nx = x ? x->nmounts : 0, ny = y ? y->nmounts : 0;
    if (nx != ny)
        return 0;
    for (size_t i = 0; i < nx; i++) {
        const struct gd_mount *m = &x->mounts[i], *n = &y->mounts[i];
        if (m->kind != n->kind || !same_str(m->guest, n->guest) || !same_str(m->host, n->host) ||
            m->readonly != n->readonly || m->cache_always != n->cache_always ||
            m->size != n->size || !same_str(m->provider, n->provider) ||
            !same_str(m->config, n->config))
            return 0;
        size_t h = 0;
        for (; m->hide && n->hide && m->hide[h] && n->hide[h]; h++)
            if (strcmp(m->hide[h], n->hide[h]))
                return 0;
        if ((m->hide && m->hide[h]) || (n->hide && n->hide[h]))
            return 0;
    }
    return 1;
}

/* ---- the audit ---- */

static void audit(gd_engine *e, struct rev *r, const struct gd_vfs_event *ev, const char *mount,
                  int deny, const char *rule, const char *reason, int err)
{
    if (deny && !e->quiet)
        gd__engine_log(e, "denied fs %s %s%s%s -> %s (%s%s%s)", ev->op, ev->path,
                       ev->path2 ? " " : "", ev->path2 ? ev->path2 : "",
                       gd_lua_errno_name(err) ? gd_lua_errno_name(err) : "error", rule ? rule : "-",
                       reason && *reason ? ": " : "", reason ? reason : "");
    if (!e->audit)
        return;
    char ts[40];
    gd_iso_time(ts, sizeof(ts));
    cJSON *o = cJSON_CreateObject();
    if (!o)
        return;
    cJSON_AddStringToObject(o, "type", "fs");
    cJSON_AddStringToObject(o, "time", ts);
    cJSON_AddStringToObject(o, "vm", e->vm_id);
    cJSON_AddStringToObject(o, "mount", mount);
    cJSON_AddStringToObject(o, "op", ev->op);
    cJSON_AddStringToObject(o, "path", ev->path ? ev->path : "");
    if (ev->path2)
        cJSON_AddStringToObject(o, "path2", ev->path2);
    else
        cJSON_AddNullToObject(o, "path2");
    cJSON_AddStringToObject(o, "decision", deny ? "deny" : "allow");
    if (rule)
        cJSON_AddStringToObject(o, "rule", rule);
    else
        cJSON_AddNullToObject(o, "rule");
    if (reason && *reason)
        cJSON_AddStringToObject(o, "reason", reason);
    const char *en = err ? gd_lua_errno_name(err) : NULL;
    if (en)
        cJSON_AddStringToObject(o, "errno", en);
    else if (err)
        cJSON_AddNumberToObject(o, "errno", err < 0 ? -err : err);
    else
        cJSON_AddNullToObject(o, "errno");
    cJSON_AddStringToObject(o, "revision", r->hash);
    char *line = cJSON_PrintUnformatted(o);
    if (line) {
        fprintf(e->audit, "%s\n", line);
        free(line);
    }
    cJSON_Delete(o);
}

/* ---- the chain (on the loop thread) ---- */

static int chain_before(struct rev *r, const struct gd_vfs_event *ev, const char *mount, char *rule,
                        size_t rcap, char *reason, size_t cap)
{
    for (size_t i = 0; i < r->nfsh; i++) {
        const struct gd_plugin_fs_hook *h = &r->fsh[i];
        if (!h->before)
            continue;
        reason[0] = 0;
        int rc = h->before(h->ud, ev, reason, cap);
        if (!rc)
            continue;
        reason[cap - 1] = 0;
        char clean[300];
        gd_sanitize(clean, sizeof(clean), reason, strlen(reason));
        snprintf(reason, cap, "%s", clean[0] ? clean : "denied by plugin");
        snprintf(rule, rcap, "%s", h->name);
        return rc < 0 && rc > -4096 ? rc : -EACCES; /* not an errno: deny anyway */
    }
    return r->lua ? gd_lua_fs_hook(r->lua, ev, mount, rule, rcap, reason, cap) : 0;
}

int gd_engine_fs_try(gd_engine *e, const struct gd_vfs_event *ev, const char *mount, char *rule,
                     size_t rcap, char *reason, size_t cap)
{
    rule[0] = reason[0] = 0;
    return chain_before(e->cur, ev, mount, rule, rcap, reason, cap);
}

const char *gd_engine_fs_hook_site(gd_engine *e, int after)
{
    return e->cur->lua ? gd_lua_fs_site(e->cur->lua, after) : NULL;
}

struct hook_call {
    struct vfs_mount_ud *u;
    const struct gd_vfs_event *ev;
    char *reason;
    size_t cap;
};

static long run_before(gd_engine *e, void *arg)
{
    struct hook_call *c = arg;
    struct rev *r = e->cur;
    char rule[300] = "";
    int rc = chain_before(r, c->ev, c->u->mount, rule, sizeof(rule), c->reason, c->cap);
    if (rc)
        audit(e, r, c->ev, c->u->mount, 1, rule, c->reason, rc);
    return rc;
}

static long run_after(gd_engine *e, void *arg)
{
    struct hook_call *c = arg;
    struct rev *r = e->cur;
    for (size_t i = 0; i < r->nfsh; i++)
        if (r->fsh[i].after)
            r->fsh[i].after(r->fsh[i].ud, c->ev);
    if (r->lua)
        gd_lua_fs_done(r->lua, c->ev, c->u->mount);
    if (e->base.audit_fs && c->ev->mutating)
        audit(e, r, c->ev, c->u->mount, 0, NULL, NULL, c->ev->result);
    return 0;
}

static int hook_before(void *ud, const struct gd_vfs_event *ev, char *reason, size_t cap)
{
    struct vfs_mount_ud *u = ud;
    if (!(atomic_load(&u->e->vb.need) & FS_NEED_BEFORE))
        return 0;
    if (cap)
        reason[0] = 0;
    char none[1];
    struct hook_call c = {u, ev, cap ? reason : none, cap ? cap : sizeof(none)};
    long rc = gd__vfs_call(u->e, run_before, &c);
    if (rc == -EIO && !c.reason[0] && cap)
        snprintf(reason, cap, "the policy engine is stopping");
    return (int)rc;
}

static void hook_after(void *ud, const struct gd_vfs_event *ev)
{
    struct vfs_mount_ud *u = ud;
    if (!(atomic_load(&u->e->vb.need) & FS_NEED_AFTER))
        return;
    struct hook_call c = {u, ev, NULL, 0};
    gd__vfs_call(u->e, run_after, &c);
}

int gd_engine_vfs_hooks(gd_engine *e, const char *mount, struct gd_vfs_hooks *out)
{
    size_t n = strlen(mount ? mount : "/");
    struct vfs_mount_ud *u = calloc(1, sizeof(*u) + n + 1);
    if (!u)
        return -ENOMEM;
    u->e = e;
    memcpy(u->mount, mount ? mount : "/", n + 1);
    u->next = e->vb.uds;
    e->vb.uds = u;
    *out = (struct gd_vfs_hooks){hook_before, hook_after, u};
    return 0;
}
