/* cmd_bundle.c - `gondolin bundle keygen | build | sign | verify | inspect`: authoring
 * signed policy bundles (docs/bundles.md). */
#define _GNU_SOURCE
#include "cli.h"

#include "base/fs.h"
#include "bundle/bundle.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

static void usage(void)
{
    printf("usage: gondolin bundle keygen NAME\n"
           "       gondolin bundle build DIR -o FILE --revision N [--name NAME] [--entry F.lua]\n"
           "                             [--expires UNIX|+DAYSd] [--min-gondolin V]\n"
           "       gondolin bundle sign FILE --key KEY [--key KEY]...\n"
           "       gondolin bundle verify FILE [--trust DIR]... [--threshold N]\n"
           "       gondolin bundle inspect FILE [--trust DIR]...\n"
           "       gondolin bundle serve DIR [--port N]\n\n"
           "keygen   write NAME.key (private, 0600) and NAME.pub; print the key id\n"
           "build    pack DIR (every regular file; DIR/bundle.json may name the entry,\n"
           "         tests and plugins by arch) after `policy check` and every test case\n"
           "         pass; the bundle is unsigned until `sign`\n"
           "sign     add a signature (several keys may sign one bundle)\n"
           "verify   check signatures against the trust roots (/etc/gondolin/trust.d,\n"
           "         ~/.config/gondolin/trust.d, or --trust), expiry and min_gondolin\n"
           "inspect  manifest, signers, expiry and the bundle's test results\n"
           "serve    serve DIR's bundles on 127.0.0.1 with ETags, for --bundle URL live\n"
           "         updates (run --bundle http://127.0.0.1:PORT/NAME.gdb --bundle-interval S)\n");
}

static int cmd_keygen(int argc, char **argv)
{
    if (argc != 2)
        return cli_die(2, "usage: gondolin bundle keygen NAME");
    char priv[4200], pub[4200], id[65];
    snprintf(priv, sizeof(priv), "%s.key", argv[1]);
    snprintf(pub, sizeof(pub), "%s.pub", argv[1]);
    struct gd_err err = {{0}};
    if (gd_bundle_keygen(priv, pub, id, &err))
        return cli_die(1, "bundle keygen: %s", err.msg);
    printf("%s (private, keep it secret)\n%s (public: install in trust.d)\nkey id %s\n", priv, pub,
           id);
    return 0;
}

/* ---- build ---- */

struct src {
    struct gd_bundle_src_file *f;
    size_t n;
    char **bufs; /* file contents and names, freed at the end */
    size_t nb;
};

static int keep(struct src *s, char *p)
{
    char **q = realloc(s->bufs, (s->nb + 1) * sizeof(*q));
    if (!q)
        return -1;
    s->bufs = q;
    q[s->nb++] = p;
    return 0;
}

/* every regular file under root/rel, sorted; anything else is refused */
static int collect(struct src *s, const char *root, const char *rel)
{
    char dir[4400];
    snprintf(dir, sizeof(dir), "%s%s%s", root, rel[0] ? "/" : "", rel);
    char **names;
    size_t n;
    int rc = gd_dir_list(dir, &names, &n);
    if (rc)
        return cli_die(2, "bundle build: cannot list %s: %s", dir, strerror(-rc));
    for (size_t i = 0; i < n && !rc; i++) {
        char r[4400], full[8900];
        snprintf(r, sizeof(r), "%s%s%s", rel, rel[0] ? "/" : "", names[i]);
        snprintf(full, sizeof(full), "%s/%s", root, r);
        struct stat st;
        if (!rel[0] && !strcmp(names[i], "bundle.json"))
            continue;
        if (lstat(full, &st))
            rc = cli_die(2, "bundle build: %s: %s", full, strerror(errno));
        else if (S_ISDIR(st.st_mode))
            rc = collect(s, root, r);
        else if (!S_ISREG(st.st_mode))
            rc = cli_die(2,
                         "bundle build: %s is not a regular file (bundles hold no links or "
                         "devices)",
                         full);
        else if (!gd_bundle_path_ok(r))
            rc = cli_die(2, "bundle build: %s is not a plain relative name", r);
        else if (s->n >= GD_BUNDLE_MAX_FILES)
            rc = cli_die(2, "bundle build: more than %d files", GD_BUNDLE_MAX_FILES);
        else {
            char *data, *name = strdup(r);
            size_t len;
            int e = gd_read_file(full, GD_BUNDLE_MAX_SIZE, &data, &len);
            if (e || !name || keep(s, data) || keep(s, name)) {
                free(name);
                rc =
                    cli_die(2, "bundle build: cannot read %s: %s", full, strerror(e ? -e : ENOMEM));
            } else {
                struct gd_bundle_src_file *q = realloc(s->f, (s->n + 1) * sizeof(*q));
                if (!q)
                    rc = cli_die(2, "out of memory");
                else {
                    s->f = q;
                    q[s->n++] =
                        (struct gd_bundle_src_file){.path = name, .data = data, .size = len};
                }
            }
        }
    }
    gd_dir_list_free(names, n);
    return rc;
}

