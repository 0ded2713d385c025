/* upstream.c - upstream connections: pool, resolve/connect, response parsing, TLS. */
#define _GNU_SOURCE
#include "http/http_int.h"

#include "dns/addr.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <netdb.h>
#include <openssl/err.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

static void up_ready(struct up *u);
static void up_failed(struct up *u, const char *why);
static void up_throttle(struct up *u);
static void on_up_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *b);

/* ---- upstream connections ---- */

static void up_link(gd_proxy *px, struct up *u)
{
    u->next = px->ups;
    if (px->ups)
        px->ups->prev = u;
    px->ups = u;
}

static void up_unlink(struct up *u)
{
    if (u->prev)
        u->prev->next = u->next;
    else
        u->px->ups = u->next;
    if (u->next)
        u->next->prev = u->prev;
}

static void up_maybe_free(struct up *u)
{
    if (u->s.open || u->timer_open)
        return;
    gd_proxy *px = u->px;
    up_unlink(u);
    gd__side_tls_free(&u->s);
    free(u);
    gd__maybe_reap(px);
}

static void on_up_handle_closed(uv_handle_t *h)
{
    struct up *u = h->data;
    u->s.open = 0;
    up_maybe_free(u);
}

static void on_up_timer_closed(uv_handle_t *h)
{
    struct up *u = h->data;
    u->timer_open = 0;
    up_maybe_free(u);
}

void gd__up_close(struct up *u)
{
    if (u->dead)
        return;
    u->dead = 1;
    if (u->idle) {
        u->idle = 0;
        u->px->nidle--;
    }
    if (u->f && u->f->up == u)
        u->f->up = NULL;
    u->f = NULL;
    if (u->timer_open)
        uv_close((uv_handle_t *)&u->timer, on_up_timer_closed);
    if (u->s.open)
        uv_close(&u->s.u.h, on_up_handle_closed);
}

void gd__up_send(struct up *u, const void *p, size_t n)
{
    gd__side_write(&u->s, p, n, u);
}

static size_t pool_count(gd_proxy *px, const char *key)
{
    size_t n = 0;
    for (struct up *u = px->ups; u; u = u->next)
        if (u->idle && !u->dead && !strcmp(u->key, key))
            n++;
    return n;
}

static void on_idle_timeout(uv_timer_t *tm)
{
    gd__up_close(tm->data);
}

/* The exchange on u is over: keep it for the next request to the same origin, or close. */
void gd__up_release(struct up *u, int reusable)
{
    struct flow *f = u->f;
    if (f && f->up == u)
        f->up = NULL;
    u->f = NULL;
    if (!reusable || u->no_reuse || u->dead || u->s.eof || u->px->closing ||
        u->px->nidle >= u->px->o.pool_total ||
        pool_count(u->px, u->key) >= u->px->o.pool_per_origin) {
        gd__up_close(u);
        return;
    }
    u->idle = 1;
    u->px->nidle++;
    llhttp_init(&u->p, HTTP_RESPONSE, &gd__resp_settings);
    u->p.data = u;
    uv_timer_start(&u->timer, on_idle_timeout, u->px->o.idle_ms, 0);
}

/* ---- response parser callbacks ---- */

static int on_resp_begin(llhttp_t *p)
{
    struct up *u = p->data;
    struct flow *f = u->f;
    if (!f || !f->t)
        return -1; /* bytes from an idle upstream: it is misbehaving */
    return 0;
}

static int resp_limit(struct up *u, size_t add)
{
    gd_txn *t = u->f->t;
    t->head_bytes += add;
    return t->head_bytes > u->px->o.max_header_bytes * 2 ? -1 : 0;
}

static int on_resp_status(llhttp_t *p, const char *at, size_t n)
{
    struct up *u = p->data;
    if (resp_limit(u, n) || u->f->t->reason.n + n > 256)
        return -1;
    return gd__buf_add(&u->f->t->reason, at, n) ? -1 : 0;
}

