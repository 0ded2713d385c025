/* policy_ssh.c - SSH in the policy authoring tools: `policy test` cases
 * {"request": "SSH [USER@]HOST[:PORT] COMMAND", "expect": {...}} run through the same
 * checks as a guest's exec (the rules' git parse, commands and repos, then on_ssh_exec),
 * with no VM and no upstream; and the ssh lines of `policy check`. */
#define _GNU_SOURCE
#include "cli.h"

#include <stdio.h>
#include <string.h>

void cli_ssh_print_check(gd_engine *e)
{
    const struct gd_ssh_conf *c = &gd_engine_egress(e)->ssh;
    const struct gd_lua_conf *lc = gd_engine_policy_conf(e);
    printf("  ssh:      %zu rule%s%s\n", c->nrules, c->nrules == 1 ? "" : "s",
           lc && lc->ssh_hook ? ", on_ssh_exec" : "");
    for (size_t i = 0; i < c->nrules; i++) {
        const struct gd_ssh_rule *r = &c->rules[i];
        printf("            %s:%u%s%s%s%s", r->host, r->port, r->user ? " user " : "",
               r->user ? r->user : "", r->key ? " key " : "", r->key ? r->key : "");
        printf("%s%s", r->agent ? " agent" : "", r->commands ? " commands" : "");
        for (unsigned b = 0; b < 3; b++)
            if (r->commands & (1u << b))
                printf(" %s", b == 0   ? "git-upload-pack"
                              : b == 1 ? "git-receive-pack"
                                       : "git-upload-archive");
        for (size_t k = 0; k < r->nrepos; k++)
            printf("%s%s", k ? "," : " repos ", r->repos[k]);
        printf("\n");
    }
}

int cli_ssh_case(gd_engine *e, const char *spec, const cJSON *exp, char *why, size_t cap, char *got,
                 size_t gcap)
{
    char user[65] = "git", hostport[300], host[300];
    const char *p = spec + 4, *sp = strchr(p, ' ');
    unsigned port;
    if (!sp || !sp[1] || (size_t)(sp - p) >= sizeof(hostport)) {
        snprintf(why, cap, "an SSH case is \"SSH [USER@]HOST[:PORT] COMMAND\"");
        return 0;
    }
    snprintf(hostport, sizeof(hostport), "%.*s", (int)(sp - p), p);
    char *at = strchr(hostport, '@');
    if (at) {
        *at = 0;
        snprintf(user, sizeof(user), "%s", hostport);
    }
    if (gd_ssh_hostport_parse(at ? at + 1 : hostport, host, sizeof(host), &port) || !user[0]) {
        snprintf(why, cap, "an SSH case is \"SSH [USER@]HOST[:PORT] COMMAND\"");
        return 0;
    }
    const char *cmd = sp + 1;
    struct gd_ssh_git g;
    const char *perr = NULL;
    int parsed = !gd_ssh_git_parse(cmd, strlen(cmd), &g, &perr);
    struct gd_ssh_exec x = {
        .host = host, .port = port, .user = user, .command = cmd, .git = parsed ? &g : NULL};
    char rule[300] = "", reason[1100] = "";
    const struct gd_ssh_conf *c = &gd_engine_egress(e)->ssh;
    int deny;
    if (!gd_ssh_conf_rule(c, host, port)) {
        snprintf(rule, sizeof(rule), "ssh-allow");
        snprintf(reason, sizeof(reason),
                 "no SSH rule names %s:%u (the guest's connection is reset)", host, port);
        deny = 1;
    } else {
        snprintf(reason, sizeof(reason), "command refused: %s", perr ? perr : "too long");
        deny = gd_ssh_conf_check(c, &x, rule, sizeof(rule), reason, sizeof(reason)) ||
               gd_engine_ssh_exec(e, &x, rule, sizeof(rule), reason, sizeof(reason));
    }
    snprintf(got, gcap, "%s%s%s%s", deny ? "deny" : "allow", deny ? " (" : "", deny ? rule : "",
             deny ? ")" : "");
    const cJSON *d = cJSON_IsObject(exp) ? cJSON_GetObjectItemCaseSensitive(exp, "decision") : NULL;
    const cJSON *r = cJSON_IsObject(exp) ? cJSON_GetObjectItemCaseSensitive(exp, "rule") : NULL;
    const cJSON *rc =
        cJSON_IsObject(exp) ? cJSON_GetObjectItemCaseSensitive(exp, "reason_contains") : NULL;
    if (!cJSON_IsString(d)) {
        snprintf(why, cap, "an SSH case needs \"expect\": {\"decision\": \"allow\"|\"deny\"}");
        return 0;
    }
    if (strcmp(d->valuestring, deny ? "deny" : "allow")) {
        snprintf(why, cap, "decision: want %s, got %s%s%s", d->valuestring, got, deny ? ": " : "",
                 deny ? reason : "");
        return 0;
    }
    if (cJSON_IsString(r) && (!deny || strcmp(r->valuestring, rule))) {
        snprintf(why, cap, "rule: want %s, got %s", r->valuestring, deny ? rule : "none");
        return 0;
    }
    if (cJSON_IsString(rc) && (!deny || !strstr(reason, rc->valuestring))) {
        snprintf(why, cap, "reason: want it to contain '%s', got '%s'", rc->valuestring,
                 deny ? reason : "");
        return 0;
    }
    return 1;
}
