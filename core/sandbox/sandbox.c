/* sandbox.c - the sandbox object: options → policy engine → image → egress stack → VM,
 * and the environment every exec gets (see sandbox.h). */
#define _GNU_SOURCE
#include "sandbox_int.h"

#include "image/image.h"
#include "image/store.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void engine_log(void *ud, const char *msg)
{
    gd_sandbox *sb = ud;
    if (sb->log)
        sb->log(sb->log_ud, msg);
    else
        fprintf(stderr, "gondolin: %s\n", msg);
}

void gd__sandbox_log(gd_sandbox *sb, const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    engine_log(sb, line);
}

static void engine_reload(void *ud, int ok, const char *rev, const char *msg)
{
    gd_sandbox *sb = ud;
    if (ok && !sb->closing)
        gd__known_hosts_reloaded(sb); /* a reload may have changed the SSH names */
    if (sb->on_reload)
        sb->on_reload(sb->log_ud, ok, rev, msg);
}

static int env_add(gd_sandbox *sb, size_t *n, const char *kv)
{
    char **q = realloc(sb->env, (*n + 2) * sizeof(*q));
    if (!q)
        return -ENOMEM;
    sb->env = q;
    if (!(q[*n] = strdup(kv)))
        return -ENOMEM;
    q[++*n] = NULL;
    return 0;
}

static int default_resolve(const char *ref, char *out, size_t cap, struct gd_err *err)
{
    if (!ref) {
        gd_image_default_dir(out, cap);
        return 0;
    }
    return gd_store_resolve(ref, gd_host_arch(), out, cap, err);
}

/* What a checkpoint of this sandbox will record (besides memory and cpus). */
static void record(gd_sandbox *sb, const struct gd_sandbox_opts *o, const struct gd_image *img)
{
    struct gd_snap_meta *m = &sb->meta;
    snprintf(m->build_id, sizeof(m->build_id), "%s", img->build_id);
    snprintf(m->arch, sizeof(m->arch), "%s", img->arch);
    snprintf(m->image, sizeof(m->image), "%s", sb->image_dir);
    static const char *const kinds[] = {"hostfs", "overlay", "memory"};
    for (size_t i = 0; i < o->nmounts && m->nmounts < GD_SNAP_MAX_MOUNTS; i++) {
        const struct gd_mount *x = &o->mounts[i];
        if (x->kind > GD_MOUNT_MEMORY)
            continue;
        struct gd_snap_mount *y = &m->mounts[m->nmounts++];
        snprintf(y->kind, sizeof(y->kind), "%s", kinds[x->kind]);
        snprintf(y->guest, sizeof(y->guest), "%s", x->guest);
        snprintf(y->host, sizeof(y->host), "%s", x->host ? x->host : "");
        y->readonly = x->readonly;
        y->size = x->size;
    }
}

int gd_sandbox_new(uv_loop_t *loop, const struct gd_sandbox_opts *o, gd_sandbox **out,
                   struct gd_err *err)
{
    *out = NULL;
    if (o->no_network && (o->policy || (o->egress && (o->egress->nallow || o->egress->nsecrets ||
                                                      o->egress->nmaps))))
        return gd_err_set(err, -EINVAL,
                          "no network cannot be combined with a policy, allowed hosts, "
                          "secrets or TCP maps");
    gd_sandbox *sb = calloc(1, sizeof(*sb));
    if (!sb)
        return gd_err_set(err, -ENOMEM, "out of memory");
    sb->loop = loop;
    sb->log = o->log;
    sb->on_reload = o->on_reload;
    sb->log_ud = o->ud;
    int rc = 0;
    const struct gd_lua_conf *pc = NULL;
    if (!o->no_network) {
        struct gd_engine_opts eo = {.policy = o->policy,
                                    .base = o->egress,
                                    .plugin_dirs = o->plugin_dirs,
                                    .plugins = o->plugins,
                                    .quiet = o->quiet,
                                    .log = engine_log,
                                    .log_ud = sb,
                                    .on_reload = engine_reload};
        if (gd_engine_new(&eo, &sb->eng, err)) {
            rc = -EINVAL;
            goto fail;
        }
        pc = gd_engine_policy_conf(sb->eng);
        if (o->policy && !(sb->policy = strdup(o->policy)))
            goto oom;
    }
    /* the image: the caller's choice, else the policy's, else the checkpoint's being
     * resumed, else the default */
    const char *ref = o->image ? o->image : pc && pc->image ? pc->image : NULL;
    struct gd_snap_trailer st = {0};
    struct gd_snap_meta sm = {0};
    if (o->resume && !ref) {
        rc = gd__disk_resume_image(sb, o, &st, &sm, err); /* verifies it too */
    } else {
        if (o->resume && gd_snap_verify_disk(o->resume, &st, &sm, err)) {
            rc = -EINVAL;
            goto fail;
        }
        rc = o->resolve_image
                 ? o->resolve_image(o->image_ud, ref, sb->image_dir, sizeof(sb->image_dir), err)
                 : default_resolve(ref, sb->image_dir, sizeof(sb->image_dir), err);
    }
    if (rc && o->resume && !ref) {
        rc = -EINVAL; /* (the checkpoint is bad or its image is gone) */
        goto fail;
    }
    struct gd_image img;
    if (rc || gd_image_load(sb->image_dir, 0, &img, err)) {
        rc = -ENOENT;
        goto fail;
    }
    snprintf(sb->build_id, sizeof(sb->build_id), "%s", img.build_id);
    if (o->resume && gd_snap_compatible(o->resume, &sm, img.build_id, err)) {
        rc = -EINVAL;
        goto fail;
    }

