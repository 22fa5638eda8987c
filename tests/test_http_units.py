"""Unit tests of the REST API's pure parts: sizes, JWT, settings, user headers, errors, /ui.

These need no server; the routes themselves are tested against a real server process in
test_http_api.py.
"""

from __future__ import annotations

import base64
import struct
import time
import types
import uuid

import jwt as pyjwt
import pytest

from iggy.http import errors as http_errors
from iggy.http import messages_json as mj
from iggy.http import schemas
from iggy.http import settings as http_settings
from iggy.http.auth import JwtIssuer, Principal, bearer, uuid7
from iggy.http.bridge import user_of
from iggy.http.context import check_name, ident
from iggy.http.settings import JwtSettings
from iggy.http.views import permissions_json, size_text
from iggy.metadata.state import State
from iggy.protocol.errors import ErrorCode, IggyError
from tests.conftest import permissions_body


@pytest.mark.parametrize(
    "n, text",
    [
        (0, "0 B"),
        (999, "999 B"),
        (1000, "1 KB"),
        (1024, "1 KiB"),
        (1536, "1.5 KiB"),
        (52904123, "52904.123 KB"),
        (1073741824, "1 GiB"),
        (2_000_000, "2 MB"),
        (1001, "1.001 KB"),
        (1025, "1.025 KB"),
        (1023, "1.023 KB"),
        (3 * 1024**6, "3 EiB"),
    ],
)
def test_size_text(n, text):
    assert size_text(n) == text


# ------------------------------------------------------------------- JWT


def who(issuer, token):
    p = issuer.principal(token)
    return None if p is None else (p.user_id, p.generation)


def test_jwt_claims_and_round_trip():
    issuer = JwtIssuer(JwtSettings(access_token_expiry=3600))
    token = issuer.issue(Principal(7, 9))
    claims = pyjwt.decode(token["token"], options={"verify_signature": False})
    assert claims["sub"] == "7" and claims["iss"] == "iggy.apache.org" and claims["aud"] == "iggy.apache.org"
    assert claims["exp"] == token["expiry"] == claims["iat"] + 3600
    assert claims["gen"] == 9
    assert uuid.UUID(claims["jti"]).version == 7
    assert who(issuer, token["token"]) == (7, 9)


def test_jwt_random_secret_per_issuer():
    a, b = JwtIssuer(JwtSettings()), JwtIssuer(JwtSettings())
    assert a.secret != b.secret and 64 <= len(a.secret) <= 95
    assert b.principal(a.issue(Principal(1, 1))["token"]) is None  # a restart invalidates every token


def test_jwt_configured_secret_and_algorithm():
    s = JwtSettings(algorithm="HS512", secret=b"s3cret" * 11)
    token = JwtIssuer(s).issue(Principal(3, 4))["token"]
    assert pyjwt.get_unverified_header(token)["alg"] == "HS512"
    assert who(JwtIssuer(s), token) == (3, 4)


def test_jwt_refuses_foreign_expired_and_wrong_audience():
    key, other = b"k" * 32, b"o" * 32
    s = JwtSettings(secret=key, clock_skew=0)
    issuer = JwtIssuer(s)
    now = int(time.time())
    base = {"jti": uuid7(), "iss": s.issuer, "aud": s.audience, "sub": "1", "iat": now, "nbf": now, "gen": 2}
    assert issuer.principal(pyjwt.encode(dict(base, exp=now - 10), key, algorithm="HS256")) is None
    assert issuer.principal(pyjwt.encode(dict(base, exp=now + 60, aud="other"), key, algorithm="HS256")) is None
    assert issuer.principal(pyjwt.encode(dict(base, exp=now + 60), other, algorithm="HS256")) is None
    assert who(issuer, pyjwt.encode(dict(base, exp=now + 60), key, algorithm="HS256")) == (1, 2)
    assert issuer.principal("not-a-jwt") is None
    # a token that does not say which user (generation) it was issued for names nobody
    no_gen = {k: v for k, v in base.items() if k != "gen"}
    assert issuer.principal(pyjwt.encode(dict(no_gen, exp=now + 60), key, algorithm="HS256")) is None
    assert issuer.principal(pyjwt.encode(dict(base, gen="2", exp=now + 60), key, algorithm="HS256")) is None


