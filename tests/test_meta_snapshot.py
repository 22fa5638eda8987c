"""The metadata snapshot's encoding in parts (iggy.cluster.meta_snapshot), without etcd: a round
trip over any part size, and every way the parts can disagree with their header refused."""

from __future__ import annotations

import msgpack
import pytest

from iggy.cluster import meta_snapshot as ms

PREFIX = b"/p/"
STATE = {"cluster_index": 7, "streams": {str(i): {"name": f"s{i}", "topics": {}} for i in range(300)}}


def parts_of(enc: ms.Encoded) -> list[tuple[bytes, bytes]]:
    return [(ms.part_key(PREFIX, enc.name, i), p) for i, p in enumerate(enc.parts)]


@pytest.mark.parametrize("part_size", [1, 7, 64, 1000, ms.PART_SIZE])
def test_a_snapshot_round_trips_in_parts_of_any_size(part_size):
    enc = ms.encode(7, 5, 42, ms.pack_state(STATE), part_size)
    header = ms.decode_header(enc.header)
    assert header["index"] == 7 and header["below"] == 5 and header["name"] == f"{7:020d}-{42:020d}"
    assert header["parts"] == len(enc.parts) == -(-header["size"] // part_size)
    assert all(len(p) == part_size for p in enc.parts[:-1]) and 0 < len(enc.parts[-1]) <= part_size
    assert ms.assemble(header, parts_of(enc), PREFIX) == {"index": 7, "below": 5, "state": STATE}


def test_parts_that_disagree_with_the_header_are_refused():
    enc = ms.encode(7, 5, 42, ms.pack_state(STATE), 64)
    header = ms.decode_header(enc.header)
    parts = parts_of(enc)
    assert len(parts) > 3
    damaged = [(k, bytes([v[0] ^ 1]) + v[1:]) if i == 2 else (k, v) for i, (k, v) in enumerate(parts)]
    other = ms.encode(7, 5, 43, ms.pack_state({**STATE, "cluster_index": 8}), 64)  # another writer's
    for bad in (
        parts[:-1],  # one missing
        parts[1:],  # the first missing
        [*parts, (ms.part_key(PREFIX, enc.name, len(parts)), b"x")],  # one too many
        damaged,  # a flipped bit
        [(k, v) for k, v in reversed(parts)],  # out of order
        parts_of(other),  # the parts of another name
        [],
    ):
        with pytest.raises(ms.SnapshotMismatch):
            ms.assemble(header, bad, PREFIX)


def test_a_header_missing_a_field_does_not_decode():
    header = msgpack.unpackb(ms.encode(1, 1, 1, ms.pack_state({})).header)
    for field in header:
        with pytest.raises(ValueError, match="not a metadata snapshot header"):
            ms.decode_header(msgpack.packb({k: v for k, v in header.items() if k != field}))
    with pytest.raises(ValueError):
        ms.decode_header(msgpack.packb([1, 2]))
