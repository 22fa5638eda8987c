"""The curl quick reference of README.md ("HTTP API"), run as written against a real server.

The shell block is taken from the README itself, so the documented commands can't drift from
what the server does. Only the base URL is replaced by the test server's. Without curl the
same three requests are replayed with urllib, parsed from the same block.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import httpx

from tests.conftest import ROOT_PASSWORD, ROOT_USER

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_commands() -> list[str]:
    """The commands of the curl block in the "HTTP API" section (continuations joined)."""
    text = README.read_text()
    section = text.split("## HTTP API", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.S).group(1)
    commands, current = [], ""
    for line in block.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        current += line.rstrip("\\").rstrip() + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            commands.append(current.strip())
            current = ""
    return commands


def prepare(server) -> None:
    """The stream and topic the README's last command reads."""
    token = httpx.post(
        server.http_url + "/users/login", json={"username": ROOT_USER, "password": ROOT_PASSWORD}
    ).json()["access_token"]["token"]
    auth = {"Authorization": f"Bearer {token}"}
    assert httpx.post(server.http_url + "/streams", json={"name": "demo-stream"}, headers=auth).status_code == 200
    r = httpx.post(
        server.http_url + "/streams/demo-stream/topics",
        headers=auth,
        json={
            "name": "demo-topic",
            "partitions_count": 1,
            "compression_algorithm": "none",
            "message_expiry": 0,
            "max_topic_size": 0,
        },
    )
    assert r.status_code == 200


def test_readme_block_shape():
    login, list_streams, get_topic = readme_commands()
    assert login.startswith("TOKEN=$(curl") and "['access_token']['token']" in login
    assert list_streams.endswith("/streams") and get_topic.endswith("/streams/demo-stream/topics/demo-topic")


def _run(command: str, env: dict) -> str:
    out = subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_readme_curl_flow(server):
    prepare(server)
    login, list_streams, get_topic = [c.replace("http://localhost:3000", server.http_url) for c in readme_commands()]
    if shutil.which("curl"):
        env = dict(os.environ)
        env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")  # python3 for the one-liner
        env["TOKEN"] = _run(login + '; printf %s "$TOKEN"', env).strip()
        streams = json.loads(_run(list_streams, env))
        topic = json.loads(_run(get_topic, env))
    else:  # replay the same requests
        body = re.search(r"-d '(.*?)'", login).group(1).encode()
        url = re.search(r"(http://\S+/users/login)", login).group(1)
        req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
        token = json.load(urllib.request.urlopen(req))["access_token"]["token"]

        def get(command):
            target = re.search(r"(http://\S+)$", command).group(1)
            req = urllib.request.Request(target, headers={"Authorization": f"Bearer {token}"})
            return json.load(urllib.request.urlopen(req))

        streams, topic = get(list_streams), get(get_topic)
    assert [s["name"] for s in streams] == ["demo-stream"]
    assert topic["name"] == "demo-topic" and topic["partitions_count"] == 1