def test_jwt_revocation_is_per_token():
    issuer = JwtIssuer(JwtSettings())
    first, second = issuer.issue(Principal(1, 1))["token"], issuer.issue(Principal(1, 1))["token"]
    issuer.revoke(first)
    assert issuer.principal(first) is None
    assert who(issuer, second) == (1, 1)


def test_bearer_header():
    assert bearer({"authorization": "Bearer abc"}) == "abc"
    for headers in ({}, {"authorization": "Basic abc"}, {"authorization": "Bearer "}):
        with pytest.raises(IggyError) as err:
            bearer(headers)
        assert err.value.code == ErrorCode.ACCESS_TOKEN_MISSING


# ------------------------------------------------------------------- settings


def test_settings_from_config_defaults_and_overrides():
    jwt_cfg = types.SimpleNamespace(
        algorithm="hs384", access_token_expiry=120, encoding_secret="abc", decoding_secret="", use_base64_secret=False
    )
    cfg = types.SimpleNamespace(
        http=types.SimpleNamespace(
            address="0.0.0.0:3999", jwt=jwt_cfg, cors=types.SimpleNamespace(allowed_origins=["http://x"])
        )
    )
    s = http_settings.from_config(cfg)
    assert (s.host, s.port, s.max_request_size) == ("0.0.0.0", 3999, 2_000_000)
    assert s.jwt.algorithm == "HS384" and s.jwt.access_token_expiry == 120 and s.jwt.secret == b"abc"
    assert s.cors.allowed_origins == ("http://x",) and s.cors.allowed_methods == ("GET", "POST", "PUT", "DELETE")
    assert s.metrics_enabled and s.metrics_endpoint == "/metrics"


def test_settings_refuse_bad_jwt_configuration():
    bad_alg = types.SimpleNamespace(http=types.SimpleNamespace(jwt=types.SimpleNamespace(algorithm="RS256")))
    with pytest.raises(ValueError):
        http_settings.from_config(bad_alg)
    mismatch = types.SimpleNamespace(
        http=types.SimpleNamespace(jwt=types.SimpleNamespace(encoding_secret="a", decoding_secret="b"))
    )
    with pytest.raises(ValueError):
        http_settings.from_config(mismatch)
    b64 = types.SimpleNamespace(
        http=types.SimpleNamespace(
            jwt=types.SimpleNamespace(encoding_secret=base64.b64encode(b"raw").decode(), use_base64_secret=True)
        )
    )
    assert http_settings.from_config(b64).jwt.secret == b"raw"


def _one_user() -> tuple[State, types.SimpleNamespace]:
    """A State with user 1 (generation 1), and a plane holding it."""
    st = State()
    st.apply(
        {
            "op": "user.create",
            "id": 1,
            "username": "u",
            "password_hash": "h",
            "status": 1,
            "permissions": None,
            "created_at": 0,
            "generation": 1,
        }
    )
    return st, types.SimpleNamespace(meta=types.SimpleNamespace(state=st))


def test_a_jwt_revoked_in_the_metadata_authenticates_nobody_until_it_expires():
    st, plane = _one_user()
    assert user_of(plane, Principal(1, 1, "a")).id == 1
    st.apply({"op": "jwt.revoke", "jti": "a", "expiry": 200, "at": 100})
    with pytest.raises(IggyError) as err:
        user_of(plane, Principal(1, 1, "a"))
    assert err.value.code == ErrorCode.UNAUTHENTICATED
    assert user_of(plane, Principal(1, 1, "b")).id == 1  # another token of the same user
    assert user_of(plane, Principal(1, 1)).id == 1  # a personal access token has no jti
    # kept through a snapshot; forgotten by the first revocation after it expired, on every
    # node alike (the leader's `at`, not each node's clock)
    st = State.from_dict(st.to_dict())
    assert st.revoked_jwts == {"a": 200}
    st.apply({"op": "jwt.revoke", "jti": "b", "expiry": 400, "at": 300})
    assert st.revoked_jwts == {"b": 400}
    assert "revoked_jwts" not in State().to_dict()  # a single node's snapshot is unchanged


