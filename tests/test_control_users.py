"""Users, logins, sessions and personal access tokens, through the SDK and raw_root frames.

The SDK has no PAT methods: tokens are created, listed and deleted with
`send_binary_request(42/41/43)`, and used through the raw_root client's PAT login, `AutoLogin`
and a `iggy://<token>@host:port` connection string.
"""

from __future__ import annotations

import asyncio
import struct
import time

from apache_iggy import (
    AutoLogin,
    GlobalPermissions,
    IggyClient,
    Permissions,
    StreamPermissions,
    TcpConfig,
    TcpReconnectionConfig,
    TopicPermissions,
    UserStatus,
)

from tests.conftest import connect_root, login_as, sdk_error, uniq
from tests.rawclient import RawClient, ident, login_body, pat_login_body, wire_name

OP_CREATE_USER, OP_UPDATE_USER, OP_DELETE_USER = 141, 142, 143
OP_CHANGE_PASSWORD, OP_UPDATE_PERMISSIONS = 144, 145
OP_CREATE_PAT, OP_DELETE_PAT = 146, 147
OP_LOGOUT = 3
GET_ME, GET_USER, GET_USERS, GET_PATS = 20, 31, 32, 41
GET_STREAMS = 201
U64_MAX = 2**64 - 1


async def refused_login(srv, username: str, password: str) -> None:
    c = IggyClient(srv.tcp_address)
    await c.connect()
    with sdk_error("Invalid credentials"):
        await c.login_user(username, password)


def create_user_body(username: str, password: str, status: int = 1, permissions: bytes | None = None) -> bytes:
    body = wire_name(username) + bytes([len(password.encode())]) + password.encode() + bytes([status])
    if permissions is None:
        return body + b"\x00"
    return body + b"\x01" + struct.pack("<I", len(permissions)) + permissions


def pat_body(name: str, expiry: int = 0) -> bytes:
    return wire_name(name) + struct.pack("<Q", expiry)


def parse_pats(body: bytes) -> dict:
    out, pos = {}, 0
    while pos < len(body):
        n = body[pos]
        name = body[pos + 1 : pos + 1 + n].decode()
        (expiry,) = struct.unpack_from("<Q", body, pos + 1 + n)
        out[name] = expiry
        pos += 1 + n + 8
    return out


async def create_pat(client: IggyClient, name: str, expiry: int = 0) -> str:
    """CREATE_PERSONAL_ACCESS_TOKEN through the SDK's raw_root request; returns the token."""
    reply = await client.send_binary_request(42, pat_body(name, expiry))
    assert reply[0] == len(reply) - 1  # a WireName carrying the token
    return reply[1:].decode()


# ------------------------------------------------------------------ users


async def test_create_user_without_permissions(root):
    name = uniq("plain")
    created = await root.create_user(name, "secret")
    assert created.username == name and created.status == UserStatus.Active and created.permissions is None
    assert created.id > 0 and created.created_at > 1_600_000_000_000_000
    by_id = await root.get_user(created.id)
    by_name = await root.get_user(name)
    for got in (by_id, by_name):
        assert (got.id, got.username, got.status, got.created_at, got.permissions) == (
            created.id,
            name,
            UserStatus.Active,
            created.created_at,
            None,
        )
    listed = {u.id: u for u in await root.get_users()}
    assert listed[0].username == "iggy" and listed[created.id].username == name
    assert list(listed) == sorted(listed)


async def test_create_user_with_permissions_round_trips(root, srv):
    perms = Permissions(
        global_permissions=GlobalPermissions(read_servers=True, poll_messages=True),
        streams={
            3: StreamPermissions(
                read_stream=True,
                send_messages=True,
                topics={
                    4: TopicPermissions(poll_messages=True),
                    7: TopicPermissions(manage_topic=True, send_messages=True),
                },
            ),
            9: StreamPermissions(manage_topics=True),
        },
    )
    name = uniq("perm")
    created = await root.create_user(name, "secret", status=UserStatus.Inactive, permissions=perms)
    assert created.permissions == perms and created.status == UserStatus.Inactive
    got = await root.get_user(name)
    assert got.permissions == perms
    assert got.permissions.global_permissions.read_servers
    assert not got.permissions.global_permissions.manage_users
    assert got.permissions.streams[3].topics[7].manage_topic
    assert got.permissions.streams[9].topics is None or got.permissions.streams[9].topics == {}
    # an inactive user can't log in (SEMANTICS 7.2: error 42)
    await refused_login(srv, name, "secret")
    await root.update_user(name, status=UserStatus.Active)
    u = await login_as(srv, name, "secret")
    assert (await u.get_stats()).process_id == srv.proc.pid  # read_servers granted


