"""``flask partition``: inspect and manage every database of an application.

:meth:`PartitionDB.init_app <flask_partition.PartitionDB.init_app>` adds the
``partition`` command group to the application's CLI:

``status``
    Every node of every cluster: reachable or not, replica lag, and each
    cluster's Alembic revision against the migration scripts.
``create-all`` / ``drop-all``
    Create or drop the tables, cluster by cluster.
``shards``
    The shard map and the rows each shard holds.
``recover``
    Resolve the prepared transactions two-phase commits left behind.
``dev-cluster``
    Start a local PostgreSQL topology shaped like the application's config.

Exit codes scripts can rely on: :data:`EXIT_OK`, :data:`EXIT_FAILED`,
:data:`EXIT_USAGE`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import json
import math
import os
import re
import shlex
import signal
import threading
import typing as t

import click
import sqlalchemy as sa
import sqlalchemy.exc as sa_exc
from flask import current_app
from flask.cli import AppGroup

from .config import ClusterConfig
from .config import ReplicaSettings
from .display import capitalized as _capitalized
from .display import display_url as display_url
from .display import error_text as _error_text
from .errors import ShardingError
from .errors import UnknownShardError
from .replicas import cluster_label
from .replicas import Probe
from .replicas import read_probe
from .routing import Role
from .sharding import HashShardMap

if t.TYPE_CHECKING:
    from flask import Flask

    from .extension import PartitionDB
    from .extension import PartitionState
    from .pgcluster import PostgresTopology

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

#: Bind names that ``dev-cluster`` can turn into database names.
_DATABASE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,62}")

partition_cli = AppGroup(
    "partition",
    help=(
        "Inspect and manage the databases of Flask-Partition: the default"
        " cluster, the binds and the shards. Exit codes: 0 success, 1 a node"
        " unreachable, a schema behind its migrations or an operation failed,"
        " 2 usage error."
    ),
)


def _state(app: Flask | None = None) -> PartitionState:
    """What :meth:`~flask_partition.PartitionDB.init_app` built for ``app``
    (default: the current application).

    :raises RuntimeError: If ``app`` has no :class:`~flask_partition.PartitionDB`.
    """
    if app is None:
        app = t.cast("Flask", current_app._get_current_object())  # type: ignore[attr-defined]
    db = app.extensions.get("partition")
    if db is None:
        raise RuntimeError(
            f"The Flask app {app.name!r} has no 'PartitionDB'. Call"
            " 'db.init_app(app)' first."
        )
    return t.cast("PartitionDB", db).get_state(app)


# -- status ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class NodeStatus:
    """What ``flask partition status`` found out about one database server.

    .. versionadded:: 0.1.0
    """

    #: The bind or shard name, ``None`` for the default cluster.
    cluster: str | None
    #: ``"default"``, ``"bind"`` or ``"shard"``.
    kind: str
    #: Primary or replica.
    role: Role
    #: The replica's index in its configured list; 0 for a primary.
    index: int
    #: The URL, password masked.
    url: str
    #: Whether a connection and a query succeeded.
    reachable: bool
    #: Why the node is unreachable, password masked; ``None`` when reachable.
    error: str | None = None
    #: How many bytes of WAL the replica has received but not replayed yet,
    #: as the router measures it for ``PARTITION_REPLICA_MAX_LAG_BYTES``
    #: (PostgreSQL replicas); ``None`` otherwise.
    lag_bytes: int | None = None
    #: How long ago the last transaction the replica replayed was committed
    #: while received WAL waits to be replayed, else 0, as the router
    #: measures it for ``PARTITION_REPLICA_MAX_LAG`` (PostgreSQL replicas);
    #: ``None`` otherwise.
    lag_seconds: float | None = None
    #: Warnings, e.g. a configured replica that is not in recovery.
    notes: tuple[str, ...] = ()
    #: The Alembic revisions stored in the primary's version table
    #: (``alembic_version``), sorted; empty when the table is missing or
    #: empty (no migration applied). ``None`` for replicas, which hold their
    #: primary's, and for primaries that could not be read.
    revisions: tuple[str, ...] | None = None
    #: Why the cluster's schema is not where its migrations say it should be:
    #: behind the head of the migration scripts, not migrated, at a revision
    #: the scripts do not have, or unlike the other shards. Set on primaries
    #: only; ``None`` when the schema is current or this cannot be told.
    revision_error: str | None = None
    #: How many bytes the replica's replay position is behind its primary's
    #: current WAL position, received or not. Unlike :attr:`lag_bytes`, it
    #: shows a replica cut off from its primary, which the router still
    #: reads from. PostgreSQL replicas in recovery whose primary answered;
    #: ``None`` otherwise.
    behind_primary_bytes: int | None = None

    @property
    def name(self) -> str:
        """The node's name in reports: ``primary`` or ``replica[0]``."""
        return "primary" if self.role is Role.PRIMARY else f"replica[{self.index}]"

    def as_json(self) -> dict[str, t.Any]:
        """The status as JSON-compatible data."""
        data = dataclasses.asdict(self)
        data["role"] = self.role.value
        data["notes"] = list(self.notes)
        data["revisions"] = None if self.revisions is None else list(self.revisions)
        return data


