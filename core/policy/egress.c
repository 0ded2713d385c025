/* egress.c - command-line egress policy and the built-in hooks (see egress.h). */
#define _GNU_SOURCE
#include "policy/egress.h"

#include "base/pattern.h"
#include "base/text.h"
#include "dns/addr.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

static int push_str(char ***v, size_t *n, const char *s)
{
    char **q = realloc(*v, (*n + 2) * sizeof(*q));
    if (!q)
        return -ENOMEM;
    *v = q;
    if (!(q[*n] = strdup(s)))
        return -ENOMEM;
    (*n)++;
    q[*n] = NULL;
    return 0;
}

static int parse_port(const char *s, unsigned *port)
{
    char *end;
    unsigned long v = strtoul(s, &end, 10);
    if (!*s || *end || !v || v > 65535)
        return -1;
    *port = (unsigned)v;
    return 0;
}

static void rule_free(struct gd_allow_rule *r)
{
    free(r->text);
    free(r->method);
    free(r->host);
    free(r->path);
}

static int parse_rule(const char *text, struct gd_allow_rule *r, struct gd_err *err)
{
    memset(r, 0, sizeof(*r));
    const char *p = text;
    const char *sp = strchr(p, ' ');
    if (sp) {
        for (const char *c = p; c < sp; c++)
            if (!isupper((unsigned char)*c))
                return gd_err_set(err, -EINVAL, "allow rule '%s': method must be uppercase", text);
        if (sp == p)
            return gd_err_set(err, -EINVAL, "allow rule '%s': no method before the space", text);
        if (!(r->method = strndup(p, (size_t)(sp - p))))
            return gd_err_set(err, -ENOMEM, "out of memory");
        p = sp + 1;
    }
    const char *slash = strchr(p, '/');
    char hostport[300];
    size_t hl = slash ? (size_t)(slash - p) : strlen(p);
    if (hl >= sizeof(hostport) || !hl)
        return gd_err_set(err, -EINVAL, "allow rule '%s': no host", text);
    memcpy(hostport, p, hl);
    hostport[hl] = 0;
    char *colon = strrchr(hostport, ':');
    if (hostport[0] == '[') { /* [v6]:port */
        char *rb = strchr(hostport, ']');
        if (!rb || (rb[1] && rb[1] != ':'))
            return gd_err_set(err, -EINVAL, "allow rule '%s': bad [address]", text);
        colon = rb[1] == ':' ? rb + 1 : NULL;
        memmove(hostport, hostport + 1, strlen(hostport));
        rb--;
        *rb = 0;
        if (colon)
            colon--;
    }
    if (colon) {
        *colon = 0;
        if (parse_port(colon + 1, &r->port))
            return gd_err_set(err, -EINVAL, "allow rule '%s': bad port", text);
    }
    for (char *c = hostport; *c; c++)
        *c = (char)tolower((unsigned char)*c);
    if (gd_host_pattern_check(hostport))
        return gd_err_set(err, -EINVAL,
                          "allow rule '%s': host must be a name, *.name or * (letters, digits, "
                          "'-', '.')",
                          text);
    r->host = strdup(hostport);
    r->path = slash ? strdup(slash) : NULL;
    r->text = strdup(text);
    if (!r->host || !r->text || (slash && !r->path))
        return gd_err_set(err, -ENOMEM, "out of memory");
    return 0;
}

/* Makes room for one more element of an array of elements of size sz. */
static void *grow(void *v, size_t n, size_t sz)
{
    return realloc(v, (n + 1) * sz);
}

int gd_egress_allow(struct gd_egress *e, const char *rule, struct gd_err *err)
{
    struct gd_allow_rule r, *q = NULL;
    int rc = parse_rule(rule, &r, err);
    if (!rc && !(q = grow(e->allow, e->nallow, sizeof(*q))))
        rc = gd_err_set(err, -ENOMEM, "out of memory");
    if (rc) {
        rule_free(&r);
        return rc;
    }
    e->allow = q;
    q[e->nallow++] = r;
    return 0;
}

int gd_egress_allow_internal(struct gd_egress *e, const char *host_pattern, struct gd_err *err)
{
    if (gd_host_pattern_check(host_pattern))
        return gd_err_set(err, -EINVAL,
                          "allow-internal '%s': not a host pattern (name, *.name or *)",
                          host_pattern);
    return push_str(&e->internal, &e->ninternal, host_pattern)
               ? gd_err_set(err, -ENOMEM, "out of memory")
               : 0;
}

