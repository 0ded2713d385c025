/* test_ssh_policy.c - the policy side of SSH egress: the Lua ssh table (rules merged into
 * the revision's egress, every field checked at load with file:line), on_ssh_exec and its
 * request object (deny with reason and line, fail closed on errors, dead handles), and
 * the audit record of an exec. */
#define _GNU_SOURCE
#include "test.h"

#include "engine/engine.h"

#include <errno.h>
#include <unistd.h>

struct fx {
    char dir[64], policy[128], audit[128], key[128];
    gd_engine *e;
};

static int fx_new(struct fx *f, const char *fmt, struct gd_err *err)
{
    memset(f, 0, sizeof(*f));
    snprintf(f->dir, sizeof(f->dir), "/tmp/gd-sshpol-XXXXXX");
    CHECK(mkdtemp(f->dir));
    snprintf(f->policy, sizeof(f->policy), "%s/p.lua", f->dir);
    snprintf(f->audit, sizeof(f->audit), "%s/audit.jsonl", f->dir);
    snprintf(f->key, sizeof(f->key), "%s/id_test", f->dir);
    FILE *k = fopen(f->key, "w");
    CHECK(k);
    fputs("not really a key\n", k);
    fclose(k);
    FILE *p = fopen(f->policy, "w");
    CHECK(p);
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
    fprintf(p, fmt, f->key); /* the texts below: one %s, the key's path */
#pragma GCC diagnostic pop
    fclose(p);
    struct gd_egress base = {0};
    CHECK(gd_egress_audit(&base, f->audit, NULL) == 0);
    base.quiet = 1;
    struct gd_engine_opts o = {
        .policy = f->policy, .base = &base, .lua_dir = GD_TEST_LUA_DIR, .quiet = 1};
    int rc = gd_engine_new(&o, &f->e, err);
    gd_egress_free(&base);
    return rc;
}

static void fx_cleanup(struct fx *f)
{
    gd_engine_free(f->e);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", f->dir);
    CHECK(system(cmd) == 0);
}

static const char *const POLICY =
    "local later\n"
    "return {\n"
    "  ssh = {\n"
    "    ['github.com'] = { user = 'git', key = 'file:%s', repos = { 'org/*' },\n"
    "                       commands = { 'git-upload-pack' } },\n"
    "    ['git.test:2222'] = { agent = true },\n"
    "  },\n"
    "  on_ssh_exec = function(req, ctx)\n"
    "    if req:command() == 'boom' then error('kaboom') end\n"
    "    if req:command() == 'late' then return later:host() end\n"
    "    later = req\n"
    "    local g = req:git()\n"
    "    if g and g.service == 'git-receive-pack' then\n"
    "      req:deny('no pushes for ' .. req:user() .. '@' .. req:host() .. ':' .. req:port())\n"
    "    end\n"
    "  end,\n"
    "}\n";

static int exec_cmd(struct fx *f, const char *cmd, char *rule, char *reason)
{
    struct gd_ssh_git g;
    int parsed = !gd_ssh_git_parse(cmd, strlen(cmd), &g, NULL);
    struct gd_ssh_exec x = {
        .host = "github.com", .port = 22, .user = "git", .command = cmd, .git = parsed ? &g : NULL};
    return gd_engine_ssh_exec(f->e, &x, rule, 300, reason, 300);
}

TEST(ssh_policy_table_and_hook)
{
    struct fx f;
    struct gd_err err = {{0}};
    CHECK_EQ(fx_new(&f, POLICY, &err), 0);
    const struct gd_ssh_conf *c = &gd_engine_egress(f.e)->ssh;
    CHECK_EQ(c->nrules, 2);
    const struct gd_ssh_rule *r = gd_ssh_conf_rule(c, "github.com", 22);
    CHECK(r);
    CHECK_STR(r->user, "git");
    CHECK_STR(r->key, f.key);
    CHECK_EQ(r->commands, GD_SSH_CMD_UPLOAD_PACK);
    CHECK_EQ(r->nrepos, 1);
    CHECK_STR(r->repos[0], "org/*");
    r = gd_ssh_conf_rule(c, "git.test", 2222);
    CHECK(r && r->agent && !r->key);
    const char *uh;
    unsigned up;
    CHECK_EQ(gd_egress_port_policy(gd_engine_egress(f.e), "github.com", 22, &uh, &up), 3);

    char rule[300], reason[300];
    CHECK_EQ(exec_cmd(&f, "git-upload-pack 'org/r.git'", rule, reason), 0);
    CHECK_EQ(exec_cmd(&f, "git-receive-pack 'org/r.git'", rule, reason), -EACCES);
    CHECK_STR(reason, "no pushes for git@github.com:22");
    CHECK_CONTAINS(rule, "p.lua:14");
    /* errors deny (fail closed), and so does a handle used after its call */
    CHECK_EQ(exec_cmd(&f, "boom", rule, reason), -EACCES);
    CHECK_STR(rule, "lua-error");
    CHECK_CONTAINS(reason, "kaboom");
    CHECK_EQ(exec_cmd(&f, "late", rule, reason), -EACCES);
    CHECK_CONTAINS(reason, "already finished");

    struct gd_ssh_exec x = {.host = "github.com", .port = 22, .user = "git", .command = "c\x01"};
    struct gd_ssh_record rec = {.x = &x, .exit_status = 0, .bytes_up = 5, .bytes_down = 7};
    gd_engine_ssh_audit(f.e, &rec);
    rec.denied = 1;
    rec.rule = "p.lua:14";
    rec.reason = "no";
    gd_engine_ssh_audit(f.e, &rec);
    gd_engine_free(f.e);
    f.e = NULL;
    FILE *a = fopen(f.audit, "r");
    CHECK(a);
    char line[2000];
    CHECK(fgets(line, sizeof(line), a));
    CHECK_CONTAINS(line, "\"type\":\"ssh\"");
    CHECK_CONTAINS(line, "\"decision\":\"allow\"");
    CHECK_CONTAINS(line, "\"exit\":0");
    CHECK_CONTAINS(line, "\"bytes_down\":7");
    CHECK_CONTAINS(line, "\"revision\":\"");
    CHECK(!strchr(line, '\x01'));
    CHECK(fgets(line, sizeof(line), a));
    CHECK_CONTAINS(line, "\"decision\":\"deny\"");
    CHECK_CONTAINS(line, "\"rule\":\"p.lua:14\"");
    fclose(a);
    fx_cleanup(&f);
}

