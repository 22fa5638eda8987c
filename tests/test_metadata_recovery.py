"""Damaged metadata against a real server process: what is cut, what refuses, what is repaired.

* a flipped bit in a complete journal record (the last one, or one in the middle) stops the
  server with exit status 3 and one error line naming the journal and the record's byte
  offset; the journal and every data directory are left exactly as they were;
* `--repair-metadata` keeps the records before the damage, moves the journal aside, logs the
  dropped records and moves their data to quarantine; later starts need no flag;
* a directory the metadata doesn't name is moved to `<system.path>/quarantine/<time>/` and
  reported, never deleted; one left by a client's delete cut short by a crash says so.

The journal's record layout is parsed here independently of iggy.metadata.journal:
u32 LE length | u64 LE XXH3-64 | msgpack body.
(Torn tails, which are cut, are in tests/test_restart.py; the byte-level rules in
tests/test_metadata_journal.py.)
"""

from __future__ import annotations

import re
import shutil
import struct
from pathlib import Path

import pytest
import xxhash
from apache_iggy import SendMessage

from tests.conftest import ServerProcess, connect_root, server_with_env

NO_HTTP = {"IGGY_HTTP_ENABLED": "false"}
REFUSED = "exited with 3"


server = server_with_env(**NO_HTTP)


def record_spans(raw: bytes) -> list[tuple[int, int]]:
    """(start, end) of each record of a sound journal."""
    spans, pos = [], 0
    while pos < len(raw):
        length, checksum = struct.unpack_from("<IQ", raw, pos)
        end = pos + 12 + length
        assert xxhash.xxh3_64_intdigest(raw[pos + 12 : end]) == checksum
        spans.append((pos, end))
        pos = end
    return spans


