/* cmd_policy.c - `gondolin policy check | test | explain | reload`: authoring tools that
 * run a policy without a VM, and the reload trigger for sessions. */
#define _GNU_SOURCE
#include "cli.h"

#include "base/fs.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

static void usage(void)
{
    printf("usage: gondolin policy check FILE.lua|FILE.gdb [--plugin PATH] [--plugin-dir DIR]\n"
           "       gondolin policy test FILE.lua [CASES.json]\n"
           "       gondolin policy explain FILE.lua METHOD URL [-H 'Name: value']...\n"
           "       gondolin policy explain FILE.lua fs OP /PATH [PATH2] [r|w|rw|a|t]\n"
           "       gondolin policy reload ID|NAME\n\n"
           "check    compile and validate the policy (and the plugins it names); print what\n"
           "         it declares; exit 1 with file:line on the first problem\n"
           "test     run request cases (default FILE.test.json) against the policy, no VM;\n"
           "         print a pass/fail table; exit 1 if any case fails\n"
           "explain  which rule or hook decides one request (or guest file operation), and why\n"
           "reload   make a session (gondolin start) reload its policy now (a one-shot\n"
           "         `exec --policy` reloads when its files change, or on SIGHUP)\n\n"
           "A signed bundle (FILE.gdb, docs/bundles.md) is verified first (--trust DIR,\n"
           "--threshold N); test then runs the bundle's own case files.\n"
           "Secret sources are not read by check/test/explain: every secret gets the value\n"
           "stub-NAME unless a test file's \"secrets\" gives one.\n");
}

/* Parses the flags after FILE that the engine understands; others are left to the
 * caller in rest (argv order kept). */
static int parse_common(struct cli_policy *p, int argc, char **argv, int first, char ***rest,
                        int *nrest)
{
    *rest = calloc((size_t)argc + 1, sizeof(char *));
    *nrest = 0;
    for (int i = first; i < argc; i++) {
        int k = cli_policy_flag(p, argc, argv, &i);
        if (k < 0)
            return -1;
        if (!k)
            (*rest)[(*nrest)++] = argv[i];
    }
    return 0;
}

static const char *phase_list(unsigned m)
{
    static char b[120];
    b[0] = 0;
    static const char *const n[5] = {"on_connect", "on_request", "on_request_body", "on_response",
                                     "on_response_body"};
    for (int i = 0; i < 5; i++)
        if (m & (1u << i))
            snprintf(b + strlen(b), sizeof(b) - strlen(b), "%s%s", b[0] ? ", " : "", n[i]);
    return b[0] ? b : "none";
}

static int cmd_check(int argc, char **argv)
{
    struct cli_policy p = {0};
    p.stub_secrets = 1;
    p.policy = argv[1];
    char **rest;
    int nrest;
    if (parse_common(&p, argc, argv, 2, &rest, &nrest))
        return 2;
    if (nrest) {
        cli_die(2, "policy check: unexpected argument '%s'", rest[0]);
        free(rest);
        return 2;
    }
    free(rest);
    gd_engine *e;
    int rc = cli_policy_engine(&p, 1, &e);
    if (rc) {
        cli_policy_free(&p);
        return 1;
    }
    const struct gd_lua_conf *c = gd_engine_policy_conf(e);
    struct gd_egress *eg = gd_engine_egress(e);
    printf("%s: ok (revision %s)\n", argv[1], gd_engine_revision(e));
    if (c && c->name)
        printf("  name:     %s\n", c->name);
    printf("  allow:    %zu rule%s\n", eg->nallow, eg->nallow == 1 ? "" : "s");
    for (size_t i = 0; i < eg->nallow; i++)
        printf("            %s\n", eg->allow[i].text);
    printf("  secrets:  %zu", eg->nsecrets);
    for (size_t i = 0; i < eg->nsecrets; i++)
        printf("%s%s", i ? ", " : " (", eg->secrets[i].name);
    printf("%s\n", eg->nsecrets ? ")" : "");
    printf("  dns:      %s\n", eg->dns == GD_DNS_TRUSTED ? "trusted"
                               : eg->dns == GD_DNS_OPEN  ? "open"
                                                         : "synthetic");
    printf("  hooks:    %s\n", phase_list(c ? c->hook_phases : 0));
    cli_fs_print_check(e);
    cli_ssh_print_check(e);
    if (c && (c->image || c->memory_mb || c->cpus)) {
        printf("  vm:       image %s", c->image ? c->image : "default");
        if (c->memory_mb)
            printf(", memory %u MiB", c->memory_mb);
        if (c->cpus)
            printf(", cpus %u", c->cpus);
        printf("\n");
    }
    gd_engine_free(e);
    cli_policy_free(&p);
    return 0;
}

