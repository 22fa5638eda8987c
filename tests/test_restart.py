"""Metadata survives restarts: graceful, `kill -9`, across a snapshot, with a torn journal tail.

Also the root user of a fresh data directory (SEMANTICS 1.3): generated password, IGGY_ROOT_*,
`--with-default-root-credentials`, and that an existing root is never overwritten.
"""

from __future__ import annotations

import re
import struct
from datetime import timedelta

import pytest
from apache_iggy import (
    GlobalPermissions,
    IggyClient,
    Permissions,
    StreamPermissions,
    TopicPermissions,
    UserStatus,
)

from tests.conftest import MiB, ServerProcess, connect_root, every_topic_option
from tests.rawclient import RawClient, wire_name

NO_HTTP = {"IGGY_HTTP_ENABLED": "false"}  # nothing here needs it, and it halves every start


@pytest.fixture
def server(tmp_path):
    srv = ServerProcess(tmp_path / "data", extra_env=NO_HTTP).start()
    yield srv
    srv.stop()


def sdk_error(message: str):
    return pytest.raises(RuntimeError, match=f"^{re.escape(message)}$")


async def login_as(address: str, username: str, password: str) -> IggyClient:
    c = IggyClient(address)
    await c.connect()
    await c.login_user(username, password)
    return c


async def refused_login(address: str, username: str, password: str) -> None:
    c = IggyClient(address)
    await c.connect()
    with sdk_error("Invalid credentials"):
        await c.login_user(username, password)


def pat_login(address: str, token: str) -> int | None:
    """The user id a PAT logs in as, or None when it is refused."""
    c = RawClient(address)
    try:
        reply = c.login_token(token)
        if reply.command == 13:
            return None
        assert reply.status == 0
        return struct.unpack_from("<I", reply.body, 4)[0]
    finally:
        c.close()


def list_pats(address: str, username: str, password: str) -> dict:
    c = RawClient(address)
    try:
        assert c.login(username, password).status == 0
        body = c.read(41).body
    finally:
        c.close()
    out, pos = {}, 0
    while pos < len(body):
        n = body[pos]
        out[body[pos + 1 : pos + 1 + n].decode()] = struct.unpack_from("<Q", body, pos + 1 + n)[0]
        pos += 1 + n + 8
    return out


async def create_pat(client: IggyClient, name: str, expiry: int = 0) -> str:
    reply = await client.send_binary_request(42, wire_name(name) + struct.pack("<Q", expiry))
    return reply[1:].decode()


async def capture(address: str) -> dict:
    """Everything the control plane reports, as plain comparable data."""
    c = await connect_root(address)
    out = {"streams": [], "users": []}
    for s in await c.get_streams():
        details = await c.get_stream(s.id)
        topics = []
        for t in details.topics:
            td = await c.get_topic(s.id, t.id)
            groups = [(g.id, g.name, g.partitions_count) for g in await c.get_consumer_groups(s.id, t.id)]
            topics.append(
                {
                    "id": td.id,
                    "name": td.name,
                    "created_at": td.created_at,
                    "partitions": [(p.id, p.created_at) for p in td.partitions],
                    "compression": td.compression_algorithm,
                    "expiry": getattr(td.message_expiry, "duration", type(td.message_expiry).__name__),
                    "max_size": getattr(td.max_topic_size, "bytes", type(td.max_topic_size).__name__),
                    "options": td.options.to_scalar_dict(),
                    "derived": td.derived_options.to_scalar_dict(),
                    "groups": groups,
                }
            )
        out["streams"].append({"id": s.id, "name": s.name, "created_at": s.created_at, "topics": topics})
    for u in await c.get_users():
        d = await c.get_user(u.id)
        out["users"].append((d.id, d.username, d.status, d.created_at, d.permissions))
    return out


