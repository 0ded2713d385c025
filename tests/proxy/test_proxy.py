#!/usr/bin/env python3
"""The proxy engine without a VM: gd-proxyd plays the guest side, real upstream servers
on loopback play the internet. Data-driven cases in cases.json, plus the scenarios that
need a conversation (keep-alive, WebSocket, a dying upstream, trust).

Usage: test_proxy.py BUILD_DIR [NAME_FILTER]"""
import base64, json, os, socket, ssl, subprocess, sys, time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from fixture import Upstreams  # noqa: E402

BUILD = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "build")
FILTER = sys.argv[2] if len(sys.argv) > 2 else ""
PROXYD = os.path.join(BUILD, "tests", "gd-proxyd")


class Proxy:
    def __init__(self, up, flags, env=None):
        e = dict(os.environ)
        e.update(env or {})
        self.p = subprocess.Popen([PROXYD, "--quiet", "--ca-dir", up.mitm_dir] + flags,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=e)
        self.secrets = {}
        while True:
            line = self.p.stdout.readline().split()
            if not line:
                raise RuntimeError("gd-proxyd did not start: " + self.p.stderr.read())
            if line[0] == "SECRET":
                k, v = line[1].split("=", 1)
                self.secrets[k] = v
            if line[0] == "READY":
                self.port = int(line[1])
                break
        self.ca = os.path.join(up.mitm_dir, "ca.crt")

    def connect(self, sni=None):
        s = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        if sni:
            ctx = ssl.create_default_context(cafile=self.ca)
            s = ctx.wrap_socket(s, server_hostname=sni)
        return s

    def close(self):
        self.p.terminate()
        try:
            self.p.wait(5)
        except subprocess.TimeoutExpired:
            self.p.kill()
            raise AssertionError("gd-proxyd did not stop on SIGTERM")
        if self.p.returncode not in (0, -15):
            raise AssertionError(f"gd-proxyd exited {self.p.returncode}")


def read_response(s, head_only=False):
    """Reads one response; returns (status, head text, body bytes)."""
    data = b""
    while b"\r\n\r\n" not in data:
        c = s.recv(65536)
        if not c:
            break
        data += c
    head, _, rest = data.partition(b"\r\n\r\n")
    text = head.decode("latin-1")
    if text.startswith("HTTP/1.1 100"):
        st, h2, body = read_response_from(s, rest, head_only)
        return st, text + "\r\n\r\n" + h2, body
    return read_response_from(s, data, head_only)


def read_response_from(s, data, head_only):
    while b"\r\n\r\n" not in data:
        c = s.recv(65536)
        if not c:
            break
        data += c
    head, _, body = data.partition(b"\r\n\r\n")
    text = head.decode("latin-1")
    lines = text.split("\r\n")
    if not lines[0].startswith("HTTP/"):
        return 0, text, b""
    status = int(lines[0].split()[1])
    hdr = {l.split(":", 1)[0].lower(): l.split(":", 1)[1].strip() for l in lines[1:] if ":" in l}
    if head_only or status in (204, 304) or 100 <= status < 200:
        return status, text, b""
    if "content-length" in hdr:
        n = int(hdr["content-length"])
        while len(body) < n:
            c = s.recv(65536)
            if not c:
                break
            body += c
        return status, text, body[:n]
    if hdr.get("transfer-encoding") == "chunked":
        out = b""
        while True:
            while b"\r\n" not in body:
                body += s.recv(65536)
            line, _, body = body.partition(b"\r\n")
            n = int(line.split(b";")[0], 16)
            while len(body) < n + 2:
                c = s.recv(65536)
                if not c:
                    raise AssertionError("chunked body cut short")
                body += c
            out += body[:n]
            body = body[n + 2:]
            if n == 0:
                return status, text, out
    while True:
        c = s.recv(65536)
        if not c:
            return status, text, body
        body += c


TESTS = []


def test(fn):
    TESTS.append(fn)
    return fn


def expect(c, what):
    if not c:
        raise AssertionError(what)


