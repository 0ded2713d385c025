#!/usr/bin/env python3
"""Long-lived sessions with real VMs (docs/sessions.md, docs/control.md): `gondolin start`,
exec --session, attach, cp, ls, logs, stop, policy reload, and the control socket itself
(per-connection ids, credit, protocol errors, the peer uid check). Two sandboxes are
booted: the main one (most tests, stopped last) and one whose supervisor is SIGKILLed.
Usage: test_session.py BUILD_DIR [NAME_FILTER]"""
import hashlib
import io
import json
import os
import pty
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
import fcntl
import termios

from harness import TESTS, alive, eq, expect, test, wait_gone  # noqa: E402

BUILD = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "build")
FILTER = sys.argv[2] if len(sys.argv) > 2 else ""
G = os.path.join(BUILD, "gondolin")
RT = tempfile.mkdtemp(prefix="gd-sess-")  # XDG_RUNTIME_DIR of every command here
ENV = dict(os.environ, XDG_RUNTIME_DIR=RT)
SESS = os.path.join(RT, "gondolin", "sessions")
POLICY = os.path.join(RT, "policy.lua")
MAIN = "t-main"


def run(args, input=None, timeout=120, check=None):
    r = subprocess.run([G] + args, input=input, capture_output=True, timeout=timeout, env=ENV)
    if check is not None:
        eq(r.returncode, check, f"{args}: {r.stderr.decode(errors='replace')}")
    return r


def sx(cmd, **kw):
    """exec -c CMD in the main session."""
    return run(["exec", "--session", MAIN, "-c", cmd], **kw)


def qemu_children(pid):
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    kids = []
    for p in out.split():
        try:
            if "qemu" in open(f"/proc/{p}/comm").read():
                kids.append(int(p))
        except OSError:
            pass
    return kids


def info(key):
    for s in json.loads(run(["ls", "--json"], check=0).stdout):
        if key in (s["id"], s["name"]):
            return s
    return None


class Ctl:
    """A minimal client of the control socket (docs/control.md)."""

    def __init__(self, path, hello=True):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.connect(path)
        self.buf = b""
        if hello:
            self.send(1, {"version": 1, "client": "test_session"}, id=0)
            t, _, _, body = self.recv()
            eq(t, 1, "server HELLO")
            self.session = json.loads(body)["session"]

    def send(self, type, body=b"", id=1, flags=0, reserved=0):
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        self.s.sendall(struct.pack("<IBBHI", len(body), type, flags, reserved, id) + body)

    def recv(self, timeout=60):
        """(type, flags, id, body), or None at the end of the stream."""
        end = time.time() + timeout
        while True:
            if len(self.buf) >= 12:
                n, t, f, _, i = struct.unpack("<IBBHI", self.buf[:12])
                if len(self.buf) >= 12 + n:
                    body, self.buf = self.buf[12:12 + n], self.buf[12 + n:]
                    return t, f, i, body
            left = end - time.time()
            if left <= 0:
                raise AssertionError("timeout waiting for a frame")
            r, _, _ = select.select([self.s], [], [], left)
            if not r:
                continue
            d = self.s.recv(1 << 20)
            if not d:
                return None
            self.buf += d

    def exec(self, id, argv=None, shell=None, stdin=False, window=1 << 20):
        m = {"stdin": stdin, "window": window}
        if shell:
            m["shell"] = shell
        else:
            m["argv"] = argv
        self.send(2, m, id=id)

    def collect(self, ids, stdin=None):
        """Runs until every id has its EXIT: {id: (stdout, stderr, exit)}; grants output
        credit as it goes; stdin: {id: bytes} sent under the granted credit."""
        out = {i: [b"", b"", None] for i in ids}
        pending = dict(stdin or {})
        while any(v[2] is None for v in out.values()):
            f = self.recv()
            expect(f is not None, "connection closed")
            t, fl, i, body = f
            if t == 6:
                out[i][fl - 1] += body
                self.send(7, struct.pack("<II", len(body) if fl == 1 else 0,
                                         len(body) if fl == 2 else 0), id=i)
            elif t == 5 and i in pending:
                grant = struct.unpack("<I", body)[0]
                chunk, pending[i] = pending[i][:grant], pending[i][grant:]
                self.send(4, chunk, id=i, flags=0 if pending[i] else 1)
                if not pending[i]:
                    del pending[i]
            elif t == 10:
                out[i][2] = json.loads(body)
            elif t == 11:
                raise AssertionError(f"ERROR {i}: {body!r}")
        return out

    def close(self):
        self.s.close()


# ---- the main session ----

def write_policy(name):
    with open(POLICY, "w") as f:
        f.write('return {\n  name = "%s",\n  on_request = function(req)\n'
                '    return req:deny(403, "no network here")\n  end,\n}\n' % name)


