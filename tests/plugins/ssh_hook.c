/* An SSH exec hook (API level 3): denies pushes to repositories under "locked/" and any
 * exec by the user "mallory"; everything else goes on to the policy's on_ssh_exec. */
#include <gondolin/plugin.h>

#include <stdio.h>
#include <string.h>

static int on_exec(void *ud, const struct gd_plugin_ssh_exec *x, char *reason, size_t cap)
{
    (void)ud;
    if (!strcmp(x->user, "mallory")) {
        snprintf(reason, cap, "user %s is blocked", x->user);
        return 1;
    }
    if (x->git_service && !strcmp(x->git_service, "git-receive-pack") &&
        !strncmp(x->git_repo, "locked/", 7)) {
        snprintf(reason, cap, "%s:%u: %s is locked", x->host, x->port, x->git_repo);
        return 1;
    }
    return 0;
}

static int init(const struct gd_host_api *api, gd_plugin_host *host, const char *config,
                void **state, char *err, size_t errcap)
{
    (void)config, (void)state;
    if (!GD_PLUGIN_API_HAS(api, register_ssh_hook)) {
        snprintf(err, errcap, "the host has no SSH hooks");
        return 1;
    }
    return api->register_ssh_hook(host, "locks", on_exec, NULL);
}

GD_PLUGIN_EXPORT const struct gd_plugin_desc *gondolin_plugin_entry(void)
{
    static const struct gd_plugin_desc d = {
        GONDOLIN_PLUGIN_ABI_VERSION, sizeof(struct gd_plugin_desc), "sshlock", "1", init, 0};
    return &d;
}