@dataclasses.dataclass
class _Probe:
    reachable: bool
    error: str | None = None
    #: PostgreSQL: whether the server is a standby.
    in_recovery: bool | None = None
    #: PostgreSQL: the replay position and lag, read as the router reads them.
    wal: Probe | None = None
    #: The primary's Alembic revisions; None when not read.
    revisions: tuple[str, ...] | None = None
    #: Why the revisions could not be read.
    revision_note: str | None = None


@dataclasses.dataclass(frozen=True)
class _VersionTable:
    """Where Alembic keeps a database's revision: Flask-Migrate's
    ``version_table`` and ``version_table_schema``, if given.
    """

    name: str = "alembic_version"
    schema: str | None = None


@dataclasses.dataclass(frozen=True)
class _Scripts:
    """What the application's migration scripts say every cluster should be
    at.
    """

    #: Flask-Migrate's migrations folder, as configured.
    directory: str
    #: Why the folder cannot be read; nothing else is set then.
    error: str | None = None
    #: The head revisions, sorted; empty before the first revision.
    heads: tuple[str, ...] = ()
    #: Every revision of the folder.
    known: frozenset[str] = frozenset()
    #: The cluster names the heads have ``upgrade_<name>()`` functions for,
    #: ``None`` for the default cluster (``upgrade_()``); empty when the
    #: scripts come from the single-database template.
    functions: frozenset[str | None] = frozenset()

    @property
    def multidb(self) -> bool:
        """Whether the scripts come from Flask-Migrate's multi-database
        template (an ``upgrade_<name>()`` per database).
        """
        return bool(self.functions)


def check_nodes(app: Flask | None = None, *, timeout: float = 5.0) -> list[NodeStatus]:
    """Connect to every node of every cluster and shard of ``app`` and
    report its state: the default cluster first, then the binds and the
    shards in configuration order, each primary before its replicas.

    Each primary's Alembic revision is read from its version table, and
    compared with the head of the migration scripts when the app uses
    Flask-Migrate and its migrations folder is readable; without them, the
    shards are compared with each other. A cluster that is behind gets a
    :attr:`~NodeStatus.revision_error` (see :doc:`/migrations`).

    Each node gets a new connection (not one from the application's pools)
    with the cluster's ``connect_args`` and, on PostgreSQL and MySQL, a
    connect timeout of ``timeout`` seconds. Clusters are checked in
    parallel. On PostgreSQL, a replica's lag is read as the router reads it
    (:meth:`Cluster.probe <flask_partition.replicas.Cluster.probe>`): the WAL
    bytes it received but has not replayed, and the age of the last
    transaction it replayed while such WAL waits, else 0. A replica beyond
    ``PARTITION_REPLICA_MAX_LAG`` or ``PARTITION_REPLICA_MAX_LAG_BYTES`` gets
    a note: the app reads elsewhere. How far its replay position is behind
    its primary's current position is given apart, as
    :attr:`~NodeStatus.behind_primary_bytes`.

    :param app: Defaults to the current application.
    :param timeout: Seconds to wait for each connection.
    :raises RuntimeError: If ``app`` has no :class:`~flask_partition.PartitionDB`.

    .. versionadded:: 0.1.0
    """
    app = app or t.cast("Flask", current_app._get_current_object())  # type: ignore[attr-defined]
    return _check(app, timeout)[0]


