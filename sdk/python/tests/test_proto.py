"""The codec and the request state without any socket."""

from __future__ import annotations

import json
import os
import tarfile
import io
from pathlib import Path

import pytest

from gondolin import _proto as P
from gondolin._common import (
    ExecResult,
    checked_members,
    find_session,
    list_sessions,
    parse_start_json,
    start_argv,
    start_failed,
)
from gondolin.errors import ExecError, GondolinError, ProtocolError, RemoteError, SessionNotFound


def frames_bytes() -> tuple[bytes, list[P.Frame]]:
    fs = [
        P.Frame(P.T.HELLO, 0, 0, b'{"version":1}'),
        P.Frame(P.T.OUTPUT, 1, 7, b"x" * 1000),
        P.Frame(P.T.OUTPUT, 2, 7, b""),
        P.Frame(P.T.STDIN_WINDOW, 0, 9, P.U32.pack(4096)),
        P.Frame(P.T.EXIT, 0, 7, b'{"exit_code":3}'),
    ]
    return b"".join(P.encode(f.type, f.id, f.body, f.flags) for f in fs), fs


def test_header_layout() -> None:
    b = P.encode(P.T.OUTPUT, 0x01020304, b"abc", 2)
    assert b[:12] == bytes([3, 0, 0, 0, 6, 2, 0, 0, 4, 3, 2, 1])
    assert b[12:] == b"abc"


def test_every_split_gives_the_same_frames() -> None:
    data, want = frames_bytes()
    for cut in range(len(data) + 1):
        d = P.FrameDecoder()
        got = d.feed(data[:cut]) + d.feed(data[cut:])
        assert got == want, cut
        assert d.pending == 0


def test_byte_at_a_time() -> None:
    data, want = frames_bytes()
    d = P.FrameDecoder()
    got: list[P.Frame] = []
    for i in range(len(data)):
        got += d.feed(data[i : i + 1])
    assert got == want


@pytest.mark.parametrize(
    "hdr,msg",
    [
        (P.HEADER.pack(0, 99, 0, 0, 1), "unexpected message type 99"),
        (P.HEADER.pack(0, P.T.EXEC, 0, 0, 1), "unexpected message type 2"),  # client-only
        (P.HEADER.pack(0, P.T.EXIT, 0, 1, 1), "nonzero reserved"),
        (P.HEADER.pack((1 << 20) + 1, P.T.LOG, 0, 0, 1), "exceeds"),
        (P.HEADER.pack((256 << 10) + 1, P.T.REPLY, 0, 0, 1), "exceeds"),
        (P.HEADER.pack((64 << 10) + 1, P.T.OUTPUT, 1, 0, 1), "exceeds"),
        (P.HEADER.pack(3, P.T.STDIN_WINDOW, 0, 0, 1), "not 4"),
    ],
)
def test_malformed_headers(hdr: bytes, msg: str) -> None:
    with pytest.raises(ProtocolError, match=msg):
        P.FrameDecoder().feed(hdr)


def test_header_checked_before_the_body_arrives() -> None:
    # an oversized length is refused at once, not after buffering a megabyte
    with pytest.raises(ProtocolError):
        P.FrameDecoder().feed(P.HEADER.pack(50 << 20, P.T.OUTPUT, 1, 0, 1))


def test_json_bodies() -> None:
    assert P.Frame(P.T.REPLY, 0, 1, b'{"ok":true}').json() == {"ok": True}
    with pytest.raises(ProtocolError, match="not JSON"):
        P.Frame(P.T.REPLY, 0, 1, b"{").json()
    with pytest.raises(ProtocolError, match="not a JSON object"):
        P.Frame(P.T.REPLY, 0, 1, b"[1]").json()
    with pytest.raises(ValueError):
        P.encode_json(P.T.EXEC, 1, {"argv": ["x" * (300 << 10)]})
    with pytest.raises(ValueError):
        P.encode(P.T.STDIN, 1, b"x" * ((1 << 20) + 1))


def test_exec_body() -> None:
    assert P.exec_body("echo $HOME", env=None, cwd=None, stdin=False, window=10) == {
        "shell": "echo $HOME",
        "stdin": False,
        "window": 10,
    }
    b = P.exec_body(["ls", "-l"], env={"A": "1"}, cwd="/tmp", stdin=True, window=5, pty=True, rows=5, cols=9)
    assert b == {"argv": ["ls", "-l"], "env": ["A=1"], "cwd": "/tmp", "pty": True, "rows": 5,
                 "cols": 9, "stdin": True, "window": 5}
    with pytest.raises(ValueError):
        P.exec_body([], env=None, cwd=None, stdin=False, window=1)
    with pytest.raises(ValueError):
        P.exec_body(["x"], env={"A=B": "1"}, cwd=None, stdin=False, window=1)


def out(id_: int, data: bytes, stream: int = 1) -> P.Frame:
    return P.Frame(P.T.OUTPUT, stream, id_, data)


