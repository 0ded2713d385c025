/* cmd_cp.c - `gondolin cp SRC ID:DST` and `gondolin cp ID:SRC DST`: files and trees
 * streamed through PUT/GET (docs/control.md), tar streams written and read on the host
 * with libarchive. What comes back from the guest is hostile input: every member must
 * lie under the name asked for, nothing is written through a symlink or outside the
 * destination, no device nodes, no setuid/setgid bits, no ownership. */
#define _GNU_SOURCE
#include "cli.h"

#include <archive.h>
#include <archive_entry.h>
#include <errno.h>
#include <fcntl.h>
#include <fts.h>
#include <libgen.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define XID 1
#define CHUNK (64u << 10)
#define GET_WINDOW (4u << 20)

struct xf {
    gd_control_client *c;
    uint64_t credit; /* PUT: stdin credit */
    int done, code;
    char error[600];
    uint32_t ungranted; /* GET: consumed, not yet granted back */
};

static void cp_usage(void)
{
    printf("usage: gondolin cp SRC ID:DST\n"
           "       gondolin cp ID:SRC DST\n\n"
           "Copies a file or a tree into or out of a running session (ID is an id, an id\n"
           "prefix or a name), keeping modes, mtimes and symlinks (as links). DST that is an\n"
           "existing directory receives SRC inside it; otherwise DST becomes the copy.\n"
           "SRC or DST `-` is a tar stream on stdin or stdout (for ID:DST, unpacked into\n"
           "the directory DST).\n");
}

/* One frame of our transfer: 1 (h, b set), 0 when it ended (t->done), -1 lost. */
static int next(struct xf *t, struct gd_control_hdr *h, const uint8_t **b)
{
    while (!t->done) {
        int rc = gd_control_client_recv(t->c, h, b);
        if (rc <= 0) {
            snprintf(t->error, sizeof(t->error), "the session's supervisor went away");
            t->done = 1;
            t->code = 125;
            return -1;
        }
        if (h->type == GD_CONTROL_ERROR && (h->id == XID || h->id == 0)) {
            char code[64], msg[512];
            if (gd_control_parse_error(*b, h->len, code, sizeof(code), msg, sizeof(msg)))
                snprintf(msg, sizeof(msg), "malformed ERROR");
            snprintf(t->error, sizeof(t->error), "the supervisor refused: %s", msg);
            t->done = 1;
            t->code = 125;
            return -1;
        }
        if (h->id != XID)
            continue;
        if (h->type == GD_CONTROL_EXIT) {
            struct gd_control_exit e;
            t->done = 1;
            if (gd_control_parse_exit(*b, h->len, &e, NULL, 0)) {
                t->code = 125;
                snprintf(t->error, sizeof(t->error), "malformed EXIT");
            } else {
                t->code = e.exit_code;
                snprintf(t->error, sizeof(t->error), "%s", e.error);
            }
            return 0;
        }
        if (h->type == GD_CONTROL_STDIN_WINDOW)
            t->credit += gd_control_get_u32(*b);
        return 1;
    }
    return 0;
}

static int finish(struct xf *t, const char *what)
{
    struct gd_control_hdr h;
    const uint8_t *b;
    while (!t->done)
        next(t, &h, &b);
    if (!t->code)
        return 0;
    return cli_die(1, "cp: %s: %s", what, t->error[0] ? t->error : "the guest process failed");
}

/* ---- host -> guest ---- */

static int put_write(struct xf *t, const void *data, size_t n)
{
    const uint8_t *p = data;
    while (n) {
        struct gd_control_hdr h;
        const uint8_t *b;
        while (!t->credit)
            if (next(t, &h, &b) <= 0)
                return -1; /* ended early: the guest side failed */
        size_t k = n < CHUNK ? n : CHUNK;
        if (k > t->credit)
            k = (size_t)t->credit;
        if (gd_control_client_send(t->c, GD_CONTROL_STDIN, 0, XID, p, k))
            return -1;
        t->credit -= k;
        p += k;
        n -= k;
    }
    return 0;
}

static la_ssize_t aw_write(struct archive *a, void *ud, const void *buf, size_t n)
{
    if (put_write(ud, buf, n)) {
        archive_set_error(a, EPIPE, "the guest stopped reading");
        return -1;
    }
    return (la_ssize_t)n;
}

