"""Messages on the portable engine: send, poll, and consumer offsets.

The per-message work (checksums, stamping, index seek, slicing batches) is done by the
Cython core (`iggy.protocol.batch`, `iggy.storage.log`) without the GIL; this module only routes
one batch or one poll at a time, so no Python object is made per message.

On the uring engine these functions also run on the shard threads (the requests the C data
plane hands to Python) while the event loop changes the metadata and opens and drops
partitions. So a handler takes each piece of state once — the stream and topic objects, then
the Partition object — and keeps using that reference; a partition dropped meanwhile is seen
as its log being closed (checked under the partition's lock, which the drop takes to close
it) and answered with the not-found code of whatever went away (`vanished`), never by
reading the shared dictionaries again half-way.

Wire bodies (TCP.md 7.4, 8.1, 8.5, 8.6, 9.9, 9.12)::

    send     u32 metadata_length, Identifier stream, Identifier topic,
             Partitioning (u8 kind, u8 len, value), u32 messages_count, batch (256 + frames)
             -> u32 1, u32 stream, u32 topic, u32 partition, u64 base_offset
    poll     Consumer (u8 kind, Identifier), Identifier stream, Identifier topic,
             u8 has_partition, u32 partition, u8 strategy, u64 value, u32 count, u8 auto_commit
             -> u32 partition, u64 current_offset, u32 count, batches
    offsets  Consumer, Identifier stream, Identifier topic, u8 has_partition, u32 partition,
             [u64 offset (store)], [u8 ack (store, delete)]
             get -> u32 partition, u64 current_offset, u64 stored_offset (empty: none stored)
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Awaitable
from typing import TYPE_CHECKING, NamedTuple, TypeVar

from iggy._core.checksum import xxh32
from iggy.control import lookup
from iggy.control import permissions as perm
from iggy.control.clock import now_us
from iggy.control.lookup import Ident
from iggy.control.registry import command
from iggy.metadata.state import StreamMeta, TopicMeta
from iggy.protocol import codes
from iggy.protocol.batch import BATCH_HEADER_SIZE, validate_batch
from iggy.protocol.errors import ErrorCode, IggyError
from iggy.protocol.wire import Reader, Writer
from iggy.storage.consumer_offsets import CONSUMER, GROUP, consumer_key

if TYPE_CHECKING:
    from iggy.control.plane import ControlPlane, Session
    from iggy.storage.partitions import Partition

_T = TypeVar("_T")

# the body kinds (their home is iggy.protocol.codes), named here for the handlers and HTTP
CONSUMER_SINGLE, CONSUMER_GROUP = codes.CONSUMER_SINGLE, codes.CONSUMER_GROUP
PARTITION_BALANCED, PARTITION_ID, PARTITION_KEY = codes.PARTITION_BALANCED, codes.PARTITION_ID, codes.PARTITION_KEY
STRATEGY_OFFSET, STRATEGY_TIMESTAMP = codes.STRATEGY_OFFSET, codes.STRATEGY_TIMESTAMP
STRATEGY_FIRST, STRATEGY_LAST, STRATEGY_NEXT = codes.STRATEGY_FIRST, codes.STRATEGY_LAST, codes.STRATEGY_NEXT

_SEND_REPLY = struct.Struct("<IIIIQ")
_NO_OFFSET_TARGET = (ErrorCode.STREAM_ID_NOT_FOUND, ErrorCode.TOPIC_ID_NOT_FOUND, ErrorCode.CONSUMER_GROUP_ID_NOT_FOUND)
_POLL_HEAD = struct.Struct("<IQI")
_BATCH_LENGTH = struct.Struct("<Q")

# (stream id, topic id, partition id, base offset): where a batch was appended
Sent = tuple[int, int, int, int]
# (partition id, current offset, message count, batches): what a poll read
Polled = tuple[int, int, int, bytes]


class Consumer(NamedTuple):
    """Who polls or keeps an offset, and where: the consumer's kind (CONSUMER_SINGLE or
    CONSUMER_GROUP) and Identifier, and the partition it named (`partition_id` counts only
    when `has_partition`; a single consumer that names none uses partition 0)."""

    kind: int
    id: Ident
    has_partition: bool
    partition_id: int


# (stream, topic, consumer): what an offset command acts on
OffsetTarget = tuple[Ident, Ident, Consumer]


def choose_partition(plane: ControlPlane, s: StreamMeta, t: TopicMeta, kind: int, value: bytes) -> int:
    """The partition a batch goes to, by the SDK's partitioning kinds (SEMANTICS 4.3)."""
    if not t.partitions:
        raise IggyError(ErrorCode.NO_PARTITIONS)
    if kind == PARTITION_ID:
        if len(value) != 4:
            raise IggyError(ErrorCode.INVALID_KEY_VALUE_LENGTH)
        pid: int = struct.unpack("<I", value)[0]
        if pid not in t.partitions:
            raise IggyError(ErrorCode.PARTITION_NOT_FOUND)
        return pid
    ids = sorted(t.partitions)
    if kind == PARTITION_BALANCED:
        return ids[plane.storage.balanced_counter(s.id, t.id).next() % len(ids)]
    if kind == PARTITION_KEY:
        if not 1 <= len(value) <= 255:
            raise IggyError(ErrorCode.INVALID_KEY_VALUE_LENGTH)
        return ids[xxh32(value) % len(ids)]
    raise IggyError(ErrorCode.INVALID_COMMAND)


