/* qmp.c - QMP client: newline-delimited JSON over a socketpair, polled on the loop.
 * Writes go through sendmsg on our own bounded queue (not a uv_stream) so that a
 * command can carry a file descriptor in the same message as its first byte. */
#define _GNU_SOURCE
#include "qmp.h"

#include "base/err.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define OUT_CAP (64u * 1024u)

struct pending {
    long long id;
    gd_qmp_reply_cb cb;
    void *ud;
};

struct gd_qmp {
    uv_loop_t *loop;
    uv_poll_t poll;
    int fd;
    int greeted, ready, closing, failed;
    gd_qmp_event_cb on_event;
    void *ud;
    char in[GD_QMP_MAX_LINE];
    size_t in_len;
    char out[OUT_CAP];
    size_t out_len;
    int out_fd;       /* dup'ed fd to send with the byte at out_fd_at, or -1 */
    size_t out_fd_at; /* offset in out */
    /* commands queued before the greeting are held here (encoded, with their fd) */
    struct held {
        char *text;
        int fd;
    } held[GD_QMP_MAX_PENDING];
    size_t nheld, held_bytes;
    struct pending pend[GD_QMP_MAX_PENDING];
    size_t npend;
    long long next_id;
    void (*closed_cb)(void *ud);
    void *closed_ud;
};

int gd_qmp_ready(const gd_qmp *q)
{
    return q->ready;
}

int gd__qmp_parse(const char *line, size_t n, struct gd_qmp_msg *m, cJSON **root)
{
    memset(m, 0, sizeof(*m));
    m->id = -1;
    const char *end = NULL;
    *root = cJSON_ParseWithLengthOpts(line, n, &end, 0);
    if (!*root || !cJSON_IsObject(*root))
        goto bad;
    for (; end && end < line + n; end++) /* one message per line, nothing after it */
        if (*end != ' ' && *end != '\t' && *end != '\r')
            goto bad;
    const cJSON *o = *root, *v;
    if (cJSON_GetObjectItemCaseSensitive(o, "QMP")) {
        m->kind = GD_QMP_GREETING;
        return 0;
    }
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(o, "id");
    if (cJSON_IsNumber(id) && id->valuedouble >= 0 && id->valuedouble < 1e15)
        m->id = (long long)id->valuedouble;
    if ((v = cJSON_GetObjectItemCaseSensitive(o, "return"))) {
        m->kind = GD_QMP_RETURN;
        m->body = v;
        return 0;
    }
    if ((v = cJSON_GetObjectItemCaseSensitive(o, "error"))) {
        m->kind = GD_QMP_ERROR;
        const char *cls = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(v, "class"));
        const char *desc = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(v, "desc"));
        char raw[256];
        snprintf(raw, sizeof(raw), "%s: %s", cls ? cls : "error", desc ? desc : "?");
        gd_sanitize(m->text, sizeof(m->text), raw, strlen(raw));
        return 0;
    }
    const char *ev = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(o, "event"));
    if (ev) {
        m->kind = GD_QMP_EVENT;
        gd_sanitize(m->text, sizeof(m->text), ev, strlen(ev));
        m->body = cJSON_GetObjectItemCaseSensitive(o, "data");
        return 0;
    }
bad:
    cJSON_Delete(*root);
    *root = NULL;
    return -EBADMSG;
}

static void update_poll(gd_qmp *q);

static void fail_pending(gd_qmp *q, int status, const char *why)
{
    while (q->npend) {
        struct pending p = q->pend[0];
        memmove(q->pend, q->pend + 1, --q->npend * sizeof(q->pend[0]));
        if (p.cb)
            p.cb(q, status, NULL, why, p.ud);
    }
    for (size_t i = 0; i < q->nheld; i++) {
        free(q->held[i].text);
        if (q->held[i].fd >= 0)
            close(q->held[i].fd);
    }
    q->nheld = 0;
}

