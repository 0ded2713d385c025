/* hostfs (core/vfs/hostfs*.c) through the FUSE session: the same operations as on the
 * memory provider, checked on the host filesystem, and the escape attempts of a hostile
 * guest (symlinks out, /proc magic links, a symlink swapped in for a directory while
 * files are created, special files, setuid bits), each asserted on the host. */
#define _GNU_SOURCE
#include "base/err.h"
#include "base/fs.h"
#include "test.h"
#include "vfs_client.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/fs.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

/* tmp/inside is the mount, tmp/outside must stay as it is */
struct box {
    char tmp[128], in[160], out[160];
};

static void box_make(struct box *b)
{
    snprintf(b->tmp, sizeof(b->tmp), "/tmp/gd-vfs-XXXXXX");
    CHECK(mkdtemp(b->tmp));
    snprintf(b->in, sizeof(b->in), "%s/inside", b->tmp);
    snprintf(b->out, sizeof(b->out), "%s/outside", b->tmp);
    CHECK_EQ(mkdir(b->in, 0755), 0);
    CHECK_EQ(mkdir(b->out, 0755), 0);
    char p[256];
    snprintf(p, sizeof(p), "%s/victim", b->out);
    FILE *f = fopen(p, "w");
    CHECK(f);
    fputs("precious", f);
    fclose(f);
}

/* outside holds exactly the victim, unchanged */
static void box_check_outside(const struct box *b)
{
    char **names;
    size_t n;
    CHECK_EQ(gd_dir_list(b->out, &names, &n), 0);
    if (n != 1 || strcmp(names[0], "victim"))
        FAIL_AT("outside has %zu entries, first %s", n, n ? names[0] : "-");
    gd_dir_list_free(names, n);
    char p[256], *data;
    size_t len;
    snprintf(p, sizeof(p), "%s/victim", b->out);
    CHECK_EQ(gd_read_file(p, 1024, &data, &len), 0);
    CHECK_STR(data, "precious");
    free(data);
    struct stat st;
    CHECK_EQ(stat(p, &st), 0);
    CHECK_EQ(st.st_mode & 07777, 0644);
    CHECK_EQ(st.st_nlink, 1);
    CHECK_EQ(getxattr(p, "user.x", NULL, 0), -1);
}

static void box_free(struct box *b)
{
    CHECK_EQ(gd_rm_rf(b->tmp), 0);
}

static gd_vfs_provider *host(const char *dir, int ro)
{
    gd_vfs_provider *pv;
    struct gd_err err;
    if (gd_vfs_hostfs_new(dir, ro, &pv, &err))
        FAIL_AT("hostfs: %s", err.msg);
    return pv;
}

static void host_path(const struct box *b, const char *rel, char *buf, size_t cap)
{
    snprintf(buf, cap, "%s/%s", b->in, rel);
}

static void write_host(const struct box *b, const char *rel, const char *text)
{
    char p[512];
    host_path(b, rel, p, sizeof(p));
    FILE *f = fopen(p, "w");
    CHECK(f);
    fputs(text, f);
    fclose(f);
}

static void check_host(const struct box *b, const char *rel, const char *want)
{
    char p[512], *data;
    size_t len;
    host_path(b, rel, p, sizeof(p));
    CHECK_EQ(gd_read_file(p, 1 << 20, &data, &len), 0);
    CHECK_STR(data, want);
    free(data);
}

