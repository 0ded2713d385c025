/* secrets.c - placeholders and their substitution (see secrets.h). */
#define _GNU_SOURCE
#include "secrets/secrets.h"

#include "base/pattern.h"

#include <ctype.h>
#include <errno.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

int gd_secret_init(struct gd_secret *s, const char *name, const char *hosts, const char *value,
                   struct gd_err *err)
{
    memset(s, 0, sizeof(*s));
    if (!*name)
        return gd_err_set(err, -EINVAL, "a secret needs a name");
    for (const char *c = name; *c; c++)
        if (!(isalnum((unsigned char)*c) || *c == '_'))
            return gd_err_set(err, -EINVAL, "secret name '%s' must be letters, digits, _", name);
    if (!value && !(value = getenv(name)))
        return gd_err_set(err, -EINVAL, "secret %s: no value given and $%s is not set", name, name);
    if (!*value)
        return gd_err_set(err, -EINVAL, "secret %s has an empty value", name);
    char *hl = strdup(hosts);
    s->name = strdup(name);
    s->value = strdup(value);
    if (!hl || !s->name || !s->value) {
        free(hl);
        gd_secret_free(s);
        return gd_err_set(err, -ENOMEM, "out of memory");
    }
    char *save = NULL;
    for (char *h = strtok_r(hl, ",", &save); h; h = strtok_r(NULL, ",", &save)) {
        int clear = !strncasecmp(h, "http://", 7);
        if (clear)
            h += 7;
        if (gd_host_pattern_check(h)) {
            gd_err_set(err, -EINVAL, "secret %s: bad host pattern '%s'", s->name, h);
            free(hl);
            gd_secret_free(s);
            return -EINVAL;
        }
        char **v = realloc(s->hosts, (s->nhosts + 1) * sizeof(*v));
        if (v)
            s->hosts = v;
        unsigned char *c = realloc(s->cleartext, s->nhosts + 1);
        if (c)
            s->cleartext = c;
        if (!v || !c || !(v[s->nhosts] = strdup(h))) {
            free(hl);
            gd_secret_free(s);
            return gd_err_set(err, -ENOMEM, "out of memory");
        }
        c[s->nhosts] = (unsigned char)clear;
        s->nhosts++;
    }
    free(hl);
    if (!s->nhosts) {
        gd_err_set(err, -EINVAL, "secret %s names no host", s->name);
        gd_secret_free(s);
        return -EINVAL;
    }
    unsigned char r[24];
    if (RAND_bytes(r, sizeof(r)) != 1) {
        gd_secret_free(s);
        return gd_err_set(err, -EIO, "no randomness for a placeholder");
    }
    int k = snprintf(s->placeholder, sizeof(s->placeholder), "GONDOLIN_SECRET_");
    for (size_t i = 0; i < sizeof(r); i++)
        k += snprintf(s->placeholder + k, sizeof(s->placeholder) - (size_t)k, "%02x", r[i]);
    return 0;
}

int gd_secret_copy(struct gd_secret *dst, const struct gd_secret *src)
{
    memset(dst, 0, sizeof(*dst));
    memcpy(dst->placeholder, src->placeholder, sizeof(dst->placeholder));
    dst->name = strdup(src->name);
    dst->value = strdup(src->value);
    dst->hosts = calloc(src->nhosts + 1, sizeof(*dst->hosts));
    dst->cleartext = malloc(src->nhosts + 1);
    if (!dst->name || !dst->value || !dst->hosts || !dst->cleartext)
        goto oom;
    for (; dst->nhosts < src->nhosts; dst->nhosts++)
        if (!(dst->hosts[dst->nhosts] = strdup(src->hosts[dst->nhosts])))
            goto oom;
    if (src->nhosts)
        memcpy(dst->cleartext, src->cleartext, src->nhosts);
    return 0;
oom:
    gd_secret_free(dst);
    return -ENOMEM;
}

void gd_secret_free(struct gd_secret *s)
{
    free(s->name);
    if (s->value)
        memset(s->value, 0, strlen(s->value));
    free(s->value);
    for (size_t i = 0; i < s->nhosts; i++)
        free(s->hosts[i]);
    free(s->hosts);
    free(s->cleartext);
    memset(s, 0, sizeof(*s));
}

int gd_secret_in_scope(const struct gd_secret *s, const char *host)
{
    for (size_t i = 0; i < s->nhosts; i++)
        if (gd_host_match(s->hosts[i], host))
            return 1;
    return 0;
}

