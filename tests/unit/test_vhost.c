/* The virtio-fs back-end (core/vfs/vhost.c, virtq.c) against a test that plays QEMU and
 * the guest: vhost-user messages with fds over the socketpair, guest memory in a memfd,
 * rings and FUSE requests written the way the guest kernel writes them, kicks and calls
 * through eventfds. Then what a hostile guest or a broken QEMU can send: the device is
 * dropped with a reason, never the process. */
#define _GNU_SOURCE
#include "test.h"
#include "vfs/fuse.h"
#include "vfs/vhost.h"

#include "base/err.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum {
    GET_FEATURES = 1,
    SET_FEATURES = 2,
    SET_OWNER = 3,
    SET_MEM_TABLE = 5,
    SET_VRING_NUM = 8,
    SET_VRING_ADDR = 9,
    SET_VRING_BASE = 10,
    GET_VRING_BASE = 11,
    SET_VRING_KICK = 12,
    SET_VRING_CALL = 13,
    GET_PROTOCOL_FEATURES = 15,
    SET_PROTOCOL_FEATURES = 16,
    SET_VRING_ENABLE = 18,
};
#define NEED_REPLY 8u
#define VERSION_1 (1ull << 32)
#define PROTOCOL_FEATURES (1ull << 30)
#define REPLY_ACK (1ull << 3)

/* Guest memory: guest-physical GPA.., QEMU's own address UVA.. (different on purpose:
 * rings are named by the one, buffers by the other). */
#define MEM_SIZE (4u << 20)
#define GPA 0x100000ull
#define UVA 0x7f1200000000ull
#define NUM 16
/* where the rings of queue q live (offsets in guest memory) */
#define DESC(q) (0x1000u * (q)*4)
#define AVAIL(q) (DESC(q) + 0x1000u)
#define USED(q) (DESC(q) + 0x2000u)
#define BUF 0x10000u

struct t {
    gd_vhost_fs *v;
    int qfd;      /* QEMU's end */
    int memfd;    /* guest RAM */
    uint8_t *mem; /* the guest's view of it */
    int kick[2], call[2];
    uint16_t avail_idx[2];
    uint16_t next_desc[2];
    /* what the handler saw */
    int calls;
    size_t last_n, last_cap;
    uint8_t last_in[8192];
    int sleep_ms;            /* handler: take this long */
    volatile int in_handler; /* handler started at least once */
    long force;              /* handler: return this instead of answering (0: answer) */
};

static long handler(void *ud, const void *in, size_t n, void *out, size_t cap)
{
    struct t *t = ud;
    t->calls++;
    t->in_handler = 1;
    t->last_n = n;
    t->last_cap = cap;
    memcpy(t->last_in, in, n < sizeof(t->last_in) ? n : sizeof(t->last_in));
    if (t->sleep_ms) {
        struct timespec ts = {0, t->sleep_ms * 1000000L};
        nanosleep(&ts, NULL);
    }
    if (t->force)
        return t->force;
    struct gd_fuse_req r;
    int e = gd_fuse_decode(in, n, &r);
    if (!r.hdr_ok)
        return -EPROTO;
    if (!gd_fuse_op_has_reply(r.h.opcode))
        return 0;
    if (e)
        return (long)gd_fuse_reply_err(out, cap, r.h.unique, e);
    if (r.h.opcode == FUSE_WRITE)
        return (long)gd_fuse_reply_write(out, cap, r.h.unique, r.in.write.size);
    if (r.h.opcode == FUSE_GETATTR) {
        struct fuse_attr_out a = {.attr_valid = 1};
        a.attr.ino = r.h.nodeid;
        a.attr.mode = 040755;
        a.attr.nlink = 2;
        return (long)gd_fuse_reply_attr(out, cap, r.h.unique, &a);
    }
    return (long)gd_fuse_reply_err(out, cap, r.h.unique, -ENOSYS);
}

/* ---- QEMU's side ---- */