TEST(vfs_hostfs_files)
{
    struct box b;
    box_make(&b);
    struct vc c;
    vc_open(&c, host(b.in, 0), NULL);
    CHECK(!(c.init_flags & FUSE_WRITEBACK_CACHE)); /* the host may change files */
    struct fuse_entry_out e;
    uint64_t fh;
    CHECK_EQ(vc_create(&c, 1, "a.txt", O_WRONLY, 0644, &e, &fh), 0);
    CHECK_EQ(e.entry_valid, 1);
    CHECK_EQ(vc_write(&c, e.nodeid, fh, 0, "from the guest", 14), 14);
    CHECK_EQ(vc_release(&c, e.nodeid, fh), 0);
    check_host(&b, "a.txt", "from the guest");
    /* a host edit is seen */
    write_host(&b, "h.txt", "from the host");
    CHECK_EQ(vc_lookup(&c, 1, "h.txt", &e), 0);
    CHECK_EQ(e.attr.size, 13);
    CHECK_EQ(vc_open_file(&c, e.nodeid, O_RDONLY, &fh), 0);
    char buf[64];
    CHECK_EQ(vc_read(&c, e.nodeid, fh, 5, buf, sizeof(buf)), 8);
    CHECK(!memcmp(buf, "the host", 8));
    CHECK_EQ(vc_release(&c, e.nodeid, fh), 0);
    /* the owner: the user running gondolin is root in the guest */
    CHECK_EQ(e.attr.uid, 0);
    /* chmod +x, truncate, times */
    uint64_t id = e.nodeid;
    struct fuse_setattr_in in = {.valid = FATTR_MODE, .mode = 0755};
    struct fuse_attr a;
    CHECK_EQ(vc_setattr(&c, id, &in, &a), 0);
    CHECK_EQ(a.mode, S_IFREG | 0755);
    char p[512];
    host_path(&b, "h.txt", p, sizeof(p));
    struct stat st;
    CHECK_EQ(stat(p, &st), 0);
    CHECK_EQ(st.st_mode & 0777, 0755);
    in = (struct fuse_setattr_in){.valid = FATTR_SIZE, .size = 4};
    CHECK_EQ(vc_setattr(&c, id, &in, &a), 0);
    check_host(&b, "h.txt", "from");
    in = (struct fuse_setattr_in){.valid = FATTR_MTIME, .mtime = 1234567};
    CHECK_EQ(vc_setattr(&c, id, &in, &a), 0);
    CHECK_EQ(stat(p, &st), 0);
    CHECK_EQ(st.st_mtime, 1234567);
    /* directories, readdirplus with the host's own "." and ".." */
    CHECK_EQ(vc_mkdir(&c, 1, "d", 0750, &e), 0);
    uint64_t d = e.nodeid;
    for (int i = 0; i < 20; i++) {
        char name[16];
        snprintf(name, sizeof(name), "d/f%d", i);
        write_host(&b, name, "x");
    }
    uint64_t dfh, off = 0;
    CHECK_EQ(vc_opendir(&c, d, &dfh), 0);
    int files = 0, dots = 0;
    for (;;) {
        CHECK_EQ(vc_readdir(&c, d, dfh, off, 512, 1), 0);
        if (!c.paylen)
            break;
        size_t pos = 0;
        struct gd_fuse_dirent_view v;
        while (gd_fuse_dirent_next(c.payload, c.paylen, &pos, 1, &v) == 1) {
            off = v.off;
            if (v.name[0] == '.') {
                dots++;
                CHECK_EQ(v.entry.nodeid, 0);
            } else {
                files++;
                CHECK(v.entry.nodeid > 1);
                CHECK_EQ(v.entry.attr.size, 1);
            }
        }
    }
    CHECK_EQ(files, 20);
    CHECK_EQ(dots, 2);
    CHECK_EQ(vc_releasedir(&c, d, dfh), 0);
    /* rename flags, hard links, xattrs, unlink */
    write_host(&b, "x", "X");
    write_host(&b, "y", "Y");
    CHECK_EQ(vc_lookup(&c, 1, "x", &e), 0);
    CHECK_EQ(vc_lookup(&c, 1, "y", &e), 0);
    CHECK_EQ(vc_rename(&c, 1, "x", 1, "y", RENAME_NOREPLACE), -EEXIST);
    CHECK_EQ(vc_rename(&c, 1, "x", 1, "y", RENAME_EXCHANGE), 0);
    check_host(&b, "x", "Y");
    check_host(&b, "y", "X");
    CHECK_EQ(vc_rename(&c, 1, "x", 1, "y", RENAME_WHITEOUT), -EINVAL);
    CHECK_EQ(vc_lookup(&c, 1, "x", &e), 0);
    CHECK_EQ(vc_link(&c, e.nodeid, d, "hard", &e), 0);
    CHECK_EQ(e.attr.nlink, 2);
    check_host(&b, "d/hard", "Y");
    CHECK_EQ(vc_setxattr(&c, e.nodeid, "user.k", "v", 1, 0), 0);
    CHECK_EQ(vc_getxattr(&c, e.nodeid, "user.k", buf, sizeof(buf)), 1);
    host_path(&b, "x", p, sizeof(p));
    CHECK_EQ(getxattr(p, "user.k", buf, sizeof(buf)), 1);
    CHECK_EQ(vc_setxattr(&c, e.nodeid, "trusted.k", "v", 1, 0), -EOPNOTSUPP);
    CHECK_EQ(vc_setxattr(&c, e.nodeid, "security.capability", "v", 1, 0), -EOPNOTSUPP);
    CHECK_EQ(vc_listxattr(&c, e.nodeid, buf, sizeof(buf)), 7);
    CHECK_EQ(vc_removexattr(&c, e.nodeid, "user.k"), 0);
    CHECK_EQ(vc_unlink(&c, 1, "x"), 0);
    CHECK_EQ(access(p, F_OK), -1);
    /* statfs comes from the host */
    CHECK_EQ(vc_req(&c, FUSE_STATFS, 1, NULL, 0, NULL, NULL, NULL, 0), 0);
    struct fuse_statfs_out so;
    memcpy(&so, c.payload, sizeof(so));
    CHECK(so.st.blocks > 0);
    vc_close(&c);
    box_check_outside(&b);
    box_free(&b);
}

