/* snapshot.c - booted-image snapshots (see snapshot.h and docs/snapshots.md).
 *
 * Save (the first start of a VM shape): the guest boots, its agent says HELLO; QEMU is
 * stopped and migrates into a temporary file of ours (QMP getfd + migrate fd:), then
 * continues; a thread hashes the stream, writes the header, fsyncs and renames the file
 * into place while the first command runs. The running VM gets RESUME like a restored
 * one (its clock stood still during the save).
 *
 * Restore: QEMU starts with the same command line plus -S -incoming fd:N where N is a
 * socketpair; the loop reads the file and feeds QEMU while a thread-pool job hashes the
 * same bytes from the file (two cores). Only when the whole stream went through and its SHA-256
 * matches the header does QMP `cont` run the guest; then RESUME (fresh entropy, the host's clock)
 * and the agent's new HELLO make the VM ready. Any failure before that discards the file with a
 * one-line notice and the VM boots instead. */
#define _GNU_SOURCE
#include "snapshot.h"

#include "base/fs.h"
#include "ctl/proto.h"
#include "image/image.h"
#include "image/store.h"
#include "snapshot_int.h"
#include "vm_int.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define CHUNK (1u << 20)
#define FEED_PER_CALLBACK (8u << 20) /* yield to the loop between slices */

enum snap_mode { SNAP_BOOT, SNAP_SAVE, SNAP_RESTORE };
enum snap_phase {
    PH_NONE,
    PH_WARMUP,      /* a warm-up command runs before the save */
    PH_SAVING,      /* stop + migrate in flight */
    PH_CONT,        /* cont sent */
    PH_RESUME_SENT, /* waiting for the HELLO that answers RESUME */
    PH_DONE,
};

struct gd__bootsnap {
    gd_vm *vm;
    enum snap_mode mode;
    enum snap_phase phase;
    int disabled; /* a restore failed in this VM: boot from now on */
    char build_id[65];
    unsigned memory_mb, cpus;
    char dir[1200], path[1300];
    uint8_t key[32];
    uint64_t t0;
    /* restore */
    int file_fd;
    struct gd_bootsnap_hdr hdr;
    int feed_fd;
    uv_poll_t feed_poll;
    int feed_open;
    uint8_t *chunk;
    size_t chunk_len, chunk_off;
    uint64_t fed;
    int fed_ok, loaded;        /* the stream went through with the right checksum; QEMU loaded it */
    int fed_all;               /* every byte went to QEMU */
    int hash_ok;               /* the file's stream has the header's checksum (hash_work) */
    struct hash_job *hash_job; /* in flight on the thread pool */
    /* save */
    char tmp[1300];
    int tmp_fd;
    uint64_t t_save; /* when the guest was stopped for the save */
    struct gd_bootsnap_hdr save_hdr;
    pthread_t th;
    int th_started;
    /* resume of a memory snapshot (gd_vm_opts.resume): its file, never discarded */
    int resume;
    uint64_t stream_off;
    uint8_t shape[32];
    uint8_t token[GD_RESUME_TOKEN_LEN];
    char refusal[700];
};

#define DBG(...)                                                                                   \
    do {                                                                                           \
        if (getenv("GONDOLIN_SNAP_DEBUG"))                                                         \
            fprintf(stderr, "snap %.0f ms: ", (double)(uv_hrtime() - s->t0) / 1e6),                \
                fprintf(stderr, __VA_ARGS__), fputc('\n', stderr);                                 \
    } while (0)

static void hash_detach(struct gd__bootsnap *s);

/* ---- the key ---- */

/* Whether argument a (of argv) is a per-sandbox path that a memory snapshot's shape
 * leaves out: the kernel and initrd (the buildId stands for them) and the root disk's
 * file (the image's rootfs, or this sandbox's overlay). *skip_to: for -drive, where
 * the value goes on after its "file=...," part. */
static int masked_arg(char *const *argv, char *const *a, const char **rest)
{
    *rest = NULL;
    if (a == argv)
        return 0;
    const char *prev = a[-1];
    if (!strcmp(prev, "-kernel") || !strcmp(prev, "-initrd"))
        return 1;
    if (!strcmp(prev, "-drive") && !strncmp(*a, "file=", 5)) {
        const char *c = strchr(*a, ',');
        *rest = c ? c : "";
        return 1;
    }
    return 0;
}

