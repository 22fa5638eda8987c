"""`iggy`: administer an Iggy server from the command line (in the style of Apache Iggy's CLI).

    iggy [connection and output options] COMMAND ACTION [arguments]

Commands and their short aliases follow Apache Iggy's `iggy` tool: stream (s), topic (t),
partition (p), segment (seg), user (u), pat, client (c), consumer-group (g),
consumer-offset (o), message (m), ping, me, stats, options. Identifiers are numeric ids or
names, as upstream. Credentials as upstream: `--token`, else `--username` (+ `--password`, or
a prompt), else the environment variables IGGY_USERNAME and IGGY_PASSWORD.

Output is a table by default and JSON with `--json` (before or after the command); errors go
to stderr (as JSON `{"error": {...}}` under `--json`) with exit status 1.
"""

from __future__ import annotations

import argparse
import getpass
import os
import statistics
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from iggy import __version__
from iggy.admin import output as out
from iggy.admin.client import (
    HEADER_KINDS,
    U64_MAX,
    AdminClient,
    CommandError,
    encode_headers,
    encode_value,
    parse_identifier,
)
from iggy.control.permissions import GLOBAL_FLAGS, STREAM_FLAGS, TOPIC_FLAGS
from iggy.metadata.state import Permissions
from iggy.protocol.errors import ErrorCode
from iggy.units import parse_duration, parse_size

ENV_USERNAME = "IGGY_USERNAME"
ENV_PASSWORD = "IGGY_PASSWORD"
DEFAULT_TCP_ADDRESS = "127.0.0.1:8090"

KIND_STRING, KIND_U64 = 2, 12


class UsageError(Exception):
    """A bad argument value found after parsing (exit status 2)."""


# --------------------------------------------------------------------------- the context


class Context:
    def __init__(self, args: argparse.Namespace, client: AdminClient):
        self.args = args
        self.json = _json_output(args)
        self.quiet = bool(args.quiet)
        self.client = client

    def say(self, text: str) -> None:
        """A human message (not under --json or --quiet)."""
        if not self.json and not self.quiet:
            print(text)

    def emit(self, data: object, human: Callable[[], object]) -> None:
        """JSON of `data` under --json, else call `human()` unless --quiet."""
        if self.json:
            out.emit_json(data)
        elif not self.quiet:
            human()

    def done(self, message: str, data: object = None) -> None:
        """A mutation finished: a line for people, an object for scripts."""
        if self.json:
            out.emit_json(data if data is not None else {"status": "ok", "message": message})
        else:
            self.say(message)


def _json_output(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "json", False))


def _not_found(ident: str, by_id: int, by_name: int, reason: str) -> CommandError:
    """A get that found nothing (the server answers an empty body): the upstream not-found code."""
    return CommandError(by_id if isinstance(parse_identifier(ident), int) else by_name, reason)


def _list_mode(args: argparse.Namespace) -> str:
    return str(getattr(args, "list_mode", "table"))


def _emit_list(
    ctx: Context,
    args: argparse.Namespace,
    items: Sequence[object],
    columns: Sequence[str],
    rows: Sequence[Sequence[object]],
    empty: str | None,
) -> None:
    """A list command's answer: the items as JSON, or for people a table (or one line per row
    with --list-mode list), or the `empty` sentence when there is nothing (None: an empty table)."""

    def human() -> None:
        if not items and empty is not None:
            print(empty)
        elif _list_mode(args) == "list":
            out.list_lines(rows)
        else:
            out.table(columns, rows)

    ctx.emit(items, human)


# --------------------------------------------------------------------------- value parsing


def parse_expiry(words: Sequence[str] | None, *, default_token: str = "server_default") -> int | None:
    """Expiry words ("1day 2h", "unlimited", "server_default") -> µs; None = leave to the server."""
    text = " ".join(words or []).strip() or default_token
    lowered = text.lower()
    if lowered in ("server_default", "default"):
        return None
    if lowered in ("unlimited", "never_expire", "never", "none"):
        return U64_MAX
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise UsageError(f"invalid expiry {text!r}: {exc}") from None


def parse_max_size(text: str | None) -> int | None:
    if text is None or text.lower() in ("server_default", "default"):
        return None
    if text.lower() == "unlimited":
        return U64_MAX
    try:
        return parse_size(text)
    except ValueError as exc:
        raise UsageError(f"invalid max topic size {text!r}: {exc}") from None


def parse_key_value(raw: str) -> tuple[str, str]:
    key, sep, value = raw.partition("=")
    if not sep or not key or not value:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got: {raw}")
    if len(key.encode()) > 255 or len(value.encode()) > 255:
        raise argparse.ArgumentTypeError("option keys and values are at most 255 bytes")
    return key, value


def parse_header(raw: str) -> tuple[str, int, bytes]:
    """`key:kind:value` -> (key, kind code, value bytes), as upstream's `-H`."""
    parts = raw.split(":", 2)
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"expected key:kind:value, got: {raw}")
    key, kind_name, value = parts
    kind = HEADER_KINDS.get(kind_name.lower())
    if kind is None:
        raise argparse.ArgumentTypeError(f"unknown header kind {kind_name!r} (one of {', '.join(HEADER_KINDS)})")
    try:
        return key, kind, encode_value(kind, value)
    except (ValueError, OverflowError) as exc:
        raise argparse.ArgumentTypeError(f"invalid {kind_name} value {value!r}: {exc}") from None


_GLOBAL_SHORT = {
    "m_srv": "manage_servers",
    "r_srv": "read_servers",
    "m_usr": "manage_users",
    "r_usr": "read_users",
    "m_str": "manage_streams",
    "r_str": "read_streams",
    "m_top": "manage_topics",
    "r_top": "read_topics",
    "p_msg": "poll_messages",
    "s_msg": "send_messages",
}
_STREAM_SHORT = {
    "m_str": "manage_stream",
    "r_str": "read_stream",
    "m_top": "manage_topics",
    "r_top": "read_topics",
    "p_msg": "poll_messages",
    "s_msg": "send_messages",
}
_TOPIC_SHORT = {"m_top": "manage_topic", "r_top": "read_topic", "p_msg": "poll_messages", "s_msg": "send_messages"}


