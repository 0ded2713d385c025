/*
 * snapshot.h - booted-image snapshots: a VM's memory and device state saved right after
 * its agent said HELLO, restored instead of booting (docs/snapshots.md).
 *
 * Files live in <image store>/snapshots/boot/<buildId>/<key>.gdsnap. The key is a
 * SHA-256 over everything that shapes the booted guest: the snapshot format, the
 * gondolin version, the image's buildId, the QEMU binary (path, size, mtime) and the
 * full QEMU command line (accelerator, memory, cpus, devices, kernel arguments, which
 * carry the network setup and the MITM CA). A file is written under a temporary name,
 * fsync'ed and renamed; its header (ours, GD_BOOTSNAP_HDR_LEN bytes) holds the key, the
 * stream's length and SHA-256, so a truncated, corrupted or foreign file is refused
 * before the guest runs.
 */
#ifndef GD_VM_SNAPSHOT_H
#define GD_VM_SNAPSHOT_H

#include "base/err.h"

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define GD_BOOTSNAP_HDR_LEN 512u
#define GD_BOOTSNAP_FORMAT 1u
/* A stream longer than this is refused (a 1 TiB guest's zero pages are not written). */
#define GD_BOOTSNAP_MAX_STREAM (64ull << 30)

struct gd_bootsnap_hdr {
    uint8_t key[32];
    uint64_t stream_len;
    uint8_t sha256[32]; /* of the stream */
    uint64_t created;   /* unix seconds */
    uint32_t memory_mb, cpus;
    uint32_t agent_minor;
    char version[32]; /* gondolin version that wrote it */
    char build_id[65];
    char agent[64];
};

/* Encodes into buf (GD_BOOTSNAP_HDR_LEN bytes). */
void gd_bootsnap_hdr_write(uint8_t *buf, const struct gd_bootsnap_hdr *h);
/* Parses and validates a header read from disk (untrusted): magic, format, lengths,
 * NUL-terminated printable strings. 0 or -EBADMSG. */
int gd_bootsnap_hdr_parse(const uint8_t *buf, size_t len, struct gd_bootsnap_hdr *h);

/* <store>/snapshots/boot */
void gd_bootsnap_dir(char *buf, size_t cap);

/* Prints the booted snapshots (buildId, key, size, memory, cpus, age) under a heading;
 * nothing when there are none. */
void gd_bootsnap_list(FILE *out);
/* The same as a JSON array of objects with "kind": "bootSnapshot" (returned owned, a
 * cJSON *), for `image ls --json`. */
void *gd_bootsnap_list_json(void);
/* A booted snapshot not restored for this long is removed by gc (its VM shape is one
 * nobody starts any more: another memory size, kernel argument or QEMU binary). */
#define GD_BOOTSNAP_IDLE_SECONDS (14ll * 24 * 3600)
#define GD_BOOTSNAP_IDLE_TEXT "14 days"
/* Removes booted snapshots of images that are gone (no objects/<buildId> and not a
 * default image), of another gondolin version or format, unused for
 * GD_BOOTSNAP_IDLE_SECONDS, unreadable ones, and leftovers of interrupted saves. Prints what it
 * removes (or would, with dry_run). */
int gd_bootsnap_gc(FILE *out, int dry_run, struct gd_err *err);

#endif
