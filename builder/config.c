/* config.c - build configuration: schema walk, diagnostics, defaults. */
#define _GNU_SOURCE
#include "config.h"

#include "../core/base/fs.h"
#include "../core/base/text.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

const char *const gd_default_debian_packages[] = {
    "base-files",      "bash", "dash",    "coreutils", "busybox-static",
    "ca-certificates", "curl", "python3", "grep",      "sed",
    "findutils",       "gzip", "tar",     "less",      NULL,
};
static const char *const default_alpine_packages[] = {
    "busybox", "musl", "bash", "ca-certificates", "curl", "python3", NULL,
};

void gd_diag_add(struct gd_diags *d, const char *code, const char *path, const char *fmt, ...)
{
    if (d->n == d->cap) {
        size_t nc = d->cap ? d->cap * 2 : 16;
        struct gd_diag *nv = realloc(d->v, nc * sizeof(*nv));
        if (!nv)
            return;
        d->v = nv;
        d->cap = nc;
    }
    struct gd_diag *g = &d->v[d->n++];
    snprintf(g->code, sizeof(g->code), "%s", code);
    snprintf(g->path, sizeof(g->path), "%s", path && *path ? path : "(top)");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g->msg, sizeof(g->msg), fmt, ap);
    va_end(ap);
    if (code[0] == 'E')
        d->errors++;
    else
        d->warnings++;
}

void gd_diags_free(struct gd_diags *d)
{
    free(d->v);
    memset(d, 0, sizeof(*d));
}

/* ---- schema ---- */

enum kind { K_STR, K_BOOL, K_NUM, K_STRLIST, K_OBJ, K_ENV, K_COPY };

struct field {
    const char *name;
    enum kind kind;
    const struct field *sub;   /* K_OBJ */
    const char *const *values; /* allowed strings */
    const char *ignored;       /* accepted for compatibility, W002 with this reason */
};

static const char *const arches[] = {"x86_64", "aarch64", NULL};
static const char *const distros[] = {"debian", "alpine", NULL};
static const char *const runtimes[] = {"docker", "podman", NULL};
static const char *const pulls[] = {"if-not-present", "always", "never", NULL};
static const char *const modes[] = {"readonly", "memory", "cow", NULL};

static const struct field f_debian[] = {
    {"suite", K_STR, NULL, NULL, NULL},
    {"mirror", K_STR, NULL, NULL, NULL},
    {"kernelPackage", K_STR, NULL, NULL, NULL},
    {"packages", K_STRLIST, NULL, NULL, NULL},
    {NULL, 0, NULL, NULL, NULL},
};
static const struct field f_alpine[] = {
    {"version", K_STR, NULL, NULL, NULL},
    {"branch", K_STR, NULL, NULL, NULL},
    {"mirror", K_STR, NULL, NULL, NULL},
    {"kernelPackage", K_STR, NULL, NULL, NULL},
    {"kernelImage", K_STR, NULL, NULL, NULL},
    {"rootfsPackages", K_STRLIST, NULL, NULL, NULL},
    {"initramfsPackages", K_STRLIST, NULL, NULL, NULL},
    {"keysDir", K_STR, NULL, NULL, NULL},
    {"krunfwVersion", K_STR, NULL, NULL, "gondolin has no krun backend"},
    {NULL, 0, NULL, NULL, NULL},
};
static const struct field f_oci[] = {
    {"image", K_STR, NULL, NULL, NULL},
    {"runtime", K_STR, NULL, runtimes, "images are pulled over the registry API, no runtime"},
    {"platform", K_STR, NULL, NULL, NULL},
    {"pullPolicy", K_STR, NULL, pulls, NULL},
    {NULL, 0, NULL, NULL, NULL},
};
static const struct field f_rootfs[] = {
    {"label", K_STR, NULL, NULL, NULL},
    {"sizeMb", K_NUM, NULL, NULL, NULL},
    {NULL, 0, NULL, NULL, NULL},
};
static const struct field f_init[] = {
    {"rootfsInit", K_STR, NULL, NULL, NULL},
    {"initramfsInit", K_STR, NULL, NULL, NULL},
    {"rootfsInitExtra", K_STR, NULL, NULL, NULL},
    {"kernelModules", K_STRLIST, NULL, NULL, NULL},
    {NULL, 0, NULL, NULL, NULL},
};
static const struct field f_rtd[] = {
    {"rootfsMode", K_STR, NULL, modes, NULL},
    {NULL, 0, NULL, NULL, NULL},
};
static const struct field f_post[] = {
    {"copy", K_COPY, NULL, NULL, NULL},
    {"commands", K_STRLIST, NULL, NULL, NULL},
    {NULL, 0, NULL, NULL, NULL},
};
static const struct field f_container[] = {
    {"force", K_BOOL, NULL, NULL, NULL},
    {"image", K_STR, NULL, NULL, NULL},
    {"runtime", K_STR, NULL, runtimes, NULL},
    {NULL, 0, NULL, NULL, NULL},
};
static const struct field f_top[] = {
    {"arch", K_STR, NULL, arches, NULL},
    {"distro", K_STR, NULL, distros, NULL},
    {"env", K_ENV, NULL, NULL, NULL},
    {"debian", K_OBJ, f_debian, NULL, NULL},
    {"alpine", K_OBJ, f_alpine, NULL, NULL},
    {"oci", K_OBJ, f_oci, NULL, NULL},
    {"rootfs", K_OBJ, f_rootfs, NULL, NULL},
    {"init", K_OBJ, f_init, NULL, NULL},
    {"runtimeDefaults", K_OBJ, f_rtd, NULL, NULL},
    {"postBuild", K_OBJ, f_post, NULL, NULL},
    {"container", K_OBJ, f_container, NULL,
     "postBuild commands run in a build VM, no container is used"},
    {"sandboxdPath", K_STR, NULL, NULL, NULL},
    {"sandboxfsPath", K_STR, NULL, NULL, "the guest agent serves files itself"},
    {"sandboxsshPath", K_STR, NULL, NULL, "not used by this gondolin"},
    {"sandboxingressPath", K_STR, NULL, NULL, "not used by this gondolin"},
    {NULL, 0, NULL, NULL, NULL},
};

