#!/usr/bin/env python3
"""The policy side of guest files without a VM: the mounts key and its errors, fs hooks
through the authoring tools (policy check / test / explain fs), the plugin VFS API's
refusals (one test plugin each), and the first-party vfs-clock plugin.

Usage: test_fs.py BUILD_DIR [NAME_FILTER]"""
import json, os, subprocess, sys, tempfile

BUILD = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "build")
FILTER = sys.argv[2] if len(sys.argv) > 2 else ""
GONDOLIN = os.path.join(BUILD, "gondolin")
PLUGINS = os.path.join(BUILD, "tests", "plugins")
CLOCK = os.path.join(BUILD, "plugins", "vfs-clock.so")
TESTS = []


def test(fn):
    TESTS.append(fn)
    return fn


def expect(cond, what):
    if not cond:
        raise AssertionError(what)


def write(d, name, text):
    path = os.path.join(d, name)
    with open(path, "w") as f:
        f.write(text)
    return path


def gondolin(*args):
    return subprocess.run([GONDOLIN, "policy", *args], capture_output=True, text=True, timeout=60)


LOCK = '''return {
  mounts = {
    ["/workspace"] = { hostfs = ".", hide = { ".env", "*.pem" } },
    ["/data"] = { memory = true, size = "16M" },
    ["/run/task"] = { provider = {
      getattr = function(path) return { type = "dir" } end,
    } },
  },
  on_fs = function(op, ctx)
    if ctx.path:match("%.lock$") and ctx:writing() then
      return ctx:deny("EACCES", "lock files are read-only")
    end
  end,
  on_fs_done = function(op, ctx) end,
}
'''


@test
def check_reports_mounts(d):
    """policy check lists the mounts (sorted, host paths absolute) and the fs hooks"""
    p = write(d, "p.lua", LOCK)
    r = gondolin("check", p)
    expect(r.returncode == 0, r.stderr)
    real = os.path.realpath(d)
    for want in ("mounts:   3", "/data  memory (size 16777216)", "/run/task  lua provider",
                 f"/workspace  hostfs {real} hide .env, *.pem",
                 "fs hooks: on_fs (p.lua:9), on_fs_done (p.lua:14)"):
        expect(want in r.stdout, f"{want!r} not in {r.stdout}")


@test
def bad_mounts_name_the_line(d):
    """a bad mount stops check with file:line, the key and what is wrong"""
    cases = [
        ('["/a/../b"] = { memory = true }', "p.lua:3: mounts['/a/../b']: the guest path must not contain '..'"),
        ('["/w"] = { hostfs = "missing" }', "p.lua:3: mounts['/w']: hostfs: "),
        ('["/w"] = { hostfs = ".", mode = "rwx" }', "p.lua:3: mounts['/w']: mode must be \"rw\" or \"ro\""),
        ('["/w"] = { memory = true, hide = ".env" }', "mounts['/w']: hide applies to hostfs and overlay"),
        ('["/w"] = { provider = "nosuch" }', "mounts['/w']: no loaded plugin registers a VFS provider 'nosuch'"),
    ]
    for body, want in cases:
        p = write(d, "p.lua", "return {\n  mounts = {\n    " + body + ",\n  },\n}\n")
        r = gondolin("check", p)
        expect(r.returncode == 1 and want in r.stderr and r.stderr.count("\n") == 1,
               f"{body}: rc {r.returncode}: {r.stderr}")


@test
def test_cases_for_fs(d):
    """policy test runs fs cases next to request cases; a wrong expectation fails with why"""
    p = write(d, "p.lua", LOCK)
    write(d, "p.test.json", json.dumps({"cases": [
        {"fs": "open /workspace/a.lock w", "expect": "deny"},
        {"fs": "open /workspace/a.lock r", "expect": "allow"},
        {"fs": "unlink /data/x.lock", "expect": {"decision": "deny", "errno": "EACCES",
                                                 "reason_contains": "read-only"}},
        {"fs": "rename /workspace/a /workspace/b", "expect": "allow"},
    ]}))
    r = gondolin("test", p)
    expect(r.returncode == 0 and "4 passed, 0 failed" in r.stdout, r.stdout + r.stderr)
    bad = write(d, "bad.json", json.dumps({"cases": [
        {"name": "wrong", "fs": "open /workspace/a.lock w", "expect": {"decision": "allow"}},
        {"name": "errno", "fs": "open /workspace/a.lock w", "expect": {"errno": "EPERM"}},
        {"name": "syntax", "fs": "open relative", "expect": "allow"}]}))
    r = gondolin("test", p, bad)
    expect(r.returncode == 1 and "want allow, got deny EACCES (p.lua:9)" in r.stdout
           and "errno: want EPERM, got EACCES" in r.stdout and "an fs case is" in r.stdout
           and "0 passed, 3 failed" in r.stdout, r.stdout)