def vanished(plane: ControlPlane, s: StreamMeta, t: TopicMeta) -> IggyError:
    """The error for a request whose partition went away after `s` and `t` were resolved:
    the not-found code of the stream if it was deleted, else of the topic, else of the
    partition (1009/2010 whether they were named by id or by name, as upstream)."""
    if plane.meta.state.streams.get(s.id) is not s:
        return IggyError(ErrorCode.STREAM_ID_NOT_FOUND)
    if s.topics.get(t.id) is not t:
        return IggyError(ErrorCode.TOPIC_ID_NOT_FOUND)
    return IggyError(ErrorCode.PARTITION_NOT_FOUND)


def open_partition(plane: ControlPlane, s: StreamMeta, t: TopicMeta, pid: int) -> Partition:
    """The Partition (s, t, pid), looked up once; the not-found error when the storage does
    not hold it (dropped, or not opened yet by a create that is still running)."""
    partition = plane.storage.partition(s.id, t.id, pid)
    if partition is None:
        raise vanished(plane, s, t)
    return partition


def append_batch(
    plane: ControlPlane,
    s: StreamMeta,
    t: TopicMeta,
    pid: int,
    body: bytes,
    start: int,
    end: int,
    count: int,
    inline_fsync: bool = False,
) -> tuple[int, asyncio.Future[None] | None]:
    """Validate and append one batch; returns (base_offset, fsync future or None).

    inline_fsync: the caller is a shard thread (no event loop): a persisted topic's append is
    fsynced here, before this returns (Partition.after_append).

    The batch must fill body[start:end]: bytes after a well-formed batch are refused with
    InvalidCommand, as upstream does for SendMessages, the one command whose body has a
    stated length (core/server_common/src/send_messages.rs, admit_wire_request).
    """
    declared = _BATCH_LENGTH.unpack_from(body, start + 32)[0] if end - start >= BATCH_HEADER_SIZE else 0
    if BATCH_HEADER_SIZE <= declared < end - start:
        validate_batch(body, start, start + declared, count)
        raise IggyError(ErrorCode.INVALID_COMMAND, "bytes after the batch")
    validate_batch(body, start, end, count)
    partition = open_partition(plane, s, t, pid)
    replication = plane.cluster.replication if plane.cluster is not None else None
    if replication is not None and not replication.writable((s.id, t.id, pid), partition):
        # a new leader that has not reconciled this partition yet (iggy.cluster.replication)
        raise IggyError(ErrorCode.TRANSIENT_NOT_ACCEPTED, "the partition is being reconciled")
    with partition.lock:
        if partition.log.closed:  # dropped after the lookup
            raise vanished(plane, s, t)
        if replication is None:
            base_offset, appended = partition.log.append(body, start, end, now_us())
            return base_offset, partition.after_append(appended, end - start, inline=inline_fsync)
        # cluster mode: the stored batch (header as stored + the frames) goes to the followers;
        # the producer waits for a majority (iggy.cluster.replication). The frames are a view of
        # the request's body (a bytes object of its own, never reused): no copy of the batch
        head = bytearray(BATCH_HEADER_SIZE)
        base_offset, appended = partition.log.append(body, start, end, now_us(), head)
        synced = partition.after_append(appended, end - start)
        frames = memoryview(body)[start + BATCH_HEADER_SIZE : end]
        held = replication.replicate((s.id, t.id, pid), partition, head, frames, base_offset, appended)
        return base_offset, held if synced is None else asyncio.ensure_future(_both(synced, held))