@test
def start_ls_and_duplicate_name():
    write_policy("first")
    r = run(["start", "--name", MAIN, "--policy", POLICY, "-e", "SESSION_VAR=from-start",
             "--listen", "127.0.0.1:0=8000", "--json"], timeout=300)
    eq(r.returncode, 0, r.stderr.decode())
    j = json.loads(r.stdout)
    for k in ("id", "name", "pid", "socket", "log", "revision", "build_id", "accel", "image"):
        expect(k in j, f"start --json lacks {k}: {j}")
    eq(j["name"], MAIN)
    eq(j["state"], "running")
    expect(os.path.exists(j["socket"]), "socket")
    eq(os.stat(j["socket"]).st_mode & 0o777, 0o600, "socket mode")
    eq(os.stat(SESS).st_mode & 0o777, 0o700, "sessions directory mode")
    meta = json.load(open(os.path.join(SESS, j["id"] + ".json")))
    eq(meta["pid"], j["pid"])
    expect(meta["pid_start"] > 0, meta)
    r = run(["ls"], check=0)
    expect(MAIN in r.stdout.decode() and j["id"][:12] in r.stdout.decode(), r.stdout)
    expect("running" in r.stdout.decode(), r.stdout)
    before = subprocess.run(["pgrep", "-c", "qemu-system"], capture_output=True, text=True).stdout
    r = run(["start", "--name", MAIN], timeout=120)
    eq(r.returncode, 1, "a duplicate --name is refused")
    expect(b"exists already" in r.stderr, r.stderr)
    after = subprocess.run(["pgrep", "-c", "qemu-system"], capture_output=True, text=True).stdout
    eq(after, before, "no VM for the refused start")
    r = run(["start", "--name", "bad/name"])
    eq(r.returncode, 2)


@test
def twenty_sequential_execs_keep_state():
    r = sx("nohup sleep 1000 </dev/null >/dev/null 2>&1 & echo $! > /tmp/bg.pid; echo ok")
    eq(r.stdout, b"ok\n", r.stderr)
    for i in range(17):
        r = sx(f"echo {i} >> /tmp/state; wc -l < /tmp/state")
        eq(r.returncode, 0, r.stderr)
        eq(r.stdout.strip(), str(i + 1).encode(), "state kept across execs")
    r = run(["exec", "--session", MAIN, "-w", "/usr/share", "-e", "X=1", "--", "sh", "-c",
             'echo "$(pwd) $X $SESSION_VAR"'], check=0)
    eq(r.stdout, b"/usr/share 1 from-start\n", "cwd, -e and the session's -e")
    r = sx('kill -0 "$(cat /tmp/bg.pid)" && echo bg-alive')
    eq(r.stdout, b"bg-alive\n", "a background process keeps running")
    r = run(["exec", "--session", info(MAIN)["id"][:8], "--", "cat", "/tmp/state"], check=0)
    eq(len(r.stdout.split()), 17, "an id prefix names the session too")


@test
def exit_codes_and_streams():
    r = sx("echo out; echo err >&2; exit 42")
    eq((r.stdout, r.stderr, r.returncode), (b"out\n", b"err\n", 42))
    eq(sx("kill -9 $$").returncode, 137, "128+N")
    r = run(["exec", "--session", MAIN, "--", "no-such-command"])
    eq(r.returncode, 127)
    expect(b"no-such-command" in r.stderr, r.stderr)
    r = run(["exec", "--session", MAIN, "--", "printf", "%s|", "a b", "", "$HOME"], check=0)
    eq(r.stdout, b"a b||$HOME|", "argv verbatim")
    r = run(["exec", "--session", "no-such-session", "--", "true"])
    eq(r.returncode, 125)
    expect(b"no session 'no-such-session'" in r.stderr, r.stderr)
    r = run(["exec", "--session", MAIN, "--memory", "2G", "--", "true"])
    eq(r.returncode, 2, "VM flags belong to start")
    r = run(["exec", "--session", MAIN, "-t", "--", "sh", "-c", "tty; echo e >&2"], check=0)
    expect(r.stdout.startswith(b"/dev/pts/") and b"e" in r.stdout, r.stdout)


@test
def stdin_is_streamed():
    data = os.urandom(3 << 20)
    r = run(["exec", "--session", MAIN, "--", "sha256sum"], input=data, check=0)
    eq(r.stdout.split()[0].decode(), hashlib.sha256(data).hexdigest(), "sha256 of stdin")
    r = run(["exec", "--session", MAIN, "--", "wc", "-c"], input=b"", check=0)
    eq(r.stdout.strip(), b"0")


