/* cmd_image.c - `gondolin image ls | inspect | import | tag | rm | gc`. */
#define _GNU_SOURCE
#include "cli.h"

#include "image/image.h"
#include "image/store.h"
#include "snap/snap.h"
#include "vm/snapshot.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void image_usage(void)
{
    printf("usage: gondolin image <command>\n\n"
           "  ls [--json]                      refs and images in the store\n"
           "  inspect SELECTOR [--arch A]      the manifest of an image (path, ref or buildId)\n"
           "  import DIR [--tag NAME[:TAG]]    copy a built image into the store\n"
           "  tag SELECTOR NAME[:TAG] [--arch A]  point a ref at an image\n"
           "  rm NAME[:TAG] [--arch A]         remove a ref (the image stays until gc)\n"
           "  gc [--dry-run]                   remove images no ref or checkpoint needs,\n"
           "                                   and checkpoints whose image is gone;\n"
           "                                   booted snapshots of removed images or\n"
           "                                   other versions\n"
           "  inspect --snapshot NAME|FILE     verify a disk checkpoint, print its metadata\n"
           "  rm --snapshot NAME               remove a disk checkpoint\n\n"
           "`ls` lists disk checkpoints (gondolin snapshot, docs/snapshots.md) too.\n"
           "The store is GONDOLIN_IMAGE_STORE or ~/.cache/gondolin/images. Anywhere an image\n"
           "is chosen (--image, GONDOLIN_DEFAULT_IMAGE) a selector is a directory, a ref or a\n"
           "buildId (or a unique prefix of 8+ characters).\n");
}

static void snap_json(cJSON *arr, const struct gd_snap_entry *e)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "snapshot", e->name);
    cJSON_AddStringToObject(o, "path", e->path);
    cJSON_AddNumberToObject(o, "size", (double)e->size);
    if (e->ok) {
        cJSON_AddStringToObject(o, "buildId", e->meta.build_id);
        cJSON_AddStringToObject(o, "image", e->meta.image);
        cJSON_AddNumberToObject(o, "created", (double)e->meta.created);
        cJSON_AddStringToObject(o, "gondolin", e->meta.gondolin);
        cJSON_AddBoolToObject(o, "memory", e->meta.memory);
    } else {
        cJSON_AddStringToObject(o, "error", e->error);
    }
    cJSON_AddItemToArray(arr, o);
}

/* The images' listing, then the checkpoints'. */
static int list(int json)
{
    struct gd_err err = {{0}};
    char *text = NULL;
    size_t tn = 0;
    FILE *f = json ? open_memstream(&text, &tn) : stdout;
    if (!f)
        return cli_die(1, "image ls: out of memory");
    int rc = gd_store_list(f, json, &err);
    if (json)
        fclose(f);
    if (rc) {
        free(text);
        return cli_die(1, "image ls: %s", err.msg);
    }
    struct gd_snap_entry *v;
    size_t n;
    gd_snap_list(&v, &n);
    if (json) {
        cJSON *arr = cJSON_Parse(text);
        free(text);
        if (!arr)
            arr = cJSON_CreateArray();
        for (size_t i = 0; i < n; i++)
            snap_json(arr, &v[i]);
        cJSON *boot = gd_bootsnap_list_json(), *e;
        while (boot && (e = cJSON_DetachItemFromArray(boot, 0)))
            cJSON_AddItemToArray(arr, e);
        cJSON_Delete(boot);
        char *out = cJSON_Print(arr);
        printf("%s\n", out ? out : "[]");
        free(out);
        cJSON_Delete(arr);
    } else if (n) {
        printf("\n%-32s %-6s %-12s %-20s %9s\n", "SNAPSHOT", "KIND", "IMAGE", "CREATED", "SIZE");
        for (size_t i = 0; i < n; i++) {
            char ts[32] = "?";
            if (v[i].ok) {
                time_t t = (time_t)v[i].meta.created;
                struct tm tm;
                strftime(ts, sizeof(ts), "%Y-%m-%d %H:%M:%S", localtime_r(&t, &tm));
            }
            printf("%-32s %-6s %-12.12s %-20s %7.1f MB%s%s\n", v[i].name,
                   !v[i].ok           ? "?"
                   : v[i].meta.memory ? "memory"
                                      : "disk",
                   v[i].ok ? v[i].meta.build_id : "?", ts, (double)v[i].size / 1e6,
                   v[i].ok ? "" : "  unreadable: ", v[i].ok ? "" : v[i].error);
        }
    }
    if (!json)
        gd_bootsnap_list(stdout);
    free(v);
    return 0;
}

/* Whether an image with this buildId is still here (the store, the default image). */
static int image_exists(const char *id, void *ud)
{
    (void)ud;
    char dir[1400];
    struct gd_err err = {{0}};
    const char *arches[] = {"x86_64", "aarch64"};
    for (int a = 0; a < 2; a++) {
        struct gd_image img;
        gd_store_default_dir(arches[a], dir, sizeof(dir));
        if (gd_image_load(dir, 0, &img, &err) == 0 && !strcmp(img.build_id, id))
            return 1;
    }
    return strlen(id) >= 8 && gd_store_resolve(id, gd_host_arch(), dir, sizeof(dir), &err) == 0;
}

