"""The journal's rules for a damaged file, byte by byte (iggy.metadata.journal's docstring):
what a crash can leave is cut, everything else refuses with the offset of the first bad record,
and `load(repair=True)` + `repair()` keep the records before it.

These drive the real `Journal` on a real directory; the server-level behaviour (exit status,
the error line, data directories untouched, quarantine) is in tests/test_metadata_recovery.py.
"""

from __future__ import annotations

import os
import struct

import pytest
import xxhash

from iggy.metadata.journal import SECTOR, Journal, MetadataCorrupt, records_after, scan

HEAD = 12


def make_journal(directory, count: int = 10, name_len: int = 8) -> bytes:
    j = Journal(str(directory))
    j.load()
    for i in range(count):
        j.append({"op": "stream.create", "id": i, "name": f"s{i}".ljust(name_len, "x"), "created_at": 1})
    j.close()
    return (directory / "journal.log").read_bytes()


def spans(raw: bytes) -> list[tuple[int, int]]:
    out, pos = [], 0
    while pos < len(raw):
        length = struct.unpack_from("<I", raw, pos)[0]
        out.append((pos, pos + HEAD + length))
        pos += HEAD + length
    return out


def flipped(raw: bytes, at: int, bit: int = 0x01) -> bytes:
    b = bytearray(raw)
    b[at] ^= bit
    return bytes(b)


def load(directory, raw: bytes, repair: bool = False):
    (directory / "journal.log").write_bytes(raw)
    j = Journal(str(directory))
    try:
        return j, j.load(repair)
    finally:
        if not repair:
            j.close()


@pytest.fixture
def journal(tmp_path):
    raw = make_journal(tmp_path)
    return tmp_path, raw, spans(raw)


# ------------------------------------------------------------------ cut: never completely written


@pytest.mark.parametrize(
    "tail", ["short", "partial-header", "zeros", "one-zero", "header-then-zeros", "short-then-zeros"]
)
def test_an_unfinished_last_write_is_cut(journal, tail, caplog):
    d, raw, sp = journal
    last_start, last_end = sp[-1]
    damaged = {
        "short": raw[:-3],  # the write cut short
        "partial-header": raw + b"\x2a\x00\x00",  # fewer than 12 bytes
        "zeros": raw + bytes(3 * SECTOR),  # size grew, data never written
        "one-zero": raw + b"\x00",
        "header-then-zeros": raw + struct.pack("<IQ", 1000, 7) + bytes(1000),
        "short-then-zeros": raw[: last_start + HEAD + 5] + bytes(10),  # short and zero-extended
    }[tail]
    kept = len(sp) - (1 if tail in ("short", "short-then-zeros") else 0)
    j, (_, records) = load(d, damaged)
    assert [r["id"] for r in records] == list(range(kept))
    assert "cut a torn tail" in caplog.text
    cut_at = sp[kept - 1][1]
    assert (d / "journal.log").stat().st_size == cut_at


