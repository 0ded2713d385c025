/*
 * oci.c - OCI images as the rootfs, without Docker or Podman.
 *
 * Registry images come over the Registry HTTP API v2 (anonymous bearer tokens from
 * the WWW-Authenticate challenge, manifest lists / OCI indexes resolved to the wanted
 * platform, every manifest and blob checked against its sha256 digest); "oci:DIR[:TAG]"
 * reads an OCI image layout and "docker-archive:FILE" a `docker save` tarball. Blobs
 * are cached by digest under <cache>/blobs/sha256. Layers are applied bottom-up with
 * whiteouts; owners and modes go to the tree's table (tree.c).
 */
#define _GNU_SOURCE
#include "builder.h"
#include "config.h"

#include <archive.h>
#include <archive_entry.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#define MANIFEST_MAX (4u << 20)

static const char *accept_hdr = "Accept: application/vnd.oci.image.index.v1+json, "
                                "application/vnd.docker.distribution.manifest.list.v2+json, "
                                "application/vnd.oci.image.manifest.v1+json, "
                                "application/vnd.docker.distribution.manifest.v2+json";

struct ref {
    char registry[256], repo[512], tag[128], digest[80];
    char base[400]; /* scheme://host */
};

static int parse_ref(const char *s, struct ref *r)
{
    memset(r, 0, sizeof(*r));
    char buf[1024];
    snprintf(buf, sizeof(buf), "%s", s);
    char *at = strchr(buf, '@');
    if (at) {
        *at = 0;
        snprintf(r->digest, sizeof(r->digest), "%s", at + 1);
        if (strncmp(r->digest, "sha256:", 7) || strlen(r->digest) != 71)
            return -1;
    }
    char *slash = strchr(buf, '/');
    const char *rest = buf;
    if (slash && (memchr(buf, '.', (size_t)(slash - buf)) ||
                  memchr(buf, ':', (size_t)(slash - buf)) || !strncmp(buf, "localhost/", 10))) {
        snprintf(r->registry, sizeof(r->registry), "%.*s", (int)(slash - buf), buf);
        rest = slash + 1;
    } else {
        snprintf(r->registry, sizeof(r->registry), "docker.io");
    }
    char *colon = strrchr(rest, ':');
    if (colon && !strchr(colon, '/')) {
        snprintf(r->tag, sizeof(r->tag), "%s", colon + 1);
        *colon = 0;
    } else if (!r->digest[0]) {
        snprintf(r->tag, sizeof(r->tag), "latest");
    }
    if (!strcmp(r->registry, "docker.io") && !strchr(rest, '/'))
        snprintf(r->repo, sizeof(r->repo), "library/%s", rest);
    else
        snprintf(r->repo, sizeof(r->repo), "%s", rest);
    if (!r->repo[0] || strstr(r->repo, ".."))
        return -1;
    for (const char *p = r->repo; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || strchr("._-/", *p)))
            return -1;
    const char *host = !strcmp(r->registry, "docker.io") ? "registry-1.docker.io" : r->registry;
    /* plain HTTP only for a registry on this machine, as docker does */
    int local =
        !strncmp(host, "localhost", 9) || !strncmp(host, "127.", 4) || !strncmp(host, "[::1]", 5);
    snprintf(r->base, sizeof(r->base), "%s://%s", local ? "http" : "https", host);
    return 0;
}

/* "Bearer realm="x",service="y",scope="z"" -> token URL. */
static int token_url(const char *chal, char *out, size_t cap)
{
    if (strncasecmp(chal, "Bearer ", 7))
        return -1;
    char realm[1024] = "", service[256] = "", scope[512] = "";
    const char *p = chal + 7;
    while (*p) {
        while (*p == ' ' || *p == ',')
            p++;
        const char *eq = strchr(p, '=');
        if (!eq || eq[1] != '"')
            break;
        const char *q = strchr(eq + 2, '"');
        if (!q)
            break;
        char *dst = NULL;
        size_t dcap = 0;
        if ((size_t)(eq - p) == 5 && !strncmp(p, "realm", 5)) {
            dst = realm;
            dcap = sizeof(realm);
        } else if ((size_t)(eq - p) == 7 && !strncmp(p, "service", 7)) {
            dst = service;
            dcap = sizeof(service);
        } else if ((size_t)(eq - p) == 5 && !strncmp(p, "scope", 5)) {
            dst = scope;
            dcap = sizeof(scope);
        }
        if (dst)
            snprintf(dst, dcap, "%.*s", (int)(q - eq - 2), eq + 2);
        p = q + 1;
    }
    if (!realm[0] || (strncmp(realm, "https://", 8) && strncmp(realm, "http://", 7)))
        return -1;
    snprintf(out, cap, "%s?service=%s&scope=%s", realm, service, scope);
    return 0;
}