def _flags(text: str, names: Sequence[str], short: Mapping[str, str], what: str) -> list[bool]:
    chosen = set()
    for item in filter(None, (p.strip() for p in text.split(","))):
        name = short.get(item, item)
        if name not in names:
            raise argparse.ArgumentTypeError(f"unknown {what} permission {item!r}")
        chosen.add(name)
    return [name in chosen for name in names]


def parse_global_permissions(text: str) -> list[bool]:
    return _flags(text, GLOBAL_FLAGS, _GLOBAL_SHORT, "global")


def parse_stream_permissions(text: str) -> tuple[int, dict[str, Any]]:
    """`STREAM_ID[:perms][#TOPIC_ID[:perms]]...` -> (stream id, {"flags", "topics"})."""
    head, *topics = text.split("#")
    sid, _, flags = head.partition(":")
    if not sid.isdigit():
        raise argparse.ArgumentTypeError(f"stream permissions need a numeric stream id: {text!r}")
    topic_flags: dict[int, list[bool]] = {}
    entry: dict[str, Any] = {"flags": _flags(flags, STREAM_FLAGS, _STREAM_SHORT, "stream"), "topics": topic_flags}
    for t in topics:
        tid, _, tflags = t.partition(":")
        if not tid.isdigit():
            raise argparse.ArgumentTypeError(f"topic permissions need a numeric topic id: {t!r}")
        topic_flags[int(tid)] = _flags(tflags, TOPIC_FLAGS, _TOPIC_SHORT, "topic")
    return int(sid), entry


def build_permissions(
    global_perms: list[bool] | None, stream_perms: Iterable[tuple[int, dict[str, Any]]] | None
) -> Permissions | None:
    """None (no permissions) unless -g or -s was given."""
    if global_perms is None and not stream_perms:
        return None
    return {"global": global_perms or [False] * 10, "streams": dict(stream_perms or [])}


def _read_secret(prompt: str) -> str:
    if sys.stdin.isatty():
        return getpass.getpass(prompt)
    return sys.stdin.readline().rstrip("\r\n")


# --------------------------------------------------------------------------- commands: system


def cmd_ping(ctx: Context, args: argparse.Namespace) -> None:
    times = []
    for i in range(args.count):
        ms = ctx.client.ping()
        times.append(ms)
        if not ctx.json:
            ctx.say(f"Ping sequence id: {i + 1} time: {ms:.2f} ms")
    summary = {
        "count": len(times),
        "min_ms": min(times),
        "avg_ms": statistics.fmean(times),
        "max_ms": max(times),
        "times_ms": times,
    }
    if ctx.json:
        out.emit_json(summary)
    else:
        ctx.say(
            f"Ping statistics for {len(times)} ping commands: min/avg/max = "
            f"{summary['min_ms']:.2f}/{summary['avg_ms']:.2f}/{summary['max_ms']:.2f} ms"
        )


def cmd_me(ctx: Context, args: argparse.Namespace) -> None:
    me = ctx.client.me()
    ctx.emit(
        me,
        lambda: out.properties(
            [
                ("Client ID", me["client_id"]),
                ("User ID", me["user_id"]),
                ("Address", me["address"]),
                ("Transport", me["transport"]),
                ("Consumer groups", me["consumer_groups_count"]),
            ]
        ),
    )


_STAT_LABELS = (
    ("process_id", "Iggy Server PID", str),
    ("cpu_usage", "Iggy Server CPU Usage", lambda v: f"{v:.4f} %"),
    ("total_cpu_usage", "Total CPU Usage", lambda v: f"{v:.4f} %"),
    ("memory_usage", "Iggy Server Memory Usage", out.size),
    ("total_memory", "Total Memory (RAM)", out.size),
    ("available_memory", "Available Memory (RAM)", out.size),
    ("run_time", "Iggy Server Run Time", lambda v: out.duration(v - v % 1_000_000) if v >= 1_000_000 else "0s"),
    ("start_time", "Start Time (UTC)", out.timestamp),
    ("read_bytes", "Read Bytes", out.size),
    ("written_bytes", "Written Bytes", out.size),
    ("messages_size_bytes", "Messages Size Bytes", out.size),
    ("streams_count", "Streams Count", str),
    ("topics_count", "Topics Count", str),
    ("partitions_count", "Partitions Count", str),
    ("segments_count", "Segments Count", str),
    ("messages_count", "Message Count", str),
    ("clients_count", "Clients Count", str),
    ("consumer_groups_count", "Consumer Groups Count", str),
    ("threads_count", "Threads Count", str),
    ("free_disk_space", "Free Disk Space", out.size),
    ("total_disk_space", "Total Disk Space", out.size),
    ("hostname", "Hostname", str),
    ("os_name", "OS Name", str),
    ("os_version", "OS Version", str),
    ("kernel_version", "Kernel Version", str),
    ("iggy_server_version", "Iggy Server Version", str),
)


def cmd_stats(ctx: Context, args: argparse.Namespace) -> None:
    stats = ctx.client.stats()
    mode = "json" if ctx.json else args.output
    if mode == "json":
        out.emit_json(stats)
        return
    rows = [(label, fmt(stats[key])) for key, label, fmt in _STAT_LABELS]
    if ctx.quiet:
        return
    if mode == "list":
        out.list_lines(rows)
    else:
        out.table(("Server property", "Value"), rows)


def cmd_options(ctx: Context, args: argparse.Namespace) -> None:
    opts = ctx.client.describe_options(args.scope)
    ctx.emit(
        opts,
        lambda: (
            out.table(
                ("Key", "Kind", "Default", "Description"),
                [(o["key"], o["kind"], o["default"], o["description"]) for o in opts],
            )
            if opts
            else ctx.say(f"No options for scope {args.scope}.")
        ),
    )


# --------------------------------------------------------------------------- streams


def _stream_row(s: Mapping[str, Any]) -> tuple[object, ...]:
    return (s["id"], out.timestamp(s["created_at"]), s["name"], s["size_bytes"], s["messages_count"], s["topics_count"])


_STREAM_COLUMNS = ("ID", "Created", "Name", "Size (B)", "Messages", "Topics")


def cmd_stream_create(ctx: Context, args: argparse.Namespace) -> None:
    s = ctx.client.create_stream(args.name)
    ctx.done(f"Stream with name: {s['name']} and ID: {s['id']} created", s)


