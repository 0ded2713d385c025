/* libFuzzer target: the virtio-fs back-end's guest- and QEMU-facing parsers.
 *
 * Mode 0 (first byte even): the split-ring walker (core/vfs/virtq.c) over a fuzzed guest
 * memory region holding the descriptor table, the avail and used rings and the buffers,
 * at fuzzed addresses, with fuzzed ring size and indexes. The region is a heap block of
 * exactly its size (ASan catches a byte outside it); every pointer the memory lookups
 * return is checked to lie inside; the handler checks what it is given; the walk must
 * end (libFuzzer's timeout).
 *
 * Mode 1 (first byte odd): a sequence of vhost-user messages into the message handler
 * (core/vfs/vhost.c), with a memfd or an eventfd attached on request, then a drain of
 * every queue the sequence made live. Nothing may crash, leak an fd or a mapping, or
 * leave a ring outside the mapped memory. */
#define _GNU_SOURCE
#include "vfs/vhost_int.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n);

static struct gd__vq_bufs bufs;
static uint8_t *region;
static size_t region_len;
static long reply_len; /* the handler's answer: a length, or -EPROTO */

static void check_in(const uint8_t *p, uint64_t len)
{
    if (p && (p < region || len > region_len || (size_t)(p - region) > region_len - len))
        __builtin_trap();
}

static long handler(void *ud, const void *in, size_t n, void *out, size_t cap)
{
    (void)ud;
    if (in != bufs.in || out != bufs.out || n > GD__VQ_MAX_REQ || cap > GD__VQ_MAX_REQ)
        __builtin_trap();
    if (reply_len < 0)
        return reply_len;
    size_t k = (size_t)reply_len;
    if (k <= cap)
        memset(out, 0xab, k);
    return (long)k; /* over cap now and then: the walker must refuse it */
}

static uint64_t rd(const uint8_t **d, size_t *n, size_t k)
{
    uint64_t v = 0;
    for (size_t i = 0; i < k && *n; i++, (*d)++, (*n)--)
        v |= (uint64_t) * *d << (8 * i);
    return v;
}

static void walker(const uint8_t *d, size_t n)
{
    struct gd__vq q;
    memset(&q, 0, sizeof(q));
    unsigned shift = (unsigned)rd(&d, &n, 1) % 9; /* rings of 1..256 */
    q.num = (uint16_t)(1u << shift);
    q.last_avail = (uint16_t)rd(&d, &n, 2);
    q.used_idx = (uint16_t)rd(&d, &n, 2);
    uint64_t gpa = rd(&d, &n, 8), uva = rd(&d, &n, 8);
    q.desc_uva = uva + rd(&d, &n, 2);
    q.avail_uva = uva + rd(&d, &n, 2);
    q.used_uva = uva + rd(&d, &n, 2);
    uint8_t r = (uint8_t)rd(&d, &n, 1);
    reply_len = r == 255 ? -EPROTO : r == 254 ? (long)GD__VQ_MAX_REQ + 1 : (long)r * 17;
    if (n < 16)
        return;
    region_len = n;
    region = malloc(n);
    memcpy(region, d, n);
    struct gd__vmem m;
    memset(&m, 0, sizeof(m));
    m.n = 1;
    m.r[0] = (struct gd__vmem_region){.gpa = gpa, .size = n, .uva = uva, .host = region};
    /* lookups: whatever they return lies inside */
    check_in(gd__vmem_gpa(&m, gpa + (uint64_t)d[0] * 3, d[1]), d[1]);
    check_in(gd__vmem_gpa(&m, gpa - 1, 2), 2);
    check_in(gd__vmem_uva(&m, uva + n - d[2], d[3]), d[3]);
    q.addr_set = 1;
    q.segs = malloc(q.num * sizeof(*q.segs));
    if (gd__vq_map(&q, &m) == 0) {
        check_in(q.desc, 16u * q.num);
        check_in(q.avail, 4 + 2u * q.num);
        check_in(q.used, 4 + 8u * q.num);
        int notify, more;
        char why[200];
        long s = gd__vq_drain(&q, &m, handler, NULL, &bufs, NULL, &notify, &more, why, sizeof(why));
        if (s < -EPROTO || (s < 0 && s != -EPROTO) || s > q.num)
            __builtin_trap();
        if (s < 0 && !why[0])
            __builtin_trap();
    } else if (q.desc || q.avail || q.used) {
        __builtin_trap();
    }
    free(q.segs);
    free(region);
    region = NULL;
}

static int memfd = -1;

static void messages(const uint8_t *d, size_t n)
{
    if (memfd < 0) {
        memfd = memfd_create("fuzz-guest", MFD_CLOEXEC);
        if (memfd < 0)
            abort();
    }
    /* fresh zeroed guest memory every run: the drains below write into it */
    if (ftruncate(memfd, 0) || ftruncate(memfd, 1 << 16))
        abort();
    struct gd__vu_dev dev;
    gd__vu_dev_init(&dev);
    reply_len = 16;
    while (n >= 13) {
        uint8_t spec = (uint8_t)rd(&d, &n, 1);
        uint8_t hdr[GD__VU_HDR];
        memcpy(hdr, d, GD__VU_HDR);
        d += GD__VU_HDR;
        n -= GD__VU_HDR;
        uint32_t size;
        memcpy(&size, hdr + 8, 4);
        uint8_t payload[GD__VU_MAX_PAYLOAD] = {0};
        size_t take = size < n ? size : n;
        if (take > sizeof(payload))
            take = sizeof(payload);
        memcpy(payload, d, take);
        d += take;
        n -= take;
        int fds[2];
        size_t nfds = 0;
        if (spec & 1)
            fds[nfds++] = dup(memfd);
        if (spec & 2)
            fds[nfds++] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        uint8_t reply[GD__VU_HDR + GD__VU_MAX_PAYLOAD];
        size_t rl = 0;
        int kq = -1;
        int rc = gd__vu_handle(&dev, hdr, payload, fds, nfds, reply, &rl, &kq);
        if (rl > sizeof(reply) || (rc && rc != -EPROTO) || (rc && !dev.error[0]))
            __builtin_trap();
        if (rc)
            break;
        for (unsigned i = 0; i < GD__VHOST_NQUEUES; i++) {
            struct gd__vq *q = &dev.q[i].vq;
            if (!q->desc)
                continue;
            /* a mapped ring lies in one mapped region */
            if (!gd__vmem_uva(&dev.mem, q->desc_uva, 16u * q->num) ||
                !gd__vmem_uva(&dev.mem, q->avail_uva, 4 + 2u * q->num) ||
                !gd__vmem_uva(&dev.mem, q->used_uva, 4 + 8u * q->num))
                __builtin_trap();
            if (gd__vu_queue_live(&dev, i)) {
                int notify, more;
                char why[200];
                gd__vq_drain(q, &dev.mem, handler, NULL, &bufs, NULL, &notify, &more, why,
                             sizeof(why));
            }
        }
    }
    gd__vu_dev_reset(&dev);
}

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n)
{
    if (!bufs.in) {
        bufs.in = malloc(GD__VQ_MAX_REQ);
        bufs.out = malloc(GD__VQ_MAX_REQ);
    }
    if (n < 1)
        return 0;
    if (d[0] & 1)
        messages(d + 1, n - 1);
    else
        walker(d + 1, n - 1);
    return 0;
}
