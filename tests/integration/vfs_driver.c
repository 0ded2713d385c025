/*
 * vfs_driver - boots a real VM with a virtio-fs mount served by our vhost-user back-end
 * (core/vfs/vhost.c) and checks what the guest sees.
 *
 *   gd-vfs-driver IMAGE_DIR
 *
 * The mount is served by a tiny read-only FUSE server in this file (the provider/session
 * layer is another module): a root directory holding "hello" (6 bytes). The guest
 * stats, lists and reads it, and fails to open what is not there; a second boot names a
 * mount tag no device has: the guest reports the failed mount on the console and boots
 * anyway. Prints what it checked; exits 0 on success.
 */
#define _GNU_SOURCE
#include "base/err.h"
#include "vfs/fuse.h"
#include "vfs/vhost.h"
#include "vm/vm.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define HELLO "hello\n"

static int failures;
#define EXPECT(c, ...)                                                                             \
    do {                                                                                           \
        if (!(c)) {                                                                                \
            fprintf(stderr, "FAIL: " __VA_ARGS__);                                                 \
            fputc('\n', stderr);                                                                   \
            failures++;                                                                            \
        }                                                                                          \
    } while (0)

/* ---- the FUSE server: / and /hello ---- */

static int served[64]; /* requests per opcode (< 64) */

static void attr_of(uint64_t node, struct fuse_attr *a)
{
    memset(a, 0, sizeof(*a));
    a->ino = node;
    a->mode = node == 1 ? 040755 : 0100644;
    a->nlink = node == 1 ? 2 : 1;
    a->size = node == 1 ? 0 : sizeof(HELLO) - 1;
    a->blksize = 4096;
}

static long serve(void *ud, const void *in, size_t n, void *out, size_t cap)
{
    (void)ud;
    struct gd_fuse_req r;
    int e = gd_fuse_decode(in, n, &r);
    if (!r.hdr_ok)
        return -EPROTO;
    if (r.h.opcode < 64)
        served[r.h.opcode]++;
    if (!gd_fuse_op_has_reply(r.h.opcode))
        return 0;
    if (e)
        return (long)gd_fuse_reply_err(out, cap, r.h.unique, e == -EPROTO ? -EIO : e);
    uint64_t node = r.h.nodeid, u = r.h.unique;
    switch (r.h.opcode) {
    case FUSE_INIT: {
        /* plain READDIR: this server has no READDIRPLUS */
        struct gd_fuse_init_opts io = {.want = FUSE_ASYNC_READ | FUSE_BIG_WRITES | FUSE_MAX_PAGES};
        return (long)gd_fuse_reply_init(out, cap, &r, &io, NULL);
    }
    case FUSE_GETATTR: {
        if (node != 1 && node != 2)
            return (long)gd_fuse_reply_err(out, cap, u, -ENOENT);
        struct fuse_attr_out a = {.attr_valid = 1};
        attr_of(node, &a.attr);
        return (long)gd_fuse_reply_attr(out, cap, u, &a);
    }
    case FUSE_LOOKUP: {
        if (node != 1 || strcmp(r.name, "hello"))
            return (long)gd_fuse_reply_err(out, cap, u, -ENOENT);
        struct fuse_entry_out eo = {.nodeid = 2, .entry_valid = 1, .attr_valid = 1};
        attr_of(2, &eo.attr);
        return (long)gd_fuse_reply_entry(out, cap, u, &eo);
    }
    case FUSE_OPEN:
    case FUSE_OPENDIR: {
        if ((r.h.opcode == FUSE_OPEN) != (node == 2))
            return (long)gd_fuse_reply_err(out, cap, u, node == 1 ? -EISDIR : -ENOTDIR);
        struct fuse_open_out o = {.fh = node};
        return (long)gd_fuse_reply_open(out, cap, u, &o);
    }
    case FUSE_READ: {
        size_t len = sizeof(HELLO) - 1, off = r.in.read.offset < len ? r.in.read.offset : len;
        size_t k = len - off < r.in.read.size ? len - off : r.in.read.size;
        return (long)gd_fuse_reply_data(out, cap, u, HELLO + off, k);
    }
    case FUSE_READDIR: {
        /* ".", "..", "hello" at cookies 1, 2, 3 */
        static const char *const names[] = {".", "..", "hello"};
        size_t hdr = sizeof(struct fuse_out_header), used = 0;
        size_t room = cap - hdr < r.in.read.size ? cap - hdr : r.in.read.size;
        for (uint64_t i = r.in.read.offset; i < 3; i++) {
            long k = gd_fuse_add_dirent((uint8_t *)out + hdr + used, room - used, names[i],
                                        strlen(names[i]), i == 2 ? 2 : 1, i + 1,
                                        i == 2 ? 8 /* DT_REG */ : 4 /* DT_DIR */);
            if (k <= 0)
                break;
            used += (size_t)k;
        }
        return (long)gd_fuse_reply_hdr(out, cap, u, used);
    }
    case FUSE_STATFS: {
        struct fuse_kstatfs st = {.blocks = 1, .bsize = 4096, .namelen = 255, .frsize = 4096};
        return (long)gd_fuse_reply_statfs(out, cap, u, &st);
    }
    case FUSE_RELEASE:
    case FUSE_RELEASEDIR:
    case FUSE_FLUSH:
    case FUSE_DESTROY:
        return (long)gd_fuse_reply_err(out, cap, u, 0);
    default:
        return (long)gd_fuse_reply_err(out, cap, u, -ENOSYS);
    }
}

