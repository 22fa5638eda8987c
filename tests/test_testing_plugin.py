"""The `iggy_server` pytest plugin, as a user sees it: user test files run by a separate pytest.

Each run is a `python -m pytest` subprocess in a temporary project with sample tests that talk
to the fixture's server through the official SDK (one of them is the README's example).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pytest

from iggy.testing import IggyServerError, IggyTestServer
from tests.conftest import REPO

README = REPO / "README.md"


def _plugin_args() -> list:
    """`-p iggy.testing.plugin` unless the installed package already registers the entry point."""
    installed = any(ep.name == "iggy" for ep in metadata.entry_points(group="pytest11"))
    return [] if installed else ["-p", "iggy.testing.plugin"]


def run_pytest(project: Path, *args, ini: str = "", env: dict | None = None) -> subprocess.CompletedProcess:
    (project / "pytest.ini").write_text("[pytest]\n" + textwrap.dedent(ini))
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("IGGY_") and k != "PYTEST_ADDOPTS"}
    full_env["PYTHONPATH"] = str(REPO)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *_plugin_args(), "-v", "-rA", *args],
        cwd=project,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def passed(proc, count: int) -> None:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(rf"\b{count} passed\b", proc.stdout), proc.stdout


def test_readme_example_runs_as_a_user_test(tmp_path):
    text = README.read_text()
    block = re.search(r"## Testing your application.*?```python\n(.*?)```", text, re.S).group(1)
    assert "iggy_server" in block
    (tmp_path / "test_readme_example.py").write_text(block)
    passed(run_pytest(tmp_path), 1)


USER_TESTS = '''
import asyncio
import json
import os
import urllib.request

import pytest
from apache_iggy import Consumer, IggyClient, PollingStrategy, SendMessage

SEEN = {}


async def _login(address, username, password):
    client = IggyClient(address)
    await client.connect()
    await client.login_user(username, password)
    return client


def test_sdk_roundtrip(iggy_server, tmp_path_factory):
    assert iggy_server.username == "iggy" and iggy_server.password == "iggy"
    assert iggy_server.data_dir.is_dir() and (iggy_server.data_dir / "runtime").is_dir()
    assert str(iggy_server.data_dir).startswith(str(tmp_path_factory.getbasetemp()))
    SEEN.setdefault("pids", []).append(iggy_server.pid)

    async def scenario():
        client = await _login(iggy_server.tcp_address, iggy_server.username, iggy_server.password)
        await client.create_stream("app")
        await client.create_topic("app", "events", partitions_count=2)
        await client.send_messages("app", "events", 1, [SendMessage("a"), SendMessage("b")])
        polled = await client.poll_messages("app", "events", consumer=Consumer.Single(7), partition_id=1,
                                            polling_strategy=PollingStrategy.First(), count=10,
                                            auto_commit=False)
        return [m.payload() for m in polled], [s.name for s in await client.get_streams()]

    payloads, streams = asyncio.run(scenario())
    assert payloads == [b"a", b"b"]
    assert streams == ["app"]               # a fresh data directory: nothing else is there


def test_second_test_sees_its_own_server(iggy_server):
    SEEN.setdefault("pids", []).append(iggy_server.pid)
    expected_streams = os.environ["EXPECT_STREAMS"]

    async def scenario():
        client = await _login(iggy_server.tcp_address, iggy_server.username, iggy_server.password)
        return [s.name for s in await client.get_streams()]

    assert asyncio.run(scenario()) == json.loads(expected_streams)
    pids = SEEN["pids"]
    assert (pids[0] == pids[1]) == (os.environ["EXPECT_SHARED"] == "1")


def test_http_and_connection_string(iggy_server):
    with urllib.request.urlopen(iggy_server.http_url + "/ping", timeout=10) as reply:
        assert reply.status == 200

    async def scenario():
        client = IggyClient.from_connection_string(iggy_server.connection_string)
        await client.connect()
        await client.ping()
        return await client.get_stats()

    assert asyncio.run(scenario()).process_id == iggy_server.pid


@pytest.mark.asyncio
async def test_with_pytest_asyncio(iggy_server):
    client = await _login(iggy_server.tcp_address, iggy_server.username, iggy_server.password)
    await client.ping()


def test_factory_and_restart(iggy_server_factory):
    first = iggy_server_factory()
    other = iggy_server_factory(username="admin", password="s3cret!", env={"IGGY_SYSTEM_ENGINE": "asyncio"})
    assert first.tcp_address != other.tcp_address and first.data_dir != other.data_dir
    assert "asyncio engine" in other.log()

    async def make_stream(server, name):
        client = await _login(server.tcp_address, server.username, server.password)
        await client.create_stream(name)

    async def names(server):
        client = await _login(server.tcp_address, server.username, server.password)
        return [s.name for s in await client.get_streams()]

    asyncio.run(make_stream(other, "kept"))
    address = other.tcp_address
    other.restart()
    assert other.tcp_address == address      # same ports after a restart
    assert asyncio.run(names(other)) == ["kept"]
    assert asyncio.run(names(first)) == []
'''


@pytest.mark.parametrize(
    "ini, streams, shared",
    [
        ("", "[]", "0"),  # default: a new server for every test
        ("iggy_server_scope = module\n", '["app"]', "1"),  # one server for the module
    ],
    ids=["function-scope", "module-scope"],
)
def test_fixtures_with_the_official_sdk(tmp_path, ini, streams, shared):
    (tmp_path / "test_user_app.py").write_text(USER_TESTS)
    proc = run_pytest(tmp_path, ini=ini, env={"EXPECT_STREAMS": streams, "EXPECT_SHARED": shared})
    passed(proc, 5)


def test_server_env_from_ini_and_log_on_failure(tmp_path):
    (tmp_path / "test_fails.py").write_text(
        textwrap.dedent('''
        def test_engine_from_ini(iggy_server):
            assert "asyncio engine" in iggy_server.log()
            assert iggy_server.username == "root" and iggy_server.password == "hunter22"

        def test_fails(iggy_server):
            assert False, "on purpose"
    ''')
    )
    proc = run_pytest(
        tmp_path,
        ini='''
        iggy_username = root
        iggy_password = hunter22
        iggy_server_env =
            IGGY_SYSTEM_ENGINE=asyncio
    ''',
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert re.search(r"\b1 failed, 1 passed\b", proc.stdout), proc.stdout
    assert "iggy server log (last lines)" in proc.stdout
    assert "TCP server listening on 127.0.0.1:" in proc.stdout


def test_bad_scope_is_a_usage_error(tmp_path):
    (tmp_path / "test_x.py").write_text("def test_x(iggy_server):\n    pass\n")
    proc = run_pytest(tmp_path, ini="iggy_server_scope = forever\n")
    assert proc.returncode != 0
    assert "iggy_server_scope must be one of" in proc.stdout + proc.stderr


def test_server_that_cannot_start_reports_its_log(tmp_path):
    server = IggyTestServer(tmp_path / "data", env={"IGGY_TCP_ADDRESS": "not-an-address"})
    with pytest.raises(IggyServerError, match="exited with"):
        server.start()
    assert not server.alive()
