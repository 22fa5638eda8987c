"""The replica link (iggy.cluster.replica_frames, iggy.cluster.replica_link), without etcd or a server.

- the decoder: frames whole, split at every byte, several per read; truncated, lying lengths,
  unknown kinds, bodies whose fields do not add up: LinkError, and never more than one frame held;
- the handshake over loopback sockets: a follower with the shared secret joins and frames flow
  both ways; a bad MAC, another cluster, a replica outside the roster: refused and closed;
- epochs: a frame from an epoch below the highest seen is refused; a leader that sees a higher
  (authenticated) epoch is told to step down; a follower that does not read is dropped, not
  buffered for.
"""

from __future__ import annotations

import asyncio
import os
import struct

import pytest

from iggy.cluster import replica_frames as rf
from iggy.cluster import replica_link
from iggy.cluster.replica_frames import Epochs, FrameDecoder, LinkError
from iggy.cluster.replica_link import Connection, FollowerLink, LeaderAddress, LeaderEndpoint, LinkIdentity, Peer
from iggy.protocol.batch import build_batch

SECRET = b"s" * 32


def a_batch(base_offset: int = 0, count: int = 3, size: int = 0) -> bytes:
    """`count` messages, each `size` bytes long or a short payload."""
    payloads = [bytes([i % 251]) * size if size else b"payload-%d" % i for i in range(count)]
    batch = bytearray(build_batch([(i + 1, payload, b"") for i, payload in enumerate(payloads)]))
    struct.pack_into("<Q", batch, 8, base_offset)
    return bytes(batch)


def received(conn: Connection, data: bytes, step: int) -> None:
    """`data` arriving on `conn` in reads of at most `step` bytes, as the event loop hands them in."""
    view = memoryview(data)
    while view:
        target = conn.get_buffer(-1)
        n = min(len(target), len(view), step)
        target[:n] = view[:n]
        conn.buffer_updated(n)
        view = view[n:]


# ------------------------------------------------------------------------ frames


def test_frames_whole_split_and_together():
    frames = [
        rf.frame_bytes(rf.COMMIT, 7, rf.COMMIT_BODY.pack(1, 2, 3, 10)),
        rf.frame_bytes(rf.BATCH, 7, rf.BATCH_HEAD.pack(1, 2, 3, 10), a_batch(10)),
        rf.frame_bytes(rf.ACK, 8, rf.ACK_BODY.pack(1, 2, 3, 13, 10, 0)),
    ]
    stream = b"".join(frames)
    whole = FrameDecoder()
    whole.authenticated()
    got = whole.feed(stream)
    assert [(f.kind, f.epoch) for f in got] == [(rf.COMMIT, 7), (rf.BATCH, 7), (rf.ACK, 8)]
    assert whole.pending == 0
    split = FrameDecoder()
    split.authenticated()
    one_by_one = [f for i in range(len(stream)) for f in split.feed(stream[i : i + 1])]
    assert one_by_one == got
    key, commit, [batch] = rf.read_batch(got[1].body)
    assert (key, commit, rf.batch_base_offset(batch), rf.batch_count(batch)) == ((1, 2, 3), 10, 10, 3)
    key, commit, batches = rf.read_batch(rf.BATCH_HEAD.pack(1, 2, 3, 0) + a_batch(0, 2) + a_batch(2, 1))
    assert [(rf.batch_base_offset(b), rf.batch_count(b)) for b in batches] == [(0, 2), (2, 1)]
    assert rf.read_ack(got[2].body) == ((1, 2, 3), 13, 10, 0)


def test_truncated_frame_is_held_not_served():
    frame = rf.frame_bytes(rf.COMMIT, 1, rf.COMMIT_BODY.pack(1, 1, 1, 5))
    decoder = FrameDecoder()
    assert decoder.feed(frame[:-1]) == []
    assert decoder.pending == len(frame) - 1
    assert len(decoder.feed(frame[-1:])) == 1


