/* cmd_exec.c - `gondolin exec` and `gondolin bash`: one VM, one process. */
#define _GNU_SOURCE
#include "cli.h"

#include "base/fs.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <unistd.h>

#define IN_CHUNK 65536

struct run {
    uv_loop_t *loop;
    gd_sandbox *sb;
    gd_exec *x;
    struct gd_exec_opts xo;
    int code;
    int pty;
    int tty_raw;
    struct termios saved;
    uv_signal_t sigs[4];
    uv_signal_t winch;
    int sigs_open;
    /* stdin forwarding */
    int in_mode; /* 0 none, 1 poll, 2 regular file */
    uv_poll_t in_poll;
    int in_poll_open, in_polling;
    uv_idle_t in_idle;
    int in_idle_open, in_idling;
    int in_done;
    uint8_t inbuf[IN_CHUNK];
    size_t in_len, in_off;
    int out_closed[3];
    int signals;
    int reported; /* a VM error was already printed */
    uint64_t t0;  /* process start, for GONDOLIN_TIMING */
    struct cli_sandbox_flags *sf;
    char ssh_dir[512]; /* --ssh: the client key and known_hosts, removed at the end */
};

static void restore_tty(struct run *r)
{
    if (r->tty_raw) {
        tcsetattr(0, TCSADRAIN, &r->saved);
        r->tty_raw = 0;
    }
}

static void close_aux(struct run *r)
{
    if (r->sigs_open) {
        for (int i = 0; i < 4; i++)
            uv_close((uv_handle_t *)&r->sigs[i], NULL);
        uv_close((uv_handle_t *)&r->winch, NULL);
        r->sigs_open = 0;
    }
    if (r->in_poll_open) {
        uv_close((uv_handle_t *)&r->in_poll, NULL);
        r->in_poll_open = 0;
    }
    if (r->in_idle_open) {
        uv_close((uv_handle_t *)&r->in_idle, NULL);
        r->in_idle_open = 0;
    }
}

static void write_all(struct run *r, int fd, const uint8_t *p, size_t n)
{
    if (r->out_closed[fd])
        return;
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN) {
                struct timespec ts = {0, 1000000};
                nanosleep(&ts, NULL);
                continue;
            }
            r->out_closed[fd] = 1; /* EPIPE: reader gone; keep draining */
            return;
        }
        p += w;
        n -= (size_t)w;
    }
}

static void on_output(gd_exec *x, int stream, const uint8_t *data, size_t n, void *ud)
{
    (void)x;
    write_all(ud, stream == 2 ? 2 : 1, data, n);
}

static void in_pause(struct run *r)
{
    if (r->in_polling) {
        uv_poll_stop(&r->in_poll);
        r->in_polling = 0;
    }
    if (r->in_idling) {
        uv_idle_stop(&r->in_idle);
        r->in_idling = 0;
    }
}

static void pump_stdin(struct run *r);

static void on_in_poll(uv_poll_t *p, int status, int events)
{
    (void)status;
    (void)events;
    pump_stdin(p->data);
}

static void on_in_idle(uv_idle_t *h)
{
    pump_stdin(h->data);
}

static void in_resume(struct run *r)
{
    if (r->in_done || !r->x)
        return;
    if (r->in_mode == 1 && !r->in_polling) {
        uv_poll_start(&r->in_poll, UV_READABLE, on_in_poll);
        r->in_polling = 1;
    } else if (r->in_mode == 2 && !r->in_idling) {
        uv_idle_start(&r->in_idle, on_in_idle);
        r->in_idling = 1;
    }
}

