"""A cluster follower forwards the REST requests it does not serve to the leader and relays the
answer, so a client (or a load balancer spreading requests over the nodes) can use any node.

Upstream does this when every node can check every node's tokens (`cluster.auth` on, or an
`http.jwt` secret of its own): a follower re-issues the request against the leader's HTTP
listener and answers with what the leader said (docs/CLUSTER.md, "What the nodes answer").
Without that key material a follower's tokens are its own, so it answers 307 / 503 instead
(iggy.http.errors) and nothing here runs.

How a request gets here. `Bridge.call_as` refuses a command a follower does not serve with 58
TransientNotAccepted; the error handler (iggy.http.errors) then marks the request (`FORWARD`
in its ASGI scope) when this middleware is installed and the request is not itself a forwarded
one. `ForwardToLeader` wraps the API routes: it records the request body as the route reads it,
holds back the 503 the route answered when the request is marked, and sends the leader's answer
instead. So the follower has already done what it can do alone: authenticated the bearer (a JWT
checked here, a personal access token against its own copy of the users), parsed the body and
checked the user still exists; junk is refused before any byte goes to the leader. The leader
authenticates and authorises the request again, as any other.

Bounds and rules:

- Loops are impossible: a forwarded request carries `iggy-forwarded: 1`, and a node that is not
  the leader answers such a request 503 (58) at once, never forwards it again; the follower that
  sent it re-reads who the leader is and tries again. The marker is only a loop guard: a client
  that sets it gets that 503 from a follower, and the leader ignores it.
- Retried only when the request certainly did not run: the connection to the leader could not
  be made, or the answer is a 307 or a 503 with id 58 (the target is not, or no longer, the
  leader), or no leader is known. Retries re-read the leader from this node's view of the
  election every `RETRY_INTERVAL`, for `HttpSettings.forward_budget` (three failovers), then the
  client gets a 503 `no_leader` with `Retry-After`. Anything else is relayed as it is, because a
  request that reached the leader may have been applied.
- One attempt (connect, send, the whole answer) takes at most `ATTEMPT_TIMEOUT`; past it the
  answer is a 504 (the outcome is unknown, never retried). A connection broken after the
  request went out is a 502, for the same reason.
- The request body is what the route read (at most `http.max_request_size`, which Litestar
  enforces); the answer at most `RESPONSE_LIMIT` bytes (checked against Content-Length and
  while reading), else 502. At most `MAX_IN_FLIGHT` forwards at once, else 503 `forward_busy`.
- Only `Authorization` and `Content-Type` go to the leader, and only `Content-Type`,
  `Retry-After` and `iggy-view` come back: the answer is rebuilt here, never streamed.
- Redirects are never followed: the target is always this node's own view of the leader
  (the roster's ip and HTTP port), never a `Location` from the peer.
- With `http.tls` the leader is dialled over https and must present a certificate chaining to
  this node's own certificate (the nodes share one, as upstream expects); the host name is not
  checked (the roster names nodes by ip).

The httpx client is created on the HTTP thread's loop at the first forward and closed when that
thread stops (`aclose`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import httpx
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from iggy.control.throttle import LogLimiter
from iggy.protocol.errors import ErrorCode

if TYPE_CHECKING:
    from iggy.control.plane import ControlPlane
    from iggy.http.bridge import Bridge
    from iggy.http.settings import HttpSettings

log = logging.getLogger("iggy.http")
_log_limited = LogLimiter(log)

FORWARDED_HEADER = "iggy-forwarded"  # the loop guard a forwarded request carries
FORWARD = "iggy.forward"  # ASGI scope key: False while the middleware runs, True: forward this one
ATTEMPT_TIMEOUT = 35.0  # seconds for one attempt; above what a change may wait for etcd or the ACKs
CONNECT_TIMEOUT = 3.0  # seconds to open the connection to the leader (then retried)
RETRY_INTERVAL = 0.1  # seconds between attempts while no leader takes the request
MAX_IN_FLIGHT = 128  # forwards held by this node at once
RESPONSE_LIMIT = 64 * 1024 * 1024  # bytes of a relayed answer (polls are the big ones)
RELAYED_HEADERS = ("content-type", "retry-after", "iggy-view")

Relayed = tuple[int, list[tuple[bytes, bytes]], bytes]  # status, headers, body


def leader_url(plane: ControlPlane) -> str | None:
    """`http://ip:port` of the leader this node knows of (run on the main loop)."""
    return None if plane.cluster is None else plane.cluster.leader_http_url()


def error(status: int, code: str, reason: str, retry: bool = False) -> Relayed:
    """An answer of the forwarder itself, in the JSON shape of every API error."""
    body = json.dumps({"id": status, "code": code, "reason": reason, "field": None}).encode()
    headers = [(b"content-type", b"application/json")]
    if retry:
        headers.append((b"retry-after", b"1"))
    return status, headers, body


def _not_accepted(body: bytes) -> bool:
    """A 503 whose body is the JSON error 58: the target did not take the request. Anything
    that does not parse is not: when in doubt the answer is relayed, never retried."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return False
    return isinstance(parsed, dict) and parsed.get("id") == ErrorCode.TRANSIENT_NOT_ACCEPTED


