/* transfer.c - PUT and GET: file transfers as guest processes of the session (`cat`,
 * `tar`), the path always an argument of a fixed script, never part of one. Their data
 * moves under the same credit as an exec's; nothing is buffered whole. */
#define _GNU_SOURCE
#include "control_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* $1 the path; $2 the mode in octal or ""; $3 the mtime or "" */
static const char put_file[] =
    "set -e; cat > \"$1\"; if [ -n \"$2\" ]; then chmod -- \"$2\" \"$1\"; fi; "
    "if [ -n \"$3\" ]; then touch -m -d \"@$3\" -- \"$1\"; fi";
/* $1 the directory to unpack into; ownership is the guest user's, modes and mtimes kept */
static const char put_tar[] = "mkdir -p -- \"$1\" && cd -- \"$1\" && exec tar -x -o -p -f -";
static const char missing[] = "if [ ! -e \"$1\" ] && [ ! -L \"$1\" ]; then "
                              "printf '%s: No such file or directory\\n' \"$1\" >&2; exit 1; fi; ";
/* $1 the file */
static const char get_file[] = "exec cat -- \"$1\"";
/* $1 the file or tree; members start with its basename */
static const char get_tar[] = "d=$(dirname -- \"$1\"); b=$(basename -- \"$1\"); "
                              "exec tar -c -f - -C \"$d\" -- \"$b\"";

void gd__control_err_line(const struct req *r, char *out, size_t cap)
{
    size_t end = r->errlen;
    while (end && (r->err[end - 1] == '\n' || r->err[end - 1] == '\r' || r->err[end - 1] == ' '))
        end--;
    size_t start = end;
    while (start && r->err[start - 1] != '\n')
        start--;
    gd_sanitize(out, cap, r->err + start, end - start);
}

static void start(struct conn *c, uint32_t id, enum req_kind kind, const char *const *argv,
                  uint32_t window)
{
    if (gd__control_admit(c, id))
        return;
    struct req *r = gd__control_req_new(c, id, kind);
    if (!r)
        return;
    r->stdin_open = kind == REQ_PUT;
    r->out_avail[1] = r->out_avail[2] = window;
    struct gd_exec_opts xo = {
        .argv = argv, .stdin_stream = kind == REQ_PUT, .window = window, .manual_ack = 1};
    gd__control_start(r, &xo);
}

void gd__control_put(struct conn *c, uint32_t id, const uint8_t *body, size_t n)
{
    struct gd_control_xfer x;
    char why[300];
    if (gd_control_parse_put(body, n, &x, why, sizeof(why)))
        return gd__control_fail(c, "PUT: %s", why);
    char mode[16] = "", mtime[32] = "";
    if (x.has_mode)
        snprintf(mode, sizeof(mode), "%o", x.mode);
    if (x.has_mtime)
        snprintf(mtime, sizeof(mtime), "%lld", x.mtime);
    const char *argv[] = {"/bin/sh", "-c", x.tar ? put_tar : put_file, "gondolin-put", x.path, mode,
                          mtime,     NULL};
    start(c, id, REQ_PUT, argv, GD_CONTROL_DEFAULT_WINDOW);
    gd_control_xfer_free(&x);
}

void gd__control_get(struct conn *c, uint32_t id, const uint8_t *body, size_t n)
{
    struct gd_control_xfer x;
    char why[300], script[512];
    if (gd_control_parse_get(body, n, &x, why, sizeof(why)))
        return gd__control_fail(c, "GET: %s", why);
    snprintf(script, sizeof(script), "%s%s", missing, x.tar ? get_tar : get_file);
    const char *argv[] = {"/bin/sh", "-c", script, "gondolin-get", x.path, NULL};
    start(c, id, REQ_GET, argv, x.window);
    gd_control_xfer_free(&x);
}
