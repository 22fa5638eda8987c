"""The `[http]` configuration, resolved once into plain values the REST app can use.

The server's typed config (`iggy.config`) keeps Apache Iggy's key names and has already turned
sizes and durations into bytes and seconds; text ("2 MB", "1 h") is still accepted here for
settings built from a plain mapping. This module fills the reference defaults for anything the
config does not carry, and generates the JWT secret when none is configured (a random secret
per start, so every token dies with the process, as in Apache Iggy).

Keys read (all optional; defaults are the reference server's)::

    http.address                     "127.0.0.1:3000"
    http.max_request_size            "2 MB"
    http.header_read_timeout / body_read_timeout / keep_alive_timeout   "10 s", "30 s", "5 s"
                                     (ours: slow clients are closed, see iggy.http.protocol)
    http.max_header_size / max_connections   "32 KiB", 1024  (ours)
    http.web_ui                      false (upstream's switch for its built-in UI; none is built
                                            in here, so true only logs how to use web_ui_dir)
    http.web_ui_dir                  ""  (a folder served under /ui; ours, not upstream's)
    http.cors.enabled / allowed_origins / allowed_methods / allowed_headers /
             exposed_headers / allow_credentials / allow_private_network
    http.jwt.algorithm / issuer / audience / valid_issuers / valid_audiences /
             access_token_expiry / clock_skew / not_before / encoding_secret /
             decoding_secret / use_base64_secret
    http.metrics.enabled / endpoint  true, "/metrics"
    http.tls.enabled / cert_file / key_file
    cluster.enabled / auth.enabled / auth.shared_secret / name / heartbeat_timeout
                                     (cluster mode: the JWT key every node shares, and whether
                                     a follower forwards requests to the leader; see
                                     `cluster_jwt_key` and iggy.http.forward)
"""

from __future__ import annotations

import base64
import secrets
import string
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from iggy.units import parse_duration, parse_size

JWT_ALGORITHMS = ("HS256", "HS384", "HS512")
NEVER_SECONDS = 1_000_000_000  # "never" expiring tokens live this long (HTTP.md 4)


@dataclass(frozen=True)
class CorsSettings:
    enabled: bool = True
    allowed_origins: tuple[str, ...] = ("*",)
    allowed_methods: tuple[str, ...] = ("GET", "POST", "PUT", "DELETE")
    allowed_headers: tuple[str, ...] = ("content-type", "authorization")
    exposed_headers: tuple[str, ...] = ("iggy-view",)
    allow_credentials: bool = False
    allow_private_network: bool = False


@dataclass(frozen=True)
class JwtSettings:
    algorithm: str = "HS256"
    issuer: str = "iggy.apache.org"
    audience: str = "iggy.apache.org"
    valid_issuers: tuple[str, ...] = ("iggy.apache.org",)
    valid_audiences: tuple[str, ...] = ("iggy.apache.org",)
    access_token_expiry: int = 3600  # seconds
    clock_skew: int = 5  # seconds
    not_before: int = 0  # seconds
    secret: bytes = b""  # empty: generate one per start (JwtIssuer), or cluster_jwt_key


@dataclass(frozen=True)
class HttpSettings:
    host: str = "127.0.0.1"
    port: int = 3000
    max_request_size: int = 2_000_000
    header_read_timeout: float = 10.0  # seconds; 0 = no limit
    body_read_timeout: float = 30.0
    keep_alive_timeout: float = 5.0
    max_header_size: int = 32 * 1024
    max_connections: int = 1024
    web_ui: bool = False
    web_ui_dir: str = ""
    metrics_enabled: bool = True
    metrics_endpoint: str = "/metrics"
    tls_cert_file: str = ""
    tls_key_file: str = ""
    cors: CorsSettings = field(default_factory=CorsSettings)
    jwt: JwtSettings = field(default_factory=JwtSettings)
    # cluster mode with a JWT key every node shares: a follower forwards what it does not
    # serve to the leader and relays the answer (iggy.http.forward); off: 307 / 503
    forward_to_leader: bool = False
    # how long a follower keeps trying to reach a leader for one forwarded request
    forward_budget: float = 15.0


