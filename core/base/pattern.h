/* pattern.h - host patterns shared by allowlists, internal-range exceptions and secret
 * scopes: "example.com" (exact), "*.example.com" (any subdomain, at any depth, not the
 * apex), "*" (anything). Case-insensitive; a trailing dot on the host is ignored. */
#ifndef GD_PATTERN_H
#define GD_PATTERN_H

int gd_host_match(const char *pattern, const char *host);
/* 0 if pattern is well formed, else -EINVAL. */
int gd_host_pattern_check(const char *pattern);

#endif
