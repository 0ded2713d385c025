/* The session control protocol's codec (frames, every JSON message) and the sessions
 * directory (ids, metadata, lookup, stale entries). */
#define _GNU_SOURCE
#include "control/control.h"
#include "test.h"

#include <errno.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static void hdr(uint8_t b[12], unsigned type, unsigned flags, uint32_t id, uint32_t len)
{
    gd_control_hdr_write(b, type, flags, id, len);
}

static int parse(unsigned type, unsigned flags, uint32_t id, uint32_t len, int dir)
{
    uint8_t b[12];
    struct gd_control_hdr h;
    hdr(b, type, flags, id, len);
    return gd_control_hdr_parse(b, dir, &h, NULL);
}

TEST(control_header_roundtrip)
{
    uint8_t b[12];
    struct gd_control_hdr h;
    const char *why;
    hdr(b, GD_CONTROL_OUTPUT, 2, 0xdeadbeef, 1234);
    CHECK_EQ(b[0], 1234 & 0xff);
    CHECK_EQ(gd_control_hdr_parse(b, GD_CONTROL_TO_CLIENT, &h, &why), 0);
    CHECK_EQ(h.type, GD_CONTROL_OUTPUT);
    CHECK_EQ(h.flags, 2);
    CHECK_EQ(h.id, 0xdeadbeef);
    CHECK_EQ(h.len, 1234);
    CHECK_STR(gd_control_type_name(GD_CONTROL_CANCEL), "CANCEL");
    CHECK_STR(gd_control_type_name(99), "unknown");
}

TEST(control_header_rejects)
{
    const int S = GD_CONTROL_TO_SERVER, C = GD_CONTROL_TO_CLIENT;
    CHECK_EQ(parse(GD_CONTROL_EXEC, 0, 1, 10, S), 0);
    CHECK_EQ(parse(0, 0, 1, 10, S), -EPROTO);                 /* unknown type */
    CHECK_EQ(parse(18, 0, 1, 10, S), -EPROTO);                /* unknown type */
    CHECK_EQ(parse(GD_CONTROL_OUTPUT, 1, 1, 10, S), -EPROTO); /* wrong direction */
    CHECK_EQ(parse(GD_CONTROL_EXEC, 0, 1, 10, C), -EPROTO);   /* wrong direction */
    CHECK_EQ(parse(GD_CONTROL_EXEC, 1, 1, 10, S), -EPROTO);   /* flags */
    CHECK_EQ(parse(GD_CONTROL_OUTPUT, 3, 1, 10, C), -EPROTO); /* one stream */
    CHECK_EQ(parse(GD_CONTROL_OUTPUT, 0, 1, 10, C), -EPROTO); /* no stream */
    CHECK_EQ(parse(GD_CONTROL_STDIN, 1, 1, 0, S), 0);         /* EOF alone */
    CHECK_EQ(parse(GD_CONTROL_STDIN, 2, 1, 0, S), -EPROTO);   /* unknown flag */
    CHECK_EQ(parse(GD_CONTROL_EXEC, 0, 0, 10, S), -EPROTO);   /* request id 0 */
    CHECK_EQ(parse(GD_CONTROL_HELLO, 0, 0, 10, S), 0);        /* the connection */
    CHECK_EQ(parse(GD_CONTROL_EXEC, 0, 1, 0, S), -EPROTO);    /* empty JSON */
    CHECK_EQ(parse(GD_CONTROL_EXEC, 0, 1, 256 << 10, S), 0);  /* JSON bound */
    CHECK_EQ(parse(GD_CONTROL_EXEC, 0, 1, (256 << 10) + 1, S), -EMSGSIZE);
    CHECK_EQ(parse(GD_CONTROL_STDIN, 0, 1, 1 << 20, S), 0); /* body bound */
    CHECK_EQ(parse(GD_CONTROL_STDIN, 0, 1, (1 << 20) + 1, S), -EMSGSIZE);
    CHECK_EQ(parse(GD_CONTROL_OUTPUT, 1, 1, (64 << 10) + 1, C), -EMSGSIZE);
    CHECK_EQ(parse(GD_CONTROL_WINDOW, 0, 1, 8, S), 0);
    CHECK_EQ(parse(GD_CONTROL_WINDOW, 0, 1, 4, S), -EPROTO); /* binary size */
    CHECK_EQ(parse(GD_CONTROL_STDIN_WINDOW, 0, 1, 8, C), -EPROTO);
    CHECK_EQ(parse(GD_CONTROL_CANCEL, 0, 1, 0, S), 0);
    CHECK_EQ(parse(GD_CONTROL_CANCEL, 0, 1, 1, S), -EPROTO);
    uint8_t b[12];
    struct gd_control_hdr h;
    const char *why = NULL;
    hdr(b, GD_CONTROL_EXEC, 0, 1, 10);
    b[6] = 1; /* reserved */
    CHECK_EQ(gd_control_hdr_parse(b, S, &h, &why), -EPROTO);
    CHECK_STR(why, "nonzero reserved field");
}