int gd_secret_cleartext_ok(const struct gd_secret *s, const char *host)
{
    for (size_t i = 0; i < s->nhosts; i++)
        if (s->cleartext[i] && gd_host_match(s->hosts[i], host))
            return 1;
    return 0;
}

/* Replaces every `from` in `in` by `to`; malloc'd result, or NULL if none/ENOMEM (*oom). */
static char *replace_all(const char *in, const char *from, const char *to, int *oom)
{
    size_t fl = strlen(from), tl = strlen(to), cnt = 0;
    for (const char *p = in; (p = strstr(p, from)); p += fl)
        cnt++;
    if (!cnt)
        return NULL;
    size_t n = strlen(in) + cnt * tl - cnt * fl;
    char *o = malloc(n + 1), *w = o;
    if (!o) {
        *oom = 1;
        return NULL;
    }
    for (const char *p = in, *q;; p = q + fl) {
        q = strstr(p, from);
        if (!q) {
            strcpy(w, p);
            break;
        }
        memcpy(w, p, (size_t)(q - p));
        w += q - p;
        memcpy(w, to, tl);
        w += tl;
    }
    return o;
}

static int apply_plain(const struct gd_secret *v, size_t n, const char *host, int tls,
                       const char *in, char **out, const struct gd_secret **which)
{
    char *cur = NULL;
    for (size_t i = 0; i < n; i++) {
        const char *src = cur ? cur : in;
        int has_ph = strstr(src, v[i].placeholder) != NULL;
        int has_real = strstr(src, v[i].value) != NULL;
        if (!has_ph && !has_real)
            continue;
        if (!gd_secret_in_scope(&v[i], host)) {
            free(cur);
            *which = &v[i];
            return -EACCES;
        }
        if (!has_ph)
            continue;
        if (!tls && !gd_secret_cleartext_ok(&v[i], host)) {
            free(cur);
            *which = &v[i];
            return -EPROTO;
        }
        int oom = 0;
        char *nx = replace_all(src, v[i].placeholder, v[i].value, &oom);
        if (oom) {
            free(cur);
            return -ENOMEM;
        }
        free(cur);
        cur = nx;
    }
    *out = cur;
    return 0;
}

/* Decodes a Basic token into a NUL-terminated string; NULL if it is not valid base64
 * of text. */
static char *basic_decode(const char *tok)
{
    while (*tok == ' ')
        tok++;
    size_t tl = strlen(tok);
    if (!tl || tl % 4 || tl > 8192)
        return NULL;
    unsigned char *dec = malloc(tl + 1);
    if (!dec)
        return NULL;
    int dl = EVP_DecodeBlock(dec, (const unsigned char *)tok, (int)tl);
    if (dl < 0) {
        free(dec);
        return NULL;
    }
    /* EVP_DecodeBlock counts padding as zero bytes */
    if (tok[tl - 1] == '=')
        dl--;
    if (tok[tl - 2] == '=')
        dl--;
    dec[dl] = 0;
    if (memchr(dec, 0, (size_t)dl)) {
        free(dec);
        return NULL;
    }
    return (char *)dec;
}

int gd_secrets_apply(const struct gd_secret *v, size_t n, const char *host, int tls, const char *in,
                     int basic, char **out, const struct gd_secret **which)
{
    *out = NULL;
    char *dec = basic && !strncasecmp(in, "Basic ", 6) ? basic_decode(in + 6) : NULL;
    if (dec) {
        char *sub = NULL;
        int rc = apply_plain(v, n, host, tls, dec, &sub, which);
        memset(dec, 0, strlen(dec));
        free(dec);
        if (rc)
            return rc;
        if (sub) {
            size_t sl = strlen(sub);
            char *enc = malloc(6 + 4 * ((sl + 2) / 3) + 1);
            if (enc) {
                memcpy(enc, "Basic ", 6);
                EVP_EncodeBlock((unsigned char *)enc + 6, (unsigned char *)sub, (int)sl);
            }
            memset(sub, 0, sl);
            free(sub);
            *out = enc;
            return enc ? 0 : -ENOMEM;
        }
    }
    return apply_plain(v, n, host, tls, in, out, which);
}

char *gd_secrets_redact(const struct gd_secret *v, size_t n, const char *in)
{
    char *cur = strdup(in);
    for (size_t i = 0; cur && i < n; i++) {
        char tag[200];
        snprintf(tag, sizeof(tag), "[secret %s]", v[i].name);
        int oom = 0;
        char *nx = replace_all(cur, v[i].value, tag, &oom);
        if (nx) {
            free(cur);
            cur = nx;
        }
    }
    return cur;
}
