# etcd for docker/docker-compose.cluster.yml: Debian's `etcd-server` (3.4, v3 API, the version the
# tests run against) and `etcd-client` (etcdctl, for the healthcheck), as the unprivileged user
# `etcd` the package creates.
#
#   docker build -f docker/etcd.Dockerfile -t iggy-etcd .       (from the repository root)
#
# A separate image rather than etcd inside the server image: the server image stays what a single
# node needs, and the cluster's etcd can be replaced by any etcd 3.4+ (an official image where
# a registry is reachable) without touching the nodes. Without access to Docker Hub, build it on
# the same stand-in base as the server (scripts/docker-check.sh): --build-arg BASE_IMAGE=<tag>.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends etcd-server etcd-client \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /var/lib/etcd/data && chown -R etcd:etcd /var/lib/etcd
USER etcd
WORKDIR /var/lib/etcd
VOLUME /var/lib/etcd/data
ENV ETCD_DATA_DIR=/var/lib/etcd/data ETCDCTL_API=3
STOPSIGNAL SIGTERM
ENTRYPOINT ["etcd"]
