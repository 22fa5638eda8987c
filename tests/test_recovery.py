"""Crash and corruption recovery against a real server process.

* kill -9 while producers write to a `persisted` topic: after the restart every acknowledged
  batch is there, at its acknowledged offset, in order, without duplicates, checksums valid;
* segment files damaged while the server is stopped (torn tail, flipped byte in the last
  batch, deleted index files): the restart serves only intact messages and new sends continue
  at the right offset; stored consumer offsets above the recovered end are clamped.
"""

from __future__ import annotations

import asyncio
import os
import random
import struct

import xxhash
from apache_iggy import Durability, PollingStrategy, SendMessage

from iggy.protocol.batch import compute_batch_checksum
from tests.conftest import ServerProcess, connect_root, sdk_poll
from tests.rawclient import RawClient, ident, store_offset_body
from tests.test_log import batch_positions

S, T = "rs", "rt"
HEADER, FRAME = 256, 48


async def root_with_topic(srv: ServerProcess, partitions: int, **options):
    """Root's SDK client on `srv`, once it made stream S and its topic T (`options`: of create_topic)."""
    client = await connect_root(srv.tcp_address)
    await client.create_stream(S)
    await client.create_topic(S, T, partitions, **options)
    return client


def partition_dir(srv: ServerProcess, pid: int, sid: int = 0, tid: int = 0) -> str:
    return os.path.join(srv.data_dir, "streams", str(sid), "topics", str(tid), "partitions", str(pid))


def files(directory: str, ext: str) -> list[str]:
    return sorted(os.path.join(directory, f) for f in os.listdir(directory) if f.endswith(ext))


def raw_poll_all(address: str, partition: int, stream=S, topic=T, chunk: int = 5000):
    """Every message of a partition through raw frames, with every batch checked:
    [(offset, id, payload, checksum)], and the partition's current offset."""
    raw = RawClient(address, timeout=30)
    assert raw.login().status == 0
    out, start, current = [], 0, 0
    while True:
        body = (
            b"\x01"
            + ident(1)
            + ident(stream)
            + ident(topic)
            + b"\x01"
            + struct.pack("<I", partition)
            + b"\x01"
            + struct.pack("<Q", start)
            + struct.pack("<I", chunk)
            + b"\x00"
        )
        reply = raw.read(100, body)
        assert reply.status == 0, reply
        pid, current, count = struct.unpack_from("<IQI", reply.body)
        assert pid == partition
        data = reply.body[16:]
        got = check_batches(data)
        assert len(got) == count
        if not got:
            break
        out += got
        start = got[-1][0] + 1
    raw.close()
    return out, current


def check_batches(data: bytes):
    """Walk served batches: layout, reserved bytes, batch checksum and every message checksum."""
    msgs, pos = [], 0
    while pos < len(data):
        base, _, _, length = struct.unpack_from("<QQQQ", data, pos + 8)
        count = struct.unpack_from("<I", data, pos + 48)[0]
        batch = data[pos : pos + length]
        assert len(batch) == length and count > 0
        assert batch[52:HEADER] == bytes(204)
        assert struct.unpack_from("<Q", batch, 40)[0] == compute_batch_checksum(batch)
        f = HEADER
        for _ in range(count):
            checksum, lo, hi, delta, _, hlen, plen, reserved = struct.unpack_from("<QQQIIIIQ", batch, f)
            flen = FRAME + plen + hlen
            assert checksum == xxhash.xxh3_64_intdigest(batch[f + 8 : f + flen])
            assert reserved == 0
            msgs.append((base + delta, lo | hi << 64, batch[f + FRAME : f + FRAME + plen], checksum))
            f += flen
        assert f == length
        pos += length
    return msgs


# ------------------------------------------------------------------------- kill -9


