/* initramfs.c - newc cpio (libarchive) in LZ4 legacy framing (liblz4), module
 * dependency resolution from .modinfo, and the kernel payload extraction. */
#define _GNU_SOURCE
#include "builder.h"

#include <archive.h>
#include <archive_entry.h>
#include <dirent.h>
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <lz4.h>
#include <lz4hc.h>
#include <lzma.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>
#include <zlib.h>

#define LZ4_LEGACY_MAGIC 0x184C2102u
#define LZ4_LEGACY_BLOCK (8u << 20)

static uint32_t rd32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static void wr32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

int gd_lz4_legacy_compress(const uint8_t *in, size_t n, uint8_t **out, size_t *outn)
{
    size_t blocks = n / LZ4_LEGACY_BLOCK + 1;
    size_t cap = 4 + blocks * (4 + (size_t)LZ4_compressBound(LZ4_LEGACY_BLOCK));
    uint8_t *o = malloc(cap);
    if (!o)
        return -ENOMEM;
    wr32(o, LZ4_LEGACY_MAGIC);
    size_t len = 4;
    for (size_t off = 0; off < n; off += LZ4_LEGACY_BLOCK) {
        int chunk = (int)(n - off < LZ4_LEGACY_BLOCK ? n - off : LZ4_LEGACY_BLOCK);
        int c = LZ4_compress_HC((const char *)in + off, (char *)o + len + 4, chunk,
                                (int)(cap - len - 4), LZ4HC_CLEVEL_DEFAULT);
        if (c <= 0) {
            free(o);
            return -EIO;
        }
        wr32(o + len, (uint32_t)c);
        len += 4 + (size_t)c;
    }
    *out = o;
    *outn = len;
    return 0;
}

int gd_lz4_legacy_decompress(const uint8_t *in, size_t n, uint8_t **out, size_t *outn)
{
    if (n < 4 || rd32(in) != LZ4_LEGACY_MAGIC)
        return -EINVAL;
    size_t cap = 0, len = 0, off = 4;
    uint8_t *o = NULL;
    while (n - off >= 4) {
        uint32_t c = rd32(in + off);
        if (c == LZ4_LEGACY_MAGIC) { /* concatenated streams */
            off += 4;
            continue;
        }
        if (c > n - off - 4 || c > (uint32_t)LZ4_compressBound(LZ4_LEGACY_BLOCK))
            break; /* trailer (e.g. the kernel's appended size) */
        if (cap - len < LZ4_LEGACY_BLOCK) {
            cap = cap ? cap * 2 : (size_t)4 * LZ4_LEGACY_BLOCK;
            uint8_t *no = realloc(o, cap);
            if (!no) {
                free(o);
                return -ENOMEM;
            }
            o = no;
        }
        int d = LZ4_decompress_safe((const char *)in + off + 4, (char *)o + len, (int)c,
                                    LZ4_LEGACY_BLOCK);
        if (d < 0) {
            free(o);
            return -EBADMSG;
        }
        len += (size_t)d;
        off += 4 + c;
    }
    if (!len) {
        free(o);
        return -EBADMSG;
    }
    *out = o;
    *outn = len;
    return 0;
}

int gd_read_bytes(const char *path, uint8_t **buf, size_t *n)
{
    char *b;
    int rc = gd_read_file(path, (size_t)1 << 32, &b, n);
    if (!rc)
        *buf = (uint8_t *)b;
    return rc;
}

static int write_all(const char *path, const uint8_t *buf, size_t n, unsigned mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
    if (fd < 0)
        return -errno;
    size_t off = 0;
    while (off < n) {
        ssize_t w = write(fd, buf + off, n - off);
        if (w <= 0) {
            int e = w < 0 ? -errno : -EIO;
            close(fd);
            return e;
        }
        off += (size_t)w;
    }
    return close(fd) ? -errno : 0;
}

/* One decoder step into out[0..*room): *room is left as the space still free; 1: call
 * again, 0: the stream ended, -1: corrupt. */
typedef int (*decode_step)(void *z, uint8_t *out, size_t *room);

/* Runs step into a buffer that doubles as it fills (at most 4 GiB). */
static int decode_all(size_t n, decode_step step, void *z, uint8_t **out, size_t *outn)
{
    size_t cap = n * 4 + 4096, len = 0;
    uint8_t *buf = malloc(cap);
    int r = 1;
    while (buf && r == 1) {
        if (len == cap) {
            if (cap > ((size_t)1 << 31))
                break;
            uint8_t *nb = realloc(buf, cap * 2);
            if (!nb)
                break;
            buf = nb;
            cap *= 2;
        }
        size_t room = cap - len;
        r = step(z, buf + len, &room);
        len = cap - room;
    }
    if (r != 0) {
        free(buf);
        return -EINVAL;
    }
    *out = buf;
    *outn = len;
    return 0;
}