async def test_update_user(root, srv):
    name, new_name = uniq("old"), uniq("new")
    created = await root.create_user(name, "secret")
    await root.update_user(created.id, username=new_name)
    assert await root.get_user(name) is None
    assert (await root.get_user(created.id)).username == new_name
    await refused_login(srv, name, "secret")
    await login_as(srv, new_name, "secret")
    await root.update_user(new_name, status=UserStatus.Inactive)
    got = await root.get_user(created.id)
    assert got.status == UserStatus.Inactive and got.username == new_name
    await refused_login(srv, new_name, "secret")
    await root.update_user(created.id, username=new_name, status=UserStatus.Active)  # same name is fine
    await login_as(srv, new_name, "secret")
    listed = {u.id: u for u in await root.get_users()}
    assert listed[created.id].username == new_name and listed[created.id].status == UserStatus.Active


async def test_delete_user_ends_its_sessions(root, srv):
    name = uniq("del")
    created = await root.create_user(
        name, "secret", permissions=Permissions(global_permissions=GlobalPermissions(read_streams=True))
    )
    live = await login_as(srv, name, "secret")
    await live.get_streams()
    token = await create_pat(live, "before-delete")
    session = RawClient(srv.tcp_address)
    c = RawClient(srv.tcp_address)
    try:
        assert session.login(name, "secret").status == 0
        assert session.read(GET_STREAMS).status == 0
        await root.delete_user(name)
        assert await root.get_user(created.id) is None
        assert name not in {u.username for u in await root.get_users()}
        await refused_login(srv, name, "secret")
        assert session.read(GET_STREAMS).code == 40  # a deleted user's session can do nothing
        assert c.login_token(token).eviction_reason == 10  # its tokens went with it
    finally:
        session.close()
        c.close()


async def test_change_password(root, srv):
    name = uniq("pw")
    await root.create_user(name, "secret")
    u = await login_as(srv, name, "secret")
    await u.change_password(name, "secret", "secret2")  # own password: no permission needed
    await refused_login(srv, name, "secret")
    await login_as(srv, name, "secret2")
    with sdk_error("Invalid credentials"):
        await u.change_password(name, "wrong", "secret3")  # the current password must match
    with sdk_error("Invalid credentials"):
        await root.change_password(name, "wrong", "secret3")  # even for a manager
    await root.change_password(name, "secret2", "secret3")
    await login_as(srv, name, "secret3")
    other = uniq("other")
    await root.create_user(other, "secret")
    with sdk_error("Unauthorized"):
        await u.change_password(other, "secret", "hacked")  # someone else's: manage_users
    await login_as(srv, other, "secret")


async def test_change_password_raw_codes(srv, raw_root, root):
    name = uniq("pwraw")
    created = await root.create_user(name, "secret")
    body = ident(created.id) + wire_name("wrong") + wire_name("newpass")
    assert raw_root.call(OP_CHANGE_PASSWORD, 0, body).code == 42
    assert raw_root.call(OP_CHANGE_PASSWORD, 0, ident(created.id) + wire_name("secret") + b"\x02ab").code == 44
    good = wire_name("secret") + wire_name("newpass")
    assert raw_root.call(OP_CHANGE_PASSWORD, 0, ident(999_999) + good).code == 20
    assert raw_root.call(OP_CHANGE_PASSWORD, 0, ident(created.id) + good).code == 0
    c = RawClient(srv.tcp_address)
    try:
        assert c.login(name, "secret").eviction_reason == 9
        assert c.login(name, "newpass").status == 0
    finally:
        c.close()


async def test_update_permissions(root, srv):
    name = uniq("up")
    created = await root.create_user(name, "secret")
    u = await login_as(srv, name, "secret")
    with sdk_error("Unauthorized"):
        await u.create_stream(uniq("x"))
    grant = Permissions(
        global_permissions=GlobalPermissions(manage_streams=True, read_streams=True),
        streams={1: StreamPermissions(read_stream=True)},
    )
    await root.update_permissions(created.id, grant)
    assert (await root.get_user(name)).permissions == grant
    own = uniq("granted")
    await u.create_stream(own)  # takes effect on the live session
    await root.update_permissions(name, Permissions(global_permissions=GlobalPermissions(read_streams=True)))
    assert (await root.get_user(name)).permissions.streams in (None, {})  # a full replacement
    with sdk_error("Unauthorized"):
        await u.create_stream(uniq("y"))
    await root.update_permissions(name, None)
    assert (await root.get_user(name)).permissions is None
    with sdk_error("Unauthorized"):
        await u.get_streams()
    await root.delete_stream(own)


