/* build.c - the default image: Debian packages -> gondolin guest image. */
#define _GNU_SOURCE
#include "builder.h"
#include "config.h"

#include "builder_id.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* No virtio_rng: the guest CPU has RDRAND (KVM: host; TCG: -cpu max), which seeds the
 * kernel's CRNG at once; the module and device cost ~20 ms of boot under TCG. */
static const char *const guest_modules[] = {"virtio_mmio", "virtio_blk", "virtio_console",
                                            "virtio_net",  "overlay",    NULL};
/* virtio-fs mounts: loaded by init only when the kernel command line names mounts (each
 * module costs 40-110 ms of boot under TCG), listed in /etc/gondolin/modules.vfs */
static const char *const vfs_modules[] = {"fuse", "virtiofs", NULL};
/* busybox applets linked where no package provides the command */
static const char *const busybox_applets[] = {
    "ps",       "top",      "free",     "vi",       "ip",        "ifconfig", "ping",     "wget",
    "nc",       "poweroff", "reboot",   "halt",     "mount",     "umount",   "hostname", "xxd",
    "which",    "killall",  "pgrep",    "pkill",    "lsmod",     "dmesg",    "uptime",   "watch",
    "unzip",    "awk",      "diff",     "xargs",    "find",      "sleep",    "more",     "clear",
    "reset",    "stty",     "tr",       "od",       "cat",       "ls",       "cp",       "mv",
    "rm",       "mkdir",    "rmdir",    "ln",       "chmod",     "chown",    "echo",     "head",
    "tail",     "wc",       "sort",     "uniq",     "cut",       "grep",     "sed",      "env",
    "id",       "date",     "touch",    "true",     "false",     "test",     "[",        "expr",
    "basename", "dirname",  "readlink", "realpath", "stat",      "du",       "df",       "tar",
    "gzip",     "gunzip",   "zcat",     "mktemp",   "seq",       "yes",      "tee",      "printf",
    "pwd",      "uname",    "kill",     "md5sum",   "sha256sum", "less",     "ash",      "hexdump",
    NULL,
};
#define IMAGE_TIMESTAMP 1704067200u /* 2024-01-01: fixed so builds are reproducible */

static void sha256_str(const char *s, unsigned char md[32])
{
    unsigned int ml;
    EVP_Digest(s, strlen(s), md, &ml, EVP_sha256(), NULL);
}

static int write_text(const char *root, const char *rel, const char *text, unsigned mode)
{
    char p[4096];
    snprintf(p, sizeof(p), "%s/%s", root, rel);
    char *slash = strrchr(p, '/');
    *slash = 0;
    gd_mkdir_p(p, 0755);
    *slash = '/';
    unlink(p);
    FILE *f = fopen(p, "we");
    if (!f)
        return -errno;
    fputs(text, f);
    if (fclose(f))
        return -errno;
    chmod(p, mode);
    return 0;
}

static int exists(const char *root, const char *rel)
{
    char p[4096];
    struct stat st;
    snprintf(p, sizeof(p), "%s/%s", root, rel);
    return lstat(p, &st) == 0;
}

/* What update-ca-certificates would have done: one PEM bundle, sorted. */
static int make_ca_bundle(const char *root)
{
    char dir[4096], out[4096];
    snprintf(dir, sizeof(dir), "%s/usr/share/ca-certificates/mozilla", root);
    snprintf(out, sizeof(out), "%s/etc/ssl/certs", root);
    gd_mkdir_p(out, 0755);
    snprintf(out, sizeof(out), "%s/etc/ssl/certs/ca-certificates.crt", root);
    char **v;
    size_t n;
    if (gd_dir_list(dir, &v, &n))
        return 0; /* no ca-certificates in this image */
    FILE *f = fopen(out, "we");
    if (!f) {
        gd_dir_list_free(v, n);
        return -errno;
    }
    for (size_t i = 0; i < n; i++) {
        char p[4096 + 256], buf[8192];
        size_t l = strlen(v[i]);
        if (l < 5 || strcmp(v[i] + l - 4, ".crt"))
            continue;
        snprintf(p, sizeof(p), "%s/%s", dir, v[i]);
        FILE *c = fopen(p, "re");
        if (c) {
            size_t r;
            while ((r = fread(buf, 1, sizeof(buf), c)) > 0)
                fwrite(buf, 1, r, f);
            fclose(c);
        }
    }
    gd_dir_list_free(v, n);
    return fclose(f) ? -errno : 0;
}

static int strip_module_signature(const char *path)
{
    static const char magic[] = "~Module signature appended~\n";
    const size_t ml = sizeof(magic) - 1;
    int fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    struct stat st;
    unsigned char tail[12 + 28];
    int rc = 0;
    if (fstat(fd, &st) || st.st_size < (off_t)sizeof(tail) ||
        pread(fd, tail, sizeof(tail), st.st_size - (off_t)sizeof(tail)) != (ssize_t)sizeof(tail))
        goto out;
    if (memcmp(tail + 12, magic, ml))
        goto out; /* not signed */
    /* struct module_signature: algo, hash, id_type, signer_len, key_id_len, pad[3], be32 */
    uint32_t sig_len = ((uint32_t)tail[8] << 24) | ((uint32_t)tail[9] << 16) |
                       ((uint32_t)tail[10] << 8) | tail[11];
    off_t cut = (off_t)sig_len + tail[3] + tail[4] + 12 + (off_t)ml;
    if (cut <= st.st_size && ftruncate(fd, st.st_size - cut))
        rc = -errno;
out:
    close(fd);
    return rc;
}

/* Where the image's shell tools live: /usr/bin with a merged /usr, else /bin. */
static const char *bin_dir(const char *root)
{
    char p[4096];
    struct stat st;
    snprintf(p, sizeof(p), "%s/bin", root);
    return lstat(p, &st) == 0 && S_ISDIR(st.st_mode) ? "bin" : "usr/bin";
}

