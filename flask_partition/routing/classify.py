"""Statement intent: whether a statement reads, writes or cannot be known.

Pure: the answer depends on the statement alone, never on the session or
the request. The kind of check a statement needs is decided once per
statement class and cached, so the common case (an ORM or Core SELECT) costs
one dictionary lookup and a look at its FOR UPDATE flag and columns.
"""

from __future__ import annotations

import enum
import typing as t

import sqlalchemy as sa
import sqlalchemy.sql.elements as sa_elements
import sqlalchemy.sql.functions as sa_functions
from sqlalchemy.sql.ddl import ExecutableDDLElement

from .. import _sqla


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

_Check = t.Callable[[t.Any], Intent]


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
    cls = type(clause)
    check = _CHECKS.get(cls)
    if check is None:
        check = _CHECKS[cls] = _check_for(cls)
    return check(clause)


def _check_for(cls: type[t.Any]) -> _Check:
    """The check for statements of class ``cls`` (cached by :func:`classify`)."""
    if issubclass(cls, sa.Select):
        return _select
    if getattr(cls, "is_dml", False) or issubclass(cls, ExecutableDDLElement):
        return _write
    if issubclass(cls, sa_functions.FunctionElement):
        return _function
    if issubclass(cls, sa.CompoundSelect):
        return _read
    return _ambiguous


def _select(clause: sa.Select[t.Any]) -> Intent:
    if _sqla.select_for_update(clause) is not None:
        return Intent.WRITE
    # The raw column list, not 'selected_columns': the latter builds a new
    # collection of every mapped column on each call, which cost more than
    # a SQLite primary-key lookup in bench/overhead.py.
    for column in _sqla.select_raw_columns(clause):
        # Tables, entities and plain columns (the usual) are no function;
        # the answer is cached per class.
        cls = type(column)
        maybe = _MAYBE_FUNCTION.get(cls)
        if maybe is None:
            maybe = _MAYBE_FUNCTION[cls] = issubclass(
                cls, (sa_elements.Label, sa_functions.FunctionElement)
            )
        if maybe and _is_write_function(column):
            return Intent.WRITE
    return Intent.READ


def _function(clause: t.Any) -> Intent:
    return Intent.WRITE if _is_write_function(clause) else Intent.READ


def _write(clause: t.Any) -> Intent:
    return Intent.WRITE


def _read(clause: t.Any) -> Intent:
    return Intent.READ


def _ambiguous(clause: t.Any) -> Intent:
    return Intent.AMBIGUOUS


_CHECKS: dict[type[t.Any], _Check] = {}
_MAYBE_FUNCTION: dict[type[t.Any], bool] = {}


def _is_write_function(column: object) -> bool:
    while isinstance(column, sa_elements.Label):
        column = column.element
    if isinstance(column, sa_functions.next_value):
        return True
    return (
        isinstance(column, sa_functions.FunctionElement)
        and getattr(column, "name", "").lower() in _WRITE_FUNCTIONS
    )
