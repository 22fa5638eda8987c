"""The io_uring shard on its own: framing over partial sends, many connections, pending
replies, disconnects mid-request, garbage, and the engine choice when io_uring is missing."""

import logging
import socket
import threading
import time
import types

import pytest

from iggy.engine.uring import engine as uring_engine
from iggy.protocol.wire import RequestHeader, build_reply, build_request, parse_reply_header

pytestmark = pytest.mark.skipif(
    uring_engine.probe() is not None, reason=f"io_uring unavailable here: {uring_engine.probe()}"
)


class EchoHandler:
    """Answers every request with its body; code 99 answers later from another thread, code 98
    raises. Its sessions are plain objects with the two attributes the shard reads."""

    def __init__(self):
        self.opened = 0
        self.closed = 0
        self.frames = []
        self.closed_sessions = []
        self.fail_open = False
        self.lock = threading.Lock()

    def on_open(self, shard, token, fd):
        if self.fail_open:
            raise RuntimeError("on_open failure")
        with self.lock:
            self.opened += 1
            return types.SimpleNamespace(address=f"echo-{self.opened}", client_id=self.opened, frames=0)

    def on_close(self, shard, token, session):
        with self.lock:
            self.closed += 1
            self.closed_sessions.append(session)

    def on_bad_frame(self, shard, token, session, reason):
        pass

    def on_frame(self, shard, token, session, header, body):
        h = RequestHeader(header)
        with self.lock:
            self.frames.append((h.code, len(body)))
            session.frames += 1
        if h.code == 99:
            threading.Timer(0.05, lambda: shard.post_reply(token, build_reply(h, 0, b"late:" + body))).start()
            return None
        if h.code == 98:
            raise RuntimeError("handler failure closes only this connection")
        return build_reply(h, 0, body)


@pytest.fixture
def shard():
    from iggy.engine.uring.shard import Shard

    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(256)
    handler = EchoHandler()
    sh = Shard(listener, handler, 1 << 20, max_connections=64)
    thread = threading.Thread(target=sh.run, daemon=True)
    thread.start()
    yield sh, handler, listener.getsockname()
    sh.stop()
    thread.join(5)
    assert not thread.is_alive()
    listener.close()


def _read_reply(sock):
    head = b""
    while len(head) < 256:
        chunk = sock.recv(256 - len(head))
        if not chunk:
            raise ConnectionError("closed")
        head += chunk
    size = parse_reply_header(head)[0]
    body = b""
    while len(body) < size - 256:
        chunk = sock.recv(size - 256 - len(body))
        if not chunk:
            raise ConnectionError("closed")
        body += chunk
    return body


def test_frames_split_byte_by_byte(shard):
    sh, handler, addr = shard
    c = socket.create_connection(addr)
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    frame = build_request(2, 1, b"hello shard", client=1)
    for i in range(len(frame)):
        c.sendall(frame[i : i + 1])
        time.sleep(0.0005)
    assert _read_reply(c) == b"hello shard"
    c.close()


def test_large_frame_and_pipelined_frames_answer_in_order(shard):
    sh, handler, addr = shard
    c = socket.create_connection(addr)
    big = bytes(range(256)) * 3000
    c.sendall(
        build_request(2, 1, big, client=1) + build_request(2, 99, b"a", client=1) + build_request(2, 1, b"b", client=1)
    )
    assert _read_reply(c) == big
    assert _read_reply(c) == b"late:a"  # answered later from another thread...
    assert _read_reply(c) == b"b"  # ...and the next reply still comes after it
    c.close()


def test_slow_reader_gets_every_reply_whole_and_in_order(shard):
    """Replies bigger than the socket buffer, pipelined, read in small slow pieces: the kernel
    sends each in several parts while new replies are appended to the other output buffer."""
    sh, handler, addr = shard
    c = socket.create_connection(addr)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    bodies = [bytes([i]) * (300_000 + i) for i in range(8)]
    c.sendall(b"".join(build_request(2, 1, body, client=1) for body in bodies))
    expected = b"".join(
        build_reply(RequestHeader(build_request(2, 1, body, client=1)[:256]), 0, body) for body in bodies
    )
    got = bytearray()
    while len(got) < len(expected):
        chunk = c.recv(7919)
        if not chunk:
            raise ConnectionError("closed")
        got += chunk
        if len(got) < 200_000:
            time.sleep(0.001)  # slow at first: sends complete partially, output piles up
    assert bytes(got) == expected
    c.close()


def test_many_connections(shard):
    sh, handler, addr = shard
    socks = [socket.create_connection(addr) for _ in range(50)]
    for i, s in enumerate(socks):
        s.sendall(build_request(2, 1, str(i).encode(), client=1))
    for i, s in enumerate(socks):
        assert _read_reply(s) == str(i).encode()
    for s in socks:
        s.close()
    deadline = time.monotonic() + 5
    while handler.closed < 50 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert handler.opened == 50 and handler.closed == 50


def test_connections_beyond_capacity_are_closed(shard):
    sh, handler, addr = shard
    socks = [socket.create_connection(addr) for _ in range(64)]
    for s in socks:
        s.sendall(build_request(2, 1, b"x", client=1))
        assert _read_reply(s) == b"x"
    extra = socket.create_connection(addr)
    extra.settimeout(5)
    assert extra.recv(1) == b""
    for s in socks:
        s.close()


