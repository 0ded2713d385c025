/* egress.c - command-line egress policy and the built-in hooks (see egress.h). */
#define _GNU_SOURCE
#include "policy/egress.h"

#include "base/pattern.h"
#include "dns/addr.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
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
                return gd_err_set(err, -EINVAL, "--allow-host '%s': method must be uppercase",
                                  text);
        r->method = strndup(p, (size_t)(sp - p));
        p = sp + 1;
    }
    const char *slash = strchr(p, '/');
    char hostport[300];
    size_t hl = slash ? (size_t)(slash - p) : strlen(p);
    if (hl >= sizeof(hostport) || !hl)
        return gd_err_set(err, -EINVAL, "--allow-host '%s': no host", text);
    memcpy(hostport, p, hl);
    hostport[hl] = 0;
    char *colon = strrchr(hostport, ':');
    if (hostport[0] == '[') { /* [v6]:port */
        char *rb = strchr(hostport, ']');
        if (!rb || (rb[1] && rb[1] != ':'))
            return gd_err_set(err, -EINVAL, "--allow-host '%s': bad [address]", text);
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
            return gd_err_set(err, -EINVAL, "--allow-host '%s': bad port", text);
    }
    for (char *c = hostport; *c; c++)
        *c = (char)tolower((unsigned char)*c);
    if (gd_host_pattern_check(hostport))
        return gd_err_set(err, -EINVAL,
                          "--allow-host '%s': host must be a name, *.name or * (letters, "
                          "digits, '-', '.')",
                          text);
    r->host = strdup(hostport);
    r->path = slash ? strdup(slash) : NULL;
    r->text = strdup(text);
    if (!r->host || !r->text || (slash && !r->path))
        return gd_err_set(err, -ENOMEM, "out of memory");
    return 0;
}

static const char *flag_value(int argc, char **argv, int *i, const char *name)
{
    const char *a = argv[*i];
    size_t l = strlen(name);
    if (strncmp(a, name, l))
        return NULL;
    if (a[l] == '=')
        return a + l + 1;
    if (a[l] == 0 && *i + 1 < argc) {
        (*i)++;
        return argv[*i];
    }
    return NULL;
}

