"""Load: many concurrent producers and consumers on one topic for a bounded time.

Producers (one connection each) send batches to the topic's partitions in turn; every payload
names its producer and sequence number. Consumers (one connection each) own the partitions
p with p % consumers == their index and poll them with strategy `next` and auto-commit, so
the server's stored offsets drive them. When the producers stop, the consumers drain to the
last offset. Checks: no request ever failed, every served batch verifies (checksums), every
partition's offsets arrive contiguous with no duplicate, the number of messages consumed
equals the number acknowledged, every acknowledged message is consumed exactly once, and
each producer's messages keep their order within a partition.

Long form: `python -m tests.reliability.load --producers 16 --consumers 8 --seconds 60`.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time

from tests.rawclient import poll_body
from tests.reliability.common import Client, Launcher, harness_arguments, verify_batches

STREAM, TOPIC = "load", "t"


def poll_next(c: Client, partition: int, count: int):
    body = poll_body(STREAM, TOPIC, partition, strategy=5, count=count, auto_commit=True, consumer=1000 + partition)
    return c.read(100, body)


class Load:
    def __init__(self, address: str, producers: int, consumers: int, partitions: int, batch: int):
        self.address = address
        self.producers, self.consumers, self.partitions, self.batch = producers, consumers, partitions, batch
        self.lock = threading.Lock()
        self.acked = {p: {} for p in range(partitions)}  # partition -> {payload: base offset}
        self.acked_count = 0
        self.consumed = {p: [] for p in range(partitions)}  # partition -> [(offset, payload)]
        self.errors: list[str] = []
        self.stop_producing = threading.Event()
        self.producers_done = threading.Event()
        self.final_offsets: dict[int, int] = {}

    def produce(self, i: int) -> None:
        rng = random.Random(i)
        c = Client(self.address)
        seq = 0
        try:
            while not self.stop_producing.is_set():
                p = (i + seq) % self.partitions
                n = rng.randint(1, self.batch)
                payloads = [f"{i}:{seq + k}:".encode() + b"x" * rng.randint(0, 100) for k in range(n)]
                reply, base = c.send(STREAM, TOPIC, p, payloads)
                if reply.status or base is None:
                    self.errors.append(f"producer {i}: send refused with {reply.status}")
                    return
                with self.lock:
                    for k, pl in enumerate(payloads):
                        self.acked[p][pl] = base + k
                    self.acked_count += n
                seq += n
        except Exception as exc:
            self.errors.append(f"producer {i}: {exc!r}")
        finally:
            c.close()

    def consume(self, j: int) -> None:
        mine = [p for p in range(self.partitions) if p % self.consumers == j]
        c = Client(self.address)
        expected = dict.fromkeys(mine, 0)
        try:
            while True:
                idle = True
                for p in mine:
                    reply = poll_next(c, p, 1000)
                    if reply.status:
                        self.errors.append(f"consumer {j}: poll of {p} failed with {reply.status}")
                        return
                    messages = verify_batches(reply.body[16:])
                    for m in messages:
                        if m["offset"] != expected[p]:
                            self.errors.append(
                                f"consumer {j}: partition {p} offset {m['offset']}, expected {expected[p]}"
                            )
                            return
                        expected[p] += 1
                    if messages:
                        idle = False
                        self.consumed[p] += [(m["offset"], m["payload"]) for m in messages]
                if idle:
                    if self.producers_done.is_set() and all(expected[p] >= self.final_offsets[p] for p in mine):
                        return
                    time.sleep(0.001)
        except Exception as exc:
            self.errors.append(f"consumer {j}: {exc!r}")
        finally:
            c.close()

    def run(self, seconds: float) -> dict:
        root = Client(self.address)
        assert root.create_stream(STREAM).code == 0
        assert root.create_topic(STREAM, TOPIC, self.partitions).code == 0
        producers = [threading.Thread(target=self.produce, args=(i,)) for i in range(self.producers)]
        consumers = [threading.Thread(target=self.consume, args=(j,)) for j in range(self.consumers)]
        started = time.monotonic()
        for t in producers + consumers:
            t.start()
        time.sleep(seconds)
        self.stop_producing.set()
        for t in producers:
            t.join(60)
        produced_for = time.monotonic() - started
        for p in range(self.partitions):
            self.final_offsets[p] = len(self.acked[p])
        self.producers_done.set()
        for t in consumers:
            t.join(120)
        drained_after = time.monotonic() - started
        root.close()
        if self.errors:
            raise AssertionError(self.errors[0])
        consumed = 0
        for p in range(self.partitions):
            got = self.consumed[p]
            consumed += len(got)
            offsets = [o for o, _ in got]
            if offsets != list(range(len(offsets))):
                raise AssertionError(f"partition {p}: offsets not contiguous or duplicated")
            if len(got) != len(self.acked[p]):
                raise AssertionError(f"partition {p}: {len(self.acked[p])} acknowledged, {len(got)} consumed")
            for offset, payload in got:
                if self.acked[p].get(payload) != offset:
                    raise AssertionError(
                        f"partition {p}: offset {offset} holds {payload[:20]!r}, not what was acknowledged there"
                    )
            last: dict[bytes, int] = {}
            for _, payload in got:
                producer, seq, _ = payload.split(b":", 2)
                if int(seq) <= last.get(producer, -1):
                    raise AssertionError(f"partition {p}: producer {producer!r} out of order")
                last[producer] = int(seq)
        if consumed != self.acked_count:
            raise AssertionError(f"{self.acked_count} acknowledged, {consumed} consumed")
        return {
            "producers": self.producers,
            "consumers": self.consumers,
            "partitions": self.partitions,
            "seconds_producing": round(produced_for, 1),
            "seconds_until_drained": round(drained_after, 1),
            "messages_acknowledged": self.acked_count,
            "messages_consumed": consumed,
            "duplicates": 0,
            "errors": 0,
            "messages_per_second": round(self.acked_count / produced_for),
        }


def main(argv=None) -> None:
    ap = harness_arguments(__doc__)
    ap.add_argument("--producers", type=int, default=16)
    ap.add_argument("--consumers", type=int, default=8)
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--batch", type=int, default=50, help="messages per batch, at most")
    ap.add_argument("--seconds", type=float, default=60)
    args = ap.parse_args(argv)
    with Launcher(args.engine, {"IGGY_HTTP_ENABLED": "false"}) as server:
        stats = Load(server.tcp_address, args.producers, args.consumers, args.partitions, args.batch).run(args.seconds)
    stats["engine"] = args.engine or os.environ.get("IGGY_TEST_ENGINE", "auto")
    print(json.dumps(stats, indent=2))


if __name__ == "__main__":
    main()
