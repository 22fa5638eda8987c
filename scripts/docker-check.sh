#!/usr/bin/env bash
# Check the Docker deliverables with a real engine, on a fresh Debian machine:
#   1. install docker.io, docker-compose (v1) and debootstrap when missing, start dockerd when
#      no engine answers;
#   2. the base image: pull PYTHON_IMAGE (default python:3.11-slim-bookworm); when the registry
#      cannot be reached, build a stand-in with debootstrap (Debian bookworm minbase + Python
#      3.11, the machine's extra CA certificates) and `docker import` it;
#   3. build docker/Dockerfile on that base (timed; image size);
#   4. run the image under three seccomp settings (Docker's default profile, docker/seccomp-iggy.json,
#      unconfined): wait for the healthcheck, check which engine the log names, and serve the
#      official SDK (login, stream, topic, send, poll), HTTP login and the `iggy` CLI in the
#      container; the container must run as the unprivileged `iggy` user;
#   5. `docker-compose up` / `down` with the named volume (Compose v1, and v2 when installed):
#      only IGGY_ROOT_PASSWORD set, host ports from variables, a message survives down + up;
#   6. the installed runtime dependencies equal docker/constraints.txt;
#   7. docker/docker-compose.cluster.yml (etcd built from docker/etcd.Dockerfile on the same base,
#      three nodes on the host's network, ports from variables): refused without
#      IGGY_CLUSTER_SECRET; every service healthy; the SDK dials a follower and ends on the leader,
#      sends to a (replicated) topic; `docker stop` of the leader's container; a new leader is
#      elected; the message sent before is polled after, with one sent to the new leader; `down -v`.
# Prints a summary (build time, image size, time to healthy per setting, the failover). When no engine can be
# started here it prints "docker-check: SKIPPED: <reason>" and exits 0, so CI can always call it.
#
#   scripts/docker-check.sh                      the whole check
#   IGGY_DOCKER_CHECK_REQUIRED=1 scripts/docker-check.sh   fail (exit 1) instead of skipping
#   PYTHON_IMAGE=... scripts/docker-check.sh     another base image
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
PY=${PYTHON:-$REPO/.venv/bin/python}
[ -x "$PY" ] || PY=python3
PYTHON_IMAGE=${PYTHON_IMAGE:-python:3.11-slim-bookworm}
STANDIN=iggy-standin/python:3.11-bookworm
TAG=iggy-py:check
WORK=$(mktemp -d)
SUMMARY="$WORK/summary"
CONTAINERS=()

