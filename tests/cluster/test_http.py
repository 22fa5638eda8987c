"""The REST API on a cluster (docs/CLUSTER.md, "What the nodes answer"), with a real etcd and
three nodes on loopback:

- with `cluster.auth` every node signs tokens with the key derived from the shared secret, so a
  token issued by one node is valid on every node; without it each node's tokens are its own;
- with `cluster.auth` a follower forwards what it does not serve to the leader and relays the
  answer: a stream created through a follower is the leader's, messages sent through one
  follower are polled through the other, an error of the leader comes back as it is; a user
  created through a follower logs in on another and its token is valid on every node; a logout
  on one node revokes the token on every node (a metadata change), restarts included; a user
  logging out 10 x the cap keeps at most the cap of revocations on each node, every token of
  theirs refused, and meta/ in etcd compacted;
- a forwarded request (`iggy-forwarded`) reaching a node that is not the leader is refused at
  once (503, 58) and never forwarded again;
- with no leader (etcd paused) a follower gives up after its budget with a 503 `no_leader`.

Without `cluster.auth` a follower still answers 307 / 503 (tests/cluster/test_election.py).
"""

from __future__ import annotations

import asyncio
import base64
import time

import aetcd
import httpx
import pytest

from iggy.protocol.errors import ErrorCode
from tests.cluster.nodes import (
    HEARTBEAT_TIMEOUT,
    START_ELECTION,
    TestCluster,
    leader_of,
    local_journal,
    local_metadata,
    metadata,
    wait_for,
)

pytestmark = pytest.mark.engine

SECRET = "a shared secret of at least 32 bytes, for the tests"
AUTH = {"IGGY_CLUSTER_AUTH_ENABLED": "true", "IGGY_CLUSTER_AUTH_SHARED_SECRET": SECRET}


@pytest.fixture(scope="module")
def authed(tmp_path_factory, shared_etcd):
    c = TestCluster(tmp_path_factory.mktemp("authed"), shared_etcd.url, name="http-authed", env=AUTH).start()
    yield c
    c.stop()


@pytest.fixture(scope="module")
def plain(tmp_path_factory, shared_etcd):
    c = TestCluster(tmp_path_factory.mktemp("plain"), shared_etcd.url, name="http-plain").start()
    yield c
    c.stop()


def http(cluster: TestCluster, i: int) -> httpx.Client:
    return httpx.Client(base_url=f"http://127.0.0.1:{cluster.ports[i]['http']}", timeout=60)


def login(cluster: TestCluster, i: int) -> dict[str, str]:
    with http(cluster, i) as client:
        r = client.post("/users/login", json={"username": "iggy", "password": "iggy"})
        assert r.status_code == 200, r.text
        return {"Authorization": f"Bearer {r.json()['access_token']['token']}"}


def test_with_cluster_auth_a_token_of_one_node_is_valid_on_every_node(authed):
    authed.wait_leader(START_ELECTION)
    for issuer in range(3):
        auth = login(authed, issuer)
        for i in range(3):
            with http(authed, i) as client:
                # answered by each node itself, follower or leader
                r = client.get("/cluster/metadata", headers=auth)
                assert r.status_code == 200, (issuer, i, r.text)


def test_without_cluster_auth_a_token_is_valid_only_on_its_node(plain):
    plain.wait_leader(START_ELECTION)
    auth = login(plain, 0)
    with http(plain, 0) as client:
        assert client.get("/cluster/metadata", headers=auth).status_code == 200
    for i in (1, 2):
        with http(plain, i) as client:
            r = client.get("/cluster/metadata", headers=auth)
            assert r.status_code == 401, r.text


