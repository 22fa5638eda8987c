"""The etcd client of cluster mode: aetcd (asyncio over gRPC) on one of `cluster.etcd.endpoints`.

Every call has a deadline (`timeout`): fencing depends on knowing, by a given time, whether a
lease renewal went through, so no call may hang. A call that fails or times out drops the
connection and the next call tries the next endpoint (aetcd itself talks to one endpoint).
docs/CLUSTER.md says why aetcd and not a grpc-gateway JSON client or python-etcd3.

Ranges are read in pages (`get_all`): a gRPC client takes at most 4 MiB per reply (its
default limit), so one read of a large prefix (`meta/` behind a node that was down for long, the
`offsets/` of many partitions) would fail every time. aetcd's `get_range` has no `limit`, so
the pages are built from its RangeRequest; every page after the first is read at the first
page's revision, which makes the pages one consistent snapshot.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import aetcd
import aetcd.rtypes
from aetcd import rpc

log = logging.getLogger(__name__)

PAGE_KEYS = 500  # keys per page of a range read: far below 4 MiB for keys of a few KiB


class EtcdUnavailable(Exception):
    """The call did not complete within its deadline, or etcd refused it."""


class Etcd:
    def __init__(self, endpoints: list[str], timeout: float):
        self.endpoints = [_host_port(url) for url in endpoints]
        self.timeout = timeout
        self._index = 0
        self._client: aetcd.Client | None = None

    @property
    def endpoint(self) -> str:
        host, port = self.endpoints[self._index]
        return f"{host}:{port}"

    async def call(self, fn: Callable[[aetcd.Client], Awaitable[Any]]) -> Any:
        """`await fn(client)` within the deadline; EtcdUnavailable (and the next endpoint) if not."""
        if self._client is None:
            host, port = self.endpoints[self._index]
            self._client = aetcd.Client(host=host, port=port, timeout=self.timeout)
        try:
            return await asyncio.wait_for(fn(self._client), self.timeout)
        except Exception as exc:
            await self._drop()
            raise EtcdUnavailable(f"etcd {self.endpoint}: {type(exc).__name__} {exc}".strip()) from exc

    async def get_all(self, start: bytes, end: bytes, page: int = PAGE_KEYS) -> list[aetcd.rtypes.KeyValue]:
        """Every key in [start, end) in key order, read in pages of `page` keys at one
        revision; each page is one call with its own deadline (EtcdUnavailable as `call`). A
        compaction of etcd's history between two pages fails the read (the caller retries)."""
        found: list[aetcd.rtypes.KeyValue] = []
        revision = 0
        key = start
        while True:
            request = rpc.RangeRequest(key=key, range_end=end, limit=page, revision=revision)

            async def one(client: aetcd.Client, request: rpc.RangeRequest = request) -> Any:
                await client.connect()
                try:
                    return await client.kvstub.Range(request, timeout=self.timeout, metadata=client.metadata)
                except rpc.AioRpcError as exc:
                    raise EtcdUnavailable(f"{exc.code().name}: {exc.details()}") from exc

            reply = await self.call(one)
            result = aetcd.rtypes.GetRange(reply.header, reply.kvs, reply.more, reply.count)
            found.extend(result)
            if not reply.more or not reply.kvs:
                return found
            revision = reply.header.revision
            key = reply.kvs[-1].key + b"\0"

    async def revision(self) -> int:
        """etcd's current revision (the header of a count-only range read of one key)."""
        request = rpc.RangeRequest(key=b"\0", count_only=True)

        async def one(client: aetcd.Client) -> int:
            await client.connect()
            reply = await client.kvstub.Range(request, timeout=self.timeout, metadata=client.metadata)
            return int(reply.header.revision)

        revision: int = await self.call(one)
        return revision

    async def compact(self, revision: int) -> None:
        """Drop the history of every key older than `revision` (etcd's Compact). A history that
        was already compacted at least that far (by another caller, or etcd's own
        --auto-compaction) is no error."""

        async def one(client: aetcd.Client) -> None:
            await client.connect()
            try:
                await client.kvstub.Compact(
                    rpc.CompactionRequest(revision=revision), timeout=self.timeout, metadata=client.metadata
                )
            except rpc.AioRpcError as exc:
                if exc.code() != rpc.StatusCode.OUT_OF_RANGE:  # "required revision has been compacted"
                    raise

        await self.call(one)

    async def _drop(self) -> None:
        client, self._client = self._client, None
        self._index = (self._index + 1) % len(self.endpoints)
        if client is not None:
            try:
                await asyncio.wait_for(client.close(), 1.0)
            except Exception:
                pass

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                await asyncio.wait_for(client.close(), 1.0)
            except Exception:
                pass


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 2379
