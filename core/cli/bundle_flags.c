/* bundle_flags.c - signed bundles on the running side: the flags, the trust roots, the
 * drop-in directory, rollback state, and turning a verified bundle into the policy file
 * and plugins the engine loads (docs/bundles.md). */
#define _GNU_SOURCE
#include "cli.h"

#include "base/fs.h"
#include "bundle/bundle.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int push(char ***v, size_t *n, char *s)
{
    char **q = realloc(*v, (*n + 2) * sizeof(*q));
    if (!q)
        return -1;
    *v = q;
    q[(*n)++] = s;
    q[*n] = NULL;
    return 0;
}

static size_t count(const void *v)
{
    size_t n = 0;
    for (const char *const *p = v; p && *p; p++)
        n++;
    return n;
}

int cli_bundle_flag(struct cli_policy *p, int argc, char **argv, int *i)
{
    const char *a = argv[*i];
    if (!strcmp(a, "--allow-downgrade")) {
        p->allow_downgrade = 1;
        return 1;
    }
    static const char *const own[] = {"--bundle", "--trust", "--threshold", "--bundle-interval"};
    for (int k = 0; k < 4; k++) {
        size_t l = strlen(own[k]);
        if (strncmp(a, own[k], l) || (a[l] && a[l] != '='))
            continue;
        const char *v = a[l] == '=' ? a + l + 1 : NULL;
        if (!v && *i + 1 >= argc) {
            cli_die(2, "%s needs a value", own[k]);
            return -1;
        }
        if (!v)
            v = argv[++*i];
        if (k == 0) {
            if (p->bundle || p->policy) {
                cli_die(2, "--bundle cannot be combined with another --bundle or --policy");
                return -1;
            }
            p->bundle = v;
        } else if (k == 1) {
            size_t n = count(p->trust);
            const char **q = realloc(p->trust, (n + 2) * sizeof(*q));
            if (!q)
                return -1;
            q[n] = v;
            q[n + 1] = NULL;
            p->trust = q;
        } else if (k == 3) {
            char *end;
            double sec = strtod(v, &end);
            if (*end || !*v || sec < 0.2 || sec > 86400) {
                cli_die(2, "--bundle-interval must be seconds from 0.2 to 86400, not '%s'", v);
                return -1;
            }
            p->bundle_interval_ms = (unsigned)(sec * 1000);
        } else {
            char *end;
            unsigned long t = strtoul(v, &end, 10);
            if (*end || !*v || t < 1 || t > GD_BUNDLE_MAX_SIGS) {
                cli_die(2, "--threshold must be a number from 1 to %d, not '%s'",
                        GD_BUNDLE_MAX_SIGS, v);
                return -1;
            }
            p->threshold = (unsigned)t;
        }
        return 1;
    }
    return 0;
}

static int ends_with(const char *s, const char *suf)
{
    size_t l = strlen(s), k = strlen(suf);
    return l > k && !strcmp(s + l - k, suf);
}

int cli_policy_is_bundle(const struct cli_policy *p)
{
    return p->bundle || (p->policy && ends_with(p->policy, ".gdb"));
}

int cli_bundle_trust(const char *const *dirs, struct gd_bundle_trust *t)
{
    char user[4200] = "";
    const char *xdg = getenv("XDG_CONFIG_HOME"), *home = getenv("HOME");
    if (xdg && *xdg)
        snprintf(user, sizeof(user), "%s/gondolin/trust.d", xdg);
    else if (home && *home)
        snprintf(user, sizeof(user), "%s/.config/gondolin/trust.d", home);
    const char *def[] = {"/etc/gondolin/trust.d", user[0] ? user : NULL, NULL};
    struct gd_err err = {{0}};
    for (const char *const *d = dirs ? dirs : def; *d; d++)
        if (gd_bundle_trust_add_dir(t, *d, &err))
            return cli_die(2, "%s", err.msg);
    return 0;
}

void cli_bundle_state_path(char *out, size_t cap)
{
    const char *xdg = getenv("XDG_STATE_HOME"), *home = getenv("HOME");
    if (xdg && *xdg)
        snprintf(out, cap, "%s/gondolin/bundles.json", xdg);
    else
        snprintf(out, cap, "%s/.local/state/gondolin/bundles.json", home ? home : "/");
}

/* The file, or the URL's last path segment, must name the bundle it holds: NAME-REV.gdb
 * with its revision, or NAME.gdb for a name that does not itself end in "-DIGITS" (else
 * "a-1.gdb" would be both bundle "a-1" and revision 1 of bundle "a"). Otherwise whoever
 * controls the file or the server could hand over another validly signed bundle (a
 * team's permissive one for its strict one), and the rollback marks, kept per name,
 * would not notice. */
