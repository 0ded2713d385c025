/*
 * conf.c - reading the policy table: every key validated (unknown keys with a
 * did-you-mean, types, ranges), declarations turned into typed rules and lists, hooks
 * into registry refs. Errors carry file:line.
 */
#define _GNU_SOURCE
#include "lua/lua_int.h"

#include "base/text.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <lauxlib.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *const gd__lua_phase_fn[NPHASE] = {
    "on_connect",       "on_request",         "on_request_body",    "on_response",
    "on_response_body", "on_ingress_request", "on_ingress_response"};

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

static void add_rule(lua_State *L, gd_lua *l, enum gd_lua_rule_kind kind, const char *value,
                     const char *key, const char *fmt, ...) __attribute__((format(printf, 6, 7)));
static void add_rule(lua_State *L, gd_lua *l, enum gd_lua_rule_kind kind, const char *value,
                     const char *key, const char *fmt, ...)
{
    struct gd_lua_conf *c = &l->conf;
    struct gd_lua_rule *q = realloc(c->rules, (c->nrules + 1) * sizeof(*q));
    if (!q)
        luaL_error(L, "out of memory");
    c->rules = q;
    char w[300], what[200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    lwhere(l, key, w, sizeof(w));
    char *v = value ? strdup(value) : NULL, *where = NULL;
    if (asprintf(&where, "%s: %s", w, what) < 0)
        where = NULL;
    if ((value && !v) || !where) {
        free(v);
        free(where);
        luaL_error(L, "out of memory");
    }
    q[c->nrules++] = (struct gd_lua_rule){.kind = kind, .value = v, .where = where};
}

const char *gd__lua_where(gd_lua *l, const char *key, char *buf, size_t cap)
{
    return lwhere(l, key, buf, cap);
}

void gd__lua_check_keys(lua_State *L, gd_lua *l, int idx, const char *const *known,
                        const char *what)
{
    check_keys(L, l, idx, known, what);
}

int gd__lua_take_hook(lua_State *L, gd_lua *l, int p, const char *name, int *ref, char **site)
{
    lua_getfield(L, p, name);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return 0;
    }
    if (!lua_isfunction(L, -1)) {
        char w[300];
        luaL_error(L, "%s: %s must be a function", lwhere(l, name, w, sizeof(w)), name);
    }
    lua_Debug ar;
    lua_pushvalue(L, -1);
    lua_getinfo(L, ">S", &ar);
    char where[300];
    snprintf(where, sizeof(where), "%s:%d", ar.short_src, ar.linedefined);
    *site = xstrdup(L, where);
    *ref = luaL_ref(L, LUA_REGISTRYINDEX);
    return 1;
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

/* Adds a rule of kind for each string of a string-or-list value at idx. */
static void each_string(lua_State *L, gd_lua *l, int idx, const char *key,
                        enum gd_lua_rule_kind kind)
{
    if (lua_type(L, idx) == LUA_TSTRING) {
        add_rule(L, l, kind, lua_tostring(L, idx), key, "%s[1] '%s'", key, lua_tostring(L, idx));
        return;
    }
    want_table(L, l, idx, key, key);
    size_t n = lua_objlen(L, idx);
    for (size_t i = 1; i <= n; i++) {
        lua_rawgeti(L, idx, (int)i);
        char w[120];
        snprintf(w, sizeof(w), "%s[%zu]", key, i);
        const char *v = want_string(L, l, -1, key, w);
        add_rule(L, l, kind, v, key, "%s '%s'", w, v);
        lua_pop(L, 1);
    }
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
        add_rule(L, l, GD_LUA_ALLOW, hostport, "allow", "%s '%s'", what, hostport);
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
            add_rule(L, l, GD_LUA_ALLOW, rule, "allow", "%s '%s'", what, rule);
            lua_pop(L, 1);
        }
    }
    lua_pop(L, 5);
}

