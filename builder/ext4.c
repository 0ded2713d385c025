/*
 * ext4.c - writes a directory tree into a fresh ext4 image with libext2fs: no
 * mke2fs, no mount, no root. Deterministic: entries are added in byte order, every
 * timestamp is opts->timestamp, UUID and hash seed come from the caller. Owner,
 * mode, device numbers and xattrs come from the tree's table (what the archives said)
 * where it has the path; anything else is root's with the mode found on disk.
 */
#define _GNU_SOURCE
#include "builder.h"

#include <dirent.h>
#include <errno.h>
#include <ext2fs/ext2fs.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

struct hl {
    dev_t dev;
    ino_t ino;
    ext2_ino_t e2;
};

struct w {
    ext2_filsys fs;
    uint32_t ts;
    const struct gd_ext4_opts *o;
    size_t rootlen;
    uint64_t done, total;
    struct hl *hl;
    size_t nhl, caphl;
    struct gd_err *err;
    uint8_t *buf;
};

struct acct {
    uint64_t blocks, inodes;
};

static int measure(const char *path, struct acct *a)
{
    char **names;
    size_t n;
    int rc = gd_dir_list(path, &names, &n);
    if (rc)
        return rc;
    a->blocks += 1 + n / 64;
    for (size_t i = 0; i < n && !rc; i++) {
        char p[4096];
        struct stat st;
        snprintf(p, sizeof(p), "%s/%s", path, names[i]);
        if (lstat(p, &st)) {
            rc = -errno;
            break;
        }
        a->inodes++;
        if (S_ISREG(st.st_mode))
            a->blocks += ((uint64_t)st.st_size + 4095) / 4096 + 1;
        else if (S_ISLNK(st.st_mode))
            a->blocks += 1;
        else if (S_ISDIR(st.st_mode))
            rc = measure(p, a);
    }
    gd_dir_list_free(names, n);
    return rc;
}

static int e2err(struct w *w, errcode_t ec, const char *what, const char *path)
{
    return gd_err_set(w->err, -EIO, "ext4: %s %s: %s", what, path, error_message(ec));
}

static void set_times(struct w *w, struct ext2_inode *in)
{
    in->i_atime = in->i_ctime = in->i_mtime = w->ts;
}

/* ext2fs_link / mkdir / symlink report a full directory block; grow and retry. */
#define RETRY_EXPAND(w, dir, call)                                                                 \
    ({                                                                                             \
        errcode_t _ec = (call);                                                                    \
        if (_ec == EXT2_ET_DIR_NO_SPACE) {                                                         \
            _ec = ext2fs_expand_dir((w)->fs, (dir));                                               \
            if (!_ec)                                                                              \
                _ec = (call);                                                                      \
        }                                                                                          \
        _ec;                                                                                       \
    })

/* A new inode of `type` linked as dir/name, accounted, and `in` initialised for it
 * (mode from st, one link, fixed times); the caller fills the rest and writes it. */
static int new_linked_inode(struct w *w, ext2_ino_t dir, const char *name, unsigned type, int ft,
                            const struct stat *st, const char *src, ext2_ino_t *ino,
                            struct ext2_inode *in)
{
    errcode_t ec = ext2fs_new_inode(w->fs, dir, (int)type, 0, ino);
    if (ec)
        return e2err(w, ec, "allocate inode for", src);
    ec = RETRY_EXPAND(w, dir, ext2fs_link(w->fs, dir, name, *ino, ft));
    if (ec)
        return e2err(w, ec, "link", src);
    ext2fs_inode_alloc_stats2(w->fs, *ino, +1, 0);
    memset(in, 0, sizeof(*in));
    in->i_mode = (uint16_t)(type | (st->st_mode & 07777));
    in->i_links_count = 1;
    set_times(w, in);
    return 0;
}

static int set_mode(struct w *w, ext2_ino_t ino, unsigned type, mode_t mode, const char *src);

