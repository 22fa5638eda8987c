"""The command registry (iggy.control.registry): one handler and one declared rule per command,
the permission checked only there and identically for the binary protocol and the HTTP API,
and iggy.control free of import cycles and of imports hidden inside functions.

* every command code the server serves has exactly one registered handler, and its rule is
  one of the named rules of iggy.control.permissions; a second registration is refused;
* no module of iggy.control or iggy.http checks a permission itself (no `can_*`, `allowed`
  or `.allows` outside permissions.py and registry.py), and every authenticated HTTP route
  runs its command through `Bridge.call_as`;
* the rules agree with the permission matrix of tests/reliability/commands.py, per TCP
  command and per HTTP route (the route's command found in its source), and a real server
  answers every denied call, and every call naming a stream, topic, group or user that does
  not exist, with the same code over TCP and over HTTP;
* the import graph of the package, counting imports inside functions too, has no cycle
  through iggy.control, and iggy.control has no import inside a function.
"""

from __future__ import annotations

import ast
import inspect
import re
import textwrap
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

import iggy
from iggy.control import permissions as perm
from iggy.control.plane import ControlPlane  # noqa: F401 - imports (registers) every command
from iggy.control.registry import COMMANDS, Command, command
from iggy.http.routes import messages as http_messages
from iggy.http.routes import streams as http_streams
from iggy.http.routes import system as http_system
from iggy.http.routes import users as http_users
from iggy.protocol import codes
from tests.reliability import commands as C
from tests.reliability.permissions import Matrix

PACKAGE = Path(iggy.__file__).parent
CONTROL = PACKAGE / "control"

# codes of the protocol this server answers with InvalidCommand: logins of the protocol
# before Register (version 2 clients log in only with LOGIN_REGISTER, 40)
NOT_SERVED = {codes.LOGIN_USER_LEGACY, codes.LOGIN_WITH_PAT_LEGACY, codes.LOGIN_REGISTER_WITH_PAT}
NAMED_RULES = {name: rule for name, rule in vars(perm).items() if isinstance(rule, perm.Rule)}


def command_codes() -> set[int]:
    """Every command code of iggy.protocol.codes: its integer constants but the operations and
    the body kinds (the rule its docstring states, which scripts/gen_ccodes.py follows)."""
    kinds = ("OP_", "CONSUMER_", "PARTITION_", "STRATEGY_", "IDENTIFIER_")
    return {v for k, v in vars(codes).items() if k.isupper() and not k.startswith(kinds) and type(v) is int}


def matrix_rule(rule: perm.Rule) -> str:
    """The name the permission matrix gives a rule (a self-or rule is tried on another user)."""
    return rule.name.removeprefix("self_or_")


# ------------------------------------------------------------------- one handler, one rule


def test_every_command_code_has_exactly_one_handler_and_one_named_rule():
    assert set(COMMANDS) == command_codes() - NOT_SERVED
    for code, cmd in COMMANDS.items():
        assert cmd.code == code and callable(cmd.handler) and callable(cmd.decode), cmd
        assert any(cmd.needs is rule for rule in NAMED_RULES.values()), (cmd.name, cmd.needs)


def test_a_second_handler_for_a_code_is_refused():
    before = COMMANDS[codes.PING]
    with pytest.raises(RuntimeError, match="registered twice"):
        command(codes.PING, needs=perm.PUBLIC)(lambda plane, session: None)
    assert COMMANDS[codes.PING] is before


def _python_files(*dirs: Path):
    for d in dirs:
        yield from sorted(d.rglob("*.py"))


def test_no_permission_is_checked_outside_the_registry():
    allowed_here = {CONTROL / "permissions.py", CONTROL / "registry.py"}
    checks = {name for name in vars(perm) if name.startswith("can_")} | {"allowed", "allows", "require"}
    assert "can_read_topic" in checks
    offenders = []
    for path in _python_files(CONTROL, PACKAGE / "http"):
        if path in allowed_here:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            name = None
            if isinstance(node, ast.Attribute):
                name = node.attr
            elif isinstance(node, ast.Name):
                name = node.id
            if name in checks:
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {name}")
    assert offenders == []


# ------------------------------------------------------------------- HTTP routes -> commands


