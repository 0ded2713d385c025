"""An in-process fake of the session supervisor, for protocol-edge tests only.

It speaks docs/control.md with scripted "programs" instead of a VM, enforces the
client's side of the contract (stdin credit, HELLO first) the way the real server does
(ERROR id 0, then close), records what the client sent, and can misbehave on purpose.
The tests that matter run against real VMs (test_real.py).
"""

from __future__ import annotations

import json
import os
import select
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

HDR = struct.Struct("<IBBHI")
(HELLO, EXEC, STARTED, STDIN, STDIN_WINDOW, OUTPUT, WINDOW, RESIZE, SIGNAL, EXIT, ERROR, PUT, GET,
 REQUEST, REPLY, LOG, CANCEL) = range(1, 18)


def frame(t: int, id_: int, body: bytes = b"", flags: int = 0) -> bytes:
    return HDR.pack(len(body), t, flags, 0, id_) + body


def jframe(t: int, id_: int, obj: dict[str, Any]) -> bytes:
    return frame(t, id_, json.dumps(obj).encode())


@dataclass
class Proc:
    """One exec, PUT or GET on the fake."""

    id: int
    kind: str
    argv: list[str]
    credit: list[int]
    pty: bool = False
    out: list[bytearray] = field(default_factory=lambda: [bytearray(), bytearray()])
    produce: Iterator[tuple[int, bytes]] | None = None  # more output, pulled when there is room
    stdin_buf: bytearray = field(default_factory=bytearray)
    stdin_eof: bool = False
    stdin_credit: int = 0  # what the client may still send
    stdin_received: int = 0
    exit: dict[str, Any] | None = None  # set when the program is done (sent after output)
    cancelled: bool = False
    path: str = ""
    resizes: list[tuple[int, int]] = field(default_factory=list)
    signals: list[int] = field(default_factory=list)
    sent: list[int] = field(default_factory=lambda: [0, 0])
    granted: list[int] = field(default_factory=lambda: [0, 0])


