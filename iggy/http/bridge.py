"""Calls from the HTTP thread into the control plane, which lives on the main event loop.

The control plane's state is owned by the main loop: every write of it happens there, so
that commands from every transport are serialised in one place (the one exception is
read-mostly: the uring shards run the data-plane commands the C path left to Python on their
own threads; docs/ARCHITECTURE.md, "Threads"). A route handler therefore never touches
`plane` itself; it hands a function to `Bridge.call`, which runs it on the main loop with
`asyncio.run_coroutine_threadsafe` and awaits the result from the HTTP loop.

Functions passed in take the plane first and may be plain functions or coroutines (those
that hash a password off the loop, or wait for an fsync). Whatever they return must be plain
data (dicts, lists, ints, bytes): built on the main loop, read on the HTTP thread.

If the HTTP request is cancelled (the client went away) the call on the main loop still
runs to completion: a command is applied or refused as a whole, never cut in half.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from iggy.protocol.errors import ErrorCode, IggyError

if TYPE_CHECKING:
    from iggy.control.plane import ControlPlane
    from iggy.http.auth import Principal
    from iggy.metadata.state import UserMeta


class Bridge:
    def __init__(self, plane: ControlPlane, loop: asyncio.AbstractEventLoop):
        self.plane = plane
        self.loop = loop

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run `fn(plane, *args)` on the main loop and return its result here."""

        async def run() -> Any:
            result = fn(self.plane, *args)
            if inspect.isawaitable(result):
                result = await result
            return result

        future = asyncio.run_coroutine_threadsafe(run(), self.loop)
        return await asyncio.shield(asyncio.wrap_future(future))

    async def call_as(self, who: Principal, fn: Callable[..., Any], *args: Any, follower_ok: bool = False) -> Any:
        """Run `fn(plane, user, *args)` on the main loop for the authenticated principal `who`.

        A token whose user has been deleted since it was issued authenticates nobody (401),
        as a TCP session of a deleted user does, even when a newer user has taken the id.
        On a cluster follower only `follower_ok` calls run; the rest are 58 TransientNotAccepted:
        a read is redirected (307) to the leader's HTTP address when there is a leader, anything
        else is a 503 with Retry-After, as upstream answers (docs/CLUSTER.md).
        """
        return await self.call(_as_user, who, fn, args, follower_ok)


def user_of(plane: ControlPlane, who: Principal) -> UserMeta:
    """The user `who` (an auth.Principal) names, if it still exists; else IggyError 40."""
    user: UserMeta | None = plane.meta.state.users.get(who.user_id)
    if user is None or user.generation != who.generation:
        raise IggyError(ErrorCode.UNAUTHENTICATED)
    return user


def _as_user(
    plane: ControlPlane, who: Principal, fn: Callable[..., Any], args: Sequence[Any], follower_ok: bool
) -> Any:
    user = user_of(plane, who)
    if not follower_ok and plane.cluster is not None and not plane.cluster.is_leader():
        refused = IggyError(ErrorCode.TRANSIENT_NOT_ACCEPTED)
        # a read is redirected there (307, iggy.http.errors), as upstream does
        refused.leader_url = plane.cluster.leader_http_url()  # type: ignore[attr-defined]
        raise refused
    return fn(plane, user, *args)
