#!/usr/bin/env python3
"""Files: the same host directory and the same guest commands through our virtio-fs
mount (--mount-hostfs), QEMU's built-in 9p (-fsdev local,security_model=none +
virtio-9p-device) mounted with its defaults (cache=none: it sees host changes at once, as
ours does within 1 s) and mounted cache=loose (it never revalidates: host changes may stay
unseen), and the guest's own tmpfs (the limit), in one run. Ours runs twice: with its
default (cache=auto, compared with 9p's default) and with :cache=always (the host leaves
the directory alone; compared with 9p cache=loose).

    python3 tests/bench/bench_vfs.py [BUILD_DIR] [--files N] [--mib M] [--runs R]
                                     [--modes ours,ours-always,serial,9p,9p-loose,tmpfs] [--serial-exclusive]

Mode serial is issue 14's other transport, a prototype measured here only: FUSE over a
virtio-serial port. A static guest relay (tests/bench/vfs_serial/relay.c, built here with
musl-gcc and sent ahead of the archive on the guest's stdin) mounts /dev/fuse and passes
the kernel's requests and the host's replies through a second virtio-serial device
(gondolin.fuse, added through the GONDOLIN_QEMU wrapper); the host side is
build/tests/gd-vfs-serial (tests/bench/vfs_serial/server.c): the same FUSE session and
hostfs provider as our mount, on one thread. --serial-exclusive marks its provider
GD_VFS_EXCLUSIVE (long TTLs, writeback cache). Its counts (requests, largest READ/WRITE,
requests waiting at once) go to stderr after each run.

Rows (ms, median of R runs; every run is a fresh VM and a fresh host directory):
  (a) write M MiB (dd bs=1M, fsync), then read it back with the guest's caches dropped
  (b) create N small files in N/100 directories (a shell loop: no process per file)
  (c) stat all of them (find -exec stat {} +, caches dropped); git status in that tree
      once it is a repository (caches dropped)
  (d) tar x of an N-file archive (from guest memory)
  (e) find over the extracted tree (caches dropped)
The image (tests/bench/vfs-image.json) uses Debian's generic kernel: the cloud kernel our
default image boots has no 9p. Timings are taken inside the guest (date +%s%N), so boot
time is not in them.
"""
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
args = sys.argv[1:]
OPTS = ("--files", "--mib", "--runs", "--modes")
BUILD = os.path.abspath(next((a for i, a in enumerate(args) if not a.startswith("-")
                              and (i == 0 or args[i - 1] not in OPTS)), "build"))


def opt(name, default):
    return args[args.index(name) + 1] if name in args else default


FILES = int(opt("--files", "10000"))
MIB = int(opt("--mib", "256"))
RUNS = int(opt("--runs", "1"))
MODES = opt("--modes", "ours,9p,ours-always,9p-loose,tmpfs").split(",")
SERIAL_EXCLUSIVE = "--serial-exclusive" in args
G = os.path.join(BUILD, "gondolin")
IMAGE = "gd-bench-vfs:1"

SCRIPT = r"""
set -e
D=$1
cat > /tmp/a.tar
now() { date +%s%N; }
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
row() { echo "ROW $1 $(( ($3 - $2) / 1000000 ))"; }
s=$(now); dd if=/dev/zero of=$D/big bs=1M count=__MIB__ conv=fsync 2>/dev/null; e=$(now)
row write $s $e
drop
s=$(now); dd if=$D/big of=/dev/null bs=1M 2>/dev/null; e=$(now)
row read $s $e
rm $D/big
mkdir $D/small
s=$(now)
d=0
while [ $d -lt __DIRS__ ]; do
  mkdir $D/small/d$d
  f=0
  while [ $f -lt 100 ]; do echo x > $D/small/d$d/f$f; f=$((f + 1)); done
  d=$((d + 1))
done
e=$(now)
row create $s $e
drop
s=$(now); find $D/small -type f -exec stat -c %s {} + > /tmp/sizes; e=$(now)
row stat $s $e
echo "COUNT stat $(wc -l < /tmp/sizes)"
cd $D/small
git init -q . && git add -A && git -c user.name=b -c user.email=b@b commit -qm x
git status --porcelain > /dev/null
drop
s=$(now); git status --porcelain > /tmp/st; e=$(now)
row git_status $s $e
echo "COUNT git_status_dirty $(wc -l < /tmp/st)"
cd /
mkdir $D/x
s=$(now); tar xf /tmp/a.tar -C $D/x; e=$(now)
row untar $s $e
drop
s=$(now); n=$(find $D/x | wc -l); e=$(now)
row find $s $e
echo "COUNT find $n"
"""