static void send_msg(struct t *t, uint32_t req, uint32_t flags, const void *p, uint32_t n,
                     const int *fds, size_t nfds)
{
    uint8_t buf[12 + 512];
    uint32_t h[3] = {req, 1 | flags, n};
    memcpy(buf, h, 12);
    if (n)
        memcpy(buf + 12, p, n);
    struct iovec iov = {.iov_base = buf, .iov_len = 12 + n};
    union {
        char b[CMSG_SPACE(sizeof(int) * 8)];
        struct cmsghdr align;
    } c;
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
    if (nfds) {
        mh.msg_control = c.b;
        mh.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
        struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
        memcpy(CMSG_DATA(cm), fds, sizeof(int) * nfds);
    }
    CHECK_EQ(sendmsg(t->qfd, &mh, MSG_NOSIGNAL), (long)(12 + n));
}

/* The reply to req: its u64 (or vring state) payload. */
static uint64_t recv_reply(struct t *t, uint32_t req)
{
    struct pollfd p = {.fd = t->qfd, .events = POLLIN};
    CHECK_EQ(poll(&p, 1, 5000), 1);
    uint8_t buf[12 + 8];
    CHECK_EQ(recv(t->qfd, buf, sizeof(buf), MSG_WAITALL), (long)sizeof(buf));
    uint32_t h[3];
    memcpy(h, buf, 12);
    CHECK_EQ(h[0], req);
    CHECK_EQ(h[1], 1 | 4); /* version 1, reply */
    CHECK_EQ(h[2], 8);
    uint64_t v;
    memcpy(&v, buf + 12, 8);
    return v;
}

static void send_u64(struct t *t, uint32_t req, uint64_t v, uint32_t flags)
{
    send_msg(t, req, flags, &v, 8, NULL, 0);
    if (flags & NEED_REPLY)
        CHECK_EQ(recv_reply(t, req), 0);
}

static void send_state(struct t *t, uint32_t req, uint32_t index, uint32_t num)
{
    uint32_t s[2] = {index, num};
    send_msg(t, req, NEED_REPLY, s, 8, NULL, 0);
    CHECK_EQ(recv_reply(t, req), 0);
}

static void mem_table(struct t *t, uint32_t flags)
{
    uint8_t p[8 + 32] = {0};
    uint32_t n = 1;
    uint64_t r[4] = {GPA, MEM_SIZE, UVA, 0};
    memcpy(p, &n, 4);
    memcpy(p + 8, r, 32);
    send_msg(t, SET_MEM_TABLE, flags, p, sizeof(p), &t->memfd, 1);
    if (flags & NEED_REPLY)
        CHECK_EQ(recv_reply(t, SET_MEM_TABLE), 0);
}

static void vring_addr(struct t *t, uint32_t q, uint64_t desc, uint64_t used, uint64_t avail)
{
    uint8_t p[40] = {0};
    uint64_t a[4] = {desc, used, avail, 0};
    memcpy(p, &q, 4);
    memcpy(p + 8, a, 32);
    send_msg(t, SET_VRING_ADDR, NEED_REPLY, p, sizeof(p), NULL, 0);
    CHECK_EQ(recv_reply(t, SET_VRING_ADDR), 0);
}

/* The handshake QEMU 7.2 does for vhost-user-fs-device, then both queues live. */
static void setup(struct t *t)
{
    memset(t, 0, sizeof(*t));
    struct gd_err err = {{0}};
    CHECK_EQ(gd_vhost_fs_start(handler, t, &t->qfd, &t->v, &err), 0);
    t->memfd = memfd_create("guest", MFD_CLOEXEC);
    CHECK(t->memfd >= 0);
    CHECK_EQ(ftruncate(t->memfd, MEM_SIZE), 0);
    t->mem = mmap(NULL, MEM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, t->memfd, 0);
    CHECK(t->mem != MAP_FAILED);

    send_msg(t, GET_FEATURES, 0, NULL, 0, NULL, 0);
    uint64_t f = recv_reply(t, GET_FEATURES);
    CHECK((f & VERSION_1) && (f & PROTOCOL_FEATURES));
    send_msg(t, GET_PROTOCOL_FEATURES, 0, NULL, 0, NULL, 0);
    CHECK(recv_reply(t, GET_PROTOCOL_FEATURES) & REPLY_ACK);
    send_u64(t, SET_PROTOCOL_FEATURES, REPLY_ACK, 0);
    send_msg(t, SET_OWNER, NEED_REPLY, NULL, 0, NULL, 0);
    CHECK_EQ(recv_reply(t, SET_OWNER), 0);
    send_u64(t, SET_FEATURES, VERSION_1 | PROTOCOL_FEATURES, NEED_REPLY);
    mem_table(t, NEED_REPLY);
    for (uint32_t q = 0; q < 2; q++) {
        send_state(t, SET_VRING_NUM, q, NUM);
        send_state(t, SET_VRING_BASE, q, 0);
        vring_addr(t, q, UVA + DESC(q), UVA + USED(q), UVA + AVAIL(q));
        t->kick[q] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        t->call[q] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        send_msg(t, SET_VRING_CALL, NEED_REPLY, (uint64_t[]){q}, 8, &t->call[q], 1);
        CHECK_EQ(recv_reply(t, SET_VRING_CALL), 0);
        send_msg(t, SET_VRING_KICK, NEED_REPLY, (uint64_t[]){q}, 8, &t->kick[q], 1);
        CHECK_EQ(recv_reply(t, SET_VRING_KICK), 0);
        send_state(t, SET_VRING_ENABLE, q, 1);
    }
}

