/* cmd_session.c - `gondolin ls | stop | logs` and `policy reload ID`: sessions found in
 * the sessions directory, asked over their control sockets. */
#define _GNU_SOURCE
#include "cli.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

int cli_session_arg(const char *a, const char **key, const char *usage)
{
    if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
        fputs(usage, stdout);
        return 0;
    }
    if (!*key && a[0] != '-') {
        *key = a;
        return -1;
    }
    return cli_die(2, "unexpected argument '%s' (%.*s)", a, (int)strcspn(usage, "\n"), usage);
}

int cli_session_open(const char *key, struct gd_session *s, gd_control_client **c)
{
    if (!key)
        return cli_die(2, "which session? Give its id (or a prefix of it) or its name");
    char dir[1024];
    struct gd_err err = {{0}};
    int rc = gd_session_dir(dir, sizeof(dir));
    if (rc)
        return cli_die(1, "cannot use the sessions directory %s: %s", dir, strerror(-rc));
    if (gd_session_find(dir, key, s, &err))
        return cli_die(1, "%s", err.msg);
    if (c && gd_control_client_connect(s->socket, c, &err))
        return cli_die(1, "session %s: %s", s->id, err.msg);
    return 0;
}

int cli_session_request(const char *key, const char *op, cJSON *params, struct gd_session *s,
                        cJSON **reply)
{
    struct gd_session own;
    gd_control_client *c;
    *reply = NULL;
    if (!s)
        s = &own;
    int rc = cli_session_open(key, s, &c);
    if (rc) {
        cJSON_Delete(params);
        return rc;
    }
    struct gd_err err = {{0}};
    rc = gd_control_client_request(c, op, params, reply, &err);
    gd_control_client_close(c);
    if (rc) {
        cJSON_Delete(*reply);
        *reply = NULL;
        return cli_die(1, "session %s: %s", s->id, err.msg);
    }
    return 0;
}

const char *cli_reply_error(const cJSON *reply)
{
    if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(reply, "ok")))
        return NULL;
    const char *e = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(reply, "error"));
    return e ? e : "failed";
}

static const char *str_of(const cJSON *o, const char *k, const char *dflt)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(v) && v->valuestring ? v->valuestring : dflt;
}

static void age(long long created, char *out, size_t cap)
{
    long long s = (long long)time(NULL) - created;
    if (s < 0)
        s = 0;
    if (s < 120)
        snprintf(out, cap, "%llds", s);
    else if (s < 7200)
        snprintf(out, cap, "%lldm", s / 60);
    else if (s < 172800)
        snprintf(out, cap, "%lldh", s / 3600);
    else
        snprintf(out, cap, "%lldd", s / 86400);
}

