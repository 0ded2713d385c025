/*
 * egress.h - the egress rules (from the command line, a Lua policy or the C API, always
 * through the typed setters below), and the built-in hooks that enforce them in the
 * proxy's chain:
 *
 *   REQUEST_HEAD  allow-host   the request must match an --allow-host rule (no rule: no
 *                              egress at all)
 *   CONNECT       internal     the address about to be dialled must not be internal
 *                              unless the host matches --allow-internal
 *   REQUEST_HEAD  secrets      placeholders -> real values for in-scope hosts; any
 *                              placeholder or real value bound for another host denies
 *
 * Rules: "[METHOD ]HOST[:PORT][/PATH-PREFIX]". HOST is a pattern (base/pattern.h).
 * Without :PORT only the scheme's default port (80, 443) matches; a rule with a port
 * also makes the network layer intercept that guest port.
 */
#ifndef GD_EGRESS_H
#define GD_EGRESS_H

#include "base/err.h"
#include "http/http.h"
#include "secrets/secrets.h"
#include "ssh/ssh.h"

#include <stdio.h>

enum gd_dns_mode { GD_DNS_SYNTHETIC = 0, GD_DNS_TRUSTED = 1, GD_DNS_OPEN = 2 };

struct gd_allow_rule {
    char *text, *method, *host, *path;
    unsigned port; /* 0 = the scheme's default */
};

struct gd_tcp_map {
    char *host;
    unsigned port;
    char *up_host;
    unsigned up_port;
};

struct gd_egress {
    struct gd_allow_rule *allow;
    size_t nallow;
    char **internal;
    size_t ninternal;
    struct gd_secret *secrets;
    size_t nsecrets;
    struct gd_tcp_map *maps;
    size_t nmaps;
    char **resolve; /* "NAME=ADDR", NULL-terminated */
    size_t nresolve;
    enum gd_dns_mode dns;
    int secrets_in_query;
    char *audit_path;
    FILE *audit;
    int audit_fs; /* also audit every mutating guest file operation (denials always) */
    char *upstream_ca;
    char vm_id[40];
    int quiet; /* no denial lines on stderr */
    /* --http-limit NAME=VALUE: the proxy's guest-facing limits (0 = its default) */
    unsigned head_ms, keepalive_ms, body_ms, max_flows;
    size_t buffer_total;
    /* the signed bundle the policy came from (docs/bundles.md), for audit records:
     * name ("" = none), revision, signer key ids (16 hex digits each, comma-separated) */
    char bundle_name[65];
    long long bundle_revision;
    char bundle_signers[160];
    struct gd_ssh_conf ssh; /* --ssh-allow, --ssh-key, --ssh-agent, --ssh-known-hosts */
};

/* Typed setters, one per kind of rule or setting; the command line, the Lua policy's
 * declarations and the C API all go through them. Each validates its value and adds it
 * (strings are copied), or returns a negative errno with err set to one line naming the
 * value; e is then unchanged. */
/* "[METHOD ]HOST[:PORT][/PATH-PREFIX]" */
int gd_egress_allow(struct gd_egress *e, const char *rule, struct gd_err *err);
/* HOST may be dialled at an internal address (a host pattern) */
int gd_egress_allow_internal(struct gd_egress *e, const char *host_pattern, struct gd_err *err);
/* Secret NAME for hosts (comma-separated patterns; "http://HOST" also allows cleartext)
 * with value, or (value NULL) the host's $NAME. A name may be given once. */
int gd_egress_secret(struct gd_egress *e, const char *name, const char *hosts, const char *value,
                     struct gd_err *err);
/* "HOST:PORT[=UPHOST:UPPORT]": raw TCP (no interception) */
int gd_egress_tcp_map(struct gd_egress *e, const char *spec, struct gd_err *err);
/* "synthetic", "trusted" or "open" */
int gd_egress_dns(struct gd_egress *e, const char *mode, struct gd_err *err);
/* "NAME:ADDR": the host-side address of NAME */
int gd_egress_resolve(struct gd_egress *e, const char *name_addr, struct gd_err *err);
/* An extra CA file trusted for upstream TLS (replaces an earlier one) */
int gd_egress_upstream_ca(struct gd_egress *e, const char *path, struct gd_err *err);
/* The audit file (replaces an earlier one; opened by gd_egress_finish or the engine) */
int gd_egress_audit(struct gd_egress *e, const char *path, struct gd_err *err);
/* One of the proxy's guest-facing limits: head_ms, keepalive_ms, body_ms, max_flows,
 * buffer_total, = a positive decimal number */
