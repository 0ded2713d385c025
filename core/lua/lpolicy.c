/*
 * lpolicy.c - the Lua policy state: sandbox, limits, loading and validation, and the
 * request/response objects hooks see (see lpolicy.h and docs/lua-api.md).
 *
 * Every entry from C into Lua goes through lua_cpcall, so an error anywhere (including
 * out of memory while we push our own values) unwinds to us and never reaches the
 * panic handler. C functions called from Lua hold no malloc'd memory across calls that
 * may raise: temporaries live in Lua userdata or on the C stack.
 */
#define _GNU_SOURCE
#include "lua/lpolicy.h"

#include "base/fs.h"
#include "base/pattern.h"
#include "base/text.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <errno.h>
#include <lauxlib.h>
#include <lua.h>
#include <luajit.h>
#include <lualib.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define NPHASE 5
#define MAX_SOURCE (4u << 20) /* one policy or module file */

struct gd_lua {
    lua_State *L;
    size_t used, limit;
    uint64_t deadline; /* ns; 0 = no call running */
    unsigned budget_ms;
    int killed;
    int loading;
    struct gd_lua_opts o;
    char *dir;     /* the policy's directory */
    char *display; /* the policy's name in messages */
    char *src;     /* the policy's text (key -> line lookups) */
    char **files;
    size_t nfiles;
    EVP_MD_CTX *md;
    char hash[65];
    struct gd_lua_conf conf;
    int fn[NPHASE]; /* registry refs, LUA_NOREF when absent */
    char *site[NPHASE];
    char **warn;
    size_t nwarn;
    /* the running hook call */
    gd_txn *cur;
    unsigned cur_phase;
};

static const char *const phase_fn[NPHASE] = {"on_connect", "on_request", "on_request_body",
                                             "on_response", "on_response_body"};

static int phase_index(enum gd_phase ph)
{
    switch (ph) {
    case GD_PHASE_CONNECT:
        return 0;
    case GD_PHASE_REQUEST_HEAD:
        return 1;
    case GD_PHASE_REQUEST_BODY:
        return 2;
    case GD_PHASE_RESPONSE_HEAD:
        return 3;
    case GD_PHASE_RESPONSE_BODY:
        return 4;
    }
    return 0;
}

static const char *phase_name(unsigned ph)
{
    switch (ph) {
    case GD_PHASE_CONNECT:
        return "connect";
    case GD_PHASE_REQUEST_HEAD:
        return "request";
    case GD_PHASE_REQUEST_BODY:
        return "request_body";
    case GD_PHASE_RESPONSE_HEAD:
        return "response";
    case GD_PHASE_RESPONSE_BODY:
        return "response_body";
    }
    return "load";
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---- limits ---- */

static void *l_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    gd_lua *l = ud;
    size_t old = ptr ? osize : 0;
    if (nsize == 0) {
        l->used -= old;
        free(ptr);
        return NULL;
    }
    if (nsize > old && l->used - old + nsize > l->limit)
        return NULL;
    void *p = realloc(ptr, nsize);
    if (!p)
        return NULL;
    l->used = l->used - old + nsize;
    return p;
}

static gd_lua *self(lua_State *L)
{
    return lua_touserdata(L, lua_upvalueindex(1));
}

static char key_self;

static gd_lua *self_reg(lua_State *L)
{
    lua_pushlightuserdata(L, &key_self);
    lua_rawget(L, LUA_REGISTRYINDEX);
    gd_lua *l = lua_touserdata(L, -1);
    lua_pop(L, 1);
    return l;
}

/* The CPU budget. JIT compilation is off for the whole state (luaJIT_setmode), so the
 * count hook runs in every loop, including ones LuaJIT would otherwise trace. Once the
 * budget is gone the hook fires on every instruction, so a pcall in the script cannot
 * swallow the error and carry on. */
static void count_hook(lua_State *L, lua_Debug *ar)
{
    (void)ar;
    gd_lua *l = self_reg(L);
    if (!l || !l->deadline)
        return;
    if (!l->killed && now_ns() < l->deadline)
        return;
    if (!l->killed) {
        l->killed = 1;
        lua_sethook(L, count_hook, LUA_MASKCOUNT, 1);
    }
    luaL_error(L, "CPU budget of %u ms exceeded", l->budget_ms);
}

static void budget_start(gd_lua *l, unsigned ms)
{
    l->budget_ms = ms;
    l->killed = 0;
    l->deadline = now_ns() + (uint64_t)ms * 1000000u;
}

static void budget_stop(gd_lua *l)
{
    l->deadline = 0;
    if (l->killed) {
        l->killed = 0;
        lua_sethook(l->L, count_hook, LUA_MASKCOUNT, 1000);
    }
}

/* ---- small helpers ---- */

