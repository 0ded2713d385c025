/* snapshot_file.c - booted snapshots on disk: the header (untrusted when read back),
 * the store directory, listing and gc (see snapshot.h). */
#define _GNU_SOURCE
#include "snapshot.h"

#include "base/fs.h"
#include "image/image.h"
#include "image/store.h"
#include "snapshot_int.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAGIC "GDSNAPB\x01"

/* ---- header ---- */

static void put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}
static void put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}
static uint32_t get32(const uint8_t *p)
{
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}
static uint64_t get64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

/* layout: magic 0, format 8, header length 12, key 16, stream length 48, sha256 56,
 * created 88, memory 96, cpus 100, agent minor 104, version 112 (32), buildId 144 (80),
 * agent 224 (64), zeros to 512 */
void gd_bootsnap_hdr_write(uint8_t *b, const struct gd_bootsnap_hdr *h)
{
    memset(b, 0, GD_BOOTSNAP_HDR_LEN);
    memcpy(b, MAGIC, 8);
    put32(b + 8, GD_BOOTSNAP_FORMAT);
    put32(b + 12, GD_BOOTSNAP_HDR_LEN);
    memcpy(b + 16, h->key, 32);
    put64(b + 48, h->stream_len);
    memcpy(b + 56, h->sha256, 32);
    put64(b + 88, h->created);
    put32(b + 96, h->memory_mb);
    put32(b + 100, h->cpus);
    put32(b + 104, h->agent_minor);
    snprintf((char *)b + 112, 32, "%s", h->version);
    snprintf((char *)b + 144, 80, "%s", h->build_id);
    snprintf((char *)b + 224, 64, "%s", h->agent);
}

/* A NUL-terminated field of printable ASCII, zero-filled after it, copied out. */
static int field(const uint8_t *p, size_t cap, char *out, size_t ocap)
{
    const uint8_t *nul = memchr(p, 0, cap);
    if (!nul || (size_t)(nul - p) >= ocap)
        return -1;
    for (const uint8_t *c = nul; c < p + cap; c++)
        if (*c)
            return -1;
    for (const uint8_t *c = p; c < nul; c++)
        if (*c < 0x20 || *c > 0x7e)
            return -1;
    memcpy(out, p, (size_t)(nul - p) + 1);
    return 0;
}

int gd_bootsnap_hdr_parse(const uint8_t *b, size_t len, struct gd_bootsnap_hdr *h)
{
    memset(h, 0, sizeof(*h));
    if (len < GD_BOOTSNAP_HDR_LEN || memcmp(b, MAGIC, 8) || get32(b + 8) != GD_BOOTSNAP_FORMAT ||
        get32(b + 12) != GD_BOOTSNAP_HDR_LEN)
        return -EBADMSG;
    memcpy(h->key, b + 16, 32);
    h->stream_len = get64(b + 48);
    memcpy(h->sha256, b + 56, 32);
    h->created = get64(b + 88);
    h->memory_mb = get32(b + 96);
    h->cpus = get32(b + 100);
    h->agent_minor = get32(b + 104);
    if (h->stream_len == 0 || h->stream_len > GD_BOOTSNAP_MAX_STREAM || get32(b + 108) != 0)
        return -EBADMSG; /* 108: reserved, zero */
    if (field(b + 112, 32, h->version, sizeof(h->version)) ||
        field(b + 144, 80, h->build_id, sizeof(h->build_id)) ||
        field(b + 224, 64, h->agent, sizeof(h->agent)))
        return -EBADMSG;
    for (size_t i = 288; i < GD_BOOTSNAP_HDR_LEN; i++)
        if (b[i])
            return -EBADMSG;
    return 0;
}

void gd_bootsnap_dir(char *buf, size_t cap)
{
    char store[1024];
    gd_store_dir(store, sizeof(store));
    snprintf(buf, cap, "%s/snapshots/boot", store);
}

