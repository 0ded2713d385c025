/*
 * sockdir.h - the private directory of the proxy's unix sockets (libslirp connects to a
 * path for every forwarded guest connection, so the sockets need names on disk).
 *
 * Nothing may outlive its owner, however the owner ends:
 *   - the name records the owner: gondolin-net-<pid>-<start time>-XXXXXX (the start time,
 *     in clock ticks after boot, tells a live owner from a reused pid);
 *   - a small child (the janitor) holds the read end of a pipe whose only write end the
 *     owner holds; when the owner is gone (even SIGKILLed) it reads EOF, empties and
 *     removes the directory, and exits;
 *   - should the janitor be killed too, the next start removes the directories of owners
 *     that are gone (only this user's, only names of that shape).
 */
#ifndef GD_NET_SOCKDIR_H
#define GD_NET_SOCKDIR_H

#include <stddef.h>
#include <sys/types.h>

struct gd_sockdir {
    char path[108];
    pid_t janitor; /* 0: none */
    int janitor_fd;
};

/* Removes stale directories under the runtime directory, then creates this process's
 * and starts its janitor. 0 or negative errno. */
int gd_sockdir_create(struct gd_sockdir *d);
/* Removes the directory (and whatever is in it) and stops the janitor. */
void gd_sockdir_remove(struct gd_sockdir *d);
/* The runtime directory: $XDG_RUNTIME_DIR if usable and short, else /tmp. */
const char *gd_sockdir_base(void);
/* Removes base/gondolin-net-* directories of this user whose owner is gone. */
void gd_sockdir_clean_stale(const char *base);

#endif