static int push_warn(gd_lua *l, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int push_warn(gd_lua *l, const char *fmt, ...)
{
    char **w = realloc(l->warn, (l->nwarn + 2) * sizeof(*w));
    if (!w)
        return -ENOMEM;
    l->warn = w;
    va_list ap;
    va_start(ap, fmt);
    if (vasprintf(&w[l->nwarn], fmt, ap) < 0)
        w[l->nwarn] = NULL;
    va_end(ap);
    if (w[l->nwarn])
        l->nwarn++;
    w[l->nwarn] = NULL;
    return 0;
}

/* The line where key is first written as a table key in the policy source. */
static int key_line(const gd_lua *l, const char *key)
{
    size_t kl = strlen(key);
    int line = 1;
    for (const char *p = l->src; p && *p; p++) {
        if (*p == '\n') {
            line++;
            continue;
        }
        if (strncmp(p, key, kl) != 0 ||
            (p > l->src && (isalnum((unsigned char)p[-1]) || p[-1] == '_')))
            continue;
        const char *q = p + kl;
        if (*q == '"' || *q == '\'')
            q++;
        if (*q == ']')
            q++;
        while (*q == ' ' || *q == '\t')
            q++;
        if (*q == '=' && q[1] != '=')
            return line;
    }
    return 0;
}

static const char *lwhere(gd_lua *l, const char *key, char *buf, size_t cap)
{
    int ln = key_line(l, key);
    if (ln)
        snprintf(buf, cap, "%s:%d", l->display, ln);
    else
        snprintf(buf, cap, "%s", l->display);
    return buf;
}

/* Raises "unknown key" with a did-you-mean, for every key of the table at idx not in
 * known. */
static void check_keys(lua_State *L, gd_lua *l, int idx, const char *const *known, const char *what)
{
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        if (lua_type(L, -1) != LUA_TSTRING) {
            char w[300];
            luaL_error(L, "%s: %s: keys must be names", lwhere(l, what, w, sizeof(w)), what);
        }
        const char *k = lua_tostring(L, -1);
        int ok = 0;
        for (const char *const *n = known; *n && !ok; n++)
            ok = !strcmp(*n, k);
        if (!ok) {
            const char *best = gd_closest(k, known, 3);
            char w[300];
            lwhere(l, k, w, sizeof(w));
            if (best)
                luaL_error(L, "%s: %s: unknown key '%s' (did you mean '%s'?)", w, what, k, best);
            luaL_error(L, "%s: %s: unknown key '%s'", w, what, k);
        }
    }
}

/* Owned copy of a string, or a Lua error (raised with nothing malloc'd pending). */
static char *xstrdup(lua_State *L, const char *s)
{
    char *d = strdup(s);
    if (!d)
        luaL_error(L, "out of memory");
    return d;
}

static void add_flag(lua_State *L, gd_lua *l, const char *flag, const char *value, const char *key,
                     const char *fmt, ...) __attribute__((format(printf, 6, 7)));
static void add_flag(lua_State *L, gd_lua *l, const char *flag, const char *value, const char *key,
                     const char *fmt, ...)
{
    struct gd_lua_conf *c = &l->conf;
    struct gd_lua_flag *q = realloc(c->flags, (c->nflags + 1) * sizeof(*q));
    if (!q)
        luaL_error(L, "out of memory");
    c->flags = q;
    char w[300], what[200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    lwhere(l, key, w, sizeof(w));
    struct gd_lua_flag f = {.flag = flag};
    char *v = strdup(value), *where = NULL;
    if (asprintf(&where, "%s: %s", w, what) < 0)
        where = NULL;
    if (!v || !where) {
        free(v);
        free(where);
        luaL_error(L, "out of memory");
    }
    f.value = v;
    f.where = where;
    q[c->nflags++] = f;
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
static void load_file(lua_State *L, gd_lua *l, const char *path, const char *chunkname, int record)
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
    gd_lua *l = self(L);
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
    load_file(L, l, path, chunk, 1);
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

static int l_log(lua_State *L)
{
    gd_lua *l = self(L);
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
    gd_sanitize(msg, sizeof(msg), s, ml);
    if (l->o.log)
        l->o.log(l->o.log_ud, msg);
    else
        fprintf(stderr, "gondolin: policy %s: %s\n", l->display, msg);
    return 0;
}

/* rawset is kept for tables, refused on the (locked) globals table. */
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

static int l_readonly(lua_State *L)
{
    return luaL_error(L, "this table is read-only");
}

/* Wraps the table at the top into a read-only proxy (for our own modules). */
static void make_readonly(lua_State *L)
{
    lua_newtable(L); /* proxy */
    lua_newtable(L); /* mt */
    lua_pushvalue(L, -3);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, l_readonly);
    lua_setfield(L, -2, "__newindex");
    lua_pushliteral(L, "locked");
    lua_setfield(L, -2, "__metatable");
    lua_setmetatable(L, -2);
    lua_remove(L, -2);
}

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
    unsigned char *out = lua_newuserdata(L, 4 * ((n + 2) / 3) + 1);
    int ol = EVP_EncodeBlock(out, (const unsigned char *)s, (int)n);
    lua_pushlstring(L, (const char *)out, (size_t)ol);
    return 1;
}