static int write_env(const char *root, const struct gd_build_config *c)
{
    size_t cap = 64;
    for (size_t i = 0; i < c->env.n; i++)
        cap += strlen(c->env.v[i]) * 4 + 32;
    char *sh = malloc(cap), *plain = malloc(cap);
    if (!sh || !plain) {
        free(sh);
        free(plain);
        return -ENOMEM;
    }
    size_t sl = (size_t)snprintf(sh, cap, "# baked in by gondolin build (env)\n"), pl = 0;
    plain[0] = 0;
    for (size_t i = 0; i < c->env.n; i++) {
        const char *kv = c->env.v[i], *eq = strchr(kv, '=');
        pl += (size_t)snprintf(plain + pl, cap - pl, "%s\n", kv);
        sl += (size_t)snprintf(sh + sl, cap - sl, "export %.*s='", (int)(eq - kv), kv);
        for (const char *v = eq + 1; *v; v++)
            sl += (size_t)(*v == '\'' ? snprintf(sh + sl, cap - sl, "'\\''")
                                      : snprintf(sh + sl, cap - sl, "%c", *v));
        sl += (size_t)snprintf(sh + sl, cap - sl, "'\n");
    }
    int rc = c->env.n ? write_text(root, "etc/gondolin/env", plain, 0644) : 0;
    if (!rc && c->env.n)
        rc = write_text(root, "etc/profile.d/gondolin-image-env.sh", sh, 0644);
    free(sh);
    free(plain);
    return rc;
}

static int finish_rootfs(const char *root, const struct gd_build_config *c, const char *guest_dir,
                         struct gd_tree *t, struct gd_err *err)
{
    static const struct {
        const char *rel;
        unsigned mode;
    } dirs[] = {{"dev", 0755},          {"proc", 0555},         {"sys", 0555},
                {"run", 0755},          {"tmp", 01777},         {"mnt", 0755},
                {"root", 0700},         {"home", 0755},         {"var/tmp", 01777},
                {"var/log", 0755},      {"etc/gondolin", 0755}, {"usr/libexec/gondolin", 0755},
                {"usr/local/bin", 0755}};
    char p[4096], q[4096];
    for (size_t i = 0; i < sizeof(dirs) / sizeof(dirs[0]); i++) {
        snprintf(p, sizeof(p), "%s/%s", root, dirs[i].rel);
        gd_mkdir_p(p, 0755);
        chmod(p, dirs[i].mode | 0700);
        if (!gd_tree_get(t, dirs[i].rel))
            gd_tree_set(t, dirs[i].rel, 0, 0, S_IFDIR | dirs[i].mode, 0);
    }
    /* what dpkg's path-exclude does in minimal images */
    static const char *const drop[] = {"usr/share/doc", "usr/share/man", "usr/share/info",
                                       "usr/share/locale", "usr/share/lintian"};
    for (size_t i = 0; i < sizeof(drop) / sizeof(drop[0]) && !c->oci.set; i++) {
        snprintf(p, sizeof(p), "%s/%s", root, drop[i]);
        gd_rm_rf(p);
    }
    int rc = 0;
    /* an OCI image or Alpine's baselayout brings its own users */
    if (!exists(root, "etc/passwd"))
        rc |= write_text(root, "etc/passwd",
                         "root:x:0:0:root:/root:/bin/sh\n"
                         "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
                         0644);
    if (!exists(root, "etc/group"))
        rc |=
            write_text(root, "etc/group",
                       "root:x:0:\ntty:x:5:\nstaff:x:50:\nusers:x:100:\nnogroup:x:65534:\n", 0644);
    if (!exists(root, "etc/shadow")) {
        rc |= write_text(root, "etc/shadow", "root:*:19723:0:99999:7:::\n", 0640);
        gd_tree_set(t, "etc/shadow", 0, 0, S_IFREG | 0640, 0);
    }
    if (exists(root, "usr/bin/bash") || exists(root, "bin/bash")) {
        /* root's shell: bash where the image has it */
        snprintf(p, sizeof(p), "%s/etc/passwd", root);
        FILE *f = fopen(p, "re");
        char buf[65536];
        size_t n = f ? fread(buf, 1, sizeof(buf) - 1, f) : 0;
        if (f)
            fclose(f);
        buf[n] = 0;
        if (!strncmp(buf, "root:x:0:0:root:/root:/bin/sh\n", 30)) {
            memcpy(buf, "root:x:0:0:root:/root:/bin/bash\n", 32);
            memmove(buf + 32, buf + 30, n - 30 + 1);
            rc |= write_text(root, "etc/passwd", buf, 0644);
        }
    }
    rc |= write_text(root, "etc/hostname", "gondolin\n", 0644);
    if (!exists(root, "etc/hosts"))
        rc |= write_text(root, "etc/hosts",
                         "127.0.0.1\tlocalhost\n127.0.1.1\tgondolin\n"
                         "::1\tlocalhost ip6-localhost ip6-loopback\n",
                         0644);
    if (!exists(root, "etc/profile"))
        rc |= write_text(root, "etc/profile",
                         "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"
                         "export PATH\n"
                         "for f in /etc/profile.d/*.sh; do [ -r \"$f\" ] && . \"$f\"; done\n",
                         0644);
    if (!exists(root, "root/.bashrc") && exists(root, "etc/skel/.bashrc")) {
        snprintf(p, sizeof(p), "%s/etc/skel/.bashrc", root);
        snprintf(q, sizeof(q), "%s/root/.bashrc", root);
        gd_copy_file(p, q, 0644);
    }
    rc |= write_env(root, c);
    if (rc)
        return gd_err_set(err, -EIO, "cannot write /etc files in %s", root);
    const char *bd = bin_dir(root);
    /* /bin/sh: dash, as Debian's dash postinst would link it; else bash or busybox */
    char sh[64];
    snprintf(sh, sizeof(sh), "%s/sh", bd);
    if (!exists(root, sh)) {
        char a[64], b[64], bb[64];
        snprintf(a, sizeof(a), "%s/dash", bd);
        snprintf(b, sizeof(b), "%s/bash", bd);
        snprintf(bb, sizeof(bb), "%s/busybox", bd);
        const char *to = exists(root, a)    ? "dash"
                         : exists(root, b)  ? "bash"
                         : exists(root, bb) ? "busybox"
                                            : NULL;
        snprintf(p, sizeof(p), "%s/%s", root, sh);
        if (to && symlink(to, p))
            return gd_err_set(err, -errno, "cannot link /%s", sh);
    }
    char bbp[64];
    snprintf(bbp, sizeof(bbp), "%s/busybox", bd);
    for (size_t i = 0; busybox_applets[i] && exists(root, bbp); i++) {
        char a[256], b[256];
        snprintf(a, sizeof(a), "%s/%s", bd, busybox_applets[i]);
        snprintf(b, sizeof(b), "usr/bin/%s", busybox_applets[i]);
        if (exists(root, a) || exists(root, b))
            continue;
        snprintf(b, sizeof(b), "usr/sbin/%s", busybox_applets[i]);
        char s2[256];
        snprintf(s2, sizeof(s2), "sbin/%s", busybox_applets[i]);
        if (exists(root, b) || exists(root, s2))
            continue;
        snprintf(p, sizeof(p), "%s/%s", root, a);
        if (symlink("busybox", p))
            return gd_err_set(err, -errno, "cannot link %s", a);
    }
    if (!exists(root, "etc/ssl/certs/ca-certificates.crt") && (rc = make_ca_bundle(root)))
        return gd_err_set(err, rc, "cannot write the CA bundle: %s", strerror(-rc));
    if (c->sandboxd_path[0])
        snprintf(p, sizeof(p), "%s", c->sandboxd_path);
    else
        snprintf(p, sizeof(p), "%s/sandboxd", guest_dir);
    snprintf(q, sizeof(q), "%s/usr/libexec/gondolin/sandboxd", root);
    if ((rc = gd_copy_file(p, q, 0755)))
        return gd_err_set(err, rc, "cannot install the guest agent %s: %s", p, strerror(-rc));
    gd_tree_set(t, "usr/libexec/gondolin/sandboxd", 0, 0, S_IFREG | 0755, 0);
    static const struct {
        const char *rel;
        size_t off;
    } scripts[] = {
        {"etc/gondolin/init-extra.sh", offsetof(struct gd_build_config, rootfs_init_extra)},
        {"etc/gondolin/rootfs-init", offsetof(struct gd_build_config, rootfs_init)},
    };
    for (size_t i = 0; i < 2; i++) {
        const char *src = (const char *)c + scripts[i].off;
        if (!src[0])
            continue;
        snprintf(q, sizeof(q), "%s/%s", root, scripts[i].rel);
        if ((rc = gd_copy_file(src, q, 0755)))
            return gd_err_set(err, rc, "cannot install %s: %s", src, strerror(-rc));
        gd_tree_set(t, scripts[i].rel, 0, 0, S_IFREG | 0755, 0);
    }
    return 0;
}

