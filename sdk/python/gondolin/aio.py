"""The asyncio client: :class:`AsyncSandbox`.

One asyncio unix-stream connection per AsyncSandbox; a reader task decodes frames and
files them under their request id (it never waits for a consumer: a request's queued
output is bounded by the credit granted, and credit is granted back as the caller
consumes). Any number of tasks may run execs, transfers and requests at once.
"""

from __future__ import annotations

import asyncio
import io
import os
import signal as _signal
import tarfile
import tempfile
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping, Sequence
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
    session_socket,
    snapshot_fields,
    fork_ids,
    start_argv,
    Change,
    Mounts,
    diff_fields,
    parse_diff,
    wait_gone,
)
from .errors import (
    ConnectionLost,
    ExecTimeout,
    GondolinError,
    GondolinTimeout,
    PolicyError,
    ProtocolError,
    RemoteError,
    SessionNotFound,
    TransferError,
)
from .sandbox import _reap, _result, _run_start, _stop_by_socket, _transfer_result

__all__ = ["AsyncSandbox", "AsyncExecStream", "AsyncShell", "AsyncLogTail"]

AsyncStdinSource = bytes | bytearray | memoryview | str | IO[bytes] | AsyncIterable[bytes]
_TIMEOUT = object()


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


class _AReq(P.Request):
    def __init__(self, kind: P.Kind, id_: int, window: int) -> None:
        super().__init__(kind, id_, window)
        self.event = asyncio.Event()

    async def changed(self, deadline: float | None) -> bool:
        """Waits for the next frame of this request (or its end); False on timeout.
        Callers check their condition first: nothing runs between that check and here."""
        self.event.clear()
        rem = _remaining(deadline)
        if rem is not None and rem <= 0:
            return False
        try:
            await asyncio.wait_for(self.event.wait(), rem)
        except asyncio.TimeoutError:
            return False
        return True


