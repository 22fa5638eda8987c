"""Server configuration, named and layered as Apache Iggy does it.

Layers, later ones win: the built-in defaults (`iggy/defaults.toml`), an optional TOML file
(`IGGY_CONFIG_PATH` or `--config`), then `IGGY_*` environment variables named `IGGY_` + the
key path in upper case with `_` between the parts (`[http.jwt] access_token_expiry` ->
`IGGY_HTTP_JWT_ACCESS_TOKEN_EXPIRY`). Because key names contain underscores themselves, the
environment names are generated from the defaults tree once (a fixed table, as the Rust
server does) instead of being split at run time; pydantic-settings was tried and maps such
names to the wrong keys.

Values are typed by the default they replace. Durations ("30 s", "1 h") and sizes ("64 MiB")
are written as text, as upstream writes them, and converted once, when the configuration is
loaded: in the loaded Config every key of DURATION_KEYS is a float of seconds and every key of
SIZE_KEYS an int of bytes, so no caller parses units (iggy.units does the parsing). Anything
wrong -> a `ConfigError` that names the key (and the variable), and the server refuses to start.

The cluster roster `cluster.nodes` is the one array of tables (`[[cluster.nodes]]`, as upstream);
its environment form is `IGGY_CLUSTER_NODES_<i>_<FIELD>` (`_NAME`, `_IP`, `_REPLICA_ID`,
`_PORTS_TCP`, `_PORTS_QUIC`, `_PORTS_HTTP`, `_PORTS_WEBSOCKET`, `_PORTS_TCP_REPLICA`), where a
variable overrides that field of entry i of the file's roster or creates the entry. In the
loaded Config every entry is a dict `{name, ip, replica_id, ports: {tcp, quic, http, websocket,
tcp_replica}}` (a port left out is 0). With `cluster.enabled`, `load_config(replica_id=N)`
(`iggy-server --replica-id N`) picks this node's entry: `cluster.replica_id` = N and
`cluster.node` = the entry are added to the tree, and every listener's port is the entry's
(the host part stays that of `tcp.address` etc.). `cluster.etcd.prefix` "" becomes
`/iggy/<cluster.name>/`.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import string
import tomllib
from collections.abc import Callable, Iterator, Mapping
from importlib import resources
from typing import TYPE_CHECKING, Any, TypedDict

from iggy.units import parse_duration, parse_size

log = logging.getLogger(__name__)

# keys Apache Iggy removed or moved to per-topic options: present -> refuse to boot
REMOVED_KEYS = (
    "system.topic.max_size",
    "system.topic.message_expiry",
    "system.partition.enforce_fsync",
    "system.partition.messages_required_to_save",
    "system.partition.size_of_messages_required_to_save",
    "system.segment.size",
    "system.segment.preallocate",
    "system.message_deduplication",
    "extra",
)
# IGGY_* variables that are not configuration keys
NON_CONFIG_ENV = {
    "IGGY_ROOT_USERNAME",
    "IGGY_ROOT_PASSWORD",
    "IGGY_CONFIG_PATH",
    "IGGY_ENV_PATH",
    "IGGY_USERNAME",
    "IGGY_PASSWORD",  # these two: credentials of the `iggy` CLI
    "IGGY_PARTITION_FILES_BUDGET",  # iggy.server.node: open segment files (hidden)
    "IGGY_TEST_FAULT_COMMAND",
}  # iggy.engine.base: a command that fails (tests)
DURATION_KEYS = {
    "http.jwt.access_token_expiry",
    "http.jwt.clock_skew",
    "http.jwt.not_before",
    "quic.max_idle_timeout",
    "quic.keep_alive_interval",
    "heartbeat.interval",
    "consumer_group.rebalancing_timeout",
    "data_maintenance.messages.interval",
    "personal_access_token.cleaner.interval",
    "limits.idle_timeout",
    "http.header_read_timeout",
    "http.body_read_timeout",
    "http.keep_alive_timeout",
    "cluster.heartbeat_timeout",
}
SIZE_KEYS = {
    "http.max_request_size",
    "http.max_header_size",
    "message_bus.max_message_size",
    "limits.max_write_buffer",
    "quic.receive_window",
    "quic.stream_receive_window",
    "limits.max_unauthenticated_frame",
    "limits.max_reply_buffers",
}
# a login frame (256-byte header, version, username, password, context) must always fit
MIN_UNAUTHENTICATED_FRAME = 4096
ADDRESS_KEYS = {"tcp.address", "http.address", "quic.address", "websocket.address"}
ENGINES = ("auto", "uring", "asyncio")
MIN_CLUSTER_HEARTBEAT_TIMEOUT = 2.0  # seconds, as upstream
MIN_CLUSTER_SECRET = 32  # bytes of cluster.auth.shared_secret, as upstream
NODE_FIELDS = ("name", "ip", "replica_id", "ports")
PORT_NAMES = ("tcp", "quic", "http", "websocket", "tcp_replica")
# the roster port that replaces each listener's port in cluster mode
LISTENER_PORTS = {"tcp": "tcp", "quic": "quic", "http": "http", "websocket": "websocket"}
_NODE_ENV = re.compile(r"IGGY_CLUSTER_NODES_(\d+)_(NAME|IP|REPLICA_ID|PORTS_(?:TCP_REPLICA|TCP|QUIC|HTTP|WEBSOCKET))")


class ConfigError(ValueError):
    """A configuration value that can't be used; the message names the key."""


