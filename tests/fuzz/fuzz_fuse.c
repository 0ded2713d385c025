/* libFuzzer target: the FUSE wire codec (core/vfs/fuse.c), i.e. every request a guest
 * kernel (or whatever sits in its place) can put on the FUSE channel. The input is decoded
 * as it is, then again with fuse_in_header.len set to its size (so the body layouts are
 * explored without the fuzzer having to learn the framing). What decodes must keep the
 * decoder's promises, and its names must survive a READDIR and a READDIRPLUS round trip. */
#include "vfs/fuse.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n);

static void check_name(const uint8_t *buf, size_t n, const char *s, size_t len, size_t max)
{
    if (!s)
        return;
    if ((const uint8_t *)s < buf || (const uint8_t *)s + len >= buf + n || s[len] != 0 ||
        len == 0 || len > max || memchr(s, 0, len))
        __builtin_trap();
}

static void dirent_round_trip(const char *name, size_t len)
{
    uint8_t b[512];
    struct fuse_entry_out e = {.nodeid = 2};
    e.attr.ino = 3;
    e.attr.mode = 0040755;
    for (int plus = 0; plus < 2; plus++) {
        long k = plus ? gd_fuse_add_direntplus(b, sizeof(b), name, len, &e, 9)
                      : gd_fuse_add_dirent(b, sizeof(b), name, len, 3, 9, 4);
        if (k <= 0 || k % 8) /* every decoded entry name fits and is valid */
            __builtin_trap();
        size_t pos = 0;
        struct gd_fuse_dirent_view v;
        if (gd_fuse_dirent_next(b, (size_t)k, &pos, plus, &v) != 1 || pos != (size_t)k ||
            v.namelen != len || memcmp(v.name, name, len) || v.ino != 3 || v.off != 9 ||
            v.type != 4 || gd_fuse_dirent_next(b, (size_t)k, &pos, plus, &v) != 0)
            __builtin_trap();
    }
}

static void one(const uint8_t *buf, size_t n)
{
    struct gd_fuse_req r;
    uint8_t out[256];
    int e = gd_fuse_decode(buf, n, &r);
    if (e != 0 && e != -EPROTO && e != -EINVAL && e != -ENOSYS && e != -ENAMETOOLONG)
        __builtin_trap();
    if (r.hdr_ok && gd_fuse_reply_err(out, sizeof(out), r.h.unique, e ? e : -EIO) != 16)
        __builtin_trap();
    if (e)
        return;
    int entry = r.h.opcode != FUSE_SYMLINK && r.h.opcode != FUSE_GETXATTR &&
                r.h.opcode != FUSE_SETXATTR && r.h.opcode != FUSE_REMOVEXATTR;
    check_name(buf, n, r.name, r.namelen, entry ? GD_FUSE_NAME_MAX : GD_FUSE_XATTR_NAME_MAX);
    check_name(buf, n, r.name2, r.name2len,
               r.h.opcode == FUSE_SYMLINK ? GD_FUSE_LINK_MAX : GD_FUSE_NAME_MAX);
    if (r.datalen &&
        ((const uint8_t *)r.data < buf || (const uint8_t *)r.data + r.datalen != buf + n))
        __builtin_trap();
    if (r.h.opcode == FUSE_BATCH_FORGET)
        for (uint32_t i = 0; i < r.in.batch_forget.count; i++) {
            struct fuse_forget_one f;
            gd_fuse_forget_at(&r, i, &f);
        }
    if (r.name && entry)
        dirent_round_trip(r.name, r.namelen);
    if (r.name2 && r.h.opcode != FUSE_SYMLINK)
        dirent_round_trip(r.name2, r.name2len);
    if (r.h.opcode == FUSE_INIT) {
        struct gd_fuse_init_result res;
        size_t k = gd_fuse_reply_init(out, sizeof(out), &r, NULL, &res);
        if (k != (res.error ? 16 : 16 + sizeof(struct fuse_init_out)) ||
            (!res.error && (res.max_write < 4096 || res.max_write > GD_FUSE_MAX_IO)))
            __builtin_trap();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n)
{
    one(d, n);
    if (n < sizeof(struct fuse_in_header) || n > 65536)
        return 0;
    uint8_t *b = malloc(n);
    if (!b)
        return 0;
    memcpy(b, d, n);
    uint32_t len = (uint32_t)n;
    memcpy(b, &len, sizeof(len));
    one(b, n);
    free(b);
    return 0;
}