static int on_resp_field(llhttp_t *p, const char *at, size_t n)
{
    struct up *u = p->data;
    if (resp_limit(u, n))
        return -1;
    if (u->f->t->resp_trailers)
        return 0; /* trailers are dropped: they would bypass response hooks */
    return gd__on_hdr_field(p, at, n, &u->f->t->resp, u->f->t, u->px->o.max_headers * 2);
}

static int on_resp_value(llhttp_t *p, const char *at, size_t n)
{
    struct up *u = p->data;
    if (resp_limit(u, n))
        return -1;
    if (u->f->t->resp_trailers)
        return 0;
    return gd__on_hdr_value(at, n, &u->f->t->resp, u->f->t);
}

static int is_hop_header(const char *name, const char *connection)
{
    static const char *const hop[] = {
        "connection", "keep-alive",        "proxy-connection", "proxy-authenticate",  "te",
        "trailer",    "transfer-encoding", "upgrade",          "proxy-authorization", NULL};
    for (const char *const *h = hop; *h; h++)
        if (!strcasecmp(name, *h))
            return 1;
    return connection && gd__has_token(connection, name);
}

static void send_resp_head(struct flow *f, gd_txn *t, int buffered)
{
    struct buf b = {0};
    const char *conn = gd__hdrs_get(&t->resp, "connection");
    int nobody = t->head_req || t->status == 204 || t->status == 304 || t->status < 200;
    int upstream_cl = gd__hdrs_get(&t->resp, "content-length") != NULL;
    int chunked_upstream = gd__has_token(gd__hdrs_get(&t->resp, "transfer-encoding"), "chunked");
    if (t->status == 101) {
        gd__buf_printf(&b, "HTTP/1.1 101 %s\r\n",
                       t->reason.p ? t->reason.p : "Switching Protocols");
        for (size_t i = 0; i < t->resp.n; i++) {
            if (is_hop_header(t->resp.v[i].name, NULL))
                continue;
            gd__buf_printf(&b, "%s: %s\r\n", t->resp.v[i].name, t->resp.v[i].value);
        }
        gd__buf_printf(&b, "Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
        gd__flow_send(f, b.p, b.n);
        gd__buf_free(&b);
        t->resp_head_sent = 1;
        return;
    }
    gd__buf_printf(&b, "HTTP/1.1 %d %s\r\n", t->status,
                   t->reason.n ? t->reason.p : gd__reason_phrase(t->status));
    for (size_t i = 0; i < t->resp.n; i++) {
        const char *n = t->resp.v[i].name;
        if (is_hop_header(n, conn))
            continue;
        if ((buffered || chunked_upstream) && !strcasecmp(n, "content-length"))
            continue;
        gd__buf_printf(&b, "%s: %s\r\n", n, t->resp.v[i].value);
    }
    if (buffered) {
        if (!nobody)
            gd__buf_printf(&b, "Content-Length: %zu\r\n", t->respbody.n);
    } else if (!nobody && (chunked_upstream || !upstream_cl)) {
        if (t->http10)
            t->resp_close = t->resp_eof_body = 1; /* close-delimited toward a 1.0 client */
        else {
            t->resp_chunked_out = 1;
            gd__buf_printf(&b, "Transfer-Encoding: chunked\r\n");
        }
    }
    if (!t->keepalive || t->resp_close || !t->req_done)
        t->resp_close = 1;
    gd__buf_printf(&b, "Connection: %s\r\n\r\n", t->resp_close ? "close" : "keep-alive");
    gd__flow_send(f, b.p, b.n);
    gd__buf_free(&b);
    t->resp_head_sent = 1;
}

static void send_resp_body(struct flow *f, gd_txn *t, const char *p, size_t n)
{
    if (!n)
        return;
    t->down_bytes += n;
    if (t->resp_chunked_out) {
        char hx[24];
        int k = snprintf(hx, sizeof(hx), "%zx\r\n", n);
        gd__flow_send(f, hx, (size_t)k);
        gd__flow_send(f, p, n);
        gd__flow_send(f, "\r\n", 2);
    } else {
        gd__flow_send(f, p, n);
    }
}

static int on_resp_headers_complete(llhttp_t *p)
{
    struct up *u = p->data;
    struct flow *f = u->f;
    gd_txn *t = f->t;
    t->status = llhttp_get_status_code(p);
    if (t->status < 100 || t->status > 599)
        return -1; /* -> 502 */
    if (t->status >= 100 && t->status < 200 && t->status != 101)
        return 0; /* interim: dropped in on_resp_complete */
    if (t->status == 101 && !t->websocket)
        return -1;
    for (size_t i = 0; i < t->resp.n; i++)
        if (!gd__token(t->resp.v[i].name))
            return -1; /* -> 502: a name that is not a token never reaches the guest */
    t->resp_trailers = 1;
    if (gd__run_hooks(f->px, t, GD_PHASE_RESPONSE_HEAD) != GD_CONTINUE)
        return HPE_PAUSED;
    if (t->status == 101) {
        send_resp_head(f, t, 0);
        f->st = F_TUNNEL;
        return 2;
    }
    if (!t->want_resp_body)
        send_resp_head(f, t, 0);
    return t->head_req ? 1 : 0;
}

static int on_resp_body(llhttp_t *p, const char *at, size_t n)
{
    struct up *u = p->data;
    struct flow *f = u->f;
    gd_txn *t = f->t;
    if (t->denied)
        return 0;
    if (t->want_resp_body)
        return gd__txn_buffer(t, &t->respbody, at, n) ? -1 : 0;
    send_resp_body(f, t, at, n);
    return 0;
}

static int on_resp_complete(llhttp_t *p)
{
    struct up *u = p->data;
    gd_txn *t = u->f->t;
    if (u->f->st == F_TUNNEL)
        return 0; /* a 101: execute returns HPE_PAUSED_UPGRADE */
    if (t->status >= 100 && t->status < 200 && t->status != 101) {
        gd__hdrs_free(&t->resp);
        t->reason.n = 0;
        t->status = 0;
        return 0;
    }
    t->resp_done = 1;
    return HPE_PAUSED;
}

/* ---- upstream I/O ---- */

/* Response complete (or failed): either buffered hooks, then finish. */
static void resp_finished(struct flow *f)
{
    gd_txn *t = f->t;
    if (t->want_resp_body && !t->denied) {
        if (gd__run_hooks(f->px, t, GD_PHASE_RESPONSE_BODY) != GD_CONTINUE) {
            if (f->up)
                f->up->no_reuse = 1;
            gd__send_synthetic(f, t, 1);
            gd__txn_finish(f);
            return;
        }
        send_resp_head(f, t, 1);
        if (!t->head_req)
            send_resp_body(f, t, t->respbody.p ? t->respbody.p : "", t->respbody.n);
    }
    if (t->resp_chunked_out)
        gd__flow_send(f, "0\r\n\r\n", 5);
    if (t->resp_close && f->up)
        f->up->no_reuse = 1;
    gd__txn_finish(f);
}

static void deliver_up_plain(struct up *u, const char *p, size_t n)
{
    struct flow *f = u->f;
    if (!f || !f->t) {
        if (f && f->st == F_TUNNEL) {
            gd__flow_send(f, p, n);
            return;
        }
        gd__up_close(u); /* an idle upstream talking, or a response nobody asked for */
        return;
    }
    if (f->st == F_TUNNEL) {
        gd__flow_send(f, p, n);
        return;
    }
    u->got_bytes = 1;
    gd_txn *t = f->t;
    llhttp_errno_t e = llhttp_execute(&u->p, p, n);
    if (e == HPE_PAUSED_UPGRADE && f->st == F_TUNNEL) {
        const char *pos = llhttp_get_error_pos(&u->p);
        size_t used = pos ? (size_t)(pos - p) : n;
        u->no_reuse = 1;
        /* the request side: whatever the guest already sent goes up */
        gd__emit_event(f, t);
        gd__txn_free(t);
        f->t = NULL;
        if (used < n)
            gd__flow_send(f, p + used, n - used);
        if (f->pend.n > f->pend_off) {
            gd__up_send(u, f->pend.p + f->pend_off, f->pend.n - f->pend_off);
            f->pend.n = f->pend_off = 0;
        }
        gd__flow_process(f);
        return;
    }
    if (e == HPE_PAUSED) {
        if (t->denied) { /* a response hook refused it */
            u->no_reuse = 1;
            gd__send_synthetic(f, t, 1);
            gd__txn_finish(f);
            return;
        }
        const char *pos = llhttp_get_error_pos(&u->p);
        if (pos && pos < p + n)
            u->no_reuse = 1; /* bytes after the response: do not trust this connection */
        resp_finished(f);
        return;
    }
    if (e != HPE_OK) {
        u->no_reuse = 1;
        gd__fail_txn(f, 502, "upstream", "bad response from %s: %s", u->host, llhttp_errno_name(e));
    }
}

static void up_pump_tls(struct up *u)
{
    char tmp[16384];
    if (!u->s.hs_done) {
        int r = SSL_do_handshake(u->s.ssl);
        gd__side_flush_tls(&u->s, u);
        if (r == 1) {
            u->s.hs_done = 1;
            up_ready(u);
            if (u->dead)
                return;
        } else {
            int e = SSL_get_error(u->s.ssl, r);
            if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) {
                char why[300];
                long v = SSL_get_verify_result(u->s.ssl);
                if (v != X509_V_OK)
                    snprintf(why, sizeof(why), "TLS certificate of %s not trusted: %s", u->host,
                             X509_verify_cert_error_string(v));
                else {
                    unsigned long oe = ERR_get_error();
                    char es[200] = "handshake failed";
                    if (oe)
                        ERR_error_string_n(oe, es, sizeof(es));
                    snprintf(why, sizeof(why), "TLS with %s: %s", u->host, es);
                }
                ERR_clear_error();
                up_failed(u, why);
            }
            return;
        }
    }
    for (;;) {
        if (u->dead)
            return;
        struct flow *f = u->f;
        if (f && f->g.open && gd__side_queued(&f->g) > HIGH_WATER) {
            up_throttle(u); /* resumed from the guest's write callback */
            return;
        }
        int r = SSL_read(u->s.ssl, tmp, sizeof(tmp));
        if (r <= 0) {
            int e = SSL_get_error(u->s.ssl, r);
            gd__side_flush_tls(&u->s, u);
            if (e == SSL_ERROR_WANT_READ)
                return;
            if (e == SSL_ERROR_ZERO_RETURN) {
                u->s.eof = 1;
                on_up_read(&u->s.u.s, UV_EOF, NULL);
                return;
            }
            ERR_clear_error();
            u->no_reuse = 1;
            on_up_read(&u->s.u.s, UV_EPROTO, NULL);
            return;
        }
        deliver_up_plain(u, tmp, (size_t)r);
    }
}

