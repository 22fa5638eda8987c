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

from iggy.protocol import codes
from iggy.protocol.wire import Reader, Writer
from iggy.control.plane import command, now_us
from iggy.control.users import hash_token
from iggy.protocol.errors import ErrorCode, IggyError

U64_MAX = 0xFFFFFFFFFFFFFFFF


def validate_token_name(name: str) -> None:
    if not 3 <= len(name.encode("utf-8")) <= 30:
        raise IggyError(ErrorCode.INVALID_PERSONAL_ACCESS_TOKEN_NAME)


def create_token(plane, user_id: int, name: str, expiry: int) -> str:
    """Validate and commit a new token; returns the raw token (shared with the HTTP API)."""
    validate_token_name(name)
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
    plane.meta.commit({"op": "token.create", "user_id": user_id, "name": name,
                       "token_hash": hash_token(raw), "expiry_at": expiry_at})
    return raw


def delete_token(plane, user_id: int, name: str) -> None:
    for t in plane.meta.state.tokens_of(user_id):
        if t.name == name:
            plane.meta.commit({"op": "token.delete", "token_hash": t.token_hash})
            return
    raise IggyError(ErrorCode.RESOURCE_NOT_FOUND)


@command(codes.GET_PERSONAL_ACCESS_TOKENS)
def get_tokens(plane, session, r: Reader):
    w = Writer()
    for t in sorted(plane.meta.state.tokens_of(session.user_id), key=lambda t: t.name):
        w.name(t.name).u64(t.expiry_at)
    return w.getvalue()


@command(codes.CREATE_PERSONAL_ACCESS_TOKEN)
def create(plane, session, r: Reader):
    name = r.name()
    expiry = r.u64()
    return Writer().name(create_token(plane, session.user_id, name, expiry)).getvalue()


@command(codes.DELETE_PERSONAL_ACCESS_TOKEN)
def delete(plane, session, r: Reader):
    name = r.name()
    delete_token(plane, session.user_id, name)
