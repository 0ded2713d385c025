/* channel.c - the host side of the control channel (docs/protocol.md): frames to the
 * agent, frames from it (HELLO, exec sessions' output and exits, PONG), exec sessions. */
#define _GNU_SOURCE
#include "vm_priv.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/sockios.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

/* ---- channel: host -> guest ---- */

struct wreq {
    uv_write_t req;
    uint8_t data[];
};

static void on_written(uv_write_t *r, int status)
{
    gd_vm *vm = r->handle->data;
    free(r);
    if (status < 0 && status != UV_ECANCELED && vm->state == VM_READY)
        gd__vm_failf(vm, "control channel write failed: %s", uv_strerror(status));
}

/* Sends an encoded frame (copied); starting: also before the VM is ready. */
int gd__vm_send_frame_in(gd_vm *vm, const uint8_t *frame, size_t n, int starting)
{
    if (!vm->ctl_open || !(vm->state == VM_READY || (starting && vm->state == VM_STARTING)))
        return -EPIPE;
    struct wreq *w = malloc(sizeof(*w) + n);
    if (!w)
        return -ENOMEM;
    memcpy(w->data, frame, n);
    uv_buf_t b = uv_buf_init((char *)w->data, (unsigned)n);
    int rc = uv_write(&w->req, (uv_stream_t *)&vm->ctl, &b, 1, on_written);
    if (rc) {
        free(w);
        return rc;
    }
    return 0;
}

static int send_frame(gd_vm *vm, const uint8_t *frame, size_t n)
{
    return gd__vm_send_frame_in(vm, frame, n, 0);
}

static int send_enc(gd_vm *vm, struct gd_enc *e)
{
    long n = gd_enc_finish(e);
    if (n < 0)
        return (int)n;
    return send_frame(vm, e->buf, (size_t)n);
}

static int send_u32x2(gd_vm *vm, uint8_t type, uint32_t id, uint32_t a, uint32_t b, int two)
{
    uint8_t buf[32];
    struct gd_enc e;
    gd_enc_init(&e, buf, sizeof(buf), type, 0, id);
    gd_enc_u32(&e, a);
    if (two)
        gd_enc_u32(&e, b);
    return send_enc(vm, &e);
}

/* ---- channel: guest -> host ---- */

static struct gd_exec *find_exec(gd_vm *vm, uint32_t id)
{
    for (struct gd_exec *x = vm->execs; x; x = x->next)
        if (x->id == id)
            return x;
    return NULL;
}

void gd__vm_flush_grants(gd_vm *vm)
{
    for (struct gd_exec *x = vm->execs; x; x = x->next) {
        if (!x->pending[1] && !x->pending[2])
            continue;
        if (send_u32x2(vm, GD_MSG_WINDOW, x->id, x->pending[1], x->pending[2], 1) == 0) {
            x->credit[1] += x->pending[1];
            x->credit[2] += x->pending[2];
        }
        x->pending[1] = x->pending[2] = 0;
    }
}

