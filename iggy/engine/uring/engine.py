"""The production engine: one io_uring shard thread per core (`iggy.engine.uring.shard`).

Each shard binds the TCP address with SO_REUSEPORT and runs its ring without the GIL.
Ordinary data-plane requests (ping, send messages, poll messages and store offset of a single
consumer, by a logged-in user allowed to) are served inside the shard in C without the GIL
(`iggy.engine.uring.dataplane`), against the routing table the control plane publishes
(`plane.routes`, `iggy.engine.uring.router`). For every other frame the shard calls `on_frame`
here, in the shard's thread, with the GIL:

* data-plane commands the C path left alone (consumer groups, errors of every kind) are
  handled right there by the same functions the portable engine uses
  (`iggy.control.messages`), which produce the exact reply or error. They run while the
  event loop deletes and creates streams, topics and partitions, so they take each object
  once and answer one that went away meanwhile with its not-found code (see that module). A partition is guarded
  by its own mutex (`iggy._core.mutex`), taken by C and Python alike, so shards and the
  control plane never interleave on one log;
* everything else is posted to the control plane on the main event loop, which is the only
  writer of metadata; its reply comes back with `Shard.post_reply`, together with the
  session's user so that the C path knows who is logged in on that connection.

Sessions: `on_open` makes the connection's Session on the shard thread and the shard keeps it
with the connection; registering it in `ControlPlane.sessions` (where
`limits.max_connections` is counted) and closing it are posted to the main loop, which alone
touches that table (ShardHandler). An exception in any callback closes that connection and
is logged once by the shard, naming it.

`persisted` topics: the C path appends, then the shard submits an fdatasync to its ring —
one per segment file for every batch appended to it in one loop turn (group commit) — and
answers when it completes, serving its other connections meanwhile; the Python fallback
path fsyncs in place before it answers.

Limits: a shard stops parsing and reading a connection whose unsent replies exceed
`limits.max_write_buffer`; with `limits.idle_timeout` set, a sweep on the main loop closes
connections that completed no request for that long (a log line each); malformed framing,
and a frame over `limits.max_unauthenticated_frame` before login, close the connection with a
log line (`on_bad_frame`). Big poll replies are built in buffers counted against
`limits.max_reply_buffers` for all shards together and unmapped once sent; a poll that would
go over it waits (iggy.engine.uring.shard).

Clients before 0.9 (the classic protocol) share the port: a shard looks at the first 8 bytes
of each connection and hands one that does not start like a 0.9 frame to the main loop
(`ShardHandler.on_foreign`), where the asyncio engine's Connection serves it.

`probe()` tells whether io_uring can be used here (Docker's default seccomp profile and
`kernel.io_uring_disabled` forbid it); `system.engine = "auto"` falls back to asyncio.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import threading
import time
from typing import TYPE_CHECKING

from iggy.control.plane import TRANSPORT_TCP, ConnectionLimit
from iggy.engine.base import Engine, inject_fault
from iggy.engine.uring.router import principal
from iggy.protocol import codes
from iggy.protocol.wire import RequestHeader, build_reply

if TYPE_CHECKING:
    from iggy.control.plane import ControlPlane, Session
    from iggy.engine.uring.shard import Shard

log = logging.getLogger(__name__)

# The one control-plane call a shard thread makes: `ControlPlane.handle_on_shard` for these commands
# (the data plane's, when the C path left them to Python). They read the metadata, the
# storage's partitions and the group membership, taking each object once, and write only
# under a partition's lock; everything else goes to the main loop (docs/ARCHITECTURE.md).
SHARD_THREAD_COMMANDS = frozenset({codes.PING, codes.POLL_MESSAGES, codes.SEND_MESSAGES, codes.STORE_CONSUMER_OFFSET})


def probe() -> str | None:
    """None when io_uring works here, else why not."""
    try:
        from iggy.engine.uring.shard import Shard
    except ImportError as exc:
        return f"the shard module is not built ({exc})"
    try:
        with open("/proc/sys/kernel/io_uring_disabled") as f:
            if f.read().strip() not in ("", "0"):
                return "kernel.io_uring_disabled is set"
    except OSError:
        pass
    sock = socket.socket()
    try:
        Shard(sock, None, 4096, max_connections=1, ring_entries=4)  # type: ignore[arg-type]  # a probe: no callback runs
    except OSError as exc:
        return _setup_failure(exc)
    finally:
        sock.close()
    return None


# What each io_uring_setup(2) errno means on a machine where the kernel has io_uring, and the
# change that lets the uring engine run. EPERM is what a seccomp filter answers (Docker's default
# profile blocks io_uring since Docker 25), ENOSYS a kernel built without it or an older filter,
# ENOMEM the RLIMIT_MEMLOCK charge that kernels before 5.12 make for the rings.
_SETUP_HINTS = {
    errno.EPERM: "blocked by a seccomp profile or kernel.io_uring_disabled; in Docker run with "
    "--security-opt seccomp=docker/seccomp-iggy.json (the default profile plus io_uring)",
    errno.ENOSYS: "the kernel or a seccomp filter does not provide io_uring; in Docker use "
    "docker/seccomp-iggy.json, otherwise a kernel with CONFIG_IO_URING",
    errno.ENOMEM: "the ring could not be locked in memory (kernels before 5.12 charge RLIMIT_MEMLOCK); "
    "raise it, e.g. docker run --ulimit memlock=-1",
}


def _setup_failure(exc: OSError) -> str:
    """One line: the syscall, its errno by name and number, and what to change."""
    code = exc.errno
    name = errno.errorcode.get(code, "?") if code else "?"
    hint = _SETUP_HINTS.get(code or 0, "see the io_uring_setup(2) man page")
    return f"io_uring_setup failed with errno {code} {name} ({os.strerror(code) if code else exc}): {hint}"


def _peer_address(fd: int) -> str:
    try:
        peer = socket.socket(fileno=os.dup(fd))
        try:
            host, port = peer.getpeername()[:2]
        finally:
            peer.close()
        return f"{host}:{port}"
    except OSError:
        return "unknown"


class ShardHandler:
    """Callbacks of every shard (on the shard's thread): data plane in place, control plane posted.

    The session of a connection is made here (`ControlPlane.new_session`) and the shard's C
    connection keeps it, passing it to every later callback: there is no table of sessions
    on this side. It is registered in `ControlPlane.sessions` (and counted against
    `limits.max_connections`) on the main loop, and closed there, so the plane's sessions are
    only ever touched by the loop; the registration is posted before any control-plane command
    of the connection, and the close after them (call_soon_threadsafe keeps their order).
    """

    def __init__(self, plane: ControlPlane, loop: asyncio.AbstractEventLoop, max_frame_size: int = 0) -> None:
        self.plane = plane
        self.loop = loop
        self.max_frame_size = max_frame_size
        self._replies: set[asyncio.Future[None]] = set()  # the loop keeps only weak references

    def on_open(self, shard: Shard, token: int, fd: int) -> Session:
        session = self.plane.new_session(_peer_address(fd), TRANSPORT_TCP, close=lambda: shard.close_connection(token))
        session.activity = lambda: shard.last_active(token)
        session.inline_fsync = True  # its data-plane commands run here, on the shard thread
        self.loop.call_soon_threadsafe(self._register, shard, token, session)
        return session  # the C data plane checks group ownership by its client id

    def _register(self, shard: Shard, token: int, session: Session) -> None:
        """On the main loop: count the new connection, or close it over limits.max_connections."""
        try:
            self.plane.register_session(session)
        except ConnectionLimit:
            shard.close_connection(token)

    def on_foreign(self, shard: Shard, token: int, session: Session | None, fd: int, received: bytes) -> None:
        """The connection's first bytes are not a 0.9 header (the classic protocol of clients
        before 0.9, or garbage): the asyncio engine's Connection serves it on the main loop
        from a dup of its socket, starting with the bytes the shard read, under a session of
        its own; the shard then closes its slot (and `on_close` this session). So the shards'
        hot path only ever parses 0.9 frames."""
        from iggy.engine.asyncio_engine import adopt_classic

        sock = socket.socket(fileno=os.dup(fd))
        self.loop.call_soon_threadsafe(adopt_classic, self.plane, sock, received, self.max_frame_size)

    def on_bad_frame(self, shard: Shard, token: int, session: Session | None, reason: str) -> None:
        log.info("closing %s: %s", session.address if session is not None else "a connection", reason)

    def on_close(self, shard: Shard, token: int, session: Session | None) -> None:
        if session is not None:
            self.loop.call_soon_threadsafe(self.plane.close_session, session)

    def on_frame(
        self, shard: Shard, token: int, session: Session, header: bytes, body: bytes
    ) -> bytes | list[bytes] | None:
        h = RequestHeader(header)
        inject_fault(h)
        code = h.code if h.operation == codes.OP_READ else codes.OPERATION_CODES.get(h.operation)
        if code in SHARD_THREAD_COMMANDS and self.plane.cluster is None:
            # (in cluster mode sends and polls run on the main loop, with the log replication)
            reply: bytes | list[bytes] = self.plane.handle_on_shard(session, h, body)
            return reply
        self.loop.call_soon_threadsafe(self._control, shard, token, session, h, body)
        return None

    def _control(self, shard: Shard, token: int, session: Session, header: RequestHeader, body: bytes) -> None:
        """On the main loop: run a control-plane command and post its reply to the shard."""
        if session.client_id not in self.plane.sessions:
            return  # refused over limits.max_connections: its close is on the way
        try:
            reply = self.plane.handle(session, header, body)
        except Exception:  # broad on purpose: answered with the generic error, the connection lives on
            log.exception("control-plane request of %s failed", session.address)
            reply = build_reply(header, 1)
        if isinstance(reply, bytes):
            self._post(shard, token, session, reply)
            return

        async def finish() -> None:
            try:
                done = await reply
            except Exception:  # broad on purpose, as above
                log.exception("control-plane request of %s failed", session.address)
                done = build_reply(header, 1)
            self._post(shard, token, session, done)

        pending = asyncio.ensure_future(finish())
        self._replies.add(pending)
        pending.add_done_callback(self._replies.discard)

    @staticmethod
    def _post(shard: Shard, token: int, session: Session, reply: bytes) -> None:
        user = session.user_id
        shard.post_reply(token, reply, -1 if user is None else principal(user, session.user_generation))


class UringEngine(Engine):
    """The shards, their listening sockets (one per shard, SO_REUSEPORT) and threads."""

    kind = "tcp"

    def __init__(
        self,
        plane: ControlPlane,
        host: str,
        port: int,
        max_frame_size: int,
        shards: int | None = None,
        max_connections: int = 4096,
    ) -> None:
        super().__init__(plane, host, port, max_frame_size)
        self.count = shards or os.cpu_count() or 1
        self.max_connections = max_connections
        self.sockets: list[socket.socket] = []
        self.shards: list[Shard] = []
        self.threads: list[threading.Thread] = []
        self._idle_task: asyncio.Task[None] | None = None

    async def start(self) -> tuple[str, int]:
        from iggy.engine.uring.shard import Shard

        plane, port, max_frame_size = self.plane, self.port, self.max_frame_size
        limits = plane.config.limits  # bytes and seconds (converted at load)
        self.idle_timeout = limits.idle_timeout
        self.handler = ShardHandler(plane, asyncio.get_running_loop(), max_frame_size)
        for _ in range(self.count):
            sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((self.host, port))
            sock.listen(1024)
            port = sock.getsockname()[1]  # port 0: every shard takes the first one's port
            self.sockets.append(sock)
            self.shards.append(
                Shard(
                    sock,
                    self.handler,
                    max_frame_size,
                    self.max_connections,
                    max_write_buffer=limits.max_write_buffer,
                    router=plane.routes.router,
                    max_poll_bytes=plane.max_poll_bytes,
                    max_unauthenticated_frame=min(max_frame_size, limits.max_unauthenticated_frame),
                    max_reply_buffers=limits.max_reply_buffers,
                )
            )
        for shard in self.shards:
            shard.set_peers(self.shards)  # new connections go to the shard holding fewest
        for i, shard in enumerate(self.shards):
            t = threading.Thread(target=shard.run, name=f"iggy-shard-{i}", daemon=True)
            t.start()
            self.threads.append(t)
        log.info("uring engine: %d shards", self.count)
        self._idle_task = asyncio.ensure_future(self._idle_sweep()) if self.idle_timeout else None
        bound = self.sockets[0].getsockname()
        return bound[0], bound[1]

    def listening(self, bound: tuple[str, int]) -> str:
        return f"TCP server listening on {bound[0]}:{bound[1]} (uring engine)"

    async def stop(self) -> None:
        """Stop the shards (each closes its connections) and join their threads, off the loop."""
        await asyncio.get_running_loop().run_in_executor(None, self.close)

    async def _idle_sweep(self) -> None:
        """limits.idle_timeout: close connections that completed no request for that long."""
        while True:
            await asyncio.sleep(min(1.0, self.idle_timeout / 4))
            now = time.monotonic()
            for session in list(self.plane.sessions.values()):
                if session.activity is None:
                    continue  # not a shard's connection (they set it)
                idle = now - session.idle_since()
                if idle >= self.idle_timeout and session.close is not None:
                    log.info("closing %s: no complete request for %.1f s (limits.idle_timeout)", session.address, idle)
                    session.last_seen = now  # closing: don't report it twice
                    session.close()

    def counters(self) -> dict[str, int]:
        """Requests the shards took, how many the C data plane served, the reply budget (GET /metrics)."""
        from iggy.engine.uring.shard import Shard

        used, _cap, waiters = Shard.reply_budget()
        return {
            "shard_requests": sum(s.frames for s in self.shards),
            "shard_requests_native": sum(s.fast_frames for s in self.shards),
            "shard_fsyncs": sum(s.fsyncs for s in self.shards),
            "reply_buffers_bytes": used,
            "reply_buffer_waiters": waiters,
        }

    def close(self) -> None:
        if self._idle_task is not None:
            self._idle_task.cancel()
        for shard in self.shards:
            shard.stop()
        for t in self.threads:
            t.join(5)
        for sock in self.sockets:
            sock.close()
