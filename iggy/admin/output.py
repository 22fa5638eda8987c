"""Printing for the `iggy` CLI: tables for people, JSON for scripts.

Tables are drawn with rich when it is installed (and `IGGY_CLI_TABLES` is not `plain`),
otherwise as plain ASCII boxes, so the CLI needs no dependency beyond the server package.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
from collections.abc import Iterable, Sequence
from typing import TextIO

U64_MAX = 0xFFFFFFFFFFFFFFFF


def _use_rich() -> bool:
    if os.environ.get("IGGY_CLI_TABLES", "").lower() == "plain":
        return False
    import importlib.util

    return importlib.util.find_spec("rich") is not None


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _plain_table(columns: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    cells = [[_cell(c) for c in columns]] + [[_cell(v) for v in row] for row in rows]
    split = [[c.split("\n") for c in row] for row in cells]
    widths = [max(len(line) for row in split for line in row[i]) for i in range(len(columns))]
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    out = [rule]
    for n, row in enumerate(split):
        height = max(len(c) for c in row)
        for k in range(height):
            out.append(
                "| "
                + " | ".join((c[k] if k < len(c) else "").ljust(w) for c, w in zip(row, widths, strict=False))
                + " |"
            )
        if n == 0:
            out.append(rule.replace("-", "="))
    out.append(rule)
    return "\n".join(out)


def table(columns: Sequence[str], rows: Iterable[Sequence[object]], stream: TextIO | None = None) -> None:
    """Print one table (columns: header names; rows: sequences of values)."""
    stream = stream or sys.stdout
    rows = list(rows)
    if _use_rich():
        from rich import box
        from rich.console import Console
        from rich.table import Table

        t = Table(box=box.SQUARE, show_lines=False)
        for c in columns:
            t.add_column(str(c), overflow="fold")
        for row in rows:
            t.add_row(*(_cell(v) for v in row))
        tty = stream.isatty()
        width = None if tty or os.environ.get("COLUMNS") else 240
        Console(file=stream, width=width, no_color=not tty, highlight=False, soft_wrap=False).print(t)
    else:
        print(_plain_table(columns, rows), file=stream)


def properties(pairs: Iterable[tuple[str, object]], stream: TextIO | None = None) -> None:
    """Print a two-column Property / Value table."""
    table(("Property", "Value"), pairs, stream)


def list_lines(rows: Iterable[Sequence[object]], stream: TextIO | None = None) -> None:
    """Upstream's `--list-mode list`: one `a|b|c` line per row."""
    stream = stream or sys.stdout
    for row in rows:
        print("|".join(_cell(v) for v in row), file=stream)


def emit_json(data: object, stream: TextIO | None = None) -> None:
    stream = stream or sys.stdout
    json.dump(data, stream, indent=2, sort_keys=False, ensure_ascii=False)
    stream.write("\n")


# --------------------------------------------------------------------------- formatting


def timestamp(us: int | None) -> str:
    """Microseconds since the epoch -> `YYYY-MM-DD HH:MM:SS` (UTC)."""
    if not us:
        return "-"
    dt = datetime.datetime.fromtimestamp(us / 1e6, tz=datetime.UTC)
    return dt.strftime("%Y-%m-%d %H:%M:%S")


def duration(us: int) -> str:
    """Microseconds -> `1day 2h 3min 4s` (humantime style)."""
    if us == U64_MAX:
        return "unlimited"
    if us == 0:
        return "server_default"
    seconds, micros = divmod(us, 1_000_000)
    parts = []
    for name, size in (("day", 86_400), ("h", 3600), ("min", 60), ("s", 1)):
        n, seconds = divmod(seconds, size)
        if n:
            parts.append(f"{n}{name}{'s' if name == 'day' and n > 1 else ''}")
    if micros:
        parts.append(f"{micros // 1000}ms" if micros % 1000 == 0 else f"{micros}us")
    return " ".join(parts) or "0s"


def size(n: int) -> str:
    """Bytes -> `10 GB`, `64 MiB`, `1.50 KiB` (exact decimal or binary units first)."""
    if n == U64_MAX:
        return "unlimited"
    if n == 0:
        return "0 B"
    units = (
        ("TiB", 1 << 40),
        ("TB", 10**12),
        ("GiB", 1 << 30),
        ("GB", 10**9),
        ("MiB", 1 << 20),
        ("MB", 10**6),
        ("KiB", 1 << 10),
        ("KB", 10**3),
    )
    for unit, factor in units:
        if n >= factor and n % factor == 0:
            return f"{n // factor} {unit}"
    for unit, factor in units[::2]:
        if n >= factor:
            return f"{n / factor:.2f} {unit}"
    return f"{n} B"
