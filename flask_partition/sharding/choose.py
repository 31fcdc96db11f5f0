"""Which shards a row or a statement belongs to.

:class:`ShardChoice` holds the default choosers of a session (a new row's
shard, where ``session.get()`` looks, where a statement runs), which
:class:`~flask_partition.PartitionDB` lets users replace with SQLAlchemy's
``shard_chooser`` / ``identity_chooser`` / ``execute_chooser``, and reads a
statement's shard key and explicitly named shard.
"""

from __future__ import annotations

import typing as t

import sqlalchemy as sa
import sqlalchemy.orm as sa_orm
from sqlalchemy.ext.horizontal_shard import ShardedSession

from .. import _sqla
from ..errors import CrossClusterError
from ..errors import ScatterError
from ..errors import ShardKeyError
from ..routing.plan import _plan
from .maps import is_sharded
from .maps import key_values
from .maps import shard_key_of_table
from .maps import ShardKey

if t.TYPE_CHECKING:
    from ..topology import Router


class ShardChoice:
    """The shard choices of one session.

    :param router: The application's router.
    :param session: The session, whose ``identity_chooser`` answers for
        ``session.get()``.

    .. versionadded:: 0.1.0
    """

    def __init__(self, router: Router, session: ShardedSession) -> None:
        self.router = router
        self.session = session
        #: The shard an ORM bulk statement runs on, lent to ``get_bind``.
        self.bulk_shard: str | None = None

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

    def get_shards(self, orm_context: sa_orm.ORMExecuteState) -> list[t.Any]:
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


def is_identity_get(orm_context: sa_orm.ORMExecuteState) -> bool:
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