def cmd_stream_get(ctx: Context, args: argparse.Namespace) -> None:
    s = ctx.client.get_stream(parse_identifier(args.stream_id))
    if s is None:
        raise _not_found(
            args.stream_id,
            ErrorCode.STREAM_ID_NOT_FOUND,
            ErrorCode.STREAM_NAME_NOT_FOUND,
            f"Stream with ID: {args.stream_id} was not found.",
        )
    ctx.emit(
        s,
        lambda: out.properties(
            [
                ("Stream ID", s["id"]),
                ("Created", out.timestamp(s["created_at"])),
                ("Stream name", s["name"]),
                ("Stream size", s["size_bytes"]),
                ("Stream message count", s["messages_count"]),
                ("Stream topics count", s["topics_count"]),
            ]
        ),
    )


def cmd_stream_list(ctx: Context, args: argparse.Namespace) -> None:
    streams = ctx.client.get_streams()
    _emit_list(ctx, args, streams, _STREAM_COLUMNS, [_stream_row(s) for s in streams], "No streams found!")


def cmd_stream_update(ctx: Context, args: argparse.Namespace) -> None:
    ctx.client.update_stream(parse_identifier(args.stream_id), args.name)
    ctx.done(f"Stream with ID: {args.stream_id} updated with name: {args.name}")


def cmd_stream_delete(ctx: Context, args: argparse.Namespace) -> None:
    ctx.client.delete_stream(parse_identifier(args.stream_id))
    ctx.done(f"Stream with ID: {args.stream_id} deleted")


def cmd_stream_purge(ctx: Context, args: argparse.Namespace) -> None:
    ctx.client.purge_stream(parse_identifier(args.stream_id))
    ctx.done(f"Stream with ID: {args.stream_id} purged")


# --------------------------------------------------------------------------- topics

_TOPIC_COLUMNS = (
    "ID",
    "Created",
    "Name",
    "Size (B)",
    "Max Topic Size",
    "Message Expiry",
    "Compression",
    "Messages Count",
    "Partitions Count",
)


def _topic_row(t: Mapping[str, Any]) -> tuple[object, ...]:
    return (
        t["id"],
        out.timestamp(t["created_at"]),
        t["name"],
        t["size_bytes"],
        out.size(t["max_topic_size"]),
        out.duration(t["message_expiry"]),
        t["compression_algorithm"],
        t["messages_count"],
        t["partitions_count"],
    )


def _topic_options(
    compression: str | None,
    expiry_words: Sequence[str] | None,
    max_size: str | None,
    extra: Iterable[tuple[str, str]] = (),
) -> list[tuple[str, int, bytes]]:
    options: list[tuple[str, int, bytes]] = []
    if compression is not None:
        options.append(("compression_algorithm", KIND_STRING, compression.encode()))
    expiry = parse_expiry(expiry_words)
    if expiry is not None:
        options.append(("message_expiry", KIND_U64, expiry.to_bytes(8, "little")))
    size = parse_max_size(max_size)
    if size is not None:
        options.append(("max_topic_size", KIND_U64, size.to_bytes(8, "little")))
    for key, value in extra:
        options.append((key, KIND_STRING, value.encode()))
    return options


def _split_compression(args: argparse.Namespace) -> tuple[str | None, list[str]]:
    """Upstream takes `COMPRESSION [EXPIRY...]`; a first word that is no algorithm starts the expiry."""
    compression, expiry = args.compression_algorithm, list(args.message_expiry or [])
    if compression is not None and compression.lower() not in ("none", "gzip"):
        expiry.insert(0, compression)
        compression = None
    return (compression.lower() if compression else None), expiry


def cmd_topic_create(ctx: Context, args: argparse.Namespace) -> None:
    compression, expiry = _split_compression(args)
    options = _topic_options(compression or "none", expiry, args.max_topic_size, args.set or ())
    t = ctx.client.create_topic(parse_identifier(args.stream_id), args.name, args.partitions_count, options)
    ctx.done(
        f"Topic with name: {t['name']}, ID: {t['id']}, partitions count: {t['partitions_count']}, "
        f"compression algorithm: {t['compression_algorithm']}, message expiry: "
        f"{out.duration(t['message_expiry'])}, max topic size: {out.size(t['max_topic_size'])} "
        f"created in stream with ID: {args.stream_id}",
        t,
    )


def cmd_topic_update(ctx: Context, args: argparse.Namespace) -> None:
    compression, expiry = _split_compression(args)
    options = _topic_options(compression, expiry, args.max_topic_size)
    ctx.client.update_topic(parse_identifier(args.stream_id), parse_identifier(args.topic_id), args.name, options)
    ctx.done(f"Topic with ID: {args.topic_id} in stream with ID: {args.stream_id} updated")


def cmd_topic_get(ctx: Context, args: argparse.Namespace) -> None:
    t = ctx.client.get_topic(parse_identifier(args.stream_id), parse_identifier(args.topic_id))
    if t is None:
        raise _not_found(
            args.topic_id,
            ErrorCode.TOPIC_ID_NOT_FOUND,
            ErrorCode.TOPIC_NAME_NOT_FOUND,
            f"Topic with ID: {args.topic_id} for stream with ID: {args.stream_id} was not found.",
        )

    def human() -> None:
        out.properties(
            [
                ("Topic ID", t["id"]),
                ("Created", out.timestamp(t["created_at"])),
                ("Topic name", t["name"]),
                ("Topic size", t["size_bytes"]),
                ("Max topic size", out.size(t["max_topic_size"])),
                ("Message expiry", out.duration(t["message_expiry"])),
                ("Compression", t["compression_algorithm"]),
                ("Topic message count", t["messages_count"]),
                ("Partitions count", t["partitions_count"]),
            ]
            + [(f"Option {k}", v) for k, v in sorted({**t["derived_options"], **t["options"]}.items())]
        )
        if t["partitions"]:
            out.table(
                ("Partition ID", "Created", "Segments", "Current Offset", "Size (B)", "Messages"),
                [
                    (
                        p["id"],
                        out.timestamp(p["created_at"]),
                        p["segments_count"],
                        p["current_offset"],
                        p["size_bytes"],
                        p["messages_count"],
                    )
                    for p in t["partitions"]
                ],
            )

    ctx.emit(t, human)


