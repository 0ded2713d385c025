/* cmd_start.c - `gondolin start`: the flags become a struct gd_sandbox_opts here, the
 * image is resolved (and the default one built) in the foreground, then a daemonised
 * supervisor (core/control/supervisor.c) boots the sandbox and serves its socket. */
#define _GNU_SOURCE
#include "base/fs.h"
#include "base/text.h"
#include "cli.h"

#include "sandbox/sandbox.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void start_usage(void)
{
    printf("usage: gondolin start [flags] [--name NAME] [--json]\n\n"
           "Boots a sandbox that stays up: a supervisor process owns the VM and serves its\n"
           "control socket; `gondolin exec --session`, attach, cp, logs, stop and the Python\n"
           "SDK talk to it (docs/sessions.md). Prints the session id once the guest is ready.\n\n"
           "  --name NAME         a name to use instead of the id (unique among your sessions)\n"
           "  --json              print the session's info as JSON\n"
           "  --rootfs-mode cow   the root on a disk overlay: `gondolin snapshot` can keep it\n"
           "  --resume SNAP       start from a disk checkpoint (docs/snapshots.md)\n"
           "  -e, --env K=V       set an environment variable for every exec (repeatable)\n"
           "  --no-network        no network device at all\n"
           "  --listen [HOST:]PORT=GUESTPORT  ingress to a guest port (HTTP-aware;\n"
           "                      --listen-raw: plain TCP); more with `expose` (SDK)\n"
           "The VM, files, policy and egress flags of `gondolin exec` apply (gondolin exec "
           "--help).\n");
}

static volatile sig_atomic_t interrupted;
static void on_interrupt(int sig)
{
    interrupted = sig;
}

/* The supervisor's one line: 0 ok, else the exit code (message printed); 3 when it
 * died without a word. */
static int wait_ready(int rfd, pid_t pid, const char *log)
{
    char buf[1300];
    size_t n = 0;
    struct sigaction sa = {.sa_handler = on_interrupt};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    for (;;) {
        ssize_t k = read(rfd, buf + n, sizeof(buf) - 1 - n);
        if (k < 0 && errno == EINTR && interrupted) {
            kill(pid, SIGTERM); /* the boot is abandoned: the supervisor stops */
            waitpid(pid, NULL, 0);
            return cli_die(128 + interrupted, "start interrupted; the sandbox was stopped");
        }
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            break;
        n += (size_t)k;
        if (n == sizeof(buf) - 1)
            break;
    }
    buf[n] = 0;
    buf[strcspn(buf, "\n")] = 0;
    if (!strcmp(buf, "ok"))
        return 0;
    if (!strncmp(buf, "error: ", 7)) {
        waitpid(pid, NULL, 0);
        return cli_die(1, "%s", buf + 7);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    return cli_die(3, "the supervisor exited during startup (%s %d); see %s",
                   WIFSIGNALED(st) ? "signal" : "status",
                   WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st), log);
}

/* --bundle URL --bundle-interval S: the supervisor polls as `exec` does (a fork's
 * supervisors share one extracted bundle, so they do not: keep_extracted 2). */
static void live_started(uv_loop_t *loop, gd_sandbox *sb, void *ud)
{
    struct cli_policy *p = ud;
    if (p->keep_extracted == 1)
        cli_bundle_live_start(p, loop, sb);
}

static void live_stopped(void *ud)
{
    cli_bundle_live_stop(ud);
}

/* The supervisor: a new session, stdio on the log, nothing else inherited. */
static void daemonise(int wfd, int logfd)
{
    setsid();
    int nul = open("/dev/null", O_RDWR | O_CLOEXEC);
    dup2(nul, 0);
    dup2(logfd, 1);
    dup2(logfd, 2);
    int keep = wfd;
    if (keep > 3)
        close_range(3, (unsigned)keep - 1, 0);
    close_range((unsigned)keep + 1, ~0u, 0);
    if (keep < 3) /* cannot happen (0..2 were open), but never lose the pipe */
        keep = fcntl(keep, F_DUPFD_CLOEXEC, 3);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    signal(SIGHUP, SIG_DFL);
}

