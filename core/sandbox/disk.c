/* disk.c - the sandbox's root disk in rootfs mode cow: a qcow2 overlay over the image's
 * rootfs.ext4, or over a disk checkpoint when resuming (docs/snapshots.md). The overlay
 * lives in a private state directory that goes with the sandbox. */
#define _GNU_SOURCE
#include "sandbox_int.h"

#include "base/fs.h"
#include "image/store.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

int gd__disk_resume_image(gd_sandbox *sb, const struct gd_sandbox_opts *o,
                          struct gd_snap_trailer *t, struct gd_snap_meta *m, struct gd_err *err)
{
    int rc = gd_snap_verify_disk(o->resume, t, m, err); /* memory: checked while loading */
    if (rc)
        return rc;
    if (strcmp(m->arch, gd_host_arch()))
        return gd_err_set(err, -EINVAL, "checkpoint %s is for %s; this host is %s", o->resume,
                          m->arch, gd_host_arch());
    /* the image it was made on: where it was, else that buildId in the store */
    struct gd_image img;
    struct gd_err sub = {{0}};
    if (m->image[0] && gd_image_load(m->image, 0, &img, &sub) == 0 &&
        !strcmp(img.build_id, m->build_id)) {
        snprintf(sb->image_dir, sizeof(sb->image_dir), "%s", m->image);
        return 0;
    }
    if (gd_store_resolve(m->build_id, gd_host_arch(), sb->image_dir, sizeof(sb->image_dir), &sub) ==
        0)
        return 0;
    return gd_err_set(err, -ENOENT,
                      "checkpoint %s was made on image buildId %.12s, which is no longer here "
                      "(%s)",
                      o->resume, m->build_id, m->image);
}

int gd__disk_prepare(gd_sandbox *sb, const struct gd_sandbox_opts *o, const struct gd_image *img,
                     const struct gd_snap_trailer *t, const struct gd_snap_meta *m,
                     struct gd_err *err)
{
    const char *mode = o->rootfs_mode ? o->rootfs_mode : img->rootfs_mode;
    struct gd__disk *d = &sb->disk;
    if (!o->resume && strcmp(mode, "cow"))
        return 0;
    if (o->resume && m->memory && strcmp(m->rootfs, "cow"))
        return 0; /* a memory snapshot of a root in guest memory: the image as it was */
    if (o->resume && o->rootfs_mode && strcmp(o->rootfs_mode, "cow"))
        return gd_err_set(err, -EINVAL,
                          "a resumed sandbox's root is a disk overlay (rootfs mode "
                          "cow), not %s",
                          o->rootfs_mode);
    int rc = gd_snap_state_new(d->state, sizeof(d->state), err);
    if (rc) {
        d->state[0] = 0;
        return rc;
    }
    snprintf(d->path, sizeof(d->path), "%s/disk.qcow2", d->state);
    snprintf(d->rootfs, sizeof(d->rootfs), "%s", img->rootfs);
    d->resumed = o->resume != NULL;
    if (o->resume)
        return gd_snap_overlay_resume(d->path, o->resume, t, m, img->rootfs, err);
    return gd_snap_overlay_new(d->path, img->rootfs, err);
}

void gd__disk_free(gd_sandbox *sb)
{
    if (sb->disk.state[0])
        gd_rm_rf(sb->disk.state); /* the overlay, unless a checkpoint took it */
    sb->disk.state[0] = 0;
}

int gd_sandbox_cow(const gd_sandbox *sb)
{
    return sb->disk.state[0] != 0;
}
