/* conf.c - the SSH egress rules: setters (the command line, and later the Lua policy,
 * go through them), copy, digest and the lookups the network layer and the proxy use. */
#define _GNU_SOURCE
#include "ssh/ssh.h"

#include "base/pattern.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_RULES 256

int gd_ssh_conf_allow(struct gd_ssh_conf *c, const char *spec, struct gd_err *err)
{
    char host[300];
    unsigned port = 22;
    const char *colon = strrchr(spec, ':');
    size_t hl = colon ? (size_t)(colon - spec) : strlen(spec);
    if (colon) {
        char *end;
        unsigned long p = strtoul(colon + 1, &end, 10);
        if (!colon[1] || *end || p < 1 || p > 65535)
            return gd_err_set(err, -EINVAL, "--ssh-allow wants HOST[:PORT], not '%s'", spec);
        port = (unsigned)p;
    }
    if (hl == 0 || hl >= sizeof(host))
        return gd_err_set(err, -EINVAL, "--ssh-allow wants HOST[:PORT], not '%s'", spec);
    memcpy(host, spec, hl);
    host[hl] = 0;
    if (gd_host_pattern_check(host))
        return gd_err_set(err, -EINVAL, "--ssh-allow: '%s' is not a host name or pattern", host);
    if (c->nrules >= MAX_RULES)
        return gd_err_set(err, -EINVAL, "--ssh-allow: more than %d rules", MAX_RULES);
    struct gd_ssh_rule *r = realloc(c->rules, (c->nrules + 1) * sizeof(*r));
    if (!r)
        return gd_err_set(err, -ENOMEM, "out of memory");
    c->rules = r;
    if (!(r[c->nrules].host = strdup(host)))
        return gd_err_set(err, -ENOMEM, "out of memory");
    r[c->nrules++].port = port;
    return 0;
}

int gd_ssh_conf_key(struct gd_ssh_conf *c, const char *spec, struct gd_err *err)
{
    const char *eq = strchr(spec, '=');
    if (!eq || eq == spec || !eq[1])
        return gd_err_set(err, -EINVAL, "--ssh-key wants HOST=PATH, not '%s'", spec);
    const char *path = eq + 1;
    if (!strncmp(path, "file:", 5))
        path += 5;
    char full[4096];
    const char *home = getenv("HOME");
    if (!strncmp(path, "~/", 2) && home)
        snprintf(full, sizeof(full), "%s/%s", home, path + 2);
    else
        snprintf(full, sizeof(full), "%s", path);
    if (access(full, R_OK))
        return gd_err_set(err, -errno, "--ssh-key: cannot read %s: %s", full, strerror(errno));
    if (c->nkeys >= MAX_RULES)
        return gd_err_set(err, -EINVAL, "--ssh-key: more than %d keys", MAX_RULES);
    struct gd_ssh_key *k = realloc(c->keys, (c->nkeys + 1) * sizeof(*k));
    if (!k)
        return gd_err_set(err, -ENOMEM, "out of memory");
    c->keys = k;
    k[c->nkeys].host = strndup(spec, (size_t)(eq - spec));
    k[c->nkeys].path = strdup(full);
    if (!k[c->nkeys].host || !k[c->nkeys].path) {
        free(k[c->nkeys].host);
        free(k[c->nkeys].path);
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

int gd_ssh_conf_copy(struct gd_ssh_conf *dst, const struct gd_ssh_conf *src)
{
    struct gd_err err = {{0}};
    int rc = 0;
    dst->agent = src->agent;
    for (size_t i = 0; !rc && i < src->nrules; i++) {
        char spec[320];
        snprintf(spec, sizeof(spec), "%s:%u", src->rules[i].host, src->rules[i].port);
        rc = gd_ssh_conf_allow(dst, spec, &err);
    }
    for (size_t i = 0; !rc && i < src->nkeys; i++) {
        struct gd_ssh_key *k = realloc(dst->keys, (dst->nkeys + 1) * sizeof(*k));
        if (!k) {
            rc = -ENOMEM;
            break;
        }
        dst->keys = k;
        k[dst->nkeys].host = strdup(src->keys[i].host);
        k[dst->nkeys].path = strdup(src->keys[i].path);
        dst->nkeys++;
        if (!k[dst->nkeys - 1].host || !k[dst->nkeys - 1].path)
            rc = -ENOMEM;
    }
    for (size_t i = 0; !rc && i < src->nknown; i++) {
        char **v = realloc(dst->known_hosts, (dst->nknown + 1) * sizeof(*v));
        if (!v) {
            rc = -ENOMEM;
            break;
        }
        dst->known_hosts = v;
        if (!(v[dst->nknown++] = strdup(src->known_hosts[i])))
            rc = -ENOMEM;
    }
    if (rc)
        gd_ssh_conf_free(dst);
    return rc;
}

void gd_ssh_conf_free(struct gd_ssh_conf *c)
{
    for (size_t i = 0; i < c->nrules; i++)
        free(c->rules[i].host);
    free(c->rules);
    for (size_t i = 0; i < c->nkeys; i++) {
        free(c->keys[i].host);
        free(c->keys[i].path);
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
    int n = snprintf(b, sizeof(b), "ssh agent=%d\n", c->agent);
    update(ctx, b, (size_t)n);
    for (size_t i = 0; i < c->nrules; i++) {
        n = snprintf(b, sizeof(b), "allow %s:%u\n", c->rules[i].host, c->rules[i].port);
        update(ctx, b, (size_t)n);
    }
    for (size_t i = 0; i < c->nkeys; i++) {
        n = snprintf(b, sizeof(b), "key %s=%s\n", c->keys[i].host, c->keys[i].path);
        update(ctx, b, (size_t)n);
    }
    for (size_t i = 0; i < c->nknown; i++) {
        n = snprintf(b, sizeof(b), "known %s\n", c->known_hosts[i]);
        update(ctx, b, (size_t)n);
    }
}

const struct gd_ssh_rule *gd_ssh_conf_rule(const struct gd_ssh_conf *c, const char *name,
                                           unsigned port)
{
    for (size_t i = 0; name && i < c->nrules; i++)
        if ((!port || c->rules[i].port == port) && gd_host_match(c->rules[i].host, name))
            return &c->rules[i];
    return NULL;
}

const char *gd_ssh_conf_key_for(const struct gd_ssh_conf *c, const char *host)
{
    for (size_t i = 0; i < c->nkeys; i++)
        if (gd_host_match(c->keys[i].host, host))
            return c->keys[i].path;
    return NULL;
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
