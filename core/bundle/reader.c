/* reader.c - reads and verifies a bundle (layout: docs/bundles.md). The order is the
 * point: signatures over the manifest's bytes, then the manifest, then each entry
 * against it. Every length is checked against what is left before it is used. */
#define _GNU_SOURCE
#include "bundle_int.h"

#include "base/fs.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct gd_bundle {
    uint8_t *buf;
    size_t len;
    struct gd_bundle_info info;
    char name[GD_BUNDLE_MAX_NAME + 1];
    char min_gondolin[32];
    char *entry;
    struct gd_bundle_file *files;
    size_t nfiles;
    struct gd_bundle_signer signers[GD_BUNDLE_MAX_SIGS];
};

int gd_bundle_path_ok(const char *s)
{
    size_t l = strlen(s);
    if (!l || l > GD_BUNDLE_MAX_PATH || s[0] == '/')
        return 0;
    for (const char *p = s; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f || *p == '\\')
            return 0;
    for (const char *seg = s; seg;) {
        const char *e = strchr(seg, '/');
        size_t n = e ? (size_t)(e - seg) : strlen(seg);
        if (!n || (n == 1 && seg[0] == '.') || (n == 2 && seg[0] == '.' && seg[1] == '.'))
            return 0;
        seg = e ? e + 1 : NULL;
    }
    return 1;
}

/* "N[.N[.N]]" -> v[3]; -1 if it is not that */
static int version_parse(const char *s, unsigned long v[3])
{
    v[0] = v[1] = v[2] = 0;
    for (int i = 0; i < 3; i++) {
        char *e;
        if (*s < '0' || *s > '9')
            return -1;
        v[i] = strtoul(s, &e, 10);
        if (!*e)
            return 0;
        if (*e != '.' || i == 2)
            return -1;
        s = e + 1;
    }
    return -1;
}

int gd_bundle_version_cmp(const char *a, const char *b)
{
    unsigned long x[3], y[3];
    if (version_parse(a, x) || version_parse(b, y))
        return -2;
    for (int i = 0; i < 3; i++)
        if (x[i] != y[i])
            return x[i] < y[i] ? -1 : 1;
    return 0;
}

void gd_bundle_free(gd_bundle *b)
{
    if (!b)
        return;
    for (size_t i = 0; i < b->nfiles; i++)
        free(b->files[i].path);
    free(b->files);
    free(b->entry);
    free(b->buf);
    free(b);
}

const struct gd_bundle_info *gd_bundle_info(const gd_bundle *b)
{
    return &b->info;
}

const struct gd_bundle_file *gd_bundle_find(const gd_bundle *b, const char *path)
{
    for (size_t i = 0; i < b->nfiles; i++)
        if (!strcmp(b->files[i].path, path))
            return &b->files[i];
    return NULL;
}

static int key_trusted(const struct gd_bundle_trust *t, const unsigned char *pub)
{
    for (size_t i = 0; t && i < t->n; i++)
        if (!memcmp(t->keys[i].pub, pub, 32))
            return 1;
    return 0;
}

/* the signature block at p (S, then S records); *end past it */
static int check_sigs(gd_bundle *b, size_t off, const struct gd_bundle_verify *v, size_t *end,
                      struct gd_err *err)
{
    if (off >= b->len)
        return gd_err_set(err, -EBADMSG, "bundle truncated before its signatures");
    size_t s = b->buf[off++];
    if (s > GD_BUNDLE_MAX_SIGS)
        return gd_err_set(err, -EBADMSG, "bundle has %zu signatures (at most %d)", s,
                          GD_BUNDLE_MAX_SIGS);
    if (b->len - off < s * GD__SIG_REC)
        return gd_err_set(err, -EBADMSG, "bundle truncated in its signatures");
    for (size_t i = 0; i < s; i++) {
        const uint8_t *r = b->buf + off + i * GD__SIG_REC;
        struct gd_bundle_signer *g = &b->signers[i];
        gd__bundle_key_id(r, g->key_id);
        for (size_t k = 0; k < i; k++)
            if (!strcmp(b->signers[k].key_id, g->key_id))
                return gd_err_set(err, -EBADMSG, "key %.16s signed the bundle twice", g->key_id);
        g->valid = gd__bundle_sig_ok(r, r + 32, b->info.manifest, b->info.manifest_len);
        g->trusted = g->valid && key_trusted(v->trust, r);
        if (!g->valid && v->trust)
            return gd_err_set(err, -EBADMSG,
                              "signature by key %.16s does not verify: the manifest or the "
                              "signature was changed",
                              g->key_id);
        b->info.ntrusted += (size_t)g->trusted;
    }
    b->info.nsigners = s;
    *end = off + s * GD__SIG_REC;
    if (!v->trust)
        return 0;
    unsigned need = v->threshold ? v->threshold : 1;
    if (!s)
        return gd_err_set(err, -EPERM, "bundle is not signed");
    if (!b->info.ntrusted)
        return gd_err_set(err, -EPERM, "bundle is not signed by a trusted key (signer %.16s%s)",
                          b->signers[0].key_id, s > 1 ? " and others" : "");
    if (b->info.ntrusted < need)
        return gd_err_set(err, -EPERM,
                          "bundle has %zu trusted signature%s, %u required (--threshold)",
                          b->info.ntrusted, b->info.ntrusted == 1 ? "" : "s", need);
    return 0;
}

