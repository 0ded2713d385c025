/* test_snapshot.c - booted snapshots: the file header (untrusted on disk), RESUME's
 * decoder, and the QMP client against a fake QEMU on a socketpair. */
#define _GNU_SOURCE
#include "ctl/proto.h"
#include "test.h"
#include "vm/qmp.h"
#include "vm/snapshot.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

static void sample(struct gd_bootsnap_hdr *h)
{
    memset(h, 0, sizeof(*h));
    for (int i = 0; i < 32; i++)
        h->key[i] = (uint8_t)i, h->sha256[i] = (uint8_t)(255 - i);
    h->stream_len = 81u << 20;
    h->created = 1700000000;
    h->memory_mb = 1024;
    h->cpus = 2;
    h->agent_minor = 2;
    strcpy(h->version, "0.1.0");
    strcpy(h->build_id, "8f1354f4-b5f5-51b7-8c44-c2f87942b5c6");
    strcpy(h->agent, "sandboxd 0.1.0");
}

TEST(snap_header_roundtrip)
{
    struct gd_bootsnap_hdr h, g;
    uint8_t b[GD_BOOTSNAP_HDR_LEN];
    sample(&h);
    gd_bootsnap_hdr_write(b, &h);
    CHECK_EQ(gd_bootsnap_hdr_parse(b, sizeof(b), &g), 0);
    CHECK(!memcmp(g.key, h.key, 32) && !memcmp(g.sha256, h.sha256, 32));
    CHECK_EQ(g.stream_len, h.stream_len);
    CHECK_EQ(g.memory_mb, 1024);
    CHECK_EQ(g.cpus, 2);
    CHECK_STR(g.version, "0.1.0");
    CHECK_STR(g.build_id, h.build_id);
    CHECK_STR(g.agent, "sandboxd 0.1.0");
}

TEST(snap_header_rejects_damage)
{
    struct gd_bootsnap_hdr h, g;
    uint8_t b[GD_BOOTSNAP_HDR_LEN];
    sample(&h);
    gd_bootsnap_hdr_write(b, &h);
    CHECK_EQ(gd_bootsnap_hdr_parse(b, GD_BOOTSNAP_HDR_LEN - 1, &g), -EBADMSG); /* short */
    size_t must[] = {0, 7, 8, 12, 112 + 31, 144 + 79, 224 + 63, 300, 511};
    for (size_t i = 0; i < sizeof(must) / sizeof(must[0]); i++) {
        uint8_t c[GD_BOOTSNAP_HDR_LEN];
        memcpy(c, b, sizeof(c));
        c[must[i]] ^= 0x5a; /* magic, format, length, a string's terminator, padding */
        CHECK_EQ(gd_bootsnap_hdr_parse(c, sizeof(c), &g), -EBADMSG);
    }
    h.stream_len = 0;
    gd_bootsnap_hdr_write(b, &h);
    CHECK_EQ(gd_bootsnap_hdr_parse(b, sizeof(b), &g), -EBADMSG);
    sample(&h);
    h.stream_len = GD_BOOTSNAP_MAX_STREAM + 1;
    gd_bootsnap_hdr_write(b, &h);
    CHECK_EQ(gd_bootsnap_hdr_parse(b, sizeof(b), &g), -EBADMSG);
    sample(&h);
    gd_bootsnap_hdr_write(b, &h);
    b[150] = '\n'; /* a control character in the buildId */
    CHECK_EQ(gd_bootsnap_hdr_parse(b, sizeof(b), &g), -EBADMSG);
}

