/* The host side of the channel against a scripted fake guest on a socketpair:
 * well-formed sessions work; every malformed guest frame closes that VM's channel
 * with a clear error, fails its execs, and leaks nothing (run under ASan/LSan). */
#include "ctl/proto.h"
#include "test.h"
#include "vm/vm.h"

#include <errno.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

struct fx {
    uv_loop_t loop;
    gd_vm *vm;
    int guest; /* our end: we play the guest */
    int ready, exited;
    char reason[1024];
    int exec_done, exec_error, exec_code;
    char out[4096];
    size_t outn;
    char msg[512];
};

static void on_ready(gd_vm *vm, int st, void *ud)
{
    (void)vm;
    struct fx *f = ud;
    f->ready = st == 0 ? 1 : -1;
}

static void on_exit_vm(gd_vm *vm, const char *reason, void *ud)
{
    (void)vm;
    struct fx *f = ud;
    f->exited = 1;
    snprintf(f->reason, sizeof(f->reason), "%s", reason ? reason : "(none)");
}

static void on_out(gd_exec *x, int s, const uint8_t *d, size_t n, void *ud)
{
    (void)x;
    (void)s;
    struct fx *f = ud;
    if (f->outn + n < sizeof(f->out)) {
        memcpy(f->out + f->outn, d, n);
        f->outn += n;
    }
}

static void on_exec_exit(gd_exec *x, const struct gd_exec_result *r, void *ud)
{
    (void)x;
    struct fx *f = ud;
    f->exec_done = 1;
    f->exec_error = r->error;
    f->exec_code = r->exit_code;
    snprintf(f->msg, sizeof(f->msg), "%s", r->message ? r->message : "");
}

static void spin(struct fx *f, int *flag)
{
    for (int i = 0; i < 2000 && !*flag; i++) {
        uv_run(&f->loop, UV_RUN_NOWAIT);
        usleep(500);
    }
    if (!*flag)
        FAIL_AT("timed out waiting for the host");
}

static void gsend(struct fx *f, const void *p, size_t n)
{
    CHECK_EQ(write(f->guest, p, n), (long)n);
}

static void gsend_frame(struct fx *f, uint8_t type, uint8_t flags, uint32_t id, const void *body,
                        size_t n)
{
    uint8_t buf[256];
    CHECK(n + GD_PROTO_HDR_LEN <= sizeof(buf));
    gd_hdr_write(buf, type, flags, id, (uint32_t)n);
    memcpy(buf + GD_PROTO_HDR_LEN, body, n);
    gsend(f, buf, GD_PROTO_HDR_LEN + n);
}

static void hello_minor(struct fx *f, uint16_t major, uint16_t minor)
{
    uint8_t buf[64];
    struct gd_enc e;
    gd_enc_init(&e, buf, sizeof(buf), GD_MSG_HELLO, 0, 0);
    gd_enc_u16(&e, major);
    gd_enc_u16(&e, minor);
    gd_enc_u32(&e, 0);
    gd_enc_str(&e, "fake", 4);
    gsend(f, buf, (size_t)gd_enc_finish(&e));
}

static void hello(struct fx *f, uint16_t major)
{
    hello_minor(f, major, 0);
}

/* Reads one frame the host sent (blocking, with a deadline). */
static int grecv(struct fx *f, struct gd_hdr *h, uint8_t *body, size_t cap)
{
    uint8_t hb[GD_PROTO_HDR_LEN];
    size_t got = 0;
    for (int tries = 0; got < sizeof(hb); tries++) {
        if (tries > 500)
            FAIL_AT("timed out waiting for a frame from the host");
        uv_run(&f->loop, UV_RUN_NOWAIT);
        struct pollfd p = {f->guest, POLLIN, 0};
        if (poll(&p, 1, 10) <= 0)
            continue;
        ssize_t n = read(f->guest, hb + got, sizeof(hb) - got);
        if (n <= 0)
            return -1;
        got += (size_t)n;
    }
    CHECK_EQ(gd_hdr_parse(hb, h), 0);
    CHECK(h->len <= cap);
    got = 0;
    while (got < h->len) {
        ssize_t n = read(f->guest, body + got, h->len - got);
        if (n <= 0)
            return -1;
        got += (size_t)n;
    }
    return 0;
}

static void setup(struct fx *f)
{
    memset(f, 0, sizeof(*f));
    int sp[2];
    CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sp), 0);
    CHECK_EQ(uv_loop_init(&f->loop), 0);
    CHECK_EQ(gd__vm_attach_fd(&f->loop, sp[0], &f->vm, on_ready, on_exit_vm, f), 0);
    f->guest = sp[1];
}

