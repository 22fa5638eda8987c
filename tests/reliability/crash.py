"""Crash consistency: producers and metadata changes under SIGKILL, many rounds.

One round: the server runs; producer threads send batches (raw frames, 1..20 messages, each
payload naming its producer and sequence number) to a `persisted` topic and to a topic with
the default durability (`replicated`), a metadata thread creates and deletes streams, and a
reader thread polls and verifies what is served meanwhile. At a random moment the server is
killed with SIGKILL, then started again on the same data directory. Checks after each restart,
over the whole history of all rounds:

* the server starts (no error) and every partition reads back with valid batch and message
  checksums and contiguous offsets from 0;
* `persisted`: every acknowledged batch is present once, at the offsets its acknowledgement
  gave, in order, byte-identical payloads; the only other messages are from the one batch
  each producer had in flight at the kill (whole or absent, never partial);
* default durability: the partition is a consistent prefix (same rules, and nothing served
  before the kill is gone); acknowledged batches lost are counted (expected 0: appends go
  straight to the page cache, which a process crash does not lose);
* metadata: every acknowledged stream creation is there and every acknowledged deletion is
  gone (the one operation in flight may have gone either way);
* nothing served by a poll, before or after a crash, ever failed verification.

Long form: `python -m tests.reliability.crash --rounds 200` (see --help).
"""

from __future__ import annotations

import json
import os
import random
import threading
import time

from tests.reliability.common import (
    Client,
    Corrupt,
    Launcher,
    check_contiguous,
    harness_arguments,
    verify_batches,
    work_until_killed,
)

STREAM = "crash"
TOPICS = {"persisted": "persisted", "replicated": None}  # topic name -> durability option
PARTITIONS = 2


class History:
    """Everything acknowledged (or seen served) so far, across rounds."""

    def __init__(self, topics=TOPICS):
        self.lock = threading.Lock()
        self.topics = list(topics)  # the topic names producers send to and the reader polls
        # (topic, partition) -> {base_offset: [payloads]} for acknowledged batches
        self.acked: dict[tuple[str, int], dict[int, list[bytes]]] = {}
        # (topic, partition) -> {payload} of batches in flight at a kill (may or may not exist)
        self.maybe: dict[tuple[str, int], set[bytes]] = {}
        # (topic, partition) -> messages count already verified as served (must never shrink)
        self.served: dict[tuple[str, int], int] = {}
        self.streams_present: set[str] = set()
        self.streams_gone: set[str] = set()
        self.streams_maybe: set[str] = set()
        self.stats = {
            "rounds": 0,
            "acked_batches": 0,
            "acked_messages": 0,
            "inflight_present": 0,
            "inflight_absent": 0,
            "replicated_acked_lost": 0,
            "metadata_ops": 0,
            "served_verified": 0,
            "corrupt_served": 0,
        }


def produce(
    address: str, topic: str, partition: int, producer: str, history: History, stop: threading.Event, rng: random.Random
) -> None:
    key = (topic, partition)
    seq = 0

    def send(c) -> None:
        nonlocal seq
        n = rng.randint(1, 20)
        payloads = [
            f"{producer}:{seq + i}:".encode() + os.urandom(rng.randint(0, 200)).hex().encode() for i in range(n)
        ]
        with history.lock:
            history.maybe.setdefault(key, set()).update(payloads)
        reply, base = c.send(STREAM, topic, partition, payloads)
        if reply.status:
            raise AssertionError(f"send refused with {reply.status}")
        with history.lock:
            history.maybe[key].difference_update(payloads)
            history.acked.setdefault(key, {})[base] = payloads
            history.stats["acked_batches"] += 1
            history.stats["acked_messages"] += n
        seq += n

    work_until_killed(address, stop, send)


def metadata_changes(address: str, round_no: int, history: History, stop: threading.Event, rng: random.Random) -> None:
    i = 0

    def change(c) -> None:
        nonlocal i
        with history.lock:
            present = sorted(history.streams_present)
        deleting = bool(present) and rng.random() < 0.4
        if deleting:
            name = rng.choice(present)
        else:
            name = f"meta-{round_no}-{i}"
            i += 1
        with history.lock:
            history.streams_maybe.add(name)
        reply = c.delete_stream(name) if deleting else c.create_stream(name)
        if reply.code:
            raise AssertionError(f"{'delete' if deleting else 'create'} stream {name} refused: {reply.code}")
        # acknowledged: the stream moves from one set to the other
        leaves, joins = (
            (history.streams_present, history.streams_gone)
            if deleting
            else (history.streams_gone, history.streams_present)
        )
        with history.lock:
            history.streams_maybe.discard(name)
            leaves.discard(name)
            joins.add(name)
            history.stats["metadata_ops"] += 1
        time.sleep(rng.uniform(0, 0.01))

    work_until_killed(address, stop, change)


