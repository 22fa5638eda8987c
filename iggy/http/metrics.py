"""Prometheus metrics of `GET /metrics` (SEMANTICS 9.6), on a private CollectorRegistry.

Series (the reference server's names)::

    http_requests_total     counter: every HTTP request this listener received
    streams, topics, partitions, segments, messages, users, clients    gauges
    shard_requests, shard_requests_native, shard_fsyncs    gauges (uring engine): TCP requests
                            the shards took, how many of them the C data plane served without
                            the GIL, and the fsyncs they submitted for persisted topics
    reply_buffers_bytes, reply_buffer_waiters    gauges (both engines): bytes of big replies
                            counted against limits.max_reply_buffers now, and the connections
                            whose poll waits for room in it

The gauges are read from the control plane when scraped (one call on the main loop), so they
are exact at scrape time and cost nothing between scrapes. The counter is bumped by
`CountingApp`, a thin ASGI wrapper around the whole app that also sees requests no route
matched.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Receive, Scope, Send
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest

if TYPE_CHECKING:
    from iggy.control.plane import ControlPlane

GAUGES = (
    "streams",
    "topics",
    "partitions",
    "segments",
    "messages",
    "users",
    "clients",
    "shard_requests",
    "shard_requests_native",
    "shard_fsyncs",
    "reply_buffers_bytes",
    "reply_buffer_waiters",
)


class Metrics:
    # Litestar appends "; charset=utf-8" to text types itself
    content_type = CONTENT_TYPE_LATEST.replace("; charset=utf-8", "")

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("http_requests", "HTTP requests received", registry=self.registry)
        self.gauges = {name: Gauge(name, f"Number of {name}", registry=self.registry) for name in GAUGES}

    def render(self, counts: dict[str, int]) -> bytes:
        for name, gauge in self.gauges.items():
            gauge.set(counts.get(name, 0))
        return generate_latest(self.registry)


def counts(plane: ControlPlane) -> dict[str, int]:
    """The gauge values, read on the main loop."""
    st = plane.meta.state
    totals = plane.storage.totals()
    topic_list = [t for s in st.streams.values() for t in s.topics.values()]
    return {
        "streams": len(st.streams),
        "topics": len(topic_list),
        "partitions": sum(len(t.partitions) for t in topic_list),
        "segments": totals["segments_count"],
        "messages": totals["messages_count"],
        "users": len(st.users),
        "clients": len(plane.sessions),
        **plane.engine_counters(),
    }


class CountingApp:
    """ASGI wrapper counting HTTP requests into `metrics.requests`."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == ScopeType.HTTP:  # a str enum: equal to the scope's "http"
            self.metrics.requests.inc()
        await self.app(scope, receive, send)
