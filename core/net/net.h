/*
 * net.h - the guest NIC, in our process: QEMU's socket netdev (a socketpair, no files)
 * carries Ethernet frames to libslirp, driven from the libuv loop, in restricted mode
 * (slirp never connects anywhere on its own; its host alias is unreachable).
 *
 * Before a frame reaches slirp we look at it:
 *   UDP/53      answered here (synthetic names, or host-resolved in trusted/open mode)
 *   UDP/67      DHCP, to slirp; any other UDP is dropped
 *   TCP SYN     classified by the policy callback: refused (RST), proxied (HTTP/TLS),
 *               or mapped raw TCP. Accepted flows are registered with slirp_add_unix
 *               on a per-destination unix socket in a private directory (removed even
 *               when this process is SIGKILLed: sockdir.h), so every guest connection
 *               arrives as one accepted socket handed to on_flow.
 *   ICMP        echo to the gateway only (slirp answers it); everything else dropped
 *   IPv6, other dropped
 * Flows to addresses that are not synthetic (IP literals, trusted-mode answers) are
 * NATed onto an alias inside slirp's network, so they too end at the proxy.
 *
 * Guest network: 198.19.0.15/24, gateway 198.19.0.2, DNS 198.19.0.3; synthetic names
 * live in 198.19.1.0-198.19.127.255, aliases in 198.19.128.0/17.
 */
#ifndef GD_NET_H
#define GD_NET_H

#include "base/err.h"
#include "http/http.h"

#include <uv.h>

typedef struct gd_net gd_net;

struct gd_net_opts {
    int dns_mode;               /* 0 synthetic, 1 trusted, 2 open (policy/egress.h) */
    const char *const *resolve; /* "NAME=ADDR" host-side overrides, or NULL */
    /* 1 proxy, 2 raw (up_host/up_port set), 3 SSH, 0 refuse */
    int (*port_policy)(void *ud, const char *name, unsigned port, const char **up_host,
                       unsigned *up_port);
    int (*host_allowed)(void *ud, const char *name);                   /* trusted DNS */
    int (*addr_allowed)(void *ud, const char *name, const char *addr); /* trusted DNS */
    /* A guest connection: takes ownership of fd. */
    void (*on_flow)(void *ud, int fd, const struct gd_flow_info *info);
    void *ud;
};

/* Creates the network; *qemu_fd is the end to give QEMU (caller closes it after the
 * fork). */
int gd_net_new(uv_loop_t *loop, const struct gd_net_opts *o, gd_net **out, int *qemu_fd,
               struct gd_err *err);
/* The kernel argument that configures the guest ("gondolin.net=..."). */
const char *gd_net_guest_arg(const gd_net *n);
/* Stops everything; cb fires once all handles are closed, then gd_net_free. */
void gd_net_close(gd_net *n, void (*cb)(gd_net *, void *), void *ud);
void gd_net_free(gd_net *n);

/* Frame statistics for tests: frames dropped by the filter, DNS answers. */
struct gd_net_stats {
    uint64_t frames_in, frames_out, dropped, dns_answers, refused;
};
void gd_net_stats(const gd_net *n, struct gd_net_stats *s);

#endif
