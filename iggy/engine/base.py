"""What every engine shares: the `Engine` interface, and the fault switch of the tests.

An engine is one front door of the binary protocol: a listener and the connections it
accepts, each served through `ControlPlane.handle` with a `Session` of its own. The server
(iggy.server.node) builds one per enabled listener and drives them all the same way, on the
main event loop:

    bound = await engine.start()     bind, serve; the bound (host, port) -> plane.bound[kind]
    await engine.stop()              accept nothing more; end the connections it runs itself
                                     (the uring shards are stopped and joined, WebSocket and
                                     QUIC close theirs); the others end when the server closes
                                     their sessions
    await engine.wait_closed()       until those are gone (bounded)

    engine                      kind        module
    UringEngine                 tcp         iggy.engine.uring.engine (io_uring shards)
    AsyncioEngine               tcp         iggy.engine.asyncio_engine (TLS when given a context)
    WebSocketEngine             websocket   iggy.engine.frontdoors.websocket
    QuicEngine                  quic        iggy.engine.frontdoors.quic

`IGGY_TEST_FAULT_COMMAND=<command code>` (tests only; unset, it costs one comparison per
frame on the Python path) makes the engine's frame callback raise `InjectedFault` for every
request with that code, before the control plane sees it: the way tests check that an
exception in an engine callback closes that connection alone, is logged once naming it, and
leaves the server serving everyone else (tests/test_engine_faults.py). Write operations are
matched by the code they stand for (iggy.protocol.codes.OPERATION_CODES).
"""

from __future__ import annotations

import abc
import asyncio
import logging
import os
import ssl
from collections.abc import Awaitable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from iggy.protocol import codes

if TYPE_CHECKING:
    from iggy.control.plane import ControlPlane
    from iggy.protocol.wire import RequestHeader

log = logging.getLogger(__name__)

FAULT_ENV = "IGGY_TEST_FAULT_COMMAND"


def _fault_command() -> int:
    text = os.environ.get(FAULT_ENV, "").strip()
    return int(text) if text.isdigit() else 0


FAULT_COMMAND = _fault_command()  # 0: off


class InjectedFault(RuntimeError):
    """Raised on purpose for the command named by IGGY_TEST_FAULT_COMMAND."""


def inject_fault(header: RequestHeader) -> None:
    """Raise InjectedFault when `header` is a request for the command under test."""
    if FAULT_COMMAND:
        op = header.operation
        code = header.code if op == codes.OP_READ else codes.OPERATION_CODES.get(op, 0)
        if code == FAULT_COMMAND:
            raise InjectedFault(f"{FAULT_ENV}={FAULT_COMMAND}: command {code} fails on purpose")


@dataclass(eq=False)
class Engine(abc.ABC):
    """One listener of the binary protocol and its connections (see the module docstring).

    Its fields are the constructor's arguments: these four, then the engine's own (a
    subclass is a dataclass too, unless it needs an `__init__` of its own).
    """

    kind: ClassVar[str] = "tcp"  # its config section and key of plane.bound

    plane: ControlPlane
    host: str
    port: int
    max_frame_size: int

    @abc.abstractmethod
    async def start(self) -> tuple[str, int]:
        """Bind and start serving; the bound (host, port)."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Accept no more connections and end those this engine runs itself."""

    async def wait_closed(self) -> None:  # noqa: B027 - optional: nothing to wait for by default
        """Wait (at most a few seconds) for the connections ended by closing their sessions."""

    @abc.abstractmethod
    def listening(self, bound: tuple[str, int]) -> str:
        """The log line saying where it listens."""

    def counters(self) -> dict[str, int]:
        """Gauges of GET /metrics (the TCP engine's are published)."""
        return {}


class Listener(Protocol):
    """A listening server as asyncio (`loop.create_server`) and websockets make them."""

    def close(self) -> None: ...

    async def wait_closed(self) -> None: ...


@dataclass(eq=False)
class ListenerEngine(Engine):
    """An engine whose connections are served by one `Listener`, over TLS when given an SSL
    context: stop() closes the listener (and whatever connections it closes itself),
    wait_closed() waits for it."""

    ssl_context: ssl.SSLContext | None = None
    server: Listener | None = field(default=None, init=False)  # the listener once started

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()

    async def wait_closed(self) -> None:
        if self.server is not None:
            await wait_bounded(self.server.wait_closed())


async def wait_bounded(waiter: Awaitable[object], seconds: float = 2.0) -> None:
    """Await `waiter` (a server's wait_closed()) for at most `seconds`."""
    try:
        await asyncio.wait_for(waiter, seconds)
    except TimeoutError:
        pass


# tasks started by `spawn` and not done yet: the event loop keeps only weak references to tasks
_spawned: set[asyncio.Task[Any]] = set()


def spawn(coro: Coroutine[Any, Any, object], name: str) -> asyncio.Task[Any]:
    """Run `coro` as a task of the running loop, referenced until it is done (so it is not
    garbage-collected half-way); an exception it ends with is logged once, with `name`."""
    task = asyncio.get_running_loop().create_task(coro, name=name)
    _spawned.add(task)
    task.add_done_callback(_spawned_done)
    return task


def _spawned_done(task: asyncio.Task[Any]) -> None:
    _spawned.discard(task)
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("%s failed", task.get_name(), exc_info=exc)
