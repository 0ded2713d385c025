/* err.h - rich error messages at boundaries (config, image, CLI). Functions that
 * take a `struct gd_err *` fill it when they return a negative errno. */
#ifndef GD_ERR_H
#define GD_ERR_H

#include <stddef.h>

struct gd_err {
    char msg[1024];
};

/* Formats into e (if non-NULL) and returns `code` (a negative errno). */
/* Puts a formatted prefix before the message already in e. */
void gd_err_prefix(struct gd_err *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int gd_err_set(struct gd_err *e, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Keeps only printable ASCII (and turns newlines into " | "): for untrusted text such
 * as QEMU's stderr or guest messages before they reach a terminal. */
void gd_sanitize(char *dst, size_t cap, const char *src, size_t len);

#endif