TEST(control_reader_incremental)
{
    static const char j1[] = "{\"version\":1}", j2[] = "{\"argv\":[\"true\"]}";
    uint8_t buf[200];
    size_t n = 0;
    hdr(buf, GD_CONTROL_HELLO, 0, 0, sizeof(j1) - 1);
    memcpy(buf + 12, j1, sizeof(j1) - 1);
    n = 12 + sizeof(j1) - 1;
    hdr(buf + n, GD_CONTROL_EXEC, 0, 7, sizeof(j2) - 1);
    memcpy(buf + n + 12, j2, sizeof(j2) - 1);
    n += 12 + sizeof(j2) - 1;
    hdr(buf + n, GD_CONTROL_CANCEL, 0, 7, 0);
    n += 12;
    for (int bytewise = 0; bytewise < 2; bytewise++) {
        struct gd_control_reader r;
        gd_control_reader_init(&r, GD_CONTROL_TO_SERVER);
        int frames = 0;
        size_t off = 0;
        while (off < n) {
            size_t used, len = bytewise ? 1 : n - off;
            int rc = gd_control_reader_feed(&r, buf + off, len, &used);
            CHECK(rc >= 0);
            off += used;
            if (rc == 1) {
                frames++;
                if (frames == 1)
                    CHECK_STR((char *)r.body, j1); /* NUL-terminated */
                if (frames == 2) {
                    CHECK_EQ(r.h.id, 7);
                    CHECK_STR((char *)r.body, j2);
                }
                if (frames == 3)
                    CHECK_EQ(r.h.type, GD_CONTROL_CANCEL);
            }
        }
        CHECK_EQ(frames, 3);
        gd_control_reader_free(&r);
    }
}

TEST(control_reader_bad_header_is_sticky)
{
    struct gd_control_reader r;
    gd_control_reader_init(&r, GD_CONTROL_TO_SERVER);
    uint8_t b[12];
    size_t used;
    hdr(b, GD_CONTROL_EXEC, 0, 1, 2u << 20);
    CHECK_EQ(gd_control_reader_feed(&r, b, 12, &used), -EMSGSIZE);
    CHECK_STR(r.why, "frame too large");
    hdr(b, GD_CONTROL_CANCEL, 0, 1, 0);
    CHECK(gd_control_reader_feed(&r, b, 12, &used) < 0);
    gd_control_reader_free(&r);
}

#define J(s) s, sizeof(s) - 1

