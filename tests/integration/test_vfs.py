#!/usr/bin/env python3
"""Files in real VMs (docs/vfs.md): host directories mounted with --mount-hostfs and
used by real tools (git, cc, python venv + pip, npm, tar, sha256sum), big files, mmap,
O_APPEND, renames and hard links, host-side edits, memory and read-only mounts, escape
attempts asserted on the host, and the policy side (mounts key, on_fs, Lua and .so
providers).

Usage: test_vfs.py BUILD_DIR [NAME_FILTER]"""
import hashlib
import io
import json
import os
import random
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile

from harness import TESTS, eq, expect, test  # noqa: E402

BUILD = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "build")
FILTER = sys.argv[2] if len(sys.argv) > 2 else ""
G = os.path.join(BUILD, "gondolin")
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
IMAGE = "gd-test-vfs:1"
def gexec(flags, script, timeout=900, image=IMAGE, check=True):
    cmd = [G, "exec"] + (["--image", image] if image else []) + flags + \
        ["--", "sh", "-ec", script]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                       stdin=subprocess.DEVNULL)
    if check and r.returncode:
        raise AssertionError(f"exit {r.returncode}\nstdout: {r.stdout[-3000:]}\n"
                             f"stderr: {r.stderr[-3000:]}")
    return r


def tree_state(top, skip=None):
    """path -> (mode, size, sha256) of everything under top, except skip's subtree"""
    out = {}
    for d, dirs, files in os.walk(top):
        if skip and os.path.abspath(d) == os.path.abspath(skip):
            dirs[:] = []
            continue
        for n in dirs + files:
            p = os.path.join(d, n)
            st = os.lstat(p)
            h = ""
            if stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    h = hashlib.sha256(f.read()).hexdigest()
            out[os.path.relpath(p, top)] = (st.st_mode, st.st_size, h)
    return out


def sha_tree(top):
    res = {}
    for d, _, files in os.walk(top):
        for n in files:
            p = os.path.join(d, n)
            with open(p, "rb") as f:
                res[os.path.relpath(p, top)] = hashlib.sha256(f.read()).hexdigest()
    return res


def make_wheel(path):
    files = {"gdpkg/__init__.py": "X = 'wheel works'\n",
             "gdpkg-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: gdpkg\nVersion: 1.0\n",
             "gdpkg-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: gd\n"
                                          "Root-Is-Purelib: true\nTag: py3-none-any\n"}
    with zipfile.ZipFile(path, "w") as z:
        record = []
        for n, c in files.items():
            z.writestr(n, c)
            record.append(f"{n},,")
        record.append("gdpkg-1.0.dist-info/RECORD,,")
        z.writestr("gdpkg-1.0.dist-info/RECORD", "\n".join(record) + "\n")


def make_npm_tgz(path):
    with tarfile.open(path, "w:gz") as t:
        for n, c in {"package/package.json": '{"name":"gdnpm","version":"1.0.0","main":"index.js"}',
                     "package/index.js": "module.exports = 'npm works';\n"}.items():
            data = c.encode()
            ti = tarfile.TarInfo(n)
            ti.size = len(data)
            ti.mode = 0o644
            t.addfile(ti, io.BytesIO(data))


