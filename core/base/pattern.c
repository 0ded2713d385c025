/* pattern.c - host pattern matching (see pattern.h). */
#include "base/pattern.h"

#include <errno.h>
#include <string.h>
#include <strings.h>

int gd_host_match(const char *pat, const char *host)
{
    size_t hl = strlen(host);
    if (hl && host[hl - 1] == '.')
        hl--;
    if (!strcmp(pat, "*"))
        return hl > 0;
    if (!strncmp(pat, "*.", 2)) {
        size_t sl = strlen(pat + 1); /* ".example.com" */
        return hl > sl && !strncasecmp(host + hl - sl, pat + 1, sl);
    }
    return strlen(pat) == hl && !strncasecmp(pat, host, hl);
}

int gd_host_pattern_check(const char *p)
{
    if (!strcmp(p, "*"))
        return 0;
    if (!strncmp(p, "*.", 2))
        p += 2;
    if (!*p || strlen(p) > 253)
        return -EINVAL;
    for (; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '-' || *p == '.' || *p == '_' || *p == ':'))
            return -EINVAL;
    return 0;
}

int gd_path_match(const char *prefix, const char *target)
{
    size_t pl = strlen(prefix);
    if (pl && prefix[pl - 1] == '*')
        return !strncmp(target, prefix, pl - 1);
    if (strncmp(target, prefix, pl))
        return 0;
    if (pl && prefix[pl - 1] == '/')
        return 1;
    char next = target[pl];
    return next == 0 || next == '/' || next == '?';
}