async def test_kill9_keeps_every_acknowledged_batch(tmp_path):
    """On the engine IGGY_TEST_ENGINE selects (scripts/test.sh runs the suite on both): the uring
    shards fsync before answering, the asyncio engine shares one fsync per loop turn."""
    srv = ServerProcess(tmp_path / "data").start()
    try:
        client = await root_with_topic(srv, 2, durability=Durability.PERSISTED)
        producers = [await connect_root(srv.tcp_address) for _ in range(4)]
        acked: list[tuple[int, int, list[bytes]]] = []  # (partition, base offset, payloads)
        sent_payloads: set[bytes] = set()
        seed = random.randrange(1 << 30)
        rng = random.Random(seed)

        async def produce(k: int, producer):
            partition = k % 2  # two producers per partition
            n = 0
            while True:
                size = rng.randint(1, 40)
                payloads = [f"p{k}-{n + i}-".encode() + b"x" * rng.randint(0, 300) for i in range(size)]
                sent_payloads.update(payloads)
                r = await producer.send_messages(S, T, partition, [SendMessage(p) for p in payloads])
                conf = r.confirmations[0]
                assert conf.partition_id == partition
                acked.append((partition, conf.base_offset, payloads))
                n += size

        tasks = [asyncio.ensure_future(produce(k, p)) for k, p in enumerate(producers)]
        await asyncio.sleep(rng.uniform(0.4, 1.5))
        for task in tasks:  # a task that failed early fails the test
            assert not task.done(), task.exception()
        srv.kill()  # SIGKILL: no flush, no close
        await asyncio.sleep(0.1)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert len(acked) > 20, f"too few batches acknowledged before the kill (seed {seed})"
        print(f"kill -9 after {len(acked)} acknowledged batches (seed {seed})")

        srv.start()
        for partition in (0, 1):
            try:
                stored, current = raw_poll_all(srv.tcp_address, partition)
            except (ConnectionError, OSError) as exc:
                raise AssertionError(f"poll after restart failed: {exc}\n{srv.log()[-4000:]}") from exc
            offsets = [o for o, _, _, _ in stored]
            assert offsets == list(range(len(stored))), f"offsets not contiguous (seed {seed})"
            if stored:
                assert current == len(stored) - 1
            by_offset = {o: p for o, _, p, _ in stored}
            mine = [a for a in acked if a[0] == partition]
            for _, base, payloads in mine:
                assert [by_offset.get(base + i) for i in range(len(payloads))] == payloads, (
                    f"acknowledged batch at {base} missing or changed (seed {seed})"
                )
            all_payloads = [p for _, _, p, _ in stored]
            assert len(set(all_payloads)) == len(all_payloads), f"duplicates (seed {seed})"
            assert set(all_payloads) <= sent_payloads
            # in order: each producer's messages appear in the order it sent them
            for k in (partition, partition + 2):
                seq = [int(p.split(b"-")[1]) for p in all_payloads if p.startswith(f"p{k}-".encode())]
                assert seq == sorted(seq) and seq == list(range(len(seq)))
        # the log continues after the restart at the recovered end
        client = await connect_root(srv.tcp_address)
        before = (await client.get_topic(S, T)).partitions[0].messages_count
        r = await client.send_messages(S, T, 0, [SendMessage("after-restart")])
        assert r.confirmations[0].base_offset == before
    finally:
        srv.stop()


# ------------------------------------------------------------------------- damaged segments


async def store_offset(client, consumer_id, partition, offset):
    body = store_offset_body(S, T, partition, offset, consumer=consumer_id)
    await client.send_binary_request(121, body)


async def get_offset(client, consumer_id, partition):
    raw = await client.send_binary_request(
        120, b"\x01" + ident(consumer_id) + ident(S) + ident(T) + b"\x01" + struct.pack("<I", partition)
    )
    return struct.unpack("<IQQ", raw) if raw else None


async def poll(client, partition, strategy=None, count=100_000):
    return await sdk_poll(client, S, T, strategy or PollingStrategy.First(), count=count, partition=partition)