/* Returns 0, or -1 after failing the VM with a protocol error. */
static int handle_frame(gd_vm *vm, const struct gd_hdr *h, const uint8_t *body)
{
    struct gd_exec *x = h->id ? find_exec(vm, h->id) : NULL;
    const char *tn = gd_msg_type_name(h->type);
    /* before HELLO only a channel-level ERROR (a note: e.g. RESUME could not reseed) */
    if (vm->state == VM_STARTING && h->type != GD_MSG_HELLO &&
        !(h->type == GD_MSG_ERROR && h->id == 0)) {
        gd__vm_failf(vm, "guest protocol error: %s before HELLO", tn);
        return -1;
    }
    switch (h->type) {
    case GD_MSG_HELLO: {
        struct gd_msg_hello m;
        if (gd_dec_hello(body, h->len, &m)) {
            gd__vm_failf(vm, "guest protocol error: malformed HELLO");
            return -1;
        }
        if (vm->state != VM_STARTING) {
            gd__vm_failf(vm, "guest protocol error: HELLO repeated");
            return -1;
        }
        if (m.major != GD_PROTO_MAJOR) {
            gd__vm_failf(vm,
                         "guest agent speaks protocol %u.%u, this host speaks %u.%u: rebuild the "
                         "image (gondolin build --default)",
                         m.major, m.minor, GD_PROTO_MAJOR, GD_PROTO_MINOR);
            return -1;
        }
        gd_sanitize(vm->agent, sizeof(vm->agent), m.agent.p, m.agent.len > 100 ? 100 : m.agent.len);
        vm->agent_minor = m.minor;
        uint8_t buf[128];
        struct gd_enc e;
        gd_enc_init(&e, buf, sizeof(buf), GD_MSG_HELLO, 0, 0);
        gd_enc_u16(&e, GD_PROTO_MAJOR);
        gd_enc_u16(&e, GD_PROTO_MINOR);
        gd_enc_u32(&e, 0);
        gd_enc_str(&e, "gondolin-host", 13);
        long fl = gd_enc_finish(&e);
        if (fl > 0)
            gd__vm_send_frame_in(vm, buf, (size_t)fl, 1);
        /* a booted snapshot may hold the start: saving one, or the restored guest's
         * HELLO answering RESUME still to come */
        if (gd__bootsnap_on_hello(vm->snap))
            return 0;
        vm->state = VM_READY;
        gd__vm_close_handle(vm, (uv_handle_t *)&vm->timer, &vm->timer_open);
        gd__vm_fire_ready(vm, 0);
        return 0;
    }
    case GD_MSG_STARTED: {
        uint32_t pid;
        if (!x || x->started || gd_dec_u32(body, h->len, &pid))
            goto bad;
        x->started = 1;
        if (x->cbs.on_started)
            x->cbs.on_started(x, pid, x->ud);
        return 0;
    }
    case GD_MSG_STDIN_WINDOW: {
        uint32_t g;
        /* the credit is what we may queue toward a guest that does not read: cap it */
        if (!x || gd_dec_u32(body, h->len, &g) || g > MAX_STDIN_CREDIT)
            goto bad;
        x->credit[0] += g;
        if (x->credit[0] > MAX_STDIN_CREDIT)
            goto bad;
        if (x->cbs.on_stdin_credit)
            x->cbs.on_stdin_credit(x, x->credit[0], x->ud);
        return 0;
    }
    case GD_MSG_OUTPUT: {
        if (!x || (h->flags != GD_STREAM_STDOUT && h->flags != GD_STREAM_STDERR) ||
            h->len > GD_PROTO_MAX_CHUNK || h->len > x->credit[h->flags])
            goto bad;
        x->credit[h->flags] -= h->len;
        if (!x->manual_ack)
            x->pending[h->flags] += h->len;
        if (x->cbs.on_output && h->len)
            x->cbs.on_output(x, h->flags, body, h->len, x->ud);
        return 0;
    }
    case GD_MSG_EXIT: {
        struct gd_msg_exit m;
        if (!x || gd_dec_exit(body, h->len, &m))
            goto bad;
        struct gd_exec_result r = {.exit_code = m.signal ? 128 + (int)m.signal : m.code,
                                   .signal = (int)m.signal};
        gd__vm_exec_end(x, &r);
        return 0;
    }
    case GD_MSG_ERROR: {
        struct gd_msg_error m;
        if (gd_dec_error(body, h->len, &m))
            goto bad;
        char msg[512];
        gd_sanitize(msg, sizeof(msg), m.message.p, m.message.len > 400 ? 400 : m.message.len);
        if (!h->id) {
            /* channel-level notes from the agent; capped so a guest cannot flood us */
            if (vm->agent_notes++ < 10)
                fprintf(stderr, "gondolin: guest agent: %s\n", msg);
            return 0;
        }
        if (!x)
            goto bad;
        struct gd_exec_result r = {.error = GD_EXEC_START_FAILED,
                                   .exit_code = m.code == GD_ERR_EXEC_FAILED ? 127 : 126,
                                   .message = msg};
        gd__vm_exec_end(x, &r);
        return 0;
    }
    case GD_MSG_PONG: {
        void (*cb)(gd_vm *, int, void *) = vm->ping_cb;
        if (!cb)
            goto bad;
        vm->ping_cb = NULL;
        cb(vm, 0, vm->ping_ud);
        return 0;
    }
    default:
        goto bad;
    }
bad:
    gd__vm_failf(vm,
                 "guest protocol error: unexpected or malformed %s frame (session %u, %u bytes); "
                 "channel closed",
                 tn, h->id, h->len);
    return -1;
}

