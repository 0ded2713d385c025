/* store.c - checkpoints in the image store: <store>/snapshots/NAME.gdsnap (see snap.h).
 * Hidden names (".tmp-PID-NAME") are writes in flight or left by a writer that died;
 * they are never listed, and gc removes them once their writer is gone. */
#define _GNU_SOURCE
#include "snap/snap.h"

#include "base/fs.h"
#include "base/text.h"
#include "image/image.h"
#include "image/store.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

void gd_snap_store_dir(char *buf, size_t cap)
{
    char store[1024];
    gd_store_dir(store, sizeof(store));
    snprintf(buf, cap, "%s/snapshots", store);
}

int gd_snap_name_ok(const char *s)
{
    return gd_name_ok(s, 63, "._-");
}

static int has_ext(const char *s)
{
    size_t l = strlen(s), e = strlen(GD_SNAP_EXT);
    return l > e && !strcmp(s + l - e, GD_SNAP_EXT);
}

int gd_snap_resolve(const char *sel, char *out, size_t cap, struct gd_err *err)
{
    if (!sel || !*sel)
        return gd_err_set(err, -EINVAL, "empty checkpoint name");
    if (strchr(sel, '/') || has_ext(sel)) {
        if (access(sel, R_OK))
            return gd_err_set(err, -ENOENT, "checkpoint %s: %s", sel, strerror(errno));
        snprintf(out, cap, "%s", sel);
        return 0;
    }
    char dir[1100];
    gd_snap_store_dir(dir, sizeof(dir));
    if (!gd_snap_name_ok(sel))
        return gd_err_set(err, -EINVAL, "'%s' is not a checkpoint name or path", sel);
    snprintf(out, cap, "%s/%s%s", dir, sel, GD_SNAP_EXT);
    if (access(out, R_OK))
        return gd_err_set(err, -ENOENT,
                          "no checkpoint named '%s' in %s (gondolin image ls lists them)", sel,
                          dir);
    return 0;
}

static int by_name(const void *a, const void *b)
{
    return strcmp(((const struct gd_snap_entry *)a)->name, ((const struct gd_snap_entry *)b)->name);
}

int gd_snap_list(struct gd_snap_entry **out, size_t *n)
{
    char dir[1100];
    gd_snap_store_dir(dir, sizeof(dir));
    *out = NULL;
    *n = 0;
    char **v;
    size_t nv;
    if (gd_dir_list(dir, &v, &nv))
        return 0; /* no snapshots directory yet */
    int rc = 0;
    for (size_t i = 0; i < nv; i++) {
        if (v[i][0] == '.' || !has_ext(v[i]))
            continue;
        struct gd_snap_entry *q = realloc(*out, (*n + 1) * sizeof(*q));
        if (!q) {
            rc = -ENOMEM;
            break;
        }
        *out = q;
        struct gd_snap_entry *e = &q[*n];
        memset(e, 0, sizeof(*e));
        snprintf(e->name, sizeof(e->name), "%.*s", (int)(strlen(v[i]) - strlen(GD_SNAP_EXT)), v[i]);
        snprintf(e->path, sizeof(e->path), "%s/%s", dir, v[i]);
        struct stat st;
        if (lstat(e->path, &st) || !S_ISREG(st.st_mode))
            continue;
        e->size = (uint64_t)st.st_blocks * 512;
        struct gd_snap_trailer t;
        struct gd_err err = {{0}};
        e->ok = gd_snap_read(e->path, &t, &e->meta, &err) == 0;
        if (!e->ok)
            snprintf(e->error, sizeof(e->error), "%s", err.msg);
        ++*n;
    }
    gd_dir_list_free(v, nv);
    if (*n)
        qsort(*out, *n, sizeof(**out), by_name);
    return rc;
}

int gd_snap_rm(const char *name, struct gd_err *err)
{
    char dir[1100], p[1300];
    gd_snap_store_dir(dir, sizeof(dir));
    if (!gd_snap_name_ok(name))
        return gd_err_set(err, -EINVAL, "'%s' is not a checkpoint name", name);
    snprintf(p, sizeof(p), "%s/%s%s", dir, name, GD_SNAP_EXT);
    if (unlink(p))
        return gd_err_set(err, -errno, "no checkpoint named '%s' in %s", name, dir);
    return 0;
}

