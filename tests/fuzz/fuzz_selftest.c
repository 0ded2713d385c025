/* libFuzzer target that fails on purpose, for tests/fuzz/test_fuzz_step.py: an input
 * starting with "CRASH" overflows a heap buffer, one starting with "LEAK" leaks. Anything
 * else is fine. It proves that a failing fuzzer fails the suite's fuzz step. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static void *sink;

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n);
int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n)
{
    if (n >= 5 && !memcmp(d, "CRASH", 5)) {
        char *p = malloc(4);
        memcpy(p, d, n); /* heap-buffer-overflow */
        free(p);
    }
    if (n >= 4 && !memcmp(d, "LEAK", 4)) {
        sink = malloc(64);
        sink = NULL; /* unreachable now */
    }
    return 0;
}