int gd_egress_secret(struct gd_egress *e, const char *name, const char *hosts, const char *value,
                     struct gd_err *err)
{
    for (size_t k = 0; k < e->nsecrets; k++)
        if (!strcmp(e->secrets[k].name, name))
            return gd_err_set(err, -EINVAL, "secret %s given twice", name);
    struct gd_secret s, *q = NULL;
    int rc = gd_secret_init(&s, name, hosts, value, err);
    if (rc)
        return rc;
    if (!(q = grow(e->secrets, e->nsecrets, sizeof(*q)))) {
        gd_secret_free(&s);
        return gd_err_set(err, -ENOMEM, "out of memory");
    }
    e->secrets = q;
    q[e->nsecrets++] = s;
    return 0;
}

int gd_egress_tcp_map(struct gd_egress *e, const char *spec, struct gd_err *err)
{
    char tmp[600];
    if (strlen(spec) >= sizeof(tmp))
        return gd_err_set(err, -EINVAL, "tcp map '%.40s...': too long", spec);
    snprintf(tmp, sizeof(tmp), "%s", spec);
    char *eq = strchr(tmp, '=');
    if (eq)
        *eq = 0;
    struct gd_tcp_map m = {0}, *q = NULL;
    char *c = strrchr(tmp, ':');
    if (!c || parse_port(c + 1, &m.port))
        return gd_err_set(err, -EINVAL, "tcp map '%s': wants HOST:PORT[=UPHOST:UPPORT]", spec);
    *c = 0;
    if (gd_host_pattern_check(tmp) || strchr(tmp, '*'))
        return gd_err_set(err, -EINVAL, "tcp map '%s': bad host", spec);
    if (eq) {
        char *c2 = strrchr(eq + 1, ':');
        if (!c2 || c2 == eq + 1 || parse_port(c2 + 1, &m.up_port))
            return gd_err_set(err, -EINVAL, "tcp map '%s': bad upstream", spec);
        *c2 = 0;
    } else {
        m.up_port = m.port;
    }
    m.host = strdup(tmp);
    m.up_host = strdup(eq ? eq + 1 : tmp);
    if (!m.host || !m.up_host || !(q = grow(e->maps, e->nmaps, sizeof(*q)))) {
        free(m.host);
        free(m.up_host);
        return gd_err_set(err, -ENOMEM, "out of memory");
    }
    e->maps = q;
    q[e->nmaps++] = m;
    return 0;
}

int gd_egress_dns(struct gd_egress *e, const char *mode, struct gd_err *err)
{
    static const char *const modes[] = {
        [GD_DNS_SYNTHETIC] = "synthetic", [GD_DNS_TRUSTED] = "trusted", [GD_DNS_OPEN] = "open"};
    for (size_t k = 0; k < sizeof(modes) / sizeof(modes[0]); k++)
        if (!strcmp(mode, modes[k])) {
            e->dns = (enum gd_dns_mode)k;
            return 0;
        }
    return gd_err_set(err, -EINVAL, "DNS mode '%s': wants synthetic, trusted or open", mode);
}

int gd_egress_resolve(struct gd_egress *e, const char *name_addr, struct gd_err *err)
{
    /* NAME:ADDR (like curl's --resolve without the port), kept as NAME=ADDR */
    const char *c = strchr(name_addr, ':');
    if (!c || c == name_addr || !c[1])
        return gd_err_set(err, -EINVAL, "resolve '%s': wants NAME:ADDRESS", name_addr);
    char *kv;
    if (asprintf(&kv, "%.*s=%s", (int)(c - name_addr), name_addr, c + 1) < 0)
        return gd_err_set(err, -ENOMEM, "out of memory");
    int rc = push_str(&e->resolve, &e->nresolve, kv);
    free(kv);
    return rc ? gd_err_set(err, -ENOMEM, "out of memory") : 0;
}

/* Replaces *slot by a copy of a non-empty path. */
static int set_path(char **slot, const char *what, const char *path, struct gd_err *err)
{
    if (!*path)
        return gd_err_set(err, -EINVAL, "%s: the path is empty", what);
    char *d = strdup(path);
    if (!d)
        return gd_err_set(err, -ENOMEM, "out of memory");
    free(*slot);
    *slot = d;
    return 0;
}

int gd_egress_upstream_ca(struct gd_egress *e, const char *path, struct gd_err *err)
{
    return set_path(&e->upstream_ca, "upstream CA", path, err);
}

