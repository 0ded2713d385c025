/*
 * fwd_driver - boots a VM, runs a guest command, opens port forwards into it and waits;
 * driven by tests/integration/test_forward.py.
 *
 *   gd-fwd-driver [--image DIR] [--guest-cmd SHELL] FORWARD...
 *
 * FORWARD is MODE[,max=N][,idle=MS][,connect=MS]:[HOST:]PORT=GUESTPORT, MODE raw or http. For
 * each, one line "forward N port P" on stdout (N counts from 0), then "ready". HTTP
 * forwards carry a test hook: a request that is not marked ingress is refused with 500,
 * /forbidden... with 403, and every response gets "X-Gondolin-Ingress: 1". Guest command
 * output, forward log lines and audit events go to stderr. SIGUSR1 stops the VM (the
 * forwards stay); SIGTERM/SIGINT close the forwards, then the VM, and exit 0 if every
 * handle was closed.
 */
#define _GNU_SOURCE
#include "forward/forward.h"
#include "image/image.h"
#include "vm/vm.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_FWD 16

struct fwd {
    struct gd_forward_opts o;
    struct gd_forward_spec spec;
    gd_forward *f;
    int closed;
};

static uv_loop_t *loop;
static gd_vm *vm;
static struct fwd fwds[MAX_FWD];
static int nfwd;
static const char *guest_cmd;
static uv_signal_t sig_term, sig_int, sig_usr1;
static int stopping, vm_gone, failed;

static void log_line(void *ud, const char *line)
{
    (void)ud;
    fprintf(stderr, "log: %s\n", line);
}

static void on_event(const struct gd_proxy_event *e, void *ud)
{
    (void)ud;
    fprintf(stderr, "audit: %s %s %s %d %s %s\n", e->method ? e->method : "-",
            e->host ? e->host : "-", e->path ? e->path : "-", e->status,
            e->decision ? e->decision : "-", e->addr ? e->addr : "-");
}

static enum gd_decision test_hook(gd_txn *t, enum gd_phase ph, void *ud)
{
    (void)ud;
    if (!gd_txn_ingress(t))
        return gd_txn_deny(t, 500, "ingress-test", "transaction not marked ingress");
    if (ph == GD_PHASE_REQUEST_HEAD && !strncmp(gd_txn_target(t), "/forbidden", 10))
        return gd_txn_deny(t, 403, "ingress-test", "forbidden by the test hook");
    if (ph == GD_PHASE_RESPONSE_HEAD)
        gd_txn_set_header(t, 1, "X-Gondolin-Ingress", "1");
    return GD_CONTINUE;
}

static void on_guest_out(gd_exec *x, int stream, const uint8_t *d, size_t n, void *ud)
{
    (void)x;
    (void)stream;
    (void)ud;
    fwrite(d, 1, n, stderr);
}

static void on_guest_exit(gd_exec *x, const struct gd_exec_result *r, void *ud)
{
    (void)x;
    (void)ud;
    fprintf(stderr, "guest command ended: %d %s\n", r->exit_code, r->message ? r->message : "");
}

static void maybe_stop_vm(void)
{
    for (int i = 0; i < nfwd; i++)
        if (fwds[i].f && !fwds[i].closed)
            return;
    if (!vm_gone)
        gd_vm_close(vm);
    uv_close((uv_handle_t *)&sig_term, NULL);
    uv_close((uv_handle_t *)&sig_int, NULL);
    uv_close((uv_handle_t *)&sig_usr1, NULL);
}

static void on_fwd_closed(gd_forward *f, void *ud)
{
    struct fwd *w = ud;
    w->closed = 1;
    gd_forward_free(f);
    maybe_stop_vm();
}

static void stop(void)
{
    if (stopping)
        return;
    stopping = 1;
    for (int i = 0; i < nfwd; i++)
        if (fwds[i].f)
            gd_forward_close(fwds[i].f, on_fwd_closed, &fwds[i]);
    maybe_stop_vm();
}

static void on_signal(uv_signal_t *s, int signum)
{
    (void)s;
    if (signum == SIGUSR1) {
        if (!vm_gone)
            gd_vm_close(vm);
        return;
    }
    stop();
}