async def test_user_errors_through_the_sdk(root):
    name = uniq("dup")
    await root.create_user(name, "secret")
    with sdk_error("User already exists"):
        await root.create_user(name, "other-password")
    other = uniq("oth")
    await root.create_user(other, "secret")
    with sdk_error("User already exists"):
        await root.update_user(other, username=name)
    for bad in ("ab", "x" * 51):
        with sdk_error("Invalid username"):
            await root.create_user(bad, "secret")
    for bad in ("ab", "p" * 101):
        with sdk_error("Invalid password"):
            await root.create_user(uniq("u"), bad)
    with sdk_error("Cannot delete user with ID: 0"):
        await root.delete_user(0)
    with sdk_error("Cannot delete user with ID: 0"):
        await root.delete_user("iggy")
    with sdk_error("Cannot change permissions for user with ID: 0"):
        await root.update_permissions(0, None)
    with sdk_error("Unsupported option key: "):
        await root.update_user(other, options={"x_custom": "y"})  # no user option keys exist
    missing = 999_999
    assert await root.get_user(missing) is None
    assert await root.get_user(uniq("ghost")) is None
    for call in (
        lambda: root.delete_user(missing),
        lambda: root.update_user(missing, username=uniq("x")),
        lambda: root.update_permissions(missing, None),
        lambda: root.change_password(uniq("ghost"), "secret", "secret2"),
    ):
        with sdk_error("Resource with key:  was not found."):
            await call()
    # root is still there with all its powers
    me = await root.get_user(0)
    assert me.username == "iggy" and me.permissions.global_permissions.manage_servers


async def test_user_errors_raw_codes(raw_root, root):
    name = uniq("rdup")
    reply = raw_root.call(OP_CREATE_USER, 0, create_user_body(name, "secret"))
    assert reply.code == 0
    (uid,) = struct.unpack_from("<I", reply.body, 4)
    assert (await root.get_user(uid)).username == name
    assert raw_root.call(OP_CREATE_USER, 0, create_user_body(name, "secret")).code == 46
    assert raw_root.call(OP_CREATE_USER, 0, create_user_body("ab", "secret")).code == 43
    assert raw_root.call(OP_CREATE_USER, 0, create_user_body("u" * 51, "secret")).code == 43
    assert raw_root.call(OP_CREATE_USER, 0, create_user_body(uniq("p"), "")).code == 44
    assert raw_root.call(OP_CREATE_USER, 0, create_user_body(uniq("p"), "ab")).code == 44
    assert raw_root.call(OP_CREATE_USER, 0, create_user_body(uniq("p"), "p" * 101)).code == 44
    # an empty username can't even be decoded (WireName is 1..255 bytes)
    assert raw_root.call(OP_CREATE_USER, 0, create_user_body("", "secret")).code == 3
    assert raw_root.call(OP_DELETE_USER, 0, ident(0)).code == 48
    assert raw_root.call(OP_UPDATE_PERMISSIONS, 0, ident(0) + b"\x00").code == 49
    assert raw_root.call(OP_DELETE_USER, 0, ident(999_999)).code == 20
    assert raw_root.call(OP_UPDATE_USER, 0, ident(999_999) + b"\x01" + wire_name("abcd") + b"\x00").code == 20
    assert raw_root.call(OP_UPDATE_PERMISSIONS, 0, ident(uniq("ghost")) + b"\x00").code == 20
    assert raw_root.call(OP_UPDATE_USER, 0, ident(uid) + b"\x01" + wire_name("iggy") + b"\x00").code == 46
    assert raw_root.call(OP_UPDATE_USER, 0, ident(uid) + b"\x00" + b"\x01\x07").code == 45  # invalid status
    assert raw_root.call(OP_UPDATE_USER, 0, ident(uid) + b"\x01" + wire_name("ab") + b"\x00").code == 43
    assert raw_root.call(OP_CREATE_USER, 0, create_user_body(uniq("st"), "secret", status=9)).code == 45
    missing = raw_root.read(GET_USER, ident(999_999))
    assert missing.status == 0 and missing.body == b""
    assert raw_root.call(OP_DELETE_USER, 0, ident(uid)).code == 0
    assert await root.get_user(uid) is None


