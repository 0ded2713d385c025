"""Exceptions raised by the gondolin SDK.

Every exception is a :class:`GondolinError`; its message is one line that says what
failed and why (the stderr of ``gondolin start``, the server's error, the lost socket).
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "GondolinError",
    "GondolinTimeout",
    "StartError",
    "SessionNotFound",
    "ConnectionLost",
    "ProtocolError",
    "RemoteError",
    "PolicyError",
    "ExecError",
    "ExecTimeout",
    "TransferError",
]


class GondolinError(Exception):
    """Base class of every error the SDK raises."""


class GondolinTimeout(GondolinError, TimeoutError):
    """An operation did not finish within its timeout."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "timed out"


class StartError(GondolinError):
    """``gondolin start`` failed; the message is its stderr (last lines)."""

    def __init__(self, message: str, *, returncode: int | None = None, stderr: str = "") -> None:
        super().__init__(message)
        self.returncode = returncode
        self.stderr = stderr


class SessionNotFound(GondolinError):
    """No running session has that id or name."""


class ConnectionLost(GondolinError):
    """The control socket went away (the supervisor exited or closed the connection)."""


class ProtocolError(GondolinError):
    """The peer broke the control protocol (docs/control.md); the connection is closed."""


class RemoteError(GondolinError):
    """The server answered a request with ``ERROR {"code", "message"}`` or ``ok: false``."""

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class PolicyError(RemoteError):
    """``policy.reload`` was refused (``file:line: ...``); the old revision stays."""


class TransferError(GondolinError):
    """A file transfer (PUT/GET) ended with a nonzero exit code; ``exit_code`` says which."""

    def __init__(self, message: str, *, exit_code: int, path: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.path = path


class ExecError(GondolinError):
    """A command run with ``check=True`` did not exit with 0.

    Carries the result: ``exit_code``, ``stdout``, ``stderr`` (bytes; empty for a
    streamed exec, whose output went to the iterator), ``signal`` and ``result``.
    """

    def __init__(
        self,
        cmd: str | Sequence[str],
        exit_code: int,
        stdout: bytes = b"",
        stderr: bytes = b"",
        signal: int | None = None,
        error: str | None = None,
    ) -> None:
        self.cmd = cmd
        self.exit_code = exit_code
        self.stdout = stdout
        self.stderr = stderr
        self.signal = signal
        self.error = error
        if error:
            why = error
        elif signal is not None:
            why = f"killed by signal {signal}"
        else:
            why = f"exited with {exit_code}"
            tail = stderr.decode("utf-8", "replace").strip().splitlines()
            if tail:
                why += f": {tail[-1][:200]}"
        super().__init__(f"{_show(cmd)}: {why}")


class ExecTimeout(ExecError, GondolinTimeout):
    """A command did not finish within its ``timeout``; it was hung up (CANCEL)."""

    def __init__(
        self,
        cmd: str | Sequence[str],
        timeout: float,
        exit_code: int = -1,
        stdout: bytes = b"",
        stderr: bytes = b"",
        signal: int | None = None,
    ) -> None:
        super().__init__(cmd, exit_code, stdout, stderr, signal)
        self.timeout = timeout
        self.args = (f"{_show(cmd)}: timed out after {timeout:g} s",)


def _show(cmd: str | Sequence[str]) -> str:
    s = cmd if isinstance(cmd, str) else " ".join(cmd)
    return s if len(s) <= 80 else s[:77] + "..."
