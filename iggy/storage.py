"""Storage: the partitions on disk, addressed by (stream id, topic id, partition id).

Layout under `<system.path>`::

    streams/<stream id>/topics/<topic id>/partitions/<partition id>/
        <20-digit base offset>.log / .index     segments (iggy._core.log.PartitionLog)
        offsets/consumers/<key>, offsets/groups/<id>   stored offsets (iggy.offsets)

Durability per topic: `replicated` acknowledges once the batch is written to the page cache
(every append is written straight to the segment, so a crash of the process loses nothing
acknowledged; sealed segments and shutdown are fsynced); `persisted` (or `enforce_fsync`)
acknowledges only after fdatasync, and one fsync covers every batch that arrived in the same
event-loop turn (group commit: the sync runs in a callback scheduled after the pending reads).

Creating partitions is two steps around the metadata commit: `prepare_partitions` makes the
directories and opens the logs first (a failure — EMFILE, ENOSPC, EACCES — removes whatever it
made and raises CANNOT_CREATE_PARTITION_DIRECTORY / CANNOT_CREATE_PARTITION, so the control
plane commits nothing), then `install` adds them once the record is committed, or `discard`
removes them when the commit fails. A crash between the two leaves directories the metadata
does not name: at start every partition named by the metadata is opened and directories the
metadata no longer names (also a delete cut short by a crash) are removed, so a reused id
never sees old data. Deletes and other changes call this module after the commit.

Open files: a partition holds no descriptor of its own; its segment files go through the
process-wide LRU of iggy._core.log (budget set by iggy.server), so startup opens each
partition with a bounded number of files open at any moment.
"""
from __future__ import annotations

import asyncio
import logging
import os
import shutil
from iggy._core.log import PartitionLog
from iggy._core.mutex import Mutex
from iggy._core.router import Counter
from iggy.errors import ErrorCode, IggyError
from iggy.offsets import OffsetStore

log = logging.getLogger(__name__)


class Partition:
    """One partition: its log, its stored offsets and its flush/fsync policy."""

    def __init__(self, directory: str, partition_id: int, settings: dict, validate_checksum: bool):
        self.id = partition_id
        self.directory = directory
        self.log = PartitionLog(directory, partition_id, settings["segment_size"],
                                settings["preallocate_segments"], validate_checksum)
        self.offsets = OffsetStore(directory, fsync=settings["consumer_offset_durability"] == "persisted")
        self.offsets.load(None if self.log.is_empty else self.log.current_offset)
        self.persisted = settings["durability"] == "persisted" or settings["enforce_fsync"]
        self._waiters: list[asyncio.Future] = []
        self._sync_scheduled = False
        # shard threads (also from C without the GIL), the event loop and the HTTP thread all
        # reach a partition: every use of its log and offsets holds this lock (the I/O inside
        # releases the GIL, not the lock)
        self.lock = Mutex()

    def after_append(self, messages: int, size: int):
        """None when the append may be acknowledged now, else a future resolved after fsync.

        Called with the lock held. `replicated` acknowledges at once: the batch is already in
        the page cache (writes go straight to the segment, there is no journal to flush), so
        it survives a crash of the process; segments are fsynced when sealed and at shutdown.
        `persisted` waits for fdatasync: on the event loop every append of one loop turn shares
        one fsync; on a shard thread (no event loop: the Python fallback of the uring engine)
        it fsyncs here before it answers (the shards' C path syncs on the ring instead).
        """
        if not self.persisted:
            return None
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.log.fsync(index=False)
            return None
        fut = loop.create_future()
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
            self.offsets.clear()

    def close(self) -> None:
        with self.lock:
            if self.log.closed:
                return
            try:
                self.log.fsync()
            finally:
                self.log.close()
                self.offsets.close()


class Prepared:
    """Partitions opened by Storage.prepare_partitions, not yet served."""

    def __init__(self, sid: int, tid: int):
        self.sid = sid
        self.tid = tid
        self.partitions: dict[tuple[int, int, int], Partition] = {}
        self.made: list[str] = []         # directories made, outermost first