static int l_b64_decode(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
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

static cJSON *to_json(lua_State *L, int idx, int depth, const char **why)
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
                cJSON *v = to_json(L, -1, depth + 1, why);
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
            cJSON *v = to_json(L, -1, depth + 1, why);
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
    cJSON *j = to_json(L, 1, 0, &why);
    if (!j)
        return luaL_error(L, "json.encode: %s", why);
    char *s = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    if (!s)
        return luaL_error(L, "json.encode: out of memory");
    a->p = s;
    a->free = free;
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

/* ---- request / response objects ---- */

/* A handle lives for one hook call: gd_lua_hook clears t when the call returns, so a
 * script that keeps req in an upvalue gets "request already finished". */
struct lreq {
    gd_txn *t;
    int resp;
};

static const char MT_REQ[] = "gondolin.request", MT_RES[] = "gondolin.response";

#define P_REQ (GD_PHASE_REQUEST_HEAD | GD_PHASE_REQUEST_BODY)
#define P_RES (GD_PHASE_RESPONSE_HEAD | GD_PHASE_RESPONSE_BODY)
#define P_ALL (GD_PHASE_CONNECT | P_REQ | P_RES)

static struct lreq *check_obj(lua_State *L, unsigned phases, const char *fn)
{
    gd_lua *l = self(L);
    struct lreq *r = lua_touserdata(L, 1);
    if (!r || !lua_getmetatable(L, 1))
        luaL_error(L, "%s: call it as a method (obj:%s(...))", fn, fn);
    luaL_getmetatable(L, MT_REQ);
    luaL_getmetatable(L, MT_RES);
    int ok = lua_rawequal(L, -3, -2) || lua_rawequal(L, -3, -1);
    lua_pop(L, 3);
    if (!ok)
        luaL_error(L, "%s: call it as a method (obj:%s(...))", fn, fn);
    if (!r->t || r->t != l->cur)
        luaL_error(L, "%s: request already finished", fn);
    if (!(l->cur_phase & phases))
        luaL_error(L, "%s: API disabled in phase %s", fn, phase_name(l->cur_phase));
    return r;
}

static int o_method(lua_State *L)
{
    lua_pushstring(L, gd_txn_method(check_obj(L, P_ALL, "method")->t));
    return 1;
}
static int o_scheme(lua_State *L)
{
    lua_pushstring(L, gd_txn_scheme(check_obj(L, P_ALL, "scheme")->t));
    return 1;
}
static int o_host(lua_State *L)
{
    lua_pushstring(L, gd_txn_host(check_obj(L, P_ALL, "host")->t));
    return 1;
}
static int o_port(lua_State *L)
{
    lua_pushinteger(L, gd_txn_port(check_obj(L, P_ALL, "port")->t));
    return 1;
}
static int o_target(lua_State *L)
{
    lua_pushstring(L, gd_txn_target(check_obj(L, P_ALL, "target")->t));
    return 1;
}
static int o_path(lua_State *L)
{
    const char *tg = gd_txn_target(check_obj(L, P_ALL, "path")->t);
    const char *q = strchr(tg, '?');
    lua_pushlstring(L, tg, q ? (size_t)(q - tg) : strlen(tg));
    return 1;
}
static int o_query(lua_State *L)
{
    const char *q = strchr(gd_txn_target(check_obj(L, P_ALL, "query")->t), '?');
    if (q)
        lua_pushstring(L, q + 1);
    else
        lua_pushnil(L);
    return 1;
}
static int o_url(lua_State *L)
{
    gd_txn *t = check_obj(L, P_ALL, "url")->t;
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
    lua_pushboolean(L, gd_txn_is_websocket(check_obj(L, P_ALL, "is_websocket")->t));
    return 1;
}
static int o_status(lua_State *L)
{
    lua_pushinteger(L, gd_txn_status(check_obj(L, P_RES, "status")->t));
    return 1;
}

static int o_header(lua_State *L)
{
    struct lreq *r = check_obj(L, P_ALL, "header");
    const char *v = gd_txn_header(r->t, r->resp, luaL_checkstring(L, 2));
    if (v)
        lua_pushstring(L, v);
    else
        lua_pushnil(L);
    return 1;
}

static int o_headers(lua_State *L)
{
    struct lreq *r = check_obj(L, P_ALL, "headers");
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
    gd_lua *l = self(L);
    struct lreq *r = lua_touserdata(L, 1);
    unsigned ph = r && r->resp ? P_RES : P_REQ;
    r = check_obj(L, ph, fn);
    if (r->resp && l->cur_phase & P_REQ)
        return luaL_error(L, "%s: API disabled in phase %s", fn, phase_name(l->cur_phase));
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
    struct lreq *r = check_obj(L, P_REQ, "set_target");
    if (r->resp)
        return luaL_error(L, "set_target: a request method");
    if (gd_txn_set_target(r->t, luaL_checkstring(L, 2)))
        return luaL_error(L, "set_target: wants an origin-form target (\"/path?query\")");
    return 0;
}

static int o_want_body(lua_State *L)
{
    gd_lua *l = self(L);
    struct lreq *r = lua_touserdata(L, 1);
    unsigned ph = r && r->resp ? GD_PHASE_RESPONSE_HEAD : GD_PHASE_REQUEST_HEAD;
    r = check_obj(L, ph, "want_body");
    int body_fn = l->fn[phase_index(r->resp ? GD_PHASE_RESPONSE_BODY : GD_PHASE_REQUEST_BODY)];
    if (body_fn == LUA_NOREF)
        return luaL_error(L, "want_body: the policy defines no %s",
                          r->resp ? "on_response_body" : "on_request_body");
    gd_txn_want_body(r->t);
    return 0;
}

static int o_body(lua_State *L)
{
    struct lreq *r = lua_touserdata(L, 1);
    unsigned ph = r && r->resp ? GD_PHASE_RESPONSE_BODY : GD_PHASE_REQUEST_BODY;
    r = check_obj(L, ph, "body");
    size_t n;
    const uint8_t *b = gd_txn_body(r->t, &n);
    lua_pushlstring(L, (const char *)b, n);
    return 1;
}

static int o_set_body(lua_State *L)
{
    struct lreq *r = lua_touserdata(L, 1);
    unsigned ph = r && r->resp ? GD_PHASE_RESPONSE_BODY : GD_PHASE_REQUEST_BODY;
    r = check_obj(L, ph, "set_body");
    size_t n;
    const char *s = luaL_checklstring(L, 2, &n);
    if (gd_txn_set_body(r->t, s, n))
        return luaL_error(L, "set_body: out of memory");
    return 0;
}

/* The caller's position, for the rule name of a decision ("agent.lua:12"); after a
 * tail call (return req:deny(...)) the caller's frame is gone: the hook's own line. */
static void caller_site(lua_State *L, char *buf, size_t cap)
{
    gd_lua *l = self(L);
    lua_Debug ar;
    if (lua_getstack(L, 1, &ar) && lua_getinfo(L, "Sl", &ar) && ar.currentline > 0)
        snprintf(buf, cap, "%s:%d", ar.short_src, ar.currentline);
    else
        snprintf(buf, cap, "%s", l->site[phase_index(l->cur_phase)]);
}

static int o_deny(lua_State *L)
{
    gd_lua *l = self(L);
    struct lreq *r = lua_touserdata(L, 1);
    r = check_obj(L, r && r->resp ? P_RES : P_REQ, "deny");
    if (r->resp && l->cur_phase & P_REQ)
        return luaL_error(L, "deny: API disabled in phase %s", phase_name(l->cur_phase));
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
    gd_lua *l = self(L);
    struct lreq *r = lua_touserdata(L, 1);
    r = check_obj(L, r && r->resp ? P_RES : P_REQ, "respond");
    if (r->resp && l->cur_phase & P_REQ)
        return luaL_error(L, "respond: API disabled in phase %s", phase_name(l->cur_phase));
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
    gd_txn *t = check_obj(L, P_ALL, "decided")->t;
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
    lua_pushcfunction(L, l_readonly);
    lua_setfield(L, -2, "__newindex");
    lua_pushcfunction(L, o_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pushliteral(L, "locked");
    lua_setfield(L, -2, "__metatable");
    lua_pop(L, 1);
}

/* ---- state setup ---- */

static void reg(lua_State *L, gd_lua *l, int tbl, const char *name, lua_CFunction f)
{
    lua_pushlightuserdata(L, l);
    lua_pushcclosure(L, f, 1);
    lua_setfield(L, tbl, name);
}

static int open_sandbox(lua_State *L)
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
    lua_pushlightuserdata(L, &key_self);
    lua_pushlightuserdata(L, l);
    lua_rawset(L, LUA_REGISTRYINDEX);

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
    int g = LUA_GLOBALSINDEX;
    reg(L, l, g, "require", l_require);
    reg(L, l, g, "load", l_load);
    reg(L, l, g, "loadstring", l_load);
    reg(L, l, g, "rawset", l_rawset);
    reg(L, l, g, "print", l_log);

    /* the core module: global `gondolin` and require "gondolin" */
    lua_newtable(L);
    int t = lua_gettop(L);
    reg(L, l, t, "log", l_log);
    reg(L, l, t, "host_match", l_host_match);
    reg(L, l, t, "b64_encode", l_b64_encode);
    reg(L, l, t, "b64_decode", l_b64_decode);
    reg(L, l, t, "sha256", l_sha256);
    reg(L, l, t, "json_encode", l_json_encode);
    reg(L, l, t, "json_decode", l_json_decode);
    lua_pushlightuserdata(L, &key_null);
    lua_setfield(L, t, "null");
    lua_pushliteral(L, "1");
    lua_setfield(L, t, "api_version");
    make_readonly(L);
    lua_pushvalue(L, -1);
    lua_setglobal(L, "gondolin");
    lua_pushlightuserdata(L, &key_loaded);
    lua_newtable(L);
    lua_pushvalue(L, -3);
    lua_setfield(L, -2, "gondolin");
    lua_rawset(L, LUA_REGISTRYINDEX);
    lua_pop(L, 1);

    make_class(L, l, MT_REQ);
    make_class(L, l, MT_RES);
    return 0;
}

/* After loading: globals move into a backing table read through a locked proxy. */
static int lock_globals(lua_State *L)
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

/* ---- reading the policy table ---- */

static const char *want_string(lua_State *L, gd_lua *l, int idx, const char *key, const char *what)
{
    if (lua_type(L, idx) != LUA_TSTRING) {
        char w[300];
        luaL_error(L, "%s: %s must be a string, not %s", lwhere(l, key, w, sizeof(w)), what,
                   luaL_typename(L, idx));
    }
    return lua_tostring(L, idx);
}

static void want_table(lua_State *L, gd_lua *l, int idx, const char *key, const char *what)
{
    if (!lua_istable(L, idx)) {
        char w[300];
        luaL_error(L, "%s: %s must be a table, not %s", lwhere(l, key, w, sizeof(w)), what,
                   luaL_typename(L, idx));
    }
}

/* Calls fn for each string of a string-or-list value at idx. */
static void each_string(lua_State *L, gd_lua *l, int idx, const char *key, const char *what,
                        void (*fn)(lua_State *, gd_lua *, const char *, const char *, int),
                        const char *flag)
{
    if (lua_type(L, idx) == LUA_TSTRING) {
        fn(L, l, flag, lua_tostring(L, idx), 1);
        return;
    }
    want_table(L, l, idx, key, what);
    size_t n = lua_objlen(L, idx);
    for (size_t i = 1; i <= n; i++) {
        lua_rawgeti(L, idx, (int)i);
        char w[120];
        snprintf(w, sizeof(w), "%s[%zu]", what, i);
        fn(L, l, flag, want_string(L, l, -1, key, w), (int)i);
        lua_pop(L, 1);
    }
}

static void flag_cb(lua_State *L, gd_lua *l, const char *flag, const char *v, int i)
{
    const char *key = !strcmp(flag, "--allow-internal") ? "allow_internal"
                      : !strcmp(flag, "--tcp-map")      ? "tcp_map"
                                                        : "allow";
    add_flag(L, l, flag, v, key, "%s[%d] '%s'", key, i, v);
}

static void read_allow_table(lua_State *L, gd_lua *l, int idx, int i)
{
    static const char *const keys[] = {"host", "port", "methods", "method", "path", NULL};
    char what[64];
    snprintf(what, sizeof(what), "allow[%d]", i);
    check_keys(L, l, idx, keys, what);
    lua_getfield(L, idx, "host");
    const char *host = want_string(L, l, -1, "host", "allow[].host");
    char port[16] = "";
    lua_getfield(L, idx, "port");
    if (!lua_isnil(L, -1)) {
        lua_Number p = lua_tonumber(L, -1);
        if (lua_type(L, -1) != LUA_TNUMBER || p < 1 || p > 65535 || p != (int)p)
            luaL_error(L, "%s: %s.port must be a port number", l->display, what);
        snprintf(port, sizeof(port), ":%d", (int)p);
    }
    lua_getfield(L, idx, "path");
    const char *path = lua_isnil(L, -1) ? "" : want_string(L, l, -1, "path", "allow[].path");
    if (*path && *path != '/')
        luaL_error(L, "%s: %s.path must start with '/'", l->display, what);
    int v6 = strchr(host, ':') != NULL;
    char hostport[400];
    snprintf(hostport, sizeof(hostport), "%s%s%s%s%s", v6 ? "[" : "", host, v6 ? "]" : "", port,
             path);
    lua_getfield(L, idx, "methods");
    lua_getfield(L, idx, "method");
    int m = lua_isnil(L, -2) ? lua_gettop(L) : lua_gettop(L) - 1;
    if (lua_isnil(L, m)) {
        add_flag(L, l, "--allow-host", hostport, "allow", "%s '%s'", what, hostport);
    } else {
        int single = lua_type(L, m) == LUA_TSTRING;
        if (!single)
            want_table(L, l, m, "methods", "allow[].methods");
        size_t n = single ? 1 : lua_objlen(L, m);
        for (size_t k = 1; k <= n; k++) {
            if (single)
                lua_pushvalue(L, m);
            else
                lua_rawgeti(L, m, (int)k);
            const char *meth = want_string(L, l, -1, "methods", "allow[].methods[]");
            char rule[450];
            snprintf(rule, sizeof(rule), "%s %s", meth, hostport);
            add_flag(L, l, "--allow-host", rule, "allow", "%s '%s'", what, rule);
            lua_pop(L, 1);
        }
    }
    lua_pop(L, 5);
}

static void read_allow(lua_State *L, gd_lua *l, int idx)
{
    if (lua_type(L, idx) == LUA_TSTRING) {
        add_flag(L, l, "--allow-host", lua_tostring(L, idx), "allow", "allow '%s'",
                 lua_tostring(L, idx));
        return;
    }
    want_table(L, l, idx, "allow", "allow");
    size_t n = lua_objlen(L, idx);
    for (size_t i = 1; i <= n; i++) {
        lua_rawgeti(L, idx, (int)i);
        if (lua_type(L, -1) == LUA_TSTRING)
            add_flag(L, l, "--allow-host", lua_tostring(L, -1), "allow", "allow[%zu] '%s'", i,
                     lua_tostring(L, -1));
        else if (lua_istable(L, -1))
            read_allow_table(L, l, lua_gettop(L), (int)i);
        else
            luaL_error(L, "%s: allow[%d] must be a rule string or a table", l->display, (int)i);
        lua_pop(L, 1);
    }
}

static int valid_env_name(const char *s)
{
    if (!*s || isdigit((unsigned char)*s))
        return 0;
    for (; *s; s++)
        if (!isalnum((unsigned char)*s) && *s != '_')
            return 0;
    return 1;
}

static void read_secrets(lua_State *L, gd_lua *l, int idx)
{
    want_table(L, l, idx, "secrets", "secrets");
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        int v = lua_gettop(L);
        if (lua_type(L, -2) != LUA_TSTRING || !valid_env_name(lua_tostring(L, -2)))
            luaL_error(L, "%s: secrets: keys must be environment variable names", l->display);
        const char *name = lua_tostring(L, -2);
        char what[200];
        snprintf(what, sizeof(what), "secrets.%s", name);
        want_table(L, l, v, name, what);
        int hostsidx = v;
        const char *from = NULL;
        char fromb[PATH_MAX + 16];
        if (lua_objlen(L, v) == 0) {
            static const char *const keys[] = {"hosts", "from", "value", NULL};
            check_keys(L, l, v, keys, what);
            lua_getfield(L, v, "hosts");
            hostsidx = lua_gettop(L);
            lua_getfield(L, v, "from");
            lua_getfield(L, v, "value");
            if (!lua_isnil(L, -1) && !lua_isnil(L, -2))
                luaL_error(L, "%s: %s: give from or value, not both", l->display, what);
            if (!lua_isnil(L, -1)) {
                snprintf(fromb, sizeof(fromb), "value:%s",
                         want_string(L, l, -1, name, "secrets.value"));
                from = fromb;
            } else if (!lua_isnil(L, -2)) {
                const char *f = want_string(L, l, -2, name, "secrets.from");
                if (!strcmp(f, "env"))
                    snprintf(fromb, sizeof(fromb), "env:%s", name);
                else if (!strncmp(f, "file:", 5) && f[5] != '/')
                    snprintf(fromb, sizeof(fromb), "file:%s/%s", l->dir, f + 5);
                else if (!strchr(f, ':'))
                    luaL_error(L,
                               "%s: %s.from must be \"env\", \"env:VAR\", \"file:PATH\" or "
                               "\"SOURCE:ARG\", not '%s'",
                               l->display, what, f);
                else
                    snprintf(fromb, sizeof(fromb), "%s", f);
                from = fromb;
            }
        }
        if (!from) {
            snprintf(fromb, sizeof(fromb), "env:%s", name);
            from = fromb;
        }
        if (lua_type(L, hostsidx) == LUA_TSTRING) {
            lua_pushvalue(L, hostsidx);
        } else {
            if (!lua_istable(L, hostsidx) || lua_objlen(L, hostsidx) == 0)
                luaL_error(L, "%s: %s needs hosts (a list of host patterns)", l->display, what);
            size_t n = lua_objlen(L, hostsidx);
            for (size_t i = 1; i <= n; i++) {
                lua_rawgeti(L, hostsidx, (int)i);
                want_string(L, l, -1, name, "secrets.hosts[]");
                if (i > 1) {
                    lua_pushliteral(L, ",");
                    lua_insert(L, -2);
                    lua_concat(L, 3);
                }
            }
        }
        struct gd_lua_conf *c = &l->conf;
        struct gd_lua_secret *q = realloc(c->secrets, (c->nsecrets + 1) * sizeof(*q));
        if (!q)
            luaL_error(L, "out of memory");
        c->secrets = q;
        char w[300];
        lwhere(l, name, w, sizeof(w));
        struct gd_lua_secret s = {strdup(name), strdup(lua_tostring(L, -1)), strdup(from), NULL};
        if (asprintf(&s.where, "%s: %s", w, what) < 0)
            s.where = NULL;
        if (!s.name || !s.hosts || !s.from || !s.where) {
            free(s.name);
            free(s.hosts);
            free(s.from);
            free(s.where);
            luaL_error(L, "out of memory");
        }
        q[c->nsecrets++] = s;
        lua_settop(L, v - 1);
    }
}