ROWS = [("write", f"(a) write {MIB} MiB (dd, fsync)", "MB/s"),
        ("read", f"(a) read {MIB} MiB back, cold", "MB/s"),
        ("create", f"(b) create {FILES} small files", "ms"),
        ("stat", f"(c) stat all {FILES}, cold", "ms"),
        ("git_status", f"(c) git status, {FILES}-file repo, cold", "ms"),
        ("untar", f"(d) tar x of {FILES} files", "ms"),
        ("find", "(e) find over the tree, cold", "ms")]


def run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode:
        raise SystemExit(f"{' '.join(cmd)}: exit {r.returncode}:\n{r.stderr[-3000:]}")
    return r


def make_archive(path):
    src = tempfile.mkdtemp(prefix="gd-bench-vfs-src-")
    for d in range(FILES // 100):
        os.mkdir(os.path.join(src, f"d{d}"))
        for f in range(100):
            with open(os.path.join(src, f"d{d}", f"f{f}"), "w") as fp:
                fp.write(f"file {d}/{f}\n")
    with tarfile.open(path, "w") as t:
        t.add(src, arcname="tree")
    shutil.rmtree(src)


def qemu_wrapper(tmp, extra):
    real = shutil.which("qemu-system-x86_64")
    w = os.path.join(tmp, "qemu-extra")
    with open(w, "w") as f:
        f.write(f'#!/bin/sh\nexec {real} "$@" {extra}\n')
    os.chmod(w, 0o755)
    return w


def build_relay(work):
    """The serial mode's guest relay: a static binary, sent ahead of the archive on the
    guest's stdin as a 12-byte decimal length and the bytes."""
    relay = os.path.join(work, "relay")
    run(["musl-gcc", "-static", "-O2", "-Wall", "-Wextra", "-Werror", "-pthread", "-o", relay,
         os.path.join(ROOT, "tests/bench/vfs_serial/relay.c")])
    return relay


def serial_stdin(relay, archive, path):
    with open(path, "wb") as out, open(relay, "rb") as r, open(archive, "rb") as a:
        data = r.read()
        out.write(b"%11d\n" % len(data) + data)
        shutil.copyfileobj(a, out)


# read the relay off stdin, mount, and leave the archive for the script's own cat
SERIAL_PRELUDE = r"""set -e
n=$(head -c 12 | tr -d ' \n')
head -c "$n" > /tmp/relay
[ "$(wc -c < /tmp/relay)" -eq "$n" ]
chmod +x /tmp/relay
mkdir -p /mnt/gs
port= i=0
while [ -z "$port" ]; do  # the second virtio-serial device may still be probing
  for p in /sys/class/virtio-ports/*; do
    if [ "$(cat $p/name)" = gondolin.fuse ]; then port=/dev/${p##*/}; fi
  done
  if [ -z "$port" ]; then i=$((i + 1)); [ $i -lt 100 ]; sleep 0.1; fi
done
/tmp/relay /mnt/gs $port
"""


def one(mode, archive, serial_in=None):
    tmp = tempfile.mkdtemp(prefix=f"gd-bench-vfs-{mode}-")
    server = None
    host = os.path.join(tmp, "dir")
    os.mkdir(host)
    env = dict(os.environ)
    cmd = [G, "exec", "--image", IMAGE, "--memory", "1G"]
    script = SCRIPT.replace("__MIB__", str(MIB)).replace("__DIRS__", str(FILES // 100))
    if mode in ("ours", "ours-always"):
        cmd += ["--mount-hostfs", f"{host}:/mnt/gd" + (":cache=always" if mode != "ours" else "")]
        target = "/mnt/gd"
    elif mode in ("9p", "9p-loose"):
        env["GONDOLIN_QEMU"] = qemu_wrapper(
            tmp, f"-fsdev local,id=b9,path={host},security_model=none "
            "-device virtio-9p-device,fsdev=b9,mount_tag=bench9")
        cache = ",cache=loose" if mode == "9p-loose" else ""
        script = ("mkdir -p /mnt/b9 && mount -t 9p -o trans=virtio,version=9p2000.L,"
                  f"msize=512000{cache} bench9 /mnt/b9\n") + script
        target = "/mnt/b9"
    elif mode == "serial":
        sock = os.path.join(tmp, "fuse.sock")
        log = open(os.path.join(tmp, "server.log"), "w")
        server = subprocess.Popen(
            [os.path.join(BUILD, "tests", "gd-vfs-serial"), sock, host]
            + (["--exclusive"] if SERIAL_EXCLUSIVE else []),
            stdout=subprocess.PIPE, stderr=log, text=True)
        if server.stdout.readline().strip() != "READY":
            raise SystemExit(f"serial: gd-vfs-serial did not start:\n{open(log.name).read()}")
        # QEMU is the client; a second virtio-serial device (the first is the agent's)
        env["GONDOLIN_QEMU"] = qemu_wrapper(
            tmp, f"-chardev socket,id=fr,path={sock} -device virtio-serial-device,id=fs0 "
            "-device virtserialport,bus=fs0.0,chardev=fr,name=gondolin.fuse")
        script = SERIAL_PRELUDE + script
        target = "/mnt/gs"
        archive = serial_in
    else:
        target = "/tmp/bench"
        script = "mkdir -p /tmp/bench\n" + script
    try:
        with open(archive, "rb") as stdin:
            r = subprocess.run(cmd + ["--", "sh", "-c", script, "sh", target], stdin=stdin,
                               capture_output=True, text=True, env=env, timeout=3600)
        if r.returncode:
            raise SystemExit(f"{mode}: exit {r.returncode}:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
        res, counts = {}, {}
        for line in r.stdout.splitlines():
            p = line.split()
            if p[:1] == ["ROW"]:
                res[p[1]] = int(p[2])
            elif p[:1] == ["COUNT"]:
                counts[p[1]] = int(p[2])
        want = {"stat": FILES, "git_status_dirty": 0, "find": FILES + FILES // 100 + 2}
        for k, v in want.items():
            if counts.get(k) != v:
                raise SystemExit(f"{mode}: {k} counted {counts.get(k)}, expected {v}:\n{r.stdout}")
        if mode != "tmpfs" and not os.path.isdir(os.path.join(host, "x", "tree", "d0")):
            raise SystemExit(f"{mode}: the extracted tree is not in the host directory")
        return res
    finally:
        if server:
            server.terminate()
            server.wait()
            log.close()
            for line in open(log.name):
                if line.strip():
                    print(f"  serial host: {line.rstrip()}", file=sys.stderr, flush=True)
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    if not os.access(G, os.X_OK):
        raise SystemExit(f"{G}: build first (bash scripts/build.sh)")
    run([G, "build", "--config", os.path.join(ROOT, "tests/bench/vfs-image.json"),
         "--tag", IMAGE], timeout=1800)
    work = tempfile.mkdtemp(prefix="gd-bench-vfs-")
    archive = os.path.join(work, "a.tar")
    make_archive(archive)
    serial_in = None
    if "serial" in MODES:
        serial_in = os.path.join(work, "serial-stdin")
        serial_stdin(build_relay(work), archive, serial_in)
    results = {m: [] for m in MODES}
    try:
        for _ in range(RUNS):
            for m in MODES:
                results[m].append(one(m, archive, serial_in))
                print(f"  {m}: {results[m][-1]}", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med = {m: {k: statistics.median(r[k] for r in results[m]) for k, _, _ in ROWS}
           for m in MODES}
    names = {"ours": "gondolin virtio-fs", "ours-always": "gondolin virtio-fs, cache=always",
             "9p": "QEMU 9p (default: cache=none)",
             "9p-loose": "QEMU 9p (cache=loose)",
             "tmpfs": "guest tmpfs (limit)",
             "serial": "FUSE over virtio-serial (prototype"
                       + (", exclusive)" if SERIAL_EXCLUSIVE else ")")}
    vs = [(m, p) for m, p in (("ours", "9p"), ("ours-always", "9p-loose"), ("serial", "9p"))
          if m in MODES and p in MODES]
    hdr = "| job | " + " | ".join(names[m] for m in MODES) + \
          "".join(f" | {m} vs {p}" for m, p in vs) + " |"
    print(hdr)
    print("|---|" + "---:|" * (len(MODES) + len(vs)))
    for k, label, unit in ROWS:
        cells, val = [], {}
        for m in MODES:
            ms = med[m][k]
            if unit == "MB/s":
                val[m] = MIB * 1.048576 / (ms / 1000) if ms else float("inf")
                cells.append(f"{val[m]:.0f} MB/s")
            else:
                val[m] = ms
                cells.append(f"{ms:.0f} ms")
        line = f"| {label} | " + " | ".join(cells)
        for m, p in vs:
            ratio = val[m] / val[p] if unit == "MB/s" else val[p] / max(val[m], 1)
            line += f" | {ratio:.1f}×"
        print(line + " |")
    print(f"\n{RUNS} run(s), fresh VM and host directory per run; "
          f"accel: {os.environ.get('GONDOLIN_ACCEL', 'auto')}")


if __name__ == "__main__":
    main()