void gd__vm_argv_key(const char *build_id, char *const *argv, const char *qemu, int shape,
                     uint8_t key[32])
{
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    unsigned int n = 32;
    if (!c) {
        memset(key, 0, 32);
        return;
    }
    EVP_DigestInit_ex(c, EVP_sha256(), NULL);
    char line[1600];
    int l =
        snprintf(line, sizeof(line), "gondolin %s %u\n%s\n%s\n",
                 shape ? "vm shape" : "boot snapshot", GD_BOOTSNAP_FORMAT, GD_VERSION, build_id);
    EVP_DigestUpdate(c, line, (size_t)l);
    /* the QEMU binary: another build may not load this one's stream */
    struct stat st;
    char path[1100];
    const char *q = qemu;
    if (!strchr(qemu, '/')) { /* from PATH, as execvp finds it */
        const char *p = getenv("PATH");
        q = qemu;
        for (; p && *p;) {
            size_t k = strcspn(p, ":");
            snprintf(path, sizeof(path), "%.*s/%s", (int)k, p, qemu);
            if (access(path, X_OK) == 0) {
                q = path;
                break;
            }
            p += k + (p[k] == ':');
        }
    }
    if (stat(q, &st) == 0)
        l = snprintf(line, sizeof(line), "%s %lld %lld\n", q, (long long)st.st_size,
                     (long long)st.st_mtime);
    else
        l = snprintf(line, sizeof(line), "%s\n", q);
    EVP_DigestUpdate(c, line, (size_t)l);
    for (char *const *a = argv; *a; a++) {
        const char *rest;
        if (shape && masked_arg(argv, a, &rest)) {
            if (rest)
                EVP_DigestUpdate(c, rest, strlen(rest));
            EVP_DigestUpdate(c, "", 1);
            continue;
        }
        /* tsc_early_khz comes from /proc/cpuinfo, which may move with frequency scaling:
         * the same host's snapshot stays valid, so the key skips that one argument */
        const char *t = strstr(*a, " tsc_early_khz=");
        if (t) {
            EVP_DigestUpdate(c, *a, (size_t)(t - *a));
            const char *rest2 = strchr(t + 1, ' ');
            if (rest2)
                EVP_DigestUpdate(c, rest2, strlen(rest2));
        } else {
            EVP_DigestUpdate(c, *a, strlen(*a));
        }
        EVP_DigestUpdate(c, "", 1);
    }
    EVP_DigestFinal_ex(c, key, &n);
    EVP_MD_CTX_free(c);
}

/* ---- lifecycle ---- */

int gd__bootsnap_new(gd_vm *vm, const char *build_id, unsigned memory_mb, unsigned cpus,
                     struct gd__bootsnap **out)
{
    struct gd__bootsnap *s = calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    s->vm = vm;
    snprintf(s->build_id, sizeof(s->build_id), "%s", build_id);
    s->memory_mb = memory_mb;
    s->cpus = cpus;
    s->file_fd = s->feed_fd = s->tmp_fd = -1;
    s->stream_off = GD_BOOTSNAP_HDR_LEN;
    char base[1100];
    gd_bootsnap_dir(base, sizeof(base));
    snprintf(s->dir, sizeof(s->dir), "%s/%s", base, build_id);
    *out = s;
    return 0;
}

static void restore_cleanup(struct gd__bootsnap *s)
{
    if (s->file_fd >= 0)
        close(s->file_fd);
    s->file_fd = -1;
    if (s->feed_fd >= 0 && !s->feed_open)
        close(s->feed_fd);
    if (!s->feed_open)
        s->feed_fd = -1;
    free(s->chunk);
    s->chunk = NULL;
}

void gd__bootsnap_free(struct gd__bootsnap *s)
{
    if (!s)
        return;
    if (s->th_started)
        pthread_join(s->th, NULL);
    hash_detach(s);
    restore_cleanup(s);
    if (s->feed_fd >= 0)
        close(s->feed_fd);
    if (s->tmp_fd >= 0) {
        close(s->tmp_fd);
        if (s->tmp[0])
            unlink(s->tmp);
    }
    free(s);
}

int gd__bootsnap_new_resume(gd_vm *vm, const char *build_id, const struct gd_vm_resume *r,
                            struct gd__bootsnap **out)
{
    if (!r->path || strlen(r->path) >= sizeof((*out)->path) || !r->length ||
        r->length > GD_BOOTSNAP_MAX_STREAM)
        return -EINVAL;
    int rc = gd__bootsnap_new(vm, build_id, 0, 0, out);
    if (rc)
        return rc;
    struct gd__bootsnap *s = *out;
    s->resume = 1;
    snprintf(s->path, sizeof(s->path), "%s", r->path);
    s->stream_off = r->offset;
    memcpy(s->shape, r->shape, 32);
    s->hdr.stream_len = r->length;
    memcpy(s->hdr.sha256, r->sha256, 32);
    return 0;
}