def _check(app: Flask, timeout: float) -> tuple[list[NodeStatus], _Scripts | None]:
    topology = _state(app).topology
    clusters: list[tuple[str, ClusterConfig]] = [
        ("default" if name is None else "bind", config)
        for name, config in topology.clusters.items()
    ]
    clusters += [("shard", config) for config in topology.shards.values()]
    scripts = _migration_scripts(app)
    table = _version_table(app)
    with concurrent.futures.ThreadPoolExecutor(min(16, len(clusters))) as pool:
        results = pool.map(
            lambda c: _check_cluster(
                c[0], c[1], topology.replica_settings, timeout, table
            ),
            clusters,
        )
        nodes = [node for nodes in results for node in nodes]
    problems = _revision_problems(nodes, scripts)
    nodes = [
        dataclasses.replace(node, revision_error=problems[node.cluster])
        if node.role is Role.PRIMARY and node.cluster in problems
        else node
        for node in nodes
    ]
    return nodes, scripts


def _check_cluster(
    kind: str,
    config: ClusterConfig,
    settings: ReplicaSettings,
    timeout: float,
    table: _VersionTable,
) -> list[NodeStatus]:
    primary = _probe(config.primary, config, timeout, table)
    notes: tuple[str, ...] = ()
    if primary.in_recovery:
        notes = ("in recovery: this is a standby, not a primary",)
    if primary.revision_note:
        notes += (primary.revision_note,)
    nodes = [_status(kind, config, Role.PRIMARY, 0, primary, notes)]
    for index, url in enumerate(config.replicas):
        probe = _probe(url, config, timeout)
        notes = ()
        if probe.in_recovery is False:
            notes = ("not in recovery: this is a primary, not a replica",)
        if probe.wal is not None:
            notes += _limit_notes(settings, probe.wal)
        nodes.append(_status(kind, config, Role.REPLICA, index, probe, notes, primary))
    return nodes


def _status(
    kind: str,
    config: ClusterConfig,
    role: Role,
    index: int,
    probe: _Probe,
    notes: tuple[str, ...],
    primary: _Probe | None = None,
) -> NodeStatus:
    url = config.primary if role is Role.PRIMARY else config.replicas[index]
    # Only replicas have a lag; a primary's probe gives its position.
    wal = probe.wal if role is Role.REPLICA else None
    behind: int | None = None
    if wal is not None and probe.in_recovery and primary is not None:
        if primary.wal is not None:
            behind = max(0, primary.wal.position - wal.position)
    return NodeStatus(
        cluster=config.name,
        kind=kind,
        role=role,
        index=index,
        url=display_url(url),
        reachable=probe.reachable,
        error=probe.error,
        lag_bytes=None if wal is None else wal.lag_bytes,
        lag_seconds=None if wal is None else wal.lag,
        notes=notes,
        revisions=probe.revisions,
        behind_primary_bytes=behind,
    )


def _probe(
    url: sa.URL,
    config: ClusterConfig,
    timeout: float,
    table: _VersionTable | None = None,
) -> _Probe:
    """Connect to one node; read the revisions when ``table`` is given."""
    connect_args = dict(config.engine_options.get("connect_args") or {})
    if url.get_backend_name() in ("postgresql", "mysql", "mariadb"):
        # libpq and the MySQL drivers take whole seconds; libpq at least 2.
        connect_args.setdefault("connect_timeout", max(2, math.ceil(timeout)))
    try:
        engine = sa.create_engine(
            url, poolclass=sa.pool.NullPool, connect_args=connect_args
        )
    except (sa_exc.ArgumentError, ImportError) as error:
        return _Probe(False, _error_text(error))
    try:
        with engine.connect() as conn:
            if engine.dialect.name != "postgresql":
                conn.execute(sa.text("SELECT 1"))
                probe = _Probe(True)
            else:
                in_recovery = conn.scalar(sa.text("SELECT pg_is_in_recovery()"))
                probe = _Probe(
                    True, in_recovery=bool(in_recovery), wal=read_probe(conn)
                )
            if table is not None:
                _read_revisions(conn, table, probe)
            return probe
    except Exception as error:  # whatever fails, the node is not usable
        return _Probe(False, _error_text(error, engine))
    finally:
        engine.dispose()


def _read_revisions(conn: sa.Connection, table: _VersionTable, probe: _Probe) -> None:
    """Put the revisions of Alembic's version table into ``probe``."""
    try:
        if not sa.inspect(conn).has_table(table.name, schema=table.schema):
            probe.revisions = ()
            return
        version = sa.table(table.name, sa.column("version_num"), schema=table.schema)
        rows = conn.scalars(sa.select(version.c.version_num)).all()
    except sa_exc.SQLAlchemyError as error:
        probe.revision_note = (
            f"cannot read the revision in {table.name!r}:"
            f" {_error_text(error, conn.engine)}"
        )
        return
    probe.revisions = tuple(sorted(str(row) for row in rows))


