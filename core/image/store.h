/*
 * store.h - the local image store: images by buildId, refs name:tag per arch.
 *
 * Layout (GONDOLIN_IMAGE_STORE, default <cache>/images):
 *   objects/<buildId>/            manifest.json + assets, never modified once there
 *   refs/<name>/<tag>/<arch>      relative symlink to ../../../objects/<buildId>
 *   default-<arch>/               the default image (built on first use), shown as
 *                                 the ref default:latest
 * Writers take an exclusive flock on .lock; imports copy into objects/.tmp-<pid>-*
 * and rename into place, refs are replaced by renaming a new symlink over the old,
 * so readers never see a half image or a half ref.
 */
#ifndef GD_IMAGE_STORE_H
#define GD_IMAGE_STORE_H

#include "base/err.h"
#include "base/fs.h"

#include <stddef.h>
#include <stdio.h>

void gd_store_dir(char *buf, size_t cap);
/* <store>/default-<arch>: the default image (the ref default:latest). */
void gd_store_default_dir(const char *arch, char *buf, size_t cap);

/* Checks "name[:tag]" (tag defaults to latest). 0 if valid. */
int gd_store_parse_ref(const char *ref, char *name, size_t ncap, char *tag, size_t tcap);

/* An image selector -> directory: an existing directory with a manifest.json, a ref
 * name[:tag] for arch, or a buildId (or a unique prefix of at least 8 characters). */
int gd_store_resolve(const char *selector, const char *arch, char *out, size_t cap,
                     struct gd_err *err);

/* Copies an image directory into objects/ (verifying every checksum first) and, with
 * ref, points the ref at it. id receives the buildId. */
int gd_store_import(const char *dir, const char *ref, char id[64], struct gd_err *err);
/* Moves a freshly built image directory (same filesystem) into objects/. */
int gd_store_adopt(const char *dir, const char *ref, char id[64], struct gd_err *err);
/* Points ref (for the image's arch) at the image a selector names. */
int gd_store_tag(const char *selector, const char *ref, const char *arch, struct gd_err *err);
/* Removes a ref; the image itself stays until gc. */
int gd_store_rm(const char *ref, const char *arch, struct gd_err *err);
/* Removes objects no ref points to (except the buildIds in keep, NULL-ended, may be
 * NULL: the images of disk checkpoints), and leftovers of interrupted writes. Prints
 * them. */
int gd_store_gc(FILE *out, int dry_run, const char *const *keep, struct gd_err *err);
/* Prints refs and images (ls), or JSON with json. */
int gd_store_list(FILE *out, int json, struct gd_err *err);

#endif
