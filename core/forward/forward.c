/* forward.c - host listeners bridged to guest ports through agent tunnels (forward.h). */
#define _GNU_SOURCE
#include "forward/forward.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define READ_MAX 65536u       /* one STDIN frame */
#define WINDOW (256u * 1024u) /* guest output in flight per connection */
#define DRAIN_MS 5000         /* after our FIN: how long the client may keep sending */
#define ACCEPT_BACKOFF_MS 500 /* out of descriptors: pause accepting */
#define ACCEPT_BATCH 64

struct conn {
    gd_forward *fw;
    struct conn *prev, *next;
    union {
        uv_handle_t h;
        uv_stream_t s;
        uv_tcp_t tcp;   /* raw mode: the accepted client */
        uv_pipe_t pipe; /* HTTP mode: our end of the proxy's socketpair */
    } u;
    int open; /* the handle is initialised and not closed */
    uv_timer_t timer;
    int timer_open;
    gd_exec *x;     /* the tunnel, until its on_exit */
    int started;    /* the guest side accepted (stdin credit arrived) */
    int reading;    /* reading the host side */
    int local_eof;  /* the host side sent its FIN (passed on as a STDIN EOF) */
    int guest_done; /* the guest side closed cleanly: FIN to the host side, then drain */
    int shut;       /* our FIN was sent: what the host side still sends is discarded */
    int closing;
    size_t inflight; /* guest bytes handed to the host side, not yet written */
    char peer[80];   /* "connection from ADDR" or "tunnel of the HTTP proxy", for logs */
};

struct wreq {
    uv_write_t w;
    struct conn *c;
    size_t n;
    char data[];
};

struct gd_forward {
    uv_loop_t *loop;
    gd_vm *vm;
    struct gd_forward_opts o;
    char host[64]; /* bound address, for messages */
    char dial_addr[32];
    unsigned port;
    int lfd;
    uv_poll_t poll;
    int poll_open, polling;
    uv_timer_t backoff;
    int backoff_open;
    gd_proxy *px;
    int px_open;
    struct conn *conns;
    size_t nconns;
    int closing, done;
    void (*close_cb)(gd_forward *, void *);
    void *close_ud;
    char rbuf[READ_MAX]; /* libuv reads into it and calls back at once: one is enough */
};