/* postBuild.copy: cp -r semantics, directories merge; copied entries are root's. */
static int copy_in(struct gd_tree *t, const char *src, const char *rel, struct gd_err *err)
{
    struct stat st;
    char dst[8192];
    snprintf(dst, sizeof(dst), "%s/%s", t->root, rel);
    if (lstat(src, &st))
        return gd_err_set(err, -errno, "postBuild.copy: %s: %s", src, strerror(errno));
    /* never write through a symlink of the image: its target is a guest path, and
     * followed here it would be a host path */
    char parent[8192];
    snprintf(parent, sizeof(parent), "%s", dst);
    for (char *s = parent + strlen(t->root) + 1; (s = strchr(s, '/')); s++) {
        *s = 0;
        struct stat ps;
        int bad = lstat(parent, &ps) == 0 && !S_ISDIR(ps.st_mode);
        *s = '/';
        if (bad)
            return gd_err_set(err, -ELOOP,
                              "postBuild.copy: /%s goes through a symlink or file of the image "
                              "(%.*s); copy to the real path",
                              rel, (int)(s - parent - strlen(t->root)), parent + strlen(t->root));
    }
    char *sl = strrchr(parent, '/');
    *sl = 0;
    gd_mkdir_p(parent, 0755);
    int rc = 0;
    if (S_ISDIR(st.st_mode)) {
        struct stat dt;
        if (lstat(dst, &dt) == 0 && !S_ISDIR(dt.st_mode))
            unlink(dst);
        mkdir(dst, 0755);
        gd_tree_set(t, rel, 0, 0, S_IFDIR | (st.st_mode & 07777), 0);
        char **v;
        size_t n;
        if ((rc = gd_dir_list(src, &v, &n)))
            return gd_err_set(err, rc, "postBuild.copy: %s: %s", src, strerror(-rc));
        for (size_t i = 0; i < n && !rc; i++) {
            char s2[4096], r2[4096];
            snprintf(s2, sizeof(s2), "%s/%s", src, v[i]);
            snprintf(r2, sizeof(r2), "%s/%s", rel, v[i]);
            rc = copy_in(t, s2, r2, err);
        }
        gd_dir_list_free(v, n);
        return rc;
    }
    if (S_ISLNK(st.st_mode)) {
        char target[4096];
        ssize_t l = readlink(src, target, sizeof(target) - 1);
        if (l < 0)
            return gd_err_set(err, -errno, "postBuild.copy: %s", src);
        target[l] = 0;
        gd_rm_rf(dst);
        if (symlink(target, dst))
            return gd_err_set(err, -errno, "postBuild.copy: %s: %s", dst, strerror(errno));
        gd_tree_set(t, rel, 0, 0, S_IFLNK | 0777, 0);
        return 0;
    }
    if (!S_ISREG(st.st_mode))
        return gd_err_set(err, -EINVAL, "postBuild.copy: %s is not a file, directory or link", src);
    gd_rm_rf(dst);
    if ((rc = gd_copy_file(src, dst, (st.st_mode & 0777) | 0600)))
        return gd_err_set(err, rc, "postBuild.copy: %s -> %s: %s", src, rel, strerror(-rc));
    gd_tree_set(t, rel, 0, 0, S_IFREG | (st.st_mode & 07777), 0);
    return 0;
}

static const char *mod_base(const char *rel)
{
    const char *base = strrchr(rel, '/');
    return base ? base + 1 : rel;
}

/* Writes /etc/gondolin/<list> (the load order) into the initramfs tree dir and copies
 * the modules, leaving out those already in skip[] (loaded by an earlier list). */
static int write_modules(const char *moddir, const char *dir, const char *list, char **order,
                         size_t n, char **skip, size_t nskip, struct gd_err *err)
{
    char p[4096], q[4096 + 300];
    int rc = 0;
    snprintf(p, sizeof(p), "%s/etc/gondolin/%s", dir, list);
    FILE *f = fopen(p, "we");
    for (size_t i = 0; i < n && !rc; i++) {
        const char *base = mod_base(order[i]);
        int dup = 0;
        for (size_t j = 0; j < nskip && !dup; j++)
            dup = !strcmp(mod_base(skip[j]), base);
        if (dup)
            continue;
        if (f)
            fprintf(f, "%s\n", base);
        snprintf(p, sizeof(p), "%s/%s", moddir, order[i]);
        snprintf(q, sizeof(q), "%s/lib/modules/%s", dir, base);
        if ((rc = gd_copy_file(p, q, 0644)) || (rc = strip_module_signature(q)))
            rc = gd_err_set(err, rc, "cannot copy module %s", p);
    }
    if (!f || fclose(f))
        return rc ? rc : gd_err_set(err, -EIO, "cannot write module list %s", list);
    return rc;
}

