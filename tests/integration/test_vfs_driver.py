#!/usr/bin/env python3
"""Integration test of virtio-fs mounts: boots the default image with a mount served by
our vhost-user back-end (tests/integration/vfs_driver.c) and checks what the guest sees.
Usage: test_vfs_driver.py BUILD_DIR"""
import hashlib
import os
import platform
import subprocess
import sys
import tempfile

from harness import eq  # noqa: E402

BUILD = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "build")


def transport_with_a_tiny_server():
    """tests/integration/vfs_driver.c: our back-end and a minimal FUSE server, no session"""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    arch = {"aarch64": "aarch64", "arm64": "aarch64"}.get(platform.machine(), "x86_64")
    image = os.path.join(cache, "gondolin", "images", "default-" + arch)
    r = subprocess.run([os.path.join(BUILD, "tests", "gd-vfs-driver"), image],
                       capture_output=True, timeout=300)
    sys.stdout.write(r.stdout.decode())
    if r.returncode != 0:
        raise AssertionError(r.stderr.decode())


def hostfs_and_memfs_from_the_cli():
    """what a user does: a host directory and a memory file system (nested in it) mounted
    with gondolin exec; files cross in both directions, big ones intact"""
    with tempfile.TemporaryDirectory() as tmp:
        os.makedirs(os.path.join(tmp, "sub"))
        with open(os.path.join(tmp, "sub", "h.txt"), "w") as f:
            f.write("from host\n")
        big = os.urandom(3 << 20)
        with open(os.path.join(tmp, "big"), "wb") as f:
            f.write(big)
        script = ("cat /share/sub/h.txt; sha256sum /share/big | cut -d' ' -f1; "
                  "cp /share/big /share/copy; echo guest > /share/g.txt; "
                  "echo m > /share/sub/mem/x; cat /share/sub/mem/x; "
                  "grep -c virtiofs /proc/mounts")
        r = run(["exec", "--mount-hostfs", tmp + ":/share", "--mount-memfs", "/share/sub/mem",
                 "--", "sh", "-c", script])
        eq(r.returncode, 0, r.stderr.decode())
        want = "from host\n%s\nm\n2\n" % hashlib.sha256(big).hexdigest()
        eq(r.stdout.decode(), want, "guest output")
        with open(os.path.join(tmp, "copy"), "rb") as f:
            eq(f.read() == big, True, "the guest's copy of a 3 MiB file, on the host")
        with open(os.path.join(tmp, "g.txt")) as f:
            eq(f.read(), "guest\n", "a file the guest wrote")
        # the memory mount's file never reached the host directory
        eq(os.listdir(os.path.join(tmp, "sub", "mem")), [], "memfs is not the host's")


def run(args):
    return subprocess.run([os.path.join(BUILD, "gondolin")] + args, capture_output=True,
                          timeout=300)


def main():
    # the default image is built on first use (and rebuilt when the builder or guest
    # changed): let the CLI do it first
    r = subprocess.run([os.path.join(BUILD, "gondolin"), "exec", "--", "true"],
                       capture_output=True, timeout=900)
    if r.returncode != 0:
        print("cannot boot the default image:", r.stderr.decode())
        return 1
    passed = failed = 0
    for t in (transport_with_a_tiny_server, hostfs_and_memfs_from_the_cli):
        try:
            t()
            print("ok  ", t.__name__)
            passed += 1
        except Exception as e:  # report every test, then fail
            print("FAIL", t.__name__, e)
            failed += 1
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
