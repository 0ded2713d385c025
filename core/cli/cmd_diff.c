/* cmd_diff.c - `gondolin diff ID:/GUEST [--export FILE.tar] [--whiteouts] [--json]`: what
 * the guest changed in an overlay mount, asked of the session's supervisor (fs.diff). */
#define _GNU_SOURCE
#include "cli.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char usage[] =
    "usage: gondolin diff ID|NAME:/GUEST [--export FILE.tar [--whiteouts]] [--json]\n\n"
    "Lists what the guest changed in an overlay mount (--mount-overlay) at or below GUEST,\n"
    "one line per path, sorted: 'A path' added, 'M path' modified (content, type, mode,\n"
    "owner or mtime), 'D path' deleted (a deleted directory is one line). The host\n"
    "directory itself is never changed. --export writes a tar of the added and modified\n"
    "files (paths relative to the mount); --whiteouts adds the deleted ones as OCI\n"
    "whiteouts (.wh.NAME). --json prints {\"mount\", \"changes\": [{\"kind\", \"path\"}],\n"
    "\"count\", \"truncated\"}.\n";

int cmd_diff(int argc, char **argv)
{
    const char *target = NULL, *export = NULL;
    int json = 0, whiteouts = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--json"))
            json = 1;
        else if (!strcmp(a, "--whiteouts"))
            whiteouts = 1;
        else if (!strcmp(a, "--export") && i + 1 < argc)
            export = argv[++i];
        else if (!strncmp(a, "--export=", 9))
            export = a + 9;
        else if (!strcmp(a, "-h") || !strcmp(a, "--help"))
            return fputs(usage, stdout), 0;
        else if (a[0] != '-' && !target)
            target = a;
        else
            return cli_die(2, "diff: unexpected argument '%s' (gondolin diff --help)", a);
    }
    const char *colon = target ? strchr(target, ':') : NULL;
    if (!colon || colon == target || colon[1] != '/')
        return cli_die(2, "diff: give ID:/GUEST_PATH (gondolin diff --help)");
    if (whiteouts && !export)
        return cli_die(2, "diff: --whiteouts goes with --export");
    char key[256], abs[PATH_MAX];
    snprintf(key, sizeof(key), "%.*s", (int)(colon - target), target);
    if (export) {
        char cwd[PATH_MAX];
        if (export[0] == '/')
            snprintf(abs, sizeof(abs), "%s", export);
        else if (getcwd(cwd, sizeof(cwd)))
            snprintf(abs, sizeof(abs), "%s/%s", cwd, export);
        else
            return cli_die(1, "diff: getcwd: %s", strerror(errno));
    }
    cJSON *p = cJSON_CreateObject(), *reply = NULL;
    cJSON_AddStringToObject(p, "path", colon + 1);
    if (export) {
        cJSON_AddStringToObject(p, "export", abs);
        cJSON_AddBoolToObject(p, "whiteouts", whiteouts);
    }
    int rc = cli_session_request(key, "fs.diff", p, NULL, &reply);
    if (rc)
        return rc;
    if (cli_reply_error(reply)) {
        rc = cli_die(1, "diff: %s", cli_reply_error(reply));
        cJSON_Delete(reply);
        return rc;
    }
    if (json) {
        cJSON_DeleteItemFromObjectCaseSensitive(reply, "ok");
        char *t = cJSON_PrintUnformatted(reply);
        if (t)
            puts(t);
        free(t);
    } else {
        const cJSON *e;
        cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(reply, "changes"))
        {
            const cJSON *k = cJSON_GetObjectItemCaseSensitive(e, "kind"),
                        *pa = cJSON_GetObjectItemCaseSensitive(e, "path");
            if (cJSON_IsString(k) && cJSON_IsString(pa))
                printf("%s %s\n", k->valuestring, pa->valuestring);
        }
    }
    if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(reply, "truncated")))
        fprintf(stderr, "gondolin: diff: the list was cut short; --export has every change\n");
    cJSON_Delete(reply);
    return 0;
}
