/*
 * secret-exec - a first-party gondolin plugin: secrets from a command's output, for
 * password managers and cloud credential helpers.
 *
 *   plugins = { ["secret-exec"] = true },
 *   secrets = { GITHUB_TOKEN = { hosts = { "api.github.com" }, from = "exec:gh auth token" } }
 *
 * The command runs once per policy load with /bin/sh -c, stdin from /dev/null, stderr
 * passed through; it must exit 0 and print the value (trailing newlines are removed;
 * at most 64 KiB). The command comes from the policy, never from the guest.
 */
#define _GNU_SOURCE
#include <gondolin/plugin.h>

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>

static int exec_source(void *ud, const char *arg, char *out, size_t cap, char *err, size_t errcap)
{
    (void)ud;
    if (!arg || !*arg) {
        snprintf(err, errcap, "exec: wants a command (from = \"exec:COMMAND\")");
        return -1;
    }
    char cmd[8192];
    snprintf(cmd, sizeof(cmd), "exec </dev/null; %s", arg);
    FILE *p = popen(cmd, "re");
    if (!p) {
        snprintf(err, errcap, "exec: cannot start the command: %s", strerror(errno));
        return -1;
    }
    size_t n = fread(out, 1, cap - 1, p);
    char extra;
    int more = fread(&extra, 1, 1, p) == 1;
    while (more && fread(&extra, 1, 1, p) == 1)
        ; /* drain so the command is not killed by SIGPIPE mid-way */
    int st = pclose(p);
    if (more) {
        snprintf(err, errcap, "exec: output longer than %zu bytes", cap - 1);
        return -1;
    }
    if (st == -1 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        snprintf(err, errcap, "exec: command failed (%s %d)",
                 st != -1 && WIFEXITED(st) ? "exit status" : "signal",
                 st != -1 && WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
        return -1;
    }
    while (n && (out[n - 1] == '\n' || out[n - 1] == '\r'))
        n--;
    out[n] = 0;
    if (!n) {
        snprintf(err, errcap, "exec: the command printed nothing");
        return -1;
    }
    return (int)n;
}

static int init(const struct gd_host_api *api, gd_plugin_host *host, const char *config,
                void **state, char *err, size_t errcap)
{
    (void)config;
    *state = NULL;
    if (api->register_secret_source(host, "exec", exec_source, NULL)) {
        snprintf(err, errcap, "cannot register the exec source");
        return -1;
    }
    return 0;
}

GD_PLUGIN_EXPORT const struct gd_plugin_desc *gondolin_plugin_entry(void)
{
    static const struct gd_plugin_desc d = {GONDOLIN_PLUGIN_ABI_VERSION,
                                            sizeof(struct gd_plugin_desc),
                                            "secret-exec",
                                            "1.0",
                                            init,
                                            NULL};
    return &d;
}
