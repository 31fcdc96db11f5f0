"""Node health: connect to every node of every cluster and shard, and report
whether it answers, how far a replica lags, and where each primary's schema
stands against the migrations.

``flask partition status`` prints what :func:`health_report` finds;
:func:`check_nodes` gives the same to code, for a health endpoint or a job.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import typing as t

import sqlalchemy as sa
import sqlalchemy.exc as sa_exc
from flask import current_app

from .appstate import app_state
from .display import display_url
from .display import error_text
from .migrations import migration_scripts
from .migrations import MigrationScripts
from .migrations import read_revisions
from .migrations import revision_problems
from .migrations import version_table
from .migrations import VersionTable
from .replicas import Probe
from .replicas import read_probe
from .routing.plan import Role

if t.TYPE_CHECKING:
    from flask import Flask

    from .config import ClusterConfig
    from .config import ReplicaSettings


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


@dataclasses.dataclass(frozen=True)
class HealthReport:
    """Every node of an application, and its migrations folder.

    .. versionadded:: 0.1.0
    """

    #: Every node, in the order of :func:`check_nodes`.
    nodes: list[NodeStatus]
    #: Flask-Migrate's migrations folder as read; ``None`` without
    #: Flask-Migrate.
    scripts: MigrationScripts | None

    @property
    def down(self) -> list[NodeStatus]:
        """The nodes that could not be reached."""
        return [node for node in self.nodes if not node.reachable]

    @property
    def behind(self) -> list[NodeStatus]:
        """The primaries whose schema is not where it should be."""
        return [node for node in self.nodes if node.revision_error]

    @property
    def primaries(self) -> list[NodeStatus]:
        """The primaries whose revisions were read."""
        return _primaries(self.nodes)

    @property
    def ok(self) -> bool:
        """Whether every node answered and every schema is current."""
        return not (self.down or self.behind)


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
    return health_report(app, timeout=timeout).nodes


def health_report(app: Flask, *, timeout: float = 5.0) -> HealthReport:
    """What :func:`check_nodes` finds, with the migrations folder it
    compared the revisions with.

    :param app: The application.
    :param timeout: Seconds to wait for each connection.
    :raises RuntimeError: If ``app`` has no :class:`~flask_partition.PartitionDB`.

    .. versionadded:: 0.1.0
    """
    topology = app_state(app).topology
    clusters: list[tuple[str, ClusterConfig]] = [
        ("default" if name is None else "bind", config)
        for name, config in topology.clusters.items()
    ]
    clusters += [("shard", config) for config in topology.shards.values()]
    scripts = migration_scripts(app)
    table = version_table(app)
    with concurrent.futures.ThreadPoolExecutor(min(16, len(clusters))) as pool:
        results = pool.map(
            lambda c: _check_cluster(
                c[0], c[1], topology.replica_settings, timeout, table
            ),
            clusters,
        )
        nodes = [node for nodes in results for node in nodes]
    problems = revision_problems(_primaries(nodes), scripts)
    nodes = [
        dataclasses.replace(node, revision_error=problems[node.cluster])
        if node.role is Role.PRIMARY and node.cluster in problems
        else node
        for node in nodes
    ]
    return HealthReport(nodes, scripts)


def _primaries(nodes: list[NodeStatus]) -> list[NodeStatus]:
    return [
        node
        for node in nodes
        if node.role is Role.PRIMARY and node.revisions is not None
    ]


def _check_cluster(
    kind: str,
    config: ClusterConfig,
    settings: ReplicaSettings,
    timeout: float,
    table: VersionTable,
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
    table: VersionTable | None = None,
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
        return _Probe(False, error_text(error))
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
                probe.revisions, probe.revision_note = read_revisions(conn, table)
            return probe
    except Exception as error:  # whatever fails, the node is not usable
        return _Probe(False, error_text(error, engine))
    finally:
        engine.dispose()


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


__all__ = ["HealthReport", "NodeStatus", "check_nodes", "health_report"]
