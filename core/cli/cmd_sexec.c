/* cmd_sexec.c - `gondolin exec --session` and `gondolin attach`: one process in a
 * running session, over its control socket, with the one-shot exec's semantics (streams
 * apart, exit status, 128+N, stdin under credit, signals forwarded, PTY raw mode and
 * resize). attach: Ctrl-] detaches. */
#define _GNU_SOURCE
#include "cli.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <unistd.h>

#define ID 1
#define IN_CHUNK (64u << 10)
#define DETACH_KEY 0x1d /* Ctrl-] */

struct sx {
    gd_control_client *c;
    int pty, stdin_on, in_eof, detach;
    uint64_t in_credit;
    int out_closed[3];
    int tty_raw;
    struct termios saved;
    int signals, forced;
    int code; /* -1 while running */
};

static int sigpipe_fd[2] = {-1, -1};

static void on_sig(int sig)
{
    int e = errno;
    unsigned char b = (unsigned char)sig;
    if (write(sigpipe_fd[1], &b, 1) < 0) {
        /* full: a signal of that burst is already pending */
    }
    errno = e;
}

static void write_out(struct sx *x, int fd, const uint8_t *p, size_t n)
{
    while (n && !x->out_closed[fd]) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && errno == EAGAIN) { /* a non-blocking stdout: wait until it drains */
            struct pollfd pf = {fd, POLLOUT, 0};
            poll(&pf, 1, 100);
            continue;
        }
        if (w < 0) {
            x->out_closed[fd] = 1; /* the reader went away: keep draining the process */
            return;
        }
        p += w;
        n -= (size_t)w;
    }
}

static void send_json(struct sx *x, unsigned type, char *text)
{
    if (text)
        gd_control_client_send(x->c, type, 0, ID, text, strlen(text));
    free(text);
}

static void winsize(unsigned *rows, unsigned *cols)
{
    struct winsize ws;
    if ((ioctl(0, TIOCGWINSZ, &ws) == 0 || ioctl(1, TIOCGWINSZ, &ws) == 0) && ws.ws_row &&
        ws.ws_col) {
        *rows = ws.ws_row;
        *cols = ws.ws_col;
    }
}

static void restore_tty(struct sx *x)
{
    if (x->tty_raw) {
        tcsetattr(0, TCSADRAIN, &x->saved);
        x->tty_raw = 0;
    }
}

static void on_signal(struct sx *x, int sig)
{
    char b[64];
    if (sig == SIGWINCH) {
        unsigned rows = 0, cols = 0;
        winsize(&rows, &cols);
        if (x->pty && rows) {
            snprintf(b, sizeof(b), "{\"rows\":%u,\"cols\":%u}", rows, cols);
            gd_control_client_send(x->c, GD_CONTROL_RESIZE, 0, ID, b, strlen(b));
        }
        return;
    }
    if (sig != SIGQUIT)
        x->signals++;
    if (x->signals == 2 && sig != SIGQUIT) {
        /* the process did not go: hang it up (SIGHUP, SIGKILL 2 s later) */
        x->forced = 128 + sig;
        gd_control_client_send(x->c, GD_CONTROL_CANCEL, 0, ID, NULL, 0);
        return;
    }
    if (x->signals > 2) {
        x->code = 128 + sig; /* leaving closes the connection: the process is hung up */
        return;
    }
    int fwd = x->pty && (sig == SIGTERM || sig == SIGHUP) ? SIGHUP : sig;
    snprintf(b, sizeof(b), "{\"signal\":%d}", fwd);
    gd_control_client_send(x->c, GD_CONTROL_SIGNAL, 0, ID, b, strlen(b));
}

static void on_frame(struct sx *x, const struct gd_control_hdr *h, const uint8_t *body)
{
    if (h->type == GD_CONTROL_ERROR && (h->id == ID || h->id == 0)) {
        char code[64], msg[512];
        if (gd_control_parse_error(body, h->len, code, sizeof(code), msg, sizeof(msg)))
            snprintf(msg, sizeof(msg), "malformed ERROR");
        restore_tty(x);
        x->code = cli_die(125, "the supervisor refused: %s (%s)", msg, code);
        return;
    }
    if (h->id != ID)
        return;
    switch (h->type) {
    case GD_CONTROL_STDIN_WINDOW:
        x->in_credit += gd_control_get_u32(body);
        break;
    case GD_CONTROL_OUTPUT: {
        write_out(x, h->flags == 2 ? 2 : 1, body, h->len);
        uint8_t g[8] = {0};
        gd_control_put_u32(g + (h->flags == 2 ? 4 : 0), h->len);
        gd_control_client_send(x->c, GD_CONTROL_WINDOW, 0, ID, g, 8);
        break;
    }
    case GD_CONTROL_EXIT: {
        struct gd_control_exit e;
        restore_tty(x);
        if (gd_control_parse_exit(body, h->len, &e, NULL, 0)) {
            x->code = cli_die(125, "malformed EXIT from the supervisor");
            break;
        }
        if (e.error[0])
            fprintf(stderr, "gondolin: %s\n", e.error);
        x->code = x->forced ? x->forced : e.exit_code;
        break;
    }
    }
}

