#!/usr/bin/env bash
# The whole test suite: packages, warning-free build, unit tests (plain and under
# ASan+UBSan), a short libFuzzer run over every parser of guest input, and the
# integration tests that boot real VMs (TCG where KVM is not usable).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
bash scripts/setup.sh
echo "== style (clang-format)"
find core guest builder tests examples plugins -name '*.[ch]' -print0 | xargs -0 clang-format --dry-run --Werror
echo "== build (warnings are errors; plain, ASan+UBSan, fuzz)"
bash scripts/build.sh --asan

echo "== unit tests"
./build/tests/test-unit
echo "== unit tests under ASan+UBSan"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
  ./build-asan/tests/test-unit

if command -v clang >/dev/null; then # build.sh builds build-fuzz/ with clang
  echo "== fuzz step: a failing fuzzer fails it (stubs, and a target that crashes and leaks)"
  python3 tests/fuzz/test_fuzz_step.py build-fuzz
  echo "== fuzz: control channel (${GD_FUZZ_SECONDS:-30}s)"
  bash scripts/fuzz.sh build-fuzz/tests/fuzz-proto "${GD_FUZZ_SECONDS:-30}" build-fuzz/corpus tests/fuzz/seeds
  for t in http target dns sni control apk fuse vfs virtq snap bootsnap known-hosts gitcmd bundle; do
    echo "== fuzz: $t (${GD_FUZZ_SECONDS_NET:-20}s)"
    bash scripts/fuzz.sh "build-fuzz/tests/fuzz-$t" "${GD_FUZZ_SECONDS_NET:-20}" "build-fuzz/corpus-$t" \
      "tests/fuzz/seeds-$t"
  done
fi

echo "== proxy engine (no VM), real upstreams on loopback"
python3 tests/proxy/test_proxy.py build
echo "== proxy engine under ASan+UBSan"
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
  python3 tests/proxy/test_proxy.py build-asan

echo "== policy engine (no VM): Lua bindings, sandbox, limits, reload, plugins, tools"
python3 tests/policy/test_policy.py build
echo "== policy engine under ASan+UBSan"
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
  python3 tests/policy/test_policy.py build-asan
echo "== files: mounts, fs hooks, Lua providers, plugin VFS API (no VM)"
python3 tests/policy/test_fs.py build
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
  python3 tests/policy/test_fs.py build-asan
echo "== ready-made policies against their cases"
for p in policies/*.lua examples/agent.lua examples/vfs-task.lua; do
  ./build/gondolin policy test "$p" | tail -n 1
done
echo "== plugin SDK: install, then build examples/plugin out of tree against it"
rm -rf build/sdk && cmake --install build --prefix build/sdk >/dev/null
PKG_CONFIG_PATH=$PWD/build/sdk/lib/pkgconfig make -s -C examples/plugin clean stamp.so
./build/gondolin policy check examples/agent.lua --plugin examples/plugin/stamp.so | head -n 1
make -s -C examples/plugin clean

echo "== integration tests (real VMs)"
python3 tests/integration/test_vm.py build
echo "== virtio-fs transport: a real guest reads a directory our vhost-user back-end serves"
python3 tests/integration/test_vfs_driver.py build
echo "== files: host directories and providers mounted in real guests, used by real tools"
python3 tests/integration/test_vfs.py build
echo "== booted-image snapshots: save, restore, reseed, clock, network, refusals, SIGKILL mid-save"
python3 tests/integration/test_boot_snapshot.py build
echo "== long-lived sessions: start, exec --session, attach, cp, logs, policy reload, stop"
python3 tests/integration/test_session.py build
echo "== a session's supervisor under ASan+UBSan: protocol errors, hang-ups, stop"
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
  python3 tests/integration/test_session.py build-asan malformed
echo "== disk checkpoints: rootfs mode cow, snapshot, --resume, the store, SIGKILL, the SDK"
python3 tests/integration/test_snapshot.py build
echo "== the Python SDK (sdk/python): codec, fake server, real sandboxes through gondolin start"
bash sdk/python/run_tests.sh build
echo "== egress from real guests"
python3 tests/integration/test_egress.py build
echo "== SSH egress: git over SSH through the host's proxy to a real sshd on loopback"
python3 tests/integration/test_ssh_egress.py build
echo "== the SSH proxy on its loop without a VM (request flood, silent upstream, stop), plain and ASan+UBSan"
python3 tests/integration/test_ssh_loop.py build
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
  python3 tests/integration/test_ssh_loop.py build-asan
echo "== signed policy bundles: build, sign, verify, refusals, rollback, drop-in, in real guests"
python3 tests/integration/test_bundle.py build
echo "== port forwards into real guests (agent tunnels; raw and HTTP-aware)"
python3 tests/integration/test_forward.py build
echo "== ingress and host->guest SSH from the command line (policy hooks, audit, sshd image)"
python3 tests/integration/test_ingress.py build
echo "== image builder and store: examples, Alpine repo and OCI registry on loopback"
python3 tests/builder/test_build.py build
echo "== image builder under ASan+UBSan (Alpine index/signatures/resolver, OCI registry client, tree)"
for k in alpine oci; do
  ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
    python3 tests/builder/test_build.py build-asan -k "$k"
done
echo "== API client under ASan+UBSan against a real VM"
for m in concurrent stdin close inject; do
  ASAN_OPTIONS=detect_leaks=1 ./build-asan/tests/gd-testclient "$m"
done
echo "== port forwards under ASan+UBSan against a real VM"
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
  python3 tests/integration/test_forward.py build-asan
echo "== all tests passed in $((SECONDS - start))s"