static void read_allow(lua_State *L, gd_lua *l, int idx)
{
    if (lua_type(L, idx) == LUA_TSTRING) {
        add_rule(L, l, GD_LUA_ALLOW, lua_tostring(L, idx), "allow", "allow '%s'",
                 lua_tostring(L, idx));
        return;
    }
    want_table(L, l, idx, "allow", "allow");
    size_t n = lua_objlen(L, idx);
    for (size_t i = 1; i <= n; i++) {
        lua_rawgeti(L, idx, (int)i);
        if (lua_type(L, -1) == LUA_TSTRING)
            add_rule(L, l, GD_LUA_ALLOW, lua_tostring(L, -1), "allow", "allow[%zu] '%s'", i,
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

static void read_map(lua_State *L, gd_lua *l, int idx, const char *key, enum gd_lua_rule_kind kind,
                     char sep)
{
    want_table(L, l, idx, key, key);
    size_t n = lua_objlen(L, idx);
    for (size_t i = 1; i <= n; i++) {
        lua_rawgeti(L, idx, (int)i);
        add_rule(L, l, kind, want_string(L, l, -1, key, key), key, "%s[%zu]", key, i);
        lua_pop(L, 1);
    }
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        if (lua_type(L, -2) == LUA_TSTRING) {
            char v[700];
            snprintf(v, sizeof(v), "%s%c%s", lua_tostring(L, -2), sep,
                     want_string(L, l, -1, key, key));
            add_rule(L, l, kind, v, key, "%s['%s']", key, lua_tostring(L, -2));
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
            cJSON *j = gd__lua_to_json(L, -1, 0, &why);
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

/* Readers of the top-level keys; each gets the non-nil value at idx. */

static void read_name(lua_State *L, gd_lua *l, int idx)
{
    l->conf.name = xstrdup(L, want_string(L, l, idx, "name", "name"));
}

static void read_description(lua_State *L, gd_lua *l, int idx)
{
    want_string(L, l, idx, "description", "description");
}

static void read_allow_internal(lua_State *L, gd_lua *l, int idx)
{
    each_string(L, l, idx, "allow_internal", GD_LUA_ALLOW_INTERNAL);
}

static void read_secrets_in_query(lua_State *L, gd_lua *l, int idx)
{
    if (lua_toboolean(L, idx))
        add_rule(L, l, GD_LUA_SECRETS_IN_QUERY, NULL, "secrets_in_query", "secrets_in_query");
}

static void read_dns(lua_State *L, gd_lua *l, int idx)
{
    add_rule(L, l, GD_LUA_DNS, want_string(L, l, idx, "dns", "dns"), "dns", "dns");
}

static void read_tcp_map(lua_State *L, gd_lua *l, int idx)
{
    read_map(L, l, idx, "tcp_map", GD_LUA_TCP_MAP, '=');
}

static void read_resolve(lua_State *L, gd_lua *l, int idx)
{
    read_map(L, l, idx, "resolve", GD_LUA_RESOLVE, ':');
}

static void read_upstream_ca(lua_State *L, gd_lua *l, int idx)
{
    const char *ca = want_string(L, l, idx, "upstream_ca", "upstream_ca");
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s%s%s", *ca == '/' ? "" : l->dir, *ca == '/' ? "" : "/", ca);
    add_rule(L, l, GD_LUA_UPSTREAM_CA, path, "upstream_ca", "upstream_ca");
}

static void read_limits(lua_State *L, gd_lua *l, int li)
{
    static const char *const lk[] = {"hook_ms", "memory_mb", NULL};
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

static void read_hook(lua_State *L, gd_lua *l, int idx)
{
    (void)L, (void)l, (void)idx; /* hooks are taken after every declaration is read */
}

/* The policy table's keys, in the order they are read (the hooks last). */
static const struct key {
    const char *name;
    void (*read)(lua_State *L, gd_lua *l, int idx);
} policy_keys[] = {
    {"name", read_name},
    {"description", read_description},
    {"allow", read_allow},
    {"allow_internal", read_allow_internal},
    {"secrets", read_secrets},
    {"secrets_in_query", read_secrets_in_query},
    {"dns", read_dns},
    {"tcp_map", read_tcp_map},
    {"resolve", read_resolve},
    {"upstream_ca", read_upstream_ca},
    {"vm", read_vm},
    {"plugins", read_plugins},
    {"limits", read_limits},
    {"on_connect", read_hook},
    {"on_request", read_hook},
    {"on_request_body", read_hook},
    {"on_response", read_hook},
    {"on_response_body", read_hook},
    {"on_ingress_request", read_hook},
    {"on_ingress_response", read_hook},
    {"mounts", gd__lua_read_mounts},
    {"on_fs", read_hook},
    {"on_fs_done", read_hook},
    {"ssh", gd__lua_read_ssh},
    {"on_ssh_exec", read_hook},
};
#define NKEYS (sizeof(policy_keys) / sizeof(policy_keys[0]))

int gd__lua_read_policy(lua_State *L)
{
    gd_lua *l = lua_touserdata(L, 1);
    int p = 2;
    const char *names[NKEYS + 1];
    for (size_t i = 0; i < NKEYS; i++)
        names[i] = policy_keys[i].name;
    names[NKEYS] = NULL;
    check_keys(L, l, p, names, "policy");
    for (size_t i = 0; i < NKEYS; i++) {
        lua_getfield(L, p, policy_keys[i].name);
        if (!lua_isnil(L, -1))
            policy_keys[i].read(L, l, lua_gettop(L));
        lua_pop(L, 1);
    }
    for (int i = 0; i < NPHASE; i++)
        if (gd__lua_take_hook(L, l, p, gd__lua_phase_fn[i], &l->fn[i], &l->site[i]))
            l->conf.hook_phases |= 1u << i;
    if (gd__lua_take_hook(L, l, p, "on_fs", &l->fs_fn[0], &l->fs_site[0]))
        l->conf.fs_hooks |= GD_LUA_FS_BEFORE;
    if (gd__lua_take_hook(L, l, p, "on_fs_done", &l->fs_fn[1], &l->fs_site[1]))
        l->conf.fs_hooks |= GD_LUA_FS_AFTER;
    l->conf.ssh_hook = gd__lua_take_hook(L, l, p, "on_ssh_exec", &l->ssh_fn, &l->ssh_site);
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
