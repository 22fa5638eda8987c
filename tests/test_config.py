"""Configuration: defaults, TOML file, IGGY_* overrides, value parsing, root credentials, CLI errors.

The env names must match Apache Iggy's (IGGY_ + dotted path upper-cased), so existing deployments'
variables keep working; these tests pin that and the error messages that name the bad key.
"""

from __future__ import annotations

import logging
import operator
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from iggy.config import ConfigError, load_config, root_credentials
from iggy.units import parse_duration, parse_size
from tests.conftest import write_config

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- defaults


def test_defaults():
    cfg = load_config(env={})
    assert cfg.system.path == "local_data"
    assert cfg.system.engine == "auto"
    assert cfg.system.logging.level == "info"
    assert cfg.system.partition.validate_checksum is True
    assert cfg.system.metadata.snapshot_every == 1000
    assert (cfg.tcp.enabled, cfg.tcp.address) == (True, "127.0.0.1:8090")
    assert (cfg.tcp.tls.enabled, cfg.tcp.tls.cert_file, cfg.tcp.tls.key_file, cfg.tcp.tls.self_signed) == (
        False,
        "",
        "",
        True,
    )
    assert (cfg.http.enabled, cfg.http.address, cfg.http.max_request_size) == (True, "127.0.0.1:3000", 2_000_000)
    assert cfg.http.cors.enabled is True and cfg.http.cors.allowed_origins == ["*"]
    jwt = cfg.http.jwt
    assert (jwt.algorithm, jwt.issuer, jwt.audience) == ("HS256", "iggy.apache.org", "iggy.apache.org")
    assert (jwt.access_token_expiry, jwt.clock_skew, jwt.not_before) == (3600.0, 5.0, 0.0)
    assert (jwt.encoding_secret, jwt.decoding_secret) == ("", "")
    assert (cfg.http.metrics.enabled, cfg.http.metrics.endpoint) == (True, "/metrics")
    assert (cfg.http.web_ui, cfg.http.web_ui_dir) == (False, "")
    assert (cfg.quic.enabled, cfg.quic.address) == (True, "127.0.0.1:8080")
    assert (cfg.quic.max_idle_timeout, cfg.quic.keep_alive_interval) == (30.0, 10.0)
    assert cfg.quic.certificate.self_signed is True
    assert cfg.quic.certificate.cert_file == "" and cfg.quic.certificate.key_file == ""
    assert (cfg.websocket.enabled, cfg.websocket.address) == (True, "127.0.0.1:8092")
    assert cfg.websocket.tls.enabled is False
    assert cfg.websocket.tls.cert_file == "" and cfg.websocket.tls.key_file == ""
    assert cfg.message_bus.max_message_size == 64 << 20
    assert cfg.message_bus.max_message_size == 64 * 1024 * 1024
    assert (cfg.heartbeat.enabled, cfg.heartbeat.interval) == (True, 30.0)
    assert cfg.consumer_group.rebalancing_timeout == 30.0
    assert cfg.data_maintenance.messages.cleaner_enabled is True
    assert cfg.data_maintenance.messages.interval == 60.0
    assert cfg.personal_access_token.max_tokens_per_user == 100
    assert cfg.personal_access_token.cleaner.enabled is True
    assert cfg.personal_access_token.cleaner.interval == 60.0
    assert (cfg.limits.max_connections, cfg.limits.idle_timeout) == (10000, 0.0)


def test_to_dict_and_env_names():
    cfg = load_config(env={})
    tree = cfg.to_dict()
    assert tree["http"]["jwt"]["algorithm"] == "HS256"
    assert isinstance(tree["system"]["logging"], dict)
    names = cfg.env_names()
    assert names["IGGY_TCP_ADDRESS"] == "tcp.address"
    assert names["IGGY_HTTP_JWT_ACCESS_TOKEN_EXPIRY"] == "http.jwt.access_token_expiry"
    assert names["IGGY_SYSTEM_PATH"] == "system.path"
    assert names["IGGY_SYSTEM_LOGGING_LEVEL"] == "system.logging.level"