# ------------------------------------------------------------------- request bodies


def read_offset_target(r: Reader) -> OffsetTarget:
    """`Consumer (u8 kind, Identifier), Identifier stream, Identifier topic, u8 has_partition,
    u32 partition`: the head of a poll and of every offset command."""
    kind = r.u8()
    if kind not in (CONSUMER_SINGLE, CONSUMER_GROUP):
        raise IggyError(ErrorCode.INVALID_COMMAND)
    consumer_id = r.identifier()
    sid, tid = r.identifier(), r.identifier()
    has_partition = r.bool()
    return sid, tid, Consumer(kind, consumer_id, has_partition, r.u32())


def read_send_metadata(r: Reader) -> tuple[lookup.Ident, lookup.Ident, int, bytes, int]:
    """(stream, topic, partitioning kind, value, count): the metadata section of a send, the
    same before 0.9 (iggy.protocol.classic); the messages follow at `r.position`."""
    metadata_length = r.u32()
    sid, tid = r.identifier(), r.identifier()
    kind = r.u8()
    value = r.take(r.u8())
    count = r.u32()
    if r.position != 4 + metadata_length:
        # upstream: a metadata section longer or shorter than its fields is InvalidCommand
        raise IggyError(ErrorCode.INVALID_COMMAND)
    return sid, tid, kind, value, count


def read_send(r: Reader) -> tuple[Ident, Ident, int, bytes, bytes, int, int, int]:
    """(stream, topic, partitioning kind, value, body, batch start, batch end, count)."""
    sid, tid, kind, value, count = read_send_metadata(r)
    return sid, tid, kind, value, r.data, r.position, len(r.data), count


def read_poll(r: Reader) -> tuple[Ident, Ident, Consumer, int, int, int, bool]:
    """(stream, topic, consumer, strategy, value, count, auto_commit); a count of 0 is refused
    here, before anything is looked up."""
    sid, tid, consumer = read_offset_target(r)
    strategy = r.u8()
    value = r.u64()
    count = r.u32()
    auto_commit = r.bool()
    if count == 0:
        raise IggyError(ErrorCode.INVALID_MESSAGES_COUNT)
    return sid, tid, consumer, strategy, value, count, auto_commit


def read_store_offset(r: Reader) -> tuple[Ident, Ident, Consumer, int]:
    target = read_offset_target(r)
    offset = r.u64()
    if r.remaining():
        r.u8()  # ack level: a single node always acknowledges after the write
    return (*target, offset)


# ------------------------------------------------------------------- send


def encode_sent(plane: ControlPlane, sent: Sent) -> bytes:
    return _SEND_REPLY.pack(1, *sent)


@command(codes.SEND_MESSAGES, needs=perm.SEND, decode=read_send, encode=encode_sent)
def send_messages(
    plane: ControlPlane,
    session: Session,
    s: StreamMeta,
    t: TopicMeta,
    kind: int,
    value: bytes,
    body: bytes,
    start: int,
    end: int,
    count: int,
) -> Sent | Awaitable[Sent]:
    """Route and append one batch: (stream id, topic id, partition id, base offset), or an
    awaitable of it when the topic acknowledges after the fsync."""
    pid = choose_partition(plane, s, t, kind, value)
    base_offset, synced = append_batch(plane, s, t, pid, body, start, end, count, inline_fsync=session.inline_fsync)
    sent = (s.id, t.id, pid, base_offset)
    if synced is None:
        return sent
    return _after(synced, sent)


async def _both(first: Awaitable[None], second: Awaitable[None]) -> None:
    """A persisted send in cluster mode: this node's fsync and the majority's."""
    await first
    await second


async def _after(fut: Awaitable[None], result: _T) -> _T:
    await fut
    return result


# ------------------------------------------------------------------- poll

FENCE_POLL = "poll"  # a group member may poll only a partition it owns and is not handing over
FENCE_COMMIT = "commit"  # it may store or delete the offset of any partition it owns


