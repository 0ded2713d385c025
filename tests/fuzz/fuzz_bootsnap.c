/* libFuzzer target: what a booted snapshot brings in from outside the process: the
 * file's header (on disk: untrusted), QMP lines from QEMU (semi-trusted), and the
 * guest agent's RESUME decoder. */
#include "ctl/proto.h"
#include "vm/qmp.h"
#include "vm/snapshot.h"

#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n);
int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n)
{
    struct gd_bootsnap_hdr h;
    if (gd_bootsnap_hdr_parse(d, n, &h) == 0) {
        /* what parses re-encodes to the same bytes */
        uint8_t b[GD_BOOTSNAP_HDR_LEN];
        gd_bootsnap_hdr_write(b, &h);
        if (memcmp(b, d, GD_BOOTSNAP_HDR_LEN))
            __builtin_trap();
        if (strlen(h.version) >= sizeof(h.version) || strlen(h.build_id) >= sizeof(h.build_id))
            __builtin_trap();
    }
    struct gd_qmp_msg m;
    cJSON *root;
    if (gd__qmp_parse((const char *)d, n, &m, &root) == 0) {
        if (strlen(m.text) >= sizeof(m.text))
            __builtin_trap();
        cJSON_Delete(root);
    } else if (root) {
        __builtin_trap();
    }
    if (n <= GD_PROTO_MAX_BODY) {
        struct gd_msg_resume r;
        if (gd_dec_resume(d, (uint32_t)n, &r) == 0 &&
            (r.entropy_len > GD_RESUME_MAX_ENTROPY || r.entropy + r.entropy_len != d + n))
            __builtin_trap();
    }
    return 0;
}
