/*
 * fs.c - the fs hooks: on_fs(op, ctx) before a guest file operation, on_fs_done(op, ctx)
 * after it, and the ctx object both see (fields of the operation, ctx:writing(),
 * ctx:deny(errno, reason)). A ctx handle lives for one call; kept in an upvalue it
 * raises "operation already finished".
 */
#define _GNU_SOURCE
#include "lua/lua_int.h"

#include <errno.h>
#include <fcntl.h>
#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char MT_FS[] = "gondolin.fs";

static const struct {
    const char *name;
    int e;
} errnos[] = {
    {"EPERM", EPERM},
    {"ENOENT", ENOENT},
    {"EIO", EIO},
    {"EBADF", EBADF},
    {"EAGAIN", EAGAIN},
    {"ENOMEM", ENOMEM},
    {"EACCES", EACCES},
    {"EBUSY", EBUSY},
    {"EEXIST", EEXIST},
    {"EXDEV", EXDEV},
    {"ENOTDIR", ENOTDIR},
    {"EISDIR", EISDIR},
    {"EINVAL", EINVAL},
    {"ENFILE", ENFILE},
    {"EMFILE", EMFILE},
    {"ETXTBSY", ETXTBSY},
    {"EFBIG", EFBIG},
    {"ENOSPC", ENOSPC},
    {"ESPIPE", ESPIPE},
    {"EROFS", EROFS},
    {"EMLINK", EMLINK},
    {"ENAMETOOLONG", ENAMETOOLONG},
    {"ENOSYS", ENOSYS},
    {"ENOTEMPTY", ENOTEMPTY},
    {"ELOOP", ELOOP},
    {"ENODATA", ENODATA},
    {"EOVERFLOW", EOVERFLOW},
    {"ENOTSUP", ENOTSUP},
    {"EOPNOTSUPP", EOPNOTSUPP},
    {"EDQUOT", EDQUOT},
    {"ERANGE", ERANGE},
    {"ETIMEDOUT", ETIMEDOUT},
    {"ESTALE", ESTALE},
};

int gd_lua_errno(const char *name)
{
    for (size_t i = 0; i < sizeof(errnos) / sizeof(errnos[0]); i++)
        if (!strcmp(errnos[i].name, name))
            return errnos[i].e;
    char *end;
    long v = strtol(name, &end, 10);
    return *name && !*end && v > 0 && v < 4096 ? (int)v : 0;
}

const char *gd_lua_errno_name(int e)
{
    if (e < 0)
        e = -e;
    for (size_t i = 0; i < sizeof(errnos) / sizeof(errnos[0]); i++)
        if (errnos[i].e == e)
            return errnos[i].name;
    return NULL;
}

/* The errno at idx (a name or a number); raises for anything else. */
static int check_errno(lua_State *L, int idx, const char *fn)
{
    int e = 0;
    if (lua_type(L, idx) == LUA_TNUMBER) {
        lua_Number v = lua_tonumber(L, idx);
        e = v >= 1 && v < 4096 && v == (int)v ? (int)v : 0;
    } else if (lua_type(L, idx) == LUA_TSTRING) {
        e = gd_lua_errno(lua_tostring(L, idx));
    }
    if (!e)
        luaL_error(L, "%s: errno must be a name like \"EACCES\" or a number 1-4095", fn);
    return e;
}

/* ---- the ctx object ---- */

struct lfs {
    const struct gd_vfs_event *ev; /* NULL once the call returned */
    const char *mount;
    int after;
    int err; /* ctx:deny: the positive errno */
    char rule[300], reason[300];
};

static struct lfs *check_fs(lua_State *L, const char *fn)
{
    struct lfs *f = luaL_checkudata(L, 1, MT_FS);
    if (!f->ev)
        luaL_error(L, "%s: operation already finished", fn);
    return f;
}

static int f_writing(lua_State *L)
{
    lua_pushboolean(L, check_fs(L, "writing")->ev->mutating != 0);
    return 1;
}

