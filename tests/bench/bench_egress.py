#!/usr/bin/env python3
"""Egress benchmark: one command, one table.

Host-only proxy engine (no VM), the same HTTPS load (wrk, 2 threads, 50 connections)
against the same loopback upstream (nginx), in one run:
  direct          wrk -> nginx
  gondolin        wrk -> gd-proxyd (MITM, allowlist, one secret substitution) -> nginx
  mitmproxy       wrk -> mitmdump (reverse mode, equivalent addon) -> nginx
From inside a guest (TCG here): 1000 sequential small HTTPS requests on one keep-alive
connection (p50, p99) and a 100 MiB download, next to the same client on the host
going direct.

Usage: bench_egress.py BUILD_DIR [--no-vm]   (needs: bash scripts/setup.sh --bench)
Names resolve to 127.0.0.1 through a private /etc/hosts in a mount namespace (root)."""
import json, os, re, shutil, subprocess, sys, tempfile, time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "proxy"))
from fixture import Upstreams  # noqa: E402

BUILD = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "build")
NO_VM = "--no-vm" in sys.argv
SECS = int(os.environ.get("BENCH_SECONDS", "10"))


def free_port():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def start_nginx(d, cert, key):
    port = free_port()
    root = os.path.join(d, "www")
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "small"), "w") as f:
        f.write("ok\n")
    with open(os.path.join(root, "big"), "wb") as f:
        f.truncate(100 << 20)
    conf = os.path.join(d, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""user root; worker_processes 1; daemon off; pid {d}/nginx.pid; error_log {d}/nginx.err;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 1000000; sendfile on;
  server {{ listen 127.0.0.1:{port} ssl; server_name good.test;
    ssl_certificate {cert}; ssl_certificate_key {key}; root {root};
    location / {{ }} }} }}
""")
    p = subprocess.Popen(["nginx", "-c", conf], stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    return p, port


def wrk(url, host_hdr=None, auth=None):
    cmd = ["wrk", "-t2", "-c50", f"-d{SECS}s", "--latency"]
    if host_hdr:
        cmd += ["-H", f"Host: {host_hdr}"]
    if auth:
        cmd += ["-H", f"Authorization: Bearer {auth}"]
    out = subprocess.run(ns_wrap(cmd + [url]), capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = {}
    for pct in ("50", "99"):
        m = re.search(rf"\s{pct}%\s+([\d.]+)(us|ms|s)", out)
        v = float(m.group(1))
        lat[pct] = v / 1000 if m.group(2) == "us" else v * 1000 if m.group(2) == "s" else v
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: .*", out)
    return rps, lat["50"], lat["99"], (non2xx.group(1) if non2xx else "0"), out


HOSTS = None


def ns_wrap(cmd):
    return ["unshare", "--mount", "sh", "-c", f'mount --bind {HOSTS} /etc/hosts && exec "$@"', "sh"] + cmd


def main():
    global HOSTS
    up = Upstreams()
    d = up.dir
    HOSTS = os.path.join(d, "hosts")
    with open(HOSTS, "w") as f:
        f.write("127.0.0.1 localhost good.test\n")
    ngx, nport = start_nginx(d, os.path.join(d, "srv.crt"), os.path.join(d, "srv.key"))
    rows = []
    try:
        r = wrk(f"https://good.test:{nport}/small")
        rows.append(("direct (wrk -> nginx)", r))
        px = subprocess.Popen([os.path.join(BUILD, "tests", "gd-proxyd"), "--quiet", "--ca-dir", up.mitm_dir,
                               "--upstream-ca", up.ca, "--resolve", "good.test:127.0.0.1",
                               "--allow-internal", "good.test", "--allow-host", f"good.test:{nport}",
                               "--host-secret", "TOKEN@good.test=real-secret"],
                              stdout=subprocess.PIPE, text=True)
        tok = None
        while True:
            line = px.stdout.readline().split()
            if line[0] == "SECRET":
                tok = line[1].split("=", 1)[1]
            if line[0] == "READY":
                pport = int(line[1])
                break
        r = wrk(f"https://good.test:{pport}/small", f"good.test:{nport}", tok)
        rows.append(("gondolin proxy (MITM + allowlist + secret)", r))
        px.terminate()
        px.wait()
        addon = os.path.join(d, "addon.py")
        with open(addon, "w") as f:
            f.write(f"""from mitmproxy import http
