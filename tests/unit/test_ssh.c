/* test_ssh.c - the SSH egress parsers (core/ssh): known_hosts lines and lookups (every
 * status, ports, patterns, hashed entries made here with OpenSSL and one made by
 * ssh-keygen -H, skipped lines and their notes), the strict git command parser, the
 * proxy's host key refusals (no host path for the guest) and its log rate limit. */
#define _GNU_SOURCE
#include "ssh/ssh.h"
#include "ssh/ssh_int.h"
#include "test.h"

#include <errno.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <unistd.h>

/* ---- known_hosts helpers ---- */

static size_t put_str(unsigned char *b, const void *s, size_t l)
{
    b[0] = 0, b[1] = 0, b[2] = (unsigned char)(l >> 8), b[3] = (unsigned char)l;
    memcpy(b + 4, s, l);
    return 4 + l;
}

/* A wire-format public key of a type, its key material 32 bytes of `fill`: ed25519
 * string(type) string(key); ECDSA string(type) string(curve) string(point); RSA
 * string(type) string(e) string(n). */
static size_t make_blob(unsigned char *b, const char *type, unsigned char fill)
{
    unsigned char k[32];
    memset(k, fill, 32);
    size_t n = put_str(b, type, strlen(type));
    if (!strncmp(type, "ecdsa-sha2-", 11))
        n += put_str(b + n, type + 11, strlen(type + 11));
    if (!strcmp(type, "ssh-rsa"))
        n += put_str(b + n, "\x01\x00\x01", 3);
    return n + put_str(b + n, k, 32);
}

static const char *b64(const unsigned char *p, size_t n)
{
    static char out[8][512];
    static int k;
    char *o = out[k++ % 8];
    EVP_EncodeBlock((unsigned char *)o, p, (int)n);
    return o;
}

/* The base64 field of a key line. */
static const char *key64(const char *type, unsigned char fill)
{
    unsigned char b[128];
    return b64(b, make_blob(b, type, fill));
}

static gd_ssh_known_hosts *kh_of(const char *text)
{
    gd_ssh_known_hosts *kh = gd_ssh_known_hosts_new();
    struct gd_err err = {{0}};
    CHECK(kh);
    if (gd_ssh_known_hosts_add(kh, "kh", text, strlen(text), &err))
        FAIL_AT("add: %s", err.msg);
    return kh;
}

static struct gd_ssh_kh_result check(gd_ssh_known_hosts *kh, const char *host, unsigned port,
                                     const char *type, unsigned char fill)
{
    unsigned char b[128];
    struct gd_ssh_kh_result r;
    size_t n = make_blob(b, type, fill);
    CHECK_EQ(gd_ssh_known_hosts_check(kh, host, port, type, b, n, &r), 0);
    return r;
}

#define STATUS(kh, host, port, type, fill) (check(kh, host, port, type, fill).status)

enum { KNOWN = GD_SSH_KH_KNOWN, UNKNOWN = GD_SSH_KH_UNKNOWN, CHANGED = GD_SSH_KH_CHANGED };

/* Lookups of ssh-ed25519 keys and the status each must get. */
struct query {
    const char *host;
    unsigned port;
    unsigned char fill;
    int want;
};

static void expect_all(gd_ssh_known_hosts *kh, const struct query *q, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        int got = STATUS(kh, q[i].host, q[i].port, "ssh-ed25519", q[i].fill);
        if (got != q[i].want)
            FAIL_AT("%s port %u key %u: status %d, expected %d", q[i].host, q[i].port, q[i].fill,
                    got, q[i].want);
    }
}

#define EXPECT(kh, ...)                                                                            \
    do {                                                                                           \
        const struct query q_[] = {__VA_ARGS__};                                                   \
        expect_all(kh, q_, sizeof(q_) / sizeof(q_[0]));                                            \
    } while (0)

TEST(ssh_kh_statuses)
{
    char text[2048];
    snprintf(text, sizeof(text),
             "# a comment \001 with a control byte\n"
             "\n"
             "   # indented comment\n"
             "git.test ssh-ed25519 %s the comment\n"
             "other.test ssh-ed25519 %s\n"
             "other.test ecdsa-sha2-nistp256 %s\n"
             "@revoked bad.test ssh-ed25519 %s\n",
             key64("ssh-ed25519", 1), key64("ssh-ed25519", 2), key64("ecdsa-sha2-nistp256", 3),
             key64("ssh-ed25519", 9));
    gd_ssh_known_hosts *kh = kh_of(text);
    struct gd_ssh_kh_result r = check(kh, "git.test", 22, "ssh-ed25519", 1);
    CHECK_EQ(r.status, GD_SSH_KH_KNOWN);
    CHECK_STR(r.file, "kh");
    CHECK_EQ(r.line, 4);
    CHECK_EQ(r.types, GD_SSH_KEY_ED25519);
    r = check(kh, "git.test", 22, "ssh-ed25519", 7);
    CHECK_EQ(r.status, GD_SSH_KH_CHANGED);
    CHECK_EQ(r.line, 4);
    r = check(kh, "nowhere.test", 22, "ssh-ed25519", 1);
    CHECK_EQ(r.status, GD_SSH_KH_UNKNOWN);
    CHECK(r.file == NULL && r.line == 0 && r.types == 0);
    r = check(kh, "bad.test", 22, "ssh-ed25519", 9);
    CHECK_EQ(r.status, GD_SSH_KH_REVOKED);
    CHECK_EQ(r.line, 7);
    /* several types for one host: each is checked against its own lines */
    CHECK_EQ(STATUS(kh, "other.test", 22, "ecdsa-sha2-nistp256", 3), GD_SSH_KH_KNOWN);
    CHECK_EQ(STATUS(kh, "other.test", 22, "ssh-ed25519", 2), GD_SSH_KH_KNOWN);
    CHECK_EQ(STATUS(kh, "other.test", 22, "ecdsa-sha2-nistp256", 2), GD_SSH_KH_CHANGED);
    CHECK_EQ(check(kh, "other.test", 22, "ssh-ed25519", 2).types,
             GD_SSH_KEY_ED25519 | GD_SSH_KEY_ECDSA256);
    CHECK_EQ(gd_ssh_known_hosts_skipped(kh), 0);
    gd_ssh_known_hosts_free(kh);
}

