/* proto.c - encoder/decoder for the control channel. Little-endian on the wire. */
#include "proto.h"

#include <errno.h>
#include <string.h>

static uint16_t rd16(const uint8_t *p)
{
    return (uint16_t)(p[0] | (p[1] << 8));
}
static uint32_t rd32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static void wr16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}
static void wr32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

int gd_hdr_parse(const uint8_t *buf, struct gd_hdr *out)
{
    out->len = rd32(buf);
    out->type = buf[4];
    out->flags = buf[5];
    out->rsvd = rd16(buf + 6);
    out->id = rd32(buf + 8);
    if (out->len > GD_PROTO_MAX_BODY)
        return -EMSGSIZE;
    if (out->type == 0 || out->type > GD_MSG_TYPE_MAX || out->rsvd != 0)
        return -EPROTO;
    return 0;
}

void gd_hdr_write(uint8_t *buf, uint8_t type, uint8_t flags, uint32_t id, uint32_t len)
{
    wr32(buf, len);
    buf[4] = type;
    buf[5] = flags;
    wr16(buf + 6, 0);
    wr32(buf + 8, id);
}

void gd_enc_init(struct gd_enc *e, uint8_t *buf, size_t cap, uint8_t type, uint8_t flags,
                 uint32_t id)
{
    e->buf = buf;
    e->cap = cap;
    e->len = 0;
    e->err = 0;
    if (cap < GD_PROTO_HDR_LEN) {
        e->err = -EMSGSIZE;
        return;
    }
    gd_hdr_write(buf, type, flags, id, 0);
    e->len = GD_PROTO_HDR_LEN;
}

static uint8_t *enc_room(struct gd_enc *e, size_t n)
{
    if (e->err || n > e->cap - e->len) {
        e->err = -EMSGSIZE;
        return NULL;
    }
    uint8_t *p = e->buf + e->len;
    e->len += n;
    return p;
}

void gd_enc_u16(struct gd_enc *e, uint16_t v)
{
    uint8_t *p = enc_room(e, 2);
    if (p)
        wr16(p, v);
}

void gd_enc_u32(struct gd_enc *e, uint32_t v)
{
    uint8_t *p = enc_room(e, 4);
    if (p)
        wr32(p, v);
}

void gd_enc_bytes(struct gd_enc *e, const void *src, size_t n)
{
    uint8_t *p = enc_room(e, n);
    if (p && n)
        memcpy(p, src, n);
}

void gd_enc_str(struct gd_enc *e, const char *s, size_t n)
{
    if (n > GD_PROTO_MAX_STR) {
        e->err = -EMSGSIZE;
        return;
    }
    gd_enc_u32(e, (uint32_t)n);
    gd_enc_bytes(e, s, n);
}

long gd_enc_finish(struct gd_enc *e)
{
    if (e->err)
        return e->err;
    size_t body = e->len - GD_PROTO_HDR_LEN;
    if (body > GD_PROTO_MAX_BODY)
        return -EMSGSIZE;
    wr32(e->buf, (uint32_t)body);
    return (long)e->len;
}

/* Bounded cursor for decoders. */
struct cur {
    const uint8_t *p;
    uint32_t left;
    int err;
};

static int cur_u16(struct cur *c, uint16_t *v)
{
    if (c->err || c->left < 2)
        return c->err = -EBADMSG;
    *v = rd16(c->p);
    c->p += 2;
    c->left -= 2;
    return 0;
}

static int cur_u32(struct cur *c, uint32_t *v)
{
    if (c->err || c->left < 4)
        return c->err = -EBADMSG;
    *v = rd32(c->p);
    c->p += 4;
    c->left -= 4;
    return 0;
}

static int cur_str(struct cur *c, struct gd_str *s)
{
    uint32_t n;
    if (cur_u32(c, &n))
        return c->err;
    if (n > GD_PROTO_MAX_STR || n > c->left)
        return c->err = -EBADMSG;
    s->p = (const char *)c->p;
    s->len = n;
    c->p += n;
    c->left -= n;
    return 0;
}

