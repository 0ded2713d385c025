/* virtq.c - the split-ring walker of the virtio-fs back-end: guest memory lookups and
 * the service of available descriptor chains. No thread, no socket, no allocation.
 *
 * The guest owns the rings and the buffers and may rewrite them at any moment (another
 * vCPU, or a malicious kernel). So: every index and descriptor is read once, with an
 * atomic load into a local, and only the local is used; every buffer is checked to lie
 * in one region before it is touched; chains are bounded by the ring size (a loop in
 * the `next` links ends there); the request is copied into a private buffer before
 * anyone parses it. The guest can make us serve garbage, never make us read or write
 * outside the memory QEMU shared. */
#include "vfs/vhost_int.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* Split ring layout (virtio 1.x, little-endian; the host is little-endian too). */
#define DESC_SIZE 16
#define AVAIL_RING 4 /* u16 flags, u16 idx, u16 ring[num] */
#define USED_RING 4  /* u16 flags, u16 idx, {u32 id, u32 len} ring[num] */
#define F_NEXT 1
#define F_WRITE 2
#define F_INDIRECT 4
#define AVAIL_F_NO_INTERRUPT 1

static uint8_t *region_lookup(const struct gd__vmem *m, uint64_t a, uint64_t len, int uva)
{
    if (len == 0)
        return NULL;
    for (unsigned i = 0; i < m->n && i < GD__VHOST_MAX_REGIONS; i++) {
        const struct gd__vmem_region *r = &m->r[i];
        uint64_t start = uva ? r->uva : r->gpa;
        if (a < start)
            continue;
        uint64_t off = a - start;
        if (off >= r->size || len > r->size - off)
            continue;
        return r->host + off;
    }
    return NULL;
}

uint8_t *gd__vmem_gpa(const struct gd__vmem *m, uint64_t gpa, uint64_t len)
{
    return region_lookup(m, gpa, len, 0);
}

uint8_t *gd__vmem_uva(const struct gd__vmem *m, uint64_t uva, uint64_t len)
{
    return region_lookup(m, uva, len, 1);
}

int gd__vq_map(struct gd__vq *q, const struct gd__vmem *m)
{
    q->desc = q->avail = q->used = NULL;
    if (!q->addr_set || !q->num)
        return -EINVAL;
    uint64_t n = q->num;
    /* alignments the spec requires; they also make our 16/32/64-bit loads aligned */
    if (q->desc_uva % 16 || q->avail_uva % 2 || q->used_uva % 4)
        return -EINVAL;
    uint8_t *d = gd__vmem_uva(m, q->desc_uva, DESC_SIZE * n);
    uint8_t *a = gd__vmem_uva(m, q->avail_uva, AVAIL_RING + 2 * n);
    uint8_t *u = gd__vmem_uva(m, q->used_uva, USED_RING + 8 * n);
    if (!d || !a || !u)
        return -EINVAL;
    q->desc = d;
    q->avail = a;
    q->used = u;
    return 0;
}

/* Loads and stores on guest memory: once, atomically, at aligned addresses. */
static uint16_t ld16(const uint8_t *p)
{
    return __atomic_load_n((const uint16_t *)(const void *)p, __ATOMIC_RELAXED);
}
static uint32_t ld32(const uint8_t *p)
{
    return __atomic_load_n((const uint32_t *)(const void *)p, __ATOMIC_RELAXED);
}
static uint64_t ld64(const uint8_t *p)
{
    return __atomic_load_n((const uint64_t *)(const void *)p, __ATOMIC_RELAXED);
}
static void st32(uint8_t *p, uint32_t v)
{
    __atomic_store_n((uint32_t *)(void *)p, v, __ATOMIC_RELAXED);
}

static long fail(char *why, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static long fail(char *why, size_t cap, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, cap, fmt, ap);
    va_end(ap);
    return -EPROTO;
}

