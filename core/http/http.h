/*
 * http.h - the egress proxy engine: every guest TCP flow the network layer intercepts
 * ends here. HTTP/1.1 (llhttp) in plain or MITM'd TLS, WebSocket tunnels after a
 * policy-checked handshake, and mapped raw TCP. The engine owns the hook chain; the
 * policy layer only installs hooks into it.
 *
 * One guest connection carries any number of keep-alive requests, one at a time. Each
 * request is a gd_txn that goes through the phases below; every hook returns an
 * explicit decision. Upstream connections are pooled per scheme/host/port and closed
 * after an idle timeout. The upstream is chosen from the Host header (on TLS it must
 * equal the SNI), never from the address the guest dialled.
 *
 * All limits are set at creation; a guest that exceeds one gets 413/431/400 or a closed
 * flow, never an unbounded buffer.
 */
#ifndef GD_HTTP_H
#define GD_HTTP_H

#include "tls/tls.h"

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct gd_proxy gd_proxy;
typedef struct gd_txn gd_txn;

enum gd_phase {
    GD_PHASE_CONNECT = 1,       /* an upstream address was chosen: gd_txn_addr() */
    GD_PHASE_REQUEST_HEAD = 2,  /* request line + headers parsed */
    GD_PHASE_REQUEST_BODY = 4,  /* whole body, only if a head hook called gd_txn_want_body */
    GD_PHASE_RESPONSE_HEAD = 8, /* upstream status + headers */
    GD_PHASE_RESPONSE_BODY = 16 /* whole body, only if gd_txn_want_body in RESPONSE_HEAD */
};

enum gd_decision { GD_CONTINUE = 0, GD_DENY = 1, GD_RESPOND = 2 };

/* A hook. Return GD_CONTINUE, or what gd_txn_deny / gd_txn_respond returned. */
typedef enum gd_decision (*gd_hook_fn)(gd_txn *t, enum gd_phase phase, void *ud);

/* Audit sink: one call per finished exchange or refused flow (fields borrowed). */
struct gd_proxy_event {
    const char *method, *scheme, *host, *path, *decision, *rule, *reason, *addr;
    unsigned port;
    int status;
    uint64_t bytes_up, bytes_down;
    double ms;
    const char *tag; /* gd_txn_set_tag (the policy revision), or NULL */
    int ingress;     /* a host client toward a guest service (gd_txn_ingress) */
};

struct gd_proxy_opts {
    gd_tls *tls;              /* borrowed; NULL: TLS flows are closed */
    size_t max_header_bytes;  /* request or response head; 0 = 64 KiB (-> 431 / 502) */
    size_t max_headers;       /* 0 = 128 (-> 431) */
    size_t max_body_buffer;   /* a body a hook asked to buffer; 0 = 16 MiB (-> 413) */
    unsigned idle_ms;         /* pooled upstream idle timeout; 0 = 30000 */
    unsigned connect_ms;      /* upstream connect + TLS handshake; 0 = 10000 */
    unsigned pool_per_origin; /* idle connections kept per origin; 0 = 64 */
    unsigned max_flows;       /* concurrent guest flows; 0 = 1024 (more are refused) */
    unsigned pool_total;      /* idle upstream connections kept in all; 0 = 256 */
    /* Guest-side deadlines (ms); a real client never meets the defaults. */
    unsigned head_ms;      /* first byte of a request to its complete head; 0 = 60000 (408) */
    unsigned keepalive_ms; /* idle between requests on a connection; 0 = 120000 (closed) */
    unsigned body_ms;      /* no request-body progress for this long; 0 = 60000 (408) */
    /* Request bodies: a Content-Length over this, or a longer chunked body, is 413;
     * 0 = 1 TiB. A Content-Length that does not fit 63 bits is 400. */
    uint64_t max_request_body;
    /* Bodies buffered for hooks, summed over every flow of every proxy in the process;
     * a request that would pass it gets 503. 0 = 256 MiB. */
    size_t max_buffer_total;
    /* Host-side name overrides (like curl --resolve): "NAME=ADDR" entries, NULL-ended.
     * Copied. */
    const char *const *resolve;
    void (*on_event)(const struct gd_proxy_event *e, void *ud);
    void *event_ud;
    /* Ingress: this proxy sits in front of a guest service (core/forward), not on the
     * guest's egress; its transactions answer gd_txn_ingress() with 1. */
    int ingress;
    /* Where upstream connections come from instead of resolve + TCP connect (ingress:
     * one end of a socketpair the forward bridges to a guest tunnel). Called after the
     * CONNECT phase allowed the request's host/port; returns a connected stream socket
     * (owned by the proxy from then on) or a negative errno (-> 502). The connection is
     * pooled like any other. dial_addr (borrowed, must outlive the proxy) is what
     * gd_txn_addr() shows in the CONNECT phase and the audit. */
    int (*dial)(void *ud, const char *host, unsigned port);
    void *dial_ud;
    const char *dial_addr;
};

