/* build.c - the default image: Debian packages -> gondolin guest image. */
#define _GNU_SOURCE
#include "builder.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <openssl/evp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

/* The default image's userland, and the kernel metapackage per architecture. */
static const char *const default_packages[] = {
    "base-files",      "bash", "dash",    "coreutils", "busybox-static",
    "ca-certificates", "curl", "python3", "grep",      "sed",
    "findutils",       "gzip", "tar",     "less",      NULL,
};
/* No virtio_rng: the guest CPU has RDRAND (KVM: host; TCG: -cpu max), which seeds the
 * kernel's CRNG at once; the module and device cost ~20 ms of boot under TCG. */
static const char *const guest_modules[] = {"virtio_mmio", "virtio_blk", "virtio_console",
                                            "virtio_net",  "overlay",    NULL};
/* busybox applets linked where no package provides the command */
static const char *const busybox_applets[] = {
    "ps",    "top",      "free",   "vi",    "ip",    "ifconfig", "ping",     "wget",
    "nc",    "poweroff", "reboot", "halt",  "mount", "umount",   "hostname", "xxd",
    "which", "killall",  "pgrep",  "pkill", "lsmod", "dmesg",    "uptime",   "watch",
    "unzip", "awk",      "diff",   "xargs", "find",  "sleep",    "more",     "clear",
    "reset", "stty",     "tr",     "od",    NULL,
};
#define IMAGE_TIMESTAMP 1704067200u /* 2024-01-01: fixed so builds are reproducible */

static int rm_cb(const char *p, const struct stat *st, int flag, struct FTW *f)
{
    (void)st;
    (void)flag;
    (void)f;
    return remove(p) && errno != ENOENT ? -1 : 0;
}

int gd_rm_rf(const char *path)
{
    if (access(path, F_OK) != 0)
        return 0;
    return nftw(path, rm_cb, 32, FTW_DEPTH | FTW_PHYS) ? -errno : 0;
}

