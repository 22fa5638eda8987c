"""The REST listener: uvicorn serving the Litestar app in its own thread, on its own loop.

`HttpServer.start()` is called from `Server.start()` on the main loop. It binds the socket
right there (so a busy port fails the start with a clear error, and the bound port is known
before the runtime config file is written), then starts the thread `iggy-http`, which runs a
uvloop event loop with `uvicorn.Server.serve(sockets=[sock])`, and waits until uvicorn
accepts connections. Request handlers reach the control plane only through `Bridge`, so the
main loop (and the TCP engine on it) is never blocked by HTTP work and never shares state
with this thread.

Slow or hostile clients are bounded by `iggy.http.protocol` (request head/body deadlines,
header size, open connections) and uvicorn's keep-alive timeout (`http.*` keys).

uvicorn installs no signal handlers outside the main thread; the process's SIGTERM/SIGINT
handling stays with `iggy.server.node`. `stop()` asks uvicorn to exit, waits for in-flight
requests (at most `SHUTDOWN_GRACE` seconds) and joins the thread without blocking the main
loop, which must keep serving bridge calls while requests finish.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from typing import TYPE_CHECKING

from iggy.http.auth import JwtIssuer
from iggy.http.bridge import Bridge
from iggy.http.context import HttpContext
from iggy.http.forward import Forwarder
from iggy.http.metrics import CountingApp, Metrics
from iggy.http.protocol import protocol_class
from iggy.http.settings import HttpSettings

if TYPE_CHECKING:
    import uvicorn

    from iggy.control.plane import ControlPlane

log = logging.getLogger("iggy.http")

SHUTDOWN_GRACE = 3
START_TIMEOUT = 10.0


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(1024)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class HttpServer:
    def __init__(self, plane: ControlPlane, settings: HttpSettings):
        self.plane = plane
        self.settings = settings
        self.sock: socket.socket | None = None
        self.thread: threading.Thread | None = None
        self.uvicorn: uvicorn.Server | None = None
        self.address: tuple[str, int] | None = None
        self._failed: BaseException | None = None
        self.forwarder: Forwarder | None = None

    def build_context(self, main_loop: asyncio.AbstractEventLoop, metrics: Metrics) -> HttpContext:
        bridge = Bridge(self.plane, main_loop)
        forward = self.settings.forward_to_leader and self.plane.cluster is not None
        self.forwarder = Forwarder(bridge, self.settings) if forward else None
        return HttpContext(
            bridge=bridge,
            jwt=JwtIssuer(self.settings.jwt),
            settings=self.settings,
            metrics=metrics,
            max_poll_bytes=self.plane.max_poll_bytes,
            forwarder=self.forwarder,
        )

    async def start(self) -> tuple[str, int]:
        """Bind, start the thread and return the bound (host, port) once it accepts requests."""
        import uvicorn

        from iggy.http.app import create_app

        metrics = Metrics()
        ctx = self.build_context(asyncio.get_running_loop(), metrics)
        app = CountingApp(create_app(ctx), metrics)
        s = self.settings
        self.sock = bind(s.host, s.port)
        host, port = self.sock.getsockname()[:2]
        self.address = (host, port)
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)  # no "Started server process" lines
        # slow clients: the guarded protocol adds head/body deadlines and bounds header size
        # and connections (iggy.http.protocol); uvicorn's own keep-alive timeout closes idle
        # connections between requests ("0 s" = never: a day, re-armed after every request)
        config = uvicorn.Config(
            app,
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,
            ws="none",
            loop="none",
            timeout_graceful_shutdown=SHUTDOWN_GRACE,
            http=protocol_class(s),
            # uvicorn hands it to loop.call_later, fractions of a second included (typed as int)
            timeout_keep_alive=s.keep_alive_timeout or 86_400,  # type: ignore[arg-type]
            ssl_certfile=s.tls_cert_file or None,
            ssl_keyfile=s.tls_key_file or None,
        )
        server = self.uvicorn = uvicorn.Server(config)
        self.thread = threading.Thread(target=self._run, args=(server, self.sock), name="iggy-http", daemon=True)
        self.thread.start()
        deadline = asyncio.get_running_loop().time() + START_TIMEOUT
        while not server.started:
            if self._failed is not None or not self.thread.is_alive():
                raise RuntimeError(f"HTTP server failed to start: {self._failed!r}")
            if asyncio.get_running_loop().time() > deadline:
                raise RuntimeError("HTTP server did not start in time")
            await asyncio.sleep(0.01)
        scheme = "https" if s.tls_cert_file else "http"
        log.info("HTTP API listening on %s://%s:%d", scheme, host, port)
        return self.address

    def _run(self, server: uvicorn.Server, sock: socket.socket) -> None:
        loop = _new_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(server.serve(sockets=[sock]))
        except BaseException as exc:
            self._failed = exc
            log.exception("HTTP server thread failed")
        finally:
            if self.forwarder is not None:
                loop.run_until_complete(self.forwarder.aclose())
            loop.close()

    async def stop(self) -> None:
        if self.thread is None or self.uvicorn is None:
            return
        self.uvicorn.should_exit = True
        await asyncio.to_thread(self.thread.join, SHUTDOWN_GRACE + 5)
        if self.thread.is_alive():
            log.warning("HTTP server thread did not stop in time")
        if self.sock is not None:
            self.sock.close()
        self.thread = None