static int gunzip_step(void *p, uint8_t *out, size_t *room)
{
    z_stream *z = p;
    z->next_out = out;
    z->avail_out = (uInt)*room;
    int zr = inflate(z, Z_NO_FLUSH);
    *room = z->avail_out;
    return zr == Z_OK ? 1 : zr == Z_STREAM_END ? 0 : -1;
}

int gd_gunzip(const uint8_t *in, size_t n, uint8_t **out, size_t *outn)
{
    z_stream z;
    memset(&z, 0, sizeof(z));
    if (inflateInit2(&z, 16 + MAX_WBITS) != Z_OK)
        return -ENOMEM;
    z.next_in = (Bytef *)in;
    z.avail_in = (uInt)n;
    int rc = decode_all(n, gunzip_step, &z, out, outn);
    inflateEnd(&z);
    return rc;
}

static int unxz_step(void *p, uint8_t *out, size_t *room)
{
    lzma_stream *z = p;
    z->next_out = out;
    z->avail_out = *room;
    lzma_ret zr = lzma_code(z, LZMA_RUN);
    *room = z->avail_out;
    return zr == LZMA_OK ? 1 : zr == LZMA_STREAM_END ? 0 : -1;
}

int gd_unxz(const uint8_t *in, size_t n, uint8_t **out, size_t *outn)
{
    lzma_stream z = LZMA_STREAM_INIT;
    /* one stream: the kernel appends the size after it */
    if (lzma_stream_decoder(&z, UINT64_MAX, 0) != LZMA_OK)
        return -ENOMEM;
    z.next_in = in;
    z.avail_in = n;
    int rc = decode_all(n, unxz_step, &z, out, outn);
    lzma_end(&z);
    return rc;
}

int gd_kernel_extract_vmlinux(const char *bzimage, const char *out, struct gd_err *err)
{
    uint8_t *b;
    size_t n;
    int rc = gd_read_bytes(bzimage, &b, &n);
    if (rc)
        return gd_err_set(err, rc, "kernel: read %s: %s", bzimage, strerror(-rc));
    rc = gd_err_set(err, -EINVAL, "kernel: %s is not an x86 bzImage (boot protocol >= 2.08)",
                    bzimage);
    if (n < 0x260 || memcmp(b + 0x202, "HdrS", 4) || (b[0x206] | (b[0x207] << 8)) < 0x208)
        goto out;
    unsigned setup = b[0x1f1] ? b[0x1f1] : 4;
    size_t pm = ((size_t)setup + 1) * 512;
    uint32_t poff = rd32(b + 0x248), plen = rd32(b + 0x24c);
    if (pm > n || poff > n - pm || plen > n - pm - poff)
        goto out;
    uint8_t *elf;
    size_t elfn;
    static const uint8_t xz_magic[6] = {0xfd, '7', 'z', 'X', 'Z', 0};
    if (plen > 2 && b[pm + poff] == 0x1f && b[pm + poff + 1] == 0x8b)
        rc = gd_gunzip(b + pm + poff, plen, &elf, &elfn);
    else if (plen > 6 && !memcmp(b + pm + poff, xz_magic, 6))
        rc = gd_unxz(b + pm + poff, plen, &elf, &elfn);
    else
        rc = gd_lz4_legacy_decompress(b + pm + poff, plen, &elf, &elfn);
    if (rc) {
        rc = gd_err_set(err, rc, "kernel: payload of %s is not gzip, XZ or LZ4 (legacy)", bzimage);
        goto out;
    }
    if (elfn < 4 || memcmp(elf, ELFMAG, SELFMAG)) {
        free(elf);
        rc = gd_err_set(err, -EINVAL, "kernel: payload of %s is not an ELF image", bzimage);
        goto out;
    }
    rc = write_all(out, elf, elfn, 0644);
    free(elf);
    if (rc)
        rc = gd_err_set(err, rc, "kernel: write %s: %s", out, strerror(-rc));
out:
    free(b);
    return rc;
}

/* ---- modules ---- */

struct mod {
    char name[64];
    char rel[512];
    char deps[512];
};

static void norm(char *s)
{
    for (; *s; s++)
        if (*s == '-')
            *s = '_';
}