static void teardown(struct t *t)
{
    gd_vhost_fs_stop(t->v); /* NULL: stopped already */
    close(t->qfd);
    close(t->memfd);
    for (int q = 0; q < 2; q++) {
        close(t->kick[q]);
        close(t->call[q]);
    }
    munmap(t->mem, MEM_SIZE);
}

/* ---- the guest's side ---- */

static void put16(uint8_t *p, uint16_t v)
{
    memcpy(p, &v, 2);
}
static uint32_t get32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* Writes descriptor i of queue q. */
static void desc(struct t *t, int q, uint16_t i, uint64_t gpa, uint32_t len, uint16_t flags,
                 uint16_t next)
{
    uint8_t *d = t->mem + DESC(q) + 16u * i;
    memcpy(d, &gpa, 8);
    memcpy(d + 8, &len, 4);
    put16(d + 12, flags);
    put16(d + 14, next);
}

/* A chain over buffers at guest offsets: parts[] readable, then writable. Returns its
 * head. */
struct part {
    uint32_t off, len;
    int write;
};
static uint16_t chain(struct t *t, int q, const struct part *p, size_t n)
{
    uint16_t head = t->next_desc[q];
    for (size_t i = 0; i < n; i++) {
        uint16_t id = (uint16_t)((head + i) % NUM), next = (uint16_t)((head + i + 1) % NUM);
        desc(t, q, id, GPA + p[i].off, p[i].len,
             (uint16_t)((i + 1 < n ? 1 : 0) | (p[i].write ? 2 : 0)), next);
    }
    t->next_desc[q] = (uint16_t)((head + n) % NUM);
    return head;
}

/* Makes head available (not yet kicked). */
static void post(struct t *t, int q, uint16_t head)
{
    uint8_t *a = t->mem + AVAIL(q);
    put16(a + 4 + 2 * (t->avail_idx[q] % NUM), head);
    t->avail_idx[q]++;
    __atomic_store_n((uint16_t *)(void *)(a + 2), t->avail_idx[q], __ATOMIC_RELEASE);
}

static void kick(struct t *t, int q)
{
    uint64_t one = 1;
    CHECK_EQ(write(t->kick[q], &one, 8), 8);
}

/* Waits for the call eventfd; returns its count (the number of interrupts). */
static uint64_t wait_call(struct t *t, int q)
{
    struct pollfd p = {.fd = t->call[q], .events = POLLIN};
    if (poll(&p, 1, 5000) != 1)
        FAIL_AT("no interrupt on queue %d (error: \"%s\")", q, gd_vhost_fs_error(t->v));
    uint64_t n = 0;
    CHECK_EQ(read(t->call[q], &n, 8), 8);
    return n;
}

static uint16_t used_idx(struct t *t, int q)
{
    return __atomic_load_n((uint16_t *)(void *)(t->mem + USED(q) + 2), __ATOMIC_ACQUIRE);
}

/* used element i: id and length */
static void used_elem(struct t *t, int q, uint16_t i, uint32_t *id, uint32_t *len)
{
    const uint8_t *e = t->mem + USED(q) + 4 + 8u * (i % NUM);
    *id = get32(e);
    *len = get32(e + 4);
}

