/*
 * secrets.h - host secrets behind placeholders.
 *
 * The guest sees NAME=GONDOLIN_SECRET_<48 hex>; the real value exists only on the host
 * and is put into a request only when the request's host is in the secret's scope.
 */
#ifndef GD_SECRETS_H
#define GD_SECRETS_H

#include "base/err.h"

#include <stddef.h>

struct gd_secret {
    char *name;
    char *value;
    char placeholder[80];
    char **hosts;
    size_t nhosts;
};

/* Parses "NAME@host1,host2[=VALUE]"; without =VALUE the value is taken from the host
 * environment variable NAME. Makes a fresh random placeholder. */
int gd_secret_parse(const char *spec, struct gd_secret *s, struct gd_err *err);
void gd_secret_free(struct gd_secret *s);
int gd_secret_in_scope(const struct gd_secret *s, const char *host);

/* Substitutes placeholders in `in` for `host`.
 * Returns 0 and *out = NULL when nothing changed, 0 and a malloc'd *out when it did,
 * -EACCES with *which set when `in` carries a placeholder (or a real value) of a secret
 * whose scope excludes host, -ENOMEM. basic: `in` is an Authorization value; a Basic
 * token is decoded, substituted and re-encoded. */
int gd_secrets_apply(const struct gd_secret *v, size_t n, const char *host, const char *in,
                     int basic, char **out, const struct gd_secret **which);

/* Copies `in` with every real secret value replaced by "[secret NAME]". malloc'd. */
char *gd_secrets_redact(const struct gd_secret *v, size_t n, const char *in);

#endif
