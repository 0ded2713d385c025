/*
 * apk.c - Alpine packages without apk-tools: signed APKINDEX, resolution, .apk files.
 *
 * An APKINDEX.tar.gz is two gzip members: the first holds .SIGN.RSA[256].<key> (an
 * RSA signature, SHA-1 or SHA-256, over the raw bytes of the second member), the
 * second the tar with APKINDEX. An .apk is three members: signature, control (with
 * .PKGINFO) and data. The index's C: field is the SHA-1 of the control member, and
 * .PKGINFO's datahash the SHA-256 of the data member, so one trusted key covers every
 * byte we unpack. Install scripts and triggers are not run (like the reference); the
 * builder does what matters of them itself (/bin/sh, busybox links).
 */
#define _GNU_SOURCE
#include "builder.h"
#include "config.h"

#include <archive.h>
#include <archive_entry.h>
#include <errno.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

struct apkrec {
    char *name, *version, *arch, *checksum, *repo;
    char **deps, **provides;
    size_t ndeps, nprov;
    uint64_t isize;
};

struct gd_apk_db {
    struct apkrec *v;
    size_t n, cap;
    char cache[4096];
    char keys[4096];
};

static void gd_apk_close_parts(struct gd_apk_db *db);

/* ---- gzip members and tar headers ---- */

/* Length of the gzip member at the start of buf (0 if it is not a complete one). */
static size_t gz_member_len(const uint8_t *buf, size_t n)
{
    z_stream z;
    memset(&z, 0, sizeof(z));
    if (inflateInit2(&z, 16 + MAX_WBITS) != Z_OK)
        return 0;
    uint8_t out[16384];
    z.next_in = (Bytef *)buf;
    z.avail_in = (uInt)n;
    int r;
    do {
        z.next_out = out;
        z.avail_out = sizeof(out);
        r = inflate(&z, Z_NO_FLUSH);
    } while (r == Z_OK);
    size_t used = r == Z_STREAM_END ? (size_t)z.total_in : 0;
    inflateEnd(&z);
    return used;
}

static uint64_t octal(const char *p, size_t n)
{
    uint64_t v = 0;
    for (size_t i = 0; i < n && p[i] >= '0' && p[i] <= '7'; i++)
        v = v * 8 + (uint64_t)(p[i] - '0');
    return v;
}

/* Calls fn for each entry of an (uncompressed, maybe unterminated) tar in buf. */
static int tar_each(const uint8_t *buf, size_t n,
                    int (*fn)(void *ud, const char *name, const uint8_t *data, size_t len),
                    void *ud)
{
    size_t off = 0;
    while (off + 512 <= n) {
        const char *h = (const char *)buf + off;
        if (!h[0])
            break;
        char name[101];
        memcpy(name, h, 100);
        name[100] = 0;
        uint64_t sz = octal(h + 124, 12);
        off += 512;
        if (sz > n - off)
            return -EINVAL;
        int r = fn(ud, name, buf + off, (size_t)sz);
        if (r)
            return r;
        off += (size_t)((sz + 511) & ~(uint64_t)511);
    }
    return 0;
}

/* ---- signatures ---- */

struct sig {
    char key[256];
    int sha256;
    uint8_t *data;
    size_t len;
};

static int find_sig(void *ud, const char *name, const uint8_t *data, size_t len)
{
    struct sig *s = ud;
    const char *k = NULL;
    if (!strncmp(name, ".SIGN.RSA256.", 13)) {
        k = name + 13;
        s->sha256 = 1;
    } else if (!strncmp(name, ".SIGN.RSA.", 10)) {
        k = name + 10;
    }
    if (!k || s->data)
        return 0;
    snprintf(s->key, sizeof(s->key), "%s", k);
    s->data = malloc(len ? len : 1);
    if (!s->data)
        return -ENOMEM;
    memcpy(s->data, data, len);
    s->len = len;
    return 0;
}

