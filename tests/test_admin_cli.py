"""The `iggy` admin CLI, run as a subprocess against a real server, in both output modes.

Every test shares the module's server (`srv`) and uses unique names. The human mode is
checked for the names and the table frame, the JSON mode (`--json`) for exact values.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from tests.conftest import REPO, uniq


def run(srv, *args, creds=True, env=None, stdin=None, check=True):
    cmd = [sys.executable, "-m", "iggy.admin", "--tcp-server-address", srv.tcp_address]
    if creds:
        cmd += ["-u", "iggy", "-p", "iggy"]
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("IGGY_")}
    full_env.pop("COLUMNS", None)
    full_env["PYTHONPATH"] = str(REPO)
    full_env.update(env or {})
    proc = subprocess.run(
        cmd + [str(a) for a in args], env=full_env, input=stdin, capture_output=True, text=True, timeout=60
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"iggy {' '.join(map(str, args))} exited {proc.returncode}:\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
        )
    return proc


def js(srv, *args, **kw):
    """Run with --json and parse stdout."""
    return json.loads(run(srv, "--json", *args, **kw).stdout)


def error_of(proc) -> dict:
    """The JSON error object a failed --json command printed on stderr."""
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    return json.loads(proc.stderr)["error"]


# --------------------------------------------------------------------------- basics


def test_help_names_every_command():
    proc = subprocess.run(
        [sys.executable, "-m", "iggy.admin", "--help"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=60,
    )
    assert proc.returncode == 0
    for command in (
        "stream",
        "topic",
        "partition",
        "segment",
        "user",
        "pat",
        "client",
        "consumer-group",
        "consumer-offset",
        "message",
        "ping",
        "me",
        "stats",
        "options",
    ):
        assert command in proc.stdout
    for option in ("--tcp-server-address", "--username", "--password", "--token", "--json"):
        assert option in proc.stdout


def test_ping_needs_no_credentials(srv):
    proc = run(srv, "ping", "-c", "2", creds=False)
    assert "Ping sequence id: 1" in proc.stdout and "Ping sequence id: 2" in proc.stdout
    summary = js(srv, "ping", "--count", "3", creds=False)
    assert summary["count"] == 3 and len(summary["times_ms"]) == 3
    assert summary["min_ms"] <= summary["avg_ms"] <= summary["max_ms"]


def test_credentials_from_options_environment_and_errors(srv):
    # no credentials at all
    proc = run(srv, "stream", "list", creds=False, check=False)
    assert proc.returncode == 1 and "Missing iggy server credentials" in proc.stderr
    assert error_of(run(srv, "--json", "stream", "list", creds=False, check=False))["code"] == 40
    # IGGY_USERNAME / IGGY_PASSWORD, as upstream
    me = js(srv, "me", creds=False, env={"IGGY_USERNAME": "iggy", "IGGY_PASSWORD": "iggy"})
    assert me["user_id"] == 0 and me["transport"] == "tcp"
    # wrong password: InvalidCredentials, human and JSON
    proc = run(srv, "-u", "iggy", "-p", "wrong", "me", creds=False, check=False)
    assert proc.returncode == 1 and "Invalid credentials" in proc.stderr and "iggy" in proc.stderr
    err = error_of(run(srv, "--json", "-u", "iggy", "-p", "wrong", "me", creds=False, check=False))
    assert err["code"] == 42 and err["id"] == "invalid_credentials"
    # the password can come from stdin when only the username is given
    me = js(srv, "-u", "iggy", "me", creds=False, stdin="iggy\n")
    assert me["user_id"] == 0


def test_unreachable_server_is_an_error(srv):
    proc = subprocess.run(
        [sys.executable, "-m", "iggy.admin", "--tcp-server-address", "127.0.0.1:1", "ping"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=60,
    )
    assert proc.returncode == 1 and "cannot connect" in proc.stderr


# --------------------------------------------------------------------------- streams


def test_stream_lifecycle(srv):
    name = uniq("cli-stream")
    created = js(srv, "stream", "create", name)
    assert created["name"] == name and created["topics_count"] == 0
    sid = created["id"]

    table = run(srv, "stream", "list").stdout
    assert name in table and "Name" in table and "Topics" in table
    assert any(s["id"] == sid and s["name"] == name for s in js(srv, "stream", "list"))
    lines = run(srv, "stream", "list", "--list-mode", "list").stdout.splitlines()
    assert any(line.split("|")[0] == str(sid) and line.split("|")[2] == name for line in lines)

    by_name = js(srv, "stream", "get", name)
    by_id = js(srv, "s", "g", sid)  # the upstream aliases
    assert by_name == by_id and by_name["topics"] == []
    human = run(srv, "stream", "get", name).stdout
    assert "Stream name" in human and name in human

    renamed = name + "-b"
    assert "updated" in run(srv, "stream", "update", name, renamed).stdout
    assert js(srv, "stream", "get", sid)["name"] == renamed
    assert js(srv, "stream", "purge", renamed) == {"status": "ok", "message": f"Stream with ID: {renamed} purged"}

    err = error_of(run(srv, "--json", "stream", "create", renamed, check=False))
    assert err["code"] == 1012  # StreamNameAlreadyExists

    assert "deleted" in run(srv, "stream", "delete", renamed).stdout
    err = error_of(run(srv, "--json", "stream", "get", renamed, check=False))
    assert err["code"] == 1010  # StreamNameNotFound
    proc = run(srv, "stream", "get", sid, check=False)
    assert proc.returncode == 1 and "was not found" in proc.stderr


# --------------------------------------------------------------------------- topics and partitions


def test_topic_and_partition_lifecycle(srv):
    stream = uniq("cli-topics")
    js(srv, "stream", "create", stream)
    topic = uniq("t")
    t = js(srv, "topic", "create", stream, topic, 3, "gzip", "1day", "2h", "-m", "10GB")
    assert t["name"] == topic and t["partitions_count"] == 3 and len(t["partitions"]) == 3
    assert t["compression_algorithm"] == "gzip"
    assert t["message_expiry"] == (26 * 3600) * 1_000_000
    assert t["max_topic_size"] == 10_000_000_000

    listing = run(srv, "topic", "list", stream).stdout
    assert topic in listing and "gzip" in listing and "1day 2h" in listing and "10 GB" in listing
    assert [x["name"] for x in js(srv, "topic", "list", stream)] == [topic]

    got = js(srv, "topic", "get", stream, topic)
    assert [p["id"] for p in got["partitions"]] == [0, 1, 2]
    assert "Partition ID" in run(srv, "t", "g", stream, topic).stdout

    # options after the positionals, --set, and "unlimited"
    other = uniq("t2")
    t2 = js(srv, "topic", "create", stream, other, 1, "--set", "segment_size=2MiB", "none", "unlimited")
    assert t2["compression_algorithm"] == "none" and t2["message_expiry"] == 2**64 - 1
    assert t2["options"]["segment_size"] == 2 * 1024 * 1024
    err = error_of(run(srv, "--json", "topic", "create", stream, uniq("t3"), 1, "--set", "bogus=1", check=False))
    assert err["code"] == 4041  # UnsupportedOptionKey

    # update: new name, compression and expiry (a patch: max size stays)
    renamed = topic + "-b"
    run(srv, "topic", "update", stream, topic, renamed, "none", "30min")
    got = js(srv, "topic", "get", stream, renamed)
    assert got["compression_algorithm"] == "none" and got["message_expiry"] == 1800 * 1_000_000
    assert got["max_topic_size"] == 10_000_000_000

    assert "Created 2 partitions" in run(srv, "partition", "create", stream, renamed, 2).stdout
    assert js(srv, "topic", "get", stream, renamed)["partitions_count"] == 5
    js(srv, "p", "d", stream, renamed, 1)
    assert js(srv, "topic", "get", stream, renamed)["partitions_count"] == 4

    run(srv, "topic", "purge", stream, renamed)
    run(srv, "topic", "delete", stream, renamed)
    err = error_of(run(srv, "--json", "topic", "get", stream, renamed, check=False))
    assert err["code"] == 2011  # TopicNameNotFound
    assert [x["name"] for x in js(srv, "topic", "list", stream)] == [other]


# --------------------------------------------------------------------------- messages and offsets


def test_send_and_poll_messages(srv):
    stream, topic = uniq("cli-msg"), "events"
    js(srv, "stream", "create", stream)
    js(srv, "topic", "create", stream, topic, 2)

    sent = js(
        srv,
        "message",
        "send",
        stream,
        topic,
        "-p",
        1,
        "hello",
        "world",
        "-H",
        "trace:string:abc,retries:uint8:3",
        "-H",
        "ok:bool:true",
    )
    assert sent["messages_count"] == 2
    assert sent["confirmations"][0]["partition_id"] == 1 and sent["confirmations"][0]["base_offset"] == 0
    # messages from stdin, one per line
    proc = run(srv, "message", "send", stream, topic, "--partition-id", 1, stdin="third\nfourth\n")
    assert "Sent 2 message(s)" in proc.stdout

    polled = js(srv, "message", "poll", stream, topic, 1, "--first", "-m", 10)
    assert polled["partition_id"] == 1 and polled["current_offset"] == 3
    assert [m["payload"] for m in polled["messages"]] == ["hello", "world", "third", "fourth"]
    assert [m["offset"] for m in polled["messages"]] == [0, 1, 2, 3]
    assert polled["messages"][0]["headers"] == {
        "trace": {"kind": "string", "value": "abc"},
        "retries": {"kind": "uint8", "value": 3},
        "ok": {"kind": "bool", "value": True},
    }
    assert polled["messages"][2]["headers"] == {}

    table = run(srv, "message", "poll", stream, topic, 1, "-o", 1, "-m", 2, "--show-headers").stdout
    assert "Polled 2 messages" in table and "world" in table and "third" in table
    assert "trace (string) = abc" in table and "hello" not in table
    last = js(srv, "message", "poll", stream, topic, 1, "--last")
    assert [m["payload"] for m in last["messages"]] == ["fourth"]

    # a keyed send lands on one partition, every time
    first = js(srv, "message", "send", stream, topic, "-m", "user-1", "k1")["confirmations"][0]["partition_id"]
    again = js(srv, "message", "send", stream, topic, "-m", "user-1", "k2")["confirmations"][0]["partition_id"]
    assert first == again

    # next + auto-commit moves the consumer's stored offset; consumer-offset get/set read and write it
    got = js(srv, "message", "poll", stream, topic, 1, "--next", "-m", 2, "-a", "-c", "worker")
    assert [m["offset"] for m in got["messages"]] == [0, 1]
    offset = js(srv, "consumer-offset", "get", "worker", stream, topic, 1)
    assert offset["stored_offset"] == 1 and offset["current_offset"] >= 3
    got = js(srv, "message", "poll", stream, topic, 1, "-n", "-c", "worker")
    assert [m["offset"] for m in got["messages"]] == [2]
    run(srv, "consumer-offset", "set", "worker", stream, topic, 1, 0)
    assert js(srv, "o", "g", "worker", stream, topic, 1)["stored_offset"] == 0
    assert "Stored offset" in run(srv, "consumer-offset", "get", "worker", stream, topic, 1).stdout

    err = error_of(run(srv, "--json", "message", "poll", stream, topic, 9, "-f", check=False))
    assert err["code"] == 3007  # PartitionNotFound
    proc = run(srv, "message", "poll", stream, topic, 1, check=False)  # a strategy is required
    assert proc.returncode == 2


# --------------------------------------------------------------------------- users and tokens


def test_user_lifecycle(srv):
    name = uniq("u")
    user = js(srv, "user", "create", name, "secret1", "-g", "r_srv,p_msg", "-s", "0:r_str,s_msg#1:p_msg")
    assert user["username"] == name and user["status"] == "active"
    perms = user["permissions"]
    assert perms["global"]["read_servers"] and perms["global"]["poll_messages"]
    assert not perms["global"]["manage_users"]
    assert perms["streams"]["0"]["read_stream"] and perms["streams"]["0"]["send_messages"]
    assert perms["streams"]["0"]["topics"]["1"]["poll_messages"]

    assert any(u["username"] == name for u in js(srv, "user", "list"))
    assert name in run(srv, "user", "list").stdout
    human = run(srv, "user", "get", name).stdout
    assert "read_servers, poll_messages" in human

    # the new user logs in with its own credentials
    me = js(srv, "-u", name, "-p", "secret1", "me", creds=False)
    assert me["user_id"] == user["id"]

    # status, password, name, permissions
    run(srv, "user", "status", name, "inactive")
    err = error_of(run(srv, "--json", "-u", name, "-p", "secret1", "me", creds=False, check=False))
    assert err["code"] == 42  # an inactive user's password login is refused as invalid
    run(srv, "user", "status", name, "active")
    run(srv, "user", "password", name, "secret1", "secret2")
    assert js(srv, "-u", name, "-p", "secret2", "me", creds=False)["user_id"] == user["id"]
    renamed = name + "b"
    run(srv, "user", "name", name, renamed)
    assert js(srv, "user", "get", user["id"])["username"] == renamed
    run(srv, "user", "permissions", renamed)  # no flags: remove them
    assert js(srv, "user", "get", renamed)["permissions"] is None
    run(srv, "user", "permissions", renamed, "-g", "read_streams")
    assert js(srv, "user", "get", renamed)["permissions"]["global"]["read_streams"]

    run(srv, "user", "delete", renamed)
    err = error_of(run(srv, "--json", "user", "get", renamed, check=False))
    assert err["code"] == 20


def test_personal_access_tokens(srv):
    name = uniq("pat")[:30]
    created = js(srv, "pat", "create", name)
    assert created["name"] == name and len(created["token"]) > 20
    token = created["token"]

    # the token logs in (as the user that made it)
    assert js(srv, "-t", token, "me", creds=False)["user_id"] == 0

    quiet = run(srv, "-q", "pat", "create", name + "q", "1day").stdout.strip()
    assert "\n" not in quiet and len(quiet) > 20
    tokens = {t["name"]: t for t in js(srv, "pat", "list")}
    assert tokens[name]["expiry_at"] is None and tokens[name + "q"]["expiry_at"] > 0
    table = run(srv, "pat", "list").stdout
    assert name in table and "unlimited" in table

    run(srv, "pat", "delete", name)
    assert name not in {t["name"] for t in js(srv, "pat", "list")}
    err = error_of(run(srv, "--json", "-t", token, "me", creds=False, check=False))
    assert err["code"] == 53  # InvalidPersonalAccessToken
    run(srv, "pat", "delete", name + "q")


# --------------------------------------------------------------------------- consumer groups


def test_consumer_groups(srv):
    stream = uniq("cli-groups")
    js(srv, "stream", "create", stream)
    js(srv, "topic", "create", stream, "orders", 3)
    group = js(srv, "consumer-group", "create", stream, "orders", "billing")
    assert group["name"] == "billing" and group["partitions_count"] == 3 and group["members"] == []

    assert [g["name"] for g in js(srv, "consumer-group", "list", stream, "orders")] == ["billing"]
    table = run(srv, "g", "l", stream, "orders").stdout
    assert "billing" in table and "Members Count" in table
    assert js(srv, "consumer-group", "get", stream, "orders", "billing")["id"] == group["id"]
    assert "Consumer group name" in run(srv, "consumer-group", "get", stream, "orders", group["id"]).stdout

    run(srv, "consumer-group", "delete", stream, "orders", "billing")
    assert js(srv, "consumer-group", "list", stream, "orders") == []
    assert "No consumer groups found" in run(srv, "consumer-group", "list", stream, "orders").stdout
    err = error_of(run(srv, "--json", "consumer-group", "get", stream, "orders", "billing", check=False))
    assert err["code"] == 5003  # ConsumerGroupNameNotFound


# --------------------------------------------------------------------------- system


def test_stats_me_clients_and_options(srv):
    stream = uniq("cli-stats")
    js(srv, "stream", "create", stream)
    stats = js(srv, "stats")
    assert stats["streams_count"] >= 1 and stats["process_id"] == srv.proc.pid
    assert stats["iggy_server_version"] and stats["hostname"] == socket.gethostname()
    # the fields after the strings and the cache metrics are read in their place
    assert stats["threads_count"] >= 1 and 0 < stats["free_disk_space"] <= stats["total_disk_space"]
    assert stats["cache_metrics"] == [] and stats["start_time"] > 0 and stats["clients_count"] >= 1
    table = run(srv, "stats").stdout
    assert "Iggy Server PID" in table and str(srv.proc.pid) in table
    assert f"Iggy Server PID|{srv.proc.pid}" in run(srv, "stats", "-o", "list").stdout
    assert json.loads(run(srv, "stats", "-o", "json").stdout)["process_id"] == srv.proc.pid

    me = js(srv, "me")
    assert me["user_id"] == 0 and me["address"].startswith("127.0.0.1:")
    assert me["consumer_groups"] == [] and me["consumer_groups_count"] == 0
    assert "Client ID" in run(srv, "me").stdout

    clients = js(srv, "client", "list")
    assert clients and all(c["transport"] == "tcp" for c in clients)
    assert "Transport" in run(srv, "client", "list").stdout
    err = error_of(run(srv, "--json", "client", "get", 999_999, check=False))
    assert err["code"] == 100

    options = {o["key"]: o for o in js(srv, "options", "topic")}
    assert options["segment_size"]["kind"] == "uint64"
    assert "segment_size" in run(srv, "options", "topic").stdout


def test_plain_tables_without_rich(srv):
    """IGGY_CLI_TABLES=plain: the built-in table renderer (used when rich is not installed)."""
    stream = uniq("cli-plain")
    js(srv, "stream", "create", stream)
    text = run(srv, "stream", "list", env={"IGGY_CLI_TABLES": "plain"}).stdout
    lines = text.splitlines()
    assert lines[0].startswith("+-") and lines[2].startswith("+=")
    assert any(line.startswith("| ") and f" {stream} " in line for line in lines)


def test_quiet_and_json_after_the_command(srv):
    name = uniq("cli-quiet")
    assert run(srv, "-q", "stream", "create", name).stdout == ""
    # --json is accepted after the action as well as before the command
    assert json.loads(run(srv, "stream", "get", name, "--json").stdout)["name"] == name


@pytest.mark.parametrize("bad", [["topic", "create"], ["message", "send", "s"], ["user", "create", "x"]])
def test_usage_errors_exit_2(srv, bad):
    assert run(srv, *bad, check=False).returncode == 2


def test_segment_delete(srv):
    stream = uniq("cli-seg")
    js(srv, "stream", "create", stream)
    js(srv, "topic", "create", stream, "t", 1, "--set", "segment_size=1MiB")
    line = "x" * 400_000 + "\n"
    for _ in range(3):  # 7 messages of 400 kB: three 1 MiB segments
        run(srv, "message", "send", stream, "t", "-p", 0, stdin=line * (3 if _ < 2 else 1))
    before = js(srv, "topic", "get", stream, "t")["partitions"][0]
    assert before["segments_count"] == 3 and before["messages_count"] == 7
    assert "Deleted 1 segments" in run(srv, "segment", "delete", stream, "t", 0, 1).stdout
    after = js(srv, "topic", "get", stream, "t")["partitions"][0]
    assert after["segments_count"] == 2 and after["messages_count"] < 7
    err = error_of(run(srv, "--json", "seg", "d", stream, "t", 5, 1, check=False))
    assert err["code"] == 3007
