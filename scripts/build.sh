#!/usr/bin/env bash
# Configures and builds into build/ (and, with --asan, build-asan/ with ASan+UBSan).
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc)
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$jobs" >/dev/null
if [[ "${1:-}" == "--asan" ]]; then
  cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DGD_SANITIZE=ON >/dev/null
  cmake --build build-asan -j"$jobs" --target test-unit gd-testclient gd-fwd-driver gd-proxyd gd-sshpx-driver gd-ssh-flood gondolin-cli guest ratelimit secret-exec \
    vfs-clock testplugin-hdr testplugin-bad_abi testplugin-no_entry testplugin-init_fail testplugin-small_desc \
    testplugin-vfs_null_ops testplugin-vfs_bad_size testplugin-vfs_bad_name testplugin-fs_hook_null testplugin-ssh_hook >/dev/null
fi
if [[ "${1:-}" == "--asan" ]] && command -v clang >/dev/null; then
  CC=clang cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=Debug -DGD_FUZZ=ON >/dev/null
  cmake --build build-fuzz -j"$jobs" --target fuzz-proto fuzz-http fuzz-dns fuzz-sni fuzz-target fuzz-control fuzz-apk fuzz-fuse fuzz-vfs fuzz-virtq fuzz-snap fuzz-bootsnap \
    fuzz-known-hosts fuzz-gitcmd fuzz-bundle \
    fuzz-selftest >/dev/null
fi