static struct gd_bundle_src_file *src_find(struct src *s, const char *path)
{
    for (size_t i = 0; i < s->n; i++)
        if (!strcmp(s->f[i].path, path))
            return &s->f[i];
    return NULL;
}

/* bundle.json's tests and plugins, or the defaults: *.test.json at the top level are
 * test files, plugins/ARCH/... are plugins */
static int classify(struct src *s, const cJSON *conf)
{
    const cJSON *ts = cJSON_GetObjectItemCaseSensitive(conf, "tests");
    const cJSON *pl = cJSON_GetObjectItemCaseSensitive(conf, "plugins");
    for (const cJSON *x = ts ? ts->child : NULL; x; x = x->next) {
        struct gd_bundle_src_file *f = cJSON_IsString(x) ? src_find(s, x->valuestring) : NULL;
        if (!f)
            return cli_die(2, "bundle build: bundle.json: test file '%s' is not in the directory",
                           cJSON_IsString(x) ? x->valuestring : "?");
        f->test = 1;
    }
    for (const cJSON *a = pl ? pl->child : NULL; a; a = a->next)
        for (const cJSON *x = a->child; x; x = x->next) {
            struct gd_bundle_src_file *f = cJSON_IsString(x) ? src_find(s, x->valuestring) : NULL;
            if (!f)
                return cli_die(2, "bundle build: bundle.json: plugin '%s' is not in the directory",
                               cJSON_IsString(x) ? x->valuestring : "?");
            f->arch = a->string;
        }
    for (size_t i = 0; i < s->n; i++) {
        struct gd_bundle_src_file *f = &s->f[i];
        const char *sl = strchr(f->path, '/');
        if (!ts && !sl && strlen(f->path) > 10 &&
            !strcmp(f->path + strlen(f->path) - 10, ".test.json"))
            f->test = 1;
        if (!pl && !strncmp(f->path, "plugins/", 8) && (sl = strchr(f->path + 8, '/'))) {
            char *arch = strndup(f->path + 8, (size_t)(sl - f->path - 8));
            if (!arch || keep(s, arch))
                return cli_die(2, "out of memory");
            f->arch = arch;
        }
    }
    return 0;
}

/* policy check + every test case against the directory's files, as they will run */
static int run_checks(const char *dir, struct src *s, const char *entry)
{
    struct cli_policy p = {0};
    char ep[4400];
    snprintf(ep, sizeof(ep), "%s/%s", dir, entry);
    p.policy = ep;
    p.stub_secrets = 1;
    p.no_default_dirs = 1;
    char paths[GD_BUNDLE_MAX_FILES][600];
    const char *plugins[GD_BUNDLE_MAX_FILES + 1];
    size_t np = 0;
    for (size_t i = 0; i < s->n; i++)
        if (s->f[i].arch && !strcmp(s->f[i].arch, gd_host_arch())) {
            snprintf(paths[np], sizeof(paths[np]), "%s/%s", dir, s->f[i].path);
            plugins[np] = paths[np];
            np++;
        }
    plugins[np] = NULL;
    p.plugins = np ? plugins : NULL;
    gd_engine *e;
    int rc = cli_policy_engine(&p, 1, &e);
    if (rc) {
        p.plugins = NULL;
        cli_policy_free(&p);
        return cli_die(1, "bundle build: policy check failed; not building");
    }
    gd_engine_free(e);
    int fail = 0, ntests = 0;
    for (size_t i = 0; i < s->n; i++)
        if (s->f[i].test) {
            char tp[4400];
            snprintf(tp, sizeof(tp), "%s/%s", dir, s->f[i].path);
            ntests++;
            if (cli_policy_test(&p, tp)) {
                fail = 1;
                cli_die(1, "bundle build: test cases in %s failed", s->f[i].path);
            }
        }
    p.plugins = NULL;
    cli_policy_free(&p);
    if (fail)
        return cli_die(1, "bundle build: a test case failed; not building");
    if (!ntests)
        fprintf(stderr, "gondolin: bundle build: warning: the bundle has no test case files\n");
    return 0;
}

static int parse_expiry(const char *v, long long now, long long *out)
{
    char *end;
    long long x = strtoll(v + (v[0] == '+'), &end, 10);
    if (end == v + (v[0] == '+') || x < 0)
        return -1;
    if (v[0] == '+' && !strcmp(end, "d"))
        *out = now + x * 86400;
    else if (v[0] != '+' && !*end)
        *out = x;
    else
        return -1;
    return 0;
}

