"""Authentication and authorisation hardening, against a real server process on each engine.

* JSON nested too deeply for the decoder is a 400 on every route that takes JSON, with at
  most one short log line, never a 500 with a RecursionError traceback;
* a personal access token whose expiry overflows u64 is refused with its code (56);
* user ids are reused after a delete: a JWT, a refresh, a PAT or a live TCP session of the
  deleted user must not act as the next user given the id (also in the shards' C data plane);
* stream and topic ids are reused after a delete: grants scoped to the deleted stream/topic,
  stored consumer offsets and consumer groups must not carry over to the next one, also
  after a restart (the removal is part of the journaled delete);
* failed logins back off per address and per username (TCP password, PAT, HTTP), without
  refusing the correct login of another client. Clients connect from distinct loopback
  addresses (127.0.0.x) so that the tests can tell addresses apart.
"""

from __future__ import annotations

import asyncio
import struct

import httpx
import pytest
from apache_iggy import PollingStrategy

from iggy.protocol.batch import build_batch
from tests.conftest import ROOT_PASSWORD, ROOT_USER, ServerProcess, connect_root, sdk_poll, uniq
from tests.rawclient import RawClient, ident, wire_name

U64_MAX = 2**64 - 1
OP_CREATE_STREAM, OP_CREATE_PAT, OP_SEND = 128, 146, 160
GET_STREAMS, GET_USERS = 201, 32
NO_PERMS = {
    "manage_servers": False,
    "read_servers": False,
    "manage_users": False,
    "read_users": False,
    "manage_streams": False,
    "read_streams": False,
    "manage_topics": False,
    "read_topics": False,
    "poll_messages": False,
    "send_messages": False,
}
STREAM_FLAGS = ("manage_stream", "read_stream", "manage_topics", "read_topics", "poll_messages", "send_messages")


