"""``flask partition recover``: resolve the prepared transactions of
two-phase commits that did not finish.
"""

from __future__ import annotations

import click
import sqlalchemy.exc as sa_exc
from flask.cli import with_appcontext

from ..appstate import app_state
from ..display import error_text
from ..transactions.recovery import recover
from ._output import EXIT_FAILED
from ._output import plural
from ._output import table


@click.command("recover")
@click.option(
    "--dry-run", is_flag=True, help="Show the decisions; commit or roll back nothing."
)
@click.option(
    "--min-age",
    type=click.FloatRange(min=0),
    default=60.0,
    show_default=True,
    help="Seconds a prepared transaction must be old before it is resolved.",
)
@with_appcontext
def recover_command(dry_run: bool, min_age: float) -> None:
    """Resolve prepared transactions that two-phase commits left behind.

    On every PostgreSQL primary, lists Flask-Partition's prepared
    transactions (ids 'fp1.*', this database only) and commits those whose
    commit record exists, rolls back the others. Younger ones are left
    ('wait'): their commit may still be running. Exits with 1 when a
    primary cannot be reached or some are left waiting.
    """
    router = app_state().router
    try:
        results = recover(router, dry_run=dry_run, min_age=min_age)
    except sa_exc.SQLAlchemyError as error:
        click.echo(f"Error: {error_text(error, *router.engines())}", err=True)
        raise SystemExit(EXIT_FAILED) from None
    if not results:
        click.echo("No prepared transactions of Flask-Partition.")
        return
    verbs = {"commit": "committed", "rollback": "rolled back", "wait": "left"}
    rows = [
        [
            item.cluster,
            item.gid,
            item.prepared_at.isoformat(timespec="seconds"),
            item.decision if dry_run else verbs[item.decision],
        ]
        for item in results
    ]
    header = ["CLUSTER", "PREPARED TRANSACTION", "PREPARED AT"]
    header.append("DECISION" if dry_run else "DONE")
    click.echo(table(header, rows, set()))
    waiting = sum(item.decision == "wait" for item in results)
    if dry_run:
        click.echo("Dry run: nothing was committed or rolled back.")
    if waiting:
        click.echo(
            f"{plural(waiting, 'prepared transaction')} younger than"
            f" {min_age:g} s left alone; run again later."
        )
        raise SystemExit(EXIT_FAILED)
