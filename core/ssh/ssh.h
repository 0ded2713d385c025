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
#include <uv.h>

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

/* ---- egress rules ------------------------------------------------------------------- */

/* An SSH rule: the guest may reach HOST (a host pattern, base/pattern.h) on port over SSH;
 * each exec goes to the same name and port upstream. */
struct gd_ssh_rule {
    char *host;
    unsigned port;     /* 22 unless the rule names one */
    char *user;        /* upstream user, or NULL: gd_ssh_conf_upstream_user decides */
    char *key;         /* host-side private key file, or NULL: --ssh-key / the agent */
    int agent;         /* authenticate with the host's agent */
    unsigned commands; /* GD_SSH_CMD_* bits the rule allows; 0: all three */
    char **repos;      /* repo patterns (gd_ssh_repo_match); none: any repo */
    size_t nrepos;
};

enum { GD_SSH_CMD_UPLOAD_PACK = 1, GD_SSH_CMD_RECEIVE_PACK = 2, GD_SSH_CMD_UPLOAD_ARCHIVE = 4 };
/* The bit of a git service name ("git-upload-pack", ...), or 0. */
unsigned gd_ssh_cmd_bit(const char *service);

/* A host-side private key for the hosts a pattern matches. */
struct gd_ssh_key {
    char *host, *path;
    char *user; /* upstream user for this key (--ssh-key USER@HOST=PATH), or NULL */
};

/* The SSH rules and settings of a policy (a member of struct gd_egress). Zeroed = no SSH. */
struct gd_ssh_conf {
    struct gd_ssh_rule *rules;
    size_t nrules;
    struct gd_ssh_key *keys;
    size_t nkeys;
    char **known_hosts; /* extra known_hosts files, after ~/.ssh and /etc/ssh's */
    size_t nknown;
    int agent; /* authenticate with the host's SSH_AUTH_SOCK agent (hosts without a key) */
    /* --ssh-limit NAME=VALUE (0: the default; read when the sandbox starts) */
    unsigned max_conns;    /* guest SSH connections at once (32) */
    unsigned connect_ms;   /* upstream TCP connect (10 s) */
    unsigned handshake_ms; /* SSH handshakes, replies, a guest idle between execs (30 s) */
    unsigned idle_ms;      /* an exec with no byte either way for this long is cut (10 min) */
};

/* "HOST[:PORT]" into host (cap bytes) and *port (22 without one): 0, or -EINVAL for an
 * empty or over-long host or a port outside 1-65535. */
int gd_ssh_hostport_parse(const char *spec, char *host, size_t cap, unsigned *port);

/* Typed setters (copy their strings; -EINVAL/-ENOMEM with one line in err, c unchanged):
 * "[USER@]HOST[:PORT]", "[USER@]HOST=PATH" (PATH may start with "file:" and "~/"), a known_hosts
 * file (must be readable now), the agent switch. */
int gd_ssh_conf_allow(struct gd_ssh_conf *c, const char *spec, struct gd_err *err);
/* A whole rule (the Lua policy's ssh table): every field validated (host pattern, port
 * 1-65535, user without control bytes, readable key file with "file:" and "~/" handled,
 * repo patterns) and copied. */
int gd_ssh_conf_add_rule(struct gd_ssh_conf *c, const struct gd_ssh_rule *r, struct gd_err *err);
/* Appends src's rules, keys and known_hosts files to dst (agent: either). */
int gd_ssh_conf_merge(struct gd_ssh_conf *dst, const struct gd_ssh_conf *src, struct gd_err *err);
int gd_ssh_conf_key(struct gd_ssh_conf *c, const char *spec, struct gd_err *err);
int gd_ssh_conf_known_hosts(struct gd_ssh_conf *c, const char *path, struct gd_err *err);
void gd_ssh_conf_agent(struct gd_ssh_conf *c, int on);
/* "NAME=VALUE": max_conns (1-4096), connect_ms, handshake_ms, idle_ms (100-86400000). */
int gd_ssh_conf_limit(struct gd_ssh_conf *c, const char *spec, struct gd_err *err);
/* Deep copy (dst zeroed; on -ENOMEM dst is left empty). */
int gd_ssh_conf_copy(struct gd_ssh_conf *dst, const struct gd_ssh_conf *src);
void gd_ssh_conf_free(struct gd_ssh_conf *c);
/* Canonical bytes of the rules for revision hashes. */
void gd_ssh_conf_digest(const struct gd_ssh_conf *c,
                        void (*update)(void *ctx, const void *p, size_t n), void *ctx);
/* The rule for a guest connection to (name, port; 0: any), or NULL: not SSH. Borrowed. */
const struct gd_ssh_rule *gd_ssh_conf_rule(const struct gd_ssh_conf *c, const char *name,
                                           unsigned port);
/* The --ssh-key file for a host, or NULL (borrowed). */
const char *gd_ssh_conf_key_for(const struct gd_ssh_conf *c, const char *host);
/* The user an exec to (name, port) authenticates as upstream: the rule's user, else the
 * user of the --ssh-key for the name, else "git" (also with the agent: the guest never
 * picks the account). Borrowed. */
const char *gd_ssh_conf_upstream_user(const struct gd_ssh_conf *c, const char *name, unsigned port);
/* Whether [u, u+n) is a plain user name: 1-64 of A-Z a-z 0-9 . _ -, not starting with
 * '-'. 1 or 0. */