# A table of the TOML tree (defaults.toml merged with the file and the environment): its values
# are TOML values of any kind (str, int, float, bool, list, nested tables) reached by a dotted key
# path that is only known at run time, so the values stay dynamic.
Tree = dict[str, Any]


class RosterNode(TypedDict):
    """One checked entry of cluster.nodes."""

    name: str
    ip: str
    replica_id: int
    ports: dict[str, int]  # every name of PORT_NAMES, 0 = none


# --------------------------------------------------------------------------- the tree


class Section:
    """Attribute access over one table of the validated tree."""

    def __init__(self, data: Tree):
        for key, value in data.items():
            setattr(self, key, Section(value) if isinstance(value, dict) else value)

    if TYPE_CHECKING:
        # the attributes are the keys of the TOML tree, set in __init__: a dynamic boundary
        def __getattr__(self, name: str) -> Any: ...

    def to_dict(self) -> Tree:
        return {k: v.to_dict() if isinstance(v, Section) else v for k, v in vars(self).items()}


class Config(Section):
    """The whole validated configuration: `cfg.tcp.address`, `cfg.http.jwt.algorithm`, ..."""

    def env_names(self) -> dict[str, str]:
        return env_table(self.to_dict())


def _defaults() -> Tree:
    return tomllib.loads(resources.files("iggy").joinpath("defaults.toml").read_text())


