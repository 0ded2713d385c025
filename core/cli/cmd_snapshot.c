/* cmd_snapshot.c - `gondolin snapshot ID [--memory [--stop]] [--name N] [--output PATH]`:
 * a disk checkpoint or a memory snapshot of a session (docs/snapshots.md), taken by its
 * supervisor over the control socket. */
#define _GNU_SOURCE
#include "cli.h"

#include "snap/snap.h"

#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char usage[] =
    "usage: gondolin snapshot ID|NAME [--memory [--stop]] [--name N] [--output PATH]\n\n"
    "Syncs the session's filesystems, stops it and keeps its disk as a checkpoint: in the\n"
    "image store as N (default: SESSION-DATE-TIME), or at PATH. The session must run with\n"
    "--rootfs-mode cow.\n"
    "  --memory   a memory snapshot instead: RAM and device state (running processes,\n"
    "             open files, the root's writes in guest memory), saved while the guest\n"
    "             is paused; the session runs on (the session must have no mounts)\n"
    "  --stop     with --memory: stop the session once it is saved\n"
    "Resume with `gondolin start --resume N` or `exec --resume N`; `gondolin fork` makes\n"
    "several sessions from one; `gondolin image ls` lists them (docs/snapshots.md).\n";

int cmd_snapshot(int argc, char **argv)
{
    const char *key = NULL, *name = NULL, *output = NULL;
    int memory = 0, stop = 0;
    for (int i = 1; i < argc; i++) {
        int k;
        if (!strcmp(argv[i], "--memory"))
            memory = 1;
        else if (!strcmp(argv[i], "--stop"))
            stop = 1;
        else if (!strcmp(argv[i], "--name") && i + 1 < argc)
            name = argv[++i];
        else if (!strncmp(argv[i], "--name=", 7))
            name = argv[i] + 7;
        else if ((!strcmp(argv[i], "--output") || !strcmp(argv[i], "-o")) && i + 1 < argc)
            output = argv[++i];
        else if (!strncmp(argv[i], "--output=", 9))
            output = argv[i] + 9;
        else if ((k = cli_session_arg(argv[i], &key, usage)) >= 0)
            return k;
    }
    if (stop && !memory)
        return cli_die(2, "snapshot: --stop goes with --memory (a disk checkpoint always "
                          "stops the session)");
    if (name && !gd_snap_name_ok(name))
        return cli_die(2,
                       "snapshot: '%s' is not a checkpoint name (1 to 63 of A-Z a-z 0-9 _ . -, "
                       "starting with a letter or a digit)",
                       name);
    char abs[PATH_MAX + 300];
    if (output) { /* absolute: the supervisor has its own working directory */
        char d[PATH_MAX], b[PATH_MAX];
        snprintf(d, sizeof(d), "%s", output);
        snprintf(b, sizeof(b), "%s", output);
        char *dir = realpath(dirname(d), NULL);
        const char *base = basename(b);
        if (!dir)
            return cli_die(1, "snapshot: %s: %s", output, strerror(errno));
        int n = snprintf(abs, sizeof(abs), "%s/%s", strcmp(dir, "/") ? dir : "", base);
        free(dir);
        if (n < 0 || (size_t)n >= sizeof(abs) || !strcmp(base, ".") || !strcmp(base, ".."))
            return cli_die(2, "snapshot: --output wants a file name, not '%s'", output);
        if (access(abs, F_OK) == 0)
            return cli_die(1, "snapshot: %s exists already", abs);
    }
    struct gd_session s;
    gd_control_client *c;
    int rc = cli_session_open(key, &s, &c);
    if (rc)
        return rc;
    cJSON *p = cJSON_CreateObject(), *reply = NULL;
    if (name)
        cJSON_AddStringToObject(p, "name", name);
    if (output)
        cJSON_AddStringToObject(p, "output", abs);
    if (memory)
        cJSON_AddBoolToObject(p, "memory", 1);
    if (stop)
        cJSON_AddBoolToObject(p, "stop", 1);
    struct gd_err err = {{0}};
    rc = gd_control_client_request(c, "snapshot", p, &reply, &err);
    gd_control_client_close(c);
    if (rc)
        return cli_die(1, "session %s: %s", s.id, err.msg);
    const cJSON *ok = cJSON_GetObjectItemCaseSensitive(reply, "ok");
    const char *path = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(reply, "path"));
    if (!cJSON_IsTrue(ok) || !path) {
        const char *e = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(reply, "error"));
        rc = cli_die(1, "snapshot of session %s: %s", s.name[0] ? s.name : s.id, e ? e : "failed");
        cJSON_Delete(reply);
        return rc;
    }
    const cJSON *size = cJSON_GetObjectItemCaseSensitive(reply, "size");
    const char *nm = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(reply, "name"));
    int stopped = !cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(reply, "stopped"));
    printf("%s\n", nm && !output ? nm : path);
    fprintf(stderr, "gondolin: %s %s (%.1f MB); the session %s\n",
            memory ? "memory snapshot" : "checkpoint", path,
            cJSON_IsNumber(size) ? size->valuedouble / 1e6 : 0.0,
            stopped ? "has stopped" : "runs on");
    cJSON_Delete(reply);
    for (int i = 0; stopped && i < 600 && gd_session_alive(&s); i++) { /* the supervisor's exit */
        struct timespec ts = {0, 50 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    return 0;
}