def test_output_credit_is_granted_as_consumed() -> None:
    r = P.Request(P.Kind.EXEC, 5, window=1000)
    r.on_frame(P.Frame(P.T.STARTED, 0, 5, b'{"pid": 42}'))
    assert r.pid == 42
    granted = [0, 0]
    sent = 0
    # the server sends all it may; we consume one chunk at a time and grant back
    for _ in range(50):
        room = r.credit[0]
        assert 0 <= room <= 1000
        if room:
            r.on_frame(out(5, b"a" * min(room, 300)))
            sent += min(room, 300)
        got, win = r.take_chunk()
        assert got is not None
        if win is not None:
            a, b = P.WINDOW.unpack(win[12:])
            granted[0] += a
            granted[1] += b
        # outstanding credit never exceeds the window
        assert r.credit[0] + r.buffered <= 1000
    assert granted[0] > 0 and granted[1] == 0
    assert granted[0] <= sent and sent - granted[0] <= 1000


def test_output_beyond_credit_is_a_protocol_error() -> None:
    r = P.Request(P.Kind.EXEC, 1, window=10)
    r.on_frame(out(1, b"x" * 10))
    with pytest.raises(ProtocolError, match="beyond the granted credit on stdout"):
        r.on_frame(out(1, b"y"))
    r2 = P.Request(P.Kind.EXEC, 1, window=10)
    r2.on_frame(out(1, b"x" * 10))  # stdout full; stderr has its own credit
    r2.on_frame(out(1, b"e" * 10, 2))
    with pytest.raises(ProtocolError, match="stderr"):
        r2.on_frame(out(1, b"e", 2))


def test_grant_threshold_and_both_streams() -> None:
    r = P.Request(P.Kind.EXEC, 3, window=400)
    r.on_frame(out(3, b"o" * 50))
    r.on_frame(out(3, b"e" * 60, 2))
    assert r.take_chunk()[1] is None  # 50 < 100
    _, win = r.take_chunk()  # 60 < 100 either
    assert win is None
    r.on_frame(out(3, b"o" * 60))
    _, win = r.take_chunk()  # stdout 110 >= 100: both grants go in one WINDOW
    assert win is not None and P.WINDOW.unpack(win[12:]) == (110, 60)
    assert win[4] == P.T.WINDOW and int.from_bytes(win[8:12], "little") == 3


def test_stdin_credit() -> None:
    r = P.Request(P.Kind.EXEC, 1)
    assert r.stdin_take(100) == 0
    r.on_frame(P.Frame(P.T.STDIN_WINDOW, 0, 1, P.U32.pack(100)))
    assert r.stdin_granted
    assert r.stdin_take(30) == 30
    assert r.stdin_take(1000) == 70
    assert r.stdin_take(1) == 0
    r.on_frame(P.Frame(P.T.STDIN_WINDOW, 0, 1, P.U32.pack(1 << 20)))
    assert r.stdin_take(1 << 20) == P.STDIN_CHUNK  # one frame's worth at a time
    r.on_frame(P.Frame(P.T.STDIN_WINDOW, 0, 1, P.U32.pack(0xFFFFFFFF)))
    assert r.stdin_credit == P.MAX_CREDIT  # clamped


def test_terminal_frames() -> None:
    r = P.Request(P.Kind.EXEC, 1)
    r.on_frame(P.Frame(P.T.EXIT, 0, 1, b'{"exit_code": 137, "signal": 9}'))
    assert r.done and r.exit == P.Exit(137, 9, None)
    with pytest.raises(ProtocolError, match="after its end"):
        r.on_frame(out(1, b"x"))
    r = P.Request(P.Kind.EXEC, 2)
    with pytest.raises(ProtocolError, match="integer exit_code"):
        r.on_frame(P.Frame(P.T.EXIT, 0, 2, b'{"exit_code": "1"}'))
    r = P.Request(P.Kind.REQUEST, 3)
    r.on_frame(P.Frame(P.T.ERROR, 0, 3, b'{"code": "busy", "message": "too many"}'))
    assert isinstance(r.error, RemoteError) and r.error.code == "busy" and str(r.error) == "too many"
    with pytest.raises(RemoteError):
        P.reply_ok(r, "info")
    r = P.Request(P.Kind.REQUEST, 4)
    with pytest.raises(ProtocolError):
        r.on_frame(P.Frame(P.T.EXIT, 0, 4, b'{"exit_code": 0}'))
    r = P.Request(P.Kind.REQUEST, 5)
    r.on_frame(P.Frame(P.T.REPLY, 0, 5, b'{"ok": false, "error": "x.lua:3: boom"}'))
    with pytest.raises(RemoteError, match="policy.reload: x.lua:3: boom"):
        P.reply_ok(r, "policy.reload")
    r = P.Request(P.Kind.PUT, 6)
    with pytest.raises(ProtocolError):
        r.on_frame(out(6, b"x"))  # a PUT has no output