def target(
    plane: ControlPlane, session: Session, s: StreamMeta, t: TopicMeta, consumer: Consumer, fence: str | None
) -> tuple[Partition, str, int]:
    """(partition, offsets kind, offsets key) of a poll or an offset command, after its
    permission check: the consumer group and the caller's right to use the partition, then the
    partition. `fence` is FENCE_POLL, FENCE_COMMIT or None (reads); a group partition the caller
    may not use that way, member or not, is 5009 as upstream answers (the SDK re-syncs its
    assignment then). The partition may be dropped after this returns: its users check
    `partition.log.closed` under its lock."""
    kind, consumer_id, has_partition, partition_id = consumer
    if kind == CONSUMER_GROUP:
        g = lookup.get_group(t, consumer_id)
        if not has_partition:
            raise IggyError(ErrorCode.INVALID_IDENTIFIER)
        if fence and not plane.groups.fence((s.id, t.id, g.id), session, partition_id, fence == FENCE_POLL):
            raise IggyError(ErrorCode.CONSUMER_GROUP_PARTITION_NOT_OWNED)
        store_kind, key = GROUP, g.id
    else:
        store_kind, key = CONSUMER, consumer_key(consumer_id)
    partition = open_partition(plane, s, t, partition_id if has_partition else 0)
    return partition, store_kind, key


def start_offset(partition: Partition, strategy: int, value: int, count: int, stored: int | None) -> int | None:
    """Where a poll starts (SEMANTICS 5.1); None when nothing can match."""
    lg = partition.log
    if strategy == STRATEGY_OFFSET:
        return value
    if strategy == STRATEGY_TIMESTAMP:
        return lg.offset_for_timestamp(value)
    if strategy == STRATEGY_FIRST:
        return lg.first_offset
    if strategy == STRATEGY_LAST:
        return max(lg.first_offset, lg.current_offset - count + 1) if not lg.is_empty else 0
    if strategy == STRATEGY_NEXT:
        return lg.first_offset if stored is None else max(stored + 1, lg.first_offset)
    raise IggyError(ErrorCode.INVALID_COMMAND)


def encode_polled(plane: ControlPlane, polled: Polled) -> tuple[bytes, bytes]:
    pid, current, n, data = polled
    return _POLL_HEAD.pack(pid, current, n), data


@command(codes.POLL_MESSAGES, needs=perm.POLL, decode=read_poll, encode=encode_polled)
def poll_messages(
    plane: ControlPlane,
    session: Session,
    s: StreamMeta,
    t: TopicMeta,
    consumer: Consumer,
    strategy: int,
    value: int,
    count: int,
    auto_commit: bool,
    max_bytes: int | None = None,
) -> Polled:
    """(partition id, current offset, message count, batches bytes).

    The batches are at most max_bytes (default: what fits in the largest frame), or one
    batch. A count of 0 (only over HTTP: the binary decoder refuses it) reads nothing but
    still needs the partition to exist."""
    partition, store_kind, key = target(plane, session, s, t, consumer, FENCE_POLL if count else None)
    if plane.cluster is not None and not plane.cluster.replication.writable((s.id, t.id, partition.id), partition):
        # a new leader that has not reconciled this partition yet (iggy.cluster.replication)
        raise IggyError(ErrorCode.TRANSIENT_NOT_ACCEPTED, "the partition is being reconciled")
    with partition.lock:
        lg = partition.log
        if lg.closed:
            raise vanished(plane, s, t)
        if count == 0:
            return partition.id, lg.current_offset, 0, b""
        if store_kind == GROUP and not plane.groups.may_use((s.id, t.id, key), session, partition.id, True):
            # handed over since the fence above (see GroupCoordinator.may_use)
            raise IggyError(ErrorCode.CONSUMER_GROUP_PARTITION_NOT_OWNED)
        stored = partition.offsets.get(store_kind, key)
        start = start_offset(partition, strategy, value, count, stored)
        data, n = b"", 0
        current = lg.current_offset
        visible = plane.cluster.replication.visible_end((s.id, t.id, partition.id)) if plane.cluster else None
        if visible is not None and current >= visible:
            # cluster mode: nothing above the high-watermark (not yet held by a majority)
            current = visible - 1 if visible else 0
            if start is not None:
                count = min(count, max(0, visible - max(start, lg.first_offset)))
        if start is not None and count and not lg.is_empty and start <= current:
            first = max(start, lg.first_offset)
            # a reply never exceeds the largest frame: the rest comes with the next poll
            data, n = lg.read(first, count, max_bytes or plane.max_poll_bytes)
            last = first + n - 1
            if n and auto_commit and (stored is None or last > stored):
                # a failed auto-commit fails the poll with its code (3024 a new key beyond
                # limits.max_consumer_offsets, 3023/10006/10009 I/O), as upstream does
                partition.offsets.store(store_kind, key, last)
                if plane.cluster is not None:
                    # to etcd behind the reply, coalesced per key (iggy.cluster.offsets)
                    plane.cluster.offsets.stored((s.id, t.id, partition.id, store_kind, key), last, wait=False)
            if n and store_kind == GROUP:
                # what this member now has in flight (iggy.control.groups hands a partition
                # over only once its owner committed this far)
                partition.served.mark(key, last, session.client_id)
        return partition.id, current, n, data


