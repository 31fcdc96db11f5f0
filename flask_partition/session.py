"""The session that routes every statement to a cluster and a role.

:meth:`PartitionSession.get_bind` is SQLAlchemy's documented hook for
choosing an engine per statement; everything else (identity map, unit of
work, one connection per engine inside a transaction) is SQLAlchemy's own.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import contextvars
import logging
import threading
import typing as t

import sqlalchemy as sa
import sqlalchemy.exc as sa_exc
import sqlalchemy.orm as sa_orm
import sqlalchemy.sql.util as sa_sql_util
from sqlalchemy.ext.horizontal_shard import set_shard_id
from sqlalchemy.ext.horizontal_shard import ShardedQuery
from sqlalchemy.ext.horizontal_shard import ShardedSession

from .consistency import header_cluster_name
from .errors import AmbiguousShardError
from .errors import CrossClusterError
from .errors import ReadOnlyError
from .errors import ScatterError
from .errors import ShardKeyError
from .errors import UnknownClusterError
from .errors import UnknownShardError
from .replicas import Cluster
from .replicas import cluster_label
from .routing import _plan
from .routing import _routes
from .routing import classify
from .routing import Intent
from .routing import Role
from .scatter import plan_merge
from .sharding import HashShardMap
from .sharding import is_sharded
from .sharding import key_values
from .sharding import shard_key_of_mapper
from .sharding import shard_key_of_table
from .sharding import ShardKey
from .sharding import ShardMap
from .signals import routed
from .transactions import check_single
from .transactions import install_xid
from .transactions import on_transaction_create

if t.TYPE_CHECKING:
    from sqlalchemy.engine import Result

    from .extension import PartitionDB

#: Execution option that allows an UPDATE or DELETE on every shard.
ALL_SHARDS: t.Final = "all_shards"

_log = logging.getLogger("flask_partition")
_DEBUG = logging.DEBUG

_MISSING: t.Any = object()


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
    :param shards: The shard clusters by shard name.
    :param shard_map: Maps shard key values to shard names; default a
        :class:`~flask_partition.sharding.HashShardMap` over ``shards``.
    :param shard_chooser: Replaces the key-based choice of a new row's shard:
        ``(mapper, instance, clause) -> shard``, as for SQLAlchemy's
        :class:`~sqlalchemy.ext.horizontal_shard.ShardedSession`.
    :param identity_chooser: Replaces the shards searched by
        ``session.get()``: ``(mapper, primary_key, **kw) -> [shards]``.
    :param execute_chooser: Replaces the shards a statement without an
        explicit shard runs on: ``(orm_execute_state) -> [shards]``.
    :param scatter_workers: Threads that query shards at the same time.
    :param sender: The sender of signals (the Flask app).
    :param commit_mode: How sessions commit writes to several clusters.

    .. versionadded:: 0.1.0
    """

    def __init__(
        self,
        clusters: t.Mapping[str | None, Cluster],
        shards: t.Mapping[str, Cluster] | None = None,
        *,
        shard_map: ShardMap | t.Callable[[t.Any], str] | None = None,
        shard_chooser: t.Callable[..., t.Any] | None = None,
        identity_chooser: t.Callable[..., t.Iterable[t.Any]] | None = None,
        execute_chooser: t.Callable[..., t.Iterable[t.Any]] | None = None,
        scatter_workers: int = 8,
        sender: object = None,
        commit_mode: str = "best_effort",
    ) -> None:
        self.clusters = dict(clusters)
        self.default = self.clusters[None]
        self.shards = dict(shards or {})
        self.shard_map: ShardMap | None = None
        if self.shards:
            if shard_map is None:
                shard_map = HashShardMap(self.shards)
            elif not hasattr(shard_map, "shard_for"):
                shard_map = _FunctionShardMap(shard_map)
            self.shard_map = t.cast(ShardMap, shard_map)
        self.shard_chooser = shard_chooser
        self.identity_chooser = identity_chooser
        self.execute_chooser = execute_chooser
        self.scatter_workers = scatter_workers
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._executor_lock = threading.Lock()
        # Mappers never move between clusters, so the answer is cached; this
        # keeps get_bind at a dict lookup for ORM statements.
        self._by_mapper: dict[object, Cluster] = {}
        self._shard_keys: dict[object, ShardKey | None] = {}
        self._nodes: dict[sa.Engine, tuple[str | None, Role, int]] = {}
        self.sender = sender
        #: Every cluster by name: binds, shards and the default (``None``).
        self.by_name: dict[str | None, Cluster] = dict(self.clusters)
        self.by_name.update(self.shards)
        self.commit_mode = commit_mode
        #: Set once the primaries were checked for two-phase commits.
        self.two_phase_checked = False
        # Commit order: the default cluster, the binds, then the shards.
        self._rank: dict[sa.Engine, int] = {}
        for rank, cluster in enumerate(self.by_name.values()):
            self._rank[cluster.primary] = rank
            if cluster.primary.dialect.name == "postgresql":
                install_xid(cluster.primary, rank)
            cluster.sender = sender
            self._nodes[cluster.primary] = (cluster.name, Role.PRIMARY, 0)
            for index, engine in enumerate(cluster.replicas):
                self._nodes[engine] = (cluster.name, Role.REPLICA, index)

    def rank(self, engine: sa.Engine) -> int:
        """The commit order of a primary engine; other engines sort last."""
        return self._rank.get(engine, len(self._rank))

    def label_of(self, engine: sa.Engine) -> str:
        """Name the cluster of an engine for messages: ``shard 'eu'``."""
        node = self._nodes.get(engine)
        if node is None:
            return repr(engine.url.render_as_string(hide_password=True))
        return self.by_name[node[0]].label

    def shard(self, name: t.Any, *, context: str = "") -> Cluster:
        """Return the shard cluster called ``name``.

        :param name: A shard name from ``PARTITION_SHARDS``.
        :param context: Where the name came from, named in the error.
        :raises UnknownShardError: When no such shard is configured.
        """
        try:
            return self.shards[name]
        except (KeyError, TypeError):
            known = ", ".join(repr(k) for k in self.shards)
            raise UnknownShardError(
                f"Shard {name!r}{context} is not configured. Configured shards:"
                f" {known or 'none'}. Add it to 'PARTITION_SHARDS' or fix the name."
            ) from None

    def _no_shards(self, what: str) -> None:
        if not self.shards:
            raise UnknownShardError(
                f"{what} is sharded, but 'PARTITION_SHARDS' is not configured."
                " Configure the shards, or remove '__shard_key__'."
            )

    def shard_key(self, mapper: t.Any) -> ShardKey | None:
        """Return the shard key of a mapper, ``None`` for unsharded ones.

        A sharded mapper without a key (a table in the shards' metadata
        with no ``shard_key``) returns a key whose column is ``None``.
        """
        try:
            return self._shard_keys[mapper]
        except KeyError:
            pass
        inspected = t.cast("sa_orm.Mapper[t.Any]", sa.inspect(mapper))
        key: ShardKey | None = None
        if any(is_sharded(table) for table in inspected.tables):
            key = shard_key_of_mapper(inspected)
            key = key or ShardKey(inspected.class_.__name__, None, None)
        self._shard_keys[mapper] = key
        return key

    def shard_for_key(self, value: t.Any, *, context: str = "") -> str:
        """Map a shard key value to a configured shard name.

        :raises ShardKeyError: When the value cannot be mapped.
        :raises UnknownShardError: When the map returns an unknown shard.
        """
        assert self.shard_map is not None
        try:
            name = self.shard_map.shard_for(value)
        except (TypeError, ValueError, KeyError) as error:
            raise ShardKeyError(
                f"Cannot map shard key {value!r}{context} to a shard: {error}"
            ) from error
        self.shard(name, context=f" (the shard map's answer for key {value!r})")
        return name

    def executor(self) -> concurrent.futures.ThreadPoolExecutor:
        """The thread pool that queries shards in parallel (made on first use)."""
        if self._executor is None:
            with self._executor_lock:
                if self._executor is None:
                    self._executor = concurrent.futures.ThreadPoolExecutor(
                        self.scatter_workers, thread_name_prefix="partition-scatter"
                    )
        return self._executor

    def close(self) -> None:
        """Stop the scatter threads."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

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
        if any(is_sharded(tbl) for tbl in inspected.tables):
            self._no_shards(f"Model {inspected.class_.__name__!r}")
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
        if any(is_sharded(table) for table in tables):
            self._no_shards("A table in the statement")
            raise ScatterError(
                "The statement refers to sharded tables but no shard was chosen."
                " Use 'use_shard', a shard key condition or"
                " bind_arguments={'shard_id': ...}."
            )
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
        """Every engine of every cluster and shard, primaries first in each."""
        for cluster in [*self.clusters.values(), *self.shards.values()]:
            yield from cluster.engines()

    def tables(self, clause: sa.ClauseElement) -> list[sa.Table]:
        """The tables a statement refers to (none for raw SQL)."""
        if isinstance(clause, sa.TextClause):
            return []
        tables = sa_sql_util.find_tables(clause, check_columns=True, include_crud=True)
        return [tbl for tbl in tables if isinstance(tbl, sa.Table)]

    def sharded_tables(self, clause: sa.ClauseElement) -> list[sa.Table]:
        """The sharded tables a Core statement refers to."""
        return [tbl for tbl in self.tables(clause) if is_sharded(tbl)]


class _FunctionShardMap:
    """Wrap a plain ``key -> shard`` function as a shard map."""

    def __init__(self, function: t.Callable[[t.Any], str]) -> None:
        self.function = function

    def shard_for(self, key: t.Any) -> str:
        return self.function(key)


class PartitionSession(ShardedSession):
    """A session that sends each statement to the right cluster and role.

    Writes go to the cluster's primary. Reads go to one replica per cluster
    for the whole session (monotonic reads), except on a cluster the session
    has written to, which is read from its primary until the session is
    removed, so a session never reads older data than it wrote. A request
    that brings a consistency token reads a cluster only from replicas that
    have replayed it (see :doc:`/consistency`). A replica that fails is
    skipped and the read retried on the next one, then on the primary (see
    :doc:`/replicas`).

    With ``PARTITION_SHARDS`` configured, rows of sharded models go to the
    shard of their key; reads without a shard run on every shard at once
    and their results are merged (see :doc:`/sharding`). It builds on
    SQLAlchemy's :class:`~sqlalchemy.ext.horizontal_shard.ShardedSession`:
    identity tokens keep equal primary keys of different shards apart, and
    ``set_shard_id``, ``bind_arguments={"shard_id": ...}`` and
    ``Query.set_shard()`` work as documented there.

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
        # ShardedSession.__init__ would install its own execute hook, which
        # runs shards one after another and concatenates their rows; ours
        # runs them in parallel and merges. So initialise Session directly.
        kwargs.setdefault("query_cls", ShardedQuery)
        sa_orm.Session.__init__(self, **kwargs)
        if router is None:
            if db is None:
                raise TypeError("'PartitionSession' needs 'db' or 'router'.")
            router = db.get_router()
        self.router = router
        #: Names of the clusters this session wrote to: read from primaries.
        self.written_clusters: set[str | None] = set()
        self._replica_of: dict[str | None, sa.Engine] = {}
        # Clusters whose chosen replica was used more than once, and the
        # replicas that failed in this session: see _reroute.
        self._reused: set[str | None] = set()
        self._failed: set[sa.Engine] = set()
        # Clusters written in the open transaction, and those with
        # consistency tokens whose writes committed (taken by the response).
        self._txn_written: set[str | None] = set()
        self.committed_writes: set[str | None] = set()
        # The open transaction's commit mode and, in two-phase mode, its
        # global id (see transactions.py).
        self._txn_mode = router.commit_mode
        self._gtrid: str | None = None
        self._bulk_shard: str | None = None
        self._scatter_lock: threading.Lock | None = None
        self.shard_chooser = router.shard_chooser or self._choose_shard
        self.identity_chooser = router.identity_chooser or self._identity_shards
        self.execute_chooser = router.execute_chooser or self._execute_shards
        if router.shards:
            sa.event.listen(self, "do_orm_execute", self._on_execute, retval=True)
        else:
            # No shards: flush asks get_bind directly, as a plain Session
            # does, and identity lookups and connections skip the sharding
            # overrides (this is on the path of every get()).
            self.connection_callable = None  # type: ignore[assignment]
            plain = sa_orm.Session
            self._identity_lookup = plain._identity_lookup.__get__(self)  # type: ignore[method-assign]
            self._connection_for_bind = plain._connection_for_bind.__get__(self)  # type: ignore[method-assign]

    # -- choosing an engine ------------------------------------------------

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

        The cluster comes from ``shard_id`` or ``bind_key`` in
        ``bind_arguments``, else the mapper, else the tables in ``clause``,
        else the default cluster. The role follows the routing rules in
        :doc:`/replicas`.

        :param mapper: The mapped class or mapper the statement is about.
        :param clause: The statement, ``None`` for a flush or a bare
            :meth:`~sqlalchemy.orm.Session.connection` call.
        :param bind: An explicit engine or connection, returned as is.
        :param kw: Other ``bind_arguments``; ``bind_key`` names a cluster,
            ``shard_id`` a shard.
        :raises ReadOnlyError: For a write inside
            :func:`~flask_partition.use_replica`.
        :raises ScatterError: For a sharded model or table without a shard.
        """
        if bind is not None:
            return bind
        shard_id = kw.get("shard_id")
        if shard_id is not None:
            cluster = self.router.shard(shard_id, context=" (from 'shard_id')")
            return self._engine_for(cluster, clause)
        bind_key = kw.get("bind_key", _MISSING)
        if bind_key is not _MISSING:
            cluster = self.router.cluster(bind_key, context=" (from 'bind_arguments')")
        elif mapper is not None:
            if self.router.shards and self.router.shard_key(mapper) is not None:
                name = self._shard_without_statement(mapper, kw.get("instance"))
                return self._engine_for(self.router.shards[name], clause)
            cluster = self.router.cluster_for_mapper(mapper)
        elif clause is not None:
            shard = _plan.get().shard
            if shard is not None and self.router.sharded_tables(clause):
                cluster = self.router.shard(shard, context=" (from 'use_shard')")
            else:
                cluster = self.router.cluster_for_clause(clause)
        else:
            cluster = self.router.default
        return self._engine_for(cluster, clause)

    def _shard_without_statement(self, mapper: t.Any, instance: t.Any) -> str:
        if instance is not None:
            return t.cast(str, self._choose_shard_and_assign(mapper, instance))
        shard = self._bulk_shard or _plan.get().shard
        if shard is None:
            raise ScatterError(
                f"A connection for sharded model"
                f" {self.router.shard_key(mapper).model!r} needs"  # type: ignore[union-attr]
                " a shard. Use 'use_shard' or bind_arguments={'shard_id': ...}."
            )
        self.router.shard(shard, context=" (from 'use_shard')")
        return shard

    def _engine_for(
        self, cluster: Cluster, clause: sa.ClauseElement | None
    ) -> sa.Engine:
        plan = _plan.get()
        intent = Intent.WRITE if self._flushing else classify(clause)
        if intent is Intent.READ:
            if plan.role is Role.PRIMARY:
                return self._routed(cluster, cluster.primary, "use_primary")
            if cluster.name in self.written_clusters:
                return self._routed(cluster, cluster.primary, "written by this session")
            return self._replica(cluster, plan)
        if plan.read_only:
            if intent is Intent.WRITE:
                raise ReadOnlyError(
                    f"Cannot execute {_describe(clause)} on"
                    f" {self._label(cluster)} inside {plan.pinned_by!r}:"
                    " it only allows reads. Nothing was sent to the database."
                    " Move the write out of the block or use 'use_primary'."
                )
            return self._raw_on_replica(cluster)
        self.written_clusters.add(cluster.name)
        if cluster.is_shard and self._txn_mode == "single":
            check_single(self, [t.cast(str, cluster.name)])
        self._txn_written.add(cluster.name)
        return self._routed(
            cluster, cluster.primary, "write" if intent is Intent.WRITE else "raw SQL"
        )

    def _label(self, cluster: Cluster) -> str:
        return cluster_label(cluster.name, shard=cluster.name in self.router.shards)

    def _replica(self, cluster: Cluster, plan: t.Any) -> sa.Engine:
        """The session's engine for reads of ``cluster``: one replica for
        the whole session (monotonic reads), chosen on first use among the
        healthy replicas that have replayed the client's token, else the
        primary.
        """
        name = cluster.name
        engine = self._replica_of.get(name)
        positions = plan.positions
        position = positions.get(name) if positions else None
        if engine is not None:
            index = None if position is None else cluster.index_of(engine)
            if index is None or cluster.reached(index, position):  # type: ignore[arg-type]
                self._reused.add(name)
                return self._routed(cluster, engine, "the session's choice")
        engine, reason = cluster.choose(position, self._failed)
        self._replica_of[name] = engine
        self._reused.discard(name)
        return self._routed(cluster, engine, reason)

    def _raw_on_replica(self, cluster: Cluster) -> sa.Engine:
        """Raw SQL under use_replica: the user accepted a replica, whose
        database refuses writes itself. The client's token is not applied
        (it could send the SQL to the primary); with no usable replica the
        SQL is refused, since it may write and a primary would accept it.
        """
        if not cluster.replicas:
            # Documented: a cluster without replicas has only its primary.
            return self._routed(cluster, cluster.primary, "no replicas")
        name = cluster.name
        engine = self._replica_of.get(name)
        reason = "raw SQL under use_replica"
        if engine is cluster.primary and name in self._reused:
            # The session's replica failed after answering: another one may
            # be behind what it saw, and the primary would accept a write.
            reason = "the session's replica failed"
        elif engine is None or engine is cluster.primary:
            engine, reason = cluster.choose(None, self._failed)
            if engine is not cluster.primary:
                self._replica_of[name] = engine
        if engine is cluster.primary:
            plan = _plan.get()
            raise ReadOnlyError(
                f"Cannot run raw SQL on {self._label(cluster)} inside"
                f" {plan.pinned_by!r}: {reason}, and the"
                " primary would accept a write. Nothing was sent to the"
                " database. Use select() constructs, or run it outside the block."
            )
        return self._routed(cluster, engine, "raw SQL under use_replica")

    def _routed(self, cluster: Cluster, engine: sa.Engine, reason: str) -> sa.Engine:
        """Report a routing decision to the log, the signal and the debug
        header, for those that listen; return ``engine``.
        """
        routes = _routes.get()
        if routes is None and not routed.receivers and not _log.isEnabledFor(_DEBUG):
            return engine
        node = cluster.node(engine)
        _log.debug("%s: %s (%s)", cluster.label, node, reason)
        if routes is not None:
            key = (header_cluster_name(cluster.name, shard=cluster.is_shard), node)
            routes[key] = routes.get(key, 0) + 1
        if routed.receivers:
            try:
                routed.send(
                    self.router.sender,
                    cluster=cluster.name,
                    role=Role.REPLICA if node != "primary" else Role.PRIMARY,
                    node=node,
                    reason=reason,
                )
            except Exception:
                # Observability must not change where a statement goes.
                _log.exception("a 'routed' receiver raised")
        return engine

    # -- replica failures --------------------------------------------------

    def _execute_internal(
        self, statement: t.Any, params: t.Any = None, **kw: t.Any
    ) -> t.Any:
        # The one place every Session.execute/scalars/scalar, get(), lazy
        # load and refresh passes. A read whose replica failed to connect or
        # lost its connection is run again elsewhere; the statement raised
        # before returning, so no row reached the caller. Writes go to
        # primaries, whose errors carry no replica and are never retried.
        while True:
            try:
                return super()._execute_internal(statement, params, **kw)
            except sa_exc.DBAPIError as error:
                # Nested calls (each shard of a scatter) leave the retry to
                # the outermost, which runs the whole statement again.
                if kw.get("_parent_execute_state") is not None:
                    raise
                failed = getattr(error, "_partition_replica", None)
                if failed is None or not self._reroute(failed):
                    raise

    def rollback(self) -> None:
        """Roll back, as :meth:`sqlalchemy.orm.Session.rollback`; a replica
        that died since it was read does not make it fail.
        """
        self._release_replicas()
        super().rollback()

    def _close_impl(self, invalidate: bool, *args: t.Any, **kw: t.Any) -> None:
        # close(), reset() and invalidate() all pass here; the scoped
        # session's remove() at teardown too.
        self._release_replicas(invalidate=invalidate)
        super()._close_impl(invalidate, *args, **kw)

    def _release_replicas(self, *, invalidate: bool = False) -> None:
        """End the session's transactions on replicas, quietly: they only
        read, and a replica that died since it was read must not fail the
        commit, rollback or close of the session. Runs before every commit
        (see ``_before_commit``), rollback and close.
        """
        transaction = self._transaction
        if transaction is None:
            return
        nodes = self.router._nodes
        for level in transaction._iterate_self_and_parents():
            connections = level._connections
            for key, entry in list(connections.items()):
                node = nodes.get(key) if isinstance(key, sa.Engine) else None
                if node is None or node[1] is not Role.REPLICA:
                    continue
                connection = entry[0]
                connections.pop(key, None)
                connections.pop(connection, None)
                try:
                    if invalidate:
                        connection.invalidate()
                    connection.close()
                except sa_exc.DBAPIError:
                    # Its handle_error already marked the replica down; the
                    # pool discards the broken connection.
                    with contextlib.suppress(Exception):
                        connection.invalidate()

    def _reroute(self, failed: sa.Engine) -> bool:
        """Move the clusters whose chosen replica is ``failed`` elsewhere.

        A cluster whose replica already answered this session goes to the
        primary for the rest of the session: another replica may be behind
        what was already seen. Otherwise the next healthy replica is chosen.

        :return: Whether the statement may be run again.
        """
        if failed in self._failed:
            return False
        self._failed.add(failed)
        moved = False
        for name, engine in list(self._replica_of.items()):
            if engine is not failed:
                continue
            cluster = self.router.by_name[name]
            if name in self._reused:
                self._replica_of[name] = cluster.primary
                self._routed(cluster, cluster.primary, "the session's replica failed")
            else:
                del self._replica_of[name]
            moved = True
        return moved

    # -- the shard choosers (defaults; PartitionDB can replace them) --------

    def _choose_shard_and_assign(
        self, mapper: t.Any, instance: t.Any, **kw: t.Any
    ) -> t.Any:
        # Unsharded models keep the identity token None, as in a plain
        # Session; ShardedSession would give every row a token.
        if mapper is not None and self.router.shard_key(mapper) is None:
            return None
        return super()._choose_shard_and_assign(mapper, instance, **kw)

    def _choose_shard(self, mapper: t.Any, instance: t.Any, clause: t.Any) -> str:
        """The shard of a new row: its key's shard (the pinned shard for a
        table without a key).
        """
        key = t.cast(ShardKey, self.router.shard_key(mapper))
        pinned = _plan.get().shard
        if key.column is None or key.attribute is None:
            if pinned is None:
                raise ShardKeyError(
                    f"Model {key.model!r} has no shard key; write it inside"
                    " 'use_shard(...)' so it is clear which shard it goes to."
                )
            return pinned
        value = getattr(instance, key.attribute, None) if instance else None
        if value is None:
            raise ShardKeyError(
                f"{key.model}.{key.attribute} (the shard key) is None. Set it"
                " before the row is flushed: it decides the row's shard."
            )
        return self.router.shard_for_key(
            value, context=f" ({key.model}.{key.attribute})"
        )

    def _identity_shards(
        self, mapper: t.Any, primary_key: t.Any, **kw: t.Any
    ) -> list[t.Any]:
        """Where ``session.get()`` looks: the pinned shard, the shard of the
        key when it is part of the primary key, else every shard.
        """
        key = self.router.shard_key(mapper)
        if key is None:
            return [None]
        parent = kw.get("lazy_loaded_from")
        parent_shard = None if parent is None else _shard_of(parent)
        if parent_shard is not None:
            return [parent_shard]
        pinned = _plan.get().shard
        if pinned is not None:
            return [pinned]
        if key.column is not None:
            inspected = t.cast("sa_orm.Mapper[t.Any]", sa.inspect(mapper))
            for column, value in zip(inspected.primary_key, primary_key, strict=False):
                if column is key.column and value is not None:
                    return [self.router.shard_for_key(value)]
        return list(self.router.shards)

    def _execute_shards(self, orm_context: sa_orm.ORMExecuteState) -> list[str]:
        """The shards a statement runs on when none was given: those its
        shard key conditions allow, else all of them.
        """
        statement = orm_context.statement
        key = self._statement_key(orm_context)
        if key is not None and key.column is not None:
            values = key_values(
                getattr(statement, "_where_criteria", ()),
                key.column,
                orm_context.parameters
                if isinstance(orm_context.parameters, dict)
                else None,
            )
            if values == []:
                # 'key IN ()' matches nothing: any one shard answers that.
                return list(self.router.shards)[:1]
            if values is not None:
                context = f" ({key.model}.{key.column.name})"
                shards = {self.router.shard_for_key(v, context=context) for v in values}
                return [name for name in self.router.shards if name in shards]
        return list(self.router.shards)

    def _get_shards(self, orm_context: sa_orm.ORMExecuteState) -> t.Iterable[t.Any]:
        """The shards the SELECT behind ``session.get()`` runs on: the
        identity chooser's answer for its primary key.
        """
        mapper = t.cast("sa_orm.Mapper[t.Any]", orm_context.bind_mapper)
        params = t.cast("dict[str, t.Any]", orm_context.parameters or {})
        get_params = mapper._get_clause[1]
        primary_key = tuple(params.get(get_params[c].key) for c in mapper.primary_key)
        shards: t.Iterable[t.Any] = self.identity_chooser(
            mapper,
            primary_key,
            lazy_loaded_from=None,
            execution_options=orm_context.execution_options,
            bind_arguments=orm_context.bind_arguments,
        )
        return shards

    def _identity_lookup(self, mapper: t.Any, *args: t.Any, **kw: t.Any) -> t.Any:
        if not self.router.shards or self.router.shard_key(mapper) is None:
            return sa_orm.Session._identity_lookup(self, mapper, *args, **kw)
        return super()._identity_lookup(mapper, *args, **kw)

    # -- executing on shards ------------------------------------------------

    def _statement_key(self, orm_context: sa_orm.ORMExecuteState) -> ShardKey | None:
        """The shard key of the statement's sharded table, ``None`` when it
        touches no sharded table.
        """
        statement = t.cast(sa.ClauseElement, orm_context.statement)
        mapper = orm_context.bind_mapper
        if mapper is not None:
            key = self.router.shard_key(mapper)
            # One sharded entity may still join an unsharded table; check
            # when the statement is sharded or names more than one FROM.
            if key is not None or _may_join(statement):
                _refuse_mixed(self.router.tables(statement))
            return key
        tables = self.router.tables(statement)
        sharded = [tbl for tbl in tables if is_sharded(tbl)]
        if not sharded:
            return None
        _refuse_mixed(tables)
        return shard_key_of_table(sharded[0]) or ShardKey(sharded[0].name, None, None)

    def _explicit_shard(self, orm_context: sa_orm.ORMExecuteState) -> t.Any:
        """The shard named by SQLAlchemy's own controls, as
        ``horizontal_shard`` reads them, or ``None``.
        """
        for option in orm_context._non_compile_orm_options:
            if isinstance(option, set_shard_id):
                return option.shard_id
        if orm_context.is_select:
            options: t.Any = orm_context.load_options
        elif orm_context.is_update or orm_context.is_delete:
            options = orm_context.update_delete_options
        else:
            options = None
        if options is not None and options._identity_token is not None:
            return options._identity_token
        if "_sa_shard_id" in orm_context.execution_options:
            return orm_context.execution_options["_sa_shard_id"]
        if "shard_id" in orm_context.bind_arguments:
            return orm_context.bind_arguments["shard_id"]
        # Relationship loads stay on the parent's shard: a lazy load knows its
        # parent; a selectin/subquery load runs inside the parent's query,
        # whose context carries the shard as its identity token.
        parent = orm_context.lazy_loaded_from if orm_context.is_select else None
        if parent is not None:
            return _shard_of(parent)
        top = orm_context.execution_options.get("sa_top_level_orm_context")
        return getattr(top, "identity_token", None)

    def _on_execute(self, orm_context: sa_orm.ORMExecuteState) -> Result[t.Any] | None:
        """``do_orm_execute`` hook: run statements on sharded tables on the
        right shards; leave every other statement alone.
        """
        key = self._statement_key(orm_context)
        if key is None:
            return None
        statement = t.cast(sa.ClauseElement, orm_context.statement)
        if orm_context.is_update:
            self._refuse_key_change(orm_context, key)
        shard = self._explicit_shard(orm_context)
        if shard is not None:
            self.router.shard(shard, context=f" (for {key.model!r})")
            return self._run_on(orm_context, [shard])[0]
        pinned = _plan.get().shard
        if orm_context.is_insert:
            return self._insert(orm_context, key, pinned)
        if pinned is not None:
            self.router.shard(pinned, context=" (from 'use_shard')")
            return self._run_on(orm_context, [pinned])[0]
        if _is_identity_get(orm_context):
            shards = list(self._get_shards(orm_context))
        else:
            shards = list(self.execute_chooser(orm_context))
        if not shards:
            raise ScatterError(
                f"No shard was chosen for a statement on {key.model!r}; the"
                " execute chooser returned an empty list."
            )
        for name in shards:
            self.router.shard(name, context=" (from the execute chooser)")
        if len(shards) == 1:
            return self._run_on(orm_context, shards)[0]
        if (
            orm_context.is_update
            or orm_context.is_delete
            or classify(statement) is not Intent.READ
        ):
            if not orm_context.execution_options.get(ALL_SHARDS):
                raise ScatterError(
                    f"This {_describe(statement)} on {key.model!r} would run on"
                    f" {len(shards)} shards ({', '.join(map(repr, shards))}):"
                    " writes never spread over shards silently. Narrow it with"
                    " a condition on the shard key or 'use_shard', or pass"
                    f" execution_options({ALL_SHARDS}=True) to run it on those"
                    " shards on purpose."
                )
            return _merge_writes(self._run_on(orm_context, shards))
        single_entity = False
        if orm_context.is_orm_statement:
            descriptions = getattr(statement, "column_descriptions", [])
            single_entity = len(descriptions) == 1 and isinstance(
                descriptions[0].get("expr"), type
            )
        dialect = self.router.shards[shards[0]].primary.dialect.name
        plan = plan_merge(
            statement,  # type: ignore[arg-type]
            dialect=dialect,
            shard_key=key.column,
            single_entity=single_entity,
        )
        results = self._run_on(orm_context, shards, plan.statement, parallel=True)
        if _is_identity_get(orm_context):
            frozen = [result.freeze() for result in results]
            hits = [n for n, f in zip(shards, frozen, strict=True) if f.data]
            if len(hits) > 1:
                raise AmbiguousShardError(
                    f"{key.model} with primary key {orm_context.parameters!r}"
                    f" exists on shards {hits!r}. Name the shard ('use_shard',"
                    " identity_token=...) or use primary keys unique across"
                    " shards."
                )
            results = [f() for f in frozen]
        return plan.merge(results)

    def _insert(
        self, orm_context: sa_orm.ORMExecuteState, key: ShardKey, pinned: str | None
    ) -> Result[t.Any]:
        """An INSERT goes to the shard of its rows' keys; rows of several
        shards are split into one INSERT per shard. Under ``use_shard``, every
        row must map to the pinned shard.
        """
        statement = t.cast(t.Any, orm_context.statement)
        if key.column is None:
            if pinned is None:
                raise ScatterError(
                    f"An INSERT into {key.model!r} (a sharded table without a"
                    " shard key) needs a shard: use 'use_shard' or"
                    " bind_arguments={'shard_id': ...}."
                )
            return self._run_on(orm_context, [pinned])[0]
        name = key.column.key
        by_shard: dict[str, list[dict[str, t.Any]]] = {}
        for row in _insert_rows(statement, orm_context.parameters):
            value = row.get(name, row.get(key.attribute or name))
            if value is None:
                raise ShardKeyError(
                    f"An INSERT into {key.model!r} has no value for the shard key"
                    f" {name!r}; it decides the row's shard. Nothing was inserted."
                )
            shard = self.router.shard_for_key(value, context=f" ({key.model}.{name})")
            if pinned is not None and shard != pinned:
                raise ShardKeyError(
                    f"An INSERT into {key.model!r} has a row with {name}={value!r},"
                    f" which belongs on shard {shard!r}, inside"
                    f" 'use_shard({pinned!r})'. Nothing was inserted."
                )
            by_shard.setdefault(shard, []).append(row)
        if len(by_shard) == 1:
            (shard,) = by_shard
            return self._run_on(orm_context, [shard])[0]
        # One INSERT per shard; each re-enters this hook with its shard.
        results = []
        for shard, shard_rows in by_shard.items():
            if getattr(statement, "_multi_values", ()):
                # The same statement (RETURNING, prefixes...) with this
                # shard's rows only.
                per_shard = statement._generate()
                per_shard._multi_values = (tuple(shard_rows),)
                args: tuple[t.Any, ...] = (per_shard,)
            else:
                args = (statement, shard_rows)
            results.append(
                self.execute(
                    *args,
                    execution_options=orm_context.local_execution_options,
                    bind_arguments={**orm_context.bind_arguments, "shard_id": shard},
                )
            )
        return _merge_writes(results)

    def _refuse_key_change(
        self, orm_context: sa_orm.ORMExecuteState, key: ShardKey
    ) -> None:
        """An UPDATE may not set the shard key: rows would stay on the shard
        of their old key.
        """
        if key.column is None:
            return
        statement = t.cast(t.Any, orm_context.statement)
        names = {getattr(c, "key", c) for c in (statement._values or {})}
        params = orm_context.parameters
        for row in params if isinstance(params, list) else [params or {}]:
            names.update(row)
        if key.column.key in names or key.attribute in names:
            raise ShardKeyError(
                f"This UPDATE sets {key.model}.{key.column.key}, the shard key:"
                " the rows would stay on the shard of their old key. Insert new"
                " rows and delete the old ones instead. Nothing was written."
            )

    def _run_on(
        self,
        orm_context: sa_orm.ORMExecuteState,
        shards: t.Sequence[str],
        statement: t.Any = None,
        *,
        parallel: bool = False,
    ) -> list[Result[t.Any]]:
        """Run the statement on each shard: one connection per shard, in
        parallel threads when ``parallel`` (reads only).
        """
        clause = t.cast(
            sa.ClauseElement, orm_context.statement if statement is None else statement
        )
        # Flush before choosing engines: a flush marks shards as written, and
        # a read must then go to those shards' primaries, not their replicas.
        if _autoflushes(self, orm_context):
            self._autoflush()
        calls = []
        for name in shards:
            engine = self._engine_for(self.router.shards[name], clause)
            bind_arguments = dict(orm_context.bind_arguments)
            bind_arguments.update(shard_id=name, bind=engine)
            calls.append((name, bind_arguments))
        if not parallel or len(calls) == 1:
            results = []
            for name, bind_arguments in calls:
                with self._bulk_dml(orm_context, name):
                    results.append(
                        orm_context.invoke_statement(
                            statement,
                            execution_options={"identity_token": name},
                            bind_arguments=bind_arguments,
                        )
                    )
            return results
        # Connect every shard in this thread (the session's transaction is
        # not thread-safe); the threads only run their own connection's
        # query. ORM rows are built later, in this thread, when the results
        # are merged.
        for _name, bind_arguments in calls:
            self.connection(bind_arguments={"bind": bind_arguments["bind"]})

        def invoke(name: str, bind_arguments: dict[str, t.Any]) -> Result[t.Any]:
            return orm_context.invoke_statement(
                statement,
                execution_options={"identity_token": name, "autoflush": False},
                bind_arguments=bind_arguments,
            )

        executor = self.router.executor()
        self._scatter_lock = threading.Lock()
        try:
            with self.no_autoflush:
                futures = [
                    executor.submit(contextvars.copy_context().run, invoke, name, args)
                    for name, args in calls[1:]
                ]
                try:
                    first = invoke(*calls[0])
                finally:
                    concurrent.futures.wait(futures)
        finally:
            self._scatter_lock = None
        return [first, *(future.result() for future in futures)]

    def _connection_for_bind(
        self, engine: t.Any, execution_options: t.Any = None, **kw: t.Any
    ) -> sa.Connection:
        # During a scatter, the threads look up their (already open)
        # connection in the session's transaction one at a time: the
        # transaction's state bookkeeping is not thread-safe.
        lock = self._scatter_lock
        if lock is None:
            return super()._connection_for_bind(engine, execution_options, **kw)
        with lock:
            return super()._connection_for_bind(engine, execution_options, **kw)

    @contextlib.contextmanager
    def _bulk_dml(
        self, orm_context: sa_orm.ORMExecuteState, shard: str
    ) -> t.Iterator[None]:
        """Let SQLAlchemy's ORM bulk INSERT/UPDATE/DELETE run on one shard.

        They refuse to run while the session has a ``connection_callable``
        (per-row shard choice during flush), and ask for a connection by
        mapper alone. Here the shard is already chosen, so the callable is
        lifted for the call (after flushing pending objects the normal way)
        and the shard is lent to :meth:`get_bind`.
        """
        if orm_context.is_select or not orm_context.is_orm_statement:
            yield
            return
        self.connection_callable = None  # type: ignore[assignment]
        self._bulk_shard = shard
        try:
            yield
        finally:
            del self.connection_callable
            self._bulk_shard = None

    # -- writes ------------------------------------------------------------

    def flush(self, objects: t.Sequence[t.Any] | None = None) -> None:
        """Flush pending changes; inside a read-only block, refuse them.

        :raises ReadOnlyError: When there is anything to flush inside
            :func:`~flask_partition.use_replica`; nothing is sent.
        :raises ShardKeyError: When a sharded row has no key, its key
            changed, or it belongs to another shard than the pinned one;
            nothing is sent.
        """
        if self._is_clean():
            return  # as Session.flush does: the autoflush of every read
        plan = _plan.get()
        if plan.read_only:
            raise ReadOnlyError(
                f"Cannot flush {len(self.new)} new, {len(self.dirty)} changed and"
                f" {len(self.deleted)} deleted objects inside {plan.pinned_by!r}:"
                " it only allows reads. Nothing was sent to the database. Move"
                " the write out of the block or use 'use_primary'."
            )
        if self.router.shards:
            self._check_shards(plan.shard)
            mode = (
                self._txn_mode
                if self._transaction is not None
                else plan.commit_mode or self.router.commit_mode
            )
            if mode == "single":
                check_single(self, self._flush_shards())
        super().flush(objects)

    def _flush_shards(self) -> set[str]:
        """The shards the pending flush writes to (after _check_shards gave
        new rows their shard)."""
        shards: set[str] = set()
        for instance in [*self.new, *self.dirty, *self.deleted]:
            state = sa.inspect(instance)
            if self.router.shard_key(state.mapper) is None:
                continue
            shard = _shard_of(state)
            if shard is not None:
                shards.add(shard)
        return shards

    def _check_related_shards(self, state: t.Any) -> None:
        """Refuse relating a sharded row to a sharded row of another shard:
        the rows could never be joined or loaded together.
        """
        shard = _shard_of(state)
        if shard is None or self.router.shard_key(state.mapper) is None:
            return
        for rel in state.mapper.relationships:
            value = state.dict.get(rel.key)
            if value is None or self.router.shard_key(rel.mapper) is None:
                continue
            for other in value if rel.uselist else [value]:
                other_shard = _shard_of(sa.inspect(other))
                if other_shard is not None and other_shard != shard:
                    raise ShardKeyError(
                        f"{state.mapper.class_.__name__}.{rel.key} relates a row"
                        f" on shard {shard!r} to a {rel.mapper.class_.__name__}"
                        f" on shard {other_shard!r}. Related sharded rows must"
                        " share a shard (give them the same shard key)."
                        " Nothing was written."
                    )

    def _check_shards(self, pinned: str | None) -> None:
        """Give every new sharded row its shard, and refuse rows that would
        be stored where key-based reads miss them. Runs before any SQL.
        """
        for instance in self.new:
            state = sa.inspect(instance)
            if self.router.shard_key(state.mapper) is None:
                continue
            # Chosen again on every flush: the key may have changed since a
            # flush that failed.
            shard = self.shard_chooser(state.mapper, instance, None)
            self.router.shard(shard, context=" (from the shard chooser)")
            if pinned is not None and shard != pinned:
                raise ShardKeyError(
                    f"A new {state.mapper.class_.__name__} belongs on shard"
                    f" {shard!r} by its key, but the block is pinned to shard"
                    f" {pinned!r} with 'use_shard'. Nothing was written."
                )
            state.identity_token = shard
        for instance in [*self.new, *self.dirty]:
            self._check_related_shards(sa.inspect(instance))
        for instance in [*self.dirty, *self.deleted]:
            state = sa.inspect(instance)
            key = self.router.shard_key(state.mapper)
            if key is None or state.key is None:
                continue
            if key.attribute is not None and instance not in self.deleted:
                history = state.attrs[key.attribute].history
                if history.has_changes():
                    raise ShardKeyError(
                        f"{key.model}.{key.attribute} is the shard key and cannot"
                        f" change (from {history.deleted!r} to {history.added!r}):"
                        " the row would stay on its old shard. Insert a new row"
                        " and delete the old one instead. Nothing was written."
                    )
            shard = state.key[2]
            if pinned is not None and shard != pinned:
                raise ShardKeyError(
                    f"A {key.model} of shard {shard!r} was changed inside"
                    f" 'use_shard({pinned!r})'. Nothing was written."
                )


def _insert_rows(statement: t.Any, parameters: t.Any) -> list[dict[str, t.Any]]:
    """The rows an INSERT writes, as dicts by column key: its parameter
    sets, ``.values(...)`` and multi-row ``.values([...])``.
    """

    def value(v: t.Any) -> t.Any:
        return getattr(v, "effective_value", v)

    base = {
        getattr(c, "key", c): value(v)
        for c, v in (getattr(statement, "_values", None) or {}).items()
    }
    multi = getattr(statement, "_multi_values", ())
    if multi:
        rows: list[dict[str, t.Any]] = []
        for row in multi[0]:
            if isinstance(row, dict):
                rows.append(
                    {str(getattr(c, "key", c)): value(v) for c, v in row.items()}
                )
            else:
                columns = statement.table.c
                pairs = zip(columns, row, strict=False)
                rows.append({str(c.key): value(v) for c, v in pairs})
        return rows
    if isinstance(parameters, list):
        return [{**base, **p} for p in parameters] or [base]
    return [{**base, **(parameters or {})}]


def _merge_writes(results: list[Result[t.Any]]) -> Result[t.Any]:
    """One result for a write run on several shards; ``rowcount`` is the
    total over the shards.
    """
    merged = results[0].merge(*results[1:])
    counts = [getattr(r, "rowcount", None) for r in results]
    if all(isinstance(c, int) and c >= 0 for c in counts):
        merged.rowcount = sum(t.cast("list[int]", counts))
    return merged


def _refuse_mixed(tables: list[sa.Table]) -> None:
    """Refuse a statement joining sharded and unsharded tables: they live
    on different databases.
    """
    sharded = [tbl.name for tbl in tables if is_sharded(tbl)]
    plain = [tbl.name for tbl in tables if not is_sharded(tbl)]
    if sharded and plain:
        raise CrossClusterError(
            f"The statement joins sharded tables {sorted(set(sharded))!r}"
            f" with unsharded tables {sorted(set(plain))!r}, which live on"
            " other databases. Query each side on its own."
        )


def _may_join(statement: t.Any) -> bool:
    """Does a statement join or select from more than one table, explicitly
    or implicitly? (Subqueries in WHERE are not looked at.)
    """
    if getattr(statement, "_setup_joins", None) or getattr(
        statement, "_from_obj", None
    ):
        return True
    froms = getattr(statement, "get_final_froms", None)
    return froms is not None and len(froms()) > 1


def _autoflushes(session: sa_orm.Session, orm_context: sa_orm.ORMExecuteState) -> bool:
    """Whether SQLAlchemy would autoflush before this statement."""
    if not session.autoflush or session._flushing:
        return False
    if orm_context.is_select:
        return bool(orm_context.load_options._autoflush)
    if orm_context.is_orm_statement and (
        orm_context.is_update or orm_context.is_delete
    ):
        return bool(orm_context.update_delete_options._autoflush)
    return True


def _shard_of(state: t.Any) -> t.Any:
    return state.key[2] if state.key else state.identity_token


def _is_identity_get(orm_context: sa_orm.ORMExecuteState) -> bool:
    """True for the SELECT behind ``session.get()``: its only criterion is
    the mapper's primary key clause.
    """
    mapper = orm_context.bind_mapper
    criteria: tuple[t.Any, ...] = getattr(orm_context.statement, "_where_criteria", ())
    if mapper is None or len(criteria) != 1:
        return False
    get_clause = mapper._get_clause[0]
    # SQLAlchemy 2.1 uses the clause itself; 2.0 an annotated copy of it.
    return criteria[0] is get_clause or bool(criteria[0].compare(get_clause))


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


@sa.event.listens_for(PartitionSession, "before_commit")
def _before_commit(session: PartitionSession) -> None:
    # Also reached by "with session.begin():", which commits the
    # SessionTransaction without calling Session.commit().
    transaction = session._transaction
    if transaction is not None and transaction._parent is None:
        session._release_replicas()


sa.event.listen(PartitionSession, "after_transaction_create", on_transaction_create)


@sa.event.listens_for(PartitionSession, "after_commit")
def _after_commit(session: PartitionSession) -> None:
    by_name = session.router.by_name
    session.committed_writes.update(
        name for name in session._txn_written if by_name[name].token_mode is not None
    )


@sa.event.listens_for(PartitionSession, "after_transaction_end")
def _after_transaction_end(
    session: PartitionSession, transaction: sa_orm.SessionTransaction
) -> None:
    if transaction.parent is None:
        session._txn_written.clear()
