/* file.c - reading, verifying and writing checkpoint files (see snap.h). A checkpoint
 * appears under its name only once it is complete and on disk: it is assembled as a
 * hidden temporary next to its destination, fsync'ed, renamed into place without
 * replacing anything, and the directory is fsync'ed. */
#define _GNU_SOURCE
#include "snap/snap.h"

#include "base/fs.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#ifndef GD_VERSION
#define GD_VERSION "0"
#endif

#define CHUNK (1u << 20)

static int pread_all(int fd, void *buf, size_t n, uint64_t off)
{
    size_t got = 0;
    while (got < n) {
        ssize_t k = pread(fd, (char *)buf + got, n - got, (off_t)(off + got));
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return k < 0 ? -errno : -EIO;
        got += (size_t)k;
    }
    return 0;
}

static int pwrite_all(int fd, const void *buf, size_t n, uint64_t off)
{
    size_t put = 0;
    while (put < n) {
        ssize_t k = pwrite(fd, (const char *)buf + put, n - put, (off_t)(off + put));
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return k < 0 ? -errno : -EIO;
        put += (size_t)k;
    }
    return 0;
}

/* sha256 of [off, off + len) of fd. */
static int sha_range(int fd, uint64_t off0, uint64_t len, uint8_t md[32])
{
    uint8_t *buf = malloc(CHUNK);
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    int rc = buf && c ? 0 : -ENOMEM;
    if (!rc)
        EVP_DigestInit_ex(c, EVP_sha256(), NULL);
    for (uint64_t off = 0; !rc && off < len;) {
        size_t n = len - off < CHUNK ? (size_t)(len - off) : CHUNK;
        if (!(rc = pread_all(fd, buf, n, off0 + off))) {
            EVP_DigestUpdate(c, buf, n);
            off += n;
        }
    }
    unsigned ml = 32;
    if (!rc)
        EVP_DigestFinal_ex(c, md, &ml);
    EVP_MD_CTX_free(c);
    free(buf);
    return rc;
}

/* Trailer and metadata of an open checkpoint. */
static int read_tail(int fd, const char *path, struct gd_snap_trailer *t, struct gd_snap_meta *m,
                     struct gd_err *err)
{
    struct stat st;
    uint8_t tr[GD_SNAP_TRAILER_LEN];
    const char *why = NULL;
    if (fstat(fd, &st) || !S_ISREG(st.st_mode))
        return gd_err_set(err, -EINVAL, "checkpoint %s is not a regular file", path);
    uint64_t size = (uint64_t)st.st_size;
    if (size < GD_SNAP_TRAILER_LEN)
        return gd_err_set(err, -EINVAL, "checkpoint %s is corrupt: too short to be a checkpoint",
                          path);
    int rc = pread_all(fd, tr, sizeof(tr), size - GD_SNAP_TRAILER_LEN);
    if (rc)
        return gd_err_set(err, rc, "cannot read %s: %s", path, strerror(-rc));
    if (gd_snap_trailer_parse(tr, sizeof(tr), size, t, &why))
        return gd_err_set(err, -EINVAL, "checkpoint %s is corrupt: %s", path, why);
    char *meta = malloc(t->meta_len);
    if (!meta)
        return gd_err_set(err, -ENOMEM, "out of memory");
    if ((rc = pread_all(fd, meta, t->meta_len, t->qcow2_len + t->mem_len))) {
        free(meta);
        return gd_err_set(err, rc, "cannot read %s: %s", path, strerror(-rc));
    }
    uint8_t md[32];
    unsigned ml = 32;
    EVP_Digest(meta, t->meta_len, md, &ml, EVP_sha256(), NULL);
    char why2[200];
    if (memcmp(md, t->meta_sha, 32))
        rc = gd_err_set(err, -EINVAL, "checkpoint %s is corrupt: metadata checksum mismatch", path);
    else if (gd_snap_meta_parse(meta, t->meta_len, m, why2, sizeof(why2)))
        rc = gd_err_set(err, -EINVAL, "checkpoint %s is corrupt: %s", path, why2);
    else if ((uint32_t)m->format != t->version)
        rc = gd_err_set(err, -EINVAL,
                        "checkpoint %s is corrupt: metadata and trailer disagree "
                        "on the format",
                        path);
    free(meta);
    return rc;
}

