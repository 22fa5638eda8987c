"""A bounded schemathesis run over the server's own OpenAPI document: no request may get a 5xx.

Schemathesis reads `/schema/openapi.json` from a real server and sends generated requests
(valid and invalid) to every documented operation, authenticated as root, for at most
`BUDGET` seconds. The only check is `not_a_server_error`: refusals of any kind are fine, a
500 is a bug. Logout is left out so the run keeps its token for the whole budget.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx

from tests.conftest import ROOT_PASSWORD, ROOT_USER

BUDGET = 40  # seconds of generation; the whole test stays under a minute


def test_schemathesis_finds_no_server_errors(server, tmp_path):
    url = server.http_url
    token = httpx.post(url + "/users/login", json={"username": ROOT_USER, "password": ROOT_PASSWORD}).json()[
        "access_token"
    ]["token"]
    headers = {"Authorization": f"Bearer {token}"}
    # something to find, so generated ids and names sometimes hit real entities
    httpx.post(url + "/streams", json={"name": "s"}, headers=headers)
    httpx.post(
        url + "/streams/s/topics",
        headers=headers,
        json={
            "name": "t",
            "partitions_count": 2,
            "compression_algorithm": "none",
            "message_expiry": 0,
            "max_topic_size": 0,
        },
    )
    cli = Path(sys.executable).with_name("schemathesis")
    cmd = [
        str(cli) if cli.exists() else "schemathesis",
        "run",
        f"{url}/schema/openapi.json",
        "--checks",
        "not_a_server_error",
        "--max-time",
        str(BUDGET),
        "--max-examples",
        "30",
        "--header",
        f"Authorization: Bearer {token}",
        "--exclude-path",
        "/users/logout",
        "--request-timeout",
        "10",
        "--seed",
        "1",
        "--no-color",
        "--workers",
        "1",
        "--generation-database",
        "none",
        "--report-dir",
        str(tmp_path),
    ]
    env = dict(os.environ, SCHEMATHESIS_HOOKS="")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=BUDGET + 50, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stdout[-8000:] + out.stderr[-2000:]
    assert httpx.get(url + "/ping").status_code == 200
