"""Faults in a replicated cluster: etcd and three nodes, producers and consumers running, one
fault after another chosen at random (seeded), then a strict check of the log.

Setup: etcd and three nodes (tests/cluster/nodes.py, heartbeat_timeout 2 s); with root, each node
in a network namespace of its own on a bridge (tests/cluster/netns.py), else all on loopback
without the partition faults. A stream with a `replicated` and a `persisted` topic (one partition
each). Per topic a raw-TCP producer (it finds the leader in GET_CLUSTER_METADATA, so every
acknowledgement is known with the node that gave it), a producer through the official SDK (it
finds the leader itself) and a raw consumer polling the leader. Every message carries a unique id
(`producer:seq:`) and a failed or timed-out send is never retried as such: the next batch has new
ids, so a batch that landed without its acknowledgement shows up as "unacknowledged, present".

Faults, one per round (leader or a follower as target): SIGKILL then a restart, SIGSTOP then
SIGCONT after a random time, and partitions: a node isolated from the other nodes and etcd, one
leader-follower link cut, the leader cut from etcd only, the leader cut from both followers (etcd
still reachable). After each fault is healed the round waits for an agreed leader, every node
healthy and every producer acknowledged again.

Checks at the end (after the last heal, a leader serving and a marker batch acknowledged on each
topic): the leader's whole log, polled, has contiguous offsets and valid checksums; every
acknowledged message is in it (lost: must be 0), counted apart: messages present twice
(duplicates), acknowledged messages of one producer out of order (reorders), unacknowledged
messages present, messages a consumer was served that are gone or changed; ids never sent must
not be there. Each node's partition files are read byte for byte up to the committed offset and
compared with the leader's, and counted: acknowledged messages absent from each node's files and
from every node's (no copy left anywhere; "lost" also counts what the leader holds but no longer
serves). From the nodes' logs ("this node ... is the leader, epoch E" and
"no longer the leader"): no epoch has two leaders, and every acknowledgement of a raw producer
came from a node that was leader at the time (so no two nodes acknowledged in one epoch).
Failover time: SIGKILL of the leader to the first acknowledged batch sent after it, per producer
(the SDK's reconnect included).

Long form: `python -m tests.reliability.cluster_faults --rounds 40 --seed 1` (see --help).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import random
import re
import signal
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path

from apache_iggy import SendMessage

from iggy.protocol.wire import COMMAND_REPLY
from tests.cluster.etcd import EtcdServer
from tests.cluster.netns import Netns, NetnsUnavailable
from tests.cluster.nodes import TestCluster, leader_of, local_metadata, metadata, sdk
from tests.reliability.common import Client, Corrupt, check_contiguous, harness_arguments, verify_batches

STREAM = "faults"
TOPICS = ("replicated", "persisted")  # topic name = its durability
SEND_TIMEOUT = 4.0  # seconds before a send counts as failed (a paused leader never answers)
# default bounds (the short form gives smaller ones): seconds for the cluster to elect a leader
# again after a heal, for every producer to be acknowledged again (else: a stall), for the nodes'
# files to hold the committed log at the check
RECOVERY, PROGRESS, CATCH_UP = 45.0, 20.0, 20.0
SLACK = 0.05  # seconds of clock slack between the nodes' log lines and the harness
PROCESS_FAULTS = ("kill-leader", "kill-follower", "stop-leader", "stop-follower")
PARTITION_FAULTS = ("isolate-leader", "isolate-follower", "cut-link", "leader-from-etcd", "leader-from-peers")


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class Record:
    """What the producers sent and were acknowledged, and what consumers were served."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sent: dict[str, set[tuple[str, int]]] = {t: set() for t in TOPICS}
        # topic -> [(producer, first seq, count, t_sent, t_acked, node or None)]
        self.acked: dict[str, list[tuple[str, int, int, float, float, int | None]]] = {t: [] for t in TOPICS}
        self.failed_sends = 0
        self.served: dict[str, dict[int, tuple[str, int]]] = {t: {} for t in TOPICS}
        self.served_changed: list[str] = []
        self.errors: list[str] = []

    def next_batch(self, topic: str, producer: str, seq: int, rng: random.Random) -> list[bytes]:
        """1..10 new messages `producer:seq:`, remembered as sent."""
        n = rng.randint(1, 10)
        with self.lock:
            self.sent[topic].update((producer, seq + i) for i in range(n))
        return payloads(producer, seq, n, rng)

    def outcome(self, topic: str, producer: str, seq: int, n: int, t0: float, ok: bool, node: int | None) -> float:
        """Remember a send's outcome (acknowledged: by `node` when known); returns the time now."""
        t1 = time.time()
        with self.lock:
            if ok:
                self.acked[topic].append((producer, seq, n, t0, t1, node))
            else:
                self.failed_sends += 1
        return t1


