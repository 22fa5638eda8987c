"""Scenarios of iggy-bench: setup (streams, topics, groups, data), actors, cleanup.

Names and semantics follow upstream `core/bench` (benchmarks/*.rs, args/kinds/*):

==============================  ===============================================================
pinned_producer                 producer i sends to stream bench-stream-i, topic-1, partition 0
pinned_consumer                 consumer i polls stream i from offset 0 (offset strategy); the
                                streams are reused when they already hold enough messages
                                (a previous `pinned-producer --keep`), else filled first
pinned_producer_and_consumer    both at once on the same streams; consumer latency is end to
                                end (receive time - the batch's origin_timestamp)
balanced_producer               producers spread over the streams, partitions round robin
balanced_consumer_group         one group per stream, members poll their partitions with the
                                next strategy + auto commit until the data is consumed
end_to_end_producing_consumer   each actor sends a batch and polls it back (own partition),
                                latency = that round trip
==============================  ===============================================================

Data volume: `message_batches` per actor, or `total_data` bytes of payload split over the
actors of a kind. Every actor opens its own connection and logs in before the clock starts;
all actors start together. Streams this run created are deleted at the end unless `keep`.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, TypeVar

from iggy.bench.client import (
    COMMAND_REPLY,
    CONSUMER_GROUP,
    CONSUMER_SINGLE,
    STRATEGY_NEXT,
    STRATEGY_OFFSET,
    BenchError,
    Connection,
    connect,
)
from iggy.bench.fastclient import PollFrame, SendFrame, scan_poll
from iggy.bench.metrics import (
    CONSUMER,
    PRODUCER,
    PRODUCING_CONSUMER,
    ActorMetrics,
    actor_summary,
    group_metrics,
    now_iso,
)
from iggy.protocol.batch import build_batch, random_id
from iggy.protocol.errors import ErrorCode

KINDS = (
    "pinned_producer",
    "pinned_consumer",
    "pinned_producer_and_consumer",
    "balanced_producer",
    "balanced_consumer_group",
    "end_to_end_producing_consumer",
)
PRODUCING_KINDS = {
    "pinned_producer",
    "pinned_producer_and_consumer",
    "balanced_producer",
    "end_to_end_producing_consumer",
}
DEFAULT_MESSAGE_BATCHES = 1000

# group errors that call for a re-sync
_RESYNC = {ErrorCode.CONSUMER_GROUP_MEMBER_NOT_FOUND, ErrorCode.CONSUMER_GROUP_PARTITION_NOT_OWNED}


@dataclass
class BenchConfig:
    """Everything a run needs; the CLI and perf/compare_peers.py build one of these."""

    kind: str
    server_address: str = "127.0.0.1:8090"
    username: str = "iggy"
    password: str = "iggy"
    message_size: int = 1000
    messages_per_batch: int = 1000
    message_batches: int | None = None  # per actor
    total_data: int | None = None  # payload bytes, all actors of a kind
    rate_limit: int | None = None  # payload bytes per second, all actors
    warmup_secs: float = 0.0
    producers: int = 0
    consumers: int = 0
    streams: int = 1
    partitions: int = 1
    consumer_groups: int = 0
    durability: str = "replicated"
    keep: bool = False
    reuse_streams: bool = False
    nodelay: bool = True
    stream_prefix: str = "bench-stream-"
    topic_name: str = "topic-1"

    def validate(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown benchmark kind {self.kind!r}")
        if self.message_size < 1 or self.messages_per_batch < 1:
            raise ValueError("message size and messages per batch must be at least 1")
        if self.message_batches is not None and self.total_data is not None:
            raise ValueError("give either message batches or total data, not both")
        if self.total_data is not None and self.total_data < 2 * self.message_size:
            raise ValueError("total data must be at least twice the message size")
        if self.durability not in ("replicated", "persisted"):
            raise ValueError("durability is replicated or persisted")
        k = self.kind
        if k == "pinned_producer" and self.streams != self.producers:
            raise ValueError(f"pinned producer: streams ({self.streams}) must equal producers ({self.producers})")
        if k == "pinned_consumer" and self.streams != self.consumers:
            raise ValueError(f"pinned consumer: streams ({self.streams}) must equal consumers ({self.consumers})")
        if k == "pinned_producer_and_consumer" and not (self.streams == self.producers == self.consumers):
            raise ValueError("pinned producer and consumer: streams, producers and consumers must be equal")
        if k == "balanced_consumer_group" and self.consumer_groups != self.streams:
            raise ValueError("balanced consumer group: one consumer group per stream")
        if k == "end_to_end_producing_consumer" and self.streams > self.producers:
            raise ValueError("end to end: streams must not exceed producing consumers")
        if self.producers < (1 if k in PRODUCING_KINDS else 0):
            raise ValueError("at least one producer")
        if self.consumers < (
            1 if k in ("pinned_consumer", "pinned_producer_and_consumer", "balanced_consumer_group") else 0
        ):
            raise ValueError("at least one consumer")
        if self.streams < 1 or self.partitions < 1:
            raise ValueError("at least one stream and one partition")

    def batches_for(self, actors: int) -> list[int]:
        """Batches each of `actors` actors handles."""
        if self.total_data is None:
            return [self.message_batches or DEFAULT_MESSAGE_BATCHES] * actors
        total = max(1, math.ceil(self.total_data / (self.message_size * self.messages_per_batch)))
        base, extra = divmod(total, actors)
        return [base + (1 if i < extra else 0) for i in range(actors)]

    def params(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("password")
        out["benchmark_kind"] = out.pop("kind")
        out["transport"] = "tcp"
        return out


class Progress:
    """A shared counter the UI samples (no per-batch UI work)."""

    def __init__(self) -> None:
        self.phase = ""
        self.total = 0
        self.done = 0
        self.bytes = 0
        self.started = time.perf_counter()
        self.listener: Callable[[str, int], None] | None = None  # called with (phase, total) when a phase starts

    def start(self, phase: str, total: int) -> None:
        self.phase, self.total, self.done, self.bytes = phase, total, 0, 0
        self.started = time.perf_counter()
        if self.listener is not None:
            self.listener(phase, total)

    def add(self, messages: int, nbytes: int) -> None:
        self.done += messages
        self.bytes += nbytes


@dataclass
class Target:
    """One bench stream: ids and the topic's partitions."""

    name: str
    stream_id: int
    topic_id: int
    partitions: list[int]
    group_id: int | None = None
    created: bool = False


