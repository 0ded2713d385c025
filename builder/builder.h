/*
 * builder.h - builds gondolin guest images without root, loop mounts or Docker.
 *
 * Pipeline: resolve a Debian package closure (apt, against an empty dpkg status)
 * -> apt-get download into a cache -> unpack data.tar with libarchive into a staging
 * tree (merged /usr) -> do what maintainer scripts would have done where it matters
 * -> rootfs.ext4 with libext2fs, initramfs.cpio.lz4 with libarchive + liblz4, the
 * kernel as both bzImage and PVH vmlinux -> manifest.json with sha256 per asset and a
 * buildId derived from them. Every output is deterministic for the same inputs.
 */
#ifndef GD_BUILDER_H
#define GD_BUILDER_H

#include "../core/base/err.h"
#include "../core/base/fs.h"

#include <stddef.h>
#include <stdint.h>

struct gd_build_opts {
    const char *output;    /* image directory to create (atomically replaced) */
    const char *cache_dir; /* where downloaded .debs are kept */
    const char *guest_dir; /* directory holding the built `init` and `sandboxd` */
    int verbose;
};

/* Builds the default Debian-based image. Returns 0 or a negative errno with `err`. */
int gd_build_default(const struct gd_build_opts *o, struct gd_err *err);

/* ---- pieces, exposed for tests and benchmarks ---- */

struct gd_pkg {
    char name[128];
    char version[128];
    char arch[32];
};

/* Resolves the dependency closure of `names` (NULL-terminated) as if nothing were
 * installed. *out is malloc'd; *n set. */
int gd_deb_resolve(const char *const *names, struct gd_pkg **out, size_t *n, struct gd_err *err);
/* Downloads missing packages into cache_dir; fills paths (malloc'd strings). */
int gd_deb_fetch(const struct gd_pkg *p, size_t n, const char *cache_dir, char ***paths,
                 struct gd_err *err);
/* Unpacks a .deb's data archive into root, rewriting /bin,/sbin,/lib* into /usr. */
int gd_deb_unpack(const char *deb, const char *root, struct gd_err *err);

struct gd_ext4_opts {
    uint8_t uuid[16];
    uint32_t hash_seed[4];
    uint32_t timestamp;
    const char *label;
};
/* Writes the tree at src_dir into a new ext4 image at path (sized to fit). */
int gd_ext4_write(const char *src_dir, const char *path, const struct gd_ext4_opts *o,
                  struct gd_err *err);

/* Writes a newc cpio of src_dir, compressed with LZ4 in the kernel's legacy framing. */
int gd_initramfs_write(const char *src_dir, const char *path, struct gd_err *err);
/* LZ4 legacy framing, as the kernel's decompressor expects. */
int gd_lz4_legacy_compress(const uint8_t *in, size_t n, uint8_t **out, size_t *outn);
int gd_lz4_legacy_decompress(const uint8_t *in, size_t n, uint8_t **out, size_t *outn);

/* Extracts the uncompressed ELF vmlinux (PVH entry) from an x86 bzImage. */
int gd_kernel_extract_vmlinux(const char *bzimage, const char *out, struct gd_err *err);

/* Resolves module dependencies from .modinfo and writes the ordered load list. */
int gd_modules_resolve(const char *moddir, const char *const *wanted, char ***order, size_t *n,
                       struct gd_err *err);

int gd_rm_rf(const char *path);
int gd_copy_file(const char *src, const char *dst, unsigned mode);

#endif
