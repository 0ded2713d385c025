#!/usr/bin/env python3
"""Signed policy bundles (docs/bundles.md) from the command line, and in real guests:
build -> sign -> verify -> run; every refusal a user meets (tampered file, manifest or
signature, an added file, untrusted signer, threshold, expiry, min_gondolin, rollback,
a failing test case, links and traversal names); policies/ shipped as signed bundles;
the drop-in directory; audit records naming the bundle.

Usage: test_bundle.py BUILD_DIR [NAME_FILTER]"""
import glob, json, os, shutil, struct, subprocess, sys, tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(HERE, "..", "proxy"))
from fixture import Upstreams  # noqa: E402

import harness  # noqa: E402
from harness import eq, expect, test  # noqa: E402

BUILD = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "build")
FILTER = sys.argv[2] if len(sys.argv) > 2 else ""
G = os.path.join(BUILD, "gondolin")
SESSIONS = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
                        "gondolin", "sessions")
W = tempfile.mkdtemp(prefix="gd-bundle-test-")
# trust roots, rollback state and the drop-in directory of this test only
ENV = dict(os.environ, XDG_CONFIG_HOME=os.path.join(W, "config"),
           XDG_STATE_HOME=os.path.join(W, "state"), GONDOLIN_POLICIES_DIR=os.path.join(W, "dropin"))


def g(*args, env=None, timeout=300, cwd=W):
    r = subprocess.run([G] + [str(a) for a in args], capture_output=True, text=True,
                       timeout=timeout, env=env or ENV, cwd=cwd)
    return r.returncode, r.stdout, r.stderr


def ok(*args, **kw):
    rc, out, err = g(*args, **kw)
    expect(rc == 0, f"gondolin {' '.join(map(str, args))}: rc {rc}: {err.strip()}")
    return out


def refused(args, why, rc_want=None, **kw):
    """exit nonzero with exactly one stderr line containing why"""
    rc, out, err = g(*args, **kw)
    expect(rc != 0, f"gondolin {' '.join(map(str, args))} was accepted: {out}")
    if rc_want is not None:
        eq(rc, rc_want, "exit code")
    lines = [x for x in err.splitlines() if x.strip()]
    expect(len(lines) == 1 and why in lines[0], f"want one line with {why!r}, got {err!r}")
    return err


def key(name):
    k = os.path.join(W, name)
    if not os.path.exists(k + ".key"):
        ok("bundle", "keygen", k)
    return k + ".key", k + ".pub"


def trust(*names):
    d = os.path.join(W, "trust-" + "-".join(names))
    os.makedirs(d, exist_ok=True)
    for n in names:
        shutil.copy(key(n)[1], d)
    return d


POLICY = """return {{
  name = "{name}",
  allow = {{ {allow} }},
}}
"""


