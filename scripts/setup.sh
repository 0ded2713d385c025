#!/usr/bin/env bash
# Installs exactly the Debian packages that the build, the default guest image and the
# tests need. Idempotent; prints nothing when everything is present. Run as root.
set -euo pipefail

arch=$(dpkg --print-architecture)
case "$arch" in
  amd64) qemu=qemu-system-x86 ;;
  arm64) qemu=qemu-system-arm ;;
  *) echo "setup: unsupported architecture $arch" >&2; exit 1 ;;
esac

pkgs=(
  # build
  cmake gcc make pkg-config musl-tools
  libuv1-dev libcjson-dev libssl-dev liblz4-dev libarchive-dev libext2fs-dev
  libluajit-5.1-dev libslirp-dev libglib2.0-dev node-llhttp libcurl4-openssl-dev zlib1g-dev liblzma-dev
  # SSH egress: libssh (server + client); tests: OpenSSH's sshd as the upstream
  libssh-dev openssh-server
  # run (openssh-client: ssh-keygen and ssh for --ssh / gondolin ssh)
  "$qemu" ca-certificates openssh-client
  # run: qemu-img makes the qcow2 overlays of --rootfs-mode cow and disk checkpoints
  qemu-utils
  # tests: host-side clients of ingress listeners
  curl
  # image builder (apt-get download) and its checks
  apt e2fsprogs
  # tests: fuzzing (clang + libFuzzer runtime), PTY driving, integration driver
  clang libclang-rt-14-dev clang-format python3 tmux procps
  # tests: test certificates for the loopback upstreams
  openssl
  # tests: the image builder's sources on loopback (OCI registry, OCI image tools)
  docker-registry skopeo umoci
  # the Python SDK (sdk/python): venv + pip to install it, its tests, its type check
  python3-venv python3-pip python3-pytest python3-mypy
)
# benchmarks only (scripts/setup.sh --bench): load generator and the peer proxy
if [[ "${1:-}" == "--bench" ]]; then
  pkgs+=(wrk mitmproxy nginx-light cpio lz4)
fi

missing=()
for p in "${pkgs[@]}"; do
  s=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [[ "$s" == "install ok installed" ]] || missing+=("$p")
done
# the image builder resolves packages from apt's lists
lists=$(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*' 2>/dev/null | head -1)
if (( ${#missing[@]} == 0 )) && [[ -n "$lists" ]]; then
  exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
  echo "setup: missing packages (${missing[*]:-apt lists}); run this script as root" >&2
  exit 1
fi
echo "setup: installing ${missing[*]:-nothing (refreshing apt lists)}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
if (( ${#missing[@]} )); then
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
