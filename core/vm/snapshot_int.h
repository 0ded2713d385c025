/* snapshot_int.h - what the files of booted snapshots share. Internal. */
#ifndef GD_SNAPSHOT_INT_H
#define GD_SNAPSHOT_INT_H

#include <stdio.h>

#ifndef GD_VERSION
#define GD_VERSION "dev"
#endif

/* Removes the .tmp- leftovers of saves whose process is gone (SIGKILL, power loss),
 * printing each to out (if not NULL); dry_run only prints. */
void gd__bootsnap_remove_stale(const char *dir, FILE *out, int dry_run);

#endif