def _version_table(app: Flask) -> _VersionTable:
    migrate = app.extensions.get("migrate")
    options = getattr(migrate, "configure_args", None) or {}
    return _VersionTable(
        options.get("version_table") or "alembic_version",
        options.get("version_table_schema"),
    )


def _migration_scripts(app: Flask) -> _Scripts | None:
    """Read Flask-Migrate's migrations folder; ``None`` without Flask-Migrate."""
    migrate = app.extensions.get("migrate")
    if migrate is None or not hasattr(migrate, "migrate"):
        return None
    from alembic.script import ScriptDirectory

    directory = str(migrate.directory)
    try:
        with app.app_context():  # get_config reads 'flask db -x' from g
            config = migrate.migrate.get_config(directory)
        script = ScriptDirectory.from_config(config)
        heads = tuple(sorted(script.get_heads()))
        known = frozenset(revision.revision for revision in script.walk_revisions())
        functions = {
            name.removeprefix("upgrade_")
            for head in heads
            for name in vars(script.get_revision(head).module)
            if name.startswith("upgrade_")
        }
    # A missing folder, a broken revision script: whatever it raises, the
    # nodes are still worth reporting.
    except Exception as error:
        return _Scripts(directory, error=_error_text(error))
    return _Scripts(
        directory,
        heads=heads,
        known=known,
        functions=frozenset(name or None for name in functions),
    )


def _revisions_text(revisions: t.Iterable[str]) -> str:
    return ", ".join(sorted(revisions)) or "none"


def _revision_problems(
    nodes: list[NodeStatus], scripts: _Scripts | None
) -> dict[str | None, str]:
    """Why each cluster's schema is not where it should be, by cluster name
    (bind and shard names share one namespace).
    """
    primaries = [
        node
        for node in nodes
        if node.role is Role.PRIMARY and node.revisions is not None
    ]
    if scripts is None or scripts.error is not None:
        return _shards_disagree([n for n in primaries if n.kind == "shard"])
    heads = set(scripts.heads)
    head = _revisions_text(heads)
    where = repr(scripts.directory)
    problems: dict[str | None, str] = {}
    for node in primaries:
        current = set(node.revisions or ())
        unknown = current - scripts.known
        if unknown:
            problems[node.cluster] = (
                f"at revision {_revisions_text(unknown)}, which the migration"
                f" scripts in {where} do not have: a newer release, or another"
                " migrations folder, migrated it"
            )
            continue
        # The multi-database template migrates every database of the app;
        # the single-database one only the default cluster.
        managed = scripts.multidb or node.kind == "default" or bool(current)
        if not managed or current == heads:
            continue
        if current:
            problems[node.cluster] = (
                f"at revision {_revisions_text(current)}, behind the head {head}"
                f" of {where}: run 'flask db upgrade'"
            )
        elif scripts.multidb and node.cluster not in scripts.functions:
            option = "--shard" if node.kind == "shard" else "--bind"
            problems[node.cluster] = (
                f"no migration applied, and the migration scripts have no"
                f" 'upgrade_{node.cluster}()' ({node.kind} added after them), so"
                f" 'flask db upgrade' fails: run 'flask partition create-all"
                f" {option} {node.cluster}', then 'flask db stamp head'"
            )
        else:
            problems[node.cluster] = (
                f"no migration applied, the head of {where} is {head}:"
                " run 'flask db upgrade'"
            )
    return problems


def _shards_disagree(shards: list[NodeStatus]) -> dict[str | None, str]:
    """Without migration scripts, a shard is behind when its revision is
    not that of most shards: every shard holds the same tables.
    """
    groups: dict[tuple[str, ...], list[str | None]] = {}
    for node in shards:
        groups.setdefault(node.revisions or (), []).append(node.cluster)
    if len(groups) < 2:
        return {}
    sizes = sorted((len(names) for names in groups.values()), reverse=True)
    majority = None
    if sizes[0] > sizes[1]:
        majority = max(groups, key=lambda revisions: len(groups[revisions]))
    problems: dict[str | None, str] = {}
    for revisions, names in groups.items():
        if revisions == majority:
            continue
        others = "; ".join(
            f"{', '.join(repr(n) for n in other)} at {_revisions_text(rev)}"
            for rev, other in groups.items()
            if rev != revisions
        )
        for name in names:
            problems[name] = (
                f"at revision {_revisions_text(revisions)}, unlike the other"
                f" shards ({others}): every shard should be at the same revision"
            )
    return problems


