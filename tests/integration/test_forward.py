#!/usr/bin/env python3
"""Port forwards into a real VM (core/forward through the agent's tunnels, no guest NIC):
one VM, booted by tests/integration/fwd_driver.c, serves everything.
Usage: test_forward.py BUILD_DIR [NAME_FILTER]"""
import base64
import hashlib
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request

from harness import TESTS, eq, expect, test  # noqa: E402

BUILD = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "build")
FILTER = sys.argv[2] if len(sys.argv) > 2 else ""
G = os.path.join(BUILD, "gondolin")
DRIVER = os.path.join(BUILD, "tests", "gd-fwd-driver")
BIG = 100 << 20

# the guest's services: http.server on 8000 (127.0.0.1) and 8003 (::1 only), a WebSocket
# echo on 8001, on 8002 a service that reads to EOF and answers "LENGTH SHA256", on 8004
# one that resets every connection, on 8005 a listener with a full accept queue
SERVICES = r'''
import base64, hashlib, socket, struct, threading, time
def ws(c):
    data = b""
    while b"\r\n\r\n" not in data:
        d = c.recv(4096)
        if not d:
            return c.close()
        data += d
    head, rest = data.split(b"\r\n\r\n", 1)
    key = [l.split(b":", 1)[1].strip() for l in head.split(b"\r\n")
           if l.lower().startswith(b"sec-websocket-key:")][0]
    acc = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
    c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Accept: " + acc + b"\r\n\r\n" + rest)
    while True:
        d = c.recv(65536)
        if not d:
            break
        c.sendall(d)
    c.close()
def sha(c):
    h, n = hashlib.sha256(), 0
    while True:
        d = c.recv(65536)
        if not d:
            break
        h.update(d)
        n += len(d)
    c.sendall(b"%d %s\n" % (n, h.hexdigest().encode()))
    c.close()
def serve(port, fn):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(64)
    while True:
        c, _ = s.accept()
        threading.Thread(target=fn, args=(c,), daemon=True).start()
def reset(c):
    c.recv(100)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()
full = socket.socket()
full.bind(("127.0.0.1", 8005))
full.listen(0)  # never accepted: one connection fills the queue, the next SYNs are dropped
threading.Thread(target=serve, args=(8001, ws), daemon=True).start()
threading.Thread(target=serve, args=(8004, reset), daemon=True).start()
serve(8002, sha)
'''

GUEST_CMD = f"""set -e
mkdir -p /tmp/www && cd /tmp/www
echo hello > small.txt
head -c 1048576 /dev/urandom > mid
head -c {BIG} /dev/urandom > big
echo "SHA $(sha256sum big | cut -d' ' -f1) $(sha256sum mid | cut -d' ' -f1)"
cat > /tmp/services.py <<'EOF'
{SERVICES}
EOF
python3 -u /tmp/services.py &
python3 -m http.server 8003 --bind ::1 >/dev/null 2>&1 &
exec python3 -m http.server 8000 --bind 127.0.0.1 2>/dev/null
"""

FORWARDS = {
    "raw": "raw:0=8000",
    "http": "http:0=8000",
    "raw_dead": "raw:0=9",
    "http_dead": "http:0=9",
    "raw_cap": "raw,max=3:0=8001",
    "ws": "http:0=8001",
    "sha": "raw:0=8002",
    "idle": "raw,idle=1500:0=8002",
    "v6": "raw:0=8003",
    "http_cap": "http,max=3:0=8000",
    "reset": "raw:0=8004",
    "full": "raw:0=8005",
    "full_3s": "raw,connect=3000:0=8005",
}
PORT = {}
DRV = None
LOG = []
SHA = {}


def url(name, path):
    return f"http://127.0.0.1:{PORT[name]}{path}"


def curl(name, path, *extra):
    return subprocess.run(["curl", "-sS", "-m", "60", *extra, url(name, path)],
                          capture_output=True, timeout=90)


def fetch(name, path):
    with urllib.request.urlopen(url(name, path), timeout=60) as r:
        return r.read()


def connect(name):
    return socket.create_connection(("127.0.0.1", PORT[name]), timeout=10)


