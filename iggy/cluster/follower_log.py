"""A follower's side of log replication: the leader's batches appended to this node's partitions.

`FollowerLog` is the FollowerSink of iggy.cluster.replica_link. For each BATCH frame it appends
the batches to the partition with `PartitionLog.append_stored` (byte for byte, at exactly their
base offset; a gap or an overlap is refused with INVALID_OFFSET and nothing is written), and
records the leader's high-watermark (`commit`), which only grows. After each read of the link,
`acks()` answers one ACK per partition touched: its log end, its fsynced end and the status of
the first refusal (0 when every batch went in). A partition of a `persisted` topic is fsynced
first (one fdatasync per partition per read: group commit), so its synced end is its end; for
a `replicated` topic the synced end is what the last fsync (a sealed segment, shutdown) covered,
as far as this node knows.

A batch for a partition this node does not have (its metadata has not arrived yet) is answered
PARTITION_NOT_FOUND with end 0; the leader sends it again from the follower's end later.

Leader epochs (iggy.storage.leader_epochs): when the link is up, `offers()` gives the leader
every partition's end and epoch records (EPOCHS frames); the leader answers TRUNCATE with the
offset below which this copy equals its log, and `truncate` cuts the log there
(PartitionLog.truncate: an uncommitted suffix from an older epoch goes), records the link's
epoch from that offset and ACKs; only then does the leader send it batches. The records the
TRUNCATEs of one read of the link change are written together, in one pass
(iggy.storage.leader_epochs.write_all), before the ACKs of that read are sent (a batch appended
to a partition whose record is not written yet writes it first). A batch appended in
an epoch newer than the partition's last record adds a record at its base offset. `fetch`
serves a new leader that reconciles a partition (FETCH, answered with SUFFIX) from this log.

Retention: the leader alone decides what retention (and DELETE_SEGMENTS) removes; its RETAIN
says where its log starts now, and `retain` removes the same segments here, so every copy is
the leader's byte for byte over the same range.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from iggy.cluster.replica_frames import LinkError
from iggy.protocol.errors import ErrorCode, IggyError
from iggy.storage.leader_epochs import write_all
from iggy.storage.partitions import Partition

log = logging.getLogger(__name__)

Key = tuple[int, int, int]


class FollowerLog:
    def __init__(
        self, find: Callable[[int, int, int], Partition | None], keys: Callable[[], Iterable[Key]] = lambda: ()
    ):
        self._find = find
        self._keys = keys
        self.commits: dict[Key, int] = {}  # the leader's high-watermark per partition
        self.synced: dict[Key, int] = {}  # end offset covered by this node's last fsync
        self._touched: dict[Key, int] = {}  # partition -> status of its first refusal (0: none)
        self._reported: set[tuple[Key, int]] = set()
        # partitions whose epoch records a TRUNCATE changed in memory only: written together,
        # in one pass, before the ACKs that follow them (`_write_epochs`)
        self._unwritten: dict[Key, Partition] = {}

    def visible_end(self, key: Key) -> int:
        """Offsets below this may be served from this node's copy (the high-watermark)."""
        return self.commits.get(key, 0)

    def start(self) -> list[tuple[Key, int, list[tuple[int, int]]]]:
        """A new link to a leader: forget the last one's pending ACKs; (key, end, epoch records)
        of every partition this node has, for the EPOCHS frames."""
        self._touched.clear()
        self._write_epochs()
        offers = []
        for key in list(self._keys()):
            partition = self._find(*key)
            if partition is None:
                continue
            with partition.lock:
                if not partition.log.closed:
                    offers.append((key, partition.log.next_offset, list(partition.epochs.records)))
        return offers

    def truncate(self, key: Key, offset: int, epoch: int) -> None:
        """The leader's TRUNCATE: this copy equals its log below `offset`; what is past it goes."""
        partition = self._find(*key)
        if partition is None:
            self._touched[key] = ErrorCode.PARTITION_NOT_FOUND
            return
        status = 0
        with partition.lock:
            if partition.log.closed:
                status = ErrorCode.PARTITION_NOT_FOUND
            else:
                end = partition.log.next_offset
                cut = min(offset, end)
                try:
                    if cut < end:
                        partition.log.truncate(cut)
                        log.warning(
                            "replica of partition %s: dropped offsets %d..%d, not in the leader's log (epoch %d)",
                            "/".join(map(str, key)),
                            cut,
                            end - 1,
                            epoch,
                        )
                        self.synced[key] = min(self.synced.get(key, 0), cut)
                        if self.commits.get(key, 0) > cut:
                            self.commits[key] = cut
                    partition.epochs.truncate(cut, defer=True)
                    partition.epochs.record(epoch, cut, defer=True)
                    self._unwritten[key] = partition
                except (IggyError, OSError, ValueError) as exc:
                    # never ACK a copy that may still diverge: the link is dropped and the next
                    # one starts over (EPOCHS, TRUNCATE)
                    raise LinkError(
                        f"replica of partition {'/'.join(map(str, key))}: cannot cut at {cut}: {exc}"
                    ) from None
        self._touched[key] = status

    def retain(self, key: Key, start: int) -> None:
        """The leader's RETAIN: its log keeps nothing below `start`. This copy's sealed segments
        wholly below it go (their boundaries are the leader's: the same batches, the same
        segment size); a copy that ends below it (it missed what retention removed meanwhile:
        down for long, or a lost data directory) starts again, empty, at `start` and catches up
        from there."""
        partition = self._find(*key)
        if partition is None:
            self._touched.setdefault(key, ErrorCode.PARTITION_NOT_FOUND)
            return
        name = "/".join(map(str, key))
        with partition.lock:
            if partition.log.closed:
                return
            try:
                end = partition.log.next_offset
                if end < start:
                    partition.log.purge(start)
                    partition.epochs.clear()
                    self.synced[key] = start
                    log.warning(
                        "replica of partition %s: the leader keeps nothing below %d, this copy ended at %d: "
                        "it starts again at %d",
                        name,
                        start,
                        end,
                        start,
                    )
                else:
                    for base, last, _size, _ts, active in partition.log.segments():
                        if active or last >= start:
                            break
                        partition.log.delete_segment(base)
            except (IggyError, OSError, ValueError) as exc:
                raise LinkError(f"replica of partition {name}: cannot drop what is below {start}: {exc}") from None
        self._touched.setdefault(key, 0)

    def fetch(self, key: Key, start: int, end: int, max_bytes: int) -> bytes:
        """Stored batches of this log from `start` (a batch boundary) up to `end`, at most one
        bounded read; b"" when it cannot serve them."""
        partition = self._find(*key)
        if partition is None or end <= start:
            return b""
        try:
            with partition.lock:
                if partition.log.closed:
                    return b""
                data, n = partition.log.read(start, end - start, max_bytes)
        except IggyError as exc:
            log.error("replica of partition %s: cannot read %d for the leader: %s", key, start, exc)
            return b""
        return data if n else b""

    def batches(self, key: Key, commit: int, batches: list[memoryview], epoch: int = 0) -> None:
        status = self._touched.get(key, 0)
        partition = self._find(*key)
        if partition is None:
            status = status or ErrorCode.PARTITION_NOT_FOUND
        elif status == 0:  # after a refusal the rest of the frame cannot fit either
            with partition.lock:
                if not partition.log.closed:
                    try:
                        partition.epochs.flush()  # a TRUNCATE's records are on disk before what follows
                    except OSError as exc:
                        raise LinkError(f"replica of partition {'/'.join(map(str, key))}: {exc}") from None
                if epoch > partition.epochs.last_epoch and not partition.log.closed:
                    partition.epochs.record(epoch, partition.log.next_offset)
                for batch in batches:
                    try:
                        partition.log.append_stored(batch, 0, len(batch))
                    except IggyError as exc:
                        status = exc.code
                        self._report(key, exc)
                        break
        self._touched[key] = status
        self.commit(key, commit)

    def commit(self, key: Key, commit: int) -> None:
        if commit > self.commits.get(key, 0):
            self.commits[key] = commit
        self._touched.setdefault(key, 0)

    def _write_epochs(self) -> None:
        """The epoch records the TRUNCATEs of this read changed, all in one pass of writes
        (iggy.storage.leader_epochs.write_all), before any of them is acknowledged; on an error
        the link is dropped (the next one starts over: EPOCHS, TRUNCATE)."""
        unwritten, self._unwritten = self._unwritten, {}
        try:
            write_all(p.epochs for p in unwritten.values())
        except OSError as exc:
            raise LinkError(f"replica: cannot write the leader-epoch records: {exc}") from None

    def acks(self) -> list[tuple[Key, int, int, int]]:
        self._write_epochs()
        acks = []
        touched, self._touched = self._touched, {}
        for key, status in touched.items():
            partition = self._find(*key)
            if partition is None:
                acks.append((key, 0, 0, status or ErrorCode.PARTITION_NOT_FOUND))
                continue
            with partition.lock:
                if partition.log.closed:
                    acks.append((key, 0, 0, ErrorCode.PARTITION_NOT_FOUND))
                    continue
                end = partition.log.next_offset
                if partition.persisted and self.synced.get(key, 0) < end:
                    try:
                        partition.log.fsync(index=False)
                        self.synced[key] = end
                    except IggyError as exc:
                        log.error("replica of %s: fsync failed: %s", key, exc)
                        status = status or exc.code
            acks.append((key, end, min(self.synced.get(key, 0), end), status))
        return acks

    def _report(self, key: Key, exc: IggyError) -> None:
        """Log a refusal once per partition and code (a leader resends until it catches up)."""
        if (key, exc.code) not in self._reported:
            self._reported.add((key, exc.code))
            log.warning("replica of partition %s: batch refused: %s", "/".join(map(str, key)), exc)
