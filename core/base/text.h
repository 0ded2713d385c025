/* text.h - small string helpers shared by the policy loader and the builder. */
#ifndef GD_TEXT_H
#define GD_TEXT_H

#include <stddef.h>

/* The candidate (NULL-ended list) closest to word by edit distance, if that distance
 * is below max_distance; for "did you mean" hints. NULL when none is close. */
const char *gd_closest(const char *word, const char *const *cands, size_t max_distance);

/* A command-line flag's value: argv[*i] is "NAME=VALUE" or "NAME" followed by VALUE
 * (then *i advances past it). NULL when argv[*i] is not NAME or its value is missing. */
const char *gd_flag_value(int argc, char **argv, int *i, const char *name);

/* "HOST:PORT", "[HOST]:PORT" when HOST is an IPv6 address, "PORT" when HOST is "". */
void gd_hostport(char *out, size_t cap, const char *host, unsigned port);

/* Whether s is a name (of a session, a checkpoint, an image ref): 1..max of
 * [A-Za-z0-9_.-], not starting with one of bad_first. */
int gd_name_ok(const char *s, size_t max, const char *bad_first);

/* The current UTC time as "2026-01-02T03:04:05.678Z" (audit records); cap >= 32. */
void gd_iso_time(char *buf, size_t cap);

#endif
