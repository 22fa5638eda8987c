"""Short form of tests/reliability/limits.py: frame size, slow readers, idle and slow clients,
memory with 1,000 idle connections (tests/test_limits.py covers limits.max_connections)."""

import functools

import pytest

from tests.reliability import limits

QUIET = {"IGGY_HTTP_ENABLED": "false", "IGGY_QUIC_ENABLED": "false", "IGGY_WEBSOCKET_ENABLED": "false"}


@pytest.fixture
def make_server(make_server):
    """conftest's, with the listeners these checks do not use turned off."""
    return functools.partial(make_server, **QUIET)


def test_frame_over_the_limit_closes_with_a_log_line(make_server):
    limits.check_frame_size(make_server(IGGY_MESSAGE_BUS_MAX_MESSAGE_SIZE="65536"), 65536)


def test_connection_over_the_limit_is_logged(make_server):
    limits.check_max_connections(make_server(IGGY_LIMITS_MAX_CONNECTIONS="5"), 5)


def test_a_client_that_does_not_read_costs_bounded_memory(make_server):
    stats = limits.check_slow_reader(make_server(), seconds=2, max_growth=100 << 20)
    assert stats["polls_pipelined_unread"] > 1000


def test_idle_slow_and_non_reading_clients_are_timed_out(make_server):
    stats = limits.check_idle_timeout(make_server(IGGY_LIMITS_IDLE_TIMEOUT="1 s"), 1.0)
    assert all(stats[f"{k}_closed_after_s"] < 4 for k in ("idle", "trickle", "reader"))


def test_a_thousand_idle_connections_cost_little_memory(make_server):
    stats = limits.check_idle_connections(make_server(), 1000)
    assert stats["rss_per_connection_kib"] < 100, stats