@test
def signals_are_forwarded():
    p = subprocess.Popen([G, "exec", "--session", MAIN, "--", "sh", "-c",
                          "echo started; exec sleep 1000"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=ENV)
    eq(p.stdout.readline(), b"started\n")
    p.send_signal(signal.SIGTERM)
    eq(p.wait(timeout=30), 143, "SIGTERM forwarded")
    p = subprocess.Popen([G, "exec", "--session", MAIN, "--", "sh", "-c",
                          "trap '' TERM INT; echo started; sleep 1000"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=ENV)
    eq(p.stdout.readline(), b"started\n")
    p.send_signal(signal.SIGINT)
    time.sleep(1)
    expect(p.poll() is None, "the first signal is only forwarded")
    p.send_signal(signal.SIGINT)
    eq(p.wait(timeout=30), 130, "a second one hangs the process up")
    eq(info(MAIN)["state"], "running", "the session is unaffected")


@test
def eight_concurrent_execs_from_two_clients():
    sock = info(MAIN)["socket"]
    a, b = Ctl(sock), Ctl(sock)
    for c, tag in ((a, "a"), (b, "b")):
        for i in range(1, 5):  # the same ids on both connections
            c.exec(i, shell=f"sleep 1; head -c {i * 100000} /dev/zero | tr '\\0' {tag}; "
                            f"echo {tag}{i} >&2; exit {i}")
    t0 = time.time()
    ra, rb = a.collect([1, 2, 3, 4]), b.collect([1, 2, 3, 4])
    for r, tag in ((ra, "a"), (rb, "b")):
        for i in range(1, 5):
            out, err, ex = r[i]
            eq(out, tag.encode() * (i * 100000), f"{tag}{i} stdout")
            eq(err, f"{tag}{i}\n".encode(), f"{tag}{i} stderr")
            eq(ex["exit_code"], i)
    expect(time.time() - t0 < 20, "the execs ran concurrently")
    a.close()
    b.close()


@test
def credit_is_passed_through():
    c = Ctl(info(MAIN)["socket"])
    c.exec(1, shell="head -c 1000000 /dev/zero", window=4096)
    got = 0
    while True:
        t, fl, i, body = c.recv()
        if t == 6:
            got += len(body)
            break
    time.sleep(1)  # no grant: nothing more may come
    c.s.setblocking(False)
    try:
        extra = c.s.recv(1 << 20)
    except BlockingIOError:
        extra = b""
    c.s.setblocking(True)
    c.buf += extra
    more = 0
    while len(c.buf) >= 12:
        n, t, _, _, _ = struct.unpack("<IBBHI", c.buf[:12])
        if len(c.buf) < 12 + n:
            break
        more += n if t == 6 else 0
        c.buf = c.buf[12 + n:]
    expect(got + more <= 4096, f"{got + more} bytes beyond a 4096-byte window")
    c.send(7, struct.pack("<II", 1 << 20, 0), id=1)
    r = c.collect([1])
    eq(got + more + len(r[1][0]), 1000000, "the rest after the grant")
    # stdin: no STDIN beyond the server's grant
    c.exec(2, argv=["cat"], stdin=True)
    while True:
        t, _, i, body = c.recv()
        if t == 5:
            grant = struct.unpack("<I", body)[0]
            break
    c.send(4, b"x" * (grant + 1), id=2)
    f = c.recv()
    while f and f[0] != 11:
        f = c.recv()
    expect(f and f[2] == 0 and b"credit" in f[3], f"protocol error for data beyond credit: {f}")
    eq(c.recv(), None, "then the connection is closed")


@test
def malformed_frame_closes_only_that_client():
    sock = info(MAIN)["socket"]
    good, victim = Ctl(sock), Ctl(sock)
    good.exec(1, argv=["cat"], stdin=True)
    victim.exec(1, shell="echo $$ > /tmp/victim.pid; exec sleep 1000")
    time.sleep(1)
    victim.send(2, {"argv": ["true"]}, id=2, reserved=7)  # nonzero reserved field
    f = victim.recv()
    while f and f[0] != 11:
        f = victim.recv()
    expect(f and f[2] == 0, f"ERROR with id 0: {f}")
    eq(json.loads(f[3])["code"], "protocol")
    eq(victim.recv(), None, "the malformed client is disconnected")
    r = good.collect([1], stdin={1: b"still here\n"})
    eq(r[1][0], b"still here\n", "the other client's exec is unaffected")
    good.close()
    time.sleep(3)  # SIGHUP, SIGKILL after 2 s
    r = sx('kill -0 "$(cat /tmp/victim.pid)" 2>/dev/null && echo alive || echo gone')
    eq(r.stdout, b"gone\n", "the disconnected client's exec was hung up")
    for bad in (b"\x00\x00\x00\x00\x63\x00\x00\x00\x01\x00\x00\x00",  # unknown type
                struct.pack("<IBBHI", 2 << 20, 4, 0, 0, 1)):          # oversized
        c = Ctl(sock)
        c.s.sendall(bad)
        f = c.recv()
        eq(f[0], 11, "ERROR")
        eq(c.recv(), None)
    c = Ctl(sock, hello=False)
    c.send(2, {"argv": ["true"]}, id=1)  # before HELLO
    f = c.recv()
    expect(f[0] == 11 and b"before HELLO" in f[3], f)
    c = Ctl(sock, hello=False)
    c.send(1, {"version": 2}, id=0)
    f = c.recv()
    eq(json.loads(f[3])["code"], "version")
    c = Ctl(sock)  # an id still live is an error for that request only
    c.exec(5, argv=["sleep", "2"])
    c.exec(5, argv=["true"])
    f = c.recv()
    while f[0] != 11:
        f = c.recv()
    eq((f[2], json.loads(f[3])["code"]), (5, "id_in_use"))
    eq(c.collect([5])[5][2]["exit_code"], 0, "the first request goes on")
    c.close()
    time.sleep(0.5)
    s = info(MAIN)
    eq((s["state"], s["clients"], s["execs"]), ("running", 1, 0), "only `ls` is connected now")


@test
def peer_of_another_uid_is_refused():
    sock = info(MAIN)["socket"]
    nobody = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", sys.executable,
              "-c", "import socket,struct,sys,json\n"
              "s=socket.socket(socket.AF_UNIX)\n"
              "try:\n s.connect(sys.argv[1])\nexcept OSError as e:\n print('connect', e.errno); sys.exit()\n"
              "b=json.dumps({'version':1}).encode()\n"
              "s.settimeout(10)\n"
              "try:\n s.sendall(struct.pack('<IBBHI',len(b),1,0,0,0)+b)\n"
              " print('read', len(s.recv(100)))\n"
              "except (BrokenPipeError, ConnectionResetError):\n print('read 0')\n", sock]
    os.chmod(RT, 0o711)
    os.chmod(os.path.dirname(SESS), 0o711)
    try:
        r = subprocess.run(nobody, capture_output=True, text=True, timeout=30)
        eq(r.stdout.strip(), "connect 13", "the 0700 directory stops another uid: " + r.stderr)
        # make the socket reachable: the supervisor's SO_PEERCRED check must refuse it
        os.chmod(SESS, 0o711)
        os.chmod(sock, 0o666)
        r = subprocess.run(nobody, capture_output=True, text=True, timeout=30)
        eq(r.stdout.strip(), "read 0", "closed before a byte: " + r.stderr)
        Ctl(sock).close()  # our own uid still gets in
    finally:
        os.chmod(sock, 0o600)
        os.chmod(SESS, 0o700)
    log = open(info(MAIN)["log"]).read()
    expect("refused a connection from uid 65534" in log, log[-500:])


def wait_for(fd, token, buf, timeout=60):
    end = time.time() + timeout
    while token not in buf:
        if time.time() > end:
            raise AssertionError(f"timeout waiting for {token!r}; got {buf[-300:]!r}")
        r, _, _ = select.select([fd], [], [], 0.2)
        if r:
            try:
                buf += os.read(fd, 4096)
            except OSError:
                break
    return buf


def attach():
    pid, fd = pty.fork()
    if pid == 0:
        os.execve(G, [G, "attach", MAIN], ENV)
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    return pid, fd


@test
def attach_resize_detach_reattach_exit():
    pid, fd = attach()
    buf = wait_for(fd, b"# ", b"")
    os.write(fd, b"stty size; echo attached > /tmp/attach-mark; echo mark$((1+1))\r")
    buf = wait_for(fd, b"mark2", buf)
    expect(b"30 100" in buf, f"initial size: {buf[-200:]!r}")
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 41, 131, 0, 0))
    os.kill(pid, signal.SIGWINCH)
    time.sleep(0.5)
    os.write(fd, b"stty size; echo mark$((2+1))\r")
    buf = wait_for(fd, b"mark3", buf)
    expect(b"41 131" in buf, f"resize: {buf[-200:]!r}")
    os.write(fd, b"\x1d")  # Ctrl-]
    buf = wait_for(fd, b"detached", buf)
    _, st = os.waitpid(pid, 0)
    eq(os.WEXITSTATUS(st), 0, "detach exits 0")
    os.close(fd)
    eq(info(MAIN)["state"], "running", "the session keeps running")
    pid, fd = attach()
    buf = wait_for(fd, b"# ", b"")
    os.write(fd, b"cat /tmp/attach-mark; exit 3\r")
    buf = wait_for(fd, b"attached", buf)
    _, st = os.waitpid(pid, 0)
    eq(os.WEXITSTATUS(st), 3, "the shell's exit status")
    os.close(fd)


