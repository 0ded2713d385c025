/*
 * sandboxd - the gondolin guest agent (PID 1 of the guest root).
 *
 * Serves the control channel (docs/protocol.md) on the virtio-serial port named
 * "gondolin.ctl": runs processes by argv or through /bin/sh -lc, with env, cwd,
 * stdin streaming, credit-based stdout/stderr streaming, PTYs with resize, signals,
 * TCP tunnels to the guest's loopback (a session whose stdin and stdout are a socket),
 * and many concurrent sessions. One thread, one poll loop: every buffer has a fixed
 * ceiling, and child output is only read while the host has granted credit for it and
 * the port's outbound queue has room.
 */
#define _GNU_SOURCE
#include "../core/ctl/proto.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/reboot.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

/* <linux/random.h> (the musl toolchain has no kernel headers) */
#define RNDADDENTROPY _IOW('R', 0x03, int[2])
#define RNDRESEEDCRNG _IO('R', 0x07)

#define AGENT_VERSION "sandboxd 0.1.0"
#define PORT_NAME "gondolin.ctl"
#define MAX_SESS 256
#define STDIN_WINDOW (256u * 1024u)
#define OUTQ_CAP (4u * 1024u * 1024u)
#define OUTQ_HIGH (512u * 1024u)
#define DRAIN_GRACE_MS 100
#define CONNECT_TIMEOUT_MS 10000

extern char **environ;

struct sess {
    uint32_t id;
    pid_t pid;
    uint32_t flags;
    int fd[3]; /* stdin (write end), stdout, stderr (read ends); pty: fd[0]==fd[1] */
    uint32_t credit[3];
    uint8_t *in;
    uint32_t in_len;
    uint32_t in_consumed; /* written to the child but not yet granted back */
    int in_eof;           /* host sent EOF: close stdin once drained */
    int exited, status;
    long long exit_ms;
    int slave;                  /* pty: our slave fd, to see when its input is consumed */
    int veof_pending;           /* pty: host stdin ended; send VEOF once input is read */
    long long veof_quiet_since; /* when the slave's input queue was first seen empty */
    /* tunnels (GD_EXEC_CONNECT): fd[0] == fd[1] is the socket once connected */
    int sock;              /* the socket while its connect is in progress, else -1 */
    int family;            /* the address being tried: AF_INET, then AF_INET6 */
    int v4_err;            /* why 127.0.0.1 failed */
    uint16_t port;         /* guest loopback port */
    long long conn_expiry; /* the connect's deadline */
    int reset;             /* the connection was reset: EXIT code 1 */
    int orphan;            /* its host is gone (RESUME NEW_HOST): a pty kept open until the process
                              ends, never polled, never reported */
};

static int port = -1;
static uint8_t rbuf[GD_PROTO_HDR_LEN + GD_PROTO_MAX_BODY];
static struct gd_reader rd;
static uint8_t *outq;
static size_t outq_len, outq_off;
static struct sess *sessions[MAX_SESS];
static struct gd_str scratch_argv[GD_PROTO_MAX_ARGS], scratch_env[GD_PROTO_MAX_ARGS];

static void logmsg(const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof(buf) - 1, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if (n > (int)sizeof(buf) - 2)
        n = (int)sizeof(buf) - 2;
    buf[n++] = '\n';
    int fd = open("/dev/kmsg", O_WRONLY | O_CLOEXEC);
    if (fd >= 0) {
        if (write(fd, buf, (size_t)n) < 0) {
        }
        close(fd);
    }
}

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void power_off(void)
{
    sync();
    reboot(RB_POWER_OFF);
    reboot(RB_AUTOBOOT);
    _exit(1);
}

/* ---- port output queue ---- */

static void outq_flush(void)
{
    while (outq_off < outq_len) {
        ssize_t n = write(port, outq + outq_off, outq_len - outq_off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN)
                break;
            logmsg("sandboxd: port write: %s", strerror(errno));
            power_off();
        }
        outq_off += (size_t)n;
    }
    if (outq_off == outq_len)
        outq_off = outq_len = 0;
}

/* Reserve room for a frame of up to `n` bytes at the queue tail. */
static uint8_t *outq_reserve(size_t n)
{
    if (outq_off && outq_len + n > OUTQ_CAP) {
        memmove(outq, outq + outq_off, outq_len - outq_off);
        outq_len -= outq_off;
        outq_off = 0;
    }
    if (outq_len + n > OUTQ_CAP) {
        /* Only control frames can get here (data reads are gated on OUTQ_HIGH);
         * block until the host drains: never drop a frame. */
        int fl = fcntl(port, F_GETFL);
        fcntl(port, F_SETFL, fl & ~O_NONBLOCK);
        outq_flush();
        fcntl(port, F_SETFL, fl);
    }
    return outq + outq_len;
}

static void send_enc(struct gd_enc *e)
{
    long n = gd_enc_finish(e);
    if (n < 0) {
        logmsg("sandboxd: encode failed");
        return;
    }
    outq_len += (size_t)n;
}

#define FRAME_SMALL 4096

static void send_u32(uint8_t type, uint8_t flags, uint32_t id, uint32_t v)
{
    struct gd_enc e;
    gd_enc_init(&e, outq_reserve(64), 64, type, flags, id);
    gd_enc_u32(&e, v);
    send_enc(&e);
}

