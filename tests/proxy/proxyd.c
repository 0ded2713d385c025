/*
 * gd-proxyd - the egress proxy engine with no VM: each TCP connection accepted on
 * --listen is served as if the guest had opened it (first byte decides TLS or HTTP).
 * Takes the same egress and policy flags as `gondolin exec` (--policy, --plugin,
 * --plugin-dir; no drop-in directories). Used by tests/proxy and the benchmarks.
 * Prints "SECRET NAME=PLACEHOLDER" lines and "READY <port>" once listening, then
 * "RELOAD ok|rejected REVISION [message]" after each reload (SIGHUP, file watch).
 * SIGTERM/SIGINT stop it cleanly.
 *
 *   gd-proxyd --listen 127.0.0.1:0 [--ca-dir DIR] [--raw HOST:PORT] [flags...]
 */
#define _GNU_SOURCE
#include "engine/engine.h"
#include "http/http.h"
#include "policy/egress.h"
#include "tls/tls.h"

#include <arpa/inet.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static gd_proxy *px;
static struct gd_egress eg; /* the egress flags, parsed: the engine's base */
static gd_engine *eng;
static uv_tcp_t srv;
static uv_signal_t sig_term, sig_int;
static char *raw_host;
static unsigned raw_port;

static void on_conn(uv_stream_t *s, int status)
{
    if (status)
        return;
    uv_tcp_t *c = malloc(sizeof(*c));
    uv_tcp_init(s->loop, c);
    if (uv_accept(s, (uv_stream_t *)c)) {
        uv_close((uv_handle_t *)c, (uv_close_cb)free);
        return;
    }
    uv_os_fd_t fd;
    uv_fileno((uv_handle_t *)c, &fd);
    int dup_fd = dup(fd);
    uv_close((uv_handle_t *)c, (uv_close_cb)free);
    struct gd_flow_info info = {.kind = GD_FLOW_SNIFF, .dst_addr = "127.0.0.1", .dst_port = 443};
    if (raw_host) {
        info.kind = GD_FLOW_RAW;
        info.raw_host = raw_host;
        info.raw_port = raw_port;
    }
    gd_proxy_serve(px, dup_fd, &info);
}

/* --inspect-bodies: a stand-in for a body-inspecting policy (the Lua/plugin layer does
 * this for real): buffer every request body, refuse ones that contain "FORBIDDEN". */
static enum gd_decision hook_inspect(gd_txn *t, enum gd_phase ph, void *ud)
{
    (void)ud;
    if (ph == GD_PHASE_REQUEST_HEAD) {
        gd_txn_want_body(t);
        return GD_CONTINUE;
    }
    size_t n;
    const uint8_t *b = gd_txn_body(t, &n);
    if (memmem(b, n, "FORBIDDEN", 9))
        return gd_txn_deny(t, 403, "inspect", "body carries a forbidden word");
    return GD_CONTINUE;
}

static void on_closed(gd_proxy *p, void *ud)
{
    (void)p;
    (void)ud;
}

static void on_sig(uv_signal_t *s, int signum)
{
    (void)signum;
    uv_close((uv_handle_t *)&srv, NULL);
    uv_close((uv_handle_t *)&sig_term, NULL);
    uv_close((uv_handle_t *)&sig_int, NULL);
    gd_engine_close(eng);
    (void)s;
    gd_proxy_close(px, on_closed, NULL);
}

static void on_reload(void *ud, int ok, const char *rev, const char *msg)
{
    (void)ud;
    printf("RELOAD %s %s%s%s\n", ok ? "ok" : "rejected", rev, msg ? " " : "", msg ? msg : "");
    fflush(stdout);
}

static void log_line(void *ud, const char *msg)
{
    (void)ud;
    fprintf(stderr, "gd-proxyd: %s\n", msg);
}

