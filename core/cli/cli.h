/* cli.h - shared pieces of the gondolin command-line tool. */
#ifndef GD_CLI_H
#define GD_CLI_H

#include "control/control.h"
#include "engine/engine.h"
#include "policy/egress.h"
#include "sandbox/sandbox.h"
#include "vm/vm.h"

#include <stddef.h>

struct cli_vm_flags {
    const char *image;
    const char *accel;
    unsigned memory_mb;
    unsigned cpus;
    const char *rootfs_mode; /* --rootfs-mode, or NULL: the image's default */
    char resume[1200];       /* --resume: the checkpoint file (absolute), or "" */
    int verbose;
    int cold_boot; /* --cold-boot (or GONDOLIN_COLD_BOOT=1): no booted snapshot */
};

/* Parses a VM flag at argv[*i] (advancing *i past its value). 1 if consumed, 0 if not
 * a VM flag, -1 on a bad value (message printed). */
int cli_vm_flag(int argc, char **argv, int *i, struct cli_vm_flags *f);
/* gd_sandbox_opts.resolve_image (ud: int *verbose): a directory or store reference, or
 * NULL for $GONDOLIN_GUEST_DIR / $GONDOLIN_DEFAULT_IMAGE / the default image, which is
 * built on first use and rebuilt when this build's guest agent changed. */
int cli_resolve_image(void *ud, const char *ref, char *out, size_t cap, struct gd_err *err);
/* Fills the VM part of a sandbox's options from the flags (borrowing from f; the image
 * through cli_resolve_image) and GONDOLIN_APPEND. */
