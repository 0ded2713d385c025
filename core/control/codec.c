/* codec.c - the control protocol's frames and JSON messages (docs/control.md). Pure
 * functions: no I/O, every length checked, so they can be fuzzed. */
#define _GNU_SOURCE
#include "control.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum body { B_JSON, B_BYTES, B_U32, B_U32X2, B_EMPTY };

struct type_info {
    const char *name;
    unsigned dirs; /* bit 1 << GD_CONTROL_TO_SERVER / TO_CLIENT */
    enum body body;
    uint32_t max;   /* B_BYTES: largest body */
    unsigned flags; /* the flag bits allowed */
    int need_id;    /* a request id (nonzero) is required */
};

#define S (1u << GD_CONTROL_TO_SERVER)
#define C (1u << GD_CONTROL_TO_CLIENT)
static const struct type_info types[GD_CONTROL_TYPE_MAX + 1] = {
    [GD_CONTROL_HELLO] = {"HELLO", S | C, B_JSON, 0, 0, 0},
    [GD_CONTROL_EXEC] = {"EXEC", S, B_JSON, 0, 0, 1},
    [GD_CONTROL_STARTED] = {"STARTED", C, B_JSON, 0, 0, 1},
    [GD_CONTROL_STDIN] = {"STDIN", S, B_BYTES, GD_CONTROL_MAX_BODY, GD_CONTROL_STDIN_EOF, 1},
    [GD_CONTROL_STDIN_WINDOW] = {"STDIN_WINDOW", C, B_U32, 0, 0, 1},
    [GD_CONTROL_OUTPUT] = {"OUTPUT", C, B_BYTES, GD_CONTROL_MAX_CHUNK, 3, 1},
    [GD_CONTROL_WINDOW] = {"WINDOW", S, B_U32X2, 0, 0, 1},
    [GD_CONTROL_RESIZE] = {"RESIZE", S, B_JSON, 0, 0, 1},
    [GD_CONTROL_SIGNAL] = {"SIGNAL", S, B_JSON, 0, 0, 1},
    [GD_CONTROL_EXIT] = {"EXIT", C, B_JSON, 0, 0, 1},
    [GD_CONTROL_ERROR] = {"ERROR", C, B_JSON, 0, 0, 0},
    [GD_CONTROL_PUT] = {"PUT", S, B_JSON, 0, 0, 1},
    [GD_CONTROL_GET] = {"GET", S, B_JSON, 0, 0, 1},
    [GD_CONTROL_REQUEST] = {"REQUEST", S, B_JSON, 0, 0, 1},
    [GD_CONTROL_REPLY] = {"REPLY", C, B_JSON, 0, 0, 1},
    [GD_CONTROL_LOG] = {"LOG", C, B_BYTES, GD_CONTROL_MAX_BODY, 0, 1},
    [GD_CONTROL_CANCEL] = {"CANCEL", S, B_EMPTY, 0, 0, 1},
};
#undef S
#undef C

uint32_t gd_control_get_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

void gd_control_put_u32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

void gd_control_hdr_write(uint8_t out[12], unsigned type, unsigned flags, uint32_t id, uint32_t len)
{
    gd_control_put_u32(out, len);
    out[4] = (uint8_t)type;
    out[5] = (uint8_t)flags;
    out[6] = out[7] = 0;
    gd_control_put_u32(out + 8, id);
}

const char *gd_control_type_name(unsigned type)
{
    return type && type <= GD_CONTROL_TYPE_MAX ? types[type].name : "unknown";
}

int gd_control_type_json(unsigned type)
{
    return type && type <= GD_CONTROL_TYPE_MAX && types[type].body == B_JSON;
}

