/* requests.c - the one-shot REQUEST operations (docs/control.md): info, policy.reload,
 * policy.status, logs (logs.c), expose (gd_sandbox_expose), fs.diff (fsdiff.c), snapshot
 * (checkpoint.c), stop. */
#define _GNU_SOURCE
#include "base/text.h"
#include "control_int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

cJSON *gd__control_fail_reply(const char *msg)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddBoolToObject(o, "ok", 0);
    cJSON_AddStringToObject(o, "error", msg);
    return o;
}

cJSON *gd__control_info(gd_control_server *s)
{
    cJSON *o = cJSON_CreateObject();
    const struct gd_session *m = &s->meta;
    cJSON_AddBoolToObject(o, "ok", 1);
    cJSON_AddStringToObject(o, "id", m->id);
    gd_control_json_str(o, "name", m->name);
    cJSON_AddNumberToObject(o, "pid", (double)getpid());
    cJSON_AddNumberToObject(o, "created", (double)m->created);
    cJSON_AddStringToObject(o, "image", gd_sandbox_image_dir(s->sb));
    cJSON_AddStringToObject(o, "build_id", gd_sandbox_build_id(s->sb));
    cJSON_AddStringToObject(o, "accel", gd_vm_accel(gd_sandbox_vm(s->sb)));
    gd_control_json_str(o, "policy", gd_sandbox_policy(s->sb));
    cJSON_AddStringToObject(o, "revision", gd_sandbox_revision(s->sb));
    cJSON_AddNumberToObject(o, "generation", gd_sandbox_generation(s->sb));
    cJSON_AddStringToObject(o, "state", s->stopping ? "stopping" : "running");
    cJSON_AddBoolToObject(o, "cow", gd_sandbox_cow(s->sb)); /* a checkpoint can be taken */
    int execs = 0, clients = 0;
    for (struct conn *c = s->conns; c; c = c->next) {
        clients += !c->ended;
        for (struct req *r = c->reqs; r; r = r->next)
            execs += r->kind == REQ_EXEC;
    }
    for (struct req *r = s->orphans; r; r = r->next)
        execs += r->kind == REQ_EXEC;
    cJSON_AddNumberToObject(o, "execs", execs);
    cJSON_AddNumberToObject(o, "clients", clients);
    cJSON *fa = cJSON_AddArrayToObject(o, "forwards");
    struct gd_sandbox_forward fw[64];
    size_t n = gd_sandbox_forwards(s->sb, fw, 64);
    while (n--) { /* oldest first */
        char a[100];
        cJSON *f = cJSON_CreateObject();
        gd_hostport(a, sizeof(a), fw[n].host, fw[n].port);
        cJSON_AddStringToObject(f, "listen", a);
        cJSON_AddNumberToObject(f, "guest_port", fw[n].guest_port);
        cJSON_AddBoolToObject(f, "raw", fw[n].raw);
        cJSON_AddItemToArray(fa, f);
    }
    return o;
}

/* {"listen": "[HOST:]PORT", "guest_port": N, "raw": B}: a listener on the host that
 * forwards to the guest's loopback (gd_sandbox_expose). */
static cJSON *expose(gd_control_server *s, const struct gd_control_request *q)
{
    char spec[200], a[100];
    struct gd_forward_spec fs;
    struct gd_err err = {{0}};
    unsigned port;
    if (!q->listen[0] || !q->guest_port)
        return gd__control_fail_reply("expose needs \"listen\" ([HOST:]PORT) and \"guest_port\"");
    snprintf(spec, sizeof(spec), "%s=%u", q->listen, q->guest_port);
    if (gd_forward_parse(spec, &fs, &err) || gd_sandbox_expose(s->sb, &fs, q->raw, &port, &err))
        return gd__control_fail_reply(err.msg);
    gd_hostport(a, sizeof(a), fs.host[0] ? fs.host : "127.0.0.1", port);
    gd__control_log(s, "control: ingress %s://%s -> guest port %u", q->raw ? "tcp" : "http", a,
                    q->guest_port);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddBoolToObject(o, "ok", 1);
    cJSON_AddStringToObject(o, "listen", a);
    return o;
}

struct conn *gd__control_conn(gd_control_server *s, uint64_t serial)
{
    for (struct conn *c = s->conns; c; c = c->next)
        if (c->serial == serial && !c->ended)
            return c;
    return NULL;
}

/* {"user": U}: sshd in the guest and a host port to it (gd_sandbox_ssh); answered when
 * sshd is up. The keys live in the sessions directory as ID.ssh/. */
struct ssh_wait {
    gd_control_server *s;
    uint64_t serial;
    uint32_t id;
};