say() { echo "docker-check: $*"; }
skip() {
    say "SKIPPED: $*"
    [ "${IGGY_DOCKER_CHECK_REQUIRED:-0}" = 1 ] && exit 1
    exit 0
}
fail() { say "FAILED: $*"; exit 1; }
cleanup() {
    for c in "${CONTAINERS[@]}"; do docker rm -f "$c" >/dev/null 2>&1 || true; done
    if [ -n "${COMPOSE_UP:-}" ]; then compose_cmd down -v >/dev/null 2>&1 || true; fi
    if [ -n "${CLUSTER_UP:-}" ]; then cluster_cmd down -v >/dev/null 2>&1 || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

sudo_cmd=""
[ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"

# ------------------------------------------------------------------ 1. engine
need=()
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
if [ ${#need[@]} -gt 0 ]; then
    say "installing ${need[*]}"
    $sudo_cmd apt-get install -y -q "${need[@]}" >"$WORK/apt.log" 2>&1 \
        || { $sudo_cmd apt-get update -q >>"$WORK/apt.log" 2>&1 && $sudo_cmd apt-get install -y -q "${need[@]}" >>"$WORK/apt.log" 2>&1; } \
        || skip "apt-get install ${need[*]} failed: $(tail -n 3 "$WORK/apt.log" | tr '\n' ' ')"
fi
if ! docker info >/dev/null 2>&1; then
    say "starting dockerd (log: /tmp/iggy-dockerd.log)"
    ($sudo_cmd dockerd >/tmp/iggy-dockerd.log 2>&1 &)
    for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
    docker info >/dev/null 2>&1 || skip "dockerd did not start: $(tail -n 3 /tmp/iggy-dockerd.log | tr '\n' ' ')"
fi
say "engine $(docker version --format '{{.Server.Version}}')"

# ------------------------------------------------------------------ 2. base image
base=$PYTHON_IMAGE
if ! docker image inspect "$base" >/dev/null 2>&1 && ! timeout 60 docker pull -q "$base" >/dev/null 2>&1; then
    base=$STANDIN
    if ! docker image inspect "$base" >/dev/null 2>&1; then
        say "$PYTHON_IMAGE cannot be pulled: building the stand-in $base with debootstrap"
        root="$WORK/rootfs"
        $sudo_cmd debootstrap --variant=minbase bookworm "$root" http://deb.debian.org/debian >"$WORK/debootstrap.log" 2>&1 \
            || fail "debootstrap: $(tail -n 3 "$WORK/debootstrap.log" | tr '\n' ' ')"
        # the machine's extra CA certificates (an intercepting proxy) must be trusted inside too
        if compgen -G "/usr/local/share/ca-certificates/*" >/dev/null; then
            $sudo_cmd mkdir -p "$root/usr/local/share/ca-certificates"
            $sudo_cmd cp /usr/local/share/ca-certificates/* "$root/usr/local/share/ca-certificates/"
        fi
        $sudo_cmd chroot "$root" sh -c 'apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
            python3 python3-pip python3-venv python3-dev python-is-python3 ca-certificates && update-ca-certificates \
            && rm -f /usr/lib/python3.11/EXTERNALLY-MANAGED && apt-get clean && rm -rf /var/lib/apt/lists/*' \
            >"$WORK/chroot.log" 2>&1 || fail "stand-in packages: $(tail -n 3 "$WORK/chroot.log" | tr '\n' ' ')"
        printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' | $sudo_cmd tee "$root/etc/pip.conf" >/dev/null
        $sudo_cmd tar -C "$root" -c . | docker import - "$base" >/dev/null
        $sudo_cmd rm -rf "$root"
    fi
fi
say "base image $base"

# ------------------------------------------------------------------ 3. build
# BuildKit when the buildx component is installed, else the classic builder (Debian's docker.io
# ships without buildx); the Dockerfile needs nothing that only one of them has.
builder=classic
docker buildx version >/dev/null 2>&1 && builder=BuildKit
t0=$(date +%s)
DOCKER_BUILDKIT=$([ $builder = BuildKit ] && echo 1 || echo 0) \
    docker build -q --build-arg "PYTHON_IMAGE=$base" -f docker/Dockerfile -t "$TAG" . >"$WORK/build.log" 2>&1 \
    || { tail -n 40 "$WORK/build.log"; fail "docker build"; }
build_s=$(( $(date +%s) - t0 ))
size=$(docker image inspect "$TAG" --format '{{.Size}}')
echo "build: ${build_s} s ($builder builder, base $base); image size $((size / 1000000)) MB" | tee -a "$SUMMARY"
user=$(docker image inspect "$TAG" --format '{{.Config.User}}')
[ "$user" = iggy ] || fail "the image runs as '$user', not as the unprivileged user iggy"

# ------------------------------------------------------------------ helpers
free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_healthy() {  # container -> seconds until the healthcheck passed
    local c=$1 start=$2 state
    for _ in $(seq 1 120); do
        state=$(docker inspect "$c" --format '{{.State.Health.Status}}' 2>/dev/null || echo gone)
        case $state in
            healthy) echo $(( $(date +%s) - start )); return 0 ;;
            unhealthy|gone) break ;;
        esac
        sleep 1
    done
    docker logs "$c" 2>&1 | tail -n 30
    return 1
}

sdk_round_trip() {  # tcp port, http port, password, stream name -> SDK send/poll + HTTP login
    "$PY" - "$@" <<'EOF'
import asyncio, json, sys, urllib.request
from apache_iggy import Consumer, IggyClient, PollingStrategy, SendMessage
tcp, http, password, stream = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
async def main():
    c = IggyClient(f"127.0.0.1:{tcp}")
    await c.connect()
    await c.login_user("iggy", password)
    await c.create_stream(stream)
    await c.create_topic(stream, "t", partitions_count=1)
    await c.send_messages(stream, "t", 0, [SendMessage("hello from the host")])
    got = await c.poll_messages(stream, "t", consumer=Consumer.Single(1), partition_id=0,
                                polling_strategy=PollingStrategy.First(), count=10, auto_commit=False)
    assert [m.payload() for m in got] == [b"hello from the host"], got
asyncio.run(main())
req = urllib.request.Request(f"http://127.0.0.1:{http}/users/login", method="POST",
                             data=json.dumps({"username": "iggy", "password": password}).encode(),
                             headers={"content-type": "application/json"})
assert "access_token" in json.load(urllib.request.urlopen(req, timeout=10))
EOF
}

# ------------------------------------------------------------------ 4. seccomp settings
# Docker 25+'s default profile blocks io_uring, Debian's Docker 20.10 does not: the profile
# "docker25" (seccomp-iggy.json without the io_uring rule) stands for it on any engine version.
"$PY" - "$REPO/docker/seccomp-iggy.json" "$WORK/seccomp-docker25.json" <<'EOF'
import json, sys
profile = json.load(open(sys.argv[1]))
io_uring = {"io_uring_setup", "io_uring_enter", "io_uring_register"}
for rule in profile["syscalls"]:
    rule["names"] = [n for n in rule["names"] if n not in io_uring]
profile["syscalls"] = [r for r in profile["syscalls"] if r["names"]]
json.dump(profile, open(sys.argv[2], "w"))
EOF
for setting in default docker25 profile unconfined; do
    case $setting in
        default) opt=(); expect="any" ;;
        docker25) opt=(--security-opt "seccomp=$WORK/seccomp-docker25.json"); expect="asyncio" ;;
        profile) opt=(--security-opt "seccomp=$REPO/docker/seccomp-iggy.json"); expect="uring" ;;
        unconfined) opt=(--security-opt seccomp=unconfined); expect="uring" ;;
    esac
    tcp=$(free_port); http=$(free_port)
    name="iggy-check-$setting-$$"
    start=$(date +%s)
    docker run -d --name "$name" "${opt[@]}" -p "127.0.0.1:$tcp:8090" -p "127.0.0.1:$http:3000" \
        -e IGGY_ROOT_PASSWORD=secret-$setting "$TAG" >/dev/null
    CONTAINERS+=("$name")
    healthy=$(wait_healthy "$name" "$start") || fail "$setting: never healthy"
    # read from a file: `docker logs | grep -q` under pipefail fails when grep's early exit
    # gives docker logs a SIGPIPE
    docker logs "$name" >"$WORK/$name.log" 2>&1
    engine=$(sed -n 's/.*started (engine: \([a-z]*\).*/\1/p' "$WORK/$name.log" | head -n 1)
    if [ "$expect" != any ] && [ "$engine" != "$expect" ]; then
        fail "$setting: engine '$engine', expected $expect"
    fi
    # a fallback must say which syscall failed with which errno, and what to change
    fallback=""
    if [ "$engine" = asyncio ]; then
        fallback=$(grep -o "io_uring_setup failed with errno [0-9]* [A-Z]*" "$WORK/$name.log" | head -n 1)
        grep -q "io_uring_setup failed with errno .*seccomp-iggy.json" "$WORK/$name.log" \
            || fail "$setting: the fallback line names no syscall, errno and profile"
        fallback=" ($fallback, the log names docker/seccomp-iggy.json)"
    fi
    sdk_round_trip "$tcp" "$http" "secret-$setting" "s-$setting" || fail "$setting: SDK/HTTP round trip"
    docker exec "$name" iggy -u iggy -p "secret-$setting" stream list >/dev/null || fail "$setting: CLI in the container"
    [ "$(docker exec "$name" id -un)" = iggy ] || fail "$setting: not running as iggy"
    echo "seccomp $setting: engine $engine$fallback, healthy after ${healthy} s, SDK + HTTP + CLI OK, user iggy" | tee -a "$SUMMARY"
    docker rm -f "$name" >/dev/null
done

# ------------------------------------------------------------------ 5. compose, v1 and v2
compose_versions=(v1)
docker compose version >/dev/null 2>&1 && compose_versions+=(v2)
for version in "${compose_versions[@]}"; do
    compose_cmd() {
        if [ "$version" = v1 ]; then (cd docker && docker-compose "$@"); else docker compose -f docker/docker-compose.yml "$@"; fi
    }
    export IGGY_ROOT_PASSWORD=compose-secret IGGY_IMAGE=$TAG
    unset IGGY_ROOT_USERNAME
    IGGY_TCP_PORT=$(free_port); IGGY_HTTP_PORT=$(free_port); IGGY_QUIC_PORT=$(free_port); IGGY_WEBSOCKET_PORT=$(free_port)
    export IGGY_TCP_PORT IGGY_HTTP_PORT IGGY_QUIC_PORT IGGY_WEBSOCKET_PORT
    COMPOSE_UP=1
    start=$(date +%s)
    compose_cmd up -d --no-build >"$WORK/compose.log" 2>&1 || { cat "$WORK/compose.log"; fail "compose $version up"; }
    cid=$(compose_cmd ps -q iggy)
    healthy=$(wait_healthy "$cid" "$start") || fail "compose $version: never healthy"
    sdk_round_trip "$IGGY_TCP_PORT" "$IGGY_HTTP_PORT" compose-secret "compose-$version" || fail "compose $version: round trip"
    compose_cmd down >/dev/null 2>&1
    compose_cmd up -d --no-build >/dev/null 2>&1 || fail "compose $version: second up"
    cid=$(compose_cmd ps -q iggy)
    wait_healthy "$cid" "$(date +%s)" >/dev/null || fail "compose $version: never healthy after down/up"
    docker exec "$cid" iggy -u iggy -p compose-secret stream get "compose-$version" >/dev/null \
        || fail "compose $version: the stream did not survive down + up on the volume"
    compose_cmd down -v >/dev/null 2>&1
    COMPOSE_UP=
    echo "compose $version: up, healthy after ${healthy} s, only IGGY_ROOT_PASSWORD set, ports from variables, data kept across down/up" | tee -a "$SUMMARY"
done

# ------------------------------------------------------------------ 6. pinned dependencies
docker run --rm --entrypoint /opt/iggy/bin/python "$TAG" -m pip freeze --exclude iggy 2>/dev/null | sort >"$WORK/freeze.txt"
sed '/^#/d; /^$/d' docker/constraints.txt | sort >"$WORK/constraints.txt"
diff -u "$WORK/constraints.txt" "$WORK/freeze.txt" >"$WORK/freeze.diff" \
    || { cat "$WORK/freeze.diff"; fail "installed runtime dependencies differ from docker/constraints.txt (scripts/docker-constraints.sh regenerates it)"; }
echo "runtime dependencies: $(wc -l <"$WORK/freeze.txt") packages, equal to docker/constraints.txt" | tee -a "$SUMMARY"

# ------------------------------------------------------------------ 7. the cluster compose
# One Compose (v2 when installed, else v1), the cluster's own project name, every host port free.
ETCD_TAG=iggy-etcd:check
cluster_t0=$(date +%s)
t0=$(date +%s)
DOCKER_BUILDKIT=$([ $builder = BuildKit ] && echo 1 || echo 0) \
    docker build -q --build-arg "BASE_IMAGE=$base" -f docker/etcd.Dockerfile -t "$ETCD_TAG" . >"$WORK/etcd-build.log" 2>&1 \
    || { tail -n 40 "$WORK/etcd-build.log"; fail "docker build docker/etcd.Dockerfile"; }
etcd_build_s=$(( $(date +%s) - t0 ))
cluster_version=${compose_versions[-1]}
cluster_cmd() {
    if [ "$cluster_version" = v1 ]; then
        (cd docker && docker-compose -p "iggy-cluster-check-$$" -f docker-compose.cluster.yml "$@")
    else
        docker compose -p "iggy-cluster-check-$$" -f docker/docker-compose.cluster.yml "$@"
    fi
}
# 17 distinct free ports (etcd's two, then tcp quic http websocket tcp_replica per node; QUIC's
# are UDP), held open together so that none is handed out twice
read -r -a ports <<<"$("$PY" -c '
import socket
held = []
for kind in ["tcp"] * 2 + ["tcp", "udp", "tcp", "tcp", "tcp"] * 3:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    held.append(s)
print(" ".join(str(s.getsockname()[1]) for s in held))
')"
export IGGY_ETCD_PORT=${ports[0]} IGGY_ETCD_PEER_PORT=${ports[1]}
for i in 0 1 2; do
    j=$((2 + 5 * i))
    export "IGGY_NODE${i}_TCP_PORT=${ports[j]}" "IGGY_NODE${i}_QUIC_PORT=${ports[j + 1]}" \
        "IGGY_NODE${i}_HTTP_PORT=${ports[j + 2]}" "IGGY_NODE${i}_WEBSOCKET_PORT=${ports[j + 3]}" \
        "IGGY_NODE${i}_REPLICA_PORT=${ports[j + 4]}"
done
export IGGY_IMAGE=$TAG IGGY_ETCD_IMAGE=$ETCD_TAG IGGY_ROOT_PASSWORD=cluster-root
unset IGGY_ROOT_USERNAME IGGY_CLUSTER_SECRET IGGY_CLUSTER_IP
# without the shared secret the compose refuses to start
if cluster_cmd up -d --no-build >"$WORK/cluster.log" 2>&1; then
    CLUSTER_UP=1
    fail "cluster compose: started without IGGY_CLUSTER_SECRET"
fi
grep -q IGGY_CLUSTER_SECRET "$WORK/cluster.log" \
    || { cat "$WORK/cluster.log"; fail "cluster compose: the refusal does not name IGGY_CLUSTER_SECRET"; }
IGGY_CLUSTER_SECRET=$("$PY" -c 'import secrets; print(secrets.token_hex(32))')
export IGGY_CLUSTER_SECRET
CLUSTER_UP=1
start=$(date +%s)
cluster_cmd up -d --no-build >"$WORK/cluster.log" 2>&1 || { cat "$WORK/cluster.log"; fail "cluster compose $cluster_version up"; }
cids=()
for service in etcd iggy-0 iggy-1 iggy-2; do
    cid=$(cluster_cmd ps -q "$service")
    wait_healthy "$cid" "$start" >/dev/null || fail "cluster compose: $service never healthy"
    [ "$service" = etcd ] || cids+=("$cid")
done
healthy=$(( $(date +%s) - start ))
cluster_failover() {  # root password, the three nodes' container ids -> one line on stdout
    # The client runs on the host and dials what the metadata advertises; the leader is stopped
    # with `docker stop` (SIGTERM) between a send before and a send after.
    "$PY" - "$@" <<'EOF'
import asyncio, json, os, socket, subprocess, sys, time, urllib.request
import psutil
from apache_iggy import Consumer, IggyClient, PollingStrategy, SendMessage
password, cids = sys.argv[1], sys.argv[2:]
tcp = [int(os.environ[f"IGGY_NODE{i}_TCP_PORT"]) for i in range(3)]
http = [int(os.environ[f"IGGY_NODE{i}_HTTP_PORT"]) for i in range(3)]


def call(port, path, body=None, token=None):
    headers = {"content-type": "application/json"} | ({"authorization": f"Bearer {token}"} if token else {})
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method="POST" if body else "GET",
                                 data=json.dumps(body).encode() if body else None, headers=headers)
    return json.load(urllib.request.urlopen(req, timeout=5))


def leader(via, other_than=None, timeout=60.0):
    """The leader's index as node `via` reports it, once one (not `other_than`) is healthy."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            token = call(http[via], "/users/login", {"username": "iggy", "password": password})["access_token"]["token"]
            meta = call(http[via], "/cluster/metadata", token=token)
            leaders = [i for i, n in enumerate(meta["nodes"]) if n["role"] == "leader" and n["status"] == "healthy"]
            if leaders and leaders[0] != other_than:
                return leaders[0], meta
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"no leader reported by node {via} within {timeout} s")
        time.sleep(0.5)


def connected():
    established = psutil.Process().net_connections("tcp")
    return {c.raddr.port for c in established if c.status == psutil.CONN_ESTABLISHED and c.raddr}


async def main():
    old, meta = leader(0)
    # what the metadata advertises is what a client on the host dials
    for i, node in enumerate(meta["nodes"]):
        assert node["endpoints"]["tcp"] == tcp[i], meta
        socket.create_connection((node["ip"], node["endpoints"]["tcp"]), timeout=5).close()
    follower = (old + 1) % 3
    client = IggyClient(f"127.0.0.1:{tcp[follower]}")
    await client.connect()
    await client.login_user("iggy", password)
    assert tcp[old] in connected(), f"dialled iggy-{follower}, not connected to the leader iggy-{old}"
    await client.create_stream("cluster")
    await client.create_topic("cluster", "t", partitions_count=1)  # durability: replicated
    await client.send_messages("cluster", "t", 0, [SendMessage("before the failover")])
    stopping = time.monotonic()
    subprocess.run(["docker", "stop", cids[old]], check=True, capture_output=True)
    stopped = time.monotonic() - stopping  # SIGTERM until the container exited
    new, _ = leader(follower, other_than=old)
    elected = time.monotonic() - stopping
    for attempt in range(120):  # the request that meets the closed connection fails; the SDK reconnects
        try:
            await client.send_messages("cluster", "t", 0, [SendMessage("after the failover")])
            break
        except RuntimeError:
            if attempt == 119:
                raise
            await asyncio.sleep(0.5)
    sent = time.monotonic() - stopping
    got = await client.poll_messages("cluster", "t", consumer=Consumer.Single(1), partition_id=0,
                                     polling_strategy=PollingStrategy.First(), count=10, auto_commit=False)
    payloads = [m.payload() for m in got]
    assert payloads == [b"before the failover", b"after the failover"], payloads
    assert tcp[new] in connected(), f"not connected to the new leader iggy-{new}"
    print(f"SDK dialled follower iggy-{follower}, ended on leader iggy-{old}; docker stop of it took {stopped:.1f} s, "
          f"iggy-{new} leader {elected:.1f} s after the stop began, first send there after {sent:.1f} s")


asyncio.run(main())
EOF
}
cluster_failover "$IGGY_ROOT_PASSWORD" "${cids[@]}" >"$WORK/failover.txt" 2>&1 || {
    cat "$WORK/failover.txt"
    for c in "${cids[@]}"; do docker logs "$c" 2>&1 | tail -n 20; done
    fail "cluster compose: failover round trip"
}
cluster_cmd down -v >/dev/null 2>&1
CLUSTER_UP=
echo "cluster compose $cluster_version: etcd image built in ${etcd_build_s} s; refused to start without IGGY_CLUSTER_SECRET; etcd + 3 nodes (host network, ports from variables) healthy after ${healthy} s; $(cat "$WORK/failover.txt"); the message sent before is polled after; down -v; step 7 took $(( $(date +%s) - cluster_t0 )) s" | tee -a "$SUMMARY"

echo "---- docker-check summary"
cat "$SUMMARY"
say "PASSED"
