/* ssh_hooks.c - SSH execs meet the policy (on the loop thread, where the Lua state
 * lives): the current revision's on_ssh_exec decides, and each exec leaves one audit
 * record (host, user, command, decision, rule, exit status, bytes, duration, revision). */
#define _GNU_SOURCE
#include "engine/engine_int.h"

#include "base/text.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

int gd_engine_ssh_exec(gd_engine *e, const struct gd_ssh_exec *x, char *rule, size_t rcap,
                       char *reason, size_t cap)
{
    rule[0] = reason[0] = 0;
    struct rev *r = e->cur;
    if (!r)
        return -EACCES;
    struct gd_plugin_ssh_exec px = {.host = x->host,
                                    .port = x->port,
                                    .user = x->user,
                                    .command = x->command,
                                    .git_service = x->git ? x->git->service : NULL,
                                    .git_repo = x->git ? x->git->repo : NULL};
    for (size_t i = 0; i < r->ninst; i++) {
        size_t n;
        const struct gd_plugin_ssh_hook *h = gd_plugin_ssh_hooks(r->inst[i], &n);
        for (size_t k = 0; k < n; k++) {
            char why[300] = "";
            if (!h[k].fn(h[k].ud, &px, why, sizeof(why)))
                continue;
            why[sizeof(why) - 1] = 0;
            gd_sanitize(reason, cap, why, strlen(why));
            if (!reason[0])
                snprintf(reason, cap, "denied by plugin");
            snprintf(rule, rcap, "%s", h[k].name);
            return -EACCES;
        }
    }
    return r->lua ? gd_lua_ssh_hook(r->lua, x, rule, rcap, reason, cap) : 0;
}

void gd_engine_ssh_audit(gd_engine *e, const struct gd_ssh_record *a)
{
    if (!e->audit)
        return;
    char ts[40];
    gd_iso_time(ts, sizeof(ts));
    cJSON *o = cJSON_CreateObject();
    if (!o)
        return;
    cJSON_AddStringToObject(o, "type", "ssh");
    cJSON_AddStringToObject(o, "time", ts);
    cJSON_AddStringToObject(o, "vm", e->vm_id);
    cJSON_AddStringToObject(o, "host", a->x->host);
    cJSON_AddNumberToObject(o, "port", a->x->port);
    cJSON_AddStringToObject(o, "user", a->x->user);
    if (a->x->upstream_user)
        cJSON_AddStringToObject(o, "upstream_user", a->x->upstream_user);
    char cmd[600];
    gd_sanitize(cmd, sizeof(cmd), a->x->command, strlen(a->x->command));
    cJSON_AddStringToObject(o, "command", cmd);
    cJSON_AddStringToObject(o, "decision", a->denied ? "deny" : "allow");
    if (a->rule && *a->rule)
        cJSON_AddStringToObject(o, "rule", a->rule);
    else
        cJSON_AddNullToObject(o, "rule");
    if (a->reason && *a->reason)
        cJSON_AddStringToObject(o, "reason", a->reason);
    if (a->denied)
        cJSON_AddNullToObject(o, "exit");
    else
        cJSON_AddNumberToObject(o, "exit", a->exit_status);
    cJSON_AddNumberToObject(o, "bytes_up", (double)a->bytes_up);
    cJSON_AddNumberToObject(o, "bytes_down", (double)a->bytes_down);
    cJSON_AddNumberToObject(o, "ms", a->ms);
    cJSON_AddStringToObject(o, "revision", e->cur ? e->cur->hash : "");
    char *line = cJSON_PrintUnformatted(o);
    if (line) {
        fprintf(e->audit, "%s\n", line);
        free(line);
    }
    cJSON_Delete(o);
}
