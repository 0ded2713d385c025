/* store.c - the local image store (see store.h). */
#define _GNU_SOURCE
#include "image/store.h"

#include "base/fs.h"
#include "base/text.h"
#include "image/image.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

void gd_store_dir(char *buf, size_t cap)
{
    const char *e = getenv("GONDOLIN_IMAGE_STORE");
    if (e && *e) {
        snprintf(buf, cap, "%s", e);
        return;
    }
    char c[1024];
    gd_cache_dir(c, sizeof(c));
    snprintf(buf, cap, "%s/images", c);
}

void gd_store_default_dir(const char *arch, char *buf, size_t cap)
{
    char store[1024];
    gd_store_dir(store, sizeof(store));
    snprintf(buf, cap, "%s/default-%s", store, arch);
}

static int name_ok(const char *s, size_t max)
{
    return gd_name_ok(s, max, ".-");
}

int gd_store_parse_ref(const char *ref, char *name, size_t ncap, char *tag, size_t tcap)
{
    const char *c = strchr(ref, ':');
    snprintf(name, ncap, "%.*s", (int)(c ? (size_t)(c - ref) : strlen(ref)), ref);
    snprintf(tag, tcap, "%s", c ? c + 1 : "latest");
    return name_ok(name, 128) && name_ok(tag, 128) ? 0 : -EINVAL;
}

static int lock_store(const char *store, struct gd_err *err)
{
    char p[1200];
    int rc = gd_mkdir_p(store, 0755);
    if (rc)
        return gd_err_set(err, rc, "cannot create %s: %s", store, strerror(-rc));
    snprintf(p, sizeof(p), "%s/.lock", store);
    int fd = gd_lock_open(p);
    return fd < 0 ? gd_err_set(err, fd, "cannot lock %s: %s", p, strerror(-fd)) : fd;
}

static int is_image_dir(const char *dir)
{
    char p[1200];
    snprintf(p, sizeof(p), "%s/manifest.json", dir);
    return access(p, R_OK) == 0;
}

int gd_store_resolve(const char *sel, const char *arch, char *out, size_t cap, struct gd_err *err)
{
    char store[1024], p[1400], name[160], tag[160];
    struct stat st;
    if (!sel || !*sel)
        return gd_err_set(err, -EINVAL, "empty image selector");
    if (strchr(sel, '/') || !strcmp(sel, ".") || (stat(sel, &st) == 0 && S_ISDIR(st.st_mode))) {
        if (!is_image_dir(sel))
            return gd_err_set(err, -ENOENT, "image directory %s has no manifest.json", sel);
        snprintf(out, cap, "%s", sel);
        return 0;
    }
    gd_store_dir(store, sizeof(store));
    if (gd_store_parse_ref(sel, name, sizeof(name), tag, sizeof(tag)) == 0) {
        snprintf(p, sizeof(p), "%s/refs/%s/%s/%s", store, name, tag, arch);
        if (is_image_dir(p)) {
            char *rp = realpath(p, NULL);
            snprintf(out, cap, "%s", rp ? rp : p);
            free(rp);
            return 0;
        }
        if (!strcmp(name, "default") && !strcmp(tag, "latest")) {
            gd_store_default_dir(arch, p, sizeof(p));
            snprintf(out, cap, "%s", p);
            return is_image_dir(p) ? 0 : gd_err_set(err, -ENOENT, "no default image yet");
        }
    }
    /* a buildId or a unique prefix of one */
    size_t sl = strlen(sel);
    if (sl >= 8 && sl <= 36) {
        char **v;
        size_t n;
        snprintf(p, sizeof(p), "%s/objects", store);
        if (gd_dir_list(p, &v, &n) == 0) {
            int found = 0;
            for (size_t i = 0; i < n; i++)
                if (!strncmp(v[i], sel, sl) && v[i][0] != '.') {
                    found++;
                    snprintf(out, cap, "%s/objects/%s", store, v[i]);
                }
            gd_dir_list_free(v, n);
            if (found == 1)
                return 0;
            if (found > 1)
                return gd_err_set(err, -EINVAL, "image '%s' is ambiguous: %d buildIds start so",
                                  sel, found);
        }
    }
    return gd_err_set(err, -ENOENT,
                      "image '%s' not found: not a directory, a ref for %s (gondolin image ls) "
                      "or a buildId",
                      sel, arch);
}