static int ends_in_revision(const char *s, size_t n)
{
    size_t d = 0;
    while (d < n && s[n - 1 - d] >= '0' && s[n - 1 - d] <= '9')
        d++;
    return d && d < n && s[n - 1 - d] == '-';
}

static int name_bound(const char *path, const char *name, long long revision)
{
    size_t end = strcspn(path, cli_bundle_is_url(path) ? "?#" : "");
    size_t start = end;
    while (start && path[start - 1] != '/')
        start--;
    const char *base = path + start;
    size_t bl = end - start, nl = strlen(name);
    if (bl < 4 || memcmp(base + bl - 4, ".gdb", 4))
        return 0;
    bl -= 4;
    if (bl == nl && !memcmp(base, name, nl))
        return !ends_in_revision(name, nl);
    char want[300];
    int wl = snprintf(want, sizeof(want), "%s-%lld", name, revision);
    return wl > 0 && (size_t)wl == bl && !memcmp(base, want, bl);
}

int cli_bundle_open(struct cli_policy *p, const char *path, gd_bundle **b, struct gd_err *err)
{
    struct gd_bundle_trust t = {0};
    int rc = cli_bundle_trust(p->trust, &t);
    if (rc)
        return gd_err_set(err, -EINVAL, "%s: the trust roots cannot be read", path);
    struct gd_bundle_verify v = {.trust = &t,
                                 .threshold = p->threshold,
                                 .now = (long long)time(NULL),
                                 .version = GD_VERSION};
    if (cli_bundle_is_url(path)) {
        char *buf;
        size_t n;
        if (!(rc = cli_bundle_fetch(path, &buf, &n, p->bundle_etag, err))) {
            if ((rc = gd_bundle_open_mem(buf, n, &v, b, err)))
                gd_err_prefix(err, "%s: ", path);
            free(buf);
        }
    } else {
        rc = gd_bundle_open(path, &v, b, err);
    }
    gd_bundle_trust_free(&t);
    const struct gd_bundle_info *in = rc ? NULL : gd_bundle_info(*b);
    if (in && !name_bound(path, in->name, in->revision)) {
        if (ends_in_revision(in->name, strlen(in->name)))
            rc = gd_err_set(err, -EINVAL,
                            "%s holds bundle %s revision %lld: its file or URL must be named "
                            "%s-%lld.gdb",
                            path, in->name, in->revision, in->name, in->revision);
        else
            rc = gd_err_set(err, -EINVAL,
                            "%s holds bundle %s revision %lld: its file or URL must be named "
                            "%s.gdb or %s-%lld.gdb",
                            path, in->name, in->revision, in->name, in->name, in->revision);
        gd_bundle_free(*b);
        *b = NULL;
    }
    return rc;
}

/* The drop-in bundle: the only *.gdb of the directory, or NULL (none). */
static int dropin(char *out, size_t cap)
{
    const char *dir = getenv("GONDOLIN_POLICIES_DIR");
    if (!dir || !*dir)
        dir = "/etc/gondolin/policies.d";
    char **names;
    size_t n, found = 0;
    int rc = gd_dir_list(dir, &names, &n);
    if (rc == -ENOENT || rc == -ENOTDIR)
        return 0;
    if (rc)
        return cli_die(2, "cannot list %s: %s", dir, strerror(-rc));
    for (size_t i = 0; i < n; i++)
        if (ends_with(names[i], ".gdb") && names[i][0] != '.') {
            if (found++)
                break;
            snprintf(out, cap, "%s/%s", dir, names[i]);
        }
    gd_dir_list_free(names, n);
    if (found > 1)
        return cli_die(2, "%s holds more than one bundle; an administrator must keep one", dir);
    return 0;
}

/* extracted directories of this process, removed when it exits */
static char *to_remove[4];
static pid_t remover;

static void remove_dirs(void)
{
    for (int i = 0; i < 4 && getpid() == remover; i++)
        if (to_remove[i]) {
            gd_rm_rf(to_remove[i]);
            free(to_remove[i]);
            to_remove[i] = NULL;
        }
}

static void remove_at_exit(const char *dir)
{
    if (!remover) {
        remover = getpid();
        atexit(remove_dirs);
    }
    for (int i = 0; i < 4; i++)
        if (!to_remove[i]) {
            to_remove[i] = strdup(dir);
            return;
        }
}

void cli_bundle_signers(const struct gd_bundle_info *in, char *out, size_t cap)
{
    out[0] = 0;
    for (size_t i = 0; i < in->nsigners; i++) {
        size_t l = strlen(out);
        if (in->signers[i].trusted && l + 18 < cap)
            snprintf(out + l, cap - l, "%s%.16s", l ? "," : "", in->signers[i].key_id);
    }
}

