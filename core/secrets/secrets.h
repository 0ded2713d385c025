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

/* Makes a secret NAME scoped to hosts (comma-separated patterns; "http://HOST" also
 * allows cleartext HTTP to HOST, otherwise it is substituted only into HTTPS requests)
 * with value (copied), or, value NULL, the host environment variable NAME. Makes a fresh
 * random placeholder. Negative errno with err set (one line naming the bad part). */
int gd_secret_init(struct gd_secret *s, const char *name, const char *hosts, const char *value,
                   struct gd_err *err);
/* Deep copy, placeholder included. 0 or -ENOMEM (dst then empty). */
int gd_secret_copy(struct gd_secret *dst, const struct gd_secret *src);
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
