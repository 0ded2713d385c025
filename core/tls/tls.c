/*
 * tls.c - MITM CA, per-name leaf certificates, guest-facing and upstream contexts.
 */
#include "tls/tls.h"

#include "base/fs.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define LEAF_CACHE 1024

struct leaf {
    char *name;
    X509 *cert;
};

struct gd_tls {
    X509 *ca;
    EVP_PKEY *ca_key;
    EVP_PKEY *leaf_key; /* one key for every leaf: minting a cert is then one signature */
    char *ca_pem;
    unsigned char *ca_der;
    size_t ca_der_len;
    SSL_CTX *server;
    SSL_CTX *client;
    int trust_pending; /* the host's trust store is loaded by the first upstream connection */
    struct leaf cache[LEAF_CACHE]; /* open addressing on the name hash */
    size_t ncache;
};

static int ex_fallback = -1; /* SSL ex_data index: the flow's fallback leaf name */

static const char *openssl_why(void)
{
    static char buf[256];
    unsigned long e = ERR_get_error();
    if (!e)
        return "unknown OpenSSL error";
    ERR_error_string_n(e, buf, sizeof(buf));
    ERR_clear_error();
    return buf;
}

static EVP_PKEY *new_p256(void)
{
    return EVP_EC_gen("P-256");
}

static void default_ca_dir(char *out, size_t cap)
{
    const char *x = getenv("XDG_CONFIG_HOME");
    if (x && *x == '/') {
        snprintf(out, cap, "%s/gondolin/ca", x);
        return;
    }
    const char *h = getenv("HOME");
    snprintf(out, cap, "%s/.config/gondolin/ca", h && *h ? h : "/root");
}

static int add_ext(X509 *cert, X509 *issuer, int nid, const char *value)
{
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, issuer, cert, NULL, NULL, 0);
    X509_EXTENSION *ex = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
    if (!ex)
        return -1;
    int ok = X509_add_ext(cert, ex, -1);
    X509_EXTENSION_free(ex);
    return ok ? 0 : -1;
}

static int random_serial(X509 *cert)
{
    unsigned char b[16];
    if (RAND_bytes(b, sizeof(b)) != 1)
        return -1;
    b[0] &= 0x7f; /* positive */
    b[0] |= 0x40; /* full length */
    BIGNUM *bn = BN_bin2bn(b, sizeof(b), NULL);
    if (!bn)
        return -1;
    int ok = BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(cert)) != NULL;
    BN_free(bn);
    return ok ? 0 : -1;
}

static X509 *make_ca(EVP_PKEY *key)
{
    X509 *c = X509_new();
    if (!c)
        return NULL;
    char cn[256], host[128] = "host";
    gethostname(host, sizeof(host) - 1);
    snprintf(cn, sizeof(cn), "gondolin MITM CA (%s)", host);
    X509_NAME *nm = X509_get_subject_name(c);
    if (X509_set_version(c, 2) != 1 || random_serial(c) ||
        !X509_gmtime_adj(X509_getm_notBefore(c), -3600) ||
        !X509_gmtime_adj(X509_getm_notAfter(c), 10L * 365 * 86400) ||
        X509_NAME_add_entry_by_txt(nm, "CN", MBSTRING_UTF8, (unsigned char *)cn, -1, -1, 0) != 1 ||
        X509_set_issuer_name(c, nm) != 1 || X509_set_pubkey(c, key) != 1 ||
        add_ext(c, c, NID_basic_constraints, "critical,CA:TRUE,pathlen:0") ||
        add_ext(c, c, NID_key_usage, "critical,keyCertSign,cRLSign") ||
        add_ext(c, c, NID_subject_key_identifier, "hash") || X509_sign(c, key, EVP_sha256()) <= 0) {
        X509_free(c);
        return NULL;
    }
    return c;
}

