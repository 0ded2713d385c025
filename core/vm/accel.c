/*
 * accel.c - is KVM usable here?
 *
 * Opening /dev/kvm is not enough: on some nested setups it opens, creates VMs and
 * vCPUs, and then a stock kernel hangs. So there are two checks: a quick API probe
 * (open, version, create a VM and a vCPU), and the verdict of a real boot under a
 * watchdog (vm.c), cached per host kernel and QEMU binary so the cost is paid once,
 * together with what happened (QEMU crashed, exited, or the guest hung).
 *
 * Tests steer both checks: GONDOLIN_KVM_DEVICE names the device to probe (a missing path
 * plays a host without KVM) and GONDOLIN_ASSUME_KVM_API=1 answers the probe with yes (a
 * host whose /dev/kvm opens, whatever this one has).
 */
#define _GNU_SOURCE
#include "vm.h"

#include "image/image.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <unistd.h>

const char *gd_kvm_device(void)
{
    const char *d = getenv("GONDOLIN_KVM_DEVICE");
    return d && *d ? d : "/dev/kvm";
}

int gd_kvm_api_probe(char *why, size_t cap)
{
    if (getenv("GONDOLIN_ASSUME_KVM_API")) {
        snprintf(why, cap, "KVM API assumed usable (GONDOLIN_ASSUME_KVM_API)");
        return 0;
    }
    const char *dev = gd_kvm_device();
    int kvm = open(dev, O_RDWR | O_CLOEXEC);
    if (kvm < 0) {
        int e = errno;
        snprintf(why, cap, "%s: %s", dev, strerror(e));
        return -e;
    }
    int rc = 0;
    int v = ioctl(kvm, KVM_GET_API_VERSION, 0);
    if (v != KVM_API_VERSION) {
        snprintf(why, cap, "%s: KVM API version %d, expected %d", dev, v, KVM_API_VERSION);
        close(kvm);
        return -ENOTSUP;
    }
    int vmfd = ioctl(kvm, KVM_CREATE_VM, 0);
    if (vmfd < 0) {
        rc = -errno;
        snprintf(why, cap, "KVM_CREATE_VM: %s", strerror(errno));
        close(kvm);
        return rc;
    }
    int cpu = ioctl(vmfd, KVM_CREATE_VCPU, 0);
    if (cpu < 0) {
        rc = -errno;
        snprintf(why, cap, "KVM_CREATE_VCPU: %s", strerror(errno));
    } else {
        close(cpu);
        snprintf(why, cap, "KVM API usable");
    }
    close(vmfd);
    close(kvm);
    return rc;
}

/* Identity of a verdict: host kernel and the QEMU binary (path, size, mtime). Tabs and
 * newlines are the file's separators: none in a key. */
static void verdict_key(const char *qemu, char *key, size_t cap)
{
    struct utsname u;
    uname(&u);
    char path[1024] = "";
    /* resolve qemu in PATH for its identity */
    if (strchr(qemu, '/')) {
        snprintf(path, sizeof(path), "%s", qemu);
    } else {
        const char *p = getenv("PATH");
        char buf[4096];
        snprintf(buf, sizeof(buf), "%s", p ? p : "/usr/bin:/bin");
        for (char *save, *d = strtok_r(buf, ":", &save); d; d = strtok_r(NULL, ":", &save)) {
            snprintf(path, sizeof(path), "%s/%s", d, qemu);
            if (access(path, X_OK) == 0)
                break;
            path[0] = 0;
        }
    }
    struct stat st = {0};
    stat(path, &st);
    snprintf(key, cap, "%s %s %s %lld %lld", u.release, u.version, path, (long long)st.st_size,
             (long long)st.st_mtime);
    for (char *c = key; *c; c++)
        if (*c == '\t' || *c == '\n')
            *c = ' ';
}

void gd_kvm_verdict_path(char *buf, size_t cap)
{
    char c[900];
    gd_cache_dir(c, sizeof(c));
    snprintf(buf, cap, "%s/kvm-verdict", c);
}

/* The file holds one line per key: "V<TAB>KEY<TAB>WHY", V 1 (works) or 0 (does not).
 * Lines of another shape (an older format) are ignored. */
#define MAX_VERDICTS 16

static int parse_line(char *line, char **key, char **why)
{
    line[strcspn(line, "\n")] = 0;
    if ((line[0] != '0' && line[0] != '1') || line[1] != '\t')
        return -1;
    *key = line + 2;
    char *t = strchr(*key, '\t');
    if (!t)
        return -1;
    *t = 0;
    *why = t + 1;
    return line[0] == '1';
}

int gd_kvm_cached_verdict(const char *qemu, char *why, size_t cap)
{
    char path[1024], key[2048], line[3000];
    gd_kvm_verdict_path(path, sizeof(path));
    verdict_key(qemu, key, sizeof(key));
    if (why && cap)
        why[0] = 0;
    FILE *f = fopen(path, "re");
    if (!f)
        return -1;
    int v = -1;
    while (v < 0 && fgets(line, sizeof(line), f)) {
        char *k, *w;
        int lv = parse_line(line, &k, &w);
        if (lv >= 0 && !strcmp(k, key)) {
            v = lv;
            if (why && cap)
                snprintf(why, cap, "%s", w);
        }
    }
    fclose(f);
    return v;
}

void gd_kvm_record_verdict(const char *qemu, int works, const char *why)
{
    char path[1024], key[2048], tmp[1100];
    gd_kvm_verdict_path(path, sizeof(path));
    verdict_key(qemu, key, sizeof(key));
    char dir[1024];
    snprintf(dir, sizeof(dir), "%s", path);
    *strrchr(dir, '/') = 0;
    mkdir(dir, 0755); /* parent ~/.cache exists in practice; best effort */
    /* keep the other keys' lines (other QEMU binaries, other kernels), newest last */
    char keep[MAX_VERDICTS][3000];
    int nkeep = 0;
    FILE *in = fopen(path, "re");
    if (in) {
        char line[3000], copy[3000];
        while (fgets(line, sizeof(line), in)) {
            char *k, *w;
            snprintf(copy, sizeof(copy), "%s", line);
            if (parse_line(line, &k, &w) < 0 || !strcmp(k, key))
                continue;
            if (nkeep == MAX_VERDICTS - 1) { /* drop the oldest */
                memmove(keep[0], keep[1], sizeof(keep[0]) * (MAX_VERDICTS - 2));
                nkeep--;
            }
            copy[strcspn(copy, "\n")] = 0;
            snprintf(keep[nkeep++], sizeof(keep[0]), "%s", copy);
        }
        fclose(in);
    }
    char w[512];
    snprintf(w, sizeof(w), "%s", why ? why : "");
    for (char *c = w; *c; c++)
        if (*c == '\t' || *c == '\n' || *c == '\r')
            *c = ' ';
    snprintf(tmp, sizeof(tmp), "%s.%d", path, (int)getpid());
    FILE *f = fopen(tmp, "we");
    if (!f)
        return;
    for (int i = 0; i < nkeep; i++)
        fprintf(f, "%s\n", keep[i]);
    fprintf(f, "%d\t%s\t%s\n", works ? 1 : 0, key, w);
    if (fclose(f) == 0)
        rename(tmp, path);
    else
        unlink(tmp);
}

const char *gd_qemu_binary(const char *arch)
{
    const char *q = getenv("GONDOLIN_QEMU");
    if (q && *q)
        return q;
    return arch && !strcmp(arch, "aarch64") ? "qemu-system-aarch64" : "qemu-system-x86_64";
}
