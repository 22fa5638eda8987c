"""System commands: ping, stats, cluster metadata, option catalog, clients.

Wire bodies (TCP.md 9.10, 9.13, 9.14, 9.15)::

    ClusterMetadata  u32 len + cluster name, u32 node count, per node: u32 len + name,
                     u32 len + ip, u16 tcp, u16 quic, u16 http, u16 websocket, u8 role (0 leader,
                     1 follower), u8 status (0 healthy, 1 starting, 2 stopping, 3 unreachable)
    DescribeOptions  u32 count, per entry: WireName key, u8 kind, u32 len + default bytes,
                     u32 len + description
    Client           u32 client_id, u32 user_id (u32::MAX = none), u8 transport,
                     u32 len + address, u32 consumer_groups_count
    ClientDetails    Client + consumer_groups_count x (u32 stream, u32 topic, u32 group)
    Stats            see encode_stats
"""

from __future__ import annotations

import os
import platform
import shutil
import socket
import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, NoReturn, TypedDict

import psutil

from iggy import SERVER_VERSION
from iggy.control import permissions as perm
from iggy.control.clock import now_us
from iggy.control.registry import command
from iggy.control.topics import TOPIC_OPTIONS, TopicOption, encode_value
from iggy.protocol import codes
from iggy.protocol.errors import ErrorCode, IggyError
from iggy.protocol.wire import Reader, Writer

if TYPE_CHECKING:
    from iggy.control.plane import ControlPlane, Session

_PROCESS = psutil.Process()
_PROCESS.cpu_percent(None)  # the first sample primes the counter


def server_semver() -> int:
    major, minor, patch = (int(x) for x in SERVER_VERSION.split("-")[0].split("."))
    return major * 1_000_000 + minor * 1_000 + patch


@command(codes.PING, needs=perm.PUBLIC)
def ping(plane: ControlPlane, session: Session) -> None:
    return None


class Stats(TypedDict):
    """Everything GET_STATS reports (encode_stats writes it; the HTTP API shapes it as JSON)."""

    process_id: int
    cpu_usage: float
    total_cpu_usage: float
    memory_usage: int
    total_memory: int
    available_memory: int
    run_time: int
    start_time: int
    read_bytes: int
    written_bytes: int
    messages_size_bytes: int
    streams_count: int
    topics_count: int
    partitions_count: int
    segments_count: int
    messages_count: int
    clients_count: int
    consumer_groups_count: int
    hostname: str
    os_name: str
    os_version: str
    kernel_version: str
    iggy_server_version: str
    iggy_server_semver: int
    threads_count: int
    free_disk_space: int
    total_disk_space: int


def collect_stats(plane: ControlPlane) -> Stats:
    """Everything GET_STATS reports, as a dict (shared with the HTTP API)."""
    st = plane.meta.state
    totals = plane.storage.totals()
    mem = psutil.virtual_memory()
    try:
        io = _PROCESS.io_counters()
        read_bytes, written_bytes = io.read_bytes, io.write_bytes
    except (AttributeError, psutil.Error):
        read_bytes = written_bytes = 0
    try:
        disk = shutil.disk_usage(plane.config.system.path)
        free_disk, total_disk = disk.free, disk.total
    except OSError:
        free_disk = total_disk = 0
    uname = platform.uname()
    return {
        "process_id": os.getpid(),
        "cpu_usage": _PROCESS.cpu_percent(None),
        "total_cpu_usage": psutil.cpu_percent(None),
        "memory_usage": _PROCESS.memory_info().rss,
        "total_memory": mem.total,
        "available_memory": mem.available,
        "run_time": now_us() - plane.started_at,
        "start_time": plane.started_at,
        "read_bytes": read_bytes,
        "written_bytes": written_bytes,
        "messages_size_bytes": totals["size_bytes"],
        "streams_count": len(st.streams),
        "topics_count": sum(len(s.topics) for s in st.streams.values()),
        "partitions_count": sum(len(t.partitions) for s in st.streams.values() for t in s.topics.values()),
        "segments_count": totals["segments_count"],
        "messages_count": totals["messages_count"],
        "clients_count": len(plane.sessions),
        "consumer_groups_count": sum(len(t.groups) for s in st.streams.values() for t in s.topics.values()),
        "hostname": socket.gethostname(),
        "os_name": uname.system,
        "os_version": uname.version,
        "kernel_version": uname.release,
        "iggy_server_version": SERVER_VERSION,
        "iggy_server_semver": server_semver(),
        "threads_count": threading.active_count(),
        "free_disk_space": free_disk,
        "total_disk_space": total_disk,
    }


def encode_stats(plane: ControlPlane, s: Stats) -> bytes:
    w = Writer()
    w.u32(s["process_id"]).f32(s["cpu_usage"]).f32(s["total_cpu_usage"]).u64(s["memory_usage"])
    w.u64(s["total_memory"]).u64(s["available_memory"]).u64(s["run_time"]).u64(s["start_time"])
    w.u64(s["read_bytes"]).u64(s["written_bytes"]).u64(s["messages_size_bytes"])
    w.u32(s["streams_count"]).u32(s["topics_count"]).u32(s["partitions_count"]).u32(s["segments_count"])
    w.u64(s["messages_count"]).u32(s["clients_count"]).u32(s["consumer_groups_count"])
    for text in (s["hostname"], s["os_name"], s["os_version"], s["kernel_version"], s["iggy_server_version"]):
        w.str32(text)
    w.u32(s["iggy_server_semver"]).u32(0)  # no cache metrics
    w.u32(s["threads_count"]).u64(s["free_disk_space"]).u64(s["total_disk_space"])
    return w.getvalue()


