#!/usr/bin/env bash
# Run the atheris harness on the instrumented build (fuzz/build.sh first). Extra arguments go
# to libFuzzer, e.g. fuzz/run.sh -runs=1000000 -max_len=70000. The corpus is kept in
# fuzz/corpus (seeded by the harness with valid frames and batches); crashes land in fuzz/.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
mkdir -p fuzz/corpus
LD_PRELOAD="$PWD/fuzz/build/libfuzzer_nomain.so" IGGY_FUZZ_INSTRUMENTED=fuzz/build \
    exec "$PY" fuzz/fuzz_frames.py -artifact_prefix=fuzz/ "$@" fuzz/corpus
