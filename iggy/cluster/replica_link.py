"""The replica link: one TCP connection from each follower to the leader's `tcp_replica` port.

Frames, the handshake and their bounds are in iggy.cluster.replica_frames. This module runs the
connections on the main event loop:

- `LeaderEndpoint` listens on this node's `tcp_replica` port on every node (any node may become
  leader). A connection is served only while this node leads: it sends CHALLENGE with its epoch,
  checks the HELLO (cluster name, replica id of the roster, MAC under cluster.auth.shared_secret
  when auth is on, epoch), answers WELCOME and from then on hands ACK, EPOCHS, EPOCHS_END and
  SUFFIX frames to the leader's replication (`LeaderSide`) and lets it send frames through
  `Peer.send`. Anything wrong closes the
  connection and logs why once.
- `FollowerLink` keeps one connection to the leader that etcd names (`follow(leader)`), redials
  every RETRY seconds while it cannot, checks CHALLENGE and WELCOME the same way, and hands each
  BATCH / COMMIT / TRUNCATE / RETAIN to its `FollowerSink`, sending back the ACKs the sink returns after
  each read; right after WELCOME it sends the sink's EPOCHS (every partition's end and leader
  epochs) and EPOCHS_END (with the CATCHING_UP flag while this node does not count toward
  majorities: iggy.cluster.standing), it answers a FETCH with a SUFFIX read from this node's
  log, and hands the leader's IN_SYNC to `on_in_sync`.

Epochs (replica_frames.Epochs): every received frame's epoch is checked against the highest
this node has seen; an older one closes the connection, a newer one is recorded, and on the
leader it means another node won a later election: `Epochs.on_newer` makes it step down.

Both ends run on `Connection`, a buffered protocol: the event loop reads a batch straight into
the bytearray that becomes its frame's body and then goes to the log (no copy of the batch
between the socket and the log).

Memory: the decoder holds at most one frame under way and one read; reading pauses while more
than MAX_UNREAD bytes of received frames wait to be handled; a peer whose queued output to it
passes MAX_QUEUED (a follower that stopped reading) is disconnected instead of being buffered for.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, cast

from iggy.cluster import replica_frames as rf
from iggy.cluster.replica_frames import Epochs, Frame, FrameDecoder, LinkError
from iggy.tasks import cancel_and_wait

log = logging.getLogger(__name__)

MAX_UNREAD = 1 << 20  # bytes of received frames not yet taken before reading pauses
MAX_QUEUED = 128 << 20  # bytes queued to one follower before it counts as stuck and is dropped
HANDSHAKE_TIMEOUT = 5.0
RETRY = 0.2  # seconds between dials of an unreachable leader
FETCH_BYTES = 1 << 20  # one SUFFIX frame's read of this log (at least one batch)

Key = tuple[int, int, int]


@dataclass(frozen=True)
class LinkIdentity:
    """What both ends of a link must agree on."""

    cluster: str
    replica_id: int
    secret: bytes | None  # cluster.auth.shared_secret when cluster.auth.enabled
    epochs: Epochs

    def check_frame(self, frame: Frame, epoch: int) -> None:
        """A frame received on a link of `epoch`: its epoch is checked against the highest seen
        (Epochs.check) and must be the link's; LinkError otherwise."""
        self.epochs.check(frame.epoch)
        if frame.epoch != epoch:
            raise LinkError(f"frame of epoch {frame.epoch} on a link of epoch {epoch}")


