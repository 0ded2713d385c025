/* extract.c - writes a verified bundle's files into a new private directory: the Lua
 * policy is loaded from a path and plugins must be dlopen'd from one. Only files whose
 * hash the reader checked are written; names were checked to be plain relative ones,
 * and files are created with O_EXCL under a directory nobody else can write. */
#define _GNU_SOURCE
#include "bundle.h"

#include "base/fs.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int write_one(const char *root, const struct gd_bundle_file *f, struct gd_err *err)
{
    char p[4600];
    snprintf(p, sizeof(p), "%s/%s", root, f->path);
    for (char *s = strchr(p + strlen(root) + 1, '/'); s; s = strchr(s + 1, '/')) {
        *s = 0;
        int r = mkdir(p, 0700);
        *s = '/';
        if (r && errno != EEXIST)
            return gd_err_set(err, -errno, "cannot create %s: %s", p, strerror(errno));
    }
    int fd = open(p, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0)
        return gd_err_set(err, -errno, "cannot create %s: %s", p, strerror(errno));
    size_t done = 0;
    while (done < f->size) {
        ssize_t w = write(fd, f->data + done, f->size - done);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            break;
        done += (size_t)w;
    }
    int rc = done == f->size && !fchmod(fd, f->arch[0] ? 0500 : 0400) ? 0 : -EIO;
    close(fd);
    return rc ? gd_err_set(err, rc, "cannot write %s", p) : 0;
}

int gd_bundle_extract(const gd_bundle *b, const char *arch, const char *base, char *out, size_t cap,
                      struct gd_err *err)
{
    if (!base) {
        base = getenv("TMPDIR");
        if (!base || !*base)
            base = "/tmp";
    }
    if (snprintf(out, cap, "%s/.bundle-XXXXXX", base) >= (int)cap)
        return gd_err_set(err, -ENAMETOOLONG, "temporary path too long");
    if (!mkdtemp(out))
        return gd_err_set(err, -errno, "cannot create a directory in %s: %s", base,
                          strerror(errno));
    const struct gd_bundle_info *in = gd_bundle_info(b);
    int rc = 0;
    for (size_t i = 0; i < in->nfiles && !rc; i++) {
        const struct gd_bundle_file *f = &in->files[i];
        if (f->arch[0] && strcmp(f->arch, arch))
            continue;
        rc = write_one(out, f, err);
    }
    if (rc) {
        gd_rm_rf(out);
        out[0] = 0;
    }
    return rc;
}
