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
#include <stdio.h>

struct gd_build_config;
struct gd_tree;

struct gd_build_opts {
    const char *output;    /* image directory to create (atomically replaced) */
    const char *cache_dir; /* download cache root: debs/, apk/, blobs/ below it */
    const char *guest_dir; /* directory holding the built `init` and `sandboxd` */
    int verbose;
    const char *keep_work; /* keep the rootfs and initramfs trees here (benchmarks) */
    /* postBuild.commands: boots the image in dir and runs them (the CLI provides it) */
    int (*run_commands)(void *ctx, const char *dir, const struct gd_build_config *c,
                        struct gd_err *err);
    void *ctx;
    const void *sigmask; /* during gd_build: the signal mask children should get */
    /* out */
    char build_id[37];
    double t_unpack, t_initramfs, t_ext4, t_commands;
};

/* Builds the image a config describes into o->output. 0 or a negative errno with
 * `err` (messages of config problems found late carry their E0xx code). */
int gd_build(const struct gd_build_config *c, struct gd_build_opts *o, struct gd_err *err);
/* Identity of the builder and guest sources this binary was built from (recorded in
 * manifest.json as guest.builder; a default image with another is rebuilt). */
const char *gd_builder_id(void);
/* Builds the default Debian-based image. */
int gd_build_default(struct gd_build_opts *o, struct gd_err *err);
/* Resolves everything and prints packages, sizes and steps without building. */
int gd_build_plan(const struct gd_build_config *c, const struct gd_build_opts *o, FILE *out,
                  struct gd_err *err);
/* Checks manifest.json and every asset checksum of an image directory; prints a
 * report. Returns the number of problems, or a negative errno (err set). */
int gd_build_verify(const char *dir, FILE *out, struct gd_err *err);
/* buildId: UUIDv5 over the asset checksums and arch (the reference's derivation). */
void gd_build_id(const char *kernel, const char *initramfs, const char *rootfs, const char *arch,
                 char out[37]);

/* ---- pieces, exposed for tests and benchmarks ---- */

struct gd_pkg {
    char name[128];
    char version[128];
    char arch[32];
    uint64_t size; /* installed size in bytes, when the index says */
};

/* qsort comparator: packages by name. */
int gd_pkg_cmp(const void *a, const void *b);
/* Resolves the dependency closure of `names` (NULL-terminated) as if nothing were
 * installed. *out is malloc'd; *n set. */
int gd_deb_resolve(const char *const *names, struct gd_pkg **out, size_t *n, struct gd_err *err);
/* Downloads missing packages into cache_dir; fills paths (malloc'd strings). */
int gd_deb_fetch(const struct gd_pkg *p, size_t n, const char *cache_dir, char ***paths,
                 struct gd_err *err);
/* Unpacks a .deb's data archive into root, rewriting /bin,/sbin,/lib* into /usr. */
int gd_deb_unpack(const char *deb, struct gd_tree *t, struct gd_err *err);

/* ---- progress of long steps (progress.c): a bar on a terminal, lines otherwise;
 * GONDOLIN_PROGRESS=bar|plain overrides the terminal check ---- */
struct gd_progress {
    char label[128];
    uint64_t total, done;
    int bytes, tty;
    double start, last;
};
void gd_progress_begin(struct gd_progress *p, const char *label, uint64_t total, int bytes);
void gd_progress_update(struct gd_progress *p, uint64_t done);
void gd_progress_end(struct gd_progress *p, const char *result);

/* ---- downloads (fetch.c) ---- */
struct gd_http_resp {
    long status;
    char *body; /* NUL-terminated */
    size_t len;
    char *www_auth, *content_type, *digest;
};
/* GET into memory (at most max bytes). Any HTTP status is a success here. */
int gd_http_get(const char *url, const char *const *headers, size_t max, struct gd_http_resp *r,
                struct gd_err *err);
void gd_http_resp_free(struct gd_http_resp *r);
/* GET into dest, verified against sha256 (hex) when given; a cached intact dest is
 * kept without a request. */
int gd_fetch_file(const char *url, const char *const *headers, const char *dest, const char *sha256,
                  const char *label, struct gd_err *err);

/* ---- the staging tree (tree.c) ---- */

/* What an archive said about one path: owner, type|mode, device, xattrs. */
struct gd_meta {
    char *path; /* relative to the root, no leading "/" */
    uint32_t uid, gid, mode;
    uint64_t rdev;
    char **xname;
    void **xval;
    size_t *xlen;
    size_t nx;
};

struct gd_tree {
    char root[4096];
    struct gd_meta *ent; /* open-addressing table */
    size_t cap, n;
};

struct gd_extract_opts {
    const char *label; /* for messages: the package or layer */
    int merged_usr;    /* rewrite /bin, /sbin, /lib* into /usr (Debian) */
    int skip_dot_meta; /* drop top-level dot files (.PKGINFO, .SIGN.*: apk) */
    int whiteouts;     /* OCI layer: apply .wh. entries to the layers below */
};

