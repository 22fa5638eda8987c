"""Disk full on a small tmpfs made by the test (tests/reliability/diskfull.py): errors, not
hangs; nothing acknowledged damaged or lost; writes work again once space is freed."""

import pytest

from tests.reliability import diskfull


def test_disk_full_is_an_error_and_damages_nothing(tmp_path):
    # (the harness starts its own ServerProcess( on the small filesystem)
    try:
        stats = diskfull.run(tmp_path, log=None)
    except diskfull.MountUnavailable as exc:
        pytest.skip(str(exc))
    assert stats["send_error_code"] == 4006  # cannot_save_messages_to_segment
    assert stats["metadata_writes_while_full"]["refused_codes"] == [10006]  # cannot_write_to_file
    assert stats["messages_after_sigkill_restart"] == stats["messages_served_while_full"] + 1
