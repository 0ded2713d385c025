/*
 * fsprov.c - calling a Lua provider (a mount's `provider = { getattr = ..., read = ... }`
 * table) and checking everything it returns before it reaches the guest: types, sizes,
 * lengths and entry names. The contract is in docs/lua-api.md ("Lua providers").
 *
 * Every call runs under the hook budget and the state's memory cap. A function that
 * raises, runs out of budget or memory, or returns something invalid answers EIO and
 * says why (c->why); `return nil, "ENOENT"` answers that errno.
 */
#define _GNU_SOURCE
#include "lua/lua_int.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <lauxlib.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define MAX_ENTRIES 100000
#define MAX_SIZE ((lua_Number)(1ull << 53))

const char *const gd_lua_fsop_name[GD_LUA_FS_NOPS + 1] = {
    "getattr", "readdir", "open",   "read",     "write",    "create", "mkdir",
    "unlink",  "rmdir",   "rename", "truncate", "readlink", NULL};

/* luaL_error with printf's formats (lua_pushfstring knows no %zu or precision). */
static int perr(lua_State *L, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int perr(lua_State *L, const char *fmt, ...)
{
    char msg[300];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    return luaL_error(L, "%s", msg);
}

static int mount_slot(const gd_lua *l, const char *mount)
{
    for (size_t i = 0; i < l->conf.nmounts; i++)
        if (l->conf.mounts[i].kind == GD_MOUNT_LUA && !strcmp(l->conf.mounts[i].guest, mount))
            return (int)i;
    return -1;
}

int gd_lua_has_provider(const gd_lua *l, const char *mount)
{
    return mount_slot(l, mount) >= 0;
}

struct pargs {
    gd_lua *l;
    struct gd_lua_fscall *c;
    int slot;
    long result;
    int missing; /* the table has no function for the op */
};

/* A field of the table at t that must be a number in [lo, hi] when present. */
static lua_Number num_field(lua_State *L, int t, const char *k, lua_Number lo, lua_Number hi,
                            lua_Number def, const char *fn)
{
    lua_getfield(L, t, k);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return def;
    }
    lua_Number v = lua_tonumber(L, -1);
    if (lua_type(L, -1) != LUA_TNUMBER || v < lo || v > hi || v != (lua_Number)(int64_t)v)
        perr(L, "%s returned %s = %s (want a whole number %.0f-%.0f)", fn, k, luaL_typename(L, -1),
             lo, hi);
    lua_pop(L, 1);
    return v;
}

static unsigned dtype(const char *t)
{
    return !t                      ? DT_UNKNOWN
           : !strcmp(t, "file")    ? DT_REG
           : !strcmp(t, "dir")     ? DT_DIR
           : !strcmp(t, "symlink") ? DT_LNK
                                   : 0xff;
}

static uint64_t path_ino(const char *p)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ull;
    return h ? h : 1;
}

/* The attribute table at t -> st. */
static void to_stat(lua_State *L, gd_lua *l, int t, const char *path, struct stat *st)
{
    lua_getfield(L, t, "type");
    const char *ty = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
    if (!lua_isnil(L, -1) && !ty)
        perr(L, "getattr returned type = %s (want \"file\", \"dir\" or \"symlink\")",
             luaL_typename(L, -1));
    unsigned dt = dtype(ty ? ty : "file");
    if (dt == 0xff)
        perr(L, "getattr returned type = \"%s\" (want \"file\", \"dir\" or \"symlink\")", ty);
    lua_pop(L, 1);
    memset(st, 0, sizeof(*st));
    mode_t fmt = dt == DT_DIR ? S_IFDIR : dt == DT_LNK ? S_IFLNK : S_IFREG;
    mode_t def = dt == DT_DIR ? 0755 : dt == DT_LNK ? 0777 : 0644;
    st->st_mode = fmt | (mode_t)num_field(L, t, "mode", 0, 07777, def, "getattr");
    st->st_size = (off_t)num_field(L, t, "size", 0, MAX_SIZE, 0, "getattr");
    st->st_uid = (uid_t)num_field(L, t, "uid", 0, 4294967294.0, 0, "getattr");
    st->st_gid = (gid_t)num_field(L, t, "gid", 0, 4294967294.0, 0, "getattr");
    st->st_mtime = (time_t)num_field(L, t, "mtime", 0, 1e12, (lua_Number)l->loaded_at, "getattr");
    st->st_atime = st->st_ctime = st->st_mtime;
    st->st_nlink = dt == DT_DIR ? 2 : 1;
    st->st_ino = (ino_t)path_ino(path);
    st->st_blksize = 4096;
    st->st_blocks = (st->st_size + 511) / 512;
}

