"""The ``flask partition`` group that :meth:`PartitionDB.init_app
<flask_partition.PartitionDB.init_app>` adds to an application's CLI.

It imports :mod:`flask_partition.cli` by name the first time its commands are
listed or run, so that no runtime module imports the commands, and an app
that never runs them never loads them (nor the health checks and reports
behind them).
"""

from __future__ import annotations

import importlib
import typing as t

import click

#: The help of the ``partition`` group.
HELP: t.Final = (
    "Inspect and manage the databases of Flask-Partition: the default"
    " cluster, the binds and the shards. Exit codes: 0 success, 1 a node"
    " unreachable, a schema behind its migrations or an operation failed,"
    " 2 usage error."
)


class LazyGroup(click.Group):
    """A click group whose commands are those of another group, imported by
    name the first time they are needed.

    :param name: The group's name.
    :param import_name: ``"module:attribute"`` of the group to load.
    :param help: The group's help, shown without loading it.
    """

    def __init__(self, name: str, import_name: str, *, help: str) -> None:
        super().__init__(name, help=help)
        self.import_name = import_name
        self._loaded: click.Group | None = None

    def _load(self) -> click.Group:
        if self._loaded is None:
            module, _, attribute = self.import_name.partition(":")
            group = getattr(importlib.import_module(module), attribute)
            if not isinstance(group, click.Group):
                raise TypeError(f"{self.import_name!r} is not a click group.")
            self._loaded = group
        return self._loaded

    def list_commands(self, ctx: click.Context) -> list[str]:
        """The loaded group's commands, and any added to this one."""
        return sorted({*self.commands, *self._load().list_commands(ctx)})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        """A command added to this group, else the loaded group's."""
        if cmd_name in self.commands:
            return self.commands[cmd_name]
        return self._load().get_command(ctx, cmd_name)


def partition_group() -> LazyGroup:
    """A new ``partition`` group over :data:`flask_partition.cli.partition_cli`."""
    return LazyGroup("partition", "flask_partition.cli:partition_cli", help=HELP)