static void fw_log(gd_forward *fw, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void fw_log(gd_forward *fw, const char *fmt, ...)
{
    if (!fw->o.log)
        return;
    char line[512];
    int n = snprintf(line, sizeof(line), "forward %s:%u -> guest port %u: ", fw->host, fw->port,
                     fw->o.guest_port);
    va_list ap;
    va_start(ap, fmt);
    if (n > 0 && (size_t)n < sizeof(line))
        vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
    va_end(ap);
    fw->o.log(fw->o.ud, line);
}

/* Why a tunnel could not be opened, for the log. */
static const char *start_error(int rc)
{
    return rc == -ENOTCONN  ? "the VM is not running"
           : rc == -ENOTSUP ? "the guest agent predates tunnels (protocol 1.1): rebuild the image"
                            : strerror(-rc);
}

static void maybe_done(gd_forward *fw)
{
    if (!fw->closing || fw->done || fw->conns || fw->poll_open || fw->backoff_open || fw->px_open)
        return;
    fw->done = 1;
    if (fw->close_cb)
        fw->close_cb(fw, fw->close_ud);
}

/* ---- one connection: a host-side stream bridged to a guest tunnel ---- */

static void conn_maybe_free(struct conn *c)
{
    if (c->open || c->timer_open || c->x)
        return;
    gd_forward *fw = c->fw;
    if (c->prev)
        c->prev->next = c->next;
    else
        fw->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    fw->nconns--;
    free(c);
    maybe_done(fw);
}

static void on_conn_closed(uv_handle_t *h)
{
    struct conn *c = h->data;
    c->open = 0;
    conn_maybe_free(c);
}

static void on_timer_closed(uv_handle_t *h)
{
    struct conn *c = h->data;
    c->timer_open = 0;
    conn_maybe_free(c);
}

/* Ends the connection: the tunnel is reset (SIGKILL) if it still runs, the host side
 * closed (reset: with an RST where it is TCP, so a failure reads as one). */
static void conn_close(struct conn *c, int reset)
{
    if (c->closing)
        return;
    c->closing = 1;
    if (c->x)
        gd_exec_signal(c->x, SIGKILL); /* on_exit follows; an error means the VM is going */
    if (c->timer_open)
        uv_close((uv_handle_t *)&c->timer, on_timer_closed);
    if (c->open) {
        if (reset && c->u.h.type == UV_TCP)
            uv_tcp_close_reset(&c->u.tcp, on_conn_closed);
        else
            uv_close(&c->u.h, on_conn_closed);
    }
    conn_maybe_free(c);
}

static void on_timeout(uv_timer_t *t)
{
    struct conn *c = t->data;
    gd_forward *fw = c->fw;
    if (c->shut) {
        conn_close(c, 0); /* the client did not finish after our FIN */
        return;
    }
    if (!c->started)
        fw_log(fw, "%s: the guest did not accept within %u ms", c->peer, fw->o.connect_ms);
    else
        fw_log(fw, "%s: idle for %u ms, closed", c->peer, fw->o.idle_ms);
    conn_close(c, 1);
}

static void arm(struct conn *c)
{
    if (c->timer_open && !c->closing)
        uv_timer_start(&c->timer, on_timeout,
                       c->shut      ? DRAIN_MS
                       : c->started ? c->fw->o.idle_ms
                                    : c->fw->o.connect_ms,
                       0);
}

/* Reads the host side at most up to the tunnel's stdin credit. */
static void on_alloc(uv_handle_t *h, size_t sz, uv_buf_t *b)
{
    (void)sz;
    struct conn *c = h->data;
    size_t room = READ_MAX;
    if (!c->shut) {
        size_t credit = c->x ? gd_exec_stdin_credit(c->x) : 0;
        room = credit < room ? credit : room;
    }
    *b = uv_buf_init(c->fw->rbuf, (unsigned)room);
}

static void read_stop(struct conn *c)
{
    if (c->reading) {
        uv_read_stop(&c->u.s);
        c->reading = 0;
    }
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b);

static void read_start(struct conn *c)
{
    if (!c->reading && c->open && !c->closing && !c->local_eof) {
        c->reading = 1;
        uv_read_start(&c->u.s, on_alloc, on_read);
    }
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    struct conn *c = s->data;
    if (c->closing)
        return;
    if (n == 0)
        return;            /* EAGAIN */
    if (n == UV_ENOBUFS) { /* no credit left: wait for the guest's grant */
        read_stop(c);
        return;
    }
    if (n == UV_EOF) {
        read_stop(c);
        c->local_eof = 1;
        if (c->shut) {
            conn_close(c, 0); /* both sides said FIN */
            return;
        }
        if (c->x && gd_exec_write(c->x, NULL, 0, 1) < 0)
            conn_close(c, 1);
        return;
    }
    if (n < 0) {
        if (!c->shut)
            fw_log(c->fw, "%s: %s", c->peer, uv_strerror((int)n));
        conn_close(c, 1);
        return;
    }
    if (c->shut)
        return; /* after our FIN: discarded */
    arm(c);
    long k = c->x ? gd_exec_write(c->x, b->base, (size_t)n, 0) : -EPIPE;
    if (k != n) { /* cannot happen within the credit read; a failed channel can */
        conn_close(c, 1);
        return;
    }
    if (!gd_exec_stdin_credit(c->x))
        read_stop(c);
}

static void on_shutdown(uv_shutdown_t *r, int status)
{
    struct conn *c = r->data;
    free(r);
    if (c->closing)
        return;
    if (status) {
        conn_close(c, 1);
        return;
    }
    if (c->local_eof) {
        conn_close(c, 0);
        return;
    }
    /* drain: an unread byte at close would turn our FIN into an RST, and an RST may
     * destroy response bytes the client has not read yet */
    arm(c);
    read_start(c);
}

/* The guest side closed cleanly and everything it sent was written: FIN to the host. */
static void conn_finish(struct conn *c)
{
    if (c->closing || c->shut || c->inflight)
        return;
    c->shut = 1;
    uv_shutdown_t *r = malloc(sizeof(*r));
    if (!r || uv_shutdown(r, &c->u.s, on_shutdown)) {
        free(r);
        conn_close(c, 0);
        return;
    }
    r->data = c;
}

static void on_written(uv_write_t *w, int status)
{
    struct wreq *r = (struct wreq *)w;
    struct conn *c = r->c;
    size_t n = r->n;
    free(r);
    c->inflight -= n;
    if (c->closing)
        return;
    if (status) {
        fw_log(c->fw, "%s: %s", c->peer, uv_strerror(status));
        conn_close(c, 1);
        return;
    }
    if (c->x)
        gd_exec_ack(c->x, 1, n); /* the guest may send this much more */
    if (c->guest_done)
        conn_finish(c);
}

static void on_output(gd_exec *x, int stream, const uint8_t *d, size_t n, void *ud)
{
    (void)x;
    struct conn *c = ud;
    if (stream != 1 || c->closing)
        return;
    struct wreq *r = malloc(sizeof(*r) + n);
    if (!r) {
        conn_close(c, 1);
        return;
    }
    r->c = c;
    r->n = n;
    memcpy(r->data, d, n);
    uv_buf_t b = uv_buf_init(r->data, (unsigned)n);
    if (uv_write(&r->w, &c->u.s, &b, 1, on_written)) {
        free(r);
        conn_close(c, 1);
        return;
    }
    c->inflight += n;
    arm(c);
}

static void on_credit(gd_exec *x, size_t credit, void *ud)
{
    (void)x;
    (void)credit;
    struct conn *c = ud;
    if (!c->started) {
        c->started = 1;
        arm(c); /* from the connect deadline to the idle one */
    }
    if (!c->shut)
        read_start(c);
}

static void on_tunnel_exit(gd_exec *x, const struct gd_exec_result *r, void *ud)
{
    (void)x;
    struct conn *c = ud;
    c->x = NULL;
    if (c->closing) {
        conn_maybe_free(c);
        return;
    }
    if (r->error == GD_EXEC_OK && r->exit_code == 0) {
        c->guest_done = 1;
        read_stop(c); /* nothing more can reach the guest */
        conn_finish(c);
        return;
    }
    if (r->error == GD_EXEC_START_FAILED)
        fw_log(c->fw, "%s: %s", c->peer, r->message ? r->message : "failed");
    else if (r->error == GD_EXEC_VM_GONE)
        fw_log(c->fw, "%s: the VM stopped", c->peer);
    else
        fw_log(c->fw, "%s: reset by the guest side", c->peer);
    conn_close(c, 1);
}

static const struct gd_exec_cbs tunnel_cbs = {
    .on_output = on_output, .on_stdin_credit = on_credit, .on_exit = on_tunnel_exit};

/* A connection on fd (taken, also on error): a TCP client (raw mode) or our end of a
 * socketpair (HTTP mode), bridged to a new tunnel. */
static int conn_new(gd_forward *fw, int fd, int is_pipe, const char *peer)
{
    struct conn *c = calloc(1, sizeof(*c));
    if (!c) {
        close(fd);
        return -ENOMEM;
    }
    c->fw = fw;
    snprintf(c->peer, sizeof(c->peer), "%s", peer);
    struct gd_exec_opts xo = {.connect_port = fw->o.guest_port, .window = WINDOW, .manual_ack = 1};
    int rc = gd_exec_start(fw->vm, &xo, &tunnel_cbs, c, &c->x);
    if (rc) {
        close(fd);
        free(c);
        return rc;
    }
    c->next = fw->conns;
    if (fw->conns)
        fw->conns->prev = c;
    fw->conns = c;
    fw->nconns++;
    if (is_pipe) {
        uv_pipe_init(fw->loop, &c->u.pipe, 0);
        rc = uv_pipe_open(&c->u.pipe, fd);
    } else {
        uv_tcp_init(fw->loop, &c->u.tcp);
        rc = uv_tcp_open(&c->u.tcp, fd);
        if (!rc)
            uv_tcp_nodelay(&c->u.tcp, 1);
    }
    c->u.h.data = c;
    c->open = 1;
    uv_timer_init(fw->loop, &c->timer);
    c->timer.data = c;
    c->timer_open = 1;
    if (rc) {
        close(fd);
        conn_close(c, 0);
        return rc;
    }
    arm(c);
    return 0;
}

/* ---- HTTP mode: the ingress proxy's upstream connections ---- */

static int fw_dial(void *ud, const char *host, unsigned port)
{
    (void)host;
    (void)port;
    gd_forward *fw = ud;
    if (fw->closing)
        return -ESHUTDOWN;
    int sp[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sp))
        return -errno;
    int rc = conn_new(fw, sp[0], 1, "tunnel of the HTTP proxy");
    if (rc) {
        close(sp[1]);
        fw_log(fw, "cannot open a tunnel: %s", start_error(rc));
        return rc;
    }
    return sp[1];
}

