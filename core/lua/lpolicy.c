/*
 * lpolicy.c - loading a policy into its own state and calling its hooks (see lpolicy.h
 * and docs/lua-api.md; the parts are described in lua_int.h).
 */
#define _GNU_SOURCE
#include "lua/lua_int.h"

#include "base/fs.h"
#include "base/text.h"

#include <errno.h>
#include <lauxlib.h>
#include <limits.h>
#include <luajit.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Runs the chunk at 2 (arg 1 is l) and leaves the policy table in the registry. */
static int run_chunk(lua_State *L)
{
    gd_lua *l = lua_touserdata(L, 1);
    lua_pushcfunction(L, gd__lua_open_sandbox);
    lua_pushlightuserdata(L, l);
    lua_call(L, 1, 0);
    char chunk[PATH_MAX + 2];
    snprintf(chunk, sizeof(chunk), "@%s", l->display);
    gd__lua_load_file(L, l, lua_tostring(L, 2), chunk, 1);
    lua_call(L, 0, 1);
    if (!lua_istable(L, -1))
        return luaL_error(L, "%s: must return a policy table (return { allow = {...}, ... })",
                          l->display);
    lua_pushcfunction(L, gd__lua_read_policy);
    lua_pushlightuserdata(L, l);
    lua_pushvalue(L, -3);
    lua_call(L, 2, 0);
    return 0;
}

static void err_from_stack(gd_lua *l, struct gd_err *err, int rc, int killed)
{
    const char *m = lua_tostring(l->L, -1);
    if (killed && rc == LUA_ERRMEM)
        gd_err_set(err, -EINVAL, "%s: loading exceeded its CPU budget of %u ms", l->display,
                   l->o.load_ms);
    else if (rc == LUA_ERRMEM)
        gd_err_set(err, -ENOMEM, "%s: out of memory (policy memory cap %zu MiB)", l->display,
                   l->limit >> 20);
    else
        gd_err_set(err, -EINVAL, "%s", m ? m : "error object is not a string");
    lua_pop(l->L, 1);
}

/* Hidden by the protected call in gd_lua_load. */
struct load_args {
    gd_lua *l;
    const char *path;
};

static int load_entry(lua_State *L)
{
    struct load_args *a = lua_touserdata(L, 1);
    lua_pushcfunction(L, run_chunk);
    lua_pushlightuserdata(L, a->l);
    lua_pushstring(L, a->path);
    lua_call(L, 2, 0);
    return 0;
}

int gd_lua_load(const char *path, const struct gd_lua_opts *o, gd_lua **out, struct gd_err *err)
{
    *out = NULL;
    gd_lua *l = calloc(1, sizeof(*l));
    if (!l)
        return gd_err_set(err, -ENOMEM, "out of memory");
    l->o = *o;
    if (!l->o.hook_ms)
        l->o.hook_ms = 100;
    if (!l->o.load_ms)
        l->o.load_ms = 2000;
    l->limit = o->mem_limit ? o->mem_limit : (size_t)64 << 20;
    for (int i = 0; i < NPHASE; i++)
        l->fn[i] = LUA_NOREF;
    l->fs_fn[0] = l->fs_fn[1] = LUA_NOREF;
    l->ssh_fn = LUA_NOREF;
    for (int i = 0; i < GD_VFS_MAX_MOUNTS; i++)
        l->prov_ref[i] = LUA_NOREF;
    l->loaded_at = time(NULL);
    const char *slash = strrchr(path, '/');
    l->dir = slash ? strndup(path, (size_t)(slash - path)) : strdup(".");
    l->display = strdup(slash ? slash + 1 : path);
    l->md = EVP_MD_CTX_new();
    if (!l->dir || !l->display || !l->md || !EVP_DigestInit_ex(l->md, EVP_sha256(), NULL)) {
        gd_lua_free(l);
        return gd_err_set(err, -ENOMEM, "out of memory");
    }
    if (!(l->L = lua_newstate(gd__lua_alloc, l))) {
        gd_lua_free(l);
        return gd_err_set(err, -ENOMEM, "cannot create a Lua state");
    }
    /* No JIT: the count hook must see every loop (see gd__lua_count_hook). */
    luaJIT_setmode(l->L, 0, LUAJIT_MODE_ENGINE | LUAJIT_MODE_OFF);
    l->interval = 1000; /* the allocator shortens it while large blocks are held */
    lua_sethook(l->L, gd__lua_count_hook, LUA_MASKCOUNT, l->interval);

    struct load_args a = {l, path};
    l->loading = 1;
    gd__lua_budget_start(l, l->o.load_ms);
    int rc = lua_cpcall(l->L, load_entry, &a);
    int killed = l->killed;
    gd__lua_budget_stop(l);
    l->loading = 0;
    if (!rc)
        rc = lua_cpcall(l->L, gd__lua_lock_globals, l);
    if (rc) {
        err_from_stack(l, err, rc, killed);
        gd_lua_free(l);
        return -EINVAL;
    }
    unsigned char d[32];
    unsigned dl = 0;
    EVP_DigestFinal_ex(l->md, d, &dl);
    gd_hex(d, 32, l->hash);
    lua_gc(l->L, LUA_GCCOLLECT, 0);
    *out = l;
    return 0;
}

