/* egress_rt.c - the CLI's egress stack for one VM: policy engine, MITM CA, proxy and
 * the guest network; and the policy flags shared by exec/bash/run and `policy`. */
#define _GNU_SOURCE
#include "cli.h"

#include "base/fs.h"
#include "base/pattern.h"
#include "dns/addr.h"
#include "net/net.h"

#include <openssl/evp.h>
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

/* "SEQ REVISION ok" or "SEQ REVISION rejected: MESSAGE", replaced atomically. */
static void write_status(struct cli_policy *p, int ok, const char *rev, const char *msg)
{
    static unsigned seq;
    if (!p->status_path[0])
        return;
    char tmp[600];
    snprintf(tmp, sizeof(tmp), "%s.tmp", p->status_path);
    FILE *f = fopen(tmp, "we");
    if (!f)
        return;
    fprintf(f, "%u %s %s%s%s\n", ++seq, rev, ok ? "ok" : "rejected", msg ? ": " : "",
            msg ? msg : "");
    fclose(f);
    rename(tmp, p->status_path);
}

static void on_reload(void *ud, int ok, const char *rev, const char *msg)
{
    write_status(ud, ok, rev, msg);
}

int cli_sandbox_dir(char *out, size_t cap)
{
    const char *rt = getenv("XDG_RUNTIME_DIR");
    char base[400];
    if (rt && *rt)
        snprintf(base, sizeof(base), "%s/gondolin", rt);
    else
        snprintf(base, sizeof(base), "/tmp/gondolin-%u", (unsigned)getuid());
    snprintf(out, cap, "%s/sandboxes", base);
    return gd_mkdir_p(out, 0700);
}

const char **cli_plugin_dirs(const struct cli_policy *p)
{
    /* drop-in directories first, then --plugin-dir, then --plugin (engine order) */
    const char **dirs = NULL;
    size_t nd = 0;
    static char user_dir[4096];
    if (!p->no_default_dirs) {
        const char *sys = getenv("GONDOLIN_SYSTEM_PLUGIN_DIR");
        push(&dirs, &nd, sys ? sys : "/etc/gondolin/plugins.d");
        const char *xdg = getenv("XDG_CONFIG_HOME"), *home = getenv("HOME");
        if (xdg && *xdg)
            snprintf(user_dir, sizeof(user_dir), "%s/gondolin/plugins.d", xdg);
        else if (home)
            snprintf(user_dir, sizeof(user_dir), "%s/.config/gondolin/plugins.d", home);
        if (user_dir[0])
            push(&dirs, &nd, user_dir);
    }
    for (const char **d = p->plugin_dirs; d && *d; d++)
        push(&dirs, &nd, *d);
    return dirs;
}

int cli_policy_engine(struct cli_policy *p, int quiet, gd_engine **out)
{
    const char **dirs = cli_plugin_dirs(p);
    struct gd_engine_opts o = {.policy = p->policy,
                               .base = &p->egress,
                               .plugin_dirs = dirs,
                               .plugins = p->plugins,
                               .quiet = quiet,
                               .log = engine_log,
                               .log_ud = p,
                               .on_reload = on_reload,
                               .secret_values = p->secret_values,
                               .stub_secrets = p->stub_secrets};
    struct gd_err err = {{0}};
    int rc = gd_engine_new(&o, out, &err);
    free(dirs);
    if (rc)
        return cli_die(2, "%s", err.msg);
    write_status(p, 1, gd_engine_revision(*out), NULL);
    return 0;
}

void cli_policy_free(struct cli_policy *p)
{
    free(p->plugin_dirs);
    free(p->plugins);
    gd_egress_free(&p->egress);
    memset(p, 0, sizeof(*p));
}

static int pol_port(void *ud, const char *name, unsigned port, const char **uh, unsigned *up)
{
    return gd_egress_port_policy(gd_engine_egress(((struct cli_egress *)ud)->eng), name, port, uh,
                                 up);
}

static int pol_host(void *ud, const char *name)
{
    return gd_egress_host_allowed(gd_engine_egress(((struct cli_egress *)ud)->eng), name);
}

static int pol_addr(void *ud, const char *name, const char *addr)
{
    return gd_egress_addr_allowed(gd_engine_egress(((struct cli_egress *)ud)->eng), name, addr);
}

static void on_flow(void *ud, int fd, const struct gd_flow_info *info)
{
    struct cli_egress *x = ud;
    gd_proxy_serve(x->px, fd, info);
}

int cli_egress_start(struct cli_egress *x, uv_loop_t *loop, char *append, size_t cap)
{
    struct gd_err err = {{0}};
    struct gd_egress *eg = gd_engine_egress(x->eng);
    struct gd_tls_opts to = {.upstream_ca = eg->upstream_ca};
    if (gd_tls_new(&to, &x->tls, &err))
        return cli_die(125, "%s", err.msg);
    struct gd_proxy_opts po = {.tls = x->tls,
                               .resolve = (const char *const *)eg->resolve,
                               .on_event = gd_engine_on_event,
                               .event_ud = x->eng};
    gd_egress_proxy_limits(eg, &po);
    if (gd_proxy_new(loop, &po, &x->px) || gd_engine_install(x->eng, x->px))
        return cli_die(125, "cannot start the egress proxy");
    struct gd_net_opts no = {.dns_mode = (int)eg->dns,
                             .resolve = (const char *const *)eg->resolve,
                             .port_policy = pol_port,
                             .host_allowed = pol_host,
                             .addr_allowed = pol_addr,
                             .on_flow = on_flow,
                             .ud = x};
    if (gd_net_new(loop, &no, &x->net, &x->qemu_fd, &err))
        return cli_die(125, "%s", err.msg);
    size_t dl;
    const unsigned char *der = gd_tls_ca_der(x->tls, &dl);
    char *b64 = malloc(4 * ((dl + 2) / 3) + 1);
    if (!b64)
        return cli_die(125, "out of memory");
    EVP_EncodeBlock((unsigned char *)b64, der, (int)dl);
    size_t k = strlen(append);
    snprintf(append + k, cap - k, "%s%s gondolin.ca=%s", k ? " " : "", gd_net_guest_arg(x->net),
             b64);
    free(b64);
    x->env = gd_egress_guest_env(eg);
    gd_engine_watch(x->eng, loop);
    return 0;
}

static void on_net_closed(gd_net *n, void *ud)
{
    (void)ud;
    gd_net_free(n);
}

static void on_px_closed(gd_proxy *p, void *ud)
{
    (void)ud;
    gd_proxy_free(p);
}

void cli_egress_stop(struct cli_egress *x)
{
    if (x->eng)
        gd_engine_close(x->eng);
    if (x->net) {
        gd_net_close(x->net, on_net_closed, NULL);
        x->net = NULL;
    }
    if (x->px) {
        gd_proxy_close(x->px, on_px_closed, NULL);
        x->px = NULL;
    }
    if (x->qemu_fd > 0) {
        close(x->qemu_fd);
        x->qemu_fd = -1;
    }
}

void cli_egress_free(struct cli_egress *x)
{
    gd_tls_free(x->tls);
    x->tls = NULL;
    for (char **e = x->env; e && *e; e++)
        free(*e);
    free(x->env);
    x->env = NULL;
}
