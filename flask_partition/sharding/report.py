"""How data is spread over the shards: the buckets each shard owns under a
hash map, the rows each shard holds per sharded table, and the shard of given
key values. ``flask partition shards`` prints it.
"""

from __future__ import annotations

import dataclasses
import re
import typing as t

import sqlalchemy as sa
import sqlalchemy.exc as sa_exc

from ..display import display_url
from ..display import error_text
from .maps import HashShardMap

if t.TYPE_CHECKING:
    from .maps import ShardMap


class ShardCluster(t.Protocol):
    """The engines of one shard (a :class:`~flask_partition.replicas.Cluster`)."""

    @property
    def primary(self) -> sa.Engine:
        """The shard's primary."""

    @property
    def replicas(self) -> t.Sequence[sa.Engine]:
        """The shard's replicas, possibly none."""


class ShardRouter(t.Protocol):
    """What the report needs of an application's router."""

    @property
    def shards(self) -> t.Mapping[str, ShardCluster]:
        """The shards by name, in configuration order."""

    @property
    def shard_map(self) -> ShardMap | None:
        """Maps key values to shard names."""

    def shard_for_key(self, value: t.Any, *, context: str = "") -> str:
        """The configured shard of ``value``."""


@dataclasses.dataclass(frozen=True)
class KeyPlacement:
    """Where one shard key value goes."""

    shard: str
    #: Its bucket under a :class:`~flask_partition.HashShardMap`, else ``None``.
    bucket: int | None = None

    def as_json(self) -> dict[str, t.Any]:
        """``{"shard": ..., "bucket": ...}``, without a bucket for other maps."""
        data: dict[str, t.Any] = {"shard": self.shard}
        if self.bucket is not None:
            data["bucket"] = self.bucket
        return data


@dataclasses.dataclass(frozen=True)
class ShardRows:
    """The rows of one shard, counted on its first replica (its primary
    when it has none).
    """

    #: Where the rows were counted, password masked.
    url: str
    #: Rows per table name; ``None`` for a table the shard lacks (every
    #: table when the shard could not be read).
    rows: dict[str, int | None]
    #: Why the shard could not be read, password masked.
    error: str | None = None


@dataclasses.dataclass(frozen=True)
class ShardReport:
    """The shard map and the data on each shard."""

    #: The shard map's class name.
    map_name: str
    #: The hash map's bucket count; ``None`` for other maps.
    buckets: int | None
    #: The buckets each shard of the hash map owns; ``None`` for other maps.
    owned: dict[str, list[int]] | None
    #: Each shard's rows, by shard name in configuration order.
    shards: dict[str, ShardRows]
    #: The sharded tables' names, in creation order.
    tables: list[str]
    #: The shard of each key value asked about, by the text given.
    keys: dict[str, KeyPlacement] = dataclasses.field(default_factory=dict)

    @property
    def errors(self) -> dict[str, str]:
        """Why each shard that could not be read could not be, by name."""
        return {
            name: shard.error
            for name, shard in self.shards.items()
            if shard.error is not None
        }

    @property
    def missing(self) -> dict[str, list[str]]:
        """The tables each readable shard lacks, by shard name."""
        missing = {
            name: [table for table, rows in shard.rows.items() if rows is None]
            for name, shard in self.shards.items()
            if shard.error is None
        }
        return {name: tables for name, tables in missing.items() if tables}

    @property
    def ok(self) -> bool:
        """Whether every shard was read and has every table."""
        return not (self.errors or self.missing)

    def as_json(self) -> dict[str, t.Any]:
        """The report as JSON-compatible data."""
        return {
            "map": self.map_name,
            "buckets": self.buckets,
            "shards": {
                name: {
                    "url": shard.url,
                    "buckets": None if self.owned is None else len(self.owned[name]),
                    "error": shard.error,
                    "rows": shard.rows,
                }
                for name, shard in self.shards.items()
            },
            "keys": {text: place.as_json() for text, place in self.keys.items()},
        }


def key_value(text: str) -> int | str:
    """A key from the command line: digits are an int, the rest a string."""
    return int(text) if re.fullmatch(r"-?\d+", text) else text


def place_keys(
    router: ShardRouter, texts: t.Iterable[str], *, context: str = ""
) -> dict[str, KeyPlacement]:
    """The shard of each key value given as text (see :func:`key_value`).

    :param router: The application's router; it has shards.
    :param texts: The values.
    :param context: Where the values came from, named in the errors.
    :raises ~flask_partition.ShardingError: A value the map cannot place.
    :raises ~flask_partition.UnknownShardError: The map places a value on a
        shard that is not configured.
    """
    shard_map = router.shard_map
    placed: dict[str, KeyPlacement] = {}
    for text in texts:
        value = key_value(text)
        name = router.shard_for_key(value, context=context)
        bucket = None
        if isinstance(shard_map, HashShardMap):
            bucket = shard_map.bucket_of(value)
        placed[text] = KeyPlacement(name, bucket)
    return placed


def shard_report(
    router: ShardRouter,
    tables: t.Sequence[sa.Table],
    keys: t.Mapping[str, KeyPlacement] | None = None,
) -> ShardReport:
    """Count the rows of ``tables`` on every shard.

    :param router: The application's router; it has shards.
    :param tables: The sharded tables, ``db.shard_metadata.sorted_tables``.
    :param keys: Key values placed by :func:`place_keys`, for the report.
    """
    shard_map = router.shard_map
    owned = None
    if isinstance(shard_map, HashShardMap):
        owned = shard_map.buckets_by_shard()
    shards = {}
    for name, cluster in router.shards.items():
        engine = cluster.replicas[0] if cluster.replicas else cluster.primary
        rows, error = count_rows(engine, tables)
        shards[name] = ShardRows(display_url(engine.url), rows, error)
    return ShardReport(
        map_name=type(shard_map).__name__,
        buckets=shard_map.buckets if isinstance(shard_map, HashShardMap) else None,
        owned=owned,
        shards=shards,
        tables=[table.name for table in tables],
        keys=dict(keys or {}),
    )


def count_rows(
    engine: sa.Engine, tables: t.Sequence[sa.Table]
) -> tuple[dict[str, int | None], str | None]:
    """Rows per table on one database (``None``: no such table), or every
    table ``None`` and why the database could not be read.
    """
    counts: dict[str, int | None] = {}
    try:
        with engine.connect() as conn:
            inspector = sa.inspect(conn)
            for table in tables:
                if not inspector.has_table(table.name, schema=table.schema):
                    counts[table.name] = None
                    continue
                query = sa.select(sa.func.count()).select_from(table)
                counts[table.name] = int(conn.execute(query).scalar_one())
    except sa_exc.SQLAlchemyError as error:
        return {table.name: None for table in tables}, error_text(error, engine)
    return counts, None


__all__ = [
    "KeyPlacement",
    "ShardReport",
    "ShardRows",
    "count_rows",
    "key_value",
    "place_keys",
    "shard_report",
]
