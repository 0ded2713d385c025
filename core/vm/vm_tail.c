/* vm_tail.c - the last bytes QEMU and the guest console wrote, kept to explain a
 * failure in one line. */
#define _GNU_SOURCE
#include "vm_tail.h"

#include "base/err.h"

#include <string.h>

void gd__tail_add(struct tail *t, const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        t->buf[t->pos] = p[i];
        t->pos = (t->pos + 1) % TAIL_CAP;
        if (t->len < TAIL_CAP)
            t->len++;
    }
}

/* The ring's content, oldest byte first, into lin (TAIL_CAP bytes); returns its length. */
static size_t tail_linear(const struct tail *t, char *lin)
{
    size_t start = (t->pos + TAIL_CAP - t->len) % TAIL_CAP;
    for (size_t i = 0; i < t->len; i++)
        lin[i] = t->buf[(start + i) % TAIL_CAP];
    return t->len;
}

/* Last `lines` lines of the ring, sanitized, in dst. */
void gd__tail_get(const struct tail *t, char *dst, size_t cap, int lines)
{
    char lin[TAIL_CAP];
    size_t end = tail_linear(t, lin);
    while (end && (lin[end - 1] == '\n' || lin[end - 1] == '\r'))
        end--;
    size_t b = end;
    int seen = 0;
    while (b > 0) {
        if (lin[b - 1] == '\n' && ++seen >= lines)
            break;
        b--;
    }
    gd_sanitize(dst, cap, lin + b, end - b);
}

/* The line of the ring that explains most, sanitized: the first naming an error, else the
 * first naming KVM, else the last non-empty one. */
void gd__tail_relevant(const struct tail *t, char *dst, size_t cap)
{
    char lin[TAIL_CAP + 1];
    size_t n = tail_linear(t, lin);
    lin[n] = 0;
    const char *best = NULL;
    size_t best_len = 0;
    int best_score = 0;
    for (char *l = lin; l < lin + n;) {
        char *e = memchr(l, '\n', (size_t)(lin + n - l));
        size_t len = e ? (size_t)(e - l) : (size_t)(lin + n - l);
        char save = l[len];
        l[len] = 0;
        int score = strcasestr(l, "error") || strstr(l, "Assertion") ? 3
                    : strcasestr(l, "kvm")                           ? 2
                    : strspn(l, " \t\r") < len                       ? 1
                                                                     : 0;
        l[len] = save;
        if (score > best_score || (score == 1 && best_score == 1)) {
            best = l;
            best_len = len;
            best_score = score;
        }
        l += len + 1;
    }
    if (best)
        gd_sanitize(dst, cap, best, best_len);
    else if (cap)
        dst[0] = 0;
}

int gd__tail_contains(const struct tail *t, const char *needle)
{
    char lin[TAIL_CAP];
    return memmem(lin, tail_linear(t, lin), needle, strlen(needle)) != NULL;
}