int gd_proxy_new(uv_loop_t *loop, const struct gd_proxy_opts *o, gd_proxy **out);
/* Appends a hook for the phases in `phases` (a mask of gd_phase). name is copied and
 * used when the hook denies without naming a rule. */
int gd_proxy_add_hook(gd_proxy *p, const char *name, unsigned phases, gd_hook_fn fn, void *ud);
/* Closes every flow and pooled connection; cb fires once all handles are gone, after
 * which gd_proxy_free may be called. */
void gd_proxy_close(gd_proxy *p, void (*cb)(gd_proxy *, void *), void *ud);
void gd_proxy_free(gd_proxy *p);

enum gd_flow_kind {
    GD_FLOW_HTTP = 1,  /* plain HTTP/1.x; anything else closes the flow */
    GD_FLOW_TLS = 2,   /* TLS (MITM) carrying HTTP/1.x */
    GD_FLOW_SNIFF = 3, /* first byte decides: 0x16 TLS, else HTTP */
    GD_FLOW_RAW = 4,   /* mapped raw TCP to raw_host:raw_port, after CONNECT hooks */
    GD_FLOW_SSH = 5    /* SSH, terminated by the SSH proxy (ssh/ssh.h), not the HTTP proxy */
};

struct gd_flow_info {
    enum gd_flow_kind kind;
    const char *name;     /* the name the guest resolved to reach this flow, or NULL */
    const char *dst_addr; /* the address the guest dialled (text), or NULL */
    unsigned dst_port;
    const char *raw_host; /* GD_FLOW_RAW: upstream */
    unsigned raw_port;
};

/* Serves one accepted stream socket (unix or TCP); takes ownership of fd, also on error.
 * Strings in info are copied. */
int gd_proxy_serve(gd_proxy *p, int fd, const struct gd_flow_info *info);
/* Flows currently open (tests and stats). */
size_t gd_proxy_flows(const gd_proxy *p);

/* ---- the transaction, for hooks (valid only during the hook call) ---- */

const char *gd_txn_method(const gd_txn *t);
const char *gd_txn_scheme(const gd_txn *t); /* "http", "https", "tcp" */
const char *gd_txn_host(const gd_txn *t);   /* lowercase, no port, no brackets */
unsigned gd_txn_port(const gd_txn *t);
const char *gd_txn_target(const gd_txn *t);    /* origin-form path + query */
const char *gd_txn_addr(const gd_txn *t);      /* CONNECT: the address about to be dialled */
const char *gd_txn_flow_name(const gd_txn *t); /* the guest's DNS name for the flow */
int gd_txn_status(const gd_txn *t);            /* response phases */
int gd_txn_is_websocket(const gd_txn *t);
int gd_txn_ingress(const gd_txn *t); /* 1: a host client toward the guest (ingress proxy) */

/* Headers: resp 0 = request, 1 = response. Names compare case-insensitively. */
size_t gd_txn_header_count(const gd_txn *t, int resp);
void gd_txn_header_at(const gd_txn *t, int resp, size_t i, const char **name, const char **value);
const char *gd_txn_header(const gd_txn *t, int resp, const char *name);
/* Replaces every header called name by one with value (appends if absent); value NULL
 * deletes. Copies. 0 or -ENOMEM. */
