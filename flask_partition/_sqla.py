"""Every use of SQLAlchemy's private API, one small function each.

SQLAlchemy offers no public way to read some parts of a statement (its
``FOR UPDATE`` flag, the raw columns, an INSERT's multi-row values), to see
which shard an ORM statement was pinned to, or to replace the final commit
of a session's transaction. Flask-Partition needs them; this module is the
only place that touches them. Each function reads attributes directly
(never ``getattr`` with a default), so a SQLAlchemy release that renames
one raises :class:`AttributeError` here instead of silently misrouting a
statement; ``tests/test_sqla_internals.py`` has a test for each that says
which release broke what.

Supported: the SQLAlchemy releases ``pyproject.toml`` allows
(``>=2.0.58,<2.2``); CI runs the suite on the lowest and on the newest.
"""

from __future__ import annotations

import operator
import typing as t

import sqlalchemy as sa
import sqlalchemy.orm as sa_orm
import sqlalchemy.sql.elements as sa_elements
import sqlalchemy.sql.visitors as sa_visitors
from sqlalchemy.ext.horizontal_shard import set_shard_id
from sqlalchemy.orm.session import SessionTransactionState
from sqlalchemy.sql.dml import ValuesBase

if t.TYPE_CHECKING:
    from sqlalchemy.engine import Result

#: The private :class:`~sqlalchemy.orm.Session` methods that
#: :class:`~flask_partition.PartitionSession` overrides, with the parameters
#: it relies on. ``tests/test_sqla_internals.py`` checks they still exist.
SESSION_OVERRIDES: t.Final = {
    "_execute_internal": ("statement", "params"),
    "_close_impl": ("invalidate",),
    "_connection_for_bind": ("engine", "execution_options"),
    "_identity_lookup": ("mapper", "primary_key_identity"),
}
#: The private :class:`~sqlalchemy.ext.horizontal_shard.ShardedSession`
#: methods that :class:`~flask_partition.PartitionSession` overrides.
SHARDED_SESSION_OVERRIDES: t.Final = {
    "_choose_shard_and_assign": ("mapper", "instance"),
}
#: The private :class:`~sqlalchemy.orm.SessionTransaction` methods that
#: :class:`~flask_partition.transactions.modes.PartitionTransaction` and
#: :class:`~flask_partition.transactions.modes.TwoPhaseTransaction` override
#: or call.
TRANSACTION_OVERRIDES: t.Final = {
    "_connection_for_bind": ("bind", "execution_options"),
    "_prepare_impl": (),
}
#: Private parameters of public methods that our overrides pass on.
PRIVATE_PARAMETERS: t.Final = {
    (sa_orm.SessionTransaction, "commit"): ("_to_root",),
}
_EXTENSION_POINTS = tuple(
    name
    for name in (
        "_post_select_clause",
        "_pre_columns_clause",
        "_post_criteria_clause",
        "_post_body_clause",
    )
    if hasattr(sa.Select, name)
)

#: Where a declarative base keeps the registry SQLAlchemy made for it,
#: besides the public ``registry``: left out when Flask-SQLAlchemy style
#: bases are rebuilt, so SQLAlchemy makes a new one.
REGISTRY_ATTRIBUTES: t.Final = ("_sa_registry",)

#: SQLAlchemy 2.0 keeps ``ordered_values()`` apart from ``values()``
#: (``_ordered_values``); 2.1 keeps both in ``_values``.
_ORDERED_APART: t.Final = hasattr(ValuesBase, "_ordered_values")

# -- statements -----------------------------------------------------------


# The accessors on the path of every statement are attrgetters: C-level
# calls, a fraction of a Python function's cost, and as loud when an
# attribute is gone.

#: ``select_for_update(select)``: the ``FOR UPDATE`` / ``FOR SHARE``
#: argument of a SELECT, ``None`` without one.
select_for_update: t.Final[t.Callable[[sa.Select[t.Any]], object | None]] = (
    operator.attrgetter("_for_update_arg")
)

#: ``select_raw_columns(select)``: the columns of a SELECT as given, without
#: building ``selected_columns`` (which costs more than a primary-key lookup).
select_raw_columns: t.Final[t.Callable[[sa.Select[t.Any]], t.Sequence[t.Any]]] = (
    operator.attrgetter("_raw_columns")
)