int gd_egress_http_limit(struct gd_egress *e, const char *name, const char *value,
                         struct gd_err *err);
/* --audit-fs: one audit line per mutating guest file operation, not only denials. */
void gd_egress_audit_fs(struct gd_egress *e, int on);
/* Also substitute placeholders in URL query strings. */
void gd_egress_secrets_in_query(struct gd_egress *e, int on);

/* Deep copy of every rule and setting (not the audit FILE*): dst must be zeroed. On error
 * (-ENOMEM, err set) dst is left empty. */
int gd_egress_copy(struct gd_egress *dst, const struct gd_egress *src, struct gd_err *err);
/* Feeds the canonical form of the rules and settings (never a secret's value or
 * placeholder) to update(), for revision hashes: equal rules, equal bytes. */
void gd_egress_digest(const struct gd_egress *e, void (*update)(void *ctx, const void *p, size_t n),
                      void *ctx);
/* The CONNECT-phase check shared by the internal-ranges hook and the network layer: may
 * name (NULL: no name) be dialled at addr (an IP literal)? 1 yes (addr is not internal,
 * or name matches an allow-internal pattern), 0 no. */
int gd_egress_addr_allowed(const struct gd_egress *e, const char *name, const char *addr);
/* Does name match an --allow-internal pattern (may it be dialled at internal addresses)? */
int gd_egress_internal_allowed(const struct gd_egress *e, const char *name);
/* The host-side address --resolve gives name (borrowed), or NULL. */
const char *gd_egress_resolved(const struct gd_egress *e, const char *name);

/* The command line: parses one egress flag at argv[*i] ("--allow-host X" or
 * "--allow-host=X"), advancing *i past its value, and calls its setter. 1 consumed,
 * 0 not an egress flag, negative errno with err set. */
int gd_egress_flag(struct gd_egress *e, int argc, char **argv, int *i, struct gd_err *err);
/* Copies the --http-limit values into proxy options (fields left 0 keep the default). */
void gd_egress_proxy_limits(const struct gd_egress *e, struct gd_proxy_opts *o);
/* Cross-checks the whole set and opens the audit file. */
int gd_egress_finish(struct gd_egress *e, struct gd_err *err);
void gd_egress_free(struct gd_egress *e);

/* Installs the built-in hooks, in the order above (the secrets hook goes last so every
 * other hook sees placeholders, never real values). */
int gd_egress_install(struct gd_egress *e, gd_proxy *px);
/* The built-in hooks themselves (ud = the gd_egress), for a dispatcher that builds its
 * own chain: allow-host (REQUEST_HEAD), internal-ranges (CONNECT), secrets
 * (REQUEST_HEAD, last). */
enum gd_decision gd_egress_hook_allow(gd_txn *t, enum gd_phase ph, void *ud);
enum gd_decision gd_egress_hook_internal(gd_txn *t, enum gd_phase ph, void *ud);
enum gd_decision gd_egress_hook_secrets(gd_txn *t, enum gd_phase ph, void *ud);
/* gd_proxy_opts.on_event: audit line + a one-line denial notice on stderr. */
void gd_egress_on_event(const struct gd_proxy_event *ev, void *ud);

/* What to do with a guest TCP connection to (name, port). name may be NULL (an address
 * no synthetic name maps to). 1 = HTTP/TLS proxy, 2 = mapped raw TCP (*up_host,
 * *up_port set), 3 = SSH proxy (an SSH rule names host and port), 0 = refuse. */
int gd_egress_port_policy(const struct gd_egress *e, const char *name, unsigned port,
                          const char **up_host, unsigned *up_port);
/* Is name allowed by any rule (any port)? Used by trusted DNS before resolving. */
int gd_egress_host_allowed(const struct gd_egress *e, const char *name);
/* Guest env entries "NAME=PLACEHOLDER", NULL-terminated, malloc'd (free each + array). */
char **gd_egress_guest_env(const struct gd_egress *e);

#endif