def test_a_follower_forwards_to_the_leader_and_relays_its_answer(authed):
    leader = authed.wait_leader(START_ELECTION)
    f1, f2 = [i for i in range(3) if i != leader]
    auth = login(authed, f1)  # issued by a follower, used on the leader by the forward
    with http(authed, f1) as client:
        created = client.post("/streams", headers=auth, json={"name": "fwd"})
        assert created.status_code == 200, created.text
        assert created.json()["name"] == "fwd"
        assert created.headers["iggy-view"] == "0"
        topic = {
            "name": "t",
            "partitions_count": 1,
            "compression_algorithm": "none",
            "message_expiry": 0,
            "max_topic_size": 0,
        }
        assert client.post("/streams/fwd/topics", headers=auth, json=topic).status_code == 200
        # the leader's refusal comes back as it is (not retried, not a 503)
        again = client.post("/streams", headers=auth, json={"name": "fwd"})
        assert again.status_code == 400
        assert again.json()["id"] == ErrorCode.STREAM_NAME_ALREADY_EXISTS
        sent = client.post(
            "/streams/fwd/topics/t/messages",
            headers=auth,
            json={
                "partitioning": {"kind": "balanced", "value": ""},
                "messages": [{"payload": base64.b64encode(b"hello").decode()}],
            },
        )
        assert sent.status_code == 201, sent.text
    with http(authed, leader) as client:  # the leader applied it
        assert client.get("/streams/fwd", headers=login(authed, leader)).status_code == 200
    with http(authed, f2) as client:  # a read through the other follower: the leader's answer
        polled = client.get("/streams/fwd/topics/t/messages?partition_id=0&kind=offset&value=0&count=10", headers=auth)
        assert polled.status_code == 200, polled.text
        assert [base64.b64decode(m["payload"]) for m in polled.json()["messages"]] == [b"hello"]
        # with forwarding a follower never answers 307
        assert client.get("/streams/fwd", headers=auth).status_code == 200


def test_a_user_created_through_a_follower_has_one_token_for_every_node(authed):
    leader = authed.wait_leader(START_ELECTION)
    f1, f2 = [i for i in range(3) if i != leader]
    user = {"username": "http-user", "password": "secret1", "status": "active", "permissions": None}
    with http(authed, f1) as client:
        created = client.post("/users", headers=login(authed, f1), json=user)
        assert created.status_code == 200, created.text

    def f2_login():
        with http(authed, f2) as client:
            r = client.post("/users/login", json={"username": "http-user", "password": "secret1"})
            return r.status_code == 200 and {"Authorization": f"Bearer {r.json()['access_token']['token']}"}

    auth = wait_for(f2_login, 15.0, "the user applied on the other follower")
    for i in range(3):
        with http(authed, i) as client:
            assert client.get("/cluster/metadata", headers=auth).status_code == 200
    with http(authed, f1) as client:
        # the leader's own answer for this user (no permission to list streams), relayed
        denied = client.get("/streams", headers=auth)
        assert denied.status_code == 403, denied.text
        assert denied.json()["id"] == ErrorCode.UNAUTHORIZED


def test_with_cluster_auth_a_logout_on_one_node_revokes_the_token_on_every_node(authed):
    leader = authed.wait_leader(START_ELECTION)
    f1, f2 = [i for i in range(3) if i != leader]
    auth = login(authed, f1)
    other = login(authed, f1)  # another token of the same user stays valid
    with http(authed, f2) as client:
        out = client.delete("/users/logout", headers=auth)  # forwarded: the leader revokes it
        assert out.status_code == 204, out.text
    for i in (leader, f1, f2):
        with http(authed, i) as client:

            def refused(client=client):
                return client.get("/cluster/metadata", headers=auth).status_code == 401

            wait_for(refused, 15.0, f"node {i} refuses the logged-out token")
            assert client.get("/cluster/metadata", headers=other).status_code == 200
    # a restarted node still refuses it (the revocation is in its metadata)
    authed.nodes[f1].restart()
    with http(authed, f1) as client:
        assert client.get("/cluster/metadata", headers=auth).status_code == 401
        assert client.get("/cluster/metadata", headers=other).status_code == 200


CAP = 3  # IGGY_CLUSTER_REVOCATIONS_PER_USER of the next test


