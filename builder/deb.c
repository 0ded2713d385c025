/* deb.c - Debian package closure, download and unpacking, all without root. */
#define _GNU_SOURCE
#include "builder.h"

#include <archive.h>
#include <archive_entry.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static int name_ok(const char *s)
{
    if (!*s)
        return 0;
    for (; *s; s++)
        if (!isalnum((unsigned char)*s) && !strchr(".+-:~_=", *s))
            return 0;
    return 1;
}

int gd_pkg_cmp(const void *a, const void *b)
{
    return strcmp(((const struct gd_pkg *)a)->name, ((const struct gd_pkg *)b)->name);
}

int gd_deb_resolve(const char *const *names, struct gd_pkg **out, size_t *n, struct gd_err *err)
{
    char status[] = "/tmp/gondolin-status-XXXXXX";
    int sfd = mkstemp(status);
    if (sfd < 0)
        return gd_err_set(err, -errno, "mkstemp: %s", strerror(errno));
    close(sfd);

    size_t cap = 8192;
    char *cmd = malloc(cap);
    if (!cmd) {
        unlink(status);
        return gd_err_set(err, -ENOMEM, "out of memory");
    }
    int len = snprintf(cmd, cap,
                       "apt-get -s -q -o Debug::NoLocking=1 -o Dir::State::status=%s "
                       "-o APT::Install-Recommends=0 -o APT::Install-Suggests=0 install",
                       status);
    for (size_t i = 0; names[i]; i++) {
        if (!name_ok(names[i])) {
            free(cmd);
            unlink(status);
            return gd_err_set(err, -EINVAL, "invalid package name '%s'", names[i]);
        }
        len += snprintf(cmd + len, cap - (size_t)len, " %s", names[i]);
        if ((size_t)len >= cap - 1) {
            free(cmd);
            unlink(status);
            return gd_err_set(err, -E2BIG, "package list too long");
        }
    }
    snprintf(cmd + len, cap - (size_t)len, " 2>&1");
    FILE *p = popen(cmd, "r");
    free(cmd);
    if (!p) {
        unlink(status);
        return gd_err_set(err, -errno, "cannot run apt-get: %s", strerror(errno));
    }
    struct gd_pkg *v = NULL;
    size_t cnt = 0, vcap = 0;
    char line[1024], last_err[512] = "";
    while (fgets(line, sizeof(line), p)) {
        if (!strncmp(line, "E: ", 3))
            snprintf(last_err, sizeof(last_err), "%.*s", (int)strcspn(line + 3, "\n"), line + 3);
        if (strncmp(line, "Inst ", 5))
            continue;
        /* Inst NAME (VERSION SOURCES [ARCH]) */
        struct gd_pkg pk = {0};
        char *s = line + 5, *sp = strchr(s, ' ');
        if (!sp || sp[1] != '(')
            continue;
        snprintf(pk.name, sizeof(pk.name), "%.*s", (int)(sp - s), s);
        char *ver = sp + 2, *vend = strchr(ver, ' ');
        if (!vend)
            continue;
        snprintf(pk.version, sizeof(pk.version), "%.*s", (int)(vend - ver), ver);
        /* the arch is the last [..] inside the parenthesis: "(VER ORIGIN [amd64]) []" */
        char *rp = strchr(vend, ')');
        if (rp)
            *rp = 0;
        char *lb = strrchr(vend, '['), *rb = lb ? strchr(lb, ']') : NULL;
        snprintf(pk.arch, sizeof(pk.arch), "%.*s", lb && rb ? (int)(rb - lb - 1) : 0,
                 lb ? lb + 1 : "");
        if (!name_ok(pk.name) || !name_ok(pk.version))
            continue;
        if (cnt == vcap) {
            vcap = vcap ? vcap * 2 : 64;
            struct gd_pkg *nv = realloc(v, vcap * sizeof(*v));
            if (!nv) {
                free(v);
                pclose(p);
                unlink(status);
                return gd_err_set(err, -ENOMEM, "out of memory");
            }
            v = nv;
        }
        v[cnt++] = pk;
    }
    int rc = pclose(p);
    unlink(status);
    if (rc != 0 || cnt == 0) {
        free(v);
        return gd_err_set(err, -ENOENT, "apt cannot resolve the package set: %s",
                          last_err[0] ? last_err
                                      : "no packages (run `apt-get update` as root first)");
    }
    qsort(v, cnt, sizeof(*v), gd_pkg_cmp);
    *out = v;
    *n = cnt;
    return 0;
}