    /* the egress stack; its kernel arguments go after the caller's */
    size_t ne = 0;
    if (sb->eng) {
        sb->have_ns = 1;
        if (gd__netstack_start(&sb->ns, loop, sb->eng, err)) {
            rc = -EIO;
            goto fail;
        }
        for (char **e = sb->ns.env; e && *e; e++)
            if (env_add(sb, &ne, *e))
                goto oom;
    }
    for (char **e = pc ? pc->env : NULL; e && *e; e++)
        if (env_add(sb, &ne, *e))
            goto oom;
    for (const char *const *e = o->env; e && *e; e++)
        if (env_add(sb, &ne, *e))
            goto oom;
    if (asprintf(&sb->append, "%s%s%s", o->append ? o->append : "",
                 o->append && *o->append && sb->have_ns ? " " : "",
                 sb->have_ns ? sb->ns.kernel : "") < 0) {
        sb->append = NULL;
        goto oom;
    }
    if ((rc = gd__mounts_start(sb, o, err))) {
        rc = rc == -ENOMEM ? -EIO : -EINVAL;
        goto fail;
    }
    if ((rc = gd__disk_prepare(sb, o, &img, &st, &sm, err))) {
        rc = -EIO;
        goto fail;
    }
    record(sb, o, &img);
    struct gd_vm_opts vo = {.image_dir = sb->image_dir,
                            .accel = o->accel,
                            .memory_mb = o->memory_mb          ? o->memory_mb
                                         : pc && pc->memory_mb ? pc->memory_mb
                                                               : sm.memory_mb,
                            .cpus = o->cpus          ? o->cpus
                                    : pc && pc->cpus ? pc->cpus
                                                     : sm.cpus,
                            .start_timeout_ms = o->start_timeout_ms,
                            .append = sb->append[0] ? sb->append : NULL,
                            .rootfs_mode = gd_sandbox_cow(sb) ? "cow" : o->rootfs_mode,
                            .disk = gd_sandbox_cow(sb) ? sb->disk.path : NULL,
                            .verbose = o->verbose,
                            .net_fd = sb->have_ns ? sb->ns.qemu_fd : 0,
                            .fs = sb->vmfs,
                            .nfs = sb->nmounts,
                            .boot_snapshot = !o->cold_boot};
    struct gd_vm_resume mem;
    if (sm.memory) {
        if ((rc = gd__memsnap_resume_opts(sb, o, &st, &sm, &mem, err)))
            goto fail;
        vo.resume = &mem;
        vo.rootfs_mode = gd_sandbox_cow(sb) ? "cow" : sm.rootfs;
    }
    if (gd_vm_new(loop, &vo, &sb->vm, err)) {
        rc = -EIO;
        goto fail;
    }

    sb->meta.memory_mb = vo.memory_mb ? vo.memory_mb : 1024; /* the VM layer's defaults */
    sb->meta.cpus = vo.cpus ? vo.cpus : 2;
    snprintf(sb->meta.rootfs, sizeof(sb->meta.rootfs), "%s",
             vo.rootfs_mode       ? vo.rootfs_mode
             : img.rootfs_mode[0] ? img.rootfs_mode
                                  : "memory");
    if (sm.memory && (rc = gd__memsnap_check_shape(sb, o->resume, &sm, err)))
        goto fail;
    for (size_t i = 0; i < o->nlisten; i++)
        if (gd_sandbox_expose(sb, &o->listen[i].spec, o->listen[i].raw, NULL, err)) {
            gd__sandbox_close_forwards(sb);
            rc = -EIO;
            goto fail;
        }
    *out = sb;
    return 0;
oom:
    rc = gd_err_set(err, -EIO, "out of memory");
fail:
    gd_sandbox_free(sb);
    return rc;
}

