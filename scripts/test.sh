#!/usr/bin/env bash
# The test suite: everything on the default engine (uring where the kernel allows io_uring),
# then every test that talks to a server again on the portable asyncio engine.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
"$PY" -m pytest -q "$@"
# the HTTP API does not go through the TCP engine: it runs once
IGGY_TEST_ENGINE=asyncio "$PY" -m pytest -q -m engine --ignore-glob="tests/test_http_*" "$@"
# the pyperf regression gate (perf/README.md): the quick core suite (~15 s) against
# perf/baseline.json, every benchmark taken relative to the calibration workloads of its own run.
# A failure is confirmed by one more quick run merged into the first (a burst of load on this
# shared machine rarely hits the same benchmark twice; a real regression stays). Results go to a
# temp dir. IGGY_SKIP_PERF=1 skips it.
if [ "${IGGY_SKIP_PERF:-0}" != 1 ]; then
    perf_dir=$(mktemp -d)
    trap 'rm -rf "$perf_dir"' EXIT
    perf_run() { "$PY" perf/bench_core.py --quick -q --append "$perf_dir/new.json" >>"$perf_dir/bench.log" 2>&1; }
    perf_step() {  # 0 ok, 1 regression, 2 unusable files, 3 the suite itself failed
        perf_run || { echo "perf gate: perf/bench_core.py failed"; return 3; }
        "$PY" perf/compare.py perf/baseline.json "$perf_dir/new.json"
    }
    echo "perf gate: python perf/bench_core.py --quick, then perf/compare.py against perf/baseline.json"
    perf_rc=0
    perf_step || perf_rc=$?
    if [ "$perf_rc" = 1 ]; then
        echo "perf gate: slower than the baseline; confirming with a second quick run merged into the first"
        perf_rc=0
        perf_step || perf_rc=$?
    fi
    if [ "$perf_rc" != 0 ]; then
        cat "$perf_dir/bench.log"
        echo "perf gate FAILED (exit $perf_rc): see the table above; perf/README.md explains the gate" >&2
        exit 1
    fi
fi
