/* target.c - what a request names: the authority (host[:port]) and the origin-form
 * target, checked and put in canonical form before any policy reads them. Pure
 * functions over guest bytes (fuzzed through the proxy and unit-tested directly). */
#define _GNU_SOURCE
#include "http/http_int.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* A DNS name as policy compares it: labels of 1..63 letters, digits, '-' or '_',
 * separated by single dots, at most 253 bytes, no leading or trailing dot. */
static int valid_name(const char *h)
{
    size_t n = strlen(h), label = 0;
    if (!n || n > 253)
        return 0;
    for (const char *c = h; *c; c++) {
        if (*c == '.') {
            if (!label)
                return 0;
            label = 0;
            continue;
        }
        if (!((*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') || *c == '-' || *c == '_'))
            return 0;
        if (++label > 63)
            return 0;
    }
    return label > 0;
}

int gd__split_hostport(const char *s, size_t len, char **host, unsigned *port, unsigned dflt)
{
    char tmp[300];
    if (!len || len >= sizeof(tmp) || memchr(s, 0, len))
        return -1;
    memcpy(tmp, s, len);
    tmp[len] = 0;
    char *h = tmp, *ps = NULL;
    int v6 = 0;
    if (*h == '[') {
        char *e = strchr(h, ']');
        if (!e)
            return -1;
        *e = 0;
        h++;
        if (e[1] == ':')
            ps = e + 2;
        else if (e[1])
            return -1;
        v6 = 1;
    } else {
        char *c = strchr(h, ':');
        if (c) {
            *c = 0;
            ps = c + 1;
        }
    }
    *port = dflt;
    if (ps) {
        unsigned long v = 0;
        if (!*ps || strlen(ps) > 5)
            return -1;
        for (const char *c = ps; *c; c++) {
            if (*c < '0' || *c > '9')
                return -1;
            v = v * 10 + (unsigned long)(*c - '0');
        }
        if (v == 0 || v > 65535)
            return -1;
        *port = (unsigned)v;
    }
    for (char *c = h; *c; c++)
        if (*c >= 'A' && *c <= 'Z')
            *c += 32;
    if (v6) {
        struct in6_addr a;
        if (inet_pton(AF_INET6, h, &a) != 1)
            return -1;
    } else {
        size_t hl = strlen(h);
        if (hl && h[hl - 1] == '.')
            h[hl - 1] = 0; /* "example.com." is example.com; "example.com.." is nothing */
        if (!valid_name(h))
            return -1;
    }
    *host = strdup(h);
    return *host ? 0 : -1;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static int unreserved(int c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '.' || c == '_' || c == '~';
}

/* Is segment [s, e) "." or ".." (what RFC 3986 §5.2.4 removes)? 1 or 2, else 0. */
static int dot_segment(const char *s, const char *e)
{
    if (e - s == 1 && s[0] == '.')
        return 1;
    if (e - s == 2 && s[0] == '.' && s[1] == '.')
        return 2;
    return 0;
}

int gd_http_normalize_target(const char *in, char **out)
{
    *out = NULL;
    if (!strcmp(in, "*")) {
        *out = strdup("*");
        return *out ? 0 : -ENOMEM;
    }
    if (in[0] != '/')
        return -EINVAL;
    size_t plen = strcspn(in, "?#");
    const char *query = in[plen] == '?' ? in + plen : NULL;
    size_t qlen = query ? strcspn(query, "#") : 0;
    /* 1. decode what needs no encoding; every other escape in upper-case hex */
    char *dec = malloc(plen + 1);
    if (!dec)
        return -ENOMEM;
    size_t n = 0;
    for (size_t i = 0; i < plen; i++) {
        unsigned char c = (unsigned char)in[i];
        if (c <= ' ' || c >= 127) {
            free(dec);
            return -EINVAL;
        }
        if (c != '%') {
            dec[n++] = (char)c;
            continue;
        }
        int hi = i + 2 < plen ? hexval(in[i + 1]) : -1;
        int lo = hi >= 0 ? hexval(in[i + 2]) : -1;
        if (hi < 0 || lo < 0) {
            free(dec);
            return -EINVAL;
        }
        int v = hi * 16 + lo;
        i += 2;
        if (unreserved(v)) {
            dec[n++] = (char)v;
        } else { /* an escape is never longer than what it replaces */
            static const char hx[] = "0123456789ABCDEF";
            dec[n++] = '%';
            dec[n++] = hx[v >> 4];
            dec[n++] = hx[v & 15];
        }
    }
    dec[n] = 0;
    /* 2. remove dot segments: a stack of segment starts in the output */
    char *o = malloc(n + 1 + qlen + 1);
    if (!o) {
        free(dec);
        return -ENOMEM;
    }
    size_t on = 0;
    const char *p = dec, *end = dec + n;
    while (p < end) { /* p points at a '/' */
        const char *s = p + 1, *e = s;
        while (e < end && *e != '/')
            e++;
        int d = dot_segment(s, e);
        if (d == 2) {
            while (on > 0 && o[on - 1] != '/')
                on--;
            if (on > 0)
                on--; /* drop the previous segment and its '/' */
        }
        if (d) {
            if (e == end)
                o[on++] = '/'; /* "/a/." and "/a/.." end in a directory */
        } else {
            memcpy(o + on, p, (size_t)(e - p));
            on += (size_t)(e - p);
        }
        p = e;
    }
    if (!on)
        o[on++] = '/';
    if (query) {
        memcpy(o + on, query, qlen);
        on += qlen;
    }
    o[on] = 0;
    free(dec);
    *out = o;
    return 0;
}

int gd_http_path_ambiguous(const char *target)
{
    size_t plen = strcspn(target, "?");
    for (size_t i = 0; i < plen; i++) {
        if (target[i] == '\\')
            return 1;
        if (target[i] == '%' && i + 2 < plen &&
            (!strncmp(target + i, "%2F", 3) || !strncmp(target + i, "%5C", 3) ||
             !strncmp(target + i, "%00", 3) || !strncmp(target + i, "%2f", 3) ||
             !strncmp(target + i, "%5c", 3)))
            return 1;
        /* "..;x" and ".;x": servlet containers read them as dot segments */
        if (target[i] == '/' && target[i + 1] == '.' &&
            (target[i + 2] == ';' || (target[i + 2] == '.' && target[i + 3] == ';')))
            return 1;
    }
    return 0;
}

/* tchar (RFC 9110 §5.6.2): visible ASCII but delimiters */
static const unsigned char tchar[256] = {
    ['!'] = 1, ['#'] = 1, ['$'] = 1, ['%'] = 1, ['&'] = 1, ['\''] = 1, ['*'] = 1, ['+'] = 1,
    ['-'] = 1, ['.'] = 1, ['^'] = 1, ['_'] = 1, ['`'] = 1, ['|'] = 1,  ['~'] = 1, ['0'] = 1,
    ['1'] = 1, ['2'] = 1, ['3'] = 1, ['4'] = 1, ['5'] = 1, ['6'] = 1,  ['7'] = 1, ['8'] = 1,
    ['9'] = 1, ['A'] = 1, ['B'] = 1, ['C'] = 1, ['D'] = 1, ['E'] = 1,  ['F'] = 1, ['G'] = 1,
    ['H'] = 1, ['I'] = 1, ['J'] = 1, ['K'] = 1, ['L'] = 1, ['M'] = 1,  ['N'] = 1, ['O'] = 1,
    ['P'] = 1, ['Q'] = 1, ['R'] = 1, ['S'] = 1, ['T'] = 1, ['U'] = 1,  ['V'] = 1, ['W'] = 1,
    ['X'] = 1, ['Y'] = 1, ['Z'] = 1, ['a'] = 1, ['b'] = 1, ['c'] = 1,  ['d'] = 1, ['e'] = 1,
    ['f'] = 1, ['g'] = 1, ['h'] = 1, ['i'] = 1, ['j'] = 1, ['k'] = 1,  ['l'] = 1, ['m'] = 1,
    ['n'] = 1, ['o'] = 1, ['p'] = 1, ['q'] = 1, ['r'] = 1, ['s'] = 1,  ['t'] = 1, ['u'] = 1,
    ['v'] = 1, ['w'] = 1, ['x'] = 1, ['y'] = 1, ['z'] = 1};

int gd__token(const char *s)
{
    if (!*s)
        return 0;
    for (; *s; s++)
        if (!tchar[(unsigned char)*s])
            return 0;
    return 1;
}
