"""Power cuts: the crash harness on a file system that drops whatever was not fsynced.

SIGKILL keeps the page cache; a power cut does not. The server's data directory is the root
of a LazyFS mount (tests/reliability/lazyfs.py: writes stay volatile until the file is
fsynced, directory entries until the directory is fsynced). One round: producers send to
three topics, a metadata thread creates and deletes streams, an offsets thread stores a
consumer offset, a reader polls and verifies; at a random moment the server gets SIGKILL,
the power is cut (every unsynced change dropped, the mount remade) and the server starts
again on what survived. Checks after each restart, over the whole history:

* the server starts: a state a real disk could have left is never refused;
* every partition reads back with valid batch and message checksums, offsets contiguous
  from 0, no message twice, each producer's messages in order;
* `persisted` topics (one plain, one with preallocated segments; both with 1 MiB segments, so
  segments are sealed and created all the time): every acknowledged batch is present, at the
  offsets its acknowledgement gave, byte-identical; the only other messages are from the batch
  each producer had in flight (whole or absent, never partial);
* the default durability (`replicated`): the partition is a prefix of what was written; each
  acknowledged batch is there whole or entirely past the end (lost, counted: expected, these
  are acknowledged before any fsync);
* consumer offsets with `consumer_offset_durability = persisted`: the stored offset is the
  last acknowledged store (or the one in flight);
* metadata: every acknowledged stream creation is there, every acknowledged deletion gone;
* nothing served, before or after a cut, fails verification.

Messages served by a poll before the cut and gone after it are counted, not refused: a poll
may read a batch that is written but not yet fsynced (and so not acknowledged).

Long form: `python -m tests.reliability.powercut --rounds 300` (see --help; needs root and
/dev/fuse). `--torn` also persists unsynced pages and directories at random at each cut.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from iggy.protocol import codes
from tests.conftest import ServerProcess
from tests.rawclient import consumer_target, ident, store_offset_body, wire_name
from tests.reliability import crash
from tests.reliability.common import OP_CREATE_TOPIC, Client, harness_arguments, option, work_until_killed

LAZYFS = Path(__file__).with_name("lazyfs.py")
STREAM = crash.STREAM  # crash.produce sends to it
MiB = 1 << 20
# topic -> (durability, create options); both persisted topics roll a segment every 1 MiB
TOPICS = {
    "persisted": (
        "persisted",
        {"durability": "persisted", "segment_size": str(MiB), "consumer_offset_durability": "persisted"},
    ),
    "prealloc": ("persisted", {"durability": "persisted", "segment_size": str(MiB), "preallocate_segments": "true"}),
    "replicated": ("replicated", {"segment_size": str(MiB)}),
}
PARTITIONS = 2
CONSUMER = 7
OFFSETS_TOPIC = "persisted"
_OFFSET_REPLY = struct.Struct("<IQQ")


class FuseUnavailable(RuntimeError):
    """FUSE cannot be mounted here (no /dev/fuse, no permission, no pyfuse3)."""


class LazyMount:
    """The LazyFS daemon (a child process) mounted at `mountpoint`; `cut()` is a power cut."""

    def __init__(self, mountpoint: Path, torn: bool = False, seed: int = 0, log_path: Path | None = None):
        self.mountpoint = Path(mountpoint)
        self.torn = torn
        self.seed = seed
        self.log_path = log_path or self.mountpoint.with_name(self.mountpoint.name + "-lazyfs.log")
        self.proc: subprocess.Popen | None = None

    def start(self) -> LazyMount:
        try:
            import pyfuse3  # noqa: F401
        except ImportError as exc:
            raise FuseUnavailable(f"pyfuse3 is not installed ({exc}); scripts/setup.sh --test installs it") from exc
        if not os.path.exists("/dev/fuse"):
            raise FuseUnavailable("no /dev/fuse on this machine")
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, str(LAZYFS), str(self.mountpoint), "--seed", str(self.seed)]
        if self.torn:
            cmd.append("--torn")
        with open(self.log_path, "ab") as err:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True, bufsize=1
            )
        event = self._event()
        if event.get("event") != "mounted":
            self.close()
            raise FuseUnavailable(event.get("error") or f"lazyfs did not mount: {event}")
        return self

    def _event(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            tail = self.log_path.read_text(errors="replace")[-2000:] if self.log_path.exists() else ""
            return {"event": "error", "error": f"lazyfs exited with {code}: {tail.strip()}"}
        return json.loads(line)

    def command(self, cmd: str) -> dict:
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        event = self._event()
        if event.get("event") == "error":
            raise RuntimeError(event["error"])
        return event

    def cut(self) -> dict:
        """Power cut: the caller has killed every process using the mount."""
        return self.command("cut")["cut"]

    def stats(self) -> dict:
        return self.command("stats")

    def close(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("exit\n")
                self.proc.stdin.flush()
                self.proc.wait(20)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        # a daemon that died leaves a dead mount behind
        if os.path.ismount(self.mountpoint):
            subprocess.run(["umount", "-l", str(self.mountpoint)], capture_output=True)

    def __enter__(self) -> LazyMount:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


class PowerClient(Client):
    def create_topic_options(self, stream, name: str, partitions: int, options: dict):
        body = ident(stream) + struct.pack("<I", partitions) + wire_name(name)
        body += b"".join(option(k, v) for k, v in options.items())
        return self.call(OP_CREATE_TOPIC, 0, body)

    def store_offset(self, topic, partition: int, offset: int):
        body = store_offset_body(STREAM, topic, partition, offset, consumer=CONSUMER)
        return self.call(codes.CODE_OPERATIONS[codes.STORE_CONSUMER_OFFSET], 0, body)

    def get_offset(self, topic, partition: int) -> int | None:
        reply = self.read(codes.GET_CONSUMER_OFFSET, consumer_target(STREAM, topic, partition, consumer=CONSUMER))
        if reply.status:
            raise AssertionError(f"get consumer offset of {topic}/{partition} failed: {reply.status}")
        if not reply.body:
            return None
        return _OFFSET_REPLY.unpack(reply.body)[2]


class History(crash.History):
    def __init__(self):
        super().__init__(TOPICS)
        # (topic, partition) -> last acknowledged stored offset, and the store in flight
        self.offset_acked: dict[tuple[str, int], int] = {}
        self.offset_maybe: dict[tuple[str, int], int] = {}
        del self.stats["replicated_acked_lost"]
        self.stats.update(
            {
                "cuts": 0,
                "persisted_acked_messages": 0,
                "replicated_acked_lost_batches": 0,
                "replicated_acked_lost_messages": 0,
                "served_then_lost_persisted": 0,
                "served_then_lost_replicated": 0,
                "offset_stores": 0,
                "dropped_at_cuts": {},
            }
        )


def store_offsets(address: str, history: History, stop: threading.Event, rng: random.Random) -> None:
    """Store CONSUMER's offset on the persisted topic: the newest acknowledged offset, growing."""

    def store(c) -> None:
        p = rng.randrange(PARTITIONS)
        key = (OFFSETS_TOPIC, p)
        with history.lock:
            acked = history.acked.get(key)
            top = max((b + len(batch) - 1 for b, batch in acked.items()), default=None) if acked else None
            last = history.offset_acked.get(key, -1)
        if top is None or top <= last:
            time.sleep(0.01)
            return
        with history.lock:
            history.offset_maybe[key] = top
        reply = c.store_offset(OFFSETS_TOPIC, p, top)
        if reply.code:
            raise AssertionError(f"store offset {top} on {key} refused: {reply.code}")
        with history.lock:
            history.offset_maybe.pop(key, None)
            history.offset_acked[key] = top
            history.stats["offset_stores"] += 1
        time.sleep(rng.uniform(0, 0.02))

    work_until_killed(address, stop, store, client_cls=PowerClient)