static void on_vm_ready(gd_vm *v, int status, void *ud)
{
    (void)ud;
    if (status) {
        fprintf(stderr, "VM did not start: %s\n", gd_vm_error(v));
        failed = 1;
        stop();
        return;
    }
    if (guest_cmd) {
        struct gd_exec_opts xo = {.shell = guest_cmd};
        static const struct gd_exec_cbs cbs = {.on_output = on_guest_out, .on_exit = on_guest_exit};
        if (gd_exec_start(v, &xo, &cbs, NULL, NULL))
            fprintf(stderr, "cannot start the guest command\n");
    }
    for (int i = 0; i < nfwd; i++) {
        struct gd_err err;
        struct gd_proxy_opts po = {.on_event = on_event};
        fwds[i].o.proxy = &po;
        if (gd_forward_new(loop, v, &fwds[i].o, &fwds[i].f, &err)) {
            fprintf(stderr, "forward %d: %s\n", i, err.msg);
            failed = 1;
            stop();
            return;
        }
        gd_proxy *px = gd_forward_proxy(fwds[i].f);
        if (px)
            gd_proxy_add_hook(px, "ingress-test",
                              GD_PHASE_CONNECT | GD_PHASE_REQUEST_HEAD | GD_PHASE_RESPONSE_HEAD,
                              test_hook, NULL);
        printf("forward %d port %u\n", i, gd_forward_port(fwds[i].f));
    }
    printf("ready\n");
    fflush(stdout);
}

static void on_vm_exit(gd_vm *v, const char *reason, void *ud)
{
    (void)v;
    (void)ud;
    vm_gone = 1;
    fprintf(stderr, "VM stopped: %s\n", reason ? reason : "closed");
    fflush(stderr);
}

static int parse_fwd(const char *arg, struct fwd *w)
{
    struct gd_err err;
    const char *colon = strchr(arg, ':');
    if (!colon)
        goto bad;
    char mode[64];
    snprintf(mode, sizeof(mode), "%.*s", (int)(colon - arg), arg);
    w->o = (struct gd_forward_opts){.log = log_line};
    for (char *save, *tok = strtok_r(mode, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        if (!strcmp(tok, "raw"))
            w->o.http = 0;
        else if (!strcmp(tok, "http"))
            w->o.http = 1;
        else if (!strncmp(tok, "max=", 4))
            w->o.max_conns = (unsigned)atoi(tok + 4);
        else if (!strncmp(tok, "idle=", 5))
            w->o.idle_ms = (unsigned)atoi(tok + 5);
        else if (!strncmp(tok, "connect=", 8))
            w->o.connect_ms = (unsigned)atoi(tok + 8);
        else
            goto bad;
    }
    if (gd_forward_parse(colon + 1, &w->spec, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return -1;
    }
    w->o.listen_host = w->spec.host[0] ? w->spec.host : NULL;
    w->o.listen_port = w->spec.port;
    w->o.guest_port = w->spec.guest_port;
    return 0;
bad:
    fprintf(stderr, "bad forward '%s': MODE[,max=N][,idle=MS][,connect=MS]:[HOST:]PORT=GUESTPORT\n",
            arg);
    return -1;
}

int main(int argc, char **argv)
{
    char dir[1024] = "";
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--image") && i + 1 < argc)
            snprintf(dir, sizeof(dir), "%s", argv[++i]);
        else if (!strcmp(argv[i], "--guest-cmd") && i + 1 < argc)
            guest_cmd = argv[++i];
        else if (nfwd < MAX_FWD && parse_fwd(argv[i], &fwds[nfwd]) == 0)
            nfwd++;
        else
            return 2;
    }
    if (!dir[0])
        gd_image_default_dir(dir, sizeof(dir));
    loop = uv_default_loop();
    struct gd_vm_opts o = {.image_dir = dir};
    struct gd_err err;
    if (gd_vm_new(loop, &o, &vm, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    uv_signal_init(loop, &sig_term);
    uv_signal_init(loop, &sig_int);
    uv_signal_init(loop, &sig_usr1);
    uv_signal_start(&sig_term, on_signal, SIGTERM);
    uv_signal_start(&sig_int, on_signal, SIGINT);
    uv_signal_start(&sig_usr1, on_signal, SIGUSR1);
    if (gd_vm_start(vm, on_vm_ready, on_vm_exit, NULL)) {
        fprintf(stderr, "cannot start the VM\n");
        return 1;
    }
    uv_run(loop, UV_RUN_DEFAULT);
    gd_vm_free(vm);
    int rc = uv_loop_close(loop);
    if (rc)
        fprintf(stderr, "handles left open at exit\n");
    return failed || rc ? 1 : 0;
}
