#!/usr/bin/env bash
# Regenerate docker/constraints.txt: the exact versions of the image's runtime dependencies.
# Builds the Dockerfile's builder stage with no pins (newest versions that satisfy
# pyproject.toml), then writes what pip installed into /opt/iggy. The image build installs
# with `-c constraints.txt`, so every later build gets the same versions until this is rerun.
# Needs a running Docker engine (scripts/docker-check.sh starts one) and PYTHON_IMAGE when
# the default base cannot be pulled (e.g. the stand-in tag docker-check.sh prints).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON_IMAGE=${PYTHON_IMAGE:-python:3.11-slim-bookworm}
header='# Runtime dependencies of the Docker image, pinned (written by scripts/docker-constraints.sh).'
keep=$(mktemp)
cp docker/constraints.txt "$keep" 2>/dev/null || : >"$keep"
echo "$header" >docker/constraints.txt
buildkit=0
docker buildx version >/dev/null 2>&1 && buildkit=1
if ! DOCKER_BUILDKIT=$buildkit docker build -q --target builder --build-arg "PYTHON_IMAGE=$PYTHON_IMAGE" \
        -f docker/Dockerfile -t iggy-py:constraints . >/dev/null; then
    cp "$keep" docker/constraints.txt
    echo "docker-constraints: build failed; docker/constraints.txt left as it was" >&2
    exit 1
fi
{ echo "$header"; docker run --rm --entrypoint /opt/iggy/bin/python iggy-py:constraints -m pip freeze --exclude iggy; } \
    >"$keep"
mv "$keep" docker/constraints.txt
echo "docker-constraints: $(grep -vc '^#' docker/constraints.txt) packages pinned in docker/constraints.txt"
