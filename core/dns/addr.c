/*
 * addr.c - internal-range classification.
 */
#include "dns/addr.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

static const char *v4_internal(uint32_t a)
{
    static const struct {
        uint32_t net, mask;
        const char *name;
    } r[] = {
        {0x00000000, 0xff000000, "this-network (0/8)"},
        {0x0a000000, 0xff000000, "private (10/8)"},
        {0x64400000, 0xffc00000, "CGNAT (100.64/10)"},
        {0x7f000000, 0xff000000, "loopback (127/8)"},
        {0xa9fe0000, 0xffff0000, "link-local (169.254/16)"},
        {0xac100000, 0xfff00000, "private (172.16/12)"},
        {0xc0000000, 0xffffff00, "IETF reserved (192.0.0/24)"},
        {0xc0000200, 0xffffff00, "documentation (192.0.2/24)"},
        {0xc0a80000, 0xffff0000, "private (192.168/16)"},
        {0xc6120000, 0xfffe0000, "benchmark (198.18/15)"},
        {0xc6336400, 0xffffff00, "documentation (198.51.100/24)"},
        {0xcb007100, 0xffffff00, "documentation (203.0.113/24)"},
        {0xe0000000, 0xf0000000, "multicast (224/4)"},
        {0xf0000000, 0xf0000000, "reserved/broadcast (240/4)"},
    };
    for (size_t i = 0; i < sizeof(r) / sizeof(r[0]); i++)
        if ((a & r[i].mask) == r[i].net)
            return r[i].name;
    return NULL;
}

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static const char *v6_internal(const uint8_t *b)
{
    static const uint8_t zero[16];
    if (!memcmp(b, zero, 16))
        return "unspecified (::)";
    if (!memcmp(b, zero, 15) && b[15] == 1)
        return "loopback (::1)";
    if ((b[0] & 0xfe) == 0xfc)
        return "unique-local (fc00::/7)";
    if (b[0] == 0xfe && (b[1] & 0xc0) == 0x80)
        return "link-local (fe80::/10)";
    if (b[0] == 0xfe && (b[1] & 0xc0) == 0xc0)
        return "site-local (fec0::/10)";
    if (b[0] == 0xff)
        return "multicast (ff00::/8)";
    if (b[0] == 0x20 && b[1] == 0x01 && b[2] == 0x0d && b[3] == 0xb8)
        return "documentation (2001:db8::/32)";
    if (b[0] == 0x01 && !memcmp(b + 1, zero, 7))
        return "discard (100::/64)";
    /* embedded IPv4: an internal v4 in any of these forms is internal */
    static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    static const uint8_t nat64[12] = {0, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0};
    const char *w;
    if (!memcmp(b, mapped, 12) || !memcmp(b, zero, 12) || !memcmp(b, nat64, 12))
        return (w = v4_internal(be32(b + 12))) ? w : NULL;
    if (b[0] == 0 && b[1] == 0x64 && b[2] == 0xff && b[3] == 0x9b && b[4] == 0 && b[5] == 1)
        return (w = v4_internal(be32(b + 12))) ? w : NULL; /* 64:ff9b:1::/48 */
    if (b[0] == 0x20 && b[1] == 0x02)                      /* 6to4 carries v4 in bits 16..47 */
        return (w = v4_internal(be32(b + 2))) ? w : NULL;
    if (b[0] == 0x20 && b[1] == 0x01 && b[2] == 0 && b[3] == 0) { /* Teredo: ~client v4 */
        uint8_t c[4] = {(uint8_t)~b[12], (uint8_t)~b[13], (uint8_t)~b[14], (uint8_t)~b[15]};
        return (w = v4_internal(be32(c))) ? w : NULL;
    }
    return NULL;
}

const char *gd_addr_internal(const struct sockaddr *sa)
{
    if (sa->sa_family == AF_INET)
        return v4_internal(ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr));
    if (sa->sa_family == AF_INET6)
        return v6_internal(((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr);
    return "unknown address family";
}

const char *gd_addr_internal_str(const char *ip)
{
    struct sockaddr_in a4 = {.sin_family = AF_INET};
    struct sockaddr_in6 a6 = {.sin6_family = AF_INET6};
    if (inet_pton(AF_INET, ip, &a4.sin_addr) == 1)
        return gd_addr_internal((struct sockaddr *)&a4);
    if (inet_pton(AF_INET6, ip, &a6.sin6_addr) == 1)
        return gd_addr_internal((struct sockaddr *)&a6);
    return NULL;
}

void gd_addr_str(const struct sockaddr *sa, char *out, size_t cap)
{
    const void *p = sa->sa_family == AF_INET
                        ? (const void *)&((const struct sockaddr_in *)sa)->sin_addr
                        : (const void *)&((const struct sockaddr_in6 *)sa)->sin6_addr;
    if (!inet_ntop(sa->sa_family, p, out, (socklen_t)cap))
        snprintf(out, cap, "?");
}
