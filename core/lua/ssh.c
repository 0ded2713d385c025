/* ssh.c - the policy's SSH part: the `ssh = { [HOST[:PORT]] = {...} }` table read into
 * typed rules (ssh/ssh.h setters), and the on_ssh_exec(req, ctx) hook with its request
 * object (req:host(), :port(), :user(), :command(), :git(), :deny(reason)). The handle
 * dies when the call returns; any error in the hook denies (fail closed). */
#define _GNU_SOURCE
#include "lua/lua_int.h"

#include "base/text.h"

#include <errno.h>
#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MT_SSH "gondolin.ssh_exec"
#define MAX_REPOS 256

/* ---- the ssh table ---- */

static const char *opt_string(lua_State *L, int t, const char *k, const char *where)
{
    lua_getfield(L, t, k);
    const char *s = NULL;
    if (lua_type(L, -1) == LUA_TSTRING)
        s = lua_tostring(L, -1);
    else if (!lua_isnil(L, -1))
        luaL_error(L, "%s: %s must be a string", where, k);
    lua_pop(L, 1); /* the string stays referenced by the table */
    return s;
}

/* A list of strings at t[k] into v (at most cap; the strings stay in the table). */
static size_t opt_list(lua_State *L, int t, const char *k, const char *where, const char **v,
                       size_t cap)
{
    lua_getfield(L, t, k);
    size_t n = 0;
    if (lua_type(L, -1) == LUA_TSTRING)
        v[n++] = lua_tostring(L, -1);
    else if (lua_istable(L, -1)) {
        size_t len = lua_objlen(L, -1);
        if (len > cap)
            luaL_error(L, "%s: %s: more than %zu entries", where, k, cap);
        for (size_t i = 1; i <= len; i++) {
            lua_rawgeti(L, -1, (int)i);
            if (lua_type(L, -1) != LUA_TSTRING)
                luaL_error(L, "%s: %s[%zu] must be a string", where, k, i);
            v[n++] = lua_tostring(L, -1);
            lua_pop(L, 1);
        }
    } else if (!lua_isnil(L, -1))
        luaL_error(L, "%s: %s must be a list of strings", where, k);
    lua_pop(L, 1);
    return n;
}

static void read_one(lua_State *L, gd_lua *l, const char *hostport, int t, const char *where)
{
    static const char *const keys[] = {"user", "key", "agent", "commands", "repos", NULL};
    char w[400];
    snprintf(w, sizeof(w), "%s: ssh['%s']", where, hostport);
    gd__lua_check_keys(L, l, t, keys, w);
    char host[300];
    unsigned port;
    if (gd_ssh_hostport_parse(hostport, host, sizeof(host), &port))
        luaL_error(L, "%s: the key must be HOST[:PORT]", w);
    const char *cmds[8], *repos[MAX_REPOS];
    size_t nc = opt_list(L, t, "commands", w, cmds, 8);
    size_t nr = opt_list(L, t, "repos", w, repos, MAX_REPOS);
    struct gd_ssh_rule r = {.host = host,
                            .port = port,
                            .user = (char *)opt_string(L, t, "user", w),
                            .key = (char *)opt_string(L, t, "key", w),
                            .repos = (char **)repos,
                            .nrepos = nr};
    lua_getfield(L, t, "agent");
    if (!lua_isnil(L, -1) && !lua_isboolean(L, -1))
        luaL_error(L, "%s: agent must be a boolean", w);
    r.agent = lua_toboolean(L, -1);
    lua_pop(L, 1);
    for (size_t i = 0; i < nc; i++) {
        unsigned bit = gd_ssh_cmd_bit(cmds[i]);
        if (!bit)
            luaL_error(L,
                       "%s: commands: '%s' is not git-upload-pack, git-receive-pack or "
                       "git-upload-archive",
                       w, cmds[i]);
        r.commands |= bit;
    }
    if (r.key && r.agent)
        luaL_error(L, "%s: key and agent exclude each other", w);
    struct gd_err err = {{0}};
    if (gd_ssh_conf_add_rule(&l->conf.ssh, &r, &err))
        luaL_error(L, "%s: %s", w, err.msg);
}

void gd__lua_read_ssh(lua_State *L, gd_lua *l, int idx)
{
    char where[300];
    gd__lua_where(l, "ssh", where, sizeof(where));
    if (!lua_istable(L, idx))
        luaL_error(L, "%s: ssh must be a table of HOST[:PORT] = { ... }", where);
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        if (lua_type(L, -2) != LUA_TSTRING || !lua_istable(L, -1))
            luaL_error(L, "%s: ssh must be a table of HOST[:PORT] = { ... }", where);
        read_one(L, l, lua_tostring(L, -2), lua_gettop(L), where);
        lua_pop(L, 1);
    }
}

/* ---- the request object ---- */

