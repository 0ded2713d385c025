/* cmd_doctor.c - `gondolin doctor`: is this machine ready, and if not, how to fix it. */
#define _GNU_SOURCE
#include "cli.h"

#include "base/fs.h"
#include "image/image.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int problems;

static void ok(const char *what, const char *detail)
{
    printf("  ok    %-14s %s\n", what, detail);
}

static void bad(const char *what, const char *detail, const char *fix)
{
    problems++;
    printf("  FAIL  %-14s %s\n        fix: %s\n", what, detail, fix);
}

static void note(const char *what, const char *detail)
{
    printf("  note  %-14s %s\n", what, detail);
}

static int run_line(const char *cmd, char *out, size_t cap)
{
    FILE *p = popen(cmd, "r");
    if (!p)
        return -1;
    out[0] = 0;
    if (!fgets(out, (int)cap, p))
        out[0] = 0;
    out[strcspn(out, "\n")] = 0;
    return pclose(p);
}

int cmd_doctor(int argc, char **argv)
{
    if (argc > 1 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        printf("usage: gondolin doctor\n\nChecks QEMU, KVM usability, the packages the image "
               "builder needs,\nthe guest binaries and the default image. Exit status 1 if "
               "anything is wrong.\n");
        return 0;
    }
    printf("gondolin doctor\n");
    char line[1024], cmd[1200];
    const char *qemu = gd_qemu_binary(gd_host_arch());
    snprintf(cmd, sizeof(cmd), "'%s' --version 2>/dev/null", qemu);
    if (!strchr(qemu, '\'') && run_line(cmd, line, sizeof(line)) == 0 && line[0]) {
        ok("qemu", line);
    } else {
        snprintf(line, sizeof(line), "%s not found", qemu);
        bad("qemu", line, "apt-get install --no-install-recommends qemu-system-x86");
    }

    /* what the next `gondolin exec` will do, and why */
    char why[600], path[1024];
    if (gd_kvm_api_probe(why, sizeof(why)) != 0) {
        note("kvm", why);
        note("accel", "TCG (software emulation: slower boots, works everywhere)");
    } else {
        int v = gd_kvm_cached_verdict(qemu, why, sizeof(why));
        gd_kvm_verdict_path(path, sizeof(path));
        if (v == 1) {
            ok("kvm", "KVM boots guests here");
        } else if (v == 0) {
            snprintf(line, sizeof(line), "KVM API present but unusable here: %s", why);
            note("kvm", line);
            snprintf(line, sizeof(line), "TCG (rm %s to retest KVM)", path);
            note("accel", line);
        } else {
            note("kvm", "KVM API usable; the first boot will confirm it under a watchdog");
        }
    }

    if (run_line("command -v apt-get", line, sizeof(line)) == 0 && line[0])
        ok("apt-get", "present (image builds download Debian packages)");
    else
        bad("apt-get", "not found", "image builds need a Debian-family host with apt");
    if (run_line("ls /var/lib/apt/lists/ 2>/dev/null | grep -c _Packages", line, sizeof(line)) ==
            0 &&
        atoi(line) > 0)
        ok("apt lists", "package indexes present");
    else
        bad("apt lists", "no package indexes", "apt-get update");

    char guest[1024];
    if (gd_guest_bin_dir(guest, sizeof(guest)) == 0)
        ok("guest bins", guest);
    else
        bad("guest bins", "sandboxd/init not found next to gondolin",
            "cmake -S . -B build && cmake --build build");

    char dir[1024];
    const char *env = getenv("GONDOLIN_GUEST_DIR");
    if (env && *env)
        snprintf(dir, sizeof(dir), "%s", env);
    else
        gd_image_default_dir(dir, sizeof(dir));
    struct gd_image img;
    struct gd_err err;
    if (gd_image_load(dir, 1, &img, &err) == 0) {
        snprintf(line, sizeof(line), "%s (buildId %.12s, verified)", dir, img.build_id);
        ok("image", line);
    } else {
        bad("image", err.msg, "gondolin build --default");
    }
    printf(problems ? "%d problem(s)\n" : "all good\n", problems);
    return problems ? 1 : 0;
}
