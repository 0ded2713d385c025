/*
 * ratelimit - a first-party gondolin plugin: per-host request rate and size limits.
 *
 *   plugins = { ratelimit = {
 *     ["api.github.com"] = { rate = 10, burst = 20 },      -- requests/second, bucket size
 *     ["*.openai.com"]   = { rate = 2, max_request_bytes = 1048576 },
 *     ["*"]              = { max_request_bytes = 16777216 },
 *   } }
 *
 * The first matching entry (exact name, then "*.suffix", then "*") applies. Over the
 * rate: 429 with Retry-After semantics in the reason; a request whose Content-Length
 * (or, without one, whose buffered body) exceeds max_request_bytes: 413. Buckets are per
 * matched host and live as long as the policy revision.
 */
#define _GNU_SOURCE
#include <gondolin/plugin.h>

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

struct rule {
    char *pattern;
    double rate, burst;  /* rate 0: no rate limit */
    long long max_bytes; /* 0: no size limit */
};

struct bucket {
    char *host;
    double tokens;
    double last;
};

struct state {
    const struct gd_host_api *api;
    struct rule *rules;
    size_t nrules;
    struct bucket *b;
    size_t nb, capb;
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int match(const char *p, const char *host)
{
    if (!strcmp(p, "*"))
        return 1;
    if (p[0] == '*' && p[1] == '.') {
        size_t pl = strlen(p + 1), hl = strlen(host);
        return hl > pl && !strcasecmp(host + hl - pl, p + 1);
    }
    return !strcasecmp(p, host);
}

static const struct rule *find(const struct state *s, const char *host)
{
    for (int pass = 0; pass < 3; pass++)
        for (size_t i = 0; i < s->nrules; i++) {
            const char *p = s->rules[i].pattern;
            int kind = !strcmp(p, "*") ? 2 : p[0] == '*' ? 1 : 0;
            if (kind == pass && match(p, host))
                return &s->rules[i];
        }
    return NULL;
}

static struct bucket *bucket(struct state *s, const char *host, const struct rule *r)
{
    for (size_t i = 0; i < s->nb; i++)
        if (!strcmp(s->b[i].host, host))
            return &s->b[i];
    if (s->nb >= 65536)
        return NULL; /* a ceiling: distinct hosts are bounded by the allowlist anyway */
    if (s->nb == s->capb) {
        size_t c = s->capb ? s->capb * 2 : 16;
        struct bucket *q = realloc(s->b, c * sizeof(*q));
        if (!q)
            return NULL;
        s->b = q;
        s->capb = c;
    }
    struct bucket *b = &s->b[s->nb];
    if (!(b->host = strdup(host)))
        return NULL;
    b->tokens = r->burst;
    b->last = now_s();
    s->nb++;
    return b;
}

static enum gd_plugin_decision on_request(gd_txn *t, unsigned phase, void *ud)
{
    struct state *s = ud;
    const struct gd_host_api *api = s->api;
    const char *host = api->txn_host(t);
    const struct rule *r = find(s, host);
    if (!r)
        return GD_PLUGIN_CONTINUE;
    char why[200];
    if (phase == GD_PLUGIN_PHASE_REQUEST_BODY) {
        size_t n;
        api->txn_body(t, &n);
        if (r->max_bytes && (long long)n > r->max_bytes) {
            snprintf(why, sizeof(why), "request body of %zu bytes exceeds %lld for %s", n,
                     r->max_bytes, r->pattern);
            return api->txn_deny(t, 413, why);
        }
        return GD_PLUGIN_CONTINUE;
    }
    if (r->rate > 0) {
        struct bucket *b = bucket(s, host, r);
        if (!b)
            return api->txn_deny(t, 429, "rate limiter is out of buckets");
        double now = now_s();
        b->tokens += (now - b->last) * r->rate;
        if (b->tokens > r->burst)
            b->tokens = r->burst;
        b->last = now;
        if (b->tokens < 1.0) {
            snprintf(why, sizeof(why), "rate limit %.3g/s (burst %.3g) for %s; retry in %.2fs",
                     r->rate, r->burst, r->pattern, (1.0 - b->tokens) / r->rate);
            return api->txn_deny(t, 429, why);
        }
        b->tokens -= 1.0;
    }
    if (r->max_bytes) {
        int64_t cl = api->txn_content_length(t, 0);
        if (cl > r->max_bytes) {
            snprintf(why, sizeof(why), "request body of %lld bytes exceeds %lld for %s",
                     (long long)cl, r->max_bytes, r->pattern);
            return api->txn_deny(t, 413, why);
        }
        const char *te = api->txn_header(t, 0, "transfer-encoding");
        if (cl < 0 && te) /* chunked: look at the whole body */
            api->txn_want_body(t);
    }
    return GD_PLUGIN_CONTINUE;
}

static void fini(void *p)
{
    struct state *s = p;
    if (!s)
        return;
    for (size_t i = 0; i < s->nrules; i++)
        free(s->rules[i].pattern);
    free(s->rules);
    for (size_t i = 0; i < s->nb; i++)
        free(s->b[i].host);
    free(s->b);
    free(s);
}

static int init(const struct gd_host_api *api, gd_plugin_host *host, const char *config,
                void **state, char *err, size_t errcap)
{
    cJSON *j = cJSON_Parse(config);
    if (!cJSON_IsObject(j)) {
        cJSON_Delete(j);
        snprintf(err, errcap, "config must be a table of host pattern = { ... }");
        return -1;
    }
    struct state *s = calloc(1, sizeof(*s));
    s->api = api;
    int n = cJSON_GetArraySize(j);
    s->rules = calloc((size_t)n + 1, sizeof(*s->rules));
    for (const cJSON *e = j->child; e; e = e->next) {
        struct rule r = {0};
        if (!cJSON_IsObject(e)) {
            snprintf(err, errcap, "%s: wants { rate = N, burst = N, max_request_bytes = N }",
                     e->string);
            goto fail;
        }
        for (const cJSON *k = e->child; k; k = k->next) {
            if (!cJSON_IsNumber(k) || k->valuedouble < 0) {
                snprintf(err, errcap, "%s.%s must be a non-negative number", e->string, k->string);
                goto fail;
            }
            if (!strcmp(k->string, "rate"))
                r.rate = k->valuedouble;
            else if (!strcmp(k->string, "burst"))
                r.burst = k->valuedouble;
            else if (!strcmp(k->string, "max_request_bytes"))
                r.max_bytes = (long long)k->valuedouble;
            else {
                snprintf(err, errcap, "%s: unknown key '%s' (rate, burst, max_request_bytes)",
                         e->string, k->string);
                goto fail;
            }
        }
        if (r.rate > 0 && r.burst < 1)
            r.burst = r.rate < 1 ? 1 : r.rate;
        r.pattern = strdup(e->string);
        s->rules[s->nrules++] = r;
    }
    cJSON_Delete(j);
    if (api->register_http_hook(
            host, "limit", GD_PLUGIN_PHASE_REQUEST | GD_PLUGIN_PHASE_REQUEST_BODY, on_request, s)) {
        snprintf(err, errcap, "cannot register the hook");
        fini(s);
        return -1;
    }
    *state = s;
    return 0;
fail:
    cJSON_Delete(j);
    fini(s);
    return -1;
}

GD_PLUGIN_EXPORT const struct gd_plugin_desc *gondolin_plugin_entry(void)
{
    static const struct gd_plugin_desc d = {
        GONDOLIN_PLUGIN_ABI_VERSION, sizeof(struct gd_plugin_desc), "ratelimit", "1.0", init, fini};
    return &d;
}