/* A string that will become a C string must not contain NUL. */
static int str_ok(const struct gd_str *s)
{
    return memchr(s->p, 0, s->len) == NULL;
}

static int cur_end(struct cur *c)
{
    if (c->err)
        return c->err;
    return c->left ? -EBADMSG : 0;
}

int gd_dec_hello(const uint8_t *body, uint32_t len, struct gd_msg_hello *out)
{
    struct cur c = {body, len, 0};
    cur_u16(&c, &out->major);
    cur_u16(&c, &out->minor);
    cur_u32(&c, &out->features);
    cur_str(&c, &out->agent);
    return cur_end(&c);
}

int gd_dec_exec(const uint8_t *body, uint32_t len, struct gd_msg_exec *out, uint32_t cap)
{
    struct cur c = {body, len, 0};
    cur_u32(&c, &out->flags);
    cur_u32(&c, &out->stdout_window);
    cur_u32(&c, &out->stderr_window);
    cur_u16(&c, &out->rows);
    cur_u16(&c, &out->cols);
    if (cur_u32(&c, &out->argc))
        return c.err;
    if (out->argc == 0 || out->argc > GD_PROTO_MAX_ARGS)
        return -EBADMSG;
    if (out->argc > cap)
        return -E2BIG;
    for (uint32_t i = 0; i < out->argc; i++) {
        if (cur_str(&c, &out->argv[i]) || !str_ok(&out->argv[i]))
            return -EBADMSG;
    }
    if (cur_u32(&c, &out->envc))
        return c.err;
    if (out->envc > GD_PROTO_MAX_ARGS)
        return -EBADMSG;
    if (out->envc > cap)
        return -E2BIG;
    for (uint32_t i = 0; i < out->envc; i++) {
        struct gd_str *s = &out->env[i];
        if (cur_str(&c, s) || !str_ok(s) || s->len == 0 || !memchr(s->p, '=', s->len) ||
            s->p[0] == '=')
            return -EBADMSG;
    }
    if (cur_str(&c, &out->cwd) || !str_ok(&out->cwd))
        return -EBADMSG;
    if (out->flags & ~(GD_EXEC_PTY | GD_EXEC_STDIN | GD_EXEC_SHELL | GD_EXEC_CONNECT))
        return -EBADMSG;
    if ((out->flags & GD_EXEC_SHELL) && out->argc != 1)
        return -EBADMSG;
    if (out->flags & GD_EXEC_CONNECT) {
        uint16_t port;
        if ((out->flags & (GD_EXEC_PTY | GD_EXEC_SHELL)) || out->argc != 1 ||
            gd_dec_port(&out->argv[0], &port))
            return -EBADMSG;
    }
    return cur_end(&c);
}

int gd_dec_port(const struct gd_str *s, uint16_t *port)
{
    uint32_t v = 0;
    if (s->len == 0 || s->len > 5)
        return -EBADMSG;
    for (uint32_t i = 0; i < s->len; i++) {
        if (s->p[i] < '0' || s->p[i] > '9')
            return -EBADMSG;
        v = v * 10 + (uint32_t)(s->p[i] - '0');
    }
    if (v == 0 || v > 65535)
        return -EBADMSG;
    *port = (uint16_t)v;
    return 0;
}

int gd_dec_u32(const uint8_t *body, uint32_t len, uint32_t *out)
{
    struct cur c = {body, len, 0};
    cur_u32(&c, out);
    return cur_end(&c);
}

int gd_dec_u32x2(const uint8_t *body, uint32_t len, uint32_t *a, uint32_t *b)
{
    struct cur c = {body, len, 0};
    cur_u32(&c, a);
    cur_u32(&c, b);
    return cur_end(&c);
}

