/* progress.c - progress of long build steps: a bar on a terminal, plain lines otherwise. */
#define _GNU_SOURCE
#include "builder.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void amount(char *buf, size_t cap, uint64_t v, int bytes)
{
    if (bytes)
        snprintf(buf, cap, "%.1f MB", (double)v / 1e6);
    else
        snprintf(buf, cap, "%llu", (unsigned long long)v);
}

void gd_progress_begin(struct gd_progress *p, const char *label, uint64_t total, int bytes)
{
    memset(p, 0, sizeof(*p));
    snprintf(p->label, sizeof(p->label), "%s", label);
    p->total = total;
    p->bytes = bytes;
    p->start = now_s();
    const char *e = getenv("GONDOLIN_PROGRESS");
    p->tty = e ? !strcmp(e, "bar") : isatty(STDERR_FILENO);
    if (!p->tty)
        fprintf(stderr, "gondolin: build: %s\n", label);
}

void gd_progress_update(struct gd_progress *p, uint64_t done)
{
    p->done = done;
    if (!p->tty)
        return;
    double t = now_s();
    if (t - p->last < 0.1 && done < p->total)
        return;
    p->last = t;
    char d[32], tot[32];
    amount(d, sizeof(d), done, p->bytes);
    if (p->total) {
        int width = 30, fill = (int)((double)width * (double)(done > p->total ? p->total : done) /
                                     (double)p->total);
        char bar[64];
        for (int i = 0; i < width; i++)
            bar[i] = i < fill ? '#' : '-';
        bar[width] = 0;
        amount(tot, sizeof(tot), p->total, p->bytes);
        fprintf(stderr, "\r\033[K  %-28.28s [%s] %3d%% %s/%s", p->label, bar,
                (int)(100.0 * (double)done / (double)p->total), d, tot);
    } else {
        fprintf(stderr, "\r\033[K  %-28.28s %s", p->label, d);
    }
    fflush(stderr);
}

void gd_progress_end(struct gd_progress *p, const char *result)
{
    double el = now_s() - p->start;
    char d[32];
    amount(d, sizeof(d), p->done, p->bytes);
    if (p->tty)
        fprintf(stderr, "\r\033[K");
    fprintf(stderr, "gondolin: build: %s: %s (%s, %.1f s)\n", p->label, result ? result : "done", d,
            el);
}
