"""Malformed input on raw sockets: it ends that connection (or gets an error reply), never the server.

Every test runs against both TCP engines (asyncio and io_uring; the latter is skipped where
io_uring can't be used). After each test the server process must still be alive, and a fresh
SDK client must still log in and see the entities created when the module started.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import struct
import threading
import time
import uuid

import pytest
from apache_iggy import IggyClient

from iggy._core.checksum import xxh3_64
from iggy.protocol.wire import build_request, parse_reply_header
from tests.conftest import ServerProcess, connect_root
from tests.rawclient import RawClient, closed_by_server, ident, login_body, wire_name

HEADER = 256
MAX_FRAME = 64 * 1024 * 1024  # [message_bus] max_message_size default
PING, GET_STREAMS, GET_STREAM = 1, 201, 200
OP_CREATE_STREAM = 128
CLIENT = 0x0102030405060708090A0B0C0D0E0F10


def uniq(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module", params=["asyncio", "uring"])
def srv(request, tmp_path_factory):
    if request.param == "uring":
        from iggy.engine.uring.engine import probe

        reason = probe()
        if reason is not None:
            pytest.skip(f"io_uring engine unavailable: {reason}")
    server = ServerProcess(
        tmp_path_factory.mktemp(f"raw-{request.param}") / "data", extra_env={"IGGY_SYSTEM_ENGINE": request.param}
    ).start()
    c = RawClient(server.tcp_address)
    assert c.login().status == 0
    assert c.call(OP_CREATE_STREAM, 0, wire_name("sentinel")).code == 0
    assert c.call(132, 0, ident("sentinel") + struct.pack("<I", 2) + wire_name("t")).code == 0
    c.close()
    yield server
    server.stop()


async def assert_healthy(srv, extra_streams=()) -> None:
    """The process lives, and a new SDK client logs in and sees what was created earlier."""
    assert srv.alive(), srv.log()[-3000:]
    client = await connect_root(srv.tcp_address)
    await client.ping()
    stream = await client.get_stream("sentinel")
    assert stream is not None and [t.name for t in stream.topics] == ["t"]
    assert (await client.get_topic("sentinel", "t")).partitions_count == 2
    for name in extra_streams:
        assert (await client.get_stream(name)) is not None, name


def connect(srv, timeout: float = 5.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", srv.tcp_port), timeout=timeout)


def header(
    size: int,
    operation: int = 2,
    code: int = PING,
    command: int = 5,
    checksum: int = 0,
    session: int = 0,
    request: int = 0,
) -> bytearray:
    h = bytearray(HEADER)
    struct.pack_into("<I", h, 48, size)
    h[60] = command
    h[128:144] = CLIENT.to_bytes(16, "little")
    struct.pack_into("<Q", h, 144, checksum)
    struct.pack_into("<Q", h, 168, request)
    h[176] = operation
    struct.pack_into("<Q", h, 184, session)
    if operation == 2:
        struct.pack_into("<I", h, 196, code)
    return h


def read_reply(sock: socket.socket):
    buf = b""
    while len(buf) < HEADER:
        chunk = sock.recv(HEADER - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    size, command, operation, status, reason = parse_reply_header(buf)
    body = b""
    while len(body) < size - HEADER:
        chunk = sock.recv(size - HEADER - len(body))
        if not chunk:
            raise ConnectionError("closed")
        body += chunk
    return command, operation, status, body


def ping_works(sock: socket.socket) -> bool:
    sock.sendall(bytes(header(HEADER)))
    command, operation, status, body = read_reply(sock)
    return (command, operation, status, body) == (8, 2, 0, b"")


# ------------------------------------------------------------------ garbage and lying sizes


@pytest.mark.parametrize(
    "garbage",
    [
        b"\xde\xad\xbe\xef" * 1024,  # size field 0xefbeadde
        b"GET / HTTP/1.1\r\nHost: localhost\r\nUser-Agent: curl/8\r\n" + b"X-Pad: " + b"a" * 300 + b"\r\n\r\n",
        bytes(HEADER),  # size 0
        b"\xff" * 4096,
    ],
    ids=["deadbeef", "http", "zeros", "ff"],
)
async def test_garbage_bytes_close_the_connection(srv, garbage):
    with connect(srv) as s:
        s.sendall(garbage)
        assert closed_by_server(s)
    await assert_healthy(srv)


async def test_random_garbage(srv):
    rng = random.Random(1234)
    for _ in range(20):
        with connect(srv) as s:
            data = bytes(rng.randrange(256) for _ in range(rng.randrange(256, 2048)))
            try:
                s.sendall(data)
            except (BrokenPipeError, ConnectionResetError):
                continue
            s.shutdown(socket.SHUT_WR)  # no more bytes: a half frame can never complete
            closed_by_server(s, timeout=2)
    await assert_healthy(srv)


@pytest.mark.parametrize("size", [0, 100, 255])
async def test_size_below_a_header_closes(srv, size):
    with connect(srv) as s:
        s.sendall(bytes(header(size)))
        assert closed_by_server(s)
    await assert_healthy(srv)


@pytest.mark.parametrize("size", [MAX_FRAME + 1, 0xFFFFFFFF])
async def test_size_above_the_limit_closes_without_the_body(srv, size):
    with connect(srv) as s:
        s.sendall(bytes(header(size)))  # the server must not wait for 64 MiB
        assert closed_by_server(s)
    await assert_healthy(srv)


async def test_oversized_frame_streamed(srv):
    """A frame bigger than the limit, actually sent: the server drops it, it doesn't buffer it."""
    with connect(srv, timeout=10) as s:
        size = MAX_FRAME + 4096
        sent = 0
        chunk = b"\x00" * (1 << 20)
        try:
            s.sendall(bytes(header(size, operation=128)))
            while sent < size - HEADER:
                s.sendall(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert closed_by_server(s)
    await assert_healthy(srv)


async def test_not_a_request_command_byte_closes(srv):
    with connect(srv) as s:
        s.sendall(bytes(header(HEADER, command=8)))  # a Reply, not a Request
        assert closed_by_server(s)
    with connect(srv) as s:
        s.sendall(bytes(header(HEADER, command=13)))
        assert closed_by_server(s)
    await assert_healthy(srv)


# ------------------------------------------------------------------ truncation and disconnects


async def test_truncated_frame_then_disconnect(srv):
    with connect(srv) as s:
        frame = build_request(1, 0, login_body("iggy", "iggy"), client=CLIENT, with_checksum=True)
        s.sendall(frame[: HEADER + 5])  # header promises more than ever arrives
    with connect(srv) as s:
        s.sendall(bytes(header(HEADER + 1000, operation=128)) + b"\x05abc")
    with connect(srv) as s:
        s.sendall(bytes(header(MAX_FRAME, operation=128)) + os.urandom(10000))  # a big promise
    await assert_healthy(srv)


async def test_abrupt_disconnect_mid_header(srv):
    for cut in (1, 47, 52, 200, 255):
        with connect(srv) as s:
            s.sendall(bytes(header(HEADER))[:cut])
    # with a reset (SO_LINGER 0) instead of a FIN, mid-frame
    s = connect(srv)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.sendall(bytes(header(HEADER + 500, operation=128))[:300])
    s.close()
    # and a reset right after a request, before the reply is read
    s = connect(srv)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.sendall(build_request(1, 0, login_body("iggy", "iggy"), client=CLIENT, with_checksum=True))
    s.close()
    await assert_healthy(srv)


async def test_half_closed_client_still_gets_its_reply(srv):
    with connect(srv) as s:
        s.sendall(bytes(header(HEADER)))
        s.shutdown(socket.SHUT_WR)
        command, operation, status, body = read_reply(s)
        assert (command, status) == (8, 0)
    await assert_healthy(srv)


# ------------------------------------------------------------------ error replies that keep the connection


async def test_wrong_request_checksum_is_refused_with_status_4(srv):
    c = RawClient(srv.tcp_address)
    try:
        assert c.login().status == 0
        name = uniq("badsum")
        body = wire_name(name)
        frame = bytearray(
            build_request(OP_CREATE_STREAM, 0, body, session=c.session, request=1, client=c.client, with_checksum=True)
        )
        struct.pack_into("<Q", frame, 144, xxh3_64(body) ^ 1)
        c.send_raw(bytes(frame))
        reply = c.read_reply()
        assert (reply.command, reply.operation, reply.status, reply.body) == (8, OP_CREATE_STREAM, 4, b"")
        assert c.read(GET_STREAM, ident(name)).body == b""  # nothing was created
        assert c.read(PING).status == 0  # and the connection lives on
        # a wrong checksum on a login is refused too, and the right one then works
        frame = bytearray(build_request(1, 0, login_body("iggy", "iggy"), client=c.client, with_checksum=True))
        frame[144] ^= 0xFF
        c.send_raw(bytes(frame))
        refused = c.read_reply()
        assert refused.status == 4 or refused.eviction_reason is not None
        assert c.login().status == 0
        assert c.call(OP_CREATE_STREAM, 0, body).code == 0
    finally:
        c.close()
    await assert_healthy(srv, [name])


async def test_bad_bodies_and_unknown_operations_get_error_replies(srv):
    c = RawClient(srv.tcp_address)
    try:
        assert c.login().status == 0
        assert c.call(OP_CREATE_STREAM, 0, b"\x05ab").code == 3  # WireName runs past the end
        assert c.call(OP_CREATE_STREAM, 0, b"").code == 3
        assert c.read(GET_STREAM, b"\x01\x04\x00").code == 3  # truncated identifier
        assert c.read(GET_STREAM, b"\x07\x01x").code in (3, 6)  # unknown identifier kind
        assert c.read(GET_STREAM, ident("sentinel") + b"trailing").body  # trailing bytes are ignored
        assert c.call(99, 0, b"").code == 3  # no such operation
        assert c.call(200, 0, b"").code == 3
        assert c.read(PING).status == 0
        assert c.read(GET_STREAM, ident("sentinel")).status == 0
    finally:
        c.close()
    await assert_healthy(srv)


async def test_frames_byte_by_byte_and_pipelined(srv):
    with connect(srv) as s:
        frame = build_request(1, 0, login_body("iggy", "iggy"), client=CLIENT, with_checksum=True)
        for i in range(len(frame)):
            s.sendall(frame[i : i + 1])
        command, operation, status, body = read_reply(s)
        assert (command, operation, status) == (8, 1, 0)
        (session,) = struct.unpack_from("<Q", body, 8)
        # four requests in one write: four replies, in order
        batch = (
            bytes(header(HEADER))
            + build_request(2, GET_STREAM, ident("sentinel"), session=session, request=1, client=CLIENT)
            + build_request(2, 9999, b"", session=session, request=1, client=CLIENT)
            + build_request(2, GET_STREAMS, b"", session=session, request=1, client=CLIENT)
        )
        s.sendall(batch)
        replies = [read_reply(s) for _ in range(4)]
        assert [r[2] for r in replies] == [0, 0, 3, 0]
        assert replies[1][3][32 : 33 + len("sentinel")] == wire_name("sentinel")
        assert wire_name("sentinel") in replies[3][3]
        # a frame split at every offset of its header still arrives whole
        for cut in (1, 48, 52, 61, 255, 256):
            part = build_request(2, GET_STREAM, ident("sentinel"), session=session, request=1, client=CLIENT)
            s.sendall(part[:cut])
            time.sleep(0.01)
            s.sendall(part[cut:])
            assert read_reply(s)[2] == 0
    await assert_healthy(srv)


async def test_requests_pipelined_behind_a_login_wait_for_it(srv):
    """Login hashes off the loop; frames behind it must still be answered after it, in order."""
    with connect(srv) as s:
        login = build_request(1, 0, login_body("iggy", "iggy"), client=CLIENT, with_checksum=True)
        streams = build_request(2, GET_STREAMS, b"", session=0, request=1, client=CLIENT)
        stream = build_request(2, GET_STREAM, ident("sentinel"), session=0, request=1, client=CLIENT)
        s.sendall(login + bytes(header(HEADER)) + streams + stream)
        replies = [read_reply(s) for _ in range(4)]
        assert [(r[0], r[1], r[2]) for r in replies] == [(8, 1, 0), (8, 2, 0), (8, 2, 0), (8, 2, 0)]
        assert wire_name("sentinel") in replies[2][3]  # logged in by then
        assert replies[3][3][32 : 32 + len("sentinel") + 1] == wire_name("sentinel")
    await assert_healthy(srv)


# ------------------------------------------------------------------ many bad clients at once


def _garbage_worker(srv, stop: threading.Event, seed: int, counter: list) -> None:
    rng = random.Random(seed)
    kinds = ["garbage", "small", "huge", "truncated", "badsum", "rst", "unknown"]
    while not stop.is_set():
        kind = rng.choice(kinds)
        try:
            s = connect(srv, timeout=3)
        except OSError:
            continue
        try:
            if kind == "garbage":
                s.sendall(bytes(rng.randrange(256) for _ in range(rng.randrange(256, 1024))))
            elif kind == "small":
                s.sendall(bytes(header(rng.randrange(0, 256))))
            elif kind == "huge":
                s.sendall(bytes(header(MAX_FRAME + rng.randrange(1, 1 << 20))))
            elif kind == "truncated":
                s.sendall(bytes(header(HEADER + 5000, operation=128)) + b"\x01" * rng.randrange(0, 4000))
            elif kind == "badsum":
                frame = bytearray(build_request(1, 0, login_body("iggy", "iggy"), client=CLIENT, with_checksum=True))
                frame[150] ^= 0x55
                s.sendall(bytes(frame))
                s.recv(HEADER)
            elif kind == "rst":
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.sendall(bytes(header(HEADER + 100))[: rng.randrange(1, 300)])
            else:
                s.sendall(bytes(header(HEADER, code=rng.randrange(2000, 9000))))
                s.recv(HEADER)
            counter[0] += 1
        except OSError:
            counter[0] += 1
        finally:
            s.close()


async def test_many_bad_clients_while_the_sdk_works(srv):
    before = (await (await connect_root(srv.tcp_address)).get_stats()).clients_count
    stop = threading.Event()
    counter = [0]
    threads = [
        threading.Thread(target=_garbage_worker, args=(srv, stop, seed, counter), daemon=True) for seed in range(24)
    ]
    for t in threads:
        t.start()
    created = []
    try:
        client = await connect_root(srv.tcp_address)
        for i in range(15):
            name = uniq(f"busy{i}")
            await client.create_stream(name)
            await client.create_topic(name, "t", 1)
            created.append(name)
            assert (await client.get_topic(name, "t")).partitions_count == 1
            assert (await client.get_stream("sentinel")) is not None
            await asyncio.sleep(0.02)
        names = {s.name for s in await client.get_streams()}
        assert set(created) <= names
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert counter[0] > 50  # the bad clients really ran
    await assert_healthy(srv, created)
    # and the server still tracks a sane number of connections (the bad ones are gone)
    client = await connect_root(srv.tcp_address)
    deadline = time.monotonic() + 5
    while (await client.get_stats()).clients_count > before + 3 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert (await client.get_stats()).clients_count <= before + 3


async def test_sdk_client_unaffected_by_a_bad_neighbour(srv):
    client = await connect_root(srv.tcp_address)
    name = uniq("neighbour")
    await client.create_stream(name)
    with connect(srv) as s:
        s.sendall(b"\xde\xad\xbe\xef" * 100)
        assert closed_by_server(s)
    # the same SDK connection carries on (no reconnect needed)
    assert (await client.get_stream(name)).name == name
    await client.delete_stream(name)
    assert await client.get_stream(name) is None
    anon = IggyClient(srv.tcp_address)
    await anon.connect()
    await anon.ping()
