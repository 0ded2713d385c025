#!/usr/bin/env python3
"""gondolin benchmarks: one command, prints a markdown table side by side with the peer or
physical limit measured in the same run. Not part of pass/fail.

    python3 tests/bench/bench.py [BUILD_DIR] [--quick]
"""
import glob
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time

BUILD = os.path.abspath(next((a for a in sys.argv[1:] if not a.startswith("-")), "build"))
QUICK = "--quick" in sys.argv
G = os.path.join(BUILD, "gondolin")
B = os.path.join(BUILD, "tests", "gd-bench")
N_BOOT = 5 if QUICK else 11
N_RTT = 200 if QUICK else 1000


def bench(*args):
    out = subprocess.run([B] + [str(a) for a in args], capture_output=True, text=True, check=True).stdout
    return {k: float(v) for k, v in (l.split() for l in out.splitlines())}


def cli_true_ms(cold=True):
    """`gondolin exec -- true` wall time; cold: GONDOLIN_COLD_BOOT=1 (no booted snapshot)."""
    return cli_run(cold)["wall_ms"]


def cli_run(cold, debug=False):
    """One `gondolin exec -- true`: wall time, VM start to agent ready and to the exit of
    `true` (GONDOLIN_TIMING), how the VM started, and with debug the save's figures."""
    env = dict(os.environ, GONDOLIN_TIMING="1")
    env.pop("GONDOLIN_COLD_BOOT", None)
    if cold:
        env["GONDOLIN_COLD_BOOT"] = "1"
    if debug:
        env["GONDOLIN_SNAP_DEBUG"] = "1"
    s = time.monotonic()
    r = subprocess.run([G, "exec", "--", "true"], capture_output=True, text=True, env=env)
    if r.returncode:
        sys.exit(f"gondolin exec -- true failed ({r.returncode}): {r.stderr.strip()}")
    out = {"wall_ms": (time.monotonic() - s) * 1000}
    m = re.search(r"agent ready after (\d+) ms \(accel \w+, ([a-z+]+)\)", r.stderr)
    out["ready_ms"], out["mode"] = float(m.group(1)), m.group(2)
    out["first_exec_ms"] = float(re.search(r"command done after (\d+) ms", r.stderr).group(1))
    m = re.search(r"guest paused (\d+) ms", r.stderr)
    if m:
        out["paused_ms"] = float(m.group(1))
    m = re.search(r"file complete: (\d+) bytes, (\d+) ms", r.stderr)
    if m:
        out["size"], out["file_ms"] = int(m.group(1)), float(m.group(2))
    return out