int gd_egress_audit(struct gd_egress *e, const char *path, struct gd_err *err)
{
    return set_path(&e->audit_path, "audit file", path, err);
}

int gd_egress_http_limit(struct gd_egress *e, const char *name, const char *value,
                         struct gd_err *err)
{
    static const char *const names[] = {"head_ms", "keepalive_ms", "body_ms", "max_flows",
                                        "buffer_total"};
    size_t k = 0;
    while (k < 5 && strcmp(name, names[k]))
        k++;
    if (k == 5)
        return gd_err_set(err, -EINVAL,
                          "HTTP limit '%s': wants head_ms, keepalive_ms, body_ms, max_flows or "
                          "buffer_total",
                          name);
    unsigned long long max = k == 4 ? 1ull << 40 : 0xffffffffull;
    char *end = NULL;
    unsigned long long n = isdigit((unsigned char)*value) ? strtoull(value, &end, 10) : 0;
    if (!n || *end || n > max)
        return gd_err_set(err, -EINVAL, "HTTP limit %s=%s: wants a whole number from 1 to %llu",
                          name, value, max);
    if (k == 0)
        e->head_ms = (unsigned)n;
    else if (k == 1)
        e->keepalive_ms = (unsigned)n;
    else if (k == 2)
        e->body_ms = (unsigned)n;
    else if (k == 3)
        e->max_flows = (unsigned)n;
    else
        e->buffer_total = (size_t)n;
    return 0;
}

void gd_egress_audit_fs(struct gd_egress *e, int on)
{
    e->audit_fs = !!on;
}

void gd_egress_secrets_in_query(struct gd_egress *e, int on)
{
    e->secrets_in_query = !!on;
}

/* ---- copy and digest ---- */

static char *dup_or_null(const char *s, int *oom)
{
    char *d = s ? strdup(s) : NULL;
    *oom |= s && !d;
    return d;
}

int gd_egress_copy(struct gd_egress *dst, const struct gd_egress *src, struct gd_err *err)
{
    int oom = 0;
    dst->dns = src->dns;
    dst->secrets_in_query = src->secrets_in_query;
    dst->audit_fs = src->audit_fs;
    memcpy(dst->vm_id, src->vm_id, sizeof(dst->vm_id));
    memcpy(dst->bundle_name, src->bundle_name, sizeof(dst->bundle_name));
    dst->bundle_revision = src->bundle_revision;
    memcpy(dst->bundle_signers, src->bundle_signers, sizeof(dst->bundle_signers));
    dst->quiet = src->quiet;
    dst->head_ms = src->head_ms;
    dst->keepalive_ms = src->keepalive_ms;
    dst->body_ms = src->body_ms;
    dst->max_flows = src->max_flows;
    dst->buffer_total = src->buffer_total;
    dst->audit_path = dup_or_null(src->audit_path, &oom);
    dst->upstream_ca = dup_or_null(src->upstream_ca, &oom);
    if (src->nallow && !(dst->allow = calloc(src->nallow, sizeof(*dst->allow))))
        oom = 1;
    for (; !oom && dst->nallow < src->nallow; dst->nallow++) {
        const struct gd_allow_rule *r = &src->allow[dst->nallow];
        struct gd_allow_rule *d = &dst->allow[dst->nallow];
        d->port = r->port;
        d->text = dup_or_null(r->text, &oom);
        d->method = dup_or_null(r->method, &oom);
        d->host = dup_or_null(r->host, &oom);
        d->path = dup_or_null(r->path, &oom);
    }
    for (size_t i = 0; !oom && i < src->ninternal; i++)
        oom = push_str(&dst->internal, &dst->ninternal, src->internal[i]) != 0;
    if (!oom && src->nsecrets && !(dst->secrets = calloc(src->nsecrets, sizeof(*dst->secrets))))
        oom = 1;
    for (; !oom && dst->nsecrets < src->nsecrets; dst->nsecrets++)
        oom = gd_secret_copy(&dst->secrets[dst->nsecrets], &src->secrets[dst->nsecrets]) != 0;
    if (!oom && src->nmaps && !(dst->maps = calloc(src->nmaps, sizeof(*dst->maps))))
        oom = 1;
    for (; !oom && dst->nmaps < src->nmaps; dst->nmaps++) {
        const struct gd_tcp_map *m = &src->maps[dst->nmaps];
        struct gd_tcp_map *d = &dst->maps[dst->nmaps];
        d->port = m->port;
        d->up_port = m->up_port;
        d->host = dup_or_null(m->host, &oom);
        d->up_host = dup_or_null(m->up_host, &oom);
    }
    for (size_t i = 0; !oom && i < src->nresolve; i++)
        oom = push_str(&dst->resolve, &dst->nresolve, src->resolve[i]) != 0;
    if (!oom)
        oom = gd_ssh_conf_copy(&dst->ssh, &src->ssh) != 0;
    if (oom) {
        gd_egress_free(dst);
        return gd_err_set(err, -ENOMEM, "out of memory");
    }
    return 0;
}

