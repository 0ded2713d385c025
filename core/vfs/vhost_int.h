/* vhost_int.h - the pieces of the virtio-fs back-end that run without a thread or a
 * socket: the guest memory table, the split-ring walker (virtq.c) and the vhost-user
 * message handler (vhost.c), so unit tests and fuzz targets can drive them directly.
 *
 * Everything in guest memory is hostile and may change while we read it: the walker
 * reads each ring index and descriptor exactly once into locals, checks every (address,
 * length) against one mapped region, and never parses shared memory (the request is
 * copied into a private buffer first). */
#ifndef GD_VFS_VHOST_INT_H
#define GD_VFS_VHOST_INT_H

#include "vfs/vhost.h"

#include <stddef.h>
#include <stdint.h>

/* Memory regions QEMU may share (VHOST_MEMORY_BASELINE_NREGIONS: we do not offer
 * CONFIGURE_MEM_SLOTS). */
#define GD__VHOST_MAX_REGIONS 8
/* hiprio + one request queue (QEMU's num-request-queues=1, its default) */
#define GD__VHOST_NQUEUES 2
/* The largest ring QEMU may configure (virtio's limit for split rings). */
#define GD__VQ_MAX_NUM 32768
/* The largest request (a WRITE of GD_FUSE_MAX_IO plus its headers) and reply buffer. */
#define GD__VQ_MAX_REQ ((1u << 20) + 4096)

struct gd__vmem_region {
    uint64_t gpa;  /* guest-physical start */
    uint64_t size; /* bytes */
    uint64_t uva;  /* QEMU's virtual address of the same bytes (ring addresses) */
    uint8_t *host; /* our mapping of gpa */
    void *map;     /* what to munmap (NULL: not ours, e.g. a test buffer) */
    size_t maplen;
};

struct gd__vmem {
    struct gd__vmem_region r[GD__VHOST_MAX_REGIONS];
    unsigned n;
};

/* Our pointer to [gpa, gpa + len) when that range lies wholly in one region (no
 * wrap-around), else NULL. len 0 is refused too (callers skip empty buffers). */
uint8_t *gd__vmem_gpa(const struct gd__vmem *m, uint64_t gpa, uint64_t len);
/* The same for a QEMU virtual address (vring addresses in SET_VRING_ADDR). */
uint8_t *gd__vmem_uva(const struct gd__vmem *m, uint64_t uva, uint64_t len);

/* One writable buffer of the chain being served. */
struct gd__vq_seg {
    uint8_t *p;
    uint32_t len;
};

/* One split virtqueue. num, the three ring pointers and the indexes are set up by the
 * caller (gd__vq_map); segs holds num entries. */
struct gd__vq {
    uint16_t num;                           /* ring size, a power of 2, <= GD__VQ_MAX_NUM */
    uint16_t last_avail;                    /* next avail entry to serve */
    uint16_t used_idx;                      /* our copy of used->idx */
    uint8_t *desc, *avail, *used;           /* in guest memory, validated for num */
    uint64_t desc_uva, avail_uva, used_uva; /* as SET_VRING_ADDR gave them */
    int addr_set;
    struct gd__vq_seg *segs;
};

/* Translates the ring addresses for q->num against m: 0, or -EINVAL (a ring outside
 * the regions or misaligned; q's pointers are then NULL). */
int gd__vq_map(struct gd__vq *q, const struct gd__vmem *m);

/* Private buffers the walker copies through (each GD__VQ_MAX_REQ bytes). */
struct gd__vq_bufs {
    uint8_t *in;
    uint8_t *out;
};

/* Serves the chains the guest has made available, at most q->num of them: copies each
 * request into b->in, calls h(ud, in, n, out, min(writable bytes, GD__VQ_MAX_REQ)),
 * scatters the reply over the writable descriptors and pushes the used element. *stop
 * (if not NULL) is checked before each chain. Returns the number of chains served (>= 0;
 * *notify then says whether the guest wants an interrupt, *more that there may be more:
 * call again without waiting for a kick), or -EPROTO with why[] set: the guest (or the
 * handler, with -EPROTO) broke the protocol and the device must be dropped. */
long gd__vq_drain(struct gd__vq *q, const struct gd__vmem *m, gd_vhost_fs_handler h, void *ud,
                  const struct gd__vq_bufs *b, const volatile int *stop, int *notify, int *more,
                  char *why, size_t whycap);

/* ---- vhost-user messages (vhost.c) ---- */

#define GD__VU_HDR 12
/* The largest payload we accept (SET_MEM_TABLE with 8 regions is 264 bytes). */
#define GD__VU_MAX_PAYLOAD 512
#define GD__VU_MAX_FDS GD__VHOST_MAX_REGIONS

/* A back-end's device state, without the socket and the thread. */
struct gd__vu_queue {
    struct gd__vq vq;
    int kick, call, err; /* eventfds from QEMU, or -1 */
    int started;         /* kicked into service (SET_VRING_KICK); stopped by GET_VRING_BASE */
    int enabled;         /* SET_VRING_ENABLE (rings start disabled with PROTOCOL_FEATURES) */
};

struct gd__vu_dev {
    uint64_t features, protocol_features;
    int owner;
    struct gd__vmem mem;
    struct gd__vu_queue q[GD__VHOST_NQUEUES];
    char error[256];
};

void gd__vu_dev_init(struct gd__vu_dev *d);
/* Unmaps the memory, closes every fd, frees the segment arrays. */
void gd__vu_dev_reset(struct gd__vu_dev *d);

/* Handles one message: hdr (GD__VU_HDR bytes) and its payload (hdr's size bytes, at most
 * GD__VU_MAX_PAYLOAD), with the fds that came with it. Takes ownership of every fd
 * (kept or closed). Writes a reply into reply (GD__VU_HDR + GD__VU_MAX_PAYLOAD bytes)
 * and sets *reply_len when one is due (0 otherwise). *kick_queue is set to the queue a
 * new kick fd started (serve it at once: the guest may have queued requests), else -1.
 * Returns 0, or -EPROTO with d->error set: drop the device. */
int gd__vu_handle(struct gd__vu_dev *d, const uint8_t *hdr, const uint8_t *payload, int *fds,
                  size_t nfds, uint8_t *reply, size_t *reply_len, int *kick_queue);

/* Whether queue i is served when its kick fd fires. */
int gd__vu_queue_live(const struct gd__vu_dev *d, unsigned i);

#endif