def snap_files(mem=1024):
    """The booted snapshots of the default image for a VM shape with this memory."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    st = os.environ.get("GONDOLIN_IMAGE_STORE") or os.path.join(cache, "gondolin", "images")
    bid = json.load(open(os.path.join(st, "default-x86_64", "manifest.json")))["buildId"]
    out = []
    for p in glob.glob(os.path.join(st, "snapshots", "boot", bid, "*.gdsnap")):
        with open(p, "rb") as f:
            b = f.read(512)
        if int.from_bytes(b[96:100], "little") == mem:
            out.append(p)
    return out


def snapshot_rounds(bare):
    """Booted snapshots: per round one cold boot, one restore and one bare QEMU boot,
    interleaved; then saves (the first start of a shape: boot, warm-up, save)."""
    cold, rest, brs = [], [], []
    for f in snap_files():
        os.unlink(f)
    save = [cli_run(cold=False, debug=True) for _ in range(1)]
    for _ in range(N_BOOT):
        brs.append(bench("bare", 1)["bare_boot_poweroff_ms"])
        cold.append(cli_run(cold=True))
        rest.append(cli_run(cold=False))
    for _ in range(2 if QUICK else 3):
        for f in snap_files():
            os.unlink(f)
        save.append(cli_run(cold=False, debug=True))
    modes = {r["mode"] for r in rest}
    assert modes == {"restore"}, f"restores took {modes}"
    m = statistics.median
    bm = m(brs + [bare])
    c = {k: m(r[k] for r in cold) for k in ("wall_ms", "ready_ms", "first_exec_ms")}
    r = {k: m(x[k] for x in rest) for k in ("wall_ms", "ready_ms", "first_exec_ms")}
    s = {k: m(x[k] for x in save if k in x) for k in ("wall_ms", "paused_ms", "size", "file_ms")}
    n = len(rest)
    tgt = "<= 300 ms and <= 0.2x cold"
    met = "met" if r["wall_ms"] <= 300 and r["wall_ms"] <= 0.2 * c["wall_ms"] else "not met"
    return [
        ("(e) `gondolin exec -- true` from a booted snapshot, process start to exit (median of %d)" % n,
         "%.0f ms" % r["wall_ms"], "cold boot: %.0f ms; bare QEMU boot: %.0f ms" % (c["wall_ms"], bm),
         "%.2fx cold" % (r["wall_ms"] / c["wall_ms"]), "%s (%s)" % (tgt, met)),
        ("(e) VM start to first exec reply: restore / cold boot",
         "%.0f ms" % r["first_exec_ms"], "cold: %.0f ms; bare boot to poweroff: %.0f ms" % (c["first_exec_ms"], bm),
         "%.2fx cold" % (r["first_exec_ms"] / c["first_exec_ms"]), ""),
        ("(e) VM start to agent ready (RESUME answered): restore / cold boot",
         "%.0f ms" % r["ready_ms"], "cold: %.0f ms" % c["ready_ms"],
         "%.2fx cold" % (r["ready_ms"] / c["ready_ms"]), ""),
        ("(e) first start of a VM shape: boot + warm-up + save, `exec -- true` (median of %d)" % len(save),
         "%.0f ms" % s["wall_ms"], "cold boot: %.0f ms" % c["wall_ms"],
         "%.2fx cold" % (s["wall_ms"] / c["wall_ms"]), ""),
        ("(e) snapshot save: guest paused / file complete (hash, fsync) / size",
         "%.0f ms / %.0f ms / %.1f MiB" % (s["paused_ms"], s["file_ms"], s["size"] / (1 << 20)),
         "", "", ""),
    ]


def timed(args, env=None):
    s = time.monotonic()
    r = subprocess.run([G] + args, check=True, capture_output=True, text=True, env=env)
    return (time.monotonic() - s) * 1000, r


def session_rounds():
    """Sessions: a disk checkpoint and a memory snapshot (time of the `snapshot` command,
    size), a session resumed from the memory snapshot, and `fork -n 3`, against a session
    booted cold and three booted cold (the peer of a fork), and the disk's own write of
    as many bytes (dd + fsync: the limit of a save)."""
    import tempfile
    tmp = tempfile.mkdtemp(prefix="gd-bench-snap-")
    cold_env = dict(os.environ, GONDOLIN_COLD_BOOT="1")
    rows = {k: [] for k in ("disk_ms", "disk_size", "mem_ms", "mem_size", "dd_ms", "resume_ms",
                            "cold_start_ms", "fork_ms", "cold3_ms", "warm_start_ms")}
    for i in range(2 if QUICK else 3):
        ms, _ = timed(["start", "--name", "bm-cow", "--rootfs-mode", "cow"])
        ck = os.path.join(tmp, "ck%d.gdsnap" % i)
        ms, _ = timed(["snapshot", "bm-cow", "--output", ck])
        rows["disk_ms"].append(ms)
        rows["disk_size"].append(os.path.getsize(ck))
        ms, _ = timed(["start", "--name", "bm-mem"])
        rows["warm_start_ms"].append(ms)
        mem = os.path.join(tmp, "mem%d.gdsnap" % i)
        ms, _ = timed(["snapshot", "bm-mem", "--memory", "--output", mem])
        rows["mem_ms"].append(ms)
        size = os.path.getsize(mem)
        rows["mem_size"].append(size)
        out = os.path.join(tmp, "dd")
        s = time.monotonic()
        subprocess.run(["dd", "if=/dev/zero", "of=" + out, "bs=1M", "count=%d" % (size >> 20),
                        "conv=fsync"], check=True, capture_output=True)
        rows["dd_ms"].append((time.monotonic() - s) * 1000)
        os.unlink(out)
        ms, _ = timed(["start", "--name", "bm-res", "--resume", mem])
        rows["resume_ms"].append(ms)
        ms, _ = timed(["start", "--name", "bm-cold"], env=cold_env)
        rows["cold_start_ms"].append(ms)
        ms, _ = timed(["fork", "bm-mem", "-n", "3", "--name", "bm-kid"])
        rows["fork_ms"].append(ms)
        for n in ("bm-res", "bm-cold", "bm-kid-1", "bm-kid-2", "bm-kid-3"):
            subprocess.run([G, "stop", n], check=True, capture_output=True)
        s = time.monotonic()
        for k in range(3):
            subprocess.run([G, "start", "--name", "bm-c%d" % k], check=True, capture_output=True,
                           env=cold_env)
        rows["cold3_ms"].append((time.monotonic() - s) * 1000)
        for n in ("bm-mem", "bm-c0", "bm-c1", "bm-c2"):
            subprocess.run([G, "stop", n], check=True, capture_output=True)
        os.unlink(ck)
        os.unlink(mem)
    os.rmdir(tmp)
    m = {k: statistics.median(v) for k, v in rows.items()}
    n = len(rows["mem_ms"])
    return [
        ("(f) disk checkpoint, `gondolin snapshot` (sync, stop, seal; median of %d) / size" % n,
         "%.0f ms / %.1f MiB" % (m["disk_ms"], m["disk_size"] / (1 << 20)), "", "", ""),
        ("(f) memory snapshot, `gondolin snapshot --memory` (median of %d) / size" % n,
         "%.0f ms / %.1f MiB" % (m["mem_ms"], m["mem_size"] / (1 << 20)),
         "dd + fsync of as many bytes to the same disk: %.0f ms" % m["dd_ms"],
         "%.2fx" % (m["mem_ms"] / m["dd_ms"]), ""),
        ("(f) `gondolin start --resume MEMSNAP`, process start to ready",
         "%.0f ms" % m["resume_ms"],
         "`start` cold boot: %.0f ms; from the booted snapshot: %.0f ms" % (m["cold_start_ms"], m["warm_start_ms"]),
         "%.2fx cold" % (m["resume_ms"] / m["cold_start_ms"]), ""),
        ("(f) `gondolin fork -n 3` (snapshot + 3 resumes)", "%.0f ms" % m["fork_ms"],
         "3 cold `start`s: %.0f ms" % m["cold3_ms"], "%.2fx" % (m["fork_ms"] / m["cold3_ms"]), ""),
    ]


def boot_rounds():
    """Bare QEMU, the CLI and the API boot interleaved, one of each per round, so that
    drift in the machine's speed hits all three alike."""
    bare, cli, ready, first = [], [], [], []
    for _ in range(N_BOOT):
        bare.append(bench("bare", 1)["bare_boot_poweroff_ms"])
        cli.append(cli_true_ms(cold=True))
        b = bench("boot", 1)
        ready.append(b["boot_ready_ms"])
        first.append(b["boot_first_exec_ms"])
    m = statistics.median
    return m(bare), m(cli), {"boot_ready_ms": m(ready), "boot_first_exec_ms": m(first)}


