#!/usr/bin/env python3
"""SSH egress in real VMs: git and ssh in the guest, a real OpenSSH sshd on host loopback
(its own host key, an authorized key only the host holds, bare repositories behind
git-shell). The guest reaches it only through gondolin's SSH proxy: exec of git's
transport commands is proxied, everything else is refused with one line.

Usage: test_ssh_egress.py BUILD_DIR [NAME_FILTER]"""
import getpass
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time

from harness import eq, expect, run, test  # noqa: E402

BUILD = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "build")
FILTER = sys.argv[2] if len(sys.argv) > 2 else ""
G = os.path.join(BUILD, "gondolin")
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
IMAGE = "gd-test-ssh-egress:1"


def sh(*cmd, **kw):
    r = subprocess.run(list(cmd), capture_output=True, text=True, timeout=120, **kw)
    eq(r.returncode, 0, f"{cmd}: {r.stderr}")
    return r.stdout


class Upstream:
    """sshd on 127.0.0.1:PORT; repo.git (one commit, README "hello") behind git-shell."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="gd-ssh-egress-")
        d = self.dir
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", f"{d}/hostkey")
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", f"{d}/other_hostkey")
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", f"{d}/client")
        self.key = f"{d}/client"
        with open(f"{d}/authorized_keys", "w") as f:
            f.write('restrict,command="git-shell -c \\"$SSH_ORIGINAL_COMMAND\\"" '
                    + open(f"{d}/client.pub").read())
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        with open(f"{d}/sshd_config", "w") as f:
            f.write(f"ListenAddress 127.0.0.1\nPort {self.port}\nHostKey {d}/hostkey\n"
                    f"AuthorizedKeysFile {d}/authorized_keys\nStrictModes no\nUsePAM no\n"
                    "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
                    "PermitRootLogin prohibit-password\nPidFile none\n")
        pub = open(f"{d}/hostkey.pub").read().split()[:2]
        other = open(f"{d}/other_hostkey.pub").read().split()[:2]
        # git.test is known; changed.test is listed with another key; unknown.test is not
        with open(f"{d}/known_hosts", "w") as f:
            f.write(f"[git.test]:{self.port},[evil.test]:{self.port} {' '.join(pub)}\n")
            f.write(f"[changed.test]:{self.port} {' '.join(other)}\n")
        self.repo = f"{d}/repo.git"
        sh("git", "init", "-q", "--bare", "-b", "main", self.repo)
        sh("git", "init", "-q", "-b", "main", f"{d}/w")
        with open(f"{d}/w/README", "w") as f:
            f.write("hello\n")
        git = ["git", "-C", f"{d}/w", "-c", "user.email=t@t", "-c", "user.name=t"]
        sh(*git, "add", "README")
        sh(*git, "commit", "-qm", "init")
        sh(*git, "push", "-q", self.repo, "main")
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege-separation dir
        self.sshd = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", f"{d}/sshd_config"],
                                     stderr=subprocess.PIPE, text=True)
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise AssertionError("sshd did not start: " + self.sshd.stderr.read()[:500])
        self.user = getpass.getuser()
        self.cfg = f"{d}/config"  # $XDG_CONFIG_HOME: the proxy's host key lives here

    def url(self, host="git.test", repo=None):
        return f"ssh://{self.user}@{host}:{self.port}{repo or self.repo}"

    def flags(self, *names):
        # the key's user: without one a host-held key goes up as "git" (no such user here)
        f = ["--image", IMAGE, "--ssh-key", f"{self.user}@git.test={self.key}",
             "--ssh-key", f"{self.user}@*.test={self.key}",
             "--ssh-known-hosts", f"{self.dir}/known_hosts"]
        for n in ("git.test",) + names:
            f += ["--resolve", f"{n}:127.0.0.1", "--ssh-allow", f"{n}:{self.port}"]
        return f + ["--allow-internal", "git.test", "--allow-internal", "changed.test",
                    "--allow-internal", "unknown.test"]

    def gexec(self, flags, script, timeout=600):
        env = dict(os.environ, XDG_CONFIG_HOME=self.cfg)
        r = subprocess.run([G, "exec"] + flags + ["--", "sh", "-c", script], capture_output=True,
                           text=True, timeout=timeout, env=env)
        return r.returncode, r.stdout, r.stderr

    def close(self):
        self.sshd.kill()
        self.sshd.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def image():
    r = subprocess.run([G, "build", "--config",
                        os.path.join(ROOT, "tests/integration/ssh-egress-image.json"),
                        "--tag", IMAGE], capture_output=True, text=True, timeout=1800)
    eq(r.returncode, 0, "building the ssh-egress image: " + r.stderr[-2000:])


@test
def clone_fetch_push(up):
    """git clone, fetch and push over SSH through the proxy with the host-held key; the
    guest trusts the proxy's host key from /etc/ssh/ssh_known_hosts (no
    StrictHostKeyChecking=no); the private key is nowhere in the guest"""
    marker = open(up.key).read().splitlines()[2]  # a line of the private key's base64
    script = f"""