/* Waits until the back-end has dropped the device; returns why. */
static const char *wait_error(struct t *t)
{
    for (int i = 0; i < 500 && !gd_vhost_fs_error(t->v)[0]; i++)
        usleep(10000);
    const char *e = gd_vhost_fs_error(t->v);
    if (!e[0])
        FAIL_AT("the back-end did not drop the device");
    /* and QEMU's end sees the socket closed */
    struct pollfd p = {.fd = t->qfd, .events = POLLIN};
    CHECK_EQ(poll(&p, 1, 5000), 1);
    char c;
    CHECK_EQ(recv(t->qfd, &c, 1, 0), 0);
    return e;
}

/* A FUSE request at guest offset off: header + body; returns its length. */
static size_t put_req(struct t *t, uint32_t off, uint32_t op, uint64_t unique, uint64_t nodeid,
                      const void *body, size_t bn)
{
    struct fuse_in_header h = {.len = (uint32_t)(sizeof(h) + bn),
                               .opcode = op,
                               .unique = unique,
                               .nodeid = nodeid,
                               .uid = 1000};
    memcpy(t->mem + off, &h, sizeof(h));
    memcpy(t->mem + off + sizeof(h), body, bn);
    return sizeof(h) + bn;
}

/* ---- tests ---- */

TEST(vhost_write_request_split_over_descriptors)
{
    struct t t;
    setup(&t);
    /* WRITE of 3000 bytes: header, write_in and data over three readable descriptors
     * that cut through the structs, the reply over two writable ones */
    uint8_t body[sizeof(struct fuse_write_in) + 3000];
    struct fuse_write_in w = {.fh = 5, .offset = 0, .size = 3000};
    memcpy(body, &w, sizeof(w));
    for (size_t i = 0; i < 3000; i++)
        body[sizeof(w) + i] = (uint8_t)(i * 7);
    size_t n = put_req(&t, BUF, FUSE_WRITE, 77, 2, body, sizeof(body));
    struct part p[] = {{BUF, 10, 0},
                       {BUF + 10, 50, 0},
                       {BUF + 60, (uint32_t)n - 60, 0},
                       {BUF + 0x8000, 8, 1},
                       {BUF + 0x9000, 100, 1}};
    uint16_t head = chain(&t, 1, p, 5);
    memset(t.mem + BUF + 0x8000, 0xee, 8);
    memset(t.mem + BUF + 0x9000, 0xee, 100);
    post(&t, 1, head);
    kick(&t, 1);
    CHECK_EQ(wait_call(&t, 1), 1);
    CHECK_EQ(used_idx(&t, 1), 1);
    uint32_t id, len;
    used_elem(&t, 1, 0, &id, &len);
    CHECK_EQ(id, head);
    CHECK_EQ(len, sizeof(struct fuse_out_header) + sizeof(struct fuse_write_out));
    CHECK_EQ(t.last_n, n);
    CHECK_EQ(t.last_cap, 108);
    CHECK(!memcmp(t.last_in + sizeof(struct fuse_in_header), body, sizeof(body)));
    /* the 24-byte reply: 8 bytes in the first writable buffer, 16 in the second */
    uint8_t reply[24];
    memcpy(reply, t.mem + BUF + 0x8000, 8);
    memcpy(reply + 8, t.mem + BUF + 0x9000, 16);
    struct fuse_out_header oh;
    struct fuse_write_out wo;
    memcpy(&oh, reply, sizeof(oh));
    memcpy(&wo, reply + sizeof(oh), sizeof(wo));
    CHECK_EQ(oh.len, 24);
    CHECK_EQ(oh.error, 0);
    CHECK_EQ(oh.unique, 77);
    CHECK_EQ(wo.size, 3000);
    CHECK_EQ(t.mem[BUF + 0x9000 + 16], 0xee); /* nothing written past the reply */
    CHECK_STR(gd_vhost_fs_error(t.v), "");
    teardown(&t);
}

