/*
 * control.h - long-lived sessions (docs/control.md): the control protocol's codec
 * (codec.c: frames and JSON messages, pure functions), the sessions directory
 * (session.c), a blocking client for the CLI (client.c), the server a supervisor runs
 * around one sandbox (server.c; requests.c, transfer.c, logs.c) and the supervisor
 * itself (supervisor.c).
 *
 * Functions return 0 or a negative errno unless they say otherwise.
 */
#ifndef GD_CONTROL_H
#define GD_CONTROL_H

#include "base/err.h"

#include <cjson/cJSON.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct gd_sandbox_opts;
typedef struct gd_sandbox gd_sandbox;
typedef struct uv_loop_s uv_loop_t;

#define GD_CONTROL_VERSION 1
#define GD_CONTROL_HDR_LEN 12u
#define GD_CONTROL_MAX_BODY (1u << 20)         /* any frame */
#define GD_CONTROL_MAX_JSON (256u << 10)       /* a JSON body */
#define GD_CONTROL_MAX_CHUNK (64u << 10)       /* one OUTPUT frame */
#define GD_CONTROL_DEFAULT_WINDOW (256u << 10) /* output credit per stream */
#define GD_CONTROL_MAX_CREDIT (16u << 20)
#define GD_CONTROL_MAX_REQUESTS 64 /* live requests per connection */
#define GD_CONTROL_MAX_QUEUED (32u << 20)
#define GD_CONTROL_MAX_CLIENTS 64
#define GD_CONTROL_HELLO_MS 10000
#define GD_CONTROL_MAX_ARGS 4096 /* argv or env entries of an EXEC */

enum gd_control_type {
    GD_CONTROL_HELLO = 1,
    GD_CONTROL_EXEC = 2,
    GD_CONTROL_STARTED = 3,
    GD_CONTROL_STDIN = 4,
    GD_CONTROL_STDIN_WINDOW = 5,
    GD_CONTROL_OUTPUT = 6,
    GD_CONTROL_WINDOW = 7,
    GD_CONTROL_RESIZE = 8,
    GD_CONTROL_SIGNAL = 9,
    GD_CONTROL_EXIT = 10,
    GD_CONTROL_ERROR = 11,
    GD_CONTROL_PUT = 12,
    GD_CONTROL_GET = 13,
    GD_CONTROL_REQUEST = 14,
    GD_CONTROL_REPLY = 15,
    GD_CONTROL_LOG = 16,
    GD_CONTROL_CANCEL = 17,
    GD_CONTROL_TYPE_MAX = 17,
};
#define GD_CONTROL_STDIN_EOF 1u /* STDIN flag */
/* who receives a frame: the decoder accepts only the types sent that way */
enum gd_control_dir { GD_CONTROL_TO_SERVER = 0, GD_CONTROL_TO_CLIENT = 1 };

/* ---- frames (codec.c) ---- */

struct gd_control_hdr {
    uint32_t len;
    uint8_t type, flags;
    uint16_t reserved;
    uint32_t id;
};

void gd_control_hdr_write(uint8_t out[12], unsigned type, unsigned flags, uint32_t id,
                          uint32_t len);
/* Checks a header arriving in direction dir: a type sent that way, valid flags, reserved
 * 0, a length within the type's bound (JSON 256 KiB, OUTPUT 64 KiB, binary bodies their
 * exact size). 0, or -EPROTO / -EMSGSIZE and why (static text). */
int gd_control_hdr_parse(const uint8_t in[12], int dir, struct gd_control_hdr *h, const char **why);
const char *gd_control_type_name(unsigned type);
/* Whether a type's body is JSON. */
int gd_control_type_json(unsigned type);

/* Incremental frame reader: holds one frame at a time, never more than its body bound. */
struct gd_control_reader {
    int dir;
    uint8_t hb[12];
    size_t hlen;
    struct gd_control_hdr h;
    uint8_t *body; /* NUL-terminated once complete */
    size_t blen, cap;
    int have; /* a frame is complete and not yet released */
    const char *why;
};
void gd_control_reader_init(struct gd_control_reader *r, int dir);
/* Consumes bytes of p (*used says how many) until one frame is complete. 1: a frame is
 * in r->h / r->body (valid until the next feed), 0: more bytes needed, negative: a bad
 * header (r->why), after which the reader is unusable. */
int gd_control_reader_feed(struct gd_control_reader *r, const uint8_t *p, size_t n, size_t *used);
void gd_control_reader_free(struct gd_control_reader *r);

uint32_t gd_control_get_u32(const uint8_t *p);
void gd_control_put_u32(uint8_t *p, uint32_t v);

