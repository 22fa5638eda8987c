"""docs/ARCHITECTURE.md names real things: every file path it gives exists, and the names of
the thread contract and of the send and poll paths are defined in the files it attributes them
to. A rename that leaves the map behind fails here."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "ARCHITECTURE.md"

# file -> names the map attributes to it (a def/cdef/class, or a module- or class-level assignment)
DEFINED = {
    "iggy/engine/base.py": "Engine",
    "iggy/engine/uring/engine.py": "SHARD_THREAD_COMMANDS ShardHandler on_open on_frame on_foreign UringEngine",
    "iggy/engine/uring/shard.pyx": "_failed _dispatch _process _hold_for_sync _submit_syncs _sync_done "
    "_drain_posted _wait_budget post_reply",
    "iggy/engine/uring/dataplane.pyx": "dp_serve _send _poll",
    "iggy/engine/uring/router.pyx": "find_topic allowed set_topic remove_topic set_user remove_user",
    "iggy/engine/uring/routing.py": "Routes meta_changed",
    "iggy/engine/asyncio_engine.py": "AsyncioEngine Connection ReplyBudget _failed _drain _finish",
    "iggy/control/plane.py": "new_session register_session close_session inline_fsync handle handle_on_shard _ok_reply",
    "iggy/control/messages.py": "read_send send_messages append_batch poll_messages target start_offset",
    "iggy/control/registry.py": "invoke",
    "iggy/control/lookup.py": "find_stream find_topic",
    "iggy/storage/partitions.py": "Partition after_append",
    "iggy/storage/log_read.pyx": "read_segments",
    "iggy/http/bridge.py": "Bridge",
}


def test_every_path_exists():
    text = DOC.read_text()
    paths = set(re.findall(r"`((?:iggy|tests|docs)/[\w/.-]+)`", text))
    assert len(paths) > 20
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert not missing, missing


def test_names_are_defined_where_the_map_says():
    text = DOC.read_text()
    for path, names in DEFINED.items():
        assert f"`{path}`" in text, path
        source = (ROOT / path).read_text()
        for name in names.split():
            assert name in text, (name, "not in the map")
            n = re.escape(name)
            definition = rf"^\s*(?:async\s+)?(?:c?p?def|class)\b[^\n]*?\b{n}\b|^\s*{n}\s*(?::[^=\n]*)?="
            assert re.search(definition, source, re.M), (path, name)
    # the signature the fsync rule states
    assert (
        "def after_append(self, messages: int, size: int, inline: bool"
        in (ROOT / "iggy/storage/partitions.py").read_text()
    )