static void read_map(lua_State *L, gd_lua *l, int idx, const char *key, const char *flag, char sep)
{
    want_table(L, l, idx, key, key);
    size_t n = lua_objlen(L, idx);
    for (size_t i = 1; i <= n; i++) {
        lua_rawgeti(L, idx, (int)i);
        add_flag(L, l, flag, want_string(L, l, -1, key, key), key, "%s[%zu]", key, i);
        lua_pop(L, 1);
    }
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        if (lua_type(L, -2) == LUA_TSTRING) {
            char v[700];
            snprintf(v, sizeof(v), "%s%c%s", lua_tostring(L, -2), sep,
                     want_string(L, l, -1, key, key));
            add_flag(L, l, flag, v, key, "%s['%s']", key, lua_tostring(L, -2));
        } else if (lua_type(L, -2) != LUA_TNUMBER)
            luaL_error(L, "%s: %s: bad key", l->display, key);
        lua_pop(L, 1);
    }
}

static unsigned want_uint(lua_State *L, gd_lua *l, int idx, const char *key, unsigned lo,
                          unsigned hi)
{
    lua_Number v = lua_tonumber(L, idx);
    if (lua_type(L, idx) != LUA_TNUMBER || v < lo || v > hi || v != (unsigned)v) {
        char w[300];
        luaL_error(L, "%s: %s must be a whole number in %u-%u", lwhere(l, key, w, sizeof(w)), key,
                   lo, hi);
    }
    return (unsigned)v;
}

