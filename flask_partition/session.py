"""The session that routes every statement to a cluster and a role.

:meth:`PartitionSession.get_bind` is SQLAlchemy's documented hook for
choosing an engine per statement; everything else (identity map, unit of
work, one connection per engine inside a transaction) is SQLAlchemy's own.
"""

from __future__ import annotations

import typing as t

import sqlalchemy as sa
import sqlalchemy.orm as sa_orm
import sqlalchemy.sql.util as sa_sql_util

from .errors import CrossClusterError
from .errors import ReadOnlyError
from .errors import UnknownClusterError
from .replicas import Cluster
from .routing import _plan
from .routing import classify
from .routing import Intent
from .routing import Role

if t.TYPE_CHECKING:
    from .extension import PartitionDB

_MISSING: t.Any = object()


def cluster_label(name: str | None) -> str:
    """Name a cluster for messages: ``the default cluster`` or ``bind 'x'``."""
    return "the default cluster" if name is None else f"bind {name!r}"


def bind_key_of(table: sa.FromClause) -> str | None:
    """Return the bind key a table was declared with (``None``: default).

    A key in ``table.info["bind_key"]`` wins over the one of its metadata.
    """
    info = getattr(table, "info", None) or {}
    if "bind_key" in info:
        return t.cast("str | None", info["bind_key"])
    metadata = getattr(table, "metadata", None)
    if metadata is None:
        return None
    return t.cast("str | None", metadata.info.get("bind_key"))


class Router:
    """Maps models, tables and statements of one application to its clusters.

    :param clusters: Every cluster by bind name, ``None`` for the default.

    .. versionadded:: 0.1.0
    """

    def __init__(self, clusters: t.Mapping[str | None, Cluster]) -> None:
        self.clusters = dict(clusters)
        self.default = self.clusters[None]
        # Mappers never move between clusters, so the answer is cached; this
        # keeps get_bind at a dict lookup for ORM statements.
        self._by_mapper: dict[object, Cluster] = {}
        self._nodes: dict[sa.Engine, tuple[str | None, Role, int]] = {}
        for cluster in self.clusters.values():
            self._nodes[cluster.primary] = (cluster.name, Role.PRIMARY, 0)
            for index, engine in enumerate(cluster.replicas):
                self._nodes[engine] = (cluster.name, Role.REPLICA, index)

    def cluster(self, name: str | None, *, context: str = "") -> Cluster:
        """Return the cluster called ``name``.

        :param name: A bind name, ``None`` for the default cluster.
        :param context: Who asked, named in the error (e.g. a model).
        :raises UnknownClusterError: When no such bind is configured.
        """
        try:
            return self.clusters[name]
        except KeyError:
            known = ", ".join(repr(k) for k in self.clusters if k is not None)
            raise UnknownClusterError(
                f"Bind key {name!r}{context} is not configured. Configured binds:"
                f" {known or 'none'}. Add it to 'PARTITION_BINDS' or fix the key."
            ) from None

    def cluster_for_mapper(self, mapper: t.Any) -> Cluster:
        """Return the cluster of a mapped class or :class:`~sqlalchemy.orm.Mapper`."""
        try:
            return self._by_mapper[mapper]
        except KeyError:
            pass
        inspected = t.cast("sa_orm.Mapper[t.Any]", sa.inspect(mapper))
        keys = {bind_key_of(tbl) for tbl in inspected.tables}
        if len(keys) > 1:
            raise CrossClusterError(
                f"Model {inspected.class_.__name__!r} maps tables of several"
                f" clusters: {sorted(keys, key=str)!r}."
            )
        (key,) = keys or {None}
        cluster = self.cluster(key, context=f" (model {inspected.class_.__name__!r})")
        self._by_mapper[mapper] = cluster
        return cluster

    def cluster_for_clause(self, clause: sa.ClauseElement) -> Cluster:
        """Return the cluster of the tables a Core statement refers to."""
        if isinstance(clause, sa.TextClause):
            return self.default
        tables = sa_sql_util.find_tables(clause, check_columns=True, include_crud=True)
        keys = {bind_key_of(table) for table in tables}
        if not keys:
            return self.default
        if len(keys) > 1:
            names = " and ".join(cluster_label(k) for k in sorted(keys, key=str))
            raise CrossClusterError(
                f"The statement refers to tables of {names}; one statement runs on"
                " one database. Split it into one query per cluster."
            )
        (key,) = keys
        return self.cluster(key, context=" (table in the statement)")

    def node(self, engine: sa.Engine) -> tuple[str | None, Role, int] | None:
        """Tell which cluster, role and replica index ``engine`` serves."""
        return self._nodes.get(engine)

    def engines(self) -> t.Iterator[sa.Engine]:
        """Every engine of every cluster, primaries first in each cluster."""
        for cluster in self.clusters.values():
            yield from cluster.engines()


