/*
 * lib.c - the gondolin.* library: log, host_match, base64, sha256 and JSON (the Lua
 * modules in lua/gondolin wrap these).
 */
#define _GNU_SOURCE
#include "lua/lua_int.h"

#include "base/fs.h"
#include "base/pattern.h"
#include "base/text.h"

#include <cjson/cJSON.h>
#include <lauxlib.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <string.h>

int gd__lua_log(lua_State *L)
{
    gd_lua *l = gd__lua_self(L);
    int n = lua_gettop(L);
    lua_getglobal(L, "tostring");
    for (int i = 1; i <= n; i++) {
        lua_pushvalue(L, n + 1);
        lua_pushvalue(L, i);
        lua_call(L, 1, 1);
        if (!lua_isstring(L, -1))
            return luaL_error(L, "tostring must return a string");
        lua_replace(L, i);
    }
    lua_settop(L, n);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (int i = 1; i <= n; i++) {
        if (i > 1)
            luaL_addchar(&b, '\t');
        lua_pushvalue(L, i);
        luaL_addvalue(&b);
    }
    luaL_pushresult(&b);
    char msg[1024];
    size_t ml;
    const char *s = lua_tolstring(L, -1, &ml);
    gd__lua_charge(L, l, ml);
    gd_sanitize(msg, sizeof(msg), s, ml);
    if (l->o.log)
        l->o.log(l->o.log_ud, msg);
    else
        fprintf(stderr, "gondolin: policy %s: %s\n", l->display, msg);
    return 0;
}

/* rawset is kept for tables, refused on the (locked) globals table. */
/* ---- gondolin.* (C part; the modules in lua/gondolin wrap these) ---- */

static int l_host_match(lua_State *L)
{
    const char *p = luaL_checkstring(L, 1), *h = luaL_checkstring(L, 2);
    lua_pushboolean(L, gd_host_match(p, h));
    return 1;
}

static int l_b64_encode(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    if (n > (64u << 20))
        return luaL_error(L, "base64: input too large");
    gd__lua_charge(L, gd__lua_self(L), 2 * n);
    unsigned char *out = lua_newuserdata(L, 4 * ((n + 2) / 3) + 1);
    int ol = EVP_EncodeBlock(out, (const unsigned char *)s, (int)n);
    lua_pushlstring(L, (const char *)out, (size_t)ol);
    return 1;
}

static int l_b64_decode(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    gd__lua_charge(L, gd__lua_self(L), 2 * n);
    if (n > (64u << 20) || n % 4) {
        lua_pushnil(L);
        lua_pushliteral(L, "not base64");
        return 2;
    }
    unsigned char *out = lua_newuserdata(L, n / 4 * 3 + 1);
    int ol = EVP_DecodeBlock(out, (const unsigned char *)s, (int)n);
    if (ol < 0) {
        lua_pushnil(L);
        lua_pushliteral(L, "not base64");
        return 2;
    }
    if (n >= 1 && s[n - 1] == '=')
        ol--;
    if (n >= 2 && s[n - 2] == '=')
        ol--;
    lua_pushlstring(L, (const char *)out, (size_t)ol);
    return 1;
}

static int l_sha256(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    gd__lua_charge(L, gd__lua_self(L), 4 * n);
    char hex[65];
    gd_sha256_hex(s, n, hex);
    lua_pushstring(L, hex);
    return 1;
}

/* JSON. Conversion errors are returned, never raised, while a cJSON tree is held; a
 * tree or string we must keep across a call that may raise sits in an anchor userdata
 * whose __gc frees it. */
static char key_null;

struct anchor {
    void *p;
    void (*free)(void *);
};

static int anchor_gc(lua_State *L)
{
    struct anchor *a = lua_touserdata(L, 1);
    if (a->p && a->free)
        a->free(a->p);
    a->p = NULL;
    return 0;
}

static void cjson_free_tree(void *p)
{
    cJSON_Delete(p);
}

static struct anchor *push_anchor(lua_State *L)
{
    struct anchor *a = lua_newuserdata(L, sizeof(*a));
    a->p = NULL;
    a->free = NULL;
    lua_newtable(L);
    lua_pushcfunction(L, anchor_gc);
    lua_setfield(L, -2, "__gc");
    lua_setmetatable(L, -2);
    return a;
}

