"""The real pre-0.9 SDK (`apache-iggy==0.8.*` from PyPI) against this server, mixed with 0.9.0.

Both SDKs are imported as `apache_iggy`, so the 0.8 one lives in its own virtualenv,
`.venv-classic` (made by `scripts/setup.sh --test`), and runs in a subprocess: each scenario
below is a small script that prints one JSON line of what it saw. The test process talks
0.9.0 through the official SDK of the main environment, so every test checks that what one
protocol writes the other reads: messages, offsets, consumer groups, users.
"""

from __future__ import annotations

import json
import struct
import subprocess
import textwrap

import pytest
from apache_iggy import PollingStrategy, SendMessage

from iggy.protocol import codes
from tests.conftest import REPO, sdk_poll, uniq

CLASSIC_PYTHON = REPO / ".venv-classic" / "bin" / "python"

pytestmark = pytest.mark.skipif(
    not CLASSIC_PYTHON.exists(),
    reason="the 0.8 SDK's virtualenv .venv-classic is missing (scripts/setup.sh --test creates it)",
)

PRELUDE = """
import asyncio, datetime, json, sys
from apache_iggy import (AutoCommit, AutoCommitWhen, IggyClient, PollingStrategy, SendMessage)
ARGS = json.loads(sys.argv[1])
async def connect(user="iggy", password="iggy"):
    c = IggyClient(ARGS["address"])
    await c.connect()
    await c.login_user(user, password)
    return c
def msgs(polled):
    return [[m.partition_id(), m.offset(), m.payload().decode(), m.id(), m.timestamp()] for m in polled]
"""


