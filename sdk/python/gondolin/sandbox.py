"""The synchronous client: :class:`Sandbox`.

Threading model: one unix-socket connection per Sandbox, with one reader thread that
decodes frames and files them under their request id. The reader never blocks on a
consumer: every request's output is bounded by the credit the client granted (the
window), and credit is granted back only when the caller consumes output. So a slow
iterator holds up its own exec and nothing else, and any number of threads may run
execs, transfers and requests on one Sandbox at once. Frames are written under a send
lock by the calling threads (never by the reader).
"""

from __future__ import annotations

import io
import os
import select
import signal as _signal
import socket
import subprocess
import tarfile
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import IO, Any, Literal, cast, overload

from . import _proto as P
from ._common import (
    CLIENT_NAME,
    READ_FILE_MAX,
    CappedBuffer,
    _merge,
    DEFAULT_SHELL,
    MAX_LIVE,
    Cmd,
    ExecResult,
    OutputChunk,
    chunk,
    extract_all,
    find_session,
    gondolin_bin,
    parse_start_json,
    session_socket,
    snapshot_fields,
    fork_ids,
    start_argv,
    Change,
    Mounts,
    diff_fields,
    parse_diff,
    start_failed,
    wait_gone,
)
from .errors import (
    ConnectionLost,
    ExecError,
    ExecTimeout,
    GondolinError,
    GondolinTimeout,
    PolicyError,
    ProtocolError,
    RemoteError,
    SessionNotFound,
    StartError,
    TransferError,
)

__all__ = ["Sandbox", "ExecStream", "Shell", "LogTail"]

StdinSource = bytes | bytearray | memoryview | str | IO[bytes]
_TIMEOUT = object()


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


class _Req(P.Request):
    def __init__(self, kind: P.Kind, id_: int, window: int, cond: threading.Condition) -> None:
        super().__init__(kind, id_, window)
        self.cond = cond


