/* libFuzzer target: the HTTP glue, both directions, through the production hook chain.
 * The input is split at the first "\n--\n": the first part is what the guest sends
 * (requests, pipelined, any bytes), the rest is what the upstream answers (responses, any
 * bytes). A real proxy runs on a libuv loop with the policy engine's dispatcher installed
 * as `gondolin run` builds it: egress flags, the Lua policy tests/fuzz/fuzz_http.lua
 * (hooks in all four phases) and the plugin tests/plugins/hdr.c. The guest end is a
 * socketpair, the upstream a loopback listener in this process. The loop must go idle
 * every time: a flow that never finishes traps. */
#define _GNU_SOURCE
#include "engine/engine.h"
#include "http/http.h"

#include <sanitizer/lsan_interface.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static uv_loop_t loop;
static gd_proxy *px;
static gd_engine *eng;
static uv_tcp_t srv;
static int port;
static const uint8_t *resp;
static size_t resp_n;

static void on_shut(uv_shutdown_t *sd, int st)
{
    (void)st;
    free(sd);
}

static void on_wrote(uv_write_t *w, int st)
{
    (void)st;
    uv_shutdown_t *sd = malloc(sizeof(*sd));
    if (uv_shutdown(sd, w->handle, on_shut))
        free(sd);
    free(w);
}

static void on_rd(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    free(b->base);
    if (n < 0)
        uv_close((uv_handle_t *)s, (uv_close_cb)free);
}

static void alloc_cb(uv_handle_t *h, size_t sz, uv_buf_t *b)
{
    (void)h;
    b->base = malloc(sz);
    b->len = sz;
}

static void on_conn(uv_stream_t *s, int st)
{
    if (st)
        return;
    uv_tcp_t *c = malloc(sizeof(*c));
    uv_tcp_init(&loop, c);
    if (uv_accept(s, (uv_stream_t *)c)) {
        uv_close((uv_handle_t *)c, (uv_close_cb)free);
        return;
    }
    uv_read_start((uv_stream_t *)c, alloc_cb, on_rd);
    uv_write_t *w = malloc(sizeof(*w));
    uv_buf_t b = uv_buf_init((char *)resp, (unsigned)resp_n);
    uv_write(w, (uv_stream_t *)c, &b, 1, on_wrote);
}

/* FUZZ_HTTP_VERBOSE=1: denial lines and policy/plugin log lines on stderr (for seeds) */
static int verbose;

static void policy_log(void *ud, const char *msg)
{
    (void)ud;
    if (verbose)
        fprintf(stderr, "fuzz-http: %s\n", msg);
}

static void setup(void)
{
    uv_loop_init(&loop);
    uv_tcp_init(&loop, &srv);
    struct sockaddr_in sa;
    uv_ip4_addr("127.0.0.1", 0, &sa);
    uv_tcp_bind(&srv, (struct sockaddr *)&sa, 0);
    uv_listen((uv_stream_t *)&srv, 64, on_conn);
    int l = sizeof(sa);
    uv_tcp_getsockname(&srv, (struct sockaddr *)&sa, &l);
    port = ntohs(sa.sin_port);
    verbose = getenv("FUZZ_HTTP_VERBOSE") != NULL;
    char rule[64];
    snprintf(rule, sizeof(rule), "up.test:%d", port);
    struct gd_egress base = {0};
    struct gd_err err;
    if (gd_egress_allow(&base, rule, &err) || gd_egress_allow_internal(&base, "up.test", &err) ||
        gd_egress_secret(&base, "K", "up.test", "v", &err) ||
        gd_egress_resolve(&base, "up.test:127.0.0.1", &err)) {
        fprintf(stderr, "fuzz-http: %s\n", err.msg);
        abort();
    }
    const char *plugins[] = {GD_FUZZ_PLUGIN, NULL}, *none[] = {NULL};
    struct gd_engine_opts eo = {.policy = GD_FUZZ_POLICY,
                                .base = &base,
                                .plugin_dirs = none,
                                .plugins = plugins,
                                .lua_dir = GD_FUZZ_LUA_DIR,
                                .quiet = !verbose,
                                .log = policy_log};
    if (gd_engine_new(&eo, &eng, &err)) {
        fprintf(stderr, "fuzz-http: %s\n", err.msg);
        abort();
    }
    gd_egress_free(&base);
    struct gd_proxy_opts o = {.resolve = (const char *const *)gd_engine_egress(eng)->resolve,
                              .max_header_bytes = 4096,
                              .max_body_buffer = 4096,
                              .connect_ms = 2000,
                              .on_event = gd_engine_on_event,
                              .event_ud = eng};
    if (gd_proxy_new(&loop, &o, &px) || gd_engine_install(eng, px))
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n);
int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n)
{
    if (!px)
        setup();
    const uint8_t *sep = memmem(d, n, "\n--\n", 4);
    size_t gn = sep ? (size_t)(sep - d) : n;
    resp = sep ? sep + 4 : (const uint8_t *)"";
    resp_n = sep ? n - gn - 4 : 0;
    /* the guest's bytes may name the fuzz upstream's port through a marker */
    char *g = malloc(gn + 16);
    size_t k = 0;
    for (size_t i = 0; i < gn; i++) {
        if (d[i] == '@' && k + 6 < gn + 16) {
            k += (size_t)snprintf(g + k, 7, "%d", port);
            continue;
        }
        if (k < gn + 15)
            g[k++] = (char)d[i];
    }
    int sp[2];
    socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp);
    struct gd_flow_info info = {.kind = GD_FLOW_HTTP, .name = "up.test", .dst_port = 80};
    if (k && write(sp[1], g, k) < 0)
        abort();
    free(g);
    shutdown(sp[1], SHUT_WR);
    gd_proxy_serve(px, sp[0], &info);
    for (int i = 0; i < 2000 && gd_proxy_flows(px); i++)
        uv_run(&loop, UV_RUN_ONCE);
    if (gd_proxy_flows(px))
        __builtin_trap(); /* a flow that never finishes: the guest could hang us */
    char buf[4096];
    while (read(sp[1], buf, sizeof(buf)) > 0)
        ;
    close(sp[1]);
    /* libFuzzer looks for leaks only after inputs that allocate more than they free, and
     * gives up after 1000 of them (the Lua state's garbage and the upstream pool grow and
     * shrink at their own pace), so a leak could go unseen until exit, or be blamed on an
     * input that merely triggered the check. Every 1000 inputs, look for unreachable
     * memory anyway: the report's allocation stack names the culprit. */
    static unsigned runs;
    if (++runs % 1000 == 0 && __lsan_do_recoverable_leak_check()) {
        fprintf(stderr, "fuzz-http: the periodic leak check failed; the allocation stacks "
                        "above name the leak (not necessarily caused by this input)\n");
        abort();
    }
    return 0;
}