static void on_up_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *b)
{
    struct up *u = s->data;
    if (nread > 0 && !u->dead) {
        if (u->s.ssl) {
            BIO_write(u->s.rb, b->base, (int)nread);
            free(b->base);
            up_pump_tls(u);
            return;
        }
        deliver_up_plain(u, b->base, (size_t)nread);
        if (!u->dead)
            up_throttle(u);
    }
    if (b)
        free(b->base);
    if (nread >= 0 || u->dead)
        return;
    /* EOF or error from upstream. libuv reports a reset that arrives with POLLHUP after
     * a partial read as EOF without reading the error: ask the socket. */
    int truncated = 0;
    if (nread == UV_EOF && b) {
        int err = 0;
        socklen_t el = sizeof(err);
        uv_os_fd_t fd;
        if (!uv_fileno(&u->s.u.h, &fd) && !getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) && err)
            nread = uv_translate_sys_error(err);
        else if (u->s.ssl && !(SSL_get_shutdown(u->s.ssl) & SSL_RECEIVED_SHUTDOWN))
            truncated = 1; /* TCP closed under TLS without close_notify */
    }
    u->s.eof = 1;
    struct flow *f = u->f;
    if (!f) {
        gd__up_close(u);
        return;
    }
    if (f->st == F_TUNNEL) {
        gd__up_close(u);
        if (nread == UV_EOF) {
            gd__flow_close_after_flush(f);
        } else { /* a reset stays a reset toward a TCP guest */
            f->abort = 1;
            gd__flow_close(f);
        }
        return;
    }
    gd_txn *t = f->t;
    if (t && !u->got_bytes && u->reused && !t->req_has_body && !t->resp_head_sent) {
        /* a pooled connection the server had closed: try once more on a fresh one */
        f->up = NULL;
        u->f = NULL;
        gd__up_close(u);
        f->up_retry = 1;
        gd__start_request(f);
        return;
    }
    if (t && llhttp_message_needs_eof(&u->p) && t->resp_head_sent && nread == UV_EOF &&
        !truncated) {
        if (llhttp_finish(&u->p) == HPE_OK || t->resp_done) {
            u->no_reuse = 1;
            resp_finished(f);
            return;
        }
    }
    u->no_reuse = 1;
    gd__fail_txn(f, 502, "upstream", "%s closed the connection%s", u->host,
                 t && t->resp_head_sent ? " mid-response" : " before responding");
}

