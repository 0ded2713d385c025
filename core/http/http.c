/*
 * http.c - the egress proxy engine (see http.h).
 *
 * Shape: a flow is one guest connection; an up is one upstream connection. Both are a
 * `struct side` (a libuv stream, optionally wrapped in TLS through memory BIOs), so the
 * byte plumbing is written once. Requests are parsed one at a time: the request parser
 * pauses after the head (policy, resolve, connect) and after each message (the
 * response must finish first), and while it is paused the guest is not read. That is
 * the only buffering of guest bytes, so it is bounded by one read.
 */
#define _GNU_SOURCE
#include "http/http.h"

#include "dns/addr.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <llhttp.h>
#include <netdb.h>
#include <openssl/err.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#define READ_CHUNK 65536
#define HIGH_WATER (1u << 20) /* peer write queue at which we stop reading this side */
#define MAX_HOOKS 64

/* ---- small pieces ---- */

struct buf {
    char *p;
    size_t n, cap;
};

static int buf_add(struct buf *b, const void *p, size_t n)
{
    if (b->n + n + 1 > b->cap) {
        size_t c = b->cap ? b->cap : 256;
        while (c < b->n + n + 1)
            c *= 2;
        char *q = realloc(b->p, c);
        if (!q)
            return -ENOMEM;
        b->p = q;
        b->cap = c;
    }
    memcpy(b->p + b->n, p, n);
    b->n += n;
    b->p[b->n] = 0;
    return 0;
}

static int buf_printf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int buf_printf(struct buf *b, const char *fmt, ...)
{
    char tmp[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n < 0)
        return -EINVAL;
    if ((size_t)n < sizeof(tmp))
        return buf_add(b, tmp, (size_t)n);
    char *big = malloc((size_t)n + 1);
    if (!big)
        return -ENOMEM;
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    int rc = buf_add(b, big, (size_t)n);
    free(big);
    return rc;
}

static void buf_free(struct buf *b)
{
    free(b->p);
    memset(b, 0, sizeof(*b));
}

static uint64_t now_ns(void)
{
    return uv_hrtime();
}

struct hdr {
    char *name, *value;
};

struct hdrs {
    struct hdr *v;
    size_t n, cap;
};

static int hdrs_push(struct hdrs *h, char *name, char *value)
{
    if (h->n == h->cap) {
        size_t c = h->cap ? h->cap * 2 : 16;
        struct hdr *v = realloc(h->v, c * sizeof(*v));
        if (!v)
            return -ENOMEM;
        h->v = v;
        h->cap = c;
    }
    h->v[h->n].name = name;
    h->v[h->n].value = value;
    h->n++;
    return 0;
}

static void hdrs_del(struct hdrs *h, size_t i)
{
    free(h->v[i].name);
    free(h->v[i].value);
    memmove(h->v + i, h->v + i + 1, (h->n - i - 1) * sizeof(*h->v));
    h->n--;
}

static void hdrs_free(struct hdrs *h)
{
    for (size_t i = 0; i < h->n; i++) {
        free(h->v[i].name);
        free(h->v[i].value);
    }
    free(h->v);
    memset(h, 0, sizeof(*h));
}

static const char *hdrs_get(const struct hdrs *h, const char *name)
{
    for (size_t i = 0; i < h->n; i++)
        if (!strcasecmp(h->v[i].name, name))
            return h->v[i].value;
    return NULL;
}

/* Does a comma-separated header value contain token (case-insensitive)? */
static int has_token(const char *v, const char *tok)
{
    size_t tl = strlen(tok);
    while (v && *v) {
        while (*v == ' ' || *v == '\t' || *v == ',')
            v++;
        const char *e = v;
        while (*e && *e != ',')
            e++;
        const char *te = e;
        while (te > v && (te[-1] == ' ' || te[-1] == '\t'))
            te--;
        if ((size_t)(te - v) == tl && !strncasecmp(v, tok, tl))
            return 1;
        v = e;
    }
    return 0;
}

/* Our own table: llhttp_status_name() aborts on codes it does not know. */
static const char *reason_phrase(int s)
{
    switch (s) {
    case 100:
        return "Continue";
    case 101:
        return "Switching Protocols";
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 204:
        return "No Content";
    case 206:
        return "Partial Content";
    case 301:
        return "Moved Permanently";
    case 302:
        return "Found";
    case 304:
        return "Not Modified";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 409:
        return "Conflict";
    case 429:
        return "Too Many Requests";
    case 451:
        return "Unavailable For Legal Reasons";
    case 413:
        return "Content Too Large";
    case 417:
        return "Expectation Failed";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    default:
        return "Status";
    }
}

/* ---- proxy, flows, upstreams ---- */

struct hook {
    char *name;
    unsigned phases;
    gd_hook_fn fn;
    void *ud;
};

struct override {
    char *name;
    char *addr;
};

struct gd_proxy {
    uv_loop_t *loop;
    struct gd_proxy_opts o;
    struct hook hooks[MAX_HOOKS];
    size_t nhooks;
    struct override *ov;
    size_t nov;
    struct flow *flows; /* doubly linked */
    struct up *ups;     /* every upstream connection (active and idle) */
    size_t nflows;
    int closing;
    void (*close_cb)(gd_proxy *, void *);
    void *close_ud;
    uv_idle_t reaper; /* fires close_cb once everything is gone */
    int reaper_on;
};

struct side {
    union {
        uv_handle_t h;
        uv_stream_t s;
        uv_pipe_t pipe;
        uv_tcp_t tcp;
    } u;
    SSL *ssl;
    BIO *rb, *wb;
    int hs_done;
    int open;    /* handle initialized and not yet closed */
    int reading; /* read started */
    int eof;
};

enum fstate { F_HEAD, F_WAIT_UP, F_BODY, F_WAIT_RESP, F_TUNNEL, F_CLOSING };

struct gd_txn {
    struct flow *f;
    char method[24];
    char scheme[8];
    char *host;
    char *dial; /* the host actually dialled when it differs (mapped raw TCP) */
    unsigned port;
    struct buf url; /* as the guest sent it, then the origin-form target */
    char *target;
    char addr[64];
    struct hdrs req, resp;
    int status;
    struct buf reason;
    /* request framing */
    int64_t req_cl; /* -1 none */
    int req_chunked, head_req, websocket, expect_continue, http10, keepalive;
    int req_done;     /* the whole request was read from the guest */
    int req_has_body; /* framing says a body follows */
    /* response framing toward the guest */
    int resp_chunked_out, resp_head_sent, resp_done, resp_close;
    /* decisions */
    int denied; /* a deny/respond was produced */
    int dstatus;
    char *drule, *dreason, *dctype;
    struct buf dbody;
    struct hdrs dhdrs; /* extra headers of a synthetic response */
    char *allow_rule;
    int want_req_body, want_resp_body;
    struct buf reqbody, respbody;
    uint64_t t0, up_bytes, down_bytes;
    size_t head_bytes;
    int last_was_value;
    const char *decision; /* audit: "allow", "deny", "respond", "error" */
    char errwhy[256];
    /* the policy layer's per-transaction slot (gd_txn_set_data) */
    void *data;
    void (*data_free)(void *);
    const char *tag;       /* borrowed from data's owner; audited */
    const char *hook_name; /* the hook running now: default rule of a denial */
};

struct flow {
    gd_proxy *px;
    int is_up; /* 0: lets a write callback tell flows from upstreams */
    struct flow *prev, *next;
    struct side g;
    enum gd_flow_kind kind;
    char *name, *dst_addr, *raw_host;
    unsigned dst_port, raw_port;
    int sniffed;
    llhttp_t p;
    enum fstate st;
    gd_txn *t;
    struct buf pend; /* guest plaintext not yet given to the parser */
    size_t pend_off;
    struct up *up;
    struct resolve *res;
    int err_status; /* set by a parser callback that refused input */
    int shutting;
    int in_pump; /* re-entrancy guard for flow_process */
    int kicked;  /* the empty parser run for the current request happened */
    int up_retry;
};