const char *gd__bootsnap_refusal(const struct gd__bootsnap *s)
{
    return s && s->refusal[0] ? s->refusal : NULL;
}

const char *gd__bootsnap_mode(const struct gd__bootsnap *s)
{
    return !s                        ? "boot"
           : s->resume               ? "resume"
           : s->mode == SNAP_RESTORE ? "restore"
           : s->mode == SNAP_SAVE    ? "boot+save"
                                     : "boot";
}

/* One line on stderr, and the file goes. */
static void discard(struct gd__bootsnap *s, const char *why)
{
    fprintf(stderr, "gondolin: booted snapshot %s %s; discarded, booting instead\n", s->path, why);
    unlink(s->path);
}

static int open_feed(struct gd__bootsnap *s, int fd);

/* A memory snapshot the user named: its shape must be this command line's; nothing is
 * discarded, and a refusal fails the start (gd__bootsnap_refusal says why). */
static int prepare_resume(struct gd__bootsnap *s, char *const *argv, const char *qemu)
{
    uint8_t shape[32];
    s->refusal[0] = 0;
    gd__vm_argv_key(s->build_id, argv, qemu, 1, shape);
    if (memcmp(shape, s->shape, 32)) {
        snprintf(s->refusal, sizeof(s->refusal),
                 "memory snapshot %s was taken of a VM of another shape (memory, cpus, "
                 "network, accelerator, kernel arguments or QEMU binary)",
                 s->path);
        return -2;
    }
    int fd = open(s->path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) || (uint64_t)st.st_size < s->stream_off + s->hdr.stream_len) {
        snprintf(s->refusal, sizeof(s->refusal), "memory snapshot %s: %s", s->path,
                 fd < 0 ? strerror(errno) : "truncated");
        if (fd >= 0)
            close(fd);
        return -2;
    }
    /* whatever the guest sends before the token is its old host's: armed before the
     * guest runs, since it may write before it reads RESUME */
    uint8_t mark[GD_PROTO_HDR_LEN + GD_RESUME_TOKEN_LEN];
    struct gd_enc m;
    gd_enc_init(&m, mark, sizeof(mark), GD_MSG_PONG, 0, 0);
    if (RAND_bytes(s->token, sizeof(s->token)) != 1) {
        close(fd);
        snprintf(s->refusal, sizeof(s->refusal), "memory snapshot %s: no host randomness", s->path);
        return -2;
    }
    gd_enc_bytes(&m, s->token, sizeof(s->token));
    gd_enc_finish(&m);
    gd__vm_resync(s->vm, mark, sizeof(mark));
    int in = open_feed(s, fd);
    if (in < 0)
        snprintf(s->refusal, sizeof(s->refusal), "memory snapshot %s: out of memory or fds",
                 s->path);
    return in < 0 ? -2 : in;
}

int gd__bootsnap_prepare(struct gd__bootsnap *s, char *const *argv, const char *qemu)
{
    s->phase = PH_NONE;
    s->t0 = uv_hrtime();
    restore_cleanup(s);
    if (s->resume)
        return prepare_resume(s, argv, qemu);
    gd__vm_argv_key(s->build_id, argv, qemu, 0, s->key);
    char hex[65];
    gd_hex(s->key, 16, hex);
    snprintf(s->path, sizeof(s->path), "%s/%s.gdsnap", s->dir, hex);
    s->mode = s->disabled ? SNAP_BOOT : SNAP_SAVE;
    if (s->disabled)
        return -1;
    int fd = open(s->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1; /* none yet: boot and save */
    uint8_t b[GD_BOOTSNAP_HDR_LEN];
    struct stat st;
    const char *bad = NULL;
    if (pread(fd, b, sizeof(b), 0) != (ssize_t)sizeof(b) ||
        gd_bootsnap_hdr_parse(b, sizeof(b), &s->hdr))
        bad = "has no valid header";
    else if (memcmp(s->hdr.key, s->key, 32) || strcmp(s->hdr.version, GD_VERSION) ||
             strcmp(s->hdr.build_id, s->build_id))
        bad = "was made for another image, gondolin version or VM shape";
    else if (fstat(fd, &st) || (uint64_t)st.st_size != GD_BOOTSNAP_HDR_LEN + s->hdr.stream_len)
        bad = "is truncated";
    if (bad) {
        close(fd);
        discard(s, bad);
        return -1;
    }
    /* our own trouble (fds, memory) is not the file's: boot, keep it */
    return open_feed(s, fd);
}

/* The socketpair QEMU reads the stream from (its end returned), the hash, the buffer.
 * Takes fd (the file). -1 when out of fds or memory: then it boots. */
static int open_feed(struct gd__bootsnap *s, int fd)
{
    int sp[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp)) {
        close(fd);
        s->mode = SNAP_BOOT;
        return -1;
    }
    if (!(s->chunk = malloc(CHUNK))) {
        close(sp[0]);
        close(sp[1]);
        close(fd);
        restore_cleanup(s);
        s->mode = SNAP_BOOT;
        return -1;
    }
    int big = 4 << 20;
    setsockopt(sp[0], SOL_SOCKET, SO_SNDBUF, &big, sizeof(big));
    setsockopt(sp[1], SOL_SOCKET, SO_RCVBUF, &big, sizeof(big));
    fcntl(sp[0], F_SETFL, fcntl(sp[0], F_GETFL) | O_NONBLOCK);
    s->file_fd = fd;
    s->feed_fd = sp[0];
    s->fed = 0;
    s->fed_ok = s->loaded = s->fed_all = s->hash_ok = 0;
    s->chunk_len = s->chunk_off = 0;
    s->mode = SNAP_RESTORE;
    posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
    return sp[1];
}

