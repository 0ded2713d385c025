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
    unsigned hook_phases; /* gd_phase mask the policy has hooks for */
};

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

#endif
