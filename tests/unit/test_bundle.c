/* test_bundle.c - signed policy bundles (core/bundle): a bundle written, signed and
 * read back; every refusal of the reader (signatures, trust, threshold, tampering of
 * any byte, extra, missing and duplicate entries, links, traversal names, expiry,
 * min_gondolin); rollback state; extraction. */
#define _GNU_SOURCE
#include "base/fs.h"
#include "bundle/bundle.h"
#include "bundle/bundle_int.h"
#include "test.h"

#include <errno.h>
#include <sys/stat.h>
#include <unistd.h>

static char dir[256];
static char key_a[300], key_b[300];
static struct gd_bundle_trust trust_a, trust_ab;

static void setup(void)
{
    snprintf(dir, sizeof(dir), "/tmp/gd-test-bundle-XXXXXX");
    CHECK(mkdtemp(dir));
    char pub[320], id[65];
    struct gd_err err = {{0}};
    snprintf(key_a, sizeof(key_a), "%s/a.key", dir);
    snprintf(pub, sizeof(pub), "%s/a.pub", dir);
    CHECK_EQ(gd_bundle_keygen(key_a, pub, id, &err), 0);
    CHECK_EQ(gd_bundle_trust_add_file(&trust_a, pub, &err), 0);
    CHECK_EQ(gd_bundle_trust_add_file(&trust_ab, pub, &err), 0);
    snprintf(key_b, sizeof(key_b), "%s/b.key", dir);
    snprintf(pub, sizeof(pub), "%s/b.pub", dir);
    CHECK_EQ(gd_bundle_keygen(key_b, pub, id, &err), 0);
    CHECK_EQ(gd_bundle_trust_add_file(&trust_ab, pub, &err), 0);
}

static void teardown(void)
{
    gd_bundle_trust_free(&trust_a);
    gd_bundle_trust_free(&trust_ab);
    gd_rm_rf(dir);
}

static const char policy[] = "allow = { \"example.com\" }\n";
static const char cases[] = "{\"cases\": []}\n";
static const char plugin[] = "\x7f"
                             "ELF not really";

/* a bundle at dir/NAME, revision rev, signed by the given keys */
static void make(const char *name, long long rev, long long expires, const char *ming,
                 const char *k1, const char *k2, char *path, size_t cap)
{
    struct gd_bundle_src_file f[3] = {
        {.path = "policy.lua", .data = policy, .size = sizeof(policy) - 1},
        {.path = "policy.test.json", .data = cases, .size = sizeof(cases) - 1, .test = 1},
        {.path = "plugins/x86_64/p.so",
         .data = plugin,
         .size = sizeof(plugin) - 1,
         .arch = "x86_64"},
    };
    struct gd_bundle_src s = {.name = "demo",
                              .revision = rev,
                              .created = 1000,
                              .expires = expires,
                              .min_gondolin = ming,
                              .entry = "policy.lua",
                              .files = f,
                              .nfiles = 3};
    snprintf(path, cap, "%s/%s", dir, name);
    struct gd_err err = {{0}};
    CHECK_EQ(gd_bundle_write(&s, path, &err), 0);
    char id[65];
    if (k1)
        CHECK_EQ(gd_bundle_sign(path, k1, id, &err), 0);
    if (k2)
        CHECK_EQ(gd_bundle_sign(path, k2, id, &err), 0);
}

static int open_with(const char *path, const struct gd_bundle_trust *t, unsigned thr, gd_bundle **b,
                     struct gd_err *err)
{
    struct gd_bundle_verify v = {.trust = t, .threshold = thr, .now = 2000, .version = "0.1.0"};
    return gd_bundle_open(path, &v, b, err);
}

static void refused(const char *path, const struct gd_bundle_trust *t, unsigned thr,
                    const char *why)
{
    gd_bundle *b = NULL;
    struct gd_err err = {{0}};
    int rc = open_with(path, t, thr, &b, &err);
    if (!rc)
        gd_bundle_free(b);
    CHECK(rc < 0);
    CHECK_CONTAINS(err.msg, why);
}