def read_while_running(
    address: str, history: History, stop: threading.Event, errors: list, remember_served: bool = False
) -> None:
    """Poll every partition from the start, over and over, verifying what is served.

    remember_served: also raise history.served to what was seen (the power-cut harness counts
    messages served before a cut and gone after it)."""
    next_offset: dict[tuple[str, int], int] = {}

    def read(c) -> None:
        for topic in history.topics:
            for p in range(PARTITIONS):
                key = (topic, p)
                reply = c.poll(STREAM, topic, p, next_offset.get(key, 0), 500)
                if reply.status:
                    continue
                try:
                    messages = verify_batches(reply.body[16:])
                except Corrupt as exc:
                    errors.append(f"served while running: {exc}")
                    with history.lock:
                        history.stats["corrupt_served"] += 1
                    continue
                if messages:
                    next_offset[key] = messages[-1]["offset"] + 1
                    with history.lock:
                        history.stats["served_verified"] += len(messages)
                        if remember_served:
                            history.served[key] = max(history.served.get(key, 0), next_offset[key])
        time.sleep(0.005)

    work_until_killed(address, stop, read, also=(ValueError,))


def check(address: str, history: History) -> None:
    """After a restart: everything acknowledged is there, once, in order, with valid checksums."""
    c = Client(address, timeout=10)
    try:
        for topic, durability in TOPICS.items():
            for p in range(PARTITIONS):
                key = (topic, p)
                where = f"{topic}/{p}"
                payloads = served_payloads(c, history, topic, p)
                if len(payloads) < history.served.get(key, 0):
                    raise AssertionError(
                        f"{where}: {history.served[key]} messages were served before the crash, "
                        f"only {len(payloads)} after it"
                    )
                acked = history.acked.get(key, {})
                lost = 0
                for base, batch in sorted(acked.items()):
                    got = payloads[base : base + len(batch)]
                    if got != batch:
                        if durability == "persisted" or got:
                            raise AssertionError(
                                f"{where}: acknowledged batch at offset {base} "
                                f"({len(batch)} messages) is missing or changed"
                            )
                        lost += 1
                history.stats["replicated_acked_lost"] += lost
                if lost and durability != "persisted":
                    # allowed only as a clean cut: nothing acknowledged after the first loss remains
                    first_lost = min(b for b, batch in acked.items() if payloads[b : b + len(batch)] != batch)
                    if len(payloads) > first_lost:
                        raise AssertionError(f"{where}: not a prefix: messages after the lost batch at {first_lost}")
                settle_in_flight(history, key, where, payloads, "kill")
                history.served[key] = len(payloads)
        check_streams(c, history)
    finally:
        c.close()


def served_payloads(c: Client, history: History, topic: str, p: int) -> list[bytes]:
    """The payloads partition `p` of `topic` serves now, checked: valid checksums (poll_all raises
    Corrupt), contiguous offsets, no message twice; counted in stats["served_verified"]."""
    where = f"{topic}/{p}"
    messages = c.poll_all(STREAM, topic, p)
    history.stats["served_verified"] += len(messages)
    check_contiguous(messages, where)
    payloads = [m["payload"] for m in messages]
    if len(set(payloads)) != len(payloads):
        raise AssertionError(f"{where}: a message is served twice")
    return payloads


def settle_in_flight(history: History, key: tuple[str, int], where: str, payloads: list[bytes], moment: str) -> None:
    """The messages beyond the acknowledged batches: only the batch each producer had in flight
    at the kill or cut, whole or absent. A recovered one counts as acknowledged from here on.
    Then, per producer, sequence numbers only grow with the offset."""
    maybe = history.maybe.get(key, set())
    acked_payloads = {pl for batch in history.acked.get(key, {}).values() for pl in batch}
    extra = [pl for pl in payloads if pl not in acked_payloads]
    unknown = [pl for pl in extra if pl not in maybe]
    if unknown:
        raise AssertionError(f"{where}: {len(unknown)} messages were never sent or acknowledged ({unknown[0][:30]!r})")
    present = set(extra)
    if present and present != maybe:
        raise AssertionError(
            f"{where}: {len(present)} of the {len(maybe)} messages of the batch in flight "
            f"at the {moment} were recovered: a partial batch"
        )
    history.stats["inflight_present"] += len(present)
    history.stats["inflight_absent"] += len(maybe - present)
    if present:
        history.acked.setdefault(key, {})[payloads.index(extra[0])] = extra
    history.maybe[key] = set()
    last_seq: dict[bytes, int] = {}
    for pl in payloads:
        producer, seq, _ = pl.split(b":", 2)
        if int(seq) <= last_seq.get(producer, -1):
            raise AssertionError(f"{where}: producer {producer!r} out of order at {seq!r}")
        last_seq[producer] = int(seq)


