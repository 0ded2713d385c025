/*
 * snap.h - disk checkpoints (docs/snapshots.md): the file format (format.c: pure
 * parsers of untrusted bytes), reading, verifying and writing checkpoint files
 * (file.c), the qcow2 overlays a sandbox's root lives on (qemu_img.c, through
 * Debian's qemu-img) and the snapshots part of the image store (store.c).
 *
 * A checkpoint file is a qcow2 image (the guest root's writes over the image's
 * rootfs.ext4), zero-padded to a multiple of 4096 bytes, then a JSON metadata blob,
 * then a fixed 128-byte trailer:
 *
 *   0   8  magic "GDCKPT\r\n"
 *   8   4  format version (1), little-endian like every number here
 *   12  4  metadata length (1 .. GD_SNAP_MAX_META)
 *   16  8  qcow2 length (a multiple of 4096, > 0)
 *   24 32  sha256 of the qcow2 part
 *   56 32  sha256 of the metadata
 *   88 8   format 2: memory stream length; format 1: zero
 *   96 24  zero (reserved)
 *   120 8  magic "GDCKPTnd"
 *
 * The file's size is exactly qcow2 length + memory length + metadata length + 128.
 * QEMU reads the qcow2 part through a raw node limited to its length; `qemu-img info
 * FILE` works on a disk checkpoint as it is.
 *
 * Format 2 is a memory snapshot (gondolin snapshot --memory): QEMU's migration stream
 * (RAM and device state) follows the qcow2 part, which is empty (length 0) when the
 * sandbox's root lives in guest memory. Its SHA-256, the VM shape it needs (a hash of
 * QEMU's command line without per-sandbox paths) and the agent's protocol minor are in
 * the metadata's "memory" object, so the trailer's metadata checksum covers them.
 *
 * Functions return 0 or a negative errno; err (where given) says why in one line that
 * names the file.
 */
#ifndef GD_SNAP_H
#define GD_SNAP_H

#include "base/err.h"

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define GD_SNAP_TRAILER_LEN 128u
#define GD_SNAP_MAX_META (64u << 10)
#define GD_SNAP_FORMAT 1
#define GD_SNAP_FORMAT_MEMORY 2
/* A memory stream longer than this is refused. */
#define GD_SNAP_MAX_MEMORY (64ull << 30)
#define GD_SNAP_ALIGN 4096u
#define GD_SNAP_MAX_MOUNTS 8
#define GD_SNAP_EXT ".gdsnap"

struct gd_snap_trailer {
    uint32_t version;
    uint32_t meta_len;
    uint64_t qcow2_len;
    uint8_t qcow2_sha[32];
    uint8_t meta_sha[32];
    uint64_t mem_len; /* format 2 */
};

/* A mount of the checkpointed sandbox (the command line's, not the policy's). */
struct gd_snap_mount {
    char kind[16]; /* "hostfs", "overlay", "memory" */
    char guest[256];
    char host[1024]; /* "" for memory */
    int readonly;
    uint64_t size;
};

/* What a checkpoint says about itself (the metadata JSON). */
struct gd_snap_meta {
    int format;
    char gondolin[32];  /* the version that wrote it */
    char build_id[65];  /* the image's buildId */
    char arch[16];      /* x86_64 | aarch64 */
    char image[1024];   /* the image directory at checkpoint time */
    char name[128];     /* "" for a file written with --output */
    char session[40];   /* the session's id, or "" */
    long long created;  /* unix seconds */
    uint64_t disk_size; /* the qcow2's virtual size */
    unsigned memory_mb, cpus;
    struct gd_snap_mount mounts[GD_SNAP_MAX_MOUNTS];
    size_t nmounts;
    /* format 2: the memory stream */
    int memory;
    uint8_t mem_sha[32];  /* of the stream */
    uint8_t shape[32];    /* the VM shape it was taken of (gd_vm_shape) */
    unsigned agent_minor; /* the guest agent's protocol minor */
    char rootfs[16];      /* "memory" or "cow": where the guest's root writes live */
};

/* ---- format (format.c): pure, bounds-checked; why gets a static reason ---- */

/* The last GD_SNAP_TRAILER_LEN bytes of a file of file_size bytes. */
int gd_snap_trailer_parse(const uint8_t *p, size_t n, uint64_t file_size, struct gd_snap_trailer *t,
                          const char **why);
void gd_snap_trailer_write(uint8_t out[128], const struct gd_snap_trailer *t);
/* The metadata JSON (n bytes, not NUL-terminated); unknown fields are ignored. */
int gd_snap_meta_parse(const void *p, size_t n, struct gd_snap_meta *m, char *why, size_t cap);
/* A malloc'd JSON text, NULL when out of memory. */
char *gd_snap_meta_encode(const struct gd_snap_meta *m);
/* Checks the start of a qcow2 image (at least 104 bytes) whose file part is len bytes:
 * magic, version 2 or 3, no encryption, no external data file or unknown incompatible
 * feature; *virtual_size gets the disk's size. */
int gd_snap_qcow2_check(const uint8_t *p, size_t n, uint64_t len, uint64_t *virtual_size,
                        const char **why);

