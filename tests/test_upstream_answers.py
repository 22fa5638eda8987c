"""Answers about missing things, and HTTP details, as Apache Iggy gives them (real server).

Not-found codes: a stream, topic or consumer group that does not exist is 1009, 2010 or 5000
whether it was named by id or by name (upstream's result enums have no other codes:
core/metadata/src/stm/result.rs); GetTopics of a missing stream is an empty list, and the gets
of a missing consumer group, offset or assignment answer as core/server/src/responses.rs and
dispatch.rs do. HTTP: the same answers, `POST .../partitions` is 200 with an empty body,
successful answers carry `iggy-view: 0` (not /ping, not errors), and `http.web_ui = true` is
accepted (one log line without `http.web_ui_dir`; the folder is served under /ui with it).
"""

from __future__ import annotations

import struct

import httpx
import pytest

from iggy.protocol import codes
from tests.conftest import ROOT_PASSWORD, ROOT_USER, ServerProcess, connect_root, uniq
from tests.rawclient import consumer_target, ident, poll_body, wire_name
from tests.test_trailing_bytes import (
    GROUP_ID_NOT_FOUND,
    OP,
    READ,
    STREAM_ID_NOT_FOUND,
    TOPIC_ID_NOT_FOUND,
    World,
    ok,
    send_body,
    topic_partitions,
)

# ------------------------------------------------------------------ not-found codes over TCP


def test_missing_names_get_the_id_codes(raw_root):
    w = World(raw_root)
    gone, s, t, g = uniq("gone"), ident(w.s), ident("t"), ident("g")
    cases = [
        (OP[codes.UPDATE_STREAM], ident(gone) + wire_name(uniq("x")), STREAM_ID_NOT_FOUND),
        (OP[codes.DELETE_STREAM], ident(gone), STREAM_ID_NOT_FOUND),
        (OP[codes.PURGE_STREAM], ident(gone), STREAM_ID_NOT_FOUND),
        (OP[codes.CREATE_TOPIC], ident(gone) + struct.pack("<I", 1) + wire_name("t"), STREAM_ID_NOT_FOUND),
        (OP[codes.DELETE_TOPIC], ident(gone) + t, STREAM_ID_NOT_FOUND),
        (OP[codes.UPDATE_TOPIC], s + ident(gone) + wire_name("x"), TOPIC_ID_NOT_FOUND),
        (OP[codes.DELETE_TOPIC], s + ident(gone), TOPIC_ID_NOT_FOUND),
        (OP[codes.PURGE_TOPIC], s + ident(gone), TOPIC_ID_NOT_FOUND),
        (OP[codes.CREATE_PARTITIONS], s + ident(gone) + struct.pack("<I", 1), TOPIC_ID_NOT_FOUND),
        (OP[codes.DELETE_PARTITIONS], s + ident(gone) + struct.pack("<I", 1), TOPIC_ID_NOT_FOUND),
        (OP[codes.DELETE_SEGMENTS], s + ident(gone) + struct.pack("<II", 0, 1), TOPIC_ID_NOT_FOUND),
        (OP[codes.CREATE_CONSUMER_GROUP], s + ident(gone) + wire_name("g"), TOPIC_ID_NOT_FOUND),
        (OP[codes.DELETE_CONSUMER_GROUP], s + t + ident(gone), GROUP_ID_NOT_FOUND),
        (OP[codes.JOIN_CONSUMER_GROUP], s + t + ident(gone), GROUP_ID_NOT_FOUND),
        (OP[codes.LEAVE_CONSUMER_GROUP], s + t + ident(gone), GROUP_ID_NOT_FOUND),
        (OP[codes.JOIN_CONSUMER_GROUP], ident(gone) + t + g, STREAM_ID_NOT_FOUND),
        (READ, (codes.POLL_MESSAGES, poll_body(gone, "t")), STREAM_ID_NOT_FOUND),
        (READ, (codes.POLL_MESSAGES, poll_body(w.s, gone)), TOPIC_ID_NOT_FOUND),
        (READ, (codes.GET_CONSUMER_GROUPS, ident(gone) + t), STREAM_ID_NOT_FOUND),
        (READ, (codes.GET_CONSUMER_GROUPS, s + ident(gone)), TOPIC_ID_NOT_FOUND),
        (READ, (codes.GET_CONSUMER_GROUP, ident(gone) + t + g), STREAM_ID_NOT_FOUND),
        (READ, (codes.GET_CONSUMER_GROUP, s + ident(gone) + g), TOPIC_ID_NOT_FOUND),
    ]
    # Partition-plane writes and group polls: upstream answers these differently again (a
    # send or offset store whose target does not resolve gets 20, a group poll of a missing
    # group an empty poll); this server keeps the typed codes, but never the name variants.
    ours = [
        (160, send_body(gone), STREAM_ID_NOT_FOUND),
        (160, send_body(w.s, topic=gone), TOPIC_ID_NOT_FOUND),
        (161, consumer_target(w.s, gone) + struct.pack("<Q", 0) + b"\x01", TOPIC_ID_NOT_FOUND),
        (161, consumer_target(w.s, "t", kind=2, consumer=gone) + struct.pack("<Q", 0) + b"\x01", GROUP_ID_NOT_FOUND),
        (READ, (codes.POLL_MESSAGES, poll_body(w.s, "t", kind=2, consumer=gone)), GROUP_ID_NOT_FOUND),
    ]
    wrong = []
    for operation, body, expected in cases + ours:
        reply = raw_root.read(*body) if operation == READ else raw_root.call(operation, 0, body)
        if reply.code != expected:
            wrong.append((operation, body if operation != READ else body[0], reply.code, expected))
    assert wrong == []


