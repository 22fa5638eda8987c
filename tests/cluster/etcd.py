"""A real etcd (Debian's `etcd-server`, v3 API) in a child process on free loopback ports, for
the cluster tests. Its data directory is a temp dir of the test; `stop()` / `start()` keep the
data and the ports (etcd unavailable, then back), `pause()` / `resume()` freeze it with
SIGSTOP / SIGCONT (calls hang instead of failing fast).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

ETCD = shutil.which("etcd") or ("/usr/bin/etcd" if os.path.exists("/usr/bin/etcd") else None)
MISSING = "etcd is not installed (scripts/setup.sh --test installs Debian's etcd-server)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PortTaken(RuntimeError):
    """etcd could not bind a port picked as free: another process took it meanwhile."""


class EtcdServer:
    def __init__(self, workdir: Path, host: str = "127.0.0.1"):
        """`host`: the address etcd listens on (the fault harness puts it on a bridge)."""
        self.workdir = Path(workdir)
        self.host = host
        self.data_dir = self.workdir / "etcd-data"
        self.client_port = free_port()
        self.peer_port = free_port()
        self.log_path = self.workdir / "etcd.log"
        self.proc: subprocess.Popen | None = None
        self.ever_started = False

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.client_port}"

    def start(self, timeout: float = 30.0) -> EtcdServer:
        """Start etcd; at its first start, again on new ports when another process took one of
        the free ports picked (a restart keeps its ports: the nodes know the URL)."""
        for attempt in range(3):
            try:
                return self._start(timeout)
            except PortTaken:
                if self.ever_started or attempt == 2:
                    raise
                self.client_port, self.peer_port = free_port(), free_port()
                self.log_path.unlink(missing_ok=True)
        raise AssertionError("unreachable")

    def _start(self, timeout: float) -> EtcdServer:
        assert ETCD is not None, MISSING
        self.workdir.mkdir(parents=True, exist_ok=True)
        peer = f"http://{self.host}:{self.peer_port}"
        args = [
            ETCD,
            "--name",
            "t",
            "--data-dir",
            str(self.data_dir),
            "--listen-client-urls",
            self.url,
            "--advertise-client-urls",
            self.url,
            "--listen-peer-urls",
            peer,
            "--initial-advertise-peer-urls",
            peer,
            "--initial-cluster",
            f"t={peer}",
            "--log-level",
            "warn",
            "--logger",
            "zap",
        ]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                text = self.log()
                error = PortTaken if "address already in use" in text else RuntimeError
                raise error(f"etcd exited with {self.proc.returncode}:\n{text}")
            if self.healthy():
                self.ever_started = True
                return self
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"etcd did not start within {timeout} s:\n{self.log()}")

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=1) as r:
                return b'"health":"true"' in r.read()
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def pause(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""
