#define _GNU_SOURCE
/* Unit tests: the egress rules' typed setters (what each accepts, what each refuses and
 * says), the command-line table over them, the deep copy, the digest and the CONNECT-
 * phase address check. */
#include "policy/egress.h"
#include "test.h"

#include <errno.h>

/* A setter call that must fail with -EINVAL and say want (the caller checks that e is
 * unchanged). */
#define REFUSED(call, want)                                                                        \
    do {                                                                                           \
        struct gd_err _err = {{0}};                                                                \
        int _rc = (call);                                                                          \
        if (_rc != -EINVAL)                                                                        \
            FAIL_AT("%s: wanted -EINVAL, got %d", #call, _rc);                                     \
        CHECK_CONTAINS(_err.msg, want);                                                            \
        CHECK(!strchr(_err.msg, '\n'));                                                            \
    } while (0)

#define OK(call)                                                                                   \
    do {                                                                                           \
        struct gd_err _err = {{0}};                                                                \
        int _rc = (call);                                                                          \
        if (_rc)                                                                                   \
            FAIL_AT("%s: %d (%s)", #call, _rc, _err.msg);                                          \
    } while (0)

TEST(egress_allow_rules)
{
    struct gd_egress e = {0};
    OK(gd_egress_allow(&e, "api.test", &_err));
    OK(gd_egress_allow(&e, "GET Reg.Test:8443/v1/", &_err));
    OK(gd_egress_allow(&e, "[::1]:8080", &_err));
    OK(gd_egress_allow(&e, "*.cdn.test/pub", &_err));
    CHECK_EQ(e.nallow, 4);
    CHECK_STR(e.allow[0].host, "api.test");
    CHECK(!e.allow[0].method && !e.allow[0].path && !e.allow[0].port);
    CHECK_STR(e.allow[1].method, "GET");
    CHECK_STR(e.allow[1].host, "reg.test");
    CHECK_EQ(e.allow[1].port, 8443);
    CHECK_STR(e.allow[1].path, "/v1/");
    CHECK_STR(e.allow[1].text, "GET Reg.Test:8443/v1/");
    CHECK_STR(e.allow[2].host, "::1");
    CHECK_EQ(e.allow[2].port, 8080);
    CHECK_STR(e.allow[3].host, "*.cdn.test");
    CHECK_STR(e.allow[3].path, "/pub");
    gd_egress_free(&e);
}

TEST(egress_allow_internal_and_addr_allowed)
{
    struct gd_egress e = {0};
    CHECK_EQ(gd_egress_addr_allowed(&e, "db.test", "93.184.216.34"), 1);
    CHECK_EQ(gd_egress_addr_allowed(&e, "db.test", "127.0.0.1"), 0);
    OK(gd_egress_allow_internal(&e, "db.test", &_err));
    OK(gd_egress_allow_internal(&e, "*.corp.test", &_err));
    CHECK_EQ(e.ninternal, 2);
    CHECK_EQ(gd_egress_addr_allowed(&e, "db.test", "127.0.0.1"), 1);
    CHECK_EQ(gd_egress_addr_allowed(&e, "DB.test.", "10.0.0.5"), 1);
    CHECK_EQ(gd_egress_addr_allowed(&e, "git.corp.test", "fd00::1"), 1);
    CHECK_EQ(gd_egress_addr_allowed(&e, "corp.test", "192.168.1.1"), 0); /* not *.corp.test */
    CHECK_EQ(gd_egress_addr_allowed(&e, "other.test", "::1"), 0);
    CHECK_EQ(gd_egress_addr_allowed(&e, "other.test", "169.254.169.254"), 0);
    CHECK_EQ(gd_egress_addr_allowed(&e, "other.test", "::ffff:127.0.0.1"), 0);
    CHECK_EQ(gd_egress_addr_allowed(&e, NULL, "127.0.0.1"), 0);
    CHECK_EQ(gd_egress_addr_allowed(&e, NULL, "1.1.1.1"), 1);
    gd_egress_free(&e);
}

TEST(egress_internal_hook_uses_the_same_check)
{
    struct gd_egress e = {0};
    OK(gd_egress_allow_internal(&e, "db.test", &_err));
    const char *cases[][3] = {{"db.test", "127.0.0.1", "allow"},
                              {"web.test", "127.0.0.1", "deny"},
                              {"web.test", "8.8.8.8", "allow"}};
    for (size_t i = 0; i < 3; i++) {
        gd_txn *t = gd_txn_new_detached("GET", "https", cases[i][0], 443, "/");
        CHECK(t);
        gd_txn_set_addr(t, cases[i][1]);
        enum gd_decision d = gd_egress_hook_internal(t, GD_PHASE_CONNECT, &e);
        CHECK_EQ(d == GD_CONTINUE, !strcmp(cases[i][2], "allow"));
        CHECK_EQ(gd_egress_addr_allowed(&e, cases[i][0], cases[i][1]), d == GD_CONTINUE);
        if (d != GD_CONTINUE) {
            int status;
            const char *rule, *reason;
            gd_txn_decision(t, &status, &rule, &reason);
            CHECK_EQ(status, 403);
            CHECK_STR(rule, "internal-ranges");
            CHECK_CONTAINS(reason, "web.test resolves to 127.0.0.1, a loopback (127/8) address");
        }
        gd_txn_free_detached(t);
    }
    gd_egress_free(&e);
}

TEST(egress_secrets)
{
    struct gd_egress e = {0};
    OK(gd_egress_secret(&e, "TOKEN", "api.test,http://plain.test", "s3cret", &_err));
    setenv("GD_UNIT_SECRET", "from-env", 1);
    OK(gd_egress_secret(&e, "GD_UNIT_SECRET", "*.env.test", NULL, &_err));
    CHECK_EQ(e.nsecrets, 2);
    CHECK_STR(e.secrets[0].value, "s3cret");
    CHECK_EQ(e.secrets[0].nhosts, 2);
    CHECK_STR(e.secrets[0].hosts[1], "plain.test");
    CHECK(!e.secrets[0].cleartext[0] && e.secrets[0].cleartext[1]);
    CHECK(!strncmp(e.secrets[0].placeholder, "GONDOLIN_SECRET_", 16));
    CHECK_STR(e.secrets[1].value, "from-env");
    CHECK(strcmp(e.secrets[0].placeholder, e.secrets[1].placeholder));

    unsetenv("GD_UNIT_UNSET");
    REFUSED(gd_egress_secret(&e, "GD_UNIT_UNSET", "a.test", NULL, &_err),
            "secret GD_UNIT_UNSET: no value given and $GD_UNIT_UNSET is not set");
    REFUSED(gd_egress_secret(&e, "EMPTY", "a.test", "", &_err), "secret EMPTY has an empty value");
    REFUSED(gd_egress_secret(&e, "BAD-NAME", "a.test", "v", &_err),
            "secret name 'BAD-NAME' must be letters, digits, _");
    REFUSED(gd_egress_secret(&e, "", "a.test", "v", &_err), "a secret needs a name");
    REFUSED(gd_egress_secret(&e, "K", "a.test,a b", "v", &_err),
            "secret K: bad host pattern 'a b'");
    REFUSED(gd_egress_secret(&e, "K", ",", "v", &_err), "secret K names no host");
    REFUSED(gd_egress_secret(&e, "TOKEN", "b.test", "v", &_err), "secret TOKEN given twice");
    CHECK_EQ(e.nsecrets, 2);
    gd_egress_secrets_in_query(&e, 1);
    CHECK_EQ(e.secrets_in_query, 1);
    gd_egress_secrets_in_query(&e, 0);
    CHECK_EQ(e.secrets_in_query, 0);
    gd_egress_free(&e);
}

TEST(egress_tcp_map_dns_resolve)
{
    struct gd_egress e = {0};
    OK(gd_egress_tcp_map(&e, "db.test:5432", &_err));
    OK(gd_egress_tcp_map(&e, "pg.test:5432=127.0.0.1:15432", &_err));
    CHECK_EQ(e.nmaps, 2);
    CHECK_STR(e.maps[0].up_host, "db.test");
    CHECK_EQ(e.maps[0].up_port, 5432);
    CHECK_STR(e.maps[1].host, "pg.test");
    CHECK_STR(e.maps[1].up_host, "127.0.0.1");
    CHECK_EQ(e.maps[1].up_port, 15432);

    OK(gd_egress_dns(&e, "trusted", &_err));
    CHECK_EQ(e.dns, GD_DNS_TRUSTED);
    OK(gd_egress_dns(&e, "open", &_err));
    CHECK_EQ(e.dns, GD_DNS_OPEN);
    OK(gd_egress_dns(&e, "synthetic", &_err));
    CHECK_EQ(e.dns, GD_DNS_SYNTHETIC);

    OK(gd_egress_resolve(&e, "a.test:127.0.0.1", &_err));
    OK(gd_egress_resolve(&e, "b.test:::1", &_err));
    CHECK_EQ(e.nresolve, 2);
    CHECK_STR(e.resolve[0], "a.test=127.0.0.1");
    CHECK_STR(e.resolve[1], "b.test=::1");
    CHECK(!e.resolve[2]);
    gd_egress_free(&e);
}

TEST(egress_paths_and_limits)
{
    struct gd_egress e = {0};
    OK(gd_egress_upstream_ca(&e, "/etc/a.pem", &_err));
    OK(gd_egress_upstream_ca(&e, "/etc/b.pem", &_err));
    CHECK_STR(e.upstream_ca, "/etc/b.pem");
    OK(gd_egress_audit(&e, "/tmp/audit.jsonl", &_err));
    CHECK_STR(e.audit_path, "/tmp/audit.jsonl");
    CHECK(!e.audit); /* opened by gd_egress_finish or the engine, not here */

    OK(gd_egress_http_limit(&e, "head_ms", "700", &_err));
    OK(gd_egress_http_limit(&e, "keepalive_ms", "1", &_err));
    OK(gd_egress_http_limit(&e, "body_ms", "4294967295", &_err));
    OK(gd_egress_http_limit(&e, "max_flows", "16", &_err));
    OK(gd_egress_http_limit(&e, "buffer_total", "1099511627776", &_err));
    CHECK_EQ(e.head_ms, 700);
    CHECK_EQ(e.keepalive_ms, 1);
    CHECK_EQ(e.body_ms, 4294967295u);
    CHECK_EQ(e.max_flows, 16);
    CHECK_EQ(e.buffer_total, 1ull << 40);
    REFUSED(gd_egress_http_limit(&e, "head", "5", &_err),
            "HTTP limit 'head': wants head_ms, keepalive_ms, body_ms, max_flows or buffer_total");
    REFUSED(gd_egress_http_limit(&e, "head_ms", "0", &_err),
            "HTTP limit head_ms=0: wants a whole number from 1 to 4294967295");
    REFUSED(gd_egress_http_limit(&e, "head_ms", "-1", &_err), "head_ms=-1");
    REFUSED(gd_egress_http_limit(&e, "head_ms", " 5", &_err), "head_ms= 5");
    REFUSED(gd_egress_http_limit(&e, "head_ms", "5s", &_err), "head_ms=5s");
    REFUSED(gd_egress_http_limit(&e, "head_ms", "", &_err), "head_ms=");
    REFUSED(gd_egress_http_limit(&e, "max_flows", "4294967296", &_err), "max_flows=4294967296");
    REFUSED(gd_egress_http_limit(&e, "buffer_total", "1099511627777", &_err),
            "from 1 to 1099511627776");
    CHECK_EQ(e.head_ms, 700);
    struct gd_proxy_opts po = {0};
    gd_egress_proxy_limits(&e, &po);
    CHECK_EQ(po.head_ms, 700);
    CHECK_EQ(po.max_buffer_total, 1ull << 40);
    gd_egress_free(&e);
}

/* Runs gd_egress_flag over a whole argv; returns its first non-1 result. */
static int flags(struct gd_egress *e, struct gd_err *err, int argc, char **argv)
{
    for (int i = 0; i < argc; i++) {
        int rc = gd_egress_flag(e, argc, argv, &i, err);
        if (rc != 1)
            return rc;
    }
    return 1;
}

TEST(egress_flags_call_the_setters)
{
    struct gd_egress e = {0};
    struct gd_err err = {{0}};
    char *argv[] = {"--allow-host=a.test",
                    "--allow-host",
                    "POST b.test/up",
                    "--allow-internal",
                    "b.test",
                    "--host-secret",
                    "K@a.test,http://b.test=v=w",
                    "--secrets-in-query",
                    "--tcp-map=db.test:5432",
                    "--dns",
                    "trusted",
                    "--resolve",
                    "a.test:127.0.0.1",
                    "--upstream-ca",
                    "/ca.pem",
                    "--audit=/a.jsonl",
                    "--http-limit",
                    "max_flows=8"};
    CHECK_EQ(flags(&e, &err, 18, argv), 1);
    CHECK_EQ(e.nallow, 2);
    CHECK_STR(e.allow[1].method, "POST");
    CHECK_EQ(e.ninternal, 1);
    CHECK_EQ(e.nsecrets, 1);
    CHECK_STR(e.secrets[0].name, "K");
    CHECK_STR(e.secrets[0].value, "v=w");
    CHECK_EQ(e.secrets[0].nhosts, 2);
    CHECK_EQ(e.secrets_in_query, 1);
    CHECK_EQ(e.nmaps, 1);
    CHECK_EQ(e.dns, GD_DNS_TRUSTED);
    CHECK_STR(e.resolve[0], "a.test=127.0.0.1");
    CHECK_STR(e.upstream_ca, "/ca.pem");
    CHECK_STR(e.audit_path, "/a.jsonl");
    CHECK_EQ(e.max_flows, 8);

    char *unknown[] = {"--allow-hosts", "x"};
    CHECK_EQ(flags(&e, &err, 2, unknown), 0);
    char *bad[] = {"--dns", "maybe"};
    CHECK_EQ(flags(&e, &err, 2, bad), -EINVAL);
    CHECK_CONTAINS(err.msg, "DNS mode 'maybe'");
    char *novalue[] = {"--allow-host"};
    CHECK_EQ(flags(&e, &err, 1, novalue), -EINVAL);
    CHECK_STR(err.msg, "--allow-host needs a value");
    char *noat[] = {"--host-secret", "K=v"};
    CHECK_EQ(flags(&e, &err, 2, noat), -EINVAL);
    CHECK_CONTAINS(err.msg, "--host-secret wants NAME@HOST[,HOST...][=VALUE], not 'K=v'");
    char *noeq[] = {"--http-limit", "head_ms"};
    CHECK_EQ(flags(&e, &err, 2, noeq), -EINVAL);
    CHECK_CONTAINS(err.msg, "--http-limit wants NAME=NUMBER, not 'head_ms'");
    gd_egress_free(&e);
}

/* A full set of rules (secret "K" with the given value). */
static void fill(struct gd_egress *e, const char *value)
{
    struct gd_err err = {{0}};
    int rc = gd_egress_allow(e, "GET a.test:8443/v1", &err) || gd_egress_allow(e, "b.test", &err) ||
             gd_egress_allow_internal(e, "db.test", &err) ||
             gd_egress_secret(e, "K", "a.test,http://b.test", value, &err) ||
             gd_egress_tcp_map(e, "db.test:5432=127.0.0.1:1", &err) ||
             gd_egress_dns(e, "open", &err) || gd_egress_resolve(e, "a.test:127.0.0.1", &err) ||
             gd_egress_upstream_ca(e, "/ca.pem", &err) || gd_egress_audit(e, "/dev/null", &err) ||
             gd_egress_http_limit(e, "body_ms", "9", &err);
    if (rc)
        FAIL_AT("fill: %s", err.msg);
    gd_egress_secrets_in_query(e, 1);
}

TEST(egress_copy_is_deep)
{
    struct gd_egress *src = calloc(1, sizeof(*src)), dst = {0};
    fill(src, "v4lue");
    src->audit = fopen("/dev/null", "w");
    snprintf(src->vm_id, sizeof(src->vm_id), "vm-1");
    char placeholder[80];
    memcpy(placeholder, src->secrets[0].placeholder, sizeof(placeholder));
    struct gd_err err = {{0}};
    CHECK_EQ(gd_egress_copy(&dst, src, &err), 0);
    CHECK(!dst.audit);   /* never the FILE* */
    gd_egress_free(src); /* the copy owns all of its own memory (ASan would say otherwise) */
    free(src);
    CHECK_EQ(dst.nallow, 2);
    CHECK_STR(dst.allow[0].text, "GET a.test:8443/v1");
    CHECK_STR(dst.allow[0].method, "GET");
    CHECK_STR(dst.allow[0].host, "a.test");
    CHECK_EQ(dst.allow[0].port, 8443);
    CHECK_STR(dst.allow[0].path, "/v1");
    CHECK(!dst.allow[1].method && !dst.allow[1].path);
    CHECK_EQ(dst.ninternal, 1);
    CHECK_STR(dst.internal[0], "db.test");
    CHECK(!dst.internal[1]);
    CHECK_EQ(dst.nsecrets, 1);
    CHECK_STR(dst.secrets[0].name, "K");
    CHECK_STR(dst.secrets[0].value, "v4lue");
    CHECK_STR(dst.secrets[0].placeholder, placeholder);
    CHECK_EQ(dst.secrets[0].nhosts, 2);
    CHECK_STR(dst.secrets[0].hosts[1], "b.test");
    CHECK_EQ(dst.secrets[0].cleartext[1], 1);
    CHECK_EQ(dst.nmaps, 1);
    CHECK_STR(dst.maps[0].host, "db.test");
    CHECK_STR(dst.maps[0].up_host, "127.0.0.1");
    CHECK_EQ(dst.maps[0].up_port, 1);
    CHECK_EQ(dst.nresolve, 1);
    CHECK_STR(dst.resolve[0], "a.test=127.0.0.1");
    CHECK(!dst.resolve[1]);
    CHECK_EQ(dst.dns, GD_DNS_OPEN);
    CHECK_EQ(dst.secrets_in_query, 1);
    CHECK_STR(dst.upstream_ca, "/ca.pem");
    CHECK_STR(dst.audit_path, "/dev/null");
    CHECK_EQ(dst.body_ms, 9);
    CHECK_STR(dst.vm_id, "vm-1");
    /* the copy takes more rules like any other */
    OK(gd_egress_allow(&dst, "c.test", &_err));
    REFUSED(gd_egress_secret(&dst, "K", "c.test", "x", &_err), "secret K given twice");
    gd_egress_free(&dst);

    struct gd_egress empty = {0}, e2 = {0};
    CHECK_EQ(gd_egress_copy(&e2, &empty, &err), 0);
    CHECK(!e2.allow && !e2.secrets && !e2.internal && !e2.resolve && !e2.audit_path);
    gd_egress_free(&e2);
}

struct buf {
    char b[4096];
    size_t n;
};

static void collect(void *ctx, const void *p, size_t n)
{
    struct buf *b = ctx;
    if (b->n + n <= sizeof(b->b))
        memcpy(b->b + b->n, p, n);
    b->n += n;
}

TEST(egress_digest)
{
    struct gd_egress a = {0}, b = {0}, c = {0};
    fill(&a, "one-value");
    fill(&b, "another-value"); /* other value, other placeholder: same rules */
    struct buf da = {{0}, 0}, db = {{0}, 0}, dc = {{0}, 0};
    gd_egress_digest(&a, collect, &da);
    gd_egress_digest(&b, collect, &db);
    CHECK(da.n > 0 && da.n < sizeof(da.b));
    CHECK_EQ(da.n, db.n);
    CHECK(!memcmp(da.b, db.b, da.n));
    CHECK(!memmem(da.b, da.n, "one-value", 9));
    CHECK(!memmem(da.b, da.n, a.secrets[0].placeholder, strlen(a.secrets[0].placeholder)));
    struct gd_err err = {{0}};
    CHECK_EQ(gd_egress_copy(&c, &a, &err), 0);
    gd_egress_digest(&c, collect, &dc);
    CHECK(dc.n == da.n && !memcmp(dc.b, da.b, da.n));
    /* one rule more, or one setting changed: other bytes */
    OK(gd_egress_allow(&c, "c.test", &_err));
    dc.n = 0;
    gd_egress_digest(&c, collect, &dc);
    CHECK(dc.n != da.n || memcmp(dc.b, da.b, da.n));
    OK(gd_egress_dns(&b, "trusted", &_err));
    db.n = 0;
    gd_egress_digest(&b, collect, &db);
    CHECK(db.n != da.n || memcmp(db.b, da.b, da.n));
    gd_egress_free(&a);
    gd_egress_free(&b);
    gd_egress_free(&c);
}

/* A value each one-string setter must refuse, and what it must say about it. */
typedef int (*setter)(struct gd_egress *e, const char *value, struct gd_err *err);
static const struct refusal {
    setter set;
    const char *value, *want;
} refusals[] = {
    {gd_egress_allow, "get a.test", "allow rule 'get a.test': method must be uppercase"},
    {gd_egress_allow, " a.test", "allow rule ' a.test': no method before the space"},
    {gd_egress_allow, "", "allow rule '': no host"},
    {gd_egress_allow, "/path", "allow rule '/path': no host"},
    {gd_egress_allow, "a.test:0", "allow rule 'a.test:0': bad port"},
    {gd_egress_allow, "a.test:65536", "allow rule 'a.test:65536': bad port"},
    {gd_egress_allow, "a.test:", "allow rule 'a.test:': bad port"},
    {gd_egress_allow, "[::1", "allow rule '[::1': bad [address]"},
    {gd_egress_allow, "a.*.test", "allow rule 'a.*.test': host must be a name, *.name or *"},
    {gd_egress_allow, "a!b.test", "allow rule 'a!b.test': host must be"},
    {gd_egress_allow_internal, "a b", "allow-internal 'a b': not a host pattern"},
    {gd_egress_allow_internal, "", "allow-internal '': not a host pattern"},
    {gd_egress_tcp_map, "db.test", "tcp map 'db.test': wants HOST:PORT[=UPHOST:UPPORT]"},
    {gd_egress_tcp_map, "db.test:0", "tcp map 'db.test:0': wants HOST:PORT"},
    {gd_egress_tcp_map, "*.db.test:5432", "tcp map '*.db.test:5432': bad host"},
    {gd_egress_tcp_map, "db.test:5432=up.test", "tcp map 'db.test:5432=up.test': bad upstream"},
    {gd_egress_tcp_map, "db.test:5432=:5", "tcp map 'db.test:5432=:5': bad upstream"},
    {gd_egress_tcp_map,
     "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
     "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
     "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
     "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
     "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
     "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
     "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.test:1",
     "tcp map 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa...': too long"},
    {gd_egress_dns, "Open", "DNS mode 'Open': wants synthetic, trusted or open"},
    {gd_egress_dns, "", "DNS mode '': wants synthetic, trusted or open"},
    {gd_egress_resolve, "a.test", "resolve 'a.test': wants NAME:ADDRESS"},
    {gd_egress_resolve, ":1.2.3.4", "resolve ':1.2.3.4': wants NAME:ADDRESS"},
    {gd_egress_resolve, "a.test:", "resolve 'a.test:': wants NAME:ADDRESS"},
    {gd_egress_upstream_ca, "", "upstream CA: the path is empty"},
    {gd_egress_audit, "", "audit file: the path is empty"},
};

TEST(egress_setters_refuse_bad_values)
{
    struct gd_egress e = {0};
    fill(&e, "v");
    struct buf before = {{0}, 0};
    gd_egress_digest(&e, collect, &before);
    for (size_t i = 0; i < sizeof(refusals) / sizeof(refusals[0]); i++) {
        const struct refusal *r = &refusals[i];
        struct gd_err err = {{0}};
        int rc = r->set(&e, r->value, &err);
        if (rc != -EINVAL)
            FAIL_AT("'%s': wanted -EINVAL, got %d (%s)", r->value, rc, err.msg);
        CHECK_CONTAINS(err.msg, r->want);
        CHECK(!strchr(err.msg, '\n'));
        struct buf after = {{0}, 0};
        gd_egress_digest(&e, collect, &after); /* a refused value changes nothing */
        if (after.n != before.n || memcmp(after.b, before.b, before.n))
            FAIL_AT("'%s' changed the rules", r->value);
    }
    gd_egress_free(&e);
}
