"""Scatter-gather: run one SELECT on several shards and merge the results
exactly as one database holding every row would have answered.

:func:`plan_merge` rewrites the statement for the shards (sort keys added as
extra columns, LIMIT widened to OFFSET + LIMIT, or dropped when groups must
be combined first) and returns a
:class:`~flask_partition.sharding.merge.MergePlan` whose
:meth:`~flask_partition.sharding.merge.MergePlan.merge` combines the shards'
results: groups and aggregates (``count``, ``sum``, ``min``, ``max``),
DISTINCT, ORDER BY, OFFSET and LIMIT.
A shape that cannot be merged exactly raises
:class:`~flask_partition.errors.ScatterError`.
"""

from __future__ import annotations

import typing as t

import sqlalchemy as sa
import sqlalchemy.sql.elements as sa_elements
import sqlalchemy.sql.functions as sa_functions
import sqlalchemy.sql.operators as sa_operators
import sqlalchemy.sql.visitors as sa_visitors

from .. import _sqla
from ..errors import ScatterError
from .merge import MergePlan
from .merge import SortKey

#: Aggregates whose per-shard results combine exactly, and how.
_COMBINE = {"count": "sum", "sum": "sum", "min": "min", "max": "max"}
#: Functions that aggregate rows (or rank them): per-shard values of these
#: cannot be combined unless they appear bare at the top of a column.
_AGGREGATES = frozenset(
    {
        "count", "sum", "min", "max", "avg", "array_agg", "string_agg",
        "group_concat", "json_agg", "jsonb_agg", "json_object_agg",
        "jsonb_object_agg", "bool_and", "bool_or", "every", "bit_and", "bit_or",
        "stddev", "stddev_pop", "stddev_samp", "variance", "var_pop",
        "var_samp", "mode", "percentile_cont", "percentile_disc", "xmlagg",
        "row_number", "rank", "dense_rank", "ntile", "lag", "lead",
        "first_value", "last_value", "nth_value", "cume_dist", "percent_rank",
    }
)  # fmt: skip
_SORT_LABEL = "_partition_sort_{}"


def plan_merge(
    statement: sa.Select[t.Any],
    *,
    dialect: str,
    shard_key: sa.Column[t.Any] | None,
    single_entity: bool = False,
) -> MergePlan:
    """Plan a scattered SELECT: the shard statement and the merge.

    :param statement: The SELECT the caller executed.
    :param dialect: The shards' dialect name; it decides where NULLs sort.
    :param shard_key: The shard key column, if known: groups and DISTINCT
        rows that include it live on one shard and need no combining.
    :param single_entity: The statement selects one ORM entity.
    :raises ScatterError: For a shape that cannot be merged exactly.
    """
    _check_shape(statement)
    distinct = _sqla.is_distinct(statement)
    descriptions = statement.column_descriptions
    width = len(descriptions)
    group_by = list(_sqla.group_by(statement))
    # Grouped by the bare shard key: every group lives on one shard, so the
    # shards' rows are final and only need sorting and slicing.
    local_groups = shard_key is not None and any(
        _is_column(g, shard_key) for g in group_by
    )
    combine = _combine_ops(statement, descriptions, group_by, local_groups)
    sort, extras, order_by, combine = _plan_order(
        statement, dialect, descriptions, group_by, combine
    )
    shard_statement = statement.add_columns(*extras) if extras else statement
    if order_by:
        # Each shard sorts exactly as the merge compares.
        shard_statement = shard_statement.order_by(None).order_by(*order_by)
    _check_froms(statement)
    limit = _int_clause(_sqla.limit_clause(statement), "LIMIT")
    offset = _int_clause(_sqla.offset_clause(statement), "OFFSET") or 0
    if combine is not None or distinct:
        # Groups and duplicates span shards: every shard returns all of its
        # rows, and LIMIT/OFFSET apply after combining.
        if limit is not None or offset:
            shard_statement = shard_statement.limit(None).offset(None)
    elif limit is not None:
        shard_statement = shard_statement.limit(offset + limit).offset(None)
    elif offset:
        shard_statement = shard_statement.offset(None)
    return MergePlan(
        statement=shard_statement,
        width=width,
        sort=tuple(sort),
        combine=combine,
        distinct=distinct and not local_groups,
        offset=offset,
        limit=limit,
        # DISTINCT rows are re-sorted after dropping duplicates: a shard
        # sorts in its own collation, the merge in code-point order.
        presorted=bool(sort) and combine is None and not distinct,
        single_entity=single_entity,
    )


def _check_shape(statement: t.Any) -> None:
    """Refuse statements no merge can make exact."""
    if not isinstance(statement, sa.Select):
        raise ScatterError(
            f"A {type(statement).__name__} over every shard cannot be merged"
            " exactly. Narrow it to one shard with 'use_shard' or a shard key"
            " condition, or run one query per shard."
        )
    if _sqla.distinct_on(statement):
        raise ScatterError(
            "SELECT DISTINCT ON over every shard cannot be merged exactly."
            " Narrow it to one shard or use GROUP BY."
        )
    if _sqla.syntax_extensions(statement):
        raise ScatterError(
            "A SELECT with a syntax extension ('Select.ext()') over every shard"
            " cannot be merged exactly. Narrow it to one shard with 'use_shard'"
            " or a shard key condition."
        )
    if _sqla.fetch_clause(statement) is not None:
        raise ScatterError(
            "FETCH FIRST over every shard is not merged. Use limit() instead,"
            " or narrow the query to one shard."
        )


