"""Produce and consume throughput of one producer against a fresh server.

Starts `python -m iggy` on free loopback ports with a temporary data directory, creates a
stream and a one-partition topic, then:

* produce: sends pre-built SEND_MESSAGES requests (iggy.protocol.batch.build_batch +
  iggy.protocol.wire.build_request) one at a time, as the SDK does (one outstanding request per
  connection), until `--total-mb` of payload is written;
* consume: polls the partition from offset 0 with the offset strategy, `--batch` messages per
  poll, until every message was read back.

A raw asyncio client is used on purpose: the official SDK would measure itself. Reported:
payload MB/s (1 MB = 10^6 bytes of message payload), messages/s, and p50/p99 of the latency
of one request (one batch), for each phase.

    python perf/bench_throughput.py                       # 200 MB, 1000 x 1000-byte messages
    python perf/bench_throughput.py --total-mb 500 --engine asyncio --durability persisted
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from iggy.bench.client import numeric_id, poll_body, tlv, wire_name
from iggy.protocol.batch import build_batch, random_id
from iggy.protocol.codes import OP_CREATE_STREAM, OP_CREATE_TOPIC, OP_READ, OP_REGISTER, POLL_MESSAGES
from iggy.protocol.codes import OP_SEND_MESSAGES as OP_SEND
from iggy.protocol.header import EV_REASON, H_SIZE
from iggy.protocol.wire import COMMAND_REPLY, build_request, parse_reply_header
from iggy.protocol.wire import HEADER_SIZE as HEADER
from iggy.testing.server import terminate

CLIENT_ID = int.from_bytes(os.urandom(16), "little") | 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- server process


class Server:
    def __init__(self, engine: str, data_dir: str):
        self.data_dir = data_dir
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("IGGY_")}
        env.update(
            {
                "IGGY_SYSTEM_PATH": data_dir,
                "IGGY_SYSTEM_ENGINE": engine,
                "IGGY_TCP_ADDRESS": f"127.0.0.1:{self.port}",
                "IGGY_HTTP_ADDRESS": f"127.0.0.1:{free_port()}",
                "IGGY_QUIC_ADDRESS": f"127.0.0.1:{free_port()}",
                "IGGY_WEBSOCKET_ADDRESS": f"127.0.0.1:{free_port()}",
                "IGGY_ROOT_USERNAME": "iggy",
                "IGGY_ROOT_PASSWORD": "iggy",
                "PYTHONPATH": str(REPO),
            }
        )
        self.log_path = os.path.join(os.path.dirname(data_dir), "server.log")
        with open(self.log_path, "wb") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "iggy"], env=env, cwd=str(REPO), stdout=log, stderr=subprocess.STDOUT
            )
        runtime = os.path.join(data_dir, "runtime", "current_config.toml")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}")
            if os.path.exists(runtime):
                try:
                    socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                    return
                except OSError:
                    pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("server did not start")

    def engine_line(self) -> str:
        with open(self.log_path, errors="replace") as log:
            for line in log:
                if "TCP server listening" in line:
                    return line.split("INFO", 1)[-1].strip()
        return "?"

    def stop(self):
        terminate(self.proc, 20)


# --------------------------------------------------------------------------- raw client


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer
        self.session = 0
        self.request = 0

    @classmethod
    async def connect(cls, port: int) -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 24)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(reader, writer)

    def header(self, operation: int, code: int, body_len: int, checksum_body: bytes | None = None) -> bytes:
        """A request header for a body of body_len bytes (written separately: no copy of the body)."""
        if operation == OP_READ:
            request = self.request + 1
        elif operation == OP_REGISTER:
            request = 0
        else:
            self.request += 1
            request = self.request
        if checksum_body is not None:
            return build_request(
                operation,
                code,
                checksum_body,
                session=self.session,
                request=request,
                client=CLIENT_ID,
                with_checksum=True,
            )[:HEADER]
        head = bytearray(build_request(operation, code, b"", session=self.session, request=request, client=CLIENT_ID))
        struct.pack_into("<I", head, H_SIZE, HEADER + body_len)
        return bytes(head)

    async def call(self, operation: int, code: int, body: bytes, checksummed: bool = False) -> tuple[int, bytes]:
        self.writer.write(self.header(operation, code, len(body), body if checksummed else None))
        self.writer.write(body)
        head = await self.reader.readexactly(HEADER)
        size, command, _, status, _ = parse_reply_header(head)
        reply = await self.reader.readexactly(size - HEADER) if size > HEADER else b""
        if command != COMMAND_REPLY:
            raise RuntimeError(f"evicted (reason {head[EV_REASON]})")
        return status, reply

    async def login(self):
        body = (
            struct.pack("<I", 0x2C00)
            + wire_name("rust-sdk")
            + wire_name("0.11.0")
            + wire_name("iggy")
            + wire_name("iggy")
            + struct.pack("<I", 0)
        )
        status, reply = await self.call(OP_REGISTER, 0, body, checksummed=True)
        if status or struct.unpack_from("<I", reply)[0] != 0:
            raise RuntimeError(f"login failed: {status} {reply[:16]!r}")
        self.session = struct.unpack_from("<Q", reply, 8)[0]

    async def write_ok(self, operation: int, body: bytes):
        status, reply = await self.call(operation, 0, body, checksummed=True)
        if status or struct.unpack_from("<I", reply)[0] != 0:
            raise RuntimeError(f"operation {operation} failed: status {status}, {reply[:12].hex()}")

    def close(self):
        self.writer.close()


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


def report(name: str, elapsed: float, messages: int, payload: int, latencies: list[float]):
    print(
        f"{name:8s} {messages:>10,} msgs  {payload / 1e6:>8.1f} MB  {elapsed:>7.2f} s  "
        f"{payload / 1e6 / elapsed:>8.1f} MB/s  {messages / elapsed:>11,.0f} msgs/s  "
        f"p50 {percentile(latencies, 50) * 1e3:>7.2f} ms  p99 {percentile(latencies, 99) * 1e3:>7.2f} ms  "
        f"(per batch, mean {statistics.fmean(latencies) * 1e3:.2f} ms)"
    )


async def bench(args, port: int):
    client = await Client.connect(port)
    await client.login()
    await client.write_ok(OP_CREATE_STREAM, wire_name("bench"))
    options = (
        tlv(2, b"consumer_offset_durability")
        + tlv(2, b"replicated")
        + tlv(2, b"durability")
        + tlv(2, args.durability.encode())
    )
    await client.write_ok(OP_CREATE_TOPIC, numeric_id(0) + struct.pack("<I", 1) + wire_name("throughput") + options)

    # pre-built batches: a few distinct ones, reused round robin (the server re-stamps each)
    payload_size, per_batch = args.message_size, args.batch
    batches_total = max(1, round(args.total_mb * 1e6 / (payload_size * per_batch)))
    distinct = []
    for k in range(min(4, batches_total)):
        messages = [
            (random_id(), (f"{k}:{i}:".encode() + os.urandom(payload_size))[:payload_size], b"")
            for i in range(per_batch)
        ]
        batch = build_batch(messages)
        meta = numeric_id(0) + numeric_id(0) + b"\x02\x04" + struct.pack("<I", 0) + struct.pack("<I", per_batch)
        distinct.append(struct.pack("<I", len(meta)) + meta + batch)
    wire_mb = len(distinct[0]) * batches_total / 1e6
    print(
        f"{batches_total} batches x {per_batch} messages x {payload_size} bytes "
        f"({batches_total * per_batch * payload_size / 1e6:.0f} MB payload, {wire_mb:.0f} MB on the wire), "
        f"durability {args.durability}"
    )

    # produce
    latencies = []
    start = time.perf_counter()
    for n in range(batches_total):
        t0 = time.perf_counter()
        status, reply = await client.call(OP_SEND, 0, distinct[n % len(distinct)])
        latencies.append(time.perf_counter() - t0)
        if status:
            raise RuntimeError(f"send failed with {status}")
        base = struct.unpack_from("<Q", reply, 16)[0]
        if base != n * per_batch:
            raise RuntimeError(f"batch {n} got base offset {base}")
    produced = time.perf_counter() - start
    total_messages = batches_total * per_batch
    report("produce", produced, total_messages, total_messages * payload_size, latencies)

    # consume
    latencies, offset = [], 0
    start = time.perf_counter()
    while offset < total_messages:
        body = poll_body(1, 0, 0, 0, offset, per_batch)
        t0 = time.perf_counter()
        status, reply = await client.call(OP_READ, POLL_MESSAGES, body)
        latencies.append(time.perf_counter() - t0)
        if status:
            raise RuntimeError(f"poll failed with {status}")
        count = struct.unpack_from("<I", reply, 12)[0]
        if count == 0:
            raise RuntimeError(f"poll at {offset} returned nothing")
        offset += count
    consumed = time.perf_counter() - start
    report("consume", consumed, offset, offset * payload_size, latencies)
    client.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--total-mb", type=float, default=200, help="payload to produce (10^6 bytes)")
    parser.add_argument("--message-size", type=int, default=1000, help="payload bytes per message")
    parser.add_argument("--batch", type=int, default=1000, help="messages per send and per poll")
    parser.add_argument("--engine", default="auto", choices=("auto", "uring", "asyncio"))
    parser.add_argument("--durability", default="replicated", choices=("replicated", "persisted"))
    parser.add_argument("--data-dir", help="parent directory of the server's data (default: a temp dir)")
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="iggy-bench-", dir=args.data_dir)
    server = Server(args.engine, os.path.join(root, "data"))
    try:
        print(f"server: {server.engine_line()}; python {sys.version.split()[0]}; {os.cpu_count()} CPUs")
        asyncio.run(bench(args, server.port))
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
