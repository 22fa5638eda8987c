#!/usr/bin/env bash
# Static checks (configured in pyproject.toml), run by .ci/run before the tests:
#   ruff check            lint of every Python file
#   ruff format --check   formatting
#   cython-lint           the .pyx/.pxd files
#   mypy                  strict type check of iggy/ (the Cython modules through their .pyi stubs)
#   mypy.stubtest         each .pyi stub against its built extension module (build them first:
#                         scripts/setup.sh does)
# Every check runs even when an earlier one fails; the exit status is 1 when any failed.
# `ruff check --fix` and `ruff format` fix most of what the first two report.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
# cython-lint runs pycodestyle as a program: the interpreter's bin directory goes first on PATH
bindir=$("$PY" -c 'import os, sys; print(os.path.dirname(sys.executable))')
export PATH="$bindir:$PATH"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

failed=()
step() {  # step NAME COMMAND...: run it, time it, remember a failure
    local name=$1 start rc
    shift
    start=$EPOCHREALTIME
    "$@"
    rc=$?
    awk -v n="$name" -v r="$([ $rc = 0 ] && echo ok || echo FAILED)" -v a="$start" -v b="$EPOCHREALTIME" \
        'BEGIN { printf "lint: %-12s %s in %.1f s\n", n, r, b - a }' 
    [ $rc = 0 ] || failed+=("$name")
}

# mypy reads iggy/protocol/ccodes.pyi, a build product (written with the .pxd by setup.py)
"$PY" scripts/gen_ccodes.py

mapfile -t extensions < <(find iggy perf -name '*.pyx' | sed 's/\.pyx$//; s#/#.#g' | sort)

# mypy takes most of the time (~40 s from a cold cache, as on CI): it runs beside the others
mypy_out=$(mktemp)
trap 'rm -f "$mypy_out"' EXIT
step mypy "$PY" -m mypy >"$mypy_out" 2>&1 &
mypy_pid=$!
step ruff "$PY" -m ruff check --quiet .
step ruff-format "$PY" -m ruff format --check --quiet .
step cython-lint "$bindir/cython-lint" iggy perf
step stubtest "$PY" -m mypy.stubtest --allowlist scripts/stubtest-allowlist.txt "${extensions[@]}"
wait $mypy_pid || true
cat "$mypy_out"
grep -q '^lint: mypy  *ok' "$mypy_out" || failed+=(mypy)

if [ ${#failed[@]} -gt 0 ]; then
    echo "lint FAILED: ${failed[*]} (scripts/lint.sh; README.md, \"Static checks\")" >&2
    exit 1
fi
echo "lint: all checks passed"
