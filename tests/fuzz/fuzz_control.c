/* libFuzzer target: the session control protocol's codec (core/control/codec.c), i.e.
 * everything a client (or, for the C client, a supervisor) can send. The input is
 * framed in both directions by the incremental reader, in chunks whose sizes come from
 * the input; each complete frame goes to the parser of its type. The whole input is
 * also given to every JSON parser as one body. */
#include "control/control.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n);

static void parse_body(unsigned type, const uint8_t *b, size_t n, int all)
{
    char why[128], code[32], msg[64];
    struct gd_control_hello h;
    struct gd_control_exec e;
    struct gd_control_xfer x;
    struct gd_control_request q;
    struct gd_control_exit ex;
    unsigned rows, cols;
    long long num;
    cJSON *o = NULL;
    if (all || type == GD_CONTROL_HELLO) {
        gd_control_parse_hello(b, n, &h, why, sizeof(why));
        if (gd_control_parse_server_hello(b, n, &o, why, sizeof(why)) == 0)
            cJSON_Delete(o);
    }
    if ((all || type == GD_CONTROL_EXEC) &&
        gd_control_parse_exec(b, n, &e, why, sizeof(why)) == 0) {
        /* what parses must encode and parse back */
        char *t = gd_control_encode_exec(&e);
        struct gd_control_exec e2;
        if (!t || gd_control_parse_exec(t, strlen(t), &e2, why, sizeof(why)))
            __builtin_trap();
        gd_control_exec_free(&e2);
        free(t);
        gd_control_exec_free(&e);
    }
    if (all || type == GD_CONTROL_RESIZE)
        gd_control_parse_resize(b, n, &rows, &cols, why, sizeof(why));
    if (all || type == GD_CONTROL_SIGNAL)
        gd_control_parse_int(b, n, "signal", 1, 64, &num, why, sizeof(why));
    if ((all || type == GD_CONTROL_PUT) && gd_control_parse_put(b, n, &x, why, sizeof(why)) == 0)
        gd_control_xfer_free(&x);
    if ((all || type == GD_CONTROL_GET) && gd_control_parse_get(b, n, &x, why, sizeof(why)) == 0)
        gd_control_xfer_free(&x);
    if (all || type == GD_CONTROL_REQUEST)
        gd_control_parse_request(b, n, &q, why, sizeof(why));
    if (all || type == GD_CONTROL_STARTED)
        gd_control_parse_int(b, n, "pid", 0, 4294967295LL, &num, why, sizeof(why));
    if (all || type == GD_CONTROL_EXIT)
        gd_control_parse_exit(b, n, &ex, why, sizeof(why));
    if (all || type == GD_CONTROL_ERROR)
        gd_control_parse_error(b, n, code, sizeof(code), msg, sizeof(msg));
    if ((all || type == GD_CONTROL_REPLY) &&
        gd_control_parse_reply(b, n, &o, why, sizeof(why)) == 0)
        cJSON_Delete(o);
    if (!all && (type == GD_CONTROL_WINDOW || type == GD_CONTROL_STDIN_WINDOW))
        (void)gd_control_get_u32(b);
}

static void frames(const uint8_t *d, size_t n, int dir)
{
    struct gd_control_reader r;
    gd_control_reader_init(&r, dir);
    size_t off = 0, step = 1;
    while (off < n) {
        size_t k = n - off < step ? n - off : step, used;
        int rc = gd_control_reader_feed(&r, d + off, k, &used);
        if (used > k)
            __builtin_trap();
        off += used;
        if (rc < 0)
            break;
        if (rc == 1) {
            if (r.h.len > GD_CONTROL_MAX_BODY || r.body[r.h.len] != 0)
                __builtin_trap();
            parse_body(r.h.type, r.body, r.h.len, 0);
        }
        step = step * 3 + (d[off ? off - 1 : 0] & 7); /* varying chunk sizes */
        if (step > 4096)
            step = 1;
    }
    gd_control_reader_free(&r);
}

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n)
{
    frames(d, n, GD_CONTROL_TO_SERVER);
    frames(d, n, GD_CONTROL_TO_CLIENT);
    parse_body(0, d, n, 1);
    return 0;
}
