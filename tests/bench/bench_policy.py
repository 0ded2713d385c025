#!/usr/bin/env python3
"""Policy hook overhead, host only (no VM): the same wrk load through the same proxy to
the same loopback nginx upstream, with no hooks, with a Lua on_request that reads two
headers and sets one, and with a .so plugin doing the same; and nginx as a reverse proxy
with and without the same logic in access_by_lua_block (the peer). Overhead per request
= 1/rps(with hook) - 1/rps(without), each proxy on one core. Then: time to reload a
1000-line policy (SIGHUP to the RELOAD line).

Needs `bash scripts/setup.sh --bench` (wrk, nginx) and, for the peer rows,
libnginx-mod-http-lua. That package depends on OpenResty's luajit2, which Debian makes
conflict with libluajit-5.1-dev (our build dependency): install it after building,
run this, and reinstall libluajit-5.1-dev (scripts/setup.sh) before the next build.
Usage: bench_policy.py BUILD_DIR [SECONDS]
       bench_policy.py BUILD_DIR --hook-only [N]
--hook-only runs just the in-process hook benchmark (gd-bench-hook, no network, no wrk):
ns per request for no policy, a header-reading hook, and hooks that use the string
library (find/match/gsub/format, which run under the CPU budget's step counter)."""
import os, re, shutil, signal, subprocess, sys, tempfile, time

BUILD = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "build")
HOOK_ONLY = len(sys.argv) > 2 and sys.argv[2] == "--hook-only"
SECS = int(sys.argv[2]) if len(sys.argv) > 2 and not HOOK_ONLY else 8
BENCH_HOOK = os.environ.get("GD_BENCH_HOOK") or os.path.join(BUILD, "tests", "gd-bench-hook")
PROXYD = os.path.join(BUILD, "tests", "gd-proxyd")
HDR_SO = os.path.join(BUILD, "tests", "plugins", "hdr.so")
D = tempfile.mkdtemp(prefix="gd-bench-policy-")