static void send_error(uint32_t id, uint32_t code, const char *fmt, ...)
{
    char m[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(m, sizeof(m), fmt, ap);
    va_end(ap);
    struct gd_enc e;
    gd_enc_init(&e, outq_reserve(FRAME_SMALL), FRAME_SMALL, GD_MSG_ERROR, 0, id);
    gd_enc_u32(&e, code);
    gd_enc_str(&e, m, strlen(m));
    send_enc(&e);
}

/* ---- sessions ---- */

static struct sess *sess_find(uint32_t id)
{
    for (int i = 0; i < MAX_SESS; i++)
        if (sessions[i] && !sessions[i]->orphan && sessions[i]->id == id)
            return sessions[i];
    return NULL;
}

/* A pty master or a tunnel's socket is stdin and stdout at once. */
static int shared_fd(const struct sess *s)
{
    return (s->flags & (GD_EXEC_PTY | GD_EXEC_CONNECT)) != 0;
}

static void sess_close_fd(struct sess *s, int i)
{
    if (s->fd[i] < 0)
        return;
    if (shared_fd(s) && i <= 1) {
        /* one fd, owned by stdout: the end of stdin only stops input (a tunnel sends
         * its FIN), the end of stdout closes it */
        if (i == 0 && (s->flags & GD_EXEC_CONNECT))
            shutdown(s->fd[0], SHUT_WR);
        if (i == 1)
            close(s->fd[1]);
        s->fd[i] = -1;
        if (i == 1)
            s->fd[0] = -1;
        return;
    }
    close(s->fd[i]);
    s->fd[i] = -1;
}

static void sess_free(struct sess *s)
{
    for (int i = 0; i < MAX_SESS; i++)
        if (sessions[i] == s)
            sessions[i] = NULL;
    if (s->slave >= 0)
        close(s->slave);
    if (s->sock >= 0)
        close(s->sock);
    if (shared_fd(s)) {
        if (s->fd[1] >= 0)
            close(s->fd[1]);
    } else {
        for (int i = 0; i < 3; i++)
            if (s->fd[i] >= 0)
                close(s->fd[i]);
    }
    free(s->in);
    free(s);
}

static void sess_finish(struct sess *s)
{
    struct gd_enc e;
    uint32_t code = 0, sig = 0;
    if (WIFEXITED(s->status))
        code = (uint32_t)WEXITSTATUS(s->status);
    else if (WIFSIGNALED(s->status))
        sig = (uint32_t)WTERMSIG(s->status);
    gd_enc_init(&e, outq_reserve(64), 64, GD_MSG_EXIT, 0, s->id);
    gd_enc_u32(&e, code);
    gd_enc_u32(&e, sig);
    send_enc(&e);
    sess_free(s);
}

static char *dupstr(struct gd_str s)
{
    char *p = malloc((size_t)s.len + 1);
    if (!p)
        return NULL;
    memcpy(p, s.p, s.len);
    p[s.len] = 0;
    return p;
}

static void free_vec(char **v)
{
    if (!v)
        return;
    for (char **p = v; *p; p++)
        free(*p);
    free(v);
}

/* Environment: ours, overlaid by the request's K=V entries. */
static char **build_env(const struct gd_msg_exec *m)
{
    size_t base = 0;
    while (environ[base])
        base++;
    char **env = calloc(base + m->envc + 1, sizeof(char *));
    if (!env)
        return NULL;
    size_t n = 0;
    for (size_t i = 0; i < base; i++)
        if (!(env[n++] = strdup(environ[i])))
            goto fail;
    for (uint32_t i = 0; i < m->envc; i++) {
        struct gd_str kv = m->env[i];
        size_t kl = (size_t)((const char *)memchr(kv.p, '=', kv.len) - kv.p);
        size_t j;
        for (j = 0; j < n; j++)
            if (!strncmp(env[j], kv.p, kl) && env[j][kl] == '=')
                break;
        char *s = dupstr(kv);
        if (!s)
            goto fail;
        if (j < n) {
            free(env[j]);
            env[j] = s;
        } else {
            env[n++] = s;
        }
    }
    env[n] = NULL;
    return env;
fail:
    free_vec(env);
    return NULL;
}

/* execvp's search, done in the parent: 0 and the path, or an errno. */
static int resolve_cmd(const char *cmd, char **envp, char *out, size_t cap)
{
    if (strchr(cmd, '/')) {
        snprintf(out, cap, "%s", cmd);
        return 0;
    }
    if (!cmd[0])
        return ENOENT;
    const char *path = "/usr/local/bin:/usr/bin:/bin";
    for (char **e = envp; *e; e++)
        if (!strncmp(*e, "PATH=", 5))
            path = *e + 5;
    int err = ENOENT;
    for (const char *p = path;; p++) {
        const char *end = strchrnul(p, ':');
        int n = snprintf(out, cap, "%.*s%s%s", (int)(end - p), p, end > p ? "/" : "", cmd);
        if (n > 0 && (size_t)n < cap) {
            struct stat st;
            if (access(out, X_OK) == 0 && stat(out, &st) == 0 && S_ISREG(st.st_mode))
                return 0;
            if (errno == EACCES)
                err = EACCES;
        }
        if (!*end)
            break;
        p = end;
    }
    return err;
}

/* ---- tunnels: a session whose stdin and stdout are a TCP connection ---- */

static void tunnel_dial(struct sess *s, int family);
static void stdin_flush(struct sess *s);

/* Connected: the socket becomes stdin and stdout, and the session starts. */
static void tunnel_up(struct sess *s, int fd)
{
    s->fd[0] = s->fd[1] = fd;
    send_u32(GD_MSG_STARTED, 0, s->id, 0);
    send_u32(GD_MSG_STDIN_WINDOW, 0, s->id, STDIN_WINDOW);
    stdin_flush(s); /* an EOF the host sent while we were connecting */
}

static void tunnel_fail(struct sess *s, int err)
{
    if (s->family == AF_INET && err != ETIMEDOUT) {
        s->v4_err = err; /* a service may listen on ::1 only */
        tunnel_dial(s, AF_INET6);
        return;
    }
    /* the fallback's own failure says more only if ::1 had something to say */
    if (s->family == AF_INET6 &&
        (err == ECONNREFUSED || err == EADDRNOTAVAIL || err == EAFNOSUPPORT || err == ENETUNREACH))
        err = s->v4_err;
    send_error(s->id, GD_ERR_EXEC_FAILED, "connect to guest port %u: %s", s->port, strerror(err));
    sess_free(s);
}

/* A non-blocking connect: done at once on loopback, or finished by tunnel_connected. */
static void tunnel_dial(struct sess *s, int family)
{
    s->family = family;
    int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        tunnel_fail(s, errno);
        return;
    }
    struct sockaddr_in a4 = {.sin_family = AF_INET,
                             .sin_port = htons(s->port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    struct sockaddr_in6 a6 = {
        .sin6_family = AF_INET6, .sin6_port = htons(s->port), .sin6_addr = IN6ADDR_LOOPBACK_INIT};
    int rc = family == AF_INET ? connect(fd, (struct sockaddr *)&a4, sizeof(a4))
                               : connect(fd, (struct sockaddr *)&a6, sizeof(a6));
    if (rc == 0) {
        tunnel_up(s, fd);
    } else if (errno == EINPROGRESS) {
        s->sock = fd;
    } else {
        int err = errno;
        close(fd);
        tunnel_fail(s, err);
    }
}

/* The socket of a connect in progress became writable, or its deadline passed. */
static void tunnel_connected(struct sess *s, int timed_out)
{
    int fd = s->sock, err = ETIMEDOUT;
    socklen_t el = sizeof(err);
    s->sock = -1;
    if (!timed_out && getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el))
        err = errno;
    if (!timed_out && err == 0) {
        tunnel_up(s, fd);
        return;
    }
    close(fd);
    tunnel_fail(s, err);
}

static void tunnel_start(uint32_t id, int slot, const struct gd_msg_exec *m)
{
    struct sess *s = calloc(1, sizeof(*s));
    if (!s || !(s->in = malloc(STDIN_WINDOW))) {
        free(s);
        send_error(id, GD_ERR_INTERNAL, "out of memory");
        return;
    }
    s->id = id;
    s->flags = m->flags | GD_EXEC_STDIN;
    s->fd[0] = s->fd[1] = s->fd[2] = -1;
    s->slave = s->sock = -1;
    s->credit[1] = m->stdout_window;
    gd_dec_port(&m->argv[0], &s->port); /* checked by gd_dec_exec */
    s->conn_expiry = now_ms() + CONNECT_TIMEOUT_MS;
    sessions[slot] = s;
    tunnel_dial(s, AF_INET);
}

/* SIGNAL on a tunnel: a connect in progress is cancelled (ERROR); a connection is reset
 * and the session ends as if killed by that signal. */
static void tunnel_abort(struct sess *s, int sig)
{
    if (s->sock >= 0) {
        send_error(s->id, GD_ERR_EXEC_FAILED, "connect to guest port %u: cancelled", s->port);
        sess_free(s);
        return;
    }
    if (s->fd[1] >= 0) {
        struct linger lg = {.l_onoff = 1, .l_linger = 0};
        setsockopt(s->fd[1], SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
        sess_close_fd(s, 1);
    }
    s->exited = 1;
    s->status = sig; /* WIFSIGNALED */
}

static void handle_exec(uint32_t id, const uint8_t *body, uint32_t len)
{
    struct gd_msg_exec m = {.argv = scratch_argv, .env = scratch_env};
    int rc = gd_dec_exec(body, len, &m, GD_PROTO_MAX_ARGS);
    if (rc) {
        send_error(id, GD_ERR_INVALID, "malformed EXEC request");
        return;
    }
    if (id == 0 || sess_find(id)) {
        send_error(id, GD_ERR_BUSY, "session id %u is in use", id);
        return;
    }
    int slot = -1;
    for (int i = 0; i < MAX_SESS; i++)
        if (!sessions[i]) {
            slot = i;
            break;
        }
    if (slot < 0) {
        send_error(id, GD_ERR_BUSY, "too many concurrent sessions (max %d)", MAX_SESS);
        return;
    }
    if (m.flags & GD_EXEC_CONNECT) {
        tunnel_start(id, slot, &m);
        return;
    }

    char **argv = NULL, **envp = NULL, *cwd = NULL;
    int pin[2] = {-1, -1}, pout[2] = {-1, -1}, perr[2] = {-1, -1}, pex[2] = {-1, -1};
    int master = -1, slave = -1;
    struct sess *s = calloc(1, sizeof(*s));
    if (!s)
        goto oom;
    s->id = id;
    s->flags = m.flags;
    s->fd[0] = s->fd[1] = s->fd[2] = -1;
    s->slave = s->sock = -1;
    s->credit[1] = m.stdout_window;
    s->credit[2] = m.stderr_window;

    if (m.flags & GD_EXEC_SHELL) {
        argv = calloc(4, sizeof(char *));
        if (!argv || !(argv[0] = strdup("/bin/sh")) || !(argv[1] = strdup("-lc")) ||
            !(argv[2] = dupstr(m.argv[0])))
            goto oom;
    } else {
        argv = calloc(m.argc + 1, sizeof(char *));
        if (!argv)
            goto oom;
        for (uint32_t i = 0; i < m.argc; i++)
            if (!(argv[i] = dupstr(m.argv[i])))
                goto oom;
    }
    if (!(envp = build_env(&m)) || !(cwd = dupstr(m.cwd)))
        goto oom;
    if (m.flags & GD_EXEC_STDIN) {
        s->in = malloc(STDIN_WINDOW);
        if (!s->in)
            goto oom;
    }

    if (pipe2(pex, O_CLOEXEC))
        goto syserr;
    if (m.flags & GD_EXEC_PTY) {
        struct winsize ws = {.ws_row = m.rows ? m.rows : 24, .ws_col = m.cols ? m.cols : 80};
        if (openpty(&master, &slave, NULL, NULL, &ws))
            goto syserr;
        fcntl(master, F_SETFD, FD_CLOEXEC);
        fcntl(slave, F_SETFD, FD_CLOEXEC);
    } else {
        if ((m.flags & GD_EXEC_STDIN) && pipe2(pin, O_CLOEXEC))
            goto syserr;
        if (pipe2(pout, O_CLOEXEC) || pipe2(perr, O_CLOEXEC))
            goto syserr;
    }

    /* PATH lookup here, so the child does nothing but syscalls: it runs on vfork,
     * which under TCG saves the copy-on-write faults of a full fork */
    char path[4096];
    int perr_lookup = resolve_cmd(argv[0], envp, path, sizeof(path));
    if (perr_lookup) {
        send_error(id, GD_ERR_EXEC_FAILED, "%s: %s", argv[0], strerror(perr_lookup));
        goto out_close;
    }
    pid_t pid = vfork();
    if (pid < 0)
        goto syserr;
    if (pid == 0) {
        sigset_t all;
        sigemptyset(&all);
        sigprocmask(SIG_SETMASK, &all, NULL);
        for (int sig = 1; sig < NSIG; sig++)
            signal(sig, SIG_DFL);
        int stage = 0;
        if (m.flags & GD_EXEC_PTY) {
            setsid();
            ioctl(slave, TIOCSCTTY, 0);
            dup2(slave, 0);
            dup2(slave, 1);
            dup2(slave, 2);
        } else {
            setpgid(0, 0);
            int nul = open("/dev/null", O_RDWR);
            dup2((m.flags & GD_EXEC_STDIN) ? pin[0] : nul, 0);
            dup2(pout[1], 1);
            dup2(perr[1], 2);
        }
        if (cwd[0] && chdir(cwd)) {
            stage = 1;
            goto child_fail;
        }
        execve(path, argv, envp);
        stage = 2;
    child_fail:;
        int err[2] = {stage, errno};
        if (write(pex[1], err, sizeof(err)) < 0) {
        }
        _exit(127);
    }
    close(pex[1]);
    pex[1] = -1;
    int err[2];
    ssize_t n;
    do
        n = read(pex[0], err, sizeof(err));
    while (n < 0 && errno == EINTR);
    close(pex[0]);
    pex[0] = -1;
    if (n == (ssize_t)sizeof(err)) {
        /* the child reports why it could not start, then exits 127; it is reaped by
         * the SIGCHLD handler as an unknown pid */
        send_error(id, GD_ERR_EXEC_FAILED, "%s: %s", err[0] == 1 ? cwd : argv[0], strerror(err[1]));
        goto out_close;
    }

    s->pid = pid;
    if (m.flags & GD_EXEC_PTY) {
        s->slave = slave; /* closed when the process exits, so the master then sees EIO */
        slave = -1;
        fcntl(master, F_SETFL, O_NONBLOCK);
        s->fd[0] = s->fd[1] = master;
        master = -1;
        if (!(m.flags & GD_EXEC_STDIN))
            s->fd[0] = -1;
    } else {
        if (m.flags & GD_EXEC_STDIN) {
            close(pin[0]);
            fcntl(pin[1], F_SETFL, O_NONBLOCK);
            s->fd[0] = pin[1];
        }
        close(pout[1]);
        close(perr[1]);
        fcntl(pout[0], F_SETFL, O_NONBLOCK);
        fcntl(perr[0], F_SETFL, O_NONBLOCK);
        s->fd[1] = pout[0];
        s->fd[2] = perr[0];
    }
    sessions[slot] = s;
    send_u32(GD_MSG_STARTED, 0, id, (uint32_t)pid);
    if (m.flags & GD_EXEC_STDIN)
        send_u32(GD_MSG_STDIN_WINDOW, 0, id, STDIN_WINDOW);
    free_vec(argv);
    free_vec(envp);
    free(cwd);
    return;

syserr:
    send_error(id, GD_ERR_EXEC_FAILED, "cannot start process: %s", strerror(errno));
    goto out_close;
oom:
    send_error(id, GD_ERR_INTERNAL, "out of memory");
out_close:
    for (int i = 0; i < 2; i++) {
        if (pin[i] >= 0)
            close(pin[i]);
        if (pout[i] >= 0)
            close(pout[i]);
        if (perr[i] >= 0)
            close(perr[i]);
        if (pex[i] >= 0)
            close(pex[i]);
    }
    if (master >= 0)
        close(master);
    if (slave >= 0)
        close(slave);
    free_vec(argv);
    free_vec(envp);
    free(cwd);
    if (s) {
        free(s->in);
        free(s);
    }
}

static void stdin_flush(struct sess *s)
{
    while (s->in_len && s->fd[0] >= 0) {
        ssize_t n = write(s->fd[0], s->in, s->in_len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN)
                break;
            /* reader gone (EPIPE): discard what is queued, keep granting; a tunnel's
             * connection is broken both ways */
            s->in_consumed += s->in_len;
            s->in_len = 0;
            if (s->flags & GD_EXEC_CONNECT) {
                s->reset = 1;
                sess_close_fd(s, 1);
            }
            sess_close_fd(s, 0);
            break;
        }
        memmove(s->in, s->in + n, s->in_len - (size_t)n);
        s->in_len -= (uint32_t)n;
        s->in_consumed += (uint32_t)n;
    }
    if (s->fd[0] < 0 && s->in_len) {
        s->in_consumed += s->in_len;
        s->in_len = 0;
    }
    if (s->in_consumed && (s->in_consumed >= STDIN_WINDOW / 4 || s->in_len == 0)) {
        send_u32(GD_MSG_STDIN_WINDOW, 0, s->id, s->in_consumed);
        s->in_consumed = 0;
    }
    if (s->in_eof && s->in_len == 0 && s->fd[0] >= 0) {
        if (s->flags & GD_EXEC_PTY)
            s->veof_pending = 1; /* see send_veof */
        else
            sess_close_fd(s, 0);
    }
}

/* A terminal has no EOF, only its VEOF character. Typed before the program reads
 * (while the tty may still switch modes) it can be lost, so it goes in once the
 * slave's input queue has stayed empty. Returns 1 while still waiting. */
static int send_veof(struct sess *s)
{
    /* the queue must stay empty for a while: bytes written to the master reach the
     * slave's queue through the tty flip buffer, a little later */
    int queued = 0;
    long long now = now_ms();
    if (s->slave >= 0 && ioctl(s->slave, FIONREAD, &queued) == 0 && queued > 0) {
        s->veof_quiet_since = 0;
        return 1;
    }
    if (!s->veof_quiet_since)
        s->veof_quiet_since = now;
    long long quiet = now - s->veof_quiet_since;
    struct termios t;
    int have = tcgetattr(s->fd[1], &t) == 0;
    /* a raw-mode reader (readline at its prompt) takes the character as EOF at once; in
     * cooked mode the program may be running, not reading, and a shell switching back
     * to raw mode would lose it: give it a second to get back to its prompt */
    if (quiet < 100 || (have && (t.c_lflag & ICANON) && quiet < 1000))
        return 1;
    char veof = have ? (char)t.c_cc[VEOF] : 4;
    if (write(s->fd[1], &veof, 1) < 0) {
    }
    s->veof_pending = 0;
    sess_close_fd(s, 0);
    return 0;
}

static void handle_stdin(uint32_t id, uint8_t flags, const uint8_t *body, uint32_t len)
{
    struct sess *s = sess_find(id);
    if (!s)
        return; /* raced with exit: drop */
    if (!s->in) {
        send_error(0, GD_ERR_INVALID, "session %u has no stdin", id);
        return;
    }
    uint32_t room = STDIN_WINDOW - s->in_len - s->in_consumed;
    if (len > room) {
        send_error(0, GD_ERR_INVALID, "session %u: stdin beyond granted window", id);
        len = room;
    }
    memcpy(s->in + s->in_len, body, len);
    s->in_len += len;
    if (flags & GD_STDIN_EOF)
        s->in_eof = 1;
    stdin_flush(s);
}

static void send_hello(void)
{
    struct gd_enc e;
    gd_enc_init(&e, outq_reserve(256), 256, GD_MSG_HELLO, 0, 0);
    gd_enc_u16(&e, GD_PROTO_MAJOR);
    gd_enc_u16(&e, GD_PROTO_MINOR);
    gd_enc_u32(&e, 0);
    gd_enc_str(&e, AGENT_VERSION, strlen(AGENT_VERSION));
    send_enc(&e);
}

/* This guest was restored from a memory snapshot (or just saved into one): everything
 * it shares with its other copies must diverge before any command runs. The host's
 * bytes are credited to the pool and a CRNG reseed is forced, so getrandom() and
 * /dev/urandom of each copy differ at once; the wall clock jumps to the host's (the
 * guest's clocks stood still while the snapshot was on disk). Then HELLO again: the
 * host takes no command before it. */
/* RESUME from a new host: the sessions' host ends are gone. Their processes run on:
 * pipes and tunnels close (as when a connection drops), a pty stays open (its shell
 * keeps its state) until its process ends. Then the token marks where the new host's
 * stream starts. */
static void drop_sessions(const uint8_t *token)
{
    for (int i = 0; i < MAX_SESS; i++) {
        struct sess *s = sessions[i];
        if (!s || s->orphan)
            continue;
        if ((s->flags & GD_EXEC_PTY) && !s->exited)
            s->orphan = 1;
        else
            sess_free(s);
    }
    struct gd_enc e;
    gd_enc_init(&e, outq_reserve(GD_PROTO_HDR_LEN + GD_RESUME_TOKEN_LEN),
                GD_PROTO_HDR_LEN + GD_RESUME_TOKEN_LEN, GD_MSG_PONG, 0, 0);
    gd_enc_bytes(&e, token, GD_RESUME_TOKEN_LEN);
    send_enc(&e);
}

static void handle_resume(const uint8_t *body, uint32_t len)
{
    struct gd_msg_resume m;
    if (gd_dec_resume(body, len, &m)) {
        send_error(0, GD_ERR_INVALID, "malformed RESUME");
        return;
    }
    if (m.token) /* first: the new host reads from the token on */
        drop_sessions(m.token);
    /* struct rand_pool_info: int entropy_count (bits), int buf_size, then the bytes */
    static int pool[2 + GD_RESUME_MAX_ENTROPY / sizeof(int)];
    pool[0] = (int)(m.entropy_len * 8);
    pool[1] = (int)m.entropy_len;
    memcpy(pool + 2, m.entropy, m.entropy_len);
    int fd = open("/dev/urandom", O_RDWR | O_CLOEXEC);
    if (fd < 0 || ioctl(fd, RNDADDENTROPY, pool) || ioctl(fd, RNDRESEEDCRNG, 0))
        send_error(0, GD_ERR_INTERNAL, "reseeding the guest CRNG: %s", strerror(errno));
    if (fd >= 0)
        close(fd);
    memset(pool, 0, sizeof(pool));
    struct timespec ts = {.tv_sec = (time_t)(m.realtime_ns / 1000000000u),
                          .tv_nsec = (long)(m.realtime_ns % 1000000000u)};
    if (clock_settime(CLOCK_REALTIME, &ts))
        send_error(0, GD_ERR_INTERNAL, "setting the guest clock: %s", strerror(errno));
    send_hello();
}

static void handle_frame(const struct gd_hdr *h, const uint8_t *body)
{
    struct sess *s;
    uint32_t a, b;
    uint16_t rows, cols;
    switch (h->type) {
    case GD_MSG_HELLO: {
        struct gd_msg_hello hello;
        if (gd_dec_hello(body, h->len, &hello) == 0 && hello.major != GD_PROTO_MAJOR)
            logmsg("sandboxd: host speaks protocol %u, we speak %u", hello.major, GD_PROTO_MAJOR);
        break;
    }
    case GD_MSG_EXEC:
        handle_exec(h->id, body, h->len);
        break;
    case GD_MSG_STDIN:
        handle_stdin(h->id, h->flags, body, h->len);
        break;
    case GD_MSG_WINDOW:
        if (gd_dec_u32x2(body, h->len, &a, &b))
            goto bad;
        if ((s = sess_find(h->id))) {
            s->credit[1] = (s->credit[1] + a < s->credit[1]) ? UINT32_MAX : s->credit[1] + a;
            s->credit[2] = (s->credit[2] + b < s->credit[2]) ? UINT32_MAX : s->credit[2] + b;
        }
        break;
    case GD_MSG_RESIZE:
        if (gd_dec_resize(body, h->len, &rows, &cols))
            goto bad;
        if ((s = sess_find(h->id)) && (s->flags & GD_EXEC_PTY) && s->fd[1] >= 0) {
            struct winsize ws = {.ws_row = rows, .ws_col = cols};
            ioctl(s->fd[1], TIOCSWINSZ, &ws);
        }
        break;
    case GD_MSG_SIGNAL:
        if (gd_dec_u32(body, h->len, &a) || a == 0 || a >= (uint32_t)NSIG)
            goto bad;
        if ((s = sess_find(h->id)) && !s->exited) {
            if (s->flags & GD_EXEC_CONNECT)
                tunnel_abort(s, (int)a);
            else if (kill(-s->pid, (int)a) != 0)
                kill(s->pid, (int)a);
        }
        break;
    case GD_MSG_PING: {
        struct gd_enc e;
        gd_enc_init(&e, outq_reserve(GD_PROTO_HDR_LEN + h->len), GD_PROTO_HDR_LEN + h->len,
                    GD_MSG_PONG, h->flags, h->id);
        gd_enc_bytes(&e, body, h->len);
        send_enc(&e);
        break;
    }
    case GD_MSG_RESUME:
        handle_resume(body, h->len);
        break;
    case GD_MSG_SHUTDOWN:
        outq_flush();
        for (int i = 0; i < MAX_SESS; i++)
            if (sessions[i] && sessions[i]->pid > 0)
                kill(-sessions[i]->pid, SIGKILL);
        power_off();
        break;
    default:
        goto bad;
    }
    return;
bad:
    send_error(h->id, GD_ERR_INVALID, "unexpected or malformed %s", gd_msg_type_name(h->type));
}

/* Read child output for stream i (1 or 2) into an OUTPUT frame. Returns bytes read,
 * 0 on EOF (fd closed), -1 when nothing is available. */
static int pump_output(struct sess *s, int i)
{
    uint32_t want = s->credit[i] < GD_PROTO_MAX_CHUNK ? s->credit[i] : GD_PROTO_MAX_CHUNK;
    uint8_t *f = outq_reserve(GD_PROTO_HDR_LEN + want);
    ssize_t n;
    do
        n = read(s->fd[i], f + GD_PROTO_HDR_LEN, want);
    while (n < 0 && errno == EINTR);
    if (n < 0 && errno == EAGAIN)
        return -1;
    if (n <= 0) { /* EOF, or EIO on a pty whose slave side is gone */
        if (n < 0 && (s->flags & GD_EXEC_CONNECT))
            s->reset = 1;
        sess_close_fd(s, i);
        return 0;
    }
    gd_hdr_write(f, GD_MSG_OUTPUT, (uint8_t)i, s->id, (uint32_t)n);
    outq_len += GD_PROTO_HDR_LEN + (size_t)n;
    s->credit[i] -= (uint32_t)n;
    return (int)n;
}

static void reap(int sfd)
{
    /* drain the signalfd, or poll() reports it readable forever (a busy loop that
     * steals the guest CPU from the very processes we run) */
    struct signalfd_siginfo si[16];
    while (read(sfd, si, sizeof(si)) > 0) {
    }
    int st;
    pid_t pid;
    while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
        for (int i = 0; i < MAX_SESS; i++) {
            struct sess *s = sessions[i];
            if (s && s->pid == pid && !s->exited) {
                s->exited = 1;
                s->status = st;
                s->exit_ms = now_ms();
                if (s->slave >= 0) {
                    close(s->slave);
                    s->slave = -1;
                }
                s->veof_pending = 0;
            }
        }
    }
}