@pytest.mark.parametrize("size", [10, 1000, 20_000])  # the batch frame is small, or received into its own buffer
def test_large_bodies_are_received_whole_however_the_reads_cut_them(size):
    batches = [a_batch(0, 5, size), a_batch(5, 1, size), a_batch(6, 2)]
    frames = [rf.frame_bytes(rf.BATCH, 3, rf.BATCH_HEAD.pack(1, 2, 3, 0), b) for b in batches]
    stream = b"".join(frames)
    for step in (1, 13, 4096, 65_557, len(stream)):
        decoder = FrameDecoder()
        decoder.authenticated()
        got = decoder.feed(stream[:7])
        for i in range(7, len(stream), step):
            got += decoder.feed(stream[i : i + step])
            assert decoder.pending <= max(map(len, frames)) + step  # one frame and one read
        assert decoder.pending == 0
        assert [bytes(rf.read_batch(f.body)[2][0]) for f in got] == batches


async def test_connection_closed_inside_a_frame_is_an_error():
    conn = Connection()
    received(conn, rf.frame_bytes(rf.COMMIT, 1, rf.COMMIT_BODY.pack(1, 1, 1, 5))[:10], 100)
    conn.eof_received()
    with pytest.raises(LinkError, match="inside a frame"):
        await conn.frames()


async def test_frames_that_come_with_the_last_handshake_frame_are_kept():
    """A big batch right behind WELCOME, in the same read: read under the post-handshake limit."""
    batch = a_batch(0, 20, 5000)
    conn = Connection()
    data = rf.frame_bytes(rf.WELCOME, 1, rf.WELCOME_BODY.pack(0, bytes(32)))
    data += rf.frame_bytes(rf.BATCH, 1, rf.BATCH_HEAD.pack(1, 1, 1, 0), batch)
    received(conn, data[: rf.SCRATCH], rf.SCRATCH)
    assert (await conn.one(rf.WELCOME)).kind == rf.WELCOME
    conn.decoder.authenticated()
    received(conn, data[rf.SCRATCH :], 1 << 20)
    frames = await conn.frames()
    assert [f.kind for f in frames] == [rf.BATCH]
    assert bytes(rf.read_batch(frames[0].body)[2][0]) == batch


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (struct.pack("<IBQ", 8, rf.ACK, 1), "length 8"),  # shorter than kind + epoch
        (struct.pack("<IBQ", 9 + rf.HANDSHAKE_MAX_BODY + 1, rf.HELLO, 1), "outside"),  # too big before the handshake
        (struct.pack("<IBQ", 9, 99, 1), "unknown frame kind 99"),
    ],
)
def test_lying_prefixes_are_refused_at_once(raw, reason):
    decoder = FrameDecoder()
    with pytest.raises(LinkError, match=reason):
        decoder.feed(raw)


def test_after_the_handshake_the_limit_is_one_batch():
    decoder = FrameDecoder()
    decoder.authenticated()
    assert decoder.feed(struct.pack("<IBQ", 9 + rf.MAX_BODY, rf.BATCH, 1)) == []  # waits for the body
    decoder = FrameDecoder()
    decoder.authenticated()
    with pytest.raises(LinkError, match="outside"):
        decoder.feed(struct.pack("<IBQ", 10 + rf.MAX_BODY, rf.BATCH, 1))


def test_lying_bodies_are_refused():
    batch = a_batch()
    with pytest.raises(LinkError, match="after the batches"):
        rf.read_batch(rf.BATCH_HEAD.pack(1, 1, 1, 0) + batch + b"x")
    with pytest.raises(LinkError, match="declares"):
        rf.read_batch(rf.BATCH_HEAD.pack(1, 1, 1, 0) + batch[:-1])
    with pytest.raises(LinkError, match="batch frame"):
        rf.read_batch(rf.BATCH_HEAD.pack(1, 1, 1, 0) + batch[:100])
    with pytest.raises(LinkError, match="ack"):
        rf.read_ack(rf.ACK_BODY.pack(1, 1, 1, 5, 5, 0) + b"x")
    with pytest.raises(LinkError, match="synced end"):
        rf.read_ack(rf.ACK_BODY.pack(1, 1, 1, 5, 6, 0))
    hello = rf.hello_body(1, bytes(16), "c", rf.NO_MAC)
    with pytest.raises(LinkError, match="hello"):
        rf.read_hello(hello[:-1])
    with pytest.raises(LinkError, match="hello"):
        rf.read_hello(hello[:20] + bytes([200]) + hello[21:])  # name length beyond the body
    with pytest.raises(LinkError, match="challenge"):
        rf.read_challenge(bytes(15))
    assert rf.read_epochs_end(rf.epochs_end_body(True)) and not rf.read_epochs_end(rf.epochs_end_body(False))
    for body in (b"", b"\x01\x00", b"\x02"):  # empty, too long, an unknown flag
        with pytest.raises(LinkError, match="epochs-end"):
            rf.read_epochs_end(body)
    with pytest.raises(LinkError, match="in-sync"):
        rf.read_in_sync(b"\x00")


