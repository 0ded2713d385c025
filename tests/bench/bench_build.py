#!/usr/bin/env python3
"""Image build benchmark: gondolin's packing steps vs the command-line tools.

  python3 tests/bench/bench_build.py [BUILD_DIR] [RUNS]

Builds the default image from a warm package cache (RUNS times, median), keeping the
staging trees; then packs the very same trees with `mke2fs -d` (same size, label,
4 KiB blocks, no journal) and `find | cpio -o -H newc | lz4 -l`, and prints both side
by side with the resulting sizes. Needs cpio and lz4 (scripts/setup.sh --bench).
"""
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "build"))
RUNS = int(sys.argv[2]) if len(sys.argv) > 2 else 3
GONDOLIN = os.path.join(BUILD, "gondolin")


def timed(cmd, **kw):
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, **kw)
    return time.perf_counter() - t0


def main():
    for tool in ("mke2fs", "cpio", "lz4"):
        if not shutil.which(tool):
            sys.exit("bench_build: %s missing (bash scripts/setup.sh --bench)" % tool)
    tmp = tempfile.mkdtemp(prefix="gd-bench-build-")
    work = os.path.join(tmp, "work")
    out = os.path.join(tmp, "img")
    env = dict(os.environ, GONDOLIN_PROGRESS="plain", GONDOLIN_BUILD_KEEP_WORK=work)
    subprocess.run([GONDOLIN, "build", "--default", "--output", out], check=True,
                   capture_output=True, env=env)  # warm the package cache
    ours = {"total": [], "unpack": [], "initramfs": [], "ext4": []}
    for _ in range(RUNS):
        t0 = time.perf_counter()
        p = subprocess.run([GONDOLIN, "build", "--default", "--output", out, "-v"], check=True,
                           capture_output=True, text=True, env=env)
        ours["total"].append(time.perf_counter() - t0)
        m = re.search(r"unpack ([\d.]+) s, initramfs ([\d.]+) s, ext4 ([\d.]+) s", p.stderr)
        ours["unpack"].append(float(m.group(1)))
        ours["initramfs"].append(float(m.group(2)))
        ours["ext4"].append(float(m.group(3)))
    med = {k: statistics.median(v) for k, v in ours.items()}
    size = os.path.getsize(os.path.join(out, "rootfs.ext4"))
    tree, itree = os.path.join(work, "rootfs"), os.path.join(work, "initramfs")

    cli = {"ext4": [], "initramfs": []}
    ext4 = os.path.join(tmp, "cli.ext4")
    cpio = os.path.join(tmp, "cli.cpio.lz4")
    for _ in range(RUNS):
        if os.path.exists(ext4):
            os.unlink(ext4)
        cli["ext4"].append(timed(["mke2fs", "-q", "-F", "-t", "ext4", "-d", tree, "-L",
                                  "gondolin-root", "-m", "0", "-O", "^has_journal", "-E",
                                  "lazy_itable_init=0,lazy_journal_init=0", "-b", "4096",
                                  ext4, "%dk" % (size // 1024)]))
        cli["initramfs"].append(timed(
            ["sh", "-c", "cd '%s' && find . -print0 | LC_ALL=C sort -z | "
             "cpio --null -o -H newc --quiet | lz4 -l -9 -q > '%s'" % (itree, cpio)]))
    cmed = {k: statistics.median(v) for k, v in cli.items()}

    def du(p):
        return os.stat(p).st_blocks * 512 / 1e6

    rows = [
        ("rootfs.ext4 (write %s)" % ("libext2fs"), med["ext4"], cmed["ext4"]),
        ("initramfs.cpio.lz4", med["initramfs"], cmed["initramfs"]),
        ("packing total", med["ext4"] + med["initramfs"], cmed["ext4"] + cmed["initramfs"]),
    ]
    print("default image, warm package cache, %d runs (median), TCG host, 2 cores" % RUNS)
    print("%-28s %12s %14s %8s" % ("step", "gondolin", "mke2fs/cpio/lz4", "ratio"))
    for name, a, b in rows:
        print("%-28s %10.2f s %12.2f s %7.2fx" % (name, a, b, a / b if b else 0))
    print("%-28s %10.2f s %14s" % ("unpack packages (both)", med["unpack"], "-"))
    print("%-28s %10.2f s %12.2f s" % ("whole build", med["total"],
                                       med["total"] - med["ext4"] - med["initramfs"]
                                       + cmed["ext4"] + cmed["initramfs"]))
    print()
    print("%-28s %12s %14s" % ("size (allocated)", "gondolin", "mke2fs/cpio/lz4"))
    print("%-28s %10.1f MB %12.1f MB" % ("rootfs.ext4", du(os.path.join(out, "rootfs.ext4")),
                                         du(ext4)))
    print("%-28s %10.2f MB %12.2f MB" % ("initramfs.cpio.lz4",
                                         os.path.getsize(os.path.join(out,
                                                                      "initramfs.cpio.lz4")) / 1e6,
                                         os.path.getsize(cpio) / 1e6))
    fsck = subprocess.run(["e2fsck", "-fn", os.path.join(out, "rootfs.ext4")],
                          capture_output=True, text=True)
    print("e2fsck -fn of ours: %s" % ("clean" if fsck.returncode == 0 else "ERRORS"))
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
