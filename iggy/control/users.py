"""Users: login (Register), logout, and user management commands.

Passwords are stored only as Argon2id PHC strings (m=19456 KiB, t=2, p=1: the parameters of
Apache Iggy's `Argon2::default()`), hashed off the event loop because one hash takes ~30 ms.
Every login (here and over HTTP) goes through `password_login` / `token_login`, which apply
the failed-login backoff of iggy.control.throttle.

Wire bodies (TCP.md 5.3, 7.2, 9.6, 9.7)::

    login      u32 protocol_version, WireName sdk_name, WireName sdk_version,
               WireName username, u8 len + password, u32 len + client_context
    PAT login  same version prefix, u8 len + token, u32 len + client_context
    User       u32 id, u64 created_at, u8 status, WireName username, u32 options length (0)
    UserDetails  User, then u32 0 (no permissions) or u8 1 + u32 length + Permissions
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import argon2
import blake3

from iggy import SERVER_VERSION
from iggy.control import changes, lookup
from iggy.control import permissions as perm
from iggy.control.clock import now_us
from iggy.control.lookup import Ident
from iggy.control.registry import Evict, command, read_ident
from iggy.control.throttle import LoginBackoff, LogLimiter
from iggy.metadata.state import Permissions, Record, UserMeta, lowest_free_id
from iggy.protocol import codes
from iggy.protocol.errors import ErrorCode, IggyError
from iggy.protocol.wire import PROTOCOL_VERSION, Reader, Writer

if TYPE_CHECKING:
    from iggy.control.plane import ControlPlane, Session

log = logging.getLogger(__name__)
_log_limited = LogLimiter(log)

STATUS_ACTIVE = 1
STATUS_INACTIVE = 2

EVICT_INVALID_CREDENTIALS = 9
EVICT_INVALID_TOKEN = 10
EVICT_USER_INACTIVE = 11
EVICT_INCOMPATIBLE_PROTOCOL = 14
EVICT_MALFORMED_LOGIN = 15

_hasher = argon2.PasswordHasher(
    time_cost=2, memory_cost=19456, parallelism=1, hash_len=32, salt_len=16, type=argon2.Type.ID
)


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
        return False


def hash_token(token: str) -> str:
    return blake3.blake3(token.encode("utf-8")).hexdigest()


def validate_username(name: str) -> None:
    if not 3 <= len(name.encode("utf-8")) <= 50:
        raise IggyError(ErrorCode.INVALID_USERNAME)


def validate_password(password: str) -> None:
    if not 3 <= len(password.encode("utf-8")) <= 100:
        raise IggyError(ErrorCode.INVALID_PASSWORD)


# writes one user of a reply (the classic protocol has its own layout)
UserLayout = Callable[[Writer, UserMeta], None]
# what a login body parses as: (username, password) and/or a token, at least one of them
Credentials = tuple[tuple[str, str] | None, str | None]


def encode_user(w: Writer, u: UserMeta) -> None:
    w.u32(u.id).u64(u.created_at).u8(u.status).name(u.username).u32(0)


def encode_users(plane: ControlPlane, users: Iterable[UserMeta], encode: UserLayout = encode_user) -> bytes:
    """The user list; `encode` writes one user (the classic protocol passes its own layout)."""
    w = Writer()
    for u in users:
        encode(w, u)
    return w.getvalue()


def encode_user_details(plane: ControlPlane, u: UserMeta, encode: UserLayout = encode_user) -> bytes:
    """One user and its permissions; `encode` writes the user (as in encode_users)."""
    w = Writer()
    encode(w, u)
    if u.permissions is None:
        w.u32(0)
    else:
        raw = perm.encode(u.permissions)
        w.u8(1).u32(len(raw)).raw(raw)
    return w.getvalue()


def _refuse_options(r: Reader) -> None:
    """No user option keys exist: any key is unsupported (4041)."""
    if r.remaining():
        entries = r.tlv()
        if entries:
            raise IggyError(ErrorCode.UNSUPPORTED_OPTION_KEY)


# ------------------------------------------------------------------- login / logout


def _parse_login(r: Reader) -> Credentials:
    """The shapes the body parses as, in the order upstream tries them: (username, password)
    and/or a token; Evict(15) if neither fits. Bytes after a shape's fields are ignored, so a
    body may parse as both (core/server/src/dispatch.rs, handle_login_register_request)."""
    try:
        version = r.u32()
        r.name()
        r.name()
    except IggyError:
        raise Evict(EVICT_MALFORMED_LOGIN) from None
    if version >> 10 != PROTOCOL_VERSION >> 10:
        raise Evict(EVICT_INCOMPATIBLE_PROTOCOL, PROTOCOL_VERSION, PROTOCOL_VERSION)
    start = r.position
    username_password = token = None
    try:
        username = r.name()
        password = r.string8()
        r.bytes32()
        username_password = (username, password)
    except IggyError:
        pass
    r2 = Reader(r.data, start)
    try:
        raw_token = r2.string8()
        r2.bytes32()
        token = raw_token
    except IggyError:
        pass
    if username_password is None and token is None:
        raise Evict(EVICT_MALFORMED_LOGIN)
    return username_password, token


def _login_reply(user_id: int, session: int) -> bytes:
    return Writer().u32(user_id).u64(session).u32(PROTOCOL_VERSION).name(SERVER_VERSION).getvalue()


_dummy_hash: str | None = None


def _verify_dummy(password: str) -> bool:
    """Spend one password check for nothing (runs in the hashing pool, like the real one)."""
    global _dummy_hash
    if _dummy_hash is None:
        _dummy_hash = hash_password("iggy-dummy-password")
    return verify_password(_dummy_hash, password)


async def authenticate(plane: ControlPlane, username: str, password: str) -> UserMeta:
    """The active user with these credentials, else IggyError 42 (shared with the HTTP API).

    An unknown username is checked against a dummy hash of the same cost, so the answer
    takes as long as for a wrong password and doesn't tell which usernames exist.
    """
    user = plane.meta.state.user_by_name(username)
    if user is None:
        await plane.run_blocking(_verify_dummy, password)
        raise IggyError(ErrorCode.INVALID_CREDENTIALS)
    ok = await plane.run_blocking(verify_password, user.password_hash, password)
    # look again: the user may have changed while the hash ran off the loop
    user = plane.meta.state.user_by_name(username)
    if not ok or user is None or user.status != STATUS_ACTIVE:
        raise IggyError(ErrorCode.INVALID_CREDENTIALS)
    return user


async def password_login(plane: ControlPlane, address: str, username: str, password: str) -> UserMeta:
    """`authenticate` behind the failed-login backoff (iggy.control.throttle): the login of
    every transport. `address` is the client's, as "host:port"."""
    throttle = plane.login_throttle
    # a name no user can have (longer than a wire name; HTTP bodies allow megabytes) is not
    # worth a slot in the per-username table, whose entries would then be unbounded in size
    key = username if len(username.encode("utf-8", "surrogatepass")) <= 255 else None
    async with plane.login_gate(address):
        wait = throttle.retry_after(address, key)
        if wait:
            raise _backed_off(address, wait, ErrorCode.INVALID_CREDENTIALS)
        try:
            user = await authenticate(plane, username, password)
        except IggyError:
            throttle.failed(address, key)
            raise
    throttle.succeeded(address, key)
    return user