/* Forward what the guest has credit for; pause when it has none. */
static void pump_stdin(struct run *r)
{
    if (!r->x || r->in_done) {
        in_pause(r);
        return;
    }
    if (r->in_off == r->in_len) {
        size_t credit = gd_exec_stdin_credit(r->x);
        if (!credit) {
            in_pause(r);
            return;
        }
        ssize_t n = read(0, r->inbuf, credit < IN_CHUNK ? credit : IN_CHUNK);
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            return;
        if (n <= 0) {
            gd_exec_write(r->x, "", 0, 1);
            r->in_done = 1;
            in_pause(r);
            return;
        }
        r->in_off = 0;
        r->in_len = (size_t)n;
    }
    long k = gd_exec_write(r->x, r->inbuf + r->in_off, r->in_len - r->in_off, 0);
    if (k < 0) {
        r->in_done = 1;
        in_pause(r);
        return;
    }
    r->in_off += (size_t)k;
    if (r->in_off < r->in_len)
        in_pause(r); /* wait for credit */
}

static void on_stdin_credit(gd_exec *x, size_t credit, void *ud)
{
    (void)x;
    (void)credit;
    struct run *r = ud;
    in_resume(r);
}

static void on_exit_cb(gd_exec *x, const struct gd_exec_result *res, void *ud)
{
    (void)x;
    struct run *r = ud;
    r->x = NULL;
    restore_tty(r);
    if (getenv("GONDOLIN_TIMING"))
        fprintf(stderr, "gondolin: timing: command done after %.0f ms\n",
                (double)(uv_hrtime() - r->t0) / 1e6);
    if (r->signals > 1) {
        /* we stopped the VM on a second signal: keep 128+N, no VM error */
    } else if (res->error) {
        fprintf(stderr, "gondolin: %s\n", res->message ? res->message : "exec failed");
        r->reported = 1;
        r->code = res->error == GD_EXEC_VM_GONE ? 125 : res->exit_code;
    } else {
        r->code = res->exit_code;
    }
    in_pause(r);
    close_aux(r);
    gd_sandbox_close(r->sb);
}

static void get_winsize(unsigned *rows, unsigned *cols)
{
    struct winsize ws;
    if (ioctl(0, TIOCGWINSZ, &ws) == 0 || ioctl(1, TIOCGWINSZ, &ws) == 0) {
        *rows = ws.ws_row;
        *cols = ws.ws_col;
    }
}

static void on_signal(uv_signal_t *h, int sig)
{
    struct run *r = h->data;
    if (sig == SIGWINCH) {
        unsigned rows = 0, cols = 0;
        get_winsize(&rows, &cols);
        if (r->x && rows && cols)
            gd_exec_resize(r->x, rows, cols);
        return;
    }
    if (r->x && ++r->signals > 1 && sig != SIGQUIT) {
        /* a second one: the guest process did not go; stop the VM */
        fprintf(stderr, "gondolin: stopping the VM\n");
        r->code = 128 + sig;
        r->x = NULL;
        in_pause(r);
        close_aux(r);
        gd_sandbox_close(r->sb);
        return;
    }
    if (r->x) {
        /* on a pty, terminate/hang-up means the terminal went away: SIGHUP, which an
         * interactive shell honours (it ignores SIGTERM) */
        int fwd = r->pty && (sig == SIGTERM || sig == SIGHUP) ? SIGHUP : sig;
        gd_exec_signal(r->x, fwd);
        return;
    }
    /* no process yet (still booting): stop */
    r->code = 128 + sig;
    close_aux(r);
    gd_sandbox_close(r->sb);
}

static void start_command(gd_sandbox *sb, struct run *r)
{
    struct gd_exec_cbs cbs = {
        .on_output = on_output, .on_stdin_credit = on_stdin_credit, .on_exit = on_exit_cb};
    int rc = gd_sandbox_exec(sb, &r->xo, &cbs, r, &r->x);
    if (rc) {
        fprintf(stderr, "gondolin: cannot start the command: %s\n", strerror(-rc));
        r->code = 125;
        close_aux(r);
        gd_sandbox_close(sb);
        return;
    }
    if (r->pty && isatty(0)) {
        struct termios t;
        if (tcgetattr(0, &r->saved) == 0) {
            t = r->saved;
            cfmakeraw(&t);
            tcsetattr(0, TCSADRAIN, &t);
            r->tty_raw = 1;
        }
    }
}

