/* netstack.c - the egress stack of one sandbox: the policy engine's rules decide, the
 * MITM CA signs, the HTTP proxy serves the guest's flows and the network layer carries
 * the guest NIC's frames. */
#define _GNU_SOURCE
#include "sandbox_int.h"

#include <errno.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int pol_port(void *ud, const char *name, unsigned port, const char **uh, unsigned *up)
{
    struct gd_netstack *n = ud;
    return gd_egress_port_policy(gd_engine_egress(n->eng), name, port, uh, up);
}

static int pol_host(void *ud, const char *name)
{
    struct gd_netstack *n = ud;
    return gd_egress_host_allowed(gd_engine_egress(n->eng), name);
}

static int pol_addr(void *ud, const char *name, const char *addr)
{
    struct gd_netstack *n = ud;
    return gd_egress_addr_allowed(gd_engine_egress(n->eng), name, addr);
}

static void on_flow(void *ud, int fd, const struct gd_flow_info *info)
{
    struct gd_netstack *n = ud;
    gd_proxy_serve(n->px, fd, info);
}

int gd__netstack_start(struct gd_netstack *n, uv_loop_t *loop, gd_engine *eng, struct gd_err *err)
{
    n->eng = eng;
    n->qemu_fd = -1;
    struct gd_egress *eg = gd_engine_egress(eng);
    struct gd_tls_opts to = {.upstream_ca = eg->upstream_ca};
    int rc = gd_tls_new(&to, &n->tls, err);
    if (rc)
        return rc;
    struct gd_proxy_opts po = {.tls = n->tls,
                               .resolve = (const char *const *)eg->resolve,
                               .on_event = gd_engine_on_event,
                               .event_ud = eng};
    gd_egress_proxy_limits(eg, &po);
    if (gd_proxy_new(loop, &po, &n->px) || gd_engine_install(eng, n->px))
        return gd_err_set(err, -ENOMEM, "cannot start the egress proxy");
    struct gd_net_opts no = {.dns_mode = (int)eg->dns,
                             .resolve = (const char *const *)eg->resolve,
                             .port_policy = pol_port,
                             .host_allowed = pol_host,
                             .addr_allowed = pol_addr,
                             .on_flow = on_flow,
                             .ud = n};
    if ((rc = gd_net_new(loop, &no, &n->net, &n->qemu_fd, err)))
        return rc;
    size_t dl;
    const unsigned char *der = gd_tls_ca_der(n->tls, &dl);
    char *b64 = malloc(4 * ((dl + 2) / 3) + 1);
    if (!b64)
        return gd_err_set(err, -ENOMEM, "out of memory");
    EVP_EncodeBlock((unsigned char *)b64, der, (int)dl);
    rc = asprintf(&n->kernel, "%s gondolin.ca=%s", gd_net_guest_arg(n->net), b64);
    free(b64);
    if (rc < 0) {
        n->kernel = NULL;
        return gd_err_set(err, -ENOMEM, "out of memory");
    }
    n->env = gd_egress_guest_env(eg);
    return 0;
}

static void on_net_closed(gd_net *net, void *ud)
{
    (void)ud;
    gd_net_free(net);
}

static void on_px_closed(gd_proxy *p, void *ud)
{
    (void)ud;
    gd_proxy_free(p);
}

void gd__netstack_stop(struct gd_netstack *n)
{
    if (n->net) {
        gd_net_close(n->net, on_net_closed, NULL);
        n->net = NULL;
    }
    if (n->px) {
        gd_proxy_close(n->px, on_px_closed, NULL);
        n->px = NULL;
    }
    if (n->qemu_fd >= 0) {
        close(n->qemu_fd);
        n->qemu_fd = -1;
    }
}

void gd__netstack_free(struct gd_netstack *n)
{
    gd__netstack_stop(n);
    gd_tls_free(n->tls);
    n->tls = NULL;
    for (char **e = n->env; e && *e; e++)
        free(*e);
    free(n->env);
    n->env = NULL;
    free(n->kernel);
    n->kernel = NULL;
}
