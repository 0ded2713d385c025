#!/usr/bin/env python3
"""Integration test of virtio-fs mounts: boots the default image with a mount served by
our vhost-user back-end (tests/integration/vfs_driver.c) and checks what the guest sees.
Usage: test_vfs.py BUILD_DIR"""
import os
import platform
import subprocess
import sys

BUILD = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "build")


def main():
    # the default image is built on first use (and rebuilt when the builder or guest
    # changed): let the CLI do it, then hand its directory to the driver
    r = subprocess.run([os.path.join(BUILD, "gondolin"), "exec", "--", "true"],
                       capture_output=True, timeout=900)
    if r.returncode != 0:
        print("cannot boot the default image:", r.stderr.decode())
        return 1
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    arch = {"aarch64": "aarch64", "arm64": "aarch64"}.get(platform.machine(), "x86_64")
    image = os.path.join(cache, "gondolin", "images", "default-" + arch)
    r = subprocess.run([os.path.join(BUILD, "tests", "gd-vfs-driver"), image],
                       capture_output=True, timeout=300)
    sys.stdout.write(r.stdout.decode())
    sys.stderr.write(r.stderr.decode())
    ok = r.returncode == 0
    print(f"{1 if ok else 0} passed, {0 if ok else 1} failed")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
