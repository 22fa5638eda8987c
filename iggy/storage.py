"""Storage: the partitions on disk, addressed by (stream id, topic id, partition id).

Layout under `<system.path>`::

    streams/<stream id>/topics/<topic id>/partitions/<partition id>/

The control plane calls this module after committing a metadata change; at start every
partition named by the metadata is opened and directories the metadata no longer names
(a delete cut short by a crash) are removed, so a reused id never sees old data.
"""
from __future__ import annotations

import logging
import os
import shutil

log = logging.getLogger(__name__)


class Storage:
    def __init__(self, system_path: str):
        self.root = os.path.join(system_path, "streams")
        os.makedirs(self.root, exist_ok=True)
        self.partitions: dict[tuple[int, int, int], object] = {}

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

    def create_partitions(self, sid: int, topic, pids) -> None:
        for pid in pids:
            os.makedirs(self.partition_dir(sid, topic.id, pid), exist_ok=True)
            self.partitions[(sid, topic.id, pid)] = None

    def delete_partitions(self, sid: int, tid: int, pids) -> None:
        for pid in pids:
            self.partitions.pop((sid, tid, pid), None)
            shutil.rmtree(self.partition_dir(sid, tid, pid), ignore_errors=True)

    def delete_topic(self, sid: int, tid: int) -> None:
        for key in [k for k in self.partitions if k[0] == sid and k[1] == tid]:
            self.partitions.pop(key)
        shutil.rmtree(self.topic_dir(sid, tid), ignore_errors=True)

    def delete_stream(self, sid: int) -> None:
        for key in [k for k in self.partitions if k[0] == sid]:
            self.partitions.pop(key)
        shutil.rmtree(self.stream_dir(sid), ignore_errors=True)

    def purge_topic(self, sid: int, topic) -> None:
        pass

    def close(self) -> None:
        pass

    # ---------------------------------------------------------------- stats

    def partition_stats(self, sid: int, tid: int, pid: int):
        """(segments_count, current_offset, size_bytes, messages_count)."""
        return (1, 0, 0, 0)

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
