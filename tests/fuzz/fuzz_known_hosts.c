/* libFuzzer target: a known_hosts file through the parser, then lookups of a few hosts
 * and ports with a fixed key and with key bytes taken from the input; the results must
 * be consistent, the notes printable, and nothing may leak. */
#include "ssh/ssh.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n);
int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n)
{
    static const char *const hosts[] = {"git.test", "GIT.test", "a.example.com", "10.0.0.1", "x"};
    static const unsigned ports[] = {22, 2222, 65535};
    static const char *const types[] = {"ssh-ed25519", "ecdsa-sha2-nistp256", "ssh-rsa"};
    unsigned char key[64];
    long kl = gd_ssh_base64_decode((const char *)d, n, key, sizeof(key));
    if (kl > (long)sizeof(key))
        __builtin_trap();

    gd_ssh_known_hosts *kh = gd_ssh_known_hosts_new();
    if (!kh)
        return 0;
    struct gd_err err;
    if (gd_ssh_known_hosts_add(kh, "fuzz", (const char *)d, n, &err))
        __builtin_trap();
    for (size_t i = 0; gd_ssh_known_hosts_note(kh, i); i++)
        for (const char *p = gd_ssh_known_hosts_note(kh, i); *p; p++)
            if (*p < 0x20 || *p > 0x7e)
                __builtin_trap();
    /* a blob: the base64 of the input's last token decoded, else its first bytes */
    unsigned char blob[16384];
    size_t bl = 0;
    size_t end = n, start;
    while (end && (d[end - 1] == '\n' || d[end - 1] == ' ' || d[end - 1] == '\r'))
        end--;
    start = end;
    while (start && d[start - 1] != ' ' && d[start - 1] != '\n')
        start--;
    long r = gd_ssh_base64_decode((const char *)d + start, end - start, blob, sizeof(blob));
    if (r > 0)
        bl = (size_t)r;
    else
        memcpy(blob, d, bl = n < 64 ? n : 64);
    for (size_t h = 0; h < sizeof(hosts) / sizeof(hosts[0]); h++)
        for (size_t p = 0; p < sizeof(ports) / sizeof(ports[0]); p++)
            for (size_t t = 0; t < sizeof(types) / sizeof(types[0]); t++) {
                struct gd_ssh_kh_result res;
                if (gd_ssh_known_hosts_check(kh, hosts[h], ports[p], types[t], blob, bl, &res))
                    __builtin_trap();
                if ((res.status == GD_SSH_KH_UNKNOWN) != (res.file == NULL) ||
                    (res.file && !res.line) || res.types > 31)
                    __builtin_trap();
                if (res.status == GD_SSH_KH_KNOWN &&
                    !(res.types & (unsigned)gd_ssh_key_type_parse(types[t])))
                    __builtin_trap();
            }
    gd_ssh_known_hosts_free(kh);
    return 0;
}
