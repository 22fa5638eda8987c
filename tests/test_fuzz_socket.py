"""Short form of the raw-socket fuzz (tests/reliability/socket_fuzz.py) against a live server:
random and mutated frames on many connections; the server stays up and the SDK still works."""

from tests.conftest import ServerProcess
from tests.reliability import socket_fuzz


def test_random_and_mutated_frames_never_take_the_server_down(tmp_path):
    server = ServerProcess(tmp_path / "data", extra_env={"IGGY_HTTP_ENABLED": "false"}).start()
    try:
        stats = socket_fuzz.run(server, inputs=3000, connections=24, seed=11, time_limit=12)
    finally:
        server.stop()
    assert stats["inputs"] >= 1000 and stats["connections"] >= 100
    assert stats["server_alive"] and stats["sdk_round_trip"]
