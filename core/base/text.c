/* text.c - edit distance for "did you mean" hints. */
#include "text.h"

#include <string.h>

static size_t lev(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la > 30 || lb > 30)
        return 99;
    size_t d[32][32];
    for (size_t i = 0; i <= la; i++)
        d[i][0] = i;
    for (size_t j = 0; j <= lb; j++)
        d[0][j] = j;
    for (size_t i = 1; i <= la; i++)
        for (size_t j = 1; j <= lb; j++) {
            size_t c = d[i - 1][j - 1] + (a[i - 1] != b[j - 1]);
            if (d[i - 1][j] + 1 < c)
                c = d[i - 1][j] + 1;
            if (d[i][j - 1] + 1 < c)
                c = d[i][j - 1] + 1;
            d[i][j] = c;
        }
    return d[la][lb];
}

const char *gd_closest(const char *word, const char *const *cands, size_t max_distance)
{
    const char *best = NULL;
    size_t bd = max_distance;
    for (const char *const *c = cands; *c; c++) {
        size_t d = lev(*c, word);
        if (d < bd) {
            bd = d;
            best = *c;
        }
    }
    return best;
}

const char *gd_flag_value(int argc, char **argv, int *i, const char *name)
{
    const char *a = argv[*i];
    size_t l = strlen(name);
    if (strncmp(a, name, l))
        return NULL;
    if (a[l] == '=')
        return a + l + 1;
    if (a[l] == 0 && *i + 1 < argc)
        return argv[++*i];
    return NULL;
}
