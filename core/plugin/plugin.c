/* plugin.c - the .so loader and the host API table plugins call (see plugin.h). */
#define _GNU_SOURCE
#include "plugin/plugin.h"

#include <gondolin/plugin.h>

#include <ctype.h>
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

_Static_assert((int)GD_PLUGIN_PHASE_CONNECT == (int)GD_PHASE_CONNECT, "phase values");
_Static_assert((int)GD_PLUGIN_PHASE_REQUEST == (int)GD_PHASE_REQUEST_HEAD, "phase values");
_Static_assert((int)GD_PLUGIN_PHASE_REQUEST_BODY == (int)GD_PHASE_REQUEST_BODY, "phase values");
_Static_assert((int)GD_PLUGIN_PHASE_RESPONSE == (int)GD_PHASE_RESPONSE_HEAD, "phase values");
_Static_assert((int)GD_PLUGIN_PHASE_RESPONSE_BODY == (int)GD_PHASE_RESPONSE_BODY, "phase values");
_Static_assert((int)GD_PLUGIN_DENY == (int)GD_DENY && (int)GD_PLUGIN_RESPOND == (int)GD_RESPOND,
               "decision values");

/* The descriptor as ABI version 1 defined it: the smallest struct_size we accept. */
#define DESC_V1_SIZE (offsetof(struct gd_plugin_desc, fini) + sizeof(void (*)(void *)))

struct gd_plugin {
    void *dl;
    const struct gd_plugin_desc *d;
    char *path;
};

struct pl_hook {
    gd_plugin_hook_fn fn;
    void *ud;
};

struct pl_source {
    char *scheme;
    gd_plugin_secret_fn fn;
    void *ud;
};

/* struct gd_vfs_ops as API level 2 defined it: the smallest ops_size we accept. */
#define VFS_OPS_L2_SIZE (offsetof(struct gd_vfs_ops, destroy) + sizeof(void (*)(void *)))

struct gd_plugin_inst {
    gd_plugin *p;
    void *state;
    int in_init;
    char refused[300]; /* the first refused level-2 registration: fails the load */
    struct gd_plugin_fs_hook *fsh;
    size_t nfsh;
    struct gd_plugin_ssh_hook *sshh;
    size_t nsshh;
    struct gd_plugin_vfs *vfs;
    size_t nvfs;
    struct gd_plugin_hook *hooks;
    size_t nhooks;
    struct pl_source *src;
    size_t nsrc;
    void (*log)(void *, const char *);
    void *log_ud;
};

/* gd_plugin_host is the instance itself, behind an opaque name. */
static gd_plugin_inst *inst(gd_plugin_host *h)
{
    return (gd_plugin_inst *)h;
}

int gd_plugin_open(const char *path, gd_plugin **out, struct gd_err *err)
{
    *out = NULL;
    void *dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!dl)
        return gd_err_set(err, -ENOENT, "plugin %s: cannot load: %s", path, dlerror());
    const struct gd_plugin_desc *(*entry)(void);
    *(void **)&entry = dlsym(dl, "gondolin_plugin_entry");
    if (!entry) {
        dlclose(dl);
        return gd_err_set(err, -ENOENT, "plugin %s: does not export gondolin_plugin_entry()", path);
    }
    const struct gd_plugin_desc *d = entry();
    int rc = 0;
    if (!d)
        rc = gd_err_set(err, -EINVAL, "plugin %s: gondolin_plugin_entry() returned NULL", path);
    else if (d->abi_version != GONDOLIN_PLUGIN_ABI_VERSION)
        rc = gd_err_set(err, -EPROTO,
                        "plugin %s: built for plugin ABI %u, this gondolin speaks ABI %u "
                        "(rebuild it against this SDK)",
                        path, d->abi_version, GONDOLIN_PLUGIN_ABI_VERSION);
    else if (d->struct_size < DESC_V1_SIZE)
        rc = gd_err_set(err, -EPROTO,
                        "plugin %s: descriptor of %u bytes is smaller than ABI "
                        "1's %zu",
                        path, d->struct_size, DESC_V1_SIZE);
    else if (!d->init)
        rc = gd_err_set(err, -EINVAL, "plugin %s: descriptor has no init", path);
    else if (!d->name || !*d->name || strlen(d->name) > 64 ||
             strspn(d->name, "abcdefghijklmnopqrstuvwxyz0123456789_-") != strlen(d->name))
        rc = gd_err_set(err, -EINVAL, "plugin %s: name must be [a-z0-9_-]{1,64}", path);
    if (rc) {
        dlclose(dl);
        return rc;
    }
    gd_plugin *p = calloc(1, sizeof(*p));
    if (!p || !(p->path = strdup(path))) {
        free(p);
        dlclose(dl);
        return gd_err_set(err, -ENOMEM, "out of memory");
    }
    p->dl = dl;
    p->d = d;
    *out = p;
    return 0;
}

