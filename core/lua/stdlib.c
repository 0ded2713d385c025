/*
 * stdlib.c - the standard library under the CPU budget.
 *
 * The budget's instruction-count hook sees Lua instructions, not time spent inside one
 * C function, and (with no large strings about) checks every 1000 instructions. A
 * library function whose cost grows with its input (a copy, a scan, a sort) can
 * therefore run far past the budget:
 * once in a single call (string patterns: strmatch.c), or a thousand times between two
 * checks (s:upper() of a 16 MiB body in a loop: the result is interned already, so
 * nothing is even allocated). Each such function here charges its work to the budget
 * (gd__lua_charge) before or after doing it, which bounds the overrun to one call:
 *
 *   - string.rep, upper, lower, reverse, sub, format, tonumber and table.concat keep
 *     the stock implementation behind a wrapper that checks the arguments, charges the
 *     bytes (or elements) involved, and calls it;
 *   - table.sort is our own heapsort, charging every comparison (a sort of many long
 *     strings with the default order never runs a Lua instruction);
 *   - find, match, gmatch and gsub are our own matcher (strmatch.c).
 */
#define _GNU_SOURCE
#include "lua/lua_int.h"

#include <lauxlib.h>
#include <string.h>

enum cost {
    COST_ARGS,   /* the string arguments' bytes */
    COST_REP,    /* the result of string.rep, computed and checked against the cap */
    COST_FORMAT, /* the format string's bytes (16 each) and the string arguments' */
    COST_CONCAT, /* the elements (16 each) and, afterwards, the result's bytes */
};

static size_t args_len(lua_State *L, int from, int n)
{
    size_t units = 0;
    for (int i = from; i <= n; i++)
        if (lua_type(L, i) == LUA_TSTRING)
            units += lua_objlen(L, i);
    return units;
}

/* string.rep(s, n [, sep]): the result's size is known before any work. */
static size_t rep_cost(lua_State *L, gd_lua *l)
{
    size_t len, seplen = 0;
    luaL_checklstring(L, 1, &len);
    lua_Integer n = luaL_checkinteger(L, 2);
    luaL_optlstring(L, 3, "", &seplen);
    if (n <= 0)
        return 0;
    double total = ((double)len + (double)seplen) * (double)n;
    if (total > (double)(l->limit - (l->used < l->limit ? l->used : l->limit)))
        luaL_error(L, "string.rep: a result of %.0f bytes exceeds the memory cap of %d MiB", total,
                   (int)(l->limit >> 20));
    return (size_t)total;
}

/* Upvalues: 1 the state, 2 the stock function, 3 the cost kind, 4 the checked type of
 * argument 1 (LUA_TSTRING or LUA_TTABLE; LUA_TNONE: any). */
static int charged(lua_State *L)
{
    gd_lua *l = gd__lua_self(L);
    enum cost kind = (enum cost)lua_tointeger(L, lua_upvalueindex(3));
    int want = (int)lua_tointeger(L, lua_upvalueindex(4));
    if (want == LUA_TSTRING)
        luaL_checkstring(L, 1);
    else if (want == LUA_TTABLE)
        luaL_checktype(L, 1, LUA_TTABLE);
    else
        luaL_checkany(L, 1);
    int n = lua_gettop(L);
    size_t units = 0;
    switch (kind) {
    case COST_ARGS:
        units = args_len(L, 1, n);
        break;
    case COST_REP:
        units = rep_cost(L, l);
        break;
    case COST_FORMAT:
        units = 16 * lua_objlen(L, 1) + args_len(L, 2, n);
        break;
    case COST_CONCAT:
        units = 16 * lua_objlen(L, 1);
        break;
    }
    gd__lua_charge(L, l, units);
    lua_pushvalue(L, lua_upvalueindex(2));
    lua_insert(L, 1);
    lua_call(L, n, LUA_MULTRET);
    if (kind == COST_CONCAT && lua_type(L, -1) == LUA_TSTRING)
        gd__lua_charge(L, l, lua_objlen(L, -1));
    return lua_gettop(L);
}

