/* flow.c - the guest side: request parsing, routing, the flow state machine. */
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

static void flow_read_start(struct flow *f);

/* ---- guest-facing output ---- */

void gd__flow_send(struct flow *f, const void *p, size_t n)
{
    gd__side_write(&f->g, p, n, f);
}

/* Sends a complete synthetic response for the current transaction. */
void gd__send_synthetic(struct flow *f, gd_txn *t, int close_after)
{
    struct buf b = {0};
    const char *ctype = t->denied == 2 ? t->dctype : "text/plain; charset=utf-8";
    struct buf body = {0};
    if (t->denied == 2)
        gd__buf_add(&body, t->dbody.p ? t->dbody.p : "", t->dbody.n);
    else
        gd__buf_printf(&body, "gondolin: %s by %s: %s\n", t->dstatus < 500 ? "denied" : "failed",
                       t->drule ? t->drule : "policy", t->dreason ? t->dreason : "");
    gd__buf_printf(&b, "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n", t->dstatus,
                   gd__reason_phrase(t->dstatus), ctype, body.n);
    if (t->denied == 1 && t->drule)
        gd__buf_printf(&b, "X-Gondolin-Rule: %s\r\n", t->drule);
    for (size_t i = 0; t->denied == 2 && i < t->dhdrs.n; i++)
        gd__buf_printf(&b, "%s: %s\r\n", t->dhdrs.v[i].name, t->dhdrs.v[i].value);
    gd__buf_printf(&b, "Connection: %s\r\n\r\n", close_after ? "close" : "keep-alive");
    if (!t->head_req)
        gd__buf_add(&b, body.p ? body.p : "", body.n);
    t->down_bytes += body.n;
    gd__flow_send(f, b.p, b.n);
    gd__buf_free(&b);
    gd__buf_free(&body);
    t->resp_head_sent = 1;
    t->resp_done = 1;
    t->status = t->dstatus;
    if (close_after)
        t->resp_close = 1;
}

/* An error that is ours (bad request, upstream failure): a synthetic response if the
 * guest has not seen a head yet, else the connection is cut. */
