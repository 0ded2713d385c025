/* image.c - guest image manifest and verification. */
#define _GNU_SOURCE
#include "image.h"
#include "store.h"

#include "base/fs.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

void gd_cache_dir(char *buf, size_t cap)
{
    const char *x = getenv("XDG_CACHE_HOME");
    const char *h = getenv("HOME");
    if (x && x[0] == '/')
        snprintf(buf, cap, "%s/gondolin", x);
    else
        snprintf(buf, cap, "%s/.cache/gondolin", h && h[0] ? h : "/tmp");
}

void gd_image_default_dir(char *buf, size_t cap)
{
    gd_store_default_dir(gd_host_arch(), buf, cap);
}

int gd_guest_bin_dir(char *buf, size_t cap)
{
    const char *env = getenv("GONDOLIN_GUEST_BIN");
    if (env && *env) {
        snprintf(buf, cap, "%s", env);
        return 0;
    }
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (n <= 0)
        return -errno;
    exe[n] = 0;
    char *slash = strrchr(exe, '/');
    *slash = 0;
    const char *cands[] = {"/guest", "/../libexec/gondolin", "/../guest"};
    for (size_t i = 0; i < 3; i++) {
        char p[PATH_MAX + 64];
        snprintf(p, sizeof(p), "%s%s", exe, cands[i]);
        char s[PATH_MAX + 80];
        snprintf(s, sizeof(s), "%s/sandboxd", p);
        if (access(s, R_OK) == 0) {
            snprintf(buf, cap, "%s", p);
            return 0;
        }
    }
    return -ENOENT;
}

static const char *const asset_keys[] = {"kernel", "bzImage", "initramfs", "rootfs"};

/* size, mtime and inode of each asset: equal stamp = unchanged since verified */
static void stamp_of(const struct gd_image *img, char *buf, size_t cap)
{
    const char *files[] = {img->kernel, img->bzimage, img->initramfs, img->rootfs};
    size_t o = (size_t)snprintf(buf, cap, "%s\n", img->build_id);
    for (int i = 0; i < 4 && o < cap; i++) {
        struct stat st;
        if (stat(files[i], &st))
            memset(&st, 0, sizeof(st));
        o += (size_t)snprintf(buf + o, cap - o, "%lld %lld.%09ld %llu\n", (long long)st.st_size,
                              (long long)st.st_mtim.tv_sec, st.st_mtim.tv_nsec,
                              (unsigned long long)st.st_ino);
    }
}

int gd_image_load(const char *dir, int verify, struct gd_image *img, struct gd_err *err)
{
    memset(img, 0, sizeof(*img));
    snprintf(img->dir, sizeof(img->dir), "%s", dir);
    char path[1200];
    snprintf(path, sizeof(path), "%s/manifest.json", dir);
    char *text;
    size_t n;
    int rc = gd_read_file(path, 1 << 20, &text, &n);
    if (rc)
        return gd_err_set(err, rc, "image %s: cannot read manifest.json: %s", dir, strerror(-rc));
    FILE *f;
    cJSON *m = cJSON_Parse(text);
    free(text);
    if (!m)
        return gd_err_set(err, -EINVAL, "image %s: manifest.json is not valid JSON", dir);
    const cJSON *arch = cJSON_GetObjectItemCaseSensitive(m, "arch");
    const cJSON *bid = cJSON_GetObjectItemCaseSensitive(m, "buildId");
    const cJSON *assets = cJSON_GetObjectItemCaseSensitive(m, "assets");
    const cJSON *guest = cJSON_GetObjectItemCaseSensitive(m, "guest");
    if (!cJSON_IsString(arch) || !cJSON_IsString(bid) || !cJSON_IsObject(assets)) {
        rc = gd_err_set(err, -EINVAL, "image %s: manifest.json lacks arch, buildId or assets", dir);
        goto out;
    }
    snprintf(img->arch, sizeof(img->arch), "%s", arch->valuestring);
    snprintf(img->build_id, sizeof(img->build_id), "%s", bid->valuestring);
    const cJSON *sd = guest ? cJSON_GetObjectItemCaseSensitive(guest, "sandboxd") : NULL;
    if (cJSON_IsString(sd))
        snprintf(img->sandboxd_sha, sizeof(img->sandboxd_sha), "%s", sd->valuestring);
    const cJSON *rm = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(m, "runtimeDefaults"), "rootfsMode");
    if (cJSON_IsString(rm))
        snprintf(img->rootfs_mode, sizeof(img->rootfs_mode), "%s", rm->valuestring);
    const cJSON *bi =
        cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(m, "guest"), "builder");
    if (cJSON_IsString(bi))
        snprintf(img->builder_id, sizeof(img->builder_id), "%s", bi->valuestring);
    char *dst[] = {img->kernel, img->bzimage, img->initramfs, img->rootfs};
    const char *shas[4] = {0};
    for (int i = 0; i < 4; i++) {
        const cJSON *a = cJSON_GetObjectItemCaseSensitive(assets, asset_keys[i]);
        const cJSON *p = a ? cJSON_GetObjectItemCaseSensitive(a, "path") : NULL;
        const cJSON *s = a ? cJSON_GetObjectItemCaseSensitive(a, "sha256") : NULL;
        if (!cJSON_IsString(p) || !cJSON_IsString(s) || strchr(p->valuestring, '/') ||
            p->valuestring[0] == '.') {
            rc = gd_err_set(err, -EINVAL, "image %s: manifest.json: bad asset '%s'", dir,
                            asset_keys[i]);
            goto out;
        }
        snprintf(dst[i], sizeof(img->kernel), "%s/%s", dir, p->valuestring);
        shas[i] = s->valuestring;
        if (access(dst[i], R_OK)) {
            rc = gd_err_set(err, -ENOENT, "image %s: missing %s", dir, p->valuestring);
            goto out;
        }
    }
    if (!verify)
        goto out;
    char stamp[1024], old[1024] = "", spath[1200];
    stamp_of(img, stamp, sizeof(stamp));
    snprintf(spath, sizeof(spath), "%s/.verified", dir);
    if ((f = fopen(spath, "re"))) {
        size_t r = fread(old, 1, sizeof(old) - 1, f);
        old[r] = 0;
        fclose(f);
        if (!strcmp(old, stamp))
            goto out;
    }
    for (int i = 0; i < 4; i++) {
        char hex[65];
        if ((rc = gd_sha256_file(dst[i], hex))) {
            rc = gd_err_set(err, rc, "image %s: cannot read %s", dir, dst[i]);
            goto out;
        }
        if (strcmp(hex, shas[i])) {
            rc = gd_err_set(err, -EBADMSG,
                            "image corrupt: %s sha256 mismatch (manifest %.16s..., file "
                            "%.16s...)",
                            dst[i], shas[i], hex);
            goto out;
        }
    }
    if ((f = fopen(spath, "we"))) { /* best effort: a read-only image just re-verifies */
        fputs(stamp, f);
        fclose(f);
    }
out:
    cJSON_Delete(m);
    return rc;
}