static int find_port(char *path, size_t cap)
{
    DIR *d = opendir("/sys/class/virtio-ports");
    if (!d)
        return -1;
    struct dirent *de;
    int found = -1;
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.')
            continue;
        char p[300], name[64] = {0};
        snprintf(p, sizeof(p), "/sys/class/virtio-ports/%s/name", de->d_name);
        int fd = open(p, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            continue;
        ssize_t n = read(fd, name, sizeof(name) - 1);
        close(fd);
        if (n > 0 && !strncmp(name, PORT_NAME, strlen(PORT_NAME)) &&
            (name[strlen(PORT_NAME)] == '\n' || name[strlen(PORT_NAME)] == 0)) {
            snprintf(path, cap, "/dev/%s", de->d_name);
            found = 0;
            break;
        }
    }
    closedir(d);
    return found;
}

static void lo_up(void)
{
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return;
    struct ifreq ifr = {0};
    strcpy(ifr.ifr_name, "lo");
    if (ioctl(fd, SIOCGIFFLAGS, &ifr) == 0) {
        ifr.ifr_flags |= IFF_UP;
        ioctl(fd, SIOCSIFFLAGS, &ifr);
    }
    close(fd);
}

static int cmdline_has(const char *key)
{
    char buf[4096];
    int fd = open("/proc/cmdline", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    buf[n > 0 ? n : 0] = 0;
    size_t kl = strlen(key);
    for (char *p = buf; (p = strstr(p, key)); p += kl)
        if ((p == buf || p[-1] == ' ') && (p[kl] == ' ' || p[kl] == '\n' || p[kl] == 0))
            return 1;
    return 0;
}

/* Benchmark baseline: a raw byte echo on the same port, no framing, no dispatch. */
static void raw_echo(void)
{
    static uint8_t buf[65536];
    int fl = fcntl(port, F_GETFL);
    fcntl(port, F_SETFL, fl & ~O_NONBLOCK);
    if (write(port, "R", 1) < 0)
        power_off();
    for (;;) {
        ssize_t n = read(port, buf, sizeof(buf));
        if (n <= 0)
            power_off();
        for (ssize_t off = 0; off < n;) {
            ssize_t w = write(port, buf + off, (size_t)(n - off));
            if (w <= 0)
                power_off();
            off += w;
        }
    }
}

int main(void)
{
    /* defaults; the image's baked env (init passes /etc/gondolin/env) wins */
    setenv("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", 0);
    setenv("HOME", "/root", 0);
    setenv("TERM", "linux", 0);
    setenv("LANG", "C.UTF-8", 0);
    if (access("/etc/gondolin/mitm/ca.crt", R_OK) == 0) {
        /* every TLS client finds the MITM CA, whichever variable it reads */
        setenv("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt", 1);
        setenv("CURL_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt", 1);
        setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt", 1);
        setenv("NODE_EXTRA_CA_CERTS", "/etc/gondolin/mitm/ca.crt", 1);
    }
    sethostname("gondolin", 8);
    lo_up();
    signal(SIGPIPE, SIG_IGN);

    char path[300];
    for (int i = 0; find_port(path, sizeof(path)); i++) {
        if (i > 5000) {
            logmsg("sandboxd: no virtio port named " PORT_NAME);
            power_off();
        }
        usleep(2000);
    }
    port = open(path, O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (port < 0) {
        logmsg("sandboxd: open %s: %s", path, strerror(errno));
        power_off();
    }
    if (cmdline_has("gondolin.rawecho"))
        raw_echo();

    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGCHLD);
    sigprocmask(SIG_BLOCK, &mask, NULL);
    int sfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);

    outq = malloc(OUTQ_CAP);
    if (!outq)
        power_off();
    gd_reader_init(&rd, rbuf, sizeof(rbuf));

    send_hello();

    static struct pollfd pfd[2 + MAX_SESS * 3];
    static struct sess *owner[2 + MAX_SESS * 3];
    static int which[2 + MAX_SESS * 3];
    for (;;) {
        outq_flush();
        int np = 0, timeout = -1;
        long long now = now_ms();
        pfd[np] = (struct pollfd){port, POLLIN | (outq_len > outq_off ? POLLOUT : 0), 0};
        owner[np++] = NULL;
        pfd[np] = (struct pollfd){sfd, POLLIN, 0};
        owner[np++] = NULL;
        int room = outq_len - outq_off < OUTQ_HIGH;
        for (int k = 0; k < MAX_SESS; k++) {
            struct sess *s = sessions[k];
            if (!s)
                continue;
            if (s->orphan) {
                if (s->exited)
                    sess_free(s);
                continue;
            }
            if (s->sock >= 0) { /* a tunnel connecting */
                long long left = s->conn_expiry - now;
                if (left <= 0) {
                    tunnel_connected(s, 1);
                    timeout = 0;
                    continue;
                }
                pfd[np] = (struct pollfd){s->sock, POLLOUT, 0};
                owner[np] = s;
                which[np++] = 3;
                if (timeout < 0 || left < timeout)
                    timeout = (int)left;
                continue;
            }
            if ((s->flags & GD_EXEC_CONNECT) && s->fd[1] < 0 && !s->exited) {
                /* the peer closed (or reset) and its bytes are queued: the end */
                s->exited = 1;
                s->status = s->reset ? 1 << 8 : 0;
            }
            int open_out = 0;
            for (int i = 1; i <= 2; i++) {
                if (s->fd[i] < 0)
                    continue;
                open_out = 1;
                if (s->credit[i] && room) {
                    pfd[np] = (struct pollfd){s->fd[i], POLLIN, 0};
                    owner[np] = s;
                    which[np++] = i;
                }
            }
            if (s->veof_pending && send_veof(s) && (timeout < 0 || timeout > 20))
                timeout = 20;
            if (s->fd[0] >= 0 && s->in_len) { /* a pty master appears twice: in and out */
                pfd[np] = (struct pollfd){s->fd[0], POLLOUT, 0};
                owner[np] = s;
                which[np++] = 0;
            }
            if (s->exited) {
                long long left = s->exit_ms + DRAIN_GRACE_MS - now;
                if (!open_out) {
                    sess_finish(s);
                    timeout = 0;
                    continue;
                }
                if (left <= 0 && (s->credit[1] || s->fd[1] < 0) && (s->credit[2] || s->fd[2] < 0)) {
                    /* grace over: only a lingering background writer holds the
                     * stream open; what it wrote before now was drained */
                    int busy = 0;
                    for (int i = 1; i <= 2; i++) {
                        if (s->fd[i] < 0)
                            continue;
                        struct pollfd q = {s->fd[i], POLLIN, 0};
                        if (poll(&q, 1, 0) == 1 && (q.revents & POLLIN))
                            busy = 1;
                    }
                    if (!busy) {
                        sess_finish(s);
                        timeout = 0;
                        continue;
                    }
                }
                if (left < 0)
                    left = 0;
                if (timeout < 0 || left < timeout)
                    timeout = (int)left;
            }
        }
        if (timeout == 0) {
            continue;
        }
        int n = poll(pfd, (nfds_t)np, timeout);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            logmsg("sandboxd: poll: %s", strerror(errno));
            power_off();
        }
        if (pfd[1].revents)
            reap(sfd);
        for (int k = 2; k < np; k++) {
            if (!pfd[k].revents)
                continue;
            struct sess *s = owner[k];
            int still = 0;
            for (int j = 0; j < MAX_SESS; j++)
                if (sessions[j] == s)
                    still = 1;
            if (!still)
                continue;
            if (which[k] == 0) {
                stdin_flush(s);
            } else if (which[k] == 3) {
                if (s->sock >= 0)
                    tunnel_connected(s, 0);
            } else if (s->fd[which[k]] >= 0 && s->credit[which[k]]) {
                pump_output(s, which[k]);
            }
        }
        if (pfd[0].revents & (POLLIN | POLLHUP | POLLERR)) {
            for (;;) {
                size_t room2;
                uint8_t *p = gd_reader_space(&rd, &room2);
                ssize_t r = read(port, p, room2);
                if (r < 0 && errno == EINTR)
                    continue;
                if (r < 0 && errno == EAGAIN)
                    break;
                if (r <= 0) {
                    if (r == 0 && !(pfd[0].revents & POLLHUP))
                        break;
                    logmsg("sandboxd: host closed the channel");
                    power_off();
                }
                gd_reader_commit(&rd, (size_t)r);
                struct gd_hdr h;
                const uint8_t *body;
                int rc;
                while ((rc = gd_reader_next(&rd, &h, &body)) == 1)
                    handle_frame(&h, body);
                if (rc < 0) {
                    logmsg("sandboxd: malformed frame from host (%d)", rc);
                    send_error(0, GD_ERR_INVALID, "malformed frame");
                    outq_flush();
                    power_off();
                }
            }
        }
    }
}
