#!/usr/bin/env python3
"""The SSH egress proxy on the libuv loop, without a VM (tests/integration/sshpx_driver.c
runs it; the host's ssh, git and gd-ssh-flood play the guest; a real sshd with git-shell
the upstream, as in test_ssh_egress.py): a request flood during an exec does not grow the
process, an upstream that never speaks delays nobody else and does not hold up a stop,
the guest's refusal of a CHANGED key names no host path, log lines are rate-limited while
audit records stay complete.

Usage: test_ssh_loop.py BUILD_DIR [NAME_FILTER]"""
import os
import socket
import subprocess
import sys
import threading
import time

import harness
from harness import eq, expect, run, test  # noqa: E402
from test_ssh_egress import Upstream  # noqa: E402

harness.TESTS.clear()  # (importing test_ssh_egress registered its VM tests)

BUILD = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "build")
FILTER = sys.argv[2] if len(sys.argv) > 2 else ""
DRIVER = os.path.join(BUILD, "tests", "gd-sshpx-driver")
FLOOD = os.path.join(BUILD, "tests", "gd-ssh-flood")
SSH = ["ssh", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
       "-o", "BatchMode=yes", "-o", "LogLevel=ERROR"]


class Driver:
    """gd-sshpx-driver with one listener per NAME:PORT=127.0.0.1; stdout lines collected."""

    def __init__(self, up, names, *extra):
        self.err = open(os.path.join(up.dir, f"driver-{time.monotonic_ns()}.log"), "w+")
        # (the key names the upstream user: without one it would be "git")
        args = [DRIVER, "--key", f"{up.user}@*.test={up.key}", "--known-hosts",
                f"{up.dir}/known_hosts"]
        args += list(extra) + [f"{n}=127.0.0.1" for n in names]
        self.p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self.err, text=True,
                                  env=dict(os.environ, XDG_CONFIG_HOME=up.cfg,
                                           # (in a sanitizer build freed memory would wait
                                           # in quarantine and count as RSS)
                                           ASAN_OPTIONS="quarantine_size_mb=1"))
        self.ports, self.lines = {}, []
        for line in self.p.stdout:
            if line.startswith("listen "):
                _, name, port, local = line.split()
                self.ports[f"{name}:{port}"] = int(local)
            if line.strip() == "ready":
                break
        expect(self.ports, "the driver did not start")
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.p.stdout:
            self.lines.append(line.strip())

    def rss_kib(self):
        for line in open(f"/proc/{self.p.pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def log(self):
        self.err.seek(0)
        return self.err.read()

    def stop(self):
        t0 = time.monotonic()
        self.p.terminate()
        rc = self.p.wait(timeout=30)
        self.reader.join(timeout=5)
        return rc, time.monotonic() - t0

    def close(self):
        if self.p.poll() is None:  # a stop frees everything: a sanitizer build checks it
            self.p.terminate()
            try:
                self.p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        log = self.log()
        self.err.close()
        expect("Sanitizer" not in log, f"driver: {log[-3000:]}")


def git_env(port):
    return dict(os.environ, GIT_SSH_COMMAND=" ".join(SSH + ["-p", str(port)]))


def serves_on(up, port):
    """a plain git ls-remote through the proxy still works"""
    r = subprocess.run(["git", "ls-remote", f"ssh://{up.user}@127.0.0.1{up.repo}"],
                       capture_output=True, text=True, timeout=60, env=git_env(port))
    eq(r.returncode, 0, f"the proxy serves on: {r.stderr}")


@test
def flood_during_exec(up):
    """thousands of channel requests and keepalives during a running exec are answered
    and freed as they come: the proxy's RSS stays bounded and the exec still ends with
    its exit status"""
    d = Driver(up, [f"git.test:{up.port}"])
    try:
        port = d.ports[f"git.test:{up.port}"]
        f = subprocess.Popen([FLOOD, str(port), up.user, f"git-upload-pack '{up.repo}'",
                              "100000"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=d.err, text=True)
        eq(f.stdout.readline().strip(), "open", f"the exec did not open: {d.log()}")
        before = d.rss_kib()
        f.stdin.write("go\n")
        f.stdin.flush()
        eq(f.stdout.readline().strip(), "flooded", f"the flood stopped: {d.log()}")
        time.sleep(1)  # what is in flight reaches the proxy
        after = d.rss_kib()
        f.stdin.write("end\n")
        f.stdin.flush()
        out, _ = f.communicate(timeout=60)
        eq(out.strip(), "exit 0", f"the exec's end: {d.log()}")
        # 200000 requests queued would be tens of MB (the bug it guards against: 1.8 GB)
        expect(after - before < 16 * 1024, f"RSS grew {before} -> {after} KiB during the flood")
        print(f"     (RSS {before} -> {after} KiB over the flood)", flush=True)
        serves_on(up, port)
    finally:
        d.close()


@test
def data_past_the_window(up):
    """a guest that writes past the window the proxy gave its channel (libssh 0.10 keeps
    such bytes) is cut once a channel holds 4 MiB nobody took: the proxy's RSS stays
    bounded and it serves on"""
    d = Driver(up, [f"git.test:{up.port}"])
    try:
        port = d.ports[f"git.test:{up.port}"]
        before = d.rss_kib()
        r = subprocess.run([FLOOD, str(port), up.user, "-", "-60"], capture_output=True,
                           text=True, timeout=120)
        out = r.stdout.strip()
        expect(out != "unsupported", "this libssh's channel layout differs: the test cannot run")
        time.sleep(1)
        after = d.rss_kib()
        print(f"     (RSS {before} -> {after} KiB, client: {out})", flush=True)
        expect(after - before < 24 * 1024, f"RSS grew {before} -> {after} KiB")
        expect("past its SSH window" in d.log(), f"no cut logged: {d.log()[-800:]}")
        serves_on(up, port)
    finally:
        d.close()


@test
def keepalives_are_not_activity(up):
    """connections that only send keepalives (no exec) are closed after handshake_ms like
    silent ones, so they cannot hold every max_conns slot"""
    d = Driver(up, [f"git.test:{up.port}"], "--limit", "handshake_ms=1000",
               "--limit", "max_conns=2")
    try:
        port = d.ports[f"git.test:{up.port}"]
        hold = [subprocess.Popen(SSH + ["-o", "ServerAliveInterval=1", "-o",
                                        "ServerAliveCountMax=100", "-p", str(port), "-N",
                                        "127.0.0.1"], stderr=subprocess.DEVNULL)
                for _ in range(2)]
        end = time.time() + 20
        while time.time() < end and any(h.poll() is None for h in hold):
            time.sleep(0.2)
        alive = [h.poll() is None for h in hold]
        for h in hold:
            h.kill()
            h.wait()
        eq(alive, [False, False], "keepalive-only connections still open after 20 s")
        serves_on(up, port)
    finally:
        d.close()


@test
def silent_upstream(up):
    """an upstream that accepts TCP and never speaks does not delay a clone from another
    upstream through the same proxy, and a stop while it hangs ends at once"""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    sport = silent.getsockname()[1]
    d = Driver(up, [f"git.test:{up.port}", f"hang.test:{sport}"])
    try:
        hang = subprocess.Popen(["git", "ls-remote", f"ssh://{up.user}@127.0.0.1/r.git"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=git_env(d.ports[f"hang.test:{sport}"]))
        time.sleep(2)
        t0 = time.monotonic()
        r = subprocess.run(["git", "clone", "-q", f"ssh://{up.user}@127.0.0.1{up.repo}",
                            f"{up.dir}/silent-clone"], capture_output=True, text=True,
                           timeout=120, env=git_env(d.ports[f"git.test:{up.port}"]))
        took = time.monotonic() - t0
        eq(r.returncode, 0, f"clone: {r.stderr} {d.log()}")
        expect(took < 10, f"the clone took {took:.1f} s next to a silent upstream")
        expect(hang.poll() is None, "the silent upstream's exec ended early")
        rc, secs = d.stop()
        eq(rc, 0, f"driver exit: {d.log()}")
        expect(secs < 5, f"the stop took {secs:.1f} s")
        stopped = [l for l in d.lines if l.startswith("stopped ")]
        expect(stopped and int(stopped[0].split()[1]) < 3000, f"stop: {d.lines}")
        hang.communicate(timeout=30)
        expect(hang.returncode != 0, "the hanging exec did not fail")
    finally:
        silent.close()
        d.close()


@test
def changed_key_line(up):
    """the guest's refusal of a CHANGED host key names host, key type and fingerprint,
    and of an unreadable known_hosts file no file: paths and lines are only in the host's
    log"""
    d = Driver(up, [f"changed.test:{up.port}"])
    try:
        r = subprocess.run(["git", "ls-remote", f"ssh://{up.user}@127.0.0.1{up.repo}"],
                           capture_output=True, text=True, timeout=60,
                           env=git_env(d.ports[f"changed.test:{up.port}"]))
        expect(r.returncode != 0 and "CHANGED" in r.stderr and "SHA256:" in r.stderr,
               f"refusal: {r.stderr}")
        expect(up.dir not in r.stderr, f"the guest learnt a host path: {r.stderr}")
        expect(f"{up.dir}/known_hosts:2" in d.log(), f"host log: {d.log()}")
    finally:
        d.close()
    # a known_hosts file that cannot be read: the guest is told so, the log says which
    extra = f"{up.dir}/extra_known_hosts"
    open(extra, "w").close()
    d = Driver(up, [f"git.test:{up.port}"], "--known-hosts", extra)
    try:
        os.remove(extra)
        os.mkdir(extra)  # (still opens, as the setup checks; reading it fails)
        r = subprocess.run(["git", "ls-remote", f"ssh://{up.user}@127.0.0.1{up.repo}"],
                           capture_output=True, text=True, timeout=60,
                           env=git_env(d.ports[f"git.test:{up.port}"]))
        expect(r.returncode != 0 and "known_hosts files cannot be read" in r.stderr,
               f"refusal: {r.stderr}")
        expect(up.dir not in r.stderr, f"the guest learnt a host path: {r.stderr}")
        expect(extra in d.log(), f"host log: {d.log()}")
    finally:
        d.close()


@test
def log_rate_limit(up):
    """a guest opening connections in a loop gets a bounded number of log lines (and a
    "suppressed" summary); every exec still has its audit record"""
    d = Driver(up, [f"git.test:{up.port}"])
    try:
        port = d.ports[f"git.test:{up.port}"]
        n = 60
        for batch in range(0, n, 10):
            ps = [subprocess.Popen(SSH + ["-p", str(port), f"{up.user}@127.0.0.1",
                                          "cat /etc/passwd"], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL) for _ in range(10)]
            for p in ps:
                p.wait(timeout=60)
        time.sleep(1.5)  # a line after 1 s carries the summary
        subprocess.run(SSH + ["-p", str(port), f"{up.user}@127.0.0.1", "true"],
                       capture_output=True, timeout=60)
        time.sleep(0.5)
        log = d.log()
        denied = log.count("log: denied")
        expect(denied < n, f"{denied} denied lines for {n + 1} refusals")
        expect("lines suppressed" in log, f"no summary: {log[-2000:]}")
        recs = [l for l in d.lines if l.startswith("record git.test 1 ")]
        eq(len(recs), n + 1, f"audit records: {d.lines}")
    finally:
        d.close()


def main():
    up = Upstream()
    try:
        failed = run("ssh proxy on the loop (no VM)", FILTER, up)
    finally:
        up.close()
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
