/* main.c - `gondolin`: command dispatch, shared flags, image selection, build. */
#define _GNU_SOURCE
#include "cli.h"

#include "../../builder/builder.h"
#include "base/fs.h"
#include "image/image.h"
#include "image/store.h"
#include "snap/snap.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int cli_die(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("gondolin: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return code;
}

static int parse_size_mb(const char *s, unsigned *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s)
        return -1;
    if (!strcasecmp(end, "g") || !strcasecmp(end, "gib") || !strcasecmp(end, "gb"))
        v *= 1024;
    else if (*end && strcasecmp(end, "m") && strcasecmp(end, "mib") && strcasecmp(end, "mb"))
        return -1;
    if (v == 0 || v > 1024 * 1024)
        return -1;
    *out = (unsigned)v;
    return 0;
}

int cli_vm_flag(int argc, char **argv, int *i, struct cli_vm_flags *f)
{
    const char *a = argv[*i];
    const char *names[] = {"--image", "--accel", "--memory", "--cpus", "--rootfs-mode", "--resume"};
    int which = -1;
    const char *val = NULL;
    for (int k = 0; k < 6; k++) {
        size_t l = strlen(names[k]);
        if (!strncmp(a, names[k], l) && (a[l] == 0 || a[l] == '=')) {
            which = k;
            if (a[l] == '=')
                val = a + l + 1;
        }
    }
    if (!strcmp(a, "--cold-boot")) {
        f->cold_boot = 1;
        return 1;
    }
    if (!strcmp(a, "-v") || !strcmp(a, "--verbose")) {
        f->verbose = 1;
        return 1;
    }
    if (which < 0)
        return 0;
    if (!val) {
        if (*i + 1 >= argc) {
            cli_die(2, "%s needs a value", names[which]);
            return -1;
        }
        val = argv[++*i];
    }
    char *end;
    switch (which) {
    case 0:
        f->image = val;
        break;
    case 1:
        if (strcmp(val, "kvm") && strcmp(val, "tcg") && strcmp(val, "auto")) {
            cli_die(2, "--accel must be kvm, tcg or auto, not '%s'", val);
            return -1;
        }
        f->accel = val;
        break;
    case 2:
        if (parse_size_mb(val, &f->memory_mb) || f->memory_mb < 128) {
            cli_die(2, "--memory must be a size like 512M or 2G (at least 128M), not '%s'", val);
            return -1;
        }
        break;
    case 3: {
        unsigned long c = strtoul(val, &end, 10);
        if (*end || c < 1 || c > 64) {
            cli_die(2, "--cpus must be a number from 1 to 64, not '%s'", val);
            return -1;
        }
        f->cpus = (unsigned)c;
        break;
    }
    case 4:
        if (strcmp(val, "readonly") && strcmp(val, "memory") && strcmp(val, "cow") &&
            strcmp(val, "rw")) {
            cli_die(2, "--rootfs-mode must be memory, cow, readonly or rw, not '%s'", val);
            return -1;
        }
        f->rootfs_mode = val;
        break;
    case 5: {
        struct gd_err err = {{0}};
        char p[1200];
        if (gd_snap_resolve(val, p, sizeof(p), &err)) {
            cli_die(2, "--resume: %s", err.msg);
            return -1;
        }
        char *abs = realpath(p, NULL); /* a supervisor does not share our cwd */
        snprintf(f->resume, sizeof(f->resume), "%s", abs ? abs : p);
        free(abs);
        break;
    }
    }
    return 1;
}

void cli_vm_sandbox(struct cli_vm_flags *f, struct gd_sandbox_opts *o)
{
    o->image = f->image;
    o->resolve_image = cli_resolve_image;
    o->image_ud = &f->verbose;
    o->accel = f->accel;
    o->memory_mb = f->memory_mb;
    o->cpus = f->cpus;
    o->rootfs_mode = f->rootfs_mode;
    o->resume = f->resume[0] ? f->resume : NULL;
    o->verbose = f->verbose;
    o->append = getenv("GONDOLIN_APPEND");
    const char *cb = getenv("GONDOLIN_COLD_BOOT");
    o->cold_boot = f->cold_boot || (cb && *cb && strcmp(cb, "0"));
}

