"""The command registry: for every command code, how its wire body is read, the permission it
needs, the function that runs it and how its result is written back; and `invoke`, the one
place where a command's permission is checked.

A command is declared once, next to its implementation::

    @command(codes.UPDATE_STREAM, needs=perm.MANAGE_STREAM, decode=read_update)
    def update_stream(plane, session, stream, name): ...

Both transports run it through `invoke`: the binary protocol from
`iggy.control.plane.ControlPlane.handle`, with the arguments `decode` read from the request
body; the HTTP API from `iggy.http.bridge.Bridge.call_as`, with the arguments its route
parsed from the path and the JSON body. `invoke` always goes the same way:

1. the scope of the rule (`iggy.control.permissions.Rule`) is looked up: a scoped command's
   first arguments are Identifiers of a stream, of a stream and a topic, or of a user, and
   are replaced by the entities they name. When one is missing the command answers its
   `missing` value (an empty reply, an empty list) or, by default, fails with the not-found
   code of what is missing (1009 stream, 2010 topic, 20 user);
2. the rule is checked against the caller's user: IggyError 41 (Unauthorized) if refused;
3. the handler runs: `handler(plane, session, *resolved arguments)`.

So a request is read whole before anything else (a malformed body is refused whoever sends
it), then its target is found, then the permission is checked, then the command runs; what
a command looks up beyond its scope (a consumer group, a partition, the target of a user
command that needs a global flag) is looked up after the check.

A handler returns a result (None for an empty reply), or an awaitable of one (a password
hash off the loop, an fsync), or raises IggyError or `Evict`. `encode(plane, result)` makes
the binary reply body of a result that is not None (bytes, or a tuple of buffers written as
they are); the HTTP routes shape the same result as JSON (iggy.http.views).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Concatenate, TypeAlias, TypeVar

from iggy.control import lookup
from iggy.control import permissions as perm
from iggy.control.lookup import Ident
from iggy.protocol.errors import ErrorCode, IggyError
from iggy.protocol.wire import Reader

if TYPE_CHECKING:
    from iggy.control.plane import ControlPlane, Session

FAIL = object()  # `missing`: a missing stream, topic or user fails with its not-found code

# (plane, session, *arguments) -> result, or an awaitable of it. The arguments and the result
# differ from command to command; `command` hands each handler back with its own signature,
# so its callers and its body are checked against that.
Handler: TypeAlias = "Callable[Concatenate[ControlPlane, Session, ...], object]"
H = TypeVar("H", bound=Handler)
Decoder = Callable[[Reader], tuple[object, ...]]  # wire body -> arguments
# the binary reply body: bytes, or a tuple of buffers written as they are (a poll's head + batches)
Body: TypeAlias = bytes | tuple[bytes, ...]
# (plane, result) -> binary reply body. Any: the result is its own handler's, of a type that
# differs from command to command (the table holds them all)
Encoder: TypeAlias = "Callable[[ControlPlane, Any], Body]"


class Evict(Exception):
    """Answer with an Eviction frame (login refused, session dead)."""

    def __init__(self, reason: int, version: int = 0, version_min: int = 0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.version = version
        self.version_min = version_min


def no_body(r: Reader) -> tuple[()]:
    """The decoder of a command without arguments (bytes after them are ignored)."""
    return ()


def read_ident(r: Reader) -> tuple[Ident]:
    """The decoder of a command whose body is one Identifier (a stream, a user)."""
    return (r.identifier(),)


def read_stream_topic(r: Reader) -> tuple[Ident, Ident]:
    """The decoder of a command whose body is `Identifier stream, Identifier topic`."""
    return r.identifier(), r.identifier()


@dataclass(frozen=True)
class Command:
    code: int  # 0 for an operation of one transport only (see `operation`)
    name: str
    needs: perm.Rule
    handler: Handler
    decode: Decoder
    encode: Encoder | None
    missing: object


COMMANDS: dict[int, Command] = {}


def command(
    code: int,
    needs: perm.Rule,
    decode: Decoder = no_body,
    encode: Encoder | None = None,
    missing: object = FAIL,
) -> Callable[[H], H]:
    """Register the decorated function as the handler of command `code` (once per code)."""

    def deco(fn: H) -> H:
        if code in COMMANDS:
            raise RuntimeError(f"command {code} registered twice ({COMMANDS[code].name}, {fn.__name__})")
        COMMANDS[code] = Command(code, fn.__name__, needs, fn, decode, encode, missing)
        return fn

    return deco


def operation(needs: perm.Rule, missing: object = FAIL) -> Callable[[Handler], Command]:
    """Declare a function as an operation that one transport has and the binary protocol has
    not (the HTTP API's snapshot, the classic protocol's flush): `invoke` runs it like a
    command, so its rule is checked the same way. Not registered under a code."""

    def deco(fn: Handler) -> Command:
        return Command(0, fn.__name__, needs, fn, no_body, None, missing)

    return deco


def _refuse() -> IggyError:
    return IggyError(ErrorCode.UNAUTHORIZED)


def invoke(
    plane: ControlPlane,
    session: Session,
    cmd: Command,
    args: tuple[Any, ...],
    missing: Callable[[], Exception] | None = None,
) -> object:
    """Look up the scope of `cmd`, check its rule for `session`'s user, run it.

    Returns the handler's result (possibly an awaitable). `missing`, when given, is raised
    instead of the command's own answer when the scope's entity does not exist (the REST
    API's generic 404 of a read). `args` are the command's own (Any: their types are those of
    its handler's parameters, which differ per command); the first ones name the scope.
    """
    needs = cmd.needs
    scope = needs.scope
    allows = needs.allows  # None: any logged-in user
    if scope == perm.SCOPE_NONE:
        if allows is not None and not allows(plane.user_of(session)):
            raise _refuse()
        return cmd.handler(plane, session, *args)
    if scope == perm.SCOPE_TOPIC:
        s = lookup.find_stream(plane, args[0])
        t = lookup.find_topic(s, args[1]) if s is not None else None
        if s is None or t is None:
            code = ErrorCode.STREAM_ID_NOT_FOUND if s is None else ErrorCode.TOPIC_ID_NOT_FOUND
            return _missing(cmd, missing, code)
        if allows is not None and not allows(plane.user_of(session), s.id, t.id):
            raise _refuse()
        return cmd.handler(plane, session, s, t, *args[2:])
    if scope == perm.SCOPE_STREAM:
        stream = lookup.find_stream(plane, args[0])
        if stream is None:
            return _missing(cmd, missing, ErrorCode.STREAM_ID_NOT_FOUND)
        if allows is not None and not allows(plane.user_of(session), stream.id):
            raise _refuse()
        return cmd.handler(plane, session, stream, *args[1:])
    if scope == perm.SCOPE_USER:
        target = lookup.find_user(plane, args[0])
        if target is None:
            return _missing(cmd, missing, ErrorCode.RESOURCE_NOT_FOUND)
        if target.id != session.user_id and allows is not None and not allows(plane.user_of(session)):
            raise _refuse()
        return cmd.handler(plane, session, target, *args[1:])
    raise AssertionError(f"unknown scope {scope!r} of command {cmd.name}")


def _missing(cmd: Command, missing: Callable[[], Exception] | None, code: ErrorCode) -> object:
    if missing is not None:
        raise missing()
    if cmd.missing is FAIL:
        raise IggyError(code)
    return cmd.missing