class _AConn:
    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str, label: str
    ) -> None:
        self._reader = reader
        self._writer = writer
        self.path = path
        self.label = label
        self._live: dict[int, _AReq] = {}
        self._ids = P.IdAllocator()
        self._closed: Exception | None = None
        self._closing = False
        self._slots = asyncio.Event()
        self.session: dict[str, Any] = {}
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, path: str, label: str, timeout: float | None = 30.0) -> _AConn:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(path), timeout)
        except asyncio.TimeoutError:
            raise GondolinTimeout(f"{label}: cannot connect to {path} within {timeout} s") from None
        except OSError as e:
            raise ConnectionLost(f"{label}: cannot connect to {path}: {e.strerror or e}") from None
        c = cls(reader, writer, path, label)
        try:
            writer.write(P.hello(CLIENT_NAME))
            await writer.drain()
            f = await asyncio.wait_for(c._read_frame(), timeout)
            if f.type == P.T.ERROR and f.id == 0:
                j = f.json()
                raise RemoteError(f"{label}: {j.get('message') or j.get('code')}", code=j.get("code"))
            if f.type != P.T.HELLO or f.id != 0:
                raise ProtocolError(f"{label}: expected HELLO, got {f!r}")
            hello = f.json()
            if hello.get("version") != P.PROTOCOL_VERSION:
                raise ProtocolError(f"{label}: the session speaks protocol {hello.get('version')}")
            sess = hello.get("session")
            c.session = sess if isinstance(sess, dict) else {}
        except asyncio.TimeoutError:
            writer.close()
            raise GondolinTimeout(f"{label}: no HELLO from the session within {timeout} s") from None
        except asyncio.IncompleteReadError:
            writer.close()
            raise ConnectionLost(f"{label}: the session closed the connection before HELLO") from None
        except OSError as e:
            writer.close()
            raise ConnectionLost(f"{label}: {e.strerror or e}") from None
        except BaseException:
            writer.close()
            raise
        c._task = asyncio.get_running_loop().create_task(c._read_loop(), name=f"gondolin-{label}")
        return c

    async def _read_frame(self) -> P.Frame:
        hdr = await self._reader.readexactly(P.HEADER_SIZE)
        length, type_, flags, reserved, id_ = P.HEADER.unpack(hdr)
        P.check_header(length, type_, flags, reserved)
        body = await self._reader.readexactly(length) if length else b""
        return P.Frame(type_, flags, id_, body)

    async def _read_loop(self) -> None:
        exc: Exception
        try:
            while True:
                self._dispatch(await self._read_frame())
        except asyncio.IncompleteReadError:
            exc = ConnectionLost(f"{self.label}: the session closed the connection")
        except GondolinError as e:
            exc = e
        except OSError as e:
            exc = ConnectionLost(f"{self.label}: connection lost: {e.strerror or e}")
        except asyncio.CancelledError:
            exc = ConnectionLost(f"{self.label}: the connection was closed")
        except Exception as e:  # pragma: no cover - a bug; keep waiters from hanging
            exc = GondolinError(f"{self.label}: reader failed: {e!r}")
        if self._closing and isinstance(exc, ConnectionLost):
            exc = ConnectionLost(f"{self.label}: the connection was closed")
        self._closed = exc
        for r in list(self._live.values()):
            r.fail(exc)
            r.event.set()
        self._live.clear()
        self._slots.set()
        self._writer.close()

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
            return
        r.on_frame(f)
        if r.done:
            del self._live[f.id]
            self._slots.set()
        r.event.set()

    async def start(
        self, kind: P.Kind, first: Callable[[int], bytes], window: int = P.DEFAULT_WINDOW
    ) -> _AReq:
        while True:
            if self._closed is not None:
                raise self._closed
            if len(self._live) < MAX_LIVE:
                break
            self._slots.clear()
            await self._slots.wait()
        id_ = self._ids.allocate(self._live)
        r = _AReq(kind, id_, window)
        data = first(id_)
        self._live[id_] = r
        try:
            await self.send(data)
        except GondolinError:
            self._live.pop(id_, None)
            raise
        return r

    async def send(self, data: bytes) -> None:
        self.write(data)
        try:
            await self._writer.drain()
        except OSError as e:
            raise ConnectionLost(f"{self.label}: connection lost: {e.strerror or e}") from None

    def write(self, data: bytes) -> None:
        """Queues a frame (small control frames: WINDOW, CANCEL); no flow control wait."""
        if self._closed is not None:
            raise self._closed
        self._writer.write(data)

    def write_quiet(self, data: bytes) -> None:
        try:
            self.write(data)
        except (GondolinError, OSError, RuntimeError):
            pass

    async def wait(self, r: _AReq, deadline: float | None) -> bool:
        while not r.done:
            if not await r.changed(deadline):
                return False
        return True

    @property
    def closed(self) -> bool:
        return self._closed is not None

    async def wait_closed(self, timeout: float | None) -> bool:
        if self._task is None:
            return True
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    async def close(self) -> None:
        self._closing = True
        if self._task is not None and not self._task.done():
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._writer.close()
        try:
            await self._writer.wait_closed()
        except (OSError, GondolinError):
            pass