void gd__on_side_write(uv_write_t *w, int status)
{
    struct wreq *r = (struct wreq *)w;
    uv_stream_t *s = w->handle;
    void *owner = r->owner;
    free(r);
    if (status == UV_ECANCELED || uv_stream_get_write_queue_size(s) > HIGH_WATER / 4)
        return;
    /* this side drained: resume the side that was throttled by it */
    if (((struct flow *)owner)->is_up) {
        struct up *u = owner;
        struct flow *f = u->f;
        if (!u->dead && f && f->g.open && !f->g.reading && !f->shutting &&
            (f->st == F_BODY || f->st == F_TUNNEL))
            gd__flow_process(f);
        return;
    }
    struct flow *f = owner;
    struct up *u = f->up;
    if (u && !u->dead && u->s.open && !u->s.reading && u->connected) {
        uv_read_start(&u->s.u.s, gd__alloc_cb, on_up_read);
        u->s.reading = 1;
        if (u->s.ssl)
            up_pump_tls(u);
    }
}

/* Stops reading upstream while the guest has a full write queue. */
static void up_throttle(struct up *u)
{
    struct flow *f = u->f;
    if (!u->dead && u->s.reading && f && gd__side_queued(&f->g) > HIGH_WATER) {
        uv_read_stop(&u->s.u.s);
        u->s.reading = 0;
    }
}

