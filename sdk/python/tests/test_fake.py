"""Protocol edges of the clients against an in-process fake server (tests/fake_server.py):
framing split across reads, credit accounting both ways, errors. What a real session
does is tested in test_real.py."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import io
import os
import shutil
import stat
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fake_server import CANCEL, EXEC, RESIZE, SIGNAL, STDIN, WINDOW, FakeServer, write_session
from gondolin import (
    AsyncSandbox,
    ConnectionLost,
    ExecError,
    ExecTimeout,
    GondolinError,
    PolicyError,
    ProtocolError,
    RemoteError,
    Sandbox,
    StartError,
    TransferError,
)


@pytest.fixture
def sockdir() -> Iterator[str]:
    d = tempfile.mkdtemp(prefix="gdf-", dir="/tmp")  # short: unix socket paths are limited
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def server(sockdir: str) -> Iterator[FakeServer]:
    s = FakeServer(os.path.join(sockdir, "s.sock"))
    yield s
    s.close()


@pytest.fixture
def sb(server: FakeServer) -> Iterator[Sandbox]:
    with Sandbox.attach(server.path) as s:
        yield s


def pattern(n: int) -> bytes:
    pat = bytes(range(256)) * 256
    out = bytearray()
    left = n
    while left > 0:
        k = min(left, 50000)
        off = (n - left) % 256
        out += pat[off : off + k]
        left -= k
    return bytes(out)


# -- sync


def test_hello_and_info(sb: Sandbox, server: FakeServer) -> None:
    assert sb.id == "fake-session" and sb.name == "fake"
    assert sb.info()["state"] == "running"
    assert server.history[0][0] == 1  # HELLO first


def test_exec_result_and_check(sb: Sandbox) -> None:
    r = sb.exec(["exit", "3"])
    assert (r.exit_code, r.stdout, r.stderr, r.ok) == (3, b"out\n", b"first\nboom\n", False)
    with pytest.raises(ExecError) as ei:
        sb.exec(["exit", "4"], check=True)
    assert ei.value.exit_code == 4 and ei.value.stdout == b"out\n" and "boom" in str(ei.value)
    r = sb.exec(["notfound"])
    assert r.exit_code == 127 and r.error == "notfound: not found"
    assert sb.exec("echo hi").stdout == b"echo hi\n"  # a string goes as "shell"


def test_large_output_under_a_small_window(sb: Sandbox, server: FakeServer) -> None:
    n = 3 << 20
    r = sb.exec(["gen", str(n), "both"], window=4096)
    assert r.stdout == pattern(n) and r.stderr == pattern(n)
    p = max(server.procs.values(), key=lambda p: p.id)
    # the server never had more than the window outstanding; the client granted it all back
    assert p.sent == [n, n]
    assert n - 4096 <= p.granted[0] <= n + 4096
    assert not server.violations


def test_stream_pauses_the_producer(sb: Sandbox, server: FakeServer) -> None:
    s = sb.exec(["gen", str(1 << 20)], stream=True, window=8192)
    first = next(s)
    assert first.stream == "stdout"
    time.sleep(0.3)  # not consuming: the server may send only what the window allows
    p = server.procs[s.id]
    assert p.sent[0] <= 8192 + len(first.data)  # the window plus what was consumed
    total = len(first.data) + sum(len(c.data) for c in s)
    assert total == 1 << 20
    assert s.result.exit_code == 0 and s.result.stdout == b""


def test_stdin_respects_credit(sockdir: str) -> None:
    server = FakeServer(os.path.join(sockdir, "t.sock"), stdin_grant=1000)
    try:
        with Sandbox.attach(server.path) as sb:
            data = os.urandom(300000)
            r = sb.exec(["cat"], stdin=data)
            assert r.stdout == data
            r = sb.exec(["cat"], stdin=io.BytesIO(data[:5000]))
            assert r.stdout == data[:5000]
            assert sb.exec(["cat"], stdin=b"").stdout == b""
            assert sb.exec(["cat"], stdin="héllo").stdout == "héllo".encode()
        assert not server.violations
        sizes = [len(b) for t, _, _, b in server.history if t == STDIN]
        assert max(sizes) <= 1000
    finally:
        server.close()


def test_interactive_stdin(sb: Sandbox) -> None:
    with sb.exec(["cat"], stdin=True, stream=True) as s:
        s.write(b"one\n")
        assert next(s).data == b"one\n"
        s.write("two\n")
        assert next(s).data == b"two\n"
        s.close_stdin()
        assert list(s) == []
        assert s.result.exit_code == 0
        with pytest.raises(GondolinError):
            s.write(b"late")


def test_stream_check_raises_at_the_end(sb: Sandbox) -> None:
    s = sb.exec(["exit", "5"], stream=True, check=True)
    chunks = []
    with pytest.raises(ExecError) as ei:
        for c in s:
            chunks.append(c)
    assert ei.value.exit_code == 5 and chunks


def test_concurrent_execs_on_one_connection(sb: Sandbox) -> None:
    results: dict[int, bytes] = {}
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            results[i] = sb.exec(["gen", str(10000 + i * 997)], window=2048).stdout
        except BaseException as e:  # pragma: no cover
            errors.append(e)

    ts = [threading.Thread(target=run, args=(i,)) for i in range(80)]  # more than 64 live
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert not errors
    assert all(results[i] == pattern(10000 + i * 997) for i in range(80))


def test_split_frames(sockdir: str) -> None:
    server = FakeServer(os.path.join(sockdir, "sp.sock"), split=True)
    try:
        with Sandbox.attach(server.path) as sb:
            assert sb.exec(["gen", "70000"]).stdout == pattern(70000)
            assert sb.logs() == "line 1\nline 2\nline 3\nline 4\nline 5\n"
    finally:
        server.close()


def test_timeout_cancels(sb: Sandbox, server: FakeServer) -> None:
    with pytest.raises(ExecTimeout) as ei:
        sb.exec(["sleep"], timeout=0.3)
    e = ei.value
    assert isinstance(e, TimeoutError) and e.stdout == b"sleeping\n" and e.signal == 1
    assert any(t == CANCEL for t, _, _, _ in server.history)
    assert sb.exec(["exit", "0"]).ok  # the connection is still fine


def test_signal_resize_cancel(sb: Sandbox, server: FakeServer) -> None:
    s = sb.exec(["sleep"], stream=True)
    assert next(s).data == b"sleeping\n"
    s.resize(30, 100)
    s.signal(15)
    r = s.wait(5)
    assert r.exit_code == 143 and r.signal == 15
    assert server.procs[s.id].resizes == [(30, 100)] and server.procs[s.id].signals == [15]
    s2 = sb.exec(["sleep"], stream=True)
    s2.close()  # hangs it up
    assert s2.result.signal == 1


def test_shell(sb: Sandbox, server: FakeServer) -> None:
    with sb.shell(rows=10, cols=40) as sh:
        sh.write("echo hi\n")
        assert sh.read_until("hi\n", timeout=5) == b"echo hi\n"
        assert sh.read(timeout=0.1) == b""  # nothing more: timeout gives b""
        sh.resize(20, 50)
        sh.write(b"abc")
        assert sh.read(timeout=5) == b"abc"
        assert sh.alive
    assert not sh.alive and sh.exit_code == 129
    body = [b for t, _, _, b in server.history if t == EXEC][-1]
    assert b'"pty":true' in body and b'"rows":10' in body and b"TERM=xterm-256color" in body


def test_files(sb: Sandbox, server: FakeServer, tmp_path: Path) -> None:
    big = os.urandom(3 << 20)
    sb.write_file("/tmp/big", big, mode=0o600)
    assert server.files["/tmp/big"] == big
    assert sb.read_file("/tmp/big") == big
    sb.write_file("/tmp/s", "text")
    assert sb.read_file("/tmp/s") == b"text"
    sb.write_file("/tmp/f", io.BytesIO(b"from a file"))
    assert sb.read_file("/tmp/f") == b"from a file"
    dest = tmp_path / "copy"
    assert sb.read_file_to("/tmp/big", dest) == len(big)
    assert dest.read_bytes() == big
    with pytest.raises(TransferError) as ei:
        sb.read_file("/nope")
    assert ei.value.exit_code == 1 and "No such file" in str(ei.value)


def test_upload_download_roundtrip(sb: Sandbox, server: FakeServer, tmp_path: Path) -> None:
    src = tmp_path / "proj"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("a")
    (src / "sub" / "b.bin").write_bytes(os.urandom(100000))
    (src / "run.sh").write_text("#!/bin/sh\n")
    (src / "run.sh").chmod(0o755)
    os.symlink("a.txt", src / "link")
    sb.upload(src, "/work")
    tar = server.files["/work"]  # the fake keeps the tar stream as is
    server.files["/work/proj"] = tar
    out = sb.download("/work/proj", tmp_path / "back")
    assert out == str(tmp_path / "back" / "proj")
    back = Path(out)
    assert (back / "a.txt").read_text() == "a"
    assert (back / "sub" / "b.bin").read_bytes() == (src / "sub" / "b.bin").read_bytes()
    assert os.readlink(back / "link") == "a.txt"
    assert stat.S_IMODE((back / "run.sh").stat().st_mode) == 0o755


def test_requests(sb: Sandbox, server: FakeServer) -> None:
    assert sb.policy_reload()["revision"] == "r2"
    server.policy_error = "agent.lua:3: unexpected symbol"
    with pytest.raises(PolicyError, match="agent.lua:3: unexpected symbol"):
        sb.policy_reload()
    assert sb.logs(2) == "line 4\nline 5\n"
    with sb.follow_logs(1) as tail:
        assert [tail.next(5), tail.next(5), tail.next(5)] == ["line 5", "new 1", "new 2"]
        assert tail.next(0.1) is None
    with pytest.raises(RemoteError, match="unknown op 'bogus'"):
        sb.request("bogus")
    server.request_error_ops.add("info")
    with pytest.raises(RemoteError, match="info failed"):
        sb.info()
    assert sb.exec(["exit", "0"]).ok  # an ERROR for one id leaves the others alone


def test_server_overrunning_credit_is_a_protocol_error(sb: Sandbox, server: FakeServer) -> None:
    server.overrun = True
    with pytest.raises(ProtocolError, match="beyond the granted credit"):
        sb.exec(["gen", "100000"], window=1000)
    assert sb.closed
    with pytest.raises(ProtocolError):
        sb.exec(["exit", "0"])


def test_connection_lost_mid_exec(sb: Sandbox, server: FakeServer) -> None:
    server.drop_after_started = True
    with pytest.raises(ConnectionLost, match="closed the connection"):
        sb.exec(["sleep"])
    assert sb.closed
    sb.close()  # nothing to stop: no error


def test_connection_error_frame(sockdir: str) -> None:
    server = FakeServer(os.path.join(sockdir, "b.sock"))
    server.conn_error = "too many connections"
    try:
        with pytest.raises(RemoteError, match="too many connections") as ei:
            Sandbox.attach(server.path)  # ERROR right behind HELLO
        assert ei.value.code == "busy"
        server.conn_error_delay = 0.2
        sb = Sandbox.attach(server.path)
        with pytest.raises(RemoteError, match="too many connections") as ei:
            sb.exec(["sleep"])
        assert ei.value.code == "busy"
        sb.close()
    finally:
        server.close()


def test_attach_by_name_and_stop(sockdir: str, server: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", sockdir)
    write_session(os.path.join(sockdir, "gondolin", "sessions"), "11111111-2222-4333-8444-555555555555",
                  "web", server.path, server.sup.pid)
    sb = Sandbox.attach("web")
    assert sb.exec(["exit", "0"]).ok
    sb.close()  # attached: no stop
    assert not server.stopped.is_set()
    with Sandbox.attach("1111", stop_on_close=True) as sb2:
        assert sb2.info()["ok"]
    assert server.stopped.is_set()


def fake_bin(dirpath: str, script: str) -> str:
    p = os.path.join(dirpath, "gondolin")
    with open(p, "w") as f:
        f.write("#!/bin/sh\n" + script)
    os.chmod(p, 0o755)
    return p


def test_create_runs_gondolin_start(sockdir: str, server: FakeServer) -> None:
    args = os.path.join(sockdir, "args")
    b = fake_bin(sockdir, f'echo "$@" > {args}\necho "gondolin: booting" >&2\n'
                 f'printf \'{{"id": "fake-session", "socket": "{server.path}"}}\\n\'\n')
    with Sandbox.create(policy="p.lua", env={"A": "1"}, memory="2G", binary=b) as sb:
        assert sb.exec(["exit", "0"]).ok
    assert server.stopped.is_set()  # created: close stops it
    assert open(args).read().split() == ["start", "--json", "--policy", "p.lua", "-e", "A=1", "--memory", "2G"]


def test_forgotten_created_session_is_stopped(sockdir: str, server: FakeServer) -> None:
    b = fake_bin(sockdir, f'printf \'{{"id": "fake-session", "socket": "{server.path}"}}\\n\'\n')
    sb = Sandbox.create(binary=b)
    sb.detach()  # kept running
    assert not server.stopped.is_set()
    sb = Sandbox.create(binary=b)
    assert sb.exec(["exit", "0"]).ok
    del sb  # never closed: the finalizer stops it
    import gc

    gc.collect()
    assert server.stopped.wait(5)


def test_create_failure_is_one_line(sockdir: str, monkeypatch: pytest.MonkeyPatch) -> None:
    b = fake_bin(sockdir, 'echo "gondolin: loading"  >&2\necho "gondolin: agent.lua:3: bad" >&2\nexit 2\n')
    monkeypatch.setenv("GONDOLIN_BIN", b)
    with pytest.raises(StartError) as ei:
        Sandbox.create()
    assert str(ei.value) == "gondolin: agent.lua:3: bad" and ei.value.returncode == 2
    with pytest.raises(StartError, match="cannot run"):
        Sandbox.create(binary=os.path.join(sockdir, "missing"))
    # a start that keeps its stdout open and says nothing: the timeout
    b2 = fake_bin(sockdir, "sleep 30\n")
    t0 = time.monotonic()
    with pytest.raises(StartError, match="no session info within"):
        Sandbox.create(binary=b2, timeout=0.5)
    assert time.monotonic() - t0 < 10


# -- asyncio


def arun(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def test_async_exec_stream_and_concurrency(server: FakeServer) -> None:
    async def main() -> None:
        async with await AsyncSandbox.attach(server.path) as sb:
            r = await sb.exec(["exit", "3"])
            assert (r.exit_code, r.stdout) == (3, b"out\n")
            with pytest.raises(ExecError):
                await sb.exec(["exit", "3"], check=True)
            s = await sb.exec(["gen", str(1 << 20)], stream=True, window=4096)
            got = bytearray()
            async for c in s:
                got += c.data
            assert bytes(got) == pattern(1 << 20) and s.result.ok
            outs = await asyncio.gather(*[sb.exec(["gen", str(5000 + i)], window=1024) for i in range(70)])
            assert all(o.stdout == pattern(5000 + i) for i, o in enumerate(outs))
            data = os.urandom(200000)
            assert (await sb.exec(["cat"], stdin=data)).stdout == data

            async def agen() -> object:
                for i in range(5):
                    yield b"x%d" % i

            assert (await sb.exec(["cat"], stdin=agen())).stdout == b"x0x1x2x3x4"  # type: ignore[arg-type]
            with pytest.raises(ExecTimeout):
                await sb.exec(["sleep"], timeout=0.2)
            assert (await sb.info())["ok"]

    arun(main())
    assert not server.violations


def test_async_shell_files_logs(server: FakeServer, tmp_path: Path) -> None:
    async def main() -> None:
        async with await AsyncSandbox.attach(server.path) as sb:
            sh = await sb.shell()
            await sh.write("pwd\n")
            assert await sh.read_until(b"pwd\n", timeout=5) == b"pwd\n"
            assert await sh.read(timeout=0.05) == b""
            await sh.close()
            assert sh.exit_code == 129
            big = os.urandom(2 << 20)
            await sb.write_file("/x", big)
            assert await sb.read_file("/x") == big
            with pytest.raises(TransferError):
                await sb.read_file("/missing")
            src = tmp_path / "d"
            src.mkdir()
            (src / "f").write_text("F")
            await sb.upload(src, "/up")
            server.files["/up/d"] = server.files["/up"]
            back = await sb.download("/up/d", tmp_path / "back")
            assert (Path(back) / "f").read_text() == "F"
            assert await sb.logs(1) == "line 5\n"
            tail = await sb.follow_logs(0)
            assert [await tail.next(5), await tail.next(5)] == ["new 1", "new 2"]
            await tail.aclose()
            server.policy_error = "p.lua:1: x"
            with pytest.raises(PolicyError):
                await sb.policy_reload()

    arun(main())


def test_async_errors(sockdir: str, server: FakeServer) -> None:
    async def main() -> None:
        sb = await AsyncSandbox.attach(server.path)
        server.overrun = True
        with pytest.raises(ProtocolError):
            await sb.exec(["gen", "5000"], window=100)
        assert sb.closed
        await sb.close()
        server.overrun = False
        server.drop_after_started = True
        sb = await AsyncSandbox.attach(server.path)
        with pytest.raises(ConnectionLost):
            await sb.exec(["sleep"])
        await sb.close()
        b = fake_bin(sockdir, 'echo "gondolin: no KVM and no TCG" >&2\nexit 125\n')
        with pytest.raises(StartError, match="no KVM and no TCG"):
            await AsyncSandbox.create(binary=b)

    arun(main())


def test_read_file_max_bytes(sb: Sandbox, server: FakeServer) -> None:
    """a guest may send without end: read_file(max_bytes=) cancels instead of buffering"""
    big = os.urandom(3 << 20)
    sb.write_file("/tmp/big", big)
    assert sb.read_file("/tmp/big", max_bytes=len(big)) == big
    with pytest.raises(GondolinError, match="max_bytes"):
        sb.read_file("/tmp/big", max_bytes=1 << 20)
    assert sb.read_file("/tmp/big") == big  # the connection is still good
    # without max_bytes a cap still holds (256 MiB); None lifts it
    assert sb.read_file("/tmp/big", max_bytes=None) == big
    for fn in (Sandbox.read_file, AsyncSandbox.read_file):
        assert inspect.signature(fn).parameters["max_bytes"].default == 256 << 20

    async def main() -> None:
        async with await AsyncSandbox.attach(server.path) as asb:
            with pytest.raises(GondolinError, match="max_bytes"):
                await asb.read_file("/tmp/big", max_bytes=1000)
            assert await asb.read_file("/tmp/big", max_bytes=len(big)) == big

    asyncio.run(main())