def payloads(producer: str, first: int, count: int, rng: random.Random) -> list[bytes]:
    return [f"{producer}:{first + i}:".encode() + b"x" * rng.randint(0, 120) for i in range(count)]


def message_id(payload: bytes) -> tuple[str, int]:
    producer, seq, _ = payload.split(b":", 2)
    return producer.decode(), int(seq)


class Harness:
    def __init__(
        self,
        workdir: Path,
        seed: int,
        partitions: bool = True,
        log=print,
        bounds: tuple[float, float, float] = (RECOVERY, PROGRESS, CATCH_UP),
    ):
        self.workdir = workdir
        self.recovery, self.progress, self.catch_up = bounds
        self.seed = seed
        self.rng = random.Random(seed)
        self.log = log or (lambda *_: None)
        self.net: Netns | None = None
        self.netns_error = ""
        if partitions:
            try:
                self.net = Netns(workdir / "netns").create()
            except NetnsUnavailable as exc:
                self.netns_error = str(exc)
                self.log(f"partitions left out: {exc}")
        self.etcd = EtcdServer(workdir / "etcd", host=self.net.etcd_ip if self.net else "127.0.0.1")
        self.cluster: TestCluster | None = None
        self.record = Record()
        self.stop = threading.Event()
        self.workers: list[threading.Thread] = []
        self.faults: list[dict] = []
        self.paused: set[int] = set()
        self.sdk_seeds: dict[str, list[tuple[float, int]]] = {}  # SDK producer -> (when, node it was created with)
        self.stats: dict = {"seed": seed, "rounds": 0, "faults": {}, "stalls": []}

    # ---------------------------------------------------------------- cluster

    def start(self) -> None:
        self.etcd.start()
        net = self.net
        self.cluster = TestCluster(
            self.workdir,
            self.etcd.url,
            ips=net.node_ips if net else None,
            pythons=[net.python(i) for i in range(3)] if net else None,
            env={"IGGY_HTTP_ENABLED": "false", "IGGY_QUIC_ENABLED": "false", "IGGY_WEBSOCKET_ENABLED": "false"},
        ).start()
        leader = self.cluster.wait_leader(self.recovery)
        c = Client(self.cluster.address(leader))
        try:
            assert c.create_stream(STREAM).code == 0
            for topic in TOPICS:
                reply = c.create_topic(STREAM, topic, 1, topic)
                assert reply.code == 0, reply
        finally:
            c.close()

    def close(self) -> None:
        self.stop.set()
        for t in self.workers:
            t.join(SEND_TIMEOUT + 10)
        if self.cluster is not None:
            for i, node in enumerate(self.cluster.nodes):
                if node.pid is not None and node.alive():
                    os.kill(node.pid, signal.SIGCONT)
                self.paused.discard(i)
            self.cluster.stop()
        self.etcd.stop()
        if self.net is not None:
            self.net.destroy()

    @property
    def addresses(self) -> list[str]:
        assert self.cluster is not None
        return [self.cluster.address(i) for i in range(3)]

    def find_leader(self, rng: random.Random) -> int | None:
        """The node some reachable node names leader (healthy), asking them in random order."""
        order = list(range(3))
        rng.shuffle(order)
        for i in order:
            try:
                meta = metadata(self.addresses[i], timeout=1.0)
            except (OSError, AssertionError, ConnectionError):
                continue
            leader = leader_of(meta)
            if leader is not None and meta["nodes"][leader]["status"] == "healthy":
                return leader
        return None

    def connect_leader(self, rng: random.Random) -> tuple[Client, int] | None:
        leader = self.find_leader(rng)
        if leader is None:
            return None
        try:
            return Client(self.addresses[leader], timeout=SEND_TIMEOUT), leader
        except (OSError, ConnectionError):
            return None

    def reconnect(self, conn: tuple[Client, int] | None, rng: random.Random) -> tuple[Client, int] | None:
        """`conn`, or a new connection to the leader (None, after a short wait, when there is none)."""
        if conn is None:
            conn = self.connect_leader(rng)
            if conn is None:
                time.sleep(0.05)
        return conn

    # ---------------------------------------------------------------- clients

    def raw_producer(self, topic: str, name: str, rng: random.Random) -> None:
        seq, conn = 0, None
        while not self.stop.is_set():
            conn = self.reconnect(conn, rng)
            if conn is None:
                continue
            c, node = conn
            batch = self.record.next_batch(topic, name, seq, rng)
            t0 = time.time()
            try:
                reply, _base = c.send(STREAM, topic, 0, batch)
                ok = reply.command == COMMAND_REPLY and reply.status == 0
            except (OSError, ConnectionError):
                ok = False
            self.record.outcome(topic, name, seq, len(batch), t0, ok, node)
            seq += len(batch)
            if not ok:
                c.close()
                conn = None
                time.sleep(0.02)
            time.sleep(rng.uniform(0, 0.01))
        if conn is not None:
            conn[0].close()

    async def sdk_producer(self, topic: str, name: str, rng: random.Random) -> None:
        """The official SDK: created with one node's address (it moves to the leader itself); a
        client that keeps failing for 3 s, or times out, is replaced by one made with the next
        node's address (an application's list of seed addresses)."""
        seq, client, seed, failing_since = 0, None, rng.randrange(3), None
        while not self.stop.is_set():
            if client is None:
                try:
                    client = await asyncio.wait_for(sdk(self.addresses[seed % 3]), SEND_TIMEOUT)
                    self.sdk_seeds.setdefault(name, []).append((time.time(), seed % 3))
                except (RuntimeError, TimeoutError, OSError):
                    seed += 1
                    await asyncio.sleep(0.1)
                    continue
            batch = self.record.next_batch(topic, name, seq, rng)
            t0 = time.time()
            timed_out = False
            try:
                await asyncio.wait_for(
                    client.send_messages(STREAM, topic, 0, [SendMessage(p) for p in batch]), SEND_TIMEOUT
                )
                ok = True
            except TimeoutError:
                ok, timed_out = False, True
            except (RuntimeError, OSError, ValueError):
                ok = False
            t1 = self.record.outcome(topic, name, seq, len(batch), t0, ok, None)
            seq += len(batch)
            if ok:
                failing_since = None
            else:
                failing_since = failing_since or t1
                if timed_out or t1 - failing_since > 3.0:
                    client, failing_since, seed = None, None, seed + 1
                await asyncio.sleep(0.05)
            await asyncio.sleep(rng.uniform(0, 0.01))

    def sdk_producers(self, rngs: list[random.Random]) -> None:
        async def both() -> None:
            await asyncio.gather(
                *(self.sdk_producer(topic, f"sdk-{topic}", rng) for topic, rng in zip(TOPICS, rngs, strict=True))
            )

        asyncio.run(both())

    def consumer(self, topic: str, rng: random.Random) -> None:
        """Polls the leader from the next offset; every message served is remembered by offset
        (it was committed: it must still be there at the end, at that offset)."""
        offset, conn = 0, None
        served = self.record.served[topic]
        while not self.stop.is_set():
            conn = self.reconnect(conn, rng)
            if conn is None:
                continue
            c = conn[0]
            try:
                reply = c.poll(STREAM, topic, 0, offset, 1000)
            except (OSError, ConnectionError):
                c.close()
                conn = None
                continue
            if reply.status:
                c.close()
                conn = None
                time.sleep(0.05)
                continue
            try:
                messages = verify_batches(reply.body[16:])
            except Corrupt as exc:
                self.record.errors.append(f"{topic}: served a corrupt batch: {exc}")
                messages = []
            with self.record.lock:
                for m in messages:
                    mid = message_id(m["payload"])
                    before = served.setdefault(m["offset"], mid)
                    if before != mid:
                        self.record.served_changed.append(f"{topic} offset {m['offset']}: {before} then {mid}")
            if messages:
                offset = messages[-1]["offset"] + 1
            else:
                time.sleep(0.02)
        if conn is not None:
            conn[0].close()

    def start_clients(self) -> None:
        rngs = [random.Random(self.rng.random()) for _ in range(8)]
        targets = []
        for k, topic in enumerate(TOPICS):
            targets.append((self.raw_producer, (topic, f"raw-{topic}", rngs[k])))
            targets.append((self.consumer, (topic, rngs[2 + k])))
        targets.append((self.sdk_producers, (rngs[4:6],)))
        self.workers = [threading.Thread(target=f, args=a, daemon=True) for f, a in targets]
        for t in self.workers:
            t.start()

    def stop_clients(self) -> None:
        self.stop.set()
        for t in self.workers:
            t.join(SEND_TIMEOUT + 10)
            if t.is_alive():
                self.record.errors.append("a client thread did not stop")

    # ---------------------------------------------------------------- faults

    def kinds(self) -> tuple[str, ...]:
        return PROCESS_FAULTS + (PARTITION_FAULTS if self.net else ())

    def one_fault(self, kind: str) -> dict:
        cluster, net, rng = self.cluster, self.net, self.rng
        assert cluster is not None
        leader = cluster.wait_leader(self.recovery)
        followers = [i for i in range(3) if i != leader]
        target = leader if kind.endswith("leader") or kind.startswith("leader") else rng.choice(followers)
        event = {"kind": kind, "target": target, "leader": leader, "at": time.time()}
        node = cluster.nodes[target]
        if kind.startswith("kill"):
            node.kill()
            event["down"] = rng.uniform(0.0, 3.0)
            time.sleep(event["down"])
            node.start()
        elif kind.startswith("stop"):
            assert node.pid is not None
            os.kill(node.pid, signal.SIGSTOP)
            self.paused.add(target)
            event["down"] = rng.uniform(0.2, 5.0)
            time.sleep(event["down"])
            os.kill(node.pid, signal.SIGCONT)
            self.paused.discard(target)
        else:
            assert net is not None
            if kind.startswith("isolate"):
                net.isolate(target)
            elif kind == "cut-link":
                event["other"] = rng.choice(followers)
                net.cut(leader, event["other"])
            elif kind == "leader-from-etcd":
                net.cut_etcd(leader)
            else:  # leader-from-peers
                for f in followers:
                    net.cut(leader, f)
            event["down"] = rng.uniform(1.0, 6.0)
            time.sleep(event["down"])
            net.heal()
        event["healed"] = time.time()
        return event

    def recover(self, since: float) -> None:
        """An agreed leader, every node healthy, and every producer acknowledged after `since`."""
        assert self.cluster is not None
        self.cluster.wait_leader(self.recovery)
        self.cluster.wait_all_healthy(self.recovery)
        deadline = time.time() + self.progress
        producers = [f"{kind}-{topic}" for kind in ("raw", "sdk") for topic in TOPICS]
        while True:
            with self.record.lock:
                done = {a[0] for t in TOPICS for a in self.record.acked[t] if a[3] >= since}
            waiting = [p for p in producers if p not in done]
            if not waiting:
                return
            if time.time() > deadline:
                self.stats["stalls"].append(f"after a heal at {since:.1f}: {waiting} acknowledged nothing")
                return
            time.sleep(0.05)

    def run(self, rounds: int, schedule: list[str] | None = None, time_limit: float | None = None) -> dict:
        started = time.monotonic()
        self.log(f"cluster_faults: seed {self.seed}, partitions {'on' if self.net else 'off'}")
        self.start()
        self.start_clients()
        time.sleep(1.0)
        for r in range(rounds):
            if time_limit is not None and time.monotonic() - started > time_limit:
                break
            kind = schedule[r % len(schedule)] if schedule else self.rng.choice(self.kinds())
            event = self.one_fault(kind)
            self.faults.append(event)
            self.recover(event["healed"])
            time.sleep(self.rng.uniform(0.2, 1.5))
            self.stats["rounds"] += 1
            self.stats["faults"][kind] = self.stats["faults"].get(kind, 0) + 1
            with self.record.lock:
                acked = sum(a[2] for t in TOPICS for a in self.record.acked[t])
            self.log(
                f"round {r + 1}: {kind} of node {event['target']} (leader {event['leader']}) for "
                f"{event['down']:.2f} s; {acked} messages acknowledged so far"
            )
        self.stop_clients()
        self.check()
        self.stats["seconds"] = round(time.monotonic() - started, 1)
        return self.stats

    # ---------------------------------------------------------------- checks

    def check(self) -> None:
        cluster = self.cluster
        assert cluster is not None
        leader = cluster.wait_leader(self.recovery)
        cluster.wait_all_healthy(self.recovery)
        rec, stats = self.record, self.stats
        stats["marker_refused"], stats["poll_refused"] = [], []
        for topic in TOPICS:
            # a marker acknowledged in this leader's term: everything before it is committed
            if not self.send_marker(topic):
                stats["marker_refused"].append(topic)
            leader, log = self.read_log(topic)
            check_contiguous(log, f"{topic} on the leader")
            self.check_topic(topic, log)
            self.check_files(topic, leader, len(log))
            self.check_disks(topic)
        stats["acked_messages"] = sum(a[2] for t in TOPICS for a in rec.acked[t])
        stats["acked_batches"] = sum(len(rec.acked[t]) for t in TOPICS)
        stats["failed_sends"] = rec.failed_sends
        stats["served_messages"] = sum(len(rec.served[t]) for t in TOPICS)
        stats["served_changed"] = len(rec.served_changed)
        stats["errors"] = rec.errors[:20]
        self.check_epochs()
        self.failover_times()

    def read_log(self, topic: str) -> tuple[int, list[dict]]:
        """(leader, every message it serves), polled from offset 0; a leader that refuses the poll
        for the whole progress bound (58: the partition not reconciled) is a finding, and then
        the log counts as empty."""
        assert self.cluster is not None
        deadline = time.time() + self.progress
        while True:
            leader = self.cluster.wait_leader(self.recovery)
            c = Client(self.cluster.address(leader), timeout=30)
            try:
                return leader, c.poll_all(STREAM, topic, 0)
            except Corrupt:
                raise
            except (AssertionError, OSError, ConnectionError) as exc:
                if time.time() > deadline:
                    self.stats["poll_refused"].append(f"{topic}: {exc}")
                    return leader, []
                time.sleep(0.5)
            finally:
                c.close()

    def send_marker(self, topic: str) -> bool:
        """One batch acknowledged after the heal (retried for the progress bound, with new ids)."""
        rng = random.Random(self.seed)
        deadline = time.time() + self.progress
        seq = 0
        while time.time() < deadline:
            conn = self.connect_leader(rng)
            if conn is None:
                time.sleep(0.2)
                continue
            c, node = conn
            marker = payloads("check", seq, 1, rng)
            self.record.sent[topic].add(("check", seq))
            t0 = time.time()
            try:
                reply, _base = c.send(STREAM, topic, 0, marker)
                if reply.command == COMMAND_REPLY and reply.status == 0:
                    self.record.acked[topic].append(("check", seq, 1, t0, time.time(), node))
                    return True
            except (OSError, ConnectionError):
                pass
            finally:
                c.close()
            seq += 1
            time.sleep(0.2)
        return False

    def check_topic(self, topic: str, log: list[dict]) -> None:
        rec, stats = self.record, self.stats
        ids = [message_id(m["payload"]) for m in log]
        position: dict[tuple[str, int], int] = {}
        duplicates: list[tuple[int, int, tuple[str, int]]] = []  # (first offset, again at, id)
        for pos, mid in enumerate(ids):
            if mid in position:
                duplicates.append((position[mid], pos, mid))
            else:
                position[mid] = pos
        by_producer: dict[str, int] = {}
        for _a, _b, (producer, _seq) in duplicates:
            by_producer[producer] = by_producer.get(producer, 0) + 1
        unknown = [mid for mid in position if mid not in rec.sent[topic]]
        if unknown:
            rec.errors.append(f"{topic}: {len(unknown)} messages never sent, e.g. {unknown[0]}")
        acked = [(p, s + i) for p, s, n, *_ in rec.acked[topic] for i in range(n)]
        acked_set = set(acked)
        lost = [mid for mid in acked if mid not in position]
        reorders, last = 0, {}
        for p, s in sorted(acked):
            pos = position.get((p, s))
            if pos is None:
                continue
            if pos < last.get(p, -1):
                reorders += 1
            last[p] = pos
        served_lost = [
            f"offset {o}: {mid}"
            for o, mid in sorted(rec.served[topic].items())
            if o >= len(ids) or ids[o] != mid  # served (committed), then gone or changed
        ]
        stats[topic] = {
            "log_messages": len(ids),
            "acked": len(acked),
            "lost": len(lost),
            "lost_examples": lost[:5],
            "duplicates": len(duplicates),
            "duplicates_by_producer": by_producer,  # a raw producer never sends an id twice
            "duplicate_examples": duplicates[:5],
            "reorders": reorders,
            "unacked_present": len([mid for mid in position if mid not in acked_set]),
            "served_then_lost": len(served_lost),
            "served_then_lost_examples": served_lost[:5],
        }

    def check_disks(self, topic: str) -> None:
        """Acknowledged messages absent from each node's files (whatever the leader serves), and
        from every node's: what no copy holds any more."""
        assert self.cluster is not None
        acked = {(p, s + i) for p, s, n, *_ in self.record.acked[topic] for i in range(n)}
        on_disk = [ids_on_disk(partition_bytes(node, topic)) for node in self.cluster.nodes]
        self.stats[topic]["acked_absent_from_files"] = {i: len(acked - ids) for i, ids in enumerate(on_disk)}
        self.stats[topic]["acked_absent_everywhere"] = len(acked - set().union(*on_disk))

    def check_files(self, topic: str, leader: int, committed: int) -> None:
        """Each node's partition files, up to the committed offset, byte for byte the leader's
        (waiting for a follower to catch up)."""
        cluster = self.cluster
        assert cluster is not None
        reference = committed_bytes(partition_bytes(cluster.nodes[leader], topic), committed)
        assert reference is not None, f"{topic}: the leader's files hold less than its {committed} messages"
        verdicts = {}
        deadline = time.time() + self.catch_up
        for i in range(3):
            while True:
                mine = committed_bytes(partition_bytes(cluster.nodes[i], topic), committed)
                if mine == reference:
                    verdicts[i] = "equal"
                    break
                if time.time() > deadline:
                    verdicts[i] = describe_difference(mine, reference)
                    break
                time.sleep(0.2)
        self.stats[topic]["files"] = verdicts
        self.stats[topic]["files_differ"] = sum(v != "equal" for v in verdicts.values())

    def leadership(self) -> tuple[list[tuple[int, int, float, float]], list[str]]:
        """(node, epoch, from, to) for every leadership the nodes logged; problems found."""
        assert self.cluster is not None
        problems: list[str] = []
        intervals: list[tuple[int, int, float, float]] = []
        kills = {
            i: sorted(f["at"] for f in self.faults if f["kind"].startswith("kill") and f["target"] == i)
            for i in range(3)
        }
        end = time.time()
        for i, node in enumerate(self.cluster.nodes):
            current: tuple[int, float] | None = None
            for t, leading, epoch in leadership_lines(node.log()):
                if current is not None and (leading or epoch != current[0]):
                    # no step-down line: the process was killed in between
                    until = next((k for k in kills[i] if k >= current[1]), t)
                    intervals.append((i, current[0], current[1], until))
                    current = None
                if leading:
                    current = (epoch, t)
                elif current is not None:
                    intervals.append((i, epoch, current[1], t))
                    current = None
            if current is not None:
                until = next((k for k in kills[i] if k >= current[1]), end)
                intervals.append((i, current[0], current[1], until))
        by_epoch: dict[int, set[int]] = {}
        for i, epoch, _a, _b in intervals:
            by_epoch.setdefault(epoch, set()).add(i)
        for epoch, nodes in sorted(by_epoch.items()):
            if len(nodes) > 1:
                problems.append(f"epoch {epoch} was led by nodes {sorted(nodes)}")
        return intervals, problems

    def check_epochs(self) -> None:
        intervals, problems = self.leadership()
        acks_by_epoch: dict[int, set[int]] = {}
        outside = []
        for topic in TOPICS:
            for p, s, _n, t0, t1, node in self.record.acked[topic]:
                if node is None:
                    continue
                epochs = [e for i, e, a, b in intervals if i == node and a <= t1 + SLACK and b >= t0 - SLACK]
                if not epochs:
                    outside.append(f"{topic} {p}:{s} acknowledged by node {node} at {t1:.3f}, not leading")
                for e in epochs:
                    acks_by_epoch.setdefault(e, set()).add(node)
        for epoch, nodes in sorted(acks_by_epoch.items()):
            if len(nodes) > 1:
                problems.append(f"epoch {epoch}: acknowledgements from nodes {sorted(nodes)}")
        overlap = 0.0
        for x in intervals:
            for y in intervals:
                if x[0] < y[0]:
                    overlap = max(overlap, min(x[3], y[3]) - max(x[2], y[2]))
        self.stats["epochs"] = {
            "leaderships": len(intervals),
            "epochs_with_acks": len(acks_by_epoch),
            "acks_outside_leadership": len(outside),
            "acks_outside_examples": outside[:5],
            "problems": problems,
            "longest_overlap_s": round(overlap, 3),
        }

    def failover_times(self) -> None:
        """Per kill of the leader and producer: the kill to the first acknowledged batch sent after
        it. The SDK's samples are split by the node its client was created with: a client made with
        the killed node's address reconnects there in vain until the producer replaces it (after
        3 s of failures, with the next address)."""
        samples: dict[str, list[float]] = {"sdk": [], "sdk-seeded-on-killed-node": [], "raw": []}
        missing = 0
        for f in (f for f in self.faults if f["kind"] == "kill-leader"):
            later = [g["at"] for g in self.faults if g["at"] > f["at"]]
            until = min(later) if later else float("inf")
            for topic in TOPICS:
                for kind in ("sdk", "raw"):
                    name = f"{kind}-{topic}"
                    acks = [a[4] for a in self.record.acked[topic] if a[0] == name and f["at"] <= a[3] < until]
                    seeded = [node for t, node in self.sdk_seeds.get(name, []) if t < f["at"]]
                    if seeded and seeded[-1] == f["target"]:
                        kind = "sdk-seeded-on-killed-node"
                    if acks:
                        samples[kind].append(min(acks) - f["at"])
                    else:
                        missing += 1
        self.stats["failover_s"] = {
            kind: {
                "samples": len(v),
                "p50": round(percentile(v, 0.5) or 0, 2),
                "p99": round(percentile(v, 0.99) or 0, 2),
                "max": round(max(v, default=0), 2),
            }
            for kind, v in samples.items()
        }
        self.stats["failover_missing"] = missing


