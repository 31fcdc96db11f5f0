"""Flask-SQLAlchemy's legacy query class: ``Model.query``,
``db.session.query()`` with ``*_or_404`` and ``paginate``.
"""

from __future__ import annotations

import functools
import typing as t

import sqlalchemy.exc as sa_exc
import sqlalchemy.orm as sa_orm
from flask import abort
from sqlalchemy.ext.horizontal_shard import ShardedQuery

from ..config import PARTITION_KEYS as PARTITION_KEYS
from ..config import read_sqlalchemy_config as read_sqlalchemy_config
from ..config import SQLALCHEMY_KEYS as SQLALCHEMY_KEYS
from ..pagination import fetch_page
from ..pagination import Pagination

if t.TYPE_CHECKING:
    pass

_T = t.TypeVar("_T")


class Query(ShardedQuery[_T]):
    """The legacy :class:`~sqlalchemy.orm.Query` of ``Model.query``,
    ``db.session.query()`` and ``lazy="dynamic"`` relationships, with
    Flask-SQLAlchemy's helpers.

    It is a :class:`~sqlalchemy.ext.horizontal_shard.ShardedQuery`, so
    ``set_shard()`` works too. Prefer ``db.session.execute(select(...))`` in
    new code.

    .. versionadded:: 0.1.0
    """

    def get_or_404(self, ident: t.Any, description: str | None = None) -> _T:
        """Like :meth:`~sqlalchemy.orm.Query.get` (which SQLAlchemy warns is
        legacy), but abort with 404 instead of returning ``None``.

        :param ident: The primary key.
        :param description: The 404 error's description.
        """
        value = self.get(ident)
        if value is None:
            abort(404, description=description)
        return value

    def first_or_404(self, description: str | None = None) -> _T:
        """Like :meth:`~sqlalchemy.orm.Query.first`, but abort with 404
        instead of returning ``None``.

        :param description: The 404 error's description.
        """
        value = self.first()
        if value is None:
            abort(404, description=description)
        return value

    def one_or_404(self, description: str | None = None) -> _T:
        """Like :meth:`~sqlalchemy.orm.Query.one`, but abort with 404 when
        there is no row or more than one.

        :param description: The 404 error's description.
        """
        try:
            return self.one()
        except (sa_exc.NoResultFound, sa_exc.MultipleResultsFound):
            abort(404, description=description)

    def paginate(
        self,
        *,
        page: int | None = None,
        per_page: int | None = None,
        max_per_page: int | None = None,
        error_out: bool = True,
        count: bool = True,
    ) -> Pagination:
        """Return one page of this query's results; the arguments are those
        of :meth:`~flask_partition.PartitionDB.paginate`.
        """
        return fetch_page(
            functools.partial(QueryPagination, self),
            page=page,
            per_page=per_page,
            max_per_page=max_per_page,
            error_out=error_out,
            count=count,
        )


class QueryPagination(Pagination):
    """A page of a legacy :class:`Query`, made by :meth:`Query.paginate`.

    :param query: The query to paginate.

    .. versionadded:: 0.1.0
    """

    def __init__(
        self,
        query: sa_orm.Query[t.Any],
        *,
        page: int,
        per_page: int,
        count: bool = True,
        max_per_page: int | None = None,
    ) -> None:
        # The query replaces the base class's session and select: only the
        # two methods below read it.
        self._query = query
        self._load(page=page, per_page=per_page, count=count, max_per_page=max_per_page)

    def _query_items(self) -> list[t.Any]:
        offset = (self.page - 1) * self.per_page
        return self._query.limit(self.per_page).offset(offset).all()

    def _query_count(self) -> int:
        return self._query.order_by(None).count()


class _HasSession(t.Protocol):
    session: sa_orm.scoped_session[t.Any]


class _QueryProperty:
    """``Model.query``: a :class:`Query` for the model in ``db.session``."""

    def __get__(self, obj: object, cls: type[t.Any]) -> Query[t.Any]:
        db = t.cast(_HasSession, cls.__partition_metadata__)
        return t.cast("Query[t.Any]", cls.query_class(cls, session=db.session()))


def install_query(base: type[t.Any], query_class: type[Query[t.Any]]) -> None:
    """Give every model of ``base`` Flask-SQLAlchemy's ``Model.query``.

    :param base: ``db.Model``.
    :param query_class: ``db.Query``.
    """
    base.query_class = query_class
    base.query = _QueryProperty()