static void deb_filename(const struct gd_pkg *p, char *buf, size_t cap)
{
    /* apt-get download names files NAME_VERSION_ARCH.deb with ':' as %3a */
    char ver[256];
    size_t o = 0;
    for (const char *s = p->version; *s && o + 4 < sizeof(ver); s++) {
        if (*s == ':') {
            memcpy(ver + o, "%3a", 3);
            o += 3;
        } else {
            ver[o++] = *s;
        }
    }
    ver[o] = 0;
    snprintf(buf, cap, "%s_%s_%s.deb", p->name, ver, p->arch);
}

int gd_deb_fetch(const struct gd_pkg *p, size_t n, const char *cache_dir, char ***paths,
                 struct gd_err *err)
{
    if (strchr(cache_dir, '\''))
        return gd_err_set(err, -EINVAL, "cache directory %s contains a quote", cache_dir);
    int rc = gd_mkdir_p(cache_dir, 0755);
    if (rc)
        return gd_err_set(err, rc, "cannot create %s: %s", cache_dir, strerror(-rc));
    char **v = calloc(n + 1, sizeof(char *));
    size_t cap = 64 + n * 300;
    char *cmd = malloc(cap);
    if (!v || !cmd) {
        free(v);
        free(cmd);
        return gd_err_set(err, -ENOMEM, "out of memory");
    }
    int len =
        snprintf(cmd, cap, "cd '%s' && apt-get download -q -o APT::Sandbox::User=root", cache_dir);
    size_t missing = 0;
    for (size_t i = 0; i < n; i++) {
        char fn[512];
        deb_filename(&p[i], fn, sizeof(fn));
        if (asprintf(&v[i], "%s/%s", cache_dir, fn) < 0) {
            v[i] = NULL;
            rc = gd_err_set(err, -ENOMEM, "out of memory");
            goto fail;
        }
        if (access(v[i], R_OK) == 0)
            continue;
        len += snprintf(cmd + len, cap - (size_t)len, " %s=%s", p[i].name, p[i].version);
        missing++;
    }
    if (missing) {
        /* the log lives in the user's cache, never at a fixed /tmp path (a planted
         * symlink there would make a root build overwrite its target) */
        snprintf(cmd + len, cap - (size_t)len, " >/dev/null 2>'%s/apt-download.log'", cache_dir);
        if (system(cmd) != 0) {
            rc = gd_err_set(err, -EIO, "apt-get download failed (see %s/apt-download.log)",
                            cache_dir);
            goto fail;
        }
        for (size_t i = 0; i < n; i++)
            if (access(v[i], R_OK) != 0) {
                rc = gd_err_set(err, -ENOENT, "downloaded package missing: %s", v[i]);
                goto fail;
            }
    }
    free(cmd);
    *paths = v;
    return 0;
fail:
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
    free(cmd);
    return rc;
}

int gd_deb_unpack(const char *deb, struct gd_tree *t, struct gd_err *err)
{
    struct archive *a = archive_read_new();
    archive_read_support_format_ar(a);
    if (archive_read_open_filename(a, deb, 1 << 16) != ARCHIVE_OK) {
        int rc = gd_err_set(err, -EIO, "%s: %s", deb, archive_error_string(a));
        archive_read_free(a);
        return rc;
    }
    struct archive_entry *e;
    int rc = gd_err_set(err, -ENOENT, "%s: no data.tar member", deb);
    while (archive_read_next_header(a, &e) == ARCHIVE_OK) {
        if (strncmp(archive_entry_pathname(e), "data.tar", 8))
            continue;
        la_int64_t size = archive_entry_size(e);
        if (size <= 0 || size > (1LL << 32)) {
            rc = gd_err_set(err, -EINVAL, "%s: bad data.tar size", deb);
            break;
        }
        uint8_t *buf = malloc((size_t)size);
        if (!buf) {
            rc = gd_err_set(err, -ENOMEM, "out of memory");
            break;
        }
        la_ssize_t got = archive_read_data(a, buf, (size_t)size);
        if (got != size) {
            free(buf);
            rc = gd_err_set(err, -EIO, "%s: short read of data.tar", deb);
            break;
        }
        const char *base = strrchr(deb, '/');
        struct gd_extract_opts o = {.label = base ? base + 1 : deb, .merged_usr = 1};
        rc = gd_tree_extract(t, buf, (size_t)size, NULL, &o, err);
        free(buf);
        break;
    }
    archive_read_free(a);
    return rc;
}