static int build_initramfs(const char *moddir, const struct gd_build_config *c,
                           const char *guest_dir, const char *dir, const char *out,
                           struct gd_err *err)
{
    char p[4096], q[4096 + 300];
    static const char *const sub[] = {"dev",         "proc",  "sys", "etc/gondolin",
                                      "lib/modules", "lower", "rw",  "newroot"};
    for (size_t i = 0; i < sizeof(sub) / sizeof(sub[0]); i++) {
        snprintf(p, sizeof(p), "%s/%s", dir, sub[i]);
        gd_mkdir_p(p, 0755);
    }
    if (c->initramfs_init[0])
        snprintf(p, sizeof(p), "%s", c->initramfs_init);
    else
        snprintf(p, sizeof(p), "%s/init", guest_dir);
    snprintf(q, sizeof(q), "%s/init", dir);
    int rc = gd_copy_file(p, q, 0755);
    if (rc)
        return gd_err_set(err, rc, "cannot copy the initramfs init %s: %s", p, strerror(-rc));
    char **order, **vorder = NULL;
    size_t vn = 0, n, nb = sizeof(guest_modules) / sizeof(guest_modules[0]) - 1;
    const char **wanted = calloc(nb + c->kernel_modules.n + 1, sizeof(*wanted));
    if (!wanted)
        return gd_err_set(err, -ENOMEM, "out of memory");
    for (size_t i = 0; i < nb; i++)
        wanted[i] = guest_modules[i];
    for (size_t i = 0; i < c->kernel_modules.n; i++)
        wanted[nb + i] = c->kernel_modules.v[i];
    rc = gd_modules_resolve(moddir, wanted, &order, &n, err);
    free(wanted);
    if (rc)
        return rc;
    /* a kernel without them (a custom one) still builds; mounts then fail in the guest
     * with one line each */
    struct gd_err verr = {{0}};
    if (gd_modules_resolve(moddir, vfs_modules, &vorder, &vn, &verr)) {
        vorder = NULL;
        vn = 0;
    }
    rc = write_modules(moddir, dir, "modules", order, n, NULL, 0, err);
    if (!rc)
        rc = write_modules(moddir, dir, "modules.vfs", vorder, vn, order, n, err);
    for (size_t i = 0; i < n; i++)
        free(order[i]);
    free(order);
    for (size_t i = 0; i < vn; i++)
        free(vorder[i]);
    free(vorder);
    if (rc)
        return rc;
    return gd_initramfs_write(dir, out, err);
}

static int add_asset(cJSON *assets, cJSON *sums, const char *key, const char *dir, const char *file,
                     struct gd_err *err)
{
    char p[4096], hex[65];
    snprintf(p, sizeof(p), "%s/%s", dir, file);
    int rc = gd_sha256_file(p, hex);
    if (rc)
        return gd_err_set(err, rc, "cannot hash %s", p);
    struct stat st;
    stat(p, &st);
    cJSON *a = cJSON_AddObjectToObject(assets, key);
    cJSON_AddStringToObject(a, "path", file);
    cJSON_AddStringToObject(a, "sha256", hex);
    cJSON_AddNumberToObject(a, "size", (double)st.st_size);
    cJSON_AddStringToObject(sums, key, hex);
    return 0;
}

static int write_manifest(cJSON *m, const char *dir, struct gd_build_opts *o, struct gd_err *err)
{
    cJSON_DeleteItemFromObject(m, "assets");
    cJSON_DeleteItemFromObject(m, "checksums");
    cJSON_DeleteItemFromObject(m, "buildId");
    cJSON *assets = cJSON_AddObjectToObject(m, "assets");
    cJSON *sums = cJSON_AddObjectToObject(m, "checksums");
    int rc;
    if ((rc = add_asset(assets, sums, "kernel", dir, "vmlinux", err)) ||
        (rc = add_asset(assets, sums, "bzImage", dir, "vmlinuz", err)) ||
        (rc = add_asset(assets, sums, "initramfs", dir, "initramfs.cpio.lz4", err)) ||
        (rc = add_asset(assets, sums, "rootfs", dir, "rootfs.ext4", err)))
        return rc;
    const char *arch = cJSON_GetStringValue(cJSON_GetObjectItem(m, "arch"));
    gd_build_id(cJSON_GetStringValue(cJSON_GetObjectItem(sums, "kernel")),
                cJSON_GetStringValue(cJSON_GetObjectItem(sums, "initramfs")),
                cJSON_GetStringValue(cJSON_GetObjectItem(sums, "rootfs")), arch ? arch : "",
                o->build_id);
    cJSON_AddStringToObject(m, "buildId", o->build_id);
    char *text = cJSON_Print(m);
    if (!text)
        return gd_err_set(err, -ENOMEM, "out of memory");
    size_t l = strlen(text);
    char *t2 = realloc(text, l + 2);
    if (t2) {
        text = t2;
        memcpy(text + l, "\n", 2);
    }
    rc = write_text(dir, "manifest.json", text, 0644);
    free(text);
    return rc ? gd_err_set(err, rc, "cannot write %s/manifest.json", dir) : 0;
}

/* The reference's derivation: UUIDv5 (SHA-1) in a fixed namespace over the asset
 * checksums and the arch, so equal assets give an equal id wherever they live. */
void gd_build_id(const char *kernel, const char *initramfs, const char *rootfs, const char *arch,
                 char out[37])
{
    static const unsigned char ns[16] = {0x7b, 0x6e, 0xd0, 0xc0, 0x7e, 0x7f, 0x4c, 0x2a,
                                         0x8b, 0x2d, 0x0b, 0xf3, 0xd5, 0xbe, 0x9d, 0x52};
    char text[512];
    int l = snprintf(text, sizeof(text),
                     "gondolin-asset-build\nkernel=%s\ninitramfs=%s\nrootfs=%s\narch=%s", kernel,
                     initramfs, rootfs, arch);
    unsigned char md[20];
    unsigned ml;
    EVP_MD_CTX *x = EVP_MD_CTX_new();
    EVP_DigestInit_ex(x, EVP_sha1(), NULL);
    EVP_DigestUpdate(x, ns, 16);
    EVP_DigestUpdate(x, text, (size_t)l);
    EVP_DigestFinal_ex(x, md, &ml);
    EVP_MD_CTX_free(x);
    md[6] = (unsigned char)((md[6] & 0x0f) | 0x50);
    md[8] = (unsigned char)((md[8] & 0x3f) | 0x80);
    snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", md[0],
             md[1], md[2], md[3], md[4], md[5], md[6], md[7], md[8], md[9], md[10], md[11], md[12],
             md[13], md[14], md[15]);
}