int gd_copy_file(const char *src, const char *dst, unsigned mode)
{
    int in = open(src, O_RDONLY | O_CLOEXEC);
    if (in < 0)
        return -errno;
    unlink(dst);
    int out = open(dst, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
    if (out < 0) {
        int e = -errno;
        close(in);
        return e;
    }
    char buf[1 << 16];
    ssize_t n;
    int rc = 0;
    while ((n = read(in, buf, sizeof(buf))) > 0)
        if (write(out, buf, (size_t)n) != n) {
            rc = -EIO;
            break;
        }
    if (n < 0)
        rc = -errno;
    close(in);
    if (close(out) && !rc)
        rc = -errno;
    fchmodat(AT_FDCWD, dst, mode, 0);
    return rc;
}

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

static int finish_rootfs(const char *root, const char *guest_dir, struct gd_err *err)
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
        chmod(p, dirs[i].mode);
    }
    /* what dpkg's path-exclude does in minimal images */
    static const char *const drop[] = {"usr/share/doc", "usr/share/man", "usr/share/info",
                                       "usr/share/locale", "usr/share/lintian"};
    for (size_t i = 0; i < sizeof(drop) / sizeof(drop[0]); i++) {
        snprintf(p, sizeof(p), "%s/%s", root, drop[i]);
        gd_rm_rf(p);
    }
    int rc = 0;
    rc |= write_text(root, "etc/passwd",
                     "root:x:0:0:root:/root:/bin/bash\n"
                     "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
                     0644);
    rc |= write_text(root, "etc/group",
                     "root:x:0:\ntty:x:5:\nstaff:x:50:\nusers:x:100:\nnogroup:x:65534:\n", 0644);
    rc |= write_text(root, "etc/shadow", "root:*:19723:0:99999:7:::\n", 0640);
    rc |= write_text(root, "etc/hostname", "gondolin\n", 0644);
    rc |= write_text(root, "etc/hosts",
                     "127.0.0.1\tlocalhost\n127.0.1.1\tgondolin\n"
                     "::1\tlocalhost ip6-localhost ip6-loopback\n",
                     0644);
    if (!exists(root, "etc/profile"))
        rc |= write_text(root, "etc/profile",
                         "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"
                         "export PATH\n",
                         0644);
    if (!exists(root, "root/.bashrc") && exists(root, "etc/skel/.bashrc")) {
        snprintf(p, sizeof(p), "%s/etc/skel/.bashrc", root);
        snprintf(q, sizeof(q), "%s/root/.bashrc", root);
        gd_copy_file(p, q, 0644);
    }
    if (rc)
        return gd_err_set(err, -EIO, "cannot write /etc files in %s", root);
    /* /bin/sh: dash, as Debian's dash postinst would link it */
    snprintf(p, sizeof(p), "%s/usr/bin/sh", root);
    if (!exists(root, "usr/bin/sh") && symlink(exists(root, "usr/bin/dash") ? "dash" : "bash", p))
        return gd_err_set(err, -errno, "cannot link /bin/sh");
    for (size_t i = 0; busybox_applets[i] && exists(root, "usr/bin/busybox"); i++) {
        char a[256], b[256];
        snprintf(a, sizeof(a), "usr/bin/%s", busybox_applets[i]);
        snprintf(b, sizeof(b), "usr/sbin/%s", busybox_applets[i]);
        if (exists(root, a) || exists(root, b))
            continue;
        snprintf(p, sizeof(p), "%s/%s", root, a);
        if (symlink("busybox", p))
            return gd_err_set(err, -errno, "cannot link %s", a);
    }
    if ((rc = make_ca_bundle(root)))
        return gd_err_set(err, rc, "cannot write the CA bundle: %s", strerror(-rc));
    snprintf(p, sizeof(p), "%s/sandboxd", guest_dir);
    snprintf(q, sizeof(q), "%s/usr/libexec/gondolin/sandboxd", root);
    if ((rc = gd_copy_file(p, q, 0755)))
        return gd_err_set(err, rc, "cannot install the guest agent %s: %s", p, strerror(-rc));
    return 0;
}

/* Drops the appended module signature. The kernel then skips the RSA check, which costs
 * tens of milliseconds per module under TCG; the initramfs itself is covered by the
 * manifest's sha256. (The kernel logs a one-time taint notice, hidden by `quiet`.) */
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

static int build_initramfs(const char *kroot, const char *kver, const char *guest_dir,
                           const char *work, const char *out, struct gd_err *err)
{
    char dir[4096], p[4096], q[4096 + 300], moddir[4096];
    snprintf(dir, sizeof(dir), "%s/initramfs", work);
    gd_rm_rf(dir);
    static const char *const sub[] = {"dev",         "proc",  "sys", "etc/gondolin",
                                      "lib/modules", "lower", "rw",  "newroot"};
    for (size_t i = 0; i < sizeof(sub) / sizeof(sub[0]); i++) {
        snprintf(p, sizeof(p), "%s/%s", dir, sub[i]);
        gd_mkdir_p(p, 0755);
    }
    snprintf(p, sizeof(p), "%s/init", guest_dir);
    snprintf(q, sizeof(q), "%s/init", dir);
    int rc = gd_copy_file(p, q, 0755);
    if (rc)
        return gd_err_set(err, rc, "cannot copy guest init %s: %s", p, strerror(-rc));
    snprintf(moddir, sizeof(moddir), "%s/usr/lib/modules/%s/kernel", kroot, kver);
    char **order;
    size_t n;
    if ((rc = gd_modules_resolve(moddir, guest_modules, &order, &n, err)))
        return rc;
    snprintf(p, sizeof(p), "%s/etc/gondolin/modules", dir);
    FILE *f = fopen(p, "we");
    for (size_t i = 0; i < n && !rc; i++) {
        const char *base = strrchr(order[i], '/');
        base = base ? base + 1 : order[i];
        if (f)
            fprintf(f, "%s\n", base);
        snprintf(p, sizeof(p), "%s/%s", moddir, order[i]);
        snprintf(q, sizeof(q), "%s/lib/modules/%s", dir, base);
        if ((rc = gd_copy_file(p, q, 0644)) || (rc = strip_module_signature(q)))
            rc = gd_err_set(err, rc, "cannot copy module %s", p);
    }
    for (size_t i = 0; i < n; i++)
        free(order[i]);
    free(order);
    if (!f || fclose(f))
        return gd_err_set(err, -EIO, "cannot write module list");
    if (rc)
        return rc;
    return gd_initramfs_write(dir, out, err);
}