def where_criteria(statement: t.Any) -> tuple[t.Any, ...]:
    """The WHERE terms of a SELECT, UPDATE or DELETE (AND-ed); ``()`` for
    statements that cannot have one (an INSERT).
    """
    if isinstance(statement, (sa.Select, sa.Update, sa.Delete)):
        return statement._where_criteria
    return ()


def dml_set_keys(statement: sa.Update | sa.Insert) -> set[str]:
    """The column keys an INSERT or UPDATE sets with ``.values()`` or
    ``.ordered_values()``.
    """
    keys = {_key_of(column) for column in statement._values or {}}
    if _ORDERED_APART:
        ordered = t.cast(t.Any, statement)._ordered_values
        keys.update(_key_of(column) for column, _ in ordered or ())
    return keys


def insert_values(statement: sa.Insert) -> dict[str, t.Any]:
    """The single-row ``.values(...)`` of an INSERT by column key, with
    bound values unwrapped.
    """
    return {
        _key_of(column): _plain(value)
        for column, value in (statement._values or {}).items()
    }


def insert_multi_values(statement: sa.Insert) -> list[t.Any]:
    """The rows of a multi-row ``.values([...])``, as given (dicts or
    tuples); ``[]`` for other INSERTs.
    """
    # Each .values([...]) call adds a list; SQLAlchemy sends their rows in
    # one VALUES clause.
    return [row for rows in statement._multi_values for row in rows]


def with_multi_values(statement: sa.Insert, rows: t.Sequence[t.Any]) -> sa.Insert:
    """A copy of a multi-row INSERT (RETURNING, prefixes and all) with
    other rows.
    """
    copy = statement._generate()
    copy._multi_values = (tuple(rows),)
    return copy


def bound_value(value: t.Any) -> t.Any:
    """The value of a bound parameter in ``.values()``, other values as is."""
    return _plain(value)


def has_explicit_froms(statement: t.Any) -> bool:
    """Whether a SELECT joins (``join()``) or names FROMs (``select_from()``)
    explicitly.
    """
    if not isinstance(statement, sa.Select):
        return False
    return bool(statement._setup_joins or statement._from_obj)


def distinct_on(select: sa.Select[t.Any]) -> tuple[t.Any, ...]:
    """The expressions of PostgreSQL's ``DISTINCT ON (...)``: from
    ``distinct(*expr)``, or on 2.1 from ``ext(postgresql.distinct_on(...))``.
    """
    found = list(select._distinct_on)
    for extension in syntax_extensions(select):
        for element in sa_visitors.iterate(extension):
            if element.__visit_name__ == "postgresql_distinct_on":
                found.extend(t.cast(t.Any, element)._distinct_on)
    return tuple(found)


def syntax_extensions(select: sa.Select[t.Any]) -> tuple[t.Any, ...]:
    """The clauses ``Select.ext()`` added (SQLAlchemy 2.1); ``()`` on 2.0."""
    return tuple(
        clause
        for clause in (getattr(select, name) for name in _EXTENSION_POINTS)
        if clause is not None
    )


def fetch_clause(select: sa.Select[t.Any]) -> t.Any:
    """The ``FETCH FIRST`` clause element of a SELECT, ``None`` without one."""
    return select._fetch_clause


def is_distinct(select: sa.Select[t.Any]) -> bool:
    """Whether a SELECT has DISTINCT."""
    return bool(select._distinct)


def group_by(select: sa.Select[t.Any]) -> tuple[t.Any, ...]:
    """The GROUP BY terms of a SELECT."""
    return tuple(select._group_by_clauses)


def has_having(select: sa.Select[t.Any]) -> bool:
    """Whether a SELECT has a HAVING clause."""
    return bool(select._having_criteria)


def order_by(select: sa.Select[t.Any]) -> tuple[t.Any, ...]:
    """The ORDER BY terms of a SELECT."""
    return tuple(select._order_by_clauses)


def limit_clause(select: sa.Select[t.Any]) -> t.Any:
    """The LIMIT clause element of a SELECT, ``None`` without one."""
    return select._limit_clause


