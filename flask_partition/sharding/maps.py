"""Shard keys and shard maps: which shard a row lives on.

A sharded model names its key column with ``__shard_key__``; a shard map
turns a key value into a shard name. The default, :class:`HashShardMap`, is a
stable hash over a fixed number of buckets, so the same key lands on the same
shard in every process and after restarts, and adding a shard moves few keys.
"""

from __future__ import annotations

import dataclasses
import hashlib
import typing as t
import uuid

import sqlalchemy as sa
import sqlalchemy.orm as sa_orm
import sqlalchemy.sql.elements as sa_elements
import sqlalchemy.sql.operators as sa_operators

from .. import _sqla
from ..errors import ShardKeyError

#: The number of logical buckets of the default :class:`HashShardMap`.
DEFAULT_BUCKETS: t.Final = 1024


class ShardMap(t.Protocol):
    """Map a shard key value to the name of the shard its rows live on.

    Plug your own into :class:`~flask_partition.PartitionDB` with
    ``shard_map=``: a directory lookup, ranges, or the key naming the shard.
    The result must be a shard configured in ``PARTITION_SHARDS``.

    .. versionadded:: 0.1.0
    """

    def shard_for(self, key: t.Any) -> str:
        """Return the shard name for ``key``."""
        ...


def key_bytes(key: object) -> bytes:
    """Encode a shard key for hashing, the same way in every process.

    Integers are written in decimal, UUIDs in their canonical lowercase
    hyphenated form, strings as UTF-8, bytes as they are. So ``42`` and
    ``"42"`` hash alike, which keeps a key read from a URL on the same shard.

    :param key: The shard key value.
    :raises TypeError: For booleans, ``None`` and other types.

    .. versionadded:: 0.1.0
    """
    if isinstance(key, bool) or key is None:
        raise TypeError(f"A shard key cannot be {key!r}.")
    if isinstance(key, int):
        return str(key).encode()
    if isinstance(key, str):
        return key.encode()
    if isinstance(key, uuid.UUID):
        return str(key).encode()
    if isinstance(key, bytes):
        return key
    raise TypeError(
        f"A shard key must be an int, str, UUID or bytes, got"
        f" {type(key).__name__} {key!r}."
    )


def _hash64(data: bytes) -> int:
    return int.from_bytes(hashlib.sha256(data).digest()[:8], "big")


class HashShardMap:
    """The default shard map: a stable hash over fixed buckets.

    The key's bytes (see :func:`key_bytes`) are hashed with SHA-256; the first
    8 bytes, read big-endian, modulo ``buckets`` give the bucket. Each bucket
    belongs to the shard with the highest SHA-256 score of
    ``"<shard>:<bucket>"`` (rendezvous hashing). The result depends only on
    the key, the shard names and ``buckets``, never on Python's
    :func:`hash`, the process or the order of the config. Adding a shard
    moves only the buckets the new shard wins, about ``1/(n+1)`` of them;
    removing one moves only its own buckets.

    :param shards: The shard names.
    :param buckets: How many buckets; changing it moves most keys.
    :raises ValueError: With no shard or fewer than one bucket.

    .. versionadded:: 0.1.0
    """

    def __init__(self, shards: t.Iterable[str], buckets: int = DEFAULT_BUCKETS) -> None:
        self.shards = tuple(shards)
        if not self.shards:
            raise ValueError("'HashShardMap' needs at least one shard name.")
        if buckets < 1:
            raise ValueError(f"'buckets' must be at least 1, got {buckets!r}.")
        self.buckets = buckets
        self._owner = tuple(
            max(self.shards, key=lambda s: (_hash64(f"{s}:{b}".encode()), s))
            for b in range(buckets)
        )

    def bucket_of(self, key: object) -> int:
        """Return the bucket of ``key``, in ``range(buckets)``."""
        return _hash64(key_bytes(key)) % self.buckets

    def shard_for(self, key: object) -> str:
        """Return the shard that owns ``key``'s bucket."""
        return self._owner[self.bucket_of(key)]

    def buckets_by_shard(self) -> dict[str, list[int]]:
        """Return each shard's buckets, for reports."""
        owned: dict[str, list[int]] = {name: [] for name in self.shards}
        for bucket, name in enumerate(self._owner):
            owned[name].append(bucket)
        return owned

    def __repr__(self) -> str:
        return f"<HashShardMap shards={list(self.shards)!r} buckets={self.buckets}>"


class KeyIsShardName:
    """A shard map where the key value is the shard name, for example a
    ``region`` column holding ``"eu"`` or ``"us"``.

    .. versionadded:: 0.1.0
    """

    def shard_for(self, key: object) -> str:
        """Return ``key`` as the shard name."""
        return str(key)


class RangeShardMap:
    """A shard map by key ranges: ``[(100_000, "a"), (200_000, "b")]`` puts
    keys below 100,000 on ``"a"`` and keys from 100,000 below 200,000 on
    ``"b"``.

    :param ranges: ``(exclusive upper bound, shard)`` pairs in ascending order.
    :param rest: The shard for keys at or above the last bound; ``None``
        makes such keys an error.

    .. versionadded:: 0.1.0
    """

    def __init__(
        self, ranges: t.Sequence[tuple[t.Any, str]], rest: str | None = None
    ) -> None:
        bounds = [bound for bound, _ in ranges]
        if bounds != sorted(bounds):
            raise ValueError(f"'ranges' must be in ascending order, got {bounds!r}.")
        self.ranges = tuple(ranges)
        self.rest = rest

    def shard_for(self, key: t.Any) -> str:
        """Return the shard of the first range whose bound exceeds ``key``."""
        for bound, name in self.ranges:
            if key < bound:
                return name
        if self.rest is None:
            raise ValueError(
                f"Shard key {key!r} is above every range of the 'RangeShardMap'."
            )
        return self.rest