void gd_tree_init(struct gd_tree *t, const char *root);
void gd_tree_free(struct gd_tree *t);
const struct gd_meta *gd_tree_get(const struct gd_tree *t, const char *rel);
struct gd_meta *gd_tree_set(struct gd_tree *t, const char *rel, uint32_t uid, uint32_t gid,
                            uint32_t mode, uint64_t rdev);
/* Extracts a tar (any compression) from memory, or from `file` when not NULL. */
int gd_tree_extract(struct gd_tree *t, const void *buf, size_t n, const char *file,
                    const struct gd_extract_opts *o, struct gd_err *err);

struct gd_ext4_opts {
    uint8_t uuid[16];
    uint32_t hash_seed[4];
    uint32_t timestamp;
    const char *label;
    uint64_t size_mb;           /* fixed size, or 0: content + slack */
    const struct gd_tree *meta; /* owners/modes/devices/xattrs by path, or NULL */
    void (*progress)(void *ctx, uint64_t done, uint64_t total);
    void *progress_ctx;
};
/* After a build VM wrote to the image: every timestamp back to `ts`, mount counters
 * and times cleared, inode generations zeroed, so equal work gives equal bytes. */
int gd_ext4_normalize(const char *path, uint32_t ts, struct gd_err *err);
/* Writes the tree at src_dir into a new ext4 image at path (sized to fit). */
int gd_ext4_write(const char *src_dir, const char *path, const struct gd_ext4_opts *o,
                  struct gd_err *err);

/* Writes a newc cpio of src_dir, compressed with LZ4 in the kernel's legacy framing. */
int gd_initramfs_write(const char *src_dir, const char *path, struct gd_err *err);
/* LZ4 legacy framing, as the kernel's decompressor expects. */
int gd_lz4_legacy_compress(const uint8_t *in, size_t n, uint8_t **out, size_t *outn);
int gd_lz4_legacy_decompress(const uint8_t *in, size_t n, uint8_t **out, size_t *outn);

/* A whole file as bytes (at most 4 GiB; gd_read_file with a byte pointer). */
int gd_read_bytes(const char *path, uint8_t **buf, size_t *n);
/* gzip (one or more members) in memory -> *out (malloc'd). */
int gd_gunzip(const uint8_t *in, size_t n, uint8_t **out, size_t *outn);
/* One XZ stream in memory (trailing bytes ignored) -> *out (malloc'd). */
int gd_unxz(const uint8_t *in, size_t n, uint8_t **out, size_t *outn);
/* Extracts the uncompressed ELF vmlinux (PVH entry) from an x86 bzImage. */
int gd_kernel_extract_vmlinux(const char *bzimage, const char *out, struct gd_err *err);

/* Resolves module dependencies from .modinfo and writes the ordered load list. */
int gd_modules_resolve(const char *moddir, const char *const *wanted, char ***order, size_t *n,
                       struct gd_err *err);

/* Decompresses every .ko.gz under moddir in place (Alpine ships them compressed). */
int gd_modules_gunzip(const char *moddir);

/* ---- Alpine (apk.c) ---- */
struct gd_apk_db;
/* Fetches APKINDEX.tar.gz of main and community at the configured mirror/branch/arch,
 * checks each index's signature against the trusted keys, and parses them. */
int gd_apk_open(const struct gd_build_config *c, const char *cache_dir, struct gd_apk_db **db,
                struct gd_err *err);
void gd_apk_close(struct gd_apk_db *db);
/* Dependency closure (D:, p: with version constraints), sorted by name. */
int gd_apk_resolve(struct gd_apk_db *db, const char *const *names, struct gd_pkg **out, size_t *n,
                   struct gd_err *err);
/* 1 if the index knows the package name (or something provides it). */
int gd_apk_exists(struct gd_apk_db *db, const char *name);
/* Downloads (cached; the control checksum from the signed index and the data hash from
 * .PKGINFO are checked) and extracts packages into the tree. */
int gd_apk_install(struct gd_apk_db *db, const struct gd_pkg *p, size_t n, struct gd_tree *t,
                   const char *what, struct gd_err *err);
/* The fuzz target's entry: index parsing + resolution, gzip members, tar walking. */
int gd_apk_fuzz_one(const uint8_t *d, size_t n);
/* apk version comparison: <0, 0, >0. */
int gd_apk_vercmp(const char *a, const char *b);

/* ---- OCI (oci.c) ---- */
struct gd_oci_image {
    char reference[1024]; /* registry/repo:tag as resolved */
    char digest[80];      /* sha256:... of the manifest used */
    char **layers;        /* cached blob paths, bottom first */
    size_t nlayers;
};
/* Pulls oci.image: from a registry over the HTTP API v2 (token auth, manifest lists
 * with platform selection, digests verified), or "oci:DIR[:TAG]" (an OCI layout) or
 * "docker-archive:FILE" (docker save). Blobs are cached by digest. */
int gd_oci_pull(const struct gd_build_config *c, const char *cache_dir, struct gd_oci_image *img,
                struct gd_err *err);
int gd_oci_extract(const struct gd_oci_image *img, struct gd_tree *t, struct gd_err *err);
void gd_oci_free(struct gd_oci_image *img);

#endif
