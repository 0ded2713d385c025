/*
 * lpolicy.h - one compiled Lua policy: a LuaJIT state of its own, sandboxed, with a
 * memory cap and a CPU budget per call, holding what the policy file declared and the
 * hooks it defined.
 *
 * A policy file returns a table (docs/lua-api.md):
 *
 *   return {
 *     allow   = { "api.github.com", "GET registry.npmjs.org/", {host=..., port=..., ...} },
 *     secrets = { GITHUB_TOKEN = { hosts = {"api.github.com"}, from = "env" } },
 *     dns = "synthetic", tcp_map = {...}, allow_internal = {...}, resolve = {...},
 *     vm = { image = ..., memory = 1024, cpus = 2, env = { K = "v" } },
 *     plugins = { ratelimit = { ... } }, limits = { hook_ms = 50, memory_mb = 64 },
 *     on_request = function(req, ctx) ... end,
 *     on_response = function(res, req, ctx) ... end,
 *     on_request_body = ..., on_response_body = ...,
 *     on_connect = function(req, ctx) ... end, -- per address about to be dialled
 *     on_ingress_request = function(req, ctx) ... end,       -- host clients of a
 *     on_ingress_response = function(res, req, ctx) ... end, -- `--listen` port
 *     mounts = { ["/workspace"] = { hostfs = ".", mode = "ro", hide = { ".env" } },
 *                ["/run/task"] = { provider = { getattr = ..., read = ... } } },
 *     on_fs = function(op, ctx) ... end,      -- before a guest file operation
 *     on_fs_done = function(op, ctx) ... end, -- after it
 *   }
 *
 * Loading compiles and runs the file (and what it requires) once, validates every key,
 * and then locks the globals. Nothing is resolved or applied here: the declarations come
 * out as typed rules and lists for the engine above to apply, so this module needs no
 * knowledge of the egress, plugin or network layers.
 *
 * Hooks fail closed: an error, a CPU budget overrun or an allocation beyond the cap in
 * a hook denies the transaction (rule "lua-error", reason with file:line) and leaves
 * the state usable for the next request.
 */
#ifndef GD_LPOLICY_H
#define GD_LPOLICY_H

#include "base/err.h"
#include "http/http.h"
#include "ssh/ssh.h"
#include "vfs/vfs.h"

#include <stddef.h>

typedef struct gd_lua gd_lua;

struct gd_lua_opts {
    const char *lua_dir; /* trusted modules (require "gondolin.json" ...); may be NULL */
    size_t mem_limit;    /* allocator cap in bytes; 0 = 64 MiB (limits.memory_mb overrides) */
    unsigned hook_ms;    /* CPU budget of one hook call; 0 = 100 (limits.hook_ms overrides) */
    unsigned load_ms;    /* budget of loading the file; 0 = 2000 */
    void (*log)(void *ud, const char *msg); /* gondolin.log; NULL: stderr */
    void *log_ud;
};

/* A declaration of an egress rule, which the engine hands to the typed setter of its
 * kind (policy/egress.h) with value. */
enum gd_lua_rule_kind {
    GD_LUA_ALLOW,            /* allow: "[METHOD ]HOST[:PORT][/PATH]" */
    GD_LUA_ALLOW_INTERNAL,   /* allow_internal: a host pattern */
    GD_LUA_TCP_MAP,          /* tcp_map: "HOST:PORT[=UPHOST:UPPORT]" */
    GD_LUA_DNS,              /* dns: "synthetic", "trusted" or "open" */
    GD_LUA_RESOLVE,          /* resolve: "NAME:ADDR" */
    GD_LUA_UPSTREAM_CA,      /* upstream_ca: a path (made absolute against the policy's dir) */
    GD_LUA_SECRETS_IN_QUERY, /* secrets_in_query = true (value NULL) */
};

struct gd_lua_rule {
    enum gd_lua_rule_kind kind;
    char *value;
    char *where; /* "agent.lua:12: allow[2] 'rule'" for error messages */
};

struct gd_lua_secret {
    char *name, *hosts; /* hosts comma-joined */
    char *from;         /* "env:VAR", "file:PATH", "value:...", "<source>:<arg>" */
    char *where;
};

struct gd_lua_plugin_conf {
    char *name, *json; /* the plugin's config table as JSON ("{}" for true) */
};

struct gd_lua_conf {
    char *name;
    struct gd_lua_rule *rules; /* in declaration order */
    size_t nrules;
    struct gd_lua_secret *secrets;
    size_t nsecrets;
    struct gd_lua_plugin_conf *plugins;
    size_t nplugins;
    char *image;
    unsigned memory_mb, cpus;
    char **env;           /* "K=V", NULL-terminated */
    unsigned hook_phases; /* bit i: the policy defines hook slot i (on_connect,
                             on_request, on_request_body, on_response, on_response_body,
                             on_ingress_request, on_ingress_response) */
    /* mounts = {...}: sorted by guest path; strings owned by the conf. Host paths are
     * absolute (resolved against the policy's directory). GD_MOUNT_LUA mounts are served
     * by gd_lua_provider_call with the same guest path. */
    struct gd_mount *mounts;
    size_t nmounts;
    unsigned fs_hooks;      /* GD_LUA_FS_BEFORE (on_fs) | GD_LUA_FS_AFTER (on_fs_done) */
    struct gd_ssh_conf ssh; /* ssh = {...}: rules the engine adds to the revision's egress */
    int ssh_hook;           /* the policy defines on_ssh_exec */
};