def tree(root: Path) -> dict:
    """{relative path: (size, xxh3)} of every file under root."""
    return {
        str(p.relative_to(root)): (p.stat().st_size, xxhash.xxh3_64_intdigest(p.read_bytes()))
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def error_lines(srv: ServerProcess) -> list[str]:
    return [line for line in srv.log().splitlines() if " ERROR " in line]


async def make_streams(address: str, count: int, messages: int = 5) -> None:
    """Streams s0..s{count-1}, each with topic t (1 partition) holding `messages` messages:
    the journal is root's user.create, then stream.create and topic.create per stream."""
    c = await connect_root(address)
    for i in range(count):
        await c.create_stream(f"s{i}")
        await c.create_topic(f"s{i}", "t", 1)
        await c.send_messages(f"s{i}", "t", 0, [SendMessage(f"s{i}-m{j}") for j in range(messages)])


async def stream_names(address: str) -> list[str]:
    c = await connect_root(address)
    return [s.name for s in await c.get_streams()]


def flip(journal: Path, at: int, bit: int = 0x01) -> bytes:
    raw = bytearray(journal.read_bytes())
    raw[at] ^= bit
    journal.write_bytes(bytes(raw))
    return bytes(raw)


def assert_refused_at(srv: ServerProcess, journal: Path, offset: int) -> None:
    with pytest.raises(RuntimeError, match=REFUSED):
        srv.start()
    errors = error_lines(srv)
    assert len(errors) == 1, srv.log()
    assert str(journal) in errors[0] and f"byte offset {offset} " in errors[0]
    assert "--repair-metadata" in errors[0]
    assert "Traceback" not in srv.log()


async def test_flip_in_the_last_byte_refuses_to_start(server):
    """The issue's case: the last record (the topic holding 50 messages) was acknowledged;
    before, it was cut as a torn tail and the topic's partition directory deleted."""
    c = await connect_root(server.tcp_address)
    await c.create_stream("keep")
    await c.create_topic("keep", "t", 1)
    await c.send_messages("keep", "t", 0, [SendMessage(f"m{i}") for i in range(50)])
    server.stop()
    journal = server.data_dir / "metadata" / "journal.log"
    streams = server.data_dir / "streams"
    last = record_spans(journal.read_bytes())[-1][0]
    # a flip that leaves the byte non-zero (a zero could be a sector never written)
    raw = flip(journal, journal.stat().st_size - 1, 0x01 if journal.read_bytes()[-1] != 1 else 0x02)
    before = tree(streams)
    assert any(name.endswith(".log") and size > 0 for name, (size, _) in before.items())
    assert_refused_at(server, journal, last)
    assert journal.read_bytes() == raw
    assert tree(streams) == before
    assert not (server.data_dir / "quarantine").exists()


async def test_flip_in_the_middle_refuses_to_start(server):
    """Before: 7 of 10 streams dropped, their directories deleted and the journal truncated."""
    await make_streams(server.tcp_address, 10)
    server.stop()
    journal = server.data_dir / "metadata" / "journal.log"
    streams = server.data_dir / "streams"
    size = journal.stat().st_size
    hit = next(start for start, end in record_spans(journal.read_bytes()) if start <= size // 3 < end)
    raw = flip(journal, size // 3)
    before = tree(streams)
    assert_refused_at(server, journal, hit)
    assert journal.read_bytes() == raw and journal.stat().st_size == size
    assert tree(streams) == before


CORRUPT_TAILS = {
    # a whole record (length, checksum, 4 body bytes all present) whose checksum is wrong
    "bad-checksum": struct.pack("<IQ", 4, 12345) + b"\x81\xa1a\x01",
    # bytes no append wrote: the length field is impossible and they are not zeros
    "garbage": b"\xfe\xed" * 333,
}


@pytest.mark.parametrize("kind", CORRUPT_TAILS)
async def test_a_complete_bad_record_at_the_end_refuses(server, kind):
    await make_streams(server.tcp_address, 1)
    server.stop()
    journal = server.data_dir / "metadata" / "journal.log"
    end = journal.stat().st_size
    with open(journal, "ab") as f:
        f.write(CORRUPT_TAILS[kind])
    raw = journal.read_bytes()
    assert_refused_at(server, journal, end)
    assert journal.read_bytes() == raw


async def test_repair_metadata_keeps_the_good_prefix(server, tmp_path):
    srv = server
    await make_streams(srv.tcp_address, 10)
    srv.stop()
    journal = tmp_path / "data" / "metadata" / "journal.log"
    streams = tmp_path / "data" / "streams"
    spans = record_spans(journal.read_bytes())
    assert len(spans) == 21  # user.create, then (stream, topic) x 10
    bad_start, bad_end = spans[7]  # the stream.create of s3
    raw = flip(journal, (bad_start + bad_end) // 2)
    before = tree(streams)
    with pytest.raises(RuntimeError, match=REFUSED):
        srv.start()

    srv.args = ("--repair-metadata",)
    srv.start()
    assert await stream_names(srv.tcp_address) == ["s0", "s1", "s2"]
    log = srv.log()
    assert f"damaged at byte offset {bad_start} " in log
    dropped = re.findall(r"dropped record at offset (\d+): seq (\d+) (\S+)", log)
    # the damaged record can't be read; the 13 after it can, and each is named
    assert [(int(o), int(s)) for o, s, _ in dropped] == [(spans[i][0], i + 1) for i in range(8, 21)]
    assert {op for _, _, op in dropped} == {"topic.create", "stream.create"}
    aside = list(journal.parent.glob("journal.log.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == raw
    # the dropped streams' data is quarantined, byte for byte; the kept ones stay
    quarantine = list((tmp_path / "data" / "quarantine").iterdir())
    assert len(quarantine) == 1
    moved = tree(quarantine[0] / "streams")
    assert moved == {k: v for k, v in before.items() if int(k.split("/")[0]) >= 3}
    assert tree(streams) == {k: v for k, v in before.items() if int(k.split("/")[0]) < 3}
    notes = [line for line in log.splitlines() if "not in the metadata" in line]
    assert len(notes) == 7
    assert "streams/3 " in notes[0] and "its record (seq 8 stream.create) was dropped" not in notes[0]
    assert "streams/4 " in notes[1] and "its record (seq 10 stream.create) was dropped by --repair" in notes[1]
    c = await connect_root(srv.tcp_address)
    assert (await c.get_stream("s2")).messages_count == 5

    # repaired for good: later starts need no flag, and new changes survive a crash
    srv.args = ()
    srv.restart()
    c = await connect_root(srv.tcp_address)
    await c.create_stream("after-repair")
    srv.kill()
    srv.start()
    assert await stream_names(srv.tcp_address) == ["s0", "s1", "s2", "after-repair"]
    assert len(list(journal.parent.glob("journal.log.corrupt-*"))) == 1


async def test_repair_metadata_on_a_sound_journal_changes_nothing(server, tmp_path):
    srv = server
    await make_streams(srv.tcp_address, 2)
    srv.stop()
    journal = tmp_path / "data" / "metadata" / "journal.log"
    raw = journal.read_bytes()
    srv.args = ("--repair-metadata",)
    srv.start()
    assert await stream_names(srv.tcp_address) == ["s0", "s1"]
    assert "nothing to repair" in srv.log()
    assert journal.read_bytes() == raw
    assert not list(journal.parent.glob("journal.log.corrupt-*"))


async def test_orphan_directories_are_quarantined_not_deleted(server):
    c = await connect_root(server.tcp_address)
    await c.create_stream("s")
    await c.create_topic("s", "t", 2)
    for pid in (0, 1):
        await c.send_messages("s", "t", pid, [SendMessage(f"p{pid}-{i}") for i in range(10)])
    server.stop()
    data = server.data_dir
    partitions = data / "streams" / "0" / "topics" / "0" / "partitions"
    shutil.copytree(partitions / "1", partitions / "5")  # a partition the metadata doesn't know
    stray = data / "streams" / "42" / "topics" / "3" / "partitions" / "0"
    stray.mkdir(parents=True)
    (stray / "00000000000000000000.log").write_bytes(b"x" * 1000)
    orphan_p5 = tree(partitions / "5")
    orphan_s42 = tree(data / "streams" / "42")
    server.start()

    quarantine = list((data / "quarantine").iterdir())
    assert len(quarantine) == 1
    q = quarantine[0]
    assert tree(q / "streams" / "0" / "topics" / "0" / "partitions" / "5") == orphan_p5
    assert tree(q / "streams" / "42") == orphan_s42
    assert not (partitions / "5").exists() and not (data / "streams" / "42").exists()
    warnings = [line for line in server.log().splitlines() if "not in the metadata" in line]
    assert len(warnings) == 2
    s42 = next(line for line in warnings if "streams/42 " in line)
    assert " WARNING " in s42 and "(1000 bytes in 1 files)" in s42 and str(q / "streams" / "42") in s42
    assert "kept there for recovery" in s42
    # the partitions the metadata names are untouched and serve their messages
    c = await connect_root(server.tcp_address)
    assert (await c.get_topic("s", "t")).messages_count == 20
    # a second start finds nothing more to move
    server.restart()
    assert len(list((data / "quarantine").iterdir())) == 1


async def test_a_delete_cut_short_by_a_crash_is_quarantined_and_explained(server):
    """The stream.delete record is durable, the crash comes before its rmtree: the directory
    is moved aside with a line saying a client deleted it, and the reused id starts empty."""
    await make_streams(server.tcp_address, 2)
    server.stop()
    data = server.data_dir
    saved = data.parent / "saved-stream-1"
    shutil.copytree(data / "streams" / "1", saved)
    server.start()
    c = await connect_root(server.tcp_address)
    await c.delete_stream("s1")
    server.kill()
    shutil.copytree(saved, data / "streams" / "1")  # as if the rmtree never ran
    server.start()
    line = next(line for line in server.log().splitlines() if "not in the metadata" in line)
    assert "streams/1 " in line and "a client deleted this stream (journal seq 6)" in line
    q = next((data / "quarantine").iterdir())
    assert tree(q / "streams" / "1") == tree(saved)
    c = await connect_root(server.tcp_address)
    await c.create_stream("fresh")
    fresh = await c.get_stream("fresh")
    assert fresh.id == 1 and fresh.topics_count == 0 and fresh.messages_count == 0