TEST(bundle_roundtrip)
{
    setup();
    char p[400];
    make("ok.gdb", 3, 5000, "0.1.0", key_a, NULL, p, sizeof(p));
    gd_bundle *b;
    struct gd_err err = {{0}};
    CHECK_EQ(open_with(p, &trust_a, 0, &b, &err), 0);
    const struct gd_bundle_info *in = gd_bundle_info(b);
    CHECK_STR(in->name, "demo");
    CHECK_EQ(in->revision, 3);
    CHECK_EQ(in->expires, 5000);
    CHECK_STR(in->entry, "policy.lua");
    CHECK_EQ(in->nfiles, 3);
    CHECK_EQ(in->ntrusted, 1);
    const struct gd_bundle_file *f = gd_bundle_find(b, "policy.lua");
    CHECK(f && f->size == sizeof(policy) - 1 && !memcmp(f->data, policy, f->size));
    CHECK(gd_bundle_find(b, "policy.test.json")->test);
    CHECK_STR(gd_bundle_find(b, "plugins/x86_64/p.so")->arch, "x86_64");
    gd_bundle_free(b);
    teardown();
}

TEST(bundle_refuses_unsigned_untrusted_and_below_threshold)
{
    setup();
    char p[400];
    make("none.gdb", 1, 5000, "0.1.0", NULL, NULL, p, sizeof(p));
    refused(p, &trust_a, 0, "bundle is not signed");
    make("b.gdb", 1, 5000, "0.1.0", key_b, NULL, p, sizeof(p));
    refused(p, &trust_a, 0, "not signed by a trusted key");
    make("a.gdb", 1, 5000, "0.1.0", key_a, NULL, p, sizeof(p));
    refused(p, &trust_ab, 2, "1 trusted signature, 2 required");
    make("ab.gdb", 1, 5000, "0.1.0", key_a, key_b, p, sizeof(p));
    gd_bundle *b;
    struct gd_err err = {{0}};
    CHECK_EQ(open_with(p, &trust_ab, 2, &b, &err), 0);
    CHECK_EQ(gd_bundle_info(b)->ntrusted, 2);
    gd_bundle_free(b);
    /* the same key twice counts once: signing again replaces its signature */
    make("aa.gdb", 1, 5000, "0.1.0", key_a, key_a, p, sizeof(p));
    refused(p, &trust_ab, 2, "1 trusted signature, 2 required");
    teardown();
}

TEST(bundle_refuses_every_changed_byte)
{
    setup();
    char p[400];
    make("ok.gdb", 1, 5000, "0.1.0", key_a, NULL, p, sizeof(p));
    char *buf;
    size_t n;
    CHECK_EQ(gd_read_file(p, 1 << 20, &buf, &n), 0);
    struct gd_bundle_verify v = {.trust = &trust_a, .now = 2000, .version = "0.1.0"};
    for (size_t i = 0; i < n; i++) {
        for (int bit = 0; bit < 8; bit += 7) {
            buf[i] ^= (char)(1 << bit);
            gd_bundle *b = NULL;
            struct gd_err err = {{0}};
            int rc = gd_bundle_open_mem(buf, n, &v, &b, &err);
            if (rc == 0)
                FAIL_AT("flipping bit %d of byte %zu of %zu was accepted", bit, i, n);
            buf[i] ^= (char)(1 << bit);
        }
    }
    /* and every truncation */
    for (size_t l = 0; l < n; l++) {
        gd_bundle *b = NULL;
        struct gd_err err = {{0}};
        if (gd_bundle_open_mem(buf, l, &v, &b, &err) == 0)
            FAIL_AT("a bundle cut to %zu of %zu bytes was accepted", l, n);
    }
    free(buf);
    teardown();
}

/* raw bytes: header, manifest, one signature by keyfile, then the given entries */
struct ent {
    const char *name;
    unsigned type;
    const char *data;
};
static size_t craft(const char *manifest, const char *keyfile, const struct ent *e, size_t ne,
                    uint8_t *out)
{
    size_t ml = strlen(manifest), o = 0;
    memcpy(out, GD_BUNDLE_MAGIC, 8);
    gd__be_put(out + 8, ml, 4);
    memcpy(out + 12, manifest, ml);
    o = 12 + ml;
    out[o++] = 1;
    struct gd_err err = {{0}};
    CHECK_EQ(gd__bundle_sig_make(keyfile, manifest, ml, out + o, out + o + 32, &err), 0);
    o += 96;
    for (size_t i = 0; i < ne; i++) {
        size_t nl = strlen(e[i].name), dl = strlen(e[i].data);
        gd__be_put(out + o, nl, 2);
        memcpy(out + o + 2, e[i].name, nl);
        out[o + 2 + nl] = (uint8_t)e[i].type;
        gd__be_put(out + o + 3 + nl, dl, 8);
        memcpy(out + o + 11 + nl, e[i].data, dl);
        o += 11 + nl + dl;
    }
    return o;
}

