"""Imports point down the layers: no cycles, clients and workers see only the wire, and so on.

The rules read every module of gaspar_tw with L{ast} (nothing is imported). An import inside
a function or under C{if TYPE_CHECKING:} is I{lazy}: it does not count for cycles (lazy imports
are how a cycle is broken on purpose) but does count for who may import what. The last tests
import modules in a clean interpreter and look at C{sys.modules}.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

import gaspar_tw

PACKAGE = Path(gaspar_tw.__file__).resolve().parent
ROOT = "gaspar_tw"


@dataclass(frozen=True)
class Import:
    importer: str  # the importing module, e.g. "gaspar_tw.server.framed"
    imported: str  # a gaspar_tw module, or a third-party/standard module's full dotted name
    where: str  # file:line of the import statement
    lazy: bool

    def __str__(self) -> str:
        return f"{self.where} imports {self.imported}" + (" (lazily)" if self.lazy else "")


def _module_files() -> dict[str, Path]:
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = [ROOT, *path.relative_to(PACKAGE).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _root_exports(modules: dict[str, Path]) -> dict[str, str]:
    """The package root's lazy public names (C{_EXPORTS}): name -> the module it loads."""
    for node in ast.parse(modules[ROOT].read_text()).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "_EXPORTS" for t in node.targets
        ):
            return ast.literal_eval(node.value)
    return {}


def _is_type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def _imports_of(name: str, path: Path, modules: dict, exports: dict) -> list[Import]:
    """The import statements of module C{name}, resolved to full module names."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    file = str(path.relative_to(PACKAGE.parent))
    found: list[Import] = []

    def resolve(base: str, alias: str) -> str:
        # "from base import alias": a module (base.alias), a root export, or a name in base.
        if f"{base}.{alias}" in modules:
            return f"{base}.{alias}"
        if base == ROOT and alias in exports:
            return exports[alias]
        return base

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            child_lazy = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            where = f"{file}:{getattr(child, 'lineno', 0)}"
            if isinstance(child, ast.Import):
                found.extend(Import(name, a.name, where, child_lazy) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parts = package.split(".")
                    prefix = ".".join(parts[: len(parts) - child.level + 1])
                    base = f"{prefix}.{base}" if base else prefix
                targets = dict.fromkeys(resolve(base, a.name) for a in child.names)
                found.extend(Import(name, target, where, child_lazy) for target in targets)
            visit(child, child_lazy or _is_type_checking(child))

    visit(ast.parse(path.read_text(), str(path)), False)
    return found


@cache
def imports() -> tuple[Import, ...]:
    """Every import of every gaspar_tw module, and the root's lazy exports (as lazy imports)."""
    modules = _module_files()
    exports = _root_exports(modules)
    found = [
        Import(ROOT, module, "gaspar_tw/__init__.py:_EXPORTS", True) for module in exports.values()
    ]
    for name, path in modules.items():
        found += _imports_of(name, path, modules, exports)
    return tuple(found)


def ours(imported: str) -> bool:
    return imported == ROOT or imported.startswith(ROOT + ".")


