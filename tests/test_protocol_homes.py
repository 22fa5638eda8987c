"""Every protocol number has one home, and C and Python read the same one.

Homes:
- iggy/protocol/header.pxd: the 256-byte frame header (offsets, sizes, command bytes), the
  frame check and the header builders; Python sees them as iggy.protocol.header.
- iggy/protocol/codes.py: operations, command codes, body kinds (identifier, consumer,
  partitioning, polling strategy); iggy/protocol/errors.py: ErrorCode. C code cimports them
  from iggy/protocol/ccodes.pxd, which scripts/gen_ccodes.py writes from those two files when
  setup.py builds (a build product, not committed).
- iggy/protocol/batch.pxd: the batch and message layouts.
- iggy/engine/uring/router.pxd: the ALLOW_* permission bits of the routing table (`Allow`).

(a) the compiled C enums equal the Python tables, name by name and value by value, and the
    ccodes.pxd of this build is what the generator writes now (else: rebuild);
(b) a scan of the source (iggy/, tests/rawclient.py, perf/) fails when one of those numbers is
    written as a literal outside its home. Comments and string literals are not scanned (they
    document layouts). Tests other than rawclient.py may write bytes by hand: they are the
    independent witness of the layout, so a wrong constant in a home cannot hide there.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from iggy.protocol import ccodes, codes, header
from iggy.protocol.errors import ErrorCode

ROOT = Path(__file__).resolve().parent.parent

# ----------------------------------------------------------------------------- (a) the tables agree


def _python_tables() -> dict[str, dict[str, int]]:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import gen_ccodes
    finally:
        sys.path.pop(0)
    return gen_ccodes.tables()


def test_generated_ccodes_is_current():
    """codes.py or errors.py changed after the last build: the compiled enums are stale."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_ccodes.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "enum_name", ["Operation", "Command", "Error", "IdentifierKind", "ConsumerKind", "Partitioning", "PollingStrategy"]
)
def test_compiled_enum_equals_python_table(enum_name):
    compiled = {member.name: int(member) for member in getattr(ccodes, enum_name)}
    # aliases (two names, one value) are not members of an IntEnum: take them from __members__
    compiled.update({name: int(member) for name, member in getattr(ccodes, enum_name).__members__.items()})
    assert compiled == _python_tables()[enum_name]


def test_every_python_number_reaches_c():
    tables = _python_tables()
    assert {k[len("E_") :]: v for k, v in tables["Error"].items()} == {m.name: int(m) for m in ErrorCode}
    python_ints = {name: value for name, value in vars(codes).items() if name.isupper() and type(value) is int}
    c_names = {name.removeprefix("CMD_") for table in tables.values() for name in table}
    assert set(python_ints) <= c_names
    assert codes.OPERATION_CODES.keys() <= set(tables["Operation"].values())


def test_transient_codes_are_error_codes():
    assert ErrorCode.TRANSIENT_NOT_COMMITTED == 57 and ErrorCode.TRANSIENT_NOT_ACCEPTED == 58
    from iggy.http.errors import TRANSIENT_CODES, status_of

    assert {ErrorCode.TRANSIENT_NOT_COMMITTED, ErrorCode.TRANSIENT_NOT_ACCEPTED} == TRANSIENT_CODES
    assert status_of(ErrorCode.TRANSIENT_NOT_ACCEPTED) == 503


def test_header_module_matches_the_documented_layout():
    # the layout as TCP.md 2.2/2.3 states it, written here independently of header.pxd
    assert (header.HEADER_SIZE, header.H_SIZE, header.H_COMMAND) == (256, 48, 60)
    assert (header.COMMAND_REQUEST, header.COMMAND_REPLY, header.COMMAND_EVICTION) == (5, 8, 13)
    assert (
        header.RQ_CLIENT,
        header.RQ_CHECKSUM,
        header.RQ_REQUEST,
        header.RQ_OPERATION,
        header.RQ_SESSION,
        header.RQ_CODE,
    ) == (128, 144, 168, 176, 184, 196)
    assert (
        header.RP_CHECKSUM,
        header.RP_CLIENT,
        header.RP_SESSION,
        header.RP_COMMIT,
        header.RP_REQUEST,
        header.RP_OPERATION,
        header.RP_STATUS,
    ) == (128, 160, 176, 184, 200, 208, 216)
    assert (header.EV_CLIENT, header.EV_VERSION, header.EV_VERSION_MIN, header.EV_REASON) == (128, 144, 148, 255)