@test
def real_tools_in_a_hostfs_mount():
    """git clone/commit/status, a venv + pip install of a local wheel, npm install of a
    local tarball, cc + chmod +x: everything lands in the host directory"""
    tmp = tempfile.mkdtemp(prefix="gd-vfs-tools-")
    ws = os.path.join(tmp, "ws")
    os.mkdir(ws)
    try:
        src = os.path.join(tmp, "src")
        os.mkdir(src)
        subprocess.run(["git", "init", "-q", "-b", "main", src], check=True)
        with open(os.path.join(src, "README"), "w") as f:
            f.write("hello\n")
        subprocess.run(["git", "-C", src, "add", "README"], check=True)
        subprocess.run(["git", "-C", src, "-c", "user.name=t", "-c", "user.email=t@t", "commit",
                        "-qm", "first"], check=True)
        subprocess.run(["git", "clone", "-q", "--bare", src, os.path.join(ws, "origin.git")],
                       check=True)
        make_wheel(os.path.join(ws, "gdpkg-1.0-py3-none-any.whl"))
        make_npm_tgz(os.path.join(ws, "gdnpm-1.0.0.tgz"))
        with open(os.path.join(ws, "hello.c"), "w") as f:
            f.write('#include <stdio.h>\nint main(void){puts("built and ran");return 0;}\n')
        r = gexec(["--mount-hostfs", f"{ws}:/workspace"], r"""
cd /workspace
git clone -q /workspace/origin.git clone
cd clone
echo change >> README
echo new > new.txt
git add -A
git -c user.name=g -c user.email=g@g commit -qm second
echo "status=[$(git status --porcelain)]"
echo "commits=$(git rev-list --count HEAD)"
git push -q origin HEAD:main
cd /workspace
python3 -m venv venv
venv/bin/pip install -q --no-index ./gdpkg-1.0-py3-none-any.whl
venv/bin/python -c 'import gdpkg; print("py=" + gdpkg.X)'
mkdir app && cd app && echo '{"name":"app","version":"1.0.0"}' > package.json
npm install --offline --no-audit --no-fund -q ../gdnpm-1.0.0.tgz >/dev/null 2>&1
node -e 'console.log("js=" + require("gdnpm"))'
cd /workspace
cc -O1 -o hello hello.c
./hello
cp hello hello2 && chmod 0700 hello2 && chmod +x hello2 && ./hello2
echo "mode=$(stat -c %a hello2)"
""", timeout=1200)
        out = r.stdout
        for want in ["status=[]", "commits=2", "py=wheel works", "js=npm works",
                     "built and ran\nbuilt and ran", "mode=711"]:
            expect(want in out, f"{want!r} in {out!r}")
        # the host sees it all
        log = subprocess.run(["git", "-C", os.path.join(ws, "origin.git"), "log", "--oneline",
                              "main"], capture_output=True, text=True, check=True).stdout
        eq(len(log.splitlines()), 2, "the push reached the host's bare repository")
        expect(os.path.isfile(os.path.join(ws, "venv", "bin", "python3")) or
               os.path.islink(os.path.join(ws, "venv", "bin", "python3")), "venv on the host")
        expect(os.path.isfile(os.path.join(ws, "app", "node_modules", "gdnpm", "index.js")),
               "node_modules on the host")
        st = os.stat(os.path.join(ws, "hello2"))
        eq(stat.S_IMODE(st.st_mode), 0o711, "chmod reached the host")
        eq(st.st_uid, os.geteuid(), "files are owned by the user running gondolin")
        r = subprocess.run([os.path.join(ws, "hello")], capture_output=True, text=True)
        eq(r.stdout, "built and ran\n", "the guest-built binary runs on the host")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@test