# HKDF's `info`: what the derived key is for. Changing it changes the key, so every token
# issued before the change stops being valid.
JWT_KEY_LABEL = b"iggy http.jwt HMAC key from cluster.auth.shared_secret, v1"
JWT_KEY_BYTES = 64  # enough for HS512 (RFC 7518 3.2), and more than HS256/HS384 need


def cluster_jwt_key(shared_secret: str, cluster_name: str) -> bytes:
    """The JWT signing key of a cluster whose `http.jwt` has no secret of its own: derived
    from `cluster.auth.shared_secret`, so every node signs and checks tokens with the same
    key and a token issued by one node is valid on every node (and a forwarded request's
    bearer on the leader).

    HKDF-SHA256 (RFC 5869) with a fixed label as `info` and the cluster name as the salt,
    rather than the shared secret itself or an HMAC keyed with it: the replica link's
    handshake already computes HMAC-SHA256 keyed with the shared secret over bytes a peer
    partly chooses (iggy.cluster.replica_frames), and a JWT key must never be a value that
    handshake could be made to produce. HKDF feeds the secret in as the *message* of its
    extract step (keyed with the salt), a different function of the secret, and its `info`
    separates this key from any other one derived later. The salt ties the key to the
    cluster, so two clusters that share a secret do not accept each other's tokens.
    Rotating the shared secret changes the key: every token issued before is refused.
    An explicit `http.jwt.encoding_secret` always wins over this key.
    """
    kdf = HKDF(algorithm=hashes.SHA256(), length=JWT_KEY_BYTES, salt=cluster_name.encode("utf-8"), info=JWT_KEY_LABEL)
    return kdf.derive(shared_secret.encode("utf-8"))


def random_secret() -> bytes:
    """A random alphanumeric secret of 64..95 characters.

    The reference server generates 32..63 characters; HS384/HS512 want keys of at least 48/64
    bytes (RFC 7518 3.2, and PyJWT warns on every token otherwise), so this one is longer.
    """
    alphabet = string.ascii_letters + string.digits
    length = 64 + secrets.randbelow(32)
    return "".join(secrets.choice(alphabet) for _ in range(length)).encode("ascii")


def _get(section: object, name: str, default: Any) -> Any:
    value = getattr(section, name, None) if section is not None else None
    return default if value is None else value


def _seconds(value: object, default: int) -> int:
    """A duration from config ("1 h", "5 s", "never", or a number of seconds) in seconds."""
    if value is None or value == "":
        return default
    if isinstance(value, (int, float)):
        return int(value)
    text = str(value).strip().lower()
    if text in ("never", "unlimited", "none"):
        return NEVER_SECONDS
    if text.isdigit():
        return int(text)
    return parse_duration(text) // 1_000_000  # microseconds -> whole seconds


def _fine_seconds(value: object, default: float) -> float:
    """A duration from config in seconds, keeping fractions ("500 ms" -> 0.5)."""
    if value is None or value == "":
        return default
    if isinstance(value, (int, float)):
        return float(value)
    return parse_duration(str(value)) / 1_000_000


def _bytes(value: object, default: int) -> int:
    if value is None or value == "":
        return default
    if isinstance(value, int):
        return value
    text = str(value).strip()
    if text.isdigit():
        return int(text)
    return parse_size(text)


def _secret(jwt: object) -> bytes:
    encoding = _get(jwt, "encoding_secret", "")
    decoding = _get(jwt, "decoding_secret", "")
    if encoding and decoding and encoding != decoding:
        raise ValueError("http.jwt.encoding_secret and decoding_secret must be equal for HMAC algorithms")
    text: str = encoding or decoding
    if not text:
        return b""
    if _get(jwt, "use_base64_secret", False):
        return base64.b64decode(text)
    return text.encode("utf-8")


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


