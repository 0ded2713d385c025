/* test_ssh_conf.c - the SSH egress rules (core/ssh/conf.c): the flags' values, lookups by
 * name and port, the guest's known_hosts host field, deep copies, the command line through
 * the egress flags, the network layer's classification; and the per-user host key. */
#define _GNU_SOURCE
#include "policy/egress.h"
#include "ssh/ssh.h"
#include "test.h"

#include <errno.h>
#include <sys/stat.h>
#include <unistd.h>

TEST(ssh_conf_allow_values)
{
    struct gd_ssh_conf c = {0};
    struct gd_err err = {{0}};
    CHECK_EQ(gd_ssh_conf_allow(&c, "github.com", &err), 0);
    CHECK_EQ(gd_ssh_conf_allow(&c, "git.test:2222", &err), 0);
    CHECK_EQ(gd_ssh_conf_allow(&c, "*.example.org", &err), 0);
    const char *bad[] = {"",      ":22", "git.test:", "git.test:0", "git.test:65536", "git.test:2x",
                         "a b:22"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        CHECK_EQ(gd_ssh_conf_allow(&c, bad[i], &err), -EINVAL);
        CHECK(err.msg[0] && !strchr(err.msg, '\n'));
    }
    CHECK_EQ(c.nrules, 3);
    CHECK_EQ(c.rules[0].port, 22);
    CHECK(gd_ssh_conf_rule(&c, "github.com", 22));
    CHECK(!gd_ssh_conf_rule(&c, "github.com", 2222));
    CHECK(gd_ssh_conf_rule(&c, "git.test", 2222));
    CHECK(!gd_ssh_conf_rule(&c, "git.test", 22));
    CHECK(gd_ssh_conf_rule(&c, "a.example.org", 22));
    CHECK(!gd_ssh_conf_rule(&c, "example.org", 22));
    CHECK(gd_ssh_conf_rule(&c, "git.test", 0));
    CHECK(!gd_ssh_conf_rule(&c, NULL, 22));
    char *h = gd_ssh_conf_guest_hosts(&c);
    CHECK_STR(h, "github.com,[git.test]:2222,*.example.org");
    free(h);
    gd_ssh_conf_free(&c);
    CHECK(!gd_ssh_conf_guest_hosts(&c));
}

TEST(ssh_conf_keys_known_hosts_copy)
{
    struct gd_ssh_conf c = {0}, d = {0};
    struct gd_err err = {{0}};
    char key[] = "/tmp/gd-ssh-conf-XXXXXX";
    int fd = mkstemp(key);
    CHECK(fd >= 0);
    close(fd);
    char spec[200];
    snprintf(spec, sizeof(spec), "*.test=file:%s", key);
    CHECK_EQ(gd_ssh_conf_key(&c, spec, &err), 0);
    CHECK_EQ(gd_ssh_conf_key(&c, "git.test", &err), -EINVAL);
    CHECK_EQ(gd_ssh_conf_key(&c, "git.test=/nonexistent/key", &err), -ENOENT);
    CHECK_CONTAINS(err.msg, "/nonexistent/key");
    CHECK_EQ(gd_ssh_conf_known_hosts(&c, key, &err), 0);
    CHECK_EQ(gd_ssh_conf_known_hosts(&c, "/nonexistent/kh", &err), -ENOENT);
    CHECK_EQ(gd_ssh_conf_allow(&c, "git.test", &err), 0);
    gd_ssh_conf_agent(&c, 1);
    CHECK_STR(gd_ssh_conf_key_for(&c, "git.test"), key);
    CHECK(!gd_ssh_conf_key_for(&c, "github.com"));
    CHECK_EQ(gd_ssh_conf_copy(&d, &c), 0);
    gd_ssh_conf_free(&c);
    CHECK_EQ(d.nrules, 1);
    CHECK_EQ(d.agent, 1);
    CHECK_STR(d.known_hosts[0], key);
    CHECK_STR(gd_ssh_conf_key_for(&d, "a.test"), key);
    gd_ssh_conf_free(&d);
    unlink(key);
}

/* The upstream user: the rule's, else the key's, else git (a host key or the agent):
 * never the guest's. */