def offset_clause(select: sa.Select[t.Any]) -> t.Any:
    """The OFFSET clause element of a SELECT, ``None`` without one."""
    return select._offset_clause


def correlates(select: sa.Select[t.Any]) -> bool:
    """Whether a subquery correlates to an enclosing query (the default,
    unless ``correlate(None)`` turned it off).
    """
    return bool(
        select._auto_correlate
        or select._correlate
        or select._correlate_except is not None
    )


def label_reference_target(expression: t.Any) -> tuple[t.Any, str | None]:
    """Unwrap an ORDER BY term that refers to a label.

    :return: The expression, and the label name for ``order_by("name")``
        (``None`` otherwise).
    """
    if isinstance(expression, sa_elements._label_reference):
        expression = expression.element
    if isinstance(expression, sa_elements._textual_label_reference):
        return expression, expression.element
    return expression, None


def strip_label_reference(term: t.Any) -> t.Any:
    """What an ORDER BY term built from a label object wraps:
    ``order_by(label.desc())`` puts the DESC inside the reference.
    """
    if isinstance(term, sa_elements._label_reference):
        return term.element
    return term


def is_annotated(element: t.Any) -> bool:
    """Whether a column element is an ORM-annotated copy (of a mapped
    column).
    """
    return bool(element._annotations)


# -- results --------------------------------------------------------------


def requires_unique(result: Result[t.Any]) -> bool:
    """Whether SQLAlchemy insists on ``.unique()`` for this ORM result (a
    joined eager load of a collection).
    """
    state = result._unique_filter_state
    strategy = None if state is None else state[1]
    return strategy is not None and strategy.__name__ == "require_unique"


def mark_single_entity(result: Result[t.Any]) -> None:
    """Mark a merged result as a one-entity ORM result, so the legacy
    :class:`~sqlalchemy.orm.Query` (``.all()``, ``Model.query``) yields the
    objects rather than one-column rows.
    """
    result._attributes = result._attributes.union({"is_single_entity": True})


# -- the ORM --------------------------------------------------------------


def get_clause(mapper: sa_orm.Mapper[t.Any]) -> tuple[t.Any, dict[t.Any, t.Any]]:
    """The primary-key criterion ``session.get()`` uses for ``mapper``, and
    its bound parameters by column.
    """
    clause, params = mapper._get_clause
    return clause, params


def set_shard_option(orm_context: sa_orm.ORMExecuteState) -> t.Any:
    """The shard of a ``set_shard_id(...)`` option on the statement, or
    ``None``.
    """
    for option in orm_context._non_compile_orm_options:
        if isinstance(option, set_shard_id):
            return option.shard_id
    return None


def identity_token_option(orm_context: sa_orm.ORMExecuteState) -> t.Any:
    """The ``identity_token`` execution option as the ORM parsed it into
    its load or update/delete options, or ``None``.
    """
    if orm_context.is_select:
        options: t.Any = orm_context.load_options
    elif orm_context.is_update or orm_context.is_delete:
        options = orm_context.update_delete_options
    else:
        return None
    return options._identity_token


def autoflush_option(orm_context: sa_orm.ORMExecuteState) -> bool:
    """Whether to flush before this statement, by its own options (a
    SELECT's ``autoflush``, an ORM UPDATE/DELETE's); ``True`` for other
    statements, Core and ``text()`` included, as SQLAlchemy 2.1 does (2.0
    does not autoflush before Core statements; Flask-Partition flushes
    before them on every release, so a statement on a sharded table sees
    the session's pending rows and their shards count as written).
    """
    options = _orm_options(orm_context)
    return True if options is None else bool(options._autoflush)


#: ``is_flushing(session)``: whether the session is inside ``flush()``.
is_flushing: t.Final[t.Callable[[sa_orm.Session], bool]] = operator.attrgetter(
    "_flushing"
)


def autoflush(session: sa_orm.Session) -> None:
    """Autoflush as SQLAlchemy does before a statement."""
    session._autoflush()


def is_clean(session: sa_orm.Session) -> bool:
    """Whether the session has nothing to flush."""
    return session._is_clean()


