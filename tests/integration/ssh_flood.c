/*
 * ssh_flood - a hostile SSH client for tests/integration/test_ssh_loop.py: opens an exec
 * through the SSH proxy and, while it runs, floods the channel with requests that want no
 * reply (window-change, signal) and the session with keepalives, to check that the proxy
 * answers and frees each one as it comes instead of queueing it.
 *
 *   gd-ssh-flood PORT USER COMMAND N
 *
 * Prints "open" once the exec's first output arrived, then waits for a line on stdin;
 * sends N of each request, prints "flooded", waits for another line; then writes git's
 * flush packet "0000" (which ends git-upload-pack), EOF, and prints "exit STATUS".
 *
 *   gd-ssh-flood PORT USER - -MIB
 *
 * A negative N: opens a session channel, runs nothing, and writes MIB MiB past the window
 * the proxy gave it (libssh 0.10 honours the window on the sending side, so its
 * remote_window field is forced open: "unsupported" when this libssh's layout differs);
 * prints "sent" or "cut" (the proxy closed the connection).
 */
#include <libssh/libssh.h>
#include <libssh/server.h> /* (ssh_send_keepalive) */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int fail(ssh_session s, const char *what)
{
    fprintf(stderr, "gd-ssh-flood: %s: %s\n", what, ssh_get_error(s));
    return 1;
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: gd-ssh-flood PORT USER COMMAND N\n");
        return 2;
    }
    unsigned port = (unsigned)atoi(argv[1]);
    long n = atol(argv[4]);
    char buf[65536], line[64];
    ssh_session s = ssh_new();
    int no = 0;
    ssh_options_set(s, SSH_OPTIONS_HOST, "127.0.0.1");
    ssh_options_set(s, SSH_OPTIONS_PORT, &port);
    ssh_options_set(s, SSH_OPTIONS_USER, argv[2]);
    ssh_options_set(s, SSH_OPTIONS_PROCESS_CONFIG, &no);
    if (ssh_connect(s) != SSH_OK)
        return fail(s, "connect");
    if (ssh_userauth_none(s, NULL) != SSH_AUTH_SUCCESS)
        return fail(s, "auth");
    ssh_channel ch = ssh_channel_new(s);
    if (n < 0) { /* past the window */
        if (!ch || ssh_channel_open_session(ch) != SSH_OK)
            return fail(s, "open");
        uint32_t *rw = (uint32_t *)(void *)((char *)ch + 28); /* libssh 0.10 remote_window */
        if (*rw != ssh_channel_window_size(ch)) {
            printf("unsupported\n");
            return 0;
        }
        memset(buf, 'A', 32000);
        for (long i = 0; i < -n * 1048576 / 32000; i++) {
            *rw = 0x7fffffff;
            if (ssh_channel_write(ch, buf, 32000) != 32000) {
                printf("cut\n");
                return 0;
            }
        }
        ssh_blocking_flush(s, 10000);
        printf("sent\n");
        fflush(stdout);
        sleep(3); /* (the proxy reads what is in flight) */
        return 0;
    }
    if (!ch || ssh_channel_open_session(ch) != SSH_OK ||
        ssh_channel_request_exec(ch, argv[3]) != SSH_OK)
        return fail(s, "exec");
    if (ssh_channel_read_timeout(ch, buf, sizeof(buf), 0, 30000) <= 0)
        return fail(s, "first output");
    printf("open\n");
    fflush(stdout);
    if (!fgets(line, sizeof(line), stdin))
        return 1;
    for (long i = 0; i < n; i++) {
        if (ssh_channel_change_pty_size(ch, 80 + (int)(i % 50), 24) != SSH_OK ||
            ssh_channel_request_send_signal(ch, "USR1") != SSH_OK)
            return fail(s, "flood");
        if (i % 1000 == 0) /* keepalives want a reply: the proxy answers them */
            ssh_send_keepalive(s);
    }
    printf("flooded\n");
    fflush(stdout);
    if (!fgets(line, sizeof(line), stdin))
        return 1;
    if (ssh_channel_write(ch, "0000", 4) != 4 || ssh_channel_send_eof(ch) != SSH_OK)
        return fail(s, "end");
    while (ssh_channel_read_timeout(ch, buf, sizeof(buf), 0, 30000) > 0)
        ;
    printf("exit %d\n", ssh_channel_get_exit_status(ch));
    ssh_channel_free(ch);
    ssh_disconnect(s);
    ssh_free(s);
    return 0;
}