int gd_control_hdr_parse(const uint8_t in[12], int dir, struct gd_control_hdr *h, const char **why)
{
    h->len = gd_control_get_u32(in);
    h->type = in[4];
    h->flags = in[5];
    h->reserved = (uint16_t)(in[6] | in[7] << 8);
    h->id = gd_control_get_u32(in + 8);
    const char *w = NULL;
    int rc = -EPROTO;
    const struct type_info *t = h->type && h->type <= GD_CONTROL_TYPE_MAX ? &types[h->type] : NULL;
    if (!t || !(t->dirs & (1u << dir)))
        w = "unknown message type";
    else if (h->reserved)
        w = "nonzero reserved field";
    else if (h->flags & ~t->flags ||
             (h->type == GD_CONTROL_OUTPUT && h->flags != 1 && h->flags != 2))
        w = "bad flags";
    else if (t->need_id && !h->id)
        w = "request id 0";
    else if (h->len > GD_CONTROL_MAX_BODY || (t->body == B_JSON && h->len > GD_CONTROL_MAX_JSON) ||
             (t->body == B_BYTES && h->len > t->max)) {
        w = "frame too large";
        rc = -EMSGSIZE;
    } else if ((t->body == B_U32 && h->len != 4) || (t->body == B_U32X2 && h->len != 8) ||
               (t->body == B_EMPTY && h->len != 0) || (t->body == B_JSON && h->len == 0))
        w = "body of the wrong size";
    else
        rc = 0;
    if (why)
        *why = w;
    return rc;
}

void gd_control_reader_init(struct gd_control_reader *r, int dir)
{
    memset(r, 0, sizeof(*r));
    r->dir = dir;
}

void gd_control_reader_free(struct gd_control_reader *r)
{
    free(r->body);
    r->body = NULL;
    r->cap = 0;
}

int gd_control_reader_feed(struct gd_control_reader *r, const uint8_t *p, size_t n, size_t *used)
{
    size_t off = 0;
    *used = 0;
    if (r->why)
        return -EPROTO;
    if (r->have) { /* the previous frame is released */
        r->have = 0;
        r->hlen = 0;
        r->blen = 0;
        if (r->cap > 2 * GD_CONTROL_MAX_CHUNK) { /* do not keep a large buffer idle */
            free(r->body);
            r->body = NULL;
            r->cap = 0;
        }
    }
    if (r->hlen < GD_CONTROL_HDR_LEN) {
        size_t k = GD_CONTROL_HDR_LEN - r->hlen;
        if (k > n)
            k = n;
        memcpy(r->hb + r->hlen, p, k);
        r->hlen += k;
        off += k;
        if (r->hlen < GD_CONTROL_HDR_LEN) {
            *used = off;
            return 0;
        }
        int rc = gd_control_hdr_parse(r->hb, r->dir, &r->h, &r->why);
        if (rc) {
            *used = off;
            return rc;
        }
        if (r->cap < r->h.len + 1) {
            size_t cap = r->h.len + 1 < 4096 ? 4096 : r->h.len + 1;
            uint8_t *b = realloc(r->body, cap);
            if (!b) {
                r->why = "out of memory";
                *used = off;
                return -ENOMEM;
            }
            r->body = b;
            r->cap = cap;
        }
    }
    size_t k = r->h.len - r->blen;
    if (k > n - off)
        k = n - off;
    memcpy(r->body + r->blen, p + off, k);
    r->blen += k;
    off += k;
    *used = off;
    if (r->blen < r->h.len)
        return 0;
    r->body[r->blen] = 0;
    r->have = 1;
    return 1;
}

/* ---- JSON ---- */

static int bad(char *why, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int bad(char *why, size_t cap, const char *fmt, ...)
{
    if (why && cap) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(why, cap, fmt, ap);
        va_end(ap);
    }
    return -EBADMSG;
}

static cJSON *parse_obj(const void *b, size_t n, char *why, size_t cap)
{
    /* a NUL-terminated copy: cJSON's parser then never looks past the body */
    cJSON *doc = NULL;
    char *t = n && n <= GD_CONTROL_MAX_JSON && !memchr(b, 0, n) ? malloc(n + 1) : NULL;
    if (t) {
        memcpy(t, b, n);
        t[n] = 0;
        const char *end = NULL;
        doc = cJSON_ParseWithOpts(t, &end, 0);
        while (doc && end && (*end == ' ' || *end == '\t' || *end == '\n' || *end == '\r'))
            end++;
        if (doc && (!end || *end || !cJSON_IsObject(doc))) {
            cJSON_Delete(doc);
            doc = NULL;
        }
        free(t);
    }
    if (!doc)
        bad(why, cap, "%s", "the body is not one JSON object");
    return doc;
}

/* An optional integer field in [min, max]: 1 present, 0 absent, -1 bad. */
static int get_int(const cJSON *o, const char *k, double min, double max, long long *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    if (!v || cJSON_IsNull(v))
        return 0;
    /* in range first: then the cast is defined, and integral means it round-trips */
    if (!cJSON_IsNumber(v) || !(v->valuedouble >= min && v->valuedouble <= max) ||
        (double)(long long)v->valuedouble != v->valuedouble)
        return -1;
    *out = (long long)v->valuedouble;
    return 1;
}