/* the bundle's entry, host-arch plugins and test files become paths in p */
static int point_at(struct cli_policy *p, gd_bundle *b)
{
    const struct gd_bundle_info *in = gd_bundle_info(b);
    size_t no = count(p->bundle_owned), nt = 0, np = count(p->plugins);
    char *s;
    if (asprintf(&s, "%s/%s", p->bundle_dir, in->entry) < 0 || push(&p->bundle_owned, &no, s))
        return -1;
    p->policy = s;
    free(p->bundle_entry);
    p->bundle_entry = strdup(in->entry);
    for (size_t i = 0; i < in->nfiles; i++) {
        const struct gd_bundle_file *f = &in->files[i];
        if (!f->test && strcmp(f->arch, gd_host_arch()))
            continue;
        if (asprintf(&s, "%s/%s", p->bundle_dir, f->path) < 0 || push(&p->bundle_owned, &no, s))
            return -1;
        if (f->test) {
            push(&p->bundle_tests, &nt, strdup(s));
            continue;
        }
        size_t nn = count(p->bundle_plugin_names);
        push(&p->bundle_plugin_names, &nn, strdup(f->path));
        const char **q = realloc(p->plugins, (np + 2) * sizeof(*q));
        if (!q)
            return -1;
        q[np++] = s;
        q[np] = NULL;
        p->plugins = q;
    }
    snprintf(p->egress.bundle_name, sizeof(p->egress.bundle_name), "%s", in->name);
    p->egress.bundle_revision = in->revision;
    cli_bundle_signers(in, p->egress.bundle_signers, sizeof(p->egress.bundle_signers));
    return 0;
}

int cli_policy_resolve(struct cli_policy *p, int run)
{
    if (p->resolved)
        return 0;
    p->resolved = 1;
    char path[4200] = "";
    if (p->bundle)
        snprintf(path, sizeof(path), "%s", p->bundle);
    else if (p->policy && ends_with(p->policy, ".gdb"))
        snprintf(path, sizeof(path), "%s", p->bundle = p->policy);
    else if (run && !p->policy) {
        int rc = dropin(path, sizeof(path));
        if (rc)
            return rc;
    }
    if (!path[0])
        return 0;
    struct gd_err err = {{0}};
    gd_bundle *b = NULL;
    int rc = cli_bundle_open(p, path, &b, &err);
    if (rc)
        return cli_die(2, "refusing bundle %s", err.msg);
    char st[4200], base[1024];
    cli_bundle_state_path(st, sizeof(st));
    if (run && (rc = gd_bundle_state_check(st, b, p->allow_downgrade, &err))) {
        gd_bundle_free(b);
        return cli_die(2, "refusing bundle %s: %s", path, err.msg);
    }
    if (gd_session_dir(base, sizeof(base)) ||
        gd_bundle_extract(b, gd_host_arch(), base, p->bundle_dir, sizeof(p->bundle_dir), &err)) {
        gd_bundle_free(b);
        return cli_die(125, "bundle %s: %s", path, err.msg[0] ? err.msg : "no sessions directory");
    }
    if (!p->keep_extracted)
        remove_at_exit(p->bundle_dir);
    else if (p->bundle_interval_ms && p->keep_extracted == 2) /* forks share the files */
        fprintf(stderr,
                "gondolin: --bundle-interval: forks do not poll for updates; revision %lld "
                "stays until they restart\n",
                gd_bundle_info(b)->revision);
    rc = point_at(p, b);
    gd_bundle_free(b);
    return rc ? cli_die(125, "out of memory") : 0;
}

int cli_bundle_run_tests(struct cli_policy *p)
{
    int fail = 0;
    for (char **t = p->bundle_tests; t && *t; t++)
        fail |= cli_policy_test(p, *t) != 0;
    if (!p->bundle_tests)
        printf("the bundle has no test case files\n");
    return fail;
}

void cli_bundle_free(struct cli_policy *p)
{
    for (char **s = p->bundle_owned; s && *s; s++)
        free(*s);
    for (char **s = p->bundle_tests; s && *s; s++)
        free(*s);
    for (char **s = p->bundle_plugin_names; s && *s; s++)
        free(*s);
    free(p->bundle_plugin_names);
    free(p->bundle_entry);
    p->bundle_plugin_names = NULL;
    p->bundle_entry = NULL;
    free(p->bundle_owned);
    free(p->bundle_tests);
    free(p->trust);
    p->bundle_owned = p->bundle_tests = NULL;
    p->trust = NULL;
}
