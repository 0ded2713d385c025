/* Unit tests of builder pieces: apk versions, config diagnostics, ext4 from a tree
 * with an owner table, buildId derivation. */
#include "../../builder/builder.h"
#include "../../builder/config.h"
#include "test.h"

#include <lzma.h>

#include <errno.h>
#include <sys/stat.h>
#include <unistd.h>

TEST(apk_version_order)
{
    CHECK(gd_apk_vercmp("1.2.3", "1.2.3") == 0);
    CHECK(gd_apk_vercmp("1.2.3", "1.2.10") < 0);
    CHECK(gd_apk_vercmp("1.2", "1.2.1") < 0);
    CHECK(gd_apk_vercmp("1.2_rc1", "1.2") < 0);
    CHECK(gd_apk_vercmp("1.2_alpha", "1.2_beta") < 0);
    CHECK(gd_apk_vercmp("1.2_p1", "1.2") > 0);
    CHECK(gd_apk_vercmp("1.36.1-r0", "1.36.1-r9") < 0);
    CHECK(gd_apk_vercmp("2.12-r1", "2.10-r0") > 0);
    CHECK(gd_apk_vercmp("1.2a", "1.2b") < 0);
}

static int has(const struct gd_diags *d, const char *code, const char *path)
{
    for (size_t i = 0; i < d->n; i++)
        if (!strcmp(d->v[i].code, code) && !strcmp(d->v[i].path, path))
            return 1;
    return 0;
}

TEST(config_reports_every_problem)
{
    struct gd_build_config c;
    struct gd_diags d = {0};
    gd_config_parse("{\"arch\":\"arm\",\"rootfs\":{\"lable\":\"x\",\"sizeMb\":-3},"
                    "\"env\":[\"OK=1\",\"bad\"],\"postBuild\":{\"commands\":[1]},"
                    "\"$comment\":\"fine\"}",
                    NULL, NULL, &c, &d);
    CHECK(has(&d, "E004", "arch"));
    CHECK(has(&d, "E002", "rootfs.lable"));
    CHECK(has(&d, "E004", "rootfs.sizeMb"));
    CHECK(has(&d, "E004", "env[1]"));
    CHECK(has(&d, "E003", "postBuild.commands[0]"));
    CHECK_EQ(d.errors, 5);
    CHECK(strstr(d.v[1].msg, "did you mean 'label'") != NULL);
    CHECK_EQ(c.env.n, 1);
    CHECK(!strcmp(c.label, "gondolin-root"));
    gd_diags_free(&d);
    gd_config_free(&c);
    char *def = gd_config_default_json("x86_64");
    gd_config_parse(def, NULL, NULL, &c, &d);
    CHECK_EQ(d.errors, 0);
    CHECK(!strcmp(c.distro, "debian") && c.debian.packages.n > 5);
    free(def);
    gd_diags_free(&d);
    gd_config_free(&c);
}

TEST(config_kernel_modules)
{
    struct gd_build_config c;
    struct gd_diags d = {0};
    gd_config_parse("{\"init\":{\"kernelModules\":[\"9p\",\"9pnet_virtio\"]}}", NULL, NULL, &c, &d);
    CHECK_EQ(d.errors, 0);
    CHECK_EQ(c.kernel_modules.n, 2);
    CHECK(!strcmp(c.kernel_modules.v[1], "9pnet_virtio"));
    gd_diags_free(&d);
    gd_config_free(&c);
    gd_config_parse("{\"init\":{\"kernelModules\":[\"../evil\"]}}", NULL, NULL, &c, &d);
    CHECK(has(&d, "E004", "init.kernelModules"));
    gd_diags_free(&d);
    gd_config_free(&c);
}

TEST(unxz_reads_one_stream_and_ignores_the_size_after_it)
{
    uint8_t in[5000], enc[8192], *out = NULL;
    for (size_t i = 0; i < sizeof(in); i++)
        in[i] = (uint8_t)(i * 7 / 3);
    size_t n = 0;
    CHECK(lzma_easy_buffer_encode(6, LZMA_CHECK_CRC32, NULL, in, sizeof(in), enc, &n,
                                  sizeof(enc) - 4) == LZMA_OK);
    memcpy(enc + n, "\x88\x13\0\0", 4); /* the kernel appends the size */
    size_t outn = 0;
    CHECK_EQ(gd_unxz(enc, n + 4, &out, &outn), 0);
    CHECK(outn == sizeof(in) && !memcmp(out, in, outn));
    free(out);
    enc[n / 2] ^= 0x55; /* corrupt */
    CHECK_EQ(gd_unxz(enc, n + 4, &out, &outn), -EINVAL);
}

TEST(build_id_is_uuid5_of_the_checksums)
{
    char a[37], b[37];
    gd_build_id("k", "i", "r", "x86_64", a);
    gd_build_id("k", "i", "r", "x86_64", b);
    CHECK(!strcmp(a, b) && strlen(a) == 36 && a[14] == '5');
    gd_build_id("k", "i", "r2", "x86_64", b);
    CHECK(strcmp(a, b) != 0);
}

TEST(ext4_takes_owners_from_the_table)
{
    char dir[] = "/tmp/gd-unit-ext4-XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    char p[256], img[256];
    snprintf(p, sizeof(p), "%s/tree", dir);
    mkdir(p, 0755);
    snprintf(p, sizeof(p), "%s/tree/file", dir);
    FILE *f = fopen(p, "w");
    fputs("data\n", f);
    fclose(f);
    snprintf(p, sizeof(p), "%s/tree/dev0", dir);
    f = fopen(p, "w");
    fclose(f);
    struct gd_tree t;
    snprintf(p, sizeof(p), "%s/tree", dir);
    gd_tree_init(&t, p);
    gd_tree_set(&t, "file", 1000, 100, S_IFREG | 04750, 0);
    gd_tree_set(&t, "dev0", 0, 6, S_IFBLK | 0660, (8u << 8) | 1);
    struct gd_ext4_opts o = {.timestamp = 1704067200u, .label = "t", .meta = &t};
    snprintf(img, sizeof(img), "%s/fs.ext4", dir);
    struct gd_err err = {{0}};
    CHECK_EQ(gd_ext4_write(p, img, &o, &err), 0);
    char cmd[512];
    snprintf(cmd, sizeof(cmd),
             "debugfs -R 'stat /file' %s 2>/dev/null | grep -q 'User:  1000   Group:   100' && "
             "debugfs -R 'stat /file' %s 2>/dev/null | grep -q 'Mode:  04750' && "
             "debugfs -R 'stat /dev0' %s 2>/dev/null | grep -q 'Type: block special' && "
             "e2fsck -fn %s >/dev/null 2>&1",
             img, img, img, img);
    CHECK_EQ(system(cmd), 0);
    o.size_mb = 1;
    CHECK(gd_ext4_write(p, img, &o, &err) == -ENOSPC && strstr(err.msg, "too small"));
    gd_tree_free(&t);
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    CHECK_EQ(system(cmd), 0);
}