@test
def attach_under_tmux():
    """a real terminal multiplexer: attach in a tmux pane, resize the window, detach with
    Ctrl-] (the pane's command ends 0, the session runs on), reattach, exit"""
    if not shutil.which("tmux"):
        raise AssertionError("tmux is not installed (scripts/setup.sh installs it)")
    sock = tempfile.mktemp(prefix="gd-tmux-")
    tm = ["tmux", "-S", sock]
    env = dict(ENV)
    env.pop("TMUX", None)

    def pane():
        return subprocess.run(tm + ["capture-pane", "-p", "-t", "gd"], capture_output=True,
                              text=True).stdout

    def wait_pane(token, timeout=60):  # "#": a root prompt (tmux trims trailing blanks)
        end = time.time() + timeout
        while not (token in pane() if token != "#" else
                   any(l.rstrip().endswith("#") for l in pane().splitlines())):
            if time.time() > end:
                raise AssertionError(f"tmux pane never showed {token!r}: {pane()[-400:]!r}")
            time.sleep(0.2)

    def attach_in_tmux(status_file):
        cmd = f"{G} attach {MAIN}; echo $? > {status_file}"
        subprocess.run(tm + ["new-session", "-d", "-s", "gd", "-x", "100", "-y", "30", cmd],
                       check=True, env=env)

    st = tempfile.mktemp(prefix="gd-tmux-status-")
    try:
        attach_in_tmux(st)
        wait_pane("#")
        subprocess.run(tm + ["send-keys", "-t", "gd", "stty size; echo tm$((40+2))", "Enter"],
                       check=True)
        wait_pane("tm42")
        expect("30 100" in pane(), pane()[-300:])
        subprocess.run(tm + ["resize-window", "-t", "gd", "-x", "120", "-y", "40"], check=True)
        time.sleep(1)
        subprocess.run(tm + ["send-keys", "-t", "gd", "clear; stty size; echo tm$((50+3))",
                             "Enter"], check=True)
        wait_pane("tm53")
        expect("40 120" in pane(), pane()[-300:])
        subprocess.run(tm + ["send-keys", "-t", "gd", "echo tmux-was-here > /tmp/tmux-mark",
                             "Enter"], check=True)
        subprocess.run(tm + ["send-keys", "-t", "gd", "C-]"], check=True)
        for _ in range(150):
            if os.path.exists(st) and open(st).read().strip():
                break
            time.sleep(0.2)
        eq(open(st).read().strip(), "0", "detach ends attach with 0")
        subprocess.run(tm + ["kill-server"], capture_output=True)
        eq(info(MAIN)["state"], "running", "the session runs on after a detach")
        os.unlink(st)
        attach_in_tmux(st)
        wait_pane("#")
        subprocess.run(tm + ["send-keys", "-t", "gd", "cat /tmp/tmux-mark; exit 4", "Enter"],
                       check=True)
        for _ in range(150):
            if os.path.exists(st) and open(st).read().strip():
                break
            time.sleep(0.2)
        eq(open(st).read().strip(), "4", "the shell's exit status after reattaching")
    finally:
        subprocess.run(tm + ["kill-server"], capture_output=True)
        for p in (sock, st):
            if os.path.exists(p):
                os.unlink(p)


