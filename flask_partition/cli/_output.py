"""What the commands give back: exit codes, tables and JSON on standard
output, messages on standard error.
"""

from __future__ import annotations

import json
import typing as t

import click

#: Exit code: the command did what it was asked; every node answered.
EXIT_OK: t.Final = 0
#: Exit code: a node could not be reached or a cluster's schema is not at
#: the migrations' head (``status``), a node could not be reached
#: (``shards``), an operation failed on a cluster (``create-all``,
#: ``drop-all``), a model's bind is not configured, or ``drop-all`` was not
#: confirmed.
EXIT_FAILED: t.Final = 1
#: Exit code: a usage error, such as an unknown option or an unknown
#: ``--bind`` or ``--shard`` name. Nothing was done.
EXIT_USAGE: t.Final = 2


def failed() -> click.exceptions.Exit:
    """The exception that ends a command with :data:`EXIT_FAILED`."""
    return click.exceptions.Exit(EXIT_FAILED)


def echo_json(data: t.Any) -> None:
    """Print ``data`` as indented JSON."""
    click.echo(json.dumps(data, indent=2))


def plural(count: int, noun: str) -> str:
    """``1 table``, ``2 tables``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def table(header: list[str], rows: list[list[str]], right: set[int]) -> str:
    """Columns padded to their widest cell, those in ``right`` aligned right."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)