void gd_lua_free(gd_lua *l)
{
    if (!l)
        return;
    if (l->L) {
        lua_State *L = l->L;
        l->L = NULL; /* the allocator adjusts no hook while the state closes */
        lua_close(L);
    }
    EVP_MD_CTX_free(l->md);
    free(l->dir);
    free(l->display);
    free(l->src);
    for (size_t i = 0; i < l->nfiles; i++)
        free(l->files[i]);
    free(l->files);
    for (size_t i = 0; i < l->nwarn; i++)
        free(l->warn[i]);
    free(l->warn);
    for (int i = 0; i < NPHASE; i++)
        free(l->site[i]);
    free(l->fs_site[0]);
    free(l->fs_site[1]);
    free(l->ssh_site);
    gd__lua_free_mounts(l);
    struct gd_lua_conf *c = &l->conf;
    free(c->name);
    for (size_t i = 0; i < c->nrules; i++) {
        free(c->rules[i].value);
        free(c->rules[i].where);
    }
    free(c->rules);
    for (size_t i = 0; i < c->nsecrets; i++) {
        free(c->secrets[i].name);
        free(c->secrets[i].hosts);
        free(c->secrets[i].from);
        free(c->secrets[i].where);
    }
    free(c->secrets);
    for (size_t i = 0; i < c->nplugins; i++) {
        free(c->plugins[i].name);
        free(c->plugins[i].json);
    }
    free(c->plugins);
    free(c->image);
    gd_ssh_conf_free(&c->ssh);
    for (char **e = c->env; e && *e; e++)
        free(*e);
    free(c->env);
    free(l);
}

const struct gd_lua_conf *gd_lua_conf(const gd_lua *l)
{
    return &l->conf;
}

const char *const *gd_lua_files(const gd_lua *l, size_t *n)
{
    *n = l->nfiles;
    return (const char *const *)l->files;
}

const char *gd_lua_hash(const gd_lua *l)
{
    return l->hash;
}

size_t gd_lua_mem(const gd_lua *l)
{
    return l->used;
}

const char *const *gd_lua_warnings(const gd_lua *l)
{
    static const char *const none[] = {NULL};
    return l->warn ? (const char *const *)l->warn : none;
}

const char *gd_lua_hook_site(const gd_lua *l, enum gd_phase ph)
{
    return l->site[gd__lua_phase_index(ph)];
}

/* ---- calling hooks ---- */

struct call_args {
    gd_lua *l;
    gd_txn *t;
    int idx;
    int *ctx_ref;
    struct lreq *objs[2];
};

static int call_entry(lua_State *L)
{
    struct call_args *a = lua_touserdata(L, 1);
    lua_rawgeti(L, LUA_REGISTRYINDEX, a->l->fn[a->idx]);
    int nargs;
    if (a->idx == 3 || a->idx == 4 || a->idx == SLOT_INGRESS_RESPONSE) { /* (res, req, ctx) */
        a->objs[1] = gd__lua_push_obj(L, a->t, 1);
        a->objs[0] = gd__lua_push_obj(L, a->t, 0);
        nargs = 3;
    } else {
        a->objs[0] = gd__lua_push_obj(L, a->t, 0);
        nargs = 2;
    }
    if (*a->ctx_ref == 0 || *a->ctx_ref == LUA_NOREF) {
        lua_newtable(L);
        lua_pushvalue(L, -1);
        *a->ctx_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    } else
        lua_rawgeti(L, LUA_REGISTRYINDEX, *a->ctx_ref);
    lua_call(L, nargs, 0);
    return 0;
}

enum gd_decision gd_lua_hook(gd_lua *l, gd_txn *t, enum gd_phase ph, int *ctx_ref)
{
    int idx = gd__lua_phase_index(ph);
    if (gd_txn_ingress(t))
        idx = ph == GD_PHASE_REQUEST_HEAD    ? SLOT_INGRESS_REQUEST
              : ph == GD_PHASE_RESPONSE_HEAD ? SLOT_INGRESS_RESPONSE
                                             : -1;
    if (idx < 0 || l->fn[idx] == LUA_NOREF)
        return GD_CONTINUE;
    struct call_args a = {l, t, idx, ctx_ref, {NULL, NULL}};
    l->cur = t;
    l->cur_phase = ph;
    l->cur_slot = idx;
    gd__lua_budget_start(l, l->o.hook_ms);
    int rc = lua_cpcall(l->L, call_entry, &a);
    int killed = l->killed;
    gd__lua_budget_stop(l);
    l->cur = NULL;
    l->cur_phase = 0;
    for (int i = 0; i < 2; i++)
        if (a.objs[i])
            a.objs[i]->t = NULL;
    if (rc) {
        char msg[600];
        const char *kind;
        gd__lua_call_error(l, rc, killed, l->site[idx], msg, sizeof(msg), &kind);
        return gd_txn_deny(t, 403, "lua-error", "%s in %s (%s): %s", kind, gd__lua_phase_fn[idx],
                           l->site[idx], msg);
    }
    int status;
    const char *rule, *reason;
    return gd_txn_decision(t, &status, &rule, &reason);
}

void gd__lua_call_error(gd_lua *l, int rc, int killed, const char *site, char *msg, size_t cap,
                        const char **kind)
{
    const char *m = lua_tostring(l->L, -1);
    gd_sanitize(msg, cap, m ? m : "error object is not a string",
                strlen(m ? m : "error object is not a string"));
    lua_pop(l->L, 1);
    *kind = killed ? "CPU budget exceeded" : rc == LUA_ERRMEM ? "out of memory" : "error";
    if (killed && rc == LUA_ERRMEM) /* the allocator refused once the budget was gone */
        snprintf(msg, cap, "%s: CPU budget of %u ms exceeded", site, l->o.hook_ms);
    else if (rc == LUA_ERRMEM)
        snprintf(msg, cap, "%s: memory cap of %zu MiB reached", site, l->limit >> 20);
    lua_gc(l->L, LUA_GCCOLLECT, 0);
}

void gd_lua_txn_end(gd_lua *l, int ctx_ref)
{
    if (ctx_ref > 0)
        luaL_unref(l->L, LUA_REGISTRYINDEX, ctx_ref);
}