static void process_input(gd_vm *vm)
{
    struct gd_hdr h;
    const uint8_t *body;
    int rc;
    if (vm->resync_len) { /* the old host's frames (or the tail of one) come first */
        if (!gd_reader_skip_to(&vm->rd, vm->resync, vm->resync_len))
            return;
        vm->resync_len = 0;
    }
    while (vm->state == VM_STARTING || vm->state == VM_READY) {
        rc = gd_reader_next(&vm->rd, &h, &body);
        if (rc == 0)
            break;
        if (rc < 0) {
            gd__vm_failf(vm, "guest protocol error: %s frame header; channel closed",
                         rc == -EMSGSIZE ? "oversized" : "invalid");
            return;
        }
        if (handle_frame(vm, &h, body))
            return;
    }
    if (vm->state == VM_READY)
        gd__vm_flush_grants(vm);
}

void gd_vm_inject(gd_vm *vm, const uint8_t *p, size_t n)
{
    while (n && (vm->state == VM_STARTING || vm->state == VM_READY)) {
        size_t room;
        uint8_t *dst = gd_reader_space(&vm->rd, &room);
        size_t k = n < room ? n : room;
        if (!k) {
            process_input(vm);
            if (gd_reader_space(&vm->rd, &room) && !room) {
                gd__vm_failf(vm, "guest protocol error: frame larger than the channel buffer");
                return;
            }
            continue;
        }
        memcpy(dst, p, k);
        gd_reader_commit(&vm->rd, k);
        p += k;
        n -= k;
        process_input(vm);
    }
}

void gd__vm_alloc_ctl(uv_handle_t *h, size_t sz, uv_buf_t *b)
{
    (void)sz;
    gd_vm *vm = h->data;
    size_t room;
    b->base = (char *)gd_reader_space(&vm->rd, &room);
    b->len = room;
}

void gd__vm_on_ctl_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    (void)b;
    gd_vm *vm = s->data;
    if (n > 0) {
        gd_reader_commit(&vm->rd, (size_t)n);
        process_input(vm);
    } else if (n < 0) {
        if (vm->state == VM_READY || vm->state == VM_STARTING) {
            /* QEMU closed its end: it is exiting; gd__vm_on_pid_exit explains why */
            if (vm->reaped && !vm->errmsg[0])
                snprintf(vm->errmsg, sizeof(vm->errmsg), "control channel closed by the guest");
            gd__vm_close_handle(vm, (uv_handle_t *)&vm->ctl, &vm->ctl_open);
            if (vm->reaped)
                gd__vm_stop(vm, SIGKILL);
        }
    }
}

/* rawecho: ready when the agent's single ready byte arrives */
void gd__vm_on_raw_ready(uv_poll_t *p, int status, int events)
{
    (void)events;
    gd_vm *vm = p->data;
    char c;
    if (status < 0 || read(vm->raw_fd, &c, 1) != 1 || c != 'R') {
        gd__vm_failf(vm, "raw echo agent did not start");
        return;
    }
    vm->state = VM_READY;
    gd__vm_close_handle(vm, (uv_handle_t *)&vm->timer, &vm->timer_open);
    gd__vm_close_handle(vm, (uv_handle_t *)p, &vm->raw_poll_open);
    int fl = fcntl(vm->raw_fd, F_GETFL); /* uv_poll made it non-blocking */
    fcntl(vm->raw_fd, F_SETFL, fl & ~O_NONBLOCK);
    gd__vm_fire_ready(vm, 0);
}