/* Verifies the signature member (first gzip member) over `signed_part`. */
static int verify_sig(const struct gd_apk_db *db, const uint8_t *sigmember, size_t siglen,
                      const uint8_t *signed_part, size_t signed_len, const char *what,
                      struct gd_err *err)
{
    uint8_t *tar;
    size_t tn;
    if (gd_gunzip(sigmember, siglen, &tar, &tn))
        return gd_err_set(err, -EBADMSG, "%s: unreadable signature", what);
    struct sig s = {0};
    int rc = tar_each(tar, tn, find_sig, &s);
    free(tar);
    if (rc || !s.data) {
        free(s.data);
        return gd_err_set(err, -EBADMSG, "%s: not signed", what);
    }
    if (strchr(s.key, '/') || s.key[0] == '.') {
        free(s.data);
        return gd_err_set(err, -EBADMSG, "%s: bad key name in signature", what);
    }
    char kp[4500];
    snprintf(kp, sizeof(kp), "%s/%s", db->keys, s.key);
    FILE *f = fopen(kp, "re");
    if (!f) {
        free(s.data);
        return gd_err_set(err, -EPERM, "%s: signed by %s, which is not a trusted key in %s", what,
                          s.key, db->keys);
    }
    EVP_PKEY *pk = PEM_read_PUBKEY(f, NULL, NULL, NULL);
    fclose(f);
    int ok = 0;
    if (pk) {
        EVP_MD_CTX *x = EVP_MD_CTX_new();
        ok = x &&
             EVP_DigestVerifyInit(x, NULL, s.sha256 ? EVP_sha256() : EVP_sha1(), NULL, pk) == 1 &&
             EVP_DigestVerify(x, s.data, s.len, signed_part, signed_len) == 1;
        EVP_MD_CTX_free(x);
        EVP_PKEY_free(pk);
    }
    free(s.data);
    if (!ok)
        return gd_err_set(err, -EBADMSG, "%s: BAD signature (key %s): refusing it", what, s.key);
    return 0;
}

/* ---- APKINDEX ---- */

static char *dupn(const char *s, size_t n)
{
    char *r = malloc(n + 1);
    if (r) {
        memcpy(r, s, n);
        r[n] = 0;
    }
    return r;
}

static int split_words(const char *s, size_t n, char ***out, size_t *cnt)
{
    *out = NULL;
    *cnt = 0;
    size_t i = 0;
    while (i < n) {
        while (i < n && s[i] == ' ')
            i++;
        size_t j = i;
        while (j < n && s[j] != ' ')
            j++;
        if (j > i) {
            char **nv = realloc(*out, (*cnt + 1) * sizeof(char *));
            if (!nv)
                return -ENOMEM;
            *out = nv;
            if (!((*out)[(*cnt)++] = dupn(s + i, j - i)))
                return -ENOMEM;
        }
        i = j;
    }
    return 0;
}

static void rec_free(struct apkrec *r)
{
    free(r->name);
    free(r->version);
    free(r->arch);
    free(r->checksum);
    free(r->repo);
    for (size_t i = 0; i < r->ndeps; i++)
        free(r->deps[i]);
    for (size_t i = 0; i < r->nprov; i++)
        free(r->provides[i]);
    free(r->deps);
    free(r->provides);
}

/* Parses APKINDEX text into db (records without P: or V: are dropped). */
static int parse_index(struct gd_apk_db *db, const char *text, size_t n, const char *repo)
{
    struct apkrec cur = {0};
    int count = 0;
    size_t i = 0;
    for (;;) {
        size_t e = i;
        while (e < n && text[e] != '\n')
            e++;
        if (e == i || i >= n) { /* blank line or end: a record ends */
            if (cur.name && cur.version) {
                if (db->n == db->cap) {
                    size_t nc = db->cap ? db->cap * 2 : 256;
                    struct apkrec *nv = realloc(db->v, nc * sizeof(*nv));
                    if (!nv) {
                        rec_free(&cur);
                        return -ENOMEM;
                    }
                    db->v = nv;
                    db->cap = nc;
                }
                cur.repo = repo ? strdup(repo) : NULL;
                db->v[db->n++] = cur;
                count++;
            } else {
                rec_free(&cur);
            }
            memset(&cur, 0, sizeof(cur));
            if (i >= n)
                break;
        } else if (e - i >= 2 && text[i + 1] == ':') {
            const char *v = text + i + 2;
            size_t vl = e - i - 2;
            char **dst = NULL;
            switch (text[i]) {
            case 'P':
                dst = &cur.name;
                break;
            case 'V':
                dst = &cur.version;
                break;
            case 'A':
                dst = &cur.arch;
                break;
            case 'C':
                dst = &cur.checksum;
                break;
            case 'I':
                cur.isize = strtoull(v, NULL, 10);
                break;
            case 'D':
                if (!cur.deps && split_words(v, vl, &cur.deps, &cur.ndeps))
                    return -ENOMEM;
                break;
            case 'p':
                if (!cur.provides && split_words(v, vl, &cur.provides, &cur.nprov))
                    return -ENOMEM;
                break;
            }
            if (dst && !*dst && !(*dst = dupn(v, vl)))
                return -ENOMEM;
        }
        i = e + 1;
        if (e >= n)
            i = n;
    }
    return count;
}

