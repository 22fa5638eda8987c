"""Storage: the partitions on disk, addressed by (stream id, topic id, partition id).

Layout under `<system.path>`::

    streams/<stream id>/topics/<topic id>/partitions/<partition id>/
        <20-digit base offset>.log / .index     segments (iggy.storage.log.PartitionLog)
        leader-epochs                           cluster mode: (epoch, first offset) records
                                                (iggy.storage.leader_epochs)
        offsets/consumers/<key>, offsets/groups/<id>   stored offsets (iggy.storage.consumer_offsets)

Durability per topic: `replicated` acknowledges once the batch is written to the page cache
(every append is written straight to the segment, so a crash of the process loses nothing
acknowledged; sealed segments and shutdown are fsynced); `persisted` (or `enforce_fsync`)
acknowledges only after fdatasync, and one fsync covers every batch that arrived in the same
event-loop turn (group commit: the sync runs in a callback scheduled after the pending reads).

Creating partitions is two steps around the metadata commit: `prepare_partitions` makes the
directories (durably: the parent of each new directory is fsynced, iggy.storage.fsutil) and opens the
logs first (a failure — EMFILE, ENOSPC, EACCES — removes whatever it made and raises
CANNOT_CREATE_PARTITION_DIRECTORY / CANNOT_CREATE_PARTITION, so the control plane commits
nothing), then `install` adds them once the record is committed, or `discard` removes them
when the commit fails. Deletes and other changes call this module after the commit (a
client's delete removes its directory).

At start every partition named by the metadata is opened; startup never deletes anything: a
directory the metadata doesn't name (a create whose commit never happened, a delete cut short
by a crash, or data whose metadata was lost) is moved to `<system.path>/quarantine/<UTC time>/`
under the same relative path and reported, so a reused id never sees old data and nothing is
lost. While the server runs, whatever is found at the path of a partition being created can
only be what this server was removing (a delete or a discarded create that stopped half-way),
so it is removed.

Open files: a partition holds no descriptor of its own; its segment files go through the
process-wide LRU of iggy.storage.log (budget set by iggy.server.node), so startup opens each
partition with a bounded number of files open at any moment.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from iggy._core.mutex import Mutex
from iggy.engine.uring.router import Counter
from iggy.metadata.journal import utc_stamp
from iggy.protocol.errors import ErrorCode, IggyError
from iggy.storage.consumer_offsets import OffsetStore
from iggy.storage.fsutil import fsync_dir, makedirs_durable
from iggy.storage.leader_epochs import LeaderEpochs
from iggy.storage.log import PartitionLog
from iggy.storage.served_offsets import ServedOffsets

if TYPE_CHECKING:
    from iggy.metadata.state import State, StreamMeta, TopicMeta
    from iggy.metadata.store import DirectoryKey

# (stream id, topic id, partition id)
PartitionKey = tuple[int, int, int]

log = logging.getLogger(__name__)


class Partition:
    """One partition: its log, its stored offsets and its flush/fsync policy."""

    def __init__(self, directory: str, partition_id: int, settings: dict[str, Any], validate_checksum: bool):
        self.id = partition_id
        self.directory = directory
        self.log = PartitionLog(
            directory, partition_id, settings["segment_size"], settings["preallocate_segments"], validate_checksum
        )
        # cluster mode: which leader's log each range of offsets came from (a damaged file
        # raises LeaderEpochsCorrupt: the server refuses to start)
        self.epochs = LeaderEpochs(directory)
        self.offsets = OffsetStore(directory, fsync=settings["consumer_offset_durability"] == "persisted")
        self.offsets.load(None if self.log.is_empty else self.log.current_offset)
        # what each consumer group was last served here (in memory; cooperative rebalancing
        # moves a partition only once its owner committed what it polled, iggy.control.groups)
        self.served = ServedOffsets()
        self.persisted = settings["durability"] == "persisted" or settings["enforce_fsync"]
        self._waiters: list[asyncio.Future[None]] = []
        self._sync_scheduled = False
        # shard threads (also from C without the GIL), the event loop and the HTTP thread all
        # reach a partition: every use of its log and offsets holds this lock (the I/O inside
        # releases the GIL, not the lock)
        self.lock = Mutex()

    def after_append(self, messages: int, size: int, inline: bool = False) -> asyncio.Future[None] | None:
        """None when the append may be acknowledged now, else a future resolved after fsync.

        Called with the lock held. `replicated` acknowledges at once: the batch is already in
        the page cache (writes go straight to the segment, there is no journal to flush), so
        it survives a crash of the process; segments are fsynced when sealed and at shutdown.
        `persisted` waits for fdatasync. The caller says where it runs: on the event loop
        (`inline` False) every append of one loop turn shares one fsync, scheduled on the
        running loop; on a shard thread (`inline` True: the Python fallback of the uring
        engine, which has no loop) it fsyncs here before it answers (the shards' C path syncs
        on the ring instead).
        """
        if not self.persisted:
            return None
        if inline:
            self.log.fsync(index=False)
            return None
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        self._schedule_sync()
        return fut

    def _schedule_sync(self) -> None:
        if not self._sync_scheduled:
            self._sync_scheduled = True
            asyncio.get_running_loop().call_soon(self._sync)

    def _sync(self) -> None:
        self._sync_scheduled = False
        waiters, self._waiters = self._waiters, []
        try:
            with self.lock:
                self.log.fsync(index=False)
        except (OSError, IggyError) as exc:
            log.error("fsync of partition %s failed: %s", self.directory, exc)
            for fut in waiters:
                if not fut.done():
                    fut.set_exception(exc)
            return
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def purge(self) -> None:
        with self.lock:
            self.log.purge()
            self.epochs.clear()
            self.offsets.clear()
            self.served.clear()

    def close(self) -> None:
        with self.lock:
            if self.log.closed:
                return
            try:
                self.log.fsync()
            finally:
                self.log.close()
                self.offsets.close()


class QuarantineError(RuntimeError):
    """A directory the metadata doesn't name can't be moved aside: refuse to start."""


def _is_id(name: str) -> bool:
    """A directory name the server writes for an id (`str(id)`: no sign, no leading zero)."""
    return name.isdigit() and name == str(int(name))


def _tree_size(path: str) -> tuple[int, int]:
    """(files, bytes) under `path` (a file counts itself)."""
    if not os.path.isdir(path):
        return 1, os.path.getsize(path) if os.path.exists(path) else 0
    files = size = 0
    for root, _, names in os.walk(path):
        for name in names:
            files += 1
            try:
                size += os.path.getsize(os.path.join(root, name))
            except OSError:
                pass
    return files, size


def _unique_dir(path: str) -> str:
    """`path`, or `path-1`, `path-2`... when a start in the same second already used it."""
    candidate, n = path, 0
    while os.path.exists(candidate):
        n += 1
        candidate = f"{path}-{n}"
    os.makedirs(candidate)
    return candidate


class Prepared:
    """Partitions opened by Storage.prepare_partitions, not yet served."""

    def __init__(self, sid: int, tid: int):
        self.sid = sid
        self.tid = tid
        self.partitions: dict[tuple[int, int, int], Partition] = {}
        self.made: list[str] = []  # directories made, outermost first


class Storage:
    def __init__(self, system_path: str, validate_checksum: bool = True):
        self.root = os.path.join(system_path, "streams")
        makedirs_durable(self.root)
        self.partitions: dict[tuple[int, int, int], Partition] = {}
        self._by_topic: dict[tuple[int, int], set[int]] = {}  # open partition ids per topic
        self._by_stream: dict[int, set[int]] = {}  # topics with open partitions
        self.round_robin: dict[tuple[int, int], Counter] = {}
        self.validate_checksum = validate_checksum
        self.version = 0  # bumped when partitions are opened or dropped
        # listener({(stream id, topic id)}), after each such change
        self.listeners: list[Callable[[set[tuple[int, int]]], object]] = []

    def _changed(self, topics: set[tuple[int, int]]) -> None:
        self.version += 1
        for listener in self.listeners:
            listener(topics)

    def balanced_counter(self, sid: int, tid: int) -> Counter:
        """The topic's round-robin position (shared with the shards' C data plane)."""
        counter = self.round_robin.get((sid, tid))
        if counter is None:
            counter = self.round_robin[(sid, tid)] = Counter()
        return counter

    # ---------------------------------------------------------------- paths

    def stream_dir(self, sid: int) -> str:
        return os.path.join(self.root, str(sid))

    def topic_dir(self, sid: int, tid: int) -> str:
        return os.path.join(self.stream_dir(sid), "topics", str(tid))

    def partition_dir(self, sid: int, tid: int, pid: int) -> str:
        return os.path.join(self.topic_dir(sid, tid), "partitions", str(pid))

    # ---------------------------------------------------------------- lifecycle

    def open_all(self, state: State, notes: Mapping[DirectoryKey, str] | None = None) -> list[str]:
        """Open every partition the metadata names, after moving what it doesn't name to
        quarantine (see `quarantine_orphans`). Returns the quarantined paths."""
        moved = self.quarantine_orphans(state, notes or {})
        wanted = set()
        for s in state.streams.values():
            for t in s.topics.values():
                for pid in t.partitions:
                    wanted.add((s.id, t.id, pid))
                self.create_partitions(s.id, t, list(t.partitions))
        log.info("storage: %d partitions open", len(wanted))
        return moved

    def quarantine_orphans(self, state: State, notes: Mapping[DirectoryKey, str]) -> list[str]:
        """Move the stream, topic and partition directories the metadata doesn't name to
        `<system.path>/quarantine/<UTC time>/` (same relative path), with one WARNING each.

        Startup never deletes data: such a directory is either a client's delete cut short by
        a crash after its journal record, or data whose metadata was lost or repaired away.
        Moving it keeps a reused id from seeing old data either way. `notes` maps a key,
        `("stream", sid)`, `("topic", sid, tid)` or `("partition", sid, tid, pid)`, to what the
        metadata knows of it (MetadataStore.orphan_notes), said in the WARNING. Raises
        QuarantineError when a directory can't be moved (the server must not start on top of it).
        """
        orphans: list[tuple[str, DirectoryKey]] = []  # (path, key)
        for sname in sorted(os.listdir(self.root)):
            sdir = os.path.join(self.root, sname)
            s = state.streams.get(int(sname)) if _is_id(sname) else None
            if s is None:
                orphans.append((sdir, ("stream", sname)))
                continue
            tdir_root = os.path.join(sdir, "topics")
            for tname in sorted(os.listdir(tdir_root)) if os.path.isdir(tdir_root) else []:
                t = s.topics.get(int(tname)) if _is_id(tname) else None
                if t is None:
                    orphans.append((os.path.join(tdir_root, tname), ("topic", s.id, tname)))
                    continue
                pdir_root = os.path.join(tdir_root, tname, "partitions")
                for pname in sorted(os.listdir(pdir_root)) if os.path.isdir(pdir_root) else []:
                    if not (_is_id(pname) and int(pname) in t.partitions):
                        orphans.append((os.path.join(pdir_root, pname), ("partition", s.id, t.id, pname)))
        if not orphans:
            return []
        system_path = os.path.dirname(self.root)
        target_root = _unique_dir(os.path.join(system_path, "quarantine", utc_stamp()))
        moved: list[str] = []
        for path, key in orphans:
            rel = os.path.relpath(path, system_path)
            target = os.path.join(target_root, rel)
            files, size = _tree_size(path)
            try:
                os.makedirs(os.path.dirname(target), exist_ok=True)
                os.rename(path, target)
                fsync_dir(os.path.dirname(path))
                fsync_dir(os.path.dirname(target))
            except OSError as exc:
                raise QuarantineError(
                    f"storage: {path} is not in the metadata and can't be moved to {target} "
                    f"({exc.strerror or exc}): refusing to start on top of it; move it away "
                    "by hand"
                ) from None
            key = tuple(int(k) if isinstance(k, str) and _is_id(k) else k for k in key)
            why = notes.get(key)
            if why is None:
                why = (
                    "it holds no data"
                    if size == 0
                    else (
                        "no metadata names it (lost, or dropped by --repair-metadata, or a delete whose record is "
                        "already in a snapshot): its data is kept there for recovery"
                    )
                )
            log.warning(
                "storage: %s (%d bytes in %d files) is not in the metadata: moved to %s, not deleted; %s",
                rel,
                size,
                files,
                target,
                why,
            )
            moved.append(target)
        return moved

    def prepare_partitions(
        self, sid: int, tid: int, settings: dict[str, Any], pids: Iterable[int], new_topic: bool
    ) -> Prepared:
        """Make and open partitions that the metadata does not name yet (see the docstring).

        new_topic: the topic itself is new, so its whole directory is made here (and removed on
        failure). Anything already at a partition's path is an orphan of an uncommitted create
        or a cut-short delete, and goes first.
        """
        prep = Prepared(sid, tid)
        topic_dir = self.topic_dir(sid, tid)
        try:
            if new_topic:
                if os.path.isdir(topic_dir):
                    shutil.rmtree(topic_dir, ignore_errors=True)
                for d in (self.stream_dir(sid), os.path.dirname(topic_dir), topic_dir):
                    if not os.path.isdir(d):
                        self._mkdir(d, sid, tid, None)
                        prep.made.append(d)
            for pid in pids:
                directory = self.partition_dir(sid, tid, pid)
                if os.path.isdir(directory):
                    shutil.rmtree(directory, ignore_errors=True)
                self._mkdir(directory, sid, tid, pid)
                prep.made.append(directory)
                try:
                    part = Partition(directory, pid, settings, self.validate_checksum)
                except OSError as exc:
                    log.error("cannot create partition %d of topic %d in stream %d: %s", pid, tid, sid, exc)
                    raise IggyError(
                        ErrorCode.CANNOT_CREATE_PARTITION, f"cannot create partition {pid}: {exc.strerror or exc}"
                    ) from None
                prep.partitions[(sid, tid, pid)] = part
        except BaseException:
            self.discard(prep)
            raise
        return prep

    @staticmethod
    def _mkdir(directory: str, sid: int, tid: int, pid: int | None) -> None:
        try:
            makedirs_durable(directory)  # a power cut must not lose the new chain
        except OSError as exc:
            what = f"partition {pid}" if pid is not None else "the directory"
            log.error(
                "cannot create %s of topic %d in stream %d (%s): %s", what, tid, sid, directory, exc.strerror or exc
            )
            raise IggyError(
                ErrorCode.CANNOT_CREATE_PARTITION_DIRECTORY, f"cannot create {directory}: {exc.strerror or exc}"
            ) from None

    def install(self, prep: Prepared) -> None:
        """Serve prepared partitions (their create is committed)."""
        for key, p in prep.partitions.items():
            self._add(key, p)
        prep.partitions = {}
        prep.made = []
        self._changed({(prep.sid, prep.tid)})

    def discard(self, prep: Prepared) -> None:
        """Close prepared partitions and remove every directory prepare made (newest first)."""
        for p in prep.partitions.values():
            with p.lock:
                p.log.close()
                p.offsets.close()
        prep.partitions = {}
        for d in reversed(prep.made):
            shutil.rmtree(d, ignore_errors=True)
        prep.made = []

    def create_partitions(self, sid: int, topic: TopicMeta, pids: Iterable[int]) -> None:
        for pid in pids:
            directory = self.partition_dir(sid, topic.id, pid)
            # the log fsyncs the partition directory for its segments; the chain above it
            # (streams/<s>/topics/<t>/partitions/<p>) must be durable too (one stat when it exists)
            makedirs_durable(directory)
            self._add((sid, topic.id, pid), Partition(directory, pid, topic.settings, self.validate_checksum))
        self._changed({(sid, topic.id)})

    def _add(self, key: PartitionKey, p: Partition) -> None:
        self.partitions[key] = p
        self._by_topic.setdefault(key[:2], set()).add(key[2])
        self._by_stream.setdefault(key[0], set()).add(key[1])

    def _topic_keys(self, sid: int, tid: int) -> list[PartitionKey]:
        return [(sid, tid, pid) for pid in self._by_topic.get((sid, tid), ())]

    def _drop(self, keys: Iterable[PartitionKey]) -> None:
        topics: set[tuple[int, int]] = set()
        for key in list(keys):
            topics.add(key[:2])
            pids = self._by_topic.get(key[:2])
            if pids is not None:
                pids.discard(key[2])
                if not pids:
                    del self._by_topic[key[:2]]
                    tids = self._by_stream.get(key[0])
                    if tids is not None:
                        tids.discard(key[1])
                        if not tids:
                            del self._by_stream[key[0]]
            p = self.partitions.pop(key, None)
            if p is not None:
                with p.lock:
                    p.log.close()
                    p.offsets.close()
        self._changed(topics)

    def delete_partitions(self, sid: int, tid: int, pids: Collection[int]) -> None:
        self._drop((sid, tid, pid) for pid in pids)
        for pid in pids:
            shutil.rmtree(self.partition_dir(sid, tid, pid), ignore_errors=True)

    def delete_topic(self, sid: int, tid: int) -> None:
        self._drop(self._topic_keys(sid, tid))
        self.round_robin.pop((sid, tid), None)
        shutil.rmtree(self.topic_dir(sid, tid), ignore_errors=True)

    def delete_stream(self, sid: int) -> None:
        tids = list(self._by_stream.get(sid, ()))
        self._drop([k for tid in tids for k in self._topic_keys(sid, tid)])
        for tid in tids:  # (a topic without partitions may keep its counter: harmless)
            self.round_robin.pop((sid, tid), None)
        shutil.rmtree(self.stream_dir(sid), ignore_errors=True)

    def purge_topic(self, sid: int, topic: TopicMeta) -> None:
        for pid in topic.partitions:
            self.partitions[(sid, topic.id, pid)].purge()

    def forget_group_offsets(self, sid: int, topic: TopicMeta, group_id: int) -> None:
        from iggy.storage.consumer_offsets import GROUP

        for pid in topic.partitions:
            partition = self.partitions[(sid, topic.id, pid)]
            with partition.lock:
                partition.offsets.delete(GROUP, group_id)
                partition.served.forget(group_id)

    def partition(self, sid: int, tid: int, pid: int) -> Partition | None:
        return self.partitions.get((sid, tid, pid))

    def close(self) -> None:
        for p in self.partitions.values():
            try:
                p.close()
            except OSError as exc:
                log.error("closing partition %s: %s", p.directory, exc)
        self.partitions.clear()
        self._by_topic.clear()
        self._by_stream.clear()

    # ---------------------------------------------------------------- stats

    def partition_stats(self, sid: int, tid: int, pid: int) -> tuple[int, int, int, int]:
        """(segments_count, current_offset, size_bytes, messages_count)."""
        p = self.partitions.get((sid, tid, pid))
        if p is None:
            return (1, 0, 0, 0)
        lg = p.log
        return (max(1, lg.segments_count), lg.current_offset, lg.size_bytes, lg.messages_count)

    def topic_stats(self, sid: int, topic: TopicMeta) -> tuple[int, int]:
        size = messages = 0
        for pid in topic.partitions:
            _, _, sz, n = self.partition_stats(sid, topic.id, pid)
            size += sz
            messages += n
        return size, messages

    def stream_stats(self, stream: StreamMeta) -> tuple[int, int]:
        size = messages = 0
        for t in stream.topics.values():
            sz, n = self.topic_stats(stream.id, t)
            size += sz
            messages += n
        return size, messages

    def totals(self) -> dict[str, int]:
        segments = size = messages = 0
        for sid, tid, pid in self.partitions:
            seg, _, sz, n = self.partition_stats(sid, tid, pid)
            segments += seg
            size += sz
            messages += n
        return {"segments_count": segments, "size_bytes": size, "messages_count": messages}
