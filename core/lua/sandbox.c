/*
 * sandbox.c - the policy's Lua state: the allocator cap, the CPU budget, the sandbox's
 * require/load/rawset, read-only tables and the global lock (see lua_int.h).
 */
#define _GNU_SOURCE
#include "lua/lua_int.h"

#include <ctype.h>
#include <errno.h>
#include <lauxlib.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---- limits ---- */

static void budget_kill(lua_State *L, gd_lua *l);

#define BIG_BLOCK ((size_t)1 << 20)

/* How often the count hook reads the clock. One instruction can compare (a < b) or
 * copy (a .. b) strings as long as the state holds, which no library function charges;
 * so the more memory sits in large blocks, the fewer instructions may pass unchecked
 * (about 100 ms of such work between two checks at memory bandwidth). */
static void set_interval(gd_lua *l)
{
    int want = l->big >= (64u << 20)   ? 1
               : l->big >= (16u << 20) ? 10
               : l->big >= (4u << 20)  ? 100
                                       : 1000;
    if (want != l->interval && l->L && !l->killed) {
        l->interval = want;
        lua_sethook(l->L, gd__lua_count_hook, LUA_MASKCOUNT, want);
    }
}

/* Allocations are charged to the CPU budget as well: every C function that copies or
 * builds a string (rep, upper, the .. operator, format, concat, gsub ...) allocates the
 * result first, so bytes allocated bound the copying a single instruction can do. Once
 * the budget is gone, large allocations fail (the hook then raises the budget error at
 * the next instruction); small ones still succeed so the error itself can be built. */
void *gd__lua_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    gd_lua *l = ud;
    size_t old = ptr ? osize : 0;
    if (nsize == 0) {
        l->used -= old;
        if (old >= BIG_BLOCK) {
            l->big -= old;
            set_interval(l);
        }
        free(ptr);
        return NULL;
    }
    if (nsize > old && l->used - old + nsize > l->limit)
        return NULL;
    if (nsize > old && l->deadline) {
        l->work += nsize - old;
        if (l->work >= GD_LUA_WORK_CHECK) {
            l->work = 0;
            if (!l->killed && now_ns() >= l->deadline)
                budget_kill(NULL, l);
        }
        if (l->killed && nsize > 65536)
            return NULL;
    }
    void *p = realloc(ptr, nsize);
    if (!p)
        return NULL;
    l->used = l->used - old + nsize;
    if (old >= BIG_BLOCK || nsize >= BIG_BLOCK) {
        l->big = l->big - (old >= BIG_BLOCK ? old : 0) + (nsize >= BIG_BLOCK ? nsize : 0);
        set_interval(l);
    }
    return p;
}

/* Marks the running call as out of budget: from now on the count hook fires on every
 * instruction. Raises the budget error when L is given. */
static void budget_kill(lua_State *L, gd_lua *l)
{
    if (!l->killed) {
        l->killed = 1;
        lua_sethook(l->L, gd__lua_count_hook, LUA_MASKCOUNT, 1);
    }
    if (L)
        luaL_error(L, "CPU budget of %u ms exceeded", l->budget_ms);
}

/* The CPU budget. JIT compilation is off for the whole state (luaJIT_setmode), so the
 * count hook runs in every loop, including ones LuaJIT would otherwise trace. Once the
 * budget is gone the hook fires on every instruction, so a pcall in the script cannot
 * swallow the error and carry on. */
void gd__lua_count_hook(lua_State *L, lua_Debug *ar)
{
    (void)ar;
    void *ud;
    lua_getallocf(L, &ud); /* the state's gd_lua (gd__lua_alloc's ud) */
    gd_lua *l = ud;
    if (!l || !l->deadline)
        return;
    if (!l->killed && now_ns() < l->deadline)
        return;
    budget_kill(L, l);
}

void gd__lua_charge(lua_State *L, gd_lua *l, size_t units)
{
    if (!l->deadline)
        return;
    if (l->killed)
        budget_kill(L, l);
    l->work += units;
    if (l->work < GD_LUA_WORK_CHECK)
        return;
    l->work = 0;
    if (now_ns() >= l->deadline)
        budget_kill(L, l);
}

