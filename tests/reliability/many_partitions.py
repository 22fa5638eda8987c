"""Many single-partition topics: create time per topic as the count grows, restart, serve.

Creates N single-partition topics over raw TCP frames (4000 topics per stream: a stream holds
at most 4096), one request at a time, and reports at each checkpoint (1k, 10k, 50k, 100k,
and N) the mean, median, 90th percentile and maximum create time of the last `--window`
creates (the maximum is a metadata snapshot: one every system.metadata.snapshot_every
records, its size grows with the metadata), the server's RSS and its open descriptors
(/proc/<pid>/fd). Then a graceful restart (time until it accepts connections
again, RSS and descriptors after it) and a send + poll to `--probes` random partitions, each
checked for the message just sent; the same after a SIGKILL restart with `--kill`.

    python -m tests.reliability.many_partitions --topics 100000 [--engine uring|asyncio]
           [--window 500] [--probes 1000] [--kill] [--dir /path/to/scratch]

Prints one JSON document. The scratch directory is removed at the end unless --dir is given.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import time

import psutil

from tests.reliability.common import Client, Launcher, verify_batches

PER_STREAM = 4000
CHECKPOINTS = (1_000, 10_000, 50_000, 100_000)


def server_stats(server) -> dict:
    p = psutil.Process(server.proc.pid)
    return {"rss_mib": round(p.memory_info().rss / 2**20, 1), "fds": len(os.listdir(f"/proc/{p.pid}/fd"))}


def where(i: int) -> tuple[str, str]:
    return f"s{i // PER_STREAM}", f"t{i % PER_STREAM}"


def create(server, n: int, window: int) -> list[dict]:
    c = Client(server.tcp_address, timeout=60)
    marks = sorted({m for m in CHECKPOINTS if m <= n} | {n})
    rows, times = [], []
    for i in range(n):
        stream, topic = where(i)
        if i % PER_STREAM == 0:
            reply = c.create_stream(stream)
            assert reply.code == 0, reply
        t0 = time.perf_counter()
        reply = c.create_topic(stream, topic, 1)
        times.append(time.perf_counter() - t0)
        if reply.code != 0:
            raise AssertionError(f"create of topic {i} ({stream}/{topic}) failed: {reply}")
        if i + 1 in marks:
            last = sorted(times[-window:])
            rows.append(
                {
                    "topics": i + 1,
                    "create_ms_per_topic": round(1000 * sum(last) / len(last), 3),
                    "create_ms_p50": round(1000 * last[len(last) // 2], 3),
                    "create_ms_p90": round(1000 * last[len(last) * 9 // 10], 3),
                    "create_ms_max": round(1000 * last[-1], 3),
                    **server_stats(server),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    c.close()
    return rows


def probe(server, n: int, count: int, rng: random.Random, tag: str) -> dict:
    """Send one message to `count` random partitions and poll it back."""
    c = Client(server.tcp_address, timeout=60)
    t0 = time.perf_counter()
    for _ in range(count):
        i = rng.randrange(n)
        stream, topic = where(i)
        payload = f"{tag}:{i}:{rng.random()}".encode()
        reply, base = c.send(stream, topic, 0, [payload])
        assert reply.status == 0 and base is not None, (stream, topic, reply)
        reply = c.poll(stream, topic, 0, base, 1)
        assert reply.status == 0, (stream, topic, reply)
        got = verify_batches(reply.body[16:])
        assert [m["payload"] for m in got] == [payload], (stream, topic, got)
    elapsed = time.perf_counter() - t0
    c.close()
    return {"partitions_probed": count, "ms_per_send_and_poll": round(1000 * elapsed / count, 3)}


def restart(server, graceful: bool) -> dict:
    t0 = time.perf_counter()
    if graceful:
        server.stop(timeout=600)
    else:
        server.kill()
    stopped = time.perf_counter()
    server.start(timeout=1800)
    return {
        "stop_s": round(stopped - t0, 2),
        "start_s": round(time.perf_counter() - stopped, 2),
        **server_stats(server),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--topics", type=int, default=10_000)
    ap.add_argument("--window", type=int, default=500)
    ap.add_argument("--probes", type=int, default=1000)
    ap.add_argument("--engine", default=None)
    ap.add_argument("--kill", action="store_true", help="also a SIGKILL restart")
    ap.add_argument("--dir", default=None, help="scratch directory (kept)")
    args = ap.parse_args()
    rng = random.Random(1)
    launcher = Launcher(args.engine, {"IGGY_HTTP_ENABLED": "false"}, root=args.dir)
    out: dict = {"topics": args.topics, "engine": args.engine or os.environ.get("IGGY_TEST_ENGINE", "auto")}
    try:
        with launcher as server:
            out["idle"] = server_stats(server)
            t0 = time.perf_counter()
            out["create"] = create(server, args.topics, args.window)
            out["create_total_s"] = round(time.perf_counter() - t0, 1)
            out["probe_before_restart"] = probe(server, args.topics, args.probes, rng, "a")
            out["graceful_restart"] = restart(server, graceful=True)
            out["probe_after_restart"] = probe(server, args.topics, args.probes, rng, "b")
            if args.kill:
                out["kill_restart"] = restart(server, graceful=False)
                out["probe_after_kill"] = probe(server, args.topics, args.probes, rng, "c")
            out["server_log_errors"] = sum(1 for line in server.log().splitlines() if " ERROR " in line)
    finally:
        if args.dir is None:
            shutil.rmtree(launcher.tmp, ignore_errors=True)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
