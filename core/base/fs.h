/* fs.h - small file helpers shared by the core and the builder. */
#ifndef GD_FS_H
#define GD_FS_H

#include <stddef.h>

/* sha256 of a file as 64 lowercase hex digits + NUL. 0 or negative errno. */
int gd_sha256_file(const char *path, char hex[65]);
/* sha256 of a buffer, as hex. */
void gd_sha256_hex(const void *p, size_t n, char hex[65]);
/* n bytes as lowercase hex (2n digits + NUL). */
void gd_hex(const unsigned char *p, size_t n, char *out);

/* The whole file, NUL-terminated (*buf malloc'd, *n without the NUL); -EFBIG when it
 * is larger than max. 0 or negative errno. */
int gd_read_file(const char *path, size_t max, char **buf, size_t *n);

/* Opens (creating) path and takes an exclusive flock on it: the fd, or negative errno.
 * Closing the fd releases the lock. */
int gd_lock_open(const char *path);

/* "x86_64" or "aarch64": the architecture this process runs on. */
const char *gd_host_arch(void);

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