def test_epochs_refuse_older_and_report_newer():
    newer = []
    epochs = Epochs(on_newer=newer.append)
    epochs.saw(5)
    epochs.check(5)
    with pytest.raises(LinkError, match="below the highest"):
        epochs.check(4)
    epochs.check(9)
    assert (epochs.highest, newer) == (9, [9])


# ------------------------------------------------------------------------ over sockets


class FakeLeader:
    def __init__(self, epoch: int | None):
        self.epoch = epoch
        self.peers: list[Peer] = []
        self.acks: list[tuple] = []
        self.gone: list[int] = []
        self.offers: list[tuple] = []
        self.suffixes: list[tuple] = []

    def leader_epoch(self):
        return self.epoch

    def joined(self, peer):
        self.peers.append(peer)

    def acked(self, peer, key, end, synced, status):
        self.acks.append((peer.replica_id, key, end, synced, status))

    def left(self, peer):
        self.gone.append(peer.replica_id)

    def offered(self, peer, key, end, records):
        self.offers.append((peer.replica_id, key, end, records))

    def offers_done(self, peer, catching_up):
        self.offers.append((peer.replica_id, "catching up" if catching_up else "end"))

    def fetched(self, peer, key, batches):
        self.suffixes.append((key, [bytes(b) for b in batches]))


class FakeSink:
    def __init__(self):
        self.got: list[tuple] = []
        self.commits: list[tuple] = []
        self.truncated: list[tuple] = []
        self.stored = b""
        self._touched: dict = {}

    def start(self):
        return [((1, 2, 3), 10, [(4, 0), (5, 6)])]

    def truncate(self, key, offset, epoch):
        self.truncated.append((key, offset, epoch))

    def fetch(self, key, start, end, max_bytes):
        return self.stored

    def batches(self, key, commit, batches, epoch):
        for batch in batches:
            self.got.append((key, commit, bytes(batch)))
            self._touched[key] = rf.batch_base_offset(batch) + rf.batch_count(batch)

    def commit(self, key, commit):
        self.commits.append((key, commit))

    def acks(self):
        acks = [(key, end, 0, 0) for key, end in self._touched.items()]
        self._touched = {}
        return acks


