/*
 * mounts.c - the policy's `mounts` key (guest paths -> hostfs, overlay, memory, a Lua
 * provider table or a plugin's provider). Every value is checked here, with file:line,
 * so a bad mount stops the policy from loading.
 */
#define _GNU_SOURCE
#include "lua/lua_int.h"

#include "base/text.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <errno.h>
#include <lauxlib.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define MAX_GUEST_PATH 1024
#define MAX_HIDE 64

/* A guest mount point: absolute, normalised (no empty, "." or ".." component, no
 * trailing '/'), not "/" itself, printable, and none of ',' ':' ' ' (they separate
 * fields of the CLI forms and of the guest's mount options). NULL or why not. */
static const char *bad_guest_path(const char *p)
{
    size_t n = strlen(p);
    if (p[0] != '/')
        return "must be an absolute path";
    if (n == 1)
        return "cannot be / itself";
    if (n > MAX_GUEST_PATH)
        return "is too long";
    if (p[n - 1] == '/')
        return "must not end in '/'";
    for (const char *c = p; *c; c++) {
        if ((unsigned char)*c < 0x21 || *c == 0x7f || *c == ',' || *c == ':')
            return "must not contain spaces, control characters, ',' or ':'";
        if (c[0] == '/' && c[1] == '/')
            return "must be normalised (no '//')";
        if (c[0] == '/' && c[1] == '.' && (c[2] == '/' || !c[2]))
            return "must be normalised (no '.' component)";
        if (c[0] == '/' && c[1] == '.' && c[2] == '.' && (c[3] == '/' || !c[3]))
            return "must not contain '..'";
    }
    return NULL;
}

/* "64M", "1G", "512K", "4096" or a number -> bytes; 0 when invalid. */
static uint64_t parse_size(lua_State *L, int idx)
{
    if (lua_type(L, idx) == LUA_TNUMBER) {
        lua_Number v = lua_tonumber(L, idx);
        return v >= 1 && v <= (lua_Number)(1ull << 50) && v == (uint64_t)v ? (uint64_t)v : 0;
    }
    if (lua_type(L, idx) != LUA_TSTRING)
        return 0;
    const char *s = lua_tostring(L, idx);
    if (!isdigit((unsigned char)*s))
        return 0;
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    unsigned shift = 0;
    switch (toupper((unsigned char)*end)) {
    case 'K':
        shift = 10;
        break;
    case 'M':
        shift = 20;
        break;
    case 'G':
        shift = 30;
        break;
    case 0:
        break;
    default:
        return 0;
    }
    if (*end && end[1] && !(toupper((unsigned char)end[1]) == 'B' && !end[2]) &&
        !(toupper((unsigned char)end[1]) == 'I' && toupper((unsigned char)end[2]) == 'B' &&
          !end[3]))
        return 0;
    if (v == 0 || v > (1ull << 50) >> shift)
        return 0;
    return (uint64_t)v << shift;
}

/* Raises "mounts['/x']: ..." with the mount's line. */
static void merr(lua_State *L, gd_lua *l, const char *guest, const char *fmt, ...)
    __attribute__((format(printf, 4, 5), noreturn));
static void merr(lua_State *L, gd_lua *l, const char *guest, const char *fmt, ...)
{
    char w[300], msg[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    luaL_error(L, "%s: mounts['%s']: %s", gd__lua_where(l, guest, w, sizeof(w)), guest, msg);
    abort(); /* not reached: luaL_error does not return */
}

static char *mdup(lua_State *L, const char *s)
{
    char *d = strdup(s);
    if (!d)
        luaL_error(L, "out of memory");
    return d;
}

/* A host directory relative to the policy's directory, canonical and existing. */
static char *host_dir(lua_State *L, gd_lua *l, const char *guest, const char *key, int idx)
{
    if (lua_type(L, idx) != LUA_TSTRING || !*lua_tostring(L, idx))
        merr(L, l, guest, "%s must be a directory path (relative to the policy), not %s", key,
             luaL_typename(L, idx));
    const char *d = lua_tostring(L, idx);
    char joined[PATH_MAX], real[PATH_MAX];
    if (snprintf(joined, sizeof(joined), "%s%s%s", *d == '/' ? "" : l->dir, *d == '/' ? "" : "/",
                 d) >= (int)sizeof(joined))
        merr(L, l, guest, "%s: path too long", key);
    struct stat st;
    if (!realpath(joined, real) || stat(real, &st) || !S_ISDIR(st.st_mode))
        merr(L, l, guest, "%s: %s is not a directory", key, joined);
    return mdup(L, real);
}

/* hide = "glob" or { "glob", ... } -> NULL-ended list (owned). */
static const char *const *read_hide(lua_State *L, gd_lua *l, const char *guest, int idx,
                                    struct gd_mount *m)
{
    size_t n = lua_type(L, idx) == LUA_TSTRING ? 1 : lua_istable(L, idx) ? lua_objlen(L, idx) : 0;
    if (!n || n > MAX_HIDE)
        merr(L, l, guest, "hide must be a glob or a list of 1-%d globs", MAX_HIDE);
    char **v = calloc(n + 1, sizeof(*v));
    if (!v)
        luaL_error(L, "out of memory");
    m->hide = (const char *const *)v; /* owned by the mount from here (freed on error too) */
    for (size_t i = 0; i < n; i++) {
        if (lua_istable(L, idx))
            lua_rawgeti(L, idx, (int)i + 1);
        else
            lua_pushvalue(L, idx);
        size_t sl;
        const char *g = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &sl) : NULL;
        if (!g || !sl || sl > 255 || strlen(g) != sl)
            merr(L, l, guest, "hide[%zu] must be a non-empty glob of at most 255 bytes", i + 1);
        v[i] = mdup(L, g);
        lua_pop(L, 1);
    }
    return m->hide;
}

