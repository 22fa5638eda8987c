"""Limits: frame size, connections, write buffer (slow readers), idle/slow clients, memory with
many idle connections. Each is configured through its IGGY_* variable and answered with an
error reply, or a close plus a log line.

* `message_bus.max_message_size`: a frame one byte over the limit closes that connection
  ("frame size N outside 256..max" in the log); a frame of exactly the limit is served;
* `limits.max_connections`: the connection over the limit is closed ("refusing connection ...
  (limits.max_connections)");
* `limits.max_write_buffer`: a client that pipelines polls and never reads costs the server
  a bounded amount of memory (RSS measured), and gets every reply, in order, once it reads;
* `limits.idle_timeout`: an idle connection, a client trickling a frame one byte at a time
  and a client that never reads its replies are all closed ("no complete request for ...
  (limits.idle_timeout)"), while a client that keeps sending requests stays connected;
* memory: RSS of the server before and after opening N idle connections (each answered a
  ping), every connection still served afterwards.

Long form: `python -m tests.reliability.limits --connections 5000`.
"""

from __future__ import annotations

import json
import os
import resource
import socket
import struct
import time

import psutil

from iggy.protocol.wire import build_request
from tests.rawclient import closed_by_server, login_body, poll_body
from tests.reliability.common import Client, Launcher, harness_arguments

PING = build_request(2, 1, b"", client=3)


def rss(server) -> int:
    return psutil.Process(server.proc.pid).memory_info().rss


def raise_fd_limit(n: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, n + 256)) if hard != resource.RLIM_INFINITY else max(soft, n + 256)
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


# --------------------------------------------------------------------------- frame size


def check_frame_size(server, limit: int) -> dict:
    """Server started with IGGY_MESSAGE_BUS_MAX_MESSAGE_SIZE = limit bytes."""
    ok = Client(server.tcp_address)
    over = socket.create_connection(("127.0.0.1", server.tcp_port))
    frame = build_request(2, 1, b"\0" * (limit - 256 + 1), client=3)
    over.sendall(frame[:4096])
    over.sendall(frame[4096:])
    assert closed_by_server(over, 5), "a frame over the limit did not close the connection"
    over.close()
    assert server.wait_log(f"frame size {limit + 1} outside 256..{limit}"), "no log line for the big frame"
    # exactly the limit: answered (a ping with a body is still a ping)
    exact = Client(server.tcp_address)
    reply = exact.call(2, 1, b"\0" * (limit - 256))
    assert reply.command == 8, reply
    assert ok.read(1).status == 0  # the other connection is untouched
    exact.close()
    ok.close()
    return {"max_frame": limit, "over_limit": "closed + logged", "at_limit": "served"}


# --------------------------------------------------------------------------- connections


def check_max_connections(server, limit: int) -> dict:
    time.sleep(0.3)  # the start-up probe connection is gone
    clients = [Client(server.tcp_address, login=False) for _ in range(limit)]
    for c in clients:
        assert c.read(1).status == 0
    extra = socket.create_connection(("127.0.0.1", server.tcp_port))
    assert closed_by_server(extra, 5), "a connection over the limit stayed open"
    assert server.wait_log("(limits.max_connections)")
    for c in clients:
        c.close()
    return {"max_connections": limit, "over_limit": "closed + logged"}


# --------------------------------------------------------------------------- slow reader


def _poll_frame(session: int, count: int) -> bytes:
    body = poll_body("lim", "t", count=count)
    return build_request(2, 100, body, session=session, request=1, client=9)


def _login_raw(sock: socket.socket) -> int:
    sock.sendall(build_request(1, 0, login_body("iggy", "iggy"), client=9, with_checksum=True))
    head = b""
    while len(head) < 256:
        head += sock.recv(256 - len(head))
    size = struct.unpack_from("<I", head, 48)[0]
    body = b""
    while len(body) < size - 256:
        body += sock.recv(size - 256 - len(body))
    return struct.unpack_from("<Q", body, 8)[0]


def fill_topic(server, batches: int = 10) -> None:
    c = Client(server.tcp_address)
    if "lim" not in c.stream_names():
        assert c.create_stream("lim").code == 0
        assert c.create_topic("lim", "t", 1).code == 0
        for _ in range(batches):
            reply, _ = c.send("lim", "t", 0, [b"x" * 1000] * 100)
            assert reply.status == 0
    c.close()


