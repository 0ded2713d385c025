#!/usr/bin/env python3
"""Disk checkpoints and memory snapshots with real VMs (docs/snapshots.md): rootfs mode
cow, `gondolin snapshot [--memory [--stop]]`, `fork`, `start/exec --resume`, the
snapshots in the image store (ls, gc, rm, inspect), refusals (corrupt, another buildId,
another version, another VM shape, mounts), SIGKILL during a snapshot, and the Python
SDK's Sandbox.create(resume=...), snapshot(memory=True) and fork().

Runs with a private cache (XDG_CACHE_HOME: the image store, the checkpoints, the disk
overlays) holding a copy of the default image, and a private sessions directory.
Usage: test_snapshot.py BUILD_DIR [NAME_FILTER]"""
import asyncio
import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time

from harness import TESTS, alive, eq, expect, test, wait_gone  # noqa: E402

BUILD = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "build")
FILTER = sys.argv[2] if len(sys.argv) > 2 else ""
G = os.path.join(BUILD, "gondolin")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TMP = tempfile.mkdtemp(prefix="gd-snap-")
CACHE = os.path.join(TMP, "cache")
RT = os.path.join(TMP, "run")
STORE = os.path.join(CACHE, "gondolin", "images")
SNAPS = os.path.join(STORE, "snapshots")
STATE = os.path.join(CACHE, "gondolin", "state")
ENV = dict(os.environ, XDG_CACHE_HOME=CACHE, XDG_RUNTIME_DIR=RT)
ENV.pop("GONDOLIN_IMAGE_STORE", None)
def run(args, check=None, env=None, timeout=180):
    r = subprocess.run([G] + args, capture_output=True, text=True, timeout=timeout,
                       env=env or ENV)
    if check is not None:
        eq(r.returncode, check, f"gondolin {' '.join(args)}: {r.stderr.strip()}")
    return r


def sx(session, cmd):
    return run(["exec", "--session", session, "-c", cmd], check=0).stdout


def sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def session_pid(name):
    for s in json.loads(run(["ls", "--json"], check=0).stdout):
        if name in (s["id"], s["name"]):
            return s["pid"]
    return None


def snap_path(name):
    return os.path.join(SNAPS, name + ".gdsnap")


def rewrite_meta(src, dst, **changes):
    """A copy of checkpoint src with metadata fields changed and every checksum valid
    (the format of docs/snapshots.md, written independently of the C code)."""
    d = open(src, "rb").read()
    tr = d[-128:]
    eq(tr[:8], b"GDCKPT\r\n", "trailer magic")
    mlen, qlen = struct.unpack("<IQ", tr[12:24])
    meta = json.loads(d[qlen:qlen + mlen])
    meta.update(changes)
    mb = json.dumps(meta).encode()
    t = (b"GDCKPT\r\n" + struct.pack("<IIQ", 1, len(mb), qlen) + tr[24:56] +
         hashlib.sha256(mb).digest() + bytes(32) + b"GDCKPTnd")
    with open(dst, "wb") as f:
        f.write(d[:qlen] + mb + t)


def fsck(path):
    """e2fsck -fn of the guest root a checkpoint holds (its qcow2 part over the image,
    converted to a raw file with qemu-img): 0 when the filesystem is clean."""
    d = open(path, "rb").read()
    qlen = struct.unpack("<Q", d[-112:-104])[0]
    meta = json.loads(run(["image", "inspect", "--snapshot", path], check=0).stdout)["metadata"]
    spec = {"driver": "qcow2",
            "backing": {"driver": "raw", "file": {"driver": "file",
                                                  "filename": meta["image"] + "/rootfs.ext4"}},
            "file": {"driver": "raw", "size": qlen,
                     "file": {"driver": "file", "filename": path}}}
    raw = os.path.join(TMP, "fsck.raw")
    subprocess.run(["qemu-img", "convert", "-O", "raw", "json:" + json.dumps(spec), raw],
                   check=True, capture_output=True)
    r = subprocess.run(["e2fsck", "-fn", raw], capture_output=True, text=True)
    os.unlink(raw)
    return r.returncode, r.stdout + r.stderr


