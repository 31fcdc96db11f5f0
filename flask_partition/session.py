"""The session that routes every statement to a cluster and a role.

:class:`PartitionSession` holds only SQLAlchemy's hooks: ``get_bind`` (the
documented place to choose an engine per statement), ``do_orm_execute``
(shards), ``flush``, the retry of a read whose replica failed, and the
transaction events. Each hook delegates: the cluster to
:mod:`~flask_partition.topology`, the statement's intent to
:mod:`~flask_partition.routing.classify`, the engine to
:mod:`~flask_partition.routing.decide`, shard execution to
:mod:`~flask_partition.sharding.executor`, commits to
:mod:`~flask_partition.transactions`. Everything else (identity map, unit
of work, one connection per engine inside a transaction) is SQLAlchemy's own.
"""

from __future__ import annotations

import contextlib
import typing as t

import sqlalchemy as sa
import sqlalchemy.exc as sa_exc
import sqlalchemy.orm as sa_orm
from sqlalchemy.ext.horizontal_shard import ShardedQuery
from sqlalchemy.ext.horizontal_shard import ShardedSession

from . import _sqla
from .errors import ReadOnlyError
from .replicas import Cluster
from .routing.classify import classify
from .routing.classify import Intent
from .routing.decide import decide
from .routing.decide import reroute
from .routing.decide import SessionRouting
from .routing.plan import _plan
from .routing.plan import Role
from .routing.trace import report
from .sharding.executor import ALL_SHARDS as ALL_SHARDS
from .sharding.executor import ShardExecutor
from .sharding.guards import check_flush
from .sharding.guards import flush_shards
from .topology import Router
from .transactions.modes import check_single
from .transactions.modes import on_transaction_create
from .transactions.modes import TransactionState

_MISSING: t.Any = object()