class DirectoryShardMap:
    """A shard map backed by a lookup: a dict, or a function such as a
    query on a directory table or a cache.

    :param lookup: A mapping or a callable from key to shard name.

    .. versionadded:: 0.1.0
    """

    def __init__(
        self, lookup: t.Mapping[t.Any, str] | t.Callable[[t.Any], str]
    ) -> None:
        self.lookup = lookup

    def shard_for(self, key: t.Any) -> str:
        """Return the shard the directory lists for ``key``."""
        if isinstance(self.lookup, t.Mapping):
            try:
                return self.lookup[key]
            except KeyError:
                raise ValueError(
                    f"Shard key {key!r} is not in the shard directory."
                ) from None
        return self.lookup(key)


@dataclasses.dataclass(frozen=True)
class ShardKey:
    """Where a sharded table keeps its shard key.

    :param model: The model (or table) name, for messages.
    :param column: The key column; ``None`` for a table in the shards'
        metadata without a key (only an explicit shard routes it).
    :param attribute: The mapped attribute of that column, ``None`` for a
        Core table.

    .. versionadded:: 0.1.0
    """

    model: str
    column: sa.Column[t.Any] | None
    attribute: str | None


def is_sharded(table: object) -> bool:
    """True for a table in the shards' metadata or with a shard key."""
    info = getattr(table, "info", None) or {}
    if "shard_key" in info:
        return True
    metadata = getattr(table, "metadata", None)
    return metadata is not None and bool(metadata.info.get("sharded"))


def shard_key_of_table(table: sa.Table) -> ShardKey | None:
    """Return the shard key of ``table`` (``info["shard_key"]``), if any.

    :raises ShardKeyError: If the named column does not exist.
    """
    name = table.info.get("shard_key")
    if name is None:
        return None
    if name not in table.c:
        raise ShardKeyError(
            f"Table {table.name!r} names shard key {name!r}, but has no such"
            f" column. Columns: {', '.join(table.c.keys())}."
        )
    return ShardKey(table.name, table.c[name], None)


def shard_key_of_mapper(mapper: sa_orm.Mapper[t.Any]) -> ShardKey | None:
    """Return the shard key of a mapped class's table, with its attribute."""
    for table in mapper.tables:
        if not isinstance(table, sa.Table):
            continue
        key = shard_key_of_table(table)
        if key is not None and key.column is not None:
            prop = mapper.get_property_by_column(key.column)
            return ShardKey(mapper.class_.__name__, key.column, prop.key)
    return None


def key_values(
    criteria: t.Iterable[sa.ColumnElement[t.Any]],
    column: sa.Column[t.Any],
    params: t.Mapping[str, t.Any] | None = None,
) -> list[t.Any] | None:
    """Find the values a WHERE clause allows for ``column``.

    Looks at top-level ``AND`` terms of the form ``column == value`` and
    ``column IN (values)``. Anything else (``OR``, functions, comparisons)
    tells nothing, and ``None`` is returned: the statement may touch every
    shard.

    :param criteria: The statement's WHERE criteria.
    :param column: The shard key column.
    :param params: Execution parameters, for bound parameters without value.
    """
    found: list[t.Any] | None = None
    for term in _and_terms(criteria):
        values = _term_values(term, column, params or {})
        if values is None:
            continue
        found = values if found is None else [v for v in found if v in values]
    return found


def _and_terms(
    criteria: t.Iterable[sa.ColumnElement[t.Any]],
) -> t.Iterator[sa.ColumnElement[t.Any]]:
    for term in criteria:
        if (
            isinstance(term, sa_elements.BooleanClauseList)
            and term.operator is sa_operators.and_
        ):
            yield from _and_terms(term.clauses)
        else:
            yield term


def _same_column(side: object, column: sa.Column[t.Any]) -> bool:
    if side is column:
        return True
    return (
        isinstance(side, sa.Column)
        and side.name == column.name
        and getattr(side, "table", None) is column.table
    ) or bool(
        isinstance(side, sa_elements.ColumnElement)
        and _sqla.is_annotated(side)
        and side.compare(column)
    )


def _term_values(
    term: object, column: sa.Column[t.Any], params: t.Mapping[str, t.Any]
) -> list[t.Any] | None:
    if not isinstance(term, sa_elements.BinaryExpression):
        return None
    left, right = term.left, term.right
    if _same_column(right, column) and term.operator is sa_operators.eq:
        left, right = right, left
    if not _same_column(left, column) or not isinstance(right, sa.BindParameter):
        return None
    value = params.get(right.key, right.effective_value)
    if term.operator is sa_operators.eq:
        return None if value is None else [value]
    if term.operator is sa_operators.in_op and right.expanding:
        return list(value) if value is not None else None
    return None
