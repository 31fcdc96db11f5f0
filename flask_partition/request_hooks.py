"""What Flask-Partition does around each request.

Before it: pin the shard the resolver chose, read the client's consistency
token into the routing plan, and start the debug trace. After it: give the
client a token for what the request committed, and add the debug header.
At teardown: restore the plan. Most requests carry no token and ask for no
header; for them :func:`begin_request` sets nothing and the others return at
once.
"""

from __future__ import annotations

import contextvars
import dataclasses
import typing as t

from flask import g
from flask import request
from flask import Response

from .consistency import Positions
from .consistency import ROUTE_HEADER
from .consistency import TokenCarrier
from .routing.plan import _plan
from .routing.plan import Plan
from .routing.trace import _routes
from .routing.trace import describe_routes


@dataclasses.dataclass
class _RequestContext:
    """What the request hooks keep on ``g`` for one request."""

    #: The client's token positions that no replica set has passed yet.
    positions: Positions | None
    #: How many positions the client's token held (0: no valid token).
    sent: int
    #: Routing decisions for the debug header, when it is on.
    routes: dict[tuple[str, str], int] | None
    plan_token: contextvars.Token[Plan] | None = None
    routes_token: contextvars.Token[dict[tuple[str, str], int] | None] | None = None


def begin_request(
    carrier: TokenCarrier | None, shard: str | None, *, debug_header: bool
) -> None:
    """Set the request's plan: the shard from the resolver and the
    positions of the client's consistency token; start the debug trace.

    :param carrier: Reads the client's token; ``None`` without tokens.
    :param shard: The shard the resolver chose (already checked).
    :param debug_header: ``PARTITION_DEBUG_HEADER`` is on.
    """
    sent, positions = carrier.read(request) if carrier is not None else (0, None)
    routes: dict[tuple[str, str], int] | None = {} if debug_header else None
    if not (shard or positions or sent or routes is not None):
        return  # the common request: nothing to set or undo
    context = g._partition = _RequestContext(
        positions=positions, sent=sent, routes=routes
    )
    if shard or positions:
        plan = _plan.get()
        # Plan(...) rather than dataclasses.replace(): this runs per request.
        context.plan_token = _plan.set(
            Plan(
                role=plan.role,
                read_only=plan.read_only,
                pinned_by=plan.pinned_by,
                shard=shard or plan.shard,
                positions=positions or plan.positions,
                commit_mode=plan.commit_mode,
            )
        )
    if routes is not None:
        context.routes_token = _routes.set(routes)


def finish_request(
    response: Response,
    carrier: TokenCarrier | None,
    committed: t.Collection[str | None],
) -> Response:
    """Give the client a token for the clusters this request committed
    writes to (see :class:`~flask_partition.consistency.TokenCarrier`); add
    the debug header when it is on.

    :param committed: Clusters with tokens the request's session committed
        writes to.
    """
    context: _RequestContext | None = g.get("_partition")
    if carrier is not None:
        carrier.write(
            request,
            response,
            committed,
            context.positions if context is not None else None,
            context.sent if context is not None else 0,
        )
    if context is not None and context.routes is not None:
        response.headers[ROUTE_HEADER] = describe_routes(context.routes)
    return response


def reset_request(exc: BaseException | None = None) -> None:
    """Restore the plan and the trace the request started with."""
    context: _RequestContext | None = g.pop("_partition", None)
    if context is None:
        return
    if context.plan_token is not None:
        _plan.reset(context.plan_token)
    if context.routes_token is not None:
        _routes.reset(context.routes_token)
