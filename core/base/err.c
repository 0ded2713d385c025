#include "err.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int gd_err_set(struct gd_err *e, int code, const char *fmt, ...)
{
    if (e) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(e->msg, sizeof(e->msg), fmt, ap);
        va_end(ap);
    }
    return code;
}

void gd_err_prefix(struct gd_err *e, const char *fmt, ...)
{
    if (!e)
        return;
    char old[sizeof(e->msg)];
    memcpy(old, e->msg, sizeof(old));
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(e->msg, sizeof(e->msg), fmt, ap);
    va_end(ap);
    if (n >= 0 && (size_t)n < sizeof(e->msg))
        snprintf(e->msg + n, sizeof(e->msg) - (size_t)n, "%s", old);
}

void gd_sanitize(char *dst, size_t cap, const char *src, size_t len)
{
    size_t o = 0;
    if (!cap)
        return;
    for (size_t i = 0; i < len && o + 4 < cap; i++) {
        unsigned char c = (unsigned char)src[i];
        if (c == '\n') {
            if (o && i + 1 < len) {
                memcpy(dst + o, " | ", 3);
                o += 3;
            }
        } else if (c == 0x1b) { /* drop ANSI escape sequences */
            if (i + 1 < len && src[i + 1] == '[') {
                i += 2;
                while (i < len && !(src[i] >= 0x40 && src[i] <= 0x7e))
                    i++;
            }
        } else if (c >= 0x20 && c < 0x7f) {
            dst[o++] = (char)c;
        }
    }
    dst[o] = 0;
}
