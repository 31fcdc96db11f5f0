"""A page of results, with the attributes Flask-SQLAlchemy's pagination has."""

from __future__ import annotations

import math
import typing as t

import sqlalchemy as sa
import sqlalchemy.orm as sa_orm
from flask import abort
from flask import has_request_context
from flask import request


def _request_int(name: str, default: int) -> int:
    value = request.args.get(name, type=int) if has_request_context() else None
    return default if value is None else value


class Pagination:
    """One page of the rows a ``select`` returns.

    Create it with :meth:`PartitionDB.paginate`. Iterating yields the items.

    :param session: The session that runs the queries.
    :param select: The statement to paginate; it should have an ORDER BY.
    :param page: The 1-based page number.
    :param per_page: Items per page.
    :param count: Run a COUNT query to fill :attr:`total`.

    .. versionadded:: 0.1.0
    """

    def __init__(
        self,
        session: sa_orm.Session,
        select: sa.Select[t.Any],
        *,
        page: int,
        per_page: int,
        count: bool = True,
    ) -> None:
        self._session = session
        self._select = select
        #: The current page number, starting at 1.
        self.page = page
        #: The maximum number of items on a page.
        self.per_page = per_page
        offset = (page - 1) * per_page
        #: The items on this page.
        self.items: list[t.Any] = list(
            session.execute(select.limit(per_page).offset(offset)).unique().scalars()
        )
        #: The number of items over all pages, ``None`` when ``count=False``.
        self.total: int | None = None
        if count:
            counter = sa.select(sa.func.count()).select_from(
                select.order_by(None).subquery()
            )
            self.total = session.execute(counter).scalar_one()

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
        return self._other(self.page - 1, error_out)

    def next(self, *, error_out: bool = False) -> Pagination:
        """Return the next page.

        :param error_out: Abort with 404 if that page is empty.
        """
        return self._other(self.page + 1, error_out)

    def _other(self, page: int, error_out: bool) -> Pagination:
        other = Pagination(
            self._session,
            self._select,
            page=max(page, 1),
            per_page=self.per_page,
            count=self.total is not None,
        )
        if error_out and not other.items and page != 1:
            abort(404)
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
        pages = self.pages
        shown = sorted(
            {p for p in range(1, min(left_edge, pages) + 1)}
            | {
                p
                for p in range(self.page - left_current, self.page + right_current + 1)
                if 1 <= p <= pages
            }
            | {p for p in range(max(pages - right_edge + 1, 1), pages + 1)}
        )
        previous = 0
        for number in shown:
            if number - previous > 1:
                yield None
            yield number
            previous = number

    def __iter__(self) -> t.Iterator[t.Any]:
        return iter(self.items)


def resolve_page_args(
    page: int | None,
    per_page: int | None,
    max_per_page: int | None,
    error_out: bool,
) -> tuple[int, int]:
    """Fill ``page`` and ``per_page`` from the request query string when not
    given, and clamp them (aborting with 404 when ``error_out`` is set).
    """
    if page is None:
        page = _request_int("page", 1)
    if per_page is None:
        per_page = _request_int("per_page", 20)
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
