/* engine.c - policy revisions, the dispatcher hook, reload and watches (see engine.h). */
#define _GNU_SOURCE
#include "engine/engine_int.h"

#include "base/fs.h"
#include "plugin/plugin.h"

#include <errno.h>
#include <limits.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

/* Copy of a NULL-ended list (NULL: an empty one). */
static char **dup_list(const char *const *v)
{
    size_t n = 0;
    while (v && v[n])
        n++;
    char **d = calloc(n + 1, sizeof(*d));
    for (size_t i = 0; d && i < n; i++)
        if (!(d[i] = strdup(v[i])))
            return d; /* a short list; the caller's next step reports the gap */
    return d;
}

static void free_list(char **v)
{
    for (char **p = v; p && *p; p++)
        free(*p);
    free(v);
}

void gd__engine_log(gd_engine *e, const char *fmt, ...)
{
    char msg[1200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (e->log)
        e->log(e->log_ud, msg);
    else
        fprintf(stderr, "gondolin: %s\n", msg);
}

const char *gd_engine_default_lua_dir(void)
{
    static char found[PATH_MAX];
    const char *env = getenv("GONDOLIN_LUA_DIR");
    if (env && *env)
        return env;
    if (found[0])
        return found;
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (n <= 0)
        return NULL;
    exe[n] = 0;
    char *slash = strrchr(exe, '/');
    if (slash)
        *slash = 0;
    static const char *const rel[] = {"../lua", "../../lua", "../../../lua",
                                      "../share/gondolin/lua", NULL};
    for (const char *const *r = rel; *r; r++) {
        char probe[PATH_MAX];
        snprintf(probe, sizeof(probe), "%s/%s/gondolin/json.lua", exe, *r);
        if (access(probe, R_OK) == 0) {
            char dir[PATH_MAX];
            snprintf(dir, sizeof(dir), "%s/%s", exe, *r);
            if (realpath(dir, found))
                return found;
        }
    }
    return NULL;
}

/* ---- revisions ---- */

static void rev_free(struct rev *r)
{
    gd_engine *e = r->e;
    for (struct rev **p = &e->live; *p; p = &(*p)->next)
        if (*p == r) {
            *p = r->next;
            break;
        }
    gd_lua_free(r->lua);
    for (size_t i = 0; i < r->ninst; i++)
        gd_plugin_stop(r->inst[i]);
    free(r->inst);
    free(r->chain);
    free(r->fsh);
    r->eg.audit = NULL; /* the engine's */
    gd_egress_free(&r->eg);
    free(r);
}

static void rev_unref(struct rev *r)
{
    if (--r->refs == 0)
        rev_free(r);
}

static void plugin_log(void *ud, const char *msg)
{
    gd__engine_log(ud, "plugin %s", msg);
}

static void lua_log(void *ud, const char *msg)
{
    gd__engine_log(ud, "policy: %s", msg);
}

/* Applies one Lua declaration to eg through its typed setter. */
static int apply_rule(struct gd_egress *eg, const struct gd_lua_rule *d, struct gd_err *err)
{
    static int (*const set[])(struct gd_egress *, const char *, struct gd_err *) = {
        [GD_LUA_ALLOW] = gd_egress_allow,     [GD_LUA_ALLOW_INTERNAL] = gd_egress_allow_internal,
        [GD_LUA_TCP_MAP] = gd_egress_tcp_map, [GD_LUA_DNS] = gd_egress_dns,
        [GD_LUA_RESOLVE] = gd_egress_resolve, [GD_LUA_UPSTREAM_CA] = gd_egress_upstream_ca,
    };
    int rc = 0;
    if (d->kind == GD_LUA_SECRETS_IN_QUERY)
        gd_egress_secrets_in_query(eg, 1);
    else if ((size_t)d->kind < sizeof(set) / sizeof(set[0]) && set[d->kind] && d->value)
        rc = set[d->kind](eg, d->value, err);
    else
        rc = gd_err_set(err, -EINVAL, "unknown declaration");
    if (rc)
        gd_err_prefix(err, "%s: ", d->where);
    return rc;
}

static int read_secret_file(const char *path, char *out, size_t cap, struct gd_err *err)
{
    FILE *f = fopen(path, "re");
    if (!f)
        return gd_err_set(err, -errno, "cannot read %s: %s", path, strerror(errno));
    size_t n = fread(out, 1, cap - 1, f);
    int big = !feof(f);
    fclose(f);
    if (big)
        return gd_err_set(err, -EFBIG, "%s is larger than %zu bytes", path, cap - 1);
    out[n] = 0;
    while (n && (out[n - 1] == '\n' || out[n - 1] == '\r'))
        out[--n] = 0;
    return 0;
}

/* The value of a declared secret, from its source. */
static int resolve_secret(struct rev *r, const struct gd_lua_secret *s, char *out, size_t cap,
                          struct gd_err *err)
{
    struct gd_err sub = {{0}};
    size_t nl = strlen(s->name);
    for (char **v = r->e->secret_values; v && *v; v++)
        if (!strncmp(*v, s->name, nl) && (*v)[nl] == '=') {
            snprintf(out, cap, "%s", *v + nl + 1);
            return 0;
        }
    if (r->e->stub_secrets) {
        snprintf(out, cap, "stub-%s", s->name);
        return 0;
    }
    const char *from = s->from;
    const char *colon = strchr(from, ':');
    if (!colon)
        return gd_err_set(err, -EINVAL, "%s: bad source '%s'", s->where, from);
    size_t sl = (size_t)(colon - from);
    const char *arg = colon + 1;
    if (sl == 3 && !strncmp(from, "env", 3)) {
        const char *v = getenv(arg);
        if (!v)
            return gd_err_set(err, -ENOENT, "%s: environment variable %s is not set", s->where,
                              arg);
        if (strlen(v) >= cap)
            return gd_err_set(err, -EFBIG, "%s: value too long", s->where);
        strcpy(out, v);
        return 0;
    }
    if (sl == 5 && !strncmp(from, "value", 5)) {
        snprintf(out, cap, "%s", arg);
        return 0;
    }
    if (sl == 4 && !strncmp(from, "file", 4)) {
        if (read_secret_file(arg, out, cap, &sub))
            return gd_err_set(err, -EINVAL, "%s: %s", s->where, sub.msg);
        return 0;
    }
    char scheme[64];
    snprintf(scheme, sizeof(scheme), "%.*s", (int)sl, from);
    for (size_t i = 0; i < r->ninst; i++) {
        int rc = gd_plugin_secret(r->inst[i], scheme, arg, out, cap, &sub);
        if (rc < 0)
            return gd_err_set(err, rc, "%s: %s", s->where, sub.msg);
        if (rc == 1)
            return 0;
    }
    return gd_err_set(err, -ENOENT,
                      "%s: no secret source '%s' (built in: env, file, value; others come "
                      "from plugins)",
                      s->where, scheme);
}

static int add_chain(struct rev *r, const char *name, unsigned phases, gd_hook_fn fn, void *ud)
{
    struct chain *q = realloc(r->chain, (r->nchain + 1) * sizeof(*q));
    if (!q)
        return -ENOMEM;
    r->chain = q;
    q[r->nchain++] = (struct chain){name, phases, 0, fn, ud};
    return 0;
}

/* Loads plugins found in the directories and files that are not loaded yet. */
static int load_plugins(gd_engine *e, struct gd_err *err)
{
    char **paths = NULL;
    size_t np = 0;
    for (char **d = e->plugin_dirs; d && *d; d++) {
        char **v = gd_plugin_scan_dir(*d);
        for (char **p = v; p && *p; p++) {
            char **q = realloc(paths, (np + 2) * sizeof(*q));
            if (!q)
                break;
            paths = q;
            paths[np++] = *p;
            paths[np] = NULL;
            *p = NULL;
        }
        free_list(v);
    }
    for (char **f = e->plugin_files; f && *f; f++) {
        char **q = realloc(paths, (np + 2) * sizeof(*q));
        char *c = strdup(*f);
        if (!q || !c) {
            free(c);
            if (q)
                paths = q;
            break;
        }
        paths = q;
        paths[np++] = c;
        paths[np] = NULL;
    }
    int rc = 0;
    for (size_t i = 0; i < np && !rc; i++) {
        int have = 0;
        for (size_t k = 0; k < e->nplugins; k++)
            if (!strcmp(gd_plugin_path(e->plugins[k]), paths[i]))
                have = 1;
        if (have)
            continue;
        gd_plugin *p;
        if ((rc = gd_plugin_open(paths[i], &p, err)))
            break;
        for (size_t k = 0; k < e->nplugins; k++)
            if (!strcmp(gd_plugin_name(e->plugins[k]), gd_plugin_name(p))) {
                rc = gd_err_set(err, -EEXIST, "plugin %s: name '%s' is already taken by %s",
                                paths[i], gd_plugin_name(p), gd_plugin_path(e->plugins[k]));
                gd_plugin_close(p);
                p = NULL;
                break;
            }
        if (!p)
            break;
        gd_plugin **q = realloc(e->plugins, (e->nplugins + 1) * sizeof(*q));
        if (!q) {
            gd_plugin_close(p);
            rc = gd_err_set(err, -ENOMEM, "out of memory");
            break;
        }
        e->plugins = q;
        q[e->nplugins++] = p;
    }
    for (size_t i = 0; i < np; i++)
        free(paths[i]);
    free(paths);
    return rc;
}

static void digest_update(void *md, const void *p, size_t n)
{
    EVP_DigestUpdate(md, p, n);
}

static int rev_build(gd_engine *e, struct rev **out, struct gd_err *err)
{
    *out = NULL;
    struct rev *r = calloc(1, sizeof(*r));
    if (!r)
        return gd_err_set(err, -ENOMEM, "out of memory");
    r->e = e;
    r->refs = 1;
    r->next = e->live;
    e->live = r;
    int rc;
    if ((rc = gd_egress_copy(&r->eg, &e->base, err)))
        goto fail;
    const struct gd_lua_conf *c = NULL;
    if (e->policy) {
        struct gd_lua_opts lo = {.lua_dir = e->lua_dir, .log = lua_log, .log_ud = e};
        if ((rc = gd_lua_load(e->policy, &lo, &r->lua, err)))
            goto fail;
        c = gd_lua_conf(r->lua);
        for (size_t i = 0; i < c->nrules; i++)
            if ((rc = apply_rule(&r->eg, &c->rules[i], err)))
                goto fail;
        if ((rc = gd_ssh_conf_merge(&r->eg.ssh, &c->ssh, err)))
            goto fail;
    }
    /* plugins: every loaded one, configured from the policy's plugins table */
    if ((rc = load_plugins(e, err)))
        goto fail;
    for (size_t i = 0; c && i < c->nplugins; i++) {
        int found = 0;
        for (size_t k = 0; k < e->nplugins; k++)
            found |= !strcmp(gd_plugin_name(e->plugins[k]), c->plugins[i].name);
        if (!found) {
            rc = gd_err_set(err, -ENOENT,
                            "%s: plugins.%s: no such plugin is loaded (give --plugin PATH, "
                            "--plugin-dir DIR, or install it in a plugins.d directory)",
                            e->policy, c->plugins[i].name);
            goto fail;
        }
    }
    r->inst = calloc(e->nplugins + 1, sizeof(*r->inst));
    if (!r->inst) {
        rc = gd_err_set(err, -ENOMEM, "out of memory");
        goto fail;
    }
    for (size_t k = 0; k < e->nplugins; k++) {
        const char *conf = "{}";
        for (size_t i = 0; c && i < c->nplugins; i++)
            if (!strcmp(gd_plugin_name(e->plugins[k]), c->plugins[i].name))
                conf = c->plugins[i].json;
        if ((rc = gd_plugin_start(e->plugins[k], conf, plugin_log, e, &r->inst[r->ninst], err)))
            goto fail;
        r->ninst++;
    }
    /* secrets the policy declares, from their sources */
    for (size_t i = 0; c && i < c->nsecrets; i++) {
        char value[65536];
        if ((rc = resolve_secret(r, &c->secrets[i], value, sizeof(value), err)))
            goto fail;
        rc = gd_egress_secret(&r->eg, c->secrets[i].name, c->secrets[i].hosts, value, err);
        memset(value, 0, sizeof(value));
        if (rc) {
            gd_err_prefix(err, "%s: ", c->secrets[i].where);
            goto fail;
        }
    }
    /* start-only settings come from the engine, never from a reload (a Lua policy
     * declares no audit file; the base's was opened once by gd_engine_new) */
    snprintf(r->eg.vm_id, sizeof(r->eg.vm_id), "%s", e->vm_id);
    r->eg.quiet = e->quiet;
    r->eg.audit = e->audit;
    if ((rc = gd_egress_finish(&r->eg, err)))
        goto fail;

    /* the chain */
    if ((rc = add_chain(r, "allow-host", GD_PHASE_REQUEST_HEAD, gd_egress_hook_allow, &r->eg)) ||
        (rc = add_chain(r, "internal-ranges", GD_PHASE_CONNECT, gd_egress_hook_internal, &r->eg)))
        goto oom;
    for (size_t k = 0; k < r->ninst; k++) {
        size_t nh;
        const struct gd_plugin_hook *h = gd_plugin_hooks(r->inst[k], &nh);
        for (size_t j = 0; j < nh; j++)
            if ((rc = add_chain(r, h[j].name, h[j].phases, h[j].fn, h[j].ud)))
                goto oom;
    }
    if (c && c->hook_phases) {
        unsigned m = 0;
        static const unsigned bit[5] = {GD_PHASE_CONNECT, GD_PHASE_REQUEST_HEAD,
                                        GD_PHASE_REQUEST_BODY, GD_PHASE_RESPONSE_HEAD,
                                        GD_PHASE_RESPONSE_BODY};
        for (int i = 0; i < 5; i++)
            if (c->hook_phases & (1u << i))
                m |= bit[i];
        if (m && (rc = add_chain(r, "lua", m, NULL, NULL)))
            goto oom;
        /* the ingress hooks: host clients of a --listen port (nothing else runs there) */
        m = (c->hook_phases & (1u << 5) ? GD_PHASE_REQUEST_HEAD : 0) |
            (c->hook_phases & (1u << 6) ? GD_PHASE_RESPONSE_HEAD : 0);
        if (m) {
            if ((rc = add_chain(r, "lua-ingress", m, NULL, NULL)))
                goto oom;
            r->chain[r->nchain - 1].ingress = 1;
        }
    }
    if ((rc = add_chain(r, "secrets", GD_PHASE_REQUEST_HEAD, gd_egress_hook_secrets, &r->eg)))
        goto oom;
    if ((rc = gd__vfs_rev_build(r, c, err)))
        goto fail;

    /* the revision's identity: policy files, the base rules, plugins */
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    if (!md)
        goto oom;
    EVP_DigestInit_ex(md, EVP_sha256(), NULL);
    if (r->lua)
        EVP_DigestUpdate(md, gd_lua_hash(r->lua), 64);
    gd_egress_digest(&e->base, digest_update, md);
    for (size_t k = 0; k < e->nplugins; k++) {
        EVP_DigestUpdate(md, gd_plugin_path(e->plugins[k]),
                         strlen(gd_plugin_path(e->plugins[k])) + 1);
        EVP_DigestUpdate(md, gd_plugin_version(e->plugins[k]),
                         strlen(gd_plugin_version(e->plugins[k])) + 1);
    }
    unsigned char d[32];
    unsigned dl = 0;
    EVP_DigestFinal_ex(md, d, &dl);
    EVP_MD_CTX_free(md);
    gd_hex(d, 6, r->hash);
    *out = r;
    return 0;
oom:
    rc = gd_err_set(err, -ENOMEM, "out of memory");
fail:
    rev_free(r);
    return rc;
}

/* A reload keeps the guest's view: same placeholders for secrets it already has. */
static void carry_over(gd_engine *e, struct rev *old, struct rev *r)
{
    for (size_t i = 0; i < r->eg.nsecrets; i++) {
        int found = 0;
        for (size_t k = 0; k < old->eg.nsecrets; k++)
            if (!strcmp(old->eg.secrets[k].name, r->eg.secrets[i].name)) {
                memcpy(r->eg.secrets[i].placeholder, old->eg.secrets[k].placeholder,
                       sizeof(r->eg.secrets[i].placeholder));
                found = 1;
            }
        if (!found)
            gd__engine_log(e,
                           "reload: secret %s is new; the running guest has no placeholder for it "
                           "(it takes effect at the next start)",
                           r->eg.secrets[i].name);
    }
    if (old->eg.dns != r->eg.dns)
        gd__engine_log(e, "reload: the DNS mode takes effect at the next start");
    const struct gd_lua_conf *a = old->lua ? gd_lua_conf(old->lua) : NULL;
    const struct gd_lua_conf *b = r->lua ? gd_lua_conf(r->lua) : NULL;
    if (a && b &&
        (a->memory_mb != b->memory_mb || a->cpus != b->cpus ||
         (a->image ? !b->image || strcmp(a->image, b->image) : b->image != NULL)))
        gd__engine_log(e, "reload: vm settings take effect at the next start");
    if (!gd__vfs_same_mounts(e->boot, r))
        gd__engine_log(e, "reload: mounts changed; the running mounts stay until a restart "
                          "(hooks reload now)");
}

int gd_engine_new(const struct gd_engine_opts *o, gd_engine **out, struct gd_err *err)
{
    *out = NULL;
    gd_engine *e = calloc(1, sizeof(*e));
    if (!e)
        return gd_err_set(err, -ENOMEM, "out of memory");
    pthread_mutex_init(&e->vb.mu, NULL);
    e->policy = o->policy ? strdup(o->policy) : NULL;
    e->plugin_dirs = dup_list(o->plugin_dirs);
    e->plugin_files = dup_list(o->plugins);
    const char *ld = o->lua_dir ? o->lua_dir : gd_engine_default_lua_dir();
    e->lua_dir = ld ? strdup(ld) : NULL;
    e->quiet = o->quiet;
    e->log = o->log;
    e->log_ud = o->log_ud;
    e->on_reload = o->on_reload;
    e->secret_values = dup_list(o->secret_values);
    e->stub_secrets = o->stub_secrets;
    if ((o->policy && !e->policy) || !e->plugin_dirs || !e->plugin_files) {
        gd_engine_free(e);
        return gd_err_set(err, -ENOMEM, "out of memory");
    }
    int rc;
    if (o->base && (rc = gd_egress_copy(&e->base, o->base, err))) {
        gd_engine_free(e);
        return rc;
    }
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    snprintf(e->vm_id, sizeof(e->vm_id), "%lx-%x", (long)ts.tv_sec, (unsigned)getpid());
    /* the audit file is opened once, from the base rules */
    if (e->base.audit_path) {
        e->audit = fopen(e->base.audit_path, "ae");
        if (!e->audit) {
            rc = gd_err_set(err, -errno, "cannot open audit file %s: %s", e->base.audit_path,
                            strerror(errno));
            gd_engine_free(e);
            return rc;
        }
        setvbuf(e->audit, NULL, _IOLBF, 0);
    }
    if ((rc = rev_build(e, &e->cur, err))) {
        gd_engine_free(e);
        return rc;
    }
    e->cur->gen = ++e->gen;
    if (e->cur->lua && gd_lua_conf(e->cur->lua)->nmounts) {
        e->boot = e->cur; /* its mounts run until the engine goes: pinned */
        e->boot->refs++;
    }
    gd__vfs_update_need(e);
    *out = e;
    return 0;
}

void gd_engine_free(gd_engine *e)
{
    if (!e)
        return;
    if (e->cur)
        rev_unref(e->cur);
    e->cur = NULL;
    if (e->boot)
        rev_unref(e->boot);
    e->boot = NULL;
    gd__vfs_free(e);
    while (e->live) /* revisions still pinned by transactions that never ended */
        rev_free(e->live);
    for (size_t k = 0; k < e->nplugins; k++)
        gd_plugin_close(e->plugins[k]);
    free(e->plugins);
    if (e->audit)
        fclose(e->audit);
    free(e->policy);
    gd_egress_free(&e->base);
    free_list(e->plugin_dirs);
    free_list(e->plugin_files);
    free_list(e->secret_values);
    free(e->lua_dir);
    free(e->w);
    free(e);
}

int gd_engine_reload(gd_engine *e, struct gd_err *err)
{
    struct rev *r;
    int rc = rev_build(e, &r, err);
    if (rc)
        return rc;
    carry_over(e, e->cur, r);
    r->gen = ++e->gen;
    struct rev *old = e->cur;
    e->cur = r;
    rev_unref(old);
    gd__vfs_update_need(e);
    return 0;
}

void gd_engine_set_bundle(gd_engine *e, const char *name, long long revision, const char *signers)
{
    snprintf(e->base.bundle_name, sizeof(e->base.bundle_name), "%s", name);
    e->base.bundle_revision = revision;
    snprintf(e->base.bundle_signers, sizeof(e->base.bundle_signers), "%s", signers);
}

struct gd_egress *gd_engine_egress(gd_engine *e)
{
    return &e->cur->eg;
}

const struct gd_lua_conf *gd_engine_policy_conf(gd_engine *e)
{
    return e->cur->lua ? gd_lua_conf(e->cur->lua) : NULL;
}

const char *gd_engine_revision(const gd_engine *e)
{
    return e->cur->hash;
}

unsigned gd_engine_generation(const gd_engine *e)
{
    return e->cur->gen;
}

/* ---- the dispatcher ---- */

struct tx {
    struct rev *rev;
    int ctx;
};

static void tx_free(void *p)
{
    struct tx *x = p;
    if (x->rev->lua)
        gd_lua_txn_end(x->rev->lua, x->ctx);
    rev_unref(x->rev);
    free(x);
}

static enum gd_decision dispatch(gd_txn *t, enum gd_phase ph, void *ud)
{
    gd_engine *e = ud;
    struct tx *x = gd_txn_data(t);
    if (!x) {
        if (!(x = calloc(1, sizeof(*x))))
            return gd_txn_deny(t, 503, "policy", "out of memory");
        x->rev = e->cur;
        x->rev->refs++;
        gd_txn_set_data(t, x, tx_free);
        gd_txn_set_tag(t, x->rev->hash);
    }
    struct rev *r = x->rev;
    int ing = gd_txn_ingress(t) != 0;
    for (size_t i = 0; i < r->nchain; i++) {
        const struct chain *c = &r->chain[i];
        if (!(c->phases & ph) || c->ingress != ing)
            continue;
        gd_txn_set_hook_name(t, c->name);
        enum gd_decision d = c->fn ? c->fn(t, ph, c->ud) : gd_lua_hook(r->lua, t, ph, &x->ctx);
        if (d == GD_CONTINUE)
            continue;
        int status;
        const char *rule, *reason;
        if (gd_txn_decision(t, &status, &rule, &reason) == GD_CONTINUE)
            d = gd_txn_deny(t, 403, c->name, "denied by %s", c->name);
        return d;
    }
    return GD_CONTINUE;
}

int gd_engine_install(gd_engine *e, gd_proxy *px)
{
    return gd_proxy_add_hook(px, "policy",
                             GD_PHASE_CONNECT | GD_PHASE_REQUEST_HEAD | GD_PHASE_REQUEST_BODY |
                                 GD_PHASE_RESPONSE_HEAD | GD_PHASE_RESPONSE_BODY,
                             dispatch, e);
}

void gd_engine_on_event(const struct gd_proxy_event *ev, void *ud)
{
    gd_engine *e = ud;
    struct rev *r = e->cur;
    for (struct rev *l = e->live; ev->tag && l; l = l->next)
        if (!strcmp(l->hash, ev->tag))
            r = l;
    gd_egress_on_event(ev, &r->eg);
}

/* ---- trying a request without a VM ---- */

static int add_headers(gd_txn *t, int resp, const char *const *h, struct gd_err *err)
{
    for (; h && *h; h++) {
        const char *c = strchr(*h, ':');
        if (!c || c == *h)
            return gd_err_set(err, -EINVAL, "header '%s' is not 'Name: value'", *h);
        char name[256];
        snprintf(name, sizeof(name), "%.*s", (int)(c - *h), *h);
        c++;
        while (*c == ' ')
            c++;
        if (gd_txn_add_header(t, resp, name, c))
            return gd_err_set(err, -ENOMEM, "out of memory");
    }
    return 0;
}

int gd_engine_try(gd_engine *e, const struct gd_engine_trial *tr, gd_txn **out, struct gd_err *err)
{
    *out = NULL;
    const char *u = tr->url;
    const char *scheme = !strncasecmp(u, "https://", 8)  ? "https"
                         : !strncasecmp(u, "http://", 7) ? "http"
                                                         : NULL;
    if (!scheme)
        return gd_err_set(err, -EINVAL, "URL '%s' must start with http:// or https://", u);
    u += strlen(scheme) + 3;
    size_t hl = strcspn(u, "/?#");
    char hostport[300], host[300];
    snprintf(hostport, sizeof(hostport), "%.*s", (int)hl, u);
    const char *target = u[hl] == '/' ? u + hl : u[hl] == '?' ? NULL : "/";
    char tbuf[2048];
    if (!target) {
        snprintf(tbuf, sizeof(tbuf), "/%s", u + hl);
        target = tbuf;
    }
    unsigned port = !strcmp(scheme, "https") ? 443 : 80;
    char *colon = hostport[0] == '[' ? strstr(hostport, "]:") : strrchr(hostport, ':');
    if (colon) {
        char *p = colon + (hostport[0] == '[' ? 2 : 1);
        port = (unsigned)strtoul(p, NULL, 10);
        if (port == 0 || port > 65535)
            return gd_err_set(err, -EINVAL, "URL '%s': bad port", tr->url);
        *(hostport[0] == '[' ? colon + 1 : colon) = 0;
    }
    snprintf(host, sizeof(host), "%s", hostport);
    if (host[0] == '[') {
        memmove(host, host + 1, strlen(host));
        host[strcspn(host, "]")] = 0;
    }
    if (!host[0])
        return gd_err_set(err, -EINVAL, "URL '%s' has no host", tr->url);
    gd_txn *t = gd_txn_new_detached(tr->method, scheme, host, port, target);
    if (!t)
        return gd_err_set(err, -ENOMEM, "out of memory");
    int rc;
    if ((rc = add_headers(t, 0, tr->headers, err))) {
        gd_txn_free_detached(t);
        return rc;
    }
    if (!gd_txn_header(t, 0, "host"))
        gd_txn_add_header(t, 0, "Host", hostport);
    enum gd_decision d = dispatch(t, GD_PHASE_REQUEST_HEAD, e);
    if (d == GD_CONTINUE && tr->addr) {
        gd_txn_set_addr(t, tr->addr);
        d = dispatch(t, GD_PHASE_CONNECT, e);
    }
    if (d == GD_CONTINUE && tr->response_status > 0) {
        gd_txn_set_response(t, tr->response_status);
        if ((rc = add_headers(t, 1, tr->resp_headers, err))) {
            gd_txn_free_detached(t);
            return rc;
        }
        dispatch(t, GD_PHASE_RESPONSE_HEAD, e);
    }
    gd_txn_set_hook_name(t, NULL);
    *out = t;
    return 0;
}

/* ---- watching ---- */

static void reload_now(gd_engine *e, const char *why)
{
    struct gd_err err = {{0}};
    int ok = gd_engine_reload(e, &err) == 0;
    if (!ok)
        gd__engine_log(e, "policy reload (%s) rejected, revision %s stays: %s", why, e->cur->hash,
                       err.msg);
    else if (!e->quiet)
        gd__engine_log(e, "policy reloaded (%s): revision %s", why, e->cur->hash);
    if (e->on_reload)
        e->on_reload(e->log_ud, ok, e->cur->hash, ok ? NULL : err.msg);
    if (e->watching) {
        gd_engine_unwatch(e);
        gd_engine_watch(e, e->loop);
    }
}

static void on_debounce(uv_timer_t *t)
{
    reload_now(t->data, "file changed");
}

static void on_sighup(uv_signal_t *s, int sig)
{
    (void)sig;
    reload_now(s->data, "SIGHUP");
}

static void on_fs(uv_fs_event_t *h, const char *file, int events, int status)
{
    (void)events;
    gd_engine *e = h->data;
    if (status < 0 || !file)
        return;
    size_t n = strlen(file);
    int ours = (n > 4 && !strcmp(file + n - 4, ".lua")) || (n > 3 && !strcmp(file + n - 3, ".so"));
    if (ours)
        uv_timer_start(&e->debounce, on_debounce, 100, 0);
}

static void watch_close_cb(uv_handle_t *h)
{
    struct watch *w = (struct watch *)h;
    free(w->dir);
    free(w);
}

static void watch_dir(gd_engine *e, const char *dir)
{
    for (size_t i = 0; i < e->nw; i++)
        if (!strcmp(e->w[i]->dir, dir))
            return;
    struct watch **q = realloc(e->w, (e->nw + 1) * sizeof(*q));
    if (!q)
        return;
    e->w = q;
    struct watch *w = calloc(1, sizeof(*w));
    if (!w || !(w->dir = strdup(dir))) {
        free(w);
        return;
    }
    uv_fs_event_init(e->loop, &w->h);
    w->h.data = e;
    if (uv_fs_event_start(&w->h, on_fs, dir, 0)) {
        uv_close((uv_handle_t *)&w->h, watch_close_cb);
        return;
    }
    q[e->nw++] = w;
}

int gd_engine_watch(gd_engine *e, uv_loop_t *loop)
{
    if (!e->loop) {
        e->loop = loop;
        uv_timer_init(loop, &e->debounce);
        e->debounce.data = e;
        uv_signal_init(loop, &e->sig);
        e->sig.data = e;
    }
    uv_signal_start(&e->sig, on_sighup, SIGHUP);
    e->watching = 1;
    if (e->cur->lua) {
        size_t n;
        const char *const *files = gd_lua_files(e->cur->lua, &n);
        for (size_t i = 0; i < n; i++) {
            char dir[PATH_MAX];
            snprintf(dir, sizeof(dir), "%s", files[i]);
            char *s = strrchr(dir, '/');
            if (s)
                *s = 0;
            else
                snprintf(dir, sizeof(dir), ".");
            watch_dir(e, dir);
        }
    }
    for (char **d = e->plugin_dirs; d && *d; d++) {
        struct stat st;
        if (stat(*d, &st) == 0 && S_ISDIR(st.st_mode))
            watch_dir(e, *d);
    }
    return 0;
}

static void noop_close(uv_handle_t *h)
{
    (void)h;
}

void gd_engine_unwatch(gd_engine *e)
{
    for (size_t i = 0; i < e->nw; i++) {
        uv_fs_event_stop(&e->w[i]->h);
        uv_close((uv_handle_t *)&e->w[i]->h, watch_close_cb);
    }
    e->nw = 0;
    if (!e->loop)
        return;
    uv_signal_stop(&e->sig);
    e->watching = 0;
}

void gd_engine_close(gd_engine *e)
{
    gd_engine_vfs_stop(e);
    gd_engine_unwatch(e);
    if (e->loop) {
        uv_timer_stop(&e->debounce);
        uv_close((uv_handle_t *)&e->debounce, noop_close);
        uv_close((uv_handle_t *)&e->sig, noop_close);
        e->loop = NULL;
    }
}
