"""Permission matrix: every command over TCP (raw frames) and every route over HTTP (JWT), tried
unauthenticated, as a user without the permission and as a user with exactly the needed one.

For each command of tests/reliability/commands.py:

* unauthenticated -> refused with 40 (TCP) / 401 (HTTP), except the public ones;
* the actor with no permissions, and with EVERY flag except the granting ones (at all three
  levels) -> refused with 41 / 403;
* the actor with exactly one granting flag at its level (global, stream or topic, each flag of
  the rule in turn) -> succeeds;
* a refused command changes nothing: the metadata journal does not grow and what root reads
  (streams, topics with partition offsets, groups with members, users, consumer offsets,
  messages) is byte-identical before and after; a successful destructive command does change
  it (so the comparison is known to see changes), and the world is rebuilt after it.

Then every file under the data directory (journal and snapshot decoded with msgpack) and the
server log are searched: passwords only ever appear as Argon2id PHC strings, personal access
tokens only as their BLAKE3 hex digest.

Long form: `python -m tests.reliability.permissions [--engine asyncio]` (the whole matrix is
already the short form; the long form prints the counts).
"""

from __future__ import annotations

import itertools
import json
import os
import struct
import time
from pathlib import Path

import blake3
import httpx
import msgpack

from tests.rawclient import ident, wire_name
from tests.reliability import commands as C
from tests.reliability.common import Client, Launcher, harness_arguments

U32 = struct.Struct("<I")
PASSWORDS = (C.ACTOR_PASSWORD, C.VICTIM_PASSWORD, "victim-new", "secret1")


class Failure(AssertionError):
    pass


def _ok(reply, what: str) -> bytes:
    if reply.command != 8 or reply.code:
        raise Failure(f"{what}: {reply}")
    return reply.body


