/* cli.h - shared pieces of the gondolin command-line tool. */
#ifndef GD_CLI_H
#define GD_CLI_H

#include "vm/vm.h"

#include <stddef.h>

struct cli_vm_flags {
    const char *image;
    const char *accel;
    unsigned memory_mb;
    unsigned cpus;
    int verbose;
};

/* Parses a VM flag at argv[*i] (advancing *i past its value). 1 if consumed, 0 if not
 * a VM flag, -1 on a bad value (message printed). */
int cli_vm_flag(int argc, char **argv, int *i, struct cli_vm_flags *f);
/* Finds (and on first use builds) the image to boot; prints a one-line error. */
int cli_image_dir(const struct cli_vm_flags *f, char *out, size_t cap);
int cli_die(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

int cmd_exec(int argc, char **argv, int pty);
int cmd_doctor(int argc, char **argv);

#endif