/* A directory entry name as the kernel accepts it. */
static const char *bad_name(const char *s, size_t n)
{
    if (!n || n > 255)
        return "empty or longer than 255 bytes";
    if (memchr(s, '/', n) || memchr(s, 0, n))
        return "contains '/' or NUL";
    if ((n == 1 && s[0] == '.') || (n == 2 && s[0] == '.' && s[1] == '.'))
        return "is . or ..";
    return NULL;
}

static void readdir_result(lua_State *L, struct gd_lua_fscall *c, int t, struct pargs *a)
{
    if (!lua_istable(L, t))
        perr(L, "readdir returned %s (want a list of names)", luaL_typename(L, t));
    size_t n = lua_objlen(L, t);
    if (n > MAX_ENTRIES)
        perr(L, "readdir returned %zu entries (at most %d)", n, MAX_ENTRIES);
    for (size_t i = c->off + 1; i <= n; i++) {
        lua_rawgeti(L, t, (int)i);
        unsigned type = DT_UNKNOWN;
        if (lua_istable(L, -1)) {
            lua_getfield(L, -1, "type");
            if (!lua_isnil(L, -1)) {
                type = dtype(lua_tostring(L, -1));
                if (lua_type(L, -1) != LUA_TSTRING || type == 0xff)
                    perr(L, "readdir entry %zu: bad type", i);
            }
            lua_getfield(L, -2, "name");
            lua_replace(L, -3);
            lua_pop(L, 1);
        }
        if (lua_type(L, -1) != LUA_TSTRING)
            perr(L, "readdir entry %zu is %s (want a name or { name =, type = })", i,
                 luaL_typename(L, -1));
        size_t nl;
        const char *nm = lua_tolstring(L, -1, &nl);
        const char *why = bad_name(nm, nl);
        if (why)
            perr(L, "readdir entry %zu '%s' %s", i, nm, why);
        /* nm stays referenced by the table while fill copies it */
        int r = c->fill(c->fill_ctx, nm, i, type, NULL);
        lua_pop(L, 1);
        if (r) {
            a->result = r < 0 ? r : 0;
            return;
        }
    }
    a->result = 0;
}

/* The errno of `return nil, E` (at idx), or raises. */
static int errno_result(lua_State *L, int idx, const char *fn)
{
    if (lua_isnil(L, idx))
        return 0;
    int e = 0;
    if (lua_type(L, idx) == LUA_TSTRING)
        e = gd_lua_errno(lua_tostring(L, idx));
    else if (lua_type(L, idx) == LUA_TNUMBER && lua_tonumber(L, idx) >= 1 &&
             lua_tonumber(L, idx) < 4096)
        e = (int)lua_tonumber(L, idx);
    if (!e)
        perr(L, "%s returned an error that is not an errno name or number", fn);
    return e;
}