static cJSON *pkg_list(cJSON *arr, const struct gd_pkg *p, size_t n, const char *role)
{
    for (size_t i = 0; i < n; i++) {
        cJSON *e = cJSON_CreateObject();
        cJSON_AddStringToObject(e, "name", p[i].name);
        cJSON_AddStringToObject(e, "version", p[i].version);
        cJSON_AddStringToObject(e, "arch", p[i].arch);
        if (role)
            cJSON_AddStringToObject(e, "role", role);
        cJSON_AddItemToArray(arr, e);
    }
    return arr;
}

/* Everything the build resolved before touching the disk: what --dry-run prints. */
struct plan {
    struct gd_pkg *pk, *kp, *ip;
    size_t npk, nkp, nip;
    struct gd_pkg kernel;
    struct gd_apk_db *apk;
};

static void plan_free(struct plan *pl)
{
    free(pl->pk);
    free(pl->kp);
    free(pl->ip);
    gd_apk_close(pl->apk);
    memset(pl, 0, sizeof(*pl));
}

static int plan_build(const struct gd_build_config *c, const struct gd_build_opts *o,
                      struct plan *pl, struct gd_err *err)
{
    memset(pl, 0, sizeof(*pl));
    int rc;
    if (!strcmp(c->distro, "alpine")) {
        if ((rc = gd_apk_open(c, o->cache_dir, &pl->apk, err)))
            return rc;
        if (!c->oci.set &&
            (rc = gd_apk_resolve(pl->apk, (const char *const *)c->alpine.rootfs_packages.v, &pl->pk,
                                 &pl->npk, err)))
            return rc;
        const char *k[] = {c->alpine.kernel_package, NULL};
        if ((rc = gd_apk_resolve(pl->apk, k, &pl->kp, &pl->nkp, err)))
            return rc;
        for (size_t i = 0; i < pl->nkp; i++)
            if (!strcmp(pl->kp[i].name, c->alpine.kernel_package))
                pl->kernel = pl->kp[i];
        if (c->alpine.initramfs_packages.n &&
            (rc = gd_apk_resolve(pl->apk, (const char *const *)c->alpine.initramfs_packages.v,
                                 &pl->ip, &pl->nip, err)))
            return rc;
        return 0;
    }
    if (!c->oci.set &&
        (rc = gd_deb_resolve((const char *const *)c->debian.packages.v, &pl->pk, &pl->npk, err)))
        return rc;
    const char *km[] = {c->debian.kernel_package, NULL};
    if ((rc = gd_deb_resolve(km, &pl->kp, &pl->nkp, err)))
        return rc;
    for (size_t i = 0; i < pl->nkp; i++)
        if (!strncmp(pl->kp[i].name, "linux-image-", 12) &&
            (strcmp(pl->kp[i].name, c->debian.kernel_package) || pl->nkp == 1))
            pl->kernel = pl->kp[i];
    if (!pl->kernel.name[0] || strncmp(pl->kernel.name, "linux-image-", 12))
        return gd_err_set(err, -ENOENT,
                          "E011 debian.kernelPackage: '%s' does not bring a linux-image-* package",
                          c->debian.kernel_package);
    return 0;
}

static void print_plan(const struct gd_build_config *c, const struct plan *pl, FILE *out)
{
    uint64_t total = 0;
    fprintf(out, "arch:    %s\ndistro:  %s\n", c->arch, c->distro);
    if (c->oci.set)
        fprintf(out, "rootfs:  OCI image %s (%s, pull %s)\n", c->oci.image, c->oci.platform,
                c->oci.pull_policy);
    fprintf(out, "kernel:  %s %s\n", pl->kernel.name, pl->kernel.version);
    if (pl->npk)
        fprintf(out, "packages (%zu):\n", pl->npk);
    for (size_t i = 0; i < pl->npk; i++) {
        fprintf(out, "  %-32s %-28s %8.1f MB\n", pl->pk[i].name, pl->pk[i].version,
                (double)pl->pk[i].size / 1e6);
        total += pl->pk[i].size;
    }
    if (pl->npk)
        fprintf(out, "  %-61s %8.1f MB installed\n", "total", (double)total / 1e6);
    for (size_t i = 0; i < pl->nip; i++)
        fprintf(out, "initramfs package: %s %s\n", pl->ip[i].name, pl->ip[i].version);
    fprintf(out, "steps:\n");
    int s = 1;
    if (c->oci.set)
        fprintf(out, "  %d. pull %s and apply its layers\n", s++, c->oci.image);
    else
        fprintf(out, "  %d. download %zu packages and unpack them\n", s++, pl->npk);
    fprintf(out, "  %d. unpack the kernel package, install the guest agent%s\n", s++,
            c->env.n ? " and the env" : "");
    for (size_t i = 0; i < c->ncopy; i++)
        fprintf(out, "  %d. copy %s -> %s\n", s++, c->copy[i].src, c->copy[i].dest);
    fprintf(out, "  %d. write initramfs.cpio.lz4 and rootfs.ext4 (label %s%s)\n", s++, c->label,
            c->size_mb ? ", fixed size" : "");
    for (size_t i = 0; i < c->commands.n; i++)
        fprintf(out, "  %d. in the build VM: /bin/sh -lc '%s'\n", s++, c->commands.v[i]);
    fprintf(out, "  %d. write manifest.json with checksums and the buildId\n", s);
}