static const char *kind_name(enum kind k)
{
    switch (k) {
    case K_STR:
        return "a string";
    case K_BOOL:
        return "true or false";
    case K_NUM:
        return "a number";
    case K_STRLIST:
        return "an array of strings";
    case K_OBJ:
        return "an object";
    case K_ENV:
        return "an object of strings or an array of \"KEY=VALUE\"";
    case K_COPY:
        return "an array of {\"src\", \"dest\"}";
    }
    return "?";
}

static const char *json_type(const cJSON *j)
{
    if (cJSON_IsString(j))
        return "a string";
    if (cJSON_IsNumber(j))
        return "a number";
    if (cJSON_IsBool(j))
        return "a boolean";
    if (cJSON_IsArray(j))
        return "an array";
    if (cJSON_IsObject(j))
        return "an object";
    return "null";
}

static void join(char *out, size_t cap, const char *base, const char *key)
{
    snprintf(out, cap, "%s%s%s", base, *base ? "." : "", key);
}

static int env_name_ok(const char *s, size_t n)
{
    if (!n || !(s[0] == '_' || (s[0] >= 'A' && s[0] <= 'Z') || (s[0] >= 'a' && s[0] <= 'z')))
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!(s[i] == '_' || (s[i] >= 'A' && s[i] <= 'Z') || (s[i] >= 'a' && s[i] <= 'z') ||
              (s[i] >= '0' && s[i] <= '9')))
            return 0;
    return 1;
}

static void check_env_value(const char *path, const char *k, size_t kl, struct gd_diags *d)
{
    static const char *const hints[] = {"TOKEN",   "SECRET", "PASSWORD",   "PASSWD",
                                        "API_KEY", "APIKEY", "PRIVATE_KEY"};
    char up[256];
    size_t n = kl < sizeof(up) - 1 ? kl : sizeof(up) - 1;
    for (size_t i = 0; i < n; i++)
        up[i] = (char)(k[i] >= 'a' && k[i] <= 'z' ? k[i] - 32 : k[i]);
    up[n] = 0;
    for (size_t i = 0; i < sizeof(hints) / sizeof(hints[0]); i++)
        if (strstr(up, hints[i])) {
            gd_diag_add(d, "W001", path,
                        "'%s' looks like a secret; env is baked into the image in clear text "
                        "(give secrets to the sandbox at run time instead)",
                        up);
            return;
        }
}