async def test_user_ids_start_at_one_and_are_reused(server):
    root = await connect_root(server.tcp_address)
    assert [(u.id, u.username) for u in await root.get_users()] == [(0, "iggy")]
    a = await root.create_user("first", "secret")
    b = await root.create_user("second", "secret")
    assert (a.id, b.id) == (1, 2)
    await root.delete_user(1)
    c = await root.create_user("third", "secret")
    assert c.id == 1
    assert [(u.id, u.username) for u in await root.get_users()] == [(0, "iggy"), (1, "third"), (2, "second")]


async def test_user_management_permissions(root, srv):
    nobody_name = uniq("nobody")
    await root.create_user(nobody_name, "secret")
    nobody = await login_as(srv, nobody_name, "secret")
    me = await nobody.get_user(nobody_name)  # your own user needs nothing
    assert me.username == nobody_name
    for call in (
        lambda: nobody.get_users(),
        lambda: nobody.get_user(0),
        lambda: nobody.create_user(uniq("x"), "secret"),
        lambda: nobody.delete_user(nobody_name),
        lambda: nobody.update_user(nobody_name, username=uniq("x")),
        lambda: nobody.update_permissions(
            nobody_name, Permissions(global_permissions=GlobalPermissions(manage_users=True))
        ),
    ):
        with sdk_error("Unauthorized"):
            await call()
    assert (await root.get_user(nobody_name)).permissions is None

    reader_name = uniq("reader")
    await root.create_user(
        reader_name, "secret", permissions=Permissions(global_permissions=GlobalPermissions(read_users=True))
    )
    reader = await login_as(srv, reader_name, "secret")
    assert nobody_name in {u.username for u in await reader.get_users()}
    assert (await reader.get_user(0)).username == "iggy"
    with sdk_error("Unauthorized"):
        await reader.create_user(uniq("x"), "secret")
    with sdk_error("Unauthorized"):
        await reader.delete_user(nobody_name)

    manager_name = uniq("mgr")
    await root.create_user(
        manager_name, "secret", permissions=Permissions(global_permissions=GlobalPermissions(manage_users=True))
    )
    manager = await login_as(srv, manager_name, "secret")
    made = await manager.create_user(uniq("made"), "secret")
    await manager.update_user(made.id, status=UserStatus.Inactive)
    await manager.update_permissions(made.id, Permissions(global_permissions=GlobalPermissions(read_streams=True)))
    await manager.delete_user(made.id)
    assert await root.get_user(made.id) is None
    with sdk_error("Cannot delete user with ID: 0"):
        await manager.delete_user(0)


# ------------------------------------------------------------------ login, logout, sessions


async def test_wrong_credentials(srv, root):
    await refused_login(srv, "iggy", "not-the-password")
    await refused_login(srv, uniq("nobody"), "secret")
    c = RawClient(srv.tcp_address)
    try:
        reply = c.login("iggy", "not-the-password")
        assert reply.command == 13 and reply.eviction_reason == 9
        assert c.login("unknown-user", "secret").eviction_reason == 9
        # a refused login leaves the connection usable
        assert c.login("iggy", "iggy").status == 0
        assert c.read(GET_STREAMS).status == 0
    finally:
        c.close()


async def test_malformed_and_incompatible_logins(srv):
    c = RawClient(srv.tcp_address)
    try:
        assert c.call(1, 0, b"\x00\x2c").eviction_reason == 15  # too short for any shape
        assert c.call(1, 0, login_body("iggy", "iggy", version=0x400)).eviction_reason == 14  # 0.1.0
        assert c.login("iggy", "iggy").status == 0
    finally:
        c.close()


