#!/usr/bin/env bash
# Installs the SDK into a throwaway venv (with Debian's site packages, for pytest) and
# runs its tests: codec and fake-server tests always, the real-VM tests when
# BUILD_DIR/gondolin has `start`. Usage: sdk/python/run_tests.sh BUILD_DIR [PYTEST ARGS...]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build=${1:?usage: run_tests.sh BUILD_DIR [pytest args]}
shift
build=$(cd "$build" && pwd)
# Debian's interpreter (python3-venv, python3-pytest), not one found earlier on PATH
py=${PYTHON:-/usr/bin/python3}
[[ -x "$py" ]] || py=python3
venv=$(mktemp -d "${TMPDIR:-/tmp}/gondolin-sdk-venv.XXXXXX")
trap 'rm -rf "$venv"' EXIT
"$py" -m venv --system-site-packages "$venv"
# the package's pyproject.toml needs nothing from an index (in-tree backend)
"$venv/bin/pip" install --quiet --no-index --disable-pip-version-check "$here"
if "$venv/bin/python" -m mypy --version >/dev/null 2>&1; then
  echo "== sdk/python: mypy --strict"
  (cd "$here" && "$venv/bin/python" -m mypy --strict --cache-dir "$venv/.mypy_cache" gondolin)
fi
export GONDOLIN_BIN="$build/gondolin"
echo "== sdk/python: pytest (GONDOLIN_BIN=$GONDOLIN_BIN)"
# run from the tests directory so `gondolin` is the installed package, not the tree
cd "$here/tests"
have_path=0
for a in "$@"; do [[ "$a" != -* && -e "$a" ]] && have_path=1; done
((have_path)) || set -- "$@" .
"$venv/bin/python" -m pytest -p no:cacheprovider -rs "$@"
