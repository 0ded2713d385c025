/* relay.c - benchmark-only guest daemon for the FUSE-over-virtio-serial prototype
 * (tests/bench/bench_vfs.py --modes serial). Not product code.
 *
 *     relay MOUNTPOINT PORT     (PORT: the port's device, e.g. /dev/vport2p1, found by
 *                                the bench script under /sys/class/virtio-ports)
 *
 * Mounts the guest kernel's FUSE client at MOUNTPOINT and relays its messages, unchanged,
 * to a virtio-serial port whose other end is the host's FUSE server
 * (tests/bench/vfs_serial/server.c). Two threads, so that many requests are in flight:
 *   fuse -> port: one read(/dev/fuse) is one whole request, written whole to the port
 *                 (fuse_in_header.len, the first 4 bytes, frames it on the stream);
 *   port -> fuse: the stream is cut into replies by fuse_out_header.len (also the first 4
 *                 bytes) and each is written to /dev/fuse with one write().
 * The relay neither parses nor checks anything else: the kernel validates replies, the
 * host validates requests. Prints READY and daemonizes once the mount is in place.
 *
 * Built static with musl (musl-gcc -static -O2) by the bench; musl's headers have no
 * <linux/fuse.h>, and only the length field (offset 0 of both headers) is needed. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

/* One request or reply: 1 MiB of data (max_write / max_read) plus headers. */
#define MSG_MAX ((1u << 20) + 4096)
#define HDR_IN 40  /* sizeof(struct fuse_in_header) */
#define HDR_OUT 16 /* sizeof(struct fuse_out_header) */

static int fuse_fd = -1, port_fd = -1;

static void die(const char *what)
{
    fprintf(stderr, "relay: %s: %s\n", what, strerror(errno));
    exit(1);
}

static int write_all(int fd, const unsigned char *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n); /* virtio ports take at most 32 KiB a write */
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static uint32_t len32(const unsigned char *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

static void *to_port(void *arg)
{
    (void)arg;
    unsigned char *buf = malloc(MSG_MAX);
    if (!buf)
        exit(1);
    for (;;) {
        ssize_t n = read(fuse_fd, buf, MSG_MAX);
        if (n < 0) {
            if (errno == EINTR || errno == ENOENT || errno == EAGAIN)
                continue; /* ENOENT: the request was interrupted before we read it */
            exit(errno == ENODEV ? 0 : 1); /* ENODEV: unmounted */
        }
        if (n < HDR_IN || len32(buf) != (uint32_t)n)
            exit(1);
        if (write_all(port_fd, buf, (size_t)n))
            exit(1);
    }
    return NULL;
}

static void *from_port(void *arg)
{
    (void)arg;
    /* a reply never straddles the end: compact before reading when it would */
    size_t cap = 2 * MSG_MAX, have = 0, start = 0;
    unsigned char *buf = malloc(cap);
    if (!buf)
        exit(1);
    for (;;) {
        if (start && cap - (start + have) < MSG_MAX) {
            memmove(buf, buf + start, have);
            start = 0;
        }
        ssize_t n = read(port_fd, buf + start + have, cap - start - have);
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            exit(1);
        }
        if (n == 0) { /* the host went away */
            usleep(10000);
            continue;
        }
        have += (size_t)n;
        while (have >= HDR_OUT) {
            uint32_t len = len32(buf + start);
            if (len < HDR_OUT || len > MSG_MAX)
                exit(1); /* the stream is out of step: nothing after this can be trusted */
            if (have < len)
                break;
            /* ENOENT: the request was interrupted and already answered; ignore */
            if (write(fuse_fd, buf + start, len) < 0 && errno != ENOENT && errno != EINTR)
                exit(errno == ENODEV ? 0 : 1);
            start += len;
            have -= len;
        }
        if (!have)
            start = 0;
    }
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: relay MOUNTPOINT PORT\n");
        return 2;
    }
    const char *mnt = argv[1], *port = argv[2];
    port_fd = open(port, O_RDWR | O_CLOEXEC);
    if (port_fd < 0)
        die(port);
    fuse_fd = open("/dev/fuse", O_RDWR | O_CLOEXEC);
    if (fuse_fd < 0 && errno == ENOENT && mknod("/dev/fuse", S_IFCHR | 0666, makedev(10, 229)) == 0)
        fuse_fd = open("/dev/fuse", O_RDWR | O_CLOEXEC);
    if (fuse_fd < 0)
        die("/dev/fuse");
    /* the options virtio-fs mounts get from the kernel itself (default_permissions,
     * allow_other), and reads of up to 1 MiB */
    char opts[256];
    snprintf(opts, sizeof(opts),
             "fd=%d,rootmode=40000,user_id=0,group_id=0,default_permissions,allow_other,"
             "max_read=1048576",
             fuse_fd);
    if (mount("gdserial", mnt, "fuse", MS_NOSUID | MS_NODEV, opts))
        die("mount");
    pid_t pid = fork();
    if (pid < 0)
        die("fork");
    if (pid) {
        printf("READY\n");
        return 0;
    }
    setsid();
    int null = open("/dev/null", O_RDWR);
    if (null >= 0) {
        dup2(null, 0);
        dup2(null, 1);
        dup2(null, 2);
        if (null > 2)
            close(null);
    }
    pthread_t t;
    if (pthread_create(&t, NULL, to_port, NULL))
        return 1;
    from_port(NULL);
    return 0;
}