struct client {
    struct ref r;
    char auth[4096]; /* "Authorization: Bearer ..." or "" */
};

static int get(struct client *c, const char *url, const char *accept, struct gd_http_resp *resp,
               struct gd_err *err)
{
    for (int attempt = 0; attempt < 2; attempt++) {
        const char *h[3] = {accept, c->auth[0] ? c->auth : NULL, NULL};
        int rc = gd_http_get(url, h, MANIFEST_MAX, resp, err);
        if (rc)
            return rc;
        if (resp->status != 401 || attempt || !resp->www_auth)
            return 0;
        char turl[2048];
        if (token_url(resp->www_auth, turl, sizeof(turl))) {
            gd_http_resp_free(resp);
            return gd_err_set(err, -EACCES, "%s: unsupported auth challenge", url);
        }
        gd_http_resp_free(resp);
        struct gd_http_resp tr;
        if ((rc = gd_http_get(turl, NULL, 1 << 20, &tr, err)))
            return rc;
        cJSON *j = cJSON_Parse(tr.body);
        const char *tok = cJSON_GetStringValue(cJSON_GetObjectItem(j, "token"));
        if (!tok)
            tok = cJSON_GetStringValue(cJSON_GetObjectItem(j, "access_token"));
        if (tr.status != 200 || !tok || strlen(tok) > sizeof(c->auth) - 64) {
            cJSON_Delete(j);
            gd_http_resp_free(&tr);
            return gd_err_set(err, -EACCES, "%s: no token from %s", url, turl);
        }
        snprintf(c->auth, sizeof(c->auth), "Authorization: Bearer %s", tok);
        cJSON_Delete(j);
        gd_http_resp_free(&tr);
    }
    return 0;
}

/* Picks the platform's manifest digest out of an index / manifest list. */
static const char *pick_platform(const cJSON *idx, const char *platform, char *why, size_t wcap)
{
    char os[32] = "linux", arch[32] = "amd64", variant[32] = "";
    sscanf(platform, "%31[^/]/%31[^/]/%31s", os, arch, variant);
    const cJSON *ms = cJSON_GetObjectItem(idx, "manifests");
    size_t wl = 0;
    why[0] = 0;
    for (const cJSON *m = ms ? ms->child : NULL; m; m = m->next) {
        const cJSON *p = cJSON_GetObjectItem(m, "platform");
        const char *po = cJSON_GetStringValue(cJSON_GetObjectItem(p, "os"));
        const char *pa = cJSON_GetStringValue(cJSON_GetObjectItem(p, "architecture"));
        const char *pv = cJSON_GetStringValue(cJSON_GetObjectItem(p, "variant"));
        if (po && pa && wl < wcap)
            wl += (size_t)snprintf(why + wl, wcap - wl, "%s%s/%s", wl ? ", " : "", po, pa);
        if (po && pa && !strcmp(po, os) && !strcmp(pa, arch) &&
            (!variant[0] || (pv && !strcmp(pv, variant))))
            return cJSON_GetStringValue(cJSON_GetObjectItem(m, "digest"));
    }
    return NULL;
}

static int is_index(const cJSON *j)
{
    const char *mt = cJSON_GetStringValue(cJSON_GetObjectItem(j, "mediaType"));
    if (mt && (strstr(mt, "image.index") || strstr(mt, "manifest.list")))
        return 1;
    return cJSON_IsArray(cJSON_GetObjectItem(j, "manifests")) && !cJSON_GetObjectItem(j, "layers");
}