/* Loads the CA from dir, or creates it (key written 0600 with O_EXCL, then renamed). */
static int load_or_create_ca(gd_tls *t, const char *dir, struct gd_err *err)
{
    char kp[4096], cp[4096];
    snprintf(kp, sizeof(kp), "%s/ca.key", dir);
    snprintf(cp, sizeof(cp), "%s/ca.crt", dir);
    FILE *kf = fopen(kp, "r");
    if (kf) {
        struct stat st;
        if (fstat(fileno(kf), &st) == 0 && (st.st_mode & 077)) {
            fclose(kf);
            return gd_err_set(err, -EPERM,
                              "%s is readable by others (mode %03o): chmod 600 it or remove "
                              "the directory to make a new CA",
                              kp, st.st_mode & 0777);
        }
        t->ca_key = PEM_read_PrivateKey(kf, NULL, NULL, NULL);
        fclose(kf);
        FILE *cf = fopen(cp, "r");
        if (cf) {
            t->ca = PEM_read_X509(cf, NULL, NULL, NULL);
            fclose(cf);
        }
        if (!t->ca_key || !t->ca || X509_check_private_key(t->ca, t->ca_key) != 1)
            return gd_err_set(err, -EINVAL,
                              "MITM CA in %s is unreadable or its key does not match: remove "
                              "the directory to make a new one",
                              dir);
        return 0;
    }
    int rc = gd_mkdir_p(dir, 0700);
    if (rc)
        return gd_err_set(err, rc, "cannot create %s: %s", dir, strerror(-rc));
    t->ca_key = new_p256();
    if (!t->ca_key || !(t->ca = make_ca(t->ca_key)))
        return gd_err_set(err, -EIO, "cannot create the MITM CA: %s", openssl_why());
    char tk[4200], tc[4200];
    snprintf(tk, sizeof(tk), "%s.%d.tmp", kp, (int)getpid());
    snprintf(tc, sizeof(tc), "%s.%d.tmp", cp, (int)getpid());
    int fd = open(tk, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0)
        return gd_err_set(err, -errno, "cannot write %s: %s", tk, strerror(errno));
    FILE *f = fdopen(fd, "w");
    int ok = f && PEM_write_PrivateKey(f, t->ca_key, NULL, NULL, 0, NULL, NULL) == 1;
    if (f)
        ok = (fclose(f) == 0) && ok;
    else
        close(fd);
    FILE *g = fopen(tc, "w");
    ok = ok && g && PEM_write_X509(g, t->ca) == 1;
    if (g)
        ok = (fclose(g) == 0) && ok;
    /* the certificate first: a reader that finds the key finds its certificate */
    if (!ok || rename(tc, cp) || rename(tk, kp)) {
        unlink(tk);
        unlink(tc);
        return gd_err_set(err, -EIO, "cannot write the MITM CA into %s", dir);
    }
    return 0;
}