TEST(ssh_kh_other_type_only_is_unknown_with_types)
{
    /* OpenSSH: a key of a type the file does not list for the host is "new" (with a
     * warning that other types are known), not "changed" */
    char text[512];
    snprintf(text, sizeof(text), "git.test ssh-rsa %s\n", key64("ssh-rsa", 1));
    gd_ssh_known_hosts *kh = kh_of(text);
    struct gd_ssh_kh_result r = check(kh, "git.test", 22, "ssh-ed25519", 1);
    CHECK_EQ(r.status, GD_SSH_KH_UNKNOWN);
    CHECK_EQ(r.types, GD_SSH_KEY_RSA);
    CHECK(r.file == NULL);
    /* every supported type is parsed */
    const char *types[] = {"ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
                           "ecdsa-sha2-nistp521", "ssh-rsa"};
    for (int i = 0; i < 5; i++) {
        snprintf(text, sizeof(text), "h.test %s %s\n", types[i], key64(types[i], 5));
        gd_ssh_known_hosts *k = kh_of(text);
        CHECK_EQ(STATUS(k, "h.test", 22, types[i], 5), GD_SSH_KH_KNOWN);
        CHECK_EQ(gd_ssh_key_type_parse(types[i]), 1 << i);
        CHECK_STR(gd_ssh_key_type_name(1 << i), types[i]);
        gd_ssh_known_hosts_free(k);
    }
    gd_ssh_known_hosts_free(kh);
}

TEST(ssh_kh_ports)
{
    char text[1024];
    const char *k = key64("ssh-ed25519", 1);
    snprintf(text, sizeof(text), "[git.test]:2222 ssh-ed25519 %s\nplain.test ssh-ed25519 %s\n", k,
             k);
    gd_ssh_known_hosts *kh = kh_of(text);
    EXPECT(kh, {"git.test", 2222, 1, KNOWN}, {"git.test", 22, 1, UNKNOWN},
           {"git.test", 2223, 1, UNKNOWN}, {"git.test", 2222, 4, CHANGED});
    /* a bare name is port 22 only */
    EXPECT(kh, {"plain.test", 22, 1, KNOWN}, {"plain.test", 2222, 1, UNKNOWN});
    gd_ssh_known_hosts_free(kh);
}

TEST(ssh_kh_patterns)
{
    char text[2048];
    const char *k = key64("ssh-ed25519", 1);
    snprintf(text, sizeof(text),
             "a.test,*.wild.test,!evil.wild.test,10.0.0.?,[*.p.test]:2222 ssh-ed25519 %s\n"
             "!neg-only.test ssh-ed25519 %s\n",
             k, k);
    gd_ssh_known_hosts *kh = kh_of(text);
    EXPECT(kh, {"a.test", 22, 1, KNOWN}, {"A.TEST", 22, 1, KNOWN}, {"x.wild.test", 22, 1, KNOWN},
           {"x.y.wild.test", 22, 1, KNOWN}, {"wild.test", 22, 1, UNKNOWN},
           {"10.0.0.7", 22, 1, KNOWN}, {"10.0.0.17", 22, 1, UNKNOWN}, {"x.p.test", 2222, 1, KNOWN},
           {"x.p.test", 22, 1, UNKNOWN});
    /* negation: the line does not apply at all (not even "changed") */
    EXPECT(kh, {"evil.wild.test", 22, 1, UNKNOWN}, {"evil.wild.test", 22, 2, UNKNOWN},
           {"neg-only.test", 22, 1, UNKNOWN});
    /* a line for another host does not match: no prefix, suffix or substring */
    EXPECT(kh, {"a.test.evil", 22, 1, UNKNOWN}, {"xa.test", 22, 1, UNKNOWN},
           {"b.test", 22, 2, UNKNOWN});
    gd_ssh_known_hosts_free(kh);
}

TEST(ssh_kh_revoked_wins)
{
    char a[512], b[512];
    const char *k = key64("ssh-ed25519", 1);
    snprintf(a, sizeof(a), "git.test ssh-ed25519 %s\n", k);
    /* revoked in a later file, under another pattern: still refused (stricter than
     * OpenSSH, which applies @revoked to the hosts the line names) */
    snprintf(b, sizeof(b), "@revoked elsewhere.test ssh-ed25519 %s\n", k);
    gd_ssh_known_hosts *kh = kh_of(a);
    struct gd_err err = {{0}};
    CHECK_EQ(STATUS(kh, "git.test", 22, "ssh-ed25519", 1), GD_SSH_KH_KNOWN);
    CHECK_EQ(gd_ssh_known_hosts_add(kh, "second", b, strlen(b), &err), 0);
    struct gd_ssh_kh_result r = check(kh, "git.test", 22, "ssh-ed25519", 1);
    CHECK_EQ(r.status, GD_SSH_KH_REVOKED);
    CHECK_STR(r.file, "second");
    CHECK_EQ(r.line, 1);
    /* another key of the host is unaffected */
    CHECK_EQ(STATUS(kh, "git.test", 22, "ssh-ed25519", 2), GD_SSH_KH_CHANGED);
    gd_ssh_known_hosts_free(kh);
}