static int by_guest(const void *a, const void *b)
{
    return strcmp(((const struct gd_mount *)a)->guest, ((const struct gd_mount *)b)->guest);
}

/* One mount: the table at v for guest path (already checked). Fills m (strings owned;
 * a partial m is freed by gd__lua_free_mounts when this raises). */
static void read_mount(lua_State *L, gd_lua *l, const char *guest, int v, struct gd_mount *m,
                       size_t slot)
{
    static const char *const keys[] = {"hostfs", "overlay", "memory", "provider", "mode",
                                       "hide",   "size",    "config", "cache",    NULL};
    char what[MAX_GUEST_PATH + 20];
    snprintf(what, sizeof(what), "mounts['%s']", guest);
    if (!lua_istable(L, v))
        merr(L, l, guest,
             "must be a table ({ hostfs = DIR }, { overlay = DIR }, "
             "{ memory = true }, { provider = ... })");
    gd__lua_check_keys(L, l, v, keys, what);
    static const char *const kinds[] = {"hostfs", "overlay", "memory", "provider"};
    int kind = -1;
    for (int k = 0; k < 4; k++) {
        lua_getfield(L, v, kinds[k]);
        if (!lua_isnil(L, -1)) {
            if (kind >= 0)
                merr(L, l, guest,
                     "give one of hostfs, overlay, memory, provider (not both %s "
                     "and %s)",
                     kinds[kind], kinds[k]);
            kind = k;
        }
        lua_pop(L, 1);
    }
    if (kind < 0)
        merr(L, l, guest, "needs one of hostfs, overlay, memory, provider");
    m->guest = mdup(L, guest);
    lua_getfield(L, v, kinds[kind]);
    int kv = lua_gettop(L);
    lua_getfield(L, v, "mode");
    lua_getfield(L, v, "hide");
    lua_getfield(L, v, "size");
    lua_getfield(L, v, "config");
    lua_getfield(L, v, "cache");
    int mode = kv + 1, hide = kv + 2, size = kv + 3, config = kv + 4, cache = kv + 5;
    if (!lua_isnil(L, cache)) {
        const char *s = lua_type(L, cache) == LUA_TSTRING ? lua_tostring(L, cache) : "";
        if (strcmp(s, "auto") && strcmp(s, "always"))
            merr(L, l, guest, "cache must be \"auto\" or \"always\"");
        if (kind != 0 && kind != 1)
            merr(L, l, guest, "cache applies to hostfs and overlay mounts");
        m->cache_always = !strcmp(s, "always");
    }
    if (!lua_isnil(L, mode)) {
        const char *s = lua_type(L, mode) == LUA_TSTRING ? lua_tostring(L, mode) : "";
        if (strcmp(s, "rw") && strcmp(s, "ro"))
            merr(L, l, guest, "mode must be \"rw\" or \"ro\"");
        if (kind == 1 || kind == 2)
            merr(L, l, guest, "mode applies to hostfs and provider mounts (%s is always writable)",
                 kinds[kind]);
        m->readonly = !strcmp(s, "ro");
    }
    if (!lua_isnil(L, hide) && kind != 0 && kind != 1)
        merr(L, l, guest, "hide applies to hostfs and overlay mounts");
    if (!lua_isnil(L, size) && kind != 1 && kind != 2)
        merr(L, l, guest, "size applies to memory and overlay mounts");
    if (!lua_isnil(L, size) && !(m->size = parse_size(L, size)))
        merr(L, l, guest, "size must be a byte count or a string like \"64M\" (K, M, G)");
    switch (kind) {
    case 0:
    case 1:
        m->kind = kind == 0 ? GD_MOUNT_HOSTFS : GD_MOUNT_OVERLAY;
        m->host = host_dir(L, l, guest, kinds[kind], kv);
        if (!lua_isnil(L, hide))
            read_hide(L, l, guest, hide, m);
        break;
    case 2:
        if (lua_type(L, kv) != LUA_TBOOLEAN || !lua_toboolean(L, kv))
            merr(L, l, guest, "memory must be true");
        m->kind = GD_MOUNT_MEMORY;
        break;
    default:
        if (lua_istable(L, kv)) {
            if (!lua_isnil(L, config))
                merr(L, l, guest, "config applies to a plugin's provider (provider = \"name\")");
            /* every key a function name we know */
            lua_pushnil(L);
            while (lua_next(L, kv)) {
                const char *fn = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : NULL;
                int known = 0;
                for (int i = 0; fn && i < GD_LUA_FS_NOPS; i++)
                    known |= !strcmp(fn, gd_lua_fsop_name[i]);
                known |= fn && !strcmp(fn, "lookup");
                if (!known) {
                    const char *best = fn ? gd_closest(fn, gd_lua_fsop_name, 3) : NULL;
                    merr(L, l, guest, "provider: unknown function '%s'%s%s%s", fn ? fn : "?",
                         best ? " (did you mean '" : "", best ? best : "", best ? "'?)" : "");
                }
                if (!lua_isfunction(L, -1))
                    merr(L, l, guest, "provider.%s must be a function", fn);
                lua_pop(L, 1);
            }
            lua_getfield(L, kv, "getattr");
            lua_getfield(L, kv, "lookup");
            if (lua_isnil(L, -1) && lua_isnil(L, -2))
                merr(L, l, guest, "provider needs getattr (or lookup)");
            lua_pop(L, 2);
            m->kind = GD_MOUNT_LUA;
            lua_pushvalue(L, kv);
            l->prov_ref[slot] = luaL_ref(L, LUA_REGISTRYINDEX);
        } else if (lua_type(L, kv) == LUA_TSTRING) {
            const char *nm = lua_tostring(L, kv);
            if (!*nm || strlen(nm) > 64 ||
                strspn(nm, "abcdefghijklmnopqrstuvwxyz0123456789_-") != strlen(nm))
                merr(L, l, guest, "provider name must be [a-z0-9_-]{1,64}");
            m->kind = GD_MOUNT_PLUGIN;
            m->provider = mdup(L, nm);
            if (lua_isnil(L, config)) {
                m->config = mdup(L, "{}");
            } else {
                const char *why = "out of memory";
                cJSON *j = lua_istable(L, config) ? gd__lua_to_json(L, config, 0, &why) : NULL;
                if (!lua_istable(L, config))
                    merr(L, l, guest, "config must be a table");
                if (!j)
                    merr(L, l, guest, "config: %s", why);
                char *txt = cJSON_PrintUnformatted(j);
                cJSON_Delete(j);
                if (!txt)
                    luaL_error(L, "out of memory");
                m->config = txt;
            }
        } else {
            merr(L, l, guest,
                 "provider must be a table of functions or a plugin's provider "
                 "name");
        }
    }
    lua_settop(L, kv - 1);
}

