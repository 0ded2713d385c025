/* cmd_build.c - `gondolin build`: configs, validation, dry runs, builds, verification. */
#define _GNU_SOURCE
#include "cli.h"

#include "../../builder/builder.h"
#include "../../builder/config.h"
#include "image/image.h"
#include "image/store.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static void build_usage(void)
{
    printf("usage: gondolin build [options]\n\n"
           "Builds a guest image without root, loop mounts, chroot or Docker.\n\n"
           "  --init-config             print a complete default config (JSON)\n"
           "  --config FILE             build the image FILE describes\n"
           "  --default                 build the default image (cached; used when no\n"
           "                            --image is given)\n"
           "  --output DIR              where to put the image (replaced atomically)\n"
           "  --tag NAME[:TAG]          import the result into the image store under a ref\n"
           "                            (without --output: the store only)\n"
           "  --arch x86_64|aarch64     override the config's arch\n"
           "  --dry-run                 resolve and print packages, sizes and steps\n"
           "  --validate FILE           report every problem of a config (E0xx/W0xx codes,\n"
           "                            see docs/builder.md); exit 1 on errors\n"
           "  --json                    with --validate: the report as JSON\n"
           "  --verify DIR              check manifest.json and every asset checksum\n"
           "  -v, --verbose             step timings\n");
}

#define CONFIG_MAX (16u << 20)

static void cache_root(char *buf, size_t cap)
{
    gd_cache_dir(buf, cap);
}

/* ---- postBuild.commands in a build VM ---- */

static int run_commands(void *ud, const char *dir, const struct gd_build_config *c,
                        struct gd_err *err)
{
    const struct gd_build_opts *bo = ud;
    size_t cap = 256;
    for (size_t i = 0; i < c->commands.n; i++)
        cap += strlen(c->commands.v[i]) * 4 + 128;
    char *script = malloc(cap);
    if (!script)
        return gd_err_set(err, -ENOMEM, "out of memory");
    size_t l = 0;
    for (size_t i = 0; i < c->commands.n; i++) {
        l += (size_t)snprintf(script + l, cap - l,
                              "echo '\036gondolin-step %zu' >&2\n/bin/sh -lc '", i);
        for (const char *p = c->commands.v[i]; *p; p++)
            l += (size_t)(*p == '\'' ? snprintf(script + l, cap - l, "'\\''")
                                     : snprintf(script + l, cap - l, "%c", *p));
        l += (size_t)snprintf(script + l, cap - l, "' </dev/null || exit $?\n");
    }
    /* flush and remount read-only before the VM is stopped: the image is consistent */
    snprintf(script + l, cap - l,
             "sync; echo u > /proc/sysrq-trigger 2>/dev/null; sleep 1; echo '\036gondolin-done' "
             ">&2\n");
    int pfd[2];
    if (pipe2(pfd, O_CLOEXEC)) {
        free(script);
        return gd_err_set(err, -errno, "pipe: %s", strerror(errno));
    }
    struct gd_progress pr;
    gd_progress_begin(&pr, "postBuild commands in the build VM", c->commands.n, 0);
    pid_t pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (bo->sigmask)
            sigprocmask(SIG_SETMASK, bo->sigmask, NULL);
        dup2(pfd[1], 1);
        dup2(pfd[1], 2);
        int dn = open("/dev/null", O_RDONLY);
        if (dn >= 0)
            dup2(dn, 0);
        char *argv[] = {(char *)"gondolin",
                        (char *)"exec",
                        (char *)"--image",
                        (char *)dir,
                        (char *)"--rootfs-mode",
                        (char *)"rw",
                        (char *)"--cpus",
                        (char *)"1",
                        (char *)"--memory",
                        (char *)"1G",
                        (char *)"--allow-host",
                        (char *)"*",
                        (char *)"--no-stdin",
                        (char *)"-c",
                        script,
                        NULL};
        execv("/proc/self/exe", argv);
        _exit(127);
    }
    close(pfd[1]);
    free(script);
    if (pid < 0) {
        close(pfd[0]);
        return gd_err_set(err, -errno, "fork: %s", strerror(errno));
    }
    FILE *f = fdopen(pfd[0], "r");
    char line[4096];
    long step = -1;
    int done = 0;
    while (f && fgets(line, sizeof(line), f)) {
        if (line[0] == '\036') {
            if (!strncmp(line + 1, "gondolin-step ", 14)) {
                step = strtol(line + 15, NULL, 10);
                if (step > 0)
                    gd_progress_update(&pr, (uint64_t)step);
                if (pr.tty)
                    fprintf(stderr, "\r\033[K");
                fprintf(stderr, "gondolin: build: postBuild.commands[%ld]: %s\n", step,
                        step >= 0 && (size_t)step < c->commands.n ? c->commands.v[step] : "?");
            } else if (!strncmp(line + 1, "gondolin-done", 13)) {
                done = 1;
            }
            continue;
        }
        if (pr.tty)
            fprintf(stderr, "\r\033[K");
        fprintf(stderr, "  [build vm] %s%s", line, strchr(line, '\n') ? "" : "\n");
    }
    if (f)
        fclose(f);
    int st = 0;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
        ;
    int code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    int rc = 0;
    if (code && step >= 0 && (size_t)step < c->commands.n && !done)
        rc = gd_err_set(err, -ECANCELED, "postBuild.commands[%ld] failed with exit code %d: %s",
                        step, code, c->commands.v[step]);
    else if (code || !done)
        rc = gd_err_set(err, -EIO, "the build VM failed (exit code %d) before the commands ran",
                        code);
    if (!rc)
        gd_progress_update(&pr, c->commands.n);
    gd_progress_end(&pr, rc ? "failed" : "done");
    return rc;
}

