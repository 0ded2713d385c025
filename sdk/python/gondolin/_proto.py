"""The session control protocol (docs/control.md), without I/O.

Framing (a 12-byte little-endian header, then the body), the message codec, and the
state of one request (an exec, a transfer, a one-shot REQUEST) including both
directions of flow control. The sync client (sandbox.py) and the asyncio client
(aio.py) wrap the same state in a thread or a task; nothing here blocks or reads a
socket.
"""

from __future__ import annotations

import json
import struct
from collections import deque
from dataclasses import dataclass
from enum import IntEnum
from collections.abc import Collection
from typing import Any, Final

from .errors import GondolinError, ProtocolError, RemoteError

PROTOCOL_VERSION: Final = 1

HEADER: Final = struct.Struct("<IBBHI")
HEADER_SIZE: Final = HEADER.size  # 12
MAX_BODY: Final = 1 << 20  # any frame
MAX_JSON_BODY: Final = 256 << 10  # JSON bodies
MAX_OUTPUT: Final = 64 << 10  # one OUTPUT frame
STDIN_CHUNK: Final = 64 << 10  # what we put in one STDIN frame
DEFAULT_WINDOW: Final = 256 << 10  # initial output credit per stream
MAX_CREDIT: Final = 16 << 20  # outstanding credit is clamped here by the server

U32: Final = struct.Struct("<I")
WINDOW: Final = struct.Struct("<II")


class T(IntEnum):
    """Message types."""

    HELLO = 1
    EXEC = 2
    STARTED = 3
    STDIN = 4
    STDIN_WINDOW = 5
    OUTPUT = 6
    WINDOW = 7
    RESIZE = 8
    SIGNAL = 9
    EXIT = 10
    ERROR = 11
    PUT = 12
    GET = 13
    REQUEST = 14
    REPLY = 15
    LOG = 16
    CANCEL = 17


JSON_TYPES: Final = frozenset(
    {T.HELLO, T.EXEC, T.STARTED, T.RESIZE, T.SIGNAL, T.EXIT, T.ERROR, T.PUT, T.GET, T.REQUEST, T.REPLY}
)
# what a server may send
SERVER_TYPES: Final = frozenset(
    {T.HELLO, T.STARTED, T.STDIN_WINDOW, T.OUTPUT, T.EXIT, T.ERROR, T.REPLY, T.LOG}
)

FLAG_EOF: Final = 1  # STDIN
FLAG_STDOUT: Final = 1  # OUTPUT
FLAG_STDERR: Final = 2  # OUTPUT

STDOUT: Final = 0
STDERR: Final = 1
STREAM_NAMES: Final = ("stdout", "stderr")

JsonObj = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Frame:
    type: int
    flags: int
    id: int
    body: bytes

    def json(self) -> JsonObj:
        """The body as a JSON object (ProtocolError if it is not one)."""
        return parse_json(self.body, self.type)

    def __repr__(self) -> str:
        try:
            name = T(self.type).name
        except ValueError:
            name = str(self.type)
        b = self.body if len(self.body) <= 40 else self.body[:40] + b"..."
        return f"Frame({name}, flags={self.flags}, id={self.id}, {b!r})"


def parse_json(body: bytes, type_: int = 0) -> JsonObj:
    try:
        v = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ProtocolError(f"{_name(type_)}: body is not JSON: {e}") from None
    if not isinstance(v, dict):
        raise ProtocolError(f"{_name(type_)}: body is not a JSON object")
    return v


def _name(type_: int) -> str:
    try:
        return T(type_).name
    except ValueError:
        return f"type {type_}"


def encode(type_: int, id_: int, body: bytes = b"", flags: int = 0) -> bytes:
    """One frame: header + body."""
    if len(body) > MAX_BODY:
        raise ValueError(f"frame body of {len(body)} bytes exceeds {MAX_BODY}")
    if not 0 <= id_ <= 0xFFFFFFFF:
        raise ValueError(f"request id {id_} out of range")
    return HEADER.pack(len(body), type_, flags, 0, id_) + body


def encode_json(type_: int, id_: int, obj: JsonObj) -> bytes:
    body = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if len(body) > MAX_JSON_BODY:
        raise ValueError(f"{_name(type_)}: JSON body of {len(body)} bytes exceeds {MAX_JSON_BODY}")
    return encode(type_, id_, body)


def encode_window(id_: int, stdout_grant: int, stderr_grant: int) -> bytes:
    return encode(T.WINDOW, id_, WINDOW.pack(stdout_grant, stderr_grant))


def encode_stdin(id_: int, data: bytes, eof: bool = False) -> bytes:
    return encode(T.STDIN, id_, data, FLAG_EOF if eof else 0)


def hello(client: str) -> bytes:
    return encode_json(T.HELLO, 0, {"version": PROTOCOL_VERSION, "client": client})


