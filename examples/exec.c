/* exec.c - the gondolin C API in one page: boot a VM, run two commands concurrently,
 * print their output, shut down.
 *
 *   ./build/example-exec [IMAGE_DIR]     (default: the cached default image)
 */
#include "image/image.h"
#include "vm/vm.h"

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
    gd_vm *vm = ud;
    printf("[exec %u] exit %d%s%s\n", gd_exec_id(x), r->exit_code, r->message ? ": " : "",
           r->message ? r->message : "");
    if (--running == 0)
        gd_vm_close(vm);
}

static void on_ready(gd_vm *vm, int status, void *ud)
{
    (void)ud;
    if (status)
        return;
    printf("VM ready (agent %s, accel %s)\n", gd_vm_agent(vm), gd_vm_accel(vm));
    static const char *uname_argv[] = {"uname", "-sr", NULL};
    struct gd_exec_cbs cbs = {.on_output = on_output, .on_exit = on_exit_cb};
    struct gd_exec_opts a = {.argv = uname_argv};
    struct gd_exec_opts b = {.shell = "echo hello from $(hostname); echo oops >&2; exit 3"};
    if (gd_exec_start(vm, &a, &cbs, vm, NULL) == 0)
        running++;
    if (gd_exec_start(vm, &b, &cbs, vm, NULL) == 0)
        running++;
}

static void on_exit_vm(gd_vm *vm, const char *reason, void *ud)
{
    (void)vm;
    (void)ud;
    if (reason)
        fprintf(stderr, "VM stopped: %s\n", reason);
}

int main(int argc, char **argv)
{
    char dir[1024];
    if (argc > 1)
        snprintf(dir, sizeof(dir), "%s", argv[1]);
    else
        gd_image_default_dir(dir, sizeof(dir));
    uv_loop_t *loop = uv_default_loop();
    struct gd_vm_opts o = {.image_dir = dir};
    struct gd_err err;
    gd_vm *vm;
    if (gd_vm_new(loop, &o, &vm, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    if (gd_vm_start(vm, on_ready, on_exit_vm, NULL)) {
        fprintf(stderr, "cannot start QEMU\n");
        return 1;
    }
    uv_run(loop, UV_RUN_DEFAULT);
    gd_vm_free(vm);
    return 0;
}
