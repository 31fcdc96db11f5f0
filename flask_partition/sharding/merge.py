"""The merge of a scattered SELECT: the shards' rows combined, sorted and
sliced in memory as :func:`~flask_partition.sharding.scatter.plan_merge`
planned.
"""

from __future__ import annotations

import dataclasses
import functools
import heapq
import itertools
import typing as t

from sqlalchemy.engine import Result

from .. import _sqla


@dataclasses.dataclass(frozen=True)
class SortKey:
    """One ORDER BY term of a merge: a column of the shard rows.

    :param index: The column's position in a shard row.
    :param descending: ``DESC``.
    :param nulls_first: Where NULL sorts, as the database would put it.
    """

    index: int
    descending: bool
    nulls_first: bool


@dataclasses.dataclass(frozen=True)
class MergePlan:
    """How to run a statement on each shard and merge what comes back.

    :param statement: The statement each shard runs.
    :param width: How many columns the caller asked for; columns after it
        are sort keys added for the merge and are dropped.
    :param sort: The ORDER BY of the merged rows.
    :param combine: Per column, how to combine rows of one group across
        shards (``"sum"``, ``"min"``, ``"max"``, ``None`` for a group key);
        ``None`` when rows are not combined.
    :param distinct: Drop duplicate rows.
    :param offset: Rows to skip after merging.
    :param limit: Rows to keep after that, ``None`` for all.
    :param presorted: Each shard returns rows in merge order, so the merge
        is a k-way merge rather than a sort.
    :param single_entity: The caller asked for one ORM entity (legacy
        :class:`~sqlalchemy.orm.Query` returns objects, not rows).
    """

    statement: t.Any
    width: int
    sort: tuple[SortKey, ...] = ()
    combine: tuple[str | None, ...] | None = None
    distinct: bool = False
    offset: int = 0
    limit: int | None = None
    presorted: bool = False
    single_entity: bool = False

    def merge(self, results: t.Sequence[Result[t.Any]]) -> Result[t.Any]:
        """Combine the shards' results into the one result the caller gets.

        :param results: One result per shard, in shard order.
        """
        frozen = [_freeze(result) for result in results]
        shard_rows = [[tuple(row) for row in f().all()] for f in frozen]
        rows: t.Iterable[tuple[t.Any, ...]]
        if self.combine is not None:
            rows = self._combine(itertools.chain.from_iterable(shard_rows))
        elif self.sort and self.presorted:
            rows = heapq.merge(*shard_rows, key=self._sort_key)
        else:
            rows = itertools.chain.from_iterable(shard_rows)
        if self.distinct:
            rows = _unique(rows)
        if self.sort and not self.presorted:
            rows = sorted(rows, key=self._sort_key)
        stop = None if self.limit is None else self.offset + self.limit
        kept = [row[: self.width] for row in itertools.islice(rows, self.offset, stop)]
        template = frozen[0]().columns(*range(self.width)).freeze()
        merged: Result[t.Any] = template.with_new_rows(kept)()
        if self.single_entity:
            _sqla.mark_single_entity(merged)
        return merged

    @functools.cached_property
    def _sort_key(self) -> t.Callable[[tuple[t.Any, ...]], _Ordered]:
        sort = self.sort
        return lambda row: _Ordered(row, sort)

    def _combine(self, rows: t.Iterable[tuple[t.Any, ...]]) -> list[tuple[t.Any, ...]]:
        combine = t.cast("tuple[str | None, ...]", self.combine)
        keys = [i for i, op in enumerate(combine) if op is None]
        groups: dict[tuple[t.Any, ...], list[t.Any]] = {}
        for row in rows:
            group = tuple(row[i] for i in keys)
            seen = groups.get(group)
            if seen is None:
                groups[group] = list(row)
                continue
            for i, op in enumerate(combine):
                if op is not None:
                    seen[i] = _COMBINERS[op](seen[i], row[i])
        return [tuple(values) for values in groups.values()]


def _freeze(result: Result[t.Any]) -> t.Any:
    """Read a shard's result into memory. A joined eager load of a
    collection repeats its parent per child row; SQLAlchemy insists on
    :meth:`~sqlalchemy.engine.Result.unique` for it, and so does the merge.
    """
    if _sqla.requires_unique(result):
        result = result.unique()
    return result.freeze()


def _sum(a: t.Any, b: t.Any) -> t.Any:
    return b if a is None else a if b is None else a + b


def _min(a: t.Any, b: t.Any) -> t.Any:
    return b if a is None else a if b is None else min(a, b)


def _max(a: t.Any, b: t.Any) -> t.Any:
    return b if a is None else a if b is None else max(a, b)


_COMBINERS: dict[str, t.Callable[[t.Any, t.Any], t.Any]] = {
    "sum": _sum,
    "min": _min,
    "max": _max,
}


def _unique(rows: t.Iterable[tuple[t.Any, ...]]) -> t.Iterator[tuple[t.Any, ...]]:
    seen: set[tuple[t.Any, ...]] = set()
    for row in rows:
        if row not in seen:
            seen.add(row)
            yield row


class _Ordered:
    """A row compared by the merge's ORDER BY, NULLs placed as the
    database places them.
    """

    __slots__ = ("row", "sort")

    def __init__(self, row: tuple[t.Any, ...], sort: tuple[SortKey, ...]) -> None:
        self.row = row
        self.sort = sort

    def __lt__(self, other: _Ordered) -> bool:
        for key in self.sort:
            a, b = self.row[key.index], other.row[key.index]
            if a == b:
                continue
            if a is None:
                return key.nulls_first
            if b is None:
                return not key.nulls_first
            return bool(b < a) if key.descending else bool(a < b)
        return False
