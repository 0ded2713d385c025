/*
 * tls.h - the MITM certificate authority and the two TLS contexts of the proxy.
 *
 * The CA lives in the user's gondolin config directory ($XDG_CONFIG_HOME/gondolin/ca or
 * ~/.config/gondolin/ca): ca.key (mode 0600, never leaves the host) and ca.crt (what the
 * guest trusts). It is created on first use. Leaf certificates are minted per server
 * name on demand, all sharing one P-256 key made at startup, and cached in memory.
 *
 * Guest-facing side: a server SSL_CTX that picks the leaf from the ClientHello's SNI
 * (or from a fallback name the flow knows, e.g. its synthetic DNS name). Upstream side:
 * a client SSL_CTX that verifies the real chain and hostname against the host trust
 * store (plus an optional extra CA file, for tests). Both offer ALPN http/1.1 only.
 */
#ifndef GD_TLS_H
#define GD_TLS_H

#include "base/err.h"

#include <openssl/ssl.h>
#include <stddef.h>

typedef struct gd_tls gd_tls;

struct gd_tls_opts {
    const char *ca_dir;      /* NULL = default config dir */
    const char *upstream_ca; /* extra PEM file trusted for upstream servers, or NULL */
};

int gd_tls_new(const struct gd_tls_opts *o, gd_tls **out, struct gd_err *err);
void gd_tls_free(gd_tls *t);

/* PEM of the CA certificate (borrowed, NUL-terminated). */
const char *gd_tls_ca_pem(const gd_tls *t);
/* The CA certificate as DER (borrowed). */
const unsigned char *gd_tls_ca_der(const gd_tls *t, size_t *len);

/* A server-side SSL for one guest flow. `fallback_name` (copied) names the leaf when the
 * client sends no SNI. Returns NULL on allocation failure. */
SSL *gd_tls_server_new(gd_tls *t, const char *fallback_name);
/* The SNI the guest sent (borrowed from ssl), or NULL. */
const char *gd_tls_server_sni(SSL *ssl);
/* A client-side SSL toward `host` (SNI unless an IP literal; verifies the name). */
SSL *gd_tls_client_new(gd_tls *t, const char *host);

/* Exposed for the fuzzer: extracts the SNI from a raw ClientHello record without
 * OpenSSL. 1 found (copied into out), 0 absent, -1 malformed or incomplete. */
int gd_tls_peek_sni(const unsigned char *p, size_t n, char *out, size_t cap);

#endif