TEST(vhost_batch_one_interrupt_and_hiprio_forget)
{
    struct t t;
    setup(&t);
    /* three GETATTRs made available at once, one kick: three used entries, one call */
    uint16_t heads[3];
    for (uint32_t i = 0; i < 3; i++) {
        struct fuse_getattr_in g = {0};
        uint32_t off = BUF + 0x1000 * i;
        size_t n = put_req(&t, off, FUSE_GETATTR, 100 + i, 1 + i, &g, sizeof(g));
        struct part p[] = {{off, (uint32_t)n, 0}, {off + 0x800, 0x400, 1}};
        heads[i] = chain(&t, 1, p, 2);
        post(&t, 1, heads[i]);
    }
    kick(&t, 1);
    CHECK_EQ(wait_call(&t, 1), 1);
    CHECK_EQ(used_idx(&t, 1), 3);
    for (uint16_t i = 0; i < 3; i++) {
        uint32_t id, len;
        used_elem(&t, 1, i, &id, &len);
        CHECK_EQ(id, heads[i]);
        CHECK_EQ(len, sizeof(struct fuse_out_header) + sizeof(struct fuse_attr_out));
        struct fuse_out_header oh;
        struct fuse_attr_out ao;
        memcpy(&oh, t.mem + BUF + 0x1000 * i + 0x800, sizeof(oh));
        memcpy(&ao, t.mem + BUF + 0x1000 * i + 0x800 + sizeof(oh), sizeof(ao));
        CHECK_EQ(oh.unique, 100 + i);
        CHECK_EQ(ao.attr.ino, 1 + i);
        CHECK_EQ(ao.attr.mode, 040755);
    }
    /* FORGET on the hiprio queue: served, no reply bytes */
    struct fuse_forget_in fg = {.nlookup = 1};
    size_t n = put_req(&t, BUF + 0x20000, FUSE_FORGET, 9, 3, &fg, sizeof(fg));
    struct part p[] = {{BUF + 0x20000, (uint32_t)n, 0}};
    uint16_t head = chain(&t, 0, p, 1);
    post(&t, 0, head);
    kick(&t, 0);
    CHECK_EQ(wait_call(&t, 0), 1);
    uint32_t id, len;
    used_elem(&t, 0, 0, &id, &len);
    CHECK_EQ(id, head);
    CHECK_EQ(len, 0);
    CHECK_EQ(t.calls, 4);
    /* GET_VRING_BASE stops the ring and says where the guest's next request starts */
    uint32_t s[2] = {1, 0};
    send_msg(&t, GET_VRING_BASE, 0, s, 8, NULL, 0);
    uint64_t st = recv_reply(&t, GET_VRING_BASE);
    CHECK_EQ(st & 0xffffffff, 1);
    CHECK_EQ(st >> 32, 3);
    CHECK_STR(gd_vhost_fs_error(t.v), "");
    teardown(&t);
}

TEST(vhost_guest_buffer_outside_memory)
{
    struct t t;
    setup(&t);
    /* the readable buffer runs 1 byte past the end of guest RAM */
    desc(&t, 1, 0, GPA + MEM_SIZE - 64, 65, 0, 0);
    post(&t, 1, 0);
    kick(&t, 1);
    CHECK_CONTAINS(wait_error(&t), "outside guest memory");
    CHECK_EQ(t.calls, 0);
    teardown(&t);
}

TEST(vhost_guest_address_wraps)
{
    struct t t;
    setup(&t);
    desc(&t, 1, 0, UINT64_MAX - 8, 64, 0, 0);
    post(&t, 1, 0);
    kick(&t, 1);
    CHECK_CONTAINS(wait_error(&t), "outside guest memory");
    teardown(&t);
}

TEST(vhost_guest_chain_loops)
{
    struct t t;
    setup(&t);
    desc(&t, 1, 0, GPA + BUF, 16, 1, 1);
    desc(&t, 1, 1, GPA + BUF, 16, 1, 0);
    post(&t, 1, 0);
    kick(&t, 1);
    CHECK_CONTAINS(wait_error(&t), "loops");
    CHECK_EQ(t.calls, 0);
    teardown(&t);
}

TEST(vhost_guest_readable_after_writable)
{
    struct t t;
    setup(&t);
    desc(&t, 1, 0, GPA + BUF, 16, 1 | 2, 1);
    desc(&t, 1, 1, GPA + BUF + 64, 16, 0, 0);
    post(&t, 1, 0);
    kick(&t, 1);
    CHECK_CONTAINS(wait_error(&t), "readable after writable");
    teardown(&t);
}

TEST(vhost_guest_bad_indexes)
{
    struct t t;
    setup(&t);
    /* the avail ring names a descriptor past the table */
    put16(t.mem + AVAIL(1) + 4, NUM + 3);
    __atomic_store_n((uint16_t *)(void *)(t.mem + AVAIL(1) + 2), 1, __ATOMIC_RELEASE);
    kick(&t, 1);
    CHECK_CONTAINS(wait_error(&t), "names descriptor");
    teardown(&t);

    setup(&t);
    /* more entries than the ring holds */
    __atomic_store_n((uint16_t *)(void *)(t.mem + AVAIL(1) + 2), NUM + 1, __ATOMIC_RELEASE);
    kick(&t, 1);
    CHECK_CONTAINS(wait_error(&t), "ahead");
    teardown(&t);
}

