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
    return gd__hdrs_get(resp ? &t->resp : &t->req, name);
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
    t->target = strdup(target);
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
    return gd__buf_add(b, p, n);
}

/* Runs the hooks registered for phase, in order, until one does not continue. */
enum gd_decision gd__run_hooks(gd_proxy *px, gd_txn *t, enum gd_phase ph)
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