def cmd_topic_list(ctx: Context, args: argparse.Namespace) -> None:
    topics = ctx.client.get_topics(parse_identifier(args.stream_id))
    _emit_list(
        ctx,
        args,
        topics,
        _TOPIC_COLUMNS,
        [_topic_row(t) for t in topics],
        f"No topics found in stream {args.stream_id}!",
    )


def cmd_topic_delete(ctx: Context, args: argparse.Namespace) -> None:
    ctx.client.delete_topic(parse_identifier(args.stream_id), parse_identifier(args.topic_id))
    ctx.done(f"Topic with ID: {args.topic_id} in stream with ID: {args.stream_id} deleted")


def cmd_topic_purge(ctx: Context, args: argparse.Namespace) -> None:
    ctx.client.purge_topic(parse_identifier(args.stream_id), parse_identifier(args.topic_id))
    ctx.done(f"Topic with ID: {args.topic_id} in stream with ID: {args.stream_id} purged")


# --------------------------------------------------------------------------- partitions, segments


def cmd_partition_create(ctx: Context, args: argparse.Namespace) -> None:
    ctx.client.create_partitions(
        parse_identifier(args.stream_id), parse_identifier(args.topic_id), args.partitions_count
    )
    ctx.done(
        f"Created {args.partitions_count} partitions for topic with ID: {args.topic_id} "
        f"and stream with ID: {args.stream_id}"
    )


def cmd_partition_delete(ctx: Context, args: argparse.Namespace) -> None:
    ctx.client.delete_partitions(
        parse_identifier(args.stream_id), parse_identifier(args.topic_id), args.partitions_count
    )
    ctx.done(
        f"Deleted {args.partitions_count} partitions for topic with ID: {args.topic_id} "
        f"and stream with ID: {args.stream_id}"
    )


def cmd_segment_delete(ctx: Context, args: argparse.Namespace) -> None:
    ctx.client.delete_segments(
        parse_identifier(args.stream_id), parse_identifier(args.topic_id), args.partition_id, args.segments_count
    )
    ctx.done(
        f"Deleted {args.segments_count} segments of partition {args.partition_id} of topic with ID: "
        f"{args.topic_id} and stream with ID: {args.stream_id}"
    )


# --------------------------------------------------------------------------- users

_USER_COLUMNS = ("ID", "Created", "Status", "Username")


def _user_row(u: Mapping[str, Any]) -> tuple[object, ...]:
    return (u["id"], out.timestamp(u["created_at"]), u["status"], u["username"])