TEST(vfs_hostfs_readonly)
{
    struct box b;
    box_make(&b);
    write_host(&b, "f", "ro");
    struct vc c;
    vc_open(&c, host(b.in, 1), NULL);
    struct fuse_entry_out e;
    uint64_t fh;
    CHECK_EQ(vc_lookup(&c, 1, "f", &e), 0);
    CHECK_EQ(vc_open_file(&c, e.nodeid, O_RDWR, &fh), -EROFS);
    CHECK_EQ(vc_create(&c, 1, "g", O_RDWR, 0644, &e, &fh), -EROFS);
    CHECK_EQ(vc_unlink(&c, 1, "f"), -EROFS);
    check_host(&b, "f", "ro");
    vc_close(&c);
    box_free(&b);
}

/* Symlinks the guest makes (or finds) that point out: nothing goes through them. */
TEST(vfs_hostfs_symlinks_lead_nowhere)
{
    struct box b;
    box_make(&b);
    struct vc c;
    vc_open(&c, host(b.in, 0), NULL);
    char abs_out[256], abs_victim[256];
    snprintf(abs_out, sizeof(abs_out), "%s", b.out);
    snprintf(abs_victim, sizeof(abs_victim), "%s/victim", b.out);
    const char *targets[] = {"/",
                             "../outside",
                             "../../x",
                             abs_out,
                             "/proc/self/fd/3",
                             "/proc/self/root",
                             "/proc/self/cwd",
                             "../outside/victim",
                             abs_victim};
    struct fuse_entry_out e, e2;
    uint64_t fh;
    char name[16];
    for (size_t i = 0; i < sizeof(targets) / sizeof(*targets); i++) {
        snprintf(name, sizeof(name), "l%zu", i);
        CHECK_EQ(vc_symlink(&c, 1, name, targets[i], &e), 0);
        char got[256];
        CHECK_EQ(vc_readlink(&c, e.nodeid, got, sizeof(got)), 0);
        CHECK_STR(got, targets[i]); /* stored verbatim */
        uint64_t l = e.nodeid;
        /* a guest that treats the link as a directory */
        CHECK(vc_lookup(&c, l, "victim", &e2) < 0);
        CHECK(vc_create(&c, l, "pwned", O_RDWR, 0644, &e2, &fh) < 0);
        CHECK(vc_mkdir(&c, l, "pwned", 0755, &e2) < 0);
        CHECK(vc_symlink(&c, l, "pwned", "x", &e2) < 0);
        CHECK(vc_unlink(&c, l, "victim") < 0);
        CHECK(vc_rename(&c, l, "victim", 1, "stolen", 0) < 0);
        /* or as the file it names */
        CHECK_EQ(vc_open_file(&c, l, O_RDWR | O_TRUNC, &fh), -ELOOP);
        struct fuse_setattr_in in = {.valid = FATTR_SIZE, .size = 0};
        CHECK(vc_setattr(&c, l, &in, NULL) < 0);
        in = (struct fuse_setattr_in){.valid = FATTR_MODE, .mode = 0777};
        CHECK(vc_setattr(&c, l, &in, NULL) < 0);
        CHECK(vc_setxattr(&c, l, "user.x", "1", 1, 0) < 0);
        /* a hard link to the link is a link to the link, inside */
        snprintf(name, sizeof(name), "h%zu", i);
        CHECK_EQ(vc_link(&c, l, 1, name, &e2), 0);
        CHECK(S_ISLNK(e2.attr.mode));
        box_check_outside(&b);
    }
    /* the same links made on the host side */
    char p[512];
    host_path(&b, "hostlink", p, sizeof(p));
    CHECK_EQ(symlink(b.out, p), 0);
    CHECK_EQ(vc_lookup(&c, 1, "hostlink", &e), 0);
    CHECK(S_ISLNK(e.attr.mode));
    CHECK(vc_create(&c, e.nodeid, "pwned", O_RDWR, 0644, &e2, &fh) < 0);
    vc_close(&c);
    box_check_outside(&b);
    box_free(&b);
}