/* Forwards what stdin has, up to the credit; attach: Ctrl-] detaches. */
static void pump_stdin(struct sx *x)
{
    static uint8_t buf[IN_CHUNK];
    size_t want = x->in_credit < IN_CHUNK ? (size_t)x->in_credit : IN_CHUNK;
    ssize_t n = read(0, buf, want);
    if (n < 0 && (errno == EINTR || errno == EAGAIN))
        return;
    if (n <= 0) {
        gd_control_client_send(x->c, GD_CONTROL_STDIN, GD_CONTROL_STDIN_EOF, ID, NULL, 0);
        x->in_eof = 1;
        return;
    }
    if (x->detach) {
        uint8_t *k = memchr(buf, DETACH_KEY, (size_t)n);
        if (k) {
            if (k > buf)
                gd_control_client_send(x->c, GD_CONTROL_STDIN, 0, ID, buf, (size_t)(k - buf));
            x->code = 0;
            x->detach = 2;
            return;
        }
    }
    gd_control_client_send(x->c, GD_CONTROL_STDIN, 0, ID, buf, (size_t)n);
    x->in_credit -= (uint64_t)n;
}

static int run(struct sx *x, struct gd_control_exec *e)
{
    x->code = -1;
    if (pipe2(sigpipe_fd, O_CLOEXEC | O_NONBLOCK))
        return cli_die(125, "pipe: %s", strerror(errno));
    struct sigaction sa = {.sa_handler = on_sig};
    static const int sigs[5] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGWINCH};
    for (int i = 0; i < 5; i++)
        sigaction(sigs[i], &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    if (x->pty)
        winsize(&e->rows, &e->cols);
    send_json(x, GD_CONTROL_EXEC, gd_control_encode_exec(e));
    if (x->pty && isatty(0) && tcgetattr(0, &x->saved) == 0) {
        struct termios t = x->saved;
        cfmakeraw(&t);
        tcsetattr(0, TCSADRAIN, &t);
        x->tty_raw = 1;
    }
    while (x->code < 0) {
        struct pollfd pf[3] = {
            {gd_control_client_fd(x->c), POLLIN, 0}, {sigpipe_fd[0], POLLIN, 0}, {0, POLLIN, 0}};
        int nf = x->stdin_on && !x->in_eof && x->in_credit ? 3 : 2;
        if (poll(pf, (nfds_t)nf, -1) < 0 && errno != EINTR)
            break;
        if (pf[1].revents) {
            unsigned char s[16];
            ssize_t k = read(sigpipe_fd[0], s, sizeof(s));
            for (ssize_t i = 0; i < k && x->code < 0; i++)
                on_signal(x, s[i]);
        }
        if (x->code < 0 && nf == 3 && pf[2].revents)
            pump_stdin(x);
        if (x->code < 0 && pf[0].revents) {
            int rc = gd_control_client_fill(x->c);
            struct gd_control_hdr h;
            const uint8_t *body;
            int k;
            while (x->code < 0 && (k = gd_control_client_next(x->c, &h, &body)) == 1)
                on_frame(x, &h, body);
            if (x->code < 0 && ((rc < 0 && rc != -EINTR && rc != -EAGAIN) || k < 0)) {
                restore_tty(x);
                x->code = cli_die(125, "the session's supervisor went away");
            }
        }
    }
    restore_tty(x);
    if (x->detach == 2)
        fprintf(stderr, "\r\ngondolin: detached; the session keeps running\r\n");
    return x->code < 0 ? 125 : x->code;
}

/* Flags shared by exec --session and attach: 1 consumed, 0 not ours, -1 bad. */
static int env_cwd_flag(int argc, char **argv, int *i, const char **env, size_t *nenv,
                        const char **cwd)
{
    const char *a = argv[*i], *kv = NULL;
    if ((!strcmp(a, "-e") || !strcmp(a, "--env")) && *i + 1 < argc)
        kv = argv[++*i];
    else if (!strncmp(a, "--env=", 6))
        kv = a + 6;
    else if ((!strcmp(a, "-w") || !strcmp(a, "--cwd")) && *i + 1 < argc)
        *cwd = argv[++*i];
    else if (!strncmp(a, "--cwd=", 6))
        *cwd = a + 6;
    else
        return 0;
    if (kv && (!strchr(kv, '=') || kv[0] == '=')) {
        cli_die(2, "--env wants KEY=VALUE, not '%s'", kv);
        return -1;
    }
    if (kv)
        env[(*nenv)++] = kv;
    return 1;
}

