/* bundle_live.c - `--bundle https://...`: the first fetch, and live updates while a
 * sandbox runs (docs/bundles.md "Live updates"). A thread polls the URL with
 * If-None-Match every interval (with jitter) and hands new bytes to the loop; there the
 * bundle is verified exactly like at start (trust, threshold, expiry, min_gondolin,
 * rollback), its files replace the running ones, and the engine's hot reload swaps the
 * revision in (transactions in flight finish on the old one). Anything refused or failing
 * leaves the running revision in place and logs one line. */
#define _GNU_SOURCE
#include "cli.h"

#include "base/fs.h"
#include "bundle/bundle.h"

#include <curl/curl.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

struct body {
    char *p;
    size_t n;
    char etag[130];
};

static size_t on_data(char *d, size_t sz, size_t nm, void *ud)
{
    struct body *b = ud;
    size_t k = sz * nm;
    if (b->n + k > GD_BUNDLE_MAX_SIZE)
        return 0; /* too large: curl fails the transfer */
    char *q = realloc(b->p, b->n + k + 1);
    if (!q)
        return 0;
    memcpy(q + b->n, d, k);
    b->p = q;
    b->n += k;
    return k;
}

static size_t on_header(char *d, size_t sz, size_t nm, void *ud)
{
    struct body *b = ud;
    size_t k = sz * nm;
    if (k > 5 && !strncasecmp(d, "etag:", 5)) {
        size_t s = 5;
        while (s < k && (d[s] == ' ' || d[s] == '\t'))
            s++;
        size_t e = k;
        while (e > s && (d[e - 1] == '\r' || d[e - 1] == '\n' || d[e - 1] == ' '))
            e--;
        if (e - s < sizeof(b->etag))
            snprintf(b->etag, sizeof(b->etag), "%.*s", (int)(e - s), d + s);
    }
    return k;
}

int cli_bundle_is_url(const char *s)
{
    return s && (!strncmp(s, "https://", 8) || !strncmp(s, "http://", 7));
}

/* plain http only to this host's loopback (tests, `bundle serve`); else TLS, verified.
 * Parsed as curl will (a user name before '@' is not the host), with no user info. */
static int url_ok(const char *url)
{
    CURLU *u = curl_url();
    char *scheme = NULL, *host = NULL, *user = NULL, *pass = NULL;
    int ok = u && curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK &&
             curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) == CURLUE_OK &&
             curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK;
    if (ok && (curl_url_get(u, CURLUPART_USER, &user, 0) == CURLUE_OK ||
               curl_url_get(u, CURLUPART_PASSWORD, &pass, 0) == CURLUE_OK))
        ok = 0; /* credentials in a bundle URL: refused, they would go in clear text too */
    if (ok)
        ok = !strcmp(scheme, "https") ||
             (!strcmp(scheme, "http") &&
              (!strcmp(host, "127.0.0.1") || !strcmp(host, "localhost") || !strcmp(host, "[::1]")));
    curl_free(scheme);
    curl_free(host);
    curl_free(user);
    curl_free(pass);
    curl_url_cleanup(u);
    return ok;
}

/* 200: *buf (malloc'd), etag; 304: *buf NULL. Else -errno with err set. */
static int fetch(const char *url, const char *etag_in, char **buf, size_t *n, char etag[130],
                 struct gd_err *err)
{
    if (!url_ok(url))
        return gd_err_set(err, -EPROTO,
                          "%s: bundles are fetched over https (http only from "
                          "loopback)",
                          url);
    CURL *c = curl_easy_init();
    if (!c)
        return gd_err_set(err, -ENOMEM, "out of memory");
    struct body b = {0};
    struct curl_slist *h = NULL;
    char inm[160];
    if (etag_in && *etag_in) {
        snprintf(inm, sizeof(inm), "If-None-Match: %s", etag_in);
        h = curl_slist_append(h, inm);
    }
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "https,http");
    curl_easy_setopt(c, CURLOPT_REDIR_PROTOCOLS_STR, "https");
    curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 1L);
    curl_easy_setopt(c, CURLOPT_MAXREDIRS, 3L);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, 10L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 60L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, &b);
    CURLcode cc = curl_easy_perform(c);
    long status = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    int rc = 0;
    if (cc != CURLE_OK)
        rc = gd_err_set(err, -EIO, "cannot fetch %s: %s", url, curl_easy_strerror(cc));
    else if (status == 304)
        *buf = NULL;
    else if (status != 200)
        rc = gd_err_set(err, -EIO, "cannot fetch %s: HTTP status %ld", url, status);
    else {
        *buf = b.p ? b.p : calloc(1, 1);
        *n = b.n;
        b.p = NULL;
        memcpy(etag, b.etag, sizeof(b.etag));
    }
    free(b.p);
    return rc;
}

