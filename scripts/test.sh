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