@dataclass
class BenchReport:
    config: BenchConfig
    actors: list[ActorMetrics]
    started_at: str
    finished_at: str
    extra: dict[str, Any] = field(default_factory=dict)

    def group(self, kind: str) -> dict[str, Any] | None:
        for g in group_metrics(self.actors):
            if g["kind"] == kind:
                return g
        return None

    def to_dict(self) -> dict[str, Any]:
        import platform
        import socket as _socket

        return {
            "tool": "iggy-bench (python)",
            "params": self.config.params(),
            "hardware": {
                "hostname": _socket.gethostname(),
                "cpu_cores": os.cpu_count(),
                "platform": platform.platform(),
                "python": platform.python_version(),
            },
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "individual_metrics": [actor_summary(a, self.config.kind) for a in self.actors],
            "group_metrics": group_metrics(self.actors),
            **self.extra,
        }


def _now_us() -> int:
    return time.time_ns() // 1000


class _Pacer:
    """Keeps an actor at or below `rate` payload bytes per second (None = unlimited)."""

    def __init__(self, rate: float | None):
        self.rate = rate
        self.start = time.perf_counter()
        self.sent = 0

    async def pace(self, nbytes: int) -> None:
        if not self.rate:
            return
        self.sent += nbytes
        wait = self.start + self.sent / self.rate - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)