struct up {
    gd_proxy *px;
    int is_up; /* 1 */
    struct up *prev, *next;
    struct side s;
    uv_connect_t creq;
    uv_timer_t timer;
    int timer_open;
    char key[320];
    char host[256];
    int tls;
    struct flow *f; /* owner, or NULL when idle in the pool */
    llhttp_t p;
    int idle, dead, reused, got_bytes, connected, no_reuse;
};

struct resolve {
    uv_getaddrinfo_t req;
    struct flow *f; /* NULL once the flow is gone */
};

static llhttp_settings_t req_settings, resp_settings;

static void flow_close(struct flow *f);
static void flow_process(struct flow *f);
static void flow_send(struct flow *f, const void *p, size_t n);
static void up_close(struct up *u);
static void up_send(struct up *u, const void *p, size_t n);
static void txn_finish(struct flow *f);
static void deliver_up_plain(struct up *u, const char *p, size_t n);
static void flow_read_start(struct flow *f);
static void up_throttle(struct up *u);
static void start_request(struct flow *f);
static void maybe_reap(gd_proxy *px);

/* ---- side: stream + optional TLS ---- */

struct wreq {
    uv_write_t w;
    void *owner;
    char data[];
};

static void on_side_write(uv_write_t *w, int status);

static void side_raw_write(struct side *s, const void *p, size_t n, void *owner)
{
    if (!s->open || !n)
        return;
    struct wreq *r = malloc(sizeof(*r) + n);
    if (!r)
        return; /* the peer sees a truncated stream; the flow will fail cleanly */
    memcpy(r->data, p, n);
    r->owner = owner;
    uv_buf_t b = uv_buf_init(r->data, (unsigned)n);
    if (uv_write(&r->w, &s->u.s, &b, 1, on_side_write))
        free(r);
}

static void side_flush_tls(struct side *s, void *owner)
{
    char tmp[16384];
    int n;
    while ((n = BIO_read(s->wb, tmp, sizeof(tmp))) > 0)
        side_raw_write(s, tmp, (size_t)n, owner);
}

static void side_write(struct side *s, const void *p, size_t n, void *owner)
{
    if (!s->open)
        return;
    if (!s->ssl) {
        side_raw_write(s, p, n, owner);
        return;
    }
    while (n) {
        int k = SSL_write(s->ssl, p, (int)(n > 65536 ? 65536 : n));
        if (k <= 0)
            break;
        p = (const char *)p + k;
        n -= (size_t)k;
    }
    side_flush_tls(s, owner);
}

static size_t side_queued(const struct side *s)
{
    return s->open ? uv_stream_get_write_queue_size(&s->u.s) : 0;
}

static int side_tls_init(struct side *s, SSL *ssl)
{
    s->ssl = ssl;
    s->rb = BIO_new(BIO_s_mem());
    s->wb = BIO_new(BIO_s_mem());
    if (!s->rb || !s->wb) {
        BIO_free(s->rb);
        BIO_free(s->wb);
        s->rb = s->wb = NULL;
        return -ENOMEM;
    }
    BIO_set_mem_eof_return(s->rb, -1);
    SSL_set_bio(ssl, s->rb, s->wb); /* the SSL owns both BIOs now */
    return 0;
}

static void side_tls_free(struct side *s)
{
    if (s->ssl)
        SSL_free(s->ssl);
    s->ssl = NULL;
    s->rb = s->wb = NULL;
}

static void alloc_cb(uv_handle_t *h, size_t sz, uv_buf_t *b)
{
    (void)h;
    (void)sz;
    b->base = malloc(READ_CHUNK);
    b->len = b->base ? READ_CHUNK : 0;
}

/* ---- the proxy object ---- */

static void init_settings(void);

int gd_proxy_new(uv_loop_t *loop, const struct gd_proxy_opts *o, gd_proxy **out)
{
    init_settings();
    gd_proxy *px = calloc(1, sizeof(*px));
    if (!px)
        return -ENOMEM;
    px->loop = loop;
    px->o = *o;
    if (!px->o.max_header_bytes)
        px->o.max_header_bytes = 64 * 1024;
    if (!px->o.max_headers)
        px->o.max_headers = 128;
    if (!px->o.max_body_buffer)
        px->o.max_body_buffer = 16u << 20;
    if (!px->o.idle_ms)
        px->o.idle_ms = 30000;
    if (!px->o.connect_ms)
        px->o.connect_ms = 10000;
    if (!px->o.pool_per_origin)
        px->o.pool_per_origin = 64;
    if (!px->o.max_flows)
        px->o.max_flows = 4096;
    px->o.resolve = NULL;
    for (const char *const *r = o->resolve; r && *r; r++) {
        const char *eq = strchr(*r, '=');
        struct override *v = realloc(px->ov, (px->nov + 1) * sizeof(*v));
        if (!eq || !v) {
            free(v ? v : px->ov);
            px->ov = NULL;
            free(px);
            return eq ? -ENOMEM : -EINVAL;
        }
        px->ov = v;
        v[px->nov].name = strndup(*r, (size_t)(eq - *r));
        v[px->nov].addr = strdup(eq + 1);
        px->nov++;
    }
    uv_idle_init(loop, &px->reaper);
    px->reaper.data = px;
    *out = px;
    return 0;
}

int gd_proxy_add_hook(gd_proxy *px, const char *name, unsigned phases, gd_hook_fn fn, void *ud)
{
    if (px->nhooks == MAX_HOOKS)
        return -ENOSPC;
    struct hook *h = &px->hooks[px->nhooks];
    h->name = strdup(name ? name : "hook");
    if (!h->name)
        return -ENOMEM;
    h->phases = phases;
    h->fn = fn;
    h->ud = ud;
    px->nhooks++;
    return 0;
}

size_t gd_proxy_flows(const gd_proxy *px)
{
    return px->nflows;
}

static void on_reaper_closed(uv_handle_t *h)
{
    gd_proxy *px = h->data;
    if (px->close_cb)
        px->close_cb(px, px->close_ud);
}

static void maybe_reap(gd_proxy *px)
{
    if (px->closing && !px->flows && !px->ups && !px->reaper_on) {
        px->reaper_on = 1;
        uv_close((uv_handle_t *)&px->reaper, on_reaper_closed);
    }
}

void gd_proxy_close(gd_proxy *px, void (*cb)(gd_proxy *, void *), void *ud)
{
    px->closing = 1;
    px->close_cb = cb;
    px->close_ud = ud;
    for (struct flow *f = px->flows, *next; f; f = next) {
        next = f->next;
        flow_close(f);
    }
    for (struct up *u = px->ups, *next; u; u = next) {
        next = u->next;
        up_close(u);
    }
    maybe_reap(px);
}

void gd_proxy_free(gd_proxy *px)
{
    if (!px)
        return;
    for (size_t i = 0; i < px->nhooks; i++)
        free(px->hooks[i].name);
    for (size_t i = 0; i < px->nov; i++) {
        free(px->ov[i].name);
        free(px->ov[i].addr);
    }
    free(px->ov);
    free(px);
}

/* ---- transactions ---- */

static gd_txn *txn_new(struct flow *f)
{
    gd_txn *t = calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    t->f = f;
    t->req_cl = -1;
    t->t0 = now_ns();
    t->decision = "allow";
    return t;
}

static void txn_free(gd_txn *t)
{
    if (!t)
        return;
    if (t->data_free)
        t->data_free(t->data);
    free(t->host);
    free(t->dial);
    buf_free(&t->url);
    free(t->target);
    hdrs_free(&t->req);
    hdrs_free(&t->resp);
    buf_free(&t->reason);
    free(t->drule);
    free(t->dreason);
    free(t->dctype);
    buf_free(&t->dbody);
    hdrs_free(&t->dhdrs);
    free(t->allow_rule);
    buf_free(&t->reqbody);
    buf_free(&t->respbody);
    free(t);
}