def test_env_table_has_no_collisions():
    cfg = load_config(env={})

    def leaves(tree, prefix=""):
        for key, value in tree.items():
            if isinstance(value, dict):
                yield from leaves(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}"

    keys = list(leaves(cfg.to_dict()))
    names = cfg.env_names()
    assert len(set(names)) == len(keys)
    assert sorted(names.values()) == sorted(keys)


# --------------------------------------------------------------------------- TOML file


def test_toml_file_overrides_defaults(tmp_path):
    path = write_config(
        tmp_path,
        """
[system]
path = "/data/iggy"
engine = "asyncio"

[tcp]
address = "0.0.0.0:9000"

[http.jwt]
access_token_expiry = "2 h"

[http.cors]
allowed_origins = ["http://a", "http://b"]
""",
    )
    cfg = load_config(env={}, path=path)
    assert cfg.system.path == "/data/iggy"
    assert cfg.system.engine == "asyncio"
    assert cfg.tcp.address == "0.0.0.0:9000"
    assert cfg.tcp.enabled is True  # untouched keys keep their default
    assert cfg.http.jwt.access_token_expiry == 7200.0
    assert cfg.http.jwt.algorithm == "HS256"
    assert cfg.http.cors.allowed_origins == ["http://a", "http://b"]


def test_config_path_from_env(tmp_path):
    path = write_config(tmp_path, '[http]\naddress = "0.0.0.0:3001"\n')
    assert load_config(env={"IGGY_CONFIG_PATH": path}).http.address == "0.0.0.0:3001"


def test_missing_config_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(env={"IGGY_CONFIG_PATH": str(tmp_path / "nope.toml")})


def test_env_wins_over_file(tmp_path):
    path = write_config(tmp_path, '[tcp]\naddress = "0.0.0.0:9000"\n')
    cfg = load_config(env={"IGGY_TCP_ADDRESS": "10.0.0.1:9001"}, path=path)
    assert cfg.tcp.address == "10.0.0.1:9001"


def test_unknown_toml_key(tmp_path):
    with pytest.raises(ConfigError, match=r"tcp\.adress"):
        load_config(env={}, path=write_config(tmp_path, '[tcp]\nadress = "x"\n'))
    with pytest.raises(ConfigError, match="nosuchsection"):
        load_config(env={}, path=write_config(tmp_path, '[nosuchsection]\na = 1\n'))


def test_toml_wrong_type(tmp_path):
    with pytest.raises(ConfigError, match=r"tcp\.enabled"):
        load_config(env={}, path=write_config(tmp_path, '[tcp]\nenabled = "yes"\n'))
    with pytest.raises(ConfigError, match=r"limits\.max_connections"):
        load_config(env={}, path=write_config(tmp_path, '[limits]\nmax_connections = "many"\n'))


@pytest.mark.parametrize(
    "toml, key",
    [
        ('[system.topic]\nmax_size = "1 GiB"\n', "system.topic.max_size"),
        ('[system.topic]\nmessage_expiry = "none"\n', "system.topic.message_expiry"),
        ("[system.partition]\nenforce_fsync = true\n", "system.partition.enforce_fsync"),
        ("[system.partition]\nmessages_required_to_save = 10\n", "system.partition.messages_required_to_save"),
        (
            '[system.partition]\nsize_of_messages_required_to_save = "1 MiB"\n',
            "system.partition.size_of_messages_required_to_save",
        ),
        ('[system.segment]\nsize = "1 GiB"\n', "system.segment.size"),
        ("[system.segment]\npreallocate = false\n", "system.segment.preallocate"),
        ("[system.message_deduplication]\nenabled = false\n", "system.message_deduplication"),
        ("[extra]\nfoo = 1\n", "extra"),
    ],
)
def test_removed_keys_in_file(tmp_path, toml, key):
    with pytest.raises(ConfigError, match=re.escape(key)):
        load_config(env={}, path=write_config(tmp_path, toml))


