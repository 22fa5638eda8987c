"""Rebalance: consumer-group members joining and leaving under load, counting redeliveries.

A producer sends batches to every partition of one topic the whole time. Four member slots
each run a loop: connect, log in, join the group, consume for a random while, then leave
gracefully (commit what they processed, LEAVE) or, with `--drop`, now and then drop the
connection between a poll and its commit (a crash), pause, and start again. A member
consumes the way the official SDK does: SYNC (606) for its partitions, a poll with strategy
`next` on one of them in turn (no auto-commit), a re-sync on 5009 and every `--resync`
seconds, then "processing" for `--process-ms` and a commit of the last offset it processed.
At the end the producer stops, every slot rejoins and the group drains.

Figures (JSON): messages produced; messages delivered more than once, and those delivered to
more than one member (each connection is one member); deliveries that were repeats; messages
never delivered (lost); polls and commits the server refused (5009); joins, leaves and drops.
A graceful leave commits first; a drop (`--drop`: the share of memberships that end so, 0 by
default) leaves its last batch uncommitted, and the member that takes the partition over
reads it again, whatever the rebalancing: at-least-once.

Eager rebalancing (every join moves partitions at once) redelivers what the old owner
polled and had not committed yet; cooperative rebalancing (iggy.control.groups) hands such a
partition over only after that commit, so with graceful leaves nothing is delivered twice.

Long form: `python -m tests.reliability.rebalance --seconds 60` (and `--engine asyncio`).
"""

from __future__ import annotations

import json
import os
import random
import struct
import threading
import time
from collections import defaultdict

from iggy.protocol import codes
from tests.rawclient import consumer_target, ident, poll_body, wire_name
from tests.reliability.common import Client, Launcher, harness_arguments, verify_batches

STREAM, TOPIC, GROUP = "rebalance", "t", "g"
NOT_OWNED = 5009
OP = codes.CODE_OPERATIONS

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_POLL_HEAD = struct.Struct("<IQI")


def group_body() -> bytes:
    return ident(STREAM) + ident(TOPIC) + ident(GROUP)


def offset_body(partition: int) -> bytes:
    return consumer_target(STREAM, TOPIC, partition, GROUP, kind=2)