def _actor_batch(cfg: BenchConfig, seed: int) -> bytes:
    """One batch for one actor, encoded once (distinct payloads per actor and message)."""
    size, count = cfg.message_size, cfg.messages_per_batch
    noise = os.urandom(size * count)
    tag = f"{seed}:".encode()
    messages = [(random_id(), (tag + noise[i * size : (i + 1) * size])[:size], b"") for i in range(count)]
    return build_batch(messages)


_T = TypeVar("_T")


def _prepared(value: _T | None) -> _T:
    """What an actor's prepare() sets (its connection and frames, a group's id): running an
    actor that was not prepared is a bug of the runner."""
    if value is None:
        raise RuntimeError("bench actor used before prepare()")
    return value


def _check_reply(command: int, status: int, what: str) -> None:
    if command != COMMAND_REPLY:
        raise BenchError(f"{what}: evicted by the server", 100000)
    if status:
        raise BenchError(f"{what} failed with error {status}", status)


# --------------------------------------------------------------------------- actors


@dataclass(eq=False)
class _Actor:
    """What every actor has: its config, target, metrics, pacing and one connection, which
    `prepare` opens (the frames it sends are built once, for that connection's session).
    Actors are dataclasses: their constructor takes these fields, then the actor's own."""

    kind: ClassVar[str]  # of its metrics

    cfg: BenchConfig
    actor_id: int
    target: Target
    progress: Progress | None
    rate: float | None  # payload bytes per second; None: as fast as it can

    def __post_init__(self) -> None:
        self.metrics = ActorMetrics(self.kind, self.actor_id, self.target.name)
        self.conn: Connection | None = None

    async def _connect(self) -> Connection:
        cfg = self.cfg
        self.conn = await connect(cfg.server_address, cfg.username, cfg.password, cfg.nodelay)
        return self.conn

    def _send_frame(self, conn: Connection, partition: int) -> SendFrame:
        """SEND_MESSAGES of this actor's batch to `partition` of its target."""
        t = self.target
        batch = _actor_batch(self.cfg, self.metrics.actor_id)
        return SendFrame(batch, conn.session, conn.client_id, t.stream_id, t.topic_id, partition)

    def _poll_frame(self, conn: Connection, partition: int) -> PollFrame:
        """POLL_MESSAGES of `partition` as a single consumer (id: the actor's) by offset."""
        t = self.target
        return PollFrame(
            conn.session,
            conn.client_id,
            CONSUMER_SINGLE,
            self.metrics.actor_id,
            t.stream_id,
            t.topic_id,
            partition,
            STRATEGY_OFFSET,
            self.cfg.messages_per_batch,
        )

    async def _batch_loop(
        self,
        frame: SendFrame,
        limit: int,
        deadline: float | None,
        record: bool,
        step: Callable[[int], Awaitable[float]],
    ) -> int:
        """Await `step(n)` (batch n's round trips; returns its latency) `limit` times or until
        `deadline`, each counted as one batch of `frame` (recorded when `record`), paced;
        returns the batches done."""
        m = self.metrics
        per_batch = frame.message_count
        user_bytes = self.cfg.message_size * per_batch
        wire_bytes = frame.batch_length
        progress = self.progress if record else None
        pacer = _Pacer(self.rate)
        perf = time.perf_counter
        done = 0
        if record:
            m.start = perf()
        while done < limit if deadline is None else perf() < deadline:
            latency = await step(done)
            done += 1
            if record:
                m.record(latency, per_batch, user_bytes, wire_bytes)
            if progress is not None:
                progress.add(per_batch, user_bytes)
            await pacer.pace(user_bytes)
        if record:
            m.end = perf()
        return done

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