TEST(vhost_guest_request_too_big)
{
    struct t t;
    setup(&t);
    desc(&t, 1, 0, GPA + BUF, 1u << 20, 1, 1);
    desc(&t, 1, 1, GPA + BUF + (1u << 20), 1u << 20, 0, 0);
    post(&t, 1, 0);
    kick(&t, 1);
    CHECK_CONTAINS(wait_error(&t), "request over");
    CHECK_EQ(t.calls, 0);
    teardown(&t);
}

TEST(vhost_malformed_request_drops_device)
{
    struct t t;
    setup(&t);
    t.force = -EPROTO; /* what the session answers when not even the header can be trusted */
    desc(&t, 1, 0, GPA + BUF, 8, 0, 0);
    post(&t, 1, 0);
    kick(&t, 1);
    CHECK_CONTAINS(wait_error(&t), "malformed request");
    teardown(&t);
}

/* One bad message from "QEMU" after a good handshake: the reason names it. */
static void bad_message(uint32_t req, uint32_t flags, const void *p, uint32_t n, int with_fd,
                        const char *want)
{
    struct t t;
    setup(&t);
    int fd = eventfd(0, EFD_CLOEXEC);
    send_msg(&t, req, flags, p, n, &fd, with_fd ? 1 : 0);
    close(fd);
    CHECK_CONTAINS(wait_error(&t), want);
    teardown(&t);
}

TEST(vhost_qemu_bad_messages)
{
    uint64_t u = 0;
    bad_message(GET_FEATURES, 0, &u, 4, 0, "4 bytes, expected 0");
    bad_message(SET_FEATURES, 0, (uint64_t[]){1ull << 28}, 8, 0, "beyond our");
    bad_message(99, 0, NULL, 0, 0, "unknown request 99");
    bad_message(SET_OWNER, 2, NULL, 0, 0, "flags");
    bad_message(SET_VRING_NUM, 0, (uint32_t[]){1, 3}, 8, 0, "SET_VRING_NUM: 3");
    bad_message(SET_VRING_NUM, 0, (uint32_t[]){5, 8}, 8, 0, "queue 5");
    bad_message(SET_VRING_KICK, 0, (uint64_t[]){1}, 8, 0, "0 fds");
    bad_message(SET_VRING_CALL, 0, (uint64_t[]){0x1000}, 8, 1, "unknown bits");
    bad_message(SET_OWNER, 0, NULL, 0, 1, "came with 1 fds");
    /* a memory table whose region is larger than the file behind it */
    uint8_t mt[40] = {0};
    uint32_t one = 1;
    uint64_t r[4] = {0, 1u << 20, UVA, 0};
    memcpy(mt, &one, 4);
    memcpy(mt + 8, r, 32);
    bad_message(SET_MEM_TABLE, 0, mt, 40, 1, "not a file of");
    bad_message(SET_MEM_TABLE, 0, mt, 40, 0, "with 0 fds");
    bad_message(SET_MEM_TABLE, 0, mt, 8, 1, "1 regions in 8 bytes");
}

TEST(vhost_qemu_oversized_message)
{
    struct t t;
    setup(&t);
    uint32_t h[3] = {SET_MEM_TABLE, 1, 100000};
    CHECK_EQ(send(t.qfd, h, 12, MSG_NOSIGNAL), 12);
    CHECK_CONTAINS(wait_error(&t), "100000 bytes");
    teardown(&t);
}

TEST(vhost_qemu_ring_outside_memory)
{
    struct t t;
    setup(&t);
    uint8_t p[40] = {0};
    uint32_t q = 1;
    uint64_t a[4] = {UVA + MEM_SIZE - 16, UVA + USED(1), UVA + AVAIL(1), 0};
    memcpy(p, &q, 4);
    memcpy(p + 8, a, 32);
    send_msg(&t, SET_VRING_ADDR, 0, p, sizeof(p), NULL, 0);
    CHECK_CONTAINS(wait_error(&t), "not in guest memory");
    teardown(&t);
}

