/* cmd_image.c - `gondolin image ls | inspect | import | tag | rm | gc`. */
#define _GNU_SOURCE
#include "cli.h"

#include "image/image.h"
#include "image/store.h"
#include "vm/snapshot.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void image_usage(void)
{
    printf("usage: gondolin image <command>\n\n"
           "  ls [--json]                      refs and images in the store\n"
           "  inspect SELECTOR [--arch A]      the manifest of an image (path, ref or buildId)\n"
           "  import DIR [--tag NAME[:TAG]]    copy a built image into the store\n"
           "  tag SELECTOR NAME[:TAG] [--arch A]  point a ref at an image\n"
           "  rm NAME[:TAG] [--arch A]         remove a ref (the image stays until gc)\n"
           "  gc [--dry-run]                   remove images no ref points to, and booted\n"
           "                                   snapshots of removed images or other versions\n\n"
           "The store is GONDOLIN_IMAGE_STORE or ~/.cache/gondolin/images. Anywhere an image\n"
           "is chosen (--image, GONDOLIN_DEFAULT_IMAGE) a selector is a directory, a ref or a\n"
           "buildId (or a unique prefix of 8+ characters).\n");
}

/* The store's listing, then the booted snapshots (docs/snapshots.md): a section of
 * their own in text; in JSON, elements of the same array with "kind": "bootSnapshot". */
static int image_ls(int json)
{
    struct gd_err err = {{0}};
    if (!json) {
        if (gd_store_list(stdout, 0, &err))
            return cli_die(1, "image ls: %s", err.msg);
        gd_bootsnap_list(stdout);
        return 0;
    }
    char *text = NULL;
    size_t n = 0;
    FILE *m = open_memstream(&text, &n);
    if (!m)
        return cli_die(1, "image ls: out of memory");
    int rc = gd_store_list(m, 1, &err);
    fclose(m);
    cJSON *o = rc ? NULL : cJSON_Parse(text);
    free(text);
    if (rc)
        return cli_die(1, "image ls: %s", err.msg);
    if (!cJSON_IsArray(o)) {
        cJSON_Delete(o);
        return cli_die(1, "image ls: the store listing is not a JSON array");
    }
    cJSON *snaps = gd_bootsnap_list_json(), *e;
    while (snaps && (e = cJSON_DetachItemFromArray(snaps, 0)))
        cJSON_AddItemToArray(o, e);
    cJSON_Delete(snaps);
    char *out = cJSON_Print(o);
    cJSON_Delete(o);
    printf("%s\n", out ? out : "{}");
    free(out);
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
    int npos = 0, json = 0, dry = 0;
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--arch") && i + 1 < argc)
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
        return image_ls(json);
    if (!strcmp(sub, "gc")) {
        if (gd_store_gc(stdout, dry, &err))
            return cli_die(1, "image gc: %s", err.msg);
        return gd_bootsnap_gc(stdout, dry, &err) ? cli_die(1, "image gc: %s", err.msg) : 0;
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