void gd__fail_txn(struct flow *f, int status, const char *rule, const char *fmt, ...)
{
    gd_txn *t = f->t;
    char why[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
    if (!t) {
        gd__flow_close(f);
        return;
    }
    if (t->resp_head_sent || f->kind == GD_FLOW_RAW) {
        /* the guest has a head: only cutting the connection can tell it the response
         * failed. A length or chunked body cut short is an error to any client; a
         * close-delimited one ends in a reset where the socket is TCP (a plain close
         * would read as a complete body) */
        snprintf(t->errwhy, sizeof(t->errwhy), "%s", why);
        t->decision = "error";
        f->abort = t->resp_eof_body;
        gd__emit_event(f, t);
        gd__txn_free(t);
        f->t = NULL;
        gd__flow_close(f);
        return;
    }
    gd_txn_deny(t, status, rule, "%s", why);
    if (status >= 500 || status == 400)
        t->decision = "error";
    gd__send_synthetic(f, t, 1);
    gd__txn_finish(f);
}

/* ---- flow lifecycle ---- */

static void flow_free(struct flow *f)
{
    gd_proxy *px = f->px;
    if (f->prev)
        f->prev->next = f->next;
    else if (px->flows == f)
        px->flows = f->next;
    if (f->next)
        f->next->prev = f->prev;
    px->nflows--;
    gd__side_tls_free(&f->g);
    gd__buf_free(&f->pend);
    free(f->name);
    free(f->dst_addr);
    free(f->raw_host);
    free(f);
    gd__maybe_reap(px);
}

static void on_flow_closed(uv_handle_t *h)
{
    struct flow *f = h->data;
    f->g.open = 0;
    if (!f->timer_open)
        flow_free(f);
}

static void on_flow_timer_closed(uv_handle_t *h)
{
    struct flow *f = h->data;
    f->timer_open = 0;
    if (!f->g.open)
        flow_free(f);
}

void gd__flow_close(struct flow *f)
{
    if (f->st == F_CLOSING)
        return;
    f->st = F_CLOSING;
    if (f->t) {
        if (!f->t->resp_done && !f->t->denied && f->t->method[0]) {
            f->t->decision = "error";
            if (!f->t->errwhy[0])
                snprintf(f->t->errwhy, sizeof(f->t->errwhy), "connection closed");
            gd__emit_event(f, f->t);
        }
        gd__txn_free(f->t);
        f->t = NULL;
    }
    if (f->res)
        f->res->f = NULL;
    f->res = NULL;
    if (f->up) {
        struct up *u = f->up;
        f->up = NULL;
        gd__up_close(u);
    }
    if (f->timer_open)
        uv_close((uv_handle_t *)&f->timer, on_flow_timer_closed);
    if (f->g.open && f->abort && f->g.u.h.type == UV_TCP)
        uv_tcp_close_reset(&f->g.u.tcp, on_flow_closed);
    else if (f->g.open)
        uv_close(&f->g.u.h, on_flow_closed);
    else if (!f->timer_open)
        flow_free(f);
}

static void on_shutdown(uv_shutdown_t *r, int status)
{
    (void)status;
    struct flow *f = r->data;
    free(r);
    gd__flow_close(f);
}

/* Closes after everything queued to the guest has been written. */
void gd__flow_close_after_flush(struct flow *f)
{
    if (f->shutting || f->st == F_CLOSING)
        return;
    f->shutting = 1;
    if (f->g.ssl) {
        SSL_shutdown(f->g.ssl);
        gd__side_flush_tls(&f->g, f);
    }
    if (f->g.reading) {
        uv_read_stop(&f->g.u.s);
        f->g.reading = 0;
    }
    uv_shutdown_t *r = malloc(sizeof(*r));
    if (!r || uv_shutdown(r, &f->g.u.s, on_shutdown)) {
        free(r);
        gd__flow_close(f);
        return;
    }
    r->data = f;
}

/* A transaction ended (response complete or synthesized). Audit, then either read the
 * next request or close. */
void gd__txn_finish(struct flow *f)
{
    gd_txn *t = f->t;
    if (!t)
        return;
    /* an upgrade that was refused or answered without 101 leaves the request stream at
     * an upgrade boundary: what follows is not HTTP we can trust, so the flow ends */
    int keep = t->keepalive && !t->resp_close && t->req_done && !t->websocket && f->st != F_TUNNEL;
    gd__emit_event(f, t);
    gd__txn_free(t);
    f->t = NULL;
    if (f->up) {
        struct up *u = f->up;
        gd__up_release(u, keep && llhttp_get_errno(&u->p) == HPE_PAUSED);
    }
    if (!keep) {
        gd__flow_close_after_flush(f);
        return;
    }
    f->st = F_HEAD;
    llhttp_resume(&f->p);
    gd__flow_process(f);
}

/* ---- request parser callbacks ---- */

static int req_limit(struct flow *f, size_t add)
{
    gd_txn *t = f->t;
    t->head_bytes += add;
    if (t->head_bytes > f->px->o.max_header_bytes) {
        f->err_status = 431;
        return -1;
    }
    return 0;
}

static int on_req_begin(llhttp_t *p)
{
    struct flow *f = p->data;
    if (!f->t && !(f->t = gd__txn_new(f)))
        return -1;
    return 0;
}

static int on_req_url(llhttp_t *p, const char *at, size_t n)
{
    struct flow *f = p->data;
    if (req_limit(f, n))
        return -1;
    return gd__buf_add(&f->t->url, at, n) ? -1 : 0;
}

/* Trailers (fields after a chunked body) count toward the head limit and are dropped:
 * they arrive after every header check ran, so they never become headers. */
static int on_req_field(llhttp_t *p, const char *at, size_t n)
{
    struct flow *f = p->data;
    if (req_limit(f, n))
        return -1;
    if (f->t->req_trailers)
        return 0;
    if (gd__on_hdr_field(p, at, n, &f->t->req, f->t, f->px->o.max_headers)) {
        f->err_status = 431;
        return -1;
    }
    return 0;
}

static int on_req_value(llhttp_t *p, const char *at, size_t n)
{
    struct flow *f = p->data;
    if (req_limit(f, n))
        return -1;
    if (f->t->req_trailers)
        return 0;
    return gd__on_hdr_value(at, n, &f->t->req, f->t);
}

static int on_req_headers_complete(llhttp_t *p)
{
    struct flow *f = p->data;
    gd_txn *t = f->t;
    snprintf(t->method, sizeof(t->method), "%s", llhttp_method_name(llhttp_get_method(p)));
    t->http10 = llhttp_get_http_major(p) == 1 && llhttp_get_http_minor(p) == 0;
    t->keepalive = llhttp_should_keep_alive(p);
    t->req_chunked = (p->flags & F_CHUNKED) != 0;
    t->req_trailers = 1;
    if (p->flags & F_CONTENT_LENGTH) {
        if (p->content_length > (uint64_t)INT64_MAX) {
            f->err_status = 400;
            f->err_why = "Content-Length out of range";
            return -1;
        }
        if (p->content_length > f->px->o.max_request_body) {
            f->err_status = 413;
            f->err_why = "request body over the proxy's limit";
            return -1;
        }
        t->req_cl = (int64_t)p->content_length;
    } else {
        t->req_cl = -1;
    }
    t->req_has_body = t->req_chunked || t->req_cl > 0;
    t->head_req = !strcmp(t->method, "HEAD");
    t->websocket = p->upgrade != 0;
    /* A request with a body (or an upgrade) pauses here, before its body; one without
     * pauses at its end (on_req_complete), so it is whole when policy decides and a
     * refusal can keep the connection. */
    return t->req_has_body || t->websocket ? HPE_PAUSED : 0;
}

static int on_req_body(llhttp_t *p, const char *at, size_t n)
{
    struct flow *f = p->data;
    gd_txn *t = f->t;
    t->up_bytes += n;
    f->progress = 1;
    if (t->up_bytes > f->px->o.max_request_body) {
        f->err_status = 413;
        f->err_why = "request body over the proxy's limit";
        return -1;
    }
    if (t->denied)
        return 0; /* discarding the body of a refused request */
    if (t->want_req_body) {
        int rc = gd__txn_buffer(t, &t->reqbody, at, n);
        if (rc) {
            f->err_status = rc == -E2BIG ? 413 : rc == -ENOBUFS ? 503 : 500;
            f->err_why = rc == -E2BIG     ? "request body over the buffering limit"
                         : rc == -ENOBUFS ? "the proxy's buffering budget is spent"
                                          : "out of memory";
            return -1;
        }
        return 0;
    }
    if (!f->up)
        return -1;
    if (t->req_chunked) {
        char hx[24];
        int k = snprintf(hx, sizeof(hx), "%zx\r\n", n);
        gd__up_send(f->up, hx, (size_t)k);
        gd__up_send(f->up, at, n);
        gd__up_send(f->up, "\r\n", 2);
    } else {
        gd__up_send(f->up, at, n);
    }
    return 0;
}

static int on_req_complete(llhttp_t *p)
{
    struct flow *f = p->data;
    if (f->t)
        f->t->req_done = 1;
    return HPE_PAUSED;
}

/* ---- the request head: validate, route, decide ---- */

/* The authority as the Host header carries it: [v6] bracketed, port only if not the
 * scheme's default. Computed once per request (t->auth). */
static void set_authority(gd_txn *t)
{
    int dflt = (t->port == 443 && !strcmp(t->scheme, "https")) ||
               (t->port == 80 && !strcmp(t->scheme, "http"));
    int v6 = strchr(t->host, ':') != NULL;
    size_t hl = strlen(t->host), n = 0; /* host <= 253 bytes: fits auth[] */
    if (v6)
        t->auth[n++] = '[';
    memcpy(t->auth + n, t->host, hl);
    n += hl;
    if (v6)
        t->auth[n++] = ']';
    if (!dflt) {
        char digits[8];
        int k = 0;
        for (unsigned p = t->port; p; p /= 10)
            digits[k++] = (char)('0' + p % 10);
        t->auth[n++] = ':';
        while (k)
            t->auth[n++] = digits[--k];
    }
    t->auth[n] = 0;
}

/* Every header name a token, one Host at most (RFC 9112 §3.2, §5.1). */
static const char *check_headers(const gd_txn *t)
{
    size_t hosts = 0;
    for (size_t i = 0; i < t->req.n; i++) {
        if (!gd__token(t->req.v[i].name))
            return "a header name is not a token";
        if (!strcasecmp(t->req.v[i].name, "host"))
            hosts++;
    }
    return hosts > 1 ? "more than one Host header" : NULL;
}

/* Routes the request: host and port from an absolute-form target or the Host header,
 * a canonical target, and the Host header rewritten to the decided authority. NULL or
 * why it is a bad request. */
static const char *route(struct flow *f, gd_txn *t)
{
    unsigned dflt = f->g.ssl ? 443 : 80;
    const char *url = t->url.p ? t->url.p : "";
    const char *hosthdr = gd__hdrs_get(&t->req, "host");
    char *path = NULL;
    const char *origin = NULL;
    if (!strncasecmp(url, "http://", 7) || !strncasecmp(url, "https://", 8) ||
        !strncasecmp(url, "ws://", 5) || !strncasecmp(url, "wss://", 6)) {
        /* absolute form: the URL's authority decides, whatever Host says (RFC 9112
         * §3.2.2); origin form goes upstream */
        const char *a = strstr(url, "//") + 2;
        size_t al = strcspn(a, "/?#");
        if (gd__split_hostport(a, al, &t->host, &t->port, dflt))
            return "bad authority in request target";
        const char *rest = a + al;
        if (asprintf(&path, "%s%s", *rest == '/' ? "" : "/", *rest == '#' ? "" : rest) < 0)
            return "out of memory";
    } else if (url[0] == '/' || (!strcmp(url, "*") && !strcmp(t->method, "OPTIONS"))) {
        if (!hosthdr)
            return "no Host header";
        if (gd__split_hostport(hosthdr, strlen(hosthdr), &t->host, &t->port, dflt))
            return "bad Host header";
        origin = url;
    } else {
        return "unsupported request target";
    }
    int rc = gd_http_normalize_target(origin ? origin : path, &t->target);
    free(path);
    if (rc)
        return rc == -ENOMEM ? "out of memory" : "bad request target";
    set_authority(t);
    /* hooks see the Host that will be sent: the one Host header gets the decided value */
    char *hv = strdup(t->auth);
    if (!hv)
        return "out of memory";
    for (size_t i = 0; i < t->req.n; i++)
        if (!strcasecmp(t->req.v[i].name, "host")) {
            free(t->req.v[i].value);
            t->req.v[i].value = hv;
            return NULL;
        }
    char *hn = strdup("Host");
    if (!hn || gd__hdrs_push(&t->req, hn, hv)) {
        free(hn);
        free(hv);
        return "out of memory";
    }
    return NULL;
}

/* The request head is parsed: validate, route, run policy, then get an upstream. */
static void on_request_head(struct flow *f)
{
    gd_txn *t = f->t;
    int tls = f->g.ssl != NULL;
    snprintf(t->scheme, sizeof(t->scheme), "%s", tls ? "https" : "http");
    if (!strcmp(t->method, "CONNECT")) {
        gd__fail_txn(f, 405, "connect", "CONNECT tunnels are not allowed; requests go direct");
        return;
    }
    const char *bad = check_headers(t);
    if (!bad)
        bad = route(f, t);
    if (bad) {
        gd__fail_txn(f, strstr(bad, "memory") ? 500 : 400, "bad-request", "%s", bad);
        return;
    }
    if (tls) {
        const char *sni = gd_tls_server_sni(f->g.ssl);
        if (sni && strcasecmp(sni, t->host)) {
            gd_txn_deny(t, 403, "host-sni", "Host %s does not match TLS server name %s", t->host,
                        sni);
            gd__send_synthetic(f, t, !t->req_done);
            gd__txn_finish(f);
            return;
        }
    }
    const char *expect = gd__hdrs_get(&t->req, "expect");
    if (expect) {
        if (strcasecmp(expect, "100-continue")) {
            gd__fail_txn(f, 417, "bad-request", "unsupported Expect: %s", expect);
            return;
        }
        t->expect_continue = 1;
    }
    if (t->websocket) {
        const char *up = gd__hdrs_get(&t->req, "upgrade");
        if (!up || strcasecmp(up, "websocket") || strcmp(t->method, "GET")) {
            gd__fail_txn(f, 501, "bad-request", "only WebSocket upgrades on GET are supported");
            return;
        }
    }
    if (gd__run_hooks(f->px, t, GD_PHASE_REQUEST_HEAD) != GD_CONTINUE) {
        gd__send_synthetic(f, t, !t->req_done || t->websocket);
        gd__txn_finish(f);
        return;
    }
    if (t->websocket)
        t->want_req_body = 0; /* an upgrade has no body; its frames are tunneled */
    if (t->want_req_body && t->req_cl > (int64_t)f->px->o.max_body_buffer) {
        gd__fail_txn(f, 413, "body-limit", "request body of %lld bytes is over the %zu-byte limit",
                     (long long)t->req_cl, f->px->o.max_body_buffer);
        return;
    }
    if (t->want_req_body && gd__budget_spent(f->px)) {
        gd__fail_txn(f, 503, "buffer-budget",
                     "the proxy's body-buffering budget (%zu bytes) is spent; try again",
                     f->px->o.max_buffer_total);
        return;
    }
    gd__start_request(f);
}

/* The whole request body was read: hooks on a buffered body, then the end of it. */
static void on_request_done(struct flow *f)
{
    gd_txn *t = f->t;
    if (t->websocket) {
        f->st = F_WAIT_RESP;
        return;
    }
    if (t->want_req_body && !t->denied) {
        if (gd__run_hooks(f->px, t, GD_PHASE_REQUEST_BODY) != GD_CONTINUE) {
            gd__send_synthetic(f, t, 0);
            gd__txn_finish(f);
            return;
        }
        gd__send_req_head(f, t);
    } else if (t->req_chunked && !t->denied && f->up) {
        gd__up_send(f->up, "0\r\n\r\n", 5);
    }
    f->st = F_WAIT_RESP;
}

static void on_parse_error(struct flow *f, llhttp_errno_t e)
{
    int st = f->err_status ? f->err_status : 400;
    const char *why = f->err_why                       ? f->err_why
                      : st == 431                      ? "request header fields too large"
                      : e == HPE_INVALID_HEADER_TOKEN  ? "a header name is not a token"
                      : llhttp_get_error_reason(&f->p) ? llhttp_get_error_reason(&f->p)
                                                       : llhttp_errno_name(e);
    if (f->t && f->t->resp_head_sent) {
        gd__flow_close(f);
        return;
    }
    if (!f->t)
        f->t = gd__txn_new(f);
    if (f->t && !f->t->method[0])
        snprintf(f->t->method, sizeof(f->t->method), "%s",
                 llhttp_method_name(llhttp_get_method(&f->p)));
    gd__fail_txn(f, st,
                 st == 431   ? "header-limit"
                 : st == 413 ? "body-limit"
                 : st == 503 ? "buffer-budget"
                 : st == 500 ? "internal"
                             : "bad-request",
                 "%s", why);
}

/* ---- the flow state machine: one step per state ---- */

static size_t pending(const struct flow *f)
{
    return f->pend.n - f->pend_off;
}

/* F_HEAD / F_BODY: feeds pending bytes to the request parser. 1 = state may have moved
 * on (run again), 0 = needs more input or must wait. */
static int step_parse(struct flow *f)
{
    size_t avail = pending(f);
    if (!avail)
        return 0;
    const char *p = f->pend.p + f->pend_off;
    llhttp_errno_t e = llhttp_execute(&f->p, p, avail);
    const char *pos = llhttp_get_error_pos(&f->p);
    f->pend_off += (e == HPE_OK || !pos) ? avail : (size_t)(pos - p);
    if (f->st == F_CLOSING)
        return 0;
    if (e == HPE_PAUSED || e == HPE_PAUSED_UPGRADE) {
        if (!f->t) { /* paused with no request: nothing the state machine expects */
            gd__flow_close(f);
            return 0;
        }
        if (f->st == F_HEAD)
            on_request_head(f);
        else if (f->st == F_BODY && f->t->req_done)
            on_request_done(f);
        return 1;
    }
    if (e != HPE_OK) {
        on_parse_error(f, e);
        return 0;
    }
    return 0;
}

/* F_TUNNEL: guest bytes go up as they are. */
static void step_tunnel(struct flow *f)
{
    size_t avail = pending(f);
    if (avail && f->up) {
        gd__up_send(f->up, f->pend.p + f->pend_off, avail);
        f->pend_off += avail;
    }
}

/* The guest closed its side. */
static void on_guest_eof(struct flow *f)
{
    switch (f->st) {
    case F_TUNNEL:
        gd__flow_close_after_flush(f); /* half-close toward the upstream: let it finish */
        break;
    case F_HEAD:
        if (!f->t)
            gd__flow_close_after_flush(f);
        else
            gd__flow_close(f); /* a partial head */
        break;
    case F_BODY:
        /* mid-body: the request can never complete; free both sides now */
        if (f->t)
            snprintf(f->t->errwhy, sizeof(f->t->errwhy), "guest closed mid-body");
        gd__flow_close(f);
        break;
    default:
        break; /* the request is whole: the response finishes, then the flow closes */
    }
}

/* More plaintext from the TLS buffers (1 = got some); 0 = the socket must be read, or
 * the guest's EOF was handled. */
static int pull(struct flow *f)
{
    f->pend.n = f->pend_off = 0;
    if (f->g.ssl && f->g.hs_done) {
        char tmp[16384];
        int r = SSL_read(f->g.ssl, tmp, sizeof(tmp));
        if (r > 0) {
            if (gd__buf_add(&f->pend, tmp, (size_t)r)) {
                gd__flow_close(f);
                return 0;
            }
            return 1;
        }
        int e = SSL_get_error(f->g.ssl, r);
        gd__side_flush_tls(&f->g, f);
        if (e == SSL_ERROR_ZERO_RETURN)
            f->g.eof = 1;
        else if (e != SSL_ERROR_WANT_READ) {
            ERR_clear_error();
            gd__flow_close(f);
            return 0;
        }
    }
    if (f->g.eof)
        on_guest_eof(f);
    return 0;
}

enum { T_NONE, T_IDLE, T_HEAD, T_BODY };

static void on_flow_timer(uv_timer_t *tm)
{
    struct flow *f = tm->data;
    int kind = f->tkind;
    f->tkind = T_NONE;
    if (f->st == F_CLOSING || f->shutting)
        return;
    if (kind == T_IDLE) {
        gd__flow_close_after_flush(f);
    } else if (kind == T_HEAD) {
        if (!f->t)
            f->t = gd__txn_new(f);
        gd__fail_txn(f, 408, "timeout", "request head not complete within %u ms", f->px->o.head_ms);
    } else if (kind == T_BODY) {
        gd__fail_txn(f, 408, "timeout", "request body made no progress for %u ms",
                     f->px->o.body_ms);
    }
}

/* Arms the deadline the state calls for: keep-alive idle before a request, the head
 * deadline from its first byte (never extended by a trickle), body progress after. */
static void arm_timer(struct flow *f)
{
    if (!f->timer_open)
        return;
    int kind = T_NONE;
    unsigned ms = 0;
    if (f->st == F_HEAD && f->kind != GD_FLOW_RAW) {
        kind = f->t ? T_HEAD : T_IDLE;
        ms = f->t ? f->px->o.head_ms : f->px->o.keepalive_ms;
    } else if (f->st == F_BODY) {
        kind = T_BODY;
        ms = f->px->o.body_ms;
    }
    if (kind == T_NONE) {
        if (f->tkind != T_NONE)
            uv_timer_stop(&f->timer);
        f->tkind = T_NONE;
    } else if (kind != f->tkind || (kind == T_BODY && f->progress)) {
        uv_timer_start(&f->timer, on_flow_timer, ms, 0);
        f->tkind = kind;
    }
    f->progress = 0;
}

/* Feeds pending guest plaintext to whichever consumer the state calls for. */
void gd__flow_process(struct flow *f)
{
    if (f->in_pump || f->st == F_CLOSING)
        return;
    f->in_pump = 1;
    while (f->st != F_CLOSING && !f->shutting) {
        if (f->st == F_TUNNEL) {
            step_tunnel(f);
            if (f->up && gd__side_queued(&f->up->s) > HIGH_WATER)
                break;
        } else if (f->st == F_HEAD || f->st == F_BODY) {
            if (step_parse(f))
                continue;
            if (f->st == F_CLOSING || f->shutting)
                break;
            if (f->st == F_BODY && f->up && gd__side_queued(&f->up->s) > HIGH_WATER)
                break;
        }
        if (pending(f))
            break; /* waiting (upstream, response): keep the bytes, stop reading */
        if (!pull(f))
            break;
    }
    if (f->st != F_CLOSING) {
        int want_read = !pending(f) && !f->g.eof && !f->shutting &&
                        (f->st == F_HEAD || f->st == F_BODY || f->st == F_TUNNEL) &&
                        !(f->up && gd__side_queued(&f->up->s) > HIGH_WATER);
        if (want_read && !f->g.reading && f->g.open) {
            f->g.reading = 1;
            flow_read_start(f);
        } else if (!want_read && f->g.reading) {
            uv_read_stop(&f->g.u.s);
            f->g.reading = 0;
        }
        if (!f->shutting)
            arm_timer(f);
    }
    f->in_pump = 0;
}

/* ---- guest input ---- */

static int sniff_http(const char *p, size_t n)
{
    static const char *const m[] = {"GET ",  "POST ",    "PUT ",   "PATCH ",   "DELETE ",
                                    "HEAD ", "OPTIONS ", "TRACE ", "CONNECT ", NULL};
    for (const char *const *x = m; *x; x++) {
        size_t l = strlen(*x);
        size_t k = n < l ? n : l;
        if (!strncmp(p, *x, k))
            return n >= l ? 1 : 0; /* 1 yes, 0 need more */
    }
    return -1;
}

static void on_flow_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *b)
{
    struct flow *f = s->data;
    if (nread < 0) {
        free(b->base);
        f->g.eof = 1;
        if (f->g.reading) {
            uv_read_stop(s);
            f->g.reading = 0;
        }
        if (nread != UV_EOF)
            gd__flow_close(f);
        else
            gd__flow_process(f);
        return;
    }
    if (!nread) {
        free(b->base);
        return;
    }
    const char *p = b->base;
    size_t n = (size_t)nread;
    if (!f->sniffed && f->kind != GD_FLOW_RAW) {
        int is_tls = (unsigned char)p[0] == 0x16;
        if (f->kind == GD_FLOW_SNIFF)
            f->kind = is_tls ? GD_FLOW_TLS : GD_FLOW_HTTP;
        if (f->kind == GD_FLOW_TLS) {
            SSL *ssl = is_tls && f->px->o.tls
                           ? gd_tls_server_new(f->px->o.tls, f->name ? f->name : f->dst_addr)
                           : NULL;
            if (!ssl || gd__side_tls_init(&f->g, ssl)) {
                if (ssl && !f->g.ssl)
                    SSL_free(ssl);
                free(b->base);
                gd__flow_close(f); /* not TLS on a TLS port */
                return;
            }
        } else {
            gd__buf_add(&f->pend, p, n);
            int h = sniff_http(f->pend.p, f->pend.n);
            if (h < 0) {
                free(b->base);
                gd__flow_close(f); /* not HTTP on an HTTP port */
                return;
            }
            free(b->base);
            if (h == 0)
                return;
            f->sniffed = 1;
            gd__flow_process(f);
            return;
        }
        f->sniffed = 1;
    }
    if (f->g.ssl) {
        BIO_write(f->g.rb, p, (int)n);
        free(b->base);
        if (!f->g.hs_done) {
            int r = SSL_do_handshake(f->g.ssl);
            gd__side_flush_tls(&f->g, f);
            if (r != 1) {
                int e = SSL_get_error(f->g.ssl, r);
                if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) {
                    ERR_clear_error();
                    gd__flow_close_after_flush(f);
                }
                return;
            }
            f->g.hs_done = 1;
        }
        gd__flow_process(f);
        return;
    }
    gd__buf_add(&f->pend, p, n);
    free(b->base);
    gd__flow_process(f);
}

