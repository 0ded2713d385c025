/*
 * txn.c - the request and response objects hooks see: methods over gd_txn, each
 * checked against the phases it may run in (docs/lua-api.md).
 */
#define _GNU_SOURCE
#include "lua/lua_int.h"

#include <ctype.h>
#include <errno.h>
#include <lauxlib.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

/* ---- request / response objects ---- */

static const char MT_REQ[] = "gondolin.request", MT_RES[] = "gondolin.response";

#define P_REQ (GD_PHASE_REQUEST_HEAD | GD_PHASE_REQUEST_BODY)
#define P_RES (GD_PHASE_RESPONSE_HEAD | GD_PHASE_RESPONSE_BODY)
#define P_HTTP (P_REQ | P_RES)
#define P_ALL (GD_PHASE_CONNECT | P_HTTP)

/* The object at 1, checked: a live request (req_phases) or response (res_phases)
 * object, called in one of the phases the method is allowed in for that kind (0: not a
 * method of that kind). on_connect sees only what a pooled connection's reuse cannot
 * make stale (scheme, host, port, addr): it does not run again for a request that reuses
 * a connection, so a decision there must not depend on the request's path or headers. */
static struct lreq *check_obj(lua_State *L, unsigned req_phases, unsigned res_phases,
                              const char *fn)
{
    gd_lua *l = gd__lua_self(L);
    struct lreq *r = lua_touserdata(L, 1);
    if (!r || !lua_getmetatable(L, 1))
        luaL_error(L, "%s: call it as a method (obj:%s(...))", fn, fn);
    luaL_getmetatable(L, MT_REQ);
    luaL_getmetatable(L, MT_RES);
    int ok = lua_rawequal(L, -3, -2) || lua_rawequal(L, -3, -1);
    lua_pop(L, 3);
    if (!ok)
        luaL_error(L, "%s: call it as a method (obj:%s(...))", fn, fn);
    unsigned phases = r->resp ? res_phases : req_phases;
    if (!phases)
        luaL_error(L, "%s: a %s method", fn, r->resp ? "request" : "response");
    if (!r->t || r->t != l->cur)
        luaL_error(L, "%s: request already finished", fn);
    if (!(l->cur_phase & phases))
        luaL_error(L, "%s: API disabled in phase %s", fn, gd__lua_phase_name(l->cur_phase));
    return r;
}

static int o_method(lua_State *L)
{
    lua_pushstring(L, gd_txn_method(check_obj(L, P_HTTP, P_HTTP, "method")->t));
    return 1;
}
static int o_scheme(lua_State *L)
{
    lua_pushstring(L, gd_txn_scheme(check_obj(L, P_ALL, P_ALL, "scheme")->t));
    return 1;
}
static int o_host(lua_State *L)
{
    lua_pushstring(L, gd_txn_host(check_obj(L, P_ALL, P_ALL, "host")->t));
    return 1;
}
static int o_port(lua_State *L)
{
    lua_pushinteger(L, gd_txn_port(check_obj(L, P_ALL, P_ALL, "port")->t));
    return 1;
}
static int o_target(lua_State *L)
{
    lua_pushstring(L, gd_txn_target(check_obj(L, P_HTTP, P_HTTP, "target")->t));
    return 1;
}
static int o_path(lua_State *L)
{
    const char *tg = gd_txn_target(check_obj(L, P_HTTP, P_HTTP, "path")->t);
    const char *q = strchr(tg, '?');
    lua_pushlstring(L, tg, q ? (size_t)(q - tg) : strlen(tg));
    return 1;
}
static int o_query(lua_State *L)
{
    const char *q = strchr(gd_txn_target(check_obj(L, P_HTTP, P_HTTP, "query")->t), '?');
    if (q)
        lua_pushstring(L, q + 1);
    else
        lua_pushnil(L);
    return 1;
}
static int o_url(lua_State *L)
{
    gd_txn *t = check_obj(L, P_HTTP, P_HTTP, "url")->t;
    const char *s = gd_txn_scheme(t);
    unsigned p = gd_txn_port(t), def = !strcmp(s, "https") ? 443 : 80;
    const char *h = gd_txn_host(t);
    int v6 = strchr(h, ':') != NULL;
    if (p && p != def)
        lua_pushfstring(L, "%s://%s%s%s:%d%s", s, v6 ? "[" : "", h, v6 ? "]" : "", (int)p,
                        gd_txn_target(t));
    else
        lua_pushfstring(L, "%s://%s%s%s%s", s, v6 ? "[" : "", h, v6 ? "]" : "", gd_txn_target(t));
    return 1;
}
static int o_is_websocket(lua_State *L)
{
    lua_pushboolean(L, gd_txn_is_websocket(check_obj(L, P_HTTP, P_HTTP, "is_websocket")->t));
    return 1;
}
/* The address dialled (connect) or connected to (response phases). */
static int o_addr(lua_State *L)
{
    const char *a = gd_txn_addr(check_obj(L, P_ALL & ~P_REQ, P_RES, "addr")->t);
    if (a && *a)
        lua_pushstring(L, a);
    else
        lua_pushnil(L);
    return 1;
}
static int o_status(lua_State *L)
{
    lua_pushinteger(L, gd_txn_status(check_obj(L, P_RES, P_RES, "status")->t));
    return 1;
}

