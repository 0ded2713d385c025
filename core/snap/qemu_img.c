/* qemu_img.c - the qcow2 overlays a sandbox's root lives on in rootfs mode cow, made
 * and rewritten by Debian's qemu-img (qemu-utils), run from an argv array (no shell)
 * with its first error line passed on. */
#define _GNU_SOURCE
#include "snap/snap.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

const char *gd_snap_qemu_img(void)
{
    const char *e = getenv("GONDOLIN_QEMU_IMG");
    return e && *e ? e : "qemu-img";
}

/* The first non-empty line of s, without qemu-img's "qemu-img: " prefix. */
static void first_line(char *s, char *out, size_t cap)
{
    char *save, *l = strtok_r(s, "\n", &save);
    while (l && !l[strspn(l, " \t\r")])
        l = strtok_r(NULL, "\n", &save);
    if (l && !strncmp(l, "qemu-img: ", 10))
        l += 10;
    snprintf(out, cap, "%s", l ? l : "");
}

/* Runs qemu-img with args (NULL-ended, after argv[0]). */
static int run(const char *what, const char *const *args, struct gd_err *err)
{
    const char *argv[16];
    size_t n = 0;
    argv[n++] = gd_snap_qemu_img();
    for (; *args && n < 15; args++)
        argv[n++] = *args;
    argv[n] = NULL;
    int ep[2];
    if (pipe2(ep, O_CLOEXEC))
        return gd_err_set(err, -errno, "%s: pipe: %s", what, strerror(errno));
    pid_t pid = fork();
    if (pid < 0) {
        int e = errno;
        close(ep[0]);
        close(ep[1]);
        return gd_err_set(err, -e, "%s: fork: %s", what, strerror(e));
    }
    if (pid == 0) {
        int nul = open("/dev/null", O_RDWR);
        dup2(nul, 0);
        dup2(nul, 1);
        dup2(ep[1], 2);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        execvp(argv[0], (char *const *)argv);
        dprintf(2, "cannot run %s: %s (install qemu-utils)\n", argv[0], strerror(errno));
        _exit(127);
    }
    close(ep[1]);
    char buf[2048];
    size_t got = 0;
    for (;;) {
        ssize_t k = read(ep[0], buf + got, sizeof(buf) - 1 - got);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            break;
        got += (size_t)k;
        if (got == sizeof(buf) - 1) { /* keep draining, keep the start */
            char sink[512];
            while (read(ep[0], sink, sizeof(sink)) > 0)
                ;
            break;
        }
    }
    buf[got] = 0;
    close(ep[0]);
    int st = 0;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
        ;
    if (WIFEXITED(st) && WEXITSTATUS(st) == 0)
        return 0;
    char line[600];
    first_line(buf, line, sizeof(line));
    if (WIFSIGNALED(st))
        return gd_err_set(err, -EIO, "%s: qemu-img was killed by signal %d", what, WTERMSIG(st));
    return gd_err_set(err, -EIO, "%s: %s", what, line[0] ? line : "qemu-img failed");
}

int gd_snap_overlay_new(const char *path, const char *rootfs, struct gd_err *err)
{
    const char *a[] = {"create", "-q", "-f", "qcow2", "-b", rootfs, "-F", "raw", path, NULL};
    return run("cannot create the disk overlay", a, err);
}

/* json:{...}: the checkpoint's qcow2 part (a raw node of its exact length) with the
 * rootfs given as its backing, whatever its own header says. */
static char *chain_spec(const char *checkpoint, uint64_t qlen, const char *rootfs)
{
    cJSON *o = cJSON_CreateObject(), *bk = cJSON_AddObjectToObject(o, "backing");
    cJSON_AddStringToObject(o, "driver", "qcow2");
    cJSON_AddStringToObject(bk, "driver", "raw");
    cJSON *bf = cJSON_AddObjectToObject(bk, "file");
    cJSON_AddStringToObject(bf, "driver", "file");
    cJSON_AddStringToObject(bf, "filename", rootfs);
    cJSON_AddBoolToObject(bf, "read-only", 1);
    cJSON *f = cJSON_AddObjectToObject(o, "file");
    cJSON_AddStringToObject(f, "driver", "raw");
    cJSON_AddNumberToObject(f, "size", (double)qlen);
    cJSON *ff = cJSON_AddObjectToObject(f, "file");
    cJSON_AddStringToObject(ff, "driver", "file");
    cJSON_AddStringToObject(ff, "filename", checkpoint);
    cJSON_AddBoolToObject(ff, "read-only", 1);
    char *j = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    char *s = NULL;
    if (j && asprintf(&s, "json:%s", j) < 0)
        s = NULL;
    free(j);
    return s;
}

int gd_snap_overlay_resume(const char *path, const char *checkpoint,
                           const struct gd_snap_trailer *t, const struct gd_snap_meta *m,
                           const char *rootfs, struct gd_err *err)
{
    char *spec = chain_spec(checkpoint, t->qcow2_len, rootfs);
    if (!spec)
        return gd_err_set(err, -ENOMEM, "out of memory");
    if (strlen(spec) > 1023) { /* qcow2 keeps at most 1023 bytes of backing name */
        free(spec);
        return gd_err_set(err, -ENAMETOOLONG,
                          "cannot resume %s: its path and the image's are too long", checkpoint);
    }
    char size[32];
    snprintf(size, sizeof(size), "%llu", (unsigned long long)m->disk_size);
    /* -u: the backing chain is not opened here (QEMU opens it, read-only) */
    const char *a[] = {"create", "-q", "-f",    "qcow2", "-u", "-b",
                       spec,     "-F", "qcow2", path,    size, NULL};
    int rc = run("cannot create the disk overlay", a, err);
    free(spec);
    return rc;
}

int gd_snap_overlay_flatten(const char *path, const char *rootfs, struct gd_err *err)
{
    const char *a[] = {"rebase", "-q", "-f", "qcow2", "-b", rootfs, "-F", "raw", path, NULL};
    return run("cannot flatten the disk overlay", a, err);
}
