"""iggy.http.forward.Forwarder against a real HTTP listener on loopback standing for the leader
(a small asyncio server that answers what each test scripts): what is retried, what is relayed,
the bounds. The whole path on three server nodes is tests/cluster/test_http.py."""

from __future__ import annotations

import asyncio
import json

from iggy.http import forward
from iggy.http.forward import Forwarder
from iggy.http.settings import HttpSettings
from iggy.protocol.errors import ErrorCode


class Leader:
    """Answers each request with the next scripted (status, headers, body), then closes."""

    def __init__(self, answers):
        self.answers = list(answers)
        self.requests = []  # (request line, {header: value}, body)
        self.server = None
        self.url = ""

    async def start(self) -> Leader:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def _serve(self, reader, writer):
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        headers = dict(line.split(": ", 1) for line in head[1:] if line)
        headers = {k.lower(): v for k, v in headers.items()}
        body = await reader.readexactly(int(headers.get("content-length", 0)))
        self.requests.append((head[0], headers, body))
        status, extra, payload = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        lines = [f"HTTP/1.1 {status} X", f"content-length: {len(payload)}", "connection: close"]
        lines += [f"{k}: {v}" for k, v in extra.items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + payload)
        await writer.drain()
        writer.close()

    async def stop(self):
        self.server.close()
        await self.server.wait_closed()


def forwarder(leader_url, budget=2.0) -> Forwarder:
    async def find_leader():
        return leader_url() if callable(leader_url) else leader_url

    return Forwarder(None, HttpSettings(forward_budget=budget), find_leader=find_leader)


NOT_ACCEPTED = json.dumps({"id": ErrorCode.TRANSIENT_NOT_ACCEPTED, "code": "transient_not_accepted"}).encode()
JSON = {"content-type": "application/json"}


async def test_the_answer_is_relayed_with_its_headers_and_only_two_headers_go_out():
    leader = await Leader([(201, {**JSON, "iggy-view": "0", "x-other": "1"}, b'{"id":1}')]).start()
    f = forwarder(leader.url)
    try:
        headers = {"authorization": "Bearer t", "content-type": "application/json"}
        status, relayed, body = await f.forward("POST", "/streams?a=1", headers, b'{"name":"s"}')
    finally:
        await f.aclose()
        await leader.stop()
    assert (status, body) == (201, b'{"id":1}')
    assert dict(relayed) == {b"content-type": b"application/json", b"iggy-view": b"0"}
    line, sent, sent_body = leader.requests[0]
    assert line == "POST /streams?a=1 HTTP/1.1" and sent_body == b'{"name":"s"}'
    assert sent["authorization"] == "Bearer t" and sent["iggy-forwarded"] == "1"


async def test_not_accepted_and_redirects_are_retried_other_answers_are_not():
    leader = await Leader([(503, JSON, NOT_ACCEPTED), (307, {"location": "http://x"}, b""), (400, JSON, b"{}")]).start()
    f = forwarder(leader.url)
    try:
        status, _headers, _body = await f.forward("DELETE", "/streams/1", {}, b"")
        assert status == 400 and len(leader.requests) == 3
        # a 503 that is not 58 (TransientNotCommitted: it may still commit) is relayed
        leader.answers = [(503, JSON, json.dumps({"id": ErrorCode.TRANSIENT_NOT_COMMITTED}).encode())]
        assert (await f.forward("DELETE", "/streams/1", {}, b""))[0] == 503
        assert len(leader.requests) == 4
    finally:
        await f.aclose()
        await leader.stop()


async def test_no_leader_or_a_leader_that_never_accepts_ends_in_503_no_leader():
    leader = await Leader([(503, JSON, NOT_ACCEPTED)]).start()
    for url in (None, leader.url):
        f = forwarder(url, budget=0.5)
        try:
            status, headers, body = await f.forward("POST", "/streams", {}, b"{}")
        finally:
            await f.aclose()
        assert status == 503 and json.loads(body)["code"] == "no_leader" and (b"retry-after", b"1") in headers
    await leader.stop()


async def test_a_refused_connection_is_retried_until_a_leader_listens():
    leader = Leader([(200, JSON, b"[]")])
    urls = iter([None, "http://127.0.0.1:1"])  # no leader known, then one that refuses

    def leader_url():
        return next(urls, leader.url)

    await leader.start()
    f = forwarder(leader_url)
    try:
        assert (await f.forward("GET", "/streams", {}, b""))[0] == 200
    finally:
        await f.aclose()
        await leader.stop()


async def test_an_answer_over_the_limit_is_a_502(monkeypatch):
    monkeypatch.setattr(forward, "RESPONSE_LIMIT", 10)
    leader = await Leader([(200, JSON, b"x" * 11)]).start()
    f = forwarder(leader.url)
    try:
        status, _headers, body = await f.forward("GET", "/streams", {}, b"")
    finally:
        await f.aclose()
        await leader.stop()
    assert status == 502 and json.loads(body)["code"] == "forward_failed"
    assert len(leader.requests) == 1  # not retried


async def test_a_leader_that_does_not_answer_in_time_is_a_504(monkeypatch):
    monkeypatch.setattr(forward, "ATTEMPT_TIMEOUT", 0.2)
    silent = await asyncio.start_server(lambda r, w: asyncio.sleep(10), "127.0.0.1", 0)
    f = forwarder(f"http://127.0.0.1:{silent.sockets[0].getsockname()[1]}")
    try:
        status, _headers, body = await f.forward("POST", "/streams", {}, b"{}")
    finally:
        await f.aclose()
        silent.close()
    assert status == 504 and json.loads(body)["code"] == "forward_timeout"


async def test_too_many_forwards_at_once_are_refused():
    f = forwarder(None)
    f.in_flight = forward.MAX_IN_FLIGHT
    status, headers, body = await f.forward("POST", "/streams", {}, b"{}")
    assert status == 503 and json.loads(body)["code"] == "forward_busy"
