"""Terminal output of iggy-bench: the rich progress bar and the result tables."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.progress import (
    Progress as RichProgress,
)
from rich.table import Table

from iggy.bench.metrics import group_metrics
from iggy.bench.runner import BenchReport, Progress

_GROUP_TITLES = {
    "producers": "Producers",
    "consumers": "Consumers",
    "producing_consumers": "Producing consumers",
    "producers_and_consumers": "Aggregate",
}


@contextlib.asynccontextmanager
async def progress_bar(progress: Progress, console: Console, enabled: bool = True) -> AsyncIterator[None]:
    """Show `progress` (messages done of total, MB/s) while the body runs; sampled 10x/s."""
    if not enabled:
        yield
        return
    bar = RichProgress(
        TextColumn("[bold]{task.description:<15}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("msgs"),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        refresh_per_second=10,
    )
    task_ids: dict[str, TaskID] = {}

    def on_phase(phase: str, total: int) -> None:
        for tid in task_ids.values():
            bar.update(tid, visible=False)
        task_ids[phase] = bar.add_task(phase, total=total or None, rate="")

    progress.listener = on_phase

    async def sample() -> None:
        while True:
            await asyncio.sleep(0.1)
            tid = task_ids.get(progress.phase)
            if tid is None:
                continue
            secs = max(time.perf_counter() - progress.started, 1e-9)
            bar.update(tid, completed=progress.done, rate=f"{progress.bytes / 1e6 / secs:8.1f} MB/s")

    with bar:
        sampler = asyncio.ensure_future(sample())
        try:
            yield
        finally:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
            progress.listener = None


def _ms(value: float) -> str:
    return f"{value:.3f}"


def _figures(row: dict[str, Any], throughput: str, emphasis: str = "{}") -> list[str]:
    """The table cells after the first two of an actor or group row; `throughput` is the prefix
    of its throughput keys, `emphasis` the markup around the two throughput cells."""
    return [
        f"{row['total_messages']:,}",
        f"{row['total_user_data_bytes'] / 1e6:.1f}",
        f"{row['total_time_secs']:.2f}",
        emphasis.format(f"{row[throughput + 'megabytes_per_second']:.1f}"),
        emphasis.format(f"{row[throughput + 'messages_per_second']:,.0f}"),
        *(_ms(row[f"{p}_latency_ms"]) for p in ("p50", "p90", "p95", "p99", "p999", "p9999")),
        _ms(row["avg_latency_ms"]),
        _ms(row["max_latency_ms"]),
    ]


def print_report(report: BenchReport, console: Console) -> None:
    """One line of parameters, then a table: every actor, then each group's totals."""
    cfg = report.config
    data = report.to_dict()
    actors = data["individual_metrics"]
    groups = group_metrics(report.actors)
    volume = (
        f"{cfg.total_data / 1e6:.1f} MB total"
        if cfg.total_data is not None
        else f"{cfg.message_batches or 1000} batches per actor"
    )
    partitions = cfg.partitions if cfg.kind.startswith("balanced") else 1
    console.print(
        f"[bold blue]Benchmark: {cfg.kind.replace('_', ' ')}[/], {cfg.producers} producers, "
        f"{cfg.consumers} consumers, {cfg.streams} streams, {partitions} partitions per topic, "
        f"{cfg.message_size} B per message, {cfg.messages_per_batch} messages per batch, {volume}, "
        f"durability {cfg.durability}, server {cfg.server_address}"
        + (f", rate limit {cfg.rate_limit / 1e6:.1f} MB/s" if cfg.rate_limit else "")
    )
    table = Table(show_lines=False, header_style="bold")
    for column in (
        "actor",
        "stream",
        "messages",
        "MB",
        "secs",
        "MB/s",
        "msgs/s",
        "p50 ms",
        "p90 ms",
        "p95 ms",
        "p99 ms",
        "p999 ms",
        "p9999 ms",
        "avg ms",
        "max ms",
    ):
        table.add_column(column, justify="left" if column in ("actor", "stream") else "right")
    for a in actors:
        title = f"{a['actor_kind'].replace('_', ' ')} {a['actor_id']}"
        table.add_row(title, a["stream"], *_figures(a, "throughput_"))
    table.add_section()
    for g in groups:
        title = f"[bold]{_GROUP_TITLES.get(g['kind'], g['kind'])}[/]"
        table.add_row(title, f"{g['actors']} actors", *_figures(g, "total_throughput_", "[bold]{}[/]"))
    console.print(table)
    console.print(
        "[dim]MB = 10^6 bytes of payload; latency per batch (send or poll round trip; consumers running "
        "beside producers: end to end from the batch's origin timestamp); group rows: wall-time totals and "
        "percentiles over all samples[/]"
    )
