/* bench_hook - the policy chain's own cost per request, in process, no network: the
 * engine decides N detached GET requests (two headers read, one set by the hook) with
 * flags only, with a Lua policy, or with a plugin. Prints ns per request.
 *   bench_hook N [--policy FILE] [--plugin SO] */
#define _GNU_SOURCE
#include "engine/engine.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 100000;
    const char *policy = NULL, *plugins[2] = {NULL, NULL};
    for (int i = 2; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--policy"))
            policy = argv[i + 1];
        else if (!strcmp(argv[i], "--plugin"))
            plugins[0] = argv[i + 1];
    }
    struct gd_egress base = {0};
    struct gd_err err = {{0}};
    if (gd_egress_allow(&base, "bench.test", &err)) {
        fprintf(stderr, "bench_hook: %s\n", err.msg);
        return 1;
    }
    const char *dirs[] = {NULL};
    struct gd_engine_opts o = {
        .policy = policy, .base = &base, .plugin_dirs = dirs, .plugins = plugins};
    gd_engine *e;
    int rc = gd_engine_new(&o, &e, &err);
    gd_egress_free(&base);
    if (rc) {
        fprintf(stderr, "bench_hook: %s\n", err.msg);
        return 1;
    }
    const char *h[] = {"User-Agent: bench", "Accept: */*", NULL};
    struct gd_engine_trial tr = {.method = "GET", .url = "http://bench.test/", .headers = h};
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < n; i++) {
        gd_txn *t;
        if (gd_engine_try(e, &tr, &t, &err))
            return 1;
        gd_txn_free_detached(t);
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    double ns = ((double)(b.tv_sec - a.tv_sec) * 1e9 + (double)(b.tv_nsec - a.tv_nsec)) / (double)n;
    printf("%.1f\n", ns);
    gd_engine_free(e);
    return 0;
}