static int gc(int dry)
{
    struct gd_err err = {{0}};
    gd_snap_gc(stdout, dry, image_exists, NULL);
    struct gd_snap_entry *v;
    size_t n;
    gd_snap_list(&v, &n);
    const char **keep = calloc(n + 1, sizeof(*keep)); /* images checkpoints still need */
    for (size_t i = 0, k = 0; keep && i < n; i++)
        if (v[i].ok)
            keep[k++] = v[i].meta.build_id;
    int rc = gd_store_gc(stdout, dry, keep, &err);
    free(keep);
    free(v);
    if (rc)
        return cli_die(1, "image gc: %s", err.msg);
    return gd_bootsnap_gc(stdout, dry, &err) ? cli_die(1, "image gc: %s", err.msg) : 0;
}

static int inspect_snapshot(const char *sel)
{
    char path[1200];
    struct gd_err err = {{0}};
    struct gd_snap_trailer t;
    struct gd_snap_meta m;
    if (gd_snap_resolve(sel, path, sizeof(path), &err) || gd_snap_verify(path, &t, &m, &err))
        return cli_die(1, "image inspect: %s", err.msg);
    char *meta = gd_snap_meta_encode(&m);
    cJSON *o = cJSON_CreateObject(), *mo = meta ? cJSON_Parse(meta) : NULL;
    free(meta);
    cJSON_AddStringToObject(o, "path", path);
    cJSON_AddBoolToObject(o, "verified", 1);
    cJSON_AddNumberToObject(o, "diskBytes", (double)t.qcow2_len);
    cJSON_AddNumberToObject(o, "memoryBytes", (double)t.mem_len);
    cJSON_AddItemToObject(o, "metadata", mo ? mo : cJSON_CreateNull());
    char *text = cJSON_Print(o);
    cJSON_Delete(o);
    printf("%s\n", text ? text : "{}");
    free(text);
    return 0;
}

int cmd_image(int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        image_usage();
        return argc < 2 ? 2 : 0;
    }
    const char *sub = argv[1];
    const char *arch = gd_host_arch(), *tag = NULL;
    const char *pos[3] = {NULL, NULL, NULL};
    int npos = 0, json = 0, dry = 0, snap = 0;
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--snapshot"))
            snap = 1;
        else if (!strcmp(argv[i], "--arch") && i + 1 < argc)
            arch = argv[++i];
        else if (!strcmp(argv[i], "--tag") && i + 1 < argc)
            tag = argv[++i];
        else if (!strcmp(argv[i], "--json"))
            json = 1;
        else if (!strcmp(argv[i], "--dry-run"))
            dry = 1;
        else if (argv[i][0] == '-' && argv[i][1])
            return cli_die(2, "image %s: unknown flag '%s'", sub, argv[i]);
        else if (npos < 3)
            pos[npos++] = argv[i];
        else
            return cli_die(2, "image %s: too many arguments", sub);
    }
    if (strcmp(arch, "x86_64") && strcmp(arch, "aarch64"))
        return cli_die(2, "image: --arch must be x86_64 or aarch64, not '%s'", arch);
    struct gd_err err = {{0}};
    if (!strcmp(sub, "ls") || !strcmp(sub, "list"))
        return list(json);
    if (!strcmp(sub, "gc"))
        return gc(dry);
    if (snap && !strcmp(sub, "inspect"))
        return npos == 1 ? inspect_snapshot(pos[0])
                         : cli_die(2, "usage: gondolin image inspect --snapshot NAME|FILE");
    if (snap && !strcmp(sub, "rm")) {
        if (npos != 1)
            return cli_die(2, "usage: gondolin image rm --snapshot NAME");
        return gd_snap_rm(pos[0], &err) ? cli_die(1, "image rm: %s", err.msg) : 0;
    }
    if (!strcmp(sub, "inspect")) {
        if (npos != 1)
            return cli_die(2, "usage: gondolin image inspect SELECTOR [--arch A]");
        char dir[1400], p[1500];
        if (gd_store_resolve(pos[0], arch, dir, sizeof(dir), &err))
            return cli_die(1, "image inspect: %s", err.msg);
        snprintf(p, sizeof(p), "%s/manifest.json", dir);
        char *buf;
        size_t n;
        int rc = gd_read_file(p, 1 << 20, &buf, &n);
        if (rc)
            return cli_die(1, "image inspect: cannot read %s: %s", p, strerror(-rc));
        cJSON *m = cJSON_Parse(buf);
        free(buf);
        if (!m)
            return cli_die(1, "image inspect: %s is not JSON", p);
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "path", dir);
        cJSON_AddItemToObject(o, "manifest", m);
        char *text = cJSON_Print(o);
        cJSON_Delete(o);
        printf("%s\n", text ? text : "{}");
        free(text);
        return 0;
    }
    if (!strcmp(sub, "import")) {
        if (npos != 1)
            return cli_die(2, "usage: gondolin image import DIR [--tag NAME[:TAG]]");
        char id[64];
        if (gd_store_import(pos[0], tag, id, &err))
            return cli_die(1, "image import: %s", err.msg);
        printf("%s%s%s\n", id, tag ? " " : "", tag ? tag : "");
        return 0;
    }
    if (!strcmp(sub, "tag")) {
        if (npos != 2)
            return cli_die(2, "usage: gondolin image tag SELECTOR NAME[:TAG] [--arch A]");
        if (gd_store_tag(pos[0], pos[1], arch, &err))
            return cli_die(1, "image tag: %s", err.msg);
        return 0;
    }
    if (!strcmp(sub, "rm")) {
        if (npos != 1)
            return cli_die(2, "usage: gondolin image rm NAME[:TAG] [--arch A]");
        if (gd_store_rm(pos[0], arch, &err))
            return cli_die(1, "image rm: %s", err.msg);
        return 0;
    }
    return cli_die(2, "image: unknown command '%s' (ls, inspect, import, tag, rm, gc)", sub);
}
