/* pattern.h - host patterns shared by allowlists, internal-range exceptions and secret
 * scopes: "example.com" (exact), "*.example.com" (any subdomain, at any depth, not the
 * apex), "*" (anything). Case-insensitive; a trailing dot on the host is ignored. */
#ifndef GD_PATTERN_H
#define GD_PATTERN_H

int gd_host_match(const char *pattern, const char *host);
/* 0 if pattern is well formed, else -EINVAL. */
int gd_host_pattern_check(const char *pattern);

/* Does a rule's path prefix match a normalised origin-form target ("/path?query")? On
 * segment boundaries: "/pub" matches "/pub", "/pub/x" and "/pub?q", never "/public";
 * "/pub/" matches what starts with "/pub/"; a prefix ending in '*' matches any text
 * that starts with what precedes the '*'. */
int gd_path_match(const char *prefix, const char *target);

#endif
