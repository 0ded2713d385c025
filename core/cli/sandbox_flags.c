/* sandbox_flags.c - the ingress and SSH flags of exec/bash/start: --listen,
 * --listen-raw, --ssh, --ssh-user, --ssh-listen; and what a started sandbox prints
 * about them. */
#define _GNU_SOURCE
#include "cli.h"

#include "base/text.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int cli_sandbox_flag(struct cli_sandbox_flags *f, int argc, char **argv, int *i)
{
    const char *a = argv[*i], *v;
    int k = cli_mount_flag(f, argc, argv, i);
    if (k)
        return k;
    if (!strcmp(a, "--ssh")) {
        f->ssh = 1;
        return 1;
    }
    if ((v = gd_flag_value(argc, argv, i, "--ssh-user"))) {
        f->ssh = 1;
        f->ssh_user = v;
        return 1;
    }
    if ((v = gd_flag_value(argc, argv, i, "--ssh-listen"))) {
        struct gd_forward_spec s;
        struct gd_err err = {{0}};
        char spec[100];
        snprintf(spec, sizeof(spec), "%s=22", v);
        if (gd_forward_parse(spec, &s, &err)) {
            cli_die(2, "--ssh-listen wants [HOST:]PORT, not '%s'", v);
            return -1;
        }
        f->ssh = 1;
        snprintf(f->ssh_host, sizeof(f->ssh_host), "%s", s.host);
        f->ssh_port = s.port;
        return 1;
    }
    int raw = 0;
    if (!(v = gd_flag_value(argc, argv, i, "--listen")) &&
        !(raw = 1, v = gd_flag_value(argc, argv, i, "--listen-raw"))) {
        if (!strcmp(a, "--listen") || !strcmp(a, "--listen-raw") || !strcmp(a, "--ssh-user") ||
            !strcmp(a, "--ssh-listen")) {
            cli_die(2, "%s needs a value", a);
            return -1;
        }
        return 0;
    }
    struct gd_sandbox_listen *q = realloc(f->listen, (f->nlisten + 1) * sizeof(*q));
    if (!q) {
        cli_die(2, "out of memory");
        return -1;
    }
    f->listen = q;
    struct gd_err err = {{0}};
    memset(&q[f->nlisten], 0, sizeof(q[0]));
    if (gd_forward_parse(v, &q[f->nlisten].spec, &err)) {
        cli_die(2, "%s: %s", raw ? "--listen-raw" : "--listen", err.msg);
        return -1;
    }
    q[f->nlisten++].raw = raw;
    return 1;
}

void cli_sandbox_opts(struct cli_sandbox_flags *f, struct gd_sandbox_opts *o)
{
    o->listen = f->listen;
    o->nlisten = f->nlisten;
    cli_mount_opts(f, o);
}

void cli_print_forwards(gd_sandbox *sb)
{
    struct gd_sandbox_forward fw[64];
    size_t n = gd_sandbox_forwards(sb, fw, 64);
    while (n--) { /* in the order they were given */
        char hp[300];
        gd_hostport(hp, sizeof(hp), fw[n].host, fw[n].port);
        fprintf(stderr, "gondolin: ingress %s://%s -> guest port %u\n", fw[n].raw ? "tcp" : "http",
                hp, fw[n].guest_port);
    }
}

void cli_sandbox_flags_free(struct cli_sandbox_flags *f)
{
    free(f->listen);
    memset(f, 0, sizeof(*f));
}

int cli_private_dir(const char *what, char *out, size_t cap)
{
    char base[450];
    if (gd_session_dir(base, sizeof(base)))
        return -1;
    snprintf(out, cap, "%s/.%s-XXXXXX", base, what);
    return mkdtemp(out) ? 0 : -1;
}