static void on_proxy_closed(gd_proxy *px, void *ud)
{
    (void)px;
    gd_forward *fw = ud;
    fw->px_open = 0;
    maybe_done(fw);
}

/* ---- the listener ---- */

static void addr_text(const struct sockaddr_storage *ss, char *buf, size_t cap)
{
    char ip[INET6_ADDRSTRLEN] = "?";
    unsigned port = 0;
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
        inet_ntop(AF_INET, &a->sin_addr, ip, sizeof(ip));
        port = ntohs(a->sin_port);
        snprintf(buf, cap, "%s:%u", ip, port);
    } else if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
        inet_ntop(AF_INET6, &a->sin6_addr, ip, sizeof(ip));
        port = ntohs(a->sin6_port);
        snprintf(buf, cap, "[%s]:%u", ip, port);
    } else {
        snprintf(buf, cap, "?");
    }
}

static void on_listen(uv_poll_t *p, int status, int events);

static void on_backoff(uv_timer_t *t)
{
    gd_forward *fw = t->data;
    if (!fw->closing && fw->poll_open && !fw->polling) {
        fw->polling = 1;
        uv_poll_start(&fw->poll, UV_READABLE, on_listen);
    }
}

static void on_listen(uv_poll_t *p, int status, int events)
{
    (void)status;
    (void)events;
    gd_forward *fw = p->data;
    for (int i = 0; i < ACCEPT_BATCH && !fw->closing; i++) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        int fd = accept4(fw->lfd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                /* the pending connection stays queued: stop polling a while, do not spin */
                fw_log(fw, "cannot accept: %s; pausing %d ms", strerror(errno), ACCEPT_BACKOFF_MS);
                uv_poll_stop(&fw->poll);
                fw->polling = 0;
                uv_timer_start(&fw->backoff, on_backoff, ACCEPT_BACKOFF_MS, 0);
            }
            return; /* EAGAIN, or a connection that went away before we took it */
        }
        char addr[64], peer[80];
        addr_text(&ss, addr, sizeof(addr));
        snprintf(peer, sizeof(peer), "connection from %s", addr);
        size_t open = fw->px ? gd_proxy_flows(fw->px) : fw->nconns;
        if (open >= fw->o.max_conns) {
            fw_log(fw, "%s refused: %zu connections open (the limit)", peer, open);
            close(fd);
            continue;
        }
        int rc;
        if (fw->px) {
            struct gd_flow_info info = {.kind = GD_FLOW_HTTP};
            rc = gd_proxy_serve(fw->px, fd, &info);
        } else {
            rc = conn_new(fw, fd, 0, peer);
        }
        if (rc)
            fw_log(fw, "%s: %s", peer, start_error(rc));
    }
}