static void wrap(lua_State *L, gd_lua *l, int tbl, const char *name, enum cost kind, int want)
{
    lua_pushlightuserdata(L, l);
    lua_getfield(L, tbl, name);
    lua_pushinteger(L, kind);
    lua_pushinteger(L, want);
    lua_pushcclosure(L, charged, 4);
    lua_setfield(L, tbl, name);
}

/* ---- table.sort: heapsort, every comparison charged ---- */

/* Is t[i] < t[j]? (arguments: 1 the table, 2 the comparator or nil) */
static int less(lua_State *L, gd_lua *l, int i, int j)
{
    lua_rawgeti(L, 1, i);
    lua_rawgeti(L, 1, j);
    size_t units = 16;
    if (lua_type(L, -1) == LUA_TSTRING && lua_type(L, -2) == LUA_TSTRING) {
        size_t a = lua_objlen(L, -1), b = lua_objlen(L, -2);
        units += a < b ? a : b;
    }
    gd__lua_charge(L, l, units);
    int r;
    if (lua_isnil(L, 2)) {
        r = lua_lessthan(L, -2, -1);
    } else {
        lua_pushvalue(L, 2);
        lua_insert(L, -3);
        lua_call(L, 2, 1);
        r = lua_toboolean(L, -1);
        lua_pop(L, 1);
        return r;
    }
    lua_pop(L, 2);
    return r;
}

static void swap(lua_State *L, int i, int j)
{
    lua_rawgeti(L, 1, i);
    lua_rawgeti(L, 1, j);
    lua_rawseti(L, 1, i);
    lua_rawseti(L, 1, j);
}

/* Moves t[root] down the max-heap t[1..end]. */
static void sift(lua_State *L, gd_lua *l, int root, int end)
{
    for (;;) {
        int child = 2 * root;
        if (child > end)
            return;
        if (child + 1 <= end && less(L, l, child, child + 1))
            child++;
        if (!less(L, l, root, child))
            return;
        swap(L, root, child);
        root = child;
    }
}

static int l_sort(lua_State *L)
{
    gd_lua *l = gd__lua_self(L);
    luaL_checktype(L, 1, LUA_TTABLE);
    if (!lua_isnoneornil(L, 2))
        luaL_checktype(L, 2, LUA_TFUNCTION);
    lua_settop(L, 2);
    size_t n = lua_objlen(L, 1);
    if (n > (size_t)1 << 30)
        return luaL_error(L, "table.sort: table too large");
    int end = (int)n;
    for (int i = end / 2; i >= 1; i--)
        sift(L, l, i, end);
    while (end > 1) {
        swap(L, 1, end);
        end--;
        sift(L, l, 1, end);
    }
    return 0;
}

void gd__lua_open_stdlib(lua_State *L, gd_lua *l)
{
    lua_getglobal(L, "string");
    int s = lua_gettop(L);
    gd__lua_open_strmatch(L, l, s);
    wrap(L, l, s, "rep", COST_REP, LUA_TSTRING);
    wrap(L, l, s, "format", COST_FORMAT, LUA_TSTRING);
    static const char *const bytes[] = {"upper", "lower", "reverse", "sub"};
    for (size_t i = 0; i < sizeof(bytes) / sizeof(bytes[0]); i++)
        wrap(L, l, s, bytes[i], COST_ARGS, LUA_TSTRING);
    lua_getglobal(L, "table");
    int t = lua_gettop(L);
    wrap(L, l, t, "concat", COST_CONCAT, LUA_TTABLE);
    gd__lua_reg(L, l, t, "sort", l_sort);
    wrap(L, l, LUA_GLOBALSINDEX, "tonumber", COST_ARGS, LUA_TNONE);
    lua_pop(L, 2);
}
