"""The official Python SDK over its HTTP transport (`apache_iggy.HttpConfig`) against a real server."""

from __future__ import annotations

import pytest
from apache_iggy import HttpConfig, IggyClient, PollingStrategy, SendMessage

from tests.conftest import ROOT_PASSWORD, ROOT_USER, sdk_poll


async def http_client(server) -> IggyClient:
    client = IggyClient(HttpConfig(api_url=server.http_url))
    await client.connect()  # starts the /ping heartbeat only; no auto-login over HTTP
    await client.login_user(ROOT_USER, ROOT_PASSWORD)
    return client


async def test_sdk_over_http_create_send_poll(server):
    client = await http_client(server)
    await client.ping()
    await client.create_stream("orders")
    await client.create_topic("orders", "created", partitions_count=2)
    stream = await client.get_stream("orders")
    assert stream is not None and stream.name == "orders"
    topic = await client.get_topic("orders", "created")
    assert topic is not None and topic.partitions_count == 2

    await client.send_messages("orders", "created", 1, [SendMessage("hello"), SendMessage("world")])
    await client.send_messages("orders", "created", 1, [SendMessage(b"\x00\x01bytes")])
    messages = await sdk_poll(client, "orders", "created", PollingStrategy.First(), partition=1)
    assert [m.payload() for m in messages] == [b"hello", b"world", b"\x00\x01bytes"]
    assert [m.offset() for m in messages] == [0, 1, 2]
    assert all(m.id() != 0 for m in messages)

    # next + auto-commit: the server stores the consumer's offset between polls
    first = await sdk_poll(
        client, "orders", "created", PollingStrategy.Next(), consumer=5, count=2, auto_commit=True, partition=1
    )
    rest = await sdk_poll(
        client, "orders", "created", PollingStrategy.Next(), consumer=5, auto_commit=True, partition=1
    )
    assert [m.offset() for m in first] == [0, 1] and [m.offset() for m in rest] == [2]


async def test_sdk_over_http_management(server):
    client = await http_client(server)
    assert await client.get_stream("missing") is None  # a 404 is "not found" to the SDK
    await client.create_stream("s1")
    await client.create_topic("s1", "t1", partitions_count=1)
    await client.create_partitions("s1", "t1", 2)
    assert (await client.get_topic("s1", "t1")).partitions_count == 3
    await client.delete_partitions("s1", "t1", 1)
    assert (await client.get_topic("s1", "t1")).partitions_count == 2
    stats = await client.get_stats()
    assert stats.streams_count == 1 and stats.topics_count == 1
    assert [s.name for s in await client.get_streams()] == ["s1"]
    await client.delete_topic("s1", "t1")
    await client.delete_stream("s1")
    assert await client.get_stream("s1") is None
    await client.logout_user()
    with pytest.raises(RuntimeError, match=r"^Unauthenticated$"):
        await client.get_streams()


async def test_sdk_over_http_and_tcp_share_one_state(server, client):
    http = await http_client(server)
    await http.create_stream("shared")
    await http.create_topic("shared", "t", partitions_count=1)
    await http.send_messages("shared", "t", 0, [SendMessage("via http")])
    # the TCP client sees what the HTTP client made, and the other way round
    assert (await client.get_stream("shared")) is not None
    await client.create_stream("from-tcp")
    assert (await http.get_stream("from-tcp")) is not None


async def test_pat_made_over_http_logs_in_over_tcp(server):
    """One token store for both transports: a PAT created over HTTP auto-logs-in a TCP client."""
    import httpx
    from apache_iggy import AutoLogin, TcpConfig

    token = httpx.post(
        server.http_url + "/users/login", json={"username": ROOT_USER, "password": ROOT_PASSWORD}
    ).json()["access_token"]["token"]
    r = httpx.post(
        server.http_url + "/personal-access-tokens",
        json={"name": "tcp-login", "expiry": 0},
        headers={"Authorization": f"Bearer {token}"},
    )
    raw = r.json()["token"]
    tcp = IggyClient(TcpConfig(server_address=server.tcp_address, auto_login=AutoLogin.personal_access_token(raw)))
    await tcp.connect()
    await tcp.create_stream("made-over-tcp")
    http = await http_client(server)
    assert (await http.get_stream("made-over-tcp")) is not None