int cmd_ls(int argc, char **argv)
{
    int json = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--json"))
            json = 1;
        else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            printf("usage: gondolin ls [--json]\n\nThe running sessions (stale entries of "
                   "supervisors that are gone are removed).\n");
            return 0;
        } else
            return cli_die(2, "ls: unexpected argument '%s'", argv[i]);
    }
    char dir[1024];
    int rc = gd_session_dir(dir, sizeof(dir));
    if (rc)
        return cli_die(1, "cannot use the sessions directory %s: %s", dir, strerror(-rc));
    struct gd_session *v;
    size_t n;
    if ((rc = gd_session_list(dir, 1, &v, &n)))
        return cli_die(1, "cannot read %s: %s", dir, strerror(-rc));
    cJSON *all = cJSON_CreateArray();
    if (!json)
        printf("%-12s  %-16s  %-8s  %-5s  %-12s  %-12s  %s\n", "ID", "NAME", "PID", "AGE", "BUILD",
               "REVISION", "STATE");
    for (size_t i = 0; i < n; i++) {
        gd_control_client *c = NULL;
        struct gd_err err = {{0}};
        const cJSON *info = NULL;
        if (gd_control_client_connect(v[i].socket, &c, &err) == 0)
            info = gd_control_client_info(c);
        const char *state = info ? str_of(info, "state", "?") : "unreachable";
        if (json) {
            cJSON *o = gd_session_json(&v[i]);
            for (const cJSON *x = info ? info->child : NULL; x; x = x->next)
                if (strcmp(x->string, "ok") && !cJSON_GetObjectItemCaseSensitive(o, x->string))
                    cJSON_AddItemToObject(o, x->string, cJSON_Duplicate(x, 1));
            cJSON_AddStringToObject(o, "state", state);
            cJSON_AddItemToArray(all, o);
        } else {
            char a[16];
            age(v[i].created, a, sizeof(a));
            printf("%-12.12s  %-16s  %-8ld  %-5s  %-12.12s  %-12.12s  %s\n", v[i].id,
                   v[i].name[0] ? v[i].name : "-", v[i].pid, a, v[i].build_id,
                   info ? str_of(info, "revision", "-") : "-", state);
        }
        gd_control_client_close(c);
    }
    if (json) {
        char *t = gd_control_encode_json(all);
        printf("%s\n", t ? t : "[]");
        free(t);
    } else {
        cJSON_Delete(all);
    }
    free(v);
    return 0;
}

