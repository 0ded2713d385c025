/* mount.c - mount specs (vfs.h): the CLI's forms parsed and checked, and the provider a
 * spec names. The guest path goes on the guest kernel's command line (the VM layer passes
 * the mounts there), so it is held to a strict form: absolute, normalised, printable,
 * without ',', ':' or spaces. */
#define _GNU_SOURCE
#include "base/err.h"
#include "vfs/vfs.h"

#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define GUEST_PATH_MAX 1024

void gd_vfs_provider_free(gd_vfs_provider *pv)
{
    if (!pv)
        return;
    if (pv->ops && pv->ops->destroy)
        pv->ops->destroy(pv->p);
    free(pv);
}

static const char *kind_flag(enum gd_mount_kind kind)
{
    return kind == GD_MOUNT_HOSTFS    ? "--mount-hostfs"
           : kind == GD_MOUNT_OVERLAY ? "--mount-overlay"
                                      : "--mount-memfs";
}

/* An absolute, normalised guest path of len bytes at s. */
static int check_guest(const char *flag, const char *s, size_t len, struct gd_err *err)
{
    if (len == 0 || s[0] != '/')
        return gd_err_set(err, -EINVAL, "%s: the guest path must be absolute", flag);
    if (len == 1)
        return gd_err_set(err, -EINVAL, "%s: cannot mount over the guest's /", flag);
    if (len > GUEST_PATH_MAX)
        return gd_err_set(err, -EINVAL, "%s: the guest path is longer than %d bytes", flag,
                          GUEST_PATH_MAX);
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c <= ' ' || c >= 0x7f || c == ',' || c == ':')
            return gd_err_set(err, -EINVAL,
                              "%s: the guest path may not hold spaces, ',', ':' or "
                              "non-printable bytes",
                              flag);
    }
    if (s[len - 1] == '/')
        return gd_err_set(err, -EINVAL, "%s: the guest path may not end with '/'", flag);
    for (size_t i = 0; i < len; i++) {
        if (s[i] != '/')
            continue;
        const char *c = s + i + 1;
        size_t cl = 0;
        while (i + 1 + cl < len && c[cl] != '/')
            cl++;
        if (cl == 0)
            return gd_err_set(err, -EINVAL, "%s: the guest path may not hold '//'", flag);
        if ((cl == 1 && c[0] == '.') || (cl == 2 && c[0] == '.' && c[1] == '.'))
            return gd_err_set(err, -EINVAL,
                              "%s: the guest path may not hold '.' or '..' components", flag);
    }
    return 0;
}

