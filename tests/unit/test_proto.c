/* Framing and every message decoder, including malformed input. */
#include "ctl/proto.h"
#include "test.h"

#include <errno.h>

static uint8_t big[GD_PROTO_HDR_LEN + GD_PROTO_MAX_BODY];

static size_t enc_exec(uint8_t *buf, size_t cap, const char **argv, int argc, const char **env,
                       int envc, const char *cwd, uint32_t flags)
{
    struct gd_enc e;
    gd_enc_init(&e, buf, cap, GD_MSG_EXEC, 0, 7);
    gd_enc_u32(&e, flags);
    gd_enc_u32(&e, 1000);
    gd_enc_u32(&e, 2000);
    gd_enc_u16(&e, 24);
    gd_enc_u16(&e, 80);
    gd_enc_u32(&e, (uint32_t)argc);
    for (int i = 0; i < argc; i++)
        gd_enc_str(&e, argv[i], strlen(argv[i]));
    gd_enc_u32(&e, (uint32_t)envc);
    for (int i = 0; i < envc; i++)
        gd_enc_str(&e, env[i], strlen(env[i]));
    gd_enc_str(&e, cwd, strlen(cwd));
    long n = gd_enc_finish(&e);
    CHECK(n > 0);
    return (size_t)n;
}

TEST(header_roundtrip)
{
    uint8_t b[GD_PROTO_HDR_LEN];
    gd_hdr_write(b, GD_MSG_OUTPUT, 2, 0xdeadbeef, 1234);
    struct gd_hdr h;
    CHECK_EQ(gd_hdr_parse(b, &h), 0);
    CHECK_EQ(h.type, GD_MSG_OUTPUT);
    CHECK_EQ(h.flags, 2);
    CHECK_EQ(h.id, 0xdeadbeef);
    CHECK_EQ(h.len, 1234);
}

TEST(header_rejects_bad)
{
    uint8_t b[GD_PROTO_HDR_LEN];
    struct gd_hdr h;
    gd_hdr_write(b, 0, 0, 1, 0);
    CHECK_EQ(gd_hdr_parse(b, &h), -EPROTO); /* type 0 */
    gd_hdr_write(b, GD_MSG_TYPE_MAX + 1, 0, 1, 0);
    CHECK_EQ(gd_hdr_parse(b, &h), -EPROTO); /* unknown type */
    gd_hdr_write(b, GD_MSG_PING, 0, 1, GD_PROTO_MAX_BODY + 1);
    CHECK_EQ(gd_hdr_parse(b, &h), -EMSGSIZE); /* oversized */
    gd_hdr_write(b, GD_MSG_PING, 0, 1, 0);
    b[6] = 1;
    CHECK_EQ(gd_hdr_parse(b, &h), -EPROTO); /* reserved bits */
}

TEST(exec_roundtrip)
{
    uint8_t buf[4096];
    const char *argv[] = {"/bin/echo", "hello world", ""};
    const char *env[] = {"A=1", "B=x=y"};
    size_t n = enc_exec(buf, sizeof(buf), argv, 3, env, 2, "/tmp", GD_EXEC_STDIN);
    struct gd_hdr h;
    CHECK_EQ(gd_hdr_parse(buf, &h), 0);
    CHECK_EQ(h.len, n - GD_PROTO_HDR_LEN);
    struct gd_str av[8], ev[8];
    struct gd_msg_exec m = {.argv = av, .env = ev};
    CHECK_EQ(gd_dec_exec(buf + GD_PROTO_HDR_LEN, h.len, &m, 8), 0);
    CHECK_EQ(m.argc, 3);
    CHECK_EQ(m.envc, 2);
    CHECK_EQ(m.flags, GD_EXEC_STDIN);
    CHECK_EQ(m.stdout_window, 1000);
    CHECK_EQ(m.stderr_window, 2000);
    CHECK_EQ(av[1].len, 11);
    CHECK(!memcmp(av[1].p, "hello world", 11));
    CHECK_EQ(av[2].len, 0);
    CHECK(!memcmp(ev[1].p, "B=x=y", 5));
    CHECK_EQ(m.cwd.len, 4);
}

TEST(exec_every_truncation_rejected)
{
    uint8_t buf[4096];
    const char *argv[] = {"ls", "-l"};
    const char *env[] = {"K=V"};
    size_t n = enc_exec(buf, sizeof(buf), argv, 2, env, 1, "/", 0);
    struct gd_str av[8], ev[8];
    for (size_t cut = 0; cut < n - GD_PROTO_HDR_LEN; cut++) {
        struct gd_msg_exec m = {.argv = av, .env = ev};
        if (gd_dec_exec(buf + GD_PROTO_HDR_LEN, (uint32_t)cut, &m, 8) == 0)
            FAIL_AT("truncated EXEC of %zu bytes accepted", cut);
    }
    /* trailing garbage */
    struct gd_msg_exec m = {.argv = av, .env = ev};
    CHECK(gd_dec_exec(buf + GD_PROTO_HDR_LEN, (uint32_t)(n - GD_PROTO_HDR_LEN + 1), &m, 8) != 0);
}

