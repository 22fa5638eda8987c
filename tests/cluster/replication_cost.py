"""What replication costs W1: iggy-bench produces and then consumes against one node and against
the leader of a 3-node cluster on the same machine, for `replicated` and `persisted` topics.

    python -m tests.cluster.replication_cost [BATCHES [ROUNDS]]

Starts etcd, three cluster nodes (tests/cluster/nodes.py) and one plain node, then, per round and
durability, runs W1 of perf/README.md against each of the two (which one first alternates from
round to round; ROUNDS, default 3):

    iggy-bench -m 1000 -P 1000 -b BATCHES --durability D --keep pinned-producer -s 1 -p 1 tcp
    iggy-bench -m 1000 -P 1000 -b BATCHES --durability D pinned-consumer -s 1 -c 1 tcp

one producer sending BATCHES (default 100) batches of 1000 messages of 1000 bytes, then one
consumer polling them back from offset 0, 1000 per poll. The consumer reads the stream the
producer kept: before it starts, the stream must hold exactly what the producer sent (otherwise
iggy-bench would fill a stream of its own), and afterwards it must have received every message.
In the cluster a poll goes to the leader and is served up to the partition's high-watermark.
All of it shares one machine, so the ratio (3 nodes / 1 node) is the replication cost (two more
appends, the loopback round trip, the main loop instead of the shards' C path), not a scale-out
figure. Prints one markdown table row per round, durability and phase, then the medians.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from iggy.bench.client import connect
from iggy.testing.server import IggyTestServer
from tests.cluster.etcd import EtcdServer
from tests.cluster.nodes import TestCluster

REPO = Path(__file__).resolve().parents[2]
W1 = (1000, 1000)  # message size, messages per batch
DURABILITIES = ("replicated", "persisted")
SIDES = ("1 node", "3 nodes")
PHASES = ("produce", "consume")
STREAM = "bench-stream-1"  # what `pinned-producer -s 1` writes


def bench(address: str, durability: str, batches: int, shape: tuple[int, int], kind: list[str]) -> dict:
    """One iggy-bench run; its group's messages, MB/s and p50 / p99 of a batch in ms."""
    size, per_batch = shape
    args = [sys.executable, "-m", "iggy.bench", "-q", "--json", "-", "-m", str(size), "-P", str(per_batch)]
    args += ["-b", str(batches), "--durability", durability, *kind, "tcp", "--server-address", address]
    out = subprocess.run(args, check=True, capture_output=True, text=True, timeout=300, cwd=REPO)
    group = json.loads(out.stdout)["group_metrics"][0]
    return {
        "messages": group["total_messages"],
        "MB/s": round(group["total_throughput_megabytes_per_second"], 1),
        "p50 ms": round(group["p50_latency_ms"], 2),
        "p99 ms": round(group["p99_latency_ms"], 2),
    }


async def _stored(address: str) -> int:
    admin = await connect(address, "iggy", "iggy")
    try:
        stream = await admin.get_stream(STREAM)
    finally:
        admin.close()
    return stream["messages_count"] if stream else 0


def w1(address: str, durability: str, batches: int, shape: tuple[int, int] = W1) -> dict[str, dict]:
    """Produce (the stream is kept), then consume it: {"produce": figures, "consume": figures}."""
    produce = bench(address, durability, batches, shape, ["--keep", "pinned-producer", "-s", "1", "-p", "1"])
    stored = asyncio.run(_stored(address))
    if stored != produce["messages"]:
        raise AssertionError(f"{address}: the producer sent {produce['messages']}, the stream holds {stored}")
    consume = bench(address, durability, batches, shape, ["pinned-consumer", "-s", "1", "-c", "1"])
    if consume["messages"] != produce["messages"]:
        raise AssertionError(f"{address}: {produce['messages']} messages sent, {consume['messages']} consumed")
    return {"produce": produce, "consume": consume}


def measure(single: str, leader: str, batches: int, rounds: int, shape: tuple[int, int] = W1) -> list[dict]:
    """Per round and durability {"round", "durability", "1 node": w1(...), "3 nodes": w1(...)};
    the side that runs first alternates, and each run starts after a sync of the page cache (the
    writeback of what the previous run wrote would otherwise land on the next one)."""
    results = []
    for r in range(1, rounds + 1):
        for durability in DURABILITIES:
            row: dict = {"round": r, "durability": durability}
            order = list(zip(SIDES, (single, leader), strict=True))
            for side, address in order if r % 2 else reversed(order):
                os.sync()
                row[side] = w1(address, durability, batches, shape)
            results.append(row)
    return results


def _ratio(row: dict, phase: str) -> float:
    one, three = row["1 node"][phase]["MB/s"], row["3 nodes"][phase]["MB/s"]
    return three / one if one else float("nan")


def table(results: list[dict]) -> str:
    """Markdown: a row per round, durability and phase, then per durability and phase the medians
    (of each column; the ratio's median is over the rounds' ratios, each of one moment)."""
    lines = [
        "| durability | phase | round | 1 node MB/s | p50 / p99 ms | 3 nodes MB/s | p50 / p99 ms | ratio |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]

    def line(durability: str, phase: str, label: str, one: dict, three: dict, ratio: float) -> None:
        lines.append(
            f"| {durability} | {phase} | {label} | {one['MB/s']:.0f} | {one['p50 ms']:.2f} / {one['p99 ms']:.2f} "
            f"| {three['MB/s']:.0f} | {three['p50 ms']:.2f} / {three['p99 ms']:.2f} | {ratio:.2f} |"
        )

    for durability in DURABILITIES:
        for phase in PHASES:
            rows = [r for r in results if r["durability"] == durability]
            for r in rows:
                line(durability, phase, str(r["round"]), r["1 node"][phase], r["3 nodes"][phase], _ratio(r, phase))
            median = {
                side: {k: statistics.median(r[side][phase][k] for r in rows) for k in ("MB/s", "p50 ms", "p99 ms")}
                for side in SIDES
            }
            ratio = statistics.median(_ratio(r, phase) for r in rows)
            line(f"**{durability}**", f"**{phase}**", "median", median["1 node"], median["3 nodes"], ratio)
    return "\n".join(lines)


def single_node(data_dir: Path) -> IggyTestServer:
    """The plain node, on the engine the cluster's nodes run (tests/cluster/nodes.py)."""
    return IggyTestServer(data_dir, env={"IGGY_SYSTEM_ENGINE": os.environ.get("IGGY_TEST_ENGINE", "auto")})


def main(batches: int, rounds: int) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="iggy-replication-cost-"))
    etcd = EtcdServer(workdir / "etcd").start()
    cluster = TestCluster(workdir / "cluster", etcd.url)
    single = single_node(workdir / "single" / "data")
    try:
        cluster.start()
        single.start()
        leader = cluster.wait_leader(20)
        results = measure(str(single.tcp_address), cluster.address(leader), batches, rounds)
        print(table(results))
    finally:
        single.stop()
        cluster.stop()
        etcd.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    numbers = [int(a) for a in sys.argv[1:3]]
    main(numbers[0] if numbers else 100, numbers[1] if len(numbers) > 1 else 3)
