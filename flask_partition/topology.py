"""The runtime topology of one application: its clusters and engines, and
the lookups from a model, a table, a statement, a bind or a shard name to a
cluster.

:class:`Router` holds what :meth:`PartitionDB.init_app
<flask_partition.PartitionDB.init_app>` built from the configuration;
:func:`build_router` builds it. It decides nothing per statement: the role
of a statement is :mod:`flask_partition.routing.decide`'s business.
"""

from __future__ import annotations

import os
import typing as t

import sqlalchemy as sa
import sqlalchemy.exc as sa_exc
import sqlalchemy.orm as sa_orm
import sqlalchemy.sql.util as sa_sql_util

from .config import ClusterConfig
from .config import mask_uri
from .config import sqlite_file
from .config import Topology
from .errors import CrossClusterError
from .errors import ScatterError
from .errors import ShardKeyError
from .errors import UnknownClusterError
from .errors import UnknownShardError
from .replicas import Cluster
from .replicas import cluster_label
from .replicas import make_policy
from .routing.plan import Role
from .sharding.maps import HashShardMap
from .sharding.maps import is_sharded
from .sharding.maps import shard_key_of_mapper
from .sharding.maps import ShardKey
from .sharding.maps import ShardMap
from .sharding.parallel import WorkerPool


def bind_key_of(table: sa.FromClause) -> str | None:
    """Return the bind key a table was declared with (``None``: default).

    A key in ``table.info["bind_key"]`` wins over the one of its metadata.
    """
    info = getattr(table, "info", None) or {}
    if "bind_key" in info:
        return t.cast("str | None", info["bind_key"])
    metadata = getattr(table, "metadata", None)
    if metadata is None:
        return None
    return t.cast("str | None", metadata.info.get("bind_key"))


