/* A descriptor that claims to be smaller than ABI 1's: refused by struct_size. */
#include <gondolin/plugin.h>

GD_PLUGIN_EXPORT const struct gd_plugin_desc *gondolin_plugin_entry(void)
{
    static const struct gd_plugin_desc d = {GONDOLIN_PLUGIN_ABI_VERSION, 8, "small", "1", 0, 0};
    return &d;
}