def read_all(s, timeout=60):
    """Everything until the peer's EOF."""
    s.settimeout(timeout)
    data = []
    while True:
        d = s.recv(1 << 20)
        if not d:
            return b"".join(data)
        data.append(d)


def closed_within(s, seconds):
    """True if the peer closes (EOF or reset) within `seconds`."""
    s.settimeout(seconds)
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def log_has(text, since=0, wait=5):
    end = time.time() + wait
    while time.time() < end:
        if any(text in line for line in LOG[since:]):
            return True
        time.sleep(0.1)
    return False


def ws_handshake(s, port):
    s.sendall(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n"
              b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
              b"Sec-WebSocket-Version: 13\r\n\r\n" % port)
    head = b""
    while b"\r\n\r\n" not in head:
        d = s.recv(4096)
        expect(d, f"connection closed during the handshake: {head!r}")
        head += d
    head, rest = head.split(b"\r\n\r\n", 1)
    return head.decode(), rest


def echo(s, data, rest=b""):
    got = [rest]

    def reader():
        n = len(rest)
        while n < len(data):
            d = s.recv(65536)
            if not d:
                break
            got.append(d)
            n += len(d)

    t = threading.Thread(target=reader)
    t.start()
    s.sendall(data)
    t.join(60)
    return b"".join(got)


@test
def small_file_raw_and_http():
    r = curl("raw", "/small.txt")
    eq(r.stdout, b"hello\n", r.stderr.decode())
    r = curl("http", "/small.txt", "-i")
    head, body = r.stdout.split(b"\r\n\r\n", 1)
    eq(body, b"hello\n", "http body")
    expect(b"HTTP/1.1 200" in head, head)
    expect(b"X-Gondolin-Ingress: 1" in head, f"the ingress hook did not run: {head!r}")


@test
def hook_sees_ingress_and_can_deny():
    r = curl("http", "/forbidden/x", "-i")
    expect(r.stdout.startswith(b"HTTP/1.1 403"), r.stdout)
    expect(b"forbidden by the test hook" in r.stdout, r.stdout)
    expect(log_has("audit: GET 127.0.0.1 /forbidden/x 403 deny"), "no audit line")


def big_through(name):
    start = time.time()
    p = subprocess.Popen(["curl", "-sS", "-m", "600", url(name, "/big")], stdout=subprocess.PIPE)
    h, n = hashlib.sha256(), 0
    while True:
        d = p.stdout.read(1 << 20)
        if not d:
            break
        h.update(d)
        n += len(d)
    eq(p.wait(), 0, "curl")
    eq(n, BIG, "bytes")
    eq(h.hexdigest(), SHA["big"], "sha256")
    print(f"     {name}: 100 MiB in {time.time() - start:.1f}s", flush=True)


@test
def big_response_raw_intact():
    big_through("raw")


@test
def big_response_http_intact():
    big_through("http")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(next(l for l in f if l.startswith("VmRSS:")).split()[1])


def slow_reader(name):
    """A client that stops reading: the host holds no more than a window of what the guest
    has (100 MiB here), then the transfer finishes intact."""
    s = connect(name)
    s.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    s.settimeout(60)
    first = s.recv(65536)
    before = rss_kib(DRV.pid)
    time.sleep(3)
    grew = rss_kib(DRV.pid) - before
    expect(grew < 32 << 10, f"the driver grew by {grew} KiB while the client did not read")
    body = (first + read_all(s)).split(b"\r\n\r\n", 1)[1]
    s.close()
    eq(hashlib.sha256(body).hexdigest(), SHA["big"], "sha256")


@test
def slow_reader_raw_is_flow_controlled():
    slow_reader("raw")


@test
def slow_reader_http_is_flow_controlled():
    slow_reader("http")


