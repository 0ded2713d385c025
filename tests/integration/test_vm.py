#!/usr/bin/env python3
"""Integration tests: boot the default image under real QEMU (TCG here) and check what
a user of `gondolin` would check. Usage: test_vm.py BUILD_DIR [NAME_FILTER]"""
import hashlib
import os
import pty
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import fcntl
import struct
import termios

from harness import TESTS, eq, expect, test  # noqa: E402

BUILD = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "build")
FILTER = sys.argv[2] if len(sys.argv) > 2 else ""
G = os.path.join(BUILD, "gondolin")
CLIENT = os.path.join(BUILD, "tests", "gd-testclient")
def run(args, input=None, timeout=120, env=None):
    e = dict(os.environ)
    if env:
        e.update(env)
    return subprocess.run([G] + args, input=input, capture_output=True, timeout=timeout, env=e)


def client(mode):
    """tests/integration/testclient.c: one API scenario against a real VM."""
    r = subprocess.run([CLIENT, mode], capture_output=True, timeout=120)
    eq(r.returncode, 0, r.stderr.decode() + r.stdout.decode())


# QEMUs this run started carry this in their environment (inherited from gondolin): other
# VMs on the machine (another suite, another engineer's tests) are not ours to count
os.environ["GD_TEST_VM_RUN"] = f"{os.getpid()}-{time.time()}"


def qemu_pids():
    tag = f"GD_TEST_VM_RUN={os.environ['GD_TEST_VM_RUN']}".encode()
    out = subprocess.run(["pgrep", "-f", "qemu-system"], capture_output=True, text=True).stdout
    mine = set()
    for p in out.split():
        try:
            with open(f"/proc/{p}/environ", "rb") as f:
                if tag in f.read().split(b"\0"):
                    mine.add(int(p))
        except OSError:
            pass  # gone already
    return mine


def one_line(stderr):
    lines = [l for l in stderr.decode().splitlines() if l.strip()]
    eq(len(lines), 1, f"stderr should be one line: {lines}")
    return lines[0]


@test
def stdout_stderr_exit_code():
    r = run(["exec", "--", "sh", "-c", "echo out; echo err >&2; exit 42"])
    eq(r.stdout, b"out\n", "stdout")
    eq(r.stderr, b"err\n", "stderr")
    eq(r.returncode, 42, "exit code")


@test
def shell_string_and_argv_forms():
    r = run(["exec", "-c", "echo $((6*7)) | tr 4 X"])
    eq(r.stdout, b"X2\n", "shell string")
    r = run(["exec", "--", "printf", "%s|", "a b", "", "$HOME"])
    eq(r.stdout, b"a b||$HOME|", "argv passed verbatim")


@test
def stdin_is_streamed():
    data = os.urandom(3 << 20)
    r = run(["exec", "--", "sha256sum"], input=data)
    eq(r.stdout.split()[0].decode(), hashlib.sha256(data).hexdigest(), "sha256 of stdin")
    eq(r.returncode, 0)
    r = run(["exec", "--", "wc", "-c"], input=b"")
    eq(r.stdout.strip(), b"0", "empty stdin gives EOF")


@test
def env_and_cwd():
    r = run(["exec", "-e", "FOO=bar baz", "--env=EMPTY=", "-w", "/usr/share", "--",
             "sh", "-c", 'echo "$FOO|$EMPTY|$(pwd)|$HOME"'])
    eq(r.stdout, b"bar baz||/usr/share|/root\n")
    r = run(["exec", "-w", "/nonexistent", "--", "true"])
    eq(r.returncode, 127, "bad cwd")
    expect(b"/nonexistent" in r.stderr, r.stderr)


@test
def stdout_64mib_checksum_equal():
    r = run(["exec", "-c", "head -c 67108864 /dev/urandom > /tmp/d && sha256sum /tmp/d >&2 && cat /tmp/d"],
            timeout=300)
    eq(r.returncode, 0, r.stderr)
    eq(len(r.stdout), 64 << 20, "bytes")
    eq(hashlib.sha256(r.stdout).hexdigest(), r.stderr.split()[0].decode(), "sha256")


@test
def command_not_found_is_127():
    r = run(["exec", "--", "no-such-command"])
    eq(r.returncode, 127)
    expect(b"no-such-command" in r.stderr, r.stderr)


@test
def signal_death_is_128_plus_n():
    r = run(["exec", "--", "sh", "-c", "kill -9 $$"])
    eq(r.returncode, 137)