async def test_login_reply_and_get_me(srv, root):
    name = uniq("me")
    created = await root.create_user(name, "secret")
    c = RawClient(srv.tcp_address)
    try:
        assert c.read(GET_ME).code == 40
        reply = c.login(name, "secret")
        assert reply.status == 0 and reply.operation == 1
        result, user_id, session, version = struct.unpack_from("<IIQI", reply.body)
        assert (result, user_id) == (0, created.id) and session != 0 and version == 0x2C00
        me = c.read(GET_ME)
        assert me.status == 0
        client_id, me_user, transport = struct.unpack_from("<IIB", me.body)
        assert me_user == created.id and transport == 1 and client_id > 0
        (addr_len,) = struct.unpack_from("<I", me.body, 9)
        host, port = me.body[13 : 13 + addr_len].decode().rsplit(":", 1)
        assert host == "127.0.0.1" and int(port) == c.sock.getsockname()[1]
        second = RawClient(srv.tcp_address)
        try:
            again = second.login(name, "secret")
            assert struct.unpack_from("<Q", again.body, 8)[0] != session  # every login a new session
        finally:
            second.close()
    finally:
        c.close()


async def test_unauthenticated_requests(srv):
    c = RawClient(srv.tcp_address)
    try:
        assert c.read(1).status == 0  # ping needs no login
        for code, body in (
            (GET_STREAMS, b""),
            (10, b""),
            (GET_USERS, b""),
            (GET_USER, ident(0)),
            (GET_PATS, b""),
            (12, b""),
            (13, b"\x01"),
            (22, b""),
            (300, ident(0) + ident(0)),
        ):
            assert c.read(code, body).code == 40, code
        assert c.call(128, 0, wire_name(uniq("x"))).code == 40
        assert c.call(OP_CREATE_USER, 0, create_user_body(uniq("x"), "secret")).code == 40
        assert c.call(OP_CREATE_PAT, 0, pat_body("tok")).code == 40
        assert c.call(OP_LOGOUT, 0, b"").code == 40
    finally:
        c.close()
    anon = IggyClient(srv.tcp_address)
    await anon.connect()
    await anon.ping()
    with sdk_error("Unauthenticated"):
        await anon.get_streams()
    with sdk_error("Unauthenticated"):
        await anon.create_stream(uniq("x"))
    with sdk_error("Unauthenticated"):
        await anon.get_users()


async def test_logout(srv):
    c = await connect_root(srv.tcp_address)
    await c.get_streams()
    await c.logout_user()
    with sdk_error("Unauthenticated"):
        await c.get_streams()
    await c.ping()
    await c.login_user("iggy", "iggy")  # and back in
    await c.get_streams()
    r = RawClient(srv.tcp_address)
    try:
        assert r.login().status == 0
        bye = r.call(OP_LOGOUT, 0, b"")
        assert bye.status == 0 and bye.body == b""
        assert r.read(GET_STREAMS).code == 40
    finally:
        r.close()


# ------------------------------------------------------------------ personal access tokens


async def test_pat_create_list_login_delete(srv, root):
    name = uniq("patuser")
    await root.create_user(
        name, "secret", permissions=Permissions(global_permissions=GlobalPermissions(read_streams=True))
    )
    u = await login_as(srv, name, "secret")
    token = await create_pat(u, "ci-token")
    assert len(token) == 68 and token.endswith("=")  # base64 of 50 bytes
    before = time.time_ns() // 1000
    await create_pat(u, "short-lived", 3_600_000_000)  # one hour
    listed = parse_pats(await u.send_binary_request(41, b""))
    assert set(listed) == {"ci-token", "short-lived"}
    assert listed["ci-token"] == 0
    assert before + 3_590_000_000 < listed["short-lived"] < before + 3_610_000_000
    # tokens are per user
    assert parse_pats(await root.send_binary_request(41, b"")).keys().isdisjoint({"ci-token", "short-lived"})

    # raw_root PAT login (code 45 shape) logs in as the token's owner
    c = RawClient(srv.tcp_address)
    try:
        reply = c.login_token(token)
        assert reply.status == 0
        assert struct.unpack_from("<I", reply.body, 4)[0] == (await root.get_user(name)).id
        assert c.read(GET_STREAMS).status == 0
        assert c.call(128, 0, wire_name(uniq("x"))).code == 41  # with the owner's permissions
        assert c.login_token("not-a-token").eviction_reason == 10
    finally:
        c.close()

    # the SDK logs in with it too: AutoLogin and a connection string
    auto = IggyClient(TcpConfig(server_address=srv.tcp_address, auto_login=AutoLogin.personal_access_token(token)))
    await auto.connect()
    assert isinstance(await auto.get_streams(), list)
    via_string = IggyClient.from_connection_string(f"iggy://{token}@{srv.tcp_address}")
    await via_string.connect()
    assert (await via_string.get_user(name)).username == name
    bogus = IggyClient(
        TcpConfig(
            server_address=srv.tcp_address,
            auto_login=AutoLogin.personal_access_token("bogus-token-value"),
            reconnection=TcpReconnectionConfig(enabled=False),
        )
    )
    with sdk_error("Invalid personal access token"):
        await bogus.connect()

    # delete: the token stops working, the other one stays
    reply = await u.send_binary_request(43, wire_name("ci-token"))
    assert reply == b""
    assert set(parse_pats(await u.send_binary_request(41, b""))) == {"short-lived"}
    c = RawClient(srv.tcp_address)
    try:
        assert c.login_token(token).eviction_reason == 10
    finally:
        c.close()


