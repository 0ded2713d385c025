/*
 * bundle.h - signed policy bundles (docs/bundles.md): one file NAME-REV.gdb holding a
 * manifest, detached Ed25519 signatures over the manifest's exact bytes, and the files
 * the manifest lists (policy, data, test cases, plugins by architecture).
 *
 * Reading verifies before it trusts anything: the signatures over the manifest bytes
 * first (the manifest is only parsed once enough trusted signatures verify), then every
 * entry's name, type, size and sha256 against the manifest while it is read. Nothing is
 * written to disk by the reader; gd_bundle_extract writes a verified bundle's files into
 * a new private (0700) directory for the parts that need a path (Lua policy, dlopen).
 *
 * Errors are negative errno values with a one-line message in err naming the reason.
 */
#ifndef GD_BUNDLE_H
#define GD_BUNDLE_H

#include "base/err.h"

#include <stddef.h>
#include <stdint.h>

#define GD_BUNDLE_MAGIC "GDBUNDL\x01" /* 8 bytes */
#define GD_BUNDLE_MAX_SIZE (64u << 20)
#define GD_BUNDLE_MAX_MANIFEST (1u << 20)
#define GD_BUNDLE_MAX_FILES 256
#define GD_BUNDLE_MAX_SIGS 16
#define GD_BUNDLE_MAX_PATH 255
#define GD_BUNDLE_MAX_NAME 64                       /* the bundle's name: [A-Za-z0-9._-] */
#define GD_BUNDLE_SIG_DOMAIN "gondolin-bundle-v1\n" /* prefixed to the manifest when signing */

typedef struct gd_bundle gd_bundle;

/* A trusted public key: raw Ed25519 bytes and its id (sha256 of them, hex). */
struct gd_bundle_key {
    unsigned char pub[32];
    char id[65];
};
struct gd_bundle_trust {
    struct gd_bundle_key *keys;
    size_t n;
};

/* Adds every *.pub of dir (sorted). A missing directory adds nothing and is not an
 * error; an unreadable or malformed key file is (named in err). */
int gd_bundle_trust_add_dir(struct gd_bundle_trust *t, const char *dir, struct gd_err *err);
int gd_bundle_trust_add_file(struct gd_bundle_trust *t, const char *path, struct gd_err *err);
void gd_bundle_trust_free(struct gd_bundle_trust *t);

/* Keys (PEM files). keygen writes path (private, created 0600) and pubpath, neither
 * replacing an existing file; id receives the key id. */
int gd_bundle_keygen(const char *path, const char *pubpath, char id[65], struct gd_err *err);
/* Raw public key and id of a .pub or private PEM file. */
int gd_bundle_key_load(const char *path, struct gd_bundle_key *k, struct gd_err *err);

/* How to open a bundle. trust NULL: no trust decision (inspect): every signature is
 * still checked against its embedded key, and the manifest is parsed even when none
 * verifies. threshold: distinct trusted keys needed (0 = 1). now: unix seconds for the
 * expiry check (0 = no check). version: this gondolin, checked against min_gondolin
 * (NULL = no check). */
struct gd_bundle_verify {
    const struct gd_bundle_trust *trust;
    unsigned threshold;
    long long now;
    const char *version;
};

struct gd_bundle_file {
    char *path;
    char sha256[65];
    uint64_t size;
    const uint8_t *data; /* inside the bundle's buffer */
    char arch[16];       /* a plugin: its architecture; else "" */
    int test;            /* a test case file */
};

struct gd_bundle_signer {
    char key_id[65];
    int valid;   /* the signature verifies with its embedded key */
    int trusted; /* ... and that key is in the trust set */
};

/* What an open bundle holds (all borrowed from the bundle). */
struct gd_bundle_info {
    const char *name;
    long long revision, created, expires;
    const char *min_gondolin;
    const char *entry;
    const struct gd_bundle_file *files;
    size_t nfiles;
    const struct gd_bundle_signer *signers;
    size_t nsigners;
    size_t ntrusted; /* distinct trusted keys whose signature verifies */
    const uint8_t *manifest;
    size_t manifest_len;
};

/* Reads and verifies a bundle from memory (copied) or a file. */
int gd_bundle_open_mem(const void *p, size_t n, const struct gd_bundle_verify *v, gd_bundle **out,
                       struct gd_err *err);
int gd_bundle_open(const char *path, const struct gd_bundle_verify *v, gd_bundle **out,
                   struct gd_err *err);
void gd_bundle_free(gd_bundle *b);
const struct gd_bundle_info *gd_bundle_info(const gd_bundle *b);
const struct gd_bundle_file *gd_bundle_find(const gd_bundle *b, const char *path);

/* Is s a plain relative path (no "..", ".", empty or absolute parts, no backslash or
 * control bytes, at most GD_BUNDLE_MAX_PATH bytes)? */
int gd_bundle_path_ok(const char *s);
/* -1, 0, 1 comparing dotted versions "1.2.3" (missing parts are 0); -2 if malformed. */
int gd_bundle_version_cmp(const char *a, const char *b);

/* Writes the bundle's files (plugins only for arch) into a new directory mkdtemp'd
 * as base/.bundle-XXXXXX (base NULL: $TMPDIR or /tmp), mode 0700, files 0600 (plugins 0500). out
 * gets its path; remove it with gd_rm_rf. */
int gd_bundle_extract(const gd_bundle *b, const char *arch, const char *base, char *out, size_t cap,
                      struct gd_err *err);

/* ---- writing (writer.c) ---- */
struct gd_bundle_src_file {
    const char *path;
    const void *data;
    size_t size;
    const char *arch; /* a plugin, or NULL */
    int test;
};
struct gd_bundle_src {
    const char *name;
    long long revision, created, expires;
    const char *min_gondolin;
    const char *entry;
    const struct gd_bundle_src_file *files;
    size_t nfiles;
};
/* Writes an unsigned bundle to path (tmp + fsync + rename). */
int gd_bundle_write(const struct gd_bundle_src *s, const char *path, struct gd_err *err);
/* Adds (or replaces) the signature of the private key keyfile and rewrites path
 * atomically; id receives the key id. The existing signatures must verify. */
int gd_bundle_sign(const char *path, const char *keyfile, char id[65], struct gd_err *err);
/* Writes whole to path through path.tmp-XXXXXX, fsync and rename (mode 0644 or 0600). */
int gd_bundle_write_atomic(const char *path, const void *p, size_t n, unsigned mode,
                           struct gd_err *err);

/* ---- rollback state (state.c) ---- */
/* Records the bundle's revision for each trusted signer in the JSON file at path
 * (locked, written atomically). A revision lower than one recorded for the same
 * (name, signer) is refused (-ESTALE, naming both) unless allow_downgrade. */
int gd_bundle_state_check(const char *path, const gd_bundle *b, int allow_downgrade,
                          struct gd_err *err);

#endif