static int modinfo(const char *path, char *name, size_t ncap, char *deps, size_t dcap)
{
    uint8_t *b;
    size_t n;
    int rc = gd_read_bytes(path, &b, &n);
    if (rc)
        return rc;
    rc = -EINVAL;
    if (n < sizeof(Elf64_Ehdr) || memcmp(b, ELFMAG, SELFMAG) || b[EI_CLASS] != ELFCLASS64)
        goto out;
    Elf64_Ehdr *eh = (Elf64_Ehdr *)b;
    if (eh->e_shoff > n || eh->e_shnum > (n - eh->e_shoff) / sizeof(Elf64_Shdr) ||
        eh->e_shstrndx >= eh->e_shnum)
        goto out;
    Elf64_Shdr *sh = (Elf64_Shdr *)(b + eh->e_shoff);
    Elf64_Shdr *strs = &sh[eh->e_shstrndx];
    if (strs->sh_offset > n || strs->sh_size > n - strs->sh_offset)
        goto out;
    deps[0] = 0;
    for (unsigned i = 0; i < eh->e_shnum; i++) {
        if (sh[i].sh_name >= strs->sh_size || sh[i].sh_offset > n ||
            sh[i].sh_size > n - sh[i].sh_offset)
            continue;
        const char *sname = (const char *)b + strs->sh_offset + sh[i].sh_name;
        if (strnlen(sname, strs->sh_size - sh[i].sh_name) == strs->sh_size - sh[i].sh_name ||
            strcmp(sname, ".modinfo"))
            continue;
        const char *p = (const char *)b + sh[i].sh_offset, *end = p + sh[i].sh_size;
        while (p < end) {
            size_t l = strnlen(p, (size_t)(end - p));
            if (l >= 8 && !strncmp(p, "depends=", 8))
                snprintf(deps, dcap, "%.*s", (int)(l - 8), p + 8);
            else if (l >= 5 && !strncmp(p, "name=", 5))
                snprintf(name, ncap, "%.*s", (int)(l - 5), p + 5);
            p += l + 1;
        }
        rc = 0;
    }
out:
    free(b);
    return rc;
}

static int scan_mods(const char *root, const char *rel, struct mod **v, size_t *n, size_t *cap)
{
    char dir[1024];
    snprintf(dir, sizeof(dir), "%s/%s", root, rel);
    DIR *d = opendir(dir);
    if (!d)
        return -errno;
    struct dirent *de;
    int rc = 0;
    while ((de = readdir(d)) && !rc) {
        if (de->d_name[0] == '.')
            continue;
        char r2[1024], full[2048];
        snprintf(r2, sizeof(r2), "%s%s%s", rel, rel[0] ? "/" : "", de->d_name);
        snprintf(full, sizeof(full), "%s/%s", root, r2);
        struct stat st;
        if (lstat(full, &st))
            continue;
        if (S_ISDIR(st.st_mode)) {
            rc = scan_mods(root, r2, v, n, cap);
            continue;
        }
        size_t l = strlen(de->d_name);
        if (l < 4 || strcmp(de->d_name + l - 3, ".ko"))
            continue;
        if (*n == *cap) {
            *cap = *cap ? *cap * 2 : 256;
            struct mod *nv = realloc(*v, *cap * sizeof(**v));
            if (!nv) {
                rc = -ENOMEM;
                break;
            }
            *v = nv;
        }
        struct mod *m = &(*v)[*n];
        snprintf(m->name, sizeof(m->name), "%.*s", (int)(l - 3), de->d_name);
        snprintf(m->rel, sizeof(m->rel), "%s", r2);
        if (modinfo(full, m->name, sizeof(m->name), m->deps, sizeof(m->deps)) == 0) {
            norm(m->name);
            (*n)++;
        }
    }
    closedir(d);
    return rc;
}

/* Is the module compiled into the kernel (modules.builtin lists it)? */
static int builtin_has(const char *builtin, const char *key)
{
    for (const char *p = builtin; p && *p;) {
        const char *e = strchr(p, '\n');
        size_t l = e ? (size_t)(e - p) : strlen(p);
        const char *b = memrchr(p, '/', l);
        b = b ? b + 1 : p;
        size_t bl = l - (size_t)(b - p);
        char nm[64];
        if (bl > 3 && bl - 3 < sizeof(nm) && !memcmp(b + bl - 3, ".ko", 3)) {
            memcpy(nm, b, bl - 3);
            nm[bl - 3] = 0;
            norm(nm);
            if (!strcmp(nm, key))
                return 1;
        }
        p = e ? e + 1 : NULL;
    }
    return 0;
}

