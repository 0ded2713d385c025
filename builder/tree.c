/*
 * tree.c - the staging tree of an image and what it cannot hold without root.
 *
 * Packages and layers are unpacked as the invoking user: files get u+rw (dirs u+rwx)
 * on disk so later steps can write, device nodes become empty placeholder files, and
 * nothing is chowned. The real owner, mode, device number and xattrs of every archive
 * entry go into an in-memory table keyed by the path relative to the root; the ext4
 * writer takes them from there. One extractor serves .deb data, .apk data and OCI
 * layers (with whiteouts); every write stays inside the root.
 */
#define _GNU_SOURCE
#include "builder.h"

#include <archive.h>
#include <archive_entry.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static uint64_t fnv(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

void gd_tree_init(struct gd_tree *t, const char *root)
{
    memset(t, 0, sizeof(*t));
    snprintf(t->root, sizeof(t->root), "%s", root);
}

static void ent_clear(struct gd_meta *m)
{
    for (size_t i = 0; i < m->nx; i++) {
        free(m->xname[i]);
        free(m->xval[i]);
    }
    free(m->xname);
    free(m->xval);
    m->xname = NULL;
    m->xval = NULL;
    m->xlen = NULL;
    m->nx = 0;
}

void gd_tree_free(struct gd_tree *t)
{
    for (size_t i = 0; i < t->cap; i++)
        if (t->ent[i].path) {
            free(t->ent[i].xlen);
            ent_clear(&t->ent[i]);
            free(t->ent[i].path);
        }
    free(t->ent);
    t->ent = NULL;
    t->cap = t->n = 0;
}

static struct gd_meta *slot(struct gd_meta *v, size_t cap, const char *rel)
{
    size_t i = (size_t)fnv(rel) & (cap - 1);
    while (v[i].path && strcmp(v[i].path, rel))
        i = (i + 1) & (cap - 1);
    return &v[i];
}

const struct gd_meta *gd_tree_get(const struct gd_tree *t, const char *rel)
{
    if (!t || !t->cap)
        return NULL;
    struct gd_meta *m = slot(t->ent, t->cap, rel);
    return m->path ? m : NULL;
}

struct gd_meta *gd_tree_set(struct gd_tree *t, const char *rel, uint32_t uid, uint32_t gid,
                            uint32_t mode, uint64_t rdev)
{
    if ((t->n + 1) * 2 > t->cap) {
        size_t nc = t->cap ? t->cap * 2 : 4096;
        struct gd_meta *nv = calloc(nc, sizeof(*nv));
        if (!nv)
            return NULL;
        for (size_t i = 0; i < t->cap; i++)
            if (t->ent[i].path)
                *slot(nv, nc, t->ent[i].path) = t->ent[i];
        free(t->ent);
        t->ent = nv;
        t->cap = nc;
    }
    struct gd_meta *m = slot(t->ent, t->cap, rel);
    if (!m->path) {
        if (!(m->path = strdup(rel)))
            return NULL;
        t->n++;
    } else {
        free(m->xlen);
        ent_clear(m);
    }
    m->uid = uid;
    m->gid = gid;
    m->mode = mode;
    m->rdev = rdev;
    return m;
}

/* "./a//b/" -> "a/b"; refuses "..", returns 1 for the root itself. */
static int norm(const char *in, char *out, size_t cap)
{
    size_t o = 0;
    while (*in) {
        while (*in == '/')
            in++;
        const char *e = strchr(in, '/');
        size_t l = e ? (size_t)(e - in) : strlen(in);
        if (l == 0)
            break;
        if (l == 2 && in[0] == '.' && in[1] == '.')
            return -1;
        if (!(l == 1 && in[0] == '.')) {
            if (o + l + 2 > cap)
                return -1;
            if (o)
                out[o++] = '/';
            memcpy(out + o, in, l);
            o += l;
        }
        in += l;
    }
    out[o] = 0;
    return o ? 0 : 1;
}

/* Merged /usr: bin, sbin, lib* live under usr/ (1: the top directory itself). */
static int merged_usr(char *rel, size_t cap)
{
    static const char *const top[] = {"bin", "sbin", "lib", "lib32", "lib64", "libx32"};
    for (size_t i = 0; i < sizeof(top) / sizeof(top[0]); i++) {
        size_t l = strlen(top[i]);
        if (!strncmp(rel, top[i], l) && (rel[l] == '/' || rel[l] == 0)) {
            if (rel[l] == 0)
                return 1;
            size_t rl = strlen(rel);
            if (rl + 5 > cap)
                return -1;
            memmove(rel + 4, rel, rl + 1);
            memcpy(rel, "usr/", 4);
            return 0;
        }
    }
    return 0;
}