int gd_egress_flag(struct gd_egress *e, int argc, char **argv, int *i, struct gd_err *err)
{
    const char *v;
    int rc;
    if (!strcmp(argv[*i], "--secrets-in-query")) {
        e->secrets_in_query = 1;
        return 1;
    }
    if ((v = flag_value(argc, argv, i, "--allow-host"))) {
        struct gd_allow_rule *q = realloc(e->allow, (e->nallow + 1) * sizeof(*q));
        if (!q)
            return gd_err_set(err, -ENOMEM, "out of memory");
        e->allow = q;
        if ((rc = parse_rule(v, &q[e->nallow], err))) {
            rule_free(&q[e->nallow]);
            return rc;
        }
        e->nallow++;
        return 1;
    }
    if ((v = flag_value(argc, argv, i, "--allow-internal"))) {
        if (gd_host_pattern_check(v))
            return gd_err_set(err, -EINVAL, "--allow-internal '%s': not a host pattern", v);
        return push_str(&e->internal, &e->ninternal, v) ? -ENOMEM : 1;
    }
    if ((v = flag_value(argc, argv, i, "--host-secret"))) {
        struct gd_secret *q = realloc(e->secrets, (e->nsecrets + 1) * sizeof(*q));
        if (!q)
            return gd_err_set(err, -ENOMEM, "out of memory");
        e->secrets = q;
        if ((rc = gd_secret_parse(v, &q[e->nsecrets], err)))
            return rc;
        for (size_t k = 0; k < e->nsecrets; k++)
            if (!strcmp(q[k].name, q[e->nsecrets].name)) {
                gd_secret_free(&q[e->nsecrets]);
                return gd_err_set(err, -EINVAL, "secret %s given twice", q[k].name);
            }
        e->nsecrets++;
        return 1;
    }
    if ((v = flag_value(argc, argv, i, "--tcp-map"))) {
        /* HOST:PORT or HOST:PORT=UPHOST:UPPORT */
        char tmp[600];
        snprintf(tmp, sizeof(tmp), "%s", v);
        char *eq = strchr(tmp, '=');
        if (eq)
            *eq = 0;
        struct gd_tcp_map m = {0};
        char *c = strrchr(tmp, ':');
        if (!c || parse_port(c + 1, &m.port))
            return gd_err_set(err, -EINVAL, "--tcp-map wants HOST:PORT[=UPHOST:UPPORT], not '%s'",
                              v);
        *c = 0;
        if (gd_host_pattern_check(tmp) || strchr(tmp, '*'))
            return gd_err_set(err, -EINVAL, "--tcp-map '%s': bad host", v);
        m.host = strdup(tmp);
        if (eq) {
            char *c2 = strrchr(eq + 1, ':');
            if (!c2 || parse_port(c2 + 1, &m.up_port)) {
                free(m.host);
                return gd_err_set(err, -EINVAL, "--tcp-map '%s': bad upstream", v);
            }
            *c2 = 0;
            m.up_host = strdup(eq + 1);
        } else {
            m.up_host = strdup(tmp);
            m.up_port = m.port;
        }
        struct gd_tcp_map *q = realloc(e->maps, (e->nmaps + 1) * sizeof(*q));
        if (!q || !m.host || !m.up_host) {
            free(m.host);
            free(m.up_host);
            return gd_err_set(err, -ENOMEM, "out of memory");
        }
        e->maps = q;
        q[e->nmaps++] = m;
        return 1;
    }
    if ((v = flag_value(argc, argv, i, "--dns"))) {
        if (!strcmp(v, "synthetic"))
            e->dns = GD_DNS_SYNTHETIC;
        else if (!strcmp(v, "trusted"))
            e->dns = GD_DNS_TRUSTED;
        else if (!strcmp(v, "open"))
            e->dns = GD_DNS_OPEN;
        else
            return gd_err_set(err, -EINVAL, "--dns wants synthetic, trusted or open, not '%s'", v);
        return 1;
    }
    if ((v = flag_value(argc, argv, i, "--audit"))) {
        free(e->audit_path);
        e->audit_path = strdup(v);
        return 1;
    }
    if ((v = flag_value(argc, argv, i, "--upstream-ca"))) {
        free(e->upstream_ca);
        e->upstream_ca = strdup(v);
        return 1;
    }
    if ((v = flag_value(argc, argv, i, "--http-limit"))) {
        static const char *const names[] = {"head_ms",   "keepalive_ms", "body_ms",
                                            "max_flows", "buffer_total", NULL};
        const char *eq = strchr(v, '=');
        char *end = NULL;
        unsigned long long n = eq ? strtoull(eq + 1, &end, 10) : 0;
        int k = -1;
        for (int j = 0; eq && names[j]; j++)
            if (strlen(names[j]) == (size_t)(eq - v) && !strncmp(v, names[j], (size_t)(eq - v)))
                k = j;
        if (k < 0 || !eq[1] || *end || !n || n > (k == 4 ? (1ull << 40) : 0xffffffffull))
            return gd_err_set(err, -EINVAL,
                              "--http-limit wants head_ms, keepalive_ms, body_ms, max_flows or "
                              "buffer_total =POSITIVE-NUMBER, not '%s'",
                              v);
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
        return 1;
    }
    if ((v = flag_value(argc, argv, i, "--resolve"))) {
        /* NAME:ADDR (like curl's --resolve without the port) */
        const char *c = strchr(v, ':');
        if (!c || c == v || !c[1])
            return gd_err_set(err, -EINVAL, "--resolve wants NAME:ADDRESS, not '%s'", v);
        char tmp[600];
        snprintf(tmp, sizeof(tmp), "%.*s=%s", (int)(c - v), v, c + 1);
        return push_str(&e->resolve, &e->nresolve, tmp) ? -ENOMEM : 1;
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

enum gd_decision gd_egress_hook_internal(gd_txn *t, enum gd_phase ph, void *ud)
{
    (void)ph;
    struct gd_egress *e = ud;
    const char *range = gd_addr_internal_str(gd_txn_addr(t));
    if (!range)
        return GD_CONTINUE;
    for (size_t i = 0; i < e->ninternal; i++)
        if (gd_host_match(e->internal[i], gd_txn_host(t)))
            return GD_CONTINUE;
    return gd_txn_deny(t, 403, "internal-ranges",
                       "%s resolves to %s, a %s address (--allow-internal %s to permit)",
                       gd_txn_host(t), gd_txn_addr(t), range, gd_txn_host(t));
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
        fprintf(stderr, "gondolin: %s %s %s://%s:%u%s -> %d (%s%s%s)\n",
                !strcmp(ev->decision, "deny") ? "denied" : "failed", ev->method, ev->scheme,
                ev->host, ev->port, path ? path : "", ev->status, ev->rule ? ev->rule : "-",
                reason ? ": " : "", reason ? reason : "");
    if (e->audit) {
        struct timeval tv;
        gettimeofday(&tv, NULL);
        struct tm tm;
        gmtime_r(&tv.tv_sec, &tm);
        char ts[40];
        snprintf(ts, sizeof(ts), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900,
                 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                 (long)(tv.tv_usec / 1000));
        cJSON *o = cJSON_CreateObject();
        if (o) {
            cJSON_AddStringToObject(o, "time", ts);
            cJSON_AddStringToObject(o, "vm", e->vm_id);
            if (ev->tag)
                cJSON_AddStringToObject(o, "policy", ev->tag);
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
    return 0;
}

char **gd_egress_guest_env(const struct gd_egress *e)
{
    char **v = calloc(e->nsecrets + 1, sizeof(*v));
    for (size_t i = 0; v && i < e->nsecrets; i++)
        if (asprintf(&v[i], "%s=%s", e->secrets[i].name, e->secrets[i].placeholder) < 0)
            v[i] = NULL;
    return v;
}