TEST(resume_decode)
{
    uint8_t buf[GD_PROTO_HDR_LEN + 12 + GD_RESUME_MAX_ENTROPY + 1], rnd[GD_RESUME_MAX_ENTROPY + 1];
    memset(rnd, 7, sizeof(rnd));
    size_t lens[] = {0,  GD_RESUME_MIN_ENTROPY - 1, GD_RESUME_MIN_ENTROPY,
                     64, GD_RESUME_MAX_ENTROPY,     GD_RESUME_MAX_ENTROPY + 1};
    for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
        struct gd_enc e;
        gd_enc_init(&e, buf, sizeof(buf), GD_MSG_RESUME, 0, 0);
        gd_enc_u32(&e, 0);
        gd_enc_u32(&e, 0x17);
        gd_enc_u32(&e, 0x89abcdef);
        gd_enc_bytes(&e, rnd, lens[i]);
        long n = gd_enc_finish(&e);
        CHECK(n > 0);
        struct gd_hdr h;
        CHECK_EQ(gd_hdr_parse(buf, &h), 0);
        struct gd_msg_resume m;
        int ok = lens[i] >= GD_RESUME_MIN_ENTROPY && lens[i] <= GD_RESUME_MAX_ENTROPY;
        CHECK_EQ(gd_dec_resume(buf + GD_PROTO_HDR_LEN, h.len, &m), ok ? 0 : -EBADMSG);
        if (ok) {
            CHECK(m.realtime_ns == ((uint64_t)0x17 << 32 | 0x89abcdef));
            CHECK_EQ(m.entropy_len, lens[i]);
        }
    }
    uint8_t body[12 + 64] = {2}; /* an unknown flag */
    struct gd_msg_resume m;
    CHECK_EQ(gd_dec_resume(body, sizeof(body), &m), -EBADMSG);
    CHECK_EQ(gd_dec_resume(body, 8, &m), -EBADMSG);
}

TEST(resume_new_host_carries_a_token)
{
    uint8_t body[12 + GD_RESUME_TOKEN_LEN + 64] = {GD_RESUME_NEW_HOST};
    for (size_t i = 0; i < GD_RESUME_TOKEN_LEN; i++)
        body[12 + i] = (uint8_t)(0xa0 + i);
    struct gd_msg_resume m;
    CHECK_EQ(gd_dec_resume(body, sizeof(body), &m), 0);
    CHECK(m.token == body + 12);
    CHECK(m.entropy == body + 12 + GD_RESUME_TOKEN_LEN);
    CHECK_EQ(m.entropy_len, 64);
    /* the token comes out of the entropy's room: too little left is refused */
    CHECK_EQ(gd_dec_resume(body, 12 + GD_RESUME_TOKEN_LEN + GD_RESUME_MIN_ENTROPY - 1, &m),
             -EBADMSG);
    CHECK_EQ(gd_dec_resume(body, 12 + 8, &m), -EBADMSG);
    body[0] = 0; /* without the flag there is no token */
    CHECK_EQ(gd_dec_resume(body, sizeof(body), &m), 0);
    CHECK(m.token == NULL);
    CHECK_EQ(m.entropy_len, GD_RESUME_TOKEN_LEN + 64);
}

TEST(qmp_parse_kinds)
{
    struct gd_qmp_msg m;
    cJSON *root;
    const char *g = "{\"QMP\": {\"version\": {}, \"capabilities\": []}}";
    CHECK_EQ(gd__qmp_parse(g, strlen(g), &m, &root), 0);
    CHECK_EQ(m.kind, GD_QMP_GREETING);
    cJSON_Delete(root);
    const char *r = "{\"return\": {}, \"id\": 7}";
    CHECK_EQ(gd__qmp_parse(r, strlen(r), &m, &root), 0);
    CHECK_EQ(m.kind, GD_QMP_RETURN);
    CHECK_EQ(m.id, 7);
    cJSON_Delete(root);
    const char *e = "{\"error\": {\"class\": \"GenericError\", \"desc\": \"no\\nway\"}, \"id\": 3}";
    CHECK_EQ(gd__qmp_parse(e, strlen(e), &m, &root), 0);
    CHECK_EQ(m.kind, GD_QMP_ERROR);
    CHECK_EQ(m.id, 3);
    CHECK_STR(m.text, "GenericError: no | way");
    cJSON_Delete(root);
    const char *v = "{\"event\": \"MIGRATION\", \"data\": {\"status\": \"completed\"}}";
    CHECK_EQ(gd__qmp_parse(v, strlen(v), &m, &root), 0);
    CHECK_EQ(m.kind, GD_QMP_EVENT);
    CHECK_STR(m.text, "MIGRATION");
    cJSON_Delete(root);
    const char *bad[] = {"", "[]", "{", "{\"x\":1}", "{\"return\":{},\"id\":-1}x", "null"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        CHECK_EQ(gd__qmp_parse(bad[i], strlen(bad[i]), &m, &root), -EBADMSG);
        CHECK(root == NULL);
    }
    const char *neg = "{\"return\": {}, \"id\": -4}"; /* not ours: no id */
    CHECK_EQ(gd__qmp_parse(neg, strlen(neg), &m, &root), 0);
    CHECK_EQ(m.id, -1);
    cJSON_Delete(root);
}

