/*
 * image.h - finding, loading and verifying guest images (manifest.json + assets).
 *
 * Lookup order: an explicit directory (--image), $GONDOLIN_GUEST_DIR, then the
 * default image under $XDG_CACHE_HOME/gondolin/images (or ~/.cache/...).
 */
#ifndef GD_IMAGE_H
#define GD_IMAGE_H

#include "base/err.h"

#include <stddef.h>

struct gd_image {
    char dir[1024];
    char arch[32];
    char build_id[65];
    char kernel[1200];  /* PVH vmlinux */
    char bzimage[1200]; /* compressed kernel */
    char initramfs[1200];
    char rootfs[1200];
    char sandboxd_sha[65]; /* agent baked into the image */
    char rootfs_mode[16];  /* runtimeDefaults.rootfsMode, "" if none */
    char builder_id[32];   /* guest.builder: sources the image was built from */
};

/* ~/.cache/gondolin (honours XDG_CACHE_HOME). */
void gd_cache_dir(char *buf, size_t cap);
void gd_image_default_dir(char *buf, size_t cap);
/* Where the guest binaries (init, sandboxd) of this gondolin build live. */
int gd_guest_bin_dir(char *buf, size_t cap);

/* Parses dir/manifest.json and checks every asset exists. With verify, checks every
 * sha256 too (skipped when a stamp shows the files are unchanged since the last full
 * check). A mismatch names the file. */
int gd_image_load(const char *dir, int verify, struct gd_image *img, struct gd_err *err);

#endif