static int print_json(const struct gd_session *s)
{
    gd_control_client *c;
    struct gd_err err = {{0}};
    if (gd_control_client_connect(s->socket, &c, &err))
        return cli_die(1, "%s", err.msg);
    cJSON *o = cJSON_Duplicate(gd_control_client_info(c), 1);
    gd_control_client_close(c);
    cJSON_DeleteItemFromObject(o, "ok");
    cJSON_AddStringToObject(o, "socket", s->socket);
    cJSON_AddStringToObject(o, "log", s->log);
    char *t = gd_control_encode_json(o);
    printf("%s\n", t ? t : "{}");
    free(t);
    return 0;
}

int cli_start_flag(struct cli_start *st, int argc, char **argv, int *i)
{
    const char *a = argv[*i];
    int k = cli_vm_flag(argc, argv, i, &st->vf);
    if (!k)
        k = cli_policy_flag(&st->pol, argc, argv, i);
    if (!k)
        k = cli_sandbox_flag(&st->sf, argc, argv, i);
    if (k)
        return k < 0 ? -1 : 1;
    if (!st->env && !(st->env = calloc((size_t)argc + 1, sizeof(char *))))
        return cli_die(1, "out of memory"), -1;
    if (!strcmp(a, "--no-network")) {
        st->no_network = 1;
    } else if (!strcmp(a, "--json")) {
        st->json = 1;
    } else if (!strcmp(a, "--name") && *i + 1 < argc) {
        st->name = argv[++*i];
    } else if (!strncmp(a, "--name=", 7)) {
        st->name = a + 7;
    } else if ((!strcmp(a, "-e") || !strcmp(a, "--env")) && *i + 1 < argc) {
        st->env[st->nenv++] = argv[++*i];
    } else if (!strncmp(a, "--env=", 6)) {
        st->env[st->nenv++] = a + 6;
    } else {
        return 0;
    }
    if (st->nenv && (!strchr(st->env[st->nenv - 1], '=') || st->env[st->nenv - 1][0] == '='))
        return cli_die(2, "--env wants KEY=VALUE, not '%s'", st->env[st->nenv - 1]), -1;
    return 1;
}

int cli_start_check(const struct cli_start *st)
{
    const struct cli_policy *pol = &st->pol;
    if (st->no_network &&
        (pol->policy || pol->egress.nallow || pol->egress.nsecrets || pol->egress.nmaps))
        return cli_die(2, "--no-network cannot be combined with --policy, --allow-host, "
                          "--host-secret or --tcp-map");
    return 0;
}

