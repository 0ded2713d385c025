/*
 * engine_int.h - private to core/engine: the engine and its revisions, shared by
 *
 *   engine.c        revisions, the HTTP dispatcher, reload and watches
 *   vfs_bridge.c    fs hooks and Lua provider calls hopping from transport threads to
 *                   the loop; the fs audit lines
 *   vfs_provider.c  the providers of policy mounts (Lua tables, plugin providers)
 */
#ifndef GD_ENGINE_INT_H
#define GD_ENGINE_INT_H

#include "engine/engine.h"
#include "plugin/plugin.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>

enum { FS_NEED_BEFORE = 1, FS_NEED_AFTER = 2 };

struct vfs_job;
struct vfs_mount_ud;

struct vfs_bridge {
    uv_async_t async;
    pthread_mutex_t mu;
    struct vfs_job *head, *tail; /* under mu */
    int started, closing;        /* closing under mu */
    pthread_t loop_thread;
    atomic_uint need;         /* the current revision's FS_NEED_*: read without hopping */
    struct vfs_mount_ud *uds; /* gd_engine_vfs_hooks' ud objects (freed with the engine) */
};

struct chain {
    const char *name;
    unsigned phases;
    int ingress;   /* runs for ingress transactions only, else for egress only */
    gd_hook_fn fn; /* NULL: the Lua policy's hooks */
    void *ud;
};

struct rev {
    gd_engine *e;
    struct rev *next; /* live list */
    int refs;
    unsigned gen;
    char hash[17];
    struct gd_egress eg;
    gd_lua *lua;
    gd_plugin_inst **inst;
    size_t ninst;
    struct chain *chain;
    size_t nchain;
    /* files: the plugins' fs hooks (load order), what the bridge must hop for */
    struct gd_plugin_fs_hook *fsh; /* copies; borrowed from the instances */
    size_t nfsh;
    unsigned fs_need; /* FS_NEED_* */
};

struct watch {
    uv_fs_event_t h;
    char *dir;
};

struct gd_engine {
    char *policy;
    struct gd_egress base; /* the command line's or the C API's rules */
    char **plugin_dirs;
    char **plugin_files;
    char *lua_dir;
    int quiet;
    void (*log)(void *, const char *);
    void *log_ud;
    void (*on_reload)(void *, int, const char *, const char *);
    char **secret_values;
    int stub_secrets;
    gd_plugin **plugins;
    size_t nplugins;
    struct rev *cur, *live;
    unsigned gen;
    FILE *audit;
    char vm_id[40];
    /* watching */
    uv_loop_t *loop;
    struct watch **w;
    size_t nw;
    uv_signal_t sig;
    uv_timer_t debounce;
    int watching;
    /* files: the revision whose mounts are running (pinned while it has mounts), the
     * bridge from transport threads to the loop, the hooks' per-mount data */
    struct rev *boot;
    struct vfs_bridge vb;
};

/* engine.c: a line to the engine's log (opts.log or stderr) */
void gd__engine_log(gd_engine *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* vfs_bridge.c */
/* While a revision builds: the plugins' fs hooks in load order, a check that every
 * plugin mount names a provider exactly one plugin registered, r->fs_need. */
int gd__vfs_rev_build(struct rev *r, const struct gd_lua_conf *c, struct gd_err *err);
/* Do two revisions declare the same mounts (a may be NULL: none)? */
int gd__vfs_same_mounts(const struct rev *a, const struct rev *b);
void gd__vfs_update_need(gd_engine *e); /* after the current revision changed */
void gd__vfs_free(gd_engine *e);
/* Runs fn(e, arg) on the loop thread and returns what it returned; -EIO when the bridge
 * is not started or stopping. Called from any thread; inline on the loop thread. */
long gd__vfs_call(gd_engine *e, long (*fn)(gd_engine *e, void *arg), void *arg);

#endif