static void read_vm(lua_State *L, gd_lua *l, int idx)
{
    static const char *const keys[] = {"image", "memory", "cpus", "env", NULL};
    want_table(L, l, idx, "vm", "vm");
    check_keys(L, l, idx, keys, "vm");
    lua_getfield(L, idx, "image");
    if (!lua_isnil(L, -1))
        l->conf.image = xstrdup(L, want_string(L, l, -1, "image", "vm.image"));
    lua_getfield(L, idx, "memory");
    if (!lua_isnil(L, -1))
        l->conf.memory_mb = want_uint(L, l, -1, "memory", 64, 1u << 20);
    lua_getfield(L, idx, "cpus");
    if (!lua_isnil(L, -1))
        l->conf.cpus = want_uint(L, l, -1, "cpus", 1, 256);
    lua_getfield(L, idx, "env");
    if (!lua_isnil(L, -1)) {
        int e = lua_gettop(L);
        want_table(L, l, e, "env", "vm.env");
        size_t n = 0;
        lua_pushnil(L);
        while (lua_next(L, e)) {
            n++;
            lua_pop(L, 1);
        }
        l->conf.env = calloc(n + 1, sizeof(char *));
        if (!l->conf.env)
            luaL_error(L, "out of memory");
        size_t k = 0;
        lua_pushnil(L);
        while (lua_next(L, e)) {
            if (lua_type(L, -2) != LUA_TSTRING || !valid_env_name(lua_tostring(L, -2)))
                luaL_error(L, "%s: vm.env: keys must be variable names", l->display);
            const char *v = want_string(L, l, -1, "env", "vm.env value");
            if (asprintf(&l->conf.env[k], "%s=%s", lua_tostring(L, -2), v) < 0)
                luaL_error(L, "out of memory");
            k++;
            lua_pop(L, 1);
        }
    }
    lua_pop(L, 4);
}