static void progress(const struct gd_build_opts *o, const char *what, const char *arg)
{
    (void)o;
    fprintf(stderr, "gondolin: build: %s %s\n", what, arg);
}

static int add_asset(cJSON *assets, const char *key, const char *dir, const char *file, char *ids,
                     size_t cap, struct gd_err *err)
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
    size_t l = strlen(ids);
    snprintf(ids + l, cap - l, "%s %s %s\n", key, file, hex);
    return 0;
}

static const char *host_arch(void)
{
    struct utsname u;
    uname(&u);
    return !strcmp(u.machine, "aarch64") ? "aarch64" : "x86_64";
}

static int build_into(const struct gd_build_opts *o, const char *tmp, struct gd_err *err)
{
    const char *arch = host_arch();
    if (strcmp(arch, "x86_64"))
        return gd_err_set(err, -ENOTSUP,
                          "default image for %s: not supported yet (the microvm + PVH boot "
                          "path is x86_64 only)",
                          arch);
    const char *kmeta = !strcmp(arch, "aarch64") ? "linux-image-arm64" : "linux-image-cloud-amd64";
    char work[4096], root[4096], kroot[4096], p[4096], q[4096];
    snprintf(work, sizeof(work), "%s/.work", tmp);
    snprintf(root, sizeof(root), "%s/rootfs", work);
    snprintf(kroot, sizeof(kroot), "%s/kernel", work);
    int rc;
    if ((rc = gd_mkdir_p(root, 0755)) || (rc = gd_mkdir_p(kroot, 0755)))
        return gd_err_set(err, rc, "cannot create %s: %s", work, strerror(-rc));

    struct gd_pkg *pk = NULL, *kp = NULL;
    size_t npk = 0, nkp = 0;
    char **paths = NULL, **kpaths = NULL;
    progress(o, "resolving", "Debian packages");
    if ((rc = gd_deb_resolve(default_packages, &pk, &npk, err)))
        goto out;
    const char *km[] = {kmeta, NULL};
    if ((rc = gd_deb_resolve(km, &kp, &nkp, err)))
        goto out;
    struct gd_pkg kernel = {0};
    for (size_t i = 0; i < nkp; i++)
        if (!strncmp(kp[i].name, "linux-image-", 12) && strcmp(kp[i].name, kmeta))
            kernel = kp[i];
    if (!kernel.name[0]) {
        rc = gd_err_set(err, -ENOENT, "no kernel package behind %s", kmeta);
        goto out;
    }
    progress(o, "downloading packages into", o->cache_dir);
    if ((rc = gd_deb_fetch(pk, npk, o->cache_dir, &paths, err)) ||
        (rc = gd_deb_fetch(&kernel, 1, o->cache_dir, &kpaths, err)))
        goto out;

    progress(o, "unpacking", "packages");
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
    for (size_t i = 0; i < npk; i++)
        if ((rc = gd_deb_unpack(paths[i], root, err)))
            goto out;
    if ((rc = gd_deb_unpack(kpaths[0], kroot, err)))
        goto out;
    if ((rc = finish_rootfs(root, o->guest_dir, err)))
        goto out;

    /* kernel: the bzImage, and the PVH vmlinux inside it (faster to boot on microvm) */
    const char *kver = kernel.name + strlen("linux-image-");
    snprintf(p, sizeof(p), "%s/boot/vmlinuz-%s", kroot, kver);
    snprintf(q, sizeof(q), "%s/vmlinuz", tmp);
    if ((rc = gd_copy_file(p, q, 0644))) {
        rc = gd_err_set(err, rc, "kernel image %s: %s", p, strerror(-rc));
        goto out;
    }
    snprintf(p, sizeof(p), "%s/vmlinux", tmp);
    if ((rc = gd_kernel_extract_vmlinux(q, p, err)))
        goto out;

    progress(o, "writing", "initramfs.cpio.lz4");
    snprintf(p, sizeof(p), "%s/initramfs.cpio.lz4", tmp);
    if ((rc = build_initramfs(kroot, kver, o->guest_dir, work, p, err)))
        goto out;

    /* identity of the inputs -> UUID and hash seed of the filesystem */
    size_t idcap = 256 + (npk + 4) * 300;
    char *ident = calloc(1, idcap);
    if (!ident) {
        rc = gd_err_set(err, -ENOMEM, "out of memory");
        goto out;
    }
    size_t il = (size_t)snprintf(ident, idcap, "gondolin-default-image v1 %s\n", arch);
    for (size_t i = 0; i < npk; i++)
        il += (size_t)snprintf(ident + il, idcap - il, "%s=%s\n", pk[i].name, pk[i].version);
    char ghex[65];
    snprintf(p, sizeof(p), "%s/sandboxd", o->guest_dir);
    gd_sha256_file(p, ghex);
    snprintf(ident + il, idcap - il, "sandboxd=%s\n", ghex);
    unsigned char md[32];
    sha256_str(ident, md);
    free(ident);
    struct gd_ext4_opts eo = {.timestamp = IMAGE_TIMESTAMP, .label = "gondolin-root"};
    memcpy(eo.uuid, md, 16);
    eo.uuid[6] = (uint8_t)((eo.uuid[6] & 0x0f) | 0x50); /* name-based UUID */
    eo.uuid[8] = (uint8_t)((eo.uuid[8] & 0x3f) | 0x80);
    memcpy(eo.hash_seed, md + 16, 16);
    progress(o, "writing", "rootfs.ext4");
    snprintf(p, sizeof(p), "%s/rootfs.ext4", tmp);
    if ((rc = gd_ext4_write(root, p, &eo, err)))
        goto out;

    /* manifest */
    cJSON *m = cJSON_CreateObject();
    cJSON_AddNumberToObject(m, "schema", 1);
    cJSON_AddStringToObject(m, "name", "default");
    cJSON_AddStringToObject(m, "arch", arch);
    cJSON *cfg = cJSON_AddObjectToObject(m, "config");
    cJSON_AddStringToObject(cfg, "arch", arch);
    cJSON_AddStringToObject(cfg, "distro", "debian");
    cJSON *deb = cJSON_AddObjectToObject(cfg, "debian");
    cJSON_AddStringToObject(deb, "kernelPackage", kmeta);
    cJSON_AddItemToObject(
        deb, "packages",
        cJSON_CreateStringArray(default_packages,
                                (int)(sizeof(default_packages) / sizeof(default_packages[0]) - 1)));
    cJSON_AddStringToObject(m, "kernelVersion", kver);
    cJSON *pl = cJSON_AddArrayToObject(m, "packages");
    for (size_t i = 0; i < npk; i++) {
        cJSON *e = cJSON_CreateObject();
        cJSON_AddStringToObject(e, "name", pk[i].name);
        cJSON_AddStringToObject(e, "version", pk[i].version);
        cJSON_AddStringToObject(e, "arch", pk[i].arch);
        cJSON_AddItemToArray(pl, e);
    }
    cJSON *ke = cJSON_CreateObject();
    cJSON_AddStringToObject(ke, "name", kernel.name);
    cJSON_AddStringToObject(ke, "version", kernel.version);
    cJSON_AddStringToObject(ke, "arch", kernel.arch);
    cJSON_AddItemToArray(pl, ke);
    cJSON *guest = cJSON_AddObjectToObject(m, "guest");
    cJSON_AddStringToObject(guest, "sandboxd", ghex);
    char ids[4096] = "";
    cJSON *assets = cJSON_AddObjectToObject(m, "assets");
    if ((rc = add_asset(assets, "kernel", tmp, "vmlinux", ids, sizeof(ids), err)) ||
        (rc = add_asset(assets, "bzImage", tmp, "vmlinuz", ids, sizeof(ids), err)) ||
        (rc = add_asset(assets, "initramfs", tmp, "initramfs.cpio.lz4", ids, sizeof(ids), err)) ||
        (rc = add_asset(assets, "rootfs", tmp, "rootfs.ext4", ids, sizeof(ids), err))) {
        cJSON_Delete(m);
        goto out;
    }
    sha256_str(ids, md);
    char bid[65];
    for (int i = 0; i < 32; i++)
        sprintf(bid + 2 * i, "%02x", md[i]);
    cJSON_AddStringToObject(m, "buildId", bid);
    char *text = cJSON_Print(m);
    cJSON_Delete(m);
    snprintf(p, sizeof(p), "%s/manifest.json", tmp);
    rc = text ? write_text(tmp, "manifest.json", text, 0644) : -ENOMEM;
    free(text);
    if (rc) {
        rc = gd_err_set(err, rc, "cannot write %s", p);
        goto out;
    }
    progress(o, "image ready, buildId", bid);
out:
    gd_rm_rf(work);
    if (paths)
        for (size_t i = 0; i < npk; i++)
            free(paths[i]);
    free(paths);
    if (kpaths)
        free(kpaths[0]);
    free(kpaths);
    free(pk);
    free(kp);
    return rc;
}