def test_disconnect_mid_request_and_garbage_leave_others_working(shard):
    sh, handler, addr = shard
    good = socket.create_connection(addr)
    half = socket.create_connection(addr)
    frame = build_request(2, 1, b"z" * 1000, client=1)
    half.sendall(frame[:700])
    half.close()
    junk = socket.create_connection(addr)
    junk.sendall(b"\xff" * 300)
    junk.settimeout(5)
    assert junk.recv(1) == b""  # malformed framing closes that connection
    failing = socket.create_connection(addr)
    failing.sendall(build_request(2, 98, b"", client=1))
    failing.settimeout(5)
    assert failing.recv(1) == b""  # a handler exception closes only that one
    good.sendall(build_request(2, 1, b"still here", client=1))
    assert _read_reply(good) == b"still here"
    good.close()


def test_a_failing_callback_is_logged_once_with_its_connection(shard, caplog):
    """on_frame raising: one ERROR line naming that connection's session, with the traceback;
    on_open raising: the connection is closed at once, also with one line."""
    sh, handler, addr = shard
    with caplog.at_level(logging.ERROR, logger="iggy.engine.uring.shard"):
        failing = socket.create_connection(addr)
        failing.sendall(build_request(2, 1, b"a", client=1))
        assert _read_reply(failing) == b"a"
        name = f"echo-{handler.opened}"
        failing.sendall(build_request(2, 98, b"", client=1))
        failing.settimeout(5)
        assert failing.recv(1) == b""
        _wait(lambda: handler.closed >= 1)
        lines = [r for r in caplog.records if name in r.getMessage()]
        assert len(lines) == 1, [r.getMessage() for r in caplog.records]
        assert "on_frame raised RuntimeError" in lines[0].getMessage()
        assert "handler failure closes only this connection" in caplog.text  # the traceback
        assert handler.closed_sessions[-1].address == name  # on_close got the session on_open made
        assert handler.closed_sessions[-1].frames == 2
        handler.fail_open = True
        refused = socket.create_connection(addr)
        refused.settimeout(5)
        assert refused.recv(1) == b""
        _wait(lambda: sum("on_open raised" in r.getMessage() for r in caplog.records) == 1)
        handler.fail_open = False


def _wait(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert condition()


def test_reply_for_a_closed_connection_is_dropped(shard):
    sh, handler, addr = shard
    c = socket.create_connection(addr)
    c.sendall(build_request(2, 99, b"gone", client=1))
    time.sleep(0.01)
    c.close()
    time.sleep(0.2)  # the late reply arrives for a closed slot
    d = socket.create_connection(addr)  # the slot may be reused: it must not get it
    d.sendall(build_request(2, 1, b"fresh", client=1))
    assert _read_reply(d) == b"fresh"
    d.close()


def _server_with(engine, reason):
    from iggy.server.node import Server

    cfg = types.SimpleNamespace(
        system=types.SimpleNamespace(engine=engine), tcp=types.SimpleNamespace(tls=types.SimpleNamespace(enabled=False))
    )
    server = Server(cfg)
    return server


def test_auto_falls_back_to_asyncio_when_io_uring_is_unavailable(monkeypatch, caplog):
    monkeypatch.setattr(uring_engine, "probe", lambda: "io_uring_setup failed: Operation not permitted")
    with caplog.at_level(logging.WARNING):
        assert _server_with("auto", None)._choose_engine() == "asyncio"
    assert "falling back to the asyncio engine" in caplog.text
    assert "Operation not permitted" in caplog.text
    with pytest.raises(RuntimeError, match="io_uring can't be used"):
        _server_with("uring", None)._choose_engine()
    assert _server_with("asyncio", None)._choose_engine() == "asyncio"


def test_auto_picks_uring_when_available():
    assert _server_with("auto", None)._choose_engine() == "uring"


def test_connections_are_spread_over_the_shards():
    """Two shards on one port: whichever listener the kernel picks, each ends up with half."""
    from iggy.engine.uring.shard import Shard

    listeners, shards, threads = [], [], []
    handler = EchoHandler()
    port = 0
    for _ in range(2):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(64)
        port = sock.getsockname()[1]
        listeners.append(sock)
        shards.append(Shard(sock, handler, 1 << 20, max_connections=64))
    for sh in shards:
        sh.set_peers(shards)
    for sh in shards:
        threads.append(threading.Thread(target=sh.run, daemon=True))
        threads[-1].start()
    clients = []
    try:
        for i in range(10):
            c = socket.create_connection(("127.0.0.1", port))
            c.sendall(build_request(2, 1, b"c%d" % i, client=1))
            assert _read_reply(c) == b"c%d" % i  # served wherever it landed
            clients.append(c)
        assert sorted(sh.connections for sh in shards) == [5, 5]
        for c in clients[:4]:
            c.close()
        deadline = time.monotonic() + 5
        while sum(sh.connections for sh in shards) != 6 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sum(sh.connections for sh in shards) == 6
        c = socket.create_connection(("127.0.0.1", port))  # goes to whichever holds fewer now
        c.sendall(build_request(2, 1, b"late", client=1))
        assert _read_reply(c) == b"late"
        clients.append(c)
        assert max(sh.connections for sh in shards) - min(sh.connections for sh in shards) <= 2
    finally:
        for c in clients:
            c.close()
        for sh in shards:
            sh.stop()
        for t in threads:
            t.join(5)
        for sock in listeners:
            sock.close()