void gd__lua_read_mounts(lua_State *L, gd_lua *l, int idx)
{
    if (!lua_istable(L, idx)) {
        char w[300];
        luaL_error(L, "%s: mounts must be a table of guest paths, not %s",
                   gd__lua_where(l, "mounts", w, sizeof(w)), luaL_typename(L, idx));
    }
    struct gd_lua_conf *c = &l->conf;
    c->mounts = calloc(GD_VFS_MAX_MOUNTS, sizeof(*c->mounts));
    if (!c->mounts)
        luaL_error(L, "out of memory");
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        if (lua_type(L, -2) != LUA_TSTRING) {
            char w[300];
            luaL_error(L, "%s: mounts: keys must be guest paths (\"/workspace\")",
                       gd__lua_where(l, "mounts", w, sizeof(w)));
        }
        const char *guest = lua_tostring(L, -2);
        const char *why = bad_guest_path(guest);
        if (why)
            merr(L, l, guest, "the guest path %s", why);
        if (c->nmounts == GD_VFS_MAX_MOUNTS)
            merr(L, l, guest, "more than %d mounts", GD_VFS_MAX_MOUNTS);
        size_t slot = c->nmounts++;
        read_mount(L, l, guest, lua_gettop(L), &c->mounts[slot], slot);
        lua_pop(L, 1);
    }
    /* sorted by guest path, the Lua provider refs moved along */
    struct {
        const char *g;
        int ref;
    } refs[GD_VFS_MAX_MOUNTS];
    for (size_t i = 0; i < c->nmounts; i++)
        refs[i].g = c->mounts[i].guest, refs[i].ref = l->prov_ref[i];
    qsort(c->mounts, c->nmounts, sizeof(*c->mounts), by_guest);
    for (size_t i = 0; i < c->nmounts; i++)
        for (size_t k = 0; k < c->nmounts; k++)
            if (refs[k].g == c->mounts[i].guest)
                l->prov_ref[i] = refs[k].ref;
}

void gd__lua_free_mounts(gd_lua *l)
{
    struct gd_lua_conf *c = &l->conf;
    for (size_t i = 0; c->mounts && i < GD_VFS_MAX_MOUNTS; i++) {
        struct gd_mount *m = &c->mounts[i];
        free((char *)m->guest);
        free((char *)m->host);
        free((char *)m->provider);
        free((char *)m->config);
        for (const char *const *h = m->hide; h && *h; h++)
            free((char *)*h);
        free((void *)m->hide);
    }
    free(c->mounts);
    c->mounts = NULL;
    c->nmounts = 0;
}
