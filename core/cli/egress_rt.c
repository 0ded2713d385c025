/* egress_rt.c - the CLI's egress stack for one VM: MITM CA, proxy with the built-in
 * hooks, and the guest network. */
#define _GNU_SOURCE
#include "cli.h"

#include "base/pattern.h"
#include "dns/addr.h"
#include "net/net.h"

#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int pol_port(void *ud, const char *name, unsigned port, const char **uh, unsigned *up)
{
    return gd_egress_port_policy(&((struct cli_egress *)ud)->eg, name, port, uh, up);
}

static int pol_host(void *ud, const char *name)
{
    return gd_egress_host_allowed(&((struct cli_egress *)ud)->eg, name);
}

static int pol_addr(void *ud, const char *name, const char *addr)
{
    struct gd_egress *e = &((struct cli_egress *)ud)->eg;
    if (!gd_addr_internal_str(addr))
        return 1;
    for (size_t i = 0; i < e->ninternal; i++)
        if (gd_host_match(e->internal[i], name))
            return 1;
    return 0;
}

static void on_flow(void *ud, int fd, const struct gd_flow_info *info)
{
    struct cli_egress *x = ud;
    gd_proxy_serve(x->px, fd, info);
}

int cli_egress_start(struct cli_egress *x, uv_loop_t *loop, char *append, size_t cap)
{
    struct gd_err err = {{0}};
    if (gd_egress_finish(&x->eg, &err))
        return cli_die(2, "%s", err.msg);
    struct gd_tls_opts to = {.upstream_ca = x->eg.upstream_ca};
    if (gd_tls_new(&to, &x->tls, &err))
        return cli_die(125, "%s", err.msg);
    struct gd_proxy_opts po = {.tls = x->tls,
                               .resolve = (const char *const *)x->eg.resolve,
                               .on_event = gd_egress_on_event,
                               .event_ud = &x->eg};
    if (gd_proxy_new(loop, &po, &x->px) || gd_egress_install(&x->eg, x->px))
        return cli_die(125, "cannot start the egress proxy");
    struct gd_net_opts no = {.dns_mode = (int)x->eg.dns,
                             .resolve = (const char *const *)x->eg.resolve,
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
    x->env = gd_egress_guest_env(&x->eg);
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
    gd_egress_free(&x->eg);
}
