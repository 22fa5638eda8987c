"""The permission matrix (tests/reliability/permissions.py): every TCP command and HTTP route,
unauthenticated / without the permission / with exactly the needed one; secrets at rest."""

import os

from iggy.control.plane import ControlPlane  # noqa: F401 - registers every command
from iggy.control.registry import COMMANDS
from tests.conftest import ServerProcess
from tests.reliability import commands, permissions


def test_the_table_covers_every_registered_command():
    from iggy.protocol import codes

    covered = {c.code for c in commands.COMMANDS}
    assert set(COMMANDS) - {codes.LOGIN_REGISTER} == covered


def test_permission_matrix_and_secrets_at_rest(tmp_path):
    server = ServerProcess(tmp_path / "data", extra_env={"IGGY_SYSTEM_METADATA_SNAPSHOT_EVERY": "1000000"}).start()
    if os.environ.get("IGGY_TEST_ENGINE") == "asyncio":
        server.http_port = 0  # the HTTP API does not go through the TCP engine: checked once
    try:
        stats = permissions.run(server)
    finally:
        server.stop()
    assert stats["refused_unchanged"] > 100 and stats["granted"] > 100
    assert stats["password_hashes"] >= 3 and stats["token_hashes"] >= 1
