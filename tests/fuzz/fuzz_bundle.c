/* libFuzzer target: the bundle reader (core/bundle/reader.c), which reads files that
 * anyone may have made or changed. Each input is read twice: with an empty trust set
 * (it must be refused: nothing is trusted) and without a trust decision (signatures
 * checked against their own keys, then the manifest and the entries are parsed, which
 * reaches the parsers past the signature check). What opens must be self-consistent. */
#include "bundle/bundle.h"

#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n);

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n)
{
    struct gd_bundle_trust none = {0};
    struct gd_bundle_verify strict = {.trust = &none, .now = 1, .version = "0.1.0"};
    struct gd_bundle_verify any = {0};
    gd_bundle *b = NULL;
    struct gd_err err = {{0}};
    if (gd_bundle_open_mem(d, n, &strict, &b, &err) == 0)
        __builtin_trap(); /* nothing is trusted: nothing may open */
    if (gd_bundle_open_mem(d, n, &any, &b, &err) == 0) {
        const struct gd_bundle_info *in = gd_bundle_info(b);
        if (!gd_bundle_find(b, in->entry) || in->nfiles > GD_BUNDLE_MAX_FILES)
            __builtin_trap();
        for (size_t i = 0; i < in->nfiles; i++)
            if (!gd_bundle_path_ok(in->files[i].path) || !in->files[i].data ||
                in->files[i].size > n)
                __builtin_trap();
        gd_bundle_free(b);
    }
    return 0;
}