/* "64M", "1G", "4096": bytes; 0 or overflow refused. */
static int parse_size(const char *flag, const char *s, uint64_t *out, struct gd_err *err)
{
    uint64_t v = 0;
    size_t i = 0;
    for (; s[i] >= '0' && s[i] <= '9'; i++) {
        if (v > (UINT64_MAX - 9) / 10)
            return gd_err_set(err, -EINVAL, "%s: size %s is too large", flag, s);
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    unsigned shift = 0;
    if (i > 0 && s[i] && !s[i + 1]) {
        switch (s[i]) {
        case 'k':
        case 'K':
            shift = 10;
            break;
        case 'm':
        case 'M':
            shift = 20;
            break;
        case 'g':
        case 'G':
            shift = 30;
            break;
        default:
            break;
        }
        if (shift)
            i++;
    }
    if (i == 0 || s[i])
        return gd_err_set(err, -EINVAL, "%s: size '%s' is not a number with K, M or G", flag, s);
    if (v == 0)
        return gd_err_set(err, -EINVAL, "%s: size must be more than 0", flag);
    if (v > (UINT64_MAX >> shift))
        return gd_err_set(err, -EINVAL, "%s: size %s is too large", flag, s);
    *out = v << shift;
    return 0;
}

/* Appends s[0..len) to buf at *at; the copy. */
static const char *put(char *buf, size_t cap, size_t *at, const char *s, size_t len)
{
    if (*at + len + 1 > cap)
        return NULL;
    char *p = buf + *at;
    memcpy(p, s, len);
    p[len] = 0;
    *at += len + 1;
    return p;
}

int gd_mount_parse(enum gd_mount_kind kind, const char *arg, struct gd_mount *out, char *buf,
                   size_t cap, struct gd_err *err)
{
    const char *flag = kind_flag(kind);
    memset(out, 0, sizeof(*out));
    out->kind = kind;
    size_t at = 0, len = strlen(arg);
    int e;
    if (kind == GD_MOUNT_MEMORY) {
        /* GUEST[:SIZE]: the guest path has no ':' */
        const char *colon = strchr(arg, ':');
        size_t gl = colon ? (size_t)(colon - arg) : len;
        if ((e = check_guest(flag, arg, gl, err)))
            return e;
        if (colon && (e = parse_size(flag, colon + 1, &out->size, err)))
            return e;
        if (!(out->guest = put(buf, cap, &at, arg, gl)))
            return gd_err_set(err, -ENAMETOOLONG, "%s: spec too long", flag);
        return 0;
    }
    /* HOST:GUEST[:ro][:cache=always]: the guest path has no ':', so the options are
     * the trailing words that name one */
    const char *form =
        kind == GD_MOUNT_HOSTFS ? "HOST:GUEST[:ro][:cache=always]" : "HOST:GUEST[:cache=always]";
    int seen_mode = 0, seen_cache = 0; /* read from the end: the last word of each wins */
    for (;;) {
        const char *c = memrchr(arg, ':', len);
        if (!c)
            break;
        size_t wl = len - (size_t)(c - arg) - 1;
        const char *w = c + 1;
        if (kind == GD_MOUNT_HOSTFS && wl == 2 && (!memcmp(w, "ro", 2) || !memcmp(w, "rw", 2))) {
            if (!seen_mode++)
                out->readonly = w[1] == 'o';
        } else if ((wl == 12 && !memcmp(w, "cache=always", 12)) ||
                   (wl == 10 && !memcmp(w, "cache=auto", 10))) {
            if (!seen_cache++)
                out->cache_always = wl == 12;
        } else if (wl >= 6 && !memcmp(w, "cache=", 6))
            return gd_err_set(err, -EINVAL, "%s: cache is 'auto' or 'always', got '%.*s'", flag,
                              (int)(wl - 6), w + 6);
        else
            break;
        len = (size_t)(c - arg);
    }
    const char *colon = memrchr(arg, ':', len);
    if (!colon || colon == arg)
        return gd_err_set(err, -EINVAL, "%s: expected %s, got '%s'", flag, form, arg);
    const char *guest = colon + 1;
    size_t hl = (size_t)(colon - arg), gl = len - hl - 1;
    if ((e = check_guest(flag, guest, gl, err)))
        return e;
    char host[PATH_MAX], real[PATH_MAX];
    if (hl >= sizeof(host))
        return gd_err_set(err, -ENAMETOOLONG, "%s: host path too long", flag);
    memcpy(host, arg, hl);
    host[hl] = 0;
    struct stat st;
    if (stat(host, &st))
        return gd_err_set(err, -errno, "%s: %s: %s", flag, host, strerror(errno));
    if (!S_ISDIR(st.st_mode))
        return gd_err_set(err, -ENOTDIR, "%s: %s: not a directory", flag, host);
    if (!realpath(host, real))
        return gd_err_set(err, -errno, "%s: %s: %s", flag, host, strerror(errno));
    if (!(out->host = put(buf, cap, &at, real, strlen(real))) ||
        !(out->guest = put(buf, cap, &at, guest, gl)))
        return gd_err_set(err, -ENAMETOOLONG, "%s: spec too long", flag);
    return 0;
}

/* overlay(hostfs(HOST, read-only), memory(size)) */
static int overlay(const struct gd_mount *m, gd_vfs_provider **out, struct gd_err *err)
{
    gd_vfs_provider *lower, *upper;
    int e = gd_vfs_hostfs_new(m->host, 1, &lower, err);
    if (e)
        return e;
    if ((e = gd_vfs_memory_new(m->size, &upper, err))) {
        gd_vfs_provider_free(lower);
        return e;
    }
    return gd_vfs_overlay_new(lower, upper, out, err);
}

int gd_mount_provider(const struct gd_mount *m, gd_vfs_provider **out, struct gd_err *err)
{
    gd_vfs_provider *pv;
    int e;
    switch (m->kind) {
    case GD_MOUNT_HOSTFS:
        e = gd_vfs_hostfs_new(m->host, m->readonly, &pv, err);
        break;
    case GD_MOUNT_MEMORY:
        e = gd_vfs_memory_new(m->size, &pv, err);
        break;
    case GD_MOUNT_OVERLAY:
        e = overlay(m, &pv, err);
        break;
    default:
        return gd_err_set(err, -EINVAL, "mount: unknown kind %d", (int)m->kind);
    }
    if (e)
        return e;
    if (m->cache_always && m->kind != GD_MOUNT_MEMORY)
        pv->flags |= GD_VFS_EXCLUSIVE; /* the user says nobody else changes HOST */
    if (!m->hide || !m->hide[0]) {
        *out = pv;
        return 0;
    }
    /* hidden paths are absent whatever the mount's kind */
    if ((e = gd_vfs_shadow_new(pv, m->hide, GD_VFS_SHADOW_HIDE, 0, out, err)))
        gd_err_prefix(err, "%s: ", m->guest ? m->guest : "mount");
    return e;
}
