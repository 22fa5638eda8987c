"""Churn: the data path while the control plane tears down and rebuilds what it uses.

Worker threads (one raw TCP connection each) send batches, poll (strategies offset, first
and `next` with auto-commit, as a single consumer and as a consumer group member), store and
read consumer offsets on a few streams and topics, addressed by name and by numeric id, while
one churn thread keeps deleting and recreating those streams and topics and adding and
removing partitions. On the uring engine a request goes to the shard's C data plane when the
routing table has the topic, and to the shard thread's Python path otherwise (a topic that is
gone or being rebuilt), which reads the metadata and the storage the control plane is
changing on the main thread at that moment.

Checks: every reply to a worker is success or one of the codes that say the thing asked for
is not there (stream 1009/1010, topic 2010/2011, partition 3007, no partitions 3008, a stored
offset past the end of a recreated partition 4100, a group that went with its topic
5000/5003, a membership that went with it 5006/5009); every served batch verifies; the churn
thread's own commands all succeed; the server log holds no traceback and the process is alive.

Long form: `python -m tests.reliability.churn --workers 6 --seconds 30` (and `--engine asyncio`).
"""

from __future__ import annotations

import json
import os
import random
import struct
import threading
import time
from collections import Counter

from iggy.protocol import codes
from iggy.protocol.errors import ErrorCode
from tests.rawclient import consumer_target, ident, poll_body, store_offset_body, wire_name
from tests.reliability.common import Client, Launcher, harness_arguments, verify_batches

OP = codes.CODE_OPERATIONS
STREAMS = ("churn-a", "churn-b")
TOPICS = ("t0", "t1")
GROUP = "g"

# codes that mean "what the request names is not there (now)"
ALLOWED = frozenset(
    {
        ErrorCode.STREAM_ID_NOT_FOUND,
        ErrorCode.STREAM_NAME_NOT_FOUND,
        ErrorCode.TOPIC_ID_NOT_FOUND,
        ErrorCode.TOPIC_NAME_NOT_FOUND,
        ErrorCode.PARTITION_NOT_FOUND,
        ErrorCode.NO_PARTITIONS,
        ErrorCode.CONSUMER_GROUP_ID_NOT_FOUND,
        ErrorCode.CONSUMER_GROUP_NAME_NOT_FOUND,
        ErrorCode.CONSUMER_GROUP_MEMBER_NOT_FOUND,
        ErrorCode.CONSUMER_GROUP_PARTITION_NOT_OWNED,
    }
)
# a stored offset past the end: the partition was recreated empty since the worker polled it
ALLOWED_STORE = ALLOWED | {ErrorCode.INVALID_OFFSET}

_U32 = struct.Struct("<I")


def _target(rng: random.Random):
    """A stream and topic identifier, by name or (ids are reused after a delete) by number."""
    if rng.random() < 0.7:
        return rng.choice(STREAMS), rng.choice(TOPICS)
    return rng.randrange(0, 3), rng.randrange(0, 3)