static int read_manifest(const char *dir, char *id, size_t idcap, char *arch, size_t acap)
{
    char p[1400];
    snprintf(p, sizeof(p), "%s/manifest.json", dir);
    char *buf;
    size_t n;
    int rc = gd_read_file(p, 1 << 20, &buf, &n);
    if (rc)
        return rc;
    cJSON *m = cJSON_Parse(buf);
    free(buf);
    const char *b = cJSON_GetStringValue(cJSON_GetObjectItem(m, "buildId"));
    const char *a = cJSON_GetStringValue(cJSON_GetObjectItem(m, "arch"));
    rc = b && a && name_ok(b, 64) ? 0 : -EINVAL;
    if (!rc) {
        snprintf(id, idcap, "%s", b);
        snprintf(arch, acap, "%s", a);
    }
    cJSON_Delete(m);
    return rc;
}

/* refs/<name>/<tag>/<arch> -> ../../../objects/<id>, replaced atomically. */
static int set_ref(const char *store, const char *ref, const char *arch, const char *id,
                   struct gd_err *err)
{
    char name[160], tag[160], d[1400], p[1600], tmp[1700], target[256];
    if (gd_store_parse_ref(ref, name, sizeof(name), tag, sizeof(tag)))
        return gd_err_set(err, -EINVAL,
                          "'%s' is not a ref: name[:tag] of letters, digits, '.', '_', '-'", ref);
    snprintf(d, sizeof(d), "%s/refs/%s/%s", store, name, tag);
    int rc = gd_mkdir_p(d, 0755);
    if (rc)
        return gd_err_set(err, rc, "cannot create %s", d);
    snprintf(p, sizeof(p), "%s/%s", d, arch);
    snprintf(tmp, sizeof(tmp), "%s/.%s.%d", d, arch, (int)getpid());
    snprintf(target, sizeof(target), "../../../objects/%s", id);
    unlink(tmp);
    if (symlink(target, tmp) || rename(tmp, p)) {
        rc = gd_err_set(err, -errno, "cannot set ref %s: %s", ref, strerror(errno));
        unlink(tmp);
    }
    return rc;
}

static int copy_image(const char *src, const char *dst, struct gd_err *err)
{
    char **v;
    size_t n;
    int rc = gd_dir_list(src, &v, &n);
    if (rc)
        return gd_err_set(err, rc, "cannot read %s: %s", src, strerror(-rc));
    for (size_t i = 0; i < n && !rc; i++) {
        char a[1400], b[1400];
        struct stat st;
        snprintf(a, sizeof(a), "%s/%s", src, v[i]);
        snprintf(b, sizeof(b), "%s/%s", dst, v[i]);
        if (lstat(a, &st) || !S_ISREG(st.st_mode) || v[i][0] == '.')
            continue; /* assets are plain files; stamps and work dirs stay behind */
        if (link(a, b) == 0)
            continue;
        if ((rc = gd_copy_file(a, b, 0644)))
            rc = gd_err_set(err, rc, "cannot copy %s: %s", a, strerror(-rc));
    }
    gd_dir_list_free(v, n);
    return rc;
}

static int put_object(const char *dir, const char *ref, int move, char idout[64],
                      struct gd_err *err)
{
    struct gd_image img;
    int rc = gd_image_load(dir, 1, &img, err);
    if (rc)
        return rc;
    char id[80], arch[32], store[1024], obj[1400], tmp[1400];
    if ((rc = read_manifest(dir, id, sizeof(id), arch, sizeof(arch))))
        return gd_err_set(err, rc, "%s/manifest.json: no buildId or arch", dir);
    gd_store_dir(store, sizeof(store));
    int lk = lock_store(store, err);
    if (lk < 0)
        return lk;
    snprintf(obj, sizeof(obj), "%s/objects/%s", store, id);
    snprintf(tmp, sizeof(tmp), "%s/objects/.tmp-%d-%s", store, (int)getpid(), id);
    gd_mkdir_p(tmp, 0755);
    if (is_image_dir(obj)) {
        rc = 0; /* the same buildId is the same bytes: nothing to copy */
    } else if (move) {
        gd_rm_rf(tmp);
        rc = rename(dir, tmp) ? gd_err_set(err, -errno, "cannot move %s into the store: %s", dir,
                                           strerror(errno))
                              : 0;
    } else {
        rc = copy_image(dir, tmp, err);
    }
    if (!rc && !is_image_dir(obj) && rename(tmp, obj))
        rc = gd_err_set(err, -errno, "cannot install %s: %s", obj, strerror(errno));
    gd_rm_rf(tmp);
    if (!rc && move && is_image_dir(dir))
        gd_rm_rf(dir); /* it was a duplicate of an object already there */
    if (!rc && ref)
        rc = set_ref(store, ref, arch, id, err);
    close(lk);
    if (!rc)
        snprintf(idout, 64, "%s", id);
    return rc;
}