# -------------------------------------------------------------------- reading logs and files

_LEADER_LINE = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \S+ \S+: cluster: this node \(\S+\) is "
    r"(?:the leader, epoch (\d+)|no longer the leader \(epoch (\d+)\))",
    re.MULTILINE,
)


def leadership_lines(text: str) -> list[tuple[float, bool, int]]:
    """(time, leading, epoch) of every 'this node is (no longer) the leader' line of a node's log."""
    out = []
    for m in _LEADER_LINE.finditer(text):
        t = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        out.append((t, m.group(2) is not None, int(m.group(2) or m.group(3))))
    return out


def partition_bytes(node, topic: str) -> bytes:
    """The .log segments of partition 0 of STREAM/topic on a node's disk, concatenated."""
    state = local_metadata(node)
    stream = state.stream_by_name(STREAM)
    if stream is None:
        return b""
    t = next((t for t in stream.topics.values() if t.name == topic), None)
    if t is None:
        return b""
    directory = Path(node.data_dir) / "streams" / str(stream.id) / "topics" / str(t.id) / "partitions"
    parts = sorted(directory.iterdir()) if directory.exists() else []
    if not parts:
        return b""
    return b"".join(p.read_bytes() for p in sorted(parts[0].glob("*.log")))


_HEADER = struct.Struct("<QQQQQ")