set -e
cd /tmp
cat /etc/ssh/ssh_known_hosts
git clone -q {up.url()} r
echo "README $(cat r/README)"
cd r
echo second > second.txt
git add second.txt
git -c user.email=g@g -c user.name=guest commit -qm second
git push -q origin main
echo PUSHED
sleep 1
git fetch -q origin
echo "FETCHED $(git log --oneline origin/main | wc -l)"
cd /tmp
for i in 1 2 3 4 5 6 7 8 9 10; do git clone -q {up.url()} c$i > c$i.log 2>&1 & done
wait
for i in 1 2 3 4 5 6 7 8 9 10; do cat c$i/second.txt 2>/dev/null || cat c$i.log; done | sort | uniq -c
echo "KEYFILES $(grep -rlF -e '{marker}' /etc /root /home /tmp /run /var /usr/local 2>/dev/null | wc -l)"
echo "KEYENV $(env | grep -cF -e '{marker}' || true)"
echo "KEYPS $(ps auxww | grep -v grep | grep -cF -e '{marker}' || true)"
"""
    rc, out, err = up.gexec(up.flags(), script)
    eq(rc, 0, f"guest script: {out}\n{err}")
    hostpub = sh("ssh-keygen", "-y", "-f", f"{up.cfg}/gondolin/ssh/host_ed25519").split()[1]
    expect(f"[git.test]:{up.port} ssh-ed25519 {hostpub}" in out, f"guest known_hosts: {out}")
    mode = stat.S_IMODE(os.stat(f"{up.cfg}/gondolin/ssh/host_ed25519").st_mode)
    eq(mode, 0o600, "host key mode")
    expect("README hello" in out, out)
    expect("PUSHED" in out, out)
    expect("FETCHED 2" in out, out)
    expect("     10 second" in out, f"10 concurrent clones: {out}")
    log = sh("git", "-C", up.repo, "log", "--format=%s", "main")
    eq(log.split(), ["second", "init"], "the upstream repository got the push")
    for k in ("KEYFILES 0", "KEYENV 0", "KEYPS 0"):
        expect(k in out, f"the private key reached the guest: {out}")
    expect("exec " in err and "git-receive-pack" in err and "exit 0" in err, f"host log: {err}")


@test
def refusals(up):
    """non-git commands, interactive shells, sftp and port forwarding are refused with one
    line; unknown and changed upstream host keys and an internal address are refused
    with a clear reason"""
    ssh = f"ssh -p {up.port} -o BatchMode=yes"
    script = f"""
