"""Helpers for testing applications that use Flask-Partition.

:class:`PostgresTopology` starts a real PostgreSQL primary with streaming
replicas in a temporary folder, on free loopback ports, and can pause replay
(to create lag on purpose) or stop and start nodes (to create faults). It can
also start independent shard servers, each a primary with its own replicas
(:class:`ShardServers`). It lives in :mod:`flask_partition.pgcluster`, which
``flask partition dev-cluster`` uses too, and is importable from here.
:class:`RoutingRecorder` records which node every statement went to.

Starting servers needs the PostgreSQL server binaries (``initdb``,
``pg_ctl``, ``pg_basebackup``) and :mod:`psycopg`. As root, the servers run
as the ``postgres`` user, because PostgreSQL refuses to run as root.

No module of the package imports this one: it is for tests.
"""

from __future__ import annotations

import dataclasses
import os
import typing as t

import sqlalchemy as sa
from flask import Flask

from .pgcluster import BINDIR_ENV as BINDIR_ENV
from .pgcluster import find_bindir as find_bindir
from .pgcluster import PostgresNode as PostgresNode
from .pgcluster import PostgresTopology as PostgresTopology
from .pgcluster import ShardServers as ShardServers
from .pgcluster import unavailable_reason as unavailable_reason
from .pgcluster import USER_ENV as USER_ENV
from .routing.plan import Role
from .sharding.maps import ShardMap

if t.TYPE_CHECKING:
    from .extension import PartitionDB


def require_postgres() -> None:
    """In a pytest test or fixture: skip it when PostgreSQL cannot run here
    (:func:`unavailable_reason`), and fail it instead when the ``CI``
    environment variable is true, so a CI machine without PostgreSQL never
    passes by skipping.

    .. versionadded:: 0.1.0
    """
    import pytest  # a test dependency only: imported when called

    reason = unavailable_reason()
    if reason is None:
        return
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI needs PostgreSQL: {reason}")
    pytest.skip(reason)


def keys_by_shard(
    shard_map: ShardMap | None, shards: t.Iterable[str], count: int = 3
) -> dict[str, list[int]]:
    """Return the ``count`` smallest integer shard keys (from 1) that
    ``shard_map`` sends to each of ``shards``: test data for every shard.

    :param shard_map: The application's map, ``router.shard_map``.
    :param shards: The shards to find keys for.
    :param count: Keys per shard.
    :raises ValueError: When a shard gets no key among the first million.

    .. versionadded:: 0.1.0
    """
    if shard_map is None:
        raise ValueError("'keys_by_shard' needs a shard map; no shards are set.")
    found: dict[str, list[int]] = {name: [] for name in shards}
    for key in range(1, 1_000_001):
        keys = found.get(shard_map.shard_for(key))
        if keys is not None and len(keys) < count:
            keys.append(key)
            if all(len(v) >= count for v in found.values()):
                return found
    short = sorted(name for name, v in found.items() if len(v) < count)
    raise ValueError(
        f"Fewer than {count} of the first million keys map to shard(s) {short!r}."
    )


# -- routing assertions ---------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RecordedStatement:
    """One statement seen by :class:`RoutingRecorder`.

    :param cluster: Bind name, ``None`` for the default cluster.
    :param role: Primary or replica.
    :param replica: Index of the replica in the config, 0 for a primary.
    :param sql: The SQL text sent to the database.

    .. versionadded:: 0.1.0
    """

    cluster: str | None
    role: Role
    replica: int
    sql: str


class RoutingRecorder:
    """Record the node each statement of an application went to.

    ::

        with RoutingRecorder(db, app) as log:
            client.get("/report")
        assert {s.role for s in log.statements} == {Role.REPLICA}

    :param db: The extension.
    :param app: The application; defaults to the current one.

    .. versionadded:: 0.1.0
    """

    def __init__(self, db: PartitionDB, app: Flask | None = None) -> None:
        self._router = db.get_router(app)
        self.statements: list[RecordedStatement] = []

    def _listener(
        self,
        conn: sa.Connection,
        cursor: t.Any,
        statement: str,
        parameters: t.Any,
        context: t.Any,
        executemany: bool,
    ) -> None:
        node = self._router.node(conn.engine)
        if node is not None:
            self.statements.append(
                RecordedStatement(node[0], node[1], node[2], statement)
            )

    def __enter__(self) -> RoutingRecorder:
        for engine in self._router.engines():
            sa.event.listen(engine, "before_cursor_execute", self._listener)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for engine in self._router.engines():
            sa.event.remove(engine, "before_cursor_execute", self._listener)

    def roles(self, cluster: str | None = None) -> list[Role]:
        """The role of each recorded statement on ``cluster``, in order."""
        return [s.role for s in self.statements if s.cluster == cluster]

    def nodes(self, cluster: str | None = None) -> set[tuple[Role, int]]:
        """The distinct (role, replica index) pairs used on ``cluster``."""
        return {(s.role, s.replica) for s in self.statements if s.cluster == cluster}

    def clear(self) -> None:
        """Forget what was recorded so far."""
        self.statements.clear()


__all__ = [
    "PostgresNode",
    "PostgresTopology",
    "RecordedStatement",
    "RoutingRecorder",
    "ShardServers",
    "find_bindir",
    "unavailable_reason",
]
