"""The Docker deliverables, checked without a Docker engine.

- docker/docker-compose.yml parses and says what the README says (service, volume, mount,
  ports, credentials from the environment, seccomp profile, memlock).
- docker/seccomp-iggy.json is a well-formed moby profile that allows io_uring, and it is what
  docker/gen_seccomp.py writes.
- docker/Dockerfile: stages, packages, static liburing, no liburing2 at run time, ports,
  volume; and its entrypoint runs as a plain process with the image's ENV (data directory
  moved to a temporary one, 0.0.0.0 listeners moved to free loopback ports) and the
  compose file's environment, and serves the official SDK, the healthcheck and a restart
  on the same "volume".
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO, sdk_poll

yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read the compose file")

DOCKER = REPO / "docker"
COMPOSE = DOCKER / "docker-compose.yml"
DOCKERFILE = DOCKER / "Dockerfile"
SECCOMP = DOCKER / "seccomp-iggy.json"
README = REPO / "README.md"
IO_URING = ("io_uring_setup", "io_uring_enter", "io_uring_register")
PORTS = {
    "8090/tcp": "IGGY_TCP_ADDRESS",
    "3000/tcp": "IGGY_HTTP_ADDRESS",
    "8080/udp": "IGGY_QUIC_ADDRESS",
    "8092/tcp": "IGGY_WEBSOCKET_ADDRESS",
}


# --------------------------------------------------------------------------- Dockerfile parsing


def dockerfile_stages(path: Path = DOCKERFILE) -> list:
    """[{"from": image, "name": alias, "instructions": [(INSTR, args)]}], ARGs before FROM resolved."""
    text = re.sub(r"\\\n", " ", path.read_text())
    global_args, stages = {}, []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        instr, _, rest = line.partition(" ")
        instr, rest = instr.upper(), rest.strip()
        if instr == "ARG" and not stages:
            key, _, value = rest.partition("=")
            global_args[key] = value
        elif instr == "FROM":
            image = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: global_args[m.group(1) or m.group(2)], rest.split()[0])
            words = rest.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append({"from": image, "name": name, "instructions": []})
        else:
            stages[-1]["instructions"].append((instr, rest))
    return stages


def stage_env(stage) -> dict:
    env = {}
    for instr, rest in stage["instructions"]:
        if instr != "ENV":
            continue
        words = shlex.split(rest)
        if "=" in words[0]:
            env.update(w.split("=", 1) for w in words)
        else:
            env[words[0]] = " ".join(words[1:])
    return env


def stage_value(stage, name):
    values = [rest for instr, rest in stage["instructions"] if instr == name]
    return values[-1] if values else None


def exec_form(text: str) -> list:
    return json.loads(text) if text.startswith("[") else shlex.split(text)


def console_script(name: str) -> str:
    """`pkg.module:function` of a console script in pyproject.toml."""
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert name in scripts, f"{name} is not a console script of the package"
    return scripts[name]


def script_argv(name: str) -> list:
    """How to run console script `name` from this checkout without installing it."""
    module, func = console_script(name).split(":")
    return [sys.executable, "-c", f"import sys; from {module} import {func}; sys.exit({func}())"]


def compose_env(service: dict, environ: dict) -> dict:
    """The service's `environment:` with `${VAR:-default}` / `${VAR}` interpolated from `environ`."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)

    def interpolate(value: str) -> str:
        def one(m):
            name, default = m.group(1), m.group(3)
            got = environ.get(name)
            if m.group(2) == ":-":
                return got if got else (default or "")
            return got if got is not None else (default or "")

        return re.sub(r"\$\{(\w+)(:?-)?([^}]*)\}", one, str(value))

    return {k: interpolate(v) for k, v in env.items()}


