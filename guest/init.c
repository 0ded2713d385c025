/*
 * init - PID 1 of the gondolin initramfs.
 *
 * Mounts the kernel filesystems, loads the modules listed in /etc/gondolin/modules
 * (in order, resolved by the builder), mounts the image's ext4 root read-only under a
 * tmpfs overlay so the guest can write but the image is never modified, moves into
 * it and execs the agent as PID 1. Kernel arguments:
 *   gondolin.poweroff   power off at once (the "bare boot" benchmark baseline)
 *   gondolin.root=DEV   root block device (default /dev/vda)
 *   gondolin.rootfs=M   readonly: the image read-only, no overlay; rw: the image
 *                       itself, writable (build VMs); default: tmpfs overlay
 *   gondolin.mounts=TAG:PATH,...  virtio-fs mounts, in this order (parents first), in
 *                       the final root; loads /etc/gondolin/modules.vfs first (only
 *                       then: those modules cost boot time)
 * From the image: /etc/gondolin/env (KEY=VALUE lines) becomes the agent's environment,
 * /etc/gondolin/init-extra.sh runs (/bin/sh) before the agent starts, and an
 * /etc/gondolin/rootfs-init replaces the exec of the agent (it must exec
 * $GONDOLIN_AGENT itself).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <net/route.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define AGENT "/usr/libexec/gondolin/sandboxd"

/* One line to the kernel log; with console, also to the console (loglevel=1 keeps
 * kernel-log lines off it). */
