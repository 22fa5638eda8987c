"""A real `iggy` server in a child process, for tests (used by the pytest plugin).

    with IggyTestServer(tmp_path / "data") as server:
        client = IggyClient(server.tcp_address)
        ...

Every listener binds port 0 on 127.0.0.1, so there is no port race; the bound addresses are
read back from `<data_dir>/runtime/current_config.toml`, which the server writes once every
listener is up. A restart keeps those ports. The child gets none of the caller's `IGGY_*`
variables (only the ones given in `env`), runs in the data directory's parent (so no `.env`
of the caller's project is read) and logs to `log_path`.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote

import iggy

LISTENERS = ("tcp", "http", "quic", "websocket")


def terminate(proc: subprocess.Popen[bytes], timeout: float) -> int:
    """SIGTERM (a clean shutdown), SIGKILL when `proc` is still running after `timeout` seconds;
    its exit code. Also used by perf/bench_throughput.py for the servers it starts."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


class IggyServerError(RuntimeError):
    """The server did not start (the message ends with its log)."""


class IggyTestServer:
    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        username: str = "iggy",
        password: str = "iggy",
        env: Mapping[str, object] | None = None,
        args: Iterable[str] = (),
        python: str | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.username = username
        self.password = password
        self.extra_env = dict(env or {})
        self.args = tuple(args)
        self.python = python or sys.executable
        self.startup_timeout = startup_timeout
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}-server.log"
        self.addresses: dict[str, str] = {}
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: BinaryIO | None = None

    # ----------------------------------------------------------------- addresses

    @property
    def tcp_address(self) -> str | None:
        """`127.0.0.1:PORT` for `IggyClient(...)` / `TcpConfig` (None when TCP is disabled)."""
        return self.addresses.get("tcp")

    @property
    def http_url(self) -> str | None:
        """`http://127.0.0.1:PORT` of the HTTP API (None when it is disabled)."""
        http = self.addresses.get("http")
        return f"http://{http}" if http else None

    @property
    def quic_address(self) -> str | None:
        return self.addresses.get("quic")

    @property
    def websocket_url(self) -> str | None:
        ws = self.addresses.get("websocket")
        return f"ws://{ws}" if ws else None

    @property
    def connection_string(self) -> str:
        """`iggy://user:password@host:port` for `IggyClient.from_connection_string` (logs in by itself)."""
        return f"iggy://{quote(self.username, safe='')}:{quote(self.password, safe='')}@{self.tcp_address}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    # ----------------------------------------------------------------- process

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("IGGY_")}
        # the child imports the same `iggy` as this process: a checkout that is not installed
        # goes on PYTHONPATH (an installed one is found anyway)
        source_root = str(Path(iggy.__file__).resolve().parent.parent)
        paths = sysconfig.get_paths()
        installed = {str(Path(paths[key]).resolve()) for key in ("purelib", "platlib")}
        if source_root not in installed:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, (source_root, env.get("PYTHONPATH"))))
        env.update(
            {
                "IGGY_SYSTEM_PATH": str(self.data_dir),
                "IGGY_ROOT_USERNAME": self.username,
                "IGGY_ROOT_PASSWORD": self.password,
            }
        )
        for name in LISTENERS:
            env[f"IGGY_{name.upper()}_ADDRESS"] = self.addresses.get(name, "127.0.0.1:0")
        for key, value in self.extra_env.items():  # None removes a variable
            if value is None:
                env.pop(key, None)
            else:
                env[key] = str(value)
        return env

    def start(self) -> IggyTestServer:
        if self.alive():
            return self
        self.data_dir.mkdir(parents=True, exist_ok=True)
        runtime = self.data_dir / "runtime" / "current_config.toml"
        if runtime.exists():
            runtime.unlink()
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - the server writes to it until stop() closes it
        self.proc = subprocess.Popen(
            [self.python, "-m", "iggy", *self.args],
            env=self.env(),
            cwd=str(self.data_dir.parent),
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self._close()
                raise IggyServerError(f"iggy server exited with {code} at start:\n{self.log()}")
            if runtime.exists():
                self.addresses = _read_runtime(runtime)
                if self.addresses and ("tcp" not in self.addresses or _accepts(self.addresses["tcp"])):
                    return self
            time.sleep(0.05)
        self.kill()
        raise IggyServerError(f"iggy server did not start within {self.startup_timeout} s:\n{self.log()}")

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM (a clean shutdown), SIGKILL after `timeout`; returns the exit code."""
        if self.proc is None:
            return None
        code = terminate(self.proc, timeout)
        self._close()
        return code

    def kill(self) -> None:
        """SIGKILL: a crash, nothing flushed."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._close()

    def restart(self) -> IggyTestServer:
        """Stop and start again on the same data directory and the same ports."""
        self.stop()
        return self.start()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def _close(self) -> None:
        self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> IggyTestServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"tcp={self.addresses.get('tcp')}" if self.alive() else "stopped"
        return f"<IggyTestServer {state} data_dir={self.data_dir}>"


def _read_runtime(path: Path) -> dict[str, str]:
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return {}
    return {
        name: section["address"] for name, section in data.items() if isinstance(section, dict) and "address" in section
    }


def _accepts(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=1):
            return True
    except OSError:
        return False
