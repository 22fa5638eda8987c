"""pytest plugin: a real Iggy server for the tests of your application, no Docker needed.

Installed with the `iggy` package (entry point `pytest11: iggy`), so the fixtures are there
as soon as `iggy` is installed next to pytest:

    def test_roundtrip(iggy_server):
        client = IggyClient(iggy_server.tcp_address)
        ...login_user(iggy_server.username, iggy_server.password)

Fixtures
    iggy_server          a started `IggyTestServer`: free ports, a temporary data directory,
                         root credentials; stopped at teardown. Scope: ini `iggy_server_scope`
                         (function, the default; module; package; session).
    iggy_server_factory  `make(**kwargs)` starts more servers (kwargs of IggyTestServer, e.g.
                         env={"IGGY_SYSTEM_ENGINE": "asyncio"}); all stopped at teardown.

ini options (pytest.ini / pyproject `[tool.pytest.ini_options]`)
    iggy_server_scope    scope of `iggy_server` (default function)
    iggy_username        root username (default iggy)
    iggy_password        root password (default iggy)
    iggy_server_env      extra server environment, one KEY=VALUE per line
                         (e.g. IGGY_SYSTEM_ENGINE=asyncio)

When a test that used `iggy_server` fails, the end of the server log is added to its report.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from typing import Any, Literal, cast

import pluggy
import pytest

from iggy.testing.server import IggyServerError, IggyTestServer

Scope = Literal["function", "class", "module", "package", "session"]
SCOPES: tuple[Scope, ...] = ("function", "class", "module", "package", "session")
LOG_TAIL_LINES = 200


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        "iggy_server_scope", "scope of the iggy_server fixture (function, module, session...)", default="function"
    )
    parser.addini("iggy_username", "root username of the iggy_server fixture", default="iggy")
    parser.addini("iggy_password", "root password of the iggy_server fixture", default="iggy")
    parser.addini(
        "iggy_server_env",
        "extra environment of the iggy_server fixture, KEY=VALUE per line",
        type="linelist",
        default=[],
    )


def _scope(fixture_name: str, config: pytest.Config) -> Scope:
    scope = config.getini("iggy_server_scope") or "function"
    if scope not in SCOPES:
        raise pytest.UsageError(f"iggy_server_scope must be one of {', '.join(SCOPES)}, not {scope!r}")
    return cast(Scope, scope)


def _settings(config: pytest.Config) -> dict[str, Any]:
    """Keyword arguments of IggyTestServer from the ini options (their values differ in type)."""
    env: dict[str, str] = {}
    for line in config.getini("iggy_server_env"):
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise pytest.UsageError(f"iggy_server_env: expected KEY=VALUE, got {line!r}")
        env[key.strip()] = value.strip()
    return {"username": config.getini("iggy_username"), "password": config.getini("iggy_password"), "env": env}


def _start(server: IggyTestServer) -> IggyTestServer:
    try:
        return server.start()
    except IggyServerError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope=_scope)
def iggy_server(tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config) -> Iterator[IggyTestServer]:
    """A running Iggy server: `.tcp_address`, `.http_url`, `.username`, `.password`, `.data_dir`."""
    server = IggyTestServer(tmp_path_factory.mktemp("iggy-server") / "data", **_settings(pytestconfig))
    _start(server)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def iggy_server_factory(
    tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config
) -> Iterator[Callable[..., IggyTestServer]]:
    """`make(**kwargs) -> IggyTestServer`, started; every server it made is stopped at teardown."""
    made: list[IggyTestServer] = []
    defaults = _settings(pytestconfig)

    def make(**kwargs: Any) -> IggyTestServer:  # any keyword argument of IggyTestServer
        settings = {**defaults, **kwargs}
        settings["env"] = {**defaults["env"], **(kwargs.get("env") or {})}
        data_dir = settings.pop("data_dir", None) or tmp_path_factory.mktemp("iggy-server") / "data"
        server = IggyTestServer(data_dir, **settings)
        made.append(server)
        return _start(server)

    try:
        yield make
    finally:
        for server in made:
            server.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pluggy.Result[pytest.TestReport], None]:
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        server = getattr(item, "funcargs", {}).get("iggy_server")
        if isinstance(server, IggyTestServer):
            tail = server.log().splitlines()[-LOG_TAIL_LINES:]
            report.sections.append(("iggy server log (last lines)", "\n".join(tail)))