static int map_path(const struct gd_extract_opts *o, const char *in, char *out, size_t cap)
{
    int k = norm(in, out, cap);
    if (k)
        return k;
    if (o->merged_usr)
        return merged_usr(out, cap);
    return 0;
}

/* Applies an OCI whiteout entry: dir/.wh.NAME removes NAME, dir/.wh..wh..opq empties dir. */
static void whiteout(struct gd_tree *t, const char *rel)
{
    const char *base = strrchr(rel, '/');
    base = base ? base + 1 : rel;
    char p[8192];
    /* every directory on the way must be a real one: never delete through a symlink */
    for (const char *s = rel; s < base; s = strchr(s, '/') + 1) {
        struct stat st;
        snprintf(p, sizeof(p), "%s/%.*s", t->root, (int)(strchr(s, '/') - rel), rel);
        if (lstat(p, &st) || !S_ISDIR(st.st_mode))
            return;
    }
    if (!strcmp(base, ".wh..wh..opq")) {
        snprintf(p, sizeof(p), "%s/%.*s", t->root, (int)(base - rel), rel);
        char **v;
        size_t n;
        if (gd_dir_list(p, &v, &n) == 0) {
            for (size_t i = 0; i < n; i++) {
                char q[8192 + 256];
                snprintf(q, sizeof(q), "%s/%s", p, v[i]);
                gd_rm_rf(q);
            }
            gd_dir_list_free(v, n);
        }
        return;
    }
    snprintf(p, sizeof(p), "%s/%.*s%s", t->root, (int)(base - rel), rel, base + 4);
    gd_rm_rf(p);
}