@test
def cow_root_is_the_disk_overlay():
    r = run(["exec", "--rootfs-mode", "cow", "--", "sh", "-c",
             "grep ' / ' /proc/mounts; echo x > /etc/cow-test && cat /etc/cow-test; "
             "ls /dev/vda"], check=0)
    root = r.stdout.splitlines()[0].split()
    eq((root[0], root[2]), ("/dev/vda", "ext4"), "the root is the disk itself, no overlay")
    expect("rw" in root[3].split(","), root)
    expect("x" in r.stdout.splitlines(), r.stdout)
    eq(os.listdir(STATE), [], "the overlay went with the sandbox")
    # memory mode is unchanged: an overlay over a tmpfs
    r = run(["exec", "--", "sh", "-c", "grep ' / ' /proc/mounts"], check=0)
    eq(r.stdout.split()[0], "overlay", "default root")


@test
def checkpoint_and_resume_twice_diverging():
    info = json.loads(run(["start", "--name", "src", "--rootfs-mode", "cow", "--json"],
                          check=0).stdout)
    expect(info["cow"] is True, info)
    sx("src", "echo hello > /root/note; mkdir -p /opt/pkg; echo 1.2.3 > /opt/pkg/VERSION; "
              "echo 'pkg:x:990:990::/opt/pkg:/bin/sh' >> /etc/passwd")
    pid = session_pid("src")
    r = run(["snapshot", "src", "--name", "ck"], check=0)
    eq(r.stdout.strip(), "ck", "prints the name")
    expect(snap_path("ck") in r.stderr, r.stderr)
    expect(wait_gone(pid), "the session stopped with its checkpoint")
    eq(session_pid("src"), None, "not listed")
    rc, out = fsck(snap_path("ck"))
    eq(rc, 0, f"the checkpoint's filesystem is clean: {out}")
    q = subprocess.run(["qemu-img", "info", snap_path("ck")], capture_output=True, text=True)
    expect("file format: qcow2" in q.stdout, q.stdout + q.stderr)
    before = sha(snap_path("ck"))
    run(["start", "--name", "r1", "--resume", "ck"], check=0)
    run(["start", "--name", "r2", "--resume", "ck"], check=0)
    for s in ("r1", "r2"):
        eq(sx(s, "cat /root/note /opt/pkg/VERSION; grep -c '^pkg:' /etc/passwd"),
           "hello\n1.2.3\n1\n", f"{s} has the checkpoint's files")
    sx("r1", "echo one > /root/mine")
    sx("r2", "echo two > /root/mine; rm /root/note")
    eq(sx("r1", "cat /root/mine; ls /root"), "one\nmine\nnote\n", "r1 is its own")
    eq(sx("r2", "cat /root/mine; ls /root"), "two\nmine\n", "r2 is its own")
    r = run(["exec", "--resume", "ck", "--", "ls", "/root"], check=0)
    eq(r.stdout, "note\n", "a third resume sees neither")
    run(["stop", "r1"], check=0)
    run(["stop", "r2"], check=0)
    eq(sha(snap_path("ck")), before, "resuming never changes the checkpoint")
    eq(os.listdir(STATE), [], "the resumed overlays went with their sandboxes")


@test
def checkpoint_of_a_resumed_sandbox_stands_alone():
    run(["start", "--name", "nest", "--resume", "ck"], check=0)
    sx("nest", "echo second >> /root/note")
    run(["snapshot", "nest", "--name", "ck2"], check=0)
    hidden = os.path.join(TMP, "ck.hidden")
    os.rename(snap_path("ck"), hidden)  # ck2 must not need ck
    try:
        r = run(["exec", "--resume", "ck2", "--", "cat", "/root/note", "/opt/pkg/VERSION"],
                check=0)
        eq(r.stdout, "hello\nsecond\n1.2.3\n", "both generations of changes")
    finally:
        os.rename(hidden, snap_path("ck"))


