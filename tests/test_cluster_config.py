"""The `[cluster]` configuration: upstream's key names, the roster from TOML and from
IGGY_CLUSTER_NODES_<i>_* variables, `--replica-id` picking the node whose ports the listeners
take, and the refusals (each naming the key). Without cluster.enabled nothing changes.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from iggy.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]

ROSTER = """
[cluster]
enabled = true
name = "prod"
heartbeat_timeout = "3 s"

[cluster.etcd]
endpoints = ["http://10.0.0.9:2379"]

[[cluster.nodes]]
name = "n0"
ip = "10.0.0.1"
replica_id = 0
ports = { tcp = 8090, quic = 8080, http = 3000, websocket = 8092, tcp_replica = 9090 }

[[cluster.nodes]]
name = "n1"
ip = "10.0.0.2"
replica_id = 1
ports = { tcp = 8091, quic = 8081, http = 3001, websocket = 8093, tcp_replica = 9091 }
"""


def node_env(i: int, name: str, ip: str, base: int) -> dict:
    p = f"IGGY_CLUSTER_NODES_{i}_"
    return {
        p + "NAME": name,
        p + "IP": ip,
        p + "REPLICA_ID": str(i),
        p + "PORTS_TCP": str(base),
        p + "PORTS_QUIC": str(base + 1),
        p + "PORTS_HTTP": str(base + 2),
        p + "PORTS_WEBSOCKET": str(base + 3),
        p + "PORTS_TCP_REPLICA": str(base + 4),
    }


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return str(path)


def test_defaults_leave_the_cluster_off():
    cfg = load_config(env={})
    c = cfg.cluster
    assert (c.enabled, c.name, c.heartbeat_timeout, c.nodes) == (False, "iggy-cluster", 5.0, [])
    assert (c.auth.enabled, c.auth.shared_secret) == (False, "")
    assert c.etcd.endpoints == ["http://127.0.0.1:2379"]
    assert c.etcd.prefix == "/iggy/iggy-cluster/"
    assert (c.replica_id, c.node) == (None, None)
    assert cfg.tcp.address == "127.0.0.1:8090"


def test_env_names_are_upstreams():
    names = load_config(env={}).env_names()
    for key in (
        "cluster.enabled",
        "cluster.name",
        "cluster.heartbeat_timeout",
        "cluster.auth.enabled",
        "cluster.auth.shared_secret",
        "cluster.etcd.endpoints",
        "cluster.etcd.prefix",
    ):
        assert names["IGGY_" + key.replace(".", "_").upper()] == key


def test_roster_from_toml_and_replica_id_sets_the_listener_ports(tmp_path):
    env = {"IGGY_TCP_ADDRESS": "0.0.0.0:1", "IGGY_HTTP_ADDRESS": "0.0.0.0:2"}
    cfg = load_config(env=env, path=write(tmp_path, ROSTER), replica_id=1)
    c = cfg.cluster
    assert (c.enabled, c.name, c.heartbeat_timeout) == (True, "prod", 3.0)
    assert c.etcd.prefix == "/iggy/prod/"
    assert [n["name"] for n in c.nodes] == ["n0", "n1"]
    assert c.nodes[0]["ports"] == {"tcp": 8090, "quic": 8080, "http": 3000, "websocket": 8092, "tcp_replica": 9090}
    assert c.replica_id == 1 and c.node.name == "n1" and c.node.ports.tcp_replica == 9091
    # the host part stays the listener's own, the port is the roster's
    assert (cfg.tcp.address, cfg.http.address) == ("0.0.0.0:8091", "0.0.0.0:3001")
    assert (cfg.quic.address, cfg.websocket.address) == ("127.0.0.1:8081", "127.0.0.1:8093")


def test_roster_from_env_variables():
    env = {
        "IGGY_CLUSTER_ENABLED": "true",
        "IGGY_CLUSTER_NAME": "c1",
        "IGGY_CLUSTER_HEARTBEAT_TIMEOUT": "2s",
        "IGGY_CLUSTER_ETCD_ENDPOINTS": "http://127.0.0.1:2379,http://127.0.0.2:2379",
        "IGGY_CLUSTER_ETCD_PREFIX": "/custom",
        **node_env(0, "a", "127.0.0.1", 7000),
        **node_env(1, "b", "127.0.0.1", 7100),
        **node_env(2, "c", "127.0.0.1", 7200),
    }
    cfg = load_config(env=env, replica_id=2)
    c = cfg.cluster
    assert c.heartbeat_timeout == 2.0
    assert c.etcd.endpoints == ["http://127.0.0.1:2379", "http://127.0.0.2:2379"]
    assert c.etcd.prefix == "/custom/"
    assert [(n["name"], n["replica_id"], n["ports"]["tcp"]) for n in c.nodes] == [
        ("a", 0, 7000),
        ("b", 1, 7100),
        ("c", 2, 7200),
    ]
    assert cfg.tcp.address == "127.0.0.1:7200"
    assert cfg.quic.address == "127.0.0.1:7201"


def test_env_variable_overrides_one_field_of_the_files_roster(tmp_path):
    env = {"IGGY_CLUSTER_NODES_1_IP": "10.9.9.9", "IGGY_CLUSTER_NODES_1_PORTS_TCP": "18091"}
    cfg = load_config(env=env, path=write(tmp_path, ROSTER), replica_id=1)
    assert cfg.cluster.nodes[1]["ip"] == "10.9.9.9"
    assert cfg.cluster.nodes[1]["ports"]["tcp"] == 18091
    assert cfg.cluster.nodes[1]["ports"]["http"] == 3001  # the rest of the entry is the file's
    assert cfg.tcp.address == "127.0.0.1:18091"


def test_without_enabled_the_roster_changes_nothing(tmp_path):
    cfg = load_config(env={}, path=write(tmp_path, ROSTER.replace("enabled = true", "enabled = false")), replica_id=1)
    assert cfg.tcp.address == "127.0.0.1:8090"
    assert cfg.cluster.replica_id is None


@pytest.mark.parametrize(
    "change, message",
    [
        (("3 s", "1 s"), "cluster.heartbeat_timeout"),
        (("replica_id = 1", "replica_id = 0"), "duplicate replica_id 0"),
        (("replica_id = 1", "replica_id = 2"), "cluster.nodes[1].replica_id"),
        (('name = "n1"', 'name = "n0"'), "duplicate node name"),
        (('ip = "10.0.0.2"', 'ip = ""'), "cluster.nodes[1].ip"),
        (("tcp = 8091, ", "tcp = 0, "), "cluster.nodes[1].ports.tcp"),
        (("websocket = 8093", "websocket = 8091"), "used twice"),
        ((", tcp_replica = 9091", ""), "cluster.nodes[1].ports.tcp_replica"),
        (("websocket = 8093, ", "websocket = 8093, udp = 1, "), "cluster.nodes[1].ports.udp"),
        (('name = "n1"', 'name = "n1"\nzone = "a"'), "cluster.nodes[1].zone"),
        (('endpoints = ["http://10.0.0.9:2379"]', "endpoints = []"), "cluster.etcd.endpoints"),
        (('endpoints = ["http://10.0.0.9:2379"]', 'endpoints = ["10.0.0.9"]'), "cluster.etcd.endpoints"),
    ],
)
def test_bad_roster_is_refused_naming_the_key(tmp_path, change, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(env={}, path=write(tmp_path, ROSTER.replace(*change)), replica_id=0)


def test_enabled_needs_a_roster_and_a_replica_id(tmp_path):
    with pytest.raises(ConfigError, match=r"cluster\.nodes"):
        load_config(env={"IGGY_CLUSTER_ENABLED": "true"}, replica_id=0)
    with pytest.raises(ConfigError, match="--replica-id"):
        load_config(env={}, path=write(tmp_path, ROSTER))
    with pytest.raises(ConfigError, match="--replica-id 7"):
        load_config(env={}, path=write(tmp_path, ROSTER), replica_id=7)


def test_env_roster_entries_are_numbered_without_gaps():
    env = {
        "IGGY_CLUSTER_ENABLED": "true",
        **node_env(0, "a", "127.0.0.1", 7000),
        **{k.replace("_1_", "_2_"): v for k, v in node_env(1, "b", "127.0.0.1", 7100).items()},
    }
    with pytest.raises(ConfigError, match="IGGY_CLUSTER_NODES_2"):
        load_config(env=env, replica_id=0)


def test_cluster_auth_needs_a_long_secret(tmp_path):
    text = ROSTER + '\n[cluster.auth]\nenabled = true\nshared_secret = "short"\n'
    with pytest.raises(ConfigError, match=r"cluster\.auth\.shared_secret"):
        load_config(env={}, path=write(tmp_path, text), replica_id=0)
    cfg = load_config(env={"IGGY_CLUSTER_AUTH_SHARED_SECRET": "k" * 32}, path=write(tmp_path, text), replica_id=0)
    assert cfg.cluster.auth.enabled and cfg.cluster.auth.shared_secret == "k" * 32


def test_enabled_transport_needs_its_roster_port(tmp_path):
    text = ROSTER.replace("quic = 8081, ", "")
    with pytest.raises(ConfigError, match=r"ports\.quic"):
        load_config(env={}, path=write(tmp_path, text), replica_id=1)
    cfg = load_config(env={"IGGY_QUIC_ENABLED": "false"}, path=write(tmp_path, text), replica_id=1)
    assert cfg.cluster.node.ports.quic == 0


def test_cli_refuses_cluster_without_replica_id(tmp_path):
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(ROOT),
        "IGGY_CONFIG_PATH": write(tmp_path, ROSTER),
        "IGGY_SYSTEM_PATH": str(tmp_path / "data"),
    }
    out = subprocess.run(
        [sys.executable, "-m", "iggy"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 2
    assert "--replica-id" in out.stderr