static int o_header(lua_State *L)
{
    struct lreq *r = check_obj(L, P_HTTP, P_HTTP, "header");
    const char *v = gd_txn_header(r->t, r->resp, luaL_checkstring(L, 2));
    if (v)
        lua_pushstring(L, v);
    else
        lua_pushnil(L);
    return 1;
}

static int o_headers(lua_State *L)
{
    struct lreq *r = check_obj(L, P_HTTP, P_HTTP, "headers");
    size_t n = gd_txn_header_count(r->t, r->resp);
    lua_createtable(L, 0, (int)n);
    char low[256];
    for (size_t i = 0; i < n; i++) {
        const char *k, *v;
        gd_txn_header_at(r->t, r->resp, i, &k, &v);
        size_t j = 0;
        for (; k[j] && j < sizeof(low) - 1; j++)
            low[j] = (char)tolower((unsigned char)k[j]);
        low[j] = 0;
        lua_getfield(L, -1, low);
        if (lua_isstring(L, -1)) { /* repeated header: joined as HTTP allows */
            lua_pushliteral(L, ", ");
            lua_pushstring(L, v);
            lua_concat(L, 3);
        } else {
            lua_pop(L, 1);
            lua_pushstring(L, v);
        }
        lua_setfield(L, -2, low);
    }
    return 1;
}

static int set_header(lua_State *L, const char *fn, int del)
{
    struct lreq *r = check_obj(L, P_REQ, P_RES, fn);
    const char *k = luaL_checkstring(L, 2);
    const char *v = del ? NULL : luaL_checkstring(L, 3);
    int rc = gd_txn_set_header(r->t, r->resp, k, v);
    if (rc == -EINVAL)
        return luaL_error(L, "%s: invalid header name or value (no CR/LF, token name)", fn);
    if (rc)
        return luaL_error(L, "%s: out of memory", fn);
    return 0;
}
static int o_set_header(lua_State *L)
{
    return set_header(L, "set_header", 0);
}
static int o_del_header(lua_State *L)
{
    return set_header(L, "del_header", 1);
}

static int o_set_target(lua_State *L)
{
    struct lreq *r = check_obj(L, P_REQ, 0, "set_target");
    if (gd_txn_set_target(r->t, luaL_checkstring(L, 2)))
        return luaL_error(L, "set_target: wants an origin-form target (\"/path?query\")");
    return 0;
}

static int o_want_body(lua_State *L)
{
    gd_lua *l = gd__lua_self(L);
    struct lreq *r = check_obj(L, GD_PHASE_REQUEST_HEAD, GD_PHASE_RESPONSE_HEAD, "want_body");
    if (gd_txn_ingress(r->t))
        return luaL_error(L, "want_body: ingress hooks see heads only");
    int body_fn =
        l->fn[gd__lua_phase_index(r->resp ? GD_PHASE_RESPONSE_BODY : GD_PHASE_REQUEST_BODY)];
    if (body_fn == LUA_NOREF)
        return luaL_error(L, "want_body: the policy defines no %s",
                          r->resp ? "on_response_body" : "on_request_body");
    gd_txn_want_body(r->t);
    return 0;
}

static int o_body(lua_State *L)
{
    struct lreq *r = check_obj(L, GD_PHASE_REQUEST_BODY, GD_PHASE_RESPONSE_BODY, "body");
    size_t n;
    const uint8_t *b = gd_txn_body(r->t, &n);
    gd__lua_charge(L, gd__lua_self(L), n);
    lua_pushlstring(L, (const char *)b, n);
    return 1;
}

static int o_set_body(lua_State *L)
{
    struct lreq *r = check_obj(L, GD_PHASE_REQUEST_BODY, GD_PHASE_RESPONSE_BODY, "set_body");
    size_t n;
    const char *s = luaL_checklstring(L, 2, &n);
    gd__lua_charge(L, gd__lua_self(L), n);
    if (gd_txn_set_body(r->t, s, n))
        return luaL_error(L, "set_body: out of memory");
    return 0;
}

/* The caller's position, for the rule name of a decision ("agent.lua:12"); after a
 * tail call (return req:deny(...)) the caller's frame is gone: the hook's own line. */