static int open_like(const struct gd_vfs_event *ev)
{
    return !strcmp(ev->op, "open") || !strcmp(ev->op, "create");
}

static int f_reading(lua_State *L)
{
    const struct gd_vfs_event *ev = check_fs(L, "reading")->ev;
    lua_pushboolean(L, open_like(ev) && (ev->flags & O_ACCMODE) != O_WRONLY);
    return 1;
}

static int f_truncating(lua_State *L)
{
    const struct gd_vfs_event *ev = check_fs(L, "truncating")->ev;
    lua_pushboolean(L, (open_like(ev) && (ev->flags & O_TRUNC)) ||
                           (!strcmp(ev->op, "setattr") && (ev->valid & GD_VFS_SET_SIZE)));
    return 1;
}

static int f_appending(lua_State *L)
{
    const struct gd_vfs_event *ev = check_fs(L, "appending")->ev;
    lua_pushboolean(L, open_like(ev) && (ev->flags & O_APPEND));
    return 1;
}

static int f_deny(lua_State *L)
{
    struct lfs *f = check_fs(L, "deny");
    if (f->after)
        return luaL_error(L, "deny: on_fs_done runs after the operation (deny in on_fs)");
    int e = lua_isnoneornil(L, 2) ? EACCES : check_errno(L, 2, "deny");
    const char *why = luaL_optstring(L, 3, "denied by policy");
    gd_lua *l = gd__lua_self(L);
    lua_Debug ar;
    if (lua_getstack(L, 1, &ar) && lua_getinfo(L, "Sl", &ar) && ar.currentline > 0)
        snprintf(f->rule, sizeof(f->rule), "%s:%d", ar.short_src, ar.currentline);
    else
        snprintf(f->rule, sizeof(f->rule), "%s", l->fs_site[0] ? l->fs_site[0] : "on_fs");
    gd_sanitize(f->reason, sizeof(f->reason), why, strlen(why));
    f->err = e;
    return 0;
}

static void push_opt(lua_State *L, const char *s)
{
    if (s)
        lua_pushstring(L, s);
    else
        lua_pushnil(L);
}

/* ctx.path, ctx.flags, ... and the methods (upvalue 2: the methods table). */
static int f_index(lua_State *L)
{
    struct lfs *f = check_fs(L, "ctx");
    const struct gd_vfs_event *ev = f->ev;
    const char *k = luaL_checkstring(L, 2);
    lua_pushvalue(L, 2);
    lua_rawget(L, lua_upvalueindex(2));
    if (!lua_isnil(L, -1))
        return 1;
    lua_pop(L, 1);
    if (!strcmp(k, "op"))
        lua_pushstring(L, ev->op);
    else if (!strcmp(k, "path"))
        lua_pushstring(L, ev->path);
    else if (!strcmp(k, "path2"))
        push_opt(L, ev->path2);
    else if (!strcmp(k, "mount"))
        lua_pushstring(L, f->mount);
    else if (!strcmp(k, "flags"))
        lua_pushinteger(L, ev->flags);
    else if (!strcmp(k, "mode"))
        lua_pushinteger(L, (lua_Integer)ev->mode);
    else if (!strcmp(k, "size"))
        lua_pushnumber(L, (lua_Number)ev->size);
    else if (!strcmp(k, "valid"))
        lua_pushinteger(L, (lua_Integer)ev->valid);
    else if (!strcmp(k, "mutating"))
        lua_pushboolean(L, ev->mutating);
    else if (!strcmp(k, "result") && f->after)
        lua_pushinteger(L, ev->result);
    else if (!strcmp(k, "errno") && f->after)
        push_opt(L, ev->result < 0 ? gd_lua_errno_name(ev->result) : NULL);
    else if (!strcmp(k, "bytes_read") && f->after)
        lua_pushnumber(L, (lua_Number)ev->bytes_read);
    else if (!strcmp(k, "bytes_written") && f->after)
        lua_pushnumber(L, (lua_Number)ev->bytes_written);
    else
        lua_pushnil(L);
    return 1;
}