class _AFeeder:
    def __init__(self, conn: _AConn, r: _AReq, src: AsyncStdinSource | None) -> None:
        self.conn = conn
        self.r = r
        self.finished = src is None
        self.data: memoryview | None = None
        self.file: IO[bytes] | None = None
        self.aiter: AsyncIterator[bytes] | None = None
        self.left = b""
        if isinstance(src, str):
            self.data = memoryview(src.encode("utf-8"))
        elif isinstance(src, (bytes, bytearray, memoryview)):
            self.data = memoryview(bytes(src))
        elif src is not None and hasattr(src, "__aiter__"):
            self.aiter = src.__aiter__()
        elif src is not None:
            if not hasattr(src, "read"):
                raise TypeError("stdin must be bytes, str, a binary file or an async iterable of bytes")
            self.file = src
        self.pos = 0

    def ready(self) -> bool:
        r = self.r
        if self.finished or r.done or not r.stdin_granted:
            return False
        if self.data is not None and self.pos >= len(self.data):
            return True
        return r.stdin_credit > 0

    async def send_some(self) -> None:
        r, conn = self.r, self.conn
        if not self.ready():
            return
        if self.data is not None:
            n = r.stdin_take(len(self.data) - self.pos)
            piece = bytes(self.data[self.pos : self.pos + n])
            self.pos += n
            eof = self.pos >= len(self.data)
        else:
            n = r.stdin_take(P.STDIN_CHUNK)
            if self.left:
                piece = self.left[:n]
                self.left = self.left[n:]
            elif self.aiter is not None:
                try:
                    got = await self.aiter.__anext__()
                    piece, self.left = bytes(got[:n]), bytes(got[n:])
                except StopAsyncIteration:
                    piece = b""
            else:
                assert self.file is not None
                piece = await asyncio.to_thread(self.file.read, n) or b""
            eof = not piece
            if len(piece) < n:
                r.stdin_credit += n - len(piece)
        if eof:
            self.finished = True
        if piece or eof:
            await conn.send(P.encode_stdin(r.id, piece, eof))


async def _astep(
    conn: _AConn, r: _AReq, feeder: _AFeeder | None, deadline: float | None
) -> tuple[int, bytes] | None | object:
    while True:
        got, win = r.take_chunk()
        if win is not None:
            conn.write_quiet(win)
        if got is not None:
            return got
        if r.done:
            return None
        if feeder is not None and feeder.ready():
            await feeder.send_some()
            continue
        if not await r.changed(deadline):
            return _TIMEOUT