/* ---- the VM ---- */

static uv_loop_t *loop;
static gd_vm *vm;
static const char *phase;
static char out[65536];
static size_t outn;
static int code;

static void on_output(gd_exec *x, int stream, const uint8_t *d, size_t n, void *ud)
{
    (void)x;
    (void)ud;
    if (stream == 1 && outn + n < sizeof(out)) {
        memcpy(out + outn, d, n);
        outn += n;
    }
    if (stream == 2)
        fwrite(d, 1, n, stderr);
}

static void on_exit_cb(gd_exec *x, const struct gd_exec_result *r, void *ud)
{
    (void)x;
    (void)ud;
    code = r->error ? -1 : r->exit_code;
    gd_vm_close(vm);
}

static void on_ready(gd_vm *v, int status, void *ud)
{
    (void)ud;
    if (status) {
        EXPECT(0, "%s: boot failed: %s; console: %s", phase, gd_vm_error(v), gd_vm_console_tail(v));
        gd_vm_close(v);
        return;
    }
    const char *cmd = !strcmp(phase, "mount")
                          ? "stat -c '%F %a' /mnt/vfs; ls -a /mnt/vfs; cat /mnt/vfs/hello; "
                            "grep -c 'gdfs0 /mnt/vfs virtiofs' /proc/mounts; "
                            "cat /mnt/vfs/nothing 2>/dev/null || echo missing; (echo x > "
                            "/mnt/vfs/new) 2>/dev/null && echo wrote || echo refused"
                          : "echo booted";
    struct gd_exec_opts o = {.shell = cmd};
    struct gd_exec_cbs cbs = {.on_output = on_output, .on_exit = on_exit_cb};
    if (gd_exec_start(v, &o, &cbs, NULL, NULL)) {
        EXPECT(0, "%s: exec failed", phase);
        gd_vm_close(v);
    }
}

static void on_vm_exit(gd_vm *v, const char *reason, void *ud)
{
    (void)v;
    (void)ud;
    EXPECT(!reason, "%s: VM stopped: %s", phase, reason ? reason : "");
}

static int boot(const char *dir, const struct gd_vm_fs *fs, size_t nfs, const char *append)
{
    struct gd_vm_opts o = {.image_dir = dir, .fs = fs, .nfs = nfs, .append = append};
    struct gd_err err = {{0}};
    outn = 0;
    code = -2;
    if (gd_vm_new(loop, &o, &vm, &err)) {
        EXPECT(0, "%s: %s", phase, err.msg);
        return -1;
    }
    if (gd_vm_start(vm, on_ready, on_vm_exit, NULL)) {
        EXPECT(0, "%s: cannot start", phase);
        gd_vm_free(vm);
        return -1;
    }
    uv_run(loop, UV_RUN_DEFAULT);
    out[outn] = 0;
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: gd-vfs-driver IMAGE_DIR\n");
        return 2;
    }
    loop = uv_default_loop();
    gd_vhost_fs *v;
    int qfd;
    struct gd_err err = {{0}};
    if (gd_vhost_fs_start(serve, NULL, &qfd, &v, &err)) {
        fprintf(stderr, "FAIL: %s\n", err.msg);
        return 1;
    }
    /* a mount the guest reads through our back-end */
    phase = "mount";
    struct gd_vm_fs fs[] = {{.guest = "/mnt/vfs", .fd = qfd}};
    if (boot(argv[1], fs, 1, NULL) == 0) {
        gd_vm_free(vm);
        printf("guest output:\n%s", out);
        EXPECT(code == 0, "exit code %d", code);
        EXPECT(strstr(out, "directory 755\n"), "stat of the mount root");
        EXPECT(strstr(out, ".\n..\nhello\n"), "ls -a lists the directory");
        EXPECT(strstr(out, "\nhello\n1\n"), "cat reads the file; /proc/mounts has the mount");
        EXPECT(strstr(out, "missing\nrefused\n"), "a missing file is missing; no creation");
        EXPECT(served[FUSE_INIT] == 1 && served[FUSE_READ] >= 1 && served[FUSE_READDIR] >= 1,
               "requests served: INIT %d READ %d READDIR %d", served[FUSE_INIT], served[FUSE_READ],
               served[FUSE_READDIR]);
        EXPECT(!gd_vhost_fs_error(v)[0], "back-end error: %s", gd_vhost_fs_error(v));
    }
    gd_vhost_fs_stop(v);
    close(qfd);
    /* a mount that cannot succeed: one console line, the boot goes on */
    phase = "bad mount";
    if (boot(argv[1], NULL, 0, "gondolin.mounts=nosuchtag:/mnt/bad") == 0) {
        const char *con = gd_vm_console_tail(vm);
        printf("console tail:\n%s\n", con);
        EXPECT(code == 0 && strstr(out, "booted"), "the VM boots");
        EXPECT(strstr(con, "gondolin-init: mount nosuchtag on /mnt/bad:"),
               "the failed mount is reported on the console");
        gd_vm_free(vm);
    }
    uv_loop_close(loop);
    printf("%s\n", failures ? "FAILED" : "ok");
    return failures ? 1 : 0;
}