class Matrix:
    def __init__(self, server):
        self.server = server
        self.root = Client(server.tcp_address)
        self.world = C.World()
        self.tokens: list[str] = []  # raw tokens handed out
        self.counts = {"tcp_calls": 0, "http_calls": 0, "refused_unchanged": 0, "granted": 0}
        self._ensure_actor()
        self.actor = Client(server.tcp_address, login=False)
        _ok_login(self.actor)
        self.build_world()

    # ------------------------------------------------------------------ world

    def _users(self) -> dict[str, int]:
        body = _ok(self.root.read(32), "get users")
        out, pos = {}, 0
        while pos < len(body):
            uid = U32.unpack_from(body, pos)[0]
            pos += 4 + 8 + 1
            n = body[pos]
            out[body[pos + 1 : pos + 1 + n].decode()] = uid
            pos += 1 + n
            pos += 4 + U32.unpack_from(body, pos)[0]
        return out

    def _create_user(self, name: str, password: str, perms=None) -> int:
        body = wire_name(name) + bytes([len(password)]) + password.encode() + b"\x01" + C.permissions_body(perms)
        return U32.unpack_from(_ok(self.root.call(141, 0, body), f"create user {name}"), 4)[0]

    def _ensure_actor(self) -> None:
        users = self._users()
        self.world.actor = users.get(C.ACTOR)
        if self.world.actor is None:
            self.world.actor = self._create_user(C.ACTOR, C.ACTOR_PASSWORD)

    def build_world(self) -> None:
        root, w = self.root, self.world
        for name in self.root.stream_names():
            if name.startswith("pm-"):
                _ok(root.delete_stream(name), f"delete stream {name}")
        for name, uid in self._users().items():
            if uid not in (0, w.actor):
                _ok(root.call(143, 0, ident(uid)), f"delete user {name}")
        w.victim = self._create_user(C.VICTIM, C.VICTIM_PASSWORD, C.flags_dict(("read_streams",)))
        w.stream = U32.unpack_from(_ok(root.create_stream("pm-s"), "create stream"), 4)[0]
        w.topic = U32.unpack_from(_ok(root.create_topic(w.stream, "pm-t", 2), "create topic"), 4)[0]
        reply, _ = root.send(w.stream, w.topic, 0, [b"one", b"two", b"three"])
        _ok(reply, "send")
        _ok(
            root.call(
                161,
                0,
                b"\x01"
                + ident(C.CONSUMER)
                + ident(w.stream)
                + ident(w.topic)
                + b"\x01"
                + U32.pack(0)
                + struct.pack("<Q", 1),
            ),
            "store offset",
        )
        body = ident(w.stream) + ident(w.topic) + wire_name("pm-g")
        w.group = U32.unpack_from(_ok(root.call(139, 0, body), "create group"), 4)[0]
        w.root_client = U32.unpack_from(_ok(root.read(20), "get me"), 0)[0]
        # the actor's own leftovers: its token and group membership
        self.set_actor(None)
        self.actor.call(147, 0, wire_name("pm-tok"))

    def set_actor(self, perms) -> None:
        _ok(self.root.call(145, 0, ident(self.world.actor) + C.permissions_body(perms)), "update permissions")

    def state(self):
        """What a refused command must not change."""
        meta = Path(self.server.data_dir) / "metadata"
        sizes = tuple(os.path.getsize(meta / f) if (meta / f).exists() else -1 for f in ("journal.log", "snapshot.bin"))
        w, root = self.world, self.root
        st = ident(w.stream) + ident(w.topic)
        reads = [(201, b""), (200, ident(w.stream)), (300, st), (601, st), (600, st + ident(w.group)), (32, b"")]
        reads += [(31, ident(uid)) for uid in sorted(self._users().values())]
        for p in (0, 1, 2):
            reads.append((120, b"\x01" + ident(C.CONSUMER) + st + b"\x01" + U32.pack(p)))
        out = [sizes]
        for code, body in reads:
            r = root.read(code, body)
            out.append((code, r.status, r.body))
        r = root.poll(w.stream, w.topic, 0, 0, 100)
        out.append(("poll", r.status, r.body[:4] + r.body[12:]))
        return out

    # ------------------------------------------------------------------ TCP

    def prepare_tcp(self, what: str) -> None:
        w = self.world
        if what == "create_token":
            r = self.actor.call(146, 0, wire_name("pm-tok") + struct.pack("<Q", 0))
            self.tokens.append(_ok(r, "create token")[5:].decode())
        elif what == "join_group":
            _ok(self.actor.call(148, 0, ident(w.stream) + ident(w.topic) + ident(w.group)), "join")

    def run_tcp(self, log=None) -> None:
        self._walk(_Tcp(self), C.COMMANDS, log)

    def run_http(self, log=None) -> None:
        with httpx.Client(base_url=self.server.http_url, timeout=30) as http:
            self._walk(_Http(self, http), C.ROUTES, log)

    def _walk(self, via, entries, log) -> None:
        """Each command or route unauthenticated, then as the actor with each permission set of
        its rule (tests/reliability/commands.py, permission_cases)."""
        for e in entries:
            w = self.world
            where = f"{via.name} {e.name}"
            before = self.state()
            got = via.verdict(e, via.anonymous(e, w))
            self.counts[f"{via.name.lower()}_calls"] += 1
            want = GRANTED if e.rule == "public" else UNAUTHENTICATED
            if got != want:
                raise Failure(f"{where} unauthenticated: {want} expected, got {got}")
            if e.rule != "public":
                self._unchanged(before, f"{where} unauthenticated")
            for label, perms, should_pass in C.permission_cases(e.rule, w):
                self.set_actor(perms)
                if should_pass and e.prepare:
                    via.prepare(e.prepare)
                before = self.state()
                r = via.call(e, w)
                self.counts[f"{via.name.lower()}_calls"] += 1
                got, want = via.verdict(e, r), GRANTED if should_pass else FORBIDDEN
                actor = f"{where} as actor with {label}"
                if got != want:
                    raise Failure(f"{actor}: {want} expected, got {got}")
                if not should_pass:
                    self._unchanged(before, actor)
                    continue
                self.counts["granted"] += 1
                if e.name in ("create_personal_access_token", "create_token"):
                    self.tokens.append(via.token(r))
                if e.after == "relogin":
                    via.relogin()
                if e.destructive:
                    if e.name != "delete_segments" and self.state() == before:
                        raise Failure(f"{actor}: succeeded but the state comparison saw no change")
                    self.build_world()
            if log:
                log(f"{where}: ok")

    def _unchanged(self, before, where: str) -> None:
        after = self.state()
        if after != before:
            diff = [b for b, a in itertools.zip_longest(before, after) if a != b]
            raise Failure(f"{where}: refused, but the state changed: {diff[:2]}")
        self.counts["refused_unchanged"] += 1

    # ------------------------------------------------------------------ HTTP

    def _http_login(self, http: httpx.Client) -> dict:
        r = http.post("/users/login", json={"username": C.ACTOR, "password": C.ACTOR_PASSWORD})
        if r.status_code != 200:
            raise Failure(f"HTTP login: {r.status_code} {r.text}")
        return {"Authorization": f"Bearer {r.json()['access_token']['token']}"}

    def close(self) -> None:
        self.actor.close()
        self.root.close()


