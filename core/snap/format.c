/* format.c - the checkpoint trailer, its metadata JSON and the qcow2 header checks
 * (see snap.h). Everything here reads bytes from files that may have been damaged or
 * made by someone else: every length is checked before it is used. */
#define _GNU_SOURCE
#include "snap/snap.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const uint8_t MAGIC[8] = {'G', 'D', 'C', 'K', 'P', 'T', '\r', '\n'};
static const uint8_t MAGIC_END[8] = {'G', 'D', 'C', 'K', 'P', 'T', 'n', 'd'};

static uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t le64(const uint8_t *p)
{
    return (uint64_t)le32(p) | (uint64_t)le32(p + 4) << 32;
}

static void put_le(uint8_t *p, uint64_t v, int n)
{
    for (int i = 0; i < n; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

static uint64_t be64(const uint8_t *p)
{
    return (uint64_t)be32(p) << 32 | be32(p + 4);
}

int gd_snap_trailer_parse(const uint8_t *p, size_t n, uint64_t file_size, struct gd_snap_trailer *t,
                          const char **why)
{
    static const uint8_t zero[32];
    if (n != GD_SNAP_TRAILER_LEN || file_size < GD_SNAP_TRAILER_LEN)
        return *why = "too short to be a checkpoint", -EINVAL;
    if (memcmp(p, MAGIC, 8) || memcmp(p + 120, MAGIC_END, 8))
        return *why = "not a gondolin checkpoint (no trailer)", -EINVAL;
    t->version = le32(p + 8);
    t->meta_len = le32(p + 12);
    t->qcow2_len = le64(p + 16);
    memcpy(t->qcow2_sha, p + 24, 32);
    memcpy(t->meta_sha, p + 56, 32);
    t->mem_len = le64(p + 88);
    if (t->version != GD_SNAP_FORMAT && t->version != GD_SNAP_FORMAT_MEMORY)
        return *why = "a checkpoint format this gondolin does not know", -EINVAL;
    if (memcmp(p + 96, zero, 24) || (t->version == GD_SNAP_FORMAT && t->mem_len))
        return *why = "reserved trailer bytes are not zero", -EINVAL;
    if (t->meta_len == 0 || t->meta_len > GD_SNAP_MAX_META)
        return *why = "metadata length out of range", -EINVAL;
    if (t->version == GD_SNAP_FORMAT_MEMORY) {
        if (t->mem_len == 0 || t->mem_len > GD_SNAP_MAX_MEMORY)
            return *why = "memory length out of range", -EINVAL;
        if (t->qcow2_len % GD_SNAP_ALIGN)
            return *why = "disk length is not a multiple of 4096", -EINVAL;
    } else if (t->qcow2_len == 0 || t->qcow2_len % GD_SNAP_ALIGN) {
        return *why = "disk length is not a positive multiple of 4096", -EINVAL;
    }
    /* sizes add up exactly, without overflow (mem_len is bounded above) */
    uint64_t rest = file_size - GD_SNAP_TRAILER_LEN;
    if (t->meta_len > rest || t->mem_len > rest - t->meta_len ||
        t->qcow2_len != rest - t->meta_len - t->mem_len)
        return *why = "lengths do not add up to the file's size (truncated or extended)", -EINVAL;
    return 0;
}

void gd_snap_trailer_write(uint8_t out[128], const struct gd_snap_trailer *t)
{
    memset(out, 0, GD_SNAP_TRAILER_LEN);
    memcpy(out, MAGIC, 8);
    put_le(out + 8, t->version, 4);
    put_le(out + 12, t->meta_len, 4);
    put_le(out + 16, t->qcow2_len, 8);
    memcpy(out + 24, t->qcow2_sha, 32);
    memcpy(out + 56, t->meta_sha, 32);
    put_le(out + 88, t->mem_len, 8);
    memcpy(out + 120, MAGIC_END, 8);
}

/* o[k] as a string of at most cap-1 bytes; required: absent is an error too. */
static int get_str(const cJSON *o, const char *k, char *out, size_t cap, int required, char *why,
                   size_t wcap)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    out[0] = 0;
    if (!v || cJSON_IsNull(v)) {
        if (required)
            snprintf(why, wcap, "metadata: \"%s\" is missing", k);
        return required ? -EBADMSG : 0;
    }
    if (!cJSON_IsString(v) || !v->valuestring || strlen(v->valuestring) >= cap) {
        snprintf(why, wcap, "metadata: \"%s\" is not a string of at most %zu bytes", k, cap - 1);
        return -EBADMSG;
    }
    snprintf(out, cap, "%s", v->valuestring);
    return 0;
}

static int get_num(const cJSON *o, const char *k, double min, double max, double *out, char *why,
                   size_t wcap)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    if (!v) {
        *out = 0;
        return 0;
    }
    if (!cJSON_IsNumber(v) || v->valuedouble < min || v->valuedouble > max ||
        v->valuedouble != (double)(long long)v->valuedouble) {
        snprintf(why, wcap, "metadata: \"%s\" is not a whole number in range", k);
        return -EBADMSG;
    }
    *out = v->valuedouble;
    return 0;
}