static struct gd_bundle_file *find_mut(gd_bundle *b, const char *p)
{
    return (struct gd_bundle_file *)gd_bundle_find(b, p);
}

static int get_int(const cJSON *m, const char *k, long long *out, struct gd_err *err)
{
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(m, k);
    if (!cJSON_IsNumber(x) || x->valuedouble < 0 || x->valuedouble > 9.0e15 ||
        x->valuedouble != (double)(long long)x->valuedouble)
        return gd_err_set(err, -EBADMSG, "manifest: \"%s\" must be a non-negative integer", k);
    *out = (long long)x->valuedouble;
    return 0;
}

static const char *get_str(const cJSON *m, const char *k)
{
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(m, k);
    return cJSON_IsString(x) ? x->valuestring : NULL;
}

static int parse_files(gd_bundle *b, const cJSON *m, struct gd_err *err)
{
    const cJSON *fs = cJSON_GetObjectItemCaseSensitive(m, "files");
    if (!cJSON_IsArray(fs))
        return gd_err_set(err, -EBADMSG, "manifest: \"files\" must be an array");
    int n = cJSON_GetArraySize(fs);
    if (n < 1 || n > GD_BUNDLE_MAX_FILES)
        return gd_err_set(err, -EBADMSG, "manifest lists %d files (1 to %d)", n,
                          GD_BUNDLE_MAX_FILES);
    if (!(b->files = calloc((size_t)n, sizeof(*b->files))))
        return gd_err_set(err, -ENOMEM, "out of memory");
    for (const cJSON *f = fs->child; f; f = f->next) {
        const char *p = get_str(f, "path"), *h = get_str(f, "sha256");
        long long size;
        if (!p || !gd_bundle_path_ok(p))
            return gd_err_set(err, -EBADMSG,
                              "manifest: file path '%.80s' is not a plain "
                              "relative name",
                              p ? p : "(none)");
        if (find_mut(b, p))
            return gd_err_set(err, -EBADMSG, "manifest lists %s twice", p);
        if (!h || strlen(h) != 64 || strspn(h, "0123456789abcdef") != 64)
            return gd_err_set(err, -EBADMSG, "manifest: %s has no valid sha256", p);
        if (get_int(f, "size", &size, err))
            return -EBADMSG;
        if ((unsigned long long)size > GD_BUNDLE_MAX_SIZE)
            return gd_err_set(err, -EBADMSG, "manifest: %s is too large", p);
        struct gd_bundle_file *bf = &b->files[b->nfiles];
        if (!(bf->path = strdup(p)))
            return gd_err_set(err, -ENOMEM, "out of memory");
        b->nfiles++;
        memcpy(bf->sha256, h, 65);
        bf->size = (uint64_t)size;
    }
    const cJSON *pl = cJSON_GetObjectItemCaseSensitive(m, "plugins");
    if (pl && !cJSON_IsObject(pl))
        return gd_err_set(err, -EBADMSG, "manifest: \"plugins\" must be an object");
    for (const cJSON *a = pl ? pl->child : NULL; a; a = a->next) {
        if (strlen(a->string) >= sizeof(b->files[0].arch) || !cJSON_IsArray(a))
            return gd_err_set(err, -EBADMSG, "manifest: bad plugin architecture '%.20s'",
                              a->string);
        for (const cJSON *x = a->child; x; x = x->next) {
            struct gd_bundle_file *bf = cJSON_IsString(x) ? find_mut(b, x->valuestring) : NULL;
            if (!bf || bf->arch[0])
                return gd_err_set(err, -EBADMSG,
                                  "manifest: plugin '%.80s' is not a file of the bundle",
                                  cJSON_IsString(x) ? x->valuestring : "?");
            snprintf(bf->arch, sizeof(bf->arch), "%s", a->string);
        }
    }
    const cJSON *ts = cJSON_GetObjectItemCaseSensitive(m, "tests");
    if (ts && !cJSON_IsArray(ts))
        return gd_err_set(err, -EBADMSG, "manifest: \"tests\" must be an array");
    for (const cJSON *x = ts ? ts->child : NULL; x; x = x->next) {
        struct gd_bundle_file *bf = cJSON_IsString(x) ? find_mut(b, x->valuestring) : NULL;
        if (!bf || bf->arch[0])
            return gd_err_set(err, -EBADMSG,
                              "manifest: test file '%.80s' is not a file of the "
                              "bundle",
                              cJSON_IsString(x) ? x->valuestring : "?");
        bf->test = 1;
    }
    return 0;
}