def _route_handlers():
    """(method, path regex, placeholders, handler) of every route of the REST API."""
    routes = [
        *http_system.ROUTES,
        *http_users.ROUTES,
        *http_streams.ROUTES,
        *http_messages.ROUTES,
        http_system.metrics_route("/metrics"),
    ]
    for h in routes:
        for path in h.paths:
            pattern = re.sub(r"\{[a-z_]+:(str|int)\}", "[^/]+", path)
            for method in h.http_methods:
                yield method, re.compile(f"^{pattern}$"), path.count("{"), h


def _called_commands(handler) -> list[Command]:
    """The commands (or HTTP-only operations) a route handler runs through `call_as`."""
    fn = handler.fn
    tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    module = inspect.getmodule(fn)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "call_as":
            target = node.args[1]
            if isinstance(target, ast.Attribute):
                assert isinstance(target.value, ast.Name) and target.value.id == "codes", ast.dump(target)
                out.append(COMMANDS[getattr(codes, target.attr)])
            else:
                out.append(getattr(module, target.id))
    return out


def _handler_for(route: C.Route):
    path = route.path(C.World(stream=1, topic=2, group=3, actor=4, victim=5, root_client=6))
    matches = [(n, h) for method, rx, n, h in _route_handlers() if method == route.method and rx.match(path)]
    assert matches, route
    return min(matches, key=lambda m: m[0])[1]  # the most literal path wins (/users/logout)


def test_every_route_and_command_declares_the_rule_of_the_permission_matrix():
    for c in C.COMMANDS:
        rule = COMMANDS[c.code].needs
        expected = "auth" if c.rule == "unavailable" else c.rule
        assert matrix_rule(rule) == expected, (c.name, rule.name)
    without_command = set()
    for route in C.ROUTES:
        handler = _handler_for(route)
        called = _called_commands(handler)
        if route.rule == "public":
            assert handler.opt.get("public"), route.name
            continue
        assert not handler.opt.get("public"), route.name
        if not called:
            without_command.add(route.name)
            continue
        for cmd in called:
            assert matrix_rule(cmd.needs) == route.rule, (route.name, cmd.name, cmd.needs.name)
    # authenticated by the guard alone: the static option catalog (logout runs `revoke_jwt`,
    # declared LOGGED_IN, when the cluster's nodes share the JWT key)
    assert without_command == {"options"}


# ------------------------------------------------------------------- imports


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_block(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _executed_nodes(tree: ast.AST):
    """Every node but those under `if TYPE_CHECKING:`, whose imports only mypy reads (a command
    module names the ControlPlane that imports it in its annotations): they never run, so they
    make no import cycle."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        if _type_checking_block(node):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))


def import_graph() -> dict[str, set[str]]:
    """module -> the package's modules it imports when it runs, wherever the import statement is."""
    files = {_module_name(p): p for p in _python_files(PACKAGE)}
    graph = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        edges = set()
        for node in _executed_nodes(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                edges |= {a.name for a in node.names if a.name in files}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parent + ([base] if base else []))
                for a in node.names:
                    sub = f"{base}.{a.name}"
                    if sub in files:
                        edges.add(sub)
                    elif base in files:
                        edges.add(base)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (or a self-import)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph[v]:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_import_graph_skips_only_type_checking_blocks():
    tree = ast.parse(
        "import a\nif TYPE_CHECKING:\n    import b\nelse:\n    import c\nif typing.TYPE_CHECKING:\n    import d\n"
        "def f():\n    import e\n"
    )
    imported = {a.name for n in _executed_nodes(tree) if isinstance(n, ast.Import) for a in n.names}
    assert imported == {"a", "c", "e"}


def test_the_cycle_finder_sees_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_goes_through_iggy_control():
    graph = import_graph()
    assert "iggy.control.lookup" in graph["iggy.control.registry"]  # the graph is really built
    assert [c for c in cycles(graph) if any(m.startswith("iggy.control") for m in c)] == []


def test_iggy_control_imports_nothing_inside_a_function():
    inside = []
    for path in _python_files(CONTROL):
        for fn in ast.walk(ast.parse(path.read_text())):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                inside += [
                    f"{path.name}:{n.lineno}" for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom))
                ]
    assert inside == []


# ------------------------------------------------------------------- the same answer on both transports

GHOST = 3_999_999_999  # an id no entity of the test has

