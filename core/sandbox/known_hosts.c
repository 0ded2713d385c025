/* known_hosts.c - the guest's /etc/ssh/ssh_known_hosts: the SSH proxy's host key for
 * every name an SSH rule allows, so `git clone git@host:o/r.git` in the guest verifies
 * the proxy with no StrictHostKeyChecking=no. Written by a guest command once the VM is
 * ready (before the sandbox reports ready: a booted or memory snapshot has an older file,
 * and the names are no part of its key) and again after a reload that changed the names.
 * Writes are one at a time; a reload during a write asks for one more, so the last
 * revision's line is what stays. The guest runs that command, so it can stall it (a
 * stopped shell, a FIFO in the way): after KH_READY_MS ready is reported anyway. */
#define _GNU_SOURCE
#include "sandbox_int.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define KH_READY_MS 10000

enum { KH_BOOTING, KH_IDLE, KH_WRITING, KH_AGAIN, KH_STOPPED };

static void write_next(gd_sandbox *sb);

static void free_timer(uv_handle_t *h)
{
    free(h);
}

static void close_timer(gd_sandbox *sb)
{
    if (sb->kh_timer) {
        uv_close((uv_handle_t *)sb->kh_timer, free_timer);
        sb->kh_timer = NULL;
    }
}

/* status 0 unless the sandbox is closing or its VM went away under the write: the VM
 * layer's own ready has fired already, so the failure is reported here */
static void report_ready(gd_sandbox *sb, int status)
{
    close_timer(sb);
    if (!sb->kh_ready_pending)
        return;
    sb->kh_ready_pending = 0;
    if (sb->ready)
        sb->ready(sb, sb->closing ? -EIO : status, sb->ud);
}

static void on_deadline(uv_timer_t *t)
{
    gd_sandbox *sb = t->data;
    gd__sandbox_log(sb,
                    "ssh: the guest did not write /etc/ssh/ssh_known_hosts within %d s; "
                    "going on without it",
                    KH_READY_MS / 1000);
    report_ready(sb, 0);
}

static void on_written(gd_sandbox *sb, int code, const char *out, const char *err, void *ud)
{
    (void)out;
    char *line = ud;
    if (code) {
        if (code != -2)
            gd__sandbox_log(sb,
                            "ssh: cannot write the guest's /etc/ssh/ssh_known_hosts (exit %d): "
                            "%.200s",
                            code, err && *err ? err : "no message");
        free(line);
    } else {
        free(sb->kh_line);
        sb->kh_line = line;
    }
    if (sb->kh_state == KH_STOPPED) {
        report_ready(sb, -EIO);
        return;
    }
    int again = sb->kh_state == KH_AGAIN;
    sb->kh_state = KH_IDLE;
    report_ready(sb, code == -2 ? -EIO : 0);
    if (again && !sb->closing && code != -2)
        write_next(sb);
}

static void write_next(gd_sandbox *sb)
{
    char *line = sb->have_ns ? gd__netstack_known_hosts(&sb->ns) : NULL;
    /* nothing to say: the guest has this line (none yet counts as empty) */
    if (!strcmp(line ? line : "", sb->kh_line ? sb->kh_line : "")) {
        free(line);
        report_ready(sb, 0);
        return;
    }
    static const char script[] =
        "umask 022; mkdir -p /etc/ssh && rm -f /etc/ssh/.ssh_known_hosts.gondolin && "
        "cat > /etc/ssh/.ssh_known_hosts.gondolin && "
        "mv -f /etc/ssh/.ssh_known_hosts.gondolin /etc/ssh/ssh_known_hosts";
    const char *argv[] = {"/bin/sh", "-c", script, NULL};
    /* no rules any more: an empty file (the names are not the proxy's any more) */
    const char *body = line ? line : "";
    char *mine = line ? line : strdup("");
    if (!mine || gd__sandbox_run(sb, argv, body, strlen(body), on_written, mine)) {
        gd__sandbox_log(sb, "ssh: cannot write the guest's /etc/ssh/ssh_known_hosts");
        free(mine);
        report_ready(sb, 0);
        return;
    }
    sb->kh_state = KH_WRITING;
}

void gd__known_hosts_ready(gd_sandbox *sb)
{
    sb->kh_state = KH_IDLE;
    sb->kh_ready_pending = 1;
    write_next(sb);
    if (sb->kh_ready_pending && !sb->kh_timer && (sb->kh_timer = malloc(sizeof(uv_timer_t)))) {
        uv_timer_init(sb->loop, sb->kh_timer);
        sb->kh_timer->data = sb;
        uv_timer_start(sb->kh_timer, on_deadline, KH_READY_MS, 0);
    }
}

void gd__known_hosts_reloaded(gd_sandbox *sb)
{
    if (sb->kh_state == KH_IDLE)
        write_next(sb);
    else if (sb->kh_state == KH_WRITING)
        sb->kh_state = KH_AGAIN;
}

void gd__known_hosts_stop(gd_sandbox *sb)
{
    sb->kh_state = KH_STOPPED;
    close_timer(sb);
}