TEST(vhost_qemu_goes_away)
{
    /* QEMU exits: not an error, and stop still works */
    struct t t;
    setup(&t);
    shutdown(t.qfd, SHUT_RDWR);
    usleep(50000);
    CHECK_STR(gd_vhost_fs_error(t.v), "");
    teardown(&t);
}

TEST(vhost_new_memory_table_and_restart)
{
    /* a second SET_MEM_TABLE replaces the first; rings keep working on the new mapping */
    struct t t;
    setup(&t);
    mem_table(&t, NEED_REPLY);
    struct fuse_getattr_in g = {0};
    size_t n = put_req(&t, BUF, FUSE_GETATTR, 5, 1, &g, sizeof(g));
    struct part p[] = {{BUF, (uint32_t)n, 0}, {BUF + 0x800, 0x400, 1}};
    post(&t, 1, chain(&t, 1, p, 2));
    kick(&t, 1);
    CHECK_EQ(wait_call(&t, 1), 1);
    CHECK_EQ(used_idx(&t, 1), 1);
    CHECK_STR(gd_vhost_fs_error(t.v), "");
    teardown(&t);
}

static void *stopper(void *arg)
{
    struct t *t = arg;
    while (!t->in_handler)
        usleep(1000);
    gd_vhost_fs_stop(t->v); /* NULL: stopped already */
    return NULL;
}

TEST(vhost_stop_mid_traffic)
{
    struct t t;
    setup(&t);
    t.sleep_ms = 100;
    for (uint32_t i = 0; i < 8; i++) {
        struct fuse_getattr_in g = {0};
        uint32_t off = BUF + 0x1000 * i;
        size_t n = put_req(&t, off, FUSE_GETATTR, 1 + i, 1, &g, sizeof(g));
        struct part p[] = {{off, (uint32_t)n, 0}, {off + 0x800, 0x400, 1}};
        post(&t, 1, chain(&t, 1, p, 2));
    }
    kick(&t, 1);
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    pthread_t th;
    CHECK_EQ(pthread_create(&th, NULL, stopper, &t), 0);
    pthread_join(th, NULL);
    clock_gettime(CLOCK_MONOTONIC, &b);
    long ms = (b.tv_sec - a.tv_sec) * 1000 + (b.tv_nsec - a.tv_nsec) / 1000000;
    /* the request in progress finishes; the other seven are never started */
    CHECK(t.calls < 8);
    CHECK(ms < 800);
    close(t.qfd);
    close(t.memfd);
    for (int q = 0; q < 2; q++) {
        close(t.kick[q]);
        close(t.call[q]);
    }
    munmap(t.mem, MEM_SIZE);
}

static volatile int poster_stop;

/* The guest: makes a FORGET available whenever the ring has room, and kicks. */
static void *poster(void *arg)
{
    struct t *t = arg;
    while (!poster_stop) {
        if ((uint16_t)(t->avail_idx[1] - used_idx(t, 1)) < NUM) {
            post(t, 1, 0);
            kick(t, 1);
        } else {
            sched_yield();
        }
    }
    return NULL;
}

TEST(vhost_guest_posts_forever)
{
    /* a guest posting as fast as we serve: the back-end keeps serving (in bounded rounds)
     * and still stops at once */
    struct t t;
    setup(&t);
    struct fuse_forget_in fg = {.nlookup = 1};
    size_t n = put_req(&t, BUF, FUSE_FORGET, 5, 2, &fg, sizeof(fg));
    struct part p[] = {{BUF, (uint32_t)n, 0}};
    CHECK_EQ(chain(&t, 1, p, 1), 0);
    pthread_t th;
    CHECK_EQ(pthread_create(&th, NULL, poster, &t), 0);
    for (int i = 0; i < 500 && t.calls < 10 * NUM; i++)
        usleep(10000);
    if (t.calls < 10 * NUM)
        FAIL_AT("%d requests served; error \"%s\"", t.calls, gd_vhost_fs_error(t.v));
    CHECK_STR(gd_vhost_fs_error(t.v), "");
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    gd_vhost_fs_stop(t.v);
    clock_gettime(CLOCK_MONOTONIC, &b);
    poster_stop = 1;
    pthread_join(th, NULL);
    CHECK((b.tv_sec - a.tv_sec) * 1000 + (b.tv_nsec - a.tv_nsec) / 1000000 < 500);
    t.v = NULL;
    teardown(&t);
}