static void walk(const cJSON *obj, const struct field *fields, const char *base, struct gd_diags *d)
{
    const char *names[64];
    size_t nn = 0;
    for (const struct field *f = fields; f->name && nn < 63; f++)
        names[nn++] = f->name;
    names[nn] = NULL;
    for (const cJSON *c = obj->child; c; c = c->next) {
        char path[256];
        join(path, sizeof(path), base, c->string ? c->string : "?");
        if (c->string && !strcmp(c->string, "$comment"))
            continue;
        const struct field *f = fields;
        while (f->name && strcmp(f->name, c->string))
            f++;
        if (!f->name) {
            const char *best = gd_closest(c->string, names, 4);
            if (best)
                gd_diag_add(d, "E002", path, "unknown key '%s' (did you mean '%s'?)", c->string,
                            best);
            else
                gd_diag_add(d, "E002", path, "unknown key '%s'", c->string);
            continue;
        }
        int ok = 1;
        switch (f->kind) {
        case K_STR:
            ok = cJSON_IsString(c);
            break;
        case K_BOOL:
            ok = cJSON_IsBool(c);
            break;
        case K_NUM:
            ok = cJSON_IsNumber(c);
            break;
        case K_OBJ:
            ok = cJSON_IsObject(c);
            break;
        case K_STRLIST:
        case K_COPY:
            ok = cJSON_IsArray(c);
            break;
        case K_ENV:
            ok = cJSON_IsArray(c) || cJSON_IsObject(c);
            break;
        }
        if (!ok) {
            gd_diag_add(d, "E003", path, "must be %s, not %s", kind_name(f->kind), json_type(c));
            continue;
        }
        if (f->ignored)
            gd_diag_add(d, "W002", path, "accepted for compatibility and ignored: %s", f->ignored);
        if (f->values && cJSON_IsString(c)) {
            int found = 0;
            for (const char *const *v = f->values; *v && !found; v++)
                found = !strcmp(*v, c->valuestring);
            if (!found) {
                char list[256] = "";
                for (const char *const *v = f->values; *v; v++)
                    snprintf(list + strlen(list), sizeof(list) - strlen(list), "%s%s",
                             v == f->values ? "" : ", ", *v);
                const char *best = gd_closest(c->valuestring, f->values, 4);
                gd_diag_add(d, "E004", path, "'%s' is not one of: %s%s%s%s", c->valuestring, list,
                            best ? " (did you mean '" : "", best ? best : "", best ? "'?)" : "");
            }
        }
        if (f->kind == K_OBJ)
            walk(c, f->sub, path, d);
        if (f->kind == K_STRLIST) {
            int i = 0;
            for (const cJSON *e = c->child; e; e = e->next, i++)
                if (!cJSON_IsString(e) || !e->valuestring[0]) {
                    char p2[300];
                    snprintf(p2, sizeof(p2), "%s[%d]", path, i);
                    gd_diag_add(d, "E003", p2, "must be a non-empty string, not %s",
                                cJSON_IsString(e) ? "an empty string" : json_type(e));
                }
        }
        if (f->kind == K_ENV) {
            int i = 0;
            for (const cJSON *e = c->child; e; e = e->next, i++) {
                char p2[300];
                if (cJSON_IsObject(c) && !strcmp(e->string, "$comment"))
                    continue;
                if (cJSON_IsObject(c)) {
                    join(p2, sizeof(p2), path, e->string);
                    if (!cJSON_IsString(e))
                        gd_diag_add(d, "E003", p2, "must be a string, not %s", json_type(e));
                    else if (!env_name_ok(e->string, strlen(e->string)))
                        gd_diag_add(d, "E004", p2, "'%s' is not a variable name", e->string);
                    else
                        check_env_value(p2, e->string, strlen(e->string), d);
                } else {
                    snprintf(p2, sizeof(p2), "%s[%d]", path, i);
                    const char *eq = cJSON_IsString(e) ? strchr(e->valuestring, '=') : NULL;
                    if (!cJSON_IsString(e))
                        gd_diag_add(d, "E003", p2, "must be a \"KEY=VALUE\" string, not %s",
                                    json_type(e));
                    else if (!eq || !env_name_ok(e->valuestring, (size_t)(eq - e->valuestring)))
                        gd_diag_add(d, "E004", p2, "'%s' is not KEY=VALUE", e->valuestring);
                    else
                        check_env_value(p2, e->valuestring, (size_t)(eq - e->valuestring), d);
                }
            }
        }
        if (f->kind == K_COPY) {
            int i = 0;
            static const struct field f_copy[] = {
                {"src", K_STR, NULL, NULL, NULL},
                {"dest", K_STR, NULL, NULL, NULL},
                {NULL, 0, NULL, NULL, NULL},
            };
            for (const cJSON *e = c->child; e; e = e->next, i++) {
                char p2[300];
                snprintf(p2, sizeof(p2), "%s[%d]", path, i);
                if (!cJSON_IsObject(e)) {
                    gd_diag_add(d, "E003", p2, "must be {\"src\", \"dest\"}, not %s", json_type(e));
                    continue;
                }
                walk(e, f_copy, p2, d);
                for (int k = 0; k < 2; k++) {
                    const char *key = k ? "dest" : "src";
                    char p3[320];
                    join(p3, sizeof(p3), p2, key);
                    if (!cJSON_GetObjectItemCaseSensitive(e, key))
                        gd_diag_add(d, "E005", p3, "missing (required)");
                }
            }
        }
    }
}