static int bundle_build(int argc, char **argv)
{
    const char *dir = NULL, *out = NULL, *name = NULL, *entry = NULL, *ming = NULL;
    long long rev = -1, now = (long long)time(NULL), expires = now + 365 * 86400LL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        char *end;
        if (a[0] != '-' && !dir)
            dir = a;
        else if (!v)
            return cli_die(2, "bundle build: '%s' needs a value", a);
        else if (!strcmp(a, "-o") || !strcmp(a, "--output"))
            out = argv[++i];
        else if (!strcmp(a, "--name"))
            name = argv[++i];
        else if (!strcmp(a, "--entry"))
            entry = argv[++i];
        else if (!strcmp(a, "--min-gondolin"))
            ming = argv[++i];
        else if (!strcmp(a, "--revision")) {
            rev = strtoll(v, &end, 10);
            if (*end || !*v || rev < 0)
                return cli_die(2, "--revision must be a non-negative integer, not '%s'", v);
            i++;
        } else if (!strcmp(a, "--expires")) {
            if (parse_expiry(v, now, &expires))
                return cli_die(2, "--expires must be unix seconds or +DAYSd, not '%s'", v);
            i++;
        } else
            return cli_die(2, "bundle build: unknown flag '%s'", a);
    }
    if (!dir || !out || rev < 0)
        return cli_die(2, "usage: gondolin bundle build DIR -o FILE --revision N");
    cJSON *conf = NULL;
    char cp[4200], *text;
    size_t tl;
    snprintf(cp, sizeof(cp), "%s/bundle.json", dir);
    if (gd_read_file(cp, 1u << 20, &text, &tl) == 0) {
        conf = cJSON_Parse(text);
        free(text);
        if (!cJSON_IsObject(conf))
            return cli_die(2, "bundle build: %s is not a JSON object", cp);
    }
    char base[256];
    snprintf(base, sizeof(base), "%s",
             strrchr(dir, '/') && strrchr(dir, '/')[1] ? strrchr(dir, '/') + 1 : dir);
    if (!name)
        name = cJSON_GetStringValue(cJSON_GetObjectItem(conf, "name"));
    if (!name)
        name = base;
    if (!ming)
        ming = cJSON_GetStringValue(cJSON_GetObjectItem(conf, "min_gondolin"));
    if (!ming)
        ming = GD_VERSION;
    struct src s = {0};
    int rc = collect(&s, dir, "");
    if (!rc)
        rc = classify(&s, conf);
    char def_entry[300];
    snprintf(def_entry, sizeof(def_entry), "%s.lua", name);
    if (!entry)
        entry = cJSON_GetStringValue(cJSON_GetObjectItem(conf, "entry"));
    if (!entry)
        entry = def_entry;
    const struct gd_bundle_src_file *ef = rc ? NULL : src_find(&s, entry);
    if (!rc && (!ef || ef->arch || ef->test))
        rc = cli_die(2, "bundle build: entry %s is not a policy file in %s (--entry)", entry, dir);
    if (!rc)
        rc = run_checks(dir, &s, entry);
    struct gd_bundle_src bs = {.name = name,
                               .revision = rev,
                               .created = now,
                               .expires = expires,
                               .min_gondolin = ming,
                               .entry = entry,
                               .files = s.f,
                               .nfiles = s.n};
    struct gd_err err = {{0}};
    if (!rc && gd_bundle_write(&bs, out, &err))
        rc = cli_die(1, "bundle build: %s", err.msg);
    if (!rc)
        printf("%s: %s revision %lld, %zu files (unsigned: run gondolin bundle sign)\n", out, name,
               rev, s.n);
    for (size_t i = 0; i < s.nb; i++)
        free(s.bufs[i]);
    free(s.bufs);
    free(s.f);
    cJSON_Delete(conf);
    return rc;
}

static int cmd_sign(int argc, char **argv)
{
    const char *file = NULL;
    int nkeys = 0;
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--key") && i + 1 < argc)
            i++, nkeys++;
        else if (argv[i][0] != '-' && !file)
            file = argv[i];
        else
            return cli_die(2, "bundle sign: unexpected argument '%s'", argv[i]);
    if (!file || !nkeys)
        return cli_die(2, "usage: gondolin bundle sign FILE --key KEY [--key KEY]...");
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--key")) {
            char id[65];
            struct gd_err err = {{0}};
            if (gd_bundle_sign(file, argv[++i], id, &err))
                return cli_die(1, "bundle sign: %s", err.msg);
            printf("%s: signed by key %s\n", file, id);
        }
    return 0;
}