class AsyncExecStream(AsyncIterator[OutputChunk]):
    """A running exec: ``async for chunk in stream``, then ``stream.result``; see
    :class:`gondolin.ExecStream` (the same, awaited)."""

    def __init__(
        self,
        conn: _AConn,
        r: _AReq,
        cmd: Cmd,
        stdin: AsyncStdinSource | None,
        interactive: bool,
        check: bool,
        timeout: float | None,
    ) -> None:
        self._conn = conn
        self._r = r
        self.cmd = cmd
        self._feeder = _AFeeder(conn, r, stdin) if stdin is not None else None
        self._interactive = interactive
        self._check = check
        self._timeout = timeout
        self._deadline = _deadline(timeout)
        self._wlock = asyncio.Lock()
        self._result: ExecResult | None = None

    @property
    def id(self) -> int:
        return self._r.id

    @property
    def pid(self) -> int | None:
        return self._r.pid

    @property
    def done(self) -> bool:
        return self._result is not None

    @property
    def result(self) -> ExecResult:
        if self._result is None:
            raise GondolinError("exec: still running (exhaust the iterator or await wait() first)")
        return self._result

    def __aiter__(self) -> AsyncExecStream:
        return self

    async def __anext__(self) -> OutputChunk:
        got = await self._pull(self._deadline)
        if got is _TIMEOUT:
            await self._on_timeout(b"", b"")
        if got is None:
            raise StopAsyncIteration
        s, data = cast(tuple[int, bytes], got)
        return chunk(s, data)

    async def _pull(self, deadline: float | None) -> tuple[int, bytes] | None | object:
        if self._result is not None:
            return None
        try:
            got = await _astep(self._conn, self._r, self._feeder, deadline)
        except BaseException:
            self._abort()
            raise
        if got is None:
            self._finish(b"", b"")
        return got

    async def _read_raw(self, deadline: float | None) -> tuple[int, bytes] | None:
        got = await self._pull(deadline)
        if got is _TIMEOUT:
            raise GondolinTimeout("exec: no output within the timeout")
        return got  # type: ignore[return-value]

    def _finish(self, out: bytes, err: bytes) -> ExecResult:
        res = _result(self._r, self.cmd, out, err)
        self._result = res
        if self._check and not res.ok:
            res.check()
        return res

    async def _on_timeout(self, out: bytes, err: bytes) -> None:
        assert self._timeout is not None
        self._conn.write_quiet(P.encode(P.T.CANCEL, self._r.id))
        code, sig = -1, None
        grace = _deadline(5.0)
        while True:
            got = await _astep(self._conn, self._r, None, grace)
            if got is None or got is _TIMEOUT:
                break
        if self._r.exit is not None:
            code, sig = self._r.exit.exit_code, self._r.exit.signal
            self._result = ExecResult(code, out, err, sig, self._r.exit.error, self.cmd)
        raise ExecTimeout(self.cmd, self._timeout, code, out, err, sig)

    async def _collect(self) -> ExecResult:
        out, err = bytearray(), bytearray()
        try:
            while True:
                got = await _astep(self._conn, self._r, self._feeder, self._deadline)
                if got is _TIMEOUT:
                    await self._on_timeout(bytes(out), bytes(err))
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
            self._conn.write_quiet(P.encode(P.T.CANCEL, self._r.id))

    async def wait(self, timeout: float | None = None) -> ExecResult:
        """Discards the remaining output and returns the result."""
        d = _deadline(timeout)
        while self._result is None:
            if d is not None and time.monotonic() >= d:
                raise GondolinTimeout(f"exec: still running after {timeout} s")
            await self._read_raw(d)
        return self._result

    async def write(self, data: bytes | str) -> None:
        if not self._interactive:
            raise GondolinError("exec: started without stdin=True")
        buf = memoryview(data.encode("utf-8") if isinstance(data, str) else bytes(data))
        r = self._r
        async with self._wlock:
            pos = 0
            while pos < len(buf):
                if r.stdin_eof_sent:
                    raise GondolinError("exec: stdin is closed")
                if r.done:
                    raise GondolinError("exec: the process has exited")
                if r.stdin_credit == 0:
                    await r.changed(None)
                    continue
                n = r.stdin_take(len(buf) - pos)
                await self._conn.send(P.encode_stdin(r.id, bytes(buf[pos : pos + n])))
                pos += n

    async def close_stdin(self) -> None:
        r = self._r
        async with self._wlock:
            while not r.done and not r.stdin_granted:
                await r.changed(None)
            if r.done or r.stdin_eof_sent:
                return
            r.stdin_eof_sent = True
            await self._conn.send(P.encode_stdin(r.id, b"", True))

    async def signal(self, sig: int) -> None:
        if not 1 <= int(sig) <= 64:
            raise ValueError(f"signal {sig} not in 1..64")
        if not self._r.done:
            await self._conn.send(P.encode_json(P.T.SIGNAL, self._r.id, {"signal": int(sig)}))

    async def kill(self) -> None:
        await self.signal(_signal.SIGKILL)

    def cancel(self) -> None:
        """Hangs the process up; the exec still ends with a result."""
        self._abort()

    async def resize(self, rows: int, cols: int) -> None:
        if not self._r.done:
            await self._conn.send(P.encode_json(P.T.RESIZE, self._r.id, {"rows": rows, "cols": cols}))

    async def aclose(self) -> None:
        """Hangs up an unfinished exec and waits (5 s at most) for its end."""
        if self._result is not None:
            return
        self._abort()
        try:
            await self.wait(5.0)
        except GondolinError:
            pass

    async def __aenter__(self) -> AsyncExecStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class AsyncShell:
    """An interactive process on a PTY; see :class:`gondolin.Shell` (the same, awaited)."""

    def __init__(self, stream: AsyncExecStream) -> None:
        self._s = stream
        self._buf = bytearray()

    @property
    def exit_code(self) -> int | None:
        return self._s._result.exit_code if self._s._result is not None else None

    @property
    def alive(self) -> bool:
        return self._s._result is None

    @property
    def pid(self) -> int | None:
        return self._s.pid

    async def write(self, data: bytes | str) -> None:
        await self._s.write(data)

    async def read(self, timeout: float | None = None, size: int = 65536) -> bytes:
        if not self._buf:
            try:
                got = await self._s._read_raw(_deadline(timeout))
            except GondolinTimeout:
                return b""
            if got is None:
                return b""
            self._buf += got[1]
        out = bytes(self._buf[:size])
        del self._buf[:size]
        return out

    async def read_until(self, marker: bytes | str, timeout: float | None = None) -> bytes:
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
            got = await self._s._read_raw(d)
            if got is None:
                raise GondolinError(f"shell: ended before {marker!r} appeared")
            self._buf += got[1]

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self._buf:
            b = bytes(self._buf)
            self._buf.clear()
            yield b
        async for c in self._s:
            yield c.data

    async def resize(self, rows: int, cols: int) -> None:
        await self._s.resize(rows, cols)

    async def signal(self, sig: int) -> None:
        await self._s.signal(sig)

    async def wait(self, timeout: float | None = None) -> int:
        return (await self._s.wait(timeout)).exit_code

    async def close(self) -> None:
        await self._s.aclose()

    async def __aenter__(self) -> AsyncShell:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class AsyncLogTail(AsyncIterator[str]):
    def __init__(self, conn: _AConn, r: _AReq) -> None:
        self._conn = conn
        self._r = r
        self._pending: list[str] = []
        self._partial = b""

    def __aiter__(self) -> AsyncLogTail:
        return self

    async def __anext__(self) -> str:
        line = await self.next(None)
        if line is None:
            raise StopAsyncIteration
        return line

    async def next(self, timeout: float | None) -> str | None:
        d = _deadline(timeout)
        while not self._pending:
            r = self._r
            if not r.logs and not r.done:
                if not await r.changed(d):
                    return None
                continue
            data = b"".join(r.logs)
            r.logs.clear()
            if data:
                text = self._partial + data
                *lines, self._partial = text.split(b"\n")
                self._pending += [ln.decode("utf-8", "replace") for ln in lines]
            elif r.done:
                if r.error is not None and not r.cancelled:
                    raise r.error
                return None
        return self._pending.pop(0)

    async def aclose(self) -> None:
        if not self._r.done:
            self._r.cancelled = True
            self._conn.write_quiet(P.encode(P.T.CANCEL, self._r.id))
            await self._conn.wait(self._r, _deadline(5.0))

    async def __aenter__(self) -> AsyncLogTail:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class AsyncSandbox:
    """The asyncio flavour of :class:`gondolin.Sandbox`: the same methods, awaited."""

    def __init__(self, conn: _AConn, meta: Mapping[str, Any], *, owned: bool, proc: Any = None) -> None:
        self._conn = conn
        self._meta = dict(meta)
        self._owned = owned
        self._proc = proc
        self._closed = False
        self._stopped = False

    @classmethod
    async def create(
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
    ) -> AsyncSandbox:
        """Starts a session with ``gondolin start --json`` (run in a thread) and connects."""
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
        info, proc = await asyncio.to_thread(_run_start, argv, timeout)
        try:
            conn = await _AConn.open(session_socket(info), f"session {info.get('name') or info['id']}")
        except BaseException:
            _stop_by_socket(info)
            await asyncio.to_thread(_reap, proc, 10)
            raise
        return cls(conn, _merge(info, conn.session), owned=True, proc=proc)

    @classmethod
    async def attach(
        cls, ref: str, *, stop_on_close: bool = False, timeout: float | None = 30.0
    ) -> AsyncSandbox:
        meta = find_session(ref)
        try:
            conn = await _AConn.open(
                session_socket(meta), f"session {meta.get('name') or meta['id']}", timeout
            )
        except ConnectionLost as e:
            raise SessionNotFound(f"session '{ref}' is not reachable: {e}") from None
        return cls(conn, _merge(meta, conn.session), owned=stop_on_close)

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
        return dict(self._meta)

    def __repr__(self) -> str:
        return f"<AsyncSandbox {self.id}{' ' + repr(self.name) if self.name else ''}>"

    @overload
    async def exec(
        self,
        cmd: Cmd,
        *,
        cwd: str | None = ...,
        env: Mapping[str, str] | None = ...,
        stdin: AsyncStdinSource | None = ...,
        stream: Literal[False] = ...,
        check: bool = ...,
        timeout: float | None = ...,
        pty: bool = ...,
        window: int = ...,
    ) -> ExecResult: ...

    @overload
    async def exec(
        self,
        cmd: Cmd,
        *,
        cwd: str | None = ...,
        env: Mapping[str, str] | None = ...,
        stdin: AsyncStdinSource | bool | None = ...,
        stream: Literal[True],
        check: bool = ...,
        timeout: float | None = ...,
        pty: bool = ...,
        window: int = ...,
    ) -> AsyncExecStream: ...

    async def exec(
        self,
        cmd: Cmd,
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        stdin: AsyncStdinSource | bool | None = None,
        stream: bool = False,
        check: bool = False,
        timeout: float | None = None,
        pty: bool = False,
        window: int = P.DEFAULT_WINDOW,
    ) -> ExecResult | AsyncExecStream:
        """See :meth:`gondolin.Sandbox.exec`; ``stdin`` may also be an async iterable of bytes."""
        s = await self._start_exec(cmd, cwd, env, stdin, stream, check, timeout, pty, window)
        if stream:
            return s
        return await s._collect()

    async def _start_exec(
        self,
        cmd: Cmd,
        cwd: str | None,
        env: Mapping[str, str] | None,
        stdin: AsyncStdinSource | bool | None,
        stream: bool,
        check: bool,
        timeout: float | None,
        pty: bool,
        window: int,
        rows: int = 24,
        cols: int = 80,
    ) -> AsyncExecStream:
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
        r = await self._conn.start(P.Kind.EXEC, lambda i: P.encode_json(P.T.EXEC, i, body), window)
        src = None if interactive else stdin
        return AsyncExecStream(self._conn, r, cmd, src, interactive, check, timeout)  # type: ignore[arg-type]

    async def shell(
        self,
        command: Sequence[str] | str | None = None,
        *,
        rows: int = 24,
        cols: int = 80,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
    ) -> AsyncShell:
        cmd: Cmd = list(DEFAULT_SHELL) if command is None else command
        s = await self._start_exec(cmd, cwd, env, True, True, False, None, True, P.DEFAULT_WINDOW, rows, cols)
        return AsyncShell(s)

    # -- files
    async def write_file(
        self,
        path: str,
        data: bytes | str | IO[bytes] | AsyncIterable[bytes],
        *,
        mode: int | None = None,
        mtime: int | None = None,
        timeout: float | None = None,
    ) -> None:
        body: dict[str, Any] = {"path": path, "tar": False}
        if mode is not None:
            body["mode"] = mode
        if mtime is not None:
            body["mtime"] = int(mtime)
        await self._put(body, data, path, "write_file", timeout)

    async def _put(
        self, body: dict[str, Any], data: AsyncStdinSource, path: str, what: str, timeout: float | None
    ) -> None:
        r = await self._conn.start(P.Kind.PUT, lambda i: P.encode_json(P.T.PUT, i, body))
        feeder = _AFeeder(self._conn, r, data)
        d = _deadline(timeout)
        try:
            while True:
                got = await _astep(self._conn, r, feeder, d)
                if got is _TIMEOUT:
                    raise GondolinTimeout(f"{what} {path}: timed out")
                if got is None:
                    break
        except BaseException:
            if not r.done:
                self._conn.write_quiet(P.encode(P.T.CANCEL, r.id))
            raise
        _transfer_result(r, what, path)

    async def read_file(
        self,
        path: str,
        *,
        timeout: float | None = None,
        max_bytes: int | None = READ_FILE_MAX,
    ) -> bytes:
        buf = CappedBuffer(max_bytes, path)
        await self.read_file_to(path, buf, timeout=timeout)
        return buf.getvalue()

    async def read_file_to(
        self, path: str, dest: IO[bytes] | str | os.PathLike[str], *, timeout: float | None = None
    ) -> int:
        """Streams a guest file into a binary file (written synchronously) or a local path."""
        if isinstance(dest, (str, os.PathLike)):
            with open(dest, "wb") as f:
                return await self.read_file_to(path, f, timeout=timeout)
        return await self._get_into(path, dest, False, "read_file", timeout)

    async def _get_into(
        self, path: str, dest: IO[bytes], tar: bool, what: str, timeout: float | None
    ) -> int:
        body = {"path": path, "tar": tar, "window": P.DEFAULT_WINDOW}
        r = await self._conn.start(P.Kind.GET, lambda i: P.encode_json(P.T.GET, i, body))
        d = _deadline(timeout)
        n = 0
        try:
            while True:
                got = await _astep(self._conn, r, None, d)
                if got is _TIMEOUT:
                    raise GondolinTimeout(f"{what} {path}: timed out")
                if got is None:
                    break
                data = got[1]  # type: ignore[index]
                dest.write(data)
                n += len(data)
        except BaseException:
            if not r.done:
                self._conn.write_quiet(P.encode(P.T.CANCEL, r.id))
            raise
        _transfer_result(r, what, path)
        return n

    async def upload(
        self, local: str | os.PathLike[str], guest_dir: str, *, timeout: float | None = None
    ) -> None:
        """See :meth:`gondolin.Sandbox.upload` (the archive is spooled to a temporary
        file in a thread, then streamed)."""
        local = os.fspath(local)
        if not os.path.lexists(local):
            raise FileNotFoundError(local)
        spool = tempfile.SpooledTemporaryFile(8 << 20)
        try:

            def pack() -> None:
                with tarfile.open(fileobj=spool, mode="w|", format=tarfile.PAX_FORMAT) as tf:
                    tf.add(local, arcname=os.path.basename(os.path.normpath(local)))
                spool.seek(0)

            await asyncio.to_thread(pack)
            await self._put({"path": guest_dir, "tar": True}, spool, guest_dir, "upload", timeout)
        finally:
            spool.close()

    async def download(
        self, guest_path: str, local_dir: str | os.PathLike[str], *, timeout: float | None = None
    ) -> str:
        """See :meth:`gondolin.Sandbox.download` (spooled, then unpacked in a thread)."""
        dest = os.fspath(local_dir)
        spool = tempfile.SpooledTemporaryFile(8 << 20)
        try:
            await self._get_into(guest_path, spool, True, "download", timeout)
            spool.seek(0)

            def unpack() -> None:
                try:
                    with tarfile.open(fileobj=spool, mode="r|") as tf:
                        extract_all(tf, dest)
                except tarfile.ReadError as e:
                    raise GondolinError(f"download {guest_path}: bad archive: {e}") from None

            await asyncio.to_thread(unpack)
        finally:
            spool.close()
        return os.path.join(dest, os.path.basename(os.path.normpath(guest_path)))

    # -- one-shot requests
    async def request(self, op: str, timeout: float | None = 60.0, **fields: Any) -> dict[str, Any]:
        body = {"op": op, **fields}
        r = await self._conn.start(P.Kind.REQUEST, lambda i: P.encode_json(P.T.REQUEST, i, body))
        if not await self._conn.wait(r, _deadline(timeout)):
            self._conn.write_quiet(P.encode(P.T.CANCEL, r.id))
            raise GondolinTimeout(f"{op}: no reply within {timeout} s")
        return P.reply_ok(r, op)

    async def info(self) -> dict[str, Any]:
        return await self.request("info")

    async def policy_reload(self) -> dict[str, Any]:
        try:
            return await self.request("policy.reload")
        except RemoteError as e:
            if isinstance(e, PolicyError) or e.code not in (None, "policy"):
                raise
            raise PolicyError(str(e), code=e.code) from None

    async def policy_status(self) -> dict[str, Any]:
        return await self.request("policy.status")

    async def logs(self, lines: int = 100, *, timeout: float | None = 60.0) -> str:
        body = {"op": "logs", "follow": False, "lines": lines}
        r = await self._conn.start(P.Kind.REQUEST, lambda i: P.encode_json(P.T.REQUEST, i, body))
        if not await self._conn.wait(r, _deadline(timeout)):
            self._conn.write_quiet(P.encode(P.T.CANCEL, r.id))
            raise GondolinTimeout(f"logs: no reply within {timeout} s")
        P.reply_ok(r, "logs")
        return b"".join(r.logs).decode("utf-8", "replace")

    async def follow_logs(self, lines: int = 0) -> AsyncLogTail:
        body = {"op": "logs", "follow": True, "lines": lines}
        r = await self._conn.start(P.Kind.REQUEST, lambda i: P.encode_json(P.T.REQUEST, i, body))
        return AsyncLogTail(self._conn, r)

    async def diff(
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
        return parse_diff(await self.request("fs.diff", **diff_fields(path, export, whiteouts)))

    async def expose(self, listen: str, guest_port: int, *, raw: bool = False) -> str:
        rep = await self.request("expose", listen=listen, guest_port=guest_port, raw=raw)
        return str(rep.get("listen", listen))

    # -- lifecycle
    async def snapshot(
        self,
        name: str | None = None,
        *,
        output: str | os.PathLike[str] | None = None,
        memory: bool = False,
        stop: bool = False,
        timeout: float | None = 300.0,
    ) -> str:
        """A disk checkpoint or, with ``memory=True``, a memory snapshot; see
        Sandbox.snapshot."""
        rep = await self.request("snapshot", timeout=timeout, **snapshot_fields(name, output, memory, stop))
        if rep.get("stopped", True):
            await self._finish_stop(timeout)
        return str(rep["path"])

    async def fork(
        self, n: int = 1, *, name: str | None = None, timeout: float | None = 600.0
    ) -> list[AsyncSandbox]:
        """n new sessions from a memory snapshot of this one; see Sandbox.fork."""
        ids = await asyncio.to_thread(fork_ids, gondolin_bin(None), self.id, n, name, timeout)
        return [await AsyncSandbox.attach(i, stop_on_close=True) for i in ids]

    async def stop(self, force: bool = False, timeout: float | None = 30.0) -> None:
        if self._stopped:
            return
        try:
            await self.request("stop", timeout=timeout, force=force)
        except ConnectionLost:
            pass
        await self._finish_stop(timeout)

    async def _finish_stop(self, timeout: float | None) -> None:
        self._stopped = True
        d = _deadline(timeout)
        await self._conn.wait_closed(timeout)
        await self._conn.close()
        self._closed = True
        if self._proc is not None:
            await asyncio.to_thread(_reap, self._proc, _remaining(d))
        if not await asyncio.to_thread(wait_gone, self._meta, _remaining(d)):
            raise GondolinTimeout(f"stop: session {self.id} still runs after {timeout} s")

    async def close(self) -> None:
        if self._closed:
            return
        try:
            if self._owned and not self._stopped and not self._conn.closed:
                await self.stop()
        finally:
            self._closed = True
            await self._conn.close()
            if self._proc is not None:
                await asyncio.to_thread(_reap, self._proc, 10)

    @property
    def closed(self) -> bool:
        return self._closed or self._conn.closed

    async def __aenter__(self) -> AsyncSandbox:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