static int blob_path(const char *cache_dir, const char *digest, char *out, size_t cap)
{
    if (strncmp(digest, "sha256:", 7) || strlen(digest) != 71)
        return -1;
    for (const char *p = digest + 7; *p; p++)
        if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
            return -1;
    snprintf(out, cap, "%s/blobs/sha256/%s", cache_dir, digest + 7);
    return 0;
}

static int add_layer(struct gd_oci_image *img, const char *path)
{
    char **nv = realloc(img->layers, (img->nlayers + 1) * sizeof(char *));
    if (!nv)
        return -ENOMEM;
    img->layers = nv;
    return (img->layers[img->nlayers++] = strdup(path)) ? 0 : -ENOMEM;
}

/* Layers of a manifest, fetched (or found cached) and verified. */
static int layers_of(struct client *cl, const cJSON *man, const char *cache_dir,
                     struct gd_oci_image *img, int fetch, const char *layout, struct gd_err *err)
{
    const cJSON *ls = cJSON_GetObjectItem(man, "layers");
    if (!cJSON_IsArray(ls))
        return gd_err_set(err, -EINVAL, "%s: manifest has no layers", img->reference);
    int i = 0;
    for (const cJSON *l = ls->child; l; l = l->next, i++) {
        const char *dg = cJSON_GetStringValue(cJSON_GetObjectItem(l, "digest"));
        char path[4096], url[2048], label[64];
        if (!dg || blob_path(cache_dir, dg, path, sizeof(path)))
            return gd_err_set(err, -EINVAL, "%s: layer %d: bad digest", img->reference, i);
        snprintf(label, sizeof(label), "layer %d %.19s", i + 1, dg);
        int rc;
        if (layout) {
            char src[4096], hex[65];
            snprintf(src, sizeof(src), "%s/blobs/sha256/%s", layout, dg + 7);
            if ((rc = gd_sha256_file(src, hex)))
                return gd_err_set(err, rc, "%s: %s", src, strerror(-rc));
            if (strcmp(hex, dg + 7))
                return gd_err_set(err, -EBADMSG,
                                  "%s: layer %d: sha256 mismatch: expected %s, got %s: refusing it",
                                  img->reference, i, dg + 7, hex);
            rc = add_layer(img, src);
        } else if (!fetch) {
            char hex[65];
            if (gd_sha256_file(path, hex) || strcmp(hex, dg + 7))
                return gd_err_set(err, -ENOENT, "%s: layer %s not cached (pullPolicy never)",
                                  img->reference, dg);
            rc = add_layer(img, path);
        } else {
            snprintf(url, sizeof(url), "%s/v2/%s/blobs/%s", cl->r.base, cl->r.repo, dg);
            const char *h[] = {cl->auth[0] ? cl->auth : NULL, NULL};
            rc = gd_fetch_file(url, h, path, dg + 7, label, err);
            if (rc == -EBADMSG) {
                gd_err_prefix(err, "%s: ", img->reference);
                return rc;
            }
            if (!rc)
                rc = add_layer(img, path);
        }
        if (rc)
            return rc < 0 && !err->msg[0] ? gd_err_set(err, rc, "out of memory") : rc;
    }
    return 0;
}

