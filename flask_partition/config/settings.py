"""The frozen configuration: what :func:`~flask_partition.config.parse_config`
returns, and the one constructor of a cluster's settings.
"""

from __future__ import annotations

import dataclasses
import types
import typing as t

import sqlalchemy as sa

from .urls import in_memory


@dataclasses.dataclass(frozen=True)
class ClusterConfig:
    """One primary database and its read replicas.

    :param name: The bind name, ``None`` for the default cluster.
    :param primary: The URL of the primary.
    :param replicas: The URLs of the read replicas, possibly empty.
    :param engine_options: Keyword arguments for :func:`sqlalchemy.create_engine`,
        the global options merged with this cluster's own.
    :param replicas_key: The config key of the replica list, for messages.
    :param is_shard: The cluster is a shard (``PARTITION_SHARDS``).

    .. versionadded:: 0.1.0
    """

    name: str | None
    primary: sa.URL
    replicas: tuple[sa.URL, ...]
    engine_options: t.Mapping[str, t.Any]
    replicas_key: str = "'PARTITION_REPLICAS'"
    is_shard: bool = False


@dataclasses.dataclass(frozen=True)
class ReplicaSettings:
    """How replicas are watched: health, replay positions and lag.

    :param cooldown: Seconds a replica that failed to connect, or whose
        connection broke, is skipped (``PARTITION_REPLICA_COOLDOWN``).
    :param check_interval: Seconds a replica's replay position and lag are
        trusted before they are read again (``PARTITION_REPLICA_CHECK_INTERVAL``).
    :param max_lag: Replicas further behind than this many seconds get no
        reads (``PARTITION_REPLICA_MAX_LAG``); ``None``: no limit.
    :param max_lag_bytes: The same limit in bytes of WAL
        (``PARTITION_REPLICA_MAX_LAG_BYTES``); ``None``: no limit.

    .. versionadded:: 0.1.0
    """

    cooldown: float = 5.0
    check_interval: float = 0.5
    max_lag: float | None = None
    max_lag_bytes: int | None = None


@dataclasses.dataclass(frozen=True)
class ConsistencySettings:
    """Read-your-writes across requests: how tokens are made and carried.

    :param mode: ``"auto"``, ``"lsn"``, ``"time"`` or ``"off"``
        (``PARTITION_CONSISTENCY``).
    :param window: Seconds after a commit during which a time token sends
        reads to the primary (``PARTITION_CONSISTENCY_WINDOW``).
    :param cookie: The token cookie's name, ``None`` for the header only
        (``PARTITION_TOKEN_COOKIE``).
    :param max_age: Seconds a token is honoured (``PARTITION_TOKEN_MAX_AGE``).
    :param secret_keys: The keys tokens are signed with, newest last
        (``PARTITION_TOKEN_SECRET``, else ``SECRET_KEY`` and
        ``SECRET_KEY_FALLBACKS``). Never shown in a repr.

    .. versionadded:: 0.1.0
    """

    mode: str = "auto"
    window: float = 2.0
    cookie: str | None = "partition"
    max_age: float = 300.0
    secret_keys: tuple[str | bytes, ...] = dataclasses.field(default=(), repr=False)


@dataclasses.dataclass(frozen=True)
class Topology:
    """Every cluster an application uses, keyed by bind name (``None`` is the
    default cluster; it is missing only when Flask-SQLAlchemy's
    ``SQLALCHEMY_BINDS`` are configured without ``SQLALCHEMY_DATABASE_URI``).

    .. versionadded:: 0.1.0
    """

    clusters: t.Mapping[str | None, ClusterConfig]
    replica_policy: str
    #: The shard clusters by shard name, in configured order (may be empty).
    shards: t.Mapping[str, ClusterConfig] = dataclasses.field(
        default_factory=lambda: types.MappingProxyType({})
    )
    #: Threads that run a scattered read on the shards at the same time.
    scatter_workers: int = 8
    #: Replica health, replay positions and lag limits.
    replica_settings: ReplicaSettings = ReplicaSettings()
    #: Read-your-writes tokens.
    consistency: ConsistencySettings = ConsistencySettings()
    #: Add the ``X-Partition-Route`` header to responses
    #: (``PARTITION_DEBUG_HEADER``).
    debug_header: bool = False
    #: How a session that wrote to several clusters commits
    #: (``PARTITION_COMMIT_MODE``).
    commit_mode: str = "best_effort"


def make_cluster(
    name: str | None,
    primary: sa.URL,
    replicas: tuple[sa.URL, ...],
    options: dict[str, t.Any],
    replicas_key: str,
) -> ClusterConfig:
    if replicas and primary.get_backend_name() == "sqlite" and in_memory(primary):
        raise ValueError(
            f"{replicas_key} is set but the primary is an in-memory SQLite"
            " database, which no other connection can read. Use a SQLite file"
            " ('sqlite:///app.db') or remove the replicas."
        )
    return ClusterConfig(
        name=name,
        primary=primary,
        replicas=replicas,
        engine_options=types.MappingProxyType(options),
        replicas_key=replicas_key,
        is_shard=replicas_key.startswith("PARTITION_SHARDS["),
    )