@dataclass(eq=False)
class Producer(_Actor):
    """Sends `batches` pre-built batches, one outstanding at a time, partitions round robin."""

    kind = PRODUCER

    partitions: list[int]
    batches: int
    frame: SendFrame | None = field(default=None, init=False)

    async def prepare(self) -> None:
        self.frame = self._send_frame(await self._connect(), self.partitions[0])

    async def run(self, batches: int | None = None, deadline: float | None = None, record: bool = True) -> int:
        """Send `batches` (default: the actor's share) or until `deadline`; returns batches sent."""
        conn, frame = _prepared(self.conn), _prepared(self.frame)
        parts, nparts = self.partitions, len(self.partitions)
        perf = time.perf_counter

        async def send(n: int) -> float:
            data = frame.stamp(conn.write_request(), _now_us(), parts[n % nparts])
            t0 = perf()
            command, _, status, _ = await conn.roundtrip(data)
            latency = perf() - t0
            if command != COMMAND_REPLY or status:
                _check_reply(command, status, "send messages")
            return latency

        return await self._batch_loop(frame, self.batches if batches is None else batches, deadline, record, send)


@dataclass(eq=False)
class Consumer(_Actor):
    """Polls one partition with the offset strategy (`count` = messages per batch).

    With `end_to_end`, a poll that finds nothing new is retried after a short sleep and the
    latency recorded is receive time - the first batch's origin_timestamp; otherwise an empty
    poll is an error (the data must be there) and the latency is the poll round trip.
    """

    kind = CONSUMER

    partition: int
    messages: int
    end_to_end: bool = False
    offset: int = 0  # the next to poll
    frame: PollFrame | None = field(default=None, init=False)

    async def prepare(self) -> None:
        self.frame = self._poll_frame(await self._connect(), self.partition)

    async def warmup(self, deadline: float, stop_at: int) -> None:
        """Poll the first `stop_at` messages over and over until `deadline` (nothing recorded)."""
        conn, frame, offset = _prepared(self.conn), _prepared(self.frame), 0
        while time.perf_counter() < deadline and stop_at > 0:
            command, _, status, body = await conn.roundtrip(frame.stamp(conn.read_request(), self.partition, offset))
            _check_reply(command, status, "poll messages")
            count, nxt = scan_poll(body)[2::3]
            offset = nxt if count and nxt < stop_at else 0

    async def run(self) -> None:
        conn, frame, m = _prepared(self.conn), _prepared(self.frame), self.metrics
        progress, partition = self.progress, self.partition
        pacer = _Pacer(self.rate)
        perf = time.perf_counter
        offset, want, empty = self.offset, self.messages, 0
        m.start = perf()
        while m.messages < want:
            data = frame.stamp(conn.read_request(), partition, offset)
            t0 = perf()
            command, _, status, body = await conn.roundtrip(data)
            t1 = perf()
            if command != COMMAND_REPLY or status:
                _check_reply(command, status, "poll messages")
            _, _, count, payload, origin, nxt = scan_poll(body)
            if not count:
                empty += 1
                if not self.end_to_end and empty > 1000:
                    raise BenchError(f"{self.target.name}: no messages at offset {offset}")
                await asyncio.sleep(0.0002 if self.end_to_end else 0.001)
                continue
            empty = 0
            latency = (_now_us() - origin) / 1e6 if self.end_to_end else t1 - t0
            m.record(latency, count, payload, len(body) - 16)
            offset = nxt
            if progress is not None:
                progress.add(count, payload)
            await pacer.pace(payload)
        m.end = perf()
        self.offset = offset


