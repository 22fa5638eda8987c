"""Wall-clock time in microseconds since the Unix epoch: the unit of every timestamp the
server stores or sends (creation times, token expiries, message timestamps, uptime)."""

from __future__ import annotations

import time


def now_us() -> int:
    return time.time_ns() // 1000
