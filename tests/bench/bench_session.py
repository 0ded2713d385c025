#!/usr/bin/env python3
"""Sessions: the cost of one command in a warm sandbox, through each front end, beside the
floors measured in the same run; and file copy throughput beside the exec byte stream.

    python3 tests/bench/bench_session.py [BUILD_DIR] [--n N] [--mib M]

Rows (medians of N):
  gondolin exec --session ID -- /bin/true   process start to exit of the CLI
  Python SDK sb.exec(["/bin/true"])           the call, on a connected Sandbox
  C API gd_exec round trip (gd-bench rtt)     exec of /bin/true on a warm VM, in-process
  guest fork+exec floor                       one /bin/true from a shell loop in the guest
and copy throughput (M MiB, median of 3 after a warm-up) in both directions: `gondolin cp`
vs `cat` through exec.
"""
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
args = sys.argv[1:]
BUILD = os.path.abspath(next((a for i, a in enumerate(args) if not a.startswith("-")
                              and (i == 0 or args[i - 1] not in ("--n", "--mib"))), "build"))
N = int(args[args.index("--n") + 1]) if "--n" in args else 50
MIB = int(args[args.index("--mib") + 1]) if "--mib" in args else 200
G = os.path.join(BUILD, "gondolin")
sys.path.insert(0, os.path.join(ROOT, "sdk", "python"))
os.environ["GONDOLIN_BIN"] = G


def med_ms(samples):
    return statistics.median(samples) * 1000


def run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, **kw)
    if r.returncode:
        raise SystemExit(f"{' '.join(cmd)}: {r.returncode}: {r.stderr.decode()[-500:]}")
    return r


def main():
    start = run([G, "start", "--memory", "1G", "--name", f"bench-{os.getpid()}"], text=True)
    sid = start.stdout.split()[0]
    tmp = tempfile.mkdtemp(prefix="gd-bench-session-")
    try:
        for _ in range(5):  # warm: page cache, TCG translations
            run([G, "exec", "--session", sid, "--", "/bin/true"])
        cli = []
        for _ in range(N):
            t = time.perf_counter()
            run([G, "exec", "--session", sid, "--no-stdin", "--", "/bin/true"])
            cli.append(time.perf_counter() - t)

        from gondolin import Sandbox  # noqa: E402
        sb = Sandbox.attach(sid)
        for _ in range(5):
            sb.exec(["/bin/true"])
        sdk = []
        for _ in range(N):
            t = time.perf_counter()
            sb.exec(["/bin/true"])
            sdk.append(time.perf_counter() - t)
        sb.detach() if hasattr(sb, "detach") else sb.close()

        loops = 200
        out = run([G, "exec", "--session", sid, "--", "bash", "-c",
                   f"TIMEFORMAT=%R; time (for i in $(seq {loops}); do /bin/true; done)"],
                  text=True)
        floor = float(out.stderr.strip().splitlines()[-1]) / loops

        capi = None
        b = os.path.join(BUILD, "tests", "gd-bench")
        if os.path.exists(b):
            r = subprocess.run([b, "rtt", str(max(N, 100))], capture_output=True, text=True)
            if r.returncode == 0:
                vals = dict(l.split() for l in r.stdout.splitlines() if len(l.split()) == 2)
                capi = float(vals["exec_true_us"]) / 1e6

        # copy throughput: one file of MIB MiB, both directions
        src = os.path.join(tmp, "src.bin")
        with open(src, "wb") as f:
            for i in range(MIB):
                f.write(hashlib.sha256(b"%d" % i).digest() * 32768)

        def timed(fn):  # MiB/s, the median of 3 runs (after one warm-up run)
            rates = []
            for k in range(4):
                t = time.perf_counter()
                fn()
                if k:
                    rates.append(MIB / (time.perf_counter() - t))
            return statistics.median(rates)

        def cat_in():
            with open(src, "rb") as f:
                run([G, "exec", "--session", sid, "--", "sh", "-c", "cat > /tmp/cat.bin"], stdin=f)

        def cat_out():
            with open(os.path.join(tmp, "cat.bin"), "wb") as f:
                subprocess.run([G, "exec", "--session", sid, "--no-stdin", "--", "cat",
                                "/tmp/cat.bin"], stdout=f, check=True)

        cp_in = timed(lambda: run([G, "cp", src, f"{sid}:/tmp/cp.bin"]))
        cp_out = timed(lambda: run([G, "cp", f"{sid}:/tmp/cp.bin", os.path.join(tmp, "cp.bin")]))
        cat_in_r = timed(cat_in)
        cat_out_r = timed(cat_out)
        for p in ("cp.bin", "cat.bin"):
            with open(os.path.join(tmp, p), "rb") as a, open(src, "rb") as b2:
                if hashlib.sha256(a.read()).digest() != hashlib.sha256(b2.read()).digest():
                    raise SystemExit(f"{p} differs from the source")
    finally:
        subprocess.run([G, "stop", sid], capture_output=True)
        subprocess.run(["rm", "-rf", tmp])

    base = capi or floor
    print(f"| one command in a warm sandbox (N={N}) | median | × C API |")
    print("|---|---|---|")
    print(f"| `gondolin exec --session ID -- /bin/true` | {med_ms(cli):.1f} ms | "
          f"{med_ms(cli) / (base * 1000):.2f} |")
    print(f"| Python SDK `sb.exec([\"/bin/true\"])` | {med_ms(sdk):.1f} ms | "
          f"{med_ms(sdk) / (base * 1000):.2f} |")
    if capi:
        print(f"| C API exec round trip (`gd-bench rtt`, warm VM) | {capi * 1000:.1f} ms | 1.00 |")
    print(f"| guest fork+exec floor (`/bin/true` in a shell loop) | {floor * 1000:.1f} ms | "
          f"{floor / base:.2f} |")
    print()
    print(f"| copy {MIB} MiB | `gondolin cp` | `cat` through exec | cp / cat |")
    print("|---|---|---|---|")
    print(f"| host → guest | {cp_in:.0f} MiB/s | {cat_in_r:.0f} MiB/s | {cp_in / cat_in_r:.0%} |")
    print(f"| guest → host | {cp_out:.0f} MiB/s | {cat_out_r:.0f} MiB/s | "
          f"{cp_out / cat_out_r:.0%} |")


if __name__ == "__main__":
    main()