def batch_spans(data: bytes) -> list[tuple[int, int]]:
    """(end offset, end byte) of each whole batch from the start of `data` (a torn tail left out)."""
    out, pos = [], 0
    while len(data) - pos >= 256:
        base, _ts, _origin, length, _sum = _HEADER.unpack_from(data, pos + 8)
        count = struct.unpack_from("<I", data, pos + 48)[0]
        if length < 256 or pos + length > len(data):
            break
        pos += length
        out.append((base + count, pos))
    return out


def committed_bytes(data: bytes, committed: int) -> bytes | None:
    """The batches of `data` holding offsets 0..committed-1 (None when it holds fewer)."""
    if committed == 0:
        return b""
    return next((data[:pos] for end, pos in batch_spans(data) if end >= committed), None)


def ids_on_disk(data: bytes) -> set[tuple[str, int]]:
    """The message ids of every whole batch of a node's partition files (verified)."""
    spans = batch_spans(data)
    return {message_id(m["payload"]) for m in verify_batches(data[: spans[-1][1]])} if spans else set()


def describe_difference(mine: bytes | None, reference: bytes) -> str:
    if mine is None:
        return "behind (fewer committed messages than the leader)"
    try:
        theirs, ours = verify_batches(reference), verify_batches(mine)
    except Corrupt as exc:
        return f"differs: {exc}"
    for a, b in zip(ours, theirs, strict=False):
        if (a["offset"], a["payload"]) != (b["offset"], b["payload"]):
            mine_id, theirs_id = message_id(a["payload"]), message_id(b["payload"])
            return f"differs from offset {b['offset']}: {mine_id} instead of {theirs_id}"
    return "differs (batch layout)"


