/* conf.c - the SSH egress rules: setters (the command line, and later the Lua policy,
 * go through them), copy, digest and the lookups the network layer and the proxy use. */
#define _GNU_SOURCE
#include "ssh/ssh.h"

#include "base/pattern.h"

#include <ctype.h>
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_RULES 256

int gd_ssh_user_ok(const char *u, size_t n)
{
    if (n < 1 || n > 64 || u[0] == '-')
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)u[i]) && !strchr("._-", u[i]))
            return 0;
    return 1;
}

unsigned gd_ssh_cmd_bit(const char *service)
{
    static const char *const names[] = {"git-upload-pack", "git-receive-pack",
                                        "git-upload-archive"};
    for (unsigned i = 0; service && i < 3; i++)
        if (!strcmp(service, names[i]))
            return 1u << i;
    return 0;
}

/* "file:~/x" -> "$HOME/x"; 0, or -errno when the result is not readable. */
static int key_path(const char *in, char *out, size_t cap)
{
    if (!strncmp(in, "file:", 5))
        in += 5;
    const char *home = getenv("HOME");
    if (!strncmp(in, "~/", 2) && home)
        snprintf(out, cap, "%s/%s", home, in + 2);
    else
        snprintf(out, cap, "%s", in);
    return access(out, R_OK) ? -errno : 0;
}

static char *dup_or_null(const char *s, int *oom)
{
    char *d = s ? strdup(s) : NULL;
    if (s && !d)
        *oom = 1;
    return d;
}

static void rule_free(struct gd_ssh_rule *r)
{
    free(r->host);
    free(r->user);
    free(r->key);
    for (size_t i = 0; i < r->nrepos; i++)
        free(r->repos[i]);
    free(r->repos);
}

int gd_ssh_conf_add_rule(struct gd_ssh_conf *c, const struct gd_ssh_rule *r, struct gd_err *err)
{
    if (!r->host || gd_host_pattern_check(r->host))
        return gd_err_set(err, -EINVAL, "ssh: '%s' is not a host name or pattern",
                          r->host ? r->host : "");
    if (r->port < 1 || r->port > 65535)
        return gd_err_set(err, -EINVAL, "ssh: %s: port %u is not 1-65535", r->host, r->port);
    if (r->user && (!*r->user || strlen(r->user) > 64 || !gd_ssh_user_ok(r->user, strlen(r->user))))
        return gd_err_set(err, -EINVAL,
                          "ssh: %s: user '%.80s' is not a user name (1-64 of A-Z a-z 0-9 . _ -)",
                          r->host, r->user);
    if (r->commands & ~7u)
        return gd_err_set(err, -EINVAL, "ssh: %s: unknown command bits", r->host);
    for (size_t i = 0; i < r->nrepos; i++)
        if (gd_ssh_repo_pattern_check(r->repos[i]))
            return gd_err_set(err, -EINVAL,
                              "ssh: %s: repo pattern '%s' is malformed (no leading '/', no "
                              "'..', no trailing .git)",
                              r->host, r->repos[i]);
    char key[4096];
    int rc;
    if (r->key && (rc = key_path(r->key, key, sizeof(key))))
        return gd_err_set(err, rc, "ssh: %s: cannot read the key %s: %s", r->host, key,
                          strerror(-rc));
    if (c->nrules >= MAX_RULES)
        return gd_err_set(err, -EINVAL, "ssh: more than %d rules", MAX_RULES);
    struct gd_ssh_rule *v = realloc(c->rules, (c->nrules + 1) * sizeof(*v));
    if (!v)
        return gd_err_set(err, -ENOMEM, "out of memory");
    c->rules = v;
    int oom = 0;
    struct gd_ssh_rule d = {.host = dup_or_null(r->host, &oom),
                            .port = r->port,
                            .user = dup_or_null(r->user, &oom),
                            .key = dup_or_null(r->key ? key : NULL, &oom),
                            .agent = r->agent,
                            .commands = r->commands,
                            .repos = r->nrepos ? calloc(r->nrepos, sizeof(char *)) : NULL};
    if (r->nrepos && !d.repos)
        oom = 1;
    for (size_t i = 0; !oom && i < r->nrepos; i++, d.nrepos++)
        d.repos[i] = dup_or_null(r->repos[i], &oom);
    if (oom) {
        rule_free(&d);
        return gd_err_set(err, -ENOMEM, "out of memory");
    }
    v[c->nrules++] = d;
    return 0;
}