TEST(exec_rejects_bad_fields)
{
    uint8_t buf[4096];
    struct gd_str av[8], ev[8];
    struct gd_msg_exec m = {.argv = av, .env = ev};
    const char *argv[] = {"x"};
    const char *bad_env[] = {"NOEQUALS"};
    size_t n = enc_exec(buf, sizeof(buf), argv, 1, bad_env, 1, "", 0);
    CHECK_EQ(gd_dec_exec(buf + GD_PROTO_HDR_LEN, (uint32_t)(n - GD_PROTO_HDR_LEN), &m, 8),
             -EBADMSG);
    const char *eq_env[] = {"=V"};
    n = enc_exec(buf, sizeof(buf), argv, 1, eq_env, 1, "", 0);
    CHECK(gd_dec_exec(buf + GD_PROTO_HDR_LEN, (uint32_t)(n - GD_PROTO_HDR_LEN), &m, 8) != 0);
    n = enc_exec(buf, sizeof(buf), argv, 0, NULL, 0, "", 0); /* argc 0 */
    CHECK(gd_dec_exec(buf + GD_PROTO_HDR_LEN, (uint32_t)(n - GD_PROTO_HDR_LEN), &m, 8) != 0);
    n = enc_exec(buf, sizeof(buf), argv, 1, NULL, 0, "", 0x80); /* unknown flag */
    CHECK(gd_dec_exec(buf + GD_PROTO_HDR_LEN, (uint32_t)(n - GD_PROTO_HDR_LEN), &m, 8) != 0);
    const char *two[] = {"a", "b"};
    n = enc_exec(buf, sizeof(buf), two, 2, NULL, 0, "", GD_EXEC_SHELL); /* shell wants 1 */
    CHECK(gd_dec_exec(buf + GD_PROTO_HDR_LEN, (uint32_t)(n - GD_PROTO_HDR_LEN), &m, 8) != 0);
    /* NUL inside an argument */
    const char nul[] = {'a', 0, 'b'};
    struct gd_enc e;
    gd_enc_init(&e, buf, sizeof(buf), GD_MSG_EXEC, 0, 1);
    gd_enc_u32(&e, 0);
    gd_enc_u32(&e, 1);
    gd_enc_u32(&e, 1);
    gd_enc_u16(&e, 0);
    gd_enc_u16(&e, 0);
    gd_enc_u32(&e, 1);
    gd_enc_str(&e, nul, 3);
    gd_enc_u32(&e, 0);
    gd_enc_str(&e, "", 0);
    n = (size_t)gd_enc_finish(&e);
    CHECK(gd_dec_exec(buf + GD_PROTO_HDR_LEN, (uint32_t)(n - GD_PROTO_HDR_LEN), &m, 8) != 0);
    /* more args than the caller's array */
    const char *many[] = {"1", "2", "3", "4"};
    n = enc_exec(buf, sizeof(buf), many, 4, NULL, 0, "", 0);
    CHECK_EQ(gd_dec_exec(buf + GD_PROTO_HDR_LEN, (uint32_t)(n - GD_PROTO_HDR_LEN), &m, 3), -E2BIG);
}