class _HasRouter(t.Protocol):
    """What the session needs of :class:`~flask_partition.PartitionDB`."""

    def get_router(self) -> Router: ...


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
        db: _HasRouter | None = None,
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
        #: Where this session's statements went so far.
        self.routing = SessionRouting()
        #: What the open transaction wrote and how it commits.
        self.txn = TransactionState(router.commit_mode)
        #: Runs statements on sharded tables; ``None`` without shards.
        self.shards: ShardExecutor | None = None
        if router.shards:
            self.shards = shards = ShardExecutor(self)
            choice = shards.choice
            self.shard_chooser = router.shard_chooser or choice.choose_shard
            self.identity_chooser = router.identity_chooser or choice.identity_shards
            self.execute_chooser = router.execute_chooser or choice.execute_shards
            sa.event.listen(self, "do_orm_execute", shards.on_execute, retval=True)
        else:
            # No shards: ShardedQuery still reads the choosers; every row is
            # unsharded. Flush asks get_bind directly, as a plain Session
            # does; _identity_lookup and _connection_for_bind go straight to
            # Session's. (Not by binding Session's methods to the instance:
            # that is a reference cycle, which leaves every session to the
            # garbage collector.)
            self.shard_chooser = _no_shard
            self.identity_chooser = _only_unsharded
            self.execute_chooser = _no_shards
            self.connection_callable = None  # type: ignore[assignment]

    @property
    def written_clusters(self) -> set[str | None]:
        """Names of the clusters this session wrote to (``None``: the
        default cluster); their reads go to the primary until the session
        ends.
        """
        return self.routing.written

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
        router = self.router
        shard_id = kw.get("shard_id")
        if shard_id is not None:
            cluster = router.shard(shard_id, context=" (from 'shard_id')")
        elif (bind_key := kw.get("bind_key", _MISSING)) is not _MISSING:
            cluster = router.cluster(bind_key, context=" (from 'bind_arguments')")
        elif mapper is not None:
            if self.shards is not None and router.shard_key(mapper) is not None:
                cluster = router.shards[self._mapper_shard(mapper, kw.get("instance"))]
            else:
                cluster = router.cluster_for_mapper(mapper)
        elif clause is not None:
            shard = _plan.get().shard
            if shard is not None and router.sharded_tables(clause):
                cluster = router.shard(shard, context=" (from 'use_shard')")
            else:
                cluster = router.cluster_for_clause(clause)
        else:
            cluster = router.default
        return self.engine_for(cluster, clause)

    def _mapper_shard(self, mapper: t.Any, instance: t.Any) -> str:
        assert self.shards is not None
        if instance is not None:
            return t.cast(str, self._choose_shard_and_assign(mapper, instance))
        return self.shards.choice.shard_without_instance(mapper)

    def engine_for(
        self, cluster: Cluster, clause: sa.ClauseElement | None
    ) -> sa.Engine:
        """The engine of ``cluster`` for ``clause`` in this session, as
        :func:`~flask_partition.routing.decide.decide` chooses it.

        :raises ReadOnlyError: For a write inside a read-only block.
        """
        intent = Intent.WRITE if _sqla.is_flushing(self) else classify(clause)
        decision = decide(cluster, intent, _plan.get(), self.routing, clause)
        if decision.writes:
            if cluster.is_shard and self.txn.mode == "single":
                check_single(self.txn, self.router.shards, [t.cast(str, cluster.name)])
            self.txn.written.add(cluster.name)
        report(cluster, decision.engine, decision.reason, self.router.sender)
        return decision.engine

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
                if failed is None:
                    raise
                pinned = reroute(self.routing, failed, self.router.by_name)
                if pinned is None:
                    raise
                sender = self.router.sender
                for cluster, decision in pinned:
                    report(cluster, decision.engine, decision.reason, sender)

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
        if not self.router.has_replicas:
            return  # no replica connection can exist
        # The whole connection table: a replica this session chose and then
        # replaced (a token it had not reached) or one bound explicitly
        # (bind_arguments={"bind": ...}) is in no record of the session.
        node = self.router.node
        for level in _sqla.transaction_levels(self):
            connections = _sqla.transaction_connections(level)
            for key, entry in list(connections.items()):
                where = node(key) if isinstance(key, sa.Engine) else None
                if where is None or where[1] is not Role.REPLICA:
                    continue
                connection = entry[0]
                _sqla.forget_connection(level, key, connection)
                try:
                    if invalidate:
                        connection.invalidate()
                    connection.close()
                except sa_exc.DBAPIError:
                    # Its handle_error already marked the replica down; the
                    # pool discards the broken connection.
                    with contextlib.suppress(Exception):
                        connection.invalidate()

    def flush(self, objects: t.Sequence[t.Any] | None = None) -> None:
        """Flush pending changes; inside a read-only block, refuse them.

        The checks run before SQLAlchemy's flush starts (not in a
        ``before_flush`` listener, which runs while the session is
        flushing: a query a custom shard chooser makes would count as a
        write).

        :raises ReadOnlyError: When there is anything to flush inside
            :func:`~flask_partition.use_replica`; nothing is sent.
        :raises ShardKeyError: When a sharded row has no key, its key
            changed, or it belongs to another shard than the pinned one;
            nothing is sent.
        """
        if _sqla.is_clean(self):
            return  # as Session.flush does: the autoflush of every read
        plan = _plan.get()
        if plan.read_only:
            raise ReadOnlyError(
                f"Cannot flush {len(self.new)} new, {len(self.dirty)} changed and"
                f" {len(self.deleted)} deleted objects inside {plan.pinned_by!r}:"
                " it only allows reads. Nothing was sent to the database. Move"
                " the write out of the block or use 'use_primary'."
            )
        if self.shards is not None:
            check_flush(self, self.router, plan.shard)
            mode = (
                self.txn.mode
                if self.get_transaction() is not None
                else plan.commit_mode or self.router.commit_mode
            )
            if mode == "single":
                shards = flush_shards(self, self.router)
                check_single(self.txn, self.router.shards, shards)
        super().flush(objects)

    # -- shards ------------------------------------------------------------

    def _choose_shard_and_assign(
        self, mapper: t.Any, instance: t.Any, **kw: t.Any
    ) -> t.Any:
        # Unsharded models keep the identity token None, as in a plain
        # Session; ShardedSession would give every row a token.
        if mapper is not None and self.router.shard_key(mapper) is None:
            return None
        return super()._choose_shard_and_assign(mapper, instance, **kw)

    def _identity_lookup(self, mapper: t.Any, *args: t.Any, **kw: t.Any) -> t.Any:
        if self.shards is None or self.router.shard_key(mapper) is None:
            return _sqla.plain_identity_lookup(self, mapper, *args, **kw)
        return super()._identity_lookup(mapper, *args, **kw)

    def _connection_for_bind(
        self, engine: t.Any, execution_options: t.Any = None, **kw: t.Any
    ) -> sa.Connection:
        # During a scatter, the threads look up their (already open)
        # connection in the session's transaction one at a time: the
        # transaction's state bookkeeping is not thread-safe.
        lock = None if self.shards is None else self.shards.lock.active
        if lock is None:
            return super()._connection_for_bind(engine, execution_options, **kw)
        with lock:
            return super()._connection_for_bind(engine, execution_options, **kw)

    # -- writes ------------------------------------------------------------


def _no_shard(mapper: t.Any, instance: t.Any, clause: t.Any) -> None:
    return None


def _only_unsharded(mapper: t.Any, primary_key: t.Any, **kw: t.Any) -> list[None]:
    return [None]


def _no_shards(orm_context: t.Any) -> list[str]:
    return []


@sa.event.listens_for(PartitionSession, "before_commit")
def _before_commit(session: PartitionSession) -> None:
    # Also reached by "with session.begin():", which commits the
    # SessionTransaction without calling Session.commit().
    transaction = _sqla.current_transaction(session)
    if transaction is not None and transaction.parent is None:
        session._release_replicas()


sa.event.listen(PartitionSession, "after_transaction_create", on_transaction_create)


@sa.event.listens_for(PartitionSession, "after_commit")
def _after_commit(session: PartitionSession) -> None:
    by_name = session.router.by_name
    session.txn.committed.update(
        name for name in session.txn.written if by_name[name].token_mode is not None
    )
