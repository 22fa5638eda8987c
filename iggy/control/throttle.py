"""Failed-login backoff, and log lines that a hostile client cannot multiply.

`LoginThrottle` is consulted by every login (password and personal access token, over the
binary protocol on any transport and over HTTP) before any secret is checked. It keeps
tables of recent failures, bounded in size:

    by address   key: the client's IP (an IPv6 address counts by its /64, which one host
                 usually owns whole)
    by username  key: the username a password login named (existing or not)
    trusted      (username, address) pairs that logged in with the right password

Each failure bumps the count of its address and of its username; past `free` failures the
key is backed off for `base * 2^(count - free - 1)` seconds, at most `cap`. A login from a
backed-off address, or naming a backed-off username, is refused at once without checking
anything, unless its (username, address) pair is trusted. So:

* a guesser on one host gets one try per backoff, and costs the server no Argon2 time while
  backed off (with `Gate`, which lets one password check per address run at a time, it can
  never hold both hashing threads), so it does not slow the logins of other clients;
* guessing one user's password from many hosts gets slow too (the username backs off),
  while that user's own clients, trusted where they logged in before, are not held up;
* a trusted pair loses its trust after `free` failures without a success in between, so a
  guesser sharing a host (NAT) with the user gets a few tries per correct login, no more.

A correct login resets its address's count and trusts the pair; a username's count only ages
out (`forget` seconds after its last failure), so a distributed guesser cannot clear it by
logging in as itself. The refusal is the error of a wrong secret (42, or 53 for a token), so
clients need nothing new; HTTP adds `Retry-After` with the seconds left. The tables live in
memory only: a restart forgets them.

Bounds: each table holds at most `max_entries` keys, in the order of their last change; a
full table drops its oldest key (O(1)), so a client sending endless distinct usernames costs
a bounded amount of memory and only pushes out the oldest records. The trusted pairs are
written only by correct logins, at most `max_trusted` addresses per username, so failures
never push them out. Everything runs on the control plane's event loop: no locking.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from iggy.protocol.errors import ErrorCode, IggyError


class RetryLater(IggyError):
    """A request refused for now, with the seconds to wait (HTTP sends them as Retry-After)."""

    def __init__(self, code: ErrorCode, retry_after: float) -> None:
        super().__init__(code)
        self.retry_after = retry_after


class LoginBackoff(RetryLater):
    """A login refused unchecked while its address or username is backed off: error 42, as
    a wrong password, plus the seconds to wait."""


class RateLimit:
    """A token bucket per key: `rate` events a second, `burst` at once. The table holds at most
    `max_entries` keys, the least recently used going first; a key that comes back starts with
    a full bucket, which costs at most `burst` more events."""

    def __init__(
        self, rate: float, burst: int, max_entries: int = 10_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.max_entries = max_entries
        self.clock = clock
        self.buckets: OrderedDict[object, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)

    def take(self, key: object) -> float:
        """0 when `key` may act now (one token taken), else the seconds until it may."""
        now = self.clock()
        tokens, at = self.buckets.pop(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * self.rate)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self.rate
        self.buckets[key] = (tokens, now)
        if len(self.buckets) > self.max_entries:
            self.buckets.popitem(last=False)
        return wait


@dataclass
class _Logged:
    at: float  # monotonic of the last line
    held: int = 0  # lines held back since


class LogLimiter:
    """At most one log line per key every `interval` seconds; the next line says how many
    were held back. Keys are fixed strings of the caller, so the table stays small."""

    def __init__(
        self, logger: logging.Logger, interval: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.logger = logger
        self.interval = interval
        self.clock = clock
        self._last: dict[str, _Logged] = {}

    def log(self, level: int, key: str, message: str, *args: object) -> None:
        now = self.clock()
        entry = self._last.get(key)
        if entry is not None and now - entry.at < self.interval:
            entry.held += 1
            return
        held = entry.held if entry is not None else 0
        self._last[key] = _Logged(now)
        if held:
            message += " (%d more like it in the last %.0f s)"
            args = (*args, held, self.interval)
        self.logger.log(level, message, *args)


def address_key(address: str) -> str:
    """The throttling key of a peer address: "v4:port", "[v6]:port", "v6:port" (sessions
    write IPv6 without brackets; the port then falls in the /64's host part, which is
    dropped anyway) or a bare host."""
    if address.startswith("["):
        address = address[1:].split("]", 1)[0]
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        host = address.rsplit(":", 1)[0]
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return host
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


@dataclass
class _Entry:
    failures: int = 0
    until: float = 0.0  # monotonic end of the backoff (0: none)
    last: float = 0.0  # monotonic of the last failure


class LoginThrottle:
    def __init__(
        self,
        free: int = 5,
        base: float = 1.0,
        cap: float = 300.0,
        forget: float = 900.0,
        max_entries: int = 10_000,
        max_trusted: int = 8,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.free = free
        self.base = base
        self.cap = cap
        self.forget = forget
        self.max_entries = max_entries
        self.max_trusted = max_trusted
        self.clock = clock
        self.addresses: OrderedDict[str, _Entry] = OrderedDict()
        self.users: OrderedDict[str, _Entry] = OrderedDict()
        # username -> {address key: failures since its last correct login}, newest last
        self.trusted: OrderedDict[str, dict[str, int]] = OrderedDict()

    def retry_after(self, address: str, username: str | None = None) -> float:
        """Seconds until a login from `address` naming `username` is checked; 0 = now."""
        now = self.clock()
        addr = address_key(address)
        if username is not None and addr in self.trusted.get(username, ()):
            return 0.0
        wait = self._left(self.addresses.get(addr), now)
        if username is not None:
            wait = max(wait, self._left(self.users.get(username), now))
        return wait

    @staticmethod
    def _left(entry: _Entry | None, now: float) -> float:
        return max(0.0, entry.until - now) if entry is not None else 0.0

    def failed(self, address: str, username: str | None = None) -> None:
        now = self.clock()
        addr = address_key(address)
        self._bump(self.addresses, addr, now)
        if username is None:
            return
        self._bump(self.users, username, now)
        pairs = self.trusted.get(username)
        if pairs is not None and addr in pairs:
            pairs[addr] += 1
            if pairs[addr] >= self.free:
                del pairs[addr]

    def succeeded(self, address: str, username: str | None = None) -> None:
        addr = address_key(address)
        self.addresses.pop(addr, None)
        if username is None:
            return
        pairs = self.trusted.pop(username, {})
        pairs.pop(addr, None)
        pairs[addr] = 0
        while len(pairs) > self.max_trusted:
            del pairs[next(iter(pairs))]
        self.trusted[username] = pairs
        while len(self.trusted) > self.max_entries:
            self.trusted.popitem(last=False)

    def _bump(self, table: OrderedDict[str, _Entry], key: str, now: float) -> None:
        entry = table.pop(key, None)
        if entry is None or now - entry.last > self.forget:
            entry = _Entry()
        entry.failures += 1
        entry.last = now
        over = entry.failures - self.free
        if over > 0:
            entry.until = now + min(self.cap, self.base * 2 ** min(over - 1, 32))
        table[key] = entry  # most recent failure last
        while len(table) > self.max_entries:
            table.popitem(last=False)


class Gate:
    """One password check at a time per address: a flood of logins from one host queues
    behind itself and never holds both hashing threads, so other hosts' logins keep their
    usual speed. Entries live only while someone holds or waits on them."""

    def __init__(self) -> None:
        self._locks: dict[str, _Queue] = {}

    @contextlib.asynccontextmanager
    async def __call__(self, address: str) -> AsyncIterator[None]:
        key = address_key(address)
        entry = self._locks.get(key)
        if entry is None:
            entry = self._locks[key] = _Queue()
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._locks[key]


@dataclass(eq=False)
class _Queue:
    """The lock of one address, and how many hold it or wait on it."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0
