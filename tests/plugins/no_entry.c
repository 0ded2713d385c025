/* Exports no gondolin_plugin_entry: the loader must say so. */
int not_a_plugin(void);
__attribute__((visibility("default"))) int not_a_plugin(void)
{
    return 42;
}