def test_a_users_revocations_are_counted_and_a_new_generation_ends_all_of_them():
    st, plane = _one_user()
    st.apply({"op": "jwt.revoke", "jti": "a", "expiry": 200, "at": 100, "user": 1})
    st.apply({"op": "jwt.revoke", "jti": "b", "expiry": 400, "at": 150, "user": 1})
    assert st.revocations_of(1, 150) == 2 and st.revocations_of(1, 300) == 1
    st = State.from_dict(st.to_dict())  # the owners are kept through a snapshot
    plane.meta.state = st
    assert st.revocations_of(1, 150) == 2 and st.jwts_of == {1: {"a", "b"}}
    st.apply({"op": "jwt.revoke", "jti": "c", "expiry": 500, "at": 300, "user": 1})  # "a" expired
    assert st.revoked_jwts == {"b": 400, "c": 500} and st.jwts_of == {1: {"b", "c"}}
    # a new generation: every token of the old one authenticates nobody, the entries go
    st.apply({"op": "user.generation", "id": 1, "generation": st.next_user_generation})
    assert st.users[1].generation == 2 and st.next_user_generation == 3
    assert st.revoked_jwts == {} and st.jwt_owner == {} and st.jwts_of == {}
    for jti in ("b", "c", "d"):
        with pytest.raises(IggyError):
            user_of(plane, Principal(1, 1, jti))
    assert user_of(plane, Principal(1, 2, "d")).id == 1


def _cluster_cfg(enabled=True, auth=True, secret="s" * 32, name="c", jwt_secret=""):
    return types.SimpleNamespace(
        http=types.SimpleNamespace(jwt=types.SimpleNamespace(encoding_secret=jwt_secret)),
        cluster=types.SimpleNamespace(
            enabled=enabled,
            name=name,
            heartbeat_timeout=2.0,
            auth=types.SimpleNamespace(enabled=auth, shared_secret=secret),
        ),
    )


def test_a_cluster_with_auth_derives_its_jwt_key_from_the_shared_secret():
    s = http_settings.from_config(_cluster_cfg())
    # the same on every node (the same config), and a key of its own: not the secret itself
    assert s.jwt.secret == http_settings.from_config(_cluster_cfg()).jwt.secret
    assert len(s.jwt.secret) == 64 and b"s" * 32 not in s.jwt.secret
    assert s.forward_to_leader and s.forward_budget == 6.0
    # another secret or another cluster: another key
    assert http_settings.from_config(_cluster_cfg(secret="t" * 32)).jwt.secret != s.jwt.secret
    assert http_settings.from_config(_cluster_cfg(name="d")).jwt.secret != s.jwt.secret
    # an explicit http.jwt secret wins, and also lets the nodes forward
    explicit = http_settings.from_config(_cluster_cfg(jwt_secret="mine"))
    assert explicit.jwt.secret == b"mine" and explicit.forward_to_leader
    # without cluster.auth (or a cluster) each node generates its own key and never forwards
    for cfg in (_cluster_cfg(auth=False), _cluster_cfg(enabled=False)):
        s = http_settings.from_config(cfg)
        assert s.jwt.secret == b"" and not s.forward_to_leader


# ------------------------------------------------------------------- messages


def _entry(kind_k, key, kind_v, value):
    return schemas.HeaderEntry(
        key=schemas.HeaderField(kind=kind_k, value=base64.b64encode(key).decode()),
        value=schemas.HeaderField(kind=kind_v, value=base64.b64encode(value).decode()),
    )


