/* bundle_serve.c - `gondolin bundle serve DIR`: a small reference server for live
 * bundle updates (tests and small teams). Plain HTTP on loopback only (put a TLS proxy
 * in front for anything else): GET /NAME answers DIR/NAME's bytes with a strong ETag
 * (its sha256), or 304 when If-None-Match names it. Files are read per request, so
 * publishing a revision is an atomic rename into DIR. One request per connection, each
 * connection on its own thread (at most MAX_CONNS at once; more get 503), with a
 * deadline for the request and for each send, so a slow or silent client holds nobody
 * else up. */
#define _GNU_SOURCE
#include "cli.h"

#include "base/fs.h"
#include "bundle/bundle.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define MAX_CONNS 32
#define HEAD_S 5    /* the whole request head */
#define SEND_S 10   /* each send: a client that stops reading is cut */
#define ANSWER_S 60 /* the whole answer: a client reading a byte at a time is cut */

static unsigned nconns; /* (atomic) */

static void send_all(int fd, const void *p, size_t n)
{
    const char *c = p;
    time_t end = time(NULL) + ANSWER_S;
    while (n && time(NULL) <= end) {
        ssize_t w = send(fd, c, n, MSG_NOSIGNAL);
        if (w <= 0)
            return;
        c += w;
        n -= (size_t)w;
    }
}

static void answer(int fd, int status, const char *reason, const char *etag, const char *body,
                   size_t n)
{
    char h[512];
    int l = snprintf(h, sizeof(h),
                     "HTTP/1.1 %d %s\r\nContent-Length: %zu\r\n%s%s%sConnection: close\r\n\r\n",
                     status, reason, status == 304 ? 0 : n, etag ? "ETag: " : "", etag ? etag : "",
                     etag ? "\r\n" : "");
    send_all(fd, h, (size_t)l);
    if (status != 304 && n)
        send_all(fd, body, n);
}

static void serve_one(int fd, const char *dir)
{
    struct timeval tv = {1, 0}, stv = {SEND_S, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &stv, sizeof(stv));
    char req[8192];
    size_t n = 0;
    time_t end = time(NULL) + HEAD_S; /* a byte a second does not keep it open */
    while (n < sizeof(req) - 1) {
        if (time(NULL) > end)
            return;
        ssize_t r = recv(fd, req + n, sizeof(req) - 1 - n, 0);
        if (r < 0 && (errno == EAGAIN || errno == EINTR))
            continue;
        if (r <= 0)
            return;
        n += (size_t)r;
        req[n] = 0;
        if (strstr(req, "\r\n\r\n"))
            break;
    }
    char name[300];
    if (sscanf(req, "GET /%299s HTTP/1.", name) != 1 || strchr(name, '/') ||
        !gd_bundle_path_ok(name)) {
        answer(fd, 404, "Not Found", NULL, "", 0);
        return;
    }
    char path[4500], hex[65], etag[70];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    /* mapped, not read: 32 clients of a 64 MiB bundle share the page cache */
    int ffd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    struct stat st;
    if (ffd < 0 || fstat(ffd, &st) || !S_ISREG(st.st_mode) || st.st_size < 1 ||
        st.st_size > GD_BUNDLE_MAX_SIZE) {
        if (ffd >= 0)
            close(ffd);
        answer(fd, 404, "Not Found", NULL, "", 0);
        return;
    }
    size_t len = (size_t)st.st_size;
    char *data = mmap(NULL, len, PROT_READ, MAP_PRIVATE, ffd, 0);
    close(ffd);
    if (data == MAP_FAILED) {
        answer(fd, 404, "Not Found", NULL, "", 0);
        return;
    }
    gd_sha256_hex(data, len, hex);
    snprintf(etag, sizeof(etag), "\"%s\"", hex);
    const char *inm = strcasestr(req, "\r\nIf-None-Match:");
    int same = 0;
    if (inm) {
        inm += 16;
        while (*inm == ' ')
            inm++;
        same = !strncmp(inm, etag, strlen(etag));
    }
    if (same)
        answer(fd, 304, "Not Modified", etag, "", 0);
    else
        answer(fd, 200, "OK", etag, data, len);
    munmap(data, len);
}

struct conn {
    int fd;
    const char *dir;
};

static void *conn_main(void *arg)
{
    struct conn *c = arg;
    serve_one(c->fd, c->dir);
    close(c->fd);
    free(c);
    __atomic_sub_fetch(&nconns, 1, __ATOMIC_RELAXED);
    return NULL;
}

int cli_bundle_serve(int argc, char **argv)
{
    const char *dir = NULL;
    unsigned long port = 0;
    for (int i = 1; i < argc; i++) {
        char *end;
        if (!strcmp(argv[i], "--port") && i + 1 < argc) {
            port = strtoul(argv[++i], &end, 10);
            if (*end || port > 65535)
                return cli_die(2, "--port must be a number from 0 to 65535");
        } else if (argv[i][0] != '-' && !dir) {
            dir = argv[i];
        } else {
            return cli_die(2, "bundle serve: unexpected argument '%s'", argv[i]);
        }
    }
    if (!dir)
        return cli_die(2, "usage: gondolin bundle serve DIR [--port N]");
    int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t al = sizeof(a);
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof(a)) || listen(s, 64) ||
        getsockname(s, (struct sockaddr *)&a, &al))
        return cli_die(1, "bundle serve: cannot listen on 127.0.0.1:%lu: %s", port,
                       strerror(errno));
    printf("serving %s on http://127.0.0.1:%u/\n", dir, ntohs(a.sin_port));
    fflush(stdout);
    for (;;) {
        int c = accept4(s, NULL, NULL, SOCK_CLOEXEC);
        if (c < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            return cli_die(1, "bundle serve: accept: %s", strerror(errno));
        }
        struct conn *k = malloc(sizeof(*k));
        int started = 0;
        if (k && __atomic_add_fetch(&nconns, 1, __ATOMIC_RELAXED) <= MAX_CONNS) {
            *k = (struct conn){c, dir};
            pthread_t th;
            pthread_attr_t at;
            pthread_attr_init(&at);
            pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
            started = pthread_create(&th, &at, conn_main, k) == 0; /* it owns k and c */
            pthread_attr_destroy(&at);
        }
        if (!started) { /* busy (or no memory): one short answer, not a wait */
            if (k)
                __atomic_sub_fetch(&nconns, 1, __ATOMIC_RELAXED);
            answer(c, 503, "Service Unavailable", NULL, "", 0);
            close(c);
            free(k);
        }
    }
}
