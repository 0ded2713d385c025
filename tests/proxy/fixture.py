"""Shared test fixture: a throwaway test CA, a server certificate for the test names,
and real upstream servers (HTTP and HTTPS) on loopback. No traffic leaves the host."""
import os, shutil, subprocess, sys, tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
NAMES = ["good.test", "other.test", "echo.test", "evil.test"]


class Upstreams:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="gd-egress-")
        self.procs = []
        d = self.dir
        sh = lambda *a: subprocess.run(a, check=True, capture_output=True, cwd=d)
        sh("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
           "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj",
           "/CN=gondolin test upstream CA")
        sh("openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
           "-keyout", "srv.key", "-out", "srv.csr", "-subj", "/CN=good.test")
        with open(os.path.join(d, "ext.cnf"), "w") as f:
            f.write("subjectAltName=" + ",".join("DNS:" + n for n in NAMES) +
                    "\nextendedKeyUsage=serverAuth\n")
        sh("openssl", "x509", "-req", "-in", "srv.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
           "-CAcreateserial", "-out", "srv.crt", "-days", "2", "-extfile", "ext.cnf")
        self.ca = os.path.join(d, "ca.crt")
        self.http_port = self._start([])
        self.https_port = self._start(["--tls", os.path.join(d, "srv.crt"), os.path.join(d, "srv.key")])
        self.mitm_dir = os.path.join(d, "mitm")

    def _start(self, extra):
        p = subprocess.Popen([sys.executable, os.path.join(HERE, "upstream.py"), "--port", "0"] + extra,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = p.stdout.readline().split()
        assert line and line[0] == "READY", "upstream did not start"
        self.procs.append(p)
        return int(line[1])

    def flags(self, *allow, secrets=(), extra=()):
        """Egress flags: names resolve to loopback on the host, and are allowed to."""
        f = ["--upstream-ca", self.ca]
        for n in NAMES:
            f += ["--resolve", n + ":127.0.0.1"]
        for n in ("good.test", "other.test", "echo.test"):
            f += ["--allow-internal", n]
        for a in allow:
            f += ["--allow-host", a]
        for s in secrets:
            f += ["--host-secret", s]
        return f + list(extra)

    def close(self):
        for p in self.procs:
            p.kill()
            p.wait()
        shutil.rmtree(self.dir, ignore_errors=True)