def tree_digest(root):
    """{relative path: (kind, mode, mtime, content hash or link target)}"""
    out = {}
    for d, dirs, files in os.walk(root):
        for n in dirs + files:
            p = os.path.join(d, n)
            st = os.lstat(p)
            rel = os.path.relpath(p, root)
            if os.path.islink(p):
                out[rel] = ("l", os.readlink(p))
            elif os.path.isdir(p):
                out[rel] = ("d", st.st_mode & 0o7777, int(st.st_mtime))
            else:
                out[rel] = ("f", st.st_mode & 0o7777, int(st.st_mtime),
                            hashlib.sha256(open(p, "rb").read()).hexdigest())
    return out


@test
def cp_big_file_both_ways():
    tmp = tempfile.mkdtemp(prefix="gd-cp-")
    try:
        big = os.path.join(tmp, "big.bin")
        with open(big, "wb") as f:
            for _ in range(200):
                f.write(os.urandom(1 << 20))
        os.chmod(big, 0o640)
        os.utime(big, (1600000000, 1600000000))
        digest = hashlib.sha256(open(big, "rb").read()).hexdigest()
        t0 = time.time()
        run(["cp", big, f"{MAIN}:/tmp/"], check=0, timeout=600)
        up = time.time() - t0
        r = sx("sha256sum /tmp/big.bin; stat -c '%a %Y' /tmp/big.bin", check=0, timeout=300)
        eq(r.stdout.split()[0].decode(), digest, "sha256 in the guest")
        eq(r.stdout.split()[2:], [b"640", b"1600000000"], "mode and mtime in the guest")
        t0 = time.time()
        run(["cp", f"{MAIN}:/tmp/big.bin", os.path.join(tmp, "back.bin")], check=0, timeout=600)
        down = time.time() - t0
        back = os.path.join(tmp, "back.bin")
        eq(hashlib.sha256(open(back, "rb").read()).hexdigest(), digest, "sha256 back on the host")
        st = os.stat(back)
        eq((st.st_mode & 0o777, int(st.st_mtime)), (0o640, 1600000000), "mode and mtime back")
        print(f"    200 MiB: up {up:.1f}s, down {down:.1f}s")
        sx("rm /tmp/big.bin", check=0)
        r = run(["cp", f"{MAIN}:/tmp/nope", tmp])
        eq(r.returncode, 1)
        expect(b"No such file or directory" in r.stderr, r.stderr)
    finally:
        shutil.rmtree(tmp)


