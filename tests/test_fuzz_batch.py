"""Property tests of batch validation (iggy.protocol.batch) under structured mutations.

test_batch.py flips single bytes of one batch, which the checksums catch first. Here a valid
batch is mutated field-aware (lengths, counts, deltas, reserved bytes, header TLVs, cuts and
splices) and then, half of the time, its checksums are *recomputed*, so the mutation reaches
the layout and user-header checks behind them. For every mutant, `validate_batch` either

* raises IggyError (never another exception, never a crash), or
* accepts it, and then the batch is intact: every message and batch checksum recomputes, the
  frames tile the batch exactly, and a partition log that appends it serves back the same
  messages with valid checksums after stamping.
"""

import os
import struct
import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iggy._core.checksum import xxh3_64
from iggy.protocol.batch import build_batch, compute_batch_checksum, encode_headers, stamp_batch, validate_batch
from iggy.protocol.errors import IggyError
from iggy.storage.log import PartitionLog
from tests.reliability.common import Corrupt, verify_batches

# IGGY_FUZZ_EXAMPLES raises the example count for a long run (docs/RELIABILITY.md)
EXAMPLES = int(os.environ.get("IGGY_FUZZ_EXAMPLES", "250"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

header_value = st.sampled_from(
    [(1, None), (2, None), (3, 1), (9, 1), (10, 2), (11, 4), (12, 8), (13, 16), (14, 4), (15, 8)]
)
message = st.tuples(
    st.binary(min_size=1, max_size=120),
    st.lists(
        st.tuples(st.binary(min_size=1, max_size=12), header_value, st.binary(min_size=1, max_size=20)), max_size=3
    ),
)


def make_batch(msgs) -> bytes:
    entries = []
    for i, (payload, headers) in enumerate(msgs):
        tlv = encode_headers([(2, k, vk, v if size is None else (v * size)[:size]) for k, (vk, size), v in headers])
        entries.append((i + 1, payload, tlv, i * 3))
    return build_batch(entries, origin_timestamp=1_700_000_000_000_000)


def frame_starts(b: bytes) -> list[int]:
    if len(b) < 256:
        return []
    out, pos = [], 256
    for _ in range(struct.unpack_from("<I", b, 48)[0]):
        if pos + 48 > len(b):
            break
        out.append(pos)
        pos += 48 + sum(struct.unpack_from("<II", b, pos + 32))
    return out


def fix_checksums(b: bytearray) -> None:
    """Recompute every message checksum and the batch checksum where the layout allows."""
    if len(b) < 256:
        return
    struct.pack_into("<Q", b, 32, len(b))
    for pos in frame_starts(bytes(b)):
        end = pos + 48 + sum(struct.unpack_from("<II", b, pos + 32))
        if end <= len(b):
            struct.pack_into("<Q", b, pos, xxh3_64(bytes(b[pos + 8 : end])))
    try:
        struct.pack_into("<Q", b, 40, compute_batch_checksum(bytes(b)))
    except IggyError:
        pass


MUTATIONS = (
    "flip",
    "set_u32",
    "truncate",
    "extend",
    "splice",
    "count",
    "payload_len",
    "headers_len",
    "offset_delta",
    "reserved",
    "header_kind",
    "header_len",
    "drop_frame",
    "dup_frame",
)


def put_u32(m: bytearray, at: int, value: int) -> None:
    if at >= 0 and at + 4 <= len(m):
        struct.pack_into("<I", m, at, value)


def mutate(b: bytes, kind: str, data) -> bytearray:
    m = bytearray(b)
    if not m:
        return bytearray(data.draw(st.binary(max_size=300)))
    frames = frame_starts(b)
    f = frames[data.draw(st.integers(0, len(frames) - 1))] if frames else 256
    u32 = data.draw(
        st.sampled_from([0, 1, 2, 47, 48, 255, 256, 0xFFFF, 100_000, 100_001, 64_000_000, 64_000_001, 2**31, 2**32 - 1])
    )
    if kind == "flip":
        at = data.draw(st.integers(0, len(m) - 1))
        m[at] ^= data.draw(st.integers(1, 255))
    elif kind == "set_u32":
        put_u32(m, data.draw(st.integers(0, len(m))), u32)
    elif kind == "truncate":
        del m[data.draw(st.integers(0, len(m) - 1)) :]
    elif kind == "extend":
        m += data.draw(st.binary(min_size=1, max_size=64))
    elif kind == "splice":
        at = data.draw(st.integers(0, len(m)))
        m[at:at] = data.draw(st.binary(min_size=1, max_size=64))
    elif kind == "count":
        put_u32(m, 48, u32)
    elif kind == "payload_len":
        put_u32(m, f + 36, u32)
    elif kind == "headers_len":
        put_u32(m, f + 32, u32)
    elif kind == "offset_delta":
        put_u32(m, f + 24, u32)
    elif kind == "reserved":
        at = data.draw(st.sampled_from([52, 100, 255, f + 40, f + 47]))
        m[min(at, len(m) - 1)] = data.draw(st.integers(1, 255))
    elif kind in ("header_kind", "header_len") and f + 48 <= len(m):
        hlen, plen = struct.unpack_from("<II", m, f + 32)
        if hlen:
            at = f + 48 + plen + data.draw(st.integers(0, hlen - 1))
            if at >= len(m):
                pass
            elif kind == "header_kind":
                m[at] = data.draw(st.integers(0, 255))
            else:
                put_u32(m, at + 1, u32)
    elif kind in ("drop_frame", "dup_frame") and frames and f + 48 <= len(m):
        end = f + 48 + sum(struct.unpack_from("<II", m, f + 32))
        if kind == "drop_frame":
            del m[f:end]
        else:
            m[end:end] = m[f:end]
    return m


def assert_intact(b: bytes, count: int) -> None:
    messages = verify_batches(b)  # raises Corrupt
    assert len(messages) == count
    base = struct.unpack_from("<Q", b, 8)[0]  # the client's value; the server stamps its own
    assert [m["offset"] for m in messages] == list(range(base, base + count))


@SETTINGS
@given(
    st.lists(message, min_size=1, max_size=6),
    st.lists(st.sampled_from(MUTATIONS), min_size=1, max_size=3),
    st.booleans(),
    st.data(),
)
def test_mutated_batches_are_refused_or_intact(msgs, kinds, fix, data):
    b = make_batch(msgs)
    for kind in kinds:
        b = bytes(mutate(b, kind, data))
    if fix:
        m = bytearray(b)
        fix_checksums(m)
        b = bytes(m)
    expected = data.draw(st.sampled_from([len(msgs), struct.unpack_from("<I", b, 48)[0] if len(b) >= 52 else 0]))
    try:
        count, length, _payload = validate_batch(b, 0, len(b), expected)
    except IggyError:
        return
    assert (count, length) == (expected, len(b))
    try:
        assert_intact(b, count)
    except Corrupt as exc:
        raise AssertionError(f"validate_batch accepted a corrupt batch: {exc}") from None
    # stamped in place, it still verifies
    stamped = bytearray(b)
    stamp_batch(stamped, 0, 3, 1000, 1_700_000_000_000_001)
    validate_batch(stamped, 0, len(stamped), count)


@settings(max_examples=max(40, EXAMPLES // 6), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.lists(message, min_size=1, max_size=4), min_size=1, max_size=6),
    st.lists(st.sampled_from(MUTATIONS), max_size=2),
    st.data(),
)
def test_what_validation_accepts_the_log_serves_intact(batches, kinds, data):
    with tempfile.TemporaryDirectory() as d:
        lg = PartitionLog(d, 1, 4096)
        sent = []
        for msgs in batches:
            b = make_batch(msgs)
            for kind in kinds:
                b = bytes(mutate(b, kind, data))
            m = bytearray(b)
            fix_checksums(m)
            b = bytes(m)
            n = struct.unpack_from("<I", b, 48)[0] if len(b) >= 52 else 0
            try:
                validate_batch(b, 0, len(b), n)
            except IggyError:
                continue
            lg.append(b, 0, len(b), 1_700_000_000_000_000)
            sent += [x["payload"] for x in verify_batches(b)]
        data_read, n = lg.read(0, 1_000_000)
        served = verify_batches(data_read)
        assert [x["payload"] for x in served] == sent and n == len(sent)
        assert [x["offset"] for x in served] == list(range(len(sent)))
        lg.close()
        # and after a reopen (recovery walk) the same
        lg = PartitionLog(d, 1, 4096)
        again = verify_batches(lg.read(0, 1_000_000)[0])
        assert [x["payload"] for x in again] == sent
        lg.close()


@SETTINGS
@given(st.binary(max_size=2000), st.integers(0, 300), st.integers(0, 2**32 - 1))
def test_batch_functions_on_arbitrary_bytes(data, start, count):
    for call in (
        lambda: validate_batch(data, start, len(data), count),
        lambda: validate_batch(data, 0, start, count),
        lambda: compute_batch_checksum(data),
        lambda: stamp_batch(bytearray(data), start, 1, 2, 3),
    ):
        try:
            call()
        except IggyError:
            pass


def test_mutation_corpus_reaches_deep_checks():
    """The mutator is not a checksum-only fuzzer: fixed-up mutants hit the layout/header checks."""
    import random

    rnd = random.Random(5)
    codes = set()
    base = make_batch(
        [(b"payload-%d" % i, [(b"key", (2, None), b"value"), (b"n", (11, 4), b"abcd")]) for i in range(4)]
    )
    for _ in range(3000):
        m = bytearray(base)
        at = rnd.randrange(len(m))
        m[at] = rnd.randrange(256)
        fix_checksums(m)
        try:
            validate_batch(bytes(m), 0, len(m), 4)
        except IggyError as exc:
            codes.add(int(exc.code))
    # beyond the checksum codes (4027, 4039): header kind/key/value, sizes, reserved, format
    assert {4040, 4018, 4036, 4101, 4}.issubset(codes), codes