class Router:
    """Maps models, tables and statements of one application to its clusters.

    :param clusters: Every cluster by bind name, ``None`` for the default.
    :param shards: The shard clusters by shard name.
    :param shard_map: Maps shard key values to shard names; default a
        :class:`~flask_partition.sharding.HashShardMap` over ``shards``.
    :param shard_chooser: Replaces the key-based choice of a new row's shard:
        ``(mapper, instance, clause) -> shard``, as for SQLAlchemy's
        :class:`~sqlalchemy.ext.horizontal_shard.ShardedSession`.
    :param identity_chooser: Replaces the shards searched by
        ``session.get()``: ``(mapper, primary_key, **kw) -> [shards]``.
    :param execute_chooser: Replaces the shards a statement without an
        explicit shard runs on: ``(orm_execute_state) -> [shards]``.
    :param scatter_workers: Threads that query shards at the same time.
    :param sender: The sender of signals (the Flask app).
    :param commit_mode: How sessions commit writes to several clusters.

    .. versionadded:: 0.1.0
    """

    def __init__(
        self,
        clusters: t.Mapping[str | None, Cluster],
        shards: t.Mapping[str, Cluster] | None = None,
        *,
        shard_map: ShardMap | t.Callable[[t.Any], str] | None = None,
        shard_chooser: t.Callable[..., t.Any] | None = None,
        identity_chooser: t.Callable[..., t.Iterable[t.Any]] | None = None,
        execute_chooser: t.Callable[..., t.Iterable[t.Any]] | None = None,
        scatter_workers: int = 8,
        sender: object = None,
        commit_mode: str = "best_effort",
    ) -> None:
        self.clusters = dict(clusters)
        self.default = self.clusters[None]
        self.shards = dict(shards or {})
        self.shard_map: ShardMap | None = None
        if self.shards:
            if shard_map is None:
                shard_map = HashShardMap(self.shards)
            elif not hasattr(shard_map, "shard_for"):
                shard_map = _FunctionShardMap(shard_map)
            self.shard_map = t.cast(ShardMap, shard_map)
        self.shard_chooser = shard_chooser
        self.identity_chooser = identity_chooser
        self.execute_chooser = execute_chooser
        self.scatter_workers = scatter_workers
        #: The threads that query shards at the same time.
        self.pool = WorkerPool(scatter_workers)
        # Mappers never move between clusters, so the answer is cached; this
        # keeps get_bind at a dict lookup for ORM statements.
        self._by_mapper: dict[object, Cluster] = {}
        self._shard_keys: dict[object, ShardKey | None] = {}
        self._nodes: dict[sa.Engine, tuple[str | None, Role, int]] = {}
        self.sender = sender
        #: Every cluster by name: binds, shards and the default (``None``).
        self.by_name: dict[str | None, Cluster] = dict(self.clusters)
        self.by_name.update(self.shards)
        self.commit_mode = commit_mode
        #: Whether any cluster has replicas (else no session has replica
        #: connections to release).
        self.has_replicas = any(c.replicas for c in self.by_name.values())
        #: Set once the primaries were checked for two-phase commits.
        self.two_phase_checked = False
        # Commit order: the default cluster, the binds, then the shards.
        self._rank: dict[sa.Engine, int] = {}
        for rank, cluster in enumerate(self.by_name.values()):
            self._rank[cluster.primary] = rank
            cluster.sender = sender
            self._nodes[cluster.primary] = (cluster.name, Role.PRIMARY, 0)
            for index, engine in enumerate(cluster.replicas):
                self._nodes[engine] = (cluster.name, Role.REPLICA, index)

    def rank(self, engine: sa.Engine) -> int:
        """The commit order of a primary engine; other engines sort last."""
        return self._rank.get(engine, len(self._rank))

    def label_of(self, engine: sa.Engine) -> str:
        """Name the cluster of an engine for messages: ``shard 'eu'``."""
        node = self._nodes.get(engine)
        if node is None:
            return repr(engine.url.render_as_string(hide_password=True))
        return self.by_name[node[0]].label

    def shard(self, name: t.Any, *, context: str = "") -> Cluster:
        """Return the shard cluster called ``name``.

        :param name: A shard name from ``PARTITION_SHARDS``.
        :param context: Where the name came from, named in the error.
        :raises UnknownShardError: When no such shard is configured.
        """
        try:
            return self.shards[name]
        except (KeyError, TypeError):
            known = ", ".join(repr(k) for k in self.shards)
            raise UnknownShardError(
                f"Shard {name!r}{context} is not configured. Configured shards:"
                f" {known or 'none'}. Add it to 'PARTITION_SHARDS' or fix the name."
            ) from None

    def _no_shards(self, what: str) -> None:
        if not self.shards:
            raise UnknownShardError(
                f"{what} is sharded, but 'PARTITION_SHARDS' is not configured."
                " Configure the shards, or remove '__shard_key__'."
            )

    def shard_key(self, mapper: t.Any) -> ShardKey | None:
        """Return the shard key of a mapper, ``None`` for unsharded ones.

        A sharded mapper without a key (a table in the shards' metadata
        with no ``shard_key``) returns a key whose column is ``None``.
        """
        try:
            return self._shard_keys[mapper]
        except KeyError:
            pass
        inspected = t.cast("sa_orm.Mapper[t.Any]", sa.inspect(mapper))
        key: ShardKey | None = None
        if any(is_sharded(table) for table in inspected.tables):
            key = shard_key_of_mapper(inspected)
            key = key or ShardKey(inspected.class_.__name__, None, None)
        self._shard_keys[mapper] = key
        return key

    def shard_for_key(self, value: t.Any, *, context: str = "") -> str:
        """Map a shard key value to a configured shard name.

        :raises ShardKeyError: When the value cannot be mapped.
        :raises UnknownShardError: When the map returns an unknown shard.
        """
        assert self.shard_map is not None
        try:
            name = self.shard_map.shard_for(value)
        except (TypeError, ValueError, KeyError) as error:
            raise ShardKeyError(
                f"Cannot map shard key {value!r}{context} to a shard: {error}"
            ) from error
        self.shard(name, context=f" (the shard map's answer for key {value!r})")
        return name

    def close(self) -> None:
        """Stop the scatter threads."""
        self.pool.close()

    def cluster(self, name: str | None, *, context: str = "") -> Cluster:
        """Return the cluster called ``name``.

        :param name: A bind name, ``None`` for the default cluster.
        :param context: Who asked, named in the error (e.g. a model).
        :raises UnknownClusterError: When no such bind is configured.
        """
        try:
            return self.clusters[name]
        except KeyError:
            known = ", ".join(repr(k) for k in self.clusters if k is not None)
            raise UnknownClusterError(
                f"Bind key {name!r}{context} is not configured. Configured binds:"
                f" {known or 'none'}. Add it to 'PARTITION_BINDS' or fix the key."
            ) from None

    def cluster_for_mapper(self, mapper: t.Any) -> Cluster:
        """Return the cluster of a mapped class or :class:`~sqlalchemy.orm.Mapper`."""
        try:
            return self._by_mapper[mapper]
        except KeyError:
            pass
        inspected = t.cast("sa_orm.Mapper[t.Any]", sa.inspect(mapper))
        if any(is_sharded(tbl) for tbl in inspected.tables):
            self._no_shards(f"Model {inspected.class_.__name__!r}")
        keys = {bind_key_of(tbl) for tbl in inspected.tables}
        if len(keys) > 1:
            raise CrossClusterError(
                f"Model {inspected.class_.__name__!r} maps tables of several"
                f" clusters: {sorted(keys, key=str)!r}."
            )
        (key,) = keys or {None}
        cluster = self.cluster(key, context=f" (model {inspected.class_.__name__!r})")
        self._by_mapper[mapper] = cluster
        return cluster

    def cluster_for_clause(self, clause: sa.ClauseElement) -> Cluster:
        """Return the cluster of the tables a Core statement refers to."""
        if isinstance(clause, sa.TextClause):
            return self.default
        tables = sa_sql_util.find_tables(clause, check_columns=True, include_crud=True)
        if any(is_sharded(table) for table in tables):
            self._no_shards("A table in the statement")
            raise ScatterError(
                "The statement refers to sharded tables but no shard was chosen."
                " Use 'use_shard', a shard key condition or"
                " bind_arguments={'shard_id': ...}."
            )
        keys = {bind_key_of(table) for table in tables}
        if not keys:
            return self.default
        if len(keys) > 1:
            names = " and ".join(cluster_label(k) for k in sorted(keys, key=str))
            raise CrossClusterError(
                f"The statement refers to tables of {names}; one statement runs on"
                " one database. Split it into one query per cluster."
            )
        (key,) = keys
        return self.cluster(key, context=" (table in the statement)")

    def node(self, engine: sa.Engine) -> tuple[str | None, Role, int] | None:
        """Tell which cluster, role and replica index ``engine`` serves."""
        return self._nodes.get(engine)

    def engines(self) -> t.Iterator[sa.Engine]:
        """Every engine of every cluster and shard, primaries first in each."""
        for cluster in [*self.clusters.values(), *self.shards.values()]:
            yield from cluster.engines()

    def tables(self, clause: sa.ClauseElement) -> list[sa.Table]:
        """The tables a statement refers to (none for raw SQL)."""
        if isinstance(clause, sa.TextClause):
            return []
        tables = sa_sql_util.find_tables(clause, check_columns=True, include_crud=True)
        return [tbl for tbl in tables if isinstance(tbl, sa.Table)]

    def sharded_tables(self, clause: sa.ClauseElement) -> list[sa.Table]:
        """The sharded tables a Core statement refers to."""
        return [tbl for tbl in self.tables(clause) if is_sharded(tbl)]


