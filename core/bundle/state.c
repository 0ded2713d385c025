/* state.c - rollback protection: the highest revision accepted per (bundle name,
 * signer key id), in a small JSON file that is locked while read and replaced
 * atomically. {"NAME": {"KEYID": REVISION, ...}, ...} */
#define _GNU_SOURCE
#include "bundle.h"

#include "base/fs.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int state_load(const char *path, cJSON **out, struct gd_err *err)
{
    char *text;
    size_t n;
    int rc = gd_read_file(path, 4u << 20, &text, &n);
    if (rc == -ENOENT) {
        *out = cJSON_CreateObject();
        return *out ? 0 : gd_err_set(err, -ENOMEM, "out of memory");
    }
    if (rc)
        return gd_err_set(err, rc, "cannot read %s: %s", path, strerror(-rc));
    *out = cJSON_Parse(text);
    free(text);
    if (!cJSON_IsObject(*out)) {
        cJSON_Delete(*out);
        return gd_err_set(err, -EBADMSG, "%s is not a JSON object; fix or remove it", path);
    }
    return 0;
}

int gd_bundle_state_check(const char *path, const gd_bundle *b, int allow_downgrade,
                          struct gd_err *err)
{
    const struct gd_bundle_info *in = gd_bundle_info(b);
    char dir[4200], lock[4300];
    snprintf(dir, sizeof(dir), "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash && slash != dir) {
        *slash = 0;
        int r = gd_mkdir_p(dir, 0700);
        if (r)
            return gd_err_set(err, r, "cannot create %s: %s", dir, strerror(-r));
    }
    snprintf(lock, sizeof(lock), "%s.lock", path);
    int lfd = gd_lock_open(lock);
    if (lfd < 0)
        return gd_err_set(err, lfd, "cannot lock %s: %s", lock, strerror(-lfd));
    cJSON *st = NULL;
    int rc = state_load(path, &st, err);
    if (rc)
        goto out;
    cJSON *per = cJSON_GetObjectItemCaseSensitive(st, in->name);
    if (!cJSON_IsObject(per)) {
        cJSON_DeleteItemFromObjectCaseSensitive(st, in->name);
        cJSON_AddItemToObject(st, in->name, per = cJSON_CreateObject());
    }
    int changed = 0;
    for (size_t i = 0; i < in->nsigners; i++) {
        const struct gd_bundle_signer *s = &in->signers[i];
        if (!s->trusted)
            continue;
        cJSON *x = cJSON_GetObjectItemCaseSensitive(per, s->key_id);
        long long seen = cJSON_IsNumber(x) ? (long long)x->valuedouble : -1;
        if (seen > in->revision && !allow_downgrade) {
            rc = gd_err_set(err, -ESTALE,
                            "bundle %s revision %lld is older than revision %lld already "
                            "accepted from key %.16s (--allow-downgrade to accept it)",
                            in->name, in->revision, seen, s->key_id);
            goto out;
        }
        if (seen == in->revision)
            continue;
        /* a permitted downgrade lowers the mark: the older revision is now the one run */
        cJSON_DeleteItemFromObjectCaseSensitive(per, s->key_id);
        cJSON_AddNumberToObject(per, s->key_id, (double)in->revision);
        changed = 1;
    }
    if (changed) {
        char *text = cJSON_Print(st);
        if (!text) {
            rc = gd_err_set(err, -ENOMEM, "out of memory");
            goto out;
        }
        rc = gd_bundle_write_atomic(path, text, strlen(text), 0600, err);
        free(text);
    }
out:
    cJSON_Delete(st);
    close(lfd);
    return rc;
}