def test_a_user_logging_out_over_and_over_keeps_at_most_the_cap_of_revocations(tmp_path, shared_etcd):
    """10 x the cap of logouts: every logged-out token is refused on every node, each node keeps
    at most CAP of the user's revocations (the leader ends all of their tokens with a new
    generation instead), and meta/ in etcd is compacted down to a few keys."""
    env = {**AUTH, "IGGY_CLUSTER_REVOCATIONS_PER_USER": str(CAP), "IGGY_CLUSTER_COMPACT_AFTER": "5"}
    cluster = TestCluster(tmp_path, shared_etcd.url, name="http-capped", env=env).start()
    try:
        leader = cluster.wait_leader(START_ELECTION)
        f1, f2 = [i for i in range(3) if i != leader]
        user = {"username": "leaver", "password": "secret1", "status": "active", "permissions": None}
        with http(cluster, leader) as client:
            assert client.post("/users", headers=login(cluster, leader), json=user).status_code == 200
        first = cluster_index(cluster, leader)
        tokens = []
        with http(cluster, f1) as on_f1, http(cluster, f2) as on_f2:
            for _ in range(10 * CAP):
                r = on_f1.post("/users/login", json={"username": "leaver", "password": "secret1"})
                assert r.status_code == 200, r.text
                tokens.append({"Authorization": f"Bearer {r.json()['access_token']['token']}"})
                out = on_f2.delete("/users/logout", headers=tokens[-1])  # forwarded to the leader
                assert out.status_code == 204, out.text
        last = first + 10 * CAP  # one record per logout: a revocation or a new generation
        for i in range(3):
            state = wait_for(
                lambda i=i: (s := local_metadata(cluster.nodes[i])).cluster_index >= last and s,
                15.0,
                f"node {i} applies every logout",
            )
            uid = state.user_by_name("leaver").id
            assert len(state.revoked_jwts) <= CAP and len(state.jwts_of.get(uid, ())) <= CAP
            with http(cluster, i) as client:
                for auth in tokens:
                    assert client.get("/cluster/metadata", headers=auth).status_code == 401
        # the leader wrote a revocation for CAP logouts, then one new generation, and again
        _snapshot, records = local_journal(cluster.nodes[leader])
        ops = [r["op"] for r in records if r.get("index", 0) > first]
        assert ops == (["jwt.revoke"] * CAP + ["user.generation"]) * (10 * CAP // (CAP + 1)) + ["jwt.revoke"] * (
            10 * CAP % (CAP + 1)
        )
        # a new login works; etcd keeps at most COMPACT_AFTER keys of meta/ once compacted
        with http(cluster, f2) as client:
            r = client.post("/users/login", json={"username": "leaver", "password": "secret1"})
            fresh = {"Authorization": f"Bearer {r.json()['access_token']['token']}"}
            assert client.get("/cluster/metadata", headers=fresh).status_code == 200
        wait_for(lambda: len(meta_keys(shared_etcd.url, b"/iggy/http-capped/")) <= 5, 15.0, "meta/ compacted")
    finally:
        cluster.stop()