enum { GD_LUA_FS_BEFORE = 1, GD_LUA_FS_AFTER = 2 };

/* Compiles, runs and validates the policy at path. On error err says file:line and
 * what is wrong; *out is NULL. */
int gd_lua_load(const char *path, const struct gd_lua_opts *o, gd_lua **out, struct gd_err *err);
void gd_lua_free(gd_lua *l);

const struct gd_lua_conf *gd_lua_conf(const gd_lua *l);
/* Every file the policy consists of (the policy, then what it required, in load order)
 * and their combined content hash (sha256 hex of "path\0content\0" ...). Borrowed. */
const char *const *gd_lua_files(const gd_lua *l, size_t *n);
const char *gd_lua_hash(const gd_lua *l);
size_t gd_lua_mem(const gd_lua *l);
/* Warnings found while loading (lint), NULL-terminated, borrowed. */
const char *const *gd_lua_warnings(const gd_lua *l);

/* The hook: calls on_connect / on_request / on_request_body / on_response /
 * on_response_body for the phase. *ctx_ref is the transaction's ctx table (0 = none yet); call
 * gd_lua_txn_end with it when the transaction ends. */
enum gd_decision gd_lua_hook(gd_lua *l, gd_txn *t, enum gd_phase ph, int *ctx_ref);
void gd_lua_txn_end(gd_lua *l, int ctx_ref);

/* Where a hook is defined ("agent.lua:12"), or NULL when the policy has none for ph. */
const char *gd_lua_hook_site(const gd_lua *l, enum gd_phase ph);

/* ---- SSH (ssh.c; docs/ssh.md "Policy") ---- */

/* on_ssh_exec(req, ctx) before an exec is proxied. 0 (go on) or -EACCES: req:deny (rule
 * = its "file:line", reason its text) or the hook failed (rule "lua-error", fail closed). */
int gd_lua_ssh_hook(gd_lua *l, const struct gd_ssh_exec *x, char *rule, size_t rcap, char *reason,
                    size_t cap);

/* ---- files (fs.c, fsprov.c; docs/lua-api.md "Files") ---- */

/* on_fs(op, ctx) before a guest file operation on mount (its guest path). Returns 0
 * (go on) or a negative errno: the policy denied (rule = "file:line" of ctx:deny) or
 * the hook failed (rule "lua-error"; an error, the CPU budget or the memory cap: -EACCES,
 * fail closed). reason gets one line either way when denying. */
int gd_lua_fs_hook(gd_lua *l, const struct gd_vfs_event *ev, const char *mount, char *rule,
                   size_t rcap, char *reason, size_t cap);
/* on_fs_done(op, ctx) after it; an error is only logged (the operation happened). */
void gd_lua_fs_done(gd_lua *l, const struct gd_vfs_event *ev, const char *mount);
/* Where on_fs (after 0) or on_fs_done (1) is defined, or NULL. */
const char *gd_lua_fs_site(const gd_lua *l, int after);

/* One call into a Lua provider (a mount's `provider = { ... }` table). Paths are relative
 * to the mount and start with '/' ("/" is its root). */
enum gd_lua_fsop {
    GD_LUA_FS_GETATTR, /* st */
    GD_LUA_FS_READDIR, /* fill(ctx, name, off, type, NULL) for entries after off */
    GD_LUA_FS_OPEN,    /* flags */
    GD_LUA_FS_READ,    /* off, buf, n -> byte count */
    GD_LUA_FS_WRITE,   /* off, data, n -> byte count */
    GD_LUA_FS_CREATE,  /* mode */
    GD_LUA_FS_MKDIR,   /* mode */
    GD_LUA_FS_UNLINK,
    GD_LUA_FS_RMDIR,
    GD_LUA_FS_RENAME,   /* path -> path2 */
    GD_LUA_FS_TRUNCATE, /* size */
    GD_LUA_FS_READLINK, /* buf, n -> length */
    GD_LUA_FS_NOPS
};
struct gd_lua_fscall {
    enum gd_lua_fsop op;
    const char *path, *path2;
    int flags;
    mode_t mode;
    uint64_t off, size;
    void *buf;        /* read, readlink: n bytes of room */
    const void *data; /* write: n bytes */
    size_t n;
    struct stat *st;
    gd_vfs_fill_fn fill;
    void *fill_ctx;
    char why[400]; /* set when the result is -EIO because the function failed */
};
/* The function names of a provider table, by op ("getattr", ...), NULL-ended. */
extern const char *const gd_lua_fsop_name[GD_LUA_FS_NOPS + 1];
/* Does the policy serve mount (a guest path) with a Lua provider? */
int gd_lua_has_provider(const gd_lua *l, const char *mount);
/* Calls the provider function for c->op under the hook budget and checks what it
 * returned. >= 0 (a byte count for read/write/readlink, else 0) or a negative errno:
 * the errno the function returned (`return nil, "ENOENT"`), -ENOSYS / -EROFS when the
 * table has no such function, -EIO when it raised, ran out of budget or memory, or
 * returned something invalid (c->why says which). */
long gd_lua_provider_call(gd_lua *l, const char *mount, struct gd_lua_fscall *c);
/* An errno name ("EACCES") or number as text -> the positive errno, 0 when unknown;
 * and back (NULL when we have no name for it). */
int gd_lua_errno(const char *name);
const char *gd_lua_errno_name(int e);

#endif
