#!/usr/bin/env python3
"""SSH proxy throughput without a VM: how much of a guest clone's time is the proxy's.
The same 50 MiB repository as bench_ssh.py (incompressible blobs, one pack) cloned on
the host by git + OpenSSH, directly from sshd (git-shell) and through gondolin's SSH
proxy on a libuv loop (tests/integration/sshpx_driver.c, what a sandbox runs); then the
same through the proxy while a second clone runs at once. Best of three runs each.

Usage: bench_ssh_host.py BUILD_DIR [MIB]"""
import os
import shutil
import subprocess
import sys
import threading

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
import bench_ssh as B  # noqa: E402  (make_repo, host_clone)
import test_ssh_egress as T  # noqa: E402
from test_ssh_loop import SSH, Driver  # noqa: E402

MIB = B.MIB


def main():
    up = T.Upstream()
    d = None
    try:
        big = B.make_repo(up.dir)
        direct = dict(os.environ, GIT_SSH_COMMAND=" ".join(
            SSH + ["-i", up.key, "-o", "IdentitiesOnly=yes", "-p", str(up.port)]))
        d = Driver(up, [f"git.test:{up.port}"])
        port = d.ports[f"git.test:{up.port}"]
        proxied = dict(os.environ, GIT_SSH_COMMAND=" ".join(SSH + ["-p", str(port)]))
        url = f"ssh://{up.user}@127.0.0.1{big}"
        rows = [("host, SSH direct (no proxy)", lambda: B.host_clone(["clone", "-q", url],
                                                                       direct)),
                ("host, SSH through the proxy", lambda: B.host_clone(["clone", "-q", url],
                                                                       proxied))]

        def two_at_once():
            other = threading.Thread(target=lambda: subprocess.run(
                ["git", "clone", "-q", url, "/tmp/gd-bench-ssh-clone2"], env=proxied,
                capture_output=True, timeout=600))
            other.start()
            dt = B.host_clone(["clone", "-q", url], proxied)
            other.join()
            shutil.rmtree("/tmp/gd-bench-ssh-clone2", ignore_errors=True)
            return dt
        rows.append(("host, SSH through the proxy, 2 clones at once", two_at_once))
        best = {name: min(fn() for _ in range(3)) for name, fn in rows}
        print(f"| clone of {MIB} MiB | seconds | MiB/s |\n|---|---:|---:|")
        for name, _ in rows:
            print(f"| {name} | {best[name]:.2f} | {MIB / best[name]:.0f} |")
    finally:
        if d:
            d.close()
        up.close()


if __name__ == "__main__":
    main()