GRANTED, UNAUTHENTICATED, FORBIDDEN = "granted", "unauthenticated", "forbidden"


class _Tcp:
    """The matrix over TCP: raw frames of a C.Command, the actor on its own connection."""

    name = "TCP"

    def __init__(self, matrix: Matrix):
        self.matrix = matrix

    def anonymous(self, cmd, w):
        anon = Client(self.matrix.server.tcp_address, login=False)  # a fresh connection
        try:
            return anon.call(cmd.op, cmd.code, cmd.body(w))
        finally:
            anon.close()

    def call(self, cmd, w):
        return self.matrix.actor.call(cmd.op, cmd.code, cmd.body(w))

    def verdict(self, cmd, reply) -> str:
        """GRANTED (a reply, FeatureUnavailable for the unavailable ones), UNAUTHENTICATED
        (status 40), FORBIDDEN (41), else the reply."""
        if reply.command == 8 and reply.code == (5 if cmd.rule == "unavailable" else 0):
            return GRANTED
        if reply.status == 40:
            return UNAUTHENTICATED
        return FORBIDDEN if reply.code == 41 else repr(reply)

    def token(self, reply) -> str:
        return reply.body[5:].decode()

    def prepare(self, what: str) -> None:
        self.matrix.prepare_tcp(what)

    def relogin(self) -> None:
        _ok_login(self.matrix.actor)


class _Http:
    """The matrix over HTTP: a C.Route with the actor's JWT, or no Authorization header."""

    name = "HTTP"

    def __init__(self, matrix: Matrix, http: httpx.Client):
        self.matrix, self.http = matrix, http
        self.auth = matrix._http_login(http)

    def anonymous(self, route, w):
        return route.request(self.http, w, {})

    def call(self, route, w):
        return route.request(self.http, w, self.auth)

    def verdict(self, route, r) -> str:
        """GRANTED (the route's success status), UNAUTHENTICATED (401), FORBIDDEN (403), else
        the status and the start of the body."""
        known = {route.ok: GRANTED, 401: UNAUTHENTICATED, 403: FORBIDDEN}
        return known.get(r.status_code, f"{r.status_code} {r.text[:300]}")

    def token(self, r) -> str:
        return r.json()["token"]

    def prepare(self, what: str) -> None:
        if what == "create_token":
            t = self.http.post("/personal-access-tokens", json={"name": "pm-tok", "expiry": 0}, headers=self.auth)
            self.matrix.tokens.append(t.json()["token"])

    def relogin(self) -> None:
        self.auth = self.matrix._http_login(self.http)


def _ok_login(client: Client) -> None:
    r = client.login(C.ACTOR, C.ACTOR_PASSWORD)
    if r.command != 8 or r.status:
        raise Failure(f"actor login: {r}")


# --------------------------------------------------------------------------- secrets at rest


