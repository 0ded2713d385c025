#include "test.h"

#include <sys/wait.h>
#include <unistd.h>

static struct test_case cases[512];
static int ncases;

void test_register(const char *name, test_fn fn)
{
    if (ncases < 512)
        cases[ncases++] = (struct test_case){name, fn};
}

int main(int argc, char **argv)
{
    int failed = 0, run = 0;
    for (int i = 0; i < ncases; i++) {
        if (argc > 1 && !strstr(cases[i].name, argv[1]))
            continue;
        run++;
        fflush(NULL);
        pid_t p = fork();
        if (p == 0) {
            cases[i].fn();
            fflush(NULL);
            exit(0); /* not _exit: LeakSanitizer checks at exit, and a leak fails the test */
        }
        int st;
        waitpid(p, &st, 0);
        int ok = WIFEXITED(st) && WEXITSTATUS(st) == 0;
        printf("%s %s\n", ok ? "ok  " : "FAIL", cases[i].name);
        if (!ok)
            failed++;
    }
    printf("%d tests, %d passed, %d failed\n", run, run - failed, failed);
    return failed ? 1 : 0;
}
