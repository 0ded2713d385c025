/* init refuses (as a plugin would without its license file): the reason must reach the
 * user and the policy must not load. */
#include <gondolin/plugin.h>

#include <stdio.h>

static int init(const struct gd_host_api *api, gd_plugin_host *host, const char *config,
                void **state, char *err, size_t errcap)
{
    (void)api, (void)host, (void)config, (void)state;
    snprintf(err, errcap, "license file /nonexistent/license.key is missing");
    return -1;
}

GD_PLUGIN_EXPORT const struct gd_plugin_desc *gondolin_plugin_entry(void)
{
    static const struct gd_plugin_desc d = {
        GONDOLIN_PLUGIN_ABI_VERSION, sizeof(struct gd_plugin_desc), "initfail", "1", init, 0};
    return &d;
}
