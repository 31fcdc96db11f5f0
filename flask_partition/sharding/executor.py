"""Per-shard execution: running a statement on the shards
:mod:`~flask_partition.sharding.choose` picked, splitting an INSERT by
shard, and merging what came back.

:class:`ShardExecutor` serves one :class:`~flask_partition.PartitionSession`
with shards configured. The session's ``do_orm_execute`` hook hands it
every ORM-executed statement (:meth:`ShardExecutor.on_execute`); statements
on sharded tables run on their shards (in parallel for reads over several,
merged by :mod:`~flask_partition.sharding.scatter`), others pass through.
The flush checks are in :mod:`~flask_partition.sharding.guards`.
"""

from __future__ import annotations

import contextlib
import functools
import typing as t

import sqlalchemy as sa
import sqlalchemy.orm as sa_orm
from sqlalchemy.ext.horizontal_shard import ShardedSession

from .. import _sqla
from ..errors import AmbiguousShardError
from ..errors import ScatterError
from ..errors import ShardKeyError
from ..routing.classify import classify
from ..routing.classify import Intent
from ..routing.decide import describe
from ..routing.plan import _plan
from .choose import is_identity_get
from .choose import ShardChoice
from .guards import refuse_key_change
from .maps import ShardKey
from .parallel import ConnectionLock
from .scatter import plan_merge

if t.TYPE_CHECKING:
    from sqlalchemy.engine import Result

    from ..replicas import Cluster
    from ..topology import Router

#: Execution option that allows an UPDATE or DELETE on every shard.
ALL_SHARDS: t.Final = "all_shards"


class _Session(t.Protocol):
    """What the executor needs of its :class:`~flask_partition.PartitionSession`,
    beyond what every :class:`~sqlalchemy.ext.horizontal_shard.ShardedSession`
    has.
    """

    router: Router

    def engine_for(
        self, cluster: Cluster, clause: sa.ClauseElement | None
    ) -> sa.Engine: ...