@dataclass(eq=False)
class GroupConsumer(_Actor):
    """A consumer-group member: next strategy + auto commit over the partitions it owns,
    until the group's `remaining` counter (shared by the members of one group) reaches 0."""

    kind = CONSUMER

    remaining: dict[str, int]  # {"messages": n} shared by the members of one group
    frame: PollFrame | None = field(default=None, init=False)

    async def prepare(self) -> None:
        cfg, t = self.cfg, self.target
        conn = await self._connect()
        await conn.join_group(t.stream_id, t.topic_id, _prepared(t.group_id))
        self.frame = PollFrame(
            conn.session,
            conn.client_id,
            CONSUMER_GROUP,
            _prepared(t.group_id),
            t.stream_id,
            t.topic_id,
            0,
            STRATEGY_NEXT,
            cfg.messages_per_batch,
            auto_commit=True,
        )

    async def run(self) -> None:
        conn, frame, m, t = _prepared(self.conn), _prepared(self.frame), self.metrics, self.target
        group_id = _prepared(t.group_id)
        progress, remaining = self.progress, self.remaining
        pacer = _Pacer(self.rate)
        perf = time.perf_counter
        owned = await conn.sync_group(t.stream_id, t.topic_id, group_id)
        turn = empty_in_row = 0
        m.start = perf()
        while remaining["messages"] > 0:
            if not owned:
                await asyncio.sleep(0.005)
                owned = await conn.sync_group(t.stream_id, t.topic_id, group_id)
                continue
            partition = owned[turn % len(owned)]
            turn += 1
            t0 = perf()
            command, _, status, body = await conn.roundtrip(frame.stamp(conn.read_request(), partition, 0))
            t1 = perf()
            if status in _RESYNC:
                owned = await conn.sync_group(t.stream_id, t.topic_id, group_id)
                continue
            if command != COMMAND_REPLY or status:
                _check_reply(command, status, "poll messages (group)")
            _, _, count, payload, _, _ = scan_poll(body)
            if not count:
                empty_in_row += 1
                if empty_in_row >= len(owned):
                    empty_in_row = 0
                    await asyncio.sleep(0.001)
                    owned = await conn.sync_group(t.stream_id, t.topic_id, group_id)
                continue
            empty_in_row = 0
            m.record(t1 - t0, count, payload, len(body) - 16)
            remaining["messages"] -= count
            if progress is not None:
                progress.add(count, payload)
            await pacer.pace(payload)
        m.end = perf()

    async def leave(self) -> None:
        t = self.target
        try:
            await _prepared(self.conn).leave_group(t.stream_id, t.topic_id, _prepared(t.group_id))
        except (BenchError, OSError):
            pass


@dataclass(eq=False)
class ProducingConsumer(_Actor):
    """Sends one batch to its own partition, then polls until it has it back; the latency
    recorded is that whole round trip (send + poll), one sample per batch."""

    kind = PRODUCING_CONSUMER

    partition: int
    batches: int
    offset: int = 0  # the next to poll

    async def prepare(self) -> None:
        conn = await self._connect()
        self.send = self._send_frame(conn, self.partition)
        self.poll = self._poll_frame(conn, self.partition)

    async def run(self, batches: int | None = None, deadline: float | None = None, record: bool = True) -> None:
        conn, send, poll = _prepared(self.conn), _prepared(self.send), _prepared(self.poll)
        per_batch = send.message_count
        perf = time.perf_counter

        async def send_and_poll(_n: int) -> float:
            t0 = perf()
            command, _, status, _ = await conn.roundtrip(send.stamp(conn.write_request(), _now_us(), self.partition))
            if command != COMMAND_REPLY or status:
                _check_reply(command, status, "send messages")
            got = 0
            while got < per_batch:
                command, _, status, body = await conn.roundtrip(
                    poll.stamp(conn.read_request(), self.partition, self.offset)
                )
                if command != COMMAND_REPLY or status:
                    _check_reply(command, status, "poll messages")
                _, _, count, _, _, nxt = scan_poll(body)
                if count:
                    got += count
                    self.offset = nxt
            return perf() - t0

        limit = self.batches if batches is None else batches
        await self._batch_loop(send, limit, deadline, record, send_and_poll)


Actor = Producer | Consumer | GroupConsumer | ProducingConsumer


# --------------------------------------------------------------------------- setup and teardown