int gd_dec_resume(const uint8_t *body, uint32_t len, struct gd_msg_resume *out)
{
    struct cur c = {body, len, 0};
    uint32_t hi = 0, lo = 0;
    cur_u32(&c, &out->flags);
    cur_u32(&c, &hi);
    cur_u32(&c, &lo);
    if (c.err || (out->flags & ~GD_RESUME_NEW_HOST))
        return -EBADMSG;
    out->realtime_ns = ((uint64_t)hi << 32) | lo;
    uint32_t at = 12;
    out->token = NULL;
    if (out->flags & GD_RESUME_NEW_HOST) {
        if (len < at + GD_RESUME_TOKEN_LEN)
            return -EBADMSG;
        out->token = body + at;
        at += GD_RESUME_TOKEN_LEN;
    }
    out->entropy = body + at;
    out->entropy_len = len - at;
    if (out->entropy_len < GD_RESUME_MIN_ENTROPY || out->entropy_len > GD_RESUME_MAX_ENTROPY)
        return -EBADMSG;
    return 0;
}

int gd_dec_resize(const uint8_t *body, uint32_t len, uint16_t *rows, uint16_t *cols)
{
    struct cur c = {body, len, 0};
    cur_u16(&c, rows);
    cur_u16(&c, cols);
    return cur_end(&c);
}

int gd_dec_exit(const uint8_t *body, uint32_t len, struct gd_msg_exit *out)
{
    struct cur c = {body, len, 0};
    uint32_t code = 0;
    cur_u32(&c, &code);
    cur_u32(&c, &out->signal);
    out->code = (int32_t)code;
    if (cur_end(&c))
        return -EBADMSG;
    if (out->code < 0 || out->code > 255 || out->signal > 127)
        return -EBADMSG;
    return 0;
}

int gd_dec_error(const uint8_t *body, uint32_t len, struct gd_msg_error *out)
{
    struct cur c = {body, len, 0};
    cur_u32(&c, &out->code);
    cur_str(&c, &out->message);
    return cur_end(&c);
}

void gd_reader_init(struct gd_reader *r, uint8_t *buf, size_t cap)
{
    r->buf = buf;
    r->cap = cap;
    r->len = 0;
    r->off = 0;
    r->err = 0;
}

uint8_t *gd_reader_space(struct gd_reader *r, size_t *room)
{
    if (r->off) {
        memmove(r->buf, r->buf + r->off, r->len - r->off);
        r->len -= r->off;
        r->off = 0;
    }
    *room = r->cap - r->len;
    return r->buf + r->len;
}

void gd_reader_commit(struct gd_reader *r, size_t n)
{
    if (n > r->cap - r->len)
        n = r->cap - r->len;
    r->len += n;
}

int gd_reader_next(struct gd_reader *r, struct gd_hdr *hdr, const uint8_t **body)
{
    if (r->err)
        return r->err;
    size_t avail = r->len - r->off;
    if (avail < GD_PROTO_HDR_LEN)
        return 0;
    int rc = gd_hdr_parse(r->buf + r->off, hdr);
    if (rc)
        return r->err = rc;
    if (GD_PROTO_HDR_LEN + (size_t)hdr->len > r->cap)
        return r->err = -EMSGSIZE;
    if (avail < GD_PROTO_HDR_LEN + (size_t)hdr->len)
        return 0;
    *body = r->buf + r->off + GD_PROTO_HDR_LEN;
    r->off += GD_PROTO_HDR_LEN + hdr->len;
    return 1;
}

int gd_reader_skip_to(struct gd_reader *r, const uint8_t *mark, size_t n)
{
    size_t avail = r->len - r->off;
    if (n == 0 || n > 64)
        return 0;
    for (size_t i = 0; i + n <= avail; i++)
        if (r->buf[r->off + i] == mark[0] && !memcmp(r->buf + r->off + i, mark, n)) {
            r->off += i + n;
            return 1;
        }
    if (avail >= n)
        r->off = r->len - (n - 1);
    return 0;
}

const char *gd_msg_type_name(unsigned type)
{
    static const char *const names[] = {
        "?",      "HELLO",  "EXEC", "STARTED", "STDIN", "STDIN_WINDOW", "OUTPUT",   "WINDOW",
        "RESIZE", "SIGNAL", "EXIT", "ERROR",   "PING",  "PONG",         "SHUTDOWN", "RESUME",
    };
    return type <= GD_MSG_TYPE_MAX ? names[type] : "?";
}