async def test_pat_errors(srv, root, raw_root):
    await create_pat(root, "dup-token")
    with sdk_error("Personal access token:  for user with ID: 0 already exists"):
        await root.send_binary_request(42, pat_body("dup-token"))
    assert raw_root.call(OP_CREATE_PAT, 0, pat_body("dup-token")).code == 51
    for bad in ("ab", "t" * 31):
        with sdk_error("Invalid personal access token name"):
            await root.send_binary_request(42, pat_body(bad))
        assert raw_root.call(OP_CREATE_PAT, 0, pat_body(bad)).code == 50
    await create_pat(root, "t" * 30)  # 30 bytes is fine
    with sdk_error("Resource with key:  was not found."):
        await root.send_binary_request(43, wire_name("no-such-token"))
    assert raw_root.call(OP_DELETE_PAT, 0, wire_name("no-such-token")).code == 20
    # someone else's token can't be deleted (it is not theirs to see)
    name = uniq("thief")
    await root.create_user(name, "secret")
    thief = await login_as(srv, name, "secret")
    with sdk_error("Resource with key:  was not found."):
        await thief.send_binary_request(43, wire_name("dup-token"))
    assert "dup-token" in parse_pats(await root.send_binary_request(41, b""))
    assert parse_pats(await thief.send_binary_request(41, b"")) == {}


async def test_pat_never_expiring_and_limit(srv, root):
    name = uniq("many")
    await root.create_user(name, "secret")
    c = RawClient(srv.tcp_address)
    try:
        assert c.login(name, "secret").status == 0
        assert c.call(OP_CREATE_PAT, 0, pat_body("max-expiry", U64_MAX)).code == 0
        assert parse_pats(c.read(GET_PATS).body) == {"max-expiry": 0}  # u64::MAX = never
        for i in range(99):
            assert c.call(OP_CREATE_PAT, 0, pat_body(f"tok-{i:03d}")).code == 0
        assert len(parse_pats(c.read(GET_PATS).body)) == 100
        assert c.call(OP_CREATE_PAT, 0, pat_body("one-too-many")).code == 52  # at most 100 per user
        assert c.call(OP_DELETE_PAT, 0, wire_name("tok-000")).code == 0
        assert c.call(OP_CREATE_PAT, 0, pat_body("one-more")).code == 0
    finally:
        c.close()
    # the limit is per user: root can still make tokens
    await create_pat(root, uniq("root")[:30])


async def test_pat_expiry_and_inactive_owner(srv, root):
    name = uniq("exp")
    await root.create_user(name, "secret")
    u = await login_as(srv, name, "secret")
    soon = await create_pat(u, "soon", 1_000_000)  # one second
    lasting = await create_pat(u, "lasting")
    c = RawClient(srv.tcp_address)
    try:
        assert c.login_token(soon).status == 0
        await asyncio.sleep(1.3)
        assert c.login_token(soon).eviction_reason == 10  # expired
        assert c.login_token(lasting).status == 0
        await root.update_user(name, status=UserStatus.Inactive)
        assert c.login_token(lasting).eviction_reason == 11  # owner inactive
        await root.update_user(name, status=UserStatus.Active)
        assert c.login_token(lasting).status == 0
    finally:
        c.close()


async def test_pat_login_body_with_raw_frames(srv, root):
    """The PAT body shape on its own (no username/password), as the SDK sends it (TCP.md A.3)."""
    token = await create_pat(root, uniq("shape")[:30])
    c = RawClient(srv.tcp_address)
    try:
        reply = c.call(1, 0, pat_login_body(token))
        assert reply.status == 0 and struct.unpack_from("<I", reply.body, 4)[0] == 0
    finally:
        c.close()
