#define _GNU_SOURCE
#include "fs.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <openssl/evp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <unistd.h>

int gd_sha256_file(const char *path, char hex[65])
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    unsigned char *buf = malloc(1 << 20);
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    if (!buf || !c) {
        free(buf);
        EVP_MD_CTX_free(c);
        close(fd);
        return -ENOMEM;
    }
    EVP_DigestInit_ex(c, EVP_sha256(), NULL);
    ssize_t n;
    while ((n = read(fd, buf, 1 << 20)) > 0)
        EVP_DigestUpdate(c, buf, (size_t)n);
    int err = n < 0 ? -errno : 0;
    close(fd);
    free(buf);
    unsigned char md[32];
    unsigned int ml = 0;
    EVP_DigestFinal_ex(c, md, &ml);
    EVP_MD_CTX_free(c);
    if (err)
        return err;
    gd_hex(md, 32, hex);
    return 0;
}

void gd_hex(const unsigned char *p, size_t n, char *out)
{
    static const char d[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = d[p[i] >> 4];
        out[2 * i + 1] = d[p[i] & 15];
    }
    out[2 * n] = 0;
}

void gd_sha256_hex(const void *p, size_t n, char hex[65])
{
    unsigned char md[32];
    unsigned int ml = 0;
    EVP_Digest(p, n, md, &ml, EVP_sha256(), NULL);
    gd_hex(md, 32, hex);
}

int gd_read_file(const char *path, size_t max, char **buf, size_t *n)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    struct stat st;
    if (fstat(fd, &st)) {
        int e = -errno;
        close(fd);
        return e;
    }
    if ((uint64_t)st.st_size > max) {
        close(fd);
        return -EFBIG;
    }
    char *b = malloc((size_t)st.st_size + 1);
    if (!b) {
        close(fd);
        return -ENOMEM;
    }
    size_t got = 0;
    while (got < (size_t)st.st_size) {
        ssize_t r = read(fd, b + got, (size_t)st.st_size - got);
        if (r <= 0) {
            int e = r < 0 ? -errno : -EIO;
            free(b);
            close(fd);
            return e;
        }
        got += (size_t)r;
    }
    close(fd);
    b[got] = 0;
    *buf = b;
    *n = got;
    return 0;
}

int gd_lock_open(const char *path)
{
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
        return -errno;
    if (flock(fd, LOCK_EX)) {
        int e = -errno;
        close(fd);
        return e;
    }
    return fd;
}

const char *gd_host_arch(void)
{
    struct utsname u;
    uname(&u);
    return !strcmp(u.machine, "aarch64") ? "aarch64" : "x86_64";
}

static int cmpstr(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int gd_dir_list(const char *path, char ***out, size_t *n)
{
    DIR *d = opendir(path);
    if (!d)
        return -errno;
    char **v = NULL;
    size_t cnt = 0, cap = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
            continue;
        if (cnt == cap) {
            cap = cap ? cap * 2 : 32;
            char **nv = realloc(v, cap * sizeof(*v));
            if (!nv)
                goto oom;
            v = nv;
        }
        if (!(v[cnt] = strdup(de->d_name)))
            goto oom;
        cnt++;
    }
    closedir(d);
    if (cnt)
        qsort(v, cnt, sizeof(*v), cmpstr);
    *out = v;
    *n = cnt;
    return 0;
oom:
    closedir(d);
    gd_dir_list_free(v, cnt);
    return -ENOMEM;
}

void gd_dir_list_free(char **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

int gd_mkdir_p(const char *path, unsigned mode)
{
    char tmp[4096];
    if (snprintf(tmp, sizeof(tmp), "%s", path) >= (int)sizeof(tmp))
        return -ENAMETOOLONG;
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = 0;
        if (mkdir(tmp, mode) && errno != EEXIST)
            return -errno;
        *p = '/';
    }
    if (mkdir(tmp, mode) && errno != EEXIST)
        return -errno;
    return 0;
}

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
