/* policy_flags.c - the policy flags shared by exec/bash/run/start and `policy`, and how
 * they become a policy engine or a sandbox's policy options. */
#define _GNU_SOURCE
#include "cli.h"

#include "base/fs.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int push(const char ***v, size_t *n, const char *s)
{
    const char **q = realloc(*v, (*n + 2) * sizeof(*q));
    if (!q)
        return -1;
    *v = q;
    q[(*n)++] = s;
    q[*n] = NULL;
    return 0;
}

int cli_policy_flag(struct cli_policy *p, int argc, char **argv, int *i)
{
    const char *a = argv[*i];
    static const char *const own[] = {"--policy", "--plugin", "--plugin-dir"};
    for (int k = 0; k < 3; k++) {
        size_t l = strlen(own[k]);
        if (strncmp(a, own[k], l) || (a[l] && a[l] != '='))
            continue;
        const char *v = a[l] == '=' ? a + l + 1 : NULL;
        if (!v) {
            if (*i + 1 >= argc) {
                cli_die(2, "%s needs a value", own[k]);
                return -1;
            }
            v = argv[++*i];
        }
        size_t n;
        if (k == 0) {
            if (p->policy) {
                cli_die(2, "--policy given twice");
                return -1;
            }
            p->policy = v;
        } else if (k == 1) {
            for (n = 0; p->plugins && p->plugins[n]; n++)
                ;
            push(&p->plugins, &n, v);
        } else {
            for (n = 0; p->plugin_dirs && p->plugin_dirs[n]; n++)
                ;
            push(&p->plugin_dirs, &n, v);
        }
        return 1;
    }
    int b = cli_bundle_flag(p, argc, argv, i);
    if (b)
        return b;
    struct gd_err err = {{0}};
    int rc = gd_egress_flag(&p->egress, argc, argv, i, &err);
    if (rc < 0) {
        cli_die(2, "%s", err.msg);
        return -1;
    }
    return rc;
}

static void engine_log(void *ud, const char *msg)
{
    (void)ud;
    fprintf(stderr, "gondolin: %s\n", msg);
}

/* drop-in directories first, then --plugin-dir, then --plugin (engine order) */
static const char **policy_dirs(struct cli_policy *p)
{
    if (p->dirs)
        return p->dirs;
    size_t nd = 0;
    static char user_dir[4096];
    if (!p->no_default_dirs) {
        const char *sys = getenv("GONDOLIN_SYSTEM_PLUGIN_DIR");
        push(&p->dirs, &nd, sys ? sys : "/etc/gondolin/plugins.d");
        const char *xdg = getenv("XDG_CONFIG_HOME"), *home = getenv("HOME");
        if (xdg && *xdg)
            snprintf(user_dir, sizeof(user_dir), "%s/gondolin/plugins.d", xdg);
        else if (home)
            snprintf(user_dir, sizeof(user_dir), "%s/.config/gondolin/plugins.d", home);
        if (user_dir[0])
            push(&p->dirs, &nd, user_dir);
    }
    for (const char **d = p->plugin_dirs; d && *d; d++)
        push(&p->dirs, &nd, *d);
    if (!p->dirs)
        push(&p->dirs, &nd, NULL);
    return p->dirs;
}

int cli_policy_engine(struct cli_policy *p, int quiet, gd_engine **out)
{
    int brc = cli_policy_resolve(p, 0);
    if (brc)
        return brc;
    struct gd_engine_opts o = {.policy = p->policy,
                               .base = &p->egress,
                               .plugin_dirs = policy_dirs(p),
                               .plugins = p->plugins,
                               .quiet = quiet,
                               .log = engine_log,
                               .log_ud = p,
                               .secret_values = p->secret_values,
                               .stub_secrets = p->stub_secrets};
    struct gd_err err = {{0}};
    if (gd_engine_new(&o, out, &err))
        return cli_die(2, "%s", err.msg);
    return 0;
}

int cli_policy_sandbox(struct cli_policy *p, struct gd_sandbox_opts *o)
{
    if (o->no_network && cli_policy_is_bundle(p))
        return cli_die(2, "--no-network cannot be combined with --bundle or a bundle --policy");
    int brc = o->no_network ? 0 : cli_policy_resolve(p, 1);
    if (brc)
        return brc;
    o->policy = p->policy;
    o->egress = &p->egress;
    o->plugin_dirs = policy_dirs(p);
    o->plugins = p->plugins;
    o->log = engine_log;
    o->ud = p;
    return 0;
}

void cli_policy_free(struct cli_policy *p)
{
    cli_bundle_free(p);
    free(p->plugin_dirs);
    free(p->plugins);
    free(p->dirs);
    gd_egress_free(&p->egress);
    memset(p, 0, sizeof(*p));
}