static void print_time(const char *label, long long t)
{
    char ts[40];
    time_t tt = (time_t)t;
    struct tm tm;
    strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%SZ", gmtime_r(&tt, &tm));
    printf("%-13s %s\n", label, ts);
}

/* verify and inspect: FILE and --trust/--threshold */
static int open_cli(int argc, char **argv, int inspect, struct cli_policy *p, gd_bundle **b)
{
    const char *file = NULL;
    for (int i = 1; i < argc; i++) {
        int k = cli_bundle_flag(p, argc, argv, &i);
        if (k < 0)
            return 2;
        if (k)
            continue;
        if (argv[i][0] == '-' || file)
            return cli_die(2, "bundle: unexpected argument '%s'", argv[i]);
        file = argv[i];
    }
    if (!file)
        return cli_die(2, "bundle: which bundle file?");
    struct gd_err err = {{0}};
    int rc = cli_bundle_open(p, file, b, &err);
    if (rc && inspect) { /* show it anyway, marked */
        struct gd_bundle_verify any = {0};
        struct gd_err sub = {{0}};
        if (gd_bundle_open(file, &any, b, &sub) == 0) {
            printf("NOT VALID     %s\n", err.msg);
            rc = 0;
        }
    }
    if (rc)
        return cli_die(1, "%s", err.msg);
    p->bundle = file;
    return 0;
}

static int cmd_verify(int argc, char **argv)
{
    struct cli_policy p = {0};
    gd_bundle *b;
    int rc = open_cli(argc, argv, 0, &p, &b);
    cli_policy_free(&p);
    if (rc)
        return rc;
    const struct gd_bundle_info *in = gd_bundle_info(b);
    printf("ok: %s revision %lld, %zu trusted signature%s:", in->name, in->revision, in->ntrusted,
           in->ntrusted == 1 ? "" : "s");
    for (size_t i = 0; i < in->nsigners; i++)
        if (in->signers[i].trusted)
            printf(" %.16s", in->signers[i].key_id);
    printf("\n");
    gd_bundle_free(b);
    return 0;
}

static int cmd_inspect(int argc, char **argv)
{
    struct cli_policy p = {0};
    gd_bundle *b;
    int rc = open_cli(argc, argv, 1, &p, &b);
    if (rc) {
        cli_policy_free(&p);
        return rc;
    }
    const struct gd_bundle_info *in = gd_bundle_info(b);
    printf("%-13s %s\n%-13s %lld\n", "name", in->name, "revision", in->revision);
    print_time("created", in->created);
    print_time("expires", in->expires);
    printf("%-13s %s\n%-13s %s\n", "min_gondolin", in->min_gondolin, "entry", in->entry);
    printf("files:\n");
    for (size_t i = 0; i < in->nfiles; i++) {
        const struct gd_bundle_file *f = &in->files[i];
        printf("  %-40s %8llu  %.16s  %s%s\n", f->path, (unsigned long long)f->size, f->sha256,
               f->arch[0] ? "plugin "
               : f->test  ? "tests"
                          : "",
               f->arch);
    }
    printf("signers:\n");
    for (size_t i = 0; i < in->nsigners; i++)
        printf("  %s  %s\n", in->signers[i].key_id,
               !in->signers[i].valid    ? "INVALID SIGNATURE"
               : in->signers[i].trusted ? "trusted"
                                        : "not trusted here");
    if (!in->nsigners)
        printf("  (none: unsigned)\n");
    gd_bundle_free(b);
    /* the bundle's test results, run as `policy test` would (trust checked there) */
    printf("tests:\n");
    fflush(stdout);
    p.stub_secrets = 1;
    p.no_default_dirs = 1;
    rc = cli_policy_resolve(&p, 0);
    if (!rc)
        rc = cli_bundle_run_tests(&p);
    else
        printf("  not run: the bundle is not valid here\n");
    cli_policy_free(&p);
    return rc;
}

int cmd_bundle(int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        usage();
        return argc < 2 ? 2 : 0;
    }
    const char *sub = argv[1];
    if (!strcmp(sub, "keygen"))
        return cmd_keygen(argc - 1, argv + 1);
    if (!strcmp(sub, "build"))
        return bundle_build(argc - 1, argv + 1);
    if (!strcmp(sub, "sign"))
        return cmd_sign(argc - 1, argv + 1);
    if (!strcmp(sub, "verify"))
        return cmd_verify(argc - 1, argv + 1);
    if (!strcmp(sub, "inspect"))
        return cmd_inspect(argc - 1, argv + 1);
    if (!strcmp(sub, "serve"))
        return cli_bundle_serve(argc - 1, argv + 1);
    return cli_die(2, "bundle: unknown command '%s' (keygen, build, sign, verify, inspect, serve)",
                   sub);
}