async def test_torn_tail_corrupt_batch_and_missing_index(tmp_path):
    srv = ServerProcess(tmp_path / "data").start()
    try:
        client = await root_with_topic(srv, 3)
        for partition in range(3):
            for b in range(4):  # batches of 5: offsets 0..19
                await client.send_messages(S, T, partition, [SendMessage(f"{partition}:{b * 5 + i}") for i in range(5)])
        await store_offset(client, 7, 0, 19)
        await store_offset(client, 7, 1, 12)
        srv.stop()

        # partition 0: the tail of the last batch is torn (offsets 15..19 gone)
        log0 = files(partition_dir(srv, 0), ".log")[-1]
        pos, base, count, length = batch_positions(log0)[-1]
        assert (base, count) == (15, 5)
        with open(log0, "r+b") as f:
            f.truncate(pos + length - 7)
        # partition 1: a flipped byte inside the last batch's payload, and no index
        log1 = files(partition_dir(srv, 1), ".log")[-1]
        pos1, base1, _, length1 = batch_positions(log1)[-1]
        with open(log1, "r+b") as f:
            f.seek(pos1 + length1 - 2)
            byte = f.read(1)
            f.seek(pos1 + length1 - 2)
            f.write(bytes([byte[0] ^ 0x10]))
        for index in files(partition_dir(srv, 1), ".index"):
            os.unlink(index)
        # partition 2: only the index is lost
        for index in files(partition_dir(srv, 2), ".index"):
            os.unlink(index)

        srv.start()
        client = await connect_root(srv.tcp_address)
        for partition, intact in ((0, 15), (1, 15), (2, 20)):
            msgs = await poll(client, partition)
            assert [m.offset() for m in msgs] == list(range(intact)), partition
            assert [m.payload() for m in msgs] == [f"{partition}:{i}".encode() for i in range(intact)]
            stored, current = raw_poll_all(srv.tcp_address, partition)
            assert len(stored) == intact and current == intact - 1
            assert await poll(client, partition, PollingStrategy.Offset(intact)) == []
            last = await poll(client, partition, PollingStrategy.Last(), count=3)
            assert [m.offset() for m in last] == list(range(intact - 3, intact))
        assert files(partition_dir(srv, 1), ".index") and files(partition_dir(srv, 2), ".index")  # rebuilt
        # timestamps still seek after the index was rebuilt
        msgs = await poll(client, 2)
        since = await poll(client, 2, PollingStrategy.Timestamp(msgs[10].timestamp()))
        assert [m.offset() for m in since] == list(range(10, 20))
        # stored offsets above the recovered end are clamped down to it
        assert (await get_offset(client, 7, 0))[2] == 14
        assert (await get_offset(client, 7, 1))[2] == 12
        # new sends continue right after the last intact message
        for partition, intact in ((0, 15), (1, 15), (2, 20)):
            r = await client.send_messages(S, T, partition, [SendMessage("new-a"), SendMessage("new-b")])
            assert r.confirmations[0].base_offset == intact
            msgs = await poll(client, partition, PollingStrategy.Offset(intact - 1))
            assert [m.payload() for m in msgs] == [f"{partition}:{intact - 1}".encode(), b"new-a", b"new-b"]
        topic = await client.get_topic(S, T)
        assert [p.messages_count for p in topic.partitions] == [17, 17, 22]
        # server timestamps keep increasing across the restart
        for partition, intact in ((0, 15), (1, 15), (2, 20)):
            stamps = [m.timestamp() for m in await poll(client, partition)]
            assert stamps[intact] > stamps[intact - 1] and stamps == sorted(stamps)

        # and a clean restart after the repair changes nothing
        srv.restart()
        client = await connect_root(srv.tcp_address)
        topic = await client.get_topic(S, T)
        assert [p.messages_count for p in topic.partitions] == [17, 17, 22]
        assert "cut a torn tail" not in srv.log().split("iggy server stopped")[-1]
    finally:
        srv.stop()


async def test_recovery_across_segments(tmp_path):
    """1 MiB segments: damage the newest segment and lose every index; older segments stay whole."""
    srv = ServerProcess(tmp_path / "data").start()
    try:
        client = await root_with_topic(srv, 1, segment_size=1 << 20)
        for b in range(3):
            await client.send_messages(
                S, T, 0, [SendMessage(f"{b * 400 + i:08d}".encode() + b"z" * 3000) for i in range(400)]
            )
        await client.send_messages(S, T, 0, [SendMessage(f"{1200 + i:08d}".encode()) for i in range(10)])
        srv.kill()  # no graceful close either
        logs = files(partition_dir(srv, 0), ".log")
        assert len(logs) >= 3
        newest = [p for p in logs if os.path.getsize(p)][-1]
        pos, base, count, length = batch_positions(newest)[-1]
        assert (base, count) == (1200, 10)
        with open(newest, "r+b") as f:
            f.truncate(pos + HEADER + 10)  # header and a few bytes survive
        for index in files(partition_dir(srv, 0), ".index"):
            os.unlink(index)
        srv.start()
        client = await connect_root(srv.tcp_address)
        msgs = await poll(client, 0)
        assert [m.offset() for m in msgs] == list(range(1200))
        assert [int(m.payload()[:8]) for m in msgs] == list(range(1200))
        for start in (399, 799, 1190):
            window = await poll(client, 0, PollingStrategy.Offset(start), count=3)
            assert [m.offset() for m in window] == [o for o in range(start, start + 3) if o < 1200]
        r = await client.send_messages(S, T, 0, [SendMessage("after")])
        assert r.confirmations[0].base_offset == 1200
        part = (await client.get_topic(S, T)).partitions[0]
        assert part.messages_count == 1201 and part.current_offset == 1200
    finally:
        srv.stop()


# ------------------------------------------------------------------------- durability policy


class CountingLog:
    """Wraps a PartitionLog to count fsyncs (the Cython class cannot be patched)."""

    def __init__(self, log):
        self._log = log
        self.fsyncs = 0

    def fsync(self, index=True):
        self.fsyncs += 1
        self._log.fsync(index)

    def __getattr__(self, name):
        return getattr(self._log, name)