class _FunctionShardMap:
    """Wrap a plain ``key -> shard`` function as a shard map."""

    def __init__(self, function: t.Callable[[t.Any], str]) -> None:
        self.function = function

    def shard_for(self, key: t.Any) -> str:
        return self.function(key)


def build_router(
    topology: Topology,
    token_modes: t.Mapping[str | None, str],
    *,
    sender: object,
    missing_default: t.Callable[[], Cluster],
    **shard_options: t.Any,
) -> Router:
    """Create the engines of every cluster and the router over them.

    :param topology: The parsed configuration.
    :param token_modes: How each cluster with tokens records positions.
    :param sender: The sender of signals (the Flask app).
    :param missing_default: Makes the default cluster when only binds are
        configured (Flask-SQLAlchemy allows that).
    :param shard_options: ``shard_map`` and the choosers, as given to
        :class:`~flask_partition.PartitionDB`.
    :raises ValueError: A lag limit on replicas that cannot report lag, or
        an engine that cannot be created (key named, password masked).
    """
    _check_replica_settings(topology)
    clusters = {
        name: _make_cluster(config, topology, token_modes.get(name))
        for name, config in topology.clusters.items()
    }
    if None not in clusters:
        clusters[None] = missing_default()
    shards = {
        name: _make_cluster(config, topology, token_modes.get(name))
        for name, config in topology.shards.items()
    }
    return Router(
        clusters,
        shards,
        scatter_workers=topology.scatter_workers,
        sender=sender,
        commit_mode=topology.commit_mode,
        **shard_options,
    )