static int pull_layout(const struct gd_build_config *c, const char *spec, const char *cache_dir,
                       struct gd_oci_image *img, struct gd_err *err)
{
    char dir[4096], tag[256] = "", p[4200];
    snprintf(dir, sizeof(dir), "%s", spec);
    char *colon = strrchr(dir, ':');
    if (colon && !strchr(colon, '/')) {
        snprintf(tag, sizeof(tag), "%s", colon + 1);
        *colon = 0;
    }
    if (dir[0] != '/') {
        char tmp[4096];
        snprintf(tmp, sizeof(tmp), "%s/%s", c->dir, dir);
        snprintf(dir, sizeof(dir), "%s", tmp);
    }
    snprintf(img->reference, sizeof(img->reference), "oci:%s%s%s", dir, tag[0] ? ":" : "", tag);
    size_t tlen;
    snprintf(p, sizeof(p), "%s/index.json", dir);
    char *text = NULL;
    int rc = gd_read_file(p, MANIFEST_MAX, &text, &tlen);
    if (rc)
        return gd_err_set(err, rc, "%s: %s (not an OCI layout?)", p, strerror(-rc));
    cJSON *idx = cJSON_Parse(text);
    free(text);
    const cJSON *ms = cJSON_GetObjectItem(idx, "manifests");
    const char *dg = NULL;
    for (const cJSON *m = ms ? ms->child : NULL; m && !dg; m = m->next) {
        const char *name = cJSON_GetStringValue(cJSON_GetObjectItem(
            cJSON_GetObjectItem(m, "annotations"), "org.opencontainers.image.ref.name"));
        if (!tag[0] || (name && !strcmp(name, tag)))
            dg = cJSON_GetStringValue(cJSON_GetObjectItem(m, "digest"));
    }
    cJSON *man = NULL;
    for (int depth = 0; dg && depth < 3; depth++) {
        char bp[4200], hex[65];
        if (blob_path(dir, dg, bp, sizeof(bp)))
            break;
        snprintf(bp, sizeof(bp), "%s/blobs/sha256/%s", dir, dg + 7);
        if ((rc = gd_read_file(bp, MANIFEST_MAX, &text, &tlen)))
            break;
        gd_sha256_hex(text, tlen, hex);
        if (strcmp(hex, dg + 7)) {
            free(text);
            cJSON_Delete(idx);
            return gd_err_set(err, -EBADMSG, "%s: manifest %s: sha256 mismatch", img->reference,
                              dg);
        }
        if (!depth)
            snprintf(img->digest, sizeof(img->digest), "%s", dg);
        man = cJSON_Parse(text);
        free(text);
        if (!is_index(man))
            break;
        char why[256];
        dg = pick_platform(man, c->oci.platform, why, sizeof(why));
        if (!dg) {
            cJSON_Delete(man);
            cJSON_Delete(idx);
            return gd_err_set(err, -ENOENT, "%s: no %s image (has: %s)", img->reference,
                              c->oci.platform, why);
        }
        cJSON_Delete(man);
        man = NULL;
    }
    cJSON_Delete(idx);
    if (!man)
        return gd_err_set(err, -ENOENT, "%s: no image%s%s in the layout", img->reference,
                          tag[0] ? " tagged " : "", tag);
    rc = layers_of(NULL, man, cache_dir, img, 0, dir, err);
    cJSON_Delete(man);
    return rc;
}

/* docker save: manifest.json lists the layer tar files; they are copied into the
 * blob cache under their sha256. */
static int pull_archive(const struct gd_build_config *c, const char *spec, const char *cache_dir,
                        struct gd_oci_image *img, struct gd_err *err)
{
    char file[4096];
    if (spec[0] == '/')
        snprintf(file, sizeof(file), "%s", spec);
    else
        snprintf(file, sizeof(file), "%s/%s", c->dir, spec);
    snprintf(img->reference, sizeof(img->reference), "docker-archive:%s", file);
    char tmpd[4200];
    snprintf(tmpd, sizeof(tmpd), "%s/blobs/.archive-%d", cache_dir, (int)getpid());
    gd_rm_rf(tmpd);
    gd_mkdir_p(tmpd, 0755);
    struct gd_tree t;
    gd_tree_init(&t, tmpd);
    struct gd_extract_opts o = {.label = file};
    int rc = gd_tree_extract(&t, NULL, 0, file, &o, err);
    gd_tree_free(&t);
    char *text = NULL;
    size_t tlen = 0;
    char p[4300];
    snprintf(p, sizeof(p), "%s/manifest.json", tmpd);
    if (!rc && (rc = gd_read_file(p, MANIFEST_MAX, &text, &tlen)))
        rc = gd_err_set(err, rc, "%s: no manifest.json (not a docker-archive?)", file);
    cJSON *j = text ? cJSON_Parse(text) : NULL;
    if (text) {
        char hex[65];
        gd_sha256_hex(text, tlen, hex);
        snprintf(img->digest, sizeof(img->digest), "sha256:%s", hex);
    }
    free(text);
    const cJSON *ls = cJSON_GetObjectItem(cJSON_GetArrayItem(j, 0), "Layers");
    if (!rc && !cJSON_IsArray(ls))
        rc = gd_err_set(err, -EINVAL, "%s: manifest.json lists no layers", file);
    for (const cJSON *l = ls ? ls->child : NULL; l && !rc; l = l->next) {
        const char *rel = cJSON_GetStringValue(l);
        char src[4400], hex[65], dst[4200];
        if (!rel || strstr(rel, "..") || rel[0] == '/') {
            rc = gd_err_set(err, -EINVAL, "%s: bad layer path", file);
            break;
        }
        snprintf(src, sizeof(src), "%s/%s", tmpd, rel);
        if ((rc = gd_sha256_file(src, hex))) {
            rc = gd_err_set(err, rc, "%s: layer %s missing", file, rel);
            break;
        }
        snprintf(dst, sizeof(dst), "%s/blobs/sha256/%s", cache_dir, hex);
        if (rename(src, dst) && access(dst, R_OK)) {
            rc = gd_err_set(err, -errno, "cannot store %s", dst);
            break;
        }
        rc = add_layer(img, dst);
    }
    cJSON_Delete(j);
    gd_rm_rf(tmpd);
    return rc;
}

