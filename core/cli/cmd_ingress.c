/* cmd_ingress.c - `gondolin expose ID` and `gondolin ssh ID`: ingress into a running
 * session, asked of its supervisor over the control socket. */
#define _GNU_SOURCE
#include "base/text.h"
#include "cli.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *str(const cJSON *o, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

int cmd_expose(int argc, char **argv)
{
    static const char usage[] =
        "usage: gondolin expose ID|NAME [--raw] [HOST:]PORT=GUESTPORT\n\n"
        "Opens a host listener (127.0.0.1 unless HOST is given; PORT 0 picks one) that\n"
        "forwards to GUESTPORT on the guest's loopback through the agent. HTTP-aware by\n"
        "default (the policy's on_ingress_* hooks and the audit see it; WebSockets are\n"
        "tunneled); --raw forwards plain TCP. Prints the address.\n";
    const char *key = NULL, *spec = NULL;
    int raw = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--raw"))
            raw = 1;
        else if (!strcmp(a, "-h") || !strcmp(a, "--help"))
            return fputs(usage, stdout), 0;
        else if (a[0] != '-' && !key)
            key = a;
        else if (a[0] != '-' && !spec)
            spec = a;
        else
            return cli_die(2, "expose: unexpected argument '%s' (gondolin expose --help)", a);
    }
    if (!spec)
        return cli_die(2, "expose: give the session and [HOST:]PORT=GUESTPORT");
    struct gd_forward_spec fs;
    struct gd_err err = {{0}};
    if (gd_forward_parse(spec, &fs, &err))
        return cli_die(2, "expose: %s", err.msg);
    char listen[100];
    gd_hostport(listen, sizeof(listen), fs.host, fs.port);
    cJSON *p = cJSON_CreateObject(), *reply = NULL;
    cJSON_AddStringToObject(p, "listen", listen);
    cJSON_AddNumberToObject(p, "guest_port", fs.guest_port);
    cJSON_AddBoolToObject(p, "raw", raw);
    int rc = cli_session_request(key, "expose", p, NULL, &reply);
    if (rc)
        return rc;
    if (cli_reply_error(reply)) {
        rc = cli_die(1, "expose: %s", cli_reply_error(reply));
        cJSON_Delete(reply);
        return rc;
    }
    const cJSON *l = cJSON_GetObjectItemCaseSensitive(reply, "listen");
    printf("%s://%s\n", raw ? "tcp" : "http", cJSON_IsString(l) ? l->valuestring : "?");
    cJSON_Delete(reply);
    return 0;
}

int cli_session_ssh(const char *key, const char *user, const char *listen, cJSON **out)
{
    *out = NULL;
    cJSON *p = cJSON_CreateObject();
    if (user)
        cJSON_AddStringToObject(p, "user", user);
    if (listen && *listen)
        cJSON_AddStringToObject(p, "listen", listen);
    int rc = cli_session_request(key, "ssh", p, NULL, out);
    if (rc)
        return rc;
    const char *why = cli_reply_error(*out);
    if (!why && (!str(*out, "identity") || !str(*out, "known_hosts") || !str(*out, "host")))
        why = "the supervisor's answer lacks the keys";
    if (why) {
        rc = cli_die(1, "ssh: %s", why);
        cJSON_Delete(*out);
        *out = NULL;
        return rc;
    }
    return 0;
}

int cmd_ssh(int argc, char **argv)
{
    static const char usage[] =
        "usage: gondolin ssh ID|NAME [--user USER] [--print] [-- CMD...]\n\n"
        "Logs into the sandbox with OpenSSH: sshd runs on the guest's loopback (the image\n"
        "must have it, e.g. examples/images/ssh.json) with an ephemeral key pair and its\n"
        "host key pinned; a host loopback port reaches it through the agent. --print\n"
        "prints the ssh command instead of running it.\n";
    const char *key = NULL, *user = NULL;
    int print = 0, i;
    for (i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--")) {
            i++;
            break;
        }
        if (!strcmp(a, "--print"))
            print = 1;
        else if (!strcmp(a, "--user") && i + 1 < argc)
            user = argv[++i];
        else if (!strcmp(a, "-h") || !strcmp(a, "--help"))
            return fputs(usage, stdout), 0;
        else if (a[0] != '-' && !key)
            key = a;
        else
            return cli_die(2, "ssh: unexpected argument '%s' (gondolin ssh --help)", a);
    }
    cJSON *r;
    int rc = cli_session_ssh(key, user, NULL, &r);
    if (rc)
        return rc;
    if (print) {
        printf("%s\n", str(r, "command") ? str(r, "command") : "");
        cJSON_Delete(r);
        return 0;
    }
    char port[16], known[1200], dest[200];
    const cJSON *pv = cJSON_GetObjectItemCaseSensitive(r, "port");
    snprintf(port, sizeof(port), "%d", cJSON_IsNumber(pv) ? pv->valueint : 22);
    snprintf(known, sizeof(known), "UserKnownHostsFile=%s", str(r, "known_hosts"));
    snprintf(dest, sizeof(dest), "%s@%s", str(r, "user") ? str(r, "user") : "root", str(r, "host"));
    const char *fixed[] = {"ssh",
                           "-i",
                           str(r, "identity"),
                           "-p",
                           port,
                           "-o",
                           "IdentitiesOnly=yes",
                           "-o",
                           known,
                           "-o",
                           "StrictHostKeyChecking=yes",
                           "-o",
                           "ForwardAgent=no",
                           "-o",
                           "ForwardX11=no",
                           "-o",
                           "GSSAPIDelegateCredentials=no",
                           "-o",
                           "ClearAllForwardings=yes",
                           "--", /* the destination is no option, whatever the reply says */
                           dest};
    size_t nf = sizeof(fixed) / sizeof(fixed[0]);
    char **av = calloc(nf + (size_t)(argc - i) + 2, sizeof(char *));
    if (!av)
        return cli_die(1, "out of memory");
    for (size_t k = 0; k < nf; k++)
        av[k] = (char *)fixed[k];
    for (; i < argc; i++)
        av[nf++] = argv[i];
    fflush(NULL);
    execvp("ssh", av);
    return cli_die(1, "ssh: cannot run ssh (apt install openssh-client)");
}