cJSON *gd__lua_to_json(lua_State *L, int idx, int depth, const char **why)
{
    if (depth > 64) {
        *why = "nested too deep";
        return NULL;
    }
    idx = idx < 0 ? lua_gettop(L) + idx + 1 : idx;
    switch (lua_type(L, idx)) {
    case LUA_TNIL:
        return cJSON_CreateNull();
    case LUA_TBOOLEAN:
        return cJSON_CreateBool(lua_toboolean(L, idx));
    case LUA_TNUMBER:
        return cJSON_CreateNumber(lua_tonumber(L, idx));
    case LUA_TSTRING:
        return cJSON_CreateString(lua_tostring(L, idx));
    case LUA_TLIGHTUSERDATA:
        if (lua_touserdata(L, idx) == &key_null)
            return cJSON_CreateNull();
        break;
    case LUA_TTABLE: {
        if (!lua_checkstack(L, 4)) {
            *why = "nested too deep";
            return NULL;
        }
        size_t n = lua_objlen(L, idx), count = 0;
        lua_pushnil(L);
        while (lua_next(L, idx)) {
            count++;
            lua_pop(L, 1);
        }
        int is_array = n > 0 && count == n;
        cJSON *o = is_array ? cJSON_CreateArray() : cJSON_CreateObject();
        if (!o)
            return NULL;
        if (is_array) {
            for (size_t i = 1; i <= n; i++) {
                lua_rawgeti(L, idx, (int)i);
                cJSON *v = gd__lua_to_json(L, -1, depth + 1, why);
                lua_pop(L, 1);
                if (!v) {
                    cJSON_Delete(o);
                    return NULL;
                }
                cJSON_AddItemToArray(o, v);
            }
            return o;
        }
        lua_pushnil(L);
        while (lua_next(L, idx)) {
            if (lua_type(L, -2) != LUA_TSTRING) {
                lua_pop(L, 2);
                cJSON_Delete(o);
                *why = "object keys must be strings";
                return NULL;
            }
            cJSON *v = gd__lua_to_json(L, -1, depth + 1, why);
            lua_pop(L, 1);
            if (!v) {
                lua_pop(L, 1);
                cJSON_Delete(o);
                return NULL;
            }
            cJSON_AddItemToObject(o, lua_tostring(L, -1), v);
        }
        return o;
    }
    default:
        break;
    }
    *why = "value cannot be encoded";
    return NULL;
}

static int l_json_encode(lua_State *L)
{
    luaL_checkany(L, 1);
    lua_settop(L, 1);
    struct anchor *a = push_anchor(L);
    const char *why = "out of memory";
    cJSON *j = gd__lua_to_json(L, 1, 0, &why);
    if (!j)
        return luaL_error(L, "json.encode: %s", why);
    char *s = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    if (!s)
        return luaL_error(L, "json.encode: out of memory");
    a->p = s;
    a->free = free;
    gd__lua_charge(L, gd__lua_self(L), 16 * strlen(s));
    lua_pushstring(L, s);
    return 1;
}

static int from_json(lua_State *L, const cJSON *j, int depth)
{
    if (depth > 64 || !lua_checkstack(L, 4))
        return -1;
    if (cJSON_IsNull(j))
        lua_pushlightuserdata(L, &key_null);
    else if (cJSON_IsBool(j))
        lua_pushboolean(L, cJSON_IsTrue(j));
    else if (cJSON_IsNumber(j))
        lua_pushnumber(L, j->valuedouble);
    else if (cJSON_IsString(j))
        lua_pushstring(L, j->valuestring);
    else if (cJSON_IsArray(j)) {
        lua_newtable(L);
        int i = 1;
        for (const cJSON *c = j->child; c; c = c->next) {
            if (from_json(L, c, depth + 1))
                return -1;
            lua_rawseti(L, -2, i++);
        }
    } else if (cJSON_IsObject(j)) {
        lua_newtable(L);
        for (const cJSON *c = j->child; c; c = c->next) {
            if (from_json(L, c, depth + 1))
                return -1;
            lua_setfield(L, -2, c->string);
        }
    } else
        return -1;
    return 0;
}

static int l_json_decode(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    gd__lua_charge(L, gd__lua_self(L), 16 * n);
    struct anchor *a = push_anchor(L);
    a->free = cjson_free_tree;
    a->p = cJSON_ParseWithLength(s, n);
    if (!a->p) {
        lua_pushnil(L);
        lua_pushliteral(L, "not valid JSON");
        return 2;
    }
    if (from_json(L, a->p, 0)) {
        lua_pushnil(L);
        lua_pushliteral(L, "JSON nested too deep");
        return 2;
    }
    return 1;
}

void gd__lua_open_lib(lua_State *L, gd_lua *l)
{
    lua_newtable(L);
    int t = lua_gettop(L);
    gd__lua_reg(L, l, t, "log", gd__lua_log);
    gd__lua_reg(L, l, t, "host_match", l_host_match);
    gd__lua_reg(L, l, t, "b64_encode", l_b64_encode);
    gd__lua_reg(L, l, t, "b64_decode", l_b64_decode);
    gd__lua_reg(L, l, t, "sha256", l_sha256);
    gd__lua_reg(L, l, t, "json_encode", l_json_encode);
    gd__lua_reg(L, l, t, "json_decode", l_json_decode);
    lua_pushlightuserdata(L, &key_null);
    lua_setfield(L, t, "null");
    lua_pushliteral(L, "1");
    lua_setfield(L, t, "api_version");
    gd__lua_make_readonly(L);
}