class ShardExecutor:
    """Runs one session's statements on sharded tables on their shards.

    :param session: The session it serves.

    .. versionadded:: 0.1.0
    """

    def __init__(self, session: _Session) -> None:
        self.host = session
        #: The same session, as the ShardedSession it is.
        self.session = t.cast(ShardedSession, session)
        self.router = session.router
        #: The default choosers and the statement's shard key.
        self.choice = ShardChoice(self.router, self.session)
        #: Held while a scatter's threads look up their connections.
        self.lock = ConnectionLock()

    # -- the do_orm_execute hook ---------------------------------------------

    def on_execute(self, orm_context: sa_orm.ORMExecuteState) -> Result[t.Any] | None:
        """``do_orm_execute`` hook: run statements on sharded tables on the
        right shards; leave every other statement alone.
        """
        key = self.choice.statement_key(orm_context)
        if key is None:
            return None
        if orm_context.is_update:
            refuse_key_change(orm_context, key)
        shard = self.choice.explicit_shard(orm_context)
        if shard is not None:
            self.router.shard(shard, context=f" (for {key.model!r})")
            return self.run_on(orm_context, [shard])[0]
        pinned = _plan.get().shard
        if orm_context.is_insert:
            return self._insert(orm_context, key, pinned)
        if pinned is not None:
            self.router.shard(pinned, context=" (from 'use_shard')")
            return self.run_on(orm_context, [pinned])[0]
        get = is_identity_get(orm_context)
        if get:
            shards = self.choice.get_shards(orm_context)
        else:
            shards = list(self.session.execute_chooser(orm_context))
        if not shards:
            raise ScatterError(
                f"No shard was chosen for a statement on {key.model!r}; the"
                " execute chooser returned an empty list."
            )
        for name in shards:
            self.router.shard(name, context=" (from the execute chooser)")
        if len(shards) == 1:
            return self.run_on(orm_context, shards)[0]
        statement = t.cast(sa.ClauseElement, orm_context.statement)
        if (
            orm_context.is_update
            or orm_context.is_delete
            or classify(statement) is not Intent.READ
        ):
            return self._write_all(orm_context, key, shards)
        return self._scatter_read(orm_context, key, shards, get=get)

    def _write_all(
        self, orm_context: sa_orm.ORMExecuteState, key: ShardKey, shards: list[str]
    ) -> Result[t.Any]:
        """An UPDATE or DELETE on several shards, only when asked for."""
        if not orm_context.execution_options.get(ALL_SHARDS):
            statement = t.cast(sa.ClauseElement, orm_context.statement)
            raise ScatterError(
                f"This {describe(statement)} on {key.model!r} would run on"
                f" {len(shards)} shards ({', '.join(map(repr, shards))}):"
                " writes never spread over shards silently. Narrow it with"
                " a condition on the shard key or 'use_shard', or pass"
                f" execution_options({ALL_SHARDS}=True) to run it on those"
                " shards on purpose."
            )
        return _merge_writes(self.run_on(orm_context, shards))

    def _scatter_read(
        self,
        orm_context: sa_orm.ORMExecuteState,
        key: ShardKey,
        shards: list[str],
        *,
        get: bool,
    ) -> Result[t.Any]:
        """A read on several shards, in parallel, merged exactly."""
        statement = t.cast(t.Any, orm_context.statement)
        single_entity = False
        if orm_context.is_orm_statement:
            descriptions = getattr(statement, "column_descriptions", [])
            single_entity = len(descriptions) == 1 and isinstance(
                descriptions[0].get("expr"), type
            )
        dialect = self.router.shards[shards[0]].primary.dialect.name
        plan = plan_merge(
            statement,
            dialect=dialect,
            shard_key=key.column,
            single_entity=single_entity,
        )
        results = self.run_on(orm_context, shards, plan.statement, parallel=True)
        if get:
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
        statement = t.cast(sa.Insert, orm_context.statement)
        if key.column is None:
            if pinned is None:
                raise ScatterError(
                    f"An INSERT into {key.model!r} (a sharded table without a"
                    " shard key) needs a shard: use 'use_shard' or"
                    " bind_arguments={'shard_id': ...}."
                )
            return self.run_on(orm_context, [pinned])[0]
        by_shard = self._rows_by_shard(orm_context, key, pinned)
        if len(by_shard) == 1:
            (shard,) = by_shard
            return self.run_on(orm_context, [shard])[0]
        # One INSERT per shard; each re-enters this hook with its shard.
        multi = bool(_sqla.insert_multi_values(statement))
        results = []
        for shard, shard_rows in by_shard.items():
            if multi:
                # The same statement (RETURNING, prefixes...) with this
                # shard's rows only.
                args: tuple[t.Any, ...] = (
                    _sqla.with_multi_values(statement, shard_rows),
                )
            else:
                args = (statement, shard_rows)
            results.append(
                self.session.execute(
                    *args,
                    execution_options=orm_context.local_execution_options,
                    bind_arguments={**orm_context.bind_arguments, "shard_id": shard},
                )
            )
        return _merge_writes(results)

    def _rows_by_shard(
        self, orm_context: sa_orm.ORMExecuteState, key: ShardKey, pinned: str | None
    ) -> dict[str, list[dict[str, t.Any]]]:
        """An INSERT's rows grouped by the shard of their key.

        :raises ShardKeyError: A row has no key, or (under ``use_shard``) a
            key of another shard.
        """
        assert key.column is not None
        name = key.column.key
        statement = t.cast(sa.Insert, orm_context.statement)
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
        return by_shard

    # -- running on shards ---------------------------------------------------

    def run_on(
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
        if _autoflushes(self.session, orm_context):
            _sqla.autoflush(self.session)
        calls = []
        for name in shards:
            engine = self.host.engine_for(self.router.shards[name], clause)
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
        return self._run_parallel(orm_context, statement, calls)

    def _run_parallel(
        self,
        orm_context: sa_orm.ORMExecuteState,
        statement: t.Any,
        calls: list[tuple[str, dict[str, t.Any]]],
    ) -> list[Result[t.Any]]:
        # Connect every shard in this thread (the session's transaction is
        # not thread-safe); see sharding/parallel.py.
        for _name, bind_arguments in calls:
            self.session.connection(bind_arguments={"bind": bind_arguments["bind"]})

        def invoke(name: str, bind_arguments: dict[str, t.Any]) -> Result[t.Any]:
            return orm_context.invoke_statement(
                statement,
                execution_options={"identity_token": name, "autoflush": False},
                bind_arguments=bind_arguments,
            )

        with self.lock.scatter(), self.session.no_autoflush:
            return self.router.pool.run_all(
                [functools.partial(invoke, name, args) for name, args in calls]
            )

    @contextlib.contextmanager
    def _bulk_dml(
        self, orm_context: sa_orm.ORMExecuteState, shard: str
    ) -> t.Iterator[None]:
        """Let SQLAlchemy's ORM bulk INSERT/UPDATE/DELETE run on one shard.

        They refuse to run while the session has a ``connection_callable``
        (per-row shard choice during flush), and ask for a connection by
        mapper alone. Here the shard is already chosen, so the callable is
        lifted for the call (after flushing pending objects the normal way)
        and the shard is lent to ``get_bind``.
        """
        if orm_context.is_select or not orm_context.is_orm_statement:
            yield
            return
        session = self.session
        session.connection_callable = None  # type: ignore[assignment]
        self.choice.bulk_shard = shard
        try:
            yield
        finally:
            del session.connection_callable
            self.choice.bulk_shard = None


def _insert_rows(statement: sa.Insert, parameters: t.Any) -> list[dict[str, t.Any]]:
    """The rows an INSERT writes, as dicts by column key: its parameter
    sets, ``.values(...)`` and multi-row ``.values([...])``.
    """
    multi = _sqla.insert_multi_values(statement)
    if multi:
        rows: list[dict[str, t.Any]] = []
        for row in multi:
            if isinstance(row, dict):
                rows.append(
                    {
                        str(getattr(c, "key", c)): _sqla.bound_value(v)
                        for c, v in row.items()
                    }
                )
            else:
                pairs = zip(statement.table.c, row, strict=False)
                rows.append({str(c.key): _sqla.bound_value(v) for c, v in pairs})
        return rows
    base = _sqla.insert_values(statement)
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


def _autoflushes(session: sa_orm.Session, orm_context: sa_orm.ORMExecuteState) -> bool:
    """Whether SQLAlchemy would autoflush before this statement."""
    if not session.autoflush or _sqla.is_flushing(session):
        return False
    return _sqla.autoflush_option(orm_context)