TEST(ssh_kh_cert_authority_is_not_a_host_key)
{
    char text[512];
    snprintf(text, sizeof(text), "@cert-authority git.test ssh-ed25519 %s\n",
             key64("ssh-ed25519", 1));
    gd_ssh_known_hosts *kh = kh_of(text);
    struct gd_ssh_kh_result r = check(kh, "git.test", 22, "ssh-ed25519", 1);
    CHECK_EQ(r.status, GD_SSH_KH_UNKNOWN);
    CHECK_EQ(r.types, 0);
    CHECK_EQ(gd_ssh_known_hosts_skipped(kh), 0);
    gd_ssh_known_hosts_free(kh);
}

TEST(ssh_kh_crlf_and_tabs)
{
    char text[1024];
    const char *k = key64("ssh-ed25519", 1);
    snprintf(text, sizeof(text),
             "# dos\r\n\r\ngit.test\tssh-ed25519\t%s\r\nb.test ssh-ed25519 %s\r", k, k);
    gd_ssh_known_hosts *kh = kh_of(text);
    CHECK_EQ(STATUS(kh, "git.test", 22, "ssh-ed25519", 1), GD_SSH_KH_KNOWN);
    CHECK_EQ(STATUS(kh, "b.test", 22, "ssh-ed25519", 1), GD_SSH_KH_KNOWN);
    CHECK_EQ(gd_ssh_known_hosts_skipped(kh), 0);
    gd_ssh_known_hosts_free(kh);
}

TEST(ssh_kh_long_line_skipped)
{
    size_t big = GD_SSH_KH_MAX_LINE + 10;
    const char *k = key64("ssh-ed25519", 1);
    char *text = malloc(big + 1024);
    CHECK(text);
    size_t n = (size_t)sprintf(text, "first.test ssh-ed25519 %s\n", k);
    n += (size_t)sprintf(text + n, "long.test ssh-ed25519 %s ", k);
    memset(text + n, 'x', big);
    n += big;
    n += (size_t)sprintf(text + n, "\nafter.test ssh-ed25519 %s\n", k);
    gd_ssh_known_hosts *kh = gd_ssh_known_hosts_new();
    struct gd_err err = {{0}};
    CHECK_EQ(gd_ssh_known_hosts_add(kh, "big", text, n, &err), 0);
    CHECK_EQ(gd_ssh_known_hosts_skipped(kh), 1);
    CHECK_STR(gd_ssh_known_hosts_note(kh, 0), "big:2: line longer than 65536 bytes");
    CHECK(gd_ssh_known_hosts_note(kh, 1) == NULL);
    CHECK_EQ(STATUS(kh, "long.test", 22, "ssh-ed25519", 1), GD_SSH_KH_UNKNOWN);
    CHECK_EQ(STATUS(kh, "first.test", 22, "ssh-ed25519", 1), GD_SSH_KH_KNOWN);
    CHECK_EQ(check(kh, "after.test", 22, "ssh-ed25519", 1).line, 3);
    gd_ssh_known_hosts_free(kh);
    free(text);
}

/* A hashed host field as ssh-keygen -H writes it, for "host" or "[host]:port". */
static void hashed(char *out, size_t cap, const char *name)
{
    unsigned char salt[20], mac[20];
    unsigned int ml = 0;
    CHECK_EQ(RAND_bytes(salt, 20), 1);
    CHECK(HMAC(EVP_sha1(), salt, 20, (const unsigned char *)name, strlen(name), mac, &ml));
    CHECK_EQ(ml, 20);
    snprintf(out, cap, "|1|%s|%s", b64(salt, 20), b64(mac, 20));
}

TEST(ssh_kh_hashed_generated)
{
    char h1[128], h2[128], text[1024];
    hashed(h1, sizeof(h1), "git.test");
    hashed(h2, sizeof(h2), "[git.test]:2222");
    const char *k = key64("ssh-ed25519", 1);
    snprintf(text, sizeof(text), "%s ssh-ed25519 %s\n%s ssh-ed25519 %s\n", h1, k, h2,
             key64("ssh-ed25519", 2));
    gd_ssh_known_hosts *kh = kh_of(text);
    EXPECT(kh, {"git.test", 22, 1, KNOWN}, {"GIT.test", 22, 1, KNOWN}, {"git.test", 22, 2, CHANGED},
           {"git.test", 2222, 2, KNOWN}, {"git.test", 2222, 1, CHANGED},
           {"git.tes", 22, 1, UNKNOWN}, {"git.test", 2223, 1, UNKNOWN});
    gd_ssh_known_hosts_free(kh);
}

/* Made on a Debian machine: ssh-keygen -t ed25519, a line "git.test,[git.test]:2222 KEY",
 * then ssh-keygen -H (one hashed line per name). */