class Connection(asyncio.BufferedProtocol):
    """One connection of the replica link, either end. The event loop reads straight into the
    decoder's buffers (`FrameDecoder.buffer`: a batch lands in the bytearray that becomes its
    frame's body, which goes on to the log without a copy); `frames()` hands the frames over in
    the order they came, `writelines` queues a frame's buffers on the transport as they are.

    Bytes that arrive with the last handshake frame stay in the decoder and are cut by the first
    `frames()` after `decoder.authenticated()`. Reading pauses while frames of more than
    MAX_UNREAD bytes wait to be taken (and during the handshake while one frame does), so what
    is held is bounded by that, one frame under way and one read."""

    def __init__(self, on_made: Callable[[Connection], None] | None = None):
        self.decoder = FrameDecoder()
        self.transport: asyncio.Transport | None = None
        self._on_made = on_made
        self._frames: list[Frame] = []
        self._unread = 0  # body bytes of the frames in _frames
        self._waiter: asyncio.Future[None] | None = None
        self._error: LinkError | None = None
        self._eof = False
        self._lost = False
        self._reading_paused = False
        self._writing_paused = False
        self._drained: asyncio.Future[None] | None = None

    # the protocol's callbacks, from the event loop

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses
        if self._on_made is not None:
            self._on_made(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.decoder.buffer()

    def buffer_updated(self, nbytes: int) -> None:
        self.decoder.filled(nbytes)
        self._cut()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = self._lost = True
        self._wake()
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    # reading

    def _cut(self) -> None:
        if self._error is not None or (self.decoder.handshake and self._frames):
            return
        try:
            frames = self.decoder.cut()
        except LinkError as exc:
            self._error = exc
            self._pause_reading()
            self._wake()
            return
        if frames:
            self._frames += frames
            self._unread += sum(len(f.body) for f in frames)
            self._wake()
        if self._frames and (self.decoder.handshake or self._unread > MAX_UNREAD):
            self._pause_reading()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _pause_reading(self) -> None:
        if not self._reading_paused and self.transport is not None and not self._lost:
            self._reading_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._reading_paused and self.transport is not None and not self._lost:
            self._reading_paused = False
            self.transport.resume_reading()

    async def frames(self) -> list[Frame]:
        """The next frames; [] at EOF. A frame's body is its own (a bytearray for a batch)."""
        while True:
            if not self._frames:
                self._cut()  # what arrived behind the last handshake frame
            if self._frames:
                frames, self._frames, self._unread = self._frames, [], 0
                self._resume_reading()
                return frames
            if self._error is not None:
                raise self._error
            if self._eof:
                if self.decoder.pending:
                    raise LinkError(f"connection closed inside a frame ({self.decoder.pending} bytes)")
                return []
            self._resume_reading()
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    async def one(self, kind: int) -> Frame:
        """The next frame of the handshake, which must be of `kind`, within HANDSHAKE_TIMEOUT."""
        frames = await asyncio.wait_for(self.frames(), HANDSHAKE_TIMEOUT)
        if not frames:
            raise LinkError("connection closed during the handshake")
        if frames[0].kind != kind:
            raise LinkError(f"expected a frame of kind {kind} in the handshake, got {frames[0].kind}")
        return frames[0]

    # writing

    def writelines(self, parts: list[bytes | bytearray | memoryview]) -> None:
        assert self.transport is not None
        self.transport.writelines(parts)

    async def drain(self) -> None:
        """Wait while the transport's buffer is above its high mark; ConnectionResetError once lost."""
        if self._writing_paused and not self._lost:
            self._drained = asyncio.get_running_loop().create_future()
            try:
                await self._drained
            finally:
                self._drained = None
        if self._lost:
            raise ConnectionResetError("connection lost")

    def close(self) -> None:
        if self.transport is not None:
            try:
                self.transport.close()
            except RuntimeError:  # loop already closed
                pass


# ---------------------------------------------------------------------------- leader side


class Peer:
    """A follower connected to this leader, after its handshake."""

    def __init__(self, replica_id: int, conn: Connection, epoch: int):
        self.replica_id = replica_id
        self.epoch = epoch  # the leader's epoch this link was accepted in
        self._conn = conn
        self.closed = False

    def send(self, kind: int, *body: bytes | bytearray | memoryview) -> bool:
        """Queue one frame; False (and the link closed) when it is closed or stuck."""
        if self.closed:
            return False
        transport = self._conn.transport
        assert transport is not None
        if transport.is_closing():
            self.close("connection closed")
            return False
        if transport.get_write_buffer_size() > MAX_QUEUED:
            self.close(f"more than {MAX_QUEUED} bytes queued: the follower does not read")
            return False
        self._conn.writelines(rf.encode(kind, self.epoch, *body))
        return True

    def close(self, why: str = "") -> None:
        if not self.closed:
            self.closed = True
            if why:
                log.warning("replica link: dropping follower %d: %s", self.replica_id, why)
            self._conn.close()


class LeaderSide(Protocol):
    """What the leader's replication does with its followers (iggy.cluster.replication)."""

    def leader_epoch(self) -> int | None:
        """This node's epoch while it leads, None otherwise."""

    def joined(self, peer: Peer) -> None: ...

    def acked(self, peer: Peer, key: Key, end: int, synced: int, status: int) -> None: ...

    def offered(self, peer: Peer, key: Key, end: int, records: list[tuple[int, int]]) -> None:
        """An EPOCHS frame: the follower's end and leader-epoch records of a partition."""

    def offers_done(self, peer: Peer, catching_up: bool) -> None:
        """EPOCHS_END: the follower sent the state of every partition it has (catching_up: it
        lost its data directory and counts toward no majority yet)."""

    def fetched(self, peer: Peer, key: Key, batches: list[memoryview]) -> None:
        """A SUFFIX frame: the batches a FETCH asked the follower for (none: it has not them)."""

    def left(self, peer: Peer) -> None: ...


class LeaderEndpoint:
    def __init__(self, me: LinkIdentity, roster_ids: set[int], side: LeaderSide):
        self.me = me
        self.roster_ids = roster_ids - {me.replica_id}
        self.side = side
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.refused = 0  # handshakes refused (tests, logs)

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.get_running_loop().create_server(lambda: Connection(self._accept), host, port)

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        await cancel_and_wait(list(self._tasks))

    def _accept(self, conn: Connection) -> None:
        task = asyncio.ensure_future(self._serve(conn))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, conn: Connection) -> None:
        assert conn.transport is not None
        peer_addr = conn.transport.get_extra_info("peername")
        epoch = self.side.leader_epoch()
        if epoch is None:  # not the leader: nothing to serve
            conn.close()
            return
        peer: Peer | None = None
        try:
            nonce = os.urandom(rf.NONCE_LEN)
            conn.writelines(rf.encode(rf.CHALLENGE, epoch, nonce))
            hello = await conn.one(rf.HELLO)
            replica_id, follower_nonce, cluster, mac = rf.read_hello(hello.body)
            if cluster != self.me.cluster:
                raise LinkError(f"hello from cluster {cluster!r}, this is {self.me.cluster!r}")
            if replica_id not in self.roster_ids:
                raise LinkError(f"hello from replica {replica_id}, not a follower of the roster")
            expected = rf.hello_mac(self.me.secret, cluster, hello.epoch, replica_id, nonce, follower_nonce)
            if not rf.macs_equal(mac, expected):
                raise LinkError(f"hello from replica {replica_id} with a bad MAC")
            self.me.epochs.check(hello.epoch)
            if hello.epoch != epoch or self.side.leader_epoch() != epoch:
                raise LinkError(f"hello of epoch {hello.epoch} to a leader of epoch {epoch}")
            conn.decoder.authenticated()
            welcome = rf.welcome_mac(self.me.secret, cluster, epoch, self.me.replica_id, follower_nonce, nonce)
            conn.writelines(rf.encode(rf.WELCOME, epoch, rf.WELCOME_BODY.pack(self.me.replica_id, welcome)))
            peer = Peer(replica_id, conn, epoch)
            log.info("replica link: follower %d joined (epoch %d, %s)", replica_id, epoch, peer_addr)
            self.side.joined(peer)
            while True:
                frames = await conn.frames()
                if not frames:
                    return
                for frame in frames:
                    self.me.check_frame(frame, epoch)
                    if frame.kind == rf.ACK:
                        key, end, synced, status = rf.read_ack(frame.body)
                        self.side.acked(peer, key, end, synced, status)
                    elif frame.kind == rf.EPOCHS:
                        key, end, records = rf.read_epochs(frame.body)
                        self.side.offered(peer, key, end, records)
                    elif frame.kind == rf.EPOCHS_END:
                        self.side.offers_done(peer, rf.read_epochs_end(frame.body))
                    elif frame.kind == rf.SUFFIX:
                        key, _, batches = rf.read_batch(frame.body, empty=True)
                        self.side.fetched(peer, key, batches)
                    else:
                        raise LinkError(f"frame kind {frame.kind} from a follower")
        except (LinkError, TimeoutError) as exc:
            if peer is None:
                self.refused += 1
            log.warning("replica link: closing %s: %s", peer_addr, exc or "handshake timed out")
        except (ConnectionError, OSError) as exc:
            log.info("replica link: follower at %s gone: %s", peer_addr, exc)
        finally:
            if peer is not None:
                peer.closed = True
                self.side.left(peer)
            conn.close()


