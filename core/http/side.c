/* side.c - byte plumbing shared by flows and upstreams: growable buffers, header lists,
 * streams with optional TLS over memory BIOs. */
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

/* ---- small pieces ---- */

int gd__buf_add(struct buf *b, const void *p, size_t n)
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

int gd__buf_printf(struct buf *b, const char *fmt, ...)
{
    char tmp[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n < 0)
        return -EINVAL;
    if ((size_t)n < sizeof(tmp))
        return gd__buf_add(b, tmp, (size_t)n);
    char *big = malloc((size_t)n + 1);
    if (!big)
        return -ENOMEM;
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    int rc = gd__buf_add(b, big, (size_t)n);
    free(big);
    return rc;
}

void gd__buf_free(struct buf *b)
{
    free(b->p);
    memset(b, 0, sizeof(*b));
}

uint64_t gd__now_ns(void)
{
    return uv_hrtime();
}

int gd__hdrs_push(struct hdrs *h, char *name, char *value)
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

void gd__hdrs_del(struct hdrs *h, size_t i)
{
    free(h->v[i].name);
    free(h->v[i].value);
    memmove(h->v + i, h->v + i + 1, (h->n - i - 1) * sizeof(*h->v));
    h->n--;
}

void gd__hdrs_free(struct hdrs *h)
{
    for (size_t i = 0; i < h->n; i++) {
        free(h->v[i].name);
        free(h->v[i].value);
    }
    free(h->v);
    memset(h, 0, sizeof(*h));
}

const char *gd__hdrs_get(const struct hdrs *h, const char *name)
{
    for (size_t i = 0; i < h->n; i++)
        if (!strcasecmp(h->v[i].name, name))
            return h->v[i].value;
    return NULL;
}

/* Does a comma-separated header value contain token (case-insensitive)? */
int gd__has_token(const char *v, const char *tok)
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
const char *gd__reason_phrase(int s)
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
    case 408:
        return "Request Timeout";
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

/* ---- side: stream + optional TLS ---- */

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
    if (uv_write(&r->w, &s->u.s, &b, 1, gd__on_side_write))
        free(r);
}

void gd__side_flush_tls(struct side *s, void *owner)
{
    char tmp[16384];
    int n;
    while ((n = BIO_read(s->wb, tmp, sizeof(tmp))) > 0)
        side_raw_write(s, tmp, (size_t)n, owner);
}

void gd__side_write(struct side *s, const void *p, size_t n, void *owner)
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
    gd__side_flush_tls(s, owner);
}

size_t gd__side_queued(const struct side *s)
{
    return s->open ? uv_stream_get_write_queue_size(&s->u.s) : 0;
}

int gd__side_tls_init(struct side *s, SSL *ssl)
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

void gd__side_tls_free(struct side *s)
{
    if (s->ssl)
        SSL_free(s->ssl);
    s->ssl = NULL;
    s->rb = s->wb = NULL;
}

void gd__alloc_cb(uv_handle_t *h, size_t sz, uv_buf_t *b)
{
    (void)h;
    (void)sz;
    b->base = malloc(READ_CHUNK);
    b->len = b->base ? READ_CHUNK : 0;
}

/* ---- header fields from llhttp (request and response parsers) ---- */

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

int gd__on_hdr_field(llhttp_t *p, const char *at, size_t n, struct hdrs *h, gd_txn *t,
                     size_t max_headers)
{
    (void)p;
    if (t->last_was_value || !h->n) {
        if (h->n >= max_headers)
            return -1;
        char *name = strndup(at, n), *value = strdup("");
        if (!name || !value || gd__hdrs_push(h, name, value)) {
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

int gd__on_hdr_value(const char *at, size_t n, struct hdrs *h, gd_txn *t)
{
    if (!h->n || str_append(&h->v[h->n - 1].value, at, n))
        return -1;
    t->last_was_value = 1;
    return 0;
}