def check(address: str, history: History) -> None:
    """After a cut and a restart: the rules of the module docstring, over the whole history."""
    c = PowerClient(address, timeout=30)
    try:
        for topic, (durability, _opts) in TOPICS.items():
            for p in range(PARTITIONS):
                _check_partition(c, history, topic, durability, p)
        for topic, p in {*history.offset_acked, *history.offset_maybe}:
            got = c.get_offset(topic, p)
            acked = history.offset_acked.get((topic, p))
            maybe = history.offset_maybe.pop((topic, p), None)
            if got != acked and (maybe is None or got != maybe):
                raise AssertionError(
                    f"consumer offset of {topic}/{p}: {got} after the cut, the last acknowledged "
                    f"store was {acked} (in flight: {maybe})"
                )
            if got is not None:
                history.offset_acked[(topic, p)] = got
        crash.check_streams(c, history)
    finally:
        c.close()


def _check_partition(c: Client, history: History, topic: str, durability: str, p: int) -> None:
    key = (topic, p)
    where = f"{topic}/{p}"
    payloads = crash.served_payloads(c, history, topic, p)
    n = len(payloads)
    acked = history.acked.get(key, {})
    lost_batches = lost_messages = 0
    for base, batch in sorted(acked.items()):
        if base >= n and durability != "persisted":
            lost_batches += 1  # past the end: cut off with the unsynced tail
            lost_messages += len(batch)
            continue
        if payloads[base : base + len(batch)] != batch:
            raise AssertionError(
                f"{where}: acknowledged batch at offset {base} ({len(batch)} messages) is "
                f"{'missing or changed' if base < n else 'lost'}; the partition has {n} messages"
            )
    if lost_batches:
        # gone for good: the offsets will be given to new batches
        history.acked[key] = {b: batch for b, batch in acked.items() if b < n}
        history.stats["replicated_acked_lost_batches"] += lost_batches
        history.stats["replicated_acked_lost_messages"] += lost_messages
    crash.settle_in_flight(history, key, where, payloads, "cut")
    if history.served.get(key, 0) > n:
        history.stats[f"served_then_lost_{durability}"] += history.served[key] - n
    history.served[key] = n