static char *manifest_for(const char *path, const char *data)
{
    char hex[65], *m;
    gd_sha256_hex(data, strlen(data), hex);
    CHECK(asprintf(&m,
                   "{\"format\":1,\"name\":\"x\",\"revision\":1,\"created\":1,\"expires\":9000,"
                   "\"min_gondolin\":\"0.1.0\",\"entry\":\"%s\",\"files\":[{\"path\":\"%s\","
                   "\"size\":%zu,\"sha256\":\"%s\"}],\"plugins\":{},\"tests\":[]}",
                   path, path, strlen(data), hex) > 0);
    return m;
}

static void crafted_refused(const char *manifest, const struct ent *e, size_t ne, const char *why)
{
    uint8_t buf[8192];
    size_t n = craft(manifest, key_a, e, ne, buf);
    struct gd_bundle_verify v = {.trust = &trust_a, .now = 2000, .version = "0.1.0"};
    gd_bundle *b = NULL;
    struct gd_err err = {{0}};
    int rc = gd_bundle_open_mem(buf, n, &v, &b, &err);
    if (!rc)
        gd_bundle_free(b);
    CHECK(rc < 0);
    CHECK_CONTAINS(err.msg, why);
}

TEST(bundle_refuses_extra_missing_duplicate_and_link_entries)
{
    setup();
    char *m = manifest_for("p.lua", "x");
    struct ent ok = {"p.lua", 0, "x"};
    uint8_t buf[8192];
    size_t n = craft(m, key_a, &ok, 1, buf);
    struct gd_bundle_verify v = {.trust = &trust_a, .now = 2000, .version = "0.1.0"};
    gd_bundle *b;
    struct gd_err err = {{0}};
    CHECK_EQ(gd_bundle_open_mem(buf, n, &v, &b, &err), 0); /* the crafted form is valid */
    gd_bundle_free(b);
    struct ent extra[2] = {ok, {"q.lua", 0, "y"}};
    crafted_refused(m, extra, 2, "entry q.lua is not in the manifest");
    crafted_refused(m, NULL, 0, "lacks p.lua");
    struct ent dup[2] = {ok, ok};
    crafted_refused(m, dup, 2, "p.lua appears twice");
    struct ent link = {"p.lua", 2, "x"};
    crafted_refused(m, &link, 1, "not a regular file");
    struct ent dev = {"p.lua", 3, "x"};
    crafted_refused(m, &dev, 1, "not a regular file");
    struct ent other = {"p.lua", 0, "z"};
    crafted_refused(m, &other, 1, "does not match its sha256");
    struct ent trav = {"../p.lua", 0, "x"};
    crafted_refused(m, &trav, 1, "not a plain relative name");
    free(m);
    teardown();
}