static int visit(struct mod *v, size_t n, const char *name, char *state, char ***order, size_t *no,
                 int depth, const char *builtin, struct gd_err *err)
{
    char key[64];
    snprintf(key, sizeof(key), "%s", name);
    norm(key);
    size_t i;
    for (i = 0; i < n; i++)
        if (!strcmp(v[i].name, key))
            break;
    if (i == n && builtin_has(builtin, key))
        return 0;
    if (i == n)
        return gd_err_set(err, -ENOENT,
                          "kernel module '%s' not found (neither a module nor built in)", name);
    if (state[i] == 2)
        return 0;
    if (state[i] == 1 || depth > 64)
        return gd_err_set(err, -ELOOP, "kernel module dependency cycle at '%s'", name);
    state[i] = 1;
    char deps[512];
    snprintf(deps, sizeof(deps), "%s", v[i].deps);
    for (char *save, *d = strtok_r(deps, ",", &save); d; d = strtok_r(NULL, ",", &save)) {
        int rc = visit(v, n, d, state, order, no, depth + 1, builtin, err);
        if (rc)
            return rc;
    }
    state[i] = 2;
    if (!((*order)[(*no)++] = strdup(v[i].rel)))
        return -ENOMEM;
    return 0;
}

int gd_modules_resolve(const char *moddir, const char *const *wanted, char ***order, size_t *n,
                       struct gd_err *err)
{
    struct mod *v = NULL;
    size_t nm = 0, cap = 0;
    int rc = scan_mods(moddir, "", &v, &nm, &cap);
    if (rc) {
        free(v);
        return gd_err_set(err, rc, "cannot scan modules in %s: %s", moddir, strerror(-rc));
    }
    char *state = calloc(nm + 1, 1);
    *order = calloc(nm + 1, sizeof(char *));
    *n = 0;
    if (!state || !*order) {
        rc = gd_err_set(err, -ENOMEM, "out of memory");
        goto out;
    }
    char bp[4200];
    snprintf(bp, sizeof(bp), "%s/../modules.builtin", moddir);
    char *builtin = NULL; /* NUL-terminated by gd_read_file */
    size_t bn = 0;
    if (gd_read_file(bp, (size_t)1 << 24, &builtin, &bn))
        builtin = NULL;
    for (size_t i = 0; wanted[i] && !rc; i++)
        rc = visit(v, nm, wanted[i], state, order, n, 0, builtin, err);
    free(builtin);
out:
    if (rc && *order) { /* the caller gets nothing on failure */
        for (size_t i = 0; i < *n; i++)
            free((*order)[i]);
        free(*order);
        *order = NULL;
        *n = 0;
    }
    free(state);
    free(v);
    return rc;
}

/* ---- cpio ---- */

struct membuf {
    uint8_t *p;
    size_t len, cap;
};

static la_ssize_t mem_write(struct archive *a, void *ud, const void *buf, size_t n)
{
    (void)a;
    struct membuf *m = ud;
    if (m->cap - m->len < n) {
        size_t nc = m->cap ? m->cap : 1 << 20;
        while (nc - m->len < n)
            nc *= 2;
        uint8_t *np = realloc(m->p, nc);
        if (!np)
            return -1;
        m->p = np;
        m->cap = nc;
    }
    memcpy(m->p + m->len, buf, n);
    m->len += n;
    return (la_ssize_t)n;
}

