"""The frames of the replica link (iggy.cluster.replica_link), their checks and the handshake MACs.

Every frame, both directions, little-endian::

    0  u32 length     bytes after this field: 9 + body length
    4  u8  kind       one of the kinds below
    5  u64 epoch      the sender's epoch (the etcd create_revision of the leader key it follows or holds)
   13  body

Kinds and bodies::

    1 CHALLENGE  leader -> follower, the leader's first frame
                 16 nonce
    2 HELLO      follower -> leader, the answer
                 u32 replica_id, 16 nonce, u8 name length, cluster name (UTF-8), 32 mac
    3 WELCOME    leader -> follower: the follower is accepted
                 u32 leader replica_id, 32 mac
    4 BATCH      leader -> follower: consecutive stored batches of a partition
                 u32 stream, u32 topic, u32 partition, u64 commit, then one or more batches
                 back to back exactly as the leader's log holds them (each a 256-byte header
                 with its base offset, timestamp and checksum stamped, then the message frames:
                 iggy.protocol.batch); a live append sends one, a catch-up what one read gives
    5 COMMIT     leader -> follower: the partition's high-watermark moved (no batch to carry it)
                 u32 stream, u32 topic, u32 partition, u64 commit
    6 ACK        follower -> leader: what the follower's log of a partition holds
                 u32 stream, u32 topic, u32 partition, u64 end, u64 synced end, u16 status
    7 EPOCHS     follower -> leader, right after WELCOME, one per partition the follower has:
                 u32 stream, u32 topic, u32 partition, u64 end, u32 n, n x (u64 epoch, u64
                 start): its log end and its leader-epoch records (iggy.storage.leader_epochs)
    8 EPOCHS_END follower -> leader: every EPOCHS frame was sent (a partition without one is
                 empty on that follower); u8 flags: bit 0 (CATCHING_UP) the follower lost its
                 data directory and counts toward no majority yet (iggy.cluster.standing)
    9 TRUNCATE   leader -> follower, before any BATCH or COMMIT of the partition on this link:
                 u32 stream, u32 topic, u32 partition, u64 offset: cut the log there (its
                 copy below it equals the leader's), record the link's epoch from there, ACK
   10 FETCH      leader -> follower, while a new leader reconciles a partition: u32 stream,
                 u32 topic, u32 partition, u64 from, u64 to: send back the stored batches from
                 `from` (at most one bounded read, never past `to`)
   11 SUFFIX     follower -> leader, the answer to FETCH: u32 stream, u32 topic, u32 partition,
                 u64 0, then zero or more batches as in BATCH (none: it cannot serve `from`)
   12 IN_SYNC    leader -> follower that said CATCHING_UP: it holds every partition up to the
                 leader's end; it counts from now on (and records so); empty body
   13 RETAIN     leader -> follower, after the partition's TRUNCATE on this link: u32 stream,
                 u32 topic, u32 partition, u64 start: the leader's log keeps nothing below
                 `start` (retention or DELETE_SEGMENTS removed it); the follower removes its
                 sealed segments wholly below it, and a copy that ends below it starts again,
                 empty, at `start`

`commit` is the high-watermark: every offset below it is held by a majority, and nothing at or
above it may be served to a consumer. `end` is the follower's next offset (its log holds every
offset below it) and `synced end` the same for what it has fdatasync'ed. `status` is 0 when the
batch was appended, else the Iggy error code that refused it (a gap or an overlap at its base
offset: `end` then says where the follower's log really ends).

The handshake: the leader sends a fresh nonce; the follower answers with its own nonce and
    mac = HMAC-SHA256(secret, "iggy-replica-hello" | cluster name | u64 epoch | u32 replica_id
                              | leader nonce | follower nonce)
and the leader proves the same secret back with
    mac = HMAC-SHA256(secret, "iggy-replica-welcome" | cluster name | u64 epoch | u32 leader id
                              | follower nonce | leader nonce)
Without `cluster.auth` the macs are 32 zero bytes and only the cluster name is checked. Each
side's nonce makes a recorded handshake useless for a later connection. Frames after the
handshake carry no mac of their own (integrity is TCP's; encryption is a next step, as for
the client listeners without TLS).

Bounds: before the handshake completes a frame body is at most HANDSHAKE_MAX_BODY bytes, after
it at most the largest client frame plus the BATCH prefix. A length outside them, an unknown
kind, or a body whose fields do not add up to its length is a LinkError and the connection is
closed: a peer can never make the receive buffer grow beyond one frame.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Callable
from dataclasses import dataclass

from iggy.protocol.batch import BATCH_BASE_OFFSET_AT, BATCH_COUNT_AT, BATCH_HEADER_SIZE, BATCH_LENGTH_AT
from iggy.protocol.wire import DEFAULT_MAX_FRAME_SIZE, receive_buffer

CHALLENGE, HELLO, WELCOME, BATCH, COMMIT, ACK = 1, 2, 3, 4, 5, 6
EPOCHS, EPOCHS_END, TRUNCATE, FETCH, SUFFIX, IN_SYNC, RETAIN = 7, 8, 9, 10, 11, 12, 13
KINDS = frozenset(
    {CHALLENGE, HELLO, WELCOME, BATCH, COMMIT, ACK, EPOCHS, EPOCHS_END, TRUNCATE, FETCH, SUFFIX, IN_SYNC, RETAIN}
)
CATCHING_UP = 0x01  # EPOCHS_END flag

PREFIX = struct.Struct("<IBQ")  # length, kind, epoch
PREFIX_LEN = PREFIX.size  # 13
NONCE_LEN = 16
MAC_LEN = 32
NO_MAC = bytes(MAC_LEN)

PARTITION = struct.Struct("<III")  # stream, topic, partition
BATCH_HEAD = struct.Struct("<IIIQ")  # stream, topic, partition, commit
COMMIT_BODY = BATCH_HEAD
ACK_BODY = struct.Struct("<IIIQQH")  # stream, topic, partition, end, synced end, status
EPOCHS_HEAD = struct.Struct("<IIIQI")  # stream, topic, partition, end, record count
EPOCH_RECORD = struct.Struct("<QQ")  # epoch, start offset
TRUNCATE_BODY = COMMIT_BODY  # stream, topic, partition, offset
RETAIN_BODY = COMMIT_BODY  # stream, topic, partition, start
FETCH_BODY = struct.Struct("<IIIQQ")  # stream, topic, partition, from, to
HELLO_HEAD = struct.Struct("<I16sB")  # replica_id, nonce, name length
WELCOME_BODY = struct.Struct("<I32s")  # leader replica_id, mac
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")

HANDSHAKE_MAX_BODY = HELLO_HEAD.size + 255 + MAC_LEN
MAX_BODY = DEFAULT_MAX_FRAME_SIZE + BATCH_HEAD.size


Body = bytes | bytearray  # a frame's body


class LinkError(Exception):
    """The peer broke the link's rules: the connection is closed and the reason logged."""


