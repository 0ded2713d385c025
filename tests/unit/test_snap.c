/* test_snap.c - the disk checkpoint format (core/snap/format.c, file.c): the trailer,
 * the metadata JSON and the qcow2 header checks on good and bad bytes, and a
 * checkpoint written from a fake overlay, read back and damaged. */
#define _GNU_SOURCE
#include "snap/snap.h"
#include "test.h"

#include <fcntl.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

static struct gd_snap_trailer good_trailer(void)
{
    struct gd_snap_trailer t = {.version = 1, .meta_len = 100, .qcow2_len = 8192};
    memset(t.qcow2_sha, 0xab, 32);
    memset(t.meta_sha, 0xcd, 32);
    return t;
}

TEST(snap_trailer_roundtrip)
{
    struct gd_snap_trailer t = good_trailer(), u;
    uint8_t b[128];
    const char *why = NULL;
    gd_snap_trailer_write(b, &t);
    CHECK_EQ(gd_snap_trailer_parse(b, 128, 8192 + 100 + 128, &u, &why), 0);
    CHECK_EQ(u.meta_len, 100);
    CHECK_EQ(u.qcow2_len, 8192);
    CHECK(!memcmp(u.qcow2_sha, t.qcow2_sha, 32) && !memcmp(u.meta_sha, t.meta_sha, 32));
}

TEST(snap_trailer_refuses_bad_bytes)
{
    struct gd_snap_trailer t = good_trailer(), u;
    uint8_t b[128], c[128];
    const char *why = NULL;
    gd_snap_trailer_write(b, &t);
    uint64_t size = 8192 + 100 + 128;
    /* sizes that do not add up, a short buffer, a tiny file */
    CHECK(gd_snap_trailer_parse(b, 128, size + 1, &u, &why) < 0);
    CHECK_CONTAINS(why, "do not add up");
    CHECK(gd_snap_trailer_parse(b, 128, size - 4096, &u, &why) < 0);
    CHECK(gd_snap_trailer_parse(b, 127, size, &u, &why) < 0);
    CHECK(gd_snap_trailer_parse(b, 128, 100, &u, &why) < 0);
    /* every single-byte change of magic, version, lengths or reserved is refused */
    int offs[] = {0, 7, 8, 12, 15, 16, 23, 88, 119, 120, 127};
    for (size_t i = 0; i < sizeof(offs) / sizeof(offs[0]); i++) {
        memcpy(c, b, 128);
        c[offs[i]] ^= 0x40;
        why = NULL;
        if (gd_snap_trailer_parse(c, 128, size, &u, &why) == 0)
            FAIL_AT("byte %d flipped and still accepted", offs[i]);
        CHECK(why != NULL);
    }
    /* lengths that overflow when added */
    t.meta_len = GD_SNAP_MAX_META;
    t.qcow2_len = UINT64_MAX - 4095;
    gd_snap_trailer_write(c, &t);
    CHECK(gd_snap_trailer_parse(c, 128, 8192, &u, &why) < 0);
    t = good_trailer();
    t.meta_len = GD_SNAP_MAX_META + 1;
    gd_snap_trailer_write(c, &t);
    CHECK(gd_snap_trailer_parse(c, 128, 8192 + t.meta_len + 128, &u, &why) < 0);
    t = good_trailer();
    t.qcow2_len = 8191; /* not aligned */
    gd_snap_trailer_write(c, &t);
    CHECK(gd_snap_trailer_parse(c, 128, 8191 + 100 + 128, &u, &why) < 0);
}