ALLOW = {{"good.test"}}
def request(flow: http.HTTPFlow):
    # reverse mode rewrites Host to the upstream: the name the client asked for is the SNI
    if (flow.client_conn.sni or flow.request.pretty_host) not in ALLOW:
        flow.response = http.Response.make(403, b"denied", {{"Content-Type": "text/plain"}})
        return
    a = flow.request.headers.get("authorization", "")
    if "{tok}" in a:
        flow.request.headers["authorization"] = a.replace("{tok}", "real-secret")
""")
        mport = free_port()
        mp = subprocess.Popen(["mitmdump", "-q", "--mode", f"reverse:https://127.0.0.1:{nport}", "-p", str(mport),
                               "--listen-host", "127.0.0.1", "--set", "ssl_insecure=true",
                               "--set", f"confdir={d}/mitmconf", "-s", addon],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(4)
        r = wrk(f"https://good.test:{mport}/small", "good.test", tok)
        rows.append(("mitmproxy 8 (reverse mode + addon)", r))
        mp.terminate()
        mp.wait()
    finally:
        pass
    print(f"\nHost-only proxy engine, HTTPS, wrk -t2 -c50 -d{SECS}s, loopback nginx upstream")
    print(f"| path | requests/s | p50 ms | p99 ms | non-2xx |")
    print(f"|---|---:|---:|---:|---:|")
    for name, (rps, p50, p99, bad, _) in rows:
        print(f"| {name} | {rps:,.0f} | {p50:.3f} | {p99:.3f} | {bad} |")
    d_rps, d50 = rows[0][1][0], rows[0][1][1]
    g_rps, g50 = rows[1][1][0], rows[1][1][1]
    m_rps = rows[2][1][0]
    print(f"\ngondolin / mitmproxy requests/s: {g_rps / m_rps:.1f}x (target >= 10x); "
          f"added p50 over direct: {g50 - d50:.3f} ms (target <= 0.2 ms)")

    if not NO_VM:
        guest_vs_host(up, nport)
    ngx.terminate()
    ngx.wait()
    up.close()


SEQ = r"""
import http.client, ssl, time, sys, statistics
host, port = sys.argv[1], int(sys.argv[2])
ctx = ssl.create_default_context(cafile=sys.argv[3]) if len(sys.argv) > 3 else ssl.create_default_context()
c = http.client.HTTPSConnection(host, port, context=ctx)
t = []
for i in range(1000):
    a = time.perf_counter(); c.request("GET", "/small"); c.getresponse().read(); t.append(time.perf_counter() - a)
t.sort()
print("SEQ %.3f %.3f" % (t[499] * 1000, t[989] * 1000))
"""


def guest_vs_host(up, nport):
    seq = os.path.join(up.dir, "seq.py")
    with open(seq, "w") as f:
        f.write(SEQ)
    # host, direct to nginx
    h = subprocess.run(ns_wrap([sys.executable, seq, "good.test", str(nport), up.ca]), capture_output=True, text=True).stdout
    hs = h.split()
    hd = subprocess.run(ns_wrap(["curl", "-s", "--cacert", up.ca, "-o", "/dev/null", "-w", "%{speed_download}",
                                 f"https://good.test:{nport}/big"]), capture_output=True, text=True).stdout
    flags = up.flags(f"good.test:{nport}")
    script = ("cat > /tmp/seq.py <<'PY'\n" + SEQ + "\nPY\n"
              f"python3 /tmp/seq.py good.test {nport}\n"
              f"curl -s -o /dev/null -w 'DL %{{speed_download}}\\n' https://good.test:{nport}/big\n")
    r = subprocess.run([os.path.join(BUILD, "gondolin"), "exec"] + flags + ["--", "sh", "-c", script],
                       capture_output=True, text=True, timeout=900)
    gs = r.stdout.split()
    try:
        gseq = (float(gs[gs.index("SEQ") + 1]), float(gs[gs.index("SEQ") + 2]))
        gdl = float(gs[gs.index("DL") + 1])
    except (ValueError, IndexError):
        print("guest run failed:", r.stdout, r.stderr)
        return
    print("\nFrom inside the guest (TCG) vs the same client on the host going direct")
    print("| client | 1000 sequential HTTPS p50 ms | p99 ms | 100 MiB download MB/s |")
    print("|---|---:|---:|---:|")
    print(f"| host, direct | {float(hs[1]):.3f} | {float(hs[2]):.3f} | {float(hd) / 1e6:.0f} |")
    print(f"| guest, through gondolin | {gseq[0]:.3f} | {gseq[1]:.3f} | {gdl / 1e6:.0f} |")


if __name__ == "__main__":
    main()
