#!/usr/bin/env python3
"""SSH egress benchmark: one command, one table. A 50 MiB repository (incompressible
blobs, one pack) cloned in the same run:
  guest, SSH    git clone ssh://... through gondolin's SSH proxy -> sshd (git-shell),
                with OpenSSH's default cipher and with aes128-gcm (AES-NI) in the guest
  guest, HTTPS  git clone https://... through gondolin's MITM proxy -> a static HTTPS
                server (git's dumb HTTP protocol: the same pack file)
  host, SSH / host, HTTPS   the same clones from the host, no VM (the physical limit)
Each guest clone runs twice, alternating; the table shows the better run.

Usage: bench_ssh.py BUILD_DIR [MIB]"""
import os, shutil, ssl, subprocess, sys, threading, time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "proxy"))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
from fixture import Upstreams  # noqa: E402
import test_ssh_egress as T  # noqa: E402  (its Upstream: sshd + git-shell on loopback)

MIB = int(sys.argv[2]) if len(sys.argv) > 2 else 50


class Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *a):
        pass


def https_server(root, cert, key):
    srv = ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=root))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, srv.server_address[1]


def make_repo(d):
    """big.git: MIB files of 1 MiB of random bytes, one commit, one pack."""
    w = os.path.join(d, "bigw")
    T.sh("git", "init", "-q", "-b", "main", w)
    for i in range(MIB):
        with open(os.path.join(w, f"blob{i:03d}"), "wb") as f:
            f.write(os.urandom(1 << 20))
    g = ["git", "-C", w, "-c", "user.email=b@b", "-c", "user.name=b"]
    T.sh(*g, "add", ".")
    T.sh(*g, "commit", "-qm", "big")
    bare = os.path.join(d, "big.git")
    T.sh("git", "clone", "-q", "--bare", w, bare)
    T.sh("git", "-C", bare, "repack", "-a", "-d", "-q")
    T.sh("git", "-C", bare, "update-server-info")
    shutil.rmtree(w)
    return bare


def host_clone(args, env=None):
    dst = "/tmp/gd-bench-ssh-clone"
    shutil.rmtree(dst, ignore_errors=True)
    t = time.time()
    r = subprocess.run(["git"] + args + [dst], capture_output=True, text=True, env=env,
                       timeout=600)
    dt = time.time() - t
    shutil.rmtree(dst, ignore_errors=True)
    if r.returncode:
        raise SystemExit("host clone failed: " + r.stderr)
    return dt


def main():
    T.image()
    up = T.Upstream()
    web = Upstreams()
    try:
        bare = make_repo(up.dir)
        srv, hport = https_server(up.dir, os.path.join(web.dir, "srv.crt"),
                                  os.path.join(web.dir, "srv.key"))
        ssh_url = up.url(repo=bare)
        https_url = f"https://good.test:{hport}/big.git"
        # host, no VM
        ssh_cmd = (f"ssh -i {up.key} -o UserKnownHostsFile={up.dir}/known_hosts "
                   f"-o HostKeyAlias=[git.test]:{up.port}")
        env = dict(os.environ, GIT_SSH_COMMAND=ssh_cmd)
        host_ssh = host_clone(["clone", "-q", ssh_url.replace("git.test", "127.0.0.1")], env)
        host_https = host_clone(["-c", f"http.curloptResolve=good.test:{hport}:127.0.0.1",
                                 "clone", "-q", https_url],
                                dict(os.environ, GIT_SSL_CAINFO=web.ca))
        # the guest: both protocols, twice, alternating
        flags = up.flags() + ["--upstream-ca", web.ca, "--resolve", "good.test:127.0.0.1",
                              "--allow-internal", "good.test", "--allow-host",
                              f"good.test:{hport}", "--memory", "2G"]
        script = f"""
set -e
cd /tmp
for i in 1 2; do
  t=$(date +%s%N); git clone -q {ssh_url} s; echo "SSH $(( ($(date +%s%N) - t) / 1000000 ))"; rm -rf s
  t=$(date +%s%N); git clone -q {https_url} h; echo "HTTPS $(( ($(date +%s%N) - t) / 1000000 ))"; rm -rf h
  t=$(date +%s%N); GIT_SSH_COMMAND="ssh -c aes128-gcm@openssh.com" git clone -q {ssh_url} s
  echo "SSH-AES $(( ($(date +%s%N) - t) / 1000000 ))"; rm -rf s
done
"""
        rc, out, err = up.gexec(flags, script, timeout=3600)
        if rc:
            raise SystemExit(f"guest clones failed: {out}\n{err}")
        best = {}
        for line in out.split("\n"):
            k, _, v = line.partition(" ")
            if k in ("SSH", "HTTPS", "SSH-AES"):
                best[k] = min(best.get(k, 1e18), int(v) / 1000)
        rows = [("guest, SSH through the proxy", best["SSH"]),
                ("guest, SSH (aes128-gcm in the guest) through the proxy", best["SSH-AES"]),
                ("guest, HTTPS through the proxy", best["HTTPS"]),
                ("host, SSH direct (no VM)", host_ssh),
                ("host, HTTPS direct (no VM)", host_https)]
        print(f"\n| clone of a {MIB} MiB repository | seconds | MB/s |")
        print("|---|---:|---:|")
        for name, s in rows:
            print(f"| {name} | {s:.1f} | {MIB * 1.048576 / s:.1f} |")
        print(f"\nguest SSH vs guest HTTPS: {best['HTTPS'] / best['SSH']:.2f}x")
        srv.shutdown()
    finally:
        up.close()
        web.close()


if __name__ == "__main__":
    main()
