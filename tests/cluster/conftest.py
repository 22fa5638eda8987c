"""Fixtures of the cluster tests: a real etcd on free loopback ports in the test's temp dir.

The tests skip (with the reason) only when etcd itself is not installed; `scripts/setup.sh
--test` installs it, so on a prepared machine they always run.
"""

from __future__ import annotations

import pytest

from tests.cluster.etcd import ETCD, MISSING, EtcdServer
from tests.cluster.nodes import TestCluster


@pytest.fixture
def etcd(tmp_path):
    if ETCD is None:
        pytest.skip(MISSING)
    server = EtcdServer(tmp_path / "etcd").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def shared_etcd(tmp_path_factory):
    """One etcd for the tests of a module that do not break it."""
    if ETCD is None:
        pytest.skip(MISSING)
    server = EtcdServer(tmp_path_factory.mktemp("etcd")).start()
    yield server
    server.stop()


@pytest.fixture
def cluster(tmp_path, etcd):
    """Three nodes of their own, for the tests that kill or stop a node or etcd."""
    c = TestCluster(tmp_path, etcd.url).start()
    yield c
    c.stop()
