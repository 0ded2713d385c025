/* libFuzzer target: the guest's DNS queries (parse, then build every kind of reply). */
#include "dns/dns.h"

#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n);
int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n)
{
    struct gd_dns_q q;
    uint8_t out[1500];
    int rc = gd_dns_parse(d, n, &q);
    if (rc == 0) {
        static const uint8_t a4[2][4] = {{198, 19, 1, 1}, {198, 19, 1, 2}};
        gd_dns_reply(d, &q, 0, a4, 2, NULL, 0, 60, out, sizeof(out));
        gd_dns_reply(d, &q, 3, NULL, 0, NULL, 0, 0, out, 16);
        if (strlen(q.name) > 253)
            __builtin_trap();
    } else if (rc == -1) {
        gd_dns_formerr(d, n, out, sizeof(out));
    }
    return 0;
}