static int put_start(struct xf *t, const char *path, int tar, const struct stat *st)
{
    struct gd_control_xfer x = {.path = (char *)path, .tar = tar};
    if (st) {
        x.has_mode = x.has_mtime = 1;
        x.mode = st->st_mode & 07777;
        x.mtime = st->st_mtim.tv_sec;
    }
    char *j = gd_control_encode_xfer(&x, 0);
    int rc = j ? gd_control_client_send(t->c, GD_CONTROL_PUT, 0, XID, j, strlen(j)) : -ENOMEM;
    free(j);
    return rc;
}

static int put_eof(struct xf *t)
{
    return gd_control_client_send(t->c, GD_CONTROL_STDIN, GD_CONTROL_STDIN_EOF, XID, NULL, 0);
}

/* Copies fd (a file, or stdin) as the content of the transfer. */
static int put_fd(struct xf *t, int fd)
{
    static uint8_t buf[CHUNK];
    for (;;) {
        ssize_t n = read(fd, buf, sizeof(buf));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        if (n == 0)
            return 0;
        if (put_write(t, buf, (size_t)n))
            return -EPIPE;
    }
}

/* One member from the host; 0, or -1 when the stream failed. */
static int add_member(struct archive *w, const FTSENT *n, const char *name)
{
    static char buf[CHUNK];
    struct archive_entry *e = archive_entry_new();
    archive_entry_copy_stat(e, n->fts_statp);
    archive_entry_set_pathname(e, name);
    archive_entry_set_uid(e, 0);
    archive_entry_set_gid(e, 0);
    archive_entry_set_nlink(e, 1);
    int fd = -2, rc = 0;
    if (n->fts_info == FTS_SL || n->fts_info == FTS_SLNONE) {
        char target[4096];
        ssize_t k = readlink(n->fts_accpath, target, sizeof(target) - 1);
        target[k > 0 ? k : 0] = 0;
        archive_entry_set_symlink(e, target);
        archive_entry_set_size(e, 0);
    } else if (n->fts_info == FTS_D) {
        archive_entry_set_size(e, 0);
    } else if (n->fts_statp->st_size > 0) {
        fd = open(n->fts_accpath, O_RDONLY | O_CLOEXEC);
    }
    if (fd == -1)
        fprintf(stderr, "gondolin: cp: %s: %s (skipped)\n", n->fts_path, strerror(errno));
    else if (archive_write_header(w, e) < ARCHIVE_WARN)
        rc = -1;
    for (ssize_t k = 1; !rc && fd >= 0 && k > 0;) { /* a file that shrank is padded */
        k = read(fd, buf, sizeof(buf));
        if (k > 0 && archive_write_data(w, buf, (size_t)k) != k)
            rc = -1;
    }
    if (fd >= 0)
        close(fd);
    archive_entry_free(e);
    return rc;
}

/* A tar of src whose member names start with prefix instead of src; depth-first, each
 * directory right before what it holds (so the guest's tar can restore its mtime). */
static int write_tree(struct xf *t, const char *src, const char *prefix)
{
    struct archive *w = archive_write_new();
    archive_write_set_format_pax_restricted(w);
    archive_write_open(w, t, NULL, aw_write, NULL);
    char *roots[] = {(char *)src, NULL};
    FTS *f = fts_open(roots, FTS_PHYSICAL | FTS_NOCHDIR, NULL);
    size_t sl = strlen(src);
    int rc = f ? 0 : -1;
    FTSENT *n;
    while (!rc && (n = fts_read(f))) {
        char *name = NULL;
        if (n->fts_info == FTS_DP)
            continue;
        if (n->fts_info == FTS_DNR || n->fts_info == FTS_ERR || n->fts_info == FTS_NS) {
            fprintf(stderr, "gondolin: cp: %s: %s (skipped)\n", n->fts_path,
                    strerror(n->fts_errno));
            continue;
        }
        if (n->fts_info != FTS_D && n->fts_info != FTS_F && n->fts_info != FTS_SL &&
            n->fts_info != FTS_SLNONE) {
            fprintf(stderr, "gondolin: cp: %s: not a file, directory or symlink (skipped)\n",
                    n->fts_path);
            continue;
        }
        if (asprintf(&name, "%s%s", prefix, n->fts_path + sl) < 0)
            rc = -1;
        else
            rc = add_member(w, n, name);
        free(name);
    }
    if (rc && !t->done)
        fprintf(stderr, "gondolin: cp: %s\n",
                archive_error_string(w) ? archive_error_string(w) : "cannot read the source");
    if (rc && t->done && !t->code)
        fprintf(stderr, "gondolin: cp: the guest's tar stopped reading the stream\n");
    if (f)
        fts_close(f);
    if (archive_write_close(w) != ARCHIVE_OK)
        rc = -1;
    archive_write_free(w);
    return rc;
}