int gd_txn_set_header(gd_txn *t, int resp, const char *name, const char *value);
/* Replaces the value of header i (copies). */
int gd_txn_set_header_at(gd_txn *t, int resp, size_t i, const char *value);
/* A new origin-form target, normalised like the guest's (gd_http_normalize_target). */
int gd_txn_set_target(gd_txn *t, const char *target);
/* Phases: request headers and the target change only in REQUEST_HEAD/REQUEST_BODY
 * (before the head goes upstream), response headers only in RESPONSE_HEAD/_BODY, bodies
 * only in their body phase, gd_txn_want_body only in a head phase; the Host header is
 * the decided authority and never changes. Out of phase: -EPERM (want_body ignored). */

/* Decisions. rule names what decided (shown to the guest and audited); reason is one
 * line. Both copied. */
enum gd_decision gd_txn_deny(gd_txn *t, int status, const char *rule, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
enum gd_decision gd_txn_respond(gd_txn *t, int status, const char *content_type, const void *body,
                                size_t n);
/* Adds a header to the synthetic response of gd_txn_respond (copies). -EINVAL for a
 * framing header (Content-Type goes through gd_txn_respond) or CR/LF in name or value. */
int gd_txn_respond_header(gd_txn *t, const char *name, const char *value);
/* Records which rule allowed the exchange (audit). */
void gd_txn_set_rule(gd_txn *t, const char *rule);

/* In a head phase: buffer this body (up to max_body_buffer) for the body phase. */
void gd_txn_want_body(gd_txn *t);
const uint8_t *gd_txn_body(const gd_txn *t, size_t *n);
int gd_txn_set_body(gd_txn *t, const void *p, size_t n);

/* The policy layer's slot: one pointer per transaction, freed with data_free when the
 * transaction ends (after its audit event). Replacing it frees the old one. */
void gd_txn_set_data(gd_txn *t, void *data, void (*data_free)(void *));
void *gd_txn_data(const gd_txn *t);
/* A label for the audit event (borrowed; must outlive the transaction). */
void gd_txn_set_tag(gd_txn *t, const char *tag);
/* The name a denial without a rule is attributed to (borrowed, set by a dispatcher). */
void gd_txn_set_hook_name(gd_txn *t, const char *name);
/* The decision so far: GD_CONTINUE (allowed; *rule is the allowing rule or NULL),
 * GD_DENY or GD_RESPOND with *status, *rule and *reason (borrowed). */
enum gd_decision gd_txn_decision(const gd_txn *t, int *status, const char **rule,
                                 const char **reason);
const uint8_t *gd_txn_respond_body(const gd_txn *t, size_t *n, const char **content_type);

/* ---- request targets (pure functions; what the proxy applies to every request) ---- */

/* Canonical origin-form target: percent-escapes of unreserved characters decoded, the
 * others in upper-case hex, dot segments removed (RFC 3986 §5.2.4), fragment dropped,
 * query kept as sent. "*" stays. -EINVAL for a target that is not "/..." or "*", a bad
 * escape, or a control/space/non-ASCII byte in the path. *out malloc'd. */
int gd_http_normalize_target(const char *in, char **out);
/* Does a normalised target's path carry something servers disagree on: an encoded '/',
 * '\\' or NUL, a raw '\\', or a "..;" segment? Path rules never match such a path. */
int gd_http_path_ambiguous(const char *target);

/* ---- detached transactions: run hooks without a flow (policy test / explain) ---- */

/* A request that never touches the network. Copies. NULL on out of memory. */
gd_txn *gd_txn_new_detached(const char *method, const char *scheme, const char *host, unsigned port,
                            const char *target);
int gd_txn_add_header(gd_txn *t, int resp, const char *name, const char *value);
void gd_txn_set_response(gd_txn *t, int status); /* enters the response phases */
void gd_txn_set_addr(gd_txn *t, const char *addr);
void gd_txn_free_detached(gd_txn *t);

#endif
