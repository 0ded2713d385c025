/* fsdiff.c - the fs.diff request (docs/control.md): what the guest changed in an overlay
 * mount (gd_vfs_overlay_changes), optionally written as a tar to a host file the client
 * names (gd_vfs_overlay_export). The client is the same user as the supervisor (the
 * socket checks the peer's uid), so the file is opened with the supervisor's rights. */
#define _GNU_SOURCE
#include "control_int.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define DIFF_REPLY_MAX (200u << 10) /* path bytes in one reply; JSON bodies stop at 256 KiB */

struct diff_ctx {
    cJSON *list;
    const char *mount, *under;
    size_t bytes, count, listed;
};

static int on_change(void *ud, const char *path, int kind, const struct stat *st)
{
    struct diff_ctx *c = ud;
    (void)st;
    if (!gd_vfs_path_under(path, c->under))
        return 0;
    c->count++;
    char abs[PATH_MAX * 2 + 2], k[2] = {(char)kind, 0};
    size_t ml = strlen(c->mount);
    snprintf(abs, sizeof(abs), "%s%s%s", c->mount, ml > 1 && *path ? "/" : "",
             *path ? path : (ml ? "" : "/"));
    if (c->bytes + strlen(abs) + 32 > DIFF_REPLY_MAX)
        return 0; /* counted, not listed: the reply says truncated */
    cJSON *e = cJSON_CreateObject();
    cJSON_AddStringToObject(e, "kind", k);
    cJSON_AddStringToObject(e, "path", abs);
    cJSON_AddItemToArray(c->list, e);
    c->bytes += strlen(abs) + 32;
    c->listed++;
    return 0;
}

static cJSON *fail(const char *a, const char *b)
{
    char msg[2200];
    snprintf(msg, sizeof(msg), "%s%s", a, b);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddBoolToObject(o, "ok", 0);
    cJSON_AddStringToObject(o, "error", msg);
    return o;
}

cJSON *gd__control_fs_diff(gd_control_server *s, const struct gd_control_request *q)
{
    if (q->path[0] != '/')
        return fail("fs.diff needs \"path\", an absolute guest path", "");
    const char *rel = NULL;
    gd_vfs_provider *pv = gd_sandbox_mount_provider(s->sb, q->path, &rel);
    if (!pv)
        return fail(q->path, ": not in a mount of this session");
    char mount[1024];
    size_t ml = strlen(q->path) - strlen(rel);
    while (ml > 1 && q->path[ml - 1] == '/')
        ml--;
    snprintf(mount, sizeof(mount), "%.*s", (int)ml, q->path);
    char under[1024];
    snprintf(under, sizeof(under), "%s", rel);
    for (size_t n = strlen(under); n && under[n - 1] == '/';)
        under[--n] = 0;
    struct diff_ctx c = {.mount = mount, .under = under, .list = cJSON_CreateArray()};
    int rc = gd_vfs_overlay_changes(pv, on_change, &c);
    if (rc) {
        cJSON_Delete(c.list);
        return fail(mount, rc == -EINVAL ? ": not an overlay mount (--mount-overlay)"
                                         : ": cannot list the changes");
    }
    if (q->export_[0]) {
        struct gd_err err = {{0}};
        int fd = q->export_[0] == '/'
                     ? open(q->export_, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644)
                     : -1;
        if (fd < 0) {
            cJSON_Delete(c.list);
            return fail(q->export_, q->export_[0] == '/' ? ": cannot create the export file"
                                                         : ": not an absolute path");
        }
        rc = gd_vfs_overlay_export(pv, under, fd, q->whiteouts ? GD_VFS_EXPORT_WHITEOUTS : 0, &err);
        close(fd);
        if (rc) {
            cJSON_Delete(c.list);
            return fail("export: ", err.msg);
        }
        gd__control_log(s, "control: fs.diff %s exported to %s", q->path, q->export_);
    }
    cJSON *o = cJSON_CreateObject();
    cJSON_AddBoolToObject(o, "ok", 1);
    cJSON_AddStringToObject(o, "mount", mount);
    cJSON_AddItemToObject(o, "changes", c.list);
    cJSON_AddNumberToObject(o, "count", (double)c.count);
    cJSON_AddBoolToObject(o, "truncated", c.listed < c.count);
    return o;
}