/* "{{NAME}}" in a case's header values becomes NAME's placeholder. */
static char *expand(struct gd_egress *eg, const char *in)
{
    size_t cap = strlen(in) + 1;
    for (size_t i = 0; i < eg->nsecrets; i++)
        cap += 80 * 4;
    char *out = malloc(cap * 4);
    if (!out)
        return NULL;
    size_t o = 0;
    for (const char *c = in; *c;) {
        const char *end;
        if (c[0] == '{' && c[1] == '{' && (end = strstr(c + 2, "}}"))) {
            int hit = 0;
            for (size_t i = 0; i < eg->nsecrets; i++)
                if (strlen(eg->secrets[i].name) == (size_t)(end - c - 2) &&
                    !strncmp(eg->secrets[i].name, c + 2, (size_t)(end - c - 2))) {
                    size_t pl = strlen(eg->secrets[i].placeholder);
                    if (o + pl < cap * 4) {
                        memcpy(out + o, eg->secrets[i].placeholder, pl);
                        o += pl;
                    }
                    hit = 1;
                }
            if (hit) {
                c = end + 2;
                continue;
            }
        }
        if (o + 1 < cap * 4)
            out[o++] = *c;
        c++;
    }
    out[o] = 0;
    return out;
}

static char **header_list(struct gd_egress *eg, const cJSON *h)
{
    size_t n = (size_t)cJSON_GetArraySize(h);
    char **v = calloc(n + 1, sizeof(char *));
    size_t k = 0;
    for (const cJSON *x = h ? h->child : NULL; v && x; x = x->next) {
        if (!cJSON_IsString(x))
            continue;
        char *val = expand(eg, x->valuestring);
        if (val && asprintf(&v[k], "%s: %s", x->string, val) >= 0)
            k++;
        free(val);
    }
    return v;
}

static void free_strv(char **v)
{
    for (char **p = v; p && *p; p++)
        free(*p);
    free(v);
}

static const char *decision_name(enum gd_decision d)
{
    return d == GD_DENY ? "deny" : d == GD_RESPOND ? "respond" : "allow";
}

/* An fs case: {"fs": "open /workspace/a.lock w", "expect": "deny"} or "expect":
 * {"decision": "deny", "errno": "EACCES", "rule": ..., "reason_contains": ...}. */
