"""What the sync and asyncio clients share: results, sessions on disk, `gondolin start`
arguments, tar safety."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tarfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from . import __version__
from .errors import ExecError, GondolinError, SessionNotFound, StartError

CLIENT_NAME = f"gondolin-python {__version__}"
MAX_LIVE = 64  # live requests per connection (docs/control.md, Bounds)
DEFAULT_SHELL = ("/bin/bash", "-l")  # what `gondolin bash` runs

Cmd = str | Sequence[str]


@dataclass(frozen=True, slots=True)
class ExecResult:
    """How a command ended. ``stdout``/``stderr`` are empty for a streamed exec."""

    exit_code: int
    stdout: bytes = b""
    stderr: bytes = b""
    signal: int | None = None
    error: str | None = None  # could not be started (exit codes 125..127), or a transfer's error
    cmd: Cmd = field(default="", repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    @property
    def text(self) -> str:
        """stdout decoded as UTF-8 (invalid bytes replaced)."""
        return self.stdout.decode("utf-8", "replace")

    @property
    def stderr_text(self) -> str:
        return self.stderr.decode("utf-8", "replace")

    def check(self) -> ExecResult:
        """Returns self when the exit code is 0, else raises ExecError."""
        if self.exit_code != 0:
            raise ExecError(self.cmd, self.exit_code, self.stdout, self.stderr, self.signal, self.error)
        return self


@dataclass(frozen=True, slots=True)
class OutputChunk:
    """A piece of a streamed exec's output."""

    stream: Literal["stdout", "stderr"]
    data: bytes

    @property
    def text(self) -> str:
        return self.data.decode("utf-8", "replace")


def chunk(stream: int, data: bytes) -> OutputChunk:
    return OutputChunk("stdout" if stream == 0 else "stderr", data)


# ---------------------------------------------------------------------------
# sessions on disk (docs/control.md, "Where sessions live")


def sessions_dir() -> Path:
    """$XDG_RUNTIME_DIR/gondolin/sessions, else $XDG_CACHE_HOME/gondolin/sessions, else
    ~/.cache/gondolin/sessions (as core/control/session.c)."""
    for var in ("XDG_RUNTIME_DIR", "XDG_CACHE_HOME"):
        v = os.environ.get(var)
        if v:
            return Path(v) / "gondolin" / "sessions"
    return Path.home() / ".cache" / "gondolin" / "sessions"


def _proc_start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat; None when there is no such process or it is a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode("ascii", "replace")
    except OSError:
        return None
    rest = stat[stat.rfind(")") + 2 :].split()
    try:
        if rest[0] in ("Z", "X"):  # field 3, the state: exited, not yet reaped
            return None
        return int(rest[19])  # field 22; rest starts at field 3
    except (IndexError, ValueError):
        return None


def session_alive(meta: Mapping[str, Any]) -> bool:
    """The supervisor named in a session's metadata still runs (pid and start time)."""
    pid = meta.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    st = _proc_start_time(pid)
    if st is None:
        return False
    want = meta.get("pid_start")
    return not isinstance(want, int) or want == st


def wait_gone(meta: Mapping[str, Any], timeout: float | None) -> bool:
    """Waits until a session's supervisor has exited; False if it still runs at the timeout."""
    end = None if timeout is None else time.monotonic() + timeout
    while session_alive(meta):
        if end is not None and time.monotonic() >= end:
            return False
        time.sleep(0.02)
    return True


