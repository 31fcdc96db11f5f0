"""Runtime clusters: the engines of one primary and its replicas, and the
policy that picks a replica for a session.
"""

from __future__ import annotations

import itertools
import random
import typing as t

import sqlalchemy as sa


class ReplicaPolicy(t.Protocol):
    """Pick which replica a new session reads from.

    :param count: How many replicas the cluster has, at least one.
    :return: An index in ``range(count)``.

    .. versionadded:: 0.1.0
    """

    def __call__(self, count: int) -> int: ...


class RoundRobin:
    """Hand replicas to sessions in turn, so load spreads evenly.

    .. versionadded:: 0.1.0
    """

    def __init__(self) -> None:
        # next() on itertools.count is atomic under the GIL: no lock needed.
        self._counter = itertools.count()

    def __call__(self, count: int) -> int:
        return next(self._counter) % count


class RandomChoice:
    """Pick a replica at random for each session.

    .. versionadded:: 0.1.0
    """

    def __call__(self, count: int) -> int:
        return random.randrange(count)


def make_policy(name: str) -> ReplicaPolicy:
    """Return a fresh policy for ``PARTITION_REPLICA_POLICY`` ``name``.

    :param name: ``"round_robin"`` or ``"random"`` (validated by the config).
    """
    return RandomChoice() if name == "random" else RoundRobin()


class Cluster:
    """One primary engine and its replica engines.

    :param name: The bind name, ``None`` for the default cluster.
    :param primary: The primary's engine: every write goes there.
    :param replicas: The replicas' engines, possibly none.
    :param policy: Chooses a replica for each session that reads.

    .. versionadded:: 0.1.0
    """

    __slots__ = ("name", "primary", "replicas", "_policy")

    def __init__(
        self,
        name: str | None,
        primary: sa.Engine,
        replicas: t.Sequence[sa.Engine],
        policy: ReplicaPolicy,
    ) -> None:
        self.name = name
        self.primary = primary
        self.replicas = tuple(replicas)
        self._policy = policy

    def choose_replica(self) -> sa.Engine:
        """Return the replica engine a new session should read from, or the
        primary when the cluster has no replica.
        """
        replicas = self.replicas
        if not replicas:
            return self.primary
        if len(replicas) == 1:
            return replicas[0]
        return replicas[self._policy(len(replicas))]

    def engines(self) -> tuple[sa.Engine, ...]:
        """The primary first, then the replicas in configured order."""
        return (self.primary, *self.replicas)

    def dispose(self) -> None:
        """Close every pooled connection of this cluster's engines."""
        for engine in self.engines():
            engine.dispose()

    def __repr__(self) -> str:
        return f"<Cluster {self.name!r} replicas={len(self.replicas)}>"
