/* fs.h - small file helpers shared by the core and the builder. */
#ifndef GD_FS_H
#define GD_FS_H

#include <stddef.h>

/* sha256 of a file as 64 lowercase hex digits + NUL. 0 or negative errno. */
int gd_sha256_file(const char *path, char hex[65]);

/* Names in a directory except "." and "..", sorted in byte order (locale-independent,
 * so builds are reproducible). *out and each name are malloc'd: gd_dir_list_free. */
int gd_dir_list(const char *path, char ***out, size_t *n);
void gd_dir_list_free(char **v, size_t n);

/* mkdir -p: creates path and its missing parents with mode. 0 or negative errno. */
int gd_mkdir_p(const char *path, unsigned mode);

/* rm -rf (does not follow symlinks). 0 or negative errno. */
int gd_rm_rf(const char *path);
/* Copies a regular file (replacing dst) and sets mode. 0 or negative errno. */
int gd_copy_file(const char *src, const char *dst, unsigned mode);

#endif