cd /tmp
{ssh} {up.user}@git.test 'cat /etc/passwd' > o1 2> e1; echo "CMD $? $(cat e1)"
{ssh} -tt {up.user}@git.test < /dev/null > o2 2> e2; echo "SHELL $? $(tr -d '\\r' < e2 | grep gondolin)"
{ssh} -s {up.user}@git.test sftp < /dev/null > o3 2> e3; echo "SFTP $? $(grep gondolin e3)"
{ssh} -o ExitOnForwardFailure=yes -R 7000:127.0.0.1:1 {up.user}@git.test \
  "git-upload-pack '{up.repo}'" < /dev/null > o4 2> e4; echo "FWD-R $? $(cat e4)"
{ssh} -W 127.0.0.1:1 {up.user}@git.test < /dev/null > o5 2> e5; echo "FWD-W $? $(cat e5)"
timeout 60 {ssh} -N -L 7001:127.0.0.1:1 {up.user}@git.test > o6 2> e6 &
sleep 5
bash -c 'exec 3<>/dev/tcp/127.0.0.1/7001 && cat <&3' > /dev/null 2>&1
sleep 2; kill %1; echo "FWD-L $(cat e6)"
git clone -q {up.url(repo='/etc')} x 2> e7; echo "NOTGIT $? $(cat e7)"
ssh -p {up.port} -o BatchMode=yes -l 'a+b' git.test "git-upload-pack '{up.repo}'" < /dev/null 2> e9; echo "USER $? $(grep gondolin e9)"
for h in unknown.test changed.test evil.test; do
  git ls-remote {up.url(host='HOST')} 2> e8 | sed "s/^/LS-$h /"; echo "HK-$h $(grep gondolin e8)"
done
"""
    script = script.replace("HOST", "$h")
    rc, out, err = up.gexec(up.flags("unknown.test", "changed.test", "evil.test"), script)
    eq(rc, 0, f"guest script: {out}\n{err}")
    lines = {l.split(" ", 1)[0]: l for l in out.splitlines() if " " in l}
    expect(lines["CMD"].startswith("CMD 1 gondolin: ssh: git.test: command refused"), lines["CMD"])
    expect(lines["SHELL"].startswith("SHELL 1 gondolin: ssh: git.test: interactive shell refused"),
           lines["SHELL"])
    expect(lines["SFTP"].startswith("SFTP 1 gondolin: ssh: git.test: subsystem sftp refused"),
           lines["SFTP"])
    expect(lines["FWD-R"].startswith("FWD-R 255") and "forwarding failed" in lines["FWD-R"],
           lines["FWD-R"])
    expect(lines["FWD-W"].startswith("FWD-W 255") and "prohibited" in lines["FWD-W"],
           lines["FWD-W"])
    expect("prohibited" in lines["FWD-L"], lines["FWD-L"])
    expect(lines["NOTGIT"].startswith("NOTGIT 128"), lines["NOTGIT"])
    expect(lines["USER"].startswith("USER 1 gondolin: ssh: git.test: the SSH user name must be"),
           lines["USER"])
    expect("not in known_hosts" in lines["HK-unknown.test"], lines["HK-unknown.test"])
    expect("CHANGED" in lines["HK-changed.test"], lines["HK-changed.test"])
    # the guest is told the host, key type and fingerprint, never where known_hosts is
    expect(up.dir not in lines["HK-changed.test"] and "SHA256:" in lines["HK-changed.test"],
           lines["HK-changed.test"])
    expect(f"{up.dir}/known_hosts:2" in err, f"the host log names the line: {err}")
    expect("internal address" in lines["HK-evil.test"], lines["HK-evil.test"])
    expect(not any(l.startswith("LS-") for l in out.splitlines()), f"a refused host answered: {out}")
    expect("denied" in err and "port forwarding" in err, f"host log: {err}")


@test
def lua_rules(up):
    """a Lua policy's ssh table and on_ssh_exec: clone allowed, a push denied by the hook,
    a repository outside repos and a command outside commands refused; one audit record
    per exec"""
    d = up.dir
    sh("git", "clone", "-q", "--bare", up.repo, f"{d}/locked.git")
    os.makedirs(f"{d}/elsewhere", exist_ok=True)
    sh("git", "clone", "-q", "--bare", up.repo, f"{d}/elsewhere/x.git")
    top = d.strip("/")
    policy = f"{d}/ssh-policy.lua"
    with open(policy, "w") as f:
        f.write(f"""
