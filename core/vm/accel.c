/*
 * accel.c - is KVM usable here?
 *
 * Opening /dev/kvm is not enough: on some nested setups it opens, creates VMs and
 * vCPUs, and then a stock kernel hangs. So there are two checks: a quick API probe
 * (open, version, create a VM and a vCPU), and the verdict of a real boot under a
 * watchdog (vm.c), cached per host kernel and QEMU binary so the cost is paid once.
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

int gd_kvm_api_probe(char *why, size_t cap)
{
    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm < 0) {
        int e = errno;
        snprintf(why, cap, "/dev/kvm: %s", strerror(e));
        return -e;
    }
    int rc = 0;
    int v = ioctl(kvm, KVM_GET_API_VERSION, 0);
    if (v != KVM_API_VERSION) {
        snprintf(why, cap, "KVM API version %d, expected %d", v, KVM_API_VERSION);
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
}

static void verdict_path(char *buf, size_t cap)
{
    char c[900];
    gd_cache_dir(c, sizeof(c));
    snprintf(buf, cap, "%s/kvm-verdict", c);
}

int gd_kvm_cached_verdict(const char *qemu)
{
    char path[1024], key[2048], line[2300];
    verdict_path(path, sizeof(path));
    verdict_key(qemu, key, sizeof(key));
    FILE *f = fopen(path, "re");
    if (!f)
        return -1;
    int v = -1;
    if (fgets(line, sizeof(line), f)) {
        line[strcspn(line, "\n")] = 0;
        if (strlen(line) > 2 && !strcmp(line + 2, key))
            v = line[0] == '1';
    }
    fclose(f);
    return v;
}

void gd_kvm_record_verdict(const char *qemu, int works)
{
    char path[1024], key[2048], tmp[1100];
    verdict_path(path, sizeof(path));
    verdict_key(qemu, key, sizeof(key));
    char dir[1024];
    snprintf(dir, sizeof(dir), "%s", path);
    *strrchr(dir, '/') = 0;
    mkdir(dir, 0755); /* parent ~/.cache exists in practice; best effort */
    snprintf(tmp, sizeof(tmp), "%s.%d", path, (int)getpid());
    FILE *f = fopen(tmp, "we");
    if (!f)
        return;
    fprintf(f, "%d %s\n", works ? 1 : 0, key);
    if (fclose(f) == 0)
        rename(tmp, path);
    else
        unlink(tmp);
}