static void read_plugins(lua_State *L, gd_lua *l, int idx)
{
    want_table(L, l, idx, "plugins", "plugins");
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        if (lua_type(L, -2) != LUA_TSTRING)
            luaL_error(L, "%s: plugins: keys are plugin names", l->display);
        const char *name = lua_tostring(L, -2);
        char *json;
        if (lua_type(L, -1) == LUA_TBOOLEAN && lua_toboolean(L, -1))
            json = strdup("{}");
        else if (lua_istable(L, -1)) {
            const char *why = "out of memory";
            cJSON *j = to_json(L, -1, 0, &why);
            if (!j)
                luaL_error(L, "%s: plugins.%s: %s", l->display, name, why);
            json = cJSON_PrintUnformatted(j);
            cJSON_Delete(j);
        } else {
            luaL_error(L, "%s: plugins.%s must be true or a config table", l->display, name);
            return;
        }
        struct gd_lua_conf *c = &l->conf;
        struct gd_lua_plugin_conf *q = realloc(c->plugins, (c->nplugins + 1) * sizeof(*q));
        char *nm = strdup(name);
        if (!q || !json || !nm) {
            free(json);
            free(nm);
            if (q)
                c->plugins = q;
            luaL_error(L, "out of memory");
        }
        c->plugins = q;
        q[c->nplugins].name = nm;
        q[c->nplugins].json = json;
        c->nplugins++;
        lua_pop(L, 1);
    }
}

