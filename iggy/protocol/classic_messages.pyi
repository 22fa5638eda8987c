"""Types of iggy/protocol/classic_messages.pyx (pre-0.9 message layout to and from 0.9 batches)."""

from _typeshed import ReadableBuffer

CLASSIC_MESSAGE_HEADER_SIZE: int
CLASSIC_INDEX_ENTRY_SIZE: int

def classic_to_batch(body: ReadableBuffer, start: int, count: int) -> bytes: ...
def batches_to_classic(data: ReadableBuffer) -> tuple[bytes, int]: ...