/* Serves the chain whose head the avail ring names at slot q->last_avail. */
static long serve_one(struct gd__vq *q, const struct gd__vmem *m, gd_vhost_fs_handler h, void *ud,
                      const struct gd__vq_bufs *b, char *why, size_t cap)
{
    uint16_t num = q->num;
    uint16_t head = ld16(q->avail + AVAIL_RING + 2u * (q->last_avail & (num - 1)));
    if (head >= num)
        return fail(why, cap, "avail ring names descriptor %u of %u", head, num);
    size_t in = 0, nsegs = 0;
    uint64_t wtotal = 0;
    int writing = 0;
    uint16_t i = head;
    for (unsigned count = 0;; count++) {
        if (count >= num)
            return fail(why, cap, "descriptor chain at %u loops or exceeds the ring size %u", head,
                        num);
        const uint8_t *d = q->desc + (size_t)DESC_SIZE * i;
        uint64_t addr = ld64(d);
        uint32_t len = ld32(d + 8);
        uint16_t flags = ld16(d + 12);
        uint16_t next = ld16(d + 14);
        if (flags & F_INDIRECT)
            return fail(why, cap, "indirect descriptor (not negotiated)");
        uint8_t *p = NULL;
        if (len && !(p = gd__vmem_gpa(m, addr, len)))
            return fail(why, cap, "descriptor %u: buffer 0x%llx+%u outside guest memory", i,
                        (unsigned long long)addr, len);
        if (flags & F_WRITE) {
            writing = 1;
            if (len) {
                q->segs[nsegs].p = p;
                q->segs[nsegs].len = len;
                nsegs++;
                wtotal += len;
            }
        } else {
            if (writing)
                return fail(why, cap, "descriptor %u: readable after writable", i);
            if (len > GD__VQ_MAX_REQ - in)
                return fail(why, cap, "request over %u bytes", GD__VQ_MAX_REQ);
            if (len)
                memcpy(b->in + in, p, len); /* the private copy: never parse guest memory */
            in += len;
        }
        if (!(flags & F_NEXT))
            break;
        if (next >= num)
            return fail(why, cap, "descriptor %u: next %u outside the ring of %u", i, next, num);
        i = next;
    }
    size_t ocap = wtotal < GD__VQ_MAX_REQ ? (size_t)wtotal : GD__VQ_MAX_REQ;
    long r = h(ud, b->in, in, b->out, ocap);
    if (r < 0)
        return fail(why, cap, "malformed request (%s)", r == -EPROTO ? "EPROTO" : "handler error");
    if ((size_t)r > ocap)
        return fail(why, cap, "reply of %ld bytes for a %zu-byte buffer", r, ocap);
    size_t done = 0;
    for (size_t s = 0; s < nsegs && done < (size_t)r; s++) {
        size_t k = q->segs[s].len < (size_t)r - done ? q->segs[s].len : (size_t)r - done;
        memcpy(q->segs[s].p, b->out + done, k);
        done += k;
    }
    uint8_t *e = q->used + USED_RING + 8u * (q->used_idx & (num - 1));
    st32(e, head);
    st32(e + 4, (uint32_t)r);
    q->used_idx++;
    /* the element and the reply bytes before the index the guest polls */
    __atomic_store_n((uint16_t *)(void *)(q->used + 2), q->used_idx, __ATOMIC_RELEASE);
    q->last_avail++;
    return 0;
}

long gd__vq_drain(struct gd__vq *q, const struct gd__vmem *m, gd_vhost_fs_handler h, void *ud,
                  const struct gd__vq_bufs *b, const volatile int *stop, int *notify, int *more,
                  char *why, size_t whycap)
{
    *notify = *more = 0;
    if (!q->desc || !q->avail || !q->used || !q->num || (q->num & (q->num - 1)) ||
        q->num > GD__VQ_MAX_NUM || !q->segs)
        return fail(why, whycap, "queue used before it was set up");
    /* At most one ring's worth per call: the guest can post as fast as we serve (or make
     * the used ring overlap the avail index), and the caller has other queues and the
     * socket to look after. */
    long served = 0;
    while (served < q->num) {
        /* the entries the guest wrote before it published this index */
        uint16_t avail =
            __atomic_load_n((const uint16_t *)(const void *)(q->avail + 2), __ATOMIC_ACQUIRE);
        uint16_t pending = (uint16_t)(avail - q->last_avail);
        if (pending > q->num)
            return fail(why, whycap, "avail index %u is %u ahead of %u (ring of %u)", avail,
                        pending, q->last_avail, q->num);
        if (!pending)
            break;
        for (; pending && served < q->num; pending--) {
            if (stop && *stop)
                return served;
            long r = serve_one(q, m, h, ud, b, why, whycap);
            if (r < 0)
                return r;
            served++;
        }
        if (pending)
            *more = 1;
    }
    if (served == q->num)
        *more = 1; /* look again (the caller does, after its other work) */
    if (served) {
        /* our used index before the guest's flag: a full barrier (the guest pairs it) */
        __atomic_thread_fence(__ATOMIC_SEQ_CST);
        *notify = !(ld16(q->avail) & AVAIL_F_NO_INTERRUPT);
    }
    return served;
}