@test
def cp_tree_both_ways():
    tmp = tempfile.mkdtemp(prefix="gd-cp-")
    try:
        src = os.path.join(tmp, "tree")
        for i in range(5000):
            d = os.path.join(src, f"d{i // 100:02d}", f"e{i % 7}")
            os.makedirs(d, exist_ok=True)
            p = os.path.join(d, f"f{i}.txt")
            with open(p, "wb") as f:
                f.write(os.urandom(i % 300) + str(i).encode())
            os.utime(p, (1500000000 + i, 1500000000 + i))
        os.symlink("d00/e0/f0.txt", os.path.join(src, "link"))
        os.symlink("/etc/passwd", os.path.join(src, "abs-link"))
        os.chmod(os.path.join(src, "d01"), 0o750)
        os.chmod(os.path.join(src, "d00/e0/f0.txt"), 0o600)
        os.chmod(os.path.join(src, "d00/e1/f1.txt"), 0o755)
        for d, _, _ in os.walk(src, topdown=False):
            os.utime(d, (1400000000, 1400000000))
        want = tree_digest(src)
        run(["cp", src, f"{MAIN}:/tmp/copied"], check=0, timeout=600)  # DST becomes the copy
        r = sx("cd /tmp/copied && find . -type f | wc -l && readlink link abs-link && "
               "stat -c '%a %Y' d01 d00/e0/f0.txt d00/e1/f1.txt d00/e0/f7.txt", check=0)
        lines = r.stdout.decode().split("\n")
        eq(lines[0], "5000", "files in the guest")
        eq(lines[1:3], ["d00/e0/f0.txt", "/etc/passwd"], "symlinks as links")
        eq(lines[3:7], ["750 1400000000", "600 1500000000", "755 1500000001",
                        "644 1500000007"], "modes and mtimes in the guest")
        back = os.path.join(tmp, "back")
        os.mkdir(back)
        run(["cp", f"{MAIN}:/tmp/copied", back], check=0, timeout=600)  # into an existing dir
        eq(tree_digest(os.path.join(back, "copied")), want, "the tree came back the same")
        # a tar stream on stdout and on stdin
        r = run(["cp", f"{MAIN}:/tmp/copied/d00/e0", "-"], check=0)
        names = tarfile.open(fileobj=io.BytesIO(r.stdout)).getnames()
        expect("e0/f0.txt" in names, names[:5])
        run(["cp", "-", f"{MAIN}:/tmp/fromtar"], input=r.stdout, check=0)
        eq(sx("cat /tmp/fromtar/e0/f7.txt | tail -c 1", check=0).stdout, b"7")
        sx("rm -rf /tmp/copied /tmp/fromtar", check=0)
    finally:
        shutil.rmtree(tmp)


