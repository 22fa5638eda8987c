"""The leader-epoch file of a partition (iggy.storage.leader_epochs): its byte layout, durability
by rename, many files in one pass (write_all), refusal of a damaged file, and where two copies'
records say the logs diverge."""

from __future__ import annotations

import os
import struct
import zlib

import pytest

from iggy.storage.leader_epochs import FILE_NAME, LeaderEpochs, LeaderEpochsCorrupt, divergence, end_of, write_all
from iggy.testing import IggyServerError


def test_records_survive_a_reopen_in_the_documented_layout(tmp_path):
    epochs = LeaderEpochs(str(tmp_path))
    assert epochs.records == [] and epochs.last_epoch == 0
    assert not (tmp_path / FILE_NAME).exists()  # nothing written until a record
    epochs.record(7, 0)
    epochs.record(7, 40)  # the same epoch again: no new record
    epochs.record(12, 40)
    epochs.record(15, 90)
    data = (tmp_path / FILE_NAME).read_bytes()
    body = b"IGGYLEP1" + struct.pack("<I", 3) + struct.pack("<QQQQQQ", 7, 0, 12, 40, 15, 90)
    assert data == body + struct.pack("<I", zlib.crc32(body))
    assert not (tmp_path / (FILE_NAME + ".tmp")).exists()
    again = LeaderEpochs(str(tmp_path))
    assert again.records == [(7, 0), (12, 40), (15, 90)] and again.last_epoch == 15
    again.truncate(90)  # a record whose range starts at the cut goes
    assert LeaderEpochs(str(tmp_path)).records == [(7, 0), (12, 40)]
    again.clear()
    assert LeaderEpochs(str(tmp_path)).records == []


def test_an_older_epoch_or_a_lower_start_is_refused(tmp_path):
    epochs = LeaderEpochs(str(tmp_path))
    epochs.record(5, 10)
    with pytest.raises(ValueError):
        epochs.record(4, 20)
    with pytest.raises(ValueError):
        epochs.record(6, 9)
    assert LeaderEpochs(str(tmp_path)).records == [(5, 10)]


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: d[:-1],  # cut short
        lambda d: d + b"\0",  # a byte too many
        lambda d: b"IGGYLEPX" + d[8:],  # magic
        lambda d: d[:20] + bytes([d[20] ^ 1]) + d[21:],  # a flipped bit: the checksum
        lambda d: b"",  # empty
    ],
    ids=["short", "long", "magic", "bit-flip", "empty"],
)
def test_a_damaged_file_is_refused_naming_it(tmp_path, damage):
    epochs = LeaderEpochs(str(tmp_path))
    epochs.record(3, 0)
    epochs.record(9, 17)
    path = tmp_path / FILE_NAME
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(LeaderEpochsCorrupt, match=str(path)):
        LeaderEpochs(str(tmp_path))


def test_records_out_of_order_with_a_valid_checksum_are_refused(tmp_path):
    body = b"IGGYLEP1" + struct.pack("<I", 2) + struct.pack("<QQQQ", 9, 0, 9, 5)
    (tmp_path / FILE_NAME).write_bytes(body + struct.pack("<I", zlib.crc32(body)))
    with pytest.raises(LeaderEpochsCorrupt, match="does not follow"):
        LeaderEpochs(str(tmp_path))


def test_a_damaged_file_stops_the_partition_from_opening(tmp_path):
    from iggy.storage.partitions import Partition

    settings = {
        "segment_size": 1 << 20,
        "preallocate_segments": False,
        "consumer_offset_durability": "replicated",
        "durability": "replicated",
        "enforce_fsync": False,
    }
    directory = str(tmp_path / "p")
    part = Partition(directory, 1, settings, True)
    part.epochs.record(4, 0)
    part.close()
    with open(os.path.join(directory, FILE_NAME), "r+b") as f:
        f.seek(13)
        f.write(b"\xff")
    with pytest.raises(LeaderEpochsCorrupt):
        Partition(directory, 1, settings, True)


