"""The SDK against real sessions: `gondolin start` boots real VMs (TCG where KVM is not
usable). Skipped, with the reason, when the gondolin binary has no `start` command.

The binary: $GONDOLIN_BIN, else build/gondolin of this repository, else `gondolin` on PATH
(run_tests.sh BUILD_DIR sets GONDOLIN_BIN).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from gondolin import (
    AsyncSandbox,
    ConnectionLost,
    ExecError,
    ExecTimeout,
    GondolinError,
    PolicyError,
    Sandbox,
    SessionNotFound,
    StartError,
    TransferError,
)
from gondolin._common import find_session

REPO = Path(__file__).resolve().parents[3]


def _binary() -> str | None:
    b = os.environ.get("GONDOLIN_BIN")
    if b:
        return b
    local = REPO / "build" / "gondolin"
    if local.exists():
        return str(local)
    return shutil.which("gondolin")


def _why_skip() -> str | None:
    b = _binary()
    if b is None:
        return "no gondolin binary (set GONDOLIN_BIN, or build it: bash scripts/build.sh)"
    try:
        p = subprocess.run([b, "start", "--help"], capture_output=True, timeout=30)
    except OSError as e:
        return f"{b}: {e}"
    if p.returncode != 0:
        line = (p.stderr or p.stdout).decode(errors="replace").strip().splitlines()
        return f"`{b} start --help` fails ({line[-1] if line else p.returncode}): no session support"
    return None


SKIP = _why_skip()
if SKIP is not None:
    pytest.skip(SKIP, allow_module_level=True)
os.environ["GONDOLIN_BIN"] = _binary() or ""


def uniq(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def sb() -> Iterator[Sandbox]:
    """One warm session for the tests that do not stop or break it."""
    with Sandbox.create(name=uniq("sdk-test"), env={"FROM_CREATE": "yes"}) as s:
        yield s


@pytest.fixture
def tmpdir_short() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="gdr-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


# -- exec


def test_exec_string_list_env_cwd(sb: Sandbox) -> None:
    r = sb.exec("uname -a")
    assert r.ok and r.text.startswith("Linux"), r
    r = sb.exec(["sh", "-c", 'echo "$0 $1"', "a", "b c"])
    assert r.stdout == b"a b c\n"
    r = sb.exec(["sh", "-c", "echo $X $FROM_CREATE; pwd"], env={"X": "1"}, cwd="/tmp")
    assert r.stdout == b"1 yes\n/tmp\n"
    r = sb.exec("echo out; echo err >&2")
    assert (r.stdout, r.stderr) == (b"out\n", b"err\n")


def test_exit_codes_and_errors(sb: Sandbox) -> None:
    assert sb.exec("exit 3").exit_code == 3
    with pytest.raises(ExecError) as ei:
        sb.exec("echo partial; echo 'it broke' >&2; exit 4", check=True)
    e = ei.value
    assert (e.exit_code, e.stdout, e.stderr) == (4, b"partial\n", b"it broke\n")
    assert str(e).endswith("exited with 4: it broke") and "\n" not in str(e)
    r = sb.exec(["/no/such/program"])
    assert r.exit_code == 127 and r.error, r
    r = sb.exec("kill -9 $$")
    assert (r.exit_code, r.signal) == (137, 9)


def test_stdin(sb: Sandbox) -> None:
    data = os.urandom(3 << 20)
    r = sb.exec(["sha256sum"], stdin=data)
    assert r.text.split()[0] == hashlib.sha256(data).hexdigest()
    assert sb.exec(["cat"], stdin=b"").stdout == b""
    assert sb.exec(["wc", "-c"], stdin="héllo").text.strip() == "6"


def test_streaming_arrives_as_it_is_written(sb: Sandbox) -> None:
    # the process waits for a file that is made only after its first line was seen here:
    # output is streamed, not held until the end (no timing involved)
    go = f"/tmp/go-{uuid.uuid4().hex[:6]}"
    s = sb.exec(["sh", "-c", f"echo first; while [ ! -e {go} ]; do sleep 0.05; done; echo second; echo e >&2"],
                stream=True)
    it = iter(s)
    c = next(it)
    assert (c.stream, c.data) == ("stdout", b"first\n")
    assert s.pid is not None and not s.done
    sb.exec(["touch", go], check=True)  # another exec on the same connection meanwhile
    rest: dict[str, bytes] = {"stdout": b"", "stderr": b""}
    for c in it:
        rest[c.stream] += c.data
    assert rest == {"stdout": b"second\n", "stderr": b"e\n"}
    assert s.result.exit_code == 0


def test_large_output_and_slow_consumer(sb: Sandbox) -> None:
    n = 24 << 20
    r = sb.exec(f"head -c {n} /dev/zero; head -c 1000 /dev/zero >&2")
    assert len(r.stdout) == n and len(r.stderr) == 1000
    s = sb.exec(["sh", "-c", "head -c 4000000 /dev/urandom >/tmp/slow; sha256sum </tmp/slow >&2; cat /tmp/slow"], stream=True)
    got = bytearray()
    err = bytearray()
    for i, c in enumerate(s):
        if i < 5:
            time.sleep(0.2)  # a consumer that lags: the window pauses the producer
        (got if c.stream == "stdout" else err).extend(c.data)
    assert len(got) == 4000000 and hashlib.sha256(got).hexdigest() == err.split()[0].decode()


def test_interactive_stdin_stream(sb: Sandbox) -> None:
    with sb.exec(["cat"], stdin=True, stream=True) as s:
        s.write(b"ping\n")
        first = next(s)
        assert first.data == b"ping\n"
        s.close_stdin()
        assert list(s) == []
    assert s.result.ok


def test_timeout_hangs_up(sb: Sandbox) -> None:
    t0 = time.monotonic()
    with pytest.raises(ExecTimeout) as ei:
        sb.exec("echo started; sleep 60", timeout=1.5)
    assert time.monotonic() - t0 < 15
    assert ei.value.stdout == b"started\n"
    assert sb.exec("true").ok


def test_concurrent_execs(sb: Sandbox) -> None:
    results: dict[int, str] = {}
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            results[i] = sb.exec(f"sleep 0.$(( {i} % 5 )); echo {i}", check=True).text
        except BaseException as e:  # pragma: no cover
            errors.append(e)

    streaming = sb.exec("for i in $(seq 1 20); do echo $i; sleep 0.1; done", stream=True)
    ts = [threading.Thread(target=run, args=(i,)) for i in range(16)]
    for t in ts:
        t.start()
    lines = b"".join(c.data for c in streaming).split()
    for t in ts:
        t.join(120)
    assert not errors, errors
    assert results == {i: f"{i}\n" for i in range(16)}
    assert lines == [str(i).encode() for i in range(1, 21)]


# -- shell


def test_shell(sb: Sandbox) -> None:
    with sb.shell(rows=24, cols=80) as sh:
        sh.write("echo $((6*7))-marker\n")
        assert b"42-marker" in sh.read_until("42-marker", timeout=30)
        sh.resize(30, 100)
        sh.write("stty size\n")
        assert b"30 100" in sh.read_until("30 100", timeout=30)
        sh.write("cd /tmp && pwd\n")
        sh.read_until("/tmp\r\n", timeout=30)
        sh.write("exit 3\n")
        assert sh.wait(30) == 3
    assert sh.exit_code == 3 and not sh.alive


def test_shell_close_hangs_up(sb: Sandbox) -> None:
    sh = sb.shell(["sh"])
    sh.write("echo hi\n")
    sh.read_until("hi", timeout=30)
    sh.close()
    assert sh.exit_code is not None and not sh.alive


# -- files


def test_write_read_file(sb: Sandbox) -> None:
    sb.write_file("/tmp/x.txt", b"hello\n", mode=0o640)
    assert sb.read_file("/tmp/x.txt") == b"hello\n"
    assert sb.exec(["stat", "-c", "%a", "/tmp/x.txt"]).text.strip() == "640"
    sb.write_file("/tmp/s.txt", "text é")
    assert sb.exec(["cat", "/tmp/s.txt"]).stdout == "text é".encode()
    with pytest.raises(TransferError) as ei:
        sb.read_file("/tmp/does-not-exist")
    assert ei.value.exit_code != 0 and "No such file" in str(ei.value)


def test_large_file(sb: Sandbox, tmpdir_short: Path) -> None:
    n = 40 << 20
    data = os.urandom(n)
    src = tmpdir_short / "big"
    src.write_bytes(data)
    with open(src, "rb") as f:
        sb.write_file("/tmp/big", f)
    digest = hashlib.sha256(data).hexdigest()
    assert sb.exec(["sha256sum", "/tmp/big"]).text.split()[0] == digest
    dest = tmpdir_short / "back"
    assert sb.read_file_to("/tmp/big", dest) == n
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == digest
    assert hashlib.sha256(sb.read_file("/tmp/big")).hexdigest() == digest


def test_upload_download_tree(sb: Sandbox, tmpdir_short: Path) -> None:
    src = tmpdir_short / "proj"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("a\n")
    (src / "sub" / "b.bin").write_bytes(os.urandom(300000))
    (src / "run.sh").write_text("#!/bin/sh\necho ran\n")
    (src / "run.sh").chmod(0o755)
    os.symlink("a.txt", src / "link")
    sb.upload(src, "/tmp/up")
    assert sb.exec(["/tmp/up/proj/run.sh"]).stdout == b"ran\n"
    assert sb.exec(["readlink", "/tmp/up/proj/link"]).stdout == b"a.txt\n"
    h = hashlib.sha256((src / "sub" / "b.bin").read_bytes()).hexdigest()
    assert sb.exec(["sha256sum", "/tmp/up/proj/sub/b.bin"]).text.split()[0] == h
    sb.exec("echo new > /tmp/up/proj/made-in-guest", check=True)
    back = Path(sb.download("/tmp/up/proj", tmpdir_short / "back"))
    assert (back / "made-in-guest").read_text() == "new\n"
    assert (back / "sub" / "b.bin").read_bytes() == (src / "sub" / "b.bin").read_bytes()
    assert os.readlink(back / "link") == "a.txt"
    assert stat.S_IMODE((back / "run.sh").stat().st_mode) == 0o755
    one = sb.download("/tmp/up/proj/a.txt", tmpdir_short / "single")
    assert Path(one).read_text() == "a\n"
    with pytest.raises(GondolinError):
        sb.download("/tmp/nothing-here", tmpdir_short / "none")


# -- requests and sessions


def test_info_logs_status(sb: Sandbox) -> None:
    info = sb.info()
    assert info["ok"] and info["id"] == sb.id and info.get("state") == "running"
    assert sb.name and info.get("name") == sb.name
    assert isinstance(sb.logs(50), str)
    st = sb.policy_status()
    assert st["ok"]


def test_attach(sb: Sandbox) -> None:
    for ref in (sb.id, sb.name or "", sb.id[:8]):
        with Sandbox.attach(ref) as other:
            assert other.id == sb.id
            assert other.exec("echo $FROM_CREATE").stdout == b"yes\n"
    assert sb.exec("true").ok  # closing an attached client leaves the session running
    with pytest.raises(SessionNotFound):
        Sandbox.attach("no-such-session-" + uuid.uuid4().hex)


def test_async(sb: Sandbox, tmpdir_short: Path) -> None:
    async def main() -> None:
        async with await AsyncSandbox.attach(sb.id) as a:
            r = await a.exec("echo async")
            assert r.stdout == b"async\n"
            with pytest.raises(ExecError) as ei:
                await a.exec("exit 9", check=True)
            assert ei.value.exit_code == 9
            s = await a.exec(["sh", "-c", "for i in 1 2 3; do echo $i; done"], stream=True)
            out = b"".join([c.data async for c in s])
            assert out == b"1\n2\n3\n" and s.result.ok
            rs = await asyncio.gather(*[a.exec(f"echo {i}") for i in range(12)])
            assert [x.text for x in rs] == [f"{i}\n" for i in range(12)]
            data = os.urandom(5 << 20)
            await a.write_file("/tmp/async.bin", data)
            assert await a.read_file("/tmp/async.bin") == data
            sh = await a.shell(["sh"])
            await sh.write("echo $((2+3))x\n")
            assert b"5x" in await sh.read_until("5x", timeout=30)
            await sh.write("exit 0\n")
            assert await sh.wait(30) == 0
            with pytest.raises(ExecTimeout):
                await a.exec("sleep 60", timeout=1)
            assert (await a.info())["id"] == sb.id

    asyncio.run(main())


def test_create_errors_are_one_line(tmpdir_short: Path) -> None:
    with pytest.raises(StartError) as ei:
        Sandbox.create(policy=str(tmpdir_short / "missing.lua"))
    assert "missing.lua" in str(ei.value) and "\n" not in str(ei.value)
    bad = tmpdir_short / "bad.lua"
    bad.write_text("return {\n  allow = { 'x.com'\n  'y.com' },\n}\n")
    with pytest.raises(StartError) as ei:
        Sandbox.create(policy=str(bad))
    assert "bad.lua:" in str(ei.value) and "\n" not in str(ei.value)


def test_policy_reload(tmpdir_short: Path) -> None:
    pol = tmpdir_short / "p.lua"
    pol.write_text('return { allow = { "example.com" } }\n')
    with Sandbox.create(policy=str(pol), name=uniq("sdk-pol")) as s:
        rev1 = s.policy_status()["revision"]
        pol.write_text('return { allow = { "example.com", "example.org" } }\n')
        rep = s.policy_reload()
        assert rep["ok"] and rep["revision"] != rev1
        pol.write_text("return { allow = { oops\n")
        with pytest.raises(PolicyError) as ei:
            s.policy_reload()
        assert "p.lua:" in str(ei.value)
        assert s.policy_status()["revision"] == rep["revision"]  # the old one stays
        assert s.exec("true").ok


def test_close_stops_and_lost_connection() -> None:
    name = uniq("sdk-stop")
    s = Sandbox.create(name=name, memory=512)
    sid = s.id
    assert find_session(sid)["id"] == sid
    s.close()
    with pytest.raises(SessionNotFound):
        find_session(sid)
    with pytest.raises(GondolinError):
        s.exec("true")

    s2 = Sandbox.create(name=uniq("sdk-kill"), memory=512)
    try:
        other = Sandbox.attach(s2.id)
        other.stop()  # another client stops it: this one's socket goes away
        with pytest.raises(GondolinError) as ei:
            s2.exec("sleep 5")
        assert isinstance(ei.value, (ConnectionLost, GondolinError)) and "\n" not in str(ei.value)
    finally:
        s2.close()

    s3 = Sandbox.create(name=uniq("sdk-sigkill"), memory=512)
    try:
        st = s3.exec("sleep 60", stream=True)
        pid = s3.session["pid"]
        os.kill(pid, signal.SIGKILL)  # the supervisor dies under a running exec
        with pytest.raises(ConnectionLost):
            st.wait(30)
    finally:
        s3.close()


def test_async_create_and_close() -> None:
    async def main() -> str:
        async with await AsyncSandbox.create(name=uniq("sdk-async"), memory=512) as a:
            assert (await a.exec("echo hi")).stdout == b"hi\n"
            return a.id

    sid = asyncio.run(main())
    with pytest.raises(SessionNotFound):
        find_session(sid)


def test_mounts_and_diff(tmpdir_short: Path) -> None:
    """mounts= reaches the guest: a hostfs mount read-write, an overlay whose changes
    diff() lists while the host directory stays as it was, and a hidden .env."""
    rw = tmpdir_short / "rw"
    ov = tmpdir_short / "ov"
    rw.mkdir()
    ov.mkdir()
    (ov / "a.txt").write_text("a\n")
    (ov / ".env").write_text("TOKEN=x\n")
    with Sandbox.create(
        name=uniq("sdk-mounts"),
        memory=512,
        mounts={"/rw": {"hostfs": str(rw)}, "/src": {"overlay": str(ov)}, "hide": [".env"]},
    ) as s:
        s.exec("echo from-guest > /rw/g.txt; echo b >> /src/a.txt; echo n > /src/new.txt",
               check=True)
        assert s.exec("ls -A /src").stdout == b"a.txt\nnew.txt\n"
        changes = s.diff("/src")
        assert [(c.kind, c.path) for c in changes] == [("M", "/src/a.txt"), ("A", "/src/new.txt")]
    assert (rw / "g.txt").read_text() == "from-guest\n"
    assert (ov / "a.txt").read_text() == "a\n" and not (ov / "new.txt").exists()