def _limit_notes(settings: ReplicaSettings, wal: Probe) -> tuple[str, ...]:
    """Say when a replica is beyond the app's lag limits, so its reads go
    to another replica or the primary: the test of
    :meth:`~flask_partition.replicas.Cluster.lag_ok` on the same figures.
    """
    notes = []
    if settings.max_lag is not None and wal.lag > settings.max_lag:
        notes.append(
            f"{wal.lag:.3f} s behind, above 'PARTITION_REPLICA_MAX_LAG'"
            f" ({settings.max_lag:g}): the app reads elsewhere"
        )
    if settings.max_lag_bytes is not None and wal.lag_bytes > settings.max_lag_bytes:
        notes.append(
            f"{wal.lag_bytes} bytes received but not replayed, above"
            f" 'PARTITION_REPLICA_MAX_LAG_BYTES' ({settings.max_lag_bytes}): the"
            " app reads elsewhere"
        )
    return tuple(notes)


def _table(header: list[str], rows: list[list[str]], right: set[int]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, *rows]:
        cells = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


@partition_cli.command("status")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=5.0,
    show_default=True,
    help="Seconds to wait for each connection.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
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
    nodes, scripts = _check(app, timeout)
    down = [node for node in nodes if not node.reachable]
    behind = [node for node in nodes if node.revision_error]
    if as_json:
        migrations = None
        if scripts is not None:
            migrations = {
                "directory": scripts.directory,
                "heads": None if scripts.error else list(scripts.heads),
                "error": scripts.error,
            }
        click.echo(
            json.dumps(
                {
                    "ok": not (down or behind),
                    "nodes": [node.as_json() for node in nodes],
                    "migrations": migrations,
                },
                indent=2,
            )
        )
    else:
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
        click.echo(_table(header, rows, right={4, 5}))
        for node in nodes:
            label = cluster_label(node.cluster, shard=node.kind == "shard")
            where = f"{label} {node.name}"
            if node.error:
                click.echo(f"{where}: {node.error}", err=True)
            for note in node.notes:
                click.echo(f"{where}: {note}", err=True)
            if node.revision_error:
                click.echo(f"{where}: {node.revision_error}", err=True)
        if scripts is not None:
            _echo_migrations(scripts, nodes, behind)
        summary = f"{len(nodes) - len(down)} of {len(nodes)} nodes reachable."
        click.echo(summary, err=bool(down or behind))
    if down or behind:
        raise click.exceptions.Exit(EXIT_FAILED)


def _revision_cell(revisions: tuple[str, ...]) -> str:
    return ",".join(revisions) or "none"


def _echo_migrations(
    scripts: _Scripts, nodes: list[NodeStatus], behind: list[NodeStatus]
) -> None:
    where = repr(scripts.directory)
    if scripts.error is not None:
        click.echo(
            f"Migrations: cannot read {where} ({scripts.error}); the shards are"
            " only compared with each other.",
            err=True,
        )
        return
    head = _revisions_text(scripts.heads)
    # The clusters these scripts migrate (see _revision_problems).
    tracked = [
        n
        for n in nodes
        if n.role is Role.PRIMARY
        and n.revisions is not None
        and (scripts.multidb or n.kind == "default" or n.revisions)
    ]
    current = [n for n in tracked if set(n.revisions or ()) == set(scripts.heads)]
    click.echo(
        f"Migrations in {where} (head {head}): {len(current)} of"
        f" {_plural(len(tracked), 'cluster')} at the head"
        + (f", {len(behind)} behind." if behind else "."),
        err=bool(behind),
    )


# -- create-all and drop-all ------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Target:
    label: str
    metadata: sa.MetaData
    engine: sa.Engine
    bind: str | None = None
    shard: str | None = None