int gd_build_plan(const struct gd_build_config *c, const struct gd_build_opts *o, FILE *out,
                  struct gd_err *err)
{
    struct plan pl;
    int rc = plan_build(c, o, &pl, err);
    if (!rc)
        print_plan(c, &pl, out);
    plan_free(&pl);
    return rc;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void ext4_progress(void *ctx, uint64_t done, uint64_t total)
{
    struct gd_progress *p = ctx;
    p->total = total;
    gd_progress_update(p, done);
}

static int unpack_debs(struct gd_tree *t, const struct gd_pkg *p, size_t n, const char *cache,
                       const char *what, struct gd_err *err)
{
    char **paths = NULL;
    int rc = gd_deb_fetch(p, n, cache, &paths, err);
    if (rc)
        return rc;
    struct gd_progress pr;
    gd_progress_begin(&pr, what, n, 0);
    for (size_t i = 0; i < n && !rc; i++) {
        rc = gd_deb_unpack(paths[i], t, err);
        gd_progress_update(&pr, i + 1);
    }
    gd_progress_end(&pr, rc ? "failed" : "done");
    for (size_t i = 0; i < n; i++)
        free(paths[i]);
    free(paths);
    return rc;
}

/* Kernel version directory under lib/modules (or usr/lib/modules) of a kernel tree. */
static int find_moddir(const char *kroot, char *out, size_t cap, char *kver, size_t kcap)
{
    static const char *const bases[] = {"usr/lib/modules", "lib/modules"};
    for (size_t b = 0; b < 2; b++) {
        char d[4096];
        snprintf(d, sizeof(d), "%s/%s", kroot, bases[b]);
        char **v;
        size_t n;
        if (gd_dir_list(d, &v, &n))
            continue;
        if (n) {
            snprintf(kver, kcap, "%s", v[0]);
            snprintf(out, cap, "%s/%s/kernel", d, v[0]);
        }
        gd_dir_list_free(v, n);
        if (n)
            return 0;
    }
    return -ENOENT;
}

static int build_into(const struct gd_build_config *c, struct gd_build_opts *o, const char *tmp,
                      struct gd_err *err)
{
    if (strcmp(c->arch, gd_host_arch()) || strcmp(c->arch, "x86_64"))
        return gd_err_set(err, -ENOTSUP,
                          "arch %s on a %s host: not supported yet (the microvm + PVH boot path "
                          "is x86_64 only)",
                          c->arch, gd_host_arch());
    char work[4096], root[4096], kroot[4096], iroot[4096], p[4096], q[4096], debs[4096];
    snprintf(work, sizeof(work), "%s/.work", tmp);
    snprintf(root, sizeof(root), "%s/rootfs", work);
    snprintf(kroot, sizeof(kroot), "%s/kernel", work);
    snprintf(iroot, sizeof(iroot), "%s/initramfs", work);
    snprintf(debs, sizeof(debs), "%s/debs", o->cache_dir);
    int rc;
    if ((rc = gd_mkdir_p(root, 0755)) || (rc = gd_mkdir_p(kroot, 0755)) ||
        (rc = gd_mkdir_p(iroot, 0755)))
        return gd_err_set(err, rc, "cannot create %s: %s", work, strerror(-rc));
    struct gd_tree t, kt, it;
    gd_tree_init(&t, root);
    gd_tree_init(&kt, kroot);
    gd_tree_init(&it, iroot);
    struct plan pl;
    struct gd_oci_image oci;
    memset(&oci, 0, sizeof(oci));
    double t0 = now_s();
    if ((rc = plan_build(c, o, &pl, err)))
        goto out;

    int deb = !strcmp(c->distro, "debian");
    if (deb && !c->oci.set) {
        static const char *const merged[][2] = {
            {"bin", "usr/bin"}, {"sbin", "usr/sbin"}, {"lib", "usr/lib"}, {"lib64", "usr/lib64"}};
        for (size_t i = 0; i < 4; i++) {
            snprintf(p, sizeof(p), "%s/%s", root, merged[i][1]);
            gd_mkdir_p(p, 0755);
            snprintf(p, sizeof(p), "%s/%s", root, merged[i][0]);
            if (symlink(merged[i][1], p) && errno != EEXIST) {
                rc = gd_err_set(err, -errno, "symlink %s", p);
                goto out;
            }
        }
    }
    if (c->oci.set) {
        if ((rc = gd_oci_pull(c, o->cache_dir, &oci, err)) || (rc = gd_oci_extract(&oci, &t, err)))
            goto out;
    } else if (deb) {
        if ((rc = unpack_debs(&t, pl.pk, pl.npk, debs, "unpacking packages", err)))
            goto out;
    } else if ((rc = gd_apk_install(pl.apk, pl.pk, pl.npk, &t, "installing packages", err))) {
        goto out;
    }
    /* the kernel package goes into a tree of its own: only the image and modules are used */
    if (deb)
        rc = unpack_debs(&kt, &pl.kernel, 1, debs, "unpacking the kernel", err);
    else
        rc = gd_apk_install(pl.apk, &pl.kernel, 1, &kt, "unpacking the kernel", err);
    if (rc)
        goto out;
    if (pl.nip && (rc = gd_apk_install(pl.apk, pl.ip, pl.nip, &it, "initramfs packages", err)))
        goto out;
    if ((rc = finish_rootfs(root, c, o->guest_dir, &t, err)))
        goto out;
    for (size_t i = 0; i < c->ncopy && !rc; i++)
        rc = copy_in(&t, c->copy[i].src, c->copy[i].dest + 1, err);
    if (rc)
        goto out;
    o->t_unpack = now_s() - t0;

    /* kernel: the bzImage, and the PVH vmlinux inside it (faster to boot on microvm) */
    char moddir[4096], kver[256];
    if (find_moddir(kroot, moddir, sizeof(moddir), kver, sizeof(kver))) {
        rc = gd_err_set(err, -ENOENT, "E012 the kernel package %s has no lib/modules directory",
                        pl.kernel.name);
        goto out;
    }
    if (deb)
        snprintf(p, sizeof(p), "%s/boot/vmlinuz-%s", kroot, kver);
    else
        snprintf(p, sizeof(p), "%s/boot/%s", kroot, c->alpine.kernel_image);
    snprintf(q, sizeof(q), "%s/vmlinuz", tmp);
    if ((rc = gd_copy_file(p, q, 0644))) {
        rc = gd_err_set(err, rc, "E011 kernel image %s: %s", p + strlen(kroot), strerror(-rc));
        goto out;
    }
    snprintf(p, sizeof(p), "%s/vmlinux", tmp);
    if ((rc = gd_kernel_extract_vmlinux(q, p, err)))
        goto out;
    if (!deb)
        gd_modules_gunzip(moddir);

    double t1 = now_s();
    struct gd_progress pr;
    gd_progress_begin(&pr, "writing initramfs.cpio.lz4", 0, 0);
    snprintf(p, sizeof(p), "%s/initramfs.cpio.lz4", tmp);
    rc = build_initramfs(moddir, c, o->guest_dir, iroot, p, err);
    gd_progress_end(&pr, rc ? "failed" : "done");
    if (rc) {
        if (rc == -ENOENT && strstr(err->msg, "kernel module"))
            gd_err_prefix(err, "E012 kernel %s: ", pl.kernel.name);
        goto out;
    }
    o->t_initramfs = now_s() - t1;

