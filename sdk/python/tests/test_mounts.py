"""mounts= of Sandbox.create (the CLI flags it becomes) and Sandbox.diff against the fake
server."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest

from fake_server import FakeServer
from gondolin import AsyncSandbox, Change, Sandbox, mounts_argv
from gondolin._common import start_argv
from gondolin.errors import RemoteError


def test_mounts_dict() -> None:
    argv = mounts_argv(
        {
            "/workspace": {"hostfs": "/src", "mode": "ro"},
            "/w2": {"hostfs": "/src"},
            "/data": {"memory": True, "size": "64M"},
            "/m": {"memory": True, "size": 8},
            "/src": {"overlay": "/proj"},
            "/w3": {"hostfs": "/src", "mode": "ro", "cache": "always"},
            "/o2": {"overlay": "/proj", "cache": "always"},
            "hide": [".env", "**/*.pem"],
        }
    )
    assert argv == [
        "--mount-hostfs", "/src:/workspace:ro",
        "--mount-hostfs", "/src:/w2",
        "--mount-memfs", "/data:64M",
        "--mount-memfs", "/m:8M",
        "--mount-overlay", "/proj:/src",
        "--mount-hostfs", "/src:/w3:ro:cache=always",
        "--mount-overlay", "/proj:/o2:cache=always",
        "--hide", ".env", "--hide", "**/*.pem",
    ]  # fmt: skip


def test_mounts_tuples_and_relative_dirs() -> None:
    argv = mounts_argv([("overlay", ".", "/w"), ("memory", "/tmpfs"), ("hide", ".env")])
    assert argv == ["--mount-overlay", f"{os.getcwd()}:/w", "--mount-memfs", "/tmpfs", "--hide", ".env"]
    assert start_argv("g", mounts=[("memory", "/x", "1G")])[-2:] == ["--mount-memfs", "/x:1G"]


@pytest.mark.parametrize(
    "bad",
    [
        {"w": {"memory": True}},
        {"/w": {"hostfs": "/a", "overlay": "/b"}},
        {"/w": {"hostfs": "/a", "mode": "x"}},
        {"/w": {"hostfs": "/a", "colour": 1}},
        {"/w": {"hostfs": "/a", "cache": "never"}},
        {"/w": {"memory": True, "cache": "always"}},
        {"hide": "!x"},
        [("hostfs", "/a")],
        [("hide", "!x")],
    ],
)
def test_mounts_refused(bad: object) -> None:
    with pytest.raises((ValueError, TypeError)):
        mounts_argv(bad)  # type: ignore[arg-type]


@pytest.fixture
def server() -> Iterator[FakeServer]:
    d = tempfile.mkdtemp(prefix="gdf-", dir="/tmp")
    s = FakeServer(os.path.join(d, "s.sock"))
    yield s
    s.close()
    shutil.rmtree(d, ignore_errors=True)


def test_diff(server: FakeServer, tmp_path: object) -> None:
    with Sandbox.attach(server.path) as sb:
        assert sb.diff("/workspace") == [Change("A", "/workspace/new"), Change("D", "/workspace/old")]
        out = os.path.join(str(tmp_path), "x.tar")
        sb.diff("/workspace", export=out)
        assert open(out, "rb").read() == b"tar"
        with pytest.raises(RemoteError):
            sb.diff("/elsewhere")


def test_diff_async(server: FakeServer) -> None:
    async def go() -> list[Change]:
        async with await AsyncSandbox.attach(server.path) as sb:
            return await sb.diff()

    assert [c.kind for c in asyncio.run(go())] == ["A", "D"]