/* Restoring failed: drop the file (once), boot instead. */
static void restore_failed(struct gd__bootsnap *s, const char *why)
{
    if (s->resume) { /* the user's file: fail the start, boot nothing else */
        char w[1600];
        snprintf(w, sizeof(w), "memory snapshot %s %s", s->path, why);
        if (!s->disabled)
            gd__vm_fail(s->vm, w);
        s->disabled = 1;
        return;
    }
    if (s->mode != SNAP_RESTORE || s->disabled)
        return;
    s->disabled = 1;
    discard(s, why);
    gd__vm_restart(s->vm);
}

int gd__bootsnap_on_start_failure(struct gd__bootsnap *s, const char *why)
{
    if (!s || s->resume || s->mode != SNAP_RESTORE || s->disabled)
        return 0;
    char w[600];
    snprintf(w, sizeof(w), "could not be restored (%s)", why);
    s->disabled = 1;
    discard(s, w);
    return 1;
}

static void send_resume(struct gd__bootsnap *s)
{
    uint8_t buf[GD_PROTO_HDR_LEN + 12 + GD_RESUME_TOKEN_LEN + 64];
    uint8_t rnd[64];
    if (RAND_bytes(rnd, sizeof(rnd)) != 1) {
        if (s->mode == SNAP_RESTORE)
            restore_failed(s, "could not be reseeded (no host randomness)");
        return;
    }
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t ns = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
    struct gd_enc e;
    gd_enc_init(&e, buf, sizeof(buf), GD_MSG_RESUME, 0, 0);
    /* a resumed session's guest has exec sessions of a host that is gone: it drops them
     * and marks where this host's frames start with the token (PONG, id 0) */
    gd_enc_u32(&e, s->resume ? GD_RESUME_NEW_HOST : 0);
    gd_enc_u32(&e, (uint32_t)(ns >> 32));
    gd_enc_u32(&e, (uint32_t)ns);
    if (s->resume)
        gd_enc_bytes(&e, s->token, sizeof(s->token));
    gd_enc_bytes(&e, rnd, sizeof(rnd));
    long n = gd_enc_finish(&e);
    OPENSSL_cleanse(rnd, sizeof(rnd));
    s->phase = PH_RESUME_SENT;
    if (n < 0 || gd__vm_send_starting(s->vm, buf, (size_t)n))
        restore_failed(s, "could not be resumed (control channel)");
    OPENSSL_cleanse(buf, sizeof(buf));
}

static void on_cont(gd_qmp *q, int status, const cJSON *ret, const char *err, void *ud)
{
    (void)q;
    (void)ret;
    struct gd__bootsnap *s = ud;
    if (status == -ECANCELED)
        return;
    if (status) {
        char w[400];
        snprintf(w, sizeof(w), "could not be started (QMP cont: %s)", err ? err : "?");
        if (s->mode == SNAP_RESTORE)
            restore_failed(s, w);
        else {
            fprintf(stderr,
                    "gondolin: QEMU failed after saving a booted snapshot (%s); booting "
                    "again\n",
                    err ? err : "?");
            gd__vm_restart(s->vm);
        }
        return;
    }
    DBG("cont answered");
    send_resume(s);
}

