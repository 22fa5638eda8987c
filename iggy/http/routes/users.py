"""Login, logout, token refresh, personal access tokens and user management (HTTP.md 3, 7).

Layout of every routes module: the decorated handlers run on the HTTP thread and only parse,
call and shape; they run the commands of the binary protocol through `ctx.bridge.call_as`,
which checks each command's permission on the main loop (iggy.control.registry), and shape
their results with views (functions of `plane` first, also run on the main loop). A user in
a path is `me` (the caller), an id or a username. Reads of a user that does not exist answer
the generic 404, after the permission check only where the permission does not depend on
the user (as over TCP).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from litestar import Request, delete, get, post, put
from litestar.params import FromPath, JSONBody

from iggy.control import changes, users
from iggy.control import permissions as perm
from iggy.control.registry import operation
from iggy.control.throttle import RetryLater
from iggy.http import schemas, views
from iggy.http.auth import Principal
from iggy.http.bridge import user_of
from iggy.http.context import Caller, Ctx, HttpContext, ident
from iggy.http.errors import answered, found
from iggy.http.views import Json
from iggy.metadata.state import REVOCATIONS_PER_USER
from iggy.protocol import codes
from iggy.protocol.errors import ErrorCode, IggyError

if TYPE_CHECKING:
    from iggy.control.plane import ControlPlane, Session
    from iggy.metadata.state import TokenMeta, UserMeta

PUBLIC = {"public": True}
STATUS = {"active": users.STATUS_ACTIVE, "inactive": users.STATUS_INACTIVE}


def identity(ctx: HttpContext, who: Principal) -> Json:
    """IdentityInfo: the user id and a fresh access token (nested object, as every Iggy release)."""
    return {"user_id": who.user_id, "access_token": ctx.jwt.issue(who)}


# ------------------------------------------------------------------- login / logout / refresh


def client_address(request: Request[Any, Any, Any]) -> str:
    """The peer's host, the key of the failed-login backoff (iggy.control.throttle)."""
    client = request.client
    return client.host if client is not None and client.host else "unknown"


async def _login(plane: ControlPlane, address: str, username: str, password: str) -> Principal:
    user = await users.password_login(plane, address, username, password)
    return Principal(user.id, user.generation)


def _existing(plane: ControlPlane, who: Principal) -> Principal:
    user_of(plane, who)
    return who


def _pat_login(plane: ControlPlane, address: str, token: str) -> Principal:
    user = users.token_login(plane, address, token)
    return Principal(user.id, user.generation)


@post("/users/login", opt=PUBLIC, status_code=200, summary="Log in with username and password")
async def login(ctx: Ctx, request: Request[Any, Any, Any], data: JSONBody[schemas.Login]) -> Json:
    who = await ctx.bridge.call(_login, client_address(request), data.username, data.password)
    return identity(ctx, who)


@operation(perm.LOGGED_IN)
def revoke_jwt(plane: ControlPlane, session: Session, jti: str, expiry: int) -> None:
    """Logout on a cluster whose nodes share the JWT key: the revocation is a metadata change
    (`jwt.revoke`), committed by the leader through etcd and applied by every node, so the
    token stops working on every node, restarts included (State.revoked_jwts). A user who has
    `revocations_per_user` logged-out tokens not expired yet gets a new generation instead
    (`user.generation`): every token and session of theirs ends, and their entries go."""
    now = int(time.time())
    state = plane.meta.state
    uid = session.user_id
    if plane.cluster is not None and uid is not None:
        # each logout is an etcd write during which the leader's main loop waits: a client
        # that refreshes and logs out in a loop is held to a rate (503 + Retry-After past it)
        wait = plane.cluster.logout_rate.take(uid)
        if wait:
            raise RetryLater(ErrorCode.TRANSIENT_NOT_ACCEPTED, wait)
    cap = plane.cluster.revocations_per_user if plane.cluster is not None else REVOCATIONS_PER_USER
    if uid is not None and state.revocations_of(uid, now) >= cap:
        changes.apply(plane, {"op": "user.generation", "id": uid, "generation": state.next_user_generation})
        return
    changes.apply(plane, {"op": "jwt.revoke", "jti": jti, "expiry": expiry, "at": now, "user": uid})


@delete("/users/logout", status_code=204, summary="Log out (revokes the access token)")
async def logout(ctx: Ctx, caller: Caller, request: Request[Any, Any, Any]) -> None:
    token = request.scope["auth"]
    if ctx.forwarder is None:
        # a single node, or a cluster whose nodes each have their own key: only this node
        # accepts the token, so only this node needs to forget it
        ctx.jwt.revoke(token)
        return
    claims = ctx.jwt.decode(token)
    if claims is not None:  # a personal access token is not revoked by a logout
        # not a follower's call: forwarded to the leader (iggy.http.forward)
        await ctx.bridge.call_as(caller, revoke_jwt, claims["jti"], ctx.jwt.revoked_until(claims))


@post("/users/refresh-token", opt=PUBLIC, status_code=200, summary="Exchange a valid access token for a new one")
async def refresh_token(ctx: Ctx, data: JSONBody[schemas.Token]) -> Json:
    who = ctx.jwt.principal(data.token)
    if who is None:
        raise IggyError(ErrorCode.UNAUTHENTICATED)
    return identity(ctx, await ctx.bridge.call(_existing, who))


