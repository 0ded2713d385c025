/* http.c - the egress proxy engine (see http.h): the proxy object, its hooks and parsers. */
#define _GNU_SOURCE
#include "http/http_int.h"

#include "dns/addr.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <netdb.h>
#include <openssl/err.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

/* ---- the proxy object ---- */

llhttp_settings_t gd__req_settings, gd__resp_settings;

static void init_settings(void)
{
    static int done;
    if (done)
        return;
    done = 1;
    gd__req_settings_init();
    gd__resp_settings_init();
}

int gd_proxy_new(uv_loop_t *loop, const struct gd_proxy_opts *o, gd_proxy **out)
{
    init_settings();
    gd_proxy *px = calloc(1, sizeof(*px));
    if (!px)
        return -ENOMEM;
    px->loop = loop;
    px->o = *o;
    if (!px->o.max_header_bytes)
        px->o.max_header_bytes = 64 * 1024;
    if (!px->o.max_headers)
        px->o.max_headers = 128;
    if (!px->o.max_body_buffer)
        px->o.max_body_buffer = 16u << 20;
    if (!px->o.idle_ms)
        px->o.idle_ms = 30000;
    if (!px->o.connect_ms)
        px->o.connect_ms = 10000;
    if (!px->o.pool_per_origin)
        px->o.pool_per_origin = 64;
    if (!px->o.max_flows)
        px->o.max_flows = 1024;
    if (!px->o.pool_total)
        px->o.pool_total = 256;
    if (!px->o.head_ms)
        px->o.head_ms = 60000;
    if (!px->o.keepalive_ms)
        px->o.keepalive_ms = 120000;
    if (!px->o.body_ms)
        px->o.body_ms = 60000;
    if (!px->o.max_request_body)
        px->o.max_request_body = 1ull << 40;
    if (!px->o.max_buffer_total)
        px->o.max_buffer_total = 256u << 20;
    px->o.resolve = NULL;
    for (const char *const *r = o->resolve; r && *r; r++) {
        const char *eq = strchr(*r, '=');
        struct override *v = realloc(px->ov, (px->nov + 1) * sizeof(*v));
        if (!eq || !v) {
            free(v ? v : px->ov);
            px->ov = NULL;
            free(px);
            return eq ? -ENOMEM : -EINVAL;
        }
        px->ov = v;
        v[px->nov].name = strndup(*r, (size_t)(eq - *r));
        v[px->nov].addr = strdup(eq + 1);
        px->nov++;
    }
    uv_idle_init(loop, &px->reaper);
    px->reaper.data = px;
    *out = px;
    return 0;
}

int gd_proxy_add_hook(gd_proxy *px, const char *name, unsigned phases, gd_hook_fn fn, void *ud)
{
    if (px->nhooks == MAX_HOOKS)
        return -ENOSPC;
    struct hook *h = &px->hooks[px->nhooks];
    h->name = strdup(name ? name : "hook");
    if (!h->name)
        return -ENOMEM;
    h->phases = phases;
    h->fn = fn;
    h->ud = ud;
    px->nhooks++;
    return 0;
}

size_t gd_proxy_flows(const gd_proxy *px)
{
    return px->nflows;
}

static void on_reaper_closed(uv_handle_t *h)
{
    gd_proxy *px = h->data;
    if (px->close_cb)
        px->close_cb(px, px->close_ud);
}

void gd__maybe_reap(gd_proxy *px)
{
    if (px->closing && !px->flows && !px->ups && !px->reaper_on) {
        px->reaper_on = 1;
        uv_close((uv_handle_t *)&px->reaper, on_reaper_closed);
    }
}

void gd_proxy_close(gd_proxy *px, void (*cb)(gd_proxy *, void *), void *ud)
{
    px->closing = 1;
    px->close_cb = cb;
    px->close_ud = ud;
    for (struct flow *f = px->flows, *next; f; f = next) {
        next = f->next;
        gd__flow_close(f);
    }
    for (struct up *u = px->ups, *next; u; u = next) {
        next = u->next;
        gd__up_close(u);
    }
    gd__maybe_reap(px);
}

void gd_proxy_free(gd_proxy *px)
{
    if (!px)
        return;
    for (size_t i = 0; i < px->nhooks; i++)
        free(px->hooks[i].name);
    for (size_t i = 0; i < px->nov; i++) {
        free(px->ov[i].name);
        free(px->ov[i].addr);
    }
    free(px->ov);
    free(px);
}