/* a signed manifest that breaks one rule each: refused, naming the rule */
TEST(bundle_refuses_each_bad_manifest)
{
    setup();
    static const char H[] = "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881";
    static const struct {
        const char *manifest, *why;
    } bad[] = {
        {"[1]", "manifest is not a JSON object"},
        {"{\"format\":1", "manifest is not a JSON object"},
        {"{\"format\":2}", "manifest format 2 is not supported"},
        {"{\"format\":1,\"name\":\"a b\"}", "\"name\" must be"},
        {"{\"format\":1,\"name\":\".x\"}", "\"name\" must be"},
        {"{\"format\":1,\"name\":\"x\",\"revision\":-1}", "\"revision\" must be"},
        {"{\"format\":1,\"name\":\"x\",\"revision\":1.5}", "\"revision\" must be"},
        {"{\"format\":1,\"name\":\"x\",\"revision\":1,\"created\":1}", "\"expires\" must be"},
        {"{\"format\":1,\"name\":\"x\",\"revision\":1,\"created\":1,\"expires\":9000,"
         "\"min_gondolin\":\"one\"}",
         "\"min_gondolin\" must be"},
        {"{\"format\":1,\"name\":\"x\",\"revision\":1,\"created\":1,\"expires\":9000,"
         "\"min_gondolin\":\"0.1\",\"files\":{}}",
         "\"files\" must be an array"},
        {"{\"format\":1,\"name\":\"x\",\"revision\":1,\"created\":1,\"expires\":9000,"
         "\"min_gondolin\":\"0.1\",\"files\":[]}",
         "manifest lists 0 files"},
        {"{\"format\":1,\"name\":\"x\",\"revision\":1,\"created\":1,\"expires\":9000,"
         "\"min_gondolin\":\"0.1\",\"files\":[{\"path\":\"a\",\"size\":1,\"sha256\":\"AB\"}]}",
         "a has no valid sha256"},
        {"{\"format\":1,\"name\":\"x\",\"revision\":1,\"created\":1,\"expires\":9000,"
         "\"min_gondolin\":\"0.1\",\"files\":[{\"path\":\"a\",\"size\":99999999999,\"sha256\":"
         "\"%s\"}]}",
         "a is too large"},
        {"{\"format\":1,\"name\":\"x\",\"revision\":1,\"created\":1,\"expires\":9000,"
         "\"min_gondolin\":\"0.1\",\"files\":[{\"path\":\"a\",\"size\":1,\"sha256\":\"%s\"},"
         "{\"path\":\"a\",\"size\":1,\"sha256\":\"%s\"}]}",
         "manifest lists a twice"},
        {"{\"format\":1,\"name\":\"x\",\"revision\":1,\"created\":1,\"expires\":9000,"
         "\"min_gondolin\":\"0.1\",\"files\":[{\"path\":\"a\",\"size\":1,\"sha256\":\"%s\"}],"
         "\"plugins\":{\"x86_64\":[\"b.so\"]}}",
         "plugin 'b.so' is not a file of the bundle"},
        {"{\"format\":1,\"name\":\"x\",\"revision\":1,\"created\":1,\"expires\":9000,"
         "\"min_gondolin\":\"0.1\",\"files\":[{\"path\":\"a\",\"size\":1,\"sha256\":\"%s\"}],"
         "\"tests\":[\"t.json\"]}",
         "test file 't.json' is not a file of the bundle"},
        {"{\"format\":1,\"name\":\"x\",\"revision\":1,\"created\":1,\"expires\":9000,"
         "\"min_gondolin\":\"0.1\",\"files\":[{\"path\":\"a\",\"size\":1,\"sha256\":\"%s\"}],"
         "\"entry\":\"b\"}",
         "entry 'b' is not a policy file of the bundle"},
        {"{\"format\":1,\"name\":\"x\",\"revision\":1,\"created\":1,\"expires\":9000,"
         "\"min_gondolin\":\"0.1\",\"files\":[{\"path\":\"a\",\"size\":1,\"sha256\":\"%s\"}],"
         "\"tests\":[\"a\"],\"entry\":\"a\"}",
         "entry 'a' is not a policy file of the bundle"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char m[1024];
        size_t o = 0; /* each "%s" of the template becomes a valid sha256 */
        for (const char *c = bad[i].manifest; *c && o + 65 < sizeof(m); c++)
            if (c[0] == '%' && c[1] == 's') {
                memcpy(m + o, H, 64);
                o += 64;
                c++;
            } else {
                m[o++] = *c;
            }
        m[o] = 0;
        struct ent e = {"a", 0, "a"};
        crafted_refused(m, &e, 1, bad[i].why);
    }
    teardown();
}

/* the archive's own framing, before and around the signatures */
TEST(bundle_refuses_bad_framing)
{
    setup();
    struct gd_bundle_verify v = {.trust = &trust_a, .now = 2000, .version = "0.1.0"};
    gd_bundle *b = NULL;
    struct gd_err err = {{0}};
    uint8_t buf[8192] = "GDBUNDL\x02";
    CHECK(gd_bundle_open_mem(buf, 100, &v, &b, &err) < 0);
    CHECK_CONTAINS(err.msg, "bad magic");
    memcpy(buf, GD_BUNDLE_MAGIC, 8);
    gd__be_put(buf + 8, 5000, 4); /* longer than the file */
    CHECK(gd_bundle_open_mem(buf, 100, &v, &b, &err) < 0);
    CHECK_CONTAINS(err.msg, "manifest length out of range");
    gd__be_put(buf + 8, 0, 4);
    CHECK(gd_bundle_open_mem(buf, 100, &v, &b, &err) < 0);
    CHECK_CONTAINS(err.msg, "manifest length out of range");
    gd__be_put(buf + 8, 2, 4);
    memcpy(buf + 12, "{}", 2);
    buf[14] = 17;
    CHECK(gd_bundle_open_mem(buf, 100, &v, &b, &err) < 0);
    CHECK_CONTAINS(err.msg, "17 signatures (at most 16)");
    buf[14] = 2;
    CHECK(gd_bundle_open_mem(buf, 15 + 96, &v, &b, &err) < 0);
    CHECK_CONTAINS(err.msg, "truncated in its signatures");
    /* the same key twice */
    char *m = manifest_for("p.lua", "x");
    struct ent ok = {"p.lua", 0, "x"};
    size_t n = craft(m, key_a, &ok, 1, buf), ml = strlen(m);
    memmove(buf + 13 + ml + 192, buf + 13 + ml + 96, n - 13 - ml - 96);
    memcpy(buf + 13 + ml + 96, buf + 13 + ml, 96);
    buf[12 + ml] = 2;
    CHECK(gd_bundle_open_mem(buf, n + 96, &v, &b, &err) < 0);
    CHECK_CONTAINS(err.msg, "signed the bundle twice");
    /* an entry header that runs past the end */
    n = craft(m, key_a, &ok, 1, buf);
    CHECK(gd_bundle_open_mem(buf, n - 1, &v, &b, &err) < 0);
    CHECK_CONTAINS(err.msg, "entry p.lua is cut short");
    buf[n] = 0;
    CHECK(gd_bundle_open_mem(buf, n + 1, &v, &b, &err) < 0);
    CHECK_CONTAINS(err.msg, "truncated in an entry header");
    free(m);
    teardown();
}

TEST(bundle_refuses_traversal_names_in_a_signed_manifest_without_writing)
{
    setup();
    static const char *const bad[] = {"../x", "/etc/passwd", "a/../../x", "./x",
                                      "a//b", "a\\b",        "",          ".."};
    char **before, **after;
    size_t nb, na;
    CHECK_EQ(gd_dir_list(dir, &before, &nb), 0);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char *m = manifest_for(bad[i], "x");
        struct ent e = {bad[i][0] ? bad[i] : "x", 0, "x"};
        crafted_refused(m, &e, 1, "not a plain relative name");
        free(m);
    }
    CHECK_EQ(gd_dir_list(dir, &after, &na), 0); /* nothing was written */
    CHECK_EQ(na, nb);
    gd_dir_list_free(before, nb);
    gd_dir_list_free(after, na);
    teardown();
}