@test
def explain_fs(d):
    """policy explain ... fs names the mount, the rule and the reason"""
    p = write(d, "p.lua", LOCK)
    r = gondolin("explain", p, "fs", "open", "/workspace/sub/Cargo.lock", "rw")
    expect(r.returncode == 0 and "mount:    /workspace" in r.stdout
           and "decision: deny EACCES" in r.stdout and "rule:     p.lua:9" in r.stdout
           and "reason:   lock files are read-only" in r.stdout, r.stdout + r.stderr)
    r = gondolin("explain", p, "fs", "mkdir", "/elsewhere/x")
    expect(r.returncode == 0 and "mount:    /\n" in r.stdout and "decision: allow" in r.stdout,
           r.stdout)
    r = gondolin("explain", p, "fs", "rename", "/workspace/a")
    expect(r.returncode == 2 and "rename needs a second path" in r.stderr, r.stderr)


@test
def hook_errors_fail_closed(d):
    """an on_fs that raises or runs out of CPU denies with EACCES (rule lua-error)"""
    p = write(d, "p.lua", '''return {
  limits = { hook_ms = 20 },
  on_fs = function(op, ctx)
    if ctx.path == "/w/loop" then while true do end end
    error("broken")
  end,
}
''')
    r = gondolin("explain", p, "fs", "open", "/w/x")
    expect("decision: deny EACCES" in r.stdout and "rule:     lua-error" in r.stdout
           and "broken" in r.stdout, r.stdout + r.stderr)
    r = gondolin("explain", p, "fs", "open", "/w/loop")
    expect("decision: deny EACCES" in r.stdout and "CPU budget" in r.stdout, r.stdout + r.stderr)


@test
def plugin_vfs_refusals(d):
    """the plugin VFS API refuses NULL ops, a wrong ops size, a bad name, an empty fs hook"""
    cases = {
        "vfs_null_ops.so": "plugin vfsnull (%s): register_vfs_provider('nullops'): ops is NULL",
        "vfs_bad_size.so": "plugin vfssize (%s): register_vfs_provider('small'): ops of 8 bytes is "
                           "smaller than API level 2's",
        "vfs_bad_name.so": "plugin vfsname (%s): register_vfs_provider: name must be [a-z0-9_-]{1,64}",
        "fs_hook_null.so": "plugin fsnull (%s): register_fs_hook('nothing'): both before and after "
                           "are NULL",
    }
    p = write(d, "p.lua", "return {}\n")
    for so, want in cases.items():
        path = os.path.join(PLUGINS, so)
        r = gondolin("check", p, "--plugin", path)
        expect(r.returncode == 1 and want % path in r.stderr and r.stderr.count("\n") == 1,
               f"{so}: rc {r.returncode}: {r.stderr}")


@test
def vfs_clock_plugin(d):
    """vfs-clock: its provider can be mounted by name, its opt-in hook makes *.lock read-only"""
    p = write(d, "p.lua", '''return {
  plugins = { ["vfs-clock"] = { lock_readonly = true } },
  mounts = { ["/run/clock"] = { provider = "clock", mode = "ro" } },
}
''')
    r = gondolin("check", p, "--plugin", CLOCK)
    expect(r.returncode == 0 and "/run/clock  provider 'clock' {} (read-only)" in r.stdout,
           r.stdout + r.stderr)
    r = gondolin("explain", p, "fs", "rename", "/w/a", "/w/b.lock", "--plugin", CLOCK)
    expect("decision: deny EACCES" in r.stdout and "rule:     vfs-clock/lock-ro" in r.stdout
           and "reason:   *.lock files are read-only" in r.stdout, r.stdout + r.stderr)
    r = gondolin("explain", p, "fs", "open", "/w/b.lock", "r", "--plugin", CLOCK)
    expect("decision: allow" in r.stdout, r.stdout + r.stderr)
    r = gondolin("check", p)
    expect(r.returncode == 1 and "plugins.vfs-clock: no such plugin is loaded" in r.stderr,
           r.stderr)


def main():
    passed = failed = 0
    for fn in TESTS:
        name = fn.__doc__.strip()
        if FILTER and FILTER not in name and FILTER != fn.__name__:
            continue
        d = tempfile.mkdtemp(prefix="gd-fs-")
        try:
            fn(d)
            print(f"ok   {name}")
            passed += 1
        except Exception as e:  # noqa: BLE001
            print(f"FAIL {name}: {e}")
            failed += 1
        subprocess.run(["rm", "-rf", d], check=True)
    print(f"fs policy tests: {passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
