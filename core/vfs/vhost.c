/* vhost.c - the vhost-user back-end of one virtio-fs device: the message handler (QEMU's
 * side of the protocol, fds included) and the thread that serves the socket and the
 * queues' kicks. The rings themselves are walked by virtq.c.
 *
 * What we offer is the minimum QEMU's vhost-user-fs-device needs: VIRTIO_F_VERSION_1,
 * the split ring with direct descriptors only (no INDIRECT_DESC, no EVENT_IDX: fewer
 * shapes of guest input, and a 1024-entry queue is plenty for our one request at a
 * time), protocol features REPLY_ACK only, two queues (hiprio and one request queue).
 * Anything else QEMU sends is a protocol error: the device is dropped (the error is
 * kept for gd_vhost_fs_error), never the process. */
#define _GNU_SOURCE
#include "vfs/vhost_int.h"

#include "base/err.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

enum {
    VU_GET_FEATURES = 1,
    VU_SET_FEATURES = 2,
    VU_SET_OWNER = 3,
    VU_RESET_OWNER = 4,
    VU_SET_MEM_TABLE = 5,
    VU_SET_VRING_NUM = 8,
    VU_SET_VRING_ADDR = 9,
    VU_SET_VRING_BASE = 10,
    VU_GET_VRING_BASE = 11,
    VU_SET_VRING_KICK = 12,
    VU_SET_VRING_CALL = 13,
    VU_SET_VRING_ERR = 14,
    VU_GET_PROTOCOL_FEATURES = 15,
    VU_SET_PROTOCOL_FEATURES = 16,
    VU_GET_QUEUE_NUM = 17,
    VU_SET_VRING_ENABLE = 18,
    VU_RESET_DEVICE = 34,
};

#define VU_VERSION 1u
#define VU_VERSION_MASK 3u
#define VU_FLAG_REPLY (1u << 2)
#define VU_FLAG_NEED_REPLY (1u << 3)

#define F_VERSION_1 (1ull << 32)
#define F_PROTOCOL_FEATURES (1ull << 30)
#define VU_FEATURES (F_VERSION_1 | F_PROTOCOL_FEATURES)
#define PF_REPLY_ACK (1ull << 3)
#define VU_PROTOCOL_FEATURES PF_REPLY_ACK

#define VRING_IDX_MASK 0xffull
#define VRING_NOFD (1ull << 8)

/* ---- the device state ---- */

static void close_fd(int *fd)
{
    if (*fd >= 0)
        close(*fd);
    *fd = -1;
}

void gd__vu_dev_init(struct gd__vu_dev *d)
{
    memset(d, 0, sizeof(*d));
    for (unsigned i = 0; i < GD__VHOST_NQUEUES; i++)
        d->q[i].kick = d->q[i].call = d->q[i].err = -1;
}

static void mem_unmap(struct gd__vmem *m)
{
    for (unsigned i = 0; i < m->n; i++)
        if (m->r[i].map)
            munmap(m->r[i].map, m->r[i].maplen);
    memset(m, 0, sizeof(*m));
}

static void queue_reset(struct gd__vu_queue *q)
{
    close_fd(&q->kick);
    close_fd(&q->call);
    close_fd(&q->err);
    free(q->vq.segs);
    memset(q, 0, sizeof(*q));
    q->kick = q->call = q->err = -1;
}

void gd__vu_dev_reset(struct gd__vu_dev *d)
{
    for (unsigned i = 0; i < GD__VHOST_NQUEUES; i++)
        queue_reset(&d->q[i]);
    mem_unmap(&d->mem);
}

int gd__vu_queue_live(const struct gd__vu_dev *d, unsigned i)
{
    if (i >= GD__VHOST_NQUEUES)
        return 0;
    const struct gd__vu_queue *q = &d->q[i];
    return q->started && q->vq.desc && (q->enabled || !(d->features & F_PROTOCOL_FEATURES));
}