static void teardown(struct fx *f)
{
    if (!f->exited) {
        gd_vm_close(f->vm);
        spin(f, &f->exited);
    }
    uv_run(&f->loop, UV_RUN_DEFAULT);
    gd_vm_free(f->vm);
    close(f->guest);
    CHECK_EQ(uv_loop_close(&f->loop), 0); /* every handle closed */
}

/* HELLO (protocol 1.minor) both ways, then gd_exec_start(o): the EXEC the guest got is
 * decoded into m (strings borrowed from a static buffer). */
static gd_exec *start_exec_opts(struct fx *f, uint16_t minor, const struct gd_exec_opts *o,
                                struct gd_msg_exec *m, uint32_t *id)
{
    hello_minor(f, GD_PROTO_MAJOR, minor);
    spin(f, &f->ready);
    CHECK_EQ(f->ready, 1);
    struct gd_exec_cbs cbs = {.on_output = on_out, .on_exit = on_exec_exit};
    gd_exec *x;
    CHECK_EQ(gd_exec_start(f->vm, o, &cbs, f, &x), 0);
    struct gd_hdr h;
    static uint8_t body[65536];
    CHECK_EQ(grecv(f, &h, body, sizeof(body)), 0);
    CHECK_EQ(h.type, GD_MSG_HELLO); /* host answers our HELLO */
    CHECK_EQ(grecv(f, &h, body, sizeof(body)), 0);
    CHECK_EQ(h.type, GD_MSG_EXEC);
    CHECK_EQ(gd_dec_exec(body, h.len, m, 4), 0);
    *id = h.id;
    return x;
}

static gd_exec *start_exec(struct fx *f, uint32_t window, uint32_t *id)
{
    static const char *argv[] = {"echo", "hi", NULL};
    struct gd_exec_opts o = {.argv = argv, .window = window};
    struct gd_str av[4], ev[4];
    struct gd_msg_exec m = {.argv = av, .env = ev};
    gd_exec *x = start_exec_opts(f, 0, &o, &m, id);
    CHECK_EQ(m.argc, 2);
    CHECK(!memcmp(av[1].p, "hi", 2));
    CHECK_EQ(m.stdout_window, window);
    return x;
}

TEST(host_session_roundtrip)
{
    struct fx f;
    setup(&f);
    uint32_t id;
    start_exec(&f, 1024, &id);
    uint8_t pid[4] = {42, 0, 0, 0};
    gsend_frame(&f, GD_MSG_STARTED, 0, id, pid, 4);
    gsend_frame(&f, GD_MSG_OUTPUT, GD_STREAM_STDOUT, id, "hi\n", 3);
    /* the host delivers the output and returns the consumed credit */
    struct gd_hdr h;
    uint8_t body[64];
    CHECK_EQ(grecv(&f, &h, body, sizeof(body)), 0);
    CHECK_EQ(h.type, GD_MSG_WINDOW);
    CHECK_EQ(h.id, id);
    uint32_t a, b;
    CHECK_EQ(gd_dec_u32x2(body, h.len, &a, &b), 0);
    CHECK_EQ(a, 3);
    CHECK_EQ(b, 0);
    CHECK_EQ(f.outn, 3);
    CHECK(!memcmp(f.out, "hi\n", 3));
    uint8_t ex[8] = {7, 0, 0, 0, 0, 0, 0, 0};
    gsend_frame(&f, GD_MSG_EXIT, 0, id, ex, 8);
    spin(&f, &f.exec_done);
    CHECK_EQ(f.exec_error, 0);
    CHECK_EQ(f.exec_code, 7);
    CHECK_EQ(f.exited, 0);
    teardown(&f);
    CHECK_STR(f.reason, "(none)");
}

TEST(host_signal_death_maps_to_128_plus_n)
{
    struct fx f;
    setup(&f);
    uint32_t id;
    start_exec(&f, 1024, &id);
    uint8_t ex[8] = {0, 0, 0, 0, 9, 0, 0, 0};
    gsend_frame(&f, GD_MSG_EXIT, 0, id, ex, 8);
    spin(&f, &f.exec_done);
    CHECK_EQ(f.exec_code, 137);
    teardown(&f);
}

