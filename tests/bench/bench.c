/*
 * gd-bench - measurements through the C API (driven by tests/bench/bench.py).
 *
 *   gd-bench boot N      VM start -> agent HELLO, and -> first exec reply (exit of `true`)
 *   gd-bench bare N      bare QEMU: same kernel and initramfs, init powers off at once
 *   gd-bench rtt N       warm VM: N protocol pings, N/10 execs of /bin/true (round trips)
 *   gd-bench raw N       raw echo on the same virtio-serial port: N 64-byte round trips,
 *                        then bulk echo throughput
 *   gd-bench tput MIB    stdout throughput of `head -c MIB MiB /dev/zero`
 *   gd-bench rss N       host RSS with 0 and with N running VMs
 * Output: "key value" lines.
 */
#define _GNU_SOURCE
#include "image/image.h"
#include "vm/vm.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static uv_loop_t *loop;
static char image[1024];
static double t0;
static double *samples;
static int nsamples, target;
static size_t bytes;
static int done_flag;

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static int cmpd(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof(double), cmpd);
    return n ? (n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2) : 0;
}

static int bare_mode;

static gd_vm *new_vm(int rawecho)
{
    struct gd_vm_opts o = {.image_dir = image, .rawecho = rawecho, .bare = bare_mode};
    if (getenv("GD_BENCH_CPUS"))
        o.cpus = (unsigned)atoi(getenv("GD_BENCH_CPUS"));
    struct gd_err err;
    gd_vm *vm;
    if (gd_vm_new(loop, &o, &vm, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        exit(1);
    }
    return vm;
}

static void on_exit_vm(gd_vm *vm, const char *reason, void *ud)
{
    (void)vm;
    (void)ud;
    if (bare_mode) { /* QEMU exited: the guest powered off */
        samples[nsamples++] = now_us() - t0;
        return;
    }
    if (reason)
        fprintf(stderr, "vm: %s\n", reason);
}

/* ---- boot ---- */
static double ready_at;
static double *ready_s;

static void boot_exec_exit(gd_exec *x, const struct gd_exec_result *r, void *ud)
{
    (void)x;
    (void)r;
    samples[nsamples] = now_us() - t0;
    ready_s[nsamples++] = ready_at - t0;
    gd_vm_close(ud);
}

static void boot_ready(gd_vm *vm, int st, void *ud)
{
    (void)ud;
    if (st)
        exit(1);
    ready_at = now_us();
    static const char *argv[] = {"true", NULL};
    struct gd_exec_opts o = {.argv = argv};
    struct gd_exec_cbs cbs = {.on_exit = boot_exec_exit};
    gd_exec_start(vm, &o, &cbs, vm, NULL);
}

/* ---- rtt ---- */
static gd_vm *warm;
static double *exec_s;
static int nexec;
static uint8_t payload[64];
static void next_rtt(void);

static void on_pong(gd_vm *vm, int st, void *ud)
{
    (void)vm;
    (void)st;
    (void)ud;
    samples[nsamples++] = now_us() - t0;
    next_rtt();
}

static void rtt_exec_exit(gd_exec *x, const struct gd_exec_result *r, void *ud)
{
    (void)x;
    (void)r;
    (void)ud;
    exec_s[nexec++] = now_us() - t0;
    next_rtt();
}

static void next_rtt(void)
{
    if (nsamples < target) {
        t0 = now_us();
        gd_vm_ping(warm, payload, sizeof(payload), on_pong, NULL);
        return;
    }
    if (nexec < target / 10) {
        static const char *argv[] = {"/bin/true", NULL};
        if (getenv("GD_BENCH_EXEC"))
            argv[0] = getenv("GD_BENCH_EXEC");
        struct gd_exec_opts o = {.argv = argv};
        struct gd_exec_cbs cbs = {.on_exit = rtt_exec_exit};
        t0 = now_us();
        gd_exec_start(warm, &o, &cbs, NULL, NULL);
        return;
    }
    gd_vm_close(warm);
}

static void rtt_ready(gd_vm *vm, int st, void *ud)
{
    (void)vm;
    (void)ud;
    if (st)
        exit(1);
    next_rtt();
}

/* ---- tput ---- */
static void tput_out(gd_exec *x, int s, const uint8_t *d, size_t n, void *ud)
{
    (void)x;
    (void)s;
    (void)d;
    (void)ud;
    bytes += n;
}

static void tput_exit(gd_exec *x, const struct gd_exec_result *r, void *ud)
{
    (void)x;
    (void)r;
    samples[0] = now_us() - t0;
    gd_vm_close(ud);
}

static char tput_cmd[128];

static void tput_ready(gd_vm *vm, int st, void *ud)
{
    (void)ud;
    if (st)
        exit(1);
    struct gd_exec_opts o = {.shell = tput_cmd};
    struct gd_exec_cbs cbs = {.on_output = tput_out, .on_exit = tput_exit};
    t0 = now_us();
    gd_exec_start(vm, &o, &cbs, vm, NULL);
}

/* ---- raw ---- */
static void raw_ready(gd_vm *vm, int st, void *ud)
{
    (void)ud;
    if (st)
        exit(1);
    done_flag = 1;
    (void)vm;
    uv_stop(loop);
}

struct bulk {
    int fd;
    size_t n;
};

static void *bulk_writer(void *arg)
{
    struct bulk *b = arg;
    static uint8_t buf[65536];
    size_t sent = 0;
    while (sent < b->n) {
        ssize_t w = write(b->fd, buf, sizeof(buf));
        if (w <= 0)
            break;
        sent += (size_t)w;
    }
    return NULL;
}

/* ---- rss ---- */
static long rss_kb(void)
{
    FILE *f = fopen("/proc/self/status", "re");
    char line[256];
    long v = 0;
    while (f && fgets(line, sizeof(line), f))
        if (!strncmp(line, "VmRSS:", 6))
            v = atol(line + 6);
    if (f)
        fclose(f);
    return v;
}

static int nready;
static void rss_ready(gd_vm *vm, int st, void *ud)
{
    (void)vm;
    (void)ud;
    if (st)
        exit(1);
    if (++nready == target)
        uv_stop(loop);
}

/* `target` fresh VMs, one after the other; the callbacks record the samples */
static void boots(gd_vm_ready_cb ready)
{
    for (int i = 0; i < target; i++) {
        gd_vm *vm = new_vm(0);
        t0 = now_us();
        gd_vm_start(vm, ready, on_exit_vm, NULL);
        uv_run(loop, UV_RUN_DEFAULT);
        gd_vm_free(vm);
    }
}

int main(int argc, char **argv)
{
    if (argc < 3)
        return 2;
    gd_image_default_dir(image, sizeof(image));
    if (argc > 3)
        snprintf(image, sizeof(image), "%s", argv[3]);
    loop = uv_default_loop();
    target = atoi(argv[2]);
    samples = calloc((size_t)target + 1, sizeof(double));
    const char *mode = argv[1];
    if (!strcmp(mode, "boot")) {
        ready_s = calloc((size_t)target + 1, sizeof(double));
        boots(boot_ready);
        printf("boot_ready_ms %.1f\n", median(ready_s, nsamples) / 1000);
        printf("boot_first_exec_ms %.1f\n", median(samples, nsamples) / 1000);
    } else if (!strcmp(mode, "bare")) {
        bare_mode = 1;
        boots(NULL);
        printf("bare_boot_poweroff_ms %.1f\n", median(samples, nsamples) / 1000);
    } else if (!strcmp(mode, "rtt")) {
        exec_s = calloc((size_t)target / 10 + 1, sizeof(double));
        warm = new_vm(0);
        gd_vm_start(warm, rtt_ready, on_exit_vm, NULL);
        uv_run(loop, UV_RUN_DEFAULT);
        gd_vm_free(warm);
        printf("ping_us %.1f\n", median(samples, nsamples));
        printf("exec_true_us %.1f\n", median(exec_s, nexec));
        printf("n_ping %d\nn_exec %d\n", nsamples, nexec);
    } else if (!strcmp(mode, "raw")) {
        gd_vm *vm = new_vm(1);
        gd_vm_start(vm, raw_ready, on_exit_vm, NULL);
        uv_run(loop, UV_RUN_DEFAULT);
        if (!done_flag)
            return 1;
        int fd = gd_vm_raw_fd(vm);
        uint8_t buf[65536];
        for (int i = 0; i < target; i++) {
            double s = now_us();
            if (write(fd, payload, sizeof(payload)) != (ssize_t)sizeof(payload))
                return 1;
            size_t got = 0;
            while (got < sizeof(payload)) {
                ssize_t r = read(fd, buf, sizeof(payload) - got);
                if (r <= 0)
                    return 1;
                got += (size_t)r;
            }
            samples[nsamples++] = now_us() - s;
        }
        printf("raw_echo_us %.1f\n", median(samples, nsamples));
        struct bulk b = {fd, 128u << 20};
        pthread_t th;
        double s = now_us();
        pthread_create(&th, NULL, bulk_writer, &b);
        size_t got = 0;
        while (got < b.n) {
            ssize_t r = read(fd, buf, sizeof(buf));
            if (r <= 0)
                break;
            got += (size_t)r;
        }
        double el = now_us() - s;
        pthread_join(th, NULL);
        printf("raw_bulk_MBps %.1f\n", got / el);
        gd_vm_close(vm);
        uv_run(loop, UV_RUN_DEFAULT);
        gd_vm_free(vm);
    } else if (!strcmp(mode, "tput")) {
        snprintf(tput_cmd, sizeof(tput_cmd), "head -c %dM /dev/zero", target);
        gd_vm *vm = new_vm(0);
        gd_vm_start(vm, tput_ready, on_exit_vm, NULL);
        uv_run(loop, UV_RUN_DEFAULT);
        gd_vm_free(vm);
        printf("stdout_MBps %.1f\nstdout_bytes %zu\n", bytes / samples[0], bytes);
    } else if (!strcmp(mode, "rss")) {
        long base = rss_kb();
        gd_vm *vms[64];
        for (int i = 0; i < target && i < 64; i++) {
            vms[i] = new_vm(0);
            gd_vm_start(vms[i], rss_ready, on_exit_vm, NULL);
        }
        uv_run(loop, UV_RUN_DEFAULT);
        long with = rss_kb();
        printf("rss_base_kb %ld\nrss_with_kb %ld\nrss_per_vm_kb %.0f\n", base, with,
               (double)(with - base) / target);
        for (int i = 0; i < target && i < 64; i++)
            gd_vm_close(vms[i]);
        uv_run(loop, UV_RUN_DEFAULT);
        for (int i = 0; i < target && i < 64; i++)
            gd_vm_free(vms[i]);
    }
    return 0;
}