static int get_bool(const cJSON *o, const char *k, int *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    if (!v || cJSON_IsNull(v))
        return 0;
    if (!cJSON_IsBool(v))
        return -1;
    *out = cJSON_IsTrue(v);
    return 1;
}

static int get_str(const cJSON *o, const char *k, const char **out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    if (!v || cJSON_IsNull(v))
        return 0;
    if (!cJSON_IsString(v) || !v->valuestring)
        return -1;
    *out = v->valuestring;
    return 1;
}

/* "window": absent or 0 = the default, more than 16 MiB = 16 MiB. */
static int get_window(const cJSON *d, uint32_t *out, char *why, size_t cap)
{
    long long v;
    int r = get_int(d, "window", 0, 4294967295.0, &v);
    if (r < 0)
        return bad(why, cap, "\"%s\" must be a byte count", "window");
    *out = !r || !v                    ? GD_CONTROL_DEFAULT_WINDOW
           : v > GD_CONTROL_MAX_CREDIT ? GD_CONTROL_MAX_CREDIT
                                       : (uint32_t)v;
    return 0;
}

int gd_control_parse_hello(const void *b, size_t n, struct gd_control_hello *o, char *why,
                           size_t cap)
{
    memset(o, 0, sizeof(*o));
    cJSON *d = parse_obj(b, n, why, cap);
    if (!d)
        return -EBADMSG;
    long long v;
    const char *cl = NULL;
    int rc = 0;
    if (get_int(d, "version", 0, 1e9, &v) != 1)
        rc = bad(why, cap, "HELLO needs an integer \"%s\"", "version");
    else if (get_str(d, "client", &cl) < 0)
        rc = bad(why, cap, "\"%s\" must be a string", "client");
    else {
        o->version = (int)v;
        snprintf(o->client, sizeof(o->client), "%s", cl ? cl : "");
    }
    cJSON_Delete(d);
    return rc;
}

/* A NULL-ended array of the strings of a JSON array (pointers into it). */
static int str_array(const cJSON *a, const char ***out, int need_eq)
{
    int n = cJSON_GetArraySize(a);
    if (!cJSON_IsArray(a) || n > GD_CONTROL_MAX_ARGS)
        return -1;
    const char **v = calloc((size_t)n + 1, sizeof(*v));
    if (!v)
        return -1;
    int i = 0;
    for (const cJSON *x = a->child; x; x = x->next) {
        if (!cJSON_IsString(x) || !x->valuestring ||
            (need_eq && (x->valuestring[0] == '=' || !strchr(x->valuestring, '=')))) {
            free(v);
            return -1;
        }
        v[i++] = x->valuestring;
    }
    *out = v;
    return 0;
}

void gd_control_exec_free(struct gd_control_exec *o)
{
    free(o->argv);
    free(o->env);
    cJSON_Delete(o->doc);
    memset(o, 0, sizeof(*o));
}

int gd_control_parse_exec(const void *b, size_t n, struct gd_control_exec *o, char *why, size_t cap)
{
    memset(o, 0, sizeof(*o));
    cJSON *d = parse_obj(b, n, why, cap);
    if (!d)
        return -EBADMSG;
    o->doc = d;
    const cJSON *av = cJSON_GetObjectItemCaseSensitive(d, "argv");
    const cJSON *ev = cJSON_GetObjectItemCaseSensitive(d, "env");
    long long v;
    int r;
    if (get_str(d, "shell", &o->shell) < 0)
        goto bad_shell;
    if (av && !cJSON_IsNull(av)) {
        if (o->shell || str_array(av, &o->argv, 0) || !o->argv[0]) {
            bad(why, cap, "\"%s\" must be a nonempty array of strings (and no \"shell\")", "argv");
            goto fail;
        }
    } else if (!o->shell) {
        bad(why, cap, "EXEC needs \"argv\" or \"%s\"", "shell");
        goto fail;
    }
    if (ev && !cJSON_IsNull(ev) && str_array(ev, &o->env, 1)) {
        bad(why, cap, "\"%s\" must be an array of \"K=V\" strings", "env");
        goto fail;
    }
    if (get_str(d, "cwd", &o->cwd) < 0) {
        bad(why, cap, "\"%s\" must be a string", "cwd");
        goto fail;
    }
    if (get_bool(d, "pty", &o->pty) < 0 || get_bool(d, "stdin", &o->stdin_stream) < 0) {
        bad(why, cap, "\"%s\" must be booleans", "pty\" and \"stdin");
        goto fail;
    }
    o->rows = 24;
    o->cols = 80;
    if ((r = get_int(d, "rows", 1, 65535, &v)) < 0)
        goto bad_size;
    if (r)
        o->rows = (unsigned)v;
    if ((r = get_int(d, "cols", 1, 65535, &v)) < 0)
        goto bad_size;
    if (r)
        o->cols = (unsigned)v;
    if (get_window(d, &o->window, why, cap))
        goto fail;
    return 0;
bad_shell:
    bad(why, cap, "\"%s\" must be a string", "shell");
    goto fail;
bad_size:
    bad(why, cap, "\"%s\" must be integers from 1 to 65535", "rows\" and \"cols");
fail:
    gd_control_exec_free(o);
    return -EBADMSG;
}