/* ---- the client against a fake QEMU ---- */

struct qt {
    int replies, last_status, events, closed, fd_seen;
    char err[256];
};

static void on_reply(gd_qmp *q, int status, const cJSON *ret, const char *err, void *ud)
{
    (void)q;
    (void)ret;
    struct qt *t = ud;
    t->replies++;
    t->last_status = status;
    snprintf(t->err, sizeof(t->err), "%s", err ? err : "");
}

static void on_event(gd_qmp *q, const char *name, const cJSON *data, void *ud)
{
    (void)q;
    struct qt *t = ud;
    if (!strcmp(name, "MIGRATION") &&
        !strcmp(cJSON_GetStringValue(cJSON_GetObjectItem(data, "status")), "completed"))
        t->events++;
}

static void on_closed(void *ud)
{
    ((struct qt *)ud)->closed = 1;
}

/* Reads one line from the fake QEMU's end (running the loop while waiting); the fd that
 * came with it, if any, in *fd. */
static void peer_line(uv_loop_t *loop, int p, char *out, size_t cap, int *fd)
{
    size_t n = 0;
    if (fd)
        *fd = -1;
    for (int spins = 0; spins < 2000; spins++) {
        uv_run(loop, UV_RUN_NOWAIT);
        char c;
        char cbuf[CMSG_SPACE(sizeof(int))];
        struct iovec iov = {&c, 1};
        struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
        mh.msg_control = cbuf;
        mh.msg_controllen = sizeof(cbuf);
        ssize_t r = recvmsg(p, &mh, MSG_DONTWAIT);
        if (r < 0 && errno == EAGAIN) {
            usleep(1000);
            continue;
        }
        CHECK(r == 1);
        struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
        if (cm && cm->cmsg_type == SCM_RIGHTS && fd)
            memcpy(fd, CMSG_DATA(cm), sizeof(int));
        if (c == '\n') {
            out[n] = 0;
            return;
        }
        if (n + 1 < cap)
            out[n++] = c;
    }
    FAIL_AT("no line from the client");
}

static void spin(uv_loop_t *loop, int *flag, int want)
{
    for (int i = 0; i < 2000 && *flag < want; i++) {
        uv_run(loop, UV_RUN_NOWAIT);
        usleep(1000);
    }
    CHECK(*flag >= want);
}

/* A loop and a client on one end of a socketpair; sp[1] plays QEMU. */
static gd_qmp *client_new(uv_loop_t *loop, int sp[2], struct qt *t)
{
    uv_loop_init(loop);
    CHECK_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp), 0);
    memset(t, 0, sizeof(*t));
    gd_qmp *q;
    CHECK_EQ(gd_qmp_new(loop, sp[0], on_event, t, &q), 0);
    return q;
}

