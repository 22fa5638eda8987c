"""Consumer-offset files under a hostile poll-only user: a raw-TCP client allowed only to poll
stores offsets for N distinct consumer ids on one partition (pipelined), then the server's
descriptor count (/proc/<pid>/fd) is read and new TCP and HTTP connections are tried.

Reports the descriptors before and after, the reply codes (0 stored, 3024 beyond
`limits.max_consumer_offsets`), whether every stored id reads back, and whether a new TCP
login and an HTTP /ping are still served. `--env KEY=VALUE` passes IGGY_* settings (e.g.
IGGY_LIMITS_MAX_CONSUMER_OFFSETS=30000 to store every id). The short form is
tests/test_offset_files.py.

Long form: `python -m tests.reliability.offset_files --ids 20000 --engine uring`.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections import Counter

import httpx

from tests.reliability.common import Launcher, harness_arguments
from tests.test_offset_files import fd_count, make_world, poller, read_all, store_all


async def run(server, ids: int) -> dict:
    await make_world(server, partitions=1)
    c = poller(server)
    before = fd_count(server)
    items = {(cid, 0): cid % 10 for cid in range(1, ids + 1)}
    codes = Counter()
    keys = list(items)
    for start in range(0, len(keys), 500):
        codes.update(store_all(c, {k: items[k] for k in keys[start : start + 500]}))
    after = fd_count(server)
    stored = read_all(c, keys)
    c.close()
    try:
        poller(server).close()
        tcp = "accepted"
    except OSError as exc:
        tcp = f"refused: {exc}"
    try:
        http = httpx.get(server.http_url + "/ping", timeout=5).status_code
    except httpx.HTTPError as exc:
        http = f"failed: {type(exc).__name__}"
    return {
        "ids": ids,
        "reply_codes": dict(codes),
        "fds_before": before,
        "fds_after": after,
        "stored_ids_read_back": sum(1 for k in keys if stored[k] == items[k]),
        "new_tcp_connection": tcp,
        "http_ping": http,
    }


def main(argv=None) -> None:
    ap = harness_arguments(__doc__)
    ap.add_argument("--ids", type=int, default=20000)
    ap.add_argument("--env", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args(argv)
    env = dict(kv.split("=", 1) for kv in args.env)
    with Launcher(args.engine, env) as server:
        out = asyncio.run(run(server, args.ids))
    out["engine"] = args.engine or os.environ.get("IGGY_TEST_ENGINE", "auto")
    out["env"] = env
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