void gd__lua_budget_start(gd_lua *l, unsigned ms)
{
    l->budget_ms = ms;
    l->killed = 0;
    l->work = 0;
    l->deadline = now_ns() + (uint64_t)ms * 1000000u;
}

void gd__lua_budget_stop(gd_lua *l)
{
    l->deadline = 0;
    if (l->killed) {
        l->killed = 0;
        lua_sethook(l->L, gd__lua_count_hook, LUA_MASKCOUNT, l->interval);
    }
}
/* ---- reading files into the state ---- */

static int add_file(gd_lua *l, const char *path, const char *p, size_t n)
{
    char **f = realloc(l->files, (l->nfiles + 2) * sizeof(*f));
    if (!f)
        return -ENOMEM;
    l->files = f;
    if (!(f[l->nfiles] = strdup(path)))
        return -ENOMEM;
    f[++l->nfiles] = NULL;
    EVP_DigestUpdate(l->md, path, strlen(path) + 1);
    EVP_DigestUpdate(l->md, p, n);
    EVP_DigestUpdate(l->md, "", 1);
    return 0;
}

/* Pushes the compiled chunk of file path (named chunkname), text only. Raises on error.
 * The file's bytes live in a userdata while compiling, so nothing leaks if we raise. */
void gd__lua_load_file(lua_State *L, gd_lua *l, const char *path, const char *chunkname, int record)
{
    FILE *fp = fopen(path, "re");
    if (!fp)
        luaL_error(L, "cannot open %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(fp), &st) || !S_ISREG(st.st_mode) || st.st_size > (off_t)MAX_SOURCE) {
        fclose(fp);
        luaL_error(L, "%s: not a regular file of at most %u bytes", path, MAX_SOURCE);
    }
    size_t n = (size_t)st.st_size;
    char *buf = lua_newuserdata(L, n + 1); /* raises only before fp matters: close first */
    size_t got = fread(buf, 1, n, fp);
    fclose(fp);
    if (got != n)
        luaL_error(L, "%s: short read", path);
    buf[n] = 0;
    if (n && buf[0] == LUA_SIGNATURE[0])
        luaL_error(L, "%s: precompiled bytecode is not accepted", path);
    if (record) {
        if (add_file(l, path, buf, n))
            luaL_error(L, "out of memory");
        if (!l->src) {
            l->src = strdup(buf);
            if (!l->src)
                luaL_error(L, "out of memory");
        }
    }
    int rc = luaL_loadbufferx(L, buf, n, chunkname, "t");
    if (rc)
        lua_error(L);
    lua_remove(L, -2); /* the buffer */
}

/* ---- the sandbox's replacements for base functions ---- */

static char key_loaded;

static int valid_module(const char *m)
{
    if (!*m || strlen(m) > 128 || m[0] == '.')
        return 0;
    for (const char *c = m; *c; c++) {
        if (!isalnum((unsigned char)*c) && *c != '_' && *c != '.' && *c != '-')
            return 0;
        if (c[0] == '.' && c[1] == '.')
            return 0;
    }
    return m[strlen(m) - 1] != '.';
}

/* require: the policy's own directory, then the trusted lua/ directory; nothing else.
 * New modules load only while the policy itself loads, so a hook never touches the
 * file system and the revision hash covers every line that can run. */
static int l_require(lua_State *L)
{
    gd_lua *l = gd__lua_self(L);
    const char *m = luaL_checkstring(L, 1);
    lua_pushlightuserdata(L, &key_loaded);
    lua_rawget(L, LUA_REGISTRYINDEX);
    int loaded = lua_gettop(L);
    lua_getfield(L, loaded, m);
    if (!lua_isnil(L, -1))
        return 1;
    lua_pop(L, 1);
    if (!valid_module(m))
        return luaL_error(L, "require('%s'): not a module name", m);
    if (!l->loading)
        return luaL_error(L, "require('%s'): modules load only while the policy loads", m);
    char rel[300], path[PATH_MAX];
    snprintf(rel, sizeof(rel), "%s.lua", m);
    for (char *c = rel; c < rel + strlen(rel) - 4; c++)
        if (*c == '.')
            *c = '/';
    const char *dirs[2] = {l->dir, l->o.lua_dir};
    int found = 0;
    for (int i = 0; i < 2 && !found; i++) {
        if (!dirs[i])
            continue;
        snprintf(path, sizeof(path), "%s/%s", dirs[i], rel);
        found = access(path, R_OK) == 0;
    }
    if (!found)
        return luaL_error(L, "require('%s'): no %s in the policy's directory or lua/", m, rel);
    char chunk[320];
    snprintf(chunk, sizeof(chunk), "@%s", rel);
    gd__lua_load_file(L, l, path, chunk, 1);
    lua_pushstring(L, m);
    lua_call(L, 1, 1);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        lua_pushboolean(L, 1);
    }
    lua_pushvalue(L, -1);
    lua_setfield(L, loaded, m);
    return 1;
}