static int dev_fail(struct gd__vu_dev *d, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static int dev_fail(struct gd__vu_dev *d, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(d->error, sizeof(d->error), fmt, ap);
    va_end(ap);
    return -EPROTO;
}

static uint32_t get32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}
static uint64_t get64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

/* SET_MEM_TABLE: u32 nregions, u32 padding, then per region u64 guest_phys_addr,
 * memory_size, userspace_addr, mmap_offset; one fd per region. The new table replaces
 * the old one only once every region is mapped. */
static int set_mem_table(struct gd__vu_dev *d, const uint8_t *p, uint32_t size, int *fds,
                         size_t nfds)
{
    if (size < 8)
        return dev_fail(d, "SET_MEM_TABLE: %u bytes", size);
    uint32_t n = get32(p);
    if (n == 0 || n > GD__VHOST_MAX_REGIONS || size != 8 + 32 * n || nfds != n)
        return dev_fail(d, "SET_MEM_TABLE: %u regions in %u bytes with %zu fds", n, size, nfds);
    struct gd__vmem nm;
    memset(&nm, 0, sizeof(nm));
    int rc = 0;
    for (uint32_t i = 0; i < n && !rc; i++) {
        const uint8_t *r = p + 8 + 32 * i;
        uint64_t gpa = get64(r), sz = get64(r + 8), uva = get64(r + 16), off = get64(r + 24);
        struct stat st;
        if (!sz || gpa + sz < gpa || uva + sz < uva || off + sz < off ||
            off + sz > (uint64_t)SIZE_MAX / 2 || off % (uint64_t)sysconf(_SC_PAGESIZE)) {
            rc = dev_fail(d, "SET_MEM_TABLE: region %u is malformed", i);
            break;
        }
        /* a file shorter than the mapping would SIGBUS us on access */
        if (fstat(fds[i], &st) || !S_ISREG(st.st_mode) || (uint64_t)st.st_size < off + sz) {
            rc = dev_fail(d, "SET_MEM_TABLE: region %u: the fd is not a file of %llu bytes", i,
                          (unsigned long long)(off + sz));
            break;
        }
        void *m = mmap(NULL, (size_t)(off + sz), PROT_READ | PROT_WRITE, MAP_SHARED, fds[i], 0);
        if (m == MAP_FAILED) {
            rc = dev_fail(d, "SET_MEM_TABLE: region %u: mmap: %s", i, strerror(errno));
            break;
        }
        nm.r[i] = (struct gd__vmem_region){.gpa = gpa,
                                           .size = sz,
                                           .uva = uva,
                                           .host = (uint8_t *)m + off,
                                           .map = m,
                                           .maplen = (size_t)(off + sz)};
        nm.n = i + 1;
    }
    for (size_t i = 0; i < nfds; i++)
        close_fd(&fds[i]); /* the mappings stay */
    if (rc) {
        mem_unmap(&nm);
        return rc;
    }
    mem_unmap(&d->mem);
    d->mem = nm;
    for (unsigned i = 0; i < GD__VHOST_NQUEUES; i++)
        if (d->q[i].vq.addr_set && gd__vq_map(&d->q[i].vq, &d->mem))
            return dev_fail(d, "SET_MEM_TABLE: queue %u's rings are outside the new table", i);
    return 0;
}

/* The queue a vring message names (u32 index first, or the u64 of KICK/CALL/ERR). */
static struct gd__vu_queue *queue_at(struct gd__vu_dev *d, uint64_t index, const char *what)
{
    if (index >= GD__VHOST_NQUEUES) {
        dev_fail(d, "%s: queue %llu (we have %u)", what, (unsigned long long)index,
                 GD__VHOST_NQUEUES);
        return NULL;
    }
    return &d->q[index];
}