TEST(host_exec_error_from_guest)
{
    struct fx f;
    setup(&f);
    uint32_t id;
    start_exec(&f, 1024, &id);
    uint8_t buf[128];
    struct gd_enc e;
    gd_enc_init(&e, buf, sizeof(buf), GD_MSG_ERROR, 0, id);
    gd_enc_u32(&e, GD_ERR_EXEC_FAILED);
    gd_enc_str(&e, "nope: No such file or directory\x1b[31m", 36);
    gsend(&f, buf, (size_t)gd_enc_finish(&e));
    spin(&f, &f.exec_done);
    CHECK_EQ(f.exec_error, GD_EXEC_START_FAILED);
    CHECK_EQ(f.exec_code, 127);
    CHECK_STR(f.msg, "nope: No such file or directory"); /* escape sequence stripped */
    CHECK_EQ(f.exited, 0);                               /* the VM lives on */
    teardown(&f);
}

struct bad_case {
    const char *name;
    uint8_t type, flags;
    int use_id; /* 1: the live session id, 0: id 99 */
    uint8_t body[16];
    size_t n;
};

static void malformed(const struct bad_case *c, const char *expect)
{
    struct fx f;
    setup(&f);
    uint32_t id;
    start_exec(&f, 16, &id);
    gsend_frame(&f, c->type, c->flags, c->use_id ? id : 99, c->body, c->n);
    spin(&f, &f.exited);
    CHECK_CONTAINS(f.reason, expect);
    CHECK_EQ(f.exec_done, 1);
    CHECK_EQ(f.exec_error, GD_EXEC_VM_GONE);
    teardown(&f);
}