/* ---- validate ---- */

static void print_diags(const struct gd_diags *d, const char *file, int json)
{
    if (json) {
        cJSON *a = cJSON_CreateArray();
        for (size_t i = 0; i < d->n; i++) {
            cJSON *e = cJSON_CreateObject();
            cJSON_AddStringToObject(e, "code", d->v[i].code);
            cJSON_AddStringToObject(e, "path", d->v[i].path);
            cJSON_AddStringToObject(e, "message", d->v[i].msg);
            cJSON_AddItemToArray(a, e);
        }
        char *s = cJSON_Print(a);
        printf("%s\n", s ? s : "[]");
        free(s);
        cJSON_Delete(a);
        return;
    }
    for (size_t i = 0; i < d->n; i++)
        printf("%s: %s %s: %s\n", file, d->v[i].code, d->v[i].path, d->v[i].msg);
    printf("%s: %d error%s, %d warning%s\n", file, d->errors, d->errors == 1 ? "" : "s",
           d->warnings, d->warnings == 1 ? "" : "s");
}

/* Checks that need the package indexes: packages exist, the kernel has what we boot
 * with, the rootfs fits. */
static void deep_checks(const struct gd_build_config *c, struct gd_diags *d)
{
    char cache[1024];
    cache_root(cache, sizeof(cache));
    struct gd_err err = {{0}};
    if (!strcmp(c->distro, "alpine")) {
        struct gd_apk_db *db;
        if (gd_apk_open(c, cache, &db, &err)) {
            gd_diag_add(d, "W007", "alpine.mirror", "packages not checked: %s", err.msg);
            return;
        }
        for (size_t i = 0; i < c->alpine.rootfs_packages.n && !c->oci.set; i++)
            if (!gd_apk_exists(db, c->alpine.rootfs_packages.v[i])) {
                char p[64];
                snprintf(p, sizeof(p), "alpine.rootfsPackages[%zu]", i);
                gd_diag_add(d, "E010", p, "package '%s' not found in the index",
                            c->alpine.rootfs_packages.v[i]);
            }
        if (!gd_apk_exists(db, c->alpine.kernel_package))
            gd_diag_add(d, "E010", "alpine.kernelPackage", "package '%s' not found in the index",
                        c->alpine.kernel_package);
        gd_apk_close(db);
    } else if (!c->oci.set) {
        struct gd_pkg *all;
        size_t nall;
        struct gd_err e1 = {{0}};
        if (gd_deb_resolve((const char *const *)c->debian.packages.v, &all, &nall, &e1) == 0) {
            free(all);
            return; /* one apt run says they all exist */
        }
        for (size_t i = 0; i < c->debian.packages.n; i++) {
            const char *one[] = {c->debian.packages.v[i], NULL};
            struct gd_pkg *p;
            size_t n;
            struct gd_err e2 = {{0}};
            if (gd_deb_resolve(one, &p, &n, &e2)) {
                char jp[64];
                snprintf(jp, sizeof(jp), "debian.packages[%zu]", i);
                gd_diag_add(d, "E010", jp, "package '%s': %s", one[0], e2.msg);
            } else {
                free(p);
            }
        }
    }
}