static void emit_event(struct flow *f, gd_txn *t)
{
    gd_proxy *px = f->px;
    if (!px->o.on_event)
        return;
    struct gd_proxy_event e = {
        .method = t->method,
        .scheme = t->scheme,
        .host = t->host ? t->host : (f->name ? f->name : ""),
        .path = t->target ? t->target : (t->url.p ? t->url.p : ""),
        .decision = t->decision,
        .rule = t->denied ? t->drule : t->allow_rule,
        .reason = t->denied ? t->dreason : (t->errwhy[0] ? t->errwhy : NULL),
        .addr = t->addr[0] ? t->addr : NULL,
        .port = t->port,
        .status = t->denied ? t->dstatus : t->status,
        .bytes_up = t->up_bytes,
        .bytes_down = t->down_bytes,
        .ms = (double)(now_ns() - t->t0) / 1e6,
        .tag = t->tag,
    };
    px->o.on_event(&e, px->o.event_ud);
}

const char *gd_txn_method(const gd_txn *t)
{
    return t->method;
}
const char *gd_txn_scheme(const gd_txn *t)
{
    return t->scheme;
}
const char *gd_txn_host(const gd_txn *t)
{
    return t->host ? t->host : "";
}
unsigned gd_txn_port(const gd_txn *t)
{
    return t->port;
}
const char *gd_txn_target(const gd_txn *t)
{
    return t->target ? t->target : "";
}
const char *gd_txn_addr(const gd_txn *t)
{
    return t->addr;
}
const char *gd_txn_flow_name(const gd_txn *t)
{
    return t->f ? t->f->name : t->host;
}
int gd_txn_status(const gd_txn *t)
{
    return t->status;
}
int gd_txn_is_websocket(const gd_txn *t)
{
    return t->websocket;
}

size_t gd_txn_header_count(const gd_txn *t, int resp)
{
    return resp ? t->resp.n : t->req.n;
}

void gd_txn_header_at(const gd_txn *t, int resp, size_t i, const char **name, const char **value)
{
    const struct hdrs *h = resp ? &t->resp : &t->req;
    *name = i < h->n ? h->v[i].name : NULL;
    *value = i < h->n ? h->v[i].value : NULL;
}

const char *gd_txn_header(const gd_txn *t, int resp, const char *name)
{
    return hdrs_get(resp ? &t->resp : &t->req, name);
}

/* A header a hook may write: a token name, a value without CR, LF or NUL. */
static int header_ok(const char *name, const char *value)
{
    if (!*name)
        return 0;
    for (const char *c = name; *c; c++)
        if (*c <= ' ' || *c >= 127 || strchr("()<>@,;:\\\"/[]?={}", *c))
            return 0;
    return !value || !strpbrk(value, "\r\n");
}

int gd_txn_set_header(gd_txn *t, int resp, const char *name, const char *value)
{
    struct hdrs *h = resp ? &t->resp : &t->req;
    if (!header_ok(name, value))
        return -EINVAL;
    for (size_t i = h->n; i-- > 0;)
        if (!strcasecmp(h->v[i].name, name))
            hdrs_del(h, i);
    if (!value)
        return 0;
    char *n = strdup(name), *v = strdup(value);
    if (!n || !v || hdrs_push(h, n, v)) {
        free(n);
        free(v);
        return -ENOMEM;
    }
    return 0;
}

int gd_txn_set_header_at(gd_txn *t, int resp, size_t i, const char *value)
{
    struct hdrs *h = resp ? &t->resp : &t->req;
    if (i >= h->n || strpbrk(value, "\r\n"))
        return -EINVAL;
    char *v = strdup(value);
    if (!v)
        return -ENOMEM;
    free(h->v[i].value);
    h->v[i].value = v;
    return 0;
}

int gd_txn_set_target(gd_txn *t, const char *target)
{
    if (target[0] != '/' || strpbrk(target, " \t\r\n"))
        return -EINVAL;
    char *d = strdup(target);
    if (!d)
        return -ENOMEM;
    free(t->target);
    t->target = d;
    return 0;
}