return {{
  ssh = {{
    ["git.test:{up.port}"] = {{ key = "{up.key}", repos = {{ "{top}/*" }}, user = "{up.user}",
                               commands = {{ "git-upload-pack", "git-receive-pack" }} }},
    ["ro.test:{up.port}"] = {{ key = "file:{up.key}", commands = {{ "git-upload-pack" }},
                              user = "{up.user}" }},
    ["nouser.test:{up.port}"] = {{ key = "{up.key}" }},
  }},
  on_ssh_exec = function(req, ctx)
    local g = req:git()
    if g.service == "git-receive-pack" and g.repo:match("/locked$") then
      req:deny("pushes to locked repositories are off (" .. req:user() .. "@" .. req:host() .. ")")
    end
  end,
}}
""")
    audit = f"{d}/audit.jsonl"
    flags = ["--image", IMAGE, "--policy", policy, "--audit", audit,
             "--ssh-known-hosts", f"{d}/known_hosts"]
    with open(f"{d}/known_hosts", "a") as f:
        f.write(f"[ro.test]:{up.port},[nouser.test]:{up.port} "
                + " ".join(open(f"{d}/hostkey.pub").read().split()[:2]) + "\n")
    for n in ("git.test", "ro.test", "nouser.test"):
        flags += ["--resolve", f"{n}:127.0.0.1", "--allow-internal", n]
    script = f"""
cd /tmp
git clone -q {up.url(repo=d + '/locked.git')} l && echo CLONED
cd l && echo x > x && git add x && git -c user.email=g@g -c user.name=g commit -qm x
git push -q origin main 2> ../e1; echo "PUSH $? $(grep gondolin ../e1)"
cd /tmp
git clone -q {up.url(repo=d + '/elsewhere/x.git')} x 2> e2; echo "OUTSIDE $? $(grep gondolin e2)"
git clone -q {up.url(host='ro.test')} ro && echo RO-CLONED
cd ro && echo y > y && git add y && git -c user.email=g@g -c user.name=g commit -qm y
git push -q origin main 2> ../e3; echo "RO-PUSH $? $(grep gondolin ../e3)"
cd /tmp
git clone -q {up.url(host='nouser.test')} nu 2> e4; echo "NOUSER $? $(grep gondolin e4)"
"""
    before = sh("git", "-C", f"{d}/locked.git", "log", "--format=%s", "main")
    rc, out, err = up.gexec(flags, script)
    eq(rc, 0, f"guest script: {out}\n{err}")
    lines = {l.split(" ", 1)[0]: l for l in out.splitlines() if l}
    expect("CLONED" in lines and "RO-CLONED" in lines, out)
    expect(lines["PUSH"].startswith("PUSH 128") and
           f"pushes to locked repositories are off ({up.user}@git.test)" in lines["PUSH"],
           lines["PUSH"])
    expect(lines["OUTSIDE"].startswith("OUTSIDE 128") and "outside the SSH rule's repos"
           in lines["OUTSIDE"], lines["OUTSIDE"])
    expect(lines["RO-PUSH"].startswith("RO-PUSH 128") and "does not allow this command"
           in lines["RO-PUSH"], lines["RO-PUSH"])
    # a rule with a key and no user: the guest asked for its own name, "git" went up
    expect(lines["NOUSER"].startswith("NOUSER 128") and "for user git" in lines["NOUSER"],
           lines["NOUSER"])
    eq(sh("git", "-C", f"{d}/locked.git", "log", "--format=%s", "main"), before,
       "the denied push changed nothing")
    recs = [json.loads(l) for l in open(audit) if '"type":"ssh"' in l]
    got = sorted((r["host"], r["decision"], r["command"].split()[0]) for r in recs)
    eq(got, [("git.test", "allow", "git-upload-pack"), ("git.test", "deny", "git-receive-pack"),
             ("git.test", "deny", "git-upload-pack"),
             ("nouser.test", "deny", "git-upload-pack"), ("ro.test", "allow", "git-upload-pack"),
             ("ro.test", "deny", "git-receive-pack")], "audit records")
    hook = [r for r in recs if r["decision"] == "deny" and r["host"] == "git.test"
            and "receive" in r["command"]][0]
    expect("ssh-policy.lua:" in hook["rule"], f"the deny's rule is its line: {hook}")
    ok = [r for r in recs if r["decision"] == "allow"][0]
    expect(ok["exit"] == 0 and ok["bytes_down"] > 0 and ok["revision"], ok)


@test
def limits(up):
    """--ssh-limit: an idle exec is cut with one line; past max_conns a guest connection
    is closed (and the slot comes back); an upstream that never speaks SSH times out"""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts (the kernel does) and never says a word
    sport = silent.getsockname()[1]
    flags = up.flags() + ["--ssh-limit", "max_conns=1", "--ssh-limit", "idle_ms=6000",
                          "--ssh-limit", "handshake_ms=5000", "--resolve", "hang.test:127.0.0.1",
                          "--allow-internal", "hang.test", "--ssh-allow", f"hang.test:{sport}"]
    ssh = f"ssh -p {up.port} -o BatchMode=yes {up.user}@git.test"
    script = f"""