async def until(check, timeout=5.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


class Pair:
    """A leader endpoint (replica 0) and a follower link (replica 1) on loopback."""

    def __init__(self, leader_epoch=5, follower_epoch=5, leader_secret=SECRET, follower_secret=SECRET, cluster="c"):
        self.stepped_down: list[int] = []
        self.leader_epochs = Epochs(on_newer=self.stepped_down.append)
        self.leader_epochs.saw(leader_epoch or 0)
        self.follower_epochs = Epochs()
        self.follower_epochs.saw(follower_epoch)
        self.side = FakeLeader(leader_epoch)
        self.endpoint = LeaderEndpoint(LinkIdentity("c", 0, leader_secret, self.leader_epochs), {0, 1, 2}, self.side)
        self.sink = FakeSink()
        self.link = FollowerLink(LinkIdentity(cluster, 1, follower_secret, self.follower_epochs), self.sink)

    async def __aenter__(self):
        await self.endpoint.start("127.0.0.1", 0)
        self.link.follow(LeaderAddress(0, "127.0.0.1", self.endpoint.port))
        return self

    async def __aexit__(self, *exc):
        await self.link.stop()
        await self.endpoint.stop()


async def test_a_follower_with_the_secret_joins_and_frames_flow_both_ways():
    async with Pair() as pair:
        await until(lambda: pair.side.peers)
        peer = pair.side.peers[0]
        assert peer.replica_id == 1 and pair.link.connected
        batch = a_batch(0, 3)
        assert peer.send(rf.BATCH, rf.BATCH_HEAD.pack(1, 2, 1, 0), batch)
        assert peer.send(rf.COMMIT, rf.COMMIT_BODY.pack(1, 2, 1, 3))
        await until(lambda: pair.side.acks and pair.sink.commits)
        assert pair.sink.got == [((1, 2, 1), 0, batch)]
        assert pair.sink.commits == [((1, 2, 1), 3)]
        assert pair.side.acks == [(1, (1, 2, 1), 3, 0, 0)]
        assert pair.endpoint.refused == 0


async def test_epochs_truncate_and_fetch_travel_on_the_link():
    async with Pair() as pair:
        await until(lambda: len(pair.side.offers) == 2)
        # right after WELCOME: the follower's copies, then the end marker
        assert pair.side.offers == [(1, (1, 2, 3), 10, [(4, 0), (5, 6)]), (1, "end")]
        peer = pair.side.peers[0]
        assert peer.send(rf.TRUNCATE, rf.TRUNCATE_BODY.pack(1, 2, 3, 6))
        await until(lambda: pair.sink.truncated)
        assert pair.sink.truncated == [((1, 2, 3), 6, 5)]  # with the link's epoch
        stored = [a_batch(6, 2), a_batch(8, 1)]
        pair.sink.stored = b"".join(stored)
        assert peer.send(rf.FETCH, rf.FETCH_BODY.pack(1, 2, 3, 6, 9))
        await until(lambda: pair.side.suffixes)
        assert pair.side.suffixes == [((1, 2, 3), stored)]
        pair.sink.stored = b""
        assert peer.send(rf.FETCH, rf.FETCH_BODY.pack(1, 2, 3, 9, 12))
        await until(lambda: len(pair.side.suffixes) == 2)
        assert pair.side.suffixes[1] == ((1, 2, 3), [])  # it could not serve them
        assert pair.endpoint.refused == 0


async def test_a_catching_up_follower_says_so_and_in_sync_ends_it():
    async with Pair() as pair:
        pair.link.catching_up = True
        calls: list[int] = []
        pair.link.on_in_sync = lambda: calls.append(1) is None
        await until(lambda: len(pair.side.offers) == 2)
        assert pair.side.offers[-1] == (1, "catching up")
        assert pair.side.peers[0].send(rf.IN_SYNC)
        await until(lambda: calls)
        assert not pair.link.catching_up
        pair.link.follow(None)  # a new link now says it counts
        await until(lambda: not pair.link.connected)
        pair.link.follow(LeaderAddress(0, "127.0.0.1", pair.endpoint.port))
        await until(lambda: len(pair.side.offers) == 4)
        assert pair.side.offers[-1] == (1, "end")


async def test_without_auth_both_sides_use_no_mac():
    async with Pair(leader_secret=None, follower_secret=None) as pair:
        await until(lambda: pair.side.peers)


@pytest.mark.parametrize(
    "variant",
    [
        {"follower_secret": b"t" * 32},  # bad MAC
        {"follower_secret": None},  # no MAC where one is needed
        {"cluster": "other"},  # wrong cluster
    ],
)
async def test_a_follower_that_does_not_check_out_is_refused(variant):
    async with Pair(**variant) as pair:
        await until(lambda: pair.endpoint.refused >= 2)  # it keeps redialling and is refused each time
        assert pair.side.peers == [] and not pair.link.connected


async def test_a_leader_without_the_secret_is_not_followed():
    """A fake leader that answers any hello with a welcome it cannot sign, then a batch."""
    welcomed = asyncio.Event()

    async def fake_leader(conn):
        conn.writelines([rf.frame_bytes(rf.CHALLENGE, 5, os.urandom(16))])
        await conn.one(rf.HELLO)
        conn.writelines([rf.frame_bytes(rf.WELCOME, 5, rf.WELCOME_BODY.pack(0, bytes(32)))])
        conn.writelines([rf.frame_bytes(rf.BATCH, 5, rf.BATCH_HEAD.pack(1, 1, 1, 0), a_batch())])
        welcomed.set()
        await closed(conn)
        conn.close()

    tasks = set()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: Connection(lambda c: tasks.add(loop.create_task(fake_leader(c)))), "127.0.0.1", 0
    )
    sink = FakeSink()
    link = FollowerLink(LinkIdentity("c", 1, SECRET, Epochs()), sink)
    link.follow(LeaderAddress(0, "127.0.0.1", server.sockets[0].getsockname()[1]))
    await asyncio.wait_for(welcomed.wait(), 5)
    await asyncio.sleep(0.3)
    await link.stop()
    server.close()
    assert sink.got == [] and not link.connected
    assert link.me.epochs.highest == 0  # its epoch was not believed either