def room(module: str) -> str:
    """A module's room: its subpackage (C{wire}, C{dispatch}, ...) or, at top level, its name."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ROOT


def violations(rule) -> list[str]:
    return [str(i) for i in imports() if rule(i)]


def in_rooms(module: str, *rooms: str) -> bool:
    return ours(module) and room(module) in rooms


# -- the rules ---------------------------------------------------------------------------------


def test_the_walk_sees_every_room_and_resolves_module_imports():
    # Guards the rules below against passing because the walk found nothing.
    edges = {(i.importer, i.imported, i.lazy) for i in imports()}
    assert ("gaspar_tw.worker.loop", "gaspar_tw.wire.messages", False) in edges  # a module
    assert ("gaspar_tw.dispatch", "gaspar_tw.dispatch.dispatcher", False) in edges
    assert ("gaspar_tw.host.tap", "gaspar_tw.consumer", True) in edges  # inside a function
    assert ("gaspar_tw", "gaspar_tw.producer", True) in edges  # the root's lazy exports
    assert {room(m) for m in _module_files()} >= {"wire", "worker", "dispatch", "server"}


def test_no_import_cycle_among_module_level_imports():
    graph: dict[str, list[Import]] = {}
    for i in imports():
        if ours(i.imported) and not i.lazy and i.imported != i.importer:
            graph.setdefault(i.importer, []).append(i)
    cycles = []
    state: dict[str, str] = {}  # "open" while on the DFS path, "done" after
    path: list[Import] = []

    def visit(module: str) -> None:
        state[module] = "open"
        for edge in graph.get(module, []):
            if state.get(edge.imported) == "open":
                start = next(n for n, e in enumerate(path) if e.importer == edge.imported)
                cycles.append(" -> ".join(str(e) for e in [*path[start:], edge]))
            elif edge.imported not in state:
                path.append(edge)
                visit(edge.imported)
                path.pop()
        state[module] = "done"

    for module in sorted(_module_files()):
        if module not in state:
            visit(module)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


CLIENT_AND_WORKER_SIDE = ("client", "aio", "wire", "zeromq", "worker")


def test_client_and_worker_side_import_only_the_wire_layer():
    allowed = {"wire", "zeromq", "worker", "errors", "handler", "orphans", "proctitle"}
    bad = violations(
        lambda i: (
            in_rooms(i.importer, *CLIENT_AND_WORKER_SIDE)
            and ours(i.imported)
            and i.imported != ROOT
            and room(i.imported) not in allowed
        )
    )
    assert not bad, "clients and worker processes may import only the wire layer:\n" + "\n".join(
        bad
    )


def test_the_wire_imports_only_the_standard_library_and_errors():
    # Neither Twisted, zope.interface, pyzmq nor txZMQ: every process reads the wire.
    bad = violations(
        lambda i: (
            in_rooms(i.importer, "wire")
            and not (in_rooms(i.imported, "wire", "errors") or i.imported == ROOT)
            and (ours(i.imported) or i.imported.split(".")[0] not in sys.stdlib_module_names)
        )
    )
    assert not bad, "wire/ is pure:\n" + "\n".join(bad)


def test_the_worker_process_and_zeromq_helpers_import_no_twisted():
    bad = violations(
        lambda i: (
            in_rooms(i.importer, "worker", "zeromq")
            and i.imported.split(".")[0] in {"twisted", "zope", "txzmq"}
        )
    )
    assert not bad, "worker/ and zeromq/ run without Twisted:\n" + "\n".join(bad)


def test_dispatch_knows_nothing_of_tcp_processes_or_operations():
    banned = {"server", "workers", "host", "pool", "producer", "ops", "metrics", "tap", "options"}
    bad = violations(lambda i: in_rooms(i.importer, "dispatch") and in_rooms(i.imported, *banned))
    assert not bad, "dispatch/ imports none of the layers above it:\n" + "\n".join(bad)


def test_the_front_ends_import_no_worker_sources():
    bad = violations(
        lambda i: (
            in_rooms(i.importer, "server")
            and in_rooms(i.imported, "workers", "host", "pool", "producer")
        )
    )
    assert not bad, "server/ knows requests and the dispatcher, not workers:\n" + "\n".join(bad)


def test_only_the_package_root_and_tap_import_the_producer():
    bad = violations(
        lambda i: (
            i.imported == "gaspar_tw.producer"
            and i.importer not in {ROOT, "gaspar_tw.tap", "gaspar_tw.producer"}
        )
    )
    assert not bad, (
        "the producer is the top: only twistd's tap and the root load it:\n" + "\n".join(bad)
    )


#: Which rooms each room may import (besides itself and the package root), bottom to top.
#: Every import must follow one of these; the table itself must point one way (no cycle).
ALLOWED: dict[str, set[str]] = {
    # plain Python, shared by every process
    "errors": set(),
    "proctitle": set(),
    "stats": set(),
    "examples": set(),
    "orphans": set(),
    "handler": {"orphans", "errors"},
    "consumer": {"handler", "errors"},
    "wire": {"errors"},
    "zeromq": {"wire", "errors"},
    "addresses": {"zeromq", "errors"},
    "cpus": set(),
    "config": {"addresses", "cpus"},
    "version": set(),
    # the worker process and the clients
    "worker": {"zeromq", "wire", "handler", "orphans", "proctitle", "errors"},
    "client": {"wire", "errors"},
    "aio": {"wire", "errors"},
    # the producer, bottom up
    "dispatch": {"config", "wire", "stats", "errors"},
    "server": {"dispatch", "config", "wire", "stats", "errors"},
    "workers": {
        "dispatch",
        "addresses",
        "config",
        "zeromq",
        "wire",
        "stats",
        "handler",
        "proctitle",
        "errors",
    },
    "calls": {"dispatch", "wire", "errors"},
    "metrics": {"dispatch", "config", "stats", "proctitle", "version", "errors"},
    "ops": {"client", "config", "zeromq", "wire", "stats", "proctitle", "version", "errors"},
    "pool": {
        "calls",
        "dispatch",
        "workers",
        "ops",
        "config",
        "zeromq",
        "consumer",
        "handler",
        "wire",
        "stats",
        "proctitle",
        "errors",
    },
    "producer": {
        "pool",
        "server",
        "metrics",
        "dispatch",
        "workers",
        "ops",
        "addresses",
        "config",
        "consumer",
        "handler",
        "wire",
        "stats",
        "proctitle",
        "errors",
    },
    "default_pool": {"pool", "config"},
    # twistd's option parsing and service makers
    "options": {"config", "zeromq", "version", "errors"},
    "tap": {
        "producer",
        "metrics",
        "options",
        "ops",
        "addresses",
        "config",
        "consumer",
        "handler",
        "stats",
        "proctitle",
        "errors",
    },
    "host": {
        "options",
        "workers",
        "ops",
        "config",
        "zeromq",
        "consumer",
        "handler",
        "wire",
        "stats",
        "proctitle",
        "errors",
    },
    # the public names, loaded lazily
    ROOT: {
        "pool",
        "producer",
        "default_pool",
        "config",
        "client",
        "consumer",
        "errors",
        "version",
    },
}


def test_every_room_has_a_row_in_the_table():
    missing = {room(m) for m in _module_files()} - ALLOWED.keys()
    assert not missing, f"rooms without a row in ALLOWED (say what they may import): {missing}"


def test_the_table_points_one_way():
    seen: dict[str, str] = {}

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert seen.get(name) != "open", "ALLOWED has a cycle: " + " -> ".join((*path, name))
        if name in seen:
            return
        seen[name] = "open"
        for lower in sorted(ALLOWED.get(name, ())):
            visit(lower, (*path, name))
        seen[name] = "done"

    for name in sorted(ALLOWED):
        visit(name, ())


@pytest.mark.parametrize(
    "importer",
    list(ALLOWED),
)
def test_each_room_imports_only_the_rooms_below_it(importer):
    allowed = ALLOWED[importer] | {importer, ROOT}
    bad = violations(
        lambda i: (
            room(i.importer) == importer and ours(i.imported) and room(i.imported) not in allowed
        )
    )
    assert not bad, f"{importer} may import only {sorted(allowed)}:\n" + "\n".join(bad)


# -- what a clean interpreter loads ------------------------------------------------------------


def run_clean(code: str) -> None:
    """Run C{code} in a fresh interpreter that imports this gaspar_tw; fail with its stderr."""
    path = os.pathsep.join(filter(None, [str(PACKAGE.parent), os.environ.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": path},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_the_clients_load_neither_pyzmq_nor_the_producer():
    run_clean(
        "import sys, gaspar_tw.client, gaspar_tw.aio\n"
        "loaded = [m for m in sys.modules if m.split('.')[0] in ('zmq', 'txzmq')\n"
        "          or m.startswith(('gaspar_tw.dispatch', 'gaspar_tw.server',\n"
        "                           'gaspar_tw.workers', 'gaspar_tw.producer'))\n"
        "          or m == 'twisted.internet.reactor']\n"
        "assert not loaded, loaded\n"
    )


def test_the_worker_process_loads_neither_twisted_nor_the_dispatcher():
    run_clean(
        "import sys, gaspar_tw.worker.__main__\n"
        "loaded = [m for m in sys.modules if m.split('.')[0] in ('twisted', 'zope', 'txzmq')\n"
        "          or m.startswith(('gaspar_tw.dispatch', 'gaspar_tw.workers'))]\n"
        "assert not loaded, loaded\n"
    )


def test_the_public_names_load_without_installing_the_reactor():
    run_clean(
        "import sys, gaspar_tw, gaspar_tw.client, gaspar_tw.aio\n"
        "from gaspar_tw import Producer, ProcessPool\n"
        "assert 'twisted.internet.reactor' not in sys.modules\n"
    )
