/* server.c - benchmark-only host side of the FUSE-over-virtio-serial prototype
 * (tests/bench/bench_vfs.py --modes serial). Not product code.
 *
 *     gd-vfs-serial SOCKET DIR [--exclusive]
 *
 * Listens on the unix socket SOCKET (QEMU's `-chardev socket,path=SOCKET` connects to it:
 * the virtio-serial port gondolin.fuse), prints READY, then serves one connection at a
 * time, each with a fresh session over gd_vfs_hostfs_new(DIR): the stream carries whole
 * FUSE requests framed by fuse_in_header.len (the guest relay, relay.c, writes each
 * /dev/fuse read as is), answered in the order they arrive, one at a time, on this one
 * thread. A frame shorter than the header or longer than 1 MiB + 4 KiB, or a request the
 * session cannot trust (-EPROTO), drops the connection. --exclusive marks the provider
 * GD_VFS_EXCLUSIVE (long TTLs, the guest's writeback cache).
 *
 * At the end of each connection one line of counts goes to stderr: requests, the largest
 * WRITE and READ, the most requests waiting at once in what one read() brought (how
 * many the guest had in flight), and the time spent in the session. */
#define _GNU_SOURCE
#include "base/err.h"
#include "vfs/fuse.h"
#include "vfs/vfs.h"

#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define MSG_MAX (GD_FUSE_MAX_IO + 4096)
#define RBUF (4 * MSG_MAX)

struct stats {
    uint64_t reqs, bytes_in, bytes_out, ns_session;
    uint64_t by_op[64];
    uint32_t max_write, max_read, max_waiting;
};

static uint64_t now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static int write_all(int fd, const unsigned char *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static void count(struct stats *st, const unsigned char *req, uint32_t len)
{
    struct fuse_in_header h;
    memcpy(&h, req, sizeof(h));
    st->reqs++;
    st->bytes_in += len;
    st->by_op[h.opcode < 64 ? h.opcode : 0]++;
    size_t wh = sizeof(h) + sizeof(struct fuse_write_in);
    if (h.opcode == FUSE_WRITE && len >= wh && len - wh > st->max_write)
        st->max_write = len - (uint32_t)wh;
    if (h.opcode == FUSE_READ && len >= sizeof(h) + sizeof(struct fuse_read_in)) {
        struct fuse_read_in r;
        memcpy(&r, req + sizeof(h), sizeof(r));
        if (r.size > st->max_read)
            st->max_read = r.size;
    }
}

static void report(const struct stats *st, uint64_t ns_conn)
{
    fprintf(stderr,
            "gd-vfs-serial: %llu requests (%llu MiB in, %llu MiB out), max WRITE %u, max READ "
            "%u, max waiting at once %u, session %.0f ms of %.0f ms connected;",
            (unsigned long long)st->reqs, (unsigned long long)(st->bytes_in >> 20),
            (unsigned long long)(st->bytes_out >> 20), st->max_write, st->max_read, st->max_waiting,
            st->ns_session / 1e6, ns_conn / 1e6);
    for (unsigned i = 1; i < 64; i++)
        if (st->by_op[i])
            fprintf(stderr, " %s %llu", gd_fuse_opname(i), (unsigned long long)st->by_op[i]);
    fputc('\n', stderr);
}

/* Serves one connection until EOF or a broken stream. */
static void serve(int fd, const char *dir, int exclusive)
{
    struct gd_err err = {0};
    gd_vfs_provider *pv = NULL;
    gd_vfs_session *s = NULL;
    if (gd_vfs_hostfs_new(dir, 0, &pv, &err)) {
        fprintf(stderr, "gd-vfs-serial: %s\n", err.msg);
        return;
    }
    if (exclusive)
        pv->flags |= GD_VFS_EXCLUSIVE;
    struct gd_vfs_session_opts o = {.mount = "/mnt/gs"};
    if (gd_vfs_session_new(pv, &o, &s, &err)) {
        fprintf(stderr, "gd-vfs-serial: %s\n", err.msg);
        return;
    }
    unsigned char *rbuf = malloc(RBUF), *out = malloc(MSG_MAX);
    struct stats st = {0};
    uint64_t t0 = now_ns();
    size_t start = 0, have = 0;
    while (rbuf && out) {
        if (start && RBUF - (start + have) < MSG_MAX) {
            memmove(rbuf, rbuf + start, have);
            start = 0;
        }
        ssize_t n = read(fd, rbuf + start + have, RBUF - start - have);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        have += (size_t)n;
        /* whole requests now waiting: how many the guest had sent before our answers */
        uint32_t waiting = 0;
        for (size_t o2 = start, h2 = have; h2 >= sizeof(struct fuse_in_header);) {
            uint32_t len;
            memcpy(&len, rbuf + o2, 4);
            if (len < sizeof(struct fuse_in_header) || len > h2)
                break;
            waiting++;
            o2 += len;
            h2 -= len;
        }
        if (waiting > st.max_waiting)
            st.max_waiting = waiting;
        int broken = 0;
        while (have >= sizeof(struct fuse_in_header)) {
            uint32_t len;
            memcpy(&len, rbuf + start, 4);
            if (len < sizeof(struct fuse_in_header) || len > MSG_MAX) {
                fprintf(stderr, "gd-vfs-serial: frame of %u bytes: dropping the channel\n", len);
                broken = 1;
                break;
            }
            if (have < len)
                break;
            count(&st, rbuf + start, len);
            uint64_t a = now_ns();
            long r = gd_vfs_session_handle(s, rbuf + start, len, out, MSG_MAX);
            st.ns_session += now_ns() - a;
            start += len;
            have -= len;
            if (r == -EPROTO) {
                fprintf(stderr, "gd-vfs-serial: untrustworthy request: dropping the channel\n");
                broken = 1;
                break;
            }
            if (r > 0) {
                st.bytes_out += (uint64_t)r;
                if (write_all(fd, out, (size_t)r)) {
                    broken = 1;
                    break;
                }
            }
        }
        if (!have)
            start = 0;
        if (broken)
            break;
    }
    report(&st, now_ns() - t0);
    free(rbuf);
    free(out);
    gd_vfs_session_free(s);
}

int main(int argc, char **argv)
{
    if (argc < 3 || argc > 4 || (argc == 4 && strcmp(argv[3], "--exclusive"))) {
        fprintf(stderr, "usage: gd-vfs-serial SOCKET DIR [--exclusive]\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    if (strlen(argv[1]) >= sizeof(a.sun_path)) {
        fprintf(stderr, "gd-vfs-serial: socket path too long\n");
        return 1;
    }
    strcpy(a.sun_path, argv[1]);
    int l = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    unlink(argv[1]);
    if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof(a)) || listen(l, 4)) {
        perror("gd-vfs-serial: listen");
        return 1;
    }
    printf("READY\n");
    fflush(stdout);
    for (;;) { /* QEMU may be started more than once (an accelerator retry) */
        int fd = accept4(l, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            perror("gd-vfs-serial: accept");
            return 1;
        }
        int sz = 4 << 20;
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz));
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &sz, sizeof(sz));
        serve(fd, argv[2], argc == 4);
        close(fd);
    }
}
