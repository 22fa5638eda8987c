"""Login, logout, token refresh, personal access tokens and user management (HTTP.md 3, 7).

Layout of every routes module: functions whose first parameter is `plane` run on the main
loop (through `ctx.bridge`) and use the control plane's domain functions; the decorated
handlers run on the HTTP thread and only parse, call and shape. Reads of an entity that does
not exist answer the generic 404; existence is checked before permission, as upstream does.
"""
from __future__ import annotations

from litestar import Request, delete, get, post, put
from litestar.params import FromPath, JSONBody

from iggy.control import permissions as perm
from iggy.control import tokens, users
from iggy.protocol.errors import ErrorCode, IggyError
from iggy.http import schemas, views
from iggy.http.auth import Principal
from iggy.http.bridge import user_of
from iggy.http.context import Caller, Ctx, HttpContext, ident
from iggy.http.errors import NotFound

PUBLIC = {"public": True}
STATUS = {"active": users.STATUS_ACTIVE, "inactive": users.STATUS_INACTIVE}


def identity(ctx: HttpContext, who: Principal) -> dict:
    """IdentityInfo: the user id and a fresh access token (nested object, as every Iggy release)."""
    return {"user_id": who.user_id, "access_token": ctx.jwt.issue(who)}


# ------------------------------------------------------------------- login / logout / refresh

def client_address(request: Request) -> str:
    """The peer's host, the key of the failed-login backoff (iggy.control.throttle)."""
    client = request.client
    return client.host if client is not None and client.host else "unknown"


async def _login(plane, address: str, username: str, password: str) -> Principal:
    user = await users.password_login(plane, address, username, password)
    return Principal(user.id, user.generation)


def _existing(plane, who: Principal) -> Principal:
    user_of(plane, who)
    return who


def _pat_login(plane, address: str, token: str) -> Principal:
    user = users.token_login(plane, address, token)
    return Principal(user.id, user.generation)


@post("/users/login", opt=PUBLIC, status_code=200, summary="Log in with username and password")
async def login(ctx: Ctx, request: Request, data: JSONBody[schemas.Login]) -> dict:
    who = await ctx.bridge.call(_login, client_address(request), data.username, data.password)
    return identity(ctx, who)


@delete("/users/logout", status_code=204, summary="Log out (revokes the access token)")
async def logout(ctx: Ctx, request: Request) -> None:
    ctx.jwt.revoke(request.scope["auth"])


@post("/users/refresh-token", opt=PUBLIC, status_code=200, summary="Exchange a valid access token for a new one")
async def refresh_token(ctx: Ctx, data: JSONBody[schemas.Token]) -> dict:
    who = ctx.jwt.principal(data.token)
    if who is None:
        raise IggyError(ErrorCode.UNAUTHENTICATED)
    return identity(ctx, await ctx.bridge.call(_existing, who))


@post("/personal-access-tokens/login", opt=PUBLIC, status_code=200, summary="Log in with a personal access token")
async def pat_login(ctx: Ctx, request: Request, data: JSONBody[schemas.Token]) -> dict:
    return identity(ctx, await ctx.bridge.call(_pat_login, client_address(request), data.token))


# ------------------------------------------------------------------- personal access tokens

def _list_tokens(plane, user) -> list:
    return [{"name": t.name, "expiry_at": t.expiry_at or None}
            for t in sorted(plane.meta.state.tokens_of(user.id), key=lambda t: t.name)]


def _create_token(plane, user, name: str, expiry: int) -> dict:
    return {"token": tokens.create_token(plane, user.id, name, expiry)}


def _delete_token(plane, user, name: str) -> None:
    tokens.delete_token(plane, user.id, name)


@get("/personal-access-tokens", summary="List your personal access tokens")
async def list_tokens(ctx: Ctx, caller: Caller) -> list:
    return await ctx.bridge.call_as(caller, _list_tokens)


@post("/personal-access-tokens", status_code=200, summary="Create a personal access token")
async def create_token(ctx: Ctx, caller: Caller, data: JSONBody[schemas.CreateToken]) -> dict:
    return await ctx.bridge.call_as(caller, _create_token, data.name, data.expiry)


@delete("/personal-access-tokens/{name:str}", status_code=204, summary="Delete one of your personal access tokens")
async def delete_token(ctx: Ctx, caller: Caller, name: FromPath[str]) -> None:
    await ctx.bridge.call_as(caller, _delete_token, name)