static void run_guest(struct gd__bootsnap *s)
{
    gd_qmp *q = gd__vm_qmp(s->vm);
    s->phase = PH_CONT;
    if (!q || gd_qmp_cmd(q, "cont", NULL, -1, on_cont, s)) {
        if (s->mode == SNAP_RESTORE)
            restore_failed(s, "could not be started (QMP)");
        else
            gd__vm_restart(s->vm);
    }
}

#define POSTMIGRATE_TRIES 500

static void after_migration(void *ud, int status)
{
    struct gd__bootsnap *s = ud;
    if (!status) {
        run_guest(s);
        return;
    }
    fprintf(stderr, "gondolin: QEMU did not leave the migration state after saving a booted "
                    "snapshot; booting again\n");
    gd__vm_restart(s->vm);
}

static void wait_postmigrate(struct gd__bootsnap *s)
{
    gd_qmp *q = gd__vm_qmp(s->vm);
    if (!q || gd_qmp_after_migration(q, POSTMIGRATE_TRIES, after_migration, s))
        gd__vm_restart(s->vm);
}

/* ---- restore: feed the stream ---- */

/* The stream's checksum, computed on libuv's thread pool from the file while the loop
 * feeds QEMU: the two run on two cores, and the guest still runs only when both are
 * done and the checksum matched. s is NULL once the restore no longer wants the answer
 * (stopped, failed, freed); the job frees itself. */
struct hash_job {
    uv_work_t req;
    struct gd__bootsnap *s;
    int fd;
    uint64_t off, len;
    uint8_t want[32];
    int ok; /* 1: matches, 0: does not, -1: unreadable */
};

static void hash_work(uv_work_t *w)
{
    struct hash_job *j = w->data;
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    uint8_t *buf = malloc(CHUNK), md[32];
    unsigned int n = 32;
    j->ok = -1;
    if (c && buf && EVP_DigestInit_ex(c, EVP_sha256(), NULL)) {
        uint64_t done = 0;
        while (done < j->len) {
            size_t want = j->len - done < CHUNK ? (size_t)(j->len - done) : CHUNK;
            ssize_t r = pread(j->fd, buf, want, (off_t)(j->off + done));
            if (r <= 0)
                break;
            EVP_DigestUpdate(c, buf, (size_t)r);
            done += (uint64_t)r;
        }
        if (done == j->len && EVP_DigestFinal_ex(c, md, &n))
            j->ok = !memcmp(md, j->want, 32);
    }
    EVP_MD_CTX_free(c);
    free(buf);
}

static void maybe_run(struct gd__bootsnap *s);

static void hash_after(uv_work_t *w, int status)
{
    struct hash_job *j = w->data;
    struct gd__bootsnap *s = j->s;
    close(j->fd);
    int ok = status ? -1 : j->ok;
    free(j);
    if (!s)
        return;
    s->hash_job = NULL;
    DBG("checksum %s", ok == 1 ? "matches" : "differs");
    if (ok != 1) {
        restore_failed(s, ok ? "could not be read" : "failed its checksum (corrupted)");
        return;
    }
    s->hash_ok = 1;
    maybe_run(s);
}

static void hash_detach(struct gd__bootsnap *s)
{
    if (s->hash_job)
        s->hash_job->s = NULL;
    s->hash_job = NULL;
}

static int hash_start(struct gd__bootsnap *s)
{
    struct hash_job *j = calloc(1, sizeof(*j));
    if (!j || (j->fd = dup(s->file_fd)) < 0) {
        free(j);
        return -1;
    }
    j->s = s;
    j->off = s->stream_off;
    j->len = s->hdr.stream_len;
    memcpy(j->want, s->hdr.sha256, 32);
    j->req.data = j;
    if (uv_queue_work(gd__vm_loop(s->vm), &j->req, hash_work, hash_after)) {
        close(j->fd);
        free(j);
        return -1;
    }
    s->hash_job = j;
    return 0;
}

/* Fed and verified: the stream may run (once QEMU has loaded it). */
static void maybe_run(struct gd__bootsnap *s)
{
    if (!s->fed_all || !s->hash_ok || s->fed_ok)
        return;
    s->fed_ok = 1;
    if (!s->resume)
        futimens(s->file_fd, NULL); /* used now: gc keeps what is used (snapshot.h) */
    if (s->loaded)
        run_guest(s);
}

