#!/usr/bin/env python3
"""Egress from real guests: real clients (curl, python3, busybox wget) inside a VM, real
servers on host loopback. Each scenario boots one VM and runs a script of checks in it;
the host-side assertions are what a user would check.

Usage: test_egress.py BUILD_DIR [NAME_FILTER]"""
import json, os, socket, subprocess, sys, threading

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "proxy"))
from fixture import Upstreams  # noqa: E402

from harness import TESTS, expect, test  # noqa: E402

BUILD = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "build")
FILTER = sys.argv[2] if len(sys.argv) > 2 else ""
G = os.path.join(BUILD, "gondolin")
def gexec(flags, script, timeout=240):
    r = subprocess.run([G, "exec"] + flags + ["--", "sh", "-c", script], capture_output=True,
                       timeout=timeout, text=True)
    return r.returncode, r.stdout, r.stderr


@test
def basics(up):
    """curl, python3 and busybox wget over HTTP and HTTPS; unlisted host is 403; the
    guest sees only the placeholder, the server the real secret"""
    H, S = up.http_port, up.https_port
    flags = up.flags(f"good.test:{H}", f"good.test:{S}", f"other.test:{S}",
                     secrets=["API_TOKEN@good.test=s3cret-value-42"])
    script = f"""
echo "ENV=$API_TOKEN"
curl -sS -m 20 -H "Authorization: Bearer $API_TOKEN" https://good.test:{S}/echo; echo
curl -sS -m 20 http://good.test:{H}/bytes?n=5; echo
python3 -c 'import urllib.request,json; print("PY", json.load(urllib.request.urlopen("https://good.test:{S}/echo", timeout=20))["method"])'
busybox wget -q -O - http://good.test:{H}/bytes?n=3; echo
curl -sS -m 20 -o /dev/null -w 'UNLISTED %{{http_code}}\\n' https://example.com/
curl -sS -m 20 -H "X-Key: $API_TOKEN" -o /dev/null -w 'WRONGHOST %{{http_code}}\\n' https://other.test:{S}/echo
curl -sS -m 20 -u "user:$API_TOKEN" https://good.test:{S}/echo; echo
"""
    rc, out, err = gexec(flags, script)
    expect(rc == 0, f"rc {rc}: {err}")
    lines = out.splitlines()
    expect(lines[0].startswith("ENV=GONDOLIN_SECRET_") and "s3cret" not in out.split("\n")[0], lines[0])
    doc = json.loads(lines[1])
    expect(doc["headers"]["authorization"] == "Bearer s3cret-value-42", doc["headers"])
    expect(lines[2] == "xxxxx", lines[2])
    expect(lines[3] == "PY GET", lines[3])
    expect(lines[4] == "xxx", lines[4])
    expect(lines[5] == "UNLISTED 403", lines[5])
    expect(lines[6] == "WRONGHOST 403", lines[6])
    basic = json.loads(lines[7])["headers"]["authorization"]
    import base64
    expect(base64.b64decode(basic.split()[1]) == b"user:s3cret-value-42", basic)
    expect("denied" in err and "allow-host" in err, f"host log of the denial: {err}")


@test
def internal(up):
    """the guest cannot reach host loopback, slirp's host alias, metadata, or a name
    that resolves to loopback; an IPv4-mapped IPv6 literal is refused too"""
    H = up.http_port
    flags = up.flags(f"good.test:{H}") + ["--allow-host", "*"]
    script = f"""
for u in http://10.0.2.2:{H}/ http://127.0.0.1:{H}/ http://169.254.169.254/ http://198.19.0.2:{H}/ \
         http://evil.test:{H}/ http://evil.test/ 'http://[::ffff:127.0.0.1]:{H}/'; do
  code=$(curl -sS -m 15 -o /tmp/body -w '%{{http_code}}' "$u" 2>/dev/null); echo "$u $code $(head -c 120 /tmp/body 2>/dev/null)"
done
"""
    rc, out, err = gexec(flags, script)
    for line in out.splitlines():
        code = line.split()[1]
        # refused (000: connection refused/reset) or a 403 from policy: never a 200
        expect(code in ("000", "403"), f"reached: {line}")
    expect("evil.test" in out and "internal-ranges" in out, out)