cd /tmp
t0=$(date +%s)
sleep 20 | {{ {ssh} "git-upload-pack '{up.repo}'" > o1 2> e1; date +%s > t1; }} &
sleep 3
{ssh} "git-upload-pack '{up.repo}'" < /dev/null > o2 2> e2; echo "SECOND $?"
wait
echo "IDLE $(( $(cat t1) - t0 )) $(grep gondolin e1)"
git ls-remote {up.url()} > o3 2> e3; echo "AGAIN $? $(wc -l < o3)"
t0=$(date +%s)
git ls-remote ssh://{up.user}@hang.test:{sport}/r.git 2> e4; echo "HANG $? $(( $(date +%s) - t0 )) $(grep gondolin e4)"
"""
    try:
        rc, out, err = up.gexec(flags, script)
    finally:
        silent.close()
    eq(rc, 0, f"guest script: {out}\n{err}")
    lines = {l.split(" ", 1)[0]: l for l in out.splitlines() if l}
    expect(lines["SECOND"] == "SECOND 255", f"over max_conns: {lines['SECOND']}\n{err}")
    expect("too many SSH connections" in err, f"host log: {err}")
    idle = lines["IDLE"].split(" ", 2)
    expect("no traffic for 6 s: cut" in idle[2] and int(idle[1]) < 19, lines["IDLE"])
    eq(lines["AGAIN"], "AGAIN 0 2", "the slot is free again")
    hang = lines["HANG"].split(" ", 3)
    expect(hang[1] == "128" and int(hang[2]) < 25 and "handshake" in hang[3], lines["HANG"])


@test
def silent_upstream(up):
    """an upstream that accepts TCP and never speaks does not delay a clone from the real
    sshd in the same sandbox, and the sandbox ends promptly while that upstream hangs"""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts (the kernel does) and never says a word
    sport = silent.getsockname()[1]
    flags = up.flags() + ["--resolve", "hang.test:127.0.0.1", "--allow-internal", "hang.test",
                          "--ssh-allow", f"hang.test:{sport}"]
    script = f"""