struct digest {
    void (*update)(void *ctx, const void *p, size_t n);
    void *ctx;
};

#define N(x) ((unsigned long long)(x))

/* Feeds fields by fmt, 's' a string (or NULL), 'n' an N() number, each prefixed
 * ("5:hello", "-" for none, "42;") so that no two field lists feed the same bytes. */
static void put(const struct digest *d, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    for (const char *f = fmt; *f; f++) {
        char b[32];
        const char *s = NULL;
        int n;
        if (*f == 'n')
            n = snprintf(b, sizeof(b), "%llu;", va_arg(ap, unsigned long long));
        else if ((s = va_arg(ap, const char *)))
            n = snprintf(b, sizeof(b), "%zu:", strlen(s));
        else
            n = snprintf(b, sizeof(b), "-");
        d->update(d->ctx, b, (size_t)n);
        if (s)
            d->update(d->ctx, s, strlen(s));
    }
    va_end(ap);
}

void gd_egress_digest(const struct gd_egress *e, void (*update)(void *ctx, const void *p, size_t n),
                      void *ctx)
{
    const struct digest d = {update, ctx};
    put(&d, "sn", "allow", N(e->nallow));
    for (size_t i = 0; i < e->nallow; i++) {
        const struct gd_allow_rule *r = &e->allow[i];
        put(&d, "ssns", r->method, r->host, N(r->port), r->path);
    }
    put(&d, "sn", "internal", N(e->ninternal));
    for (size_t i = 0; i < e->ninternal; i++)
        put(&d, "s", e->internal[i]);
    put(&d, "sn", "secrets", N(e->nsecrets)); /* names and scopes; never values, placeholders */
    for (size_t i = 0; i < e->nsecrets; i++) {
        const struct gd_secret *s = &e->secrets[i];
        put(&d, "sn", s->name, N(s->nhosts));
        for (size_t k = 0; k < s->nhosts; k++)
            put(&d, "sn", s->hosts[k], N(s->cleartext[k]));
    }
    put(&d, "sn", "tcp_map", N(e->nmaps));
    for (size_t i = 0; i < e->nmaps; i++) {
        const struct gd_tcp_map *m = &e->maps[i];
        put(&d, "snsn", m->host, N(m->port), m->up_host, N(m->up_port));
    }
    put(&d, "sn", "resolve", N(e->nresolve));
    for (size_t i = 0; i < e->nresolve; i++)
        put(&d, "s", e->resolve[i]);
    put(&d, "snnssnnnnn", "settings", N(e->dns), N(e->secrets_in_query), e->upstream_ca,
        e->audit_path, N(e->head_ms), N(e->keepalive_ms), N(e->body_ms), N(e->max_flows),
        N(e->buffer_total));
    if (e->ssh.nrules || e->ssh.nkeys || e->ssh.nknown || e->ssh.agent || e->ssh.max_conns ||
        e->ssh.connect_ms || e->ssh.handshake_ms || e->ssh.idle_ms)
        gd_ssh_conf_digest(&e->ssh, update, ctx);
}

#undef N

/* ---- the command line ---- */

/* --host-secret NAME@HOST[,HOST...][=VALUE] */
static int flag_host_secret(struct gd_egress *e, const char *v, struct gd_err *err)
{
    const char *at = strchr(v, '@');
    if (!at || at == v)
        return gd_err_set(err, -EINVAL, "--host-secret wants NAME@HOST[,HOST...][=VALUE], not '%s'",
                          v);
    const char *eq = strchr(at, '=');
    char *name = strndup(v, (size_t)(at - v));
    char *hosts = eq ? strndup(at + 1, (size_t)(eq - at - 1)) : strdup(at + 1);
    int rc = name && hosts ? gd_egress_secret(e, name, hosts, eq ? eq + 1 : NULL, err)
                           : gd_err_set(err, -ENOMEM, "out of memory");
    free(name);
    free(hosts);
    return rc;
}

