#!/usr/bin/env python3
"""Signed bundles: verify + load time of a bundle holding a 1000-line policy and two
plugins (target <= 20 ms), set against loading the same policy and plugins from plain
files in the same run, and against the process's own start. Host only, no VM.

Rows (median of N runs of the CLI, each a new process):
  process start            `gondolin --version`
  verify only              `bundle verify` (read, 2 signatures, 4 sha256s, manifest)
  load, plain files        `policy check FILE.lua --plugin A --plugin B`
  verify + load, bundle    `policy check FILE.gdb` (verify, write to a private dir, load)
The bundle's cost is the last row minus the plain one.

Usage: bench_bundle.py BUILD_DIR [N]"""
import os, shutil, statistics, subprocess, sys, tempfile, time

BUILD = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "build")
N = int(sys.argv[2]) if len(sys.argv) > 2 else 31
G = os.path.join(BUILD, "gondolin")
PLUGINS = [os.path.join(BUILD, "tests", "plugins", "hdr.so"),
           os.path.join(BUILD, "plugins", "ratelimit.so")]
D = tempfile.mkdtemp(prefix="gd-bench-bundle-")
ENV = dict(os.environ, XDG_CONFIG_HOME=os.path.join(D, "config"),
           XDG_STATE_HOME=os.path.join(D, "state"))


def run(*args):
    r = subprocess.run([G] + list(args), capture_output=True, text=True, env=ENV, cwd=D)
    if r.returncode:
        sys.exit(f"gondolin {' '.join(args)}: {r.stderr.strip()}")


def median_ms(*args):
    run(*args)  # warm the page cache
    t = []
    for _ in range(N):
        s = time.perf_counter()
        run(*args)
        t.append((time.perf_counter() - s) * 1000)
    return statistics.median(t)


def main():
    src = os.path.join(D, "big")
    os.makedirs(os.path.join(src, "plugins", "x86_64"))
    lines = ["-- 1000-line policy for the bundle benchmark", "return {", '  name = "big",',
             "  allow = {"]
    lines += [f'    "host{i}.example.com",' for i in range(990)]
    lines += ["  },", "  on_request = function(req)", '    req:set_header("x-bench", "1")',
              "  end", "}"]
    with open(os.path.join(src, "big.lua"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(src, "big.test.json"), "w") as f:
        f.write('{"cases": [{"request": "GET https://host7.example.com/", '
                '"expect": {"decision": "allow"}}]}\n')
    for p in PLUGINS:
        shutil.copy(p, os.path.join(src, "plugins", "x86_64"))
    out = os.path.join(D, "big-1.gdb")
    run("bundle", "build", src, "-o", out, "--revision", "1")
    trust = os.path.join(D, "trust")
    os.makedirs(trust)
    for k in ("a", "b"):
        run("bundle", "keygen", os.path.join(D, k))
        run("bundle", "sign", out, "--key", os.path.join(D, k + ".key"))
        shutil.copy(os.path.join(D, k + ".pub"), trust)
    size = os.path.getsize(out)
    plain = ["policy", "check", os.path.join(src, "big.lua")]
    for p in PLUGINS:
        plain += ["--plugin", os.path.join(src, "plugins", "x86_64", os.path.basename(p))]
    rows = [("process start (`gondolin --version`)", median_ms("--version")),
            ("verify only (`bundle verify`, 2 signers)",
             median_ms("bundle", "verify", out, "--trust", trust)),
            ("load, plain files (`policy check big.lua --plugin x2`)", median_ms(*plain)),
            ("verify + load, bundle (`policy check big-1.gdb`)",
             median_ms("policy", "check", out, "--trust", trust))]
    print(f"bundle: 1000-line policy + 2 plugins, {size} bytes; median of {N} runs\n")
    print("| step | ms |\n|---|---:|")
    for name, ms in rows:
        print(f"| {name} | {ms:.1f} |")
    start, verify, plain_ms, bundle_ms = (r[1] for r in rows)
    print(f"| verify + load without process start (target <= 20 ms) | {bundle_ms - start:.1f} |")
    print(f"| the bundle's own cost (bundle - plain) | {bundle_ms - plain_ms:.1f} |")
    shutil.rmtree(D, ignore_errors=True)


if __name__ == "__main__":
    main()