@test
def concurrent_connections():
    results = {}

    def get(i, name):
        try:
            results[(i, name)] = hashlib.sha256(fetch(name, "/mid")).hexdigest()
        except Exception as e:  # noqa: BLE001 - recorded and reported below
            results[(i, name)] = repr(e)

    threads = [threading.Thread(target=get, args=(i, n)) for i in range(12) for n in ("raw", "http")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    eq(len(results), len(threads), "finished")
    bad = {k: v for k, v in results.items() if v != SHA["mid"]}
    eq(bad, {}, "transfers that differ")


@test
def upload_and_half_close():
    """3 MiB up under the guest's stdin credit, then our FIN: the guest service sees EOF,
    answers and closes, and we read its answer and then EOF."""
    data = os.urandom(3 << 20)
    s = connect("sha")
    s.sendall(data)
    s.shutdown(socket.SHUT_WR)
    got = read_all(s)
    s.close()
    eq(got.decode(), f"{len(data)} {hashlib.sha256(data).hexdigest()}\n", "guest saw")


@test
def websocket_tunneled_through_http_mode():
    s = connect("ws")
    head, rest = ws_handshake(s, PORT["ws"])
    expect(head.startswith("HTTP/1.1 101"), head)
    expect("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in head, head)
    data = os.urandom(1 << 20)
    eq(hashlib.sha256(echo(s, data, rest)).hexdigest(), hashlib.sha256(data).hexdigest(), "echo")
    s.close()


@test
def guest_port_not_listening():
    mark = len(LOG)
    s = connect("raw_dead")
    start = time.time()
    expect(closed_within(s, 5), "raw: the connection stayed open")
    expect(time.time() - start < 3, "raw: not closed promptly")
    s.close()
    expect(log_has("connect to guest port 9: Connection refused", mark), "raw: no log line")
    r = curl("http_dead", "/", "-i")
    expect(r.stdout.startswith(b"HTTP/1.1 502"), r.stdout)


@test
def connection_cap_raw():
    mark = len(LOG)
    held = [connect("raw_cap") for _ in range(3)]
    time.sleep(1)  # accepted, tunnels up
    extra = connect("raw_cap")
    expect(closed_within(extra, 5), "a 4th connection was not closed")
    extra.close()
    expect(log_has("refused: 3 connections open (the limit)", mark), "no log line")
    head, _ = ws_handshake(held[0], PORT["raw_cap"])  # the held ones still work
    expect(head.startswith("HTTP/1.1 101"), head)
    for s in held:
        s.close()
    end = time.time() + 20  # their tunnels end; the slots come back
    while True:
        s = connect("raw_cap")
        ok = not closed_within(s, 0.5)
        s.close()
        if ok:
            break
        expect(time.time() < end, "the cap did not free up")
        time.sleep(0.5)


@test
def connection_cap_http():
    held = [connect("http_cap") for _ in range(3)]
    time.sleep(1)
    extra = connect("http_cap")
    expect(closed_within(extra, 5), "a 4th connection was not closed")
    extra.close()
    held[0].sendall(b"GET /small.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    resp = read_all(held[0], 30)
    expect(resp.startswith(b"HTTP/1.1 200") and resp.endswith(b"hello\n"), resp)
    for s in held:
        s.close()


@test
def idle_timeout_closes():
    mark = len(LOG)
    s = connect("idle")
    start = time.time()
    expect(closed_within(s, 10), "an idle connection stayed open")
    took = time.time() - start
    expect(1.0 < took < 5, f"closed after {took:.1f}s, idle timeout is 1.5s")
    s.close()
    expect(log_has("idle for 1500 ms", mark), "no log line")


@test
def guest_reset_resets_the_client():
    mark = len(LOG)
    s = connect("reset")
    s.sendall(b"hi")
    s.settimeout(10)
    try:
        while s.recv(100):
            pass
        expect(False, "a guest reset reached the client as a clean close")
    except ConnectionResetError:
        pass
    s.close()
    expect(log_has("reset by the guest side", mark), "no log line")


@test
def connect_never_blocks_the_agent():
    """A guest listener whose accept queue is full: the agent's connects wait without
    holding up other sessions, until the agent's deadline (10 s: an error) or the
    forward's (3 s here: it resets the tunnel, which cancels the connect)."""
    mark = len(LOG)
    first = connect("full")  # fills the queue
    time.sleep(0.5)
    pending = connect("full")
    gives_up = connect("full_3s")
    start = time.time()
    eq(fetch("raw", "/small.txt"), b"hello\n", "a request while connects are pending")
    expect(time.time() - start < 2, "the agent was blocked")
    expect(closed_within(gives_up, 10), "the forward's connect deadline did not end it")
    took = time.time() - start
    expect(2 < took < 6, f"the forward gave up after {took:.1f}s, its deadline is 3s")
    expect(log_has("did not accept within 3000 ms", mark), "no log line for the forward's deadline")
    eq(fetch("raw", "/small.txt"), b"hello\n", "the agent after a cancelled connect")
    expect(closed_within(pending, 20), "the pending connection never ended")
    took = time.time() - start
    expect(8 < took < 14, f"the agent gave up after {took:.1f}s, its deadline is 10s")
    expect(log_has("port 8005: Operation timed out", mark)  # musl's strerror
           or log_has("port 8005: Connection timed out", mark, 0), "no log line")
    for s in (first, pending, gives_up):
        s.close()


@test
def ipv6_only_guest_service():
    r = curl("v6", "/small.txt")
    eq(r.stdout, b"hello\n", r.stderr.decode())


@test
def vm_going_away():  # last: the VM stops
    s = connect("sha")
    s.sendall(b"x" * 1000)
    time.sleep(0.5)
    mark = len(LOG)
    DRV.send_signal(signal.SIGUSR1)
    expect(closed_within(s, 20), "an open connection survived the VM")
    s.close()
    expect(log_has("the VM stopped", mark, 10), "no log line for the open connection")
    s = connect("raw")
    expect(closed_within(s, 5), "a new connection was not closed")
    s.close()
    expect(log_has("the VM is not running", mark), "no log line for the new connection")


def reader(stream):
    for line in stream:
        line = line.decode(errors="replace").rstrip("\n")
        LOG.append(line)
        if os.environ.get("GONDOLIN_TEST_VERBOSE"):
            print("   |", line, flush=True)


def main():
    global DRV
    # (re)builds the default image with this build's agent if needed
    r = subprocess.run([G, "exec", "--", "true"], capture_output=True, timeout=900)
    if r.returncode != 0:
        print("cannot boot the default image:", r.stderr.decode())
        return 1
    DRV = subprocess.Popen([DRIVER, "--guest-cmd", GUEST_CMD] + list(FORWARDS.values()),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    threading.Thread(target=reader, args=(DRV.stderr,), daemon=True).start()
    names = list(FORWARDS)
    for line in DRV.stdout:
        w = line.decode().split()
        if w[:1] == ["ready"]:
            break
        if w[:1] == ["forward"]:
            PORT[names[int(w[1])]] = int(w[3])
    if len(PORT) != len(FORWARDS):
        print("the driver did not start:", "\n".join(LOG))
        DRV.kill()
        return 1
    end = time.time() + 300  # the guest writes 100 MiB of random data first
    while not SHA and time.time() < end:
        for line in LOG:
            if line.startswith("SHA "):
                SHA["big"], SHA["mid"] = line.split()[1:3]
        time.sleep(0.2)
    ready = False
    while time.time() < end and not ready:
        try:
            ready = fetch("raw", "/small.txt") == b"hello\n" and fetch("v6", "/small.txt")
            s = connect("sha")  # the Python services are up
            s.shutdown(socket.SHUT_WR)
            s.settimeout(10)
            ready = ready and s.recv(100).startswith(b"0 ")
            s.close()
        except Exception:  # noqa: BLE001 - not yet
            time.sleep(0.5)
    if not ready:
        print("the guest services did not come up:", "\n".join(LOG[-20:]))
        DRV.kill()
        return 1
    passed = failed = 0
    for t in TESTS:
        if FILTER and FILTER not in t.__name__ and t is not vm_going_away:
            continue
        start = time.time()
        try:
            t()
            passed += 1
            print(f"ok   {t.__name__} ({time.time() - start:.1f}s)", flush=True)
        except Exception as e:  # noqa: BLE001 - report every failure and go on
            failed += 1
            print(f"FAIL {t.__name__}: {e}", flush=True)
    DRV.send_signal(signal.SIGTERM)
    try:
        rc = DRV.wait(timeout=60)
    except subprocess.TimeoutExpired:
        DRV.kill()
        rc = "timeout"
    time.sleep(0.2)
    if rc == 0:
        passed += 1
        print("ok   clean_teardown (forwards closed, VM stopped, no handle left)")
    else:
        failed += 1
        print(f"FAIL clean_teardown: driver exit {rc}:", "\n".join(LOG[-10:]))
    print(f"{passed + failed} forward tests, {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
