"""The REST API against a real server process, with plain HTTP requests (httpx).

One server serves the whole module; every test makes its own streams/users with unique
names, so tests don't depend on each other. Each route is exercised for success and for its
refusals: 401 (no or bad credential), 403 (no permission), 404 (missing entity), 400 (Iggy
validation errors, JSON body `{id, code, reason, field}`), and the framework's plain-text
400/413/415/422.
"""

from __future__ import annotations

import base64
import io
import itertools
import socket
import struct
import time
import zipfile

import httpx
import pytest

from iggy.http.views import SIZE_STATS
from tests.conftest import ROOT_PASSWORD, ROOT_USER, ServerProcess, permissions_body

_names = itertools.count()


def unique(prefix: str) -> str:
    return f"{prefix}-{next(_names)}-{time.monotonic_ns() % 1_000_000}"


def wait_http(url: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url + "/ping", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("HTTP API did not come up")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    server = ServerProcess(tmp_path_factory.mktemp("http") / "data").start()
    wait_http(server.http_url)
    yield server
    server.stop()


def login(url: str, username: str = ROOT_USER, password: str = ROOT_PASSWORD) -> str:
    r = httpx.post(url + "/users/login", json={"username": username, "password": password})
    assert r.status_code == 200, r.text
    return r.json()["access_token"]["token"]


@pytest.fixture(scope="module")
def api(srv):
    """An httpx client logged in as root."""
    token = login(srv.http_url)
    with httpx.Client(base_url=srv.http_url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def anon(srv):
    with httpx.Client(base_url=srv.http_url, timeout=30) as c:
        yield c


def error(r: httpx.Response, status: int, code: int) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"id", "code", "reason", "field"}, body
    assert body["id"] == code, body
    return body


def not_found(r: httpx.Response) -> None:
    assert r.status_code == 404, r.text
    assert r.json() == {"id": 404, "code": "not_found", "reason": "Resource not found", "field": None}


def make_topic(api, partitions: int = 2, **options):
    stream = unique("s")
    assert api.post("/streams", json={"name": stream}).status_code == 200
    topic = unique("t")
    body = {
        "name": topic,
        "partitions_count": partitions,
        "compression_algorithm": "none",
        "message_expiry": 0,
        "max_topic_size": 0,
        "options": {k: str(v) for k, v in options.items()},
    }
    r = api.post(f"/streams/{stream}/topics", json=body)
    assert r.status_code == 200, r.text
    return stream, topic


def make_user(api, permissions=None, status="active") -> tuple[str, int]:
    name = unique("u")
    r = api.post("/users", json={"username": name, "password": "secret1", "status": status, "permissions": permissions})
    assert r.status_code == 200, r.text
    return name, r.json()["id"]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# ------------------------------------------------------------------- conventions


def test_ping_is_public_even_with_empty_bearer(srv):
    # the SDK's heartbeat sends `Authorization: Bearer ` (empty token); httpx refuses to, so raw bytes
    with socket.create_connection(("127.0.0.1", srv.http_port), timeout=5) as sock:
        sock.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \r\nConnection: close\r\n\r\n")
        reply = b""
        while chunk := sock.recv(4096):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 200") and reply.endswith(b"pong")


def test_unknown_path_and_wrong_method(anon, api):
    r = anon.get("/no/such/route")
    assert r.status_code == 404 and r.content == b""
    assert api.put("/ping").status_code == 405


def test_missing_and_invalid_credentials(anon):
    error(anon.get("/streams"), 401, 77)
    error(anon.get("/streams", headers={"Authorization": "Basic abc"}), 401, 77)
    error(anon.get("/streams", headers={"Authorization": "Bearer not.a.jwt"}), 401, 40)
    error(anon.get("/streams", headers={"Authorization": "Bearer nopat"}), 401, 40)
    # authentication is checked before the body is parsed
    r = anon.post(
        "/streams", content=b"{broken", headers={"Authorization": "Bearer x.y.z", "Content-Type": "application/json"}
    )
    error(r, 401, 40)


def test_framework_refusals_are_plain_text(api):
    r = api.post("/streams", content=b"{broken", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.headers["content-type"].startswith("text/plain")
    r = api.post("/streams", json={"nom": "x"})
    assert r.status_code == 422 and r.headers["content-type"].startswith("text/plain")
    r = api.post("/streams", content=b'{"name": "x"}')
    assert r.status_code == 415
    r = api.post("/streams", json={"name": "x" * 2_100_000})
    assert r.status_code == 413
    r = api.get("/streams/x/topics/y/messages", params={"count": "many"})
    assert r.status_code == 400


def test_cors_preflight_and_headers(anon):
    r = anon.options(
        "/streams",
        headers={
            "Origin": "http://ui.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )
    assert r.status_code in (200, 204)
    assert r.headers["access-control-allow-origin"] == "*"
    assert "POST" in r.headers["access-control-allow-methods"]
    r = anon.get("/ping", headers={"Origin": "http://ui.example"})
    assert r.headers["access-control-allow-origin"] == "*"


def test_openapi_document(anon):
    r = anon.get("/schema/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    assert doc["openapi"].startswith("3.")
    for path in ("/users/login", "/streams", "/streams/{stream_id}/topics/{topic_id}/messages", "/stats"):
        assert path in doc["paths"], path


# ------------------------------------------------------------------- login, tokens


def test_login_returns_nested_access_token(anon):
    r = anon.post(
        "/users/login", json={"username": ROOT_USER, "password": ROOT_PASSWORD, "version": "0.11.0", "context": ""}
    )
    assert r.status_code == 200
    body = r.json()
    assert body["user_id"] == 0
    assert set(body["access_token"]) == {"token", "expiry"}
    assert body["access_token"]["expiry"] > time.time() + 3000  # 1 h by default
    payload = body["access_token"]["token"].split(".")[1]
    assert b'"sub":"0"' in base64.urlsafe_b64decode(payload + "==")


def test_login_refusals(anon):
    error(anon.post("/users/login", json={"username": ROOT_USER, "password": "wrong"}), 400, 42)
    error(anon.post("/users/login", json={"username": "nobody", "password": "whatever"}), 400, 42)
    error(anon.post("/users/login", json={"username": "x", "password": "y"}), 400, 42)
    assert anon.post("/users/login", json={"username": ROOT_USER}).status_code == 422


def test_logout_revokes_and_refresh_issues_new_token(srv, anon):
    token = login(srv.http_url)
    auth = {"Authorization": f"Bearer {token}"}
    r = anon.post("/users/refresh-token", json={"token": token})
    assert r.status_code == 200 and r.json()["user_id"] == 0
    fresh = r.json()["access_token"]["token"]
    assert fresh != token
    assert anon.delete("/users/logout", headers=auth).status_code == 204
    error(anon.get("/streams", headers=auth), 401, 40)
    error(anon.post("/users/refresh-token", json={"token": token}), 401, 40)
    assert anon.get("/streams", headers={"Authorization": f"Bearer {fresh}"}).status_code == 200
    error(anon.delete("/users/logout"), 401, 77)


def test_personal_access_tokens(srv, api, anon):
    name = unique("pat")[:30]
    r = api.post("/personal-access-tokens", json={"name": name, "expiry": 0})
    assert r.status_code == 200
    raw = r.json()["token"]
    assert len(raw) == 68
    listed = api.get("/personal-access-tokens").json()
    assert {"name": name, "expiry_at": None} in listed
    error(api.post("/personal-access-tokens", json={"name": name, "expiry": 0}), 400, 51)
    error(api.post("/personal-access-tokens", json={"name": "ab", "expiry": 0}), 400, 50)
    # the raw token works directly as a bearer, and logs in
    assert anon.get("/streams", headers={"Authorization": f"Bearer {raw}"}).status_code == 200
    r = anon.post("/personal-access-tokens/login", json={"token": raw})
    assert r.status_code == 200 and r.json()["user_id"] == 0 and r.json()["access_token"]["token"]
    error(anon.post("/personal-access-tokens/login", json={"token": "bogus"}), 401, 53)
    assert api.delete(f"/personal-access-tokens/{name}").status_code == 204
    error(api.delete(f"/personal-access-tokens/{name}"), 404, 20)
    error(anon.get("/streams", headers={"Authorization": f"Bearer {raw}"}), 401, 40)


def test_expiring_pat_reports_expiry(api):
    name = unique("exp")[:30]
    before = time.time_ns() // 1000
    assert api.post("/personal-access-tokens", json={"name": name, "expiry": 3_600_000_000}).status_code == 200
    entry = next(t for t in api.get("/personal-access-tokens").json() if t["name"] == name)
    assert before + 3_600_000_000 <= entry["expiry_at"] <= time.time_ns() // 1000 + 3_600_000_000
    api.delete(f"/personal-access-tokens/{name}")


# ------------------------------------------------------------------- users


def test_user_lifecycle(srv, api, anon):
    name, uid = make_user(api)
    assert {"id": uid, "username": name, "status": "active"}.items() <= api.get(f"/users/{uid}").json().items()
    assert api.get(f"/users/{name}").json()["id"] == uid
    assert any(u["id"] == uid for u in api.get("/users").json())
    me = api.get("/users/me").json()
    assert me["id"] == 0 and me["permissions"]["global"]["manage_servers"] is True
    error(api.post("/users", json={"username": name, "password": "secret1", "status": "active"}), 400, 46)
    error(api.post("/users", json={"username": "ab", "password": "secret1", "status": "active"}), 400, 43)
    error(api.post("/users", json={"username": unique("u"), "password": "x", "status": "active"}), 400, 44)
    assert api.post("/users", json={"username": unique("u"), "password": "secret1"}).status_code == 422

    new_name = unique("renamed")
    assert api.put(f"/users/{uid}", json={"username": new_name, "status": "inactive"}).status_code == 204
    user = api.get(f"/users/{uid}").json()
    assert user["username"] == new_name and user["status"] == "inactive"
    error(anon.post("/users/login", json={"username": new_name, "password": "secret1"}), 400, 42)  # inactive
    error(api.put(f"/users/{uid}", json={"options": {"x": "y"}}), 400, 4041)
    assert api.put(f"/users/{uid}", json={"status": "active"}).status_code == 204

    perms = permissions_body(
        {"read_servers", "read_streams"}, {3: ({"read_stream", "poll_messages"}, {4: {"read_topic", "send_messages"}})}
    )
    assert api.put(f"/users/{uid}/permissions", json={"permissions": perms}).status_code == 204
    assert api.get(f"/users/{uid}").json()["permissions"] == perms
    error(api.put("/users/0/permissions", json={"permissions": None}), 400, 49)

    error(api.put(f"/users/{uid}/password", json={"current_password": "wrong1", "new_password": "other1"}), 400, 42)
    assert (
        api.put(f"/users/{uid}/password", json={"current_password": "secret1", "new_password": "other1"}).status_code
        == 204
    )
    token = login(srv.http_url, new_name, "other1")
    # self-service: own details and own password need no permission
    mine = httpx.Client(base_url=srv.http_url, headers={"Authorization": f"Bearer {token}"})
    assert mine.get("/users/me").json()["id"] == uid
    assert (
        mine.put(f"/users/{uid}/password", json={"current_password": "other1", "new_password": "third1"}).status_code
        == 204
    )

    assert api.delete(f"/users/{uid}").status_code == 204
    not_found(api.get(f"/users/{uid}"))
    error(api.delete(f"/users/{uid}"), 404, 20)
    error(api.delete("/users/0"), 400, 48)
    # the token of a deleted user authenticates nobody
    error(mine.get("/users/me"), 401, 40)


def test_permissions_are_enforced(srv, api):
    stream, topic = make_topic(api)
    name, uid = make_user(api)  # no permissions at all
    token = login(srv.http_url, name, "secret1")
    user = httpx.Client(base_url=srv.http_url, headers={"Authorization": f"Bearer {token}"})
    error(user.get("/streams"), 403, 41)
    error(user.post("/streams", json={"name": unique("s")}), 403, 41)
    error(user.get(f"/streams/{stream}"), 403, 41)
    error(user.get(f"/streams/{stream}/topics/{topic}"), 403, 41)
    error(user.get(f"/streams/{stream}/topics/{topic}/messages"), 403, 41)
    error(user.get("/users"), 403, 41)
    error(user.post("/users", json={"username": unique("u"), "password": "secret1", "status": "active"}), 403, 41)
    error(user.get("/users/0"), 403, 41)
    error(user.get("/stats"), 403, 41)
    error(user.get("/clients"), 403, 41)
    error(user.post("/snapshot", json={"compression": "Deflated", "snapshot_types": ["Test"]}), 403, 41)
    # existence is checked before permission
    not_found(user.get(f"/streams/{unique('missing')}"))
    # any authenticated user
    assert user.get("/cluster/metadata").status_code == 200
    assert user.get("/options/topic").status_code == 200
    assert user.get("/personal-access-tokens").json() == []
    # stream-level permission lets the user read that stream only
    sid = api.get(f"/streams/{stream}").json()["id"]
    perms = permissions_body(streams={sid: ({"read_stream"}, None)})
    assert api.put(f"/users/{uid}/permissions", json={"permissions": perms}).status_code == 204
    assert user.get(f"/streams/{stream}").status_code == 200
    assert user.get(f"/streams/{stream}/topics/{topic}/messages").status_code == 200  # read implies poll
    error(
        user.post(
            f"/streams/{stream}/topics/{topic}/messages",
            json={"partitioning": {"kind": "balanced", "value": ""}, "messages": [{"payload": b64(b"x")}]},
        ),
        403,
        41,
    )
    error(user.delete(f"/streams/{stream}"), 403, 41)
    api.delete(f"/users/{uid}")


# ------------------------------------------------------------------- streams


def test_stream_lifecycle(api):
    name = unique("orders")
    r = api.post("/streams", json={"name": name})
    assert r.status_code == 200
    created = r.json()
    assert created["name"] == name and created["topics"] == [] and created["size"] == "0 B"
    sid = created["id"]
    assert {"id", "created_at", "name", "size", "messages_count", "topics_count", "options"} <= set(created)
    body = error(api.post("/streams", json={"name": name}), 400, 1012)
    assert body["field"] == "name"
    error(api.post("/streams", json={"name": ""}), 400, 1013)
    assert api.get(f"/streams/{sid}").json()["name"] == name
    assert api.get(f"/streams/{name}").json()["id"] == sid
    ids = [s["id"] for s in api.get("/streams").json()]
    assert sid in ids and ids == sorted(ids)

    renamed = unique("orders2")
    assert api.put(f"/streams/{sid}", json={"name": renamed, "options": {}}).status_code == 204
    assert api.get(f"/streams/{sid}").json()["name"] == renamed
    error(api.put(f"/streams/{sid}", json={"name": renamed, "options": {"k": "v"}}), 400, 4041)
    assert api.delete(f"/streams/{sid}/purge").status_code == 204
    assert api.delete(f"/streams/{sid}").status_code == 204
    not_found(api.get(f"/streams/{sid}"))
    error(api.delete(f"/streams/{sid}"), 404, 1009)
    error(api.put(f"/streams/{unique('gone')}", json={"name": "x"}), 404, 1009)  # by name too


# ------------------------------------------------------------------- topics, partitions, segments


def test_topic_lifecycle(api):
    stream, topic = make_topic(
        api, partitions=3, segment_size=2097152, durability="replicated", consumer_offset_durability="replicated"
    )
    t = api.get(f"/streams/{stream}/topics/{topic}").json()
    assert t["partitions_count"] == 3 and len(t["partitions"]) == 3
    assert t["message_expiry"] == 2**64 - 1 and t["max_topic_size"] == 2**64 - 1
    assert t["options"]["segment_size"] == {"value": "2097152", "explicit": True}
    assert t["options"]["message_expiry"]["explicit"] is False
    assert {"id", "created_at", "segments_count", "current_offset", "size", "messages_count"} == set(t["partitions"][0])
    tid = t["id"]
    assert api.get(f"/streams/{stream}/topics/{tid}").json()["name"] == topic
    assert [x["name"] for x in api.get(f"/streams/{stream}/topics").json()] == [topic]
    error(
        api.post(
            f"/streams/{stream}/topics",
            json={
                "name": topic,
                "partitions_count": 1,
                "compression_algorithm": "none",
                "message_expiry": 0,
                "max_topic_size": 0,
            },
        ),
        400,
        2013,
    )
    base = {"partitions_count": 1, "compression_algorithm": "gzip", "message_expiry": 0, "max_topic_size": 0}
    error(api.post(f"/streams/{stream}/topics", json=dict(base, name=unique("t"), options={"bogus": "1"})), 400, 4041)
    error(
        api.post(f"/streams/{stream}/topics", json=dict(base, name=unique("t"), options={"segment_size": "7"})),
        400,
        4042,
    )
    error(api.post(f"/streams/{stream}/topics", json=dict(base, name=unique("t"), partitions_count=1001)), 400, 2015)
    assert (
        api.post(
            f"/streams/{stream}/topics", json=dict(base, name=unique("t"), compression_algorithm="zip")
        ).status_code
        == 422
    )

    r = api.put(
        f"/streams/{stream}/topics/{topic}",
        json={
            "name": topic + "b",
            "compression_algorithm": "gzip",
            "message_expiry": 10_000_000,
            "max_topic_size": None,
            "options": {},
        },
    )
    assert r.status_code == 204
    t = api.get(f"/streams/{stream}/topics/{tid}").json()
    assert (t["name"], t["compression_algorithm"], t["message_expiry"]) == (topic + "b", "gzip", 10_000_000)
    assert t["options"]["segment_size"]["value"] == "2097152"  # a patch: untouched keys stay
    error(
        api.put(f"/streams/{stream}/topics/{tid}", json={"name": "x", "options": {"segment_size": "4194304"}}),
        400,
        4041,
    )

    assert api.post(f"/streams/{stream}/topics/{tid}/partitions", json={"partitions_count": 2}).status_code == 200
    assert [p["id"] for p in api.get(f"/streams/{stream}/topics/{tid}").json()["partitions"]] == [0, 1, 2, 3, 4]
    assert api.delete(f"/streams/{stream}/topics/{tid}/partitions", params={"partitions_count": 2}).status_code == 204
    assert api.get(f"/streams/{stream}/topics/{tid}").json()["partitions_count"] == 3
    error(api.delete(f"/streams/{stream}/topics/{tid}/partitions", params={"partitions_count": 9}), 400, 2019)
    error(api.post(f"/streams/{stream}/topics/{tid}/partitions", json={"partitions_count": 0}), 400, 2019)
    assert api.delete(f"/streams/{stream}/topics/{tid}/partitions/0", params={"segments_count": 1}).status_code == 204
    error(api.delete(f"/streams/{stream}/topics/{tid}/partitions/99", params={"segments_count": 1}), 404, 3007)

    assert api.delete(f"/streams/{stream}/topics/{tid}/purge").status_code == 204
    assert api.delete(f"/streams/{stream}/topics/{tid}").status_code == 204
    not_found(api.get(f"/streams/{stream}/topics/{tid}"))
    assert api.get(f"/streams/{unique('none')}/topics").json() == []  # a missing stream lists as empty
    error(api.delete(f"/streams/{stream}/topics/{tid}"), 404, 2010)
    error(api.post(f"/streams/{unique('none')}/topics", json=dict(base, name="x")), 404, 1009)


# ------------------------------------------------------------------- consumer groups


def test_consumer_groups(api):
    stream, topic = make_topic(api, partitions=3)
    prefix = f"/streams/{stream}/topics/{topic}/consumer-groups"
    r = api.post(prefix, json={"name": "g1"})
    assert r.status_code == 200
    g = r.json()
    assert g == {"id": 0, "name": "g1", "partitions_count": 3, "members_count": 0, "members": []}
    error(api.post(prefix, json={"name": "g1"}), 400, 5004)
    error(api.post(prefix, json={"name": ""}), 400, 5005)
    assert api.get(prefix).json() == [{"id": 0, "name": "g1", "partitions_count": 3, "members_count": 0}]
    assert api.get(f"{prefix}/g1").json()["id"] == 0
    assert api.get(f"{prefix}/0").json()["name"] == "g1"
    assert api.delete(f"{prefix}/g1").status_code == 204
    not_found(api.get(f"{prefix}/g1"))
    error(api.delete(f"{prefix}/0"), 404, 5000)
    assert api.post(prefix, json={"name": "g2"}).json()["id"] == 1  # group ids are never reused


# ------------------------------------------------------------------- messages and offsets


def test_send_and_poll(api):
    stream, topic = make_topic(api, partitions=2)
    url = f"/streams/{stream}/topics/{topic}/messages"
    headers = [{"key": {"kind": "string", "value": b64(b"k")}, "value": {"kind": "uint32", "value": "BwAAAA=="}}]
    body = {
        "partitioning": {"kind": "partition_id", "value": b64(struct.pack("<I", 1))},
        "messages": [
            {"id": 0, "payload": b64(b"hello")},
            {"id": 42, "payload": b64(b"\x00\x01"), "user_headers": headers},
            {"id": "340282366920938463463374607431768211455", "payload": b64(b"big id")},
        ],
    }
    r = api.post(url, json=body)
    assert r.status_code == 201 and r.headers["iggy-durability"] == "replicated-memory"
    assert r.json() == {
        "confirmations": [
            {
                "stream_id": api.get(f"/streams/{stream}").json()["id"],
                "topic_id": 0,
                "partition_id": 1,
                "base_offset": 0,
            }
        ]
    }
    r = api.get(url, params={"partition_id": 1, "kind": "offset", "value": 0, "count": 10})
    assert r.status_code == 200
    polled = r.json()
    assert (polled["partition_id"], polled["current_offset"], polled["count"]) == (1, 2, 3)
    first, second, third = polled["messages"]
    assert base64.b64decode(first["payload"]) == b"hello" and first["header"]["id"] != 0
    assert first["user_headers"] == [] and first["header"]["payload_length"] == 5
    assert second["header"]["id"] == 42 and second["user_headers"] == headers
    assert second["header"]["user_headers_length"] == 2 * 5 + 1 + 4
    assert third["header"]["id"] == 2**128 - 1
    assert [m["header"]["offset"] for m in polled["messages"]] == [0, 1, 2]
    ts = first["header"]["timestamp"]
    assert ts > 0 and first["header"]["origin_timestamp"] > 0 and first["header"]["checksum"] > 0

    # strategies
    assert [
        m["header"]["offset"]
        for m in api.get(url, params={"partition_id": 1, "kind": "last", "count": 2}).json()["messages"]
    ] == [1, 2]
    assert (
        api.get(url, params={"partition_id": 1, "kind": "f", "count": 1}).json()["messages"][0]["header"]["offset"] == 0
    )
    assert api.get(url, params={"partition_id": 1, "kind": "timestamp", "value": ts}).json()["count"] == 3
    assert api.get(url, params={"partition_id": 1, "value": 99}).json() == {
        "partition_id": 1,
        "current_offset": 2,
        "count": 0,
        "messages": [],
    }
    assert api.get(url, params={"partition_id": 1, "count": 0}).json()["messages"] == []
    empty = api.get(url, params={"partition_id": 0}).json()
    assert (empty["count"], empty["current_offset"], empty["messages"]) == (0, 0, [])

    # next + auto_commit move the consumer's offset; offsets are per consumer
    nxt = {"partition_id": 1, "kind": "next", "count": 2, "auto_commit": "true", "consumer_id": 7}
    assert [m["header"]["offset"] for m in api.get(url, params=nxt).json()["messages"]] == [0, 1]
    assert [m["header"]["offset"] for m in api.get(url, params=nxt).json()["messages"]] == [2]
    assert api.get(url, params=nxt).json()["messages"] == []
    offsets = f"/streams/{stream}/topics/{topic}/consumer-offsets"
    assert api.get(offsets, params={"consumer_id": 7, "partition_id": 1}).json() == {
        "partition_id": 1,
        "current_offset": 2,
        "stored_offset": 2,
    }


def test_send_partitioning_and_ack(api):
    stream, topic = make_topic(api, partitions=3)
    url = f"/streams/{stream}/topics/{topic}/messages"
    msg = [{"payload": b64(b"x")}]
    seen = {
        api.post(url, json={"partitioning": {"kind": "balanced", "value": ""}, "messages": msg}).json()[
            "confirmations"
        ][0]["partition_id"]
        for _ in range(3)
    }
    assert seen == {0, 1, 2}
    keyed = {
        api.post(url, json={"partitioning": {"kind": "messages_key", "value": b64(b"user-1")}, "messages": msg}).json()[
            "confirmations"
        ][0]["partition_id"]
        for _ in range(3)
    }
    assert len(keyed) == 1
    r = api.post(url, params={"ack": "none"}, json={"partitioning": {"kind": "balanced", "value": ""}, "messages": msg})
    assert r.status_code == 202 and r.content == b"" and r.headers["iggy-durability"] == "none"


def test_send_refusals(api):
    stream, topic = make_topic(api, partitions=1)
    url = f"/streams/{stream}/topics/{topic}/messages"
    balanced = {"kind": "balanced", "value": ""}
    error(api.post(url, json={"partitioning": balanced, "messages": []}), 400, 4009)
    assert api.post(url, json={"partitioning": balanced, "messages": [{"payload": ""}]}).status_code == 422
    assert api.post(url, json={"partitioning": balanced, "messages": [{"payload": "!!"}]}).status_code == 422
    assert api.post(url, json={"partitioning": balanced, "messages": [{"payload": "eA=="}], "x": 1}).status_code == 422
    error(
        api.post(
            url,
            json={
                "partitioning": {"kind": "partition_id", "value": b64(struct.pack("<I", 5))},
                "messages": [{"payload": "eA=="}],
            },
        ),
        404,
        3007,
    )
    error(
        api.post(url, json={"partitioning": {"kind": "messages_key", "value": ""}, "messages": [{"payload": "eA=="}]}),
        400,
        4028,
    )
    bad_header = [{"key": {"kind": "string", "value": ""}, "value": {"kind": "raw", "value": "eA=="}}]
    error(
        api.post(url, json={"partitioning": balanced, "messages": [{"payload": "eA==", "user_headers": bad_header}]}),
        400,
        4018,
    )
    error(
        api.post(
            f"/streams/{stream}/topics/nope/messages",
            json={"partitioning": balanced, "messages": [{"payload": "eA=="}]},
        ),
        404,
        2010,
    )
    not_found(api.get(f"/streams/{stream}/topics/nope/messages"))
    error(api.get(url, params={"partition_id": 3}), 404, 3007)


def test_consumer_offsets(api):
    stream, topic = make_topic(api, partitions=1)
    api.post(
        f"/streams/{stream}/topics/{topic}/messages",
        json={"partitioning": {"kind": "balanced", "value": ""}, "messages": [{"payload": "eA=="}] * 5},
    )
    url = f"/streams/{stream}/topics/{topic}/consumer-offsets"
    not_found(api.get(url, params={"consumer_id": 1}))
    assert api.put(url, json={"consumer_id": "1", "partition_id": None, "offset": 3}).status_code == 204
    assert api.get(url, params={"consumer_id": 1}).json() == {
        "partition_id": 0,
        "current_offset": 4,
        "stored_offset": 3,
    }
    assert api.put(url, json={"consumer_id": "reader", "partition_id": 0, "offset": 1}).status_code == 204
    assert api.get(url, params={"consumer_id": "reader", "partition_id": 0}).json()["stored_offset"] == 1
    error(api.put(url, json={"consumer_id": 1, "offset": 10}), 400, 4100)
    error(api.put(url, json={"consumer_id": 1, "partition_id": 4, "offset": 0}), 404, 3007)
    # next starts after the stored offset
    polled = api.get(f"/streams/{stream}/topics/{topic}/messages", params={"consumer_id": 1, "kind": "next"}).json()
    assert [m["header"]["offset"] for m in polled["messages"]] == [4]
    assert api.delete(f"{url}/1", params={"partition_id": 0}).status_code == 204
    error(api.delete(f"{url}/1"), 404, 3021)
    not_found(api.get(url, params={"consumer_id": 1}))


# ------------------------------------------------------------------- system


def test_stats(api):
    stream, topic = make_topic(api)
    stats = api.get("/stats").json()
    for key in (
        "process_id",
        "cpu_usage",
        "total_cpu_usage",
        "run_time",
        "start_time",
        "streams_count",
        "topics_count",
        "partitions_count",
        "segments_count",
        "messages_count",
        "clients_count",
        "consumer_groups_count",
        "hostname",
        "os_name",
        "os_version",
        "kernel_version",
        "iggy_server_version",
        "iggy_server_semver",
        "threads_count",
        "cache_metrics",
    ):
        assert key in stats, key
    for key in SIZE_STATS:  # byte counts are size strings ("1.5 KiB")
        assert isinstance(stats[key], str) and stats[key].split(" ")[1].endswith("B"), (key, stats[key])
    assert stats["streams_count"] >= 1 and stats["iggy_server_semver"] == 9000


async def test_clients_list_binary_connections(srv, api):
    from tests.conftest import connect_root

    assert all(c["transport"] != "HTTP" for c in api.get("/clients").json())
    sdk = await connect_root(srv.tcp_address)
    clients = api.get("/clients").json()
    tcp = [c for c in clients if c["transport"] == "TCP" and c["user_id"] == 0]
    assert tcp, clients
    one = api.get(f"/clients/{tcp[-1]['client_id']}").json()
    assert one["client_id"] == tcp[-1]["client_id"] and one["consumer_groups"] == []
    assert set(one) == {"client_id", "user_id", "address", "transport", "consumer_groups_count", "consumer_groups"}
    not_found(api.get("/clients/4000000000"))
    assert api.get("/clients/abc").status_code in (400, 404)
    del sdk


def test_cluster_metadata(srv, api):
    meta = api.get("/cluster/metadata").json()
    assert meta["name"] == "single-node"
    node = meta["nodes"][0]
    assert node["role"] == "leader" and node["status"] == "healthy" and node["ip"] == "127.0.0.1"
    assert node["endpoints"]["tcp"] == srv.tcp_port and node["endpoints"]["http"] == srv.http_port


def test_options_catalog(api):
    topic = api.get("/options/topic").json()
    spec = {o["key"]: o for o in topic}
    assert spec["segment_size"]["kind"] == "uint64"
    assert bytes(spec["segment_size"]["default_value"]) == (1 << 30).to_bytes(8, "little")
    assert spec["enforce_fsync"]["default_value"] == [0] and spec["enforce_fsync"]["description"]
    assert api.get("/options/stream").json() == [] and api.get("/options/user").json() == []
    error(api.get("/options/partition"), 400, 3)


def test_metrics(api, anon):
    error(anon.get("/metrics"), 401, 77)
    make_topic(api)
    r = api.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    values = {}
    for line in r.text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    for gauge in ("streams", "topics", "partitions", "segments", "messages", "users", "clients"):
        assert gauge in values, gauge
    assert values["streams"] >= 1 and values["users"] >= 1
    assert values["http_requests_total"] > 1


def test_snapshot(api):
    r = api.post("/snapshot", json={"compression": "Deflated", "snapshot_types": ["All"]})
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    assert r.headers["content-disposition"].startswith('attachment; filename="iggy_snapshot_')
    names = zipfile.ZipFile(io.BytesIO(r.content)).namelist()
    assert {"test.txt", "server_config.txt", "filesystem_overview.txt", "process_list.txt"} <= set(names)
    r = api.post("/snapshot", json={"compression": "Stored", "snapshot_types": ["Test"]})
    assert zipfile.ZipFile(io.BytesIO(r.content)).read("test.txt") == b"test\n"
    error(api.post("/snapshot", json={"compression": "Stored", "snapshot_types": ["All", "Test"]}), 400, 3)
    assert api.post("/snapshot", json={"compression": "Stored", "snapshot_types": ["Nope"]}).status_code == 422