def check_slow_reader(server, seconds: float = 3.0, max_growth: int = 200 << 20) -> dict:
    """Pipelined polls (~1 MB replies each) that the client does not read: RSS stays bounded."""
    fill_topic(server)
    before = rss(server)
    sock = socket.create_connection(("127.0.0.1", server.tcp_port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    session = _login_raw(sock)
    frame = _poll_frame(session, 1000)
    sock.setblocking(False)
    sent, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            sock.send(frame * 20)
            sent += 20
        except BlockingIOError:
            time.sleep(0.01)
    time.sleep(0.5)
    growth = rss(server) - before
    assert growth < max_growth, f"server RSS grew by {growth >> 20} MiB for one client that does not read"
    # now read: replies come in order, each a full poll of 1000 messages
    sock.setblocking(True)
    sock.settimeout(10)
    got = 0
    buf = bytearray()
    while got < 5:
        chunk = sock.recv(1 << 20)
        assert chunk, "connection closed"
        buf += chunk
        while len(buf) >= 256 and len(buf) >= struct.unpack_from("<I", buf, 48)[0]:
            size = struct.unpack_from("<I", buf, 48)[0]
            assert struct.unpack_from("<I", buf, 216)[0] == 0 and struct.unpack_from("<I", buf, 256 + 12)[0] == 1000
            del buf[:size]
            got += 1
    sock.close()
    c = Client(server.tcp_address)
    assert c.read(1).status == 0
    c.close()
    return {"polls_pipelined_unread": sent, "rss_growth_mib": round(growth / 2**20, 1)}


# --------------------------------------------------------------------------- idle / slow clients


def check_idle_timeout(server, timeout: float) -> dict:
    """Server started with IGGY_LIMITS_IDLE_TIMEOUT = timeout seconds."""
    fill_topic(server)
    idle = socket.create_connection(("127.0.0.1", server.tcp_port))
    trickle = socket.create_connection(("127.0.0.1", server.tcp_port))
    reader = socket.create_connection(("127.0.0.1", server.tcp_port))
    reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    session = _login_raw(reader)
    reader.sendall(_poll_frame(session, 1000) * 40)  # ~40 MB of replies it will not read
    active = Client(server.tcp_address)
    clients = {"idle": idle, "trickle": trickle, "reader": reader}
    marks = {name: f"closing 127.0.0.1:{s.getsockname()[1]}: no complete request for" for name, s in clients.items()}
    started = time.monotonic()
    frame = build_request(2, 1, b"", client=4)
    closed, pos = {}, 0
    while time.monotonic() - started < timeout * 4 + 2 and len(closed) < len(clients):
        time.sleep(0.1)
        assert active.read(1).status == 0, "an active client was disconnected"
        try:
            trickle.send(frame[pos % len(frame) : pos % len(frame) + 1])  # one byte per 0.1 s
            pos += 1
        except OSError:
            pass
        text = server.log()
        for name, mark in marks.items():
            if name not in closed and mark in text:
                closed[name] = time.monotonic() - started
    for name in clients:
        assert name in closed, f"the {name} client was not closed within {timeout * 4 + 2:.0f} s"
    for name in ("idle", "trickle"):  # and the client sees it
        assert closed_by_server(clients[name], 2), f"the {name} client's socket is still open"
    active.close()
    for s in clients.values():
        s.close()
    return {
        "idle_timeout_s": timeout,
        **{f"{k}_closed_after_s": round(v, 1) for k, v in closed.items()},
        "active_client": "kept",
    }


# --------------------------------------------------------------------------- many idle connections


def check_idle_connections(server, n: int) -> dict:
    raise_fd_limit(n + 64)
    time.sleep(0.3)
    before = rss(server)
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", server.tcp_port), timeout=10)
        socks.append(s)
    # every one answers a ping (so the server has really set it up), then sits idle
    for s in socks:
        s.sendall(PING)
    for s in socks:
        head = b""
        while len(head) < 256:
            chunk = s.recv(256 - len(head))
            assert chunk, "an idle connection was closed"
            head += chunk
    time.sleep(0.5)
    after = rss(server)
    c = Client(server.tcp_address)
    assert c.read(1).status == 0
    c.close()
    # still served after sitting idle
    for s in socks[:: max(1, n // 50)]:
        s.sendall(PING)
        assert len(s.recv(256)) > 0
    for s in socks:
        s.close()
    return {
        "idle_connections": n,
        "rss_before_mib": round(before / 2**20, 1),
        "rss_after_mib": round(after / 2**20, 1),
        "rss_per_connection_kib": round((after - before) / n / 1024, 1),
    }


def main(argv=None) -> None:
    ap = harness_arguments(__doc__)
    ap.add_argument("--connections", type=int, default=5000)
    args = ap.parse_args(argv)
    out = {"engine": args.engine or os.environ.get("IGGY_TEST_ENGINE", "auto")}
    no_http = {"IGGY_HTTP_ENABLED": "false", "IGGY_QUIC_ENABLED": "false", "IGGY_WEBSOCKET_ENABLED": "false"}
    with Launcher(args.engine, {**no_http, "IGGY_MESSAGE_BUS_MAX_MESSAGE_SIZE": "65536"}) as server:
        out["frame_size"] = check_frame_size(server, 65536)
    with Launcher(args.engine, {**no_http, "IGGY_LIMITS_MAX_CONNECTIONS": "50"}) as server:
        out["connections"] = check_max_connections(server, 50)
    with Launcher(args.engine, no_http) as server:
        out["slow_reader"] = check_slow_reader(server, seconds=5)
        out["idle_connections"] = check_idle_connections(server, args.connections)
    with Launcher(args.engine, {**no_http, "IGGY_LIMITS_IDLE_TIMEOUT": "1 s"}) as server:
        out["idle_timeout"] = check_idle_timeout(server, 1.0)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
