/*
 * init - PID 1 of the gondolin initramfs.
 *
 * Mounts the kernel filesystems, loads the modules listed in /etc/gondolin/modules
 * (in order, resolved by the builder), mounts the image's ext4 root read-only under a
 * tmpfs overlay so the guest can write but the image is never modified, moves into
 * it and execs the agent as PID 1. Kernel arguments:
 *   gondolin.poweroff   power off at once (the "bare boot" benchmark baseline)
 *   gondolin.root=DEV   root block device (default /dev/vda)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define AGENT "/usr/libexec/gondolin/sandboxd"

static void msg(const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof(buf) - 1, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if (n > (int)sizeof(buf) - 2)
        n = (int)sizeof(buf) - 2;
    buf[n++] = '\n';
    int fd = open("/dev/kmsg", O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        fd = 2;
    if (write(fd, buf, (size_t)n) < 0) {
    }
    if (fd != 2)
        close(fd);
}

static void halt_now(void)
{
    sync();
    reboot(RB_POWER_OFF);
    reboot(RB_AUTOBOOT); /* with -no-reboot, QEMU exits */
    for (;;)
        pause();
}

static void die(const char *what)
{
    msg("gondolin-init: %s: %s", what, strerror(errno));
    halt_now();
}

static char cmdline[4096];
static int debug;

static void step(const char *what)
{
    if (!debug)
        return;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    msg("gondolin-init: %ld.%03ld %s", (long)ts.tv_sec, ts.tv_nsec / 1000000, what);
}

static const char *karg(const char *key)
{
    size_t kl = strlen(key);
    for (char *p = cmdline; *p;) {
        while (*p == ' ')
            p++;
        if (!strncmp(p, key, kl) && (p[kl] == '=' || p[kl] == ' ' || p[kl] == 0 || p[kl] == '\n'))
            return p[kl] == '=' ? p + kl + 1 : "";
        while (*p && *p != ' ')
            p++;
    }
    return NULL;
}

static void load_modules(void)
{
    FILE *f = fopen("/etc/gondolin/modules", "re");
    if (!f)
        return;
    char line[256], path[512];
    while (fgets(line, sizeof(line), f)) {
        line[strcspn(line, "\r\n")] = 0;
        if (!line[0] || line[0] == '#')
            continue;
        snprintf(path, sizeof(path), "/lib/modules/%s", line);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            msg("gondolin-init: module %s: %s", path, strerror(errno));
            continue;
        }
        if (syscall(SYS_finit_module, fd, "", 0) != 0 && errno != EEXIST)
            msg("gondolin-init: load %s: %s", line, strerror(errno));
        step(line);
        close(fd);
    }
    fclose(f);
}

static void wait_for(const char *path, int ms)
{
    struct timespec ts = {0, 2 * 1000 * 1000};
    for (int i = 0; i < ms / 2; i++) {
        if (access(path, F_OK) == 0)
            return;
        nanosleep(&ts, NULL);
    }
}

int main(void)
{
    mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
    mount("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
    mount("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755");

    int fd = open("/proc/cmdline", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        ssize_t n = read(fd, cmdline, sizeof(cmdline) - 1);
        cmdline[n > 0 ? n : 0] = 0;
        close(fd);
    }
    if (karg("gondolin.poweroff"))
        halt_now();
    debug = karg("gondolin.debug") != NULL;
    step("start");
    load_modules();
    step("modules loaded");

    const char *root = karg("gondolin.root");
    char rootdev[64];
    snprintf(rootdev, sizeof(rootdev), "%.*s", (int)(root ? strcspn(root, " \n") : 0),
             root ? root : "");
    if (!rootdev[0])
        strcpy(rootdev, "/dev/vda");
    wait_for(rootdev, 10000);
    step("root device present");

    mkdir("/lower", 0755);
    mkdir("/rw", 0755);
    mkdir("/newroot", 0755);
    if (mount(rootdev, "/lower", "ext4", MS_RDONLY, NULL))
        die("mount root image");
    if (mount("tmpfs", "/rw", "tmpfs", 0, "mode=0755"))
        die("mount tmpfs");
    mkdir("/rw/upper", 0755);
    mkdir("/rw/work", 0755);
    if (mount("overlay", "/newroot", "overlay", 0,
              "lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work"))
        die("mount overlay root");

    if (mount("/dev", "/newroot/dev", NULL, MS_MOVE, NULL) ||
        mount("/proc", "/newroot/proc", NULL, MS_MOVE, NULL) ||
        mount("/sys", "/newroot/sys", NULL, MS_MOVE, NULL))
        die("move kernel filesystems");
    if (chdir("/newroot") || mount(".", "/", NULL, MS_MOVE, NULL) || chroot(".") || chdir("/"))
        die("switch root");

    mkdir("/dev/pts", 0755);
    mkdir("/dev/shm", 01777);
    mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "gid=5,mode=620,ptmxmode=666");
    mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
    mount("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755");
    mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
    if (access("/dev/ptmx", F_OK) != 0)
        symlink("pts/ptmx", "/dev/ptmx");

    step("root switched");
    char *argv[] = {(char *)"sandboxd", NULL};
    char *envp[] = {NULL};
    execve(AGENT, argv, envp);
    die("exec " AGENT);
    return 1;
}