def list_sessions(directory: Path | None = None) -> list[dict[str, Any]]:
    """The metadata of every live session (stale ones are skipped, not removed)."""
    d = directory or sessions_dir()
    out: list[dict[str, Any]] = []
    try:
        names = sorted(os.listdir(d))
    except OSError:
        return out
    for n in names:
        if not n.endswith(".json"):
            continue
        try:
            meta = json.loads((d / n).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(meta, dict) and session_alive(meta):
            meta.setdefault("socket", str(d / (n[:-5] + ".sock")))
            out.append(meta)
    return out


def find_session(ref: str) -> dict[str, Any]:
    """A session's metadata by id, unique id prefix, name, or socket path."""
    if not ref:
        raise SessionNotFound("attach: empty session id or name")
    if "/" in ref or ref.endswith(".sock"):
        p = Path(ref)
        if not p.exists():
            raise SessionNotFound(f"no session socket at {ref}")
        meta: dict[str, Any] = {}
        j = p.with_suffix(".json")
        try:
            m = json.loads(j.read_text())
            if isinstance(m, dict):
                meta = m
        except (OSError, ValueError):
            pass
        meta["socket"] = str(p)
        meta.setdefault("id", p.stem)
        return meta
    d = sessions_dir()
    live = list_sessions(d)
    for m in live:
        if m.get("id") == ref:
            return dict(m)
    named = [m for m in live if m.get("name") == ref]
    if len(named) == 1:
        return named[0]
    if len(named) > 1:
        raise SessionNotFound(f"more than one session is named '{ref}'")
    pre = [m for m in live if str(m.get("id", "")).startswith(ref)]
    if len(pre) == 1:
        return pre[0]
    if len(pre) > 1:
        raise SessionNotFound(f"'{ref}' is the prefix of more than one session id")
    raise SessionNotFound(f"no running session '{ref}' (in {d})")


# ---------------------------------------------------------------------------
# gondolin start


def gondolin_bin(binary: str | None = None) -> str:
    """The gondolin executable: the argument, $GONDOLIN_BIN, or `gondolin` on PATH."""
    b = binary or os.environ.get("GONDOLIN_BIN")
    if b:
        return b
    found = shutil.which("gondolin")
    if not found:
        raise GondolinError("gondolin: executable not found (set GONDOLIN_BIN or put it on PATH)")
    return found


def _mem(v: int | str) -> str:
    return f"{v}M" if isinstance(v, int) else v


def start_argv(
    binary: str,
    *,
    policy: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    name: str | None = None,
    image: str | None = None,
    allow_hosts: Iterable[str] | None = None,
    host_secrets: Iterable[str] | None = None,
    memory: int | str | None = None,
    cpus: int | None = None,
    accel: str | None = None,
    no_network: bool = False,
    plugins: Iterable[str] | None = None,
    args: Iterable[str] | None = None,
    mounts: Mounts | None = None,
    resume: str | os.PathLike[str] | None = None,
    rootfs_mode: str | None = None,
) -> list[str]:
    """`gondolin start --json ...` for these options (memory as int = MiB)."""
    argv = [binary, "start", "--json"]
    if name is not None:
        argv += ["--name", name]
    if image is not None:
        argv += ["--image", image]
    if policy is not None:
        argv += ["--policy", os.fspath(policy)]
    for k, v in (env or {}).items():
        if not k or "=" in k:
            raise ValueError(f"bad environment variable name {k!r}")
        argv += ["-e", f"{k}={v}"]
    if isinstance(allow_hosts, str) or isinstance(host_secrets, str) or isinstance(plugins, str):
        raise TypeError("allow_hosts, host_secrets and plugins are lists of strings")
    for h in allow_hosts or ():
        argv += ["--allow-host", h]
    for s in host_secrets or ():
        argv += ["--host-secret", s]
    for p in plugins or ():
        argv += ["--plugin", p]
    if memory is not None:
        argv += ["--memory", _mem(memory)]
    if cpus is not None:
        argv += ["--cpus", str(cpus)]
    if accel is not None:
        argv += ["--accel", accel]
    if no_network:
        argv.append("--no-network")
    if mounts is not None:
        argv += mounts_argv(mounts)
    if rootfs_mode is not None:
        argv += ["--rootfs-mode", rootfs_mode]
    if resume is not None:
        r = os.fspath(resume)
        argv += ["--resume", os.path.abspath(r) if os.sep in r or r.endswith(".gdsnap") else r]
    argv += list(args or ())
    return argv


def snapshot_fields(
    name: str | None,
    output: str | os.PathLike[str] | None,
    memory: bool = False,
    stop: bool = False,
) -> dict[str, Any]:
    """The REQUEST fields of ``snapshot``."""
    fields: dict[str, Any] = {}
    if stop and not memory:
        raise ValueError("stop= goes with memory=True (a disk checkpoint always stops the session)")
    if memory:
        fields["memory"] = True
    if stop:
        fields["stop"] = True
    if name is not None:
        fields["name"] = name
    if output is not None:
        fields["output"] = os.path.abspath(os.fspath(output))
    return fields


def fork_ids(binary: str, session: str, n: int, name: str | None, timeout: float | None) -> list[str]:
    """Runs ``gondolin fork SESSION -n N --json``: the new sessions' ids, or StartError
    with its stderr."""
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 16:
        raise ValueError(f"fork: n must be an int from 1 to 16, not {n!r}")
    argv = [binary, "fork", session, "-n", str(n), "--json"]
    if name is not None:
        argv += ["--name", name]
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise StartError(f"gondolin fork: no answer within {timeout} s") from None
    except OSError as e:
        raise StartError(f"gondolin fork: cannot run {binary}: {e.strerror or e}") from None
    if r.returncode != 0:
        raise StartError(r.stderr.strip() or f"gondolin fork exited with status {r.returncode}")
    try:
        return [str(o["id"]) for o in json.loads(r.stdout)]
    except (ValueError, KeyError, TypeError):
        raise StartError(f"gondolin fork printed no session list: {r.stdout[:200]!r}") from None


# mounts=: {"/workspace": {"hostfs": DIR, "mode": "ro", "cache": "always"},
# "/src": {"overlay": DIR},
# "/data": {"memory": True, "size": "64M"}, "hide": [".env", "**/*.pem"]}, or a list of
# tuples ("hostfs", DIR, GUEST[, "ro"]), ("overlay", DIR, GUEST), ("memory", GUEST[, SIZE]),
# ("hide", GLOB). Hide globs apply to every host-backed mount (docs/vfs.md).
Mounts = Mapping[str, Any] | Sequence[tuple[str, ...]]


def _host_dir(v: Any) -> str:
    if not isinstance(v, (str, os.PathLike)):
        raise TypeError(f"a mount's host directory must be a path, not {type(v).__name__}")
    return os.path.abspath(os.fspath(v))


def _guest(g: str) -> str:
    if not isinstance(g, str) or not g.startswith("/") or ":" in g:
        raise ValueError(f"a guest mount path must be absolute, without ':': {g!r}")
    return g


def mounts_argv(mounts: Mounts) -> list[str]:
    """The --mount-hostfs / --mount-overlay / --mount-memfs / --hide flags for ``mounts``."""
    out: list[str] = []
    hide: list[str] = []
    if isinstance(mounts, Mapping):
        for guest, spec in mounts.items():
            if guest == "hide":
                if isinstance(spec, str):
                    raise TypeError('mounts["hide"] is a list of globs')
                hide += [str(g) for g in spec]
                continue
            _guest(guest)
            if not isinstance(spec, Mapping):
                raise TypeError(f"mounts[{guest!r}] must be a dict")
            kinds = [k for k in ("hostfs", "overlay", "memory") if spec.get(k)]
            if len(kinds) != 1:
                raise ValueError(f"mounts[{guest!r}]: one of hostfs=, overlay=, memory=")
            unknown = set(spec) - {"hostfs", "overlay", "memory", "mode", "size", "cache"}
            if unknown:
                raise ValueError(f"mounts[{guest!r}]: unknown keys {sorted(unknown)}")
            cache = spec.get("cache", "auto")
            if cache not in ("auto", "always"):
                raise ValueError(f"mounts[{guest!r}]: cache is 'auto' or 'always'")
            if cache != "auto" and kinds[0] == "memory":
                raise ValueError(f"mounts[{guest!r}]: cache applies to hostfs and overlay")
            opt = ":cache=always" if cache == "always" else ""
            if kinds[0] == "hostfs":
                mode = spec.get("mode", "rw")
                if mode not in ("rw", "ro"):
                    raise ValueError(f"mounts[{guest!r}]: mode is 'rw' or 'ro'")
                ro = ":ro" if mode == "ro" else ""
                out += ["--mount-hostfs", f"{_host_dir(spec['hostfs'])}:{guest}{ro}{opt}"]
            elif kinds[0] == "overlay":
                out += ["--mount-overlay", f"{_host_dir(spec['overlay'])}:{guest}{opt}"]
            else:
                size = spec.get("size")
                out += ["--mount-memfs", guest + (f":{_mem(size)}" if size is not None else "")]
    else:
        for t in mounts:
            if not isinstance(t, tuple) or not t:
                raise TypeError("mounts as a list holds tuples such as ('hostfs', DIR, GUEST)")
            kind, rest = t[0], t[1:]
            if kind == "hide" and len(rest) == 1:
                hide.append(str(rest[0]))
            elif kind == "hostfs" and len(rest) in (2, 3):
                if len(rest) == 3 and rest[2] not in ("ro", "rw"):
                    raise ValueError("a hostfs tuple's fourth item is 'ro' or 'rw'")
                ro = ":ro" if len(rest) == 3 and rest[2] == "ro" else ""
                out += ["--mount-hostfs", f"{_host_dir(rest[0])}:{_guest(rest[1])}{ro}"]
            elif kind == "overlay" and len(rest) == 2:
                out += ["--mount-overlay", f"{_host_dir(rest[0])}:{_guest(rest[1])}"]
            elif kind == "memory" and len(rest) in (1, 2):
                size = f":{_mem(rest[1])}" if len(rest) == 2 else ""
                out += ["--mount-memfs", _guest(rest[0]) + size]
            else:
                raise ValueError(f"bad mount tuple {t!r}")
    for g in hide:
        if not g or g.startswith("!"):
            raise ValueError(f"bad hide glob {g!r}")
        out += ["--hide", g]
    return out


@dataclass(frozen=True, slots=True)
class Change:
    """One change of an overlay mount (``Sandbox.diff``): kind "A", "M" or "D"."""

    kind: Literal["A", "M", "D"]
    path: str


def diff_fields(path: str, export: str | os.PathLike[str] | None, whiteouts: bool) -> dict[str, Any]:
    """The fs.diff request's fields."""
    fields: dict[str, Any] = {"path": path}
    if export is not None:
        fields["export"] = os.path.abspath(os.fspath(export))
        fields["whiteouts"] = whiteouts
    return fields


def parse_diff(rep: Mapping[str, Any]) -> list[Change]:
    out: list[Change] = []
    for c in rep.get("changes") or ():
        k = c.get("kind")
        if k in ("A", "M", "D") and isinstance(c.get("path"), str):
            out.append(Change(k, c["path"]))
    if rep.get("truncated"):
        raise GondolinError(
            f"diff: {rep.get('count')} changes, more than one reply holds; use export="
        )
    return out


def parse_start_json(text: str) -> dict[str, Any] | None:
    """The session info printed by `gondolin start --json`, once ``text`` holds all of it."""
    t = text.strip()
    if not t:
        return None
    # the JSON may be preceded by notice lines: try from each line that opens an object
    lines = t.splitlines()
    for i, ln in enumerate(lines):
        if not ln.lstrip().startswith("{"):
            continue
        try:
            v = json.loads("\n".join(lines[i:]))
        except ValueError:
            continue
        if isinstance(v, dict) and isinstance(v.get("id"), str):
            return v
    return None


def start_failed(argv: Sequence[str], rc: int | None, stderr: str, why: str | None = None) -> StartError:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    msg = lines[-1] if lines else why or (f"exited with {rc}" if rc is not None else "failed")
    if why and lines:
        msg = f"{why}: {msg}"
    if not msg.startswith("gondolin"):
        msg = f"gondolin start: {msg}"
    return StartError(msg, returncode=rc, stderr=stderr)


def _merge(meta: Mapping[str, Any], hello: Mapping[str, Any]) -> dict[str, Any]:
    """The session's metadata (ID.json or `start --json`) updated with HELLO's info."""
    out = {**meta, **hello}
    out.pop("ok", None)
    return out


def session_socket(info: Mapping[str, Any]) -> str:
    s = info.get("socket")
    if isinstance(s, str) and s:
        return s
    return str(sessions_dir() / f"{info['id']}.sock")


# ---------------------------------------------------------------------------
# tar (upload/download)


def checked_members(tf: tarfile.TarFile, dest: str) -> Iterator[tarfile.TarInfo]:
    """The members of a tar stream that stay inside dest (what tarfile's 'data' filter
    allows: no absolute or .. names, no links leaving dest, no devices); raises on others."""
    root = os.path.realpath(dest)
    for m in tf:
        name = m.name
        if os.path.isabs(name) or ".." in Path(name).parts:
            raise GondolinError(f"download: unsafe member name {name!r} in the archive")
        target = os.path.realpath(os.path.join(root, name))
        if os.path.commonpath([root, target]) != root:
            raise GondolinError(f"download: member {name!r} leaves {dest}")
        if m.issym() or m.islnk():
            ln = m.linkname
            if os.path.isabs(ln):
                raise GondolinError(f"download: link {name!r} -> {ln!r} is absolute")
            base = os.path.dirname(target) if m.issym() else root
            lt = os.path.realpath(os.path.join(base, ln))
            if os.path.commonpath([root, lt]) != root:
                raise GondolinError(f"download: link {name!r} -> {ln!r} leaves {dest}")
        elif not (m.isfile() or m.isdir()):
            continue  # devices, fifos: skipped
        m.mode &= 0o755  # no setuid/setgid/sticky, no group/other write
        m.uid = m.gid = os.getuid() if hasattr(os, "getuid") else 0
        m.uname = m.gname = ""
        yield m


def extract_all(tf: tarfile.TarFile, dest: str) -> None:
    os.makedirs(dest, exist_ok=True)
    members = checked_members(tf, dest)
    kw: dict[str, Any] = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
    tf.extractall(dest, members=members, numeric_owner=True, **kw)


# read_file's default cap: the guest decides how much it sends, and read_file holds it all
# in memory (read_file_to streams without a cap; max_bytes=None lifts it).
READ_FILE_MAX = 256 << 20


class CappedBuffer(io.BytesIO):
    """read_file's buffer: raises once more than ``cap`` bytes arrive (a hostile guest
    may stream without end), so the transfer is cancelled instead of filling memory."""

    def __init__(self, cap: int | None, path: str) -> None:
        super().__init__()
        if cap is not None and cap < 0:
            raise ValueError("max_bytes must be >= 0")
        self._cap = cap
        self._path = path

    def write(self, b: Any) -> int:
        if self._cap is not None and self.tell() + len(b) > self._cap:
            raise GondolinError(f"read_file {self._path}: more than max_bytes={self._cap} bytes")
        return super().write(b)