def _targets(
    default: bool, binds: t.Sequence[str], shards: t.Sequence[str]
) -> list[_Target]:
    """The clusters the options select (all without options), checked
    before anything is done: an unknown name is a usage error.
    """
    state = _state()
    db, router = state.db, state.router
    # The configured clusters: with only Flask-SQLAlchemy's binds there is
    # no default cluster, though the router holds a stand-in for it.
    configured = db.engines
    everything = not (default or binds or shards)
    keys: list[str | None] = list(configured) if everything else []
    if default:
        if None not in configured:
            raise click.BadParameter(
                f"{_capitalized(cluster_label(None))} is not configured: only"
                " binds are.",
                param_hint="'--default'",
            )
        keys.append(None)
    for name in binds:
        if name not in configured:
            known = ", ".join(repr(k) for k in configured if k is not None)
            raise click.BadParameter(
                f"{_capitalized(cluster_label(name))} is not configured."
                " Configured binds:"
                f" {known or 'none'}.",
                param_hint="'--bind'",
            )
        keys.append(name)
    for name in shards:
        if name not in router.shards:
            known = ", ".join(repr(k) for k in router.shards)
            raise click.BadParameter(
                f"{_capitalized(cluster_label(name, shard=True))} is not"
                " configured. Configured shards:"
                f" {known or 'none'}.",
                param_hint="'--shard'",
            )
    shard_names = list(router.shards) if everything else list(dict.fromkeys(shards))
    metadatas = db.metadatas
    targets = [
        _Target(
            cluster_label(key),
            metadatas[key],
            configured[key],
            bind=key,
        )
        for key in dict.fromkeys(keys)
    ]
    targets += [
        _Target(
            cluster_label(name, shard=True),
            db.shard_metadata,
            router.shards[name].primary,
            shard=name,
        )
        for name in shard_names
    ]
    return targets


def _unconfigured(everything: bool) -> list[str]:
    """Problems with models whose cluster is missing, when every cluster was
    asked for: ``db.create_all()`` would raise for them.
    """
    if not everything:
        return []
    state = _state()
    db, router = state.db, state.router
    configured = db.engines
    problems = []
    for key, metadata in db.metadatas.items():
        if not metadata.tables or key in configured:
            continue
        tables = ", ".join(repr(name) for name in metadata.tables)
        config_key = "PARTITION_DATABASE_URI" if key is None else "PARTITION_BINDS"
        problems.append(
            f"{cluster_label(key)} (tables {tables}) is not configured; add it to"
            f" {config_key!r}."
        )
    if db.shard_metadata.tables and not router.shards:
        names = ", ".join(repr(n) for n in db.shard_metadata.tables)
        problems.append(
            f"sharded tables ({names}) exist but 'PARTITION_SHARDS' is not set."
        )
    return problems


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _run_on_targets(targets: list[_Target], operation: str, everything: bool) -> None:
    db = _state().db
    failed = 0
    for target in targets:
        where = f"{target.label} ({display_url(target.engine.url)})"
        tables = target.metadata.sorted_tables
        try:
            inspector = sa.inspect(target.engine)
            existing = [
                table.name
                for table in tables
                if inspector.has_table(table.name, schema=table.schema)
            ]
            kwargs: dict[str, t.Any] = (
                {"shard": target.shard} if target.shard else {"bind": target.bind}
            )
            getattr(db, operation)(**kwargs)
        except (sa_exc.SQLAlchemyError, OSError) as error:
            failed += 1
            click.echo(
                f"{where}: failed: {_error_text(error, target.engine)}", err=True
            )
            continue
        if operation == "create_all":
            created = [table.name for table in tables if table.name not in existing]
            if not tables:
                result = "no tables"
            elif created:
                result = (
                    f"created {_plural(len(created), 'table')}: {', '.join(created)}"
                )
                if existing:
                    result += f"; {len(existing)} existed"
            else:
                verb = "exists" if len(tables) == 1 else "exist"
                result = f"nothing to create ({_plural(len(tables), 'table')} {verb})"
        else:
            result = (
                f"dropped {_plural(len(existing), 'table')}: {', '.join(existing)}"
                if existing
                else "no tables to drop"
            )
        click.echo(f"{where}: {result}")
    for problem in _unconfigured(everything):
        failed += 1
        click.echo(f"Error: {problem}", err=True)
    if failed:
        raise click.exceptions.Exit(EXIT_FAILED)


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


@partition_cli.command("create-all")
@_cluster_options
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
    _run_on_targets(targets, "create_all", not (default or binds or shards))


@partition_cli.command("drop-all")
@_cluster_options
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
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
            raise click.exceptions.Exit(EXIT_FAILED)
    _run_on_targets(targets, "drop_all", not (default or binds or shards))


# -- shards -----------------------------------------------------------------------


def _key_value(text: str) -> int | str:
    """A key from the command line: digits are an int, the rest a string."""
    return int(text) if re.fullmatch(r"-?\d+", text) else text