/* ---- JSON messages (codec.c). Parsers take a body (not NUL-terminated), accept one
 * object and ignore unknown fields; on a bad one they return -EBADMSG and say why. ---- */

struct gd_control_hello {
    int version;
    char client[128];
};
int gd_control_parse_hello(const void *b, size_t n, struct gd_control_hello *o, char *why,
                           size_t cap);

struct gd_control_exec {
    const char **argv; /* NULL-ended, or NULL with shell */
    const char *shell;
    const char **env; /* NULL-ended, may be NULL */
    const char *cwd;
    int pty;
    unsigned rows, cols;
    int stdin_stream;
    uint32_t window;
    cJSON *doc; /* owns the strings */
};
int gd_control_parse_exec(const void *b, size_t n, struct gd_control_exec *o, char *why,
                          size_t cap);
void gd_control_exec_free(struct gd_control_exec *o);

int gd_control_parse_resize(const void *b, size_t n, unsigned *rows, unsigned *cols, char *why,
                            size_t cap);
/* A body whose one required field k is an integer in [min, max]: SIGNAL ("signal",
 * 1..64), STARTED ("pid"). */
int gd_control_parse_int(const void *b, size_t n, const char *k, long long min, long long max,
                         long long *out, char *why, size_t cap);

/* PUT and GET */
struct gd_control_xfer {
    char *path; /* malloc'd */
    int tar;
    int has_mode, has_mtime;
    unsigned mode;
    long long mtime;
    uint32_t window; /* GET */
};
int gd_control_parse_put(const void *b, size_t n, struct gd_control_xfer *o, char *why, size_t cap);
int gd_control_parse_get(const void *b, size_t n, struct gd_control_xfer *o, char *why, size_t cap);
void gd_control_xfer_free(struct gd_control_xfer *o);

struct gd_control_request {
    char op[32];
    int follow, force, raw;
    unsigned lines;
    unsigned guest_port;
    char listen[128];
    char user[64];      /* ssh */
    char path[1024];    /* fs.diff: an absolute guest path */
    char export_[1024]; /* fs.diff: an absolute host path for the tar, or "" */
    int whiteouts;      /* fs.diff: deleted paths as OCI whiteouts in the tar */
    char name[128];     /* snapshot: the checkpoint's name in the store, or "" */
    char output[1024];  /* snapshot: an absolute host path instead of the store, or "" */
    int memory, stop;   /* snapshot: RAM and devices too; stop the session once saved */
};
int gd_control_parse_request(const void *b, size_t n, struct gd_control_request *o, char *why,
                             size_t cap);

/* What a client reads. */
struct gd_control_exit {
    int exit_code, signal;
    char error[512];
};
int gd_control_parse_exit(const void *b, size_t n, struct gd_control_exit *o, char *why,
                          size_t cap);
int gd_control_parse_error(const void *b, size_t n, char *code, size_t ccap, char *msg,
                           size_t mcap);
/* A server HELLO or a REPLY: the object (caller deletes it). HELLO needs "version" and
 * a "session" object; REPLY an "ok" boolean. */
int gd_control_parse_server_hello(const void *b, size_t n, cJSON **out, char *why, size_t cap);
int gd_control_parse_reply(const void *b, size_t n, cJSON **out, char *why, size_t cap);

/* Encoders: a malloc'd JSON text (NULL when out of memory). */
char *gd_control_encode_hello(const char *client);
char *gd_control_encode_exec(const struct gd_control_exec *x);
char *gd_control_encode_exit(int exit_code, int sig, const char *error);
char *gd_control_encode_error(const char *code, const char *message);
char *gd_control_encode_xfer(const struct gd_control_xfer *x, int get);
char *gd_control_encode_json(cJSON *obj); /* prints and deletes obj */
/* o[k] = v, or null when v is NULL or empty. */
void gd_control_json_str(cJSON *o, const char *k, const char *v);

/* ---- the sessions directory (session.c) ---- */

struct gd_session {
    char id[40];
    char name[128]; /* "" = none */
    long pid;
    unsigned long long pid_start;
    long long created;
    char image[1024];
    char build_id[128];
    char policy[1024]; /* "" = none */
    char socket[1200];
    char log[1200];
};

/* $XDG_RUNTIME_DIR/gondolin/sessions, else ~/.cache/gondolin/sessions; created 0700. */
int gd_session_dir(char *out, size_t cap);
/* A random (v4) UUID, lower-case, 36 characters. */
int gd_session_uuid(char out[37]);
/* Whether s is a valid session name: 1..63 of [A-Za-z0-9_.-], starting with a letter or
 * a digit. */
