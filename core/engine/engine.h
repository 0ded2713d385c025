/*
 * engine.h - the policy engine: one object per sandbox that turns the base egress rules
 * (typed, from the command line or the C API), a Lua policy file and the loaded .so
 * plugins into a *revision* (egress rules, plugin instances, Lua state, one ordered hook
 * chain), installs a single dispatcher hook into the proxy, and swaps revisions on
 * reload. A revision's rules are a copy of the base plus the policy's declarations,
 * applied through the typed setters of policy/egress.h.
 *
 * Chain of a revision, in order:
 *   allow-host (REQUEST)  internal-ranges (CONNECT)  plugin hooks (load order)
 *   Lua hooks  secrets (REQUEST, last: every other hook sees placeholders only)
 *
 * Each transaction is pinned to the revision current when its first hook ran and keeps
 * it (refcounted) until it ends, so a reload never splits one exchange between two
 * policies; the revision's short hash goes into the transaction's audit record.
 *
 * Reload (gd_engine_reload; SIGHUP and file watches call it): the new revision is
 * built in a fresh Lua state with fresh plugin instances and validated completely; only
 * then does it become current. A failing build leaves the old revision in place.
 * Settings that only apply at start (VM options, DNS mode, audit file, mounts) are
 * reported when a reload changes them.
 */
#ifndef GD_ENGINE_H
#define GD_ENGINE_H

#include "base/err.h"
#include "http/http.h"
#include "lua/lpolicy.h"
#include "policy/egress.h"
#include "vfs/vfs.h"

#include <uv.h>

typedef struct gd_engine gd_engine;

struct gd_engine_opts {
    const char *policy; /* Lua policy file, or NULL (base rules only) */
    /* typed rules from the command line or the C API (copied; every revision starts
     * from them, the Lua policy's declarations added); NULL = none. Its audit_path is
     * opened once here, its audit FILE* is not used. */
    const struct gd_egress *base;
    const char *const *plugin_dirs;         /* NULL-ended; scanned in order, files sorted */
    const char *const *plugins;             /* NULL-ended explicit .so paths, after the dirs */
    const char *lua_dir;                    /* trusted modules; NULL = found next to the binary */
    int quiet;                              /* no denial lines on stderr */
    void (*log)(void *ud, const char *msg); /* policy/plugin log lines; NULL = stderr */
    void *log_ud;
    /* After every reload attempt made by a watch or SIGHUP: ok, the revision now
     * current, and the error of a rejected attempt (NULL when ok). */
    void (*on_reload)(void *ud, int ok, const char *revision, const char *msg);
    /* Authoring tools: "NAME=VALUE" values that replace the policy's secret sources, and
     * stub_secrets = every other secret gets the value "stub-NAME" (nothing is read). */
    const char *const *secret_values;
    int stub_secrets;
};

/* Builds the first revision. On error err says what and where (file:line). */
int gd_engine_new(const struct gd_engine_opts *o, gd_engine **out, struct gd_err *err);
void gd_engine_free(gd_engine *e); /* after gd_engine_unwatch's handles closed */

/* Installs the dispatcher hook; the proxy's on_event must be gd_engine_on_event. */
int gd_engine_install(gd_engine *e, gd_proxy *px);
void gd_engine_on_event(const struct gd_proxy_event *ev, void *ud);

/* The current revision's egress rules (borrowed, valid until the next reload). */
struct gd_egress *gd_engine_egress(gd_engine *e);
/* The Lua policy's declarations of the current revision, or NULL without a policy. */
const struct gd_lua_conf *gd_engine_policy_conf(gd_engine *e);
const char *gd_engine_revision(const gd_engine *e); /* short hash */
unsigned gd_engine_generation(const gd_engine *e);  /* 1, 2, ... per successful load */

/* Builds and swaps in a new revision. On failure the old one stays and err explains. */
int gd_engine_reload(gd_engine *e, struct gd_err *err);
/* The signed bundle that revisions built from now on come from (their audit records'
 * bundle fields; docs/bundles.md): name (copied; "" = none), revision, signer ids. */
void gd_engine_set_bundle(gd_engine *e, const char *name, long long revision, const char *signers);

/* Watches the policy files and plugin dirs and handles SIGHUP (reload after a short
 * debounce; results are logged). */