TEST(ssh_conf_upstream_user)
{
    struct gd_ssh_conf c = {0}, d = {0};
    struct gd_err err = {{0}};
    char key[] = "/tmp/gd-ssh-user-XXXXXX";
    int fd = mkstemp(key);
    CHECK(fd >= 0);
    close(fd);
    char spec[200];
    CHECK_EQ(gd_ssh_conf_allow(&c, "deploy@pinned.test:2222", &err), 0);
    CHECK_STR(c.rules[0].user, "deploy");
    CHECK_EQ(gd_ssh_conf_allow(&c, "keyed.test", &err), 0);
    CHECK_EQ(gd_ssh_conf_allow(&c, "plain.test", &err), 0);
    CHECK_EQ(gd_ssh_conf_allow(&c, "agent.test", &err), 0);
    snprintf(spec, sizeof(spec), "ci@keyed.test=%s", key);
    CHECK_EQ(gd_ssh_conf_key(&c, spec, &err), 0);
    snprintf(spec, sizeof(spec), "plain.test=%s", key);
    CHECK_EQ(gd_ssh_conf_key(&c, spec, &err), 0);
    CHECK_EQ(gd_ssh_conf_allow(&c, "a@b@git.test", &err), -EINVAL);
    const char *bad[] = {"@git.test", "ro ot@git.test", "-x@git.test"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        CHECK_EQ(gd_ssh_conf_allow(&c, bad[i], &err), -EINVAL);
        CHECK_CONTAINS(err.msg, "[USER@]HOST");
    }
    snprintf(spec, sizeof(spec), "@git.test=%s", key);
    CHECK_EQ(gd_ssh_conf_key(&c, spec, &err), -EINVAL);
    CHECK_STR(gd_ssh_conf_upstream_user(&c, "pinned.test", 2222), "deploy");
    CHECK_STR(gd_ssh_conf_upstream_user(&c, "keyed.test", 22), "ci");
    CHECK_STR(gd_ssh_conf_upstream_user(&c, "plain.test", 22), "git");
    CHECK_STR(gd_ssh_conf_upstream_user(&c, "agent.test", 22), "git"); /* no agent */
    gd_ssh_conf_agent(&c, 1);
    CHECK_STR(gd_ssh_conf_upstream_user(&c, "agent.test", 22), "git");
    CHECK_STR(gd_ssh_conf_upstream_user(&c, "plain.test", 22), "git");
    CHECK_EQ(gd_ssh_conf_copy(&d, &c), 0); /* the key's user survives a copy */
    CHECK_STR(gd_ssh_conf_upstream_user(&d, "keyed.test", 22), "ci");
    gd_ssh_conf_free(&d);
    /* a rule's user from the policy is a plain name too */
    struct gd_ssh_rule r = {.host = "x.test", .port = 22, .user = "a;b"};
    CHECK_EQ(gd_ssh_conf_add_rule(&c, &r, &err), -EINVAL);
    gd_ssh_conf_free(&c);
    unlink(key);
}

TEST(ssh_conf_flags_and_port_policy)
{
    struct gd_egress e = {0};
    struct gd_err err = {{0}};
    char *argv[] = {"--ssh-allow", "git.test:2222", "--ssh-agent", "--ssh-allow=github.com"};
    int i = 0;
    CHECK_EQ(gd_egress_flag(&e, 4, argv, &i, &err), 1);
    i++;
    CHECK_EQ(gd_egress_flag(&e, 4, argv, &i, &err), 1);
    i++;
    CHECK_EQ(gd_egress_flag(&e, 4, argv, &i, &err), 1);
    CHECK_EQ(e.ssh.nrules, 2);
    CHECK_EQ(e.ssh.agent, 1);
    const char *uh = NULL;
    unsigned up = 0;
    CHECK_EQ(gd_egress_port_policy(&e, "git.test", 2222, &uh, &up), 3);
    CHECK_EQ(gd_egress_port_policy(&e, "github.com", 22, &uh, &up), 3);
    CHECK_EQ(gd_egress_port_policy(&e, "gitlab.com", 22, &uh, &up), 0);
    CHECK_EQ(gd_egress_port_policy(&e, NULL, 22, &uh, &up), 0);
    CHECK_EQ(gd_egress_host_allowed(&e, "git.test"), 1);
    struct gd_egress f = {0};
    CHECK_EQ(gd_egress_copy(&f, &e, &err), 0);
    CHECK_EQ(gd_egress_port_policy(&f, "git.test", 2222, &uh, &up), 3);
    gd_egress_free(&e);
    gd_egress_free(&f);
}