@test
def output_path_and_inspect():
    out = os.path.join(TMP, "out", "my.gdsnap")
    os.makedirs(os.path.dirname(out))
    run(["start", "--name", "o", "--rootfs-mode", "cow", "--memory", "768M", "--cpus", "1"],
        check=0)
    sx("o", "echo out > /root/o")
    r = run(["snapshot", "o", "--name", "ck"])
    expect(r.returncode == 1 and "exists already" in r.stderr, r.stderr)
    eq(sx("o", "cat /root/o"), "out\n", "a refused name leaves the session running")
    r = run(["snapshot", "o", "--output", os.path.relpath(out)], check=0)
    eq(r.stdout.strip(), out, "the absolute path")
    eq(os.listdir(os.path.dirname(out)), ["my.gdsnap"], "no temporary left")
    i = json.loads(run(["image", "inspect", "--snapshot", out], check=0).stdout)
    expect(i["verified"], i)
    m = i["metadata"]
    eq((m["memoryMb"], m["cpus"], m["gondolin"]), (768, 1, "0.1.0"), "recorded shape")
    expect(len(m["buildId"]) >= 8 and m["created"] > time.time() - 600, m)
    r = run(["exec", "--resume", out, "--", "sh", "-c", "cat /root/o; nproc; "
             "awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo"], check=0)
    lines = r.stdout.split()
    eq(lines[:2], ["out", "1"], "the file, and the recorded cpus")
    expect(600 < int(lines[2]) <= 768, f"the recorded memory: {lines[2]} MiB")


@test
def snapshot_refused_when_not_cow():
    info = json.loads(run(["start", "--name", "mem", "--json"], check=0).stdout)
    expect(info["cow"] is False, info)
    r = run(["snapshot", "mem", "--name", "nope"])
    eq(r.returncode, 1, "exit status")
    expect("--rootfs-mode cow" in r.stderr and r.stderr.count("\n") == 1, r.stderr)
    expect(not os.path.exists(snap_path("nope")), "no file")
    eq(sx("mem", "echo still"), "still\n", "the session keeps running")
    run(["stop", "mem"], check=0)
    r = run(["snapshot", "missing-session"])
    expect(r.returncode != 0 and "missing-session" in r.stderr, r.stderr)
    r = run(["snapshot", "x", "--name", "../evil"])
    eq(r.returncode, 2, r.stderr)


