"""The engines' thread contract seen from outside (docs/ARCHITECTURE.md, "Threads").

- A bug in an engine's frame callback closes that connection alone, with exactly one log line
  naming it (address and client id) and the traceback, and the server keeps serving everyone
  else. The bug is made on purpose: `IGGY_TEST_FAULT_COMMAND=<code>` (iggy.engine.base)
  makes the callback raise for that command before the control plane sees it.
- Sessions are registered and closed on the main loop whichever engine serves them: after
  connect / login / logout / disconnect churn (also a disconnect with a request in flight, a
  connection that never logs in, and a consumer-group member that goes away) the clients list
  holds only the client asking, and the group has no member left.

Both run on each network engine (IGGY_TEST_ENGINE, marker `engine`).
"""

from __future__ import annotations

import re
import struct
import time

from iggy.protocol import codes
from iggy.protocol.wire import build_request
from tests.conftest import ServerProcess, uniq
from tests.rawclient import RawClient, closed_by_server, ident, wire_name

FAULT = codes.GET_STATS  # a control-plane command on both engines (never served in C)


def _wait(condition, what: str, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_failing_callback_closes_its_connection_with_one_log_line(tmp_path):
    server = ServerProcess(
        tmp_path / "data", extra_env={"IGGY_TEST_FAULT_COMMAND": str(FAULT), "IGGY_HTTP_ENABLED": "false"}
    ).start()
    try:
        bystander = RawClient(server.tcp_address)
        assert bystander.login().status == 0
        victim = RawClient(server.tcp_address)
        assert victim.login().status == 0
        me = victim.read(codes.GET_ME)
        assert me.status == 0
        client_id = struct.unpack_from("<I", me.body, 0)[0]
        host, port = victim.sock.getsockname()[:2]
        address = f"{host}:{port}"
        victim.send_raw(
            build_request(codes.OP_READ, FAULT, b"", session=victim.session, request=9, client=victim.client)
        )
        assert closed_by_server(victim.sock, 10), "the connection whose request failed stayed open"
        victim.close()
        # the others are served as before, the failing command included for nobody
        assert bystander.read(codes.PING).status == 0
        assert bystander.call(codes.CODE_OPERATIONS[codes.CREATE_STREAM], 0, wire_name(uniq("f"))).status == 0
        again = RawClient(server.tcp_address)
        assert again.login().status == 0 and again.read(codes.GET_ME).status == 0
        again.close()
        pattern = re.compile(rf"{re.escape(address)}\b")
        lines = _wait(
            lambda: [ln for ln in server.log().splitlines() if pattern.search(ln)], "the log line naming the connection"
        )
        time.sleep(0.2)  # a second line, if there were one, would be written by now
        lines = [ln for ln in server.log().splitlines() if pattern.search(ln)]
        assert len(lines) == 1, lines
        assert f"client {client_id}" in lines[0] and "InjectedFault" in lines[0], lines[0]
        assert "Traceback" in server.log() and "fails on purpose" in server.log()
        bystander.close()
        assert server.alive()
    finally:
        server.stop()


def _clients(observer: RawClient) -> list[int]:
    """Client ids of GET_CLIENTS."""
    reply = observer.read(codes.GET_CLIENTS)
    assert reply.status == 0
    body, ids, at = reply.body, [], 0
    while at < len(body):
        client_id, _user, _transport, length = struct.unpack_from("<IIBI", body, at)
        ids.append(client_id)
        at += 13 + length + 4
    return ids


def test_session_churn_leaves_only_live_sessions(tmp_path):
    server = ServerProcess(tmp_path / "data", extra_env={"IGGY_HTTP_ENABLED": "false"}).start()
    try:
        observer = RawClient(server.tcp_address)
        assert observer.login().status == 0
        me = struct.unpack_from("<I", observer.read(codes.GET_ME).body, 0)[0]
        op = codes.CODE_OPERATIONS
        stream, group = uniq("churn"), "g"
        assert observer.call(op[codes.CREATE_STREAM], 0, wire_name(stream)).status == 0
        assert (
            observer.call(op[codes.CREATE_TOPIC], 0, ident(stream) + struct.pack("<I", 2) + wire_name("t")).status == 0
        )
        assert (
            observer.call(op[codes.CREATE_CONSUMER_GROUP], 0, ident(stream) + ident("t") + wire_name(group)).status == 0
        )
        for i in range(60):
            c = RawClient(server.tcp_address)
            kind = i % 5
            if kind == 0:  # never logs in
                c.read(codes.PING)
            elif kind == 1:  # login, disconnect
                assert c.login().status == 0
            elif kind == 2:  # login, logout, disconnect
                assert c.login().status == 0
                assert c.call(codes.OP_LOGOUT, 0, b"").status == 0
            elif kind == 3:  # disconnect with a control-plane request in flight
                assert c.login().status == 0
                c.send_raw(
                    build_request(codes.OP_READ, codes.GET_STREAMS, b"", session=c.session, request=5, client=c.client)
                )
            else:  # a group member that goes away
                assert c.login().status == 0
                assert c.call(op[codes.JOIN_CONSUMER_GROUP], 0, ident(stream) + ident("t") + ident(group)).status == 0
            c.close()
        _wait(lambda: _clients(observer) == [me], "the closed sessions to go")
        reply = observer.read(codes.GET_CONSUMER_GROUP, ident(stream) + ident("t") + ident(group))
        assert reply.status == 0
        assert struct.unpack_from("<I", reply.body, 8)[0] == 0  # members_count
        observer.close()
    finally:
        server.stop()