int gd_session_name_ok(const char *s);
/* /proc/PID/stat field 22. */
int gd_session_pid_start(long pid, unsigned long long *out);
/* Whether the supervisor of s still runs (same pid and start time, not a zombie). */
int gd_session_alive(const struct gd_session *s);
/* DIR/ID.json, replaced atomically. */
int gd_session_write(const char *dir, const struct gd_session *s);
int gd_session_read(const char *path, struct gd_session *s, struct gd_err *err);
/* cJSON form of the metadata file. */
cJSON *gd_session_json(const struct gd_session *s);
/* Removes ID.json, ID.sock and ID.log. */
void gd_session_remove(const char *dir, const char *id);
/* Every session with a metadata file, sorted by creation; stale ones are removed from
 * the directory (prune) and left out. *out is malloc'd. */
int gd_session_list(const char *dir, int prune, struct gd_session **out, size_t *n);
/* A live session by full id, else by name, else by unique id prefix. -ENOENT or
 * -EEXIST (an ambiguous prefix), with a one-line message. */
int gd_session_find(const char *dir, const char *key, struct gd_session *out, struct gd_err *err);

/* ---- client (client.c): blocking, for the CLI ---- */

typedef struct gd_control_client gd_control_client;
/* Connects (the uid check is the server's), sends HELLO and reads the server's
 * (waiting at most 10 s for it). */
int gd_control_client_connect(const char *socket_path, gd_control_client **out, struct gd_err *err);
int gd_control_client_fd(const gd_control_client *c);
/* The session INFO from the server's HELLO (owned by the client). */
const cJSON *gd_control_client_info(const gd_control_client *c);
int gd_control_client_send(gd_control_client *c, unsigned type, unsigned flags, uint32_t id,
                           const void *body, size_t n);
/* Reads one frame, blocking. 1 and the frame (body valid until the next call), 0 on
 * end of stream, negative on error (a malformed frame: -EPROTO). */
int gd_control_client_recv(gd_control_client *c, struct gd_control_hdr *h, const uint8_t **body);
/* For poll loops: one read() of what is available (0; -EINTR; the end: -EPIPE), then
 * gd_control_client_next until it returns 0. */
int gd_control_client_fill(gd_control_client *c);
int gd_control_client_next(gd_control_client *c, struct gd_control_hdr *h, const uint8_t **body);
/* REQUEST {"op": op, ...params} -> REPLY object (caller deletes). params is consumed. */
int gd_control_client_request(gd_control_client *c, const char *op, cJSON *params, cJSON **reply,
                              struct gd_err *err);
void gd_control_client_close(gd_control_client *c);

/* ---- server (server.c) ---- */

typedef struct gd_control_server gd_control_server;
struct gd_control_server_opts {
    const char *path;     /* the socket; created 0600, replacing a stale one */
    const char *log_path; /* the supervisor's log, for `logs` */
    const struct gd_session *meta;
    /* `stop` was asked (after its REPLY was written); force: kill at once */
    void (*on_stop)(void *ud, int force);
    void (*log)(void *ud, const char *line); /* refused peers, protocol errors */
    void *ud;
};
int gd_control_server_new(uv_loop_t *loop, gd_sandbox *sb, const struct gd_control_server_opts *o,
                          gd_control_server **out, struct gd_err *err);
/* The policy was reloaded (or a reload failed): for policy.status. */
void gd_control_server_on_reload(gd_control_server *s, int ok, const char *msg);
/* The sandbox is stopping: execs that end now end "the sandbox was stopped". */
void gd_control_server_stopping(gd_control_server *s);
/* Stops listening, writes what is queued and closes every connection; done() once
 * every handle is closed (then gd_control_server_free). */
void gd_control_server_close(gd_control_server *s, void (*done)(void *ud), void *ud);
void gd_control_server_free(gd_control_server *s);

/* ---- the supervisor (supervisor.c) ---- */

struct gd_control_supervise_opts {
    const struct gd_sandbox_opts *sandbox; /* its log/on_reload/ud are the supervisor's */
    const char *dir;                       /* the sessions directory */
    const char *id, *name;                 /* name may be NULL */
    int ready_fd; /* gets "ok\n" once the session is ready, or "error: LINE\n" */
    /* Optional, on the supervisor's loop: once the session is ready (a bundle poller
     * starts there), and when the sandbox has stopped, before it is freed. */
    void (*on_started)(uv_loop_t *loop, gd_sandbox *sb, void *ud);
    void (*on_stopped)(void *ud);
    void *hook_ud;
};
/* Creates and boots the sandbox, serves the control socket, writes ID.json, and runs
 * until the sandbox stops (a `stop`, SIGTERM/SIGINT, or the VM ending). Returns the
 * process exit code. Log lines go to stderr. */
int gd_control_supervise(const struct gd_control_supervise_opts *o);

#endif
