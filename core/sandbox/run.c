/* run.c - a guest command run to completion for the sandbox's own setup steps: stdin
 * from a buffer, stdout and stderr collected (bounded), one callback with the result. */
#define _GNU_SOURCE
#include "sandbox_int.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define RUN_OUT_CAP 4096

struct run {
    gd_sandbox *sb;
    gd_exec *x;
    uint8_t *in;
    size_t in_len, in_off;
    char out[RUN_OUT_CAP + 1], err[RUN_OUT_CAP + 1];
    size_t nout, nerr;
    gd__run_cb cb;
    void *ud;
};

static void feed(struct run *r)
{
    if (!r->x || r->in_off > r->in_len)
        return;
    long k = gd_exec_write(r->x, r->in + r->in_off, r->in_len - r->in_off, 1);
    if (k < 0) {
        r->in_off = r->in_len + 1; /* gone: the exit reports */
        return;
    }
    r->in_off += (size_t)k;
    if (r->in_off == r->in_len)
        r->in_off = r->in_len + 1; /* EOF went with the last byte */
}

static void on_out(gd_exec *x, int stream, const uint8_t *d, size_t n, void *ud)
{
    (void)x;
    struct run *r = ud;
    char *buf = stream == 2 ? r->err : r->out;
    size_t *len = stream == 2 ? &r->nerr : &r->nout;
    size_t room = RUN_OUT_CAP - *len;
    if (n > room)
        n = room;
    memcpy(buf + *len, d, n);
    *len += n;
    buf[*len] = 0;
}

static void on_credit(gd_exec *x, size_t credit, void *ud)
{
    (void)x;
    (void)credit;
    feed(ud);
}

static void on_exit_cb(gd_exec *x, const struct gd_exec_result *res, void *ud)
{
    (void)x;
    struct run *r = ud;
    r->x = NULL;
    int code = res->error == GD_EXEC_VM_GONE ? -2
               : res->error                  ? -1
               : res->signal                 ? 128 + res->signal
                                             : res->exit_code;
    const char *why =
        res->error ? (res->message ? res->message : "the command failed to start") : r->err;
    r->cb(r->sb, code, r->out, why, r->ud);
    free(r->in);
    free(r);
}

int gd__sandbox_run(gd_sandbox *sb, const char *const *argv, const void *in, size_t in_len,
                    gd__run_cb cb, void *ud)
{
    struct run *r = calloc(1, sizeof(*r));
    if (!r || (in_len && !(r->in = malloc(in_len)))) {
        free(r);
        return -ENOMEM;
    }
    if (in_len)
        memcpy(r->in, in, in_len);
    r->in_len = in_len;
    r->sb = sb;
    r->cb = cb;
    r->ud = ud;
    struct gd_exec_opts o = {.argv = argv, .stdin_stream = 1};
    struct gd_exec_cbs cbs = {
        .on_output = on_out, .on_stdin_credit = on_credit, .on_exit = on_exit_cb};
    int rc = gd_sandbox_exec(sb, &o, &cbs, r, &r->x);
    if (rc) {
        free(r->in);
        free(r);
        return rc;
    }
    feed(r);
    return 0;
}