static void ref_cache_path(const char *cache_dir, const char *image, const char *platform,
                           char *out, size_t cap)
{
    char key[1400], hex[65];
    snprintf(key, sizeof(key), "%s %s", image, platform);
    gd_sha256_hex(key, strlen(key), hex);
    snprintf(out, cap, "%s/oci-refs/%.32s.json", cache_dir, hex);
}

int gd_oci_pull(const struct gd_build_config *c, const char *cache_dir, struct gd_oci_image *img,
                struct gd_err *err)
{
    memset(img, 0, sizeof(*img));
    char p[4200];
    snprintf(p, sizeof(p), "%s/blobs/sha256", cache_dir);
    gd_mkdir_p(p, 0755);
    snprintf(p, sizeof(p), "%s/oci-refs", cache_dir);
    gd_mkdir_p(p, 0755);
    const char *spec = c->oci.image;
    if (!strncmp(spec, "oci:", 4))
        return pull_layout(c, spec + 4, cache_dir, img, err);
    if (!strncmp(spec, "docker-archive:", 15))
        return pull_archive(c, spec + 15, cache_dir, img, err);
    struct client cl = {0};
    if (parse_ref(spec, &cl.r))
        return gd_err_set(err, -EINVAL, "E017 oci.image: '%s' is not an image reference", spec);
    snprintf(img->reference, sizeof(img->reference), "%s/%s%s%s%s%s", cl.r.registry, cl.r.repo,
             cl.r.tag[0] ? ":" : "", cl.r.tag, cl.r.digest[0] ? "@" : "", cl.r.digest);

    /* pullPolicy: a cached resolution of this reference is used unless "always" */
    char rcache[4200];
    ref_cache_path(cache_dir, spec, c->oci.platform, rcache, sizeof(rcache));
    char *cached = NULL;
    size_t tlen;
    if (strcmp(c->oci.pull_policy, "always") &&
        gd_read_file(rcache, MANIFEST_MAX, &cached, &tlen) == 0) {
        cJSON *j = cJSON_Parse(cached);
        free(cached);
        const char *dg = cJSON_GetStringValue(cJSON_GetObjectItem(j, "digest"));
        const cJSON *man = cJSON_GetObjectItem(j, "manifest");
        struct gd_err e2 = {{0}};
        if (dg && man && layers_of(&cl, man, cache_dir, img, 0, NULL, &e2) == 0) {
            snprintf(img->digest, sizeof(img->digest), "%s", dg);
            cJSON_Delete(j);
            fprintf(stderr, "gondolin: build: %s: using the cached pull (%s)\n", img->reference,
                    img->digest);
            return 0;
        }
        cJSON_Delete(j);
        for (size_t i = 0; i < img->nlayers; i++)
            free(img->layers[i]);
        free(img->layers);
        img->layers = NULL;
        img->nlayers = 0;
    }
    if (!strcmp(c->oci.pull_policy, "never"))
        return gd_err_set(err, -ENOENT, "%s: not pulled yet and pullPolicy is \"never\"",
                          img->reference);