struct racer {
    char a[256], b[256];
    atomic_int stop;
};

static void *swap_loop(void *arg)
{
    struct racer *r = arg;
    while (!atomic_load(&r->stop))
        renameat2(AT_FDCWD, r->a, AT_FDCWD, r->b, RENAME_EXCHANGE);
    return NULL;
}

/* "d" is a directory when the guest looks it up, then a symlink out (to a directory
 * that has a "sub" too) and back, many times a millisecond, while the guest creates,
 * renames and links files in d/sub: every path crosses the swapped name. */
TEST(vfs_hostfs_symlink_swap_race)
{
    struct box b;
    box_make(&b);
    struct racer r = {0};
    char bait[256], bait_sub[300], sub[300];
    snprintf(bait, sizeof(bait), "%s/bait", b.tmp);
    snprintf(bait_sub, sizeof(bait_sub), "%s/sub", bait);
    CHECK_EQ(mkdir(bait, 0755), 0);
    CHECK_EQ(mkdir(bait_sub, 0755), 0);
    host_path(&b, "d", r.a, sizeof(r.a));
    host_path(&b, "d-link", r.b, sizeof(r.b));
    host_path(&b, "d/sub", sub, sizeof(sub));
    CHECK_EQ(mkdir(r.a, 0755), 0);
    CHECK_EQ(mkdir(sub, 0755), 0);
    CHECK_EQ(symlink(bait, r.b), 0);
    struct vc c;
    vc_open(&c, host(b.in, 0), NULL);
    struct fuse_entry_out e, e2;
    CHECK_EQ(vc_lookup(&c, 1, "d", &e), 0);
    CHECK(S_ISDIR(e.attr.mode));
    CHECK_EQ(vc_lookup(&c, e.nodeid, "sub", &e), 0);
    uint64_t d = e.nodeid;
    pthread_t t;
    CHECK_EQ(pthread_create(&t, NULL, swap_loop, &r), 0);
    int ok = 0, refused = 0;
    char name[32];
    for (int i = 0; i < 2000; i++) {
        /* every name new, nothing removed: whatever got out would stay there */
        snprintf(name, sizeof(name), "f%d", i);
        uint64_t fh;
        int rc = vc_create(&c, d, name, O_RDWR, 0644, &e2, &fh);
        if (rc == 0) {
            ok++;
            vc_write(&c, e2.nodeid, fh, 0, "x", 1);
            vc_release(&c, e2.nodeid, fh);
        } else {
            refused++;
        }
        char other[40];
        snprintf(other, sizeof(other), "r%d", i);
        vc_rename(&c, d, name, d, other, 0);
        snprintf(other, sizeof(other), "s%d", i);
        vc_mkdir(&c, d, other, 0755, &e2);
        snprintf(other, sizeof(other), "l%d", i);
        vc_symlink(&c, d, other, "/", &e2);
        snprintf(other, sizeof(other), "n%d", i);
        vc_mknod(&c, d, other, S_IFREG | 0644, 0, &e2);
        vc_unlink(&c, d, "victim");
        vc_lookup(&c, d, "victim", &e2);
        struct fuse_setattr_in in = {.valid = FATTR_MODE, .mode = 0777};
        vc_setattr(&c, d, &in, NULL);
    }
    atomic_store(&r.stop, 1);
    pthread_join(t, NULL);
    vc_close(&c);
    box_check_outside(&b);
    char **names;
    size_t n;
    CHECK_EQ(gd_dir_list(bait_sub, &names, &n), 0);
    if (n)
        FAIL_AT("%zu names got out to %s, first %s", n, bait_sub, names[0]);
    gd_dir_list_free(names, n);
    struct stat st;
    CHECK_EQ(stat(bait_sub, &st), 0);
    CHECK_EQ(st.st_mode & 07777, 0755);
    CHECK(ok > 0);      /* the directory was there some of the time */
    CHECK(refused > 0); /* and the symlink some of the time */
    box_free(&b);
}

