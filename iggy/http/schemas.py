"""Request bodies of the REST API as msgspec structs (HTTP.md 3, 6, 7).

Litestar decodes and type-checks bodies into these before a handler runs, and publishes them
in the OpenAPI document. A body that is not JSON answers 400, one that does not fit these
types 422 (see errors.py), as serde does in the reference server. Unknown keys are ignored
except at the top level of a send-messages body, which the reference server refuses.
Numeric bounds are the wire types' (u32, u64) so nothing reaches the control plane that the
binary protocol could not carry either.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from iggy.control import permissions as perm

U64_MAX = 0xFFFFFFFFFFFFFFFF
U32 = Annotated[int, msgspec.Meta(ge=0, le=0xFFFFFFFF)]
# msgspec can't express bounds beyond int64, so the upper bound of u64 fields is checked in
# __post_init__ (a ValueError there is a validation error: 422, like any other shape error)
U64 = Annotated[int, msgspec.Meta(ge=0)]


def check_u64(*values: object) -> None:
    for value in values:
        if isinstance(value, int) and value > U64_MAX:
            raise ValueError("number too large to fit in target type u64")


# an id or name in a body (consumer ids): a number, or a string (digits count as a number)
IdOrName = U32 | Annotated[str, msgspec.Meta(min_length=1, max_length=255)]


class Login(msgspec.Struct):
    username: str
    password: str
    version: str | None = None
    context: str | None = None


class Token(msgspec.Struct):
    token: str


class CreateToken(msgspec.Struct):
    name: str
    expiry: U64 = 0

    def __post_init__(self) -> None:
        check_u64(self.expiry)


class GlobalPermissions(msgspec.Struct):
    manage_servers: bool
    read_servers: bool
    manage_users: bool
    read_users: bool
    manage_streams: bool
    read_streams: bool
    manage_topics: bool
    read_topics: bool
    poll_messages: bool
    send_messages: bool


class TopicPermissions(msgspec.Struct):
    manage_topic: bool
    read_topic: bool
    poll_messages: bool
    send_messages: bool


class StreamPermissions(msgspec.Struct):
    manage_stream: bool
    read_stream: bool
    manage_topics: bool
    read_topics: bool
    poll_messages: bool
    send_messages: bool
    topics: dict[U32, TopicPermissions] | None = None


class Permissions(msgspec.Struct):
    global_: GlobalPermissions = msgspec.field(name="global")
    streams: dict[U32, StreamPermissions] | None = None


class CreateUser(msgspec.Struct):
    username: str
    password: str
    status: Literal["active", "inactive"]
    permissions: Permissions | None = None


class UpdateUser(msgspec.Struct):
    username: str | None = None
    status: Literal["active", "inactive"] | None = None
    options: dict[str, str] | None = None


class UpdatePermissions(msgspec.Struct):
    permissions: Permissions | None = None


class ChangePassword(msgspec.Struct):
    current_password: str
    new_password: str


class CreateStream(msgspec.Struct):
    name: str


class UpdateStream(msgspec.Struct):
    name: str
    options: dict[str, str] | None = None


Compression = Literal["none", "gzip", "None", "Gzip"]


class CreateTopic(msgspec.Struct):
    name: str
    partitions_count: U32
    compression_algorithm: Compression
    message_expiry: U64
    max_topic_size: U64
    options: dict[str, str] | None = None
    replication_factor: int | None = None  # legacy field, ignored

    def __post_init__(self) -> None:
        check_u64(self.message_expiry, self.max_topic_size)


class UpdateTopic(msgspec.Struct):
    name: str
    compression_algorithm: Compression | None = None
    message_expiry: U64 | None = None
    max_topic_size: U64 | None = None
    options: dict[str, str] | None = None

    def __post_init__(self) -> None:
        check_u64(self.message_expiry, self.max_topic_size)


class PartitionsCount(msgspec.Struct):
    partitions_count: U32


class CreateGroup(msgspec.Struct):
    name: str


class StoreOffset(msgspec.Struct):
    consumer_id: IdOrName
    offset: U64
    partition_id: U32 | None = None

    def __post_init__(self) -> None:
        check_u64(self.offset)


class HeaderField(msgspec.Struct):
    kind: Literal[
        "raw",
        "string",
        "bool",
        "int8",
        "int16",
        "int32",
        "int64",
        "int128",
        "uint8",
        "uint16",
        "uint32",
        "uint64",
        "uint128",
        "float32",
        "float64",
    ]
    value: str  # base64


class HeaderEntry(msgspec.Struct):
    key: HeaderField
    value: HeaderField


class Partitioning(msgspec.Struct):
    kind: Literal["balanced", "partition_id", "messages_key"]
    value: str = ""  # base64


class SendMessage(msgspec.Struct):
    payload: str  # base64, 1 .. 64,000,000 bytes once decoded
    id: U64 | str | None = None  # a number up to u64, or a decimal / UUID string
    user_headers: list[HeaderEntry] | str | None = None

    def __post_init__(self) -> None:
        check_u64(self.id)


class SendMessages(msgspec.Struct, forbid_unknown_fields=True):
    partitioning: Partitioning
    messages: list[SendMessage]


class Snapshot(msgspec.Struct):
    compression: Literal["Stored", "Deflated", "Bzip2", "Zstd", "Lzma", "Xz"] = "Deflated"
    snapshot_types: list[
        Literal["FilesystemOverview", "ProcessList", "ResourceUsage", "Test", "ServerLogs", "ServerConfig", "All"]
    ] = msgspec.field(default_factory=lambda: ["All"])


def stored_permissions(p: Permissions | None) -> dict[str, Any] | None:
    """Permissions of a request body in the stored form of `iggy.control.permissions`."""

    if p is None:
        return None
    streams = {}
    for sid, sp in (p.streams or {}).items():
        topics = {tid: [getattr(tp, f) for f in perm.TOPIC_FLAGS] for tid, tp in (sp.topics or {}).items()}
        streams[sid] = {"flags": [getattr(sp, f) for f in perm.STREAM_FLAGS], "topics": topics}
    return {"global": [getattr(p.global_, f) for f in perm.GLOBAL_FLAGS], "streams": streams}