async def raw_handshake(port: int, replica_id: int, epoch: int | None = None, secret=SECRET):
    """Dial the leader as a follower by hand: (the connection, the leader's epoch)."""
    _, conn = await asyncio.get_running_loop().create_connection(Connection, "127.0.0.1", port)
    challenge = await conn.one(rf.CHALLENGE)
    epoch = challenge.epoch if epoch is None else epoch
    nonce = os.urandom(16)
    mac = rf.hello_mac(secret, "c", epoch, replica_id, challenge.body, nonce)
    conn.writelines([rf.frame_bytes(rf.HELLO, epoch, rf.hello_body(replica_id, nonce, "c", mac))])
    return conn, challenge.epoch


async def closed(conn: Connection) -> bool:
    """Read (and drop) what comes until the other end closes."""
    conn.decoder.authenticated()
    try:
        while await asyncio.wait_for(conn.frames(), 5):
            pass
    except ConnectionError:
        pass
    return True


@pytest.mark.parametrize(
    ("replica_id", "epoch", "secret", "stepped_down", "highest"),
    [
        (7, None, SECRET, [], 5),  # a replica outside the roster
        (2, 4, SECRET, [], 5),  # a hello of an older epoch
        (2, 9, SECRET, [9], 9),  # a higher epoch, authenticated: the leader steps down
        (2, 9, b"t" * 32, [], 5),  # a higher epoch without the secret changes nothing
    ],
)
async def test_a_hello_that_does_not_check_out_closes_the_link(replica_id, epoch, secret, stepped_down, highest):
    async with Pair(leader_epoch=5) as pair:
        await pair.link.stop()
        conn, _ = await raw_handshake(pair.endpoint.port, replica_id, epoch=epoch, secret=secret)
        assert await closed(conn)
        conn.close()
        assert pair.endpoint.refused == 1 and pair.side.peers == []
        assert (pair.stepped_down, pair.leader_epochs.highest) == (stepped_down, highest)


async def test_a_follower_that_knows_a_newer_epoch_refuses_the_leader():
    async with Pair(leader_epoch=5, follower_epoch=6) as pair:
        await asyncio.sleep(0.5)
        assert pair.side.peers == [] and not pair.link.connected
        assert pair.follower_epochs.highest == 6


async def test_an_ack_of_an_older_epoch_after_the_handshake_closes_the_link():
    async with Pair(leader_epoch=5) as pair:
        await pair.link.stop()
        conn, epoch = await raw_handshake(pair.endpoint.port, 2)
        await conn.one(rf.WELCOME)
        await until(lambda: pair.side.peers)
        conn.writelines([rf.frame_bytes(rf.ACK, epoch - 1, rf.ACK_BODY.pack(1, 1, 1, 0, 0, 0))])
        assert await closed(conn)
        conn.close()
        assert pair.side.acks == [] and pair.side.gone == [2]


async def test_a_follower_that_does_not_read_is_dropped(monkeypatch):
    monkeypatch.setattr(replica_link, "MAX_QUEUED", 1 << 20)
    async with Pair() as pair:
        await pair.link.stop()
        conn, _ = await raw_handshake(pair.endpoint.port, 2)
        await conn.one(rf.WELCOME)  # then it never takes a frame: reading pauses, the kernel buffers fill
        await until(lambda: pair.side.peers)
        peer = pair.side.peers[0]
        chunk = bytes(1 << 20)
        sent = 0
        while peer.send(rf.COMMIT, chunk):  # never read: kernel buffers fill, then the queue
            sent += 1
            await asyncio.sleep(0)
            assert sent < 1000, "a follower that never reads was never dropped"
        assert peer.closed
        conn.close()


async def test_a_node_that_is_not_leader_closes_at_once():
    async with Pair(leader_epoch=None) as pair:
        await pair.link.stop()
        reader, writer = await asyncio.open_connection("127.0.0.1", pair.endpoint.port)
        assert await reader.read(100) == b""
        writer.close()