    /* identity of the inputs -> UUID and hash seed of the filesystem */
    char *cfgtext = cJSON_PrintUnformatted(c->json);
    size_t idcap = 512 + (cfgtext ? strlen(cfgtext) : 0) + (pl.npk + 4) * 300 + 200;
    char *ident = calloc(1, idcap);
    if (!ident) {
        free(cfgtext);
        rc = gd_err_set(err, -ENOMEM, "out of memory");
        goto out;
    }
    size_t il = (size_t)snprintf(ident, idcap, "gondolin-image v2 %s %s\n%s\n", c->arch, c->distro,
                                 cfgtext ? cfgtext : "");
    free(cfgtext);
    for (size_t i = 0; i < pl.npk; i++)
        il += (size_t)snprintf(ident + il, idcap - il, "%s=%s\n", pl.pk[i].name, pl.pk[i].version);
    il += (size_t)snprintf(ident + il, idcap - il, "oci=%s\n", oci.digest);
    char ghex[65];
    snprintf(p, sizeof(p), "%s/usr/libexec/gondolin/sandboxd", root);
    gd_sha256_file(p, ghex);
    snprintf(ident + il, idcap - il, "sandboxd=%s\n", ghex);
    unsigned char md[32];
    sha256_str(ident, md);
    free(ident);
    struct gd_ext4_opts eo = {.timestamp = IMAGE_TIMESTAMP,
                              .label = c->label,
                              .size_mb = c->size_mb,
                              .meta = &t,
                              .progress = ext4_progress,
                              .progress_ctx = &pr};
    memcpy(eo.uuid, md, 16);
    eo.uuid[6] = (uint8_t)((eo.uuid[6] & 0x0f) | 0x50); /* name-based UUID */
    eo.uuid[8] = (uint8_t)((eo.uuid[8] & 0x3f) | 0x80);
    memcpy(eo.hash_seed, md + 16, 16);
    double t2 = now_s();
    gd_progress_begin(&pr, "writing rootfs.ext4", 0, 0);
    snprintf(p, sizeof(p), "%s/rootfs.ext4", tmp);
    rc = gd_ext4_write(root, p, &eo, err);
    gd_progress_end(&pr, rc ? "failed" : "done");
    if (rc) {
        if (rc == -ENOSPC)
            gd_err_prefix(err, "E013 ");
        goto out;
    }
    o->t_ext4 = now_s() - t2;
    if (o->keep_work) {
        /* for the packing benchmark: the trees the packing steps read */
        char kw[4096];
        snprintf(kw, sizeof(kw), "%s/rootfs", o->keep_work);
        gd_rm_rf(kw);
        gd_mkdir_p(o->keep_work, 0755);
        if (rename(root, kw) == 0)
            snprintf(t.root, sizeof(t.root), "%s", kw);
        snprintf(kw, sizeof(kw), "%s/initramfs", o->keep_work);
        gd_rm_rf(kw);
        rename(iroot, kw);
    }

    /* manifest */
    cJSON *m = cJSON_CreateObject();
    cJSON_AddNumberToObject(m, "version", 1);
    cJSON_AddNumberToObject(m, "schema", 2);
    cJSON_AddStringToObject(m, "arch", c->arch);
    cJSON_AddStringToObject(m, "distro", c->distro);
    cJSON_AddItemToObject(m, "config", cJSON_Duplicate(c->json, 1));
    cJSON *rd = cJSON_AddObjectToObject(m, "runtimeDefaults");
    cJSON_AddStringToObject(rd, "rootfsMode", c->rootfs_mode);
    cJSON_AddStringToObject(m, "kernelVersion", kver);
    cJSON *pkl = cJSON_AddArrayToObject(m, "packages");
    pkg_list(pkl, pl.pk, pl.npk, NULL);
    pkg_list(pkl, &pl.kernel, 1, "kernel");
    pkg_list(pkl, pl.ip, pl.nip, "initramfs");
    if (c->oci.set) {
        cJSON *os = cJSON_AddObjectToObject(m, "ociSource");
        cJSON_AddStringToObject(os, "image", c->oci.image);
        cJSON_AddStringToObject(os, "reference", oci.reference);
        cJSON_AddStringToObject(os, "platform", c->oci.platform);
        cJSON_AddStringToObject(os, "pullPolicy", c->oci.pull_policy);
        cJSON_AddStringToObject(os, "digest", oci.digest);
    }
    cJSON *guest = cJSON_AddObjectToObject(m, "guest");
    cJSON_AddStringToObject(guest, "sandboxd", ghex);
    cJSON_AddStringToObject(guest, "builder", GD_BUILDER_ID);
    if ((rc = write_manifest(m, tmp, o, err))) {
        cJSON_Delete(m);
        goto out;
    }
    if (c->commands.n) {
        if (!o->run_commands) {
            rc = gd_err_set(err, -ENOTSUP, "postBuild.commands need the gondolin CLI");
        } else {
            double t3 = now_s();
            rc = o->run_commands(o->ctx, tmp, c, err);
            o->t_commands = now_s() - t3;
            snprintf(p, sizeof(p), "%s/rootfs.ext4", tmp);
            if (!rc && (rc = gd_ext4_normalize(p, IMAGE_TIMESTAMP, err)) == 0)
                rc = write_manifest(m, tmp, o, err);
        }
    }
    cJSON_Delete(m);
    if (!rc)
        fprintf(stderr, "gondolin: build: image ready, buildId %s\n", o->build_id);
out:
    if (!o->keep_work)
        gd_rm_rf(work);
    else
        gd_rm_rf(kroot);
    gd_tree_free(&t);
    gd_tree_free(&kt);
    gd_tree_free(&it);
    gd_oci_free(&oci);
    plan_free(&pl);
    return rc;
}

static void remove_stale(const char *output)
{
    char dir[4096], p[8192];
    snprintf(dir, sizeof(dir), "%s", output);
    char *slash = strrchr(dir, '/');
    if (!slash)
        return;
    *slash = 0;
    const char *base = slash + 1;
    size_t bl = strlen(base);
    char **names;
    size_t n;
    if (gd_dir_list(dir, &names, &n))
        return;
    for (size_t i = 0; i < n; i++) {
        const char *nm = names[i], *pid = NULL;
        if (strncmp(nm, base, bl))
            continue;
        if (!strncmp(nm + bl, ".tmp-", 5))
            pid = nm + bl + 5;
        else if (!strncmp(nm + bl, ".old-", 5))
            pid = nm + bl + 5;
        if (!pid)
            continue;
        char *end;
        long v = strtol(pid, &end, 10);
        if (*end || v <= 0 || (kill((pid_t)v, 0) == 0 || errno == EPERM))
            continue; /* not ours to judge, or still running */
        snprintf(p, sizeof(p), "%s/%s", dir, nm);
        gd_rm_rf(p);
    }
    gd_dir_list_free(names, n);
}

/* SIGINT/SIGTERM during a build: a watcher thread (the signals are blocked in every
 * other thread) removes the temporary image directory and exits, so an interrupted
 * build never leaves a partial image behind. SIGUSR2 stops the watcher. */
static char cleanup_dir[4096];

static void *watch_signals(void *arg)
{
    sigset_t *set = arg;
    int sig = 0;
    sigwait(set, &sig);
    if (sig == SIGUSR2)
        return NULL;
    fprintf(stderr, "\ngondolin: build: interrupted; removing %s\n", cleanup_dir);
    for (int i = 0; i < 3; i++)
        gd_rm_rf(cleanup_dir);
    _exit(130);
}

int gd_build(const struct gd_build_config *c, struct gd_build_opts *o, struct gd_err *err)
{
    char tmp[4096], lock[4096], old[4096];
    const char *slash = strrchr(o->output, '/');
    if (slash && slash != o->output) {
        snprintf(tmp, sizeof(tmp), "%.*s", (int)(slash - o->output), o->output);
        int rc = gd_mkdir_p(tmp, 0755);
        if (rc)
            return gd_err_set(err, rc, "cannot create %s: %s", tmp, strerror(-rc));
    }
    snprintf(lock, sizeof(lock), "%s.lock", o->output);
    int lfd = gd_lock_open(lock);
    if (lfd < 0)
        return gd_err_set(err, lfd, "cannot lock %s: %s", lock, strerror(-lfd));
    remove_stale(o->output);
    snprintf(tmp, sizeof(tmp), "%s.tmp-%d", o->output, (int)getpid());
    gd_rm_rf(tmp);
    int rc = gd_mkdir_p(tmp, 0755);
    if (rc) {
        rc = gd_err_set(err, rc, "cannot create %s: %s", tmp, strerror(-rc));
        goto out;
    }
    snprintf(cleanup_dir, sizeof(cleanup_dir), "%s", tmp);
    static sigset_t set;
    sigset_t oldmask;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGUSR2);
    pthread_sigmask(SIG_BLOCK, &set, &oldmask);
    pthread_t th;
    int watching = pthread_create(&th, NULL, watch_signals, &set) == 0;
    o->sigmask = &oldmask; /* children get the caller's mask back */
    rc = build_into(c, o, tmp, err);
    if (rc) {
        gd_rm_rf(tmp);
        goto restore;
    }
    /* swap into place: a reader sees the old image or the new one, never half */
    snprintf(old, sizeof(old), "%s.old-%d", o->output, (int)getpid());
    if (rename(o->output, old) && errno != ENOENT) {
        rc = gd_err_set(err, -errno, "cannot replace %s: %s", o->output, strerror(errno));
        gd_rm_rf(tmp);
        goto restore;
    }
    if (rename(tmp, o->output)) {
        rc = gd_err_set(err, -errno, "cannot install %s: %s", o->output, strerror(errno));
        gd_rm_rf(tmp);
        goto restore;
    }
    gd_rm_rf(old);
restore:
    if (watching) {
        pthread_kill(th, SIGUSR2);
        pthread_join(th, NULL);
    }
    pthread_sigmask(SIG_SETMASK, &oldmask, NULL);
    o->sigmask = NULL;
out:
    close(lfd);
    return rc;
}