class Churn:
    def __init__(self, address: str, workers: int, seed: int = 1):
        self.address = address
        self.workers = workers
        self.seed = seed
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.replies: Counter = Counter()  # (command, code) -> replies
        self.lock = threading.Lock()
        self.churn_ops = 0

    def _fail(self, text: str) -> None:
        with self.lock:
            if len(self.errors) < 50:
                self.errors.append(text)

    def _check(self, what: str, reply, allowed=ALLOWED) -> bool:
        """Record the reply; True when it is a success."""
        code = reply.code if reply.command == 8 else -1
        with self.lock:
            self.replies[(what, code)] += 1
        if code == 0:
            return True
        if code not in allowed:
            self._fail(f"{what}: code {code} ({reply!r})")
        return False

    # ------------------------------------------------------------------ workers

    def work(self, i: int) -> None:
        rng = random.Random(self.seed * 1000 + i)
        c = Client(self.address)
        try:
            while not self.stop.is_set():
                stream, topic = _target(rng)
                partition = rng.randrange(0, 4)
                op = rng.random()
                if op < 0.35:
                    payloads = [b"%d:%d" % (i, k) + b"x" * rng.randrange(0, 200) for k in range(rng.randint(1, 20))]
                    reply, _base = c.send(stream, topic, partition, payloads)
                    self._check("send", reply)
                elif op < 0.75:
                    kind = 2 if rng.random() < 0.2 else 1
                    consumer = GROUP if kind == 2 else 100 + i
                    if kind == 2:
                        self._check(
                            "join",
                            c.call(OP[codes.JOIN_CONSUMER_GROUP], 0, ident(stream) + ident(topic) + ident(GROUP)),
                        )
                    strategy = rng.choice((1, 3, 5))
                    body = poll_body(
                        stream,
                        topic,
                        partition,
                        strategy=strategy,
                        value=rng.randrange(0, 50),
                        count=rng.randint(1, 100),
                        auto_commit=strategy == 5,
                        consumer=consumer,
                        kind=kind,
                    )
                    reply = c.read(codes.POLL_MESSAGES, body)
                    if self._check("poll", reply) and len(reply.body) > 16:
                        verify_batches(reply.body[16:])
                elif op < 0.9:
                    body = store_offset_body(stream, topic, partition, rng.randrange(0, 20), consumer=100 + i)
                    self._check("store_offset", c.call(OP[codes.STORE_CONSUMER_OFFSET], 0, body), ALLOWED_STORE)
                else:
                    self._check(
                        "get_offset",
                        c.read(codes.GET_CONSUMER_OFFSET, consumer_target(stream, topic, partition, consumer=100 + i)),
                    )
        except Exception as exc:
            self._fail(f"worker {i}: {exc!r}")
        finally:
            c.close()

    # ------------------------------------------------------------------ the churn thread

    def _must(self, what: str, reply) -> None:
        if reply.command != 8 or reply.code != 0:
            self._fail(f"churn {what}: {reply!r}")

    def _build(self, c: Client, stream: str) -> None:
        self._must("create stream", c.create_stream(stream))
        for topic in TOPICS:
            self._must("create topic", c.create_topic(stream, topic, 2))
            self._must(
                "create group",
                c.call(OP[codes.CREATE_CONSUMER_GROUP], 0, ident(stream) + ident(topic) + wire_name(GROUP)),
            )

    def churn(self) -> None:
        rng = random.Random(self.seed)
        c = Client(self.address)
        partitions = {(s, t): 2 for s in STREAMS for t in TOPICS}
        try:
            while not self.stop.is_set():
                stream, topic = rng.choice(STREAMS), rng.choice(TOPICS)
                op = rng.random()
                if op < 0.25:
                    self._must("delete stream", c.delete_stream(stream))
                    self._build(c, stream)
                    for t in TOPICS:
                        partitions[(stream, t)] = 2
                elif op < 0.5:
                    self._must("delete topic", c.call(OP[codes.DELETE_TOPIC], 0, ident(stream) + ident(topic)))
                    self._must("create topic", c.create_topic(stream, topic, 2))
                    self._must(
                        "create group",
                        c.call(OP[codes.CREATE_CONSUMER_GROUP], 0, ident(stream) + ident(topic) + wire_name(GROUP)),
                    )
                    partitions[(stream, topic)] = 2
                elif op < 0.75 and partitions[(stream, topic)] < 4:
                    self._must(
                        "create partitions",
                        c.call(OP[codes.CREATE_PARTITIONS], 0, ident(stream) + ident(topic) + _U32.pack(1)),
                    )
                    partitions[(stream, topic)] += 1
                elif partitions[(stream, topic)] > 1:
                    self._must(
                        "delete partitions",
                        c.call(OP[codes.DELETE_PARTITIONS], 0, ident(stream) + ident(topic) + _U32.pack(1)),
                    )
                    partitions[(stream, topic)] -= 1
                self.churn_ops += 1
        except Exception as exc:
            self._fail(f"churn: {exc!r}")
        finally:
            c.close()

    def run(self, seconds: float) -> dict:
        c = Client(self.address)
        for stream in STREAMS:
            self._build(c, stream)
        c.close()
        threads = [threading.Thread(target=self.work, args=(i,)) for i in range(self.workers)]
        threads.append(threading.Thread(target=self.churn))
        for t in threads:
            t.start()
        time.sleep(seconds)
        self.stop.set()
        for t in threads:
            t.join(60)
        by_code = Counter()
        for (_what, code), n in self.replies.items():
            by_code[code] += n
        return {
            "workers": self.workers,
            "seconds": seconds,
            "churn_operations": self.churn_ops,
            "replies": sum(by_code.values()),
            "replies_by_code": dict(sorted(by_code.items())),
            "errors": self.errors[:10],
        }


def check_log(text: str) -> list[str]:
    """Lines of the server log that show a failure the churn must never cause."""
    return [
        line
        for line in text.splitlines()
        if "Traceback" in line or (" failed" in line and "command" in line) or "AttributeError" in line
    ]


def main(argv=None) -> None:
    ap = harness_arguments(__doc__)
    ap.add_argument("--workers", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    with Launcher(args.engine, {"IGGY_HTTP_ENABLED": "false"}) as server:
        stats = Churn(server.tcp_address, args.workers, args.seed).run(args.seconds)
        stats["alive"] = server.alive()
        bad = check_log(server.log())
    stats["engine"] = args.engine or os.environ.get("IGGY_TEST_ENGINE", "auto")
    stats["log_failures"] = len(bad)
    stats["first_log_failures"] = bad[:5]
    print(json.dumps(stats, indent=2))
    if stats["errors"] or bad or not stats["alive"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