static int set_vring_fd(struct gd__vu_dev *d, uint32_t req, const uint8_t *p, int *fds, size_t nfds,
                        int *kick_queue)
{
    const char *what = req == VU_SET_VRING_KICK   ? "SET_VRING_KICK"
                       : req == VU_SET_VRING_CALL ? "SET_VRING_CALL"
                                                  : "SET_VRING_ERR";
    uint64_t v = get64(p);
    int nofd = (v & VRING_NOFD) != 0;
    if (v & ~(VRING_IDX_MASK | VRING_NOFD))
        return dev_fail(d, "%s: unknown bits in 0x%llx", what, (unsigned long long)v);
    if (nfds != (nofd ? 0u : 1u))
        return dev_fail(d, "%s: %zu fds with%s the no-fd flag", what, nfds, nofd ? "" : "out");
    struct gd__vu_queue *q = queue_at(d, v & VRING_IDX_MASK, what);
    if (!q)
        return -EPROTO;
    if (req == VU_SET_VRING_KICK && nofd) /* polling mode: we serve only on kicks */
        return dev_fail(d, "SET_VRING_KICK without an fd is not supported");
    int fd = -1;
    if (!nofd) { /* ours from here on */
        fd = fds[0];
        fds[0] = -1;
    }
    if (req == VU_SET_VRING_KICK) {
        int fl = fcntl(fd, F_GETFL);
        if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) {
            close(fd);
            return dev_fail(d, "SET_VRING_KICK: not an fd");
        }
        close_fd(&q->kick);
        q->kick = fd;
        q->started = 1;
        *kick_queue = (int)(v & VRING_IDX_MASK);
    } else if (req == VU_SET_VRING_CALL) {
        close_fd(&q->call);
        q->call = fd;
    } else {
        close_fd(&q->err);
        q->err = fd;
    }
    return 0;
}

/* Messages whose payload is one u64 or a vring state (u32 index, u32 num): 8 bytes. */
static int want_size(struct gd__vu_dev *d, uint32_t req, uint32_t size, uint32_t want)
{
    return size == want ? 0 : dev_fail(d, "request %u: %u bytes, expected %u", req, size, want);
}

static void put_reply(uint8_t *reply, size_t *reply_len, uint32_t req, const void *p, uint32_t n)
{
    uint32_t h[3] = {req, VU_VERSION | VU_FLAG_REPLY, n};
    memcpy(reply, h, GD__VU_HDR);
    memcpy(reply + GD__VU_HDR, p, n);
    *reply_len = GD__VU_HDR + n;
}

