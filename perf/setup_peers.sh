#!/usr/bin/env bash
# Peers for perf/compare_peers.py: redis-server from Debian, plus the Python packages the
# perf scripts use (pyperf; py-spy to profile the server). Run as root or with sudo.
set -euo pipefail
cd "$(dirname "$0")/.."
sudo_cmd=""
[ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
if ! command -v redis-server >/dev/null 2>&1; then
  $sudo_cmd apt-get update
  $sudo_cmd apt-get install -y redis-server
fi
# the Debian package enables a system service; compare_peers.py starts its own instances
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet redis-server 2>/dev/null; then
  $sudo_cmd systemctl stop redis-server || true
fi
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
"$PY" -m pip install -q "pyperf>=2.6" "py-spy>=0.3"
redis-server --version
