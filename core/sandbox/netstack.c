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
    if (info->kind != GD_FLOW_SSH) {
        gd_proxy_serve(n->px, fd, info);
        return;
    }
    /* the current revision's rules: a reload since the SYN may have dropped the rule */
    const struct gd_egress *eg = gd_engine_egress(n->eng);
    if (!n->sshpx || !info->name || !gd_ssh_conf_rule(&eg->ssh, info->name, info->dst_port)) {
        close(fd);
        return;
    }
    struct gd_ssh_flow f = {.name = info->name,
                            .port = info->dst_port,
                            .addr = gd_egress_resolved(eg, info->name),
                            .allow_internal = gd_egress_internal_allowed(eg, info->name),
                            .conf = &eg->ssh};
    gd_ssh_proxy_serve(n->sshpx, fd, &f);
}

static int ssh_exec(void *ud, const struct gd_ssh_exec *x, char *rule, size_t rcap, char *reason,
                    size_t cap)
{
    struct gd_netstack *n = ud;
    return gd_engine_ssh_exec(n->eng, x, rule, rcap, reason, cap);
}

static void ssh_record(void *ud, const struct gd_ssh_record *rec)
{
    struct gd_netstack *n = ud;
    gd_engine_ssh_audit(n->eng, rec);
}

static void ssh_log(void *ud, const char *line)
{
    (void)ud;
    fprintf(stderr, "gondolin: ssh: %s\n", line);
}

/* With SSH rules: the proxy, and the guest's known_hosts line for it (kernel args). */
static int ssh_start(struct gd_netstack *n, uv_loop_t *loop, const struct gd_egress *eg,
                     char **args, struct gd_err *err)
{
    *args = NULL;
    if (!eg->ssh.nrules)
        return 0;
    char path[4096], pub[400];
    int rc = gd_ssh_host_key(path, sizeof(path), pub, sizeof(pub), err);
    if (rc)
        return rc;
    struct gd_ssh_proxy_opts so = {.host_key = path,
                                   .log = eg->quiet ? NULL : ssh_log,
                                   .ud = n,
                                   .loop = loop,
                                   .on_exec = ssh_exec,
                                   .on_record = ssh_record,
                                   .max_conns = eg->ssh.max_conns,
                                   .connect_ms = eg->ssh.connect_ms,
                                   .handshake_ms = eg->ssh.handshake_ms,
                                   .idle_ms = eg->ssh.idle_ms};
    if ((rc = gd_ssh_proxy_new(&so, &n->sshpx, err)))
        return rc;
    char *hosts = gd_ssh_conf_guest_hosts(&eg->ssh);
    /* the kernel command line is short (2 KiB): many names become one wildcard line */
    rc = hosts ? asprintf(args, " gondolin.sshkey=%s gondolin.sshhosts=%s", pub,
                          strlen(hosts) > 400 ? "*" : hosts)
               : -1;
    free(hosts);
    if (rc < 0) {
        *args = NULL;
        return gd_err_set(err, -ENOMEM, "out of memory");
    }
    return 0;
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
    char *ssh_args = NULL;
    if ((rc = ssh_start(n, loop, eg, &ssh_args, err))) {
        free(b64);
        return rc;
    }
    rc = asprintf(&n->kernel, "%s gondolin.ca=%s%s", gd_net_guest_arg(n->net), b64,
                  ssh_args ? ssh_args : "");
    free(ssh_args);
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
    gd_ssh_proxy_free(n->sshpx);
    n->sshpx = NULL;
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
