/* ssh.c - host -> guest SSH: sshd on the guest's loopback with an ephemeral host key
 * and client key (made with the host's ssh-keygen), hardened options, and a raw
 * forward from a host loopback port. The host key is pinned in a known_hosts file, so
 * the printed ssh command needs no "trust on first use". */
#define _GNU_SOURCE
#include "sandbox_int.h"

#include "base/fs.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define KEY_END "-----END OPENSSH PRIVATE KEY-----"
#define MAX_WAITERS 16       /* callers waiting for sshd at once */
#define READY_MS (60 * 1000) /* sshd must listen this soon after the setup starts */

struct waiter {
    gd_ssh_cb cb;
    void *ud;
    struct waiter *next;
};

struct gd__ssh {
    gd_sandbox *sb;
    int state; /* 0 starting, 1 ready, 2 failed */
    char user[64], host[64], dir[900];
    unsigned listen_port, port;
    char identity[1000], known[1000], command[3000], error[600];
    char *stdin_blob; /* host private key + client public key, for the setup step */
    size_t stdin_len;
    char hostpub[600];
    gd_exec *sshd;
    char sshd_err[2048];
    size_t nerr;
    struct waiter *waiters;
    unsigned nwaiters;
    uv_timer_t timer;
    int timer_open;
};

/* The setup step, as root in the guest: sshd present, the key material from stdin into
 * /run/gondolin-ssh, the privilege-separation user and directory sshd needs. Prints the
 * sshd path. $1 is the user. */
static const char setup_script[] =
    "set -e\n"
    "s=$(command -v sshd 2>/dev/null || true)\n"
    "[ -n \"$s\" ] || { [ -x /usr/sbin/sshd ] && s=/usr/sbin/sshd; } || true\n"
    "[ -n \"$s\" ] || { echo 'the image has no sshd (build one with openssh-server, e.g. "
    "examples/images/ssh.json)' >&2; exit 3; }\n"
    "home=$(awk -F: -v u=\"$1\" '$1==u{print $6}' /etc/passwd)\n"
    "[ -n \"$home\" ] || { echo \"the guest has no user $1\" >&2; exit 4; }\n"
    "d=/run/gondolin-ssh\n"
    "umask 077\n"
    "mkdir -p $d /run/sshd\n"
    "chmod 755 $d /run/sshd\n"
    ": > $d/host_ed25519\n"
    "while IFS= read -r l; do printf '%s\\n' \"$l\" >> $d/host_ed25519; [ \"$l\" = '" KEY_END
    "' ] && break; done\n"
    "IFS= read -r pub\n"
    "printf '%s\\n' \"$pub\" > $d/authorized_keys\n"
    "chown \"$1\" $d/authorized_keys\n"
    "chmod 644 $d/authorized_keys\n"
    "grep -q '^sshd:' /etc/passwd || echo 'sshd:x:100:65534::/run/sshd:/usr/sbin/nologin' >> "
    "/etc/passwd\n"
    "echo \"$s\"\n";

static void finish(struct gd__ssh *s, const char *error)
{
    if (error) {
        s->state = 2;
        snprintf(s->error, sizeof(s->error), "%s", error);
    } else {
        s->state = 1;
    }
    if (s->timer_open) {
        uv_close((uv_handle_t *)&s->timer, NULL);
        s->timer_open = 0;
    }
    struct gd_ssh_access a = {.host = s->host,
                              .user = s->user,
                              .identity = s->identity,
                              .known_hosts = s->known,
                              .port = s->port,
                              .command = s->command};
    while (s->waiters) {
        struct waiter *w = s->waiters;
        s->waiters = w->next;
        s->nwaiters--;
        w->cb(s->sb, error ? NULL : &a, error, w->ud);
        free(w);
    }
}

static void on_timeout(uv_timer_t *t)
{
    struct gd__ssh *s = t->data;
    if (s->sshd)
        gd_exec_signal(s->sshd, SIGKILL);
    finish(s, "sshd did not start listening within 60 s");
}

/* Runs ssh-keygen on the host; 0 or a one-line error in why. */
static int keygen(const char *path, char *why, size_t cap)
{
    unlink(path);
    pid_t pid = fork();
    if (pid < 0) {
        snprintf(why, cap, "fork: %s", strerror(errno));
        return -1;
    }
    if (pid == 0) {
        int nul = open("/dev/null", O_RDWR);
        if (nul >= 0) {
            dup2(nul, 0);
            dup2(nul, 1);
            dup2(nul, 2);
        }
        execlp("ssh-keygen", "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "gondolin", "-f",
               path, (char *)NULL);
        _exit(127);
    }
    int st;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
        ;
    if (WIFEXITED(st) && WEXITSTATUS(st) == 127) {
        snprintf(why, cap, "ssh-keygen not found on the host (apt install openssh-client)");
        return -1;
    }
    if (!WIFEXITED(st) || WEXITSTATUS(st)) {
        snprintf(why, cap, "ssh-keygen failed for %s", path);
        return -1;
    }
    return 0;
}