def token_login(plane: ControlPlane, address: str, raw_token: str) -> UserMeta:
    """`user_for_token` behind the failed-login backoff of `address` (see password_login)."""
    throttle = plane.login_throttle
    wait = throttle.retry_after(address)
    if wait:
        raise _backed_off(address, wait, ErrorCode.INVALID_PERSONAL_ACCESS_TOKEN)
    try:
        user = user_for_token(plane, raw_token)
    except IggyError as exc:
        if exc.code == ErrorCode.INVALID_PERSONAL_ACCESS_TOKEN:
            throttle.failed(address)
        raise
    throttle.succeeded(address)
    return user


def _backed_off(address: str, wait: float, code: ErrorCode) -> LoginBackoff:
    """The refusal of a login from a backed-off address or username, logged (at most once a
    minute)."""
    _log_limited.log(
        logging.WARNING,
        "backoff",
        "login refused without a check: %s is backed off after failed logins (%.0f s left)",
        address,
        wait,
    )
    return LoginBackoff(code, wait)


def user_for_token(plane: ControlPlane, raw_token: str) -> UserMeta:
    """The user a personal access token belongs to (shared with the HTTP API).

    Unknown or expired token -> IggyError 53; the owner is gone or inactive -> IggyError 47.
    """
    token = plane.meta.state.tokens.get(hash_token(raw_token))
    if token is None or (token.expiry_at and token.expiry_at <= now_us()):
        raise IggyError(ErrorCode.INVALID_PERSONAL_ACCESS_TOKEN)
    user = plane.meta.state.users.get(token.user_id)
    if user is None or user.status != STATUS_ACTIVE:
        raise IggyError(ErrorCode.USER_INACTIVE)
    return user