TEST(snap_meta_roundtrip)
{
    struct gd_snap_meta m = {.format = 1,
                             .created = 1700000000,
                             .disk_size = 1 << 20,
                             .memory_mb = 2048,
                             .cpus = 3,
                             .nmounts = 2};
    strcpy(m.gondolin, "0.1.0");
    strcpy(m.build_id, "cb8540eb-6a32-56bd-b0a6-1a7618ff0a44");
    strcpy(m.arch, "x86_64");
    strcpy(m.image, "/img \"quoted\"");
    strcpy(m.name, "ck1");
    strcpy(m.mounts[0].kind, "hostfs");
    strcpy(m.mounts[0].guest, "/w");
    strcpy(m.mounts[0].host, "/home/u/w");
    m.mounts[0].readonly = 1;
    strcpy(m.mounts[1].kind, "memory");
    strcpy(m.mounts[1].guest, "/scratch");
    m.mounts[1].size = 64 << 20;
    char *j = gd_snap_meta_encode(&m);
    CHECK(j != NULL);
    struct gd_snap_meta n;
    char why[200];
    CHECK_EQ(gd_snap_meta_parse(j, strlen(j), &n, why, sizeof(why)), 0);
    free(j);
    CHECK_STR(n.build_id, m.build_id);
    CHECK_STR(n.image, m.image);
    CHECK_STR(n.name, "ck1");
    CHECK_EQ(n.memory_mb, 2048);
    CHECK_EQ(n.cpus, 3);
    CHECK_EQ(n.created, 1700000000);
    CHECK_EQ(n.nmounts, 2);
    CHECK_STR(n.mounts[0].host, "/home/u/w");
    CHECK_EQ(n.mounts[0].readonly, 1);
    CHECK_EQ(n.mounts[1].size, 64 << 20);
}

static void meta_bad(const char *json, const char *want)
{
    struct gd_snap_meta m;
    char why[200];
    if (gd_snap_meta_parse(json, strlen(json), &m, why, sizeof(why)) == 0)
        FAIL_AT("accepted: %s", json);
    CHECK_CONTAINS(why, want);
}

TEST(snap_meta_refuses_bad_json)
{
#define BASE "\"format\":1,\"gondolin\":\"0.1.0\",\"arch\":\"x86_64\""
    meta_bad("[1]", "not a JSON object");
    meta_bad("{" BASE, "not a JSON object");
    meta_bad("{" BASE "}", "\"buildId\" is missing");
    meta_bad("{" BASE ",\"buildId\":\"../../etc\"}", "not a build id");
    meta_bad("{" BASE ",\"buildId\":7}", "\"buildId\" is not a string");
    meta_bad("{\"format\":3,\"gondolin\":\"x\",\"arch\":\"x\",\"buildId\":\"abcdef012\"}",
             "format 3");
    meta_bad("{" BASE ",\"buildId\":\"abcdef012\",\"cpus\":65}", "\"cpus\"");
    meta_bad("{" BASE ",\"buildId\":\"abcdef012\",\"memoryMb\":1.5}", "\"memoryMb\"");
    meta_bad("{" BASE ",\"buildId\":\"abcdef012\",\"mounts\":{}}", "\"mounts\"");
    meta_bad("{" BASE ",\"buildId\":\"abcdef012\",\"mounts\":[1]}", "not an object");
    meta_bad("{" BASE
             ",\"buildId\":\"abcdef012\",\"mounts\":[{\"kind\":\"nfs\",\"guest\":\"/a\"}]}",
             "unknown mount kind");
    meta_bad("{" BASE
             ",\"buildId\":\"abcdef012\",\"mounts\":[{\"kind\":\"hostfs\",\"guest\":\"/a\","
             "\"host\":\"rel\"}]}",
             "not absolute");
    char big[2000];
    snprintf(big, sizeof(big), "{" BASE ",\"buildId\":\"abcdef012\",\"name\":\"%0200d\"}", 1);
    meta_bad(big, "\"name\" is not a string of at most");
    /* nine mounts: one more than a sandbox can have */
    char nine[2000] = "{" BASE ",\"buildId\":\"abcdef012\",\"mounts\":[";
    for (int i = 0; i < 9; i++)
        strcat(nine, i ? ",{\"kind\":\"memory\",\"guest\":\"/m\"}"
                       : "{\"kind\":\"memory\",\"guest\":\"/m\"}");
    strcat(nine, "]}");
    meta_bad(nine, "at most 8");
#undef BASE
}

/* A minimal qcow2 v3 header: size 1 MiB, tables inside len. */
static void qcow2_header(uint8_t *h, size_t n)
{
    memset(h, 0, n);
    memcpy(h, "QFI\xfb", 4);
    h[7] = 3;     /* version */
    h[23] = 16;   /* cluster_bits */
    h[29] = 0x10; /* size = 0x100000 */
    h[45] = 0x01; /* l1_table_offset = 0x10000 */
    h[53] = 0x02; /* refcount_table_offset = 0x20000 */
    h[103] = 104; /* header_length */
}

