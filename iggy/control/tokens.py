"""Personal access tokens: create, list, delete (a user manages only their own tokens).

The raw token is standard base64 of 50 random bytes, returned once; only its BLAKE3 hex
digest is stored (as Apache Iggy does), so a stolen metadata directory yields no tokens.

Wire bodies (TCP.md 6, 9.11)::

    create   WireName name, u64 expiry (µs; 0 = server default = never, u64::MAX = never)
             -> [u32 0] + WireName raw token
    list     -> (WireName name, u64 expiry_at (0 = never)) x n
    delete   WireName name
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Iterable
from typing import TYPE_CHECKING

from iggy.control import changes
from iggy.control import permissions as perm
from iggy.control.clock import now_us
from iggy.control.registry import command
from iggy.control.users import hash_token
from iggy.metadata.state import TokenMeta
from iggy.protocol import codes
from iggy.protocol.errors import ErrorCode, IggyError
from iggy.protocol.wire import Reader, Writer

if TYPE_CHECKING:
    from iggy.control.plane import ControlPlane, Session

U64_MAX = 0xFFFFFFFFFFFFFFFF


def validate_token_name(name: str) -> None:
    if not 3 <= len(name.encode("utf-8")) <= 30:
        raise IggyError(ErrorCode.INVALID_PERSONAL_ACCESS_TOKEN_NAME)


def encode_tokens(plane: ControlPlane, tokens: Iterable[TokenMeta]) -> bytes:
    w = Writer()
    for t in tokens:
        w.name(t.name).u64(t.expiry_at)
    return w.getvalue()


def encode_raw_token(plane: ControlPlane, raw: str) -> bytes:
    return Writer().name(raw).getvalue()


def read_create(r: Reader) -> tuple[str, int]:
    name = r.name()
    return name, r.u64()


def read_name(r: Reader) -> tuple[str]:
    return (r.name(),)


def _caller(session: Session) -> int:
    """The id of the user logged in: the registry runs these commands for logged-in sessions only."""
    if session.user_id is None:
        raise IggyError(ErrorCode.UNAUTHENTICATED)
    return session.user_id


# a user manages only their own tokens: any logged-in user, acting on itself
@command(codes.GET_PERSONAL_ACCESS_TOKENS, needs=perm.LOGGED_IN, encode=encode_tokens)
def get_tokens(plane: ControlPlane, session: Session) -> list[TokenMeta]:
    return sorted(plane.meta.state.tokens_of(_caller(session)), key=lambda t: t.name)


@command(codes.CREATE_PERSONAL_ACCESS_TOKEN, needs=perm.LOGGED_IN, decode=read_create, encode=encode_raw_token)
def create_token(plane: ControlPlane, session: Session, name: str, expiry: int) -> str:
    """Validate and commit a new token of the caller; returns the raw token."""
    validate_token_name(name)
    user_id = _caller(session)
    st = plane.meta.state
    own = st.tokens_of(user_id)
    if any(t.name == name for t in own):
        raise IggyError(ErrorCode.PERSONAL_ACCESS_TOKEN_ALREADY_EXISTS)
    if len(own) >= plane.config.personal_access_token.max_tokens_per_user:
        raise IggyError(ErrorCode.PERSONAL_ACCESS_TOKENS_LIMIT_REACHED)
    now = now_us()
    expiry_at = 0 if expiry in (0, U64_MAX) else now + expiry
    # an expiry so long that the moment it ends does not fit the u64 the token is stored and
    # listed with (2^64 - 2 µs, say) is refused like any other unusable expiry
    if expiry_at and not now < expiry_at <= U64_MAX:
        raise IggyError(ErrorCode.INVALID_PERSONAL_ACCESS_TOKEN_EXPIRY)
    raw = base64.b64encode(secrets.token_bytes(50)).decode("ascii")
    changes.apply(
        plane,
        {"op": "token.create", "user_id": user_id, "name": name, "token_hash": hash_token(raw), "expiry_at": expiry_at},
    )
    return raw


@command(codes.DELETE_PERSONAL_ACCESS_TOKEN, needs=perm.LOGGED_IN, decode=read_name)
def delete_token(plane: ControlPlane, session: Session, name: str) -> None:
    for t in plane.meta.state.tokens_of(_caller(session)):
        if t.name == name:
            changes.apply(plane, {"op": "token.delete", "token_hash": t.token_hash})
            return
    raise IggyError(ErrorCode.RESOURCE_NOT_FOUND)