static int write_file(struct w *w, ext2_ino_t dir, const char *name, const char *src,
                      const struct stat *st)
{
    ext2_ino_t ino;
    struct ext2_inode in;
    int rc = new_linked_inode(w, dir, name, LINUX_S_IFREG, EXT2_FT_REG_FILE, st, src, &ino, &in);
    if (rc)
        return rc;
    errcode_t ec = ext2fs_inode_size_set(w->fs, &in, (uint64_t)st->st_size);
    if (ec)
        return e2err(w, ec, "size", src);
    if (ext2fs_has_feature_extents(w->fs->super)) {
        ext2_extent_handle_t h;
        ec = ext2fs_extent_open2(w->fs, ino, &in, &h);
        if (ec)
            return e2err(w, ec, "extents", src);
        ext2fs_extent_free(h);
    }
    ec = ext2fs_write_new_inode(w->fs, ino, &in);
    if (ec)
        return e2err(w, ec, "write inode", src);
    if (st->st_size == 0)
        goto linked;
    int fd = open(src, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return gd_err_set(w->err, -errno, "ext4: open %s: %s", src, strerror(errno));
    ext2_file_t f;
    ec = ext2fs_file_open(w->fs, ino, EXT2_FILE_WRITE, &f);
    if (ec) {
        close(fd);
        return e2err(w, ec, "open", src);
    }
    ssize_t n;
    rc = 0;
    while ((n = read(fd, w->buf, 1 << 20)) > 0) {
        ssize_t off = 0;
        while (off < n) {
            unsigned int got;
            ec = ext2fs_file_write(f, w->buf + off, (unsigned)(n - off), &got);
            if (ec) {
                rc = e2err(w, ec, "write", src);
                break;
            }
            off += got;
        }
        if (rc)
            break;
    }
    if (n < 0 && !rc)
        rc = gd_err_set(w->err, -errno, "ext4: read %s: %s", src, strerror(errno));
    ec = ext2fs_file_close(f);
    close(fd);
    if (rc)
        return rc;
    if (ec)
        return e2err(w, ec, "close", src);
linked:
    if ((rc = set_mode(w, ino, LINUX_S_IFREG, st->st_mode, src)))
        return rc;
    if (w->o->progress && (++w->done & 255) == 0)
        w->o->progress(w->o->progress_ctx, w->done, w->total);
    if (st->st_nlink > 1) {
        if (w->nhl == w->caphl) {
            w->caphl = w->caphl ? w->caphl * 2 : 64;
            struct hl *nh = realloc(w->hl, w->caphl * sizeof(*nh));
            if (!nh)
                return gd_err_set(w->err, -ENOMEM, "out of memory");
            w->hl = nh;
        }
        w->hl[w->nhl++] = (struct hl){st->st_dev, st->st_ino, ino};
    }
    return 0;
}

static int add_hardlink(struct w *w, ext2_ino_t dir, const char *name, ext2_ino_t ino,
                        const char *src)
{
    errcode_t ec = RETRY_EXPAND(w, dir, ext2fs_link(w->fs, dir, name, ino, EXT2_FT_REG_FILE));
    if (ec)
        return e2err(w, ec, "hardlink", src);
    struct ext2_inode in;
    if ((ec = ext2fs_read_inode(w->fs, ino, &in)))
        return e2err(w, ec, "read inode", src);
    in.i_links_count++;
    if ((ec = ext2fs_write_inode(w->fs, ino, &in)))
        return e2err(w, ec, "write inode", src);
    return 0;
}

static const struct gd_meta *meta_of(struct w *w, const char *src)
{
    if (!w->o->meta || strlen(src) <= w->rootlen)
        return NULL;
    return gd_tree_get(w->o->meta, src + w->rootlen + 1);
}

static int set_xattrs(struct w *w, ext2_ino_t ino, const struct gd_meta *m, const char *src)
{
    if (!m || !m->nx)
        return 0;
    struct ext2_xattr_handle *h;
    errcode_t ec = ext2fs_xattrs_open(w->fs, ino, &h);
    if (!ec)
        ec = ext2fs_xattrs_read(h);
    for (size_t i = 0; i < m->nx && !ec; i++)
        ec = ext2fs_xattr_set(h, m->xname[i], m->xval[i], m->xlen[i]);
    errcode_t ec2 = ext2fs_xattrs_close(&h);
    if (ec || ec2)
        return e2err(w, ec ? ec : ec2, "xattrs of", src);
    return 0;
}

static int set_mode(struct w *w, ext2_ino_t ino, unsigned type, mode_t mode, const char *src)
{
    struct ext2_inode in;
    errcode_t ec = ext2fs_read_inode(w->fs, ino, &in);
    if (ec)
        return e2err(w, ec, "read inode", src);
    const struct gd_meta *m = meta_of(w, src);
    uint32_t uid = 0, gid = 0;
    if (m) {
        uid = m->uid;
        gid = m->gid;
        if (type != LINUX_S_IFLNK)
            mode = m->mode;
    }
    in.i_mode = (uint16_t)(type | (mode & 07777));
    in.i_uid = (uint16_t)uid;
    in.i_gid = (uint16_t)gid;
    ext2fs_set_i_uid_high(in, uid >> 16);
    ext2fs_set_i_gid_high(in, gid >> 16);
    set_times(w, &in);
    if ((ec = ext2fs_write_inode(w->fs, ino, &in)))
        return e2err(w, ec, "write inode", src);
    return set_xattrs(w, ino, m, src);
}

static int write_special(struct w *w, ext2_ino_t dir, const char *name, const char *src,
                         const struct stat *st0)
{
    unsigned type;
    int ft;
    struct stat stm = *st0, *st = &stm;
    const struct gd_meta *m = meta_of(w, src);
    if (m) {
        stm.st_mode = m->mode;
        stm.st_rdev = (dev_t)m->rdev;
    }
    if (S_ISCHR(st->st_mode)) {
        type = LINUX_S_IFCHR;
        ft = EXT2_FT_CHRDEV;
    } else if (S_ISBLK(st->st_mode)) {
        type = LINUX_S_IFBLK;
        ft = EXT2_FT_BLKDEV;
    } else if (S_ISFIFO(st->st_mode)) {
        type = LINUX_S_IFIFO;
        ft = EXT2_FT_FIFO;
    } else if (S_ISSOCK(st->st_mode)) {
        type = LINUX_S_IFSOCK;
        ft = EXT2_FT_SOCK;
    } else {
        return 0;
    }
    ext2_ino_t ino;
    struct ext2_inode in;
    int rc = new_linked_inode(w, dir, name, type, ft, st, src, &ino, &in);
    if (rc)
        return rc;
    errcode_t ec;
    unsigned ma = major(st->st_rdev), mi = minor(st->st_rdev);
    if (ma < 256 && mi < 256) {
        in.i_block[0] = ma * 256 + mi;
    } else {
        in.i_block[1] = (mi & 0xff) | (ma << 8) | ((mi & ~0xffu) << 12);
    }
    if ((ec = ext2fs_write_new_inode(w->fs, ino, &in)))
        return e2err(w, ec, "write inode", src);
    return set_mode(w, ino, type, st->st_mode, src);
}

static int is_placeholder(struct w *w, const char *src)
{
    const struct gd_meta *m = meta_of(w, src);
    return m && (S_ISCHR(m->mode) || S_ISBLK(m->mode) || S_ISFIFO(m->mode) || S_ISSOCK(m->mode));
}

static int walk(struct w *w, const char *path, ext2_ino_t dir)
{
    char **names;
    size_t n;
    int rc = gd_dir_list(path, &names, &n);
    if (rc)
        return gd_err_set(w->err, rc, "ext4: read dir %s: %s", path, strerror(-rc));
    for (size_t i = 0; i < n && !rc; i++) {
        char p[4096];
        struct stat st;
        const char *name = names[i];
        if (snprintf(p, sizeof(p), "%s/%s", path, name) >= (int)sizeof(p)) {
            rc = gd_err_set(w->err, -ENAMETOOLONG, "ext4: path too long: %s", path);
            break;
        }
        if (lstat(p, &st)) {
            rc = gd_err_set(w->err, -errno, "ext4: stat %s: %s", p, strerror(errno));
            break;
        }
        if (S_ISDIR(st.st_mode)) {
            ext2_ino_t ino;
            errcode_t ec = RETRY_EXPAND(w, dir, ext2fs_mkdir(w->fs, dir, 0, name));
            if (ec) {
                rc = e2err(w, ec, "mkdir", p);
                break;
            }
            if ((ec = ext2fs_lookup(w->fs, dir, name, (int)strlen(name), NULL, &ino))) {
                rc = e2err(w, ec, "lookup", p);
                break;
            }
            rc = set_mode(w, ino, LINUX_S_IFDIR, st.st_mode, p);
            if (!rc)
                rc = walk(w, p, ino);
        } else if (S_ISLNK(st.st_mode)) {
            char target[4096];
            ssize_t tl = readlink(p, target, sizeof(target) - 1);
            if (tl < 0) {
                rc = gd_err_set(w->err, -errno, "ext4: readlink %s", p);
                break;
            }
            target[tl] = 0;
            errcode_t ec = RETRY_EXPAND(w, dir, ext2fs_symlink(w->fs, dir, 0, name, target));
            if (ec) {
                rc = e2err(w, ec, "symlink", p);
                break;
            }
            ext2_ino_t ino;
            if ((ec = ext2fs_lookup(w->fs, dir, name, (int)strlen(name), NULL, &ino))) {
                rc = e2err(w, ec, "lookup", p);
                break;
            }
            rc = set_mode(w, ino, LINUX_S_IFLNK, 0777, p);
        } else if (S_ISREG(st.st_mode) && !is_placeholder(w, p)) {
            ext2_ino_t linked = 0;
            if (st.st_nlink > 1)
                for (size_t k = 0; k < w->nhl; k++)
                    if (w->hl[k].dev == st.st_dev && w->hl[k].ino == st.st_ino)
                        linked = w->hl[k].e2;
            rc = linked ? add_hardlink(w, dir, name, linked, p) : write_file(w, dir, name, p, &st);
        } else {
            rc = write_special(w, dir, name, p, &st);
        }
    }
    gd_dir_list_free(names, n);
    return rc;
}

int gd_ext4_write(const char *src_dir, const char *path, const struct gd_ext4_opts *o,
                  struct gd_err *err)
{
    struct acct a = {0, 0};
    int rc = measure(src_dir, &a);
    if (rc)
        return gd_err_set(err, rc, "ext4: cannot scan %s: %s", src_dir, strerror(-rc));
    /* content + 10% + 16 MiB of slack for metadata; inodes with headroom */
    uint64_t blocks = a.blocks + a.blocks / 10 + 4096;
    uint64_t inodes = a.inodes + a.inodes / 4 + 1024;
    if (o->size_mb) {
        uint64_t want = o->size_mb * 256;
        if (want < blocks)
            return gd_err_set(
                err, -ENOSPC, "rootfs.sizeMb %llu is too small: the tree needs about %llu MiB",
                (unsigned long long)o->size_mb, (unsigned long long)((blocks + 255) / 256));
        blocks = want;
    }

    unlink(path);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return gd_err_set(err, -errno, "ext4: create %s: %s", path, strerror(errno));
    if (ftruncate(fd, (off_t)(blocks * 4096))) {
        rc = gd_err_set(err, -errno, "ext4: size %s: %s", path, strerror(errno));
        close(fd);
        return rc;
    }
    close(fd);

    struct ext2_super_block param;
    memset(&param, 0, sizeof(param));
    ext2fs_blocks_count_set(&param, blocks);
    param.s_log_block_size = 2; /* 4 KiB */
    param.s_inodes_count = (uint32_t)inodes;
    param.s_inode_size = 256;
    param.s_rev_level = 1;
    param.s_feature_incompat = EXT2_FEATURE_INCOMPAT_FILETYPE | EXT3_FEATURE_INCOMPAT_EXTENTS;
    param.s_feature_ro_compat = EXT2_FEATURE_RO_COMPAT_SPARSE_SUPER |
                                EXT2_FEATURE_RO_COMPAT_LARGE_FILE |
                                EXT4_FEATURE_RO_COMPAT_DIR_NLINK;
    param.s_feature_compat = EXT2_FEATURE_COMPAT_EXT_ATTR;

    struct w w = {.ts = o->timestamp, .err = err, .o = o, .rootlen = strlen(src_dir)};
    w.total = a.inodes;
    w.buf = malloc(1 << 20);
    if (!w.buf)
        return gd_err_set(err, -ENOMEM, "out of memory");
    errcode_t ec = ext2fs_initialize(path, EXT2_FLAG_EXCLUSIVE | EXT2_FLAG_64BITS, &param,
                                     unix_io_manager, &w.fs);
    if (ec) {
        free(w.buf);
        return gd_err_set(err, -EIO, "ext4: initialize %s: %s", path, error_message(ec));
    }
    ext2_filsys fs = w.fs;
    fs->now = o->timestamp;
    struct ext2_super_block *sb = fs->super;
    memcpy(sb->s_uuid, o->uuid, 16);
    memcpy(sb->s_hash_seed, o->hash_seed, sizeof(sb->s_hash_seed));
    sb->s_def_hash_version = EXT2_HASH_HALF_MD4;
    sb->s_mkfs_time = sb->s_lastcheck = sb->s_wtime = sb->s_mtime = o->timestamp;
    sb->s_max_mnt_count = (uint16_t)-1;
    sb->s_checkinterval = 0;
    if (o->label)
        snprintf((char *)sb->s_volume_name, sizeof(sb->s_volume_name), "%s", o->label);
    ext2fs_init_csum_seed(fs);

    rc = -EIO;
    if ((ec = ext2fs_allocate_tables(fs))) {
        rc = gd_err_set(err, -EIO, "ext4: allocate tables: %s", error_message(ec));
        goto out;
    }
    /* the inode tables of a fresh sparse file are zero: say so, or the kernel's lazy
     * init thread sets the flag itself whenever it gets to run (a build VM would then
     * leave a timing-dependent byte in the image) */
    for (dgrp_t g = 0; g < fs->group_desc_count; g++)
        ext2fs_bg_flags_set(fs, g, EXT2_BG_INODE_ZEROED);
    ec = ext2fs_convert_subcluster_bitmap(fs, &fs->block_map);
    if (ec) {
        rc = gd_err_set(err, -EIO, "ext4: bitmap: %s", error_message(ec));
        goto out;
    }
    if ((ec = ext2fs_mkdir(fs, EXT2_ROOT_INO, EXT2_ROOT_INO, 0))) {
        rc = gd_err_set(err, -EIO, "ext4: root dir: %s", error_message(ec));
        goto out;
    }
    for (ext2_ino_t i = EXT2_ROOT_INO + 1; i < EXT2_FIRST_INODE(fs->super); i++)
        ext2fs_inode_alloc_stats2(fs, i, +1, 0);
    ext2fs_mark_inode_bitmap2(fs->inode_map, EXT2_BAD_INO);
    ext2fs_inode_alloc_stats2(fs, EXT2_BAD_INO, +1, 0);
    if ((ec = ext2fs_update_bb_inode(fs, NULL))) {
        rc = gd_err_set(err, -EIO, "ext4: bad block inode: %s", error_message(ec));
        goto out;
    }
    if ((ec = ext2fs_mkdir(fs, EXT2_ROOT_INO, 0, "lost+found"))) {
        rc = gd_err_set(err, -EIO, "ext4: lost+found: %s", error_message(ec));
        goto out;
    }
    ext2_ino_t lf;
    if (!ext2fs_lookup(fs, EXT2_ROOT_INO, "lost+found", 10, NULL, &lf)) {
        set_mode(&w, lf, LINUX_S_IFDIR, 0700, "lost+found");
        for (int i = 0; i < 3; i++)
            ext2fs_expand_dir(fs, lf);
    }
    if ((rc = set_mode(&w, EXT2_ROOT_INO, LINUX_S_IFDIR, 0755, "/")))
        goto out;
    if ((rc = walk(&w, src_dir, EXT2_ROOT_INO)))
        goto out;
    fs->super->s_state |= EXT2_VALID_FS;
    if ((ec = ext2fs_close_free(&w.fs))) {
        rc = gd_err_set(err, -EIO, "ext4: write %s: %s", path, error_message(ec));
        goto out;
    }
    rc = 0;
out:
    if (w.fs)
        ext2fs_free(w.fs);
    free(w.hl);
    free(w.buf);
    if (rc)
        unlink(path);
    return rc;
}

int gd_ext4_normalize(const char *path, uint32_t ts, struct gd_err *err)
{
    ext2_filsys fs;
    errcode_t ec = ext2fs_open(path, EXT2_FLAG_RW | EXT2_FLAG_64BITS, 0, 0, unix_io_manager, &fs);
    if (ec)
        return gd_err_set(err, -EIO, "ext4: open %s: %s", path, error_message(ec));
    ext2_inode_scan scan;
    int rc = 0;
    if ((ec = ext2fs_open_inode_scan(fs, 0, &scan))) {
        rc = gd_err_set(err, -EIO, "ext4: scan %s: %s", path, error_message(ec));
        goto out;
    }
    size_t isz = EXT2_INODE_SIZE(fs->super);
    struct ext2_inode_large *in = calloc(1, isz);
    ext2_ino_t ino;
    while (in &&
           !(ec = ext2fs_get_next_inode_full(scan, &ino, (struct ext2_inode *)in, (int)isz)) &&
           ino) {
        if (!in->i_links_count && !in->i_dtime)
            continue;
        in->i_atime = in->i_ctime = in->i_mtime = ts;
        if (in->i_dtime)
            in->i_dtime = ts;
        in->i_generation = 0;
        if (isz > EXT2_GOOD_OLD_INODE_SIZE &&
            in->i_extra_isize >=
                offsetof(struct ext2_inode_large, i_crtime_extra) + 4 - EXT2_GOOD_OLD_INODE_SIZE) {
            in->i_ctime_extra = in->i_mtime_extra = in->i_atime_extra = 0;
            in->i_crtime = ts;
            in->i_crtime_extra = 0;
        }
        if ((ec = ext2fs_write_inode_full(fs, ino, (struct ext2_inode *)in, (int)isz)))
            break;
    }
    free(in);
    ext2fs_close_inode_scan(scan);
    if (ec) {
        rc = gd_err_set(err, -EIO, "ext4: normalize %s: %s", path, error_message(ec));
        goto out;
    }
    struct ext2_super_block *sb = fs->super;
    sb->s_mtime = sb->s_wtime = sb->s_lastcheck = ts;
    sb->s_mnt_count = 0;
    sb->s_kbytes_written = 0;
    memset(sb->s_last_mounted, 0, sizeof(sb->s_last_mounted));
    sb->s_state = EXT2_VALID_FS;
    fs->now = ts;
    ext2fs_mark_super_dirty(fs);
out:
    ec = ext2fs_close_free(&fs);
    if (ec && !rc)
        rc = gd_err_set(err, -EIO, "ext4: write %s: %s", path, error_message(ec));
    return rc;
}
