/* memsave.c - a memory snapshot of a running VM (gd_vm_save_memory, docs/snapshots.md):
 * QEMU's migration stream into a file of the caller's while the guest is paused.
 *
 * Wait (briefly) until the host's frames to the agent have left our socket, so the
 * guest holds only whole frames; then stop and migrate into the file
 * (gd_qmp_save_to_fd); once QEMU has left finish-migrate, continue the guest. */
#define _GNU_SOURCE
#include "vm_int.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define DRAIN_TRIES 200 /* x 5 ms: then the save goes ahead anyway */
#define STATUS_TRIES 500

enum phase { MS_DRAIN, MS_MIGRATING, MS_STATUS, MS_CONT, MS_DONE };

struct gd__memsave {
    gd_vm *vm;
    int fd;
    int stay_paused;
    enum phase phase;
    unsigned tries; /* of the drain */
    gd_vm_save_cb cb;
    void *ud;
    uv_timer_t timer;
    int timer_open;
    int failed;
    char why[400];
};

static void on_timer_closed(uv_handle_t *h)
{
    free(h->data);
}

static void finish(struct gd__memsave *m, int status, const char *why)
{
    struct gd__memsave **slot = gd__vm_msave(m->vm);
    if (*slot != m)
        return;
    *slot = NULL;
    uint64_t len = 0;
    struct stat st;
    if (!status && fstat(m->fd, &st) == 0)
        len = (uint64_t)st.st_size;
    if (!status && !len)
        status = -EIO, why = "QEMU wrote no stream";
    m->phase = MS_DONE;
    m->cb(m->vm, status, len, status ? why : NULL, m->ud);
    /* the record goes once its timer closed (or now, if it never opened) */
    if (m->timer_open) {
        m->timer_open = 0;
        uv_close((uv_handle_t *)&m->timer, on_timer_closed);
    } else {
        free(m);
    }
}

static void on_cont(gd_qmp *q, int status, const cJSON *ret, const char *err, void *ud)
{
    (void)q;
    (void)ret;
    struct gd__memsave *m = ud;
    if (status == -ECANCELED)
        return;
    if (m->failed) {
        finish(m, -EIO, m->why);
        return;
    }
    if (status) {
        char w[400];
        snprintf(w, sizeof(w), "the guest could not be continued after the save (QMP: %s)",
                 err ? err : "?");
        finish(m, -EIO, w);
        return;
    }
    finish(m, 0, NULL);
}

/* The stream is written (or failed): continue the guest unless asked to keep it paused. */
static void run_on(struct gd__memsave *m)
{
    gd_qmp *q = gd__vm_qmp(m->vm);
    if (m->stay_paused && !m->failed) {
        finish(m, 0, NULL);
        return;
    }
    m->phase = MS_CONT;
    if (!q || gd_qmp_cmd(q, "cont", NULL, -1, on_cont, m))
        finish(m, -EIO, m->failed ? m->why : "the guest could not be continued (QMP)");
}

static void after_migration(void *ud, int status)
{
    struct gd__memsave *m = ud;
    if (status)
        finish(m, -EIO, "QEMU did not leave its migration state after the save");
    else
        run_on(m);
}

static void query_status(struct gd__memsave *m)
{
    gd_qmp *q = gd__vm_qmp(m->vm);
    m->phase = MS_STATUS;
    if (!q || gd_qmp_after_migration(q, STATUS_TRIES, after_migration, m))
        finish(m, -EIO, "QMP channel closed during the save");
}

void gd__memsave_on_event(gd_vm *vm, const char *name, const cJSON *data)
{
    struct gd__memsave *m = *gd__vm_msave(vm);
    if (!m || m->phase != MS_MIGRATING || strcmp(name, "MIGRATION"))
        return;
    const char *st = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(data, "status"));
    if (!st)
        return;
    if (!strcmp(st, "failed") || !strcmp(st, "cancelled")) {
        m->failed = 1;
        snprintf(m->why, sizeof(m->why), "QEMU's migration %s", st);
        m->tries = 0;
        query_status(m);
    } else if (!strcmp(st, "completed")) {
        m->tries = 0;
        query_status(m);
    }
}

static void on_step(gd_qmp *q, int status, const cJSON *ret, const char *err, void *ud)
{
    (void)q;
    (void)ret;
    struct gd__memsave *m = ud;
    if (status == -ECANCELED || !status || m->phase != MS_MIGRATING || m->failed)
        return;
    m->failed = 1;
    snprintf(m->why, sizeof(m->why), "QEMU refused the save: %s", err ? err : "channel closed");
    m->why[strcspn(m->why, "\n")] = 0;
    run_on(m); /* cont is harmless if the guest never stopped */
}

static void migrate(struct gd__memsave *m)
{
    gd_qmp *q = gd__vm_qmp(m->vm);
    m->phase = MS_MIGRATING;
    if (!q) {
        finish(m, -EIO, "QMP channel closed");
        return;
    }
    if (gd_qmp_save_to_fd(q, m->fd, "gdmem", on_step, m)) {
        m->failed = 1;
        snprintf(m->why, sizeof(m->why), "QMP channel");
        run_on(m);
    }
}

static void on_drain(uv_timer_t *t)
{
    struct gd__memsave *m = t->data;
    if (gd__vm_ctl_pending(m->vm) && ++m->tries < DRAIN_TRIES)
        return;
    uv_timer_stop(t);
    migrate(m);
}

int gd_vm_save_memory(gd_vm *vm, int fd, int stay_paused, gd_vm_save_cb cb, void *ud,
                      struct gd_err *err)
{
    struct gd__memsave **slot = gd__vm_msave(vm);
    if (*slot)
        return gd_err_set(err, -EBUSY, "a memory snapshot is being saved already");
    if (!gd__vm_is_ready(vm) || !gd__vm_qmp(vm))
        return gd_err_set(err, -EBUSY, "the VM is not running");
    if (gd__vm_nfs(vm))
        return gd_err_set(err, -ENOTSUP,
                          "memory snapshots need a sandbox without mounts (QEMU cannot "
                          "migrate vhost-user-fs devices)");
    if (gd_vm_agent_minor(vm) < 3)
        return gd_err_set(err, -ENOTSUP,
                          "the guest agent is older than protocol 1.3: rebuild the image "
                          "(gondolin build --default)");
    struct gd__memsave *m = calloc(1, sizeof(*m));
    if (!m)
        return gd_err_set(err, -ENOMEM, "out of memory");
    m->vm = vm;
    m->fd = fd;
    m->stay_paused = stay_paused;
    m->cb = cb;
    m->ud = ud;
    *slot = m;
    /* whole frames only in the guest: let our queued frames reach QEMU first */
    if (uv_timer_init(gd__vm_loop(vm), &m->timer) == 0) {
        m->timer.data = m;
        m->timer_open = 1;
        uv_timer_start(&m->timer, on_drain, 0, 5);
    } else {
        migrate(m);
    }
    return 0;
}

void gd__memsave_stop(gd_vm *vm)
{
    struct gd__memsave *m = *gd__vm_msave(vm);
    if (m)
        finish(m, -ECANCELED, "the VM stopped during the save");
}
