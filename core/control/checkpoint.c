/* checkpoint.c - the `snapshot` REQUEST (docs/snapshots.md): a disk checkpoint of the
 * session, or with "memory" a memory snapshot, into the image store (or a host path),
 * answered once it is on disk. A disk checkpoint ends the session (the sandbox stops,
 * the supervisor exits after the REPLY); a memory snapshot too with "stop", else the
 * session runs on. */
#define _GNU_SOURCE
#include "control_int.h"

#include "base/fs.h"
#include "snap/snap.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct snap_wait {
    gd_control_server *s;
    uint64_t serial;
    uint32_t id;
    char name[128];
    int memory, stop;
};

static void on_snapshot(gd_sandbox *sb, const char *path, uint64_t size, const char *error,
                        void *ud)
{
    (void)sb;
    struct snap_wait *w = ud;
    struct conn *c = gd__control_conn(w->s, w->serial);
    if (path)
        gd__control_log(w->s, "control: checkpoint %s written (%llu bytes)", path,
                        (unsigned long long)size);
    if (c) {
        cJSON *o;
        if (error) {
            o = gd__control_fail_reply(error);
        } else {
            o = cJSON_CreateObject();
            cJSON_AddBoolToObject(o, "ok", 1);
            cJSON_AddStringToObject(o, "path", path);
            gd_control_json_str(o, "name", w->name);
            cJSON_AddNumberToObject(o, "size", (double)size);
            cJSON_AddBoolToObject(o, "memory", w->memory);
            cJSON_AddBoolToObject(o, "stopped", !w->memory || w->stop);
        }
        gd__control_reply(c, w->id, o, 0);
    }
    free(w);
}

cJSON *gd__control_snapshot(struct conn *c, uint32_t id, const struct gd_control_request *q)
{
    gd_control_server *s = c->s;
    char name[128], path[1300], why[1400];
    if (q->name[0]) {
        snprintf(name, sizeof(name), "%s", q->name);
    } else { /* SESSION-YYYYmmdd-HHMMSS */
        char ts[32];
        time_t now = time(NULL);
        struct tm tm;
        strftime(ts, sizeof(ts), "%Y%m%d-%H%M%S", localtime_r(&now, &tm));
        snprintf(name, sizeof(name), "%.40s-%s", s->meta.name[0] ? s->meta.name : s->meta.id, ts);
    }
    if (!gd_snap_name_ok(name)) {
        snprintf(why, sizeof(why),
                 "'%s' is not a checkpoint name (1 to 63 of A-Z a-z 0-9 _ . -, starting with a "
                 "letter or a digit)",
                 name);
        return gd__control_fail_reply(why);
    }
    if (q->output[0]) {
        if (q->output[0] != '/')
            return gd__control_fail_reply("\"output\" must be an absolute path");
        snprintf(path, sizeof(path), "%s", q->output);
    } else {
        char dir[1100];
        gd_snap_store_dir(dir, sizeof(dir));
        int rc = gd_mkdir_p(dir, 0755);
        if (rc) {
            snprintf(why, sizeof(why), "cannot create %s: %s", dir, strerror(-rc));
            return gd__control_fail_reply(why);
        }
        snprintf(path, sizeof(path), "%s/%s%s", dir, name, GD_SNAP_EXT);
    }
    struct snap_wait *w = calloc(1, sizeof(*w));
    if (!w)
        return gd__control_fail_reply("out of memory");
    w->s = s;
    w->serial = c->serial;
    w->id = id;
    snprintf(w->name, sizeof(w->name), "%s", q->output[0] && !q->name[0] ? "" : name);
    w->memory = q->memory;
    w->stop = q->stop;
    struct gd_sandbox_snapshot_opts so = {.path = path,
                                          .name = w->name[0] ? w->name : NULL,
                                          .session = s->meta.id,
                                          .memory = q->memory,
                                          .stop = q->stop};
    struct gd_err err = {{0}};
    if (gd_sandbox_snapshot(s->sb, &so, on_snapshot, w, &err)) {
        free(w);
        return gd__control_fail_reply(err.msg);
    }
    gd__control_log(s, "control: %s to %s requested", q->memory ? "memory snapshot" : "checkpoint",
                    path);
    return NULL; /* on_snapshot answers */
}