static int dispatch(struct gd__vu_dev *d, uint32_t req, const uint8_t *p, uint32_t size, int *fds,
                    size_t nfds, uint8_t *reply, size_t *reply_len, int *kick_queue)
{
    if (nfds && req != VU_SET_MEM_TABLE && req != VU_SET_VRING_KICK && req != VU_SET_VRING_CALL &&
        req != VU_SET_VRING_ERR)
        return dev_fail(d, "request %u came with %zu fds", req, nfds);
    uint64_t u;
    struct gd__vu_queue *q;
    switch (req) {
    case VU_GET_FEATURES:
    case VU_GET_PROTOCOL_FEATURES:
    case VU_GET_QUEUE_NUM:
        if (want_size(d, req, size, 0))
            return -EPROTO;
        u = req == VU_GET_FEATURES            ? VU_FEATURES
            : req == VU_GET_PROTOCOL_FEATURES ? VU_PROTOCOL_FEATURES
                                              : GD__VHOST_NQUEUES;
        put_reply(reply, reply_len, req, &u, 8);
        return 0;
    case VU_SET_FEATURES:
    case VU_SET_PROTOCOL_FEATURES:
        if (want_size(d, req, size, 8))
            return -EPROTO;
        u = get64(p);
        if (req == VU_SET_FEATURES) {
            if (u & ~VU_FEATURES)
                return dev_fail(d, "SET_FEATURES: 0x%llx beyond our 0x%llx", (unsigned long long)u,
                                (unsigned long long)VU_FEATURES);
            d->features = u;
        } else {
            if (u & ~VU_PROTOCOL_FEATURES)
                return dev_fail(d, "SET_PROTOCOL_FEATURES: 0x%llx beyond our 0x%llx",
                                (unsigned long long)u, (unsigned long long)VU_PROTOCOL_FEATURES);
            d->protocol_features = u;
        }
        return 0;
    case VU_SET_OWNER:
        if (want_size(d, req, size, 0))
            return -EPROTO;
        /* a QEMU relaunched on the same socket (the KVM fallback) starts over */
        if (d->owner)
            gd__vu_dev_reset(d);
        d->owner = 1;
        return 0;
    case VU_RESET_OWNER:
    case VU_RESET_DEVICE:
        if (want_size(d, req, size, 0))
            return -EPROTO;
        gd__vu_dev_reset(d);
        return 0;
    case VU_SET_MEM_TABLE:
        return set_mem_table(d, p, size, fds, nfds);
    case VU_SET_VRING_KICK:
    case VU_SET_VRING_CALL:
    case VU_SET_VRING_ERR:
        if (want_size(d, req, size, 8))
            return -EPROTO;
        return set_vring_fd(d, req, p, fds, nfds, kick_queue);
    case VU_SET_VRING_NUM:
    case VU_SET_VRING_BASE:
    case VU_GET_VRING_BASE:
    case VU_SET_VRING_ENABLE: {
        if (want_size(d, req, size, 8) || !(q = queue_at(d, get32(p), "vring state")))
            return -EPROTO;
        uint32_t num = get32(p + 4);
        if (req == VU_SET_VRING_NUM) {
            if (q->started || !num || num > GD__VQ_MAX_NUM || (num & (num - 1)))
                return dev_fail(d, "SET_VRING_NUM: %u%s", num, q->started ? " on a live ring" : "");
            struct gd__vq_seg *s = realloc(q->vq.segs, num * sizeof(*s));
            if (!s)
                return dev_fail(d, "SET_VRING_NUM: out of memory");
            q->vq.segs = s;
            q->vq.num = (uint16_t)num;
            if (q->vq.addr_set && gd__vq_map(&q->vq, &d->mem))
                return dev_fail(d, "SET_VRING_NUM: the rings no longer fit guest memory");
        } else if (req == VU_SET_VRING_BASE) {
            if (q->started || num > 0xffff)
                return dev_fail(d, "SET_VRING_BASE: %u%s", num,
                                q->started ? " on a live ring" : "");
            q->vq.last_avail = q->vq.used_idx = (uint16_t)num;
        } else if (req == VU_GET_VRING_BASE) {
            /* stops the ring; every request we took is answered already */
            q->started = 0;
            close_fd(&q->kick);
            uint32_t st[2] = {get32(p), q->vq.last_avail};
            put_reply(reply, reply_len, req, st, 8);
        } else {
            if (num > 1)
                return dev_fail(d, "SET_VRING_ENABLE: %u", num);
            q->enabled = (int)num;
        }
        return 0;
    }
    case VU_SET_VRING_ADDR: {
        /* u32 index, u32 flags, u64 desc, used, avail, log (QEMU's addresses) */
        if (want_size(d, req, size, 40) || !(q = queue_at(d, get32(p), "SET_VRING_ADDR")))
            return -EPROTO;
        if (get32(p + 4))
            return dev_fail(d, "SET_VRING_ADDR: flags 0x%x (no logging)", get32(p + 4));
        q->vq.desc_uva = get64(p + 8);
        q->vq.used_uva = get64(p + 16);
        q->vq.avail_uva = get64(p + 24);
        q->vq.addr_set = 1;
        if (gd__vq_map(&q->vq, &d->mem))
            return dev_fail(d, "SET_VRING_ADDR: queue %u's rings are not in guest memory",
                            get32(p));
        return 0;
    }
    default:
        return dev_fail(d, "unknown request %u", req);
    }
}