static void on_failed_closed(uv_handle_t *h)
{
    gd_forward *fw = h->data;
    close(fw->lfd);
    free(fw);
}

/* The listen address: an IP literal or localhost (127.0.0.1, also for NULL). */
static int listen_addr(const char *host, unsigned port, struct sockaddr_storage *ss, socklen_t *sl)
{
    memset(ss, 0, sizeof(*ss));
    if (!host || !*host || !strcmp(host, "localhost"))
        host = "127.0.0.1";
    if (uv_ip4_addr(host, (int)port, (struct sockaddr_in *)ss) == 0) {
        *sl = sizeof(struct sockaddr_in);
        return 0;
    }
    if (!strchr(host, '%') && uv_ip6_addr(host, (int)port, (struct sockaddr_in6 *)ss) == 0) {
        *sl = sizeof(struct sockaddr_in6);
        return 0;
    }
    return -EINVAL;
}

int gd_forward_new(uv_loop_t *loop, gd_vm *vm, const struct gd_forward_opts *o, gd_forward **out,
                   struct gd_err *err)
{
    if (!o->guest_port || o->guest_port > 65535)
        return gd_err_set(err, -EINVAL, "guest port %u: must be 1-65535", o->guest_port);
    if (o->listen_port > 65535)
        return gd_err_set(err, -EINVAL, "port %u: must be 0-65535", o->listen_port);
    struct sockaddr_storage ss;
    socklen_t sl;
    if (listen_addr(o->listen_host, o->listen_port, &ss, &sl))
        return gd_err_set(err, -EINVAL, "listen address '%s': must be an IP address or localhost",
                          o->listen_host);
    gd_forward *fw = calloc(1, sizeof(*fw));
    if (!fw)
        return gd_err_set(err, -ENOMEM, "out of memory");
    fw->loop = loop;
    fw->vm = vm;
    fw->o = *o;
    fw->o.listen_host = NULL; /* not kept: fw->host is the bound address */
    fw->o.proxy = NULL;
    if (!fw->o.max_conns)
        fw->o.max_conns = 256;
    if (!fw->o.connect_ms)
        fw->o.connect_ms = 15000;
    if (!fw->o.idle_ms)
        fw->o.idle_ms = 3600000;
    snprintf(fw->dial_addr, sizeof(fw->dial_addr), "guest:%u", o->guest_port);
    int rc;
    char bound[80];
    addr_text(&ss, bound, sizeof(bound));
    fw->lfd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fw->lfd < 0) {
        rc = gd_err_set(err, -errno, "cannot listen on %s: %s", bound, strerror(errno));
        goto out_free;
    }
    int one = 1;
    setsockopt(fw->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (ss.ss_family == AF_INET6)
        setsockopt(fw->lfd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    if (bind(fw->lfd, (struct sockaddr *)&ss, sl) || listen(fw->lfd, 128)) {
        rc = gd_err_set(err, -errno, "cannot listen on %s: %s", bound, strerror(errno));
        goto out_close;
    }
    sl = sizeof(ss);
    getsockname(fw->lfd, (struct sockaddr *)&ss, &sl);
    fw->port = ntohs(ss.ss_family == AF_INET ? ((struct sockaddr_in *)&ss)->sin_port
                                             : ((struct sockaddr_in6 *)&ss)->sin6_port);
    char ip[INET6_ADDRSTRLEN] = "";
    inet_ntop(ss.ss_family,
              ss.ss_family == AF_INET ? (void *)&((struct sockaddr_in *)&ss)->sin_addr
                                      : (void *)&((struct sockaddr_in6 *)&ss)->sin6_addr,
              ip, sizeof(ip));
    snprintf(fw->host, sizeof(fw->host), ss.ss_family == AF_INET6 ? "[%s]" : "%s", ip);
    if ((rc = uv_poll_init(loop, &fw->poll, fw->lfd))) {
        rc = gd_err_set(err, rc, "cannot listen on %s: %s", bound, uv_strerror(rc));
        goto out_close;
    }
    fw->poll.data = fw;
    if (o->http) {
        struct gd_proxy_opts po = o->proxy ? *o->proxy : (struct gd_proxy_opts){0};
        po.ingress = 1;
        po.dial = fw_dial;
        po.dial_ud = fw;
        po.dial_addr = fw->dial_addr;
        if (!po.max_flows)
            po.max_flows = fw->o.max_conns;
        if (!po.pool_total) /* an idle pooled tunnel holds one of the agent's sessions */
            po.pool_total = 32;
        if ((rc = gd_proxy_new(loop, &po, &fw->px))) {
            rc = gd_err_set(err, rc, "cannot create the ingress proxy: %s", strerror(-rc));
            uv_close((uv_handle_t *)&fw->poll, on_failed_closed); /* frees fw */
            return rc;
        }
        fw->px_open = 1;
    }
    fw->poll_open = fw->polling = 1;
    uv_poll_start(&fw->poll, UV_READABLE, on_listen);
    uv_timer_init(loop, &fw->backoff);
    fw->backoff.data = fw;
    fw->backoff_open = 1;
    *out = fw;
    return 0;
out_close:
    close(fw->lfd);
out_free:
    free(fw);
    return rc;
}

unsigned gd_forward_port(const gd_forward *fw)
{
    return fw->port;
}

size_t gd_forward_conns(const gd_forward *fw)
{
    return fw->px ? gd_proxy_flows(fw->px) : fw->nconns;
}

gd_proxy *gd_forward_proxy(gd_forward *fw)
{
    return fw->px;
}

static void on_poll_closed(uv_handle_t *h)
{
    gd_forward *fw = h->data;
    fw->poll_open = 0;
    close(fw->lfd);
    fw->lfd = -1;
    maybe_done(fw);
}

static void on_backoff_closed(uv_handle_t *h)
{
    gd_forward *fw = h->data;
    fw->backoff_open = 0;
    maybe_done(fw);
}

void gd_forward_close(gd_forward *fw, void (*cb)(gd_forward *, void *), void *ud)
{
    if (fw->closing)
        return;
    fw->closing = 1;
    fw->close_cb = cb;
    fw->close_ud = ud;
    uv_close((uv_handle_t *)&fw->poll, on_poll_closed);
    uv_close((uv_handle_t *)&fw->backoff, on_backoff_closed);
    if (fw->px)
        gd_proxy_close(fw->px, on_proxy_closed, fw);
    for (struct conn *c = fw->conns, *next; c; c = next) {
        next = c->next;
        conn_close(c, 1);
    }
    maybe_done(fw);
}

void gd_forward_free(gd_forward *fw)
{
    if (!fw)
        return;
    gd_proxy_free(fw->px);
    free(fw);
}

/* ---- "[HOST:]PORT=GUESTPORT" ---- */

static int parse_port(const char *s, size_t n, unsigned lo, unsigned *out)
{
    unsigned v = 0;
    if (n == 0 || n > 5)
        return -EINVAL;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -EINVAL;
        v = v * 10 + (unsigned)(s[i] - '0');
    }
    if (v < lo || v > 65535)
        return -EINVAL;
    *out = v;
    return 0;
}