TEST(control_parse_exec)
{
    struct gd_control_exec e;
    char why[200];
    CHECK_EQ(gd_control_parse_exec(J("{\"argv\":[\"ls\",\"-l\"],\"env\":[\"A=1\"],\"cwd\":\"/tmp\","
                                     "\"pty\":true,\"rows\":30,\"cols\":100,\"stdin\":true,"
                                     "\"window\":1000,\"future\":{\"x\":1}}"),
                                   &e, why, sizeof(why)),
             0);
    CHECK_STR(e.argv[0], "ls");
    CHECK_STR(e.argv[1], "-l");
    CHECK(!e.argv[2]);
    CHECK_STR(e.env[0], "A=1");
    CHECK_STR(e.cwd, "/tmp");
    CHECK(e.pty && e.stdin_stream);
    CHECK_EQ(e.rows, 30);
    CHECK_EQ(e.cols, 100);
    CHECK_EQ(e.window, 1000);
    gd_control_exec_free(&e);
    CHECK_EQ(gd_control_parse_exec(J(" {\"shell\":\"echo $HOME\"} \n"), &e, why, sizeof(why)), 0);
    CHECK_STR(e.shell, "echo $HOME");
    CHECK(!e.argv && !e.pty && !e.stdin_stream);
    CHECK_EQ(e.window, GD_CONTROL_DEFAULT_WINDOW);
    CHECK_EQ(e.rows, 24);
    gd_control_exec_free(&e);
    CHECK_EQ(
        gd_control_parse_exec(J("{\"shell\":\"x\",\"window\":4294967295}"), &e, why, sizeof(why)),
        0);
    CHECK_EQ(e.window, GD_CONTROL_MAX_CREDIT); /* clamped */
    gd_control_exec_free(&e);
    static const char *const bad[] = {
        "{}",                                   /* no command */
        "{\"argv\":[]}",                        /* empty argv */
        "{\"argv\":[1]}",                       /* not strings */
        "{\"argv\":\"ls\"}",                    /* not an array */
        "{\"argv\":[\"a\"],\"shell\":\"b\"}",   /* both */
        "{\"shell\":\"a\",\"env\":[\"NOEQ\"]}", /* env without = */
        "{\"shell\":\"a\",\"env\":[\"=V\"]}",   /* empty name */
        "{\"shell\":\"a\",\"rows\":0}",         /* size range */
        "{\"shell\":\"a\",\"cols\":65536}",
        "{\"shell\":\"a\",\"rows\":1.5}",
        "{\"shell\":\"a\",\"pty\":1}", /* not a boolean */
        "{\"shell\":\"a\",\"window\":-1}",
        "{\"shell\":\"a\",\"cwd\":5}",
        "{\"shell\":\"a\"} x", /* trailing bytes */
        "[\"a\"]",             /* not an object */
        "{\"shell\":\"a\"",    /* cut short */
        "",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(*bad); i++) {
        why[0] = 0;
        if (gd_control_parse_exec(bad[i], strlen(bad[i]), &e, why, sizeof(why)) != -EBADMSG)
            FAIL_AT("accepted: %s", bad[i]);
        CHECK(why[0]);
    }
    static const char nul[] = "{\"shell\":\"a\"}\0";
    CHECK_EQ(gd_control_parse_exec(nul, sizeof(nul), &e, why, sizeof(why)), -EBADMSG);
}

TEST(control_parse_small_messages)
{
    char why[200];
    struct gd_control_hello h;
    CHECK_EQ(gd_control_parse_hello(J("{\"version\":1,\"client\":\"t 1\"}"), &h, why, sizeof(why)),
             0);
    CHECK_EQ(h.version, 1);
    CHECK_STR(h.client, "t 1");
    CHECK_EQ(gd_control_parse_hello(J("{\"version\":\"1\"}"), &h, why, sizeof(why)), -EBADMSG);
    CHECK_EQ(gd_control_parse_hello(J("{\"client\":\"x\"}"), &h, why, sizeof(why)), -EBADMSG);
    unsigned rows, cols;
    CHECK_EQ(
        gd_control_parse_resize(J("{\"rows\":40,\"cols\":120}"), &rows, &cols, why, sizeof(why)),
        0);
    CHECK_EQ(rows * 1000 + cols, 40120);
    CHECK_EQ(gd_control_parse_resize(J("{\"rows\":40}"), &rows, &cols, why, sizeof(why)), -EBADMSG);
    long long sig;
    CHECK_EQ(gd_control_parse_int(J("{\"signal\":15}"), "signal", 1, 64, &sig, why, sizeof(why)),
             0);
    CHECK_EQ(sig, 15);
    CHECK_EQ(gd_control_parse_int(J("{\"signal\":65}"), "signal", 1, 64, &sig, why, sizeof(why)),
             -EBADMSG);
    CHECK_CONTAINS(why, "from 1 to 64");
    CHECK_EQ(gd_control_parse_int(J("{\"signal\":0}"), "signal", 1, 64, &sig, why, sizeof(why)),
             -EBADMSG);
    struct gd_control_request q;
    CHECK_EQ(gd_control_parse_request(J("{\"op\":\"logs\",\"follow\":true,\"lines\":5}"), &q, why,
                                      sizeof(why)),
             0);
    CHECK_STR(q.op, "logs");
    CHECK(q.follow && q.lines == 5);
    CHECK_EQ(gd_control_parse_request(J("{\"op\":\"info\"}"), &q, why, sizeof(why)), 0);
    CHECK_EQ(q.lines, 100); /* the default */
    CHECK_EQ(gd_control_parse_request(J("{\"op\":\"expose\",\"listen\":\"127.0.0.1:1\","
                                        "\"guest_port\":80,\"raw\":true}"),
                                      &q, why, sizeof(why)),
             0);
    CHECK_STR(q.listen, "127.0.0.1:1");
    CHECK(q.guest_port == 80 && q.raw);
    CHECK_EQ(gd_control_parse_request(J("{\"op\":7}"), &q, why, sizeof(why)), -EBADMSG);
    CHECK_EQ(
        gd_control_parse_request(J("{\"op\":\"stop\",\"force\":\"yes\"}"), &q, why, sizeof(why)),
        -EBADMSG);
    CHECK_EQ(gd_control_parse_request(J("{\"op\":\"logs\",\"lines\":-1}"), &q, why, sizeof(why)),
             -EBADMSG);
    CHECK_EQ(gd_control_parse_request(J("{\"op\":\"snapshot\",\"name\":\"ck\","
                                        "\"output\":\"/a/b.gdsnap\"}"),
                                      &q, why, sizeof(why)),
             0);
    CHECK_STR(q.name, "ck");
    CHECK_STR(q.output, "/a/b.gdsnap");
    CHECK_EQ(gd_control_parse_request(J("{\"op\":\"snapshot\",\"name\":1}"), &q, why, sizeof(why)),
             -EBADMSG);
    char long_name[300];
    snprintf(long_name, sizeof(long_name), "{\"op\":\"snapshot\",\"name\":\"%0200d\"}", 0);
    CHECK_EQ(gd_control_parse_request(long_name, strlen(long_name), &q, why, sizeof(why)),
             -EBADMSG);
    CHECK_CONTAINS(why, "\"name\"");
}