def _permission_rows(perms: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    if perms is None:
        return [("Permissions", "none")]
    rows = [("Global", ", ".join(k for k, v in perms["global"].items() if v) or "-")]
    for sid, sp in perms["streams"].items():
        rows.append((f"Stream {sid}", ", ".join(k for k, v in sp.items() if k != "topics" and v) or "-"))
        for tid, tp in sp["topics"].items():
            rows.append((f"Stream {sid} topic {tid}", ", ".join(k for k, v in tp.items() if v) or "-"))
    return rows


def cmd_user_create(ctx: Context, args: argparse.Namespace) -> None:
    perms = build_permissions(args.global_permissions, args.stream_permissions)
    u = ctx.client.create_user(args.new_username, args.new_password, args.user_status, perms)
    ctx.done(f"User with username: {u['username']} and ID: {u['id']} created", u)


def cmd_user_get(ctx: Context, args: argparse.Namespace) -> None:
    u = ctx.client.get_user(parse_identifier(args.user_id))
    if u is None:
        raise CommandError(ErrorCode.RESOURCE_NOT_FOUND, f"User with ID: {args.user_id} was not found.")
    ctx.emit(
        u,
        lambda: out.properties(
            [
                ("User ID", u["id"]),
                ("Created", out.timestamp(u["created_at"])),
                ("Status", u["status"]),
                ("Username", u["username"]),
                *_permission_rows(u["permissions"]),
            ]
        ),
    )


def cmd_user_list(ctx: Context, args: argparse.Namespace) -> None:
    users = ctx.client.get_users()
    _emit_list(ctx, args, users, _USER_COLUMNS, [_user_row(u) for u in users], "No users found!")


def cmd_user_delete(ctx: Context, args: argparse.Namespace) -> None:
    ctx.client.delete_user(parse_identifier(args.user_id))
    ctx.done(f"User with ID: {args.user_id} deleted")


def cmd_user_name(ctx: Context, args: argparse.Namespace) -> None:
    ctx.client.update_user(parse_identifier(args.user_id), username=args.new_username)
    ctx.done(f"User with ID: {args.user_id} updated with username: {args.new_username}")


def cmd_user_status(ctx: Context, args: argparse.Namespace) -> None:
    ctx.client.update_user(parse_identifier(args.user_id), status=args.status)
    ctx.done(f"User with ID: {args.user_id} updated with status: {args.status}")


def cmd_user_password(ctx: Context, args: argparse.Namespace) -> None:
    current = args.current_password if args.current_password is not None else _read_secret("Current password: ")
    new = args.new_password if args.new_password is not None else _read_secret("New password: ")
    ctx.client.change_password(parse_identifier(args.user_id), current, new)
    ctx.done(f"Password for user with ID: {args.user_id} changed")


def cmd_user_permissions(ctx: Context, args: argparse.Namespace) -> None:
    perms = build_permissions(args.global_permissions, args.stream_permissions)
    ctx.client.update_permissions(parse_identifier(args.user_id), perms)
    ctx.done(f"Permissions for user with ID: {args.user_id} updated")


# --------------------------------------------------------------------------- personal access tokens


def cmd_pat_create(ctx: Context, args: argparse.Namespace) -> None:
    expiry = parse_expiry(args.expiry, default_token="none")
    token = ctx.client.create_token(args.name, 0 if expiry in (None, U64_MAX) else expiry)
    if ctx.json:
        out.emit_json({"name": args.name, "token": token})
    elif ctx.quiet:
        print(token)
    else:
        print(
            f"Personal access token with name: {args.name} and "
            f"{'no expiry' if expiry in (None, U64_MAX) else 'expiry: ' + out.duration(expiry)} created"
        )
        print(f"Token: {token}")


def cmd_pat_list(ctx: Context, args: argparse.Namespace) -> None:
    tokens = ctx.client.get_tokens()
    rows = [(t["name"], out.timestamp(t["expiry_at"]) if t["expiry_at"] else "unlimited") for t in tokens]
    _emit_list(ctx, args, tokens, ("Name", "Token Expiry Time"), rows, "No personal access tokens found!")


def cmd_pat_delete(ctx: Context, args: argparse.Namespace) -> None:
    ctx.client.delete_token(args.name)
    ctx.done(f"Personal access token with name: {args.name} deleted")


# --------------------------------------------------------------------------- clients

_CLIENT_COLUMNS = ("Client ID", "User ID", "Address", "Transport", "Consumer Groups")


def _client_row(c: Mapping[str, Any]) -> tuple[object, ...]:
    return (c["client_id"], c["user_id"], c["address"], c["transport"], c["consumer_groups_count"])


def cmd_client_get(ctx: Context, args: argparse.Namespace) -> None:
    c = ctx.client.get_client(args.client_id)
    if c is None:
        raise CommandError(ErrorCode.CLIENT_NOT_FOUND, f"Client with ID: {args.client_id} was not found.")
    ctx.emit(c, lambda: out.properties(list(zip(_CLIENT_COLUMNS, _client_row(c), strict=True))))


def cmd_client_list(ctx: Context, args: argparse.Namespace) -> None:
    clients = ctx.client.get_clients()
    _emit_list(ctx, args, clients, _CLIENT_COLUMNS, [_client_row(c) for c in clients], None)


# --------------------------------------------------------------------------- consumer groups


def cmd_group_create(ctx: Context, args: argparse.Namespace) -> None:
    g = ctx.client.create_consumer_group(parse_identifier(args.stream_id), parse_identifier(args.topic_id), args.name)
    ctx.done(
        f"Consumer group with ID: {g['id']} and name: {g['name']} created for topic with ID: "
        f"{args.topic_id} and stream with ID: {args.stream_id}",
        g,
    )


def cmd_group_get(ctx: Context, args: argparse.Namespace) -> None:
    g = ctx.client.get_consumer_group(
        parse_identifier(args.stream_id), parse_identifier(args.topic_id), parse_identifier(args.group_id)
    )
    if g is None:
        raise _not_found(
            args.group_id,
            ErrorCode.CONSUMER_GROUP_ID_NOT_FOUND,
            ErrorCode.CONSUMER_GROUP_NAME_NOT_FOUND,
            f"Consumer group with ID: {args.group_id} for topic with ID: {args.topic_id} "
            f"and stream with ID: {args.stream_id} was not found.",
        )

    def human() -> None:
        out.properties(
            [
                ("Consumer group ID", g["id"]),
                ("Consumer group name", g["name"]),
                ("Partitions count", g["partitions_count"]),
                ("Members count", g["members_count"]),
            ]
        )
        if g["members"]:
            out.table(
                ("Member ID", "Partitions Count", "Partitions"),
                [(m["id"], m["partitions_count"], ", ".join(map(str, m["partitions"]))) for m in g["members"]],
            )

    ctx.emit(g, human)


def cmd_group_list(ctx: Context, args: argparse.Namespace) -> None:
    groups = ctx.client.get_consumer_groups(parse_identifier(args.stream_id), parse_identifier(args.topic_id))
    rows = [(g["id"], g["name"], g["partitions_count"], g["members_count"]) for g in groups]
    _emit_list(
        ctx,
        args,
        groups,
        ("ID", "Name", "Partitions Count", "Members Count"),
        rows,
        f"No consumer groups found for topic {args.topic_id} and stream {args.stream_id}!",
    )


def cmd_group_delete(ctx: Context, args: argparse.Namespace) -> None:
    ctx.client.delete_consumer_group(
        parse_identifier(args.stream_id), parse_identifier(args.topic_id), parse_identifier(args.group_id)
    )
    ctx.done(
        f"Consumer group with ID: {args.group_id} deleted for topic with ID: {args.topic_id} "
        f"and stream with ID: {args.stream_id}"
    )


# --------------------------------------------------------------------------- consumer offsets


def cmd_offset_get(ctx: Context, args: argparse.Namespace) -> None:
    o = ctx.client.get_consumer_offset(
        parse_identifier(args.consumer_id),
        parse_identifier(args.stream_id),
        parse_identifier(args.topic_id),
        args.partition_id,
        args.kind,
    )
    if o is None:
        raise CommandError(
            ErrorCode.CONSUMER_OFFSET_NOT_FOUND, f"Consumer offset for {args.kind} {args.consumer_id} not found"
        )
    ctx.emit(
        o,
        lambda: out.properties(
            [
                ("Consumer ID", args.consumer_id),
                ("Stream ID", args.stream_id),
                ("Topic ID", args.topic_id),
                ("Partition ID", o["partition_id"]),
                ("Current offset", o["current_offset"]),
                ("Stored offset", o["stored_offset"]),
            ]
        ),
    )


def cmd_offset_set(ctx: Context, args: argparse.Namespace) -> None:
    ctx.client.store_consumer_offset(
        parse_identifier(args.consumer_id),
        parse_identifier(args.stream_id),
        parse_identifier(args.topic_id),
        args.partition_id,
        args.offset,
        args.kind,
    )
    ctx.done(
        f"Consumer offset for {args.kind} with ID: {args.consumer_id} and partition with ID: "
        f"{args.partition_id} set to {args.offset}"
    )


# --------------------------------------------------------------------------- messages


def cmd_message_send(ctx: Context, args: argparse.Namespace) -> None:
    texts = args.messages
    if not texts:
        texts = [line.rstrip("\r\n") for line in sys.stdin if line.rstrip("\r\n")]
    if not texts:
        raise UsageError("no messages to send (give them as arguments or one per line on stdin)")
    headers = encode_headers(args.headers) if args.headers else b""
    key = args.message_key.encode("utf-8") if args.message_key is not None else None
    confirmations = ctx.client.send_messages(
        parse_identifier(args.stream_id),
        parse_identifier(args.topic_id),
        [(t.encode("utf-8"), headers) for t in texts],
        partition_id=args.partition_id,
        key=key,
    )
    data = {"messages_count": len(texts), "confirmations": confirmations}
    where = ""
    if confirmations:
        c = confirmations[0]
        where = f" (partition {c['partition_id']}, base offset {c['base_offset']})"
    ctx.done(
        f"Sent {len(texts)} message(s) to topic with ID: {args.topic_id} and stream with ID: {args.stream_id}{where}",
        data,
    )


def cmd_message_poll(ctx: Context, args: argparse.Namespace) -> None:
    if args.offset is not None:
        strategy, value = "offset", args.offset
    elif args.first:
        strategy, value = "first", 0
    elif args.last:
        strategy, value = "last", 0
    else:
        strategy, value = "next", 0
    polled = ctx.client.poll_messages(
        parse_identifier(args.stream_id),
        parse_identifier(args.topic_id),
        args.partition_id,
        strategy=strategy,
        value=value,
        count=args.message_count,
        consumer=parse_identifier(args.consumer),
        auto_commit=args.auto_commit,
    )

    def human() -> None:
        messages = polled["messages"]
        print(
            f"Polled {len(messages)} message{'s' if len(messages) != 1 else ''} from partition "
            f"{polled['partition_id']} (current offset {polled['current_offset']})"
        )
        if not messages:
            return
        columns = ["Offset", "Timestamp", "ID", "Length", "Payload"]
        if args.show_headers:
            columns.append("Headers")
        rows = []
        for m in messages:
            row = [m["offset"], out.timestamp(m["timestamp"]), m["id"], m["length"], m["payload"]]
            if args.show_headers:
                row.append("\n".join(f"{k} ({h['kind']}) = {h['value']}" for k, h in m["headers"].items()))
            rows.append(row)
        out.table(columns, rows)

    ctx.emit(polled, human)


# --------------------------------------------------------------------------- the parser


Command = Callable[[Context, argparse.Namespace], None]


def _sub(
    parent: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    help_text: str,
    func: Command | None = None,
    aliases: Sequence[str] = (),
    login: bool = True,
    list_mode: bool = False,
    json_flag: argparse.ArgumentParser | None = None,
) -> argparse.ArgumentParser:
    p = parent.add_parser(
        name,
        help=help_text,
        description=help_text,
        aliases=list(aliases),
        parents=[json_flag] if json_flag is not None else [],
    )
    if func is not None:
        p.set_defaults(func=func, needs_login=login)
    if list_mode:
        p.add_argument(
            "-l", "--list-mode", choices=("table", "list"), default="table", help="list mode (table or list)"
        )
    return p


def _group(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, help_text: str, aliases: Sequence[str] = ()
) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    p = sub.add_parser(name, help=help_text, description=help_text, aliases=list(aliases))
    actions = p.add_subparsers(title="actions", dest="action", metavar="ACTION")
    actions.required = True
    return actions


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="iggy",
        description="Administer an Iggy server over TCP (Apache Iggy CLI style).",
        epilog="Run 'iggy COMMAND --help' for the actions of a command. Output is a table by default; "
        "--json prints JSON. Tables use rich when installed (IGGY_CLI_TABLES=plain for plain text).",
    )
    parser.add_argument("--version", action="version", version=f"iggy {__version__}")
    conn = parser.add_argument_group("connection")
    conn.add_argument("--transport", default="tcp", help="the transport; only tcp is supported [default: tcp]")
    conn.add_argument(
        "--tcp-server-address",
        default=DEFAULT_TCP_ADDRESS,
        metavar="HOST:PORT",
        help=f"server address for the TCP transport [default: {DEFAULT_TCP_ADDRESS}]",
    )
    conn.add_argument(
        "--tcp-tls-enabled",
        nargs="?",
        const="true",
        default="false",
        metavar="BOOL",
        help="use TLS for the TCP transport",
    )
    conn.add_argument("--tcp-tls-domain", metavar="DOMAIN", help="TLS server name [default: the host]")
    conn.add_argument("--tcp-tls-ca-file", metavar="PATH", help="CA certificate to verify the server with")
    creds = parser.add_argument_group("credentials")
    creds.add_argument("-u", "--username", help="Iggy server username (or IGGY_USERNAME)")
    creds.add_argument("-p", "--password", help="Iggy server password (prompted for when omitted; or IGGY_PASSWORD)")
    creds.add_argument("-t", "--token", help="Iggy server personal access token")
    parser.add_argument("-q", "--quiet", action="store_true", help="quiet mode (no stdout printing)")
    parser.add_argument("--json", action="store_true", help="print results as JSON")

    json_flag = argparse.ArgumentParser(add_help=False)
    json_flag.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print results as JSON")

    sub = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND")

    def group(name: str, help_text: str, aliases: Sequence[str] = ()) -> Callable[..., argparse.ArgumentParser]:
        actions = _group(sub, name, help_text, aliases)

        def action(
            aname: str, ahelp: str, func: Command, aaliases: Sequence[str] = (), **kw: Any
        ) -> argparse.ArgumentParser:
            return _sub(actions, aname, ahelp, func, aaliases, json_flag=json_flag, **kw)

        return action

    # streams
    a = group("stream", "stream operations", ["s"])
    p = a("create", "create a stream with the given name", cmd_stream_create, ["c"])
    p.add_argument("name", help="name of the stream")
    p = a("delete", "delete a stream (ID or name)", cmd_stream_delete, ["d"])
    p.add_argument("stream_id", help="stream ID or name")
    p = a("update", "rename a stream", cmd_stream_update, ["u"])
    p.add_argument("stream_id", help="stream ID or name")
    p.add_argument("name", help="new name of the stream")
    p = a("get", "show one stream", cmd_stream_get, ["g"])
    p.add_argument("stream_id", help="stream ID or name")
    a("list", "list all streams", cmd_stream_list, ["l"], list_mode=True)
    p = a("purge", "remove all messages of a stream", cmd_stream_purge, ["p"])
    p.add_argument("stream_id", help="stream ID or name")

    # topics
    a = group("topic", "topic operations", ["t"])
    p = a("create", "create a topic: STREAM NAME PARTITIONS [COMPRESSION] [EXPIRY...]", cmd_topic_create, ["c"])
    p.add_argument("stream_id", help="stream ID or name")
    p.add_argument("name", help="name of the topic")
    p.add_argument("partitions_count", type=int, help="number of partitions")
    p.add_argument("compression_algorithm", nargs="?", default=None, help="none (default) or gzip")
    p.add_argument(
        "message_expiry", nargs="*", help='message expiry like "1day 2h", "unlimited" or "server_default" (the default)'
    )
    p.add_argument("-m", "--max-topic-size", help='max topic size like "15GB", "unlimited" or "server_default"')
    p.add_argument(
        "--set",
        action="append",
        type=parse_key_value,
        metavar="KEY=VALUE",
        help="additional topic option, repeatable (see 'iggy options topic')",
    )
    p = a("delete", "delete a topic", cmd_topic_delete, ["d"])
    p.add_argument("stream_id")
    p.add_argument("topic_id")
    p = a("update", "update a topic: STREAM TOPIC NAME [COMPRESSION] [EXPIRY...]", cmd_topic_update, ["u"])
    p.add_argument("stream_id")
    p.add_argument("topic_id")
    p.add_argument("name", help="new (or the same) name of the topic")
    p.add_argument("compression_algorithm", nargs="?", default=None, help="none or gzip (unchanged if omitted)")
    p.add_argument("message_expiry", nargs="*", help="new message expiry (unchanged if omitted)")
    p.add_argument("-m", "--max-topic-size", help="new max topic size (unchanged if omitted)")
    p = a("get", "show one topic and its partitions", cmd_topic_get, ["g"])
    p.add_argument("stream_id")
    p.add_argument("topic_id")
    p = a("list", "list the topics of a stream", cmd_topic_list, ["l"], list_mode=True)
    p.add_argument("stream_id")
    p = a("purge", "remove all messages of a topic", cmd_topic_purge, ["p"])
    p.add_argument("stream_id")
    p.add_argument("topic_id")

    # partitions
    a = group("partition", "partition operations", ["p"])
    for name, func, aliases, verb in (
        ("create", cmd_partition_create, ["c"], "add"),
        ("delete", cmd_partition_delete, ["d"], "remove"),
    ):
        p = a(name, f"{verb} partitions of a topic", func, aliases)
        p.add_argument("stream_id")
        p.add_argument("topic_id")
        p.add_argument("partitions_count", type=int, help=f"number of partitions to {verb}")

    # segments
    a = group("segment", "segment operations", ["seg"])
    p = a("delete", "delete the oldest segments of a partition", cmd_segment_delete, ["d"])
    p.add_argument("stream_id")
    p.add_argument("topic_id")
    p.add_argument("partition_id", type=int)
    p.add_argument("segments_count", type=int)

    # system
    p = _sub(
        sub,
        "ping",
        "check that the server is up and measure the round trip",
        cmd_ping,
        login=False,
        json_flag=json_flag,
    )
    p.add_argument("-c", "--count", type=int, default=1, help="number of pings [default: 1]")
    _sub(sub, "me", "show this client's session", cmd_me, json_flag=json_flag)
    p = _sub(sub, "stats", "show server statistics", cmd_stats, json_flag=json_flag)
    p.add_argument(
        "-o", "--output", choices=("table", "list", "json"), default="table", help="output mode [default: table]"
    )
    p = _sub(sub, "options", "list the options a resource's create command accepts", cmd_options, json_flag=json_flag)
    p.add_argument("scope", choices=("topic", "stream", "user"))

    # personal access tokens
    a = group("pat", "personal access token operations")
    p = a("create", "create a personal access token (printed once)", cmd_pat_create, ["c"])
    p.add_argument("name")
    p.add_argument("expiry", nargs="*", help='expiry like "1day 2h"; "none" or nothing = never expires')
    p = a("delete", "delete a personal access token", cmd_pat_delete, ["d"])
    p.add_argument("name")
    a("list", "list your personal access tokens", cmd_pat_list, ["l"], list_mode=True)

    # users
    a = group("user", "user operations", ["u"])

    def permission_options(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "-g",
            "--global-permissions",
            type=parse_global_permissions,
            metavar="PERMS",
            help="comma-separated global permissions, e.g. m_srv,r_srv,p_msg,s_msg",
        )
        p.add_argument(
            "-s",
            "--stream-permissions",
            type=parse_stream_permissions,
            action="append",
            metavar="STREAM[:PERMS][#TOPIC[:PERMS]]",
            help="stream (and topic) permissions, repeatable",
        )

    p = a("create", "create a user", cmd_user_create, ["c"])
    p.add_argument("new_username", metavar="username", help="3..50 characters")
    p.add_argument("new_password", metavar="password", help="3..100 characters")
    p.add_argument("-u", "--user-status", choices=("active", "inactive"), default="active")
    permission_options(p)
    p = a("delete", "delete a user", cmd_user_delete, ["d"])
    p.add_argument("user_id", help="user ID or username")
    p = a("get", "show one user and its permissions", cmd_user_get, ["g"])
    p.add_argument("user_id", help="user ID or username")
    a("list", "list all users", cmd_user_list, ["l"], list_mode=True)
    p = a("name", "change a user's username", cmd_user_name, ["n"])
    p.add_argument("user_id")
    p.add_argument("new_username", metavar="username")
    p = a("status", "change a user's status", cmd_user_status, ["s"])
    p.add_argument("user_id")
    p.add_argument("status", choices=("active", "inactive"))
    p = a("password", "change a user's password (prompted for when omitted)", cmd_user_password, ["pwd"])
    p.add_argument("user_id")
    p.add_argument("current_password", nargs="?")
    p.add_argument("new_password", nargs="?")
    p = a("permissions", "set a user's permissions (none given: remove them)", cmd_user_permissions, ["p"])
    p.add_argument("user_id")
    permission_options(p)

    # clients
    a = group("client", "client (connection) operations", ["c"])
    p = a("get", "show one connected client", cmd_client_get, ["g"])
    p.add_argument("client_id", type=int)
    a("list", "list connected clients", cmd_client_list, ["l"], list_mode=True)

    # consumer groups
    a = group("consumer-group", "consumer group operations", ["g"])
    p = a("create", "create a consumer group", cmd_group_create, ["c"])
    p.add_argument("stream_id")
    p.add_argument("topic_id")
    p.add_argument("name")
    for name, func, aliases, text in (
        ("delete", cmd_group_delete, ["d"], "delete a consumer group"),
        ("get", cmd_group_get, ["g"], "show a consumer group and its members"),
    ):
        p = a(name, text, func, aliases)
        p.add_argument("stream_id")
        p.add_argument("topic_id")
        p.add_argument("group_id", help="consumer group ID or name")
    p = a("list", "list the consumer groups of a topic", cmd_group_list, ["l"], list_mode=True)
    p.add_argument("stream_id")
    p.add_argument("topic_id")

    # consumer offsets
    a = group("consumer-offset", "consumer offset operations", ["o"])
    for name, func, aliases, text in (
        ("get", cmd_offset_get, ["g"], "show a stored consumer offset"),
        ("set", cmd_offset_set, ["s"], "store a consumer offset"),
    ):
        p = a(name, text, func, aliases)
        p.add_argument("consumer_id", help="consumer ID or name")
        p.add_argument("stream_id")
        p.add_argument("topic_id")
        p.add_argument("partition_id", type=int)
        if name == "set":
            p.add_argument("offset", type=int)
        p.add_argument("-k", "--kind", choices=("consumer", "consumer-group"), default="consumer")

    # messages
    a = group("message", "message operations", ["m"])
    p = a("send", "send messages (arguments, or one per line on stdin)", cmd_message_send, ["s"])
    p.add_argument("stream_id")
    p.add_argument("topic_id")
    p.add_argument("messages", nargs="*", help="message payloads")
    part = p.add_mutually_exclusive_group()
    part.add_argument("-p", "--partition-id", type=int, help="partition to send to [default: balanced]")
    part.add_argument("-m", "--message-key", help="messages key: the partition is chosen by its hash")
    p.add_argument(
        "-H",
        "--headers",
        type=parse_header,
        action="append",
        metavar="KEY:KIND:VALUE",
        help=f"user header, repeatable; kinds: {', '.join(HEADER_KINDS)}",
    )
    p = a("poll", "poll messages from a partition", cmd_message_poll, ["p"])
    p.add_argument("stream_id")
    p.add_argument("topic_id")
    p.add_argument("partition_id", type=int)
    p.add_argument("-m", "--message-count", type=int, default=1, help="number of messages [default: 1]")
    p.add_argument("-a", "--auto-commit", action="store_true", help="store the consumer offset after polling")
    strat = p.add_mutually_exclusive_group(required=True)
    strat.add_argument("-o", "--offset", type=int, help="start at this offset")
    strat.add_argument("-f", "--first", action="store_true", help="start at the first message")
    strat.add_argument("-l", "--last", action="store_true", help="the last messages")
    strat.add_argument("-n", "--next", action="store_true", help="after the consumer's stored offset")
    p.add_argument("-c", "--consumer", default="0", help="consumer ID or name [default: 0]")
    p.add_argument("-s", "--show-headers", action="store_true", help="include user headers in the output")
    return parser