static void caller_site(lua_State *L, char *buf, size_t cap)
{
    gd_lua *l = gd__lua_self(L);
    lua_Debug ar;
    if (lua_getstack(L, 1, &ar) && lua_getinfo(L, "Sl", &ar) && ar.currentline > 0)
        snprintf(buf, cap, "%s:%d", ar.short_src, ar.currentline);
    else
        snprintf(buf, cap, "%s", l->site[l->cur_slot]);
}

static int o_deny(lua_State *L)
{
    struct lreq *r = check_obj(L, GD_PHASE_CONNECT | P_REQ, P_RES, "deny");
    int status = (int)luaL_optinteger(L, 2, 403);
    const char *why = luaL_optstring(L, 3, "denied by policy");
    if (status < 400 || status > 599)
        return luaL_error(L, "deny: status must be 400-599, not %d", status);
    char site[300];
    caller_site(L, site, sizeof(site));
    gd_txn_deny(r->t, status, site, "%s", why);
    return 0;
}

static int o_respond(lua_State *L)
{
    struct lreq *r = check_obj(L, P_REQ, P_RES, "respond");
    int status = (int)luaL_checkinteger(L, 2);
    if (status < 200 || status > 599)
        return luaL_error(L, "respond: status must be 200-599, not %d", status);
    size_t bl = 0;
    const char *body = luaL_optlstring(L, 4, "", &bl);
    const char *ctype = "text/plain; charset=utf-8";
    if (!lua_isnoneornil(L, 3)) {
        luaL_checktype(L, 3, LUA_TTABLE);
        lua_pushnil(L);
        while (lua_next(L, 3)) {
            if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING)
                return luaL_error(L, "respond: headers must map names to strings");
            const char *k = lua_tostring(L, -2);
            if (!strcasecmp(k, "content-type"))
                ctype = lua_tostring(L, -1);
            lua_pop(L, 1);
        }
    }
    gd_txn_respond(r->t, status, ctype, body, bl);
    if (!lua_isnoneornil(L, 3)) {
        lua_pushnil(L);
        while (lua_next(L, 3)) {
            const char *k = lua_tostring(L, -2);
            if (strcasecmp(k, "content-type") &&
                gd_txn_respond_header(r->t, k, lua_tostring(L, -1)))
                return luaL_error(L, "respond: header '%s' cannot be set", k);
            lua_pop(L, 1);
        }
    }
    return 0;
}

static int o_decided(lua_State *L)
{
    gd_txn *t = check_obj(L, P_ALL, P_ALL, "decided")->t;
    int status;
    const char *rule, *reason;
    enum gd_decision d = gd_txn_decision(t, &status, &rule, &reason);
    lua_pushboolean(L, d != GD_CONTINUE);
    return 1;
}

static int o_tostring(lua_State *L)
{
    struct lreq *r = lua_touserdata(L, 1);
    lua_pushfstring(L, "%s: %p", r && r->resp ? MT_RES : MT_REQ, (void *)r);
    return 1;
}

static const luaL_Reg obj_methods[] = {{"method", o_method},
                                       {"scheme", o_scheme},
                                       {"host", o_host},
                                       {"port", o_port},
                                       {"path", o_path},
                                       {"query", o_query},
                                       {"target", o_target},
                                       {"url", o_url},
                                       {"header", o_header},
                                       {"headers", o_headers},
                                       {"set_header", o_set_header},
                                       {"del_header", o_del_header},
                                       {"set_target", o_set_target},
                                       {"is_websocket", o_is_websocket},
                                       {"status", o_status},
                                       {"addr", o_addr},
                                       {"want_body", o_want_body},
                                       {"body", o_body},
                                       {"set_body", o_set_body},
                                       {"deny", o_deny},
                                       {"respond", o_respond},
                                       {"decided", o_decided},
                                       {NULL, NULL}};

static void make_class(lua_State *L, gd_lua *l, const char *name)
{
    luaL_newmetatable(L, name);
    lua_newtable(L);
    for (const luaL_Reg *r = obj_methods; r->name; r++) {
        lua_pushlightuserdata(L, l);
        lua_pushcclosure(L, r->func, 1);
        lua_setfield(L, -2, r->name);
    }
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, gd__lua_readonly);
    lua_setfield(L, -2, "__newindex");
    lua_pushcfunction(L, o_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pushliteral(L, "locked");
    lua_setfield(L, -2, "__metatable");
    lua_pop(L, 1);
}

struct lreq *gd__lua_push_obj(lua_State *L, gd_txn *t, int resp)
{
    struct lreq *r = lua_newuserdata(L, sizeof(*r));
    r->t = t;
    r->resp = resp;
    luaL_getmetatable(L, resp ? MT_RES : MT_REQ);
    lua_setmetatable(L, -2);
    return r;
}

void gd__lua_open_txn(lua_State *L, gd_lua *l)
{
    make_class(L, l, MT_REQ);
    make_class(L, l, MT_RES);
}
