#!/usr/bin/env python3
"""The Python SDK's exec round trip on one warm session, beside the C API's on a warm VM
measured in the same run. Prints markdown table rows (the header with --header).

    python3 tests/bench/bench_sdk.py [BUILD_DIR] [--n N] [--header]

Uses sdk/python from this tree (no install needed) and BUILD_DIR/gondolin start.
"""
import asyncio
import os
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "sdk", "python"))

from gondolin import AsyncSandbox, Sandbox  # noqa: E402

args = sys.argv[1:]
BUILD = os.path.abspath(next((a for i, a in enumerate(args) if not a.startswith("-")
                              and (i == 0 or args[i - 1] != "--n")), "build"))
N = int(args[args.index("--n") + 1]) if "--n" in args else 200
os.environ["GONDOLIN_BIN"] = os.path.join(BUILD, "gondolin")


def ms(samples):
    return statistics.median(samples) * 1000


def timed(fn, n):
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def c_api_exec_true_ms():
    b = os.path.join(BUILD, "tests", "gd-bench")
    if not os.path.exists(b):
        return None
    p = subprocess.run([b, "rtt", str(N)], capture_output=True, text=True)
    if p.returncode:
        return None
    vals = dict(l.split() for l in p.stdout.splitlines())
    return float(vals["exec_true_us"]) / 1000


def main():
    with Sandbox.create(memory=512) as sb:
        loop = asyncio.new_event_loop()
        a = loop.run_until_complete(AsyncSandbox.attach(sb.id))
        for _ in range(10):  # warm: page cache, TCG translations of true and sh
            sb.exec(["true"])
            sb.exec("true")
            loop.run_until_complete(a.exec(["true"]))
        # interleaved, one of each per round, so drift in the (shared) machine's speed
        # hits the three alike
        argv, shell, aio = [], [], []
        for _ in range(N):
            argv += timed(lambda: sb.exec(["true"]), 1)
            shell += timed(lambda: sb.exec("true"), 1)
            aio += timed(lambda: loop.run_until_complete(a.exec(["true"])), 1)
        loop.run_until_complete(a.close())
        loop.close()
        # 8 threads on the one connection: execs per second, beside one thread
        per = max(N // 8, 5)
        t0 = time.perf_counter()
        for _ in range(per):
            sb.exec(["true"])
        one = per / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        ts = [threading.Thread(target=lambda: [sb.exec(["true"]) for _ in range(per)]) for _ in range(8)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        conc = 8 * per / (time.perf_counter() - t0)
    c = c_api_exec_true_ms()
    peer = "C API exec of /bin/true on a warm VM (gd-bench rtt): %.1f ms" % c if c else "C API: gd-bench not built"
    ratio = lambda v: "%.2fx" % (v / c) if c else ""
    rows = [
        ("SDK `sb.exec([\"true\"])` round trip, warm session (median of %d)" % N, "%.1f ms" % ms(argv), peer, ratio(ms(argv)), ""),
        ("SDK `sb.exec(\"true\")` (via /bin/sh -lc), warm session (median of %d)" % N, "%.1f ms" % ms(shell), peer, ratio(ms(shell)), ""),
        ("SDK asyncio `await sb.exec([\"true\"])` (median of %d)" % N, "%.1f ms" % ms(aio), peer, ratio(ms(aio)), ""),
        ("SDK 8 threads on one session, `exec([\"true\"])` (guest-bound under TCG)", "%.0f execs/s" % conc,
         "1 thread, same run: %.0f execs/s" % one, "%.2fx" % (conc / one), ""),
    ]
    if "--header" in args:
        print("| measurement | gondolin | peer / limit (same run) | ratio | target |")
        print("|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