/* --http-limit NAME=VALUE */
static int flag_http_limit(struct gd_egress *e, const char *v, struct gd_err *err)
{
    const char *eq = strchr(v, '=');
    if (!eq)
        return gd_err_set(err, -EINVAL, "--http-limit wants NAME=NUMBER, not '%s'", v);
    char name[64];
    snprintf(name, sizeof(name), "%.*s", (int)(eq - v), v);
    return gd_egress_http_limit(e, name, eq + 1, err);
}

static int flag_secrets_in_query(struct gd_egress *e, const char *v, struct gd_err *err)
{
    (void)v, (void)err;
    gd_egress_secrets_in_query(e, 1);
    return 0;
}

static int flag_audit_fs(struct gd_egress *e, const char *v, struct gd_err *err)
{
    (void)v, (void)err;
    gd_egress_audit_fs(e, 1);
    return 0;
}

static int flag_ssh_allow(struct gd_egress *e, const char *v, struct gd_err *err)
{
    return gd_ssh_conf_allow(&e->ssh, v, err);
}

static int flag_ssh_key(struct gd_egress *e, const char *v, struct gd_err *err)
{
    return gd_ssh_conf_key(&e->ssh, v, err);
}

static int flag_ssh_agent(struct gd_egress *e, const char *v, struct gd_err *err)
{
    (void)v, (void)err;
    gd_ssh_conf_agent(&e->ssh, 1);
    return 0;
}

static int flag_ssh_known(struct gd_egress *e, const char *v, struct gd_err *err)
{
    return gd_ssh_conf_known_hosts(&e->ssh, v, err);
}

static int flag_ssh_limit(struct gd_egress *e, const char *v, struct gd_err *err)
{
    return gd_ssh_conf_limit(&e->ssh, v, err);
}

static const struct egress_flag {
    const char *name;
    int (*set)(struct gd_egress *e, const char *value, struct gd_err *err);
    int takes_value;
} egress_flags[] = {
    {"--allow-host", gd_egress_allow, 1},     {"--allow-internal", gd_egress_allow_internal, 1},
    {"--host-secret", flag_host_secret, 1},   {"--secrets-in-query", flag_secrets_in_query, 0},
    {"--tcp-map", gd_egress_tcp_map, 1},      {"--dns", gd_egress_dns, 1},
    {"--resolve", gd_egress_resolve, 1},      {"--upstream-ca", gd_egress_upstream_ca, 1},
    {"--audit", gd_egress_audit, 1},          {"--http-limit", flag_http_limit, 1},
    {"--audit-fs", flag_audit_fs, 0},         {"--ssh-allow", flag_ssh_allow, 1},
    {"--ssh-key", flag_ssh_key, 1},           {"--ssh-agent", flag_ssh_agent, 0},
    {"--ssh-known-hosts", flag_ssh_known, 1}, {"--ssh-limit", flag_ssh_limit, 1},
};

int gd_egress_flag(struct gd_egress *e, int argc, char **argv, int *i, struct gd_err *err)
{
    for (size_t k = 0; k < sizeof(egress_flags) / sizeof(egress_flags[0]); k++) {
        const struct egress_flag *f = &egress_flags[k];
        const char *v = NULL;
        if (f->takes_value && !strcmp(argv[*i], f->name) && *i + 1 >= argc)
            return gd_err_set(err, -EINVAL, "%s needs a value", f->name);
        if (!f->takes_value ? strcmp(argv[*i], f->name) != 0
                            : !(v = gd_flag_value(argc, argv, i, f->name)))
            continue;
        int rc = f->set(e, v, err);
        return rc < 0 ? rc : 1;
    }
    return 0;
}

void gd_egress_proxy_limits(const struct gd_egress *e, struct gd_proxy_opts *o)
{
    o->head_ms = e->head_ms;
    o->keepalive_ms = e->keepalive_ms;
    o->body_ms = e->body_ms;
    o->max_flows = e->max_flows;
    o->max_buffer_total = e->buffer_total;
}

