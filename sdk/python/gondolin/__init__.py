"""gondolin: a Python client for gondolin sessions (micro-VM sandboxes).

    from gondolin import Sandbox
    with Sandbox.create(policy="examples/agent.lua") as sb:
        print(sb.exec("uname -a").text)

The sync API is :class:`Sandbox`, the asyncio one :class:`AsyncSandbox`; both speak the
session control protocol (docs/control.md) over the session's unix socket.
"""

__version__ = "0.1.0"

from ._common import Change, ExecResult, OutputChunk, list_sessions, mounts_argv, sessions_dir
from .aio import AsyncExecStream, AsyncLogTail, AsyncSandbox, AsyncShell
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
from .sandbox import ExecStream, LogTail, Sandbox, Shell

__all__ = [
    "__version__",
    "Sandbox",
    "AsyncSandbox",
    "ExecResult",
    "Change",
    "mounts_argv",
    "OutputChunk",
    "ExecStream",
    "AsyncExecStream",
    "Shell",
    "AsyncShell",
    "LogTail",
    "AsyncLogTail",
    "list_sessions",
    "sessions_dir",
    "GondolinError",
    "GondolinTimeout",
    "StartError",
    "SessionNotFound",
    "ConnectionLost",
    "ProtocolError",
    "RemoteError",
    "PolicyError",
    "TransferError",
    "ExecError",
    "ExecTimeout",
]