struct lssh {
    const struct gd_ssh_exec *x; /* NULL once the call returned */
    int denied;
    char rule[300], reason[300];
};

static struct lssh *check_req(lua_State *L, const char *fn)
{
    struct lssh *r = luaL_checkudata(L, 1, MT_SSH);
    if (!r->x)
        luaL_error(L, "%s: the SSH exec already finished", fn);
    return r;
}

static int r_host(lua_State *L)
{
    lua_pushstring(L, check_req(L, "host")->x->host);
    return 1;
}

static int r_port(lua_State *L)
{
    lua_pushinteger(L, check_req(L, "port")->x->port);
    return 1;
}

static int r_user(lua_State *L)
{
    lua_pushstring(L, check_req(L, "user")->x->user);
    return 1;
}

static int r_command(lua_State *L)
{
    lua_pushstring(L, check_req(L, "command")->x->command);
    return 1;
}

static int r_git(lua_State *L)
{
    const struct gd_ssh_git *g = check_req(L, "git")->x->git;
    if (!g) {
        lua_pushnil(L);
        return 1;
    }
    lua_createtable(L, 0, 3);
    lua_pushstring(L, g->service);
    lua_setfield(L, -2, "service");
    lua_pushstring(L, g->repo);
    lua_setfield(L, -2, "repo");
    lua_pushstring(L, g->path);
    lua_setfield(L, -2, "path");
    return 1;
}

static int r_deny(lua_State *L)
{
    struct lssh *r = check_req(L, "deny");
    const char *why = luaL_optstring(L, 2, "denied by policy");
    gd_lua *l = gd__lua_self(L);
    lua_Debug ar;
    if (lua_getstack(L, 1, &ar) && lua_getinfo(L, "Sl", &ar) && ar.currentline > 0)
        snprintf(r->rule, sizeof(r->rule), "%s:%d", ar.short_src, ar.currentline);
    else
        snprintf(r->rule, sizeof(r->rule), "%s", l->ssh_site ? l->ssh_site : "on_ssh_exec");
    gd_sanitize(r->reason, sizeof(r->reason), why, strlen(why));
    r->denied = 1;
    return 0;
}

void gd__lua_open_ssh(lua_State *L, gd_lua *l)
{
    static const luaL_Reg methods[] = {
        {"host", r_host}, {"port", r_port}, {"user", r_user}, {"command", r_command},
        {"git", r_git},   {"deny", r_deny}, {NULL, NULL}};
    luaL_newmetatable(L, MT_SSH);
    lua_newtable(L);
    for (const luaL_Reg *m = methods; m->name; m++)
        gd__lua_reg(L, l, lua_gettop(L), m->name, m->func);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, gd__lua_readonly);
    lua_setfield(L, -2, "__newindex");
    lua_pushliteral(L, "locked");
    lua_setfield(L, -2, "__metatable");
    lua_pop(L, 1);
}

/* ---- calling the hook ---- */

struct ssh_args {
    gd_lua *l;
    const struct gd_ssh_exec *x;
    struct lssh *r;
};

static int ssh_entry(lua_State *L)
{
    struct ssh_args *a = lua_touserdata(L, 1);
    lua_rawgeti(L, LUA_REGISTRYINDEX, a->l->ssh_fn);
    struct lssh *r = lua_newuserdata(L, sizeof(*r));
    memset(r, 0, sizeof(*r));
    r->x = a->x;
    a->r = r;
    luaL_getmetatable(L, MT_SSH);
    lua_setmetatable(L, -2);
    lua_newtable(L); /* ctx: this exec's scratch table */
    lua_call(L, 2, 0);
    return 0;
}

int gd_lua_ssh_hook(gd_lua *l, const struct gd_ssh_exec *x, char *rule, size_t rcap, char *reason,
                    size_t cap)
{
    if (l->ssh_fn == LUA_NOREF)
        return 0;
    struct ssh_args a = {l, x, NULL};
    gd__lua_budget_start(l, l->o.hook_ms);
    int rc = lua_cpcall(l->L, ssh_entry, &a);
    int killed = l->killed;
    gd__lua_budget_stop(l);
    struct lssh r = {0};
    if (a.r) {
        r = *a.r;
        a.r->x = NULL; /* the handle dies with the call */
    }
    if (rc) {
        char msg[600];
        const char *kind;
        gd__lua_call_error(l, rc, killed, l->ssh_site, msg, sizeof(msg), &kind);
        snprintf(rule, rcap, "lua-error");
        snprintf(reason, cap, "%s in on_ssh_exec (%s): %s", kind, l->ssh_site, msg);
        if (l->o.log)
            l->o.log(l->o.log_ud, reason);
        return -EACCES; /* fail closed */
    }
    if (!r.denied)
        return 0;
    snprintf(rule, rcap, "%s", r.rule);
    snprintf(reason, cap, "%s", r.reason);
    return -EACCES;
}
