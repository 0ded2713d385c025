/* keys.c - Ed25519 keys (PEM through OpenSSL's EVP API), trust sets, and the sign and
 * verify primitives over the manifest bytes. */
#define _GNU_SOURCE
#include "bundle_int.h"

#include "base/fs.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

void gd__bundle_key_id(const unsigned char pub[32], char id[65])
{
    gd_sha256_hex(pub, 32, id);
}

/* domain || msg in one buffer (Ed25519 is one-shot) */
static unsigned char *tbs(const void *msg, size_t n, size_t *len)
{
    size_t dl = strlen(GD_BUNDLE_SIG_DOMAIN);
    unsigned char *b = malloc(dl + n);
    if (!b)
        return NULL;
    memcpy(b, GD_BUNDLE_SIG_DOMAIN, dl);
    memcpy(b + dl, msg, n);
    *len = dl + n;
    return b;
}

int gd__bundle_sig_ok(const unsigned char pub[32], const unsigned char sig[64], const void *msg,
                      size_t n)
{
    EVP_PKEY *k = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, pub, 32);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    size_t len = 0;
    unsigned char *b = tbs(msg, n, &len);
    int ok = k && md && b && EVP_DigestVerifyInit(md, NULL, NULL, NULL, k) == 1 &&
             EVP_DigestVerify(md, sig, 64, b, len) == 1;
    free(b);
    EVP_MD_CTX_free(md);
    EVP_PKEY_free(k);
    return ok;
}

static EVP_PKEY *read_pem(const char *path, int priv, struct gd_err *err)
{
    FILE *f = fopen(path, "re");
    if (!f) {
        gd_err_set(err, -errno, "cannot read key %s: %s", path, strerror(errno));
        return NULL;
    }
    EVP_PKEY *k =
        priv ? PEM_read_PrivateKey(f, NULL, NULL, NULL) : PEM_read_PUBKEY(f, NULL, NULL, NULL);
    fclose(f);
    if (!k || EVP_PKEY_id(k) != EVP_PKEY_ED25519) {
        EVP_PKEY_free(k);
        gd_err_set(err, -EINVAL, "%s is not an Ed25519 %s key (PEM)", path,
                   priv ? "private" : "public");
        return NULL;
    }
    return k;
}

static int raw_pub(EVP_PKEY *k, unsigned char pub[32])
{
    size_t l = 32;
    return EVP_PKEY_get_raw_public_key(k, pub, &l) == 1 && l == 32 ? 0 : -EINVAL;
}

int gd__bundle_sig_make(const char *keyfile, const void *msg, size_t n, unsigned char pub[32],
                        unsigned char sig[64], struct gd_err *err)
{
    EVP_PKEY *k = read_pem(keyfile, 1, err);
    if (!k)
        return -EINVAL;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    size_t len = 0, sl = 64;
    unsigned char *b = tbs(msg, n, &len);
    int ok = md && b && raw_pub(k, pub) == 0 && EVP_DigestSignInit(md, NULL, NULL, NULL, k) == 1 &&
             EVP_DigestSign(md, sig, &sl, b, len) == 1 && sl == 64;
    free(b);
    EVP_MD_CTX_free(md);
    EVP_PKEY_free(k);
    return ok ? 0 : gd_err_set(err, -EIO, "signing with %s failed", keyfile);
}

int gd_bundle_key_load(const char *path, struct gd_bundle_key *out, struct gd_err *err)
{
    struct gd_err sub = {{0}};
    EVP_PKEY *k = read_pem(path, 0, &sub);
    if (!k && !(k = read_pem(path, 1, err)))
        return -EINVAL;
    int rc = raw_pub(k, out->pub);
    EVP_PKEY_free(k);
    if (rc)
        return gd_err_set(err, rc, "%s: cannot read its public key", path);
    gd__bundle_key_id(out->pub, out->id);
    return 0;
}

int gd_bundle_keygen(const char *path, const char *pubpath, char id[65], struct gd_err *err)
{
    EVP_PKEY *k = NULL;
    EVP_PKEY_CTX *c = EVP_PKEY_CTX_new_id(EVP_PKEY_ED25519, NULL);
    if (!c || EVP_PKEY_keygen_init(c) != 1 || EVP_PKEY_keygen(c, &k) != 1) {
        EVP_PKEY_CTX_free(c);
        return gd_err_set(err, -EIO, "cannot generate an Ed25519 key");
    }
    EVP_PKEY_CTX_free(c);
    int rc = 0;
    FILE *f = NULL, *pf = NULL;
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) {
        rc = gd_err_set(err, -errno, "cannot create %s: %s", path, strerror(errno));
        goto out;
    }
    f = fdopen(fd, "w");
    if (!f || !PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL, NULL) || fflush(f) ||
        fsync(fileno(f))) {
        rc = gd_err_set(err, -EIO, "cannot write %s", path);
        if (!f)
            close(fd);
        goto out;
    }
    pf = fopen(pubpath, "wxe");
    if (!pf || !PEM_write_PUBKEY(pf, k) || fflush(pf)) {
        rc = gd_err_set(err, -EIO, "cannot write %s: %s", pubpath, strerror(errno));
        unlink(path);
        goto out;
    }
    unsigned char pub[32];
    raw_pub(k, pub);
    gd__bundle_key_id(pub, id);
out:
    if (pf)
        fclose(pf);
    if (f)
        fclose(f);
    EVP_PKEY_free(k);
    return rc;
}

int gd_bundle_trust_add_file(struct gd_bundle_trust *t, const char *path, struct gd_err *err)
{
    struct gd_bundle_key k;
    EVP_PKEY *p = read_pem(path, 0, err);
    if (!p)
        return -EINVAL;
    int rc = raw_pub(p, k.pub);
    EVP_PKEY_free(p);
    if (rc)
        return gd_err_set(err, rc, "%s: cannot read its public key", path);
    gd__bundle_key_id(k.pub, k.id);
    for (size_t i = 0; i < t->n; i++)
        if (!strcmp(t->keys[i].id, k.id))
            return 0;
    struct gd_bundle_key *v = realloc(t->keys, (t->n + 1) * sizeof(*v));
    if (!v)
        return gd_err_set(err, -ENOMEM, "out of memory");
    t->keys = v;
    t->keys[t->n++] = k;
    return 0;
}

int gd_bundle_trust_add_dir(struct gd_bundle_trust *t, const char *dir, struct gd_err *err)
{
    char **names;
    size_t n;
    int rc = gd_dir_list(dir, &names, &n);
    if (rc == -ENOENT || rc == -ENOTDIR)
        return 0;
    if (rc)
        return gd_err_set(err, rc, "cannot list trust directory %s: %s", dir, strerror(-rc));
    for (size_t i = 0; i < n && !rc; i++) {
        size_t l = strlen(names[i]);
        if (l < 5 || strcmp(names[i] + l - 4, ".pub"))
            continue;
        char p[4400];
        snprintf(p, sizeof(p), "%s/%s", dir, names[i]);
        rc = gd_bundle_trust_add_file(t, p, err);
    }
    gd_dir_list_free(names, n);
    return rc;
}

void gd_bundle_trust_free(struct gd_bundle_trust *t)
{
    free(t->keys);
    t->keys = NULL;
    t->n = 0;
}