int gd_ssh_user_ok(const char *u, size_t n);
/* The known_hosts host field naming every rule ("a,[b]:2222"), malloc'd, or NULL when
 * there is no rule or no memory. */
char *gd_ssh_conf_guest_hosts(const struct gd_ssh_conf *c);

/* ---- an exec, for policy hooks ---------------------------------------------------- */

/* One exec request a guest made (all borrowed for the hook call). */
struct gd_ssh_exec {
    const char *host; /* the name the guest dialled */
    unsigned port;
    const char *user;             /* the guest's user name */
    const char *command;          /* the command as the guest sent it */
    const struct gd_ssh_git *git; /* parsed (every proxied exec parses) */
    const char *upstream_user;    /* who it runs as upstream (gd_ssh_conf_upstream_user) */
};

/* What became of one exec (for the audit). */
struct gd_ssh_record {
    const struct gd_ssh_exec *x;
    int denied;                /* refused by a rule, a hook or an upstream failure */
    const char *rule, *reason; /* what decided, why (or NULL) */
    int exit_status;           /* proxied: the upstream's */
    unsigned long long bytes_up, bytes_down;
    double ms;
};

/* The rules' verdict on an exec, before any hook: it must parse as a git command (x->git
 * set), and the rule for (x->host, x->port) must allow its service (commands) and repo
 * (repos). 0, or -1 with rule ("git-command", "ssh:HOST commands", "ssh:HOST repos") and
 * line (what the guest is told; for an unparsed command the caller's line is kept). */
int gd_ssh_conf_check(const struct gd_ssh_conf *c, const struct gd_ssh_exec *x, char *rule,
                      size_t rcap, char *line, size_t lcap);

/* ---- the proxy ---------------------------------------------------------------------- */

/* The host's SSH endpoint for guest connections (proxy.c, upstream.c), driven from the
 * sandbox's libuv loop: each guest connection (at most max_conns at once) is a
 * non-blocking libssh server session watched by a uv_poll_t, proxies exec requests of
 * git's transport commands to a new non-blocking upstream libssh session each (resolved
 * with uv_getaddrinfo, internal addresses refused unless the flow allows them, host key
 * checked against known_hosts, host-held key or agent), and refuses everything else with
 * one line on the channel's stderr. No call waits on a guest or an upstream: a slow or
 * silent peer holds only its own connection. Not thread-safe: everything runs on the
 * loop's thread. */
typedef struct gd_ssh_proxy gd_ssh_proxy;

struct gd_ssh_proxy_opts {
    const char *host_key;  /* private host key file (copied) */
    unsigned max_conns;    /* guest connections at once (0: 32) */
    unsigned connect_ms;   /* upstream TCP connect (0: 10 s) */
    unsigned handshake_ms; /* SSH handshakes and replies, both sides (0: 30 s) */
    unsigned idle_ms;      /* an exec with no traffic either way (0: 10 min) */
    /* One line per exec and per refusal, on the loop thread; at most 20 at once and 5 a
     * second after (then one "N lines suppressed" line first). */
    void (*log)(void *ud, const char *line);
    void *ud;
    /* The loop everything runs on (required). The policy's say on each exec that the
     * rules allow (0 go on, else denied: rule and reason filled), and each exec's record
     * (never rate-limited): both called directly on the loop. */
    uv_loop_t *loop;
    int (*on_exec)(void *ud, const struct gd_ssh_exec *x, char *rule, size_t rcap, char *reason,
                   size_t cap);
    void (*on_record)(void *ud, const struct gd_ssh_record *rec);
    /* The current revision's rules (borrowed for the call) and, for name, its --resolve
     * address (*addr, or NULL) and whether it may be internal: each exec is decided and
     * dialled by them, so a reload reaches connections already open (without it, what
     * the connection was accepted under). */
    const struct gd_ssh_conf *(*rules)(void *ud, const char *name, const char **addr,
                                       int *allow_internal);
};

/* One guest connection's facts, decided on the loop thread (all copied). */
struct gd_ssh_flow {
    const char *name; /* the name the guest dialled */
    unsigned port;
    const char *addr;   /* host-side address override (--resolve), or NULL: resolve name */
    int allow_internal; /* name may be dialled at an internal address */
    const struct gd_ssh_conf *conf;
};

/* Returns owned in *out (free with gd_ssh_proxy_free); -errno with err set (-EINVAL
 * without a loop). */
int gd_ssh_proxy_new(const struct gd_ssh_proxy_opts *o, gd_ssh_proxy **out, struct gd_err *err);
/* Serves one guest connection; takes ownership of fd, also on error (-EAGAIN: too many
 * connections; -ENOMEM). */
int gd_ssh_proxy_serve(gd_ssh_proxy *p, int fd, const struct gd_ssh_flow *f);
/* Guest connections open now. */
unsigned gd_ssh_proxy_conns(gd_ssh_proxy *p);
/* Ends every connection at once, on the loop thread, without waiting: pending name
 * lookups are cancelled, every poll and timer handle is uv_close'd, sessions are freed as
 * their handles finish closing (so the loop must run once more before uv_loop_close). No
 * record, log line or hook call comes afterwards. */
void gd_ssh_proxy_free(gd_ssh_proxy *p);

/* The per-user host key ($XDG_CONFIG_HOME/gondolin/ssh/host_ed25519, made 0600 on first
 * use): its path into path, and "TYPE:BASE64" of its public half into pub. */
int gd_ssh_host_key(char *path, size_t cap, char *pub, size_t pubcap, struct gd_err *err);

#endif