static void up_failed(struct up *u, const char *why)
{
    struct flow *f = u->f;
    u->no_reuse = 1;
    if (!f) {
        gd__up_close(u);
        return;
    }
    f->up = NULL;
    u->f = NULL;
    gd__up_close(u);
    if (f->st == F_TUNNEL && !f->t) {
        gd__flow_close(f);
        return;
    }
    int gw = strstr(why, "timed out") ? 504 : 502;
    gd__fail_txn(f, gw, "upstream", "%s", why);
}

static void on_connect_timeout(uv_timer_t *tm)
{
    struct up *u = tm->data;
    char why[300];
    snprintf(why, sizeof(why), "connecting to %s timed out", u->host);
    up_failed(u, why);
}

static void on_up_connect(uv_connect_t *c, int status)
{
    struct up *u = c->data;
    if (u->dead)
        return;
    if (status) {
        char why[300];
        snprintf(why, sizeof(why), "cannot connect to %s: %s", u->host, uv_strerror(status));
        up_failed(u, why);
        return;
    }
    u->connected = 1;
    uv_tcp_nodelay(&u->s.u.tcp, 1);
    uv_read_start(&u->s.u.s, gd__alloc_cb, on_up_read);
    u->s.reading = 1;
    if (u->tls) {
        SSL *ssl = gd_tls_client_new(u->px->o.tls, u->host);
        if (!ssl || gd__side_tls_init(&u->s, ssl)) {
            if (ssl && !u->s.ssl)
                SSL_free(ssl);
            up_failed(u, "out of memory");
            return;
        }
        up_pump_tls(u);
        return;
    }
    up_ready(u);
}

