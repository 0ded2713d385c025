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
    unsigned char *cleartext; /* per host: "http://HOST" also allows plain HTTP */
    size_t nhosts;
};

/* Parses "NAME@host1,host2[=VALUE]"; without =VALUE the value is taken from the host
 * environment variable NAME. Makes a fresh random placeholder. A secret is substituted
 * only into HTTPS requests; a host written "http://HOST" also allows cleartext HTTP. */
int gd_secret_parse(const char *spec, struct gd_secret *s, struct gd_err *err);
void gd_secret_free(struct gd_secret *s);
int gd_secret_in_scope(const struct gd_secret *s, const char *host);

/* Does the secret allow cleartext HTTP to host? */
int gd_secret_cleartext_ok(const struct gd_secret *s, const char *host);

/* Substitutes placeholders in `in` for `host` (tls: the request goes over TLS).
 * Returns 0 and *out = NULL when nothing changed, 0 and a malloc'd *out when it did,
 * -EACCES with *which set when `in` carries a placeholder (or a real value) of a secret
 * whose scope excludes host, -EPROTO with *which set when it carries a placeholder of an
 * in-scope secret but the request is cleartext and the secret does not allow that,
 * -ENOMEM. basic: `in` is an Authorization value; a Basic token is decoded, substituted
 * and re-encoded. */
int gd_secrets_apply(const struct gd_secret *v, size_t n, const char *host, int tls, const char *in,
                     int basic, char **out, const struct gd_secret **which);

/* Copies `in` with every real secret value replaced by "[secret NAME]". malloc'd. */
char *gd_secrets_redact(const struct gd_secret *v, size_t n, const char *in);

#endif
