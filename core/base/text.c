/* text.c - edit distance for "did you mean" hints, flag values, timestamps. */
#include "text.h"

#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

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

void gd_iso_time(char *buf, size_t cap)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct tm tm;
    gmtime_r(&tv.tv_sec, &tm);
    snprintf(buf, cap, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (long)(tv.tv_usec / 1000));
}

void gd_hostport(char *out, size_t cap, const char *host, unsigned port)
{
    int v6 = strchr(host, ':') != NULL;
    snprintf(out, cap, "%s%s%s%s%u", v6 ? "[" : "", host, v6 ? "]" : "", *host ? ":" : "", port);
}

int gd_name_ok(const char *s, size_t max, const char *bad_first)
{
    size_t n = strlen(s);
    if (n < 1 || n > max || strchr(bad_first, s[0]))
        return 0;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              strchr("._-", *s)))
            return 0;
    return 1;
}