def _make_cluster(
    config: ClusterConfig, topology: Topology, token_mode: str | None
) -> Cluster:
    primary = _create_engine(config.primary, config)
    replicas = [
        _create_engine(url, config, replica=index)
        for index, url in enumerate(config.replicas)
    ]
    return Cluster(
        config.name,
        primary,
        replicas,
        make_policy(topology.replica_policy),
        is_shard=config.is_shard,
        settings=topology.replica_settings,
        token_mode=token_mode,
        window=topology.consistency.window,
    )


def _check_replica_settings(topology: Topology) -> None:
    """Lag limits need replicas that report their lag: PostgreSQL (SQLite
    replicas are the primary's file and never lag).
    """
    settings = topology.replica_settings
    if settings.max_lag is None and settings.max_lag_bytes is None:
        return
    key = (
        "PARTITION_REPLICA_MAX_LAG"
        if settings.max_lag is not None
        else "PARTITION_REPLICA_MAX_LAG_BYTES"
    )
    for config in [*topology.clusters.values(), *topology.shards.values()]:
        for url in config.replicas:
            backend = url.get_backend_name()
            if backend not in ("postgresql", "sqlite"):
                label = cluster_label(config.name, shard=config.is_shard)
                raise ValueError(
                    f"'{key}' is set, but a replica of {label} uses {backend!r},"
                    " whose lag cannot be measured; lag limits need PostgreSQL"
                    " replicas. Remove the limit."
                )


def _create_engine(
    url: sa.URL, config: ClusterConfig, *, replica: int | None = None
) -> sa.Engine:
    options = dict(config.engine_options)
    if url.get_backend_name() == "sqlite":
        path = sqlite_file(url)
        if path is not None:
            if replica is None:
                # Create the primary's file now: a read-only replica of it
                # cannot open a file that does not exist yet.
                os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
                if not os.path.exists(path):
                    open(path, "ab").close()
            elif not os.path.exists(path):
                key = config.replicas_key
                key = (
                    f"{key[:-1]}[{replica}]'"
                    if key.endswith("'PARTITION_REPLICAS'")
                    else f"{key}[{replica}]"
                )
                raise ValueError(
                    f"{key} names the SQLite file {path!r}, which does"
                    " not exist. A SQLite replica opens the primary's file"
                    " read-only; use the primary's path."
                )
        else:
            options.setdefault("poolclass", sa.pool.StaticPool)
            options.setdefault("connect_args", {"check_same_thread": False})
    try:
        return sa.create_engine(url, **options)
    except (sa_exc.ArgumentError, ImportError, TypeError) as error:
        label = cluster_label(config.name, shard=config.is_shard)
        raise ValueError(
            f"Cannot create an engine for {mask_uri(url)!r} ({label}): {error}"
        ) from error
