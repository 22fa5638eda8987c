"""Short form of tests/reliability/memory.py: memory before login, big TCP polls, the reply
budget, HTTP polls of everything. RSS bounds have wide margins: they separate "bounded and
given back" from "grows with the clients and stays" (the figures of both are in
docs/RELIABILITY.md), not one allocator's exact numbers."""

import functools

import pytest

from tests.reliability import memory

MIB = 1 << 20
QUIET = {"IGGY_QUIC_ENABLED": "false", "IGGY_WEBSOCKET_ENABLED": "false"}


@pytest.fixture
def make_server(make_server):
    """conftest's, with QUIC, WebSocket and (unless a test turns it on) HTTP off."""
    return functools.partial(make_server, **QUIET, IGGY_HTTP_ENABLED="false")


def test_big_frames_before_login_are_refused_at_the_header(make_server):
    server = make_server()
    stats = memory.check_unauthenticated_frames(server, connections=8, size=16 * MIB)
    # each connection is closed long before its 16 MiB are sent (before: all 128 MiB were
    # read, buffered and answered)
    assert stats["closed_by_server"] == 8, stats
    assert stats["client_bytes_sent_mib"] < 8 * 16, stats
    assert "over limits.max_unauthenticated_frame (65536) before login" in server.log()
    # before: +128 MiB at the peak (and kept after close on the uring engine)
    assert stats["rss_peak_mib"] - stats["rss_before_mib"] < 24, stats
    assert stats["rss_after_mib"] - stats["rss_before_mib"] < 16, stats


def test_a_login_and_ordinary_requests_fit_under_the_unauthenticated_limit(make_server):
    # the smallest limit allowed: the SDK-shaped login and pings pass, a bigger frame does not
    server = make_server(IGGY_LIMITS_MAX_UNAUTHENTICATED_FRAME="4 KiB")
    c = memory.Client(server.tcp_address)  # logs in (raises when refused)
    assert c.read(1).status == 0
    assert c.read(1, b"\0" * (64 * 1024)).status == 0  # logged in: the frame limit is back
    c.close()
    stats = memory.check_unauthenticated_frames(server, connections=1, size=4 * 1024 + 1)
    assert stats["closed_by_server"] == 1, stats
    assert "frame size 4097 over limits.max_unauthenticated_frame (4096) before login" in server.log()


def test_big_polls_are_bounded_by_the_reply_budget_and_given_back(make_server):
    # 12 clients each poll ~16 MiB twice, with a 32 MiB budget. Before: every reply had its own
    # grown buffers (uring: two per connection, kept until the slot was reused: +380 MiB after;
    # asyncio: all replies at once at the peak, a 16 MiB read buffer kept after)
    server = make_server(IGGY_MESSAGE_BUS_MAX_MESSAGE_SIZE="16 MiB", IGGY_LIMITS_MAX_REPLY_BUFFERS="32 MiB")
    stats = memory.check_large_polls(server, connections=12, rounds=2, fill=20 * MIB)
    assert stats["reply_mib"] > 15, stats
    assert stats["rss_peak_mib"] - stats["rss_before_mib"] < 120, stats
    assert stats["rss_after_mib"] - stats["rss_before_mib"] < 24, stats


def test_a_big_poll_waits_while_the_budget_is_held_and_runs_once_it_is_given_back(make_server):
    server = make_server(
        IGGY_MESSAGE_BUS_MAX_MESSAGE_SIZE="8 MiB", IGGY_LIMITS_MAX_REPLY_BUFFERS="1 MiB", IGGY_HTTP_ENABLED="true"
    )
    memory.fill_partition(server, "memb", "t", 12 * MIB, 1000, 1000)
    stats = memory.check_reply_budget_waits(server)
    assert stats["big_poll_waited_for_budget"], stats
    assert stats["reply_mib"] > 7, stats
    assert memory.budget_gauges(server) == {"reply_buffers_bytes": 0, "reply_buffer_waiters": 0}


def test_clients_vanishing_mid_transfer_leave_nothing_counted(make_server):
    server = make_server(
        IGGY_MESSAGE_BUS_MAX_MESSAGE_SIZE="8 MiB", IGGY_LIMITS_MAX_REPLY_BUFFERS="32 MiB", IGGY_HTTP_ENABLED="true"
    )
    memory.fill_partition(server, "memb", "t", 12 * MIB, 1000, 1000)
    stats = memory.check_budget_given_back_by_vanishing_clients(server)
    assert (stats["reply_buffers_bytes"], stats["reply_buffer_waiters"]) == (0, 0), stats
    assert stats["big_poll_after"] > 7, stats


def test_an_http_poll_of_everything_is_capped_like_a_tcp_one(make_server, tmp_path):
    # 1 MiB frames: a reply holds at most 1 MiB / 2048 = 511 messages and ~1 MiB of JSON.
    # Before: all 100,000 messages, ~23 MiB of JSON
    server = make_server(IGGY_HTTP_ENABLED="true", IGGY_MESSAGE_BUS_MAX_MESSAGE_SIZE="1 MiB")
    stats = memory.check_http_poll_all(server, messages=100_000, per_batch=10_000)
    assert 0 < stats["served"] <= 512, stats
    assert stats["json_mib"] <= 1.0, stats