# ------------------------------------------------------------------- consumer offsets


@command(codes.STORE_CONSUMER_OFFSET, needs=perm.POLL, decode=read_store_offset)
def store_consumer_offset(
    plane: ControlPlane, session: Session, s: StreamMeta, t: TopicMeta, consumer: Consumer, offset: int
) -> Awaitable[None] | None:
    """Store under the partition lock. The store raises OffsetStoreError, an IggyError, with
    the code of what failed: 3024 too_many_consumer_offsets, 3023
    cannot_open_consumer_offsets_file, 10006 cannot_write_to_file, 10009 cannot_sync_file. A
    group member's store is fenced (5009) and, once done, tells the group coordinator (a
    partition the member hands over may move then)."""
    partition, store_kind, key = target(plane, session, s, t, consumer, FENCE_COMMIT)
    with partition.lock:
        lg = partition.log
        if lg.closed:
            raise vanished(plane, s, t)
        if not _still_owner(plane, session, s, t, partition, store_kind, key):
            raise IggyError(ErrorCode.CONSUMER_GROUP_PARTITION_NOT_OWNED)
        if lg.is_empty or offset > lg.current_offset:
            raise IggyError(ErrorCode.INVALID_OFFSET)
        partition.offsets.store(store_kind, key, offset)
    if store_kind == GROUP:
        plane.groups.committed((s.id, t.id, key), session, partition.id)
    if plane.cluster is not None:
        # cluster mode: answered once etcd holds it too (iggy.cluster.offsets)
        return plane.cluster.offsets.stored((s.id, t.id, partition.id, store_kind, key), offset, wait=True)
    return None


def _still_owner(
    plane: ControlPlane, session: Session, s: StreamMeta, t: TopicMeta, partition: Partition, store_kind: str, key: int
) -> bool:
    """Under the partition lock: False when a group partition moved away from the caller since
    its fence."""
    return store_kind != GROUP or plane.groups.may_use((s.id, t.id, key), session, partition.id, False)


def read_delete_offset(r: Reader) -> OffsetTarget:
    target = read_offset_target(r)
    if r.remaining():
        r.u8()  # ack level
    return target


@command(codes.DELETE_CONSUMER_OFFSET, needs=perm.POLL, decode=read_delete_offset)
def delete_consumer_offset(
    plane: ControlPlane, session: Session, s: StreamMeta, t: TopicMeta, consumer: Consumer
) -> Awaitable[None] | None:
    partition, store_kind, key = target(plane, session, s, t, consumer, FENCE_COMMIT)
    with partition.lock:
        if partition.log.closed:
            raise vanished(plane, s, t)
        if not _still_owner(plane, session, s, t, partition, store_kind, key):
            raise IggyError(ErrorCode.CONSUMER_GROUP_PARTITION_NOT_OWNED)
        if not partition.offsets.delete(store_kind, key):
            raise IggyError(ErrorCode.CONSUMER_OFFSET_NOT_FOUND)
    if plane.cluster is not None:
        return plane.cluster.offsets.deleted((s.id, t.id, partition.id, store_kind, key))
    return None


def encode_offset(plane: ControlPlane, found: tuple[int, int, int]) -> bytes:
    return Writer().u32(found[0]).u64(found[1]).u64(found[2]).getvalue()


# a stream, topic or group that does not resolve has no offset: an empty body, as upstream
# (core/server/src/dispatch.rs, handle_get_consumer_offset); a missing partition of a topic
# that exists stays 3007
@command(codes.GET_CONSUMER_OFFSET, needs=perm.POLL, decode=read_offset_target, encode=encode_offset, missing=None)
def get_consumer_offset(
    plane: ControlPlane, session: Session, s: StreamMeta, t: TopicMeta, consumer: Consumer
) -> tuple[int, int, int] | None:
    """(partition id, current offset, stored offset), or None when none is stored."""
    try:
        partition, store_kind, key = target(plane, session, s, t, consumer, None)
    except IggyError as exc:
        if exc.code in _NO_OFFSET_TARGET:
            return None
        raise
    with partition.lock:
        stored = partition.offsets.get(store_kind, key)
        current = partition.log.current_offset
    if stored is None:
        return None
    return partition.id, current, stored