def setup(address: str) -> None:
    c = PowerClient(address)
    try:
        assert c.create_stream(STREAM).code == 0
        for topic, (_durability, opts) in TOPICS.items():
            reply = c.create_topic_options(STREAM, topic, PARTITIONS, opts)
            assert reply.code == 0, reply
    finally:
        c.close()


def run(
    fs: LazyMount,
    server: ServerProcess,
    rounds: int,
    seed: int,
    kill_after=(0.5, 2.0),
    log=print,
    time_limit: float | None = None,
) -> dict:
    """`rounds` rounds of produce + SIGKILL + power cut + restart + check on a started server."""
    rng = random.Random(seed)
    history = History()
    setup(server.tcp_address)

    def cut() -> str:
        dropped = fs.cut()
        history.stats["cuts"] += 1
        for k, v in dropped.items():
            history.stats["dropped_at_cuts"][k] = history.stats["dropped_at_cuts"].get(k, 0) + v
        return f"{history.stats['offset_stores']} offset stores; dropped at the cut: {dropped}"

    crash.run_rounds(
        server,
        history,
        rng,
        rounds,
        kill_after,
        time_limit,
        check,
        extra_workers=(store_offsets,),
        after_kill=cut,
        remember_served=True,
        log=log,
    )
    # acknowledged (or recovered in flight) and present after the last cut
    history.stats["persisted_acked_messages"] = sum(
        len(batch)
        for (topic, _p), batches in history.acked.items()
        if TOPICS[topic][0] == "persisted"
        for batch in batches.values()
    )
    return history.stats


@contextlib.contextmanager
def powercut_server(root: Path, torn: bool = False, seed: int = 0, engine: str | None = None):
    """A LazyFS mount at root/mnt and a ServerProcess whose data directory is its root (the log
    and the daemon's stderr stay on the real disk, in root)."""
    root = Path(root)
    env = {"IGGY_HTTP_ENABLED": "false", "IGGY_QUIC_ENABLED": "false", "IGGY_WEBSOCKET_ENABLED": "false"}
    if engine:
        env["IGGY_SYSTEM_ENGINE"] = engine
    with LazyMount(root / "mnt", torn=torn, seed=seed, log_path=root / "lazyfs.log") as fs:
        server = ServerProcess(fs.mountpoint, extra_env=env)
        server.log_path = root / "server.log"
        server.start()
        try:
            yield fs, server
        finally:
            server.kill()


def main(argv=None) -> None:
    ap = harness_arguments(__doc__)
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--torn", action="store_true", help="persist unsynced pages and directories at random at a cut")
    ap.add_argument("--max-kill-delay", type=float, default=2.0, help="kill within this many seconds of a start")
    ap.add_argument("--time-limit", type=float, default=None, help="stop after this many seconds")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory (server and lazyfs logs)")
    args = ap.parse_args(argv)
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="iggy-powercut-"))
    try:
        with powercut_server(root, args.torn, args.seed, args.engine) as (fs, server):
            stats = run(fs, server, args.rounds, args.seed, (0.5, args.max_kill_delay), time_limit=args.time_limit)
            stats["lazyfs"] = fs.stats()
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"logs in {root}", file=sys.stderr)
    stats["seconds"] = round(time.monotonic() - started, 1)
    stats["engine"] = args.engine or "auto"
    stats["torn"] = args.torn
    print(json.dumps(stats, indent=2))


if __name__ == "__main__":
    main()