int gd_vm_ping(gd_vm *vm, const void *data, size_t n, void (*cb)(gd_vm *, int, void *), void *ud)
{
    if (vm->ping_cb)
        return -EBUSY;
    if (n > GD_PROTO_MAX_CHUNK)
        return -EMSGSIZE;
    uint8_t buf[GD_PROTO_HDR_LEN + 256];
    uint8_t *p = n <= 256 ? buf : malloc(GD_PROTO_HDR_LEN + n);
    if (!p)
        return -ENOMEM;
    struct gd_enc e;
    gd_enc_init(&e, p, GD_PROTO_HDR_LEN + n, GD_MSG_PING, 0, 0);
    gd_enc_bytes(&e, data, n);
    int rc = send_enc(vm, &e);
    if (p != buf)
        free(p);
    if (rc == 0) {
        vm->ping_cb = cb;
        vm->ping_ud = ud;
    }
    return rc;
}

/* ---- exec ---- */

uint32_t gd_exec_id(const gd_exec *x)
{
    return x->id;
}
size_t gd_exec_stdin_credit(const gd_exec *x)
{
    return x->credit[0];
}

int gd_exec_start(gd_vm *vm, const struct gd_exec_opts *o, const struct gd_exec_cbs *cbs, void *ud,
                  gd_exec **out)
{
    if (vm->state != VM_READY)
        return -ENOTCONN;
    char port[8];
    const char *tunnel_argv[] = {port, NULL};
    struct gd_exec_opts tunnel;
    if (o->connect_port) {
        if (o->connect_port > 65535)
            return -EINVAL;
        if (vm->agent_minor < 1)
            return -ENOTSUP; /* tunnels came with protocol 1.1 */
        snprintf(port, sizeof(port), "%u", o->connect_port);
        tunnel = (struct gd_exec_opts){.argv = tunnel_argv,
                                       .window = o->window,
                                       .manual_ack = o->manual_ack,
                                       .stdin_stream = 1,
                                       .connect_port = o->connect_port};
        o = &tunnel;
    }
    if (!o->argv && !o->shell)
        return -EINVAL;
    if (o->argv && !o->argv[0])
        return -EINVAL;
    struct gd_exec *x = calloc(1, sizeof(*x));
    if (!x)
        return -ENOMEM;
    x->vm = vm;
    x->id = vm->next_id++;
    if (!vm->next_id)
        vm->next_id = 1;
    x->cbs = *cbs;
    x->ud = ud;
    x->window = o->window ? o->window : DEFAULT_WINDOW;
    x->manual_ack = o->manual_ack;
    x->credit[1] = x->credit[2] = x->window;

    size_t cap = 256;
    const char *const *v;
    for (v = o->argv; v && *v; v++)
        cap += 4 + strlen(*v);
    for (v = o->env; v && *v; v++)
        cap += 4 + strlen(*v);
    cap += o->shell ? 4 + strlen(o->shell) : 0;
    cap += o->cwd ? strlen(o->cwd) : 0;
    if (cap > GD_PROTO_HDR_LEN + GD_PROTO_MAX_BODY) {
        free(x);
        return -E2BIG;
    }
    uint8_t *buf = malloc(cap);
    if (!buf) {
        free(x);
        return -ENOMEM;
    }
    uint32_t flags = (o->pty ? GD_EXEC_PTY : 0) | (o->stdin_stream ? GD_EXEC_STDIN : 0) |
                     (o->shell ? GD_EXEC_SHELL : 0) | (o->connect_port ? GD_EXEC_CONNECT : 0);
    struct gd_enc e;
    gd_enc_init(&e, buf, cap, GD_MSG_EXEC, 0, x->id);
    gd_enc_u32(&e, flags);
    gd_enc_u32(&e, x->window);
    gd_enc_u32(&e, x->window);
    gd_enc_u16(&e, (uint16_t)(o->rows > 0xffff ? 0xffff : o->rows));
    gd_enc_u16(&e, (uint16_t)(o->cols > 0xffff ? 0xffff : o->cols));
    if (o->shell) {
        gd_enc_u32(&e, 1);
        gd_enc_str(&e, o->shell, strlen(o->shell));
    } else {
        uint32_t argc = 0;
        for (v = o->argv; *v; v++)
            argc++;
        gd_enc_u32(&e, argc);
        for (v = o->argv; *v; v++)
            gd_enc_str(&e, *v, strlen(*v));
    }
    uint32_t envc = 0;
    for (v = o->env; v && *v; v++) {
        if (!strchr(*v, '=') || **v == '=') {
            free(buf);
            free(x);
            return -EINVAL;
        }
        envc++;
    }
    gd_enc_u32(&e, envc);
    for (v = o->env; v && *v; v++)
        gd_enc_str(&e, *v, strlen(*v));
    gd_enc_str(&e, o->cwd ? o->cwd : "", o->cwd ? strlen(o->cwd) : 0);
    int rc = send_enc(vm, &e);
    free(buf);
    if (rc) {
        free(x);
        return rc;
    }
    x->next = vm->execs;
    vm->execs = x;
    if (out)
        *out = x;
    return 0;
}

