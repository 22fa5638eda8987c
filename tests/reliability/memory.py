"""Memory: what big frames before login, big TCP polls and unbounded HTTP polls cost the
server, measured as VmRSS of the server process (/proc/<pid>/status) before, at the peak
during (sampled every 10 ms), and after the clients are gone.

* unauthenticated frames: N connections that never log in each send one frame of S bytes
  (a ping with an S-byte body). `limits.max_unauthenticated_frame` refuses them at the
  header: each connection is closed with a log line and the server buffers next to nothing;
* large TCP polls: N logged-in connections each poll a partition holding more than one
  largest frame (each reply ~63 MiB with the default 64 MiB frame), read the replies, close.
  Large replies are built in buffers counted against `limits.max_reply_buffers`
  (process-wide; a poll that would go over it waits) and handed back once sent;
* HTTP poll of everything: count=4294967295 on a partition of many small messages. The
  JSON reply is capped as TCP replies are (at most about one largest frame).

Long form: `python -m tests.reliability.memory [--engine asyncio]`; the short form is
tests/reliability/test_memory.py.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import threading
import time

from iggy.protocol.batch import build_batch
from iggy.protocol.wire import build_request
from tests.rawclient import poll_body
from tests.reliability.common import Client, Launcher, harness_arguments

MIB = 1 << 20
_U32 = struct.Struct("<I")


def _run_all(threads) -> None:
    """Start every thread, then wait until each has ended."""
    threads = list(threads)
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def rss_bytes(pid: int, field: str = "VmRSS") -> int:
    """VmRSS (or another /proc/<pid>/status field in kB: RssAnon, RssFile) of a process, in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} for {pid}")


class PeakRss:
    """Samples a process's VmRSS every `interval` seconds in a thread; `.peak` is the highest."""

    def __init__(self, pid: int, interval: float = 0.01):
        self.pid = pid
        self.interval = interval
        self.peak = rss_bytes(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, rss_bytes(self.pid))
            except (OSError, RuntimeError):
                return
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def settled_rss(pid: int, seconds: float = 1.0) -> int:
    """RSS once the server had `seconds` to release what the closed connections held."""
    time.sleep(seconds)
    return rss_bytes(pid)


def _mib(n: int) -> float:
    return round(n / MIB, 1)


def _serves(server) -> None:
    c = Client(server.tcp_address)
    assert c.read(1).status == 0, "the server no longer answers a ping"
    c.close()


# --------------------------------------------------------------------------- unauthenticated frames


def _send_big_unauthenticated(port: int, size: int, result: dict, key: int) -> None:
    frame_head = build_request(2, 1, b"", client=7 + key)
    head = bytearray(frame_head)
    head[48:52] = _U32.pack(size)
    chunk = b"\0" * MIB
    sent = 0
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    try:
        sock.sendall(head)
        sent = 256
        while sent < size:
            n = min(len(chunk), size - sent)
            sock.sendall(chunk[:n])
            sent += n
        # the whole frame went out: the server answers it, or closes
        sock.settimeout(10)
        try:
            result[key] = ("answered" if sock.recv(256) else "closed", sent)
        except TimeoutError:
            result[key] = ("no answer", sent)
    except (BrokenPipeError, ConnectionResetError):
        result[key] = ("closed", sent)
    finally:
        sock.close()


def check_unauthenticated_frames(server, connections: int = 16, size: int = 48 * MIB) -> dict:
    """`connections` clients that never log in each send one `size`-byte frame at once."""
    pid = server.proc.pid
    _serves(server)
    before = settled_rss(pid, 0.5)
    results: dict = {}
    with PeakRss(pid) as peak:
        _run_all(
            threading.Thread(target=_send_big_unauthenticated, args=(server.tcp_port, size, results, i))
            for i in range(connections)
        )
    after = settled_rss(pid)
    _serves(server)
    closed = sum(1 for state, _ in results.values() if state == "closed")
    sent = sum(n for _, n in results.values())
    return {
        "connections": connections,
        "frame_mib": _mib(size),
        "closed_by_server": closed,
        "client_bytes_sent_mib": _mib(sent),
        "rss_before_mib": _mib(before),
        "rss_peak_mib": _mib(peak.peak),
        "rss_after_mib": _mib(after),
    }


# --------------------------------------------------------------------------- large TCP polls