static int hex_ok(const char *s, size_t min)
{
    size_t l = strlen(s);
    if (l < min)
        return 0;
    for (; *s; s++)
        if (!((*s >= '0' && *s <= '9') || (*s >= 'a' && *s <= 'f') || *s == '-'))
            return 0;
    return 1;
}

static int parse_mounts(const cJSON *a, struct gd_snap_meta *m, char *why, size_t cap)
{
    if (!a || cJSON_IsNull(a))
        return 0;
    if (!cJSON_IsArray(a) || cJSON_GetArraySize(a) > GD_SNAP_MAX_MOUNTS) {
        snprintf(why, cap, "metadata: \"mounts\" is not an array of at most %d",
                 GD_SNAP_MAX_MOUNTS);
        return -EBADMSG;
    }
    const cJSON *e;
    cJSON_ArrayForEach(e, a)
    {
        struct gd_snap_mount *x = &m->mounts[m->nmounts];
        double size;
        if (!cJSON_IsObject(e)) {
            snprintf(why, cap, "metadata: a mount is not an object");
            return -EBADMSG;
        }
        if (get_str(e, "kind", x->kind, sizeof(x->kind), 1, why, cap) ||
            get_str(e, "guest", x->guest, sizeof(x->guest), 1, why, cap) ||
            get_str(e, "host", x->host, sizeof(x->host), 0, why, cap) ||
            get_num(e, "size", 0, 9007199254740992.0, &size, why, cap))
            return -EBADMSG;
        if (strcmp(x->kind, "hostfs") && strcmp(x->kind, "overlay") && strcmp(x->kind, "memory")) {
            snprintf(why, cap, "metadata: unknown mount kind");
            return -EBADMSG;
        }
        if (x->guest[0] != '/' || (strcmp(x->kind, "memory") && x->host[0] != '/')) {
            snprintf(why, cap, "metadata: a mount path is not absolute");
            return -EBADMSG;
        }
        x->readonly = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(e, "readonly"));
        x->size = (uint64_t)size;
        m->nmounts++;
    }
    return 0;
}

/* 64 lowercase hex digits -> 32 bytes */
static int hex32(const char *s, uint8_t out[32])
{
    if (strlen(s) != 64)
        return -1;
    for (int i = 0; i < 64; i++) {
        int c = s[i], v = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (v < 0)
            return -1;
        if (i % 2)
            out[i / 2] = (uint8_t)(out[i / 2] | v);
        else
            out[i / 2] = (uint8_t)(v << 4);
    }
    return 0;
}