def test_reads_of_missing_things_answer_as_upstream(raw_root):
    w = World(raw_root)
    gone, s, t = uniq("gone"), ident(w.s), ident("t")
    # GetTopics of a missing stream: an empty list, [u32 0], by name or by id
    for stream in (ident(gone), ident(4_000_000)):
        reply = raw_root.read(codes.GET_TOPICS, stream)
        assert (reply.status, reply.body) == (0, b"\0\0\0\0")
    # a missing group under an existing topic: empty body
    assert (raw_root.read(codes.GET_CONSUMER_GROUP, s + t + ident(gone)).status,) == (0,)
    assert ok(raw_root.read(codes.GET_CONSUMER_GROUP, s + t + ident(gone))).body == b""
    # offsets and assignments of anything missing: empty bodies
    missing = (consumer_target(gone, "t"), consumer_target(w.s, gone), consumer_target(w.s, "t", kind=2, consumer=gone))
    for body in missing:
        assert ok(raw_root.read(codes.GET_CONSUMER_OFFSET, body)).body == b""
    for body in (ident(gone) + t + ident("g"), s + ident(gone) + ident("g"), s + t + ident(gone)):
        assert ok(raw_root.read(codes.SYNC_CONSUMER_GROUP, body)).body == b""
    # a missing partition of a topic that exists stays 3007
    assert raw_root.read(codes.GET_CONSUMER_OFFSET, consumer_target(w.s, "t", 9)).status == 3007


async def test_sdk_sees_missing_names_as_id_codes(srv):
    client = await connect_root(srv.tcp_address)
    gone = uniq("gone")
    assert await client.get_topics(gone) == []
    with pytest.raises(RuntimeError) as exc:
        await client.delete_stream(gone)
    assert "Stream with ID" in str(exc.value) and "was not found" in str(exc.value)


# ------------------------------------------------------------------ HTTP

ROOT = {"username": ROOT_USER, "password": ROOT_PASSWORD}


def _http(srv) -> httpx.Client:
    token = httpx.post(srv.http_url + "/users/login", json=ROOT).json()["access_token"]["token"]
    return httpx.Client(base_url=srv.http_url, headers={"Authorization": f"Bearer {token}"}, timeout=30)


def _typed_404(r: httpx.Response, code: int) -> None:
    assert r.status_code == 404, (r.status_code, r.text)
    assert r.json()["id"] == code, r.text
    assert "iggy-view" not in r.headers