def main():
    up = Upstreams()
    H, S = up.http_port, up.https_port
    flags = up.flags(f"good.test:{H}", f"good.test:{S}", f"other.test:{H}", f"other.test:{S}",
                     f"GET echo.test:{H}/echo", f"evil.test:{H}", f"127.0.0.1:{H}", "169.254.169.254",
                     f"[::ffff:127.0.0.1]:{H}", "[64:ff9b::a00:1]",
                     secrets=["TOKEN@good.test=real-token-123"], extra=["--inspect-bodies"])
    px = Proxy(up, flags, env={"GD_PROXY_MAX_BODY": "100000"})
    tok = px.secrets["TOKEN"]
    subst = {
        "{HTTP}": str(H), "{HTTPS}": str(S), "{TOKEN}": tok,
        "{BASIC_USER_TOKEN}": base64.b64encode(f"user:{tok}".encode()).decode(),
        "{BIG70K}": "a" * 70000,
        "{MANY200}": "".join(f"X-H{i}: {i}\r\n" for i in range(200)),
        "{BODY200K}": "b" * 200000,
    }
    cases = json.load(open(os.path.join(HERE, "cases.json")))
    passed = failed = 0
    for c in cases:
        if FILTER and FILTER not in c["name"]:
            continue
        req = c["request"]
        for k, v in subst.items():
            req = req.replace(k, v)
        try:
            s = px.connect(c.get("tls"))
            s.sendall(req.encode())
            st, head, body = read_response(s, head_only=req.startswith("HEAD"))
            s.close()
            expect(st == c["status"], f"status {st}, wanted {c['status']}: {head[:300]}")
            blob = head + "\r\n\r\n" + body.decode("latin-1")
            for want in c.get("contains", []):
                for k, v in subst.items():
                    want = want.replace(k, v)
                expect(want in blob, f"missing {want!r} in {blob[:600]!r}")
            for bad in c.get("absent", []):
                expect(bad not in blob.lower() if bad.islower() else bad not in blob, f"found {bad!r}")
            if "body_len" in c:
                expect(len(body) == c["body_len"], f"body {len(body)} bytes, wanted {c['body_len']}")
            print(f"ok   {c['name']}")
            passed += 1
        except Exception as e:  # noqa: BLE001
            print(f"FAIL {c['name']}: {e}")
            failed += 1

    ctx = dict(px=px, up=up, H=H, S=S)
    for fn in TESTS:
        name = fn.__doc__.strip()
        if FILTER and FILTER not in name:
            continue
        try:
            fn(**ctx)
            print(f"ok   {name}")
            passed += 1
        except Exception as e:  # noqa: BLE001
            print(f"FAIL {name}: {e}")
            failed += 1
    px.close()
    up.close()
    print(f"proxy tests: {passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


@test
def keepalive(px, H, S, **_):
    """200 requests on one keep-alive connection (HTTPS), one pooled upstream connection"""
    s = px.connect("good.test")
    conns = set()
    for i in range(200):
        s.sendall(f"GET /echo?i={i} HTTP/1.1\r\nHost: good.test:{S}\r\n\r\n".encode())
        st, head, body = read_response(s)
        expect(st == 200, f"request {i}: {st}")
        doc = json.loads(body)
        expect(doc["path"] == f"/echo?i={i}", doc["path"])
        conns.add(doc["conn"])
    s.close()
    expect(len(conns) == 1, f"upstream connections used: {len(conns)}")


@test
def websocket(px, H, **_):
    """WebSocket upgrade is policy-checked, then frames are tunneled (echo)"""
    s = px.connect()
    s.sendall((f"GET /ws HTTP/1.1\r\nHost: good.test:{H}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(4096)
    head, _, rest = data.partition(b"\r\n\r\n")
    expect(head.startswith(b"HTTP/1.1 101"), head[:100])
    expect(b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in head, "accept key")
    msg = b"hello through the tunnel"
    mask = b"\x01\x02\x03\x04"
    s.sendall(bytes([0x81, 0x80 | len(msg)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(msg)))
    while len(rest) < 2 + len(msg):
        rest += s.recv(4096)
    expect(rest[2:2 + len(msg)] == msg, rest)
    s.close()
    # denied handshake
    s = px.connect()
    s.sendall(b"GET /ws HTTP/1.1\r\nHost: nope.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    st, head, _ = read_response(s)
    expect(st == 403, f"denied upgrade got {st}")


@test
def upstream_dies(px, H, **_):
    """the upstream dying mid-response cuts the flow cleanly; the next request works"""
    s = px.connect()
    s.sendall(f"GET /die?n=10000 HTTP/1.1\r\nHost: good.test:{H}\r\n\r\n".encode())
    data = b""
    s.settimeout(10)
    while True:
        c = s.recv(65536)
        if not c:
            break
        data += c
    expect(data.startswith(b"HTTP/1.1 200"), data[:50])
    expect(len(data.partition(b"\r\n\r\n")[2]) == 10000, "partial body then close")
    s = px.connect()
    s.sendall(f"GET /bytes?n=10 HTTP/1.1\r\nHost: good.test:{H}\r\n\r\n".encode())
    st, _, body = read_response(s)
    expect(st == 200 and body == b"x" * 10, f"{st} {body!r}")


@test
def concurrent(px, H, S, **_):
    """50 concurrent connections, all answered"""
    socks = [px.connect("good.test") for _ in range(50)]
    for i, s in enumerate(socks):
        s.sendall(f"GET /bytes?n={1000 + i} HTTP/1.1\r\nHost: good.test:{S}\r\n\r\n".encode())
    for i, s in enumerate(socks):
        st, _, body = read_response(s)
        expect(st == 200 and len(body) == 1000 + i, f"conn {i}: {st} {len(body)}")
        s.close()


@test
def not_http(px, **_):
    """non-HTTP bytes close the flow"""
    s = px.connect()
    s.sendall(b"\x00\x01binary junk\r\n\r\n")
    s.settimeout(5)
    expect(s.recv(100) == b"", "closed without a reply")


@test
def untrusted_upstream(up, H, S, **_):
    """upstream TLS verifies the real chain: without the test CA it is 502"""
    p = Proxy(up, up.flags(f"good.test:{S}")[2:])  # drop --upstream-ca
    try:
        s = p.connect("good.test")
        s.sendall(f"GET /echo HTTP/1.1\r\nHost: good.test:{S}\r\n\r\n".encode())
        st, head, body = read_response(s)
        expect(st == 502 and b"not trusted" in body, f"{st} {body!r}")
    finally:
        p.close()


@test
def query_opt_in(up, H, **_):
    """--secrets-in-query substitutes in the query string only"""
    p = Proxy(up, up.flags(f"good.test:{H}", secrets=["TOKEN@good.test=real-token-123"],
                           extra=["--secrets-in-query"]))
    try:
        tok = p.secrets["TOKEN"]
        s = p.connect()
        s.sendall(f"GET /echo/{tok}?key={tok} HTTP/1.1\r\nHost: good.test:{H}\r\n\r\n".encode())
        st, _, body = read_response(s)
        doc = json.loads(body)
        expect(doc["path"] == f"/echo/{tok}?key=real-token-123", doc["path"])
    finally:
        p.close()


@test
def audit_log(up, H, **_):
    """--audit writes one JSON line per decision, with secrets redacted"""
    path = os.path.join(up.dir, "audit.jsonl")
    p = Proxy(up, up.flags(f"good.test:{H}", secrets=["TOKEN@good.test=real-token-123"],
                           extra=["--audit", path]))
    try:
        tok = p.secrets["TOKEN"]
        for host in ("good.test", "nope.test"):
            s = p.connect()
            s.sendall(f"GET /echo?t={tok} HTTP/1.1\r\nHost: {host}:{H}\r\nX-K: {tok}\r\n\r\n".encode())
            read_response(s)
            s.close()
        # a guest that learned the real value still cannot get it into the log
        s = p.connect()
        s.sendall(f"GET /echo?leak=real-token-123 HTTP/1.1\r\nHost: nope.test:{H}\r\n\r\n".encode())
        read_response(s)
        s.close()
    finally:
        p.close()
    lines = [json.loads(l) for l in open(path)]
    expect(len(lines) == 3, f"{len(lines)} audit lines")
    a, d, leak = lines
    for k in ("time", "vm", "method", "scheme", "host", "port", "path", "decision", "rule", "status",
              "bytes_up", "bytes_down", "duration_ms"):
        expect(k in a, f"audit field {k} missing")
    expect(a["decision"] == "allow" and a["status"] == 200 and a["bytes_down"] > 0, a)
    expect(d["decision"] == "deny" and d["status"] == 403 and d["rule"] == "allow-host", d)
    expect("real-token-123" not in open(path).read(), "real secret value in the audit log")
    expect("[secret TOKEN]" in leak["path"], leak["path"])


if __name__ == "__main__":
    main()
