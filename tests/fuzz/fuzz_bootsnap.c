/* libFuzzer target: what a booted or memory snapshot brings in from outside the process:
 * the file's header (on disk: untrusted), QMP lines from QEMU (semi-trusted), the guest
 * agent's RESUME decoder, and the host's skip to the resumed guest's token over bytes
 * the guest wrote (untrusted). */
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
            (r.entropy_len > GD_RESUME_MAX_ENTROPY || r.entropy + r.entropy_len != d + n ||
             (r.token && r.token + GD_RESUME_TOKEN_LEN != r.entropy)))
            __builtin_trap();
    }
    /* the guest's bytes through a small reader, in slices, looking for a fixed mark: the
     * reader never overflows and a found mark is consumed whole */
    static uint8_t buf[256];
    static const uint8_t mark[28] = "\x0d\0\0\0\0\0\0\0\x10\0\0\0token-token-tok";
    struct gd_reader rd;
    gd_reader_init(&rd, buf, sizeof(buf));
    for (size_t off = 0; off < n;) {
        size_t room, k;
        uint8_t *p = gd_reader_space(&rd, &room);
        if (!room)
            __builtin_trap(); /* skip_to keeps at most 27 bytes */
        k = n - off < room ? n - off : room;
        k = k > 97 ? 97 : k;
        memcpy(p, d + off, k);
        gd_reader_commit(&rd, k);
        off += k;
        size_t before = rd.len - rd.off;
        if (gd_reader_skip_to(&rd, mark, sizeof(mark)) == 1) {
            if (memcmp(rd.buf + rd.off - sizeof(mark), mark, sizeof(mark)))
                __builtin_trap();
            break;
        }
        if (rd.len - rd.off > before || rd.len - rd.off >= sizeof(mark))
            __builtin_trap();
    }
    return 0;
}
