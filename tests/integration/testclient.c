/*
 * testclient - drives a real VM through the C API for the integration tests.
 *
 *   gd-testclient MODE [IMAGE_DIR]
 *
 * modes (each prints what it checked and exits 0 on success):
 *   concurrent   8 concurrent execs, each prints its own tag lines: output is separated
 *   flow         a fast producer against a consumer that does not ack: the host gets no
 *                more than the credit window until it acks, then the rest
 *   signal       SIGTERM to a running guest process ends it with 128+15
 *   close        gd_vm_close with processes running: execs fail cleanly, QEMU is gone
 *   inject       malformed bytes on a live channel: the VM is closed with a protocol error
 *   stdin        64 KiB... 4 MiB of stdin through `sha256sum`, credit-limited
 */
#define _GNU_SOURCE
#include "image/image.h"
#include "vm/vm.h"

#include <openssl/evp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define N_CONC 8

static const char *mode;
static uv_loop_t *loop;
static gd_vm *vm;
static int failures, pending;
static char vm_reason[1024];
static int vm_exited;

#define EXPECT(c, ...)                                                                             \
    do {                                                                                           \
        if (!(c)) {                                                                                \
            fprintf(stderr, "FAIL: " __VA_ARGS__);                                                 \
            fputc('\n', stderr);                                                                   \
            failures++;                                                                            \
        }                                                                                          \
    } while (0)

struct job {
    int idx;
    char out[65536];
    size_t outn;
    size_t errn;
    int code, error;
    gd_exec *x;
    size_t total;
    uint64_t unacked;
};
static struct job jobs[N_CONC];

static void on_out(gd_exec *x, int stream, const uint8_t *d, size_t n, void *ud)
{
    (void)x;
    struct job *j = ud;
    j->total += n;
    if (stream == 2) {
        j->errn += n;
        return;
    }
    if (j->outn + n < sizeof(j->out)) {
        memcpy(j->out + j->outn, d, n);
        j->outn += n;
    }
    j->unacked += n;
}

static void on_exit_cb(gd_exec *x, const struct gd_exec_result *r, void *ud)
{
    (void)x;
    struct job *j = ud;
    j->code = r->exit_code;
    j->error = r->error;
    j->x = NULL;
    if (--pending == 0 && strcmp(mode, "close"))
        gd_vm_close(vm);
}

static struct gd_exec_cbs cbs = {.on_output = on_out, .on_exit = on_exit_cb};

/* ---- flow ---- */
static uv_timer_t t1;
static size_t at_pause;

static void flow_ack(uv_timer_t *t)
{
    (void)t;
    struct job *j = &jobs[0];
    at_pause = j->total;
    printf("flow: %zu bytes received while unacked (window 65536)\n", at_pause);
    EXPECT(at_pause <= 65536, "host received %zu bytes beyond the 64 KiB window", at_pause);
    EXPECT(at_pause > 0, "nothing received before the pause");
    if (j->x)
        gd_exec_signal(j->x, SIGKILL);
    /* from now on ack everything: the producer finishes */
    if (j->x)
        gd_exec_ack(j->x, 1, j->unacked);
}

static void flow_out(gd_exec *x, int stream, const uint8_t *d, size_t n, void *ud)
{
    on_out(x, stream, d, n, ud);
    if (at_pause)
        gd_exec_ack(x, stream, n);
}

/* ---- close ---- */
static void close_now(uv_timer_t *t)
{
    (void)t;
    gd_vm_close(vm);
}

/* ---- stdin ---- */
static uint8_t *in_data;
static size_t in_len = 4u << 20, in_off;

static void stdin_credit(gd_exec *x, size_t credit, void *ud)
{
    (void)credit;
    (void)ud;
    while (in_off < in_len) {
        long k = gd_exec_write(x, in_data + in_off, in_len - in_off, 1);
        if (k <= 0)
            break;
        in_off += (size_t)k;
    }
}

static void on_ready(gd_vm *v, int status, void *ud)
{
    (void)ud;
    if (status)
        return;
    if (!strcmp(mode, "concurrent")) {
        for (int i = 0; i < N_CONC; i++) {
            char cmd[256];
            snprintf(cmd, sizeof(cmd),
                     "for k in 1 2 3 4 5 6 7 8 9 10; do echo job%d-line$k; done; echo job%d-err "
                     ">&2; sleep 0.$((%d %% 3)); exit %d",
                     i, i, i, i);
            struct gd_exec_opts o = {.shell = cmd};
            jobs[i].idx = i;
            if (gd_exec_start(v, &o, &cbs, &jobs[i], &jobs[i].x) == 0)
                pending++;
        }
    } else if (!strcmp(mode, "flow")) {
        static const char *argv[] = {"sh", "-c", "cat /dev/zero", NULL};
        struct gd_exec_opts o = {.argv = argv, .window = 65536, .manual_ack = 1};
        static struct gd_exec_cbs fc = {.on_output = flow_out, .on_exit = on_exit_cb};
        if (gd_exec_start(v, &o, &fc, &jobs[0], &jobs[0].x) == 0)
            pending++;
        uv_timer_init(loop, &t1);
        uv_timer_start(&t1, flow_ack, 2500, 0);
    } else if (!strcmp(mode, "signal")) {
        static const char *argv[] = {"sleep", "1000", NULL};
        struct gd_exec_opts o = {.argv = argv};
        if (gd_exec_start(v, &o, &cbs, &jobs[0], &jobs[0].x) == 0)
            pending++;
        gd_exec_signal(jobs[0].x, SIGTERM);
    } else if (!strcmp(mode, "close")) {
        for (int i = 0; i < 3; i++) {
            static const char *argv[] = {"sleep", "1000", NULL};
            struct gd_exec_opts o = {.argv = argv};
            if (gd_exec_start(v, &o, &cbs, &jobs[i], &jobs[i].x) == 0)
                pending++;
        }
        uv_timer_init(loop, &t1);
        uv_timer_start(&t1, close_now, 500, 0);
    } else if (!strcmp(mode, "inject")) {
        static const char *argv[] = {"sleep", "1000", NULL};
        struct gd_exec_opts o = {.argv = argv};
        if (gd_exec_start(v, &o, &cbs, &jobs[0], &jobs[0].x) == 0)
            pending++;
        uint8_t junk[12] = {5, 0, 0, 0, 77, 0, 0, 0, 1, 0, 0, 0}; /* unknown type 77 */
        gd_vm_inject(v, junk, sizeof(junk));
    } else if (!strcmp(mode, "stdin")) {
        in_data = malloc(in_len);
        for (size_t i = 0; i < in_len; i++)
            in_data[i] = (uint8_t)(i * 7 + (i >> 13));
        static const char *argv[] = {"sha256sum", NULL};
        struct gd_exec_opts o = {.argv = argv, .stdin_stream = 1};
        static struct gd_exec_cbs sc = {
            .on_output = on_out, .on_exit = on_exit_cb, .on_stdin_credit = stdin_credit};
        if (gd_exec_start(v, &o, &sc, &jobs[0], &jobs[0].x) == 0)
            pending++;
    }
}