int gd_ssh_hostport_parse(const char *spec, char *host, size_t cap, unsigned *port)
{
    const char *colon = strrchr(spec, ':');
    size_t hl = colon ? (size_t)(colon - spec) : strlen(spec);
    *port = 22;
    if (colon) {
        char *end;
        unsigned long p = strtoul(colon + 1, &end, 10);
        if (!colon[1] || *end || p < 1 || p > 65535)
            return -EINVAL;
        *port = (unsigned)p;
    }
    if (hl == 0 || hl >= cap)
        return -EINVAL;
    memcpy(host, spec, hl);
    host[hl] = 0;
    return 0;
}

/* "USER@REST" -> user (cap bytes) and the rest; no '@': user "" and spec. NULL when the
 * user part is empty, too long or not a plain user name. */
static const char *split_user(const char *spec, char *user, size_t cap)
{
    const char *at = strchr(spec, '@');
    user[0] = 0;
    if (!at)
        return spec;
    size_t n = (size_t)(at - spec);
    if (n < 1 || n > 64 || n >= cap || !gd_ssh_user_ok(spec, n))
        return NULL;
    memcpy(user, spec, n);
    user[n] = 0;
    return at + 1;
}

int gd_ssh_conf_allow(struct gd_ssh_conf *c, const char *spec, struct gd_err *err)
{
    char host[300], user[80];
    unsigned port;
    const char *hp = split_user(spec, user, sizeof(user));
    if (!hp || gd_ssh_hostport_parse(hp, host, sizeof(host), &port))
        return gd_err_set(err, -EINVAL, "--ssh-allow wants [USER@]HOST[:PORT], not '%s'", spec);
    if (gd_host_pattern_check(host))
        return gd_err_set(err, -EINVAL, "--ssh-allow: '%s' is not a host name or pattern", host);
    struct gd_ssh_rule r = {.host = host, .port = port, .user = user[0] ? user : NULL};
    return gd_ssh_conf_add_rule(c, &r, err);
}

int gd_ssh_conf_key(struct gd_ssh_conf *c, const char *spec, struct gd_err *err)
{
    char user[80];
    const char *eq = strchr(spec, '='), *at = strchr(spec, '@');
    const char *host = at && eq && at < eq ? split_user(spec, user, sizeof(user)) : spec;
    if (!(at && eq && at < eq))
        user[0] = 0;
    if (!host || !eq || eq == host || !eq[1])
        return gd_err_set(err, -EINVAL, "--ssh-key wants [USER@]HOST=PATH, not '%s'", spec);
    char full[4096];
    int rc = key_path(eq + 1, full, sizeof(full));
    if (rc)
        return gd_err_set(err, rc, "--ssh-key: cannot read %s: %s", full, strerror(-rc));
    if (c->nkeys >= MAX_RULES)
        return gd_err_set(err, -EINVAL, "--ssh-key: more than %d keys", MAX_RULES);
    struct gd_ssh_key *k = realloc(c->keys, (c->nkeys + 1) * sizeof(*k));
    if (!k)
        return gd_err_set(err, -ENOMEM, "out of memory");
    c->keys = k;
    k[c->nkeys].host = strndup(host, (size_t)(eq - host));
    k[c->nkeys].path = strdup(full);
    k[c->nkeys].user = user[0] ? strdup(user) : NULL;
    if (!k[c->nkeys].host || !k[c->nkeys].path || (user[0] && !k[c->nkeys].user)) {
        free(k[c->nkeys].host);
        free(k[c->nkeys].path);
        free(k[c->nkeys].user);
        return gd_err_set(err, -ENOMEM, "out of memory");
    }
    c->nkeys++;
    return 0;
}

int gd_ssh_conf_known_hosts(struct gd_ssh_conf *c, const char *path, struct gd_err *err)
{
    if (access(path, R_OK))
        return gd_err_set(err, -errno, "--ssh-known-hosts: cannot read %s: %s", path,
                          strerror(errno));
    char **v = realloc(c->known_hosts, (c->nknown + 1) * sizeof(*v));
    if (!v)
        return gd_err_set(err, -ENOMEM, "out of memory");
    c->known_hosts = v;
    if (!(v[c->nknown] = strdup(path)))
        return gd_err_set(err, -ENOMEM, "out of memory");
    c->nknown++;
    return 0;
}

void gd_ssh_conf_agent(struct gd_ssh_conf *c, int on)
{
    c->agent = on;
}

