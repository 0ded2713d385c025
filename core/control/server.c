/* server.c - the control server a supervisor runs around one sandbox (docs/control.md):
 * the socket, connections and their frames, execs with credit passed through. The
 * one-shot requests are in requests.c, transfers in transfer.c, log tails in logs.c. */
#define _GNU_SOURCE
#include "control_int.h"

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#define TICK_MS 250
#define KILL_AFTER_MS 2000
#define DRAIN_MS 5000 /* an ended connection gets this long to take what is queued */

void gd__control_log(gd_control_server *s, const char *fmt, ...)
{
    if (!s->o.log)
        return;
    char line[1200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    s->o.log(s->o.ud, line);
}

/* ---- writing ---- */

struct wreq {
    uv_write_t w;
    struct conn *c;
    size_t n;
    int stop; /* 1: call on_stop once written, 2: with force */
    uint8_t data[];
};

static void conn_end(struct conn *c, int drain);

static void on_written(uv_write_t *w, int status)
{
    struct wreq *q = (struct wreq *)w;
    struct conn *c = q->c;
    c->outq -= q->n;
    if (q->stop && c->s->o.on_stop)
        c->s->o.on_stop(c->s->o.ud, q->stop == 2);
    free(q);
    if (status < 0 && !c->ended)
        conn_end(c, 0);
}

static int send_frame(struct conn *c, unsigned type, unsigned flags, uint32_t id, const void *body,
                      size_t n, int stop)
{
    if (!c || c->ended)
        return -EPIPE;
    struct wreq *q = malloc(sizeof(*q) + GD_CONTROL_HDR_LEN + n);
    if (!q) {
        conn_end(c, 0);
        return -ENOMEM;
    }
    q->c = c;
    q->n = GD_CONTROL_HDR_LEN + n;
    q->stop = stop;
    gd_control_hdr_write(q->data, type, flags, id, (uint32_t)n);
    if (n)
        memcpy(q->data + GD_CONTROL_HDR_LEN, body, n);
    uv_buf_t b = uv_buf_init((char *)q->data, (unsigned)q->n);
    int rc = uv_write(&q->w, (uv_stream_t *)&c->pipe, &b, 1, on_written);
    if (rc) {
        free(q);
        conn_end(c, 0);
        return rc;
    }
    c->outq += q->n;
    if (c->outq > GD_CONTROL_MAX_QUEUED) {
        gd__control_log(c->s,
                        "control: a client stopped reading (%zu bytes queued); disconnecting it",
                        c->outq);
        conn_end(c, 0);
        return -ENOBUFS;
    }
    return 0;
}

int gd__control_send(struct conn *c, unsigned type, unsigned flags, uint32_t id, const void *body,
                     size_t n)
{
    return send_frame(c, type, flags, id, body, n, 0);
}

void gd__control_reply(struct conn *c, uint32_t id, cJSON *o, int stop)
{
    char *t = gd_control_encode_json(o);
    if (t)
        send_frame(c, GD_CONTROL_REPLY, 0, id, t, strlen(t), stop);
    free(t);
}

int gd__control_send_json(struct conn *c, unsigned type, uint32_t id, char *text)
{
    int rc = text ? send_frame(c, type, 0, id, text, strlen(text), 0) : -ENOMEM;
    free(text);
    return rc;
}

void gd__control_error(struct conn *c, uint32_t id, const char *code, const char *msg)
{
    gd__control_send_json(c, GD_CONTROL_ERROR, id, gd_control_encode_error(code, msg));
}

void gd__control_fail(struct conn *c, const char *fmt, ...)
{
    char msg[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    gd__control_log(c->s, "control: protocol error from a client: %s; closing that connection",
                    msg);
    gd__control_error(c, 0, "protocol", msg);
    conn_end(c, 1);
}

/* ---- requests ---- */

struct req *gd__control_find(struct conn *c, uint32_t id)
{
    for (struct req *r = c->reqs; r; r = r->next)
        if (r->id == id)
            return r;
    return NULL;
}

static void unlink_req(struct req **head, struct req *r)
{
    for (struct req **p = head; *p; p = &(*p)->next)
        if (*p == r) {
            *p = r->next;
            return;
        }
}

void gd__control_req_done(struct req *r)
{
    if (r->c) {
        unlink_req(&r->c->reqs, r);
        r->c->nreqs--;
    } else {
        unlink_req(&r->s->orphans, r);
    }
    free(r);
}

/* 0: the id may start a request; else the ERROR was sent. */
int gd__control_admit(struct conn *c, uint32_t id)
{
    char msg[80];
    if (gd__control_find(c, id)) {
        snprintf(msg, sizeof(msg), "request id %u is still live", id);
        gd__control_error(c, id, "id_in_use", msg);
        return -1;
    }
    if (c->nreqs >= GD_CONTROL_MAX_REQUESTS) {
        gd__control_error(c, id, "busy", "64 requests are live on this connection");
        return -1;
    }
    return 0;
}

struct req *gd__control_req_new(struct conn *c, uint32_t id, enum req_kind kind)
{
    struct req *r = calloc(1, sizeof(*r));
    if (!r) {
        gd__control_error(c, id, "internal", "out of memory");
        return NULL;
    }
    r->s = c->s;
    r->c = c;
    r->id = id;
    r->kind = kind;
    r->next = c->reqs;
    c->reqs = r;
    c->nreqs++;
    return r;
}

/* SIGHUP to the process group, stdin closed; SIGKILL 2 s later (the tick). */
static void hangup(struct req *r)
{
    if (!r->x || r->hung)
        return;
    r->hung = 1;
    r->hung_at = uv_now(r->s->loop);
    gd_exec_signal(r->x, SIGHUP);
    if (r->stdin_open) {
        gd_exec_write(r->x, "", 0, 1);
        r->stdin_open = 0;
    }
    gd__control_tick_update(r->s);
}

/* ---- exec callbacks (execs and transfers) ---- */

static void on_started(gd_exec *x, uint32_t pid, void *ud)
{
    (void)x;
    struct req *r = ud;
    char b[48];
    snprintf(b, sizeof(b), "{\"pid\":%u}", pid);
    if (r->kind == REQ_EXEC && r->c)
        gd__control_send(r->c, GD_CONTROL_STARTED, 0, r->id, b, strlen(b));
}

static void on_stdin_credit(gd_exec *x, size_t credit, void *ud)
{
    (void)x;
    struct req *r = ud;
    if (!r->stdin_open || !r->c || credit <= r->in_credit)
        return;
    uint64_t g = credit - r->in_credit;
    if (r->in_credit + g > GD_CONTROL_MAX_CREDIT)
        g = GD_CONTROL_MAX_CREDIT - r->in_credit;
    uint8_t b[4];
    gd_control_put_u32(b, (uint32_t)g);
    r->in_credit += (uint32_t)g;
    gd__control_send(r->c, GD_CONTROL_STDIN_WINDOW, 0, r->id, b, 4);
}

static void on_output(gd_exec *x, int stream, const uint8_t *data, size_t n, void *ud)
{
    struct req *r = ud;
    if (r->c && (r->kind == REQ_EXEC || (r->kind == REQ_GET && stream == 1))) {
        /* the guest sends no more than the client granted: pass it on */
        r->out_avail[stream] -= n < r->out_avail[stream] ? (uint32_t)n : r->out_avail[stream];
        for (size_t off = 0; off < n && r->c;) {
            size_t k = n - off > GD_CONTROL_MAX_CHUNK ? GD_CONTROL_MAX_CHUNK : n - off;
            gd__control_send(r->c, GD_CONTROL_OUTPUT, (unsigned)stream, r->id, data + off, k);
            off += k;
        }
        return;
    }
    if (r->kind != REQ_EXEC && stream == 2 && r->errlen < sizeof(r->err) - 1) {
        size_t k = sizeof(r->err) - 1 - r->errlen;
        k = k < n ? k : n;
        memcpy(r->err + r->errlen, data, k);
        r->errlen += k;
    }
    gd_exec_ack(x, stream, n); /* ours, or nobody's: keep the process going */
}

static void on_exit_cb(gd_exec *x, const struct gd_exec_result *res, void *ud)
{
    (void)x;
    struct req *r = ud;
    r->x = NULL;
    char msg[1024] = "";
    int code = res->exit_code, sig = 0;
    if (res->error == GD_EXEC_VM_GONE) {
        code = 125;
        snprintf(msg, sizeof(msg), "%s",
                 r->s->stopping ? "the sandbox was stopped"
                 : res->message ? res->message
                                : "the sandbox stopped");
    } else if (res->error) {
        snprintf(msg, sizeof(msg), "%s", res->message ? res->message : "cannot start");
    } else if (res->signal) {
        sig = res->signal;
        code = 128 + sig;
    }
    if (code < 0 || code > 255)
        code = 255;
    if (!msg[0] && r->kind != REQ_EXEC && code) {
        gd__control_err_line(r, msg, sizeof(msg));
        if (!msg[0])
            snprintf(msg, sizeof(msg), "the transfer failed with status %d", code);
    }
    /* done first: a send that overflows the queue ends the connection, which frees what
     * is on its list without a process */
    struct conn *c = r->c;
    uint32_t id = r->id;
    gd__control_req_done(r);
    if (c)
        gd__control_send_json(c, GD_CONTROL_EXIT, id,
                              gd_control_encode_exit(code, sig, msg[0] ? msg : NULL));
}

void gd__control_start(struct req *r, const struct gd_exec_opts *xo)
{
    struct gd_exec_cbs cbs = {.on_output = on_output,
                              .on_stdin_credit = on_stdin_credit,
                              .on_exit = on_exit_cb,
                              .on_started = on_started};
    int rc = r->s->stopping || r->s->closing ? -ESHUTDOWN
                                             : gd_sandbox_exec(r->s->sb, xo, &cbs, r, &r->x);
    if (!rc)
        return;
    char why[200];
    snprintf(why, sizeof(why), "%s",
             rc == -ESHUTDOWN ? "the sandbox is stopping"
             : rc == -E2BIG   ? "the command, environment or path is too large"
                              : strerror(-rc));
    struct conn *c = r->c;
    uint32_t id = r->id;
    gd__control_req_done(r);
    gd__control_send_json(c, GD_CONTROL_EXIT, id, gd_control_encode_exit(125, 0, why));
}

/* ---- frames from a client ---- */

static void on_hello(struct conn *c, const uint8_t *body, size_t n)
{
    struct gd_control_hello h;
    char why[300];
    if (c->hello)
        return gd__control_fail(c, "HELLO repeated");
    if (gd_control_parse_hello(body, n, &h, why, sizeof(why)))
        return gd__control_fail(c, "HELLO: %s", why);
    if (h.version != GD_CONTROL_VERSION) {
        snprintf(why, sizeof(why), "this supervisor speaks version %d, not %d", GD_CONTROL_VERSION,
                 h.version);
        gd__control_error(c, 0, "version", why);
        conn_end(c, 1);
        return;
    }
    c->hello = 1;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "version", GD_CONTROL_VERSION);
    cJSON_AddItemToObject(o, "session", gd__control_info(c->s));
    gd__control_send_json(c, GD_CONTROL_HELLO, 0, gd_control_encode_json(o));
    gd__control_tick_update(c->s);
}

static void on_exec(struct conn *c, uint32_t id, const uint8_t *body, size_t n)
{
    struct gd_control_exec e;
    char why[300];
    if (gd_control_parse_exec(body, n, &e, why, sizeof(why)))
        return gd__control_fail(c, "EXEC: %s", why);
    struct req *r = gd__control_admit(c, id) ? NULL : gd__control_req_new(c, id, REQ_EXEC);
    if (r) {
        struct gd_exec_opts xo = {.argv = e.argv,
                                  .shell = e.shell,
                                  .env = e.env,
                                  .cwd = e.cwd,
                                  .pty = e.pty,
                                  .rows = e.rows,
                                  .cols = e.cols,
                                  .stdin_stream = e.stdin_stream,
                                  .window = e.window,
                                  .manual_ack = 1};
        r->stdin_open = e.stdin_stream;
        r->out_avail[1] = r->out_avail[2] = e.window;
        gd__control_start(r, &xo);
    }
    gd_control_exec_free(&e);
}

static void on_stdin(struct conn *c, const struct gd_control_hdr *h, const uint8_t *body)
{
    struct req *r = gd__control_find(c, h->id);
    if (!r || r->hung)
        return; /* it ended (or is being hung up) while the client was sending */
    if ((r->kind != REQ_EXEC && r->kind != REQ_PUT) || !r->stdin_open)
        return gd__control_fail(c, "STDIN for request %u, which takes none (or after its EOF)",
                                h->id);
    if (h->len > r->in_credit)
        return gd__control_fail(c, "STDIN beyond the granted credit (%u bytes, %u granted)", h->len,
                                r->in_credit);
    r->in_credit -= h->len;
    int eof = h->flags & GD_CONTROL_STDIN_EOF;
    size_t off = 0;
    do { /* the guest's credit covers what the client was granted */
        long k = gd_exec_write(r->x, body + off, h->len - off, eof);
        if (k <= 0)
            break;
        off += (size_t)k;
    } while (off < h->len);
    if (eof)
        r->stdin_open = 0;
}

static void on_window(struct conn *c, const struct gd_control_hdr *h, const uint8_t *body)
{
    struct req *r = gd__control_find(c, h->id);
    if (!r || !r->x || r->kind == REQ_PUT)
        return;
    for (int i = 1; i <= 2; i++) {
        uint64_t g = gd_control_get_u32(body + 4 * (i - 1));
        if (r->kind == REQ_GET && i == 2)
            continue; /* a transfer's stderr is ours */
        if (r->out_avail[i] + g > GD_CONTROL_MAX_CREDIT)
            g = GD_CONTROL_MAX_CREDIT - r->out_avail[i];
        r->out_avail[i] += (uint32_t)g;
        if (g)
            gd_exec_ack(r->x, i, (size_t)g);
    }
}

static void dispatch(struct conn *c, const struct gd_control_hdr *h, const uint8_t *body)
{
    if (!c->hello && h->type != GD_CONTROL_HELLO)
        return gd__control_fail(c, "%s before HELLO", gd_control_type_name(h->type));
    struct req *r;
    char why[300];
    switch (h->type) {
    case GD_CONTROL_HELLO:
        return on_hello(c, body, h->len);
    case GD_CONTROL_EXEC:
        return on_exec(c, h->id, body, h->len);
    case GD_CONTROL_STDIN:
        return on_stdin(c, h, body);
    case GD_CONTROL_WINDOW:
        return on_window(c, h, body);
    case GD_CONTROL_RESIZE: {
        unsigned rows, cols;
        if (gd_control_parse_resize(body, h->len, &rows, &cols, why, sizeof(why)))
            return gd__control_fail(c, "%s", why);
        if ((r = gd__control_find(c, h->id)) && r->x && r->kind == REQ_EXEC)
            gd_exec_resize(r->x, rows, cols);
        return;
    }
    case GD_CONTROL_SIGNAL: {
        long long sig;
        if (gd_control_parse_int(body, h->len, "signal", 1, 64, &sig, why, sizeof(why)))
            return gd__control_fail(c, "SIGNAL: %s", why);
        if ((r = gd__control_find(c, h->id)) && r->x && r->kind == REQ_EXEC)
            gd_exec_signal(r->x, (int)sig);
        return;
    }
    case GD_CONTROL_PUT:
        return gd__control_put(c, h->id, body, h->len);
    case GD_CONTROL_GET:
        return gd__control_get(c, h->id, body, h->len);
    case GD_CONTROL_REQUEST:
        return gd__control_request(c, h->id, body, h->len);
    case GD_CONTROL_CANCEL:
        if (!(r = gd__control_find(c, h->id)))
            return;
        if (r->kind != REQ_LOGS)
            return hangup(r);
        cJSON *o = cJSON_CreateObject();
        cJSON_AddBoolToObject(o, "ok", 1);
        uint32_t id = r->id;
        gd__control_req_done(r);
        gd__control_reply(c, id, o, 0);
        gd__control_tick_update(c->s);
        return;
    }
}

/* ---- connections ---- */

static void on_tick_closed(uv_handle_t *h)
{
    gd_control_server *s = h->data;
    s->tick_open = 0;
    if (s->done) {
        void (*done)(void *) = s->done;
        s->done = NULL;
        done(s->done_ud);
    }
}

/* Closing: the tick goes last, once every connection has drained and closed. */
static void maybe_done(gd_control_server *s)
{
    if (s->closing && !s->conns && !s->listener_open && s->tick_open && !s->tick_closing) {
        s->tick_closing = 1;
        uv_close((uv_handle_t *)&s->tick, on_tick_closed);
    }
}

static void on_conn_closed(uv_handle_t *h)
{
    struct conn *c = h->data;
    gd_control_server *s = c->s;
    for (struct conn **p = &s->conns; *p; p = &(*p)->next)
        if (*p == c) {
            *p = c->next;
            break;
        }
    gd_control_reader_free(&c->rd);
    free(c);
    maybe_done(s);
}

static void conn_close(struct conn *c)
{
    if (c->closing)
        return;
    c->closing = 1;
    uv_close((uv_handle_t *)&c->pipe, on_conn_closed);
}

static void on_shut(uv_shutdown_t *sh, int status)
{
    (void)status;
    conn_close(sh->data);
}

/* The connection is over: its execs are hung up (and live on as orphans until they
 * end), what is queued is written first when drain says so. */
static void conn_end(struct conn *c, int drain)
{
    gd_control_server *s = c->s;
    if (!c->ended) {
        c->ended = 1;
        c->t0 = uv_now(s->loop);
        if (c->counted)
            s->nconns--;
        uv_read_stop((uv_stream_t *)&c->pipe);
        while (c->reqs) {
            struct req *r = c->reqs;
            c->reqs = r->next;
            c->nreqs--;
            if (!r->x) {
                free(r);
                continue;
            }
            r->c = NULL;
            r->next = s->orphans;
            s->orphans = r;
            hangup(r);
        }
    }
    if (c->closing)
        return;
    if (drain && c->outq) {
        c->shut.data = c;
        if (uv_shutdown(&c->shut, (uv_stream_t *)&c->pipe, on_shut) == 0) {
            gd__control_tick_update(s);
            return;
        }
    }
    conn_close(c);
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b)
{
    (void)hint;
    struct conn *c = h->data;
    *b = uv_buf_init((char *)c->s->rbuf, sizeof(c->s->rbuf));
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *b)
{
    struct conn *c = st->data;
    if (nread < 0) {
        conn_end(c, 0); /* the client went away */
        return;
    }
    size_t off = 0;
    while (off < (size_t)nread && !c->ended) {
        size_t used;
        int rc = gd_control_reader_feed(&c->rd, (const uint8_t *)b->base + off, (size_t)nread - off,
                                        &used);
        off += used;
        if (rc < 0)
            gd__control_fail(c, "%s", c->rd.why ? c->rd.why : "bad frame");
        else if (rc == 1)
            dispatch(c, &c->rd.h, c->rd.body);
    }
}

static void on_connection(uv_stream_t *l, int status)
{
    gd_control_server *s = l->data;
    if (status < 0)
        return;
    struct conn *c = calloc(1, sizeof(*c));
    if (!c)
        return;
    c->s = s;
    c->serial = ++s->next_serial;
    gd_control_reader_init(&c->rd, GD_CONTROL_TO_SERVER);
    uv_pipe_init(s->loop, &c->pipe, 0);
    c->pipe.data = c;
    c->next = s->conns;
    s->conns = c;
    if (uv_accept(l, (uv_stream_t *)&c->pipe)) {
        c->ended = 1;
        conn_close(c);
        return;
    }
    /* the peer's uid, before a byte is read */
    uv_os_fd_t fd;
    struct ucred cr;
    socklen_t cl = sizeof(cr);
    if (uv_fileno((uv_handle_t *)&c->pipe, &fd) ||
        getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &cl) || cr.uid != geteuid()) {
        gd__control_log(s, "control: refused a connection from uid %d (pid %d)",
                        cl ? (int)cr.uid : -1, cl ? (int)cr.pid : -1);
        c->ended = 1;
        conn_close(c);
        return;
    }
    c->t0 = uv_now(s->loop);
    if (s->nconns >= GD_CONTROL_MAX_CLIENTS || s->closing) {
        gd__control_error(c, 0, "busy", "too many clients on this session");
        conn_end(c, 1);
        return;
    }
    s->nconns++;
    c->counted = 1;
    uv_read_start((uv_stream_t *)&c->pipe, on_alloc, on_read);
    gd__control_tick_update(s);
}