static int count_entry(void *ud, const char *name, const uint8_t *data, size_t len)
{
    (void)name;
    (void)data;
    *(size_t *)ud += len;
    return 0;
}

int gd_apk_fuzz_one(const uint8_t *d, size_t n)
{
    /* index text with the resolver over it, the gzip member splitter, the tar walker,
     * and version comparison of the first two lines */
    struct gd_apk_db db = {0};
    int r = parse_index(&db, (const char *)d, n, NULL);
    if (r > 0) {
        const char *names[] = {db.v[0].name, NULL};
        struct gd_pkg *p = NULL;
        size_t np = 0;
        struct gd_err err;
        if (gd_apk_resolve(&db, names, &p, &np, &err) == 0)
            free(p);
        if (db.n > 1)
            gd_apk_vercmp(db.v[0].version, db.v[1].version);
    }
    gd_apk_close_parts(&db);
    size_t total = 0;
    gz_member_len(d, n);
    tar_each(d, n, count_entry, &total);
    return r;
}

/* ---- versions ---- */

static int suffix_rank(const char *s, size_t *len)
{
    static const struct {
        const char *n;
        int r;
    } sfx[] = {{"alpha", -4}, {"beta", -3}, {"pre", -2}, {"rc", -1}, {"cvs", 1},
               {"svn", 2},    {"git", 3},   {"hg", 4},   {"p", 5}};
    for (size_t i = 0; i < sizeof(sfx) / sizeof(sfx[0]); i++) {
        size_t l = strlen(sfx[i].n);
        if (!strncmp(s, sfx[i].n, l)) {
            *len = l;
            return sfx[i].r;
        }
    }
    *len = 0;
    return 0;
}

int gd_apk_vercmp(const char *a, const char *b)
{
    while (*a || *b) {
        if (*a >= '0' && *a <= '9' && *b >= '0' && *b <= '9') {
            char *ea, *eb;
            unsigned long long x = strtoull(a, &ea, 10), y = strtoull(b, &eb, 10);
            if (x != y)
                return x < y ? -1 : 1;
            a = ea;
            b = eb;
            continue;
        }
        if (*a == *b && *a) {
            a++;
            b++;
            continue;
        }
        /* "_suffix": pre-releases sort before the release, patches after */
        size_t la = 0, lb = 0;
        int ra = *a == '_' ? suffix_rank(a + 1, &la) : 0;
        int rb = *b == '_' ? suffix_rank(b + 1, &lb) : 0;
        if (*a == '_' || *b == '_') {
            if (ra != rb)
                return ra < rb ? -1 : 1;
        }
        /* end of one string: "1.2" < "1.2.1", "1.2" > "1.2_rc1", "1.2" < "1.2-r1" */
        if (!*a)
            return *b == '_' ? -rb : -1;
        if (!*b)
            return *a == '_' ? ra : 1;
        return (unsigned char)*a < (unsigned char)*b ? -1 : 1;
    }
    return 0;
}

/* "name>=1.2" -> name, op, version. op: 0 any, '<' '>' '=' 'l' (<=) 'g' (>=) '~' */
static void parse_dep(const char *d, char *name, size_t cap, int *op, const char **ver)
{
    size_t i = 0;
    while (d[i] && !strchr("<>=~", d[i]))
        i++;
    snprintf(name, cap, "%.*s", (int)i, d);
    *op = 0;
    *ver = "";
    if (!d[i])
        return;
    if (d[i] == '>' && d[i + 1] == '=') {
        *op = 'g';
        *ver = d + i + 2;
    } else if (d[i] == '<' && d[i + 1] == '=') {
        *op = 'l';
        *ver = d + i + 2;
    } else {
        *op = d[i];
        *ver = d + i + 1 + (d[i + 1] == '=' ? 1 : 0);
    }
}

static int satisfies(const char *have, int op, const char *want)
{
    if (!op || !*want)
        return 1;
    int c = gd_apk_vercmp(have, want);
    switch (op) {
    case '=':
        return c == 0;
    case '<':
        return c < 0;
    case '>':
        return c > 0;
    case 'l':
        return c <= 0;
    case 'g':
        return c >= 0;
    case '~':
        return !strncmp(have, want, strlen(want));
    }
    return 0;
}