def run_classic(script: str, **args) -> dict:
    """Run a scenario with the 0.8 SDK; its last stdout line is the JSON result."""
    # os._exit: the 0.8 SDK's Rust runtime sometimes aborts (SIGABRT) while the interpreter
    # tears it down after the result is out; the result is what the test is about
    code = (
        PRELUDE
        + textwrap.dedent(script)
        + "\nprint(json.dumps(asyncio.run(main())), flush=True)\nimport os\nos._exit(0)\n"
    )
    proc = subprocess.run(
        [str(CLASSIC_PYTHON), "-c", code, json.dumps(args)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def group_offset_request(group_id: int, stream: str, topic: str, partition: int) -> bytes:
    """The consumer-offset request body (0.9 codes 120/121) of a group on one partition."""
    return (
        bytes([2, 1, 4])
        + struct.pack("<I", group_id)
        + bytes([2, len(stream)])
        + stream.encode()
        + bytes([2, len(topic)])
        + topic.encode()
        + b"\x01"
        + struct.pack("<I", partition)
    )


def test_the_virtualenv_holds_the_08_sdk():
    out = subprocess.run(
        [str(CLASSIC_PYTHON), "-c", "import importlib.metadata as m; print(m.version('apache-iggy'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert out.startswith("0.8."), out


async def test_send_and_poll(srv, root):
    s, t = uniq("s08"), uniq("t08")
    seen = run_classic(
        """
        async def main():
            c = await connect()
            await c.ping()
            await c.create_stream(ARGS["s"])
            await c.create_topic(ARGS["s"], ARGS["t"], 2)
            await c.send_messages(ARGS["s"], ARGS["t"], 0, [SendMessage(f"a{i}") for i in range(5)])
            await c.send_messages(ARGS["s"], ARGS["t"], 1, [SendMessage(b"b0"), SendMessage("b1")])
            stream = await c.get_stream(ARGS["s"])
            topic = await c.get_topic(ARGS["s"], ARGS["t"])
            return {
                "stream": [stream.name, stream.topics_count, stream.messages_count],
                "topic": [topic.name, topic.partitions_count, topic.messages_count],
                "first": msgs(await c.poll_messages(ARGS["s"], ARGS["t"], 0, PollingStrategy.First(), 10, False)),
                "offset": msgs(await c.poll_messages(ARGS["s"], ARGS["t"], 0, PollingStrategy.Offset(2), 2, False)),
                "last": msgs(await c.poll_messages(ARGS["s"], ARGS["t"], 1, PollingStrategy.Last(), 1, False)),
                "missing": str(await c.get_stream("no-such-" + ARGS["s"])),
            }
    """,
        address=srv.tcp_address,
        s=s,
        t=t,
    )
    assert seen["stream"] == [s, 1, 7]
    assert seen["topic"] == [t, 2, 7]
    assert [(m[0], m[1], m[2]) for m in seen["first"]] == [(0, i, f"a{i}") for i in range(5)]
    assert [m[1] for m in seen["offset"]] == [2, 3]
    assert [(m[0], m[1], m[2]) for m in seen["last"]] == [(1, 1, "b1")]
    assert seen["missing"] == "None"
    # what the 0.8 SDK sent, the 0.9 SDK reads: same offsets, ids and timestamps
    got = await sdk_poll(root, s, t, PollingStrategy.First())
    assert [(m.offset(), m.payload(), m.id(), m.timestamp()) for m in got] == [
        (m[1], m[2].encode(), m[3], m[4]) for m in seen["first"]
    ]
    # and back: the 0.9 SDK appends, the 0.8 SDK reads everything in order
    await root.send_messages(s, t, 0, [SendMessage("c0", id=77), SendMessage("c1")])
    after = run_classic(
        """
        async def main():
            c = await connect()
            return msgs(await c.poll_messages(ARGS["s"], ARGS["t"], 0, PollingStrategy.First(), 100, False))
    """,
        address=srv.tcp_address,
        s=s,
        t=t,
    )
    assert [(m[1], m[2]) for m in after] == [(i, f"a{i}") for i in range(5)] + [(5, "c0"), (6, "c1")]
    assert after[5][3] == 77


async def test_consumer_group_members_split_the_partitions(srv, root):
    s, t, g = uniq("s08"), uniq("t08"), uniq("g08")
    await root.create_stream(s)
    await root.create_topic(s, t, 3)
    for p in range(3):
        await root.send_messages(s, t, p, [SendMessage(f"p{p}-{i}") for i in range(4)])
    seen = run_classic(
        """
        async def main():
            clients = [await connect(), await connect()]
            consumers = []
            for c in clients:
                consumers.append(await c.consumer_group(
                    ARGS["g"], ARGS["s"], ARGS["t"], polling_strategy=PollingStrategy.Next(), batch_length=10,
                    auto_commit=AutoCommit.When(AutoCommitWhen.PollingMessages()),
                    poll_interval=datetime.timedelta(milliseconds=5)))
            got = [[], []]
            done = asyncio.Event()
            async def consume(i):
                async for m in consumers[i].iter_messages():
                    got[i].append([m.partition_id(), m.offset(), m.payload().decode()])
                    if len(got[0]) + len(got[1]) >= 12:
                        done.set()
            tasks = [asyncio.ensure_future(consume(i)) for i in range(2)]
            await asyncio.wait_for(done.wait(), 30)
            await asyncio.sleep(0.3)        # anything delivered twice would show up now
            for task in tasks:
                task.cancel()
            return got
    """,
        address=srv.tcp_address,
        s=s,
        t=t,
        g=g,
    )
    everything = sorted(tuple(m) for member in seen for m in member)
    assert everything == sorted((p, i, f"p{p}-{i}") for p in range(3) for i in range(4))  # each once
    partitions = [{m[0] for m in member} for member in seen]
    assert all(partitions) and not partitions[0] & partitions[1]
    # the group's offsets, committed by the 0.8 SDK's polls, read over 0.9
    group = await root.get_consumer_group(s, t, g)
    for p in range(3):
        assert await root.send_binary_request(120, group_offset_request(group.id, s, t, p)) == struct.pack(
            "<IQQ", p, 3, 3
        )


async def test_group_resumes_after_an_offset_stored_over_09(srv, root):
    s, t, g = uniq("s08"), uniq("t08"), uniq("g08")
    await root.create_stream(s)
    await root.create_topic(s, t, 1)
    await root.send_messages(s, t, 0, [SendMessage(f"m{i}") for i in range(6)])
    await root.create_consumer_group(s, t, g)
    group = await root.get_consumer_group(s, t, g)
    # group offsets are written by the partition's owner (5009 otherwise): join, store, leave
    membership = (
        bytes([2, len(s)]) + s.encode() + bytes([2, len(t)]) + t.encode() + bytes([1, 4]) + struct.pack("<I", group.id)
    )
    await root.send_binary_request(codes.JOIN_CONSUMER_GROUP, membership)
    assert await root.send_binary_request(121, group_offset_request(group.id, s, t, 0) + struct.pack("<Q", 2)) == b""
    await root.send_binary_request(codes.LEAVE_CONSUMER_GROUP, membership)
    seen = run_classic(
        """
        async def main():
            c = await connect()
            consumer = await c.consumer_group(
                ARGS["g"], ARGS["s"], ARGS["t"], polling_strategy=PollingStrategy.Next(), batch_length=10,
                auto_commit=AutoCommit.Disabled(), poll_interval=datetime.timedelta(milliseconds=5))
            got = []
            async def consume():
                async for m in consumer.iter_messages():
                    got.append(m.offset())
                    if len(got) == 3:
                        return
            await asyncio.wait_for(consume(), 30)
            await consumer.store_offset(4, 0)
            return got
    """,
        address=srv.tcp_address,
        s=s,
        t=t,
        g=g,
    )
    assert seen == [3, 4, 5]
    assert await root.send_binary_request(120, group_offset_request(group.id, s, t, 0)) == struct.pack("<IQQ", 0, 5, 4)


async def test_users_created_over_09_log_in_with_08(srv, root):
    name, password = uniq("u08")[:20], "pass-08-word"
    await root.create_user(name, password)  # active, no permissions
    seen = run_classic(
        """
        async def main():
            out = {}
            c = await connect(ARGS["name"], ARGS["password"])
            await c.ping()
            try:
                await c.create_stream("not-allowed-" + ARGS["name"])
                out["create"] = "created"
            except RuntimeError as exc:
                out["create"] = str(exc)
            try:
                await connect(ARGS["name"], "wrong-password")
                out["wrong"] = "logged in"
            except RuntimeError as exc:
                out["wrong"] = str(exc)
            url = f"iggy://{ARGS['name']}:{ARGS['password']}@{ARGS['address']}"
            by_url = IggyClient.from_connection_string(url)
            await by_url.connect()
            out["by_url"] = str(await by_url.get_stream("anything"))
            return out
    """,
        address=srv.tcp_address,
        name=name,
        password=password,
    )
    assert seen == {"create": "Unauthorized", "wrong": "InvalidCredentials", "by_url": "None"}
    assert await root.get_stream("not-allowed-" + name) is None
