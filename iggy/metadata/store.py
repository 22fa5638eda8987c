"""MetadataStore: the registry (`State`) made durable by the journal.

`commit(record)` is the only way metadata changes: the record is appended and fsynced first,
then applied, so what a client was told has happened is on disk.

In cluster mode (docs/CLUSTER.md, "Metadata through etcd") `replicator` is set: `commit` first
hands the record to it (the leader's fenced write of `meta/<index>` to etcd, which stamps the
record with its `index` or raises IggyError), and only then journals it. A follower applies the
leader's records with `commit_replicated`, which journals them as they are, index included, so
the applied index survives a restart (`state.cluster_index`).
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from iggy.metadata.journal import Journal, MetadataCorrupt
from iggy.metadata.state import Record, State
from iggy.protocol.errors import ErrorCode, IggyError

log = logging.getLogger(__name__)

# a data directory the metadata names: ("stream", id), ("topic", stream, id) or
# ("partition", stream, topic, id)
DirectoryKey = tuple[str | int, ...]


class MetadataStore:
    def __init__(self, system_path: str, snapshot_every: int = 1000):
        self.journal = Journal(os.path.join(system_path, "metadata"), snapshot_every)
        self.state = State()
        self.version = 0  # bumped by every applied change
        self.listeners: list[Callable[[Record], object]] = []  # listener(record), after every applied change
        # cluster mode: the write to etcd that must succeed before a change is committed here
        self.replicator: Callable[[Record], object] | None = None
        # why a directory may lack metadata, for Storage.quarantine_orphans
        self.orphan_notes: dict[DirectoryKey, str] = {}

    def open(self, repair: bool = False) -> None:
        """Load the snapshot and replay the journal. Corrupt metadata raises MetadataCorrupt
        (iggy.metadata.journal says what counts as corrupt); under `repair` the state is
        rebuilt from the records before the damage and made durable as a new snapshot."""
        snapshot, records = self.journal.load(repair)
        pristine = copy.deepcopy(snapshot) if repair else None  # from_dict shares its dicts with the state
        self.state = State.from_dict(snapshot) if snapshot is not None else State()
        seq = self.journal.snapshot_seq
        for index, rec in enumerate(records):
            try:
                self.state.apply(rec)
            except Exception as exc:
                offset, reason = self.journal.reject_from(
                    index,
                    f"record seq {rec.get('seq')} {rec.get('op')} does not apply "
                    f"to the state before it ({type(exc).__name__}: {exc})",
                )
                if not repair:
                    raise MetadataCorrupt(self.journal.corruption_message(offset, reason, index)) from None
                records = records[:index]
                self.state = State.from_dict(pristine) if pristine is not None else State()
                for kept in records:  # without whatever the failed apply half did
                    self.state.apply(kept)
                break
            seq = rec["seq"]
        self.orphan_notes = _deletions(records)
        if self.journal.damage is not None:
            dropped = self.journal.repair(self.state.to_dict(), seq)
            self.orphan_notes.update(_creations(dropped))
        elif repair:
            log.info("metadata repair: %s is consistent, nothing to repair", self.journal.log_path)
        log.info(
            "metadata loaded: %d streams, %d users (seq %d, %d journal records replayed)",
            len(self.state.streams),
            len(self.state.users),
            self.journal.seq,
            len(records),
        )

    def commit(self, record: Record) -> Record:
        """Append (fsynced), then apply. A record that can't be written is refused with
        CANNOT_WRITE_TO_FILE and changes nothing; a failed snapshot is retried later (the
        journal still holds every record). In cluster mode the replicator goes first: a
        change etcd refused (a deposed leader) is not committed here either."""
        if self.replicator is not None:
            self.replicator(record)
        return self.commit_replicated(record)

    def commit_replicated(self, record: Record) -> Record:
        """Commit a record that is already in the cluster's log (it carries its `index`)."""
        try:
            self.journal.append(record)
        except OSError as exc:
            log.error(
                "metadata change %s refused: the journal can't be written: %s", record.get("op"), exc.strerror or exc
            )
            raise IggyError(ErrorCode.CANNOT_WRITE_TO_FILE, f"metadata journal: {exc.strerror or exc}") from None
        self.state.apply(record)
        self.version += 1
        for listener in self.listeners:
            listener(record)
        if self.journal.should_snapshot():
            try:
                self.journal.write_snapshot(self.state.to_dict())
            except OSError as exc:
                log.error("metadata snapshot failed (retried after the next change): %s", exc.strerror or exc)
        return record

    def install(self, state: dict[str, Any]) -> None:
        """Replace the whole state with `state` (a State.to_dict: the cluster's snapshot of meta/,
        iggy.control.changes.install_snapshot), made durable first as this store's own snapshot
        (written, fsynced and renamed, the journal emptied). The listeners get one record
        `{"op": "metadata.install"}`: everything may have changed."""
        installed = State.from_dict(copy.deepcopy(state))
        self.journal.write_snapshot(installed.to_dict())
        self.state = installed
        self.version += 1
        for listener in self.listeners:
            listener({"op": "metadata.install"})

    def close(self) -> None:
        self.journal.close()


def _deletions(records: Iterable[Record]) -> dict[DirectoryKey, str]:
    """Notes for the directories of the delete records replayed: a crash right after such a
    record leaves the directory behind."""
    return _notes(
        records,
        ("stream.delete", "topic.delete", "partitions.delete"),
        "a client deleted this {kind} (journal seq {seq}) and the server stopped before its directory was "
        "removed: nothing acknowledged is lost, the copy can be deleted",
    )


def _creations(dropped: Iterable[Record]) -> dict[DirectoryKey, str]:
    """Notes for the directories whose create records --repair-metadata dropped."""
    return _notes(
        dropped,
        ("stream.create", "topic.create", "partitions.create"),
        "its record (seq {seq} {op}) was dropped by --repair-metadata: its data is kept there for recovery",
    )


def _notes(records: Iterable[Record], ops: tuple[str, ...], text: str) -> dict[DirectoryKey, str]:
    """{directory key: text} for the records of `ops`; text takes {kind}, {seq} and {op}."""
    return {key: text.format(kind=key[0], seq=r["seq"], op=r["op"]) for key, r in _keys(records, ops)}


def _keys(records: Iterable[Record], ops: tuple[str, ...]) -> Iterator[tuple[DirectoryKey, Record]]:
    """(directory key, record) for each record of `ops` (see Storage.quarantine_orphans)."""
    for r in records:
        op = r["op"]
        if op not in ops:
            continue
        if op.startswith("stream."):
            yield ("stream", r["id"]), r
        elif op.startswith("topic."):
            yield ("topic", r["stream"], r["id"]), r
        else:
            for pid in r["ids"]:
                yield ("partition", r["stream"], r["topic"], pid), r
