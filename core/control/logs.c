/* logs.c - the `logs` request: the last lines of the supervisor's log, then (following)
 * new lines as they are written, read from the file at the server's tick while the
 * client keeps up. */
#define _GNU_SOURCE
#include "control_int.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define TAIL_MAX (4u << 20)    /* how far back the last lines are looked for */
#define READ_STEP (256u << 10) /* one read while following */
#define BEHIND (1u << 20)      /* a follower whose queue holds this much waits */

/* LOG frames of whole lines (a line longer than a frame is cut). A send that overflows
 * the queue ends the connection, and that frees r: callers check c->ended (c lives on
 * until its close callback), never r. */
static void send_lines(struct conn *c, uint32_t id, const char *p, size_t n)
{
    while (n && !c->ended) {
        size_t k = n;
        if (k > GD_CONTROL_MAX_CHUNK) {
            k = GD_CONTROL_MAX_CHUNK;
            const char *nl = memrchr(p, '\n', k);
            if (nl)
                k = (size_t)(nl - p) + 1;
        }
        gd__control_send(c, GD_CONTROL_LOG, 0, id, p, k);
        p += k;
        n -= k;
    }
}

static void finish(struct req *r, const char *error)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddBoolToObject(o, "ok", !error);
    if (error)
        cJSON_AddStringToObject(o, "error", error);
    struct conn *c = r->c;
    uint32_t id = r->id;
    gd__control_req_done(r); /* first: an overflowing send frees what is on c's list */
    gd__control_send_json(c, GD_CONTROL_REPLY, id, gd_control_encode_json(o));
}

static int read_at(int fd, char *buf, size_t n, off_t off)
{
    size_t got = 0;
    while (got < n) {
        ssize_t k = pread(fd, buf + got, n - got, off + (off_t)got);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            break;
        got += (size_t)k;
    }
    return (int)got;
}

void gd__control_logs(struct conn *c, uint32_t id, const struct gd_control_request *q)
{
    struct req *r = gd__control_req_new(c, id, REQ_LOGS);
    if (!r)
        return;
    const char *path = c->s->log_path;
    int fd = path ? open(path, O_RDONLY | O_CLOEXEC) : -1;
    struct stat st;
    if (fd < 0 || fstat(fd, &st)) {
        char msg[300];
        snprintf(msg, sizeof(msg), "cannot read the log: %s", path ? strerror(errno) : "none");
        if (fd >= 0)
            close(fd);
        return finish(r, msg);
    }
    off_t size = st.st_size, from = size > (off_t)TAIL_MAX ? size - (off_t)TAIL_MAX : 0;
    char *buf = malloc((size_t)(size - from) + 1);
    size_t n = buf ? (size_t)read_at(fd, buf, (size_t)(size - from), from) : 0;
    close(fd);
    if (!buf)
        return finish(r, "out of memory");
    /* whole lines only: drop a partial last line (it is sent once complete) */
    size_t end = n;
    while (end && buf[end - 1] != '\n')
        end--;
    size_t start = end;
    unsigned k = 0;
    while (q->lines && start > 0) {
        if (start != end && buf[start - 1] == '\n' && ++k == q->lines)
            break;
        start--;
    }
    if (start == 0 && from > 0) { /* the window began mid-line */
        const char *nl = memchr(buf, '\n', end);
        start = nl ? (size_t)(nl - buf) + 1 : end;
    }
    if (q->lines)
        send_lines(c, id, buf + start, end - start);
    free(buf);
    if (c->ended)
        return; /* r went with the connection */
    r->log_off = from + (off_t)end;
    if (!q->follow)
        return finish(r, NULL);
    r->follow = 1;
    gd__control_tick_update(c->s);
}

static void poll_one(gd_control_server *s, struct req *r, char *buf)
{
    int fd = open(s->log_path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    struct stat st;
    if (fstat(fd, &st) == 0 && st.st_size < r->log_off)
        r->log_off = 0; /* replaced or truncated: start over */
    struct conn *c = r->c;
    while (!c->ended && c->outq < BEHIND) {
        int n = read_at(fd, buf, READ_STEP, (off_t)r->log_off);
        if (n <= 0)
            break;
        const char *nl = memrchr(buf, '\n', (size_t)n);
        size_t k = nl ? (size_t)(nl - buf) + 1 : (size_t)n == READ_STEP ? (size_t)n : 0;
        if (!k)
            break; /* a partial line: wait for its end */
        send_lines(c, r->id, buf, k);
        if (c->ended)
            break; /* r went with the connection */
        r->log_off += (int64_t)k;
    }
    close(fd);
}

void gd__control_logs_poll(gd_control_server *s)
{
    if (!s->log_path)
        return;
    char *buf = NULL;
    for (struct conn *c = s->conns; c; c = c->next)
        for (struct req *r = c->reqs; r && !c->ended; r = r->next) {
            if (!r->follow)
                continue;
            if (!buf && !(buf = malloc(READ_STEP)))
                return;
            poll_one(s, r, buf);
        }
    free(buf);
}