class Forwarder:
    """Sends one request to the leader, retrying while it certainly did not run (see the
    module docstring). Used only on the HTTP thread."""

    def __init__(
        self,
        bridge: Bridge,
        settings: HttpSettings,
        find_leader: Callable[[], Awaitable[str | None]] | None = None,
    ):
        self.settings = settings
        self.budget = settings.forward_budget
        self.tls = bool(settings.tls_cert_file)
        self.find_leader = find_leader or (lambda: bridge.call(leader_url))
        self.client: httpx.AsyncClient | None = None
        self.in_flight = 0

    def _client(self) -> httpx.AsyncClient:
        if self.client is None:
            verify: ssl.SSLContext | bool = False
            if self.tls:
                verify = ssl.create_default_context(cafile=self.settings.tls_cert_file)
                verify.check_hostname = False
                verify.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # our own leaf as the anchor
            self.client = httpx.AsyncClient(
                follow_redirects=False,
                trust_env=False,  # no proxy from the environment between nodes
                verify=verify,
                # the whole attempt is bounded by ATTEMPT_TIMEOUT (`_attempt`), a 504
                timeout=httpx.Timeout(None, connect=CONNECT_TIMEOUT),
                # idle connections are dropped before the leader's keep-alive timeout can
                # close them under a request
                limits=httpx.Limits(max_connections=MAX_IN_FLIGHT, keepalive_expiry=1.0),
            )
        return self.client

    async def aclose(self) -> None:
        if self.client is not None:
            await self.client.aclose()
            self.client = None

    async def forward(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Relayed:
        """The leader's answer to `method target` (path and query), or this node's error."""
        if self.in_flight >= MAX_IN_FLIGHT:
            return error(503, "forward_busy", "this node forwards too many requests already; retry", retry=True)
        self.in_flight += 1
        try:
            return await self._forward(method, target, {**headers, FORWARDED_HEADER: "1"}, body)
        finally:
            self.in_flight -= 1

    async def _forward(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Relayed:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.budget
        while True:
            base = await self.find_leader()
            answer = None
            if base is not None:
                if self.tls:
                    base = "https://" + base.removeprefix("http://")
                answer = await self._attempt(method, base + target, headers, body)
            if answer is not None:
                return answer
            remaining = deadline - loop.time()
            if remaining <= 0:
                _log_limited.log(
                    logging.WARNING,
                    "forward-no-leader",
                    "HTTP %s %s: no leader took the forwarded request within %.1f s",
                    method,
                    target.split("?")[0],
                    self.budget,
                )
                return error(503, "no_leader", "no leader took the request in time; retry", retry=True)
            await asyncio.sleep(min(RETRY_INTERVAL, remaining))

    async def _attempt(self, method: str, url: str, headers: dict[str, str], body: bytes) -> Relayed | None:
        """The answer to relay, or None when the request certainly did not run there."""
        client = self._client()
        try:
            async with asyncio.timeout(ATTEMPT_TIMEOUT):
                request = client.build_request(method, url, headers=headers, content=body)
                response = await client.send(request, stream=True)
                try:
                    declared = response.headers.get("content-length", "")
                    if declared.isdigit() and int(declared) > RESPONSE_LIMIT:
                        return self._failed(url, f"an answer of {declared} bytes")
                    data = bytearray()
                    async for chunk in response.aiter_bytes():
                        data += chunk
                        if len(data) > RESPONSE_LIMIT:
                            return self._failed(url, f"an answer over {RESPONSE_LIMIT} bytes")
                finally:
                    await response.aclose()
        except TimeoutError:
            log.warning("HTTP forward to %s: no answer within %.0f s", url, ATTEMPT_TIMEOUT)
            return error(504, "forward_timeout", "the leader did not answer in time; the outcome is unknown")
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            log.debug("HTTP forward to %s: %s; trying again", url, exc)
            return None
        except httpx.HTTPError as exc:
            return self._failed(url, str(exc) or type(exc).__name__)
        status = response.status_code
        if status == 307 or (status == 503 and _not_accepted(bytes(data))):
            return None
        relayed = [
            (name.encode(), response.headers[name].encode()) for name in RELAYED_HEADERS if name in response.headers
        ]
        return status, relayed, bytes(data)

    @staticmethod
    def _failed(url: str, what: str) -> Relayed:
        log.warning("HTTP forward to %s failed after the request went out: %s", url, what)
        return error(502, "forward_failed", "forwarding to the leader failed; the outcome is unknown")


class ForwardToLeader:
    """ASGI middleware of the API routes (see the module docstring)."""

    def __init__(self, app: ASGIApp, forwarder: Forwarder, max_body: int):
        self.app = app
        self.forwarder = forwarder
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:  # a str enum, equal to the scope's "http"
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        body = bytearray()
        complete = False
        held = False
        scope[FORWARD] = False  # type: ignore[literal-required]  # the error handler sets it

        async def recording() -> Any:
            nonlocal complete
            message = await receive()
            if message["type"] == "http.request":
                body.extend(message.get("body", b""))
                complete = not message.get("more_body", False)
            return message

        async def holding(message: Message) -> None:
            nonlocal held
            if message["type"] == "http.response.start" and scope.get(FORWARD):
                held = True
            if not held:
                await send(message)

        await self.app(scope, recording, holding)
        if not held:
            return
        while not complete:  # a route that refused before it read the whole body
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            body.extend(message.get("body", b""))
            complete = not message.get("more_body", False)
            if len(body) > self.max_body:
                await _send(send, (413, [(b"content-type", b"text/plain")], b"Request Entity Too Large"))
                return
        headers = {}
        for name, value in scope["headers"]:
            if name in (b"authorization", b"content-type"):
                headers[name.decode("latin-1")] = value.decode("latin-1")
        raw_path = scope.get("raw_path") or scope["path"].encode()
        query = scope.get("query_string", b"")
        target = (raw_path + (b"?" + query if query else b"")).decode("latin-1")
        await _send(send, await self.forwarder.forward(method, target, headers, bytes(body)))


async def _send(send: Send, answer: Relayed) -> None:
    status, headers, body = answer
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