int gd_control_parse_resize(const void *b, size_t n, unsigned *rows, unsigned *cols, char *why,
                            size_t cap)
{
    cJSON *d = parse_obj(b, n, why, cap);
    if (!d)
        return -EBADMSG;
    long long r, c;
    int rc = 0;
    if (get_int(d, "rows", 1, 65535, &r) != 1 || get_int(d, "cols", 1, 65535, &c) != 1)
        rc = bad(why, cap, "RESIZE needs %s from 1 to 65535", "\"rows\" and \"cols\"");
    else {
        *rows = (unsigned)r;
        *cols = (unsigned)c;
    }
    cJSON_Delete(d);
    return rc;
}

int gd_control_parse_int(const void *b, size_t n, const char *k, long long min, long long max,
                         long long *out, char *why, size_t cap)
{
    cJSON *d = parse_obj(b, n, why, cap);
    if (!d)
        return -EBADMSG;
    int rc = get_int(d, k, (double)min, (double)max, out) == 1
                 ? 0
                 : bad(why, cap, "\"%s\" must be an integer from %lld to %lld", k, min, max);
    cJSON_Delete(d);
    return rc;
}

void gd_control_xfer_free(struct gd_control_xfer *o)
{
    free(o->path);
    memset(o, 0, sizeof(*o));
}

static int parse_xfer(const void *b, size_t n, struct gd_control_xfer *o, int get, char *why,
                      size_t cap)
{
    memset(o, 0, sizeof(*o));
    cJSON *d = parse_obj(b, n, why, cap);
    if (!d)
        return -EBADMSG;
    const char *p = NULL;
    long long v;
    int r, rc = -EBADMSG;
    if (get_str(d, "path", &p) != 1 || !p[0]) {
        bad(why, cap, "%s needs a nonempty \"path\"", get ? "GET" : "PUT");
        goto out;
    }
    if (get_bool(d, "tar", &o->tar) < 0) {
        bad(why, cap, "\"%s\" must be a boolean", "tar");
        goto out;
    }
    if (get) {
        if (get_window(d, &o->window, why, cap))
            goto out;
    } else {
        if ((r = get_int(d, "mode", 0, 07777, &v)) < 0) {
            bad(why, cap, "\"%s\" must be a number from 0 to 4095 (07777)", "mode");
            goto out;
        }
        o->has_mode = r;
        o->mode = r ? (unsigned)v : 0;
        if ((r = get_int(d, "mtime", -9007199254740991.0, 9007199254740991.0, &v)) < 0) {
            bad(why, cap, "\"%s\" must be an integer (unix seconds)", "mtime");
            goto out;
        }
        o->has_mtime = r;
        o->mtime = r ? v : 0;
    }
    o->path = strdup(p);
    rc = o->path ? 0 : -ENOMEM;
out:
    cJSON_Delete(d);
    return rc;
}

int gd_control_parse_put(const void *b, size_t n, struct gd_control_xfer *o, char *why, size_t cap)
{
    return parse_xfer(b, n, o, 0, why, cap);
}

int gd_control_parse_get(const void *b, size_t n, struct gd_control_xfer *o, char *why, size_t cap)
{
    return parse_xfer(b, n, o, 1, why, cap);
}