void cli_vm_sandbox(struct cli_vm_flags *f, struct gd_sandbox_opts *o);
int cli_die(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Policy flags of exec/bash/run and the policy commands (policy_flags.c): egress flags
 * (parsed into typed rules, the engine's base), --policy, --plugin, --plugin-dir. */
struct cli_policy {
    const char *policy;
    const char **plugin_dirs;   /* NULL-ended */
    const char **plugins;       /* NULL-ended */
    int no_default_dirs;        /* skip /etc/gondolin/plugins.d and ~/.config/... */
    const char **secret_values; /* authoring tools: NAME=VALUE overrides */
    int stub_secrets;
    struct gd_egress egress; /* the egress flags, typed */
    const char **dirs;       /* every plugin directory, in engine order (built once) */
    /* signed bundles (bundle_flags.c, docs/bundles.md) */
    const char *bundle;          /* --bundle FILE (or a --policy naming a .gdb file) */
    const char **trust;          /* --trust DIR, NULL-ended: replaces the default trust roots */
    unsigned threshold;          /* --threshold N: trusted signatures needed (0 = 1) */
    int allow_downgrade;         /* --allow-downgrade */
    int keep_extracted;          /* 1: one supervisor removes them; 2: forks share them */
    int resolved;                /* cli_policy_resolve ran */
    char bundle_dir[1200];       /* the verified files, or "" */
    char **bundle_owned;         /* NULL-ended strings the bundle put into policy/plugins */
    char **bundle_tests;         /* NULL-ended: paths of the bundle's test case files */
    char *bundle_entry;          /* the running bundle's entry and host plugins (its paths) */
    char **bundle_plugin_names;  /* NULL-ended */
    unsigned bundle_interval_ms; /* --bundle-interval for a URL (0: no live updates) */
    char bundle_etag[130];       /* the URL's ETag at start */
    void *live;                  /* the poller (bundle_live.c) */
};
/* 1 consumed (advancing *i), 0 not a policy flag, -1 bad value (message printed). */
int cli_policy_flag(struct cli_policy *p, int argc, char **argv, int *i);
/* Builds the engine; prints a one-line error and returns its exit code on failure. */
int cli_policy_engine(struct cli_policy *p, int quiet, gd_engine **out);
void cli_policy_free(struct cli_policy *p);
/* Fills the policy part of a sandbox's options (borrowing from p). A bundle (or the
 * drop-in one) is verified and its revision recorded first: 0, or an exit code after a
 * one-line error. */
int cli_policy_sandbox(struct cli_policy *p, struct gd_sandbox_opts *o);

/* Bundles on the running side (bundle_flags.c). --bundle, --trust, --threshold,
 * --allow-downgrade: like cli_policy_flag. */
int cli_bundle_flag(struct cli_policy *p, int argc, char **argv, int *i);
int cli_policy_is_bundle(const struct cli_policy *p);
/* Verifies the bundle (or, run = 1 and no --policy, the one drop-in bundle of
 * $GONDOLIN_POLICIES_DIR or /etc/gondolin/policies.d), checks (run = 1) and records
 * its revision, writes its files to a private directory and points p->policy and
 * p->plugins at them. Nothing to do without a bundle. 0, or an exit code after a
 * one-line error. */
int cli_policy_resolve(struct cli_policy *p, int run);
/* Live updates of a --bundle URL (bundle_live.c): fetch (200: *buf malloc'd, etag),
 * and a poller that verifies and hot-swaps new revisions into sb (no-op without a URL).
 * stop before the loop's last run. */
int cli_bundle_is_url(const char *s);
int cli_bundle_fetch(const char *url, char **buf, size_t *n, char etag[130], struct gd_err *err);
int cli_bundle_live_start(struct cli_policy *p, uv_loop_t *loop, gd_sandbox *sb);
void cli_bundle_live_stop(struct cli_policy *p);
/* $XDG_STATE_HOME/gondolin/bundles.json (~/.local/state). */
void cli_bundle_state_path(char *out, size_t cap);
/* The trusted signers' ids (16 hex digits each, comma-separated). */
struct gd_bundle_info;
void cli_bundle_signers(const struct gd_bundle_info *in, char *out, size_t cap);
/* Runs every test case file of the resolved bundle: 0 all passed, 1 otherwise. */
int cli_bundle_run_tests(struct cli_policy *p);
void cli_bundle_free(struct cli_policy *p);
/* The trust roots: dirs (NULL-ended) if given, else /etc/gondolin/trust.d and
 * $XDG_CONFIG_HOME/gondolin/trust.d (~/.config). 0, or an exit code after an error. */
struct gd_bundle_trust;
int cli_bundle_trust(const char *const *dirs, struct gd_bundle_trust *t);
/* Opens and verifies path against p's trust roots and threshold, now and this version. */
typedef struct gd_bundle gd_bundle;
int cli_bundle_open(struct cli_policy *p, const char *path, gd_bundle **b, struct gd_err *err);
/* Runs the cases of cases_path against p's policy (no VM) and prints the table:
 * 0 all passed, 1 a case failed or the policy did not load, 2 bad case file. */
int cli_policy_test(struct cli_policy *p, const char *cases_path);
int cmd_bundle(int argc, char **argv);
int cli_bundle_serve(int argc, char **argv); /* bundle_serve.c */

/* Ingress and SSH flags of exec/bash/start (sandbox_flags.c). */
struct cli_sandbox_flags {
    struct gd_sandbox_listen *listen;
    size_t nlisten;
    int ssh;
    const char *ssh_user;
    char ssh_host[64];
    unsigned ssh_port;
    /* files (mount_flags.c) */
    struct cli_mount {
        struct gd_mount m;
        char buf[4200];
        char host[4096]; /* the host directory, absolute */
    } mounts[GD_VFS_MAX_MOUNTS];
    size_t nmounts;
    struct gd_mount mspec[GD_VFS_MAX_MOUNTS];
    const char *hide[33]; /* --hide globs, NULL-ended */
    size_t nhide;
};
/* --mount-hostfs, --mount-overlay, --mount-memfs, --hide: like cli_sandbox_flag. */
int cli_mount_flag(struct cli_sandbox_flags *f, int argc, char **argv, int *i);
void cli_mount_opts(struct cli_sandbox_flags *f, struct gd_sandbox_opts *o);
/* 1 consumed (advancing *i), 0 not one of these flags, -1 bad value (message printed). */
int cli_sandbox_flag(struct cli_sandbox_flags *f, int argc, char **argv, int *i);
void cli_sandbox_opts(struct cli_sandbox_flags *f, struct gd_sandbox_opts *o);
/* One stderr line per ingress listener of sb. */
void cli_print_forwards(gd_sandbox *sb);
void cli_sandbox_flags_free(struct cli_sandbox_flags *f);
/* A new private (0700) directory in the sessions directory, named .WHAT-XXXXXX. */
int cli_private_dir(const char *what, char *out, size_t cap);

int cmd_exec(int argc, char **argv, int pty);
/* Sessions (docs/sessions.md): start (cmd_start.c); ls, stop, logs (cmd_session.c);
 * exec --session and attach (cmd_sexec.c); cp (cmd_cp.c). */
int cmd_start(int argc, char **argv);
/* What `start` and `fork` share (cmd_start.c): the flags, one supervisor spawned and
 * waited for, the new session printed. */
struct cli_start {
    struct cli_vm_flags vf;
    struct cli_policy pol;
    struct cli_sandbox_flags sf;
    const char **env; /* NULL-ended */
    size_t nenv;
    const char *name;
    int json, no_network;
};
/* 1 consumed (advancing *i), 0 not a start flag, -1 bad value (message printed). */
int cli_start_flag(struct cli_start *st, int argc, char **argv, int *i);
/* The flags' combinations: 0, or the exit code (message printed). */
int cli_start_check(const struct cli_start *st);
/* A session from st named name (or NULL), ready: 0 and its id, or the exit code. */
int cli_start_spawn(struct cli_start *st, const char *name, char id[37]);
int cli_start_print(const char *id, int json);
int cmd_fork(int argc, char **argv); /* cmd_fork.c */
int cmd_ls(int argc, char **argv);
int cmd_stop(int argc, char **argv);
int cmd_logs(int argc, char **argv);
int cmd_expose(int argc, char **argv);
int cmd_diff(int argc, char **argv);     /* cmd_diff.c */
int cmd_snapshot(int argc, char **argv); /* cmd_snapshot.c */
int cmd_ssh(int argc, char **argv);
/* Asks the session's supervisor for SSH access (starting sshd on first use); *out is
 * the reply (host, port, user, identity, known_hosts, command). Prints errors. */
int cli_session_ssh(const char *key, const char *user, const char *listen, cJSON **out);
int cmd_sexec(int argc, char **argv);
int cmd_attach(int argc, char **argv);
int cmd_cp(int argc, char **argv);
/* Finds a live session by id, id prefix or name and (c not NULL) connects to it. 0, or
 * an exit code after a one-line error. */
int cli_session_open(const char *key, struct gd_session *s, gd_control_client **c);
/* One REQUEST to the session named by key: opens its socket, sends op with params
 * (taken; may be NULL), closes. 0 with *reply (owned, "ok" true or false: see
 * cli_reply_error), or the exit code with the reason printed. s (optional) gets the
 * session. */
int cli_session_request(const char *key, const char *op, cJSON *params, struct gd_session *s,
                        cJSON **reply);
/* NULL when a REPLY says ok, else its "error" (borrowed; "failed" when it has none). */
const char *cli_reply_error(const cJSON *reply);
/* The ID|NAME argument (and -h) of a session command: -1 consumed, else the exit code
 * to return (the usage was printed, or a one-line error naming its first line). */
int cli_session_arg(const char *a, const char **key, const char *usage);
/* `gondolin policy reload ID|NAME`: through the session's socket. */
int cli_session_reload(const char *key);
int cmd_policy(int argc, char **argv);
/* The file side of the policy tools (policy_fs.c). An fs case "OP /PATH [PATH2]
 * [r|w|rw|a|t]" -> ev (strings into buf), or -EINVAL with why. */
int cli_fs_event(const char *spec, struct gd_vfs_event *ev, char *buf, size_t cap, char *why,
                 size_t wcap);
/* Runs the before-chain for ev on the mount its path is under (sets ev->mount). */
int cli_fs_decide(gd_engine *e, struct gd_vfs_event *ev, char *rule, size_t rcap, char *reason,
                  size_t cap);
/* policy check's lines for mounts and fs hooks. */
void cli_fs_print_check(gd_engine *e);
/* policy_ssh.c: `policy test` SSH cases ("SSH [USER@]HOST[:PORT] COMMAND"; 1 pass, 0 fail
 * with why) and the ssh lines of `policy check`. */
int cli_ssh_case(gd_engine *e, const char *spec, const cJSON *exp, char *why, size_t cap, char *got,
                 size_t gcap);
void cli_ssh_print_check(gd_engine *e);
int cmd_doctor(int argc, char **argv);
int cmd_build(int argc, char **argv);
int cmd_image(int argc, char **argv);
/* Builds the default image into out (cmd_build.c). */
int cli_build_default(const char *out, int verbose, struct gd_err *err);

#endif
