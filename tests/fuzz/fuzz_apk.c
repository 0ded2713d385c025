/* libFuzzer target: what the image builder parses from a package mirror: APKINDEX
 * records (and the resolver over them), gzip member boundaries, tar headers. */
#include "../../builder/builder.h"

#include <stdint.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n);
int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n)
{
    gd_apk_fuzz_one(d, n);
    return 0;
}