static int parse_memory(const cJSON *o, struct gd_snap_meta *m, char *why, size_t cap)
{
    char sha[72], shape[72];
    double minor;
    if (!cJSON_IsObject(o)) {
        snprintf(why, cap, "metadata: \"memory\" is missing");
        return -EBADMSG;
    }
    if (get_str(o, "sha256", sha, sizeof(sha), 1, why, cap) ||
        get_str(o, "shape", shape, sizeof(shape), 1, why, cap) ||
        get_str(o, "rootfs", m->rootfs, sizeof(m->rootfs), 1, why, cap) ||
        get_num(o, "agentMinor", 0, 65535, &minor, why, cap))
        return -EBADMSG;
    if (hex32(sha, m->mem_sha) || hex32(shape, m->shape)) {
        snprintf(why, cap, "metadata: a memory checksum is not 64 hex digits");
        return -EBADMSG;
    }
    if (strcmp(m->rootfs, "memory") && strcmp(m->rootfs, "readonly") && strcmp(m->rootfs, "cow")) {
        snprintf(why, cap, "metadata: unknown memory snapshot rootfs");
        return -EBADMSG;
    }
    m->agent_minor = (unsigned)minor;
    m->memory = 1;
    return 0;
}

int gd_snap_meta_parse(const void *p, size_t n, struct gd_snap_meta *m, char *why, size_t cap)
{
    memset(m, 0, sizeof(*m));
    why[0] = 0;
    cJSON *o = cJSON_ParseWithLength(p, n);
    int rc = -EBADMSG;
    double v;
    if (!o || !cJSON_IsObject(o)) {
        snprintf(why, cap, "metadata is not a JSON object");
        goto out;
    }
    if (get_num(o, "format", 1, 1000, &v, why, cap))
        goto out;
    m->format = (int)v;
    if (m->format != GD_SNAP_FORMAT && m->format != GD_SNAP_FORMAT_MEMORY) {
        snprintf(why, cap, "metadata: format %d is not %d or %d", m->format, GD_SNAP_FORMAT,
                 GD_SNAP_FORMAT_MEMORY);
        goto out;
    }
    if (get_str(o, "gondolin", m->gondolin, sizeof(m->gondolin), 1, why, cap) ||
        get_str(o, "buildId", m->build_id, sizeof(m->build_id), 1, why, cap) ||
        get_str(o, "arch", m->arch, sizeof(m->arch), 1, why, cap) ||
        get_str(o, "image", m->image, sizeof(m->image), 0, why, cap) ||
        get_str(o, "name", m->name, sizeof(m->name), 0, why, cap) ||
        get_str(o, "session", m->session, sizeof(m->session), 0, why, cap))
        goto out;
    if (!hex_ok(m->build_id, 8)) {
        snprintf(why, cap, "metadata: \"buildId\" is not a build id");
        goto out;
    }
    if (get_num(o, "created", 0, 1e13, &v, why, cap))
        goto out;
    m->created = (long long)v;
    if (get_num(o, "diskSize", 0, 9007199254740992.0, &v, why, cap))
        goto out;
    m->disk_size = (uint64_t)v;
    if (get_num(o, "memoryMb", 0, 1024 * 1024, &v, why, cap))
        goto out;
    m->memory_mb = (unsigned)v;
    if (get_num(o, "cpus", 0, 64, &v, why, cap))
        goto out;
    m->cpus = (unsigned)v;
    if (parse_mounts(cJSON_GetObjectItemCaseSensitive(o, "mounts"), m, why, cap))
        goto out;
    if (m->format == GD_SNAP_FORMAT_MEMORY &&
        parse_memory(cJSON_GetObjectItemCaseSensitive(o, "memory"), m, why, cap))
        goto out;
    rc = 0;
out:
    cJSON_Delete(o);
    return rc;
}

