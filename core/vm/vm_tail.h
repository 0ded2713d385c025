/* vm_tail.h - a ring of the last TAIL_CAP bytes of QEMU's stderr or the guest console
 * (vm.c), and the lines of it that explain a failure. Internal. */
#ifndef GD_VM_TAIL_H
#define GD_VM_TAIL_H

#include <stddef.h>

#define TAIL_CAP 8192

struct tail {
    char buf[TAIL_CAP];
    size_t len; /* ring: the last TAIL_CAP bytes */
    size_t pos;
};

void gd__tail_add(struct tail *t, const char *p, size_t n);
/* Last `lines` lines, sanitized, in dst. */
void gd__tail_get(const struct tail *t, char *dst, size_t cap, int lines);
/* The line that explains most, sanitized: the first naming an error, else the first
 * naming KVM, else the last non-empty one. */
void gd__tail_relevant(const struct tail *t, char *dst, size_t cap);
int gd__tail_contains(const struct tail *t, const char *needle);

#endif
