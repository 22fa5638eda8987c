"""Short form of the crash-consistency harness (tests/reliability/crash.py): a few SIGKILL rounds."""

from tests.conftest import ServerProcess
from tests.reliability import crash


def test_sigkill_rounds_lose_nothing_acknowledged(tmp_path):
    server = ServerProcess(tmp_path / "data", extra_env={"IGGY_HTTP_ENABLED": "false"}).start()
    try:
        stats = crash.run(server, rounds=4, seed=7, kill_after=(0.1, 0.5), log=None, time_limit=20)
    finally:
        server.stop()
    assert stats["rounds"] >= 3
    assert stats["acked_messages"] > 0 and stats["metadata_ops"] > 0
    assert stats["corrupt_served"] == 0 and stats["replicated_acked_lost"] == 0