def from_config(cfg: object) -> HttpSettings:
    """Resolve `cfg.http` into HttpSettings (the JWT secret stays empty if not configured,
    except in a cluster with `cluster.auth`: `cluster_jwt_key`).

    Requests a follower does not serve are forwarded to the leader (`forward_to_leader`)
    when every node can check every node's tokens: `cluster.auth` is on or `http.jwt` has a
    secret of its own (the same on every node), as upstream decides; without either each
    node's tokens are its own and a follower answers 307 / 503 instead.

    `cfg` is an iggy.config.Config, or any object with the same attributes (tests)."""
    http = getattr(cfg, "http", None)
    host, port = split_address(_get(http, "address", "127.0.0.1:3000"))
    cors = _get(http, "cors", None)
    jwt = _get(http, "jwt", None)
    metrics = _get(http, "metrics", None)
    tls = _get(http, "tls", None)
    algorithm = str(_get(jwt, "algorithm", "HS256")).upper()
    if algorithm not in JWT_ALGORITHMS:
        raise ValueError(f"http.jwt.algorithm must be one of {', '.join(JWT_ALGORITHMS)}, not {algorithm!r}")
    issuer = _get(jwt, "issuer", "iggy.apache.org")
    audience = _get(jwt, "audience", "iggy.apache.org")
    tls_on = bool(_get(tls, "enabled", False))
    secret = _secret(jwt)
    cluster = _get(cfg, "cluster", None)
    clustered = bool(_get(cluster, "enabled", False))
    auth = _get(cluster, "auth", None)
    cluster_auth = clustered and bool(_get(auth, "enabled", False)) and bool(_get(auth, "shared_secret", ""))
    forward = clustered and (cluster_auth or bool(secret))
    if not secret and cluster_auth:
        secret = cluster_jwt_key(str(_get(auth, "shared_secret", "")), str(_get(cluster, "name", "")))
    return HttpSettings(
        host=host,
        port=port,
        max_request_size=_bytes(_get(http, "max_request_size", None), 2_000_000),
        header_read_timeout=_fine_seconds(_get(http, "header_read_timeout", None), 10.0),
        body_read_timeout=_fine_seconds(_get(http, "body_read_timeout", None), 30.0),
        keep_alive_timeout=_fine_seconds(_get(http, "keep_alive_timeout", None), 5.0),
        max_header_size=_bytes(_get(http, "max_header_size", None), 32 * 1024),
        max_connections=int(_get(http, "max_connections", 1024)),
        web_ui=bool(_get(http, "web_ui", False)),
        web_ui_dir=str(_get(http, "web_ui_dir", "")),
        metrics_enabled=bool(_get(metrics, "enabled", True)),
        metrics_endpoint=str(_get(metrics, "endpoint", "/metrics")) or "/metrics",
        tls_cert_file=str(_get(tls, "cert_file", "")) if tls_on else "",
        tls_key_file=str(_get(tls, "key_file", "")) if tls_on else "",
        cors=CorsSettings(
            enabled=bool(_get(cors, "enabled", True)),
            allowed_origins=tuple(_get(cors, "allowed_origins", ["*"])),
            allowed_methods=tuple(m.upper() for m in _get(cors, "allowed_methods", ["GET", "POST", "PUT", "DELETE"])),
            allowed_headers=tuple(_get(cors, "allowed_headers", ["content-type", "authorization"])),
            exposed_headers=tuple(_get(cors, "exposed_headers", ["iggy-view"])),
            allow_credentials=bool(_get(cors, "allow_credentials", False)),
            allow_private_network=bool(_get(cors, "allow_private_network", False)),
        ),
        jwt=JwtSettings(
            algorithm=algorithm,
            issuer=issuer,
            audience=audience,
            valid_issuers=tuple(_get(jwt, "valid_issuers", None) or [issuer]),
            valid_audiences=tuple(_get(jwt, "valid_audiences", None) or [audience]),
            access_token_expiry=_seconds(_get(jwt, "access_token_expiry", None), 3600),
            clock_skew=_seconds(_get(jwt, "clock_skew", None), 5),
            not_before=_seconds(_get(jwt, "not_before", None), 0),
            secret=secret,
        ),
        forward_to_leader=forward,
        # a failover takes about 1.2 x heartbeat_timeout (docs/CLUSTER.md): three of them
        forward_budget=3 * float(_get(cluster, "heartbeat_timeout", 5.0)),
    )
