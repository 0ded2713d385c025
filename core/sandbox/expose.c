/* expose.c - the sandbox's ingress listeners: host ports forwarded to the guest's
 * loopback through the agent, HTTP-aware through the policy engine, or raw. */
#define _GNU_SOURCE
#include "sandbox_int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void fwd_log(void *ud, const char *line)
{
    gd__sandbox_log(ud, "ingress: %s", line);
}

static void on_fwd_closed(gd_forward *fw, void *ud);

int gd_sandbox_expose(gd_sandbox *sb, const struct gd_forward_spec *spec, int raw, unsigned *port,
                      struct gd_err *err)
{
    if (sb->closing)
        return gd_err_set(err, -ESHUTDOWN, "the sandbox is stopping");
    struct gd__fwd *f = calloc(1, sizeof(*f));
    if (!f)
        return gd_err_set(err, -ENOMEM, "out of memory");
    struct gd_proxy_opts po = {0};
    if (sb->eng) { /* the audit and the policy's ingress hooks see every request */
        po.on_event = gd_engine_on_event;
        po.event_ud = sb->eng;
    }
    struct gd_forward_opts o = {.listen_host = spec->host[0] ? spec->host : NULL,
                                .listen_port = spec->port,
                                .guest_port = spec->guest_port,
                                .http = !raw,
                                /* half the agent's sessions: ingress never starves execs */
                                .max_conns = 128,
                                .proxy = &po,
                                .log = fwd_log,
                                .ud = sb};
    int rc = gd_forward_new(sb->loop, sb->vm, &o, &f->fw, err);
    if (rc) {
        free(f);
        return rc;
    }
    if (!raw && sb->eng && (rc = gd_engine_install(sb->eng, gd_forward_proxy(f->fw)))) {
        gd_forward_close(f->fw, on_fwd_closed, NULL); /* frees it once closed */
        free(f);
        return gd_err_set(err, rc, "cannot install the policy on the ingress proxy");
    }
    unsigned p = gd_forward_port(f->fw);
    snprintf(f->info.host, sizeof(f->info.host), "%s", spec->host[0] ? spec->host : "127.0.0.1");
    f->info.port = p;
    f->info.guest_port = spec->guest_port;
    f->info.raw = raw;
    f->next = sb->fwds;
    sb->fwds = f;
    if (port)
        *port = p;
    return 0;
}

size_t gd_sandbox_forwards(const gd_sandbox *sb, struct gd_sandbox_forward *out, size_t cap)
{
    size_t n = 0;
    for (const struct gd__fwd *f = sb->fwds; f && n < cap; f = f->next)
        out[n++] = f->info;
    return n;
}

static void on_fwd_closed(gd_forward *fw, void *ud)
{
    (void)ud;
    gd_forward_free(fw);
}

void gd__sandbox_close_forwards(gd_sandbox *sb)
{
    while (sb->fwds) {
        struct gd__fwd *f = sb->fwds;
        sb->fwds = f->next;
        gd_forward_close(f->fw, on_fwd_closed, NULL);
        free(f);
    }
}