char *gd_snap_meta_encode(const struct gd_snap_meta *m)
{
    cJSON *o = cJSON_CreateObject();
    if (!o)
        return NULL;
    cJSON_AddNumberToObject(o, "format", m->format ? m->format : GD_SNAP_FORMAT);
    cJSON_AddStringToObject(o, "gondolin", m->gondolin);
    cJSON_AddStringToObject(o, "buildId", m->build_id);
    cJSON_AddStringToObject(o, "arch", m->arch);
    cJSON_AddStringToObject(o, "image", m->image);
    if (m->name[0])
        cJSON_AddStringToObject(o, "name", m->name);
    if (m->session[0])
        cJSON_AddStringToObject(o, "session", m->session);
    cJSON_AddNumberToObject(o, "created", (double)m->created);
    cJSON_AddNumberToObject(o, "diskSize", (double)m->disk_size);
    cJSON_AddNumberToObject(o, "memoryMb", m->memory_mb);
    cJSON_AddNumberToObject(o, "cpus", m->cpus);
    cJSON *a = cJSON_AddArrayToObject(o, "mounts");
    for (size_t i = 0; a && i < m->nmounts && i < GD_SNAP_MAX_MOUNTS; i++) {
        cJSON *e = cJSON_CreateObject();
        cJSON_AddStringToObject(e, "kind", m->mounts[i].kind);
        cJSON_AddStringToObject(e, "guest", m->mounts[i].guest);
        if (m->mounts[i].host[0])
            cJSON_AddStringToObject(e, "host", m->mounts[i].host);
        cJSON_AddBoolToObject(e, "readonly", m->mounts[i].readonly);
        cJSON_AddNumberToObject(e, "size", (double)m->mounts[i].size);
        cJSON_AddItemToArray(a, e);
    }
    if (m->memory) {
        char sha[65], shape[65];
        for (int i = 0; i < 32; i++) {
            snprintf(sha + 2 * i, 3, "%02x", m->mem_sha[i]);
            snprintf(shape + 2 * i, 3, "%02x", m->shape[i]);
        }
        cJSON *mo = cJSON_AddObjectToObject(o, "memory");
        cJSON_AddStringToObject(mo, "sha256", sha);
        cJSON_AddStringToObject(mo, "shape", shape);
        cJSON_AddStringToObject(mo, "rootfs", m->rootfs);
        cJSON_AddNumberToObject(mo, "agentMinor", m->agent_minor);
    }
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return s;
}

int gd_snap_qcow2_check(const uint8_t *p, size_t n, uint64_t len, uint64_t *virtual_size,
                        const char **why)
{
    if (n < 72)
        return *why = "the disk part is too short for a qcow2 header", -EINVAL;
    if (memcmp(p, "QFI\xfb", 4))
        return *why = "the disk part is not a qcow2 image", -EINVAL;
    uint32_t version = be32(p + 4);
    if (version != 2 && version != 3)
        return *why = "the disk part is a qcow2 version this gondolin does not use", -EINVAL;
    uint32_t cluster_bits = be32(p + 20);
    if (cluster_bits < 9 || cluster_bits > 21)
        return *why = "the disk part has an invalid qcow2 cluster size", -EINVAL;
    if (be32(p + 32) != 0)
        return *why = "the disk part is encrypted", -EINVAL;
    uint64_t size = be64(p + 24);
    if (size == 0 || size > (1ull << 50) || size % 512)
        return *why = "the disk part has an invalid virtual size", -EINVAL;
    uint64_t l1 = be64(p + 40), rt = be64(p + 48);
    if (l1 >= len || rt >= len)
        return *why = "the disk part's tables lie beyond its end", -EINVAL;
    if (version == 3) {
        if (n < 104)
            return *why = "the disk part is too short for a qcow2 v3 header", -EINVAL;
        uint64_t incompat = be64(p + 72);
        /* bit 0 dirty (lazy refcounts), 3 compression type, 4 extended L2 are fine
         * for a read-only backing node; 1 (corrupt), 2 (an external data file: a
         * path QEMU would open on the host) and unknown bits are refused */
        if (incompat & (1ull << 1))
            return *why = "the disk part is marked corrupt", -EINVAL;
        if (incompat & (1ull << 2))
            return *why = "the disk part refers to an external data file", -EINVAL;
        if (incompat & ~((1ull << 0) | (1ull << 3) | (1ull << 4)))
            return *why = "the disk part uses an unknown qcow2 feature", -EINVAL;
    }
    *virtual_size = size;
    return 0;
}