@command(codes.GET_STATS, needs=perm.READ_SERVERS, encode=encode_stats)
def get_stats(plane: ControlPlane, session: Session) -> Stats:
    return collect_stats(plane)


# u8 codes of ClusterMetadata (TCP.md 5.10); 5 "unknown" is refused by the SDK and never sent
NODE_ROLES = {"leader": 0, "follower": 1}
NODE_STATUSES = {"healthy": 0, "starting": 1, "stopping": 2, "unreachable": 3, "maintenance": 4}


# {"name": ..., "nodes": [{"name", "ip", "tcp_port", ..., "role", "status"}]}: Any, as the
# roster of iggy.cluster.membership (values of several types by key, JSON-like)
ClusterMetadata = dict[str, Any]


def cluster_metadata(plane: ControlPlane) -> ClusterMetadata:
    """The roster the SDK reads after login: the cluster's (iggy.cluster.membership) in cluster
    mode, else this single node (SEMANTICS 9.5)."""
    if plane.cluster is not None:
        return plane.cluster.metadata()

    def port(name: str) -> int:
        addr = plane.bound.get(name)
        return addr[1] if addr else 0

    tcp = plane.bound.get("tcp")
    return {
        "name": "single-node",
        "nodes": [
            {
                "name": "iggy-node",
                "ip": tcp[0] if tcp else "127.0.0.1",
                "tcp_port": port("tcp"),
                "quic_port": port("quic"),
                "http_port": port("http"),
                "websocket_port": port("websocket"),
                "role": "leader",
                "status": "healthy",
            }
        ],
    }


def encode_cluster_metadata(plane: ControlPlane, meta: ClusterMetadata) -> bytes:
    w = Writer().str32(meta["name"]).u32(len(meta["nodes"]))
    for n in meta["nodes"]:
        w.str32(n["name"]).str32(n["ip"])
        w.u16(n["tcp_port"]).u16(n["quic_port"]).u16(n["http_port"]).u16(n["websocket_port"])
        w.u8(NODE_ROLES[n["role"]]).u8(NODE_STATUSES[n["status"]])
    return w.getvalue()


@command(codes.GET_CLUSTER_METADATA, needs=perm.LOGGED_IN, encode=encode_cluster_metadata)
def get_cluster_metadata(plane: ControlPlane, session: Session) -> ClusterMetadata:
    return cluster_metadata(plane)


OPTION_SCOPES = {1: "topic", 2: "stream", 3: "user"}


def described_options(scope: str) -> list[TopicOption]:
    if scope != "topic":
        return []
    return [o for o in TOPIC_OPTIONS.values() if o.described]


def read_option_scope(r: Reader) -> tuple[str]:
    scope = r.u8()
    if scope not in OPTION_SCOPES:
        raise IggyError(ErrorCode.INVALID_COMMAND)
    return (OPTION_SCOPES[scope],)


def encode_options(plane: ControlPlane, opts: list[TopicOption]) -> bytes:
    w = Writer().u32(len(opts))
    for o in opts:
        default = encode_value(o.kind, o.default)
        w.name(o.key).u8(o.kind).u32(len(default)).raw(default).str32(o.description)
    return w.getvalue()


@command(codes.DESCRIBE_OPTIONS, needs=perm.LOGGED_IN, decode=read_option_scope, encode=encode_options)
def describe_options(plane: ControlPlane, session: Session, scope: str) -> list[TopicOption]:
    return described_options(scope)


def encode_client(w: Writer, s: Session) -> None:
    w.u32(s.client_id).u32(0xFFFFFFFF if s.user_id is None else s.user_id).u8(s.transport)
    w.str32(s.address).u32(len(s.groups))


def encode_client_details(plane: ControlPlane, s: Session) -> bytes:
    w = Writer()
    encode_client(w, s)
    for stream_id, topic_id, group_id in sorted(s.groups):
        w.u32(stream_id).u32(topic_id).u32(group_id)
    return w.getvalue()


def encode_clients(plane: ControlPlane, sessions: Iterable[Session]) -> bytes:
    w = Writer()
    for s in sessions:
        encode_client(w, s)
    return w.getvalue()


def read_client_id(r: Reader) -> tuple[int]:
    return (r.u32(),)


@command(codes.GET_ME, needs=perm.LOGGED_IN, encode=encode_client_details)
def get_me(plane: ControlPlane, session: Session) -> Session:
    return session


@command(codes.GET_CLIENT, needs=perm.READ_SERVERS, decode=read_client_id, encode=encode_client_details)
def get_client(plane: ControlPlane, session: Session, client_id: int) -> Session | None:
    return plane.sessions.get(client_id)  # None: an empty body


@command(codes.GET_CLIENTS, needs=perm.READ_SERVERS, encode=encode_clients)
def get_clients(plane: ControlPlane, session: Session) -> list[Session]:
    return sorted(plane.sessions.values(), key=lambda s: s.client_id)


def _unavailable(plane: ControlPlane, session: Session) -> NoReturn:
    raise IggyError(ErrorCode.FEATURE_UNAVAILABLE)


# Snapshot archives and explicit flushes are not offered: answer FeatureUnavailable as the
# reference server does. Cluster routing (14, 103, 104, 123) is iggy.cluster.routing's.
for _code in (codes.GET_SNAPSHOT_FILE, codes.FLUSH_UNSAVED_BUFFER):
    command(_code, needs=perm.LOGGED_IN)(_unavailable)
