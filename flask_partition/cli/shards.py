"""``flask partition shards``: the shard map and the rows on each shard."""

from __future__ import annotations

import click
from flask.cli import with_appcontext

from ..appstate import app_state
from ..display import capitalized
from ..errors import ShardingError
from ..errors import UnknownShardError
from ..replicas import cluster_label
from ..sharding.report import place_keys
from ..sharding.report import shard_report
from ..sharding.report import ShardReport
from ._output import echo_json
from ._output import failed
from ._output import plural
from ._output import table


@click.command("shards")
@click.option(
    "--key",
    "keys",
    multiple=True,
    metavar="VALUE",
    help="Show the shard of this shard key value (digits are an int). Repeatable.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@with_appcontext
def shards_command(keys: tuple[str, ...], as_json: bool) -> None:
    """Show the shard map, and how many rows each shard holds per table.

    Buckets are listed for the default hash map. Rows are counted on each
    shard's replica (its primary when it has none). Exits with 1 when a
    shard cannot be read or lacks a table.
    """
    state = app_state()
    router = state.router
    if not router.shards:
        if keys:
            raise click.UsageError(
                "'--key' needs shards; 'PARTITION_SHARDS' is not set."
            )
        click.echo("No shards: 'PARTITION_SHARDS' is not set.")
        return
    try:
        placed = place_keys(router, keys, context=" (from '--key')")
    except (ShardingError, UnknownShardError) as error:
        raise click.BadParameter(str(error), param_hint="'--key'") from None
    report = shard_report(router, state.db.shard_metadata.sorted_tables, placed)
    if as_json:
        echo_json(report.as_json())
    else:
        _print(report)
    for name, names in report.missing.items():
        click.echo(
            f"{capitalized(cluster_label(name, shard=True))} has no table"
            f" {', '.join(repr(n) for n in names)}; run 'flask partition"
            f" create-all --shard {name}'.",
            err=True,
        )
    if not report.ok:
        raise failed()


def _print(report: ShardReport) -> None:
    shards, owned = report.shards, report.owned
    if owned is not None:
        total = sum(len(buckets) for buckets in owned.values())
        click.echo(f"Shard map: HashShardMap over {plural(total, 'bucket')}.")
    else:
        click.echo(f"Shard map: {report.map_name} (buckets: hash maps only).")
    click.echo()
    rows = []
    for name, shard in shards.items():
        count = "-" if owned is None else str(len(owned[name]))
        share = "-" if owned is None else f"{100 * len(owned[name]) / total:.1f}%"
        rows.append([name, count, share, shard.url])
    click.echo(table(["SHARD", "BUCKETS", "SHARE", "ROWS COUNTED ON"], rows, {1, 2}))
    if report.tables:
        click.echo()
        header = ["TABLE", *shards, "TOTAL"]
        click.echo(table(header, _row_counts(report), set(range(1, len(header)))))
    for name, error in report.errors.items():
        label = capitalized(cluster_label(name, shard=True))
        click.echo(f"{label} ({shards[name].url}): {error}", err=True)
    if report.keys:
        click.echo()
        for text, place in report.keys.items():
            bucket = "" if place.bucket is None else f" (bucket {place.bucket})"
            click.echo(f"Key {text!r} -> shard {place.shard!r}{bucket}")


def _row_counts(report: ShardReport) -> list[list[str]]:
    """One row per table: its rows on each shard, and the total."""
    table_rows = []
    for name in report.tables:
        cells = []
        total = 0
        for shard in report.shards.values():
            rows = shard.rows.get(name)
            if shard.error is not None:
                cells.append("?")
            elif rows is None:
                cells.append("missing")
            else:
                cells.append(str(rows))
                total += rows
        table_rows.append([name, *cells, str(total)])
    return table_rows
