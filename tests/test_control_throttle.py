"""iggy.control.throttle in-process: the backoff rules, trusted pairs, bounded tables, the gate
and the log limiter (a fake clock, no server)."""

from __future__ import annotations

import asyncio
import logging

from iggy.control.throttle import Gate, LoginThrottle, LogLimiter, RateLimit, address_key


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_backoff_starts_after_the_free_failures_and_doubles_up_to_the_cap():
    clock = Clock()
    t = LoginThrottle(free=3, base=1.0, cap=8.0, clock=clock)
    for _ in range(3):
        assert t.retry_after("10.0.0.1:1", "u") == 0
        t.failed("10.0.0.1:1", "u")
    assert t.retry_after("10.0.0.1:2", "u") == 0  # 3 free failures, none backed off yet
    waits = []
    for _ in range(6):
        t.failed("10.0.0.1:1", "u")
        waits.append(t.retry_after("10.0.0.1:1"))
    assert waits == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    clock.now += 8.0
    assert t.retry_after("10.0.0.1:1", "u") == 0  # the backoff ends by itself


def test_correct_login_resets_the_address_not_the_user_and_trusts_the_pair():
    clock = Clock()
    t = LoginThrottle(free=2, clock=clock)
    t.succeeded("10.0.0.9:5", "u")  # the user's own client, earlier
    for _ in range(4):
        t.failed("10.0.0.1:1", "u")
    assert t.retry_after("10.0.0.1:1", "other") > 0  # the guessing address, whoever it names
    assert t.retry_after("10.0.0.2:1", "u") > 0  # the user, from an address it never used
    assert t.retry_after("10.0.0.9:6", "u") == 0  # the user's trusted address
    assert t.retry_after("10.0.0.2:1", "other") == 0  # anyone else
    t.succeeded("10.0.0.1:1", "other")
    assert t.retry_after("10.0.0.1:1", "someone") == 0  # the address is cleared ...
    assert t.retry_after("10.0.0.2:1", "u") > 0  # ... the user's backoff is not


def test_trust_is_lost_after_the_free_failures():
    t = LoginThrottle(free=2, clock=Clock())
    t.succeeded("10.0.0.9:1", "u")
    t.failed("10.0.0.9:1", "u")
    t.failed("10.0.0.9:1", "u")
    t.failed("10.0.0.9:1", "u")
    assert t.retry_after("10.0.0.9:1", "u") > 0


def test_tables_are_bounded():
    t = LoginThrottle(max_entries=100, max_trusted=3, clock=Clock())
    for i in range(10_000):
        t.failed(f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}:1", f"user-{i}")
        t.succeeded(f"10.9.{i // 256 % 256}.{i % 256}:1", f"ok-{i}")
    for i in range(50):
        t.succeeded(f"10.8.0.{i}:1", "busy")
    assert len(t.addresses) <= 100 and len(t.users) <= 100 and len(t.trusted) <= 100
    assert len(t.trusted["busy"]) == 3


def test_address_keys():
    assert address_key("127.0.0.1:5000") == "127.0.0.1"
    assert address_key("[2001:db8::1]:80") == address_key("2001:db8::2") == "2001:db8::/64"
    assert address_key("::ffff:10.0.0.1") == "10.0.0.1"
    assert address_key("unknown") == "unknown"


def test_gate_runs_one_check_per_address_at_a_time():
    gate = Gate()
    running = {"a": 0, "b": 0}
    peak = {"a": 0, "b": 0}

    async def check(address, key):
        async with gate(address):
            running[key] += 1
            peak[key] = max(peak[key], running[key])
            await asyncio.sleep(0)
            running[key] -= 1

    async def main():
        await asyncio.gather(
            *[check(f"10.0.0.1:{i}", "a") for i in range(20)], *[check(f"10.0.0.2:{i}", "b") for i in range(20)]
        )

    asyncio.run(main())
    assert peak == {"a": 1, "b": 1}
    assert gate._locks == {}


def test_log_limiter_logs_once_per_interval(caplog):
    clock = Clock()
    limiter = LogLimiter(logging.getLogger("test.limiter"), interval=60.0, clock=clock)
    with caplog.at_level(logging.INFO, logger="test.limiter"):
        for _ in range(1000):
            limiter.log(logging.INFO, "k", "refused %s", "x")
        clock.now += 61
        limiter.log(logging.INFO, "k", "refused %s", "y")
    assert [r.getMessage() for r in caplog.records] == ["refused x", "refused y (999 more like it in the last 60 s)"]


def test_rate_limit_lets_a_burst_through_then_one_event_per_period():
    clock = Clock()
    limit = RateLimit(rate=2.0, burst=3, max_entries=2, clock=clock)
    assert [limit.take("u") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limit.take("u") == 0.5  # one token back after half a second
    assert limit.take("u") == 0.5  # a refusal takes nothing
    assert limit.take("v") == 0.0  # each key has its own bucket
    clock.now += 0.5
    assert limit.take("u") == 0.0 and limit.take("u") == 0.5
    clock.now += 10.0  # refilled to the burst, not beyond
    assert [limit.take("u") for _ in range(4)] == [0.0, 0.0, 0.0, 0.5]
    limit.take("w")
    assert len(limit.buckets) == 2 and "v" not in limit.buckets  # the least recently used went