TEST(qmp_client_handshake_fd_events)
{
    uv_loop_t loop;
    int sp[2];
    struct qt t;
    gd_qmp *q = client_new(&loop, sp, &t);
    /* queued before the greeting, with an fd: held until capabilities are negotiated */
    int pf[2];
    CHECK_EQ(pipe(pf), 0);
    cJSON *a = cJSON_CreateObject();
    cJSON_AddStringToObject(a, "fdname", "x");
    CHECK_EQ(gd_qmp_cmd(q, "getfd", a, pf[1], on_reply, &t), 0);
    const char *greet = "{\"QMP\": {\"version\": {}}}\n";
    CHECK(write(sp[1], greet, strlen(greet)) > 0);
    char line[512];
    int fd;
    peer_line(&loop, sp[1], line, sizeof(line), NULL);
    CHECK_CONTAINS(line, "\"qmp_capabilities\"");
    CHECK_CONTAINS(line, "\"id\":0");
    CHECK(write(sp[1], "{\"return\": {}, \"id\": 0}\r\n", 25) > 0);
    peer_line(&loop, sp[1], line, sizeof(line), &fd);
    CHECK_CONTAINS(line, "\"execute\":\"getfd\"");
    CHECK_CONTAINS(line, "\"fdname\":\"x\"");
    CHECK(fd >= 0); /* SCM_RIGHTS came with the command */
    CHECK(write(fd, "k", 1) == 1);
    char k;
    CHECK(read(pf[0], &k, 1) == 1 && k == 'k');
    close(fd);
    /* an event, a reply to an unknown id (ignored), then the error reply */
    const char *more = "{\"event\": \"MIGRATION\", \"data\": {\"status\": \"completed\"}}\n"
                       "{\"return\": {}, \"id\": 99}\n"
                       "{\"error\": {\"class\": \"GenericError\", \"desc\": \"bad\"}, \"id\": 1}\n";
    CHECK(write(sp[1], more, strlen(more)) > 0);
    spin(&loop, &t.replies, 1);
    CHECK_EQ(t.events, 1);
    CHECK_EQ(t.last_status, -EIO);
    CHECK_STR(t.err, "GenericError: bad");
    /* a command still pending when QEMU goes away fails with -EPIPE */
    CHECK_EQ(gd_qmp_cmd(q, "stop", NULL, -1, on_reply, &t), 0);
    peer_line(&loop, sp[1], line, sizeof(line), NULL);
    close(sp[1]);
    spin(&loop, &t.replies, 2);
    CHECK_EQ(t.last_status, -EPIPE);
    CHECK_EQ(gd_qmp_cmd(q, "cont", NULL, -1, on_reply, &t), -EPIPE);
    gd_qmp_close(q, on_closed, &t);
    spin(&loop, &t.closed, 1);
    close(pf[0]);
    close(pf[1]);
    CHECK_EQ(uv_loop_close(&loop), 0);
}

TEST(qmp_client_line_too_long)
{
    uv_loop_t loop;
    int sp[2];
    struct qt t;
    gd_qmp *q = client_new(&loop, sp, &t);
    CHECK_EQ(gd_qmp_cmd(q, "stop", NULL, -1, on_reply, &t), 0);
    char *big = malloc(GD_QMP_MAX_LINE + 10);
    memset(big, 'x', GD_QMP_MAX_LINE + 10);
    fcntl(sp[1], F_SETFL, O_NONBLOCK);
    size_t off = 0;
    for (int i = 0; i < 2000 && off < GD_QMP_MAX_LINE + 10 && !t.replies; i++) {
        ssize_t w = write(sp[1], big + off, GD_QMP_MAX_LINE + 10 - off);
        if (w > 0)
            off += (size_t)w;
        uv_run(&loop, UV_RUN_NOWAIT);
        usleep(500);
    }
    spin(&loop, &t.replies, 1);
    CHECK_EQ(t.last_status, -EPIPE);
    CHECK_CONTAINS(t.err, "too long");
    free(big);
    gd_qmp_close(q, on_closed, &t);
    spin(&loop, &t.closed, 1);
    close(sp[1]);
    CHECK_EQ(uv_loop_close(&loop), 0);
}
