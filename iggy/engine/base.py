"""What every engine shares: the fault switch of the tests.

`IGGY_TEST_FAULT_COMMAND=<command code>` (tests only; unset, it costs one comparison per
frame on the Python path) makes the engine's frame callback raise `InjectedFault` for every
request with that code, before the control plane sees it: the way tests check that an
exception in an engine callback closes that connection alone, is logged once naming it, and
leaves the server serving everyone else (tests/test_engine_faults.py). Write operations are
matched by the code they stand for (iggy.protocol.codes.OPERATION_CODES).
"""
from __future__ import annotations

import os

from iggy.protocol import codes

FAULT_ENV = "IGGY_TEST_FAULT_COMMAND"


def _fault_command() -> int:
    text = os.environ.get(FAULT_ENV, "").strip()
    return int(text) if text.isdigit() else 0


FAULT_COMMAND = _fault_command()        # 0: off


class InjectedFault(RuntimeError):
    """Raised on purpose for the command named by IGGY_TEST_FAULT_COMMAND."""


def inject_fault(header) -> None:
    """Raise InjectedFault when `header` is a request for the command under test."""
    if FAULT_COMMAND:
        op = header.operation
        code = header.code if op == codes.OP_READ else codes.OPERATION_CODES.get(op, 0)
        if code == FAULT_COMMAND:
            raise InjectedFault(f"{FAULT_ENV}={FAULT_COMMAND}: command {code} fails on purpose")