const char *gd_plugin_name(const gd_plugin *p)
{
    return p->d->name;
}
const char *gd_plugin_path(const gd_plugin *p)
{
    return p->path;
}
const char *gd_plugin_version(const gd_plugin *p)
{
    return p->d->version ? p->d->version : "";
}

void gd_plugin_close(gd_plugin *p)
{
    if (!p)
        return;
    dlclose(p->dl);
    free(p->path);
    free(p);
}

static int by_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

char **gd_plugin_scan_dir(const char *dir)
{
    size_t n = 0;
    char **v = calloc(1, sizeof(char *));
    DIR *d = opendir(dir);
    if (!d || !v)
        goto out;
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t l = strlen(e->d_name);
        if (l < 4 || strcmp(e->d_name + l - 3, ".so") || e->d_name[0] == '.')
            continue;
        char **q = realloc(v, (n + 2) * sizeof(*q));
        if (!q)
            break;
        v = q;
        if (asprintf(&v[n], "%s/%s", dir, e->d_name) < 0)
            break;
        v[++n] = NULL;
    }
    qsort(v, n, sizeof(*v), by_name);
out:
    if (d)
        closedir(d);
    return v;
}

/* ---- the host API ---- */

static enum gd_decision trampoline(gd_txn *t, enum gd_phase ph, void *ud)
{
    struct pl_hook *h = ud;
    return (enum gd_decision)h->fn(t, (unsigned)ph, h->ud);
}

static int api_register_http_hook(gd_plugin_host *hh, const char *name, unsigned phases,
                                  gd_plugin_hook_fn fn, void *ud)
{
    gd_plugin_inst *in = inst(hh);
    if (!in->in_init)
        return -EPERM;
    if (!name || !fn || !phases || phases & ~31u)
        return -EINVAL;
    struct gd_plugin_hook *q = realloc(in->hooks, (in->nhooks + 1) * sizeof(*q));
    if (!q)
        return -ENOMEM;
    in->hooks = q;
    struct pl_hook *h = malloc(sizeof(*h));
    char *nm = NULL;
    if (!h || asprintf(&nm, "%s/%s", in->p->d->name, name) < 0) {
        free(h);
        return -ENOMEM;
    }
    h->fn = fn;
    h->ud = ud;
    q[in->nhooks++] = (struct gd_plugin_hook){nm, phases, trampoline, h};
    return 0;
}

static int api_register_secret_source(gd_plugin_host *hh, const char *scheme,
                                      gd_plugin_secret_fn fn, void *ud)
{
    gd_plugin_inst *in = inst(hh);
    if (!in->in_init)
        return -EPERM;
    if (!scheme || !*scheme || strchr(scheme, ':') || !fn)
        return -EINVAL;
    static const char *const builtin[] = {"env", "file", "value", NULL};
    for (const char *const *b = builtin; *b; b++)
        if (!strcmp(*b, scheme))
            return -EEXIST;
    struct pl_source *q = realloc(in->src, (in->nsrc + 1) * sizeof(*q));
    if (!q)
        return -ENOMEM;
    in->src = q;
    if (!(q[in->nsrc].scheme = strdup(scheme)))
        return -ENOMEM;
    q[in->nsrc].fn = fn;
    q[in->nsrc].ud = ud;
    in->nsrc++;
    return 0;
}