static void on_ssh(gd_sandbox *sb, const struct gd_ssh_access *a, const char *error, void *ud)
{
    (void)sb;
    struct ssh_wait *w = ud;
    struct conn *c = gd__control_conn(w->s, w->serial);
    if (a)
        gd__control_log(w->s, "control: ssh %s@%s:%u", a->user, a->host, a->port);
    if (c) {
        cJSON *o;
        if (!a) {
            o = gd__control_fail_reply(error);
        } else {
            o = cJSON_CreateObject();
            cJSON_AddBoolToObject(o, "ok", 1);
            cJSON_AddStringToObject(o, "host", a->host);
            cJSON_AddNumberToObject(o, "port", a->port);
            cJSON_AddStringToObject(o, "user", a->user);
            cJSON_AddStringToObject(o, "identity", a->identity);
            cJSON_AddStringToObject(o, "known_hosts", a->known_hosts);
            cJSON_AddStringToObject(o, "command", a->command);
        }
        gd__control_reply(c, w->id, o, 0);
    }
    free(w);
}

static cJSON *ssh(struct conn *c, uint32_t id, const struct gd_control_request *q)
{
    gd_control_server *s = c->s;
    char dir[1300];
    snprintf(dir, sizeof(dir), "%s", s->meta.socket);
    char *dot = strrchr(dir, '.');
    if (!dot)
        return gd__control_fail_reply("no place for the ssh keys");
    strcpy(dot, ".ssh");
    if (mkdir(dir, 0700) && errno != EEXIST)
        return gd__control_fail_reply("cannot create the directory for the ssh keys");
    struct ssh_wait *w = calloc(1, sizeof(*w));
    if (!w)
        return gd__control_fail_reply("out of memory");
    *w = (struct ssh_wait){s, c->serial, id};
    struct gd_ssh_opts so = {.user = q->user[0] ? q->user : NULL, .key_dir = dir};
    struct gd_forward_spec fs = {0};
    if (q->listen[0]) { /* "[HOST:]PORT" of the host side */
        char spec[200];
        struct gd_err err = {{0}};
        snprintf(spec, sizeof(spec), "%s=22", q->listen);
        if (gd_forward_parse(spec, &fs, &err)) {
            free(w);
            return gd__control_fail_reply(err.msg);
        }
        so.listen_host = fs.host[0] ? fs.host : NULL;
        so.listen_port = fs.port;
    }
    int rc = gd_sandbox_ssh(s->sb, &so, on_ssh, w);
    if (rc) {
        free(w);
        return gd__control_fail_reply(rc == -EINVAL ? "bad user name" : strerror(-rc));
    }
    return NULL; /* on_ssh answers */
}

void gd__control_request(struct conn *c, uint32_t id, const uint8_t *body, size_t n)
{
    gd_control_server *s = c->s;
    struct gd_control_request q;
    char why[300];
    if (gd_control_parse_request(body, n, &q, why, sizeof(why)))
        return gd__control_fail(c, "REQUEST: %s", why);
    if (!strcmp(q.op, "logs")) {
        if (gd__control_admit(c, id) == 0)
            gd__control_logs(c, id, &q);
        return;
    }
    if (gd__control_find(c, id)) {
        snprintf(why, sizeof(why), "request id %u is still live", id);
        return gd__control_error(c, id, "id_in_use", why);
    }
    cJSON *o;
    if (!strcmp(q.op, "info")) {
        o = gd__control_info(s);
    } else if (!strcmp(q.op, "policy.reload") || !strcmp(q.op, "policy.status")) {
        struct gd_err err = {{0}};
        if (q.op[7] == 'r' && gd_sandbox_reload(s->sb, &err))
            return gd__control_reply(
                c, id, gd__control_fail_reply(err.msg[0] ? err.msg : "the reload failed"), 0);
        o = cJSON_CreateObject();
        cJSON_AddBoolToObject(o, "ok", 1);
        if (q.op[7] == 's')
            gd_control_json_str(o, "policy", gd_sandbox_policy(s->sb));
        cJSON_AddStringToObject(o, "revision", gd_sandbox_revision(s->sb));
        cJSON_AddNumberToObject(o, "generation", gd_sandbox_generation(s->sb));
        if (q.op[7] == 's')
            gd_control_json_str(o, "last_error", s->has_error ? s->last_error : NULL);
    } else if (!strcmp(q.op, "expose")) {
        o = expose(s, &q);
    } else if (!strcmp(q.op, "fs.diff")) {
        o = gd__control_fs_diff(s, &q);
    } else if (!strcmp(q.op, "snapshot")) {
        if (!(o = gd__control_snapshot(c, id, &q)))
            return;
    } else if (!strcmp(q.op, "ssh")) {
        if (!(o = ssh(c, id, &q)))
            return;
    } else if (!strcmp(q.op, "stop")) {
        o = cJSON_CreateObject();
        cJSON_AddBoolToObject(o, "ok", 1);
        gd__control_log(s, "control: stop%s requested", q.force ? " --force" : "");
        return gd__control_reply(c, id, o, q.force ? 2 : 1);
    } else {
        snprintf(why, sizeof(why), "unknown op '%s'", q.op);
        o = gd__control_fail_reply(why);
    }
    gd__control_reply(c, id, o, 0);
}
