"""Connection limit and token expiry cleanup, against a real server on each engine."""

import socket
import struct
import time

from tests.conftest import server_with_env
from tests.rawclient import RawClient, closed_by_server

limited = server_with_env(IGGY_LIMITS_MAX_CONNECTIONS="3")


def test_connections_above_the_limit_are_closed_and_the_rest_keep_working(limited):
    # the readiness probe of the fixture used one connection and closed it; wait until it is gone
    time.sleep(0.3)
    clients = [RawClient(limited.tcp_address) for _ in range(3)]
    for c in clients:
        assert c.read(1).status == 0  # ping answered
    extra = socket.create_connection(("127.0.0.1", limited.tcp_port))
    assert closed_by_server(extra)
    assert clients[0].login().status == 0
    clients[2].close()
    time.sleep(0.3)
    again = RawClient(limited.tcp_address)
    assert again.read(1).status == 0  # a slot was freed
    for c in [*clients[:2], again]:
        c.close()


fast_token_cleaner = server_with_env(IGGY_PERSONAL_ACCESS_TOKEN_CLEANER_INTERVAL="200 ms")
two_mib_frames = server_with_env(IGGY_MESSAGE_BUS_MAX_MESSAGE_SIZE="2 MiB")


def test_expired_personal_access_token_is_removed(fast_token_cleaner):
    c = RawClient(fast_token_cleaner.tcp_address)
    assert c.login().status == 0
    # expiry 1 s (in microseconds)
    reply = c.call(146, 0, b"\x04tok1" + struct.pack("<Q", 1_000_000))
    assert reply.code == 0
    assert b"tok1" in c.read(41).body
    deadline = time.monotonic() + 10
    while b"tok1" in c.read(41).body:
        assert time.monotonic() < deadline, "expired token was never removed"
        time.sleep(0.2)
    assert "removed expired personal access token 'tok1'" in fast_token_cleaner.log()
    c.close()


def test_a_poll_reply_never_exceeds_the_largest_frame(two_mib_frames):
    from iggy.protocol.batch import build_batch, iter_messages
    from tests.rawclient import ident, wire_name

    c = RawClient(two_mib_frames.tcp_address)
    assert c.login().status == 0
    assert c.call(128, 0, wire_name("big")).code == 0
    assert c.call(132, 0, ident("big") + struct.pack("<I", 1) + wire_name("t")).code == 0
    batch = build_batch([(i + 1, b"m" * 1000, b"") for i in range(900)])
    meta = ident("big") + ident("t") + b"\x02\x04" + struct.pack("<I", 0) + struct.pack("<I", 900)
    for _ in range(4):
        assert c.call(160, 0, struct.pack("<I", len(meta)) + meta + batch).status == 0
    poll = b"\x01\x01\x04" + struct.pack("<I", 1) + ident("big") + ident("t") + b"\x01" + struct.pack("<I", 0)
    poll += b"\x01" + struct.pack("<Q", 0) + struct.pack("<I", 1_000_000) + b"\x00"
    reply = c.read(100, poll)
    assert reply.status == 0
    assert 256 + len(reply.body) <= 2 * 1024 * 1024
    served = [m["offset"] for m in iter_messages(reply.body[16:])]
    assert served == list(range(len(served))) and 900 <= len(served) < 3600
    c.close()