def test_user_headers_round_trip():
    block = mj.headers_block(
        [_entry("string", b"k", "uint32", struct.pack("<I", 7)), _entry("raw", b"\x01\x02", "bool", b"\x01")]
    )
    assert (
        block
        == b"\x02\x01\x00\x00\x00k"
        + b"\x0b\x04\x00\x00\x00\x07\x00\x00\x00"
        + b"\x01\x02\x00\x00\x00\x01\x02"
        + b"\x03\x01\x00\x00\x00\x01"
    )
    as_json = mj.headers_json(block)
    assert as_json[0] == {"key": {"kind": "string", "value": "aw=="}, "value": {"kind": "uint32", "value": "BwAAAA=="}}
    assert mj.headers_block(base64.b64encode(block).decode()) == block
    assert mj.headers_json(b"") == []
    assert mj.headers_json(b"\x02\x09") == base64.b64encode(b"\x02\x09").decode()  # unparsable -> base64


@pytest.mark.parametrize(
    "entry, code",
    [
        (("uint32", b"k", "uint32", b"\x01\x02"), ErrorCode.INVALID_HEADER_KEY),  # key of the wrong size
        (("string", b"k", "uint64", b"\x01"), ErrorCode.INVALID_HEADER_VALUE),
        (("string", b"k", "string", b"x" * 256), ErrorCode.INVALID_HEADER_VALUE),
    ],
)
def test_user_headers_invalid(entry, code):
    with pytest.raises(IggyError) as err:
        mj.headers_block([_entry(*entry)])
    assert err.value.code == code


def test_message_ids():
    assert mj.message_id(42) == 42
    assert mj.message_id("340282366920938463463374607431768211455") == (1 << 128) - 1
    u = uuid.uuid4()
    assert mj.message_id(str(u)) == u.int
    assert mj.message_id(0) != 0 and mj.message_id(None) != 0
    with pytest.raises(http_errors.Unprocessable):
        mj.message_id("not-an-id")


def test_batch_input_and_partitioning():
    body = schemas.SendMessages(
        partitioning=schemas.Partitioning(kind="partition_id", value="AgAAAA=="),
        messages=[schemas.SendMessage(payload="aGVsbG8=", id=5)],
    )
    assert mj.partitioning(body) == (2, b"\x02\x00\x00\x00")
    assert mj.batch_input(body) == [(5, b"hello", b"")]
    empty = schemas.SendMessages(partitioning=schemas.Partitioning(kind="balanced"), messages=[])
    with pytest.raises(IggyError) as err:
        mj.batch_input(empty)
    assert err.value.code == ErrorCode.INVALID_MESSAGES_COUNT
    with pytest.raises(http_errors.Unprocessable):
        mj.batch_input(schemas.SendMessages(partitioning=body.partitioning, messages=[schemas.SendMessage(payload="")]))
    keyless = schemas.SendMessages(partitioning=schemas.Partitioning(kind="messages_key", value=""), messages=[])
    with pytest.raises(IggyError) as err:
        mj.partitioning(keyless)
    assert err.value.code == ErrorCode.INVALID_KEY_VALUE_LENGTH


def test_polled_json_shape():
    out = mj.polled_json(
        1,
        9,
        [
            {
                "offset": 9,
                "id": 1 << 100,
                "checksum": 5,
                "timestamp": 2,
                "origin_timestamp": 1,
                "payload": b"hi",
                "user_headers": b"",
            }
        ],
    )
    assert out["count"] == 1 and out["current_offset"] == 9 and out["partition_id"] == 1
    msg = out["messages"][0]
    assert msg["payload"] == "aGk=" and msg["user_headers"] == []
    assert msg["header"] == {
        "checksum": 5,
        "id": 1 << 100,
        "offset": 9,
        "timestamp": 2,
        "origin_timestamp": 1,
        "user_headers_length": 0,
        "payload_length": 2,
        "reserved": 0,
    }


# ------------------------------------------------------------------- errors, ids, permissions


