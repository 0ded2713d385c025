/* The port-forward spec parser: "[HOST:]PORT=GUESTPORT" and its one-line errors. */
#include "base/text.h"
#include "forward/forward.h"
#include "test.h"

#include <errno.h>

static void ok(const char *spec, const char *host, unsigned port, unsigned guest)
{
    struct gd_forward_spec s;
    struct gd_err err = {{0}};
    if (gd_forward_parse(spec, &s, &err))
        FAIL_AT("'%s' refused: %s", spec, err.msg);
    CHECK_STR(s.host, host);
    CHECK_EQ(s.port, port);
    CHECK_EQ(s.guest_port, guest);
}

static void bad(const char *spec, const char *why)
{
    struct gd_forward_spec s;
    struct gd_err err = {{0}};
    CHECK_EQ(gd_forward_parse(spec, &s, &err), -EINVAL);
    CHECK_CONTAINS(err.msg, why);
    CHECK(!strchr(err.msg, '\n'));
}

TEST(forward_parse_accepts)
{
    ok("8080=80", "", 8080, 80);
    ok("0=8000", "", 0, 8000);
    ok("127.0.0.1:8080=8000", "127.0.0.1", 8080, 8000);
    ok("0.0.0.0:65535=65535", "0.0.0.0", 65535, 65535);
    ok("localhost:1=1", "localhost", 1, 1);
    ok("[::1]:8080=80", "::1", 8080, 80);
    ok("[fe80::1]:0=22", "fe80::1", 0, 22);
}

TEST(forward_parse_refuses)
{
    bad("8080", "expected [HOST:]PORT=GUESTPORT");
    bad("=80", "expected [HOST:]PORT=GUESTPORT");
    bad("8080=80=1", "expected [HOST:]PORT=GUESTPORT");
    bad("8080=", "guest port must be a number 1-65535");
    bad("8080=0", "guest port must be a number 1-65535");
    bad("8080=65536", "guest port must be a number 1-65535");
    bad("8080=http", "guest port must be a number 1-65535");
    bad("65536=80", "host port must be a number 0-65535");
    bad("-1=80", "host port must be a number 0-65535");
    bad("127.0.0.1:=80", "host port must be a number 0-65535");
    bad("example.com:8080=80", "listen address must be an IP address or localhost");
    bad(":8080=80", "listen address must be an IP address or localhost");
    bad("::1:8080=80", "an IPv6 address in brackets");
    bad("[127.0.0.1]:8080=80", "listen address must be an IP address or localhost");
    bad("[::1:8080=80", "listen address");
}

TEST(hostport_brackets_ipv6)
{
    char b[64];
    gd_hostport(b, sizeof(b), "127.0.0.1", 8080);
    CHECK_STR(b, "127.0.0.1:8080");
    gd_hostport(b, sizeof(b), "::1", 22);
    CHECK_STR(b, "[::1]:22");
    gd_hostport(b, sizeof(b), "", 9000);
    CHECK_STR(b, "9000");
    gd_hostport(b, sizeof(b), "localhost", 0);
    CHECK_STR(b, "localhost:0");
}
