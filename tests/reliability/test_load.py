"""Short form of tests/reliability/load.py: concurrent producers and consumers on one topic."""

from tests.conftest import ServerProcess
from tests.reliability.load import Load


def test_concurrent_producers_and_consumers_lose_and_duplicate_nothing(tmp_path):
    server = ServerProcess(tmp_path / "data", extra_env={"IGGY_HTTP_ENABLED": "false"}).start()
    try:
        stats = Load(server.tcp_address, producers=8, consumers=4, partitions=6, batch=40).run(seconds=3)
    finally:
        server.stop()
    assert stats["messages_acknowledged"] == stats["messages_consumed"] > 1000
