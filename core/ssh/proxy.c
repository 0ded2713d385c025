/* proxy.c - the guest side of SSH egress: one worker thread per guest connection runs a
 * blocking libssh server session (any authentication accepted: the host-side rule is what
 * decides), proxies each exec of a git transport command to a fresh upstream session
 * (upstream.c) and refuses everything else. Blocking libssh calls stay off the libuv
 * loop; gd_ssh_proxy_free cuts the sockets so every worker ends promptly. */
#define _GNU_SOURCE
#include "ssh/ssh.h"
#include "ssh/ssh_int.h"

#include "base/err.h"

#include <ctype.h>
#include <errno.h>
#include <libssh/libssh.h>
#include <libssh/server.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define CHUNK 32768
#define KEEPALIVE_S 30

/* Session channels one guest connection may open (one at a time). A finished channel is
 * closed but freed only with the session: a request the guest queued behind it still
 * points at it (libssh frees them all in ssh_free). */
#define MAX_CHANNELS 64

struct conn {
    gd_ssh_proxy *p;
    int fd, up_fd;     /* guest socket, current upstream socket (-1: none) */
    unsigned channels; /* session channels opened so far */
    char name[256], addr[64];
    struct gd_ssh_flow flow;
    struct gd_ssh_conf conf;
    struct conn *next;
};

/* A call a worker makes on the loop thread (it waits on cv until done). */
struct job {
    const struct gd_ssh_exec *x;
    const struct gd_ssh_record *rec; /* set: an audit record, else a decision */
    char *rule, *reason;
    size_t rcap, cap;
    int rc, done;
    pthread_cond_t cv;
    struct job *next;
};

struct gd_ssh_proxy {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    uv_async_t *async; /* NULL without a loop */
    struct job *head, *tail;
    struct conn *conns;
    unsigned nconns, max_conns, connect_ms, handshake_ms, idle_ms;
    int closing;
    char *host_key;
    void (*log)(void *ud, const char *line);
    void *ud;
    int (*on_exec)(void *ud, const struct gd_ssh_exec *x, char *rule, size_t rcap, char *reason,
                   size_t cap);
    void (*on_record)(void *ud, const struct gd_ssh_record *rec);
};