static void kernel_and_size_checks(const struct gd_build_config *c, struct gd_diags *d)
{
    /* a real build into a scratch directory, stopping at the first error: this is what
     * proves the kernel has the modules and the content fits sizeMb */
    char cache[1024], guest[1024];
    cache_root(cache, sizeof(cache));
    if (gd_guest_bin_dir(guest, sizeof(guest)))
        return;
    char tmp[] = "/tmp/gondolin-validate-XXXXXX";
    if (!mkdtemp(tmp))
        return;
    char out[64];
    snprintf(out, sizeof(out), "%s/image", tmp);
    struct gd_build_config c2 = *c;
    c2.commands.n = 0; /* commands are not run by --validate */
    struct gd_build_opts o = {.output = out, .cache_dir = cache, .guest_dir = guest};
    struct gd_err err = {{0}};
    fprintf(stderr, "gondolin: validate: trial build (kernel modules, rootfs size)\n");
    if (gd_build(&c2, &o, &err)) {
        if (!strncmp(err.msg, "E012", 4))
            gd_diag_add(d, "E012",
                        !strcmp(c->distro, "alpine") ? "alpine.kernelPackage"
                                                     : "debian.kernelPackage",
                        "%s", err.msg + 5);
        else if (!strncmp(err.msg, "E013", 4))
            gd_diag_add(d, "E013", "rootfs.sizeMb", "%s", err.msg + 5);
        else if (!strncmp(err.msg, "E011", 4))
            gd_diag_add(d, "E011",
                        !strcmp(c->distro, "alpine") ? "alpine.kernelImage"
                                                     : "debian.kernelPackage",
                        "%s", err.msg + 5);
        else
            gd_diag_add(d, "E018", "", "the image does not build: %s", err.msg);
    } else if (c->size_mb) {
        char p[128];
        snprintf(p, sizeof(p), "%s/rootfs.ext4", out);
        /* free space: blocks the tree used vs the fixed size */
        struct stat st;
        if (stat(p, &st) == 0 && (uint64_t)st.st_blocks * 512 > c->size_mb * 1024 * 1024 * 9 / 10)
            gd_diag_add(d, "W005", "rootfs.sizeMb",
                        "%llu MiB leaves less than 10%% free for the guest",
                        (unsigned long long)c->size_mb);
    }
    gd_rm_rf(tmp);
}

static int validate(const char *file, const char *arch, int json)
{
    char *text;
    size_t tl;
    int rc = gd_read_file(file, CONFIG_MAX, &text, &tl);
    if (rc)
        return cli_die(2, "build --validate: %s: %s", file, strerror(-rc));
    struct gd_build_config c;
    struct gd_diags d = {0};
    gd_config_parse(text, file, arch, &c, &d);
    free(text);
    if (!d.errors)
        deep_checks(&c, &d);
    if (!d.errors && !getenv("GONDOLIN_VALIDATE_NO_TRIAL"))
        kernel_and_size_checks(&c, &d);
    print_diags(&d, file, json);
    rc = d.errors ? 1 : 0;
    gd_diags_free(&d);
    gd_config_free(&c);
    return rc;
}

/* ---- build ---- */

int cli_build_default(const char *out, int verbose, struct gd_err *err)
{
    char cache[1024], guest[1024];
    cache_root(cache, sizeof(cache));
    if (gd_guest_bin_dir(guest, sizeof(guest)))
        return gd_err_set(err, -ENOENT,
                          "guest binaries (sandboxd, init) not found next to this gondolin "
                          "binary; build the project (cmake --build build)");
    struct gd_build_opts o = {
        .output = out, .cache_dir = cache, .guest_dir = guest, .verbose = verbose};
    o.run_commands = run_commands;
    o.ctx = &o;
    struct gd_err sub = {{0}};
    int rc = gd_build_default(&o, &sub);
    if (rc)
        return gd_err_set(err, rc, "image build failed: %s", sub.msg);
    return 0;
}

