#!/usr/bin/env python3
"""gondolin benchmarks: one command, prints a markdown table side by side with the peer or
physical limit measured in the same run. Not part of pass/fail.

    python3 tests/bench/bench.py [BUILD_DIR] [--quick]
"""
import os
import platform
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


def cli_true_ms():
    s = time.monotonic()
    subprocess.run([G, "exec", "--", "true"], check=True, capture_output=True)
    return (time.monotonic() - s) * 1000


def boot_rounds():
    """Bare QEMU, the CLI and the API boot interleaved, one of each per round, so that
    drift in the machine's speed hits all three alike."""
    bare, cli, ready, first = [], [], [], []
    for _ in range(N_BOOT):
        bare.append(bench("bare", 1)["bare_boot_poweroff_ms"])
        cli.append(cli_true_ms())
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
        ("(a) `gondolin exec -- true`, process start to exit (median of %d)" % N_BOOT,
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
    ]
    print(f"machine: {cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}; accel {accel}")
    print()
    print("| measurement | gondolin | peer / limit (same run) | ratio | target |")
    print("|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
