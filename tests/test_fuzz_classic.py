"""In-process fuzz of the classic protocol's commands (`iggy.protocol.classic.handle`).

The control plane of tests/test_fuzz_commands.py (its small world: stream, topic with messages,
group, users) gets mutated and random classic bodies for every classic command that changes
nothing outside that world (no deletes; topic creation, whose partition count a mutation
can make large, is left to test_classic.py), as root and as a user without permissions, as a
group member and not. Every request must come back as a well-formed classic reply
(`[u32 status][u32 length][payload]`); a handler that raises anything but IggyError is
logged and answered with the generic error 1, which counts as a failure here.
"""

from __future__ import annotations

import inspect
import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iggy.protocol import classic
from tests import classicclient as cc
from tests.reliability import commands as C
from tests.test_fuzz_commands import Harness, mutate

EXAMPLES = int(os.environ.get("IGGY_FUZZ_EXAMPLES", "400"))


@dataclass(frozen=True)
class Command:
    name: str
    code: int
    body: Callable[[C.World], bytes]


def _group(w: C.World) -> bytes:
    return cc.consumer(cc.GROUP, w.group)


def _messages() -> list[bytes]:
    return [cc.message(b"fuzz", id_=5, origin=time.time_ns() // 1000), cc.message(b"z" * 40)]


COMMANDS = [
    Command("ping", cc.PING, lambda w: b""),
    Command("get_me", cc.GET_ME, lambda w: b""),
    Command("get_user", cc.GET_USER, lambda w: cc.ident(w.victim)),
    Command("get_users", cc.GET_USERS, lambda w: b""),
    Command("login", cc.LOGIN_USER, lambda w: cc.login_body(C.ACTOR, C.ACTOR_PASSWORD)),
    Command("login_pat", cc.LOGIN_WITH_PAT, lambda w: cc.name("not-a-token")),
    Command("get_stream", cc.GET_STREAM, lambda w: cc.ident(w.stream)),
    Command("get_streams", cc.GET_STREAMS, lambda w: b""),
    Command("create_stream", cc.CREATE_STREAM, lambda w: cc.name("fz-s")),
    Command("get_topic", cc.GET_TOPIC, lambda w: cc.ident(w.stream) + cc.ident(w.topic)),
    Command("get_topics", cc.GET_TOPICS, lambda w: cc.ident(w.stream)),
    Command(
        "update_topic",
        cc.UPDATE_TOPIC,
        lambda w: cc.ident(w.stream) + cc.ident(w.topic) + struct.pack("<BQQB", 1, 0, 0, 0) + cc.name("pm-t"),
    ),
    Command(
        "send",
        cc.SEND_MESSAGES,
        lambda w: cc.send_body(w.stream, w.topic, cc.partitioning(cc.PARTITION_ID, struct.pack("<I", 1)), _messages()),
    ),
    Command(
        "send_keyed",
        cc.SEND_MESSAGES,
        lambda w: cc.send_body(w.stream, w.topic, cc.partitioning(cc.MESSAGES_KEY, b"k"), _messages()),
    ),
    Command(
        "poll",
        cc.POLL_MESSAGES,
        lambda w: cc.poll_body(cc.consumer(cc.CONSUMER, 7), w.stream, w.topic, 0, cc.FIRST, 0, 10),
    ),
    Command(
        "poll_group", cc.POLL_MESSAGES, lambda w: cc.poll_body(_group(w), w.stream, w.topic, None, cc.NEXT, 0, 10, True)
    ),
    Command(
        "flush", cc.FLUSH_UNSAVED_BUFFER, lambda w: cc.ident(w.stream) + cc.ident(w.topic) + struct.pack("<IB", 0, 1)
    ),
    Command("get_offset", cc.GET_CONSUMER_OFFSET, lambda w: cc.offset_body(_group(w), w.stream, w.topic, None)),
    Command("store_offset", cc.STORE_CONSUMER_OFFSET, lambda w: cc.offset_body(_group(w), w.stream, w.topic, None, 0)),
    Command(
        "store_single",
        cc.STORE_CONSUMER_OFFSET,
        lambda w: cc.offset_body(cc.consumer(cc.CONSUMER, 7), w.stream, w.topic, 0, 1),
    ),
    Command("get_group", cc.GET_CONSUMER_GROUP, lambda w: cc.ident(w.stream) + cc.ident(w.topic) + cc.ident(w.group)),
    Command("join", cc.JOIN_CONSUMER_GROUP, lambda w: cc.ident(w.stream) + cc.ident(w.topic) + cc.ident(w.group)),
    Command("leave", cc.LEAVE_CONSUMER_GROUP, lambda w: cc.ident(w.stream) + cc.ident(w.topic) + cc.ident(w.group)),
]


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    h = Harness(str(tmp_path_factory.mktemp("fuzz-classic")))
    yield h
    h.close()


def call(harness: Harness, session, code: int, body: bytes) -> tuple[int, bytes]:
    reply = classic.handle(harness.plane, session, code, body)
    if inspect.isawaitable(reply):
        reply = harness.loop.run_until_complete(reply)
    if isinstance(reply, list):
        reply = b"".join(bytes(p) for p in reply)
    status, length = struct.unpack_from("<II", reply)
    assert len(reply) == 8 + length and (status == 0 or length == 0), reply[:16]
    return status, reply[8:]


def test_valid_bodies_succeed_for_root(harness):
    """The seeds of the fuzz are themselves good requests (so mutations start from real ones)."""
    w = harness.world
    harness.plane.groups.join((w.stream, w.topic, w.group), harness.root)
    for cmd in COMMANDS:
        if cmd.name in ("login_pat", "create_stream"):
            continue
        session = harness.plane.open_session("fuzz-classic-login", 1) if cmd.name == "login" else harness.root
        status, _ = call(harness, session, cmd.code, cmd.body(harness.world))
        assert status == 0, cmd.name
    call(harness, harness.root, cc.LEAVE_CONSUMER_GROUP, COMMANDS[-1].body(harness.world))


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(st.sampled_from(COMMANDS), st.booleans(), st.booleans(), st.data())
def test_mutated_classic_requests_never_break_a_handler(harness, cmd, as_root, member, data):
    body = mutate(cmd.body(harness.world), data)
    session = harness.root if as_root else harness.nobody
    group = harness.world.stream, harness.world.topic, harness.world.group
    if member:
        harness.plane.groups.join(group, session)
    if cmd.code in (cc.LOGIN_USER, cc.LOGIN_WITH_PAT):
        session = harness.plane.open_session("fuzz-classic-login", 1)
    before = len(harness.errors)
    try:
        status, _ = call(harness, session, cmd.code, body)
    finally:
        if cmd.code in (cc.LOGIN_USER, cc.LOGIN_WITH_PAT):
            harness.plane.close_session(session)
        harness.plane.groups.leave(group, harness.root)
        harness.plane.groups.leave(group, harness.nobody)
    assert len(harness.errors) == before, harness.errors[-1]
    assert status != 1, f"{cmd.name}: generic error for {body!r}"
