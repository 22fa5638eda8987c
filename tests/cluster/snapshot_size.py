"""The size of the metadata snapshot that compaction writes to etcd (docs/CLUSTER.md,
"Compaction of `meta/`"), for a State filled with N streams of one topic of 3 partitions with
default settings, then 1,000 users and 10,000 live JWT revocations:

    python -m tests.cluster.snapshot_size [N ...]

prints msgpack and compressed bytes (what the snapshot's parts hold, at most SNAPSHOT_MAX), the
number of parts and the time to encode it (msgpack on the leader's main loop, zlib on a thread,
once per compaction).
"""

from __future__ import annotations

import sys
import time

import msgpack

from iggy.cluster import meta_snapshot
from iggy.cluster.meta_snapshot import SNAPSHOT_MAX
from iggy.control import topics
from iggy.metadata.state import State

CREATED = 1_796_461_074_194_342  # microseconds


def with_topics(n: int) -> State:
    st = State()
    for i in range(n):
        st.apply({"op": "stream.create", "id": i, "name": f"stream-{i:05d}", "created_at": CREATED + i})
        st.apply(
            {
                "op": "topic.create",
                "stream": i,
                "id": 0,
                "name": "topic-name",
                "created_at": CREATED + i,
                "partitions": 3,
                "settings": topics.resolve({}),
                "explicit": [],
            }
        )
    return st


def report(what: str, st: State) -> None:
    raw = len(msgpack.packb(st.to_dict(), use_bin_type=True))
    started = time.perf_counter()
    snap = meta_snapshot.encode(1, 1, 1, meta_snapshot.pack_state(st.to_dict()))
    took = time.perf_counter() - started
    size = sum(len(part) for part in snap.parts)
    fits = "fits" if size <= SNAPSHOT_MAX else "too big"
    print(
        f"{what}: {raw} bytes msgpack, {size} compressed in {len(snap.parts)} parts ({fits}), "
        f"{took * 1000:.1f} ms to encode"
    )


def main(counts: list[int]) -> None:
    for n in counts:
        report(f"{n} topics", with_topics(n))
    st = State()
    for i in range(1000):
        st.apply(
            {
                "op": "user.create",
                "id": i,
                "username": f"user-{i}",
                "password_hash": "$argon2id$v=19$m=19456,t=2,p=1$" + "s" * 22 + "$" + "h" * 43,
                "status": 1,
                "permissions": None,
                "created_at": CREATED,
            }
        )
    report("1000 users", st)
    for i in range(10_000):
        jti = f"0193b6c8-1234-7abc-8def-{i:012d}"
        st.apply({"op": "jwt.revoke", "jti": jti, "expiry": 2_000_000_000, "at": 1, "user": i % 1000})
    report("1000 users and 10000 revocations", st)


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [1000, 10_000, 40_000])