TEST(host_rejects_malformed_frames)
{
    static const struct bad_case cases[] = {
        {"truncated EXIT", GD_MSG_EXIT, 0, 1, {0}, 7},
        {"EXIT code 300", GD_MSG_EXIT, 0, 1, {0x2c, 1, 0, 0, 0, 0, 0, 0}, 8},
        {"output beyond credit", GD_MSG_OUTPUT, 1, 1, "0123456789abcde", 16},
        {"output bad stream", GD_MSG_OUTPUT, 3, 1, "x", 1},
        {"output unknown session", GD_MSG_OUTPUT, 1, 0, "x", 1},
        {"exit unknown session", GD_MSG_EXIT, 0, 0, {0}, 8},
        {"hello repeated", GD_MSG_HELLO, 0, 0, {1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, 12},
        {"host-only type", GD_MSG_EXEC, 0, 1, {0}, 4},
        {"truncated ERROR", GD_MSG_ERROR, 0, 1, {2, 0, 0, 0, 9, 0, 0, 0, 'a'}, 9},
        {"stdin window overflow", GD_MSG_STDIN_WINDOW, 0, 1, {0xff, 0xff, 0xff, 0x7f}, 4},
        {"pong without ping", GD_MSG_PONG, 0, 0, {0}, 0},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct bad_case c = cases[i];
        if (!strcmp(c.name, "output beyond credit"))
            c.n = 16; /* exactly the window: fine; we then send one more below */
        if (!strcmp(c.name, "output beyond credit")) {
            struct fx f;
            setup(&f);
            uint32_t id;
            start_exec(&f, 16, &id);
            gsend_frame(&f, GD_MSG_OUTPUT, 1, id, "0123456789abcdef", 16);
            gsend_frame(&f, GD_MSG_OUTPUT, 1, id, "g", 1); /* before any grant */
            spin(&f, &f.exited);
            CHECK_CONTAINS(f.reason, "protocol error");
            teardown(&f);
            continue;
        }
        fprintf(stderr, "  case: %s\n", c.name);
        malformed(&c, "protocol error");
    }
}

TEST(host_rejects_bad_headers)
{
    uint8_t h[GD_PROTO_HDR_LEN];
    struct fx f;
    setup(&f);
    uint32_t id;
    start_exec(&f, 16, &id);
    gd_hdr_write(h, GD_MSG_OUTPUT, 1, id, GD_PROTO_MAX_BODY + 1);
    gsend(&f, h, sizeof(h));
    spin(&f, &f.exited);
    CHECK_CONTAINS(f.reason, "oversized");
    CHECK_EQ(f.exec_error, GD_EXEC_VM_GONE);
    teardown(&f);

    setup(&f);
    start_exec(&f, 16, &id);
    gd_hdr_write(h, 77, 0, id, 0);
    gsend(&f, h, sizeof(h));
    spin(&f, &f.exited);
    CHECK_CONTAINS(f.reason, "invalid frame header");
    teardown(&f);
}

TEST(host_rejects_wrong_major_version)
{
    struct fx f;
    setup(&f);
    hello(&f, GD_PROTO_MAJOR + 1);
    spin(&f, &f.exited);
    CHECK_EQ(f.ready, -1);
    CHECK_CONTAINS(f.reason, "speaks protocol 2.0");
    teardown(&f);
}

TEST(host_rejects_frame_before_hello)
{
    struct fx f;
    setup(&f);
    uint8_t ex[8] = {0};
    gsend_frame(&f, GD_MSG_EXIT, 0, 1, ex, 8);
    spin(&f, &f.exited);
    CHECK_CONTAINS(f.reason, "before HELLO");
    teardown(&f);
}

TEST(host_guest_hangup_mid_exec)
{
    struct fx f;
    setup(&f);
    uint32_t id;
    start_exec(&f, 16, &id);
    shutdown(f.guest, SHUT_RDWR);
    spin(&f, &f.exited);
    CHECK_EQ(f.exec_done, 1);
    CHECK_EQ(f.exec_error, GD_EXEC_VM_GONE);
    CHECK_CONTAINS(f.reason, "channel closed");
    teardown(&f);
}

TEST(host_partial_frame_then_hangup)
{
    struct fx f;
    setup(&f);
    uint32_t id;
    start_exec(&f, 16, &id);
    uint8_t h[GD_PROTO_HDR_LEN];
    gd_hdr_write(h, GD_MSG_OUTPUT, 1, id, 10);
    gsend(&f, h, sizeof(h));
    gsend(&f, "abc", 3); /* 7 bytes never arrive */
    shutdown(f.guest, SHUT_RDWR);
    spin(&f, &f.exited);
    CHECK_EQ(f.exec_error, GD_EXEC_VM_GONE);
    teardown(&f);
}

TEST(host_tunnel_session)
{
    struct fx f;
    setup(&f);
    struct gd_exec_opts o = {.connect_port = 8000, .window = 4096, .pty = 1};
    struct gd_str av[4], ev[4];
    struct gd_msg_exec m = {.argv = av, .env = ev};
    uint32_t id;
    gd_exec *x = start_exec_opts(&f, 1, &o, &m, &id);
    CHECK_EQ(m.flags, GD_EXEC_CONNECT | GD_EXEC_STDIN); /* pty ignored */
    CHECK_EQ(m.argc, 1);
    CHECK(av[0].len == 4 && !memcmp(av[0].p, "8000", 4));
    CHECK_EQ(m.stdout_window, 4096);
    /* an EOF before the connection is up needs no credit */
    CHECK_EQ(gd_exec_write(x, NULL, 0, 1), 0);
    struct gd_hdr h;
    uint8_t body[64];
    CHECK_EQ(grecv(&f, &h, body, sizeof(body)), 0);
    CHECK_EQ(h.type, GD_MSG_STDIN);
    CHECK_EQ(h.flags, GD_STDIN_EOF);
    CHECK_EQ(h.len, 0);
    CHECK_EQ(h.id, id);
    uint8_t pid0[4] = {0};
    gsend_frame(&f, GD_MSG_STARTED, 0, id, pid0, 4);
    gsend_frame(&f, GD_MSG_OUTPUT, GD_STREAM_STDOUT, id, "pong", 4);
    uint8_t ex[8] = {0};
    gsend_frame(&f, GD_MSG_EXIT, 0, id, ex, 8);
    spin(&f, &f.exec_done);
    CHECK_EQ(f.exec_error, 0);
    CHECK_EQ(f.exec_code, 0);
    CHECK(f.outn == 4 && !memcmp(f.out, "pong", 4));
    /* bad ports are refused before anything is sent */
    o.connect_port = 65536;
    struct gd_exec_cbs cbs = {.on_exit = on_exec_exit};
    CHECK_EQ(gd_exec_start(f.vm, &o, &cbs, &f, &x), -EINVAL);
    teardown(&f);
}

TEST(host_tunnel_needs_agent_1_1)
{
    struct fx f;
    setup(&f);
    hello_minor(&f, GD_PROTO_MAJOR, 0);
    spin(&f, &f.ready);
    struct gd_exec_opts o = {.connect_port = 8000};
    struct gd_exec_cbs cbs = {.on_exit = on_exec_exit};
    gd_exec *x;
    CHECK_EQ(gd_exec_start(f.vm, &o, &cbs, &f, &x), -ENOTSUP);
    teardown(&f);
}
