/*
 * forward.h - ingress: a host TCP listener whose connections reach a guest port through
 * the guest agent's tunnels (gd_exec_start with connect_port), with no guest NIC.
 *
 * Raw mode bridges bytes: each accepted connection becomes one tunnel to the guest's
 * loopback port. HTTP mode serves each connection with an ingress gd_proxy (core/http:
 * request/response hooks, audit, WebSocket upgrades) whose upstream connections are
 * tunnels to the guest port; a guest port with no listener answers 502.
 *
 * Both directions are flow-controlled: the host side is read only while the tunnel has
 * stdin credit (at most that much), and guest output is acknowledged only once it was
 * written to the host side, so a connection buffers at most its window (256 KiB) each
 * way. A half-close travels both ways (host EOF -> the guest socket's FIN; the guest
 * side's EOF -> FIN to the host client once its bytes are written); a reset or failure
 * on either side resets the other (a client's reset is seen once its tunnel is up, or at
 * the connect deadline: it is not read before). Connections beyond max_conns are accepted
 * and closed at once; each open one holds one of the guest agent's 256 sessions, which
 * processes share. Everything runs on the VM's libuv loop; objects are freed only after their
 * close callback.
 *
 * Errors: functions return 0 or a negative errno; when they do, no callback fires.
 */
#ifndef GD_FORWARD_H
#define GD_FORWARD_H

#include "base/err.h"
#include "http/http.h"
#include "vm/vm.h"

#include <uv.h>

typedef struct gd_forward gd_forward;

struct gd_forward_opts {
    const char *listen_host; /* IP literal or "localhost"; NULL = 127.0.0.1 (copied) */
    unsigned listen_port;    /* 0 = ephemeral (gd_forward_port says which) */
    unsigned guest_port;     /* 1..65535, on the guest's loopback */
    unsigned max_conns;      /* concurrent connections; 0 = 256; more are closed at once */
    unsigned connect_ms;     /* the tunnel must be up within this; 0 = 15000 */
    unsigned idle_ms;        /* no byte either way for this long closes; 0 = 3600000 */
    int http;                /* 1: HTTP-aware (ingress proxy), 0: raw bytes */
    /* http: options of the ingress proxy (borrowed; NULL = defaults). Its ingress, dial,
     * dial_ud and dial_addr fields are the forward's; max_flows defaults to max_conns. */
    const struct gd_proxy_opts *proxy;
    /* One line per refused or failed connection (borrowed for the call), or NULL. */
    void (*log)(void *ud, const char *line);
    void *ud;
};

/* Binds and starts listening. The VM is borrowed: close the forward before freeing it
 * (connections end by themselves when the VM stops). err says why on failure. */
int gd_forward_new(uv_loop_t *loop, gd_vm *vm, const struct gd_forward_opts *o, gd_forward **out,
                   struct gd_err *err);
unsigned gd_forward_port(const gd_forward *f); /* the bound port */
size_t gd_forward_conns(const gd_forward *f);  /* open connections (tests, stats) */
/* HTTP mode: the ingress proxy, to add hooks to (gd_proxy_add_hook); NULL in raw mode.
 * Owned by the forward. */
gd_proxy *gd_forward_proxy(gd_forward *f);
/* Closes the listener and resets every connection; cb fires once all handles are gone,
 * after which gd_forward_free may be called (also from cb). */
void gd_forward_close(gd_forward *f, void (*cb)(gd_forward *, void *), void *ud);
void gd_forward_free(gd_forward *f);

/* "[HOST:]PORT=GUESTPORT" (HOST: an IPv4 literal, [IPv6] or localhost; PORT 0-65535, 0
 * ephemeral; GUESTPORT 1-65535). host is "" when not given. Rich one-line errors. */
struct gd_forward_spec {
    char host[64];
    unsigned port, guest_port;
};
int gd_forward_parse(const char *spec, struct gd_forward_spec *out, struct gd_err *err);

#endif
