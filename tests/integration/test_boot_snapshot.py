#!/usr/bin/env python3
"""Booted-image snapshots with real VMs (docs/snapshots.md): the first start of a VM shape
boots and saves, later starts restore; nothing per-sandbox is inherited (entropy, clock,
network); foreign, corrupted, truncated and half-written snapshots are never used.

Every scenario uses VM shapes of its own (--memory values no other suite uses) so that
it controls whether a snapshot exists. Which start path a run took is read from
GONDOLIN_TIMING's line ("restore", "boot+save", "boot").

Usage: test_boot_snapshot.py BUILD_DIR [NAME_FILTER]"""
import glob, json, os, re, signal, struct, subprocess, sys, time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "proxy"))
from fixture import Upstreams  # noqa: E402
import harness  # noqa: E402
from harness import expect, test  # noqa: E402

BUILD = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "build")
FILTER = sys.argv[2] if len(sys.argv) > 2 else ""
G = os.path.join(BUILD, "gondolin")
# seconds between saving a snapshot and restoring it in the clock test (the issue asks
# for "minutes"; one is enough to see a guest clock that stood still)
CLOCK_GAP = float(os.environ.get("GD_TEST_CLOCK_GAP", "65"))


def store():
    s = os.environ.get("GONDOLIN_IMAGE_STORE")
    if s:
        return s
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(cache, "gondolin", "images")


def snap_dir():
    man = os.path.join(store(), "default-x86_64", "manifest.json")
    with open(man) as f:
        bid = json.load(f)["buildId"]
    return os.path.join(store(), "snapshots", "boot", bid)


def header(path):
    with open(path, "rb") as f:
        b = f.read(512)
    return {"magic": b[:8], "stream": struct.unpack_from("<Q", b, 48)[0],
            "created": struct.unpack_from("<Q", b, 88)[0],
            "memory": struct.unpack_from("<I", b, 96)[0],
            "version": b[112:144].split(b"\0")[0].decode()}


def snaps(mem):
    """Complete snapshot files of this memory size (any other shape may exist too)."""
    out = []
    for p in glob.glob(os.path.join(snap_dir(), "*.gdsnap")):
        try:
            if header(p)["memory"] == mem:
                out.append(p)
        except OSError:
            pass
    return out


def forget(mem):
    for p in snaps(mem):
        os.unlink(p)


def gexec(mem, argv, flags=(), timeout=240, env=None):
    e = dict(os.environ, GONDOLIN_TIMING="1")
    e.pop("GONDOLIN_COLD_BOOT", None)
    if env:
        e.update(env)
    r = subprocess.run([G, "exec", "--memory", f"{mem}M"] + list(flags) + ["--"] + argv,
                       capture_output=True, timeout=timeout, text=True, env=e)
    m = re.search(r"timing: agent ready after \d+ ms \(accel \w+, ([a-z+]+)\)", r.stderr)
    mode = m.group(1) if m else "?"
    notes = [l for l in r.stderr.splitlines() if "timing:" not in l and l.strip()]
    return r.returncode, r.stdout, notes, mode


def saved(mem):
    """Boot once so that a snapshot of this shape exists; returns its path."""
    forget(mem)
    rc, out, notes, mode = gexec(mem, ["true"])
    expect(rc == 0 and mode == "boot+save", f"first start: rc {rc}, mode {mode}, {notes}")
    files = snaps(mem)
    expect(len(files) == 1, f"one snapshot after the first start: {files}")
    return files[0]


@test
def save_then_restore(up):
    """the first start boots and saves (fsync'ed, checksummed header); the next restores,
    with the same stdout, stderr and exit status as a cold boot"""
    mem = 656
    path = saved(mem)
    h = header(path)
    expect(h["magic"] == b"GDSNAPB\x01", f"magic {h['magic']!r}")
    expect(os.path.getsize(path) == 512 + h["stream"], "size = header + stream")
    expect(os.stat(path).st_mode & 0o077 == 0, "private file")
    script = "echo out; echo err >&2; head -c 0 /dev/urandom; exit 3"
    r1 = subprocess.run([G, "exec", "--memory", f"{mem}M", "--", "sh", "-c", script],
                        capture_output=True, text=True, timeout=240)
    r2 = subprocess.run([G, "exec", "--memory", f"{mem}M", "--cold-boot", "--", "sh", "-c", script],
                        capture_output=True, text=True, timeout=240)
    expect((r1.returncode, r1.stdout, r1.stderr) == (r2.returncode, r2.stdout, r2.stderr),
           f"restored {r1.returncode, r1.stdout, r1.stderr} vs cold {r2.returncode, r2.stdout, r2.stderr}")
    expect(r1.returncode == 3 and r1.stdout == "out\n" and r1.stderr == "err\n", repr(r1))
    rc, out, notes, mode = gexec(mem, ["true"])
    expect(rc == 0 and mode == "restore" and not notes, f"second start: {rc} {mode} {notes}")
    rc, out, notes, mode = gexec(mem, ["true"], flags=["--cold-boot"])
    expect(rc == 0 and mode == "boot" and not notes, f"--cold-boot: {rc} {mode} {notes}")
    rc, out, notes, mode = gexec(mem, ["true"], env={"GONDOLIN_COLD_BOOT": "1"})
    expect(rc == 0 and mode == "boot", f"GONDOLIN_COLD_BOOT=1: {rc} {mode} {notes}")
    rc, out, notes, mode = gexec(mem, ["sh", "-c", "test -d /data && echo mounted"],
                                 flags=["--mount-memfs", "/data"])
    expect(rc == 0 and mode == "boot" and out == "mounted\n",
           f"with a mount (not migratable): {rc} {mode} {out!r} {notes}")


