"""The metadata snapshot in etcd, written in parts (docs/CLUSTER.md, "Compaction of `meta/`").

Keys under `cluster.etcd.prefix`::

    snapshot                      msgpack {index, below, name, parts, size, sha256}: the header
    snapshot-parts/<name>/<i>     part i (6 digits, from 0) of the blob zlib(msgpack(state)),
                                  PART_SIZE bytes each but the last

`state` is the metadata as of meta/ index `index` (State.to_dict); the keys below
meta/<below> are deleted. `<name>` is `<index>-<epoch>`, each 20 digits; `size` and `sha256`
are the blob's length and SHA-256.

Why parts: etcd refuses a request over 1.5 MiB (its `--max-request-bytes` default) and a gRPC
client a reply over 4 MiB, while the metadata of tens of thousands of topics compresses to more
than that. The header stays small, so the leader reads `below` without the state, and one
transaction can still swap the header, delete meta/ below `below` and delete every other
snapshot's parts.

The parts are written before the transaction, one put each and without a fence (the
transaction that publishes the header is fenced on the leader's epoch, iggy.cluster.compaction).
So parts that no header names can exist for a while: those of a deposed leader's refused
compaction, or of a leader that died between its puts and its transaction. Their name holds
that writer's epoch, so they never mix with the parts of the header's write of the same index,
and the next published snapshot deletes them. A reader checks what it assembled against the
header's size and SHA-256: parts deleted or replaced while it read them (a newer snapshot
was published) or damaged show as a mismatch (SnapshotMismatch), never as other metadata.
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass
from typing import Any

import msgpack

from iggy.cluster.etcd import Etcd

PART_SIZE = 1024 * 1024  # bytes per part: under etcd's 1.5 MiB per request, two fit a 4 MiB reply
SNAPSHOT_MAX = 64 * 1024 * 1024  # compressed bytes: a larger snapshot is not written (logged)
INDEX_DIGITS = 20  # u64 in decimal
PART_DIGITS = 6


class SnapshotMismatch(ValueError):
    """The parts read do not make the blob the header describes."""


def header_key(prefix: bytes) -> bytes:
    return prefix + b"snapshot"


def parts_prefix(prefix: bytes, name: str) -> bytes:
    return prefix + b"snapshot-parts/" + name.encode() + b"/"


def part_key(prefix: bytes, name: str, i: int) -> bytes:
    return parts_prefix(prefix, name) + str(i).zfill(PART_DIGITS).encode()


def other_parts(prefix: bytes, name: str) -> list[tuple[bytes, bytes]]:
    """The key ranges of every snapshot's parts but `name`'s (two range deletes)."""
    mine = parts_prefix(prefix, name)
    everything = prefix + b"snapshot-parts/"
    return [(everything, mine), (_after(mine), _after(everything))]


def _after(key_prefix: bytes) -> bytes:
    """The first key past every key that starts with `key_prefix` (which ends with '/')."""
    return key_prefix[:-1] + bytes([key_prefix[-1] + 1])


@dataclass(frozen=True)
class Encoded:
    header: bytes
    name: str
    parts: list[bytes]


def pack_state(state: dict[str, Any]) -> bytes:
    """The msgpack of the state (taken on the main loop: its dicts change under it)."""
    packed: bytes = msgpack.packb(state, use_bin_type=True)
    return packed


def encode(index: int, below: int, epoch: int, packed_state: bytes, part_size: int = PART_SIZE) -> Encoded:
    """Header and parts of a snapshot of `packed_state` (pack_state) as of `index`. zlib: the
    metadata repeats itself (every topic's settings), about 18 times smaller."""
    blob = zlib.compress(packed_state)
    name = f"{index:0{INDEX_DIGITS}d}-{epoch:0{INDEX_DIGITS}d}"
    parts = [blob[i : i + part_size] for i in range(0, len(blob), part_size)] or [b""]
    header = {
        "index": index,
        "below": below,
        "name": name,
        "parts": len(parts),
        "size": len(blob),
        "sha256": hashlib.sha256(blob).digest(),
    }
    return Encoded(msgpack.packb(header, use_bin_type=True), name, parts)


def decode_header(value: bytes) -> dict[str, Any]:
    header = msgpack.unpackb(value, raw=False, strict_map_key=False)
    if not isinstance(header, dict) or not all(
        isinstance(header.get(k), t)
        for k, t in (("index", int), ("below", int), ("name", str), ("parts", int), ("size", int), ("sha256", bytes))
    ):
        raise ValueError("not a metadata snapshot header")
    return header


def assemble(header: dict[str, Any], parts: list[tuple[bytes, bytes]], prefix: bytes) -> dict[str, Any]:
    """{index, below, state} from the header and the (key, value) of its parts in key order."""
    expected = [part_key(prefix, header["name"], i) for i in range(header["parts"])]
    if [key for key, _ in parts] != expected:
        raise SnapshotMismatch(f"{len(parts)} parts of snapshot {header['name']}, the header names {len(expected)}")
    blob = b"".join(value for _, value in parts)
    if len(blob) != header["size"] or hashlib.sha256(blob).digest() != header["sha256"]:
        raise SnapshotMismatch(f"the parts of snapshot {header['name']} are not the bytes its header describes")
    state = msgpack.unpackb(zlib.decompress(blob), raw=False, strict_map_key=False)
    if not isinstance(state, dict):
        raise ValueError("the snapshot's state is not a map")
    return {"index": header["index"], "below": header["below"], "state": state}


PARTS_PER_PAGE = 2  # parts per range read: two parts of PART_SIZE stay under gRPC's 4 MiB reply


async def read_parts(etcd: Etcd, prefix: bytes, header: dict[str, Any]) -> list[tuple[bytes, bytes]]:
    """The (key, value) of the header's parts in key order, read in pages (Etcd.get_all)."""
    start = parts_prefix(prefix, header["name"])
    return [(kv.key, kv.value) for kv in await etcd.get_all(start, _after(start), page=PARTS_PER_PAGE)]
