/*
 * ssh.h - the pure parsers of SSH egress (issue 16): OpenSSH known_hosts files, and the
 * command of an SSH `exec` request parsed strictly as a git transport command.
 *
 * Nothing here does I/O except gd_ssh_known_hosts_load (one file read); nothing touches
 * the loop. Every input is bounded; no input crashes, aborts or grows memory past the
 * limits below. docs/ssh.md ("Parsers") describes the formats and decisions.
 */
#ifndef GD_SSH_H
#define GD_SSH_H

#include "base/err.h"

#include <stddef.h>

/* ---- key types ---------------------------------------------------------------------- */

/* Host key types we verify; values are bits, so a set of types fits in an unsigned. */
enum gd_ssh_key_type {
    GD_SSH_KEY_ED25519 = 1 << 0,  /* "ssh-ed25519" */
    GD_SSH_KEY_ECDSA256 = 1 << 1, /* "ecdsa-sha2-nistp256" */
    GD_SSH_KEY_ECDSA384 = 1 << 2, /* "ecdsa-sha2-nistp384" */
    GD_SSH_KEY_ECDSA521 = 1 << 3, /* "ecdsa-sha2-nistp521" */
    GD_SSH_KEY_RSA = 1 << 4,      /* "ssh-rsa" (the key type; rsa-sha2-* are signatures) */
};

/* The type for its OpenSSH name, or 0 when it is not one of the above. */
int gd_ssh_key_type_parse(const char *name);
/* The OpenSSH name of one type bit (static), "" for anything else. */
const char *gd_ssh_key_type_name(int type);

/* ---- known_hosts -------------------------------------------------------------------- */

#define GD_SSH_KH_MAX_LINE (64u * 1024)         /* longer lines are skipped (noted) */
#define GD_SSH_KH_MAX_FILE (16u * 1024 * 1024)  /* a larger file is an error (-EFBIG) */
#define GD_SSH_KH_MAX_TOTAL (64u * 1024 * 1024) /* bytes over all files of one set */
#define GD_SSH_KH_MAX_NOTES 16                  /* skipped-line notes kept per set */
#define GD_SSH_KH_MAX_HOST 1024                 /* longest host name checked */

enum gd_ssh_kh_status {
    GD_SSH_KH_UNKNOWN, /* no usable line names this host (port) with this key type */
    GD_SSH_KH_KNOWN,   /* a line for this host lists exactly this key */
    GD_SSH_KH_CHANGED, /* lines for this host list other keys of this key type, none this key */
    GD_SSH_KH_REVOKED, /* an @revoked line lists this key: refused whatever else matches */
};

struct gd_ssh_kh_result {
    enum gd_ssh_kh_status status;
    /* The deciding line: for KNOWN and REVOKED the line with the key, for CHANGED the
     * first line for the host with another key of the type; NULL/0 for UNKNOWN. file is
     * borrowed from the set (valid until gd_ssh_known_hosts_free). */
    const char *file;
    unsigned line;
    /* Key types (gd_ssh_key_type bits) that some non-revoked line lists for this host.
     * UNKNOWN with types != 0 is OpenSSH's "keys of a different type are already known
     * for this host": a caller can say so, or offer only these host key algorithms. */
    unsigned types;
};

/* A set of known_hosts files, consulted together (the order of loading is the order of
 * the result's "first line"; any file's @revoked line refuses its key). */
typedef struct gd_ssh_known_hosts gd_ssh_known_hosts;

/* An empty set (returns owned; NULL when out of memory). */
gd_ssh_known_hosts *gd_ssh_known_hosts_new(void);
void gd_ssh_known_hosts_free(gd_ssh_known_hosts *kh);

/* Reads path and adds its lines. An unreadable file (-errno, -ENOENT included: the
 * caller decides whether a missing ~/.ssh/known_hosts is fine), a file over
 * GD_SSH_KH_MAX_FILE or a set over GD_SSH_KH_MAX_TOTAL (-EFBIG) is an error with one line
 * "PATH: why" in err, and adds nothing. Malformed lines are not errors: they are skipped
 * and counted (gd_ssh_known_hosts_skipped). path is copied. */
int gd_ssh_known_hosts_load(gd_ssh_known_hosts *kh, const char *path, struct gd_err *err);
/* Same, from memory: name is what notes and results call the file (copied); buf need
 * not be NUL-terminated and may hold any bytes (borrowed for the call). */
