/* mount_flags.c - the file flags of exec/bash/start: --mount-hostfs
 * HOST:GUEST[:ro][:cache=always], --mount-overlay HOST:GUEST[:cache=always],
 * --mount-memfs GUEST[:SIZE] and --hide GLOB (applies to every host-backed mount given on
 * the command line). */
#define _GNU_SOURCE
#include "cli.h"

#include "base/text.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int add_mount(struct cli_sandbox_flags *f, enum gd_mount_kind kind, const char *flag,
                     const char *v)
{
    if (f->nmounts >= GD_VFS_MAX_MOUNTS) {
        cli_die(2, "%s: at most %d mounts", flag, GD_VFS_MAX_MOUNTS);
        return -1;
    }
    struct cli_mount *cm = &f->mounts[f->nmounts];
    memset(cm, 0, sizeof(*cm));
    struct gd_err err = {{0}};
    if (gd_mount_parse(kind, v, &cm->m, cm->buf, sizeof(cm->buf), &err)) {
        cli_die(2, "%s: %s", flag, err.msg);
        return -1;
    }
    /* the supervisor of a session may run elsewhere: keep the host side absolute */
    if (cm->m.host) {
        char *abs = realpath(cm->m.host, NULL);
        if (!abs) {
            cli_die(2, "%s: %s: cannot resolve the host directory", flag, cm->m.host);
            return -1;
        }
        snprintf(cm->host, sizeof(cm->host), "%s", abs);
        free(abs);
        cm->m.host = cm->host;
    }
    for (size_t i = 0; i < f->nmounts; i++)
        if (!strcmp(f->mounts[i].m.guest, cm->m.guest)) {
            cli_die(2, "%s: %s is mounted twice", flag, cm->m.guest);
            return -1;
        }
    f->nmounts++;
    return 1;
}

int cli_mount_flag(struct cli_sandbox_flags *f, int argc, char **argv, int *i)
{
    static const struct {
        const char *flag;
        enum gd_mount_kind kind;
    } kinds[] = {{"--mount-hostfs", GD_MOUNT_HOSTFS},
                 {"--mount-overlay", GD_MOUNT_OVERLAY},
                 {"--mount-memfs", GD_MOUNT_MEMORY}};
    const char *a = argv[*i], *v;
    for (size_t k = 0; k < sizeof(kinds) / sizeof(kinds[0]); k++)
        if ((v = gd_flag_value(argc, argv, i, kinds[k].flag)))
            return add_mount(f, kinds[k].kind, kinds[k].flag, v);
    if ((v = gd_flag_value(argc, argv, i, "--hide"))) {
        if (f->nhide + 1 >= sizeof(f->hide) / sizeof(f->hide[0])) {
            cli_die(2, "--hide: at most %zu patterns", sizeof(f->hide) / sizeof(f->hide[0]) - 1);
            return -1;
        }
        if (!*v || strlen(v) > 255) {
            cli_die(2, "--hide wants a glob such as '.env' or '**/*.pem'");
            return -1;
        }
        f->hide[f->nhide++] = v;
        f->hide[f->nhide] = NULL;
        return 1;
    }
    for (size_t k = 0; k < sizeof(kinds) / sizeof(kinds[0]); k++)
        if (!strcmp(a, kinds[k].flag)) {
            cli_die(2, "%s needs a value", a);
            return -1;
        }
    if (!strcmp(a, "--hide")) {
        cli_die(2, "--hide needs a value");
        return -1;
    }
    return 0;
}

void cli_mount_opts(struct cli_sandbox_flags *f, struct gd_sandbox_opts *o)
{
    for (size_t i = 0; i < f->nmounts; i++) {
        f->mspec[i] = f->mounts[i].m;
        if (f->nhide && f->mspec[i].kind != GD_MOUNT_MEMORY)
            f->mspec[i].hide = f->hide;
    }
    o->mounts = f->mspec;
    o->nmounts = f->nmounts;
}