static int cpio_walk(struct archive *a, const char *root, const char *rel, int64_t *ino,
                     struct gd_err *err)
{
    char dir[2048];
    snprintf(dir, sizeof(dir), "%s%s%s", root, rel[0] ? "/" : "", rel);
    char **names;
    size_t n;
    int lrc = gd_dir_list(dir, &names, &n);
    if (lrc)
        return gd_err_set(err, lrc, "initramfs: %s: %s", dir, strerror(-lrc));
    int rc = 0;
    for (size_t i = 0; i < n && !rc; i++) {
        char r2[2048], full[4096];
        snprintf(r2, sizeof(r2), "%s%s%s", rel, rel[0] ? "/" : "", names[i]);
        snprintf(full, sizeof(full), "%s/%s", root, r2);
        struct stat st;
        if (lstat(full, &st)) {
            rc = gd_err_set(err, -errno, "initramfs: %s: %s", full, strerror(errno));
            break;
        }
        struct archive_entry *e = archive_entry_new();
        archive_entry_set_pathname(e, r2);
        archive_entry_set_mode(e, st.st_mode);
        archive_entry_set_uid(e, 0);
        archive_entry_set_gid(e, 0);
        archive_entry_set_mtime(e, 0, 0);
        archive_entry_set_ino64(e, ++*ino);
        archive_entry_set_nlink(e, S_ISDIR(st.st_mode) ? 2 : 1);
        archive_entry_set_size(e, 0);
        char target[4096];
        uint8_t *data = NULL;
        size_t dn = 0;
        if (S_ISLNK(st.st_mode)) {
            ssize_t tl = readlink(full, target, sizeof(target) - 1);
            target[tl > 0 ? tl : 0] = 0;
            archive_entry_set_symlink(e, target);
            archive_entry_set_size(e, 0);
        } else if (S_ISREG(st.st_mode)) {
            rc = gd_read_bytes(full, &data, &dn);
            if (rc)
                rc = gd_err_set(err, rc, "initramfs: read %s", full);
            archive_entry_set_size(e, (la_int64_t)dn);
        } else if (S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode)) {
            archive_entry_set_rdev(e, st.st_rdev);
        }
        if (!rc && archive_write_header(a, e) != ARCHIVE_OK)
            rc = gd_err_set(err, -EIO, "initramfs: %s", archive_error_string(a));
        if (!rc && dn && archive_write_data(a, data, dn) != (la_ssize_t)dn)
            rc = gd_err_set(err, -EIO, "initramfs: %s", archive_error_string(a));
        free(data);
        archive_entry_free(e);
        if (!rc && S_ISDIR(st.st_mode))
            rc = cpio_walk(a, root, r2, ino, err);
    }
    gd_dir_list_free(names, n);
    return rc;
}

int gd_initramfs_write(const char *src_dir, const char *path, struct gd_err *err)
{
    struct membuf m = {0};
    struct archive *a = archive_write_new();
    archive_write_set_format_cpio_newc(a);
    archive_write_set_bytes_in_last_block(a, 1);
    if (archive_write_open(a, &m, NULL, mem_write, NULL) != ARCHIVE_OK) {
        int rc = gd_err_set(err, -EIO, "initramfs: %s", archive_error_string(a));
        archive_write_free(a);
        return rc;
    }
    int64_t ino = 0;
    int rc = cpio_walk(a, src_dir, "", &ino, err);
    /* the kernel wants /dev/console before init runs */
    if (!rc) {
        struct archive_entry *e = archive_entry_new();
        archive_entry_set_pathname(e, "dev/console");
        archive_entry_set_mode(e, S_IFCHR | 0600);
        archive_entry_set_rdev(e, makedev(5, 1));
        archive_entry_set_ino64(e, ++ino);
        archive_entry_set_nlink(e, 1);
        archive_entry_set_size(e, 0);
        if (archive_write_header(a, e) != ARCHIVE_OK)
            rc = gd_err_set(err, -EIO, "initramfs: %s", archive_error_string(a));
        archive_entry_free(e);
    }
    if (archive_write_close(a) != ARCHIVE_OK && !rc)
        rc = gd_err_set(err, -EIO, "initramfs: %s", archive_error_string(a));
    archive_write_free(a);
    if (!rc) {
        uint8_t *z;
        size_t zn;
        rc = gd_lz4_legacy_compress(m.p, m.len, &z, &zn);
        if (rc)
            rc = gd_err_set(err, rc, "initramfs: lz4 failed");
        else {
            rc = write_all(path, z, zn, 0644);
            if (rc)
                rc = gd_err_set(err, rc, "initramfs: write %s: %s", path, strerror(-rc));
            free(z);
        }
    }
    free(m.p);
    return rc;
}

int gd_modules_gunzip(const char *moddir)
{
    char **v;
    size_t n;
    int rc = gd_dir_list(moddir, &v, &n);
    if (rc)
        return rc;
    for (size_t i = 0; i < n && !rc; i++) {
        char p[4096], q[4096];
        struct stat st;
        snprintf(p, sizeof(p), "%s/%s", moddir, v[i]);
        if (lstat(p, &st))
            continue;
        if (S_ISDIR(st.st_mode)) {
            rc = gd_modules_gunzip(p);
            continue;
        }
        size_t l = strlen(p);
        if (!S_ISREG(st.st_mode) || l < 7 || strcmp(p + l - 6, ".ko.gz"))
            continue;
        uint8_t *in, *out;
        size_t inn, outn;
        if ((rc = gd_read_bytes(p, &in, &inn)))
            break;
        rc = gd_gunzip(in, inn, &out, &outn);
        free(in);
        if (rc)
            break;
        snprintf(q, sizeof(q), "%.*s", (int)(l - 3), p);
        rc = write_all(q, out, outn, 0644);
        free(out);
        if (!rc)
            unlink(p);
    }
    gd_dir_list_free(v, n);
    return rc;
}