int gd_ssh_conf_limit(struct gd_ssh_conf *c, const char *spec, struct gd_err *err)
{
    static const struct {
        const char *name;
        size_t off;
        unsigned long lo, hi;
    } lim[] = {{"max_conns", offsetof(struct gd_ssh_conf, max_conns), 1, 4096},
               {"connect_ms", offsetof(struct gd_ssh_conf, connect_ms), 100, 86400000},
               {"handshake_ms", offsetof(struct gd_ssh_conf, handshake_ms), 100, 86400000},
               {"idle_ms", offsetof(struct gd_ssh_conf, idle_ms), 100, 86400000}};
    const char *eq = strchr(spec, '=');
    for (size_t i = 0; eq && i < sizeof(lim) / sizeof(lim[0]); i++) {
        if (strlen(lim[i].name) != (size_t)(eq - spec) ||
            strncmp(spec, lim[i].name, (size_t)(eq - spec)))
            continue;
        char *end;
        errno = 0;
        unsigned long v = strtoul(eq + 1, &end, 10);
        if (!eq[1] || *end || errno || v < lim[i].lo || v > lim[i].hi || eq[1] == '-')
            return gd_err_set(err, -EINVAL, "--ssh-limit %s wants %lu-%lu, not '%s'", lim[i].name,
                              lim[i].lo, lim[i].hi, eq + 1);
        *(unsigned *)((char *)c + lim[i].off) = (unsigned)v;
        return 0;
    }
    return gd_err_set(err, -EINVAL,
                      "--ssh-limit wants max_conns|connect_ms|handshake_ms|idle_ms=N, not '%s'",
                      spec);
}

int gd_ssh_conf_merge(struct gd_ssh_conf *dst, const struct gd_ssh_conf *src, struct gd_err *err)
{
    int rc = 0;
    dst->agent |= src->agent;
    if (src->max_conns)
        dst->max_conns = src->max_conns;
    if (src->connect_ms)
        dst->connect_ms = src->connect_ms;
    if (src->handshake_ms)
        dst->handshake_ms = src->handshake_ms;
    if (src->idle_ms)
        dst->idle_ms = src->idle_ms;
    for (size_t i = 0; !rc && i < src->nrules; i++)
        rc = gd_ssh_conf_add_rule(dst, &src->rules[i], err);
    for (size_t i = 0; !rc && i < src->nkeys; i++) {
        char spec[8400];
        snprintf(spec, sizeof(spec), "%s%s%s=%s", src->keys[i].user ? src->keys[i].user : "",
                 src->keys[i].user ? "@" : "", src->keys[i].host, src->keys[i].path);
        rc = gd_ssh_conf_key(dst, spec, err);
    }
    for (size_t i = 0; !rc && i < src->nknown; i++)
        rc = gd_ssh_conf_known_hosts(dst, src->known_hosts[i], err);
    return rc;
}

int gd_ssh_conf_copy(struct gd_ssh_conf *dst, const struct gd_ssh_conf *src)
{
    struct gd_err err = {{0}};
    int rc = gd_ssh_conf_merge(dst, src, &err);
    if (rc)
        gd_ssh_conf_free(dst);
    return rc;
}

void gd_ssh_conf_free(struct gd_ssh_conf *c)
{
    for (size_t i = 0; i < c->nrules; i++)
        rule_free(&c->rules[i]);
    free(c->rules);
    for (size_t i = 0; i < c->nkeys; i++) {
        free(c->keys[i].host);
        free(c->keys[i].path);
        free(c->keys[i].user);
    }
    free(c->keys);
    for (size_t i = 0; i < c->nknown; i++)
        free(c->known_hosts[i]);
    free(c->known_hosts);
    memset(c, 0, sizeof(*c));
}

void gd_ssh_conf_digest(const struct gd_ssh_conf *c,
                        void (*update)(void *ctx, const void *p, size_t n), void *ctx)
{
    char b[5000];
    int n = snprintf(b, sizeof(b), "ssh agent=%d limits=%u,%u,%u,%u\n", c->agent, c->max_conns,
                     c->connect_ms, c->handshake_ms, c->idle_ms);
    update(ctx, b, (size_t)n);
    for (size_t i = 0; i < c->nrules; i++) {
        const struct gd_ssh_rule *r = &c->rules[i];
        n = snprintf(b, sizeof(b), "allow %s:%u user=%s key=%s agent=%d commands=%u repos=%zu\n",
                     r->host, r->port, r->user ? r->user : "", r->key ? r->key : "", r->agent,
                     r->commands, r->nrepos);
        update(ctx, b, (size_t)n);
        for (size_t k = 0; k < r->nrepos; k++)
            update(ctx, r->repos[k], strlen(r->repos[k]) + 1);
    }
    for (size_t i = 0; i < c->nkeys; i++) {
        n = snprintf(b, sizeof(b), "key %s@%s=%s\n", c->keys[i].user ? c->keys[i].user : "",
                     c->keys[i].host, c->keys[i].path);
        update(ctx, b, (size_t)n);
    }
    for (size_t i = 0; i < c->nknown; i++) {
        n = snprintf(b, sizeof(b), "known %s\n", c->known_hosts[i]);
        update(ctx, b, (size_t)n);
    }
}

