"""Unit tests of the Cython wire codec: checksums, headers, framing, body reader and writer."""

import struct

import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from iggy._core.checksum import xxh3_64, xxh32
from iggy.protocol.errors import ErrorCode, IggyError
from iggy.protocol.wire import (
    FrameError,
    FrameReader,
    Reader,
    Writer,
    build_eviction,
    build_reply,
    build_request,
    parse_header,
    parse_reply_header,
    receive_buffer,
)

# A.1 of TCP.md: PING before login, full header
PING_HEADER = bytes.fromhex(
    "00" * 48
    + "00010000"
    + "00000000"
    + "00000000"
    + "05"
    + "00" * 67
    + "c05b229bc1cb4acf8025cf7108ad8b76"
    + "00" * 16
    + "0000000000000000"
    + "0100000000000000"
    + "02"
    + "00" * 7
    + "0000000000000000"
    + "00000000"
    + "01000000"
    + "00" * 56
)
# A.2: the login body of login_user("iggy", "iggy")
LOGIN_BODY = bytes.fromhex("002c000008727573742d73646b06302e31312e300469676779046967677900000000")


def test_xxhash_vectors_match_reference():
    assert xxh3_64(b"") == 0x2D06800538D394C2
    assert xxh32(b"") == 0x02CC5D05
    for n in (1, 17, 100, 240, 241, 1000, 65536):
        data = bytes(range(256)) * (n // 256 + 1)
        assert xxh3_64(data[:n]) == xxhash.xxh3_64_intdigest(data[:n])
        assert xxh32(data[:n]) == xxhash.xxh32_intdigest(data[:n])


def test_login_request_checksum_from_capture():
    # A.2: request_checksum = xxh3(body) = 0x8fde203c2a3f8095
    assert xxh3_64(LOGIN_BODY) == 0x8FDE203C2A3F8095


def test_parse_captured_ping_header():
    assert len(PING_HEADER) == 256
    h = parse_header(PING_HEADER)
    assert (h.size, h.command, h.operation, h.code, h.session, h.request) == (256, 5, 2, 1, 0, 1)
    assert h.client_bytes == bytes.fromhex("c05b229bc1cb4acf8025cf7108ad8b76")


def test_build_request_reproduces_capture():
    client = int.from_bytes(bytes.fromhex("c05b229bc1cb4acf8025cf7108ad8b76"), "little")
    assert build_request(2, 1, b"", session=0, request=1, client=client) == PING_HEADER


def test_reply_echoes_request_fields():
    req = parse_header(build_request(128, 0, b"\x02s1", session=7, request=9, client=42, with_checksum=True))
    reply = build_reply(req, 0, b"\x00\x00\x00\x00", session=7, commit=3)
    size, command, operation, status, _ = parse_reply_header(reply)
    assert (size, command, operation, status) == (260, 8, 128, 0)
    assert reply[160:176] == (42).to_bytes(16, "little")  # client echoed
    assert reply[128:144] == req.raw[144:160]  # request checksum echoed
    assert struct.unpack_from("<Q", reply, 200)[0] == 9  # request number echoed
    assert reply[256:] == b"\x00\x00\x00\x00"


def test_eviction_frame_layout():
    ev = build_eviction((5).to_bytes(16, "little"), 14, 0x2C00, 0x2C00)
    assert len(ev) == 256 and ev[60] == 13 and ev[255] == 14
    assert struct.unpack_from("<II", ev, 144) == (0x2C00, 0x2C00)


def _frames():
    return [
        build_request(2, 1, b"", request=1, client=9),
        build_request(1, 0, LOGIN_BODY, client=9, with_checksum=True),
        build_request(2, 300, b"\x01\x04\x00\x00\x00\x00" * 2, session=3, request=2, client=9),
    ]


def _drain(reader):
    out = []
    while True:
        f = reader.next_frame()
        if f is None:
            return out
        out.append(f)


def test_frame_reader_whole_stream():
    stream = b"".join(_frames())
    r = FrameReader()
    r.feed(stream)
    got = _drain(r)
    assert [h.operation for h, _ in got] == [2, 1, 2]
    assert got[1][1] == LOGIN_BODY
    assert r.buffered == 0


def test_frame_reader_byte_by_byte():
    stream = b"".join(_frames())
    r = FrameReader()
    got = []
    for i in range(len(stream)):
        r.feed(stream[i : i + 1])
        got += _drain(r)
    assert [b for _, b in got] == [b"", LOGIN_BODY, b"\x01\x04\x00\x00\x00\x00" * 2]


def test_frame_reader_split_at_every_offset():
    stream = b"".join(_frames())
    expected = [(h.raw, b) for h, b in (_drain_all(stream))]
    for cut in range(len(stream) + 1):
        r = FrameReader()
        r.feed(stream[:cut])
        got = _drain(r)
        r.feed(stream[cut:])
        got += _drain(r)
        assert [(h.raw, b) for h, b in got] == expected, cut


def _drain_all(stream):
    r = FrameReader()
    r.feed(stream)
    return _drain(r)


def test_frame_reader_waits_for_truncated_frame():
    frame = build_request(1, 0, LOGIN_BODY, client=9)
    r = FrameReader()
    r.feed(frame[:-1])
    assert r.next_frame() is None
    assert r.buffered == len(frame) - 1


@pytest.mark.parametrize("size", [0, 255, 64 * 1024 * 1024 + 1, 0xFFFFFFFF])
def test_frame_reader_rejects_lying_sizes(size):
    frame = bytearray(build_request(2, 1, b"", client=9))
    struct.pack_into("<I", frame, 48, size)
    r = FrameReader()
    r.feed(bytes(frame))
    with pytest.raises(FrameError):
        r.next_frame()


def test_frame_reader_rejects_non_request_header():
    frame = bytearray(build_request(2, 1, b"", client=9))
    frame[60] = 8
    r = FrameReader()
    r.feed(bytes(frame))
    with pytest.raises(FrameError):
        r.next_frame()


def test_frame_reader_custom_limit():
    r = FrameReader(1024)
    r.feed(build_request(2, 1, b"x" * 769, client=1))
    with pytest.raises(FrameError):
        r.next_frame()


@given(st.binary(max_size=2048))
@settings(max_examples=300, deadline=None)
def test_frame_reader_never_crashes_on_garbage(data):
    r = FrameReader(4096)
    r.feed(data)
    try:
        while r.next_frame() is not None:
            pass
    except FrameError:
        pass


def test_reader_fields_and_errors():
    body = (
        b"\x01\x04\x07\x00\x00\x00"
        + b"\x02\x02s1"
        + b"\x02\x03123"
        + b"\x03abc"
        + struct.pack("<QI", 2**64 - 1, 5)
        + b"\x01\x00\x00\x00x"
    )
    r = Reader(body)
    assert r.identifier() == 7
    assert r.identifier() == "s1"
    assert r.identifier() == 123  # a name of digits is a numeric id
    assert r.name() == "abc"
    assert r.u64() == 2**64 - 1
    assert r.u32() == 5
    assert r.bytes32() == b"x"
    r.end_of_block()
    with pytest.raises(IggyError) as e:
        r.u8()
    assert e.value.code == ErrorCode.INVALID_COMMAND


@pytest.mark.parametrize(
    "body,code",
    [
        (b"\x01\x02\x00\x00", ErrorCode.INVALID_IDENTIFIER),  # numeric id must be 4 bytes
        (b"\x03\x01x", ErrorCode.INVALID_IDENTIFIER),  # unknown kind
        (b"\x02\x00", ErrorCode.INVALID_IDENTIFIER),  # empty name
        (b"\x02\x05ab", ErrorCode.INVALID_COMMAND),  # lying length
        (b"\x02\x02\xff\xfe", ErrorCode.INVALID_IDENTIFIER),  # not UTF-8
    ],
)
def test_reader_rejects_bad_identifiers(body, code):
    with pytest.raises(IggyError) as e:
        Reader(body).identifier()
    assert e.value.code == code


def test_reader_leftover_block_bytes_and_empty_name():
    r = Reader(b"\x00")
    with pytest.raises(IggyError):
        r.name()
    r = Reader(b"\x01\x02")
    r.u8()
    with pytest.raises(IggyError) as e:
        r.end_of_block()  # only for length-prefixed blocks; bodies ignore the rest
    assert e.value.code == ErrorCode.INVALID_COMMAND


def test_reader_tlv_options():
    block = b"\x02\x01\x00\x00\x00k" + b"\x0c\x08\x00\x00\x00" + (5).to_bytes(8, "little")
    assert Reader(block).tlv() == [(2, b"k"), (12, (5).to_bytes(8, "little"))]
    with pytest.raises(IggyError):
        Reader(b"\x02\x09\x00\x00\x00k").tlv()  # value runs past the end


def test_writer_round_trips_through_reader():
    w = Writer().u8(1).u16(2).u32(3).u64(4).u128(2**100).name("héllo").str32("long").bool(True).f32(1.5)
    w.options([(2, b"key"), (2, b"value")])
    r = Reader(w.getvalue())
    assert (r.u8(), r.u16(), r.u32(), r.u64(), r.u128()) == (1, 2, 3, 4, 2**100)
    assert r.name() == "héllo"
    assert r.bytes32() == b"long"
    assert r.bool() is True
    assert struct.unpack("<f", r.take(4))[0] == 1.5
    assert r.u32() == 5 + 3 + 5 + 5
    assert r.tlv() == [(2, b"key"), (2, b"value")]
    with pytest.raises(ValueError):
        Writer().name("")
    with pytest.raises(ValueError):
        Writer().name("x" * 256)


def test_frame_reader_refuses_a_big_frame_before_login_at_its_header():
    r = FrameReader(4 << 20, 4096)
    assert r.frame_limit == 4096 and not r.authenticated
    small = build_request(1, 0, LOGIN_BODY, client=9)
    r.feed(small)
    assert r.next_frame()[1] == LOGIN_BODY
    # only the header of a 2 MiB frame is in: refused already, and no room is made for it
    frame = build_request(2, 1, b"\0" * ((2 << 20) - 256), client=9)
    r.feed(frame[:256])
    assert len(r.get_buffer()) < 1 << 20
    with pytest.raises(FrameError, match=r"frame size 2097152 over limits.max_unauthenticated_frame \(4096\)"):
        r.next_frame()
    # logged in: the frame limit is the maximum frame again
    r2 = FrameReader(4 << 20, 4096)
    r2.authenticated = True
    assert r2.frame_limit == 4 << 20
    r2.feed(frame)
    assert len(r2.next_frame()[1]) == (2 << 20) - 256


def test_frame_reader_without_an_unauthenticated_limit_takes_any_frame():
    r = FrameReader(1 << 20)
    assert r.frame_limit == 1 << 20
    r.feed(build_request(2, 1, b"\0" * 100_000, client=9))
    assert len(r.next_frame()[1]) == 100_000


def test_frame_reader_gives_a_big_buffer_back_after_the_frame():
    r = FrameReader(64 << 20)
    r.authenticated = True
    big = build_request(2, 1, b"\0" * (8 << 20), client=9)
    ping = build_request(2, 1, b"", client=9)
    pos = 0
    while pos < len(big):  # as asyncio's BufferedProtocol fills it
        view = r.get_buffer()
        n = min(len(view), len(big) - pos)
        view[:n] = big[pos : pos + n]
        r.buffer_updated(n)
        pos += n
    assert r.capacity >= 8 << 20
    r.feed(ping[:100])  # a little of the next frame is in too
    assert len(r.next_frame()[1]) == 8 << 20
    assert r.capacity == 65536 and r.buffered == 100
    r.feed(ping[100:])
    assert r.next_frame()[1] == b""


def test_receive_buffer_is_a_bytearray_of_that_size():
    buf = receive_buffer(1 << 20)
    assert type(buf) is bytearray and len(buf) == 1 << 20
    buf[-3:] = b"end"  # writable to its last byte
    assert buf[-3:] == b"end" and receive_buffer(0) == bytearray()
    with pytest.raises(ValueError):
        receive_buffer(-1)