ALICE_PERMS = Permissions(
    global_permissions=GlobalPermissions(read_streams=True, read_servers=True),
    streams={
        0: StreamPermissions(manage_topics=True, topics={1: TopicPermissions(read_topic=True, send_messages=True)})
    },
)


async def populate(address: str) -> dict:
    """Streams, topics, partitions, groups, users, tokens, with gaps in the ids; returns the tokens."""
    c = await connect_root(address)
    for name in ("alpha", "beta", "gamma"):
        await c.create_stream(name)
    await c.delete_stream("beta")  # id 1 becomes free
    await c.update_stream("gamma", "gamma2")
    await c.create_topic("alpha", "full", 3, **every_topic_option())
    await c.create_topic("alpha", "plain", 1)
    await c.create_topic("alpha", "doomed", 1)
    await c.create_partitions("alpha", "plain", 3)
    await c.delete_partitions("alpha", "plain", 1)  # partitions 0..2
    await c.update_topic("alpha", "plain", "plain2", compression_algorithm="gzip")
    await c.delete_topic("alpha", "doomed")
    await c.create_topic("gamma2", "g-topic", 2)
    await c.create_consumer_group("alpha", "full", "workers")
    await c.create_consumer_group("alpha", "full", "gone")
    await c.create_consumer_group("alpha", "full", "readers")
    await c.delete_consumer_group("alpha", "full", "gone")  # group ids are never reused

    await c.create_user("alice", "alice-pass", permissions=ALICE_PERMS)
    await c.create_user("bob", "bob-pass", status=UserStatus.Inactive)
    await c.create_user("carol", "carol-old")
    await c.change_password("carol", "carol-old", "carol-new")
    await c.create_user("dave", "dave-pass")
    await c.create_user("erin", "erin-pass")
    await c.update_user("erin", username="erin2")
    await c.delete_user("dave")  # id 4 becomes free
    await c.update_permissions("carol", Permissions(global_permissions=GlobalPermissions(manage_users=True)))
    await c.update_permissions("carol", None)

    alice = await login_as(address, "alice", "alice-pass")
    tokens = {
        "root": await create_pat(c, "root-token"),
        "alice": await create_pat(alice, "alice-token", 3_600_000_000),
        "deleted": await create_pat(c, "deleted-token"),
    }
    await c.send_binary_request(43, wire_name("deleted-token"))
    return tokens


async def check_logins(address: str, tokens: dict) -> None:
    alice = await login_as(address, "alice", "alice-pass")
    assert (await alice.get_stats()).streams_count >= 2  # her permissions came back too
    with sdk_error("Unauthorized"):
        await alice.create_stream("not-allowed")
    await refused_login(address, "bob", "bob-pass")  # still inactive
    await login_as(address, "carol", "carol-new")
    await refused_login(address, "carol", "carol-old")
    await login_as(address, "erin2", "erin-pass")
    await refused_login(address, "erin", "erin-pass")
    await refused_login(address, "dave", "dave-pass")
    await login_as(address, "iggy", "iggy")
    assert pat_login(address, tokens["root"]) == 0
    assert pat_login(address, tokens["alice"]) == 1
    assert pat_login(address, tokens["deleted"]) is None
    assert set(list_pats(address, "iggy", "iggy")) == {"root-token"}
    assert set(list_pats(address, "alice", "alice-pass")) == {"alice-token"}