static void on_vm_ready(gd_vm *vm, int status, void *ud)
{
    (void)vm;
    gd_sandbox *sb = ud;
    if (!status && sb->have_ns) {
        gd__known_hosts_ready(sb); /* reports ready once the guest has the file */
        return;
    }
    if (sb->ready)
        sb->ready(sb, status, sb->ud);
}

static void on_vm_exit(gd_vm *vm, const char *reason, void *ud)
{
    (void)vm;
    gd_sandbox *sb = ud;
    gd__known_hosts_stop(sb); /* (a reload from now on must not start the SSH proxy) */
    gd__sandbox_close_forwards(sb);
    gd__mounts_stop(sb);
    if (sb->eng)
        gd_engine_close(sb->eng);
    if (sb->have_ns)
        gd__netstack_stop(&sb->ns);
    gd__snapshot_on_exit(sb, reason); /* QEMU is gone: the overlay is complete */
    if (sb->exit_cb)
        sb->exit_cb(sb, reason, sb->ud);
}

int gd_sandbox_start(gd_sandbox *sb, gd_sandbox_ready_cb ready, gd_sandbox_exit_cb exit_cb,
                     void *ud)
{
    sb->ready = ready;
    sb->exit_cb = exit_cb;
    sb->ud = ud;
    if (sb->eng)
        gd_engine_watch(sb->eng, sb->loop);
    int rc = gd_vm_start(sb->vm, on_vm_ready, on_vm_exit, sb);
    if (rc && sb->eng)
        gd_engine_close(sb->eng);
    return rc;
}

int gd_sandbox_exec(gd_sandbox *sb, const struct gd_exec_opts *o, const struct gd_exec_cbs *cbs,
                    void *ud, gd_exec **out)
{
    size_t n = 0, k = 0;
    while (sb->env && sb->env[n])
        n++;
    while (o->env && o->env[k])
        k++;
    const char **env = malloc((n + k + 1) * sizeof(*env));
    if (!env)
        return -ENOMEM;
    for (size_t i = 0; i < n; i++)
        env[i] = sb->env[i];
    for (size_t i = 0; i < k; i++)
        env[n + i] = o->env[i];
    env[n + k] = NULL;
    struct gd_exec_opts xo = *o;
    xo.env = env;
    int rc = gd_exec_start(sb->vm, &xo, cbs, ud, out); /* copies the environment */
    free(env);
    return rc;
}

int gd_sandbox_reload(gd_sandbox *sb, struct gd_err *err)
{
    if (!sb->eng)
        return gd_err_set(err, -ENOENT, "this sandbox has no network, hence no policy");
    int rc = gd_engine_reload(sb->eng, err);
    engine_reload(sb, rc == 0, gd_engine_revision(sb->eng), rc ? err->msg : NULL);
    return rc;
}

void gd_sandbox_close(gd_sandbox *sb)
{
    if (sb->closing)
        return;
    sb->closing = 1;
    gd__sandbox_close_forwards(sb);
    gd_vm_close(sb->vm);
}

void gd_sandbox_free(gd_sandbox *sb)
{
    if (!sb)
        return;
    gd__memsnap_detach(sb);
    gd__ssh_free(sb->ssh);
    gd__mounts_free(sb);
    gd_vm_free(sb->vm);
    gd__disk_free(sb);
    if (sb->have_ns)
        gd__netstack_free(&sb->ns);
    gd_engine_free(sb->eng);
    for (char **e = sb->env; e && *e; e++)
        free(*e);
    free(sb->env);
    free(sb->append);
    free(sb->policy);
    free(sb->kh_line);
    free(sb);
}

gd_vm *gd_sandbox_vm(gd_sandbox *sb)
{
    return sb->vm;
}

gd_engine *gd_sandbox_engine(gd_sandbox *sb)
{
    return sb->eng;
}

const char *gd_sandbox_image_dir(const gd_sandbox *sb)
{
    return sb->image_dir;
}

const char *gd_sandbox_build_id(const gd_sandbox *sb)
{
    return sb->build_id;
}

const char *gd_sandbox_revision(const gd_sandbox *sb)
{
    return sb->eng ? gd_engine_revision(sb->eng) : "";
}

unsigned gd_sandbox_generation(const gd_sandbox *sb)
{
    return sb->eng ? gd_engine_generation(sb->eng) : 0;
}

const char *gd_sandbox_policy(const gd_sandbox *sb)
{
    return sb->policy;
}