static void flow_read_start(struct flow *f)
{
    uv_read_start(&f->g.u.s, gd__alloc_cb, on_flow_read);
}

/* ---- entry ---- */

int gd_proxy_serve(gd_proxy *px, int fd, const struct gd_flow_info *info)
{
    if (px->closing || px->nflows >= px->o.max_flows) {
        close(fd);
        return -EBUSY;
    }
    struct flow *f = calloc(1, sizeof(*f));
    if (!f) {
        close(fd);
        return -ENOMEM;
    }
    f->px = px;
    f->kind = info->kind;
    f->name = info->name ? strdup(info->name) : NULL;
    f->dst_addr = info->dst_addr ? strdup(info->dst_addr) : NULL;
    f->raw_host = info->raw_host ? strdup(info->raw_host) : NULL;
    f->dst_port = info->dst_port;
    f->raw_port = info->raw_port;
    int dom = 0;
    socklen_t dl = sizeof(dom);
    getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &dom, &dl);
    int rc;
    if (dom == AF_UNIX) {
        uv_pipe_init(px->loop, &f->g.u.pipe, 0);
        rc = uv_pipe_open(&f->g.u.pipe, fd);
    } else {
        uv_tcp_init(px->loop, &f->g.u.tcp);
        rc = uv_tcp_open(&f->g.u.tcp, fd);
        if (!rc)
            uv_tcp_nodelay(&f->g.u.tcp, 1);
    }
    f->g.u.h.data = f;
    f->g.open = 1;
    uv_timer_init(px->loop, &f->timer);
    f->timer.data = f;
    f->timer_open = 1;
    f->next = px->flows;
    if (px->flows)
        px->flows->prev = f;
    px->flows = f;
    px->nflows++;
    if (rc) {
        close(fd);
        gd__flow_close(f);
        return rc;
    }
    llhttp_init(&f->p, HTTP_REQUEST, &gd__req_settings);
    f->p.data = f;
    f->st = F_HEAD;
    if (f->kind == GD_FLOW_RAW) {
        gd_txn *t = f->t = gd__txn_new(f);
        if (!t || !f->raw_host) {
            gd__flow_close(f);
            return -ENOMEM;
        }
        snprintf(t->method, sizeof(t->method), "CONNECT");
        snprintf(t->scheme, sizeof(t->scheme), "tcp");
        /* policy sees the name the guest used; the map decides where it goes */
        t->host = strdup(f->name ? f->name : f->raw_host);
        t->dial = strdup(f->raw_host);
        t->port = f->raw_port;
        t->target = strdup("");
        f->sniffed = 1;
        if (!t->host || !t->target) {
            gd__flow_close(f);
            return -ENOMEM;
        }
        if (gd__run_hooks(px, t, GD_PHASE_REQUEST_HEAD) != GD_CONTINUE) {
            gd__emit_event(f, t);
            gd__txn_free(t);
            f->t = NULL;
            gd__flow_close(f);
            return 0;
        }
        gd__start_request(f);
        return 0;
    }
    f->g.reading = 1;
    flow_read_start(f);
    arm_timer(f);
    return 0;
}

void gd__req_settings_init(void)
{
    llhttp_settings_init(&gd__req_settings);
    gd__req_settings.on_message_begin = on_req_begin;
    gd__req_settings.on_url = on_req_url;
    gd__req_settings.on_header_field = on_req_field;
    gd__req_settings.on_header_value = on_req_value;
    gd__req_settings.on_headers_complete = on_req_headers_complete;
    gd__req_settings.on_body = on_req_body;
    gd__req_settings.on_message_complete = on_req_complete;
}
