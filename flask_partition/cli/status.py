"""``flask partition status``: every node, its lag and its schema revision."""

from __future__ import annotations

import typing as t

import click
from flask import current_app
from flask.cli import with_appcontext

from ..health import health_report
from ..health import HealthReport
from ..migrations import head_count
from ..migrations import MigrationScripts
from ..migrations import revisions_text
from ..replicas import cluster_label
from ._output import echo_json
from ._output import failed
from ._output import plural
from ._output import table

if t.TYPE_CHECKING:
    from flask import Flask


@click.command("status")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=5.0,
    show_default=True,
    help="Seconds to wait for each connection.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@with_appcontext
def status_command(timeout: float, as_json: bool) -> None:
    """Show every node of every cluster: reachable or not, replica lag, and
    each cluster's migration revision.

    Lag is measured on PostgreSQL: the WAL bytes a replica has not replayed
    and the age of the last transaction it replayed. The revision is read
    from Alembic's version table on each primary and compared with the head
    of Flask-Migrate's migrations folder, or, without one, between the
    shards. Passwords are never shown. Exits with 1 when a node is
    unreachable or a cluster is behind its migrations.
    """
    app = t.cast("Flask", current_app._get_current_object())  # type: ignore[attr-defined]
    report = health_report(app, timeout=timeout)
    if as_json:
        echo_json(_as_json(report))
    else:
        _print(report)
    if not report.ok:
        raise failed()


def _as_json(report: HealthReport) -> dict[str, t.Any]:
    scripts = report.scripts
    migrations = None
    if scripts is not None:
        migrations = {
            "directory": scripts.directory,
            "heads": None if scripts.error else list(scripts.heads),
            "error": scripts.error,
        }
    return {
        "ok": report.ok,
        "nodes": [node.as_json() for node in report.nodes],
        "migrations": migrations,
    }


def _print(report: HealthReport) -> None:
    nodes = report.nodes
    rows = [
        [
            "default" if node.cluster is None else node.cluster,
            node.kind,
            node.name,
            "ok" if node.reachable else "UNREACHABLE",
            "-" if node.lag_bytes is None else str(node.lag_bytes),
            "-" if node.lag_seconds is None else f"{node.lag_seconds:.3f}",
            "-" if node.revisions is None else _revision_cell(node.revisions),
            node.url,
        ]
        for node in nodes
    ]
    header = [
        "CLUSTER", "KIND", "NODE", "STATE", "LAG BYTES", "LAG SECONDS",
        "REVISION", "URL",
    ]  # fmt: skip
    click.echo(table(header, rows, right={4, 5}))
    for node in nodes:
        label = cluster_label(node.cluster, shard=node.kind == "shard")
        where = f"{label} {node.name}"
        if node.error:
            click.echo(f"{where}: {node.error}", err=True)
        for note in node.notes:
            click.echo(f"{where}: {note}", err=True)
        if node.revision_error:
            click.echo(f"{where}: {node.revision_error}", err=True)
    if report.scripts is not None:
        _print_migrations(report.scripts, report)
    summary = f"{len(nodes) - len(report.down)} of {len(nodes)} nodes reachable."
    click.echo(summary, err=not report.ok)


def _revision_cell(revisions: tuple[str, ...]) -> str:
    return ",".join(revisions) or "none"


def _print_migrations(scripts: MigrationScripts, report: HealthReport) -> None:
    where = repr(scripts.directory)
    if scripts.error is not None:
        click.echo(
            f"Migrations: cannot read {where} ({scripts.error}); the shards are"
            " only compared with each other.",
            err=True,
        )
        return
    current, tracked = head_count(report.primaries, scripts)
    behind = report.behind
    click.echo(
        f"Migrations in {where} (head {revisions_text(scripts.heads)}):"
        f" {current} of {plural(tracked, 'cluster')} at the head"
        + (f", {len(behind)} behind." if behind else "."),
        err=bool(behind),
    )