TEST(snap_qcow2_header_checks)
{
    uint8_t h[512];
    uint64_t size = 0;
    const char *why = NULL;
    qcow2_header(h, sizeof(h));
    CHECK_EQ(gd_snap_qcow2_check(h, sizeof(h), 1 << 20, &size, &why), 0);
    CHECK_EQ(size, 1 << 20);
    CHECK(gd_snap_qcow2_check(h, 50, 1 << 20, &size, &why) < 0);
    CHECK(gd_snap_qcow2_check(h, sizeof(h), 0x10000, &size, &why) < 0); /* tables beyond */
    CHECK_CONTAINS(why, "beyond");
    h[79] = 1 << 2; /* external data file */
    CHECK(gd_snap_qcow2_check(h, sizeof(h), 1 << 20, &size, &why) < 0);
    CHECK_CONTAINS(why, "external data file");
    h[79] = 1 << 1; /* corrupt */
    CHECK(gd_snap_qcow2_check(h, sizeof(h), 1 << 20, &size, &why) < 0);
    h[79] = 1 << 5; /* unknown */
    CHECK(gd_snap_qcow2_check(h, sizeof(h), 1 << 20, &size, &why) < 0);
    h[79] = 1 | (1 << 3) | (1 << 4); /* dirty, compression type, extended L2 */
    CHECK_EQ(gd_snap_qcow2_check(h, sizeof(h), 1 << 20, &size, &why), 0);
    h[79] = 0;
    h[35] = 1; /* encrypted */
    CHECK(gd_snap_qcow2_check(h, sizeof(h), 1 << 20, &size, &why) < 0);
    h[35] = 0;
    h[0] = 'X';
    CHECK(gd_snap_qcow2_check(h, sizeof(h), 1 << 20, &size, &why) < 0);
}

static void write_file(const char *p, const void *b, size_t n)
{
    int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    CHECK(fd >= 0);
    CHECK_EQ(write(fd, b, n), (long long)n);
    close(fd);
}

TEST(snap_write_read_verify_and_damage)
{
    char dir[] = "/tmp/gd-snap-unit-XXXXXX", ov[100], dest[100], tmp[200];
    CHECK(mkdtemp(dir) != NULL);
    snprintf(ov, sizeof(ov), "%s/disk.qcow2", dir);
    snprintf(dest, sizeof(dest), "%s/ck.gdsnap", dir);
    static uint8_t img[(1 << 17) + 5]; /* not aligned: the writer pads */
    qcow2_header(img, sizeof(img));
    for (size_t i = 4096; i < sizeof(img); i++)
        img[i] = (uint8_t)(i * 7);
    write_file(ov, img, sizeof(img));
    struct gd_snap_meta m = {.memory_mb = 1024, .cpus = 2};
    strcpy(m.build_id, "0123456789abcdef");
    strcpy(m.arch, "x86_64");
    strcpy(m.name, "ck");
    uint64_t size = 0;
    struct gd_err err = {{0}};
    CHECK_EQ(gd_snap_write(ov, &m, dest, &size, &err), 0);
    CHECK(access(ov, F_OK) != 0); /* the overlay became the checkpoint */
    struct stat st;
    CHECK_EQ(stat(dest, &st), 0);
    CHECK_EQ(st.st_size, (long long)size);
    CHECK_EQ(st.st_mode & 0777, 0600);
    snprintf(tmp, sizeof(tmp), "%s/.tmp-%ld-ck.gdsnap", dir, (long)getpid());
    CHECK(access(tmp, F_OK) != 0);
    struct gd_snap_trailer t;
    struct gd_snap_meta r;
    CHECK_EQ(gd_snap_verify(dest, &t, &r, &err), 0);
    CHECK_EQ(t.qcow2_len, (1 << 17) + 4096);
    CHECK_EQ(r.disk_size, 1 << 20);
    CHECK_STR(r.name, "ck");
    CHECK_EQ(gd_snap_compatible(dest, &r, "0123456789abcdef", &err), 0);
    CHECK(gd_snap_compatible(dest, &r, "fedcba9876543210", &err) < 0);
    CHECK_CONTAINS(err.msg, "buildId 0123456789ab");
    /* never over an existing file */
    write_file(ov, img, sizeof(img));
    CHECK(gd_snap_write(ov, &m, dest, &size, &err) < 0);
    CHECK_CONTAINS(err.msg, "exists already");
    /* a flipped byte in the middle of the disk part: refused, naming the file */
    int fd = open(dest, O_RDWR);
    uint8_t b;
    CHECK_EQ(pread(fd, &b, 1, 70000), 1);
    b ^= 1;
    CHECK_EQ(pwrite(fd, &b, 1, 70000), 1);
    CHECK_EQ(gd_snap_read(dest, &t, &r, &err), 0); /* (the quick read does not hash) */
    CHECK(gd_snap_verify(dest, &t, &r, &err) < 0);
    CHECK_CONTAINS(err.msg, dest);
    CHECK_CONTAINS(err.msg, "disk checksum mismatch");
    b ^= 1;
    CHECK_EQ(pwrite(fd, &b, 1, 70000), 1);
    /* in the metadata */
    CHECK_EQ(pread(fd, &b, 1, (off_t)t.qcow2_len + 3), 1);
    b ^= 1;
    CHECK_EQ(pwrite(fd, &b, 1, (off_t)t.qcow2_len + 3), 1);
    CHECK(gd_snap_verify(dest, &t, &r, &err) < 0);
    CHECK_CONTAINS(err.msg, "metadata checksum mismatch");
    /* truncated */
    CHECK_EQ(ftruncate(fd, (off_t)size - 1), 0);
    close(fd);
    CHECK(gd_snap_read(dest, &t, &r, &err) < 0);
    CHECK_CONTAINS(err.msg, "is corrupt");
    unlink(dest);
    unlink(ov);
    rmdir(dir);
}

