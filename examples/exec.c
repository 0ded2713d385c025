/* exec.c - the gondolin C API in one page: a sandbox (VM + egress policy) that may
 * reach one host over HTTPS, two commands run concurrently, their output printed.
 *
 *   ./build/example-exec [IMAGE_DIR_OR_REF]     (default: the cached default image)
 */
#include "sandbox/sandbox.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int running;

static void on_output(gd_exec *x, int stream, const uint8_t *data, size_t n, void *ud)
{
    (void)ud;
    printf("[exec %u %s] %.*s", gd_exec_id(x), stream == 1 ? "out" : "err", (int)n,
           (const char *)data);
}

static void on_exit_cb(gd_exec *x, const struct gd_exec_result *r, void *ud)
{
    gd_sandbox *sb = ud;
    printf("[exec %u] exit %d%s%s\n", gd_exec_id(x), r->exit_code, r->message ? ": " : "",
           r->message ? r->message : "");
    if (--running == 0)
        gd_sandbox_close(sb);
}

static void on_ready(gd_sandbox *sb, int status, void *ud)
{
    (void)ud;
    if (status)
        return;
    gd_vm *vm = gd_sandbox_vm(sb);
    printf("sandbox ready (agent %s, accel %s, policy revision %s)\n", gd_vm_agent(vm),
           gd_vm_accel(vm), gd_sandbox_revision(sb));
    static const char *uname_argv[] = {"uname", "-sr", NULL};
    struct gd_exec_cbs cbs = {.on_output = on_output, .on_exit = on_exit_cb};
    struct gd_exec_opts a = {.argv = uname_argv};
    struct gd_exec_opts b = {.shell = "echo hello from $(hostname); echo oops >&2; exit 3"};
    if (gd_sandbox_exec(sb, &a, &cbs, sb, NULL) == 0)
        running++;
    if (gd_sandbox_exec(sb, &b, &cbs, sb, NULL) == 0)
        running++;
}

static void on_exit_sb(gd_sandbox *sb, const char *reason, void *ud)
{
    (void)sb;
    (void)ud;
    if (reason)
        fprintf(stderr, "sandbox stopped: %s\n", reason);
}

int main(int argc, char **argv)
{
    uv_loop_t *loop = uv_default_loop();
    struct gd_err err = {{0}};
    /* egress: HTTPS to example.com only; everything else is refused */
    struct gd_egress eg = {0};
    if (gd_egress_allow(&eg, "example.com", &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    struct gd_sandbox_opts o = {.image = argc > 1 ? argv[1] : NULL, .egress = &eg};
    gd_sandbox *sb;
    if (gd_sandbox_new(loop, &o, &sb, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        uv_run(loop, UV_RUN_DEFAULT);
        return 1;
    }
    gd_egress_free(&eg); /* the sandbox keeps its own copy */
    if (gd_sandbox_start(sb, on_ready, on_exit_sb, NULL)) {
        fprintf(stderr, "cannot start QEMU\n");
        return 1;
    }
    uv_run(loop, UV_RUN_DEFAULT);
    gd_sandbox_free(sb);
    return 0;
}