TEST(control_parse_transfers)
{
    char why[200];
    struct gd_control_xfer x;
    CHECK_EQ(gd_control_parse_put(J("{\"path\":\"/tmp/x\",\"mode\":420,\"mtime\":1700000000}"), &x,
                                  why, sizeof(why)),
             0);
    CHECK_STR(x.path, "/tmp/x");
    CHECK(x.has_mode && x.mode == 0644 && x.has_mtime && x.mtime == 1700000000 && !x.tar);
    char *enc = gd_control_encode_xfer(&x, 0);
    gd_control_xfer_free(&x);
    CHECK_EQ(gd_control_parse_put(enc, strlen(enc), &x, why, sizeof(why)), 0);
    CHECK(x.mode == 0644 && x.mtime == 1700000000);
    gd_control_xfer_free(&x);
    free(enc);
    CHECK_EQ(gd_control_parse_put(J("{\"path\":\"/d\",\"tar\":true}"), &x, why, sizeof(why)), 0);
    CHECK(x.tar && !x.has_mode && !x.has_mtime);
    gd_control_xfer_free(&x);
    CHECK_EQ(gd_control_parse_put(J("{\"path\":\"\"}"), &x, why, sizeof(why)), -EBADMSG);
    CHECK_EQ(gd_control_parse_put(J("{\"path\":\"/x\",\"mode\":4096}"), &x, why, sizeof(why)),
             -EBADMSG);
    CHECK_EQ(gd_control_parse_put(J("{\"path\":\"/x\",\"mtime\":1e300}"), &x, why, sizeof(why)),
             -EBADMSG);
    CHECK_EQ(gd_control_parse_get(J("{\"path\":\"/x\",\"tar\":true,\"window\":65536}"), &x, why,
                                  sizeof(why)),
             0);
    CHECK(x.tar && x.window == 65536);
    gd_control_xfer_free(&x);
    CHECK_EQ(gd_control_parse_get(J("{\"tar\":true}"), &x, why, sizeof(why)), -EBADMSG);
}