/* The checkpoint open, its trailer and metadata read: the fd, or negative. */
static int open_checkpoint(const char *path, struct gd_snap_trailer *t, struct gd_snap_meta *m,
                           struct gd_err *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return gd_err_set(err, -errno, "cannot open checkpoint %s: %s", path, strerror(errno));
    int rc = read_tail(fd, path, t, m, err);
    if (rc)
        close(fd);
    return rc ? rc : fd;
}

int gd_snap_read(const char *path, struct gd_snap_trailer *t, struct gd_snap_meta *m,
                 struct gd_err *err)
{
    int fd = open_checkpoint(path, t, m, err);
    if (fd >= 0)
        close(fd);
    return fd < 0 ? fd : 0;
}

static int verify(const char *path, struct gd_snap_trailer *t, struct gd_snap_meta *m, int memory,
                  struct gd_err *err)
{
    int fd = open_checkpoint(path, t, m, err);
    if (fd < 0)
        return fd;
    int rc = 0;
    uint8_t md[32], hdr[512];
    uint64_t vsize = 0;
    const char *why = NULL;
    if ((rc = sha_range(fd, 0, t->qcow2_len, md)))
        rc = gd_err_set(err, rc, "cannot read %s: %s", path, strerror(-rc));
    else if (memcmp(md, t->qcow2_sha, 32))
        rc = gd_err_set(err, -EINVAL, "checkpoint %s is corrupt: disk checksum mismatch", path);
    else if (t->qcow2_len && (rc = pread_all(fd, hdr, sizeof(hdr), 0)))
        rc = gd_err_set(err, rc, "cannot read %s: %s", path, strerror(-rc));
    else if (t->qcow2_len && gd_snap_qcow2_check(hdr, sizeof(hdr), t->qcow2_len, &vsize, &why))
        rc = gd_err_set(err, -EINVAL, "checkpoint %s is corrupt: %s", path, why);
    else if (t->qcow2_len && !m->disk_size)
        m->disk_size = vsize;
    if (!rc && (!!t->qcow2_len) != !strcmp(m->memory ? m->rootfs : "cow", "cow"))
        rc = gd_err_set(err, -EINVAL,
                        "checkpoint %s is corrupt: its disk part does not match "
                        "its rootfs",
                        path);
    if (!rc && memory && t->mem_len) {
        if ((rc = sha_range(fd, t->qcow2_len, t->mem_len, md)))
            rc = gd_err_set(err, rc, "cannot read %s: %s", path, strerror(-rc));
        else if (memcmp(md, m->mem_sha, 32))
            rc = gd_err_set(err, -EINVAL, "snapshot %s is corrupt: memory checksum mismatch", path);
    }
    close(fd);
    return rc;
}

int gd_snap_verify(const char *path, struct gd_snap_trailer *t, struct gd_snap_meta *m,
                   struct gd_err *err)
{
    return verify(path, t, m, 1, err);
}

int gd_snap_verify_disk(const char *path, struct gd_snap_trailer *t, struct gd_snap_meta *m,
                        struct gd_err *err)
{
    return verify(path, t, m, 0, err);
}

int gd_snap_compatible(const char *path, const struct gd_snap_meta *m, const char *build_id,
                       struct gd_err *err)
{
    if (strcmp(m->gondolin, GD_VERSION))
        return gd_err_set(err, -EINVAL,
                          "checkpoint %s was made by gondolin %s; this is gondolin %s (disk "
                          "checkpoints resume only with the version that made them)",
                          path, m->gondolin, GD_VERSION);
    if (strcmp(m->build_id, build_id))
        return gd_err_set(err, -EINVAL,
                          "checkpoint %s was made on image buildId %.12s; the image here is "
                          "buildId %.12s",
                          path, m->build_id, build_id);
    return 0;
}

static int fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    int rc = fsync(fd) ? -errno : 0;
    close(fd);
    return rc;
}