int main(int argc, char **argv)
{
    const char *listen_at = "127.0.0.1:0", *ca_dir = NULL;
    int inspect = 0, quiet = 0;
    struct gd_err err = {{0}};
    const char **dirs = calloc((size_t)argc + 1, sizeof(char *));
    const char **plugins = calloc((size_t)argc + 1, sizeof(char *));
    int ndirs = 0, nplugins = 0;
    const char *policy = NULL;
    for (int i = 1; i < argc; i++) {
        int rc = gd_egress_flag(&eg, argc, argv, &i, &err);
        if (rc < 0) {
            fprintf(stderr, "gd-proxyd: %s\n", err.msg);
            return 2;
        }
        if (rc)
            continue;
        if (!strcmp(argv[i], "--policy") && i + 1 < argc)
            policy = argv[++i];
        else if (!strcmp(argv[i], "--plugin") && i + 1 < argc)
            plugins[nplugins++] = argv[++i];
        else if (!strcmp(argv[i], "--plugin-dir") && i + 1 < argc)
            dirs[ndirs++] = argv[++i];
        else if (!strcmp(argv[i], "--listen") && i + 1 < argc)
            listen_at = argv[++i];
        else if (!strcmp(argv[i], "--ca-dir") && i + 1 < argc)
            ca_dir = argv[++i];
        else if (!strcmp(argv[i], "--quiet"))
            quiet = 1;
        else if (!strcmp(argv[i], "--inspect-bodies"))
            inspect = 1;
        else if (!strcmp(argv[i], "--raw") && i + 1 < argc) {
            raw_host = strdup(argv[++i]);
            char *c = strrchr(raw_host, ':');
            if (!c)
                return 2;
            *c = 0;
            raw_port = (unsigned)atoi(c + 1);
        } else {
            fprintf(stderr, "gd-proxyd: unknown argument %s\n", argv[i]);
            return 2;
        }
    }
    struct gd_engine_opts eo = {.policy = policy,
                                .base = &eg,
                                .plugin_dirs = dirs,
                                .plugins = plugins,
                                .quiet = quiet,
                                .log = log_line,
                                .on_reload = on_reload};
    if (gd_engine_new(&eo, &eng, &err)) {
        fprintf(stderr, "gd-proxyd: %s\n", err.msg);
        free(dirs);
        free(plugins);
        gd_egress_free(&eg);
        return 2;
    }
    struct gd_egress *cur = gd_engine_egress(eng);
    signal(SIGPIPE, SIG_IGN);
    gd_tls *tls;
    struct gd_tls_opts to = {.ca_dir = ca_dir, .upstream_ca = cur->upstream_ca};
    if (gd_tls_new(&to, &tls, &err)) {
        fprintf(stderr, "gd-proxyd: %s\n", err.msg);
        return 1;
    }
    uv_loop_t *loop = uv_default_loop();
    struct gd_proxy_opts po = {.tls = tls,
                               .resolve = (const char *const *)cur->resolve,
                               .on_event = gd_engine_on_event,
                               .event_ud = eng};
    gd_egress_proxy_limits(cur, &po);
    const char *lim;
    if ((lim = getenv("GD_PROXY_MAX_BODY")))
        po.max_body_buffer = strtoul(lim, NULL, 10);
    if (gd_proxy_new(loop, &po, &px) || gd_engine_install(eng, px))
        return 1;
    gd_engine_watch(eng, loop);
    if (inspect && gd_proxy_add_hook(px, "inspect", GD_PHASE_REQUEST_HEAD | GD_PHASE_REQUEST_BODY,
                                     hook_inspect, NULL))
        return 1;
    char host[64];
    snprintf(host, sizeof(host), "%s", listen_at);
    char *c = strrchr(host, ':');
    if (!c)
        return 2;
    *c = 0;
    struct sockaddr_in sa;
    uv_ip4_addr(host, atoi(c + 1), &sa);
    uv_tcp_init(loop, &srv);
    if (uv_tcp_bind(&srv, (struct sockaddr *)&sa, 0) ||
        uv_listen((uv_stream_t *)&srv, 512, on_conn)) {
        fprintf(stderr, "gd-proxyd: cannot listen on %s\n", listen_at);
        return 1;
    }
    struct sockaddr_in got;
    int gl = sizeof(got);
    uv_tcp_getsockname(&srv, (struct sockaddr *)&got, &gl);
    for (size_t k = 0; k < cur->nsecrets; k++)
        printf("SECRET %s=%s\n", cur->secrets[k].name, cur->secrets[k].placeholder);
    printf("REVISION %s\n", gd_engine_revision(eng));
    printf("READY %d\n", ntohs(got.sin_port));
    fflush(stdout);
    uv_signal_init(loop, &sig_term);
    uv_signal_init(loop, &sig_int);
    uv_signal_start(&sig_term, on_sig, SIGTERM);
    uv_signal_start(&sig_int, on_sig, SIGINT);
    uv_run(loop, UV_RUN_DEFAULT);
    gd_proxy_free(px);
    gd_tls_free(tls);
    gd_engine_free(eng);
    gd_egress_free(&eg);
    free(dirs);
    free(plugins);
    free(raw_host);
    uv_loop_close(loop);
    return 0;
}