def read_login(r: Reader) -> tuple[Credentials]:
    return (_parse_login(r),)


@command(codes.LOGIN_REGISTER, needs=perm.PUBLIC, decode=read_login)
async def login(plane: ControlPlane, session: Session, credentials: Credentials) -> bytes:
    username_password, token = credentials
    client_uuid = session.client_uuid
    user = None
    if username_password is not None:
        try:
            user = await password_login(plane, session.address, *username_password)
        except IggyError:
            # wrong credentials: a body that also parses as a token login gets that chance
            if token is None:
                raise Evict(EVICT_INVALID_CREDENTIALS) from None
    if user is None:
        if token is None:  # _parse_login answers one shape at least
            raise Evict(EVICT_MALFORMED_LOGIN)
        try:
            user = token_login(plane, session.address, token)
        except IggyError as exc:
            reason = EVICT_USER_INACTIVE if exc.code == ErrorCode.USER_INACTIVE else EVICT_INVALID_TOKEN
            raise Evict(reason) from None
    number = plane.bind_login(session, user, client_uuid)
    return _login_reply(user.id, number)


@command(codes.LOGOUT_USER, needs=perm.LOGGED_IN)
def logout(plane: ControlPlane, session: Session) -> None:
    plane.logout(session)


# ------------------------------------------------------------------- request bodies


def read_create(r: Reader) -> tuple[str, str, int, Permissions | None]:
    username = r.name()
    password = r.string8()
    status = r.u8()
    permissions = perm.read_optional(r)
    _refuse_options(r)
    return username, password, status, permissions


def read_update(r: Reader) -> tuple[Ident, str | None, int | None]:
    ident = r.identifier()
    username = r.name() if r.bool() else None
    status = r.u8() if r.bool() else None
    _refuse_options(r)
    return ident, username, status


def read_update_permissions(r: Reader) -> tuple[Ident, Permissions | None]:
    return r.identifier(), perm.read_optional(r)


def read_change_password(r: Reader) -> tuple[Ident, str, str]:
    return r.identifier(), r.string8(), r.string8()


# ------------------------------------------------------------------- reads


@command(codes.GET_USER, needs=perm.SELF_OR_READ_USERS, decode=read_ident, encode=encode_user_details, missing=None)
def get_user(plane: ControlPlane, session: Session, user: UserMeta) -> UserMeta:
    return user


@command(codes.GET_USERS, needs=perm.READ_USERS, encode=encode_users)
def get_users(plane: ControlPlane, session: Session) -> list[UserMeta]:
    return sorted(plane.meta.state.users.values(), key=lambda u: u.id)


# ------------------------------------------------------------------- writes