/* ---- the tick: HELLO deadlines, drains, SIGKILL after a hang-up, log followers ---- */

static int kill_due(gd_control_server *s, struct req *r, uint64_t now)
{
    if (!r->hung || r->killed || !r->x)
        return 0;
    if (now - r->hung_at >= KILL_AFTER_MS) {
        r->killed = 1;
        gd_exec_signal(r->x, SIGKILL);
        return 0;
    }
    (void)s;
    return 1;
}

static void on_tick(uv_timer_t *t)
{
    gd_control_server *s = t->data;
    uint64_t now = uv_now(s->loop);
    for (struct conn *c = s->conns; c; c = c->next) {
        if (!c->hello && !c->ended && now - c->t0 >= GD_CONTROL_HELLO_MS) {
            gd__control_error(c, 0, "timeout", "no HELLO within 10 s");
            conn_end(c, 1);
        } else if (c->ended && !c->closing && now - c->t0 >= DRAIN_MS) {
            conn_close(c);
        }
        for (struct req *r = c->reqs; r; r = r->next)
            kill_due(s, r, now);
    }
    for (struct req *r = s->orphans; r; r = r->next)
        kill_due(s, r, now);
    gd__control_logs_poll(s);
    gd__control_tick_update(s);
}

void gd__control_tick_update(gd_control_server *s)
{
    if (!s->tick_open || s->tick_closing)
        return;
    int need = 0;
    uint64_t now = uv_now(s->loop);
    for (struct conn *c = s->conns; c && !need; c = c->next) {
        need = (!c->hello && !c->ended) || (c->ended && !c->closing);
        for (struct req *r = c->reqs; r && !need; r = r->next)
            need = r->follow || kill_due(s, r, now);
    }
    for (struct req *r = s->orphans; r && !need; r = r->next)
        need = kill_due(s, r, now);
    if (need && !s->ticking)
        uv_timer_start(&s->tick, on_tick, TICK_MS, TICK_MS);
    else if (!need && s->ticking)
        uv_timer_stop(&s->tick);
    s->ticking = need;
}