/* How specific a host pattern is: a name with no wildcard beats every pattern, then the
 * more literal characters the better ("git.example.com" > "*.example.com" > "*"). */
static size_t specificity(const char *pat)
{
    size_t lit = 0, wild = 0;
    for (const char *p = pat; *p; p++)
        if (*p == '*' || *p == '?')
            wild = 1;
        else
            lit++;
    return wild ? lit : lit + 100000;
}

const struct gd_ssh_rule *gd_ssh_conf_rule(const struct gd_ssh_conf *c, const char *name,
                                           unsigned port)
{
    /* the most specific matching rule, ties broken by the pattern's bytes: the same
     * answer whatever order the rules came in (a Lua table's order is not stable from
     * one process to the next); among equal patterns the first (command line first) */
    const struct gd_ssh_rule *best = NULL;
    size_t bs = 0;
    for (size_t i = 0; name && i < c->nrules; i++) {
        const struct gd_ssh_rule *r = &c->rules[i];
        if ((port && r->port != port) || !gd_host_match(r->host, name))
            continue;
        size_t sp = specificity(r->host);
        if (!best || sp > bs || (sp == bs && strcmp(r->host, best->host) < 0)) {
            best = r;
            bs = sp;
        }
    }
    return best;
}

static const struct gd_ssh_key *key_for(const struct gd_ssh_conf *c, const char *host)
{
    for (size_t i = 0; i < c->nkeys; i++)
        if (gd_host_match(c->keys[i].host, host))
            return &c->keys[i];
    return NULL;
}

const char *gd_ssh_conf_key_for(const struct gd_ssh_conf *c, const char *host)
{
    const struct gd_ssh_key *k = key_for(c, host);
    return k ? k->path : NULL;
}

const char *gd_ssh_conf_upstream_user(const struct gd_ssh_conf *c, const char *name, unsigned port)
{
    const struct gd_ssh_rule *r = gd_ssh_conf_rule(c, name, port);
    if (r && r->user)
        return r->user;
    const struct gd_ssh_key *k = r && r->key ? NULL : key_for(c, name);
    if (k && k->user)
        return k->user;
    /* a host-held key or agent is an identity the host chose: the guest does not pick
     * the account it is used for (the reference sends the guest's name with the agent,
     * letting a guest try every account the host user's agent keys open) */
    return "git";
}

char *gd_ssh_conf_guest_hosts(const struct gd_ssh_conf *c)
{
    size_t cap = 1;
    for (size_t i = 0; i < c->nrules; i++)
        cap += strlen(c->rules[i].host) + 10;
    char *s = c->nrules ? malloc(cap) : NULL;
    size_t k = 0;
    for (size_t i = 0; s && i < c->nrules; i++)
        k += (size_t)snprintf(s + k, cap - k, c->rules[i].port == 22 ? "%s%s" : "%s[%s]:%u",
                              i ? "," : "", c->rules[i].host, c->rules[i].port);
    return s;
}

int gd_ssh_conf_check(const struct gd_ssh_conf *c, const struct gd_ssh_exec *x, char *rule,
                      size_t rcap, char *line, size_t lcap)
{
    if (!x->git) {
        snprintf(rule, rcap, "git-command");
        return -1;
    }
    const struct gd_ssh_rule *r = gd_ssh_conf_rule(c, x->host, x->port);
    int repo_ok = r && !r->nrepos;
    for (size_t i = 0; r && i < r->nrepos && !repo_ok; i++)
        repo_ok = gd_ssh_repo_match(r->repos[i], x->git->repo);
    if (r && (!r->commands || (r->commands & gd_ssh_cmd_bit(x->git->service))) && repo_ok)
        return 0;
    /* the rule that decided: its pattern, not the name dialled */
    snprintf(rule, rcap, "ssh:%s%s", r ? r->host : x->host,
             !r        ? ""
             : repo_ok ? " commands"
                       : " repos");
    snprintf(line, lcap, "%s: %s of %s refused: %s", x->host, x->git->service, x->git->repo,
             !r        ? "no SSH rule"
             : repo_ok ? "the SSH rule does not allow this command"
                       : "the repository is outside the SSH rule's repos");
    return -1;
}