static void add_term(const char **env, size_t *nenv)
{
    static char termkv[256];
    const char *term = getenv("TERM");
    snprintf(termkv, sizeof(termkv), "TERM=%s", term && *term ? term : "xterm-256color");
    env[(*nenv)++] = termkv;
}

static int go(const char *key, struct gd_control_exec *e, int detach)
{
    struct gd_session s;
    struct sx x = {.pty = e->pty, .stdin_on = e->stdin_stream, .detach = detach};
    int rc = cli_session_open(key, &s, &x.c);
    if (rc)
        return rc == 1 ? 125 : rc;
    rc = run(&x, e);
    gd_control_client_close(x.c);
    return rc;
}

int cmd_sexec(int argc, char **argv)
{
    static const char **env; /* (static: reachable until exit on every path) */
    env = calloc((size_t)argc + 2, sizeof(char *));
    size_t nenv = 0;
    const char *key = NULL, *cwd = NULL, *shell = NULL;
    int tty = 0, no_stdin = 0;
    char **cmd = NULL;
    for (int i = 1; i < argc && !cmd; i++) {
        const char *a = argv[i];
        int k = env_cwd_flag(argc, argv, &i, env, &nenv, &cwd);
        if (k < 0)
            return 2;
        if (k)
            continue;
        if (!strcmp(a, "--"))
            cmd = argv + i + 1;
        else if (!strcmp(a, "--session") && i + 1 < argc)
            key = argv[++i];
        else if (!strncmp(a, "--session=", 10))
            key = a + 10;
        else if (!strcmp(a, "-c") && i + 1 < argc)
            shell = argv[++i];
        else if (!strcmp(a, "-t") || !strcmp(a, "--tty"))
            tty = 1;
        else if (!strcmp(a, "--no-stdin"))
            no_stdin = 1;
        else if (a[0] == '-')
            return cli_die(2,
                           "exec --session: unknown or incomplete flag '%s' (the VM, policy "
                           "and egress flags belong to `gondolin start`)",
                           a);
        else
            return cli_die(2,
                           "exec: put the command after `--` (gondolin exec --session ID -- "
                           "%s ...)",
                           a);
    }
    if (!key)
        return cli_die(2, "exec: --session needs an id or a name");
    if (!shell && (!cmd || !cmd[0]))
        return cli_die(2, "exec: no command given (gondolin exec --session ID -- CMD, or -c "
                          "'STRING')");
    if (shell && cmd && cmd[0])
        return cli_die(2, "exec: give either -c STRING or `-- CMD`, not both");
    if (tty)
        add_term(env, &nenv);
    struct gd_control_exec e = {.argv = shell ? NULL : (const char **)cmd,
                                .shell = shell,
                                .env = nenv ? env : NULL,
                                .cwd = cwd,
                                .pty = tty,
                                .rows = 24,
                                .cols = 80,
                                .stdin_stream = !no_stdin && (tty || !isatty(0)),
                                .window = GD_CONTROL_DEFAULT_WINDOW};
    int rc = go(key, &e, 0);
    free(env);
    return rc;
}

int cmd_attach(int argc, char **argv)
{
    static const char **env; /* (static: reachable until exit on every path) */
    env = calloc((size_t)argc + 2, sizeof(char *));
    size_t nenv = 0;
    const char *key = NULL, *cwd = NULL;
    char **cmd = NULL;
    static const char usage[] =
        "usage: gondolin attach ID|NAME [-e K=V] [-w DIR] [-- CMD...]\n\n"
        "An interactive shell (the image's bash, else sh) on a PTY in a running\n"
        "session. Resizes propagate. Ctrl-] detaches: the shell is hung up, the\n"
        "session keeps running (its files and background processes stay).\n";
    for (int i = 1; i < argc && !cmd; i++) {
        int k = env_cwd_flag(argc, argv, &i, env, &nenv, &cwd);
        if (k < 0)
            return 2;
        if (k)
            continue;
        if (!strcmp(argv[i], "--"))
            cmd = argv + i + 1;
        else if ((k = cli_session_arg(argv[i], &key, usage)) >= 0)
            return k;
    }
    static const char *shell_argv[] = {
        "/bin/sh", "-c", "if command -v bash >/dev/null 2>&1; then exec bash -l; fi; exec sh -l",
        NULL};
    add_term(env, &nenv);
    struct gd_control_exec e = {.argv = cmd && cmd[0] ? (const char **)cmd : shell_argv,
                                .env = env,
                                .cwd = cwd,
                                .pty = 1,
                                .rows = 24,
                                .cols = 80,
                                .stdin_stream = 1,
                                .window = GD_CONTROL_DEFAULT_WINDOW};
    int rc = go(key, &e, 1);
    free(env);
    return rc;
}
