/* ssh_int.h - what the files of core/ssh share. */
#ifndef GD_SSH_INT_H
#define GD_SSH_INT_H

#include <stddef.h>

/* Glob of OpenSSH's patterns: '*' any run of bytes, '?' one byte, everything else
 * literal; fold: ASCII case-insensitive. Linear backtracking (one star remembered), so
 * no input is slow. 1 or 0. */
int gd__ssh_glob(const char *p, size_t pl, const char *s, size_t sl, int fold);

/* Whether ok() holds for every sep-separated piece of [s, s+n) (an empty s is one empty
 * piece). */
int gd__ssh_each(const char *s, size_t n, char sep, int (*ok)(const char *p, size_t l));

#endif