int gd_egress_finish(struct gd_egress *e, struct gd_err *err)
{
    /* a secret must never travel where we cannot substitute or check it */
    for (size_t i = 0; i < e->nsecrets; i++)
        for (size_t k = 0; k < e->nmaps; k++)
            if (gd_secret_in_scope(&e->secrets[i], e->maps[k].host))
                return gd_err_set(err, -EINVAL,
                                  "secret %s is scoped to %s, which --tcp-map sends as raw TCP "
                                  "(no interception, so the secret could not be substituted)",
                                  e->secrets[i].name, e->maps[k].host);
    if (e->audit_path && !e->audit) {
        e->audit = fopen(e->audit_path, "ae");
        if (!e->audit)
            return gd_err_set(err, -errno, "cannot open audit file %s: %s", e->audit_path,
                              strerror(errno));
        setvbuf(e->audit, NULL, _IOLBF, 0);
    }
    if (!e->vm_id[0]) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        snprintf(e->vm_id, sizeof(e->vm_id), "%lx-%x", (long)ts.tv_sec, (unsigned)getpid());
    }
    return 0;
}

void gd_egress_free(struct gd_egress *e)
{
    for (size_t i = 0; i < e->nallow; i++)
        rule_free(&e->allow[i]);
    free(e->allow);
    for (size_t i = 0; i < e->ninternal; i++)
        free(e->internal[i]);
    free(e->internal);
    for (size_t i = 0; i < e->nsecrets; i++)
        gd_secret_free(&e->secrets[i]);
    free(e->secrets);
    for (size_t i = 0; i < e->nmaps; i++) {
        free(e->maps[i].host);
        free(e->maps[i].up_host);
    }
    free(e->maps);
    for (size_t i = 0; i < e->nresolve; i++)
        free(e->resolve[i]);
    free(e->resolve);
    free(e->audit_path);
    free(e->upstream_ca);
    if (e->audit)
        fclose(e->audit);
    gd_ssh_conf_free(&e->ssh);
    memset(e, 0, sizeof(*e));
}

/* ---- hooks ---- */

/* ambiguous: the target's path is one servers disagree on (no path rule matches it) */
static int rule_matches(const struct gd_allow_rule *r, gd_txn *t, int ambiguous)
{
    const char *scheme = gd_txn_scheme(t);
    unsigned port = gd_txn_port(t);
    if (!gd_host_match(r->host, gd_txn_host(t)))
        return 0;
    if (r->port) {
        if (r->port != port)
            return 0;
    } else {
        unsigned dflt = !strcmp(scheme, "https") ? 443 : !strcmp(scheme, "http") ? 80 : 0;
        if (port != dflt)
            return 0;
    }
    if (r->method && strcmp(r->method, gd_txn_method(t)))
        return 0;
    if (r->path && (ambiguous || !gd_path_match(r->path, gd_txn_target(t))))
        return 0; /* an encoded '/' or '\\' means different paths to different servers */
    return 1;
}

enum gd_decision gd_egress_hook_allow(gd_txn *t, enum gd_phase ph, void *ud)
{
    (void)ph;
    struct gd_egress *e = ud;
    if (!strcmp(gd_txn_scheme(t), "tcp"))
        return GD_CONTINUE; /* mapped raw TCP: the --tcp-map rule is the allowance */
    int ambiguous = gd_http_path_ambiguous(gd_txn_target(t));
    for (size_t i = 0; i < e->nallow; i++)
        if (rule_matches(&e->allow[i], t, ambiguous)) {
            char rule[400];
            snprintf(rule, sizeof(rule), "allow-host %s", e->allow[i].text);
            gd_txn_set_rule(t, rule);
            return GD_CONTINUE;
        }
    if (!e->nallow)
        return gd_txn_deny(t, 403, "default-deny",
                           "no --allow-host rule: this sandbox has no network egress");
    return gd_txn_deny(
        t, 403, "allow-host", "no --allow-host rule matches %s %s://%s:%u%s%s", gd_txn_method(t),
        gd_txn_scheme(t), gd_txn_host(t), gd_txn_port(t), gd_txn_target(t),
        ambiguous ? " (an encoded '/', '\\' or NUL in a path never matches a path rule)" : "");
}

int gd_egress_addr_allowed(const struct gd_egress *e, const char *name, const char *addr)
{
    return !gd_addr_internal_str(addr) || gd_egress_internal_allowed(e, name);
}

int gd_egress_internal_allowed(const struct gd_egress *e, const char *name)
{
    for (size_t i = 0; name && i < e->ninternal; i++)
        if (gd_host_match(e->internal[i], name))
            return 1;
    return 0;
}

const char *gd_egress_resolved(const struct gd_egress *e, const char *name)
{
    size_t nl = strlen(name);
    for (size_t i = 0; i < e->nresolve; i++)
        if (!strncasecmp(e->resolve[i], name, nl) && e->resolve[i][nl] == '=')
            return e->resolve[i] + nl + 1;
    return NULL;
}

