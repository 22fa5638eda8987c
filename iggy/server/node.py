"""Server bootstrap and shutdown order: storage -> control plane -> engines -> listeners.

`run_server(config)` is what `iggy-server` runs. Start-up opens the metadata (snapshot +
journal; corrupt metadata stops it, see iggy.metadata.journal, unless `repair_metadata`),
creates the root user on an empty user table (SEMANTICS 1.3), opens every partition (moving
directories the metadata doesn't name to quarantine, see iggy.storage.partitions), then binds the
listeners and logs one line per bound address. SIGTERM/SIGINT close
the listeners first, then the partitions and the journal, so a graceful stop loses nothing.
The bound addresses are also written to `<system.path>/runtime/current_config.toml`.

Open files. The soft RLIMIT_NOFILE is raised to the hard limit at start, and the partitions'
segment files share a fixed budget of it (the LRU of open segment files in iggy.storage.log:
files open on demand and the least recently used ones are closed, so neither startup nor the
number of partitions depends on holding every file open)::

    L        = RLIMIT_NOFILE after raising it (the soft limit)
    C        = limits.max_connections (0 = unlimited: counted as L / 2), capped at L / 2
    R        = FD_RESERVE (listeners, journal, io_uring rings and eventfds, HTTP/QUIC/WebSocket,
               logs, dups for in-flight fsyncs)
    segments = max(MIN_SEGMENT_FILES, (L - C - R) / 2)

The stored consumer-offset files have their own cache (iggy.storage.consumer_offsets, `limits.max_open_offset_files`):
a quarter of L - limits.max_connections, so segments and offsets together stay within three
quarters of what the connections leave.
`IGGY_PARTITION_FILES_BUDGET=N` sets the segment-file budget directly (tests, small hosts;
at least 4). A file the budget has closed reopens on its next use; an fsync on the reopened
file flushes what the closed descriptor wrote (fsync is per file, not per descriptor).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from iggy import SERVER_VERSION
from iggy.control import changes
from iggy.control import permissions as perm
from iggy.control.clock import now_us
from iggy.control.plane import ControlPlane
from iggy.control.users import STATUS_ACTIVE, create_user_record, hash_password
from iggy.metadata.store import MetadataStore
from iggy.protocol.errors import IggyError
from iggy.storage.consumer_offsets import configure_from as configure_offsets
from iggy.storage.partitions import Storage
from iggy.tasks import cancel_and_wait

if TYPE_CHECKING:
    import ssl

    from iggy.cluster.membership import Cluster
    from iggy.config import Config, Section
    from iggy.engine.base import Engine
    from iggy.engine.frontdoors.tls import Certificates
    from iggy.http import HttpServer

log = logging.getLogger("iggy.server")


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


def _bind_error(exc: BaseException) -> str:
    """'Address already in use (...)' whichever loop raised it (uvloop hides errno in __cause__)."""
    text = str(exc) or type(exc).__name__
    for err in (exc, exc.__cause__):
        if isinstance(err, OSError) and err.errno:
            name = os.strerror(err.errno)
            text = text.removeprefix(f"[Errno {err.errno}] ")
            return name if text == name else f"{name} ({text})"
    return text


class Server:
    def __init__(self, config: Config, env: Mapping[str, str] | None = None, repair_metadata: bool = False):
        self.config = config
        self.repair_metadata = repair_metadata  # --repair-metadata: accept dropping corrupt journal records
        self.env = os.environ if env is None else env
        self._plane: ControlPlane | None = None  # made by start()
        self.engines: list[Engine] = []  # one per listener serving
        self.tasks: list[asyncio.Future[None]] = []
        self.engine = "none"  # the TCP engine's name: uring or asyncio
        self.http: HttpServer | None = None
        self.cluster: Cluster | None = None  # with cluster.enabled
        self.certificates: Certificates | None = None  # made when a listener needs one

    @property
    def plane(self) -> ControlPlane:
        """The control plane; everything but start() runs after start() made it."""
        if self._plane is None:
            raise RuntimeError("the server has not been started")
        return self._plane

    async def start(self) -> None:
        from iggy.config import root_credentials

        cfg = self.config
        _raise_open_file_limit()
        configure_offsets(cfg)  # sized from the raised limit, before the partitions open
        _set_segment_files_budget(cfg, self.env)
        path = cfg.system.path
        os.makedirs(path, exist_ok=True)
        meta = MetadataStore(path, cfg.system.metadata.snapshot_every)
        meta.open(repair=self.repair_metadata)
        storage = Storage(path, cfg.system.partition.validate_checksum)
        storage.open_all(meta.state, meta.orphan_notes)
        self._plane = plane = ControlPlane(cfg, meta, storage)
        if not meta.state.users:
            username, password, generated = root_credentials(self.env)
            create_user_record(plane, username, hash_password(password), STATUS_ACTIVE, perm.all_permissions())
            if generated:
                log.warning("Generated root user password: %s", password)
            log.info("created root user %r", username)
        if cfg.cluster.enabled:
            # before any listener: a node starts as a follower until it wins the election
            from iggy.cluster.membership import Cluster

            # test knobs, not settings: compact meta/ after fewer records, cap logouts lower,
            # compact etcd's history sooner, hold a user to fewer logouts a second
            knobs: dict[str, Any] = {
                arg: kind(self.env[var])
                for arg, var, kind in (
                    ("compact_after", "IGGY_CLUSTER_COMPACT_AFTER", int),
                    ("revocations_per_user", "IGGY_CLUSTER_REVOCATIONS_PER_USER", int),
                    ("history_every", "IGGY_CLUSTER_HISTORY_EVERY", float),
                    ("logouts_per_second", "IGGY_CLUSTER_LOGOUTS_PER_SECOND", float),
                )
                if self.env.get(var)
            }
            self.cluster = Cluster(cfg, plane, **knobs)
            plane.cluster = self.cluster
            plane.routes.set_cluster()
        if cfg.tcp.enabled:
            tcp = self._tcp_engine()
            await self._serve(tcp)
            plane.engine_counters = tcp.counters
        if cfg.quic.enabled:
            await self._serve_optional("quic", "QUIC", self._quic_engine)
        if cfg.websocket.enabled:
            await self._serve_optional("websocket", "WebSocket", self._websocket_engine)
        if cfg.http.enabled:
            from iggy.http import HttpServer, from_config

            self.http = HttpServer(plane, from_config(cfg))  # own thread + loop, bound before returning
            plane.bound["http"] = await self.http.start()
        self._write_runtime_config()
        if self.cluster is not None:
            await self.cluster.replication.start(split_address(cfg.tcp.address)[0])
            self.cluster.start()
        self.tasks.append(asyncio.ensure_future(self._heartbeat_loop()))
        if cfg.data_maintenance.messages.cleaner_enabled:
            interval = cfg.data_maintenance.messages.interval
            self.tasks.append(asyncio.ensure_future(self._leader_loop(interval, self._retention_pass)))
        if cfg.personal_access_token.cleaner.enabled:
            interval = cfg.personal_access_token.cleaner.interval
            self.tasks.append(asyncio.ensure_future(self._leader_loop(interval, self._remove_expired_tokens)))
        log.info("iggy server %s started (engine: %s, data: %s)", SERVER_VERSION, self.engine, os.path.abspath(path))

    def _choose_engine(self) -> str:
        """`system.engine`: auto takes uring when io_uring works here, with one line saying why not."""
        wanted = self.config.system.engine
        if wanted == "asyncio":
            return "asyncio"
        tls = getattr(getattr(self.config.tcp, "tls", None), "enabled", False)
        from iggy.engine.uring.engine import probe

        reason = "TLS on the TCP listener is served by the asyncio engine" if tls else probe()
        if reason is None:
            return "uring"
        if wanted == "uring":
            raise RuntimeError(f"system.engine = uring, but io_uring can't be used: {reason}")
        log.warning("io_uring engine unavailable (%s): falling back to the asyncio engine", reason)
        return "asyncio"

    def _tcp_engine(self) -> Engine:
        """The TCP listener's engine: uring, or asyncio (plain, or TLS with `[tcp.tls]`)."""
        cfg = self.config
        host, port = split_address(cfg.tcp.address)
        self.engine = self._choose_engine()
        if self.engine == "uring":
            from iggy.engine.uring.engine import UringEngine

            return UringEngine(
                self.plane, host, port, cfg.message_bus.max_message_size, shards=cfg.system.shards or None
            )
        from iggy.engine.asyncio_engine import AsyncioEngine

        ctx = None
        if cfg.tcp.tls.enabled:
            from iggy.engine.frontdoors.tls import CertificateError

            try:
                ctx = self._tls_context("tcp.tls", cfg.tcp.tls)
            except CertificateError as exc:
                log.error("%s", exc)
                raise
        return AsyncioEngine(self.plane, host, port, cfg.message_bus.max_message_size, ssl_context=ctx)

    async def _serve(self, engine: Engine) -> None:
        """Start an engine; its bound address goes to plane.bound and the log."""
        bound = await engine.start()
        self.engines.append(engine)
        self.plane.bound[engine.kind] = (bound[0], bound[1])
        log.info("%s", engine.listening(bound))

    def _tls_context(self, section: str, tls: Section) -> ssl.SSLContext:
        """SSL context for `[tcp.tls]` / `[websocket.tls]` (iggy.engine.frontdoors.tls)."""
        from iggy.engine.frontdoors.tls import Certificates, server_context

        if self.certificates is None:
            self.certificates = Certificates(self.config)
        cert, key = self.certificates.for_listener(section, tls.self_signed, tls.cert_file, tls.key_file)
        return server_context(cert, key, section)

    async def _serve_optional(self, key: str, name: str, make_engine: Callable[[], Engine]) -> None:
        """Start the QUIC or WebSocket listener; a failure is logged and the server runs without it."""
        from iggy.engine.frontdoors.tls import CertificateError

        address = getattr(self.config, key).address
        try:
            await self._serve(make_engine())
        except CertificateError as exc:  # a configuration mistake, not a busy port: refuse to start
            log.error("%s", exc)
            raise
        except Exception as exc:  # broad on purpose: the other transports keep serving
            reason = _bind_error(exc)
            env = "IGGY_" + key.upper()
            log.error(
                "%s listener NOT started on %s: %s. The server runs without %s; choose another "
                "%s.address (%s_ADDRESS) or set %s.enabled = false (%s_ENABLED=false)",
                name,
                address,
                reason,
                name,
                key,
                env,
                key,
                env,
                exc_info=not isinstance(exc, OSError),
            )

    def _quic_engine(self) -> Engine:
        from iggy.engine.frontdoors.quic import QuicEngine, quic_configuration
        from iggy.engine.frontdoors.tls import Certificates

        cfg = self.config
        if self.certificates is None:
            self.certificates = Certificates(cfg)
        c = cfg.quic.certificate
        cert, key = self.certificates.for_listener(
            "quic.certificate", c.self_signed, c.cert_file, c.key_file, files_win=False
        )
        host, port = split_address(cfg.quic.address)
        return QuicEngine(
            self.plane,
            host,
            port,
            cfg.message_bus.max_message_size,
            quic_configuration(cfg, cert, key),
            cfg.quic.keep_alive_interval,
        )

    def _websocket_engine(self) -> Engine:
        from iggy.engine.frontdoors.websocket import WebSocketEngine

        cfg = self.config
        ctx = self._tls_context("websocket.tls", cfg.websocket.tls) if cfg.websocket.tls.enabled else None
        host, port = split_address(cfg.websocket.address)
        return WebSocketEngine(self.plane, host, port, cfg.message_bus.max_message_size, ctx)

    def _write_runtime_config(self) -> None:
        runtime = os.path.join(self.config.system.path, "runtime")
        os.makedirs(runtime, exist_ok=True)
        lines = []
        for name, (host, port) in sorted(self.plane.bound.items()):
            lines += [f"[{name}]", f'address = "{host}:{port}"', ""]
        tmp = os.path.join(runtime, "current_config.toml.tmp")
        with open(tmp, "w") as f:
            f.write("\n".join(lines))
        os.replace(tmp, os.path.join(runtime, "current_config.toml"))

    async def _heartbeat_loop(self) -> None:
        """Evict consumer-group members silent for 1.2 x the heartbeat interval (SEMANTICS 9.3)."""
        cfg = self.config.heartbeat
        if not cfg.enabled:
            return
        limit = 1.2 * cfg.interval
        while True:
            await asyncio.sleep(max(0.2, limit / 6))
            now = time.monotonic()
            for session in list(self.plane.sessions.values()):
                if session.groups and now - session.idle_since() > limit:
                    log.info(
                        "evicting client %d (%s): no heartbeat for %.1f s",
                        session.client_id,
                        session.address,
                        now - session.idle_since(),
                    )
                    self.plane.groups.leave_all(session)
                    if session.close is not None:
                        session.close()

    def _changes_metadata(self) -> bool:
        """Whether the background loops that change metadata or the log run here: on a single
        node, and on the cluster's leader only (its changes reach the others through meta/)."""
        return self.cluster is None or self.cluster.is_leader()

    async def _leader_loop(self, interval: float, one_pass: Callable[[], None]) -> None:
        """Run `one_pass` every `interval` seconds while this node changes metadata (see
        `_changes_metadata`); on a follower the pass is skipped, not the loop, so a node that
        becomes leader starts passing at its next tick."""
        while True:
            await asyncio.sleep(max(0.1, interval))
            if self._changes_metadata():
                one_pass()

    def _remove_expired_tokens(self) -> None:
        """Remove expired personal access tokens (they are refused at login anyway)."""
        now = now_us()
        for token in [t for t in self.plane.meta.state.tokens.values() if t.expiry_at and t.expiry_at <= now]:
            try:
                changes.apply(self.plane, {"op": "token.delete", "token_hash": token.token_hash})
            except IggyError as exc:  # the leadership ended, or the journal can't be written: next pass
                log.warning("expired personal access token %r not removed yet: %s", token.name, exc)
                return
            log.info("removed expired personal access token %r of user %d", token.name, token.user_id)

    def _retention_pass(self) -> None:
        from iggy.storage import retention

        try:
            on_cut = self.cluster.replication.retained if self.cluster is not None else None
            retention.run_once(self.plane, now_us(), on_cut)
        except Exception:  # broad on purpose: a failed pass must not stop later passes
            log.exception("retention pass failed")

    async def stop(self) -> None:
        if self.cluster is not None:  # resign first: a follower takes over without waiting for the lease
            await self.cluster.stop()
        if self.http is not None:  # first: its requests still need the control plane
            await self.http.stop()
        await cancel_and_wait(self.tasks)
        for engine in self.engines:  # no new connections; the uring shards, WebSocket and QUIC end theirs
            await engine.stop()
        for session in list(self.plane.sessions.values()):
            if session.close is not None:
                session.close()
        for engine in self.engines:
            await engine.wait_closed()
        self.plane.storage.close()
        self.plane.meta.close()
        self.plane.close()
        log.info("iggy server stopped")


