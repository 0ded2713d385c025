/* ssh_int.h - what the files of core/ssh share. */
#ifndef GD_SSH_INT_H
#define GD_SSH_INT_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

/* Glob of OpenSSH's patterns: '*' any run of bytes, '?' one byte, everything else
 * literal; fold: ASCII case-insensitive. Linear backtracking (one star remembered), so
 * no input is slow. 1 or 0. */
int gd__ssh_glob(const char *p, size_t pl, const char *s, size_t sl, int fold);

/* Whether ok() holds for every sep-separated piece of [s, s+n) (an empty s is one empty
 * piece). */
int gd__ssh_each(const char *s, size_t n, char sep, int (*ok)(const char *p, size_t l));

/* The message callback that answers and frees every SSH request as it arrives
 * (proxy.c), an ssh_set_message_callback callback: sessions whose requests nobody takes
 * (the upstream's; the guest's during an exec) never queue them. */
int gd__ssh_refuse_message(void *session, void *message, void *ud);

/* The uv_poll events a non-blocking libssh session needs now: readable always, writable
 * while libssh holds bytes the socket did not take (SSH_WRITE_PENDING). */
int gd__ssh_poll_events(void *session);

/* ---- the log's rate limit (loglimit.c) ---- */

/* A token bucket: GD__SSH_LOG_BURST lines at once, GD__SSH_LOG_RATE a second after. */
#define GD__SSH_LOG_BURST 20
#define GD__SSH_LOG_RATE 5
struct gd__ssh_loglimit {
    double tokens;
    uint64_t last_ms; /* 0: never used (a full bucket) */
    unsigned long suppressed;
};
/* Whether a line may go out at now_ms; when it may, *dropped is the count of lines
 * dropped since the last one that went out (to say so first), else it is counted. */
int gd__ssh_loglimit_take(struct gd__ssh_loglimit *l, uint64_t now_ms, unsigned long *dropped);

/* ---- one upstream exec (upstream.c) ---- */

struct gd_ssh_flow;
typedef struct gd__ssh_up gd__ssh_up;

struct gd__ssh_up_opts {
    uv_loop_t *loop;
    const struct gd_ssh_flow *flow; /* borrowed until gd__ssh_up_close */
    const char *user, *cmd;         /* copied */
    unsigned connect_ms, handshake_ms;
    /* Called once, on the loop, when the exec channel is open (ok 1) or the attempt failed
     * (ok 0: gd__ssh_up_why says why). May call gd__ssh_up_close. */
    void (*on_open)(gd__ssh_up *u, int ok, void *ud);
    /* After on_open(1): the upstream's socket was ready and libssh has run. */
    void (*on_io)(gd__ssh_up *u, void *ud);
    void *ud;
};

/* Starts opening an upstream exec without blocking: the name resolved (uv_getaddrinfo, or
 * the flow's --resolve address), internal addresses refused unless the flow allows them,
 * a TCP connect per address under connect_ms, then SSH handshake, host key check, auth,
 * channel and exec under handshake_ms. 0 with *out, or -1 (nothing to close) with one
 * line in why for the guest and one in detail for the host's log (with host paths). */
int gd__ssh_up_start(const struct gd__ssh_up_opts *o, gd__ssh_up **out, char *why, size_t wcap,
                     char *detail, size_t dcap);
/* The session and exec channel (after on_open(1)); ssh_session / ssh_channel. */
void *gd__ssh_up_session(gd__ssh_up *u);
void *gd__ssh_up_channel(gd__ssh_up *u);
/* Why it failed: the guest's line (no host path in it) and the host log's (with them). */
const char *gd__ssh_up_why(gd__ssh_up *u);
const char *gd__ssh_up_detail(gd__ssh_up *u);
/* Watches the socket for what libssh needs now (call after writing to the session). */
void gd__ssh_up_rearm(gd__ssh_up *u);
/* Ends it on the loop: a pending resolution is cancelled, handles closed; the session is
 * freed once they are. No callback runs afterwards. Safe inside its callbacks. */
void gd__ssh_up_close(gd__ssh_up *u);

/* The refusal for a host key that is not KNOWN: guest gets host, key type and
 * fingerprint; host (the log) also the known_hosts file and line. hp is "host" or
 * "[host]:port". status is a gd_ssh_kh_status. */
void gd__ssh_hostkey_refusal(const char *hp, const char *type, const char *fp, int status,
                             const char *file, unsigned line, char *guest, size_t gcap, char *host,
                             size_t hcap);

#endif