/* ---- values ---- */

static const cJSON *at(const cJSON *root, const char *a, const char *b)
{
    const cJSON *o = cJSON_GetObjectItemCaseSensitive(root, a);
    return b && cJSON_IsObject(o) ? cJSON_GetObjectItemCaseSensitive(o, b) : b ? NULL : o;
}

static const char *str_at(const cJSON *root, const char *a, const char *b)
{
    const cJSON *o = at(root, a, b);
    return cJSON_IsString(o) ? o->valuestring : NULL;
}

static void set_str(char *dst, size_t cap, const char *v, const char *def)
{
    snprintf(dst, cap, "%s", v ? v : def);
}

static int strv_push(struct gd_strv *s, const char *v)
{
    char **nv = realloc(s->v, (s->n + 2) * sizeof(char *));
    if (!nv)
        return -ENOMEM;
    s->v = nv;
    if (!(s->v[s->n] = strdup(v)))
        return -ENOMEM;
    s->v[++s->n] = NULL;
    return 0;
}

static void strv_free(struct gd_strv *s)
{
    for (size_t i = 0; i < s->n; i++)
        free(s->v[i]);
    free(s->v);
    s->v = NULL;
    s->n = 0;
}

static void strv_from(struct gd_strv *s, const cJSON *arr, const char *const *def)
{
    if (cJSON_IsArray(arr)) {
        for (const cJSON *e = arr->child; e; e = e->next)
            if (cJSON_IsString(e) && e->valuestring[0])
                strv_push(s, e->valuestring);
        return;
    }
    for (size_t i = 0; def && def[i]; i++)
        strv_push(s, def[i]);
}

/* A path from the config, relative to its directory; E016 when it does not exist. */
static void config_path(const struct gd_build_config *c, const char *v, const char *jpath,
                        char *out, size_t cap, struct gd_diags *d)
{
    if (!v) {
        out[0] = 0;
        return;
    }
    if (v[0] == '/')
        snprintf(out, cap, "%s", v);
    else
        snprintf(out, cap, "%s/%s", c->dir, v);
    if (access(out, R_OK))
        gd_diag_add(d, "E016", jpath, "%s: %s", out, strerror(errno));
}

void gd_config_parse(const char *text, const char *file, const char *arch_override,
                     struct gd_build_config *c, struct gd_diags *d)
{
    memset(c, 0, sizeof(*c));
    if (file && strrchr(file, '/')) {
        char tmp[4096];
        snprintf(tmp, sizeof(tmp), "%.*s", (int)(strrchr(file, '/') - file), file);
        if (!realpath(tmp[0] ? tmp : "/", c->dir))
            snprintf(c->dir, sizeof(c->dir), "%s", tmp);
    } else if (!getcwd(c->dir, sizeof(c->dir))) {
        snprintf(c->dir, sizeof(c->dir), ".");
    }
    const char *end = NULL;
    c->json = cJSON_ParseWithOpts(text, &end, 1);
    if (!c->json) {
        int line = 1, col = 1;
        const char *e = cJSON_GetErrorPtr();
        for (const char *p = text; e && p < e && *p; p++, col++)
            if (*p == '\n') {
                line++;
                col = 0;
            }
        gd_diag_add(d, "E001", "", "not valid JSON (line %d, column %d)", line, col);
        c->json = cJSON_CreateObject();
    } else if (!cJSON_IsObject(c->json)) {
        gd_diag_add(d, "E003", "", "the config must be a JSON object, not %s", json_type(c->json));
        cJSON_Delete(c->json);
        c->json = cJSON_CreateObject();
    }
    const cJSON *j = c->json;
    walk(j, f_top, "", d);