int gd_engine_watch(gd_engine *e, uv_loop_t *loop);
void gd_engine_unwatch(gd_engine *e);
/* Closes the watch, timer and signal handles for good (they finish closing on the
 * loop; run it once more before gd_engine_free). */
void gd_engine_close(gd_engine *e);

/* Policy authoring (no VM): runs one request through the current revision's chain.
 * Headers are "Name: value" strings. Fills the outcome; the transaction is returned
 * (detached) for inspection and must be freed with gd_txn_free_detached. */
struct gd_engine_trial {
    const char *method, *url;
    const char *const *headers; /* NULL-ended */
    const char *addr;           /* resolved address for the CONNECT phase, or NULL */
    int response_status;        /* > 0: also run the response phases with resp_headers */
    const char *const *resp_headers;
};
int gd_engine_try(gd_engine *e, const struct gd_engine_trial *tr, gd_txn **out, struct gd_err *err);

/* ---- files (vfs_bridge.c, vfs_provider.c; docs/vfs.md "Policy") ----
 *
 * Mounts are fixed when the engine starts: gd_engine_mounts gives the first revision's
 * `mounts` (borrowed, valid until gd_engine_free); a reload that changes them logs that
 * a restart is needed and keeps them. fs hooks (plugin fs hooks in load order, then the
 * policy's on_fs / on_fs_done) always follow the current revision.
 *
 * Transports call hooks and Lua providers on their own threads; the policy lives on the
 * loop. gd_engine_vfs_start(e, loop) (on the loop thread) starts the bridge: such a call
 * posts to the loop and waits for the answer (inline when already on the loop thread).
 * When the current revision has no fs hooks and --audit-fs is off, a hook returns at
 * once without hopping. gd_engine_vfs_stop (also done by gd_engine_close) answers every
 * waiting and later call with EIO: call it before stopping transports from the loop
 * thread (a transport thread waiting for the loop would otherwise never return). */
const struct gd_mount *gd_engine_mounts(gd_engine *e, size_t *n);
int gd_engine_vfs_start(gd_engine *e, uv_loop_t *loop);
void gd_engine_vfs_stop(gd_engine *e);
/* Hooks for the session of mount (its guest path; copied). ud is owned by the engine:
 * the hooks stay valid until gd_engine_free. Before: 0 or a negative errno (denied: the
 * audit gets a line; a hook error or timeout is -EACCES); after: plugin hooks, on_fs_done,
 * and with --audit-fs a line per mutating operation. Called on the loop thread, before
 * the transport starts (the hooks themselves are called from any thread). */
int gd_engine_vfs_hooks(gd_engine *e, const char *mount, struct gd_vfs_hooks *out);
/* The provider of a policy mount whose kind is GD_MOUNT_LUA (ops hop to the loop; the
 * table of the current revision serves them while it still declares that mount, else
 * the first revision's) or GD_MOUNT_PLUGIN (the plugin's factory with the mount's
 * config; its ops run on the transport thread). Other kinds: -ENOTSUP (they are
 * gd_mount_provider's). Free with gd_vfs_provider_free before gd_engine_free. */
int gd_engine_mount_provider(gd_engine *e, const struct gd_mount *m, gd_vfs_provider **out,
                             struct gd_err *err);
/* Policy authoring (no VM, the calling thread): the before-chain for one operation on
 * mount. 0 allowed, or the negative errno with rule and reason. Writes no audit line. */
int gd_engine_fs_try(gd_engine *e, const struct gd_vfs_event *ev, const char *mount, char *rule,
                     size_t rcap, char *reason, size_t cap);

/* Where the current revision's on_fs (after 0) or on_fs_done (1) is defined, or NULL. */
const char *gd_engine_fs_hook_site(gd_engine *e, int after);

/* ---- SSH (ssh_hooks.c; docs/ssh.md "Policy"), on the loop thread ---- */

/* The current revision's on_ssh_exec for one exec: 0 go on, or -EACCES with rule
 * ("file:line" or "lua-error") and reason (one line). */
int gd_engine_ssh_exec(gd_engine *e, const struct gd_ssh_exec *x, char *rule, size_t rcap,
                       char *reason, size_t cap);
/* One exec's audit record. */
void gd_engine_ssh_audit(gd_engine *e, const struct gd_ssh_record *a);

/* The lua/ directory next to the running binary (source tree or installed share/). */
const char *gd_engine_default_lua_dir(void);

#endif
