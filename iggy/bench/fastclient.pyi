"""Types of iggy/bench/fastclient.pyx (the bench tool's pre-built frames and poll-reply scanner)."""

from typing import Final

from _typeshed import ReadableBuffer
from typing_extensions import disjoint_base

@disjoint_base
class SendFrame:
    """One pre-built SEND_MESSAGES request; `stamp` rewrites it in place for each send."""

    def __init__(
        self, batch: ReadableBuffer, session: int, client: int, stream_id: int, topic_id: int, partition_id: int = 0
    ) -> None: ...
    # fixed when the object is made (Cython `readonly` attributes)
    size: Final[int]
    message_count: Final[int]
    batch_length: Final[int]
    @property
    def data(self) -> bytearray: ...
    def stamp(self, request: int, origin_timestamp: int, partition_id: int) -> bytearray: ...

@disjoint_base
class PollFrame:
    """One pre-built POLL_MESSAGES request; `stamp` rewrites it in place for each poll."""

    def __init__(
        self,
        session: int,
        client: int,
        consumer_kind: int,
        consumer_id: int,
        stream_id: int,
        topic_id: int,
        partition_id: int,
        strategy: int,
        count: int,
        auto_commit: bool = False,
        has_partition: bool = True,
    ) -> None: ...
    @property
    def data(self) -> bytearray: ...
    def stamp(self, request: int, partition_id: int, value: int) -> bytearray: ...

def scan_poll(body: ReadableBuffer) -> tuple[int, int, int, int, int, int]: ...