/* Whether pid runs (a zombie does not: nobody may ever reap it in a container). */
static int running(long pid)
{
    char p[64], buf[512];
    if (pid <= 0 || (kill((pid_t)pid, 0) && errno != EPERM))
        return 0;
    snprintf(p, sizeof(p), "/proc/%ld/stat", pid);
    FILE *f = fopen(p, "r");
    if (!f)
        return 1;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = 0;
    const char *e = strrchr(buf, ')');
    return !(e && e[1] == ' ' && (e[2] == 'Z' || e[2] == 'X'));
}

/* ".tmp-PID-..." of a process that still runs. */
static int writer_alive(const char *name)
{
    return running(strtol(name + 5, NULL, 10));
}

static void state_root(char *buf, size_t cap)
{
    char c[1024];
    gd_cache_dir(c, sizeof(c));
    snprintf(buf, cap, "%s/state", c);
}

int gd_snap_state_new(char *out, size_t cap, struct gd_err *err)
{
    char root[1100];
    state_root(root, sizeof(root));
    int rc = gd_mkdir_p(root, 0700);
    if (rc)
        return gd_err_set(err, rc, "cannot create %s: %s", root, strerror(-rc));
    snprintf(out, cap, "%s/%ld-XXXXXX", root, (long)getpid());
    if (!mkdtemp(out))
        return gd_err_set(err, -errno, "cannot create a directory in %s: %s", root,
                          strerror(errno));
    return 0;
}

/* State directories of sandboxes whose process is gone. */
static int gc_state(FILE *out, int dry_run)
{
    char root[1100];
    state_root(root, sizeof(root));
    char **v;
    size_t nv;
    int removed = 0;
    if (gd_dir_list(root, &v, &nv))
        return 0;
    for (size_t i = 0; i < nv; i++) {
        long pid = strtol(v[i], NULL, 10);
        if (pid <= 0 || running(pid))
            continue;
        char p[1300];
        snprintf(p, sizeof(p), "%s/%s", root, v[i]);
        fprintf(out, "%s disk state %s (its sandbox is gone)\n",
                dry_run ? "would remove" : "removed", p);
        if (!dry_run)
            gd_rm_rf(p);
        removed++;
    }
    gd_dir_list_free(v, nv);
    return removed;
}

int gd_snap_gc(FILE *out, int dry_run, int (*image_exists)(const char *build_id, void *ud),
               void *ud)
{
    char dir[1100];
    gd_snap_store_dir(dir, sizeof(dir));
    char **v;
    size_t nv;
    int removed = gc_state(out, dry_run);
    if (gd_dir_list(dir, &v, &nv))
        return removed;
    for (size_t i = 0; i < nv; i++) {
        char p[1300], why[300] = "";
        snprintf(p, sizeof(p), "%s/%s", dir, v[i]);
        if (!strncmp(v[i], ".tmp-", 5)) {
            if (writer_alive(v[i]))
                continue;
            snprintf(why, sizeof(why), "an interrupted write");
        } else if (has_ext(v[i])) {
            struct gd_snap_trailer t;
            struct gd_snap_meta m;
            struct gd_err err = {{0}};
            if (gd_snap_read(p, &t, &m, &err))
                snprintf(why, sizeof(why), "unreadable: %s", err.msg);
            else if (!image_exists(m.build_id, ud))
                snprintf(why, sizeof(why), "its image (buildId %.12s) is gone", m.build_id);
        }
        if (!why[0])
            continue;
        struct stat st;
        double mb = lstat(p, &st) == 0 ? (double)st.st_blocks * 512 / 1e6 : 0;
        fprintf(out, "%s snapshot %s (%.1f MB): %s\n", dry_run ? "would remove" : "removed", v[i],
                mb, why);
        if (!dry_run)
            unlink(p);
        removed++;
    }
    gd_dir_list_free(v, nv);
    return removed;
}