/* Under the lock: remove <output>.tmp-PID / .old-PID left by a build that was
 * interrupted (its process is gone), so a killed build leaves nothing for long. */
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

int gd_build_default(const struct gd_build_opts *o, struct gd_err *err)
{
    char tmp[4096], lock[4096], old[4096];
    const char *slash = strrchr(o->output, '/');
    if (slash) {
        snprintf(tmp, sizeof(tmp), "%.*s", (int)(slash - o->output), o->output);
        int rc = gd_mkdir_p(tmp, 0755);
        if (rc)
            return gd_err_set(err, rc, "cannot create %s: %s", tmp, strerror(-rc));
    }
    snprintf(lock, sizeof(lock), "%s.lock", o->output);
    int lfd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (lfd < 0)
        return gd_err_set(err, -errno, "cannot open %s: %s", lock, strerror(errno));
    if (flock(lfd, LOCK_EX)) {
        close(lfd);
        return gd_err_set(err, -errno, "cannot lock %s", lock);
    }
    remove_stale(o->output);
    snprintf(tmp, sizeof(tmp), "%s.tmp-%d", o->output, (int)getpid());
    gd_rm_rf(tmp);
    int rc = gd_mkdir_p(tmp, 0755);
    if (rc) {
        rc = gd_err_set(err, rc, "cannot create %s: %s", tmp, strerror(-rc));
        goto out;
    }
    rc = build_into(o, tmp, err);
    if (rc) {
        gd_rm_rf(tmp);
        goto out;
    }
    /* swap into place: a reader sees the old image or the new one, never half */
    snprintf(old, sizeof(old), "%s.old-%d", o->output, (int)getpid());
    if (rename(o->output, old) && errno != ENOENT) {
        rc = gd_err_set(err, -errno, "cannot replace %s: %s", o->output, strerror(errno));
        gd_rm_rf(tmp);
        goto out;
    }
    if (rename(tmp, o->output)) {
        rc = gd_err_set(err, -errno, "cannot install %s: %s", o->output, strerror(errno));
        gd_rm_rf(tmp);
        goto out;
    }
    gd_rm_rf(old);
out:
    flock(lfd, LOCK_UN);
    close(lfd);
    return rc;
}