TEST(snap_trailer_memory_format)
{
    struct gd_snap_trailer t = good_trailer(), u;
    uint8_t b[128];
    const char *why = NULL;
    /* format 2: the disk part may be empty, the memory part must not */
    t.version = GD_SNAP_FORMAT_MEMORY;
    t.qcow2_len = 0;
    t.mem_len = 123457;
    gd_snap_trailer_write(b, &t);
    CHECK_EQ(gd_snap_trailer_parse(b, 128, 123457 + 100 + 128, &u, &why), 0);
    CHECK_EQ(u.mem_len, 123457);
    CHECK_EQ(u.qcow2_len, 0);
    CHECK(gd_snap_trailer_parse(b, 128, 123457 + 100 + 127, &u, &why) < 0);
    t.mem_len = 0;
    gd_snap_trailer_write(b, &t);
    CHECK(gd_snap_trailer_parse(b, 128, 100 + 128, &u, &why) < 0);
    CHECK_CONTAINS(why, "memory length");
    t.mem_len = UINT64_MAX - 10; /* over the bound, and would overflow the sum */
    gd_snap_trailer_write(b, &t);
    CHECK(gd_snap_trailer_parse(b, 128, 4096, &u, &why) < 0);
    /* format 1 with a memory length: its reserved bytes are not zero */
    t = good_trailer();
    t.mem_len = 4096;
    gd_snap_trailer_write(b, &t);
    CHECK(gd_snap_trailer_parse(b, 128, 8192 + 4096 + 100 + 128, &u, &why) < 0);
    CHECK_CONTAINS(why, "reserved");
}