def test_http_missing_things(srv, raw_root):
    w = World(raw_root)
    gone = uniq("gone")
    with _http(srv) as api:
        r = api.get(f"/streams/{gone}/topics")
        assert (r.status_code, r.json()) == (200, [])
        _typed_404(api.put(f"/streams/{gone}", json={"name": uniq("x")}), STREAM_ID_NOT_FOUND)
        _typed_404(api.delete(f"/streams/{gone}"), STREAM_ID_NOT_FOUND)
        _typed_404(api.delete(f"/streams/{gone}/purge"), STREAM_ID_NOT_FOUND)
        _typed_404(api.put(f"/streams/{w.s}/topics/{gone}", json={"name": "x"}), TOPIC_ID_NOT_FOUND)
        _typed_404(api.delete(f"/streams/{w.s}/topics/{gone}"), TOPIC_ID_NOT_FOUND)
        _typed_404(api.delete(f"/streams/{w.s}/topics/{gone}/purge"), TOPIC_ID_NOT_FOUND)
        _typed_404(
            api.post(f"/streams/{w.s}/topics/{gone}/partitions", json={"partitions_count": 1}), TOPIC_ID_NOT_FOUND
        )
        _typed_404(
            api.delete(f"/streams/{w.s}/topics/{gone}/partitions", params={"partitions_count": 1}), TOPIC_ID_NOT_FOUND
        )
        _typed_404(api.delete(f"/streams/{w.s}/topics/t/consumer-groups/{gone}"), GROUP_ID_NOT_FOUND)
        _typed_404(api.get(f"/streams/{gone}/topics/t/consumer-groups"), STREAM_ID_NOT_FOUND)
        _typed_404(api.get(f"/streams/{w.s}/topics/{gone}/consumer-groups"), TOPIC_ID_NOT_FOUND)
        _typed_404(api.get(f"/streams/{gone}/topics/t/consumer-groups/g"), STREAM_ID_NOT_FOUND)
        _typed_404(api.get(f"/streams/{w.s}/topics/{gone}/consumer-groups/g"), TOPIC_ID_NOT_FOUND)
        # a missing entity itself: the generic 404 body
        r = api.get(f"/streams/{w.s}/topics/t/consumer-groups/{gone}")
        assert (r.status_code, r.json()["id"]) == (404, 404)


def test_http_create_partitions_answers_an_empty_body(srv, raw_root):
    w = World(raw_root)
    with _http(srv) as api:
        r = api.post(f"/streams/{w.s}/topics/t/partitions", json={"partitions_count": 2})
        assert (r.status_code, r.content) == (200, b"")
    assert topic_partitions(raw_root, w.s) == 4


def test_http_view_header(srv, raw_root):
    w = World(raw_root)
    with _http(srv) as api:
        for r in (
            api.get("/streams"),
            api.get(f"/streams/{w.s}"),
            api.get("/stats"),
            api.post(f"/streams/{w.s}/topics/t/partitions", json={"partitions_count": 1}),
            api.delete(f"/streams/{w.s}/purge"),
            httpx.post(srv.http_url + "/users/login", json=ROOT),
        ):
            assert r.status_code < 300 and r.headers.get("iggy-view") == "0", (r.request.url, r.headers)
        assert "iggy-view" not in api.get("/ping").headers
        assert "iggy-view" not in api.get(f"/streams/{uniq('gone')}").headers
        assert "iggy-view" not in httpx.get(srv.http_url + "/streams").headers  # 401
        r = api.get("/streams", headers={"Origin": "http://ui.example"})
        assert "iggy-view" in r.headers.get("access-control-expose-headers", "")


def test_http_web_ui_key(tmp_path):
    """`http.web_ui = true` (upstream's key) is accepted; without a folder it logs how to serve
    the official build, with `http.web_ui_dir` the folder is served under /ui."""
    server = ServerProcess(tmp_path / "a" / "data", extra_env={"IGGY_HTTP_WEB_UI": "true"}).start()
    try:
        assert server.wait_log("http.web_ui_dir"), server.log()[-2000:]
        lines = [line for line in server.log().splitlines() if "http.web_ui = true" in line]
        assert len(lines) == 1, lines
        assert httpx.get(server.http_url + "/ui").status_code == 404
    finally:
        server.stop()
    ui = tmp_path / "ui"
    (ui / "_app").mkdir(parents=True)
    (ui / "index.html").write_text("<html>iggy web ui</html>")
    (ui / "_app" / "env.js").write_text("export const env = {}")
    server = ServerProcess(
        tmp_path / "b" / "data", extra_env={"IGGY_HTTP_WEB_UI": "true", "IGGY_HTTP_WEB_UI_DIR": str(ui)}
    ).start()
    try:
        url = server.http_url
        for path in ("/ui", "/ui/", "/ui/streams/1/topics"):
            r = httpx.get(url + path)
            assert r.status_code == 200 and "iggy web ui" in r.text, path
            assert "iggy-view" not in r.headers
        r = httpx.get(url + "/ui/_app/env.js")
        assert r.status_code == 200 and "javascript" in r.headers["content-type"]
        assert httpx.get(url + "/ui/nope.js").status_code == 404
        assert "http.web_ui = true" not in server.log()
    finally:
        server.stop()