void gd__lua_open_fs(lua_State *L, gd_lua *l)
{
    static const luaL_Reg methods[] = {
        {"writing", f_writing},     {"reading", f_reading}, {"truncating", f_truncating},
        {"appending", f_appending}, {"deny", f_deny},       {NULL, NULL}};
    luaL_newmetatable(L, MT_FS);
    lua_pushlightuserdata(L, l);
    lua_newtable(L);
    for (const luaL_Reg *m = methods; m->name; m++)
        gd__lua_reg(L, l, lua_gettop(L), m->name, m->func);
    lua_pushcclosure(L, f_index, 2);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, gd__lua_readonly);
    lua_setfield(L, -2, "__newindex");
    lua_pushliteral(L, "locked");
    lua_setfield(L, -2, "__metatable");
    lua_pop(L, 1);
}

/* ---- calling the hooks ---- */

struct fs_args {
    gd_lua *l;
    int after;
    struct lfs *f; /* the ctx, once pushed */
    const struct gd_vfs_event *ev;
    const char *mount;
};

static int fs_entry(lua_State *L)
{
    struct fs_args *a = lua_touserdata(L, 1);
    lua_rawgeti(L, LUA_REGISTRYINDEX, a->l->fs_fn[a->after]);
    lua_pushstring(L, a->ev->op);
    struct lfs *f = lua_newuserdata(L, sizeof(*f));
    memset(f, 0, sizeof(*f));
    f->ev = a->ev;
    f->mount = a->mount;
    f->after = a->after;
    a->f = f;
    luaL_getmetatable(L, MT_FS);
    lua_setmetatable(L, -2);
    lua_call(L, 2, 0);
    return 0;
}

/* Runs the hook; 0 or the LUA_ERR* code (message formatted into msg). */
static int run(gd_lua *l, int after, const struct gd_vfs_event *ev, const char *mount,
               struct lfs *out, char *msg, size_t cap, const char **kind)
{
    struct fs_args a = {l, after, NULL, ev, mount};
    gd__lua_budget_start(l, l->o.hook_ms);
    int rc = lua_cpcall(l->L, fs_entry, &a);
    int killed = l->killed;
    gd__lua_budget_stop(l);
    if (a.f) {
        *out = *a.f;
        a.f->ev = NULL; /* the handle dies with the call */
    }
    if (rc)
        gd__lua_call_error(l, rc, killed, l->fs_site[after], msg, cap, kind);
    return rc;
}

int gd_lua_fs_hook(gd_lua *l, const struct gd_vfs_event *ev, const char *mount, char *rule,
                   size_t rcap, char *reason, size_t cap)
{
    if (l->fs_fn[0] == LUA_NOREF)
        return 0;
    struct lfs f = {0};
    char msg[600];
    const char *kind;
    if (run(l, 0, ev, mount, &f, msg, sizeof(msg), &kind)) {
        snprintf(rule, rcap, "lua-error");
        snprintf(reason, cap, "%s in on_fs (%s): %s", kind, l->fs_site[0], msg);
        if (l->o.log)
            l->o.log(l->o.log_ud, reason);
        return -EACCES; /* fail closed */
    }
    if (!f.err)
        return 0;
    snprintf(rule, rcap, "%s", f.rule);
    snprintf(reason, cap, "%s", f.reason);
    return -f.err;
}

void gd_lua_fs_done(gd_lua *l, const struct gd_vfs_event *ev, const char *mount)
{
    if (l->fs_fn[1] == LUA_NOREF)
        return;
    struct lfs f;
    char msg[600], line[800];
    const char *kind;
    if (run(l, 1, ev, mount, &f, msg, sizeof(msg), &kind)) {
        snprintf(line, sizeof(line), "%s in on_fs_done (%s): %s", kind, l->fs_site[1], msg);
        if (l->o.log)
            l->o.log(l->o.log_ud, line);
        else
            fprintf(stderr, "gondolin: policy %s: %s\n", l->display, line);
    }
}

const char *gd_lua_fs_site(const gd_lua *l, int after)
{
    return l->fs_site[after ? 1 : 0];
}