def _combine_ops(
    statement: sa.Select[t.Any],
    descriptions: list[dict[str, t.Any]],
    group_by: list[t.Any],
    local_groups: bool,
) -> tuple[str | None, ...] | None:
    """How each selected column combines across shards (``None`` for a
    group key), or ``None`` when rows need no combining.
    """
    columns = [_clause(d["expr"]) for d in descriptions]
    ops = [None if local_groups else _combine_op(column) for column in columns]
    if group_by and not local_groups:
        if _sqla.has_having(statement):
            raise ScatterError(
                "GROUP BY ... HAVING over every shard cannot be merged exactly:"
                " each shard filters its partial groups. Group by the shard key,"
                " narrow to one shard, or filter after the query."
            )
        return tuple(ops)
    if not group_by and any(op is not None for op in ops):
        plain = [d["name"] for d, op in zip(descriptions, ops, strict=True) if not op]
        if plain:
            raise ScatterError(
                f"Columns {plain!r} are neither aggregates nor grouped; the query"
                " cannot be merged across shards."
            )
        return tuple(ops)
    return None


def _plan_order(
    statement: sa.Select[t.Any],
    dialect: str,
    descriptions: list[dict[str, t.Any]],
    group_by: list[t.Any],
    combine: tuple[str | None, ...] | None,
) -> tuple[
    list[SortKey],
    list[sa.ColumnElement[t.Any]],
    list[t.Any],
    tuple[str | None, ...] | None,
]:
    """ORDER BY: every term becomes a column of the shard rows.

    :return: The merge's sort keys, the columns added to the shard
        statement, its new ORDER BY terms, and ``combine`` with an entry for
        each added column.
    """
    width = len(descriptions)
    sort: list[SortKey] = []
    extras: list[sa.ColumnElement[t.Any]] = []
    names = {d["name"]: i for i, d in enumerate(descriptions)}
    nulls_high = dialect in ("postgresql", "oracle")
    collate = dialect == "postgresql" and not _sqla.is_distinct(statement)
    order_by: list[t.Any] = []
    for index, term in enumerate(_sqla.order_by(statement)):
        expression, descending, nulls = _unwrap_order(term)
        if nulls is None:
            nulls = nulls_high == descending
        order_by.append(_order_term(expression, descending, nulls, collate))
        expression, position = _selected_position(expression, names)
        if position is None:
            if combine is not None:
                op = _combine_op(expression)
                if op is None and not _is_group_key(expression, group_by):
                    raise ScatterError(
                        f"Cannot sort merged groups by {expression}: it is neither"
                        " a grouped column nor a combinable aggregate."
                    )
                combine = (*combine, op)
            position = width + len(extras)
            extras.append(expression.label(_SORT_LABEL.format(index)))
        sort.append(SortKey(position, descending, nulls))
    return sort, extras, order_by, combine


def _selected_position(
    expression: t.Any, names: dict[str, int]
) -> tuple[t.Any, int | None]:
    """Unwrap an ORDER BY term that refers to a label; return it with the
    index of the selected column it names, if any.
    """
    expression, label = _sqla.label_reference_target(expression)
    if label is not None:
        position = names.get(label)
        if position is None:
            raise ScatterError(
                f"ORDER BY {label!r} names no selected column;"
                " the merge cannot sort by it."
            )
        return expression, position
    if isinstance(expression, sa_elements.Label) and expression.name in names:
        return expression, names[expression.name]
    return expression, None


def _unwrap_order(term: t.Any) -> tuple[t.Any, bool, bool | None]:
    descending = False
    nulls: bool | None = None
    term = _sqla.strip_label_reference(term)
    while isinstance(term, sa_elements.UnaryExpression):
        modifier = term.modifier
        if modifier is sa_operators.desc_op:
            descending = True
        elif modifier is sa_operators.asc_op:
            descending = False
        elif modifier is sa_operators.nulls_first_op:
            nulls = True
        elif modifier is sa_operators.nulls_last_op:
            nulls = False
        else:
            break
        term = _sqla.strip_label_reference(term.element)
    return term, descending, nulls


def _clause(expression: t.Any) -> t.Any:
    """The SQL expression of a column description (``None`` for an entity)."""
    if isinstance(expression, sa.ClauseElement):
        return expression
    element = getattr(expression, "__clause_element__", None)
    if element is None or isinstance(expression, type):
        return None
    return element()