int gd_store_import(const char *dir, const char *ref, char id[64], struct gd_err *err)
{
    return put_object(dir, ref, 0, id, err);
}

int gd_store_adopt(const char *dir, const char *ref, char id[64], struct gd_err *err)
{
    return put_object(dir, ref, 1, id, err);
}

int gd_store_tag(const char *sel, const char *ref, const char *arch, struct gd_err *err)
{
    char dir[1400], id[64];
    int rc = gd_store_resolve(sel, arch, dir, sizeof(dir), err);
    if (rc)
        return rc;
    return gd_store_import(dir, ref, id, err);
}

int gd_store_rm(const char *ref, const char *arch, struct gd_err *err)
{
    char store[1024], name[160], tag[160], p[1600];
    if (gd_store_parse_ref(ref, name, sizeof(name), tag, sizeof(tag)))
        return gd_err_set(err, -EINVAL, "'%s' is not a ref (name[:tag])", ref);
    gd_store_dir(store, sizeof(store));
    int lk = lock_store(store, err);
    if (lk < 0)
        return lk;
    snprintf(p, sizeof(p), "%s/refs/%s/%s/%s", store, name, tag, arch);
    int rc = 0;
    if (unlink(p))
        rc = gd_err_set(err, -errno, "no ref %s:%s for %s", name, tag, arch);
    snprintf(p, sizeof(p), "%s/refs/%s/%s", store, name, tag);
    rmdir(p);
    snprintf(p, sizeof(p), "%s/refs/%s", store, name);
    rmdir(p);
    close(lk);
    return rc;
}

struct refent {
    char ref[330], arch[32], id[80];
};

static int collect_refs(const char *store, struct refent **out, size_t *n)
{
    char rd[1200];
    snprintf(rd, sizeof(rd), "%s/refs", store);
    *out = NULL;
    *n = 0;
    char **names;
    size_t nn;
    if (gd_dir_list(rd, &names, &nn))
        return 0;
    for (size_t i = 0; i < nn; i++) {
        char td[1400];
        snprintf(td, sizeof(td), "%s/%s", rd, names[i]);
        char **tags;
        size_t nt;
        if (gd_dir_list(td, &tags, &nt))
            continue;
        for (size_t k = 0; k < nt; k++) {
            char ad[1600];
            snprintf(ad, sizeof(ad), "%s/%s", td, tags[k]);
            char **arches;
            size_t na;
            if (gd_dir_list(ad, &arches, &na))
                continue;
            for (size_t a = 0; a < na; a++) {
                char lp[1800], target[512];
                snprintf(lp, sizeof(lp), "%s/%s", ad, arches[a]);
                ssize_t tl = readlink(lp, target, sizeof(target) - 1);
                if (tl <= 0 || arches[a][0] == '.')
                    continue;
                target[tl] = 0;
                struct refent *nv = realloc(*out, (*n + 1) * sizeof(**out));
                if (!nv)
                    break;
                *out = nv;
                struct refent *e = &(*out)[(*n)++];
                snprintf(e->ref, sizeof(e->ref), "%s:%s", names[i], tags[k]);
                snprintf(e->arch, sizeof(e->arch), "%s", arches[a]);
                const char *b = strrchr(target, '/');
                snprintf(e->id, sizeof(e->id), "%s", b ? b + 1 : target);
            }
            gd_dir_list_free(arches, na);
        }
        gd_dir_list_free(tags, nt);
    }
    gd_dir_list_free(names, nn);
    return 0;
}

static long long dir_size(const char *dir)
{
    char **v;
    size_t n;
    long long s = 0;
    if (gd_dir_list(dir, &v, &n))
        return 0;
    for (size_t i = 0; i < n; i++) {
        char p[1600];
        struct stat st;
        snprintf(p, sizeof(p), "%s/%s", dir, v[i]);
        if (lstat(p, &st) == 0 && S_ISREG(st.st_mode))
            s += (long long)st.st_blocks * 512;
    }
    gd_dir_list_free(v, n);
    return s;
}