    set_str(c->arch, sizeof(c->arch), arch_override ? arch_override : str_at(j, "arch", NULL),
            gd_host_arch());
    if (arch_override && strcmp(arch_override, "x86_64") && strcmp(arch_override, "aarch64"))
        gd_diag_add(d, "E004", "arch", "'%s' is not one of: x86_64, aarch64 (--arch)",
                    arch_override);
    const char *distro = str_at(j, "distro", NULL);
    if (!distro)
        distro = at(j, "alpine", NULL) && !at(j, "debian", NULL) ? "alpine" : "debian";
    set_str(c->distro, sizeof(c->distro), distro, "debian");
    int arm = !strcmp(c->arch, "aarch64");

    set_str(c->debian.suite, sizeof(c->debian.suite), str_at(j, "debian", "suite"), "");
    set_str(c->debian.mirror, sizeof(c->debian.mirror), str_at(j, "debian", "mirror"), "");
    set_str(c->debian.kernel_package, sizeof(c->debian.kernel_package),
            str_at(j, "debian", "kernelPackage"),
            arm ? "linux-image-cloud-arm64" : "linux-image-cloud-amd64");
    strv_from(&c->debian.packages, at(j, "debian", "packages"), gd_default_debian_packages);
    if (c->debian.suite[0] || c->debian.mirror[0])
        gd_diag_add(d, "W008", c->debian.suite[0] ? "debian.suite" : "debian.mirror",
                    "packages come from the host's apt sources (apt-get update decides the "
                    "suite and mirror); this setting is recorded only");

    const char *ver = str_at(j, "alpine", "version");
    set_str(c->alpine.version, sizeof(c->alpine.version), ver, "3.23.0");
    char branch[32];
    int maj = 0, min = 0;
    if (sscanf(c->alpine.version, "%d.%d", &maj, &min) == 2)
        snprintf(branch, sizeof(branch), "v%d.%d", maj, min);
    else
        snprintf(branch, sizeof(branch), "edge");
    set_str(c->alpine.branch, sizeof(c->alpine.branch), str_at(j, "alpine", "branch"), branch);
    set_str(c->alpine.mirror, sizeof(c->alpine.mirror), str_at(j, "alpine", "mirror"),
            "https://dl-cdn.alpinelinux.org/alpine");
    set_str(c->alpine.kernel_package, sizeof(c->alpine.kernel_package),
            str_at(j, "alpine", "kernelPackage"), "linux-virt");
    set_str(c->alpine.kernel_image, sizeof(c->alpine.kernel_image),
            str_at(j, "alpine", "kernelImage"), "vmlinuz-virt");
    strv_from(&c->alpine.rootfs_packages, at(j, "alpine", "rootfsPackages"),
              default_alpine_packages);
    strv_from(&c->alpine.initramfs_packages, at(j, "alpine", "initramfsPackages"), NULL);
    const char *kd = str_at(j, "alpine", "keysDir");
    if (kd)
        config_path(c, kd, "alpine.keysDir", c->alpine.keys_dir, sizeof(c->alpine.keys_dir), d);
    if (!strcmp(c->distro, "debian") && c->alpine.initramfs_packages.n)
        gd_diag_add(d, "W003", "alpine.initramfsPackages", "ignored with distro \"debian\"");

    const cJSON *oci = at(j, "oci", NULL);
    if (cJSON_IsObject(oci)) {
        c->oci.set = 1;
        const char *img = str_at(j, "oci", "image");
        set_str(c->oci.image, sizeof(c->oci.image), img, "");
        if (!img && !cJSON_GetObjectItemCaseSensitive(oci, "image"))
            gd_diag_add(d, "E005", "oci.image", "missing (required when oci is set)");
        else if (img && (!img[0] || strchr(img, ' ') || strstr(img, "..") == img))
            gd_diag_add(d, "E017", "oci.image", "'%s' is not an image reference", img);
        set_str(c->oci.platform, sizeof(c->oci.platform), str_at(j, "oci", "platform"),
                arm ? "linux/arm64" : "linux/amd64");
        set_str(c->oci.pull_policy, sizeof(c->oci.pull_policy), str_at(j, "oci", "pullPolicy"),
                "if-not-present");
        if (at(j, "alpine", "rootfsPackages"))
            gd_diag_add(d, "W003", "alpine.rootfsPackages", "ignored: the rootfs comes from oci");
        if (at(j, "debian", "packages"))
            gd_diag_add(d, "W003", "debian.packages", "ignored: the rootfs comes from oci");
    }