class Storage:
    def __init__(self, system_path: str, validate_checksum: bool = True):
        self.root = os.path.join(system_path, "streams")
        os.makedirs(self.root, exist_ok=True)
        self.partitions: dict[tuple[int, int, int], Partition] = {}
        self._by_topic: dict[tuple[int, int], set[int]] = {}     # open partition ids per topic
        self._by_stream: dict[int, set[int]] = {}                # topics with open partitions
        self.round_robin: dict[tuple[int, int], Counter] = {}
        self.validate_checksum = validate_checksum
        self.version = 0                  # bumped when partitions are opened or dropped
        self.listeners: list = []         # listener({(stream id, topic id)}), after each such change

    def _changed(self, topics) -> None:
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

    def open_all(self, state) -> None:
        wanted = set()
        for s in state.streams.values():
            for t in s.topics.values():
                for pid in t.partitions:
                    wanted.add((s.id, t.id, pid))
                self.create_partitions(s.id, t, list(t.partitions))
        self._remove_orphans(state)
        log.info("storage: %d partitions open", len(wanted))

    def _remove_orphans(self, state) -> None:
        for sname in os.listdir(self.root):
            sdir = os.path.join(self.root, sname)
            s = state.streams.get(int(sname)) if sname.isdigit() else None
            if s is None:
                shutil.rmtree(sdir, ignore_errors=True)
                continue
            tdir_root = os.path.join(sdir, "topics")
            for tname in os.listdir(tdir_root) if os.path.isdir(tdir_root) else []:
                t = s.topics.get(int(tname)) if tname.isdigit() else None
                if t is None:
                    shutil.rmtree(os.path.join(tdir_root, tname), ignore_errors=True)
                    continue
                pdir_root = os.path.join(tdir_root, tname, "partitions")
                for pname in os.listdir(pdir_root) if os.path.isdir(pdir_root) else []:
                    if not (pname.isdigit() and int(pname) in t.partitions):
                        shutil.rmtree(os.path.join(pdir_root, pname), ignore_errors=True)

    def prepare_partitions(self, sid: int, tid: int, settings: dict, pids, new_topic: bool) -> "Prepared":
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
                    raise IggyError(ErrorCode.CANNOT_CREATE_PARTITION,
                                    f"cannot create partition {pid}: {exc.strerror or exc}") from None
                prep.partitions[(sid, tid, pid)] = part
        except BaseException:
            self.discard(prep)
            raise
        return prep

    @staticmethod
    def _mkdir(directory: str, sid: int, tid: int, pid) -> None:
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as exc:
            what = f"partition {pid}" if pid is not None else "the directory"
            log.error("cannot create %s of topic %d in stream %d (%s): %s", what, tid, sid, directory,
                      exc.strerror or exc)
            raise IggyError(ErrorCode.CANNOT_CREATE_PARTITION_DIRECTORY,
                            f"cannot create {directory}: {exc.strerror or exc}") from None

    def install(self, prep: "Prepared") -> None:
        """Serve prepared partitions (their create is committed)."""
        for key, p in prep.partitions.items():
            self._add(key, p)
        prep.partitions = {}
        prep.made = []
        self._changed({(prep.sid, prep.tid)})

    def discard(self, prep: "Prepared") -> None:
        """Close prepared partitions and remove every directory prepare made (newest first)."""
        for p in prep.partitions.values():
            with p.lock:
                p.log.close()
                p.offsets.close()
        prep.partitions = {}
        for d in reversed(prep.made):
            shutil.rmtree(d, ignore_errors=True)
        prep.made = []

    def create_partitions(self, sid: int, topic, pids) -> None:
        for pid in pids:
            directory = self.partition_dir(sid, topic.id, pid)      # (the log makes it if it is missing)
            self._add((sid, topic.id, pid), Partition(directory, pid, topic.settings, self.validate_checksum))
        self._changed({(sid, topic.id)})

    def _add(self, key, p: Partition) -> None:
        self.partitions[key] = p
        self._by_topic.setdefault(key[:2], set()).add(key[2])
        self._by_stream.setdefault(key[0], set()).add(key[1])

    def _topic_keys(self, sid: int, tid: int) -> list:
        return [(sid, tid, pid) for pid in self._by_topic.get((sid, tid), ())]

    def _drop(self, keys) -> None:
        topics = set()
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

    def delete_partitions(self, sid: int, tid: int, pids) -> None:
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
        for tid in tids:        # (a topic without partitions may keep its counter: harmless)
            self.round_robin.pop((sid, tid), None)
        shutil.rmtree(self.stream_dir(sid), ignore_errors=True)

    def purge_topic(self, sid: int, topic) -> None:
        for pid in topic.partitions:
            self.partitions[(sid, topic.id, pid)].purge()

    def forget_group_offsets(self, sid: int, topic, group_id: int) -> None:
        from iggy.offsets import GROUP
        for pid in topic.partitions:
            self.partitions[(sid, topic.id, pid)].offsets.delete(GROUP, group_id)

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

    def partition_stats(self, sid: int, tid: int, pid: int):
        """(segments_count, current_offset, size_bytes, messages_count)."""
        p = self.partitions.get((sid, tid, pid))
        if p is None:
            return (1, 0, 0, 0)
        lg = p.log
        return (max(1, lg.segments_count), lg.current_offset, lg.size_bytes, lg.messages_count)

    def topic_stats(self, sid: int, topic):
        size = messages = 0
        for pid in topic.partitions:
            _, _, sz, n = self.partition_stats(sid, topic.id, pid)
            size += sz
            messages += n
        return size, messages

    def stream_stats(self, stream):
        size = messages = 0
        for t in stream.topics.values():
            sz, n = self.topic_stats(stream.id, t)
            size += sz
            messages += n
        return size, messages

    def totals(self) -> dict:
        segments = size = messages = 0
        for (sid, tid, pid) in self.partitions:
            seg, _, sz, n = self.partition_stats(sid, tid, pid)
            segments += seg
            size += sz
            messages += n
        return {"segments_count": segments, "size_bytes": size, "messages_count": messages}