def expected_shape(state: dict) -> None:
    """What populate() must have produced (so a capture of nothing can't pass)."""
    assert [(s["id"], s["name"]) for s in state["streams"]] == [(0, "alpha"), (2, "gamma2")]
    alpha = state["streams"][0]
    assert [(t["id"], t["name"]) for t in alpha["topics"]] == [(0, "full"), (1, "plain2")]
    full, plain = alpha["topics"]
    assert [p for p, _ in full["partitions"]] == [0, 1, 2]
    assert [p for p, _ in plain["partitions"]] == [0, 1, 2]
    assert full["compression"] == "gzip" and full["expiry"] == timedelta(seconds=60)
    assert full["max_size"] == 100 * MiB
    assert full["options"]["segment_size"] == 2 * MiB and full["options"]["durability"] == "persisted"
    assert full["groups"] == [(0, "workers", 3), (2, "readers", 3)]
    assert plain["compression"] == "gzip"
    assert [(u[0], u[1], u[2]) for u in state["users"]] == [
        (0, "iggy", UserStatus.Active),
        (1, "alice", UserStatus.Active),
        (2, "bob", UserStatus.Inactive),
        (3, "carol", UserStatus.Active),
        (5, "erin2", UserStatus.Active),
    ]
    assert state["users"][1][4] == ALICE_PERMS and state["users"][3][4] is None


@pytest.mark.parametrize("graceful", [True, False], ids=["graceful", "kill9"])
async def test_everything_survives_a_restart(server, graceful):
    tokens = await populate(server.tcp_address)
    before = await capture(server.tcp_address)
    expected_shape(before)
    server.restart(graceful=graceful)
    after = await capture(server.tcp_address)
    assert after == before
    await check_logins(server.tcp_address, tokens)
    # the registry is rebuilt exactly: the free ids are the ones reused next
    c = await connect_root(server.tcp_address)
    await c.create_stream("beta-again")
    assert (await c.get_stream("beta-again")).id == 1
    assert (await c.create_user("frank", "frank-pass")).id == 4
    await c.create_consumer_group("alpha", "full", "newest")
    assert (await c.get_consumer_group("alpha", "full", "newest")).id == 3


async def test_changes_after_a_restart_survive_the_next_kill(server):
    tokens = await populate(server.tcp_address)
    server.restart(graceful=True)
    c = await connect_root(server.tcp_address)
    await c.create_stream("delta")
    await c.create_topic("delta", "d", 4)
    await c.delete_partitions("delta", "d", 1)
    await c.update_stream("alpha", "alpha-renamed")
    await c.update_user("bob", status=UserStatus.Active)
    await c.change_password("alice", "alice-pass", "alice-pass2")
    tokens["delta"] = await create_pat(c, "delta-token")
    before = await capture(server.tcp_address)
    server.restart(graceful=False)  # right after the last acknowledged write
    assert await capture(server.tcp_address) == before
    names = [s["name"] for s in before["streams"]]
    assert names == ["alpha-renamed", "delta", "gamma2"]
    assert [p for p, _ in before["streams"][1]["topics"][0]["partitions"]] == [0, 1, 2]
    await login_as(server.tcp_address, "bob", "bob-pass")
    await login_as(server.tcp_address, "alice", "alice-pass2")
    await refused_login(server.tcp_address, "alice", "alice-pass")
    assert pat_login(server.tcp_address, tokens["delta"]) == 0
    assert pat_login(server.tcp_address, tokens["root"]) == 0


async def test_restart_across_snapshots(tmp_path):
    env = {**NO_HTTP, "IGGY_SYSTEM_METADATA_SNAPSHOT_EVERY": "5"}
    srv = ServerProcess(tmp_path / "data", extra_env=env).start()
    try:
        tokens = await populate(srv.tcp_address)  # ~30 changes: several snapshots
        meta = tmp_path / "data" / "metadata"
        assert (meta / "snapshot.bin").exists()
        before = await capture(srv.tcp_address)
        expected_shape(before)
        srv.restart(graceful=False)
        assert await capture(srv.tcp_address) == before
        await check_logins(srv.tcp_address, tokens)
        # more changes than one snapshot interval, ending between two snapshots
        c = await connect_root(srv.tcp_address)
        for i in range(13):
            await c.create_stream(f"extra-{i}")
        for i in range(0, 13, 2):
            await c.delete_stream(f"extra-{i}")
        assert (meta / "journal.log").stat().st_size > 0  # records after the last snapshot
        before = await capture(srv.tcp_address)
        assert [s["name"] for s in before["streams"] if s["name"].startswith("extra-")] == [
            f"extra-{i}" for i in range(1, 13, 2)
        ]
        srv.restart(graceful=False)
        assert await capture(srv.tcp_address) == before
        srv.restart(graceful=True)
        assert await capture(srv.tcp_address) == before
        await check_logins(srv.tcp_address, tokens)
    finally:
        srv.stop()