    set_str(c->label, sizeof(c->label), str_at(j, "rootfs", "label"), "gondolin-root");
    if (strlen(c->label) > 16)
        gd_diag_add(d, "E004", "rootfs.label", "'%s' is longer than 16 bytes (ext4 labels)",
                    c->label);
    const cJSON *sz = at(j, "rootfs", "sizeMb");
    if (cJSON_IsNumber(sz)) {
        if (sz->valuedouble < 1 || sz->valuedouble > 1024 * 1024 ||
            sz->valuedouble != (double)(uint64_t)sz->valuedouble)
            gd_diag_add(d, "E004", "rootfs.sizeMb", "must be a whole number of MiB from 1 to %d",
                        1024 * 1024);
        else
            c->size_mb = (uint64_t)sz->valuedouble;
    }
    config_path(c, str_at(j, "init", "rootfsInit"), "init.rootfsInit", c->rootfs_init,
                sizeof(c->rootfs_init), d);
    config_path(c, str_at(j, "init", "initramfsInit"), "init.initramfsInit", c->initramfs_init,
                sizeof(c->initramfs_init), d);
    config_path(c, str_at(j, "init", "rootfsInitExtra"), "init.rootfsInitExtra",
                c->rootfs_init_extra, sizeof(c->rootfs_init_extra), d);
    strv_from(&c->kernel_modules, at(j, "init", "kernelModules"), NULL);
    for (size_t i = 0; i < c->kernel_modules.n; i++) {
        const char *m = c->kernel_modules.v[i];
        if (!*m || strlen(m) > 64 ||
            strspn(m, "abcdefghijklmnopqrstuvwxyz0123456789_-") != strlen(m))
            gd_diag_add(d, "E004", "init.kernelModules",
                        "'%s' is not a module name (letters, digits, '_' and '-')", m);
    }
    config_path(c, str_at(j, "sandboxdPath", NULL), "sandboxdPath", c->sandboxd_path,
                sizeof(c->sandboxd_path), d);
    set_str(c->rootfs_mode, sizeof(c->rootfs_mode), str_at(j, "runtimeDefaults", "rootfsMode"),
            "memory");

    const cJSON *env = at(j, "env", NULL);
    for (const cJSON *e = env ? env->child : NULL; e; e = e->next) {
        if (cJSON_IsObject(env) && cJSON_IsString(e) && strcmp(e->string, "$comment")) {
            char *kv;
            if (asprintf(&kv, "%s=%s", e->string, e->valuestring) >= 0) {
                strv_push(&c->env, kv);
                free(kv);
            }
        } else if (cJSON_IsArray(env) && cJSON_IsString(e) && strchr(e->valuestring, '=')) {
            strv_push(&c->env, e->valuestring);
        }
    }

    const cJSON *copy = at(j, "postBuild", "copy");
    int i = 0;
    for (const cJSON *e = cJSON_IsArray(copy) ? copy->child : NULL; e; e = e->next, i++) {
        const char *src = str_at(e, "src", NULL), *dest = str_at(e, "dest", NULL);
        if (!src || !dest)
            continue;
        char jp[64], abs[4096];
        snprintf(jp, sizeof(jp), "postBuild.copy[%d].src", i);
        config_path(c, src, jp, abs, sizeof(abs), d);
        if (dest[0] != '/' || strstr(dest, "/../") || !strcmp(dest + strlen(dest) - 3, "/..")) {
            snprintf(jp, sizeof(jp), "postBuild.copy[%d].dest", i);
            gd_diag_add(d, "E015", jp, "'%s' must be an absolute guest path without '..'", dest);
            continue;
        }
        struct gd_copy *nv = realloc(c->copy, (c->ncopy + 1) * sizeof(*nv));
        if (!nv)
            continue;
        c->copy = nv;
        c->copy[c->ncopy].src = strdup(abs);
        c->copy[c->ncopy].dest = strdup(dest);
        c->ncopy++;
    }
    strv_from(&c->commands, at(j, "postBuild", "commands"), NULL);
    if (c->commands.n && strcmp(c->arch, gd_host_arch()))
        gd_diag_add(d, "W004", "postBuild.commands",
                    "arch %s differs from the host (%s): the build VM runs emulated (slow)",
                    c->arch, gd_host_arch());
}