class _Conn:
    """One control connection: HELLO, the reader thread, request ids, sending."""

    def __init__(self, path: str, label: str, timeout: float | None = 30.0) -> None:
        self.label = label
        self.path = path
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._slots = threading.Condition(self._lock)  # a request id became free
        self._live: dict[int, _Req] = {}
        self._ids = P.IdAllocator()
        self._closed: Exception | None = None
        self._closing = False
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.settimeout(timeout)
            s.connect(path)
        except OSError as e:
            s.close()
            raise ConnectionLost(f"{label}: cannot connect to {path}: {e.strerror or e}") from None
        self._sock = s
        dec = P.FrameDecoder()
        try:
            s.sendall(P.hello(CLIENT_NAME))
            hello: dict[str, Any] | None = None
            after: list[P.Frame] = []  # came in the same read as HELLO
            while hello is None:
                data = s.recv(65536)
                if not data:
                    raise ConnectionLost(f"{label}: the session closed the connection before HELLO")
                for f in dec.feed(data):
                    if hello is not None and not (f.type == P.T.ERROR and f.id == 0):
                        after.append(f)
                    elif f.type == P.T.HELLO and f.id == 0:
                        hello = f.json()
                    elif f.type == P.T.ERROR and f.id == 0:
                        j = f.json()
                        raise RemoteError(
                            f"{label}: {j.get('message') or j.get('code')}", code=j.get("code")
                        )
                    else:
                        raise ProtocolError(f"{label}: expected HELLO, got {f!r}")
        except socket.timeout:
            s.close()
            raise GondolinTimeout(f"{label}: no HELLO from the session within {timeout} s") from None
        except OSError as e:
            s.close()
            raise ConnectionLost(f"{label}: {e.strerror or e}") from None
        except GondolinError:
            s.close()
            raise
        if hello.get("version") != P.PROTOCOL_VERSION:
            s.close()
            raise ProtocolError(f"{label}: the session speaks protocol {hello.get('version')}")
        sess = hello.get("session")
        self.session: dict[str, Any] = sess if isinstance(sess, dict) else {}
        s.settimeout(None)
        self._dec = dec
        self._after = after
        self._thread = threading.Thread(target=self._read_loop, name=f"gondolin-{label}", daemon=True)
        self._thread.start()

    # -- reader thread
    def _read_loop(self) -> None:
        exc: Exception
        try:
            with self._lock:
                for f in self._after:
                    self._dispatch(f)
            while True:
                data = self._sock.recv(262144)
                if not data:
                    raise ConnectionLost(f"{self.label}: the session closed the connection")
                frames = self._dec.feed(data)
                with self._lock:
                    for f in frames:
                        self._dispatch(f)
        except GondolinError as e:
            exc = e
        except OSError as e:
            exc = ConnectionLost(f"{self.label}: connection lost: {e.strerror or e}")
        except Exception as e:  # pragma: no cover - a bug; keep waiters from hanging
            exc = GondolinError(f"{self.label}: reader failed: {e!r}")
        with self._lock:
            if self._closing and isinstance(exc, ConnectionLost):
                exc = ConnectionLost(f"{self.label}: the connection was closed")
            self._closed = exc
            live = list(self._live.values())
            self._live.clear()
            for r in live:
                r.fail(exc)
                r.cond.notify_all()
            self._slots.notify_all()
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _dispatch(self, f: P.Frame) -> None:
        if f.id == 0:
            if f.type == P.T.ERROR:
                j = f.json()
                code = j.get("code")
                raise RemoteError(
                    f"{self.label}: the session closed the connection: {j.get('message') or code}",
                    code=code,
                )
            raise ProtocolError(f"{self.label}: unexpected {f!r} on the connection")
        r = self._live.get(f.id)
        if r is None:
            return  # a request we no longer track
        r.on_frame(f)
        if r.done:
            del self._live[f.id]
            self._slots.notify_all()
        r.cond.notify_all()

    # -- requests
    def start(
        self, kind: P.Kind, first: Callable[[int], bytes], window: int = P.DEFAULT_WINDOW
    ) -> _Req:
        with self._lock:
            while True:
                if self._closed is not None:
                    raise self._closed
                if len(self._live) < MAX_LIVE:
                    break
                self._slots.wait()
            id_ = self._ids.allocate(self._live)
            r = _Req(kind, id_, window, threading.Condition(self._lock))
            data = first(id_)
            self._live[id_] = r
        try:
            self.send(data)
        except GondolinError:
            with self._lock:
                self._live.pop(id_, None)
            raise
        return r

    def send(self, data: bytes) -> None:
        with self._send_lock:
            if self._closed is not None:
                raise self._closed
            try:
                self._sock.sendall(data)
            except OSError as e:
                raise ConnectionLost(f"{self.label}: connection lost: {e.strerror or e}") from None

    def send_quiet(self, data: bytes) -> None:
        """send(), ignoring a connection that is gone (for CANCEL, WINDOW after the end)."""
        try:
            self.send(data)
        except GondolinError:
            pass

    def wait(self, r: _Req, deadline: float | None) -> bool:
        """Waits until r is done; False on timeout."""
        with self._lock:
            while not r.done:
                rem = _remaining(deadline)
                if rem is not None and rem <= 0:
                    return False
                r.cond.wait(rem)
        return True

    @property
    def closed(self) -> bool:
        return self._closed is not None

    def wait_closed(self, timeout: float | None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def close(self) -> None:
        with self._lock:
            self._closing = True
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        if threading.current_thread() is not self._thread:
            self._thread.join(5)
        self._sock.close()


class _Feeder:
    """Sends a request's stdin under STDIN_WINDOW credit, from bytes or a binary file."""

    def __init__(self, conn: _Conn, r: _Req, src: StdinSource | None) -> None:
        self.conn = conn
        self.r = r
        self.finished = src is None
        self.data: memoryview | None = None
        self.file: IO[bytes] | None = None
        if isinstance(src, str):
            self.data = memoryview(src.encode("utf-8"))
        elif isinstance(src, (bytes, bytearray, memoryview)):
            self.data = memoryview(bytes(src))
        elif src is not None:
            if not hasattr(src, "read"):
                raise TypeError("stdin must be bytes, str or a binary file")
            self.file = src
        self.pos = 0

    def ready(self) -> bool:
        """Something can be sent now (called under the connection lock)."""
        r = self.r
        if self.finished or r.done or not r.stdin_granted:
            return False
        if self.data is not None and self.pos >= len(self.data):
            return True  # only the EOF is left
        return r.stdin_credit > 0

    def send_some(self) -> None:
        """Sends what the credit allows (called without the lock)."""
        r, conn = self.r, self.conn
        with conn._lock:
            if not self.ready():
                return
            if self.data is not None:
                n = r.stdin_take(len(self.data) - self.pos)
            else:
                n = r.stdin_take(P.STDIN_CHUNK)
        if self.data is not None:
            piece = bytes(self.data[self.pos : self.pos + n])
            self.pos += n
            eof = self.pos >= len(self.data)
        else:
            assert self.file is not None
            piece = self.file.read(n) if n else b""
            if piece is None:  # a non-blocking file with nothing to read
                piece = b""
            eof = not piece and n > 0
            if len(piece) < n:
                with conn._lock:
                    r.stdin_credit += n - len(piece)
            if not piece and not eof:
                return
        if eof:
            self.finished = True
        conn.send(P.encode_stdin(r.id, piece, eof))


def _step(
    conn: _Conn, r: _Req, feeder: _Feeder | None, deadline: float | None
) -> tuple[int, bytes] | None | object:
    """The next output chunk of r, feeding its stdin meanwhile. None when r is done and
    its output consumed; _TIMEOUT when the deadline passed first."""
    while True:
        with conn._lock:
            got, win = r.take_chunk()
            feed = False
            if got is None and not r.done:
                feed = feeder is not None and feeder.ready()
                if not feed:
                    rem = _remaining(deadline)
                    if rem is not None and rem <= 0:
                        return _TIMEOUT
                    r.cond.wait(rem)
                    continue
            done = r.done
        if win is not None:
            conn.send_quiet(win)
        if got is not None:
            return got
        if feed:
            assert feeder is not None
            feeder.send_some()
            continue
        if done:
            return None


def _result(r: P.Request, cmd: Cmd, out: bytes = b"", err: bytes = b"") -> ExecResult:
    if r.error is not None:
        raise r.error
    e = r.exit
    assert e is not None
    return ExecResult(e.exit_code, out, err, e.signal, e.error, cmd)


class ExecStream(Iterator[OutputChunk]):
    """A running exec: iterate for its output (:class:`OutputChunk`), then ``result``.

    Output credit is granted as chunks are taken, so an iterator that is not advanced
    pauses the process (once the window is full) and nothing else. ``write``/``close_stdin``
    when started with ``stdin=True``; ``signal``, ``cancel``, ``resize`` (PTY); ``wait``
    drains the rest. Leaving a ``with`` block (or ``close``) hangs up an unfinished exec.
    """

    def __init__(
        self,
        sb: Sandbox,
        r: _Req,
        cmd: Cmd,
        stdin: StdinSource | None,
        interactive: bool,
        check: bool,
        timeout: float | None,
    ) -> None:
        self._sb = sb
        self._conn = sb._conn
        self._r = r
        self.cmd = cmd
        self._feeder = _Feeder(self._conn, r, stdin) if stdin is not None else None
        self._interactive = interactive
        self._check = check
        self._timeout = timeout
        self._deadline = _deadline(timeout)
        self._wlock = threading.Lock()
        self._result: ExecResult | None = None

    @property
    def id(self) -> int:
        return self._r.id

    @property
    def pid(self) -> int | None:
        """The guest pid once STARTED has arrived."""
        return self._r.pid

    @property
    def done(self) -> bool:
        return self._result is not None

    @property
    def result(self) -> ExecResult:
        """How the exec ended (after the iterator is exhausted, or after ``wait``)."""
        if self._result is None:
            raise GondolinError("exec: still running (exhaust the iterator or call wait() first)")
        return self._result

    def __iter__(self) -> ExecStream:
        return self

    def __next__(self) -> OutputChunk:
        got = self._pull(self._deadline)
        if got is _TIMEOUT:
            self._on_timeout(b"", b"")
        if got is None:
            raise StopIteration
        s, data = cast(tuple[int, bytes], got)
        return chunk(s, data)

    def _pull(self, deadline: float | None) -> tuple[int, bytes] | None | object:
        """The next chunk, None at the end (the result is set then), or _TIMEOUT."""
        if self._result is not None:
            return None
        try:
            got = _step(self._conn, self._r, self._feeder, deadline)
        except BaseException:
            self._abort()
            raise
        if got is None:
            self._finish(b"", b"")
        return got

    def _read_raw(self, deadline: float | None) -> tuple[int, bytes] | None:
        """_pull, with GondolinTimeout for the deadline."""
        got = self._pull(deadline)
        if got is _TIMEOUT:
            raise GondolinTimeout("exec: no output within the timeout")
        return got  # type: ignore[return-value]

    def _finish(self, out: bytes, err: bytes) -> ExecResult:
        res = _result(self._r, self.cmd, out, err)
        self._result = res
        if self._check and not res.ok:
            res.check()
        return res

    def _on_timeout(self, out: bytes, err: bytes) -> None:
        """Hangs the exec up and raises ExecTimeout (with the exit, if it came in 5 s)."""
        assert self._timeout is not None
        self._conn.send_quiet(P.encode(P.T.CANCEL, self._r.id))
        code, sig = -1, None
        grace = _deadline(5.0)
        while True:
            got = _step(self._conn, self._r, None, grace)
            if got is None or got is _TIMEOUT:
                break
        if self._r.exit is not None:
            code, sig = self._r.exit.exit_code, self._r.exit.signal
            self._result = ExecResult(code, out, err, sig, self._r.exit.error, self.cmd)
        raise ExecTimeout(self.cmd, self._timeout, code, out, err, sig)

    def _collect(self) -> ExecResult:
        out, err = bytearray(), bytearray()
        try:
            while True:
                got = _step(self._conn, self._r, self._feeder, self._deadline)
                if got is _TIMEOUT:
                    self._on_timeout(bytes(out), bytes(err))
                if got is None:
                    break
                s, data = cast(tuple[int, bytes], got)
                (out if s == P.STDOUT else err).extend(data)
        except BaseException as e:
            if not isinstance(e, ExecTimeout):
                self._abort()
            raise
        return self._finish(bytes(out), bytes(err))

    def _abort(self) -> None:
        if not self._r.done:
            self._r.cancelled = True
            self._conn.send_quiet(P.encode(P.T.CANCEL, self._r.id))

    def wait(self, timeout: float | None = None) -> ExecResult:
        """Discards the remaining output and returns the result."""
        d = _deadline(timeout)
        while self._result is None:
            if d is not None and time.monotonic() >= d:
                raise GondolinTimeout(f"exec: still running after {timeout} s")
            self._read_raw(d)
        return self._result

    # -- input and control
    def write(self, data: bytes | str) -> None:
        """Sends stdin (``stdin=True`` execs); blocks while the process has not granted credit."""
        if not self._interactive:
            raise GondolinError("exec: started without stdin=True")
        buf = memoryview(data.encode("utf-8") if isinstance(data, str) else bytes(data))
        r, conn = self._r, self._conn
        with self._wlock:
            pos = 0
            while pos < len(buf):
                with conn._lock:
                    while not r.done and (r.stdin_credit == 0 or r.stdin_eof_sent):
                        if r.stdin_eof_sent:
                            raise GondolinError("exec: stdin is closed")
                        r.cond.wait()
                    if r.done:
                        raise GondolinError("exec: the process has exited")
                    n = r.stdin_take(len(buf) - pos)
                conn.send(P.encode_stdin(r.id, bytes(buf[pos : pos + n])))
                pos += n

    def close_stdin(self) -> None:
        """Sends EOF on stdin."""
        r, conn = self._r, self._conn
        with self._wlock:
            with conn._lock:
                while not r.done and not r.stdin_granted:
                    r.cond.wait()
                if r.done or r.stdin_eof_sent:
                    return
                r.stdin_eof_sent = True
            conn.send(P.encode_stdin(r.id, b"", True))

    def signal(self, sig: int) -> None:
        """Sends a signal (1..64) to the process group."""
        if not 1 <= int(sig) <= 64:
            raise ValueError(f"signal {sig} not in 1..64")
        if not self._r.done:
            self._conn.send(P.encode_json(P.T.SIGNAL, self._r.id, {"signal": int(sig)}))

    def kill(self) -> None:
        self.signal(_signal.SIGKILL)

    def cancel(self) -> None:
        """Hangs the process up (SIGHUP, SIGKILL after 2 s); the exec still ends with a result."""
        self._abort()

    def resize(self, rows: int, cols: int) -> None:
        """A PTY exec's window size."""
        if not self._r.done:
            self._conn.send(P.encode_json(P.T.RESIZE, self._r.id, {"rows": rows, "cols": cols}))

    def close(self) -> None:
        """Hangs up an unfinished exec and waits (5 s at most) for its end."""
        if self._result is not None:
            return
        self._abort()
        try:
            self.wait(5.0)
        except GondolinError:
            pass

    def __enter__(self) -> ExecStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Shell:
    """An interactive process on a PTY (``bash -l`` by default).

    ``write`` input, ``read`` what is there (waiting up to ``timeout``), ``read_until``
    a marker, iterate for everything until it exits, ``resize``, ``close`` (hangs up).
    stdout carries both streams, as on any terminal.
    """

    def __init__(self, stream: ExecStream) -> None:
        self._s = stream
        self._buf = bytearray()

    @property
    def exit_code(self) -> int | None:
        """None while the shell runs."""
        return self._s._result.exit_code if self._s._result is not None else None

    @property
    def alive(self) -> bool:
        return self._s._result is None

    @property
    def pid(self) -> int | None:
        return self._s.pid

    def write(self, data: bytes | str) -> None:
        self._s.write(data)

    def read(self, timeout: float | None = None, size: int = 65536) -> bytes:
        """Up to ``size`` bytes of output: waits for some, at most ``timeout`` seconds.
        Returns b"" on timeout and at the end (then ``alive`` is False)."""
        if not self._buf:
            try:
                got = self._s._read_raw(_deadline(timeout))
            except GondolinTimeout:
                return b""
            if got is None:
                return b""
            self._buf += got[1]
        out = bytes(self._buf[:size])
        del self._buf[:size]
        return out

    def read_until(self, marker: bytes | str, timeout: float | None = None) -> bytes:
        """Output up to and including ``marker``; GondolinTimeout (or GondolinError at the
        shell's end) when it does not come."""
        m = marker.encode("utf-8") if isinstance(marker, str) else marker
        d = _deadline(timeout)
        scanned = 0
        while True:
            i = self._buf.find(m, max(0, scanned - len(m) + 1))
            if i >= 0:
                out = bytes(self._buf[: i + len(m)])
                del self._buf[: i + len(m)]
                return out
            scanned = len(self._buf)
            got = self._s._read_raw(d)
            if got is None:
                raise GondolinError(f"shell: ended before {marker!r} appeared")
            self._buf += got[1]

    def __iter__(self) -> Iterator[bytes]:
        if self._buf:
            b = bytes(self._buf)
            self._buf.clear()
            yield b
        for c in self._s:
            yield c.data

    def resize(self, rows: int, cols: int) -> None:
        self._s.resize(rows, cols)

    def signal(self, sig: int) -> None:
        self._s.signal(sig)

    def wait(self, timeout: float | None = None) -> int:
        """Waits for the end (discarding unread output); the exit code."""
        return self._s.wait(timeout).exit_code

    def close(self) -> None:
        """Hangs the shell up if it still runs, and waits for its end."""
        self._s.close()

    def __enter__(self) -> Shell:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LogTail(Iterator[str]):
    """Lines of a session's log as they are written (``Sandbox.follow_logs``); ``close``
    ends the tail (CANCEL)."""

    def __init__(self, conn: _Conn, r: _Req) -> None:
        self._conn = conn
        self._r = r
        self._pending: list[str] = []
        self._partial = b""

    def __iter__(self) -> LogTail:
        return self

    def __next__(self) -> str:
        line = self.next(None)
        if line is None:
            raise StopIteration
        return line

    def next(self, timeout: float | None) -> str | None:
        """The next line, waiting at most ``timeout``; None at the end or on timeout."""
        d = _deadline(timeout)
        while not self._pending:
            with self._conn._lock:
                while not self._r.logs and not self._r.done:
                    rem = _remaining(d)
                    if rem is not None and rem <= 0:
                        return None
                    self._r.cond.wait(rem)
                data = b"".join(self._r.logs)
                self._r.logs.clear()
                done = self._r.done
            if data:
                text = self._partial + data
                *lines, self._partial = text.split(b"\n")
                self._pending += [ln.decode("utf-8", "replace") for ln in lines]
            elif done:
                if self._r.error is not None and not self._r.cancelled:
                    raise self._r.error
                return None
        return self._pending.pop(0)

    def close(self) -> None:
        if not self._r.done:
            self._r.cancelled = True
            self._conn.send_quiet(P.encode(P.T.CANCEL, self._r.id))
            self._conn.wait(self._r, _deadline(5.0))

    def __enter__(self) -> LogTail:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _PutWriter(io.RawIOBase):
    """A writable file whose bytes go out as STDIN frames of a PUT (for tarfile)."""

    def __init__(self, conn: _Conn, r: _Req) -> None:
        super().__init__()
        self._conn = conn
        self._r = r

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        buf = memoryview(b).cast("B")
        r, conn = self._r, self._conn
        pos = 0
        while pos < len(buf):
            with conn._lock:
                while not r.done and r.stdin_credit == 0:
                    r.cond.wait()
                if r.done:
                    break
                n = r.stdin_take(len(buf) - pos)
            conn.send(P.encode_stdin(r.id, bytes(buf[pos : pos + n])))
            pos += n
        return len(buf)


class _GetReader(io.RawIOBase):
    """A readable file over a GET's OUTPUT (for tarfile and read_file(into=))."""

    def __init__(self, conn: _Conn, r: _Req, deadline: float | None) -> None:
        super().__init__()
        self._conn = conn
        self._r = r
        self._deadline = deadline
        self._buf = b""

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        if not self._buf:
            got = _step(self._conn, self._r, None, self._deadline)
            if got is _TIMEOUT:
                raise GondolinTimeout("download: timed out")
            if got is None:
                return 0
            self._buf = got[1]  # type: ignore[index]
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


class Sandbox:
    """A session: a long-lived VM owned by its supervisor (``gondolin start``).

    ``Sandbox.create(...)`` starts one and stops it on ``close``; ``Sandbox.attach(ref)``
    connects to a running one and leaves it running. Use as a context manager.
    """

    def __init__(
        self,
        conn: _Conn,
        meta: Mapping[str, Any],
        *,
        owned: bool,
        proc: subprocess.Popen[bytes] | None = None,
    ) -> None:
        self._conn = conn
        self._meta = dict(meta)
        self._owned = owned
        self._proc = proc
        self._closed = False
        self._stopped = False
        # a created session is not leaked by a script that forgets close(): stopped at
        # exit (or when this object is collected) unless detach() was called
        self._finalizer = weakref.finalize(self, _abandon, conn, owned)

    # -- construction
    @classmethod
    def create(
        cls,
        policy: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        name: str | None = None,
        image: str | None = None,
        allow_hosts: Sequence[str] | None = None,
        memory: int | str | None = None,
        cpus: int | None = None,
        *,
        host_secrets: Sequence[str] | None = None,
        accel: str | None = None,
        no_network: bool = False,
        plugins: Sequence[str] | None = None,
        args: Sequence[str] | None = None,
        binary: str | None = None,
        timeout: float | None = 600.0,
        mounts: Mounts | None = None,
        resume: str | os.PathLike[str] | None = None,
        rootfs_mode: str | None = None,
    ) -> Sandbox:
        """Starts a session with ``gondolin start --json`` and connects to it.

        ``memory`` is MiB (int) or a size string ("2G"); ``allow_hosts`` are
        ``--allow-host`` rules; ``host_secrets`` ``NAME@HOST[,HOST][=VALUE]``; ``args``
        extra command-line flags. ``rootfs_mode="cow"`` puts the root on a disk overlay
        that ``snapshot`` can keep; ``resume`` (a checkpoint's name in the image store or
        its path) starts from one (docs/snapshots.md). StartError (its stderr) when it
        fails.
        """
        argv = start_argv(
            gondolin_bin(binary),
            policy=policy,
            env=env,
            name=name,
            image=image,
            allow_hosts=allow_hosts,
            host_secrets=host_secrets,
            memory=memory,
            cpus=cpus,
            accel=accel,
            no_network=no_network,
            plugins=plugins,
            args=args,
            mounts=mounts,
            resume=resume,
            rootfs_mode=rootfs_mode,
        )
        info, proc = _run_start(argv, timeout)
        try:
            conn = _Conn(session_socket(info), f"session {info.get('name') or info['id']}")
        except BaseException:
            _stop_by_socket(info)
            _reap(proc, 10)
            raise
        return cls(conn, _merge(info, conn.session), owned=True, proc=proc)

    @classmethod
    def attach(cls, ref: str, *, stop_on_close: bool = False, timeout: float | None = 30.0) -> Sandbox:
        """Connects to a running session by id (or unique prefix), name or socket path.
        ``close`` leaves it running unless ``stop_on_close``."""
        meta = find_session(ref)
        try:
            conn = _Conn(session_socket(meta), f"session {meta.get('name') or meta['id']}", timeout)
        except ConnectionLost as e:
            raise SessionNotFound(f"session '{ref}' is not reachable: {e}") from None
        return cls(conn, _merge(meta, conn.session), owned=stop_on_close)

    # -- identity
    @property
    def id(self) -> str:
        return str(self._meta.get("id", ""))

    @property
    def name(self) -> str | None:
        n = self._meta.get("name")
        return n if isinstance(n, str) else None

    @property
    def socket_path(self) -> str:
        return self._conn.path

    @property
    def session(self) -> dict[str, Any]:
        """The session info from HELLO (merged with `gondolin start`'s)."""
        return dict(self._meta)

    def __repr__(self) -> str:
        return f"<Sandbox {self.id}{' ' + repr(self.name) if self.name else ''}>"

    # -- exec
    @overload
    def exec(
        self,
        cmd: Cmd,
        *,
        cwd: str | None = ...,
        env: Mapping[str, str] | None = ...,
        stdin: StdinSource | None = ...,
        stream: Literal[False] = ...,
        check: bool = ...,
        timeout: float | None = ...,
        pty: bool = ...,
        window: int = ...,
    ) -> ExecResult: ...

    @overload
    def exec(
        self,
        cmd: Cmd,
        *,
        cwd: str | None = ...,
        env: Mapping[str, str] | None = ...,
        stdin: StdinSource | bool | None = ...,
        stream: Literal[True],
        check: bool = ...,
        timeout: float | None = ...,
        pty: bool = ...,
        window: int = ...,
    ) -> ExecStream: ...

    def exec(
        self,
        cmd: Cmd,
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        stdin: StdinSource | bool | None = None,
        stream: bool = False,
        check: bool = False,
        timeout: float | None = None,
        pty: bool = False,
        window: int = P.DEFAULT_WINDOW,
    ) -> ExecResult | ExecStream:
        """Runs a command: a string through ``/bin/sh -lc``, a list as argv.

        Returns an :class:`ExecResult`, or with ``stream=True`` an :class:`ExecStream`
        to iterate. ``stdin``: bytes/str/binary file (sent, then EOF) or, with
        ``stream=True``, ``True`` to write it through the stream. ``check``: raise
        ExecError on a nonzero exit. ``timeout``: hang up and raise ExecTimeout.
        """
        s = self._start_exec(cmd, cwd, env, stdin, stream, check, timeout, pty, window)
        if stream:
            return s
        return s._collect()

    def _start_exec(
        self,
        cmd: Cmd,
        cwd: str | None,
        env: Mapping[str, str] | None,
        stdin: StdinSource | bool | None,
        stream: bool,
        check: bool,
        timeout: float | None,
        pty: bool,
        window: int,
        rows: int = 24,
        cols: int = 80,
    ) -> ExecStream:
        interactive = stdin is True
        if interactive and not stream:
            raise ValueError("exec: stdin=True needs stream=True (write through the stream)")
        if stdin is False:
            stdin = None
        if pty:
            env = {"TERM": "xterm-256color", **(env or {})}
        body = P.exec_body(
            cmd if isinstance(cmd, str) else list(cmd),
            env=dict(env) if env else None,
            cwd=cwd,
            stdin=stdin is not None,
            window=window,
            pty=pty,
            rows=rows,
            cols=cols,
        )
        r = self._conn.start(P.Kind.EXEC, lambda i: P.encode_json(P.T.EXEC, i, body), window)
        src = None if interactive else stdin
        return ExecStream(self, r, cmd, src, interactive, check, timeout)  # type: ignore[arg-type]

    def shell(
        self,
        command: Sequence[str] | str | None = None,
        *,
        rows: int = 24,
        cols: int = 80,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
    ) -> Shell:
        """An interactive process on a PTY (default ``/bin/bash -l``)."""
        cmd: Cmd = list(DEFAULT_SHELL) if command is None else command
        s = self._start_exec(cmd, cwd, env, True, True, False, None, True, P.DEFAULT_WINDOW, rows, cols)
        return Shell(s)

    # -- files
    def write_file(
        self,
        path: str,
        data: bytes | str | IO[bytes],
        *,
        mode: int | None = None,
        mtime: int | None = None,
        timeout: float | None = None,
    ) -> None:
        """Writes a guest file from bytes, str (UTF-8) or a binary file, streamed in chunks."""
        body: dict[str, Any] = {"path": path, "tar": False}
        if mode is not None:
            body["mode"] = mode
        if mtime is not None:
            body["mtime"] = int(mtime)
        r = self._conn.start(P.Kind.PUT, lambda i: P.encode_json(P.T.PUT, i, body))
        self._finish_put(r, _Feeder(self._conn, r, data), path, "write_file", timeout)

    def _finish_put(
        self, r: _Req, feeder: _Feeder | None, path: str, what: str, timeout: float | None
    ) -> None:
        d = _deadline(timeout)
        try:
            while True:
                got = _step(self._conn, r, feeder, d)
                if got is _TIMEOUT:
                    raise GondolinTimeout(f"{what} {path}: timed out")
                if got is None:
                    break
        except BaseException:
            if not r.done:
                self._conn.send_quiet(P.encode(P.T.CANCEL, r.id))
            raise
        _transfer_result(r, what, path)

    def read_file(
        self,
        path: str,
        *,
        timeout: float | None = None,
        max_bytes: int | None = READ_FILE_MAX,
    ) -> bytes:
        """A guest file's bytes; GondolinError (the transfer cancelled) past ``max_bytes``
        (default 256 MiB; None: no cap): the guest decides how much it sends, and it is
        all held in memory. read_file_to streams instead."""
        buf = CappedBuffer(max_bytes, path)
        self.read_file_to(path, buf, timeout=timeout)
        return buf.getvalue()

    def read_file_to(
        self, path: str, dest: IO[bytes] | str | os.PathLike[str], *, timeout: float | None = None
    ) -> int:
        """Streams a guest file into a binary file or a local path; the byte count."""
        if isinstance(dest, (str, os.PathLike)):
            with open(dest, "wb") as f:
                return self.read_file_to(path, f, timeout=timeout)
        r = self._get(path, tar=False)
        d = _deadline(timeout)
        n = 0
        try:
            while True:
                got = _step(self._conn, r, None, d)
                if got is _TIMEOUT:
                    raise GondolinTimeout(f"read_file {path}: timed out")
                if got is None:
                    break
                data = got[1]  # type: ignore[index]
                dest.write(data)
                n += len(data)
        except BaseException:
            if not r.done:
                self._conn.send_quiet(P.encode(P.T.CANCEL, r.id))
            raise
        _transfer_result(r, "read_file", path)
        return n

    def _get(self, path: str, tar: bool) -> _Req:
        body = {"path": path, "tar": tar, "window": P.DEFAULT_WINDOW}
        return self._conn.start(P.Kind.GET, lambda i: P.encode_json(P.T.GET, i, body))

    def upload(
        self, local: str | os.PathLike[str], guest_dir: str, *, timeout: float | None = None
    ) -> None:
        """Copies a local file or directory tree into the guest directory ``guest_dir``
        (created if missing) as ``guest_dir/<basename>``, keeping modes, mtimes, symlinks."""
        local = os.fspath(local)
        if not os.path.lexists(local):
            raise FileNotFoundError(local)
        body = {"path": guest_dir, "tar": True}
        r = self._conn.start(P.Kind.PUT, lambda i: P.encode_json(P.T.PUT, i, body))
        w = _PutWriter(self._conn, r)
        try:
            bw = io.BufferedWriter(w, P.STDIN_CHUNK)
            with tarfile.open(fileobj=bw, mode="w|", format=tarfile.PAX_FORMAT) as tf:
                tf.add(local, arcname=os.path.basename(os.path.normpath(local)))
            bw.flush()
            with self._conn._lock:
                while not r.done and not r.stdin_granted:
                    r.cond.wait()
            if not r.done:
                self._conn.send(P.encode_stdin(r.id, b"", True))
        except BaseException:
            if not r.done:
                self._conn.send_quiet(P.encode(P.T.CANCEL, r.id))
            raise
        self._finish_put(r, None, guest_dir, "upload", timeout)

    def download(
        self, guest_path: str, local_dir: str | os.PathLike[str], *, timeout: float | None = None
    ) -> str:
        """Copies a guest file or tree into ``local_dir`` (created if missing) as
        ``local_dir/<basename>``; returns that path. Unsafe archive members are refused."""
        local_dir = os.fspath(local_dir)
        r = self._get(guest_path, tar=True)
        rd = _GetReader(self._conn, r, _deadline(timeout))
        try:
            with tarfile.open(fileobj=io.BufferedReader(rd, 65536), mode="r|") as tf:
                extract_all(tf, local_dir)
            while _step(self._conn, r, None, rd._deadline) not in (None, _TIMEOUT):
                pass  # tar's trailing padding
        except tarfile.ReadError as e:
            if not r.done:
                self._conn.send_quiet(P.encode(P.T.CANCEL, r.id))
            self._conn.wait(r, _deadline(5.0))
            if r.exit is not None and r.exit.exit_code != 0:
                _transfer_result(r, "download", guest_path)
            raise GondolinError(f"download {guest_path}: bad archive: {e}") from None
        except BaseException:
            if not r.done:
                self._conn.send_quiet(P.encode(P.T.CANCEL, r.id))
            raise
        _transfer_result(r, "download", guest_path)
        return os.path.join(local_dir, os.path.basename(os.path.normpath(guest_path)))

    # -- one-shot requests
    def request(self, op: str, timeout: float | None = 60.0, **fields: Any) -> dict[str, Any]:
        """Any REQUEST op; the REPLY (RemoteError when ``ok`` is false)."""
        body = {"op": op, **fields}
        r = self._conn.start(P.Kind.REQUEST, lambda i: P.encode_json(P.T.REQUEST, i, body))
        if not self._conn.wait(r, _deadline(timeout)):
            self._conn.send_quiet(P.encode(P.T.CANCEL, r.id))
            raise GondolinTimeout(f"{op}: no reply within {timeout} s")
        return P.reply_ok(r, op)

    def info(self) -> dict[str, Any]:
        """``{"id", "name", "pid", "image", "policy", "revision", "execs", ...}``"""
        return self.request("info")

    def policy_reload(self) -> dict[str, Any]:
        """Reloads the policy: ``{"revision", "generation"}``; PolicyError (file:line)
        when the new one is refused (the old revision stays)."""
        try:
            return self.request("policy.reload")
        except RemoteError as e:
            if isinstance(e, PolicyError) or e.code not in (None, "policy"):
                raise
            raise PolicyError(str(e), code=e.code) from None

    def policy_status(self) -> dict[str, Any]:
        return self.request("policy.status")

    def logs(self, lines: int = 100, *, timeout: float | None = 60.0) -> str:
        """The last ``lines`` lines of the session's log."""
        body = {"op": "logs", "follow": False, "lines": lines}
        r = self._conn.start(P.Kind.REQUEST, lambda i: P.encode_json(P.T.REQUEST, i, body))
        if not self._conn.wait(r, _deadline(timeout)):
            self._conn.send_quiet(P.encode(P.T.CANCEL, r.id))
            raise GondolinTimeout(f"logs: no reply within {timeout} s")
        P.reply_ok(r, "logs")
        return b"".join(r.logs).decode("utf-8", "replace")

    def follow_logs(self, lines: int = 0) -> LogTail:
        """The last ``lines`` lines, then new ones as they are written, until ``close``."""
        body = {"op": "logs", "follow": True, "lines": lines}
        r = self._conn.start(P.Kind.REQUEST, lambda i: P.encode_json(P.T.REQUEST, i, body))
        return LogTail(self._conn, r)

    def diff(
        self,
        path: str = "/workspace",
        *,
        export: str | os.PathLike[str] | None = None,
        whiteouts: bool = False,
    ) -> list[Change]:
        """What the guest changed in the overlay mount holding ``path`` (at or below it),
        sorted by path: ``Change(kind, path)`` with kind "A" added, "M" modified, "D"
        deleted. ``export``: also write a tar of the added and modified files there (a
        host path; ``whiteouts`` adds deleted ones as OCI ``.wh.`` entries)."""
        return parse_diff(self.request("fs.diff", **diff_fields(path, export, whiteouts)))

    def expose(self, listen: str, guest_port: int, *, raw: bool = False) -> str:
        """Forwards ``listen`` (host "ADDR:PORT") to the guest's port; the address bound."""
        rep = self.request("expose", listen=listen, guest_port=guest_port, raw=raw)
        return str(rep.get("listen", listen))

    # -- lifecycle
    def snapshot(
        self,
        name: str | None = None,
        *,
        output: str | os.PathLike[str] | None = None,
        memory: bool = False,
        stop: bool = False,
        timeout: float | None = 300.0,
    ) -> str:
        """A disk checkpoint (``gondolin snapshot``): syncs the guest, stops the session
        and keeps its disk in the image store as ``name`` (or at ``output``); returns the
        checkpoint's path. The session must have been created with ``rootfs_mode="cow"``
        or ``resume``; RemoteError otherwise (and the session keeps running).

        ``memory=True`` takes a memory snapshot instead (``snapshot --memory``): RAM and
        device state, saved while the guest is paused; the session runs on unless
        ``stop=True``. ``Sandbox.create(resume=path)`` brings back its processes."""
        rep = self.request("snapshot", timeout=timeout, **snapshot_fields(name, output, memory, stop))
        if rep.get("stopped", True):
            self._finish_stop(timeout)
        return str(rep["path"])

    def fork(self, n: int = 1, *, name: str | None = None, timeout: float | None = 600.0) -> list[Sandbox]:
        """``gondolin fork``: n new sessions from a memory snapshot of this one (which
        runs on), each with its own entropy, clock and future. They are stopped when
        closed. ``name`` makes them NAME-1 .. NAME-n."""
        ids = fork_ids(gondolin_bin(None), self.id, n, name, timeout)
        return [Sandbox.attach(i, stop_on_close=True) for i in ids]

    def stop(self, force: bool = False, timeout: float | None = 30.0) -> None:
        """Stops the session (the VM and its supervisor) and waits for it to go."""
        if self._stopped:
            return
        try:
            self.request("stop", timeout=timeout, force=force)
        except ConnectionLost:
            pass  # already gone
        self._finish_stop(timeout)

    def _finish_stop(self, timeout: float | None) -> None:
        self._stopped = True
        d = _deadline(timeout)
        self._conn.wait_closed(timeout)
        self._conn.close()
        self._closed = True
        if self._proc is not None:
            _reap(self._proc, _remaining(d))
        # the supervisor closes connections before it is gone: return once it is
        if not wait_gone(self._meta, _remaining(d)):
            raise GondolinTimeout(f"stop: session {self.id} still runs after {timeout} s")

    def detach(self) -> None:
        """Disconnects and leaves the session running, even one this object started
        (``Sandbox.attach(id)`` reaches it later; ``gondolin stop`` ends it)."""
        self._owned = False
        self._finalizer.detach()
        self.close()

    def close(self) -> None:
        """Stops a session this object started (or attached with stop_on_close), else
        just disconnects."""
        self._finalizer.detach()
        if self._closed:
            return
        try:
            if self._owned and not self._stopped and not self._conn.closed:
                self.stop()
        finally:
            self._closed = True
            self._conn.close()
            if self._proc is not None:
                _reap(self._proc, 10)

    @property
    def closed(self) -> bool:
        return self._closed or self._conn.closed

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _transfer_result(r: P.Request, what: str, path: str) -> None:
    if r.error is not None:
        raise r.error
    e = r.exit
    assert e is not None
    if e.exit_code != 0:
        raise TransferError(
            f"{what} {path}: {e.error or f'exit code {e.exit_code}'}", exit_code=e.exit_code, path=path
        )


def _run_start(argv: list[str], timeout: float | None) -> tuple[dict[str, Any], subprocess.Popen[bytes]]:
    """Runs `gondolin start --json`: the session info it prints (its stdout), or
    StartError with its stderr. The supervisor may keep the process (or a child holding
    the pipe) alive: we stop at the first complete JSON object, never at EOF only."""
    err = tempfile.TemporaryFile()
    try:
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err)
        except OSError as e:
            raise StartError(f"gondolin start: cannot run {argv[0]}: {e.strerror or e}") from None
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        d = _deadline(timeout)
        text = b""
        info: dict[str, Any] | None = None
        try:
            while info is None:
                rem = _remaining(d)
                if rem is not None and rem <= 0:
                    proc.kill()
                    _reap(proc, 5)
                    raise start_failed(argv, None, _read_all(err), f"no session info within {timeout} s")
                rl, _, _ = select.select([fd], [], [], rem)
                if not rl:
                    continue
                data = os.read(fd, 65536)
                if not data:
                    rc = _reap(proc, 30)
                    raise start_failed(argv, rc, _read_all(err))
                text += data
                if b"\n" in data:
                    info = parse_start_json(text.decode("utf-8", "replace"))
        except BaseException:
            if proc.poll() is None:
                proc.kill()
                _reap(proc, 5)
            raise
        finally:
            proc.stdout.close()
        rc = proc.poll()
        if rc not in (None, 0):
            raise start_failed(argv, rc, _read_all(err))
        return info, proc
    finally:
        err.close()


def _read_all(f: IO[bytes]) -> str:
    try:
        f.seek(0)
        return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _reap(proc: subprocess.Popen[bytes], timeout: float | None) -> int | None:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        return None


def _abandon(conn: _Conn, stop: bool) -> None:
    """The finalizer of a Sandbox that was not closed: asks for a stop without waiting."""
    if stop and not conn.closed:
        body = {"op": "stop", "force": False}
        try:
            conn.start(P.Kind.REQUEST, lambda i: P.encode_json(P.T.REQUEST, i, body))
            conn.wait_closed(2.0)  # the supervisor answers, then closes the socket
        except GondolinError:
            pass
    try:
        conn.close()
    except OSError:
        pass


def _stop_by_socket(info: Mapping[str, Any]) -> None:
    """Best effort: stop a session we started but could not talk to (pid from its info)."""
    pid = info.get("pid")
    if isinstance(pid, int) and pid > 0:
        try:
            os.kill(pid, _signal.SIGTERM)
        except OSError:
            pass


__all__ += ["ExecResult", "OutputChunk", "ExecError"]