/* ---- request flow: head -> policy -> upstream -> body ---- */

void gd__send_req_head(struct flow *f, gd_txn *t)
{
    struct buf b = {0};
    const char *conn = gd__hdrs_get(&t->req, "connection");
    /* origin form, and the Host policy decided on: never one the guest or a hook wrote */
    gd__buf_printf(&b, "%s %s HTTP/1.1\r\nHost: %s\r\n", t->method, t->target, t->auth);
    for (size_t i = 0; i < t->req.n; i++) {
        const char *n = t->req.v[i].name;
        if (is_hop_header(n, conn) || !strcasecmp(n, "expect") ||
            !strcasecmp(n, "content-length") || !strcasecmp(n, "host"))
            continue;
        gd__buf_printf(&b, "%s: %s\r\n", n, t->req.v[i].value);
    }
    if (t->websocket)
        gd__buf_printf(&b, "Connection: Upgrade\r\nUpgrade: websocket\r\n");
    if (t->want_req_body)
        gd__buf_printf(&b, "Content-Length: %zu\r\n", t->reqbody.n);
    else if (t->req_chunked)
        gd__buf_printf(&b, "Transfer-Encoding: chunked\r\n");
    else if (t->req_cl >= 0)
        gd__buf_printf(&b, "Content-Length: %lld\r\n", (long long)t->req_cl);
    gd__buf_add(&b, "\r\n", 2);
    gd__up_send(f->up, b.p, b.n);
    gd__buf_free(&b);
    if (t->want_req_body && t->reqbody.n)
        gd__up_send(f->up, t->reqbody.p, t->reqbody.n);
}

/* The upstream connection is ready for this flow's current request. */
static void up_ready(struct up *u)
{
    struct flow *f = u->f;
    if (!f) {
        gd__up_close(u);
        return;
    }
    uv_timer_stop(&u->timer);
    if (f->kind == GD_FLOW_RAW) {
        f->st = F_TUNNEL;
        gd__emit_event(f, f->t);
        gd__txn_free(f->t);
        f->t = NULL;
        gd__flow_process(f);
        return;
    }
    gd_txn *t = f->t;
    if (t->want_req_body) {
        if (t->req_done) {
            gd__send_req_head(f, t);
            f->st = F_WAIT_RESP;
            return;
        }
        /* body still to read; head goes up when it is complete */
        f->st = F_BODY;
    } else {
        gd__send_req_head(f, t);
        f->st = t->req_done ? F_WAIT_RESP : F_BODY;
    }
    if (t->expect_continue)
        gd__flow_send(f, "HTTP/1.1 100 Continue\r\n\r\n", 25);
    llhttp_resume(&f->p);
    gd__flow_process(f);
}

/* A new upstream: a TCP handle to connect, or (pipe) one for a dialled socket. */
static struct up *up_new(gd_proxy *px, const char *key, const char *host, int tls, int pipe)
{
    struct up *u = calloc(1, sizeof(*u));
    if (!u)
        return NULL;
    u->px = px;
    u->is_up = 1;
    snprintf(u->key, sizeof(u->key), "%s", key);
    snprintf(u->host, sizeof(u->host), "%s", host);
    u->tls = tls;
    if (pipe)
        uv_pipe_init(px->loop, &u->s.u.pipe, 0);
    else
        uv_tcp_init(px->loop, &u->s.u.tcp);
    u->s.u.h.data = u;
    u->s.open = 1;
    uv_timer_init(px->loop, &u->timer);
    u->timer.data = u;
    u->timer_open = 1;
    llhttp_init(&u->p, HTTP_RESPONSE, &gd__resp_settings);
    u->p.data = u;
    up_link(px, u);
    return u;
}

/* A new upstream for the flow's current request, keyed by its origin and t->addr (pipe:
 * for a dialled socket); NULL after failing the request. */