/* Records why a registration was refused (the load then fails with it) and returns rc. */
static int refuse(gd_plugin_inst *in, int rc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int refuse(gd_plugin_inst *in, int rc, const char *fmt, ...)
{
    if (!in->refused[0]) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(in->refused, sizeof(in->refused), fmt, ap);
        va_end(ap);
    }
    return rc;
}

static int valid_name(const char *n)
{
    return n && *n && strlen(n) <= 64 &&
           strspn(n, "abcdefghijklmnopqrstuvwxyz0123456789_-") == strlen(n);
}

static int api_register_vfs_provider(gd_plugin_host *hh, const char *name,
                                     const struct gd_vfs_ops *ops, size_t ops_size,
                                     gd_plugin_vfs_factory factory, void *ud)
{
    gd_plugin_inst *in = inst(hh);
    const char *fn = "register_vfs_provider";
    if (!in->in_init)
        return refuse(in, -EPERM, "%s: only inside init", fn);
    if (!valid_name(name))
        return refuse(in, -EINVAL, "%s: name must be [a-z0-9_-]{1,64}", fn);
    if (!ops)
        return refuse(in, -EINVAL, "%s('%s'): ops is NULL", fn, name);
    if (!factory)
        return refuse(in, -EINVAL, "%s('%s'): factory is NULL", fn, name);
    if (ops_size < VFS_OPS_L2_SIZE)
        return refuse(in, -EPROTO,
                      "%s('%s'): ops of %zu bytes is smaller than API level 2's %zu "
                      "(pass sizeof(struct gd_vfs_ops))",
                      fn, name, ops_size, VFS_OPS_L2_SIZE);
    if (ops_size > sizeof(struct gd_vfs_ops)) {
        const unsigned char *extra = (const unsigned char *)ops + sizeof(struct gd_vfs_ops);
        for (size_t i = 0; i < ops_size - sizeof(struct gd_vfs_ops); i++)
            if (extra[i])
                return refuse(in, -EPROTO,
                              "%s('%s'): ops of %zu bytes sets operations this gondolin "
                              "(%zu bytes) does not know",
                              fn, name, ops_size, sizeof(struct gd_vfs_ops));
    }
    for (size_t i = 0; i < in->nvfs; i++)
        if (!strcmp(in->vfs[i].name, name))
            return refuse(in, -EEXIST, "%s: '%s' is registered twice", fn, name);
    struct gd_plugin_vfs *q = realloc(in->vfs, (in->nvfs + 1) * sizeof(*q));
    if (!q)
        return refuse(in, -ENOMEM, "%s: out of memory", fn);
    in->vfs = q;
    struct gd_plugin_vfs *v = &q[in->nvfs];
    memset(v, 0, sizeof(*v));
    if (!(v->name = strdup(name)))
        return refuse(in, -ENOMEM, "%s: out of memory", fn);
    memcpy(&v->ops, ops, ops_size < sizeof(v->ops) ? ops_size : sizeof(v->ops));
    v->factory = factory;
    v->ud = ud;
    in->nvfs++;
    return 0;
}

static int api_register_fs_hook(gd_plugin_host *hh, const char *name, gd_plugin_fs_before_fn before,
                                gd_plugin_fs_after_fn after, void *ud)
{
    gd_plugin_inst *in = inst(hh);
    const char *fn = "register_fs_hook";
    if (!in->in_init)
        return refuse(in, -EPERM, "%s: only inside init", fn);
    if (!name || !*name || strlen(name) > 64 || strchr(name, '/'))
        return refuse(in, -EINVAL, "%s: name must be 1-64 bytes without '/'", fn);
    if (!before && !after)
        return refuse(in, -EINVAL, "%s('%s'): both before and after are NULL", fn, name);
    struct gd_plugin_fs_hook *q = realloc(in->fsh, (in->nfsh + 1) * sizeof(*q));
    if (!q)
        return refuse(in, -ENOMEM, "%s: out of memory", fn);
    in->fsh = q;
    char *nm = NULL;
    if (asprintf(&nm, "%s/%s", in->p->d->name, name) < 0)
        return refuse(in, -ENOMEM, "%s: out of memory", fn);
    q[in->nfsh++] = (struct gd_plugin_fs_hook){nm, before, after, ud};
    return 0;
}

