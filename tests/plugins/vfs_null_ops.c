/* Registers a VFS provider with NULL ops: the load is refused with a line saying so. */
#include <gondolin/plugin.h>
#include <gondolin/vfs.h>

static int factory(void *ud, const char *mount, const char *config, void **p, char *err,
                   size_t errcap)
{
    (void)ud, (void)mount, (void)config, (void)p, (void)err, (void)errcap;
    return 0;
}

static int init(const struct gd_host_api *api, gd_plugin_host *host, const char *config,
                void **state, char *err, size_t errcap)
{
    (void)config, (void)state, (void)err, (void)errcap;
    api->register_vfs_provider(host, "nullops", NULL, sizeof(struct gd_vfs_ops), factory, NULL);
    return 0; /* ignores the error: the host refuses the load anyway */
}

GD_PLUGIN_EXPORT const struct gd_plugin_desc *gondolin_plugin_entry(void)
{
    static const struct gd_plugin_desc d = {
        GONDOLIN_PLUGIN_ABI_VERSION, sizeof(struct gd_plugin_desc), "vfsnull", "1", init, 0};
    return &d;
}