/* ---- the server ---- */

int gd_control_server_new(uv_loop_t *loop, gd_sandbox *sb, const struct gd_control_server_opts *o,
                          gd_control_server **out, struct gd_err *err)
{
    gd_control_server *s = calloc(1, sizeof(*s));
    if (!s)
        return gd_err_set(err, -ENOMEM, "out of memory");
    s->loop = loop;
    s->sb = sb;
    s->o = *o;
    if (o->meta)
        s->meta = *o->meta;
    s->path = strdup(o->path);
    s->log_path = o->log_path ? strdup(o->log_path) : NULL;
    s->o.path = s->path;
    s->o.log_path = s->log_path;
    s->o.meta = &s->meta;
    struct sockaddr_un sa;
    int dfd = -1, rc = s->path ? gd__control_addr(s->path, &sa, &dfd) : -ENOMEM;
    if (rc) {
        gd_err_set(err, rc, "%s: %s", o->path, strerror(-rc));
        goto fail;
    }
    struct stat st;
    if (lstat(s->path, &st) == 0 && S_ISSOCK(st.st_mode))
        unlink(s->path); /* a stale socket of ours */
    uv_pipe_init(loop, &s->listener, 0);
    s->listener.data = s;
    s->listener_open = 1;
    mode_t old = umask(0177);
    rc = uv_pipe_bind(&s->listener, sa.sun_path);
    umask(old);
    if (dfd >= 0)
        close(dfd);
    if (!rc && chmod(s->path, 0600))
        rc = -errno;
    if (!rc)
        rc = uv_listen((uv_stream_t *)&s->listener, 128, on_connection);
    if (rc) {
        gd_err_set(err, rc, "cannot listen on %s: %s", s->path, uv_strerror(rc));
        uv_close((uv_handle_t *)&s->listener, NULL);
        s->listener_open = 0;
        goto fail;
    }
    uv_timer_init(loop, &s->tick);
    s->tick.data = s;
    s->tick_open = 1;
    *out = s;
    return 0;
fail:
    free(s->path);
    free(s->log_path);
    free(s);
    return rc;
}

void gd_control_server_on_reload(gd_control_server *s, int ok, const char *msg)
{
    s->has_error = !ok;
    snprintf(s->last_error, sizeof(s->last_error), "%s", ok || !msg ? "" : msg);
}

void gd_control_server_stopping(gd_control_server *s)
{
    s->stopping = 1;
}

static void on_listener_closed(uv_handle_t *h)
{
    gd_control_server *s = h->data;
    s->listener_open = 0;
    maybe_done(s);
}

void gd_control_server_close(gd_control_server *s, void (*done)(void *ud), void *ud)
{
    s->closing = 1;
    s->done = done;
    s->done_ud = ud;
    if (s->listener_open)
        uv_close((uv_handle_t *)&s->listener, on_listener_closed);
    unlink(s->path);
    for (struct conn *c = s->conns; c; c = c->next)
        conn_end(c, 1);
    maybe_done(s);
}

void gd_control_server_free(gd_control_server *s)
{
    if (!s)
        return;
    while (s->orphans) {
        struct req *r = s->orphans;
        s->orphans = r->next;
        free(r);
    }
    free(s->path);
    free(s->log_path);
    free(s);
}