def failures(stats: dict) -> list[str]:
    """What the strict check refuses (lost acknowledged messages and log divergence included)."""
    e = stats.get("epochs", {})
    found: list[tuple[object, str]] = [(x, str(x)) for x in stats.get("errors", []) + e.get("problems", [])]
    for topic in TOPICS:
        s = stats.get(topic, {})
        found += [
            (s.get("lost"), f"{topic}: {s.get('lost')} acknowledged messages lost, e.g. {s.get('lost_examples')}"),
            (s.get("served_then_lost"), f"{topic}: {s.get('served_then_lost')} served messages gone or changed"),
            (s.get("files_differ"), f"{topic}: node files differ from the leader's: {s.get('files')}"),
        ]
    found += [
        (e.get("acks_outside_leadership"), f"acknowledgements outside a leadership: {e.get('acks_outside_examples')}"),
        (stats.get("marker_refused"), f"no batch acknowledged after the last heal on {stats.get('marker_refused')}"),
        (stats.get("stalls"), f"producers stalled after a heal: {stats.get('stalls')}"),
        (stats.get("poll_refused"), f"the leader refused to serve the log at the check: {stats.get('poll_refused')}"),
        (stats.get("served_changed"), f"{stats.get('served_changed')} offsets served with two different messages"),
    ]
    return [text for present, text in found if present]