static uint64_t hash_name(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

static int is_ip_literal(const char *name)
{
    unsigned char b[16];
    return inet_pton(AF_INET, name, b) == 1 || inet_pton(AF_INET6, name, b) == 1;
}

static X509 *mint_leaf(gd_tls *t, const char *name)
{
    X509 *c = X509_new();
    if (!c)
        return NULL;
    char san[600];
    snprintf(san, sizeof(san), "%s:%s", is_ip_literal(name) ? "IP" : "DNS", name);
    X509_NAME *nm = X509_get_subject_name(c);
    /* CN is limited to 64 bytes; the SAN carries the real name */
    char cn[65];
    snprintf(cn, sizeof(cn), "%s", name);
    if (X509_set_version(c, 2) != 1 || random_serial(c) ||
        !X509_gmtime_adj(X509_getm_notBefore(c), -3600) ||
        !X509_gmtime_adj(X509_getm_notAfter(c), 397L * 86400) ||
        X509_NAME_add_entry_by_txt(nm, "CN", MBSTRING_UTF8, (unsigned char *)cn, -1, -1, 0) != 1 ||
        X509_set_issuer_name(c, X509_get_subject_name(t->ca)) != 1 ||
        X509_set_pubkey(c, t->leaf_key) != 1 || add_ext(c, t->ca, NID_subject_alt_name, san) ||
        add_ext(c, t->ca, NID_basic_constraints, "critical,CA:FALSE") ||
        add_ext(c, t->ca, NID_key_usage, "critical,digitalSignature") ||
        add_ext(c, t->ca, NID_ext_key_usage, "serverAuth") ||
        add_ext(c, t->ca, NID_authority_key_identifier, "keyid") ||
        X509_sign(c, t->ca_key, EVP_sha256()) <= 0) {
        X509_free(c);
        return NULL;
    }
    return c;
}

/* The cached leaf for name, minted on a miss. A full cache is emptied (names are
 * cheap to re-mint; an LRU buys nothing at this size). */
static X509 *leaf_for(gd_tls *t, const char *name)
{
    size_t i = hash_name(name) % LEAF_CACHE;
    for (size_t k = 0; k < LEAF_CACHE; k++, i = (i + 1) % LEAF_CACHE) {
        if (!t->cache[i].name)
            break;
        if (!strcmp(t->cache[i].name, name))
            return t->cache[i].cert;
    }
    if (t->ncache >= LEAF_CACHE * 3 / 4) {
        for (size_t k = 0; k < LEAF_CACHE; k++) {
            free(t->cache[k].name);
            X509_free(t->cache[k].cert);
            t->cache[k].name = NULL;
            t->cache[k].cert = NULL;
        }
        t->ncache = 0;
        i = hash_name(name) % LEAF_CACHE;
    }
    X509 *c = mint_leaf(t, name);
    char *dup = strdup(name);
    if (!c || !dup) {
        X509_free(c);
        free(dup);
        return NULL;
    }
    while (t->cache[i].name)
        i = (i + 1) % LEAF_CACHE;
    t->cache[i].name = dup;
    t->cache[i].cert = c;
    t->ncache++;
    return c;
}

static int valid_name(const char *s)
{
    size_t n = strlen(s);
    if (!n || n > 253)
        return 0;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              *s == '-' || *s == '.' || *s == '_' || *s == ':'))
            return 0;
    return 1;
}

static int on_servername(SSL *ssl, int *alert, void *arg)
{
    gd_tls *t = arg;
    const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    if (!name || !*name)
        name = SSL_get_ex_data(ssl, ex_fallback);
    if (!name || !valid_name(name)) {
        *alert = SSL_AD_UNRECOGNIZED_NAME;
        return SSL_TLSEXT_ERR_ALERT_FATAL;
    }
    char low[256];
    size_t n = 0;
    for (; name[n] && n < sizeof(low) - 1; n++)
        low[n] = (name[n] >= 'A' && name[n] <= 'Z') ? name[n] + 32 : name[n];
    low[n] = 0;
    X509 *leaf = leaf_for(t, low);
    if (!leaf || SSL_use_certificate(ssl, leaf) != 1 || SSL_use_PrivateKey(ssl, t->leaf_key) != 1) {
        *alert = SSL_AD_INTERNAL_ERROR;
        return SSL_TLSEXT_ERR_ALERT_FATAL;
    }
    return SSL_TLSEXT_ERR_OK;
}