def create_user_record(
    plane: ControlPlane, username: str, password_hash: str, status: int, permissions: Permissions | None
) -> Record:
    """Validate uniqueness and commit a new user (also used for the root user at first start)."""
    st = plane.meta.state
    if st.user_by_name(username) is not None:
        raise IggyError(ErrorCode.USER_ALREADY_EXISTS)
    return changes.apply(
        plane,
        {
            "op": "user.create",
            "id": lowest_free_id(st.users),
            "username": username,
            "password_hash": password_hash,
            "status": status,
            "permissions": permissions,
            "created_at": now_us(),
            "generation": st.next_user_generation,
        },
    )


@command(codes.CREATE_USER, needs=perm.MANAGE_USERS, decode=read_create, encode=encode_user_details)
async def create_user(
    plane: ControlPlane, session: Session, username: str, password: str, status: int, permissions: Permissions | None
) -> UserMeta:
    """Validate, hash the password off the loop and commit a new user."""
    validate_username(username)
    validate_password(password)
    if status not in (STATUS_ACTIVE, STATUS_INACTIVE):
        raise IggyError(ErrorCode.INVALID_USER_STATUS)
    if plane.meta.state.user_by_name(username) is not None:
        raise IggyError(ErrorCode.USER_ALREADY_EXISTS)
    password_hash = await plane.run_blocking(hash_password, password)
    rec = create_user_record(plane, username, password_hash, status, permissions)
    return plane.meta.state.users[rec["id"]]


# the user commands that need manage_users check it before looking the target user up
@command(codes.DELETE_USER, needs=perm.MANAGE_USERS, decode=read_ident)
def delete_user(plane: ControlPlane, session: Session, ident: Ident) -> None:
    user = lookup.get_user(plane, ident)
    if user.id == perm.ROOT_USER_ID:
        raise IggyError(ErrorCode.CANNOT_DELETE_USER)
    changes.apply(plane, {"op": "user.delete", "id": user.id})


@command(codes.UPDATE_USER, needs=perm.MANAGE_USERS, decode=read_update)
def update_user(plane: ControlPlane, session: Session, ident: Ident, username: str | None, status: int | None) -> None:
    """Rename and/or change the status of a user (None leaves a field as it is)."""
    user = lookup.get_user(plane, ident)
    if username is not None:
        validate_username(username)
        other = plane.meta.state.user_by_name(username)
        if other is not None and other.id != user.id:
            raise IggyError(ErrorCode.USER_ALREADY_EXISTS)
    if status is not None and status not in (STATUS_ACTIVE, STATUS_INACTIVE):
        raise IggyError(ErrorCode.INVALID_USER_STATUS)
    changes.apply(plane, {"op": "user.update", "id": user.id, "username": username, "status": status})


@command(codes.UPDATE_PERMISSIONS, needs=perm.MANAGE_USERS, decode=read_update_permissions)
def update_permissions(plane: ControlPlane, session: Session, ident: Ident, permissions: Permissions | None) -> None:
    user = lookup.get_user(plane, ident)
    if user.id == perm.ROOT_USER_ID:
        raise IggyError(ErrorCode.CANNOT_CHANGE_PERMISSIONS)
    changes.apply(plane, {"op": "user.permissions", "id": user.id, "permissions": permissions})


@command(codes.CHANGE_PASSWORD, needs=perm.SELF_OR_MANAGE_USERS, decode=read_change_password)
async def change_password(plane: ControlPlane, session: Session, user: UserMeta, current: str, new: str) -> None:
    """Check the current password of `user` (always required, also of root) and store the new one."""
    validate_password(new)
    if not await plane.run_blocking(verify_password, user.password_hash, current):
        raise IggyError(ErrorCode.INVALID_CREDENTIALS)
    new_hash = await plane.run_blocking(hash_password, new)
    if plane.meta.state.users.get(user.id) is None:
        raise IggyError(ErrorCode.RESOURCE_NOT_FOUND)
    changes.apply(plane, {"op": "user.password", "id": user.id, "password_hash": new_hash})