def fill_partition(server, stream: str, topic: str, total: int, payload: int, per_batch: int) -> int:
    """Create stream/topic (1 partition) and append about `total` bytes of messages."""
    c = Client(server.tcp_address)
    assert c.create_stream(stream).code == 0
    assert c.create_topic(stream, topic, 1).code == 0
    batch = build_batch([(i + 1, b"p" * payload, b"") for i in range(per_batch)])
    sent = 0
    while sent < total:
        assert c.send_batch(stream, topic, 0, batch, per_batch).status == 0
        sent += len(batch)
    c.close()
    return sent


def _poller(address: str, body: bytes, rounds: int, out: list, start: threading.Barrier) -> None:
    c = Client(address, timeout=120)
    start.wait()
    for _ in range(rounds):
        reply = c.read(100, body)
        assert reply.status == 0, reply
        out.append(256 + len(reply.body))
    c.close()


def check_large_polls(server, connections: int = 12, rounds: int = 2, fill: int = 70 * MIB) -> dict:
    """`connections` logged-in clients at once each poll the whole partition `rounds` times."""
    pid = server.proc.pid
    fill_partition(server, "mem", "big", fill, 1000, 1000)
    body = poll_body("mem", "big", count=1_000_000)
    _serves(server)
    before = settled_rss(pid, 0.5)
    sizes: list = []
    start = threading.Barrier(connections)
    with PeakRss(pid) as peak:
        _run_all(
            threading.Thread(target=_poller, args=(server.tcp_address, body, rounds, sizes, start))
            for _ in range(connections)
        )
    after = settled_rss(pid)
    assert len(sizes) == connections * rounds, "a poller failed"
    _serves(server)
    return {
        "connections": connections,
        "polls": len(sizes),
        "reply_mib": _mib(max(sizes)),
        "rss_before_mib": _mib(before),
        "rss_peak_mib": _mib(peak.peak),
        "rss_after_mib": _mib(after),
    }


# --------------------------------------------------------------------------- the reply budget


def _readable(sock: socket.socket, timeout: float) -> bool:
    import select

    return bool(select.select([sock], [], [], timeout)[0])


def check_reply_budget_waits(server, stream: str = "memb", topic: str = "t") -> dict:
    """Server started with a reply budget smaller than one big reply: a client that polls and
    does not read holds the budget; another client's big poll then waits (while pings and
    metadata reads are answered) and is answered, complete, once the first client is gone."""
    c = Client(server.tcp_address)
    body = poll_body(stream, topic, count=1_000_000)
    holder = Client(server.tcp_address)  # polls and never reads its reply
    holder.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    holder.send_raw(build_request(2, 100, body, session=holder.session, request=1, client=holder.client))
    waiter = Client(server.tcp_address, timeout=60)
    waiter.send_raw(build_request(2, 100, body, session=waiter.session, request=1, client=waiter.client))
    # other requests go on meanwhile (on uring small polls too; the asyncio engine holds every
    # poll while the budget is spent, as it can't know a reply's size before reading it)
    assert c.read(1).status == 0
    assert stream in c.stream_names()
    waited = not _readable(waiter.sock, 0.5)
    holder.close()  # its reply is dropped and its buffer given back
    reply = waiter.read_reply()
    assert reply.status == 0, reply
    served = _U32.unpack_from(reply.body, 12)[0]
    from tests.reliability.common import verify_batches

    assert len(verify_batches(reply.body[16:])) == served > 0
    c.close()
    waiter.close()
    return {
        "big_poll_waited_for_budget": waited,
        "served_after_release": served,
        "reply_mib": _mib(256 + len(reply.body)),
    }


def budget_gauges(server, settle: float = 10.0) -> dict:
    """reply_buffers_bytes and reply_buffer_waiters of GET /metrics, once they are back to 0 (or
    what they are after `settle` seconds): replies are given back as the transport sends them."""
    import httpx

    token = httpx.post(server.http_url + "/users/login", json={"username": "iggy", "password": "iggy"}).json()
    headers = {"Authorization": f"Bearer {token['access_token']['token']}"}
    deadline = time.monotonic() + settle
    while True:
        text = httpx.get(server.http_url + "/metrics", headers=headers).text
        gauges = {}
        for line in text.splitlines():
            name, _, value = line.partition(" ")
            if name in ("reply_buffers_bytes", "reply_buffer_waiters"):
                gauges[name] = float(value)
        if not any(gauges.values()) or time.monotonic() > deadline:
            return gauges
        time.sleep(0.1)