static void feed_done(struct gd__bootsnap *s)
{
    DBG("fed %llu bytes", (unsigned long long)s->fed);
    gd__vm_close_handle(s->vm, (uv_handle_t *)&s->feed_poll, &s->feed_open);
    /* the fd goes with the handle's close: see gd__bootsnap_stop */
    s->fed_all = 1;
    maybe_run(s);
}

static void on_feed(uv_poll_t *h, int status, int events)
{
    (void)events;
    struct gd__bootsnap *s = h->data;
    if (status < 0) {
        restore_failed(s, "could not be fed to QEMU");
        return;
    }
    size_t budget = FEED_PER_CALLBACK;
    while (budget) {
        if (s->chunk_off == s->chunk_len) {
            if (s->fed == s->hdr.stream_len) {
                feed_done(s);
                return;
            }
            uint64_t left = s->hdr.stream_len - s->fed;
            size_t want = left < CHUNK ? (size_t)left : CHUNK;
            ssize_t r = pread(s->file_fd, s->chunk, want, (off_t)(s->stream_off + s->fed));
            if (r <= 0) {
                restore_failed(s, r == 0 ? "is truncated" : "could not be read");
                return;
            }
            s->fed += (uint64_t)r;
            s->chunk_len = (size_t)r;
            s->chunk_off = 0;
        }
        ssize_t w = send(s->feed_fd, s->chunk + s->chunk_off, s->chunk_len - s->chunk_off,
                         MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (w <= 0) {
            /* QEMU stopped reading: it failed to load (its exit says why) */
            gd__vm_close_handle(s->vm, (uv_handle_t *)&s->feed_poll, &s->feed_open);
            return;
        }
        s->chunk_off += (size_t)w;
        budget = (size_t)w > budget ? 0 : budget - (size_t)w;
    }
}

static void on_restore_step(gd_qmp *q, int status, const cJSON *ret, const char *err, void *ud)
{
    (void)q;
    (void)ret;
    struct gd__bootsnap *s = ud;
    if (status == -ECANCELED || !status)
        return;
    char w[400];
    snprintf(w, sizeof(w), "could not be loaded (QMP: %s)", err ? err : "channel closed");
    restore_failed(s, w);
}

void gd__bootsnap_launched(struct gd__bootsnap *s)
{
    if (!s || s->mode != SNAP_RESTORE)
        return;
    if (uv_poll_init(gd__vm_loop(s->vm), &s->feed_poll, s->feed_fd)) {
        restore_failed(s, "could not be fed to QEMU");
        return;
    }
    s->feed_poll.data = s;
    s->feed_open = 1;
    uv_poll_start(&s->feed_poll, UV_WRITABLE, on_feed);
    if (hash_start(s)) {
        restore_failed(s, "could not be checked (out of memory)");
        return;
    }
    /* the source was paused, so the loaded VM stays paused: `cont` once QEMU says the
     * load completed (MIGRATION event) and the checksum matched, whichever comes last */
    cJSON *inc = cJSON_CreateObject();
    char uri[16];
    snprintf(uri, sizeof(uri), "fd:%d", GD__VM_INCOMING_FD);
    cJSON_AddStringToObject(inc, "uri", uri);
    gd_qmp *q = gd__vm_qmp(s->vm);
    if (!q ||
        gd_qmp_cmd(q, "migrate-set-capabilities", gd_qmp_events_on(), -1, on_restore_step, s) ||
        gd_qmp_cmd(q, "migrate-incoming", inc, -1, on_restore_step, s))
        restore_failed(s, "could not be loaded (QMP)");
}

void gd__bootsnap_stop(struct gd__bootsnap *s)
{
    if (!s)
        return;
    hash_detach(s);
    gd__vm_close_handle(s->vm, (uv_handle_t *)&s->feed_poll, &s->feed_open);
}

/* ---- save ---- */

/* Thread: hash the stream QEMU wrote, put the header in front, fsync, rename into
 * place. Readers only ever see complete files; a crash leaves a .tmp- file that the
 * next save (or gc) removes. */
static void *save_finish(void *arg)
{
    struct gd__bootsnap *s = arg;
    struct stat st;
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    uint8_t *buf = malloc(CHUNK);
    int ok = c && buf && fstat(s->tmp_fd, &st) == 0 && st.st_size > GD_BOOTSNAP_HDR_LEN &&
             EVP_DigestInit_ex(c, EVP_sha256(), NULL);
    uint64_t len = ok ? (uint64_t)st.st_size - GD_BOOTSNAP_HDR_LEN : 0;
    for (uint64_t off = 0; ok && off < len;) {
        ssize_t r = pread(s->tmp_fd, buf, CHUNK, (off_t)(GD_BOOTSNAP_HDR_LEN + off));
        if (r <= 0) {
            ok = 0;
            break;
        }
        EVP_DigestUpdate(c, buf, (size_t)r);
        off += (uint64_t)r;
    }
    unsigned int n = 32;
    if (ok) {
        EVP_DigestFinal_ex(c, s->save_hdr.sha256, &n);
        s->save_hdr.stream_len = len;
        gd_bootsnap_hdr_write(buf, &s->save_hdr);
        ok = pwrite(s->tmp_fd, buf, GD_BOOTSNAP_HDR_LEN, 0) == GD_BOOTSNAP_HDR_LEN &&
             fsync(s->tmp_fd) == 0;
    }
    if (ok && !s->tmp[0]) {
        /* an unnamed file (O_TMPFILE) gets its name only now, complete: a crash before
         * leaves nothing behind. EEXIST: a concurrent start saved the same snapshot. */
        char self[64];
        snprintf(self, sizeof(self), "/proc/self/fd/%d", s->tmp_fd);
        ok = linkat(AT_FDCWD, self, AT_FDCWD, s->path, AT_SYMLINK_FOLLOW) == 0 || errno == EEXIST;
    } else if (ok) {
        ok = rename(s->tmp, s->path) == 0;
    }
    if (ok) {
        int d = open(s->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (d >= 0) {
            fsync(d);
            close(d);
        }
        DBG("file complete: %llu bytes, %.0f ms after the guest was paused",
            (unsigned long long)(len + GD_BOOTSNAP_HDR_LEN),
            (double)(uv_hrtime() - s->t_save) / 1e6);
    } else if (s->tmp[0]) {
        unlink(s->tmp);
    }
    close(s->tmp_fd);
    s->tmp_fd = -1;
    free(buf);
    EVP_MD_CTX_free(c);
    return NULL;
}

static void save_abort(struct gd__bootsnap *s, const char *why)
{
    if (s->tmp_fd >= 0) {
        close(s->tmp_fd);
        s->tmp_fd = -1;
        if (s->tmp[0])
            unlink(s->tmp);
    }
    fprintf(stderr, "gondolin: could not save a booted snapshot: %s\n", why);
    s->mode = SNAP_BOOT;
    run_guest(s); /* cont (harmless if it never stopped), then RESUME */
}

static void on_save_step(gd_qmp *q, int status, const cJSON *ret, const char *err, void *ud)
{
    (void)q;
    (void)ret;
    struct gd__bootsnap *s = ud;
    if (status == -ECANCELED || s->mode != SNAP_SAVE || s->phase != PH_SAVING)
        return;
    if (status) {
        char w[400];
        snprintf(w, sizeof(w), "QMP: %s", err ? err : "channel closed");
        save_abort(s, w);
    }
}

void gd__bootsnap_on_event(struct gd__bootsnap *s, const char *name, const cJSON *data)
{
    if (!s || strcmp(name, "MIGRATION"))
        return;
    const char *st = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(data, "status"));
    if (!st)
        return;
    if (s->mode == SNAP_RESTORE && s->phase == PH_NONE) {
        DBG("incoming migration: %s", st);
        if (!strcmp(st, "failed"))
            restore_failed(s, "could not be loaded by QEMU");
        else if (!strcmp(st, "completed") && !s->loaded) {
            s->loaded = 1;
            if (s->fed_ok)
                run_guest(s);
        }
        return;
    }
    if (s->mode != SNAP_SAVE || s->phase != PH_SAVING)
        return;
    if (!strcmp(st, "failed") || !strcmp(st, "cancelled")) {
        save_abort(s, "QEMU's migration failed");
        return;
    }
    if (strcmp(st, "completed"))
        return;
    DBG("saved: guest paused %.0f ms for the stream", (double)(uv_hrtime() - s->t_save) / 1e6);
    struct gd_bootsnap_hdr *h = &s->save_hdr;
    memset(h, 0, sizeof(*h));
    memcpy(h->key, s->key, 32);
    h->created = (uint64_t)time(NULL);
    h->memory_mb = s->memory_mb;
    h->cpus = s->cpus;
    h->agent_minor = gd__vm_agent_minor(s->vm);
    snprintf(h->version, sizeof(h->version), "%s", GD_VERSION);
    snprintf(h->build_id, sizeof(h->build_id), "%s", s->build_id);
    snprintf(h->agent, sizeof(h->agent), "%s", gd_vm_agent(s->vm));
    if (pthread_create(&s->th, NULL, save_finish, s) == 0) {
        s->th_started = 1;
    } else {
        close(s->tmp_fd);
        s->tmp_fd = -1;
        if (s->tmp[0])
            unlink(s->tmp);
    }
    wait_postmigrate(s);
}

static void save_start(struct gd__bootsnap *s)
{
    gd_qmp *q = gd__vm_qmp(s->vm);
    if (!q) {
        s->mode = SNAP_BOOT;
        return;
    }
    int rc = gd_mkdir_p(s->dir, 0700);
    if (rc) {
        fprintf(stderr, "gondolin: could not save a booted snapshot: %s: %s\n", s->dir,
                strerror(-rc));
        s->mode = SNAP_BOOT;
        return;
    }
    gd__bootsnap_remove_stale(s->dir, NULL, 0);
    /* unnamed until complete; where the file system has no O_TMPFILE, a .tmp- name
     * that the next save or gc removes once its process is gone */
    s->tmp[0] = 0;
    s->tmp_fd = open(s->dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    if (s->tmp_fd < 0) {
        unsigned r = 0;
        RAND_bytes((unsigned char *)&r, sizeof(r));
        snprintf(s->tmp, sizeof(s->tmp), "%s/.tmp-%ld-%08x.gdsnap", s->dir, (long)getpid(), r);
        s->tmp_fd = open(s->tmp, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    }
    if (s->tmp_fd < 0 || lseek(s->tmp_fd, GD_BOOTSNAP_HDR_LEN, SEEK_SET) != GD_BOOTSNAP_HDR_LEN) {
        fprintf(stderr, "gondolin: could not save a booted snapshot: %s: %s\n", s->dir,
                strerror(errno));
        if (s->tmp_fd >= 0)
            close(s->tmp_fd);
        s->tmp_fd = -1;
        s->mode = SNAP_BOOT;
        return;
    }
    s->phase = PH_SAVING;
    s->t_save = uv_hrtime();
    /* the guest is idle at HELLO: stop it and save it */
    if (gd_qmp_save_to_fd(q, s->tmp_fd, "gdsnap", on_save_step, s))
        save_abort(s, "QMP channel");
}

/* The warm-up ran: what a first command needs (the shell, the dynamic loader and libc,
 * coreutils) is now in the guest's page cache, so a restored guest does not read it
 * through virtio-blk again. (QEMU's translated code cannot be saved: under TCG the
 * first command after a restore still pays for translating the paths it runs.) */
static void on_warm_exit(gd_exec *x, const struct gd_exec_result *r, void *ud)
{
    (void)x;
    struct gd__bootsnap *s = ud;
    if (r->error == GD_EXEC_VM_GONE || s->phase != PH_WARMUP)
        return;
    DBG("warm-up done (%d)", r->exit_code);
    gd__vm_hold_exec(s->vm, 0);
    save_start(s);
    if (s->mode != SNAP_SAVE)
        run_guest(s);
}

static void warm_up(struct gd__bootsnap *s)
{
    static const char *const argv[] = {"/bin/sh", "-c", "true; /usr/bin/env true; exit 0", NULL};
    struct gd_exec_opts o = {.argv = argv};
    struct gd_exec_cbs cbs = {.on_exit = on_warm_exit};
    s->phase = PH_WARMUP;
    gd__vm_hold_exec(s->vm, 1);
    if (gd_exec_start(s->vm, &o, &cbs, s, NULL)) {
        gd__vm_hold_exec(s->vm, 0);
        s->phase = PH_NONE;
        save_start(s);
    }
}

int gd__bootsnap_on_hello(struct gd__bootsnap *s)
{
    if (!s)
        return 0;
    DBG("HELLO in phase %d", (int)s->phase);
    if (s->phase == PH_RESUME_SENT) {
        s->phase = PH_DONE;
        return 0;
    }
    if (s->phase != PH_NONE)
        return 1; /* a HELLO while saving: the agent restarted? hold until resumed */
    if (s->mode == SNAP_SAVE) {
        if (gd__vm_agent_minor(s->vm) < 2) { /* no RESUME in this agent: no snapshot */
            s->mode = SNAP_BOOT;
            return 0;
        }
        warm_up(s);
        return s->mode == SNAP_SAVE;
    }
    if (s->mode == SNAP_RESTORE)
        return 1; /* the template's HELLO cannot come again; wait for RESUME's */
    return 0;
}