static int prov_entry(lua_State *L)
{
    struct pargs *a = lua_touserdata(L, 1);
    struct gd_lua_fscall *c = a->c;
    const char *fn = gd_lua_fsop_name[c->op];
    lua_rawgeti(L, LUA_REGISTRYINDEX, a->l->prov_ref[a->slot]);
    if (c->op == GD_LUA_FS_OPEN && ((c->flags & O_ACCMODE) != O_RDONLY || (c->flags & O_TRUNC))) {
        lua_getfield(L, -1, "write"); /* writable only when the table can write */
        if (lua_isnil(L, -1)) {
            a->result = -EROFS;
            return 0;
        }
        lua_pop(L, 1);
    }
    lua_getfield(L, -1, fn);
    if (lua_isnil(L, -1) && c->op == GD_LUA_FS_GETATTR) {
        lua_pop(L, 1);
        lua_getfield(L, -1, "lookup");
    }
    if (lua_isnil(L, -1)) {
        a->missing = 1;
        return 0;
    }
    int base = lua_gettop(L) - 1;
    lua_pushstring(L, c->path);
    int nargs = 1;
    switch (c->op) {
    case GD_LUA_FS_OPEN:
        lua_pushinteger(L, c->flags);
        nargs++;
        break;
    case GD_LUA_FS_READ:
        lua_pushnumber(L, (lua_Number)c->off);
        lua_pushnumber(L, (lua_Number)c->n);
        nargs += 2;
        break;
    case GD_LUA_FS_WRITE:
        gd__lua_charge(L, a->l, c->n);
        lua_pushnumber(L, (lua_Number)c->off);
        lua_pushlstring(L, c->data, c->n);
        nargs += 2;
        break;
    case GD_LUA_FS_CREATE:
    case GD_LUA_FS_MKDIR:
        lua_pushinteger(L, (lua_Integer)(c->mode & 07777));
        nargs++;
        break;
    case GD_LUA_FS_RENAME:
        lua_pushstring(L, c->path2);
        nargs++;
        break;
    case GD_LUA_FS_TRUNCATE:
        lua_pushnumber(L, (lua_Number)c->size);
        nargs++;
        break;
    default:
        break;
    }
    lua_call(L, nargs, 2);
    int r = base + 1, e2 = base + 2;
    int e = errno_result(L, e2, fn);
    if (e) {
        if (!lua_isnil(L, r))
            perr(L, "%s returned a value and an error", fn);
        a->result = -e;
        return 0;
    }
    a->result = 0;
    switch (c->op) {
    case GD_LUA_FS_GETATTR:
        if (lua_isnil(L, r)) {
            a->result = -ENOENT;
            break;
        }
        if (!lua_istable(L, r))
            perr(L, "getattr returned %s (want a table or nil)", luaL_typename(L, r));
        to_stat(L, a->l, r, c->path, c->st);
        break;
    case GD_LUA_FS_READDIR:
        readdir_result(L, c, r, a);
        break;
    case GD_LUA_FS_READ:
    case GD_LUA_FS_READLINK: {
        if (lua_type(L, r) != LUA_TSTRING)
            perr(L, "%s returned %s (want a string)", fn, luaL_typename(L, r));
        size_t n;
        const char *s = lua_tolstring(L, r, &n);
        if (n > c->n)
            perr(L, "%s returned %zu bytes, more than the %zu asked for", fn, n, c->n);
        if (c->op == GD_LUA_FS_READLINK && (!n || memchr(s, 0, n)))
            perr(L, "readlink returned an empty target or one with NUL");
        memcpy(c->buf, s, n);
        a->result = (long)n;
        break;
    }
    case GD_LUA_FS_WRITE: {
        if (lua_isnil(L, r)) {
            a->result = (long)c->n;
            break;
        }
        lua_Number v = lua_tonumber(L, r);
        if (lua_type(L, r) != LUA_TNUMBER || v < 0 || v > (lua_Number)c->n ||
            v != (lua_Number)(long)v)
            perr(L, "write returned %s (want the bytes written, 0-%zu)", luaL_typename(L, r), c->n);
        a->result = (long)v;
        break;
    }
    default:
        break;
    }
    return 0;
}

static int missing_errno(const struct gd_lua_fscall *c)
{
    switch (c->op) {
    case GD_LUA_FS_OPEN: /* optional (writing was checked against write already) */
        return 0;
    case GD_LUA_FS_GETATTR:
    case GD_LUA_FS_READDIR:
    case GD_LUA_FS_READ:
    case GD_LUA_FS_READLINK:
        return -ENOSYS;
    default:
        return -EROFS;
    }
}

long gd_lua_provider_call(gd_lua *l, const char *mount, struct gd_lua_fscall *c)
{
    c->why[0] = 0;
    int slot = mount_slot(l, mount);
    if (slot < 0 || (unsigned)c->op >= GD_LUA_FS_NOPS) {
        snprintf(c->why, sizeof(c->why), "no Lua provider at %s", mount);
        return -EIO;
    }
    struct pargs a = {l, c, slot, 0, 0};
    char site[64];
    snprintf(site, sizeof(site), "provider %s", gd_lua_fsop_name[c->op]);
    gd__lua_budget_start(l, l->o.hook_ms);
    int rc = lua_cpcall(l->L, prov_entry, &a);
    int killed = l->killed;
    gd__lua_budget_stop(l);
    if (rc) {
        const char *kind;
        char msg[sizeof(c->why) - 80];
        gd__lua_call_error(l, rc, killed, site, msg, sizeof(msg), &kind);
        snprintf(c->why, sizeof(c->why), "%s in %s of %s: %s", kind, site, mount, msg);
        return -EIO;
    }
    if (a.missing)
        return missing_errno(c);
    return a.result;
}