static int pid_alive(long pid)
{
    return pid > 0 && (kill((pid_t)pid, 0) == 0 || errno == EPERM);
}

/* Leftovers of saves whose process is gone (SIGKILL, power loss). */
void gd__bootsnap_remove_stale(const char *dir, FILE *out, int dry_run)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d))) {
        long pid;
        if (strncmp(e->d_name, ".tmp-", 5) || sscanf(e->d_name + 5, "%ld-", &pid) != 1 ||
            pid_alive(pid))
            continue;
        if (out)
            fprintf(out, "%s %s/%s (interrupted save)\n", dry_run ? "would remove" : "removed", dir,
                    e->d_name);
        if (!dry_run)
            unlinkat(dirfd(d), e->d_name, 0);
    }
    closedir(d);
}

/* ---- store: list and gc ---- */

struct entry {
    char path[1400];
    struct gd_bootsnap_hdr h;
    long long size;
    long long used; /* mtime: written, or last restored */
    int valid;
};

/* Calls fn for every snapshot file (and leftovers, with valid 0). */
static void walk(void (*fn)(const struct entry *e, void *ud), void *ud)
{
    char base[1100];
    gd_bootsnap_dir(base, sizeof(base));
    char **ids;
    size_t nid;
    if (gd_dir_list(base, &ids, &nid))
        return;
    for (size_t i = 0; i < nid; i++) {
        char dir[1250];
        snprintf(dir, sizeof(dir), "%s/%s", base, ids[i]);
        char **files;
        size_t nf;
        if (gd_dir_list(dir, &files, &nf))
            continue;
        for (size_t j = 0; j < nf; j++) {
            struct entry e = {0};
            snprintf(e.path, sizeof(e.path), "%s/%s", dir, files[j]);
            size_t l = strlen(files[j]);
            if (files[j][0] == '.' || l < 7 || strcmp(files[j] + l - 7, ".gdsnap"))
                continue;
            int fd = open(e.path, O_RDONLY | O_CLOEXEC);
            uint8_t b[GD_BOOTSNAP_HDR_LEN];
            struct stat st;
            if (fd >= 0 && fstat(fd, &st) == 0) {
                e.size = (long long)st.st_size;
                e.used = (long long)st.st_mtime;
                e.valid = pread(fd, b, sizeof(b), 0) == (ssize_t)sizeof(b) &&
                          gd_bootsnap_hdr_parse(b, sizeof(b), &e.h) == 0 &&
                          (uint64_t)st.st_size == GD_BOOTSNAP_HDR_LEN + e.h.stream_len &&
                          !strcmp(e.h.build_id, ids[i]);
            }
            if (fd >= 0)
                close(fd);
            fn(&e, ud);
        }
        gd_dir_list_free(files, nf);
    }
    gd_dir_list_free(ids, nid);
}

static void print_one(const struct entry *e, void *ud)
{
    FILE *out = ((FILE **)ud)[0];
    int *n = (int *)((FILE **)ud)[1];
    if (!(*n)++)
        fprintf(out,
                "\nbooted snapshots (memory + devices after boot; restored by every start)\n"
                "  %-14s %-34s %10s %7s %5s  %s\n",
                "IMAGE", "KEY", "SIZE", "MEMORY", "CPUS", "VERSION");
    const char *slash = strrchr(e->path, '/');
    char key[40];
    snprintf(key, sizeof(key), "%.32s", slash ? slash + 1 : e->path);
    if (!e->valid) {
        fprintf(out, "  %-14s %-34s %7.1f MB  (unreadable: removed by gc)\n", "?", key,
                (double)e->size / 1e6);
        return;
    }
    fprintf(out, "  %-14.12s %-34s %7.1f MB %6uM %5u  %s%s\n", e->h.build_id, key,
            (double)e->size / 1e6, e->h.memory_mb, e->h.cpus, e->h.version,
            strcmp(e->h.version, GD_VERSION) ? " (other version: removed by gc)" : "");
}

