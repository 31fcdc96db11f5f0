"""Per-shard execution: which shards a statement runs on, running it there,
and the guards that keep rows where key-based reads find them.

:class:`ShardExecutor` serves one :class:`~flask_partition.PartitionSession`
with shards configured. The session's ``do_orm_execute`` hook hands it
every ORM-executed statement (:meth:`ShardExecutor.on_execute`); statements
on sharded tables run on their shards (in parallel for reads over several,
merged by :mod:`~flask_partition.sharding.scatter`), others pass through.
Its flush checks run before any SQL of a flush is sent.
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
from ..errors import CrossClusterError
from ..errors import ScatterError
from ..errors import ShardKeyError
from ..routing.classify import classify
from ..routing.classify import Intent
from ..routing.decide import describe
from ..routing.plan import _plan
from .maps import is_sharded
from .maps import key_values
from .maps import shard_key_of_table
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
        #: The shard an ORM bulk statement runs on, lent to ``get_bind``.
        self.bulk_shard: str | None = None
        #: Held while a scatter's threads look up their connections.
        self.lock = ConnectionLock()

    # -- the shard choosers (defaults; PartitionDB can replace them) --------

    def choose_shard(self, mapper: t.Any, instance: t.Any, clause: t.Any) -> str:
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

    def identity_shards(
        self, mapper: t.Any, primary_key: t.Any, **kw: t.Any
    ) -> list[t.Any]:
        """Where ``session.get()`` looks: the pinned shard, the shard of the
        key when it is part of the primary key, else every shard.
        """
        key = self.router.shard_key(mapper)
        if key is None:
            return [None]
        parent = kw.get("lazy_loaded_from")
        parent_shard = None if parent is None else _sqla.shard_of_state(parent)
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

    def execute_shards(self, orm_context: sa_orm.ORMExecuteState) -> list[str]:
        """The shards a statement runs on when none was given: those its
        shard key conditions allow, else all of them.
        """
        key = self.statement_key(orm_context)
        if key is not None and key.column is not None:
            parameters = orm_context.parameters
            values = key_values(
                _sqla.where_criteria(orm_context.statement),
                key.column,
                parameters if isinstance(parameters, dict) else None,
            )
            if values == []:
                # 'key IN ()' matches nothing: any one shard answers that.
                return list(self.router.shards)[:1]
            if values is not None:
                context = f" ({key.model}.{key.column.name})"
                shards = {self.router.shard_for_key(v, context=context) for v in values}
                return [name for name in self.router.shards if name in shards]
        return list(self.router.shards)

    def shard_without_instance(self, mapper: t.Any) -> str:
        """The shard of a connection a sharded mapper asks for without a
        statement or an instance: the bulk statement's or the pinned one.

        :raises ScatterError: When neither names a shard.
        """
        shard = self.bulk_shard or _plan.get().shard
        if shard is None:
            key = t.cast(ShardKey, self.router.shard_key(mapper))
            raise ScatterError(
                f"A connection for sharded model {key.model!r} needs a shard."
                " Use 'use_shard' or bind_arguments={'shard_id': ...}."
            )
        self.router.shard(shard, context=" (from 'use_shard')")
        return shard

    # -- which shards a statement runs on ------------------------------------

    def statement_key(self, orm_context: sa_orm.ORMExecuteState) -> ShardKey | None:
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

    def explicit_shard(self, orm_context: sa_orm.ORMExecuteState) -> t.Any:
        """The shard named by SQLAlchemy's own controls, as
        ``horizontal_shard`` reads them, or ``None``.
        """
        shard = _sqla.set_shard_option(orm_context)
        if shard is not None:
            return shard
        token = _sqla.identity_token_option(orm_context)
        if token is not None:
            return token
        if "_sa_shard_id" in orm_context.execution_options:
            return orm_context.execution_options["_sa_shard_id"]
        if "shard_id" in orm_context.bind_arguments:
            return orm_context.bind_arguments["shard_id"]
        # Relationship loads stay on the parent's shard: a lazy load knows its
        # parent; a selectin/subquery load runs inside the parent's query,
        # whose context carries the shard as its identity token.
        parent = orm_context.lazy_loaded_from if orm_context.is_select else None
        if parent is not None:
            return _sqla.shard_of_state(parent)
        top = orm_context.execution_options.get("sa_top_level_orm_context")
        return getattr(top, "identity_token", None)

    def _get_shards(self, orm_context: sa_orm.ORMExecuteState) -> list[t.Any]:
        """The shards the SELECT behind ``session.get()`` runs on: the
        identity chooser's answer for its primary key.
        """
        mapper = t.cast("sa_orm.Mapper[t.Any]", orm_context.bind_mapper)
        params = t.cast("dict[str, t.Any]", orm_context.parameters or {})
        get_params = _sqla.get_clause(mapper)[1]
        primary_key = tuple(params.get(get_params[c].key) for c in mapper.primary_key)
        return list(
            self.session.identity_chooser(
                mapper,
                primary_key,
                lazy_loaded_from=None,
                execution_options=orm_context.execution_options,
                bind_arguments=orm_context.bind_arguments,
            )
        )

    # -- the do_orm_execute hook ---------------------------------------------

    def on_execute(self, orm_context: sa_orm.ORMExecuteState) -> Result[t.Any] | None:
        """``do_orm_execute`` hook: run statements on sharded tables on the
        right shards; leave every other statement alone.
        """
        key = self.statement_key(orm_context)
        if key is None:
            return None
        if orm_context.is_update:
            _refuse_key_change(orm_context, key)
        shard = self.explicit_shard(orm_context)
        if shard is not None:
            self.router.shard(shard, context=f" (for {key.model!r})")
            return self.run_on(orm_context, [shard])[0]
        pinned = _plan.get().shard
        if orm_context.is_insert:
            return self._insert(orm_context, key, pinned)
        if pinned is not None:
            self.router.shard(pinned, context=" (from 'use_shard')")
            return self.run_on(orm_context, [pinned])[0]
        get = _is_identity_get(orm_context)
        if get:
            shards = self._get_shards(orm_context)
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
        self.bulk_shard = shard
        try:
            yield
        finally:
            del session.connection_callable
            self.bulk_shard = None

    # -- flush checks --------------------------------------------------------

    def flush_shards(self) -> set[str]:
        """The shards the pending flush writes to (after :meth:`check_flush`
        gave new rows their shard).
        """
        shards: set[str] = set()
        for instance in [*self.session.new, *self.session.dirty, *self.session.deleted]:
            state = sa.inspect(instance)
            if self.router.shard_key(state.mapper) is None:
                continue
            shard = _sqla.shard_of_state(state)
            if shard is not None:
                shards.add(shard)
        return shards

    def check_flush(self, pinned: str | None) -> None:
        """Give every new sharded row its shard, and refuse rows that would
        be stored where key-based reads miss them. Runs before any SQL.

        :raises ShardKeyError: A row without a key, a changed key, a row of
            another shard than the pinned one, or related rows on two shards.
        """
        session = self.session
        for instance in session.new:
            state = sa.inspect(instance)
            if self.router.shard_key(state.mapper) is None:
                continue
            # Chosen again on every flush: the key may have changed since a
            # flush that failed.
            shard = session.shard_chooser(state.mapper, instance, None)
            self.router.shard(shard, context=" (from the shard chooser)")
            if pinned is not None and shard != pinned:
                raise ShardKeyError(
                    f"A new {state.mapper.class_.__name__} belongs on shard"
                    f" {shard!r} by its key, but the block is pinned to shard"
                    f" {pinned!r} with 'use_shard'. Nothing was written."
                )
            _sqla.set_identity_token(state, shard)
        for instance in [*session.new, *session.dirty]:
            self._check_related(sa.inspect(instance))
        for instance in [*session.dirty, *session.deleted]:
            self._check_changed(instance, pinned)

    def _check_changed(self, instance: t.Any, pinned: str | None) -> None:
        state = sa.inspect(instance)
        key = self.router.shard_key(state.mapper)
        if key is None or state.key is None:
            return
        if key.attribute is not None and instance not in self.session.deleted:
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

    def _check_related(self, state: t.Any) -> None:
        """Refuse relating a sharded row to a sharded row of another shard:
        the rows could never be joined or loaded together.
        """
        shard = _sqla.shard_of_state(state)
        if shard is None or self.router.shard_key(state.mapper) is None:
            return
        for rel in state.mapper.relationships:
            value = state.dict.get(rel.key)
            if value is None or self.router.shard_key(rel.mapper) is None:
                continue
            for other in value if rel.uselist else [value]:
                other_shard = _sqla.shard_of_state(sa.inspect(other))
                if other_shard is not None and other_shard != shard:
                    raise ShardKeyError(
                        f"{state.mapper.class_.__name__}.{rel.key} relates a row"
                        f" on shard {shard!r} to a {rel.mapper.class_.__name__}"
                        f" on shard {other_shard!r}. Related sharded rows must"
                        " share a shard (give them the same shard key)."
                        " Nothing was written."
                    )


def _refuse_key_change(orm_context: sa_orm.ORMExecuteState, key: ShardKey) -> None:
    """An UPDATE may not set the shard key: rows would stay on the shard of
    their old key. Covers ``values()``, ``ordered_values()`` and the
    parameters given to ``execute()``.
    """
    if key.column is None:
        return
    statement = t.cast(sa.Update, orm_context.statement)
    names = _sqla.dml_set_keys(statement)
    params = orm_context.parameters
    rows = params if isinstance(params, list) else [params or {}]
    for row in t.cast("list[dict[str, t.Any]]", rows):
        names.update(row)
    if key.column.key in names or key.attribute in names:
        raise ShardKeyError(
            f"This UPDATE sets {key.model}.{key.column.key}, the shard key:"
            " the rows would stay on the shard of their old key. Insert new"
            " rows and delete the old ones instead. Nothing was written."
        )


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
    if _sqla.has_explicit_froms(statement):
        return True
    froms = getattr(statement, "get_final_froms", None)
    return froms is not None and len(froms()) > 1


def _autoflushes(session: sa_orm.Session, orm_context: sa_orm.ORMExecuteState) -> bool:
    """Whether SQLAlchemy would autoflush before this statement."""
    if not session.autoflush or _sqla.is_flushing(session):
        return False
    return _sqla.autoflush_option(orm_context)


def _is_identity_get(orm_context: sa_orm.ORMExecuteState) -> bool:
    """True for the SELECT behind ``session.get()``: its only criterion is
    the mapper's primary key clause.
    """
    mapper = orm_context.bind_mapper
    criteria = _sqla.where_criteria(orm_context.statement)
    if mapper is None or len(criteria) != 1:
        return False
    get_clause = _sqla.get_clause(mapper)[0]
    # SQLAlchemy 2.1 uses the clause itself; 2.0 an annotated copy of it.
    return criteria[0] is get_clause or bool(criteria[0].compare(get_clause))
