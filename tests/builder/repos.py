"""Real package sources on loopback for the builder tests.

apk_repo(): an Alpine-layout repository (v3.23/{main,community}/x86_64) with a
signed APKINDEX.tar.gz and real .apk files (signature, control and data gzip
members), signed with a test RSA key by openssl. Its packages carry real bits:
Debian's static busybox as /bin/busybox, and a kernel package made from Debian's
cloud kernel (modules gzip-compressed, as Alpine ships them).

registry(): Debian's docker-registry (distribution) on 127.0.0.1, and images
built with umoci and pushed with skopeo.
"""
import base64
import gzip
import hashlib
import io
import json
import os
import subprocess
import tarfile
import tempfile
import time
import http.server
import socket
import threading

HERE = os.path.dirname(os.path.abspath(__file__))
DEBS = os.path.expanduser("~/.cache/gondolin/debs")


def sh(*cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw).stdout


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def deb_tree(pattern, dest, contains=""):
    """Extracts the first cached .deb whose name starts with pattern (and contains
    `contains`)."""
    for f in sorted(os.listdir(DEBS)):
        if f.startswith(pattern) and contains in f and f.endswith(".deb"):
            os.makedirs(dest, exist_ok=True)
            sh("dpkg-deb", "-x", os.path.join(DEBS, f), dest)
            return dest
    raise RuntimeError("no cached %s*.deb (build the default image first)" % pattern)


def _gz(data):
    return gzip.compress(data, compresslevel=6, mtime=0)


