"""Reporting routing decisions: the ``flask_partition`` logger at DEBUG, the
:data:`~flask_partition.signals.routed` signal, and the debug header
(``PARTITION_DEBUG_HEADER``).

Reporting costs nothing when nobody listens: :func:`report` returns after
three checks.
"""

from __future__ import annotations

import contextvars
import logging
import typing as t

import sqlalchemy as sa

from ..replicas import Cluster
from ..signals import routed
from .plan import Role

_log = logging.getLogger("flask_partition")
_DEBUG = logging.DEBUG

#: Routing decisions of the current request by (cluster, node), collected
#: for the debug header when ``PARTITION_DEBUG_HEADER`` is on.
_routes: contextvars.ContextVar[dict[tuple[str, str], int] | None] = (
    contextvars.ContextVar("flask_partition_routes", default=None)
)


def report(cluster: Cluster, engine: sa.Engine, reason: str, sender: object) -> None:
    """Report that a statement of ``cluster`` goes to ``engine``.

    :param sender: The sender of the signal (the Flask app).
    """
    routes = _routes.get()
    if routes is None and not routed.receivers and not _log.isEnabledFor(_DEBUG):
        return
    node = cluster.node(engine)
    _log.debug("%s: %s (%s)", cluster.label, node, reason)
    if routes is not None:
        key = (header_cluster_name(cluster.name, shard=cluster.is_shard), node)
        routes[key] = routes.get(key, 0) + 1
    if routed.receivers:
        try:
            routed.send(
                sender,
                cluster=cluster.name,
                role=Role.REPLICA if node != "primary" else Role.PRIMARY,
                node=node,
                reason=reason,
            )
        except Exception:
            # Observability must not change where a statement goes.
            _log.exception("a 'routed' receiver raised")


def describe_routes(routes: t.Mapping[tuple[str, str], int]) -> str:
    """Format the debug header: ``default/replica[0] x2, bind:audit/primary x1``.

    :param routes: Counts by (cluster, node).
    """
    return ", ".join(
        f"{cluster}/{node} x{count}" for (cluster, node), count in routes.items()
    )


def header_cluster_name(name: str | None, *, shard: bool) -> str:
    """Name a cluster in the debug header: ``default``, ``bind:x``, ``shard:x``."""
    if name is None:
        return "default"
    return f"shard:{name}" if shard else f"bind:{name}"