def check_budget_given_back_by_vanishing_clients(server, stream: str = "memb", topic: str = "t") -> dict:
    """Clients that go away mid-transfer: one in the middle of sending a big frame, one right
    after asking for a big poll, one in the middle of reading it. Nothing stays counted."""
    body = poll_body(stream, topic, count=1_000_000)
    sender = Client(server.tcp_address)
    big = build_request(160, 0, b"\0" * (6 * MIB), session=sender.session, request=1, client=sender.client)
    sender.send_raw(big[: 3 * MIB])  # half a big frame (its receive buffer is big)
    asker = Client(server.tcp_address)
    asker.send_raw(build_request(2, 100, body, session=asker.session, request=1, client=asker.client))
    reader = Client(server.tcp_address)
    reader.send_raw(build_request(2, 100, body, session=reader.session, request=1, client=reader.client))
    reader.recv_exact(MIB)
    time.sleep(0.3)
    for c in (sender, asker, reader):
        c.close()
    gauges = budget_gauges(server)
    after = Client(server.tcp_address)  # and a big poll is still served in full
    reply = after.read(100, body)
    assert reply.status == 0 and len(reply.body) > MIB, reply
    after.close()
    return {**gauges, "big_poll_after": _mib(256 + len(reply.body))}


# --------------------------------------------------------------------------- HTTP poll of everything


def check_http_poll_all(server, messages: int = 1_000_000, payload: int = 10, per_batch: int = 10_000) -> dict:
    """count=4294967295 over HTTP on a partition of `messages` small messages."""
    import httpx

    pid = server.proc.pid
    fill_partition(server, "memh", "small", 1, payload, per_batch)  # creates the topic + one batch
    c = Client(server.tcp_address)
    batch = build_batch([(i + 1, b"s" * payload, b"") for i in range(per_batch)])
    for _ in range(messages // per_batch - 1):
        assert c.send_batch("memh", "small", 0, batch, per_batch).status == 0
    c.close()
    url = server.http_url
    token = httpx.post(url + "/users/login", json={"username": "iggy", "password": "iggy"}).json()
    headers = {"Authorization": f"Bearer {token['access_token']['token']}"}
    before = settled_rss(pid, 0.5)
    with PeakRss(pid) as peak:
        r = httpx.get(
            url + "/streams/memh/topics/small/messages",
            headers=headers,
            timeout=300,
            params={
                "consumer_id": "1",
                "partition_id": "0",
                "kind": "offset",
                "value": "0",
                "count": str(0xFFFFFFFF),
                "auto_commit": "false",
            },
        )
    assert r.status_code == 200, r.text[:300]
    served = r.json()["count"]
    after = settled_rss(pid)
    return {
        "messages": messages,
        "served": served,
        "json_mib": _mib(len(r.content)),
        "rss_before_mib": _mib(before),
        "rss_peak_mib": _mib(peak.peak),
        "rss_after_mib": _mib(after),
    }


def main(argv=None) -> None:
    ap = harness_arguments(__doc__)
    ap.add_argument("--connections", type=int, default=16, help="unauthenticated big-frame clients")
    ap.add_argument("--frame-mib", type=int, default=48)
    ap.add_argument("--pollers", type=int, default=12)
    ap.add_argument("--http-messages", type=int, default=1_000_000)
    ap.add_argument("--only", choices=("unauthenticated", "polls", "http"), default=None)
    args = ap.parse_args(argv)
    out = {"engine": args.engine or os.environ.get("IGGY_TEST_ENGINE", "auto")}
    quiet = {"IGGY_QUIC_ENABLED": "false", "IGGY_WEBSOCKET_ENABLED": "false"}
    if args.only in (None, "unauthenticated"):
        with Launcher(args.engine, {**quiet, "IGGY_HTTP_ENABLED": "false"}) as server:
            out["unauthenticated_frames"] = check_unauthenticated_frames(server, args.connections, args.frame_mib * MIB)
    if args.only in (None, "polls"):
        with Launcher(args.engine, {**quiet, "IGGY_HTTP_ENABLED": "false"}) as server:
            out["large_polls"] = check_large_polls(server, args.pollers)
    if args.only in (None, "http"):
        with Launcher(args.engine, quiet) as server:
            out["http_poll_all"] = check_http_poll_all(server, args.http_messages)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
