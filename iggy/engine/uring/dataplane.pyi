"""Types of iggy/engine/uring/dataplane.pyx (the C data plane; `serve` runs it on one frame)."""

from typing import Literal

from _typeshed import ReadableBuffer

from iggy.engine.uring.router import Router

def serve(
    router: Router, user_id: int, client_id: int, frame: ReadableBuffer, max_poll_bytes: int = ...
) -> tuple[Literal["fallback"], None] | tuple[Literal["done", "sync"], bytes]: ...
