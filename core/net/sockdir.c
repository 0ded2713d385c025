/* sockdir.c - the proxy's socket directory, removed however its owner ends (sockdir.h). */
#define _GNU_SOURCE
#include "net/sockdir.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define PREFIX "gondolin-net-"

/* Start time of pid in clock ticks after boot (/proc/PID/stat field 22), 0 if there is
 * no such process. */
static unsigned long long proc_start_time(pid_t pid)
{
    char p[64], buf[1024];
    snprintf(p, sizeof(p), "/proc/%d/stat", (int)pid);
    int fd = open(p, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = 0;
    char *c = strrchr(buf, ')'); /* the command name may contain spaces and parens */
    if (!c)
        return 0;
    char *save = NULL, *tok = strtok_r(c + 1, " ", &save);
    for (int field = 3; tok && field < 22; field++)
        tok = strtok_r(NULL, " ", &save);
    return tok ? strtoull(tok, NULL, 10) : 0;
}

/* Unlinks every entry of the directory open as dfd. Only system calls: the janitor runs
 * it in a forked child of a multi-threaded process. */
static void empty_dir(int dfd)
{
    char buf[4096];
    for (int round = 0; round < 64; round++) {
        lseek(dfd, 0, SEEK_SET);
        long n = syscall(SYS_getdents64, dfd, buf, sizeof(buf));
        int removed = 0;
        for (long off = 0; n > 0 && off < n;) {
            struct dirent64 *e = (struct dirent64 *)(buf + off);
            off += e->d_reclen;
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
                continue;
            if (unlinkat(dfd, e->d_name, 0) == 0)
                removed++;
        }
        if (n <= 0 || !removed)
            return;
    }
}

const char *gd_sockdir_base(void)
{
    const char *rt = getenv("XDG_RUNTIME_DIR");
    struct stat st;
    if (!rt || stat(rt, &st) || !S_ISDIR(st.st_mode) || strlen(rt) > 60)
        rt = "/tmp";
    return rt;
}

void gd_sockdir_clean_stale(const char *base)
{
    DIR *d = opendir(base);
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d))) {
        int pid = 0, used = 0;
        unsigned long long start = 0;
        if (strncmp(e->d_name, PREFIX, strlen(PREFIX)) ||
            sscanf(e->d_name + strlen(PREFIX), "%d-%llu-%n", &pid, &start, &used) != 2 || !used ||
            pid <= 0 || strlen(e->d_name + strlen(PREFIX) + used) != 6)
            continue; /* not a name of ours (or of an older version: left alone) */
        if (proc_start_time(pid) == start)
            continue; /* its owner is alive */
        int fd = openat(dirfd(d), e->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0)
            continue;
        struct stat st;
        if (fstat(fd, &st) == 0 && st.st_uid == geteuid()) {
            empty_dir(fd);
            unlinkat(dirfd(d), e->d_name, AT_REMOVEDIR);
        }
        close(fd);
    }
    closedir(d);
}

/* The janitor: waits for EOF on rfd (the owner is gone, or closed the pipe), then
 * empties dfd and removes path. System calls only (forked from a threaded process). */
static void __attribute__((noreturn)) janitor(int rfd, int dfd, const char *path)
{
    setsid(); /* terminal and process-group signals meant for the owner miss it */
    rfd = fcntl(rfd, F_DUPFD, 100);
    dfd = fcntl(dfd, F_DUPFD, 100);
    int nul = open("/dev/null", O_RDWR);
    dup2(nul, 0);
    dup2(nul, 1);
    dup2(nul, 2);
    dup2(rfd, 3);
    dup2(dfd, 4);
    syscall(SYS_close_range, 5, ~0u, 0); /* above all the owner's write end */
    char c;
    for (;;) {
        ssize_t r = read(3, &c, 1);
        if (r == 0 || (r < 0 && errno != EINTR))
            break;
    }
    empty_dir(4);
    rmdir(path);
    _exit(0);
}

int gd_sockdir_create(struct gd_sockdir *d)
{
    memset(d, 0, sizeof(*d));
    d->janitor_fd = -1;
    const char *base = gd_sockdir_base();
    gd_sockdir_clean_stale(base);
    pid_t me = getpid();
    int n = snprintf(d->path, sizeof(d->path), "%s/" PREFIX "%d-%llu-XXXXXX", base, (int)me,
                     proc_start_time(me));
    if (n < 0 || (size_t)n + 6 > sizeof(d->path)) /* room for "/4095" */
        return -ENAMETOOLONG;
    if (!mkdtemp(d->path)) {
        int e = errno;
        d->path[0] = 0;
        return -e;
    }
    int dfd = open(d->path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    int p[2] = {-1, -1};
    if (dfd < 0 || pipe2(p, O_CLOEXEC))
        goto no_janitor; /* the next start's clean-up still covers us */
    pid_t pid = fork();
    if (pid == 0)
        janitor(p[0], dfd, d->path);
    if (pid > 0) {
        d->janitor = pid;
        d->janitor_fd = p[1];
        p[1] = -1;
    }
no_janitor:
    if (p[0] >= 0)
        close(p[0]);
    if (p[1] >= 0)
        close(p[1]);
    if (dfd >= 0)
        close(dfd);
    return 0;
}

void gd_sockdir_remove(struct gd_sockdir *d)
{
    if (d->path[0]) {
        int dfd = open(d->path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (dfd >= 0) {
            empty_dir(dfd);
            close(dfd);
        }
        rmdir(d->path);
        d->path[0] = 0;
    }
    if (d->janitor_fd >= 0)
        close(d->janitor_fd); /* EOF: the janitor finds nothing left and exits */
    d->janitor_fd = -1;
    if (d->janitor > 0)
        waitpid(d->janitor, NULL, 0);
    d->janitor = 0;
}
