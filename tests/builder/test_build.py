#!/usr/bin/env python3
"""Image builder and store: real builds, real guests, real package sources on loopback.

  python3 tests/builder/test_build.py [BUILD_DIR] [-k NAME]

Every example config builds, boots and runs a command; builds are reproducible;
--verify catches a flipped byte in each asset; --validate reports exact codes and
paths; the Alpine path against a signed loopback repository (and a tampered index);
the OCI path against docker-registry on loopback (and a corrupted layer); failing
postBuild commands; the image store; an interrupted build leaves nothing behind.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
import repos  # noqa: E402

ARGS = sys.argv[1:]
ONLY = None
if "-k" in ARGS:
    i = ARGS.index("-k")
    ONLY = ARGS[i + 1]
    del ARGS[i:i + 2]
BUILD = os.path.abspath(ARGS[0] if ARGS else os.path.join(ROOT, "build"))
GONDOLIN = os.path.join(BUILD, "gondolin")
TMP = tempfile.mkdtemp(prefix="gd-buildtest-")
STORE = os.path.join(TMP, "store")
ENV = dict(os.environ, GONDOLIN_IMAGE_STORE=STORE, GONDOLIN_PROGRESS="plain")
RESULTS = []


def run(*args, check=True, env=None, timeout=900, input=None):
    p = subprocess.run([GONDOLIN] + list(args), capture_output=True, text=True,
                       env=env or ENV, timeout=timeout, input=input)
    if check and p.returncode != 0:
        raise AssertionError("gondolin %s -> %d\n%s%s" % (" ".join(args), p.returncode,
                                                            p.stdout, p.stderr[-4000:]))
    return p


def expect(cond, msg):
    if not cond:
        raise AssertionError(msg)


def test(fn):
    if ONLY and ONLY not in fn.__name__:
        return fn
    t0 = time.time()
    try:
        fn()
        RESULTS.append((fn.__name__, True, time.time() - t0, ""))
        print("PASS %-28s %6.1f s" % (fn.__name__, time.time() - t0), flush=True)
    except Exception as e:  # noqa: BLE001
        RESULTS.append((fn.__name__, False, time.time() - t0, str(e)))
        print("FAIL %-28s %6.1f s\n%s" % (fn.__name__, time.time() - t0, e), flush=True)
    return fn


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    return path


def build(config, out, *extra, check=True):
    return run("build", "--config", config, "--output", out, *extra, check=check)


def manifest(d):
    with open(os.path.join(d, "manifest.json")) as f:
        return json.load(f)


def guest(image, script, check=True):
    return run("exec", "--image", image, "--", "/bin/sh", "-c", script, check=check)


EX = os.path.join(ROOT, "examples", "images")


def busybox_image():
    """The minimal example, built once per run (the examples test builds it first)."""
    d = os.path.join(TMP, "bb1")
    if not os.path.exists(os.path.join(d, "manifest.json")):
        build(os.path.join(EX, "minimal-busybox.json"), d)
    return d


@test
def validate_reports_codes_and_paths():
    cases = [
        ('{"arch": "x86_64",', [("E001", "(top)")]),
        ('{"rootfs": {"sizeMB": 100}, "postBild": {}}',
         [("E002", "rootfs.sizeMB"), ("E002", "postBild")]),
        ('{"debian": {"packages": "bash"}, "env": {"A": 1}}',
         [("E003", "debian.packages"), ("E003", "env.A")]),
        ('{"arch": "x86", "distro": "nixos", "runtimeDefaults": {"rootfsMode": "rw"}}',
         [("E004", "arch"), ("E004", "distro"), ("E004", "runtimeDefaults.rootfsMode")]),
        ('{"oci": {"pullPolicy": "sometimes"}}', [("E005", "oci.image"),
                                                  ("E004", "oci.pullPolicy")]),
        ('{"postBuild": {"copy": [{"src": "nope.txt", "dest": "etc/x"}, {"dest": "/a"}],'
         ' "commands": ["true", 3]}}',
         [("E016", "postBuild.copy[0].src"), ("E015", "postBuild.copy[0].dest"),
          ("E005", "postBuild.copy[1].src"), ("E003", "postBuild.commands[1]")]),
        ('{"env": {"GITHUB_TOKEN": "x"}, "container": {"force": true}, '
         '"debian": {"packages": ["bash", "no-such-package-gondolin"]}}',
         [("W001", "env.GITHUB_TOKEN"), ("W002", "container"), ("E010", "debian.packages[1]")]),
    ]
    env = dict(ENV, GONDOLIN_VALIDATE_NO_TRIAL="1")
    for i, (text, want) in enumerate(cases):
        f = write(os.path.join(TMP, "bad", "c%d.json" % i), text)
        p = run("build", "--validate", f, "--json", check=False, env=env)
        got = [(d["code"], d["path"]) for d in json.loads(p.stdout)]
        for w in want:
            expect(w in got, "case %d: want %s in %s" % (i, w, got))
        expect(p.returncode == 1, "case %d: exit %d" % (i, p.returncode))
    # did-you-mean and the one-line text form
    p = run("build", "--validate", os.path.join(TMP, "bad", "c1.json"), check=False, env=env)
    expect("did you mean 'sizeMb'" in p.stdout and "did you mean 'postBuild'" in p.stdout,
           p.stdout)
    # the shipped examples and --init-config are clean
    init = run("build", "--init-config").stdout
    f = write(os.path.join(TMP, "init.json"), init)
    for cfg in [f] + [os.path.join(EX, x) for x in sorted(os.listdir(EX)) if x.endswith(".json")]:
        p = run("build", "--validate", cfg, "--json", check=False, env=env)
        errs = [d for d in json.loads(p.stdout) if d["code"].startswith("E")]
        expect(p.returncode == 0 and not errs, "%s: %s" % (cfg, p.stdout))
    # sizeMb too small: found by the trial build
    small = write(os.path.join(TMP, "bad", "small.json"),
                  '{"debian": {"packages": ["busybox-static", "python3"]}, '
                  '"rootfs": {"sizeMb": 8}}')
    p = run("build", "--validate", small, "--json", check=False)
    got = [(d["code"], d["path"]) for d in json.loads(p.stdout)]
    expect(("E013", "rootfs.sizeMb") in got, got)


@test
def examples_build_boot_and_are_reproducible():
    bb = os.path.join(TMP, "bb1")
    build(os.path.join(EX, "minimal-busybox.json"), bb)
    m = manifest(bb)
    expect(m["distro"] == "debian" and m["buildId"] and len(m["buildId"]) == 36, m)
    names = {p["name"]: p["version"] for p in m["packages"]}
    expect("busybox-static" in names and any(n.startswith("linux-image-") for n in names), names)
    fsck = subprocess.run(["e2fsck", "-fn", os.path.join(bb, "rootfs.ext4")],
                          capture_output=True, text=True)
    expect(fsck.returncode == 0, fsck.stdout + fsck.stderr)
    out = guest(bb, 'cat /etc/motd /etc/build-stamp; echo "PS1=$PS1"; ls /bin/sh').stdout
    expect("gondolin busybox image" in out and "built-in-vm" in out and "PS1=gondolin$" in out,
           out)
    bb2 = os.path.join(TMP, "bb2")
    # the second build as if on a terminal: progress bars instead of lines
    p = run("build", "--config", os.path.join(EX, "minimal-busybox.json"), "--output", bb2,
            env=dict(ENV, GONDOLIN_PROGRESS="bar"))
    expect("\033[K  unpacking the kernel" in p.stderr and "#####" in p.stderr
           and "100%" in p.stderr, repr(p.stderr[-600:]))
    expect(manifest(bb2)["buildId"] == m["buildId"], "buildIds differ")
    for a in ("vmlinux", "initramfs.cpio.lz4", "rootfs.ext4"):
        expect(open(os.path.join(bb, a), "rb").read() == open(os.path.join(bb2, a), "rb").read(),
               a + " differs between two builds")
    for cfg, cmd, want in [
            ("python-dev.json", "cat /etc/python-version; python -c 'print(6*7)'", "42"),
            ("node-dev.json", "cat /etc/node-version; node -e 'console.log(6*7)'", "42")]:
        d = os.path.join(TMP, cfg[:-5])
        build(os.path.join(EX, cfg), d)
        out = guest(d, cmd).stdout
        expect(want in out, cfg + ": " + out)
    shutil.rmtree(os.path.join(TMP, "python-dev"), ignore_errors=True)
    shutil.rmtree(os.path.join(TMP, "node-dev"), ignore_errors=True)


@test
def verify_catches_one_flipped_byte():
    src = busybox_image()
    p = run("build", "--verify", src)
    expect("all checksums match" in p.stdout, p.stdout)
    for asset in ("vmlinux", "vmlinuz", "initramfs.cpio.lz4", "rootfs.ext4"):
        d = os.path.join(TMP, "flip")
        shutil.rmtree(d, ignore_errors=True)
        shutil.copytree(src, d)
        path = os.path.join(d, asset)
        with open(path, "r+b") as f:
            f.seek(os.path.getsize(path) // 2)
            b = f.read(1)
            f.seek(-1, 1)
            f.write(bytes([b[0] ^ 0x01]))
        p = run("build", "--verify", d, check=False)
        bad = [ln for ln in p.stdout.splitlines() if "MISMATCH" in ln]
        expect(p.returncode == 1 and len(bad) == 1 and asset in bad[0], asset + ": " + p.stdout)
        # the sandbox refuses it too
        p = run("exec", "--image", d, "--", "true", check=False)
        expect(p.returncode != 0 and "mismatch" in p.stderr, p.stderr)
    shutil.rmtree(os.path.join(TMP, "flip"), ignore_errors=True)


@test
def postbuild_failure_stops_the_build():
    cfg = write(os.path.join(TMP, "fail.json"), json.dumps({
        "debian": {"packages": ["busybox-static"]},
        "postBuild": {"commands": ["echo first-ran", "echo about-to-fail; exit 3", "echo never"]}}))
    out = os.path.join(TMP, "failimg")
    p = build(cfg, out, check=False)
    expect(p.returncode == 1, p.stderr)
    expect("postBuild.commands[1] failed with exit code 3" in p.stderr, p.stderr)
    expect("[build vm] first-ran" in p.stderr and "[build vm] about-to-fail" in p.stderr
           and "never" not in p.stderr.split("failed with")[0].split("about-to-fail")[-1],
           p.stderr)
    expect(not os.path.exists(out), "a failed build left an image")
    left = [n for n in os.listdir(TMP) if n.startswith("failimg.tmp")]
    expect(not left, left)


@test
def alpine_from_a_signed_loopback_repository():
    base = os.path.join(TMP, "apk")
    r = repos.apk_repo(base)
    url = r.serve()
    try:
        cfg = write(os.path.join(base, "alpine.json"), json.dumps({
            "distro": "alpine",
            "alpine": {"version": "3.23.0", "mirror": url, "keysDir": "keys",
                       "kernelPackage": "linux-virt", "kernelImage": "vmlinuz-virt",
                       "rootfsPackages": ["alpine-baselayout", "busybox", "hello"]}}))
        p = run("build", "--config", cfg, "--dry-run")
        expect("hello" in p.stdout and "2.12-r1" in p.stdout and "musl" in p.stdout, p.stdout)
        out = os.path.join(base, "img")
        build(cfg, out)
        m = manifest(out)
        pk = {x["name"]: x["version"] for x in m["packages"]}
        expect(pk.get("hello") == "2.12-r1" and pk.get("musl") == "1.2.5-r10"
               and pk.get("linux-virt") == "6.1.0-r0", pk)
        res = guest(out, "hello; stat -c '%u:%g %a %h' /home/alice/.profile /usr/bin/sudo-ish;"
                         " ls -l /etc/null-test /etc/fifo-test | cut -c1; grep alice /etc/passwd")
        o = res.stdout
        expect("hello from an apk" in o, o)
        expect("1000:1000 600 2" in o and "4755" in o, o)
        expect("p\nc" in o and "alice:x:1000" in o, o)
        dbg = subprocess.run(["debugfs", "-R", "ea_list /home/alice/.profile",
                              os.path.join(out, "rootfs.ext4")], capture_output=True, text=True)
        expect("origin" in dbg.stdout and "apk" in dbg.stdout, dbg.stdout + dbg.stderr)
        # a kernel without the virtio modules is caught by --validate
        bad = write(os.path.join(base, "broken.json"), json.dumps({
            "distro": "alpine",
            "alpine": {"mirror": url, "keysDir": "keys", "kernelPackage": "linux-broken",
                       "rootfsPackages": ["busybox"]}}))
        p = run("build", "--validate", bad, "--json", check=False)
        got = [(d["code"], d["path"]) for d in json.loads(p.stdout)]
        expect(("E012", "alpine.kernelPackage") in got, got)
        # an untrusted key
        other = write(os.path.join(base, "nokey.json"), json.dumps({
            "distro": "alpine", "alpine": {"mirror": url, "keysDir": "/etc",
                                           "rootfsPackages": ["busybox"]}}))
        p = build(other, os.path.join(base, "nokey"), check=False)
        expect(p.returncode == 1 and "not a trusted key" in p.stderr, p.stderr)
    finally:
        r.stop()
    # the same repository with a tampered index
    base2 = os.path.join(TMP, "apk-tampered")
    r2 = repos.apk_repo(base2, tamper=True)
    url2 = r2.serve()
    try:
        cfg = write(os.path.join(base2, "alpine.json"), json.dumps({
            "distro": "alpine",
            "alpine": {"mirror": url2, "keysDir": "keys", "rootfsPackages": ["busybox"]}}))
        p = build(cfg, os.path.join(base2, "img"), check=False)
        expect(p.returncode == 1 and "BAD signature" in p.stderr, p.stderr)
        expect(not os.path.exists(os.path.join(base2, "img")), "image from a tampered index")
    finally:
        r2.stop()


@test
def oci_from_a_loopback_registry():
    base = os.path.join(TMP, "ocitest")
    os.makedirs(base, exist_ok=True)
    lay = repos.oci_busybox(base)
    index_digest = repos.add_index(lay, "multi", "busybox", "armish")
    reg = repos.Registry(base, token=True)
    try:
        reg.push(lay, "busybox", "gondolin/busybox:1")
        repos.sh("skopeo", "copy", "--all", "--dest-tls-verify=false", "oci:%s:multi" % lay,
                 "docker://%s/gondolin/multi:1" % reg.host)
        before = len(reg.tokens.requests)
        with open(os.path.join(EX, "oci-busybox.json")) as f:
            text = f.read().replace("127.0.0.1:5000", reg.host)
        cfg = write(os.path.join(base, "oci.json"), text)
        out = os.path.join(base, "img")
        build(cfg, out)
        m = manifest(out)
        want = subprocess.run(["skopeo", "inspect", "--tls-verify=false", "--format",
                               "{{.Digest}}", "docker://%s/gondolin/busybox:1" % reg.host],
                              capture_output=True, text=True).stdout.strip()
        expect(m["ociSource"]["digest"] == want, (m["ociSource"], want))
        o = guest(out, "cat /etc/oci-release; ls /etc/deleted-later 2>&1; echo kind=$IMAGE_KIND"
                  ).stdout
        expect("from an OCI registry" in o and "No such file" in o and "kind=oci" in o, o)
        got = reg.tokens.requests[before:]
        expect(any("scope=repository:gondolin/busybox:pull" in r for r in got), got)
        # a multi-platform index: the linux/amd64 image is picked (arm64 is listed first)
        cfgm = write(os.path.join(base, "multi.json"), json.dumps({
            "oci": {"image": "%s/gondolin/multi:1" % reg.host, "platform": "linux/amd64"}}))
        outm = os.path.join(base, "multi")
        build(cfgm, outm)
        mm = manifest(outm)
        expect(mm["ociSource"]["digest"] == index_digest, (mm["ociSource"], index_digest))
        dbg = subprocess.run(["debugfs", "-R", "stat /etc/wrong-platform",
                              os.path.join(outm, "rootfs.ext4")], capture_output=True, text=True)
        expect("not found" in dbg.stderr, "picked the arm64 image: " + dbg.stdout)
        p = build(write(os.path.join(base, "s390.json"), json.dumps({
            "oci": {"image": "%s/gondolin/multi:1" % reg.host, "platform": "linux/s390x"}})),
            os.path.join(base, "s390"), check=False)
        expect(p.returncode == 1 and "no linux/s390x image (has: linux/arm64, linux/amd64)"
               in p.stderr, p.stderr)
        # a docker-archive (docker save) tarball
        arch = os.path.join(base, "busybox.tar")
        repos.sh("skopeo", "copy", "oci:%s:busybox" % lay, "docker-archive:%s" % arch)
        cfga = write(os.path.join(base, "archive.json"), json.dumps({
            "oci": {"image": "docker-archive:busybox.tar"}}))
        outa = os.path.join(base, "archive")
        build(cfga, outa)
        dbg = subprocess.run(["debugfs", "-R", "cat /etc/oci-release",
                              os.path.join(outa, "rootfs.ext4")], capture_output=True, text=True)
        expect("from an OCI registry" in dbg.stdout, dbg.stdout + dbg.stderr)
        # the same image from the local OCI layout
        cfg2 = write(os.path.join(base, "layout.json"), json.dumps({
            "oci": {"image": "oci:%s:busybox" % lay}}))
        out2 = os.path.join(base, "img2")
        build(cfg2, out2)
        img2 = os.path.join(out2, "rootfs.ext4")
        dbg = subprocess.run(["debugfs", "-R", "cat /etc/oci-release", img2],
                             capture_output=True, text=True)
        expect("from an OCI registry" in dbg.stdout, dbg.stdout + dbg.stderr)
        dbg = subprocess.run(["debugfs", "-R", "stat /etc/deleted-later", img2],
                             capture_output=True, text=True)
        expect("not found" in dbg.stderr, dbg.stdout + dbg.stderr)
        expect(manifest(out2)["ociSource"]["reference"].startswith("oci:"), manifest(out2))
        # a corrupted layer in the registry: refused (fresh cache, pull always)
        man = json.loads(subprocess.run(
            ["skopeo", "inspect", "--raw", "--tls-verify=false", "--creds", "x:y",
             "docker://%s/gondolin/busybox:1" % reg.host], capture_output=True, text=True).stdout)
        blob = reg.blob(man["layers"][0]["digest"])
        data = bytearray(open(blob, "rb").read())
        data[len(data) // 2] ^= 0xFF
        open(blob, "wb").write(bytes(data))
        cache = os.path.join(base, "cache")
        os.makedirs(os.path.join(cache, "gondolin"), exist_ok=True)
        os.symlink(os.path.expanduser("~/.cache/gondolin/debs"),
                   os.path.join(cache, "gondolin", "debs"))
        env = dict(ENV, XDG_CACHE_HOME=cache)
        p = run("build", "--config", cfg, "--output", os.path.join(base, "bad"), check=False,
                env=env)
        expect(p.returncode == 1 and "sha256 mismatch" in p.stderr and "refusing" in p.stderr,
               p.stderr)
        expect(not os.path.exists(os.path.join(base, "bad")), "image from a bad layer")
    finally:
        reg.stop()


@test
def image_store():
    bb = busybox_image()
    bid = manifest(bb)["buildId"]
    p = run("image", "import", bb, "--tag", "busy:1")
    expect(bid in p.stdout, p.stdout)
    ls = run("image", "ls").stdout
    expect("busy:1" in ls and bid in ls, ls)
    for sel in ("busy:1", bid, bid[:8]):
        p = run("image", "inspect", sel)
        expect(json.loads(p.stdout)["manifest"]["buildId"] == bid, sel)
        o = run("exec", "--image", sel, "--", "cat", "/etc/build-stamp").stdout
        expect("built-in-vm" in o, o)
    o = run("exec", "--", "cat", "/etc/build-stamp",
            env=dict(ENV, GONDOLIN_DEFAULT_IMAGE="busy:1")).stdout
    expect("built-in-vm" in o, o)
    run("image", "tag", "busy:1", "busy:stable")
    # concurrent imports of the same image under different tags
    procs = [subprocess.Popen([GONDOLIN, "image", "import", bb, "--tag", "par:%d" % i],
                              env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for i in range(4)]
    for pr in procs:
        expect(pr.wait() == 0, pr.stderr.read())
    objs = os.listdir(os.path.join(STORE, "objects"))
    expect(objs == [bid], objs)
    js = json.loads(run("image", "ls", "--json").stdout)
    refs = sorted(e["ref"] for e in js if e.get("ref"))
    expect(refs == ["busy:1", "busy:stable", "par:0", "par:1", "par:2", "par:3"], refs)
    # build straight into the store with --tag: two builds of the same config at once
    procs = [subprocess.Popen([GONDOLIN, "build", "--config",
                               os.path.join(EX, "minimal-busybox.json"), "--tag", t],
                              env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for t in ("built:1", "built:2")]
    for pr in procs:
        out, err = pr.communicate(timeout=600)
        expect(pr.returncode == 0 and bid in out, out + err)
    objs = os.listdir(os.path.join(STORE, "objects"))
    expect([o for o in objs if not o.endswith(".lock")] == [bid], objs)
    run("image", "rm", "built:2")
    p = run("build", "--verify", os.path.join(STORE, "objects", bid))
    expect("all checksums match" in p.stdout, p.stdout)
    for r in ("busy:1", "busy:stable", "par:0", "par:1", "par:2", "par:3"):
        run("image", "rm", r)
    p = run("image", "gc")
    expect("nothing to remove" in p.stdout, p.stdout)  # built:1 still points at it
    run("image", "rm", "built:1")
    p = run("image", "gc")
    expect("removed " + bid in p.stdout, p.stdout)
    expect(os.listdir(os.path.join(STORE, "objects")) == [], os.listdir(
        os.path.join(STORE, "objects")))
    p = run("exec", "--image", "busy:1", "--", "true", check=False)
    expect(p.returncode != 0 and "not found" in p.stderr, p.stderr)


@test
def rootfs_modes_and_init_hooks():
    extra = write(os.path.join(TMP, "modes", "extra.sh"),
                  "echo ran-before-the-agent > /run/init-extra\n")
    cfg = write(os.path.join(TMP, "modes", "ro.json"), json.dumps({
        "debian": {"packages": ["busybox-static"]},
        "env": ["GREETING=hello world", "QUOTED=it's"],
        "init": {"rootfsInitExtra": "extra.sh"},
        "runtimeDefaults": {"rootfsMode": "readonly"}}))
    out = os.path.join(TMP, "modes", "img")
    build(cfg, out)
    expect(manifest(out)["runtimeDefaults"]["rootfsMode"] == "readonly", manifest(out))
    o = guest(out, 'touch /x 2>&1; touch /tmp/y && echo tmp-ok; cat /run/init-extra; '
                   'echo "$GREETING|$QUOTED"').stdout
    expect("Read-only file system" in o and "tmp-ok" in o and "ran-before-the-agent" in o
           and "hello world|it's" in o, o)
    o = run("exec", "--image", out, "--rootfs-mode", "memory", "--", "/bin/sh", "-c",
            "touch /x && echo overlay-ok").stdout
    expect("overlay-ok" in o, o)
    o = run("exec", "--image", out, "--", "/bin/sh", "-lc", 'echo "$GREETING"').stdout
    expect("hello world" in o, o)


@test
def interrupted_build_leaves_nothing():
    store = os.path.join(TMP, "store-int")
    env = dict(ENV, GONDOLIN_IMAGE_STORE=store)
    cfg = write(os.path.join(TMP, "slow.json"), json.dumps({
        "debian": {"packages": ["busybox-static"]},
        "postBuild": {"commands": ["sleep 60"]}}))
    p = subprocess.Popen([GONDOLIN, "build", "--config", cfg, "--tag", "int:1"], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = ""
    t0 = time.time()
    while time.time() - t0 < 300:
        line = p.stderr.readline()
        seen += line
        if "postBuild.commands[0]" in line or not line:
            break
    time.sleep(1)
    p.send_signal(signal.SIGINT)
    rc = p.wait(timeout=60)
    seen += p.stderr.read()
    expect(rc == 130, "exit %d\n%s" % (rc, seen))
    objs = os.path.join(store, "objects")
    left = [n for n in os.listdir(objs) if not n.endswith(".lock")] if os.path.isdir(objs) else []
    expect(left == [], left)
    expect("int:1" not in run("image", "ls", env=env).stdout, "ref of an interrupted build")
    time.sleep(1)
    qemu = subprocess.run(["pgrep", "-f", "qemu-system.*" + store], capture_output=True)
    expect(qemu.returncode != 0, "the build VM outlived the build")


def main():
    expect(os.path.exists(GONDOLIN), "build gondolin first")
    n_fail = sum(1 for r in RESULTS if not r[1])
    print("\n%d passed, %d failed" % (len(RESULTS) - n_fail, n_fail))
    if not n_fail:
        shutil.rmtree(TMP, ignore_errors=True)
    else:
        print("kept", TMP)
    sys.exit(1 if n_fail else 0)


if __name__ == "__main__":
    main()