static int extract_pass(struct gd_tree *t, struct archive *a, const struct gd_extract_opts *o,
                        int whiteouts_only, struct gd_err *err)
{
    struct archive *w = archive_write_disk_new();
    /* relative paths from inside root: no "..", no absolute paths, never through a
     * symlink, so an archive cannot write outside the tree */
    archive_write_disk_set_options(w, ARCHIVE_EXTRACT_PERM | ARCHIVE_EXTRACT_TIME |
                                          ARCHIVE_EXTRACT_SECURE_NODOTDOT |
                                          ARCHIVE_EXTRACT_SECURE_NOABSOLUTEPATHS |
                                          ARCHIVE_EXTRACT_SECURE_SYMLINKS | ARCHIVE_EXTRACT_UNLINK);
    struct archive_entry *e;
    int rc = 0, r;
    char rel[4096], hrel[4096];
    while ((r = archive_read_next_header(a, &e)) == ARCHIVE_OK) {
        const char *name = archive_entry_pathname(e);
        int k = name ? map_path(o, name, rel, sizeof(rel)) : -1;
        if (k == 1)
            continue;
        if (k < 0) {
            rc = gd_err_set(err, -EINVAL, "%s: unsafe or too long path '%s'", o->label,
                            name ? name : "(none)");
            break;
        }
        if (o->skip_dot_meta && rel[0] == '.' && !strchr(rel, '/'))
            continue; /* .PKGINFO, .SIGN.*, install scripts of an .apk */
        if (o->whiteouts) {
            const char *b = strrchr(rel, '/');
            if (!strncmp(b ? b + 1 : rel, ".wh.", 4)) {
                if (whiteouts_only)
                    whiteout(t, rel);
                continue;
            }
        }
        if (whiteouts_only)
            continue;
        mode_t type = archive_entry_filetype(e);
        uint32_t perm = (uint32_t)archive_entry_perm(e);
        /* a directory over our merged-/usr symlink must not replace it */
        if (type == AE_IFDIR) {
            struct stat st;
            if (lstat(rel, &st) == 0 && S_ISLNK(st.st_mode))
                continue;
        }
        const char *hl = archive_entry_hardlink(e);
        if (hl) {
            if (map_path(o, hl, hrel, sizeof(hrel)) != 0) {
                rc = gd_err_set(err, -EINVAL, "%s: bad hard link target '%s'", o->label, hl);
                break;
            }
            archive_entry_set_hardlink(e, hrel);
        }
        archive_entry_set_pathname(e, rel);
        uint64_t rdev = 0;
        if (type == AE_IFCHR || type == AE_IFBLK || type == AE_IFIFO || type == AE_IFSOCK) {
            /* a placeholder: the ext4 writer makes the node from the table */
            rdev = archive_entry_rdev(e);
            archive_entry_set_filetype(e, AE_IFREG);
            archive_entry_set_size(e, 0);
        }
        if (!hl) {
            struct gd_meta *m =
                gd_tree_set(t, rel, (uint32_t)archive_entry_uid(e), (uint32_t)archive_entry_gid(e),
                            (uint32_t)type | perm, rdev);
            if (!m) {
                rc = gd_err_set(err, -ENOMEM, "out of memory");
                break;
            }
            const char *xn;
            const void *xv;
            size_t xl;
            int nx = archive_entry_xattr_reset(e);
            if (nx > 0) {
                m->xname = calloc((size_t)nx, sizeof(char *));
                m->xval = calloc((size_t)nx, sizeof(void *));
                m->xlen = calloc((size_t)nx, sizeof(size_t));
                if (!m->xname || !m->xval || !m->xlen) {
                    rc = gd_err_set(err, -ENOMEM, "out of memory");
                    break;
                }
                while (archive_entry_xattr_next(e, &xn, &xv, &xl) == ARCHIVE_OK &&
                       m->nx < (size_t)nx) {
                    m->xname[m->nx] = strdup(xn);
                    m->xval[m->nx] = malloc(xl ? xl : 1);
                    if (!m->xname[m->nx] || !m->xval[m->nx]) {
                        free(m->xname[m->nx]);
                        free(m->xval[m->nx]);
                        break;
                    }
                    memcpy(m->xval[m->nx], xv, xl);
                    m->xlen[m->nx++] = xl;
                }
            }
            archive_entry_xattr_clear(e);
            /* on disk: owner-writable, no set-id bits (the table has the real mode) */
            archive_entry_set_perm(e, (perm & 0777) | (type == AE_IFDIR ? 0700 : 0600));
            archive_entry_set_uid(e, getuid());
            archive_entry_set_gid(e, getgid());
        }
        if (archive_write_header(w, e) != ARCHIVE_OK) {
            rc = gd_err_set(err, -EIO, "%s: %s: %s", o->label, rel, archive_error_string(w));
            break;
        }
        const void *buf;
        size_t sz;
        la_int64_t off;
        while ((r = archive_read_data_block(a, &buf, &sz, &off)) == ARCHIVE_OK)
            if (archive_write_data_block(w, buf, sz, off) != ARCHIVE_OK)
                break;
        if (r != ARCHIVE_EOF && r != ARCHIVE_OK) {
            rc = gd_err_set(err, -EIO, "%s: %s", o->label, archive_error_string(a));
            break;
        }
        archive_write_finish_entry(w);
    }
    if (!rc && r != ARCHIVE_EOF)
        rc = gd_err_set(err, -EIO, "%s: %s", o->label, archive_error_string(a));
    archive_write_free(w);
    return rc;
}

static struct archive *open_mem(const void *buf, size_t n)
{
    struct archive *a = archive_read_new();
    archive_read_support_filter_all(a);
    archive_read_support_format_tar(a);
    if (archive_read_open_memory(a, buf, n) != ARCHIVE_OK) {
        archive_read_free(a);
        return NULL;
    }
    return a;
}

static struct archive *open_file(const char *path)
{
    struct archive *a = archive_read_new();
    archive_read_support_filter_all(a);
    archive_read_support_format_tar(a);
    if (archive_read_open_filename(a, path, 1 << 16) != ARCHIVE_OK) {
        archive_read_free(a);
        return NULL;
    }
    return a;
}

int gd_tree_extract(struct gd_tree *t, const void *buf, size_t n, const char *file,
                    const struct gd_extract_opts *o, struct gd_err *err)
{
    int cwd = open(".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (cwd < 0)
        return gd_err_set(err, -errno, "cannot open the working directory");
    int rc = 0;
    if (chdir(t->root)) {
        rc = gd_err_set(err, -errno, "cannot enter %s: %s", t->root, strerror(errno));
        close(cwd);
        return rc;
    }
    /* whiteouts of a layer apply to the layers below it only: first pass removes,
     * second pass extracts */
    for (int pass = o->whiteouts ? 0 : 1; pass < 2 && !rc; pass++) {
        struct archive *a = file ? open_file(file) : open_mem(buf, n);
        if (!a) {
            rc = gd_err_set(err, -EIO, "%s: not a readable tar archive", o->label);
            break;
        }
        rc = extract_pass(t, a, o, pass == 0, err);
        archive_read_free(a);
    }
    if (fchdir(cwd))
        rc = rc ? rc : -errno;
    close(cwd);
    return rc;
}
