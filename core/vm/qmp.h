/*
 * qmp.h - a QEMU Machine Protocol client on the libuv loop.
 *
 * The channel is one end of a socketpair whose other end QEMU got as
 * `-chardev socket,fd=N -mon chardev=...,mode=control` (no socket files). The client
 * answers the greeting with qmp_capabilities, queues commands until then, matches each
 * reply to its command by id, and passes events to the owner. Commands may carry one
 * file descriptor (SCM_RIGHTS, for getfd). QEMU is semi-trusted: every line is bounded
 * (GD_QMP_MAX_LINE; a longer one closes the channel), replies to unknown ids are
 * ignored, and at most GD_QMP_MAX_PENDING commands are in flight.
 *
 * Errors: functions return 0 or a negative errno; then no callback fires.
 */
#ifndef GD_QMP_H
#define GD_QMP_H

#include <cjson/cJSON.h>
#include <stddef.h>
#include <uv.h>

#define GD_QMP_MAX_LINE (64u * 1024u)
#define GD_QMP_MAX_PENDING 16u

typedef struct gd_qmp gd_qmp;

/* status 0: ret is the command's "return" (borrowed for the call); negative: the
 * command failed (-EIO with err = QEMU's one-line description, borrowed) or the channel
 * went away (-ECANCELED / -EPIPE, err says which). */
typedef void (*gd_qmp_reply_cb)(gd_qmp *q, int status, const cJSON *ret, const char *err, void *ud);
/* name and data (may be NULL) borrowed for the call. */
typedef void (*gd_qmp_event_cb)(gd_qmp *q, const char *name, const cJSON *data, void *ud);

/* Takes ownership of fd (closed by gd_qmp_close). on_event is optional. */
int gd_qmp_new(uv_loop_t *loop, int fd, gd_qmp_event_cb on_event, void *ud, gd_qmp **out);
/* Sends {"execute": cmd, "arguments": args, "id": N}. args is taken (deleted by the
 * call, also on error), may be NULL. send_fd >= 0 rides along (borrowed: QEMU gets a
 * duplicate). cb (optional) fires once. */
int gd_qmp_cmd(gd_qmp *q, const char *cmd, cJSON *args, int send_fd, gd_qmp_reply_cb cb, void *ud);
/* 1 once qmp_capabilities was answered. */
int gd_qmp_ready(const gd_qmp *q);
/* Closes the channel: pending callbacks fire with -ECANCELED now; the object is freed
 * once its handle is closed (closed_cb, optional, then fires). */
void gd_qmp_close(gd_qmp *q, void (*closed_cb)(void *ud), void *ud);

/* ---- migration to a file (booted snapshots, memory snapshots) ---- */

/* {"capabilities": [{"capability": "events", "state": true}]}, owned by the caller. */
cJSON *gd_qmp_events_on(void);
/* Stops the guest and saves its state into fd: migration events on, bandwidth uncapped,
 * stop, getfd (fd as fdname), migrate fd:fdname. cb fires for each reply (errors say the
 * save failed); MIGRATION events tell when it completes. */
int gd_qmp_save_to_fd(gd_qmp *q, int fd, const char *fdname, gd_qmp_reply_cb cb, void *ud);
/* QEMU emits MIGRATION "completed" from its migration thread before that thread moves
 * the run state from finish-migrate to postmigrate; a `cont` in between races with it
 * (QEMU aborts on running -> postmigrate). This polls query-status until the state is
 * another one (at most tries times), then done(ud, 0); done(ud, -EIO) when it never
 * leaves or QMP fails. Nothing fires when the channel closes (-ECANCELED). */
int gd_qmp_after_migration(gd_qmp *q, unsigned tries, void (*done)(void *ud, int status), void *ud);

/* A parsed QMP line (internal, for the fuzz target and the tests). */
enum gd_qmp_kind { GD_QMP_GREETING, GD_QMP_RETURN, GD_QMP_ERROR, GD_QMP_EVENT };
struct gd_qmp_msg {
    enum gd_qmp_kind kind;
    long long id;      /* RETURN/ERROR: our id, -1 if absent or not ours */
    const cJSON *body; /* "return" value / event "data" (may be NULL) */
    char text[256];    /* ERROR: "Class: desc"; EVENT: the event name */
};
/* Parses one line (no newline); *root receives the cJSON tree to delete (NULL on
 * error). Returns 0 or -EBADMSG. */
int gd__qmp_parse(const char *line, size_t n, struct gd_qmp_msg *m, cJSON **root);

#endif