def test_removed_keys_in_env():
    with pytest.raises(ConfigError, match="IGGY_SYSTEM_PARTITION_ENFORCE_FSYNC"):
        load_config(env={"IGGY_SYSTEM_PARTITION_ENFORCE_FSYNC": "true"})
    with pytest.raises(ConfigError, match=r"system\.message_deduplication"):
        load_config(env={"IGGY_SYSTEM_MESSAGE_DEDUPLICATION_ENABLED": "true"})


# --------------------------------------------------------------------------- environment


# (variable, value, key, what the key reads): names map onto nested keys, values parse to the
# key's type (bool, int, duration in seconds, list)
ENV_OVERRIDES = [
    ("IGGY_TCP_ADDRESS", "0.0.0.0:8090", "tcp.address", "0.0.0.0:8090"),
    ("IGGY_HTTP_JWT_ACCESS_TOKEN_EXPIRY", "15 m", "http.jwt.access_token_expiry", 900.0),
    ("IGGY_SYSTEM_PATH", "/var/lib/iggy", "system.path", "/var/lib/iggy"),
    ("IGGY_SYSTEM_LOGGING_LEVEL", "debug", "system.logging.level", "debug"),
    ("IGGY_PERSONAL_ACCESS_TOKEN_CLEANER_INTERVAL", "5 m", "personal_access_token.cleaner.interval", 300.0),
    ("IGGY_TCP_ENABLED", "FALSE", "tcp.enabled", False),
    ("IGGY_HTTP_WEB_UI", "True", "http.web_ui", True),
    ("IGGY_LIMITS_MAX_CONNECTIONS", "42", "limits.max_connections", 42),
    ("IGGY_SYSTEM_METADATA_SNAPSHOT_EVERY", " 7 ", "system.metadata.snapshot_every", 7),
    ("IGGY_HTTP_CORS_ALLOWED_ORIGINS", "[http://a, 'http://b']", "http.cors.allowed_origins", ["http://a", "http://b"]),
]


def test_env_overrides_nested_keys_with_their_types():
    cfg = load_config(env={name: value for name, value, _, _ in ENV_OVERRIDES})
    for name, _, key, expected in ENV_OVERRIDES:
        got = operator.attrgetter(key)(cfg)
        assert got == expected and type(got) is type(expected), (name, got)
    single = load_config(env={"IGGY_HTTP_CORS_ALLOWED_ORIGINS": "http://only"})
    assert single.http.cors.allowed_origins == ["http://only"]


def test_empty_env_values_are_ignored():
    cfg = load_config(env={"IGGY_TCP_ADDRESS": "", "IGGY_TCP_ENABLED": "", "IGGY_SYSTEM_PATH": ""})
    assert cfg.tcp.address == "127.0.0.1:8090"
    assert cfg.tcp.enabled is True
    assert cfg.system.path == "local_data"


def test_invalid_bool_names_env_var():
    with pytest.raises(ConfigError) as exc:
        load_config(env={"IGGY_TCP_ENABLED": "maybe"})
    assert str(exc.value) == "IGGY_TCP_ENABLED: expected true or false, got 'maybe'"


def test_invalid_int_names_env_var():
    with pytest.raises(ConfigError, match="IGGY_LIMITS_MAX_CONNECTIONS"):
        load_config(env={"IGGY_LIMITS_MAX_CONNECTIONS": "ten"})


