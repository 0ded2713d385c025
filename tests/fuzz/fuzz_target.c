/* libFuzzer target: what a request names, as the proxy canonicalises it before policy.
 * The input is a request target (first line) and a Host value (second line). Checked
 * properties, not just "no crash": a normalised target is a fixed point, has no dot
 * segments, and never grows past its input; an accepted host is a canonical name. */
#define _GNU_SOURCE
#include "base/pattern.h"
#include "http/http_int.h"

#include <stdlib.h>
#include <string.h>

static int has_dot_segment(const char *t)
{
    size_t plen = strcspn(t, "?");
    for (size_t i = 0; i < plen; i++) {
        if (t[i] != '/')
            continue;
        size_t e = i + 1;
        while (e < plen && t[e] != '/')
            e++;
        size_t n = e - i - 1;
        if ((n == 1 && t[i + 1] == '.') || (n == 2 && t[i + 1] == '.' && t[i + 2] == '.'))
            return 1;
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n);
int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n)
{
    char *in = strndup((const char *)d, n);
    if (!in)
        return 0;
    char *host = strchr(in, '\n');
    if (host)
        *host++ = 0;
    char *out = NULL;
    if (!gd_http_normalize_target(in, &out)) {
        char *again = NULL;
        if (gd_http_normalize_target(out, &again) || strcmp(out, again))
            __builtin_trap(); /* not a fixed point: policy and upstream could disagree */
        if (has_dot_segment(out))
            __builtin_trap();
        if (strlen(out) > strlen(in) + 1)
            __builtin_trap();
        (void)gd_http_path_ambiguous(out);
        (void)gd_path_match("/pub/", out);
        (void)gd_path_match("/pub", out);
        free(again);
        free(out);
    }
    if (host) {
        char *h = NULL;
        unsigned port = 0;
        if (!gd__split_hostport(host, strlen(host), &h, &port, 443)) {
            size_t hl = strlen(h);
            if (!hl || h[hl - 1] == '.' || strstr(h, "..") || !port || port > 65535)
                __builtin_trap();
            for (char *c = h; *c; c++)
                if (*c >= 'A' && *c <= 'Z')
                    __builtin_trap();
            free(h);
        }
    }
    free(in);
    return 0;
}