def check_header(length: int, type_: int, flags: int, reserved: int) -> None:
    """Validates a server frame's header (ProtocolError on anything malformed)."""
    if type_ not in SERVER_TYPES:
        raise ProtocolError(f"unexpected message type {type_} from the server")
    if reserved != 0:
        raise ProtocolError(f"{_name(type_)}: nonzero reserved field")
    limit = MAX_JSON_BODY if type_ in JSON_TYPES else MAX_BODY
    if type_ == T.OUTPUT:
        limit = MAX_OUTPUT
    if length > limit:
        raise ProtocolError(f"{_name(type_)}: body of {length} bytes exceeds {limit}")
    if type_ == T.STDIN_WINDOW and length != 4:
        raise ProtocolError(f"STDIN_WINDOW: body of {length} bytes, not 4")


class FrameDecoder:
    """Turns a byte stream into frames; any split of the input gives the same frames."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        self._buf += data
        out: list[Frame] = []
        buf = self._buf
        pos = 0
        n = len(buf)
        while n - pos >= HEADER_SIZE:
            length, type_, flags, reserved, id_ = HEADER.unpack_from(buf, pos)
            check_header(length, type_, flags, reserved)
            if n - pos - HEADER_SIZE < length:
                break
            start = pos + HEADER_SIZE
            out.append(Frame(type_, flags, id_, bytes(buf[start : start + length])))
            pos = start + length
        if pos:
            del buf[:pos]
        return out

    @property
    def pending(self) -> int:
        """Bytes held that do not make a whole frame yet."""
        return len(self._buf)


# ---------------------------------------------------------------------------
# One request's state


class Kind(IntEnum):
    EXEC = 1  # EXEC: STARTED, OUTPUT, STDIN_WINDOW, EXIT
    PUT = 2  # PUT: STDIN_WINDOW, EXIT
    GET = 3  # GET: OUTPUT, EXIT
    REQUEST = 4  # REQUEST: REPLY (logs: LOG frames first)


@dataclass(frozen=True, slots=True)
class Exit:
    exit_code: int
    signal: int | None
    error: str | None


class Request:
    """The client's view of one live request id.

    ``on_frame`` applies a server frame (raising ProtocolError when the server breaks
    the contract, e.g. sends output beyond the credit granted). Output is queued in
    ``chunks`` and credit is returned only when the consumer takes it with
    ``take_chunk``/``consumed``: the bytes held here are bounded by the window.
    """

    def __init__(self, kind: Kind, id_: int, window: int = DEFAULT_WINDOW) -> None:
        if not 0 < window <= MAX_CREDIT:
            raise ValueError(f"window {window} not in 1..{MAX_CREDIT}")
        self.kind = kind
        self.id = id_
        self.window = window
        self.credit = [window, window]  # output bytes the server may still send, per stream
        self.unacked = [0, 0]  # consumed, not yet granted back
        self.threshold = max(1, window // 4)
        self.stdin_credit = 0
        self.stdin_granted = False  # the first STDIN_WINDOW came
        self.stdin_eof_sent = False
        self.chunks: deque[tuple[int, bytes]] = deque()
        self.logs: deque[bytes] = deque()
        self.pid: int | None = None
        self.started = False
        self.exit: Exit | None = None
        self.reply: JsonObj | None = None
        self.error: Exception | None = None  # ERROR frame or the connection's end
        self.done = False
        self.cancelled = False

    # -- incoming
    def on_frame(self, f: Frame) -> None:
        if self.done:
            raise ProtocolError(f"{_name(f.type)} for request {self.id} after its end")
        t = f.type
        if t == T.OUTPUT:
            if self.kind not in (Kind.EXEC, Kind.GET):
                raise ProtocolError(f"OUTPUT for a request that has no output (id {self.id})")
            if f.flags == FLAG_STDOUT:
                s = STDOUT
            elif f.flags == FLAG_STDERR:
                s = STDERR
            else:
                raise ProtocolError(f"OUTPUT with flags {f.flags} (id {self.id})")
            n = len(f.body)
            if n > self.credit[s]:
                raise ProtocolError(
                    f"OUTPUT beyond the granted credit on {STREAM_NAMES[s]} "
                    f"({n} > {self.credit[s]}, id {self.id})"
                )
            self.credit[s] -= n
            if n:
                self.chunks.append((s, f.body))
        elif t == T.STDIN_WINDOW:
            if self.kind not in (Kind.EXEC, Kind.PUT):
                raise ProtocolError(f"STDIN_WINDOW for a request without stdin (id {self.id})")
            (grant,) = U32.unpack(f.body)
            self.stdin_credit = min(self.stdin_credit + grant, MAX_CREDIT)
            self.stdin_granted = True
        elif t == T.STARTED:
            if self.kind != Kind.EXEC or self.started:
                raise ProtocolError(f"unexpected STARTED (id {self.id})")
            pid = f.json().get("pid")
            self.pid = pid if isinstance(pid, int) else None
            self.started = True
        elif t == T.EXIT:
            if self.kind == Kind.REQUEST:
                raise ProtocolError(f"EXIT for a REQUEST (id {self.id})")
            j = f.json()
            code = j.get("exit_code")
            if not isinstance(code, int) or isinstance(code, bool):
                raise ProtocolError(f"EXIT without an integer exit_code (id {self.id})")
            sig = j.get("signal")
            err = j.get("error")
            self.exit = Exit(
                code,
                sig if isinstance(sig, int) and not isinstance(sig, bool) else None,
                str(err) if err is not None else None,
            )
            self.done = True
        elif t == T.REPLY:
            if self.kind != Kind.REQUEST:
                raise ProtocolError(f"REPLY for a request that is not a REQUEST (id {self.id})")
            self.reply = f.json()
            self.done = True
        elif t == T.LOG:
            if self.kind != Kind.REQUEST:
                raise ProtocolError(f"LOG for a request that is not a REQUEST (id {self.id})")
            if f.body:
                self.logs.append(f.body)
        elif t == T.ERROR:
            j = f.json()
            code = j.get("code")
            msg = j.get("message") or code or "error"
            self.error = RemoteError(str(msg), code=str(code) if code is not None else None)
            self.done = True
        else:
            raise ProtocolError(f"unexpected {_name(t)} for request {self.id}")

    def fail(self, exc: Exception) -> None:
        """The connection ended under this request."""
        if not self.done:
            self.error = exc
            self.done = True

    # -- output credit
    def take_chunk(self) -> tuple[tuple[int, bytes] | None, bytes | None]:
        """The oldest output chunk (or None), and a WINDOW frame to send (or None)."""
        if not self.chunks:
            return None, None
        s, data = self.chunks.popleft()
        return (s, data), self.consumed(s, len(data))

    def consumed(self, stream: int, n: int) -> bytes | None:
        """Records n bytes of a stream as consumed; returns a WINDOW frame when it is
        time to grant (a quarter of the window consumed on either stream), else None."""
        self.unacked[stream] += n
        if self.done:
            return None
        if self.unacked[STDOUT] < self.threshold and self.unacked[STDERR] < self.threshold:
            return None
        g0, g1 = self.unacked
        self.unacked = [0, 0]
        self.credit[STDOUT] += g0
        self.credit[STDERR] += g1
        return encode_window(self.id, g0, g1)

    # -- stdin credit
    def stdin_take(self, want: int) -> int:
        """How many of ``want`` stdin bytes may be sent now (credit is taken)."""
        n = min(want, self.stdin_credit, STDIN_CHUNK)
        self.stdin_credit -= n
        return n

    @property
    def buffered(self) -> int:
        return sum(len(d) for _, d in self.chunks)


class IdAllocator:
    """Request ids 1..2^32-1, never one that is live."""

    def __init__(self) -> None:
        self._next = 1

    def allocate(self, live: Collection[int]) -> int:
        for _ in range(len(live) + 1):
            i = self._next
            self._next = 1 if i >= 0xFFFFFFFF else i + 1
            if i not in live:
                return i
        raise RuntimeError("no free request id")  # pragma: no cover


def exec_body(
    cmd: str | list[str] | tuple[str, ...],
    *,
    env: dict[str, str] | None,
    cwd: str | None,
    stdin: bool,
    window: int,
    pty: bool = False,
    rows: int = 24,
    cols: int = 80,
) -> JsonObj:
    """The EXEC body for a command: a string runs as /bin/sh -lc, a list is argv."""
    body: JsonObj = {}
    if isinstance(cmd, str):
        body["shell"] = cmd
    else:
        argv = list(cmd)
        if not argv or not all(isinstance(a, str) for a in argv):
            raise ValueError("exec: argv must be a non-empty list of strings")
        body["argv"] = argv
    if env:
        for k in env:
            if not k or "=" in k:
                raise ValueError(f"exec: bad environment variable name {k!r}")
        body["env"] = [f"{k}={v}" for k, v in env.items()]
    if cwd is not None:
        body["cwd"] = cwd
    if pty:
        body["pty"] = True
        body["rows"] = rows
        body["cols"] = cols
    body["stdin"] = stdin
    body["window"] = window
    return body


def reply_ok(req: Request, what: str) -> JsonObj:
    """The REPLY of a finished REQUEST, or raise its error (RemoteError when ok is false)."""
    if req.error is not None:
        raise req.error
    r = req.reply
    if r is None:  # pragma: no cover - done without a reply means an error was set
        raise GondolinError(f"{what}: no reply")
    if r.get("ok") is False:
        raise RemoteError(f"{what}: {r.get('error') or 'failed'}", code=r.get("code"))
    return r
