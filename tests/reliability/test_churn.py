"""Short form of tests/reliability/churn.py: sends, polls and offset stores on raw TCP while
another client deletes and recreates streams and topics and adds and removes partitions.
Every reply is a success or a not-found code, and the server logs no traceback."""

from tests.conftest import ServerProcess
from tests.reliability.churn import Churn, check_log


def test_data_path_during_stream_topic_and_partition_churn(tmp_path):
    server = ServerProcess(tmp_path / "data", extra_env={"IGGY_HTTP_ENABLED": "false"}).start()
    try:
        stats = Churn(server.tcp_address, workers=6).run(seconds=4)
        assert server.alive()
    finally:
        server.stop()
    assert stats["errors"] == []
    assert check_log(server.log()) == []
    # the churn really overlapped the data path: both outcomes were seen many times
    assert stats["replies_by_code"].get(0, 0) > 100 and stats["churn_operations"] > 10
    assert sum(n for code, n in stats["replies_by_code"].items() if code) > 100