TEST(ssh_policy_table_errors)
{
    static const char *const bad[][2] = {
        {"return { ssh = { ['h.test'] = { usr = 'git' } } } -- %s", "usr"},
        {"return { ssh = { ['h.test'] = { commands = { 'rm' } } } } -- %s", "'rm'"},
        {"return { ssh = { ['h.test'] = { repos = { '../x' } } } } -- %s", "repo pattern"},
        {"return { ssh = { ['h.test'] = { key = '/nonexistent/k' } } } -- %s", "/nonexistent/k"},
        {"return { ssh = { ['h.test'] = { key = '%s', agent = true } } }", "exclude"},
        {"return { ssh = { ['h.test:0'] = {} } } -- %s", "HOST[:PORT]"},
        {"return { ssh = { 'h.test' } } -- %s", "ssh must be a table"},
        {"return { ssh = { ['h.test'] = { user = 'a b' } } } -- %s", "user"},
        {"return { on_ssh_exec = 3 } -- %s", "on_ssh_exec must be a function"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct fx f;
        struct gd_err err = {{0}};
        CHECK(fx_new(&f, bad[i][0], &err) < 0);
        CHECK_CONTAINS(err.msg, bad[i][1]);
        CHECK_CONTAINS(err.msg, "p.lua");
        CHECK(!strchr(err.msg, '\n'));
        fx_cleanup(&f);
    }
}

#ifdef GD_TEST_SSH_PLUGIN
TEST(ssh_policy_plugin_hook_before_lua)
{
    struct fx f;
    memset(&f, 0, sizeof(f));
    snprintf(f.dir, sizeof(f.dir), "/tmp/gd-sshpol-XXXXXX");
    CHECK(mkdtemp(f.dir));
    snprintf(f.policy, sizeof(f.policy), "%s/p.lua", f.dir);
    FILE *p = fopen(f.policy, "w");
    CHECK(p);
    fputs("return { ssh = { ['github.com'] = { agent = true } },\n"
          "  on_ssh_exec = function(req) if req:user() == 'eve' then req:deny('lua says no') end "
          "end }\n",
          p);
    fclose(p);
    const char *plugins[] = {GD_TEST_SSH_PLUGIN, NULL};
    struct gd_engine_opts o = {
        .policy = f.policy, .plugins = plugins, .lua_dir = GD_TEST_LUA_DIR, .quiet = 1};
    struct gd_err err = {{0}};
    if (gd_engine_new(&o, &f.e, &err))
        FAIL_AT("%s", err.msg);
    char rule[300], reason[300];
    CHECK_EQ(exec_cmd(&f, "git-upload-pack 'locked/r.git'", rule, reason), 0);
    CHECK_EQ(exec_cmd(&f, "git-receive-pack 'locked/r.git'", rule, reason), -EACCES);
    CHECK_STR(rule, "sshlock/locks");
    CHECK_STR(reason, "github.com:22: locked/r is locked");
    struct gd_ssh_exec x = {.host = "github.com", .port = 22, .user = "eve", .command = "x"};
    CHECK_EQ(gd_engine_ssh_exec(f.e, &x, rule, 300, reason, 300), -EACCES);
    CHECK_STR(reason, "lua says no");
    x.user = "mallory"; /* the plugin runs first */
    CHECK_EQ(gd_engine_ssh_exec(f.e, &x, rule, 300, reason, 300), -EACCES);
    CHECK_STR(rule, "sshlock/locks");
    CHECK_STR(reason, "user mallory is blocked");
    fx_cleanup(&f);
}
#endif
