"""``flask partition dev-cluster``: a local PostgreSQL topology shaped like
the application's config, and the config that uses it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import threading
import typing as t

import click
from flask.cli import with_appcontext

from .. import pgcluster
from ..appstate import app_state
from ..replicas import cluster_label
from ._output import plural

#: Bind names that ``dev-cluster`` can turn into database names.
_DATABASE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,62}")


def dev_cluster_config(
    topology: pgcluster.PostgresTopology, database: str, binds: t.Sequence[str]
) -> dict[str, t.Any]:
    """The ``PARTITION_*`` config of a started topology: ``database`` on the
    main primary and its replicas is the default cluster, each bind a
    database of that name on the same servers, each shard server a shard.

    .. versionadded:: 0.1.0
    """
    primary = topology.primary
    if primary is None:
        raise RuntimeError("The topology is not started; call 'start()'.")
    return {
        "PARTITION_DATABASE_URI": primary.url(database),
        "PARTITION_REPLICAS": [r.url(database) for r in topology.replicas],
        "PARTITION_BINDS": {
            name: {
                "primary": primary.url(name),
                "replicas": [r.url(name) for r in topology.replicas],
            }
            for name in binds
        },
        "PARTITION_SHARDS": {
            name: shard.config(database) for name, shard in topology.shards.items()
        },
    }


def export_lines(config: t.Mapping[str, t.Any]) -> list[str]:
    """Shell ``export`` lines for ``config``: strings as they are, lists and
    dicts as JSON, each quoted for POSIX shells.

    .. versionadded:: 0.1.0
    """
    lines = []
    for key, value in config.items():
        text = value if isinstance(value, str) else json.dumps(value)
        lines.append(f"export {key}={shlex.quote(text)}")
    return lines


@click.command("dev-cluster")
@click.option(
    "--replicas",
    type=click.IntRange(0, 8),
    default=1,
    show_default=True,
    help="Streaming replicas of the main primary (the default cluster and binds).",
)
@click.option(
    "--bind",
    "binds",
    multiple=True,
    metavar="NAME",
    help="A bind: a database of this name on the main servers. Repeatable."
    " Default: the binds the app configures.",
)
@click.option(
    "--shard",
    "shards",
    multiple=True,
    metavar="NAME",
    help="A shard server: a primary of its own. Repeatable. Default: the shards"
    " the app configures.",
)
@click.option(
    "--shard-replicas",
    type=click.IntRange(0, 8),
    default=1,
    show_default=True,
    help="Streaming replicas of each shard server.",
)
@click.option(
    "--database",
    default="app",
    show_default=True,
    help="The default cluster's database.",
)
@click.option(
    "--base-dir",
    type=click.Path(file_okay=False, exists=True),
    help="Where to put the servers' folder. Default: /dev/shm or the temp folder.",
)
@click.option(
    "--env-file",
    type=click.Path(dir_okay=False),
    help="Also write the export lines to this file; it is removed on exit.",
)
@with_appcontext
def dev_cluster_command(
    replicas: int,
    binds: tuple[str, ...],
    shards: tuple[str, ...],
    shard_replicas: int,
    database: str,
    base_dir: str | None,
    env_file: str | None,
) -> None:
    """Start a local PostgreSQL topology until Ctrl-C.

    A primary with streaming replicas serves the default cluster and each
    bind (one database each); each shard gets a server of its own with its
    replicas. Prints the 'export PARTITION_...' lines to paste into the
    shell that runs the app. Needs the PostgreSQL server binaries; data
    lives in a temporary folder and is deleted when the servers stop.
    """
    router = app_state().router
    binds = binds or tuple(k for k in router.clusters if k is not None)
    shards = shards or tuple(router.shards)
    _check_names(database, binds)
    reason = pgcluster.unavailable_reason()
    if reason is not None:
        raise click.ClickException(f"Cannot start PostgreSQL: {reason}")
    try:
        topology = pgcluster.PostgresTopology(
            replicas,
            databases=[database, *binds],
            base_dir=base_dir,
            shards=dict.fromkeys(shards, shard_replicas),
        )
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="'--shard'") from None
    servers = 1 + replicas + len(shards) * (1 + shard_replicas)
    click.echo(f"Starting {plural(servers, 'PostgreSQL server')}...", err=True)
    with topology:
        lines = export_lines(dev_cluster_config(topology, database, binds))
        _print_banner(topology, database, binds, replicas)
        for line in lines:
            click.echo(line)
        _serve(lines, env_file)
    click.echo("Stopped the servers and deleted their data.", err=True)


def _check_names(database: str, binds: tuple[str, ...]) -> None:
    """The database and the binds must be distinct, usable database names."""
    for name in [database, *binds]:
        if not _DATABASE_NAME.fullmatch(name) or name == "postgres":
            raise click.BadParameter(
                f"{name!r} cannot name a database: use letters, digits, '_' and"
                " '-' (not 'postgres').",
                param_hint="'--bind' or '--database'",
            )
    if len(set([database, *binds])) != len(binds) + 1:
        raise click.BadParameter(
            "The database and the binds need distinct names.",
            param_hint="'--bind' or '--database'",
        )


def _print_banner(
    topology: pgcluster.PostgresTopology,
    database: str,
    binds: tuple[str, ...],
    replicas: int,
) -> None:
    assert topology.primary is not None
    click.echo(f"# Flask-Partition dev cluster in {topology.base}")
    click.echo(
        f"#   {cluster_label(None)}: database {database!r} on 127.0.0.1:"
        f"{topology.primary.port}, {plural(replicas, 'replica')}"
    )
    for name in binds:
        click.echo(f"#   {cluster_label(name)}: database {name!r} on the same servers")
    for name, shard in topology.shards.items():
        label = cluster_label(name, shard=True)
        click.echo(
            f"#   {label}: 127.0.0.1:{shard.primary.port},"
            f" {plural(len(shard.replicas), 'replica')}"
        )
    click.echo("# Paste these lines into the shell that runs your app:")


def _serve(lines: list[str], env_file: str | None) -> None:
    """Write the env file, if asked, and wait for Ctrl-C; remove the file."""
    if env_file:
        with open(env_file, "w") as f:
            f.write("\n".join(lines) + "\n")
    click.echo("# Press Ctrl-C to stop the servers and delete their data.")
    try:
        _wait_for_stop()
    finally:
        if env_file:
            with contextlib.suppress(OSError):
                os.remove(env_file)


def _wait_for_stop() -> None:
    """Block until Ctrl-C or SIGTERM."""
    stop = threading.Event()
    previous: t.Any = None
    try:
        previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    except ValueError:  # not the main thread: Ctrl-C only
        previous = None
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