static int run_fs_case(gd_engine *e, const char *spec, const cJSON *exp, char *why, size_t cap,
                       char *got, size_t gcap)
{
    struct gd_vfs_event ev;
    char buf[2048], rule[300], reason[300];
    if (cli_fs_event(spec, &ev, buf, sizeof(buf), why, cap))
        return 0;
    int rc = cli_fs_decide(e, &ev, rule, sizeof(rule), reason, sizeof(reason));
    const char *en = rc ? gd_lua_errno_name(rc) : NULL;
    snprintf(got, gcap, "%s", rc ? "deny" : "allow");
    if (rc)
        snprintf(got + strlen(got), gcap - strlen(got), " %s (%s)", en ? en : "?", rule);
    const cJSON *d = cJSON_IsString(exp) ? exp : cJSON_GetObjectItemCaseSensitive(exp, "decision");
    const cJSON *x;
    if (!cJSON_IsString(d) && !cJSON_IsObject(exp)) {
        snprintf(why, cap, "an fs case needs \"expect\": \"allow\"|\"deny\" or {...}");
        return 0;
    }
    if (cJSON_IsString(d) && strcmp(d->valuestring, rc ? "deny" : "allow")) {
        snprintf(why, cap, "decision: want %s, got %s", d->valuestring, got);
        return 0;
    }
    if (cJSON_IsObject(exp) && (x = cJSON_GetObjectItemCaseSensitive(exp, "errno")) &&
        cJSON_IsString(x) && (!en || strcmp(x->valuestring, en))) {
        snprintf(why, cap, "errno: want %s, got %s", x->valuestring, en ? en : "none");
        return 0;
    }
    if (cJSON_IsObject(exp) && (x = cJSON_GetObjectItemCaseSensitive(exp, "rule")) &&
        cJSON_IsString(x) && (!rc || strcmp(x->valuestring, rule))) {
        snprintf(why, cap, "rule: want %s, got %s", x->valuestring, rc ? rule : "none");
        return 0;
    }
    if (cJSON_IsObject(exp) && (x = cJSON_GetObjectItemCaseSensitive(exp, "reason_contains")) &&
        cJSON_IsString(x) && (!rc || !strstr(reason, x->valuestring))) {
        snprintf(why, cap, "reason: want it to contain '%s', got '%s'", x->valuestring,
                 rc ? reason : "");
        return 0;
    }
    return 1;
}

/* One case: returns 1 pass, 0 fail (why written). */
static int run_case(gd_engine *e, const cJSON *cs, char *why, size_t cap, char *got, size_t gcap)
{
    const cJSON *fs = cJSON_GetObjectItemCaseSensitive(cs, "fs");
    if (cJSON_IsString(fs))
        return run_fs_case(e, fs->valuestring, cJSON_GetObjectItemCaseSensitive(cs, "expect"), why,
                           cap, got, gcap);
    struct gd_egress *eg = gd_engine_egress(e);
    const cJSON *req = cJSON_GetObjectItemCaseSensitive(cs, "request");
    const cJSON *exp = cJSON_GetObjectItemCaseSensitive(cs, "expect");
    if (!cJSON_IsString(req) || !cJSON_IsObject(exp)) {
        snprintf(why, cap, "a case needs \"request\": \"METHOD URL\" and \"expect\": {...}");
        return 0;
    }
    if (!strncmp(req->valuestring, "SSH ", 4))
        return cli_ssh_case(e, req->valuestring, exp, why, cap, got, gcap);
    char method[32], url[2048];
    if (sscanf(req->valuestring, "%31s %2047s", method, url) != 2) {
        snprintf(why, cap, "request must be \"METHOD URL\"");
        return 0;
    }
    char **hdrs = header_list(eg, cJSON_GetObjectItemCaseSensitive(cs, "headers"));
    const cJSON *resp = cJSON_GetObjectItemCaseSensitive(cs, "response");
    const cJSON *rstat = resp ? cJSON_GetObjectItemCaseSensitive(resp, "status") : NULL;
    char **rh = header_list(eg, resp ? cJSON_GetObjectItemCaseSensitive(resp, "headers") : NULL);
    const cJSON *addr = cJSON_GetObjectItemCaseSensitive(cs, "addr");
    struct gd_engine_trial tr = {.method = method,
                                 .url = url,
                                 .headers = (const char *const *)hdrs,
                                 .addr = cJSON_IsString(addr) ? addr->valuestring : NULL,
                                 .response_status = cJSON_IsNumber(rstat) ? rstat->valueint : 0,
                                 .resp_headers = (const char *const *)rh};
    gd_txn *t;
    struct gd_err err = {{0}};
    int ok = 1;
    if (gd_engine_try(e, &tr, &t, &err)) {
        snprintf(why, cap, "%s", err.msg);
        free_strv(hdrs);
        free_strv(rh);
        return 0;
    }
    int status;
    const char *rule, *reason;
    enum gd_decision d = gd_txn_decision(t, &status, &rule, &reason);
    snprintf(got, gcap, "%s", decision_name(d));
    if (d != GD_CONTINUE)
        snprintf(got + strlen(got), gcap - strlen(got), " %d", status);
    if (rule)
        snprintf(got + strlen(got), gcap - strlen(got), " (%s)", rule);
    const cJSON *x;
    why[0] = 0;
    if ((x = cJSON_GetObjectItemCaseSensitive(exp, "decision")) && cJSON_IsString(x) &&
        strcmp(x->valuestring, decision_name(d))) {
        snprintf(why, cap, "decision: want %s, got %s", x->valuestring, got);
        ok = 0;
    }
    if (ok && (x = cJSON_GetObjectItemCaseSensitive(exp, "status")) && cJSON_IsNumber(x) &&
        x->valueint != status) {
        snprintf(why, cap, "status: want %d, got %d", x->valueint, status);
        ok = 0;
    }
    if (ok && (x = cJSON_GetObjectItemCaseSensitive(exp, "rule")) && cJSON_IsString(x) &&
        (!rule || strcmp(x->valuestring, rule))) {
        snprintf(why, cap, "rule: want %s, got %s", x->valuestring, rule ? rule : "none");
        ok = 0;
    }
    if (ok && (x = cJSON_GetObjectItemCaseSensitive(exp, "reason_contains")) && cJSON_IsString(x) &&
        (!reason || !strstr(reason, x->valuestring))) {
        snprintf(why, cap, "reason: want it to contain '%s', got '%s'", x->valuestring,
                 reason ? reason : "");
        ok = 0;
    }
    if (ok && (x = cJSON_GetObjectItemCaseSensitive(exp, "body_contains")) && cJSON_IsString(x)) {
        size_t n;
        const char *ct;
        const uint8_t *b = gd_txn_respond_body(t, &n, &ct);
        if (!memmem(b, n, x->valuestring, strlen(x->valuestring))) {
            snprintf(why, cap, "body: want it to contain '%s'", x->valuestring);
            ok = 0;
        }
    }
    static const char *const hk[2] = {"headers", "response_headers"};
    for (int which = 0; ok && which < 2; which++) {
        const cJSON *h = cJSON_GetObjectItemCaseSensitive(exp, hk[which]);
        for (const cJSON *y = h ? h->child : NULL; ok && y; y = y->next) {
            const char *have = gd_txn_header(t, which, y->string);
            if (cJSON_IsNull(y) ? have != NULL
                                : !cJSON_IsString(y) || !have || strcmp(have, y->valuestring)) {
                snprintf(why, cap, "%s %s: want %s, got %s", hk[which], y->string,
                         cJSON_IsString(y) ? y->valuestring : "absent", have ? have : "absent");
                ok = 0;
            }
        }
    }
    gd_txn_free_detached(t);
    free_strv(hdrs);
    free_strv(rh);
    return ok;
}