def test_rebalancing_timeout_in_seconds_and_above_zero():
    env = {"IGGY_CONSUMER_GROUP_REBALANCING_TIMEOUT": "1500 ms"}
    assert load_config(env=env).consumer_group.rebalancing_timeout == 1.5
    for zero in ("0", "0 s"):
        with pytest.raises(ConfigError, match=r"IGGY_CONSUMER_GROUP_REBALANCING_TIMEOUT.*more than zero"):
            load_config(env={"IGGY_CONSUMER_GROUP_REBALANCING_TIMEOUT": zero})


@pytest.mark.parametrize(
    "address", ["nonsense", "127.0.0.1", ":8090", "127.0.0.1:", "127.0.0.1:65536", "127.0.0.1:port"]
)
def test_invalid_address_names_key_and_env_var(address):
    with pytest.raises(ConfigError) as exc:
        load_config(env={"IGGY_TCP_ADDRESS": address})
    assert "tcp.address" in str(exc.value) and "IGGY_TCP_ADDRESS" in str(exc.value)


def test_valid_addresses():
    cfg = load_config(env={"IGGY_TCP_ADDRESS": "[::1]:0", "IGGY_HTTP_ADDRESS": "localhost:65535"})
    assert cfg.tcp.address == "[::1]:0" and cfg.http.address == "localhost:65535"


def test_invalid_duration_and_size_name_key():
    with pytest.raises(ConfigError, match=r"heartbeat\.interval.*IGGY_HEARTBEAT_INTERVAL"):
        load_config(env={"IGGY_HEARTBEAT_INTERVAL": "soon"})
    with pytest.raises(ConfigError, match=r"message_bus\.max_message_size"):
        load_config(env={"IGGY_MESSAGE_BUS_MAX_MESSAGE_SIZE": "big"})


def test_memory_limits_have_defaults_and_bounds():
    cfg = load_config(env={})
    assert cfg.limits.max_unauthenticated_frame == 64 * 1024
    assert cfg.limits.max_reply_buffers == 256 * 1024 * 1024
    cfg = load_config(env={"IGGY_LIMITS_MAX_UNAUTHENTICATED_FRAME": "8 KiB", "IGGY_LIMITS_MAX_REPLY_BUFFERS": "1 GiB"})
    assert (cfg.limits.max_unauthenticated_frame, cfg.limits.max_reply_buffers) == (8 * 1024, 1 << 30)
    # a login frame must always fit
    with pytest.raises(ConfigError, match=r"limits\.max_unauthenticated_frame.*at least 4096"):
        load_config(env={"IGGY_LIMITS_MAX_UNAUTHENTICATED_FRAME": "1 KiB"})
    with pytest.raises(ConfigError, match=r"limits\.max_reply_buffers"):
        load_config(env={"IGGY_LIMITS_MAX_REPLY_BUFFERS": "0"})
    with pytest.raises(ConfigError, match=r"limits\.max_reply_buffers"):
        load_config(env={"IGGY_LIMITS_MAX_REPLY_BUFFERS": "lots"})


def test_engine_must_be_known():
    assert load_config(env={"IGGY_SYSTEM_ENGINE": "uring"}).system.engine == "uring"
    with pytest.raises(ConfigError, match=r"system\.engine"):
        load_config(env={"IGGY_SYSTEM_ENGINE": "epoll"})


def test_unknown_iggy_env_only_warns(caplog):
    env = {
        "IGGY_NO_SUCH_THING": "1",
        "IGGY_ROOT_USERNAME": "admin",
        "IGGY_ROOT_PASSWORD": "secret",
        "IGGY_ENV_PATH": "x.env",
        "OTHER_VAR": "1",
    }
    with caplog.at_level(logging.WARNING, logger="iggy.config"):
        cfg = load_config(env=env)
    assert cfg.tcp.address == "127.0.0.1:8090"
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "IGGY_NO_SUCH_THING" in warned
    for quiet in ("IGGY_ROOT_USERNAME", "IGGY_ROOT_PASSWORD", "IGGY_ENV_PATH", "OTHER_VAR"):
        assert quiet not in warned


