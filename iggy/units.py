"""Units of human-readable durations and sizes, as Apache Iggy writes them in its config.

    parse_duration("1m 30s") -> 90_000_000   microseconds (humantime's unit names)
    parse_size("64 MiB")     -> 67_108_864   bytes (KB = 1000, KiB = 1024)

The configuration converts its duration and size keys once, at load (iggy.config); these are
also used for text that arrives at run time: topic options, the admin CLI's arguments.
"""

from __future__ import annotations

import re
from fractions import Fraction

_SECOND = 1_000_000
_DURATION_UNITS: dict[str, int | Fraction] = {  # humantime's unit names, lower case; values in microseconds
    "ns": Fraction(1, 1000),
    "nsec": Fraction(1, 1000),
    "us": 1,
    "µs": 1,
    "usec": 1,
    "ms": 1_000,
    "msec": 1_000,
    "s": _SECOND,
    "sec": _SECOND,
    "secs": _SECOND,
    "second": _SECOND,
    "seconds": _SECOND,
    "m": 60 * _SECOND,
    "min": 60 * _SECOND,
    "mins": 60 * _SECOND,
    "minute": 60 * _SECOND,
    "minutes": 60 * _SECOND,
    "h": 3600 * _SECOND,
    "hr": 3600 * _SECOND,
    "hrs": 3600 * _SECOND,
    "hour": 3600 * _SECOND,
    "hours": 3600 * _SECOND,
    "d": 86_400 * _SECOND,
    "day": 86_400 * _SECOND,
    "days": 86_400 * _SECOND,
    "w": 604_800 * _SECOND,
    "week": 604_800 * _SECOND,
    "weeks": 604_800 * _SECOND,
    "month": 2_630_016 * _SECOND,
    "months": 2_630_016 * _SECOND,
    "y": 31_557_600 * _SECOND,
    "year": 31_557_600 * _SECOND,
    "years": 31_557_600 * _SECOND,
}
_SIZE_UNITS = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_PART = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Zµ]*)")


def parse_duration(text: str) -> int:
    """Human-readable duration ("1 h", "500 ms", "1m 30s", "7 days") -> microseconds.

    Units as humantime (Rust) names them; "M" (capital) is a month as there, every other unit
    is case-insensitive. A bare number is seconds. Arithmetic is exact ("0.1 s" -> 100000).
    """
    text = str(text).strip()
    if not text:
        raise ValueError("empty duration")
    total, pos = Fraction(0), 0
    while pos < len(text):
        m = _PART.match(text, pos)
        if not m or m.end() == pos:
            raise ValueError(f"invalid duration {text!r}")
        number, unit = m.group(1), m.group(2)
        unit = "month" if unit == "M" else unit.lower() or "s"
        if unit not in _DURATION_UNITS:
            raise ValueError(f"invalid duration unit {unit!r} in {text!r}")
        total += Fraction(number) * _DURATION_UNITS[unit]
        pos = m.end()
    return int(total)


def parse_size(text: str) -> int:
    """Human-readable size ("64 MiB", "2 MB", "1.5 KB", "1024") -> bytes (KB = 1000, KiB = 1024)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(text))
    if not m:
        raise ValueError(f"invalid size {text!r}")
    unit = m.group(2).lower() or "b"
    if unit not in _SIZE_UNITS:
        raise ValueError(f"invalid size unit {unit!r} in {text!r}")
    return int(Fraction(m.group(1)) * _SIZE_UNITS[unit])
