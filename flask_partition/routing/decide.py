"""The decision: which engine of a cluster a statement goes to, and why.

:func:`decide` takes the cluster, the statement's intent
(:mod:`~flask_partition.routing.classify`), the plan of the context
(:mod:`~flask_partition.routing.plan`) and what this session did so far
(:class:`SessionRouting`), and returns a :class:`Decision`. It knows nothing
of SQLAlchemy sessions, so each routing rule of :doc:`/replicas` can be
tested with plain objects.
"""

from __future__ import annotations

import typing as t

import sqlalchemy as sa

from .. import _sqla
from ..errors import ReadOnlyError
from ..replicas import Cluster
from .classify import Intent
from .plan import Plan
from .plan import Role


class Decision(t.NamedTuple):
    """Where a statement goes.

    :param engine: The engine that runs it.
    :param reason: Why, for the log, the ``routed`` signal and the debug
        header.
    :param writes: The statement may write: the cluster now counts as
        written by the session.
    """

    engine: sa.Engine
    reason: str
    writes: bool = False


class SessionRouting:
    """What one session's past statements mean for its next ones.

    .. versionadded:: 0.1.0
    """

    __slots__ = ("written", "replica_of", "reused", "failed")

    def __init__(self) -> None:
        #: Names of the clusters this session wrote to: read from primaries.
        self.written: set[str | None] = set()
        #: The engine each cluster's reads go to for this session.
        self.replica_of: dict[str | None, sa.Engine] = {}
        #: Clusters whose chosen replica answered more than once.
        self.reused: set[str | None] = set()
        #: Replicas that failed in this session.
        self.failed: set[sa.Engine] = set()


def decide(
    cluster: Cluster,
    intent: Intent,
    plan: Plan,
    state: SessionRouting,
    clause: sa.ClauseElement | None = None,
) -> Decision:
    """Choose the engine of ``cluster`` for a statement.

    :param cluster: The cluster the statement belongs to.
    :param intent: What the statement may do.
    :param plan: The routing plan of the current context.
    :param state: The session's routing state; updated (the chosen
        replica, the written clusters).
    :param clause: The statement, named in errors.
    :raises ReadOnlyError: A write inside a read-only block; nothing is
        sent.
    """
    if intent is Intent.READ:
        if plan.role is Role.PRIMARY:
            return Decision(cluster.primary, "use_primary")
        if cluster.name in state.written:
            return Decision(cluster.primary, "written by this session")
        return read_engine(cluster, plan, state)
    if plan.read_only:
        if intent is Intent.WRITE:
            raise ReadOnlyError(
                f"Cannot execute {describe(clause)} on {cluster.label} inside"
                f" {plan.pinned_by!r}: it only allows reads. Nothing was sent to"
                " the database. Move the write out of the block or use"
                " 'use_primary'."
            )
        return raw_on_replica(cluster, plan, state)
    state.written.add(cluster.name)
    reason = "write" if intent is Intent.WRITE else "raw SQL"
    return Decision(cluster.primary, reason, writes=True)


def read_engine(cluster: Cluster, plan: Plan, state: SessionRouting) -> Decision:
    """The session's engine for reads of ``cluster``: one replica for the
    whole session (monotonic reads), chosen on first use among the healthy
    replicas that have replayed the client's token, else the primary.
    """
    if not cluster.replicas:
        return Decision(cluster.primary, "no replicas")
    name = cluster.name
    engine = state.replica_of.get(name)
    positions = plan.positions
    position = positions.get(name) if positions else None
    if engine is not None:
        index = None if position is None else cluster.index_of(engine)
        if index is None or cluster.reached(index, position):  # type: ignore[arg-type]
            state.reused.add(name)
            return Decision(engine, "the session's choice")
    engine, reason = cluster.choose(position, state.failed)
    state.replica_of[name] = engine
    state.reused.discard(name)
    return Decision(engine, reason)


def raw_on_replica(cluster: Cluster, plan: Plan, state: SessionRouting) -> Decision:
    """Raw SQL under ``use_replica``: the user accepted a replica, whose
    database refuses writes itself. The client's token is not applied (it
    could send the SQL to the primary); with no usable replica the SQL is
    refused, since it may write and a primary would accept it.

    :raises ReadOnlyError: When only the primary could run it.
    """
    if not cluster.replicas:
        # Documented: a cluster without replicas has only its primary.
        return Decision(cluster.primary, "no replicas")
    name = cluster.name
    engine = state.replica_of.get(name)
    reason = "raw SQL under use_replica"
    if engine is cluster.primary and name in state.reused:
        # The session's replica failed after answering: another one may be
        # behind what it saw, and the primary would accept a write.
        reason = "the session's replica failed"
    elif engine is None or engine is cluster.primary:
        engine, reason = cluster.choose(None, state.failed)
        if engine is not cluster.primary:
            state.replica_of[name] = engine
    if engine is cluster.primary:
        raise ReadOnlyError(
            f"Cannot run raw SQL on {cluster.label} inside {plan.pinned_by!r}:"
            f" {reason}, and the primary would accept a write. Nothing was sent"
            " to the database. Use select() constructs, or run it outside the"
            " block."
        )
    return Decision(engine, "raw SQL under use_replica")


def reroute(
    state: SessionRouting,
    failed: sa.Engine,
    clusters: t.Mapping[str | None, Cluster],
) -> list[tuple[Cluster, Decision]] | None:
    """Move the clusters whose chosen replica is ``failed`` elsewhere.

    A cluster whose replica already answered this session goes to the
    primary for the rest of the session: another replica may be behind what
    was already seen. Otherwise the next statement chooses again.

    :param clusters: Every cluster by name.
    :return: ``None`` when the statement must not run again (the replica
        had failed before, or no cluster used it); else the clusters moved
        to their primary, for reporting.
    """
    if failed in state.failed:
        return None
    state.failed.add(failed)
    moved = False
    pinned: list[tuple[Cluster, Decision]] = []
    for name, engine in list(state.replica_of.items()):
        if engine is not failed:
            continue
        cluster = clusters[name]
        if name in state.reused:
            state.replica_of[name] = cluster.primary
            pinned.append(
                (cluster, Decision(cluster.primary, "the session's replica failed"))
            )
        else:
            del state.replica_of[name]
        moved = True
    return pinned if moved else None


def describe(clause: sa.ClauseElement | None) -> str:
    """Name a statement's kind for an error message: ``INSERT``, ``a
    flush``, ``SELECT ... FOR UPDATE/SHARE``.
    """
    if clause is None:
        return "a flush"
    if isinstance(clause, sa.Select):
        if _sqla.select_for_update(clause) is not None:
            return "SELECT ... FOR UPDATE/SHARE"
        return "a SELECT calling a sequence"
    name = getattr(clause, "__visit_name__", type(clause).__name__)
    if isinstance(name, str) and name in ("insert", "update", "delete"):
        return name.upper()
    return f"{type(clause).__name__} statement"