def test_max_frame_size_follows_config():
    assert load_config(env={"IGGY_MESSAGE_BUS_MAX_MESSAGE_SIZE": "1 MiB"}).message_bus.max_message_size == 1 << 20


# --------------------------------------------------------------------------- units


@pytest.mark.parametrize(
    "text, micros",
    [
        ("1 h", 3_600_000_000),
        ("5 s", 5_000_000),
        ("500 ms", 500_000),
        ("7 days", 7 * 86_400_000_000),
        ("1m 30s", 90_000_000),
        ("1 m", 60_000_000),
        ("0 s", 0),
        ("250us", 250),
        ("0.1 s", 100_000),
        ("1h 1m 1s", 3_661_000_000),
        ("2 weeks", 14 * 86_400_000_000),
        ("15", 15_000_000),
    ],
)
def test_parse_duration(text, micros):
    assert parse_duration(text) == micros


@pytest.mark.parametrize("text", ["", "   ", "soon", "5 parsecs", "-1 s", "1 h x", "s"])
def test_parse_duration_errors(text):
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(
    "text, size",
    [
        ("16 MiB", 16 * 1024 * 1024),
        ("2 MB", 2_000_000),
        ("1 GiB", 1024**3),
        ("1024", 1024),
        ("1.5 KB", 1500),
        ("64MiB", 64 << 20),
        ("10 B", 10),
        ("1 kib", 1024),
    ],
)
def test_parse_size(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "big", "1 XB", "-1 MB", "1 MB extra", "MB"])
def test_parse_size_errors(text):
    with pytest.raises(ValueError):
        parse_size(text)


# --------------------------------------------------------------------------- root user


def test_root_credentials_from_env():
    assert root_credentials({"IGGY_ROOT_USERNAME": "admin", "IGGY_ROOT_PASSWORD": "secret"}) == (
        "admin",
        "secret",
        False,
    )


def test_root_password_alone_takes_the_username_iggy():
    """As upstream: `-e IGGY_ROOT_PASSWORD=...` alone is enough (a container's usual setting)."""
    assert root_credentials({"IGGY_ROOT_PASSWORD": "secret"}) == ("iggy", "secret", False)


def test_root_username_alone_gets_a_generated_password():
    username, password, generated = root_credentials({"IGGY_ROOT_USERNAME": "admin"})
    assert (username, generated) == ("admin", True) and len(password) >= 20
    with pytest.raises(ConfigError, match="IGGY_ROOT_USERNAME"):
        root_credentials({"IGGY_ROOT_USERNAME": "ab"})


@pytest.mark.parametrize(
    "username, password, bad",
    [
        ("ab", "secret", "IGGY_ROOT_USERNAME"),
        ("a" * 51, "secret", "IGGY_ROOT_USERNAME"),
        ("admin", "ab", "IGGY_ROOT_PASSWORD"),
        ("admin", "p" * 101, "IGGY_ROOT_PASSWORD"),
    ],
)
def test_root_credentials_lengths(username, password, bad):
    with pytest.raises(ConfigError, match=bad):
        root_credentials({"IGGY_ROOT_USERNAME": username, "IGGY_ROOT_PASSWORD": password})


def test_root_credentials_length_bounds_accepted():
    assert root_credentials({"IGGY_ROOT_USERNAME": "abc", "IGGY_ROOT_PASSWORD": "p" * 100})[2] is False
    assert root_credentials({"IGGY_ROOT_USERNAME": "a" * 50, "IGGY_ROOT_PASSWORD": "abc"})[2] is False


def test_root_credentials_generated():
    passwords = set()
    for _ in range(50):
        username, password, generated = root_credentials({})
        assert username == "iggy" and generated is True
        assert 20 <= len(password) <= 39 and password.isalnum() and password.isascii()
        passwords.add(password)
    assert len(passwords) == 50


# --------------------------------------------------------------------------- CLI


