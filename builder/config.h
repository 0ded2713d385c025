/*
 * config.h - the build configuration (the reference's JSON schema plus "debian"),
 * its validation with stable codes, and the defaults `--init-config` prints.
 *
 * Codes (docs/builder.md): E0xx stop a build, W0xx are reported and the build goes
 * on. Every diagnostic names a JSON path ("alpine.rootfsPackages[2]").
 */
#ifndef GD_BUILDER_CONFIG_H
#define GD_BUILDER_CONFIG_H

#include "../core/base/err.h"

#include <cjson/cJSON.h>
#include <stddef.h>
#include <stdint.h>

struct gd_diag {
    char code[8];
    char path[256];
    char msg[768];
};

struct gd_diags {
    struct gd_diag *v;
    size_t n, cap;
    int errors, warnings;
};

void gd_diag_add(struct gd_diags *d, const char *code, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void gd_diags_free(struct gd_diags *d);

struct gd_copy {
    char *src;  /* absolute, resolved against the config file's directory */
    char *dest; /* absolute guest path */
};

struct gd_strv {
    char **v;
    size_t n;
};

struct gd_build_config {
    cJSON *json;        /* the document as given (goes into the manifest) */
    char dir[4096];     /* directory of the config file (copy sources are relative) */
    char arch[16];      /* x86_64 | aarch64 */
    char distro[16];    /* debian | alpine */
    struct gd_strv env; /* "K=V" */
    struct {
        char suite[64], mirror[512], kernel_package[128];
        struct gd_strv packages;
    } debian;
    struct {
        char version[32], branch[32], mirror[512], kernel_package[128], kernel_image[128];
        char keys_dir[4096];
        struct gd_strv rootfs_packages, initramfs_packages;
    } alpine;
    struct {
        int set;
        char image[1024], platform[64], pull_policy[32];
    } oci;
    char label[64];
    uint64_t size_mb;
    char rootfs_init[4096], initramfs_init[4096], rootfs_init_extra[4096];
    char rootfs_mode[16];
    struct gd_copy *copy;
    size_t ncopy;
    struct gd_strv commands;
    struct gd_strv kernel_modules; /* init.kernelModules: extra modules init loads */
    char sandboxd_path[4096];
};

/* Parses and checks the structure of a config (every problem, not the first). On
 * return cfg holds the values with defaults filled in, even when errors were found.
 * `file` is used for the directory copies are relative to (NULL: the cwd). */
void gd_config_parse(const char *text, const char *file, const char *arch_override,
                     struct gd_build_config *cfg, struct gd_diags *d);
void gd_config_free(struct gd_build_config *cfg);
/* The default config, as printed by `gondolin build --init-config`. */
char *gd_config_default_json(const char *arch);
/* The packages of the default Debian image (NULL-ended). */
extern const char *const gd_default_debian_packages[];

#endif