void gd_config_free(struct gd_build_config *c)
{
    cJSON_Delete(c->json);
    strv_free(&c->env);
    strv_free(&c->debian.packages);
    strv_free(&c->alpine.rootfs_packages);
    strv_free(&c->alpine.initramfs_packages);
    strv_free(&c->commands);
    strv_free(&c->kernel_modules);
    for (size_t i = 0; i < c->ncopy; i++) {
        free(c->copy[i].src);
        free(c->copy[i].dest);
    }
    free(c->copy);
    memset(c, 0, sizeof(*c));
}

char *gd_config_default_json(const char *arch)
{
    cJSON *j = cJSON_CreateObject();
    int arm = arch && !strcmp(arch, "aarch64");
    cJSON_AddStringToObject(j, "$comment",
                            "gondolin build config; '$comment' keys are ignored anywhere. "
                            "See docs/builder.md for every key.");
    cJSON_AddStringToObject(j, "arch", arm ? "aarch64" : "x86_64");
    cJSON_AddStringToObject(j, "distro", "debian");
    cJSON *env = cJSON_AddObjectToObject(j, "env");
    cJSON_AddStringToObject(env, "$comment",
                            "exported to every command in the guest; never put secrets here");
    cJSON_AddStringToObject(env, "LANG", "C.UTF-8");
    cJSON *deb = cJSON_AddObjectToObject(j, "debian");
    cJSON_AddStringToObject(deb, "$comment",
                            "packages and their dependencies come from the host's apt lists; "
                            "versions are pinned in manifest.json");
    cJSON_AddStringToObject(deb, "kernelPackage",
                            arm ? "linux-image-cloud-arm64" : "linux-image-cloud-amd64");
    int n = 0;
    while (gd_default_debian_packages[n])
        n++;
    cJSON_AddItemToObject(deb, "packages", cJSON_CreateStringArray(gd_default_debian_packages, n));
    cJSON *alp = cJSON_AddObjectToObject(j, "alpine");
    cJSON_AddStringToObject(alp, "$comment",
                            "used with \"distro\": \"alpine\": APKINDEX signatures are checked "
                            "against keysDir (default /etc/apk/keys)");
    cJSON_AddStringToObject(alp, "version", "3.23.0");
    cJSON_AddStringToObject(alp, "mirror", "https://dl-cdn.alpinelinux.org/alpine");
    cJSON_AddStringToObject(alp, "kernelPackage", "linux-virt");
    cJSON_AddStringToObject(alp, "kernelImage", "vmlinuz-virt");
    n = 0;
    while (default_alpine_packages[n])
        n++;
    cJSON_AddItemToObject(alp, "rootfsPackages",
                          cJSON_CreateStringArray(default_alpine_packages, n));
    cJSON_AddItemToObject(alp, "initramfsPackages", cJSON_CreateArray());
    cJSON *rfs = cJSON_AddObjectToObject(j, "rootfs");
    cJSON_AddStringToObject(rfs, "$comment",
                            "sizeMb: fixed image size in MiB (default: content + 10% + 16 MiB)");
    cJSON_AddStringToObject(rfs, "label", "gondolin-root");
    cJSON *init = cJSON_AddObjectToObject(j, "init");
    cJSON_AddStringToObject(init, "$comment",
                            "rootfsInitExtra: a shell script run as root before the agent starts; "
                            "rootfsInit: replaces that step and must exec \"$GONDOLIN_AGENT\"");
    cJSON *rtd = cJSON_AddObjectToObject(j, "runtimeDefaults");
    cJSON_AddStringToObject(rtd, "rootfsMode", "memory");
    cJSON *pb = cJSON_AddObjectToObject(j, "postBuild");
    cJSON_AddStringToObject(pb, "$comment",
                            "copy: host paths (relative to this file) to absolute guest paths; "
                            "commands: run with /bin/sh -lc in a build VM booted from the image");
    cJSON_AddItemToObject(pb, "copy", cJSON_CreateArray());
    cJSON_AddItemToObject(pb, "commands", cJSON_CreateArray());
    char *s = cJSON_Print(j);
    cJSON_Delete(j);
    return s;
}