def main():
    subprocess.run([G, "exec", "--", "true"], check=True, capture_output=True)  # image ready
    accel = subprocess.run([G, "doctor"], capture_output=True, text=True).stdout
    accel = "TCG" if "TCG" in accel or "hung" in accel else "KVM"
    bare, cli, boot = boot_rounds()
    snap_rows = snapshot_rounds(bare) + session_rounds()
    raw = bench("raw", N_RTT)
    rtt = bench("rtt", N_RTT)
    tput = bench("tput", 256)
    rss1 = bench("rss", 1)
    rss4 = bench("rss", 4)
    # the guest's own cost of fork+exec of /bin/true (bash loop inside the VM): the floor
    # for an exec round trip
    loop = subprocess.run([G, "exec", "--", "bash", "-c",
                           "s=$(date +%s%N); for i in $(seq 100); do /bin/true; done; e=$(date +%s%N); echo $(( (e-s)/100000 ))"],
                          capture_output=True, text=True, check=True).stdout
    guest_fork_exec_us = float(loop.strip())
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    rows = [
        ("(a) `gondolin exec --cold-boot -- true`, process start to exit (median of %d)" % N_BOOT,
         "%.0f ms" % cli, "bare QEMU, same kernel+initramfs, init powers off at once: %.0f ms" % bare,
         "%.2fx" % (cli / bare), "<= 1.15x"),
        ("(a) VM start to first exec reply (C API, median of %d)" % N_BOOT,
         "%.0f ms" % boot["boot_first_exec_ms"], "bare QEMU boot to poweroff: %.0f ms" % bare,
         "%.2fx" % (boot["boot_first_exec_ms"] / bare), "<= 1.15x"),
        ("(a) VM start to agent HELLO", "%.0f ms" % boot["boot_ready_ms"], "bare: %.0f ms" % bare,
         "%.2fx" % (boot["boot_ready_ms"] / bare), ""),
        ("(b) protocol round trip through the agent (PING, 64 B, median of %d)" % N_RTT,
         "%.0f us" % rtt["ping_us"], "raw echo on the same virtio-serial port: %.0f us" % raw["raw_echo_us"],
         "%.2fx" % (rtt["ping_us"] / raw["raw_echo_us"]), "<= 1.5x"),
        ("(b) exec of /bin/true on a warm VM, round trip (median of %d)" % rtt["n_exec"],
         "%.1f ms" % (rtt["exec_true_us"] / 1000),
         "the guest's own fork+exec of /bin/true (bash loop in the VM): %.1f ms" % (guest_fork_exec_us / 1000),
         "%.2fx" % (rtt["exec_true_us"] / guest_fork_exec_us), "(vs raw echo: %.0fx)" % (rtt["exec_true_us"] / raw["raw_echo_us"])),
        ("(c) stdout throughput, `head -c 256M /dev/zero`", "%.0f MB/s" % tput["stdout_MBps"],
         "raw bulk echo on the same port: %.0f MB/s" % raw["raw_bulk_MBps"],
         "%.2fx" % (tput["stdout_MBps"] / raw["raw_bulk_MBps"]), ""),
        ("(d) host process RSS per running VM (1 VM / 4 VMs)",
         "%.1f / %.1f MiB" % (rss1["rss_per_vm_kb"] / 1024, rss4["rss_per_vm_kb"] / 1024),
         "process base %.1f MiB" % (rss1["rss_base_kb"] / 1024), "", "<= 20 MiB"),
    ] + snap_rows
    print(f"machine: {cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}; accel {accel}")
    print()
    print("| measurement | gondolin | peer / limit (same run) | ratio | target |")
    print("|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