def _order_term(
    expression: t.Any, descending: bool, nulls_first: bool, collate: bool
) -> t.Any:
    """Rebuild an ORDER BY term with the merge's explicit NULL placement and,
    on PostgreSQL, the binary "C" collation for strings, which is the order
    Python compares strings in.
    """
    if (
        collate
        and isinstance(expression, sa.ColumnElement)
        and isinstance(expression.type, sa.String)
        and not isinstance(expression, sa_elements.CollationClause)
    ):
        expression = expression.collate("C")
    term = expression.desc() if descending else expression.asc()
    return term.nulls_first() if nulls_first else term.nulls_last()


def _combine_op(column: t.Any) -> str | None:
    """Return how a selected column combines across shards: ``None`` for a
    plain column, ``"sum"``/``"min"``/``"max"`` for a bare aggregate.

    :raises ScatterError: For aggregates or window functions that cannot be
        combined (``avg``, ``count(DISTINCT ...)``, ``coalesce(sum(x), 0)``).
    """
    while isinstance(column, sa_elements.Label):
        column = column.element
    if isinstance(column, sa_elements.FunctionFilter):
        column = column.func
    if isinstance(column, sa_functions.FunctionElement):
        name = getattr(column, "name", "").lower()
        if name in _COMBINE and not _has_distinct(column):
            if any(_contains_aggregate(arg) for arg in column.clauses):
                raise ScatterError(f"Cannot merge nested aggregates {column}.")
            return _COMBINE[name]
    if _contains_aggregate(column):
        raise ScatterError(
            f"Cannot merge {column} across shards: only bare count(), sum(),"
            " min() and max() combine exactly. Select those (e.g. sum and count"
            " instead of avg) and compute the rest from the merged values, or"
            " narrow the query to one shard."
        )
    return None


def _children(element: t.Any) -> t.Iterator[t.Any]:
    if element is None:
        return
    for child in element.get_children():
        # A subquery computes per row of the outer query: its own
        # aggregates are not the outer query's.
        if isinstance(child, (sa.ScalarSelect, sa.Select, sa.Exists)):
            continue
        yield child


def _contains_aggregate(element: t.Any) -> bool:
    if isinstance(element, (sa_elements.Over, sa_elements.WithinGroup)):
        return True
    if isinstance(element, sa_functions.FunctionElement):
        if getattr(element, "name", "").lower() in _AGGREGATES:
            return True
    return any(_contains_aggregate(child) for child in _children(element))


def _has_distinct(function: t.Any) -> bool:
    return any(
        isinstance(e, sa_elements.UnaryExpression)
        and e.operator is sa_operators.distinct_op
        for e in _walk(function)
    )


def _walk(element: t.Any) -> t.Iterator[t.Any]:
    yield element
    for child in _children(element):
        yield from _walk(child)


def _is_column(expression: t.Any, column: sa.Column[t.Any]) -> bool:
    """True when ``expression`` is ``column`` itself (perhaps labelled or
    ORM-annotated), not merely an expression using it.
    """
    while isinstance(expression, sa_elements.Label):
        expression = expression.element
    return expression is column or (
        isinstance(expression, sa.ColumnClause)
        and expression.name == column.name
        and getattr(expression, "table", None) is column.table
    )


def _check_froms(statement: sa.Select[t.Any]) -> None:
    """Refuse a nested query whose result depends on seeing every row (in
    FROM, a CTE, WHERE or the column list): each shard would compute it over
    its own rows only. Correlated subqueries, which use the outer row's
    table, run per outer row and stay exact.
    """
    outer: set[t.Any] = set()
    sources = list(statement.get_final_froms())
    while sources:
        source = sources.pop()
        if isinstance(source, sa.Join):
            sources += [source.left, source.right]
        else:
            outer.add(source)
    for element in sa_visitors.iterate(statement):
        if element is statement or not isinstance(element, sa.Select):
            continue
        if not (
            _sqla.group_by(element)
            or _sqla.is_distinct(element)
            or _sqla.limit_clause(element) is not None
            or _sqla.offset_clause(element) is not None
            or any(_contains_aggregate(c) for c in element.selected_columns)
        ):
            continue
        inner = {
            getattr(c, "table", None)
            for c in sa_visitors.iterate(element)
            if isinstance(c, sa.ColumnClause)
        }
        # correlate(None) turns correlation off: the subquery then runs on
        # its own even when it names the outer query's table.
        if _sqla.correlates(element) and inner & outer:
            continue
        raise ScatterError(
            "A subquery (in FROM, a CTE, WHERE or the columns) with GROUP BY,"
            " DISTINCT, LIMIT/OFFSET or an aggregate would be computed per"
            " shard, so the merged result would be wrong."
            " Narrow the query to one shard, or run the inner query on its own"
            " (it merges exactly) and use its result."
        )


def _is_group_key(expression: t.Any, group_by: list[t.Any]) -> bool:
    return any(expression.compare(g) for g in group_by)


def _int_clause(clause: t.Any, what: str) -> int | None:
    if clause is None:
        return None
    value = getattr(clause, "effective_value", getattr(clause, "value", None))
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ScatterError(f"{what} {clause} over every shard must be a plain integer.")
