/* sandbox_int.h - what the files of core/sandbox share. */
#ifndef GD_SANDBOX_INT_H
#define GD_SANDBOX_INT_H

#include "http/http.h"
#include "net/net.h"
#include "sandbox/sandbox.h"
#include "tls/tls.h"

/* The egress stack of one sandbox (netstack.c): MITM CA, proxy, guest network. */
struct gd_netstack {
    gd_engine *eng; /* borrowed */
    gd_tls *tls;
    gd_proxy *px;
    gd_net *net;
    int qemu_fd;  /* the end QEMU gets; closed once QEMU has it */
    char **env;   /* secret placeholders for the guest, NULL-terminated */
    char *kernel; /* the guest's kernel arguments: network and CA */
};

/* Starts CA, proxy and network on loop for the engine's current revision. */
int gd__netstack_start(struct gd_netstack *n, uv_loop_t *loop, gd_engine *eng, struct gd_err *err);
/* Closes proxy and network (their handles finish closing on the loop). */
void gd__netstack_stop(struct gd_netstack *n);
void gd__netstack_free(struct gd_netstack *n);

#endif