int gd_ssh_known_hosts_add(gd_ssh_known_hosts *kh, const char *name, const char *buf, size_t len,
                           struct gd_err *err);

/* Lines skipped so far (malformed, over-long, unsupported key type); comments, blank
 * lines and @cert-authority lines are not counted. */
size_t gd_ssh_known_hosts_skipped(const gd_ssh_known_hosts *kh);
/* The i-th note "FILE:LINE: why" about a skipped line (the first GD_SSH_KH_MAX_NOTES are
 * kept, each cut at 500 bytes), or NULL past the last. Borrowed from the set. Printable
 * ASCII only. */
const char *gd_ssh_known_hosts_note(const gd_ssh_known_hosts *kh, size_t i);

/* Checks a host key offered by host:port. host is matched case-insensitively as OpenSSH
 * does: "host" when port is 22, "[host]:port" otherwise (a bare name matches port 22
 * only). key_type is the OpenSSH name, blob the key's wire-format public key (what the
 * base64 field of a line decodes to), compared exactly with the line's. Fills *res and
 * returns 0; -EINVAL (res untouched) for an empty or over-long host, a host holding
 * whitespace, ',' or a control byte, a port outside 1-65535 or an unsupported key_type.
 * Borrows everything. */
int gd_ssh_known_hosts_check(const gd_ssh_known_hosts *kh, const char *host, unsigned port,
                             const char *key_type, const unsigned char *blob, size_t blob_len,
                             struct gd_ssh_kh_result *res);

/* Strict base64 (RFC 4648 alphabet, '=' padding required, no whitespace, zero unused
 * bits): the decoded length, or -EINVAL; -ENOSPC when cap is too small. */
long gd_ssh_base64_decode(const char *in, size_t len, unsigned char *out, size_t cap);

/* ---- git commands ------------------------------------------------------------------- */

#define GD_SSH_GIT_PATH_MAX 1024 /* longest path (unquoted bytes) */

struct gd_ssh_git {
    /* "git-upload-pack", "git-receive-pack" or "git-upload-archive" (static), also when
     * the command spelled it "git upload-pack". */
    const char *service;
    /* The path exactly as the client meant it (quotes and escapes removed). */
    char path[GD_SSH_GIT_PATH_MAX + 1];
    /* What repo patterns match: path without one leading '/', one trailing '/' and then
     * one trailing ".git" ("/o/r.git", "o/r.git", "o/r/" -> "o/r"). */
    char repo[GD_SSH_GIT_PATH_MAX + 1];
};

/* Parses an exec request's command (len bytes from the guest, any bytes) as exactly
 * SERVICE ' ' QUOTED: SERVICE one of the three above (or "git upload-pack" etc.), QUOTED
 * the path as git's sq_quote writes it: in single quotes, with ' as '\'' and ! as '\!'
 * and no other escape. Refused (-EINVAL, *why a static one-line reason): anything else,
 * a byte < 0x20 or 0x7f, any of ; | & $ ` " \ outside those escapes, a bare !, an
 * unquoted path, an empty path, a path over GD_SSH_GIT_PATH_MAX, a path starting with
 * '-', an empty, "." or ".." path component, anything after the closing quote. out is
 * filled only on success. why may be NULL. */
int gd_ssh_git_parse(const char *cmd, size_t len, struct gd_ssh_git *out, const char **why);

/* The command to send upstream for a parsed request, re-quoted the way git does
 * ("git-upload-pack 'o/it'\''s.git'"): what the policy decided on, not the guest's bytes.
 * NUL-terminated; returns its length, or -ENOSPC when cap is too small. */
long gd_ssh_git_command(const struct gd_ssh_git *g, char *out, size_t cap);

/* Does a repo pattern match a normalised repo (gd_ssh_git.repo)? Case-sensitive, on
 * '/'-separated segments: the pattern and the repo have the same number of segments, and
 * in each '*' matches any run of characters and '?' one character, never a '/' (the
 * pattern org/STAR, STAR being '*', matches "org/r", not "org/a/b" nor "org"; "*" is one
 * segment). 1 or 0. */
int gd_ssh_repo_match(const char *pattern, const char *repo);
/* 0 if a repo pattern is well formed (1-1024 bytes, no control byte, no empty segment,
 * no "." or ".." segment, no leading '/', not ending in ".git": repos never do, so it could
 * never match), else -EINVAL. */
int gd_ssh_repo_pattern_check(const char *pattern);

#endif