def hostile_tar(members):
    b = io.BytesIO()
    with tarfile.open(fileobj=b, mode="w", format=tarfile.GNU_FORMAT) as t:
        for name, kind, extra in members:
            ti = tarfile.TarInfo(name)
            data = b""
            if kind == "file":
                data = extra or b"pwned\n"
                ti.size = len(data)
                ti.mode = 0o4755 if name.endswith("suid") else 0o644
            elif kind == "sym":
                ti.type, ti.linkname = tarfile.SYMTYPE, extra
            elif kind == "hard":
                ti.type, ti.linkname = tarfile.LNKTYPE, extra
            elif kind == "dir":
                ti.type, ti.mode = tarfile.DIRTYPE, 0o755
            elif kind == "chr":
                ti.type, ti.devmajor, ti.devminor = tarfile.CHRTYPE, 1, 3
            elif kind == "hard-data":  # a pax hardlink that carries data (mode 0777)
                data, ti.size, ti.mode = b"pwned\n", 6, 0o777
                ti.pax_headers = {"comment": "x"}
                h = bytearray(ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
                u = h[-512:]  # the ustar header: typeflag '1', linkname, checksum
                u[156:157], u[157:257] = b"1", extra.encode().ljust(100, b"\0")
                u[148:156] = b" " * 8
                u[148:156] = b"%06o\0 " % sum(u)
                h[-512:] = u
                t.fileobj.write(bytes(h) + data.ljust(512, b"\0"))
                t.offset += len(h) + 512
                continue
            t.addfile(ti, io.BytesIO(data))
    return b.getvalue()


@test
def cp_from_a_hostile_guest_is_contained():
    """The guest's `tar` is replaced by one that sends crafted streams: nothing is written
    outside the destination, no device node, no setuid bit."""
    tmp = tempfile.mkdtemp(prefix="gd-cp-")
    outside = os.path.join(tmp, "outside")
    os.mkdir(outside)
    secret = os.path.join(tmp, "secret")  # a host file a symlink from the guest names
    with open(secret, "w") as f:
        f.write("secret\n")
    os.chmod(secret, 0o600)
    cases = [
        ("dotdot", [("x", "dir", None), ("x/../../escape", "file", None)]),
        ("other-name", [("x", "dir", None), ("other", "file", None)]),
        ("absolute", [("/tmp/abs-escape", "file", None)]),
        ("through-symlink", [("x", "dir", None), ("x/link", "sym", outside),
                             ("x/link/pwned", "file", None)]),
        ("hardlink-out", [("x", "dir", None), ("x/h", "hard", "../../etc/passwd")]),
        ("hardlink-to-symlink", [("x", "dir", None), ("x/l", "sym", secret),
                                 ("x/h", "hard-data", "x/l")]),
        ("device-and-suid", [("x", "dir", None), ("x/null", "chr", None),
                             ("x/suid", "file", b"#!/bin/sh\n"), ("x/ok", "file", b"fine\n")]),
    ]
    try:
        sx("mkdir -p /tmp/x /tmp/evil /usr/local/bin", check=0)
        for name, members in cases:
            path = os.path.join(tmp, name + ".tar")
            with open(path, "wb") as f:
                f.write(hostile_tar(members))
            run(["cp", path, f"{MAIN}:/tmp/evil/{name}.tar"], check=0)
        for name, _ in cases:
            dst = os.path.join(tmp, "dst-" + name)
            os.mkdir(dst)
            # the server runs `tar` for GET: point the fake at this case's stream
            sx(f"printf '#!/bin/sh\\nexec cat /tmp/evil/{name}.tar\\n' > /usr/local/bin/tar && "
               "chmod 755 /usr/local/bin/tar", check=0)
            r = run(["cp", f"{MAIN}:/tmp/x", dst])
            if name == "device-and-suid":
                eq(r.returncode, 0, r.stderr)
                eq(sorted(os.listdir(os.path.join(dst, "x"))), ["ok", "suid"], "no device node")
                mode = os.stat(os.path.join(dst, "x", "suid")).st_mode
                eq(mode & 0o6000, 0, "no setuid bit")
            else:
                expect(r.returncode != 0, f"{name}: accepted: {r.stderr}")
            eq(os.listdir(outside), [], f"{name}: wrote through the symlink")
            expect(not os.path.exists(os.path.join(tmp, "escape")), f"{name}: escaped")
            expect(not os.path.exists("/tmp/abs-escape"), f"{name}: absolute path written")
            expect(not os.path.exists(os.path.join(dst, "other")), f"{name}: other name")
            eq(oct(os.stat(secret).st_mode & 0o7777), oct(0o600), f"{name}: chmod through a link")
            eq(open(secret).read(), "secret\n", f"{name}: written through a link")
    finally:
        sx("rm -rf /usr/local/bin/tar /tmp/evil /tmp/x", check=0)
        shutil.rmtree(tmp)


@test
def policy_reload_through_the_socket():
    rev0 = info(MAIN)["revision"]
    write_policy("second")
    r = run(["policy", "reload", MAIN], check=0)
    rev1 = info(MAIN)["revision"]
    expect(rev1 != rev0, "a new revision")
    expect(rev1.encode() in r.stdout, r.stdout)
    with open(POLICY, "w") as f:
        f.write("return { hots = 1 }\n")
    r = run(["policy", "reload", MAIN])
    eq(r.returncode, 1, "a bad policy is refused")
    expect(b"policy.lua" in r.stderr and b"hots" in r.stderr, r.stderr)
    eq(info(MAIN)["revision"], rev1, "the old revision stays")
    c = Ctl(info(MAIN)["socket"])
    c.send(14, {"op": "policy.status"}, id=9)
    f = c.recv()
    st = json.loads(f[3])
    expect(st["ok"] and "hots" in (st["last_error"] or ""), st)
    c.send(14, {"op": "nope"}, id=10)
    eq(json.loads(c.recv()[3]), {"ok": False, "error": "unknown op 'nope'"})
    c.close()
    write_policy("second")


@test
def ingress_from_start_and_expose():
    r = sx("mkdir -p /tmp/www && echo hello-ingress > /tmp/www/i.txt && cd /tmp/www && "
           "(nohup python3 -m http.server 8000 --bind 127.0.0.1 >/dev/null 2>&1 &); "
           "for i in $(seq 100); do python3 -c 'import urllib.request as u; "
           "u.urlopen(\"http://127.0.0.1:8000/i.txt\")' 2>/dev/null && exit 0; sleep 0.3; done; "
           "exit 1", timeout=120)
    eq(r.returncode, 0, "the guest's web server is up")
    c = Ctl(info(MAIN)["socket"])
    c.send(14, {"op": "expose", "listen": "127.0.0.1:0", "guest_port": 8000, "raw": True}, id=3)
    rep = json.loads(c.recv()[3])
    expect(rep["ok"] and rep["listen"].startswith("127.0.0.1:"), rep)
    c.send(14, {"op": "expose", "listen": "nonsense", "guest_port": 8000}, id=4)
    rep2 = json.loads(c.recv()[3])
    expect(not rep2["ok"] and rep2["error"], rep2)
    c.close()
    fw = info(MAIN)["forwards"]
    eq([(f["guest_port"], f["raw"]) for f in fw], [(8000, False), (8000, True)], "--listen, expose")
    eq(fw[1]["listen"], rep["listen"])
    for f in fw:
        body = urllib.request.urlopen(f"http://{f['listen']}/i.txt", timeout=30).read()
        eq(body, b"hello-ingress\n", f"through {f}")


@test
def logs_and_follow():
    r = run(["logs", MAIN], check=0)
    out = r.stdout.decode()
    expect("ready" in out and "policy reload" in out, out[-800:])
    r = run(["logs", MAIN, "-n", "2"], check=0)
    eq(len(r.stdout.decode().splitlines()), 2, "-n 2")
    p = subprocess.Popen([G, "logs", MAIN, "-f", "-n", "0"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=ENV)
    time.sleep(1)
    run(["policy", "reload", MAIN])  # writes a line
    end = time.time() + 10
    line = b""
    while b"policy" not in line and time.time() < end:
        r, _, _ = select.select([p.stdout], [], [], 0.5)
        if r:
            line += os.read(p.stdout.fileno(), 4096)
    expect(b"policy" in line, f"a new line while following: {line!r}")
    p.send_signal(signal.SIGINT)
    eq(p.wait(timeout=10), 0, "logs -f ends on SIGINT")


@test
def a_logs_tail_that_overflows_the_queue():
    """A client whose queue is nearly full (output it granted and does not read) asks for
    the log's last lines: the tail overflows the queue and ends the connection under
    the request; the supervisor must stay up."""
    s = info(MAIN)
    with open(s["log"], "a") as f:  # a log of 5 MB (the tail reads at most 4 MB)
        f.write(("x" * 99 + "\n") * 50000)
    c = Ctl(s["socket"])
    for i in (1, 2):
        c.exec(i, shell="head -c 15000000 /dev/zero", window=16 << 20)
    end = time.time() + 120
    while info(MAIN)["execs"] and time.time() < end:  # about 30 MB queued for c
        time.sleep(0.5)
    c.send(14, {"op": "logs", "lines": 100000}, id=3)
    time.sleep(1)
    c.close()
    expect(alive(s["pid"]), "the supervisor died")
    eq(sx("echo up", check=0).stdout, b"up\n", "the session still answers")


@test
def sigkill_of_the_supervisor_leaves_nothing():
    r = run(["start", "--name", "t-kill"], timeout=300, check=0)
    sid = r.stdout.decode().strip()
    s = info("t-kill")
    eq(s["id"], sid)
    kids = qemu_children(s["pid"])
    eq(len(kids), 1, "one QEMU under the supervisor")
    t0 = time.time()
    os.kill(s["pid"], signal.SIGKILL)
    expect(wait_gone(kids[0]), "QEMU orphaned after SIGKILL of the supervisor")
    print(f"    QEMU gone {time.time() - t0:.1f}s after the supervisor")
    expect(os.path.exists(os.path.join(SESS, sid + ".json")), "the entry is stale now")
    eq(info("t-kill"), None, "ls does not list it")
    for ext in ("json", "sock", "log"):
        expect(not os.path.exists(os.path.join(SESS, f"{sid}.{ext}")), f"ls removed .{ext}")
    r = run(["exec", "--session", "t-kill", "--", "true"])
    eq(r.returncode, 125)


@test
def force_stop_and_a_guest_that_powers_off():
    """stop --force kills the VM at once; a VM that ends by itself ends its session."""
    for name, how in (("t-force", "force"), ("t-off", "poweroff")):
        run(["start", "--name", name], timeout=300, check=0)
        s = info(name)
        kids = qemu_children(s["pid"])
        if how == "force":
            run(["stop", name, "--force"], check=0, timeout=60)
        else:
            r = run(["exec", "--session", name, "--", "sh", "-c", "sync; poweroff -f; sleep 100"])
            eq(r.returncode, 125, "the exec of a VM that went away")
        expect(wait_gone(s["pid"]), f"{name}: the supervisor exits")
        expect(all(wait_gone(k) for k in kids), f"{name}: QEMU is gone")
        for ext in ("json", "sock", "log"):
            expect(not os.path.exists(os.path.join(SESS, f"{s['id']}.{ext}")), f"{name}: .{ext}")
        eq(info(name), None, f"{name} is not listed")


@test
def stop_ends_execs_and_the_session():
    s = info(MAIN)
    kids = qemu_children(s["pid"])
    log = open(s["log"])  # stays readable after the supervisor removes it
    p = subprocess.Popen([G, "exec", "--session", MAIN, "--", "sh", "-c",
                          "echo started; exec sleep 1000"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=ENV)
    eq(p.stdout.readline(), b"started\n")
    run(["stop", MAIN], check=0, timeout=60)
    eq(p.wait(timeout=30), 125, "a running exec ends with 125")
    expect(b"the sandbox was stopped" in p.stderr.read(), "its message")
    expect(not alive(s["pid"]), "the supervisor is gone")
    expect(all(wait_gone(k) for k in kids), "QEMU is gone")
    for ext in ("json", "sock", "log"):
        expect(not os.path.exists(os.path.join(SESS, f"{s['id']}.{ext}")), f".{ext} removed")
    eq(run(["ls", "--json"], check=0).stdout.strip(), b"[]")
    text = log.read()
    expect("Sanitizer" not in text, text[-3000:])  # an ASan build's supervisor
    expect(f"supervisor {s['pid']} exits (status 0)" in text, text[-1000:])


def main():
    failed = 0
    try:
        for t in TESTS:
            if FILTER and FILTER not in t.__name__ and t.__name__ not in (
                    "start_ls_and_duplicate_name", "stop_ends_execs_and_the_session"):
                continue
            t0 = time.time()
            try:
                t()
                print(f"ok   {t.__name__} ({time.time() - t0:.1f}s)")
            except Exception as e:
                failed += 1
                print(f"FAIL {t.__name__}: {e}")
                if t.__name__ == "start_ls_and_duplicate_name":
                    break
    finally:
        for s in json.loads(run(["ls", "--json"]).stdout or b"[]"):
            os.kill(s["pid"], signal.SIGKILL)
        if failed and os.environ.get("GD_KEEP"):
            print(f"kept {RT}")
        else:
            shutil.rmtree(RT, ignore_errors=True)
    print(f"{len(TESTS)} tests, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