static int read_policy(lua_State *L)
{
    gd_lua *l = lua_touserdata(L, 1);
    int p = 2;
    static const char *const keys[] = {"name",
                                       "description",
                                       "allow",
                                       "secrets",
                                       "secrets_in_query",
                                       "dns",
                                       "tcp_map",
                                       "allow_internal",
                                       "resolve",
                                       "upstream_ca",
                                       "vm",
                                       "plugins",
                                       "limits",
                                       "on_request",
                                       "on_response",
                                       "on_request_body",
                                       "on_response_body",
                                       "on_connect",
                                       NULL};
    check_keys(L, l, p, keys, "policy");

    lua_getfield(L, p, "name");
    if (!lua_isnil(L, -1))
        l->conf.name = xstrdup(L, want_string(L, l, -1, "name", "name"));
    lua_pop(L, 1);
    lua_getfield(L, p, "description");
    if (!lua_isnil(L, -1))
        want_string(L, l, -1, "description", "description");
    lua_pop(L, 1);
    lua_getfield(L, p, "allow");
    if (!lua_isnil(L, -1))
        read_allow(L, l, lua_gettop(L));
    lua_pop(L, 1);
    lua_getfield(L, p, "allow_internal");
    if (!lua_isnil(L, -1))
        each_string(L, l, lua_gettop(L), "allow_internal", "allow_internal", flag_cb,
                    "--allow-internal");
    lua_pop(L, 1);
    lua_getfield(L, p, "secrets");
    if (!lua_isnil(L, -1))
        read_secrets(L, l, lua_gettop(L));
    lua_pop(L, 1);
    lua_getfield(L, p, "secrets_in_query");
    if (lua_toboolean(L, -1))
        add_flag(L, l, "--secrets-in-query", "", "secrets_in_query", "secrets_in_query");
    lua_pop(L, 1);
    lua_getfield(L, p, "dns");
    if (!lua_isnil(L, -1))
        add_flag(L, l, "--dns", want_string(L, l, -1, "dns", "dns"), "dns", "dns");
    lua_pop(L, 1);
    lua_getfield(L, p, "tcp_map");
    if (!lua_isnil(L, -1))
        read_map(L, l, lua_gettop(L), "tcp_map", "--tcp-map", '=');
    lua_pop(L, 1);
    lua_getfield(L, p, "resolve");
    if (!lua_isnil(L, -1))
        read_map(L, l, lua_gettop(L), "resolve", "--resolve", ':');
    lua_pop(L, 1);
    lua_getfield(L, p, "upstream_ca");
    if (!lua_isnil(L, -1)) {
        const char *ca = want_string(L, l, -1, "upstream_ca", "upstream_ca");
        char path[PATH_MAX];
        snprintf(path, sizeof(path), "%s%s%s", *ca == '/' ? "" : l->dir, *ca == '/' ? "" : "/", ca);
        add_flag(L, l, "--upstream-ca", path, "upstream_ca", "upstream_ca");
    }
    lua_pop(L, 1);
    lua_getfield(L, p, "vm");
    if (!lua_isnil(L, -1))
        read_vm(L, l, lua_gettop(L));
    lua_pop(L, 1);
    lua_getfield(L, p, "plugins");
    if (!lua_isnil(L, -1))
        read_plugins(L, l, lua_gettop(L));
    lua_pop(L, 1);
    lua_getfield(L, p, "limits");
    if (!lua_isnil(L, -1)) {
        static const char *const lk[] = {"hook_ms", "memory_mb", NULL};
        int li = lua_gettop(L);
        want_table(L, l, li, "limits", "limits");
        check_keys(L, l, li, lk, "limits");
        lua_getfield(L, li, "hook_ms");
        if (!lua_isnil(L, -1))
            l->o.hook_ms = want_uint(L, l, -1, "hook_ms", 1, 10000);
        lua_getfield(L, li, "memory_mb");
        if (!lua_isnil(L, -1)) {
            size_t lim = (size_t)want_uint(L, l, -1, "memory_mb", 1, 4096) << 20;
            if (lim < l->used + (1u << 20))
                luaL_error(L, "%s: limits.memory_mb: the policy already uses %zu KiB", l->display,
                           l->used >> 10);
            l->limit = lim;
        }
        lua_pop(L, 2);
    }
    lua_pop(L, 1);
    for (int i = 0; i < NPHASE; i++) {
        lua_getfield(L, p, phase_fn[i]);
        if (lua_isnil(L, -1)) {
            lua_pop(L, 1);
            continue;
        }
        if (!lua_isfunction(L, -1)) {
            char w[300];
            luaL_error(L, "%s: %s must be a function", lwhere(l, phase_fn[i], w, sizeof(w)),
                       phase_fn[i]);
        }
        lua_Debug ar;
        lua_pushvalue(L, -1);
        lua_getinfo(L, ">S", &ar);
        char site[300];
        snprintf(site, sizeof(site), "%s:%d", ar.short_src, ar.linedefined);
        l->site[i] = xstrdup(L, site);
        l->fn[i] = luaL_ref(L, LUA_REGISTRYINDEX);
        l->conf.hook_phases |= 1u << i;
    }
    if ((l->fn[2] != LUA_NOREF) && l->fn[1] == LUA_NOREF)
        push_warn(l,
                  "%s: on_request_body never runs without an on_request that calls "
                  "req:want_body()",
                  l->display);
    if ((l->fn[4] != LUA_NOREF) && l->fn[3] == LUA_NOREF)
        push_warn(l,
                  "%s: on_response_body never runs without an on_response that calls "
                  "res:want_body()",
                  l->display);
    return 0;
}

