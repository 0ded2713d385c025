/*
 * addr.h - which addresses are "internal" (never reached unless a rule names the host).
 */
#ifndef GD_ADDR_H
#define GD_ADDR_H

#include <stddef.h>
#include <sys/socket.h>

/* If sa is internal, returns a short static name of the range ("loopback",
 * "link-local", ...), else NULL. Covers IPv4 (0/8, 10/8, 100.64/10, 127/8, 169.254/16,
 * 172.16/12, 192.0.0/24, 192.0.2/24, 192.168/16, 198.18/15, 198.51.100/24,
 * 203.0.113/24, 224/4, 240/4 incl. broadcast) and IPv6 (::, ::1, fc00::/7, fe80::/10,
 * fec0::/10, ff00::/8, 2001:db8::/32, 100::/64) plus the v4-mapped, v4-compatible,
 * NAT64 (64:ff9b::/96, 64:ff9b:1::/48), 6to4 (2002::/16) and Teredo forms of the IPv4
 * ranges. */
const char *gd_addr_internal(const struct sockaddr *sa);
/* Same, from text; NULL for internal-free and for non-literals. */
const char *gd_addr_internal_str(const char *ip);

/* Formats an address (no port) into out. */
void gd_addr_str(const struct sockaddr *sa, char *out, size_t cap);

#endif