@test
def api_concurrent_execs():
    client("concurrent")


@test
def api_stdin_credit():
    client("stdin")


@test
def api_output_flow_control():
    client("flow")


@test
def api_signal_running_process():
    client("signal")


@test
def api_close_with_processes_running():
    before = qemu_pids()
    client("close")
    eq(qemu_pids() - before, set(), "QEMU left behind")


@test
def api_malformed_guest_bytes_close_channel():
    client("inject")


@test
def cli_forwards_sigterm_to_guest():
    p = subprocess.Popen([G, "exec", "--", "sh", "-c", "echo started; exec sleep 1000"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    expect(p.stdout.readline() == b"started\n", "process did not start")
    p.send_signal(signal.SIGTERM)
    eq(p.wait(timeout=30), 143, "exit after SIGTERM")


@test
def second_signal_stops_the_vm():
    before = qemu_pids()
    p = subprocess.Popen([G, "exec", "--", "sh", "-c", "trap '' TERM; echo started; sleep 1000"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    expect(p.stdout.readline() == b"started\n", "process did not start")
    p.send_signal(signal.SIGTERM)  # ignored by the guest process
    time.sleep(1)
    expect(p.poll() is None, "first SIGTERM must only be forwarded")
    p.send_signal(signal.SIGTERM)
    eq(p.wait(timeout=30), 143, "exit after the second SIGTERM")
    eq(qemu_pids() - before, set(), "QEMU left behind")


@test
def sigterm_hangs_up_an_interactive_shell():
    pid, fd = pty.fork()
    if pid == 0:
        os.execv(G, [G, "bash"])
    buf = b""
    end = time.time() + 60
    while b"# " not in buf and time.time() < end:
        r, _, _ = select.select([fd], [], [], 0.2)
        if r:
            buf += os.read(fd, 4096)
    expect(b"# " in buf, buf)
    os.kill(pid, signal.SIGTERM)
    _, st = os.waitpid(pid, 0)
    eq(os.WEXITSTATUS(st), 129, "bash ends on SIGHUP")
    os.close(fd)


def start_time(pid):
    """/proc/PID/stat field 22 (clock ticks after boot)."""
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[19])


def net_dirs(d):
    return sorted(n for n in os.listdir(d) if n.startswith("gondolin-net-"))


@test
def sigkill_leaves_no_qemu_behind():
    """SIGKILL on gondolin: QEMU dies with it and its socket directory goes too; stale
    directories of owners that are gone (dead pid, or a pid reused by another process)
    are removed at the next start, a live owner's directory is left alone."""
    before = qemu_pids()
    tmp = tempfile.mkdtemp()
    try:
        dead = subprocess.Popen(["true"])
        dead.wait()
        me = os.getpid()
        live = f"gondolin-net-{me}-{start_time(me)}-Live00"
        stale = [f"gondolin-net-{dead.pid}-{start_time(me)}-Dead00",  # owner exited
                 f"gondolin-net-{me}-{start_time(me) + 1}-Reuse0"]    # pid now someone else's
        for n in [live] + stale:
            os.mkdir(os.path.join(tmp, n))
            with open(os.path.join(tmp, n, "0"), "w"):
                pass
        env = dict(os.environ, TMPDIR=tmp, XDG_RUNTIME_DIR=tmp)
        p = subprocess.Popen([G, "exec", "--", "sh", "-c", "echo started; exec sleep 1000"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        expect(p.stdout.readline() == b"started\n", "process did not start")
        mine = qemu_pids() - before
        eq(len(mine), 1, "one QEMU while running")
        running = net_dirs(tmp)
        eq(len(running), 2, f"the live owner's directory and the new one: {running}")
        expect(live in running, f"a live owner's directory was removed: {running}")
        ours = [n for n in running if n != live][0]
        expect(ours.startswith(f"gondolin-net-{p.pid}-{start_time(p.pid)}-"), ours)
        p.kill()
        p.wait()
        deadline = time.time() + 10
        while time.time() < deadline and (qemu_pids() & mine or net_dirs(tmp) != [live]):
            time.sleep(0.1)
        eq(qemu_pids() & mine, set(), "QEMU orphaned after SIGKILL")
        eq(sorted(os.listdir(tmp)), [live], "files left after SIGKILL")
    finally:
        shutil.rmtree(tmp)


@test
def guest_poweroff_mid_exec_is_reported():
    r = run(["exec", "--", "sh", "-c", "echo before; sync; poweroff -f; sleep 100"])
    eq(r.stdout, b"before\n")
    eq(r.returncode, 125)
    expect("guest powered off" in one_line(r.stderr), r.stderr)


@test
def guest_panic_mid_exec_is_reported():
    r = run(["exec", "--", "sh", "-c", "echo 1 > /proc/sys/kernel/sysrq; echo c > /proc/sysrq-trigger; sleep 100"])
    eq(r.returncode, 125)
    expect("the guest kernel panicked" in one_line(r.stderr), r.stderr)


@test
def pty_session_via_pty():
    """`gondolin bash` on a pty: commands run, resize propagates, Ctrl-D ends, status passes."""
    pid, fd = pty.fork()
    if pid == 0:
        os.execv(G, [G, "bash"])
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    buf = b""

    def read_until(token, timeout=60):
        nonlocal buf
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

    read_until(b"# ")
    os.write(fd, b"stty size; tty; echo mark$((1+1))\r")
    read_until(b"mark2")
    expect(b"30 100" in buf, f"initial size: {buf[-200:]!r}")
    expect(b"/dev/pts/" in buf, "tty")
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 41, 131, 0, 0))
    time.sleep(0.5)
    os.write(fd, b"stty size; echo mark$((2+1))\r")
    read_until(b"mark3")
    expect(b"41 131" in buf, f"resize not propagated: {buf[-200:]!r}")
    os.write(fd, b"(exit 5); echo last=$?\r")
    read_until(b"last=5")
    os.write(fd, b"(exit 5)\r")
    time.sleep(1)
    os.write(fd, b"\x04")  # Ctrl-D: bash exits with the last status
    _, st = os.waitpid(pid, 0)
    eq(os.WEXITSTATUS(st), 5, "exit status of the shell")
    os.close(fd)


@test
def pty_session_under_tmux():
    if not shutil.which("tmux"):
        raise AssertionError("tmux not installed")
    sock = f"gd-test-{os.getpid()}"
    out = tempfile.mktemp()
    t = ["tmux", "-L", sock]
    subprocess.run(t + ["new-session", "-d", "-x", "90", "-y", "25", f"{G} bash; echo EXIT=$? > {out}"], check=True)
    try:
        def pane():
            return subprocess.run(t + ["capture-pane", "-p"], capture_output=True, text=True).stdout
        end = time.time() + 60
        while "bash-" not in pane() and time.time() < end:
            time.sleep(0.3)
        subprocess.run(t + ["send-keys", "stty size", "Enter"], check=True)
        time.sleep(1.5)
        expect("25 90" in pane(), pane())
        subprocess.run(t + ["send-keys", "exit 3", "Enter"], check=True)
        end = time.time() + 30
        while not os.path.exists(out) and time.time() < end:
            time.sleep(0.2)
        eq(open(out).read().strip(), "EXIT=3")
    finally:
        subprocess.run(t + ["kill-server"], capture_output=True)
        if os.path.exists(out):
            os.unlink(out)


@test
def exec_tty_flag():
    r = run(["exec", "-t", "--", "sh", "-c", "tty; echo err >&2"])
    expect(r.stdout.startswith(b"/dev/pts/"), r.stdout)
    expect(b"err" in r.stdout, "stderr goes to the pty")


@test
def bash_with_piped_script_ends_at_eof():
    r = run(["bash"], input=b"echo hi-$((40+2))\nsleep 0.5; echo after\n", timeout=60)
    eq(r.returncode, 0, r.stdout)
    expect(b"hi-42" in r.stdout and b"after" in r.stdout, r.stdout)
    r = run(["exec", "-t", "--", "cat"], input=b"line1\nline2\n", timeout=60)
    eq(r.returncode, 0, r.stdout)
    expect(b"line2" in r.stdout, "a canonical-mode reader gets EOF too")


@test
def pty_stdin_larger_than_the_tty_buffer():
    """Input that the pty cannot take at once (the program is busy) is delivered later."""
    lines = b"".join(b"%05d %s\n" % (i, b"x" * 90) for i in range(3000))
    r = run(["exec", "-t", "--", "sh", "-c", "stty -echo; sleep 1; head -n 3000 | tail -n 1"], input=lines)
    eq(r.returncode, 0, r.stdout[-200:])
    expect(b"02999 " in r.stdout, r.stdout[-200:])


@test
def image_is_never_modified():
    img = os.path.expanduser("~/.cache/gondolin/images/default-x86_64/rootfs.ext4")
    before = hashlib.sha256(open(img, "rb").read()).hexdigest()
    r = run(["exec", "--", "sh", "-c", "echo x > /etc/newfile && rm -rf /usr/share/ca-certificates && cat /etc/newfile"])
    eq(r.stdout, b"x\n", r.stderr)
    eq(hashlib.sha256(open(img, "rb").read()).hexdigest(), before, "rootfs.ext4 changed")
    r = run(["exec", "--", "ls", "/etc/newfile"])
    eq(r.returncode, 2, "writes must not persist across VMs")


@test
def bad_cli_input_one_line():
    for args, code in [(["exec", "--bogus"], 2), (["exec", "--memory", "lots", "--", "true"], 2),
                       (["exec", "--cpus", "0", "--", "true"], 2), (["exec"], 2),
                       (["exec", "--accel", "xen", "--", "true"], 2), (["frobnicate"], 2),
                       (["exec", "-e", "NOEQUALS", "--", "true"], 2), (["exec", "true"], 2)]:
        r = run(args)
        eq(r.returncode, code, f"{args}")
        expect(one_line(r.stderr).startswith("gondolin: "), r.stderr)
    r = run(["exec", "--image", "/nonexistent", "--", "true"])
    eq(r.returncode, 125)
    expect("manifest.json" in one_line(r.stderr), r.stderr)


@test
def corrupt_image_names_the_file():
    src = os.path.expanduser("~/.cache/gondolin/images/default-x86_64")
    tmp = tempfile.mkdtemp()
    try:
        for f in ["manifest.json", "vmlinux", "vmlinuz", "initramfs.cpio.lz4", "rootfs.ext4"]:
            shutil.copy(os.path.join(src, f), tmp)
        with open(os.path.join(tmp, "initramfs.cpio.lz4"), "r+b") as f:
            f.seek(1000)
            b = f.read(1)
            f.seek(1000)
            f.write(bytes([b[0] ^ 0x20]))
        r = run(["exec", "--image", tmp, "--", "true"])
        eq(r.returncode, 125)
        line = one_line(r.stderr)
        expect("initramfs.cpio.lz4" in line and "sha256 mismatch" in line, line)
    finally:
        shutil.rmtree(tmp)


@test
def start_timeout_has_clear_error():
    # 1 ms: no start makes it (a restore from a booted snapshot can take under 200 ms on
    # a quiet machine, so a larger limit would let the start succeed)
    r = run(["exec", "--", "true"], env={"GONDOLIN_START_TIMEOUT_MS": "1"})
    eq(r.returncode, 125)
    expect("did not start within 1 ms" in one_line(r.stderr), r.stderr)


def fake_qemu(tmp, kvm_branch="", all_branch=""):
    """A QEMU wrapper that logs the accelerator of every launch (tmp/launches), does
    `kvm_branch` (shell) when asked for KVM and `all_branch` always, and otherwise runs
    the real QEMU. Returns (image, env, launches()); env makes the product use it and keeps
    verdicts in tmp. By itself the env plays a host whose /dev/kvm opens and passes the API
    probe, whatever this machine has (GONDOLIN_ASSUME_KVM_API)."""
    fake = os.path.join(tmp, "qemu-fake")
    log = os.path.join(tmp, "launches")
    real = shutil.which("qemu-system-x86_64")
    with open(fake, "w") as f:
        f.write(f"""#!/bin/sh
case "$*" in *accel=kvm*) echo kvm >> {log};; *accel=tcg*) echo tcg >> {log};; esac
{all_branch}
case "$*" in *accel=kvm*) {kvm_branch};; esac
exec {real} "$@"
""")
    os.chmod(fake, 0o755)
    img = os.path.expanduser("~/.cache/gondolin/images/default-x86_64")
    env = {"GONDOLIN_QEMU": fake, "GONDOLIN_ASSUME_KVM_API": "1", "XDG_CACHE_HOME": tmp}

    def launches():
        if not os.path.exists(log):
            return []
        with open(log) as f:
            out = f.read().split()
        os.unlink(log)
        return out
    return img, env, launches


def no_kvm(env, tmp):
    """The same env on a host without /dev/kvm."""
    e = dict(env)
    del e["GONDOLIN_ASSUME_KVM_API"]
    e["GONDOLIN_KVM_DEVICE"] = os.path.join(tmp, "no-such-kvm")
    return e


def verdict_file(tmp):
    p = os.path.join(tmp, "gondolin", "kvm-verdict")
    return open(p).read() if os.path.exists(p) else ""


def doctor_kvm_lines(env):
    r = run(["doctor"], env=env)
    return "\n".join(l for l in r.stdout.decode().splitlines() if " kvm " in l or " accel " in l)


# What QEMU 7.2 prints on hosts whose /dev/kvm opens but cannot run a guest (then aborts).
MSR_CRASH = ('echo "qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69" >&2; '
             'echo "qemu-system-x86_64: ../../target/i386/kvm/kvm.c:2857: kvm_buf_set_msrs: '
             'Assertion \\`ret == cpu->kvm_msr_buf->nmsrs\' failed." >&2; kill -ABRT $$')


@test
def kvm_hang_falls_back_to_tcg_once():
    """A host where KVM opens but the guest hangs: the watchdog kills that boot, says so
    in one line, boots under TCG, and remembers the verdict; doctor says it hung."""
    tmp = tempfile.mkdtemp()
    try:
        img, env, launches = fake_qemu(tmp, "exec sleep 600")
        env["GONDOLIN_KVM_WATCHDOG_MS"] = "1500"
        r = run(["exec", "--image", img, "--", "echo", "ran"], env=env)
        eq(r.stdout, b"ran\n", r.stderr)
        eq(r.returncode, 0)
        line = one_line(r.stderr)
        expect("the guest hung under KVM (QEMU ran, no boot within 1500 ms); using TCG" in line, line)
        eq(launches(), ["kvm", "tcg"], "launches")
        expect(verdict_file(tmp).startswith("0\t"), "verdict")
        r = run(["exec", "--image", img, "--", "echo", "again"], env=env)
        eq(r.stdout, b"again\n")
        eq(r.stderr, b"", "second run must not retry KVM")
        eq(launches(), ["tcg"], "launches of the second run")
        d = doctor_kvm_lines(env)
        expect("unusable here: the guest hung under KVM" in d and "TCG" in d, d)
    finally:
        shutil.rmtree(tmp)


@test
def kvm_crash_falls_back_to_tcg():
    """QEMU aborts under KVM (the MSR assertion of hosts with a software /dev/kvm): one
    line saying it crashed, with the signal and QEMU's error line; doctor says the same."""
    tmp = tempfile.mkdtemp()
    try:
        img, env, launches = fake_qemu(tmp, MSR_CRASH)
        r = run(["exec", "--image", img, "--", "echo", "ran"], env=env)
        eq(r.stdout, b"ran\n", r.stderr)
        eq(r.returncode, 0)
        line = one_line(r.stderr)
        want = ("KVM is present but unusable: QEMU crashed under KVM (SIGABRT): qemu-system-x86_64: "
                "error: failed to set MSR 0x10a to 0x69; using TCG")
        expect(want in line, line)
        eq(launches(), ["kvm", "tcg"], "launches")
        d = doctor_kvm_lines(env)
        expect("QEMU crashed under KVM (SIGABRT): qemu-system-x86_64: error: failed to set MSR" in d, d)
        expect("hung" not in d, d)
        r = run(["exec", "--image", img, "--", "true"], env=env)
        eq((r.returncode, r.stderr, launches()), (0, b"", ["tcg"]), "second run")
    finally:
        shutil.rmtree(tmp)


@test
def kvm_exit_falls_back_to_tcg():
    """QEMU exits under KVM (emulation failure) instead of hanging: same fallback."""
    tmp = tempfile.mkdtemp()
    try:
        img, env, launches = fake_qemu(tmp, 'echo "KVM internal error. Suberror: 1" >&2; exit 1')
        r = run(["exec", "--image", img, "--", "echo", "ran"], env=env)
        eq(r.stdout, b"ran\n", r.stderr)
        eq(r.returncode, 0)
        line = one_line(r.stderr)
        expect("QEMU exited with status 1 under KVM: KVM internal error. Suberror: 1; using TCG" in line,
               line)
        eq(launches(), ["kvm", "tcg"], "launches")
        d = doctor_kvm_lines(env)
        expect("QEMU exited with status 1 under KVM: KVM internal error" in d, d)
    finally:
        shutil.rmtree(tmp)


@test
def no_kvm_device_runs_tcg_silently():
    """A host without /dev/kvm: TCG from the start, nothing on stderr, nothing remembered;
    doctor names the missing device."""
    tmp = tempfile.mkdtemp()
    try:
        img, env, launches = fake_qemu(tmp, MSR_CRASH)
        env = no_kvm(env, tmp)
        r = run(["exec", "--image", img, "--", "echo", "ran"], env=env)
        eq((r.returncode, r.stdout, r.stderr), (0, b"ran\n", b""), "exec")
        eq(launches(), ["tcg"], "launches")
        eq(verdict_file(tmp), "", "verdict")
        d = doctor_kvm_lines(env)
        expect("no-such-kvm: No such file or directory" in d and "TCG" in d, d)
    finally:
        shutil.rmtree(tmp)


@test
def qemu_failure_shows_its_stderr():
    """QEMU fails for a reason of its own: the one-line error carries its stderr, on a host
    with KVM (tried, fails the same way under TCG: not KVM's fault, nothing remembered, no
    KVM notice), without KVM, and with --accel forced."""
    tmp = tempfile.mkdtemp()
    try:
        msg = "qemu-system-x86_64: -drive file=rootfs.ext4: Could not open: Permission denied"
        img, env, launches = fake_qemu(tmp, all_branch=f'echo "{msg}" >&2; exit 1')
        for name, e, args, want in [("kvm host", env, [], ["kvm", "tcg"]),
                                    ("no kvm", no_kvm(env, tmp), [], ["tcg"]),
                                    ("--accel tcg", env, ["--accel", "tcg"], ["tcg"]),
                                    ("--accel kvm", env, ["--accel", "kvm"], ["kvm"])]:
            r = run(["exec", "--image", img] + args + ["--", "true"], env=e)
            eq(r.returncode, 125, name)
            line = one_line(r.stderr)
            expect("QEMU exited during boot (QEMU exit status 1); qemu: " + msg in line, f"{name}: {line}")
            eq(launches(), want, f"{name}: launches")
            eq(verdict_file(tmp), "", f"{name}: verdict")
    finally:
        shutil.rmtree(tmp)


@test
def help_and_version():
    r = run(["--version"])
    expect(r.stdout.startswith(b"gondolin "), r.stdout)
    for cmd in ["exec", "bash", "build", "doctor"]:
        r = run([cmd, "--help"])
        eq(r.returncode, 0, cmd)
        expect(b"usage: gondolin " + cmd.encode() in r.stdout, r.stdout)


@test
def doctor_reports():
    r = run(["doctor"])
    expect(b"qemu" in r.stdout and b"image" in r.stdout, r.stdout)
    eq(r.returncode, 0, r.stdout.decode())


@test
def twenty_consecutive_boots():
    for i in range(20):
        r = run(["exec", "--", "true"], timeout=60)
        eq(r.returncode, 0, f"boot {i}: {r.stderr!r}")


@test
def default_image_build_is_reproducible():
    """Two builds, same buildId; and an interrupted build leaves nothing behind."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    cur = os.path.join(cache, "gondolin/images/default-x86_64/manifest.json")
    import json
    want = json.load(open(cur))["buildId"]
    tmp = tempfile.mkdtemp()
    try:
        out = os.path.join(tmp, "img")
        p = subprocess.Popen([G, "build", "--default", "--output", out], stderr=subprocess.PIPE)
        while b"unpacking" not in p.stderr.readline():
            pass
        p.send_signal(signal.SIGINT)  # mid-build
        p.wait(timeout=60)
        expect(not os.path.exists(out), "an interrupted build must not produce an image")
        r = subprocess.run([G, "build", "--default", "--output", out], capture_output=True, timeout=600)
        eq(r.returncode, 0, r.stderr.decode())
        eq(json.load(open(os.path.join(out, "manifest.json")))["buildId"], want, "buildId")
        eq(sorted(os.listdir(tmp)), ["img", "img.lock"], "leftovers of the interrupted build")
        e = subprocess.run(["e2fsck", "-fn", os.path.join(out, "rootfs.ext4")], capture_output=True)
        eq(e.returncode, 0, e.stdout.decode())
    finally:
        shutil.rmtree(tmp)


def main():
    # the default image is built on first use; do it before timing-sensitive tests
    r = subprocess.run([G, "exec", "--", "true"], capture_output=True, timeout=900)
    if r.returncode != 0:
        print("cannot boot the default image:", r.stderr.decode())
        return 1
    passed = failed = 0
    for t in TESTS:
        if FILTER and FILTER not in t.__name__:
            continue
        start = time.time()
        try:
            t()
            passed += 1
            print(f"ok   {t.__name__} ({time.time() - start:.1f}s)", flush=True)
        except Exception as e:  # noqa: BLE001 - report every failure and go on
            failed += 1
            print(f"FAIL {t.__name__}: {e}", flush=True)
    print(f"{passed + failed} integration tests, {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