def test_where_an_epoch_ends_and_where_two_copies_diverge():
    leader = [(3, 0), (8, 50), (11, 70)]
    assert end_of(leader, 3, 100) == 50
    assert end_of(leader, 8, 100) == 70
    assert end_of(leader, 11, 100) == 100
    assert end_of(leader, 5, 100) == 50  # an epoch it never had ends where the next one starts
    # an old leader of epoch 8 that appended past what the new leader (epoch 11) kept
    assert divergence(leader, 100, [(3, 0), (8, 50)], 85) == 70
    # a follower that missed the end of epoch 3 and has nothing later: keeps all it has
    assert divergence(leader, 100, [(3, 0)], 40) == 40
    # the same lengths but different epochs: only the shared epoch's part is equal
    assert divergence([(3, 0), (9, 50)], 60, [(3, 0), (8, 50)], 60) == 50
    assert divergence([(4, 0)], 10, [(5, 0)], 10) == 0
    assert divergence([], 0, [(5, 0)], 10) == 0


async def test_a_server_with_a_damaged_leader_epoch_file_refuses_to_start(server, client):
    await client.create_stream("s")
    await client.create_topic("s", "t", 1)
    server.stop()
    (directory,) = server.data_dir.glob("streams/*/topics/*/partitions/*")
    LeaderEpochs(str(directory)).record(5, 0)
    path = directory / FILE_NAME
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(IggyServerError, match="exited with 3"):
        server.start()
    assert f"the leader-epoch file {path} is damaged" in server.log()


# ---------------------------------------------------------------- many files in one pass (write_all)


def many(tmp_path, n: int) -> list[LeaderEpochs]:
    dirs = [tmp_path / f"p{i}" for i in range(n)]
    for d in dirs:
        d.mkdir()
    return [LeaderEpochs(str(d)) for d in dirs]


def test_deferred_records_are_written_in_one_pass_each_file_once(tmp_path, monkeypatch):
    files = many(tmp_path, 40)
    for i, f in enumerate(files):
        if i % 2:
            f.record(3, 0)  # an older file, written at once
        f.record(8, i, defer=True)
        f.record(8, i, defer=True)  # the same epoch again: no change
        f.truncate(i + 1, defer=True)  # keeps every record
    assert all(f.pending for f in files)
    assert [LeaderEpochs(f.path[: -len(FILE_NAME)]).records for f in files[:2]] == [[], [(3, 0)]]  # not yet
    renames: list[str] = []
    replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (renames.append(b), replace(a, b))[1])
    write_all([*files, *files[:10]])  # a file named twice is written once
    assert sorted(renames) == sorted(f.path for f in files)
    assert not any(f.pending for f in files)
    for i, f in enumerate(files):
        expected = [(3, 0), (8, i)] if i % 2 else [(8, i)]
        assert f.records == expected and LeaderEpochs(os.path.dirname(f.path)).records == expected
        assert not os.path.exists(f.path + ".tmp")
    renames.clear()
    write_all(files)  # nothing pending: nothing written
    files[0].flush()
    assert renames == []


def test_a_write_at_once_also_writes_what_was_deferred(tmp_path):
    (f,) = many(tmp_path, 1)
    f.record(4, 0, defer=True)
    f.record(6, 10)
    assert not f.pending and LeaderEpochs(os.path.dirname(f.path)).records == [(4, 0), (6, 10)]


def test_a_tmp_file_left_by_a_crash_is_not_read_and_is_written_over(tmp_path):
    files = many(tmp_path, 4)
    files[1].record(2, 0)
    files[3].record(2, 0)
    for f, junk in zip(files, [b"", b"IGGYLEP1\x05", b"\xff" * 100, b"IGGYLEP1"], strict=True):
        with open(f.path + ".tmp", "wb") as out:  # a pass cut short by a crash, torn or empty
            out.write(junk)
    loaded = [LeaderEpochs(os.path.dirname(f.path)) for f in files]
    assert [f.records for f in loaded] == [[], [(2, 0)], [], [(2, 0)]]
    for f in loaded:
        f.record(5, 7, defer=True)
    write_all(loaded)
    assert [LeaderEpochs(os.path.dirname(f.path)).records for f in files] == [
        [(5, 7)],
        [(2, 0), (5, 7)],
        [(5, 7)],
        [(2, 0), (5, 7)],
    ]


def test_a_pass_that_cannot_write_a_file_renames_none_and_keeps_what_is_on_disk(tmp_path):
    files = many(tmp_path, 6)
    for f in files:
        f.record(2, 0)
        f.record(5, 9, defer=True)
    os.mkdir(files[4].path + ".tmp")  # this tmp file cannot be opened for writing
    with pytest.raises(OSError):
        write_all(files)
    for f in files:
        assert f.records == [(2, 0)] and not f.pending  # as on disk: the deferred change is dropped
        assert LeaderEpochs(os.path.dirname(f.path)).records == [(2, 0)]