async def _ensure_streams(
    admin: Connection, cfg: BenchConfig, partitions: int, fresh: bool, need_messages: int = 0
) -> list[Target]:
    """The bench streams with topic-1; `fresh` recreates existing ones (unless reuse_streams);
    otherwise a stream holding at least `need_messages` is reused as it is."""
    targets = []
    for i in range(1, cfg.streams + 1):
        name = f"{cfg.stream_prefix}{i}"
        existing = await admin.get_stream(name)
        if existing is not None:
            topic = await admin.get_topic(existing["id"], cfg.topic_name)
            usable = cfg.reuse_streams or (not fresh and existing["messages_count"] >= need_messages)
            if topic is not None and usable:
                targets.append(Target(name, existing["id"], topic["id"], [p[0] for p in topic["partitions"]]))
                continue
            await admin.delete_stream(existing["id"])
        stream_id = await admin.create_stream(name)
        topic_id = await admin.create_topic(stream_id, cfg.topic_name, partitions, cfg.durability)
        targets.append(Target(name, stream_id, topic_id, list(range(partitions)), created=True))
    return targets


async def _ensure_group(admin: Connection, target: Target, name: str) -> int:
    group_id = await admin.get_group_id(target.stream_id, target.topic_id, name)
    if group_id is None:
        group_id = await admin.create_group(target.stream_id, target.topic_id, name)
    return group_id


async def _gather(coros: Iterable[Awaitable[_T]]) -> list[_T]:
    """gather that cancels the rest when one fails."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


async def _fill(
    cfg: BenchConfig, targets: list[Target], per_stream_batches: list[int], progress: Progress | None
) -> None:
    """Write the data consumers will read (not measured): one producer per stream, batches
    spread round robin over the stream's partitions."""
    producers = [
        Producer(cfg, 10000 + i, t, progress, None, partitions=t.partitions, batches=n)
        for i, (t, n) in enumerate(zip(targets, per_stream_batches, strict=False))
        if n
    ]
    if progress is not None:
        progress.start("preparing data", sum(per_stream_batches) * cfg.messages_per_batch)
    try:
        await _gather(p.prepare() for p in producers)
        await _gather(p.run(record=False) for p in producers)
    finally:
        for p in producers:
            p.close()


def _round_robin(targets: list[Target], count: int) -> list[tuple[int, Target]]:
    """(actor index, its stream) for `count` actors spread over the streams in turn."""
    return [(i, targets[i % len(targets)]) for i in range(count)]


