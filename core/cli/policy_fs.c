/* policy_fs.c - the file side of the policy authoring tools: what `policy check` says
 * about mounts and fs hooks, `policy explain FILE fs OP PATH ...` and fs cases of
 * `policy test` ({"fs": "open /workspace/a.lock w", "expect": "deny"}). */
#define _GNU_SOURCE
#include "cli.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>

static const char *const mutating_ops[] = {"create",  "mknod",    "mkdir",       "symlink",
                                           "link",    "unlink",   "rmdir",       "rename",
                                           "setattr", "setxattr", "removexattr", NULL};
static const char *const other_ops[] = {"open", "close", NULL};
static const char *const two_paths[] = {"rename", "link", "symlink", NULL};

static int in(const char *s, const char *const *v)
{
    for (; *v; v++)
        if (!strcmp(s, *v))
            return 1;
    return 0;
}

/* "OP PATH [PATH2] [MODE]" -> ev (strings point into buf). MODE for open/create: letters
 * r (read), w (write), a (append), t (truncate); default r. */
int cli_fs_event(const char *spec, struct gd_vfs_event *ev, char *buf, size_t cap, char *why,
                 size_t wcap)
{
    memset(ev, 0, sizeof(*ev));
    snprintf(buf, cap, "%s", spec);
    char *save, *op = strtok_r(buf, " \t", &save), *path = strtok_r(NULL, " \t", &save);
    if (!op || !path || path[0] != '/' || (!in(op, mutating_ops) && !in(op, other_ops))) {
        snprintf(why, wcap,
                 "an fs case is \"OP /PATH [PATH2] [r|w|rw|a|t]\" with OP one of open, create, "
                 "mkdir, unlink, rmdir, rename, link, symlink, setattr, ...: '%s'",
                 spec);
        return -EINVAL;
    }
    ev->op = op;
    ev->path = path;
    if (in(op, two_paths) && !(ev->path2 = strtok_r(NULL, " \t", &save))) {
        snprintf(why, wcap, "%s needs a second path: '%s'", op, spec);
        return -EINVAL;
    }
    const char *mode = strtok_r(NULL, " \t", &save);
    int r = 0, w = 0;
    for (const char *m = mode; m && *m; m++) {
        if (*m == 'r')
            r = 1;
        else if (*m == 'w')
            w = 1;
        else if (*m == 'a')
            w = 1, ev->flags |= O_APPEND;
        else if (*m == 't')
            w = 1, ev->flags |= O_TRUNC;
        else {
            snprintf(why, wcap, "mode letters are r, w, a, t: '%s'", spec);
            return -EINVAL;
        }
    }
    if (!strcmp(op, "create"))
        w = 1, ev->flags |= O_CREAT, ev->mode = 0644;
    ev->flags |= w ? (r ? O_RDWR : O_WRONLY) : O_RDONLY;
    ev->mutating = in(op, mutating_ops) || (!strcmp(op, "open") && w);
    if (strtok_r(NULL, " \t", &save)) {
        snprintf(why, wcap, "too many words: '%s'", spec);
        return -EINVAL;
    }
    return 0;
}

/* The mount a guest path is under (longest prefix on a '/' boundary), or "/". */
static const char *mount_of(gd_engine *e, const char *path)
{
    size_t n, best = 0;
    const struct gd_mount *m = gd_engine_mounts(e, &n);
    const char *found = "/";
    for (size_t i = 0; i < n; i++) {
        size_t l = strlen(m[i].guest);
        if (!strncmp(path, m[i].guest, l) && (path[l] == '/' || !path[l]) && l > best) {
            best = l;
            found = m[i].guest;
        }
    }
    return found;
}

int cli_fs_decide(gd_engine *e, struct gd_vfs_event *ev, char *rule, size_t rcap, char *reason,
                  size_t cap)
{
    ev->mount = mount_of(e, ev->path);
    return gd_engine_fs_try(e, ev, ev->mount, rule, rcap, reason, cap);
}

static const char *kind_name(enum gd_mount_kind k)
{
    static const char *const n[] = {"hostfs", "overlay", "memory", "lua provider", "provider"};
    return (unsigned)k < sizeof(n) / sizeof(n[0]) ? n[k] : "?";
}

void cli_fs_print_check(gd_engine *e)
{
    size_t n;
    const struct gd_mount *m = gd_engine_mounts(e, &n);
    printf("  mounts:   %zu\n", n);
    for (size_t i = 0; i < n; i++) {
        printf("            %s  %s", m[i].guest, kind_name(m[i].kind));
        if (m[i].host)
            printf(" %s", m[i].host);
        if (m[i].provider)
            printf(" '%s' %s", m[i].provider, m[i].config);
        if (m[i].readonly)
            printf(" (read-only)");
        if (m[i].size)
            printf(" (size %llu)", (unsigned long long)m[i].size);
        for (const char *const *h = m[i].hide; h && *h; h++)
            printf("%s%s", h == m[i].hide ? " hide " : ", ", *h);
        printf("\n");
    }
    const char *b = gd_engine_fs_hook_site(e, 0), *a = gd_engine_fs_hook_site(e, 1);
    char hooks[700] = "";
    if (b)
        snprintf(hooks, sizeof(hooks), "on_fs (%s)", b);
    if (a)
        snprintf(hooks + strlen(hooks), sizeof(hooks) - strlen(hooks), "%son_fs_done (%s)",
                 b ? ", " : "", a);
    printf("  fs hooks: %s\n", hooks[0] ? hooks : "none");
}
