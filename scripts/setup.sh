#!/usr/bin/env bash
# Prepare a fresh Debian/Ubuntu machine: system packages, a virtualenv in .venv, and iggy
# installed from this checkout in editable mode (the Cython core is compiled in place).
#   scripts/setup.sh          the server and its runtime dependencies
#   scripts/setup.sh --test   also the test dependencies (official SDK, pytest, hypothesis)
set -euo pipefail
cd "$(dirname "$0")/.."

pkgs="liburing-dev libxxhash-dev pkg-config gcc python3-dev python3-venv"
# the tests also count the data path's syscalls with strace and run the README's curl flow;
# the power-cut tests mount a FUSE file system (fusermount3, and libfuse3 to build pyfuse3)
[ "${1:-}" = "--test" ] && pkgs="$pkgs strace curl fuse3 libfuse3-dev"
need=()
for pkg in $pkgs; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get install -y "${need[@]}" || { $sudo_cmd apt-get update && $sudo_cmd apt-get install -y "${need[@]}"; }
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip "setuptools>=77" "Cython>=3.1,<4" wheel
extra=""
[ "${1:-}" = "--test" ] && extra="[test]"
.venv/bin/python -m pip install -q -e ".${extra}"
# editable installs compile the extensions into the build tree; tests and `python -m iggy`
# from the checkout import the package in place, so build them here too
.venv/bin/python setup.py -q build_ext --inplace