/* The best record for a dependency: a package of that name (highest version that
 * satisfies), else one providing it (first by name, for determinism). */
static struct apkrec *find(struct gd_apk_db *db, const char *dep)
{
    char name[256];
    int op;
    const char *ver;
    parse_dep(dep, name, sizeof(name), &op, &ver);
    struct apkrec *best = NULL;
    for (size_t i = 0; i < db->n; i++) {
        struct apkrec *r = &db->v[i];
        if (!strcmp(r->name, name) && satisfies(r->version, op, ver) &&
            (!best || gd_apk_vercmp(r->version, best->version) > 0))
            best = r;
    }
    if (best)
        return best;
    for (size_t i = 0; i < db->n; i++) {
        struct apkrec *r = &db->v[i];
        for (size_t k = 0; k < r->nprov; k++) {
            char pn[256];
            int pop;
            const char *pv;
            parse_dep(r->provides[k], pn, sizeof(pn), &pop, &pv);
            if (strcmp(pn, name) || !satisfies(*pv ? pv : r->version, op, ver))
                continue;
            if (!best || strcmp(r->name, best->name) < 0)
                best = r;
        }
    }
    return best;
}

int gd_apk_exists(struct gd_apk_db *db, const char *name)
{
    return find(db, name) != NULL;
}

int gd_apk_resolve(struct gd_apk_db *db, const char *const *names, struct gd_pkg **out, size_t *n,
                   struct gd_err *err)
{
    char *chosen = calloc(db->n + 1, 1);
    size_t *queue = calloc(db->n + 1, sizeof(size_t));
    if (!chosen || !queue) {
        free(chosen);
        free(queue);
        return gd_err_set(err, -ENOMEM, "out of memory");
    }
    size_t qh = 0, qt = 0;
    int rc = 0;
    for (size_t i = 0; names[i] && !rc; i++) {
        struct apkrec *r = find(db, names[i]);
        if (!r) {
            rc = gd_err_set(err, -ENOENT, "E010 alpine: package '%s' not found in the index",
                            names[i]);
            break;
        }
        size_t k = (size_t)(r - db->v);
        if (!chosen[k]) {
            chosen[k] = 1;
            queue[qt++] = k;
        }
    }
    while (!rc && qh < qt) {
        struct apkrec *r = &db->v[queue[qh++]];
        for (size_t d = 0; d < r->ndeps && !rc; d++) {
            if (r->deps[d][0] == '!')
                continue; /* a conflict, not a need */
            struct apkrec *x = find(db, r->deps[d]);
            if (!x) {
                rc = gd_err_set(err, -ENOENT, "alpine: nothing provides '%s' (needed by %s-%s)",
                                r->deps[d], r->name, r->version);
                break;
            }
            size_t k = (size_t)(x - db->v);
            if (!chosen[k]) {
                chosen[k] = 1;
                queue[qt++] = k;
            }
        }
    }
    struct gd_pkg *v = NULL;
    if (!rc && !(v = calloc(qt + 1, sizeof(*v))))
        rc = gd_err_set(err, -ENOMEM, "out of memory");
    for (size_t i = 0; !rc && i < qt; i++) {
        struct apkrec *r = &db->v[queue[i]];
        snprintf(v[i].name, sizeof(v[i].name), "%s", r->name);
        snprintf(v[i].version, sizeof(v[i].version), "%s", r->version);
        snprintf(v[i].arch, sizeof(v[i].arch), "%s", r->arch ? r->arch : "");
        v[i].size = r->isize;
    }
    free(chosen);
    free(queue);
    if (rc) {
        free(v);
        return rc;
    }
    qsort(v, qt, sizeof(*v), gd_pkg_cmp);
    *out = v;
    *n = qt;
    return 0;
}

/* ---- fetching ---- */