# ---------------------------------------------------------------------------- follower side


class FollowerSink(Protocol):
    """What a follower does with the leader's frames (iggy.cluster.replication.Follower)."""

    def start(self) -> list[tuple[Key, int, list[tuple[int, int]]]]:
        """A new link: (key, end, leader-epoch records) of every partition, for EPOCHS frames."""

    def truncate(self, key: Key, offset: int, epoch: int) -> None: ...

    def fetch(self, key: Key, start: int, end: int, max_bytes: int) -> bytes: ...

    def retain(self, key: Key, start: int) -> None:
        """RETAIN: the leader's log keeps nothing below `start`."""

    def batches(self, key: Key, commit: int, batches: list[memoryview], epoch: int) -> None: ...

    def commit(self, key: Key, commit: int) -> None: ...

    def acks(self) -> list[tuple[Key, int, int, int]]:
        """After each read: (key, end, synced end, status) of every partition touched since the last call."""


@dataclass(frozen=True)
class LeaderAddress:
    replica_id: int
    host: str
    port: int


class FollowerLink:
    def __init__(
        self,
        me: LinkIdentity,
        sink: FollowerSink,
        on_state: Callable[[bool], None] = lambda up: None,
        on_in_sync: Callable[[], bool] = lambda: True,
    ):
        self.me = me
        self.sink = sink
        self.on_state = on_state
        # this node lost its data directory and counts toward no majority yet (said in
        # EPOCHS_END); the leader's IN_SYNC calls on_in_sync, True once it counts
        self.catching_up = False
        self.on_in_sync = on_in_sync
        self.target: LeaderAddress | None = None
        self.connected = False
        self._task: asyncio.Task[None] | None = None

    def follow(self, leader: LeaderAddress | None) -> None:
        """Keep a link to `leader` (None: to nobody). A new target drops the old link."""
        if leader == self.target:
            return
        self.target = leader
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if leader is not None:
            self._task = asyncio.ensure_future(self._run(leader))

    async def stop(self) -> None:
        task, self._task = self._task, None
        self.target = None
        await cancel_and_wait((task,))

    async def _run(self, leader: LeaderAddress) -> None:
        quiet = False
        # the loops test the target as well as relying on cancellation: on Python 3.11 a
        # cancellation can be lost inside asyncio.wait_for (see iggy/tasks.py), and a link to
        # a former leader must not run on beside the new one
        while self.target == leader:
            try:
                await self._session(leader)
                quiet = False
            except (LinkError, TimeoutError) as exc:
                # a TimeoutError's text is empty: an exception object is always true, so test its text
                log.warning("replica link to leader %d: %s", leader.replica_id, str(exc) or "handshake timed out")
            except (ConnectionError, OSError) as exc:
                if not quiet:
                    log.info("replica link to leader %d (%s:%d): %s", leader.replica_id, leader.host, leader.port, exc)
                quiet = True
            finally:
                if self.connected:
                    self.connected = False
                    self.on_state(False)
            await asyncio.sleep(RETRY)

    async def _session(self, leader: LeaderAddress) -> None:
        _, conn = await asyncio.wait_for(
            asyncio.get_running_loop().create_connection(Connection, leader.host, leader.port), HANDSHAKE_TIMEOUT
        )
        try:
            challenge = await conn.one(rf.CHALLENGE)
            leader_nonce = rf.read_challenge(challenge.body)
            epoch = challenge.epoch
            if epoch < self.me.epochs.highest:  # recorded only once the leader proved the secret
                raise LinkError(f"challenge of epoch {epoch}, below the highest seen ({self.me.epochs.highest})")
            nonce = os.urandom(rf.NONCE_LEN)
            mac = rf.hello_mac(self.me.secret, self.me.cluster, epoch, self.me.replica_id, leader_nonce, nonce)
            body = rf.hello_body(self.me.replica_id, nonce, self.me.cluster, mac)
            conn.writelines(rf.encode(rf.HELLO, epoch, body))
            welcome = await conn.one(rf.WELCOME)
            leader_id, mac = rf.read_welcome(welcome.body)
            expected = rf.welcome_mac(self.me.secret, self.me.cluster, epoch, leader_id, nonce, leader_nonce)
            if welcome.epoch != epoch or leader_id != leader.replica_id or not rf.macs_equal(mac, expected):
                raise LinkError(f"welcome from replica {leader_id} (epoch {welcome.epoch}) does not check out")
            self.me.epochs.check(epoch)
            conn.decoder.authenticated()
            if self.target != leader:
                return
            self.connected = True
            self.on_state(True)
            log.info("replica link: following leader %d (epoch %d)", leader_id, epoch)
            # where this node's copies stand, so the leader can cut what diverges (TRUNCATE)
            conn.writelines(
                [
                    part
                    for key, end, records in self.sink.start()
                    for part in rf.encode(rf.EPOCHS, epoch, rf.epochs_body(key, end, records))
                ]
                + rf.encode(rf.EPOCHS_END, epoch, rf.epochs_end_body(self.catching_up))
            )
            while True:
                frames = await conn.frames()
                if not frames:
                    raise ConnectionResetError("the leader closed the link")
                if self.target != leader:
                    return
                for frame in frames:
                    self.me.check_frame(frame, epoch)
                    if frame.kind == rf.BATCH:
                        key, commit, batches = rf.read_batch(frame.body)
                        self.sink.batches(key, commit, batches, epoch)
                    elif frame.kind == rf.COMMIT:
                        key, commit = rf.read_commit(frame.body)
                        self.sink.commit(key, commit)
                    elif frame.kind == rf.TRUNCATE:
                        key, offset = rf.read_commit(frame.body)
                        self.sink.truncate(key, offset, epoch)
                    elif frame.kind == rf.RETAIN:
                        key, start = rf.read_commit(frame.body)
                        self.sink.retain(key, start)
                    elif frame.kind == rf.IN_SYNC:
                        rf.read_in_sync(frame.body)
                        if self.on_in_sync():
                            self.catching_up = False
                    elif frame.kind == rf.FETCH:
                        key, start, end = rf.read_fetch(frame.body)
                        data = self.sink.fetch(key, start, end, FETCH_BYTES)
                        conn.writelines(rf.encode(rf.SUFFIX, epoch, rf.BATCH_HEAD.pack(*key, 0), data))
                    else:
                        raise LinkError(f"frame kind {frame.kind} from the leader")
                acks = self.sink.acks()
                if acks:
                    conn.writelines(
                        [
                            part
                            for key, end, synced, status in acks
                            for part in rf.encode(rf.ACK, epoch, rf.ACK_BODY.pack(*key, end, synced, status))
                        ]
                    )
                    await conn.drain()
        finally:
            conn.close()
