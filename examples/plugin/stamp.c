/*
 * stamp - an out-of-tree gondolin plugin, built against the installed SDK only:
 *
 *   make            # uses `pkg-config --cflags gondolin-plugin`
 *   gondolin run --plugin ./stamp.so --policy agent.lua -- curl https://api.github.com/
 *
 * It stamps every allowed request with X-Sandbox: <config.name> and refuses requests
 * whose User-Agent is missing (a stand-in for an organisation's own rule).
 */
#include <gondolin/plugin.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct stamp {
    const struct gd_host_api *api;
    char name[64];
};

static enum gd_plugin_decision on_request(gd_txn *t, unsigned phase, void *ud)
{
    (void)phase;
    struct stamp *s = ud;
    if (!s->api->txn_header(t, 0, "user-agent"))
        return s->api->txn_deny(t, 403, "requests without a User-Agent are refused");
    s->api->txn_set_header(t, 0, "X-Sandbox", s->name);
    return GD_PLUGIN_CONTINUE;
}

static int init(const struct gd_host_api *api, gd_plugin_host *host, const char *config,
                void **state, char *err, size_t errcap)
{
    struct stamp *s = calloc(1, sizeof(*s));
    if (!s) {
        snprintf(err, errcap, "out of memory");
        return -1;
    }
    s->api = api;
    /* config is JSON, e.g. {"name":"ci"}; a real plugin would use a JSON parser */
    const char *v = strstr(config, "\"name\":\"");
    snprintf(s->name, sizeof(s->name), "%.*s", v ? (int)strcspn(v + 8, "\"") : 7,
             v ? v + 8 : "gondola");
    if (api->register_http_hook(host, "stamp", GD_PLUGIN_PHASE_REQUEST, on_request, s)) {
        free(s);
        snprintf(err, errcap, "cannot register the hook");
        return -1;
    }
    *state = s;
    return 0;
}

GD_PLUGIN_EXPORT const struct gd_plugin_desc *gondolin_plugin_entry(void)
{
    static const struct gd_plugin_desc d = {
        GONDOLIN_PLUGIN_ABI_VERSION, sizeof(struct gd_plugin_desc), "stamp", "1.0", init, free};
    return &d;
}
