"""Shared pieces of the reliability harnesses: a raw-frame client with the data-path calls,
a strict verifier of served batches, and a server launcher usable outside pytest.

`verify_batches(data)` walks concatenated batches as a poll returns them and recomputes every
checksum (the batch checksum with `compute_batch_checksum`, each message's XXH3-64 over its
frame bytes 8..end): a served message that does not verify raises `Corrupt`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import struct
import tempfile
import time
from pathlib import Path

from iggy._core.checksum import xxh3_64
from iggy.protocol import codes
from iggy.protocol.batch import build_batch, compute_batch_checksum
from tests.conftest import ServerProcess
from tests.rawclient import RawClient, ident, poll_body, wire_name

OP_CREATE_STREAM = codes.CODE_OPERATIONS[codes.CREATE_STREAM]
OP_DELETE_STREAM = codes.CODE_OPERATIONS[codes.DELETE_STREAM]
OP_CREATE_TOPIC = codes.CODE_OPERATIONS[codes.CREATE_TOPIC]
OP_SEND = codes.CODE_OPERATIONS[codes.SEND_MESSAGES]
CODE_POLL = codes.POLL_MESSAGES
CODE_GET_STREAMS = codes.GET_STREAMS

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


class Corrupt(AssertionError):
    """A served batch or message whose layout or checksum does not verify."""


def option(key: str, value: str) -> bytes:
    k, v = key.encode(), value.encode()
    return b"\x02" + _U32.pack(len(k)) + k + b"\x02" + _U32.pack(len(v)) + v


class Client(RawClient):
    """RawClient plus the calls the harnesses make; every reply is checked by the caller."""

    def __init__(self, address: str, timeout: float = 10.0, login: bool = True):
        super().__init__(address, timeout)
        self.client = int.from_bytes(os.urandom(16), "little") | 1
        if login:
            reply = self.login()
            if reply.command != 8 or reply.status:
                raise ConnectionError(f"login refused: {reply}")

    def create_stream(self, name: str):
        return self.call(OP_CREATE_STREAM, 0, wire_name(name))

    def delete_stream(self, stream):
        return self.call(OP_DELETE_STREAM, 0, ident(stream))

    def create_topic(self, stream, name: str, partitions: int, durability: str | None = None):
        body = ident(stream) + _U32.pack(partitions) + wire_name(name)
        if durability:
            body += option("durability", durability)
        return self.call(OP_CREATE_TOPIC, 0, body)

    def send_batch(self, stream, topic, partition: int, batch: bytes, count: int):
        meta = ident(stream) + ident(topic) + b"\x02\x04" + _U32.pack(partition) + _U32.pack(count)
        return self.call(OP_SEND, 0, _U32.pack(len(meta)) + meta + batch)

    def send(self, stream, topic, partition: int, payloads: list[bytes]):
        """Send one batch; returns (reply, base_offset or None)."""
        batch = build_batch([(int.from_bytes(os.urandom(16), "little") | 1, p, b"") for p in payloads])
        reply = self.send_batch(stream, topic, partition, batch, len(payloads))
        base = None
        if reply.command == 8 and reply.status == 0 and len(reply.body) >= 24:
            base = _U64.unpack_from(reply.body, 16)[0]
        return reply, base

    def poll(self, stream, topic, partition: int, offset: int, count: int, consumer: int = 1):
        return self.read(CODE_POLL, poll_body(stream, topic, partition, value=offset, count=count, consumer=consumer))

    def poll_all(self, stream, topic, partition: int, chunk: int = 10000) -> list[dict]:
        """Every message of a partition, verified; raises Corrupt or AssertionError."""
        out: list[dict] = []
        offset = 0
        while True:
            reply = self.poll(stream, topic, partition, offset, chunk)
            if reply.status:
                raise AssertionError(f"poll of {stream}/{topic}/{partition} at {offset} failed: {reply.status}")
            _pid, current, n = struct.unpack_from("<IQI", reply.body)
            messages = verify_batches(reply.body[16:])
            if len(messages) != n:
                raise Corrupt(f"poll said {n} messages, the batches hold {len(messages)}")
            out += messages
            if not n:
                return out
            offset = messages[-1]["offset"] + 1
            if offset > current:
                return out

    def stream_names(self) -> set[str]:
        reply = self.read(CODE_GET_STREAMS)
        if reply.status:
            raise AssertionError(f"get streams failed: {reply.status}")
        names, body, pos = set(), reply.body, 0
        while pos < len(body):
            pos += 4 + 8 + 4 + 8 + 8
            n = body[pos]
            names.add(body[pos + 1 : pos + 1 + n].decode())
            pos += 1 + n
            pos += 4 + _U32.unpack_from(body, pos)[0]
        return names


def verify_batches(data) -> list[dict]:
    """Messages of concatenated batches, each batch and message checksum recomputed.

    Yields dicts with offset, id, payload, timestamp. Raises Corrupt on any mismatch, a frame
    that does not fit, or non-contiguous offset deltas.
    """
    data = memoryview(bytes(data))
    out = []
    pos, n = 0, len(data)
    while pos < n:
        if n - pos < 256:
            raise Corrupt(f"{n - pos} trailing bytes are not a batch header")
        base_offset, base_ts, _origin, length, checksum = struct.unpack_from("<QQQQQ", data, pos + 8)
        count = _U32.unpack_from(data, pos + 48)[0]
        if length < 256 or pos + length > n:
            raise Corrupt(f"batch at {pos} has length {length}, {n - pos} bytes left")
        batch = data[pos : pos + length]
        if compute_batch_checksum(batch) != _U64.unpack_from(batch, 40)[0]:
            raise Corrupt(f"batch at offset {base_offset}: batch checksum mismatch")
        f = 256
        for i in range(count):
            if length - f < 48:
                raise Corrupt(f"batch at offset {base_offset}: frame {i} does not fit")
            msum, mid, odelta, _tdelta, hlen, plen = struct.unpack_from("<Q16sIIII", batch, f)
            flen = 48 + hlen + plen
            if f + flen > length:
                raise Corrupt(f"batch at offset {base_offset}: frame {i} runs past the batch")
            if xxh3_64(batch[f + 8 : f + flen]) != msum:
                raise Corrupt(f"message at offset {base_offset + odelta}: checksum mismatch")
            out.append(
                {
                    "offset": base_offset + odelta,
                    "id": int.from_bytes(mid, "little"),
                    "payload": bytes(batch[f + 48 : f + 48 + plen]),
                    "timestamp": base_ts,
                }
            )
            f += flen
        if f != length:
            raise Corrupt(f"batch at offset {base_offset}: {length - f} bytes after its last frame")
        pos += length
    return out


def check_contiguous(messages: list[dict], where: str) -> None:
    offsets = [m["offset"] for m in messages]
    if offsets != list(range(len(offsets))):
        first_bad = next(i for i, o in enumerate(offsets) if o != i)
        raise AssertionError(
            f"{where}: offsets not contiguous from 0 (index {first_bad} has offset {offsets[first_bad]})"
        )


class Launcher:
    """A ServerProcess in a scratch directory, for the long forms run outside pytest."""

    def __init__(self, engine: str | None = None, extra_env: dict | None = None, root: str | None = None):
        if engine:
            os.environ["IGGY_TEST_ENGINE"] = engine
        self.tmp = Path(root or tempfile.mkdtemp(prefix="iggy-reliability-"))
        self.server = ServerProcess(self.tmp / "data", extra_env=extra_env)

    def __enter__(self) -> ServerProcess:
        return self.server.start()

    def __exit__(self, *exc):
        self.server.stop()


def wait_port_closed(port: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        except OSError:
            return
        time.sleep(0.05)


def harness_arguments(doc: str) -> argparse.ArgumentParser:
    """The command line of a harness's long form: its docstring's first paragraph as the
    description, and --engine (the network engine of the server it starts; default: as
    IGGY_TEST_ENGINE says, else auto)."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--engine", choices=("auto", "uring", "asyncio"), default=None)
    return ap


def connect_or_none(address: str, client_cls=None):
    """A client for a harness worker thread, or None when the server is already down (killed
    before the worker got to connect)."""
    try:
        return (client_cls or Client)(address, timeout=5)
    except OSError:
        return None


@contextlib.contextmanager
def until_killed(c, also=()):
    """A worker's loop over its client `c`: the connection error of the kill (or one of `also`)
    ends it quietly; `c` is closed either way."""
    try:
        yield c
    except (OSError, ConnectionError, *also):
        pass
    finally:
        c.close()


def work_until_killed(address: str, stop, step, client_cls=None, also=()) -> None:
    """A harness worker thread: connects (connect_or_none; nothing to do when the server is
    already down), then calls `step(client)` over and over until `stop` is set or the kill
    ends the connection (until_killed, with `also`)."""
    c = connect_or_none(address, client_cls)
    if c is None:
        return
    with until_killed(c, also):
        while not stop.is_set():
            step(c)