static void on_alarm(int sig)
{
    (void)sig;
    static const char m[] = "  blocked on a FIFO\n";
    (void)!write(2, m, sizeof(m) - 1);
    _exit(1);
}

TEST(vfs_hostfs_special_files_and_setuid)
{
    struct box b;
    box_make(&b);
    struct vc c;
    vc_open(&c, host(b.in, 0), NULL);
    struct fuse_entry_out e;
    char p[512];
    struct stat st;
    /* no FIFOs, sockets or devices from the guest */
    CHECK_EQ(vc_mknod(&c, 1, "fifo", S_IFIFO | 0644, 0, &e), -EPERM);
    CHECK_EQ(vc_mknod(&c, 1, "null", S_IFCHR | 0666, makedev(1, 3), &e), -EPERM);
    CHECK_EQ(vc_mknod(&c, 1, "sda", S_IFBLK | 0666, makedev(8, 0), &e), -EPERM);
    CHECK_EQ(vc_mknod(&c, 1, "sock", S_IFSOCK | 0666, 0, &e), -EPERM);
    host_path(&b, "fifo", p, sizeof(p));
    CHECK_EQ(lstat(p, &st), -1);
    CHECK_EQ(vc_mknod(&c, 1, "reg", S_IFREG | 04755, 0, &e), 0);
    host_path(&b, "reg", p, sizeof(p));
    CHECK_EQ(lstat(p, &st), 0);
    CHECK_EQ(st.st_mode & 07777, 0755);
    /* setuid/setgid bits are stripped everywhere */
    uint64_t fh;
    CHECK_EQ(vc_create(&c, 1, "suid", O_RDWR, 06755, &e, &fh), 0);
    CHECK_EQ(vc_release(&c, e.nodeid, fh), 0);
    host_path(&b, "suid", p, sizeof(p));
    CHECK_EQ(lstat(p, &st), 0);
    CHECK_EQ(st.st_mode & 07777, 0755);
    struct fuse_setattr_in in = {.valid = FATTR_MODE, .mode = 06777};
    struct fuse_attr a;
    CHECK_EQ(vc_setattr(&c, e.nodeid, &in, &a), 0);
    CHECK_EQ(lstat(p, &st), 0);
    CHECK_EQ(st.st_mode & 07777, 0777);
    CHECK_EQ(a.mode & 07777, 0777);
    CHECK_EQ(vc_mkdir(&c, 1, "sgid", 02775, &e), 0);
    host_path(&b, "sgid", p, sizeof(p));
    CHECK_EQ(lstat(p, &st), 0);
    CHECK_EQ(st.st_mode & 07000, 0);
    /* a FIFO that is already there is refused, never opened (that would block) */
    host_path(&b, "hostfifo", p, sizeof(p));
    CHECK_EQ(mkfifo(p, 0666), 0);
    signal(SIGALRM, on_alarm);
    alarm(10);
    CHECK_EQ(vc_lookup(&c, 1, "hostfifo", &e), 0);
    CHECK(S_ISFIFO(e.attr.mode));
    CHECK_EQ(vc_open_file(&c, e.nodeid, O_RDONLY, &fh), -EACCES);
    CHECK_EQ(vc_open_file(&c, e.nodeid, O_WRONLY, &fh), -EACCES);
    CHECK_EQ(vc_create(&c, 1, "hostfifo", O_WRONLY, 0644, &e, &fh), -EACCES);
    CHECK_EQ(vc_setxattr(&c, e.nodeid, "user.x", "1", 1, 0), -EPERM);
    in = (struct fuse_setattr_in){.valid = FATTR_SIZE, .size = 0};
    CHECK_EQ(vc_setattr(&c, e.nodeid, &in, NULL), -EINVAL);
    alarm(0);
    vc_close(&c);
    box_check_outside(&b);
    box_free(&b);
}

