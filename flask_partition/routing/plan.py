"""The routing plan of the current context: what the pinning helpers and
the request asked for.

The plan lives in a :class:`~contextvars.ContextVar`, so it follows the code
into ``async def`` views and never leaks between threads or requests.
"""

from __future__ import annotations

import contextvars
import dataclasses
import enum
import typing as t


class Role(enum.Enum):
    """Which engine of a cluster a statement goes to.

    .. versionadded:: 0.1.0
    """

    PRIMARY = "primary"
    REPLICA = "replica"


@dataclasses.dataclass(frozen=True)
class Plan:
    """What the current context asked for with the pinning helpers.

    :param role: :attr:`Role.PRIMARY` under :func:`~flask_partition.use_primary`,
        :attr:`Role.REPLICA` under :func:`~flask_partition.use_replica`,
        ``None`` to decide per statement.
    :param read_only: Writes raise :class:`~flask_partition.ReadOnlyError`.
    :param pinned_by: The helper that set the plan, named in errors.
    :param shard: The shard sharded models use, set by
        :func:`~flask_partition.use_shard` or the request's shard resolver.
    :param positions: The positions of the client's consistency token by
        cluster: replicas that have not replayed them get no reads.
    :param commit_mode: The commit mode set by
        :func:`~flask_partition.commit_mode`, ``None`` for the configured one.

    .. versionadded:: 0.1.0
    """

    role: Role | None = None
    read_only: bool = False
    pinned_by: str | None = None
    shard: str | None = None
    positions: t.Mapping[str | None, float] | None = None
    commit_mode: str | None = None


# Plan is a frozen dataclass, so sharing one default instance is safe.
_plan: contextvars.ContextVar[Plan] = contextvars.ContextVar(
    "flask_partition_plan",
    default=Plan(),  # noqa: B039
)


def current_plan() -> Plan:
    """Return the plan in force in the current context.

    .. versionadded:: 0.1.0
    """
    return _plan.get()