static void on_ssh(gd_sandbox *sb, const struct gd_ssh_access *a, const char *error, void *ud)
{
    struct run *r = ud;
    if (!a) {
        fprintf(stderr, "gondolin: --ssh: %s\n", error);
        r->code = 1;
        r->reported = 1;
        close_aux(r);
        gd_sandbox_close(sb);
        return;
    }
    fprintf(stderr, "gondolin: ssh: %s\n", a->command);
    start_command(sb, r);
}

static void on_ready(gd_sandbox *sb, int status, void *ud)
{
    struct run *r = ud;
    if (status)
        return; /* on_sb_exit reports */
    if (getenv("GONDOLIN_TIMING"))
        fprintf(stderr, "gondolin: timing: agent ready after %.0f ms (accel %s, %s)\n",
                (double)(uv_hrtime() - r->t0) / 1e6, gd_vm_accel(gd_sandbox_vm(sb)),
                gd_vm_start_mode(gd_sandbox_vm(sb)));
    if (!r->sf->ssh) {
        start_command(sb, r);
        return;
    }
    struct gd_ssh_opts so = {.user = r->sf->ssh_user,
                             .listen_host = r->sf->ssh_host[0] ? r->sf->ssh_host : NULL,
                             .listen_port = r->sf->ssh_port,
                             .key_dir = r->ssh_dir};
    int rc = gd_sandbox_ssh(sb, &so, on_ssh, r);
    if (rc)
        on_ssh(sb, NULL, rc == -EINVAL ? "bad --ssh-user" : strerror(-rc), r);
}

static void on_sb_exit(gd_sandbox *sb, const char *reason, void *ud)
{
    struct run *r = ud;
    restore_tty(r);
    close_aux(r);
    if (reason) {
        if (!r->reported) /* the exec already said it */
            fprintf(stderr, "gondolin: %s\n", reason);
        const char *con = gd_vm_console_tail(gd_sandbox_vm(sb));
        if (con[0] && getenv("GONDOLIN_CONSOLE_ON_ERROR"))
            fprintf(stderr, "gondolin: guest console: %s\n", con);
        if (r->code < 0 || r->code == 0)
            r->code = 125;
    }
}