@test
def entropy_differs(up):
    """/dev/urandom and getrandom() differ across 5 restores of one snapshot"""
    mem = 664
    saved(mem)
    seen = set()
    for i in range(5):
        rc, out, notes, mode = gexec(mem, ["sh", "-c",
                                           "head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n';"
                                           "echo; python3 -c 'import os; print(os.getrandom(16).hex())'"])
        expect(rc == 0 and mode == "restore", f"restore {i}: {rc} {mode} {notes}")
        lines = out.split()
        expect(len(lines) == 2 and len(lines[0]) == 64, f"output {out!r}")
        for l in lines:
            expect(l not in seen, f"restore {i} repeated random bytes {l}")
            seen.add(l)


@test
def clock_from_host(up):
    """guest wall clock within 1 s of the host after restoring a snapshot saved over a
    minute earlier (a restored guest's clock resumes where the snapshot stopped it)"""
    mem = 672
    path = saved(mem)
    created = header(path)["created"]
    wait = created + CLOCK_GAP - time.time()
    if wait > 0:
        time.sleep(wait)
    rc, out, notes, mode = gexec(mem, ["sh", "-c", "date +%s.%N"])
    host = time.time()
    expect(rc == 0 and mode == "restore", f"{rc} {mode} {notes}")
    age = host - created
    guest = float(out.strip())
    # the guest read its clock before the command's output travelled back: allow 1 s
    expect(abs(host - guest) <= 1.0 and age >= CLOCK_GAP - 1,
           f"guest {guest:.3f} host {host:.3f} (snapshot {age:.0f} s old)")


@test
def https_after_restore(up):
    """a new HTTPS request through the proxy works right after a restore (new network
    stack, new flows), with the secret substituted on the host as in a cold boot"""
    mem = 680
    flags = up.flags(f"good.test:{up.https_port}", secrets=[f"API_TOKEN@good.test=s3cret"])
    forget(mem)
    script = (f"curl -sS -m 20 -H \"Authorization: Bearer $API_TOKEN\" "
              f"https://good.test:{up.https_port}/echo")
    rc, out1, notes, mode = gexec(mem, ["sh", "-c", script], flags=flags)
    expect(rc == 0 and mode == "boot+save", f"first: {rc} {mode} {notes} {out1}")
    rc, out2, notes, mode = gexec(mem, ["sh", "-c", script], flags=flags)
    expect(rc == 0 and mode == "restore", f"restored: {rc} {mode} {notes} {out2}")
    expect("s3cret" in out2 and json.loads(out2)["method"] == "GET", f"upstream saw {out2}")


def tamper(mem, fn):
    path = saved(mem)
    fn(path)
    rc, out, notes, mode = gexec(mem, ["sh", "-c", "echo ok"])
    return path, rc, out, notes, mode


def one_notice(notes, path, words):
    expect(len(notes) == 1 and path in notes[0] and words in notes[0] and
           "discarded, booting instead" in notes[0], f"notice: {notes}")


@test
def foreign_refused(up):
    """a snapshot of another VM shape, another gondolin version or a bad header is
    refused with a notice and replaced; the command still succeeds"""
    mem, other = 688, 696
    src = saved(other)

    def swap(path):
        with open(src, "rb") as f, open(path, "wb") as g:
            g.write(f.read())

    path, rc, out, notes, mode = tamper(mem, swap)
    expect(rc == 0 and out == "ok\n" and mode == "boot+save", f"{rc} {out!r} {mode}")
    one_notice(notes, path, "another image, gondolin version or VM shape")

    def version(path):
        with open(path, "r+b") as f:
            f.seek(112)
            f.write(b"0.0.9\0")

    path, rc, out, notes, mode = tamper(mem, version)
    expect(rc == 0 and out == "ok\n" and mode == "boot+save", f"{rc} {out!r} {mode}")
    one_notice(notes, path, "another image, gondolin version or VM shape")

    def magic(path):
        with open(path, "r+b") as f:
            f.write(b"XXXX")

    path, rc, out, notes, mode = tamper(mem, magic)
    expect(rc == 0 and out == "ok\n" and mode == "boot+save", f"{rc} {out!r} {mode}")
    one_notice(notes, path, "no valid header")
    rc, out, notes, mode = gexec(mem, ["true"])
    expect(rc == 0 and mode == "restore" and not notes, f"rebuilt one restores: {mode} {notes}")