static int cmd_test(int argc, char **argv)
{
    struct cli_policy p = {0};
    p.stub_secrets = 1;
    p.policy = argv[1];
    char **rest;
    int nrest;
    if (parse_common(&p, argc, argv, 2, &rest, &nrest))
        return 2;
    char cases_path[4096];
    if (!nrest && cli_policy_is_bundle(&p)) { /* a bundle: its own test case files */
        free(rest);
        int rc = cli_policy_resolve(&p, 0) ? 1 : cli_bundle_run_tests(&p);
        cli_policy_free(&p);
        return rc;
    }
    if (nrest)
        snprintf(cases_path, sizeof(cases_path), "%s", rest[0]);
    else {
        snprintf(cases_path, sizeof(cases_path), "%s", p.policy);
        size_t l = strlen(cases_path);
        if (l > 4 && !strcmp(cases_path + l - 4, ".lua"))
            cases_path[l - 4] = 0;
        strncat(cases_path, ".test.json", sizeof(cases_path) - strlen(cases_path) - 1);
    }
    free(rest);
    int rc = cli_policy_test(&p, cases_path);
    cli_policy_free(&p);
    return rc;
}

int cli_policy_test(struct cli_policy *p, const char *cases_path)
{
    char *text;
    size_t tl;
    int rc = gd_read_file(cases_path, 8u << 20, &text, &tl);
    if (rc)
        return cli_die(2, "policy test: cannot read %s: %s", cases_path, strerror(-rc));
    cJSON *doc = cJSON_Parse(text);
    free(text);
    if (!doc)
        return cli_die(2, "policy test: %s is not valid JSON (near '%.20s')", cases_path,
                       cJSON_GetErrorPtr() ? cJSON_GetErrorPtr() : "");
    const cJSON *cases = cJSON_GetObjectItemCaseSensitive(doc, "cases");
    if (!cJSON_IsArray(cases)) {
        cJSON_Delete(doc);
        return cli_die(2, "policy test: %s needs a \"cases\" array", cases_path);
    }
    const cJSON *sec = cJSON_GetObjectItemCaseSensitive(doc, "secrets");
    const char **sv = calloc((size_t)cJSON_GetArraySize(sec) + 1, sizeof(char *));
    size_t nsv = 0;
    for (const cJSON *x = sec ? sec->child : NULL; x; x = x->next)
        if (cJSON_IsString(x) &&
            asprintf((char **)&sv[nsv], "%s=%s", x->string, x->valuestring) >= 0)
            nsv++;
    p->secret_values = sv;
    gd_engine *e;
    rc = cli_policy_engine(p, 1, &e);
    if (rc) {
        cJSON_Delete(doc);
        return 1;
    }
    int pass = 0, fail = 0, i = 0;
    printf("%-6s %-44s %s\n", "result", "case", "outcome");
    for (const cJSON *cs = cases->child; cs; cs = cs->next, i++) {
        char why[1400], got[400] = "", name[64];
        const cJSON *nm = cJSON_GetObjectItemCaseSensitive(cs, "name");
        const cJSON *rq = cJSON_GetObjectItemCaseSensitive(cs, "request");
        if (!cJSON_IsString(rq))
            rq = cJSON_GetObjectItemCaseSensitive(cs, "fs");
        snprintf(name, sizeof(name), "%s",
                 cJSON_IsString(nm)   ? nm->valuestring
                 : cJSON_IsString(rq) ? rq->valuestring
                                      : "?");
        int ok = run_case(e, cs, why, sizeof(why), got, sizeof(got));
        printf("%-6s %-44s %s\n", ok ? "PASS" : "FAIL", name, ok ? got : why);
        ok ? pass++ : fail++;
    }
    printf("%d passed, %d failed (%s, revision %s)\n", pass, fail, p->policy,
           gd_engine_revision(e));
    gd_engine_free(e);
    cJSON_Delete(doc);
    for (size_t k = 0; k < nsv; k++)
        free((char *)sv[k]);
    free(sv);
    p->secret_values = NULL;
    return fail ? 1 : 0;
}

