/* client.c - a small blocking client of the control socket, for the CLI. */
#define _GNU_SOURCE
#include "control.h"
#include "control_int.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <unistd.h>

#define RBUF (64u << 10)
#ifndef GD_VERSION
#define GD_VERSION "0"
#endif

struct gd_control_client {
    int fd;
    struct gd_control_reader rd;
    uint8_t buf[RBUF];
    size_t off, len;
    cJSON *hello;
    uint32_t next_id;
};

int gd__control_addr(const char *path, struct sockaddr_un *sa, int *dfd)
{
    memset(sa, 0, sizeof(*sa));
    sa->sun_family = AF_UNIX;
    *dfd = -1;
    if (strlen(path) < sizeof(sa->sun_path)) {
        memcpy(sa->sun_path, path, strlen(path) + 1);
        return 0;
    }
    const char *slash = strrchr(path, '/');
    if (!slash || strlen(slash + 1) + 32 >= sizeof(sa->sun_path))
        return -ENAMETOOLONG;
    char dir[4096];
    size_t dl = (size_t)(slash - path);
    if (dl >= sizeof(dir))
        return -ENAMETOOLONG;
    memcpy(dir, path, dl);
    dir[dl] = 0;
    *dfd = open(dl ? dir : "/", O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (*dfd < 0)
        return -errno;
    snprintf(sa->sun_path, sizeof(sa->sun_path), "/proc/self/fd/%d/%s", *dfd, slash + 1);
    return 0;
}

int gd_control_client_fd(const gd_control_client *c)
{
    return c->fd;
}

const cJSON *gd_control_client_info(const gd_control_client *c)
{
    return cJSON_GetObjectItemCaseSensitive(c->hello, "session");
}

int gd_control_client_send(gd_control_client *c, unsigned type, unsigned flags, uint32_t id,
                           const void *body, size_t n)
{
    uint8_t h[GD_CONTROL_HDR_LEN];
    gd_control_hdr_write(h, type, flags, id, (uint32_t)n);
    struct iovec iov[2] = {{h, sizeof(h)}, {(void *)body, n}};
    struct msghdr m = {.msg_iov = iov, .msg_iovlen = n ? 2 : 1};
    size_t left = sizeof(h) + n;
    while (left) {
        ssize_t w = sendmsg(c->fd, &m, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        left -= (size_t)w;
        while (w > 0 && m.msg_iovlen) {
            if ((size_t)w >= m.msg_iov->iov_len) {
                w -= (ssize_t)m.msg_iov->iov_len;
                m.msg_iov++;
                m.msg_iovlen--;
            } else {
                m.msg_iov->iov_base = (uint8_t *)m.msg_iov->iov_base + w;
                m.msg_iov->iov_len -= (size_t)w;
                w = 0;
            }
        }
    }
    return 0;
}

int gd_control_client_next(gd_control_client *c, struct gd_control_hdr *h, const uint8_t **body)
{
    while (c->off < c->len || c->rd.have) {
        size_t used;
        int rc = gd_control_reader_feed(&c->rd, c->buf + c->off, c->len - c->off, &used);
        c->off += used;
        if (rc < 0)
            return -EPROTO;
        if (rc == 1) {
            *h = c->rd.h;
            *body = c->rd.body;
            return 1;
        }
        if (c->off == c->len)
            break;
    }
    c->off = c->len = 0;
    return 0;
}

int gd_control_client_fill(gd_control_client *c)
{
    if (c->off == c->len)
        c->off = c->len = 0;
    if (c->len == sizeof(c->buf))
        return 0; /* consume first */
    ssize_t n = read(c->fd, c->buf + c->len, sizeof(c->buf) - c->len);
    if (n < 0)
        return -errno;
    if (n == 0)
        return -EPIPE;
    c->len += (size_t)n;
    return 0;
}

int gd_control_client_recv(gd_control_client *c, struct gd_control_hdr *h, const uint8_t **body)
{
    for (;;) {
        int rc = gd_control_client_next(c, h, body);
        if (rc)
            return rc;
        rc = gd_control_client_fill(c);
        if (rc == -EINTR)
            continue;
        if (rc == -EPIPE || rc == -ECONNRESET)
            return 0;
        if (rc == -EAGAIN)
            return -ETIMEDOUT;
        if (rc)
            return rc;
    }
}

/* An ERROR frame as "message (code)". */
static void error_text(const uint8_t *body, size_t n, char *out, size_t cap)
{
    char code[64], msg[512];
    if (gd_control_parse_error(body, n, code, sizeof(code), msg, sizeof(msg)))
        snprintf(out, cap, "malformed ERROR from the supervisor");
    else
        snprintf(out, cap, "%s%s%s%s", msg, msg[0] ? " (" : "", code, msg[0] ? ")" : "");
}

int gd_control_client_connect(const char *socket_path, gd_control_client **out, struct gd_err *err)
{
    gd_control_client *c = calloc(1, sizeof(*c));
    if (!c)
        return gd_err_set(err, -ENOMEM, "out of memory");
    gd_control_reader_init(&c->rd, GD_CONTROL_TO_CLIENT);
    c->next_id = 1;
    struct sockaddr_un sa;
    int dfd, rc = gd__control_addr(socket_path, &sa, &dfd);
    c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (rc || c->fd < 0) {
        rc = rc ? rc : -errno;
        gd_err_set(err, rc, "%s: %s", socket_path, strerror(-rc));
        goto fail;
    }
    if (connect(c->fd, (struct sockaddr *)&sa, sizeof(sa))) {
        rc = -errno;
        gd_err_set(err, rc, "cannot connect to %s: %s", socket_path, strerror(-rc));
        goto fail;
    }
    if (dfd >= 0) {
        close(dfd);
        dfd = -1;
    }
    /* a supervisor that does not answer HELLO is not waited for forever */
    struct timeval tv = {10, 0}, none = {0, 0};
    setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    char *hello = gd_control_encode_hello("gondolin-cli " GD_VERSION);
    rc = hello ? gd_control_client_send(c, GD_CONTROL_HELLO, 0, 0, hello, strlen(hello)) : -ENOMEM;
    free(hello);
    if (rc) {
        gd_err_set(err, rc, "cannot talk to the supervisor: %s", strerror(-rc));
        goto fail;
    }
    struct gd_control_hdr h;
    const uint8_t *body;
    rc = gd_control_client_recv(c, &h, &body);
    char why[600];
    if (rc <= 0) {
        rc = rc ? rc : -ECONNRESET;
        gd_err_set(err, rc, "%s",
                   rc == -ETIMEDOUT ? "the supervisor does not answer"
                                    : "the supervisor closed the connection");
        goto fail;
    }
    if (h.type == GD_CONTROL_ERROR) {
        error_text(body, h.len, why, sizeof(why));
        rc = gd_err_set(err, -EPROTO, "the supervisor refused: %s", why);
        goto fail;
    }
    if (h.type != GD_CONTROL_HELLO ||
        gd_control_parse_server_hello(body, h.len, &c->hello, why, sizeof(why))) {
        rc = gd_err_set(err, -EPROTO, "the supervisor did not answer HELLO");
        goto fail;
    }
    setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &none, sizeof(none));
    *out = c;
    return 0;
fail:
    if (dfd >= 0)
        close(dfd);
    gd_control_client_close(c);
    return rc;
}

int gd_control_client_request(gd_control_client *c, const char *op, cJSON *params, cJSON **reply,
                              struct gd_err *err)
{
    cJSON *o = params ? params : cJSON_CreateObject();
    cJSON_AddStringToObject(o, "op", op);
    char *text = gd_control_encode_json(o);
    uint32_t id = c->next_id++;
    int rc =
        text ? gd_control_client_send(c, GD_CONTROL_REQUEST, 0, id, text, strlen(text)) : -ENOMEM;
    free(text);
    if (rc)
        return gd_err_set(err, rc, "cannot talk to the supervisor: %s", strerror(-rc));
    for (;;) {
        struct gd_control_hdr h;
        const uint8_t *body;
        rc = gd_control_client_recv(c, &h, &body);
        if (rc <= 0)
            return gd_err_set(err, rc ? rc : -ECONNRESET,
                              "the supervisor closed the connection during '%s'", op);
        char why[600];
        if (h.type == GD_CONTROL_ERROR && (h.id == id || h.id == 0)) {
            error_text(body, h.len, why, sizeof(why));
            return gd_err_set(err, -EPROTO, "%s: %s", op, why);
        }
        if (h.type != GD_CONTROL_REPLY || h.id != id)
            continue;
        if (gd_control_parse_reply(body, h.len, reply, why, sizeof(why)))
            return gd_err_set(err, -EPROTO, "%s: %s", op, why);
        return 0;
    }
}

void gd_control_client_close(gd_control_client *c)
{
    if (!c)
        return;
    if (c->fd >= 0)
        close(c->fd);
    gd_control_reader_free(&c->rd);
    cJSON_Delete(c->hello);
    free(c);
}
