/* cmd_fork.c - `gondolin fork ID -n N [start flags]`: N new sessions from one memory
 * snapshot of a running session (docs/snapshots.md). The session runs on; the snapshot
 * is a hidden file in the store that goes once the forks have loaded it. */
#define _GNU_SOURCE
#include "cli.h"

#include "base/fs.h"
#include "snap/snap.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_FORKS 16

static const char usage[] =
    "usage: gondolin fork ID|NAME [-n N] [--name PREFIX] [--json] [start flags]\n\n"
    "Takes a memory snapshot of a running session (it runs on) and starts N (default 1,\n"
    "at most 16) new sessions from it: each has the session's processes, files and\n"
    "memory as they were, its own fresh entropy and clock, and diverges on its own.\n"
    "Prints the new ids (--name PREFIX: named PREFIX-1 .. PREFIX-N). Without --policy or\n"
    "egress flags the forks run the session's policy file; other flags of `gondolin\n"
    "start` apply to each fork. The session must have no mounts (docs/snapshots.md).\n";

/* A memory snapshot of the session into a hidden store file named for this process
 * (gc removes it if this process dies before it is gone). */
static int snapshot(const char *key, struct gd_session *s, char *path, size_t cap)
{
    char dir[1100];
    gd_snap_store_dir(dir, sizeof(dir));
    int rc = gd_mkdir_p(dir, 0755);
    if (rc)
        return cli_die(1, "fork: cannot create %s: %s", dir, strerror(-rc));
    gd_control_client *c;
    if ((rc = cli_session_open(key, s, &c)))
        return rc;
    snprintf(path, cap, "%s/.tmp-%ld-fork-%.8s%s", dir, (long)getpid(), s->id, GD_SNAP_EXT);
    cJSON *p = cJSON_CreateObject(), *reply = NULL;
    cJSON_AddStringToObject(p, "output", path);
    cJSON_AddBoolToObject(p, "memory", 1);
    struct gd_err err = {{0}};
    rc = gd_control_client_request(c, "snapshot", p, &reply, &err);
    gd_control_client_close(c);
    if (rc)
        return cli_die(1, "fork: session %s: %s", s->id, err.msg);
    if (!cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(reply, "ok"))) {
        const char *e = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(reply, "error"));
        rc = cli_die(1, "fork: snapshot of session %s: %s", s->name[0] ? s->name : s->id,
                     e ? e : "failed");
    }
    cJSON_Delete(reply);
    return rc;
}

int cmd_fork(int argc, char **argv)
{
    static struct cli_start st; /* (static: reachable until exit on every path) */
    const char *key = NULL;
    long n = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(usage, stdout);
            return 0;
        }
        if ((!strcmp(a, "-n") || !strcmp(a, "--count")) && i + 1 < argc) {
            char *end;
            n = strtol(argv[++i], &end, 10);
            if (*end || n < 1 || n > MAX_FORKS)
                return cli_die(2, "fork: -n wants a number from 1 to %d, not '%s'", MAX_FORKS,
                               argv[i]);
            continue;
        }
        if (!strcmp(a, "--resume") || !strncmp(a, "--resume=", 9))
            return cli_die(2, "fork: --resume does not apply (the fork resumes the session)");
        int k = cli_start_flag(&st, argc, argv, &i);
        if (k < 0)
            return 2;
        if (k)
            continue;
        if (a[0] == '-')
            return cli_die(2, "fork: unknown or incomplete flag '%s' (see gondolin fork --help)",
                           a);
        if (key)
            return cli_die(2, "fork: one session at a time ('%s' and '%s')", key, a);
        key = a;
    }
    if (!key) {
        fputs(usage, stderr);
        return 2;
    }
    if (st.name && strlen(st.name) > 55)
        return cli_die(2, "fork: --name PREFIX is at most 55 characters");
    int rc = cli_start_check(&st);
    if (rc)
        return rc;
    struct gd_session s;
    char path[1400];
    if ((rc = snapshot(key, &s, path, sizeof(path))))
        return rc;
    const struct cli_policy *pol = &st.pol;
    if (!st.no_network && !pol->policy && !pol->egress.nallow && !pol->egress.nsecrets &&
        !pol->egress.nmaps && s.policy[0])
        st.pol.policy = s.policy; /* the session's own policy file */
    snprintf(st.vf.resume, sizeof(st.vf.resume), "%s", path);
    st.pol.keep_extracted = 2; /* a bundle's files serve every fork: none removes them */
    char ids[MAX_FORKS][37];
    long made = 0;
    for (; made < n; made++) {
        char name[64];
        if (st.name)
            snprintf(name, sizeof(name), "%s-%ld", st.name, made + 1);
        if ((rc = cli_start_spawn(&st, st.name ? name : NULL, ids[made])))
            break;
    }
    unlink(path); /* every fork has loaded it (a memory root needs nothing more) */
    if (st.json)
        printf("[");
    for (long i = 0; i < made; i++) {
        if (st.json)
            printf("%s", i ? "," : "");
        fflush(stdout);
        cli_start_print(ids[i], st.json);
        if (st.json)
            fflush(stdout);
    }
    if (st.json)
        printf("]\n");
    if (rc)
        fprintf(stderr, "gondolin: fork: %ld of %ld sessions started\n", made, n);
    return rc;
}