/* The channel is unusable (QEMU gone, or a protocol error): every command fails. */
static void channel_fail(gd_qmp *q, const char *why)
{
    if (q->failed)
        return;
    q->failed = 1;
    if (!q->closing)
        uv_poll_stop(&q->poll);
    fail_pending(q, -EPIPE, why);
}

static int append_out(gd_qmp *q, const char *text, int fd)
{
    size_t n = strlen(text);
    if (q->out_len + n + 1 > OUT_CAP || (fd >= 0 && q->out_fd >= 0))
        return -ENOBUFS;
    if (fd >= 0) {
        q->out_fd = fd;
        q->out_fd_at = q->out_len;
    }
    memcpy(q->out + q->out_len, text, n);
    q->out[q->out_len + n] = '\n';
    q->out_len += n + 1;
    return 0;
}

static void flush_out(gd_qmp *q)
{
    while (q->out_len && !q->failed) {
        /* a message carrying an fd starts at its command; one before it ends there */
        size_t len = q->out_len;
        int with_fd = q->out_fd >= 0 && q->out_fd_at == 0;
        if (q->out_fd >= 0 && q->out_fd_at > 0)
            len = q->out_fd_at;
        struct iovec iov = {q->out, len};
        struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
        char cbuf[CMSG_SPACE(sizeof(int))];
        if (with_fd) {
            memset(cbuf, 0, sizeof(cbuf));
            mh.msg_control = cbuf;
            mh.msg_controllen = sizeof(cbuf);
            struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
            c->cmsg_level = SOL_SOCKET;
            c->cmsg_type = SCM_RIGHTS;
            c->cmsg_len = CMSG_LEN(sizeof(int));
            memcpy(CMSG_DATA(c), &q->out_fd, sizeof(int));
        }
        ssize_t w = sendmsg(q->fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        if (w <= 0) {
            channel_fail(q, "QMP channel write failed");
            return;
        }
        if (with_fd) {
            close(q->out_fd);
            q->out_fd = -1;
        } else if (q->out_fd >= 0) {
            q->out_fd_at -= (size_t)w;
        }
        memmove(q->out, q->out + w, q->out_len - (size_t)w);
        q->out_len -= (size_t)w;
    }
    update_poll(q);
}

static void handle_line(gd_qmp *q, const char *line, size_t n)
{
    struct gd_qmp_msg m;
    cJSON *root;
    if (gd__qmp_parse(line, n, &m, &root)) {
        channel_fail(q, "QMP protocol error: a line that is not a QMP message");
        return;
    }
    switch (m.kind) {
    case GD_QMP_GREETING:
        if (!q->greeted) {
            q->greeted = 1;
            /* id 0: qmp_capabilities, then what was held */
            append_out(q, "{\"execute\":\"qmp_capabilities\",\"id\":0}", -1);
        }
        break;
    case GD_QMP_RETURN:
    case GD_QMP_ERROR:
        if (m.id == 0 && !q->ready) {
            if (m.kind == GD_QMP_ERROR) {
                channel_fail(q, "QMP: qmp_capabilities refused");
                break;
            }
            q->ready = 1;
            for (size_t i = 0; i < q->nheld; i++) {
                append_out(q, q->held[i].text, q->held[i].fd); /* fits: checked on queueing */
                free(q->held[i].text);
            }
            q->nheld = 0;
            break;
        }
        for (size_t i = 0; i < q->npend; i++) {
            if (q->pend[i].id != m.id)
                continue;
            struct pending p = q->pend[i];
            memmove(q->pend + i, q->pend + i + 1, (q->npend - i - 1) * sizeof(q->pend[0]));
            q->npend--;
            if (p.cb)
                p.cb(q, m.kind == GD_QMP_RETURN ? 0 : -EIO, m.body,
                     m.kind == GD_QMP_ERROR ? m.text : NULL, p.ud);
            break;
        }
        break;
    case GD_QMP_EVENT:
        if (q->on_event)
            q->on_event(q, m.text, m.body, q->ud);
        break;
    }
    cJSON_Delete(root);
}

static void on_poll(uv_poll_t *h, int status, int events)
{
    gd_qmp *q = h->data;
    if (status < 0) {
        channel_fail(q, "QMP channel error");
        return;
    }
    if (events & UV_WRITABLE)
        flush_out(q);
    if (!(events & UV_READABLE))
        return;
    for (int rounds = 0; rounds < 16 && !q->failed && !q->closing; rounds++) {
        ssize_t r = recv(q->fd, q->in + q->in_len, sizeof(q->in) - q->in_len, MSG_DONTWAIT);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        if (r <= 0) {
            channel_fail(q, "QEMU closed the QMP channel");
            return;
        }
        q->in_len += (size_t)r;
        size_t off = 0;
        char *nl;
        while (!q->failed && !q->closing &&
               (nl = memchr(q->in + off, '\n', q->in_len - off)) != NULL) {
            size_t n = (size_t)(nl - (q->in + off));
            if (n && q->in[off + n - 1] == '\r')
                n--;
            if (n)
                handle_line(q, q->in + off, n);
            off = (size_t)(nl - q->in) + 1;
        }
        if (q->failed || q->closing)
            return;
        memmove(q->in, q->in + off, q->in_len - off);
        q->in_len -= off;
        if (q->in_len == sizeof(q->in)) {
            channel_fail(q, "QMP protocol error: line too long");
            return;
        }
    }
    flush_out(q);
}

static void update_poll(gd_qmp *q)
{
    if (q->failed || q->closing)
        return;
    uv_poll_start(&q->poll, UV_READABLE | (q->out_len ? UV_WRITABLE : 0), on_poll);
}

int gd_qmp_new(uv_loop_t *loop, int fd, gd_qmp_event_cb on_event, void *ud, gd_qmp **out)
{
    gd_qmp *q = calloc(1, sizeof(*q));
    if (!q) {
        close(fd);
        return -ENOMEM;
    }
    q->loop = loop;
    q->fd = fd;
    q->out_fd = -1;
    q->on_event = on_event;
    q->ud = ud;
    q->next_id = 1;
    int rc = uv_poll_init(loop, &q->poll, fd);
    if (rc) {
        close(fd);
        free(q);
        return rc;
    }
    q->poll.data = q;
    update_poll(q);
    *out = q;
    return 0;
}

int gd_qmp_cmd(gd_qmp *q, const char *cmd, cJSON *args, int send_fd, gd_qmp_reply_cb cb, void *ud)
{
    int rc = 0;
    char *text = NULL;
    int dfd = -1;
    if (q->failed || q->closing) {
        rc = -EPIPE;
        goto out;
    }
    if (q->npend >= GD_QMP_MAX_PENDING) {
        rc = -EBUSY;
        goto out;
    }
    cJSON *o = cJSON_CreateObject();
    if (!o || !cJSON_AddStringToObject(o, "execute", cmd)) {
        cJSON_Delete(o);
        rc = -ENOMEM;
        goto out;
    }
    if (args) {
        cJSON_AddItemToObject(o, "arguments", args);
        args = NULL;
    }
    long long id = q->next_id++;
    cJSON_AddNumberToObject(o, "id", (double)id);
    text = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (!text) {
        rc = -ENOMEM;
        goto out;
    }
    if (strlen(text) + 1 > OUT_CAP / 2) {
        rc = -EMSGSIZE;
        goto out;
    }
    if (send_fd >= 0 && (dfd = fcntl(send_fd, F_DUPFD_CLOEXEC, 3)) < 0) {
        rc = -errno;
        goto out;
    }
    if (!q->ready) {
        if (q->nheld >= GD_QMP_MAX_PENDING || q->held_bytes + strlen(text) + 64 > OUT_CAP / 2 ||
            (dfd >= 0 && q->nheld)) {
            rc = -EBUSY;
            goto out;
        }
        q->held_bytes += strlen(text) + 1;
        q->held[q->nheld++] = (struct held){text, dfd};
        text = NULL;
        dfd = -1;
    } else if ((rc = append_out(q, text, dfd)) == 0) {
        dfd = -1;
    }
    if (rc == 0) {
        q->pend[q->npend++] = (struct pending){id, cb, ud};
        flush_out(q);
    }
out:
    cJSON_Delete(args);
    free(text);
    if (dfd >= 0)
        close(dfd);
    return rc;
}

static void on_closed(uv_handle_t *h)
{
    gd_qmp *q = h->data;
    close(q->fd);
    if (q->out_fd >= 0)
        close(q->out_fd);
    if (q->closed_cb)
        q->closed_cb(q->closed_ud);
    free(q);
}

void gd_qmp_close(gd_qmp *q, void (*closed_cb)(void *ud), void *ud)
{
    if (q->closing)
        return;
    q->closing = 1;
    q->closed_cb = closed_cb;
    q->closed_ud = ud;
    fail_pending(q, -ECANCELED, "the VM is stopping");
    uv_close((uv_handle_t *)&q->poll, on_closed);
}

/* ---- migration to a file ---- */

cJSON *gd_qmp_events_on(void)
{
    cJSON *a = cJSON_CreateObject(), *arr = cJSON_AddArrayToObject(a, "capabilities");
    cJSON *c = cJSON_CreateObject();
    cJSON_AddStringToObject(c, "capability", "events");
    cJSON_AddBoolToObject(c, "state", 1);
    cJSON_AddItemToArray(arr, c);
    return a;
}

int gd_qmp_save_to_fd(gd_qmp *q, int fd, const char *fdname, gd_qmp_reply_cb cb, void *ud)
{
    /* the guest is stopped: write everything in one pass, unthrottled (QEMU's default
     * bandwidth cap is for live migration over a network) */
    cJSON *bw = cJSON_CreateObject();
    cJSON_AddNumberToObject(bw, "max-bandwidth", (double)(16ull << 30));
    cJSON *fdn = cJSON_CreateObject();
    cJSON_AddStringToObject(fdn, "fdname", fdname);
    char uri[96];
    snprintf(uri, sizeof(uri), "fd:%s", fdname);
    cJSON *mig = cJSON_CreateObject();
    cJSON_AddStringToObject(mig, "uri", uri);
    int rc = gd_qmp_cmd(q, "migrate-set-capabilities", gd_qmp_events_on(), -1, cb, ud);
    if (!rc)
        rc = gd_qmp_cmd(q, "migrate-set-parameters", bw, -1, cb, ud);
    else
        cJSON_Delete(bw);
    if (!rc)
        rc = gd_qmp_cmd(q, "stop", NULL, -1, cb, ud);
    if (!rc)
        rc = gd_qmp_cmd(q, "getfd", fdn, fd, cb, ud);
    else
        cJSON_Delete(fdn);
    if (!rc)
        rc = gd_qmp_cmd(q, "migrate", mig, -1, cb, ud);
    else
        cJSON_Delete(mig);
    return rc;
}

struct after_mig {
    unsigned left;
    void (*done)(void *ud, int status);
    void *ud;
};

static void on_after_status(gd_qmp *q, int status, const cJSON *ret, const char *err, void *ud)
{
    (void)err;
    struct after_mig *a = ud;
    if (status == -ECANCELED) {
        free(a);
        return;
    }
    const char *st = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(ret, "status"));
    int over = !status && st && strcmp(st, "finish-migrate");
    if (!over && !status && --a->left &&
        gd_qmp_cmd(q, "query-status", NULL, -1, on_after_status, a) == 0)
        return;
    void (*done)(void *, int) = a->done;
    void *dud = a->ud;
    free(a);
    done(dud, over ? 0 : -EIO);
}

int gd_qmp_after_migration(gd_qmp *q, unsigned tries, void (*done)(void *ud, int status), void *ud)
{
    struct after_mig *a = malloc(sizeof(*a));
    if (!a)
        return -ENOMEM;
    *a = (struct after_mig){.left = tries ? tries : 1, .done = done, .ud = ud};
    int rc = gd_qmp_cmd(q, "query-status", NULL, -1, on_after_status, a);
    if (rc)
        free(a);
    return rc;
}