/* Runs argv in the session: its exit code, or -1. */
static int guest_run(gd_control_client *c, const char **argv)
{
    struct gd_control_exec e = {.argv = argv, .window = CHUNK};
    char *j = gd_control_encode_exec(&e);
    struct xf t = {.c = c};
    if (!j || gd_control_client_send(c, GD_CONTROL_EXEC, 0, XID, j, strlen(j))) {
        free(j);
        return -1;
    }
    free(j);
    struct gd_control_hdr h;
    const uint8_t *b;
    while (next(&t, &h, &b) > 0)
        ;
    return t.code == 125 && t.error[0] ? -1 : t.code;
}

static void split(const char *path, char *dir, char *base, size_t cap)
{
    char a[4096], b[4096];
    snprintf(a, sizeof(a), "%s", path);
    snprintf(b, sizeof(b), "%s", path);
    snprintf(dir, cap, "%s", dirname(a));
    snprintf(base, cap, "%s", basename(b));
}

static void strip_slashes(char *p)
{
    size_t l = strlen(p);
    while (l > 1 && p[l - 1] == '/')
        p[--l] = 0;
}

static int bad_base(const char *base)
{
    return !strcmp(base, ".") || !strcmp(base, "..") || !strcmp(base, "/");
}

static int to_guest(gd_control_client *c, const char *src_arg, const char *dst)
{
    struct xf t = {.c = c};
    if (!strcmp(src_arg, "-")) { /* a tar stream, unpacked into dst */
        if (put_start(&t, dst, 1, NULL))
            return cli_die(125, "cp: the session went away");
        int rc = put_fd(&t, 0);
        if (rc && rc != -EPIPE)
            fprintf(stderr, "gondolin: cp: stdin: %s\n", strerror(-rc));
        if (!t.done)
            put_eof(&t);
        int fin = finish(&t, dst);
        return fin ? fin : rc ? 1 : 0;
    }
    char src[4096], sdir[4096], sbase[4096], ddir[4096], dbase[4096], full[8300];
    snprintf(src, sizeof(src), "%s", src_arg);
    strip_slashes(src);
    split(src, sdir, sbase, sizeof(sdir));
    struct stat st;
    if (lstat(src, &st))
        return cli_die(1, "cp: %s: %s", src, strerror(errno));
    if (bad_base(sbase))
        return cli_die(2, "cp: name the directory itself, not '%s'", src_arg);
    const char *test[] = {"test", "-d", dst, NULL};
    int isdir = guest_run(c, test);
    if (isdir < 0)
        return cli_die(125, "cp: the session does not answer");
    split(dst, ddir, dbase, sizeof(ddir));
    if (S_ISREG(st.st_mode)) {
        snprintf(full, sizeof(full), "%s/%s", dst, sbase);
        const char *path = isdir == 0 ? full : dst;
        int fd = open(src, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            return cli_die(1, "cp: %s: %s", src, strerror(errno));
        int rc = put_start(&t, path, 0, &st);
        if (!rc && (rc = put_fd(&t, fd)) == -EPIPE)
            rc = 0; /* the guest side ended early: its EXIT says why */
        close(fd);
        if (rc && !t.done)
            return cli_die(1, "cp: %s: %s", src, strerror(-rc));
        if (!t.done)
            put_eof(&t);
        return finish(&t, path);
    }
    if (!S_ISDIR(st.st_mode) && !S_ISLNK(st.st_mode))
        return cli_die(1, "cp: %s: not a file, directory or symlink", src);
    const char *into = isdir == 0 ? dst : ddir;
    if (put_start(&t, into, 1, NULL))
        return cli_die(125, "cp: the session went away");
    int rc = write_tree(&t, src, isdir == 0 ? sbase : dbase);
    if (!t.done)
        put_eof(&t);
    int fin = finish(&t, dst);
    return fin ? fin : rc ? 1 : 0;
}

/* ---- guest -> host ---- */

static la_ssize_t ar_read(struct archive *a, void *ud, const void **buf)
{
    struct xf *t = ud;
    if (t->ungranted) { /* what the previous call returned is consumed now */
        uint8_t g[8] = {0};
        gd_control_put_u32(g, t->ungranted);
        gd_control_client_send(t->c, GD_CONTROL_WINDOW, 0, XID, g, 8);
        t->ungranted = 0;
    }
    struct gd_control_hdr h;
    const uint8_t *b;
    for (;;) {
        int rc = next(t, &h, &b);
        if (rc < 0) {
            archive_set_error(a, EPIPE, "%s", t->error);
            return -1;
        }
        if (rc == 0)
            return 0; /* EXIT */
        if (h.type == GD_CONTROL_OUTPUT && h.flags == 1 && h.len) {
            t->ungranted = h.len;
            *buf = b;
            return h.len;
        }
    }
}

/* name must be `want` or start with `want/`; returns it with `want` replaced by `as`
 * (malloc'd), or NULL. No absolute paths, no `..`. */
static char *member_name(const char *name, const char *want, const char *as)
{
    size_t wl = strlen(want);
    if (!name || strncmp(name, want, wl) || (name[wl] && name[wl] != '/'))
        return NULL;
    for (const char *p = name; *p;) {
        const char *e = strchr(p, '/');
        size_t l = e ? (size_t)(e - p) : strlen(p);
        if (l == 2 && !strncmp(p, "..", 2))
            return NULL;
        p += l + (e ? 1 : 0);
    }
    char *out;
    return asprintf(&out, "%s%s", as, name + wl) < 0 ? NULL : out;
}

static int extract(struct xf *t, const char *want, const char *as)
{
    struct archive *r = archive_read_new(), *w = archive_write_disk_new();
    archive_read_support_format_tar(r);
    archive_write_disk_set_options(
        w, ARCHIVE_EXTRACT_TIME | ARCHIVE_EXTRACT_PERM | ARCHIVE_EXTRACT_SECURE_NODOTDOT |
               ARCHIVE_EXTRACT_SECURE_SYMLINKS | ARCHIVE_EXTRACT_SECURE_NOABSOLUTEPATHS);
    int rc = archive_read_open(r, t, NULL, ar_read, NULL) == ARCHIVE_OK ? 0 : -1;
    mode_t um = umask(0);
    umask(um);
    struct archive_entry *e;
    while (!rc) {
        int k = archive_read_next_header(r, &e);
        if (k == ARCHIVE_EOF)
            break;
        if (k < ARCHIVE_WARN) {
            rc = -1;
            break;
        }
        const char *p = archive_entry_pathname(e);
        char *name = member_name(p, want, as), *link = NULL;
        const char *hl = archive_entry_hardlink(e);
        mode_t type = archive_entry_filetype(e);
        if (!name || (hl && !(link = member_name(hl, want, as)))) {
            fprintf(stderr, "gondolin: cp: the guest sent '%s'%s%s, which is not under '%s'\n",
                    p ? p : "", name ? " linked to " : "", name ? hl : "", want);
            free(name);
            rc = -2;
            break;
        }
        struct stat ls;
        if (link && (lstat(link, &ls) || !S_ISREG(ls.st_mode))) {
            /* a link to a symlink is the symlink itself: libarchive would then chmod and
             * write (a pax hardlink may carry data) through it, outside the destination */
            fprintf(stderr, "gondolin: cp: the guest sent '%s' linked to '%s', not a file\n", p,
                    hl);
            free(name);
            free(link);
            rc = -2;
            break;
        }
        if (type != AE_IFREG && type != AE_IFDIR && type != AE_IFLNK) {
            fprintf(stderr, "gondolin: cp: %s: skipped (a device, fifo or socket)\n", name);
            free(name);
            free(link);
            continue;
        }
        archive_entry_set_pathname(e, name);
        if (link)
            archive_entry_set_hardlink(e, link);
        /* the guest's modes, less set-id bits and what the umask takes away (as tar does
         * for a user): a hostile guest cannot plant world-writable files */
        archive_entry_set_perm(e, archive_entry_perm(e) & ~(mode_t)(S_ISUID | S_ISGID) & ~um);
        free(name);
        free(link);
        if (archive_write_header(w, e) < ARCHIVE_WARN) {
            fprintf(stderr, "gondolin: cp: %s\n", archive_error_string(w));
            rc = -2;
            break;
        }
        const void *buf;
        size_t n;
        la_int64_t off;
        while ((k = archive_read_data_block(r, &buf, &n, &off)) == ARCHIVE_OK)
            if (archive_write_data_block(w, buf, n, off) < ARCHIVE_WARN) {
                k = ARCHIVE_FATAL;
                break;
            }
        if (k != ARCHIVE_EOF || archive_write_finish_entry(w) < ARCHIVE_WARN)
            rc = -1;
    }
    if (rc == -1 && !t->done)
        fprintf(stderr, "gondolin: cp: %s\n",
                archive_error_string(r)   ? archive_error_string(r)
                : archive_error_string(w) ? archive_error_string(w)
                                          : "bad tar stream");
    if (archive_write_close(w) != ARCHIVE_OK)
        rc = rc ? rc : -1;
    archive_write_free(w);
    archive_read_free(r);
    return rc;
}

static int from_guest(gd_control_client *c, const char *src_arg, const char *dst)
{
    struct xf t = {.c = c};
    char src[4096], sdir[4096], sbase[4096];
    snprintf(src, sizeof(src), "%s", src_arg);
    strip_slashes(src);
    split(src, sdir, sbase, sizeof(sdir));
    if (bad_base(sbase))
        return cli_die(2, "cp: name the directory itself, not '%s'", src_arg);
    struct gd_control_xfer x = {.path = src, .tar = 1, .window = GET_WINDOW};
    char *j = gd_control_encode_xfer(&x, 1);
    int rc = j ? gd_control_client_send(c, GD_CONTROL_GET, 0, XID, j, strlen(j)) : -ENOMEM;
    free(j);
    if (rc)
        return cli_die(125, "cp: the session went away");
    if (!strcmp(dst, "-")) { /* the tar stream itself */
        struct gd_control_hdr h;
        const uint8_t *b;
        int out_ok = 1;
        while (next(&t, &h, &b) > 0) {
            if (h.type != GD_CONTROL_OUTPUT || h.flags != 1)
                continue;
            if (out_ok && fwrite(b, 1, h.len, stdout) != h.len)
                out_ok = 0;
            uint8_t g[8] = {0};
            gd_control_put_u32(g, h.len);
            gd_control_client_send(c, GD_CONTROL_WINDOW, 0, XID, g, 8);
        }
        if (fflush(stdout) || !out_ok)
            return cli_die(1, "cp: cannot write to stdout");
        return finish(&t, src);
    }
    /* into an existing directory under its own name, else as dst */
    char root[4096], as[4096], dcopy[4096];
    struct stat st;
    snprintf(dcopy, sizeof(dcopy), "%s", dst);
    strip_slashes(dcopy);
    if (stat(dcopy, &st) == 0 && S_ISDIR(st.st_mode)) {
        snprintf(root, sizeof(root), "%s", dcopy);
        snprintf(as, sizeof(as), "%s", sbase);
    } else {
        split(dcopy, root, as, sizeof(root));
        if (bad_base(as) || dst[strlen(dst) - 1] == '/')
            return cli_die(1, "cp: %s: no such directory", dst);
    }
    int dfd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0 || fchdir(dfd))
        return cli_die(1, "cp: %s: %s", root, strerror(errno));
    close(dfd);
    rc = extract(&t, sbase, as);
    if (rc == -2) /* refused: the rest of the stream is not wanted */
        return cli_die(1, "cp: the copy from the guest was refused");
    int fin = finish(&t, src);
    return fin ? fin : rc ? cli_die(1, "cp: the tar stream from the guest was cut short") : 0;
}

/* "ID:PATH" -> the id and the path; NULL when arg is a host path. */
static const char *remote(char *arg)
{
    char *colon = strchr(arg, ':');
    if (!colon || colon == arg || memchr(arg, '/', (size_t)(colon - arg)))
        return NULL;
    *colon = 0;
    return colon + 1;
}

int cmd_cp(int argc, char **argv)
{
    if (argc == 2 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help"))) {
        cp_usage();
        return 0;
    }
    if (argc != 3)
        return cli_die(2, "usage: gondolin cp SRC ID:DST | gondolin cp ID:SRC DST");
    char *a = argv[1], *b = argv[2];
    const char *ra = remote(a), *rb = remote(b);
    if (!!ra == !!rb)
        return cli_die(2, "cp: exactly one of SRC and DST must be ID:PATH");
    if ((ra && !*ra) || (rb && !*rb))
        return cli_die(2, "cp: ID:PATH needs a path");
    signal(SIGPIPE, SIG_IGN);
    struct gd_session s;
    gd_control_client *c;
    int rc = cli_session_open(ra ? a : b, &s, &c);
    if (rc)
        return rc;
    rc = ra ? from_guest(c, ra, b) : to_guest(c, a, rb);
    gd_control_client_close(c);
    return rc;
}
