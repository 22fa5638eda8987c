"""atheris harness: the frame parser (FrameReader + RequestHeader + body Reader) and the batch
validator (validate_batch, stamp_batch, compute_batch_checksum) on arbitrary bytes.

Run through fuzz/run.sh after fuzz/build.sh: then `IGGY_FUZZ_INSTRUMENTED` names the directory
of the clang-instrumented `iggy.protocol.wire` / `iggy.protocol.batch`, which are loaded in place of
the project's own build, and libFuzzer (LD_PRELOADed) sees their edge coverage. Run directly
(`python fuzz/fuzz_frames.py -runs=N`) it uses the normal gcc build: atheris still runs every
input, but without coverage of the C code (plain mode).

An input is: byte 0 = mode and chunking, the rest = the stream. Mode 0: the bytes are a
stream of frames, fed in chunks through both input paths, and each frame's body goes through
the Reader calls every command uses and, when it has a batch's size, through validate_batch.
Mode 1: the bytes are a batch. Anything but IggyError / FrameError is a crash; so is a batch
that validates but whose checksums do not recompute.
"""

import importlib.machinery
import importlib.util
import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def _load_instrumented(directory: str) -> None:
    import iggy.protocol.errors  # noqa: F401 - the modules import it

    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    for name in ("wire", "batch"):
        path = os.path.join(directory, "iggy", "protocol", name + suffix)
        loader = importlib.machinery.ExtensionFileLoader(f"iggy.protocol.{name}", path)
        spec = importlib.util.spec_from_file_location(f"iggy.protocol.{name}", path, loader=loader)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        loader.exec_module(module)


if os.environ.get("IGGY_FUZZ_INSTRUMENTED"):
    _load_instrumented(
        os.path.join(os.path.dirname(HERE), os.environ["IGGY_FUZZ_INSTRUMENTED"])
        if not os.path.isabs(os.environ["IGGY_FUZZ_INSTRUMENTED"])
        else os.environ["IGGY_FUZZ_INSTRUMENTED"]
    )

import atheris  # noqa: E402

from iggy._core.checksum import xxh3_64  # noqa: E402
from iggy.protocol.batch import (  # noqa: E402
    build_batch,
    compute_batch_checksum,
    encode_headers,
    iter_messages,
    stamp_batch,
    validate_batch,
)
from iggy.protocol.errors import IggyError  # noqa: E402
from iggy.protocol.wire import FrameError, FrameReader, Reader, build_request  # noqa: E402

MAX_FRAME = 1 << 16
READS = ("u8", "u16", "u32", "u64", "u128", "bool", "name", "string8", "bytes8", "bytes32", "identifier", "tlv")


def _body(body: bytes, plan: int) -> None:
    r = Reader(body)
    for i in range(8):
        try:
            getattr(r, READS[(plan >> (i * 4)) % len(READS)])()
        except IggyError:
            break
    if len(body) >= 52:
        _batch(body[(plan % 4) * 4 :], struct.unpack_from("<I", body, 48)[0] if plan & 1 else 1)


def _batch(data: bytes, count: int) -> None:
    try:
        n, length, _ = validate_batch(data, 0, len(data), count)
    except IggyError:
        return
    # accepted: the batch must be intact
    assert length == len(data) and compute_batch_checksum(data) == struct.unpack_from("<Q", data, 40)[0]
    msgs = list(iter_messages(data))
    assert len(msgs) == n
    pos = 256
    for m in msgs:
        flen = 48 + len(m["payload"]) + len(m["user_headers"])
        assert xxh3_64(data[pos + 8 : pos + flen]) == m["checksum"]
        pos += flen
    stamped = bytearray(data)
    stamp_batch(stamped, 0, 1, 2, 3)
    validate_batch(stamped, 0, len(stamped), n)


def test_one_input(data: bytes) -> None:
    if not data:
        return
    mode, stream = data[0], data[1:]
    if mode & 1:
        _batch(stream, struct.unpack_from("<I", stream, 48)[0] if len(stream) >= 52 else 1)
        return
    fr = FrameReader(MAX_FRAME)
    step = (mode >> 1) * 37 + 1
    buffered = bool(mode & 0x80)
    try:
        for pos in range(0, len(stream), step):
            chunk = stream[pos : pos + step]
            if buffered:
                view = fr.get_buffer(len(chunk))
                k = min(len(view), len(chunk))
                view[:k] = chunk[:k]
                fr.buffer_updated(k)
                if k < len(chunk):
                    fr.feed(chunk[k:])
            else:
                fr.feed(chunk)
            while (frame := fr.next_frame()) is not None:
                header, body = frame
                assert header.command == 5 and 256 <= header.size <= MAX_FRAME
                assert len(body) == header.size - 256
                _body(body, header.code ^ header.operation)
    except FrameError:
        pass


def seeds() -> list[bytes]:
    batch = build_batch([(1, b"hello", b""), (2, b"world", encode_headers([(2, b"k", 2, b"v")]))])
    meta = b"\x02\x02s1\x02\x02t1\x02\x04\x00\x00\x00\x00\x02\x00\x00\x00"
    send = struct.pack("<I", len(meta)) + meta + batch
    return [
        b"\x00" + build_request(2, 1, b"", client=1),
        b"\x00" + build_request(160, 0, send, session=1, request=1, client=1),
        b"\x80" + build_request(128, 0, b"\x02s1", session=1, request=1, client=1, with_checksum=True) * 2,
        b"\x01" + batch,
    ]


if __name__ == "__main__":
    corpus = [a for a in sys.argv[1:] if not a.startswith("-")]
    if corpus and os.path.isdir(corpus[0]) and not os.listdir(corpus[0]):
        for i, seed in enumerate(seeds()):
            with open(os.path.join(corpus[0], f"seed-{i}"), "wb") as f:
                f.write(seed)
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
