"""The release wheel: scripts/build_wheel.sh builds it (static liburing + auditwheel repair),
a fresh virtualenv installs it, and the server and CLI it installs serve requests.

This builds the Cython core from scratch (about a minute) and installs the runtime
dependencies from the package index into the fresh virtualenv. It is skipped only when a
build tool is genuinely missing (no C compiler, no liburing.a), with the reason.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.timeout(600)


def _missing_tool() -> str | None:
    if shutil.which("gcc") is None and shutil.which("cc") is None:
        return "no C compiler (apt-get install gcc)"
    if shutil.which("pkg-config") is None:
        return "no pkg-config (apt-get install pkg-config)"
    libdir = subprocess.run(["pkg-config", "--variable=libdir", "liburing"], capture_output=True, text=True)
    if libdir.returncode != 0 or not (Path(libdir.stdout.strip()) / "liburing.a").exists():
        return "liburing.a not found (apt-get install liburing-dev)"
    if shutil.which("ldd") is None:
        return "no ldd"
    return None


def _ping(address: str) -> tuple:
    """One raw PING frame (operation 2, code 1) -> (command, operation, status) of the reply."""
    from iggy.protocol.wire import build_request, parse_reply_header

    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(build_request(2, 1, b"", session=0, request=1, client=0x1234))
        head = b""
        while len(head) < 256:
            chunk = sock.recv(256 - len(head))
            assert chunk, "connection closed"
            head += chunk
    size, command, operation, status, _ = parse_reply_header(head)
    assert size == 256
    return command, operation, status


async def _sdk(address: str) -> list:
    from apache_iggy import IggyClient

    client = IggyClient(address)
    await client.connect()
    await client.login_user("iggy", "iggy")
    return [s.name for s in await client.get_streams()]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    reason = _missing_tool()
    if reason:
        pytest.skip(f"cannot build the wheel here: {reason}")
    out = tmp_path_factory.mktemp("dist")
    started = time.monotonic()
    proc = subprocess.run(
        [str(REPO / "scripts" / "build_wheel.sh"), str(out)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHON": sys.executable},
        timeout=480,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    path = Path(proc.stdout.strip().splitlines()[-1])
    assert path.exists() and path.parent == out
    print(f"wheel built in {time.monotonic() - started:.0f} s: {path.name}")
    return path


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("venv") / "v"
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True, timeout=120)
    proc = subprocess.run(
        [str(root / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheel)],
        capture_output=True,
        text=True,
        timeout=420,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return root


def test_wheel_is_manylinux_with_static_liburing(wheel, venv):
    assert "manylinux" in wheel.name and wheel.name.startswith("iggy-")
    site = Path(
        subprocess.check_output(
            [str(venv / "bin" / "python"), "-c", "import iggy, os; print(os.path.dirname(iggy.__file__))"],
            text=True,
            cwd=str(venv),
        ).strip()
    )
    assert site.is_relative_to(venv), site  # the installed copy, not this checkout
    shards = list((site / "engine" / "uring").glob("shard*.so"))
    assert shards, "the uring engine's extension is missing"
    ldd = subprocess.run(["ldd", str(shards[0])], capture_output=True, text=True).stdout
    assert "liburing" not in ldd, ldd
    assert not (site.parent / "iggy.libs").exists() or not any(
        "uring" in p.name for p in (site.parent / "iggy.libs").iterdir()
    )


def test_wheel_installs_the_commands_and_the_pytest_plugin(venv):
    bin_dir = venv / "bin"
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    for command in ("iggy-server", "iggy"):
        proc = subprocess.run(
            [str(bin_dir / command), "--version"], capture_output=True, text=True, timeout=60, cwd=str(venv)
        )
        assert proc.returncode == 0 and version in proc.stdout, proc.stdout + proc.stderr
    plugins = subprocess.check_output(
        [
            str(bin_dir / "python"),
            "-c",
            "from importlib.metadata import entry_points; print([e.value for e in entry_points(group='pytest11')])",
        ],
        text=True,
    )
    assert "iggy.testing.plugin" in plugins


def test_server_from_the_wheel_serves_clients(venv, tmp_path):
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("IGGY_") and k not in ("PYTHONPATH",)}
    env.update(
        {
            "IGGY_SYSTEM_PATH": str(data),
            "IGGY_ROOT_USERNAME": "iggy",
            "IGGY_ROOT_PASSWORD": "iggy",
            "IGGY_TCP_ADDRESS": "127.0.0.1:0",
            "IGGY_HTTP_ADDRESS": "127.0.0.1:0",
            "IGGY_QUIC_ADDRESS": "127.0.0.1:0",
            "IGGY_WEBSOCKET_ADDRESS": "127.0.0.1:0",
        }
    )
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(venv / "bin" / "iggy-server")], env=env, cwd=str(tmp_path), stdout=log, stderr=subprocess.STDOUT
        )
    try:
        runtime = data / "runtime" / "current_config.toml"
        deadline = time.monotonic() + 60
        while not runtime.exists():
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)
        tcp = tomllib.loads(runtime.read_text())["tcp"]["address"]

        assert _ping(tcp) == (8, 2, 0)  # Reply, operation echoed, status ok
        cli = [str(venv / "bin" / "iggy"), "--tcp-server-address", tcp, "-u", "iggy", "-p", "iggy"]
        subprocess.run([*cli, "stream", "create", "from-wheel"], check=True, capture_output=True, timeout=60)
        listed = json.loads(subprocess.check_output([*cli, "--json", "stream", "list"], text=True, timeout=60))
        assert [s["name"] for s in listed] == ["from-wheel"]
        assert asyncio.run(_sdk(tcp)) == ["from-wheel"]

        from iggy.engine.uring.engine import probe

        if probe() is None:  # io_uring usable here: the static liburing works
            assert "(uring engine" in log_path.read_text(), log_path.read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    assert code == 0, log_path.read_text()
