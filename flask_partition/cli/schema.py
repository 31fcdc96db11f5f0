"""``flask partition create-all`` and ``drop-all``: the tables of the models,
cluster by cluster, on the primaries.
"""

from __future__ import annotations

import typing as t

import click
from flask.cli import with_appcontext

from ..appstate import app_state
from ..display import display_url
from ..schema import configured_targets
from ..schema import Outcome
from ..schema import run_each
from ..schema import SelectionError
from ..schema import Target
from ..schema import unconfigured
from ._output import failed
from ._output import plural


def _cluster_options(f: t.Callable[..., t.Any]) -> t.Callable[..., t.Any]:
    f = click.option(
        "--shard",
        "shards",
        multiple=True,
        metavar="NAME",
        help="A shard (the sharded tables). Repeatable.",
    )(f)
    f = click.option(
        "--bind",
        "binds",
        multiple=True,
        metavar="NAME",
        help="A bind of 'PARTITION_BINDS'. Repeatable.",
    )(f)
    f = click.option("--default", "default", is_flag=True, help="The default cluster.")(
        f
    )
    return f


@click.command("create-all")
@_cluster_options
@with_appcontext
def create_all_command(
    default: bool, binds: tuple[str, ...], shards: tuple[str, ...]
) -> None:
    """Create missing tables on the primaries, one line per cluster.

    Without options, on every cluster: the default one, each bind and each
    shard. With ``--default``, ``--bind`` or ``--shard``, on those only.
    Existing tables are left as they are. Exits with 1 when a cluster
    failed (the others are still done).
    """
    targets = _targets(default, binds, shards)
    _run(targets, "create_all", not (default or binds or shards))


@click.command("drop-all")
@_cluster_options
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@with_appcontext
def drop_all_command(
    default: bool, binds: tuple[str, ...], shards: tuple[str, ...], yes: bool
) -> None:
    """Drop the tables of the models on the primaries, one line per cluster.

    Without options, on every cluster; with ``--default``, ``--bind`` or
    ``--shard``, on those only. Asks first unless ``--yes`` is given; no
    answer, or any answer but yes, exits with 1 and drops nothing.
    """
    targets = _targets(default, binds, shards)
    if not yes:
        click.echo("This drops the tables of:")
        for target in targets:
            names = ", ".join(target.metadata.tables) or "no tables"
            click.echo(f"  {target.label} ({display_url(target.engine.url)}): {names}")
        if not click.confirm("Drop them?", default=False):
            click.echo("Nothing was dropped.", err=True)
            raise failed()
    _run(targets, "drop_all", not (default or binds or shards))


def _targets(
    default: bool, binds: tuple[str, ...], shards: tuple[str, ...]
) -> list[Target]:
    """The clusters the options select (all without options), checked
    before anything is done: an unknown name is a usage error.
    """
    try:
        return configured_targets(
            app_state().db, default=default, binds=binds, shards=shards
        )
    except SelectionError as error:
        raise click.BadParameter(str(error), param_hint=f"'--{error.kind}'") from None


def _run(targets: list[Target], operation: str, everything: bool) -> None:
    """Run ``operation`` on each target, one line each; then, when every
    cluster was asked for, report the models whose cluster is missing.
    """
    failures = 0
    for outcome in run_each(targets, operation):
        where = f"{outcome.target.label} ({display_url(outcome.target.engine.url)})"
        if outcome.error is not None:
            failures += 1
            click.echo(f"{where}: failed: {outcome.error}", err=True)
        else:
            click.echo(f"{where}: {_result(outcome, operation)}")
    problems = unconfigured(app_state().db) if everything else []
    for problem in problems:
        click.echo(f"Error: {problem}", err=True)
    if failures or problems:
        raise failed()


def _result(outcome: Outcome, operation: str) -> str:
    tables, existing = outcome.tables, outcome.existing
    if operation != "create_all":
        if not existing:
            return "no tables to drop"
        return f"dropped {plural(len(existing), 'table')}: {', '.join(existing)}"
    if not tables:
        return "no tables"
    created = outcome.created
    if created:
        result = f"created {plural(len(created), 'table')}: {', '.join(created)}"
        if existing:
            result += f"; {len(existing)} existed"
        return result
    verb = "exists" if len(tables) == 1 else "exist"
    return f"nothing to create ({plural(len(tables), 'table')} {verb})"