int gd__vu_handle(struct gd__vu_dev *d, const uint8_t *hdr, const uint8_t *payload, int *fds,
                  size_t nfds, uint8_t *reply, size_t *reply_len, int *kick_queue)
{
    uint32_t req = get32(hdr), flags = get32(hdr + 4), size = get32(hdr + 8);
    *reply_len = 0;
    *kick_queue = -1;
    int rc;
    if ((flags & VU_VERSION_MASK) != VU_VERSION ||
        (flags & ~(VU_VERSION_MASK | VU_FLAG_NEED_REPLY)))
        rc = dev_fail(d, "request %u: flags 0x%x", req, flags);
    else if (size > GD__VU_MAX_PAYLOAD)
        rc = dev_fail(d, "request %u: %u bytes", req, size);
    else
        rc = dispatch(d, req, payload, size, fds, nfds, reply, reply_len, kick_queue);
    if (rc) {
        for (size_t i = 0; i < nfds; i++)
            if (fds[i] >= 0)
                close_fd(&fds[i]);
        return rc;
    }
    if ((flags & VU_FLAG_NEED_REPLY) && (d->protocol_features & PF_REPLY_ACK) && !*reply_len) {
        uint64_t ok = 0;
        put_reply(reply, reply_len, req, &ok, 8);
    }
    return 0;
}

/* ---- the back-end: socket, thread, queues ---- */

struct gd_vhost_fs {
    gd_vhost_fs_handler handle;
    void *ud;
    int sock, stopfd;
    pthread_t thread;
    volatile int stop; /* read by the walker between chains */
    struct gd__vu_dev dev;
    struct gd__vq_bufs bufs;
    int more[GD__VHOST_NQUEUES]; /* the last drain stopped at its cap */
    char error[256];
    int failed; /* error[] is complete (release/acquire) */
};

static void set_error(gd_vhost_fs *v, const char *why)
{
    if (__atomic_load_n(&v->failed, __ATOMIC_ACQUIRE))
        return;
    snprintf(v->error, sizeof(v->error), "%s", why);
    __atomic_store_n(&v->failed, 1, __ATOMIC_RELEASE);
}

const char *gd_vhost_fs_error(const gd_vhost_fs *v)
{
    return __atomic_load_n(&v->failed, __ATOMIC_ACQUIRE) ? v->error : "";
}

/* Waits until fd is ready for ev (or the stop eventfd fires: returns -1). */
static int wait_fd(gd_vhost_fs *v, int fd, short ev)
{
    struct pollfd p[2] = {{.fd = v->stopfd, .events = POLLIN}, {.fd = fd, .events = ev}};
    for (;;) {
        int r = poll(p, 2, -1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 || (p[0].revents & POLLIN))
            return -1;
        if (p[1].revents)
            return 0;
    }
}

/* Reads exactly n bytes of a message, collecting the fds that come with them. Returns
 * 0, 1 at a clean end of stream before the first byte (QEMU exited), -1 on stop, or
 * -EPROTO (error set). */
static int recv_full(gd_vhost_fs *v, uint8_t *buf, size_t n, int *fds, size_t *nfds, int first)
{
    size_t got = 0;
    while (got < n) {
        union {
            char b[CMSG_SPACE(sizeof(int) * GD__VU_MAX_FDS)];
            struct cmsghdr align;
        } c;
        struct iovec iov = {.iov_base = buf + got, .iov_len = n - got};
        struct msghdr mh = {
            .msg_iov = &iov, .msg_iovlen = 1, .msg_control = c.b, .msg_controllen = sizeof(c.b)};
        ssize_t r = recvmsg(v->sock, &mh, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
        if (r < 0 && (errno == EAGAIN || errno == EINTR)) {
            if (wait_fd(v, v->sock, POLLIN))
                return -1;
            continue;
        }
        if (r < 0) {
            set_error(v, "vhost-user socket: read failed");
            return -EPROTO;
        }
        for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm)) {
            if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
                continue;
            size_t k = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            for (size_t i = 0; i < k; i++) {
                int fd;
                memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int), sizeof(int));
                if (*nfds < GD__VU_MAX_FDS)
                    fds[(*nfds)++] = fd;
                else
                    close(fd);
            }
            if (*nfds >= GD__VU_MAX_FDS && k) /* more than a message may carry */
                mh.msg_flags |= MSG_CTRUNC;
        }
        if (mh.msg_flags & MSG_CTRUNC) {
            set_error(v, "vhost-user: a message carried too many fds");
            return -EPROTO;
        }
        if (r == 0) {
            if (first && got == 0)
                return 1;
            set_error(v, "vhost-user: QEMU closed the socket in the middle of a message");
            return -EPROTO;
        }
        got += (size_t)r;
    }
    return 0;
}

