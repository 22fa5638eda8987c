"""Request frames as the official SDK sends them, for this repository's clients (the admin
CLI, the bench tool and the tests' raw client).

The SDK checksums the body of the operations listed in `codes.CHECKSUMMED_OPS` and leaves the
checksum 0 for the others; the server accepts both, so a client that wants to look like the
SDK on the wire decides it from the operation alone.
"""

from __future__ import annotations

from iggy.protocol import codes
from iggy.protocol.wire import build_request


def sdk_request(operation: int, code: int, body: bytes, session: int, request: int, client: int) -> bytes:
    """One request frame: header (`code` only for reads) + body, checksummed where the SDK does."""
    return build_request(
        operation,
        code,
        body,
        session=session,
        request=request,
        client=client,
        with_checksum=operation in codes.CHECKSUMMED_OPS,
    )