int gd_control_parse_request(const void *b, size_t n, struct gd_control_request *o, char *why,
                             size_t cap)
{
    memset(o, 0, sizeof(*o));
    o->lines = 100;
    cJSON *d = parse_obj(b, n, why, cap);
    if (!d)
        return -EBADMSG;
    const char *op = NULL, *listen = NULL, *user = NULL, *path = NULL, *exp = NULL;
    long long v;
    int r, rc = -EBADMSG;
    if (get_str(d, "op", &op) != 1) {
        bad(why, cap, "REQUEST needs a string \"%s\"", "op");
        goto out;
    }
    if (get_bool(d, "follow", &o->follow) < 0 || get_bool(d, "force", &o->force) < 0 ||
        get_bool(d, "raw", &o->raw) < 0 || get_bool(d, "whiteouts", &o->whiteouts) < 0 ||
        get_bool(d, "memory", &o->memory) < 0 || get_bool(d, "stop", &o->stop) < 0) {
        bad(why, cap, "%s must be booleans",
            "\"follow\", \"force\", \"raw\", \"whiteouts\", \"memory\", \"stop\"");
        goto out;
    }
    if ((r = get_int(d, "lines", 0, 100000, &v)) < 0) {
        bad(why, cap, "\"%s\" must be a number from 0 to 100000", "lines");
        goto out;
    }
    if (r)
        o->lines = (unsigned)v;
    if ((r = get_int(d, "guest_port", 1, 65535, &v)) < 0) {
        bad(why, cap, "\"%s\" must be a port number", "guest_port");
        goto out;
    }
    o->guest_port = r ? (unsigned)v : 0;
    if (get_str(d, "listen", &listen) < 0 || get_str(d, "user", &user) < 0) {
        bad(why, cap, "%s must be strings", "\"listen\" and \"user\"");
        goto out;
    }
    if ((listen && strlen(listen) >= sizeof(o->listen)) ||
        (user && strlen(user) >= sizeof(o->user))) {
        bad(why, cap, "%s too long", "\"listen\" or \"user\"");
        goto out;
    }
    if (get_str(d, "path", &path) < 0 || get_str(d, "export", &exp) < 0 ||
        (path && strlen(path) >= sizeof(o->path)) || (exp && strlen(exp) >= sizeof(o->export_))) {
        bad(why, cap, "%s must be strings of at most 1023 bytes", "\"path\" and \"export\"");
        goto out;
    }
    const char *name = NULL, *output = NULL;
    if (get_str(d, "name", &name) < 0 || get_str(d, "output", &output) < 0 ||
        (name && strlen(name) >= sizeof(o->name)) ||
        (output && strlen(output) >= sizeof(o->output))) {
        bad(why, cap, "%s must be strings of at most 127 and 1023 bytes",
            "\"name\" and \"output\"");
        goto out;
    }
    snprintf(o->name, sizeof(o->name), "%s", name ? name : "");
    snprintf(o->output, sizeof(o->output), "%s", output ? output : "");
    snprintf(o->path, sizeof(o->path), "%s", path ? path : "");
    snprintf(o->export_, sizeof(o->export_), "%s", exp ? exp : "");
    snprintf(o->op, sizeof(o->op), "%s", op);
    snprintf(o->listen, sizeof(o->listen), "%s", listen ? listen : "");
    snprintf(o->user, sizeof(o->user), "%s", user ? user : "");
    rc = 0;
out:
    cJSON_Delete(d);
    return rc;
}

int gd_control_parse_exit(const void *b, size_t n, struct gd_control_exit *o, char *why, size_t cap)
{
    memset(o, 0, sizeof(*o));
    cJSON *d = parse_obj(b, n, why, cap);
    if (!d)
        return -EBADMSG;
    long long c, s = 0;
    const char *e = NULL;
    int rc = 0;
    if (get_int(d, "exit_code", 0, 255, &c) != 1 || get_int(d, "signal", 0, 64, &s) < 0 ||
        get_str(d, "error", &e) < 0)
        rc = bad(why, cap, "EXIT needs \"%s\" from 0 to 255", "exit_code");
    else {
        o->exit_code = (int)c;
        o->signal = (int)s;
        snprintf(o->error, sizeof(o->error), "%s", e ? e : "");
    }
    cJSON_Delete(d);
    return rc;
}