def test_permission_bits_have_one_definition():
    from iggy.control import permissions
    from iggy.engine.uring.router import Allow

    assert permissions.Allow is Allow
    assert {m.name: int(m) for m in Allow} == {"ALLOW_SEND": 1, "ALLOW_POLL": 2}


# ----------------------------------------------------------------------------- (b) no literal outside its home

HOMES = {
    "iggy/protocol/header.pxd",
    "iggy/protocol/header.pyx",
    "iggy/protocol/codes.py",
    "iggy/protocol/errors.py",
    "iggy/protocol/ccodes.pxd",
    "iggy/protocol/ccodes.pyx",
    "iggy/protocol/batch.pxd",
}

# header field offsets (header.pxd) other than 0..47 (checksum and cluster: never read); the
# batch's own offsets (batch.pxd) 40, 48 and 52 fall in the same net. 255 (EV_REASON) only as
# an index: `2 + 255` is the longest identifier.
HEADER_OFFSETS = "48|52|56|60|128|144|148|152|160|168|176|184|192|196|200|208|216"
INDEXES = HEADER_OFFSETS + "|255"
_NUM = r"(?<![\w.])(\d+)(?![\w.])"
_OP = r"\b(?:op|operation|code|command)"

RULES = [
    # `p + 48`, `p[60]`, `raw[128:144]`, `unpack_from(buf, 216)`, `pack_into(fmt, buf, 168, ...)`
    (
        "header offset",
        re.compile(
            rf"[\w\])]\s*\+\s*(?:{HEADER_OFFSETS})(?![\w.])"
            rf"|\[\s*(?:{INDEXES})\s*[\]:]|:\s*(?:{INDEXES})\s*\]"
            rf"|unpack_from\([^()]*,\s*(?:{HEADER_OFFSETS})\s*\)"
            rf"|pack_into\([^()]*?,[^()]*?,\s*(?:{HEADER_OFFSETS})\s*,"
        ),
    ),
    # the header (and batch header) size
    ("header size 256", re.compile(r"(?<![\w.])256(?![\w.])")),
    # a protocol constant defined again: OP_SEND = 160, CODE_POLL = 100, CONSUMER_GROUP = 2, ...
    (
        "protocol constant",
        re.compile(
            r"^\s*(?:cdef\s+\w+\s+|DEF\s+)?"
            r"(?:OP|CODE|CMD|CONSUMER|PARTITION|STRATEGY|IDENTIFIER|COMMAND|ALLOW|E)_[A-Z0-9_]+(?:\s*,\s*[A-Z][A-Z0-9_]*)*\s*=\s*\(?\s*\d",
            re.M,
        ),
    ),
    # an operation, command code or header command compared with a number (0 and 1 only by
    # equality: `code > 1` is a process exit code): operation == 1, 128 <= op <= 149
    (
        "operation/code literal",
        re.compile(
            rf"{_OP}\s*(?:==|!=)\s*[1-9]|{_OP}\s*(?:<=|>=|<|>)\s*(?:[2-9]|\d\d)"
            r"|\d\s*(?:<=|<)\s*(?:op|operation)\b"
            rf"|{_OP}\s+(?:not\s+)?in\s*(?:frozenset\(|set\()?[(\[{{]\s*\d"
        ),
    ),
    # a table of operations or codes by number: TRANSIENT_CODES = frozenset({57, 58})
    ("number table", re.compile(r"^\s*\w*(?:_CODES|_OPS)\s*=\s*(?:frozenset|set|tuple)?\(?[\[{(][\d,\s]+[\]})]", re.M)),
]
# error codes specific enough to be recognised anywhere (4-5 digits, not a round thousand)
ERROR_LITERALS = {int(m) for m in ErrorCode if m >= 1000 and m % 1000}

# lines where such a number is not a protocol fact: (path, the line as written, why)
ALLOWED = {
    ("iggy/server/node.py", "FD_RESERVE = 256"): "descriptors kept free, not a protocol size",
    ("iggy/storage/log_index.pyx", "new_cap = cap[0] * 2 if cap[0] else 256"): "index capacity growth",
    ("iggy/engine/frontdoors/websocket.py", "_CLOSE_TRY_AGAIN_LATER = 1013"): "a WebSocket close code (RFC 6455)",
    ("iggy/engine/uring/router.pxd", "ALLOW_SEND = 1"): "the home of the permission bits (Allow)",
    ("iggy/engine/uring/router.pxd", "ALLOW_POLL = 2"): "the home of the permission bits (Allow)",
    ("perf/bench_core.py", "starts = [(i * 7919 + 3) % (total - 1000) for i in range(256)]"): "read positions",
    ("perf/bench_core.py", "_CAL_BUF = bytes(range(256)) * 1024"): "every byte value",
    ("perf/bench_core.py", '"frame_parse_small_x1000": 256,'): "loops per value",
    ("perf/bench_core.py", '"calibration_file_io": 256,'): "loops per value",
}

