/* supervisor.c - the process that owns a long-lived sandbox: boots it, serves its control
 * socket, publishes ID.json, and stops it on `stop`, SIGTERM/SIGINT or when the VM ends. */
#define _GNU_SOURCE
#include "control_int.h"

#include "base/fs.h"

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

struct sup {
    uv_loop_t loop;
    const struct gd_control_supervise_opts *o;
    gd_sandbox *sb;
    gd_control_server *srv;
    struct gd_session meta;
    uv_signal_t sigs[2];
    int sigs_open;
    uv_timer_t fin; /* frees the sandbox outside its callbacks */
    int ready, stopping, code;
    int started; /* on_started was called, on_stopped not yet */
};

static void slog(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void slog(const char *fmt, ...)
{
    char ts[32], line[1400];
    time_t now = time(NULL);
    struct tm tm;
    strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S", localtime_r(&now, &tm));
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    fprintf(stderr, "%s %s\n", ts, line);
}

static void on_log(void *ud, const char *line)
{
    (void)ud;
    slog("%s", line);
}

static void on_reload(void *ud, int ok, const char *rev, const char *msg)
{
    struct sup *p = ud;
    slog("policy %s: revision %s%s%s", ok ? "reloaded" : "reload rejected", rev, msg ? ": " : "",
         msg ? msg : "");
    if (p->srv)
        gd_control_server_on_reload(p->srv, ok, msg);
}

/* Tells `gondolin start` how it went (once). */
static void report(struct sup *p, const char *error)
{
    if (p->o->ready_fd < 0 || p->ready)
        return;
    p->ready = 1;
    char line[1200];
    int n = error ? snprintf(line, sizeof(line), "error: %s\n", error)
                  : snprintf(line, sizeof(line), "ok\n");
    if (n > 0 && write(p->o->ready_fd, line, (size_t)n) < 0)
        slog("cannot report to `gondolin start`: %s", strerror(errno));
    close(p->o->ready_fd);
}

static void begin_stop(struct sup *p, const char *why)
{
    if (p->stopping)
        return;
    p->stopping = 1;
    slog("stopping the sandbox (%s)", why);
    if (p->srv)
        gd_control_server_stopping(p->srv);
    gd_sandbox_close(p->sb);
}

static void on_stop(void *ud, int force)
{
    struct sup *p = ud;
    if (force) {
        /* QEMU dies with us (PR_SET_PDEATHSIG); nothing else needs an orderly end */
        slog("stop --force: exiting; the VM is killed with the supervisor");
        gd_session_remove(p->o->dir, p->meta.id);
        _exit(0);
    }
    begin_stop(p, "stop requested");
}

static void on_signal(uv_signal_t *h, int sig)
{
    struct sup *p = h->data;
    if (p->stopping) { /* a second one: at once */
        slog("%s again: exiting", strsignal(sig));
        gd_session_remove(p->o->dir, p->meta.id);
        _exit(128 + sig);
    }
    begin_stop(p, strsignal(sig));
}

/* ID.json, unless a live session already has this name (checked under a lock, so two
 * starts with one name cannot both publish). */
static int publish(struct sup *p, char *why, size_t cap)
{
    char lock[1200];
    snprintf(lock, sizeof(lock), "%s/.lock", p->o->dir);
    int lfd = gd_lock_open(lock);
    int rc = 0;
    if (p->meta.name[0]) {
        struct gd_session *v;
        size_t n;
        if (gd_session_list(p->o->dir, 0, &v, &n) == 0) {
            for (size_t i = 0; i < n && !rc; i++)
                if (!strcmp(v[i].name, p->meta.name) && strcmp(v[i].id, p->meta.id)) {
                    snprintf(why, cap, "a session named '%s' exists already (%s)", p->meta.name,
                             v[i].id);
                    rc = -EEXIST;
                }
            free(v);
        }
    }
    if (!rc && (rc = gd_session_write(p->o->dir, &p->meta)))
        snprintf(why, cap, "cannot write %s/%s.json: %s", p->o->dir, p->meta.id, strerror(-rc));
    if (lfd >= 0)
        close(lfd);
    return rc;
}

static void on_ready(gd_sandbox *sb, int status, void *ud)
{
    struct sup *p = ud;
    char why[1200];
    if (status) {
        const char *e = gd_vm_error(gd_sandbox_vm(sb));
        snprintf(why, sizeof(why), "%s", e && e[0] ? e : strerror(-status));
        slog("the sandbox did not start: %s", why);
        report(p, why);
        p->code = 1;
        return; /* exit_cb follows */
    }
    struct gd_session *m = &p->meta;
    snprintf(m->image, sizeof(m->image), "%s", gd_sandbox_image_dir(sb));
    snprintf(m->build_id, sizeof(m->build_id), "%s", gd_sandbox_build_id(sb));
    const char *pol = gd_sandbox_policy(sb);
    snprintf(m->policy, sizeof(m->policy), "%s", pol ? pol : "");
    struct gd_control_server_opts so = {.path = m->socket,
                                        .log_path = m->log,
                                        .meta = m,
                                        .on_stop = on_stop,
                                        .log = on_log,
                                        .ud = p};
    struct gd_err err = {{0}};
    if (gd_control_server_new(&p->loop, sb, &so, &p->srv, &err)) {
        snprintf(why, sizeof(why), "%s", err.msg);
    } else if (publish(p, why, sizeof(why)) == 0) {
        slog("session %s%s%s%s ready: image %s (build %s), accel %s, policy %s", m->id,
             m->name[0] ? " (" : "", m->name, m->name[0] ? ")" : "", m->image, m->build_id,
             gd_vm_accel(gd_sandbox_vm(sb)), m->policy[0] ? m->policy : "none");
        report(p, NULL);
        if (p->o->on_started) {
            p->started = 1;
            p->o->on_started(&p->loop, sb, p->o->hook_ud);
        }
        return;
    }
    slog("%s", why);
    report(p, why);
    p->code = 1;
    begin_stop(p, "startup failed");
}

static void on_fin_closed(uv_handle_t *h)
{
    (void)h;
}

static void on_fin(uv_timer_t *t)
{
    struct sup *p = t->data;
    gd_sandbox_free(p->sb);
    p->sb = NULL;
    uv_close((uv_handle_t *)&p->fin, on_fin_closed);
}

/* The server has closed (or there was none): the sandbox goes next. */
static void on_srv_closed(void *ud)
{
    struct sup *p = ud;
    uv_timer_start(&p->fin, on_fin, 0, 0);
}

static void on_exit_cb(gd_sandbox *sb, const char *reason, void *ud)
{
    (void)sb;
    struct sup *p = ud;
    if (reason) {
        slog("the sandbox stopped: %s", reason);
        report(p, reason);
        p->code = 1;
    } else {
        slog("the sandbox stopped");
    }
    p->stopping = 1;
    if (p->started && p->o->on_stopped) {
        p->started = 0;
        p->o->on_stopped(p->o->hook_ud);
    }
    if (p->sigs_open) {
        uv_close((uv_handle_t *)&p->sigs[0], NULL);
        uv_close((uv_handle_t *)&p->sigs[1], NULL);
        p->sigs_open = 0;
    }
    if (p->srv)
        gd_control_server_close(p->srv, on_srv_closed, p);
    else
        on_srv_closed(p);
}

int gd_control_supervise(const struct gd_control_supervise_opts *o)
{
    struct sup *p = calloc(1, sizeof(*p));
    if (!p)
        return 1;
    p->o = o;
    signal(SIGPIPE, SIG_IGN);
    struct gd_session *m = &p->meta;
    snprintf(m->id, sizeof(m->id), "%s", o->id);
    snprintf(m->name, sizeof(m->name), "%s", o->name ? o->name : "");
    m->pid = (long)getpid();
    gd_session_pid_start(m->pid, &m->pid_start);
    m->created = (long long)time(NULL);
    snprintf(m->socket, sizeof(m->socket), "%s/%s.sock", o->dir, o->id);
    snprintf(m->log, sizeof(m->log), "%s/%s.log", o->dir, o->id);

    uv_loop_init(&p->loop);
    struct gd_sandbox_opts so = *o->sandbox;
    so.log = on_log;
    so.on_reload = on_reload;
    so.ud = p;
    struct gd_err err = {{0}};
    slog("supervisor %ld starting session %s", m->pid, m->id);
    int rc = gd_sandbox_new(&p->loop, &so, &p->sb, &err);
    if (rc) {
        slog("%s", err.msg);
        report(p, err.msg);
        uv_run(&p->loop, UV_RUN_DEFAULT); /* what the egress stack had opened */
        uv_loop_close(&p->loop);
        gd_session_remove(o->dir, m->id);
        free(p);
        return 1;
    }
    static const int sigs[2] = {SIGTERM, SIGINT};
    for (int i = 0; i < 2; i++) {
        uv_signal_init(&p->loop, &p->sigs[i]);
        p->sigs[i].data = p;
        uv_signal_start(&p->sigs[i], on_signal, sigs[i]);
    }
    p->sigs_open = 1;
    uv_timer_init(&p->loop, &p->fin);
    p->fin.data = p;
    rc = gd_sandbox_start(p->sb, on_ready, on_exit_cb, p);
    if (rc) {
        snprintf(err.msg, sizeof(err.msg), "cannot start the sandbox: %s", strerror(-rc));
        slog("%s", err.msg);
        report(p, err.msg);
        uv_close((uv_handle_t *)&p->sigs[0], NULL);
        uv_close((uv_handle_t *)&p->sigs[1], NULL);
        p->sigs_open = 0;
        p->code = 1;
        on_srv_closed(p); /* never started: free it on the loop */
    }
    uv_run(&p->loop, UV_RUN_DEFAULT); /* until the sandbox's handles have closed */
    gd_control_server_free(p->srv);
    gd_session_remove(o->dir, m->id); /* the session is over: its files go with it */
    slog("supervisor %ld exits (status %d)", m->pid, p->code);
    int code = p->code;
    if (uv_loop_close(&p->loop))
        slog("note: libuv handles were still open at exit");
    free(p);
    return code;
}