static struct up *up_attach(struct flow *f, int tls, int pipe)
{
    gd_txn *t = f->t;
    char key[320];
    snprintf(key, sizeof(key), "%s://%s:%u@%s", t->scheme, t->host, t->port, t->addr);
    struct up *u = up_new(f->px, key, t->host, tls, pipe);
    if (!u) {
        gd__fail_txn(f, 502, "upstream", "out of memory");
        return NULL;
    }
    if (t->websocket || f->kind == GD_FLOW_RAW)
        u->no_reuse = 1;
    u->f = f;
    f->up = u;
    return u;
}

/* The CONNECT phase refused every address: the guest gets the denial. */
static void connect_refused(struct flow *f)
{
    gd_txn *t = f->t;
    if (!t->denied)
        gd_txn_deny(t, 502, "resolve", "%s has no usable address", t->host);
    if (f->kind == GD_FLOW_RAW) {
        gd__emit_event(f, t);
        gd__txn_free(t);
        f->t = NULL;
        gd__flow_close(f);
        return;
    }
    gd__send_synthetic(f, t, !t->req_done);
    gd__txn_finish(f);
}

/* An upstream from the proxy's dial callback instead of resolve + connect; the CONNECT
 * phase decides first, as for an address. */
static void dial_upstream(struct flow *f)
{
    gd_txn *t = f->t;
    gd_proxy *px = f->px;
    snprintf(t->addr, sizeof(t->addr), "%s", px->o.dial_addr ? px->o.dial_addr : "");
    gd__txn_undeny(t);
    if (gd__run_hooks(px, t, GD_PHASE_CONNECT) != GD_CONTINUE) {
        connect_refused(f);
        return;
    }
    int fd = px->o.dial(px->o.dial_ud, t->host, t->port);
    if (fd < 0) {
        gd__fail_txn(f, 502, "upstream", "cannot reach %s: %s", t->host, strerror(-fd));
        return;
    }
    struct up *u = up_attach(f, 0, 1);
    if (!u) {
        close(fd);
        return;
    }
    int rc = uv_pipe_open(&u->s.u.pipe, fd);
    if (rc) {
        close(fd);
        char why[300];
        snprintf(why, sizeof(why), "cannot reach %s: %s", t->host, uv_strerror(rc));
        up_failed(u, why);
        return;
    }
    u->connected = 1;
    uv_read_start(&u->s.u.s, gd__alloc_cb, on_up_read);
    u->s.reading = 1;
    up_ready(u);
}

/* Address candidates chosen: run CONNECT hooks on each, dial the first that passes. The
 * address dialled is the one checked (DNS rebinding cannot slip in between). */
static void connect_candidates(struct flow *f, struct sockaddr **cand, size_t n)
{
    gd_txn *t = f->t;
    gd_proxy *px = f->px;
    struct sockaddr_storage chosen;
    int found = 0;
    for (size_t i = 0; i < n && !found; i++) {
        gd_addr_str(cand[i], t->addr, sizeof(t->addr));
        gd__txn_undeny(t);
        if (gd__run_hooks(px, t, GD_PHASE_CONNECT) == GD_CONTINUE) {
            memcpy(&chosen, cand[i],
                   cand[i]->sa_family == AF_INET ? sizeof(struct sockaddr_in)
                                                 : sizeof(struct sockaddr_in6));
            found = 1;
        }
    }
    if (!found) {
        connect_refused(f);
        return;
    }
    if (chosen.ss_family == AF_INET)
        ((struct sockaddr_in *)&chosen)->sin_port = htons((uint16_t)t->port);
    else
        ((struct sockaddr_in6 *)&chosen)->sin6_port = htons((uint16_t)t->port);
    struct up *u = up_attach(f, !strcmp(t->scheme, "https"), 0);
    if (!u)
        return;
    u->creq.data = u;
    uv_timer_start(&u->timer, on_connect_timeout, px->o.connect_ms, 0);
    int rc = uv_tcp_connect(&u->creq, &u->s.u.tcp, (struct sockaddr *)&chosen, on_up_connect);
    if (rc) {
        char why[300];
        snprintf(why, sizeof(why), "cannot connect to %s: %s", t->host, uv_strerror(rc));
        up_failed(u, why);
    }
}