def main(argv=None) -> None:
    ap = harness_arguments(__doc__)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--seed", type=int, default=None, help="default: a random one (printed)")
    ap.add_argument("--time-limit", type=float, default=None, help="no new round after this many seconds")
    ap.add_argument("--no-partitions", action="store_true", help="loopback only: SIGKILL and SIGSTOP faults")
    ap.add_argument("--kinds", default=None, help="comma-separated fault kinds to choose from (default: all)")
    args = ap.parse_args(argv)
    if args.engine:
        os.environ["IGGY_TEST_ENGINE"] = args.engine
    # SIGTERM (timeout, kill) ends the run through the finally below: nodes, etcd and the
    # namespaces are removed
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    print(f"seed {seed}", flush=True)
    h = Harness(Path(tempfile.mkdtemp(prefix="iggy-cluster-faults-")), seed, partitions=not args.no_partitions)
    schedule = None
    try:
        if args.kinds:
            kinds = args.kinds.split(",")
            schedule = [random.Random(seed).choice(kinds) for _ in range(args.rounds)]
        stats = h.run(args.rounds, schedule, args.time_limit)
    finally:
        with contextlib.suppress(Exception):
            h.close()
    stats["engine"] = os.environ.get("IGGY_TEST_ENGINE", "auto")
    stats["failures"] = failures(stats)
    print(json.dumps(stats, indent=2, default=str))


if __name__ == "__main__":
    main()
