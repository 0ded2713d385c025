/* session.c - the sessions directory: ids, metadata files, lookup, stale entries. */
#define _GNU_SOURCE
#include "control.h"

#include "base/fs.h"
#include "base/text.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

int gd_session_dir(char *out, size_t cap)
{
    const char *rt = getenv("XDG_RUNTIME_DIR"), *cache = getenv("XDG_CACHE_HOME");
    const char *home = getenv("HOME");
    int n;
    if (rt && *rt)
        n = snprintf(out, cap, "%s/gondolin/sessions", rt);
    else if (cache && *cache)
        n = snprintf(out, cap, "%s/gondolin/sessions", cache);
    else if (home && *home)
        n = snprintf(out, cap, "%s/.cache/gondolin/sessions", home);
    else
        return -ENOENT;
    if (n < 0 || (size_t)n >= cap)
        return -ENAMETOOLONG;
    int rc = gd_mkdir_p(out, 0700);
    if (rc)
        return rc;
    struct stat st;
    if (lstat(out, &st))
        return -errno;
    if (!S_ISDIR(st.st_mode) || st.st_uid != geteuid())
        return -EPERM;
    if ((st.st_mode & 07777) != 0700 && chmod(out, 0700))
        return -errno;
    return 0;
}

int gd_session_uuid(char out[37])
{
    unsigned char b[16];
    size_t got = 0;
    while (got < sizeof(b)) {
        ssize_t k = getrandom(b + got, sizeof(b) - got, 0);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        got += (size_t)k;
    }
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x40); /* version 4 */
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80); /* RFC 4122 variant */
    static const char hx[] = "0123456789abcdef";
    size_t o = 0;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            out[o++] = '-';
        out[o++] = hx[b[i] >> 4];
        out[o++] = hx[b[i] & 15];
    }
    out[o] = 0;
    return 0;
}

static int is_uuid(const char *s)
{
    if (strlen(s) != 36)
        return 0;
    for (int i = 0; i < 36; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (s[i] != '-')
                return 0;
        } else if (!isdigit((unsigned char)s[i]) && (s[i] < 'a' || s[i] > 'f'))
            return 0;
    }
    return 1;
}

int gd_session_name_ok(const char *s)
{
    return gd_name_ok(s, 63, "._-");
}

/* The state (field 3) and start time (field 22) of /proc/PID/stat. */
static int proc_stat(long pid, char *state, unsigned long long *start)
{
    char p[64], buf[1024];
    snprintf(p, sizeof(p), "/proc/%ld/stat", pid);
    FILE *f = fopen(p, "re");
    if (!f)
        return -errno;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = 0;
    char *s = strrchr(buf, ')'); /* the command name may hold spaces and parentheses */
    if (!s || s[1] != ' ' || !s[2])
        return -EINVAL;
    *state = s[2];
    s++;
    for (int field = 3; field < 22; field++) {
        s = strchr(s + 1, ' ');
        if (!s)
            return -EINVAL;
    }
    char *end;
    *start = strtoull(s + 1, &end, 10);
    return end == s + 1 ? -EINVAL : 0;
}

int gd_session_pid_start(long pid, unsigned long long *out)
{
    char state;
    return proc_stat(pid, &state, out);
}

int gd_session_alive(const struct gd_session *s)
{
    unsigned long long st;
    char state;
    /* a zombie (not yet reaped by whoever inherited it) is gone too */
    return s->pid > 0 && proc_stat(s->pid, &state, &st) == 0 && st == s->pid_start &&
           state != 'Z' && state != 'X';
}

cJSON *gd_session_json(const struct gd_session *s)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", s->id);
    gd_control_json_str(o, "name", s->name);
    cJSON_AddNumberToObject(o, "pid", (double)s->pid);
    cJSON_AddNumberToObject(o, "pid_start", (double)s->pid_start);
    cJSON_AddNumberToObject(o, "created", (double)s->created);
    cJSON_AddStringToObject(o, "image", s->image);
    cJSON_AddStringToObject(o, "build_id", s->build_id);
    gd_control_json_str(o, "policy", s->policy);
    cJSON_AddStringToObject(o, "socket", s->socket);
    cJSON_AddStringToObject(o, "log", s->log);
    return o;
}

int gd_session_write(const char *dir, const struct gd_session *s)
{
    char *text = gd_control_encode_json(gd_session_json(s));
    if (!text)
        return -ENOMEM;
    char tmp[1200], path[1200];
    snprintf(tmp, sizeof(tmp), "%s/.%s.json.tmp", dir, s->id);
    snprintf(path, sizeof(path), "%s/%s.json", dir, s->id);
    int rc = 0;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    FILE *f = fd >= 0 ? fdopen(fd, "w") : NULL;
    if (!f) {
        rc = -errno;
        if (fd >= 0)
            close(fd);
    } else {
        fprintf(f, "%s\n", text);
        if (fflush(f) || fsync(fileno(f)))
            rc = -errno;
        if (fclose(f) && !rc)
            rc = -errno;
        if (!rc && rename(tmp, path))
            rc = -errno;
        if (rc)
            unlink(tmp);
    }
    free(text);
    return rc;
}

