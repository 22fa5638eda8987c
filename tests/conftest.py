"""Shared fixtures: a real `iggy-server` process on free loopback ports, and clients for it.

`server` starts `python -m iggy --with-default-root-credentials` with a temporary data
directory (root is iggy/iggy) and stops it after the test; `ServerProcess.restart()`,
`.kill()` (SIGKILL) and `.stop()` let tests exercise recovery. `client` is the official SDK
connected and logged in as root. `raw` is a `RawClient` speaking frames over a plain socket.
"""

from __future__ import annotations

import asyncio
import datetime
import os
import re
import socket
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

import pytest

from iggy.control.permissions import GLOBAL_FLAGS, STREAM_FLAGS, TOPIC_FLAGS
from iggy.testing.server import IggyTestServer

ROOT_USER = "iggy"
ROOT_PASSWORD = "iggy"
REPO = Path(__file__).resolve().parent.parent
MiB = 1024 * 1024


def free_port(kind=socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess(IggyTestServer):
    """One server process (iggy.testing.server.IggyTestServer) on ports chosen up front, so a
    test knows them before the start; restartable on the same data directory and ports.

    `extra_env` is applied over the fixture's environment; a value of None drops the variable.
    IGGY_TEST_ENGINE picks the network engine: the protocol suite runs against each.
    """

    def __init__(self, data_dir: Path, extra_env: dict | None = None, args: tuple = ()):
        self.tcp_port = free_port()
        self.http_port = free_port()
        self.quic_port = free_port(socket.SOCK_DGRAM)
        self.ws_port = free_port()
        env = {
            "IGGY_TCP_ADDRESS": f"127.0.0.1:{self.tcp_port}",
            "IGGY_HTTP_ADDRESS": f"127.0.0.1:{self.http_port}",
            "IGGY_QUIC_ADDRESS": f"127.0.0.1:{self.quic_port}",
            "IGGY_WEBSOCKET_ADDRESS": f"127.0.0.1:{self.ws_port}",
            "IGGY_SYSTEM_ENGINE": os.environ.get("IGGY_TEST_ENGINE", "auto"),
            **(extra_env or {}),
        }
        super().__init__(data_dir, username=ROOT_USER, password=ROOT_PASSWORD, env=env, args=args, startup_timeout=20.0)
        self.log_path = self.data_dir.parent / f"server-{self.tcp_port}.log"

    @property
    def tcp_address(self) -> str:
        return f"127.0.0.1:{self.tcp_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, timeout: float | None = None) -> ServerProcess:
        if timeout is not None:
            self.startup_timeout = timeout
        return super().start()

    def stop(self, timeout: float = 15.0) -> int:
        """Graceful stop (SIGTERM); returns the exit code (0 when it was not running)."""
        code = super().stop(timeout)
        return 0 if code is None else code

    def wait_log(self, text: str, timeout: float = 10.0) -> bool:
        """True as soon as the server's log holds `text`; False after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log():
                return True
            time.sleep(0.05)
        return False

    def restart(self, graceful: bool = True) -> ServerProcess:
        if graceful:
            self.stop()
        else:
            self.kill()
        return self.start()


@pytest.fixture
def server(tmp_path):
    srv = ServerProcess(tmp_path / "data").start()
    yield srv
    srv.stop()


@pytest.fixture
def make_server(tmp_path):
    """`make_server(**env)` starts one more server (a data directory of its own) with these
    environment variables; every server it started is stopped after the test."""
    started = []

    def make(**env):
        srv = ServerProcess(tmp_path / f"data{len(started)}", extra_env=env).start()
        started.append(srv)
        return srv

    yield make
    for srv in started:
        srv.stop()


def server_with_env(**env: str):
    """A fixture like `server`, started with these environment variables (IGGY_* settings):
    `small_cache = server_with_env(IGGY_LIMITS_MAX_OPEN_OFFSET_FILES="8")` in a test module."""

    @pytest.fixture
    def fixture(tmp_path):
        srv = ServerProcess(tmp_path / "data", extra_env=env).start()
        yield srv
        srv.stop()

    return fixture


async def connect_root(address: str):
    from apache_iggy import IggyClient

    client = IggyClient(address)
    await client.connect()
    await client.login_user(ROOT_USER, ROOT_PASSWORD)
    return client


@pytest.fixture
async def client(server):
    return await connect_root(server.tcp_address)


@pytest.fixture(scope="module")
def srv(tmp_path_factory, request):
    """One server shared by the tests of a module (they use unique names: see `uniq`), started
    with the module's `SERVER_ENV` (IGGY_* settings) if it has one."""
    name = request.module.__name__.rsplit(".", 1)[-1]
    env = getattr(request.module, "SERVER_ENV", {})
    server = ServerProcess(tmp_path_factory.mktemp(name) / "data", extra_env=env).start()
    yield server
    server.stop()


@pytest.fixture
async def root(srv):
    """The official SDK logged in as root on the module's shared server."""
    return await connect_root(srv.tcp_address)


async def login_as(srv, username: str, password: str):
    from apache_iggy import IggyClient

    c = IggyClient(srv.tcp_address)
    await c.connect()
    await c.login_user(username, password)
    return c


async def sdk_poll(
    client,
    stream,
    topic,
    strategy,
    *,
    consumer: int = 1,
    count: int = 10,
    auto_commit: bool = False,
    partition: int = 0,
):
    """One poll of a partition through the official SDK, as single consumer `consumer`."""
    from apache_iggy import Consumer

    return await client.poll_messages(
        stream,
        topic,
        consumer=Consumer.Single(consumer),
        polling_strategy=strategy,
        count=count,
        auto_commit=auto_commit,
        partition_id=partition,
    )


async def make_topic(client, partitions: int = 1, *, stream: str, topic: str, **options):
    """The topic through the SDK, and its stream first unless it exists."""
    if await client.get_stream(stream) is None:
        await client.create_stream(stream)
    await client.create_topic(stream, topic, partitions, **options)


def every_topic_option() -> dict:
    """`create_topic` keywords that set every topic option, none to the server's default: gzip,
    expiry 60 s, at most 100 MiB, segments of 2 MiB, persisted messages and replicated offsets,
    saved every 100 messages or 4096 bytes, no preallocated segments."""
    from apache_iggy import Durability, IggyExpiry, MaxTopicSize

    return {
        "compression_algorithm": "gzip",
        "message_expiry": IggyExpiry.ExpireDuration(datetime.timedelta(seconds=60)),
        "max_topic_size": MaxTopicSize.Custom(100 * MiB),
        "segment_size": 2 * MiB,
        "durability": Durability.PERSISTED,
        "consumer_offset_durability": Durability.REPLICATED,
        "messages_required_to_save": 100,
        "size_of_messages_required_to_save": 4096,
        "preallocate_segments": False,
    }


def next_consumer(client, group: str, stream, topic, *, batch_length: int, poll_ms: int, auto_commit):
    """The SDK's consumer of `group` polling `next`: `batch_length` messages every `poll_ms`
    milliseconds, committing as `auto_commit` says (awaitable, as `consumer_group`)."""
    from apache_iggy import PollingStrategy

    return client.consumer_group(
        group,
        stream,
        topic,
        polling_strategy=PollingStrategy.Next(),
        batch_length=batch_length,
        poll_interval=datetime.timedelta(milliseconds=poll_ms),
        auto_commit=auto_commit,
    )


class GroupDelivery:
    """What each member of a consumer group receives through its SDK consumer, as
    (partition, offset, payload), until the members together have `total` messages."""

    def __init__(self, total: int):
        self.total = total
        self.got: dict[str, list[tuple[int, int, bytes]]] = {}
        self.done = asyncio.Event()
        self.tasks: list[asyncio.Future] = []

    def start(self, name: str, consumer) -> None:
        self.got[name] = []
        self.tasks.append(asyncio.ensure_future(self._run(name, consumer)))

    async def _run(self, name: str, consumer) -> None:
        async for m in consumer.iter_messages():
            self.got[name].append((m.partition_id(), m.offset(), m.payload()))
            if sum(len(v) for v in self.got.values()) >= self.total:
                self.done.set()
            if self.done.is_set():
                return

    async def wait(self, timeout: float) -> dict[str, list[tuple[int, int, bytes]]]:
        """Until all have arrived and a moment more (would a duplicate still arrive?); then every
        member stops. What each member received."""
        try:
            await asyncio.wait_for(self.done.wait(), timeout)
            await asyncio.sleep(0.3)
        finally:
            self.stop()
        return self.got

    def stop(self) -> None:
        for task in self.tasks:
            task.cancel()


def write_config(directory: Path, text: str) -> str:
    """`text` as `directory`/config.toml; its path, for load_config or --config."""
    path = directory / "config.toml"
    path.write_text(text)
    return str(path)


def permissions_body(
    global_on: Iterable[str] = (),
    streams: dict[int, tuple[Iterable[str], dict[int, Iterable[str]] | None]] | None = None,
) -> dict:
    """A permissions object of the REST API (as GET /users/{id} answers it): the flags named
    are true, every other flag false. `streams` maps a stream id to (its flags that are on,
    {topic id: that topic's flags that are on} or None for no topic entries)."""

    def flags(names: tuple[str, ...], on: Iterable[str]) -> dict[str, bool]:
        wanted = set(on)
        return {name: name in wanted for name in names}

    return {
        "global": flags(GLOBAL_FLAGS, global_on),
        "streams": {
            str(sid): {
                **flags(STREAM_FLAGS, on),
                "topics": None if topics is None else {str(tid): flags(TOPIC_FLAGS, t) for tid, t in topics.items()},
            }
            for sid, (on, topics) in streams.items()
        }
        if streams
        else None,
    }


class InProcessPlane:
    """A ControlPlane on a scratch data directory, no server process: requests go in as frames
    through `ControlPlane.handle`; `root` is a session logged in as the root user."""

    def __init__(self, path: str, **env: str):
        import asyncio

        from iggy.config import load_config
        from iggy.control import permissions as perm
        from iggy.control.plane import ControlPlane
        from iggy.metadata.store import MetadataStore
        from iggy.storage.partitions import Storage

        cfg = load_config(env={"IGGY_SYSTEM_PATH": path, **env})
        self.meta = MetadataStore(path, 1000)
        self.meta.open()
        self.storage = Storage(path)
        self.storage.open_all(self.meta.state)
        self.plane = ControlPlane(cfg, self.meta, self.storage)
        self.loop = asyncio.new_event_loop()
        self.request = 0
        self.password_hash = None
        self.root = self.plane.open_session("test-root", 1)
        self.plane.bind_login(self.root, self.make_user(ROOT_USER, perm.all_permissions()), 1)

    def make_user(self, name: str, perms):
        """A user with this name and permissions (all with one password, hashed once)."""
        from iggy.control.users import STATUS_ACTIVE, create_user_record, hash_password

        if self.password_hash is None:
            self.password_hash = hash_password(ROOT_PASSWORD)
        create_user_record(self.plane, name, self.password_hash, STATUS_ACTIVE, perms)
        return self.meta.state.user_by_name(name)

    def handle(self, session, op: int, code: int, body: bytes) -> bytes:
        """One request frame in; the whole reply frame."""
        import inspect

        from iggy.protocol import codes
        from iggy.protocol.wire import build_request, parse_header

        self.request += 1
        frame = build_request(
            op,
            code,
            body,
            session=session.session,
            request=self.request,
            client=5,
            with_checksum=op in codes.CHECKSUMMED_OPS,
        )
        reply = self.plane.handle(session, parse_header(frame[:256]), body)
        if inspect.isawaitable(reply):
            reply = self.loop.run_until_complete(reply)
        if isinstance(reply, list):
            reply = b"".join(bytes(p) for p in reply)
        return reply

    def close(self) -> None:
        self.storage.close()
        self.meta.close()
        self.plane.close()
        self.loop.close()


def uniq(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def sdk_error(message: str):
    """The SDK raises RuntimeError with the text of the code (TCP.md 4.2)."""
    return pytest.raises(RuntimeError, match=f"^{re.escape(message)}$")


@pytest.fixture
def raw_root(srv):
    """A RawClient logged in as root on the module's shared server."""
    from tests.rawclient import RawClient

    c = RawClient(srv.tcp_address)
    assert c.login().status == 0
    yield c
    c.close()


@pytest.fixture
def raw(server):
    from tests.rawclient import RawClient

    c = RawClient(server.tcp_address)
    yield c
    c.close()


def pytest_configure(config):
    config.addinivalue_line("markers", "engine: talks to a real server process (run on each network engine)")


def pytest_collection_modifyitems(config, items):
    """Mark every test that starts or uses a server, so scripts/test.sh can rerun them on the
    other engine (`-m engine` with IGGY_TEST_ENGINE=asyncio)."""
    uses_process = {}
    for item in items:
        module = item.module
        if module not in uses_process:
            try:
                text = Path(module.__file__).read_text()
                uses_process[module] = "ServerProcess(" in text or "server_with_env(" in text
            except OSError:
                uses_process[module] = False
        if uses_process[module] or {"server", "srv", "make_server"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.engine)
