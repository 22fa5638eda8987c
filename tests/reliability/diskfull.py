"""Disk full: the server on a small filesystem made for the test (a size-limited tmpfs).

Steps: start the server with its data directory on a 16 MiB tmpfs, create a `replicated` and
a `persisted` topic, take most of the free space with a filler file, then produce until the
filesystem is full. Checks:

* a send that does not fit is answered with an Iggy error code (not a hang, not a close);
  so is a metadata write (create stream) while the disk is full;
* the server stays up and serves everything it acknowledged: every message polls back with
  valid checksums, in order, once;
* after the filler is deleted, sends and metadata writes work again, and after a restart
  (graceful, then SIGKILL) everything acknowledged, data and metadata, is still there.

Run alone: `python -m tests.reliability.diskfull` (needs root for mount; the mount is removed
at the end whatever happens).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

from tests.conftest import ServerProcess
from tests.reliability.common import Client, check_contiguous, harness_arguments

STREAM = "full"
TOPICS = {"replicated": None, "persisted": "persisted"}


class MountUnavailable(RuntimeError):
    pass


@contextlib.contextmanager
def small_filesystem(parent: Path, size: str = "16m"):
    mnt = Path(parent) / "small-fs"
    mnt.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True, text=True
    )
    if r.returncode:
        raise MountUnavailable(f"cannot mount a tmpfs here: {r.stderr.strip() or r.returncode}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill_to(path: Path, leave: int) -> Path:
    filler = path / "filler"
    with open(filler, "wb") as f:
        chunk = b"\xa5" * (1 << 20)
        while free_bytes(path) - len(chunk) > leave:
            f.write(chunk)
            f.flush()
        os.fsync(f.fileno())
    return filler


def fill_completely(path: Path) -> Path:
    """Write until ENOSPC: nothing is left for the server."""
    filler = path / "filler-last"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for size in (1 << 20, 1 << 16, 4096, 512, 64, 1):
            while True:
                try:
                    if os.write(fd, b"\x5a" * size) < size:
                        break
                except OSError:
                    break
    finally:
        os.close(fd)
    return filler


def verify_all(c: Client, acked: dict) -> int:
    total = 0
    for topic in TOPICS:
        messages = c.poll_all(STREAM, topic, 0)
        check_contiguous(messages, topic)
        payloads = [m["payload"] for m in messages]
        want = acked[topic]
        if payloads[: len(want)] != want:
            raise AssertionError(f"{topic}: acknowledged messages missing or changed")
        if len(payloads) != len(want):
            raise AssertionError(f"{topic}: {len(payloads) - len(want)} messages that were never acknowledged")
        total += len(payloads)
    return total


def produce_until_full(c: Client, acked: dict, label: str, limit_batches: int = 10_000):
    """Send ~32 KB batches, alternating topics, until one is refused; returns (code, batches)."""
    for i in range(limit_batches):
        topic = list(TOPICS)[i % 2]
        payloads = [f"{label}-{i}-{k}-".encode() + os.urandom(4000).hex().encode()[:8000] for k in range(4)]
        started = time.monotonic()
        reply, _ = c.send(STREAM, topic, 0, payloads)
        if time.monotonic() - started > 10:
            raise AssertionError("a send took more than 10 s on a full disk")
        if reply.status:
            return reply.status, i
        acked[topic] += payloads
    raise AssertionError(f"{limit_batches} batches fitted: the filesystem never filled")


def run(parent: Path, log=print) -> dict:
    stats = {}
    with small_filesystem(parent) as mnt:
        server = ServerProcess(
            mnt / "data",
            extra_env={"IGGY_HTTP_ENABLED": "false", "IGGY_QUIC_ENABLED": "false", "IGGY_WEBSOCKET_ENABLED": "false"},
        )
        server.log_path = Path(parent) / f"server-{server.tcp_port}.log"  # the log must not share the full disk
        server.start()
        try:
            c = Client(server.tcp_address)
            assert c.create_stream(STREAM).code == 0
            for topic, durability in TOPICS.items():
                assert c.create_topic(STREAM, topic, 1, durability).code == 0
            acked = {t: [] for t in TOPICS}
            filler = fill_to(mnt, 2 << 20)
            code, batches = produce_until_full(c, acked, "a")
            stats["send_error_code"] = code
            stats["batches_before_full"] = batches
            if log:
                log(f"disk full after {batches} batches: send answered with error {code}")
            # more sends while full: each answered, none hangs
            for _ in range(5):
                reply, _ = c.send(STREAM, "replicated", 0, [b"y" * 100_000])
                if reply.status == 0:
                    acked["replicated"].append(b"y" * 100_000)
            # take the last free bytes too, then metadata writes: each answered (until one fails),
            # the connection stays usable, and what was acknowledged stays
            last = fill_completely(mnt)
            metadata_acked, codes = [], []
            for i in range(300):
                reply = c.create_stream(f"while-full-{i}")
                codes.append(reply.code)
                if reply.code == 0:
                    metadata_acked.append(f"while-full-{i}")
            stats["metadata_writes_while_full"] = {
                "acknowledged": len(metadata_acked),
                "refused_codes": sorted(set(codes) - {0}),
            }
            if not set(codes) - {0}:
                raise AssertionError("no metadata write was refused on a full disk")
            assert c.read(1).status == 0, "ping after a failed write"
            assert server.alive()
            stats["messages_served_while_full"] = verify_all(c, acked)
            # free the space: everything works again
            filler.unlink()
            last.unlink()
            reply, _ = c.send(STREAM, "persisted", 0, [b"after"])
            assert reply.status == 0, f"send after freeing space: {reply.status}"
            acked["persisted"].append(b"after")
            for name in ("after-full-1", "after-full-2"):
                assert c.create_stream(name).code == 0, "metadata write after freeing space"
                metadata_acked.append(name)
            c.close()
            for how in ("graceful", "sigkill"):
                server.restart(graceful=(how == "graceful"))
                c = Client(server.tcp_address)
                stats[f"messages_after_{how}_restart"] = verify_all(c, acked)
                names = c.stream_names()
                missing = [n for n in metadata_acked if n not in names]
                if missing:
                    raise AssertionError(f"acknowledged metadata lost after a {how} restart: {missing}")
                c.close()
            if "Traceback" in server.log():
                raise AssertionError("traceback in the server log:\n" + server.log()[-3000:])
        finally:
            server.stop()
    return stats


def main(argv=None) -> None:
    ap = harness_arguments(__doc__)
    args = ap.parse_args(argv)
    if args.engine:
        os.environ["IGGY_TEST_ENGINE"] = args.engine
    with tempfile.TemporaryDirectory(prefix="iggy-diskfull-") as d:
        stats = run(Path(d))
    print(json.dumps(stats, indent=2))


if __name__ == "__main__":
    main()