int gd_forward_parse(const char *spec, struct gd_forward_spec *out, struct gd_err *err)
{
    memset(out, 0, sizeof(*out));
    const char *eq = strchr(spec, '=');
    if (!eq || eq == spec || strchr(eq + 1, '='))
        return gd_err_set(err, -EINVAL, "'%s': expected [HOST:]PORT=GUESTPORT", spec);
    if (parse_port(eq + 1, strlen(eq + 1), 1, &out->guest_port))
        return gd_err_set(err, -EINVAL, "'%s': the guest port must be a number 1-65535", spec);
    const char *port = spec;
    const char *colon = memrchr(spec, ':', (size_t)(eq - spec));
    if (colon) {
        const char *h = spec;
        size_t hl = (size_t)(colon - spec);
        if (hl >= 2 && h[0] == '[' && h[hl - 1] == ']') {
            h++;
            hl -= 2;
        }
        struct in6_addr a;
        if (hl == 0 || hl >= sizeof(out->host))
            return gd_err_set(err, -EINVAL,
                              "'%s': listen address must be an IP address or "
                              "localhost",
                              spec);
        memcpy(out->host, h, hl);
        out->host[hl] = 0;
        int v6 = h != spec;
        if (strcmp(out->host, "localhost") &&
            inet_pton(v6 ? AF_INET6 : AF_INET, out->host, &a) != 1) {
            int was_v6 = !v6 && strchr(out->host, ':');
            memset(out, 0, sizeof(*out));
            return gd_err_set(err, -EINVAL, "'%s': listen address must be %s", spec,
                              was_v6 ? "an IPv6 address in brackets ([::1]:PORT=GUESTPORT)"
                                     : "an IP address or localhost");
        }
        port = colon + 1;
    }
    if (parse_port(port, (size_t)(eq - port), 0, &out->port)) {
        memset(out, 0, sizeof(*out));
        return gd_err_set(err, -EINVAL, "'%s': the host port must be a number 0-65535", spec);
    }
    return 0;
}
