/* writer.c - writes bundles: the manifest (fixed key order, no whitespace, so the same
 * inputs give the same bytes), the signature block, the entries; and adds signatures. */
#define _GNU_SOURCE
#include "bundle_int.h"

#include "base/fs.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int gd_bundle_write_atomic(const char *path, const void *p, size_t n, unsigned mode,
                           struct gd_err *err)
{
    char tmp[4200];
    if (snprintf(tmp, sizeof(tmp), "%s.tmp-XXXXXX", path) >= (int)sizeof(tmp))
        return gd_err_set(err, -ENAMETOOLONG, "path too long: %s", path);
    int fd = mkostemp(tmp, O_CLOEXEC);
    if (fd < 0)
        return gd_err_set(err, -errno, "cannot create %s: %s", tmp, strerror(errno));
    const uint8_t *b = p;
    size_t done = 0;
    while (done < n) {
        ssize_t w = write(fd, b + done, n - done);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            break;
        done += (size_t)w;
    }
    int rc = 0;
    if (done != n || fchmod(fd, mode) || fsync(fd))
        rc = gd_err_set(err, -errno ? -errno : -EIO, "cannot write %s: %s", tmp, strerror(errno));
    close(fd);
    if (!rc && rename(tmp, path))
        rc = gd_err_set(err, -errno, "cannot rename %s to %s: %s", tmp, path, strerror(errno));
    if (rc) {
        unlink(tmp);
        return rc;
    }
    /* the rename itself is durable once the directory is synced */
    char dir[4200];
    snprintf(dir, sizeof(dir), "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash)
        *(slash == dir ? slash + 1 : slash) = 0;
    int dfd = open(slash ? dir : ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    return 0;
}

static char *manifest_json(const struct gd_bundle_src *s)
{
    cJSON *m = cJSON_CreateObject(), *files = cJSON_CreateArray(), *pl = cJSON_CreateObject();
    cJSON *tests = cJSON_CreateArray();
    cJSON_AddNumberToObject(m, "format", 1);
    cJSON_AddStringToObject(m, "name", s->name);
    cJSON_AddNumberToObject(m, "revision", (double)s->revision);
    cJSON_AddNumberToObject(m, "created", (double)s->created);
    cJSON_AddNumberToObject(m, "expires", (double)s->expires);
    cJSON_AddStringToObject(m, "min_gondolin", s->min_gondolin);
    cJSON_AddStringToObject(m, "entry", s->entry);
    for (size_t i = 0; i < s->nfiles; i++) {
        const struct gd_bundle_src_file *f = &s->files[i];
        char hex[65];
        gd_sha256_hex(f->data, f->size, hex);
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "path", f->path);
        cJSON_AddNumberToObject(o, "size", (double)f->size);
        cJSON_AddStringToObject(o, "sha256", hex);
        cJSON_AddItemToArray(files, o);
        if (f->arch) {
            cJSON *a = cJSON_GetObjectItemCaseSensitive(pl, f->arch);
            if (!a)
                cJSON_AddItemToObject(pl, f->arch, a = cJSON_CreateArray());
            cJSON_AddItemToArray(a, cJSON_CreateString(f->path));
        }
        if (f->test)
            cJSON_AddItemToArray(tests, cJSON_CreateString(f->path));
    }
    cJSON_AddItemToObject(m, "files", files);
    cJSON_AddItemToObject(m, "plugins", pl);
    cJSON_AddItemToObject(m, "tests", tests);
    char *out = cJSON_PrintUnformatted(m);
    cJSON_Delete(m);
    return out;
}

/* header + manifest + signatures + entries (the entries copied from a bundle or built) */
static int assemble(const char *man, size_t ml, const uint8_t *sigs, size_t nsig,
                    const uint8_t *entries, size_t el, uint8_t **out, size_t *n)
{
    *n = 12 + ml + 1 + nsig * GD__SIG_REC + el;
    uint8_t *b = malloc(*n);
    if (!b)
        return -ENOMEM;
    memcpy(b, GD_BUNDLE_MAGIC, 8);
    gd__be_put(b + 8, ml, 4);
    memcpy(b + 12, man, ml);
    b[12 + ml] = (uint8_t)nsig;
    if (nsig)
        memcpy(b + 13 + ml, sigs, nsig * GD__SIG_REC);
    if (el)
        memcpy(b + 13 + ml + nsig * GD__SIG_REC, entries, el);
    *out = b;
    return 0;
}

int gd_bundle_write(const struct gd_bundle_src *s, const char *path, struct gd_err *err)
{
    size_t el = 0;
    for (size_t i = 0; i < s->nfiles; i++) {
        if (!gd_bundle_path_ok(s->files[i].path))
            return gd_err_set(err, -EINVAL, "%s is not a plain relative name", s->files[i].path);
        el += 2 + strlen(s->files[i].path) + 9 + s->files[i].size;
    }
    char *man = manifest_json(s);
    uint8_t *ent = malloc(el ? el : 1), *b = NULL;
    if (!man || !ent) {
        free(man);
        free(ent);
        return gd_err_set(err, -ENOMEM, "out of memory");
    }
    size_t off = 0, n;
    for (size_t i = 0; i < s->nfiles; i++) {
        const struct gd_bundle_src_file *f = &s->files[i];
        size_t nl = strlen(f->path);
        gd__be_put(ent + off, nl, 2);
        memcpy(ent + off + 2, f->path, nl);
        ent[off + 2 + nl] = 0;
        gd__be_put(ent + off + 3 + nl, f->size, 8);
        if (f->size)
            memcpy(ent + off + 11 + nl, f->data, f->size);
        off += 11 + nl + f->size;
    }
    int rc = assemble(man, strlen(man), NULL, 0, ent, el, &b, &n);
    if (!rc && n > GD_BUNDLE_MAX_SIZE)
        rc =
            gd_err_set(err, -EFBIG, "bundle would be larger than %u MiB", GD_BUNDLE_MAX_SIZE >> 20);
    else if (!rc)
        rc = gd_bundle_write_atomic(path, b, n, 0644, err);
    else
        gd_err_set(err, rc, "out of memory");
    free(man);
    free(ent);
    free(b);
    return rc;
}

int gd_bundle_sign(const char *path, const char *keyfile, char id[65], struct gd_err *err)
{
    /* open without a trust set: every existing signature must still verify */
    gd_bundle *bd;
    struct gd_bundle_verify v = {0};
    int rc = gd_bundle_open(path, &v, &bd, err);
    if (rc)
        return rc;
    const struct gd_bundle_info *in = gd_bundle_info(bd);
    for (size_t i = 0; i < in->nsigners; i++)
        if (!in->signers[i].valid) {
            gd_bundle_free(bd);
            return gd_err_set(err, -EBADMSG,
                              "%s: signature by key %.16s does not verify; not signing a "
                              "changed bundle",
                              path, in->signers[i].key_id);
        }
    uint8_t rec[GD__SIG_REC], sigs[GD_BUNDLE_MAX_SIGS * GD__SIG_REC], *b = NULL;
    if ((rc = gd__bundle_sig_make(keyfile, in->manifest, in->manifest_len, rec, rec + 32, err)))
        goto out;
    gd__bundle_key_id(rec, id);
    /* keep the other signers, replace this key's */
    const uint8_t *old = in->manifest + in->manifest_len + 1;
    size_t ns = 0;
    for (size_t i = 0; i < in->nsigners; i++)
        if (memcmp(old + i * GD__SIG_REC, rec, 32))
            memcpy(sigs + ns++ * GD__SIG_REC, old + i * GD__SIG_REC, GD__SIG_REC);
    if (ns >= GD_BUNDLE_MAX_SIGS) {
        rc = gd_err_set(err, -E2BIG, "%s already has %d signatures", path, GD_BUNDLE_MAX_SIGS);
        goto out;
    }
    memcpy(sigs + ns++ * GD__SIG_REC, rec, GD__SIG_REC);
    const uint8_t *ent = old + in->nsigners * GD__SIG_REC;
    size_t total;
    /* the entries run from ent to the end of the bundle: the last file's data ends it */
    const struct gd_bundle_file *last = NULL;
    for (size_t i = 0; i < in->nfiles; i++)
        if (!last || in->files[i].data > last->data)
            last = &in->files[i];
    size_t elen = last ? (size_t)(last->data + last->size - ent) : 0;
    if ((rc = assemble((const char *)in->manifest, in->manifest_len, sigs, ns, ent, elen, &b,
                       &total))) {
        gd_err_set(err, rc, "out of memory");
        goto out;
    }
    rc = gd_bundle_write_atomic(path, b, total, 0644, err);
out:
    free(b);
    gd_bundle_free(bd);
    return rc;
}
