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

static int ssh_ensure(struct gd_netstack *n, struct gd_err *err);

static void on_flow(void *ud, int fd, const struct gd_flow_info *info)
{
    struct gd_netstack *n = ud;
    if (info->kind != GD_FLOW_SSH) {
        gd_proxy_serve(n->px, fd, info);
        return;
    }
    /* the current revision's rules: a reload since the SYN may have dropped the rule */
    const struct gd_egress *eg = gd_engine_egress(n->eng);
    struct gd_err err = {{0}};
    if (!info->name || !gd_ssh_conf_rule(&eg->ssh, info->name, info->dst_port) ||
        ssh_ensure(n, &err)) {
        if (err.msg[0])
            fprintf(stderr, "gondolin: ssh: %s\n", err.msg);
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

static const struct gd_ssh_conf *ssh_rules(void *ud, const char *name, const char **addr,
                                           int *allow_internal)
{
    struct gd_netstack *n = ud;
    const struct gd_egress *eg = gd_engine_egress(n->eng);
    *addr = gd_egress_resolved(eg, name);
    *allow_internal = gd_egress_internal_allowed(eg, name);
    return &eg->ssh;
}

static void ssh_log(void *ud, const char *line)
{
    (void)ud;
    fprintf(stderr, "gondolin: ssh: %s\n", line);
}

/* The SSH proxy, made when the first SSH rule appears (at start, or by a reload). */
static int ssh_ensure(struct gd_netstack *n, struct gd_err *err)
{
    if (n->sshpx)
        return 0;
    if (!n->net) /* stopped: the VM is gone */
        return gd_err_set(err, -ESHUTDOWN, "the sandbox has stopped");
    const struct gd_egress *eg = gd_engine_egress(n->eng);
    char path[4096];
    int rc = gd_ssh_host_key(path, sizeof(path), n->ssh_pub, sizeof(n->ssh_pub), err);
    if (rc)
        return rc;
    struct gd_ssh_proxy_opts so = {.host_key = path,
                                   .log = eg->quiet ? NULL : ssh_log,
                                   .ud = n,
                                   .loop = n->loop,
                                   .on_exec = ssh_exec,
                                   .on_record = ssh_record,
                                   .rules = ssh_rules,
                                   .max_conns = eg->ssh.max_conns,
                                   .connect_ms = eg->ssh.connect_ms,
                                   .handshake_ms = eg->ssh.handshake_ms,
                                   .idle_ms = eg->ssh.idle_ms};
    return gd_ssh_proxy_new(&so, &n->sshpx, err);
}

char *gd__netstack_known_hosts(struct gd_netstack *n)
{
    const struct gd_egress *eg = gd_engine_egress(n->eng);
    struct gd_err err = {{0}};
    if (!eg->ssh.nrules)
        return NULL;
    if (ssh_ensure(n, &err)) {
        fprintf(stderr, "gondolin: ssh: %s\n", err.msg);
        return NULL;
    }
    char *hosts = gd_ssh_conf_guest_hosts(&eg->ssh), *line = NULL;
    const char *colon = strchr(n->ssh_pub, ':');
    if (hosts && colon &&
        asprintf(&line, "%s %.*s %s\n", hosts, (int)(colon - n->ssh_pub), n->ssh_pub, colon + 1) <
            0)
        line = NULL;
    free(hosts);
    return line;
}

int gd__netstack_start(struct gd_netstack *n, uv_loop_t *loop, gd_engine *eng, struct gd_err *err)
{
    n->eng = eng;
    n->loop = loop;
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
    /* (the guest's SSH known_hosts is written after the VM is ready, not here: kernel
     * arguments are part of a booted snapshot's key, and a reload may add names) */
    if (eg->ssh.nrules && (rc = ssh_ensure(n, err))) {
        free(b64);
        return rc;
    }
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