def src(name, allow=("good.test",), cases=None):
    """a bundle source directory: NAME.lua and NAME.test.json"""
    d = os.path.join(W, "src", name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    with open(os.path.join(d, name + ".lua"), "w") as f:
        f.write(POLICY.format(name=name, allow=", ".join(f'"{a}"' for a in allow)))
    if cases is None:
        cases = [{"name": "allowed", "request": f"GET http://{allow[0]}/",
                  "expect": {"decision": "allow"}},
                 {"name": "other host", "request": "GET https://example.com/",
                  "expect": {"decision": "deny", "status": 403}}]
    with open(os.path.join(d, name + ".test.json"), "w") as f:
        json.dump({"cases": cases}, f)
    return d


def bundle(name, rev, signers=("alice",), extra=(), **kw):
    out = os.path.join(W, f"{name}-{rev}.gdb")
    ok("bundle", "build", src(name, **kw), "-o", out, "--revision", rev, *extra)
    for s in signers:
        ok("bundle", "sign", out, "--key", key(s)[0])
    return out


def flipped(path, off, tag):
    b = bytearray(open(path, "rb").read())
    b[off] ^= 0x01
    p = path.replace(".gdb", f"-{tag}.gdb")
    open(p, "wb").write(b)
    return p


def layout(path):
    """offsets of the manifest, the signatures and the first entry's data"""
    b = open(path, "rb").read()
    m = struct.unpack(">I", b[8:12])[0]
    s = b[12 + m]
    e = 13 + m + 96 * s
    nl = struct.unpack(">H", b[e:e + 2])[0]
    return {"manifest": 12, "mlen": m, "sigs": 13 + m, "data": e + 2 + nl + 9}


def entry(name, data, typ=0):
    n = name.encode()
    return struct.pack(">H", len(n)) + n + bytes([typ]) + struct.pack(">Q", len(data)) + data


def openssl_sign(keyfile, msg):
    """an Ed25519 signature and raw public key made with openssl (as a hostile signer
    holding a trusted key could)"""
    m = os.path.join(W, "msg")
    open(m, "wb").write(msg)
    sig = subprocess.run(["openssl", "pkeyutl", "-sign", "-inkey", keyfile, "-rawin", "-in", m],
                         capture_output=True, check=True).stdout
    der = subprocess.run(["openssl", "pkey", "-in", keyfile, "-pubout", "-outform", "DER"],
                         capture_output=True, check=True).stdout
    return der[-32:], sig


def craft(path, files, entries, keyname="alice", name="crafted", revision=1):
    """a bundle whose manifest lists files [(name, data)] and whose archive holds the
    given raw entries, signed by a trusted key (no `bundle build` checks)"""
    import hashlib
    man = json.dumps({"format": 1, "name": name, "revision": revision, "created": 1,
                      "expires": 4000000000, "min_gondolin": "0.1.0", "entry": files[0][0],
                      "files": [{"path": n, "size": len(d), "sha256": hashlib.sha256(d).hexdigest()}
                                for n, d in files], "plugins": {}, "tests": []},
                     separators=(",", ":")).encode()
    pub, sig = openssl_sign(key(keyname)[0], b"gondolin-bundle-v1\n" + man)
    with open(path, "wb") as f:
        f.write(b"GDBUNDL\x01" + struct.pack(">I", len(man)) + man + b"\x01" + pub + sig +
                b"".join(entries))
    return path


# ---- no VM ----

@test
def build_sign_verify_inspect(up):
    """build -> sign -> verify -> inspect: the key is 0600, verify names the signer,
    inspect shows manifest, signers, expiry and the bundle's test results"""
    k, pub = key("alice")
    eq(oct(os.stat(k).st_mode & 0o777), "0o600", "private key mode")
    p = bundle("demo", 1)
    out = ok("bundle", "verify", p, "--trust", trust("alice"))
    expect(out.startswith("ok: demo revision 1, 1 trusted signature"), out)
    out = ok("bundle", "inspect", p, "--trust", trust("alice"))
    for want in ("name          demo", "revision      1", "expires", "demo.lua", "tests",
                 "trusted", "2 passed, 0 failed"):
        expect(want in out, f"inspect lacks {want!r}: {out}")
    # policy check / test / explain take the bundle
    out = ok("policy", "check", p, "--trust", trust("alice"))
    expect("ok (revision" in out and "good.test" in out, out)
    out = ok("policy", "test", p, "--trust", trust("alice"))
    expect("2 passed, 0 failed" in out, out)
    out = ok("policy", "explain", p, "GET", "https://example.com/", "--trust", trust("alice"))
    expect("decision: deny 403" in out, out)


@test
def tampering_refused(up):
    """a byte changed in a file, in the manifest or in the signature, or a file added to
    the archive: each refused with one line naming why, before any VM starts"""
    p = bundle("tamper", 1)
    t = trust("alice")
    lay = layout(p)
    cases = [(flipped(p, lay["data"], "file"), "does not match its sha256"),
             (flipped(p, lay["manifest"] + lay["mlen"] // 2, "manifest"), "does not verify"),
             (flipped(p, lay["sigs"] + 40, "sig"), "does not verify")]
    added = p.replace(".gdb", "-added.gdb")
    open(added, "wb").write(open(p, "rb").read() + entry("extra.lua", b"return {}"))
    cases.append((added, "entry extra.lua is not in the manifest"))
    for path, why in cases:
        refused(["bundle", "verify", path, "--trust", t], why, rc_want=1)
        refused(["exec", "--policy", path, "--trust", t, "--", "true"], why, rc_want=2)
        refused(["policy", "check", path, "--trust", t], why)


@test
def signer_trust_and_threshold(up):
    """a bundle signed by an untrusted key is refused; threshold 2 with one signer is
    refused, with both signers accepted"""
    p = bundle("signers", 1, signers=("bob",))
    refused(["bundle", "verify", p, "--trust", trust("alice")], "not signed by a trusted key")
    # default trust roots: the user's trust.d
    refused(["bundle", "verify", p], "not signed by a trusted key")
    os.makedirs(os.path.join(W, "config", "gondolin", "trust.d"), exist_ok=True)
    shutil.copy(key("bob")[1], os.path.join(W, "config", "gondolin", "trust.d"))
    ok("bundle", "verify", p)
    shutil.rmtree(os.path.join(W, "config", "gondolin", "trust.d"))
    t2 = trust("alice", "bob")
    p = bundle("signers", 2, signers=("alice",))
    refused(["bundle", "verify", p, "--trust", t2, "--threshold", "2"],
            "1 trusted signature, 2 required")
    ok("bundle", "sign", p, "--key", key("bob")[0])
    out = ok("bundle", "verify", p, "--trust", t2, "--threshold", "2")
    expect("2 trusted signatures" in out, out)
    unsigned = os.path.join(W, "unsigned.gdb")
    ok("bundle", "build", src("unsigned"), "-o", unsigned, "--revision", 1)
    refused(["bundle", "verify", unsigned, "--trust", t2], "bundle is not signed")


@test
def expired_and_too_new(up):
    """an expired bundle and one built for a newer gondolin are refused, naming why"""
    t = trust("alice")
    p = bundle("old", 1, extra=("--expires", "1000000000"))
    refused(["bundle", "verify", p, "--trust", t], "expired at 2001-09-09T01:46:40Z")
    refused(["exec", "--policy", p, "--trust", t, "--", "true"], "expired")
    p = bundle("future", 1, extra=("--min-gondolin", "99.0.0"))
    refused(["bundle", "verify", p, "--trust", t], "needs gondolin 99.0.0 or newer")


@test
def url_bundles_need_tls(up):
    """a bundle URL in plain http to anything but loopback is refused before any fetch;
    an unreachable https URL fails with one line"""
    t = trust("alice")
    refused(["exec", "--bundle", "http://example.com/x.gdb", "--trust", t, "--", "true"],
            "bundles are fetched over https (http only from loopback)", rc_want=2)
    refused(["policy", "check", "https://127.0.0.1:1/x.gdb", "--trust", t], "cannot fetch")
    # a loopback-looking user name in front of another host is that other host
    refused(["exec", "--bundle", "http://127.0.0.1:x@example.com/x.gdb", "--trust", t, "--",
             "true"], "bundles are fetched over https (http only from loopback)", rc_want=2)


@test
def failing_case_blocks_build(up):
    """a failing test case (or a policy that does not load, or a symlink in the
    directory) stops bundle build, and no bundle file is written"""
    out = os.path.join(W, "failing-1.gdb")
    d = src("failing", cases=[{"name": "wrong on purpose", "request": "GET https://example.com/",
                               "expect": {"decision": "allow"}}])
    rc, so, err = g("bundle", "build", d, "-o", out, "--revision", 1)
    expect(rc == 1 and "a test case failed; not building" in err, f"rc {rc}: {err}")
    expect("FAIL   wrong on purpose" in so, so)
    expect(not os.path.exists(out), "a failing bundle was written")
    with open(os.path.join(d, "failing.lua"), "w") as f:
        f.write("return {\n")
    rc, so, err = g("bundle", "build", d, "-o", out, "--revision", 1)
    expect(rc != 0 and "policy check failed" in err and not os.path.exists(out), err)
    d = src("linked")
    os.symlink("/etc/passwd", os.path.join(d, "passwd"))
    refused(["bundle", "build", d, "-o", out, "--revision", 1], "is not a regular file")
    expect(not os.path.exists(out), "a bundle with a link was written")


@test
def traversal_and_link_entries_refused_without_writing(up):
    """entries named ../x or /abs, or of link/device type, in a bundle signed by a
    trusted key: refused, and nothing is written (no x next to the work directory, no
    new directory in the sessions directory)"""
    t = trust("alice")
    cwd = os.path.join(W, "cwd")
    os.makedirs(cwd, exist_ok=True)
    before = set(os.listdir(SESSIONS)) if os.path.isdir(SESSIONS) else set()
    d = b"return {}"
    bad = [([("../x", d)], [entry("../x", d)], "not a plain relative name"),
           ([("/tmp/gd-bundle-abs-x", d)], [entry("/tmp/gd-bundle-abs-x", d)],
            "not a plain relative name"),
           ([("p.lua", d)], [entry("p.lua", d, typ=2)], "not a regular file"),
           ([("p.lua", d)], [entry("p.lua", d, typ=3)], "not a regular file"),
           ([("p.lua", d)], [entry("p.lua", d), entry("../x", d)], "not a plain relative name")]
    for i, (files, ents, why) in enumerate(bad):
        p = craft(os.path.join(W, f"crafted-{i}.gdb"), files, ents)
        refused(["exec", "--policy", p, "--trust", t, "--", "true"], why, cwd=cwd)
        refused(["policy", "check", p, "--trust", t], why, cwd=cwd)
    # the crafted form itself is sound: a good one opens
    p = craft(os.path.join(W, "crafted-1.gdb"), [("p.lua", d)], [entry("p.lua", d)])
    ok("bundle", "verify", p, "--trust", t)
    # the file must name the bundle it holds: a validly signed bundle of another name in
    # its place (a team's permissive one for its strict one) is refused
    for other in ("strict.gdb", "strict-1.gdb", "crafted-ok.gdb", "xcrafted.gdb",
                  "crafted-2.gdb", "crafted-1-b.gdb", "crafted-2fa.gdb"):
        q = os.path.join(W, other)
        shutil.copy(p, q)
        refused(["exec", "--policy", q, "--trust", t, "--", "true"],
                "must be named crafted.gdb or crafted-1.gdb", rc_want=2)
    shutil.copy(p, os.path.join(W, "crafted.gdb"))
    ok("policy", "check", os.path.join(W, "crafted.gdb"), "--trust", t)
    expect(not os.path.exists(os.path.join(W, "x")), "../x was written")
    expect(not os.path.exists("/tmp/gd-bundle-abs-x"), "an absolute entry was written")
    after = set(os.listdir(SESSIONS)) if os.path.isdir(SESSIONS) else set()
    expect(not [n for n in after - before if n.startswith(".bundle-")],
           f"left in the sessions directory: {after - before}")


@test
def policies_ship_as_signed_bundles(up):
    """every policies/*.lua with its test cases builds into a bundle, signed with a test
    key, verifies, and its own cases pass from the bundle; deny-all runs in a guest"""
    t = trust("ci")
    n = 0
    for lua in sorted(glob.glob(os.path.join(ROOT, "policies", "*.lua"))):
        name = os.path.basename(lua)[:-4]
        d = os.path.join(W, "policies", name)
        os.makedirs(d, exist_ok=True)
        shutil.copy(lua, d)
        shutil.copy(lua[:-4] + ".test.json", d)
        p = os.path.join(W, f"{name}-1.gdb")
        ok("bundle", "build", d, "-o", p, "--revision", 1)
        ok("bundle", "sign", p, "--key", key("ci")[0])
        out = ok("bundle", "verify", p, "--trust", t)
        expect(out.startswith(f"ok: {name} revision 1"), out)
        out = ok("policy", "test", p, "--trust", t)
        expect(" 0 failed" in out, out)
        n += 1
    expect(n >= 5, f"only {n} policies")
    # and one runs from its bundle in a real guest: deny-all refuses
    rc, out, err = g("exec", "--policy", os.path.join(W, "deny-all-1.gdb"), "--trust", t,
                     *guest_flags(up), "--", "sh", "-c",
                     "curl -sS -m 20 -o /dev/null -w '%{http_code}' http://example.com/")
    expect(rc == 0 and out.strip() == "403", f"rc {rc}: {out} {err}")
    expect("denied GET http://example.com" in err, err)


# ---- real guests ----

def guest_flags(up, *extra):
    # the proxy's loopback upstreams: names resolve to 127.0.0.1 and are allowed inward
    return up.flags() + list(extra)


@test
def run_in_guest_with_audit(up):
    """build -> sign -> verify -> run in a real guest: the bundle's rules decide (allowed
    host answers, another is 403) and each audit record names bundle, revision, signer"""
    H = up.http_port
    t = trust("alice")
    p = bundle("guest", 3, allow=(f"good.test:{H}",))
    ok("bundle", "verify", p, "--trust", t)
    audit = os.path.join(W, "audit.jsonl")
    before = set(os.listdir(SESSIONS)) if os.path.isdir(SESSIONS) else set()
    script = (f"curl -sS -m 20 http://good.test:{H}/bytes?n=4; echo; "
              f"curl -sS -m 20 -o /dev/null -w 'OTHER %{{http_code}}\\n' http://other.test/")
    rc, out, err = g("exec", "--policy", p, "--trust", t, "--audit", audit,
                     *guest_flags(up), "--", "sh", "-c", script)
    expect(rc == 0, f"rc {rc}: {err}")
    eq(out.splitlines()[:2], ["xxxx", "OTHER 403"], "guest output")
    recs = [json.loads(x) for x in open(audit)]
    expect(len(recs) >= 2, recs)
    alice = open(key("alice")[1]).read()  # noqa: F841 (the id comes from verify)
    vid = ok("bundle", "verify", p, "--trust", t).split()[-1]
    for r in recs:
        eq((r.get("bundle"), r.get("bundle_revision"), r.get("bundle_signers")),
           ("guest", 3, vid), "audit record's bundle")
    # the extracted files are gone when exec ends
    left = [n for n in set(os.listdir(SESSIONS)) - before if n.startswith(".bundle-")]
    expect(not left, f"exec left its bundle directory: {left}")


@test
def rollback_refused_unless_allowed(up):
    """revision 5 runs, then revision 4 is refused naming both revisions (before a VM
    starts), --allow-downgrade runs it; the state file records the revision"""
    H = up.http_port
    t = trust("alice")
    p5 = bundle("rb", 5, allow=(f"good.test:{H}",))
    p4 = bundle("rb", 4, allow=(f"good.test:{H}",))
    script = f"curl -sS -m 20 http://good.test:{H}/bytes?n=2"
    rc, out, err = g("exec", "--policy", p5, "--trust", t, *guest_flags(up), "--", "sh", "-c",
                     script)
    expect(rc == 0 and out.strip() == "xx", f"rc {rc}: {out} {err}")
    state = json.load(open(os.path.join(W, "state", "gondolin", "bundles.json")))
    eq(list(state["rb"].values()), [5], "recorded revision")
    eq(oct(os.stat(os.path.join(W, "state", "gondolin", "bundles.json")).st_mode & 0o777),
       "0o600", "state file mode")
    refused(["exec", "--policy", p4, "--trust", t, *guest_flags(up), "--", "true"],
            "revision 4 is older than revision 5", rc_want=2)
    rc, out, err = g("exec", "--bundle", p4, "--trust", t, "--allow-downgrade",
                     *guest_flags(up), "--", "sh", "-c", script)
    expect(rc == 0 and out.strip() == "xx", f"rc {rc}: {out} {err}")


@test
def session_runs_a_bundle(up):
    """gondolin start --bundle: the session's policy is the bundle's; exec --session
    through it; the files it runs from stay while the session lives, go with stop"""
    H = up.http_port
    t = trust("alice")
    p = bundle("sess", 1, allow=(f"good.test:{H}",))
    before = {n for n in os.listdir(SESSIONS) if n.startswith(".bundle-")}
    sid = ok("start", "--bundle", p, "--trust", t, *guest_flags(up)).strip()
    mine = {n for n in os.listdir(SESSIONS) if n.startswith(".bundle-")} - before
    eq(len(mine), 1, "the session's bundle directory")
    try:
        rc, out, err = g("exec", "--session", sid, "--", "sh", "-c",
                         f"curl -sS -m 20 http://good.test:{H}/bytes?n=2; echo; "
                         "curl -sS -m 20 -o /dev/null -w 'OTHER %{http_code}' http://other.test/")
        expect(rc == 0, f"rc {rc}: {err}")
        eq(out.splitlines()[:2], ["xx", "OTHER 403"], "session output")
    finally:
        ok("stop", sid)
    import time
    for _ in range(50):  # the supervisor removes it as it exits
        if not os.path.exists(os.path.join(SESSIONS, list(mine)[0])):
            break
        time.sleep(0.1)
    expect(not os.path.exists(os.path.join(SESSIONS, list(mine)[0])),
           "the bundle directory outlived its session")


def publish(path, srv, name):
    """an atomic rename into the served directory, as a release would do"""
    tmp = os.path.join(srv, "." + name + ".tmp")
    shutil.copy(path, tmp)
    os.rename(tmp, os.path.join(srv, name))


@test
def live_update_under_load(up):
    """--bundle URL from `bundle serve` on loopback while the guest keeps sending
    requests: revision 2 is swapped in live, no request fails, each is decided by one
    revision and the audit shows 1 then 2; a tampered revision 3 served next is refused
    and logged, and revision 2 keeps deciding"""
    import threading, time
    H = up.http_port
    t = trust("alice")
    srv = os.path.join(W, "served")
    os.makedirs(srv, exist_ok=True)
    publish(bundle("live", 1, allow=(f"good.test:{H}",)), srv, "live.gdb")
    server = subprocess.Popen([G, "bundle", "serve", srv], stdout=subprocess.PIPE, text=True,
                              env=ENV)
    try:
        url = server.stdout.readline().split()[-1] + "live.gdb"
        import urllib.error, urllib.request
        with urllib.request.urlopen(url, timeout=10) as r:
            etag = r.headers["ETag"]
            eq(r.read(), open(os.path.join(srv, "live.gdb"), "rb").read(), "served bytes")
        try:
            urllib.request.urlopen(urllib.request.Request(url, headers={"If-None-Match": etag}),
                                   timeout=10)
            raise AssertionError("If-None-Match with the current ETag was not a 304")
        except urllib.error.HTTPError as e:
            eq(e.code, 304, "conditional GET")
        # silent clients (connected, never a byte) hold nobody else up
        import socket
        port = int(url.split(":")[2].split("/")[0])
        silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(4)]
        # (one after another they would hold it 4 x 5 s, past the 10 s timeout)
        with urllib.request.urlopen(url, timeout=10) as r:
            eq(r.status, 200, "a GET next to silent clients")
        for c in silent:
            c.close()
        audit = os.path.join(W, "live-audit.jsonl")
        script = (f"for i in $(seq 1 120); do curl -sS -m 20 -o /dev/null -w '%{{http_code}}\\n' "
                  f"http://good.test:{H}/bytes?n=1 & curl -sS -m 20 -o /dev/null "
                  f"-w '%{{http_code}}\\n' http://good.test:{H}/bytes?n=2; wait; done")
        os.makedirs(SESSIONS, exist_ok=True)
        before = set(os.listdir(SESSIONS))
        proc = subprocess.Popen([G, "exec", "--bundle", url, "--trust", t, "--bundle-interval",
                                 "0.5", "--audit", audit, *guest_flags(up), "--", "sh", "-c",
                                 script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=ENV, cwd=W)
        out = {}
        reader = threading.Thread(target=lambda: out.update(
            zip(("stdout", "stderr"), proc.communicate(timeout=600))))
        reader.start()

        def revs():
            try:
                return [json.loads(x)["bundle_revision"] for x in open(audit)]
            except (OSError, ValueError):
                return []

        def wait_for(cond, what):
            for _ in range(1800):
                if cond():
                    return
                if not reader.is_alive():
                    break
                time.sleep(0.1)
            raise AssertionError(f"timed out waiting for {what}: {revs()[-10:]}")

        wait_for(lambda: len(revs()) >= 10, "requests under revision 1")
        publish(bundle("live", 2, allow=(f"good.test:{H}",)), srv, "live.gdb")
        wait_for(lambda: revs().count(2) >= 10, "requests under revision 2")
        p3 = bundle("live", 3, allow=(f"good.test:{H}",))
        publish(flipped(p3, layout(p3)["data"], "tampered"), srv, "live.gdb")
        n = len(revs())
        wait_for(lambda: len(revs()) >= n + 20, "requests after the tampered update")
        # a signed revision 4 that does not load (no `bundle build` would make it): the
        # running revision's files go back on disk, so a later reload reads what runs
        bad = b"return { allow = \n"
        publish(craft(os.path.join(W, "live-4-broken.gdb"), [("live.lua", bad)],
                      [entry("live.lua", bad)], name="live", revision=4), srv, "live.gdb")
        n = len(revs())
        wait_for(lambda: len(revs()) >= n + 20, "requests after the broken update")
        on_disk = [os.path.join(SESSIONS, d, "live.lua") for d in os.listdir(SESSIONS)
                   if d.startswith(".bundle-") and d not in before
                   and os.path.exists(os.path.join(SESSIONS, d, "live.lua"))]
        eq(len(on_disk), 1, f"one extracted bundle: {on_disk}")
        eq(open(on_disk[0]).read(), POLICY.format(name="live", allow=f'"good.test:{H}"'),
           "the running revision's entry is back on disk")
        reader.join()
        eq(proc.returncode, 0, f"exec: {out.get('stderr')}")
        codes = out["stdout"].split()
        expect(len(codes) == 240 and set(codes) == {"200"},
               f"{len(codes)} requests, codes {sorted(set(codes))}")
        recs = [json.loads(x) for x in open(audit)]
        seq = [r["bundle_revision"] for r in recs]
        expect(seq == sorted(seq) and set(seq) == {1, 2}, f"revisions in audit order: {seq}")
        for rev in (1, 2):
            hashes = {r["policy"] for r in recs if r["bundle_revision"] == rev}
            expect(len(hashes) == 1, f"revision {rev} decided under {hashes}")
        err = out["stderr"]
        expect("bundle live revision 2 is running (was 1" in err, err)
        expect("refused, revision 2 keeps running" in err and "sha256" in err, err)
        expect("revision 4 does not load, revision 2 keeps running" in err, err)
    finally:
        server.kill()
        server.wait()


@test
def session_polls_a_url_bundle(up):
    """gondolin start --bundle URL --bundle-interval: the session's supervisor polls as
    exec does; a new revision decides the session's next requests (other.test, denied
    by revision 1, is allowed by revision 2) and the session's log says so"""
    import time
    H = up.http_port
    t = trust("alice")
    srv = os.path.join(W, "served-session")
    os.makedirs(srv, exist_ok=True)
    publish(bundle("spoll", 1, allow=(f"good.test:{H}",)), srv, "spoll.gdb")
    server = subprocess.Popen([G, "bundle", "serve", srv], stdout=subprocess.PIPE, text=True,
                              env=ENV)
    sid = None
    try:
        url = server.stdout.readline().split()[-1] + "spoll.gdb"
        sid = ok("start", "--bundle", url, "--trust", t, "--bundle-interval", "0.5",
                 *guest_flags(up), "--resolve", "other.test:127.0.0.1",
                 "--allow-internal", "other.test").strip()
        probe = f"curl -sS -m 20 -o /dev/null -w '%{{http_code}}' http://other.test:{H}/bytes?n=1"
        rc, out, err = g("exec", "--session", sid, "--", "sh", "-c", probe)
        expect(out in ("000", "403"), f"revision 1 denies other.test: {out} {err}")
        publish(bundle("spoll", 2, allow=(f"good.test:{H}", f"other.test:{H}")), srv,
                "spoll.gdb")
        for _ in range(120):
            log = g("logs", sid)[1]
            if "bundle spoll revision 2 is running (was 1" in log:
                break
            time.sleep(0.5)
        expect("bundle spoll revision 2 is running (was 1" in log, f"session log: {log[-1500:]}")
        rc, out, err = g("exec", "--session", sid, "--", "sh", "-c", probe)
        eq(out, "200", f"revision 2 allows other.test: {err}")
    finally:
        if sid:
            g("stop", sid)
        server.kill()
        server.wait()


@test
def dropin_bundle_used_without_policy(up):
    """a bundle in the drop-in directory is what exec uses when no --policy is given;
    an untrusted one there is refused"""
    H = up.http_port
    d = ENV["GONDOLIN_POLICIES_DIR"]
    os.makedirs(d, exist_ok=True)
    p = bundle("dropin", 1, allow=(f"good.test:{H}",))
    shutil.copy(p, d)
    os.makedirs(os.path.join(W, "config", "gondolin", "trust.d"), exist_ok=True)
    shutil.copy(key("alice")[1], os.path.join(W, "config", "gondolin", "trust.d"))
    script = (f"curl -sS -m 20 http://good.test:{H}/bytes?n=3; echo; "
              f"curl -sS -m 20 -o /dev/null -w 'OTHER %{{http_code}}\\n' http://other.test/")
    rc, out, err = g("exec", *guest_flags(up), "--", "sh", "-c", script)
    expect(rc == 0, f"rc {rc}: {err}")
    eq(out.splitlines()[:2], ["xxx", "OTHER 403"], "guest output under the drop-in bundle")
    shutil.rmtree(os.path.join(W, "config", "gondolin", "trust.d"))
    refused(["exec", *guest_flags(up), "--", "true"], "not signed by a trusted key")
    shutil.rmtree(d)


if __name__ == "__main__":
    up = Upstreams()
    try:
        failed = harness.run("bundle tests", FILTER, up)
    finally:
        up.close()
        shutil.rmtree(W, ignore_errors=True)
    sys.exit(1 if failed else 0)