int cli_resolve_image(void *ud, const char *ref, char *out, size_t cap, struct gd_err *err)
{
    int verbose = ud ? *(const int *)ud : 0;
    const char *env = getenv("GONDOLIN_GUEST_DIR");
    const char *def = getenv("GONDOLIN_DEFAULT_IMAGE");
    if (ref || (env && *env) ||
        (def && *def && strcmp(def, "default:latest") && strcmp(def, "default"))) {
        const char *sel = ref ? ref : env && *env ? env : def;
        return gd_store_resolve(sel, gd_host_arch(), out, cap, err);
    }
    gd_image_default_dir(out, cap);
    struct gd_image img;
    struct gd_err sub = {{0}};
    int need = gd_image_load(out, 0, &img, &sub) != 0;
    if (!need && strcmp(img.builder_id, gd_builder_id())) {
        /* built by another version of the builder or guest: rebuild, so the default
         * image is always what this binary would build */
        fprintf(stderr, "gondolin: the default image was built by another version; "
                        "rebuilding it\n");
        need = 1;
    } else if (!need) {
        /* the image must carry this build's agent */
        char guest[1024], p[1100], hex[65];
        if (gd_guest_bin_dir(guest, sizeof(guest)) == 0) {
            snprintf(p, sizeof(p), "%s/sandboxd", guest);
            if (gd_sha256_file(p, hex) == 0 && strcmp(hex, img.sandboxd_sha)) {
                fprintf(stderr, "gondolin: the default image has an older guest agent; "
                                "rebuilding it\n");
                need = 1;
            }
        }
    } else {
        fprintf(stderr, "gondolin: no default image yet; building it from Debian packages "
                        "(first use only)\n");
    }
    return need ? cli_build_default(out, verbose, err) : 0;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: gondolin <command> [options]\n\n"
               "Run untrusted code in a local micro-VM with host-side control.\n\n"
               "commands:\n"
               "  exec [flags] -- CMD [ARGS...]   run a command in a fresh VM\n"
               "  exec [flags] -c 'SHELL STRING'  run a string with /bin/sh -lc\n"
               "  bash [flags] [-- CMD...]        interactive shell on a PTY\n"
               "  start [flags] [--name N] [--json]  boot a sandbox that stays up (a session)\n"
               "  exec --session ID [-t] -- CMD   run a command in a session (or -c STRING)\n"
               "  attach ID [-- CMD]              interactive shell in a session; Ctrl-] detaches\n"
               "  cp SRC ID:DST | cp ID:SRC DST   copy files and trees into or out of a session\n"
               "  ls [--json]                     the running sessions\n"
               "  logs ID [-f]                    a session's log (policy, denials, reloads)\n"
               "  stop ID [--force]               stop a session\n"
               "  expose ID [--raw] [HOST:]PORT=GUESTPORT  a host port into the session\n"
               "  ssh ID [--user U] [-- CMD]      log into the session with OpenSSH\n"
               "  diff ID:/GUEST [--export F.tar] what the guest changed in an overlay mount\n"
               "  snapshot ID [--name N]          stop a session, keep its disk as a checkpoint\n"
               "  snapshot ID --memory [--stop]   save a session's memory too; it runs on\n"
               "  fork ID [-n N]                  N new sessions from a session's memory\n"
               "  policy reload ID                reload a session's policy\n"
               "  bundle keygen|build|sign|verify|inspect  signed policy bundles\n"
               "  build --config FILE [--output DIR | --tag REF]  build a guest image\n"
               "  build --init-config | --validate FILE | --verify DIR | --default\n"
               "  image ls|inspect|import|tag|rm|gc  the local image store\n"
               "  doctor                          check QEMU, KVM, packages and the image\n"
               "  --version                       print the version\n\n"
               "Run `gondolin <command> --help` for the flags of a command.\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *c = argv[1];
    if (!strcmp(c, "--version") || !strcmp(c, "version")) {
        printf("gondolin %s (protocol %d.%d)\n", GD_VERSION, 1, 0);
        return 0;
    }
    if (!strcmp(c, "--help") || !strcmp(c, "-h") || !strcmp(c, "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(c, "exec") || !strcmp(c, "run"))
        return cmd_exec(argc - 1, argv + 1, 0);
    if (!strcmp(c, "policy"))
        return cmd_policy(argc - 1, argv + 1);
    if (!strcmp(c, "bash"))
        return cmd_exec(argc - 1, argv + 1, 1);
    if (!strcmp(c, "doctor"))
        return cmd_doctor(argc - 1, argv + 1);
    if (!strcmp(c, "build"))
        return cmd_build(argc - 1, argv + 1);
    if (!strcmp(c, "image"))
        return cmd_image(argc - 1, argv + 1);
    if (!strcmp(c, "start"))
        return cmd_start(argc - 1, argv + 1);
    if (!strcmp(c, "attach"))
        return cmd_attach(argc - 1, argv + 1);
    if (!strcmp(c, "cp"))
        return cmd_cp(argc - 1, argv + 1);
    if (!strcmp(c, "ls"))
        return cmd_ls(argc - 1, argv + 1);
    if (!strcmp(c, "logs"))
        return cmd_logs(argc - 1, argv + 1);
    if (!strcmp(c, "stop"))
        return cmd_stop(argc - 1, argv + 1);
    if (!strcmp(c, "expose"))
        return cmd_expose(argc - 1, argv + 1);
    if (!strcmp(c, "diff"))
        return cmd_diff(argc - 1, argv + 1);
    if (!strcmp(c, "snapshot"))
        return cmd_snapshot(argc - 1, argv + 1);
    if (!strcmp(c, "fork"))
        return cmd_fork(argc - 1, argv + 1);
    if (!strcmp(c, "ssh"))
        return cmd_ssh(argc - 1, argv + 1);
    if (!strcmp(c, "bundle"))
        return cmd_bundle(argc - 1, argv + 1);
    return cli_die(2, "unknown command '%s' (see gondolin --help)", c);
}
