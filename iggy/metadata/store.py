"""MetadataStore: the registry (`State`) made durable by the journal.

`commit(record)` is the only way metadata changes: the record is appended and fsynced first,
then applied, so what a client was told has happened is on disk.
"""
from __future__ import annotations

import logging
import os

from iggy.metadata.journal import Journal
from iggy.metadata.state import State

log = logging.getLogger(__name__)


class MetadataStore:
    def __init__(self, system_path: str, snapshot_every: int = 1000):
        self.journal = Journal(os.path.join(system_path, "metadata"), snapshot_every)
        self.state = State()

    def open(self) -> None:
        snapshot, records = self.journal.load()
        self.state = State.from_dict(snapshot) if snapshot is not None else State()
        for rec in records:
            self.state.apply(rec)
        log.info("metadata loaded: %d streams, %d users (seq %d, %d journal records replayed)",
                 len(self.state.streams), len(self.state.users), self.journal.seq, len(records))

    def commit(self, record: dict) -> dict:
        self.journal.append(record)
        self.state.apply(record)
        if self.journal.should_snapshot():
            self.journal.write_snapshot(self.state.to_dict())
        return record

    def close(self) -> None:
        self.journal.close()