int cli_bundle_fetch(const char *url, char **buf, size_t *n, char etag[130], struct gd_err *err)
{
    int rc = fetch(url, NULL, buf, n, etag, err);
    if (!rc && !*buf)
        rc = gd_err_set(err, -EIO, "%s answered 304 to a request without an ETag", url);
    return rc;
}

/* ---- live updates ---- */

struct live {
    struct cli_policy *p;
    gd_sandbox *sb;
    uv_async_t async;
    pthread_mutex_t mu;
    int stopped;
    char url[2048];
    char etag[130];
    /* a fetch result for the loop: bytes (or NULL with err) */
    char *pending;
    size_t npending;
    char pending_etag[130];
    char pending_err[1024];
    int has_pending;
    unsigned interval_ms;
};

static void log_line(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void log_line(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("gondolin: bundle update: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static int same_layout(const struct cli_policy *p, const struct gd_bundle_info *in)
{
    if (strcmp(in->entry, p->bundle_entry))
        return 0;
    size_t np = 0;
    for (size_t i = 0; i < in->nfiles; i++)
        if (!strcmp(in->files[i].arch, gd_host_arch())) {
            int found = 0;
            for (char **q = p->bundle_plugin_names; q && *q; q++)
                found |= !strcmp(*q, in->files[i].path);
            if (!found)
                return 0;
            np++;
        }
    size_t have = 0;
    for (char **q = p->bundle_plugin_names; q && *q; q++)
        have++;
    if (np != have)
        return 0;
    /* a loaded plugin stays loaded: the engine keeps the library it has under that path,
     * so new plugin code needs a restart (the audit would name code that is not running) */
    for (size_t i = 0; i < in->nfiles; i++) {
        char path[4600], hex[65];
        if (strcmp(in->files[i].arch, gd_host_arch()))
            continue;
        snprintf(path, sizeof(path), "%s/%s", p->bundle_dir, in->files[i].path);
        if (gd_sha256_file(path, hex) || strcmp(hex, in->files[i].sha256))
            return 0;
    }
    return 1;
}

/* path's parent directories exist (0700) */
static int parent_dirs(char *path)
{
    char *slash = strrchr(path, '/');
    *slash = 0;
    int rc = gd_mkdir_p(path, 0700);
    *slash = '/';
    return rc;
}

/* What replace_files did to each file of the new revision, for restore_files. */
enum { SWAP_NONE, SWAP_PLACED = 1, SWAP_SAVED = 2 };

/* The new bundle's files take the place of the running ones, one rename each; each
 * running file is first moved into backup. done[i] says what happened to file i. */
static int replace_files(const char *stable, const char *fresh, const char *backup,
                         const struct gd_bundle_info *in, unsigned char *done, struct gd_err *err)
{
    for (size_t i = 0; i < in->nfiles; i++) {
        const struct gd_bundle_file *f = &in->files[i];
        if (f->arch[0] && strcmp(f->arch, gd_host_arch()))
            continue;
        char from[4600], to[4600], bk[4600];
        snprintf(from, sizeof(from), "%s/%s", fresh, f->path);
        snprintf(to, sizeof(to), "%s/%s", stable, f->path);
        snprintf(bk, sizeof(bk), "%s/%s", backup, f->path);
        int rc = parent_dirs(to);
        if (!rc && !(rc = parent_dirs(bk))) {
            if (!rename(to, bk))
                done[i] |= SWAP_SAVED;
            else if (errno != ENOENT)
                rc = -errno;
        }
        if (rc || rename(from, to))
            return gd_err_set(err, rc ? rc : -errno, "cannot replace %s: %s", to,
                              strerror(rc ? -rc : errno));
        done[i] |= SWAP_PLACED;
    }
    return 0;
}

/* Undoes replace_files, last file first: a placed file goes, a saved one comes back;
 * files it never reached are left alone. 0, or -1 when something could not be put back
 * (then the backup is kept: it holds the only copy). */
static int restore_files(const char *stable, const char *backup, const struct gd_bundle_info *in,
                         const unsigned char *done)
{
    int rc = 0;
    for (size_t k = in->nfiles; k-- > 0;) {
        char to[4600], bk[4600];
        snprintf(to, sizeof(to), "%s/%s", stable, in->files[k].path);
        snprintf(bk, sizeof(bk), "%s/%s", backup, in->files[k].path);
        if (done[k] & SWAP_SAVED) {
            if (rename(bk, to))
                rc = -1;
        } else if (done[k] & SWAP_PLACED) {
            unlink(to);
        }
    }
    return rc;
}

static void apply(struct live *L, const char *buf, size_t n)
{
    struct cli_policy *p = L->p;
    struct gd_err err = {{0}};
    gd_bundle *b = NULL;
    char fresh[1200] = "", backup[1300] = "", base[1024], st[4200];
    unsigned char *done = NULL;
    long long running = p->egress.bundle_revision;
    struct gd_bundle_trust t = {0};
    int rc = cli_bundle_trust(p->trust, &t);
    struct gd_bundle_verify v = {.trust = &t,
                                 .threshold = p->threshold,
                                 .now = (long long)time(NULL),
                                 .version = GD_VERSION};
    if (rc || (rc = gd_bundle_open_mem(buf, n, &v, &b, &err))) {
        log_line("%s refused, revision %lld keeps running: %s", L->url, running,
                 rc && err.msg[0] ? err.msg : "the trust roots cannot be read");
        goto out;
    }
    const struct gd_bundle_info *in = gd_bundle_info(b);
    if (strcmp(in->name, p->egress.bundle_name)) {
        log_line("%s refused, revision %lld keeps running: it is bundle %s, not %s", L->url,
                 running, in->name, p->egress.bundle_name);
        goto out;
    }
    if (in->revision == running)
        goto out;
    if (in->revision < running && !p->allow_downgrade) {
        log_line("%s refused: revision %lld is older than the running revision %lld", L->url,
                 in->revision, running);
        goto out;
    }
    if (!same_layout(p, in)) {
        log_line("%s refused, revision %lld keeps running: revision %lld changes its entry or "
                 "its plugins' files or code (restart the sandbox to use it)",
                 L->url, running, in->revision);
        goto out;
    }
    cli_bundle_state_path(st, sizeof(st));
    if (gd_bundle_state_check(st, b, p->allow_downgrade, &err) ||
        gd_session_dir(base, sizeof(base)) ||
        gd_bundle_extract(b, gd_host_arch(), base, fresh, sizeof(fresh), &err)) {
        log_line("%s refused, revision %lld keeps running: %s", L->url, running,
                 err.msg[0] ? err.msg : "no sessions directory");
        goto out;
    }
    snprintf(backup, sizeof(backup), "%s.running", fresh);
    if (!(done = calloc(in->nfiles ? in->nfiles : 1, 1))) {
        log_line("%s refused, revision %lld keeps running: out of memory", L->url, running);
        goto out;
    }
    if (replace_files(p->bundle_dir, fresh, backup, in, done, &err)) {
        if (restore_files(p->bundle_dir, backup, in, done))
            backup[0] = 0; /* kept: it holds running files that could not go back */
        log_line("%s refused, revision %lld keeps running: %s", L->url, running, err.msg);
        goto out;
    }
    char old_signers[sizeof(p->egress.bundle_signers)];
    memcpy(old_signers, p->egress.bundle_signers, sizeof(old_signers));
    cli_bundle_signers(in, p->egress.bundle_signers, sizeof(p->egress.bundle_signers));
    gd_engine *e = gd_sandbox_engine(L->sb);
    gd_engine_set_bundle(e, in->name, in->revision, p->egress.bundle_signers);
    if (gd_sandbox_reload(L->sb, &err)) {
        if (restore_files(p->bundle_dir, backup, in, done))
            backup[0] = 0;
        gd_engine_set_bundle(e, in->name, running, old_signers);
        memcpy(p->egress.bundle_signers, old_signers, sizeof(old_signers));
        log_line("revision %lld does not load, revision %lld keeps running: %s", in->revision,
                 running, err.msg);
        goto out;
    }
    p->egress.bundle_revision = in->revision;
    log_line("bundle %s revision %lld is running (was %lld; policy revision %s)", in->name,
             in->revision, running, gd_sandbox_revision(L->sb));
out:
    if (fresh[0])
        gd_rm_rf(fresh);
    if (backup[0])
        gd_rm_rf(backup);
    free(done);
    gd_bundle_trust_free(&t);
    gd_bundle_free(b);
}

static void on_async(uv_async_t *a)
{
    struct live *L = a->data;
    pthread_mutex_lock(&L->mu);
    char *buf = L->pending, msg[1024];
    size_t n = L->npending;
    int has = L->has_pending;
    memcpy(msg, L->pending_err, sizeof(msg));
    L->pending = NULL;
    L->has_pending = 0;
    pthread_mutex_unlock(&L->mu);
    if (!has)
        return;
    if (buf)
        apply(L, buf, n);
    else
        log_line("%s", msg);
    free(buf);
}

static void *poller(void *arg)
{
    struct live *L = arg;
    unsigned seed = (unsigned)time(NULL) ^ (unsigned)getpid();
    for (;;) {
        /* interval +- 20 % so a fleet does not poll in step */
        unsigned ms =
            L->interval_ms * 4 / 5 + (unsigned)(rand_r(&seed) % (L->interval_ms * 2 / 5 + 1));
        struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
        nanosleep(&ts, NULL);
        char etag[130];
        pthread_mutex_lock(&L->mu);
        int stop = L->stopped;
        memcpy(etag, L->etag, sizeof(etag));
        pthread_mutex_unlock(&L->mu);
        if (stop)
            break;
        char *buf = NULL, ne[130] = "";
        size_t n = 0;
        struct gd_err err = {{0}};
        int rc = fetch(L->url, etag, &buf, &n, ne, &err);
        if (!rc && !buf)
            continue; /* 304: unchanged */
        pthread_mutex_lock(&L->mu);
        if (L->stopped) {
            pthread_mutex_unlock(&L->mu);
            free(buf);
            break;
        }
        free(L->pending);
        L->pending = rc ? NULL : buf;
        L->npending = n;
        snprintf(L->pending_err, sizeof(L->pending_err), "%s (revision keeps running)", err.msg);
        L->has_pending = 1;
        if (!rc) /* a refused bundle is not fetched again until it changes */
            memcpy(L->etag, ne, sizeof(L->etag));
        uv_async_send(&L->async);
        pthread_mutex_unlock(&L->mu);
    }
    return NULL; /* (L stays allocated: the loop may have closed its handle already) */
}

int cli_bundle_live_start(struct cli_policy *p, uv_loop_t *loop, gd_sandbox *sb)
{
    if (!cli_bundle_is_url(p->bundle) || !p->bundle_interval_ms)
        return 0;
    struct live *L = calloc(1, sizeof(*L));
    if (!L)
        return cli_die(125, "out of memory");
    L->p = p;
    L->sb = sb;
    L->interval_ms = p->bundle_interval_ms;
    snprintf(L->url, sizeof(L->url), "%s", p->bundle);
    snprintf(L->etag, sizeof(L->etag), "%s", p->bundle_etag);
    pthread_mutex_init(&L->mu, NULL);
    uv_async_init(loop, &L->async, on_async);
    L->async.data = L;
    uv_unref((uv_handle_t *)&L->async);
    pthread_t th;
    pthread_attr_t at;
    pthread_attr_init(&at);
    pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
    int rc = pthread_create(&th, &at, poller, L);
    pthread_attr_destroy(&at);
    if (rc) {
        uv_close((uv_handle_t *)&L->async, NULL);
        return cli_die(125, "cannot start the bundle poller: %s", strerror(rc));
    }
    p->live = L;
    return 0;
}

void cli_bundle_live_stop(struct cli_policy *p)
{
    struct live *L = p->live;
    if (!L)
        return;
    pthread_mutex_lock(&L->mu);
    L->stopped = 1;
    free(L->pending);
    L->pending = NULL;
    L->has_pending = 0;
    pthread_mutex_unlock(&L->mu);
    uv_close((uv_handle_t *)&L->async, NULL);
    p->live = NULL;
}