class PartitionSession(sa_orm.Session):
    """A session that sends each statement to the right cluster and role.

    Writes go to the cluster's primary. Reads go to one replica per cluster
    for the whole session (monotonic reads), except on a cluster the session
    has written to, which is read from its primary until the session is
    removed, so a session never reads older data than it wrote.

    :param db: The extension; the router of the current app is used.
    :param router: A router to use instead of ``db``'s (for use outside Flask).
    :param kwargs: Passed to :class:`sqlalchemy.orm.Session`.

    .. versionadded:: 0.1.0
    """

    def __init__(
        self,
        db: PartitionDB | None = None,
        *,
        router: Router | None = None,
        **kwargs: t.Any,
    ) -> None:
        super().__init__(**kwargs)
        if router is None:
            if db is None:
                raise TypeError("'PartitionSession' needs 'db' or 'router'.")
            router = db.get_router()
        self.router = router
        #: Names of the clusters this session wrote to: read from primaries.
        self.written_clusters: set[str | None] = set()
        self._replica_of: dict[str | None, sa.Engine] = {}

    def get_bind(
        self,
        mapper: t.Any = None,
        *,
        clause: sa.ClauseElement | None = None,
        bind: sa.Engine | sa.Connection | None = None,
        _sa_skip_events: bool | None = None,
        _sa_skip_for_implicit_returning: bool = False,
        **kw: t.Any,
    ) -> sa.Engine | sa.Connection:
        """Return the engine for a statement: its cluster, then its role.

        The cluster comes from ``bind_key`` in ``bind_arguments``, else the
        mapper, else the tables in ``clause``, else the default cluster. The
        role follows the routing rules in :doc:`/replicas`.

        :param mapper: The mapped class or mapper the statement is about.
        :param clause: The statement, ``None`` for a flush or a bare
            :meth:`~sqlalchemy.orm.Session.connection` call.
        :param bind: An explicit engine or connection, returned as is.
        :param kw: Other ``bind_arguments``; ``bind_key`` names a cluster.
        :raises ReadOnlyError: For a write inside
            :func:`~flask_partition.use_replica`.
        """
        if bind is not None:
            return bind
        bind_key = kw.get("bind_key", _MISSING)
        if bind_key is not _MISSING:
            cluster = self.router.cluster(bind_key, context=" (from 'bind_arguments')")
        elif mapper is not None:
            cluster = self.router.cluster_for_mapper(mapper)
        elif clause is not None:
            cluster = self.router.cluster_for_clause(clause)
        else:
            cluster = self.router.default
        return self._engine_for(cluster, clause)

    def _engine_for(
        self, cluster: Cluster, clause: sa.ClauseElement | None
    ) -> sa.Engine:
        plan = _plan.get()
        intent = Intent.WRITE if self._flushing else classify(clause)
        if intent is Intent.READ:
            if plan.role is Role.PRIMARY or cluster.name in self.written_clusters:
                return cluster.primary
            return self._replica(cluster)
        if plan.read_only:
            if intent is Intent.WRITE:
                raise ReadOnlyError(
                    f"Cannot execute {_describe(clause)} on"
                    f" {cluster_label(cluster.name)} inside {plan.pinned_by!r}:"
                    " it only allows reads. Nothing was sent to the database."
                    " Move the write out of the block or use 'use_primary'."
                )
            # Raw SQL under use_replica: the user accepted the replica; the
            # database itself refuses a write there.
            return self._replica(cluster)
        self.written_clusters.add(cluster.name)
        return cluster.primary

    def _replica(self, cluster: Cluster) -> sa.Engine:
        try:
            return self._replica_of[cluster.name]
        except KeyError:
            engine = self._replica_of[cluster.name] = cluster.choose_replica()
            return engine

    def flush(self, objects: t.Sequence[t.Any] | None = None) -> None:
        """Flush pending changes; inside a read-only block, refuse them.

        :raises ReadOnlyError: When there is anything to flush inside
            :func:`~flask_partition.use_replica`; nothing is sent.
        """
        plan = _plan.get()
        if plan.read_only and not self._is_clean():
            raise ReadOnlyError(
                f"Cannot flush {len(self.new)} new, {len(self.dirty)} changed and"
                f" {len(self.deleted)} deleted objects inside {plan.pinned_by!r}:"
                " it only allows reads. Nothing was sent to the database. Move"
                " the write out of the block or use 'use_primary'."
            )
        super().flush(objects)


def _describe(clause: sa.ClauseElement | None) -> str:
    if clause is None:
        return "a flush"
    if isinstance(clause, sa.Select):
        if clause._for_update_arg is not None:
            return "SELECT ... FOR UPDATE/SHARE"
        return "a SELECT calling a sequence"
    name = getattr(clause, "__visit_name__", type(clause).__name__)
    if isinstance(name, str) and name in ("insert", "update", "delete"):
        return name.upper()
    return f"{type(clause).__name__} statement"