cd /tmp
git ls-remote ssh://{up.user}@hang.test:{sport}/r.git > /dev/null 2>&1 &
sleep 3
t0=$(date +%s%N)
git clone -q {up.url()} r && echo "CLONE $(( ($(date +%s%N) - t0) / 1000000 ))"
echo END
"""
    env = dict(os.environ, XDG_CONFIG_HOME=up.cfg)
    p = subprocess.Popen([G, "exec"] + flags + ["--", "sh", "-c", script], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env)
    try:
        out = []
        for line in p.stdout:  # the guest's lines as they come
            out.append(line.strip())
            if line.strip() == "END":
                break
        t_end = time.monotonic()
        p.wait(timeout=120)
        ended = time.monotonic() - t_end
        err = p.stderr.read()
    finally:
        if p.poll() is None:
            p.kill()
        silent.close()
    eq(p.returncode, 0, f"guest script: {out}\n{err}")
    clone = [l for l in out if l.startswith("CLONE ")]
    # the handshake deadline (30 s) is what a clone queued behind the silent upstream waits
    expect(clone and int(clone[0].split()[1]) < 20000, f"clone next to a silent upstream: {out}")
    expect(ended < 10, f"the sandbox took {ended:.1f} s to end while an upstream hung")


@test
def agent_authentication(up):
    """--ssh-agent: the host's ssh-agent (SSH_AUTH_SOCK) holds the key, no key file is
    named; the rule's user goes upstream (USER@HOST; the guest never picks the account);
    the agent's socket and the key stay on the host"""
    sock = os.path.join(up.dir, "agent.sock")
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", sock], stdout=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if os.path.exists(sock):
                break
            time.sleep(0.05)
        env = dict(os.environ, SSH_AUTH_SOCK=sock)
        r = subprocess.run(["ssh-add", up.key], capture_output=True, text=True, env=env)
        eq(r.returncode, 0, f"ssh-add: {r.stderr}")
        flags = ["--image", IMAGE, "--ssh-agent", "--ssh-known-hosts", f"{up.dir}/known_hosts",
                 "--resolve", "git.test:127.0.0.1", "--allow-internal", "git.test",
                 "--ssh-allow", f"{up.user}@git.test:{up.port}"]
        script = (f"cd /tmp && git clone -q {up.url()} a && echo \"README $(cat a/README)\"; "
                  "echo \"AUTHSOCK ${SSH_AUTH_SOCK:-none}\"")
        genv = dict(os.environ, XDG_CONFIG_HOME=up.cfg, SSH_AUTH_SOCK=sock)
        r = subprocess.run([G, "exec"] + flags + ["--", "sh", "-c", script], capture_output=True,
                           text=True, timeout=600, env=genv)
        eq(r.returncode, 0, f"guest: {r.stdout}\n{r.stderr}")
        expect("README hello" in r.stdout, r.stdout)
        expect("AUTHSOCK none" in r.stdout, f"the agent reached the guest: {r.stdout}")
    finally:
        agent.kill()
        agent.wait()