def http(srv, token: str | None = None, source: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    transport = httpx.HTTPTransport(local_address=source) if source else None
    return httpx.Client(base_url=srv.http_url, headers=headers, transport=transport, timeout=10)


def login(srv, username: str = ROOT_USER, password: str = ROOT_PASSWORD, source: str | None = None) -> str:
    with http(srv, source=source) as c:
        r = c.post("/users/login", json={"username": username, "password": password})
    assert r.status_code == 200, r.text
    return r.json()["access_token"]["token"]


@pytest.fixture(scope="module")
def api(srv):
    with http(srv, login(srv)) as c:
        yield c


def create_user(api, name: str, password: str = "secret", glob: dict | None = None, streams: dict | None = None) -> int:
    perms = {
        "global": {**NO_PERMS, **(glob or {})},
        "streams": {
            str(sid): {**dict.fromkeys(STREAM_FLAGS, False), **flags, "topics": None}
            for sid, flags in (streams or {}).items()
        }
        or None,
    }
    r = api.post("/users", json={"username": name, "password": password, "status": "active", "permissions": perms})
    assert r.status_code == 200, r.text
    return r.json()["id"]


def make_stream(api, partitions: int = 1) -> tuple[int, str]:
    """A new stream with one topic "t"; returns (stream id, stream name)."""
    name = uniq("s")
    r = api.post("/streams", json={"name": name})
    assert r.status_code == 200, r.text
    stream_id = r.json()["id"]
    r = api.post(
        f"/streams/{name}/topics",
        json={
            "name": "t",
            "partitions_count": partitions,
            "compression_algorithm": "none",
            "message_expiry": 0,
            "max_topic_size": 0,
        },
    )
    assert r.status_code == 200, r.text
    return stream_id, name


def send_body(stream, topic) -> bytes:
    batch = build_batch([(1, b"x", b"")])
    meta = ident(stream) + ident(topic) + bytes([2, 4]) + struct.pack("<I", 0) + struct.pack("<I", 1)
    return struct.pack("<I", len(meta)) + meta + batch


def raw_login(srv, username: str, password: str, source: str | None = None) -> RawClient:
    c = RawClient(srv.tcp_address, source=source)
    reply = c.login(username, password)
    assert reply.status == 0 and reply.command != 13, reply
    return c


# ------------------------------------------------------------------- 5: deep JSON


def json_routes():
    """(method, path) of every route that takes a JSON body, path values filled in."""
    from iggy.http.routes import messages, streams, system, users

    out = []
    for handler in [*system.ROUTES, *users.ROUTES, *streams.ROUTES, *messages.ROUTES]:
        if "data" not in handler.parsed_fn_signature.parameters:
            continue
        path = next(iter(handler.paths))
        for name in ("stream_id", "topic_id", "user_id", "group_id", "name"):
            path = path.replace(f"{{{name}:str}}", "1")
        path = path.replace("{partition_id:int}", "1")
        for method in handler.http_methods:
            out.append((method, path, handler.opt.get("public", False)))
    return out


def test_deep_json_answers_400_on_every_json_route(srv, api):
    routes = json_routes()
    assert {("POST", "/users/login"), ("POST", "/users/refresh-token"), ("POST", "/personal-access-tokens/login")} <= {
        (m, p) for m, p, _ in routes
    }
    assert len(routes) >= 15
    before = srv.log_path.read_text()
    deep = b"[" * 5000 + b"]" * 5000
    nested_field = b'{"name": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    for method, path, public in routes:
        client = http(srv) if public else api
        for body in (deep, nested_field):
            r = client.request(method, path, content=body, headers={"Content-Type": "application/json"})
            assert r.status_code == 400, (method, path, r.status_code, r.text)
            assert r.headers["content-type"].startswith("text/plain")
            assert "nested too deeply" in r.text
    log = srv.log_path.read_text()[len(before) :]
    assert "RecursionError" not in log and "Traceback" not in log
    lines = [line for line in log.splitlines() if "nested too deeply" in line]
    assert len(lines) <= 1 and all(len(line) < 300 for line in lines)
    # a body just deep enough to parse still gets the usual shape error, and the server is fine
    r = api.post(
        "/streams", content=b'{"name": ' + b"[" * 50 + b"]" * 50 + b"}", headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 422
    assert api.get("/streams").status_code == 200


# ------------------------------------------------------------------- 10: expiry overflow


def test_pat_expiry_that_overflows_u64_is_refused_with_56(srv, api):
    for expiry in (U64_MAX - 1, U64_MAX - 1000):
        r = api.post("/personal-access-tokens", json={"name": uniq("p")[:20], "expiry": expiry})
        assert r.status_code == 400 and r.json()["id"] == 56, r.text
    c = raw_login(srv, ROOT_USER, ROOT_PASSWORD)
    try:
        reply = c.call(OP_CREATE_PAT, 0, wire_name(uniq("p")[:20]) + struct.pack("<Q", U64_MAX - 1))
        assert reply.code == 56
        # u64::MAX still means "never", a day is fine: the server is unharmed
        assert c.call(OP_CREATE_PAT, 0, wire_name(uniq("p")[:20]) + struct.pack("<Q", U64_MAX)).code == 0
        assert c.call(OP_CREATE_PAT, 0, wire_name(uniq("p")[:20]) + struct.pack("<Q", 86_400_000_000)).code == 0
    finally:
        c.close()
    assert "Traceback" not in srv.log_path.read_text()


# ------------------------------------------------------------------- 8: user id reuse


async def test_deleted_users_credentials_do_not_act_as_the_next_user_with_its_id(srv, api):
    root = await connect_root(srv.tcp_address)
    s_id, s_name = make_stream(api)
    u1 = uniq("u1")
    u1_id = create_user(api, u1, glob={"send_messages": True, "read_streams": True})
    jwt = login(srv, u1, "secret")
    with http(srv, jwt) as c:
        pat = c.post("/personal-access-tokens", json={"name": "mine", "expiry": 0}).json()["token"]
    session = raw_login(srv, u1, "secret")
    try:
        assert session.call(OP_SEND, 0, send_body(s_name, "t")).code == 0  # the data plane knows the session
        assert session.read(GET_STREAMS).code == 0
        assert api.delete(f"/users/{u1_id}").status_code == 204
        u2 = uniq("u2")
        u2_id = create_user(
            api, u2, glob={"manage_users": True, "read_users": True, "manage_streams": True, "send_messages": True}
        )
        assert u2_id == u1_id  # the id is reused, as the reference server does
        with http(srv, jwt) as c:
            assert c.get("/users").status_code == 401
            assert c.get("/users/me").status_code == 401
            r = c.post("/users", json={"username": uniq("x"), "password": "secret", "status": "active"})
            assert r.status_code == 401 and r.json()["id"] == 40
            assert c.post("/streams", json={"name": uniq("x")}).status_code == 401
        with http(srv) as c:
            r = c.post("/users/refresh-token", json={"token": jwt})
            assert r.status_code == 401, r.text
            assert c.post("/personal-access-tokens/login", json={"token": pat}).status_code != 200
            assert c.get("/users", headers={"Authorization": f"Bearer {pat}"}).status_code == 401
        # the old TCP session: the shards' data plane first (a control-plane reply would tell
        # the shard who the session is now), then the control plane
        assert session.call(OP_SEND, 0, send_body(s_name, "t")).code == 40
        assert session.call(OP_CREATE_STREAM, 0, wire_name(uniq("x"))).code == 40
        assert session.read(GET_USERS).code == 40
        assert session.call(OP_SEND, 0, send_body(s_name, "t")).code == 40
        # u2's own credentials work
        u2_jwt = login(srv, u2, "secret")
        with http(srv, u2_jwt) as c:
            assert c.get("/users").status_code == 200
            refreshed = c.post("/users/refresh-token", json={"token": u2_jwt})
            assert refreshed.status_code == 200 and refreshed.json()["user_id"] == u2_id
        fresh = raw_login(srv, u2, "secret")
        assert fresh.call(OP_SEND, 0, send_body(s_name, "t")).code == 0
        fresh.close()
        assert api.delete(f"/users/{u2_id}").status_code == 204
    finally:
        session.close()
    await root.delete_stream(s_name)


# ------------------------------------------------------------------- 9: stream / topic id reuse


async def test_grants_on_a_deleted_stream_do_not_apply_to_the_next_stream_with_its_id(srv, api):
    s_id, s_name = make_stream(api)
    name = uniq("reader")
    uid = create_user(api, name, streams={s_id: {"read_stream": True, "poll_messages": True, "send_messages": True}})
    reader = raw_login(srv, name, "secret")
    try:
        assert reader.call(OP_SEND, 0, send_body(s_id, "t")).code == 0
        assert api.delete(f"/streams/{s_id}").status_code == 204
        assert api.get(f"/users/{uid}").json()["permissions"]["streams"] is None
        private = uniq("private")
        assert api.post("/streams", json={"name": private}).json()["id"] == s_id  # id reused
        api.post(
            f"/streams/{private}/topics",
            json={
                "name": "t",
                "partitions_count": 1,
                "message_expiry": 0,
                "compression_algorithm": "none",
                "max_topic_size": 0,
            },
        )
        assert (
            api.post(
                f"/streams/{private}/topics/t/messages",
                json={
                    "partitioning": {"kind": "partition_id", "value": "AAAAAA=="},
                    "messages": [{"payload": "c2VjcmV0"}],
                },
            ).status_code
            == 201
        )
        assert reader.call(OP_SEND, 0, send_body(s_id, "t")).code == 41  # shard data plane
        with http(srv, login(srv, name, "secret")) as c:
            assert c.get(f"/streams/{s_id}").status_code == 403
            r = c.get(
                f"/streams/{s_id}/topics/t/messages",
                params={"consumer_id": 1, "partition_id": 0, "kind": "first", "count": 10},
            )
            assert r.status_code == 403
        u = await connect_root(srv.tcp_address)
        await u.login_user(name, "secret")
        with pytest.raises(RuntimeError, match="Unauthorized"):
            await sdk_poll(u, s_id, "t", PollingStrategy.First())
    finally:
        reader.close()
    api.delete(f"/streams/{s_id}")
    api.delete(f"/users/{uid}")


async def test_topic_grants_offsets_and_groups_do_not_carry_over_to_a_reused_topic_id(srv, api):
    s_id, s_name = make_stream(api)
    name = uniq("treader")
    perms = {
        "global": NO_PERMS,
        "streams": {
            str(s_id): {
                **dict.fromkeys(STREAM_FLAGS, False),
                "topics": {
                    "0": {"manage_topic": False, "read_topic": True, "poll_messages": True, "send_messages": True}
                },
            }
        },
    }
    r = api.post("/users", json={"username": name, "password": "secret", "status": "active", "permissions": perms})
    uid = r.json()["id"]
    offsets = f"/streams/{s_id}/topics/0/consumer-offsets"
    r = api.post(
        f"/streams/{s_id}/topics/0/messages",
        json={"partitioning": {"kind": "balanced"}, "messages": [{"payload": "eA=="}] * 3},
    )
    assert r.status_code == 201, r.text
    assert api.put(offsets, json={"consumer_id": 7, "partition_id": 0, "offset": 2}).status_code == 204
    assert api.get(offsets, params={"consumer_id": 7, "partition_id": 0}).json()["stored_offset"] == 2
    group = api.post(f"/streams/{s_id}/topics/0/consumer-groups", json={"name": "g"}).json()
    member = await connect_root(srv.tcp_address)
    await member.join_consumer_group(s_id, 0, group["id"])
    assert api.get(f"/streams/{s_id}/topics/0/consumer-groups/{group['id']}").json()["members_count"] == 1

    assert api.delete(f"/streams/{s_id}/topics/0").status_code == 204
    assert api.get(f"/users/{uid}").json()["permissions"]["streams"][str(s_id)]["topics"] is None
    r = api.post(
        f"/streams/{s_id}/topics",
        json={
            "name": "again",
            "partitions_count": 1,
            "message_expiry": 0,
            "compression_algorithm": "none",
            "max_topic_size": 0,
        },
    )
    assert r.json()["id"] == 0  # id reused
    assert api.get(offsets, params={"consumer_id": 7, "partition_id": 0}).status_code == 404
    group2 = api.post(f"/streams/{s_id}/topics/0/consumer-groups", json={"name": "g"}).json()
    assert group2["id"] == group["id"]
    assert api.get(f"/streams/{s_id}/topics/0/consumer-groups/{group2['id']}").json()["members_count"] == 0
    reader = raw_login(srv, name, "secret")
    try:
        assert reader.call(OP_SEND, 0, send_body(s_id, 0)).code == 41
    finally:
        reader.close()
    api.delete(f"/streams/{s_id}")
    api.delete(f"/users/{uid}")


def test_permission_removal_survives_restart(tmp_path):
    srv = ServerProcess(tmp_path / "data").start()
    try:
        with http(srv, login(srv)) as api:
            s_id, _ = make_stream(api)
            keep_id, _ = make_stream(api)
            uid = create_user(api, "survivor", streams={s_id: {"read_stream": True}, keep_id: {"read_stream": True}})
            assert api.delete(f"/streams/{s_id}").status_code == 204
        srv.kill()
        srv.start()
        with http(srv, login(srv)) as api:
            streams = api.get(f"/users/{uid}").json()["permissions"]["streams"]
            assert set(streams) == {str(keep_id)}
            assert api.post("/streams", json={"name": "next"}).json()["id"] == s_id
        with http(srv, login(srv, "survivor", "secret")) as c:
            assert c.get(f"/streams/{s_id}").status_code == 403
            assert c.get(f"/streams/{keep_id}").status_code == 200
    finally:
        srv.stop()


# ------------------------------------------------------------------- 7: failed-login backoff

FREE = 5  # iggy.control.throttle.LoginThrottle.free


def evicted(srv, username: str, password: str, source: str) -> int | None:
    c = RawClient(srv.tcp_address, source=source)
    try:
        return c.login(username, password).eviction_reason
    finally:
        c.close()


def test_tcp_failed_logins_back_off_per_address_and_per_user(srv, api):
    target, other = uniq("target"), uniq("other")
    create_user(api, target)
    create_user(api, other)
    raw_login(srv, target, "secret", source="127.0.0.4").close()  # the user's own client, before
    for _ in range(FREE + 1):
        assert evicted(srv, target, "wrong", source="127.0.0.2") == 9
    # the guesser's address is backed off: even the right password is not checked
    assert evicted(srv, target, "secret", source="127.0.0.2") == 9
    assert evicted(srv, other, "secret", source="127.0.0.2") == 9
    # the user is backed off for addresses it never logged in from ...
    assert evicted(srv, target, "secret", source="127.0.0.3") == 9
    # ... but not for its own client, and other users on other addresses are not touched
    raw_login(srv, target, "secret", source="127.0.0.4").close()
    raw_login(srv, other, "secret", source="127.0.0.3").close()
    raw_login(srv, ROOT_USER, ROOT_PASSWORD).close()


def test_http_and_pat_failed_logins_back_off(srv, api):
    name = uniq("webuser")
    create_user(api, name)
    with http(srv, source="127.0.0.6") as c:
        for _ in range(FREE + 1):
            r = c.post("/users/login", json={"username": name, "password": "wrong"})
            assert r.status_code == 400 and r.json()["id"] == 42
        r = c.post("/users/login", json={"username": name, "password": "secret"})
        assert r.status_code == 400 and r.json()["id"] == 42
        assert int(r.headers["retry-after"]) >= 1
    with http(srv, source="127.0.0.7") as c:  # another client, another user: unaffected
        assert c.post("/users/login", json={"username": ROOT_USER, "password": ROOT_PASSWORD}).status_code == 200
    # a personal access token guessed from one address: the address backs off, a valid token too
    token = api.post("/personal-access-tokens", json={"name": uniq("t")[:20], "expiry": 0}).json()["token"]
    with http(srv, source="127.0.0.8") as c:
        for _ in range(FREE + 1):
            assert c.post("/personal-access-tokens/login", json={"token": "A" * 68}).status_code == 401
        r = c.post("/personal-access-tokens/login", json={"token": token})
        assert r.status_code == 401 and int(r.headers["retry-after"]) >= 1
    pat_client = RawClient(srv.tcp_address, source="127.0.0.8")
    try:
        assert pat_client.login_token(token).eviction_reason == 10
    finally:
        pat_client.close()
    with http(srv, source="127.0.0.9") as c:
        assert c.post("/personal-access-tokens/login", json={"token": token}).status_code == 200


async def test_parallel_guessing_does_not_hold_up_other_logins(srv, api):
    """A flood of wrong passwords from one address and correct logins from another at the
    same time: all the correct ones succeed (none is refused or times out)."""
    name = uniq("busy")
    create_user(api, name)

    def guess():
        return evicted(srv, name, "wrong", source="127.0.0.10")

    def correct():
        raw_login(srv, ROOT_USER, ROOT_PASSWORD, source="127.0.0.11").close()

    loop = asyncio.get_running_loop()
    guesses = [loop.run_in_executor(None, guess) for _ in range(40)]
    await asyncio.gather(*[loop.run_in_executor(None, correct) for _ in range(5)])
    assert set(await asyncio.gather(*guesses)) == {9}