static void exec_usage(int pty)
{
    if (pty)
        printf("usage: gondolin bash [flags] [-- CMD [ARGS...]]\n\n"
               "Interactive shell (default: bash -l) on a PTY in a fresh VM. Resizes\n"
               "propagate; Ctrl-D ends it; the shell's exit status is gondolin's.\n\n");
    else
        printf("usage: gondolin exec [flags] -- CMD [ARGS...]\n"
               "       gondolin exec [flags] -c 'SHELL STRING'\n\n"
               "Boots a VM, runs the command, and exits with its exit code (128+N when\n"
               "killed by signal N; 125 when the VM failed; 127 when the command was not\n"
               "found). stdout and stderr stay apart; stdin is forwarded unless it is a\n"
               "terminal or --no-stdin is given. SIGINT/SIGTERM/SIGHUP/SIGQUIT are\n"
               "forwarded to the guest process; a second one stops the VM.\n\n");
    printf("flags:\n"
           "  --image DIR         guest image directory (default: cached default image,\n"
           "                      or $GONDOLIN_GUEST_DIR)\n"
           "  -e, --env K=V       set an environment variable (repeatable)\n"
           "  -w, --cwd DIR       working directory in the guest\n"
           "  --memory SIZE       guest memory, e.g. 512M, 2G (default 1G)\n"
           "  --rootfs-mode MODE  memory (tmpfs overlay, default), cow (a qcow2 overlay on\n"
           "                      disk, can be checkpointed: docs/snapshots.md), readonly\n"
           "  --resume SNAP       start from a disk checkpoint (a name in the store or a\n"
           "                      file); its image, memory and cpus unless given\n"
           "  --cpus N            virtual CPUs (default 2)\n"
           "  --accel kvm|tcg|auto  accelerator (default auto: KVM if it really works)\n"
           "  --cold-boot         boot the VM instead of restoring the image's booted\n"
           "                      snapshot (docs/snapshots.md; also GONDOLIN_COLD_BOOT=1)\n"
           "  -v, --verbose       print the QEMU command line\n"
           "\nfiles (docs/vfs.md):\n"
           "  --mount-hostfs HOST:GUEST[:ro]  a host directory at GUEST (read-write)\n"
           "  --mount-overlay HOST:GUEST      reads from HOST, writes stay in memory\n"
           "                      (`gondolin diff` lists them)\n"
           "                      either may end in :cache=always when nothing else changes\n"
           "                      HOST while the sandbox runs (60 s caches, writeback)\n"
           "  --mount-memfs GUEST[:SIZE]      a memory file system (default 64M)\n"
           "  --hide GLOB         hide matching paths of the host mounts (.env, **/*.pem)\n"
           "\npolicy (docs/lua-api.md, docs/plugins.md):\n"
           "  --policy FILE.lua   a Lua policy: rules, secrets, hooks, VM settings; reloaded\n"
           "                      when it changes, on SIGHUP or `gondolin policy reload`\n"
           "  --plugin PATH.so    load a plugin (repeatable; after the plugin directories)\n"
           "  --plugin-dir DIR    load every *.so in DIR (after /etc/gondolin/plugins.d and\n"
           "                      ~/.config/gondolin/plugins.d)\n"
           "  --policy FILE.gdb | --bundle FILE|URL  a signed bundle (docs/bundles.md); with\n"
           "                      --trust DIR, --threshold N, --allow-downgrade,\n"
           "                      --bundle-interval SECONDS (URL: live updates); no policy:\n"
           "                      the bundle in /etc/gondolin/policies.d, if any\n"
           "\negress (no --allow-host: the guest reaches nothing):\n"
           "  --allow-host RULE   allow requests matching [METHOD ]HOST[:PORT][/PATH]; HOST is\n"
           "                      name, *.name or *; without :PORT only 80/443 (repeatable)\n"
           "  --host-secret NAME@HOST[,HOST...][=VALUE]\n"
           "                      the guest sees NAME=<placeholder>; the host puts VALUE (or\n"
           "                      $NAME) into HTTPS requests to HOST only (http://HOST\n"
           "                      also allows cleartext; repeatable)\n"
           "  --secrets-in-query  also substitute placeholders in URL query strings\n"
           "  --allow-internal HOST  let HOST resolve to loopback/private addresses\n"
           "  --tcp-map HOST:PORT[=UPHOST:UPPORT]  raw TCP for HOST:PORT (repeatable)\n"
           "  --dns MODE          synthetic (default), trusted or open\n"
           "  --resolve NAME:ADDR host-side address for NAME (like curl --resolve)\n"
           "  --upstream-ca FILE  also trust FILE for upstream TLS\n"
           "  --audit FILE        append one JSON line per egress decision\n"
           "  --audit-fs          also audit every mutating guest file operation (denied\n"
           "                      ones always are)\n"
           "  --http-limit NAME=N head_ms, keepalive_ms, body_ms, max_flows, buffer_total\n"
           "  --ssh-allow [USER@]HOST[:PORT]  git over SSH to HOST through the host's SSH\n"
           "                      proxy, as USER upstream (default: the key's user, else git)\n"
           "  --ssh-key [USER@]HOST=PATH  host-side private key for HOST (never in the guest)\n"
           "  --ssh-agent         authenticate upstream SSH with the host's $SSH_AUTH_SOCK\n"
           "  --ssh-known-hosts FILE  more upstream host keys (after ~/.ssh/known_hosts)\n"
           "  --ssh-limit NAME=N  max_conns, connect_ms, handshake_ms, idle_ms\n"
           "  --no-network        no network device at all\n");
    if (!pty)
        printf("  -t, --tty           run on a PTY (stdout carries both streams)\n"
               "  --no-stdin          do not forward stdin\n");
}