TEST(exec_connect_needs_one_port)
{
    uint8_t buf[4096];
    struct gd_str av[8], ev[8];
    struct gd_msg_exec m = {.argv = av, .env = ev};
    const uint32_t cf = GD_EXEC_CONNECT | GD_EXEC_STDIN;
    const char *ok[] = {"8000"};
    size_t n = enc_exec(buf, sizeof(buf), ok, 1, NULL, 0, "", cf);
    CHECK_EQ(gd_dec_exec(buf + GD_PROTO_HDR_LEN, (uint32_t)(n - GD_PROTO_HDR_LEN), &m, 8), 0);
    CHECK_EQ(m.flags, cf);
    uint16_t port = 0;
    CHECK_EQ(gd_dec_port(&av[0], &port), 0);
    CHECK_EQ(port, 8000);
    static const char *const bad_ports[] = {"0",   "65536", "99999", "123456", "",
                                            "80a", "-1",    " 80",   "+80",    "0x50"};
    for (size_t i = 0; i < sizeof(bad_ports) / sizeof(bad_ports[0]); i++) {
        const char *a[] = {bad_ports[i]};
        n = enc_exec(buf, sizeof(buf), a, 1, NULL, 0, "", cf);
        if (gd_dec_exec(buf + GD_PROTO_HDR_LEN, (uint32_t)(n - GD_PROTO_HDR_LEN), &m, 8) == 0)
            FAIL_AT("CONNECT to port \"%s\" accepted", bad_ports[i]);
    }
    const char *edge[] = {"65535"};
    n = enc_exec(buf, sizeof(buf), edge, 1, NULL, 0, "", cf);
    CHECK_EQ(gd_dec_exec(buf + GD_PROTO_HDR_LEN, (uint32_t)(n - GD_PROTO_HDR_LEN), &m, 8), 0);
    const char *two[] = {"80", "81"};
    n = enc_exec(buf, sizeof(buf), two, 2, NULL, 0, "", cf);
    CHECK(gd_dec_exec(buf + GD_PROTO_HDR_LEN, (uint32_t)(n - GD_PROTO_HDR_LEN), &m, 8) != 0);
    n = enc_exec(buf, sizeof(buf), ok, 1, NULL, 0, "", cf | GD_EXEC_PTY);
    CHECK(gd_dec_exec(buf + GD_PROTO_HDR_LEN, (uint32_t)(n - GD_PROTO_HDR_LEN), &m, 8) != 0);
    n = enc_exec(buf, sizeof(buf), ok, 1, NULL, 0, "", cf | GD_EXEC_SHELL);
    CHECK(gd_dec_exec(buf + GD_PROTO_HDR_LEN, (uint32_t)(n - GD_PROTO_HDR_LEN), &m, 8) != 0);
}

TEST(string_length_beyond_body)
{
    uint8_t buf[64];
    struct gd_enc e;
    gd_enc_init(&e, buf, sizeof(buf), GD_MSG_HELLO, 0, 0);
    gd_enc_u16(&e, 1);
    gd_enc_u16(&e, 0);
    gd_enc_u32(&e, 0);
    gd_enc_u32(&e, 0xffffffffu); /* string length lies */
    long n = gd_enc_finish(&e);
    struct gd_msg_hello h;
    CHECK_EQ(gd_dec_hello(buf + GD_PROTO_HDR_LEN, (uint32_t)(n - GD_PROTO_HDR_LEN), &h), -EBADMSG);
}

TEST(small_decoders)
{
    uint8_t b[16] = {1, 0, 0, 0, 2, 0, 0, 0};
    uint32_t a, c;
    uint16_t r, cl;
    CHECK_EQ(gd_dec_u32(b, 4, &a), 0);
    CHECK_EQ(a, 1);
    CHECK(gd_dec_u32(b, 3, &a) != 0);
    CHECK(gd_dec_u32(b, 5, &a) != 0);
    CHECK_EQ(gd_dec_u32x2(b, 8, &a, &c), 0);
    CHECK_EQ(c, 2);
    CHECK(gd_dec_u32x2(b, 7, &a, &c) != 0);
    CHECK_EQ(gd_dec_resize(b, 4, &r, &cl), 0);
    CHECK(gd_dec_resize(b, 2, &r, &cl) != 0);
    struct gd_msg_exit x;
    uint8_t ex[8] = {3, 0, 0, 0, 0, 0, 0, 0};
    CHECK_EQ(gd_dec_exit(ex, 8, &x), 0);
    CHECK_EQ(x.code, 3);
    uint8_t bad_code[8] = {0, 1, 0, 0, 0, 0, 0, 0}; /* 256 */
    CHECK(gd_dec_exit(bad_code, 8, &x) != 0);
    uint8_t bad_sig[8] = {0, 0, 0, 0, 200, 0, 0, 0};
    CHECK(gd_dec_exit(bad_sig, 8, &x) != 0);
    CHECK(gd_dec_exit(ex, 7, &x) != 0);
    struct gd_msg_error er;
    uint8_t eb[12] = {2, 0, 0, 0, 3, 0, 0, 0, 'a', 'b', 'c'};
    CHECK_EQ(gd_dec_error(eb, 11, &er), 0);
    CHECK_EQ(er.message.len, 3);
    CHECK(gd_dec_error(eb, 10, &er) != 0);
}

TEST(encoder_overflow_is_reported)
{
    uint8_t buf[20];
    struct gd_enc e;
    gd_enc_init(&e, buf, sizeof(buf), GD_MSG_PING, 0, 0);
    gd_enc_bytes(&e, "0123456789", 10);
    CHECK(gd_enc_finish(&e) < 0);
    gd_enc_init(&e, buf, 4, GD_MSG_PING, 0, 0);
    CHECK(gd_enc_finish(&e) < 0);
}