/* A small key file, NUL-terminated, or NULL. */
static char *slurp(const char *path, size_t *len)
{
    char *buf = NULL;
    size_t n = 0;
    if (gd_read_file(path, 16383, &buf, &n))
        return NULL;
    if (len)
        *len = n;
    return buf;
}

static void on_sshd_out(gd_exec *x, int stream, const uint8_t *d, size_t n, void *ud);
static void on_sshd_exit(gd_exec *x, const struct gd_exec_result *r, void *ud);

static void start_forward(struct gd__ssh *s)
{
    struct gd_forward_spec spec = {.port = s->listen_port, .guest_port = 22};
    snprintf(spec.host, sizeof(spec.host), "%s", s->host);
    struct gd_err err = {{0}};
    if (gd_sandbox_expose(s->sb, &spec, 1, &s->port, &err)) {
        finish(s, err.msg);
        return;
    }
    /* known_hosts pins the host key for exactly this address and port */
    FILE *f = fopen(s->known, "we");
    if (!f) {
        finish(s, "cannot write known_hosts");
        return;
    }
    fprintf(f, "[%s]:%u %s", s->host, s->port, s->hostpub);
    fclose(f);
    snprintf(s->command, sizeof(s->command),
             "ssh -i %s -p %u -o IdentitiesOnly=yes -o UserKnownHostsFile=%s "
             "-o StrictHostKeyChecking=yes -o ForwardAgent=no -o ForwardX11=no "
             "-o GSSAPIDelegateCredentials=no -o ClearAllForwardings=yes %s@%s",
             s->identity, s->port, s->known, s->user, s->host);
    finish(s, NULL);
}

static void on_sshd_out(gd_exec *x, int stream, const uint8_t *d, size_t n, void *ud)
{
    (void)x;
    (void)stream;
    struct gd__ssh *s = ud;
    size_t room = sizeof(s->sshd_err) - 1 - s->nerr;
    if (n > room)
        n = room;
    memcpy(s->sshd_err + s->nerr, d, n);
    s->nerr += n;
    s->sshd_err[s->nerr] = 0;
    char *nl;
    while ((nl = memchr(s->sshd_err, '\n', s->nerr))) { /* one log line each */
        *nl = 0;
        if (s->state == 0 && strstr(s->sshd_err, "Server listening on")) {
            start_forward(s);
        } else if (s->sshd_err[0]) { /* guest-controlled: no escapes into the host's log */
            char line[sizeof(s->sshd_err)];
            gd_sanitize(line, sizeof(line), s->sshd_err, strlen(s->sshd_err));
            gd__sandbox_log(s->sb, "sshd: %s", line);
        }
        size_t used = (size_t)(nl + 1 - s->sshd_err);
        memmove(s->sshd_err, nl + 1, s->nerr - used);
        s->nerr -= used;
        s->sshd_err[s->nerr] = 0;
    }
    if (s->nerr == sizeof(s->sshd_err) - 1)
        s->nerr = 0; /* an endless line: drop it */
}

static void on_sshd_exit(gd_exec *x, const struct gd_exec_result *r, void *ud)
{
    (void)x;
    struct gd__ssh *s = ud;
    s->sshd = NULL;
    char why[800], tail[sizeof(s->sshd_err)];
    gd_sanitize(tail, sizeof(tail), s->sshd_err, s->nerr);
    snprintf(why, sizeof(why), "sshd exited (%s%d)%s%s", r->signal ? "signal " : "status ",
             r->signal ? r->signal : r->exit_code, s->nerr ? ": " : "", tail);
    if (s->state == 0)
        finish(s, r->message ? r->message : why);
    else
        gd__sandbox_log(s->sb, "ssh: %s", why);
}

static void on_setup(gd_sandbox *sb, int code, const char *out, const char *err, void *ud)
{
    struct gd__ssh *s = ud;
    if (s->state != 0)
        return; /* timed out meanwhile */
    if (code != 0) {
        char why[800], line[700];
        size_t el = err ? strcspn(err, "\n") : 0; /* its first line, without escapes */
        gd_sanitize(line, sizeof(line), err ? err : "", el);
        snprintf(why, sizeof(why), "ssh setup in the guest failed: %s",
                 *line ? line : "unknown error");
        finish(s, why);
        return;
    }
    char sshd[256];
    snprintf(sshd, sizeof(sshd), "%s", out);
    sshd[strcspn(sshd, "\n")] = 0;
    char allow[100];
    snprintf(allow, sizeof(allow), "AllowUsers=%s", s->user);
    const char *argv[] = {sshd,
                          "-D",
                          "-e",
                          "-f",
                          "/dev/null",
                          "-h",
                          "/run/gondolin-ssh/host_ed25519",
                          "-o",
                          "ListenAddress=127.0.0.1:22",
                          "-o",
                          "AuthorizedKeysFile=/run/gondolin-ssh/authorized_keys",
                          "-o",
                          "PasswordAuthentication=no",
                          "-o",
                          "KbdInteractiveAuthentication=no",
                          "-o",
                          "PubkeyAuthentication=yes",
                          "-o",
                          allow,
                          "-o",
                          "AllowAgentForwarding=no",
                          "-o",
                          "AllowTcpForwarding=no",
                          "-o",
                          "X11Forwarding=no",
                          "-o",
                          "PermitTunnel=no",
                          "-o",
                          "PermitRootLogin=prohibit-password",
                          "-o",
                          "PidFile=none",
                          NULL};
    struct gd_exec_opts o = {.argv = argv};
    struct gd_exec_cbs cbs = {.on_output = on_sshd_out, .on_exit = on_sshd_exit};
    int rc = gd_sandbox_exec(sb, &o, &cbs, s, &s->sshd);
    if (rc) {
        char why[200];
        snprintf(why, sizeof(why), "cannot start sshd: %s", strerror(-rc));
        finish(s, why);
    }
}

