"""Poll routing of the 0.9.0 SDK in cluster mode (TCP.md 12.6, 9.16): commands 103, 123, 14, 104.

With a roster of two or more nodes the SDK sends an auto-commit poll in three steps:

1. GET_POLL_ROUTING (103, body = the poll) or GET_CONSUMER_OFFSET_ROUTING (123, body = the
   offset request's prefix) on its main connection. Answer, PollRouting::

       u128 client_id        the main connection's client id (header `client` at login)
       u64  session          its session number
       u64  metadata_watermark
       node entry            as in ClusterMetadata: u32 len + name, u32 len + ip,
                             u16 tcp, u16 quic, u16 http, u16 websocket, u8 role, u8 status

   naming the partition's primary. Every partition's primary is the leader (one leader for
   everything until leadership is spread, docs/CLUSTER.md), so the answer is this node: a
   follower never gets this far, it answers 58 first.
2. A second connection to that node: login, then ATTACH_CONSUMER_SESSION (14) with the first 32
   bytes of the answer. The new connection is bound to the main connection's session (same user
   required), so what it does next counts as that consumer's (group membership included).
3. POLL_MESSAGES_ON_PRIMARY (104) with the poll body on the second connection: the poll runs as
   the main session. Offset writes go as plain 121/122 on it.

On a single node every one of them is FeatureUnavailable, as the reference server answers,
to any logged-in user and whatever the body: they read their bodies themselves, after that
check. The poll of 104 is the PollMessages command run for the main session through
`registry.invoke`, so its permission is checked as for any poll.
"""

from __future__ import annotations

import weakref
from typing import Any

from iggy.control import messages
from iggy.control import permissions as perm
from iggy.control.registry import COMMANDS, command, invoke
from iggy.control.system import NODE_ROLES, NODE_STATUSES
from iggy.protocol import codes
from iggy.protocol.errors import ErrorCode, IggyError
from iggy.protocol.wire import Reader, Writer

# attached second connection -> the main connection's session (gone with either)
_ATTACHED: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
ATTACH_BODY = 32


def _require_cluster(plane: Any) -> Any:
    if plane.cluster is None:
        raise IggyError(ErrorCode.FEATURE_UNAVAILABLE)
    return plane.cluster


def _routing_answer(plane: Any, session: Any) -> bytes:
    cluster = _require_cluster(plane)
    me = next(n for n in cluster.metadata()["nodes"] if n["name"] == cluster.node_name)
    w = Writer()
    w.u128(session.client_uuid).u64(session.session).u64(0)
    w.str32(me["name"]).str32(me["ip"])
    w.u16(me["tcp_port"]).u16(me["quic_port"]).u16(me["http_port"]).u16(me["websocket_port"])
    w.u8(NODE_ROLES[me["role"]]).u8(NODE_STATUSES[me["status"]])
    return w.getvalue()


def raw_body(r: Reader) -> tuple[bytes]:
    """The whole body, read by the handler after the cluster check."""
    return (r.take(r.remaining()),)


@command(codes.GET_POLL_ROUTING, needs=perm.LOGGED_IN)
def get_poll_routing(plane: Any, session: Any) -> bytes:
    return _routing_answer(plane, session)


@command(codes.GET_CONSUMER_OFFSET_ROUTING, needs=perm.LOGGED_IN)
def get_consumer_offset_routing(plane: Any, session: Any) -> bytes:
    return _routing_answer(plane, session)


@command(codes.ATTACH_CONSUMER_SESSION, needs=perm.LOGGED_IN, decode=raw_body)
def attach_consumer_session(plane: Any, session: Any, body: bytes) -> None:
    _require_cluster(plane)
    r = Reader(body)
    if r.remaining() != ATTACH_BODY:
        raise IggyError(ErrorCode.INVALID_COMMAND)
    client_uuid, number = r.u128(), r.u64()
    r.u64()  # metadata watermark: one leader serves every partition, nothing to wait for
    main = next(
        (s for s in plane.sessions.values() if s.client_uuid == client_uuid and s.session == number and s.session), None
    )
    if main is None or main.user_id != session.user_id or main.user_generation != session.user_generation:
        # no such session (gone, or never on this node), or another user's
        raise IggyError(ErrorCode.STALE_CLIENT)
    _ATTACHED[session] = main


@command(codes.POLL_MESSAGES_ON_PRIMARY, needs=perm.LOGGED_IN, decode=raw_body, encode=messages.encode_polled)
def poll_messages_on_primary(plane: Any, session: Any, body: bytes) -> Any:
    _require_cluster(plane)
    poll = COMMANDS[codes.POLL_MESSAGES]
    return invoke(plane, _ATTACHED.get(session, session), poll, poll.decode(Reader(body)))