def shard_of_state(state: t.Any) -> t.Any:
    """The shard of an ORM instance state: its identity key's token, or for
    a pending one the token chosen for it.
    """
    return state.key[2] if state.key else state.identity_token


def set_identity_token(state: t.Any, shard: str) -> None:
    """Give a pending instance the shard it will be flushed to."""
    state.identity_token = shard


#: ``plain_identity_lookup(session, mapper, primary_key_identity, ...)``:
#: :class:`~sqlalchemy.orm.Session`'s own identity-map lookup, past
#: :class:`~sqlalchemy.ext.horizontal_shard.ShardedSession`'s (for unsharded
#: mappers). SQLAlchemy's function itself: no extra call on every ``get()``.
plain_identity_lookup: t.Final[t.Callable[..., t.Any]] = sa_orm.Session._identity_lookup


# -- the session's transaction ---------------------------------------------


def current_transaction(session: sa_orm.Session) -> sa_orm.SessionTransaction | None:
    """The session's innermost transaction (a savepoint's, a flush's or the
    root), ``None`` outside one. ``Session.get_transaction()`` gives the root
    only.
    """
    return session._transaction


def transaction_levels(
    session: sa_orm.Session,
) -> t.Iterator[sa_orm.SessionTransaction]:
    """The session's transaction and its parents, innermost first."""
    transaction = session._transaction
    if transaction is not None:
        yield from transaction._iterate_self_and_parents()


def transaction_connections(
    transaction: sa_orm.SessionTransaction,
) -> dict[t.Any, tuple[t.Any, ...]]:
    """The transaction's connection table: ``(connection, transaction,
    should_commit, autoclose)`` by engine and by connection.
    """
    connections = transaction._connections
    for entry in connections.values():
        if len(entry) != 4:
            raise RuntimeError(
                "SQLAlchemy's SessionTransaction connection entries changed"
                f" shape (expected 4 items, got {len(entry)}); this release of"
                " Flask-Partition does not support it."
            )
    return connections


def forget_connection(
    transaction: sa_orm.SessionTransaction, key: t.Any, connection: t.Any
) -> None:
    """Drop a connection from the transaction's table (both of its keys)."""
    connections = transaction._connections
    connections.pop(key, None)
    connections.pop(connection, None)


def skip_commit(transaction: sa_orm.SessionTransaction) -> None:
    """Mark every connection of the transaction as done, so SQLAlchemy's own
    commit loop, which follows, does not commit them again.
    """
    connections = transaction_connections(transaction)
    for key, entry in list(connections.items()):
        connections[key] = (entry[0], entry[1], False, entry[3])


def is_prepared(transaction: sa_orm.SessionTransaction) -> bool:
    """Whether ``prepare()`` already ran on the transaction."""
    return transaction._state is SessionTransactionState.PREPARED


def prepare(transaction: sa_orm.SessionTransaction) -> None:
    """Run the first half of a commit: ``before_commit``, the flush and, for
    two-phase sessions, PREPARE on every connection.
    """
    transaction._prepare_impl()


def replace_transaction_class(
    transaction: sa_orm.SessionTransaction, cls: type[sa_orm.SessionTransaction]
) -> None:
    """Make a new root transaction an instance of ``cls`` (a subclass).

    Transactions are created inside SQLAlchemy (autobegin, ``begin()``);
    switching the class of the new object is the one way to replace its
    commit without copying SQLAlchemy's code.
    """
    if not issubclass(cls, type(transaction)):
        raise TypeError(
            f"{cls.__name__!r} does not subclass"
            f" {type(transaction).__name__!r}; cannot replace the transaction's"
            " class."
        )
    transaction.__class__ = cls


def _orm_options(orm_context: sa_orm.ORMExecuteState) -> t.Any:
    if orm_context.is_select:
        return orm_context.load_options
    if orm_context.is_orm_statement and (
        orm_context.is_update or orm_context.is_delete
    ):
        return orm_context.update_delete_options
    return None


def _key_of(column: t.Any) -> str:
    return str(column.key) if hasattr(column, "key") else str(column)


def _plain(value: t.Any) -> t.Any:
    return value.effective_value if isinstance(value, sa.BindParameter) else value
