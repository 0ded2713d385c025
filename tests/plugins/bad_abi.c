/* Built for a future ABI: the loader must refuse it by version. */
#include <gondolin/plugin.h>

static int init(const struct gd_host_api *api, gd_plugin_host *host, const char *config,
                void **state, char *err, size_t errcap)
{
    (void)api, (void)host, (void)config, (void)state, (void)err, (void)errcap;
    return 0;
}

GD_PLUGIN_EXPORT const struct gd_plugin_desc *gondolin_plugin_entry(void)
{
    static const struct gd_plugin_desc d = {99, sizeof(struct gd_plugin_desc), "badabi", "1", init,
                                            0};
    return &d;
}