# (TCP command, HTTP route, what its target is): every pair of the matrix's tables that does
# the same thing
PAIRS = [
    ("get_stats", "stats", None),
    ("get_clients", "clients", None),
    ("get_client", "client", None),
    ("get_users", "users", None),
    ("get_user", "user", "user"),
    ("create_user", "create_user", None),
    ("update_user", "update_user", "user"),
    ("delete_user", "delete_user", "user"),
    ("change_password", "change_password", "user"),
    ("update_permissions", "update_permissions", "user"),
    ("get_streams", "streams", None),
    ("create_stream", "create_stream", None),
    ("get_stream", "stream", "stream"),
    ("update_stream", "update_stream", "stream"),
    ("delete_stream", "delete_stream", "stream"),
    ("purge_stream", "purge_stream", "stream"),
    ("get_topics", "topics", "stream"),
    ("create_topic", "create_topic", "stream"),
    ("get_topic", "topic", "topic"),
    ("update_topic", "update_topic", "topic"),
    ("delete_topic", "delete_topic", "topic"),
    ("purge_topic", "purge_topic", "topic"),
    ("create_partitions", "create_partitions", "topic"),
    ("delete_partitions", "delete_partitions", "topic"),
    ("delete_segments", "delete_segments", "topic"),
    ("get_consumer_groups", "groups", "topic"),
    ("create_consumer_group", "create_group", "topic"),
    ("get_consumer_group", "group", "group"),
    ("delete_consumer_group", "delete_group", "group"),
    ("get_consumer_offset", "get_offset", "topic"),
    ("store_consumer_offset", "store_offset", "topic"),
    ("delete_consumer_offset", "delete_offset", "topic"),
    ("send_messages", "send", "topic"),
    # a poll of a missing stream or topic is the generic 404 over HTTP (a read) but 1009/2010
    # over TCP, as upstream: compared only where both exist
    ("poll_messages", "poll", None),
]
ROUTES = {r.name: r for r in C.ROUTES}


def ghosts(w: C.World, target: str | None) -> list[tuple[str, C.World]]:
    """Worlds in which what the command names does not exist, from the outermost in."""
    if target == "user":
        return [("missing user", replace(w, victim=GHOST))]
    out = []
    if target in ("stream", "topic", "group"):
        out.append(("missing stream", replace(w, stream=GHOST)))
    if target in ("topic", "group"):
        out.append(("missing topic", replace(w, topic=GHOST)))
    if target == "group":
        out.append(("missing group", replace(w, group=GHOST)))
    return out


def tcp_outcome(matrix: Matrix, name: str, w: C.World):
    cmd = C.BY_NAME[name]
    reply = matrix.actor.call(cmd.op, cmd.code, cmd.body(w))
    if reply.code:
        return reply.code
    return "empty" if cmd.op == 2 and not reply.body else "ok"


def http_outcome(http: httpx.Client, auth: dict, name: str, w: C.World):
    r = ROUTES[name].request(http, w, auth)
    if r.status_code < 300:
        return "ok"
    body = r.json()
    return "empty" if body["id"] == 404 else body["id"]


def test_denied_and_not_found_calls_answer_the_same_code_over_tcp_and_http(srv):
    matrix = Matrix(srv)
    compared = []
    try:
        with httpx.Client(base_url=srv.http_url, timeout=30) as http:
            auth = matrix._http_login(http)

            def compare(label, tcp_name, http_name, w):
                tcp, rest = tcp_outcome(matrix, tcp_name, w), http_outcome(http, auth, http_name, w)
                compared.append((label, tcp_name, tcp))
                assert tcp == rest, f"{tcp_name} / {http_name} {label}: TCP {tcp}, HTTP {rest}"

            matrix.set_actor(None)
            for tcp_name, http_name, target in PAIRS:
                compare("without permissions", tcp_name, http_name, matrix.world)
                for label, w in ghosts(matrix.world, target):
                    compare(f"without permissions, {label}", tcp_name, http_name, w)
            matrix.set_actor(perm.all_permissions())
            for tcp_name, http_name, target in PAIRS:
                for label, w in ghosts(matrix.world, target):
                    compare(f"with every permission, {label}", tcp_name, http_name, w)
    finally:
        matrix.close()
    refused = [c for c in compared if c[0] == "without permissions"]
    assert len(refused) == len(PAIRS) and all(code == 41 for _, _, code in refused), refused
    # the not-found codes were met too, not only refusals
    assert {1009, 2010, 5000, 20, "empty"} <= {code for _, _, code in compared}