int gd_store_list(FILE *out, int json, struct gd_err *err)
{
    (void)err;
    char store[1024], p[1400];
    gd_store_dir(store, sizeof(store));
    struct refent *refs;
    size_t nr;
    collect_refs(store, &refs, &nr);
    cJSON *arr = cJSON_CreateArray();
    if (!json)
        fprintf(out, "%-32s %-8s %-36s %9s\n", "REF", "ARCH", "BUILD ID", "SIZE");
    const char *arches[] = {"x86_64", "aarch64"};
    for (int a = 0; a < 2; a++) {
        gd_store_default_dir(arches[a], p, sizeof(p));
        char id[80], ar[32];
        if (read_manifest(p, id, sizeof(id), ar, sizeof(ar)))
            continue;
        struct refent *nv = realloc(refs, (nr + 1) * sizeof(*refs));
        if (!nv)
            break;
        refs = nv;
        snprintf(refs[nr].ref, sizeof(refs[nr].ref), "default:latest");
        snprintf(refs[nr].arch, sizeof(refs[nr].arch), "%s", arches[a]);
        snprintf(refs[nr].id, sizeof(refs[nr].id), "%s", id);
        nr++;
    }
    for (size_t i = 0; i < nr; i++) {
        if (!strcmp(refs[i].ref, "default:latest"))
            gd_store_default_dir(refs[i].arch, p, sizeof(p));
        else
            snprintf(p, sizeof(p), "%s/objects/%s", store, refs[i].id);
        long long sz = dir_size(p);
        if (json) {
            cJSON *e = cJSON_CreateObject();
            cJSON_AddStringToObject(e, "ref", refs[i].ref);
            cJSON_AddStringToObject(e, "arch", refs[i].arch);
            cJSON_AddStringToObject(e, "buildId", refs[i].id);
            cJSON_AddStringToObject(e, "path", p);
            cJSON_AddNumberToObject(e, "size", (double)sz);
            cJSON_AddItemToArray(arr, e);
        } else {
            fprintf(out, "%-32s %-8s %-36s %7.1f MB\n", refs[i].ref, refs[i].arch, refs[i].id,
                    (double)sz / 1e6);
        }
    }
    /* images no ref points to (gc candidates) */
    char **v;
    size_t n;
    snprintf(p, sizeof(p), "%s/objects", store);
    if (gd_dir_list(p, &v, &n) == 0) {
        for (size_t i = 0; i < n; i++) {
            int used = v[i][0] == '.';
            for (size_t k = 0; k < nr && !used; k++)
                used = !strcmp(refs[k].id, v[i]);
            if (used)
                continue;
            char d[1600];
            snprintf(d, sizeof(d), "%s/objects/%s", store, v[i]);
            if (json) {
                cJSON *e = cJSON_CreateObject();
                cJSON_AddNullToObject(e, "ref");
                cJSON_AddStringToObject(e, "buildId", v[i]);
                cJSON_AddStringToObject(e, "path", d);
                cJSON_AddNumberToObject(e, "size", (double)dir_size(d));
                cJSON_AddItemToArray(arr, e);
            } else {
                fprintf(out, "%-32s %-8s %-36s %7.1f MB\n", "<none>", "-", v[i],
                        (double)dir_size(d) / 1e6);
            }
        }
        gd_dir_list_free(v, n);
    }
    if (json) {
        char *s = cJSON_Print(arr);
        if (s)
            fprintf(out, "%s\n", s);
        free(s);
    }
    cJSON_Delete(arr);
    free(refs);
    return 0;
}

int gd_store_gc(FILE *out, int dry_run, const char *const *keep, struct gd_err *err)
{
    char store[1024], p[1400];
    gd_store_dir(store, sizeof(store));
    int lk = lock_store(store, err);
    if (lk < 0)
        return lk;
    struct refent *refs;
    size_t nr;
    collect_refs(store, &refs, &nr);
    char **v;
    size_t n;
    int removed = 0;
    snprintf(p, sizeof(p), "%s/objects", store);
    if (gd_dir_list(p, &v, &n) == 0) {
        for (size_t i = 0; i < n; i++) {
            int used = 0;
            for (size_t k = 0; k < nr && !used; k++)
                used = !strcmp(refs[k].id, v[i]);
            for (const char *const *k = keep; k && *k && !used; k++)
                used = !strcmp(*k, v[i]);
            if (v[i][0] == '.') {
                /* .tmp-<pid>-..., .build-<pid>: in flight, or left by one that died */
                const char *dg = v[i] + strcspn(v[i], "0123456789");
                long pid = strtol(dg, NULL, 10);
                used = pid > 0 && (kill((pid_t)pid, 0) == 0 || errno == EPERM);
            }
            if (used)
                continue;
            char d[1600];
            snprintf(d, sizeof(d), "%s/objects/%s", store, v[i]);
            fprintf(out, "%s %s (%.1f MB)\n", dry_run ? "would remove" : "removed", v[i],
                    (double)dir_size(d) / 1e6);
            if (!dry_run)
                gd_rm_rf(d);
            removed++;
        }
        gd_dir_list_free(v, n);
    }
    free(refs);
    close(lk);
    if (!removed)
        fprintf(out, "nothing to remove\n");
    return 0;
}
