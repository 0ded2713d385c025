/* gitcmd.c - an SSH exec command parsed strictly as git's transport command (see ssh.h).
 *
 * The grammar is exactly what git's connect.c sends: the service program, one space and
 * the path through sq_quote ('...' with ' written '\'' and ! written '\!'). Anything else
 * is refused rather than interpreted: the upstream side may hand the command to a shell,
 * so the only safe command is one we can re-emit ourselves (gd_ssh_git_command). */
#include "ssh/ssh.h"
#include "ssh/ssh_int.h"

#include <errno.h>
#include <string.h>

static const char *const services[] = {"git-upload-pack", "git-receive-pack", "git-upload-archive"};

#define REFUSE(msg)                                                                                \
    do {                                                                                           \
        if (why)                                                                                   \
            *why = (msg);                                                                          \
        return -EINVAL;                                                                            \
    } while (0)

/* Bytes refused anywhere in a command, even inside the quotes. */
static int bad_byte(unsigned char c)
{
    return c < 0x20 || c == 0x7f || c == ';' || c == '|' || c == '&' || c == '$' || c == '`' ||
           c == '"';
}

/* A path component is non-empty and not "." or "..". */
static int component_ok(const char *p, size_t l)
{
    return l && !(l == 1 && p[0] == '.') && !(l == 2 && p[0] == '.' && p[1] == '.');
}

static int components_ok(const char *s, size_t n)
{
    return gd__ssh_each(s, n, '/', component_ok);
}

int gd_ssh_git_parse(const char *cmd, size_t len, struct gd_ssh_git *out, const char **why)
{
    if (!cmd || !len)
        REFUSE("empty command");
    if (len > 4 * GD_SSH_GIT_PATH_MAX + 64)
        REFUSE("command too long");
    for (size_t i = 0; i < len; i++)
        if (bad_byte((unsigned char)cmd[i]))
            REFUSE("command holds a control byte or one of ; | & $ ` \"");

    /* the service: "git-upload-pack" or "git upload-pack" (git-shell's spelling too) */
    const char *service = NULL;
    size_t i = 0;
    for (size_t k = 0; k < sizeof(services) / sizeof(services[0]); k++) {
        size_t sl = strlen(services[k]);
        if (len > sl && (!memcmp(cmd, services[k], sl) ||
                         (!memcmp(cmd, "git ", 4) && !memcmp(cmd + 4, services[k] + 4, sl - 4)))) {
            service = services[k];
            i = sl;
            break;
        }
    }
    if (!service || cmd[i] != ' ')
        REFUSE("not a git command (git-upload-pack, git-receive-pack or git-upload-archive "
               "followed by one quoted path)");
    i++;
    if (i >= len || cmd[i] != '\'')
        REFUSE("the path must be single-quoted, as git sends it");
    i++;

    /* inside the quotes: any byte but ' \ !; a quote closes, and is either the last byte
     * or the start of one of git's two escapes */
    char path[GD_SSH_GIT_PATH_MAX + 1];
    size_t pl = 0;
    for (;;) {
        if (i >= len)
            REFUSE("unterminated quote");
        char c = cmd[i];
        if (c == '\'') {
            if (i + 1 == len)
                break;
            if (len - i >= 4 && cmd[i + 1] == '\\' && (cmd[i + 2] == '\'' || cmd[i + 2] == '!') &&
                cmd[i + 3] == '\'') {
                c = cmd[i + 2];
                i += 4;
            } else {
                REFUSE("only one quoted path may follow the command (escapes: '\\'' and '\\!')");
            }
        } else if (c == '\\') {
            REFUSE("backslash in the path");
        } else if (c == '!') {
            REFUSE("unescaped ! in the path (git writes '\\!')");
        } else {
            i++;
        }
        if (pl == GD_SSH_GIT_PATH_MAX)
            REFUSE("path longer than 1024 bytes");
        path[pl++] = c;
    }
    path[pl] = 0;
    if (!pl)
        REFUSE("empty path");
    if (path[0] == '-')
        REFUSE("path starts with '-'");

    /* the repo: one leading '/', one trailing '/', then ".git" off */
    const char *r = path;
    size_t rl = pl;
    if (r[0] == '/') {
        r++;
        rl--;
    }
    if (rl && r[rl - 1] == '/')
        rl--;
    if (!rl || !components_ok(r, rl))
        REFUSE("empty, '.' or '..' path component");
    size_t last = rl;
    while (last && r[last - 1] != '/')
        last--;
    if (rl - last > 4 && !memcmp(r + rl - 4, ".git", 4))
        rl -= 4;
    /* "o/..git" would leave the repo "o/." (found by fuzz-gitcmd) */
    if (!components_ok(r + last, rl - last))
        REFUSE("'.' or '..' path component once .git is cut");

    out->service = service;
    memcpy(out->path, path, pl + 1);
    memcpy(out->repo, r, rl);
    out->repo[rl] = 0;
    return 0;
}

long gd_ssh_git_command(const struct gd_ssh_git *g, char *out, size_t cap)
{
    size_t o = 0;
#define PUT(s, n)                                                                                  \
    do {                                                                                           \
        if (cap - o <= (n))                                                                        \
            return -ENOSPC;                                                                        \
        memcpy(out + o, (s), (n));                                                                 \
        o += (n);                                                                                  \
    } while (0)
    if (!cap)
        return -ENOSPC;
    PUT(g->service, strlen(g->service));
    PUT(" '", 2);
    for (const char *p = g->path; *p; p++) {
        if (*p == '\'')
            PUT("'\\''", 4);
        else if (*p == '!')
            PUT("'\\!'", 4);
        else
            PUT(p, 1);
    }
    PUT("'", 1);
#undef PUT
    out[o] = 0;
    return (long)o;
}

int gd_ssh_repo_match(const char *pattern, const char *repo)
{
    const char *p = pattern, *r = repo;
    for (;;) {
        const char *ps = strchr(p, '/'), *rs = strchr(r, '/');
        size_t pl = ps ? (size_t)(ps - p) : strlen(p), rl = rs ? (size_t)(rs - r) : strlen(r);
        if (!gd__ssh_glob(p, pl, r, rl, 0))
            return 0;
        if (!ps || !rs)
            return !ps && !rs;
        p = ps + 1;
        r = rs + 1;
    }
}

int gd_ssh_repo_pattern_check(const char *p)
{
    size_t n = p ? strlen(p) : 0;
    if (!n || n > GD_SSH_GIT_PATH_MAX || p[0] == '/')
        return -EINVAL;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)p[i] < 0x20 || p[i] == 0x7f)
            return -EINVAL;
    /* a repo never ends in ".git" (it is cut off), so such a pattern would never match */
    if (n >= 4 && !memcmp(p + n - 4, ".git", 4))
        return -EINVAL;
    return components_ok(p, n) ? 0 : -EINVAL;
}