static void vlog(int console, const char *fmt, va_list ap)
{
    char buf[512];
    int n = vsnprintf(buf, sizeof(buf) - 1, fmt, ap);
    if (n < 0)
        return;
    if (n > (int)sizeof(buf) - 2)
        n = (int)sizeof(buf) - 2;
    buf[n++] = '\n';
    int fd = open("/dev/kmsg", O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        fd = 2;
    if (write(fd, buf, (size_t)n) < 0 || (console && fd != 2 && write(2, buf, (size_t)n) < 0)) {
    }
    if (fd != 2)
        close(fd);
}

static void msg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void msg(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vlog(0, fmt, ap);
    va_end(ap);
}

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vlog(1, fmt, ap);
    va_end(ap);
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

static void load_modules(const char *list)
{
    FILE *f = fopen(list, "re");
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

/* ---- virtio-fs mounts (gondolin.mounts=TAG:PATH,...) ---- */

static void mkdir_p(char *path)
{
    for (char *s = path + 1; *s; s++)
        if (*s == '/') {
            *s = 0;
            mkdir(path, 0755);
            *s = '/';
        }
    mkdir(path, 0755);
}

/* The host validated the paths (absolute, normalised, no ',' ':' or space) and sorted
 * parents first; a mount that fails is reported and skipped, the boot goes on. */
static void setup_mounts(const char *spec)
{
    char buf[2048], *save = NULL;
    snprintf(buf, sizeof(buf), "%.*s", (int)strcspn(spec, " \n"), spec);
    for (char *m = strtok_r(buf, ",", &save); m; m = strtok_r(NULL, ",", &save)) {
        char *path = strchr(m, ':');
        if (!path || path[1] != '/') {
            say("gondolin-init: bad mount spec '%s'", m);
            continue;
        }
        *path++ = 0;
        mkdir_p(path);
        if (mount(m, path, "virtiofs", MS_NOSUID | MS_NODEV, NULL)) {
            say("gondolin-init: mount %s on %s: %s", m, path, strerror(errno));
            continue;
        }
        /* readahead in 1 MiB requests (the host negotiates 1 MiB; the kernel offers its
         * 128 KiB default at INIT): a quarter of the round trips for big reads */
        struct stat st;
        char ra[96];
        if (!stat(path, &st)) {
            snprintf(ra, sizeof(ra), "/sys/class/bdi/%u:%u/read_ahead_kb", major(st.st_dev),
                     minor(st.st_dev));
            int fd = open(ra, O_WRONLY | O_CLOEXEC);
            if (fd >= 0) {
                if (write(fd, "1024", 4) != 4)
                    say("gondolin-init: %s: %s", ra, strerror(errno));
                close(fd);
            }
        }
        step(path);
    }
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

/* ---- network (gondolin.net=ADDR/PREFIX,GATEWAY,DNS) and the MITM CA (gondolin.ca=B64) ---- */

static int set_addr(int sk, unsigned long req, const char *ifn, uint32_t a)
{
    struct ifreq ifr;
    memset(&ifr, 0, sizeof(ifr));
    snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", ifn);
    struct sockaddr_in *sin = (struct sockaddr_in *)&ifr.ifr_addr;
    sin->sin_family = AF_INET;
    sin->sin_addr.s_addr = a;
    return ioctl(sk, req, &ifr);
}

static int link_up(int sk, const char *ifn)
{
    struct ifreq ifr;
    memset(&ifr, 0, sizeof(ifr));
    snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", ifn);
    if (ioctl(sk, SIOCGIFFLAGS, &ifr))
        return -1;
    ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
    return ioctl(sk, SIOCSIFFLAGS, &ifr);
}

static void write_file(const char *path, const void *p, size_t n, int mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
    if (fd < 0 || write(fd, p, n) != (ssize_t)n)
        msg("gondolin-init: write %s: %s", path, strerror(errno));
    if (fd >= 0)
        close(fd);
}

static void setup_net(void)
{
    int sk = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (sk < 0)
        return;
    link_up(sk, "lo");
    const char *spec = karg("gondolin.net");
    if (!spec) {
        close(sk);
        return;
    }
    char buf[128], *save = NULL;
    snprintf(buf, sizeof(buf), "%.*s", (int)strcspn(spec, " \n"), spec);
    char *addr = strtok_r(buf, ",", &save), *gw = strtok_r(NULL, ",", &save),
         *dns = strtok_r(NULL, ",", &save);
    char *slash = addr ? strchr(addr, '/') : NULL;
    struct in_addr a, g;
    if (!slash || !gw || !dns || (*slash = 0, inet_pton(AF_INET, addr, &a) != 1) ||
        inet_pton(AF_INET, gw, &g) != 1) {
        msg("gondolin-init: bad gondolin.net");
        close(sk);
        return;
    }
    int prefix = atoi(slash + 1);
    uint32_t mask = prefix <= 0 ? 0 : htonl(0xffffffffu << (32 - prefix));
    wait_for("/sys/class/net/eth0", 5000);
    if (set_addr(sk, SIOCSIFADDR, "eth0", a.s_addr) || set_addr(sk, SIOCSIFNETMASK, "eth0", mask) ||
        link_up(sk, "eth0"))
        msg("gondolin-init: eth0: %s", strerror(errno));
    struct rtentry rt;
    memset(&rt, 0, sizeof(rt));
    struct sockaddr_in *d = (struct sockaddr_in *)&rt.rt_dst,
                       *gwa = (struct sockaddr_in *)&rt.rt_gateway,
                       *m = (struct sockaddr_in *)&rt.rt_genmask;
    d->sin_family = gwa->sin_family = m->sin_family = AF_INET;
    gwa->sin_addr = g;
    rt.rt_flags = RTF_UP | RTF_GATEWAY;
    rt.rt_dev = (char *)"eth0";
    if (ioctl(sk, SIOCADDRT, &rt))
        msg("gondolin-init: default route: %s", strerror(errno));
    close(sk);
    char rc[128];
    int n = snprintf(rc, sizeof(rc), "nameserver %s\noptions timeout:2 attempts:2\n", dns);
    write_file("/etc/resolv.conf", rc, (size_t)n, 0644);
    step("network up");
}

static int b64val(int c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    return c == '+' ? 62 : c == '/' ? 63 : -1;
}

/* The CA certificate (base64 DER on the command line) becomes the guest's only trust
 * anchor: every TLS connection leaving the guest ends at the host's MITM proxy. */
static void setup_ca(void)
{
    const char *b = karg("gondolin.ca");
    if (!b)
        return;
    static unsigned char der[2048];
    size_t n = 0;
    unsigned acc = 0;
    int bits = 0;
    for (; *b && *b != ' ' && *b != '\n' && *b != '='; b++) {
        int v = b64val((unsigned char)*b);
        if (v < 0 || n >= sizeof(der))
            return;
        acc = acc << 6 | (unsigned)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            der[n++] = (unsigned char)(acc >> bits);
        }
    }
    static char pem[4096];
    static const char t[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t k = (size_t)snprintf(pem, sizeof(pem), "-----BEGIN CERTIFICATE-----\n");
    for (size_t i = 0, col = 0; i < n; i += 3) {
        unsigned v = (unsigned)der[i] << 16 | (i + 1 < n ? (unsigned)der[i + 1] << 8 : 0) |
                     (i + 2 < n ? der[i + 2] : 0);
        pem[k++] = t[v >> 18 & 63];
        pem[k++] = t[v >> 12 & 63];
        pem[k++] = i + 1 < n ? t[v >> 6 & 63] : '=';
        pem[k++] = i + 2 < n ? t[v & 63] : '=';
        if ((col += 4) == 64) {
            pem[k++] = '\n';
            col = 0;
        }
        if (k > sizeof(pem) - 64)
            return;
    }
    if (pem[k - 1] != '\n')
        pem[k++] = '\n';
    k += (size_t)snprintf(pem + k, sizeof(pem) - k, "-----END CERTIFICATE-----\n");
    mkdir("/etc/gondolin", 0755);
    mkdir("/etc/gondolin/mitm", 0755);
    write_file("/etc/gondolin/mitm/ca.crt", pem, k, 0644);
    mkdir("/etc/ssl", 0755);
    mkdir("/etc/ssl/certs", 0755);
    /* hide the distribution's anchors (bundle and hashed links) under a tmpfs */
    mount("tmpfs", "/etc/ssl/certs", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755");
    write_file("/etc/ssl/certs/ca-certificates.crt", pem, k, 0644);
    step("MITM CA installed");
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
    load_modules("/etc/gondolin/modules");
    const char *mounts = karg("gondolin.mounts");
    if (mounts)
        load_modules("/etc/gondolin/modules.vfs");
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
    const char *mode = karg("gondolin.rootfs");
    if (mode && !strncmp(mode, "rw", 2) && (mode[2] == ' ' || mode[2] == '\n' || !mode[2])) {
        if (mount(rootdev, "/newroot", "ext4", 0, NULL))
            die("mount root image read-write");
    } else if (mode && !strncmp(mode, "readonly", 8)) {
        if (mount(rootdev, "/newroot", "ext4", MS_RDONLY, NULL))
            die("mount root image");
    } else {
        if (mount(rootdev, "/lower", "ext4", MS_RDONLY, NULL))
            die("mount root image");
        if (mount("tmpfs", "/rw", "tmpfs", 0, "mode=0755"))
            die("mount tmpfs");
        mkdir("/rw/upper", 0755);
        mkdir("/rw/work", 0755);
        if (mount("overlay", "/newroot", "overlay", 0,
                  "lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work"))
            die("mount overlay root");
    }

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
    if (mounts)
        setup_mounts(mounts);

    setup_net();
    setup_ca();
    step("root switched");
    static char envbuf[16384];
    char *envp[130];
    size_t ne = 0;
    int efd = open("/etc/gondolin/env", O_RDONLY | O_CLOEXEC);
    if (efd >= 0) {
        ssize_t n = read(efd, envbuf, sizeof(envbuf) - 1);
        close(efd);
        envbuf[n > 0 ? n : 0] = 0;
        for (char *save, *l = strtok_r(envbuf, "\n", &save); l && ne < 127;
             l = strtok_r(NULL, "\n", &save))
            if (strchr(l, '=') && l[0] != '=')
                envp[ne++] = l;
    }
    envp[ne] = NULL;
    if (access("/etc/gondolin/init-extra.sh", F_OK) == 0) {
        pid_t pid = fork();
        if (pid == 0) {
            char *a[] = {(char *)"/bin/sh", (char *)"/etc/gondolin/init-extra.sh", NULL};
            execve(a[0], a, envp);
            _exit(127);
        }
        int st;
        if (pid > 0)
            waitpid(pid, &st, 0);
        step("init-extra done");
    }
    if (access("/etc/gondolin/rootfs-init", X_OK) == 0) {
        envp[ne++] = (char *)"GONDOLIN_AGENT=" AGENT;
        envp[ne] = NULL;
        char *a[] = {(char *)"/etc/gondolin/rootfs-init", NULL};
        execve(a[0], a, envp);
        msg("gondolin-init: exec /etc/gondolin/rootfs-init: %s; starting the agent",
            strerror(errno));
        envp[--ne] = NULL;
    }
    char *argv[] = {(char *)"sandboxd", NULL};
    execve(AGENT, argv, envp);
    die("exec " AGENT);
    return 1;
}