class Rebalance:
    def __init__(
        self,
        address: str,
        partitions: int = 8,
        members: int = 4,
        batch: int = 10,
        poll_count: int = 20,
        process_ms: float = 10.0,
        resync: float = 0.5,
        drop: float = 0.0,
        stay: tuple[float, float] = (1.0, 4.0),
        pause: tuple[float, float] = (0.2, 1.5),
        seed: int = 1,
    ):
        self.address = address
        self.partitions, self.members, self.batch, self.poll_count = partitions, members, batch, poll_count
        self.process = process_ms / 1000
        self.resync = resync
        self.drop = drop
        self.stay, self.pause = stay, pause  # seconds a membership lasts, and between two of a slot
        self.seed = seed
        self.lock = threading.Lock()
        self.produced = [0] * partitions  # next offset per partition
        self.deliveries: dict[tuple[int, int], list[int]] = defaultdict(list)  # (partition, offset) -> members
        self.counts = defaultdict(int)
        self.errors: list[str] = []
        self.stop_producing = threading.Event()
        self.churning = threading.Event()
        self.stop_all = threading.Event()
        self._member_ids = iter(range(1, 1 << 30))

    def _error(self, text: str) -> None:
        with self.lock:
            if len(self.errors) < 20:
                self.errors.append(text)

    # ------------------------------------------------------------------ producer

    def produce(self) -> None:
        c = Client(self.address)
        p = 0
        try:
            while not self.stop_producing.is_set():
                reply, base = c.send(STREAM, TOPIC, p, [b"m" * 32] * self.batch)
                if reply.status or base is None:
                    self._error(f"send refused with {reply.status}")
                    return
                with self.lock:
                    self.produced[p] = base + self.batch
                p = (p + 1) % self.partitions
                time.sleep(0.002)
        except Exception as exc:  # any failure is a finding
            self._error(f"producer: {exc!r}")
        finally:
            c.close()

    # ------------------------------------------------------------------ one member

    def _sync(self, c: Client) -> list[int]:
        reply = c.read(codes.SYNC_CONSUMER_GROUP, group_body())
        if reply.status:
            raise AssertionError(f"sync refused with {reply.status}")
        if not reply.body:
            return []
        count = _U32.unpack_from(reply.body, 8)[0]
        return list(struct.unpack_from(f"<{count}I", reply.body, 12))

    def _member(self, rng: random.Random, stay: float) -> None:
        """One membership: join, consume until `stay` passes (or the run ends), then leave."""
        member = next(self._member_ids)
        c = Client(self.address)
        try:
            if c.call(OP[codes.JOIN_CONSUMER_GROUP], 0, group_body()).code != 0:
                raise AssertionError("join refused")
            with self.lock:
                self.counts["joins"] += 1
            until = time.monotonic() + stay
            crash = rng.random() < self.drop  # this membership ends by dropping the connection mid-batch
            partitions, synced, turn = self._sync(c), time.monotonic(), 0
            while not self.stop_all.is_set() and (not self.churning.is_set() or time.monotonic() < until or crash):
                if time.monotonic() - synced > self.resync or not partitions:
                    partitions, synced = self._sync(c), time.monotonic()  # the SDK re-syncs on heartbeat
                    if not partitions:
                        time.sleep(0.02)
                        continue
                p = partitions[turn % len(partitions)]
                turn += 1
                body = poll_body(STREAM, TOPIC, p, strategy=5, count=self.poll_count, consumer=GROUP, kind=2)
                reply = c.read(codes.POLL_MESSAGES, body)
                if reply.status == NOT_OWNED:
                    with self.lock:
                        self.counts["polls_refused"] += 1
                    partitions, synced = self._sync(c), time.monotonic()
                    continue
                if reply.status:
                    raise AssertionError(f"poll refused with {reply.status}")
                n = _POLL_HEAD.unpack_from(reply.body)[2]
                if not n:
                    time.sleep(0.005)
                    continue
                offsets = [m["offset"] for m in verify_batches(reply.body[16:])]
                with self.lock:
                    for o in offsets:
                        self.deliveries[(p, o)].append(member)
                if crash and self.churning.is_set() and time.monotonic() >= until:
                    with self.lock:
                        self.counts["drops"] += 1
                    return  # gone before committing this batch: its new owner gets it again
                time.sleep(self.process)  # processing
                code = c.call(OP[codes.STORE_CONSUMER_OFFSET], 0, offset_body(p) + _U64.pack(offsets[-1])).code
                if code == NOT_OWNED:
                    with self.lock:
                        self.counts["commits_refused"] += 1
                elif code:
                    raise AssertionError(f"commit refused with {code}")
            if c.call(OP[codes.LEAVE_CONSUMER_GROUP], 0, group_body()).code != 0:
                raise AssertionError("leave refused")
            with self.lock:
                self.counts["leaves"] += 1
        finally:
            c.close()

    def slot(self, i: int) -> None:
        rng = random.Random(self.seed * 100 + i)
        try:
            time.sleep(rng.uniform(0, 2))
            while not self.stop_all.is_set():
                self._member(rng, rng.uniform(*self.stay))
                if self.stop_all.is_set():
                    return
                if self.churning.is_set():
                    time.sleep(rng.uniform(*self.pause))
        except Exception as exc:  # any failure is a finding
            self._error(f"member slot {i}: {exc!r}")

    # ------------------------------------------------------------------ run

    def run(self, seconds: float, drain: float = 30.0) -> dict:
        setup = Client(self.address)
        for what, reply in (
            ("create stream", setup.create_stream(STREAM)),
            ("create topic", setup.create_topic(STREAM, TOPIC, self.partitions)),
            (
                "create group",
                setup.call(OP[codes.CREATE_CONSUMER_GROUP], 0, ident(STREAM) + ident(TOPIC) + wire_name(GROUP)),
            ),
        ):
            if reply.code:
                raise AssertionError(f"{what} refused with {reply.code}")
        setup.close()
        self.churning.set()
        threads = [threading.Thread(target=self.produce, daemon=True)]
        threads += [threading.Thread(target=self.slot, args=(i,), daemon=True) for i in range(self.members)]
        for t in threads:
            t.start()
        time.sleep(seconds)
        self.stop_producing.set()
        self.churning.clear()  # members in place stay; those between memberships rejoin
        deadline = time.monotonic() + drain
        while time.monotonic() < deadline:
            with self.lock:
                if all((p, o) in self.deliveries for p in range(self.partitions) for o in range(self.produced[p])):
                    break
            time.sleep(0.2)
        self.stop_all.set()
        for t in threads:
            t.join(15)
        return self.figures(seconds)

    def figures(self, seconds: float) -> dict:
        with self.lock:
            produced = sum(self.produced)
            repeated = {k: v for k, v in self.deliveries.items() if len(v) > 1}
            lost = sum(
                1 for p in range(self.partitions) for o in range(self.produced[p]) if (p, o) not in self.deliveries
            )
            return {
                "seconds": seconds,
                "produced": produced,
                "delivered": sum(len(v) for v in self.deliveries.values()),
                "redelivered_messages": len(repeated),
                "delivered_to_several_members": sum(1 for v in repeated.values() if len(set(v)) > 1),
                "repeat_deliveries": sum(len(v) - 1 for v in repeated.values()),
                "lost": lost,
                **dict(self.counts),
                "errors": list(self.errors),
            }


def main(argv=None) -> None:
    ap = harness_arguments(__doc__)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--members", type=int, default=4)
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--process-ms", type=float, default=10.0)
    ap.add_argument("--resync", type=float, default=0.5)
    ap.add_argument("--drop", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    with Launcher(args.engine, {"IGGY_HTTP_ENABLED": "false"}) as server:
        stats = Rebalance(
            server.tcp_address,
            args.partitions,
            args.members,
            process_ms=args.process_ms,
            resync=args.resync,
            drop=args.drop,
            seed=args.seed,
        ).run(args.seconds)
        stats["alive"] = server.alive()
    stats["engine"] = args.engine or os.environ.get("IGGY_TEST_ENGINE", "auto")
    print(json.dumps(stats, indent=2))
    if stats["errors"] or not stats["alive"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