TEST(bundle_refuses_expired_and_too_new)
{
    setup();
    char p[400];
    make("old.gdb", 1, 1500, "0.1.0", key_a, NULL, p, sizeof(p));
    refused(p, &trust_a, 0, "expired at 1970-01-01T00:25:00Z");
    make("new.gdb", 1, 5000, "99.0.0", key_a, NULL, p, sizeof(p));
    refused(p, &trust_a, 0, "needs gondolin 99.0.0 or newer (this is 0.1.0)");
    teardown();
}

TEST(bundle_paths_and_versions)
{
    CHECK(gd_bundle_path_ok("a.lua"));
    CHECK(gd_bundle_path_ok("plugins/x86_64/a.so"));
    CHECK(gd_bundle_path_ok("..a"));
    CHECK(!gd_bundle_path_ok("a/"));
    CHECK(!gd_bundle_path_ok("a/./b"));
    CHECK(!gd_bundle_path_ok("a\nb"));
    CHECK_EQ(gd_bundle_version_cmp("0.1.0", "0.1"), 0);
    CHECK_EQ(gd_bundle_version_cmp("0.10.0", "0.9.9"), 1);
    CHECK_EQ(gd_bundle_version_cmp("1", "1.0.1"), -1);
    CHECK_EQ(gd_bundle_version_cmp("1.x", "1"), -2);
    CHECK_EQ(gd_bundle_version_cmp("1.2.3.4", "1"), -2);
}