def _tar(entries, end=True):
    """entries: list of TarInfo-or-(info, bytes)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for info, data in entries:
            t.addfile(info, io.BytesIO(data) if data is not None else None)
    raw = buf.getvalue()
    if not end:  # apk segments are concatenated without end-of-archive blocks
        raw = raw.rstrip(b"\0")
        raw += b"\0" * ((-len(raw)) % 512)
    return raw


def _info(name, size=0, mode=0o644, typ=tarfile.REGTYPE, uid=0, gid=0, link="",
          devmajor=0, devminor=0, pax=None):
    ti = tarfile.TarInfo(name)
    ti.size = size
    ti.mode = mode
    ti.type = typ
    ti.uid = uid
    ti.gid = gid
    ti.linkname = link
    ti.devmajor = devmajor
    ti.devminor = devminor
    ti.mtime = 1700000000
    if pax:
        ti.pax_headers = pax
    return ti


def _tree_entries(root, prefix=""):
    out = []
    for dirpath, dirs, files in os.walk(root):
        dirs.sort()
        rel = os.path.relpath(dirpath, root)
        if rel != ".":
            out.append((_info(prefix + rel, typ=tarfile.DIRTYPE, mode=0o755), None))
        for f in sorted(files):
            p = os.path.join(dirpath, f)
            r = prefix + os.path.normpath(os.path.join(rel, f))
            if os.path.islink(p):
                out.append((_info(r, typ=tarfile.SYMTYPE, link=os.readlink(p), mode=0o777), None))
            else:
                data = open(p, "rb").read()
                out.append((_info(r, size=len(data), mode=os.stat(p).st_mode & 0o7777), data))
    return out


class ApkRepo:
    def __init__(self, base):
        self.base = base
        self.key = os.path.join(base, "test.rsa")
        self.keys = os.path.join(base, "keys")
        self.keyname = "test@gondolin-61a0b1c2.rsa.pub"
        os.makedirs(self.keys, exist_ok=True)
        sh("openssl", "genrsa", "-out", self.key, "2048")
        sh("openssl", "rsa", "-in", self.key, "-pubout", "-out",
           os.path.join(self.keys, self.keyname))
        self.pkgs = {"main": [], "community": []}

    def sign(self, data, algo="sha1"):
        with tempfile.NamedTemporaryFile() as f:
            f.write(data)
            f.flush()
            return subprocess.run(["openssl", "dgst", "-" + algo, "-sign", self.key, f.name],
                                  check=True, capture_output=True).stdout

    def add(self, name, version, entries, deps=(), provides=(), repo="main"):
        data = _gz(_tar(entries))
        datahash = hashlib.sha256(data).hexdigest()
        pkginfo = ("pkgname = %s\npkgver = %s\narch = x86_64\nsize = %d\ndatahash = %s\n"
                   % (name, version, sum(len(d or b"") for _, d in entries), datahash))
        pkginfo += "".join("depend = %s\n" % d for d in deps)
        pi = pkginfo.encode()
        control = _gz(_tar([(_info(".PKGINFO", size=len(pi)), pi)], end=False))
        sig = self.sign(control)
        sigseg = _gz(_tar([(_info(".SIGN.RSA." + self.keyname, size=len(sig)), sig)], end=False))
        apk = sigseg + control + data
        q1 = "Q1" + base64.b64encode(hashlib.sha1(control).digest()).decode()
        rec = ["C:" + q1, "P:" + name, "V:" + version, "A:x86_64", "S:%d" % len(apk),
               "I:%d" % sum(len(d or b"") for _, d in entries), "T:test package"]
        if deps:
            rec.append("D:" + " ".join(deps))
        if provides:
            rec.append("p:" + " ".join(provides))
        self.pkgs[repo].append(("\n".join(rec) + "\n", "%s-%s.apk" % (name, version), apk))

    def write(self, branch="v3.23", tamper=False):
        for repo, pkgs in self.pkgs.items():
            d = os.path.join(self.base, "www", branch, repo, "x86_64")
            os.makedirs(d, exist_ok=True)
            for _, fn, apk in pkgs:
                open(os.path.join(d, fn), "wb").write(apk)
            text = "\n".join(r for r, _, _ in pkgs).encode() + b"\n"
            desc = b"test repository"
            idx = _gz(_tar([(_info("DESCRIPTION", size=len(desc)), desc),
                            (_info("APKINDEX", size=len(text)), text)]))
            sig = self.sign(idx)
            sigseg = _gz(_tar([(_info(".SIGN.RSA." + self.keyname, size=len(sig)), sig)],
                              end=False))
            if tamper and repo == "main":
                # same signature, index with one version changed
                text2 = text.replace(b"V:1.36.1-r0", b"V:1.36.1-r9", 1)
                idx = _gz(_tar([(_info("DESCRIPTION", size=len(desc)), desc),
                                (_info("APKINDEX", size=len(text2)), text2)]))
            open(os.path.join(d, "APKINDEX.tar.gz"), "wb").write(sigseg + idx)

    def serve(self):
        www = os.path.join(self.base, "www")

        class H(http.server.SimpleHTTPRequestHandler):
            def __init__(s, *a, **k):
                super().__init__(*a, directory=www, **k)

            def log_message(s, *a):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return "http://127.0.0.1:%d" % self.httpd.server_address[1]

    def stop(self):
        self.httpd.shutdown()


def kernel_entries(tmp, broken=False):
    """linux-virt from Debian's cloud kernel: /boot/vmlinuz-virt and the modules we boot
    with (gzip-compressed), plus modules.builtin."""
    # the cloud kernel (ext4 built in), not a generic one another image put in the cache
    kroot = deb_tree("linux-image-", os.path.join(tmp, "kdeb"), contains="-cloud-")
    mods = os.path.join(kroot, "lib/modules")
    kver = sorted(os.listdir(mods))[0]
    kdir = os.path.join(mods, kver)
    ent = []
    vmlinuz = open(os.path.join(kroot, "boot", "vmlinuz-" + kver), "rb").read()
    ent.append((_info("boot", typ=tarfile.DIRTYPE, mode=0o755), None))
    ent.append((_info("boot/vmlinuz-virt", size=len(vmlinuz)), vmlinuz))
    base = "lib/modules/%s/" % kver
    for d in ["lib", "lib/modules", base[:-1], base + "kernel"]:
        ent.append((_info(d, typ=tarfile.DIRTYPE, mode=0o755), None))
    for f in ("modules.builtin", "modules.order"):
        p = os.path.join(kdir, f)
        if os.path.exists(p):
            data = open(p, "rb").read()
            ent.append((_info(base + f, size=len(data)), data))
    if broken:
        return ent
    wanted = ("drivers/virtio", "drivers/block", "drivers/char", "drivers/net", "net/core",
              "fs/overlayfs")
    seen = set()
    for sub in wanted:
        top = os.path.join(kdir, "kernel", sub)
        for dirpath, dirs, files in os.walk(top):
            dirs.sort()
            rel = os.path.relpath(dirpath, kdir)
            parts = rel.split("/")
            for i in range(1, len(parts) + 1):
                d = base + "/".join(parts[:i])
                if d not in seen:
                    seen.add(d)
                    ent.append((_info(d, typ=tarfile.DIRTYPE, mode=0o755), None))
            for f in sorted(files):
                if not f.endswith(".ko"):
                    continue
                data = gzip.compress(open(os.path.join(dirpath, f), "rb").read(), 1, mtime=0)
                ent.append((_info(base + rel + "/" + f + ".gz", size=len(data)), data))
    return ent


def apk_repo(tmp, tamper=False):
    """A signed repository with busybox, a baselayout, a kernel and test packages."""
    r = ApkRepo(tmp)
    bb = deb_tree("busybox-static_", os.path.join(tmp, "bbdeb"))
    busybox = open(os.path.join(bb, "bin", "busybox"), "rb").read()
    r.add("musl", "1.2.5-r10", [(_info("lib", typ=tarfile.DIRTYPE, mode=0o755), None),
                                 (_info("lib/ld-musl-x86_64.so.1", size=4, mode=0o755), b"stub")],
          provides=["so:libc.musl-x86_64.so.1=1"])
    r.add("busybox", "1.36.1-r0",
          [(_info("bin", typ=tarfile.DIRTYPE, mode=0o755), None),
           (_info("bin/busybox", size=len(busybox), mode=0o755), busybox)],
          deps=["so:libc.musl-x86_64.so.1"], provides=["cmd:busybox=1.36.1-r0", "/bin/sh"])
    passwd = b"root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n"
    group = b"root:x:0:\nalice:x:1000:\n"
    prof = b"echo hi alice\n"
    r.add("alpine-baselayout", "3.6.8-r1",
          [(_info("etc", typ=tarfile.DIRTYPE, mode=0o755), None),
           (_info("etc/passwd", size=len(passwd)), passwd),
           (_info("etc/group", size=len(group)), group),
           (_info("home", typ=tarfile.DIRTYPE, mode=0o755), None),
           (_info("home/alice", typ=tarfile.DIRTYPE, mode=0o700, uid=1000, gid=1000), None),
           (_info("home/alice/.profile", size=len(prof), mode=0o600, uid=1000, gid=1000,
                  pax={"SCHILY.xattr.user.origin": "apk"}), prof),
           (_info("home/alice/profile-link", typ=tarfile.LNKTYPE, link="home/alice/.profile",
                  uid=1000, gid=1000, mode=0o600), None),
           (_info("etc/fifo-test", typ=tarfile.FIFOTYPE, mode=0o600), None),
           (_info("etc/null-test", typ=tarfile.CHRTYPE, mode=0o666, devmajor=1, devminor=3),
            None),
           (_info("usr", typ=tarfile.DIRTYPE, mode=0o755), None),
           (_info("usr/bin", typ=tarfile.DIRTYPE, mode=0o755), None),
           (_info("usr/bin/sudo-ish", size=4, mode=0o4755), b"#!x\n")])
    hello = b"#!/bin/sh\necho hello from an apk\n"
    r.add("hello", "2.12-r1", [(_info("usr", typ=tarfile.DIRTYPE, mode=0o755), None),
                                (_info("usr/bin", typ=tarfile.DIRTYPE, mode=0o755), None),
                                (_info("usr/bin/hello", size=len(hello), mode=0o755), hello)],
          deps=["busybox>=1.30", "!hello-legacy"], provides=["cmd:hello=2.12-r1"],
          repo="community")
    r.add("hello", "2.10-r0", [(_info("usr/bin/hello-old", size=3), b"old")], repo="community")
    r.add("linux-virt", "6.1.0-r0", kernel_entries(tmp))
    r.add("linux-broken", "6.1.0-r0", kernel_entries(tmp, broken=True))
    r.write(tamper=tamper)
    return r


def _b64u(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


class TokenServer:
    """The token endpoint of the registry's bearer auth: grants what is asked to
    anyone (anonymous pull, as public registries do) in an RS256 JWT whose x5c header
    carries a self-signed certificate the registry trusts."""

    def __init__(self, tmp):
        self.key = os.path.join(tmp, "token.key")
        self.cert = os.path.join(tmp, "token.crt")
        sh("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", self.key,
           "-out", self.cert, "-days", "2", "-subj", "/CN=gondolin-test-token")
        der = subprocess.run(["openssl", "x509", "-in", self.cert, "-outform", "DER"],
                             check=True, capture_output=True).stdout
        self.x5c = base64.b64encode(der).decode()
        self.requests = []
        srv = self

        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(h):
                from urllib.parse import urlparse, parse_qs
                q = parse_qs(urlparse(h.path).query)
                srv.requests.append(h.path)
                access = []
                for sc in q.get("scope", []):
                    typ, name, actions = sc.split(":")
                    access.append({"type": typ, "name": name, "actions": actions.split(",")})
                now = int(time.time())
                claims = {"iss": "gondolin-test-issuer", "sub": "", "aud": q["service"][0],
                          "exp": now + 600, "nbf": now - 10, "iat": now,
                          "jti": os.urandom(8).hex(), "access": access}
                head = {"typ": "JWT", "alg": "RS256", "x5c": [srv.x5c]}
                signing = (_b64u(json.dumps(head).encode()) + "." +
                           _b64u(json.dumps(claims).encode()))
                with tempfile.NamedTemporaryFile() as f:
                    f.write(signing.encode())
                    f.flush()
                    sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", srv.key, f.name],
                                         check=True, capture_output=True).stdout
                tok = signing + "." + _b64u(sig)
                body = json.dumps({"token": tok, "access_token": tok, "expires_in": 600}).encode()
                h.send_response(200)
                h.send_header("Content-Type", "application/json")
                h.send_header("Content-Length", str(len(body)))
                h.end_headers()
                h.wfile.write(body)

            def log_message(h, *a):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.realm = "http://127.0.0.1:%d/token" % self.httpd.server_address[1]

    def stop(self):
        self.httpd.shutdown()


class Registry:
    """docker-registry on loopback, filesystem storage in a temp dir; with token=True
    it demands bearer tokens from a TokenServer."""

    def __init__(self, tmp, token=False):
        self.dir = os.path.join(tmp, "registry")
        os.makedirs(self.dir, exist_ok=True)
        self.port = free_port()
        self.tokens = TokenServer(tmp) if token else None
        auth = ""
        if token:
            auth = ("auth:\n  token:\n    realm: %s\n    service: gondolin-test\n"
                    "    issuer: gondolin-test-issuer\n    rootcertbundle: %s\n"
                    % (self.tokens.realm, self.tokens.cert))
        cfg = os.path.join(tmp, "registry.yml")
        open(cfg, "w").write(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n"
            "    rootdirectory: %s\n  delete:\n    enabled: true\n"
            "http:\n  addr: 127.0.0.1:%d\n%s" % (self.dir, self.port, auth))
        self.proc = subprocess.Popen(["docker-registry", "serve", cfg],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        self.host = "127.0.0.1:%d" % self.port

    def push(self, layout, tag, repo):
        sh("skopeo", "copy", "--dest-tls-verify=false", "oci:%s:%s" % (layout, tag),
           "docker://%s/%s" % (self.host, repo))

    def blob(self, digest):
        h = digest.split(":", 1)[1]
        return os.path.join(self.dir, "docker/registry/v2/blobs/sha256", h[:2], h, "data")

    def stop(self):
        self.proc.terminate()
        self.proc.wait()
        if self.tokens:
            self.tokens.stop()


def oci_busybox(tmp):
    """An OCI layout 'busybox' with two layers: busybox + files, then a layer that
    deletes one file (a whiteout). Returns the layout dir."""
    lay = os.path.join(tmp, "oci")
    bundle = os.path.join(tmp, "bundle")
    sh("umoci", "init", "--layout", lay)
    sh("umoci", "new", "--image", lay + ":busybox")
    sh("umoci", "unpack", "--rootless", "--image", lay + ":busybox", bundle)
    rootfs = os.path.join(bundle, "rootfs")
    bb = deb_tree("busybox-static_", os.path.join(tmp, "bbdeb"))
    os.makedirs(os.path.join(rootfs, "bin"), exist_ok=True)
    os.makedirs(os.path.join(rootfs, "etc"), exist_ok=True)
    sh("cp", os.path.join(bb, "bin", "busybox"), os.path.join(rootfs, "bin", "busybox"))
    os.symlink("busybox", os.path.join(rootfs, "bin", "sh"))
    open(os.path.join(rootfs, "etc", "oci-release"), "w").write("from an OCI registry\n")
    open(os.path.join(rootfs, "etc", "deleted-later"), "w").write("x\n")
    sh("umoci", "repack", "--image", lay + ":busybox", bundle)
    os.unlink(os.path.join(rootfs, "etc", "deleted-later"))
    sh("umoci", "repack", "--image", lay + ":busybox", bundle)
    # another image, standing for another platform in a multi-platform index
    open(os.path.join(rootfs, "etc", "wrong-platform"), "w").write("arm64\n")
    sh("umoci", "repack", "--image", lay + ":armish", bundle)
    return lay


def add_index(lay, tag, amd64_tag, arm64_tag):
    """Tags, in an OCI layout, an image index listing arm64_tag's manifest for
    linux/arm64 (first) and amd64_tag's for linux/amd64: a multi-platform image."""
    with open(os.path.join(lay, "index.json")) as f:
        idx = json.load(f)

    def by(t):
        return next(m for m in idx["manifests"]
                    if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == t)
    other = dict(by(arm64_tag), platform={"os": "linux", "architecture": "arm64"})
    mine = dict(by(amd64_tag), platform={"os": "linux", "architecture": "amd64"})
    mine.pop("annotations", None)
    other.pop("annotations", None)
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": [other, mine]}
    data = json.dumps(index).encode()
    dg = hashlib.sha256(data).hexdigest()
    open(os.path.join(lay, "blobs", "sha256", dg), "wb").write(data)
    idx["manifests"].append({"mediaType": "application/vnd.oci.image.index.v1+json",
                             "digest": "sha256:" + dg, "size": len(data),
                             "annotations": {"org.opencontainers.image.ref.name": tag}})
    with open(os.path.join(lay, "index.json"), "w") as f:
        json.dump(idx, f)
    return "sha256:" + dg