def nginx(conf, name):
    path = os.path.join(D, name + ".conf")
    with open(path, "w") as f:
        f.write("load_module /usr/lib/nginx/modules/ndk_http_module.so;\n"
                "load_module /usr/lib/nginx/modules/ngx_http_lua_module.so;\n"
                f"worker_processes 1; daemon off; pid {D}/{name}.pid; error_log {D}/{name}.err;\n"
                "events { worker_connections 4096; }\n"
                f"http {{ access_log off; client_body_temp_path {D}; proxy_temp_path {D};\n"
                f"  fastcgi_temp_path {D}; uwsgi_temp_path {D}; scgi_temp_path {D};\n{conf}\n}}\n")
    p = subprocess.Popen(["nginx", "-c", path, "-p", D, "-e", f"{D}/{name}.err"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    return p


def wrk(port, host):
    out = subprocess.run(["wrk", "-t2", "-c32", f"-d{SECS}s", "-H", f"Host: {host}",
                          "-H", "User-Agent: bench", "-H", "Accept: */*",
                          f"http://127.0.0.1:{port}/"], capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s*([\d.]+)", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if bad:
        raise SystemExit(f"errors in the run: {bad.group(0)}")
    return rps


def proxyd(extra):
    p = subprocess.Popen(["taskset", "-c", "0", PROXYD, "--quiet", "--ca-dir", D,
                          "--allow-host", "bench.test:18080", "--allow-internal", "bench.test",
                          "--resolve", "bench.test:127.0.0.1"] + extra,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    while True:
        line = p.stdout.readline().split()
        if line and line[0] == "READY":
            return p, int(line[1])


HOOKS = {
    "headers": 'local ua, acc = req:header("User-Agent"), req:header("Accept")\n'
               'req:set_header("X-Seen", ua and acc and "seen" or "partial")',
    "string.find plain": 'if not req:header("User-Agent"):find("bench", 1, true) then return req:deny() end',
    "string.match": 'local a, b = ("/v1/repos/owner/name/issues"):match("^/v(%d+)/repos/([^/]+)/")\n'
                    'if not a then return req:deny() end',
    "string.gsub": 'local s, n = ("GET /a/b/c?x=1&y=2"):gsub("[&?](%w+)=", "%1:")\n'
                   'if n ~= 2 then return req:deny() end',
    "string.gmatch": 'local n = 0\nfor k in ("a=1&b=2&c=3"):gmatch("(%w+)=") do n = n + 1 end\n'
                     'if n ~= 3 then return req:deny() end',
    "string.format/rep": 'local s = ("%s-%5d-%x"):format("x", 42, 255) .. ("ab"):rep(4)\n'
                         'if #s < 10 then return req:deny() end',
    "20 x match (captures)": 'local p = "/v1/repos/owner-name/some.repo/issues/12345?state=open"\n'
                             'for i = 1, 20 do local a, b, c = p:match("^/v%d+/repos/([^/]+)/([^/]+)/(%a+)") '
                             'if not c then return req:deny() end end',
    "gsub over 4 KB": 'local s = ("key=value&"):rep(400)\n'
                      'local r, n = s:gsub("(%w+)=(%w+)", "%2=%1") if n ~= 400 then return req:deny() end',
}


def hook_only():
    """ns per request of the engine's decision, in process (best of 7 runs: the machine's
    noise only ever adds)."""
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 200000
    def run(extra):
        xs = sorted(float(subprocess.run([BENCH_HOOK, str(n)] + extra, capture_output=True,
                                         text=True, check=True).stdout) for _ in range(7))
        return xs[0]
    print(f"\ngd-bench-hook, {n} detached requests per run, best of 7 runs\n")
    print("| hook | ns/request |\n|---|---:|")
    print(f"| no policy (flags only) | {run([]):.0f} |")
    for name, body in HOOKS.items():
        path = os.path.join(D, "bench.lua")
        with open(path, "w") as f:
            f.write('return { allow = { "bench.test" }, on_request = function(req)\n' + body +
                    "\nend }\n")
        print(f"| {name} | {run(['--policy', path]):.0f} |")
    shutil.rmtree(D, ignore_errors=True)


def main():
    if HOOK_ONLY:
        return hook_only()
    up = nginx("server { listen 127.0.0.1:18080; location / { return 200 'ok'; } }", "up")
    lua = os.path.join(D, "hook.lua")
    with open(lua, "w") as f:
        f.write('return { allow = { "bench.test:18080" }, on_request = function(req)\n'
                '  local ua, acc = req:header("User-Agent"), req:header("Accept")\n'
                '  req:set_header("X-Seen", ua and acc and "seen" or "partial")\nend }\n')
    rows = []
    base, port = proxyd([])
    r0 = wrk(port, "bench.test:18080")
    base.terminate(); base.wait()
    p, port = proxyd(["--policy", lua])
    r1 = wrk(port, "bench.test:18080")
    p.terminate(); p.wait()
    p, port = proxyd(["--plugin", HDR_SO])
    r2 = wrk(port, "bench.test:18080")
    p.terminate(); p.wait()
    logic = ("local h = ngx.req.get_headers(); local ua, acc = h['user-agent'], h['accept']\n"
             "ngx.req.set_header('X-Seen', (ua and acc) and 'seen' or 'partial')")
    ng0 = nginx("server { listen 127.0.0.1:18081; location / { proxy_pass http://127.0.0.1:18080; } }", "p0")
    n0 = wrk(18081, "bench.test")
    ng0.terminate(); ng0.wait()
    ng1 = nginx("server { listen 127.0.0.1:18082; location / { access_by_lua_block {\n" + logic +
                "\n} proxy_pass http://127.0.0.1:18080; } }", "p1")
    n1 = wrk(18082, "bench.test")
    ng1.terminate(); ng1.wait()
    us = lambda a, b: (1 / a - 1 / b) * 1e6
    rows = [("gondolin proxy, no hooks", r0, None), ("gondolin + Lua on_request", r1, us(r1, r0)),
            ("gondolin + .so plugin hook", r2, us(r2, r0)),
            ("nginx proxy_pass (peer), no Lua", n0, None),
            ("nginx + access_by_lua_block (peer)", n1, us(n1, n0))]
    print(f"\n{SECS}s per run, wrk -t2 -c32, proxies pinned to one core, loopback nginx upstream\n")
    print("| path | req/s | overhead µs/request |\n|---|---:|---:|")
    for name, rps, o in rows:
        print(f"| {name} | {rps:,.0f} | {'—' if o is None else f'{o:.2f}'} |")
    # reload of a 1000-line policy
    big = os.path.join(D, "big.lua")
    with open(big, "w") as f:
        f.write("return {\n  allow = {\n")
        for i in range(996):
            f.write(f'    "host{i}.example.com",\n')
        f.write("  },\n}\n")
    p = subprocess.Popen([PROXYD, "--quiet", "--ca-dir", D, "--policy", big], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True)
    while "READY" not in p.stdout.readline():
        pass
    times = []
    for _ in range(10):
        t0 = time.perf_counter()
        p.send_signal(signal.SIGHUP)
        while not p.stdout.readline().startswith("RELOAD ok"):
            pass
        times.append((time.perf_counter() - t0) * 1000)
    p.terminate(); p.wait()
    times.sort()
    print(f"\nreload of a 1000-line policy (SIGHUP -> new revision current): "
          f"median {times[len(times)//2]:.1f} ms, max {times[-1]:.1f} ms (10 reloads)")
    up.terminate(); up.wait()
    shutil.rmtree(D, ignore_errors=True)


if __name__ == "__main__":
    main()