static int parse_manifest(gd_bundle *b, const struct gd_bundle_verify *v, struct gd_err *err)
{
    cJSON *m = cJSON_ParseWithLength((const char *)b->info.manifest, b->info.manifest_len);
    if (!cJSON_IsObject(m)) {
        cJSON_Delete(m);
        return gd_err_set(err, -EBADMSG, "manifest is not a JSON object");
    }
    int rc = -EBADMSG;
    long long fmt;
    const char *name = get_str(m, "name"), *entry = get_str(m, "entry");
    const char *ming = get_str(m, "min_gondolin");
    if (get_int(m, "format", &fmt, err))
        goto out;
    if (fmt != 1) {
        gd_err_set(err, -EBADMSG, "manifest format %lld is not supported (1)", fmt);
        goto out;
    }
    if (!name || !*name || strlen(name) > GD_BUNDLE_MAX_NAME ||
        strspn(name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") !=
            strlen(name) ||
        name[0] == '.') {
        gd_err_set(err, -EBADMSG, "manifest: \"name\" must be 1-%d of [A-Za-z0-9._-]",
                   GD_BUNDLE_MAX_NAME);
        goto out;
    }
    if (get_int(m, "revision", &b->info.revision, err) ||
        get_int(m, "created", &b->info.created, err) ||
        get_int(m, "expires", &b->info.expires, err))
        goto out;
    if (!ming || strlen(ming) >= sizeof(b->min_gondolin) ||
        gd_bundle_version_cmp(ming, "0") == -2) {
        gd_err_set(err, -EBADMSG, "manifest: \"min_gondolin\" must be a version like 0.1.0");
        goto out;
    }
    snprintf(b->name, sizeof(b->name), "%s", name);
    snprintf(b->min_gondolin, sizeof(b->min_gondolin), "%s", ming);
    if ((rc = parse_files(b, m, err)))
        goto out;
    rc = -EBADMSG;
    const struct gd_bundle_file *ef = entry ? gd_bundle_find(b, entry) : NULL;
    if (!ef || ef->arch[0] || ef->test) {
        gd_err_set(err, -EBADMSG, "manifest: entry '%.80s' is not a policy file of the bundle",
                   entry ? entry : "(none)");
        goto out;
    }
    if (!(b->entry = strdup(entry))) {
        rc = gd_err_set(err, -ENOMEM, "out of memory");
        goto out;
    }
    if (v->now && b->info.expires <= v->now) {
        char ts[40];
        time_t t = (time_t)b->info.expires;
        struct tm tm;
        strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%SZ", gmtime_r(&t, &tm));
        gd_err_set(err, -EKEYEXPIRED, "bundle %s revision %lld expired at %s", b->name,
                   b->info.revision, ts);
        goto out;
    }
    if (v->version && gd_bundle_version_cmp(ming, v->version) > 0) {
        gd_err_set(err, -EPROTO, "bundle %s needs gondolin %s or newer (this is %s)", b->name, ming,
                   v->version);
        goto out;
    }
    rc = 0;
out:
    cJSON_Delete(m);
    return rc;
}

/* entries from off to the end: each one a file of the manifest, once, whole */
static int read_entries(gd_bundle *b, size_t off, struct gd_err *err)
{
    size_t seen = 0;
    while (off < b->len) {
        if (b->len - off < 2)
            return gd_err_set(err, -EBADMSG, "bundle truncated in an entry header");
        size_t nl = (size_t)gd__be_get(b->buf + off, 2);
        off += 2;
        if (!nl || nl > GD_BUNDLE_MAX_PATH || b->len - off < nl + 9)
            return gd_err_set(err, -EBADMSG, "bundle entry header out of range");
        char name[GD_BUNDLE_MAX_PATH + 1];
        memcpy(name, b->buf + off, nl);
        name[nl] = 0;
        off += nl;
        unsigned type = b->buf[off];
        uint64_t size = gd__be_get(b->buf + off + 1, 8);
        off += 9;
        if (memchr(name, 0, nl) || !gd_bundle_path_ok(name))
            return gd_err_set(err, -EBADMSG, "bundle entry '%.80s' is not a plain relative name",
                              name);
        if (type != 0)
            return gd_err_set(err, -EBADMSG,
                              "bundle entry %s is not a regular file (type %u: links and "
                              "devices are refused)",
                              name, type);
        struct gd_bundle_file *f = find_mut(b, name);
        if (!f)
            return gd_err_set(err, -EBADMSG, "bundle entry %s is not in the manifest", name);
        if (f->data)
            return gd_err_set(err, -EBADMSG, "bundle entry %s appears twice", name);
        if (size <= f->size && size > b->len - off)
            return gd_err_set(err, -EBADMSG, "bundle entry %s is cut short", name);
        if (size != f->size)
            return gd_err_set(err, -EBADMSG,
                              "bundle entry %s has size %llu, the manifest says %llu", name,
                              (unsigned long long)size, (unsigned long long)f->size);
        char hex[65];
        gd_sha256_hex(b->buf + off, (size_t)size, hex);
        if (strcmp(hex, f->sha256))
            return gd_err_set(err, -EBADMSG,
                              "bundle entry %s does not match its sha256 in the manifest", name);
        f->data = b->buf + off;
        off += (size_t)size;
        seen++;
    }
    if (seen != b->nfiles)
        for (size_t i = 0; i < b->nfiles; i++)
            if (!b->files[i].data)
                return gd_err_set(err, -EBADMSG, "bundle lacks %s, which the manifest lists",
                                  b->files[i].path);
    return 0;
}

int gd_bundle_open_mem(const void *p, size_t n, const struct gd_bundle_verify *v, gd_bundle **out,
                       struct gd_err *err)
{
    if (n > GD_BUNDLE_MAX_SIZE)
        return gd_err_set(err, -EFBIG, "bundle is larger than %u MiB", GD_BUNDLE_MAX_SIZE >> 20);
    if (n < 12 || memcmp(p, GD_BUNDLE_MAGIC, 8))
        return gd_err_set(err, -EBADMSG, "not a gondolin bundle (bad magic)");
    gd_bundle *b = calloc(1, sizeof(*b));
    if (!b || !(b->buf = malloc(n))) {
        free(b);
        return gd_err_set(err, -ENOMEM, "out of memory");
    }
    memcpy(b->buf, p, n);
    b->len = n;
    size_t ml = (size_t)gd__be_get(b->buf + 8, 4), off = 0;
    int rc;
    if (!ml || ml > GD_BUNDLE_MAX_MANIFEST || ml > n - 12) {
        rc = gd_err_set(err, -EBADMSG, "bundle manifest length out of range");
        goto fail;
    }
    b->info.manifest = b->buf + 12;
    b->info.manifest_len = ml;
    if ((rc = check_sigs(b, 12 + ml, v, &off, err)) || (rc = parse_manifest(b, v, err)) ||
        (rc = read_entries(b, off, err)))
        goto fail;
    b->info.name = b->name;
    b->info.min_gondolin = b->min_gondolin;
    b->info.entry = b->entry;
    b->info.files = b->files;
    b->info.nfiles = b->nfiles;
    b->info.signers = b->signers;
    *out = b;
    return 0;
fail:
    gd_bundle_free(b);
    return rc;
}

int gd_bundle_open(const char *path, const struct gd_bundle_verify *v, gd_bundle **out,
                   struct gd_err *err)
{
    char *buf;
    size_t n;
    int rc = gd_read_file(path, GD_BUNDLE_MAX_SIZE, &buf, &n);
    if (rc)
        return gd_err_set(err, rc, "cannot read bundle %s: %s", path, strerror(-rc));
    rc = gd_bundle_open_mem(buf, n, v, out, err);
    free(buf);
    if (rc)
        gd_err_prefix(err, "%s: ", path);
    return rc;
}