static int api_register_ssh_hook(gd_plugin_host *hh, const char *name, gd_plugin_ssh_exec_fn f,
                                 void *ud)
{
    gd_plugin_inst *in = inst(hh);
    const char *fn = "register_ssh_hook";
    if (!in->in_init)
        return refuse(in, -EPERM, "%s: only inside init", fn);
    if (!name || !*name || strlen(name) > 64 || strchr(name, '/'))
        return refuse(in, -EINVAL, "%s: name must be 1-64 bytes without '/'", fn);
    if (!f)
        return refuse(in, -EINVAL, "%s('%s'): the hook is NULL", fn, name);
    struct gd_plugin_ssh_hook *q = realloc(in->sshh, (in->nsshh + 1) * sizeof(*q));
    if (!q)
        return refuse(in, -ENOMEM, "%s: out of memory", fn);
    in->sshh = q;
    char *nm = NULL;
    if (asprintf(&nm, "%s/%s", in->p->d->name, name) < 0)
        return refuse(in, -ENOMEM, "%s: out of memory", fn);
    q[in->nsshh++] = (struct gd_plugin_ssh_hook){nm, f, ud};
    return 0;
}

static void api_log(gd_plugin_host *hh, const char *msg)
{
    gd_plugin_inst *in = inst(hh);
    char clean[512], line[600];
    gd_sanitize(clean, sizeof(clean), msg ? msg : "", msg ? strlen(msg) : 0);
    snprintf(line, sizeof(line), "%s: %s", in->p->d->name, clean);
    if (in->log)
        in->log(in->log_ud, line);
    else
        fprintf(stderr, "gondolin: plugin %s\n", line);
}

static enum gd_plugin_decision api_deny(gd_txn *t, int status, const char *reason)
{
    return (enum gd_plugin_decision)gd_txn_deny(t, status, NULL, "%s",
                                                reason ? reason : "denied by plugin");
}

static enum gd_plugin_decision api_respond(gd_txn *t, int status, const char *ctype,
                                           const void *body, size_t n)
{
    return (enum gd_plugin_decision)gd_txn_respond(t, status, ctype, body, n);
}

static const char *api_header(const gd_txn *t, int resp, const char *name)
{
    return gd_txn_header(t, resp, name);
}

static int64_t api_content_length(const gd_txn *t, int resp)
{
    const char *v = gd_txn_header(t, resp, "content-length");
    if (!v || !isdigit((unsigned char)*v))
        return -1;
    char *end;
    long long n = strtoll(v, &end, 10);
    return *end ? -1 : (int64_t)n;
}

static const struct gd_host_api host_api = {
    .abi_version = GONDOLIN_PLUGIN_ABI_VERSION,
    .struct_size = sizeof(struct gd_host_api),
    .register_http_hook = api_register_http_hook,
    .register_secret_source = api_register_secret_source,
    .log = api_log,
    .txn_method = gd_txn_method,
    .txn_scheme = gd_txn_scheme,
    .txn_host = gd_txn_host,
    .txn_port = gd_txn_port,
    .txn_target = gd_txn_target,
    .txn_addr = gd_txn_addr,
    .txn_status = gd_txn_status,
    .txn_header = api_header,
    .txn_header_count = gd_txn_header_count,
    .txn_header_at = gd_txn_header_at,
    .txn_set_header = gd_txn_set_header,
    .txn_deny = api_deny,
    .txn_respond = api_respond,
    .txn_want_body = gd_txn_want_body,
    .txn_body = gd_txn_body,
    .txn_content_length = api_content_length,
    .register_vfs_provider = api_register_vfs_provider,
    .register_fs_hook = api_register_fs_hook,
    .register_ssh_hook = api_register_ssh_hook,
};

