/* libFuzzer target: the disk checkpoint format (core/snap/format.c), which reads files
 * that may have been damaged or made by someone else: the trailer (the input's last 128
 * bytes, against the input's size and against the size its own lengths claim), the
 * metadata JSON (what parses must encode and parse back the same), and the qcow2
 * header checks. */
#include "snap/snap.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n);

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n)
{
    struct gd_snap_meta m, m2;
    char why[256];
    if (gd_snap_meta_parse(d, n, &m, why, sizeof(why)) == 0) {
        char *t = gd_snap_meta_encode(&m);
        if (!t || gd_snap_meta_parse(t, strlen(t), &m2, why, sizeof(why)) ||
            strcmp(m.build_id, m2.build_id) || strcmp(m.image, m2.image) ||
            m.nmounts != m2.nmounts || m.memory_mb != m2.memory_mb || m.cpus != m2.cpus ||
            m.memory != m2.memory || memcmp(m.mem_sha, m2.mem_sha, 32) ||
            memcmp(m.shape, m2.shape, 32) || strcmp(m.rootfs, m2.rootfs))
            __builtin_trap();
        free(t);
    }
    const char *w = NULL;
    uint64_t vsize;
    gd_snap_qcow2_check(d, n, (uint64_t)n * 4096, &vsize, &w);
    if (n >= GD_SNAP_TRAILER_LEN) {
        struct gd_snap_trailer t;
        const uint8_t *p = d + n - GD_SNAP_TRAILER_LEN;
        gd_snap_trailer_parse(p, GD_SNAP_TRAILER_LEN, n, &t, &w);
        /* the size its lengths claim (wrapping on purpose), and one off */
        uint64_t claim = 0;
        for (int i = 7; i >= 0; i--)
            claim = claim << 8 | p[16 + i];
        claim += (uint64_t)(p[12] | p[13] << 8 | p[14] << 16 | (uint32_t)p[15] << 24) +
                 GD_SNAP_TRAILER_LEN;
        uint64_t mem = 0; /* format 2: the memory stream's length */
        for (int i = 7; i >= 0; i--)
            mem = mem << 8 | p[88 + i];
        claim += mem;
        if (gd_snap_trailer_parse(p, GD_SNAP_TRAILER_LEN, claim, &t, &w) == 0) {
            uint8_t again[GD_SNAP_TRAILER_LEN];
            gd_snap_trailer_write(again, &t);
            if (memcmp(again, p, GD_SNAP_TRAILER_LEN))
                __builtin_trap(); /* an accepted trailer is exactly what we write */
        }
        gd_snap_trailer_parse(p, GD_SNAP_TRAILER_LEN, claim + 1, &t, &w);
    }
    return 0;
}