const char *gd_builder_id(void)
{
    return GD_BUILDER_ID;
}

int gd_build_default(struct gd_build_opts *o, struct gd_err *err)
{
    char *text = gd_config_default_json(NULL);
    if (!text)
        return gd_err_set(err, -ENOMEM, "out of memory");
    struct gd_build_config c;
    struct gd_diags d = {0};
    gd_config_parse(text, NULL, NULL, &c, &d);
    free(text);
    int rc = d.errors ? gd_err_set(err, -EINVAL, "default config: %s %s: %s", d.v[0].code,
                                   d.v[0].path, d.v[0].msg)
                      : gd_build(&c, o, err);
    gd_diags_free(&d);
    gd_config_free(&c);
    return rc;
}

int gd_build_verify(const char *dir, FILE *out, struct gd_err *err)
{
    char p[4200];
    snprintf(p, sizeof(p), "%s/manifest.json", dir);
    char *text;
    size_t len;
    int rc = gd_read_file(p, 16u << 20, &text, &len);
    if (rc)
        return gd_err_set(err, rc, "%s: %s", p, strerror(-rc));
    cJSON *m = cJSON_Parse(text);
    free(text);
    cJSON *assets = cJSON_GetObjectItem(m, "assets");
    const char *bid = cJSON_GetStringValue(cJSON_GetObjectItem(m, "buildId"));
    const char *arch = cJSON_GetStringValue(cJSON_GetObjectItem(m, "arch"));
    if (!cJSON_IsObject(assets) || !bid || !arch) {
        cJSON_Delete(m);
        return gd_err_set(err, -EINVAL, "%s: not a gondolin image manifest", p);
    }
    const cJSON *cfg = cJSON_GetObjectItem(m, "config");
    const char *distro = cJSON_GetStringValue(cJSON_GetObjectItem(m, "distro"));
    fprintf(out, "image:   %s\nbuildId: %s\narch:    %s\ndistro:  %s\n", dir, bid, arch,
            distro ? distro : cJSON_GetStringValue(cJSON_GetObjectItem(cfg, "distro")));
    int bad = 0;
    const char *sum[3] = {NULL, NULL, NULL};
    for (const cJSON *a = assets->child; a; a = a->next) {
        const char *path = cJSON_GetStringValue(cJSON_GetObjectItem(a, "path"));
        const char *want = cJSON_GetStringValue(cJSON_GetObjectItem(a, "sha256"));
        char hex[65] = "";
        if (!path || !want || strchr(path, '/')) {
            fprintf(out, "  %-10s BAD ENTRY\n", a->string);
            bad++;
            continue;
        }
        snprintf(p, sizeof(p), "%s/%s", dir, path);
        rc = gd_sha256_file(p, hex);
        int ok = rc == 0 && !strcmp(hex, want);
        fprintf(out, "  %-10s %-20s %s\n", a->string, path,
                ok   ? "ok"
                : rc ? strerror(-rc)
                     : "CHECKSUM MISMATCH");
        if (!ok)
            bad++;
        if (!strcmp(a->string, "kernel"))
            sum[0] = want;
        else if (!strcmp(a->string, "initramfs"))
            sum[1] = want;
        else if (!strcmp(a->string, "rootfs"))
            sum[2] = want;
    }
    if (sum[0] && sum[1] && sum[2]) {
        char id[37];
        gd_build_id(sum[0], sum[1], sum[2], arch, id);
        if (strcmp(id, bid)) {
            fprintf(out, "  buildId    does not match the checksums (%s)\n", id);
            bad++;
        }
    }
    cJSON_Delete(m);
    fprintf(out, "%s\n", bad ? "FAILED" : "all checksums match");
    return bad;
}
