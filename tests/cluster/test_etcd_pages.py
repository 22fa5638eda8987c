"""Etcd.get_all against a real etcd: a range larger than one gRPC reply (4 MiB) is read whole,
in key order, page by page; the plain one-call read of the same range fails."""

from __future__ import annotations

import pytest

from iggy.cluster.etcd import Etcd, EtcdUnavailable

PREFIX = b"/pages-test/"
VALUE = b"v" * 4096
KEYS = 1300  # 1300 x 4 KiB: more than 5 MiB


async def test_a_range_beyond_one_reply_is_read_whole_in_key_order(etcd):
    client = Etcd([etcd.url], 10.0)
    keys = [PREFIX + b"%06d" % i for i in range(KEYS)]
    try:
        for first in range(0, KEYS, 100):  # etcd takes at most 128 operations per transaction

            async def put_chunk(c, chunk=keys[first : first + 100]):
                t = c.transactions
                return await c.transaction(compare=[], success=[t.put(k, VALUE) for k in chunk], failure=[])

            await client.call(put_chunk)
        end = PREFIX[:-1] + bytes([PREFIX[-1] + 1])
        with pytest.raises(EtcdUnavailable):  # one reply cannot hold it
            await client.call(lambda c: c.get_range(PREFIX, end))
        for page in (500, 256, 7):
            got = await client.get_all(PREFIX, end, page=page)
            assert [kv.key for kv in got] == keys
            assert all(kv.value == VALUE for kv in got)
        assert await client.get_all(PREFIX + b"x", end) == []  # an empty range
    finally:
        await client.close()