/* Run as an ordinary user (the test drops root in its own process): that user is the
 * guest's root, others are nobody, chown works only to the guest's root. */
TEST(vfs_hostfs_owner_mapping)
{
    struct box b;
    box_make(&b);
    write_host(&b, "mine", "m");
    write_host(&b, "theirs", "t");
    char p[512];
    uid_t me = geteuid() == 0 ? 4242 : geteuid();
    gid_t mygid = geteuid() == 0 ? 4242 : getegid();
    if (geteuid() == 0) {
        CHECK_EQ(chown(b.tmp, me, mygid), 0);
        CHECK_EQ(chown(b.in, me, mygid), 0);
        CHECK_EQ(chown(b.out, me, mygid), 0);
        host_path(&b, "mine", p, sizeof(p));
        CHECK_EQ(chown(p, me, mygid), 0);
        host_path(&b, "theirs", p, sizeof(p));
        CHECK_EQ(chown(p, 4343, 4343), 0);
        CHECK_EQ(setgroups(0, NULL), 0);
        CHECK_EQ(setresgid(mygid, mygid, mygid), 0);
        CHECK_EQ(setresuid(me, me, me), 0);
    }
    struct vc c;
    vc_open(&c, host(b.in, 0), NULL);
    struct fuse_attr a;
    CHECK_EQ(vc_getattr(&c, 1, &a), 0);
    CHECK_EQ(a.uid, 0); /* git's safe.directory check sees root's own directory */
    CHECK_EQ(a.gid, 0);
    struct fuse_entry_out e;
    CHECK_EQ(vc_lookup(&c, 1, "theirs", &e), 0);
    CHECK_EQ(e.attr.uid, 65534);
    CHECK_EQ(vc_lookup(&c, 1, "mine", &e), 0);
    CHECK_EQ(e.attr.uid, 0);
    struct fuse_setattr_in in = {.valid = FATTR_UID | FATTR_GID, .uid = 0, .gid = 0};
    CHECK_EQ(vc_setattr(&c, e.nodeid, &in, &a), 0);
    CHECK_EQ(a.uid, 0);
    in.uid = 1000;
    CHECK_EQ(vc_setattr(&c, e.nodeid, &in, &a), -EPERM);
    uint64_t fh;
    CHECK_EQ(vc_create(&c, 1, "new", O_RDWR, 0644, &e, &fh), 0);
    CHECK_EQ(e.attr.uid, 0);
    CHECK_EQ(vc_release(&c, e.nodeid, fh), 0);
    struct stat st;
    host_path(&b, "new", p, sizeof(p));
    CHECK_EQ(stat(p, &st), 0);
    CHECK_EQ(st.st_uid, me); /* the file is the host user's */
    /* chmod of a file its owner cannot read (000) still works */
    in = (struct fuse_setattr_in){.valid = FATTR_MODE, .mode = 0};
    CHECK_EQ(vc_setattr(&c, e.nodeid, &in, &a), 0);
    in.mode = 0640;
    CHECK_EQ(vc_setattr(&c, e.nodeid, &in, &a), 0);
    CHECK_EQ(stat(p, &st), 0);
    CHECK_EQ(st.st_mode & 0777, 0640);
    vc_close(&c);
    box_free(&b);
}
