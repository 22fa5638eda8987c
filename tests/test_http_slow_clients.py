"""Slow and oversized HTTP clients are cut off (iggy.http.protocol), against a real server.

The server runs with short deadlines (1 s) so the tests are quick; they assert that the
server closes such connections (a 408/431/503 answer or EOF), waiting up to a generous
socket timeout, never how long it took.
"""

from __future__ import annotations

import socket

import httpx

from iggy.config import load_config
from iggy.http.settings import from_config
from tests.conftest import ServerProcess

WAIT = 30.0  # seconds a test waits for the server to close a connection
LIMIT = 300  # http.max_connections of the test server
SERVER_ENV = {  # the module's server (conftest.srv)
    "IGGY_HTTP_HEADER_READ_TIMEOUT": "1 s",
    "IGGY_HTTP_BODY_READ_TIMEOUT": "1 s",
    "IGGY_HTTP_KEEP_ALIVE_TIMEOUT": "1 s",
    "IGGY_HTTP_MAX_CONNECTIONS": str(LIMIT),
}


def connect(srv) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", srv.http_port), timeout=WAIT)
    return s


def answer(s: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (socket.timeout if it never does)."""
    out = b""
    while chunk := s.recv(65536):
        out += chunk
    return out


def works(srv) -> bool:
    return httpx.get(srv.http_url + "/ping", timeout=WAIT).status_code == 200


def test_many_connections_with_partial_headers_are_closed(srv):
    socks = []
    try:
        for _ in range(LIMIT - 10):
            s = connect(srv)
            s.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            socks.append(s)
        assert works(srv)  # others are served meanwhile
        for s in socks:
            assert answer(s).startswith(b"HTTP/1.1 408 ")
    finally:
        for s in socks:
            s.close()
    assert works(srv)


def test_silent_connection_and_trickled_headers_are_closed(srv):
    silent, trickle = connect(srv), connect(srv)
    try:
        trickle.sendall(b"G")
        trickle.sendall(b"ET /ping HTTP/1.1\r\n")  # bytes keep coming, the head never completes
        assert answer(silent).startswith(b"HTTP/1.1 408 ")
        assert answer(trickle).startswith(b"HTTP/1.1 408 ")
    finally:
        silent.close()
        trickle.close()


def test_slow_body_is_closed(srv):
    s = connect(srv)
    try:
        s.sendall(
            b"POST /users/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n{\"username\": "
        )
        assert b" 500 " not in answer(s)
    finally:
        s.close()
    log = srv.log_path.read_text()
    assert "request body not received" in log and "Traceback" not in log and "ERROR" not in log


def test_oversized_headers_answer_431(srv):
    s = connect(srv)
    try:
        s.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n")
        for _ in range(100):
            try:
                s.sendall(b"X-Big: " + b"a" * 1000 + b"\r\n")
            except OSError:  # closed by the server while we were still sending
                break
        assert answer(s).startswith(b"HTTP/1.1 431 ")
    finally:
        s.close()
    # big but legal headers are fine
    assert httpx.get(srv.http_url + "/ping", headers={"X-Big": "a" * 16_000}, timeout=WAIT).status_code == 200


def test_connections_over_the_limit_are_refused_503(tmp_path):
    # a server of its own, with a head deadline long enough that no connection of the test
    # is closed for being slow before the limit is reached
    srv = ServerProcess(
        tmp_path / "data", extra_env={"IGGY_HTTP_HEADER_READ_TIMEOUT": "120 s", "IGGY_HTTP_MAX_CONNECTIONS": "20"}
    ).start()
    socks = []
    try:
        for _ in range(20):
            socks.append(connect(srv))
        extra = connect(srv)
        try:
            extra.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
            assert answer(extra).startswith(b"HTTP/1.1 503 ")
        finally:
            extra.close()
        for s in socks:
            s.close()
        assert works(srv)  # the slots come back once those connections are gone
    finally:
        for s in socks:
            s.close()
        srv.stop()


def test_idle_keep_alive_connection_is_closed(srv):
    s = connect(srv)
    try:
        s.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
        reply = answer(s)  # the response, then EOF once idle for keep_alive_timeout
        assert reply.startswith(b"HTTP/1.1 200 ") and reply.count(b"HTTP/1.1") == 1
    finally:
        s.close()


def test_settings_from_config():
    cfg = load_config(
        env={
            "IGGY_HTTP_HEADER_READ_TIMEOUT": "500 ms",
            "IGGY_HTTP_BODY_READ_TIMEOUT": "2 m",
            "IGGY_HTTP_KEEP_ALIVE_TIMEOUT": "0 s",
            "IGGY_HTTP_MAX_HEADER_SIZE": "8 KiB",
            "IGGY_HTTP_MAX_CONNECTIONS": "7",
        }
    )
    s = from_config(cfg)
    assert (s.header_read_timeout, s.body_read_timeout, s.keep_alive_timeout) == (0.5, 120.0, 0.0)
    assert (s.max_header_size, s.max_connections) == (8192, 7)
    d = from_config(load_config(env={}))
    assert (d.header_read_timeout, d.body_read_timeout, d.keep_alive_timeout) == (10.0, 30.0, 5.0)
    assert (d.max_header_size, d.max_connections) == (32 * 1024, 1024)
