/* ssh_int.h - what the files of core/ssh share. */
#ifndef GD_SSH_INT_H
#define GD_SSH_INT_H

#include <stddef.h>

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

/* An upstream exec (upstream.c): a connected, verified, authenticated libssh session
 * with an exec channel open. */
struct gd__ssh_up {
    void *session; /* ssh_session */
    void *channel; /* ssh_channel */
};
struct gd_ssh_flow;
/* Opens it for user and cmd; set_fd(ud, fd) publishes the TCP socket (and -1 before it
 * closes) so the proxy can cut it. On failure returns -1 with one line in why. */
int gd__ssh_up_open(const struct gd_ssh_flow *f, const char *user, const char *cmd,
                    unsigned connect_ms, unsigned timeout_ms, void (*set_fd)(void *, int), void *ud,
                    struct gd__ssh_up *u, char *why, size_t wcap);
void gd__ssh_up_close(struct gd__ssh_up *u, void (*set_fd)(void *, int), void *ud);

#endif
