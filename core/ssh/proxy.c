/* proxy.c - the guest side of SSH egress, driven from the sandbox's libuv loop: each
 * guest connection is a non-blocking libssh server session (any authentication accepted:
 * the host-side rule is what decides) whose socket a uv_poll_t watches; each exec of a git
 * transport command goes to a fresh upstream session (upstream.c, also non-blocking) and
 * everything else is refused. No call here waits on a guest or an upstream, so one slow
 * peer never stalls the loop, and gd_ssh_proxy_free ends everything at once. */
#define _GNU_SOURCE
#include "ssh/ssh.h"
#include "ssh/ssh_int.h"

#include "base/err.h"

#include <errno.h>
#include <libssh/callbacks.h>
#include <libssh/libssh.h>
#include <libssh/server.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Bytes moved per read: a direction reads only as much as the other side's window takes
 * (and nothing while libssh still holds unsent bytes for it), so what a guest can make us
 * hold is its channel's window in libssh plus one chunk. */
#define CHUNK 32768
#define KEEPALIVE_MS 30000
#define TICK_MS 250
/* Chunks one readiness callback moves before it lets the loop run others. */
#define ROUNDS 64

/* Session channels one guest connection may open (one at a time). A finished channel is
 * closed but freed only with the session: a request the guest queued behind it still
 * points at it (libssh frees them all in ssh_free). */
#define MAX_CHANNELS 64

/* Bytes one channel stream may hold that nobody has taken yet. libssh 0.10 keeps what a
 * peer sends past the window it was given (it only logs it), so the window alone bounds
 * nothing against a hostile guest or upstream: past this the connection is cut. An
 * honest peer stays within libssh's largest window (1.28 MB) and one packet. */
#define HOARD_CAP (4u << 20)

struct exec {
    ssh_channel g; /* the guest's channel */
    gd__ssh_up *u;
    int open, g_eof;
    char *cmd;
    struct gd_ssh_git git;
    struct gd_ssh_exec xe;
    const char *up_user;
    char up_cmd[2 * GD_SSH_GIT_PATH_MAX + 64], clean_cmd[300];
    uint64_t t0, last, ping; /* ms: started, last byte either way, last keepalive */
    uint64_t in, out;
};

struct conn {
    gd_ssh_proxy *p;
    uv_poll_t *poll; /* the guest's socket */
    uv_timer_t *tick;
    int refs, dead, kex_done, again;
    ssh_bind bind;
    ssh_session s;
    ssh_event ev;
    ssh_channel ch;    /* the open session channel, before its exec */
    unsigned channels; /* session channels opened so far */
    uint64_t t0, last; /* ms: accepted, the guest's last activity */
    char user[128];    /* "" until authenticated; "-": a name we do not pass on */
    struct exec *x;    /* the exec running now */
    char name[256], addr[64];
    struct gd_ssh_flow flow;
    struct gd_ssh_conf conf;
    struct ssh_channel_callbacks_struct watch; /* every channel's data (see HOARD_CAP) */
    int hoard;                                 /* a peer went past HOARD_CAP: cut */
    struct conn *next;
};

struct gd_ssh_proxy {
    uv_loop_t *loop;
    struct conn *conns;
    unsigned nconns, max_conns, connect_ms, handshake_ms, idle_ms;
    char *host_key;
    struct gd__ssh_loglimit rl;
    void (*log)(void *ud, const char *line);
    void *ud;
    int (*on_exec)(void *ud, const struct gd_ssh_exec *x, char *rule, size_t rcap, char *reason,
                   size_t cap);
    void (*on_record)(void *ud, const struct gd_ssh_record *rec);
    const struct gd_ssh_conf *(*rules)(void *ud, const char *name, const char **addr,
                                       int *allow_internal);
};