/* Runs the chunk at 2 (arg 1 is l) and leaves the policy table in the registry. */
static int run_chunk(lua_State *L)
{
    gd_lua *l = lua_touserdata(L, 1);
    lua_pushcfunction(L, open_sandbox);
    lua_pushlightuserdata(L, l);
    lua_call(L, 1, 0);
    char chunk[PATH_MAX + 2];
    snprintf(chunk, sizeof(chunk), "@%s", l->display);
    load_file(L, l, lua_tostring(L, 2), chunk, 1);
    lua_call(L, 0, 1);
    if (!lua_istable(L, -1))
        return luaL_error(L, "%s: must return a policy table (return { allow = {...}, ... })",
                          l->display);
    lua_pushcfunction(L, read_policy);
    lua_pushlightuserdata(L, l);
    lua_pushvalue(L, -3);
    lua_call(L, 2, 0);
    return 0;
}

static void err_from_stack(gd_lua *l, struct gd_err *err, int rc)
{
    const char *m = lua_tostring(l->L, -1);
    if (rc == LUA_ERRMEM)
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
    const char *slash = strrchr(path, '/');
    l->dir = slash ? strndup(path, (size_t)(slash - path)) : strdup(".");
    l->display = strdup(slash ? slash + 1 : path);
    l->md = EVP_MD_CTX_new();
    if (!l->dir || !l->display || !l->md || !EVP_DigestInit_ex(l->md, EVP_sha256(), NULL)) {
        gd_lua_free(l);
        return gd_err_set(err, -ENOMEM, "out of memory");
    }
    if (!(l->L = lua_newstate(l_alloc, l))) {
        gd_lua_free(l);
        return gd_err_set(err, -ENOMEM, "cannot create a Lua state");
    }
    /* No JIT: the count hook must see every loop (see count_hook). */
    luaJIT_setmode(l->L, 0, LUAJIT_MODE_ENGINE | LUAJIT_MODE_OFF);
    lua_sethook(l->L, count_hook, LUA_MASKCOUNT, 1000);

    struct load_args a = {l, path};
    l->loading = 1;
    budget_start(l, l->o.load_ms);
    int rc = lua_cpcall(l->L, load_entry, &a);
    budget_stop(l);
    l->loading = 0;
    if (!rc)
        rc = lua_cpcall(l->L, lock_globals, l);
    if (rc) {
        err_from_stack(l, err, rc);
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
    if (l->L)
        lua_close(l->L);
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
    struct gd_lua_conf *c = &l->conf;
    free(c->name);
    for (size_t i = 0; i < c->nflags; i++) {
        free((char *)c->flags[i].value);
        free(c->flags[i].where);
    }
    free(c->flags);
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
    return l->site[phase_index(ph)];
}

/* ---- calling hooks ---- */

struct call_args {
    gd_lua *l;
    gd_txn *t;
    int idx;
    int *ctx_ref;
    struct lreq *objs[2];
};

static struct lreq *push_obj(lua_State *L, gd_txn *t, int resp)
{
    struct lreq *r = lua_newuserdata(L, sizeof(*r));
    r->t = t;
    r->resp = resp;
    luaL_getmetatable(L, resp ? MT_RES : MT_REQ);
    lua_setmetatable(L, -2);
    return r;
}

static int call_entry(lua_State *L)
{
    struct call_args *a = lua_touserdata(L, 1);
    lua_rawgeti(L, LUA_REGISTRYINDEX, a->l->fn[a->idx]);
    int nargs;
    if (a->idx >= 3) { /* on_response(res, req, ctx) */
        a->objs[1] = push_obj(L, a->t, 1);
        a->objs[0] = push_obj(L, a->t, 0);
        nargs = 3;
    } else {
        a->objs[0] = push_obj(L, a->t, 0);
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
    int idx = phase_index(ph);
    if (l->fn[idx] == LUA_NOREF)
        return GD_CONTINUE;
    struct call_args a = {l, t, idx, ctx_ref, {NULL, NULL}};
    l->cur = t;
    l->cur_phase = ph;
    budget_start(l, l->o.hook_ms);
    int rc = lua_cpcall(l->L, call_entry, &a);
    int killed = l->killed;
    budget_stop(l);
    l->cur = NULL;
    l->cur_phase = 0;
    for (int i = 0; i < 2; i++)
        if (a.objs[i])
            a.objs[i]->t = NULL;
    if (rc) {
        const char *m = lua_tostring(l->L, -1);
        char msg[600];
        gd_sanitize(msg, sizeof(msg), m ? m : "error object is not a string",
                    strlen(m ? m : "error object is not a string"));
        lua_pop(l->L, 1);
        const char *kind = rc == LUA_ERRMEM ? "out of memory"
                           : killed         ? "CPU budget exceeded"
                                            : "error";
        if (rc == LUA_ERRMEM)
            snprintf(msg, sizeof(msg), "%s: memory cap of %zu MiB reached", l->site[idx],
                     l->limit >> 20);
        lua_gc(l->L, LUA_GCCOLLECT, 0);
        return gd_txn_deny(t, 403, "lua-error", "%s in %s (%s): %s", kind, phase_fn[idx],
                           l->site[idx], msg);
    }
    int status;
    const char *rule, *reason;
    return gd_txn_decision(t, &status, &rule, &reason);
}

void gd_lua_txn_end(gd_lua *l, int ctx_ref)
{
    if (ctx_ref > 0)
        luaL_unref(l->L, LUA_REGISTRYINDEX, ctx_ref);
}
