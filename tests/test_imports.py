"""The package's imports point one way: runtime modules never import the
commands or the testing helpers, the commands never import the extension,
and the modules behind the commands are in no import cycle. Every import
counts, inside functions and under ``TYPE_CHECKING`` too.
"""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys
import textwrap

import pytest

import flask_partition

PACKAGE = pathlib.Path(flask_partition.__file__).parent


def _module_names() -> dict[str, pathlib.Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ["flask_partition", *path.relative_to(PACKAGE).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


MODULES = _module_names()


def _imports(name: str) -> set[str]:
    """The package's modules that module ``name`` imports, anywhere in it."""
    path = MODULES[name]
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            candidates = [module, *(f"{module}.{a.name}" for a in node.names)]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        found |= {c for c in candidates if c in MODULES and c != name}
    return found


GRAPH = {name: _imports(name) for name in MODULES}


def _is_cli(name: str) -> bool:
    return name == "flask_partition.cli" or name.startswith("flask_partition.cli.")


@pytest.mark.parametrize(
    "name",
    sorted(n for n in MODULES if not _is_cli(n) and n != "flask_partition.testing"),
)
def test_runtime_modules_import_neither_the_commands_nor_the_test_helpers(
    name: str,
) -> None:
    imported = GRAPH[name]
    assert not {n for n in imported if _is_cli(n)}, name
    assert "flask_partition.testing" not in imported, name


@pytest.mark.parametrize("name", sorted(n for n in MODULES if _is_cli(n)))
def test_the_commands_do_not_import_the_extension(name: str) -> None:
    assert "flask_partition.extension" not in GRAPH[name]


def _cycles() -> list[set[str]]:
    """The strongly connected components of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in GRAPH[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = set()
            while True:
                other = stack.pop()
                component.add(other)
                if other == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in GRAPH:
        if node not in index:
            visit(node)
    return components


@pytest.mark.parametrize(
    "name",
    sorted(
        n
        for n in MODULES
        if _is_cli(n)
        or n.rpartition(".")[2]
        in {
            "appstate",
            "cli_group",
            "display",
            "health",
            "migrations",
            "pgcluster",
            "schema",
            "shard_report",
            "testing",
        }
    ),
)
def test_module_is_in_no_import_cycle(name: str) -> None:
    assert not [cycle for cycle in _cycles() if name in cycle]


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
