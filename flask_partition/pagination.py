"""A page of results, with the attributes Flask-SQLAlchemy's pagination has."""

from __future__ import annotations

import copy
import math
import typing as t

import sqlalchemy as sa
import sqlalchemy.orm as sa_orm
from flask import abort
from flask import has_request_context
from flask import request


def _request_int(name: str, default: int, error_out: bool) -> int:
    """Read ``?page=`` or ``?per_page=``; a value that is not an integer
    aborts with 404 when ``error_out`` is set, else gives the default.
    """
    value = request.args.get(name) if has_request_context() else None
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        if error_out:
            abort(404)
        return default


class Pagination:
    """One page of the rows a ``select`` returns.

    Create it with :meth:`PartitionDB.paginate`. Iterating yields the items.

    :param session: The session that runs the queries.
    :param select: The statement to paginate; it should have an ORDER BY.
    :param page: The 1-based page number.
    :param per_page: Items per page.
    :param count: Run a COUNT query to fill :attr:`total`.
    :param max_per_page: The bound ``per_page`` was clamped to, kept for
        :attr:`max_per_page`.

    .. versionadded:: 0.1.0
    """

    #: The current page number, starting at 1.
    page: int
    #: The maximum number of items on a page.
    per_page: int
    #: The upper bound ``per_page`` was clamped to, if any.
    max_per_page: int | None
    #: The items on this page.
    items: list[t.Any]
    #: The number of items over all pages, ``None`` when ``count=False``.
    total: int | None

    def __init__(
        self,
        session: sa_orm.Session,
        select: sa.Select[t.Any],
        *,
        page: int,
        per_page: int,
        count: bool = True,
        max_per_page: int | None = None,
    ) -> None:
        self._session = session
        self._select = select
        self._load(page=page, per_page=per_page, count=count, max_per_page=max_per_page)

    def _load(
        self, *, page: int, per_page: int, count: bool, max_per_page: int | None
    ) -> None:
        """Set the page and run its queries. A subclass's constructor stores
        what it paginates, then calls this instead of the base constructor.
        """
        self.page = page
        self.per_page = per_page
        self.max_per_page = max_per_page
        self.items = self._query_items()
        self.total = self._query_count() if count else None

    def _query_items(self) -> list[t.Any]:
        """Run the query for the items of :attr:`page`."""
        offset = (self.page - 1) * self.per_page
        statement = self._select.limit(self.per_page).offset(offset)
        return list(self._session.execute(statement).unique().scalars())

    def _query_count(self) -> int:
        """Run the query for :attr:`total`."""
        counter = sa.select(sa.func.count()).select_from(
            self._select.order_by(None).subquery()
        )
        return self._session.execute(counter).scalar_one()

    def _at_page(self, page: int, per_page: int) -> Pagination:
        """Return the same query at another page, without counting."""
        # A copy keeps what a subclass paginates without knowing it.
        other = copy.copy(self)
        other._load(
            page=page, per_page=per_page, count=False, max_per_page=self.max_per_page
        )
        return other

    @property
    def first(self) -> int:
        """The 1-based position of the first item on this page, 0 if empty."""
        if not self.items:
            return 0
        return (self.page - 1) * self.per_page + 1

    @property
    def last(self) -> int:
        """The 1-based position of the last item on this page, 0 if empty."""
        if not self.items:
            return 0
        return self.first + len(self.items) - 1

    @property
    def pages(self) -> int:
        """The number of pages; 0 when there are no items or no count."""
        if not self.total or not self.per_page:
            return 0
        return math.ceil(self.total / self.per_page)

    @property
    def has_prev(self) -> bool:
        """Whether there is a page before this one."""
        return self.page > 1

    @property
    def prev_num(self) -> int | None:
        """The previous page number, or ``None``."""
        return self.page - 1 if self.has_prev else None

    @property
    def has_next(self) -> bool:
        """Whether there is a page after this one."""
        if self.total is None:
            return len(self.items) == self.per_page
        return self.page * self.per_page < self.total

    @property
    def next_num(self) -> int | None:
        """The next page number, or ``None``."""
        return self.page + 1 if self.has_next else None

    def prev(self, *, error_out: bool = False) -> Pagination:
        """Return the previous page.

        :param error_out: Abort with 404 if that page is empty.
        """
        return self._other(self.page - 1, self.per_page, error_out)

    def next(self, *, error_out: bool = False) -> Pagination:
        """Return the next page.

        :param error_out: Abort with 404 if that page is empty.
        """
        per_page = self.per_page
        if self.max_per_page is not None:
            # As in Flask-SQLAlchemy, the next page (not the previous one)
            # clamps again: a per_page reset to 20 may exceed the bound.
            per_page = min(per_page, self.max_per_page)
        return self._other(self.page + 1, per_page, error_out)

    def _other(self, page: int, per_page: int, error_out: bool) -> Pagination:
        if page < 1:
            if error_out:
                abort(404)
            page = 1
        other = self._at_page(page, per_page)
        if error_out and not other.items and page != 1:
            abort(404)
        # The total does not depend on the page: reuse it, as
        # Flask-SQLAlchemy does, instead of counting again.
        other.total = self.total
        return other

    def iter_pages(
        self,
        *,
        left_edge: int = 2,
        left_current: int = 2,
        right_current: int = 4,
        right_edge: int = 2,
    ) -> t.Iterator[int | None]:
        """Yield page numbers for a pagination widget, ``None`` for a gap.

        With the defaults and 20 pages on page 10:
        ``1, 2, None, 8, 9, 10, 11, 12, 13, 14, None, 19, 20``.

        :param left_edge: Pages to show from the first.
        :param left_current: Pages to show left of the current one.
        :param right_current: Pages to show right of the current one.
        :param right_edge: Pages to show up to the last.
        """
        # Three runs of page numbers: the left edge, the pages around the
        # current one and the right edge. Each run starts where the previous
        # one ended at the earliest, and a gap between runs yields None.
        end = self.pages + 1
        if end == 1:
            return
        left_end = min(1 + left_edge, end)
        yield from range(1, left_end)
        if left_end == end:
            return
        middle_start = max(left_end, self.page - left_current)
        middle_end = min(self.page + right_current + 1, end)
        if middle_start > left_end:
            yield None
        yield from range(middle_start, middle_end)
        if middle_end == end:
            return
        right_start = max(middle_end, end - right_edge)
        if right_start > middle_end:
            yield None
        yield from range(right_start, end)

    def __iter__(self) -> t.Iterator[t.Any]:
        return iter(self.items)