void gd_bootsnap_list(FILE *out)
{
    int n = 0;
    void *ud[2] = {out, &n};
    walk(print_one, ud);
}

static void json_one(const struct entry *e, void *ud)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "kind", "bootSnapshot");
    cJSON_AddStringToObject(o, "path", e->path);
    cJSON_AddNumberToObject(o, "size", (double)e->size);
    cJSON_AddBoolToObject(o, "valid", e->valid);
    if (e->valid) {
        char key[65];
        gd_hex(e->h.key, 32, key);
        cJSON_AddStringToObject(o, "buildId", e->h.build_id);
        cJSON_AddStringToObject(o, "key", key);
        cJSON_AddNumberToObject(o, "memoryMb", e->h.memory_mb);
        cJSON_AddNumberToObject(o, "cpus", e->h.cpus);
        cJSON_AddStringToObject(o, "version", e->h.version);
        cJSON_AddNumberToObject(o, "created", (double)e->h.created);
    }
    cJSON_AddItemToArray((cJSON *)ud, o);
}

void *gd_bootsnap_list_json(void)
{
    cJSON *a = cJSON_CreateArray();
    if (a)
        walk(json_one, a);
    return a;
}

struct gc {
    FILE *out;
    int dry_run;
    char defaults[4][65]; /* buildIds of the default images */
    long long idle_before;
};

static int image_present(const struct gc *g, const char *id)
{
    for (int i = 0; i < 4; i++)
        if (g->defaults[i][0] && !strcmp(g->defaults[i], id))
            return 1;
    char store[1024], p[1200];
    gd_store_dir(store, sizeof(store));
    snprintf(p, sizeof(p), "%s/objects/%s/manifest.json", store, id);
    return access(p, F_OK) == 0;
}

static void gc_one(const struct entry *e, void *ud)
{
    struct gc *g = ud;
    const char *why = !e->valid                          ? "unreadable"
                      : strcmp(e->h.version, GD_VERSION) ? "another gondolin version"
                      : !image_present(g, e->h.build_id) ? "its image is gone"
                      : e->used < g->idle_before         ? "not used for " GD_BOOTSNAP_IDLE_TEXT
                                                         : NULL;
    if (!why)
        return;
    fprintf(g->out, "%s %s (%s)\n", g->dry_run ? "would remove" : "removed", e->path, why);
    if (!g->dry_run)
        unlink(e->path);
}

int gd_bootsnap_gc(FILE *out, int dry_run, struct gd_err *err)
{
    (void)err;
    /* another VM shape (memory, a kernel argument, the QEMU binary) is another key: the
     * files of shapes nobody starts any more go after a while */
    const char *e = getenv("GONDOLIN_BOOTSNAP_IDLE_SECONDS"); /* (tests) */
    long long idle = e && *e ? strtoll(e, NULL, 10) : GD_BOOTSNAP_IDLE_SECONDS;
    struct gc g = {.out = out, .dry_run = dry_run, .idle_before = (long long)time(NULL) - idle};
    static const char *const arches[] = {"x86_64", "aarch64"};
    for (int i = 0; i < 2; i++) {
        char dir[1100];
        struct gd_image img;
        gd_store_default_dir(arches[i], dir, sizeof(dir));
        if (gd_image_load(dir, 0, &img, NULL) == 0)
            snprintf(g.defaults[i], sizeof(g.defaults[i]), "%s", img.build_id);
    }
    walk(gc_one, &g);
    char base[1100];
    gd_bootsnap_dir(base, sizeof(base));
    char **ids;
    size_t nid;
    if (gd_dir_list(base, &ids, &nid) == 0) {
        for (size_t i = 0; i < nid; i++) {
            char dir[1250];
            snprintf(dir, sizeof(dir), "%s/%s", base, ids[i]);
            gd__bootsnap_remove_stale(dir, out, dry_run);
            if (!dry_run)
                rmdir(dir); /* only when empty */
        }
        gd_dir_list_free(ids, nid);
    }
    return 0;
}