@dataclass(frozen=True, slots=True)
class Frame:
    kind: int
    epoch: int
    body: Body  # a large body (a batch) is the bytearray it was received into


def encode(kind: int, epoch: int, *body: bytes | bytearray | memoryview) -> list[bytes | bytearray | memoryview]:
    """The frame as buffers for writelines(): the 13-byte prefix, then the body parts as given
    (a batch is sent without being joined to its prefix)."""
    size = sum(len(part) for part in body)
    return [PREFIX.pack(9 + size, kind, epoch), *body]


def frame_bytes(kind: int, epoch: int, *body: bytes | bytearray | memoryview) -> bytes:
    return b"".join(encode(kind, epoch, *body))


SMALL_BODY = 1 << 16  # a body up to this is cut out of the decoder's scratch buffer (one copy)
SCRATCH = 1 << 18  # the scratch buffer for small frames
READ_AHEAD = 1 << 14  # at most this is read into it at once: a large body's first bytes are copied


class FrameDecoder:
    """Cuts frames out of a byte stream, holding at most one frame's bytes (plus what one read
    brings). `limit` is the largest body accepted: HANDSHAKE_MAX_BODY until `authenticated()`;
    until then `cut` cuts one frame at a time and leaves what follows buffered (a peer may send
    right after its last handshake frame; those frames are cut under the larger limit).

    Bytes come in through `buffer()` / `filled(n)`: a protocol reads into the buffer the decoder
    hands out (iggy.cluster.replica_link.Connection). Small frames are read into a scratch
    buffer and copied out when cut; a larger body (a batch) is received into a bytearray of its
    own, allocated once its prefix is read, which becomes the frame's body: the bytes of a batch
    are never copied between the socket and the log. `feed(data)` copies bytes read elsewhere in
    the same way (tests)."""

    def __init__(self) -> None:
        self._buf = bytearray(SCRATCH)
        self._start = 0  # the first byte not cut into a frame yet
        self._end = 0  # the end of what was read into the scratch buffer
        self._body: bytearray | None = None  # a large body being received
        self._filled = 0  # bytes of it received
        self._kind = 0
        self._epoch = 0
        self.limit = HANDSHAKE_MAX_BODY
        self.handshake = True

    def authenticated(self) -> None:
        self.limit = MAX_BODY
        self.handshake = False

    @property
    def pending(self) -> int:
        """Bytes received and not yet cut into a frame."""
        large = PREFIX_LEN + self._filled if self._body is not None else 0
        return self._end - self._start + large

    def buffer(self) -> memoryview:
        """Where the next read goes (never empty): the rest of a large body under way, else the
        free end of the scratch buffer, at most READ_AHEAD bytes of it (a batch behind the prefix
        of its frame is mostly read into its own buffer, not copied there from the scratch)."""
        if self._body is not None:
            return memoryview(self._body)[self._filled :]
        if self._end == len(self._buf):
            # what is not cut yet moves to the front (cut frames are copies: nothing refers to it)
            n = self._end - self._start
            if n == len(self._buf):
                raise LinkError(f"{n} bytes received and not cut into frames")
            self._buf[:n] = self._buf[self._start : self._end]
            self._start, self._end = 0, n
        return memoryview(self._buf)[self._end : self._end + READ_AHEAD]

    def filled(self, n: int) -> None:
        """`n` bytes were read into the last `buffer()`."""
        if self._body is not None:
            self._filled += n
        else:
            self._end += n

    def cut(self) -> list[Frame]:
        """The frames complete in what was received (at most one during the handshake)."""
        frames: list[Frame] = []
        body = self._body
        if body is not None:
            if self._filled < len(body):
                return frames
            frames.append(Frame(self._kind, self._epoch, body))
            self._body = None
            if self.handshake:
                return frames
        buf, pos, end = self._buf, self._start, self._end
        while end - pos >= PREFIX_LEN:
            length, kind, epoch = PREFIX.unpack_from(buf, pos)
            if length < 9 or length - 9 > self.limit:
                raise LinkError(f"frame length {length} outside 9..{9 + self.limit}")
            if kind not in KINDS:
                raise LinkError(f"unknown frame kind {kind}")
            size = length - 9
            if size > SMALL_BODY:
                # received into a buffer of its own: what came with the prefix goes there first
                body = receive_buffer(size)  # not zeroed: it is handed on only once filled
                have = min(size, end - pos - PREFIX_LEN)
                body[:have] = memoryview(buf)[pos + PREFIX_LEN : pos + PREFIX_LEN + have]  # one copy
                pos += PREFIX_LEN + have
                if have < size:
                    self._body, self._filled, self._kind, self._epoch = body, have, kind, epoch
                    break
                frames.append(Frame(kind, epoch, body))
            else:
                stop = pos + PREFIX_LEN + size
                if end < stop:
                    break
                frames.append(Frame(kind, epoch, bytes(buf[pos + PREFIX_LEN : stop])))
                pos = stop
            if self.handshake:
                break
        if pos == end:
            pos = end = 0
        self._start, self._end = pos, end
        return frames

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        """Bytes read elsewhere, copied in; the frames they complete (at most one during the
        handshake, as `cut`)."""
        frames = self.cut()
        view = memoryview(data)
        while view:
            target = self.buffer()
            n = min(len(target), len(view))
            target[:n] = view[:n]
            self.filled(n)
            view = view[n:]
            if not (self.handshake and frames):
                frames += self.cut()
        return frames