int gd_plugin_start(gd_plugin *p, const char *config, void (*log)(void *, const char *),
                    void *log_ud, gd_plugin_inst **out, struct gd_err *err)
{
    *out = NULL;
    gd_plugin_inst *in = calloc(1, sizeof(*in));
    if (!in)
        return gd_err_set(err, -ENOMEM, "out of memory");
    in->p = p;
    in->log = log;
    in->log_ud = log_ud;
    char why[256] = "";
    in->in_init = 1;
    int rc = p->d->init(&host_api, (gd_plugin_host *)in, config ? config : "{}", &in->state, why,
                        sizeof(why));
    in->in_init = 0;
    if (rc) {
        char clean[256];
        gd_sanitize(clean, sizeof(clean), why, strnlen(why, sizeof(why)));
        if (in->refused[0]) /* the precise reason, whatever init made of it */
            gd_err_set(err, -EINVAL, "plugin %s (%s): %s", p->d->name, p->path, in->refused);
        else
            gd_err_set(err, -EINVAL, "plugin %s (%s): init failed: %s", p->d->name, p->path,
                       clean[0] ? clean : "no reason given");
        in->state = NULL; /* init failed: fini is not called */
        gd_plugin_stop(in);
        return -EINVAL;
    }
    if (in->refused[0]) {
        gd_err_set(err, -EINVAL, "plugin %s (%s): %s", p->d->name, p->path, in->refused);
        gd_plugin_stop(in);
        return -EINVAL;
    }
    *out = in;
    return 0;
}

void gd_plugin_stop(gd_plugin_inst *in)
{
    if (!in)
        return;
    if (in->state && in->p->d->fini)
        in->p->d->fini(in->state);
    for (size_t i = 0; i < in->nhooks; i++) {
        free(in->hooks[i].name);
        free(in->hooks[i].ud);
    }
    free(in->hooks);
    for (size_t i = 0; i < in->nsrc; i++)
        free(in->src[i].scheme);
    free(in->src);
    for (size_t i = 0; i < in->nfsh; i++)
        free(in->fsh[i].name);
    free(in->fsh);
    for (size_t i = 0; i < in->nsshh; i++)
        free(in->sshh[i].name);
    free(in->sshh);
    for (size_t i = 0; i < in->nvfs; i++)
        free(in->vfs[i].name);
    free(in->vfs);
    free(in);
}

const struct gd_plugin_ssh_hook *gd_plugin_ssh_hooks(const gd_plugin_inst *in, size_t *n)
{
    *n = in->nsshh;
    return in->sshh;
}

const struct gd_plugin_fs_hook *gd_plugin_fs_hooks(const gd_plugin_inst *in, size_t *n)
{
    *n = in->nfsh;
    return in->fsh;
}

const struct gd_plugin_vfs *gd_plugin_vfs_provider(const gd_plugin_inst *in, const char *name)
{
    for (size_t i = 0; i < in->nvfs; i++)
        if (!strcmp(in->vfs[i].name, name))
            return &in->vfs[i];
    return NULL;
}

const struct gd_plugin_hook *gd_plugin_hooks(const gd_plugin_inst *in, size_t *n)
{
    *n = in->nhooks;
    return in->hooks;
}

int gd_plugin_secret(const gd_plugin_inst *in, const char *scheme, const char *arg, char *out,
                     size_t cap, struct gd_err *err)
{
    for (size_t i = 0; i < in->nsrc; i++) {
        if (strcmp(in->src[i].scheme, scheme))
            continue;
        char why[256] = "";
        out[0] = 0;
        int n = in->src[i].fn(in->src[i].ud, arg, out, cap, why, sizeof(why));
        if (n < 0 || (size_t)n >= cap) {
            char clean[256];
            gd_sanitize(clean, sizeof(clean), why, strnlen(why, sizeof(why)));
            return gd_err_set(err, -EINVAL, "secret source %s (plugin %s): %s", scheme,
                              in->p->d->name, clean[0] ? clean : "failed");
        }
        out[n] = 0;
        return 1;
    }
    return 0;
}
