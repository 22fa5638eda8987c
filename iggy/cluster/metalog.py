"""The cluster's metadata log in etcd: the leader's fenced writes, every node's in-order apply.

Keys under `cluster.etcd.prefix` (docs/CLUSTER.md, "Metadata through etcd")::

    meta/<index>   msgpack(record): a metadata record as the journal holds it (iggy.metadata.state:
                   `op` and every value the leader decided: ids, timestamps, password hashes)
                   plus `index`, without the journal's local `seq`. <index> is 1, 2, 3, ...
                   written as 20 decimal digits, so the keys sort in index order.
    snapshot       the header of the metadata as of an index, in parts under snapshot-parts/
                   (iggy.cluster.meta_snapshot); the keys below its meta/<below> are deleted
                   (iggy.cluster.compaction, which also keeps the nodes' `applied/<replica_id>`
                   keys).

Leader. `MetadataStore.commit` calls `replicate(record)` before it journals anything: it takes
the next index (the one after the last applied here, `state.cluster_index`) and writes the key
in one etcd transaction "if `leader` still has create_revision = my epoch and `meta/<index>`
does not exist". A deposed leader's transaction fails (another node's campaign re-created
`leader`), so its change is refused (58 TransientNotAccepted, the SDK's "go to the leader") and
committed nowhere. The write is synchronous: the control plane runs every metadata change on
its event loop from validation to commit without yielding (iggy.control.plane), and keeping
that is what keeps two changes from validating against the same state; so the transaction runs
on a thread of its own (its own event loop and etcd connection) while the main loop waits,
within the etcd deadline. The cost is one etcd round trip (its fsync included) per metadata
change, in which the main loop serves nothing else.

Every node. `catch_up()` reads `meta/` from the index after the last applied one to the end
and applies each record in index order through iggy.control.changes.apply_replicated (the same
storage effects as the leader's handler), journaling it with its index, so a restart resumes
where it stopped. A follower runs it when a watch on `meta/` reports a write and at every
election round (the safety net when the watch is down); a node that wins an election runs it to
the end before it serves (iggy.cluster.membership). When the record after its index was
compacted away (the first key left is past it), a node whose metadata is empty loads the
snapshot (`restore`, iggy.control.changes.install_snapshot) and goes on after its index; any
other node stops there with one error line, as for a record that does not apply.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any, NoReturn

import aetcd.utils
import msgpack

from iggy.cluster import meta_snapshot
from iggy.cluster.etcd import Etcd, EtcdUnavailable
from iggy.metadata.state import Record
from iggy.protocol.errors import ErrorCode, IggyError

log = logging.getLogger(__name__)

INDEX_DIGITS = 20  # u64 in decimal
WATCH_RENEW = 30.0  # seconds without an event after which the watch on meta/ is made again


def meta_key(prefix: bytes, index: int) -> bytes:
    return prefix + b"meta/" + str(index).zfill(INDEX_DIGITS).encode()


def encode(record: Record) -> bytes:
    return msgpack.packb({k: v for k, v in record.items() if k != "seq"}, use_bin_type=True)


def decode(value: bytes) -> Record:
    record = msgpack.unpackb(value, raw=False, strict_map_key=False)
    if (
        not isinstance(record, dict)
        or not isinstance(record.get("op"), str)
        or not isinstance(record.get("index"), int)
    ):
        raise ValueError("not a metadata record")
    return record


class NotAccepted(IggyError):
    """The leader's write of a record did not go through: nothing was committed anywhere."""

    def __init__(self, why: str):
        super().__init__(ErrorCode.TRANSIENT_NOT_ACCEPTED, why)


class Behind(Exception):
    """catch_up() could not apply every record up to the end of `meta/` (logged once per index)."""