# ------------------------------------------------------------------------ bodies


def hello_body(replica_id: int, nonce: bytes, cluster: str, mac: bytes) -> bytes:
    name = cluster.encode()
    if len(name) > 255:
        raise ValueError("cluster name longer than 255 bytes")
    return HELLO_HEAD.pack(replica_id, nonce, len(name)) + name + mac


def read_hello(body: Body) -> tuple[int, bytes, str, bytes]:
    """(replica_id, nonce, cluster name, mac)."""
    if len(body) < HELLO_HEAD.size + MAC_LEN:
        raise LinkError(f"hello of {len(body)} bytes")
    replica_id, nonce, n = HELLO_HEAD.unpack_from(body)
    if len(body) != HELLO_HEAD.size + n + MAC_LEN:
        raise LinkError(f"hello of {len(body)} bytes with a name of {n}")
    try:
        name = body[HELLO_HEAD.size : HELLO_HEAD.size + n].decode()
    except UnicodeDecodeError as exc:
        raise LinkError("hello with a cluster name that is not UTF-8") from exc
    return replica_id, nonce, name, bytes(body[-MAC_LEN:])


def read_challenge(body: Body) -> bytes:
    if len(body) != NONCE_LEN:
        raise LinkError(f"challenge of {len(body)} bytes")
    return bytes(body)


