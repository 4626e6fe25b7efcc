"""The layout: no import cycle, layers that import only downward, few loose modules.

Imports are read with `ast` from the source, every one of them: at the top of a module,
inside functions and under ``TYPE_CHECKING`` alike, since a deferred import that closes
a circle is still a definition in the wrong module. ``from package import name`` is an
arrow to the submodule when ``name`` is one, else to the package's ``__init__``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PARTS = ("loyalty", "workflows", "activities", "starter", "examples")
MAX_LOOSE_MODULES = 12

# Lowest first. A module may import modules of its own layer or of a lower one.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "definitions",
        (
            "loyalty",
            "loyalty.app",
            "loyalty.errors",
            "loyalty.events",
            "loyalty.flows",
            "loyalty.flows.spec",
            "loyalty.messages",
            "loyalty.messages.providers",
            "loyalty.messages.templates",
            "loyalty.models",
            "loyalty.policies",
            "loyalty.rules",
            "loyalty.segments",
            "loyalty.segments.spec",
            "loyalty.settings",
            "loyalty.streams",
            "loyalty.streams.spec",
            "loyalty.tiers",
            "loyalty.tiers.schemes",
            "loyalty.triggers",
        ),
    ),
    ("connections", ("loyalty.store", "loyalty.temporal", "loyalty.metrics")),
    (
        "engine SQL",
        (
            "loyalty.flows.outbox",
            "loyalty.flows.recurring",
            "loyalty.flows.retention",
            "loyalty.flows.signals",
            "loyalty.ingest",
            "loyalty.ledger",
            "loyalty.messages.history",
            "loyalty.metrics.database",
            "loyalty.router",
            "loyalty.segments.membership",
            "loyalty.segments.windows",
            "loyalty.streams.capture",
            "loyalty.streams.delivery",
            "loyalty.streams.records",
            "loyalty.tiers.maintenance",
            "loyalty.tiers.promotion",
            "loyalty.tiers.status",
        ),
    ),
    (
        "Temporal",
        (
            "activities",
            "workflows",
            "loyalty.journeys",
            "loyalty.flows.schedules",
            "starter",
            "examples",
            "loyalty.api",
            "loyalty.metrics.endpoint",
        ),
    ),
    ("top", ("loyalty.cli", "worker")),
)
# What a definition must not import: it declares, it does no I/O.
IO_LIBRARIES = ("asyncpg", "httpx", "temporalio.client")


def project_modules() -> dict[str, Path]:
    """Every module of the project by dotted name (a package by its own name)."""
    found = {"worker": ROOT / "worker.py"}
    for part in PARTS:
        for path in sorted((ROOT / part).rglob("*.py")):
            dotted = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[dotted.removesuffix(".__init__")] = path
    return found


def _imported(node: ast.AST, name: str, path: Path) -> Iterator[tuple[str, list[str]]]:
    """(module, names) for each import statement in the tree, relative ones resolved."""
    for item in ast.walk(node):
        if isinstance(item, ast.Import):
            for alias in item.names:
                yield alias.name, []
        elif isinstance(item, ast.ImportFrom):
            base = item.module or ""
            if item.level:
                package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                package = package[: len(package) - item.level + 1]
                base = ".".join([*package, *([base] if base else [])])
            yield base, [alias.name for alias in item.names]


def import_graph() -> dict[str, set[str]]:
    """Module → the project modules it imports."""
    modules = project_modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for module, names in _imported(ast.parse(path.read_text()), name, path):
            if not names:
                parts = module.split(".")
                while parts and ".".join(parts) not in modules:
                    parts.pop()
                if parts:
                    targets.add(".".join(parts))
                continue
            for imported in names:
                if f"{module}.{imported}" in modules:
                    targets.add(f"{module}.{imported}")
                elif module in modules:
                    targets.add(module)
        graph[name] = targets - {name}
    return graph


def external_imports(name: str, path: Path) -> set[str]:
    """Every module a project module imports, as written."""
    return {module for module, _ in _imported(ast.parse(path.read_text()), name, path)}


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm: the sets of modules that import each other in a circle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            members = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                members.append(member)
                if member == node:
                    break
            if len(members) > 1:
                circles.append(sorted(members))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return circles


def layer_of(module: str) -> int:
    """The index in `LAYERS` of the longest prefix that names the module."""
    best, rank = -1, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), i
    assert rank >= 0, f"{module} is in no layer of tests/test_layout.py: add it"
    return rank


def test_the_search_finds_a_circle_when_there_is_one() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert strongly_connected(graph) == [["a", "b", "c"]]


def test_the_graph_reads_every_kind_of_import() -> None:
    graph = import_graph()
    # `from loyalty import ledger`: the package; `from loyalty.tiers import promotion`:
    # the submodule; imports inside functions and under TYPE_CHECKING count.
    assert "loyalty.ledger" in graph["loyalty.tiers.maintenance"]
    assert "loyalty.tiers.promotion" in graph["loyalty.router.earn"]
    assert "worker" in graph["loyalty.cli.dev"]  # imported inside a function
    assert graph["loyalty.ledger"] >= {"loyalty.ledger.postings"}


def test_no_module_imports_itself_through_others() -> None:
    circles = strongly_connected(import_graph())
    assert circles == [], "import cycles:\n" + "\n".join(" ↔ ".join(c) for c in circles)


def test_every_import_runs_down_the_layers() -> None:
    upward = [
        f"{source} ({LAYERS[layer_of(source)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})"
        for source, targets in sorted(import_graph().items())
        for target in sorted(targets)
        if layer_of(target) > layer_of(source)
    ]
    assert upward == []


def test_definitions_do_no_io() -> None:
    modules = project_modules()
    definitions = [name for name in modules if layer_of(name) == 0]
    doing_io = {
        name: sorted(
            m
            for m in external_imports(name, modules[name])
            if any(m == lib or m.startswith(lib + ".") for lib in IO_LIBRARIES)
        )
        for name in definitions
    }
    assert {name: libs for name, libs in doing_io.items() if libs} == {}


def test_few_modules_are_left_loose_and_every_subpackage_says_what_it_owns() -> None:
    loose = sorted(p.name for p in (ROOT / "loyalty").glob("*.py") if p.name != "__init__.py")
    assert len(loose) <= MAX_LOOSE_MODULES, loose
    for init in sorted((ROOT / "loyalty").glob("*/__init__.py")):
        if init.parent.name == "migrations":
            continue
        docstring = ast.get_docstring(ast.parse(init.read_text()))
        assert docstring, f"{init.parent.name}: say what the subpackage owns"
        assert "import" in docstring, f"{init.parent.name}: say what it may import"