int cli_start_spawn(struct cli_start *st, const char *name, char id[37])
{
    if (name && !gd_session_name_ok(name))
        return cli_die(2,
                       "--name: '%s' is not a name (1 to 63 of A-Z a-z 0-9 _ . -, starting "
                       "with a letter or a digit)",
                       name);
    char dir[1024];
    int rc = gd_session_dir(dir, sizeof(dir));
    if (rc)
        return cli_die(1, "cannot use the sessions directory %s: %s", dir, strerror(-rc));
    if (name) {
        struct gd_session s;
        if (gd_session_find(dir, name, &s, NULL) == 0 && !strcmp(s.name, name))
            return cli_die(1, "a session named '%s' exists already (%s)", name, s.id);
    }
    /* the image is resolved now, and the default one built on first use, in the
     * foreground; the supervisor resolves it again (cheaply) unless it was given, so a
     * policy's vm.image still counts */
    static char image[1024];
    struct gd_err ierr = {{0}};
    if ((st->vf.image || !st->vf.resume[0]) &&
        cli_resolve_image(&st->vf.verbose, st->vf.image, image, sizeof(image), &ierr))
        return cli_die(125, "%s", ierr.msg); /* (a resume's image is the checkpoint's) */
    if (gd_session_uuid(id))
        return cli_die(1, "cannot generate a session id");
    struct gd_sandbox_opts so = {.no_network = st->no_network, .env = st->env};
    cli_vm_sandbox(&st->vf, &so);
    if (st->vf.image)
        so.image = image;
    cli_sandbox_opts(&st->sf, &so); /* --listen: opened with the sandbox */
    if (!st->pol.keep_extracted)
        st->pol.keep_extracted = 1; /* the bundle's files serve the supervisor */
    if (!st->no_network && (rc = cli_policy_sandbox(&st->pol, &so))) /* log: the supervisor's */
        return rc;

    char log[1200];
    snprintf(log, sizeof(log), "%s/%s.log", dir, id);
    int pfd[2];
    int logfd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (logfd < 0 || pipe2(pfd, O_CLOEXEC))
        return cli_die(1, "cannot create %s: %s", log, strerror(errno));
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0)
        return cli_die(1, "fork: %s", strerror(errno));
    if (pid == 0) {
        close(pfd[0]);
        daemonise(pfd[1], logfd);
        struct gd_control_supervise_opts o = {.sandbox = &so,
                                              .dir = dir,
                                              .id = id,
                                              .name = name,
                                              .ready_fd = pfd[1],
                                              .on_started = live_started,
                                              .on_stopped = live_stopped,
                                              .hook_ud = &st->pol};
        int src = gd_control_supervise(&o);
        if (st->pol.keep_extracted == 1 && st->pol.bundle_dir[0]) /* ours alone */
            gd_rm_rf(st->pol.bundle_dir);
        _exit(src);
    }
    close(pfd[1]);
    close(logfd);
    rc = wait_ready(pfd[0], pid, log);
    close(pfd[0]);
    if (rc) {
        if (rc != 3) /* (3: it crashed; its log says why) */
            gd_session_remove(dir, id);
        return rc == 3 ? 1 : rc;
    }
    return 0;
}

int cli_start_print(const char *id, int json)
{
    char dir[1024], meta[1200];
    struct gd_session s;
    struct gd_err err = {{0}};
    gd_session_dir(dir, sizeof(dir));
    snprintf(meta, sizeof(meta), "%s/%s.json", dir, id);
    if (gd_session_read(meta, &s, &err))
        return cli_die(1, "%s", err.msg);
    if (json)
        return print_json(&s);
    printf("%s\n", id);
    if (s.name[0])
        fprintf(stderr, "gondolin: session '%s' is %s\n", s.name, id);
    return 0;
}

int cmd_start(int argc, char **argv)
{
    static struct cli_start st; /* (static: reachable until exit on every path) */
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int k = cli_start_flag(&st, argc, argv, &i);
        if (k < 0)
            return 2;
        if (k)
            continue;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            start_usage();
            return 0;
        }
        return cli_die(2, "start: unknown or incomplete flag '%s' (see gondolin start --help)", a);
    }
    int rc = cli_start_check(&st);
    char id[37];
    if (rc || (rc = cli_start_spawn(&st, st.name, id)))
        return rc;
    struct cli_sandbox_flags *sf = &st.sf;
    cJSON *ssh = NULL;
    char ssh_listen[100] = "";
    if (sf->ssh_port || sf->ssh_host[0])
        gd_hostport(ssh_listen, sizeof(ssh_listen), sf->ssh_host, sf->ssh_port);
    if (sf->ssh && (rc = cli_session_ssh(id, sf->ssh_user, ssh_listen, &ssh))) {
        char *stop[] = {"stop", id, "--force", NULL};
        cmd_stop(3, stop); /* no half-made session stays behind */
        return rc;
    }
    if (ssh && !st.json)
        fprintf(stderr, "gondolin: ssh: %s\n",
                cJSON_GetStringValue(cJSON_GetObjectItem(ssh, "command")));
    cJSON_Delete(ssh);
    return cli_start_print(id, st.json);
}
