"""JWT access tokens of the REST API: issue, verify, revoke.

Tokens are HS256/384/512 JWTs (PyJWT) with the claims of Apache Iggy (HTTP.md 4)::

    {"jti": "<uuid v7>", "iss": "iggy.apache.org", "aud": "iggy.apache.org",
     "sub": "<user id as a decimal string>", "iat": <s>, "nbf": <s>, "exp": <s>,
     "gen": <the user's generation>}

`gen` is ours: user ids are reused after a delete, so a token names the user it was issued
for by (id, generation) (iggy.metadata.state), and a token of a deleted user never acts as
the next user given its id. A token without `gen` (or with another user's) authenticates
nobody.

The Web UI decodes the payload itself and reads `sub` as the user id, so these must stay
real JWTs. Unlike the reference server, logout revokes the token: its `jti` is kept in a
revocation table until the token would have expired anyway (clients cannot tell the
difference, and a leaked token stops working at logout). The table lives only in memory;
a restart forgets it, which is harmless when the secret is generated per start.

In a cluster with `cluster.auth` every node signs with the key derived from the shared secret
(iggy.http.settings.cluster_jwt_key), so a token issued by one node is valid on every node:
`sub` and `gen` name the same user everywhere, since every node applies the same users from
etcd's `meta/` (the root user is each node's own, made at its first start, with the same id
and generation on every node). A logout there revokes the token on every node through the
metadata (`jwt.revoke`, iggy.http.routes.users.revoke_jwt; past a cap per user, a new
generation for the user, which ends all of their tokens), checked with the user on the main
loop (iggy.http.bridge.user_of) rather than in this node's table.

`JwtIssuer` is used only from the HTTP thread, so it needs no locking.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Mapping
from typing import Any

import jwt

from iggy.http.settings import JwtSettings, random_secret
from iggy.protocol.errors import ErrorCode, IggyError


def uuid7() -> str:
    """A time-ordered UUID (RFC 9562 version 7), the `jti` format of the reference server."""
    ms = time.time_ns() // 1_000_000
    value = (ms & ((1 << 48) - 1)) << 80 | int.from_bytes(os.urandom(10), "big") & ((1 << 80) - 1)
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version 7
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # RFC 4122 variant
    return str(uuid.UUID(int=value))


class Principal:
    """Who a request is authenticated as: a user id and that user's generation."""

    __slots__ = ("generation", "jti", "user_id")

    def __init__(self, user_id: int, generation: int, jti: str | None = None):
        self.user_id = user_id
        self.generation = generation
        self.jti = jti  # the JWT's id (None: a personal access token), checked by bridge.user_of

    def __repr__(self) -> str:
        return f"Principal({self.user_id}, {self.generation})"


class JwtIssuer:
    def __init__(self, settings: JwtSettings):
        self.settings = settings
        self.secret = settings.secret or random_secret()
        self.revoked: dict[str, int] = {}  # jti -> exp (Unix seconds)

    def issue(self, who: Principal) -> dict[str, Any]:
        """A new token for `who` as the `access_token` object of IdentityInfo."""
        s = self.settings
        now = int(time.time())
        exp = now + s.access_token_expiry
        claims = {
            "jti": uuid7(),
            "iss": s.issuer,
            "aud": s.audience,
            "sub": str(who.user_id),
            "iat": now,
            "nbf": now + s.not_before,
            "exp": exp,
            "gen": who.generation,
        }
        return {"token": jwt.encode(claims, self.secret, algorithm=s.algorithm), "expiry": exp}

    def decode(self, token: str) -> dict[str, Any] | None:
        """The verified claims, or None if the token is not one of ours, expired or revoked."""
        s = self.settings
        try:
            claims = jwt.decode(
                token,
                self.secret,
                algorithms=[s.algorithm],
                audience=list(s.valid_audiences),
                issuer=list(s.valid_issuers),
                leeway=s.clock_skew,
                options={"require": ["exp", "sub", "jti", "gen"]},
            )
        except jwt.PyJWTError:
            return None
        if claims["jti"] in self.revoked:
            return None
        return claims

    def principal(self, token: str) -> Principal | None:
        """Who the token was issued for, or None if it is not a valid token of ours."""
        claims = self.decode(token)
        if claims is None:
            return None
        try:
            user_id = int(claims["sub"])
        except (TypeError, ValueError):
            return None
        generation = claims["gen"]
        if not 0 <= user_id <= 0xFFFFFFFF or type(generation) is not int or generation < 0:
            return None
        return Principal(user_id, generation, claims["jti"])

    def revoke(self, token: str) -> None:
        claims = self.decode(token)
        if claims is None:
            return
        self.revoked[claims["jti"]] = self.revoked_until(claims)
        self._prune()

    def revoked_until(self, claims: dict[str, Any]) -> int:
        """Until when a revocation of the token with `claims` must be kept (Unix seconds)."""
        return int(claims["exp"]) + self.settings.clock_skew

    def _prune(self) -> None:
        now = int(time.time())
        for jti in [j for j, exp in self.revoked.items() if exp < now]:
            del self.revoked[jti]


def bearer(headers: Mapping[str, str]) -> str:
    """The credential of `Authorization: Bearer <credential>`; 401 access_token_missing if absent."""
    value: str = headers.get("authorization", "")
    if not value.startswith("Bearer ") or not value[7:].strip():
        raise IggyError(ErrorCode.ACCESS_TOKEN_MISSING, "Access token is missing")
    return value[7:].strip()