def test_a_user_logging_out_faster_than_the_rate_is_told_to_retry_and_keeps_the_token(tmp_path, shared_etcd):
    """Each logout is an etcd write the leader's main loop waits for: past a user's rate
    (IGGY_CLUSTER_LOGOUTS_PER_SECOND = 0.5, so 2 at once) the leader answers a logout 503 +
    Retry-After with error 58 and revokes nothing; after Retry-After it goes through. A follower
    that forwards a logout retries a 58 (iggy.http.forward), so there the logout just waits."""
    env = {**AUTH, "IGGY_CLUSTER_LOGOUTS_PER_SECOND": "0.5"}
    cluster = TestCluster(tmp_path, shared_etcd.url, name="http-logout-rate", env=env).start()
    try:
        leader = cluster.wait_leader(START_ELECTION)
        follower = (leader + 1) % 3
        user = {"username": "hasty", "password": "secret1", "status": "active", "permissions": None}
        with http(cluster, leader) as client:
            assert client.post("/users", headers=login(cluster, leader), json=user).status_code == 200
            r = client.post("/users/login", json={"username": "hasty", "password": "secret1"})
            first = r.json()["access_token"]["token"]
            more = [client.post("/users/refresh-token", json={"token": first}) for _ in range(4)]
            tokens = [first, *(m.json()["access_token"]["token"] for m in more)]
            bearer = [{"Authorization": f"Bearer {t}"} for t in tokens]
            answers = [client.delete("/users/logout", headers=auth) for auth in bearer[:4]]
            statuses = [a.status_code for a in answers]
            assert statuses[:2] == [204, 204] and 503 in statuses, statuses
            held = statuses.index(503)
            refused = answers[held]
            assert refused.json()["id"] == ErrorCode.TRANSIENT_NOT_ACCEPTED
            wait = int(refused.headers["Retry-After"])
            assert 1 <= wait <= 2
            assert client.get("/cluster/metadata", headers=bearer[held]).status_code == 200  # not revoked
            assert client.get("/cluster/metadata", headers=bearer[0]).status_code == 401
            time.sleep(wait)
            assert client.delete("/users/logout", headers=bearer[held]).status_code == 204
            assert client.get("/cluster/metadata", headers=bearer[held]).status_code == 401
        with http(cluster, follower) as on_follower:  # held back by the rate, then done
            assert on_follower.delete("/users/logout", headers=bearer[4]).status_code == 204
        with http(cluster, leader) as client:
            assert client.get("/cluster/metadata", headers=bearer[4]).status_code == 401
    finally:
        cluster.stop()


def cluster_index(cluster: TestCluster, i: int) -> int:
    return local_metadata(cluster.nodes[i]).cluster_index


def meta_keys(url: str, prefix: bytes) -> list[bytes]:
    async def read() -> list[bytes]:
        host, port = url.removeprefix("http://").split(":")
        async with aetcd.Client(host=host, port=int(port), timeout=5) as client:
            return [kv.key for kv in await client.get_prefix(prefix + b"meta/")]

    return asyncio.run(read())


def test_a_forwarded_request_on_a_node_that_is_not_leader_is_not_forwarded_again(authed):
    leader = authed.wait_leader(START_ELECTION)
    follower = (leader + 1) % 3
    auth = {**login(authed, follower), "iggy-forwarded": "1"}
    with http(authed, follower) as client:
        for r in (client.get("/streams", headers=auth), client.post("/streams", headers=auth, json={"name": "hop"})):
            assert r.status_code == 503, r.text
            assert r.json()["id"] == ErrorCode.TRANSIENT_NOT_ACCEPTED
            assert r.headers["retry-after"] == "1"
    with http(authed, leader) as client:
        assert client.get("/streams/hop", headers=login(authed, leader)).status_code == 404


def test_with_no_leader_a_follower_answers_503_after_its_budget(authed, shared_etcd):
    """Last in the module: etcd is paused (both clusters lose their leader) and resumed."""
    leader = authed.wait_leader(START_ELECTION)
    follower = (leader + 1) % 3
    auth = login(authed, follower)
    shared_etcd.pause()
    try:
        wait_for(
            lambda: leader_of(metadata(authed.address(follower))) is None, 3 * HEARTBEAT_TIMEOUT, "no leader reported"
        )
        with http(authed, follower) as client:
            r = client.post("/streams", headers=auth, json={"name": "leaderless"})
        assert r.status_code == 503, r.text
        assert r.json()["code"] == "no_leader"
        assert r.headers["retry-after"] == "1"
    finally:
        shared_etcd.resume()
    leader = authed.wait_leader(START_ELECTION + 3 * HEARTBEAT_TIMEOUT)
    with http(authed, leader) as client:
        assert client.get("/streams/leaderless", headers=login(authed, leader)).status_code == 404
