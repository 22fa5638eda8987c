"""The one control-plane call of a uring shard thread: `ControlPlane.handle_on_shard`.

A shard thread has no event loop, so the commands it runs in Python (SHARD_THREAD_COMMANDS:
ping, send, poll, store offset) must answer at once: its session appends with
`inline_fsync`, so even a send to a persisted topic is fsynced before the reply instead of
being acknowledged by an awaited group commit. The plane is used in process (no server), as
a shard uses it.
"""

from __future__ import annotations

import struct

import pytest

from iggy.engine.uring.engine import SHARD_THREAD_COMMANDS
from iggy.protocol import codes
from iggy.protocol.batch import build_batch
from iggy.protocol.wire import build_request, parse_header, parse_reply_header
from tests.conftest import ROOT_USER, InProcessPlane
from tests.rawclient import ident, poll_body, store_offset_body, wire_name

U32 = struct.Struct("<I")


@pytest.fixture
def inproc(tmp_path):
    p = InProcessPlane(str(tmp_path))
    yield p
    p.close()


def _persisted_topic(p: InProcessPlane) -> tuple[int, int]:
    """A stream and a topic of one partition that acknowledges a send after its fsync."""
    created = p.handle(p.root, 128, 0, wire_name("shard-s"))
    stream = U32.unpack_from(created, 256 + 4)[0]
    # the request's options block: TLV entries to the end of the body (no length prefix)
    options = b"".join(bytes([2]) + U32.pack(len(v)) + v for v in (b"durability", b"persisted"))
    created = p.handle(p.root, 132, 0, ident(stream) + U32.pack(1) + wire_name("shard-t") + options)
    assert parse_reply_header(created)[3] == 0
    return stream, U32.unpack_from(created, 256 + 4)[0]


def _send_body(stream: int, topic: int) -> bytes:
    meta = ident(stream) + ident(topic) + b"\x02\x04" + U32.pack(0) + U32.pack(1)  # partition 0, one message
    return U32.pack(len(meta)) + meta + build_batch([(1, b"on a shard", b"")])


def test_every_shard_thread_command_answers_at_once(inproc):
    stream, topic = _persisted_topic(inproc)
    # a shard's session (iggy.engine.uring.engine.ShardHandler): logged in, inline_fsync
    session = inproc.plane.new_session("shard-client", 1)
    session.inline_fsync = True
    inproc.plane.bind_login(session, inproc.meta.state.user_by_name(ROOT_USER), 3)
    requests = {
        codes.PING: (2, b""),
        codes.SEND_MESSAGES: (160, _send_body(stream, topic)),
        codes.POLL_MESSAGES: (2, poll_body(stream, topic, 0, count=1)),
        codes.STORE_CONSUMER_OFFSET: (161, store_offset_body(stream, topic, 0, 0)),
    }
    assert set(requests) == SHARD_THREAD_COMMANDS
    replies = {}
    for code, (op, body) in requests.items():
        frame = build_request(op, code if op == 2 else 0, body, session=session.session, request=code, client=5)
        reply = inproc.plane.handle_on_shard(session, parse_header(frame[:256]), body)
        assert isinstance(reply, (bytes, list)), code
        replies[code] = b"".join(reply) if isinstance(reply, list) else reply
        assert parse_reply_header(replies[code])[3] == 0, code
    assert replies[codes.SEND_MESSAGES][256:] == struct.pack("<IIIIQ", 1, stream, topic, 0, 0)
    assert U32.unpack_from(replies[codes.POLL_MESSAGES], 256 + 12)[0] == 1  # the message sent above
