"""The package's shape: dependencies point one way, and modules and
functions stay small enough to read.

Every import counts, wherever it stands: at module level, inside a function
and under ``if t.TYPE_CHECKING:``. A cycle among type-only imports still
means two modules that cannot be understood apart.
"""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys
import textwrap
import typing as t

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "flask_partition"
TOP = "flask_partition"

#: Type-only imports allowed to point back up the layers. Empty: each
#: lower module states what it needs of a higher one as a Protocol.
TYPE_ONLY_BACK_REFERENCES: frozenset[tuple[str, str]] = frozenset()

#: The command line and the helpers for users' tests sit on top: no other
#: module may import them.
TOP_LAYER = ("flask_partition.cli", "flask_partition.testing")

MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, pathlib.Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


MODULES = _modules()


def _resolve(module: str, path: pathlib.Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


def _imports(module: str) -> set[str]:
    """The package modules ``module`` imports, by any import statement."""
    path = MODULES[module]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, path, node)
            # "from . import compat" imports a module; "from .x import Y" a name.
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base
                for a in node.names
            ]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target.startswith(TOP) and target != module:
                found.add(target)
    return found


GRAPH = {module: _imports(module) for module in MODULES}


def _cycle() -> list[str] | None:
    """One import cycle, as the list of its modules, or ``None``."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        stack.append(module)
        for target in sorted(GRAPH[module]):
            if (module, target) in TYPE_ONLY_BACK_REFERENCES:
                continue
            if state.get(target) == 1:
                return [*stack[stack.index(target) :], target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        stack.pop()
        state[module] = 2
        return None

    for module in sorted(GRAPH):
        # The top package re-exports the public names: importing it imports
        # everything, so edges into it would make every module a cycle.
        if module != TOP and module not in state:
            found = visit(module)
            if found:
                return found
    return None


def test_graph_sees_imports() -> None:
    # A control: the walker finds module-level, function-level and
    # type-only imports, relative and absolute.
    assert "flask_partition.topology" in GRAPH["flask_partition.session"]
    assert "flask_partition.routing.plan" in GRAPH["flask_partition.decorators"]
    assert "flask_partition._sqla" in GRAPH["flask_partition.routing.classify"]
    assert "flask_partition.topology" in GRAPH["flask_partition.transactions.modes"]


def test_no_import_cycles() -> None:
    cycle = _cycle()
    assert cycle is None, "Import cycle: " + " -> ".join(cycle or [])


def test_cycle_detection_finds_a_planted_cycle() -> None:
    # A control that shows the test can fail: plant session -> extension,
    # which imports session.
    GRAPH["flask_partition.session"].add("flask_partition.extension")
    try:
        cycle = _cycle()
    finally:
        GRAPH["flask_partition.session"].discard("flask_partition.extension")
    assert cycle is not None
    assert "flask_partition.session" in cycle


def _on_top(module: str) -> bool:
    return any(module == top or module.startswith(f"{top}.") for top in TOP_LAYER)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_runtime_modules_do_not_import_the_top_layer(module: str) -> None:
    if _on_top(module) or module == TOP:
        return
    bad = sorted(m for m in GRAPH[module] if _on_top(m))
    assert not bad, f"{module} imports {bad}: the CLI and testing helpers sit on top."


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_size(module: str) -> None:
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, (
        f"{module} has {lines} lines (limit {MAX_MODULE_LINES}): split it by"
        " responsibility."
    )


@pytest.mark.parametrize(
    "module", sorted(m for m in MODULES if m.startswith("flask_partition.cli"))
)
def test_the_commands_do_not_import_the_extension(module: str) -> None:
    # They find the app's state through a Protocol (appstate.py).
    assert "flask_partition.extension" not in GRAPH[module]


def test_the_commands_load_on_first_use() -> None:
    """``init_app`` and ``flask --help`` leave the commands unloaded; listing
    or running them loads them.
    """
    script = textwrap.dedent(
        """
        import sys
        from flask import Flask
        from flask_partition import PartitionDB

        app = Flask("lazy")
        app.config["PARTITION_DATABASE_URI"] = "sqlite://"
        PartitionDB(app)
        runner = app.test_cli_runner()
        loaded = ["flask_partition.cli" in sys.modules]
        assert runner.invoke(args=["--help"]).exit_code == 0
        loaded.append("flask_partition.cli" in sys.modules)
        result = runner.invoke(args=["partition", "shards"])
        loaded.append("flask_partition.cli" in sys.modules)
        print(loaded, result.exit_code, repr(result.output))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert result.stdout == (
        "[False, False, True] 0 \"No shards: 'PARTITION_SHARDS' is not set.\\n\"\n"
    )


def _functions(tree: ast.AST) -> t.Iterator[ast.FunctionDef | ast.AsyncFunctionDef]:
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


@pytest.mark.parametrize("module", sorted(MODULES))
def test_function_size(module: str) -> None:
    tree = ast.parse(MODULES[module].read_text())
    long = [
        f"{f.name} (line {f.lineno}, {t.cast(int, f.end_lineno) - f.lineno + 1} lines)"
        for f in _functions(tree)
        if t.cast(int, f.end_lineno) - f.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, f"{module}: functions over {MAX_FUNCTION_LINES} lines: {long}"