def stored_secrets(data_dir) -> tuple[list, list, int]:
    """(password hashes, token hashes, records read) from snapshot.bin and journal.log.

    The snapshot holds users as [id, username, password_hash, ...] and tokens as
    [user_id, name, token_hash, expiry]; journal records are dicts with those keys.
    """
    meta = Path(data_dir) / "metadata"
    passwords, tokens, records = [], [], 0
    snap = meta / "snapshot.bin"
    if snap.exists():
        state = msgpack.unpackb(snap.read_bytes()[24:], raw=False, strict_map_key=False)
        passwords += [u[2] for u in state["users"]]
        tokens += [t[2] for t in state["tokens"]]
        records += 1
    journal = meta / "journal.log"
    if journal.exists():
        raw, pos = journal.read_bytes(), 0
        while pos + 12 <= len(raw):
            n = U32.unpack_from(raw, pos)[0]
            rec = msgpack.unpackb(raw[pos + 12 : pos + 12 + n], raw=False, strict_map_key=False)
            records += 1
            if "password_hash" in rec:
                passwords.append(rec["password_hash"])
            if "token_hash" in rec:
                tokens.append(rec["token_hash"])
            pos += 12 + n
    return passwords, tokens, records


def check_secrets_at_rest(data_dir, log_text: str, tokens: list[str], passwords=PASSWORDS) -> dict:
    """Passwords only as Argon2id PHC strings, tokens only as BLAKE3 hex; nothing in clear anywhere."""
    hashes, token_hashes, records = stored_secrets(data_dir)
    if not hashes:
        raise Failure("no password hashes found in the metadata")
    for h in hashes:
        if not (isinstance(h, str) and h.startswith("$argon2id$v=19$m=19456,t=2,p=1$")):
            raise Failure(f"a password is stored as {str(h)[:40]!r}, not an Argon2id PHC string")
    known = {blake3.blake3(t.encode()).hexdigest() for t in tokens}
    for h in token_hashes:
        if not (isinstance(h, str) and len(h) == 64 and all(c in "0123456789abcdef" for c in h)):
            raise Failure(f"a token is stored as {str(h)[:40]!r}, not a BLAKE3 hex digest")
    if tokens and not (set(token_hashes) & known):
        raise Failure("none of the tokens handed out is stored as its BLAKE3 digest")
    secrets = [s.encode() for s in passwords] + [t.encode() for t in tokens]
    files = 0
    for path in Path(data_dir).rglob("*"):
        if path.is_file():
            files += 1
            raw = path.read_bytes()
            for s in secrets:
                if s in raw:
                    raise Failure(f"{path} holds a secret in clear ({s[:6]!r}...)")
    for s in secrets:
        if s.decode() in log_text:
            raise Failure(f"the server log holds a secret in clear ({s[:6]!r}...)")
    return {
        "metadata_records": records,
        "password_hashes": len(hashes),
        "token_hashes": len(token_hashes),
        "files_scanned": files,
        "tokens_checked": len(tokens),
    }


def run(server, log=None) -> dict:
    m = Matrix(server)
    try:
        m.run_tcp(log)
        if server.http_port:
            m.run_http(log)
        stats = dict(m.counts)
        # one token that stays, so the snapshot below holds a token digest too
        reply = m.actor.call(146, 0, wire_name("pm-keep") + struct.pack("<Q", 0))
        m.tokens.append(_ok(reply, "create token")[5:].decode())
    finally:
        m.close()
    journal = check_secrets_at_rest(server.data_dir, server.log(), m.tokens)
    stats["journal_records"] = journal["metadata_records"]
    # a restart with a snapshot after every record puts the whole state in snapshot.bin too
    server.extra_env["IGGY_SYSTEM_METADATA_SNAPSHOT_EVERY"] = "1"
    server.restart()
    c = Client(server.tcp_address)
    try:
        _ok(c.create_stream("pm-snapshot"), "create stream")
    finally:
        c.close()
    if not (Path(server.data_dir) / "metadata" / "snapshot.bin").exists():
        raise Failure("no metadata snapshot was written")
    stats.update(check_secrets_at_rest(server.data_dir, server.log(), m.tokens))
    stats["tcp_commands"] = len(C.COMMANDS)
    stats["http_routes"] = len(C.ROUTES)
    return stats


def main(argv=None) -> None:
    ap = harness_arguments(__doc__)
    args = ap.parse_args(argv)
    started = time.monotonic()
    with Launcher(args.engine, {"IGGY_SYSTEM_METADATA_SNAPSHOT_EVERY": "1000000"}) as server:
        stats = run(server, log=print)
    stats["seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(stats, indent=2))


if __name__ == "__main__":
    main()
