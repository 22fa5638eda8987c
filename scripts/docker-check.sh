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
#   6. the installed runtime dependencies equal docker/constraints.txt.
# Prints a summary (build time, image size, time to healthy per setting). When no engine can be
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
    engine=$(docker logs "$name" 2>&1 | sed -n 's/.*started (engine: \([a-z]*\).*/\1/p' | head -n 1)
    if [ "$expect" != any ] && [ "$engine" != "$expect" ]; then
        fail "$setting: engine '$engine', expected $expect"
    fi
    # a fallback must say which syscall failed with which errno, and what to change
    fallback=""
    if [ "$engine" = asyncio ]; then
        fallback=$(docker logs "$name" 2>&1 | grep -o "io_uring_setup failed with errno [0-9]* [A-Z]*" | head -n 1)
        docker logs "$name" 2>&1 | grep -q "io_uring_setup failed with errno .*seccomp-iggy.json" \
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

echo "---- docker-check summary"
cat "$SUMMARY"
say "PASSED"