long gd_exec_write(gd_exec *x, const void *data, size_t n, int eof)
{
    gd_vm *vm = x->vm;
    size_t k = n;
    if (k > x->credit[0])
        k = x->credit[0];
    if (k > GD_PROTO_MAX_CHUNK)
        k = GD_PROTO_MAX_CHUNK;
    if (k == 0 && !(eof && n == 0))
        return 0;
    int send_eof = eof && k == n;
    uint8_t *buf = malloc(GD_PROTO_HDR_LEN + k);
    if (!buf)
        return -ENOMEM;
    struct gd_enc e;
    gd_enc_init(&e, buf, GD_PROTO_HDR_LEN + k, GD_MSG_STDIN, send_eof ? GD_STDIN_EOF : 0, x->id);
    gd_enc_bytes(&e, data, k);
    int rc = send_enc(vm, &e);
    free(buf);
    if (rc)
        return rc;
    x->credit[0] -= (uint32_t)k;
    return (long)k;
}

int gd_exec_signal(gd_exec *x, int sig)
{
    if (sig <= 0 || sig >= 65)
        return -EINVAL;
    return send_u32x2(x->vm, GD_MSG_SIGNAL, x->id, (uint32_t)sig, 0, 0);
}

int gd_exec_resize(gd_exec *x, unsigned rows, unsigned cols)
{
    uint8_t buf[32];
    struct gd_enc e;
    gd_enc_init(&e, buf, sizeof(buf), GD_MSG_RESIZE, 0, x->id);
    gd_enc_u16(&e, (uint16_t)(rows > 0xffff ? 0xffff : rows));
    gd_enc_u16(&e, (uint16_t)(cols > 0xffff ? 0xffff : cols));
    return send_enc(x->vm, &e);
}

void gd_exec_ack(gd_exec *x, int stream, size_t n)
{
    if (stream != 1 && stream != 2)
        return;
    x->pending[stream] += (uint32_t)n;
    gd__vm_flush_grants(x->vm);
}

/* ---- test support ---- */

int gd__vm_attach_fd(uv_loop_t *loop, int fd, gd_vm **out, gd_vm_ready_cb ready,
                     gd_vm_exit_cb exit_cb, void *ud)
{
    gd_vm *vm = gd__vm_alloc(loop);
    if (!vm)
        return -ENOMEM;
    vm->reaped = 1; /* no QEMU behind this channel */
    vm->ready_cb = ready;
    vm->exit_cb = exit_cb;
    vm->ud = ud;
    uv_pipe_init(loop, &vm->ctl, 0);
    vm->ctl.data = vm;
    int rc = uv_pipe_open(&vm->ctl, fd);
    if (rc) {
        free(vm->rbuf);
        free(vm);
        return rc;
    }
    vm->ctl_open = 1;
    vm->state = VM_STARTING;
    uv_read_start((uv_stream_t *)&vm->ctl, gd__vm_alloc_ctl, gd__vm_on_ctl_read);
    *out = vm;
    return 0;
}
