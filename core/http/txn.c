/* txn.c - the transaction API hooks see (gd_txn_*), decisions and the hook chain. */
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

/* ---- transactions ---- */

/* Bytes buffered for hooks by every transaction of every proxy in the process. The
 * loop is single-threaded per proxy, but several proxies may live on several loops. */
static _Atomic size_t buffered_total;

static void account(gd_txn *t)
{
    size_t now = t->reqbody.n + t->respbody.n;
    if (now >= t->buffered)
        buffered_total += now - t->buffered;
    else
        buffered_total -= t->buffered - now;
    t->buffered = now;
}

int gd__budget_spent(const gd_proxy *px)
{
    return buffered_total >= px->o.max_buffer_total;
}

int gd__txn_buffer(gd_txn *t, struct buf *b, const void *p, size_t n)
{
    gd_proxy *px = t->f ? t->f->px : NULL;
    if (px && b->n + n > px->o.max_body_buffer)
        return -E2BIG;
    if (px && buffered_total + n > px->o.max_buffer_total)
        return -ENOBUFS;
    int rc = gd__buf_add(b, p, n);
    account(t);
    return rc;
}

gd_txn *gd__txn_new(struct flow *f)
{
    gd_txn *t = calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    t->f = f;
    t->req_cl = -1;
    t->t0 = gd__now_ns();
    t->decision = "allow";
    return t;
}

void gd__txn_free(gd_txn *t)
{
    if (!t)
        return;
    if (t->data_free)
        t->data_free(t->data);
    free(t->host);
    free(t->dial);
    gd__buf_free(&t->url);
    free(t->target);
    gd__hdrs_free(&t->req);
    gd__hdrs_free(&t->resp);
    gd__buf_free(&t->reason);
    free(t->drule);
    free(t->dreason);
    free(t->dctype);
    gd__buf_free(&t->dbody);
    gd__hdrs_free(&t->dhdrs);
    free(t->allow_rule);
    gd__buf_free(&t->reqbody);
    gd__buf_free(&t->respbody);
    account(t);
    free(t);
}

void gd__emit_event(struct flow *f, gd_txn *t)
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
        .ms = (double)(gd__now_ns() - t->t0) / 1e6,
        .tag = t->tag,
        .ingress = gd_txn_ingress(t),
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
int gd_txn_ingress(const gd_txn *t)
{
    return t->f && t->f->px->o.ingress;
}

/* The phase a hook call runs in. A detached transaction (policy test) is in its request
 * phases until gd_txn_set_response. */
static enum gd_phase phase_of(const gd_txn *t)
{
    if (t->phase)
        return t->phase;
    if (!t->f)
        return t->status ? GD_PHASE_RESPONSE_HEAD : GD_PHASE_REQUEST_HEAD;
    return 0;
}

/* May a hook change the request (resp 0) or response (resp 1) head now? */
static int head_writable(const gd_txn *t, int resp)
{
    enum gd_phase ph = phase_of(t);
    if (resp)
        return ph == GD_PHASE_RESPONSE_HEAD || ph == GD_PHASE_RESPONSE_BODY;
    return ph == GD_PHASE_REQUEST_HEAD || ph == GD_PHASE_REQUEST_BODY;
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
    return gd__hdrs_get(resp ? &t->resp : &t->req, name);
}

/* A header a hook may write: a token name, a value without CR, LF or NUL. */
static int header_ok(const char *name, const char *value)
{
    return gd__token(name) && (!value || !strpbrk(value, "\r\n"));
}

int gd_txn_set_header(gd_txn *t, int resp, const char *name, const char *value)
{
    struct hdrs *h = resp ? &t->resp : &t->req;
    if (!header_ok(name, value))
        return -EINVAL;
    if (!head_writable(t, resp) || (!resp && !strcasecmp(name, "host")))
        return -EPERM; /* Host is the authority policy decided on */
    for (size_t i = h->n; i-- > 0;)
        if (!strcasecmp(h->v[i].name, name))
            gd__hdrs_del(h, i);
    if (!value)
        return 0;
    char *n = strdup(name), *v = strdup(value);
    if (!n || !v || gd__hdrs_push(h, n, v)) {
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
    if (!head_writable(t, resp) || (!resp && !strcasecmp(h->v[i].name, "host")))
        return -EPERM;
    char *v = strdup(value);
    if (!v)
        return -ENOMEM;
    free(h->v[i].value);
    h->v[i].value = v;
    return 0;
}

int gd_txn_set_target(gd_txn *t, const char *target)
{
    if (!head_writable(t, 0))
        return -EPERM;
    if (!strcmp(target, "*") || strpbrk(target, " \t\r\n"))
        return -EINVAL;
    char *d;
    int rc = gd_http_normalize_target(target, &d);
    if (rc)
        return rc;
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
    gd__buf_add(&t->dbody, body ? body : "", body ? n : 0);
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
    if (!n || !v || gd__hdrs_push(&t->dhdrs, n, v)) {
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
    gd_txn *t = gd__txn_new(NULL);
    if (!t)
        return NULL;
    snprintf(t->method, sizeof(t->method), "%s", method);
    snprintf(t->scheme, sizeof(t->scheme), "%s", scheme);
    t->host = strdup(host);
    if (gd_http_normalize_target(target, &t->target))
        t->target = strdup(target); /* shown as given; a guest could not have sent it */
    t->port = port;
    if (!t->host || !t->target) {
        gd__txn_free(t);
        return NULL;
    }
    for (char *c = t->host; *c; c++)
        *c = (char)tolower((unsigned char)*c);
    return t;
}

int gd_txn_add_header(gd_txn *t, int resp, const char *name, const char *value)
{
    char *n = strdup(name), *v = strdup(value);
    if (!n || !v || gd__hdrs_push(resp ? &t->resp : &t->req, n, v)) {
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
    gd__txn_free(t);
}

void gd_txn_want_body(gd_txn *t)
{
    enum gd_phase ph = phase_of(t);
    if (ph == GD_PHASE_RESPONSE_HEAD)
        t->want_resp_body = 1;
    else if (ph == GD_PHASE_REQUEST_HEAD)
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
    enum gd_phase ph = phase_of(t);
    if (ph != GD_PHASE_REQUEST_BODY && ph != GD_PHASE_RESPONSE_BODY && t->f)
        return -EPERM;
    struct buf *b = t->status ? &t->respbody : &t->reqbody;
    gd_proxy *px = t->f ? t->f->px : NULL;
    if (px && n > b->n && buffered_total + (n - b->n) > px->o.max_buffer_total)
        return -ENOBUFS;
    b->n = 0;
    int rc = gd__buf_add(b, p, n);
    account(t);
    return rc;
}

/* Forgets a CONNECT-phase denial of one address before the next is tried. */
void gd__txn_undeny(gd_txn *t)
{
    t->denied = 0;
    t->decision = "allow";
}

/* Runs the hooks registered for phase, in order, until one does not continue. */
enum gd_decision gd__run_hooks(gd_proxy *px, gd_txn *t, enum gd_phase ph)
{
    for (size_t i = 0; i < px->nhooks; i++) {
        struct hook *h = &px->hooks[i];
        if (!(h->phases & ph))
            continue;
        t->hook_name = h->name;
        t->phase = ph;
        enum gd_decision d = h->fn(t, ph, h->ud);
        t->phase = 0;
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
