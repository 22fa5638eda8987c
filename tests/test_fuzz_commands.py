"""In-process fuzz of every command handler: mutated and random request bodies through
`ControlPlane.handle`, as root and as a user without permissions.

The plane runs on a scratch data directory with the small world of tests/reliability/commands.py.
Each example takes the valid body of a random command and mutates it (byte flips, cuts,
insertions, random identifiers, random lengths) or replaces it with random bytes. Every
request must come back as a well-formed reply frame (or an Eviction for logins): a handler
that raises anything but IggyError is logged by the plane as "command ... failed" and
answered with the generic error 1, which this test counts as a failure.
"""

from __future__ import annotations

import logging
import os
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iggy.protocol import codes
from iggy.protocol.wire import parse_reply_header
from tests.conftest import InProcessPlane
from tests.rawclient import ident, wire_name
from tests.reliability import commands as C

EXAMPLES = int(os.environ.get("IGGY_FUZZ_EXAMPLES", "400"))
U32 = struct.Struct("<I")


class Harness(InProcessPlane):
    def __init__(self, path: str):
        super().__init__(path, IGGY_MESSAGE_BUS_MAX_MESSAGE_SIZE="1 MiB")
        self.errors: list[str] = []
        handler = logging.Handler(logging.ERROR)
        handler.emit = lambda record: self.errors.append(
            record.getMessage()
            + "\n"
            + (logging.Formatter().formatException(record.exc_info) if record.exc_info else "")
        )
        logging.getLogger("iggy").addHandler(handler)
        self.handler = handler
        self.world = self.build_world()
        nobody = self.plane.meta.state.user_by_name(C.ACTOR)
        self.nobody = self.plane.open_session("fuzz-nobody", 1)
        self.plane.bind_login(self.nobody, nobody, 2)

    def call(self, session, op: int, code: int, body: bytes):
        reply = self.handle(session, op, code, body)
        size, command, operation, status, _ = parse_reply_header(reply)
        assert size == len(reply) and command in (8, 13)
        return command, status, reply[256:]

    def ok(self, op, code, body) -> bytes:
        command, status, out = self.call(self.root, op, code, body)
        assert command == 8 and status == 0 and out[:4] == b"\0\0\0\0", (op, code, status, out[:16])
        return out

    def build_world(self) -> C.World:
        w = C.World()
        w.stream = U32.unpack_from(self.ok(128, 0, wire_name("pm-s")), 4)[0]
        w.topic = U32.unpack_from(self.ok(132, 0, ident(w.stream) + U32.pack(2) + wire_name("pm-t")), 4)[0]
        self.call(self.root, 160, 0, C.BY_NAME["send_messages"].body(w))
        w.group = U32.unpack_from(self.ok(139, 0, ident(w.stream) + ident(w.topic) + wire_name("pm-g")), 4)[0]
        w.victim = U32.unpack_from(
            self.ok(141, 0, wire_name(C.VICTIM) + b"\x0b" + C.VICTIM_PASSWORD.encode() + b"\x01\x00"), 4
        )[0]
        w.actor = U32.unpack_from(
            self.ok(141, 0, wire_name(C.ACTOR) + b"\x0a" + C.ACTOR_PASSWORD.encode() + b"\x01\x00"), 4
        )[0]
        return w

    def close(self):
        logging.getLogger("iggy").removeHandler(self.handler)
        super().close()


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    h = Harness(str(tmp_path_factory.mktemp("fuzz-commands")))
    yield h
    h.close()


def mutate(body: bytes, data) -> bytes:
    kind = data.draw(st.sampled_from(["flip", "cut", "insert", "u32", "ident", "random", "same"]))
    b = bytearray(body)
    if kind == "flip" and b:
        for _ in range(data.draw(st.integers(1, 4))):
            at = data.draw(st.integers(0, len(b) - 1))
            b[at] ^= data.draw(st.integers(1, 255))
    elif kind == "cut" and b:
        at = data.draw(st.integers(0, len(b) - 1))
        b = b[:at] if data.draw(st.booleans()) else b[at:]
    elif kind == "insert":
        at = data.draw(st.integers(0, len(b)))
        b[at:at] = data.draw(st.binary(min_size=1, max_size=16))
    elif kind == "u32" and len(b) >= 4:
        at = data.draw(st.integers(0, len(b) - 4))
        U32.pack_into(b, at, data.draw(st.sampled_from([0, 1, 2, 255, 256, 999, 1000, 1001, 2**31, 2**32 - 1])))
    elif kind == "ident":
        value = data.draw(st.one_of(st.integers(0, 2**32 - 1), st.text(min_size=1, max_size=20)))
        raw = (
            ident(value)
            if isinstance(value, int)
            else b"\x02" + bytes([len(value.encode()[:255])]) + value.encode()[:255]
        )
        b = bytearray(raw) + b[6:]
    elif kind == "random":
        b = bytearray(data.draw(st.binary(max_size=300)))
    return bytes(b)


FUZZED = [c for c in C.COMMANDS if c.name not in ("create_partitions", "create_topic")] + [
    # creation counts are bounded (1000 partitions per request): fuzz those with small counts only
    C.Command(
        "create_partitions_small",
        136,
        codes.CREATE_PARTITIONS,
        lambda w: ident(w.stream) + ident(w.topic) + U32.pack(1),
        "manage_topic",
    ),
    C.Command(
        "login",
        codes.OP_REGISTER,
        codes.LOGIN_REGISTER,
        lambda w: (
            b"\x00\x2c\x00\x00\x08rust-sdk\x060.11.0"
            + wire_name(C.ACTOR)
            + b"\x0a"
            + C.ACTOR_PASSWORD.encode()
            + b"\0\0\0\0"
        ),
        "public",
    ),
]


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(st.sampled_from(FUZZED), st.booleans(), st.data())
def test_mutated_requests_never_break_a_handler(harness, cmd, as_root, data):
    body = mutate(cmd.body(harness.world), data)
    if cmd.name == "create_partitions_small" and len(body) >= 4 and U32.unpack_from(body, len(body) - 4)[0] > 8:
        return
    session = harness.root if as_root else harness.nobody
    if cmd.op == codes.OP_REGISTER:
        session = harness.plane.open_session("fuzz-login", 1)
    before = len(harness.errors)
    command, status, out = harness.call(session, cmd.op, cmd.code, body)
    if cmd.op == codes.OP_REGISTER:
        harness.plane.close_session(session)
    assert len(harness.errors) == before, harness.errors[-1]
    assert status != 1, f"{cmd.name}: generic error for {body!r}"
    if command == 8 and status == 0 and cmd.op in codes.RESULT_FRAMED_OPS:
        assert out[:4] in (b"\0\0\0\0", b"\x01\0\0\0")
        if out[:4] == b"\x01\0\0\0":
            assert U32.unpack_from(out, 8)[0] != 1, f"{cmd.name}: generic error for {body!r}"
    succeeded = command == 8 and status == 0 and (cmd.op not in codes.RESULT_FRAMED_OPS or out[:4] == b"\0\0\0\0")
    if not as_root and cmd.rule not in ("public", "auth", "unavailable") and succeeded:
        # the user without permissions got a success: only a read of something missing may do that
        # (empty, or for GetTopics of a missing stream an empty list, as upstream answers)
        nothing = b"\0\0\0\0" if cmd.name == "get_topics" else b""
        assert cmd.op == 2 and out == nothing, f"{cmd.name} succeeded for a user without permissions: {body!r}"
