"""MetadataStore: the registry (`State`) made durable by the journal.

`commit(record)` is the only way metadata changes: the record is appended and fsynced first,
then applied, so what a client was told has happened is on disk.
"""
from __future__ import annotations

import logging
import os

from iggy.errors import ErrorCode, IggyError
from iggy.metadata.journal import Journal
from iggy.metadata.state import State

log = logging.getLogger(__name__)


class MetadataStore:
    def __init__(self, system_path: str, snapshot_every: int = 1000):
        self.journal = Journal(os.path.join(system_path, "metadata"), snapshot_every)
        self.state = State()
        self.version = 0                  # bumped by every applied change
        self.listeners: list = []         # listener(record), after every applied change

    def open(self) -> None:
        snapshot, records = self.journal.load()
        self.state = State.from_dict(snapshot) if snapshot is not None else State()
        for rec in records:
            self.state.apply(rec)
        log.info("metadata loaded: %d streams, %d users (seq %d, %d journal records replayed)",
                 len(self.state.streams), len(self.state.users), self.journal.seq, len(records))

    def commit(self, record: dict) -> dict:
        """Append (fsynced), then apply. A record that can't be written is refused with
        CANNOT_WRITE_TO_FILE and changes nothing; a failed snapshot is retried later (the
        journal still holds every record)."""
        try:
            self.journal.append(record)
        except OSError as exc:
            log.error("metadata change %s refused: the journal can't be written: %s", record.get("op"),
                      exc.strerror or exc)
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

    def close(self) -> None:
        self.journal.close()
