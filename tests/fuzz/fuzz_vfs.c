/* libFuzzer target: the FUSE session (core/vfs/session.c) over the memory provider, fed
 * a sequence of requests after a valid INIT: whatever the guest sends, every reply is
 * well formed (its header's len is the returned length, within the buffer, and echoes
 * the request's unique), only FORGET, BATCH_FORGET and INTERRUPT go unanswered, and the
 * session frees everything (LeakSanitizer) with small node and handle caps reached.
 *
 * Input: frames of [1 byte: reply buffer size choice][2 bytes LE: n][n bytes: request].
 * A request of at least a header gets its len field set to n (the transport frames), so
 * the fuzzer explores bodies rather than framing. */
#include "base/err.h"
#include "vfs/fuse.h"
#include "vfs/vfs.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n);

#define OUTCAP (GD_FUSE_MAX_IO + 4096)

static uint8_t *out;

static void check(const uint8_t *req, size_t n, long r, size_t cap)
{
    struct fuse_in_header h = {0};
    if (n >= sizeof(h))
        memcpy(&h, req, sizeof(h));
    if (r == -EPROTO)
        return; /* the channel is dropped (a transport would stop here) */
    if (r < 0)
        __builtin_trap();
    if (r == 0) {
        if (n < sizeof(h) || (h.opcode != FUSE_FORGET && h.opcode != FUSE_BATCH_FORGET &&
                              h.opcode != FUSE_INTERRUPT))
            __builtin_trap();
        return;
    }
    struct fuse_out_header oh;
    if ((size_t)r > cap || (size_t)r < sizeof(oh))
        __builtin_trap();
    memcpy(&oh, out, sizeof(oh));
    if (oh.len != (uint32_t)r || oh.unique != h.unique || oh.error > 0 || oh.error < -511 ||
        (oh.error && oh.len != sizeof(oh)))
        __builtin_trap();
}

static long send(gd_vfs_session *s, uint8_t *req, size_t n, size_t cap)
{
    if (n >= sizeof(struct fuse_in_header)) {
        uint32_t len = (uint32_t)n;
        memcpy(req, &len, sizeof(len));
    }
    long r = gd_vfs_session_handle(s, req, n, out, cap);
    check(req, n, r, cap);
    return r;
}

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n)
{
    static const size_t caps[] = {16, 40, 150, 4096, OUTCAP};
    if (!out && !(out = malloc(OUTCAP)))
        return 0;
    gd_vfs_provider *pv;
    gd_vfs_session *s;
    if (gd_vfs_memory_new(256 << 10, &pv, NULL))
        return 0;
    struct gd_vfs_session_opts o = {.max_nodes = 64, .max_handles = 16, .mount = "/fuzz"};
    if (gd_vfs_session_new(pv, &o, &s, NULL))
        return 0;
    struct {
        struct fuse_in_header h;
        struct fuse_init_in in;
    } init = {
        .h = {.opcode = FUSE_INIT, .unique = 1},
        .in = {.major = 7, .minor = 38, .max_readahead = 1 << 20, .flags = GD_FUSE_INIT_SUPPORTED}};
    if (send(s, (uint8_t *)&init, sizeof(init), OUTCAP) <= 0)
        __builtin_trap();
    size_t pos = 0;
    while (n - pos >= 3) {
        size_t cap = caps[d[pos] % (sizeof(caps) / sizeof(*caps))];
        size_t len = (size_t)d[pos + 1] | (size_t)d[pos + 2] << 8;
        pos += 3;
        if (len > n - pos)
            len = n - pos;
        uint8_t *req = malloc(len ? len : 1);
        if (!req)
            break;
        memcpy(req, d + pos, len);
        send(s, req, len, cap);
        free(req);
        pos += len;
    }
    gd_vfs_session_free(s);
    return 0;
}