def check_streams(c: Client, history: History) -> None:
    """Every acknowledged stream creation is there, every acknowledged deletion gone; the one
    operation in flight is settled by what the server says now."""
    names = c.stream_names()
    missing = (history.streams_present - history.streams_maybe) - names
    if missing:
        raise AssertionError(f"acknowledged stream creations lost: {sorted(missing)[:5]}")
    back = (history.streams_gone - history.streams_maybe) & names
    if back:
        raise AssertionError(f"acknowledged stream deletions undone: {sorted(back)[:5]}")
    for name in history.streams_maybe:
        if name in names:
            history.streams_present.add(name)
            history.streams_gone.discard(name)
        else:
            history.streams_present.discard(name)
            history.streams_gone.add(name)
    history.streams_maybe.clear()
    unexpected = names - history.streams_present - {STREAM}
    if unexpected:
        raise AssertionError(f"streams nobody created: {sorted(unexpected)[:5]}")


def setup(address: str) -> None:
    c = Client(address)
    try:
        assert c.create_stream(STREAM).code == 0
        for topic, durability in TOPICS.items():
            reply = c.create_topic(STREAM, topic, PARTITIONS, durability)
            assert reply.code == 0, reply
    finally:
        c.close()


def _await_first_acknowledgements(history: History, limit: float = 10.0) -> None:
    """Wait (at most `limit` s) until a batch and a metadata change were acknowledged, so that a
    short run on a loaded machine still checks both kinds (the later rounds' kills stay random
    from the start of the round, connecting included)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        with history.lock:
            if history.stats["acked_batches"] and history.stats["metadata_ops"]:
                return
        time.sleep(0.01)


def run_rounds(
    server,
    history: History,
    rng: random.Random,
    rounds: int,
    kill_after,
    time_limit: float | None,
    check_after,
    extra_workers=(),
    after_kill=None,
    remember_served: bool = False,
    log=print,
) -> None:
    """The round loop both harnesses share: start producers (one per partition), the metadata
    thread, extra_workers(stop) and a reader; SIGKILL the server at a random moment; call
    after_kill() (the power cut: returns a note for the log line); restart; check_after()."""
    started = time.monotonic()
    errors: list[str] = []
    address = server.tcp_address
    for r in range(rounds):
        if time_limit is not None and time.monotonic() - started > time_limit:
            break
        stop = threading.Event()
        targets = [
            (produce, (address, topic, p, f"r{r}t{ti}p{p}", history, stop, random.Random(rng.random())))
            for ti, topic in enumerate(history.topics)
            for p in range(PARTITIONS)
        ]
        targets.append((metadata_changes, (address, r, history, stop, random.Random(rng.random()))))
        targets += [(worker, (address, history, stop, random.Random(rng.random()))) for worker in extra_workers]
        targets.append((read_while_running, (address, history, stop, errors, remember_served)))
        threads = [threading.Thread(target=target, args=args) for target, args in targets]
        for t in threads:
            t.start()
        if r == 0:
            _await_first_acknowledgements(history)
        time.sleep(rng.uniform(*kill_after))
        server.kill()
        stop.set()
        for t in threads:
            t.join(30)
        note = after_kill() if after_kill else "all present"
        server.start()  # raises IggyServerError (with the log) if the state is refused
        check_after(address, history)
        if errors:
            raise AssertionError(errors[0])
        history.stats["rounds"] += 1
        if log:
            log(
                f"round {r + 1}: {history.stats['acked_messages']} messages acknowledged so far, "
                f"{history.stats['metadata_ops']} metadata ops, {note}"
            )
    if "Traceback" in server.log():
        raise AssertionError("the server log has a traceback:\n" + server.log()[-3000:])


def run(server, rounds: int, seed: int, kill_after=(0.05, 0.8), log=print, time_limit: float | None = None) -> dict:
    """`rounds` rounds of produce + kill + restart + check against a started ServerProcess."""
    rng = random.Random(seed)
    history = History()
    setup(server.tcp_address)
    run_rounds(server, history, rng, rounds, kill_after, time_limit, check, log=log)
    return history.stats


def main(argv=None) -> None:
    ap = harness_arguments(__doc__)
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--max-kill-delay", type=float, default=0.8, help="kill within this many seconds of a start")
    ap.add_argument("--time-limit", type=float, default=None, help="stop after this many seconds")
    args = ap.parse_args(argv)
    started = time.monotonic()
    with Launcher(args.engine, {"IGGY_HTTP_ENABLED": "false"}) as server:
        stats = run(server, args.rounds, args.seed, (0.05, args.max_kill_delay), time_limit=args.time_limit)
    stats["seconds"] = round(time.monotonic() - started, 1)
    stats["engine"] = args.engine or os.environ.get("IGGY_TEST_ENGINE", "auto")
    print(json.dumps(stats, indent=2))


if __name__ == "__main__":
    main()
