"""Per-actor samples and the report built from them.

Field names follow upstream's report (`core/bench/report`: BenchmarkIndividualMetricsSummary
and BenchmarkGroupMetricsSummary), so tools reading upstream JSON find the same keys. Units:
MB = 10^6 bytes of message payload ("user data"), latencies in milliseconds per request (one
batch sent, or one poll), except for consumers of a concurrent producer where the latency is
end to end: receive time minus the batch's origin_timestamp (producer clock = same host).

Two differences from upstream, both stated in the report: a group's `total_throughput_*` is
its total payload divided by the group's wall time (first actor start to last actor end)
rather than the sum of per-actor rates, and a group also carries pooled percentiles over all
of its samples (`p50_latency_ms` ...) next to upstream's averages of per-actor percentiles
(`average_p50_latency_ms` ...).
"""

from __future__ import annotations

import math
import time
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p95", 95.0), ("p99", 99.0), ("p999", 99.9), ("p9999", 99.99))

PRODUCER, CONSUMER, PRODUCING_CONSUMER = "producer", "consumer", "producing_consumer"


@dataclass
class ActorMetrics:
    """What one actor measured: counts, its start/end (perf_counter) and latencies (s)."""

    actor_kind: str
    actor_id: int
    stream: str = ""
    start: float = 0.0
    end: float = 0.0
    messages: int = 0
    user_bytes: int = 0
    total_bytes: int = 0
    batches: int = 0
    latencies: array[float] = field(default_factory=lambda: array("d"))

    def record(self, latency: float, messages: int, user_bytes: int, total_bytes: int) -> None:
        self.latencies.append(latency)
        self.messages += messages
        self.user_bytes += user_bytes
        self.total_bytes += total_bytes
        self.batches += 1

    @property
    def elapsed(self) -> float:
        return max(self.end - self.start, 1e-9)


def percentile(ordered: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of an ascending sequence (0.0 when empty)."""
    n = len(ordered)
    if not n:
        return 0.0
    rank = math.ceil(p / 100.0 * n)
    return ordered[min(n - 1, max(0, rank - 1))]


def latency_stats(values: Iterable[float]) -> dict[str, float]:
    """Percentiles, mean, median, min, max and standard deviation, in ms."""
    ordered = sorted(values)
    n = len(ordered)
    out = {f"{name}_latency_ms": percentile(ordered, p) * 1e3 for name, p in PERCENTILES}
    if n:
        mean = math.fsum(ordered) / n
        var = math.fsum((v - mean) ** 2 for v in ordered) / n
        out.update(
            avg_latency_ms=mean * 1e3,
            median_latency_ms=percentile(ordered, 50) * 1e3,
            min_latency_ms=ordered[0] * 1e3,
            max_latency_ms=ordered[-1] * 1e3,
            std_dev_latency_ms=math.sqrt(var) * 1e3,
        )
    else:
        out.update(
            avg_latency_ms=0.0,
            median_latency_ms=0.0,
            min_latency_ms=0.0,
            max_latency_ms=0.0,
            std_dev_latency_ms=0.0,
        )
    return out


def _round(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in d.items()}


def actor_summary(m: ActorMetrics, benchmark_kind: str) -> dict[str, Any]:
    secs = m.elapsed
    out = {
        "benchmark_kind": benchmark_kind,
        "actor_kind": m.actor_kind,
        "actor_id": m.actor_id,
        "stream": m.stream,
        "total_time_secs": secs,
        "total_user_data_bytes": m.user_bytes,
        "total_bytes": m.total_bytes,
        "total_messages": m.messages,
        "total_message_batches": m.batches,
        "throughput_megabytes_per_second": m.user_bytes / 1e6 / secs,
        "throughput_messages_per_second": m.messages / secs,
    }
    out.update(latency_stats(m.latencies))
    return _round(out)


GROUP_KINDS = {PRODUCER: "producers", CONSUMER: "consumers", PRODUCING_CONSUMER: "producing_consumers"}


def group_summary(kind: str, actors: list[ActorMetrics]) -> dict[str, Any]:
    """Totals over a group of actors (see the module docstring for the two rates)."""
    if not actors:
        raise ValueError("an empty group")
    wall = max(max(a.end for a in actors) - min(a.start for a in actors), 1e-9)
    user_bytes = sum(a.user_bytes for a in actors)
    messages = sum(a.messages for a in actors)
    pooled = array("d")
    for a in actors:
        pooled.extend(a.latencies)
    per_actor = [latency_stats(a.latencies) for a in actors]
    out = {
        "kind": kind,
        "actors": len(actors),
        "total_time_secs": wall,
        "total_user_data_bytes": user_bytes,
        "total_bytes": sum(a.total_bytes for a in actors),
        "total_messages": messages,
        "total_message_batches": sum(a.batches for a in actors),
        "total_throughput_megabytes_per_second": user_bytes / 1e6 / wall,
        "total_throughput_messages_per_second": messages / wall,
        "sum_of_actor_throughput_megabytes_per_second": sum(a.user_bytes / 1e6 / a.elapsed for a in actors),
        "average_throughput_megabytes_per_second": sum(a.user_bytes / 1e6 / a.elapsed for a in actors) / len(actors),
        "average_throughput_messages_per_second": sum(a.messages / a.elapsed for a in actors) / len(actors),
    }
    out.update(latency_stats(pooled))
    for name, _ in PERCENTILES:
        key = f"{name}_latency_ms"
        out[f"average_{key}"] = sum(s[key] for s in per_actor) / len(per_actor)
    out["average_latency_ms"] = out["avg_latency_ms"]
    out["average_median_latency_ms"] = sum(s["median_latency_ms"] for s in per_actor) / len(per_actor)
    return _round(out)


def group_metrics(actors: list[ActorMetrics]) -> list[dict[str, Any]]:
    """One summary per actor kind present, plus an aggregate when producers and consumers
    both ran."""
    groups = []
    for actor_kind, name in GROUP_KINDS.items():
        members = [a for a in actors if a.actor_kind == actor_kind]
        if members:
            groups.append(group_summary(name, members))
    kinds = {a.actor_kind for a in actors}
    if PRODUCER in kinds and CONSUMER in kinds:
        groups.append(group_summary("producers_and_consumers", actors))
    return groups


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