@partition_cli.command("shards")
@click.option(
    "--key",
    "keys",
    multiple=True,
    metavar="VALUE",
    help="Show the shard of this shard key value (digits are an int). Repeatable.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
def shards_command(keys: tuple[str, ...], as_json: bool) -> None:
    """Show the shard map, and how many rows each shard holds per table.

    Buckets are listed for the default hash map. Rows are counted on each
    shard's replica (its primary when it has none). Exits with 1 when a
    shard cannot be read or lacks a table.
    """
    state = _state()
    db, router = state.db, state.router
    if not router.shards:
        if keys:
            raise click.UsageError(
                "'--key' needs shards; 'PARTITION_SHARDS' is not set."
            )
        click.echo("No shards: 'PARTITION_SHARDS' is not set.")
        return
    shard_map = router.shard_map
    buckets = (
        shard_map.buckets_by_shard() if isinstance(shard_map, HashShardMap) else None
    )
    resolved: dict[str, dict[str, t.Any]] = {}
    for text in keys:
        value = _key_value(text)
        try:
            name = router.shard_for_key(value, context=" (from '--key')")
        except (ShardingError, UnknownShardError) as error:
            raise click.BadParameter(str(error), param_hint="'--key'") from None
        entry: dict[str, t.Any] = {"shard": name}
        if isinstance(shard_map, HashShardMap):
            entry["bucket"] = shard_map.bucket_of(value)
        resolved[text] = entry
    tables = db.shard_metadata.sorted_tables
    counts: dict[str, dict[str, int | None]] = {}
    errors: dict[str, str] = {}
    urls: dict[str, str] = {}
    for name, cluster in router.shards.items():
        engine = cluster.replicas[0] if cluster.replicas else cluster.primary
        urls[name] = display_url(engine.url)
        counts[name], problem = _count_rows(engine, tables)
        if problem:
            errors[name] = problem
    missing = {
        name: [table for table, rows in shard_counts.items() if rows is None]
        for name, shard_counts in counts.items()
        if name not in errors
    }
    missing = {name: tables for name, tables in missing.items() if tables}
    if as_json:
        click.echo(
            json.dumps(
                {
                    "map": type(shard_map).__name__,
                    "buckets": shard_map.buckets
                    if isinstance(shard_map, HashShardMap)
                    else None,
                    "shards": {
                        name: {
                            "url": urls[name],
                            "buckets": None if buckets is None else len(buckets[name]),
                            "error": errors.get(name),
                            "rows": counts[name],
                        }
                        for name in router.shards
                    },
                    "keys": resolved,
                },
                indent=2,
            )
        )
    else:
        _print_shards(shard_map, buckets, urls, counts, errors, tables, resolved)
    for name, names in missing.items():
        click.echo(
            f"{_capitalized(cluster_label(name, shard=True))} has no table"
            f" {', '.join(repr(n) for n in names)}; run 'flask partition"
            f" create-all --shard {name}'.",
            err=True,
        )
    if errors or missing:
        raise click.exceptions.Exit(EXIT_FAILED)


def _count_rows(
    engine: sa.Engine, tables: list[sa.Table]
) -> tuple[dict[str, int | None], str | None]:
    """Rows per table on one shard (``None``: no such table), or an error."""
    counts: dict[str, int | None] = {}
    try:
        with engine.connect() as conn:
            inspector = sa.inspect(conn)
            for table in tables:
                if not inspector.has_table(table.name, schema=table.schema):
                    counts[table.name] = None
                    continue
                query = sa.select(sa.func.count()).select_from(table)
                counts[table.name] = int(conn.execute(query).scalar_one())
    except sa_exc.SQLAlchemyError as error:
        return {table.name: None for table in tables}, _error_text(error, engine)
    return counts, None


def _print_shards(
    shard_map: t.Any,
    buckets: dict[str, list[int]] | None,
    urls: dict[str, str],
    counts: dict[str, dict[str, int | None]],
    errors: dict[str, str],
    tables: list[sa.Table],
    resolved: dict[str, dict[str, t.Any]],
) -> None:
    if buckets is not None:
        total = sum(len(owned) for owned in buckets.values())
        click.echo(f"Shard map: HashShardMap over {_plural(total, 'bucket')}.")
    else:
        click.echo(f"Shard map: {type(shard_map).__name__} (buckets: hash maps only).")
    click.echo()
    rows = []
    for name, url in urls.items():
        owned = "-" if buckets is None else str(len(buckets[name]))
        share = "-" if buckets is None else f"{100 * len(buckets[name]) / total:.1f}%"
        rows.append([name, owned, share, url])
    click.echo(_table(["SHARD", "BUCKETS", "SHARE", "ROWS COUNTED ON"], rows, {1, 2}))
    if tables:
        click.echo()
        header = ["TABLE", *urls, "TOTAL"]
        table_rows = []
        for table in tables:
            cells = []
            total_rows = 0
            for name in urls:
                rows_here = counts[name].get(table.name)
                if name in errors:
                    cells.append("?")
                elif rows_here is None:
                    cells.append("missing")
                else:
                    cells.append(str(rows_here))
                    total_rows += rows_here
            table_rows.append([table.name, *cells, str(total_rows)])
        click.echo(_table(header, table_rows, set(range(1, len(header)))))
    for name, error in errors.items():
        label = _capitalized(cluster_label(name, shard=True))
        click.echo(f"{label} ({urls[name]}): {error}", err=True)
    if resolved:
        click.echo()
        for text, entry in resolved.items():
            bucket = f" (bucket {entry['bucket']})" if "bucket" in entry else ""
            click.echo(f"Key {text!r} -> shard {entry['shard']!r}{bucket}")


# -- dev-cluster --------------------------------------------------------------------


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


def dev_cluster_config(
    topology: PostgresTopology, database: str, binds: t.Sequence[str]
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


@partition_cli.command("recover")
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
def recover_command(dry_run: bool, min_age: float) -> None:
    """Resolve prepared transactions that two-phase commits left behind.

    On every PostgreSQL primary, lists Flask-Partition's prepared
    transactions (ids 'fp1.*', this database only) and commits those whose
    commit record exists, rolls back the others. Younger ones are left
    ('wait'): their commit may still be running. Exits with 1 when a
    primary cannot be reached or some are left waiting.
    """
    from .transactions import recover

    router = _state().router
    try:
        results = recover(router, dry_run=dry_run, min_age=min_age)
    except sa_exc.SQLAlchemyError as error:
        click.echo(f"Error: {_error_text(error, *router.engines())}", err=True)
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
    click.echo(_table(header, rows, set()))
    waiting = sum(item.decision == "wait" for item in results)
    if dry_run:
        click.echo("Dry run: nothing was committed or rolled back.")
    if waiting:
        click.echo(
            f"{_plural(waiting, 'prepared transaction')} younger than"
            f" {min_age:g} s left alone; run again later."
        )
        raise SystemExit(EXIT_FAILED)


@partition_cli.command("dev-cluster")
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
    from .pgcluster import PostgresTopology
    from .pgcluster import unavailable_reason

    router = _state().router
    binds = binds or tuple(k for k in router.clusters if k is not None)
    shards = shards or tuple(router.shards)
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
    reason = unavailable_reason()
    if reason is not None:
        raise click.ClickException(f"Cannot start PostgreSQL: {reason}")
    try:
        topology = PostgresTopology(
            replicas,
            databases=[database, *binds],
            base_dir=base_dir,
            shards=dict.fromkeys(shards, shard_replicas),
        )
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="'--shard'") from None
    servers = 1 + replicas + len(shards) * (1 + shard_replicas)
    click.echo(f"Starting {_plural(servers, 'PostgreSQL server')}...", err=True)
    with topology:
        lines = export_lines(dev_cluster_config(topology, database, binds))
        assert topology.primary is not None
        click.echo(f"# Flask-Partition dev cluster in {topology.base}")
        click.echo(
            f"#   {cluster_label(None)}: database {database!r} on 127.0.0.1:"
            f"{topology.primary.port}, {_plural(replicas, 'replica')}"
        )
        for name in binds:
            click.echo(
                f"#   {cluster_label(name)}: database {name!r} on the same servers"
            )
        for name, shard in topology.shards.items():
            label = cluster_label(name, shard=True)
            click.echo(
                f"#   {label}: 127.0.0.1:{shard.primary.port},"
                f" {_plural(len(shard.replicas), 'replica')}"
            )
        click.echo("# Paste these lines into the shell that runs your app:")
        for line in lines:
            click.echo(line)
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
    click.echo("Stopped the servers and deleted their data.", err=True)


__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_USAGE",
    "NodeStatus",
    "check_nodes",
    "dev_cluster_config",
    "display_url",
    "export_lines",
    "partition_cli",
]