# ------------------------------------------------------------------- users

def _user_target(plane, user, user_id: str):
    """The user a path names ("me" is the caller; a number is an id, else a username)."""
    if user_id == "me":
        return user
    target = users.find_user(plane, ident(user_id))
    if target is None:
        raise IggyError(ErrorCode.RESOURCE_NOT_FOUND)
    return target


def _get_users(plane, user) -> list:
    perm.require(perm.can_read_users(user))
    return [views.user(u) for u in sorted(plane.meta.state.users.values(), key=lambda u: u.id)]


def _get_user(plane, user, user_id: str) -> dict:
    try:
        target = _user_target(plane, user, user_id)
    except IggyError as exc:
        if exc.code == ErrorCode.RESOURCE_NOT_FOUND:
            raise NotFound() from None
        raise
    if target.id != user.id:
        perm.require(perm.can_read_users(user))
    return views.user_details(target)


async def _create_user(plane, user, body: schemas.CreateUser) -> dict:
    perm.require(perm.can_manage_users(user))
    created = await users.create_user_by(plane, body.username, body.password, STATUS[body.status],
                                         schemas.stored_permissions(body.permissions))
    return views.user_details(created)


def _update_user(plane, user, user_id: str, body: schemas.UpdateUser) -> None:
    target = _user_target(plane, user, user_id)
    perm.require(perm.can_manage_users(user))
    if body.options:
        raise IggyError(ErrorCode.UNSUPPORTED_OPTION_KEY, field=next(iter(body.options)))
    users.update_user_by(plane, target, body.username, STATUS[body.status] if body.status else None)


def _delete_user(plane, user, user_id: str) -> None:
    target = _user_target(plane, user, user_id)
    perm.require(perm.can_manage_users(user))
    users.delete_user_by(plane, target)


async def _change_password(plane, user, user_id: str, body: schemas.ChangePassword) -> None:
    target = _user_target(plane, user, user_id)
    if target.id != user.id:
        perm.require(perm.can_manage_users(user))
    await users.change_password_by(plane, target, body.current_password, body.new_password)


def _update_permissions(plane, user, user_id: str, body: schemas.UpdatePermissions) -> None:
    target = _user_target(plane, user, user_id)
    perm.require(perm.can_manage_users(user))
    users.update_permissions_by(plane, target, schemas.stored_permissions(body.permissions))


@get("/users", summary="List users")
async def get_users(ctx: Ctx, caller: Caller) -> list:
    return await ctx.bridge.call_as(caller, _get_users)


@post("/users", status_code=200, summary="Create a user")
async def create_user(ctx: Ctx, caller: Caller, data: JSONBody[schemas.CreateUser]) -> dict:
    return await ctx.bridge.call_as(caller, _create_user, data)


@get("/users/{user_id:str}", summary="Get a user by id or username (`me` for yourself)")
async def get_user(ctx: Ctx, caller: Caller, user_id: FromPath[str]) -> dict:
    return await ctx.bridge.call_as(caller, _get_user, user_id)


@put("/users/{user_id:str}", status_code=204, summary="Rename a user or change its status")
async def update_user(ctx: Ctx, caller: Caller, user_id: FromPath[str],
                      data: JSONBody[schemas.UpdateUser]) -> None:
    await ctx.bridge.call_as(caller, _update_user, user_id, data)


@delete("/users/{user_id:str}", status_code=204, summary="Delete a user")
async def delete_user(ctx: Ctx, caller: Caller, user_id: FromPath[str]) -> None:
    await ctx.bridge.call_as(caller, _delete_user, user_id)


@put("/users/{user_id:str}/password", status_code=204, summary="Change a user's password")
async def change_password(ctx: Ctx, caller: Caller, user_id: FromPath[str],
                          data: JSONBody[schemas.ChangePassword]) -> None:
    await ctx.bridge.call_as(caller, _change_password, user_id, data)


@put("/users/{user_id:str}/permissions", status_code=204, summary="Replace a user's permissions")
async def update_permissions(ctx: Ctx, caller: Caller, user_id: FromPath[str],
                             data: JSONBody[schemas.UpdatePermissions]) -> None:
    await ctx.bridge.call_as(caller, _update_permissions, user_id, data)


ROUTES = [login, logout, refresh_token, pat_login, list_tokens, create_token, delete_token, get_users, create_user,
          get_user, update_user, delete_user, change_password, update_permissions]