def partition_with(tmp_path, durability: str, messages_required=1024, bytes_required=1 << 20):
    from iggy.storage.partitions import Partition

    settings = {
        "segment_size": 1 << 20,
        "preallocate_segments": False,
        "durability": durability,
        "consumer_offset_durability": "replicated",
        "enforce_fsync": False,
        "messages_required_to_save": messages_required,
        "size_of_messages_required_to_save": bytes_required,
    }
    p = Partition(str(tmp_path / durability), 0, settings, True)
    p.log = CountingLog(p.log)
    return p


async def test_persisted_acknowledges_after_one_group_fsync(tmp_path):
    from iggy.protocol.batch import build_batch

    p = partition_with(tmp_path, "persisted")
    batch = build_batch([(1, b"x" * 10, b"")])
    futures = []
    for _ in range(5):  # five batches in the same loop turn
        with p.lock:
            p.log.append(batch, 0, len(batch), 1)
            futures.append(p.after_append(1, len(batch)))
    assert all(f is not None and not f.done() for f in futures)
    assert p.log.fsyncs == 0  # nothing acknowledged before the fsync
    await asyncio.gather(*futures)
    assert p.log.fsyncs == 1  # one fsync covered all five
    with p.lock:
        p.log.append(batch, 0, len(batch), 1)
        fut = p.after_append(1, len(batch))
    await fut
    assert p.log.fsyncs == 2
    p.close()


async def test_persisted_inline_fsyncs_before_it_returns(tmp_path):
    """inline=True (a shard thread: the caller says so, nothing probes for a loop) fsyncs in
    place and acknowledges at once, even while an event loop runs on this thread."""
    from iggy.protocol.batch import build_batch

    p = partition_with(tmp_path, "persisted")
    batch = build_batch([(1, b"x" * 10, b"")])
    with p.lock:
        p.log.append(batch, 0, len(batch), 1)
        assert p.after_append(1, len(batch), inline=True) is None
    assert p.log.fsyncs == 1
    p.close()


async def test_replicated_acknowledges_at_once_without_fsync(tmp_path):
    """replicated: the batch is in the page cache when acknowledged (no journal to lose on a
    crash of the process); the append path never waits for, nor schedules, an fsync."""
    from iggy.protocol.batch import build_batch

    p = partition_with(tmp_path, "replicated", messages_required=10)
    batch = build_batch([(1, b"x", b"")] * 4)
    for _ in range(5):
        with p.lock:
            p.log.append(batch, 0, len(batch), 1)
            assert p.after_append(4, len(batch)) is None
    await asyncio.sleep(0.01)
    assert p.log.fsyncs == 0
    assert p.log.read(0, 100)[1] == 20  # readable at once
    p.close()


async def test_stored_offsets_survive_restarts_and_bad_offset_files_are_ignored(tmp_path):
    srv = ServerProcess(tmp_path / "data").start()
    try:
        client = await root_with_topic(srv, 2)
        for partition in (0, 1):
            await client.send_messages(S, T, partition, [SendMessage(f"m{i}") for i in range(10)])
        consumer = await client.consumer_group("g", S, T)
        await consumer.store_offset(6, 1)
        await store_offset(client, 3, 0, 4)
        await store_offset(client, 4, 0, 8)
        await store_offset(client, 5, 1, 2)
        srv.kill()
        srv.start()
        client = await connect_root(srv.tcp_address)
        assert (await get_offset(client, 3, 0))[2] == 4
        assert (await get_offset(client, 4, 0))[2] == 8
        group = await client.get_consumer_group(S, T, "g")
        assert group is not None and group.members_count == 0  # memberships are not durable
        raw = await client.send_binary_request(
            120, b"\x02" + ident("g") + ident(S) + ident(T) + b"\x01" + struct.pack("<I", 1)
        )
        assert struct.unpack("<IQQ", raw) == (1, 9, 6)
        msgs = await sdk_poll(client, S, T, PollingStrategy.Next(), consumer=3, count=2)
        assert [m.offset() for m in msgs] == [5, 6]
        srv.stop()
        offsets_dir = os.path.join(partition_dir(srv, 0), "offsets", "consumers")
        with open(os.path.join(offsets_dir, "3"), "r+b") as f:  # a torn record
            f.truncate(5)
        with open(os.path.join(offsets_dir, "4"), "r+b") as f:  # a flipped bit: checksum mismatch
            f.write(b"\x09")
        srv.start()
        client = await connect_root(srv.tcp_address)
        assert await get_offset(client, 3, 0) is None
        assert await get_offset(client, 4, 0) is None
        assert (await get_offset(client, 5, 1))[2] == 2
        msgs = await sdk_poll(client, S, T, PollingStrategy.Next(), consumer=3, count=2, auto_commit=True)
        assert [m.offset() for m in msgs] == [0, 1]
        assert (await get_offset(client, 3, 0))[2] == 1
    finally:
        srv.stop()