# --------------------------------------------------------------------------- compose file


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_runs_the_server_with_volume_ports_credentials_and_seccomp(compose):
    service = compose["services"]["iggy"]
    build = service["build"]
    assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE.resolve()

    # the named volume iggy-data, mounted at /iggy/data (the image's IGGY_SYSTEM_PATH)
    assert "iggy-data" in compose["volumes"]
    assert "iggy-data:/iggy/data" in service["volumes"]

    # 8090, 3000, 8080/udp and 8092 published on host ports named by variables, by default the same
    published = set()
    for spec in service["ports"]:
        mapping, _, proto = str(spec).partition("/")
        host, container = mapping.rsplit(":", 1)
        m = re.fullmatch(r"\$\{(IGGY_\w+_PORT):-(\d+)\}", host)
        assert m and m.group(2) == container, spec
        published.add(f"{container}/{proto or 'tcp'}")
    assert published == set(PORTS)

    # root credentials taken from the environment, with defaults
    env = service["environment"]
    for name in ("IGGY_ROOT_USERNAME", "IGGY_ROOT_PASSWORD"):
        assert re.fullmatch(rf"\$\{{{name}(:-[^}}]*)?\}}", env[name]), env[name]
    assert compose_env(service, {}) == {"IGGY_ROOT_USERNAME": "iggy", "IGGY_ROOT_PASSWORD": "iggy"}
    assert compose_env(service, {"IGGY_ROOT_PASSWORD": "s3cret"})["IGGY_ROOT_PASSWORD"] == "s3cret"

    # Docker's default seccomp profile plus io_uring (not unconfined); no memlock limit, which
    # fails wherever the engine cannot raise the hard limit (rootless, nested VMs)
    assert service["security_opt"] == ["seccomp=./seccomp-iggy.json"]
    assert (COMPOSE.parent / "seccomp-iggy.json").resolve() == SECCOMP.resolve()
    assert "ulimits" not in service


def test_compose_file_works_with_compose_v1():
    """Debian's docker-compose 1.29 refuses a top-level `name:`; the project name comes from docker/.env."""
    compose = yaml.safe_load(COMPOSE.read_text())
    assert set(compose) <= {"version", "services", "volumes"}
    env = dict(
        line.split("=", 1) for line in (DOCKER / ".env").read_text().splitlines() if line and not line.startswith("#")
    )
    assert env == {"COMPOSE_PROJECT_NAME": "iggy"}


def test_readme_describes_the_compose_setup(compose):
    text = README.read_text()
    section = re.search(r"\n## Docker\n(.*?)(?=\n## )", text, re.S)
    assert section, "README has no '## Docker' section"
    section = section.group(1)
    assert "cd docker && IGGY_ROOT_PASSWORD=change-me docker compose up" in section
    assert "docker build -f docker/Dockerfile" in section
    assert "scripts/docker-check.sh" in section
    for word in (
        "iggy-data",
        "/iggy/data",
        "IGGY_ROOT_USERNAME",
        "IGGY_ROOT_PASSWORD",
        "seccomp-iggy.json",
        "io_uring_setup",
        "8090",
        "3000",
        "8080/udp",
        "8092",
        "memlock",
        "IGGY_TCP_PORT",
        "docker-compose",
        "constraints.txt",
    ):
        assert word in section, word


# --------------------------------------------------------------------------- seccomp profile


def test_seccomp_profile_is_a_moby_profile_allowing_io_uring():
    profile = json.loads(SECCOMP.read_text())
    assert profile["defaultAction"] == "SCMP_ACT_ERRNO"
    arches = {entry["architecture"] for entry in profile["archMap"]}
    assert {"SCMP_ARCH_X86_64", "SCMP_ARCH_AARCH64"} <= arches
    actions = {
        "SCMP_ACT_ALLOW",
        "SCMP_ACT_ERRNO",
        "SCMP_ACT_KILL",
        "SCMP_ACT_TRAP",
        "SCMP_ACT_TRACE",
        "SCMP_ACT_LOG",
        "SCMP_ACT_KILL_PROCESS",
        "SCMP_ACT_KILL_THREAD",
        "SCMP_ACT_NOTIFY",
    }
    ops = {
        "SCMP_CMP_NE",
        "SCMP_CMP_LT",
        "SCMP_CMP_LE",
        "SCMP_CMP_EQ",
        "SCMP_CMP_GE",
        "SCMP_CMP_GT",
        "SCMP_CMP_MASKED_EQ",
    }
    unconditional = set()
    for rule in profile["syscalls"]:
        assert set(rule) <= {"names", "action", "args", "includes", "excludes", "errnoRet", "comment"}, rule
        assert rule["names"] and all(isinstance(n, str) and n for n in rule["names"])
        assert rule["action"] in actions
        for arg in rule.get("args") or []:
            assert set(arg) <= {"index", "value", "valueTwo", "op"} and arg["op"] in ops
            assert 0 <= arg["index"] <= 5
        for key in ("includes", "excludes"):
            assert set(rule.get(key) or {}) <= {"caps", "arches", "minKernel"}
        if rule["action"] == "SCMP_ACT_ALLOW" and not (
            rule.get("args") or rule.get("includes") or rule.get("excludes")
        ):
            unconditional.update(rule["names"])
    assert set(IO_URING) <= unconditional
    # what a Python server needs is still there (the rest of the default profile is kept)
    for name in (
        "read",
        "write",
        "openat",
        "mmap",
        "futex",
        "epoll_wait",
        "epoll_ctl",
        "accept4",
        "sendto",
        "recvfrom",
        "fsync",
        "fdatasync",
        "pwrite64",
        "rt_sigaction",
        "exit_group",
    ):
        assert name in unconditional, name
    # and nothing privileged was opened up
    for name in ("mount", "reboot", "kexec_load", "init_module", "bpf", "unshare"):
        assert name not in unconditional, name