@test
def tcp_and_dns(up):
    """raw TCP: unmapped port refused, mapped port works; UDP other than DNS dropped;
    synthetic DNS gives one address per name"""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    port = srv.getsockname()[1]

    def serve():
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            c.sendall(b"hello from raw tcp\n")
            c.close()
    threading.Thread(target=serve, daemon=True).start()
    flags = up.flags(extra=["--tcp-map", f"db.test:5432=127.0.0.1:{port}", "--allow-internal", "db.test"])
    script = """
python3 - <<'PY'
import socket
def tcp(h, p):
    try:
        s = socket.create_connection((h, p), timeout=10); d = s.recv(100); s.close(); return d.decode().strip() or "EMPTY"
    except Exception as e:
        return type(e).__name__
print("MAPPED", tcp("db.test", 5432))
print("UNMAPPED", tcp("db.test", 5433))
print("A", socket.gethostbyname("a.example"), "B", socket.gethostbyname("b.example"), "A2", socket.gethostbyname("a.example"))
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(2)
u.sendto(b"x", ("1.1.1.1", 123))
try:
    u.recv(10); print("UDP answered")
except Exception:
    print("UDP dropped")
PY
"""
    rc, out, err = gexec(flags, script)
    srv.close()
    expect("MAPPED hello from raw tcp" in out, out + err)
    expect("UNMAPPED ConnectionRefusedError" in out, out)
    words = dict(zip(*[iter(out.split("\n")[2].split())] * 2))
    expect(words["A"] == words["A2"] and words["A"] != words["B"] and words["A"].startswith("198.19."), words)
    expect("UDP dropped" in out, out)


@test
def concurrency(up):
    """50 concurrent HTTPS connections from the guest; a dying upstream leaves the VM
    working; chunked upload and download; keep-alive reuse"""
    H, S = up.http_port, up.https_port
    flags = up.flags(f"good.test:{H}", f"good.test:{S}")
    script = f"""
python3 - <<'PY'
import concurrent.futures, http.client, ssl, json
ctx = ssl.create_default_context()
def one(i):
    c = http.client.HTTPSConnection("good.test", {S}, context=ctx, timeout=60)
    c.request("GET", f"/bytes?n={{1000+i}}"); r = c.getresponse(); n = len(r.read()); c.close()
    return r.status == 200 and n == 1000 + i
with concurrent.futures.ThreadPoolExecutor(50) as ex:
    print("CONC", sum(ex.map(one, range(50))))
c = http.client.HTTPConnection("good.test", {H}, timeout=30)
try:
    c.request("GET", "/die?n=5000"); c.getresponse().read(); print("DIE no error")
except Exception as e:
    print("DIE", type(e).__name__)
c = http.client.HTTPSConnection("good.test", {S}, context=ctx, timeout=30)
conns = set()
for i in range(100):
    c.request("GET", "/echo"); conns.add(json.loads(c.getresponse().read())["conn"])
print("KEEPALIVE", len(conns))
def gen():
    for i in range(10): yield b"z" * 1000
c.request("POST", "/echo", body=gen(), encode_chunked=True, headers={{"Transfer-Encoding": "chunked"}})
d = json.loads(c.getresponse().read()); print("UPLOAD", d["body_len"], d["chunked"])
c.request("GET", "/chunked?n=300000&k=9"); print("DOWNLOAD", len(c.getresponse().read()))
PY
"""
    rc, out, err = gexec(flags, script, timeout=400)
    expect("CONC 50" in out, out + err)
    expect("DIE IncompleteRead" in out, out)
    expect("KEEPALIVE 1" in out, out)
    expect("UPLOAD 10000 True" in out, out)
    expect("DOWNLOAD 300000" in out, out)


@test
def default_deny(up):
    """no --allow-host: nothing leaves, and the 403 says why"""
    rc, out, err = gexec(up.flags(), f"curl -sS -m 15 http://good.test:{up.http_port}/ ; curl -sS -m 15 https://good.test/")
    expect(out.count("default-deny") == 2 or ("default-deny" in out), out + err)