/* load / loadstring: text only (a string, never a reader function or bytecode). */
static int l_load(lua_State *L)
{
    if (lua_type(L, 1) != LUA_TSTRING)
        return luaL_error(L, "load: only source text is accepted");
    size_t n;
    const char *s = lua_tolstring(L, 1, &n);
    const char *name = luaL_optstring(L, 2, "=(load)");
    gd__lua_charge(L, gd__lua_self(L), 16 * n); /* compiling is not counted otherwise */
    if (n && s[0] == LUA_SIGNATURE[0]) {
        lua_pushnil(L);
        lua_pushstring(L, "load: precompiled bytecode is not accepted");
        return 2;
    }
    if (luaL_loadbufferx(L, s, n, name, "t")) {
        lua_pushnil(L);
        lua_insert(L, -2);
        return 2;
    }
    int envi = lua_gettop(L) >= 5 ? 4 : 3;
    if (lua_istable(L, envi)) {
        lua_pushvalue(L, envi);
        lua_setfenv(L, -2);
    }
    return 1;
}

static int l_rawset(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_pushvalue(L, LUA_GLOBALSINDEX);
    if (lua_rawequal(L, 1, -1))
        return luaL_error(L, "rawset on the globals table is not allowed");
    lua_pop(L, 1);
    if (lua_getmetatable(L, 1)) {
        lua_getfield(L, -1, "__metatable");
        if (lua_isstring(L, -1) && !strcmp(lua_tostring(L, -1), "locked"))
            return luaL_error(L, "rawset on a read-only table is not allowed");
        lua_pop(L, 2);
    }
    luaL_checkany(L, 2);
    luaL_checkany(L, 3);
    lua_settop(L, 3);
    lua_rawset(L, 1);
    return 1;
}

static int l_locked_newindex(lua_State *L)
{
    const char *k = lua_tostring(L, 2);
    return luaL_error(L,
                      "assignment to global '%s': globals are locked once the policy has "
                      "loaded (use local variables or ctx)",
                      k ? k : "?");
}

int gd__lua_readonly(lua_State *L)
{
    return luaL_error(L, "this table is read-only");
}

/* Wraps the table at the top into a read-only proxy (for our own modules). */
void gd__lua_make_readonly(lua_State *L)
{
    lua_newtable(L); /* proxy */
    lua_newtable(L); /* mt */
    lua_pushvalue(L, -3);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, gd__lua_readonly);
    lua_setfield(L, -2, "__newindex");
    lua_pushliteral(L, "locked");
    lua_setfield(L, -2, "__metatable");
    lua_setmetatable(L, -2);
    lua_remove(L, -2);
}

/* The library tables become read-only proxies. Strings keep indexing the real string
 * table through their metatable, which stays out of reach: getmetatable("") returns a
 * read-only view of it instead (its __index the read-only string table). */
static void lock_libs(lua_State *L)
{
    static const char *const libs[] = {"string", "table", "math", "bit", "coroutine"};
    for (size_t i = 0; i < sizeof(libs) / sizeof(libs[0]); i++) {
        lua_getglobal(L, libs[i]);
        gd__lua_make_readonly(L);
        lua_setglobal(L, libs[i]);
    }
    lua_pushliteral(L, "");
    if (!lua_getmetatable(L, -1))
        luaL_error(L, "strings have no metatable");
    lua_newtable(L);
    lua_getglobal(L, "string");
    lua_setfield(L, -2, "__index");
    gd__lua_make_readonly(L);
    lua_setfield(L, -2, "__metatable");
    lua_pop(L, 2);
}