static int send_full(gd_vhost_fs *v, const uint8_t *p, size_t n)
{
    while (n) {
        ssize_t r = send(v->sock, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (r < 0 && (errno == EAGAIN || errno == EINTR)) {
            if (wait_fd(v, v->sock, POLLOUT))
                return -1;
            continue;
        }
        if (r <= 0)
            return -1; /* QEMU went away: the next read says so */
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

/* Serves what queue i has available (up to a ring's worth: v->more[i] says whether to
 * come back before the next kick), then signals the guest once. */
static int serve_queue(gd_vhost_fs *v, unsigned i)
{
    struct gd__vu_queue *q = &v->dev.q[i];
    v->more[i] = 0;
    if (!gd__vu_queue_live(&v->dev, i))
        return 0;
    char why[200];
    int notify = 0;
    long r = gd__vq_drain(&q->vq, &v->dev.mem, v->handle, v->ud, &v->bufs, &v->stop, &notify,
                          &v->more[i], why, sizeof(why));
    if (r < 0) {
        char msg[256];
        snprintf(msg, sizeof(msg), "virtio-fs queue %u: %s", i, why);
        set_error(v, msg);
        return -EPROTO;
    }
    uint64_t one = 1;
    if (notify && q->call >= 0 && write(q->call, &one, 8) != 8 && errno != EAGAIN)
        return 0; /* QEMU's eventfd: nothing we can do about it */
    return 0;
}

/* One message from QEMU: 0, 1 (QEMU is gone), -1 (stop) or -EPROTO. */
static int on_message(gd_vhost_fs *v)
{
    uint8_t hdr[GD__VU_HDR], payload[GD__VU_MAX_PAYLOAD];
    uint8_t reply[GD__VU_HDR + GD__VU_MAX_PAYLOAD];
    int fds[GD__VU_MAX_FDS];
    size_t nfds = 0, rlen;
    int rc = recv_full(v, hdr, GD__VU_HDR, fds, &nfds, 1), kq;
    uint32_t size = get32(hdr + 8);
    if (rc == 0 && size > GD__VU_MAX_PAYLOAD) {
        char msg[96];
        snprintf(msg, sizeof(msg), "vhost-user: request %u of %u bytes", get32(hdr), size);
        set_error(v, msg);
        rc = -EPROTO;
    }
    if (rc == 0)
        rc = recv_full(v, payload, size, fds, &nfds, 0);
    if (rc) {
        for (size_t i = 0; i < nfds; i++)
            close(fds[i]);
        return rc;
    }
    if (gd__vu_handle(&v->dev, hdr, payload, fds, nfds, reply, &rlen, &kq)) {
        char msg[300];
        snprintf(msg, sizeof(msg), "vhost-user: %s", v->dev.error);
        set_error(v, msg);
        return -EPROTO;
    }
    if (rlen && send_full(v, reply, rlen))
        return 1;
    return kq >= 0 ? serve_queue(v, (unsigned)kq) : 0;
}

static void *run(void *arg)
{
    gd_vhost_fs *v = arg;
    int rc = 0;
    while (rc == 0) {
        struct pollfd p[2 + GD__VHOST_NQUEUES];
        unsigned qi[GD__VHOST_NQUEUES], n = 2;
        p[0] = (struct pollfd){.fd = v->stopfd, .events = POLLIN};
        p[1] = (struct pollfd){.fd = v->sock, .events = POLLIN};
        for (unsigned i = 0; i < GD__VHOST_NQUEUES; i++)
            if (v->dev.q[i].kick >= 0 && v->dev.q[i].started) {
                qi[n - 2] = i;
                p[n++] = (struct pollfd){.fd = v->dev.q[i].kick, .events = POLLIN};
            }
        int busy = 0;
        for (unsigned i = 0; i < GD__VHOST_NQUEUES; i++)
            busy |= v->more[i];
        if (poll(p, n, busy ? 0 : -1) < 0) {
            if (errno == EINTR)
                continue;
            set_error(v, "vhost-user: poll failed");
            break;
        }
        if (p[0].revents)
            break;
        for (unsigned k = 2; k < n && rc == 0; k++) {
            if (!p[k].revents)
                continue;
            uint64_t cnt;
            if (read(p[k].fd, &cnt, sizeof(cnt)) < 0 && errno != EAGAIN) {
                set_error(v, "virtio-fs: a kick eventfd failed");
                rc = -EPROTO;
                break;
            }
            rc = serve_queue(v, qi[k - 2]);
        }
        for (unsigned i = 0; i < GD__VHOST_NQUEUES && rc == 0; i++)
            if (v->more[i])
                rc = serve_queue(v, i);
        if (rc == 0 && p[1].revents)
            rc = on_message(v);
    }
    if (rc == -EPROTO) {
        /* tell QEMU (it logs the queue error), then stop touching guest memory */
        uint64_t one = 1;
        for (unsigned i = 0; i < GD__VHOST_NQUEUES; i++)
            if (v->dev.q[i].err >= 0 && write(v->dev.q[i].err, &one, 8) < 0) {
            }
    }
    gd__vu_dev_reset(&v->dev);
    if (rc != -1) {
        /* dropped or QEMU gone: close our end (QEMU's reads fail instead of blocking)
         * and wait for gd_vhost_fs_stop */
        shutdown(v->sock, SHUT_RDWR);
        wait_fd(v, v->stopfd, POLLIN);
    }
    return NULL;
}

int gd_vhost_fs_start(gd_vhost_fs_handler handle, void *ud, int *qemu_fd, gd_vhost_fs **out,
                      struct gd_err *err)
{
    gd_vhost_fs *v = calloc(1, sizeof(*v));
    if (!v)
        return gd_err_set(err, -ENOMEM, "out of memory");
    v->handle = handle;
    v->ud = ud;
    v->sock = v->stopfd = -1;
    gd__vu_dev_init(&v->dev);
    int sp[2] = {-1, -1}, rc;
    v->bufs.in = malloc(GD__VQ_MAX_REQ);
    v->bufs.out = malloc(GD__VQ_MAX_REQ);
    if (!v->bufs.in || !v->bufs.out) {
        rc = gd_err_set(err, -ENOMEM, "out of memory");
        goto fail;
    }
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp)) {
        rc = gd_err_set(err, -errno, "socketpair: %s", strerror(errno));
        goto fail;
    }
    v->sock = sp[0];
    if ((v->stopfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0) {
        rc = gd_err_set(err, -errno, "eventfd: %s", strerror(errno));
        goto fail;
    }
    /* the thread takes no signals: they belong to the loop thread */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    rc = -pthread_create(&v->thread, NULL, run, v);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc) {
        gd_err_set(err, rc, "cannot start the virtio-fs thread: %s", strerror(-rc));
        goto fail;
    }
    *qemu_fd = sp[1];
    *out = v;
    return 0;
fail:
    if (sp[1] >= 0)
        close(sp[1]);
    if (v->sock >= 0)
        close(v->sock);
    if (v->stopfd >= 0)
        close(v->stopfd);
    free(v->bufs.in);
    free(v->bufs.out);
    free(v);
    return rc;
}

void gd_vhost_fs_stop(gd_vhost_fs *v)
{
    if (!v)
        return;
    __atomic_store_n(&v->stop, 1, __ATOMIC_RELEASE);
    uint64_t one = 1;
    if (write(v->stopfd, &one, 8) != 8) {
        /* an eventfd at its limit is readable already */
    }
    pthread_join(v->thread, NULL);
    gd__vu_dev_reset(&v->dev);
    close(v->sock);
    close(v->stopfd);
    free(v->bufs.in);
    free(v->bufs.out);
    free(v);
}