# what a crash can leave after the last record (a complete record with a wrong checksum, or
# bytes no append wrote, refuse instead: tests/test_metadata_recovery.py)
TORN_TAILS = {
    "byte": b"\x00",  # a single unwritten byte
    "partial-header": b"\x2a\x00\x00\x00\x07",
    "short-record": struct.pack("<IQ", 1000, 0) + b"\x81\xa2op",  # a header promising more than is there
    "zero-filled": bytes(4096),  # size grown, data never written
    "header-then-zeros": struct.pack("<IQ", 900, 77) + bytes(900),  # only the header reached the disk
}


async def test_torn_journal_tail_is_cut(server):
    tokens = await populate(server.tcp_address)
    journal = server.data_dir / "metadata" / "journal.log"
    for i, (kind, tail) in enumerate(TORN_TAILS.items()):
        before = await capture(server.tcp_address)
        server.stop()
        assert journal.stat().st_size > 0
        with open(journal, "ab") as f:
            f.write(tail)
        server.start()
        assert await capture(server.tcp_address) == before, kind
        # the tail was cut, so a new record lands where it can be read back after a crash
        c = await connect_root(server.tcp_address)
        await c.create_stream(f"after-tear-{kind}")
        server.restart(graceful=False)
        c = await connect_root(server.tcp_address)
        assert (await c.get_stream(f"after-tear-{kind}")) is not None, kind
        assert len(await c.get_streams()) == 3 + i, kind
    assert (await c.get_stream("after-tear-byte")).id == 1  # the free id, as before the tears
    await check_logins(server.tcp_address, tokens)


async def test_a_cut_last_record_loses_only_that_record(server):
    await populate(server.tcp_address)
    c = await connect_root(server.tcp_address)
    await c.create_stream("second-to-last")
    before = await capture(server.tcp_address)
    await c.create_stream("last")
    server.stop()
    journal = server.data_dir / "metadata" / "journal.log"
    size = journal.stat().st_size
    with open(journal, "r+b") as f:
        f.truncate(size - 3)  # the write the crash cut short
    server.start()
    assert await capture(server.tcp_address) == before
    c = await connect_root(server.tcp_address)
    assert await c.get_stream("last") is None
    assert "cut a torn tail" in server.log()


async def test_corrupt_snapshot_refuses_to_boot(tmp_path):
    """A snapshot that fails its checksum is not half-trusted: the server says so and stops."""
    env = {**NO_HTTP, "IGGY_SYSTEM_METADATA_SNAPSHOT_EVERY": "2"}
    srv = ServerProcess(tmp_path / "data", extra_env=env).start()
    c = await connect_root(srv.tcp_address)
    for name in ("one", "two", "three"):
        await c.create_stream(name)
    await c.create_topic("one", "t", 1)
    srv.stop()
    snapshot = tmp_path / "data" / "metadata" / "snapshot.bin"
    raw = bytearray(snapshot.read_bytes())
    raw[-1] ^= 0xFF
    snapshot.write_bytes(bytes(raw))
    streams = sorted(p.name for p in (tmp_path / "data" / "streams").iterdir())
    assert streams == ["0"]
    for args in ((), ("--repair-metadata",)):  # the base state itself: nothing to repair from
        srv.args = args
        with pytest.raises(RuntimeError, match="server exited with 3"):
            srv.start()
        errors = [line for line in srv.log().splitlines() if " ERROR " in line]
        assert len(errors) == 1 + len(args) and str(snapshot) in errors[-1] and "checksum" in errors[-1]
    assert snapshot.read_bytes() == raw
    assert sorted(p.name for p in (tmp_path / "data" / "streams").iterdir()) == streams