@test
def corrupted_refused(up):
    """a flipped byte in the stream fails the checksum before the guest runs; a
    truncated file is refused; both with a notice naming the file, the command succeeds"""
    mem = 704

    def flip(path):
        with open(path, "r+b") as f:
            f.seek(512 + header(path)["stream"] // 2)
            b = f.read(1)
            f.seek(-1, 1)
            f.write(bytes([b[0] ^ 0x01]))

    path, rc, out, notes, mode = tamper(mem, flip)
    expect(rc == 0 and out == "ok\n" and mode == "boot", f"{rc} {out!r} {mode} {notes}")
    one_notice(notes, path, "failed its checksum")
    expect(not os.path.exists(path), "the corrupted file was removed")

    def truncate(path):
        os.truncate(path, os.path.getsize(path) - 4096)

    path, rc, out, notes, mode = tamper(mem, truncate)
    expect(rc == 0 and out == "ok\n" and mode == "boot+save", f"{rc} {out!r} {mode} {notes}")
    one_notice(notes, path, "truncated")


@test
def sigkill_during_save(up):
    """SIGKILL while the snapshot is being written leaves no file (complete or partial);
    the next start saves one"""
    mem = 712
    forget(mem)
    d = snap_dir()
    before = set(os.listdir(d)) if os.path.isdir(d) else set()
    e = dict(os.environ, GONDOLIN_SNAP_DEBUG="1")
    p = subprocess.Popen([G, "exec", "--memory", f"{mem}M", "--", "true"], stderr=subprocess.PIPE,
                         stdout=subprocess.DEVNULL, text=True, env=e)
    seen = ""
    for line in p.stderr:
        seen += line
        if "warm-up done" in line:  # the next step stops the guest and migrates
            time.sleep(0.15)
            p.send_signal(signal.SIGKILL)
            break
    p.wait(timeout=60)
    expect(p.returncode == -signal.SIGKILL, f"killed mid-save: {p.returncode} {seen}")
    time.sleep(0.5)
    after = set(os.listdir(d)) - before
    expect(not after and not snaps(mem), f"left behind: {after}")
    rc, out, notes, mode = gexec(mem, ["true"])
    expect(rc == 0 and mode == "boot+save" and len(snaps(mem)) == 1, f"next start: {mode} {notes}")


@test
def store_listing_and_gc(up):
    """image ls shows booted snapshots with sizes (text and JSON); gc keeps the current
    image's and removes orphans"""
    mem = 656
    if not snaps(mem):
        saved(mem)
    r = subprocess.run([G, "image", "ls"], capture_output=True, text=True, timeout=60)
    expect(r.returncode == 0 and "booted snapshots" in r.stdout and "656M" in r.stdout,
           f"image ls: {r.stdout}")
    r = subprocess.run([G, "image", "ls", "--json"], capture_output=True, text=True, timeout=60)
    j = json.loads(r.stdout)
    mine = [s for s in j if s.get("kind") == "bootSnapshot" and s.get("memoryMb") == mem]
    expect(mine and mine[0]["size"] > 1 << 20 and mine[0]["valid"], f"json: {mine}")
    orphan_dir = os.path.join(store(), "snapshots", "boot", "00000000-dead-beef-0000-000000000000")
    os.makedirs(orphan_dir, exist_ok=True)
    orphan = os.path.join(orphan_dir, "0" * 32 + ".gdsnap")
    with open(mine[0]["path"], "rb") as f:
        hdr = bytearray(f.read(512))
    hdr[144:224] = b"00000000-dead-beef-0000-000000000000".ljust(80, b"\0")
    with open(orphan, "wb") as f:
        f.write(hdr + b"\0" * struct.unpack_from("<Q", hdr, 48)[0])
    r = subprocess.run([G, "image", "gc", "--dry-run"], capture_output=True, text=True, timeout=60)
    expect(orphan in r.stdout and mine[0]["path"] not in r.stdout, f"gc --dry-run: {r.stdout}")
    expect(os.path.exists(orphan), "dry run removed nothing")
    r = subprocess.run([G, "image", "gc"], capture_output=True, text=True, timeout=60)
    expect(r.returncode == 0 and not os.path.exists(orphan) and os.path.exists(mine[0]["path"]),
           f"gc: {r.stdout}")
    # a restore marks the file used; one of a shape nobody restored for 14 days goes
    path = mine[0]["path"]
    old = time.time() - 20 * 86400
    os.utime(path, (old, old))
    gexec(mem, ["true"])
    expect(os.path.getmtime(path) > time.time() - 600, "a restore marks the snapshot used")
    os.utime(path, (old, old))
    r = subprocess.run([G, "image", "gc"], capture_output=True, text=True, timeout=60)
    expect(r.returncode == 0 and path in r.stdout and "not used for 14 days" in r.stdout,
           f"gc of an idle shape: {r.stdout}")
    expect(not os.path.exists(path), "the idle snapshot is gone")


def main():
    up = Upstreams()
    try:
        failed = harness.run("booted snapshot tests", FILTER, up)
    finally:
        up.close()
        for mem in range(656, 713, 8):  # this file's VM shapes: ~80 MB each
            forget(mem)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