TEST(control_client_side_messages)
{
    char why[200], code[64], msg[200];
    long long pid;
    CHECK_EQ(
        gd_control_parse_int(J("{\"pid\":42}"), "pid", 0, 4294967295LL, &pid, why, sizeof(why)), 0);
    CHECK_EQ(pid, 42);
    struct gd_control_exit e;
    char *t = gd_control_encode_exit(137, 9, NULL);
    CHECK_EQ(gd_control_parse_exit(t, strlen(t), &e, why, sizeof(why)), 0);
    CHECK(e.exit_code == 137 && e.signal == 9 && !e.error[0]);
    free(t);
    t = gd_control_encode_exit(127, 0, "no such command");
    CHECK_EQ(gd_control_parse_exit(t, strlen(t), &e, why, sizeof(why)), 0);
    CHECK_STR(e.error, "no such command");
    free(t);
    CHECK_EQ(gd_control_parse_exit(J("{\"exit_code\":256}"), &e, why, sizeof(why)), -EBADMSG);
    t = gd_control_encode_error("busy", "too many");
    CHECK_EQ(gd_control_parse_error(t, strlen(t), code, sizeof(code), msg, sizeof(msg)), 0);
    CHECK_STR(code, "busy");
    CHECK_STR(msg, "too many");
    free(t);
    cJSON *o = NULL;
    CHECK_EQ(gd_control_parse_reply(J("{\"ok\":false,\"error\":\"x\"}"), &o, why, sizeof(why)), 0);
    cJSON_Delete(o);
    CHECK_EQ(gd_control_parse_reply(J("{\"error\":\"x\"}"), &o, why, sizeof(why)), -EBADMSG);
    CHECK_EQ(gd_control_parse_server_hello(J("{\"version\":1,\"session\":{\"id\":\"x\"}}"), &o, why,
                                           sizeof(why)),
             0);
    cJSON_Delete(o);
    CHECK_EQ(gd_control_parse_server_hello(J("{\"version\":1}"), &o, why, sizeof(why)), -EBADMSG);
    /* an EXEC encoded by the client parses back the same */
    const char *argv[] = {"printf", "%s|", "a b", "", NULL}, *env[] = {"K=V", NULL};
    struct gd_control_exec x = {.argv = argv,
                                .env = env,
                                .cwd = "/w",
                                .pty = 1,
                                .rows = 10,
                                .cols = 20,
                                .stdin_stream = 1,
                                .window = 77},
                           y;
    t = gd_control_encode_exec(&x);
    CHECK_EQ(gd_control_parse_exec(t, strlen(t), &y, why, sizeof(why)), 0);
    CHECK_STR(y.argv[2], "a b");
    CHECK_STR(y.argv[3], "");
    CHECK_STR(y.env[0], "K=V");
    CHECK(y.pty && y.stdin_stream && y.rows == 10 && y.cols == 20 && y.window == 77);
    gd_control_exec_free(&y);
    free(t);
}

/* ---- sessions ---- */

static char *tmpdir(void)
{
    static char d[] = "/tmp/gd-sess-XXXXXX";
    CHECK(mkdtemp(d));
    return d;
}

static void fill(struct gd_session *s, const char *dir, const char *name, long pid)
{
    memset(s, 0, sizeof(*s));
    CHECK_EQ(gd_session_uuid(s->id), 0);
    snprintf(s->name, sizeof(s->name), "%s", name);
    s->pid = pid;
    CHECK_EQ(gd_session_pid_start(pid, &s->pid_start), 0);
    s->created = 1700000000;
    snprintf(s->image, sizeof(s->image), "/img");
    snprintf(s->build_id, sizeof(s->build_id), "b-1");
    snprintf(s->socket, sizeof(s->socket), "%s/%s.sock", dir, s->id);
    snprintf(s->log, sizeof(s->log), "%s/%s.log", dir, s->id);
}

TEST(session_ids_and_names)
{
    char a[37], b[37];
    CHECK_EQ(gd_session_uuid(a), 0);
    CHECK_EQ(gd_session_uuid(b), 0);
    CHECK_EQ(strlen(a), 36);
    CHECK(strcmp(a, b));
    CHECK(a[8] == '-' && a[13] == '-' && a[14] == '4' && a[18] == '-' && a[23] == '-');
    CHECK(strchr("89ab", a[19]));
    CHECK(gd_session_name_ok("web-1"));
    CHECK(gd_session_name_ok("a.b_c"));
    CHECK(!gd_session_name_ok(""));
    CHECK(!gd_session_name_ok("-x"));
    CHECK(!gd_session_name_ok("a/b"));
    CHECK(!gd_session_name_ok("a b"));
    unsigned long long st;
    CHECK_EQ(gd_session_pid_start(getpid(), &st), 0);
    CHECK(st > 0);
}