static void logf_(gd_ssh_proxy *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void logf_(gd_ssh_proxy *p, const char *fmt, ...)
{
    if (!p->log)
        return;
    char line[1200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    p->log(p->ud, line);
}

static void set_up_fd(void *ud, int fd)
{
    struct conn *c = ud;
    pthread_mutex_lock(&c->p->mu);
    c->up_fd = fd;
    if (fd >= 0 && c->p->closing)
        shutdown(fd, SHUT_RDWR);
    pthread_mutex_unlock(&c->p->mu);
}

/* ---- calls on the loop thread ---- */

static void run_jobs(uv_async_t *a)
{
    gd_ssh_proxy *p = a->data;
    for (;;) {
        pthread_mutex_lock(&p->mu);
        struct job *j = p->head;
        if (j && !(p->head = j->next))
            p->tail = NULL;
        pthread_mutex_unlock(&p->mu);
        if (!j)
            return;
        int rc = 0;
        if (j->rec && p->on_record)
            p->on_record(p->ud, j->rec);
        else if (!j->rec && p->on_exec)
            rc = p->on_exec(p->ud, j->x, j->rule, j->rcap, j->reason, j->cap);
        pthread_mutex_lock(&p->mu);
        j->rc = rc;
        j->done = 1;
        pthread_cond_signal(&j->cv);
        pthread_mutex_unlock(&p->mu); /* j may be gone from here on */
    }
}

/* Runs j on the loop and waits: its rc, or -ESHUTDOWN when the proxy is closing. */
static int loop_call(gd_ssh_proxy *p, struct job *j)
{
    if (!p->async)
        return 0;
    pthread_cond_init(&j->cv, NULL);
    pthread_mutex_lock(&p->mu);
    if (p->closing) {
        pthread_mutex_unlock(&p->mu);
        pthread_cond_destroy(&j->cv);
        return -ESHUTDOWN;
    }
    if (p->tail)
        p->tail->next = j;
    else
        p->head = j;
    p->tail = j;
    uv_async_send(p->async);
    while (!j->done)
        pthread_cond_wait(&j->cv, &p->mu);
    pthread_mutex_unlock(&p->mu);
    pthread_cond_destroy(&j->cv);
    return j->rc;
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
    struct job j = {.rec = &rec};
    loop_call(c->p, &j);
}

/* libssh queues every request it reads while a channel is being read, until someone
 * takes it: during an exec nobody does, so a guest (or an upstream) flooding requests
 * would grow that queue without bound. With this callback installed each one is
 * answered "failure" (or UNIMPLEMENTED) and freed as it arrives. */
int gd__ssh_refuse_message(void *s, void *m, void *ud)
{
    (void)s;
    (void)m;
    (void)ud;
    return 1; /* libssh sends the default reply and frees m */
}

static int refuse_cb(ssh_session s, ssh_message m, void *ud)
{
    return gd__ssh_refuse_message(s, m, ud);
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

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Moves bytes both ways until the upstream's output ends. A blocking write waits for
 * the other side's window (at most the session timeout): that is the backpressure. With
 * no byte either way, keepalives go out every KEEPALIVE_S and after idle_ms the exec is
 * cut. 0, -1 when a side failed, -2 when idle. */
static int pump(struct conn *c, ssh_channel g, ssh_channel u, uint64_t *in, uint64_t *out)
{
    static __thread char buf[CHUNK];
    int g_eof = 0;
    double last = now_s(), ping = last;
    for (;;) {
        if (__atomic_load_n(&c->p->closing, __ATOMIC_RELAXED))
            return -1;
        int progress = 0;
        if (!g_eof) {
            int n = ssh_channel_read_nonblocking(g, buf, sizeof(buf), 0);
            if (n == SSH_ERROR)
                return -1;
            if (n > 0) {
                if (ssh_channel_write(u, buf, (uint32_t)n) != n)
                    return -1;
                *in += (uint64_t)n;
                progress = 1;
            } else if (ssh_channel_is_eof(g) || !ssh_channel_is_open(g)) {
                ssh_channel_send_eof(u);
                g_eof = progress = 1;
            }
        }
        int got = 0;
        for (int is_err = 0; is_err < 2; is_err++) {
            int n = ssh_channel_read_nonblocking(u, buf, sizeof(buf), is_err);
            if (n == SSH_ERROR)
                return -1;
            if (n > 0) {
                int w = is_err ? ssh_channel_write_stderr(g, buf, (uint32_t)n)
                               : ssh_channel_write(g, buf, (uint32_t)n);
                if (w != n)
                    return -1;
                *out += (uint64_t)n;
                got = progress = 1;
            }
        }
        if (!got && (ssh_channel_is_eof(u) || !ssh_channel_is_open(u)))
            return 0;
        double t = now_s();
        if (progress)
            last = ping = t;
        else if ((t - last) * 1000 >= c->p->idle_ms)
            return -2;
        else if (t - ping >= KEEPALIVE_S) {
            ssh_send_keepalive(ssh_channel_get_session(u));
            ssh_send_keepalive(ssh_channel_get_session(g));
            ping = t;
        }
        if (!progress) {
            struct pollfd pf[2] = {
                {.fd = ssh_get_fd(ssh_channel_get_session(g)), .events = POLLIN},
                {.fd = ssh_get_fd(ssh_channel_get_session(u)), .events = POLLIN}};
            poll(pf, 2, 200);
        }
    }
}

/* The exec's verdict before any upstream: the rules (gd_ssh_conf_check), then the
 * policy's hook. 0, or -1 with rule and line (the guest's one line) set. */
static int decide(struct conn *c, const struct gd_ssh_exec *x, char *rule, size_t rcap, char *line,
                  size_t lcap)
{
    char reason[400] = "";
    if (gd_ssh_conf_check(&c->conf, x, rule, rcap, line, lcap))
        return -1;
    struct job j = {.x = x, .rule = rule, .rcap = rcap, .reason = reason, .cap = sizeof(reason)};
    int rc = loop_call(c->p, &j);
    if (!rc)
        return 0;
    if (rc == -ESHUTDOWN)
        snprintf(rule, rcap, "closing");
    snprintf(line, lcap, "%s: %s of %s denied by policy%s%s", c->name, x->git->service,
             x->git->repo, reason[0] ? ": " : "", reason);
    return -1;
}

static void exec_one(struct conn *c, ssh_channel g, const char *user, const char *cmd)
{
    struct gd_ssh_git git;
    const char *why = NULL;
    char line[1100], rule[300] = "", up_cmd[2 * GD_SSH_GIT_PATH_MAX + 64];
    size_t cl = strnlen(cmd, 4096);
    int parsed = !gd_ssh_git_parse(cmd, cl, &git, &why) &&
                 gd_ssh_git_command(&git, up_cmd, sizeof(up_cmd)) >= 0;
    struct gd_ssh_exec x = {.host = c->name,
                            .port = c->flow.port,
                            .user = user,
                            .command = cmd,
                            .git = parsed ? &git : NULL};
    snprintf(line, sizeof(line), "%s: command refused: %s", c->name, why ? why : "too long");
    if (!strcmp(user, "-")) {
        x.git = NULL;
        snprintf(line, sizeof(line), "%s: the SSH user name must be 1-64 of A-Z a-z 0-9 . _ -",
                 c->name);
    }
    if (!strcmp(user, "-") || decide(c, &x, rule, sizeof(rule), line, sizeof(line))) {
        char clean[300];
        gd_sanitize(clean, sizeof(clean), cmd, cl);
        if (!rule[0])
            snprintf(rule, sizeof(rule), "ssh-user");
        logf_(c->p, "denied %s@%s:%u \"%s\" (%s): %s", user, c->name, c->flow.port, clean, rule,
              line);
        record(c, &x, 1, rule, line, 0, 0, 0, 0);
        refuse(g, line);
        return;
    }
    const char *up_user = gd_ssh_conf_upstream_user(&c->conf, c->name, c->flow.port);
    double t0 = now_s();
    struct gd__ssh_up u;
    char clean_cmd[300], clean_line[1100];
    gd_sanitize(clean_cmd, sizeof(clean_cmd), up_cmd, strlen(up_cmd));
    if (gd__ssh_up_open(&c->flow, up_user, up_cmd, c->p->connect_ms, c->p->handshake_ms, set_up_fd,
                        c, &u, line, sizeof(line))) {
        /* (the upstream's disconnect text is in line: no escapes into the host's log) */
        gd_sanitize(clean_line, sizeof(clean_line), line, strlen(line));
        logf_(c->p, "denied %s@%s:%u %s: %s", up_user, c->name, c->flow.port, clean_cmd,
              clean_line);
        record(c, &x, 1, "upstream", line, 0, 0, 0, (now_s() - t0) * 1000);
        refuse(g, line);
        return;
    }
    uint64_t in = 0, out = 0;
    ssh_session gs = ssh_channel_get_session(g);
    ssh_set_message_callback(gs, refuse_cb, NULL);
    int rc = pump(c, g, u.channel, &in, &out);
    ssh_set_message_callback(gs, NULL, NULL);
    if (rc == -2) {
        snprintf(line, sizeof(line), "gondolin: ssh: %s: no traffic for %u s: cut\r\n", c->name,
                 c->p->idle_ms / 1000);
        ssh_channel_write_stderr(g, line, (uint32_t)strlen(line));
        logf_(c->p, "cut %s@%s:%u %s: idle for %u ms", up_user, c->name, c->flow.port, clean_cmd,
              c->p->idle_ms);
    }
    int st = rc ? 255 : ssh_channel_get_exit_status(u.channel);
    if (st < 0)
        st = 255;
    gd__ssh_up_close(&u, set_up_fd, c);
    double dt = now_s() - t0;
    logf_(c->p, "exec %s@%s:%u %s: exit %d, %llu bytes up, %llu down, %.2f s", up_user, c->name,
          c->flow.port, clean_cmd, st, (unsigned long long)in, (unsigned long long)out, dt);
    record(c, &x, 0, NULL, NULL, st, in, out, dt * 1000);
    ssh_channel_request_send_exit_status(g, st);
    ssh_channel_send_eof(g);
    ssh_channel_close(g); /* (freed with the session) */
}

/* One message of an authenticated session; *ch is the session channel, if open. */
static void on_message(struct conn *c, ssh_message m, ssh_channel *ch, const char *user)
{
    int type = ssh_message_type(m), sub = ssh_message_subtype(m);
    if (type == SSH_REQUEST_CHANNEL_OPEN && sub == SSH_CHANNEL_SESSION && !*ch &&
        c->channels < MAX_CHANNELS) {
        c->channels++;
        *ch = ssh_message_channel_request_open_reply_accept(m);
        return;
    }
    if (type == SSH_REQUEST_CHANNEL_OPEN) {
        logf_(c->p, "denied %s@%s:%u: port forwarding (%s channel)", user, c->name, c->flow.port,
              sub == SSH_CHANNEL_DIRECT_TCPIP      ? "direct-tcpip"
              : sub == SSH_CHANNEL_FORWARDED_TCPIP ? "forwarded-tcpip"
              : sub == SSH_CHANNEL_X11             ? "x11"
                                                   : "other");
        ssh_message_reply_default(m);
        return;
    }
    if (type == SSH_REQUEST_GLOBAL) {
        logf_(c->p, "denied %s@%s:%u: remote port forwarding", user, c->name, c->flow.port);
        ssh_message_reply_default(m);
        return;
    }
    if (type != SSH_REQUEST_CHANNEL || !*ch || ssh_message_channel_request_channel(m) != *ch) {
        ssh_message_reply_default(m);
        return;
    }
    char why[400];
    switch (sub) {
    case SSH_CHANNEL_REQUEST_PTY:
    case SSH_CHANNEL_REQUEST_ENV:
    case SSH_CHANNEL_REQUEST_WINDOW_CHANGE:
        ssh_message_channel_request_reply_success(m);
        return;
    case SSH_CHANNEL_REQUEST_EXEC: {
        char *cmd = strdup(ssh_message_channel_request_command(m) ?: "");
        ssh_message_channel_request_reply_success(m);
        ssh_channel g = *ch;
        *ch = NULL;
        if (cmd)
            exec_one(c, g, user, cmd);
        else
            refuse(g, "out of memory");
        free(cmd);
        return;
    }
    case SSH_CHANNEL_REQUEST_SHELL:
    case SSH_CHANNEL_REQUEST_SUBSYSTEM:
        snprintf(why, sizeof(why), "%s: %s%s refused: only git commands (exec) are proxied",
                 c->name, sub == SSH_CHANNEL_REQUEST_SHELL ? "interactive shell" : "subsystem ",
                 sub == SSH_CHANNEL_REQUEST_SHELL ? "" : ssh_message_channel_request_subsystem(m));
        logf_(c->p, "denied %s@%s:%u: %s", user, c->name, c->flow.port, why);
        ssh_message_channel_request_reply_success(m);
        refuse(*ch, why);
        *ch = NULL;
        return;
    default: /* x11, agent forwarding, signals, ...: refused */
        ssh_message_reply_default(m);
    }
}

static void serve_session(struct conn *c)
{
    ssh_bind b = ssh_bind_new();
    ssh_session s = ssh_new();
    ssh_channel ch = NULL;
    char user[128] = "";
    long secs = (long)(c->p->handshake_ms / 1000 ? c->p->handshake_ms / 1000 : 1);
    if (!b || !s || ssh_bind_options_set(b, SSH_BIND_OPTIONS_HOSTKEY, c->p->host_key) ||
        ssh_bind_accept_fd(b, s, c->fd) != SSH_OK) {
        pthread_mutex_lock(&c->p->mu);
        close(c->fd);
        c->fd = -1;
        pthread_mutex_unlock(&c->p->mu);
        goto out;
    }
    ssh_options_set(s, SSH_OPTIONS_TIMEOUT, &secs);
    ssh_set_auth_methods(s, SSH_AUTH_METHOD_NONE | SSH_AUTH_METHOD_PASSWORD |
                                SSH_AUTH_METHOD_PUBLICKEY);
    if (ssh_handle_key_exchange(s) != SSH_OK)
        goto out;
    ssh_message m;
    while ((m = ssh_message_get(s))) {
        if (!user[0]) {
            if (ssh_message_type(m) != SSH_REQUEST_AUTH)
                ssh_message_reply_default(m);
            else { /* OpenSSH's first attempt is "none": accepted at once */
                const char *u = ssh_message_auth_user(m);
                /* the guest's name goes upstream (unless the rule names one) and into
                 * logs: a plain user name or nothing ("-": every exec is refused) */
                snprintf(user, sizeof(user), "%s", u && gd_ssh_user_ok(u, strlen(u)) ? u : "-");
                ssh_message_auth_reply_success(m, 0);
            }
        } else
            on_message(c, m, &ch, user);
        ssh_message_free(m);
        if (__atomic_load_n(&c->p->closing, __ATOMIC_RELAXED))
            break;
    }
out:
    /* the session's channels (open or closed) go with ssh_free */
    pthread_mutex_lock(&c->p->mu); /* the socket closes below: never cut a reused fd */
    c->fd = -1;
    pthread_mutex_unlock(&c->p->mu);
    if (s) {
        ssh_disconnect(s);
        ssh_free(s);
    }
    if (b)
        ssh_bind_free(b);
}

static void *conn_main(void *arg)
{
    struct conn *c = arg;
    gd_ssh_proxy *p = c->p;
    /* a side that went away makes a write fail with EPIPE, never kills the process (a
     * SIGPIPE raised here stays pending on this thread and dies with it) */
    sigset_t pipe;
    sigemptyset(&pipe);
    sigaddset(&pipe, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe, NULL);
    serve_session(c);
    pthread_mutex_lock(&p->mu);
    for (struct conn **pp = &p->conns; *pp; pp = &(*pp)->next)
        if (*pp == c) {
            *pp = c->next;
            break;
        }
    p->nconns--;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    gd_ssh_conf_free(&c->conf);
    free(c);
    return NULL;
}

int gd_ssh_proxy_new(const struct gd_ssh_proxy_opts *o, gd_ssh_proxy **out, struct gd_err *err)
{
    gd_ssh_proxy *p = calloc(1, sizeof(*p));
    if (!p || !(p->host_key = strdup(o->host_key))) {
        free(p);
        return gd_err_set(err, -ENOMEM, "out of memory");
    }
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    p->max_conns = o->max_conns ? o->max_conns : 32;
    p->connect_ms = o->connect_ms ? o->connect_ms : 10000;
    p->handshake_ms = o->handshake_ms ? o->handshake_ms : 30000;
    p->idle_ms = o->idle_ms ? o->idle_ms : 600000;
    p->log = o->log;
    p->ud = o->ud;
    p->on_exec = o->on_exec;
    p->on_record = o->on_record;
    if (o->loop) {
        p->async = malloc(sizeof(*p->async));
        if (!p->async || uv_async_init(o->loop, p->async, run_jobs)) {
            free(p->async);
            free(p->host_key);
            free(p);
            return gd_err_set(err, -ENOMEM, "cannot start the SSH proxy");
        }
        p->async->data = p;
    }
    *out = p;
    return 0;
}

int gd_ssh_proxy_serve(gd_ssh_proxy *p, int fd, const struct gd_ssh_flow *f)
{
    struct conn *c = calloc(1, sizeof(*c));
    if (!c || gd_ssh_conf_copy(&c->conf, f->conf)) {
        free(c);
        close(fd);
        return -ENOMEM;
    }
    c->p = p;
    c->fd = fd;
    c->up_fd = -1;
    snprintf(c->name, sizeof(c->name), "%s", f->name);
    snprintf(c->addr, sizeof(c->addr), "%s", f->addr ? f->addr : "");
    c->flow = (struct gd_ssh_flow){.name = c->name,
                                   .port = f->port,
                                   .addr = f->addr ? c->addr : NULL,
                                   .allow_internal = f->allow_internal,
                                   .conf = &c->conf};
    pthread_mutex_lock(&p->mu);
    int rc = p->closing ? -ESHUTDOWN : p->nconns >= p->max_conns ? -EAGAIN : 0;
    pthread_t th;
    pthread_attr_t at;
    pthread_attr_init(&at);
    pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
    if (!rc && (rc = -pthread_create(&th, &at, conn_main, c)) == 0) {
        c->next = p->conns;
        p->conns = c;
        p->nconns++;
    }
    pthread_attr_destroy(&at);
    pthread_mutex_unlock(&p->mu);
    if (rc) {
        logf_(p, "denied a connection to %s:%u: %s", c->name, f->port,
              rc == -EAGAIN ? "too many SSH connections" : strerror(-rc));
        gd_ssh_conf_free(&c->conf);
        free(c);
        close(fd);
    }
    return rc;
}

unsigned gd_ssh_proxy_conns(gd_ssh_proxy *p)
{
    pthread_mutex_lock(&p->mu);
    unsigned n = p->nconns;
    pthread_mutex_unlock(&p->mu);
    return n;
}

static void free_handle(uv_handle_t *h)
{
    free(h);
}

void gd_ssh_proxy_free(gd_ssh_proxy *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->mu);
    __atomic_store_n(&p->closing, 1, __ATOMIC_RELAXED);
    for (struct job *j = p->head; j; j = j->next) { /* answered: denied */
        j->rc = -ESHUTDOWN;
        j->done = 1;
        pthread_cond_signal(&j->cv);
    }
    p->head = p->tail = NULL;
    for (struct conn *c = p->conns; c; c = c->next) {
        if (c->fd >= 0)
            shutdown(c->fd, SHUT_RDWR);
        if (c->up_fd >= 0)
            shutdown(c->up_fd, SHUT_RDWR);
    }
    while (p->nconns)
        pthread_cond_wait(&p->cv, &p->mu);
    pthread_mutex_unlock(&p->mu);
    if (p->async)
        uv_close((uv_handle_t *)p->async, free_handle);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    free(p->host_key);
    free(p);
}