int gd_sandbox_ssh(gd_sandbox *sb, const struct gd_ssh_opts *o, gd_ssh_cb cb, void *ud)
{
    struct waiter *w = calloc(1, sizeof(*w));
    if (!w)
        return -ENOMEM;
    w->cb = cb;
    w->ud = ud;
    struct gd__ssh *s = sb->ssh;
    if (s) {
        if (s->nwaiters >= MAX_WAITERS) {
            free(w);
            return -EBUSY;
        }
        w->next = s->waiters;
        s->waiters = w;
        s->nwaiters++;
        if (s->state == 1)
            finish(s, NULL);
        else if (s->state == 2)
            finish(s, s->error);
        return 0;
    }
    if (!o->key_dir || (o->user && (!*o->user || *o->user == '-' || strlen(o->user) > 32 ||
                                    strspn(o->user, "abcdefghijklmnopqrstuvwxyz0123456789_-") !=
                                        strlen(o->user)))) {
        free(w);
        return -EINVAL;
    }
    if (!(s = calloc(1, sizeof(*s)))) {
        free(w);
        return -ENOMEM;
    }
    s->sb = sb;
    s->waiters = w;
    s->nwaiters = 1;
    sb->ssh = s;
    snprintf(s->user, sizeof(s->user), "%s", o->user ? o->user : "root");
    snprintf(s->host, sizeof(s->host), "%s", o->listen_host ? o->listen_host : "127.0.0.1");
    snprintf(s->dir, sizeof(s->dir), "%s", o->key_dir);
    s->listen_port = o->listen_port;
    snprintf(s->identity, sizeof(s->identity), "%s/id_ed25519", s->dir);
    snprintf(s->known, sizeof(s->known), "%s/known_hosts", s->dir);
    char hostkey[1000], why[300];
    snprintf(hostkey, sizeof(hostkey), "%s/host_ed25519", s->dir);
    if (keygen(s->identity, why, sizeof(why)) || keygen(hostkey, why, sizeof(why))) {
        finish(s, why);
        return 0;
    }
    char hostpub[1010], idpub[1010];
    snprintf(hostpub, sizeof(hostpub), "%s.pub", hostkey);
    snprintf(idpub, sizeof(idpub), "%s.pub", s->identity);
    size_t hl = 0, pl = 0;
    char *hk = slurp(hostkey, &hl), *hp = slurp(hostpub, NULL), *ip = slurp(idpub, &pl);
    unlink(hostkey); /* the guest keeps the only copy of its private key */
    unlink(hostpub);
    int ok = hk && hp && ip && strstr(hk, KEY_END);
    if (ok) {
        snprintf(s->hostpub, sizeof(s->hostpub), "%s", hp);
        s->stdin_len = hl + pl + 2;
        ok = (s->stdin_blob = malloc(s->stdin_len + 1)) != NULL;
        if (ok)
            s->stdin_len = (size_t)snprintf(s->stdin_blob, s->stdin_len + 1, "%s%s%s", hk,
                                            hk[hl - 1] == '\n' ? "" : "\n", ip);
    }
    if (hk)
        memset(hk, 0, hl);
    free(hk);
    free(hp);
    free(ip);
    if (!ok) {
        finish(s, "cannot read the keys ssh-keygen made");
        return 0;
    }
    if (uv_timer_init(sb->loop, &s->timer) == 0) {
        s->timer_open = 1;
        s->timer.data = s;
        uv_timer_start(&s->timer, on_timeout, READY_MS, 0);
    }
    const char *argv[] = {"/bin/sh", "-c", setup_script, "sh", s->user, NULL};
    int rc = gd__sandbox_run(sb, argv, s->stdin_blob, s->stdin_len, on_setup, s);
    memset(s->stdin_blob, 0, s->stdin_len);
    free(s->stdin_blob);
    s->stdin_blob = NULL;
    if (rc) {
        snprintf(why, sizeof(why), "cannot run the ssh setup in the guest: %s", strerror(-rc));
        finish(s, why);
    }
    return 0;
}

void gd__ssh_free(struct gd__ssh *s)
{
    if (!s)
        return;
    while (s->waiters) {
        struct waiter *w = s->waiters;
        s->waiters = w->next;
        free(w);
    }
    free(s);
}
