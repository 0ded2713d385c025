/* glob.c - path globs for hiding (vfs.h: gd_vfs_glob_check, gd_vfs_glob_match), in the
 * manner of .gitignore: a glob without '/' matches a name at any depth; one with '/' is
 * anchored at the mount root, where "**" as a whole component matches any number of
 * components (none included). Within a component, fnmatch(3) without flags: '*', '?',
 * '[...]', '\' escapes; a leading '.' is not special. */
#define _GNU_SOURCE
#include "vfs/vfs.h"

#include <errno.h>
#include <fnmatch.h>
#include <limits.h>
#include <string.h>

int gd_vfs_glob_check(const char *g)
{
    size_t n = g ? strlen(g) : 0;
    if (n == 0 || n >= PATH_MAX || g[0] == '!')
        return -EINVAL;
    while (*g == '/')
        g++;
    if (!*g)
        return -EINVAL;
    for (const char *c = g; *c;) {
        const char *slash = strchr(c, '/');
        size_t l = slash ? (size_t)(slash - c) : strlen(c);
        if (l == 0 && slash && slash[1]) /* "a//b" */
            return -EINVAL;
        if ((l == 1 && c[0] == '.') || (l == 2 && c[0] == '.' && c[1] == '.'))
            return -EINVAL;
        if (l > NAME_MAX && strcmp(c, "**"))
            return -EINVAL;
        c = slash ? slash + 1 : c + l;
    }
    return 0;
}

static int comp_match(const char *p, size_t pl, const char *s, size_t sl)
{
    char pb[NAME_MAX + 1], sb[NAME_MAX + 1];
    if (pl > NAME_MAX || sl > NAME_MAX)
        return 0;
    memcpy(pb, p, pl);
    pb[pl] = 0;
    memcpy(sb, s, sl);
    sb[sl] = 0;
    return fnmatch(pb, sb, 0) == 0;
}

static size_t comp_len(const char *s)
{
    const char *slash = strchr(s, '/');
    return slash ? (size_t)(slash - s) : strlen(s);
}

static const char *next(const char *s, size_t l)
{
    return s[l] == '/' ? s + l + 1 : s + l;
}

/* pattern (anchored, trailing '/' dropped) against all of path; prefix: may the
 * pattern match something strictly below path instead? */
static int match_from(const char *pat, const char *path, int prefix)
{
    while (*pat == '/')
        pat++;
    if (!*pat)
        return !prefix && !*path;
    size_t pl = comp_len(pat);
    if (pl == 2 && pat[0] == '*' && pat[1] == '*') {
        const char *rest = next(pat, pl);
        if (prefix)
            return 1; /* "**" reaches anything below */
        for (;;) {
            if (match_from(rest, path, 0))
                return 1;
            if (!*path)
                return 0;
            path = next(path, comp_len(path));
        }
    }
    if (!*path)
        return prefix;
    size_t sl = comp_len(path);
    if (!comp_match(pat, pl, path, sl))
        return 0;
    return match_from(next(pat, pl), next(path, sl), prefix);
}

static int anchored(const char *g)
{
    size_t n = strlen(g);
    while (n && g[n - 1] == '/')
        n--;
    return g[0] == '/' || memchr(g, '/', n) != NULL;
}

int gd_vfs_glob_match(const char *g, const char *path)
{
    if (anchored(g)) {
        char pat[PATH_MAX];
        size_t n = strlen(g);
        while (n && g[n - 1] == '/')
            n--;
        if (n >= sizeof(pat))
            return 0;
        memcpy(pat, g, n);
        pat[n] = 0;
        return match_from(pat, path, 0);
    }
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    size_t n = strlen(g);
    while (n && g[n - 1] == '/')
        n--;
    return *base && comp_match(g, n, base, strlen(base));
}

int gd__glob_below(const char *g, const char *path)
{
    if (!anchored(g))
        return 0;
    const char *t = g;
    while (*t == '/')
        t++;
    if (!strncmp(t, "**/", 3) && !anchored(t + 3) && t[3] != '/')
        return 0; /* "**" + "/NAME" is NAME at any depth: the same wherever it moves */
    char pat[PATH_MAX];
    size_t n = strlen(g);
    while (n && g[n - 1] == '/')
        n--;
    if (n >= sizeof(pat))
        return 1;
    memcpy(pat, g, n);
    pat[n] = 0;
    return match_from(pat, path, 1);
}
