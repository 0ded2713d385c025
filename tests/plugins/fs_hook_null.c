/* Registers an fs hook with neither a before nor an after function: refused. */
#include <gondolin/plugin.h>

static int init(const struct gd_host_api *api, gd_plugin_host *host, const char *config,
                void **state, char *err, size_t errcap)
{
    (void)config, (void)state, (void)err, (void)errcap;
    return api->register_fs_hook(host, "nothing", NULL, NULL, NULL);
}

GD_PLUGIN_EXPORT const struct gd_plugin_desc *gondolin_plugin_entry(void)
{
    static const struct gd_plugin_desc d = {
        GONDOLIN_PLUGIN_ABI_VERSION, sizeof(struct gd_plugin_desc), "fsnull", "1", init, 0};
    return &d;
}