_P_co = t.TypeVar("_P_co", bound=Pagination, covariant=True)


class PageFactory(t.Protocol[_P_co]):
    """Make the pagination of one page: the constructor of a
    :class:`Pagination` class with what it paginates already bound, as
    ``functools.partial(Pagination, session, select)``.
    """

    def __call__(
        self, *, page: int, per_page: int, count: bool, max_per_page: int | None
    ) -> _P_co: ...


def fetch_page(
    make_page: PageFactory[_P_co],
    *,
    page: int | None,
    per_page: int | None,
    max_per_page: int | None,
    error_out: bool,
    count: bool,
) -> _P_co:
    """Return the page the arguments name, as Flask-SQLAlchemy's
    ``paginate``: resolve them with :func:`resolve_page_args`, make the page
    with ``make_page`` and abort with 404 when it is empty and not the first
    while ``error_out`` is set.

    :param make_page: Makes the page once its number and size are known.
    :param page: The 1-based page number, ``None`` for ``?page=`` or 1.
    :param per_page: Items per page, ``None`` for ``?per_page=`` or 20.
    :param max_per_page: Upper bound for ``per_page``.
    :param error_out: Abort with 404 for a bad page number or an empty page
        after the first; otherwise correct the values.
    :param count: Run a COUNT query to fill ``total``.
    """
    page, per_page = resolve_page_args(page, per_page, max_per_page, error_out)
    pagination = make_page(
        page=page, per_page=per_page, count=count, max_per_page=max_per_page
    )
    if error_out and page > 1 and not pagination.items:
        abort(404)
    return pagination


def resolve_page_args(
    page: int | None,
    per_page: int | None,
    max_per_page: int | None,
    error_out: bool,
) -> tuple[int, int]:
    """Fill ``page`` and ``per_page`` from the request query string when not
    given, and clamp them (aborting with 404 when ``error_out`` is set), as
    Flask-SQLAlchemy does.
    """
    if page is None:
        page = _request_int("page", 1, error_out)
    if per_page is None:
        per_page = _request_int("per_page", 20, error_out)
    if max_per_page is not None:
        per_page = min(per_page, max_per_page)
    if page < 1:
        if error_out:
            abort(404)
        page = 1
    if per_page < 1:
        if error_out:
            abort(404)
        per_page = 20
    return page, per_page
