/* libFuzzer target: ClientHello/SNI sniffing (our own parser), and the same bytes
 * through OpenSSL's server side with the MITM leaf selection (SNI callback). */
#include "tls/tls.h"

#include <openssl/err.h>
#include <stdlib.h>
#include <string.h>

static gd_tls *tls;

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n);
int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n)
{
    char sni[256];
    int rc = gd_tls_peek_sni(d, n, sni, sizeof(sni));
    if (rc == 1 && strlen(sni) >= sizeof(sni))
        __builtin_trap();
    if (!tls) {
        struct gd_err err;
        char dir[] = "/tmp/gd-fuzz-ca-XXXXXX";
        struct gd_tls_opts o = {.ca_dir = mkdtemp(dir)};
        if (gd_tls_new(&o, &tls, &err))
            abort();
    }
    SSL *s = gd_tls_server_new(tls, "fallback.test");
    BIO *in = BIO_new(BIO_s_mem()), *out = BIO_new(BIO_s_mem());
    SSL_set_bio(s, in, out);
    BIO_write(in, d, (int)n);
    SSL_do_handshake(s);
    SSL_free(s);
    ERR_clear_error();
    return 0;
}