async def run_benchmark(cfg: BenchConfig, progress: Progress | None = None) -> BenchReport:
    """Set up, run and clean up one scenario; returns the measurements."""
    cfg.validate()
    started_at = now_iso()
    admin = await connect(cfg.server_address, cfg.username, cfg.password, cfg.nodelay)
    targets: list[Target] = []
    actors: list[Actor] = []
    extra: dict[str, Any] = {}
    try:
        kind = cfg.kind
        per_batch = cfg.messages_per_batch
        n_actors = cfg.producers + cfg.consumers if kind != "end_to_end_producing_consumer" else cfg.producers
        rate = cfg.rate_limit / n_actors if cfg.rate_limit else None

        def pinned_consumers(batches: list[int], end_to_end: bool = False) -> list[Actor]:
            """Consumer i polls the first partition of stream i, `batches[i]` batches."""
            return [
                Consumer(
                    cfg,
                    i + 1,
                    targets[i],
                    progress,
                    rate,
                    partition=targets[i].partitions[0],
                    messages=batches[i] * per_batch,
                    end_to_end=end_to_end,
                )
                for i in range(cfg.consumers)
            ]

        if kind == "pinned_consumer":
            batches = cfg.batches_for(cfg.consumers)
            targets = await _ensure_streams(admin, cfg, 1, fresh=False, need_messages=max(batches) * per_batch)
            to_fill = [n if t.created else 0 for t, n in zip(targets, batches, strict=False)]
            if any(to_fill):
                await _fill(cfg, targets, to_fill, progress)
            actors = pinned_consumers(batches)
        elif kind == "balanced_consumer_group":
            batches = cfg.batches_for(cfg.consumers)
            total = sum(batches)
            per_stream = [total // cfg.streams + (1 if i < total % cfg.streams else 0) for i in range(cfg.streams)]
            targets = await _ensure_streams(admin, cfg, cfg.partitions, fresh=True)
            await _fill(cfg, targets, per_stream, progress)
            remaining = []
            for i, t in enumerate(targets):
                t.group_id = await _ensure_group(admin, t, f"cg-{i + 1}")
                remaining.append({"messages": per_stream[i] * per_batch})
            actors = [
                GroupConsumer(
                    cfg, i + 1, targets[i % cfg.streams], progress, rate, remaining=remaining[i % cfg.streams]
                )
                for i in range(cfg.consumers)
            ]
        elif kind == "end_to_end_producing_consumer":
            per_stream_actors = math.ceil(cfg.producers / cfg.streams)
            targets = await _ensure_streams(admin, cfg, per_stream_actors, fresh=True)
            batches = cfg.batches_for(cfg.producers)
            actors = [
                ProducingConsumer(
                    cfg, i + 1, t, progress, rate, partition=t.partitions[i // cfg.streams], batches=batches[i]
                )
                for i, t in _round_robin(targets, cfg.producers)
            ]
        else:
            partitions = cfg.partitions if kind == "balanced_producer" else 1
            targets = await _ensure_streams(admin, cfg, partitions, fresh=True)
            batches = cfg.batches_for(cfg.producers)
            actors = [
                Producer(cfg, i + 1, t, progress, rate, partitions=t.partitions, batches=batches[i])
                for i, t in _round_robin(targets, cfg.producers)
            ]
            if kind == "pinned_producer_and_consumer":
                actors += pinned_consumers(batches, end_to_end=True)

        await _gather(a.prepare() for a in actors)

        if cfg.warmup_secs > 0:
            await _warmup(cfg, actors, progress)

        if progress is not None:
            group_total = sum(r["messages"] for r in remaining) if kind == "balanced_consumer_group" else 0
            progress.start("benchmark", sum(_expected(a) for a in actors) + group_total)
        await _gather(a.run() for a in actors)
        for a in actors:
            if isinstance(a, GroupConsumer):
                await a.leave()
    finally:
        for a in actors:
            a.close()
        try:
            if not cfg.keep:
                for t in targets:
                    if t.created:
                        await admin.delete_stream(t.stream_id)
        finally:
            admin.close()
    extra["streams_kept"] = bool(cfg.keep)
    return BenchReport(cfg, [a.metrics for a in actors], started_at, now_iso(), extra)


def _expected(actor: Actor) -> int:
    if isinstance(actor, (Producer, ProducingConsumer)):
        return actor.batches * actor.cfg.messages_per_batch
    if isinstance(actor, Consumer):
        return actor.messages
    return 0  # group consumers share their group's total


async def _warmup(cfg: BenchConfig, actors: list[Actor], progress: Progress | None) -> None:
    """Run the actors unmeasured for warmup_secs. Producers' warmup data shifts where the
    consumers of the same stream start."""
    if progress is not None:
        progress.start("warmup", 0)
    deadline = time.perf_counter() + cfg.warmup_secs
    warming = [
        a
        for a in actors
        if isinstance(a, (Producer, ProducingConsumer)) or (isinstance(a, Consumer) and not a.end_to_end)
    ]
    results = await _gather(
        a.warmup(deadline, a.messages) if isinstance(a, Consumer) else a.run(deadline=deadline, record=False)
        for a in warming
    )
    for a, sent in zip(warming, results, strict=True):
        if isinstance(a, Producer) and sent is not None:  # a producer returns how many it sent
            for c in actors:
                if isinstance(c, Consumer) and c.end_to_end and c.target is a.target:
                    c.offset += sent * cfg.messages_per_batch