TEST(bundle_rollback_state)
{
    setup();
    char p5[400], p4[400], st[400];
    make("r5.gdb", 5, 5000, "0.1.0", key_a, NULL, p5, sizeof(p5));
    make("r4.gdb", 4, 5000, "0.1.0", key_a, NULL, p4, sizeof(p4));
    snprintf(st, sizeof(st), "%s/state/gondolin/bundles.json", dir);
    gd_bundle *b5, *b4;
    struct gd_err err = {{0}};
    CHECK_EQ(open_with(p5, &trust_a, 0, &b5, &err), 0);
    CHECK_EQ(open_with(p4, &trust_a, 0, &b4, &err), 0);
    CHECK_EQ(gd_bundle_state_check(st, b5, 0, &err), 0);
    CHECK_EQ(gd_bundle_state_check(st, b5, 0, &err), 0); /* the same one again */
    CHECK_EQ(gd_bundle_state_check(st, b4, 0, &err), -ESTALE);
    CHECK_CONTAINS(err.msg, "revision 4 is older than revision 5");
    struct stat sb;
    CHECK_EQ(stat(st, &sb), 0);
    CHECK_EQ(sb.st_mode & 0777, 0600);
    CHECK_EQ(gd_bundle_state_check(st, b4, 1, &err), 0);
    CHECK_EQ(gd_bundle_state_check(st, b4, 0, &err), 0); /* 4 is now the mark */
    char *text;
    size_t n;
    CHECK_EQ(gd_read_file(st, 1 << 20, &text, &n), 0);
    CHECK_CONTAINS(text, "\"demo\"");
    CHECK_CONTAINS(text, trust_a.keys[0].id);
    free(text);
    gd_bundle_free(b5);
    gd_bundle_free(b4);
    teardown();
}

TEST(bundle_extract_writes_only_the_host_arch)
{
    setup();
    char p[400], out[600], f[700];
    make("ok.gdb", 1, 5000, "0.1.0", key_a, NULL, p, sizeof(p));
    gd_bundle *b;
    struct gd_err err = {{0}};
    CHECK_EQ(open_with(p, &trust_a, 0, &b, &err), 0);
    CHECK_EQ(gd_bundle_extract(b, "aarch64", dir, out, sizeof(out), &err), 0);
    struct stat sb;
    CHECK_EQ(stat(out, &sb), 0);
    CHECK_EQ(sb.st_mode & 0777, 0700);
    snprintf(f, sizeof(f), "%s/policy.lua", out);
    CHECK_EQ(access(f, R_OK), 0);
    snprintf(f, sizeof(f), "%s/plugins/x86_64/p.so", out);
    CHECK(access(f, F_OK) != 0);
    gd_rm_rf(out);
    CHECK_EQ(gd_bundle_extract(b, "x86_64", dir, out, sizeof(out), &err), 0);
    snprintf(f, sizeof(f), "%s/plugins/x86_64/p.so", out);
    CHECK_EQ(access(f, F_OK), 0);
    gd_bundle_free(b);
    teardown();
}

TEST(bundle_keys)
{
    setup();
    struct stat sb;
    CHECK_EQ(stat(key_a, &sb), 0);
    CHECK_EQ(sb.st_mode & 0777, 0600);
    char pub[320], id[65];
    struct gd_err err = {{0}};
    snprintf(pub, sizeof(pub), "%s/a2.pub", dir);
    CHECK(gd_bundle_keygen(key_a, pub, id, &err) < 0); /* never replaces a key */
    struct gd_bundle_key k;
    CHECK_EQ(gd_bundle_key_load(key_a, &k, &err), 0);
    CHECK_STR(k.id, trust_a.keys[0].id);
    struct gd_bundle_trust t = {0};
    CHECK_EQ(gd_bundle_trust_add_dir(&t, dir, &err), 0); /* a.pub and b.pub */
    CHECK_EQ(t.n, 2);
    CHECK_EQ(gd_bundle_trust_add_dir(&t, "/nonexistent-dir", &err), 0);
    gd_bundle_trust_free(&t);
    char bad[320];
    snprintf(bad, sizeof(bad), "%s/bad.pub", dir);
    FILE *fp = fopen(bad, "w");
    fputs("not a key\n", fp);
    fclose(fp);
    CHECK(gd_bundle_trust_add_dir(&t, dir, &err) < 0);
    CHECK_CONTAINS(err.msg, "bad.pub is not an Ed25519 public key");
    gd_bundle_trust_free(&t);
    teardown();
}
