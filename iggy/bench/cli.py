"""Command line of iggy-bench (upstream's shape: global options, kind, kind options, transport).

    iggy-bench [options] KIND [kind options] [tcp [--server-address HOST:PORT]]

Exit status: 0 on success, 1 when the run failed (server error, connection), 2 on bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Coroutine
from typing import Any

from iggy import units
from iggy.bench.client import BenchError
from iggy.bench.runner import BenchConfig, BenchReport, Progress, run_benchmark

# kind name -> (canonical kind, aliases, defaults)
KIND_COMMANDS = {
    "pinned-producer": ("pinned_producer", ["pp"]),
    "pinned-consumer": ("pinned_consumer", ["pc"]),
    "pinned-producer-and-consumer": ("pinned_producer_and_consumer", ["ppc"]),
    "balanced-producer": ("balanced_producer", ["bp"]),
    "balanced-consumer-group": ("balanced_consumer_group", ["bcg"]),
    "end-to-end-producing-consumer": ("end_to_end_producing_consumer", ["e2e", "end-to-end"]),
}


def parse_size(text: str) -> int:
    """'1GB' (10^9), '1GiB' (2^30), '500MB', '4096' (bytes) -> bytes."""
    try:
        return units.parse_size(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 500MB, 1GiB, 4096)") from None


def parse_duration(text: str) -> float:
    """'10s', '500ms', '2m', '0' -> seconds."""
    try:
        return units.parse_duration(text) / 1_000_000
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 10s, 500ms, 1m)") from None


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _add_transport(kind_parser: argparse.ArgumentParser) -> None:
    sub = kind_parser.add_subparsers(dest="transport", metavar="TRANSPORT")
    tcp = sub.add_parser("tcp", help="the binary TCP protocol (the only transport here)")
    tcp.add_argument("--server-address", dest="tcp_server_address", help="HOST:PORT of the server")
    tcp.add_argument("--nodelay", action="store_true", help="accepted for compatibility: TCP_NODELAY is always on")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="iggy-bench",
        description="Load generator for Iggy servers (this server or Apache Iggy): producers, consumers and "
        "consumer groups over raw TCP frames, with throughput and latency percentiles.",
        epilog="Example: iggy-bench --total-data 1GB --message-size 1000 pinned-producer --producers 2 tcp "
        "--server-address 127.0.0.1:8090",
    )
    g = parser.add_argument_group("workload")
    g.add_argument("-m", "--message-size", type=_positive, default=1000, help="payload bytes per message (1000)")
    g.add_argument(
        "-P",
        "--messages-per-batch",
        type=_positive,
        default=1000,
        help="messages per send and per poll (1000)",
    )
    volume = g.add_mutually_exclusive_group()
    volume.add_argument("-b", "--message-batches", type=_positive, help="batches per actor (default 1000)")
    volume.add_argument("-T", "--total-data", type=parse_size, help="payload of all actors together, e.g. 1GB")
    g.add_argument("-r", "--rate-limit", type=parse_size, help="total payload rate limit per second, e.g. 100MB")
    g.add_argument("-w", "--warmup-time", type=parse_duration, default=0.0, help="unmeasured warmup, e.g. 5s (0)")
    g.add_argument(
        "--durability",
        choices=("replicated", "persisted"),
        default="replicated",
        help="durability of the topics created; persisted = fsync before the ack",
    )
    g.add_argument("--fsync", action="store_true", help="same as --durability persisted")
    c = parser.add_argument_group("connection and output")
    c.add_argument("--server-address", default="127.0.0.1:8090", help="HOST:PORT (127.0.0.1:8090)")
    c.add_argument("-u", "--username", default="iggy", help="(iggy)")
    c.add_argument("-p", "--password", default="iggy", help="(iggy)")
    c.add_argument("--json", metavar="PATH", help="write the full report as JSON to PATH ('-' = stdout)")
    c.add_argument("--keep", action="store_true", help="keep the bench streams (default: delete what was created)")
    c.add_argument(
        "--reuse-streams",
        action="store_true",
        help="write into existing bench streams instead of recreating them",
    )
    c.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    kinds = parser.add_subparsers(dest="kind_command", metavar="KIND", required=True)
    for name, (_, aliases) in KIND_COMMANDS.items():
        k = kinds.add_parser(name, aliases=aliases, help=name.replace("-", " "))
        k.add_argument("-s", "--streams", type=_positive, help="number of streams")
        if name in ("pinned-producer", "pinned-producer-and-consumer", "balanced-producer"):
            k.add_argument("-p", "--producers", type=_positive, default=8, help="(8)")
        if name == "end-to-end-producing-consumer":
            k.add_argument("-p", "--producing-consumers", dest="producers", type=_positive, default=8, help="(8)")
        if name in ("pinned-consumer", "pinned-producer-and-consumer", "balanced-consumer-group"):
            k.add_argument("-c", "--consumers", type=_positive, default=8, help="(8)")
        if name in ("balanced-producer", "balanced-consumer-group"):
            k.add_argument("-a", "--partitions", type=_positive, default=24, help="partitions per topic (24)")
        if name == "balanced-consumer-group":
            k.add_argument("-g", "--consumer-groups", type=_positive, default=1, help="one per stream (1)")
        _add_transport(k)
    return parser


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    name = next(n for n, (_, aliases) in KIND_COMMANDS.items() if args.kind_command in (n, *aliases))
    kind = KIND_COMMANDS[name][0]
    producers = getattr(args, "producers", 0) or 0
    consumers = getattr(args, "consumers", 0) or 0
    streams = args.streams
    if streams is None:
        streams = {
            "pinned_producer": producers,
            "pinned_consumer": consumers,
            "pinned_producer_and_consumer": producers,
            "end_to_end_producing_consumer": producers,
        }.get(kind, 1)
    return BenchConfig(
        kind=kind,
        server_address=getattr(args, "tcp_server_address", None) or args.server_address,
        username=args.username,
        password=args.password,
        message_size=args.message_size,
        messages_per_batch=args.messages_per_batch,
        message_batches=args.message_batches,
        total_data=args.total_data,
        rate_limit=args.rate_limit,
        warmup_secs=args.warmup_time,
        producers=producers,
        consumers=consumers,
        streams=streams,
        partitions=getattr(args, "partitions", 1),
        consumer_groups=getattr(args, "consumer_groups", 0) or 0,
        durability="persisted" if args.fsync else args.durability,
        keep=args.keep,
        reuse_streams=args.reuse_streams,
    )


async def _run(cfg: BenchConfig, show_progress: bool) -> BenchReport:
    from rich.console import Console

    from iggy.bench.report import progress_bar

    progress = Progress()
    async with progress_bar(progress, Console(stderr=True), enabled=show_progress):
        return await run_benchmark(cfg, progress)


def _run_loop(coro: Coroutine[Any, Any, BenchReport]) -> BenchReport:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    try:
        cfg.validate()
    except ValueError as exc:
        parser.error(str(exc))
    from rich.console import Console

    console = Console()
    if not console.is_terminal:  # a file or a pipe: room for the whole table
        console = Console(width=180)
    show_progress = not args.quiet and sys.stderr.isatty()
    try:
        report = _run_loop(_run(cfg, show_progress))
    except (BenchError, OSError) as exc:
        print(f"iggy-bench: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("iggy-bench: interrupted", file=sys.stderr)
        return 130
    from iggy.bench.report import print_report

    if args.json:
        text = json.dumps(report.to_dict(), indent=2)
        if args.json == "-":
            print(text)
            return 0
        with open(args.json, "w") as fh:
            fh.write(text + "\n")
    print_report(report, console)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