def tar_5000_files_and_a_1gib_file():
    """tar x of 5000 files, find | wc -l and sha256sum of every file equal the host's
    view; a 1 GiB file written and read back has the same checksum on both sides"""
    tmp = tempfile.mkdtemp(prefix="gd-vfs-tar-")
    ws = os.path.join(tmp, "ws")
    os.mkdir(ws)
    try:
        rnd = random.Random(14)
        src = os.path.join(tmp, "src", "tree")
        for i in range(5000):
            d = os.path.join(src, f"d{i // 100}")
            os.makedirs(d, exist_ok=True)
            with open(os.path.join(d, f"f{i}"), "wb") as f:
                f.write(rnd.randbytes(rnd.randint(0, 3000)))
        with tarfile.open(os.path.join(ws, "a.tar"), "w") as t:
            t.add(src, arcname="tree")
        r = gexec(["--mount-hostfs", f"{ws}:/workspace"], r"""
cd /workspace
mkdir x && tar xf a.tar -C x
echo "count=$(find x/tree -type f | wc -l)"
(cd x/tree && find . -type f -exec sha256sum {} + | sort -k2) > sums.txt
dd if=/dev/urandom of=big bs=1M count=1024 2>/dev/null
sync
echo "big=$(sha256sum big | cut -d' ' -f1)"
echo 3 > /proc/sys/vm/drop_caches
echo "again=$(sha256sum big | cut -d' ' -f1)"
""", timeout=1800)
        expect("count=5000" in r.stdout, r.stdout)
        host = sha_tree(src)
        guest = {}
        with open(os.path.join(ws, "sums.txt")) as f:
            for line in f:
                h, p = line.split(None, 1)
                guest[os.path.normpath(p.strip())] = h
        eq(guest, host, "the guest's checksums of the extracted tree")
        eq(sha_tree(os.path.join(ws, "x", "tree")), host, "the host's view of the extraction")
        with open(os.path.join(ws, "big"), "rb") as f:
            h = hashlib.sha256()
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        eq(os.path.getsize(os.path.join(ws, "big")), 1 << 30, "1 GiB on the host")
        expect(f"big={h.hexdigest()}" in r.stdout and f"again={h.hexdigest()}" in r.stdout,
               f"checksums: host {h.hexdigest()}, guest {r.stdout}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


SEMANTICS = r'''
import mmap, os, subprocess, sys
os.chdir("/workspace")
# mmap write and read
with open("m.bin", "wb") as f: f.write(b"\0" * 65536)
with open("m.bin", "r+b") as f:
    m = mmap.mmap(f.fileno(), 65536)
    m[100:105] = b"hello"; m.flush(); m.close()
with open("m.bin", "rb") as f:
    m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
    print("mmap=" + m[100:105].decode()); m.close()
# O_APPEND from two processes
code = "import os\nfd=os.open('app.log', os.O_WRONLY|os.O_APPEND|os.O_CREAT, 0o644)\n" \
       "for i in range(500): os.write(fd, b'%s %03d\\n' % (TAG, i))\n"
ps = [subprocess.Popen([sys.executable, "-c", "TAG=b'" + t + "'\n" + code]) for t in "ab"]
for p in ps: p.wait()
lines = open("app.log").read().splitlines()
print("append=%d" % len(lines), "ok" if all(len(l) == 5 for l in lines) else "torn")
# rename over an open file: the open handle still reads the old content
open("victim", "w").write("old content")
f = open("victim")
open("new", "w").write("new content")
os.rename("new", "victim")
print("renamed=" + f.read() + "|" + open("victim").read()); f.close()
# hard links
open("orig", "w").write("linked")
os.link("orig", "hard")
print("link=%s nlink=%d" % (open("hard").read(), os.stat("orig").st_nlink))
# unlink while open, truncate, symlink, xattr
g = open("gone", "w+"); g.write("still here"); g.flush(); os.unlink("gone"); g.seek(0)
print("unlinked=" + g.read() + " exists=%s" % os.path.exists("gone")); g.close()
open("t", "w").write("0123456789"); os.truncate("t", 4); print("trunc=" + open("t").read())
os.symlink("orig", "sym"); print("readlink=" + os.readlink("sym"))
os.setxattr("orig", "user.tag", b"v1"); print("xattr=" + os.getxattr("orig", "user.tag").decode())
'''


def posix_semantics_with(opt):
    ws = tempfile.mkdtemp(prefix="gd-vfs-posix-")
    try:
        with open(os.path.join(ws, "t.py"), "w") as f:
            f.write(SEMANTICS)
        r = gexec(["--mount-hostfs", f"{ws}:/workspace{opt}"], "python3 /workspace/t.py")
        for want in ["mmap=hello", "append=1000 ok", "renamed=old content|new content",
                     "link=linked nlink=2", "unlinked=still here exists=False", "trunc=0123",
                     "readlink=orig", "xattr=v1"]:
            expect(want in r.stdout, f"{want!r} in {r.stdout!r}")
        with open(os.path.join(ws, "m.bin"), "rb") as f:
            eq(f.read()[100:105], b"hello", "the mmap write reached the host")
        eq(os.stat(os.path.join(ws, "orig")).st_ino, os.stat(os.path.join(ws, "hard")).st_ino,
           "a real hard link on the host")
        eq(os.readlink(os.path.join(ws, "sym")), "orig", "symlink stored verbatim")
        eq(os.getxattr(os.path.join(ws, "orig"), "user.tag"), b"v1", "xattr on the host")
    finally:
        shutil.rmtree(ws, ignore_errors=True)


@test
def posix_semantics():
    """mmap read/write, O_APPEND from two processes, rename over an open file, hard
    links, unlink while open, truncate, symlinks and xattrs; the host agrees"""
    posix_semantics_with("")


@test
def posix_semantics_cache_always():
    """the same through :cache=always (60 s caches, the guest's writeback cache): every
    byte reaches the host by the time the sandbox is gone"""
    posix_semantics_with(":cache=always")


@test
def setuid_bits_killed_on_write_by_a_user():
    """set-user-ID bits through a mount behave as on any Linux file system, in the
    kernel's cached mode too (docs/vfs.md: why not FUSE_HANDLE_KILLPRIV_V2): a write or
    truncate by a user without CAP_FSETID and any chown clear them, root's writes keep
    them"""
    r = gexec(["--mount-memfs", "/data"], """
cd /data
asuser() { python3 -c "import os,sys; os.setgroups([]); os.setgid(65534); os.setuid(65534); \
os.execvp(sys.argv[1], sys.argv[1:])" "$@"; }
echo '#!/bin/sh' > p; chmod 6777 p
echo x >> p; echo root-write=$(stat -c %a p)
asuser sh -c 'echo x >> /data/p'
echo user-write=$(stat -c %a p)
chmod 4777 p; asuser truncate -s 1 p
echo user-truncate=$(stat -c %a p)
chmod 4777 p; chown 65534 p; echo chown=$(stat -c %a p)
""")
    for want in ["root-write=6777", "user-write=777", "user-truncate=777", "chown=777"]:
        expect(want in r.stdout.split(), f"{want!r} in {r.stdout!r}")


@test
def host_edits_show_up_in_the_guest():
    """a file changed on the host while the sandbox runs is seen by the guest within the
    attribute TTL (1 s; the test allows 5 s)"""
    ws = tempfile.mkdtemp(prefix="gd-vfs-live-")
    try:
        with open(os.path.join(ws, "f"), "w") as f:
            f.write("v1\n")
        script = ("cat /workspace/f; echo READY; i=0; while [ $i -lt 100 ]; do "
                  "if grep -q v2 /workspace/f; then echo SEEN $i; exit 0; fi; "
                  "sleep 0.1; i=$((i+1)); done; echo TIMEOUT; exit 1")
        p = subprocess.Popen([G, "exec", "--image", IMAGE, "--mount-hostfs", f"{ws}:/workspace",
                              "--", "sh", "-c", script], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
        eq(p.stdout.readline(), "v1\n", "the first read")
        eq(p.stdout.readline(), "READY\n", "guest loop started")
        with open(os.path.join(ws, "f"), "w") as f:
            f.write("v2 from the host\n")
        out, err = p.communicate(timeout=120)
        expect(out.startswith("SEEN"), f"guest saw the edit: {out} {err[-500:]}")
        eq(p.returncode, 0, err)
        expect(int(out.split()[1]) <= 50, f"within 5 s: {out}")
    finally:
        shutil.rmtree(ws, ignore_errors=True)


@test
def memory_and_readonly_mounts():
    """--mount-memfs has its size cap (ENOSPC past it); a :ro hostfs mount is EROFS for
    writes and reads fine; nothing reaches the host"""
    ws = tempfile.mkdtemp(prefix="gd-vfs-ro-")
    try:
        with open(os.path.join(ws, "data"), "w") as f:
            f.write("read me\n")
        before = tree_state(ws)
        r = gexec(["--mount-memfs", "/scratch:4M", "--mount-hostfs", f"{ws}:/ro:ro"], r"""
echo hi > /scratch/a && cat /scratch/a
if dd if=/dev/zero of=/scratch/big bs=1M count=8 2>/tmp/dd.err; then echo NOCAP; else echo "cap=$(grep -c 'No space' /tmp/dd.err)"; fi
cat /ro/data
if (echo x > /ro/new) 2>/tmp/e; then echo WROTE; else echo "ro=$(grep -c 'Read-only' /tmp/e)"; fi
if rm /ro/data 2>/tmp/e; then echo REMOVED; else echo "rm=$(grep -c 'Read-only' /tmp/e)"; fi
""")
        for want in ["hi\n", "cap=1", "read me\n", "ro=1", "rm=1"]:
            expect(want in r.stdout, f"{want!r} in {r.stdout!r}")
        eq(tree_state(ws), before, "the read-only host directory is unchanged")
    finally:
        shutil.rmtree(ws, ignore_errors=True)


ESCAPES = r'''
cd /workspace
ln -s / rootlink; ln -s ../../.. up; ln -s /etc abs
echo pwn > up/pwned-up 2>/dev/null || echo "(refused)"
echo pwn > abs/pwned-abs 2>/dev/null || echo "(refused)"
mkdir -p rootlink/tmp/esc 2>/dev/null || echo "(refused)"
# the guest's own root is what these reach, never the host's
echo "abs-in-guest=$(test -f /etc/pwned-abs && echo yes || echo no)"
# device nodes and setuid bits
if mknod dev c 1 3 2>/dev/null; then echo MKNOD; else echo "mknod refused"; fi
if mkfifo fifo 2>/dev/null; then echo MKFIFO; else echo "fifo refused"; fi
echo x > suid && chmod 4755 suid; echo "suid=$(stat -c %a suid)"
# host symlinks pointing out of the mount are resolved in the guest, not on the host
cat hostlink 2>/dev/null && echo READ-OUTSIDE || echo "hostlink unreadable"
echo overwrite > hostlink 2>/dev/null || echo "(refused)"
# a directory swapped for a symlink while another process creates files in it
mkdir -p race/d
( i=0; while [ $i -lt 100 ]; do mv race/d race/d.tmp 2>/dev/null; ln -s ../../.. race/d 2>/dev/null; rm -f race/d 2>/dev/null; mv race/d.tmp race/d 2>/dev/null; i=$((i+1)); done ) &
i=0; while [ $i -lt 100 ]; do echo x > race/d/f$i 2>/dev/null || echo "(refused)" >/dev/null; i=$((i+1)); done
wait
# /proc/self/fd tricks: open a directory fd of the mount, go .. through it
python3 - <<'PY'
import os
fd = os.open("/workspace", os.O_RDONLY | os.O_DIRECTORY)
try:
    os.open("../escaped-via-fd", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd)
except OSError as e:
    pass
p = "/proc/self/fd/%d/../escaped-proc" % fd
try:
    open(p, "w").write("x")
except OSError:
    pass
print("procfd done")
PY
echo done
'''


@test
def escape_attempts_never_touch_the_host_outside():
    """symlinks to /, ../../.., absolute paths, a symlink swapped in during a rename
    loop, /proc/self/fd tricks, device nodes, setuid bits and host symlinks out of the
    mount: the host outside the mount is unchanged, no device or setuid file exists"""
    top = tempfile.mkdtemp(prefix="gd-vfs-esc-")
    ws = os.path.join(top, "a", "b", "ws")
    os.makedirs(ws)
    outside = os.path.join(top, "outside.txt")
    with open(outside, "w") as f:
        f.write("precious\n")
    os.symlink(outside, os.path.join(ws, "hostlink"))
    try:
        before = tree_state(top, skip=ws)
        r = gexec(["--mount-hostfs", f"{ws}:/workspace"], ESCAPES, timeout=1200)
        expect("done" in r.stdout and "procfd done" in r.stdout, r.stdout + r.stderr[-2000:])
        expect("mknod refused" in r.stdout and "fifo refused" in r.stdout, r.stdout)
        expect("READ-OUTSIDE" not in r.stdout, r.stdout)
        eq(tree_state(top, skip=ws), before, "nothing outside the mount changed")
        with open(outside) as f:
            eq(f.read(), "precious\n", "the host file behind a symlink")
        for d, _, files in os.walk(ws):
            for n in files:
                st = os.lstat(os.path.join(d, n))
                expect(not (st.st_mode & (stat.S_ISUID | stat.S_ISGID)), f"setuid bit on {n}")
                expect(stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode),
                       f"special file {n} on the host")
        eq(os.readlink(os.path.join(ws, "hostlink")), outside, "host symlink untouched")
    finally:
        shutil.rmtree(top, ignore_errors=True)


POLICY = r'''
return {
  name = "vfs-test",
  mounts = {
    ["/workspace"] = { hostfs = "ws" },
    ["/run/task"] = { provider = {
      getattr = function(path)
        if path == "/" then return { type = "dir", mode = 493 } end
        if path == "/task.json" then return { type = "file", mode = 292, size = #TASK } end
        return nil
      end,
      readdir = function(path) return { "task.json" } end,
      read = function(path, off, n) return TASK:sub(off + 1, off + n) end,
    } },
    ["/run/clock"] = { provider = "clock" },
  },
  on_fs = function(op, ctx)
    if ctx.path:match("%.lock$") and ctx:writing() then
      return ctx:deny("EACCES", "lock files are read-only")
    end
  end,
}
'''


@test
def policy_mounts_hooks_and_providers():
    """a policy's mounts (paths relative to it), an on_fs hook denying writes to *.lock
    (with an audit line), a Lua provider serving a generated file, a .so provider"""
    top = tempfile.mkdtemp(prefix="gd-vfs-pol-")
    ws = os.path.join(top, "ws")
    os.mkdir(ws)
    with open(os.path.join(ws, "Cargo.lock"), "w") as f:
        f.write("locked\n")
    pol = os.path.join(top, "p.lua")
    with open(pol, "w") as f:
        f.write('local TASK = \'{"task": 42}\\n\'\n' + POLICY)
    try:
        r = gexec(["--policy", pol, "--plugin", os.path.join(BUILD, "plugins", "vfs-clock.so")],
                  r"""
cat /run/task/task.json
ls /run/task
cat /run/clock/now | head -c 4; echo
if (echo x >> /workspace/Cargo.lock) 2>/tmp/e; then echo LOCK-WRITTEN; else echo "denied=$(grep -c 'Permission denied' /tmp/e)"; fi
cat /workspace/Cargo.lock
echo ok > /workspace/other.txt && echo wrote-other
""", check=False)
        expect('{"task": 42}' in r.stdout, r.stdout + r.stderr[-2000:])
        expect("task.json" in r.stdout, r.stdout)
        expect(r.stdout.count(time.strftime("%Y")) >= 1, f"clock provider: {r.stdout}")
        expect("denied=1" in r.stdout and "wrote-other" in r.stdout, r.stdout + r.stderr)
        with open(os.path.join(ws, "Cargo.lock")) as f:
            eq(f.read(), "locked\n", "the lock file on the host")
        expect("lock files are read-only" in r.stderr, f"denial line: {r.stderr[-2000:]}")
    finally:
        shutil.rmtree(top, ignore_errors=True)


@test
def overlay_leaves_the_host_unchanged_and_diff_lists_the_changes():
    """a session with --mount-overlay: the guest edits, creates, deletes; the host tree is
    byte-for-byte the same; `gondolin diff` lists exactly the changes, --export has them"""
    top = tempfile.mkdtemp(prefix="gd-vfs-ovl-")
    ws = os.path.join(top, "ws")
    os.makedirs(os.path.join(ws, "sub"))
    for n, c in {"keep.txt": "keep\n", "mod.txt": "mod\n", "sub/del.txt": "del\n"}.items():
        with open(os.path.join(ws, n), "w") as f:
            f.write(c)
    before = tree_state(ws)
    r = subprocess.run([G, "start", "--image", IMAGE, "--mount-overlay", f"{ws}:/workspace"],
                       capture_output=True, text=True, timeout=900)
    eq(r.returncode, 0, r.stderr)
    sid = r.stdout.split()[0]
    try:
        r = subprocess.run([G, "exec", "--session", sid, "--", "sh", "-ec",
                            "cd /workspace; echo changed >> mod.txt; echo n > new.txt; "
                            "rm sub/del.txt; mkdir d2; echo y > d2/f; cat mod.txt keep.txt"],
                           capture_output=True, text=True, timeout=300)
        eq((r.returncode, r.stdout), (0, "mod\nchanged\nkeep\n"), r.stderr)
        r = subprocess.run([G, "diff", f"{sid}:/workspace"], capture_output=True, text=True,
                           timeout=60)
        eq(r.returncode, 0, r.stderr)
        eq(r.stdout.splitlines(), ["A /workspace/d2", "A /workspace/d2/f", "M /workspace/mod.txt",
                                   "A /workspace/new.txt", "D /workspace/sub/del.txt"], "diff")
        tar = os.path.join(top, "changes.tar")
        r = subprocess.run([G, "diff", f"{sid}:/workspace", "--export", tar], capture_output=True,
                           text=True, timeout=60)
        eq(r.returncode, 0, r.stderr)
        with tarfile.open(tar) as t:
            names = {m.name.strip("/").removeprefix("./") for m in t.getmembers() if m.isfile()}
            mod = t.extractfile([m for m in t.getmembers() if m.name.endswith("mod.txt")][0])
            eq(mod.read(), b"mod\nchanged\n", "exported content")
        expect({"d2/f", "mod.txt", "new.txt"} <= {n.removeprefix("workspace/") for n in names},
               f"exported files: {names}")
        eq(tree_state(ws), before, "the host directory under an overlay")
    finally:
        subprocess.run([G, "stop", sid], capture_output=True, timeout=60)
        shutil.rmtree(top, ignore_errors=True)


@test
def hidden_files_stay_hidden():
    """--hide .env --hide '**/*.pem': not listed, not openable, not stat-able, not through
    a symlink or a hard link the guest makes, not creatable; the host copies untouched"""
    ws = tempfile.mkdtemp(prefix="gd-vfs-hide-")
    try:
        os.makedirs(os.path.join(ws, "deep", "er"))
        for n, c in {".env": "TOKEN=secret\n", "deep/er/key.pem": "PRIVATE\n",
                     "ok.txt": "visible\n"}.items():
            with open(os.path.join(ws, n), "w") as f:
                f.write(c)
        before = tree_state(ws)
        r = gexec(["--mount-hostfs", f"{ws}:/workspace", "--hide", ".env", "--hide", "**/*.pem"],
                  r"""
cd /workspace
echo "ls=[$(ls -A | tr '\n' ' ')] deep=[$(ls -A deep/er | tr '\n' ' ')]"
cat ok.txt
if cat .env 2>/dev/null; then echo LEAK-open; fi
if stat .env >/dev/null 2>&1; then echo LEAK-stat; fi
if cat deep/er/key.pem 2>/dev/null; then echo LEAK-pem; fi
ln -s .env link && if cat link 2>/dev/null; then echo LEAK-symlink; fi
if ln .env hard 2>/dev/null; then echo LEAK-hardlink; fi
if (echo x > .env) 2>/dev/null; then echo CREATED; fi
if grep -r secret . 2>/dev/null; then echo LEAK-grep; fi
echo end
""")
        expect("ls=[deep ok.txt ] deep=[]" in r.stdout, r.stdout)
        expect("visible" in r.stdout and "end" in r.stdout, r.stdout)
        expect("LEAK" not in r.stdout and "CREATED" not in r.stdout and "secret" not in r.stdout,
               r.stdout)
        after = tree_state(ws)
        after.pop("link", None)
        eq(after, before, "the hidden files on the host")
    finally:
        shutil.rmtree(ws, ignore_errors=True)


@test
def mount_flag_errors():
    """bad mount flags are one-line usage errors before any VM boots"""
    for flags in [["--mount-hostfs", "/nonexistent-dir-xyz:/w"], ["--mount-hostfs", "/tmp:w"],
                  ["--mount-hostfs", "/tmp:/a/../b"], ["--mount-memfs", "/m:12Q"],
                  ["--mount-hostfs", "/tmp:/w", "--mount-memfs", "/w"]]:
        r = subprocess.run([G, "exec"] + flags + ["--", "true"], capture_output=True, text=True,
                           timeout=30)
        eq(r.returncode, 2, f"{flags}: {r.stderr}")
        eq(len(r.stderr.strip().splitlines()), 1, r.stderr)


def main():
    r = subprocess.run([G, "build", "--config", os.path.join(ROOT, "tests/integration/vfs-image.json"),
                        "--tag", IMAGE], capture_output=True, text=True, timeout=1800)
    if r.returncode:
        print("building the test image failed:\n" + r.stderr[-3000:])
        sys.exit(1)
    failed = ran = 0
    for t in TESTS:
        if FILTER and FILTER not in t.__name__:
            continue
        ran += 1
        t0 = time.time()
        try:
            t()
            print(f"ok   {t.__name__} ({time.time() - t0:.1f}s)", flush=True)
        except Exception as e:  # noqa: BLE001
            failed += 1
            print(f"FAIL {t.__name__}: {e}", flush=True)
    print(f"vfs tests: {ran - failed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