def _expand_header_lists(argv: Sequence[str]) -> list[str]:
    """`-H a:string:x,b:uint8:1` -> one -H per header (upstream splits on commas)."""
    out_args: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-H", "--headers") and i + 1 < len(argv):
            for part in argv[i + 1].split(","):
                out_args += [arg, part]
            i += 2
            continue
        out_args.append(arg)
        i += 1
    return out_args


# positional lists that may continue after options (`message send S T -p 1 a b`), in the
# order the words go: argparse stops a `nargs="*"` positional at the first option
_TRAILING = ("messages", "compression_algorithm", "message_expiry", "expiry")


def _take_trailing(parser: argparse.ArgumentParser, args: argparse.Namespace, extras: Sequence[str]) -> None:
    unknown = [e for e in extras if e.startswith("-") and e != "-"]
    trailing = [name for name in _TRAILING if hasattr(args, name)]
    if unknown or not trailing:
        parser.error(f"unrecognized arguments: {' '.join(extras)}")
    words = list(extras)
    if "compression_algorithm" in trailing and args.compression_algorithm is None:
        args.compression_algorithm = words.pop(0)
    target = next(name for name in trailing if name != "compression_algorithm")
    setattr(args, target, list(getattr(args, target) or []) + words)


def _login(ctx: Context, args: argparse.Namespace) -> None:
    client = ctx.client
    if args.token:
        try:
            client.login_with_token(args.token)
        except CommandError as exc:
            raise CommandError(exc.code, f"Problem with server login with token: {exc.reason}") from None
        return
    username, password = args.username, args.password
    if username is None and os.environ.get(ENV_USERNAME) is not None and os.environ.get(ENV_PASSWORD) is not None:
        username, password = os.environ[ENV_USERNAME], os.environ[ENV_PASSWORD]
    if username is None:
        raise CommandError(
            ErrorCode.UNAUTHENTICATED,
            "Missing iggy server credentials: use --username and --password, --token, "
            f"or set {ENV_USERNAME} and {ENV_PASSWORD}",
        )
    if password is None:
        password = _read_secret("Password: ")
    try:
        client.login(username, password)
    except CommandError as exc:
        raise CommandError(exc.code, f"Problem with server login for username: {username}: {exc.reason}") from None