/* ---- state setup ---- */

void gd__lua_reg(lua_State *L, gd_lua *l, int tbl, const char *name, lua_CFunction f)
{
    lua_pushlightuserdata(L, l);
    lua_pushcclosure(L, f, 1);
    lua_setfield(L, tbl, name);
}

int gd__lua_open_sandbox(lua_State *L)
{
    gd_lua *l = lua_touserdata(L, 1);
    static const struct {
        const char *name;
        lua_CFunction f;
    } libs[] = {{"", luaopen_base},
                {LUA_TABLIBNAME, luaopen_table},
                {LUA_STRLIBNAME, luaopen_string},
                {LUA_MATHLIBNAME, luaopen_math},
                {LUA_BITLIBNAME, luaopen_bit}};
    for (size_t i = 0; i < sizeof(libs) / sizeof(libs[0]); i++) {
        lua_pushcfunction(L, libs[i].f);
        lua_pushstring(L, libs[i].name);
        lua_call(L, 1, 0);
    }

    static const char *const drop[] = {
        "dofile", "loadfile", "getfenv",  "setfenv", "collectgarbage",
        "gcinfo", "module",   "newproxy", "print",   "jit",
        "ffi",    "io",       "os",       "debug",   "package",
        NULL};
    for (const char *const *d = drop; *d; d++) {
        lua_pushnil(L);
        lua_setglobal(L, *d);
    }
    lua_getglobal(L, "string");
    lua_pushnil(L);
    lua_setfield(L, -2, "dump");
    lua_pop(L, 1);
    gd__lua_open_stdlib(L, l);
    lock_libs(L);
    int g = LUA_GLOBALSINDEX;
    gd__lua_reg(L, l, g, "require", l_require);
    gd__lua_reg(L, l, g, "load", l_load);
    gd__lua_reg(L, l, g, "loadstring", l_load);
    gd__lua_reg(L, l, g, "rawset", l_rawset);
    gd__lua_reg(L, l, g, "print", gd__lua_log);

    /* the core module: global `gondolin` and require "gondolin" */
    gd__lua_open_lib(L, l);
    lua_pushvalue(L, -1);
    lua_setglobal(L, "gondolin");
    lua_pushlightuserdata(L, &key_loaded);
    lua_newtable(L);
    lua_pushvalue(L, -3);
    lua_setfield(L, -2, "gondolin");
    lua_rawset(L, LUA_REGISTRYINDEX);
    lua_pop(L, 1);

    gd__lua_open_txn(L, l);
    gd__lua_open_fs(L, l);
    gd__lua_open_ssh(L, l);
    return 0;
}

/* After loading: globals move into a backing table read through a locked proxy. */
int gd__lua_lock_globals(lua_State *L)
{
    gd_lua *l = lua_touserdata(L, 1);
    lua_newtable(L); /* backing */
    int back = lua_gettop(L);
    lua_pushnil(L);
    while (lua_next(L, LUA_GLOBALSINDEX)) {
        lua_pushvalue(L, -2);
        lua_insert(L, -2);
        lua_rawset(L, back);
    }
    /* clear the real globals table (collect keys first: no writes during next) */
    lua_newtable(L);
    int keys = lua_gettop(L), nk = 0;
    lua_pushnil(L);
    while (lua_next(L, LUA_GLOBALSINDEX)) {
        lua_pop(L, 1);
        lua_pushvalue(L, -1);
        lua_rawseti(L, keys, ++nk);
    }
    for (int i = 1; i <= nk; i++) {
        lua_rawgeti(L, keys, i);
        lua_pushnil(L);
        lua_rawset(L, LUA_GLOBALSINDEX);
    }
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushvalue(L, back);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, l_locked_newindex);
    lua_setfield(L, -2, "__newindex");
    lua_pushliteral(L, "locked");
    lua_setfield(L, -2, "__metatable");
    lua_setmetatable(L, LUA_GLOBALSINDEX);
    (void)l;
    return 0;
}