def _leaves(tree: Tree, prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _leaves(value, path + ".")
        else:
            yield path, value


def env_table(tree: Tree) -> dict[str, str]:
    """IGGY_* name -> dotted key, for every leaf of the tree."""
    return {"IGGY_" + path.replace(".", "_").upper(): path for path, _ in _leaves(tree)}


def _get(tree: Tree, path: str) -> Any:
    node = tree
    for part in path.split("."):
        node = node[part]
    return node


def _set(tree: Tree, path: str, value: object) -> None:
    parts = path.split(".")
    node = tree
    for part in parts[:-1]:
        node = node[part]
    node[parts[-1]] = value


def _has(tree: Tree, path: str) -> bool:
    node: Any = tree
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _merge_file(tree: Tree, data: Tree, prefix: str = "") -> None:
    if not prefix:
        # checked first: their parent tables ([system.topic], [system.segment]) are unknown too
        for path in REMOVED_KEYS:
            if _has(data, path):
                raise ConfigError(
                    f"{path}: this key was removed from Apache Iggy's configuration "
                    f"(topic settings are per topic now); delete it"
                )
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key not in tree:
            raise ConfigError(f"{path}: unknown configuration key")
        if isinstance(tree[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"{path}: expected a table")
            _merge_file(tree[key], value, path + ".")
        else:
            tree[key] = _coerce(path, tree[key], value, path)


def _coerce(path: str, default: object, value: object, source: str) -> object:
    """Type `value` (from TOML or an env string) by the type of `default`."""
    text = value if isinstance(value, str) else None
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if text is not None and text.strip().lower() in ("true", "false"):
            return text.strip().lower() == "true"
        raise ConfigError(f"{source}: expected true or false, got {value!r}")
    if isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if text is not None and re.fullmatch(r"\s*-?\d+\s*", text):
            return int(text)
        raise ConfigError(f"{source}: expected an integer, got {value!r}")
    if isinstance(default, float):
        if isinstance(value, (str, int, float)):  # a table or a list is no number either
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{source}: expected a number, got {value!r}")
    if isinstance(default, list):
        if isinstance(value, list):
            return value
        if text is not None:
            inner = text.strip()
            if inner.startswith("[") and inner.endswith("]"):
                inner = inner[1:-1]
            return [part.strip().strip("'\"") for part in inner.split(",") if part.strip()]
        raise ConfigError(f"{source}: expected a list, got {value!r}")
    if not isinstance(value, str):
        raise ConfigError(f"{source}: expected a string, got {value!r}")
    return value


def _validate(tree: Tree, names: dict[str, str]) -> None:
    """Check every value; durations and sizes are converted in place (seconds, bytes)."""

    def where(path: str) -> str:
        return f"{path} ({names[path]})"

    for path in DURATION_KEYS:
        try:
            _set(tree, path, parse_duration(_get(tree, path)) / 1_000_000)  # seconds
        except ValueError as exc:
            raise ConfigError(f"{where(path)}: {exc}") from None
    for path in SIZE_KEYS:
        try:
            _set(tree, path, parse_size(_get(tree, path)))  # bytes
        except ValueError as exc:
            raise ConfigError(f"{where(path)}: {exc}") from None
    if _get(tree, "consumer_group.rebalancing_timeout") <= 0:
        # as upstream: zero would force every hand-over at once, so a member that joins takes
        # partitions with messages still in flight and they are delivered twice
        raise ConfigError(
            f"{where('consumer_group.rebalancing_timeout')}: must be more than zero (the longest a "
            "partition waits for its owner to commit before it moves to a new member)"
        )
    if _get(tree, "limits.max_unauthenticated_frame") < MIN_UNAUTHENTICATED_FRAME:
        raise ConfigError(
            f"{where('limits.max_unauthenticated_frame')}: must be at least "
            f"{MIN_UNAUTHENTICATED_FRAME} bytes (a login frame must fit)"
        )
    if _get(tree, "limits.max_reply_buffers") < 1:
        raise ConfigError(f"{where('limits.max_reply_buffers')}: must be at least 1 byte")
    for path in ADDRESS_KEYS:
        address = _get(tree, path)
        host, sep, port = address.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ConfigError(f"{where(path)}: expected host:port, got {address!r}")
    if tree["system"]["engine"] not in ENGINES:
        raise ConfigError(
            f"{where('system.engine')}: expected one of {', '.join(ENGINES)}, got {tree['system']['engine']!r}"
        )
    for path, low in (("limits.max_consumer_offsets", 1), ("limits.max_open_offset_files", 0)):
        if _get(tree, path) < low:
            raise ConfigError(f"{where(path)}: must be at least {low}, got {_get(tree, path)}")
    level = tree["system"]["logging"]["level"].lower()
    if level not in ("trace", "debug", "info", "warn", "warning", "error"):
        raise ConfigError(f"{where('system.logging.level')}: unknown level {level!r}")


# --------------------------------------------------------------------------- the cluster roster


def _node_env(tree: Tree, name: str, value: str) -> bool:
    """Apply one IGGY_CLUSTER_NODES_<i>_<FIELD> variable; False if the name is not one."""
    m = _NODE_ENV.fullmatch(name)
    if m is None:
        return False
    index, field = int(m.group(1)), m.group(2).lower()
    nodes = tree["cluster"]["nodes"]
    if not isinstance(nodes, list):
        raise ConfigError(f"{name}: cluster.nodes must be an array of tables")
    if index > len(nodes):
        raise ConfigError(
            f"{name}: roster entry {index} comes after entry {len(nodes) - 1}; "
            f"number the entries 0, 1, 2, ... without a gap"
        )
    if index == len(nodes):
        nodes.append({})
    node = nodes[index]
    if not isinstance(node, dict):
        raise ConfigError(f"{name}: cluster.nodes[{index}] must be a table")
    if field.startswith("ports_"):
        node.setdefault("ports", {})[field.removeprefix("ports_")] = value
    else:
        node[field] = value
    return True


def _port(where: str, value: object) -> int:
    if isinstance(value, str) and re.fullmatch(r"\s*\d+\s*", value):
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
        raise ConfigError(f"{where}: expected a port 1..65535, got {value!r}")
    return value


def _roster(nodes: object) -> list[RosterNode]:
    """cluster.nodes checked and normalised: {name, ip, replica_id, ports{all five, 0 = none}}."""
    if not isinstance(nodes, list) or not nodes:
        raise ConfigError(
            "cluster.nodes: cluster.enabled needs the roster, at least one [[cluster.nodes]] "
            "entry (or IGGY_CLUSTER_NODES_0_NAME, ...)"
        )
    if len(nodes) > 255:
        raise ConfigError("cluster.nodes: at most 255 nodes")
    out: list[RosterNode] = []
    names: set[str] = set()
    ids: set[int] = set()
    endpoints: set[tuple[str, bool, int]] = set()
    for i, node in enumerate(nodes):
        where = f"cluster.nodes[{i}]"
        if not isinstance(node, dict):
            raise ConfigError(f"{where}: expected a table with {', '.join(NODE_FIELDS)}")
        unknown = set(node) - set(NODE_FIELDS)
        if unknown:
            raise ConfigError(f"{where}.{sorted(unknown)[0]}: unknown configuration key")
        name, ip = node.get("name"), node.get("ip")
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"{where}.name: a non-empty name is required")
        if not isinstance(ip, str) or not ip.strip():
            raise ConfigError(f"{where}.ip: an address is required (node {name!r})")
        if name in names:
            raise ConfigError(f"{where}.name: duplicate node name {name!r}")
        rid = node.get("replica_id")
        if isinstance(rid, str) and re.fullmatch(r"\s*\d+\s*", rid):
            rid = int(rid)
        if not isinstance(rid, int) or isinstance(rid, bool) or not 0 <= rid < len(nodes):
            raise ConfigError(
                f"{where}.replica_id: expected 0..{len(nodes) - 1} (below the number of "
                f"nodes), got {node.get('replica_id')!r}"
            )
        if rid in ids:
            raise ConfigError(f"{where}.replica_id: duplicate replica_id {rid}")
        ports = node.get("ports")
        if not isinstance(ports, dict):
            raise ConfigError(f"{where}.ports: expected a table {{ tcp, quic, http, websocket, tcp_replica }}")
        unknown = set(ports) - set(PORT_NAMES)
        if unknown:
            raise ConfigError(f"{where}.ports.{sorted(unknown)[0]}: unknown configuration key")
        clean: dict[str, int] = {}
        for key in PORT_NAMES:
            clean[key] = _port(f"{where}.ports.{key}", ports[key]) if key in ports else 0
            if clean[key]:
                endpoint = (ip.strip(), key == "quic", clean[key])  # QUIC is UDP
                if endpoint in endpoints:
                    raise ConfigError(f"{where}.ports.{key}: {ip}:{clean[key]} is used twice in the roster")
                endpoints.add(endpoint)
        for key in ("tcp", "tcp_replica"):
            if not clean[key]:
                raise ConfigError(f"{where}.ports.{key}: required in cluster mode")
        names.add(name)
        ids.add(rid)
        out.append({"name": name, "ip": ip.strip(), "replica_id": rid, "ports": clean})
    return out


def _validate_cluster(tree: Tree, where: Callable[[str], str], replica_id: int | None) -> None:
    cluster = tree["cluster"]
    if not cluster["name"].strip():
        raise ConfigError(f"{where('cluster.name')}: must not be empty")
    if cluster["heartbeat_timeout"] < MIN_CLUSTER_HEARTBEAT_TIMEOUT:
        raise ConfigError(
            f"{where('cluster.heartbeat_timeout')}: must be at least 2 s "
            f"(the leader renews its etcd lease within two thirds of it)"
        )
    if not cluster["etcd"]["prefix"]:
        cluster["etcd"]["prefix"] = f"/iggy/{cluster['name']}/"
    elif not cluster["etcd"]["prefix"].endswith("/"):
        cluster["etcd"]["prefix"] += "/"
    cluster["replica_id"] = None
    cluster["node"] = None
    if not cluster["enabled"]:
        # a roster without cluster.enabled is kept as written and not used
        return
    cluster["nodes"] = _roster(cluster["nodes"])
    endpoints = cluster["etcd"]["endpoints"]
    if not endpoints:
        raise ConfigError(f"{where('cluster.etcd.endpoints')}: at least one etcd URL is needed")
    for url in endpoints:
        if not re.fullmatch(r"https?://[^/\s:]+(:\d+)?/?", url):
            raise ConfigError(f"{where('cluster.etcd.endpoints')}: expected http://host:port, got {url!r}")
    auth = cluster["auth"]
    if auth["enabled"] and len(auth["shared_secret"].encode()) < MIN_CLUSTER_SECRET:
        raise ConfigError(
            f"{where('cluster.auth.shared_secret')}: cluster.auth.enabled needs a shared secret "
            f"of at least {MIN_CLUSTER_SECRET} bytes"
        )
    if replica_id is None:
        raise ConfigError("cluster.enabled: start each node with --replica-id N, N = its roster entry's replica_id")
    node = next((n for n in cluster["nodes"] if n["replica_id"] == replica_id), None)
    if node is None:
        raise ConfigError(
            f"--replica-id {replica_id}: no cluster.nodes entry has this replica_id "
            f"(the roster has {sorted(n['replica_id'] for n in cluster['nodes'])})"
        )
    cluster["replica_id"] = replica_id
    cluster["node"] = node
    for section, port_name in LISTENER_PORTS.items():
        port = node["ports"][port_name]
        if not port:
            if tree[section]["enabled"]:
                raise ConfigError(
                    f"cluster.nodes entry {node['name']!r}: ports.{port_name} is required while "
                    f"{section}.enabled is true (the roster gives every listener's port)"
                )
            continue
        host = tree[section]["address"].rpartition(":")[0]
        tree[section]["address"] = f"{host}:{port}"


def load_config(env: Mapping[str, str] | None = None, path: str | None = None, replica_id: int | None = None) -> Config:
    """Defaults, then the TOML file, then IGGY_* variables; validated."""
    env = os.environ if env is None else env
    tree = _defaults()
    names = {p: n for n, p in env_table(tree).items()}
    path = path or env.get("IGGY_CONFIG_PATH") or None
    if path:
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"configuration file {path} (IGGY_CONFIG_PATH / --config) not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from None
        _merge_file(tree, data)
    table = env_table(tree)
    removed = {"IGGY_" + k.replace(".", "_").upper(): k for k in REMOVED_KEYS}
    for name, value in env.items():
        if not name.startswith("IGGY_") or name in NON_CONFIG_ENV or value == "":
            continue
        key = table.get(name)
        if key is None and _node_env(tree, name, value):
            continue
        if key is None:
            # a removed key, or a key inside a removed table (IGGY_SYSTEM_MESSAGE_DEDUPLICATION_ENABLED)
            for prefix, removed_key in removed.items():
                if name == prefix or name.startswith(prefix + "_"):
                    raise ConfigError(
                        f"{name}: {removed_key} was removed from Apache Iggy's configuration "
                        f"(topic settings are per topic now); unset it"
                    )
            log.warning("unknown environment variable %s ignored", name)
            continue
        _set(tree, key, _coerce(key, _get(tree, key), value, name))
    _validate(tree, names)
    _validate_cluster(tree, lambda p: f"{p} ({names[p]})", replica_id)
    return Config(tree)


def root_credentials(env: Mapping[str, str] | None = None) -> tuple[str, str, bool]:
    """(username, password, generated) for the root user created on an empty data directory."""
    env = os.environ if env is None else env
    # As Apache Iggy: a missing username is `iggy`, a missing password is generated (and logged
    # once by the caller), so `-e IGGY_ROOT_PASSWORD=...` alone is enough in a container.
    username = env.get("IGGY_ROOT_USERNAME") or "iggy"
    password = env.get("IGGY_ROOT_PASSWORD") or None
    if not 3 <= len(username.encode()) <= 50:
        raise ConfigError("IGGY_ROOT_USERNAME: must be 3..50 bytes")
    if password is None:
        alphabet = string.ascii_letters + string.digits
        length = 20 + secrets.randbelow(20)
        return username, "".join(secrets.choice(alphabet) for _ in range(length)), True
    if not 3 <= len(password.encode()) <= 100:
        raise ConfigError("IGGY_ROOT_PASSWORD: must be 3..100 bytes")
    return username, password, False
