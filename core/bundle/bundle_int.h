/* bundle_int.h - private to core/bundle: signature primitives shared by reader and
 * writer, and the archive's fixed sizes. */
#ifndef GD_BUNDLE_INT_H
#define GD_BUNDLE_INT_H

#include "bundle.h"

#define GD__SIG_REC 96 /* 32 public key + 64 signature */

/* Does sig verify over GD_BUNDLE_SIG_DOMAIN + msg with the raw public key pub? */
int gd__bundle_sig_ok(const unsigned char pub[32], const unsigned char sig[64], const void *msg,
                      size_t n);
/* Signs GD_BUNDLE_SIG_DOMAIN + msg with the private key in keyfile. */
int gd__bundle_sig_make(const char *keyfile, const void *msg, size_t n, unsigned char pub[32],
                        unsigned char sig[64], struct gd_err *err);
void gd__bundle_key_id(const unsigned char pub[32], char id[65]);

static inline uint64_t gd__be_get(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v = v << 8 | p[i];
    return v;
}
static inline void gd__be_put(uint8_t *p, uint64_t v, int n)
{
    for (int i = n - 1; i >= 0; i--, v >>= 8)
        p[i] = (uint8_t)v;
}

#endif