int gd_control_parse_error(const void *b, size_t n, char *code, size_t ccap, char *msg, size_t mcap)
{
    cJSON *d = parse_obj(b, n, NULL, 0);
    if (!d)
        return -EBADMSG;
    const char *c = NULL, *m = NULL;
    int rc = 0;
    if (get_str(d, "code", &c) != 1 || get_str(d, "message", &m) < 0)
        rc = -EBADMSG;
    else {
        snprintf(code, ccap, "%s", c);
        snprintf(msg, mcap, "%s", m ? m : "");
    }
    cJSON_Delete(d);
    return rc;
}

int gd_control_parse_server_hello(const void *b, size_t n, cJSON **out, char *why, size_t cap)
{
    cJSON *d = parse_obj(b, n, why, cap);
    if (!d)
        return -EBADMSG;
    long long v;
    if (get_int(d, "version", 0, 1e9, &v) != 1 ||
        !cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(d, "session"))) {
        cJSON_Delete(d);
        return bad(why, cap, "HELLO needs \"version\" and a \"%s\" object", "session");
    }
    *out = d;
    return 0;
}

int gd_control_parse_reply(const void *b, size_t n, cJSON **out, char *why, size_t cap)
{
    cJSON *d = parse_obj(b, n, why, cap);
    if (!d)
        return -EBADMSG;
    int ok;
    if (get_bool(d, "ok", &ok) != 1) {
        cJSON_Delete(d);
        return bad(why, cap, "REPLY needs a boolean \"%s\"", "ok");
    }
    *out = d;
    return 0;
}

/* ---- encoders ---- */

void gd_control_json_str(cJSON *o, const char *k, const char *v)
{
    if (v && v[0])
        cJSON_AddStringToObject(o, k, v);
    else
        cJSON_AddNullToObject(o, k);
}

char *gd_control_encode_json(cJSON *obj)
{
    if (!obj)
        return NULL;
    char *s = cJSON_PrintUnformatted(obj);
    cJSON_Delete(obj);
    return s;
}

char *gd_control_encode_hello(const char *client)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "version", GD_CONTROL_VERSION);
    cJSON_AddStringToObject(o, "client", client ? client : "");
    return gd_control_encode_json(o);
}

static void add_strv(cJSON *o, const char *k, const char *const *v)
{
    cJSON *a = cJSON_AddArrayToObject(o, k);
    for (; v && *v; v++)
        cJSON_AddItemToArray(a, cJSON_CreateString(*v));
}

char *gd_control_encode_exec(const struct gd_control_exec *x)
{
    cJSON *o = cJSON_CreateObject();
    if (x->shell)
        cJSON_AddStringToObject(o, "shell", x->shell);
    else
        add_strv(o, "argv", x->argv);
    if (x->env)
        add_strv(o, "env", x->env);
    if (x->cwd)
        cJSON_AddStringToObject(o, "cwd", x->cwd);
    cJSON_AddBoolToObject(o, "pty", x->pty);
    if (x->rows && x->cols) {
        cJSON_AddNumberToObject(o, "rows", x->rows);
        cJSON_AddNumberToObject(o, "cols", x->cols);
    }
    cJSON_AddBoolToObject(o, "stdin", x->stdin_stream);
    if (x->window)
        cJSON_AddNumberToObject(o, "window", x->window);
    return gd_control_encode_json(o);
}

char *gd_control_encode_exit(int exit_code, int sig, const char *error)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "exit_code", exit_code);
    if (sig)
        cJSON_AddNumberToObject(o, "signal", sig);
    if (error)
        cJSON_AddStringToObject(o, "error", error);
    return gd_control_encode_json(o);
}

char *gd_control_encode_error(const char *code, const char *message)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "code", code);
    cJSON_AddStringToObject(o, "message", message ? message : "");
    return gd_control_encode_json(o);
}

char *gd_control_encode_xfer(const struct gd_control_xfer *x, int get)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "path", x->path);
    cJSON_AddBoolToObject(o, "tar", x->tar);
    if (get && x->window)
        cJSON_AddNumberToObject(o, "window", x->window);
    if (!get && x->has_mode)
        cJSON_AddNumberToObject(o, "mode", x->mode);
    if (!get && x->has_mtime)
        cJSON_AddNumberToObject(o, "mtime", (double)x->mtime);
    return gd_control_encode_json(o);
}
