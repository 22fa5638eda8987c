"""Stored consumer offsets of a cluster in etcd: the leader's fenced writes, a new leader's load.

Keys under `cluster.etcd.prefix` (docs/CLUSTER.md, "Consumer offsets through etcd")::

    offsets/<stream>/<topic>/<partition>/<kind>/<key>   the offset, in decimal

ids, not names; <kind> is `consumers` or `groups` and <key> the key the partition's own store
uses (iggy.storage.consumer_offsets: the numeric consumer id, XXH32 of a consumer's name, the
group id). One key per consumer and partition, overwritten: never a growing log like `meta/`.

The leader stores an offset in its partition's store first, as a single node does, then queues
the key's new value (or its deletion) here. One task writes what is queued, every key's latest
value only (a value queued while the previous one is in flight replaces what waits, never
what flies), up to MAX_TXN_OPS keys per etcd transaction, each transaction fenced like a
`meta/` write: "if `leader` still has create_revision = my epoch and `meta/<next index>` does
not exist". The first compare refuses a deposed leader's write; the second orders the write
after the metadata it was validated against, so a write racing the deletion of its stream,
topic, partition or group (whose keys the leader deletes right after committing the change,
`forget`) cannot land after that deletion. An explicit STORE_CONSUMER_OFFSET or
DELETE_CONSUMER_OFFSET waits for the write that carries its value (58 if it failed); an
auto-commit of a poll does not wait. A write that etcd did not answer is tried again (the
latest value) until it lands or the node stops leading; a refused one ends the queue and makes
the node stop serving until it has caught up again (`lost`).

A node that wins an election loads every key under `offsets/` into its partitions' stores
before it serves (`load`, called where it catches up with `meta/`): afterwards each partition
holds exactly what etcd holds for it (a local offset etcd does not have is deleted), and the
keys of partitions or groups that no longer exist are deleted from etcd.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import aetcd.utils

from iggy.cluster.etcd import Etcd, EtcdUnavailable
from iggy.cluster.metalog import EtcdThread, NotAccepted, meta_key
from iggy.metadata.state import Record
from iggy.storage.consumer_offsets import CONSUMER, GROUP
from iggy.tasks import cancel_and_wait

if TYPE_CHECKING:
    from iggy.control.plane import ControlPlane

log = logging.getLogger(__name__)

# (stream, topic, partition, kind, key): one stored offset
Key = tuple[int, int, int, str, int]
# a Key or a leading part of one: what a deleted stream, topic, partition or group owned
Scope = tuple[int | str, ...]

MAX_TXN_OPS = 64  # etcd refuses transactions of more than 128 operations by default
RETRY = 0.1  # seconds before a write etcd did not answer is tried again
KINDS = (CONSUMER, GROUP)


def key_bytes(prefix: bytes, scope: Scope) -> bytes:
    """The etcd key of a whole Key; of a shorter scope, the prefix of its keys (ending in `/`)."""
    path = b"/".join(str(part).encode() for part in scope)
    return prefix + b"offsets/" + path + (b"" if len(scope) == 5 else b"/")


def parse_key(prefix: bytes, raw: bytes) -> Key | None:
    parts = raw[len(prefix) + len(b"offsets/") :].decode(errors="replace").split("/")
    if len(parts) != 5 or parts[3] not in KINDS:
        return None
    try:
        return int(parts[0]), int(parts[1]), int(parts[2]), parts[3], int(parts[4])
    except ValueError:
        return None


def scopes_of(plane: ControlPlane, record: Record) -> list[Scope]:
    """The offsets a metadata change removes with what it deletes or purges (empty for others)."""
    op = record["op"]
    if op in ("stream.delete", "stream.purge"):
        return [(record["id"],)]
    if op in ("topic.delete", "topic.purge"):
        return [(record["stream"], record["id"])]
    if op == "partitions.delete":
        return [(record["stream"], record["topic"], pid) for pid in record["ids"]]
    if op == "group.delete":
        topic = plane.meta.state.streams[record["stream"]].topics[record["topic"]]
        return [(record["stream"], record["topic"], pid, GROUP, record["id"]) for pid in topic.partitions]
    return []


def _within(key: Key, scopes: Iterable[Scope]) -> bool:
    return any(key[: len(s)] == s for s in scopes)


class OffsetLog:
    def __init__(
        self,
        etcd: Etcd,
        prefix: str,
        plane: ControlPlane,
        epoch: Callable[[], int],
        writer: Callable[[], EtcdThread | None],
        lost: Callable[[], None],
    ):
        self.etcd = etcd  # the main loop's client of the queued writes and the load
        self.prefix = prefix.encode()
        self.plane = plane
        self.epoch = epoch  # the epoch this node serves in as leader, 0 when it does not
        self.writer = writer  # the metadata writer's thread, for the deletes that follow a change
        self.lost = lost  # a fenced write was refused: stop serving until caught up again
        self._epoch = 0  # the epoch of what is queued
        self._dirty: dict[Key, int | None] = {}  # latest value (None: delete) not yet in flight
        self._waiters: dict[Key, list[asyncio.Future[None]]] = {}
        self._forgotten: list[Scope] = []  # scopes deleted while a write was in flight
        self._task: asyncio.Task[None] | None = None

    # ---------------------------------------------------------------- the leader

    def stored(self, key: Key, offset: int, wait: bool) -> Awaitable[None] | None:
        """After the partition's own store: queue the key's new value; with `wait`, an awaitable
        done when etcd holds it (NotAccepted, 58, when the write failed)."""
        return self._queue(key, offset, wait)

    def deleted(self, key: Key) -> Awaitable[None] | None:
        """After the partition's own delete: queue the key's deletion, awaitable as `stored`."""
        return self._queue(key, None, True)

    def forget(self, record: Record) -> None:
        """On the leader, right after committing a metadata change: delete the keys of what it
        deleted or purged (fenced, waiting for etcd like the change itself). Nothing queued for
        them is written any more. If etcd refuses or does not answer, the node stops serving
        until it has caught up again, and the load then deletes the keys that are left."""
        scopes = scopes_of(self.plane, record)
        if not scopes:
            return
        for key in [k for k in self._dirty if _within(k, scopes)]:
            del self._dirty[key]
            for waiter in self._waiters.pop(key, ()):
                if not waiter.done():
                    waiter.set_result(None)  # stored, then deleted with its partition
        if self._task is not None and not self._task.done():
            self._forgotten.extend(scopes)
        epoch, writer = self.epoch(), self.writer()
        try:
            if not epoch or writer is None:
                raise NotAccepted("this node is not the leader")
            for start in range(0, len(scopes), MAX_TXN_OPS):
                chunk = scopes[start : start + MAX_TXN_OPS]
                done, holder = writer.call(self._txn([(s, None) for s in chunk], epoch, None))
                if not done:
                    raise NotAccepted(f"etcd refused the write: epoch {epoch} is over (leader key epoch {holder})")
        except (NotAccepted, EtcdUnavailable) as exc:
            log.warning("cluster: stored offsets of %s %s not deleted (%s)", record["op"], scopes[:3], exc)
            self.lost()

    def _queue(self, key: Key, value: int | None, wait: bool) -> Awaitable[None] | None:
        epoch = self.epoch()
        if epoch != self._epoch:
            self._reset(epoch, "a new epoch")
        if not epoch:
            if wait:
                raise NotAccepted("this node is not the leader")
            return None
        self._dirty.pop(key, None)
        self._dirty[key] = value
        waiter: asyncio.Future[None] | None = None
        if wait:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.setdefault(key, []).append(waiter)
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._write())
        return waiter

    def _reset(self, epoch: int, why: str) -> None:
        """Drop everything queued (the node stopped leading or leads in a new epoch)."""
        self._epoch = epoch
        self._dirty.clear()
        waiters, self._waiters = self._waiters, {}
        for futures in waiters.values():
            for waiter in futures:
                if not waiter.done():
                    waiter.set_exception(NotAccepted(f"offset not written to etcd: {why}"))

    async def _write(self) -> None:
        while self._dirty:
            epoch = self._epoch
            if self.epoch() != epoch:
                self._reset(self.epoch(), "this node stopped leading")
                return
            batch: list[tuple[Key, int | None]] = []
            waiters: dict[Key, list[asyncio.Future[None]]] = {}
            for key in list(self._dirty)[:MAX_TXN_OPS]:
                batch.append((key, self._dirty.pop(key)))
                waiters[key] = self._waiters.pop(key, [])
            applied = self.plane.meta.state.cluster_index
            self._forgotten = []
            try:
                done, holder = await self.etcd.call(self._txn(batch, epoch, applied))
                if self._epoch != epoch:  # dropped meanwhile (a new election): so is this batch
                    self._settle(waiters, NotAccepted("offset not written to etcd: a new epoch"))
                    continue
            except EtcdUnavailable as exc:
                if self._epoch != epoch:
                    self._settle(waiters, NotAccepted("offset not written to etcd: a new epoch"))
                    continue
                log.debug("cluster: offsets not confirmed by etcd (%s); again in %s s", exc, RETRY)
                self._settle(waiters, NotAccepted(f"offset not confirmed by etcd: {exc}"))
                self._requeue(batch, {})
                await asyncio.sleep(RETRY)
                continue
            if done:
                self._settle(waiters, None)
            elif holder != epoch:
                log.warning("cluster: offsets refused by etcd: epoch %d is over (leader key epoch %d)", epoch, holder)
                self._settle(waiters, NotAccepted(f"this node is no longer the leader (epoch {epoch})"))
                self._reset(0, "this node is no longer the leader")
                self.lost()
                return
            elif self.plane.meta.state.cluster_index == applied:
                log.warning("cluster: meta/%d exists, not applied here: offsets wait for the catch-up", applied + 1)
                self._settle(waiters, NotAccepted("this node is behind the metadata log"))
                self._reset(0, "behind the metadata log")
                self.lost()
                return
            else:  # a metadata change committed meanwhile: write again what it did not delete
                self._requeue(batch, waiters)
        self._forgotten = []

    def _requeue(self, batch: list[tuple[Key, int | None]], waiters: dict[Key, list[asyncio.Future[None]]]) -> None:
        """Put back the values of a batch that did not land, unless a newer value or a deletion
        of their scope came meanwhile (the waiters go with the newer value)."""
        for key, value in batch:
            if _within(key, self._forgotten):
                self._settle({key: waiters.get(key, [])}, None)
                continue
            if key not in self._dirty:
                self._dirty = {key: value, **self._dirty}  # ahead of what came after it
            self._waiters[key] = waiters.get(key, []) + self._waiters.get(key, [])

    @staticmethod
    def _settle(waiters: dict[Key, list[asyncio.Future[None]]], error: Exception | None) -> None:
        for futures in waiters.values():
            for waiter in futures:
                if waiter.done():
                    continue
                if error is None:
                    waiter.set_result(None)
                else:
                    waiter.set_exception(error)

    def _txn(
        self, ops: Sequence[tuple[Scope, int | None]], epoch: int, applied: int | None
    ) -> Callable[[Any], Awaitable[tuple[bool, int]]]:
        """One transaction: put (a value) or delete (None) each scope, fenced on `epoch` and,
        with `applied`, on `meta/<applied + 1>` not existing. (succeeded, the leader key's epoch)."""
        leader = self.prefix + b"leader"
        prefix = self.prefix

        async def run(client: Any) -> tuple[bool, int]:
            t = client.transactions
            compare = [t.create(leader) == epoch]
            if applied is not None:
                compare.append(t.create(meta_key(prefix, applied + 1)) == 0)
            success = []
            for scope, value in ops:
                raw = key_bytes(prefix, scope)
                if value is not None:
                    success.append(t.put(raw, str(value).encode()))
                elif len(scope) == 5:
                    success.append(t.delete(raw))
                else:
                    success.append(t.delete(raw, aetcd.utils.prefix_range_end(raw)))
            done, responses = await client.transaction(compare=compare, success=success, failure=[t.get(leader)])
            holder = 0 if done or not responses[0] else responses[0][0][1].create_revision
            return bool(done), epoch if done else holder

        return run

    # ---------------------------------------------------------------- a new leader

    async def load(self, epoch: int) -> None:
        """Every key under `offsets/` into the partitions' stores, which then hold exactly what
        etcd holds; keys of partitions or groups that no longer exist are deleted (fenced on
        `epoch`). EtcdUnavailable when etcd does not answer or refuses the deletion."""
        self._reset(0, "a new election")
        start = self.prefix + b"offsets/"
        kvs = await self.etcd.get_all(start, aetcd.utils.prefix_range_end(start))
        wanted: dict[tuple[int, int, int], dict[tuple[str, int], int]] = {}
        stale: list[Scope] = []
        streams = self.plane.meta.state.streams
        for kv in kvs or ():
            key = parse_key(self.prefix, kv.key)
            if key is None:
                log.warning("cluster: %r is not a stored offset's key; left alone", kv.key)
                continue
            sid, tid, pid, kind, ident = key
            topic = streams[sid].topics.get(tid) if sid in streams else None
            if topic is None or pid not in topic.partitions or (kind == GROUP and ident not in topic.groups):
                stale.append(key)
                continue
            try:
                offset = int(kv.value)
            except ValueError:
                log.warning("cluster: %r holds %r, not an offset; left alone", kv.key, kv.value[:32])
                continue
            wanted.setdefault((sid, tid, pid), {})[(kind, ident)] = offset
        for (sid, tid, pid), partition in list(self.plane.storage.partitions.items()):
            want = wanted.get((sid, tid, pid), {})
            with partition.lock:
                if partition.log.closed:
                    continue
                have = partition.offsets.offsets
                try:
                    for kind, ident in have.keys() - want.keys():
                        partition.offsets.delete(kind, ident)
                    for (kind, ident), offset in want.items():
                        if have.get((kind, ident)) != offset:
                            partition.offsets.store(kind, ident, offset)
                except Exception as exc:  # broad on purpose: one partition's disk, the rest goes on
                    log.error("cluster: stored offsets of partition %d/%d/%d not loaded: %s", sid, tid, pid, exc)
        for first in range(0, len(stale), MAX_TXN_OPS):
            chunk = stale[first : first + MAX_TXN_OPS]
            done, holder = await self.etcd.call(self._txn([(k, None) for k in chunk], epoch, None))
            if not done:
                raise EtcdUnavailable(f"epoch {epoch} is over (leader key epoch {holder})")
        count = sum(len(w) for w in wanted.values())
        log.info("cluster: loaded %d stored offsets from etcd (%d stale keys deleted)", count, len(stale))

    async def close(self) -> None:
        self._reset(0, "the node stops")
        await cancel_and_wait((self._task,))
        await self.etcd.close()
