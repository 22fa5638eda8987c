"""The etcd client of cluster mode: aetcd (asyncio over gRPC) on one of `cluster.etcd.endpoints`.

Every call has a deadline (`timeout`): fencing depends on knowing, by a given time, whether a
lease renewal went through, so no call may hang. A call that fails or times out drops the
connection and the next call tries the next endpoint (aetcd itself talks to one endpoint).
docs/CLUSTER.md says why aetcd and not a grpc-gateway JSON client or python-etcd3.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import aetcd

log = logging.getLogger(__name__)


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
