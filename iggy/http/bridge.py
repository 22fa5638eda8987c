"""Calls from the HTTP thread into the control plane, which lives on the main event loop.

The control plane's state is owned by the main loop: every write of it happens there, so
that commands from every transport are serialised in one place (the one exception is
read-mostly: the uring shards run the data-plane commands the C path left to Python on their
own threads; docs/ARCHITECTURE.md, "Threads"). A route handler therefore never touches
`plane` itself; it hands the call to the bridge, which runs it on the main loop with
`asyncio.run_coroutine_threadsafe` and awaits the result from the HTTP loop:

* `call_as(who, code, *args)` runs the registered command `code` (iggy.control.registry) for
  the authenticated principal `who`, exactly as the binary protocol runs it: the registry
  looks the command's stream, topic or user up and checks its permission before it runs, so
  an HTTP route never checks a permission itself. `view(plane, result)`, also run on the
  main loop, turns a result that is not None into the JSON shape of the route
  (iggy.http.views); a None result (an entity that does not exist) comes back as None.
  `code` may also be an HTTP-only operation declared with `registry.operation`;
* `call(fn, *args)` runs `fn(plane, *args)` for what needs no logged-in user (logins, the
  lookup of a personal access token).

What comes back must be plain data (dicts, lists, ints, bytes): built on the main loop, read
on the HTTP thread.

If the HTTP request is cancelled (the client went away) the call on the main loop still
runs to completion: a command is applied or refused as a whole, never cut in half.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar, TypeVarTuple, overload

from iggy.control.plane import TRANSPORT_HTTP, Session
from iggy.control.registry import COMMANDS, Command, invoke
from iggy.protocol.errors import ErrorCode, IggyError

if TYPE_CHECKING:
    from iggy.control.plane import ControlPlane
    from iggy.http.auth import Principal
    from iggy.metadata.state import UserMeta

View = Callable[[Any, Any], Any]  # (plane, result) -> JSON-ready data
Shaped = TypeVar("Shaped")  # what a route's view makes of a command's result
Result = TypeVar("Result")
Args = TypeVarTuple("Args")


class Bridge:
    def __init__(self, plane: ControlPlane, loop: asyncio.AbstractEventLoop):
        self.plane = plane
        self.loop = loop

    @overload
    async def call(self, fn: Callable[[ControlPlane, *Args], Awaitable[Result]], *args: *Args) -> Result: ...

    @overload
    async def call(self, fn: Callable[[ControlPlane, *Args], Result], *args: *Args) -> Result: ...

    async def call(self, fn: Callable[[ControlPlane, *Args], Any], *args: *Args) -> Any:
        """Run `fn(plane, *args)` (a function or a coroutine function) on the main loop and
        return its result here."""

        async def run() -> Any:
            result = fn(self.plane, *args)
            if inspect.isawaitable(result):
                result = await result
            return result

        future = asyncio.run_coroutine_threadsafe(run(), self.loop)
        return await asyncio.shield(asyncio.wrap_future(future))

    # With a view: what the view returns, or None when the command answered None (an entity
    # that does not exist). Without one: the command's own result, whose type depends on `code`.
    @overload
    async def call_as(
        self,
        who: Principal,
        code: int | Command,
        *args: Any,
        view: Callable[[ControlPlane, Any], Shaped],
        missing: Callable[[], Exception] | None = None,
        follower_ok: bool = False,
    ) -> Shaped | None: ...

    @overload
    async def call_as(
        self,
        who: Principal,
        code: int | Command,
        *args: Any,
        view: None = None,
        missing: Callable[[], Exception] | None = None,
        follower_ok: bool = False,
    ) -> Any: ...

    async def call_as(
        self,
        who: Principal,
        code: int | Command,
        *args: Any,
        view: View | None = None,
        missing: Callable[[], Exception] | None = None,
        follower_ok: bool = False,
    ) -> Any:
        """Run command `code` with `args` for the authenticated principal `who` (see the
        module docstring). `missing` (an exception class) is raised instead of the command's
        own answer when the stream, topic or user it names does not exist.

        A token whose user has been deleted since it was issued authenticates nobody (401),
        as a TCP session of a deleted user does, even when a newer user has taken the id.
        On a cluster follower only `follower_ok` calls run; the rest are 58 TransientNotAccepted:
        a read is redirected (307) to the leader's HTTP address when there is a leader, anything
        else is a 503 with Retry-After, as upstream answers (docs/CLUSTER.md).
        """
        cmd = COMMANDS[code] if isinstance(code, int) else code
        return await self.call(_run_as, who, cmd, args, view, missing, follower_ok)


def user_of(plane: ControlPlane, who: Principal) -> UserMeta:
    """The user `who` (an auth.Principal) names, if it still exists and its JWT was not logged
    out on any node of the cluster (`State.revoked_jwts`); else IggyError 40."""
    state = plane.meta.state
    user: UserMeta | None = state.users.get(who.user_id)
    if user is None or user.generation != who.generation or who.jti in state.revoked_jwts:
        raise IggyError(ErrorCode.UNAUTHENTICATED)
    return user


def http_session(user: UserMeta) -> Session:
    """A session standing for one HTTP request; never registered, so never listed as a client."""
    return Session(client_id=0, address="", transport=TRANSPORT_HTTP, user_id=user.id, user_generation=user.generation)


async def _run_as(
    plane: ControlPlane,
    who: Principal,
    cmd: Command,
    args: tuple[Any, ...],
    view: View | None,
    missing: Callable[[], Exception] | None,
    follower_ok: bool,
) -> Any:
    user = user_of(plane, who)
    if not follower_ok and plane.cluster is not None and not plane.cluster.is_leader():
        refused = IggyError(ErrorCode.TRANSIENT_NOT_ACCEPTED)
        # a read is redirected there (307, iggy.http.errors), as upstream does
        refused.leader_url = plane.cluster.leader_http_url()  # type: ignore[attr-defined]
        raise refused
    result = invoke(plane, http_session(user), cmd, args, missing)
    if inspect.isawaitable(result):
        result = await result
    if result is not None and view is not None:
        result = view(plane, result)
    return result