static void copy_str(const cJSON *o, const char *k, char *out, size_t cap)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    snprintf(out, cap, "%s", cJSON_IsString(v) && v->valuestring ? v->valuestring : "");
}

static double get_num(const cJSON *o, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsNumber(v) ? v->valuedouble : -1;
}

int gd_session_read(const char *path, struct gd_session *s, struct gd_err *err)
{
    memset(s, 0, sizeof(*s));
    char *text;
    size_t n;
    int rc = gd_read_file(path, 64 << 10, &text, &n);
    if (rc)
        return gd_err_set(err, rc, "%s: %s", path, strerror(-rc));
    cJSON *o = cJSON_Parse(text);
    free(text);
    if (!cJSON_IsObject(o)) {
        cJSON_Delete(o);
        return gd_err_set(err, -EBADMSG, "%s: not a session file", path);
    }
    copy_str(o, "id", s->id, sizeof(s->id));
    copy_str(o, "name", s->name, sizeof(s->name));
    copy_str(o, "image", s->image, sizeof(s->image));
    copy_str(o, "build_id", s->build_id, sizeof(s->build_id));
    copy_str(o, "policy", s->policy, sizeof(s->policy));
    copy_str(o, "socket", s->socket, sizeof(s->socket));
    copy_str(o, "log", s->log, sizeof(s->log));
    double pid = get_num(o, "pid"), st = get_num(o, "pid_start");
    s->pid = pid > 0 && pid < 1e9 ? (long)pid : 0;
    s->pid_start = st >= 0 && st < 1.8e19 ? (unsigned long long)st : 0;
    s->created = (long long)get_num(o, "created");
    cJSON_Delete(o);
    if (!is_uuid(s->id) || !s->pid || !s->socket[0])
        return gd_err_set(err, -EBADMSG, "%s: not a session file", path);
    return 0;
}

void gd_session_remove(const char *dir, const char *id)
{
    static const char *const ext[] = {"json", "sock", "log"};
    char p[1200];
    for (int i = 0; i < 3; i++) {
        snprintf(p, sizeof(p), "%s/%s.%s", dir, id, ext[i]);
        unlink(p);
    }
    snprintf(p, sizeof(p), "%s/%s.ssh", dir, id); /* keys of `gondolin ssh` */
    gd_rm_rf(p);
}

static int by_created(const void *a, const void *b)
{
    const struct gd_session *x = a, *y = b;
    if (x->created != y->created)
        return x->created < y->created ? -1 : 1;
    return strcmp(x->id, y->id);
}

int gd_session_list(const char *dir, int prune, struct gd_session **out, size_t *n)
{
    *out = NULL;
    *n = 0;
    DIR *d = opendir(dir);
    if (!d)
        return errno == ENOENT ? 0 : -errno;
    struct gd_session *v = NULL;
    size_t nv = 0, cap = 0;
    struct dirent *de;
    int rc = 0;
    while ((de = readdir(d))) {
        size_t l = strlen(de->d_name);
        if (l != 41 || strcmp(de->d_name + 36, ".json"))
            continue;
        char id[40], path[1200];
        memcpy(id, de->d_name, 36);
        id[36] = 0;
        if (!is_uuid(id))
            continue;
        snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
        struct gd_session s;
        if (gd_session_read(path, &s, NULL) || strcmp(s.id, id) || !gd_session_alive(&s)) {
            if (prune)
                gd_session_remove(dir, id);
            continue;
        }
        if (nv == cap) {
            cap = cap ? 2 * cap : 8;
            struct gd_session *nvp = realloc(v, cap * sizeof(*v));
            if (!nvp) {
                rc = -ENOMEM;
                break;
            }
            v = nvp;
        }
        v[nv++] = s;
    }
    closedir(d);
    if (rc) {
        free(v);
        return rc;
    }
    if (nv)
        qsort(v, nv, sizeof(*v), by_created);
    *out = v;
    *n = nv;
    return 0;
}

int gd_session_find(const char *dir, const char *key, struct gd_session *out, struct gd_err *err)
{
    struct gd_session *v;
    size_t n;
    int rc = gd_session_list(dir, 0, &v, &n);
    if (rc)
        return gd_err_set(err, rc, "cannot read %s: %s", dir, strerror(-rc));
    const struct gd_session *hit = NULL;
    size_t nprefix = 0, klen = strlen(key);
    /* a full id, then a name, then a unique id prefix */
    for (size_t i = 0; i < n && !hit; i++)
        if (!strcmp(v[i].id, key))
            hit = &v[i];
    for (size_t i = 0; i < n && !hit; i++)
        if (v[i].name[0] && !strcmp(v[i].name, key))
            hit = &v[i];
    if (!hit && klen)
        for (size_t i = 0; i < n; i++)
            if (!strncmp(v[i].id, key, klen) && nprefix++ == 0)
                hit = &v[i];
    if (hit && nprefix > 1) {
        rc = gd_err_set(err, -EEXIST,
                        "'%s' is ambiguous: %zu sessions have ids starting with it; give more "
                        "of the id",
                        key, nprefix);
    } else if (!hit) {
        rc = gd_err_set(err, -ENOENT, "no session '%s' (see gondolin ls)", key);
    } else {
        *out = *hit;
        rc = 0;
    }
    free(v);
    return rc;
}
