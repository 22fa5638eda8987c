"""Raw-socket fuzz of a live server: random and mutated frames on many connections at once.

Each worker opens connections one after another and, per connection, does one of:

* random bytes (any length, sometimes a plausible 256-byte header with a random size field);
* valid requests of random commands (tests/reliability/commands.py) with mutated headers
  (size, command byte, operation, session, request number, request checksum) or mutated
  bodies, before or after a real login;
* frames cut into random chunks with pauses, half-sent frames, oversized size fields,
  pipelined bursts without reading, abrupt closes (RST) mid-frame.

Replies are read with a short timeout or not at all. The server must stay up: afterwards the
official SDK connects, logs in, creates a stream and topic, sends and polls messages, and the
server log holds no traceback. Long form: `python -m tests.reliability.socket_fuzz --inputs
200000 --connections 64`.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import struct
import time

from iggy.protocol import codes
from iggy.protocol.wire import build_request
from tests.conftest import sdk_poll
from tests.rawclient import login_body
from tests.reliability import commands as C
from tests.reliability.common import Launcher, harness_arguments

U32 = struct.Struct("<I")


class Stats:
    def __init__(self):
        self.inputs = 0
        self.connections = 0
        self.bytes = 0
        self.replies = 0
        self.closed_by_server = 0


async def _read_some(reader: asyncio.StreamReader, stats: Stats, timeout: float) -> bool:
    """Read replies until the timeout; False when the server closed the connection."""
    try:
        while True:
            data = await asyncio.wait_for(reader.read(65536), timeout)
            if not data:
                stats.closed_by_server += 1
                return False
            stats.replies += 1
    except (TimeoutError, ConnectionError, OSError):
        return True


async def _login(reader, writer) -> int:
    writer.write(build_request(1, 0, login_body("iggy", "iggy"), client=7, with_checksum=True))
    await writer.drain()
    head = await asyncio.wait_for(reader.readexactly(256), 10)
    size = U32.unpack_from(head, 48)[0]
    body = await asyncio.wait_for(reader.readexactly(size - 256), 10)
    return struct.unpack_from("<Q", body, 8)[0] if head[60] == 8 and len(body) >= 16 else 0


def _valid_frame(rng: random.Random, world: C.World, session: int, request: int) -> bytes:
    cmd = rng.choice(C.COMMANDS)
    body = cmd.body(world)
    return build_request(
        cmd.op,
        cmd.code if cmd.op == 2 else 0,
        body,
        session=session,
        request=request,
        client=rng.randrange(1, 2**64),
        with_checksum=cmd.op in codes.CHECKSUMMED_OPS,
    )


def _mutate(rng: random.Random, frame: bytes, max_frame: int) -> bytes:
    f = bytearray(frame)
    choice = rng.randrange(9)
    if choice == 0:  # size field
        U32.pack_into(
            f,
            48,
            rng.choice(
                [
                    0,
                    1,
                    255,
                    256,
                    len(f) - 1,
                    len(f) + 1,
                    len(f) + 1000,
                    max_frame,
                    max_frame + 1,
                    2**31,
                    2**32 - 1,
                    rng.randrange(2**32),
                ]
            ),
        )
    elif choice == 1:  # command byte
        f[60] = rng.randrange(256)
    elif choice == 2:  # operation
        f[176] = rng.randrange(256)
    elif choice == 3:  # session / request numbers
        struct.pack_into("<Q", f, rng.choice([168, 184]), rng.randrange(2**64))
    elif choice == 4:  # request checksum
        struct.pack_into("<Q", f, 144, rng.randrange(2**64))
    elif choice == 5:  # code
        U32.pack_into(f, 196, rng.choice([0, 2, 9999, rng.randrange(2**32)] + [c.code for c in C.COMMANDS]))
    elif choice == 6 and len(f) > 256:  # body bytes
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(256, len(f))
            f[i] = rng.randrange(256)
    elif choice == 7 and len(f) > 256:  # body cut, size fixed up
        cut = rng.randrange(256, len(f))
        del f[cut:]
        U32.pack_into(f, 48, len(f))
    else:  # body extended, size fixed up
        f += os.urandom(rng.randrange(1, 64))
        U32.pack_into(f, 48, len(f))
    return bytes(f)


async def one_connection(address, rng: random.Random, world: C.World, stats: Stats, max_frame: int) -> None:
    host, port = address
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
    except (TimeoutError, OSError):
        await asyncio.sleep(0.05)
        return
    stats.connections += 1
    sock = writer.get_extra_info("socket")
    try:
        session = 0
        if rng.random() < 0.5:
            session = await _login(reader, writer)
        mode = rng.randrange(7)
        request = 1
        frames = []
        for _ in range(rng.randint(1, 12)):
            if mode == 0:
                frames.append(os.urandom(rng.randrange(1, 2048)))
            elif mode == 1:
                head = bytearray(os.urandom(256))
                head[60] = 5
                U32.pack_into(head, 48, rng.choice([256, 300, 4096, rng.randrange(256, 70000)]))
                frames.append(bytes(head) + os.urandom(rng.randrange(0, 512)))
            elif mode in (2, 3):
                frames.append(_mutate(rng, _valid_frame(rng, world, session, request), max_frame))
            else:
                frames.append(_valid_frame(rng, world, session, request))
            request += 1
        data = b"".join(frames)
        stats.inputs += len(frames)
        stats.bytes += len(data)
        if mode == 4:  # cut into chunks with pauses
            pos = 0
            while pos < len(data):
                n = rng.randint(1, 300)
                writer.write(data[pos : pos + n])
                await writer.drain()
                pos += n
                if rng.random() < 0.1:
                    await asyncio.sleep(0.001)
        elif mode == 5:  # half a frame, then an abrupt close (RST)
            writer.write(data[: rng.randrange(1, len(data) + 1)])
            await writer.drain()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return
        else:
            writer.write(data)
            await writer.drain()
        if rng.random() < 0.8:
            await _read_some(reader, stats, 0.02)
    except (TimeoutError, ConnectionError, OSError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()
        try:
            await asyncio.wait_for(writer.wait_closed(), 1)
        except (TimeoutError, ConnectionError, OSError):
            pass


async def fuzz(
    address, inputs: int, connections: int, seed: int, world: C.World, max_frame: int, time_limit: float | None = None
) -> Stats:
    stats = Stats()
    started = time.monotonic()

    async def worker(i: int):
        rng = random.Random(seed * 1000 + i)
        while stats.inputs < inputs and (time_limit is None or time.monotonic() - started < time_limit):
            await one_connection(address, rng, world, stats, max_frame)

    await asyncio.gather(*(worker(i) for i in range(connections)))
    return stats


async def sdk_check(address: str) -> None:
    """The server still serves: the official SDK does a full round trip."""
    from apache_iggy import IggyClient, PollingStrategy, SendMessage

    client = IggyClient(address)
    await client.connect()
    await client.login_user("iggy", "iggy")
    await client.ping()
    name = f"after-fuzz-{os.getpid()}-{time.monotonic_ns()}"
    await client.create_stream(name)
    await client.create_topic(name, "t", 1)
    await client.send_messages(name, "t", 0, [SendMessage(f"m{i}") for i in range(10)])
    got = await sdk_poll(client, name, "t", PollingStrategy.First())
    assert [m.payload() for m in got] == [f"m{i}".encode() for i in range(10)]


def run(server, inputs: int, connections: int, seed: int, time_limit: float | None = None) -> dict:
    from tests.reliability.permissions import Matrix

    m = Matrix(server)  # builds the world the valid frames refer to
    world = m.world
    m.close()
    max_frame = 64 * 1024 * 1024
    started = time.monotonic()
    stats = asyncio.run(fuzz(("127.0.0.1", server.tcp_port), inputs, connections, seed, world, max_frame, time_limit))
    elapsed = time.monotonic() - started
    if not server.alive():
        raise AssertionError("the server died:\n" + server.log()[-3000:])
    asyncio.run(sdk_check(server.tcp_address))
    if "Traceback" in server.log():
        raise AssertionError("the server log has a traceback:\n" + server.log()[-3000:])
    return {
        "inputs": stats.inputs,
        "connections": stats.connections,
        "bytes": stats.bytes,
        "reads_with_data": stats.replies,
        "closed_by_server": stats.closed_by_server,
        "seconds": round(elapsed, 1),
        "server_alive": True,
        "sdk_round_trip": True,
    }


def main(argv=None) -> None:
    ap = harness_arguments(__doc__)
    ap.add_argument("--inputs", type=int, default=100_000)
    ap.add_argument("--connections", type=int, default=64, help="concurrent connections")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--time-limit", type=float, default=None)
    args = ap.parse_args(argv)
    with Launcher(args.engine) as server:
        stats = run(server, args.inputs, args.connections, args.seed, args.time_limit)
    stats["engine"] = args.engine or os.environ.get("IGGY_TEST_ENGINE", "auto")
    print(json.dumps(stats, indent=2))


if __name__ == "__main__":
    main()
