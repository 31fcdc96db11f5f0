"""The routing plan of the current context and the classification of
statements into reads, writes and ambiguous SQL.

The plan lives in a :class:`~contextvars.ContextVar`, so it follows the code
into ``async def`` views and never leaks between threads or requests.
"""

from __future__ import annotations

import contextvars
import dataclasses
import enum
import typing as t

import sqlalchemy as sa
import sqlalchemy.sql.elements as sa_elements
import sqlalchemy.sql.functions as sa_functions
from sqlalchemy.sql.ddl import ExecutableDDLElement


class Role(enum.Enum):
    """Which engine of a cluster a statement goes to.

    .. versionadded:: 0.1.0
    """

    PRIMARY = "primary"
    REPLICA = "replica"


@dataclasses.dataclass(frozen=True)
class Plan:
    """What the current context asked for with the pinning helpers.

    :param role: :attr:`Role.PRIMARY` under :func:`~flask_partition.use_primary`,
        :attr:`Role.REPLICA` under :func:`~flask_partition.use_replica`,
        ``None`` to decide per statement.
    :param read_only: Writes raise :class:`~flask_partition.ReadOnlyError`.
    :param pinned_by: The helper that set the plan, named in errors.
    :param shard: The shard sharded models use, set by
        :func:`~flask_partition.use_shard` or the request's shard resolver.
    :param positions: The positions of the client's consistency token by
        cluster: replicas that have not replayed them get no reads.
    :param commit_mode: The commit mode set by
        :func:`~flask_partition.commit_mode`, ``None`` for the configured one.

    .. versionadded:: 0.1.0
    """

    role: Role | None = None
    read_only: bool = False
    pinned_by: str | None = None
    shard: str | None = None
    positions: t.Mapping[str | None, float] | None = None
    commit_mode: str | None = None


# Plan is a frozen dataclass, so sharing one default instance is safe.
_plan: contextvars.ContextVar[Plan] = contextvars.ContextVar(
    "flask_partition_plan",
    default=Plan(),  # noqa: B039
)


#: Routing decisions of the current request by (cluster, node), collected
#: for the debug header when ``PARTITION_DEBUG_HEADER`` is on.
_routes: contextvars.ContextVar[dict[tuple[str, str], int] | None] = (
    contextvars.ContextVar("flask_partition_routes", default=None)
)


def current_plan() -> Plan:
    """Return the plan in force in the current context.

    .. versionadded:: 0.1.0
    """
    return _plan.get()


class Intent(enum.Enum):
    """What a statement may do, as far as routing is concerned."""

    #: A plain SELECT: a replica may answer it.
    READ = "read"
    #: Certainly writes or locks: the primary, refused when read-only.
    WRITE = "write"
    #: Raw SQL or a bare connection: the primary, or the replica the user
    #: accepted with ``use_replica`` (the database refuses writes there).
    AMBIGUOUS = "ambiguous"


_WRITE_FUNCTIONS = frozenset({"nextval", "setval"})


def classify(clause: sa.ClauseElement | None) -> Intent:
    """Tell whether ``clause`` reads, writes or cannot be known.

    The checks are shallow on purpose: this runs for every statement, and a
    full traversal would cost more than the query on a fast database.

    :param clause: The statement handed to :meth:`Session.get_bind`, ``None``
        when the session asks for a connection without one (a flush,
        :meth:`Session.connection`).
    """
    if clause is None:
        return Intent.AMBIGUOUS
    if isinstance(clause, sa.Select):
        if clause._for_update_arg is not None:
            return Intent.WRITE
        # The raw column list, not 'selected_columns': the latter builds a
        # new collection of every mapped column on each call, which cost more
        # than a SQLite primary-key lookup in bench/overhead.py.
        for column in clause._raw_columns:
            if _is_write_function(column):
                return Intent.WRITE
        return Intent.READ
    if getattr(clause, "is_dml", False) or isinstance(clause, ExecutableDDLElement):
        return Intent.WRITE
    if isinstance(clause, sa_functions.FunctionElement):
        return Intent.WRITE if _is_write_function(clause) else Intent.READ
    if isinstance(clause, sa.CompoundSelect):
        return Intent.READ
    return Intent.AMBIGUOUS


def _is_write_function(column: object) -> bool:
    while isinstance(column, sa_elements.Label):
        column = column.element
    if isinstance(column, sa_functions.next_value):
        return True
    return (
        isinstance(column, sa_functions.FunctionElement)
        and getattr(column, "name", "").lower() in _WRITE_FUNCTIONS
    )