def _report(args_json: bool, code: int, reason: str, error_id: str = "error") -> None:
    if args_json:
        out.emit_json({"error": {"code": code, "id": error_id, "reason": reason}}, sys.stderr)
    else:
        print(f"Error: {reason}" + (f" (code {code})" if code > 1 else ""), file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    argv = _expand_header_lists(list(sys.argv[1:] if argv is None else argv))
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras:
        _take_trailing(parser, args, extras)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 0 if args.command is None else 2
    if args.transport.lower() != "tcp":
        parser.error(f"transport {args.transport!r} is not supported by this CLI; use tcp")
    tls = str(args.tcp_tls_enabled).lower() in ("1", "true", "yes", "on")
    try:
        client = AdminClient(
            args.tcp_server_address, tls=tls, tls_domain=args.tcp_tls_domain, tls_ca_file=args.tcp_tls_ca_file
        )
    except ValueError as exc:
        parser.error(str(exc))
    except CommandError as exc:
        _report(_json_output(args), exc.code, exc.reason, exc.id)
        return 1
    ctx = Context(args, client)
    try:
        if args.needs_login:
            _login(ctx, args)
        args.func(ctx, args)
        return 0
    except UsageError as exc:
        _report(ctx.json, ErrorCode.INVALID_COMMAND, str(exc), "invalid_command")
        return 2
    except CommandError as exc:
        _report(ctx.json, exc.code, exc.reason, exc.id)
        return 1
    except BrokenPipeError:
        return 0
    except (OSError, ValueError) as exc:
        _report(ctx.json, ErrorCode.ERROR, str(exc))
        return 1
    finally:
        ctx.client.close()


if __name__ == "__main__":
    sys.exit(main())