def test_id_allocator() -> None:
    a = P.IdAllocator()
    live: dict[int, object] = {1: 0, 2: 0}
    assert a.allocate(live) == 3
    a._next = 0xFFFFFFFF
    assert a.allocate({}) == 0xFFFFFFFF
    assert a.allocate({1: 0}) == 2  # wrapped, skipping 0 and the live 1


def test_exec_result_and_error() -> None:
    r = ExecResult(0, b"hi\n", b"")
    assert r.ok and r.text == "hi\n" and r.check() is r
    bad = ExecResult(2, b"", b"warn\nno such file\n", cmd=["ls", "/x"])
    with pytest.raises(ExecError) as ei:
        bad.check()
    e = ei.value
    assert e.exit_code == 2 and e.stderr == b"warn\nno such file\n"
    assert str(e) == "ls /x: exited with 2: no such file"
    assert "\n" not in str(ExecError("x", 1, b"", b"a\nb\n"))
    assert str(ExecError(["x"], 137, signal=9)) == "x: killed by signal 9"


def test_start_json_and_argv() -> None:
    assert parse_start_json('{"id": "a", "socket": "/s"}\n') == {"id": "a", "socket": "/s"}
    assert parse_start_json('notice: building image\n{\n "id": "b"\n}\n') == {"id": "b"}
    assert parse_start_json('{"id": ') is None
    assert parse_start_json("") is None
    argv = start_argv("g", policy="p.lua", env={"X": "1"}, name="n", allow_hosts=["a.com", "b.com"],
                      memory=512, cpus=2, args=["--dns", "open"])
    assert argv == ["g", "start", "--json", "--name", "n", "--policy", "p.lua", "-e", "X=1",
                    "--allow-host", "a.com", "--allow-host", "b.com", "--memory", "512M",
                    "--cpus", "2", "--dns", "open"]
    with pytest.raises(TypeError):
        start_argv("g", allow_hosts="a.com")
    e = start_failed(["g"], 1, "gondolin: warming up\ngondolin: agent.lua:3: unexpected symbol\n")
    assert str(e) == "gondolin: agent.lua:3: unexpected symbol" and e.returncode == 1
    assert str(start_failed(["g"], 2, "")) == "gondolin start: exited with 2"


def test_find_session(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fake_server import write_session

    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    d = tmp_path / "gondolin" / "sessions"
    with pytest.raises(SessionNotFound):
        find_session("nope")
    write_session(str(d), "0123abcd-0000-4000-8000-000000000001", "web", "/s1")
    write_session(str(d), "0123ffff-0000-4000-8000-000000000002", None, "/s2")
    stale = {"id": "dead", "name": "old", "pid": 999999999, "pid_start": 1, "socket": "/s3"}
    (d / "dead.json").write_text(json.dumps(stale))
    assert find_session("web")["socket"] == "/s1"
    assert find_session("0123f")["socket"] == "/s2"
    assert find_session("0123abcd-0000-4000-8000-000000000001")["name"] == "web"
    with pytest.raises(SessionNotFound, match="more than one"):
        find_session("0123")
    with pytest.raises(SessionNotFound):
        find_session("old")  # its supervisor is gone
    assert len(list_sessions()) == 2


def _tar(members: list[tarfile.TarInfo]) -> tarfile.TarFile:
    b = io.BytesIO()
    with tarfile.open(fileobj=b, mode="w") as tf:
        for m in members:
            tf.addfile(m, io.BytesIO(b"x" * m.size) if m.isfile() else None)
    b.seek(0)
    return tarfile.open(fileobj=b, mode="r")


@pytest.mark.parametrize(
    "name,kind,link",
    [("../evil", tarfile.REGTYPE, ""), ("/abs", tarfile.REGTYPE, ""), ("d/l", tarfile.SYMTYPE, "../../x"),
     ("l", tarfile.SYMTYPE, "/etc/passwd"), ("h", tarfile.LNKTYPE, "../x")],
)
def test_unsafe_archive_members_are_refused(tmp_path: Path, name: str, kind: bytes, link: str) -> None:
    m = tarfile.TarInfo(name)
    m.type = kind
    m.linkname = link
    m.size = 1 if kind == tarfile.REGTYPE else 0
    with pytest.raises(GondolinError):
        list(checked_members(_tar([m]), str(tmp_path)))


def test_safe_archive_members(tmp_path: Path) -> None:
    d = tarfile.TarInfo("top")
    d.type = tarfile.DIRTYPE
    d.mode = 0o777
    f = tarfile.TarInfo("top/f")
    f.size = 3
    f.mode = 0o4755
    ln = tarfile.TarInfo("top/l")
    ln.type = tarfile.SYMTYPE
    ln.linkname = "f"
    dev = tarfile.TarInfo("top/dev")
    dev.type = tarfile.CHRTYPE
    got = list(checked_members(_tar([d, f, ln, dev]), str(tmp_path)))
    assert [m.name for m in got] == ["top", "top/f", "top/l"]
    assert got[1].mode == 0o755 and got[0].mode == 0o755
    assert os.path.isdir(tmp_path)