TEST(reader_byte_at_a_time)
{
    static uint8_t rb[GD_PROTO_HDR_LEN + GD_PROTO_MAX_BODY];
    struct gd_reader r;
    gd_reader_init(&r, rb, sizeof(rb));
    uint8_t frames[128];
    size_t len = 0;
    for (int i = 0; i < 3; i++) {
        struct gd_enc e;
        gd_enc_init(&e, frames + len, sizeof(frames) - len, GD_MSG_PONG, 0, (uint32_t)i);
        gd_enc_bytes(&e, "abc", (size_t)i);
        len += (size_t)gd_enc_finish(&e);
    }
    int got = 0;
    for (size_t i = 0; i < len; i++) {
        size_t room;
        uint8_t *p = gd_reader_space(&r, &room);
        CHECK(room > 0);
        *p = frames[i];
        gd_reader_commit(&r, 1);
        struct gd_hdr h;
        const uint8_t *body;
        int rc;
        while ((rc = gd_reader_next(&r, &h, &body)) == 1) {
            CHECK_EQ(h.id, got);
            CHECK_EQ(h.len, got);
            got++;
        }
        CHECK_EQ(rc, 0);
    }
    CHECK_EQ(got, 3);
}

TEST(reader_poisoned_by_bad_header)
{
    struct gd_reader r;
    gd_reader_init(&r, big, sizeof(big));
    size_t room;
    uint8_t *p = gd_reader_space(&r, &room);
    gd_hdr_write(p, 99, 0, 0, 0);
    gd_reader_commit(&r, GD_PROTO_HDR_LEN);
    struct gd_hdr h;
    const uint8_t *body;
    CHECK_EQ(gd_reader_next(&r, &h, &body), -EPROTO);
    CHECK_EQ(gd_reader_next(&r, &h, &body), -EPROTO);
}

TEST(reader_max_body_fits)
{
    struct gd_reader r;
    static uint8_t rb[GD_PROTO_HDR_LEN + GD_PROTO_MAX_BODY];
    gd_reader_init(&r, rb, sizeof(rb));
    size_t room;
    uint8_t *p = gd_reader_space(&r, &room);
    CHECK_EQ(room, sizeof(rb));
    gd_hdr_write(p, GD_MSG_PONG, 0, 1, GD_PROTO_MAX_BODY);
    memset(p + GD_PROTO_HDR_LEN, 'x', GD_PROTO_MAX_BODY);
    gd_reader_commit(&r, room);
    struct gd_hdr h;
    const uint8_t *body;
    CHECK_EQ(gd_reader_next(&r, &h, &body), 1);
    CHECK_EQ(h.len, GD_PROTO_MAX_BODY);
}

TEST(reader_skips_to_a_mark)
{
    static uint8_t buf[256];
    struct gd_reader r;
    gd_reader_init(&r, buf, sizeof(buf));
    const uint8_t mark[] = "MARK-0123456789";
    size_t ml = sizeof(mark) - 1;
    /* garbage (the tail of an old frame), the mark split over two reads, then a frame */
    uint8_t in[200];
    size_t n = 0;
    memset(in, 0xee, 40);
    n = 40;
    memcpy(in + n, mark, ml);
    n += ml;
    struct gd_enc e;
    gd_enc_init(&e, in + n, sizeof(in) - n, GD_MSG_PONG, 0, 0);
    gd_enc_bytes(&e, "hi", 2);
    n += (size_t)gd_enc_finish(&e);
    size_t room, cut = 40 + 5;
    memcpy(gd_reader_space(&r, &room), in, cut);
    gd_reader_commit(&r, cut);
    CHECK_EQ(gd_reader_skip_to(&r, mark, ml), 0);
    CHECK(r.len - r.off <= ml - 1); /* garbage dropped, a possible start kept */
    memcpy(gd_reader_space(&r, &room), in + cut, n - cut);
    gd_reader_commit(&r, n - cut);
    CHECK_EQ(gd_reader_skip_to(&r, mark, ml), 1);
    struct gd_hdr h;
    const uint8_t *body;
    CHECK_EQ(gd_reader_next(&r, &h, &body), 1);
    CHECK_EQ(h.type, GD_MSG_PONG);
    CHECK_EQ(h.len, 2);
    CHECK(!memcmp(body, "hi", 2));
    /* a reader full of garbage never fills up while it looks */
    gd_reader_init(&r, buf, sizeof(buf));
    for (int i = 0; i < 100; i++) {
        uint8_t *p = gd_reader_space(&r, &room);
        CHECK(room >= 200);
        memset(p, 'M', 200);
        gd_reader_commit(&r, 200);
        CHECK_EQ(gd_reader_skip_to(&r, mark, ml), 0);
    }
    CHECK_EQ(gd_reader_skip_to(&r, mark, 0), 0);
    CHECK_EQ(gd_reader_skip_to(&r, mark, 65), 0);
}
