"""The control plane: sessions and the dispatch of binary-protocol requests.

Every transport hands a request here as `(session, header, body)` and gets the whole reply
frame back as bytes. The commands are those of `iggy.control.registry`, registered by the
command modules imported below: `handle` finds the command of the frame, refuses it if the
session is not logged in, reads the body with the command's decoder and runs it with
`registry.invoke` (which checks its permission), then writes its result with the command's
encoder. Handlers that must wait (password hashing, an fsync) return awaitables; everything
else runs synchronously on the event loop, which also serialises every metadata change.

Error channels (TCP.md 4.2): refusals before a command runs (not logged in, no permission,
undecodable body) go in the reply status; a write that is refused when applied goes in the
result section `[u32 1][u32 0][u32 code]`; a refused login is an Eviction frame.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, TypeVar, TypeVarTuple, cast, overload

from iggy._core.checksum import xxh3_64

# the command modules register their commands when imported
from iggy.cluster import routing  # noqa: F401  (14, 103, 104, 123: FeatureUnavailable on one node)
from iggy.control import groups, messages, streams, system, tokens, topics, users  # noqa: F401
from iggy.control.clock import now_us
from iggy.control.groups import GroupCoordinator
from iggy.control.registry import COMMANDS, Body, Command, Evict, invoke
from iggy.control.throttle import Gate, LoginThrottle
from iggy.engine.uring.routing import Routes
from iggy.protocol import codes
from iggy.protocol.errors import ErrorCode, IggyError
from iggy.protocol.wire import HEADER_SIZE, Reader, RequestHeader, build_eviction, build_reply, build_reply_header

if TYPE_CHECKING:
    from iggy.cluster.membership import Cluster
    from iggy.config import Config
    from iggy.metadata.state import UserMeta
    from iggy.metadata.store import MetadataStore
    from iggy.storage.partitions import Storage

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_Ts = TypeVarTuple("_Ts")

# a reply frame: bytes, or [header, *buffers] to write as they are (handle(parts=True))
Reply = bytes | list[bytes]

TRANSPORT_TCP = 1
TRANSPORT_QUIC = 2
TRANSPORT_HTTP = 3
TRANSPORT_WEBSOCKET = 4

# 58 TransientNotAccepted is a cluster node's "not admitted here" (iggy.cluster.metalog): in the
# status, as the follower gate answers it, so the SDK goes to the leader whichever refused it
_STATUS_CHANNEL = frozenset(
    {
        ErrorCode.UNAUTHENTICATED,
        ErrorCode.UNAUTHORIZED,
        ErrorCode.INVALID_COMMAND,
        ErrorCode.INVALID_FORMAT,
        ErrorCode.TRANSIENT_NOT_ACCEPTED,
    }
)


class ConnectionLimit(Exception):
    """`limits.max_connections` connections are open already: the new one is closed."""


@dataclass(eq=False)
class Session:
    """One client connection (TCP, QUIC or WebSocket), or one HTTP caller."""

    client_id: int
    address: str
    transport: int
    user_id: int | None = None
    user_generation: int = 0  # of the user logged in (metadata.state)
    session: int = 0
    client_uuid: int = 0
    groups: set[tuple[int, int, int]] = field(default_factory=set)  # {(stream_id, topic_id, group_id)}
    last_seen: float = field(default_factory=time.monotonic)
    close: Callable[[], object] | None = None  # ends the connection (heartbeat eviction)
    # the engine's own clock of the connection's last complete request (time.monotonic()
    # seconds), for requests it served without this module (the shards' C data plane)
    activity: Callable[[], float] | None = None
    # its data-plane commands run on a shard thread, where there is no event loop: a
    # persisted append fsyncs before the command returns instead of joining the loop's group
    # commit (iggy.storage.partitions.Partition.after_append)
    inline_fsync: bool = False

    def idle_since(self) -> float:
        """time.monotonic() of the last complete request, whoever served it."""
        if self.activity is None:
            return self.last_seen
        return max(self.last_seen, self.activity())


class ControlPlane:
    def __init__(self, config: Config, meta: MetadataStore, storage: Storage) -> None:
        self.config = config
        self.meta = meta
        self.storage = storage
        self.sessions: dict[int, Session] = {}
        self._client_ids = itertools.count(1)
        self._session_numbers = itertools.count(1)
        self.started_at = now_us()
        self.max_poll_bytes = max(1, config.message_bus.max_message_size - HEADER_SIZE - 16)  # 16: the poll reply head
        self.bound: dict[str, tuple[str, int]] = {}  # transport -> bound (host, port)
        self.cluster: Cluster | None = None  # cluster mode (docs/CLUSTER.md); None on a single node
        self.executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="iggy-hash")
        self.login_throttle = LoginThrottle()  # failed-login backoff (control.throttle)
        self.login_gate = Gate()  # one password check at a time per address
        self.groups = GroupCoordinator(self)
        self.routes = Routes(meta, storage, self.groups)
        self.routes.sync()
        # {"shard_requests": n, "shard_requests_native": n} from the uring engine (metrics)
        self.engine_counters: Callable[[], dict[str, int]] = dict

    # ---------------------------------------------------------------- sessions
    #
    # ControlPlane.sessions is owned by the main event loop: sessions are registered, closed,
    # listed and evicted there, whichever engine serves the connection. An engine running on
    # another thread (the uring shards) makes its Session with `new_session` (safe on any
    # thread: it only takes the next client id) and posts `register_session` and
    # `close_session` to the loop, in that order (docs/ARCHITECTURE.md, "Threads").

    def new_session(self, address: str, transport: int, close: Callable[[], object] | None = None) -> Session:
        """A Session with a fresh client id, not registered yet. Any thread: `next()` on an
        itertools.count is one step under the GIL."""
        return Session(next(self._client_ids), address, transport, close=close)

    def register_session(self, session: Session) -> None:
        """Count the session in `sessions` (main loop); ConnectionLimit when
        `limits.max_connections` are open already (the engine then closes the connection)."""
        limit = self.config.limits.max_connections
        if limit and len(self.sessions) >= limit:
            log.warning(
                "refusing connection from %s: %d connections open (limits.max_connections)",
                session.address,
                len(self.sessions),
            )
            raise ConnectionLimit(session.address)
        self.sessions[session.client_id] = session

    def open_session(self, address: str, transport: int, close: Callable[[], object] | None = None) -> Session:
        """new_session + register_session, for engines that run on the main loop."""
        session = self.new_session(address, transport, close)
        self.register_session(session)
        return session

    def close_session(self, session: Session) -> None:
        """The connection is gone (main loop): forget the session, leave its groups."""
        self.sessions.pop(session.client_id, None)
        self.logout(session)

    def logout(self, session: Session) -> None:
        self.groups.leave_all(session)
        session.user_id = None
        session.session = 0

    def logout_user(self, user: UserMeta) -> None:
        """Log out every session of `user` (deleted): they answer 40 from now on. A shard
        connection keeps the old (id, generation) in C until its next control-plane reply,
        which the routing table no longer grants anything."""
        for session in list(self.sessions.values()):
            if session.user_id == user.id and session.user_generation == user.generation:
                self.logout(session)

    def bind_login(self, session: Session, user: UserMeta, client_uuid: int) -> int:
        session.user_id = user.id
        session.user_generation = user.generation
        session.session = next(self._session_numbers)
        session.client_uuid = client_uuid
        return session.session

    def user_of(self, session: Session) -> UserMeta | None:
        """The user the session is logged in as; None if nobody, or if that user was deleted
        (even when a newer user has its id now)."""
        if session.user_id is None:
            return None
        user = self.meta.state.users.get(session.user_id)
        if user is None or user.generation != session.user_generation:
            return None
        return user

    async def run_blocking(self, fn: Callable[[*_Ts], _T], *args: *_Ts) -> _T:
        """Run CPU-heavy work (Argon2) off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    # ---------------------------------------------------------------- dispatch

    @overload
    def handle(
        self, session: Session, header: RequestHeader, body: bytes, parts: Literal[False] = False
    ) -> bytes | Awaitable[bytes]: ...
    @overload
    def handle(self, session: Session, header: RequestHeader, body: bytes, parts: bool) -> Reply | Awaitable[bytes]: ...

    def handle(
        self, session: Session, header: RequestHeader, body: bytes, parts: bool = False
    ) -> Reply | Awaitable[bytes]:
        """Reply frame for one request: bytes, or an awaitable of bytes for async commands.

        A handler may return its body as a tuple of buffers (a poll: 16-byte head + the
        batches read from disk); with `parts=True` the engine gets `[header, *buffers]` to
        write as they are instead of one joined copy.
        """
        session.last_seen = time.monotonic()
        op = header.operation
        code: int | None
        if op == codes.OP_READ:
            code = header.code
        elif op == codes.OP_REGISTER:
            code = codes.LOGIN_REGISTER
            session.client_uuid = header.client
        elif op == codes.OP_LOGOUT:
            code = codes.LOGOUT_USER
        else:
            code = codes.OPERATION_CODES.get(op)
            if code is None:
                return build_reply(header, ErrorCode.INVALID_COMMAND)
        if op in codes.CHECKSUMMED_OPS:
            checksum = header.request_checksum
            if checksum and checksum != xxh3_64(body):
                return build_reply(header, ErrorCode.INVALID_FORMAT)
        cmd = COMMANDS.get(code)
        if cmd is None:
            return build_reply(header, ErrorCode.INVALID_COMMAND)
        if cmd.needs.login and (session.user_id is None or self.user_of(session) is None):
            # not logged in, or the user was deleted while logged in (its id may belong to a
            # newer user by now): nothing is allowed any more
            return build_reply(header, ErrorCode.UNAUTHENTICATED)
        if self.cluster is not None and not self.cluster.serves(code):
            # a follower (or a leader past its fencing deadline): the SDK re-reads the cluster
            # metadata and reconnects to the leader (iggy.cluster.membership)
            return build_reply(header, self.cluster.NOT_LEADER)
        try:
            result = invoke(self, session, cmd, cmd.decode(Reader(body)))
            if inspect.isawaitable(result):  # a password hash off the loop, a persisted append's fsync
                return self._finish_awaitable(cmd, header, result)
            if result is not None and cmd.encode is not None:
                result = cmd.encode(self, result)
        except Exception as exc:
            return self._error_reply(header, exc, cmd)
        if parts and type(result) is tuple:
            return [build_reply_header(header, 0, sum(len(p) for p in result)), *result]
        return self._ok_reply(header, result)

    def handle_on_shard(self, session: Session, header: RequestHeader, body: bytes) -> Reply:
        """`handle(parts=True)` on a uring shard thread, for the commands a shard runs itself
        (ping, send, poll, store offset: iggy.engine.uring.engine.SHARD_THREAD_COMMANDS). None
        of them waits: a shard's session appends with `inline_fsync`, so a persisted append
        fsyncs before it answers, and there is no event loop on the thread to wait with."""
        reply = self.handle(session, header, body, parts=True)
        if isinstance(reply, (bytes, list)):
            return reply
        raise AssertionError(f"command {header.code} returned an awaitable on a shard thread")

    async def _finish_awaitable(self, cmd: Command, header: RequestHeader, pending: Awaitable[object]) -> bytes:
        try:
            result = await pending
            if result is not None and cmd.encode is not None:
                result = cmd.encode(self, result)
        except Exception as exc:
            return self._error_reply(header, exc, cmd)
        return self._ok_reply(header, result)

    def _ok_reply(self, header: RequestHeader, result: object) -> bytes:
        # what the command's encoder made, or what a command without one answered itself
        # (its body, or None for an empty one)
        reply = cast("Body | None", result)
        body = b"".join(reply) if isinstance(reply, tuple) else (reply or b"")
        if header.operation in codes.RESULT_FRAMED_OPS or (header.operation == codes.OP_REGISTER):
            body = b"\x00\x00\x00\x00" + body
        return build_reply(header, 0, body, session=0)

    def _error_reply(self, header: RequestHeader, exc: Exception, cmd: Command) -> bytes:
        if isinstance(exc, Evict):
            return build_eviction(header.client_bytes, exc.reason, exc.version, exc.version_min)
        if not isinstance(exc, IggyError):
            log.error("command %s failed", cmd.name, exc_info=exc)
            exc = IggyError(ErrorCode.ERROR)
        if header.operation in codes.RESULT_FRAMED_OPS and exc.code not in _STATUS_CHANNEL:
            return build_reply(header, 0, b"\x01\x00\x00\x00\x00\x00\x00\x00" + exc.code.to_bytes(4, "little"))
        return build_reply(header, exc.code)

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
