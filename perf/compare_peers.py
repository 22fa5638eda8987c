"""Side by side: this server (uring and asyncio engines) against Redis Streams, one run.

    bash perf/setup_peers.sh                      # redis-server from Debian (once)
    python perf/compare_peers.py --scale 0.1      # 10 % of issue 4's volumes
    python perf/compare_peers.py --scale 1 --shapes W1,W5 --json out.json

Starts every peer itself, each on free loopback ports with a temporary data directory:

* `iggy-uring`, `iggy-asyncio`: `python -m iggy --with-default-root-credentials` with
  IGGY_SYSTEM_ENGINE=uring / asyncio;
* `redis`: `redis-server` without persistence (`--save "" --appendonly no`); for W3 a
  second one with `--appendonly yes --appendfsync always` (fsync before the reply, as
  our `persisted` topics).

and runs the workload shapes of issue 4 against each, shape by shape (all peers back to back
per shape, so a noisy minute hits all of them alike):

====  ================================================================================
W1    1 producer, 1000-byte messages, 1000 per batch, 1 GB x scale; then 1 consumer
      reads it back (offset polls of 1000)
W2    W1 with 100-byte messages
W3    W1's produce on a persisted topic (Redis: appendfsync always)
W4    2 producers on 2 streams, 1 GB x scale together
W5    10 messages of 1000 bytes per batch, 100,000 x scale batches, produce then consume
====  ================================================================================

Our side is `iggy.bench` (raw frames, batches encoded once and re-stamped). The Redis side
uses the same discipline: one connection per actor, a batch = one pipelined write of
`messages per batch` XADDs pre-encoded once (`XADD key * d <payload>`), acknowledged when
every reply has arrived; a poll = `XREAD COUNT <messages per batch> STREAMS key <last id>`.
Replies are scanned in C (`perf.resp.resp_skip` / `resp_xread`, perf/resp.pyx), so neither
client builds per-message Python objects. Latency = one batch (send or poll round trip).

Before every run the page cache is synced to disk (`os.sync()`, `--no-settle` skips it), so
no run pays for the writeback of the data an earlier one wrote.

The table gives each figure, issue 4's target, and ours/redis ratios (throughput: higher is
better; latency: lower is better).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from iggy.bench.client import connect
from iggy.bench.metrics import ActorMetrics, group_summary
from iggy.bench.runner import BenchConfig, run_benchmark
from perf.resp import RespError, resp_skip, resp_xread

GB = 10**9
SHAPES = ("W1", "W2", "W3", "W4", "W5")
PEERS = ("iggy-uring", "iggy-asyncio", "redis")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 30.0, ready=None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}")
        if ready is None or ready():
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                pass
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port} after {timeout}s")


class Process:
    """A child process with its own temp dir; stopped with SIGTERM (then SIGKILL)."""

    def __init__(self, name: str, root: str):
        self.name = name
        self.dir = os.path.join(root, name)
        os.makedirs(self.dir, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log_path = os.path.join(root, f"{name}.log")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    @property
    def pid(self) -> int:
        return self.proc.pid


class IggyServer(Process):
    def __init__(self, engine: str, root: str):
        super().__init__(f"iggy-{engine}", root)
        self.engine = engine

    def start(self) -> IggyServer:
        env = {k: v for k, v in os.environ.items() if not k.startswith("IGGY_")}
        env.update(
            {
                "IGGY_SYSTEM_PATH": os.path.join(self.dir, "data"),
                "IGGY_SYSTEM_ENGINE": self.engine,
                "IGGY_TCP_ADDRESS": f"127.0.0.1:{self.port}",
                "IGGY_HTTP_ADDRESS": f"127.0.0.1:{free_port()}",
                "IGGY_QUIC_ADDRESS": f"127.0.0.1:{free_port()}",
                "IGGY_WEBSOCKET_ADDRESS": f"127.0.0.1:{free_port()}",
                "PYTHONPATH": str(REPO),
            }
        )
        with open(self.log_path, "wb") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "iggy", "--with-default-root-credentials"],
                env=env,
                cwd=str(REPO),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        runtime = os.path.join(self.dir, "data", "runtime", "current_config.toml")
        wait_port(self.port, self.proc, ready=lambda: os.path.exists(runtime))
        text = Path(self.log_path).read_text(errors="replace")
        if f"engine: {self.engine}" not in text and f"({self.engine} engine)" not in text:
            time.sleep(1)
            text = Path(self.log_path).read_text(errors="replace")
            if f"({self.engine} engine)" not in text and f"engine: {self.engine}" not in text:
                raise RuntimeError(f"{self.name}: the server did not start the {self.engine} engine:\n{text[-2000:]}")
        return self

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


class RedisServer(Process):
    def __init__(self, root: str, fsync: bool):
        super().__init__("redis-aof" if fsync else "redis", root)
        self.fsync = fsync

    def start(self) -> RedisServer:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed: run perf/setup_peers.sh")
        args = [
            exe,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            self.dir,
            "--save",
            "",
            "--protected-mode",
            "no",
            "--daemonize",
            "no",
            "--io-threads",
            "1",
        ]
        args += ["--appendonly", "yes", "--appendfsync", "always"] if self.fsync else ["--appendonly", "no"]
        with open(self.log_path, "wb") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        wait_port(self.port, self.proc)
        return self


# --------------------------------------------------------------------------- Redis client


class _RespProtocol(asyncio.BufferedProtocol):
    """Receives into a growing buffer until `done(buf, filled)` says the reply is complete."""

    def __init__(self) -> None:
        self.buf = bytearray(1 << 16)
        self.view = memoryview(self.buf)
        self.filled = 0
        self.waiter: asyncio.Future | None = None
        self.done = None
        self.result = None
        self.closed_exc: BaseException | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        self.closed_exc = exc or ConnectionResetError("redis closed the connection")
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(self.closed_exc)

    def get_buffer(self, sizehint: int):
        if len(self.buf) - self.filled < 65536:
            grown = bytearray(len(self.buf) * 2)
            grown[: self.filled] = self.view[: self.filled]
            self.buf, self.view = grown, memoryview(grown)
        return self.view[self.filled :]

    def buffer_updated(self, nbytes: int) -> None:
        self.filled += nbytes
        # a reply can only be complete when the bytes so far end with CRLF: skip the scan
        # of a half-received 1 MB XREAD reply on every chunk
        if self.buf[self.filled - 1] != 10 or self.buf[self.filled - 2] != 13:
            return
        try:
            result = self.done(self.buf, self.filled)
        except RespError as exc:
            self.waiter.set_exception(exc)
            return
        if result is not None:
            self.result = result
            waiter, self.waiter = self.waiter, None
            waiter.set_result(None)


class RedisConnection:
    def __init__(self, transport, protocol: _RespProtocol):
        self.transport, self.protocol = transport, protocol
        self.loop = asyncio.get_running_loop()

    @classmethod
    async def open(cls, port: int) -> RedisConnection:
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_connection(_RespProtocol, "127.0.0.1", port)
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(transport, protocol)

    async def request(self, data, done):
        p = self.protocol
        if p.closed_exc is not None:
            raise p.closed_exc
        p.filled, p.done, p.result = 0, done, None
        p.waiter = self.loop.create_future()
        self.transport.write(data)
        await p.waiter
        return p.result

    async def command(self, *args: bytes):
        def one_reply(buf, n):
            pos = resp_skip(buf, n, 1)
            return pos if pos >= 0 else None

        return await self.request(resp_command(*args), one_reply)

    def close(self) -> None:
        self.transport.close()


def resp_command(*args: bytes) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


async def redis_produce(
    port: int, key: bytes, batches: int, message_size: int, per_batch: int, actor_id: int
) -> ActorMetrics:
    conn = await RedisConnection.open(port)
    noise = os.urandom(message_size * per_batch)
    pipeline = b"".join(
        resp_command(b"XADD", key, b"*", b"d", noise[i * message_size : (i + 1) * message_size])
        for i in range(per_batch)
    )

    def acked(buf, n):
        pos = resp_skip(buf, n, per_batch)
        return pos if pos >= 0 else None

    m = ActorMetrics("producer", actor_id, key.decode())
    perf = time.perf_counter
    user_bytes = message_size * per_batch
    m.start = perf()
    for _ in range(batches):
        t0 = perf()
        await conn.request(pipeline, acked)
        m.record(perf() - t0, per_batch, user_bytes, len(pipeline))
    m.end = perf()
    conn.close()
    return m


async def redis_consume(port: int, key: bytes, messages: int, per_batch: int, actor_id: int) -> ActorMetrics:
    conn = await RedisConnection.open(port)
    m = ActorMetrics("consumer", actor_id, key.decode())
    perf = time.perf_counter
    last = b"0-0"
    count = str(per_batch).encode()

    def scanned(buf, n):
        return resp_xread(buf, n)

    m.start = perf()
    while m.messages < messages:
        t0 = perf()
        consumed, entries, last_id, values = await conn.request(
            resp_command(b"XREAD", b"COUNT", count, b"STREAMS", key, last), scanned
        )
        latency = perf() - t0
        if not entries:
            raise RuntimeError(f"redis: no entries after {last!r}")
        m.record(latency, entries, values, consumed)
        last = last_id
    m.end = perf()
    conn.close()
    return m


# --------------------------------------------------------------------------- shapes


def shape_params(shape: str, scale: float) -> dict:
    volume = max(1, int(GB * scale))
    if shape == "W1":
        return dict(message_size=1000, per_batch=1000, total=volume, producers=1, consume=True, persisted=False)
    if shape == "W2":
        return dict(message_size=100, per_batch=1000, total=volume, producers=1, consume=True, persisted=False)
    if shape == "W3":
        return dict(message_size=1000, per_batch=1000, total=volume, producers=1, consume=False, persisted=True)
    if shape == "W4":
        return dict(message_size=1000, per_batch=1000, total=volume, producers=2, consume=False, persisted=False)
    if shape == "W5":
        batches = max(10, int(100_000 * scale))
        return dict(
            message_size=1000,
            per_batch=10,
            total=batches * 10 * 1000,
            producers=1,
            consume=True,
            persisted=False,
        )
    raise ValueError(shape)


def _summary(metrics: list[ActorMetrics], kind: str) -> dict:
    g = group_summary(kind, metrics)
    return {
        "mb_s": g["total_throughput_megabytes_per_second"],
        "msgs_s": g["total_throughput_messages_per_second"],
        "p50_ms": g["p50_latency_ms"],
        "p99_ms": g["p99_latency_ms"],
        "p999_ms": g["p999_latency_ms"],
        "messages": g["total_messages"],
        "secs": g["total_time_secs"],
    }


async def run_iggy(address: str, shape: str, p: dict) -> dict:
    prefix = f"peer-{shape.lower()}-"
    common = dict(
        server_address=address,
        message_size=p["message_size"],
        messages_per_batch=p["per_batch"],
        total_data=p["total"],
        streams=p["producers"],
        stream_prefix=prefix,
        durability="persisted" if p["persisted"] else "replicated",
    )
    out = {}
    report = await run_benchmark(BenchConfig(kind="pinned_producer", producers=p["producers"], keep=True, **common))
    out["produce"] = _summary(report.actors, "producers")
    try:
        if p["consume"]:
            report = await run_benchmark(BenchConfig(kind="pinned_consumer", consumers=p["producers"], **common))
            out["consume"] = _summary(report.actors, "consumers")
    finally:
        admin = await connect(address, "iggy", "iggy")
        try:
            for i in range(1, p["producers"] + 1):
                stream = await admin.get_stream(f"{prefix}{i}")
                if stream is not None:
                    await admin.delete_stream(stream["id"])
        finally:
            admin.close()
    return out


async def run_redis(port: int, shape: str, p: dict) -> dict:
    keys = [f"peer-{shape.lower()}-{i}".encode() for i in range(1, p["producers"] + 1)]
    batches_total = max(1, -(-p["total"] // (p["message_size"] * p["per_batch"])))
    shares = [batches_total // len(keys) + (1 if i < batches_total % len(keys) else 0) for i in range(len(keys))]
    out = {}
    produced = await asyncio.gather(
        *(
            redis_produce(port, k, n, p["message_size"], p["per_batch"], i + 1)
            for i, (k, n) in enumerate(zip(keys, shares, strict=True))
        )
    )
    out["produce"] = _summary(list(produced), "producers")
    if p["consume"]:
        consumed = await asyncio.gather(
            *(
                redis_consume(port, k, n * p["per_batch"], p["per_batch"], i + 1)
                for i, (k, n) in enumerate(zip(keys, shares, strict=True))
            )
        )
        out["consume"] = _summary(list(consumed), "consumers")
    admin = await RedisConnection.open(port)
    await admin.command(b"FLUSHALL")
    admin.close()
    return out


# --------------------------------------------------------------------------- table

TARGETS = {
    # (shape, phase, metric): (comparison, value, label)
    ("W1", "produce", "mb_s"): (">=", 1500, "≥ 1500 MB/s"),
    ("W1", "consume", "mb_s"): (">=", 3000, "≥ 3000 MB/s"),
    ("W1", "produce", "p99_ms"): ("<=", 2.0, "≤ 2 ms"),
    ("W1", "consume", "p99_ms"): ("<=", 2.0, "≤ 2 ms"),
    ("W2", "produce", "msgs_s"): (">=", 3_000_000, "≥ 3 M/s"),
    ("W2", "consume", "msgs_s"): (">=", 5_000_000, "≥ 5 M/s"),
    ("W3", "produce", "mb_s"): (">=", 600, "≥ 600 MB/s"),
    ("W3", "produce", "p99_ms"): ("<=", 5.0, "≤ 5 ms"),
    ("W4", "produce", "mb_s"): (">=", None, "≥ 1.2 × W1"),
    ("W5", "produce", "p50_ms"): ("<=", 0.08, "≤ 0.08 ms"),
    ("W5", "produce", "p99_ms"): ("<=", 0.15, "≤ 0.15 ms"),
}

ROWS = [
    ("W1", "produce", "mb_s"),
    ("W1", "produce", "p99_ms"),
    ("W1", "consume", "mb_s"),
    ("W1", "consume", "p99_ms"),
    ("W2", "produce", "msgs_s"),
    ("W2", "produce", "p99_ms"),
    ("W2", "consume", "msgs_s"),
    ("W2", "consume", "p99_ms"),
    ("W3", "produce", "mb_s"),
    ("W3", "produce", "p99_ms"),
    ("W4", "produce", "mb_s"),
    ("W4", "produce", "p99_ms"),
    ("W5", "produce", "p50_ms"),
    ("W5", "produce", "p99_ms"),
    ("W5", "consume", "p50_ms"),
    ("W5", "consume", "p99_ms"),
]

UNITS = {"mb_s": "MB/s", "msgs_s": "msgs/s", "p50_ms": "p50 ms", "p99_ms": "p99 ms"}


def _fmt(metric: str, value: float | None) -> str:
    if value is None:
        return "-"
    if metric == "msgs_s":
        return f"{value / 1e6:.2f} M"
    if metric == "mb_s":
        return f"{value:.0f}"
    return f"{value:.3f}"


def _met(results: dict, peer: str, shape: str, phase: str, metric: str) -> str:
    target = TARGETS.get((shape, phase, metric))
    value = results.get(shape, {}).get(peer, {}).get(phase, {}).get(metric)
    if target is None or value is None:
        return ""
    op, limit, _ = target
    if limit is None:  # W4: relative to W1 of the same peer
        w1 = results.get("W1", {}).get(peer, {}).get("produce", {}).get("mb_s")
        if w1 is None:
            return "?"
        limit = 1.2 * w1
    ok = value >= limit if op == ">=" else value <= limit
    return "yes" if ok else "no"


def render_table(results: dict, peers: list[str]) -> str:
    ours = [p for p in peers if p.startswith("iggy")]
    head = ["shape", "phase", "metric", "target", *peers]
    head += [f"{p.removeprefix('iggy-')}/redis" for p in ours if "redis" in peers]
    head += [f"met ({p.removeprefix('iggy-')})" for p in ours]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for shape, phase, metric in ROWS:
        if shape not in results:
            continue
        values = {p: results[shape].get(p, {}).get(phase, {}).get(metric) for p in peers}
        if all(v is None for v in values.values()):
            continue
        target = TARGETS.get((shape, phase, metric), (None, None, ""))[2]
        row = [shape, phase, UNITS[metric], target] + [_fmt(metric, values[p]) for p in peers]
        if "redis" in peers:
            for p in ours:
                v, r = values[p], values["redis"]
                row.append(f"{v / r:.2f}" if v is not None and r else "-")
        row += [_met(results, p, shape, phase, metric) for p in ours]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def _median_run(runs: list[dict]) -> dict:
    """Per phase and metric, the median over repeated runs."""
    out: dict = {}
    for phase in runs[0]:
        out[phase] = {k: statistics.median(r[phase][k] for r in runs) for k in runs[0][phase]}
    return out


def _settle() -> None:
    """Start each run on a quiet disk: the writeback of what earlier runs wrote (gigabytes of
    dirty page cache) otherwise competes for the two CPUs and the disk with the next run, and
    hits whichever peer happens to come next."""
    os.sync()
    time.sleep(0.5)


async def run_all(args, peers: dict) -> dict:
    results: dict = {}
    for shape in args.shapes:
        p = shape_params(shape, args.scale)
        results[shape] = {}
        for name in args.peers:
            runs = []
            for _ in range(args.repeat):
                if args.settle:
                    _settle()
                t0 = time.perf_counter()
                if name.startswith("iggy"):
                    runs.append(await run_iggy(peers[name].address, shape, p))
                else:
                    server = peers["redis-aof"] if p["persisted"] else peers["redis"]
                    runs.append(await run_redis(server.port, shape, p))
                print(
                    f"  {shape} {name:<13} {time.perf_counter() - t0:6.1f} s  "
                    + "  ".join(
                        f"{ph}: {r['mb_s']:.0f} MB/s {r['msgs_s'] / 1e6:.2f} M msgs/s "
                        f"p50 {r['p50_ms']:.3f} p99 {r['p99_ms']:.3f} ms"
                        for ph, r in runs[-1].items()
                    ),
                    flush=True,
                )
            results[shape][name] = _median_run(runs)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=0.1, help="fraction of issue 4's 1 GB volumes (0.1)")
    parser.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated subset of W1..W5")
    parser.add_argument("--peers", default=",".join(PEERS), help="comma-separated subset of " + ",".join(PEERS))
    parser.add_argument("--repeat", type=int, default=1, help="runs per shape and peer; the median is kept")
    parser.add_argument(
        "--no-settle", dest="settle", action="store_false", help="do not sync the page cache to disk before each run"
    )
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--data-dir", help="parent of the temp directories (default: the system temp dir)")
    args = parser.parse_args(argv)
    args.shapes = [s.strip().upper() for s in args.shapes.split(",") if s.strip()]
    args.peers = [s.strip() for s in args.peers.split(",") if s.strip()]
    if not set(args.shapes) <= set(SHAPES) or not set(args.peers) <= set(PEERS):
        parser.error("unknown shape or peer")

    root = tempfile.mkdtemp(prefix="iggy-peers-", dir=args.data_dir)
    peers: dict = {}
    try:
        if "iggy-uring" in args.peers:
            peers["iggy-uring"] = IggyServer("uring", root).start()
        if "iggy-asyncio" in args.peers:
            peers["iggy-asyncio"] = IggyServer("asyncio", root).start()
        if "redis" in args.peers:
            peers["redis"] = RedisServer(root, fsync=False).start()
            if "W3" in args.shapes:
                peers["redis-aof"] = RedisServer(root, fsync=True).start()
        print(
            "peers: "
            + ", ".join(f"{n} pid {p.pid} port {p.port}" for n, p in peers.items())
            + f"; scale {args.scale}; {os.cpu_count()} CPUs",
            flush=True,
        )
        started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        try:
            import uvloop

            results = uvloop.run(run_all(args, peers))
        except ImportError:
            results = asyncio.run(run_all(args, peers))
    finally:
        for p in peers.values():
            p.stop()
        shutil.rmtree(root, ignore_errors=True)
    print()
    print(
        f"date {started}; scale {args.scale}; {os.cpu_count()} CPUs; redis "
        + (
            subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.split()[2]
            if shutil.which("redis-server")
            else "-"
        )
    )
    print(render_table(results, args.peers))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(
                {
                    "date": started,
                    "scale": args.scale,
                    "cpus": os.cpu_count(),
                    "shapes": args.shapes,
                    "params": {s: shape_params(s, args.scale) for s in args.shapes},
                    "results": results,
                },
                fh,
                indent=2,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
