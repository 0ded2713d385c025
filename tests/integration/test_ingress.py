#!/usr/bin/env python3
"""Ingress and host->guest SSH from the command line, in real VMs: `--listen` (through the
HTTP engine: the policy's on_ingress_* hooks and the audit see every request; WebSocket
upgrades tunneled; a guest port with nothing behind it is 502), `--listen-raw` (plain
TCP), and `--ssh` (sshd on the guest's loopback, reached with the printed ssh command;
an image without sshd is refused with one line).

Usage: test_ingress.py BUILD_DIR [NAME_FILTER]"""
import base64
import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

from harness import TESTS, eq, expect, test  # noqa: E402

BUILD = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "build")
FILTER = sys.argv[2] if len(sys.argv) > 2 else ""
G = os.path.join(BUILD, "gondolin")
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BIG = 100 << 20


# guest services: http.server on 8000 (a 100 MiB file and a private file in its dir), a
# WebSocket echo on 8001, a line echo on 8002 (raw)
SERVICES = r'''
import base64, hashlib, os, socket, threading
os.makedirs("/srv/www/private", exist_ok=True)
with open("/srv/www/hello.txt", "w") as f: f.write("hello from the guest\n")
with open("/srv/www/private/key.txt", "w") as f: f.write("secret\n")
with open("/srv/www/big.bin", "wb") as f:
    for i in range(100): f.write(hashlib.sha256(b"%d" % i).digest() * 32768)
def ws(c):
    data = b""
    while b"\r\n\r\n" not in data:
        d = c.recv(4096)
        if not d: return c.close()
        data += d
    head, rest = data.split(b"\r\n\r\n", 1)
    key = [l.split(b":", 1)[1].strip() for l in head.split(b"\r\n") if l.lower().startswith(b"sec-websocket-key:")][0]
    acc = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
    c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " + acc + b"\r\n\r\n" + rest)
    while True:
        d = c.recv(65536)
        if not d: break
        c.sendall(d)
    c.close()
def echo(c):
    f = c.makefile("rwb")
    for line in f:
        f.write(b"echo: " + line); f.flush()
    c.close()
def serve(port, fn):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port)); s.listen(64)
    while True:
        c, _ = s.accept()
        threading.Thread(target=fn, args=(c,), daemon=True).start()
threading.Thread(target=serve, args=(8001, ws), daemon=True).start()
threading.Thread(target=serve, args=(8002, echo), daemon=True).start()
import http.server, functools
h = functools.partial(http.server.SimpleHTTPRequestHandler, directory="/srv/www")
http.server.ThreadingHTTPServer.allow_reuse_address = True
srv = http.server.ThreadingHTTPServer(("127.0.0.1", 8000), h)
print("READY", flush=True)
srv.serve_forever()
'''

POLICY = r'''
return {
  on_ingress_request = function(req, ctx)
    if req:path():find("^/private") then return req:deny(403, "not for the host") end
    req:set_header("X-Ingress", "yes")
  end,
  on_ingress_response = function(res, req, ctx)
    res:set_header("X-Seen-By", "gondolin")
  end,
}
'''


class Sandbox:
    """A one-shot `gondolin exec` kept running with its ingress flags."""

    def __init__(self, flags, script, ready=b"READY"):
        self.p = subprocess.Popen([G, "exec"] + flags + ["--", "sh", "-c", script],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE)
        self.err = []
        line = b""
        end = time.time() + 240
        while ready not in line and time.time() < end:
            line = self.p.stdout.readline()
            if not line and self.p.poll() is not None:
                raise AssertionError("sandbox ended: " + self.p.stderr.read().decode())
        expect(ready in line, "services did not come up")

    def stderr_lines(self):
        # everything gondolin printed before the services were ready
        os.set_blocking(self.p.stderr.fileno(), False)
        data = self.p.stderr.read() or b""
        self.err += data.decode().splitlines()
        return self.err

    def ports(self):
        out = {}
        for l in self.stderr_lines():
            m = re.match(r"gondolin: ingress (\w+)://127\.0\.0\.1:(\d+) -> guest port (\d+)", l)
            if m:
                out[int(m.group(3))] = (m.group(1), int(m.group(2)))
        return out

    def close(self):
        self.p.terminate()
        try:
            self.p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()