static void on_vm_exit(gd_vm *v, const char *reason, void *ud)
{
    (void)v;
    (void)ud;
    vm_exited = 1;
    snprintf(vm_reason, sizeof(vm_reason), "%s", reason ? reason : "");
    if (!uv_is_closing((uv_handle_t *)&t1) && t1.loop)
        uv_close((uv_handle_t *)&t1, NULL);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: gd-testclient MODE [IMAGE]\n");
        return 2;
    }
    mode = argv[1];
    char dir[1024];
    if (argc > 2)
        snprintf(dir, sizeof(dir), "%s", argv[2]);
    else
        gd_image_default_dir(dir, sizeof(dir));
    loop = uv_default_loop();
    struct gd_vm_opts o = {.image_dir = dir};
    struct gd_err err;
    if (gd_vm_new(loop, &o, &vm, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    if (gd_vm_start(vm, on_ready, on_vm_exit, NULL))
        return 1;
    uv_run(loop, UV_RUN_DEFAULT);

    if (!strcmp(mode, "concurrent")) {
        for (int i = 0; i < N_CONC; i++) {
            char want[1024] = "";
            for (int k = 1; k <= 10; k++) {
                size_t l = strlen(want);
                snprintf(want + l, sizeof(want) - l, "job%d-line%d\n", i, k);
            }
            EXPECT(jobs[i].outn == strlen(want) && !memcmp(jobs[i].out, want, jobs[i].outn),
                   "job %d stdout mixed or incomplete: %.*s", i, (int)jobs[i].outn, jobs[i].out);
            EXPECT(jobs[i].errn == strlen("jobN-err\n"), "job %d stderr %zu bytes", i,
                   jobs[i].errn);
            EXPECT(jobs[i].code == i, "job %d exit %d", i, jobs[i].code);
        }
        printf("concurrent: %d execs, separated output and exit codes\n", N_CONC);
    } else if (!strcmp(mode, "flow")) {
        EXPECT(jobs[0].code == 137, "flow: producer exit %d, want 137 (SIGKILL)", jobs[0].code);
    } else if (!strcmp(mode, "signal")) {
        EXPECT(jobs[0].code == 143, "signal: exit %d, want 143", jobs[0].code);
        printf("signal: guest process ended with %d\n", jobs[0].code);
    } else if (!strcmp(mode, "close")) {
        for (int i = 0; i < 3; i++)
            EXPECT(jobs[i].error == GD_EXEC_VM_GONE, "close: exec %d error %d", i, jobs[i].error);
        EXPECT(vm_exited && vm_reason[0] == 0, "close: exit reason '%s'", vm_reason);
        printf("close: 3 running execs ended with VM_GONE\n");
    } else if (!strcmp(mode, "inject")) {
        EXPECT(strstr(vm_reason, "protocol error") != NULL, "inject: reason '%s'", vm_reason);
        EXPECT(jobs[0].error == GD_EXEC_VM_GONE, "inject: exec error %d", jobs[0].error);
        printf("inject: %s\n", vm_reason);
    } else if (!strcmp(mode, "stdin")) {
        unsigned char md[32];
        unsigned ml;
        EVP_Digest(in_data, in_len, md, &ml, EVP_sha256(), NULL);
        char hex[65];
        for (int i = 0; i < 32; i++)
            sprintf(hex + 2 * i, "%02x", md[i]);
        EXPECT(jobs[0].outn >= 64 && !memcmp(jobs[0].out, hex, 64),
               "stdin: guest sha %.64s, want %s", jobs[0].out, hex);
        EXPECT(jobs[0].code == 0, "stdin: exit %d", jobs[0].code);
        printf("stdin: %zu bytes, sha256 equal\n", in_len);
        free(in_data);
    } else {
        fprintf(stderr, "unknown mode %s\n", mode);
        failures++;
    }
    gd_vm_free(vm);
    uv_loop_close(loop);
    return failures ? 1 : 0;
}