static void on_resolved(uv_getaddrinfo_t *r, int status, struct addrinfo *ai)
{
    struct resolve *rs = (struct resolve *)r;
    struct flow *f = rs->f;
    free(rs);
    if (!f) {
        uv_freeaddrinfo(ai);
        return;
    }
    f->res = NULL;
    if (status || !ai) {
        uv_freeaddrinfo(ai);
        gd__fail_txn(f, 502, "resolve", "cannot resolve %s: %s", f->t->host,
                     status ? uv_strerror(status) : "no address");
        return;
    }
    struct sockaddr *cand[16];
    size_t n = 0;
    for (struct addrinfo *a = ai; a && n < 16; a = a->ai_next)
        if (a->ai_family == AF_INET || a->ai_family == AF_INET6)
            cand[n++] = a->ai_addr;
    connect_candidates(f, cand, n);
    uv_freeaddrinfo(ai);
}

static int literal_addr(const char *s, struct sockaddr_storage *ss)
{
    memset(ss, 0, sizeof(*ss));
    struct sockaddr_in *a4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, s, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        return 1;
    }
    if (inet_pton(AF_INET6, s, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        return 1;
    }
    return 0;
}

/* Gets an upstream for the current request: pooled, or resolve + connect. */
void gd__start_request(struct flow *f)
{
    gd_proxy *px = f->px;
    gd_txn *t = f->t;
    f->st = F_WAIT_UP;
    if (!f->up_retry) {
        char prefix[300];
        int pl = snprintf(prefix, sizeof(prefix), "%s://%s:%u@", t->scheme, t->host, t->port);
        for (struct up *u = px->ups; u; u = u->next) {
            if (!u->idle || u->dead || strncmp(u->key, prefix, (size_t)pl))
                continue;
            /* a pooled connection is a dial too: the CONNECT phase (internal ranges,
             * on_connect, plugins, a reloaded policy) decides on its address again */
            snprintf(t->addr, sizeof(t->addr), "%s", u->key + pl);
            if (gd__run_hooks(px, t, GD_PHASE_CONNECT) != GD_CONTINUE) {
                gd__txn_undeny(t);
                continue;
            }
            u->idle = 0;
            px->nidle--;
            u->reused = 1;
            u->got_bytes = 0;
            u->f = f;
            f->up = u;
            up_ready(u);
            return;
        }
    }
    f->up_retry = 0;
    if (px->o.dial) {
        dial_upstream(f);
        return;
    }
    const char *name = t->dial ? t->dial : t->host;
    for (size_t i = 0; i < px->nov; i++)
        if (!strcasecmp(px->ov[i].name, name))
            name = px->ov[i].addr;
    struct sockaddr_storage ss;
    if (literal_addr(name, &ss)) {
        struct sockaddr *c[1] = {(struct sockaddr *)&ss};
        connect_candidates(f, c, 1);
        return;
    }
    struct resolve *rs = calloc(1, sizeof(*rs));
    if (!rs) {
        gd__fail_txn(f, 502, "resolve", "out of memory");
        return;
    }
    rs->f = f;
    f->res = rs;
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    int rc = uv_getaddrinfo(px->loop, &rs->req, on_resolved, name, NULL, &hints);
    if (rc) {
        f->res = NULL;
        free(rs);
        gd__fail_txn(f, 502, "resolve", "cannot resolve %s: %s", t->host, uv_strerror(rc));
    }
}

void gd__resp_settings_init(void)
{
    llhttp_settings_init(&gd__resp_settings);
    gd__resp_settings.on_message_begin = on_resp_begin;
    gd__resp_settings.on_status = on_resp_status;
    gd__resp_settings.on_header_field = on_resp_field;
    gd__resp_settings.on_header_value = on_resp_value;
    gd__resp_settings.on_headers_complete = on_resp_headers_complete;
    gd__resp_settings.on_body = on_resp_body;
    gd__resp_settings.on_message_complete = on_resp_complete;
}