int cmd_exec(int argc, char **argv, int pty)
{
    for (int k = 1; !pty && k < argc && strcmp(argv[k], "--"); k++)
        if (!strcmp(argv[k], "--session") || !strncmp(argv[k], "--session=", 10))
            return cmd_sexec(argc, argv); /* a running session (cmd_sexec.c) */
    struct cli_vm_flags vf = {0};
    const char **env = calloc((size_t)argc + 2, sizeof(char *));
    size_t nenv = 0;
    const char *cwd = NULL, *shell = NULL;
    int no_stdin = 0, tty = pty, no_network = 0;
    char **cmd = NULL;
    int i;
    static struct cli_policy pol;
    static struct cli_sandbox_flags sf;
    for (i = 1; i < argc; i++) {
        const char *a = argv[i];
        int k = cli_vm_flag(argc, argv, &i, &vf);
        if (k < 0)
            return 2;
        if (k)
            continue;
        if (!strcmp(a, "--")) {
            cmd = argv + i + 1;
            break;
        }
        k = cli_policy_flag(&pol, argc, argv, &i);
        if (k < 0)
            return 2;
        if (k)
            continue;
        k = cli_sandbox_flag(&sf, argc, argv, &i);
        if (k < 0)
            return 2;
        if (k)
            continue;
        if (!strcmp(a, "--no-network")) {
            no_network = 1;
            continue;
        }
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            exec_usage(pty);
            return 0;
        }
        if ((!strcmp(a, "-e") || !strcmp(a, "--env")) && i + 1 < argc) {
            const char *kv = argv[++i];
            if (!strchr(kv, '=') || kv[0] == '=')
                return cli_die(2, "--env wants KEY=VALUE, not '%s'", kv);
            env[nenv++] = kv;
        } else if (!strncmp(a, "--env=", 6)) {
            if (!strchr(a + 6, '=') || a[6] == '=')
                return cli_die(2, "--env wants KEY=VALUE, not '%s'", a + 6);
            env[nenv++] = a + 6;
        } else if ((!strcmp(a, "-w") || !strcmp(a, "--cwd")) && i + 1 < argc) {
            cwd = argv[++i];
        } else if (!strncmp(a, "--cwd=", 6)) {
            cwd = a + 6;
        } else if (!pty && !strcmp(a, "-c") && i + 1 < argc) {
            shell = argv[++i];
        } else if (!pty && (!strcmp(a, "-t") || !strcmp(a, "--tty"))) {
            tty = 1;
        } else if (!strcmp(a, "--no-stdin")) {
            no_stdin = 1;
        } else if (a[0] == '-') {
            return cli_die(2, "%s: unknown or incomplete flag '%s' (see gondolin %s --help)",
                           argv[0], a, argv[0]);
        } else {
            return cli_die(2, "%s: put the command after `--` (gondolin %s -- %s ...)", argv[0],
                           argv[0], a);
        }
    }
    static const char *bash_argv[] = {"/bin/bash", "-l", NULL};
    if (pty && (!cmd || !cmd[0]))
        cmd = (char **)bash_argv;
    if (!shell && (!cmd || !cmd[0]))
        return cli_die(2, "exec: no command given (gondolin exec -- CMD, or -c 'STRING')");
    if (shell && cmd && cmd[0])
        return cli_die(2, "exec: give either -c STRING or `-- CMD`, not both");
    if (tty) {
        const char *term = getenv("TERM");
        static char termkv[256];
        snprintf(termkv, sizeof(termkv), "TERM=%s", term && *term ? term : "xterm-256color");
        env[nenv++] = termkv;
    }
    env[nenv] = NULL;
    if (no_network && (pol.egress.nallow || pol.egress.nsecrets || pol.egress.nmaps || pol.policy))
        return cli_die(2, "--no-network cannot be combined with --policy, --allow-host, "
                          "--host-secret or --tcp-map");
    signal(SIGPIPE, SIG_IGN);
    struct run *r = calloc(1, sizeof(*r));
    r->loop = uv_default_loop();
    r->pty = tty;
    r->code = -1;
    r->xo.argv = shell ? NULL : (const char *const *)cmd;
    r->xo.shell = shell;
    r->xo.env = env;
    r->xo.cwd = cwd;
    r->xo.pty = tty;
    r->xo.rows = 24;
    r->xo.cols = 80;
    if (tty)
        get_winsize(&r->xo.rows, &r->xo.cols);
    int in_tty = isatty(0);
    r->xo.stdin_stream = !no_stdin && (tty || !in_tty);

    struct gd_sandbox_opts so = {.no_network = no_network};
    cli_vm_sandbox(&vf, &so);
    int prc = cli_policy_sandbox(&pol, &so);
    if (prc) {
        free(r);
        free(env);
        cli_policy_free(&pol);
        return prc;
    }
    cli_sandbox_opts(&sf, &so);
    r->sf = &sf;
    if (sf.ssh && cli_private_dir("ssh", r->ssh_dir, sizeof(r->ssh_dir)))
        return cli_die(125, "--ssh: cannot create a private directory for the keys");
    struct gd_err err = {{0}};
    int rc = gd_sandbox_new(r->loop, &so, &r->sb, &err);
    if (rc) {
        free(r);
        free(env);
        /* a bad policy (or checkpoint) is a usage error; anything else is the VM's */
        return cli_die(rc == -EINVAL ? 2 : 125, "%s", err.msg);
    }
    cli_print_forwards(r->sb);
    cli_bundle_live_start(&pol, r->loop, r->sb); /* --bundle URL: (prints why it cannot) */

    if (r->xo.stdin_stream) {
        if (uv_poll_init(r->loop, &r->in_poll, 0) == 0) {
            r->in_mode = 1;
            r->in_poll_open = 1;
            r->in_poll.data = r;
        } else {
            r->in_mode = 2; /* regular file: epoll refuses it */
            uv_idle_init(r->loop, &r->in_idle);
            r->in_idle.data = r;
            r->in_idle_open = 1;
        }
    }
    static const int sigs[4] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT};
    for (int s = 0; s < 4; s++) {
        uv_signal_init(r->loop, &r->sigs[s]);
        r->sigs[s].data = r;
        uv_signal_start(&r->sigs[s], on_signal, sigs[s]);
    }
    uv_signal_init(r->loop, &r->winch);
    r->winch.data = r;
    uv_signal_start(&r->winch, on_signal, SIGWINCH);
    r->sigs_open = 1;

    r->t0 = uv_hrtime();
    rc = gd_sandbox_start(r->sb, on_ready, on_sb_exit, r);
    if (rc) {
        close_aux(r);
        uv_run(r->loop, UV_RUN_DEFAULT);
        return cli_die(125, "cannot start QEMU: %s", strerror(-rc));
    }
    uv_run(r->loop, UV_RUN_DEFAULT);
    restore_tty(r);
    cli_bundle_live_stop(&pol);
    int code = r->code < 0 ? 125 : r->code;
    uv_run(r->loop, UV_RUN_DEFAULT); /* let the network and proxy finish closing */
    gd_sandbox_free(r->sb);
    uv_loop_close(r->loop);
    cli_policy_free(&pol);
    cli_sandbox_flags_free(&sf);
    if (r->ssh_dir[0])
        gd_rm_rf(r->ssh_dir);
    free(env);
    free(r);
    return code;
}