_STRIP = re.compile(r'"""[\s\S]*?"""|\'\'\'[\s\S]*?\'\'\'|"(?:\\.|[^"\\\n])*"|\'(?:\\.|[^\'\\\n])*\'|#[^\n]*')


def strip_comments_and_strings(text: str) -> str:
    """The code only: comments and string literals blanked, line numbers kept."""
    return _STRIP.sub(lambda m: "\n" * m.group(0).count("\n"), text)


def violations_in(rel: str, text: str) -> list[str]:
    out = []
    written = text.split("\n")
    code = strip_comments_and_strings(text).split("\n")
    for lineno, (line, raw) in enumerate(zip(code, written, strict=True), 1):
        stripped = line.strip()
        if any(rel == path and raw.strip().startswith(text) for path, text in ALLOWED):
            continue
        for what, rule in RULES:
            if rule.search(line):
                out.append(f"{rel}:{lineno}: {what}: {stripped}")
        for number in re.findall(_NUM, line):
            if int(number) in ERROR_LITERALS:
                out.append(f"{rel}:{lineno}: error code {number}: {stripped}")
    return out


def scanned_files(root: Path) -> list[Path]:
    files = [p for p in (root / "iggy").rglob("*") if p.suffix in (".py", ".pyx", ".pxd")]
    files += [root / "tests" / "rawclient.py"]
    files += [p for p in (root / "perf").iterdir() if p.suffix in (".py", ".pyx")]
    return sorted(p for p in files if p.is_file())


def violations(root: Path) -> list[str]:
    out = []
    for path in scanned_files(root):
        rel = path.relative_to(root).as_posix()
        if rel not in HOMES:
            out.extend(violations_in(rel, path.read_text()))
    return out


def test_no_cython_DEF():
    """Compile-time constants are `cdef enum`s (DEF is deprecated in Cython 3)."""
    found = [
        f"{p.relative_to(ROOT)}:{n}"
        for p in scanned_files(ROOT)
        if p.suffix in (".pyx", ".pxd")
        for n, line in enumerate(strip_comments_and_strings(p.read_text()).split("\n"), 1)
        if re.match(r"\s*DEF\s", line)
    ]
    assert not found


def test_no_protocol_literal_outside_its_home():
    found = violations(ROOT)
    assert not found, "protocol numbers written outside their home:\n" + "\n".join(found)


@pytest.mark.parametrize(
    "line",
    [
        "    size = le_u32(p + 48)",
        "    if p[60] != 5:",
        "        return int.from_bytes(self.raw[128:144], 'little')",
        "    self.size = _U32.unpack_from(self.buf, 48)[0]",
        "    struct.pack_into('<Q', frame, 168, request)",
        "HEADER = 256",
        "    unsigned char held[256 + 24]",
        "OP_SEND = 160",
        "OP_REGISTER, OP_READ = 1, 2",
        "    CODE_POLL = 100",
        "CONSUMER_GROUP = 2",
        "ALLOW_SEND = 1",
        "    E_CANNOT_SYNC_FILE = 10009",
        "DEF E_INVALID_COMMAND = 3",
        "        if operation == 1:",
        "        checksummed = operation in (1, 3) or 128 <= operation <= 149",
        "DATA_PLANE_OPS = frozenset({160, 161})",
        "TRANSIENT_CODES = frozenset({57, 58})",
        "_NOT_FOUND = {20, 1009, 1010, 2010, 2011}",
        "        if reply.command == 8 and reply.status == 0:",
    ],
)
def test_the_scan_catches(line):
    assert violations_in("iggy/example.py", line + "\n")


@pytest.mark.parametrize(
    "line",
    [
        "    size = frame_size(p)  # p + 48",
        '    """The 256-byte header: size at 48."""',
        "    put_u32(body + 12, part.id)",
        "    x = HEADER_SIZE + 24",
        "    retries = 5000",
        "    cdef unsigned char norm[2 + 255]",
        "            if status < 0:",
        "        print(msg, file=sys.stderr) if code > 1 else None",
    ],
)
def test_the_scan_passes(line):
    assert not violations_in("iggy/example.py", line + "\n")