async def serve(config: Config, repair_metadata: bool = False) -> None:
    server = Server(config, repair_metadata=repair_metadata)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop()


def _raise_open_file_limit() -> None:
    """Lift the soft RLIMIT_NOFILE to the hard limit: every client is a socket, and the
    segment-file budget and the stored consumer offsets' files are sized from it."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = 1 << 20 if hard == resource.RLIM_INFINITY else hard  # fs.nr_open's default
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-file limit from %d: %s", soft, exc)


FD_RESERVE = 256
MIN_SEGMENT_FILES = 16


def segment_files_budget(limit: int, max_connections: int) -> int:
    """How many segment files the partitions may keep open (the formula in the module docstring)."""
    connections = max_connections if 0 < max_connections < limit // 2 else limit // 2
    return max(MIN_SEGMENT_FILES, (limit - connections - FD_RESERVE) // 2)


def _set_segment_files_budget(cfg: Config, env: Mapping[str, str]) -> None:
    import resource

    from iggy.storage.log import set_open_files_budget

    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if limit == resource.RLIM_INFINITY:
        limit = 1 << 20
    override = env.get("IGGY_PARTITION_FILES_BUDGET")
    if override:
        budget = max(4, int(override))
    else:
        budget = segment_files_budget(limit, cfg.limits.max_connections)
    set_open_files_budget(budget)
    log.info(
        "open files: limit %d, at most %d segment files open at once%s",
        limit,
        budget,
        " (IGGY_PARTITION_FILES_BUDGET)" if override else "",
    )


def run_server(config: Config, repair_metadata: bool = False) -> None:
    try:
        import uvloop
    except ImportError:  # optional: the standard loop serves as well
        asyncio.run(serve(config, repair_metadata))
    else:
        uvloop.run(serve(config, repair_metadata))
