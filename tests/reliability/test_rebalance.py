"""Short form of tests/reliability/rebalance.py: four group members join and leave (gracefully)
while a producer sends, each committing after it processed a batch. With cooperative
rebalancing no message is delivered twice and none is lost; the eager rebalancing it replaced
redelivered 190 to 340 messages in each of three such runs."""

from tests.conftest import ServerProcess
from tests.reliability.rebalance import Rebalance


def test_members_joining_and_leaving_under_load_get_each_message_once(tmp_path):
    server = ServerProcess(tmp_path / "data", extra_env={"IGGY_HTTP_ENABLED": "false"}).start()
    try:
        figures = Rebalance(server.tcp_address, stay=(0.3, 1.0), pause=(0.1, 0.4)).run(seconds=8)
        assert server.alive()
    finally:
        server.stop()
    assert figures["errors"] == []
    assert figures["joins"] >= 6 and figures["leaves"] >= 2  # the membership really changed under load
    assert figures["produced"] > 1000 and figures["lost"] == 0
    assert figures["redelivered_messages"] == 0, figures