/* ---- files (file.c) ---- */

/* Reads the trailer and the metadata of a checkpoint (no checksum of the qcow2 part:
 * quick, for listings). */
int gd_snap_read(const char *path, struct gd_snap_trailer *t, struct gd_snap_meta *m,
                 struct gd_err *err);
/* gd_snap_read plus the qcow2 part's sha256 and header checks and, for a memory
 * snapshot, the memory stream's sha256. */
int gd_snap_verify(const char *path, struct gd_snap_trailer *t, struct gd_snap_meta *m,
                   struct gd_err *err);
/* The same without hashing the memory stream: a resume checks it while feeding QEMU,
 * before the guest runs. */
int gd_snap_verify_disk(const char *path, struct gd_snap_trailer *t, struct gd_snap_meta *m,
                        struct gd_err *err);
/* Checks that a verified checkpoint fits this gondolin (version) and the image it is
 * to be resumed on (buildId); the error is one line saying which differs. */
int gd_snap_compatible(const char *path, const struct gd_snap_meta *m, const char *build_id,
                       struct gd_err *err);
/* Turns a stopped sandbox's overlay (moved or, across filesystems, copied; it is gone
 * from its place afterwards) into the checkpoint dest: written as a hidden
 * ".tmp-PID-NAME" next to dest, fsync'ed, then linked into place (never over an
 * existing file) and the directory fsync'ed. An interrupted write leaves only the
 * hidden file (gd_snap_gc removes it). *size gets the file's size. */
int gd_snap_write(const char *overlay, struct gd_snap_meta *m, const char *dest, uint64_t *size,
                  struct gd_err *err);

/* Memory snapshots: a hidden temporary ".tmp-PID-NAME" next to dest for QEMU to write
 * its stream into (from offset 0); the fd, or negative. tmp (cap >= 1400) gets its path. */
int gd_snap_mem_begin(const char *dest, char *tmp, size_t cap, struct gd_err *err);
/* The stream is in fd at [0, len): hashes it, appends the metadata (m->memory set,
 * m->shape and m->agent_minor filled by the caller) and a format 2 trailer, fsyncs and
 * links the file into place as dest (never over an existing file). Closes fd; the
 * temporary is gone afterwards, whatever happened. */
int gd_snap_mem_finish(int fd, const char *tmp, uint64_t len, struct gd_snap_meta *m,
                       const char *dest, uint64_t *size, struct gd_err *err);

/* ---- qemu-img (qemu_img.c) ---- */

/* The qemu-img binary: GONDOLIN_QEMU_IMG, else qemu-img from PATH. */
const char *gd_snap_qemu_img(void);
/* A new qcow2 overlay at path over the raw rootfs (the image's rootfs.ext4). */
int gd_snap_overlay_new(const char *path, const char *rootfs, struct gd_err *err);
/* A new qcow2 overlay at path over a verified checkpoint (read-only, through a raw
 * node of its qcow2 length) over the raw rootfs: the checkpoint is never written. */
int gd_snap_overlay_resume(const char *path, const char *checkpoint,
                           const struct gd_snap_trailer *t, const struct gd_snap_meta *m,
                           const char *rootfs, struct gd_err *err);
/* Rewrites a resumed overlay so it depends on the rootfs alone (qemu-img rebase): a
 * checkpoint of a resumed sandbox never needs the checkpoint it came from. */
int gd_snap_overlay_flatten(const char *path, const char *rootfs, struct gd_err *err);

/* ---- the store (store.c): <image store>/snapshots/NAME.gdsnap ---- */

void gd_snap_store_dir(char *buf, size_t cap);
/* 1..63 of [A-Za-z0-9_.-], starting with a letter or a digit. */
int gd_snap_name_ok(const char *name);
/* A checkpoint selector -> file: a path (it contains '/' or ends in .gdsnap) or a
 * name in the store. -ENOENT with a one-line message. */
int gd_snap_resolve(const char *sel, char *out, size_t cap, struct gd_err *err);

struct gd_snap_entry {
    char name[128];
    char path[1200];
    uint64_t size;
    struct gd_snap_meta meta;
    int ok; /* 0: the trailer or metadata is unreadable (error says why) */
    char error[256];
};
/* Complete checkpoints in the store (hidden temporaries are not listed), by name. */
int gd_snap_list(struct gd_snap_entry **out, size_t *n);
/* Removes a checkpoint from the store by name. */
int gd_snap_rm(const char *name, struct gd_err *err);
/* A new private (0700) directory <cache>/state/PID-XXXXXX for one sandbox's disk
 * overlay (the cache dir is on disk, unlike $XDG_RUNTIME_DIR). */
int gd_snap_state_new(char *out, size_t cap, struct gd_err *err);
/* Removes checkpoints whose image (buildId) is gone (image_exists says) or that are
 * unreadable, the temporaries of writers that died and the state directories of
 * sandboxes whose process died (SIGKILL). Prints one line each and
 * returns how many it removed (or would). */
int gd_snap_gc(FILE *out, int dry_run, int (*image_exists)(const char *build_id, void *ud),
               void *ud);

#endif
