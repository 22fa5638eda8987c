"""Property tests of the wire codec (iggy.protocol.wire) beyond the examples in test_wire.py.

* Writer -> Reader round trips of random field sequences, every field kind;
* Reader driven by a random sequence of reads over arbitrary bytes: values or IggyError only,
  and the position never passes the end;
* FrameReader: valid frames in random chunks through both input paths (feed, and the
  BufferedProtocol get_buffer/buffer_updated path) come out exactly; arbitrary bytes in random
  chunks give frames whose sizes add up to what was consumed, or FrameError, nothing else.
"""

import os
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iggy.protocol.errors import IggyError
from iggy.protocol.wire import FrameError, FrameReader, Reader, Writer, build_request, parse_reply_header

# IGGY_FUZZ_EXAMPLES raises the example count for a long run (docs/RELIABILITY.md)
EXAMPLES = int(os.environ.get("IGGY_FUZZ_EXAMPLES", "300"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

names = st.text(min_size=1, max_size=60).filter(lambda s: 0 < len(s.encode()) <= 255)
fields = st.one_of(
    st.tuples(st.just("u8"), st.integers(0, 255)),
    st.tuples(st.just("u16"), st.integers(0, 2**16 - 1)),
    st.tuples(st.just("u32"), st.integers(0, 2**32 - 1)),
    st.tuples(st.just("u64"), st.integers(0, 2**64 - 1)),
    st.tuples(st.just("u128"), st.integers(0, 2**128 - 1)),
    st.tuples(st.just("bool"), st.booleans()),
    st.tuples(st.just("name"), names),
    st.tuples(st.just("bytes8"), st.binary(max_size=255)),
    st.tuples(st.just("str32"), st.text(max_size=300)),
    st.tuples(st.just("ident_num"), st.integers(0, 2**32 - 1)),
    st.tuples(st.just("ident_str"), names.filter(lambda s: not (s.isdigit() and s.isascii()))),
)


def write(w: Writer, kind: str, value) -> None:
    if kind == "ident_num":
        w.u8(1).u8(4).u32(value)
    elif kind == "ident_str":
        raw = value.encode()
        w.u8(2).u8(len(raw)).raw(raw)
    else:
        getattr(w, kind)(value)


def read(r: Reader, kind: str):
    if kind in ("ident_num", "ident_str"):
        return r.identifier()
    if kind == "str32":
        return r.bytes32().decode()
    return getattr(r, kind)()


@SETTINGS
@given(st.lists(fields, max_size=30))
def test_writer_reader_round_trip(items):
    w = Writer()
    for kind, value in items:
        write(w, kind, value)
    data = w.getvalue()
    assert len(w) == len(data)
    r = Reader(data)
    for kind, value in items:
        assert read(r, kind) == value
    assert r.remaining() == 0
    r.end_of_block()


READS = (
    "u8",
    "u16",
    "u32",
    "u64",
    "u128",
    "bool",
    "name",
    "string8",
    "bytes8",
    "bytes32",
    "identifier",
    "rest",
    "tlv",
    "end_of_block",
)


@SETTINGS
@given(st.binary(max_size=600), st.lists(st.sampled_from(READS), max_size=25), st.integers(0, 700))
def test_reader_on_arbitrary_bytes_gives_values_or_iggy_errors(data, ops, start):
    try:
        r = Reader(data, start)
    except IggyError:
        assert start > len(data)
        return
    for op in ops:
        before = r.position
        try:
            getattr(r, op)()
        except IggyError:
            pass
        assert before <= r.position <= len(data)
        assert r.remaining() == len(data) - r.position


@SETTINGS
@given(st.binary(max_size=2000), st.integers(1, 4096))
def test_tlv_is_bounded(data, max_bytes):
    try:
        entries = Reader(data).tlv(max_entries=16, max_bytes=max_bytes)
    except IggyError:
        return
    assert len(entries) <= 16 and len(data) <= max_bytes
    assert sum(5 + len(v) for _, v in entries) == len(data)


request = st.tuples(
    st.sampled_from([1, 2, 3, 128, 160, 161]),
    st.integers(0, 2**32 - 1),
    st.binary(max_size=3000),
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**64 - 1),
)


def chunked(data: bytes, cuts: list[int]):
    points = sorted({c % (len(data) + 1) for c in cuts})
    pos = 0
    for p in [*points, len(data)]:
        if p > pos:
            yield data[pos:p]
            pos = p


@SETTINGS
@given(st.lists(request, max_size=8), st.lists(st.integers(0, 10**6), max_size=20), st.booleans())
def test_frames_in_any_chunking_come_out_exactly(reqs, cuts, buffered):
    frames = [build_request(op, code, body, session=s, request=q, client=7) for op, code, body, s, q in reqs]
    stream = b"".join(frames)
    fr = FrameReader(1 << 20)
    got = []
    for chunk in chunked(stream, cuts):
        if buffered:
            mv = fr.get_buffer(len(chunk))
            assert len(mv) >= 1
            n = min(len(mv), len(chunk))
            mv[:n] = chunk[:n]
            fr.buffer_updated(n)
            rest = chunk[n:]
            if rest:
                fr.feed(rest)
        else:
            fr.feed(chunk)
        while (frame := fr.next_frame()) is not None:
            got.append(frame)
    assert fr.buffered == 0
    assert [h.raw + b for h, b in got] == frames
    for (h, body), (op, code, b, s, q) in zip(got, reqs, strict=True):
        assert (h.operation, h.session, h.request, h.size, body) == (op, s, q, 256 + len(b), b)
        assert h.code == (code if op == 2 else 0)


@SETTINGS
@given(st.binary(max_size=5000), st.lists(st.integers(0, 10**6), max_size=20), st.integers(256, 4096))
def test_arbitrary_bytes_frame_or_fail_cleanly(data, cuts, limit):
    fr = FrameReader(limit)
    consumed = 0
    try:
        for chunk in chunked(data, cuts):
            fr.feed(chunk)
            while (frame := fr.next_frame()) is not None:
                header, body = frame
                assert header.command == 5 and 256 <= header.size <= limit
                assert len(body) == header.size - 256
                consumed += header.size
    except FrameError:
        return
    assert consumed + fr.buffered == len(data)


@SETTINGS
@given(st.binary(min_size=256, max_size=400))
def test_parse_reply_header_on_arbitrary_bytes(data):
    size, command, operation, status, reason = parse_reply_header(data)
    assert (size, status) == struct.unpack_from("<I", data, 48) + struct.unpack_from("<I", data, 216)
    assert (command, operation, reason) == (data[60], data[208], data[255])