class FakeServer:
    def __init__(self, path: str, *, stdin_grant: int = 65536, split: bool = False,
                 session: dict[str, Any] | None = None) -> None:
        self.path = path
        self.stdin_grant = stdin_grant
        self.split = split  # write every frame in small pieces with pauses
        # a stand-in supervisor process, ended by `stop` (clients wait for it to go)
        self.sup = subprocess.Popen(["sleep", "600"])
        self.session = session or {"id": "fake-session", "name": "fake", "pid": self.sup.pid}
        self.files: dict[str, bytes] = {}
        self.procs: dict[int, Proc] = {}
        self.history: list[tuple[int, int, int, bytes]] = []  # client frames (type, flags, id, body)
        self.violations: list[str] = []
        self.policy_error: str | None = None
        self.log_lines = [f"line {i}" for i in range(1, 6)]
        self.overrun = False  # send one byte beyond the credit
        self.drop_after_started = False  # close the connection after STARTED
        self.conn_error: str | None = None  # send ERROR id 0 after HELLO
        self.conn_error_delay = 0.0
        self.request_error_ops: set[str] = set()  # answer these ops with ERROR for the id
        self.stopped = threading.Event()
        self.lock = threading.Lock()
        self.conns: list[socket.socket] = []
        self._srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._srv.bind(path)
        self._srv.listen(16)
        self._closing = False
        self._t = threading.Thread(target=self._accept, daemon=True)
        self._t.start()

    def close(self) -> None:
        self._closing = True
        self.sup.kill()
        self.sup.wait()
        try:
            self._srv.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._srv.close()
        for c in list(self.conns):
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._t.join(2)

    def _accept(self) -> None:
        while not self._closing:
            try:
                c, _ = self._srv.accept()
            except OSError:
                return
            self.conns.append(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    # -- one connection
    def _serve(self, c: socket.socket) -> None:
        buf = bytearray()
        procs: dict[int, Proc] = {}
        tails: dict[int, bool] = {}
        hello = False
        out = bytearray()

        def send(data: bytes) -> None:
            out.extend(data)

        def flush() -> None:
            if not out:
                return
            data = bytes(out)
            out.clear()
            if self.split:
                for i in range(0, len(data), 5):
                    c.sendall(data[i : i + 5])
                    if i % 50 == 0:
                        time.sleep(0.0005)
            else:
                c.sendall(data)

        def violation(msg: str) -> None:
            self.violations.append(msg)
            send(jframe(ERROR, 0, {"code": "protocol", "message": msg}))
            flush()
            raise ConnectionAbortedError(msg)

        try:
            while True:
                busy = self._pump(procs, send)
                flush()
                r, _, _ = select.select([c], [], [], 0.001 if busy else 0.05)
                if not r:
                    continue
                data = c.recv(65536)
                if not data:
                    return
                buf += data
                while len(buf) >= 12:
                    ln, t, fl, res, id_ = HDR.unpack_from(buf)
                    if res != 0 or ln > (1 << 20):
                        violation("bad header")
                    if len(buf) < 12 + ln:
                        break
                    body = bytes(buf[12 : 12 + ln])
                    del buf[: 12 + ln]
                    with self.lock:
                        self.history.append((t, fl, id_, body))
                    if not hello:
                        if t != HELLO:
                            violation("a message before HELLO")
                        hello = True
                        send(jframe(HELLO, 0, {"version": 1, "session": self.session}))
                        if self.conn_error:
                            if self.conn_error_delay:
                                flush()
                                time.sleep(self.conn_error_delay)
                            send(jframe(ERROR, 0, {"code": "busy", "message": self.conn_error}))
                            flush()
                            return
                        continue
                    self._handle(t, fl, id_, body, procs, tails, send, violation)
                    if self.stopped.is_set():
                        flush()
                        return
        except (ConnectionAbortedError, OSError):
            return
        finally:
            c.close()

    def _handle(self, t: int, fl: int, id_: int, body: bytes, procs: dict[int, Proc],
                tails: dict[int, bool], send: Any, violation: Any) -> None:
        if t in (EXEC, PUT, GET, REQUEST) and (id_ in procs or id_ in tails):
            send(jframe(ERROR, id_, {"code": "busy-id", "message": f"id {id_} is live"}))
            return
        if t == EXEC:
            j = json.loads(body)
            argv = j["argv"] if "argv" in j else ["sh", "-lc", j["shell"]]
            w = j.get("window", 262144)
            p = Proc(id_, "exec", argv, [w, w], pty=j.get("pty", False))
            p.granted = [w, w]
            procs[id_] = p
            self.procs[id_] = p
            self._program(p, j)
            if p.exit is not None and p.exit.get("exit_code") == 127:
                send(jframe(EXIT, id_, p.exit))
                del procs[id_]
                return
            send(jframe(STARTED, id_, {"pid": 1000 + id_}))
            if j.get("stdin"):
                p.stdin_credit = self.stdin_grant
                send(frame(STDIN_WINDOW, id_, struct.pack("<I", self.stdin_grant)))
            else:
                p.stdin_eof = True
            if self.drop_after_started:
                raise ConnectionAbortedError("drop")
        elif t == PUT:
            j = json.loads(body)
            p = Proc(id_, "put", [], [0, 0], path=j["path"])
            procs[id_] = p
            self.procs[id_] = p
            p.stdin_credit = self.stdin_grant
            send(frame(STDIN_WINDOW, id_, struct.pack("<I", self.stdin_grant)))
        elif t == GET:
            j = json.loads(body)
            w = j.get("window", 262144)
            p = Proc(id_, "get", [], [w, w], path=j["path"])
            procs[id_] = p
            self.procs[id_] = p
            if j["path"] not in self.files:
                p.exit = {"exit_code": 1, "error": f"{j['path']}: No such file or directory"}
            else:
                data = self.files[j["path"]]
                p.produce = iter([(0, data[i : i + 100000]) for i in range(0, len(data), 100000)])
                p.exit = {"exit_code": 0}
        elif t == STDIN:
            p = procs.get(id_)
            if p is None:
                return
            if len(body) > p.stdin_credit:
                violation(f"STDIN beyond the credit ({len(body)} > {p.stdin_credit})")
            p.stdin_credit -= len(body)
            p.stdin_received += len(body)
            p.stdin_buf += body
            if fl & 1:
                p.stdin_eof = True
        elif t == WINDOW:
            p = procs.get(id_)
            if p is None:
                return
            a, b = struct.unpack("<II", body)
            p.credit[0] += a
            p.credit[1] += b
            p.granted[0] += a
            p.granted[1] += b
        elif t == RESIZE:
            j = json.loads(body)
            if id_ in procs:
                procs[id_].resizes.append((j["rows"], j["cols"]))
        elif t == SIGNAL:
            j = json.loads(body)
            p = procs.get(id_)
            if p:
                p.signals.append(j["signal"])
                p.exit = {"exit_code": 128 + j["signal"], "signal": j["signal"]}
                p.produce = None
        elif t == CANCEL:
            if id_ in tails:
                del tails[id_]
                send(jframe(REPLY, id_, {"ok": True}))
                return
            p = procs.get(id_)
            if p:
                p.cancelled = True
                p.exit = {"exit_code": 129, "signal": 1}
                p.produce = None
        elif t == REQUEST:
            j = json.loads(body)
            op = j.get("op")
            if op in self.request_error_ops:
                send(jframe(ERROR, id_, {"code": "failed", "message": f"{op} failed"}))
            elif op == "info":
                send(jframe(REPLY, id_, {"ok": True, **self.session, "state": "running", "execs": len(procs)}))
            elif op == "policy.reload":
                if self.policy_error:
                    send(jframe(REPLY, id_, {"ok": False, "error": self.policy_error}))
                else:
                    send(jframe(REPLY, id_, {"ok": True, "revision": "r2", "generation": 2}))
            elif op == "logs":
                n = j.get("lines", 100)
                lines = self.log_lines[-n:] if n else []
                if lines:
                    send(frame(LOG, id_, ("\n".join(lines) + "\n").encode()))
                if j.get("follow"):
                    tails[id_] = True
                    send(frame(LOG, id_, b"new 1\nnew"))
                    send(frame(LOG, id_, b" 2\n"))
                else:
                    send(jframe(REPLY, id_, {"ok": True}))
            elif op == "fs.diff":
                if j.get("path") != "/workspace":
                    send(jframe(REPLY, id_, {"ok": False, "error": "not an overlay mount"}))
                else:
                    ch = [{"kind": "A", "path": "/workspace/new"}, {"kind": "D", "path": "/workspace/old"}]
                    if j.get("export"):
                        with open(j["export"], "wb") as f:
                            f.write(b"tar")
                    send(jframe(REPLY, id_, {"ok": True, "mount": "/workspace", "changes": ch, "count": 2, "truncated": False}))
            elif op == "stop":
                send(jframe(REPLY, id_, {"ok": True}))
                self.stopped.set()
                self.sup.kill()
                self.sup.wait()
            else:
                send(jframe(REPLY, id_, {"ok": False, "error": f"unknown op '{op}'"}))
        else:
            violation(f"unexpected type {t}")

    def _program(self, p: Proc, j: dict[str, Any]) -> None:
        a = p.argv
        cmd = a[0]
        if cmd == "gen":  # gen N [stdout|stderr|both]
            n = int(a[1])
            which = a[2] if len(a) > 2 else "stdout"

            def gen() -> Iterator[tuple[int, bytes]]:
                pat = bytes(range(256)) * 256
                left = n
                while left > 0:
                    k = min(left, 50000)
                    piece = pat[(n - left) % 256 : (n - left) % 256 + k]
                    if which in ("stdout", "both"):
                        yield 0, piece
                    if which in ("stderr", "both"):
                        yield 1, piece
                    left -= k

            p.produce = gen()
            p.exit = {"exit_code": 0}
        elif cmd == "exit":
            p.produce = iter([(0, b"out\n"), (1, b"first\nboom\n")])
            p.exit = {"exit_code": int(a[1])}
        elif cmd == "notfound":
            p.exit = {"exit_code": 127, "error": "notfound: not found"}
        elif cmd == "sleep":
            p.produce = iter([(0, b"sleeping\n")])
        elif cmd == "cat" or p.pty:
            p.produce = None  # echo from stdin, see _pump
        elif cmd == "sh":
            p.produce = iter([(0, a[2].encode() + b"\n")])
            p.exit = {"exit_code": 0}
        else:
            p.exit = {"exit_code": 127, "error": f"{cmd}: not found"}

    def _pump(self, procs: dict[int, Proc], send: Any) -> bool:
        """Moves output under credit and ends finished programs; True while busy."""
        busy = False
        for id_, p in list(procs.items()):
            if p.kind == "put":
                if p.stdin_buf:
                    self.files.setdefault(p.path, b"")
                    self.files[p.path] += bytes(p.stdin_buf)
                    n = len(p.stdin_buf)
                    p.stdin_buf.clear()
                    p.stdin_credit += n
                    send(frame(STDIN_WINDOW, id_, struct.pack("<I", n)))
                if p.stdin_eof:
                    self.files.setdefault(p.path, b"")
                    send(jframe(EXIT, id_, {"exit_code": 0}))
                    del procs[id_]
                continue
            echo = p.kind == "exec" and (p.argv[0] == "cat" or p.pty) and not p.cancelled
            if echo and p.stdin_buf and not p.out[0]:
                p.out[0] += p.stdin_buf
                n = len(p.stdin_buf)
                p.stdin_buf.clear()
                if p.stdin_credit < self.stdin_grant:  # grant back what we consumed
                    p.stdin_credit += n
                    send(frame(STDIN_WINDOW, id_, struct.pack("<I", n)))
            if echo and p.stdin_eof and not p.stdin_buf and p.exit is None:
                p.exit = {"exit_code": 0}
            if p.produce is not None and not p.out[0] and not p.out[1]:
                nxt = next(p.produce, None)
                if nxt is None:
                    p.produce = None
                else:
                    p.out[nxt[0]] += nxt[1]
            for s in (0, 1):
                while p.out[s] and p.credit[s] > 0:
                    k = min(len(p.out[s]), p.credit[s], 65536)
                    if self.overrun:
                        k = min(len(p.out[s]), p.credit[s] + 1, 65536)
                    send(frame(OUTPUT, id_, bytes(p.out[s][:k]), 1 << s))
                    del p.out[s][:k]
                    p.credit[s] -= k
                    p.sent[s] += k
                    busy = True
            if p.out[0] or p.out[1] or p.produce is not None:
                continue
            if p.exit is not None:
                send(jframe(EXIT, id_, p.exit))
                del procs[id_]
                busy = True
        return busy


def write_session(dirpath: str, sid: str, name: str | None, sock: str, pid: int | None = None) -> None:
    """Metadata of a live session (pid plays the supervisor; default: this process)."""
    os.makedirs(dirpath, exist_ok=True)
    pid = pid or os.getpid()
    with open(f"/proc/{pid}/stat") as f:
        st = f.read()
    start = int(st[st.rfind(")") + 2 :].split()[19])
    meta = {"id": sid, "name": name, "pid": pid, "pid_start": start, "created": int(time.time()),
            "image": "/x", "build_id": "b", "policy": None, "socket": sock,
            "log": os.path.join(dirpath, sid + ".log")}
    with open(os.path.join(dirpath, sid + ".json"), "w") as f:
        json.dump(meta, f)
