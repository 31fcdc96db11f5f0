"""The reference pages keep up with the code: every configuration key the
package reads and every ``flask partition`` command and option is
documented.
"""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

from flask_partition.cli import partition_cli

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "flask_partition"
DOCS = ROOT / "docs"


def config_keys() -> set[str]:
    """Every ``PARTITION_*`` key named in the package's code, except the
    environment variables of the testing helpers.
    """
    keys: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        keys |= set(re.findall(r"[\"'](PARTITION_[A-Z_]+)[\"'\[]", path.read_text()))
    return {key for key in keys if not key.startswith("PARTITION_PG_")}


def test_the_package_reads_the_known_keys() -> None:
    assert {
        "PARTITION_DATABASE_URI",
        "PARTITION_REPLICAS",
        "PARTITION_BINDS",
        "PARTITION_SHARDS",
        "PARTITION_ENGINE_OPTIONS",
        "PARTITION_REPLICA_POLICY",
        "PARTITION_SCATTER_WORKERS",
    } <= config_keys()


@pytest.mark.parametrize("key", sorted(config_keys()))
def test_config_page_documents_every_key(key: str) -> None:
    text = (DOCS / "config.rst").read_text()
    sections = re.split(r"^\.\. data:: ", text, flags=re.MULTILINE)
    matching = [s for s in sections if s.startswith(f"{key}\n")]
    assert matching, f"docs/config.rst has no '.. data:: {key}'"
    (section,) = matching
    assert ":Default:" in section, f"{key} has no default"
    assert ":Type:" in section, f"{key} has no type"
    assert ".. code-block:: python" in section, f"{key} has no example"


@pytest.mark.parametrize("name", sorted(partition_cli.commands))
def test_cli_page_documents_every_command_and_option(name: str) -> None:
    text = (DOCS / "cli.rst").read_text()
    titles = re.findall(r"^(.+)\n-{3,}$", text, flags=re.MULTILINE)
    assert any(f"``{name}``" in title for title in titles), name
    command = partition_cli.commands[name]
    for param in command.params:
        if isinstance(param, click.Option):
            for option in param.opts:
                assert f"``{option}" in text, f"{name} {option}"