def _run_cli(tmp_path, extra_env, *args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("IGGY_")}
    env.update(extra_env)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-m", "iggy", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )


def test_cli_invalid_address_exits_2_before_server_import(tmp_path):
    proc = _run_cli(
        tmp_path, {"IGGY_TCP_ADDRESS": "not-an-address", "PYTHONVERBOSE": "1"}
    )  # -v import trace shows what was imported
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors and "tcp.address" in errors[0] and "IGGY_TCP_ADDRESS" in errors[0]
    assert "import 'iggy.config'" in proc.stderr  # the trace works...
    assert "import 'iggy.server.node'" not in proc.stderr  # ...and the server was never imported
    assert not (tmp_path / "local_data").exists()


def test_cli_dotenv_is_loaded(tmp_path):
    (tmp_path / ".env").write_text("# settings\nIGGY_HTTP_ADDRESS='bad address'\n")
    proc = _run_cli(tmp_path, {})
    assert proc.returncode == 2
    assert "http.address" in proc.stderr and "bad address" in proc.stderr


def test_cli_environment_wins_over_dotenv(tmp_path):
    (tmp_path / ".env").write_text("IGGY_TCP_ADDRESS=fine:1\n")
    proc = _run_cli(tmp_path, {"IGGY_TCP_ADDRESS": "broken"})
    assert proc.returncode == 2 and "'broken'" in proc.stderr


def test_cli_missing_config_file(tmp_path):
    proc = _run_cli(tmp_path, {}, "--config", str(tmp_path / "missing.toml"))
    assert proc.returncode == 2 and "missing.toml" in proc.stderr


def test_cli_bad_root_username_is_an_error(tmp_path):
    proc = _run_cli(tmp_path, {"IGGY_ROOT_USERNAME": "ab"})
    assert proc.returncode == 2 and "IGGY_ROOT_USERNAME" in proc.stderr


def test_server_with_only_root_password_creates_root_iggy(tmp_path):
    """`docker run -e IGGY_ROOT_PASSWORD=...` alone: the root user is `iggy` with that password."""
    import asyncio

    from apache_iggy import IggyClient

    from iggy.testing.server import IggyTestServer

    async def login(address):
        client = IggyClient(address)
        await client.connect()
        await client.login_user("iggy", "only-the-password")
        return await client.get_streams()

    with IggyTestServer(tmp_path / "data", password="only-the-password", env={"IGGY_ROOT_USERNAME": None}) as server:
        assert asyncio.run(login(server.tcp_address)) == []


def test_cli_version(tmp_path):
    proc = _run_cli(tmp_path, {}, "--version")
    assert proc.returncode == 0 and "iggy-server" in proc.stdout


def test_cli_fresh_deletes_data_dir_then_runs_server(tmp_path, monkeypatch):
    """In-process: --fresh removes the data directory, then run_server gets the config."""
    import types

    from iggy.server import cli

    data = tmp_path / "data"
    (data / "streams").mkdir(parents=True)
    seen = {}
    fake = types.ModuleType("iggy.server.node")
    fake.run_server = lambda cfg, **_: seen.setdefault("cfg", cfg)
    monkeypatch.setitem(sys.modules, "iggy.server.node", fake)
    for name in [n for n in os.environ if n.startswith("IGGY_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("IGGY_SYSTEM_PATH", str(data))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["--fresh", "--with-default-root-credentials"]) == 0
    assert not data.exists()
    assert seen["cfg"].system.path == str(data)
    assert os.environ["IGGY_ROOT_USERNAME"] == "iggy" and os.environ["IGGY_ROOT_PASSWORD"] == "iggy"


def test_cli_fresh_refuses_cwd(tmp_path, monkeypatch):
    from iggy.server import cli

    for name in [n for n in os.environ if n.startswith("IGGY_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("IGGY_SYSTEM_PATH", ".")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["--fresh"]) == 2
    assert tmp_path.exists()