/* explain FILE fs OP /PATH [PATH2] [MODE] */
static int explain_fs(int argc, char **argv)
{
    struct cli_policy p = {0};
    p.stub_secrets = 1;
    p.policy = argv[1];
    char **rest;
    int nrest;
    if (parse_common(&p, argc, argv, 3, &rest, &nrest))
        return 2;
    char spec[2048] = "";
    for (int i = 0; i < nrest; i++)
        snprintf(spec + strlen(spec), sizeof(spec) - strlen(spec), "%s%s", i ? " " : "", rest[i]);
    free(rest);
    struct gd_vfs_event ev;
    char buf[2048], why[600], rule[300], reason[300];
    if (cli_fs_event(spec, &ev, buf, sizeof(buf), why, sizeof(why))) {
        cli_policy_free(&p);
        return cli_die(2, "policy explain: %s", why);
    }
    gd_engine *e;
    if (cli_policy_engine(&p, 1, &e)) {
        cli_policy_free(&p);
        return 1;
    }
    int rc = cli_fs_decide(e, &ev, rule, sizeof(rule), reason, sizeof(reason));
    const char *b = gd_engine_fs_hook_site(e, 0);
    printf("fs %s (policy %s, revision %s)\n", spec, argv[1], gd_engine_revision(e));
    printf("mount:    %s\n", ev.mount);
    printf("chain:    plugin fs hooks -> lua on_fs (%s)\n", b ? b : "none");
    if (!rc) {
        printf("decision: allow\n");
    } else {
        const char *en = gd_lua_errno_name(rc);
        printf("decision: deny %s\n", en ? en : "?");
        printf("rule:     %s\n", rule);
        printf("reason:   %s\n", reason);
    }
    gd_engine_free(e);
    cli_policy_free(&p);
    return 0;
}