def http_get(port, path, headers=None):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def ws_echo(port, payload):
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    key = base64.b64encode(os.urandom(16))
    s.sendall(b"GET /chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + key + b"\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        d = s.recv(4096)
        expect(d, "connection closed during the upgrade")
        data += d
    head, rest = data.split(b"\r\n\r\n", 1)
    expect(head.startswith(b"HTTP/1.1 101"), head)
    s.sendall(payload)
    got = rest
    while len(got) < len(payload):
        d = s.recv(65536)
        expect(d, "closed before the echo")
        got += d
    s.close()
    return got


@test
def http_ingress_through_the_policy():
    """--listen: a guest http.server reached with curl and Python; the policy's
    on_ingress_request denies /private and adds a header, on_ingress_response one more; the
    audit marks ingress; 100 MiB intact; WebSocket echo; a dead guest port is 502;
    --listen-raw carries plain TCP"""
    d = tempfile.mkdtemp(prefix="gd-ingress-")
    pol = os.path.join(d, "ingress.lua")
    with open(pol, "w") as f:
        f.write(POLICY)
    audit = os.path.join(d, "audit.jsonl")
    sb = Sandbox(["--policy", pol, "--audit", audit, "--listen", "0=8000", "--listen", "0=8001",
                  "--listen", "0=8009", "--listen-raw", "0=8002"],
                 "cat > /tmp/s.py <<'EOF'\n" + SERVICES + "\nEOF\npython3 -u /tmp/s.py")
    try:
        ports = sb.ports()
        eq(sorted(ports), [8000, 8001, 8002, 8009], f"listeners: {sb.err}")
        eq(ports[8002][0], "tcp", "raw listener scheme")
        hp = ports[8000][1]
        st, hdrs, body = http_get(hp, "/hello.txt")
        eq((st, body), (200, b"hello from the guest\n"), "GET through the ingress")
        eq(hdrs.get("X-Seen-By"), "gondolin", "on_ingress_response header")
        st, _, body = http_get(hp, "/private/key.txt")
        eq(st, 403, "on_ingress_request denial")
        expect(b"secret" not in body, "denied body leaked")
        r = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                            f"http://127.0.0.1:{hp}/hello.txt"], capture_output=True, text=True,
                           timeout=60)
        eq(r.stdout, "200", "curl " + r.stderr)
        r = subprocess.run(["curl", "-sS", f"http://127.0.0.1:{hp}/big.bin"], capture_output=True,
                           timeout=300)
        want = hashlib.sha256(b"".join(hashlib.sha256(b"%d" % i).digest() * 32768
                                       for i in range(100))).hexdigest()
        eq(len(r.stdout), BIG, "100 MiB length")
        eq(hashlib.sha256(r.stdout).hexdigest(), want, "100 MiB checksum")
        payload = os.urandom(300000)
        eq(ws_echo(ports[8001][1], payload), payload, "WebSocket echo")
        st, _, _ = http_get(ports[8009][1], "/")
        eq(st, 502, "nothing listening on the guest port")
        s = socket.create_connection(("127.0.0.1", ports[8002][1]), timeout=30)
        s.sendall(b"one\ntwo\n")
        f = s.makefile("rb")
        eq((f.readline(), f.readline()), (b"echo: one\n", b"echo: two\n"), "raw echo")
        s.close()
        recs = [json.loads(l) for l in open(audit)]
        ing = [r for r in recs if r.get("direction") == "ingress"]
        expect(any(r["path"] == "/private/key.txt" and r["decision"] == "deny" for r in ing),
               f"audit has the ingress denial: {ing[:3]}")
        expect(any(r["path"] == "/hello.txt" and r["status"] == 200 for r in ing),
               "audit has the allowed ingress request")
    finally:
        sb.close()