class EtcdThread:
    """An Etcd client on a thread of its own, for calls the main loop must wait for."""

    def __init__(self, endpoints: list[str], timeout: float):
        self.etcd = Etcd(endpoints, timeout)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="iggy-etcd-meta", daemon=True)
        self.thread.start()

    def call(self, fn: Callable[[Any], Any]) -> Any:
        """`etcd.call(fn)` on the thread, blocking until it is done (EtcdUnavailable after the deadline)."""
        future = asyncio.run_coroutine_threadsafe(self.etcd.call(fn), self.loop)
        try:
            return future.result(self.etcd.timeout + 1.0)
        except TimeoutError as exc:
            future.cancel()
            raise EtcdUnavailable(f"etcd {self.etcd.endpoint}: no answer within {self.etcd.timeout} s") from exc

    def close(self) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self.etcd.close(), self.loop).result(2.0)
        except Exception:  # broad on purpose: stopping anyway
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(2.0)


class MetaLog:
    def __init__(
        self,
        etcd: Etcd,
        prefix: str,
        applied: Callable[[], int],
        apply: Callable[[Record], object],
        restore: Callable[[dict[str, Any]], object] | None = None,
    ):
        self.etcd = etcd  # the main loop's client (catch-up reads, the watch)
        self.writer: EtcdThread | None = None  # the leader's writes (set when the node starts)
        self.prefix = prefix.encode()
        self.applied = applied  # index of the last record applied here
        self.apply = apply  # a follower's commit of one record, with its storage effects
        # loads the snapshot {index, below, state} into an empty node (raises when it may not)
        self.restore = restore
        self._refused_at: int | None = None  # the index whose apply failed (logged once)

    # ---------------------------------------------------------------- the leader

    def write(self, record: Record, epoch: int) -> None:
        """Write `record` as the next `meta/<index>`, fenced on `epoch`; stamps record["index"].
        NotAccepted when etcd refused it (deposed, or this node is behind) or did not answer."""
        index = self.applied() + 1
        record["index"] = index
        key = meta_key(self.prefix, index)
        leader = self.prefix + b"leader"
        value = encode(record)

        async def fenced_put(client: Any) -> Any:
            txn = client.transactions
            return await client.transaction(
                compare=[txn.create(leader) == epoch, txn.create(key) == 0],
                success=[txn.put(key, value)],
                failure=[txn.get(leader), txn.get(key)],
            )

        if self.writer is None:
            raise NotAccepted("the cluster is not started")
        try:
            done, responses = self.writer.call(fenced_put)
        except EtcdUnavailable as exc:
            del record["index"]
            # the outcome is unknown: the record may be in etcd; the catch-up that follows finds it
            raise NotAccepted(f"metadata change {record['op']} not confirmed by etcd: {exc}") from None
        if done:
            return
        del record["index"]
        holder = responses[0][0][1].create_revision if responses[0] else 0
        if holder != epoch:
            log.warning(
                "cluster: metadata change %s refused by etcd: epoch %d is over (leader key epoch %d)",
                record["op"],
                epoch,
                holder,
            )
            raise NotAccepted(f"this node is no longer the leader (epoch {epoch})")
        log.warning("cluster: meta/%d exists already: this node is behind the metadata log", index)
        raise NotAccepted(f"meta/{index} exists already")

    # ---------------------------------------------------------------- every node

    async def catch_up(self) -> int:
        """Apply every record after the last applied one, in index order; the last index applied.
        EtcdUnavailable when etcd does not answer; Behind when a record is missing or does not
        apply here (this node then stays at the index before it and says why once). When the
        next record was compacted away, an empty node loads the snapshot first."""
        end = aetcd.utils.prefix_range_end(self.prefix + b"meta/")
        while True:
            start = meta_key(self.prefix, self.applied() + 1)
            kvs = await self._range(start, end)
            if kvs and kvs[0].key > start and await self._load_snapshot():
                continue  # now at the snapshot's index: read again after it
            break
        for kv in kvs or ():
            index = self.applied() + 1
            if kv.key != meta_key(self.prefix, index):
                if kv.key < meta_key(self.prefix, index):
                    continue  # applied meanwhile (this node's own write as leader)
                self._refuse(index, f"the next key is {kv.key!r}")
            try:
                record = decode(kv.value)
                if record["index"] != index:
                    raise ValueError(f"record of index {record['index']} under meta/{index}")
                self.apply(record)
            except Exception as exc:  # broad on purpose: this node stops here and says why, the rest goes on
                self._refuse(index, f"{type(exc).__name__}: {exc}")
        return self.applied()

    async def _range(self, start: bytes, end: bytes) -> Any:
        return await self.etcd.get_all(start, end)

    async def _load_snapshot(self) -> bool:
        """The record after this node's index is not in meta/: load the snapshot if that is
        because it was compacted (True), False when there is no snapshot past it (a gap, which
        the caller refuses); Behind when the node may not load it (its metadata is not empty)."""
        index = self.applied() + 1
        key = meta_snapshot.header_key(self.prefix)
        got = await self.etcd.call(lambda c: c.get(key))
        if got is None:
            return False
        try:
            header = meta_snapshot.decode_header(got.value)
        except Exception as exc:  # broad on purpose: a damaged snapshot stops this node, not the others
            self._refuse(index, f"the snapshot in etcd does not decode: {exc}")
        if header["below"] <= index:
            return False
        if self.restore is None:
            self._refuse(index, "it was compacted away and this node cannot load the snapshot")
        parts = await meta_snapshot.read_parts(self.etcd, self.prefix, header)
        try:
            snap = meta_snapshot.assemble(header, parts, self.prefix)
        except meta_snapshot.SnapshotMismatch as exc:
            again = await self.etcd.call(lambda c: c.get(key))
            if again is None or again.value != got.value:  # a newer snapshot: read that one next round
                raise EtcdUnavailable(f"the snapshot was replaced while it was read ({exc})") from exc
            self._refuse(index, f"the snapshot in etcd is damaged: {exc}")
        except Exception as exc:  # broad on purpose: a damaged snapshot stops this node, not the others
            self._refuse(index, f"the snapshot in etcd does not decode: {exc}")
        try:
            self.restore(snap)
        except Exception as exc:  # broad on purpose: as a record that does not apply
            self._refuse(
                index,
                f"meta/ was compacted up to index {snap['below'] - 1}; the snapshot (index {snap['index']}) "
                f"is not loaded: {exc}",
            )
        log.info("cluster: loaded the metadata snapshot of meta/ at index %d", snap["index"])
        self._refused_at = None
        return True

    def _refuse(self, index: int, why: str) -> NoReturn:
        if self._refused_at != index:
            log.error(
                "cluster: meta/%d cannot be applied here (%s); this node stays at index %d", index, why, index - 1
            )
            self._refused_at = index
        raise Behind(f"meta/{index}: {why}")

    async def watch(self, wake: Callable[[], None]) -> None:
        """Call `wake()` whenever `meta/` changes, until cancelled. The watch is made again after
        an error and after WATCH_RENEW seconds without an event (a watch on a connection that
        was dropped may never end by itself); between two watches the catch-up at every round
        is what applies the records."""
        key = self.prefix + b"meta/"
        while True:
            try:
                watch = await self.etcd.call(lambda c: c.watch_prefix(key))
                try:
                    wake()  # anything written while there was no watch
                    events = aiter(watch)
                    while True:
                        await asyncio.wait_for(anext(events), WATCH_RENEW)
                        wake()
                except TimeoutError:
                    continue
                finally:
                    try:
                        await asyncio.wait_for(watch.cancel(), 1.0)
                    except Exception:  # broad on purpose: the watch is gone either way
                        pass
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # broad on purpose: the per-round catch-up covers the gap
                log.debug("cluster: watch on meta/ ended (%s); again in 1 s", exc)
            await asyncio.sleep(1.0)