def test_seccomp_profile_is_generated_from_its_description():
    proc = subprocess.run(
        [sys.executable, str(DOCKER / "gen_seccomp.py"), "--check"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr


# --------------------------------------------------------------------------- Dockerfile


def test_dockerfile_stages():
    stages = dockerfile_stages()
    assert len(stages) == 2
    builder, runtime = stages
    for stage in stages:
        assert stage["from"] == "python:3.11-slim-bookworm"
    assert builder["name"] == "builder"

    build_runs = " ".join(rest for instr, rest in builder["instructions"] if instr == "RUN")
    for package in ("gcc", "libc6-dev", "pkg-config", "liburing-dev", "libxxhash-dev"):
        assert re.search(rf"apt-get install .*\b{re.escape(package)}\b", build_runs), package
    assert stage_env(builder)["IGGY_URING_STATIC"] == "1"
    assert "pip wheel" in build_runs and "ldd" in build_runs

    # the runtime dependencies are installed pinned, into a virtualenv that the runtime stage copies
    assert re.search(r"pip install .*-c constraints\.txt", build_runs)
    runtime_runs = " ".join(rest for instr, rest in runtime["instructions"] if instr == "RUN")
    assert "apt-get" not in runtime_runs and "liburing" not in runtime_runs  # static: nothing to install
    assert "pip" not in runtime_runs  # the wheel never lands in a runtime layer
    copies = [rest for instr, rest in runtime["instructions"] if instr == "COPY"]
    assert copies == ["--from=builder /opt/iggy /opt/iggy"]
    assert stage_env(runtime)["PATH"].startswith("/opt/iggy/bin:")
    # an unprivileged user that owns the data directory
    assert stage_value(runtime, "USER") == "iggy"
    assert re.search(r"useradd .*\biggy\b", runtime_runs) and "chown -R iggy:iggy /iggy" in runtime_runs

    env = stage_env(runtime)
    assert env["IGGY_SYSTEM_PATH"] == "/iggy/data"
    assert stage_value(runtime, "VOLUME") == "/iggy/data"
    exposed = set(stage_value(runtime, "EXPOSE").split())
    assert exposed == set(PORTS)
    for port, name in PORTS.items():  # every listener on 0.0.0.0 at its exposed port
        assert env[name] == f"0.0.0.0:{port.split('/')[0]}"
    assert exec_form(stage_value(runtime, "ENTRYPOINT")) == ["iggy-server"]
    console_script("iggy-server")
    healthcheck = stage_value(runtime, "HEALTHCHECK")
    assert exec_form(healthcheck.split(" CMD ", 1)[1]) == ["iggy", "ping"]
    console_script("iggy")


def test_dockerignore_keeps_build_leftovers_out():
    """At the context root, so the classic builder (docker-compose v1) reads it as well as BuildKit."""
    ignore = (REPO / ".dockerignore").read_text().split()
    assert "*" in ignore and "!iggy/" in ignore and "**/*.so" in ignore and "!docker/constraints.txt" in ignore
    assert not (DOCKER / "Dockerfile.dockerignore").exists()  # BuildKit would prefer it over the root one


def test_constraints_pin_every_runtime_dependency():
    pins = {}
    for line in (DOCKER / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"not pinned: {line}"
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in deps:
        name = re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9_.-]+", dep).group(0)).lower()
        assert name in pins, f"{name} is a runtime dependency but not pinned in docker/constraints.txt"


def _free_port(kind) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ImageProcess:
    """The image's entrypoint as a local process: its ENV and the compose environment."""

    def __init__(self, volume: Path, compose: dict):
        runtime = dockerfile_stages()[-1]
        self.volume = volume
        self.host_ports = {}
        env = {k: v for k, v in os.environ.items() if not k.startswith("IGGY_")}
        env["PYTHONPATH"] = str(REPO)
        for name, value in stage_env(runtime).items():
            value = value.replace("/iggy/data", str(volume)).replace("$PATH", os.environ.get("PATH", ""))
            m = re.fullmatch(r"0\.0\.0\.0:(\d+)", value)
            if m:
                proto = "udp" if f"{m.group(1)}/udp" in PORTS else "tcp"
                host = _free_port(socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM)
                self.host_ports[f"{m.group(1)}/{proto}"] = host
                value = f"127.0.0.1:{host}"
            env[name] = value
        env.update(compose_env(compose["services"]["iggy"], {}))
        self.env = env
        entry = exec_form(stage_value(runtime, "ENTRYPOINT")) + exec_form(stage_value(runtime, "CMD") or "[]")
        self.argv = script_argv(entry[0]) + entry[1:]
        self.workdir = volume.parent / "workdir"  # the image's WORKDIR: no .env there
        self.workdir.mkdir(exist_ok=True)
        self.proc = None

    @property
    def tcp(self) -> str:
        return f"127.0.0.1:{self.host_ports['8090/tcp']}"

    def start(self, timeout: float = 30.0) -> None:
        runtime_file = self.volume / "runtime" / "current_config.toml"
        if runtime_file.exists():
            runtime_file.unlink()
        with open(self.volume.parent / "server.log", "ab") as log:  # the child keeps its own copy
            self.proc = subprocess.Popen(
                self.argv, env=self.env, cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log_text()
            if runtime_file.exists():
                try:
                    socket.create_connection(("127.0.0.1", self.host_ports["8090/tcp"]), timeout=1).close()
                    return
                except OSError:
                    pass
            time.sleep(0.05)
        raise AssertionError(f"the entrypoint did not start:\n{self.log_text()}")

    def stop(self, timeout: float = 30.0) -> int:
        """`docker stop`: SIGTERM, then SIGKILL after the grace period."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        return code

    def log_text(self) -> str:
        return (self.volume.parent / "server.log").read_text(errors="replace")


async def _sdk_roundtrip(address: str, username: str, password: str, create: bool) -> list:
    from apache_iggy import IggyClient, PollingStrategy, SendMessage

    client = IggyClient(address)
    await client.connect()
    await client.login_user(username, password)
    if create:
        await client.create_stream("docker")
        await client.create_topic("docker", "events", partitions_count=1)
        await client.send_messages("docker", "events", 0, [SendMessage("from-the-image")])
    polled = await sdk_poll(client, "docker", "events", PollingStrategy.First())
    return [m.payload() for m in polled]


def test_image_entrypoint_serves_the_sdk_and_keeps_data_on_the_volume(tmp_path, compose):
    image = ImageProcess(tmp_path / "volume", compose)
    assert set(image.host_ports) == set(PORTS)
    image.start()
    try:
        # the compose file's default credentials are the root user's
        assert asyncio.run(_sdk_roundtrip(image.tcp, "iggy", "iggy", create=True)) == [b"from-the-image"]
        with urllib.request.urlopen(f"http://127.0.0.1:{image.host_ports['3000/tcp']}/ping", timeout=10) as r:
            assert r.status == 200
        socket.create_connection(("127.0.0.1", image.host_ports["8092/tcp"]), timeout=5).close()
        runtime = tomllib.loads((image.volume / "runtime" / "current_config.toml").read_text())
        assert runtime["quic"]["address"] == f"127.0.0.1:{image.host_ports['8080/udp']}"

        # the HEALTHCHECK command (`iggy ping`; in the image it dials the default 127.0.0.1:8090)
        from iggy.admin.cli import DEFAULT_TCP_ADDRESS

        assert DEFAULT_TCP_ADDRESS.endswith(":8090")
        health = exec_form(stage_value(dockerfile_stages()[-1], "HEALTHCHECK").split(" CMD ", 1)[1])
        probe = subprocess.run(
            [*script_argv(health[0]), "--tcp-server-address", image.tcp, *health[1:]],
            env=image.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert probe.returncode == 0, probe.stderr
    finally:
        code = image.stop()
    assert code == 0, image.log_text()  # docker stop: a clean shutdown within the grace period

    # a new container on the same volume keeps the data (and ignores changed root credentials)
    image.env["IGGY_ROOT_PASSWORD"] = "changed-later"
    image.start()
    try:
        assert asyncio.run(_sdk_roundtrip(image.tcp, "iggy", "iggy", create=False)) == [b"from-the-image"]
    finally:
        assert image.stop() == 0
