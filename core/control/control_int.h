/* control_int.h - shared inside core/control/: the server's objects (server.c, with
 * the one-shot requests, transfers and log tails in requests.c, transfer.c, logs.c). */
#ifndef GD_CONTROL_INT_H
#define GD_CONTROL_INT_H

#include "control.h"
#include "sandbox/sandbox.h"

#include <sys/un.h>
#include <uv.h>

/* A unix socket address for path. A path longer than sun_path goes through
 * /proc/self/fd/DIRFD/NAME with *dfd open on its directory (close it after the bind or
 * connect; -1 when not needed). */
int gd__control_addr(const char *path, struct sockaddr_un *sa, int *dfd);

enum req_kind { REQ_EXEC, REQ_PUT, REQ_GET, REQ_LOGS };

struct conn;

/* One live request of a connection: an exec, a transfer or a log tail. An exec whose
 * connection went away stays (conn NULL, on the server's orphan list) until it ends. */
struct req {
    gd_control_server *s;
    struct conn *c;
    uint32_t id;
    enum req_kind kind;
    gd_exec *x;
    int stdin_open;        /* the client may still send STDIN */
    uint32_t in_credit;    /* stdin credit the client holds */
    uint32_t out_avail[3]; /* output credit the client granted and we have not used */
    uint64_t hung_at;      /* hung up at this loop time (ms); SIGKILL 2 s later */
    int hung, killed;
    char err[1024]; /* a transfer's stderr (the start of it) */
    size_t errlen;
    int follow;      /* a log tail that follows */
    int64_t log_off; /* where a tail reads next */
    struct req *next;
};

struct conn {
    gd_control_server *s;
    uint64_t serial; /* unique per server: asynchronous replies find their connection */
    uv_pipe_t pipe;
    struct gd_control_reader rd;
    uint64_t t0; /* accepted at (loop ms); ended at, once ended */
    int hello;
    int counted; /* in the server's nconns */
    int ended;   /* reading stopped, no more frames queued; shut down or closing */
    int closing;
    size_t outq; /* bytes queued to write */
    struct req *reqs;
    int nreqs;
    uv_shutdown_t shut;
    struct conn *next;
};

struct gd_control_server {
    uv_loop_t *loop;
    gd_sandbox *sb;
    struct gd_control_server_opts o;
    struct gd_session meta;
    char *path, *log_path;
    uv_pipe_t listener;
    int listener_open;
    uv_timer_t tick;
    int tick_open, ticking, tick_closing;
    struct conn *conns;
    int nconns;
    struct req *orphans;
    uint64_t next_serial;
    int stopping, closing;
    char last_error[1024];
    int has_error;
    void (*done)(void *ud);
    void *done_ud;
    uint8_t rbuf[64 << 10];
};

/* server.c */
int gd__control_send(struct conn *c, unsigned type, unsigned flags, uint32_t id, const void *body,
                     size_t n);
int gd__control_send_json(struct conn *c, unsigned type, uint32_t id, char *text);
void gd__control_log(gd_control_server *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void gd__control_error(struct conn *c, uint32_t id, const char *code, const char *msg);
/* REPLY with o (deleted); stop: 1 call on_stop once written, 2 with force. */
void gd__control_reply(struct conn *c, uint32_t id, cJSON *o, int stop);
struct req *gd__control_find(struct conn *c, uint32_t id);
/* A protocol error: ERROR with id 0, then the connection is closed. */
void gd__control_fail(struct conn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* 0: id may start a request on c (else the ERROR was sent: id in use, or busy). */
int gd__control_admit(struct conn *c, uint32_t id);
/* A request on c's list; NULL (and ERROR "internal") when out of memory. */
struct req *gd__control_req_new(struct conn *c, uint32_t id, enum req_kind kind);
/* Runs the process of r (on its connection's list); when it cannot start, sends EXIT
 * 125 and frees r. */
void gd__control_start(struct req *r, const struct gd_exec_opts *xo);
void gd__control_req_done(struct req *r);
void gd__control_tick_update(gd_control_server *s);

/* requests.c */
cJSON *gd__control_fail_reply(const char *msg); /* {"ok": false, "error": msg} */
struct conn *gd__control_conn(gd_control_server *s, uint64_t serial); /* live, or NULL */
cJSON *gd__control_info(gd_control_server *s);
/* fs.diff (fsdiff.c): the changes of an overlay mount, and its export to a host file */
cJSON *gd__control_fs_diff(gd_control_server *s, const struct gd_control_request *q);
void gd__control_request(struct conn *c, uint32_t id, const uint8_t *body, size_t n);

/* checkpoint.c: snapshot (gd_sandbox_snapshot); NULL when the REPLY comes later */
cJSON *gd__control_snapshot(struct conn *c, uint32_t id, const struct gd_control_request *q);

/* transfer.c: PUT and GET as guest processes */
void gd__control_put(struct conn *c, uint32_t id, const uint8_t *body, size_t n);
void gd__control_get(struct conn *c, uint32_t id, const uint8_t *body, size_t n);
/* The last line of a transfer's stderr, for EXIT's "error". */
void gd__control_err_line(const struct req *r, char *out, size_t cap);

/* logs.c */
void gd__control_logs(struct conn *c, uint32_t id, const struct gd_control_request *q);
/* Sends what followers have not seen yet (from the tick). */
void gd__control_logs_poll(gd_control_server *s);

#endif