int cmd_stop(int argc, char **argv)
{
    const char *key = NULL;
    int force = 0;
    static const char usage[] = "usage: gondolin stop ID|NAME [--force]\n\nStops the sandbox: "
                                "running processes end (exit code 125) and the VM shuts\ndown; "
                                "--force kills the VM at once.\n";
    for (int i = 1; i < argc; i++) {
        int k;
        if (!strcmp(argv[i], "--force") || !strcmp(argv[i], "-f"))
            force = 1;
        else if ((k = cli_session_arg(argv[i], &key, usage)) >= 0)
            return k;
    }
    struct gd_session s;
    cJSON *p = cJSON_CreateObject(), *reply = NULL;
    cJSON_AddBoolToObject(p, "force", force);
    int rc = cli_session_request(key, "stop", p, &s, &reply);
    cJSON_Delete(reply);
    if (rc)
        return rc;
    for (int i = 0; i < 600 && gd_session_alive(&s); i++) { /* up to 30 s */
        struct timespec ts = {0, 50 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    if (gd_session_alive(&s))
        return cli_die(1, "session %s: the supervisor (pid %ld) is still running after 30 s", s.id,
                       s.pid);
    char dir[1024];
    if (gd_session_dir(dir, sizeof(dir)) == 0)
        gd_session_remove(dir, s.id);
    return 0;
}

static volatile sig_atomic_t stop_sig, stop_count;
static void on_stop_sig(int sig)
{
    stop_sig = sig;
    stop_count++;
}

int cmd_logs(int argc, char **argv)
{
    const char *key = NULL;
    int follow = 0;
    long lines = 100;
    static const char usage[] = "usage: gondolin logs ID|NAME [-f] [-n LINES]\n\nThe supervisor's "
                                "log (policy lines, denials, reloads, exits): the last\nLINES "
                                "(100) lines; -f keeps printing new ones until interrupted.\n";
    for (int i = 1; i < argc; i++) {
        char *end;
        int k;
        if (!strcmp(argv[i], "-f") || !strcmp(argv[i], "--follow"))
            follow = 1;
        else if ((!strcmp(argv[i], "-n") || !strcmp(argv[i], "--lines")) && i + 1 < argc) {
            lines = strtol(argv[++i], &end, 10);
            if (*end || lines < 0 || lines > 100000)
                return cli_die(2, "logs: -n wants a number from 0 to 100000");
        } else if ((k = cli_session_arg(argv[i], &key, usage)) >= 0) {
            return k;
        }
    }
    struct gd_session s;
    gd_control_client *c;
    int rc = cli_session_open(key, &s, &c);
    if (rc)
        return rc;
    struct sigaction sa = {.sa_handler = on_stop_sig};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    /* The signals are held outside ppoll: one that came between the check of stop_sig and
     * a plain poll would be noticed only by the next frame, which may never come. */
    sigset_t held, open_mask;
    sigemptyset(&held);
    sigaddset(&held, SIGINT);
    sigaddset(&held, SIGTERM);
    sigprocmask(SIG_BLOCK, &held, &open_mask);
    char req[96];
    snprintf(req, sizeof(req), "{\"op\":\"logs\",\"follow\":%s,\"lines\":%ld}",
             follow ? "true" : "false", lines);
    rc = gd_control_client_send(c, GD_CONTROL_REQUEST, 0, 1, req, strlen(req));
    int cancelled = 0, code = -1;
    while (!rc && code < 0) {
        if (stop_sig && cancelled == 1 && stop_count > 1) {
            code = 0; /* a second interrupt: the supervisor did not answer the first */
            break;
        }
        if (stop_sig && !cancelled) {
            cancelled = 1;
            gd_control_client_send(c, GD_CONTROL_CANCEL, 0, 1, NULL, 0);
        }
        struct gd_control_hdr h;
        const uint8_t *body;
        int k;
        while (code < 0 && (k = gd_control_client_next(c, &h, &body)) == 1) {
            if (h.type == GD_CONTROL_LOG && h.id == 1) {
                /* signals open while stdout may block (`logs -f | less` paused): one
                 * interrupts the write (no SA_RESTART) and ends the command */
                sigprocmask(SIG_SETMASK, &open_mask, NULL);
                int bad = fwrite(body, 1, h.len, stdout) != h.len || fflush(stdout);
                sigprocmask(SIG_BLOCK, &held, NULL);
                if (bad || stop_sig)
                    code = 0; /* the reader went away, or an interrupt */
            } else if (h.type == GD_CONTROL_REPLY && h.id == 1) {
                cJSON *o = NULL;
                code = gd_control_parse_reply(body, h.len, &o, NULL, 0) ? 1 : 0;
                if (!code && !cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "ok"))) {
                    cli_die(1, "logs: %s", str_of(o, "error", "failed"));
                    code = 1;
                }
                cJSON_Delete(o);
            } else if (h.type == GD_CONTROL_ERROR) {
                code = cli_die(1, "logs: the supervisor refused the request");
            }
        }
        if (code >= 0 || k < 0)
            break;
        struct pollfd pf = {gd_control_client_fd(c), POLLIN, 0};
        if (ppoll(&pf, 1, NULL, &open_mask) < 0 && errno != EINTR)
            break;
        if (pf.revents && (k = gd_control_client_fill(c)) < 0 && k != -EINTR)
            code = follow ? 0 : cli_die(1, "logs: the session went away"); /* it ended */
    }
    gd_control_client_close(c);
    sigprocmask(SIG_SETMASK, &open_mask, NULL);
    if (code < 0)
        code = cli_die(1, "logs: the session went away");
    return code;
}

int cli_session_reload(const char *key)
{
    struct gd_session s;
    cJSON *reply = NULL;
    int rc = cli_session_request(key, "policy.reload", NULL, &s, &reply);
    if (rc)
        return rc;
    int ok = !cli_reply_error(reply);
    if (ok) {
        const cJSON *g = cJSON_GetObjectItemCaseSensitive(reply, "generation");
        printf("session %s: revision %s (generation %d)\n", s.name[0] ? s.name : s.id,
               str_of(reply, "revision", "?"), cJSON_IsNumber(g) ? g->valueint : 0);
    } else {
        fprintf(stderr, "gondolin: session %s: reload rejected: %s\n", s.name[0] ? s.name : s.id,
                str_of(reply, "error", "?"));
    }
    cJSON_Delete(reply);
    return ok ? 0 : 1;
}