#define VEC_KEY "AAAAC3NzaC1lZDI1NTE5AAAAIDj8J3UYb3mhHqT3PwDDC/PodwcUwiMcer837E0I/GDH"
static const char vector[] =
    "|1|Gitot3Pm1Jc2mbVfaDbNQJ39bUo=|mv2LWbeyyokMXp6OfoqdJx+eu1Y= ssh-ed25519 " VEC_KEY "\n"
    "|1|6G3Zp7yEoCb0m42DH7wNUK5LPfM=|c2sqe3gIKKamtH5RdjDePXLBlEs= ssh-ed25519 " VEC_KEY "\n";

TEST(ssh_kh_hashed_ssh_keygen_vector)
{
    unsigned char blob[64];
    long n = gd_ssh_base64_decode(VEC_KEY, strlen(VEC_KEY), blob, sizeof(blob));
    CHECK_EQ(n, 51);
    gd_ssh_known_hosts *kh = kh_of(vector);
    struct gd_ssh_kh_result r;
    CHECK_EQ(gd_ssh_known_hosts_check(kh, "git.test", 22, "ssh-ed25519", blob, 51, &r), 0);
    CHECK_EQ(r.status, GD_SSH_KH_KNOWN);
    CHECK_EQ(r.line, 1);
    CHECK_EQ(gd_ssh_known_hosts_check(kh, "git.test", 2222, "ssh-ed25519", blob, 51, &r), 0);
    CHECK_EQ(r.status, GD_SSH_KH_KNOWN);
    CHECK_EQ(r.line, 2);
    CHECK_EQ(gd_ssh_known_hosts_check(kh, "git.test2", 22, "ssh-ed25519", blob, 51, &r), 0);
    CHECK_EQ(r.status, GD_SSH_KH_UNKNOWN);
    blob[50] ^= 1;
    CHECK_EQ(gd_ssh_known_hosts_check(kh, "git.test", 22, "ssh-ed25519", blob, 51, &r), 0);
    CHECK_EQ(r.status, GD_SSH_KH_CHANGED);
    /* a shorter blob (a prefix of the key) is another key */
    CHECK_EQ(gd_ssh_known_hosts_check(kh, "git.test", 22, "ssh-ed25519", blob, 50, &r), 0);
    CHECK_EQ(r.status, GD_SSH_KH_CHANGED);
    gd_ssh_known_hosts_free(kh);
}