@test
def trusted_dns(up):
    """--dns trusted: allowed names get host-resolved addresses that pass the IP policy"""
    H = up.http_port
    # pub.test resolves (on the host only: nothing is sent to it) to a public address
    flags = up.flags(f"good.test:{H}", "pub.test", extra=["--dns", "trusted", "--resolve",
                                                         "pub.test:93.184.215.14"])
    rc, out, err = gexec(flags, f"""python3 -c 'import socket; print("PUB", socket.gethostbyname("pub.test")); print("GOOD", socket.gethostbyname("good.test"))'
curl -sS -m 15 http://good.test:{H}/bytes?n=4; echo""")
    expect("PUB 93.184.215.14" in out, out + err)
    # good.test is on host loopback: the guest gets a synthetic address, never 127.0.0.1
    expect("GOOD 198.19." in out, out + err)
    expect("xxxx" in out, out + err)


@test
def agent_policy(up):
    """gondolin run --policy examples/agent.lua: allowed, denied (host, method, Lua hook)
    and secret-bearing requests from curl in a real guest; names the policy's hosts,
    served by a real HTTPS server on host loopback port 443 with its own test CA"""
    import tempfile
    d = tempfile.mkdtemp(prefix="gd-agent-")
    names = ["api.github.com", "github.com", "registry.npmjs.org"]
    sh = lambda *a: subprocess.run(a, check=True, capture_output=True, cwd=d)
    sh("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
       "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=agent test CA")
    sh("openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
       "-keyout", "srv.key", "-out", "srv.csr", "-subj", "/CN=api.github.com")
    with open(os.path.join(d, "ext.cnf"), "w") as f:
        f.write("subjectAltName=" + ",".join("DNS:" + n for n in names) + "\n")
    sh("openssl", "x509", "-req", "-in", "srv.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
       "-CAcreateserial", "-out", "srv.crt", "-days", "2", "-extfile", "ext.cnf")
    srv = subprocess.Popen([sys.executable, os.path.join(HERE, "..", "proxy", "upstream.py"),
                            "--port", "443", "--tls", os.path.join(d, "srv.crt"),
                            os.path.join(d, "srv.key")],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = srv.stdout.readline().split()
        if not line or line[0] != "READY":
            raise AssertionError("no HTTPS server on 127.0.0.1:443: " + srv.stderr.read()[:300])
        flags = ["--policy", os.path.join(HERE, "..", "..", "examples", "agent.lua"),
                 "--upstream-ca", os.path.join(d, "ca.crt")]
        for n in names:
            flags += ["--resolve", n + ":127.0.0.1", "--allow-internal", n]
        script = """
echo "ENV=$GITHUB_TOKEN"
curl -sS -m 20 -H "Authorization: Bearer $GITHUB_TOKEN" https://api.github.com/echo; echo
curl -sS -m 20 -X POST -o /dev/null -w 'PUSH %{http_code}\\n' https://github.com/o/r.git/git-receive-pack
curl -sS -m 20 -o /dev/null -w 'NPM %{http_code}\\n' https://registry.npmjs.org/echo
curl -sS -m 20 -X PUT -d x -o /dev/null -w 'PUBLISH %{http_code}\\n' https://registry.npmjs.org/echo
curl -sS -m 20 -H "Authorization: Bearer $GITHUB_TOKEN" -o /dev/null -w 'LEAK %{http_code}\\n' https://registry.npmjs.org/echo
curl -sS -m 20 -o /dev/null -w 'UNLISTED %{http_code}\\n' https://example.com/
echo "GIT_TERMINAL_PROMPT=$GIT_TERMINAL_PROMPT"
"""
        env = dict(os.environ, GITHUB_TOKEN="ghp_real_token_1", ANTHROPIC_API_KEY="sk-ant-real")
        r = subprocess.run([G, "run"] + flags + ["--", "sh", "-c", script], capture_output=True,
                           timeout=240, text=True, env=env)
        expect(r.returncode == 0, f"rc {r.returncode}: {r.stderr}")
        lines = r.stdout.splitlines()
        expect(lines[0].startswith("ENV=GONDOLIN_SECRET_"), lines[0])
        doc = json.loads(lines[1])
        expect(doc["headers"]["authorization"] == "Bearer ghp_real_token_1", doc["headers"])
        expect(doc["headers"].get("x-gondolin-agent") == "1", doc["headers"])
        expect(lines[2:7] == ["PUSH 403", "NPM 200", "PUBLISH 403", "LEAK 403", "UNLISTED 403"],
               lines[2:7])
        expect(lines[7] == "GIT_TERMINAL_PROMPT=0", lines[7])
        expect("git push is not allowed" in r.stderr and "agent.lua:" in r.stderr, r.stderr)
    finally:
        srv.kill()
        srv.wait()


@test
def hardening(up):
    """in a real guest: an upstream reset mid-response fails curl at once (plain and TLS);
    a secret is refused over cleartext HTTP; curl --path-as-is cannot climb out of a
    path rule; a hand-written smuggling request is 400"""
    H, S = up.http_port, up.https_port
    flags = up.flags(f"good.test:{H}", f"good.test:{S}", f"GET echo.test:{H}/echo",
                     secrets=["API_TOKEN@good.test=s3cret-value-42"])
    script = f"""
for u in http://good.test:{H}/rst?n=100000 https://good.test:{S}/rst?n=100000; do
  t0=$(date +%s%N); curl -sS -m 60 -o /dev/null "$u" 2>/dev/null; rc=$?; t1=$(date +%s%N)
  echo "RST rc=$rc ms=$(( (t1 - t0) / 1000000 ))"
done
curl -sS -m 20 -H "Authorization: Bearer $API_TOKEN" -o /tmp/b -w 'CLEAR %{{http_code}}\\n' http://good.test:{H}/echo
head -c 300 /tmp/b; echo
curl -sS -m 20 -H "Authorization: Bearer $API_TOKEN" -o /dev/null -w 'TLS %{{http_code}}\\n' https://good.test:{S}/echo
curl -sS -m 20 --path-as-is -o /dev/null -w 'CLIMB %{{http_code}}\\n' 'http://echo.test:{H}/echo/../_log'
curl -sS -m 20 --path-as-is -o /dev/null -w 'CLIMB2 %{{http_code}}\\n' 'http://echo.test:{H}/echo/..%2f_log'
python3 - <<'PY'
import socket
s = socket.create_connection(("good.test", {H}), timeout=20)
s.sendall(b"POST /echo HTTP/1.1\\r\\nHost: good.test:{H}\\r\\nContent-Length: 9223372036854775808\\r\\n\\r\\n"
          b"POST /smuggled HTTP/1.1\\r\\nHost: evil.test\\r\\n\\r\\n")
print("SMUGGLE", s.recv(200).split(b"\\r\\n")[0].decode())
PY
"""
    rc, out, err = gexec(flags, script)
    rst = [l for l in out.splitlines() if l.startswith("RST")]
    expect(len(rst) == 2, out + err)
    for l in rst:
        w = dict(kv.split("=") for kv in l.split()[1:])
        expect(w["rc"] not in ("0", "28") and int(w["ms"]) < 15000, f"reset not propagated: {l}")
    expect("CLEAR 403" in out and "secret-cleartext" in out, out)
    expect("TLS 200" in out, out)
    expect("CLIMB 403" in out and "CLIMB2 403" in out, out)
    expect("SMUGGLE HTTP/1.1 400" in out, out)
    s = socket.create_connection(("127.0.0.1", H), timeout=10)
    s.sendall(f"GET /_log HTTP/1.1\r\nHost: good.test:{H}\r\nConnection: close\r\n\r\n".encode())
    log = b""
    while True:
        c = s.recv(65536)
        if not c:
            break
        log += c
    expect(b"/smuggled" not in log, "smuggled request reached the upstream")


def main():
    up = Upstreams()
    passed = failed = 0
    for fn in TESTS:
        name = fn.__doc__.strip().splitlines()[0]
        if FILTER and FILTER not in fn.__name__:
            continue
        try:
            fn(up)
            print(f"ok   {fn.__name__}: {name}")
            passed += 1
        except Exception as e:  # noqa: BLE001
            print(f"FAIL {fn.__name__}: {name}: {e}")
            failed += 1
    up.close()
    print(f"egress integration tests: {passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