static int cmd_explain(int argc, char **argv)
{
    if (argc >= 3 && !strcmp(argv[2], "fs"))
        return explain_fs(argc, argv);
    if (argc < 4)
        return cli_die(2, "usage: gondolin policy explain FILE.lua METHOD URL [-H 'K: V']...");
    struct cli_policy p = {0};
    p.stub_secrets = 1;
    p.policy = argv[1];
    const char **hdrs = calloc((size_t)argc + 1, sizeof(char *));
    size_t nh = 0;
    char **rest;
    int nrest;
    if (parse_common(&p, argc, argv, 4, &rest, &nrest))
        return 2;
    for (int i = 0; i < nrest; i++) {
        if ((!strcmp(rest[i], "-H") || !strcmp(rest[i], "--header")) && i + 1 < nrest)
            hdrs[nh++] = rest[++i];
        else
            return cli_die(2, "policy explain: unexpected argument '%s'", rest[i]);
    }
    free(rest);
    gd_engine *e;
    if (cli_policy_engine(&p, 1, &e)) {
        cli_policy_free(&p);
        return 1;
    }
    struct gd_engine_trial tr = {.method = argv[2], .url = argv[3], .headers = hdrs};
    gd_txn *t;
    struct gd_err err = {{0}};
    if (gd_engine_try(e, &tr, &t, &err)) {
        gd_engine_free(e);
        return cli_die(2, "policy explain: %s", err.msg);
    }
    int status;
    const char *rule, *reason;
    enum gd_decision d = gd_txn_decision(t, &status, &rule, &reason);
    const struct gd_lua_conf *c = gd_engine_policy_conf(e);
    printf("%s %s (policy %s, revision %s)\n", argv[2], argv[3], argv[1], gd_engine_revision(e));
    printf("chain:    allow-host -> internal-ranges (at connect) -> plugins -> lua (%s) -> "
           "secrets\n",
           phase_list(c ? c->hook_phases : 0));
    if (d == GD_CONTINUE) {
        printf("decision: allow\n");
        printf("rule:     %s\n", rule ? rule : "(none)");
        printf("request headers sent upstream:\n");
        for (size_t i = 0; i < gd_txn_header_count(t, 0); i++) {
            const char *k, *v;
            gd_txn_header_at(t, 0, i, &k, &v);
            printf("  %s: %s\n", k, v);
        }
        printf("target:   %s\n", gd_txn_target(t));
    } else {
        printf("decision: %s %d\n", decision_name(d), status);
        printf("rule:     %s\n", rule ? rule : "(none)");
        if (reason)
            printf("reason:   %s\n", reason);
    }
    gd_txn_free_detached(t);
    gd_engine_free(e);
    free(hdrs);
    cli_policy_free(&p);
    return 0;
}

int cmd_policy(int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        usage();
        return argc < 2 ? 2 : 0;
    }
    const char *sub = argv[1];
    if (!strcmp(sub, "reload")) {
        if (argc != 3)
            return cli_die(2, "policy reload: which session? (gondolin policy reload ID|NAME)");
        return cli_session_reload(argv[2]);
    }
    if (argc < 3)
        return cli_die(2, "policy %s: which policy file?", sub);
    if (!strcmp(sub, "check"))
        return cmd_check(argc - 1, argv + 1);
    if (!strcmp(sub, "test"))
        return cmd_test(argc - 1, argv + 1);
    if (!strcmp(sub, "explain"))
        return cmd_explain(argc - 1, argv + 1);
    return cli_die(2, "policy: unknown command '%s' (check, test, explain, reload)", sub);
}