    char url[2048];
    snprintf(url, sizeof(url), "%s/v2/%s/manifests/%s", cl.r.base, cl.r.repo,
             cl.r.digest[0] ? cl.r.digest : cl.r.tag);
    struct gd_http_resp r;
    int rc = get(&cl, url, accept_hdr, &r, err);
    if (rc)
        return rc;
    cJSON *man = NULL;
    for (int depth = 0; depth < 3; depth++) {
        if (r.status != 200) {
            rc = gd_err_set(err, r.status == 404 ? -ENOENT : -EIO, "%s: HTTP %ld for %s",
                            img->reference, r.status, url);
            gd_http_resp_free(&r);
            return rc;
        }
        char hex[65], dg[80];
        gd_sha256_hex(r.body, r.len, hex);
        snprintf(dg, sizeof(dg), "sha256:%s", hex);
        const char *want = depth ? strrchr(url, '/') + 1 : cl.r.digest[0] ? cl.r.digest : NULL;
        if (want && strcmp(want, dg)) {
            rc = gd_err_set(err, -EBADMSG, "%s: manifest digest mismatch: asked %s, got %s",
                            img->reference, want, dg);
            gd_http_resp_free(&r);
            return rc;
        }
        if (!depth)
            snprintf(img->digest, sizeof(img->digest), "%s", dg);
        man = cJSON_ParseWithLength(r.body, r.len);
        gd_http_resp_free(&r);
        if (!man)
            return gd_err_set(err, -EINVAL, "%s: manifest is not JSON", img->reference);
        if (!is_index(man))
            break;
        char why[256];
        const char *pd = pick_platform(man, c->oci.platform, why, sizeof(why));
        if (!pd) {
            cJSON_Delete(man);
            return gd_err_set(err, -ENOENT, "%s: no %s image (has: %s)", img->reference,
                              c->oci.platform, why);
        }
        snprintf(url, sizeof(url), "%s/v2/%s/manifests/%s", cl.r.base, cl.r.repo, pd);
        cJSON_Delete(man);
        man = NULL;
        if ((rc = get(&cl, url, accept_hdr, &r, err)))
            return rc;
    }
    if (!man)
        return gd_err_set(err, -EINVAL, "%s: nested indexes too deep", img->reference);
    rc = layers_of(&cl, man, cache_dir, img, 1, NULL, err);
    if (!rc) {
        cJSON *j = cJSON_CreateObject();
        cJSON_AddStringToObject(j, "digest", img->digest);
        cJSON_AddItemToObject(j, "manifest", cJSON_Duplicate(man, 1));
        char *text = cJSON_PrintUnformatted(j);
        cJSON_Delete(j);
        char tmp[4300];
        snprintf(tmp, sizeof(tmp), "%s.%d", rcache, (int)getpid());
        FILE *f = text ? fopen(tmp, "we") : NULL;
        if (f) {
            fputs(text, f);
            if (fclose(f) == 0)
                rename(tmp, rcache);
        }
        free(text);
    }
    cJSON_Delete(man);
    return rc;
}

int gd_oci_extract(const struct gd_oci_image *img, struct gd_tree *t, struct gd_err *err)
{
    struct gd_progress pr;
    gd_progress_begin(&pr, "applying layers", img->nlayers, 0);
    int rc = 0;
    for (size_t i = 0; i < img->nlayers && !rc; i++) {
        const char *b = strrchr(img->layers[i], '/');
        char label[64];
        snprintf(label, sizeof(label), "layer %zu (%.12s)", i + 1, b ? b + 1 : img->layers[i]);
        struct gd_extract_opts o = {.label = label, .whiteouts = 1};
        rc = gd_tree_extract(t, NULL, 0, img->layers[i], &o, err);
        gd_progress_update(&pr, i + 1);
    }
    gd_progress_end(&pr, rc ? "failed" : "done");
    return rc;
}

void gd_oci_free(struct gd_oci_image *img)
{
    for (size_t i = 0; i < img->nlayers; i++)
        free(img->layers[i]);
    free(img->layers);
    img->layers = NULL;
    img->nlayers = 0;
}