def test_zeros_from_a_sector_boundary_inside_a_record_are_an_unwritten_tail(tmp_path):
    """A record spanning a sector boundary whose second sector never reached the disk."""
    raw = make_journal(tmp_path, count=3, name_len=700)
    start, end = spans(raw)[-1]
    boundary = (start // SECTOR + 1) * SECTOR
    assert start + HEAD < boundary < end
    damaged = raw[:boundary] + bytes(end - boundary)
    _, (_, records) = load(tmp_path, damaged)
    assert len(records) == 2


def test_zeros_at_the_end_of_a_record_off_a_sector_boundary_refuse(journal):
    """No sector boundary inside the zeroed bytes: a crash can't have left them."""
    d, raw, sp = journal
    start, end = sp[-1]
    assert (end - 3) // SECTOR == (end - 1) // SECTOR and (end - 3) % SECTOR
    with pytest.raises(MetadataCorrupt, match=f"byte offset {start} "):
        load(d, raw[: end - 3] + bytes(3))


# ------------------------------------------------------------------ refuse: acknowledged data damaged


@pytest.mark.parametrize(
    "where",
    [
        "last-byte",
        "last-checksum",
        "last-length-down",
        "last-length-up",
        "middle-body",
        "middle-length-up",
        "first-byte",
    ],
)
def test_damage_to_a_complete_record_refuses_at_its_offset(journal, where):
    d, raw, sp = journal
    index, at, bit = {
        "last-byte": (-1, sp[-1][1] - 1, 0x02),
        "last-checksum": (-1, sp[-1][0] + 4, 0x01),
        "last-length-down": (-1, sp[-1][0], 0x01),
        "last-length-up": (-1, sp[-1][0] + 1, 0x10),  # claims more than the file holds
        "middle-body": (4, sp[4][0] + 20, 0x01),
        "middle-length-up": (4, sp[4][0] + 1, 0x10),
        "first-byte": (0, 0, 0x01),
    }[where]
    damaged = flipped(raw, at, bit)
    with pytest.raises(MetadataCorrupt, match=f"journal.log is corrupt at byte offset {sp[index][0]} ") as exc:
        load(d, damaged)
    assert "--repair-metadata" in str(exc.value)
    assert (d / "journal.log").read_bytes() == damaged  # nothing cut


@pytest.mark.parametrize("tail", ["garbage", "bad-checksum", "zeros-then-data", "empty-record"])
def test_bytes_after_the_last_record_that_no_crash_leaves_refuse(journal, tail):
    d, raw, sp = journal
    body = b"\x81\xa1a\x01"
    extra = {
        "garbage": b"\xfe\xed" * 333,
        "bad-checksum": struct.pack("<IQ", len(body), 12345) + body,
        "zeros-then-data": bytes(64) + raw[sp[0][0] : sp[0][1]],
        "empty-record": struct.pack("<IQ", 0, 1),
    }[tail]
    with pytest.raises(MetadataCorrupt, match=f"byte offset {len(raw)} "):
        load(d, raw + extra)


def test_missing_records_refuse(journal):
    d, raw, sp = journal
    with pytest.raises(MetadataCorrupt, match=rf"byte offset {sp[4][0]} .*seq 6 follows seq 4"):
        load(d, raw[: sp[4][0]] + raw[sp[5][0] :])
    with pytest.raises(MetadataCorrupt, match=r"byte offset 0 .*snapshot ends at seq 0"):
        load(d, raw[sp[3][0] :])  # the snapshot that held 1..3 is gone


def test_records_after_resynchronises_past_damage(journal):
    _, raw, sp = journal
    damaged = flipped(raw, sp[4][0] + 20)
    assert [pos for pos, _ in records_after(damaged, sp[4][0])] == [s for s, _ in sp[5:]]
    assert scan(damaged, 0).bad == sp[4][0]


# ------------------------------------------------------------------ repair


def test_repair_keeps_the_prefix_and_sets_the_journal_aside(journal):
    d, raw, sp = journal
    damaged = flipped(raw, sp[6][0] + 20)
    j, (snapshot, records) = load(d, damaged, repair=True)
    assert snapshot is None and [r["id"] for r in records] == list(range(6))
    assert j.damage[0] == sp[6][0]
    dropped = j.repair({"streams": [], "users": [], "tokens": []}, records[-1]["seq"])
    assert [r["id"] for r in dropped] == [7, 8, 9]
    aside = [f for f in os.listdir(d) if f.startswith("journal.log.corrupt-")]
    assert len(aside) == 1 and (d / aside[0]).read_bytes() == damaged
    assert (d / "journal.log").read_bytes() == b""
    j.append({"op": "stream.create", "id": 6, "name": "again", "created_at": 2})
    j.close()
    j2 = Journal(str(d))
    snapshot, records = j2.load()
    assert [r["seq"] for r in records] == [7]  # continues after the snapshot's seq 6
    j2.close()


def test_a_failed_cut_after_a_failed_append_blocks_appends_until_it_succeeds(tmp_path, monkeypatch):
    """Else the next record would follow the torn bytes: corruption at the next start."""
    j = Journal(str(tmp_path))
    j.load()
    j.append({"op": "stream.create", "id": 0, "name": "a", "created_at": 1})
    real_fdatasync, real_ftruncate = os.fdatasync, os.ftruncate

    def failing(*_):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", failing)
    monkeypatch.setattr(os, "ftruncate", failing)
    with pytest.raises(OSError):
        j.append({"op": "stream.create", "id": 1, "name": "b", "created_at": 1})
    monkeypatch.setattr(os, "fdatasync", real_fdatasync)
    with pytest.raises(OSError):  # the cut still fails: refused
        j.append({"op": "stream.create", "id": 1, "name": "c", "created_at": 1})
    monkeypatch.setattr(os, "ftruncate", real_ftruncate)
    j.append({"op": "stream.create", "id": 1, "name": "d", "created_at": 1})
    j.close()
    j2 = Journal(str(tmp_path))
    _, records = j2.load()
    assert [(r["seq"], r["name"]) for r in records] == [(1, "a"), (2, "d")]
    j2.close()


def test_checksums_of_the_layout(journal):
    """The documented layout: u32 length | u64 xxh3(body) | body."""
    _, raw, sp = journal
    for start, end in sp:
        length, checksum = struct.unpack_from("<IQ", raw, start)
        assert end - start - HEAD == length and xxhash.xxh3_64_intdigest(raw[start + HEAD : end]) == checksum
