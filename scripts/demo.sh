#!/usr/bin/env bash
# The main job on a fresh Debian 12 machine: install packages, build, build the default
# guest image on first use, then boot a micro-VM and run a few commands in it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
g=./build/gondolin
set -x
$g --version
$g exec -- uname -a
$g exec -c 'echo "hello from $(hostname), $(nproc) cpu, $(free -m | awk "/Mem/{print \$2}") MiB"; id'
echo 'print(sum(range(10**6)))' | $g exec -- python3 -
$g exec -- sh -c 'echo to-stderr >&2; exit 3' || echo "exit status: $?"
$g doctor