# ------------------------------------------------------------------ root credentials


NO_ROOT_ENV = {**NO_HTTP, "IGGY_ROOT_USERNAME": None, "IGGY_ROOT_PASSWORD": None}


async def test_generated_root_password(tmp_path):
    srv = ServerProcess(tmp_path / "data", extra_env=NO_ROOT_ENV).start()
    try:
        found = re.findall(r"Generated root user password: (\S+)", srv.log())
        assert len(found) == 1
        password = found[0]
        assert re.fullmatch(r"[A-Za-z0-9]{20,39}", password)
        c = await login_as(srv.tcp_address, "iggy", password)
        me = await c.get_user(0)
        assert me.username == "iggy" and me.permissions.global_permissions.manage_servers
        await refused_login(srv.tcp_address, "iggy", "iggy")
        srv.restart(graceful=True)
        # the root user exists now: nothing is generated again, the password stays
        assert len(re.findall(r"Generated root user password", srv.log())) == 1
        await login_as(srv.tcp_address, "iggy", password)
    finally:
        srv.stop()


async def test_root_from_environment(tmp_path):
    env = {**NO_HTTP, "IGGY_ROOT_USERNAME": "admin", "IGGY_ROOT_PASSWORD": "s3cret-admin"}
    srv = ServerProcess(tmp_path / "data", extra_env=env).start()
    try:
        assert "Generated root user password" not in srv.log()
        c = await login_as(srv.tcp_address, "admin", "s3cret-admin")
        assert [(u.id, u.username) for u in await c.get_users()] == [(0, "admin")]
        await refused_login(srv.tcp_address, "iggy", "iggy")
        # never overwritten: a later start with other credentials keeps the first root
        srv.stop()
        srv.extra_env = {**NO_HTTP, "IGGY_ROOT_USERNAME": "admin", "IGGY_ROOT_PASSWORD": "another-pass"}
        srv.start()
        await login_as(srv.tcp_address, "admin", "s3cret-admin")
        await refused_login(srv.tcp_address, "admin", "another-pass")
    finally:
        srv.stop()


async def test_with_default_root_credentials_flag(tmp_path):
    flag = ("--with-default-root-credentials",)
    srv = ServerProcess(tmp_path / "data", extra_env=NO_ROOT_ENV, args=flag).start()
    try:
        assert "Generated root user password" not in srv.log()
        c = await login_as(srv.tcp_address, "iggy", "iggy")
        assert (await c.get_user(0)).username == "iggy"
    finally:
        srv.stop()
    # explicit credentials win over the flag
    env = {**NO_HTTP, "IGGY_ROOT_USERNAME": "boss", "IGGY_ROOT_PASSWORD": "boss-pass"}
    srv = ServerProcess(tmp_path / "data2", extra_env=env, args=flag).start()
    try:
        await login_as(srv.tcp_address, "boss", "boss-pass")
        await refused_login(srv.tcp_address, "iggy", "iggy")
    finally:
        srv.stop()


@pytest.mark.parametrize(
    "env",
    [
        {"IGGY_ROOT_USERNAME": "ab", "IGGY_ROOT_PASSWORD": None},
        {"IGGY_ROOT_USERNAME": "ab", "IGGY_ROOT_PASSWORD": "long-enough"},
        {"IGGY_ROOT_USERNAME": "admin", "IGGY_ROOT_PASSWORD": "pw"},
    ],
    ids=["short-username-alone", "short-username", "short-password"],
)
def test_bad_root_credentials_refuse_to_boot(tmp_path, env):
    srv = ServerProcess(tmp_path / "data", extra_env={**NO_HTTP, **env})
    with pytest.raises(RuntimeError, match="server exited"):
        srv.start()
    assert "IGGY_ROOT" in srv.log()