def read_welcome(body: Body) -> tuple[int, bytes]:
    if len(body) != WELCOME_BODY.size:
        raise LinkError(f"welcome of {len(body)} bytes")
    leader_id, mac = WELCOME_BODY.unpack(body)
    return leader_id, mac


def read_batch(body: Body, empty: bool = False) -> tuple[tuple[int, int, int], int, list[memoryview]]:
    """((stream, topic, partition), commit, the batches): their own lengths must fill the rest
    exactly. `empty`: no batch at all is allowed (a SUFFIX)."""
    if len(body) < BATCH_HEAD.size + (0 if empty else BATCH_HEADER_SIZE):
        raise LinkError(f"batch frame of {len(body)} bytes")
    s, t, p, commit = BATCH_HEAD.unpack_from(body)
    rest = memoryview(body)[BATCH_HEAD.size :]
    batches = []
    pos = 0
    while pos < len(rest):
        if len(rest) - pos < BATCH_HEADER_SIZE:
            raise LinkError(f"{len(rest) - pos} bytes after the batches of a batch frame")
        (declared,) = _U64.unpack_from(rest, pos + BATCH_LENGTH_AT)
        if declared < BATCH_HEADER_SIZE or declared > len(rest) - pos:
            raise LinkError(f"batch declares {declared} bytes, the frame carries {len(rest) - pos}")
        batches.append(rest[pos : pos + declared])
        pos += declared
    return (s, t, p), commit, batches


def batch_base_offset(batch: bytes | memoryview) -> int:
    return int(_U64.unpack_from(batch, BATCH_BASE_OFFSET_AT)[0])


def batch_count(batch: bytes | memoryview) -> int:
    return int(_U32.unpack_from(batch, BATCH_COUNT_AT)[0])


def read_commit(body: Body) -> tuple[tuple[int, int, int], int]:
    if len(body) != COMMIT_BODY.size:
        raise LinkError(f"commit frame of {len(body)} bytes")
    s, t, p, commit = COMMIT_BODY.unpack(body)
    return (s, t, p), commit


