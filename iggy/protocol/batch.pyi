"""Types of iggy/protocol/batch.pyx (message batches); mypy reads this, the runtime the .so."""

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from _typeshed import ReadableBuffer, WriteableBuffer

BATCH_HEADER_SIZE: int
FRAME_HEADER_SIZE: int
BATCH_BASE_OFFSET_AT: int
BATCH_COUNT_AT: int
BATCH_LENGTH_AT: int
MAX_PAYLOAD_SIZE: int
MAX_USER_HEADERS_SIZE: int

# one user header: (key_kind, key_bytes, value_kind, value_bytes)
_UserHeader = tuple[int, bytes, int, bytes]

def validate_batch(buf: ReadableBuffer, start: int, end: int, expected_count: int) -> tuple[int, int, int]: ...
def stamp_batch(buf: WriteableBuffer, start: int, partition_id: int, base_offset: int, base_timestamp: int) -> None: ...
def compute_batch_checksum(batch: ReadableBuffer) -> int: ...
def encode_headers(headers: Iterable[_UserHeader]) -> bytes: ...
def decode_headers(raw: bytes) -> list[_UserHeader]: ...
def build_batch(
    messages: Iterable[Sequence[Any]], origin_timestamp: int | None = None
) -> bytes: ...  # (id, payload, user_headers[, timestamp_delta]) per message
def random_id() -> int: ...
def iter_messages(batches: ReadableBuffer) -> Iterator[dict[str, Any]]: ...