int cmd_build(int argc, char **argv)
{
    const char *out = NULL, *config = NULL, *arch = NULL, *tag = NULL, *verify = NULL,
               *valid = NULL, *keep = getenv("GONDOLIN_BUILD_KEEP_WORK");
    int def = 0, verbose = 0, dry = 0, init = 0, json = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char **slot = !strcmp(a, "--output")     ? &out
                            : !strcmp(a, "--config")   ? &config
                            : !strcmp(a, "--arch")     ? &arch
                            : !strcmp(a, "--tag")      ? &tag
                            : !strcmp(a, "--verify")   ? &verify
                            : !strcmp(a, "--validate") ? &valid
                                                       : NULL;
        if (slot) {
            if (i + 1 >= argc)
                return cli_die(2, "build: %s needs a value", a);
            *slot = argv[++i];
        } else if (!strcmp(a, "--default")) {
            def = 1;
        } else if (!strcmp(a, "--dry-run")) {
            dry = 1;
        } else if (!strcmp(a, "--init-config")) {
            init = 1;
        } else if (!strcmp(a, "--json")) {
            json = 1;
        } else if (!strcmp(a, "-v") || !strcmp(a, "--verbose")) {
            verbose = 1;
        } else if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            build_usage();
            return 0;
        } else {
            return cli_die(2, "build: unknown argument '%s' (see gondolin build --help)", a);
        }
    }
    if (arch && strcmp(arch, "x86_64") && strcmp(arch, "aarch64"))
        return cli_die(2, "build: --arch must be x86_64 or aarch64, not '%s'", arch);
    if (init) {
        char *s = gd_config_default_json(arch ? arch : gd_host_arch());
        if (!s)
            return cli_die(1, "out of memory");
        printf("%s\n", s);
        free(s);
        return 0;
    }
    if (valid)
        return validate(valid, arch, json);
    if (verify) {
        struct gd_err err = {{0}};
        int bad = gd_build_verify(verify, stdout, &err);
        if (bad < 0)
            return cli_die(1, "build --verify: %s", err.msg);
        return bad ? 1 : 0;
    }
    if (!def && !config)
        return cli_die(2, "build: give --config FILE, --default, --init-config, --validate FILE "
                          "or --verify DIR (see --help)");
    if (tag) {
        char n[160], t[160];
        if (gd_store_parse_ref(tag, n, sizeof(n), t, sizeof(t)))
            return cli_die(2, "build: --tag '%s' is not NAME[:TAG] (letters, digits, . _ -)", tag);
    }
    char *text = NULL;
    struct gd_err err = {{0}};
    if (config) {
        size_t tl;
        int r = gd_read_file(config, CONFIG_MAX, &text, &tl);
        if (r)
            return cli_die(2, "build: %s: %s", config, strerror(-r));
    } else {
        text = gd_config_default_json(arch ? arch : gd_host_arch());
    }
    struct gd_build_config c;
    struct gd_diags d = {0};
    gd_config_parse(text, config, arch, &c, &d);
    free(text);
    for (size_t i = 0; i < d.n; i++)
        fprintf(stderr, "%s: %s %s: %s\n", config ? config : "default config", d.v[i].code,
                d.v[i].path, d.v[i].msg);
    int rc = 0;
    if (d.errors) {
        rc = cli_die(2, "build: the config has %d error%s (nothing was built)", d.errors,
                     d.errors == 1 ? "" : "s");
        goto done;
    }
    char cache[1024], guest[1024], outbuf[1200], store[1024];
    cache_root(cache, sizeof(cache));
    if (gd_guest_bin_dir(guest, sizeof(guest))) {
        rc = cli_die(1, "guest binaries (sandboxd, init) not found next to this gondolin binary");
        goto done;
    }
    struct gd_build_opts o = {
        .cache_dir = cache, .guest_dir = guest, .verbose = verbose, .keep_work = keep};
    o.run_commands = run_commands;
    o.ctx = &o;
    if (dry) {
        if (gd_build_plan(&c, &o, stdout, &err))
            rc = cli_die(1, "build --dry-run: %s", err.msg);
        goto done;
    }
    int to_store = 0;
    if (!out && def && !tag) {
        gd_image_default_dir(outbuf, sizeof(outbuf));
        out = outbuf;
    } else if (!out) {
        if (!tag)
            tag = "custom:latest";
        /* straight into the store: built next to objects/, moved in by rename */
        gd_store_dir(store, sizeof(store));
        snprintf(outbuf, sizeof(outbuf), "%s/objects/.build-%d", store, (int)getpid());
        out = outbuf;
        to_store = 1;
    }
    o.output = out;
    if (gd_build(&c, &o, &err)) {
        rc = cli_die(1, "build failed: %s", err.msg);
        goto done;
    }
    if (verbose)
        fprintf(stderr,
                "gondolin: build: unpack %.2f s, initramfs %.2f s, ext4 %.2f s, commands %.2f s\n",
                o.t_unpack, o.t_initramfs, o.t_ext4, o.t_commands);
    if (tag) {
        char id[64];
        int r2 =
            to_store ? gd_store_adopt(out, tag, id, &err) : gd_store_import(out, tag, id, &err);
        if (r2) {
            rc = cli_die(1, "build: cannot add the image to the store: %s", err.msg);
            goto done;
        }
        printf("%s %s\n", tag, id);
        if (to_store) {
            char lk[1300];
            snprintf(lk, sizeof(lk), "%s.lock", out);
            unlink(lk);
        }
    } else {
        printf("%s %s\n", out, o.build_id);
    }
done:
    gd_diags_free(&d);
    gd_config_free(&c);
    return rc;
}