enum gd_decision gd_egress_hook_internal(gd_txn *t, enum gd_phase ph, void *ud)
{
    (void)ph;
    const char *host = gd_txn_host(t), *addr = gd_txn_addr(t);
    if (gd_egress_addr_allowed(ud, host, addr))
        return GD_CONTINUE;
    return gd_txn_deny(t, 403, "internal-ranges",
                       "%s resolves to %s, a %s address (--allow-internal %s to permit)", host,
                       addr, gd_addr_internal_str(addr), host);
}

static enum gd_decision secret_denied(gd_txn *t, const struct gd_secret *s, int rc)
{
    if (rc == -EPROTO)
        return gd_txn_deny(t, 403, "secret-cleartext",
                           "secret %s is only sent over HTTPS, not to http://%s (--host-secret "
                           "%s@http://%s allows cleartext)",
                           s->name, gd_txn_host(t), s->name, gd_txn_host(t));
    char hosts[300] = "";
    size_t k = 0;
    for (size_t i = 0; i < s->nhosts && k < sizeof(hosts) - 1; i++)
        k += (size_t)snprintf(hosts + k, sizeof(hosts) - k, "%s%s", i ? "," : "", s->hosts[i]);
    return gd_txn_deny(t, 403, "secret-scope", "secret %s may only be sent to %s, not %s", s->name,
                       hosts, gd_txn_host(t));
}

enum gd_decision gd_egress_hook_secrets(gd_txn *t, enum gd_phase ph, void *ud)
{
    (void)ph;
    struct gd_egress *e = ud;
    if (!e->nsecrets)
        return GD_CONTINUE;
    const char *host = gd_txn_host(t);
    int tls = !strcmp(gd_txn_scheme(t), "https");
    size_t n = gd_txn_header_count(t, 0);
    for (size_t i = 0; i < n; i++) {
        const char *name, *value;
        gd_txn_header_at(t, 0, i, &name, &value);
        int basic = !strcasecmp(name, "authorization");
        char *out = NULL;
        const struct gd_secret *which = NULL;
        int rc = gd_secrets_apply(e->secrets, e->nsecrets, host, tls, value, basic, &out, &which);
        if (rc == -EACCES || rc == -EPROTO)
            return secret_denied(t, which, rc);
        if (rc)
            return gd_txn_deny(t, 500, "secrets", "out of memory");
        if (out) {
            rc = gd_txn_set_header_at(t, 0, i, out);
            memset(out, 0, strlen(out));
            free(out);
            if (rc)
                return gd_txn_deny(t, 500, "secrets", "out of memory");
        }
    }
    /* the target: substituted only when opted in, but always checked for scope */
    const char *target = gd_txn_target(t);
    char *out = NULL;
    const struct gd_secret *which = NULL;
    int rc = gd_secrets_apply(e->secrets, e->nsecrets, host, 1, target, 0, &out, &which);
    if (rc == -EACCES)
        return secret_denied(t, which, rc);
    free(out);
    const char *q = strchr(target, '?');
    if (e->secrets_in_query && q) {
        /* only the query part changes */
        out = NULL;
        rc = gd_secrets_apply(e->secrets, e->nsecrets, host, tls, q, 0, &out, &which);
        if (rc == -EPROTO)
            return secret_denied(t, which, rc);
        if (out) {
            size_t pl = (size_t)(q - target), ol = strlen(out);
            char *nt = malloc(pl + ol + 1);
            if (nt) {
                memcpy(nt, target, pl);
                memcpy(nt + pl, out, ol + 1);
                gd_txn_set_target(t, nt);
                memset(nt, 0, pl + ol);
                free(nt);
            }
            memset(out, 0, ol);
            free(out);
        }
    }
    return GD_CONTINUE;
}

int gd_egress_install(struct gd_egress *e, gd_proxy *px)
{
    int rc;
    if ((rc =
             gd_proxy_add_hook(px, "allow-host", GD_PHASE_REQUEST_HEAD, gd_egress_hook_allow, e)) ||
        (rc = gd_proxy_add_hook(px, "internal-ranges", GD_PHASE_CONNECT, gd_egress_hook_internal,
                                e)) ||
        (rc = gd_proxy_add_hook(px, "secrets", GD_PHASE_REQUEST_HEAD, gd_egress_hook_secrets, e)))
        return rc;
    return 0;
}

/* ---- events ---- */

