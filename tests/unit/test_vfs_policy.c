/* The policy side of files: the mounts key, on_fs / on_fs_done, Lua providers and plugin
 * fs hooks and providers, called from a second thread while the loop runs (as transport
 * threads will), the bridge's stop, and the fs audit lines. */
#define _GNU_SOURCE
#include "test.h"

#include "engine/engine_int.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <sys/stat.h>
#include <unistd.h>

struct fx {
    char dir[64], policy[128], audit[128];
    uv_loop_t loop;
    uv_async_t stop;
    gd_engine *e;
    void (*fn)(struct fx *);
    char log[8192];
    pthread_mutex_t mu;
};

static void fx_log(void *ud, const char *msg)
{
    struct fx *f = ud;
    pthread_mutex_lock(&f->mu);
    snprintf(f->log + strlen(f->log), sizeof(f->log) - strlen(f->log), "%s\n", msg);
    pthread_mutex_unlock(&f->mu);
}

static void write_file(const char *path, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void write_file(const char *path, const char *fmt, ...)
{
    char tmp[300];
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    CHECK(f);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(f, fmt, ap);
    va_end(ap);
    fclose(f);
    CHECK(rename(tmp, path) == 0);
}

static char *read_all(const char *path)
{
    static char buf[1 << 20];
    FILE *f = fopen(path, "r");
    if (!f)
        return NULL;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = 0;
    return buf;
}

/* An engine for a policy text, with --audit FILE (--audit-fs when audit_fs). */
static int fx_new(struct fx *f, const char *text, int audit_fs, struct gd_err *err)
{
    memset(f, 0, sizeof(*f));
    pthread_mutex_init(&f->mu, NULL);
    snprintf(f->dir, sizeof(f->dir), "/tmp/gd-vfspol-XXXXXX");
    CHECK(mkdtemp(f->dir));
    snprintf(f->policy, sizeof(f->policy), "%s/p.lua", f->dir);
    snprintf(f->audit, sizeof(f->audit), "%s/audit.jsonl", f->dir);
    write_file(f->policy, "%s", text);
    struct gd_egress base = {0};
    CHECK(gd_egress_audit(&base, f->audit, NULL) == 0);
    gd_egress_audit_fs(&base, audit_fs);
    base.quiet = 1;
    struct gd_engine_opts o = {.policy = f->policy,
                               .base = &base,
                               .lua_dir = GD_TEST_LUA_DIR,
                               .quiet = 1,
                               .log = fx_log,
                               .log_ud = f};
    int rc = gd_engine_new(&o, &f->e, err);
    gd_egress_free(&base);
    return rc;
}

static void fx_cleanup(struct fx *f)
{
    gd_engine_free(f->e);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", f->dir);
    CHECK(system(cmd) == 0);
}

static void on_stop(uv_async_t *a)
{
    struct fx *f = a->data;
    gd_engine_close(f->e);
    uv_close((uv_handle_t *)a, NULL);
}

static void *worker(void *p)
{
    struct fx *f = p;
    f->fn(f);
    uv_async_send(&f->stop);
    return NULL;
}

/* Runs fn on a second thread while this thread runs the loop with the bridge started. */
static void fx_run(struct fx *f, void (*fn)(struct fx *))
{
    CHECK(uv_loop_init(&f->loop) == 0);
    CHECK(gd_engine_vfs_start(f->e, &f->loop) == 0);
    CHECK(uv_async_init(&f->loop, &f->stop, on_stop) == 0);
    f->stop.data = f;
    f->fn = fn;
    pthread_t th;
    CHECK(pthread_create(&th, NULL, worker, f) == 0);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    pthread_join(th, NULL);
    CHECK(uv_loop_close(&f->loop) == 0);
}

static struct gd_vfs_event ev_open(const char *path, int flags)
{
    return (struct gd_vfs_event){.mount = "/workspace",
                                 .op = "open",
                                 .path = path,
                                 .flags = flags,
                                 .mutating = (flags & O_ACCMODE) != O_RDONLY};
}

/* ---- hooks ---- */

static const char *const LOCK_POLICY =
    "local n = 0\n"
    "return {\n"
    "  mounts = { ['/workspace'] = { hostfs = '.', hide = { '.env', '*.pem' } } },\n"
    "  on_fs = function(op, ctx)\n"
    "    if ctx.path:match('%.lock$') and ctx:writing() then\n"
    "      return ctx:deny('EACCES', 'lock files are read-only')\n"
    "    end\n"
    "    if ctx.path == '/workspace/ro' then return ctx:deny(30) end\n"
    "    if ctx.path == '/workspace/seen' then\n"
    "      return ctx:deny('EPERM', n .. ' ' .. ctx.mount .. ' ' .. tostring(ctx.result))\n"
    "    end\n"
    "  end,\n"
    "  on_fs_done = function(op, ctx)\n"
    "    n = n + 1\n"
    "    if ctx.result ~= 0 then n = n + 100 end\n"
    "  end,\n"
    "}\n";

static void lock_ops(struct fx *f)
{
    struct gd_vfs_hooks h;
    CHECK(gd_engine_vfs_hooks(f->e, "/workspace", &h) == 0);
    char reason[200];
    struct gd_vfs_event ev = ev_open("/workspace/a.lock", O_WRONLY | O_TRUNC);
    CHECK_EQ(h.before(h.ud, &ev, reason, sizeof(reason)), -EACCES);
    CHECK_STR(reason, "lock files are read-only");
    ev = ev_open("/workspace/a.lock", O_RDONLY);
    CHECK_EQ(h.before(h.ud, &ev, reason, sizeof(reason)), 0);
    ev = ev_open("/workspace/ro", O_RDONLY);
    CHECK_EQ(h.before(h.ud, &ev, reason, sizeof(reason)), -EROFS);
    CHECK_STR(reason, "denied by policy");
    /* after: two operations, one failed */
    ev = ev_open("/workspace/b.txt", O_WRONLY);
    ev.result = 0;
    h.after(h.ud, &ev);
    ev.result = -ENOSPC;
    h.after(h.ud, &ev);
    ev = ev_open("/workspace/seen", O_RDONLY);
    CHECK_EQ(h.before(h.ud, &ev, reason, sizeof(reason)), -EPERM);
    CHECK_STR(reason, "102 /workspace nil"); /* ctx.result is for on_fs_done only */
}

TEST(vfs_policy_hooks_from_thread)
{
    struct fx f;
    struct gd_err err = {{0}};
    if (fx_new(&f, LOCK_POLICY, 1, &err))
        FAIL_AT("%s", err.msg);
    fx_run(&f, lock_ops);
    char *a = read_all(f.audit);
    CHECK(a);
    CHECK_CONTAINS(a, "{\"type\":\"fs\"");
    CHECK_CONTAINS(a, "\"op\":\"open\",\"path\":\"/workspace/a.lock\",\"path2\":null,"
                      "\"decision\":\"deny\",\"rule\":\"p.lua:4\",\"reason\":\"lock files are "
                      "read-only\",\"errno\":\"EACCES\",\"revision\":\"");
    CHECK_CONTAINS(a, "\"path\":\"/workspace/b.txt\",\"path2\":null,\"decision\":\"allow\","
                      "\"rule\":null,\"errno\":null");
    CHECK_CONTAINS(a, "\"decision\":\"allow\",\"rule\":null,\"errno\":\"ENOSPC\"");
    CHECK_CONTAINS(a, gd_engine_revision(f.e));
    /* a read-only open passed and is no mutating operation: no line */
    int lines = 0;
    for (char *c = a; *c; c++)
        lines += *c == '\n';
    CHECK_EQ(lines, 5); /* 3 denials, 2 mutating operations */
    fx_cleanup(&f);
}

static void error_ops(struct fx *f)
{
    struct gd_vfs_hooks h;
    CHECK(gd_engine_vfs_hooks(f->e, "/w", &h) == 0);
    char reason[300];
    struct gd_vfs_event ev = ev_open("/w/x", O_RDONLY);
    CHECK_EQ(h.before(h.ud, &ev, reason, sizeof(reason)), -EACCES);
    CHECK_CONTAINS(reason, "error in on_fs (p.lua:4)");
    CHECK_CONTAINS(reason, "boom");
    ev.path = "/w/loop";
    CHECK_EQ(h.before(h.ud, &ev, reason, sizeof(reason)), -EACCES);
    CHECK_CONTAINS(reason, "CPU budget");
    ev.path = "/w/badcall";
    CHECK_EQ(h.before(h.ud, &ev, reason, sizeof(reason)), -EACCES);
    CHECK_CONTAINS(reason, "errno must be a name");
    ev.path = "/w/ok";
    CHECK_EQ(h.before(h.ud, &ev, reason, sizeof(reason)), 0);
    h.after(h.ud, &ev);   /* on_fs_done raises: logged, nothing else */
    ev.path = "/w/stale"; /* a ctx kept from an earlier call is dead */
    CHECK_EQ(h.before(h.ud, &ev, reason, sizeof(reason)), -EACCES);
    CHECK_CONTAINS(reason, "ctx: operation already finished");
}

TEST(vfs_policy_hook_errors_fail_closed)
{
    struct fx f;
    struct gd_err err = {{0}};
    if (fx_new(&f,
               "local saved\nreturn {\n  limits = { hook_ms = 30 },\n  on_fs = function(op, ctx)\n"
               "    if ctx.path == '/w/x' then error('boom') end\n"
               "    if ctx.path == '/w/loop' then while true do end end\n"
               "    if ctx.path == '/w/badcall' then return ctx:deny('ENOTANERRNO') end\n"
               "    if ctx.path == '/w/stale' then return saved.path end\n"
               "    saved = saved or ctx\n"
               "  end,\n  on_fs_done = function() error('after') end,\n}\n",
               0, &err))
        FAIL_AT("%s", err.msg);
    fx_run(&f, error_ops);
    CHECK_CONTAINS(f.log, "error in on_fs (p.lua:4)");
    CHECK_CONTAINS(f.log, "error in on_fs_done (p.lua:11)");
    CHECK_CONTAINS(read_all(f.audit), "\"rule\":\"lua-error\"");
    fx_cleanup(&f);
}

static long do_reload(gd_engine *e, void *arg)
{
    struct gd_err *err = arg;
    return gd_engine_reload(e, err);
}

static void reload_ops(struct fx *f)
{
    struct gd_vfs_hooks h;
    CHECK(gd_engine_vfs_hooks(f->e, "/w", &h) == 0);
    char reason[300];
    struct gd_vfs_event ev = ev_open("/w/x", O_RDONLY);
    CHECK_EQ(h.before(h.ud, &ev, reason, sizeof(reason)), -EACCES);
    CHECK_STR(reason, "v1");
    write_file(f->policy, "return { mounts = { ['/data'] = { memory = true, size = '1M' } },\n"
                          "  on_fs = function(op, ctx) return ctx:deny('EPERM', 'v2') end }\n");
    struct gd_err err = {{0}};
    if (gd__vfs_call(f->e, do_reload, &err))
        FAIL_AT("%s", err.msg);
    CHECK_EQ(h.before(h.ud, &ev, reason, sizeof(reason)), -EPERM);
    CHECK_STR(reason, "v2");
    /* the running mounts are still the first revision's */
    size_t n;
    const struct gd_mount *m = gd_engine_mounts(f->e, &n);
    CHECK_EQ(n, 1);
    CHECK_STR(m[0].guest, "/data");
    CHECK_EQ(m[0].size, 64u << 20);
    /* no hooks at all: the fast path answers without the loop */
    write_file(f->policy, "return { mounts = { ['/data'] = { memory = true, size = '64M' } } }\n");
    if (gd__vfs_call(f->e, do_reload, &err))
        FAIL_AT("%s", err.msg);
    CHECK_EQ(atomic_load(&f->e->vb.need), 0);
    CHECK_EQ(h.before(h.ud, &ev, reason, sizeof(reason)), 0);
}

TEST(vfs_policy_reload_switches_hooks)
{
    struct fx f;
    struct gd_err err = {{0}};
    if (fx_new(&f,
               "return { mounts = { ['/data'] = { memory = true, size = 67108864 } },\n"
               "  on_fs = function(op, ctx) return ctx:deny('EACCES', 'v1') end }\n",
               0, &err))
        FAIL_AT("%s", err.msg);
    fx_run(&f, reload_ops);
    CHECK_CONTAINS(f.log, "reload: mounts changed; the running mounts stay until a restart");
    /* the last reload declares the first mounts again: one such line only */
    CHECK(!strstr(strstr(f.log, "mounts changed") + 1, "mounts changed"));
    fx_cleanup(&f);
}

/* Several transport threads at once, and a reload among them. */
static void *hammer(void *p)
{
    struct fx *f = p;
    struct gd_vfs_hooks h;
    pthread_mutex_lock(&f->mu);
    CHECK(gd_engine_vfs_hooks(f->e, "/w", &h) == 0); /* the list is the loop's: serialised */
    pthread_mutex_unlock(&f->mu);
    for (int i = 0; i < 300; i++) {
        char reason[100];
        struct gd_vfs_event ev = ev_open(i % 2 ? "/w/a.lock" : "/w/a.txt", O_WRONLY);
        int rc = h.before(h.ud, &ev, reason, sizeof(reason));
        if (i % 2 ? rc != -EACCES && rc != -EPERM : rc != 0)
            FAIL_AT("call %d: %d %s", i, rc, reason);
        h.after(h.ud, &ev);
    }
    return NULL;
}

static void many_ops(struct fx *f)
{
    pthread_t th[4];
    for (int i = 0; i < 4; i++)
        CHECK(pthread_create(&th[i], NULL, hammer, f) == 0);
    write_file(f->policy, "return { on_fs = function(op, ctx)\n"
                          "  if ctx.path:match('lock$') then return ctx:deny('EPERM') end end,\n"
                          "  on_fs_done = function() end }\n");
    struct gd_err err = {{0}};
    if (gd__vfs_call(f->e, do_reload, &err))
        FAIL_AT("%s", err.msg);
    for (int i = 0; i < 4; i++)
        pthread_join(th[i], NULL);
}

TEST(vfs_policy_threads_and_reload)
{
    struct fx f;
    struct gd_err err = {{0}};
    if (fx_new(&f,
               "return { on_fs = function(op, ctx)\n"
               "  if ctx.path:match('lock$') then return ctx:deny('EACCES') end end }\n",
               1, &err))
        FAIL_AT("%s", err.msg);
    fx_run(&f, many_ops);
    int lines = 0;
    for (char *c = read_all(f.audit); c && *c; c++)
        lines += *c == '\n';
    CHECK_EQ(lines, 4 * 300 / 2 + 4 * 300); /* the denials, and every mutating op after it */
    fx_cleanup(&f);
}

struct stopper {
    struct fx *f;
    int rc;
};

static void *blocked_caller(void *p)
{
    struct stopper *s = p;
    struct gd_vfs_hooks h;
    gd_engine_vfs_hooks(s->f->e, "/w", &h);
    char reason[100];
    struct gd_vfs_event ev = ev_open("/w/x", O_RDONLY);
    s->rc = h.before(h.ud, &ev, reason, sizeof(reason));
    return NULL;
}

TEST(vfs_policy_stop_answers_eio)
{
    struct fx f;
    struct gd_err err = {{0}};
    if (fx_new(&f, "return { on_fs = function(op, ctx) end }\n", 0, &err))
        FAIL_AT("%s", err.msg);
    /* the bridge is not started: EIO, never a hang */
    struct gd_vfs_hooks h;
    CHECK(gd_engine_vfs_hooks(f.e, "/w", &h) == 0);
    struct gd_vfs_event ev = ev_open("/w/x", O_RDONLY);
    char reason[100];
    CHECK_EQ(h.before(h.ud, &ev, reason, sizeof(reason)), -EIO);
    /* a caller waiting while the loop does not run gets EIO when the engine stops */
    CHECK(uv_loop_init(&f.loop) == 0);
    CHECK(gd_engine_vfs_start(f.e, &f.loop) == 0);
    struct stopper s = {&f, 1};
    pthread_t th;
    CHECK(pthread_create(&th, NULL, blocked_caller, &s) == 0);
    for (int i = 0; i < 5000; i++) {
        pthread_mutex_lock(&f.e->vb.mu);
        int queued = f.e->vb.head != NULL;
        pthread_mutex_unlock(&f.e->vb.mu);
        if (queued)
            break;
        usleep(1000);
    }
    gd_engine_close(f.e);
    pthread_join(th, NULL);
    CHECK_EQ(s.rc, -EIO);
    /* and so does every later call */
    pthread_create(&th, NULL, blocked_caller, &s);
    pthread_join(th, NULL);
    CHECK_EQ(s.rc, -EIO);
    uv_run(&f.loop, UV_RUN_DEFAULT);
    CHECK(uv_loop_close(&f.loop) == 0);
    fx_cleanup(&f);
}

/* ---- mounts ---- */

TEST(vfs_policy_mounts_parsed)
{
    struct fx f;
    struct gd_err err = {{0}};
    if (fx_new(&f,
               "return { mounts = {\n"
               "  ['/workspace'] = { hostfs = '.', mode = 'ro', hide = { '.env', '*.pem' } },\n"
               "  ['/data'] = { memory = true, size = '64M' },\n"
               "  ['/src'] = { overlay = '.', size = 4096 },\n"
               "  ['/run/task'] = { provider = { getattr = function() end } },\n"
               "  ['/run/p'] = { provider = 'vfs-x', mode = 'ro', config = { a = 1 } },\n"
               "} }\n",
               0, &err))
        CHECK_CONTAINS(err.msg, "mounts['/run/p']: no loaded plugin registers a VFS provider "
                                "'vfs-x'");
    else
        FAIL_AT("a plugin provider nobody registers was accepted");
    fx_cleanup(&f);
    if (fx_new(&f,
               "return { mounts = {\n"
               "  ['/workspace'] = { hostfs = '.', mode = 'ro', hide = { '.env', '*.pem' } },\n"
               "  ['/data'] = { memory = true, size = '64M' },\n"
               "  ['/src'] = { overlay = '.', size = 4096, cache = 'always' },\n"
               "  ['/run/task'] = { provider = { getattr = function() end } },\n"
               "} }\n",
               0, &err))
        FAIL_AT("%s", err.msg);
    size_t n;
    const struct gd_mount *m = gd_engine_mounts(f.e, &n);
    CHECK_EQ(n, 4);
    char real[PATH_MAX];
    CHECK(realpath(f.dir, real));
    CHECK_STR(m[0].guest, "/data"); /* sorted */
    CHECK_EQ(m[0].kind, GD_MOUNT_MEMORY);
    CHECK_EQ(m[0].size, 64u << 20);
    CHECK_STR(m[1].guest, "/run/task");
    CHECK_EQ(m[1].kind, GD_MOUNT_LUA);
    CHECK_STR(m[2].guest, "/src");
    CHECK_EQ(m[2].kind, GD_MOUNT_OVERLAY);
    CHECK_STR(m[2].host, real);
    CHECK_EQ(m[2].size, 4096);
    CHECK_EQ(m[2].cache_always, 1);
    CHECK_EQ(m[3].cache_always, 0);
    CHECK_STR(m[3].guest, "/workspace");
    CHECK_EQ(m[3].kind, GD_MOUNT_HOSTFS);
    CHECK_STR(m[3].host, real);
    CHECK_EQ(m[3].readonly, 1);
    CHECK_STR(m[3].hide[0], ".env");
    CHECK_STR(m[3].hide[1], "*.pem");
    CHECK(!m[3].hide[2]);
    gd_vfs_provider *pv;
    CHECK_EQ(gd_engine_mount_provider(f.e, &m[0], &pv, &err), -ENOTSUP);
    fx_cleanup(&f);
}

TEST(vfs_policy_bad_mounts)
{
    static const char *const cases[][2] = {
        {"mounts = { ['workspace'] = { memory = true } }", "the guest path must be an absolute"},
        {"mounts = { ['/a/../b'] = { memory = true } }", "must not contain '..'"},
        {"mounts = { ['/a/./b'] = { memory = true } }", "no '.' component"},
        {"mounts = { ['/a//b'] = { memory = true } }", "no '//'"},
        {"mounts = { ['/a/'] = { memory = true } }", "must not end in '/'"},
        {"mounts = { ['/'] = { memory = true } }", "cannot be / itself"},
        {"mounts = { ['/a,b'] = { memory = true } }", "',' or ':'"},
        {"mounts = { ['/a:b'] = { memory = true } }", "',' or ':'"},
        {"mounts = { ['/a b'] = { memory = true } }", "spaces"},
        {"mounts = { ['/a'] = { memory = true, hostfs = '.' } }", "give one of hostfs"},
        {"mounts = { ['/a'] = { } }", "needs one of hostfs, overlay, memory, provider"},
        {"mounts = { ['/a'] = { memory = true, sise = 1 } }",
         "unknown key 'sise' (did you mean 'size'?)"},
        {"mounts = { ['/a'] = { hostfs = '.', mode = 'rx' } }", "mode must be \"rw\" or \"ro\""},
        {"mounts = { ['/a'] = { memory = true, mode = 'ro' } }", "mode applies to hostfs"},
        {"mounts = { ['/a'] = { memory = true, size = '12Q' } }", "size must be a byte count"},
        {"mounts = { ['/a'] = { memory = true, size = 0 } }", "size must be a byte count"},
        {"mounts = { ['/a'] = { hostfs = '.', size = '1M' } }", "size applies to memory"},
        {"mounts = { ['/a'] = { memory = true, hide = '.env' } }", "hide applies to hostfs"},
        {"mounts = { ['/a'] = { hostfs = '.', cache = 'never' } }",
         "cache must be \"auto\" or \"always\""},
        {"mounts = { ['/a'] = { memory = true, cache = 'always' } }", "cache applies to hostfs"},
        {"mounts = { ['/a'] = { hostfs = 'nope' } }", "hostfs: "},
        {"mounts = { ['/a'] = { hostfs = '.', hide = { '' } } }", "hide[1] must be a non-empty"},
        {"mounts = { ['/a'] = { provider = { raed = function() end } } }",
         "provider: unknown function 'raed' (did you mean 'read'?)"},
        {"mounts = { ['/a'] = { provider = { read = function() end } } }",
         "provider needs getattr (or lookup)"},
        {"mounts = { ['/a'] = { provider = { getattr = 1 } } }", "provider.getattr must be a "},
        {"mounts = { ['/a'] = { provider = 'Bad' } }", "provider name must be [a-z0-9_-]"},
        {"mounts = { ['/a'] = { memory = 'yes' } }", "memory must be true"},
        {"mounts = 'x'", "mounts must be a table of guest paths"},
        {"mounts = { ['/a'] = 1 }", "must be a table"},
        {"mounts = { ['/1'] = { memory = true }, ['/2'] = { memory = true }, ['/3'] = "
         "{ memory = true }, ['/4'] = { memory = true }, ['/5'] = { memory = true }, ['/6'] = "
         "{ memory = true }, ['/7'] = { memory = true }, ['/8'] = { memory = true }, ['/9'] = "
         "{ memory = true } }",
         "more than 8 mounts"},
        {"on_fs = 1", "on_fs must be a function"},
        {"on_fs_done = 'x'", "on_fs_done must be a function"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char text[1024];
        snprintf(text, sizeof(text), "return {\n  %s,\n}\n", cases[i][0]);
        struct fx f;
        struct gd_err err = {{0}};
        if (!fx_new(&f, text, 0, &err))
            FAIL_AT("accepted: %s", cases[i][0]);
        CHECK_CONTAINS(err.msg, cases[i][1]);
        CHECK(strchr(err.msg, '\n') == NULL);
        CHECK_CONTAINS(err.msg, "p.lua");
        char cmd[128];
        snprintf(cmd, sizeof(cmd), "rm -rf %s", f.dir);
        CHECK(system(cmd) == 0);
    }
}

/* ---- Lua provider ---- */

static const char *const PROVIDER_POLICY =
    "local task = '{\"id\":42}\\n'\n"
    "local files = { ['/task.json'] = task }\n"
    "return { mounts = { ['/run/task'] = { provider = {\n"
    "  getattr = function(path)\n"
    "    if path == '/' then return { type = 'dir', mode = 493 } end\n"
    "    if path == '/bad' then return { type = 'fifo' } end\n"
    "    if path == '/secret' then return nil, 'EACCES' end\n"
    "    if files[path] then return { size = #files[path], mtime = 1000 } end\n"
    "  end,\n"
    "  readdir = function(path)\n"
    "    if path == '/' then return { 'task.json', { name = 'sub', type = 'dir' } } end\n"
    "    if path == '/sub' then return { 'ok', '../x' } end\n"
    "  end,\n"
    "  read = function(path, off, n)\n"
    "    if path == '/boom' then error('read failed') end\n"
    "    if path == '/big' then return string.rep('x', n + 1) end\n"
    "    return files[path]:sub(off + 1, off + n)\n"
    "  end,\n"
    "  open = function(path, flags)\n"
    "    if path == '/none' then return nil, 'ENOENT' end\n"
    "  end,\n"
    "} } } }\n";

static int collect(void *ctx, const char *name, uint64_t off, unsigned type, const struct stat *st)
{
    (void)st;
    char *out = ctx;
    snprintf(out + strlen(out), 256 - strlen(out), "%s:%u:%llu ", name, type,
             (unsigned long long)off);
    return 0;
}

static void provider_ops(struct fx *f)
{
    size_t n;
    const struct gd_mount *m = gd_engine_mounts(f->e, &n);
    CHECK_EQ(n, 1);
    gd_vfs_provider *pv;
    struct gd_err err = {{0}};
    CHECK_EQ(gd_engine_mount_provider(f->e, &m[0], &pv, &err), 0);
    const struct gd_vfs_ops *o = pv->ops;
    struct stat st;
    if (o->getattr(pv->p, "", &st))
        FAIL_AT("%s", f->log);
    CHECK(S_ISDIR(st.st_mode));
    CHECK_EQ(st.st_mode & 07777, 0755);
    CHECK_EQ(o->getattr(pv->p, "task.json", &st), 0);
    CHECK(S_ISREG(st.st_mode));
    CHECK_EQ(st.st_size, 10);
    CHECK_EQ(st.st_mtime, 1000);
    CHECK_EQ(o->getattr(pv->p, "missing", &st), -ENOENT);
    CHECK_EQ(o->getattr(pv->p, "secret", &st), -EACCES);
    CHECK_EQ(o->getattr(pv->p, "bad", &st), -EIO);
    char names[256] = "";
    CHECK_EQ(o->readdir(pv->p, "", 0, 0, collect, names), 0);
    CHECK_STR(names, "task.json:0:1 sub:4:2 ");
    names[0] = 0;
    CHECK_EQ(o->readdir(pv->p, "", 0, 1, collect, names), 0); /* after the first */
    CHECK_STR(names, "sub:4:2 ");
    CHECK_EQ(o->readdir(pv->p, "sub", 0, 0, collect, names), -EIO); /* '../x' */
    uint64_t fh;
    CHECK_EQ(o->open(pv->p, "task.json", O_RDONLY, &fh), 0);
    char buf[64];
    CHECK_EQ(o->read(pv->p, fh, buf, sizeof(buf), 0), 10);
    CHECK(!memcmp(buf, "{\"id\":42}\n", 10));
    CHECK_EQ(o->read(pv->p, fh, buf, 4, 2), 4);
    CHECK(!memcmp(buf, "id\":", 4));
    CHECK_EQ(o->read(pv->p, fh, buf, 4, 10), 0);
    CHECK_EQ(o->release(pv->p, fh), 0);
    CHECK_EQ(o->read(pv->p, fh, buf, 4, 0), -EBADF);
    CHECK_EQ(o->open(pv->p, "task.json", O_WRONLY, &fh), -EROFS); /* no write function */
    CHECK_EQ(o->open(pv->p, "none", O_RDONLY, &fh), -ENOENT);
    CHECK_EQ(o->open(pv->p, "boom", O_RDONLY, &fh), 0);
    CHECK_EQ(o->read(pv->p, fh, buf, 4, 0), -EIO);
    CHECK_EQ(o->open(pv->p, "big", O_RDONLY, &fh), 0);
    CHECK_EQ(o->read(pv->p, fh, buf, 4, 0), -EIO);
    CHECK_EQ(o->mkdir(pv->p, "d", 0755, &st), -EROFS);
    CHECK_EQ(o->unlink(pv->p, "task.json"), -EROFS);
    o->destroy(pv->p);
    free(pv);
}

TEST(vfs_policy_lua_provider_from_thread)
{
    struct fx f;
    struct gd_err err = {{0}};
    if (fx_new(&f, PROVIDER_POLICY, 0, &err))
        FAIL_AT("%s", err.msg);
    fx_run(&f, provider_ops);
    CHECK_CONTAINS(f.log, "mount /run/task: error in provider read of /run/task");
    CHECK_CONTAINS(f.log, "read failed");
    CHECK_CONTAINS(f.log, "returned 5 bytes, more than the 4 asked for");
    CHECK_CONTAINS(f.log, "readdir entry 2 '../x' contains '/'");
    CHECK_CONTAINS(f.log, "type = \"fifo\"");
    fx_cleanup(&f);
}

static void task_ops(struct fx *f)
{
    size_t n;
    const struct gd_mount *m = gd_engine_mounts(f->e, &n);
    CHECK_EQ(n, 2);
    CHECK_STR(m[0].guest, "/run/task");
    gd_vfs_provider *pv;
    struct gd_err err = {{0}};
    CHECK_EQ(gd_engine_mount_provider(f->e, &m[0], &pv, &err), 0);
    const struct gd_vfs_ops *o = pv->ops;
    char names[256] = "";
    CHECK_EQ(o->readdir(pv->p, "", 0, 0, collect, names), 0);
    CHECK_STR(names, "task.json:0:1 notes.txt:0:2 ");
    struct stat st;
    CHECK_EQ(o->getattr(pv->p, "task.json", &st), 0);
    CHECK_EQ(st.st_mode, S_IFREG | 0444);
    uint64_t fh;
    CHECK_EQ(o->open(pv->p, "task.json", O_RDONLY, &fh), 0);
    char buf[256] = "";
    ssize_t got = o->read(pv->p, fh, buf, sizeof(buf) - 1, 0);
    CHECK_EQ(got, st.st_size);
    buf[got] = 0;
    CHECK_CONTAINS(buf, "\"id\":42");
    CHECK_EQ(o->release(pv->p, fh), 0);
    CHECK_EQ(o->open(pv->p, "task.json", O_WRONLY, &fh), 0); /* the table can write ... */
    CHECK_EQ(o->write(pv->p, fh, "x", 1, 0), -EACCES);       /* ... but not this file */
    CHECK_EQ(o->release(pv->p, fh), 0);
    CHECK_EQ(o->open(pv->p, "notes.txt", O_RDWR, &fh), 0);
    CHECK_EQ(o->write(pv->p, fh, "hello", 5, 0), 5);
    struct gd_vfs_setattr a = {.valid = GD_VFS_SET_SIZE, .size = 2};
    CHECK_EQ(o->setattr(pv->p, "notes.txt", fh, &a, &st), 0);
    CHECK_EQ(st.st_size, 2);
    CHECK_EQ(o->read(pv->p, fh, buf, sizeof(buf), 0), 2);
    CHECK(!memcmp(buf, "he", 2));
    a.valid = GD_VFS_SET_MODE;
    CHECK_EQ(o->setattr(pv->p, "notes.txt", fh, &a, &st), -EPERM);
    CHECK_EQ(o->release(pv->p, fh), 0);
    o->destroy(pv->p);
    free(pv);
    struct gd_vfs_hooks h;
    CHECK(gd_engine_vfs_hooks(f->e, "/workspace", &h) == 0);
    char reason[200];
    struct gd_vfs_event ev = ev_open("/workspace/Cargo.lock", O_WRONLY);
    CHECK_EQ(h.before(h.ud, &ev, reason, sizeof(reason)), -EACCES);
}

TEST(vfs_policy_example_task_provider)
{
    struct fx f;
    memset(&f, 0, sizeof(f));
    pthread_mutex_init(&f.mu, NULL);
    struct gd_engine_opts o = {.policy = GD_TEST_SRC_DIR "/examples/vfs-task.lua",
                               .lua_dir = GD_TEST_LUA_DIR,
                               .quiet = 1,
                               .log = fx_log,
                               .log_ud = &f};
    struct gd_err err = {{0}};
    if (gd_engine_new(&o, &f.e, &err))
        FAIL_AT("%s", err.msg);
    fx_run(&f, task_ops);
    gd_engine_free(f.e);
}

/* Every mutating function of the Lua contract gets its arguments; results are checked. */
static const char *const MUTATING_POLICY =
    "local log = {}\n"
    "local function rec(...) log[#log + 1] = table.concat({...}, ' ') end\n"
    "return { mounts = { ['/m'] = { provider = {\n"
    "  getattr = function(path)\n"
    "    if path == '/link' then return { type = 'symlink', size = 6 } end\n"
    "    return { type = path == '/' and 'dir' or 'file', size = #table.concat(log, ';') }\n"
    "  end,\n"
    "  create = function(path, mode) rec('create', path, mode) end,\n"
    "  mkdir = function(path, mode) rec('mkdir', path, mode) end,\n"
    "  unlink = function(path) rec('unlink', path) end,\n"
    "  rmdir = function(path) return nil, 'ENOTEMPTY' end,\n"
    "  rename = function(from, to) rec('rename', from, to) end,\n"
    "  readlink = function(path) return path == '/link' and 'target' or '' end,\n"
    "  write = function(path, off, data) return 99 end,\n"
    "  read = function(path, off, n) return table.concat(log, ';'):sub(off + 1, off + n) end,\n"
    "} } } }\n";

static void mutating_ops(struct fx *f)
{
    size_t n;
    const struct gd_mount *m = gd_engine_mounts(f->e, &n);
    gd_vfs_provider *pv;
    struct gd_err err = {{0}};
    CHECK_EQ(gd_engine_mount_provider(f->e, &m[0], &pv, &err), 0);
    const struct gd_vfs_ops *o = pv->ops;
    void *p = pv->p;
    struct stat st;
    uint64_t fh, rfh;
    CHECK_EQ(o->create(p, "a", O_WRONLY | O_CREAT, 0640, &fh, &st), 0);
    CHECK(S_ISREG(st.st_mode));
    CHECK_EQ(o->write(p, fh, "xy", 2, 0), -EIO); /* 99 of 2 bytes */
    CHECK_EQ(o->mkdir(p, "d", 0750, &st), 0);
    CHECK_EQ(o->rename(p, "a", "d/b", 0), 0);
    CHECK_EQ(o->rename(p, "a", "d/b", 1 /* RENAME_NOREPLACE */), -EINVAL);
    CHECK_EQ(o->unlink(p, "d/b"), 0);
    CHECK_EQ(o->rmdir(p, "d"), -ENOTEMPTY);
    char buf[256];
    CHECK_EQ(o->readlink(p, "link", buf, sizeof(buf)), 6);
    CHECK(!memcmp(buf, "target", 6));
    CHECK_EQ(o->readlink(p, "other", buf, sizeof(buf)), -EIO); /* empty target */
    CHECK_EQ(o->open(p, "log", O_RDONLY, &rfh), 0);
    ssize_t got = o->read(p, rfh, buf, sizeof(buf) - 1, 0);
    CHECK(got > 0);
    buf[got] = 0;
    CHECK_STR(buf, "create /a 416;mkdir /d 488;rename /a /d/b;unlink /d/b");
    CHECK_EQ(o->release(p, fh), 0);
    CHECK_EQ(o->release(p, rfh), 0);
    CHECK_EQ(o->release(p, rfh), -EBADF);
    struct statvfs sv;
    CHECK_EQ(o->statfs(p, "", &sv), 0);
    CHECK_EQ(sv.f_namemax, 255);
    o->destroy(p);
    free(pv);
}

TEST(vfs_policy_lua_provider_mutating)
{
    struct fx f;
    struct gd_err err = {{0}};
    if (fx_new(&f, MUTATING_POLICY, 0, &err))
        FAIL_AT("%s", err.msg);
    fx_run(&f, mutating_ops);
    CHECK_CONTAINS(f.log, "write returned number (want the bytes written, 0-2)");
    fx_cleanup(&f);
}

/* ---- plugins ---- */

#ifdef GD_TEST_VFS_CLOCK
static void clock_ops(struct fx *f)
{
    struct gd_vfs_hooks h;
    CHECK(gd_engine_vfs_hooks(f->e, "/w", &h) == 0);
    char reason[200];
    struct gd_vfs_event ev = ev_open("/w/Cargo.lock", O_RDWR);
    CHECK_EQ(h.before(h.ud, &ev, reason, sizeof(reason)), -EACCES);
    CHECK_STR(reason, "*.lock files are read-only");
    ev = (struct gd_vfs_event){.op = "rename", .path = "/w/a", .path2 = "/w/b.lock", .mutating = 1};
    CHECK_EQ(h.before(h.ud, &ev, reason, sizeof(reason)), -EACCES);
    ev = ev_open("/w/lua-denies", O_RDONLY); /* the plugin lets it through; Lua denies */
    CHECK_EQ(h.before(h.ud, &ev, reason, sizeof(reason)), -EPERM);
    size_t n;
    const struct gd_mount *m = gd_engine_mounts(f->e, &n);
    CHECK_EQ(n, 1);
    CHECK_EQ(m[0].kind, GD_MOUNT_PLUGIN);
    gd_vfs_provider *pv;
    struct gd_err err = {{0}};
    CHECK_EQ(gd_engine_mount_provider(f->e, &m[0], &pv, &err), 0);
    CHECK_STR(pv->name, "clock");
    struct stat st;
    CHECK_EQ(pv->ops->getattr(pv->p, "now", &st), 0);
    CHECK_EQ(st.st_size, 21);
    uint64_t fh;
    CHECK_EQ(pv->ops->open(pv->p, "now", O_RDONLY, &fh), 0);
    char buf[32];
    CHECK_EQ(pv->ops->read(pv->p, fh, buf, sizeof(buf), 0), 21);
    CHECK_EQ(buf[20], '\n');
    CHECK_EQ(buf[19], 'Z');
    CHECK(!pv->ops->destroy);
    free(pv);
}

TEST(vfs_policy_plugin_hook_and_provider)
{
    struct fx f;
    struct gd_err err = {{0}};
    memset(&f, 0, sizeof(f));
    snprintf(f.dir, sizeof(f.dir), "/tmp/gd-vfspol-XXXXXX");
    CHECK(mkdtemp(f.dir));
    snprintf(f.policy, sizeof(f.policy), "%s/p.lua", f.dir);
    pthread_mutex_init(&f.mu, NULL);
    write_file(f.policy, "return { plugins = { ['vfs-clock'] = { lock_readonly = true } },\n"
                         "  mounts = { ['/run/clock'] = { provider = 'clock' } },\n"
                         "  on_fs = function(op, ctx)\n"
                         "    if ctx.path == '/w/lua-denies' then return ctx:deny('EPERM') end\n"
                         "  end }\n");
    const char *plugins[] = {GD_TEST_VFS_CLOCK, NULL};
    struct gd_engine_opts o = {.policy = f.policy,
                               .plugins = plugins,
                               .lua_dir = GD_TEST_LUA_DIR,
                               .quiet = 1,
                               .log = fx_log,
                               .log_ud = &f};
    if (gd_engine_new(&o, &f.e, &err))
        FAIL_AT("%s", err.msg);
    fx_run(&f, clock_ops);
    fx_cleanup(&f);
}
#endif