@test
def reload_adds_a_name(up):
    """a session started with no SSH rule gets one by a policy reload: the proxy starts
    then, and the guest's known_hosts gains the name (written after the VM is ready, not
    baked into the boot), so a clone verifies the proxy; a reload dropping the rule
    empties the file and the name is refused again"""
    d = up.dir
    policy = f"{d}/reload-policy.lua"
    rule = (f'ssh = {{ ["late.test:{up.port}"] = {{ key = "{up.key}", user = "{up.user}" }} }},')
    with open(policy, "w") as f:
        f.write("return { }\n")
    with open(f"{d}/known_hosts", "a") as f:
        f.write(f"[late.test]:{up.port} "
                + " ".join(open(f"{d}/hostkey.pub").read().split()[:2]) + "\n")
    env = dict(os.environ, XDG_CONFIG_HOME=up.cfg)
    name = f"gd-ssh-reload-{os.getpid()}"
    flags = ["--image", IMAGE, "--policy", policy, "--ssh-known-hosts", f"{d}/known_hosts",
             "--resolve", "late.test:127.0.0.1", "--allow-internal", "late.test"]

    def g(*args, timeout=300):
        return subprocess.run([G] + list(args), capture_output=True, text=True,
                              timeout=timeout, env=env)

    def sx(script):
        return g("exec", "--session", name, "--", "sh", "-c", script)

    clone = (f"cd /tmp && rm -rf c && git clone -q {up.url(host='late.test')} c 2> e; "
             f"echo \"CLONE $? $(cat c/README 2>/dev/null) $(grep -c gondolin e)\"")
    r = g("start", "--name", name, *flags)
    eq(r.returncode, 0, f"start: {r.stderr}")
    try:
        r = sx("cat /etc/ssh/ssh_known_hosts 2>/dev/null; echo END; " + clone)
        expect(r.stdout.startswith("END") and "CLONE 0" not in r.stdout,
               f"no rule yet: nothing known, no clone: {r.stdout} {r.stderr}")
        with open(policy, "w") as f:
            f.write("return { " + rule + " }\n")
        r = g("policy", "reload", name)
        eq(r.returncode, 0, f"reload: {r.stderr}")
        hostpub = sh("ssh-keygen", "-y", "-f", f"{up.cfg}/gondolin/ssh/host_ed25519").split()[1]
        end = time.time() + 60
        while time.time() < end:  # the file is written by a guest command after the reload
            r = sx("cat /etc/ssh/ssh_known_hosts")
            if "late.test" in r.stdout:
                break
            time.sleep(0.5)
        eq(r.stdout, f"[late.test]:{up.port} ssh-ed25519 {hostpub}\n", "known_hosts after reload")
        r = sx(clone)
        expect("CLONE 0 hello 0" in r.stdout, f"clone after the reload: {r.stdout} {r.stderr}")
        # one SSH connection held open (OpenSSH's ControlMaster): the rules of each exec
        # are the current revision's, not those the connection was accepted under
        cm = "-o ControlPath=/tmp/cm"
        r = sx(f"ssh {cm} -o ControlMaster=yes -o ControlPersist=300 -o BatchMode=yes -fN "
               f"-p {up.port} {up.user}@late.test </dev/null >/dev/null 2>&1; echo MASTER $?")
        eq(r.stdout.strip(), "MASTER 0", f"control master: {r.stderr}")
        viacm = clone.replace("rm -rf c && ", f"rm -rf c && export GIT_SSH_COMMAND='ssh {cm}' && ")
        r = sx(viacm)
        expect("CLONE 0 hello 0" in r.stdout, f"clone through the master: {r.stdout} {r.stderr}")
        with open(policy, "w") as f:  # the same name, pushes only
            f.write("return { " + rule.replace("user =", 'commands = { "git-receive-pack" }, user =')
                    + " }\n")
        eq(g("policy", "reload", name).returncode, 0, "reload to pushes only")
        r = sx(viacm + "; cat e")
        expect("CLONE 128" in r.stdout and "does not allow this command" in r.stdout,
               f"the held connection follows the reload: {r.stdout} {r.stderr}")
        with open(policy, "w") as f:
            f.write("return { }\n")
        eq(g("policy", "reload", name).returncode, 0, "reload back")
        end = time.time() + 60
        while time.time() < end:
            r = sx("cat /etc/ssh/ssh_known_hosts")
            if "late.test" not in r.stdout:
                break
            time.sleep(0.5)
        eq(r.stdout, "", "known_hosts once the rule is gone")
        r = sx(clone)
        expect("CLONE 0" not in r.stdout, f"the rule is gone: {r.stdout}")
        r = sx(viacm + "; cat e")
        expect("CLONE 128" in r.stdout and "no SSH rule" in r.stdout,
               f"the rule is gone for the held connection too: {r.stdout}")
    finally:
        g("stop", name, timeout=60)


@test
def flag_errors(up):
    """bad SSH flags are one-line usage errors before any VM boots"""
    for bad in (["--ssh-allow", "git.test:0"], ["--ssh-allow", ":22"],
                ["--ssh-key", "git.test"], ["--ssh-key", f"git.test={up.dir}/missing"],
                ["--ssh-known-hosts", f"{up.dir}/missing"], ["--ssh-limit", "max_conns=0"],
                ["--ssh-limit", "idle_ms=abc"], ["--ssh-limit", "speed=1"]):
        r = subprocess.run([G, "exec"] + bad + ["--", "true"], capture_output=True, text=True,
                           timeout=60)
        eq(r.returncode, 2, f"{bad}: {r.stderr}")
        eq(len(r.stderr.strip().splitlines()), 1, r.stderr)


def main():
    image()
    up = Upstream()
    try:
        failed = run("ssh egress integration tests", FILTER, up)
    finally:
        up.close()
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
