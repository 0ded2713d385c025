/*
 * http_int.h - private to core/http: the objects the proxy engine's files share.
 *
 * A flow is one guest connection; an up is one upstream connection. Both are a
 * `struct side` (a libuv stream, optionally wrapped in TLS through memory BIOs), so the
 * byte plumbing is written once (side.c). txn.c is the gd_txn API hooks see; flow.c the
 * request side and the flow state machine; upstream.c the pool, resolve/connect, the
 * response parser and upstream TLS; http.c the proxy object.
 */
#ifndef GD_HTTP_INT_H
#define GD_HTTP_INT_H

#include "http/http.h"

#include <llhttp.h>
#include <openssl/ssl.h>
#include <stdint.h>

#define READ_CHUNK 65536
#define HIGH_WATER (1u << 20) /* peer write queue at which we stop reading this side */
#define MAX_HOOKS 64

struct buf {
    char *p;
    size_t n, cap;
};

struct hdr {
    char *name, *value;
};

struct hdrs {
    struct hdr *v;
    size_t n, cap;
};

struct wreq {
    uv_write_t w;
    void *owner;
    char data[];
};

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
    size_t nidle; /* pooled idle upstream connections */
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
    char auth[264]; /* the decided authority, as the Host header sent upstream */
    char addr[64];
    struct hdrs req, resp;
    int status;
    struct buf reason;
    /* request framing */
    int64_t req_cl; /* -1 none */
    int req_chunked, head_req, websocket, expect_continue, http10, keepalive;
    int req_done;                    /* the whole request was read from the guest */
    int req_has_body;                /* framing says a body follows */
    int req_trailers, resp_trailers; /* the parser is past the head: fields are trailers */
    /* response framing toward the guest */
    int resp_chunked_out, resp_head_sent, resp_done, resp_close;
    int resp_eof_body; /* the guest's body ends at close (a 1.0 client, no length) */
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
    enum gd_phase phase;  /* the hook phase running now; 0 outside the chain */
    size_t buffered;      /* bytes of reqbody/respbody charged to the global budget */
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
    int err_status;      /* set by a parser callback that refused input */
    const char *err_why; /* and why (static text), or NULL */
    int shutting;
    int abort;   /* close with a reset where the socket allows it */
    int in_pump; /* re-entrancy guard for gd__flow_process */
    int up_retry;
    uv_timer_t timer; /* guest-side deadlines: keep-alive idle, head, body progress */
    int timer_open;
    int tkind;    /* which deadline is armed (enum in flow.c) */
    int progress; /* guest bytes moved since the deadline was armed */
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

extern llhttp_settings_t gd__req_settings, gd__resp_settings;
void gd__req_settings_init(void);  /* flow.c */
void gd__resp_settings_init(void); /* upstream.c */

/* flow.c */
void gd__fail_txn(struct flow *f, int status, const char *rule, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void gd__flow_close(struct flow *f);
void gd__flow_close_after_flush(struct flow *f);
void gd__flow_process(struct flow *f);
void gd__flow_send(struct flow *f, const void *p, size_t n);
int gd__on_hdr_field(llhttp_t *p, const char *at, size_t n, struct hdrs *h, gd_txn *t,
                     size_t max_headers);
int gd__on_hdr_value(const char *at, size_t n, struct hdrs *h, gd_txn *t);
void gd__send_synthetic(struct flow *f, gd_txn *t, int close_after);
void gd__txn_finish(struct flow *f);

/* http.c */
void gd__maybe_reap(gd_proxy *px);

/* side.c */
void gd__alloc_cb(uv_handle_t *h, size_t sz, uv_buf_t *b);
int gd__buf_add(struct buf *b, const void *p, size_t n);
void gd__buf_free(struct buf *b);
int gd__buf_printf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int gd__has_token(const char *v, const char *tok);
void gd__hdrs_del(struct hdrs *h, size_t i);
void gd__hdrs_free(struct hdrs *h);
const char *gd__hdrs_get(const struct hdrs *h, const char *name);
int gd__hdrs_push(struct hdrs *h, char *name, char *value);
uint64_t gd__now_ns(void);
const char *gd__reason_phrase(int s);
void gd__side_flush_tls(struct side *s, void *owner);
size_t gd__side_queued(const struct side *s);
void gd__side_tls_free(struct side *s);
int gd__side_tls_init(struct side *s, SSL *ssl);
void gd__side_write(struct side *s, const void *p, size_t n, void *owner);

/* target.c */
/* "host[:port]" or "[v6]:port" into a canonical lowercase host (one trailing dot
 * dropped; a name must be well formed, a bracketed host a valid IPv6 literal). */
int gd__split_hostport(const char *s, size_t len, char **host, unsigned *port, unsigned dflt);
int gd__token(const char *s); /* an RFC 9110 token (header names) */

/* txn.c */
/* Appends to a body buffered for hooks: -E2BIG over max_body_buffer, -ENOBUFS over the
 * process-wide budget, -ENOMEM. */
int gd__txn_buffer(gd_txn *t, struct buf *b, const void *p, size_t n);
int gd__budget_spent(const gd_proxy *px);
void gd__txn_undeny(gd_txn *t);
void gd__emit_event(struct flow *f, gd_txn *t);
enum gd_decision gd__run_hooks(gd_proxy *px, gd_txn *t, enum gd_phase ph);
void gd__txn_free(gd_txn *t);
gd_txn *gd__txn_new(struct flow *f);

/* upstream.c */
void gd__on_side_write(uv_write_t *w, int status);
void gd__send_req_head(struct flow *f, gd_txn *t);
void gd__start_request(struct flow *f);
void gd__up_close(struct up *u);
void gd__up_release(struct up *u, int reusable);
void gd__up_send(struct up *u, const void *p, size_t n);

#endif