static void cache_name(const char *url, char *out, size_t cap)
{
    size_t o = 0;
    for (const char *p = url; *p && o + 1 < cap; p++)
        out[o++] = (char)((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
                                  (*p >= '0' && *p <= '9') || *p == '.' || *p == '-'
                              ? *p
                              : '_');
    out[o] = 0;
}

static int index_text(void *ud, const char *name, const uint8_t *data, size_t len)
{
    char **out = ud;
    if (strcmp(name, "APKINDEX") || *out)
        return 0;
    *out = dupn((const char *)data, len);
    return *out ? 0 : -ENOMEM;
}

static int load_index(struct gd_apk_db *db, const char *base, const char *arch, struct gd_err *err)
{
    char url[2048], path[8192], cn[1024];
    snprintf(url, sizeof(url), "%s/%s/APKINDEX.tar.gz", base, arch);
    cache_name(url, cn, sizeof(cn));
    snprintf(path, sizeof(path), "%s/%s", db->cache, cn);
    struct gd_err ferr = {{0}};
    int rc = gd_fetch_file(url, NULL, path, NULL, url, &ferr);
    if (rc && access(path, R_OK)) /* offline: a cached index is still verified below */
        return gd_err_set(err, rc, "%s", ferr.msg);
    uint8_t *buf;
    size_t n;
    if ((rc = gd_read_bytes(path, &buf, &n)))
        return gd_err_set(err, rc, "%s: %s", path, strerror(-rc));
    size_t first = gz_member_len(buf, n);
    if (!first || first >= n) {
        free(buf);
        return gd_err_set(err, -EBADMSG, "%s: not a signed APKINDEX.tar.gz", url);
    }
    if ((rc = verify_sig(db, buf, first, buf + first, n - first, url, err))) {
        free(buf);
        return rc;
    }
    uint8_t *tar;
    size_t tn;
    rc = gd_gunzip(buf + first, n - first, &tar, &tn);
    free(buf);
    if (rc)
        return gd_err_set(err, -EBADMSG, "%s: corrupt index", url);
    char *text = NULL;
    rc = tar_each(tar, tn, index_text, &text);
    free(tar);
    if (rc || !text) {
        free(text);
        return gd_err_set(err, -EBADMSG, "%s: no APKINDEX inside", url);
    }
    char repo[2048];
    snprintf(repo, sizeof(repo), "%s/%s", base, arch);
    int cnt = parse_index(db, text, strlen(text), repo);
    free(text);
    if (cnt < 0)
        return gd_err_set(err, -ENOMEM, "out of memory");
    return 0;
}

int gd_apk_open(const struct gd_build_config *c, const char *cache_dir, struct gd_apk_db **out,
                struct gd_err *err)
{
    struct gd_apk_db *db = calloc(1, sizeof(*db));
    if (!db)
        return gd_err_set(err, -ENOMEM, "out of memory");
    snprintf(db->cache, sizeof(db->cache), "%s/apk", cache_dir);
    snprintf(db->keys, sizeof(db->keys), "%s",
             c->alpine.keys_dir[0] ? c->alpine.keys_dir : "/etc/apk/keys");
    int rc = gd_mkdir_p(db->cache, 0755);
    if (rc) {
        gd_apk_close(db);
        return gd_err_set(err, rc, "cannot create %s", db->cache);
    }
    struct stat st;
    if (stat(db->keys, &st) || !S_ISDIR(st.st_mode)) {
        gd_apk_close(db);
        return gd_err_set(err, -ENOENT,
                          "no trusted Alpine keys in %s: set alpine.keysDir to a directory of "
                          "the distro's .rsa.pub keys",
                          c->alpine.keys_dir[0] ? c->alpine.keys_dir : "/etc/apk/keys");
    }
    static const char *const repos[] = {"main", "community"};
    for (size_t i = 0; i < 2; i++) {
        char base[1024];
        snprintf(base, sizeof(base), "%s/%s/%s", c->alpine.mirror, c->alpine.branch, repos[i]);
        struct gd_err e2 = {{0}};
        rc = load_index(db, base, c->arch, &e2);
        /* community is optional (a private mirror may carry main only); a bad
         * signature never is */
        if (rc && (i == 0 || rc == -EBADMSG || rc == -EPERM)) {
            gd_apk_close(db);
            return gd_err_set(err, rc, "%s", e2.msg);
        }
    }
    *out = db;
    return 0;
}

static void gd_apk_close_parts(struct gd_apk_db *db)
{
    for (size_t i = 0; i < db->n; i++)
        rec_free(&db->v[i]);
    free(db->v);
    db->v = NULL;
    db->n = db->cap = 0;
}

void gd_apk_close(struct gd_apk_db *db)
{
    if (!db)
        return;
    gd_apk_close_parts(db);
    free(db);
}

/* ---- installing ---- */

struct pkginfo {
    char datahash[65];
};

static int find_pkginfo(void *ud, const char *name, const uint8_t *data, size_t len)
{
    struct pkginfo *p = ud;
    if (strcmp(name, ".PKGINFO"))
        return 0;
    const char *s = (const char *)data, *e = s + len;
    while (s < e) {
        const char *nl = memchr(s, '\n', (size_t)(e - s));
        size_t l = nl ? (size_t)(nl - s) : (size_t)(e - s);
        if (l > 11 && !strncmp(s, "datahash = ", 11))
            snprintf(p->datahash, sizeof(p->datahash), "%.*s", (int)(l - 11), s + 11);
        s += l + 1;
    }
    return 0;
}

static int install_one(struct gd_apk_db *db, const struct apkrec *r, struct gd_tree *t,
                       struct gd_err *err)
{
    char url[4096], path[8192], fn[600];
    snprintf(fn, sizeof(fn), "%s-%s.apk", r->name, r->version);
    if (strchr(fn, '/'))
        return gd_err_set(err, -EINVAL, "alpine: bad package name %s", fn);
    snprintf(url, sizeof(url), "%s/%s", r->repo, fn);
    snprintf(path, sizeof(path), "%s/%s", db->cache, fn);
    int rc = gd_fetch_file(url, NULL, path, NULL, fn, err);
    if (rc && access(path, R_OK))
        return rc;
    uint8_t *buf;
    size_t n;
    if ((rc = gd_read_bytes(path, &buf, &n)))
        return gd_err_set(err, rc, "%s: %s", path, strerror(-rc));
    /* members: [signature] control data */
    size_t m1 = gz_member_len(buf, n), m2 = m1 && m1 < n ? gz_member_len(buf + m1, n - m1) : 0;
    size_t m3 = m2 && m1 + m2 < n ? gz_member_len(buf + m1 + m2, n - m1 - m2) : 0;
    size_t coff = m1, clen = m2, doff = m1 + m2, dlen = n - m1 - m2;
    if (!m3) { /* unsigned package: control, data */
        coff = 0;
        clen = m1;
        doff = m1;
        dlen = n - m1;
    }
    rc = -EBADMSG;
    if (!clen || !dlen) {
        gd_err_set(err, rc, "%s: not an .apk", fn);
        goto out;
    }
    /* control member: SHA-1 must equal the signed index's C: (Q1 + base64) */
    unsigned char sha1[20], b64[64];
    unsigned ml;
    EVP_Digest(buf + coff, clen, sha1, &ml, EVP_sha1(), NULL);
    EVP_EncodeBlock(b64, sha1, 20);
    if (!r->checksum || strncmp(r->checksum, "Q1", 2) || strcmp(r->checksum + 2, (char *)b64)) {
        gd_err_set(err, rc, "%s: control checksum does not match the signed index: refusing it",
                   fn);
        goto out;
    }
    uint8_t *ctl;
    size_t cn;
    if (gd_gunzip(buf + coff, clen, &ctl, &cn)) {
        gd_err_set(err, rc, "%s: corrupt control member", fn);
        goto out;
    }
    struct pkginfo pi = {""};
    tar_each(ctl, cn, find_pkginfo, &pi);
    free(ctl);
    char hex[65];
    gd_sha256_hex(buf + doff, dlen, hex);
    if (!pi.datahash[0] || strcmp(pi.datahash, hex)) {
        gd_err_set(err, rc, "%s: data does not match .PKGINFO's datahash: refusing it", fn);
        goto out;
    }
    struct gd_extract_opts o = {.label = fn, .skip_dot_meta = 1};
    rc = gd_tree_extract(t, buf + doff, dlen, NULL, &o, err);
out:
    free(buf);
    return rc;
}

int gd_apk_install(struct gd_apk_db *db, const struct gd_pkg *p, size_t n, struct gd_tree *t,
                   const char *what, struct gd_err *err)
{
    struct gd_progress pr;
    gd_progress_begin(&pr, what, n, 0);
    int rc = 0;
    for (size_t i = 0; i < n && !rc; i++) {
        const struct apkrec *r = NULL;
        for (size_t k = 0; k < db->n && !r; k++)
            if (!strcmp(db->v[k].name, p[i].name) && !strcmp(db->v[k].version, p[i].version))
                r = &db->v[k];
        rc = r ? install_one(db, r, t, err)
               : gd_err_set(err, -ENOENT, "alpine: %s-%s is not in the index", p[i].name,
                            p[i].version);
        gd_progress_update(&pr, i + 1);
    }
    gd_progress_end(&pr, rc ? "failed" : "done");
    return rc;
}
