/*
 * fetch.c - HTTP(S) downloads for package indexes, packages and OCI blobs (libcurl).
 *
 * Small documents (indexes, manifests, tokens) come back in memory with a size cap;
 * files go to DEST.part-PID, are hashed while they stream, and are renamed into place
 * only when the expected sha256 matches, so the cache never holds a wrong file.
 */
#define _GNU_SOURCE
#include "builder.h"

#include <curl/curl.h>
#include <errno.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

struct sink {
    char *buf;
    size_t len, cap, max;
    FILE *f;
    EVP_MD_CTX *md;
    int too_big;
    struct gd_progress *pr;
    uint64_t got;
    struct gd_http_resp *r;
};

static size_t on_data(char *p, size_t sz, size_t nm, void *ud)
{
    struct sink *s = ud;
    size_t n = sz * nm;
    if (s->f) {
        if (fwrite(p, 1, n, s->f) != n)
            return 0;
        EVP_DigestUpdate(s->md, p, n);
        s->got += n;
        if (s->pr)
            gd_progress_update(s->pr, s->got);
        return n;
    }
    if (s->len + n > s->max) {
        s->too_big = 1;
        return 0;
    }
    if (s->len + n + 1 > s->cap) {
        size_t nc = (s->len + n + 1) * 2;
        char *nb = realloc(s->buf, nc);
        if (!nb)
            return 0;
        s->buf = nb;
        s->cap = nc;
    }
    memcpy(s->buf + s->len, p, n);
    s->len += n;
    s->buf[s->len] = 0;
    return n;
}

static void keep_header(char **dst, const char *line, size_t n, const char *name)
{
    size_t l = strlen(name);
    if (n <= l + 1 || strncasecmp(line, name, l) || line[l] != ':')
        return;
    const char *v = line + l + 1;
    while (*v == ' ')
        v++;
    size_t vl = n - (size_t)(v - line);
    while (vl && (v[vl - 1] == '\r' || v[vl - 1] == '\n'))
        vl--;
    free(*dst);
    *dst = strndup(v, vl);
}

static size_t on_header(char *p, size_t sz, size_t nm, void *ud)
{
    struct sink *s = ud;
    size_t n = sz * nm;
    if (s->r) {
        keep_header(&s->r->www_auth, p, n, "WWW-Authenticate");
        keep_header(&s->r->content_type, p, n, "Content-Type");
        keep_header(&s->r->digest, p, n, "Docker-Content-Digest");
    }
    return n;
}

static CURL *easy(const char *url, const char *const *headers, struct curl_slist **hl,
                  struct sink *s)
{
    CURL *c = curl_easy_init();
    if (!c)
        return NULL;
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 1L);
    curl_easy_setopt(c, CURLOPT_MAXREDIRS, 5L);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, 30L);
    curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, 60L);
    curl_easy_setopt(c, CURLOPT_USERAGENT, "gondolin-build/1");
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, s);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, s);
    const char *ca = getenv("GONDOLIN_BUILD_CA");
    if (ca && *ca)
        curl_easy_setopt(c, CURLOPT_CAINFO, ca);
    *hl = NULL;
    for (size_t i = 0; headers && headers[i]; i++)
        *hl = curl_slist_append(*hl, headers[i]);
    if (*hl)
        curl_easy_setopt(c, CURLOPT_HTTPHEADER, *hl);
    return c;
}

void gd_http_resp_free(struct gd_http_resp *r)
{
    free(r->body);
    free(r->www_auth);
    free(r->content_type);
    free(r->digest);
    memset(r, 0, sizeof(*r));
}

int gd_http_get(const char *url, const char *const *headers, size_t max, struct gd_http_resp *r,
                struct gd_err *err)
{
    memset(r, 0, sizeof(*r));
    struct sink s = {.max = max, .r = r};
    struct curl_slist *hl;
    CURL *c = easy(url, headers, &hl, &s);
    if (!c)
        return gd_err_set(err, -ENOMEM, "out of memory");
    CURLcode cc = curl_easy_perform(c);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r->status);
    curl_easy_cleanup(c);
    curl_slist_free_all(hl);
    r->body = s.buf;
    r->len = s.len;
    if (s.too_big)
        return gd_err_set(err, -EFBIG, "%s: response larger than %zu bytes", url, max);
    if (cc != CURLE_OK)
        return gd_err_set(err, -EIO, "%s: %s", url, curl_easy_strerror(cc));
    if (!r->body) {
        r->body = calloc(1, 1);
        if (!r->body)
            return gd_err_set(err, -ENOMEM, "out of memory");
    }
    return 0;
}

int gd_fetch_file(const char *url, const char *const *headers, const char *dest, const char *sha256,
                  const char *label, struct gd_err *err)
{
    char hex[65];
    if (sha256 && access(dest, R_OK) == 0 && gd_sha256_file(dest, hex) == 0 && !strcmp(hex, sha256))
        return 0; /* cached and intact */
    char part[4200];
    snprintf(part, sizeof(part), "%s.part-%d", dest, (int)getpid());
    FILE *f = fopen(part, "we");
    if (!f)
        return gd_err_set(err, -errno, "cannot write %s: %s", part, strerror(errno));
    struct gd_progress pr;
    gd_progress_begin(&pr, label, 0, 1);
    struct sink s = {.f = f, .md = EVP_MD_CTX_new(), .pr = &pr};
    EVP_DigestInit_ex(s.md, EVP_sha256(), NULL);
    struct curl_slist *hl;
    CURL *c = easy(url, headers, &hl, &s);
    long status = 0;
    CURLcode cc = CURLE_FAILED_INIT;
    if (c) {
        cc = curl_easy_perform(c);
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
        curl_easy_cleanup(c);
    }
    curl_slist_free_all(hl);
    unsigned char md[32];
    unsigned ml;
    EVP_DigestFinal_ex(s.md, md, &ml);
    EVP_MD_CTX_free(s.md);
    int ok = fclose(f) == 0;
    gd_hex(md, 32, hex);
    int rc = 0;
    if (cc != CURLE_OK)
        rc = gd_err_set(err, -EIO, "%s: %s", url, curl_easy_strerror(cc));
    else if (status != 200)
        rc = gd_err_set(err, -EIO, "%s: HTTP %ld", url, status);
    else if (!ok)
        rc = gd_err_set(err, -EIO, "cannot write %s", part);
    else if (sha256 && strcmp(hex, sha256))
        rc = gd_err_set(err, -EBADMSG, "%s: sha256 mismatch: expected %s, got %s: refusing it",
                        label, sha256, hex);
    else if (rename(part, dest))
        rc = gd_err_set(err, -errno, "cannot store %s: %s", dest, strerror(errno));
    if (rc)
        unlink(part);
    gd_progress_end(&pr, rc ? "failed" : "done");
    return rc;
}