@pytest.mark.parametrize(
    "code, status",
    [
        (ErrorCode.UNAUTHENTICATED, 401),
        (ErrorCode.ACCESS_TOKEN_MISSING, 401),
        (ErrorCode.INVALID_PERSONAL_ACCESS_TOKEN, 401),
        (ErrorCode.UNAUTHORIZED, 403),
        (ErrorCode.STREAM_ID_NOT_FOUND, 404),
        (ErrorCode.CONSUMER_OFFSET_NOT_FOUND, 404),
        (ErrorCode.RESOURCE_NOT_FOUND, 404),
        (57, 503),
        (ErrorCode.INVALID_STREAM_NAME, 400),
        (ErrorCode.INVALID_CREDENTIALS, 400),
        (ErrorCode.CANNOT_DELETE_USER, 400),
    ],
)
def test_status_mapping(code, status):
    assert http_errors.status_of(code) == status


def test_identifiers_and_names():
    assert ident("0") == 0 and ident("4294967295") == 4294967295
    assert ident("4294967296") == "4294967296" and ident("orders") == "orders"
    with pytest.raises(IggyError):
        ident("x" * 256)
    assert check_name("a", ErrorCode.INVALID_STREAM_NAME) == "a"
    with pytest.raises(IggyError) as err:
        check_name("", ErrorCode.INVALID_TOPIC_NAME)
    assert err.value.code == ErrorCode.INVALID_TOPIC_NAME and err.value.field == "name"


def test_permissions_json_round_trip():
    import json

    import msgspec

    body = permissions_body({"read_servers", "read_streams"}, {1: ({"read_stream"}, {2: {"poll_messages"}})})
    parsed = msgspec.json.decode(json.dumps(body), type=schemas.Permissions)
    stored = schemas.stored_permissions(parsed)
    assert stored["streams"][1]["topics"][2] == [False, False, True, False]
    assert permissions_json(stored) == body
    assert permissions_json({"global": [True] * 10, "streams": {}})["streams"] is None


# ------------------------------------------------------------------- /ui


def test_web_ui_routing(tmp_path):
    from litestar import Litestar
    from litestar.testing import TestClient

    from iggy.http.webui import ui_route

    (tmp_path / "index.html").write_text("<html>index</html>")
    (tmp_path / "_app").mkdir()
    (tmp_path / "_app" / "env.js").write_text("export const env = {}")
    (tmp_path.parent / "secret.txt").write_text("no")
    with TestClient(Litestar([ui_route(str(tmp_path))])) as client:
        for path in ("/ui", "/ui/", "/ui/streams/1/topics"):
            r = client.get(path)
            assert r.status_code == 200 and "index" in r.text, path
        r = client.get("/ui/_app/env.js")
        assert r.status_code == 200 and "javascript" in r.headers["content-type"]
        assert client.get("/ui/nope.js").status_code == 404
        assert client.get("/ui/../secret.txt").text != "no"
        assert client.get("/ui/%2e%2e/secret.txt").text != "no"


@pytest.mark.parametrize("payload", [1, 100, 10_000, 200_000])
def test_poll_caps_keep_the_json_reply_within_the_frame_limit(payload):
    # the most JSON the caps allow: as many messages as the count cap, each as big as the
    # byte cap lets them be, with the largest numbers JSON can hold
    import json

    from iggy.protocol.batch import build_batch, iter_messages

    limit = 1 << 20
    count, max_bytes = mj.poll_caps(limit, 0xFFFFFFFF)
    assert (count, max_bytes) == (512, 655360)
    n = max(1, min(count, max_bytes // (48 + payload)))
    data = build_batch([((1 << 128) - 1 - i, b"\xff" * payload, b"") for i in range(n)])
    messages = list(iter_messages(data))
    for m in messages:
        m.update(checksum=(1 << 64) - 1, offset=(1 << 64) - 1, timestamp=(1 << 64) - 1, origin_timestamp=(1 << 64) - 1)
    body = json.dumps(mj.polled_json(0xFFFFFFFF, (1 << 64) - 1, messages)).encode()
    assert len(body) <= limit, (n, len(body))
    assert mj.poll_caps(limit, 7) == (7, 655360)
