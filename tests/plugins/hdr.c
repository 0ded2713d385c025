/* testhdr: reads two request headers and sets one (the benchmark's plugin hook, and the
 * loader's happy path in tests). Config: { "value": "..." } is put in X-Plugin. A
 * request for /plugin-deny is refused with 451. */
#define _GNU_SOURCE
#include <gondolin/plugin.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct st {
    const struct gd_host_api *api;
    char value[128];
};

static enum gd_plugin_decision on_req(gd_txn *t, unsigned phase, void *ud)
{
    (void)phase;
    struct st *s = ud;
    const char *ua = s->api->txn_header(t, 0, "user-agent");
    const char *acc = s->api->txn_header(t, 0, "accept");
    if (!strcmp(s->api->txn_target(t), "/plugin-deny"))
        return s->api->txn_deny(t, 451, "testhdr refuses /plugin-deny");
    s->api->txn_set_header(t, 0, "X-Plugin", ua && acc ? s->value : "partial");
    return GD_PLUGIN_CONTINUE;
}

static void fini(void *p)
{
    free(p);
}

static int init(const struct gd_host_api *api, gd_plugin_host *host, const char *config,
                void **state, char *err, size_t errcap)
{
    struct st *s = calloc(1, sizeof(*s));
    s->api = api;
    snprintf(s->value, sizeof(s->value), "seen");
    const char *v = strstr(config, "\"value\":\"");
    if (v) {
        v += 9;
        size_t n = strcspn(v, "\"");
        snprintf(s->value, sizeof(s->value), "%.*s", (int)n, v);
    }
    if (api->register_http_hook(host, "hdr", GD_PLUGIN_PHASE_REQUEST, on_req, s)) {
        snprintf(err, errcap, "register failed");
        free(s);
        return -1;
    }
    *state = s;
    return 0;
}

GD_PLUGIN_EXPORT const struct gd_plugin_desc *gondolin_plugin_entry(void)
{
    static const struct gd_plugin_desc d = {
        GONDOLIN_PLUGIN_ABI_VERSION, sizeof(struct gd_plugin_desc), "testhdr", "1.0", init, fini};
    return &d;
}