TEST(ssh_host_key_persistent_0600)
{
    char dir[] = "/tmp/gd-ssh-hk-XXXXXX";
    CHECK(mkdtemp(dir));
    setenv("XDG_CONFIG_HOME", dir, 1);
    char path[4096], pub[400], pub2[400];
    struct gd_err err = {{0}};
    CHECK_EQ(gd_ssh_host_key(path, sizeof(path), pub, sizeof(pub), &err), 0);
    CHECK_CONTAINS(path, "/gondolin/ssh/host_ed25519");
    CHECK(!strncmp(pub, "ssh-ed25519:AAAA", 16));
    struct stat st;
    CHECK_EQ(stat(path, &st), 0);
    CHECK_EQ(st.st_mode & 0777, 0600);
    CHECK_EQ(gd_ssh_host_key(path, sizeof(path), pub2, sizeof(pub2), &err), 0);
    CHECK_STR(pub2, pub);
    char cmd[4200];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    CHECK_EQ(system(cmd), 0);
}

TEST(ssh_conf_limits)
{
    struct gd_ssh_conf c = {0};
    struct gd_err err = {{0}};
    CHECK_EQ(gd_ssh_conf_limit(&c, "max_conns=4", &err), 0);
    CHECK_EQ(gd_ssh_conf_limit(&c, "idle_ms=5000", &err), 0);
    CHECK_EQ(gd_ssh_conf_limit(&c, "connect_ms=100", &err), 0);
    CHECK_EQ(gd_ssh_conf_limit(&c, "handshake_ms=86400000", &err), 0);
    CHECK_EQ(c.max_conns, 4);
    CHECK_EQ(c.idle_ms, 5000);
    CHECK_EQ(c.connect_ms, 100);
    CHECK_EQ(c.handshake_ms, 86400000);
    const char *bad[] = {"max_conns=0", "max_conns=4097", "idle_ms=99", "idle_ms=",  "idle_ms=-1",
                         "idle_ms=1x",  "speed=1",        "max_conns",  "max_conn=1"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        CHECK_EQ(gd_ssh_conf_limit(&c, bad[i], &err), -EINVAL);
        CHECK(err.msg[0] && !strchr(err.msg, '\n'));
    }
    CHECK_EQ(c.max_conns, 4);
    struct gd_ssh_conf d = {0};
    CHECK_EQ(gd_ssh_conf_copy(&d, &c), 0);
    CHECK_EQ(d.idle_ms, 5000);
    gd_ssh_conf_free(&d);
}

/* Overlapping rules: the most specific one decides, whatever order they were added in
 * (a Lua table's order changes from one process to the next). */
TEST(ssh_conf_most_specific_rule_wins_in_any_order)
{
    for (int order = 0; order < 2; order++) {
        struct gd_ssh_conf c = {0};
        struct gd_err err = {{0}};
        const char *pats[] = {"*.example.com", "git.example.com", "*"};
        for (int i = 0; i < 3; i++)
            CHECK_EQ(gd_ssh_conf_allow(&c, pats[order ? 2 - i : i], &err), 0);
        const struct gd_ssh_rule *r = gd_ssh_conf_rule(&c, "git.example.com", 22);
        CHECK(r != NULL);
        CHECK_STR(r->host, "git.example.com");
        r = gd_ssh_conf_rule(&c, "other.example.com", 22);
        CHECK(r != NULL);
        CHECK_STR(r->host, "*.example.com");
        r = gd_ssh_conf_rule(&c, "github.com", 22);
        CHECK(r != NULL);
        CHECK_STR(r->host, "*");
        gd_ssh_conf_free(&c);
    }
}
