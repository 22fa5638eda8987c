#!/usr/bin/env bash
# Prepare a fresh Debian/Ubuntu machine: system packages, a virtualenv in .venv, and iggy
# installed from this checkout in editable mode (the Cython core is compiled in place).
#   scripts/setup.sh          the server and its runtime dependencies
#   scripts/setup.sh --test   also the test dependencies (official SDK, pytest, hypothesis), and
#                             the pre-0.9 SDK apache-iggy 0.8 in .venv-classic (its own virtualenv:
#                             both SDKs are the module apache_iggy) for tests/test_classic_sdk.py
set -euo pipefail
cd "$(dirname "$0")/.."

pkgs="liburing-dev libxxhash-dev pkg-config gcc python3-dev python3-venv"
# the tests also count the data path's syscalls with strace and run the README's curl flow;
# the power-cut tests mount a FUSE file system (fusermount3, and libfuse3 to build pyfuse3);
# the cluster tests start Debian's etcd (v3 API) on loopback ports (tests/cluster/)
[ "${1:-}" = "--test" ] && pkgs="$pkgs strace curl fuse3 libfuse3-dev etcd-server"
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
if [ "${1:-}" = "--test" ]; then
    # without it (no wheel for this Python, say) that test module skips and says why
    { [ -x .venv-classic/bin/python ] || "$PY" -m venv .venv-classic; } &&
        .venv-classic/bin/python -m pip install -q "apache-iggy==0.8.*" ||
        { echo "setup: apache-iggy 0.8 not installed in .venv-classic: tests/test_classic_sdk.py will skip" >&2
          rm -rf .venv-classic; }
fi