TEST(snap_memory_write_read_verify_and_damage)
{
    char dir[] = "/tmp/gd-snap-unit-XXXXXX", dest[100], tmp[1400];
    CHECK(mkdtemp(dir) != NULL);
    snprintf(dest, sizeof(dest), "%s/mem.gdsnap", dir);
    struct gd_err err = {{0}};
    int fd = gd_snap_mem_begin(dest, tmp, sizeof(tmp), &err);
    CHECK(fd >= 0);
    CHECK_CONTAINS(tmp, "/.tmp-");
    static uint8_t stream[300001];
    for (size_t i = 0; i < sizeof(stream); i++)
        stream[i] = (uint8_t)(i * 13 + 1);
    CHECK_EQ(write(fd, stream, sizeof(stream)), (ssize_t)sizeof(stream));
    struct gd_snap_meta m = {.memory_mb = 512, .cpus = 1, .agent_minor = 3};
    strcpy(m.build_id, "0123456789abcdef");
    strcpy(m.arch, "x86_64");
    strcpy(m.rootfs, "memory");
    memset(m.shape, 0x5a, 32);
    uint64_t size = 0;
    CHECK_EQ(gd_snap_mem_finish(fd, tmp, sizeof(stream), &m, dest, &size, &err), 0);
    CHECK(access(tmp, F_OK) != 0);
    struct stat st;
    CHECK_EQ(stat(dest, &st), 0);
    CHECK_EQ(st.st_size, (long long)size);
    struct gd_snap_trailer t;
    struct gd_snap_meta r;
    CHECK_EQ(gd_snap_verify(dest, &t, &r, &err), 0);
    CHECK_EQ(t.version, GD_SNAP_FORMAT_MEMORY);
    CHECK_EQ(t.qcow2_len, 0);
    CHECK_EQ(t.mem_len, sizeof(stream));
    CHECK(r.memory);
    CHECK_STR(r.rootfs, "memory");
    CHECK_EQ(r.agent_minor, 3);
    CHECK_EQ(r.memory_mb, 512);
    CHECK(!memcmp(r.shape, m.shape, 32));
    CHECK(!memcmp(r.mem_sha, m.mem_sha, 32));
    /* a flipped byte in the stream: the full check refuses it, the disk check (a resume
     * hashes the stream while loading it) does not look */
    int wfd = open(dest, O_RDWR);
    uint8_t b;
    CHECK_EQ(pread(wfd, &b, 1, 150000), 1);
    b ^= 0x10;
    CHECK_EQ(pwrite(wfd, &b, 1, 150000), 1);
    CHECK(gd_snap_verify(dest, &t, &r, &err) < 0);
    CHECK_CONTAINS(err.msg, "memory checksum mismatch");
    CHECK_CONTAINS(err.msg, dest);
    CHECK_EQ(gd_snap_verify_disk(dest, &t, &r, &err), 0);
    close(wfd);
    /* never over an existing file, and nothing left behind */
    CHECK(gd_snap_mem_begin(dest, tmp, sizeof(tmp), &err) < 0);
    CHECK_CONTAINS(err.msg, "exists already");
    /* a stream of the wrong length is not sealed */
    char dest2[120];
    snprintf(dest2, sizeof(dest2), "%s/short.gdsnap", dir);
    fd = gd_snap_mem_begin(dest2, tmp, sizeof(tmp), &err);
    CHECK(fd >= 0);
    CHECK_EQ(write(fd, stream, 100), 100);
    CHECK(gd_snap_mem_finish(fd, tmp, 101, &m, dest2, &size, &err) < 0);
    CHECK(access(tmp, F_OK) != 0 && access(dest2, F_OK) != 0);
    unlink(dest);
    rmdir(dir);
}

TEST(snap_meta_memory_refusals)
{
#define MBASE                                                                                      \
    "{\"format\":2,\"gondolin\":\"1\",\"buildId\":\"0123456789abcdef\",\"arch\":\"x86_64\","
#define HEX "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
    meta_bad(MBASE "\"memoryMb\":1}", "\"memory\" is missing");
    meta_bad(MBASE "\"memory\":{\"sha256\":\"00\",\"shape\":\"00\",\"rootfs\":\"memory\"}}",
             "64 hex digits");
    meta_bad(MBASE "\"memory\":{\"sha256\":\"" HEX "\",\"shape\":\"" HEX
                   "\",\"rootfs\":\"tmpfs\"}}",
             "unknown memory snapshot rootfs");
    meta_bad(MBASE "\"memory\":{\"sha256\":\"" HEX "\",\"shape\":\"" HEX
                   "Z\",\"rootfs\":\"memory\"}}",
             "64 hex digits");
    meta_bad(MBASE "\"memory\":{\"shape\":\"" HEX "\",\"rootfs\":\"memory\"}}",
             "\"sha256\" is missing");
    struct gd_snap_meta m;
    char why[200];
    const char *ok = MBASE "\"memory\":{\"sha256\":\"" HEX "\",\"shape\":\"" HEX
                           "\",\"rootfs\":\"readonly\",\"agentMinor\":3}}";
    CHECK_EQ(gd_snap_meta_parse(ok, strlen(ok), &m, why, sizeof(why)), 0);
    CHECK(m.memory && m.agent_minor == 3 && m.mem_sha[31] == 0xaa);
#undef HEX
#undef MBASE
}
