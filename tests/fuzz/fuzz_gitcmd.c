/* libFuzzer target: an SSH exec command from the guest through the strict git parser.
 * An accepted command must round-trip (re-quoted, parsed again: the same service, path
 * and repo), hold none of the refused bytes, and its repo no "." or ".." component; the
 * input is also tried as a repo pattern. */
#include "ssh/ssh.h"

#include <stdint.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n);
int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n)
{
    struct gd_ssh_git g, g2;
    const char *why = NULL;
    char pat[256];
    size_t pn = n < sizeof(pat) - 1 ? n : sizeof(pat) - 1;
    memcpy(pat, d, pn);
    pat[pn] = 0;
    if (gd_ssh_repo_pattern_check(pat) == 0)
        gd_ssh_repo_match(pat, "org/repo");
    if (gd_ssh_git_parse((const char *)d, n, &g, &why)) {
        if (!why || !*why)
            __builtin_trap();
        return 0;
    }
    size_t pl = strlen(g.path);
    if (!pl || pl > GD_SSH_GIT_PATH_MAX || strpbrk(g.path, ";|&$`\"\\\n") || g.path[0] == '-')
        __builtin_trap();
    if (!strcmp(g.repo, "..") || !strncmp(g.repo, "../", 3) || strstr(g.repo, "/../") ||
        strstr(g.repo, "//") ||
        (strlen(g.repo) >= 3 && !strcmp(g.repo + strlen(g.repo) - 3, "/..")))
        __builtin_trap();
    char cmd[8192];
    long cl = gd_ssh_git_command(&g, cmd, sizeof(cmd));
    if (cl < 0 || gd_ssh_git_parse(cmd, (size_t)cl, &g2, &why) || g.service != g2.service ||
        strcmp(g.path, g2.path) || strcmp(g.repo, g2.repo))
        __builtin_trap();
    if (!gd_ssh_repo_match(g.repo, g.repo) && !strpbrk(g.repo, "*?"))
        __builtin_trap();
    return 0;
}