enum gd_decision gd_txn_deny(gd_txn *t, int status, const char *rule, const char *fmt, ...)
{
    char why[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
    for (char *c = why; *c; c++)
        if (*c == '\n' || *c == '\r')
            *c = ' ';
    free(t->drule);
    free(t->dreason);
    t->drule = strdup(rule ? rule : t->hook_name ? t->hook_name : "policy");
    t->dreason = strdup(why);
    t->dstatus = status >= 400 && status <= 599 ? status : 403;
    t->denied = 1;
    t->decision = "deny";
    return GD_DENY;
}

enum gd_decision gd_txn_respond(gd_txn *t, int status, const char *content_type, const void *body,
                                size_t n)
{
    free(t->dctype);
    t->dctype = strdup(content_type ? content_type : "text/plain");
    t->dbody.n = 0;
    buf_add(&t->dbody, body ? body : "", body ? n : 0);
    free(t->drule);
    t->drule = strdup("respond");
    t->dstatus = status >= 100 && status <= 599 ? status : 200;
    t->denied = 2;
    t->decision = "respond";
    return GD_RESPOND;
}

int gd_txn_respond_header(gd_txn *t, const char *name, const char *value)
{
    static const char *const own[] = {"content-type", "content-length", "connection",
                                      "transfer-encoding", NULL};
    for (const char *const *o = own; *o; o++)
        if (!strcasecmp(name, *o))
            return -EINVAL;
    if (!header_ok(name, value))
        return -EINVAL;
    char *n = strdup(name), *v = strdup(value);
    if (!n || !v || hdrs_push(&t->dhdrs, n, v)) {
        free(n);
        free(v);
        return -ENOMEM;
    }
    return 0;
}

void gd_txn_set_rule(gd_txn *t, const char *rule)
{
    free(t->allow_rule);
    t->allow_rule = rule ? strdup(rule) : NULL;
}

void gd_txn_set_data(gd_txn *t, void *data, void (*data_free)(void *))
{
    if (t->data_free)
        t->data_free(t->data);
    t->data = data;
    t->data_free = data_free;
}

void *gd_txn_data(const gd_txn *t)
{
    return t->data;
}

void gd_txn_set_tag(gd_txn *t, const char *tag)
{
    t->tag = tag;
}

void gd_txn_set_hook_name(gd_txn *t, const char *name)
{
    t->hook_name = name;
}

enum gd_decision gd_txn_decision(const gd_txn *t, int *status, const char **rule,
                                 const char **reason)
{
    *status = t->denied ? t->dstatus : t->status;
    *rule = t->denied ? t->drule : t->allow_rule;
    *reason = t->denied ? t->dreason : NULL;
    return t->denied == 2 ? GD_RESPOND : t->denied ? GD_DENY : GD_CONTINUE;
}

const uint8_t *gd_txn_respond_body(const gd_txn *t, size_t *n, const char **content_type)
{
    *n = t->dbody.n;
    *content_type = t->dctype;
    return (const uint8_t *)(t->dbody.p ? t->dbody.p : "");
}

gd_txn *gd_txn_new_detached(const char *method, const char *scheme, const char *host, unsigned port,
                            const char *target)
{
    gd_txn *t = txn_new(NULL);
    if (!t)
        return NULL;
    snprintf(t->method, sizeof(t->method), "%s", method);
    snprintf(t->scheme, sizeof(t->scheme), "%s", scheme);
    t->host = strdup(host);
    t->target = strdup(target);
    t->port = port;
    if (!t->host || !t->target) {
        txn_free(t);
        return NULL;
    }
    for (char *c = t->host; *c; c++)
        *c = (char)tolower((unsigned char)*c);
    return t;
}

int gd_txn_add_header(gd_txn *t, int resp, const char *name, const char *value)
{
    char *n = strdup(name), *v = strdup(value);
    if (!n || !v || hdrs_push(resp ? &t->resp : &t->req, n, v)) {
        free(n);
        free(v);
        return -ENOMEM;
    }
    return 0;
}

void gd_txn_set_response(gd_txn *t, int status)
{
    t->status = status;
}

void gd_txn_set_addr(gd_txn *t, const char *addr)
{
    snprintf(t->addr, sizeof(t->addr), "%s", addr);
}

void gd_txn_free_detached(gd_txn *t)
{
    txn_free(t);
}

void gd_txn_want_body(gd_txn *t)
{
    if (t->resp_head_sent || t->status)
        t->want_resp_body = 1;
    else
        t->want_req_body = 1;
}

const uint8_t *gd_txn_body(const gd_txn *t, size_t *n)
{
    const struct buf *b = t->status ? &t->respbody : &t->reqbody;
    *n = b->n;
    return (const uint8_t *)(b->p ? b->p : "");
}

int gd_txn_set_body(gd_txn *t, const void *p, size_t n)
{
    struct buf *b = t->status ? &t->respbody : &t->reqbody;
    b->n = 0;
    return buf_add(b, p, n);
}

/* Runs the hooks registered for phase, in order, until one does not continue. */
static enum gd_decision run_hooks(gd_proxy *px, gd_txn *t, enum gd_phase ph)
{
    for (size_t i = 0; i < px->nhooks; i++) {
        struct hook *h = &px->hooks[i];
        if (!(h->phases & ph))
            continue;
        t->hook_name = h->name;
        enum gd_decision d = h->fn(t, ph, h->ud);
        t->hook_name = NULL;
        if (d == GD_CONTINUE)
            continue;
        if (!t->denied) /* a hook that said no without gd_txn_deny: still a denial */
            gd_txn_deny(t, 403, h->name, "denied by %s", h->name);
        if (!t->drule || !strcmp(t->drule, "policy")) {
            free(t->drule);
            t->drule = strdup(h->name);
        }
        return t->denied == 2 ? GD_RESPOND : GD_DENY;
    }
    return GD_CONTINUE;
}

/* ---- guest-facing output ---- */

static void flow_send(struct flow *f, const void *p, size_t n)
{
    side_write(&f->g, p, n, f);
}

/* Sends a complete synthetic response for the current transaction. */
static void send_synthetic(struct flow *f, gd_txn *t, int close_after)
{
    struct buf b = {0};
    const char *ctype = t->denied == 2 ? t->dctype : "text/plain; charset=utf-8";
    struct buf body = {0};
    if (t->denied == 2)
        buf_add(&body, t->dbody.p ? t->dbody.p : "", t->dbody.n);
    else
        buf_printf(&body, "gondolin: %s by %s: %s\n", t->dstatus < 500 ? "denied" : "failed",
                   t->drule ? t->drule : "policy", t->dreason ? t->dreason : "");
    buf_printf(&b, "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n", t->dstatus,
               reason_phrase(t->dstatus), ctype, body.n);
    if (t->denied == 1 && t->drule)
        buf_printf(&b, "X-Gondolin-Rule: %s\r\n", t->drule);
    for (size_t i = 0; t->denied == 2 && i < t->dhdrs.n; i++)
        buf_printf(&b, "%s: %s\r\n", t->dhdrs.v[i].name, t->dhdrs.v[i].value);
    buf_printf(&b, "Connection: %s\r\n\r\n", close_after ? "close" : "keep-alive");
    if (!t->head_req)
        buf_add(&b, body.p ? body.p : "", body.n);
    t->down_bytes += body.n;
    flow_send(f, b.p, b.n);
    buf_free(&b);
    buf_free(&body);
    t->resp_head_sent = 1;
    t->resp_done = 1;
    t->status = t->dstatus;
    if (close_after)
        t->resp_close = 1;
}

/* An error that is ours (bad request, upstream failure): a synthetic response if the
 * guest has not seen a head yet, else the connection is cut. */
static void fail_txn(struct flow *f, int status, const char *rule, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void fail_txn(struct flow *f, int status, const char *rule, const char *fmt, ...)
{
    gd_txn *t = f->t;
    char why[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
    if (!t) {
        flow_close(f);
        return;
    }
    if (t->resp_head_sent || f->kind == GD_FLOW_RAW) {
        snprintf(t->errwhy, sizeof(t->errwhy), "%s", why);
        t->decision = "error";
        emit_event(f, t);
        txn_free(t);
        f->t = NULL;
        flow_close(f);
        return;
    }
    gd_txn_deny(t, status, rule, "%s", why);
    if (status >= 500 || status == 400)
        t->decision = "error";
    send_synthetic(f, t, 1);
    txn_finish(f);
}

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
    side_tls_free(&u->s);
    free(u);
    maybe_reap(px);
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

static void up_close(struct up *u)
{
    if (u->dead)
        return;
    u->dead = 1;
    if (u->f && u->f->up == u)
        u->f->up = NULL;
    u->f = NULL;
    if (u->timer_open)
        uv_close((uv_handle_t *)&u->timer, on_up_timer_closed);
    if (u->s.open)
        uv_close(&u->s.u.h, on_up_handle_closed);
}

static void up_send(struct up *u, const void *p, size_t n)
{
    side_write(&u->s, p, n, u);
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
    up_close(tm->data);
}

/* The exchange on u is over: keep it for the next request to the same origin, or close. */
static void up_release(struct up *u, int reusable)
{
    struct flow *f = u->f;
    if (f && f->up == u)
        f->up = NULL;
    u->f = NULL;
    if (!reusable || u->no_reuse || u->dead || u->s.eof || u->px->closing ||
        pool_count(u->px, u->key) >= u->px->o.pool_per_origin) {
        up_close(u);
        return;
    }
    u->idle = 1;
    llhttp_init(&u->p, HTTP_RESPONSE, &resp_settings);
    u->p.data = u;
    uv_timer_start(&u->timer, on_idle_timeout, u->px->o.idle_ms, 0);
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
    side_tls_free(&f->g);
    buf_free(&f->pend);
    free(f->name);
    free(f->dst_addr);
    free(f->raw_host);
    free(f);
    maybe_reap(px);
}

static void on_flow_closed(uv_handle_t *h)
{
    struct flow *f = h->data;
    f->g.open = 0;
    flow_free(f);
}

static void flow_close(struct flow *f)
{
    if (f->st == F_CLOSING)
        return;
    f->st = F_CLOSING;
    if (f->t) {
        if (!f->t->resp_done && !f->t->denied && f->t->method[0]) {
            f->t->decision = "error";
            if (!f->t->errwhy[0])
                snprintf(f->t->errwhy, sizeof(f->t->errwhy), "connection closed");
            emit_event(f, f->t);
        }
        txn_free(f->t);
        f->t = NULL;
    }
    if (f->res)
        f->res->f = NULL;
    f->res = NULL;
    if (f->up) {
        struct up *u = f->up;
        f->up = NULL;
        up_close(u);
    }
    if (f->g.open)
        uv_close(&f->g.u.h, on_flow_closed);
    else
        flow_free(f);
}

static void on_shutdown(uv_shutdown_t *r, int status)
{
    (void)status;
    struct flow *f = r->data;
    free(r);
    flow_close(f);
}

/* Closes after everything queued to the guest has been written. */
static void flow_close_after_flush(struct flow *f)
{
    if (f->shutting || f->st == F_CLOSING)
        return;
    f->shutting = 1;
    if (f->g.ssl) {
        SSL_shutdown(f->g.ssl);
        side_flush_tls(&f->g, f);
    }
    if (f->g.reading) {
        uv_read_stop(&f->g.u.s);
        f->g.reading = 0;
    }
    uv_shutdown_t *r = malloc(sizeof(*r));
    if (!r || uv_shutdown(r, &f->g.u.s, on_shutdown)) {
        free(r);
        flow_close(f);
        return;
    }
    r->data = f;
}

/* A transaction ended (response complete or synthesized). Audit, then either read the
 * next request or close. */
static void txn_finish(struct flow *f)
{
    gd_txn *t = f->t;
    if (!t)
        return;
    int keep = t->keepalive && !t->resp_close && t->req_done && f->st != F_TUNNEL;
    emit_event(f, t);
    txn_free(t);
    f->t = NULL;
    if (f->up) {
        struct up *u = f->up;
        up_release(u, keep && llhttp_get_errno(&u->p) == HPE_PAUSED);
    }
    if (!keep) {
        flow_close_after_flush(f);
        return;
    }
    f->st = F_HEAD;
    llhttp_resume(&f->p);
    flow_process(f);
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
    if (!f->t && !(f->t = txn_new(f)))
        return -1;
    return 0;
}

static int on_req_url(llhttp_t *p, const char *at, size_t n)
{
    struct flow *f = p->data;
    if (req_limit(f, n))
        return -1;
    return buf_add(&f->t->url, at, n) ? -1 : 0;
}

/* Appends n bytes to a heap string (llhttp may deliver a field in pieces). */
static int str_append(char **s, const char *at, size_t n)
{
    size_t l = strlen(*s);
    char *q = realloc(*s, l + n + 1);
    if (!q)
        return -1;
    memcpy(q + l, at, n);
    q[l + n] = 0;
    *s = q;
    return 0;
}

static int on_hdr_field(llhttp_t *p, const char *at, size_t n, struct hdrs *h, gd_txn *t,
                        size_t max_headers)
{
    (void)p;
    if (t->last_was_value || !h->n) {
        if (h->n >= max_headers)
            return -1;
        char *name = strndup(at, n), *value = strdup("");
        if (!name || !value || hdrs_push(h, name, value)) {
            free(name);
            free(value);
            return -1;
        }
    } else if (str_append(&h->v[h->n - 1].name, at, n)) {
        return -1;
    }
    t->last_was_value = 0;
    return 0;
}

static int on_hdr_value(const char *at, size_t n, struct hdrs *h, gd_txn *t)
{
    if (!h->n || str_append(&h->v[h->n - 1].value, at, n))
        return -1;
    t->last_was_value = 1;
    return 0;
}

static int on_req_field(llhttp_t *p, const char *at, size_t n)
{
    struct flow *f = p->data;
    if (req_limit(f, n))
        return -1;
    if (on_hdr_field(p, at, n, &f->t->req, f->t, f->px->o.max_headers)) {
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
    return on_hdr_value(at, n, &f->t->req, f->t);
}

static int on_req_headers_complete(llhttp_t *p)
{
    struct flow *f = p->data;
    gd_txn *t = f->t;
    snprintf(t->method, sizeof(t->method), "%s", llhttp_method_name(llhttp_get_method(p)));
    t->http10 = llhttp_get_http_major(p) == 1 && llhttp_get_http_minor(p) == 0;
    t->keepalive = llhttp_should_keep_alive(p);
    t->req_chunked = (p->flags & F_CHUNKED) != 0;
    t->req_cl = (p->flags & F_CONTENT_LENGTH) ? (int64_t)p->content_length : -1;
    t->req_has_body = t->req_chunked || t->req_cl > 0;
    t->head_req = !strcmp(t->method, "HEAD");
    t->websocket = p->upgrade != 0;
    return HPE_PAUSED;
}

static int on_req_body(llhttp_t *p, const char *at, size_t n)
{
    struct flow *f = p->data;
    gd_txn *t = f->t;
    t->up_bytes += n;
    if (t->denied)
        return 0; /* discarding the body of a refused request */
    if (t->want_req_body) {
        if (t->reqbody.n + n > f->px->o.max_body_buffer) {
            f->err_status = 413;
            return -1;
        }
        return buf_add(&t->reqbody, at, n) ? -1 : 0;
    }
    if (!f->up)
        return -1;
    if (t->req_chunked) {
        char hx[24];
        int k = snprintf(hx, sizeof(hx), "%zx\r\n", n);
        up_send(f->up, hx, (size_t)k);
        up_send(f->up, at, n);
        up_send(f->up, "\r\n", 2);
    } else {
        up_send(f->up, at, n);
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
    return buf_add(&u->f->t->reason, at, n) ? -1 : 0;
}

static int on_resp_field(llhttp_t *p, const char *at, size_t n)
{
    struct up *u = p->data;
    if (resp_limit(u, n))
        return -1;
    return on_hdr_field(p, at, n, &u->f->t->resp, u->f->t, u->px->o.max_headers * 2);
}

static int on_resp_value(llhttp_t *p, const char *at, size_t n)
{
    struct up *u = p->data;
    if (resp_limit(u, n))
        return -1;
    return on_hdr_value(at, n, &u->f->t->resp, u->f->t);
}

static int is_hop_header(const char *name, const char *connection)
{
    static const char *const hop[] = {
        "connection", "keep-alive",        "proxy-connection", "proxy-authenticate",  "te",
        "trailer",    "transfer-encoding", "upgrade",          "proxy-authorization", NULL};
    for (const char *const *h = hop; *h; h++)
        if (!strcasecmp(name, *h))
            return 1;
    return connection && has_token(connection, name);
}

static void send_resp_head(struct flow *f, gd_txn *t, int buffered)
{
    struct buf b = {0};
    const char *conn = hdrs_get(&t->resp, "connection");
    int nobody = t->head_req || t->status == 204 || t->status == 304 || t->status < 200;
    int upstream_cl = hdrs_get(&t->resp, "content-length") != NULL;
    int chunked_upstream = has_token(hdrs_get(&t->resp, "transfer-encoding"), "chunked");
    if (t->status == 101) {
        buf_printf(&b, "HTTP/1.1 101 %s\r\n", t->reason.p ? t->reason.p : "Switching Protocols");
        for (size_t i = 0; i < t->resp.n; i++) {
            if (is_hop_header(t->resp.v[i].name, NULL))
                continue;
            buf_printf(&b, "%s: %s\r\n", t->resp.v[i].name, t->resp.v[i].value);
        }
        buf_printf(&b, "Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
        flow_send(f, b.p, b.n);
        buf_free(&b);
        t->resp_head_sent = 1;
        return;
    }
    buf_printf(&b, "HTTP/1.1 %d %s\r\n", t->status,
               t->reason.n ? t->reason.p : reason_phrase(t->status));
    for (size_t i = 0; i < t->resp.n; i++) {
        const char *n = t->resp.v[i].name;
        if (is_hop_header(n, conn))
            continue;
        if ((buffered || chunked_upstream) && !strcasecmp(n, "content-length"))
            continue;
        buf_printf(&b, "%s: %s\r\n", n, t->resp.v[i].value);
    }
    if (buffered) {
        if (!nobody)
            buf_printf(&b, "Content-Length: %zu\r\n", t->respbody.n);
    } else if (!nobody && (chunked_upstream || !upstream_cl)) {
        if (t->http10)
            t->resp_close = 1; /* close-delimited toward a 1.0 client */
        else {
            t->resp_chunked_out = 1;
            buf_printf(&b, "Transfer-Encoding: chunked\r\n");
        }
    }
    if (!t->keepalive || t->resp_close || !t->req_done)
        t->resp_close = 1;
    buf_printf(&b, "Connection: %s\r\n\r\n", t->resp_close ? "close" : "keep-alive");
    flow_send(f, b.p, b.n);
    buf_free(&b);
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
        flow_send(f, hx, (size_t)k);
        flow_send(f, p, n);
        flow_send(f, "\r\n", 2);
    } else {
        flow_send(f, p, n);
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
    if (run_hooks(f->px, t, GD_PHASE_RESPONSE_HEAD) != GD_CONTINUE)
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
    if (t->want_resp_body) {
        if (t->respbody.n + n > u->px->o.max_body_buffer)
            return -1;
        return buf_add(&t->respbody, at, n) ? -1 : 0;
    }
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
        hdrs_free(&t->resp);
        t->reason.n = 0;
        t->status = 0;
        return 0;
    }
    t->resp_done = 1;
    return HPE_PAUSED;
}

static void init_settings(void)
{
    static int done;
    if (done)
        return;
    done = 1;
    llhttp_settings_init(&req_settings);
    req_settings.on_message_begin = on_req_begin;
    req_settings.on_url = on_req_url;
    req_settings.on_header_field = on_req_field;
    req_settings.on_header_value = on_req_value;
    req_settings.on_headers_complete = on_req_headers_complete;
    req_settings.on_body = on_req_body;
    req_settings.on_message_complete = on_req_complete;
    llhttp_settings_init(&resp_settings);
    resp_settings.on_message_begin = on_resp_begin;
    resp_settings.on_status = on_resp_status;
    resp_settings.on_header_field = on_resp_field;
    resp_settings.on_header_value = on_resp_value;
    resp_settings.on_headers_complete = on_resp_headers_complete;
    resp_settings.on_body = on_resp_body;
    resp_settings.on_message_complete = on_resp_complete;
}

/* ---- upstream I/O ---- */

static void up_ready(struct up *u);
static void up_failed(struct up *u, const char *why);

/* Response complete (or failed): either buffered hooks, then finish. */
static void resp_finished(struct flow *f)
{
    gd_txn *t = f->t;
    if (t->want_resp_body && !t->denied) {
        if (run_hooks(f->px, t, GD_PHASE_RESPONSE_BODY) != GD_CONTINUE) {
            if (f->up)
                f->up->no_reuse = 1;
            send_synthetic(f, t, 1);
            txn_finish(f);
            return;
        }
        send_resp_head(f, t, 1);
        if (!t->head_req)
            send_resp_body(f, t, t->respbody.p ? t->respbody.p : "", t->respbody.n);
    }
    if (t->resp_chunked_out)
        flow_send(f, "0\r\n\r\n", 5);
    if (t->resp_close && f->up)
        f->up->no_reuse = 1;
    txn_finish(f);
}

static void deliver_up_plain(struct up *u, const char *p, size_t n)
{
    struct flow *f = u->f;
    if (!f || !f->t) {
        if (f && f->st == F_TUNNEL) {
            flow_send(f, p, n);
            return;
        }
        up_close(u); /* an idle upstream talking, or a response nobody asked for */
        return;
    }
    if (f->st == F_TUNNEL) {
        flow_send(f, p, n);
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
        emit_event(f, t);
        txn_free(t);
        f->t = NULL;
        if (used < n)
            flow_send(f, p + used, n - used);
        if (f->pend.n > f->pend_off) {
            up_send(u, f->pend.p + f->pend_off, f->pend.n - f->pend_off);
            f->pend.n = f->pend_off = 0;
        }
        flow_process(f);
        return;
    }
    if (e == HPE_PAUSED) {
        if (t->denied) { /* a response hook refused it */
            u->no_reuse = 1;
            send_synthetic(f, t, 1);
            txn_finish(f);
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
        fail_txn(f, 502, "upstream", "bad response from %s: %s", u->host, llhttp_errno_name(e));
    }
}

static void on_up_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *b);

static void up_pump_tls(struct up *u)
{
    char tmp[16384];
    if (!u->s.hs_done) {
        int r = SSL_do_handshake(u->s.ssl);
        side_flush_tls(&u->s, u);
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
        if (f && f->g.open && side_queued(&f->g) > HIGH_WATER) {
            up_throttle(u); /* resumed from the guest's write callback */
            return;
        }
        int r = SSL_read(u->s.ssl, tmp, sizeof(tmp));
        if (r <= 0) {
            int e = SSL_get_error(u->s.ssl, r);
            side_flush_tls(&u->s, u);
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
    /* EOF or error from upstream */
    u->s.eof = 1;
    struct flow *f = u->f;
    if (!f) {
        up_close(u);
        return;
    }
    if (f->st == F_TUNNEL) {
        up_close(u);
        flow_close_after_flush(f);
        return;
    }
    gd_txn *t = f->t;
    if (t && !u->got_bytes && u->reused && !t->req_has_body && !t->resp_head_sent) {
        /* a pooled connection the server had closed: try once more on a fresh one */
        f->up = NULL;
        u->f = NULL;
        up_close(u);
        f->up_retry = 1;
        start_request(f);
        return;
    }
    if (t && llhttp_message_needs_eof(&u->p) && t->resp_head_sent && nread == UV_EOF) {
        if (llhttp_finish(&u->p) == HPE_OK || t->resp_done) {
            u->no_reuse = 1;
            resp_finished(f);
            return;
        }
    }
    u->no_reuse = 1;
    fail_txn(f, 502, "upstream", "%s closed the connection%s", u->host,
             t && t->resp_head_sent ? " mid-response" : " before responding");
}

static void on_side_write(uv_write_t *w, int status)
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
            flow_process(f);
        return;
    }
    struct flow *f = owner;
    struct up *u = f->up;
    if (u && !u->dead && u->s.open && !u->s.reading && u->connected) {
        uv_read_start(&u->s.u.s, alloc_cb, on_up_read);
        u->s.reading = 1;
        if (u->s.ssl)
            up_pump_tls(u);
    }
}

/* Stops reading upstream while the guest has a full write queue. */
static void up_throttle(struct up *u)
{
    struct flow *f = u->f;
    if (!u->dead && u->s.reading && f && side_queued(&f->g) > HIGH_WATER) {
        uv_read_stop(&u->s.u.s);
        u->s.reading = 0;
    }
}

static void up_failed(struct up *u, const char *why)
{
    struct flow *f = u->f;
    u->no_reuse = 1;
    if (!f) {
        up_close(u);
        return;
    }
    f->up = NULL;
    u->f = NULL;
    up_close(u);
    if (f->st == F_TUNNEL && !f->t) {
        flow_close(f);
        return;
    }
    int gw = strstr(why, "timed out") ? 504 : 502;
    fail_txn(f, gw, "upstream", "%s", why);
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
    uv_read_start(&u->s.u.s, alloc_cb, on_up_read);
    u->s.reading = 1;
    if (u->tls) {
        SSL *ssl = gd_tls_client_new(u->px->o.tls, u->host);
        if (!ssl || side_tls_init(&u->s, ssl)) {
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

static void send_req_head(struct flow *f, gd_txn *t)
{
    struct buf b = {0};
    const char *conn = hdrs_get(&t->req, "connection");
    buf_printf(&b, "%s %s HTTP/1.1\r\n", t->method, t->target);
    int have_host = 0;
    for (size_t i = 0; i < t->req.n; i++) {
        const char *n = t->req.v[i].name;
        if (is_hop_header(n, conn) || !strcasecmp(n, "expect") || !strcasecmp(n, "content-length"))
            continue;
        if (!strcasecmp(n, "host"))
            have_host = 1;
        buf_printf(&b, "%s: %s\r\n", n, t->req.v[i].value);
    }
    if (!have_host) {
        int dflt = (!strcmp(t->scheme, "https") && t->port == 443) ||
                   (!strcmp(t->scheme, "http") && t->port == 80);
        int v6 = strchr(t->host, ':') != NULL;
        if (dflt)
            buf_printf(&b, v6 ? "Host: [%s]\r\n" : "Host: %s\r\n", t->host);
        else
            buf_printf(&b, v6 ? "Host: [%s]:%u\r\n" : "Host: %s:%u\r\n", t->host, t->port);
    }
    if (t->websocket)
        buf_printf(&b, "Connection: Upgrade\r\nUpgrade: websocket\r\n");
    if (t->want_req_body)
        buf_printf(&b, "Content-Length: %zu\r\n", t->reqbody.n);
    else if (t->req_chunked)
        buf_printf(&b, "Transfer-Encoding: chunked\r\n");
    else if (t->req_cl >= 0)
        buf_printf(&b, "Content-Length: %lld\r\n", (long long)t->req_cl);
    buf_add(&b, "\r\n", 2);
    up_send(f->up, b.p, b.n);
    buf_free(&b);
    if (t->want_req_body && t->reqbody.n)
        up_send(f->up, t->reqbody.p, t->reqbody.n);
}

/* The upstream connection is ready for this flow's current request. */
static void up_ready(struct up *u)
{
    struct flow *f = u->f;
    if (!f) {
        up_close(u);
        return;
    }
    uv_timer_stop(&u->timer);
    if (f->kind == GD_FLOW_RAW) {
        f->st = F_TUNNEL;
        emit_event(f, f->t);
        txn_free(f->t);
        f->t = NULL;
        flow_process(f);
        return;
    }
    gd_txn *t = f->t;
    if (t->want_req_body) {
        if (t->req_done) {
            send_req_head(f, t);
            f->st = F_WAIT_RESP;
            return;
        }
        /* body still to read; head goes up when it is complete */
        f->st = F_BODY;
    } else {
        send_req_head(f, t);
        f->st = t->req_done ? F_WAIT_RESP : F_BODY;
    }
    if (t->expect_continue)
        flow_send(f, "HTTP/1.1 100 Continue\r\n\r\n", 25);
    llhttp_resume(&f->p);
    flow_process(f);
}

static struct up *up_new(gd_proxy *px, const char *key, const char *host, int tls)
{
    struct up *u = calloc(1, sizeof(*u));
    if (!u)
        return NULL;
    u->px = px;
    u->is_up = 1;
    snprintf(u->key, sizeof(u->key), "%s", key);
    snprintf(u->host, sizeof(u->host), "%s", host);
    u->tls = tls;
    uv_tcp_init(px->loop, &u->s.u.tcp);
    u->s.u.h.data = u;
    u->s.open = 1;
    uv_timer_init(px->loop, &u->timer);
    u->timer.data = u;
    u->timer_open = 1;
    llhttp_init(&u->p, HTTP_RESPONSE, &resp_settings);
    u->p.data = u;
    up_link(px, u);
    return u;
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
        t->denied = 0;
        if (run_hooks(px, t, GD_PHASE_CONNECT) == GD_CONTINUE) {
            memcpy(&chosen, cand[i],
                   cand[i]->sa_family == AF_INET ? sizeof(struct sockaddr_in)
                                                 : sizeof(struct sockaddr_in6));
            found = 1;
        }
    }
    if (!found) {
        if (!t->denied)
            gd_txn_deny(t, 502, "resolve", "%s has no usable address", t->host);
        if (f->kind == GD_FLOW_RAW) {
            emit_event(f, t);
            txn_free(t);
            f->t = NULL;
            flow_close(f);
            return;
        }
        send_synthetic(f, t, t->req_has_body);
        txn_finish(f);
        return;
    }
    if (chosen.ss_family == AF_INET)
        ((struct sockaddr_in *)&chosen)->sin_port = htons((uint16_t)t->port);
    else
        ((struct sockaddr_in6 *)&chosen)->sin6_port = htons((uint16_t)t->port);
    char key[320];
    snprintf(key, sizeof(key), "%s://%s:%u@%s", t->scheme, t->host, t->port, t->addr);
    struct up *u = up_new(px, key, t->host, !strcmp(t->scheme, "https"));
    if (!u) {
        fail_txn(f, 502, "upstream", "out of memory");
        return;
    }
    if (t->websocket || f->kind == GD_FLOW_RAW)
        u->no_reuse = 1;
    u->f = f;
    f->up = u;
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
        fail_txn(f, 502, "resolve", "cannot resolve %s: %s", f->t->host,
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
static void start_request(struct flow *f)
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
            u->idle = 0;
            u->reused = 1;
            u->got_bytes = 0;
            u->f = f;
            f->up = u;
            snprintf(t->addr, sizeof(t->addr), "%s", u->key + pl);
            up_ready(u);
            return;
        }
    }
    f->up_retry = 0;
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
        fail_txn(f, 502, "resolve", "out of memory");
        return;
    }
    rs->f = f;
    f->res = rs;
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    int rc = uv_getaddrinfo(px->loop, &rs->req, on_resolved, name, NULL, &hints);
    if (rc) {
        f->res = NULL;
        free(rs);
        fail_txn(f, 502, "resolve", "cannot resolve %s: %s", t->host, uv_strerror(rc));
    }
}

static int valid_host(const char *h)
{
    if (!*h || strlen(h) > 253)
        return 0;
    for (; *h; h++)
        if (!((*h >= 'a' && *h <= 'z') || (*h >= '0' && *h <= '9') || *h == '-' || *h == '.' ||
              *h == '_' || *h == ':'))
            return 0;
    return 1;
}

/* "host[:port]" or "[v6]:port" into lowercase host and port (default if absent). */
static int split_hostport(const char *s, size_t len, char **host, unsigned *port, unsigned dflt)
{
    char tmp[300];
    if (!len || len >= sizeof(tmp))
        return -1;
    memcpy(tmp, s, len);
    tmp[len] = 0;
    char *h = tmp, *ps = NULL;
    if (*h == '[') {
        char *e = strchr(h, ']');
        if (!e)
            return -1;
        *e = 0;
        h++;
        if (e[1] == ':')
            ps = e + 2;
        else if (e[1])
            return -1;
    } else {
        char *c = strchr(h, ':');
        if (c) {
            *c = 0;
            ps = c + 1;
        }
    }
    *port = dflt;
    if (ps) {
        char *end;
        unsigned long v = strtoul(ps, &end, 10);
        if (!*ps || *end || v == 0 || v > 65535)
            return -1;
        *port = (unsigned)v;
    }
    for (char *c = h; *c; c++)
        if (*c >= 'A' && *c <= 'Z')
            *c += 32;
    size_t hl = strlen(h);
    if (hl && h[hl - 1] == '.')
        h[hl - 1] = 0; /* "example.com." is example.com */
    if (!valid_host(h))
        return -1;
    *host = strdup(h);
    return *host ? 0 : -1;
}

/* The request head is parsed: validate, route, run policy, then get an upstream. */
static void on_request_head(struct flow *f)
{
    gd_txn *t = f->t;
    f->kicked = 0;
    int tls = f->g.ssl != NULL;
    snprintf(t->scheme, sizeof(t->scheme), "%s", tls ? "https" : "http");
    unsigned dflt = tls ? 443 : 80;
    const char *url = t->url.p ? t->url.p : "";
    if (!strcmp(t->method, "CONNECT")) {
        fail_txn(f, 405, "connect", "CONNECT tunnels are not allowed; requests go direct");
        return;
    }
    const char *hosthdr = hdrs_get(&t->req, "host");
    if (!strncasecmp(url, "http://", 7) || !strncasecmp(url, "https://", 8) ||
        !strncasecmp(url, "ws://", 5) || !strncasecmp(url, "wss://", 6)) {
        const char *a = strstr(url, "//") + 2;
        const char *slash = a + strcspn(a, "/?#");
        if (split_hostport(a, (size_t)(slash - a), &t->host, &t->port, dflt)) {
            fail_txn(f, 400, "bad-request", "bad authority in request target");
            return;
        }
        t->target = strdup(*slash == '/' ? slash : "/");
    } else if (url[0] == '/' || !strcmp(url, "*")) {
        if (!hosthdr || split_hostport(hosthdr, strlen(hosthdr), &t->host, &t->port, dflt)) {
            fail_txn(f, 400, "bad-request", hosthdr ? "bad Host header" : "no Host header");
            return;
        }
        t->target = strdup(url);
    } else {
        fail_txn(f, 400, "bad-request", "unsupported request target");
        return;
    }
    if (!t->target) {
        fail_txn(f, 500, "internal", "out of memory");
        return;
    }
    if (tls) {
        const char *sni = gd_tls_server_sni(f->g.ssl);
        if (sni && strcasecmp(sni, t->host)) {
            gd_txn_deny(t, 403, "host-sni", "Host %s does not match TLS server name %s", t->host,
                        sni);
            send_synthetic(f, t, 1);
            txn_finish(f);
            return;
        }
    }
    const char *expect = hdrs_get(&t->req, "expect");
    if (expect) {
        if (strcasecmp(expect, "100-continue")) {
            fail_txn(f, 417, "bad-request", "unsupported Expect: %s", expect);
            return;
        }
        t->expect_continue = 1;
    }
    if (t->websocket) {
        const char *up = hdrs_get(&t->req, "upgrade");
        if (!up || strcasecmp(up, "websocket") || strcmp(t->method, "GET")) {
            fail_txn(f, 501, "bad-request", "only WebSocket upgrades on GET are supported");
            return;
        }
    }
    if (run_hooks(f->px, t, GD_PHASE_REQUEST_HEAD) != GD_CONTINUE) {
        send_synthetic(f, t, t->req_has_body || t->websocket);
        if (!t->req_has_body && !t->websocket)
            t->req_done = 1;
        txn_finish(f);
        return;
    }
    if (t->websocket)
        t->want_req_body = 0; /* an upgrade has no body; its frames are tunneled */
    if (t->want_req_body && t->req_cl > (int64_t)f->px->o.max_body_buffer) {
        fail_txn(f, 413, "body-limit", "request body of %lld bytes is over the %zu-byte limit",
                 (long long)t->req_cl, f->px->o.max_body_buffer);
        return;
    }
    start_request(f);
}

/* Feeds pending guest plaintext to whichever consumer the state calls for. */
static void flow_process(struct flow *f)
{
    if (f->in_pump || f->st == F_CLOSING)
        return;
    f->in_pump = 1;
    for (;;) {
        if (f->st == F_CLOSING || f->shutting)
            break;
        size_t avail = f->pend.n - f->pend_off;
        if (f->st == F_TUNNEL) {
            if (avail && f->up) {
                up_send(f->up, f->pend.p + f->pend_off, avail);
                f->pend_off += avail;
            }
            if (f->up && side_queued(&f->up->s) > HIGH_WATER)
                break;
            avail = 0;
        } else if ((avail || (f->st == F_BODY && f->t && !f->t->req_done && !f->t->req_has_body &&
                              !f->kicked)) &&
                   (f->st == F_HEAD || f->st == F_BODY)) {
            /* a bodiless request paused after its head completes only when the parser
             * runs again: run it once on no bytes */
            if (!avail)
                f->kicked = 1;
            const char *p = avail ? f->pend.p + f->pend_off : "";
            if (f->st == F_HEAD && !f->t && !(f->t = txn_new(f))) {
                flow_close(f);
                break;
            }
            llhttp_errno_t e = llhttp_execute(&f->p, p, avail);
            const char *pos = llhttp_get_error_pos(&f->p);
            size_t used = (e == HPE_OK || !pos) ? avail : (size_t)(pos - p);
            f->pend_off += used;
            if (f->st == F_CLOSING)
                break;
            if (e == HPE_PAUSED || e == HPE_PAUSED_UPGRADE) {
                gd_txn *t = f->t;
                if (f->st == F_HEAD) {
                    on_request_head(f);
                    continue;
                }
                if (t && t->req_done && f->st == F_BODY) {
                    if (t->websocket) {
                        f->st = F_WAIT_RESP;
                        break;
                    }
                    if (t->want_req_body && !t->denied) {
                        if (run_hooks(f->px, t, GD_PHASE_REQUEST_BODY) != GD_CONTINUE) {
                            send_synthetic(f, t, 0);
                            txn_finish(f);
                            continue;
                        }
                        send_req_head(f, t);
                    } else if (t->req_chunked && !t->denied && f->up) {
                        up_send(f->up, "0\r\n\r\n", 5);
                    }
                    f->st = F_WAIT_RESP;
                    continue;
                }
                continue;
            }
            if (e != HPE_OK) {
                int st = f->err_status ? f->err_status : 400;
                const char *why = st == 431   ? "request header fields too large"
                                  : st == 413 ? "request body over the buffering limit"
                                              : llhttp_errno_name(e);
                if (f->t && f->t->resp_head_sent) {
                    flow_close(f);
                    break;
                }
                if (!f->t)
                    f->t = txn_new(f);
                if (f->t && !f->t->method[0])
                    snprintf(f->t->method, sizeof(f->t->method), "%s",
                             llhttp_method_name(llhttp_get_method(&f->p)));
                fail_txn(f, st,
                         st == 431   ? "header-limit"
                         : st == 413 ? "body-limit"
                                     : "bad-request",
                         "%s", why);
                break;
            }
            if (f->st == F_BODY && f->up && side_queued(&f->up->s) > HIGH_WATER)
                break;
            if (avail)
                continue; /* else: the empty run is done, read more */
        }
        if (avail)
            break; /* waiting (upstream, response): keep the bytes, stop reading */
        f->pend.n = f->pend_off = 0;
        /* everything consumed: more from TLS buffers, then from the socket */
        if (f->g.ssl && f->g.hs_done) {
            char tmp[16384];
            int r = SSL_read(f->g.ssl, tmp, sizeof(tmp));
            if (r > 0) {
                buf_add(&f->pend, tmp, (size_t)r);
                continue;
            }
            int e = SSL_get_error(f->g.ssl, r);
            side_flush_tls(&f->g, f);
            if (e == SSL_ERROR_ZERO_RETURN)
                f->g.eof = 1;
            else if (e != SSL_ERROR_WANT_READ) {
                ERR_clear_error();
                flow_close(f);
                break;
            }
        }
        if (f->g.eof) {
            if (f->st == F_TUNNEL && f->up) {
                /* half-close toward the upstream: let it finish */
                flow_close_after_flush(f);
            } else if (f->st == F_HEAD && !f->t) {
                flow_close_after_flush(f);
            } else if (f->st == F_HEAD) {
                flow_close(f);
            }
            break;
        }
        if (!f->g.reading && f->g.open && !f->shutting) {
            f->g.reading = 1;
            flow_read_start(f);
        }
        break;
    }
    if (f->st != F_CLOSING) {
        size_t avail = f->pend.n - f->pend_off;
        int want_read = !avail && (f->st == F_HEAD || f->st == F_BODY || f->st == F_TUNNEL) &&
                        !(f->up && side_queued(&f->up->s) > HIGH_WATER);
        if (!want_read && f->g.reading) {
            uv_read_stop(&f->g.u.s);
            f->g.reading = 0;
        }
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
        if (nread != UV_EOF || f->st == F_HEAD || f->st == F_TUNNEL)
            flow_process(f);
        if (nread != UV_EOF && f->st != F_CLOSING)
            flow_close(f);
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
            if (!ssl || side_tls_init(&f->g, ssl)) {
                if (ssl && !f->g.ssl)
                    SSL_free(ssl);
                free(b->base);
                flow_close(f); /* not TLS on a TLS port */
                return;
            }
        } else {
            buf_add(&f->pend, p, n);
            int h = sniff_http(f->pend.p, f->pend.n);
            if (h < 0) {
                free(b->base);
                flow_close(f); /* not HTTP on an HTTP port */
                return;
            }
            free(b->base);
            if (h == 0)
                return;
            f->sniffed = 1;
            flow_process(f);
            return;
        }
        f->sniffed = 1;
    }
    if (f->g.ssl) {
        BIO_write(f->g.rb, p, (int)n);
        free(b->base);
        if (!f->g.hs_done) {
            int r = SSL_do_handshake(f->g.ssl);
            side_flush_tls(&f->g, f);
            if (r != 1) {
                int e = SSL_get_error(f->g.ssl, r);
                if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) {
                    ERR_clear_error();
                    flow_close_after_flush(f);
                }
                return;
            }
            f->g.hs_done = 1;
        }
        flow_process(f);
        return;
    }
    buf_add(&f->pend, p, n);
    free(b->base);
    flow_process(f);
}

static void flow_read_start(struct flow *f)
{
    uv_read_start(&f->g.u.s, alloc_cb, on_flow_read);
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
    f->next = px->flows;
    if (px->flows)
        px->flows->prev = f;
    px->flows = f;
    px->nflows++;
    if (rc) {
        close(fd);
        flow_close(f);
        return rc;
    }
    llhttp_init(&f->p, HTTP_REQUEST, &req_settings);
    f->p.data = f;
    f->st = F_HEAD;
    if (f->kind == GD_FLOW_RAW) {
        gd_txn *t = f->t = txn_new(f);
        if (!t || !f->raw_host) {
            flow_close(f);
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
            flow_close(f);
            return -ENOMEM;
        }
        if (run_hooks(px, t, GD_PHASE_REQUEST_HEAD) != GD_CONTINUE) {
            emit_event(f, t);
            txn_free(t);
            f->t = NULL;
            flow_close(f);
            return 0;
        }
        start_request(f);
        return 0;
    }
    f->g.reading = 1;
    flow_read_start(f);
    return 0;
}