TEST(ssh_kh_malformed_lines_skipped)
{
    char text[4096];
    const char *k = key64("ssh-ed25519", 1);
    size_t kl = strlen(k);
    /* a key whose last base64 digit has an unused bit set */
    static const char alpha[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char bad_pad[256];
    snprintf(bad_pad, sizeof(bad_pad), "%s", key64("ecdsa-sha2-nistp256", 1));
    size_t bl = strlen(bad_pad);
    CHECK(bad_pad[bl - 1] == '=' && bad_pad[bl - 2] != '=');
    bad_pad[bl - 2] = alpha[(strchr(alpha, bad_pad[bl - 2]) - alpha) | 1];
    unsigned char lb[128];
    size_t ln = make_blob(lb, "ssh-ed25519", 1);
    lb[ln++] = 0;
    const char *long_key = b64(lb, ln);
    snprintf(text, sizeof(text),
             "a.test ssh-ed25519 %s\n"                   /* 1 ok */
             "@marker a.test ssh-ed25519 %s\n"           /* 2 */
             "a.test\n"                                  /* 3 */
             "a.test ssh-ed25519\n"                      /* 4 */
             "a.test ssh-dss %s\n"                       /* 5 */
             "a.test ssh-ed25519 !!notbase64!!\n"        /* 6 */
             "a.test ssh-rsa %s\n"                       /* 7: blob says ssh-ed25519 */
             "a.test,,b.test ssh-ed25519 %s\n"           /* 8 */
             "|1|c2FsdA==|aGFzaA== ssh-ed25519 %s\n"     /* 9: salt not 20 bytes */
             "|2|x|y ssh-ed25519 %s\n"                   /* 10 */
             "a.test ecdsa-sha2-nistp256 %s\n"           /* 11 */
             "a\001.test ssh-ed25519 %s\n"               /* 12 */
             "a.test ssh-ed25519 %.*s\n"                 /* 13: truncated */
             "@revoked\n"                                /* 14 */
             "1024 35 1234567890 old rsa1 line\n"        /* 15 */
             "a.test ssh-ed25519 %s\n"                   /* 16: one byte too many */
             "b.test ssh-ed25519 %s # trailing words\n", /* 17 ok */
             k, k, k, k, k, k, k, bad_pad, k, (int)kl - 4, k, long_key, k);
    gd_ssh_known_hosts *kh = kh_of(text);
    CHECK_EQ(gd_ssh_known_hosts_skipped(kh), 15);
    CHECK_STR(gd_ssh_known_hosts_note(kh, 0),
              "kh:2: unknown marker (expected @revoked or @cert-authority)");
    CHECK_STR(gd_ssh_known_hosts_note(kh, 1), "kh:3: no key type");
    CHECK_STR(gd_ssh_known_hosts_note(kh, 2), "kh:4: no key");
    CHECK_STR(gd_ssh_known_hosts_note(kh, 3), "kh:5: unsupported key type 'ssh-dss'");
    CHECK_STR(gd_ssh_known_hosts_note(kh, 4), "kh:6: key is not valid base64");
    CHECK_STR(gd_ssh_known_hosts_note(kh, 5),
              "kh:7: key data is not a well-formed key of its type");
    CHECK_STR(gd_ssh_known_hosts_note(kh, 6), "kh:8: empty host pattern");
    CHECK_STR(gd_ssh_known_hosts_note(kh, 7),
              "kh:9: malformed hashed host (expected |1|SALT|HASH)");
    CHECK_STR(gd_ssh_known_hosts_note(kh, 8),
              "kh:10: malformed hashed host (expected |1|SALT|HASH)");
    CHECK_STR(gd_ssh_known_hosts_note(kh, 9), "kh:11: key is not valid base64");
    CHECK_STR(gd_ssh_known_hosts_note(kh, 10), "kh:12: control byte 0x01 in line");
    CHECK_STR(gd_ssh_known_hosts_note(kh, 11),
              "kh:13: key data is not a well-formed key of its type");
    CHECK_STR(gd_ssh_known_hosts_note(kh, 12), "kh:14: no host patterns");
    CHECK_STR(gd_ssh_known_hosts_note(kh, 13), "kh:15: unsupported key type '35'");
    CHECK_STR(gd_ssh_known_hosts_note(kh, 14),
              "kh:16: key data is not a well-formed key of its type");
    CHECK_EQ(STATUS(kh, "a.test", 22, "ssh-ed25519", 1), GD_SSH_KH_KNOWN);
    CHECK_EQ(STATUS(kh, "b.test", 22, "ssh-ed25519", 1), GD_SSH_KH_KNOWN);
    gd_ssh_known_hosts_free(kh);
}

TEST(ssh_kh_notes_bounded)
{
    char text[8192] = "";
    size_t n = 0;
    for (int i = 0; i < 100; i++)
        n += (size_t)snprintf(text + n, sizeof(text) - n, "x\n");
    gd_ssh_known_hosts *kh = kh_of(text);
    CHECK_EQ(gd_ssh_known_hosts_skipped(kh), 100);
    CHECK(gd_ssh_known_hosts_note(kh, GD_SSH_KH_MAX_NOTES - 1) != NULL);
    CHECK(gd_ssh_known_hosts_note(kh, GD_SSH_KH_MAX_NOTES) == NULL);
    gd_ssh_known_hosts_free(kh);
}

TEST(ssh_kh_load_files)
{
    char dir[] = "/tmp/gd-unit-kh-XXXXXX", path[64], missing[64];
    CHECK(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/known_hosts", dir);
    snprintf(missing, sizeof(missing), "%s/nope", dir);
    FILE *f = fopen(path, "w");
    CHECK(f);
    fprintf(f, "git.test ssh-ed25519 %s\nbroken\n", key64("ssh-ed25519", 1));
    fclose(f);
    gd_ssh_known_hosts *kh = gd_ssh_known_hosts_new();
    struct gd_err err = {{0}};
    CHECK_EQ(gd_ssh_known_hosts_load(kh, missing, &err), -ENOENT);
    CHECK_CONTAINS(err.msg, missing);
    CHECK_CONTAINS(err.msg, "No such file");
    CHECK(!strchr(err.msg, '\n'));
    CHECK_EQ(gd_ssh_known_hosts_load(kh, dir, &err), -EISDIR);
    CHECK_EQ(gd_ssh_known_hosts_load(kh, path, &err), 0);
    struct gd_ssh_kh_result r = check(kh, "git.test", 22, "ssh-ed25519", 1);
    CHECK_EQ(r.status, GD_SSH_KH_KNOWN);
    CHECK_STR(r.file, path);
    char note[128];
    snprintf(note, sizeof(note), "%s:2: no key type", path);
    CHECK_STR(gd_ssh_known_hosts_note(kh, 0), note);
    /* too large: refused whole, nothing added */
    size_t big = GD_SSH_KH_MAX_FILE + 1;
    char *buf = calloc(1, big);
    CHECK(buf);
    CHECK_EQ(gd_ssh_known_hosts_add(kh, "huge", buf, big, &err), -EFBIG);
    CHECK_CONTAINS(err.msg, "huge: larger than");
    free(buf);
    unlink(path);
    rmdir(dir);
    gd_ssh_known_hosts_free(kh);
}

TEST(ssh_kh_check_refuses_bad_queries)
{
    gd_ssh_known_hosts *kh = kh_of("");
    unsigned char b[128];
    size_t n = make_blob(b, "ssh-ed25519", 1);
    struct gd_ssh_kh_result r;
    char longhost[GD_SSH_KH_MAX_HOST + 2];
    memset(longhost, 'a', sizeof(longhost) - 1);
    longhost[sizeof(longhost) - 1] = 0;
    CHECK_EQ(gd_ssh_known_hosts_check(kh, "", 22, "ssh-ed25519", b, n, &r), -EINVAL);
    CHECK_EQ(gd_ssh_known_hosts_check(kh, longhost, 22, "ssh-ed25519", b, n, &r), -EINVAL);
    CHECK_EQ(gd_ssh_known_hosts_check(kh, "a b", 22, "ssh-ed25519", b, n, &r), -EINVAL);
    CHECK_EQ(gd_ssh_known_hosts_check(kh, "a,b", 22, "ssh-ed25519", b, n, &r), -EINVAL);
    CHECK_EQ(gd_ssh_known_hosts_check(kh, "a.test", 0, "ssh-ed25519", b, n, &r), -EINVAL);
    CHECK_EQ(gd_ssh_known_hosts_check(kh, "a.test", 65536, "ssh-ed25519", b, n, &r), -EINVAL);
    CHECK_EQ(gd_ssh_known_hosts_check(kh, "a.test", 22, "ssh-dss", b, n, &r), -EINVAL);
    CHECK_EQ(gd_ssh_known_hosts_check(kh, "a.test", 22, "ssh-ed25519", b, n, &r), 0);
    gd_ssh_known_hosts_free(kh);
}

TEST(ssh_base64_strict)
{
    unsigned char o[16];
    CHECK_EQ(gd_ssh_base64_decode("", 0, o, sizeof(o)), 0);
    CHECK_EQ(gd_ssh_base64_decode("Zm9v", 4, o, sizeof(o)), 3);
    CHECK(!memcmp(o, "foo", 3));
    CHECK_EQ(gd_ssh_base64_decode("Zm8=", 4, o, sizeof(o)), 2);
    CHECK_EQ(gd_ssh_base64_decode("Zg==", 4, o, sizeof(o)), 1);
    CHECK_EQ(gd_ssh_base64_decode("Zh==", 4, o, sizeof(o)), -EINVAL); /* unused bits set */
    CHECK_EQ(gd_ssh_base64_decode("Zm9=", 4, o, sizeof(o)), -EINVAL);
    CHECK_EQ(gd_ssh_base64_decode("Zg=", 3, o, sizeof(o)), -EINVAL); /* no padding */
    CHECK_EQ(gd_ssh_base64_decode("Z===", 4, o, sizeof(o)), -EINVAL);
    CHECK_EQ(gd_ssh_base64_decode("Zg=a", 4, o, sizeof(o)), -EINVAL);
    CHECK_EQ(gd_ssh_base64_decode("Zg==Zm9v", 8, o, sizeof(o)), -EINVAL); /* pad mid-way */
    CHECK_EQ(gd_ssh_base64_decode("Zm 9", 4, o, sizeof(o)), -EINVAL);
    CHECK_EQ(gd_ssh_base64_decode("Zm-_", 4, o, sizeof(o)), -EINVAL); /* url alphabet */
    CHECK_EQ(gd_ssh_base64_decode("Zm9vZm9v", 8, o, 5), -ENOSPC);
}

/* ---- git commands ---- */

static void git_ok(const char *cmd, const char *service, const char *path, const char *repo)
{
    struct gd_ssh_git g;
    const char *why = NULL;
    if (gd_ssh_git_parse(cmd, strlen(cmd), &g, &why))
        FAIL_AT("\"%s\" refused: %s", cmd, why);
    CHECK_STR(g.service, service);
    CHECK_STR(g.path, path);
    CHECK_STR(g.repo, repo);
}

static void git_bad_n(const char *cmd, size_t n, const char *why_part)
{
    struct gd_ssh_git g;
    const char *why = NULL;
    if (gd_ssh_git_parse(cmd, n, &g, &why) != -EINVAL)
        FAIL_AT("\"%s\" accepted", cmd);
    CHECK_CONTAINS(why, why_part);
    CHECK(!strchr(why, '\n'));
}

static void git_bad(const char *cmd, const char *why_part)
{
    git_bad_n(cmd, strlen(cmd), why_part);
}

TEST(ssh_git_accepts)
{
    static const char *const ok[][4] = {
        /* what git sends for host:o/r.git and ssh://host/o/r.git */
        {"git-upload-pack 'o/r.git'", "git-upload-pack", "o/r.git", "o/r"},
        {"git-upload-pack '/o/r.git'", "git-upload-pack", "/o/r.git", "o/r"},
        {"git-receive-pack 'o/r.git'", "git-receive-pack", "o/r.git", "o/r"},
        {"git-upload-archive 'o/r.git'", "git-upload-archive", "o/r.git", "o/r"},
        {"git-upload-pack 'o/r'", "git-upload-pack", "o/r", "o/r"},
        {"git-upload-pack 'o/r/'", "git-upload-pack", "o/r/", "o/r"},
        {"git-upload-pack 'o/r.git/'", "git-upload-pack", "o/r.git/", "o/r"},
        {"git-upload-pack 'r.git'", "git-upload-pack", "r.git", "r"},
        {"git-upload-pack '/srv/git/a/b.git'", "git-upload-pack", "/srv/git/a/b.git",
         "srv/git/a/b"},
        {"git-upload-pack 'o/.git'", "git-upload-pack", "o/.git", "o/.git"},
        {"git-upload-pack 'o/r.git.git'", "git-upload-pack", "o/r.git.git", "o/r.git"},
        {"git-upload-pack '~user/r.git'", "git-upload-pack", "~user/r.git", "~user/r"},
        {"git-upload-pack 'o/my repo'", "git-upload-pack", "o/my repo", "o/my repo"},
        {"git-upload-pack 'o/..r'", "git-upload-pack", "o/..r", "o/..r"},
        {"git-upload-pack 'o/....git'", "git-upload-pack", "o/....git", "o/..."},
        /* the two-word spelling git-shell also takes */
        {"git upload-pack 'o/r.git'", "git-upload-pack", "o/r.git", "o/r"},
        {"git receive-pack 'o/r.git'", "git-receive-pack", "o/r.git", "o/r"},
        {"git upload-archive 'o/r.git'", "git-upload-archive", "o/r.git", "o/r"},
        /* git's sq_quote escapes, as git sends them for ssh://host/o/it's!x.git */
        {"git-upload-pack '/o/it'\\''s'\\!'x.git'", "git-upload-pack", "/o/it's!x.git", "o/it's!x"},
        {"git-upload-pack ''\\''o/r'\\'''", "git-upload-pack", "'o/r'", "'o/r'"},
    };
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++)
        git_ok(ok[i][0], ok[i][1], ok[i][2], ok[i][3]);
    /* exactly the bound */
    char cmd[GD_SSH_GIT_PATH_MAX + 64], path[GD_SSH_GIT_PATH_MAX + 1];
    memset(path, 'a', GD_SSH_GIT_PATH_MAX);
    path[GD_SSH_GIT_PATH_MAX] = 0;
    snprintf(cmd, sizeof(cmd), "git-upload-pack '%s'", path);
    git_ok(cmd, "git-upload-pack", path, path);
}

TEST(ssh_git_refuses)
{
    /* {command, part of the reason} */
    static const char *const bad[][2] = {
        {"", "empty command"},
        {"git-upload-pack", "not a git command"},
        {"git-upload-pack ", "single-quoted"},
        {"git-upload-pack o/r.git", "single-quoted"},
        {"git-upload-pack \"o/r.git\"", "one of"},
        {"git-upload-pack  'o/r.git'", "single-quoted"},
        {" git-upload-pack 'o/r.git'", "not a git command"},
        {"git-upload-packx 'o/r.git'", "not a git command"},
        {"git-upload-pac 'o/r.git'", "not a git command"},
        {"git-foo 'o/r.git'", "not a git command"},
        {"git  upload-pack 'o/r.git'", "not a git command"},
        {"git-Upload-pack 'o/r.git'", "not a git command"},
        {"sh -c 'git-upload-pack o/r.git'", "not a git command"},
        {"cat '/etc/passwd'", "not a git command"},
        {"git-upload-pack 'o/r.git' 'x'", "only one quoted path"},
        {"git-upload-pack 'o/r.git' x", "only one quoted path"},
        {"git-upload-pack 'o/r.git' ", "only one quoted path"},
        {"git-upload-pack 'o/r.git'x", "only one quoted path"},
        {"git-upload-pack 'o/r'.git", "only one quoted path"},
        {"git-upload-pack 'o/r.git", "unterminated quote"},
        {"git-upload-pack 'o/r'\\''", "unterminated quote"},
        {"git-upload-pack ''", "empty path"},
        {"git-upload-pack '/'", "path component"},
        {"git-upload-pack '../r.git'", "path component"},
        {"git-upload-pack 'o/../r.git'", "path component"},
        {"git-upload-pack 'o/..'", "path component"},
        {"git-upload-pack '/..'", "path component"},
        {"git-upload-pack 'o/./r.git'", "path component"},
        {"git-upload-pack './r.git'", "path component"},
        {"git-upload-pack 'o//r.git'", "path component"},
        {"git-upload-pack 'o/...git'", "once .git is cut"},
        {"git-upload-pack 'o/..git/'", "once .git is cut"},
        {"git-upload-pack '//o/r.git'", "path component"},
        {"git-upload-pack 'o/r//'", "path component"},
        {"git-upload-pack '--upload-pack=x'", "starts with '-'"},
        {"git-upload-pack '-'", "starts with '-'"},
        {"git-upload-pack 'o/r\\x'", "backslash"},
        {"git-upload-pack 'o/r'\\\"'x'", "one of"},
        {"git-upload-pack 'o/r'\\x'x'", "only one quoted path"},
        {"git-upload-pack 'o/r!x'", "unescaped !"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        git_bad(bad[i][0], bad[i][1]);
    /* refused bytes anywhere, quoted or not */
    const char *bytes[] = {";", "|", "&", "$", "`", "\"", "\n", "\r", "\t", "\x7f", "\x1b"};
    for (size_t i = 0; i < sizeof(bytes) / sizeof(bytes[0]); i++) {
        char c[64];
        snprintf(c, sizeof(c), "git-upload-pack 'o/r%s.git'", bytes[i]);
        git_bad(c, "control byte or one of");
        snprintf(c, sizeof(c), "git-upload-pack 'o/r.git'%s", bytes[i]);
        git_bad(c, "control byte or one of");
    }
    git_bad_n("git-upload-pack 'o/r\0.git'", 26, "control byte");
    git_bad_n("git-upload-pack 'o/r.git'\0", 26, "control byte");
    /* the length is the end, not a NUL (found by fuzz-gitcmd) */
    git_bad_n("git-upload-pack 'o/r.git'", 16, "single-quoted");
    git_bad_n("git-upload-pack 'o/r.git'", 17, "unterminated quote");
    git_bad_n("git-upload-pack 'o/r.git'", 24, "unterminated quote");
    /* one over the bound */
    char cmd[GD_SSH_GIT_PATH_MAX + 64], path[GD_SSH_GIT_PATH_MAX + 2];
    memset(path, 'a', GD_SSH_GIT_PATH_MAX + 1);
    path[GD_SSH_GIT_PATH_MAX + 1] = 0;
    snprintf(cmd, sizeof(cmd), "git-upload-pack '%s'", path);
    git_bad(cmd, "longer than 1024");
    char *huge = malloc(100000);
    CHECK(huge);
    memset(huge, 'a', 100000);
    git_bad_n(huge, 100000, "too long");
    free(huge);
    /* nothing is written on refusal; why may be NULL */
    struct gd_ssh_git g;
    memset(&g, 0x5a, sizeof(g));
    CHECK_EQ(gd_ssh_git_parse("git-upload-pack '../x'", 22, &g, NULL), -EINVAL);
    CHECK_EQ((unsigned char)g.path[0], 0x5a);
}

TEST(ssh_git_command_requotes)
{
    struct gd_ssh_git g;
    const char *in = "git upload-pack '/o/it'\\''s'\\!'x.git'";
    CHECK_EQ(gd_ssh_git_parse(in, strlen(in), &g, NULL), 0);
    char out[128];
    long n = gd_ssh_git_command(&g, out, sizeof(out));
    CHECK_STR(out, "git-upload-pack '/o/it'\\''s'\\!'x.git'");
    CHECK_EQ(n, (long)strlen(out));
    CHECK_EQ(gd_ssh_git_command(&g, out, (size_t)n), -ENOSPC);
    CHECK_EQ(gd_ssh_git_command(&g, out, (size_t)n + 1), n);
}

TEST(ssh_repo_match)
{
    static const struct {
        const char *pattern, *repo;
        int match;
    } cases[] = {
        {"org/*", "org/r", 1},
        {"org/*", "org/r-2.x", 1},
        {"org/*", "org/a/b", 0},
        {"org/*", "org", 0},
        {"org/*", "org2/r", 0},
        {"org/*", "Org/r", 0},
        {"org/r", "org/r", 1},
        {"org/r", "org/rr", 0},
        {"*", "r", 1},
        {"*", "o/r", 0},
        {"*/*", "o/r", 1},
        {"org/r?", "org/r2", 1},
        {"org/r?", "org/r", 0},
        {"org/*-api", "org/pay-api", 1},
        {"org/*-api", "org/pay-api2", 0},
        {"*/*/*", "srv/git/a", 1},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        if (gd_ssh_repo_match(cases[i].pattern, cases[i].repo) != cases[i].match)
            FAIL_AT("pattern %s, repo %s: expected %d", cases[i].pattern, cases[i].repo,
                    cases[i].match);
    CHECK_EQ(gd_ssh_repo_pattern_check("org/*"), 0);
    CHECK_EQ(gd_ssh_repo_pattern_check("*"), 0);
    CHECK_EQ(gd_ssh_repo_pattern_check(""), -EINVAL);
    CHECK_EQ(gd_ssh_repo_pattern_check("/org/*"), -EINVAL);
    CHECK_EQ(gd_ssh_repo_pattern_check("org//r"), -EINVAL);
    CHECK_EQ(gd_ssh_repo_pattern_check("org/../r"), -EINVAL);
    CHECK_EQ(gd_ssh_repo_pattern_check("org/r.git"), -EINVAL);
    CHECK_EQ(gd_ssh_repo_pattern_check("org/\n"), -EINVAL);
}

TEST(ssh_hostkey_refusal_hides_paths)
{
    char guest[1100], host[1100];
    static const int st[] = {GD_SSH_KH_CHANGED, GD_SSH_KH_REVOKED, GD_SSH_KH_UNKNOWN};
    for (size_t i = 0; i < sizeof(st) / sizeof(st[0]); i++) {
        gd__ssh_hostkey_refusal("[git.test]:2222", "ssh-ed25519", "SHA256:abc", st[i],
                                "/home/me/.ssh/known_hosts", 7, guest, sizeof(guest), host,
                                sizeof(host));
        CHECK_CONTAINS(guest, "[git.test]:2222");
        CHECK_CONTAINS(guest, "ssh-ed25519 SHA256:abc");
        CHECK(!strstr(guest, "/home/me"));
        if (st[i] != GD_SSH_KH_UNKNOWN) /* the host's log says which line */
            CHECK_CONTAINS(host, "/home/me/.ssh/known_hosts:7");
    }
    gd__ssh_hostkey_refusal("h", "ssh-rsa", "SHA256:x", GD_SSH_KH_CHANGED, "/k", 1, guest,
                            sizeof(guest), host, sizeof(host));
    CHECK_CONTAINS(guest, "CHANGED");
}

TEST(ssh_log_rate_limit)
{
    struct gd__ssh_loglimit l = {0};
    unsigned long dropped = 99;
    int out = 0;
    for (int i = 0; i < 100; i++) /* a burst at one instant */
        out += gd__ssh_loglimit_take(&l, 1000, &dropped);
    CHECK_EQ(out, GD__SSH_LOG_BURST);
    CHECK_EQ(dropped, 0ul);
    /* a second later GD__SSH_LOG_RATE lines pass; the first says how many were dropped */
    CHECK_EQ(gd__ssh_loglimit_take(&l, 2000, &dropped), 1);
    CHECK_EQ(dropped, 100ul - GD__SSH_LOG_BURST);
    out = 1;
    for (int i = 0; i < 100; i++)
        out += gd__ssh_loglimit_take(&l, 2000, &dropped);
    CHECK_EQ(out, GD__SSH_LOG_RATE);
    /* after a long quiet the bucket is full again, never fuller */
    out = 0;
    for (int i = 0; i < 100; i++)
        out += gd__ssh_loglimit_take(&l, 1000000, &dropped);
    CHECK_EQ(out, GD__SSH_LOG_BURST);
}