def read_ack(body: Body) -> tuple[tuple[int, int, int], int, int, int]:
    """((stream, topic, partition), end, synced end, status)."""
    if len(body) != ACK_BODY.size:
        raise LinkError(f"ack of {len(body)} bytes")
    s, t, p, end, synced, status = ACK_BODY.unpack(body)
    if synced > end:
        raise LinkError(f"ack with synced end {synced} above its end {end}")
    return (s, t, p), end, synced, status


def epochs_body(key: tuple[int, int, int], end: int, records: list[tuple[int, int]]) -> bytes:
    return EPOCHS_HEAD.pack(*key, end, len(records)) + b"".join(EPOCH_RECORD.pack(e, s) for e, s in records)


def read_epochs(body: Body) -> tuple[tuple[int, int, int], int, list[tuple[int, int]]]:
    """((stream, topic, partition), end, [(epoch, start)])."""
    if len(body) < EPOCHS_HEAD.size:
        raise LinkError(f"epochs frame of {len(body)} bytes")
    s, t, p, end, n = EPOCHS_HEAD.unpack_from(body)
    if len(body) != EPOCHS_HEAD.size + n * EPOCH_RECORD.size:
        raise LinkError(f"epochs frame of {len(body)} bytes with {n} records")
    records = [EPOCH_RECORD.unpack_from(body, EPOCHS_HEAD.size + i * EPOCH_RECORD.size) for i in range(n)]
    return (s, t, p), end, records


def epochs_end_body(catching_up: bool) -> bytes:
    return bytes([CATCHING_UP if catching_up else 0])


def read_epochs_end(body: Body) -> bool:
    """True when the follower is catching up (counts toward no majority yet)."""
    if len(body) != 1 or body[0] & ~CATCHING_UP:
        raise LinkError(f"epochs-end frame of {len(body)} bytes, flags {body[:1].hex()}")
    return bool(body[0] & CATCHING_UP)


def read_in_sync(body: Body) -> None:
    if body:
        raise LinkError(f"in-sync frame of {len(body)} bytes")


def read_fetch(body: Body) -> tuple[tuple[int, int, int], int, int]:
    if len(body) != FETCH_BODY.size:
        raise LinkError(f"fetch frame of {len(body)} bytes")
    s, t, p, start, end = FETCH_BODY.unpack(body)
    return (s, t, p), start, end


# ------------------------------------------------------------------------ handshake macs


def hello_mac(
    secret: bytes | None, cluster: str, epoch: int, replica_id: int, leader_nonce: bytes, nonce: bytes
) -> bytes:
    if secret is None:
        return NO_MAC
    msg = b"iggy-replica-hello" + cluster.encode() + _U64.pack(epoch) + _U32.pack(replica_id) + leader_nonce + nonce
    return hmac.new(secret, msg, hashlib.sha256).digest()


def welcome_mac(
    secret: bytes | None, cluster: str, epoch: int, leader_id: int, follower_nonce: bytes, leader_nonce: bytes
) -> bytes:
    if secret is None:
        return NO_MAC
    msg = (
        b"iggy-replica-welcome"
        + cluster.encode()
        + _U64.pack(epoch)
        + _U32.pack(leader_id)
        + follower_nonce
        + leader_nonce
    )
    return hmac.new(secret, msg, hashlib.sha256).digest()


def macs_equal(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)


class Epochs:
    """The highest epoch this node has seen (from etcd or from a peer's frame).

    `check(epoch)` refuses a frame from an older epoch (LinkError); a newer one raises the
    highest seen and calls `on_newer(epoch)` (the leader steps down: someone won a later election).
    """

    def __init__(self, on_newer: Callable[[int], None] | None = None) -> None:
        self.highest = 0
        self._on_newer = on_newer

    def saw(self, epoch: int) -> bool:
        """Record an epoch learnt elsewhere (the election); True when it is newer."""
        if epoch > self.highest:
            self.highest = epoch
            return True
        return False

    def check(self, epoch: int) -> None:
        if epoch < self.highest:
            raise LinkError(f"frame of epoch {epoch}, below the highest seen ({self.highest})")
        if self.saw(epoch) and self._on_newer is not None:
            self._on_newer(epoch)