static int on_alpn(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                   const unsigned char *in, unsigned inlen, void *arg)
{
    (void)ssl;
    (void)arg;
    static const unsigned char h11[] = "\x08http/1.1";
    unsigned char *sel;
    if (SSL_select_next_proto(&sel, outlen, h11, sizeof(h11) - 1, in, inlen) !=
        OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_NOACK; /* no ALPN agreement: plain HTTP/1.1 anyway */
    *out = sel;
    return SSL_TLSEXT_ERR_OK;
}

static void free_fallback(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl,
                          void *argp)
{
    (void)parent;
    (void)ad;
    (void)idx;
    (void)argl;
    (void)argp;
    free(ptr);
}

int gd_tls_new(const struct gd_tls_opts *o, gd_tls **out, struct gd_err *err)
{
    if (ex_fallback < 0)
        ex_fallback = SSL_get_ex_new_index(0, NULL, NULL, NULL, free_fallback);
    gd_tls *t = calloc(1, sizeof(*t));
    if (!t)
        return gd_err_set(err, -ENOMEM, "out of memory");
    char dir[4096];
    if (o && o->ca_dir)
        snprintf(dir, sizeof(dir), "%s", o->ca_dir);
    else
        default_ca_dir(dir, sizeof(dir));
    int rc = load_or_create_ca(t, dir, err);
    if (rc)
        goto fail;
    rc = -EIO;
    if (!(t->leaf_key = new_p256())) {
        gd_err_set(err, rc, "cannot make the leaf key: %s", openssl_why());
        goto fail;
    }
    BIO *b = BIO_new(BIO_s_mem());
    if (!b || PEM_write_bio_X509(b, t->ca) != 1) {
        BIO_free(b);
        gd_err_set(err, rc, "cannot encode the CA");
        goto fail;
    }
    char *pem;
    long pl = BIO_get_mem_data(b, &pem);
    t->ca_pem = malloc((size_t)pl + 1);
    if (t->ca_pem) {
        memcpy(t->ca_pem, pem, (size_t)pl);
        t->ca_pem[pl] = 0;
    }
    BIO_free(b);
    int dl = i2d_X509(t->ca, &t->ca_der);
    if (!t->ca_pem || dl <= 0) {
        gd_err_set(err, rc, "cannot encode the CA");
        goto fail;
    }
    t->ca_der_len = (size_t)dl;

    /* guest side: old clients welcome (busybox wget sends no signature_algorithms,
     * which OpenSSL refuses above security level 0); the peer is our own guest */
    t->server = SSL_CTX_new(TLS_server_method());
    t->client = SSL_CTX_new(TLS_client_method());
    if (!t->server || !t->client) {
        gd_err_set(err, rc, "cannot make TLS contexts: %s", openssl_why());
        goto fail;
    }
    SSL_CTX_set_security_level(t->server, 0);
    SSL_CTX_set_min_proto_version(t->server, TLS1_2_VERSION);
    SSL_CTX_set_options(t->server, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
    SSL_CTX_set_tlsext_servername_callback(t->server, on_servername);
    SSL_CTX_set_tlsext_servername_arg(t->server, t);
    SSL_CTX_set_alpn_select_cb(t->server, on_alpn, NULL);
    SSL_CTX_set_session_cache_mode(t->server, SSL_SESS_CACHE_SERVER);
    static const unsigned char sid[] = "gondolin";
    SSL_CTX_set_session_id_context(t->server, sid, sizeof(sid) - 1);
    SSL_CTX_set_mode(t->server, SSL_MODE_RELEASE_BUFFERS);

    /* upstream side: the real chain, the real name */
    SSL_CTX_set_verify(t->client, SSL_VERIFY_PEER, NULL);
    SSL_CTX_set_min_proto_version(t->client, TLS1_2_VERSION);
    /* the host's trust store (~200 KB of PEM, ~30 ms to parse) is read by the first
     * upstream TLS connection, not by every start: most sandboxes make none, or make it
     * long after the command started */
    t->trust_pending = 1;
    if (o && o->upstream_ca &&
        SSL_CTX_load_verify_locations(t->client, o->upstream_ca, NULL) != 1) {
        gd_err_set(err, -EINVAL, "cannot load upstream CA file %s: %s", o->upstream_ca,
                   openssl_why());
        goto fail;
    }
    static const unsigned char h11[] = "\x08http/1.1";
    SSL_CTX_set_alpn_protos(t->client, h11, sizeof(h11) - 1);
    SSL_CTX_set_session_cache_mode(t->client, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_mode(t->client, SSL_MODE_RELEASE_BUFFERS);
    *out = t;
    return 0;
fail:
    gd_tls_free(t);
    return rc;
}

void gd_tls_free(gd_tls *t)
{
    if (!t)
        return;
    for (size_t k = 0; k < LEAF_CACHE; k++) {
        free(t->cache[k].name);
        X509_free(t->cache[k].cert);
    }
    SSL_CTX_free(t->server);
    SSL_CTX_free(t->client);
    X509_free(t->ca);
    EVP_PKEY_free(t->ca_key);
    EVP_PKEY_free(t->leaf_key);
    free(t->ca_pem);
    OPENSSL_free(t->ca_der);
    free(t);
}

const char *gd_tls_ca_pem(const gd_tls *t)
{
    return t->ca_pem;
}

const unsigned char *gd_tls_ca_der(const gd_tls *t, size_t *len)
{
    *len = t->ca_der_len;
    return t->ca_der;
}

SSL *gd_tls_server_new(gd_tls *t, const char *fallback_name)
{
    SSL *s = SSL_new(t->server);
    if (!s)
        return NULL;
    if (fallback_name) {
        char *d = strdup(fallback_name);
        if (!d || !SSL_set_ex_data(s, ex_fallback, d)) {
            free(d);
            SSL_free(s);
            return NULL;
        }
    }
    SSL_set_accept_state(s);
    return s;
}

const char *gd_tls_server_sni(SSL *ssl)
{
    return SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
}

SSL *gd_tls_client_new(gd_tls *t, const char *host)
{
    if (t->trust_pending) {
        t->trust_pending = 0;
        /* (a store that cannot be read leaves only --upstream-ca: verification then
         * fails and says so per connection) */
        if (SSL_CTX_set_default_verify_paths(t->client) != 1)
            ERR_clear_error();
    }
    SSL *s = SSL_new(t->client);
    if (!s)
        return NULL;
    int ok;
    if (is_ip_literal(host))
        ok = X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(s), host) == 1;
    else
        ok = SSL_set_tlsext_host_name(s, host) == 1 && SSL_set1_host(s, host) == 1;
    if (!ok) {
        SSL_free(s);
        return NULL;
    }
    SSL_set_connect_state(s);
    return s;
}

/* ---- ClientHello peek (no OpenSSL; every length checked against what is left) ---- */

static unsigned get16(const unsigned char *p)
{
    return (unsigned)p[0] << 8 | p[1];
}

int gd_tls_peek_sni(const unsigned char *p, size_t n, char *out, size_t cap)
{
    if (n < 5)
        return -1;
    if (p[0] != 0x16 || p[1] != 3 || p[2] > 4)
        return -1;
    size_t rl = get16(p + 3);
    if (rl < 4 || n < 5 + rl)
        return -1;
    const unsigned char *h = p + 5, *e = h + rl;
    if (h[0] != 1) /* client_hello */
        return -1;
    size_t hl = (size_t)h[1] << 16 | (size_t)h[2] << 8 | h[3];
    h += 4;
    if (hl > (size_t)(e - h))
        return -1; /* a hello split across records: not something we need to sniff */
    e = h + hl;
    if (e - h < 34)
        return -1;
    h += 34; /* version + random */
    if (e - h < 1 || (size_t)(e - h) < 1u + h[0])
        return -1;
    h += 1 + h[0]; /* session id */
    if (e - h < 2 || (size_t)(e - h) < 2u + get16(h))
        return -1;
    h += 2 + get16(h); /* cipher suites */
    if (e - h < 1 || (size_t)(e - h) < 1u + h[0])
        return -1;
    h += 1 + h[0]; /* compression */
    if (h == e)
        return 0; /* no extensions */
    if (e - h < 2 || (size_t)(e - h) < 2u + get16(h))
        return -1;
    e = h + 2 + get16(h);
    h += 2;
    while (e - h >= 4) {
        unsigned type = get16(h), len = get16(h + 2);
        h += 4;
        if ((size_t)(e - h) < len)
            return -1;
        if (type == 0) { /* server_name */
            const unsigned char *s = h, *se = h + len;
            if (se - s < 2 || (size_t)(se - s) < 2u + get16(s))
                return -1;
            se = s + 2 + get16(s);
            s += 2;
            while (se - s >= 3) {
                unsigned nt = s[0], nl = get16(s + 1);
                s += 3;
                if ((size_t)(se - s) < nl)
                    return -1;
                if (nt == 0) {
                    if (!nl || nl >= cap || memchr(s, 0, nl))
                        return -1;
                    memcpy(out, s, nl);
                    out[nl] = 0;
                    return 1;
                }
                s += nl;
            }
            return -1;
        }
        h += len;
    }
    return h == e ? 0 : -1;
}
