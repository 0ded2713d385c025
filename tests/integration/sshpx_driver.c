/*
 * sshpx_driver - the SSH egress proxy (core/ssh) on a libuv loop without a VM: each TCP
 * connection to a listener is handed to gd_ssh_proxy_serve as a guest connection to one
 * NAME:PORT, the way the sandbox's network stack does. Driven by
 * tests/integration/test_ssh_loop.py.
 *
 *   gd-sshpx-driver [--key NAME=PATH] [--known-hosts FILE] [--limit NAME=VALUE]
 *                   NAME:PORT=ADDR...
 *
 * For each NAME:PORT=ADDR (ADDR: the --resolve address, internal ranges allowed), one
 * line "listen NAME PORT LOCALPORT" on stdout, then "ready". Proxy log lines go to stderr
 * ("log: ..."), audit records to stdout ("record HOST DENIED EXIT RULE"). SIGTERM frees
 * the proxy at once (what a sandbox's stop does), runs the loop until every handle is
 * closed, prints "stopped MS" (how long the loop took to empty) and exits 0.
 */
#define _GNU_SOURCE
#include "ssh/ssh.h"

#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_LISTEN 8

struct listener {
    uv_poll_t h;
    int fd;
    char name[256], addr[64];
    unsigned port;
};

static uv_loop_t *loop;
static gd_ssh_proxy *px;
static struct gd_ssh_conf conf;
static struct listener ls[MAX_LISTEN];
static int nls;
static uv_signal_t sig_term;

static void log_line(void *ud, const char *line)
{
    (void)ud;
    fprintf(stderr, "log: %s\n", line);
}

static void on_record(void *ud, const struct gd_ssh_record *r)
{
    (void)ud;
    printf("record %s %d %d %s\n", r->x->host, r->denied, r->exit_status, r->rule ? r->rule : "-");
    fflush(stdout);
}

static void on_accept(uv_poll_t *h, int status, int events)
{
    struct listener *l = h->data;
    (void)events;
    int fd = status < 0 ? -1 : accept4(l->fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0 || !px) {
        if (fd >= 0)
            close(fd);
        return;
    }
    struct gd_ssh_flow f = {
        .name = l->name, .port = l->port, .addr = l->addr, .allow_internal = 1, .conf = &conf};
    gd_ssh_proxy_serve(px, fd, &f);
}

static uint64_t t_stop;

static void on_term(uv_signal_t *s, int sig)
{
    (void)sig;
    t_stop = uv_hrtime();
    gd_ssh_proxy_free(px);
    px = NULL;
    for (int i = 0; i < nls; i++)
        uv_close((uv_handle_t *)&ls[i].h, NULL);
    uv_close((uv_handle_t *)s, NULL);
}

static int add_listener(const char *spec, struct gd_err *err)
{
    const char *eq = strchr(spec, '=');
    char hp[300];
    if (!eq || nls == MAX_LISTEN || (size_t)(eq - spec) >= sizeof(hp))
        return gd_err_set(err, -EINVAL, "bad NAME:PORT=ADDR: %s", spec);
    memcpy(hp, spec, (size_t)(eq - spec));
    hp[eq - spec] = 0;
    struct listener *l = &ls[nls];
    int rc = gd_ssh_hostport_parse(hp, l->name, sizeof(l->name), &l->port);
    if (rc || (rc = gd_ssh_conf_allow(&conf, hp, err)))
        return rc ? rc : -EINVAL;
    snprintf(l->addr, sizeof(l->addr), "%s", eq + 1);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof(sa);
    l->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (l->fd < 0 || bind(l->fd, (struct sockaddr *)&sa, sl) || listen(l->fd, 64) ||
        getsockname(l->fd, (struct sockaddr *)&sa, &sl))
        return gd_err_set(err, -errno, "listen: %s", strerror(errno));
    uv_poll_init_socket(loop, &l->h, l->fd);
    l->h.data = l;
    uv_poll_start(&l->h, UV_READABLE, on_accept);
    printf("listen %s %u %u\n", l->name, l->port, ntohs(sa.sin_port));
    nls++;
    return 0;
}

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    setvbuf(stdout, NULL, _IOLBF, 0);
    loop = uv_default_loop();
    struct gd_err err = {{0}};
    for (int i = 1; i < argc; i++) {
        int rc = 0;
        if (!strcmp(argv[i], "--key") && i + 1 < argc)
            rc = gd_ssh_conf_key(&conf, argv[++i], &err);
        else if (!strcmp(argv[i], "--known-hosts") && i + 1 < argc)
            rc = gd_ssh_conf_known_hosts(&conf, argv[++i], &err);
        else if (!strcmp(argv[i], "--limit") && i + 1 < argc)
            rc = gd_ssh_conf_limit(&conf, argv[++i], &err);
        else
            rc = add_listener(argv[i], &err);
        if (rc) {
            fprintf(stderr, "gd-sshpx-driver: %s\n", err.msg);
            return 2;
        }
    }
    char path[4096], pub[400];
    if (gd_ssh_host_key(path, sizeof(path), pub, sizeof(pub), &err)) {
        fprintf(stderr, "gd-sshpx-driver: %s\n", err.msg);
        return 1;
    }
    struct gd_ssh_proxy_opts o = {.host_key = path,
                                  .loop = loop,
                                  .log = log_line,
                                  .on_record = on_record,
                                  .max_conns = conf.max_conns,
                                  .connect_ms = conf.connect_ms,
                                  .handshake_ms = conf.handshake_ms,
                                  .idle_ms = conf.idle_ms};
    if (gd_ssh_proxy_new(&o, &px, &err)) {
        fprintf(stderr, "gd-sshpx-driver: %s\n", err.msg);
        return 1;
    }
    uv_signal_init(loop, &sig_term);
    uv_signal_start(&sig_term, on_term, SIGTERM);
    printf("ready\n");
    uv_run(loop, UV_RUN_DEFAULT); /* until SIGTERM closed everything */
    printf("stopped %llu\n", (unsigned long long)((uv_hrtime() - t_stop) / 1000000));
    for (int i = 0; i < nls; i++)
        close(ls[i].fd);
    gd_ssh_conf_free(&conf);
    return uv_loop_close(loop) ? 1 : 0;
}