TEST(session_dir_is_private)
{
    char *d = tmpdir();
    setenv("XDG_RUNTIME_DIR", d, 1);
    chmod(d, 0755);
    char out[1024];
    CHECK_EQ(gd_session_dir(out, sizeof(out)), 0);
    CHECK_CONTAINS(out, "/gondolin/sessions");
    struct stat st;
    CHECK_EQ(stat(out, &st), 0);
    CHECK_EQ(st.st_mode & 07777, 0700);
    chmod(out, 0755); /* widened by someone: put back */
    CHECK_EQ(gd_session_dir(out, sizeof(out)), 0);
    CHECK_EQ(stat(out, &st), 0);
    CHECK_EQ(st.st_mode & 07777, 0700);
}

TEST(session_write_read_list_find)
{
    char *d = tmpdir();
    struct gd_session a, b, c, r;
    fill(&a, d, "web", getpid());
    fill(&b, d, "", getpid());
    CHECK_EQ(gd_session_write(d, &a), 0);
    CHECK_EQ(gd_session_write(d, &b), 0);
    char p[1200];
    snprintf(p, sizeof(p), "%s/%s.json", d, a.id);
    struct gd_err err = {{0}};
    CHECK_EQ(gd_session_read(p, &r, &err), 0);
    CHECK_STR(r.id, a.id);
    CHECK_STR(r.name, "web");
    CHECK_EQ(r.pid, getpid());
    CHECK_EQ(r.pid_start, a.pid_start);
    CHECK_STR(r.socket, a.socket);
    CHECK(gd_session_alive(&r));
    /* a dead supervisor, and one whose pid was reused (another start time) */
    pid_t dead = fork();
    if (!dead)
        _exit(0);
    waitpid(dead, NULL, 0);
    fill(&c, d, "gone", getpid());
    c.pid = dead;
    CHECK_EQ(gd_session_write(d, &c), 0);
    struct gd_session e;
    fill(&e, d, "reused", getpid());
    e.pid_start++;
    CHECK_EQ(gd_session_write(d, &e), 0);
    snprintf(p, sizeof(p), "%s/%s.log", d, c.id);
    FILE *f = fopen(p, "w");
    fclose(f);
    CHECK_EQ(gd_session_find(d, "gone", &r, &err), -ENOENT); /* stale: not found */
    struct gd_session *v;
    size_t n;
    CHECK_EQ(gd_session_list(d, 1, &v, &n), 0);
    CHECK_EQ(n, 2);
    free(v);
    CHECK(access(p, F_OK) != 0); /* pruned: its files are gone */
    snprintf(p, sizeof(p), "%s/%s.json", d, e.id);
    CHECK(access(p, F_OK) != 0);
    /* lookup: full id, name, unique prefix, ambiguous prefix, nothing */
    CHECK_EQ(gd_session_find(d, a.id, &r, &err), 0);
    CHECK_STR(r.id, a.id);
    CHECK_EQ(gd_session_find(d, "web", &r, &err), 0);
    CHECK_STR(r.id, a.id);
    char pre[16];
    size_t k = 0;
    while (a.id[k] == b.id[k])
        k++;
    snprintf(pre, sizeof(pre), "%.*s", (int)k + 1, b.id);
    CHECK_EQ(gd_session_find(d, pre, &r, &err), 0);
    CHECK_STR(r.id, b.id);
    /* two sessions whose ids share a prefix */
    struct gd_session g = b;
    memcpy(g.id, b.id, 36);
    g.id[35] = g.id[35] == 'a' ? 'b' : 'a';
    CHECK_EQ(gd_session_write(d, &g), 0);
    snprintf(pre, sizeof(pre), "%.20s", b.id);
    CHECK_EQ(gd_session_find(d, pre, &r, &err), -EEXIST);
    CHECK_CONTAINS(err.msg, "ambiguous");
    CHECK_EQ(gd_session_find(d, "nope", &r, &err), -ENOENT);
    CHECK_CONTAINS(err.msg, "no session 'nope'");
    /* a file that is not a session is ignored */
    snprintf(p, sizeof(p), "%s/%s.json", d, "00000000-0000-4000-8000-000000000000");
    f = fopen(p, "w");
    fputs("{nope", f);
    fclose(f);
    CHECK_EQ(gd_session_list(d, 0, &v, &n), 0);
    CHECK_EQ(n, 3);
    free(v);
}
