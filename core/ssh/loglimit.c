/* loglimit.c - the SSH proxy's log lines under a token bucket: a guest that opens
 * connections in a loop would otherwise write a line each into the supervisor's log
 * without bound. Audit records are not limited (they are not log lines). */
#include "ssh/ssh_int.h"

int gd__ssh_loglimit_take(struct gd__ssh_loglimit *l, uint64_t now_ms, unsigned long *dropped)
{
    if (!l->last_ms)
        l->tokens = GD__SSH_LOG_BURST;
    else if (now_ms > l->last_ms)
        l->tokens += (double)(now_ms - l->last_ms) * GD__SSH_LOG_RATE / 1000.0;
    if (l->tokens > GD__SSH_LOG_BURST)
        l->tokens = GD__SSH_LOG_BURST;
    if (now_ms > l->last_ms || !l->last_ms)
        l->last_ms = now_ms ? now_ms : 1;
    if (l->tokens < 1) {
        l->suppressed++;
        return 0;
    }
    l->tokens -= 1;
    *dropped = l->suppressed;
    l->suppressed = 0;
    return 1;
}