@test
def corrupt_checkpoint_refused_with_its_name():
    bad = os.path.join(TMP, "bad.gdsnap")
    shutil.copy(snap_path("ck"), bad)
    size = os.path.getsize(bad)
    with open(bad, "r+b") as f:
        f.seek(size // 2)
        b = f.read(1)
        f.seek(size // 2)
        f.write(bytes([b[0] ^ 0xFF]))
    for cmd in (["exec", "--resume", bad, "--", "true"], ["start", "--resume", bad]):
        r = run(cmd)
        expect(r.returncode != 0, f"{cmd[0]} refused")
        expect(bad in r.stderr and "corrupt" in r.stderr, r.stderr)
        eq(r.stderr.strip().count("\n"), 0, "one line")
    eq(json.loads(run(["ls", "--json"], check=0).stdout), [], "no session left")
    r = run(["image", "inspect", "--snapshot", bad])
    expect(r.returncode == 1 and "disk checksum mismatch" in r.stderr, r.stderr)
    # truncated (a copy cut short): refused too
    with open(bad, "wb") as f:
        f.write(open(snap_path("ck"), "rb").read()[:size - 1000])
    r = run(["exec", "--resume", bad, "--", "true"])
    expect(r.returncode != 0 and bad in r.stderr, r.stderr)


@test
def other_build_or_version_refused():
    other = os.path.join(TMP, "other-build.gdsnap")
    rewrite_meta(snap_path("ck"), other, buildId="0123456789abcdef0123")
    r = run(["exec", "--resume", other, "--", "true"])
    expect(r.returncode != 0, "refused")
    expect(other in r.stderr and "buildId 0123456789ab" in r.stderr, r.stderr)
    # the image given explicitly: still the buildId that decides
    r = run(["exec", "--image", "default", "--resume", other, "--", "true"])
    expect(r.returncode != 0 and "buildId" in r.stderr, r.stderr)
    old = os.path.join(TMP, "other-version.gdsnap")
    rewrite_meta(snap_path("ck"), old, gondolin="0.0.9")
    r = run(["start", "--resume", old])
    expect(r.returncode != 0, "refused")
    expect("gondolin 0.0.9" in r.stderr and old in r.stderr, r.stderr)
    eq(r.stderr.strip().count("\n"), 0, "one line")
    # the valid rewrite is accepted: the refusals came from the fields
    same = os.path.join(TMP, "same.gdsnap")
    rewrite_meta(snap_path("ck"), same, name="renamed")
    eq(run(["exec", "--resume", same, "--", "cat", "/root/note"], check=0).stdout, "hello\n",
       "a rewritten but valid checkpoint")


def store_names():
    return sorted(e["snapshot"] for e in json.loads(run(["image", "ls", "--json"],
                                                        check=0).stdout) if "snapshot" in e)


def snapshot_in_flight(session, name, stall_ms, cmd):
    """A session whose supervisor pauses GONDOLIN_TEST_SNAPSHOT_STALL_MS between the
    complete temporary and its rename; `gondolin snapshot` started on it. Returns the
    supervisor's pid, the snapshot process and the temporary's path once it is there."""
    env = dict(ENV, GONDOLIN_TEST_SNAPSHOT_STALL_MS=str(stall_ms))
    run(["start", "--name", session, "--rootfs-mode", "cow"], check=0, env=env)
    sx(session, cmd)
    pid = session_pid(session)
    p = subprocess.Popen([G, "snapshot", session, "--name", name], env=ENV,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    end, tmp = time.time() + 60, []
    while not tmp and time.time() < end:
        tmp = [n for n in (os.listdir(SNAPS) if os.path.isdir(SNAPS) else [])
               if n.startswith(".tmp-") and n.endswith(f"-{name}.gdsnap")]
        time.sleep(0.05)
    expect(tmp, "the supervisor was writing the checkpoint")
    return pid, p, os.path.join(SNAPS, tmp[0])


@test
def sigkill_of_the_supervisor_leaves_no_partial_checkpoint():
    complete = store_names()
    pid, p, tmp = snapshot_in_flight("k", "killed", 30000,
                                     "head -c 8000000 /dev/urandom > /root/big")
    expect(os.path.getsize(tmp) > 8000000, "with the disk in it")
    os.kill(pid, signal.SIGKILL)
    out, err = p.communicate(timeout=30)
    expect(p.returncode != 0, f"snapshot reports the failure: {out} {err}")
    expect(not os.path.exists(snap_path("killed")), "no checkpoint under the name")
    expect("killed" not in store_names(), "image ls does not list it")
    eq(store_names(), complete, "the complete ones only, as before")
    expect(wait_gone(pid), "supervisor gone")
    r = run(["image", "gc"], check=0)
    expect("interrupted write" in r.stdout, r.stdout)
    expect(not [n for n in os.listdir(SNAPS) if n.startswith(".")], "gc removed the temporary")
    run(["ls"], check=0)  # prunes the dead session


@test
def sigkill_of_the_snapshot_command_still_completes_it():
    pid, p, _ = snapshot_in_flight("c", "cli-killed", 1500, "echo kept > /root/k")
    p.kill()
    p.communicate()
    expect(not os.path.exists(snap_path("cli-killed")), "not there before it is complete")
    expect(wait_gone(pid), "the supervisor finishes and exits")
    run(["image", "inspect", "--snapshot", "cli-killed"], check=0)
    eq(run(["exec", "--resume", "cli-killed", "--", "cat", "/root/k"], check=0).stdout, "kept\n",
       "the checkpoint is complete and usable")
    run(["image", "rm", "--snapshot", "cli-killed"], check=0)
    expect("cli-killed" not in store_names(), "rm removes it")


@test
def image_ls_and_gc_of_orphans():
    r = run(["image", "ls"], check=0)
    line = [l for l in r.stdout.splitlines() if l.startswith("ck ")]
    expect(line and line[0].rstrip().endswith("MB"), r.stdout)
    js = {e["snapshot"]: e for e in json.loads(run(["image", "ls", "--json"], check=0).stdout)
          if "snapshot" in e}
    expect(js["ck"]["size"] > 0 and js["ck"]["path"] == snap_path("ck"), js["ck"])
    orphan = snap_path("orphan")
    rewrite_meta(snap_path("ck"), orphan, buildId="deadbeefdeadbeef")
    expect("orphan" in store_names(), "listed before gc")
    r = run(["image", "gc", "--dry-run"], check=0)
    expect("would remove snapshot orphan.gdsnap" in r.stdout and os.path.exists(orphan),
           r.stdout)
    r = run(["image", "gc"], check=0)
    expect("removed snapshot orphan.gdsnap" in r.stdout and "is gone" in r.stdout, r.stdout)
    expect(not os.path.exists(orphan), "the orphan is gone")
    expect(os.path.exists(snap_path("ck")), "a checkpoint whose image is here stays")
    # a state directory left by a SIGKILLed sandbox (its pid is gone)
    os.makedirs(os.path.join(STATE, "999999999-abcdef"))
    r = run(["image", "gc"], check=0)
    expect("999999999-abcdef" in r.stdout and not os.listdir(STATE), r.stdout)


@test
def sdk_create_resume():
    sys.path.insert(0, os.path.join(ROOT, "sdk", "python"))
    os.environ.update(XDG_CACHE_HOME=CACHE, XDG_RUNTIME_DIR=RT, GONDOLIN_BIN=G)
    from gondolin import AsyncSandbox, RemoteError, Sandbox, StartError

    sb = Sandbox.create(rootfs_mode="cow", name="sdk")
    sb.exec("echo from-sdk > /root/sdk")
    path = sb.snapshot("sdkck")
    eq(path, snap_path("sdkck"), "snapshot() returns the path")
    with Sandbox.create(resume="sdkck") as r:
        eq(r.exec("cat /root/sdk").text, "from-sdk\n", "Sandbox.create(resume=name)")
    with Sandbox.create(resume=path) as r:
        eq(r.exec(["cat", "/root/sdk"]).text, "from-sdk\n", "Sandbox.create(resume=path)")
    bad = os.path.join(TMP, "bad.gdsnap")  # (corrupt_checkpoint_... made it)
    if os.path.exists(bad):
        try:
            Sandbox.create(resume=bad)
            raise AssertionError("a corrupt checkpoint was resumed")
        except StartError as e:
            expect(bad in str(e), str(e))
    with Sandbox.create() as m:
        try:
            m.snapshot("nope")
            raise AssertionError("a memory-mode session was checkpointed")
        except RemoteError as e:
            expect("--rootfs-mode cow" in str(e), str(e))
        eq(m.exec("echo alive").text, "alive\n", "still running")

    async def aio():
        async with await AsyncSandbox.create(resume="sdkck") as r:
            res = await r.exec("cat /root/sdk")
            eq(res.text, "from-sdk\n", "AsyncSandbox.create(resume=...)")
            await r.exec("echo again >> /root/sdk")
            return await r.snapshot("sdkck2")

    p2 = asyncio.run(aio())
    eq(run(["exec", "--resume", p2, "--", "cat", "/root/sdk"], check=0).stdout,
       "from-sdk\nagain\n", "the async snapshot")


# ---- memory snapshots (snapshot --memory, fork) ----

# (written to a temporary and renamed: a reader never sees the file truncated and empty)
COUNTER = ("nohup sh -c 'n=0; while :; do n=$((n+1)); echo $n > /tmp/count.t; "
           "mv /tmp/count.t /tmp/count; sleep 0.2; done' >/dev/null 2>&1 &")
HOLDER = ("nohup sh -c 'echo $$ > /tmp/holder; exec 3>>/tmp/held; rm /tmp/held; "
          "while :; do echo tick >&3; sleep 0.2; done' >/dev/null 2>&1 &")


def held_size(session):
    """The size of the deleted file that the holder process still writes through fd 3."""
    return int(sx(session, "stat -L -c %s /proc/$(cat /tmp/holder)/fd/3").strip())


def stop_all():
    """Stops every session (a failed test leaves none behind for the next)."""
    for s in json.loads(run(["ls", "--json"]).stdout or "[]"):
        run(["stop", "--force", s["id"]])


def count(session):
    return int(sx(session, "cat /tmp/count").strip())


def urandom(session=None, resume=None):
    cmd = "head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'"
    if session:
        return sx(session, cmd)
    return run(["exec", "--resume", resume, "-c", cmd], check=0).stdout


@test
def memory_snapshot_resumes_processes_and_open_files():
    try:
        run(["start", "--name", "live"], check=0)
        sx("live", "echo in-memory > /root/f; cd /tmp && " + COUNTER + HOLDER)
        time.sleep(1.5)
        r = run(["snapshot", "live", "--memory", "--name", "mem1"], check=0)
        eq(r.stdout.strip(), "mem1", "prints the name")
        expect("runs on" in r.stderr, r.stderr)
        at_save = count("live")
        expect(at_save >= 3, f"the counter ran before the save: {at_save}")
        time.sleep(1)
        expect(count("live") > at_save, "the session runs on after its memory snapshot")
        i = json.loads(run(["image", "inspect", "--snapshot", "mem1"], check=0).stdout)
        expect(i["verified"] and i["memoryBytes"] > 1 << 20, i)
        eq((i["metadata"]["memory"]["rootfs"], i["diskBytes"]), ("memory", 0), "no disk part")
        before = sha(snap_path("mem1"))
        for name in ("back1", "back2"):
            run(["start", "--name", name, "--resume", "mem1"], check=0)
            eq(sx(name, "cat /root/f"), "in-memory\n", f"{name}: the root's writes in memory")
            c0 = count(name)
            expect(c0 >= at_save - 1, f"{name}: the counter resumes where it was ({c0}, {at_save})")
            h0 = held_size(name)
            time.sleep(1.2)
            expect(count(name) > c0, f"{name}: the background process runs on")
            expect(held_size(name) > h0, f"{name}: its open (deleted) file is still written")
        sx("back1", "echo one > /root/mine")
        eq(sx("back2", "ls /root"), "f\n", "the two resumes diverge")
        eq(sha(snap_path("mem1")), before, "resuming never changes the snapshot")
        for name in ("back1", "back2", "live"):
            run(["stop", name], check=0)
    finally:
        stop_all()


@test
def fork_three_diverge_with_their_own_entropy_and_clock():
    try:
        run(["start", "--name", "parent"], check=0)
        sx("parent", "echo base > /root/x; cd /tmp && " + COUNTER)
        time.sleep(3)  # a while between the guest's last clock sync and the fork
        r = run(["fork", "parent", "-n", "3", "--name", "kid", "--json"], check=0)
        kids = [k["id"] for k in json.loads(r.stdout)]
        eq(len(kids), 3, r.stdout)
        names = sorted(s["name"] for s in json.loads(run(["ls", "--json"], check=0).stdout))
        eq(names, ["kid-1", "kid-2", "kid-3", "parent"], "the parent runs on beside its forks")
        eq([n for n in os.listdir(SNAPS) if "fork" in n], [], "the fork's snapshot is gone")
        for k in ("kid-1", "kid-2", "kid-3"):
            sx(k, f"echo {k} >> /root/x")
        for k in ("kid-1", "kid-2", "kid-3"):
            eq(sx(k, "cat /root/x"), f"base\n{k}\n", f"{k} diverged on its own")
            c = count(k)
            time.sleep(0.6)
            expect(count(k) > c, f"{k}: the parent's process runs on in the fork")
            t0 = time.time()
            t = float(sx(k, "date +%s.%N"))
            t1 = time.time()
            expect(t0 - 1.0 <= t <= t1 + 1.0,
                   f"{k}: guest clock {t} vs host {t0:.3f}..{t1:.3f}")
        eq(sx("parent", "cat /root/x"), "base\n", "the parent is untouched")
        rnd = {urandom(k) for k in ("kid-1", "kid-2", "kid-3", "parent")}
        eq(len(rnd), 4, f"/dev/urandom differs across the forks and the parent: {rnd}")
        for k in ("kid-1", "kid-2", "kid-3", "parent"):
            run(["stop", k], check=0)
    finally:
        stop_all()


@test
def restores_of_one_memory_snapshot_get_fresh_entropy_and_the_hosts_clock():
    time.sleep(5)  # mem1 was saved a while ago: a guest clock that stood still shows
    seen = set()
    for _ in range(5):
        t0 = time.time()
        r = run(["exec", "--resume", "mem1", "-c",
                 "head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; date +%s.%N"],
                check=0)
        t1 = time.time()
        rnd, t = r.stdout.split()
        # (the exec's start and end bracket the guest's reading; a clock that stood still
        # since the save would be 5 s and more behind the start)
        expect(t0 - 1.0 <= float(t) <= t1 + 1.0, f"guest clock {t} vs host {t0:.3f}..{t1:.3f}")
        seen.add(rnd)
    eq(len(seen), 5, f"5 restores, 5 different random streams: {seen}")


@test
def memory_snapshot_stop_and_output():
    try:
        out = os.path.join(TMP, "mem-stop.gdsnap")
        run(["start", "--name", "st", "--memory", "640M", "--cpus", "1"], check=0)
        sx("st", "echo stopped-here > /root/s")
        pid = session_pid("st")
        r = run(["snapshot", "st", "--memory", "--stop", "--output", out], check=0)
        expect("has stopped" in r.stderr, r.stderr)
        expect(wait_gone(pid), "the session stopped once saved")
        r = run(["exec", "--resume", out, "--", "sh", "-c", "cat /root/s; nproc"], check=0)
        eq(r.stdout, "stopped-here\n1\n", "resumed with the recorded shape")
        r = run(["snapshot", "st2", "--stop"])
        eq(r.returncode, 2, "--stop without --memory")
    finally:
        stop_all()


@test
def memory_snapshot_refusals():
    try:
        out = os.path.join(TMP, "mem-stop.gdsnap")
        # another shape: the snapshot had 640 MiB and one cpu
        r = run(["exec", "--resume", out, "--memory", "1024M", "--", "true"])
        expect(r.returncode != 0 and "another shape" in r.stderr and out in r.stderr, r.stderr)
        eq(r.stderr.strip().count("\n"), 0, "one line")
        # a flipped byte in the memory stream: the load is refused before the guest runs
        bad = os.path.join(TMP, "mem-bad.gdsnap")
        shutil.copy(out, bad)
        with open(bad, "r+b") as f:
            f.seek(os.path.getsize(bad) // 3)
            b = f.read(1)
            f.seek(-1, 1)
            f.write(bytes([b[0] ^ 0x55]))
        r = run(["start", "--resume", bad])
        expect(r.returncode != 0 and bad in r.stderr and "checksum" in r.stderr, r.stderr)
        r = run(["image", "inspect", "--snapshot", bad])
        expect(r.returncode == 1 and "memory checksum mismatch" in r.stderr, r.stderr)
        eq(json.loads(run(["ls", "--json"], check=0).stdout), [], "no session left")
        # sessions that cannot be saved: mounts, a root on a disk overlay
        run(["start", "--name", "mnt", "--mount-memfs", "/data"], check=0)
        r = run(["snapshot", "mnt", "--memory", "--name", "nope"])
        expect(r.returncode == 1 and "without mounts" in r.stderr, r.stderr)
        eq(sx("mnt", "echo alive"), "alive\n", "still running")
        run(["stop", "mnt"], check=0)
        run(["start", "--name", "cw", "--rootfs-mode", "cow"], check=0)
        r = run(["snapshot", "cw", "--memory", "--name", "nope"])
        expect(r.returncode == 1 and "disk overlay" in r.stderr, r.stderr)
        run(["stop", "cw"], check=0)
        expect(not os.path.exists(snap_path("nope")), "no file")
    finally:
        stop_all()


@test
def sigkill_during_a_memory_snapshot_leaves_no_partial_file():
    env = dict(ENV, GONDOLIN_TEST_SNAPSHOT_STALL_MS="30000")
    run(["start", "--name", "km"], check=0, env=env)
    pid = session_pid("km")
    p = subprocess.Popen([G, "snapshot", "km", "--memory", "--name", "mkilled"], env=ENV,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    end, tmp = time.time() + 60, []
    while not tmp and time.time() < end:
        tmp = [n for n in os.listdir(SNAPS) if n.startswith(".tmp-") and "mkilled" in n]
        time.sleep(0.05)
    expect(tmp, "the supervisor was writing the snapshot")
    time.sleep(1)  # (into the stall: the stream is complete, the name not yet taken)
    os.kill(pid, signal.SIGKILL)
    p.communicate(timeout=30)
    expect(p.returncode != 0, "snapshot reports the failure")
    expect(not os.path.exists(snap_path("mkilled")), "no file under the name")
    expect(wait_gone(pid), "supervisor gone")
    run(["image", "gc"], check=0)
    expect(not [n for n in os.listdir(SNAPS) if n.startswith(".")], "gc removed the temporary")
    run(["ls"], check=0)


@test
def sdk_memory_snapshot_and_fork():
    sys.path.insert(0, os.path.join(ROOT, "sdk", "python"))
    os.environ.update(XDG_CACHE_HOME=CACHE, XDG_RUNTIME_DIR=RT, GONDOLIN_BIN=G)
    from gondolin import AsyncSandbox, Sandbox

    with Sandbox.create(name="sdkm") as sb:
        sb.exec("echo sdk-mem > /root/m")
        path = sb.snapshot("sdkmem", memory=True)
        eq(path, snap_path("sdkmem"), "the path")
        eq(sb.exec("cat /root/m").text, "sdk-mem\n", "the session runs on")
        kids = sb.fork(2)
        try:
            eq(len(kids), 2, "two forks")
            kids[0].exec("echo k0 >> /root/m")
            eq(kids[1].exec("cat /root/m").text, "sdk-mem\n", "forks diverge")
        finally:
            for k in kids:
                k.close()
    with Sandbox.create(resume="sdkmem") as r:
        eq(r.exec("cat /root/m").text, "sdk-mem\n", "resumed from the memory snapshot")

    async def aio():
        async with await AsyncSandbox.create(resume="sdkmem") as a:
            p2 = await a.snapshot(output=os.path.join(TMP, "aio.gdsnap"), memory=True, stop=True)
            return p2

    p2 = asyncio.run(aio())
    eq(run(["exec", "--resume", p2, "--", "cat", "/root/m"], check=0).stdout, "sdk-mem\n",
       "the async memory snapshot")
    eq(json.loads(run(["ls", "--json"], check=0).stdout), [], "every session stopped")


def setup():
    """A private cache with the default image (built in the user's cache if needed)."""
    subprocess.run([G, "exec", "--", "true"], check=True, capture_output=True, timeout=900)
    user = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    src = os.path.join(user, "gondolin", "images", "default-" + os.uname().machine)
    os.makedirs(STORE)
    os.makedirs(RT, mode=0o700)
    shutil.copytree(src, os.path.join(STORE, os.path.basename(src)))
    verdict = os.path.join(user, "gondolin", "kvm-verdict")
    if os.path.exists(verdict):  # (no second KVM probe)
        shutil.copy(verdict, os.path.join(CACHE, "gondolin", "kvm-verdict"))


def main():
    failed = 0
    try:
        setup()
        os.makedirs(STATE, exist_ok=True)
        for t in TESTS:
            if FILTER and FILTER not in t.__name__:
                continue
            t0 = time.time()
            try:
                t()
                print(f"ok   {t.__name__} ({time.time() - t0:.1f}s)", flush=True)
            except Exception as e:
                failed += 1
                print(f"FAIL {t.__name__}: {e}", flush=True)
    finally:
        for s in json.loads(run(["ls", "--json"]).stdout or "[]"):
            os.kill(s["pid"], signal.SIGKILL)
        if failed and os.environ.get("GD_KEEP"):
            print(f"kept {TMP}")
        else:
            shutil.rmtree(TMP, ignore_errors=True)
    print(f"{len(TESTS)} tests, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