/* Writes the metadata (m->gondolin set here) at offset at, then the trailer t (its
 * metadata fields filled here), and fsyncs; *size gets the file's size. */
static int append_tail(int fd, const char *tmp, struct gd_snap_trailer *t, struct gd_snap_meta *m,
                       uint64_t at, uint64_t *size, struct gd_err *err)
{
    snprintf(m->gondolin, sizeof(m->gondolin), "%s", GD_VERSION);
    char *meta = gd_snap_meta_encode(m);
    if (!meta)
        return gd_err_set(err, -ENOMEM, "out of memory");
    size_t ml = strlen(meta);
    unsigned dl = 32;
    EVP_Digest(meta, ml, t->meta_sha, &dl, EVP_sha256(), NULL);
    t->meta_len = (uint32_t)ml;
    uint8_t tr[GD_SNAP_TRAILER_LEN];
    gd_snap_trailer_write(tr, t);
    int rc = ml > GD_SNAP_MAX_META ? -EFBIG : pwrite_all(fd, meta, ml, at);
    if (!rc)
        rc = pwrite_all(fd, tr, sizeof(tr), at + ml);
    if (!rc && fsync(fd))
        rc = -errno;
    free(meta);
    if (rc)
        return gd_err_set(err, rc, "cannot write %s: %s", tmp, strerror(-rc));
    *size = at + ml + sizeof(tr);
    return 0;
}

/* Appends metadata and trailer to the qcow2 at fd (padded to GD_SNAP_ALIGN). */
static int seal(int fd, const char *tmp, struct gd_snap_meta *m, uint64_t *size, struct gd_err *err)
{
    struct stat st;
    if (fstat(fd, &st))
        return gd_err_set(err, -errno, "cannot stat %s: %s", tmp, strerror(errno));
    uint64_t qlen = ((uint64_t)st.st_size + GD_SNAP_ALIGN - 1) / GD_SNAP_ALIGN * GD_SNAP_ALIGN;
    uint8_t hdr[512];
    const char *why = NULL;
    int rc;
    if (ftruncate(fd, (off_t)qlen))
        return gd_err_set(err, -errno, "cannot pad %s: %s", tmp, strerror(errno));
    if ((rc = pread_all(fd, hdr, sizeof(hdr), 0)) ||
        gd_snap_qcow2_check(hdr, sizeof(hdr), qlen, &m->disk_size, &why))
        return gd_err_set(err, -EIO, "the sandbox's disk overlay is not a usable qcow2: %s",
                          why ? why : strerror(-rc));
    struct gd_snap_trailer t = {.version = GD_SNAP_FORMAT, .qcow2_len = qlen};
    if ((rc = sha_range(fd, 0, qlen, t.qcow2_sha)))
        return gd_err_set(err, rc, "cannot read %s: %s", tmp, strerror(-rc));
    m->format = GD_SNAP_FORMAT;
    return append_tail(fd, tmp, &t, m, qlen, size, err);
}

/* Test hook: a pause between the complete temporary and its rename, so a test can kill
 * the writer there. */
static void test_stall(void)
{
    const char *e = getenv("GONDOLIN_TEST_SNAPSHOT_STALL_MS");
    long ms = e ? strtol(e, NULL, 10) : 0;
    if (ms > 0 && ms < 600000) {
        struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
        nanosleep(&ts, NULL);
    }
}

/* Links the complete temporary into place as dest, never over an existing file (a
 * name is taken once), and syncs the directory. */
static int publish(const char *tmp, const char *dest, const char *dir, struct gd_err *err)
{
    if (renameat2(AT_FDCWD, tmp, AT_FDCWD, dest, RENAME_NOREPLACE)) {
        int ok = 0;
        if ((errno == EINVAL || errno == ENOSYS) && link(tmp, dest) == 0) {
            unlink(tmp); /* a filesystem without NOREPLACE */
            ok = 1;
        }
        if (!ok && errno == EEXIST)
            return gd_err_set(err, -EEXIST, "%s exists already", dest);
        if (!ok)
            return gd_err_set(err, -errno, "cannot create %s: %s", dest, strerror(errno));
    }
    int rc = fsync_dir(dir);
    return rc ? gd_err_set(err, rc, "cannot sync %s: %s", dir, strerror(-rc)) : 0;
}

