/* Unit tests: request targets and authorities as the proxy canonicalises them, and the
 * path-prefix rule match (what allow rules compare). */
#include "base/pattern.h"
#include "http/http.h"
#include "secrets/secrets.h"
#include "test.h"

#include <errno.h>

static void norm(const char *in, const char *want)
{
    char *out = NULL;
    int rc = gd_http_normalize_target(in, &out);
    if (!want) {
        if (rc != -EINVAL)
            FAIL_AT("%s: wanted -EINVAL, got %d (%s)", in, rc, out ? out : "");
        return;
    }
    if (rc)
        FAIL_AT("%s: rc %d", in, rc);
    if (strcmp(out, want))
        FAIL_AT("%s -> \"%s\", wanted \"%s\"", in, out, want);
    free(out);
}

TEST(http_target_dot_segments)
{
    norm("/", "/");
    norm("/a/b/../c", "/a/c");
    norm("/a/./b", "/a/b");
    norm("/pub/../private.txt", "/private.txt");
    norm("/../../etc/passwd", "/etc/passwd");
    norm("/a/b/..", "/a/");
    norm("/a/b/.", "/a/b/");
    norm("/a/..", "/");
    norm("/..", "/");
    norm("/a//../b", "/a/b");
    norm("/a/...", "/a/...");
    norm("/a/..b/c", "/a/..b/c");
}

TEST(http_target_escapes)
{
    norm("/pub/%2e%2e/private.txt", "/private.txt");
    norm("/pub/%2E%2e/x", "/x");
    norm("/pub/.%2e/x", "/x");
    norm("/%7Euser/%41", "/~user/A");
    norm("/a%2fb", "/a%2Fb"); /* kept encoded, in upper case */
    norm("/a%20b", "/a%20b"); /* not unreserved: stays an escape */
    norm("/pub/..%2fx", "/pub/..%2Fx");
    norm("/x?q=%2e%2e/../y#frag", "/x?q=%2e%2e/../y");
    norm("/x#frag", "/x");
    norm("*", "*");
    norm("/bad%zz", NULL);
    norm("/bad%2", NULL);
    norm("/bad%", NULL);
    norm("/sp ace", NULL);
    norm("/ctl\x01", NULL);
    norm("/hi\xc3\xa9", NULL);
    norm("relative", NULL);
    norm("", NULL);
    norm("/a%2?x", NULL); /* an escape cut by the query */
}

TEST(http_path_ambiguous)
{
    CHECK(gd_http_path_ambiguous("/a%2Fb"));
    CHECK(gd_http_path_ambiguous("/a%5Cb"));
    CHECK(gd_http_path_ambiguous("/a%00b"));
    CHECK(gd_http_path_ambiguous("/a\\b"));
    CHECK(gd_http_path_ambiguous("/pub/..;/private"));
    CHECK(gd_http_path_ambiguous("/pub/.;x/y"));
    CHECK(!gd_http_path_ambiguous("/a/b?x=%2F"));
    CHECK(!gd_http_path_ambiguous("/a%20b"));
    CHECK(!gd_http_path_ambiguous("/a;b/c"));
}

TEST(http_path_rule_segments)
{
    CHECK(gd_path_match("/echo", "/echo"));
    CHECK(gd_path_match("/echo", "/echo/x"));
    CHECK(gd_path_match("/echo", "/echo?x=1"));
    CHECK(!gd_path_match("/echo", "/echoadmin"));
    CHECK(!gd_path_match("/echo", "/ech"));
    CHECK(gd_path_match("/pub/", "/pub/a"));
    CHECK(!gd_path_match("/pub/", "/pub"));
    CHECK(!gd_path_match("/pub/", "/public"));
    CHECK(gd_path_match("/echo*", "/echoadmin"));
    CHECK(gd_path_match("/", "/anything"));
    CHECK(gd_path_match("/v1/repos/", "/v1/repos/o/r"));
}

TEST(secret_cleartext_scope)
{
    struct gd_secret s;
    struct gd_err err = {{0}};
    CHECK_EQ(gd_secret_init(&s, "K", "a.test,http://b.test", "v4lue", &err), 0);
    CHECK(gd_secret_in_scope(&s, "a.test"));
    CHECK(gd_secret_in_scope(&s, "b.test"));
    CHECK(!gd_secret_cleartext_ok(&s, "a.test"));
    CHECK(gd_secret_cleartext_ok(&s, "b.test"));
    char in[200], *out = NULL;
    const struct gd_secret *which = NULL;
    snprintf(in, sizeof(in), "Bearer %s", s.placeholder);
    CHECK_EQ(gd_secrets_apply(&s, 1, "a.test", 0, in, 0, &out, &which), -EPROTO);
    CHECK(which == &s);
    CHECK_EQ(gd_secrets_apply(&s, 1, "a.test", 1, in, 0, &out, &which), 0);
    CHECK_STR(out, "Bearer v4lue");
    free(out);
    CHECK_EQ(gd_secrets_apply(&s, 1, "b.test", 0, in, 0, &out, &which), 0);
    CHECK_STR(out, "Bearer v4lue");
    free(out);
    CHECK_EQ(gd_secrets_apply(&s, 1, "c.test", 1, in, 0, &out, &which), -EACCES);
    gd_secret_free(&s);
}