static void logf_(gd_ssh_proxy *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void logf_(gd_ssh_proxy *p, const char *fmt, ...)
{
    unsigned long dropped = 0;
    if (!p->log || !gd__ssh_loglimit_take(&p->rl, uv_now(p->loop), &dropped))
        return;
    char line[1200];
    if (dropped) {
        snprintf(line, sizeof(line), "%lu lines suppressed (more than %d a second)", dropped,
                 GD__SSH_LOG_RATE);
        p->log(p->ud, line);
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    p->log(p->ud, line);
}

static void record(struct conn *c, const struct gd_ssh_exec *x, int denied, const char *rule,
                   const char *reason, int st, uint64_t in, uint64_t out, double ms)
{
    struct gd_ssh_record rec = {.x = x,
                                .denied = denied,
                                .rule = rule,
                                .reason = reason,
                                .exit_status = st,
                                .bytes_up = in,
                                .bytes_down = out,
                                .ms = ms};
    if (c->p->on_record)
        c->p->on_record(c->p->ud, &rec);
}

/* libssh queues every request it reads until someone takes it: a session whose requests
 * nobody takes (the upstream's, the guest's during an exec) would grow that queue without
 * bound. With this callback installed each one is answered "failure" (or UNIMPLEMENTED)
 * and freed as it arrives. */
int gd__ssh_refuse_message(void *s, void *m, void *ud)
{
    (void)s;
    (void)m;
    (void)ud;
    return 1; /* libssh sends the default reply and frees m */
}

/* The refusal of a channel request: one line on stderr, exit status 1, channel closed
 * (freed with the session, see MAX_CHANNELS). */
static void refuse(ssh_channel ch, const char *why)
{
    char line[1100];
    int n = snprintf(line, sizeof(line), "gondolin: ssh: %s\r\n", why);
    ssh_channel_write_stderr(ch, line,
                             (uint32_t)(n < (int)sizeof(line) ? n : (int)sizeof(line) - 1));
    ssh_channel_request_send_exit_status(ch, 1);
    ssh_channel_send_eof(ch);
    ssh_channel_close(ch);
}

/* libssh calls this with all the bytes a channel's stream holds, new ones included; 0
 * leaves them for move() to read. Past HOARD_CAP the connection is marked to be cut (by
 * its poll callback, never from inside libssh) and the bytes are dropped. */
static int on_channel_data(ssh_session s, ssh_channel ch, void *data, uint32_t len, int is_stderr,
                           void *ud)
{
    struct conn *c = ud;
    (void)s;
    (void)ch;
    (void)data;
    (void)is_stderr;
    if (len <= HOARD_CAP)
        return 0;
    c->hoard = 1;
    return (int)len;
}

static void watch_channel(struct conn *c, ssh_channel ch)
{
    if (ch)
        ssh_set_channel_callbacks(ch, &c->watch);
}

static void conn_close(struct conn *c);

/* After libssh has run: a peer that sent past its window is cut, with one line. */
static int hoarded(struct conn *c)
{
    if (!c->hoard || c->dead)
        return 0;
    logf_(c->p, "cut %s@%s:%u: a side sent more than %u MiB past its SSH window", c->user, c->name,
          c->flow.port, HOARD_CAP >> 20);
    conn_close(c);
    return 1;
}

/* ---- lifetime ---- */

static void conn_fin(struct conn *c)
{
    if (c->ev) {
        ssh_event_remove_session(c->ev, c->s);
        ssh_event_free(c->ev);
    }
    if (c->s) { /* the session's channels (open or closed) and socket go with it */
        ssh_disconnect(c->s);
        ssh_free(c->s);
    }
    if (c->bind)
        ssh_bind_free(c->bind);
    gd_ssh_conf_free(&c->conf);
    free(c);
}

static void conn_handle_closed(uv_handle_t *h)
{
    struct conn *c = h->data;
    free(h);
    if (--c->refs == 0)
        conn_fin(c);
}

static void exec_free(struct conn *c)
{
    struct exec *x = c->x;
    c->x = NULL;
    c->again = 0;                 /* (its rounds are over: no more wake-ups for them) */
    c->last = uv_now(c->p->loop); /* the idle time between execs starts now */
    gd__ssh_up_close(x->u);
    free(x->cmd);
    free(x);
}

static void exec_end(struct conn *c, int rc);

/* Ends a connection at once: its exec's upstream is closed, its handles too; the
 * session is freed once they are (never inside a libssh callback). */
static void conn_close(struct conn *c)
{
    if (c->dead)
        return;
    if (c->x) /* its record says 255 (none when the proxy is being freed) */
        exec_end(c, -1);
    c->dead = 1;
    gd_ssh_proxy *p = c->p;
    for (struct conn **pp = &p->conns; *pp; pp = &(*pp)->next)
        if (*pp == c) {
            *pp = c->next;
            p->nconns--;
            break;
        }
    c->p = NULL;
    uv_close((uv_handle_t *)c->poll, conn_handle_closed);
    uv_close((uv_handle_t *)c->tick, conn_handle_closed);
}

static void on_guest(uv_poll_t *h, int status, int events);

static void rearm(struct conn *c)
{
    if (c->dead)
        return;
    /* While libssh holds bytes the guest has not taken, nothing more is read from it:
     * every request may be answered, so a guest that sends without reading would grow
     * our output without bound. A callback that stopped after ROUNDS chunks asks to run
     * again: the socket is almost always writable, so that comes on the next iteration. */
    int ev = ssh_get_poll_flags(c->s) & SSH_WRITE_PENDING ? UV_WRITABLE : UV_READABLE;
    ev |= c->again ? UV_WRITABLE : 0;
    uv_poll_start(c->poll, ev, on_guest);
}

/* ---- an exec ---- */

/* The end of an exec: rc 0 the upstream's output ended, -1 a side failed, -2 idle. Its
 * exit status goes to the guest, one log line, one audit record. */
static void exec_end(struct conn *c, int rc)
{
    struct exec *x = c->x;
    gd_ssh_proxy *p = c->p;
    ssh_channel u = gd__ssh_up_channel(x->u);
    uint64_t now = uv_now(p->loop);
    if (rc == -2) {
        char line[400];
        snprintf(line, sizeof(line), "gondolin: ssh: %s: no traffic for %u s: cut\r\n", c->name,
                 p->idle_ms / 1000);
        ssh_channel_write_stderr(x->g, line, (uint32_t)strlen(line));
        logf_(p, "cut %s@%s:%u %s: idle for %u ms", x->up_user, c->name, c->flow.port, x->clean_cmd,
              p->idle_ms);
    }
    int st = rc ? 255 : ssh_channel_get_exit_status(u);
    if (st < 0)
        st = 255;
    double dt = (double)(now - x->t0) / 1000;
    logf_(p, "exec %s@%s:%u %s: exit %d, %llu bytes up, %llu down, %.2f s", x->up_user, c->name,
          c->flow.port, x->clean_cmd, st, (unsigned long long)x->in, (unsigned long long)x->out,
          dt);
    record(c, &x->xe, 0, NULL, NULL, st, x->in, x->out, dt * 1000);
    ssh_channel_request_send_exit_status(x->g, st);
    ssh_channel_send_eof(x->g);
    ssh_channel_close(x->g); /* (freed with the session) */
    exec_free(c);
    rearm(c);
}

/* Reads from ch only what dst can take now: its window, and nothing while its session
 * holds unsent bytes (that is the backpressure, both ways). Then writes it all. The
 * bytes moved, 0, or -1 when a side failed. *tried: whether ch was read at all. */
static int move(ssh_channel ch, int is_err, ssh_channel dst, int *tried)
{
    static char buf[CHUNK];
    uint32_t room = ssh_channel_window_size(dst);
    *tried = 0;
    if (!room || ssh_get_poll_flags(ssh_channel_get_session(dst)) & SSH_WRITE_PENDING)
        return 0;
    *tried = 1;
    int n = ssh_channel_read_nonblocking(ch, buf, room < CHUNK ? room : CHUNK, is_err);
    if (n <= 0)
        return n == SSH_ERROR ? -1 : 0;
    int w = is_err ? ssh_channel_write_stderr(dst, buf, (uint32_t)n)
                   : ssh_channel_write(dst, buf, (uint32_t)n);
    return w == n ? n : -1;
}

/* Moves bytes both ways as far as windows allow; ends the exec when the upstream's
 * output and exit status are in. */
static void pump(struct conn *c)
{
    struct exec *x = c->x;
    ssh_channel u = gd__ssh_up_channel(x->u);
    c->again = 0;
    for (int round = 0;; round++) {
        if (round == ROUNDS) {
            c->again = 1;
            break;
        }
        int progress = 0, tried, n;
        /* what the guest writes to its exec's stderr goes nowhere (SSH has no upstream
         * stdin for it), but unread it would hold back the guest's EOF */
        static char junk[CHUNK];
        while (ssh_channel_read_nonblocking(x->g, junk, sizeof(junk), 1) > 0)
            ;
        if (!x->g_eof) {
            if ((n = move(x->g, 0, u, &tried)) < 0) {
                exec_end(c, -1);
                return;
            }
            x->in += (uint64_t)n;
            progress = n > 0;
            if (tried && !n && (ssh_channel_is_eof(x->g) || !ssh_channel_is_open(x->g))) {
                ssh_channel_send_eof(u);
                x->g_eof = progress = 1;
            }
        }
        int drained = 1;
        for (int is_err = 0; is_err < 2; is_err++) {
            if ((n = move(u, is_err, x->g, &tried)) < 0) {
                exec_end(c, -1);
                return;
            }
            x->out += (uint64_t)n;
            progress |= n > 0;
            drained &= tried && !n;
        }
        if (progress)
            x->last = x->ping = uv_now(c->p->loop);
        if (!progress && drained && (ssh_channel_is_eof(u) || !ssh_channel_is_open(u))) {
            /* OpenSSH sends the exit status after EOF: wait for it or the close */
            if (ssh_channel_get_exit_status(u) >= 0 || !ssh_channel_is_open(u)) {
                exec_end(c, 0);
                return;
            }
        }
        if (!progress)
            break;
    }
    rearm(c);
    gd__ssh_up_rearm(x->u);
}

static void up_open(gd__ssh_up *u, int ok, void *ud)
{
    struct conn *c = ud;
    struct exec *x = c->x;
    (void)u;
    if (ok) {
        x->open = 1;
        watch_channel(c, gd__ssh_up_channel(x->u));
        x->last = x->ping = uv_now(c->p->loop);
        pump(c);
        return;
    }
    /* (the upstream's disconnect text may be in it: no escapes into the host's log) */
    char clean[1100];
    const char *d = gd__ssh_up_detail(x->u);
    gd_sanitize(clean, sizeof(clean), d, strlen(d));
    logf_(c->p, "denied %s@%s:%u %s: %s", x->up_user, c->name, c->flow.port, x->clean_cmd, clean);
    record(c, &x->xe, 1, "upstream", gd__ssh_up_why(x->u), 0, 0, 0,
           (double)(uv_now(c->p->loop) - x->t0));
    refuse(x->g, gd__ssh_up_why(x->u));
    exec_free(c);
    rearm(c);
}

static void up_io(gd__ssh_up *u, void *ud)
{
    struct conn *c = ud;
    (void)u;
    if (hoarded(c))
        return;
    if (c->x && c->x->open)
        pump(c);
}

/* The exec's verdict before any upstream: the rules (gd_ssh_conf_check), then the
 * policy's hook (on the loop, like this). 0, or -1 with rule and line (the guest's). */
static int decide(struct conn *c, const struct gd_ssh_exec *x, char *rule, size_t rcap, char *line,
                  size_t lcap)
{
    char reason[400] = "";
    if (gd_ssh_conf_check(&c->conf, x, rule, rcap, line, lcap))
        return -1;
    if (!c->p->on_exec || !c->p->on_exec(c->p->ud, x, rule, rcap, reason, sizeof(reason)))
        return 0;
    snprintf(line, lcap, "%s: %s of %s denied by policy%s%s", c->name, x->git->service,
             x->git->repo, reason[0] ? ": " : "", reason);
    return -1;
}

/* A private copy of the rules: 0, or -1 with one line in the host's log (a key or
 * known_hosts file that became unreadable; the guest is never shown host paths). */
static int copy_rules(gd_ssh_proxy *p, struct gd_ssh_conf *dst, const struct gd_ssh_conf *src,
                      const char *name, unsigned port)
{
    struct gd_err err = {{0}};
    if (!gd_ssh_conf_merge(dst, src, &err))
        return 0;
    gd_ssh_conf_free(dst);
    logf_(p, "denied %s:%u: the SSH settings cannot be used: %s", name, port, err.msg);
    return -1;
}

static void exec_start(struct conn *c, ssh_channel g, const char *cmd)
{
    struct exec *x = calloc(1, sizeof(*x));
    if (!x || !(x->cmd = strdup(cmd))) {
        free(x);
        refuse(g, "out of memory");
        return;
    }
    const char *why = NULL;
    char line[1100], rule[300] = "";
    size_t cl = strnlen(cmd, 4096);
    /* the rules of now, not of when the connection came: a reload that narrowed them
     * must reach a connection held open (OpenSSH's ControlMaster keeps one for hours) */
    const char *addr = NULL;
    int internal = 0;
    const struct gd_ssh_conf *now =
        c->p->rules ? c->p->rules(c->p->ud, c->name, &addr, &internal) : NULL;
    if (now) { /* and where the name goes, and whether it may be internal, as of now */
        snprintf(c->addr, sizeof(c->addr), "%s", addr ? addr : "");
        c->flow.addr = addr ? c->addr : NULL;
        c->flow.allow_internal = internal;
    }
    struct gd_ssh_conf fresh = {0};
    if (now && !copy_rules(c->p, &fresh, now, c->name, c->flow.port)) {
        gd_ssh_conf_free(&c->conf);
        c->conf = fresh; /* (c->flow.conf points here) */
    } else if (now) {    /* refused rather than decided on old rules */
        snprintf(line, sizeof(line), "%s: the host's SSH settings cannot be used now", c->name);
        refuse(g, line);
        free(x->cmd);
        free(x);
        return;
    }
    x->up_user = gd_ssh_conf_upstream_user(&c->conf, c->name, c->flow.port);
    int parsed = !gd_ssh_git_parse(cmd, cl, &x->git, &why) &&
                 gd_ssh_git_command(&x->git, x->up_cmd, sizeof(x->up_cmd)) >= 0;
    x->xe = (struct gd_ssh_exec){.host = c->name,
                                 .port = c->flow.port,
                                 .user = c->user,
                                 .command = x->cmd,
                                 .git = parsed ? &x->git : NULL,
                                 .upstream_user = x->up_user};
    x->g = g;
    x->t0 = uv_now(c->p->loop);
    snprintf(line, sizeof(line), "%s: command refused: %s", c->name, why ? why : "too long");
    if (!strcmp(c->user, "-")) {
        x->xe.git = NULL;
        snprintf(line, sizeof(line), "%s: the SSH user name must be 1-64 of A-Z a-z 0-9 . _ -",
                 c->name);
    }
    if (!strcmp(c->user, "-") || decide(c, &x->xe, rule, sizeof(rule), line, sizeof(line))) {
        char clean[300];
        gd_sanitize(clean, sizeof(clean), cmd, cl);
        if (!rule[0])
            snprintf(rule, sizeof(rule), "ssh-user");
        logf_(c->p, "denied %s@%s:%u \"%s\" (%s): %s", c->user, c->name, c->flow.port, clean, rule,
              line);
        record(c, &x->xe, 1, rule, line, 0, 0, 0, 0);
        refuse(g, line);
        free(x->cmd);
        free(x);
        return;
    }
    gd_sanitize(x->clean_cmd, sizeof(x->clean_cmd), x->up_cmd, strlen(x->up_cmd));
    struct gd__ssh_up_opts o = {.loop = c->p->loop,
                                .flow = &c->flow,
                                .user = x->up_user,
                                .cmd = x->up_cmd,
                                .connect_ms = c->p->connect_ms,
                                .handshake_ms = c->p->handshake_ms,
                                .on_open = up_open,
                                .on_io = up_io,
                                .ud = c};
    char detail[1100];
    if (gd__ssh_up_start(&o, &x->u, line, sizeof(line), detail, sizeof(detail))) {
        logf_(c->p, "denied %s@%s:%u %s: %s", x->up_user, c->name, c->flow.port, x->clean_cmd,
              detail);
        record(c, &x->xe, 1, "upstream", line, 0, 0, 0, 0);
        refuse(g, line);
        free(x->cmd);
        free(x);
        return;
    }
    c->x = x;
}

/* ---- the guest's requests ---- */

/* Every request of the guest comes here as libssh reads it (nothing is ever queued):
 * 1 lets libssh send the default answer (failure) and free it, 0 means answered here. */
static int on_message(ssh_session s, ssh_message m, void *ud)
{
    struct conn *c = ud;
    int type = ssh_message_type(m), sub = ssh_message_subtype(m);
    (void)s;
    if (c->dead)
        return 1;
    /* only a step towards an exec counts as activity (c->last): ignore packets,
     * keepalives and refused requests would keep a connection, and a max_conns slot,
     * forever */
    if (!c->user[0]) {
        if (type != SSH_REQUEST_AUTH)
            return 1;
        /* OpenSSH's first attempt is "none": accepted at once. The guest's name goes
         * into logs, records and the hook (never upstream: gd_ssh_conf_upstream_user):
         * a plain user name or nothing ("-": every exec is refused) */
        const char *u = ssh_message_auth_user(m);
        snprintf(c->user, sizeof(c->user), "%s", u && gd_ssh_user_ok(u, strlen(u)) ? u : "-");
        ssh_message_auth_reply_success(m, 0);
        c->last = uv_now(c->p->loop);
        return 0;
    }
    if (c->x) /* during an exec nothing else is taken */
        return 1;
    if (type == SSH_REQUEST_CHANNEL_OPEN && sub == SSH_CHANNEL_SESSION && !c->ch &&
        c->channels < MAX_CHANNELS) {
        c->channels++;
        c->ch = ssh_message_channel_request_open_reply_accept(m);
        watch_channel(c, c->ch);
        c->last = uv_now(c->p->loop);
        return 0;
    }
    if (type == SSH_REQUEST_CHANNEL_OPEN) {
        logf_(c->p, "denied %s@%s:%u: port forwarding (%s channel)", c->user, c->name, c->flow.port,
              sub == SSH_CHANNEL_DIRECT_TCPIP      ? "direct-tcpip"
              : sub == SSH_CHANNEL_FORWARDED_TCPIP ? "forwarded-tcpip"
              : sub == SSH_CHANNEL_X11             ? "x11"
                                                   : "other");
        return 1;
    }
    if (type == SSH_REQUEST_GLOBAL) {
        logf_(c->p, "denied %s@%s:%u: remote port forwarding", c->user, c->name, c->flow.port);
        return 1;
    }
    if (type != SSH_REQUEST_CHANNEL || !c->ch || ssh_message_channel_request_channel(m) != c->ch)
        return 1;
    char why[400];
    switch (sub) {
    case SSH_CHANNEL_REQUEST_PTY:
    case SSH_CHANNEL_REQUEST_ENV:
    case SSH_CHANNEL_REQUEST_WINDOW_CHANGE:
        ssh_message_channel_request_reply_success(m);
        return 0;
    case SSH_CHANNEL_REQUEST_EXEC: {
        ssh_channel g = c->ch;
        c->ch = NULL;
        c->last = uv_now(c->p->loop);
        ssh_message_channel_request_reply_success(m);
        exec_start(c, g, ssh_message_channel_request_command(m) ?: "");
        return 0;
    }
    case SSH_CHANNEL_REQUEST_SHELL:
    case SSH_CHANNEL_REQUEST_SUBSYSTEM:
        snprintf(why, sizeof(why), "%s: %s%s refused: only git commands (exec) are proxied",
                 c->name, sub == SSH_CHANNEL_REQUEST_SHELL ? "interactive shell" : "subsystem ",
                 sub == SSH_CHANNEL_REQUEST_SHELL ? "" : ssh_message_channel_request_subsystem(m));
        logf_(c->p, "denied %s@%s:%u: %s", c->user, c->name, c->flow.port, why);
        ssh_message_channel_request_reply_success(m);
        refuse(c->ch, why);
        c->ch = NULL;
        return 0;
    default: /* x11, agent forwarding, signals, ...: refused */
        return 1;
    }
}

/* ---- the guest's socket and clock ---- */

static void on_guest(uv_poll_t *h, int status, int events)
{
    struct conn *c = h->data;
    if (status < 0) {
        conn_close(c);
        return;
    }
    (void)events;
    if (!c->kex_done) {
        int rc = ssh_handle_key_exchange(c->s);
        if (rc == SSH_ERROR) {
            conn_close(c);
            return;
        }
        /* the first call put the socket in libssh's own poll set: from now on the
         * session's event reads and writes it when uv says it is ready */
        if (!c->ev && (!(c->ev = ssh_event_new()) || ssh_event_add_session(c->ev, c->s))) {
            conn_close(c);
            return;
        }
        if (rc == SSH_OK)
            c->kex_done = 1;
    } else {
        /* a round reads at most a few KiB; once answers wait for the guest to read them,
         * no more is read (see rearm) */
        for (int i = 0; i < 16 && ssh_event_dopoll(c->ev, 0) == SSH_OK; i++)
            if (c->dead || ssh_get_poll_flags(c->s) & SSH_WRITE_PENDING)
                break;
    }
    if (c->dead || hoarded(c))
        return;
    if (ssh_get_status(c->s) & (SSH_CLOSED | SSH_CLOSED_ERROR)) {
        conn_close(c); /* (an exec's record says 255: the guest went away) */
        return;
    }
    if (c->x && c->x->open)
        pump(c);
    rearm(c);
}

/* Deadlines: the handshake and auth, a guest idle between execs (handshake_ms), an exec
 * without a byte either way (idle_ms, keepalives every KEEPALIVE_MS meanwhile). */
static void on_tick(uv_timer_t *t)
{
    struct conn *c = t->data;
    gd_ssh_proxy *p = c->p;
    uint64_t now = uv_now(p->loop);
    struct exec *x = c->x;
    if (!c->kex_done || !c->user[0]) {
        if (now - c->t0 >= p->handshake_ms)
            conn_close(c);
    } else if (!x) {
        if (now - c->last >= p->handshake_ms)
            conn_close(c);
    } else if (x->open && now - x->last >= p->idle_ms) {
        exec_end(c, -2);
    } else if (x->open && now - x->ping >= KEEPALIVE_MS) {
        ssh_send_keepalive(gd__ssh_up_session(x->u));
        ssh_send_keepalive(c->s);
        x->ping = now;
        rearm(c);
        gd__ssh_up_rearm(x->u);
    }
}

int gd_ssh_proxy_new(const struct gd_ssh_proxy_opts *o, gd_ssh_proxy **out, struct gd_err *err)
{
    if (!o->loop)
        return gd_err_set(err, -EINVAL, "the SSH proxy needs a loop");
    gd_ssh_proxy *p = calloc(1, sizeof(*p));
    if (!p || !(p->host_key = strdup(o->host_key))) {
        free(p);
        return gd_err_set(err, -ENOMEM, "out of memory");
    }
    p->loop = o->loop;
    p->max_conns = o->max_conns ? o->max_conns : 32;
    p->connect_ms = o->connect_ms ? o->connect_ms : 10000;
    p->handshake_ms = o->handshake_ms ? o->handshake_ms : 30000;
    p->idle_ms = o->idle_ms ? o->idle_ms : 600000;
    p->log = o->log;
    p->ud = o->ud;
    p->on_exec = o->on_exec;
    p->on_record = o->on_record;
    p->rules = o->rules;
    *out = p;
    return 0;
}

int gd_ssh_proxy_serve(gd_ssh_proxy *p, int fd, const struct gd_ssh_flow *f)
{
    if (p->nconns >= p->max_conns) {
        logf_(p, "denied a connection to %s:%u: too many SSH connections", f->name, f->port);
        close(fd);
        return -EAGAIN;
    }
    struct conn *c = calloc(1, sizeof(*c));
    if (c && copy_rules(p, &c->conf, f->conf, f->name, f->port)) {
        free(c);
        close(fd);
        return -EINVAL;
    }
    if (!c || !(c->poll = malloc(sizeof(*c->poll))) || !(c->tick = malloc(sizeof(*c->tick))) ||
        !(c->bind = ssh_bind_new()) || !(c->s = ssh_new()) ||
        ssh_bind_options_set(c->bind, SSH_BIND_OPTIONS_HOSTKEY, p->host_key) ||
        ssh_bind_accept_fd(c->bind, c->s, fd) != SSH_OK ||
        uv_poll_init_socket(p->loop, c->poll, fd)) {
        logf_(p, "denied a connection to %s:%u: %s", f->name, f->port,
              c && c->s ? ssh_get_error(c->bind) : strerror(ENOMEM));
        if (c) {
            if (c->s && ssh_get_fd(c->s) == fd)
                fd = -1; /* ssh_free closes it */
            if (c->s)
                ssh_free(c->s);
            if (c->bind)
                ssh_bind_free(c->bind);
            free(c->poll);
            free(c->tick);
            gd_ssh_conf_free(&c->conf);
        }
        free(c);
        if (fd >= 0)
            close(fd);
        return -ENOMEM;
    }
    c->p = p;
    snprintf(c->name, sizeof(c->name), "%s", f->name);
    snprintf(c->addr, sizeof(c->addr), "%s", f->addr ? f->addr : "");
    c->flow = (struct gd_ssh_flow){.name = c->name,
                                   .port = f->port,
                                   .addr = f->addr ? c->addr : NULL,
                                   .allow_internal = f->allow_internal,
                                   .conf = &c->conf};
    ssh_callbacks_init(&c->watch);
    c->watch.userdata = c;
    c->watch.channel_data_function = on_channel_data;
    uv_timer_init(p->loop, c->tick);
    c->poll->data = c->tick->data = c;
    c->refs = 2;
    c->t0 = c->last = uv_now(p->loop);
    c->next = p->conns;
    p->conns = c;
    p->nconns++;
    ssh_set_blocking(c->s, 0);
    ssh_set_auth_methods(c->s, SSH_AUTH_METHOD_NONE | SSH_AUTH_METHOD_PASSWORD |
                                   SSH_AUTH_METHOD_PUBLICKEY);
    ssh_set_message_callback(c->s, on_message, c);
    uv_timer_start(c->tick, on_tick, TICK_MS, TICK_MS);
    on_guest(c->poll, 0, 0); /* sends our banner, arms the poll */
    return 0;
}

unsigned gd_ssh_proxy_conns(gd_ssh_proxy *p)
{
    return p->nconns;
}

void gd_ssh_proxy_free(gd_ssh_proxy *p)
{
    if (!p)
        return;
    /* no exec's record or log line: the sandbox is going away */
    p->on_record = NULL;
    p->log = NULL;
    while (p->conns)
        conn_close(p->conns);
    free(p->host_key);
    free(p);
}