@post("/personal-access-tokens/login", opt=PUBLIC, status_code=200, summary="Log in with a personal access token")
async def pat_login(ctx: Ctx, request: Request[Any, Any, Any], data: JSONBody[schemas.Token]) -> Json:
    return identity(ctx, await ctx.bridge.call(_pat_login, client_address(request), data.token))


# ------------------------------------------------------------------- personal access tokens


def _tokens(plane: ControlPlane, tokens: Iterable[TokenMeta]) -> list[Json]:
    return [{"name": t.name, "expiry_at": t.expiry_at or None} for t in tokens]


def _raw_token(plane: ControlPlane, raw: str) -> Json:
    return {"token": raw}


@get("/personal-access-tokens", summary="List your personal access tokens")
async def list_tokens(ctx: Ctx, caller: Caller) -> list[Json]:
    return answered(await ctx.bridge.call_as(caller, codes.GET_PERSONAL_ACCESS_TOKENS, view=_tokens))


@post("/personal-access-tokens", status_code=200, summary="Create a personal access token")
async def create_token(ctx: Ctx, caller: Caller, data: JSONBody[schemas.CreateToken]) -> Json:
    return answered(
        await ctx.bridge.call_as(caller, codes.CREATE_PERSONAL_ACCESS_TOKEN, data.name, data.expiry, view=_raw_token)
    )


@delete("/personal-access-tokens/{name:str}", status_code=204, summary="Delete one of your personal access tokens")
async def delete_token(ctx: Ctx, caller: Caller, name: FromPath[str]) -> None:
    await ctx.bridge.call_as(caller, codes.DELETE_PERSONAL_ACCESS_TOKEN, name)


# ------------------------------------------------------------------- users


def user_ident(caller: Principal, user_id: str) -> int | str:
    """The user a path names: "me" is the caller; a number is an id, else a username."""
    return caller.user_id if user_id == "me" else ident(user_id)


def _users(plane: ControlPlane, found_users: Iterable[UserMeta]) -> list[Json]:
    return [views.user(u) for u in found_users]


def _user_details(plane: ControlPlane, u: UserMeta) -> Json:
    return views.user_details(u)


@get("/users", summary="List users")
async def get_users(ctx: Ctx, caller: Caller) -> list[Json]:
    return answered(await ctx.bridge.call_as(caller, codes.GET_USERS, view=_users))


@post("/users", status_code=200, summary="Create a user")
async def create_user(ctx: Ctx, caller: Caller, data: JSONBody[schemas.CreateUser]) -> Json:
    return answered(
        await ctx.bridge.call_as(
            caller,
            codes.CREATE_USER,
            data.username,
            data.password,
            STATUS[data.status],
            schemas.stored_permissions(data.permissions),
            view=_user_details,
        )
    )


@get("/users/{user_id:str}", summary="Get a user by id or username (`me` for yourself)")
async def get_user(ctx: Ctx, caller: Caller, user_id: FromPath[str]) -> Json:
    return found(await ctx.bridge.call_as(caller, codes.GET_USER, user_ident(caller, user_id), view=_user_details))


@put("/users/{user_id:str}", status_code=204, summary="Rename a user or change its status")
async def update_user(ctx: Ctx, caller: Caller, user_id: FromPath[str], data: JSONBody[schemas.UpdateUser]) -> None:
    if data.options:
        raise IggyError(ErrorCode.UNSUPPORTED_OPTION_KEY, field=next(iter(data.options)))
    await ctx.bridge.call_as(
        caller,
        codes.UPDATE_USER,
        user_ident(caller, user_id),
        data.username,
        STATUS[data.status] if data.status else None,
    )


@delete("/users/{user_id:str}", status_code=204, summary="Delete a user")
async def delete_user(ctx: Ctx, caller: Caller, user_id: FromPath[str]) -> None:
    await ctx.bridge.call_as(caller, codes.DELETE_USER, user_ident(caller, user_id))


@put("/users/{user_id:str}/password", status_code=204, summary="Change a user's password")
async def change_password(
    ctx: Ctx, caller: Caller, user_id: FromPath[str], data: JSONBody[schemas.ChangePassword]
) -> None:
    await ctx.bridge.call_as(
        caller, codes.CHANGE_PASSWORD, user_ident(caller, user_id), data.current_password, data.new_password
    )


@put("/users/{user_id:str}/permissions", status_code=204, summary="Replace a user's permissions")
async def update_permissions(
    ctx: Ctx, caller: Caller, user_id: FromPath[str], data: JSONBody[schemas.UpdatePermissions]
) -> None:
    await ctx.bridge.call_as(
        caller, codes.UPDATE_PERMISSIONS, user_ident(caller, user_id), schemas.stored_permissions(data.permissions)
    )


ROUTES = [
    login,
    logout,
    refresh_token,
    pat_login,
    list_tokens,
    create_token,
    delete_token,
    get_users,
    create_user,
    get_user,
    update_user,
    delete_user,
    change_password,
    update_permissions,
]