/* dest's directory and the hidden temporary name next to it. */
static int tmp_name(const char *dest, char *dir, size_t dcap, char *tmp, size_t tcap,
                    struct gd_err *err)
{
    char d1[1200], d2[1200];
    snprintf(d1, sizeof(d1), "%s", dest);
    snprintf(d2, sizeof(d2), "%s", dest);
    snprintf(dir, dcap, "%s", dirname(d1));
    if (access(dest, F_OK) == 0)
        return gd_err_set(err, -EEXIST, "%s exists already", dest);
    int n = snprintf(tmp, tcap, "%s/.tmp-%ld-%s", dir, (long)getpid(), basename(d2));
    if (n < 0 || (size_t)n >= tcap)
        return gd_err_set(err, -ENAMETOOLONG, "%s: name too long", dest);
    unlink(tmp);
    return 0;
}

int gd_snap_mem_begin(const char *dest, char *tmp, size_t cap, struct gd_err *err)
{
    char dir[1200];
    int rc = tmp_name(dest, dir, sizeof(dir), tmp, cap, err);
    if (rc)
        return rc;
    int fd = open(tmp, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0)
        return gd_err_set(err, -errno, "cannot create %s: %s", tmp, strerror(errno));
    return fd;
}

int gd_snap_mem_finish(int fd, const char *tmp, uint64_t len, struct gd_snap_meta *m,
                       const char *dest, uint64_t *size, struct gd_err *err)
{
    struct gd_snap_trailer t = {.version = GD_SNAP_FORMAT_MEMORY, .mem_len = len};
    struct stat st;
    int rc = 0;
    if (fstat(fd, &st) || (uint64_t)st.st_size != len || len == 0 || len > GD_SNAP_MAX_MEMORY) {
        rc = gd_err_set(err, -EIO, "%s: the memory stream is not %llu bytes", tmp,
                        (unsigned long long)len);
        goto out;
    }
    if ((rc = sha_range(fd, 0, 0, t.qcow2_sha)) || (rc = sha_range(fd, 0, len, m->mem_sha))) {
        rc = gd_err_set(err, rc, "cannot read %s: %s", tmp, strerror(-rc));
        goto out;
    }
    m->format = GD_SNAP_FORMAT_MEMORY;
    m->memory = 1;
    if ((rc = append_tail(fd, tmp, &t, m, len, size, err)))
        goto out;
    test_stall();
    char d1[1200];
    snprintf(d1, sizeof(d1), "%s", dest);
    rc = publish(tmp, dest, dirname(d1), err);
out:
    close(fd);
    if (rc)
        unlink(tmp);
    return rc;
}

int gd_snap_write(const char *overlay, struct gd_snap_meta *m, const char *dest, uint64_t *size,
                  struct gd_err *err)
{
    char dir[1200], tmp[1400];
    int rc = tmp_name(dest, dir, sizeof(dir), tmp, sizeof(tmp), err);
    if (rc)
        return rc;
    if (rename(overlay, tmp)) {
        if (errno != EXDEV)
            return gd_err_set(err, -errno, "cannot move the disk overlay to %s: %s", tmp,
                              strerror(errno));
        if ((rc = gd_copy_file(overlay, tmp, 0600))) {
            unlink(tmp);
            return gd_err_set(err, rc, "cannot copy the disk overlay to %s: %s", tmp,
                              strerror(-rc));
        }
        unlink(overlay);
    }
    chmod(tmp, 0600);
    int fd = open(tmp, O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        rc = gd_err_set(err, -errno, "cannot open %s: %s", tmp, strerror(errno));
        goto fail;
    }
    rc = seal(fd, tmp, m, size, err);
    close(fd);
    if (rc)
        goto fail;
    test_stall();
    if ((rc = publish(tmp, dest, dir, err)))
        goto fail;
    return 0;
fail:
    unlink(tmp);
    return rc;
}
