/* requests.c - the one-shot REQUEST operations (docs/control.md): info, policy.reload,
 * policy.status, logs (logs.c), expose, stop. */
#define _GNU_SOURCE
#include "control_int.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

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
    cJSON_AddArrayToObject(o, "forwards");
    return o;
}

static cJSON *fail_reply(const char *msg)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddBoolToObject(o, "ok", 0);
    cJSON_AddStringToObject(o, "error", msg);
    return o;
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
            return gd__control_reply(c, id, fail_reply(err.msg[0] ? err.msg : "the reload failed"),
                                     0);
        o = cJSON_CreateObject();
        cJSON_AddBoolToObject(o, "ok", 1);
        if (q.op[7] == 's')
            gd_control_json_str(o, "policy", gd_sandbox_policy(s->sb));
        cJSON_AddStringToObject(o, "revision", gd_sandbox_revision(s->sb));
        cJSON_AddNumberToObject(o, "generation", gd_sandbox_generation(s->sb));
        if (q.op[7] == 's')
            gd_control_json_str(o, "last_error", s->has_error ? s->last_error : NULL);
    } else if (!strcmp(q.op, "expose")) {
        o = fail_reply("not yet supported");
    } else if (!strcmp(q.op, "stop")) {
        o = cJSON_CreateObject();
        cJSON_AddBoolToObject(o, "ok", 1);
        gd__control_log(s, "control: stop%s requested", q.force ? " --force" : "");
        return gd__control_reply(c, id, o, q.force ? 2 : 1);
    } else {
        snprintf(why, sizeof(why), "unknown op '%s'", q.op);
        o = fail_reply(why);
    }
    gd__control_reply(c, id, o, 0);
}