@test
def listen_flag_errors():
    """bad --listen values are one-line usage errors, before any VM boots"""
    for bad in ["abc", "8000", "0=0", "1.2.3.4.5:80=80", "0=70000"]:
        r = subprocess.run([G, "exec", "--listen", bad, "--", "true"], capture_output=True,
                           text=True, timeout=30)
        eq(r.returncode, 2, f"--listen {bad}: {r.stderr}")
        eq(len(r.stderr.strip().splitlines()), 1, r.stderr)


def ssh_image():
    r = subprocess.run([G, "build", "--config", os.path.join(ROOT, "examples/images/ssh.json"),
                        "--tag", "gd-test-ssh:1"], capture_output=True, text=True, timeout=900)
    eq(r.returncode, 0, "building the ssh image: " + r.stderr[-2000:])
    return "gd-test-ssh:1"


@test
def ssh_into_the_guest():
    """--ssh on an image with sshd: the printed command logs in (key only, host key
    pinned), runs commands and sees the sandbox's files; an image without sshd is refused
    with one line"""
    img = ssh_image()
    sb = Sandbox(["--image", img, "--ssh"], "echo marker > /tmp/m; echo READY; sleep 600")
    try:
        lines = [l for l in sb.stderr_lines() if l.startswith("gondolin: ssh: ")]
        eq(len(lines), 1, f"one ssh line: {sb.err}")
        cmd = lines[0][len("gondolin: ssh: "):].split()
        expect("StrictHostKeyChecking=yes" in cmd, "the host key is pinned")
        r = subprocess.run(cmd + ["cat /tmp/m; id -u"], capture_output=True, text=True,
                           timeout=120, stdin=subprocess.DEVNULL)
        eq((r.returncode, r.stdout), (0, "marker\n0\n"), r.stderr)
        # no password logins, no forwarding: a forwarding request is refused
        r = subprocess.run(cmd + ["-o", "BatchMode=yes", "-L", "0:127.0.0.1:22",
                                  "-o", "ExitOnForwardFailure=yes", "true"],
                           capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        expect(r.returncode != 0, "TCP forwarding must be refused")
        # a key that is not the sandbox's gets nowhere
        k = tempfile.mkdtemp(prefix="gd-sshkey-")
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", k + "/k"], check=True)
        other = [a if a != cmd[cmd.index("-i") + 1] else k + "/k" for a in cmd]
        r = subprocess.run(other + ["-o", "BatchMode=yes", "true"], capture_output=True,
                           text=True, timeout=120, stdin=subprocess.DEVNULL)
        expect(r.returncode == 255 and "Permission denied" in r.stderr, r.stderr)
    finally:
        sb.close()
    r = subprocess.run([G, "exec", "--ssh", "--", "true"], capture_output=True, text=True,
                       timeout=240)
    eq(r.returncode, 1, "no sshd in the default image")
    lines = [l for l in r.stderr.splitlines() if not l.startswith("gondolin: build")
             and "rebuilding" not in l and "building it" not in l]
    eq(len(lines), 1, r.stderr)
    expect("no sshd" in lines[0], lines[0])


@test
def session_ssh_and_expose():
    """sessions: `start --ssh` prints a working ssh command; `gondolin ssh ID -- CMD` runs
    over it (same keys on a second call); `gondolin expose ID` opens a listener that
    reaches a guest service started later with `exec --session`"""
    img = ssh_image()
    r = subprocess.run([G, "start", "--image", img, "--ssh"], capture_output=True, text=True,
                       timeout=300)
    eq(r.returncode, 0, r.stderr)
    sid = r.stdout.strip()
    try:
        lines = [l for l in r.stderr.splitlines() if l.startswith("gondolin: ssh: ")]
        eq(len(lines), 1, r.stderr)
        cmd = lines[0][len("gondolin: ssh: "):].split()
        r = subprocess.run(cmd + ["echo via-start"], capture_output=True, text=True, timeout=120,
                           stdin=subprocess.DEVNULL)
        eq((r.returncode, r.stdout), (0, "via-start\n"), r.stderr)
        r = subprocess.run([G, "exec", "--session", sid, "--", "sh", "-c", "echo 42 > /tmp/n"],
                           capture_output=True, text=True, timeout=60)
        eq(r.returncode, 0, r.stderr)
        r = subprocess.run([G, "ssh", sid, "--", "cat /tmp/n"], capture_output=True, text=True,
                           timeout=120, stdin=subprocess.DEVNULL)
        eq((r.returncode, r.stdout), (0, "42\n"), r.stderr)
        r = subprocess.run([G, "ssh", sid, "--print"], capture_output=True, text=True, timeout=60)
        eq(r.stdout.strip(), " ".join(cmd), "a second call answers with the same access")
        r = subprocess.run([G, "expose", sid, "0=8000"], capture_output=True, text=True,
                           timeout=60)
        eq(r.returncode, 0, r.stderr)
        url = r.stdout.strip()
        expect(re.match(r"http://127\.0\.0\.1:\d+$", url), url)
        st, _, _ = http_get(int(url.rsplit(":", 1)[1]), "/")
        eq(st, 502, "nothing listens yet")
        bg = subprocess.Popen([G, "exec", "--session", sid, "--", "sh", "-c",
                               "mkdir -p /w && echo served > /w/f && cd /w && "
                               "exec python3 -m http.server 8000 --bind 127.0.0.1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(100):
                st, _, body = http_get(int(url.rsplit(":", 1)[1]), "/f")
                if st == 200:
                    break
                time.sleep(0.3)
            eq((st, body), (200, b"served\n"), "the service behind expose")
        finally:
            bg.terminate()
            bg.wait(timeout=30)
        r = subprocess.run([G, "expose", sid, "bogus"], capture_output=True, text=True, timeout=30)
        eq(r.returncode, 2, r.stderr)
    finally:
        subprocess.run([G, "stop", sid], capture_output=True, timeout=60)
    r = subprocess.run([G, "start", "--ssh"], capture_output=True, text=True, timeout=300)
    expect(r.returncode != 0 and "no sshd" in r.stderr, r.stderr)
    expect(not r.stdout.strip(), "no session id for a failed start")


@test
def ssh_hostile_inputs():
    """a user name that reads as an ssh option is refused; what a hostile guest's sshd
    writes (its log lines, its last words) reaches the host without terminal escapes"""
    r = subprocess.run([G, "start"], capture_output=True, text=True, timeout=300)
    eq(r.returncode, 0, r.stderr)
    sid = r.stdout.strip()
    try:
        r = subprocess.run([G, "ssh", sid, "--user", "-v", "--print"], capture_output=True,
                           text=True, timeout=60)
        expect(r.returncode == 1 and "bad user name" in r.stderr, r.stderr)
        fake = ('#!/bin/sh\nprintf "line \\033[31mRED\\033]0;title\\007\\n" >&2\n'
                'printf "tail \\033[2J\\033]0;t\\007" >&2\nexit 1\n')
        r = subprocess.run([G, "exec", "--session", sid, "--", "sh", "-c",
                            "cat > /usr/local/bin/sshd && chmod +x /usr/local/bin/sshd"],
                           input=fake, capture_output=True, text=True, timeout=60)
        eq(r.returncode, 0, r.stderr)
        r = subprocess.run([G, "ssh", sid, "--print"], capture_output=True, text=True, timeout=60)
        expect(r.returncode == 1 and "sshd exited (status 1): tail" in r.stderr, r.stderr)
        expect("\x1b" not in r.stderr, repr(r.stderr))
        r = subprocess.run([G, "logs", sid], capture_output=True, text=True, timeout=30)
        expect("sshd: line RED" in r.stdout + r.stderr, r.stdout + r.stderr)
        expect("\x1b" not in r.stdout + r.stderr, repr(r.stdout[-500:]))
    finally:
        subprocess.run([G, "stop", sid], capture_output=True, timeout=60)


def main():
    failed = 0
    ran = 0
    for t in TESTS:
        if FILTER and FILTER not in t.__name__:
            continue
        ran += 1
        t0 = time.time()
        try:
            t()
            print(f"ok   {t.__name__} ({time.time() - t0:.1f}s)", flush=True)
        except Exception as e:  # noqa: BLE001
            failed += 1
            print(f"FAIL {t.__name__}: {e}", flush=True)
    print(f"ingress tests: {ran - failed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
