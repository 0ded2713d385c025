#!/usr/bin/env python3
"""Disk checkpoints with real VMs (docs/snapshots.md): rootfs mode cow, `gondolin snapshot`,
`start/exec --resume`, the snapshots in the image store (ls, gc, rm, inspect), refusals
(corrupt, another buildId, another version), SIGKILL during a snapshot, and the Python
SDK's Sandbox.create(resume=...).

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

from harness import TESTS, eq, expect, test  # noqa: E402

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


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def wait_gone(pid, secs=30):
    end = time.time() + secs
    while alive(pid) and time.time() < end:
        time.sleep(0.1)
    return not alive(pid)


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