void gd_egress_on_event(const struct gd_proxy_event *ev, void *ud)
{
    struct gd_egress *e = ud;
    char *path = gd_secrets_redact(e->secrets, e->nsecrets, ev->path ? ev->path : "");
    char *reason = ev->reason ? gd_secrets_redact(e->secrets, e->nsecrets, ev->reason) : NULL;
    if (!e->quiet && (!strcmp(ev->decision, "deny") || !strcmp(ev->decision, "error")))
        fprintf(stderr, "gondolin: %s%s %s %s://%s:%u%s -> %d (%s%s%s)\n",
                !strcmp(ev->decision, "deny") ? "denied" : "failed", ev->ingress ? " ingress" : "",
                ev->method, ev->scheme, ev->host, ev->port, path ? path : "", ev->status,
                ev->rule ? ev->rule : "-", reason ? ": " : "", reason ? reason : "");
    if (e->audit) {
        char ts[40];
        gd_iso_time(ts, sizeof(ts));
        cJSON *o = cJSON_CreateObject();
        if (o) {
            cJSON_AddStringToObject(o, "time", ts);
            cJSON_AddStringToObject(o, "vm", e->vm_id);
            if (ev->tag)
                cJSON_AddStringToObject(o, "policy", ev->tag);
            if (e->bundle_name[0]) {
                cJSON_AddStringToObject(o, "bundle", e->bundle_name);
                cJSON_AddNumberToObject(o, "bundle_revision", (double)e->bundle_revision);
                cJSON_AddStringToObject(o, "bundle_signers", e->bundle_signers);
            }
            if (ev->ingress)
                cJSON_AddStringToObject(o, "direction", "ingress");
            cJSON_AddStringToObject(o, "method", ev->method);
            cJSON_AddStringToObject(o, "scheme", ev->scheme);
            cJSON_AddStringToObject(o, "host", ev->host);
            cJSON_AddNumberToObject(o, "port", ev->port);
            cJSON_AddStringToObject(o, "path", path ? path : "");
            if (ev->addr)
                cJSON_AddStringToObject(o, "addr", ev->addr);
            cJSON_AddStringToObject(o, "decision", ev->decision);
            if (ev->rule)
                cJSON_AddStringToObject(o, "rule", ev->rule);
            else
                cJSON_AddNullToObject(o, "rule");
            if (reason)
                cJSON_AddStringToObject(o, "reason", reason);
            cJSON_AddNumberToObject(o, "status", ev->status);
            cJSON_AddNumberToObject(o, "bytes_up", (double)ev->bytes_up);
            cJSON_AddNumberToObject(o, "bytes_down", (double)ev->bytes_down);
            cJSON_AddNumberToObject(o, "duration_ms", (double)(long)(ev->ms * 1000) / 1000.0);
            char *line = cJSON_PrintUnformatted(o);
            if (line) {
                fprintf(e->audit, "%s\n", line);
                free(line);
            }
            cJSON_Delete(o);
        }
    }
    free(path);
    free(reason);
}

int gd_egress_port_policy(const struct gd_egress *e, const char *name, unsigned port,
                          const char **up_host, unsigned *up_port)
{
    for (size_t i = 0; name && i < e->nmaps; i++)
        if (e->maps[i].port == port && !strcasecmp(e->maps[i].host, name)) {
            *up_host = e->maps[i].up_host;
            *up_port = e->maps[i].up_port;
            return 2;
        }
    if (gd_ssh_conf_rule(&e->ssh, name, port))
        return 3;
    if (port == 80 || port == 443)
        return 1;
    for (size_t i = 0; i < e->nallow; i++)
        if (e->allow[i].port == port && (!name || gd_host_match(e->allow[i].host, name)))
            return 1;
    return 0;
}

int gd_egress_host_allowed(const struct gd_egress *e, const char *name)
{
    for (size_t i = 0; i < e->nallow; i++)
        if (gd_host_match(e->allow[i].host, name))
            return 1;
    for (size_t i = 0; i < e->nmaps; i++)
        if (!strcasecmp(e->maps[i].host, name))
            return 1;
    return gd_ssh_conf_rule(&e->ssh, name, 0) != NULL;
}

char **gd_egress_guest_env(const struct gd_egress *e)
{
    char **v = calloc(e->nsecrets + 1, sizeof(*v));
    for (size_t i = 0; v && i < e->nsecrets; i++)
        if (asprintf(&v[i], "%s=%s", e->secrets[i].name, e->secrets[i].placeholder) < 0)
            v[i] = NULL;
    return v;
}
