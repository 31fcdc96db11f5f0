"""Recovery of two-phase commits a crash left prepared.

:func:`recover` lists Flask-Partition's prepared transactions on every
primary and commits or rolls them back as the commit record says.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import typing as t

import sqlalchemy as sa

from ..replicas import Cluster
from .twophase import commit_log
from .twophase import XID_PATTERN
from .twophase import XID_PREFIX

if t.TYPE_CHECKING:
    from ..topology import Router

_log = logging.getLogger("flask_partition")


@dataclasses.dataclass(frozen=True)
class InDoubt:
    """A prepared transaction left by a two-phase commit, and what recovery
    does with it.

    :param cluster: The cluster's label, e.g. ``shard 'eu'``.
    :param gid: The prepared transaction's id.
    :param prepared_at: When it was prepared.
    :param decision: ``"commit"`` (the commit record exists),
        ``"rollback"`` (it does not) or ``"wait"`` (younger than
        ``min_age``: its commit may still be running).

    .. versionadded:: 0.1.0
    """

    cluster: str
    gid: str
    prepared_at: datetime.datetime
    decision: str


def recover(
    router: Router, *, dry_run: bool = False, min_age: float = 60.0
) -> list[InDoubt]:
    """Find the prepared transactions Flask-Partition left on every cluster
    (only its own ids, only the configured database) and commit or roll
    them back as the commit record says.

    :param router: The application's router.
    :param dry_run: Only report the decisions.
    :param min_age: Seconds a prepared transaction must be old before it is
        resolved: a younger one may belong to a commit still in progress.
    :return: Every prepared transaction found, with its decision.

    .. versionadded:: 0.1.0
    """
    found = [item for cluster in router.by_name.values() for item in _prepared(cluster)]
    if not found:
        return []
    decided = _decided(router, sorted({item.gtrid for item in found}))
    results: list[InDoubt] = []
    for item in found:
        if item.age < min_age:
            decision = "wait"
        else:
            decision = "commit" if item.gtrid in decided else "rollback"
        results.append(
            InDoubt(item.cluster.label, item.gid, item.prepared_at, decision)
        )
        if not dry_run and decision != "wait":
            _finish(item, commit=decision == "commit")
    if not dry_run:
        done = {i.gtrid for i in found if i.gtrid in decided and i.age >= min_age}
        done -= {i.gtrid for i in found if i.age < min_age}
        if done:
            with router.default.primary.connect() as connection:
                connection.execute(
                    commit_log.delete().where(commit_log.c.gtrid.in_(sorted(done)))
                )
                connection.commit()
    return results


@dataclasses.dataclass(frozen=True)
class _Prepared:
    cluster: Cluster
    gid: str
    gtrid: str
    prepared_at: datetime.datetime
    age: float


def _prepared(cluster: Cluster) -> list[_Prepared]:
    """Flask-Partition's prepared transactions on a PostgreSQL primary."""
    if cluster.primary.dialect.name != "postgresql":
        return []
    with cluster.primary.connect() as connection:
        rows = connection.execute(
            sa.text(
                "SELECT gid, prepared, extract(epoch FROM now() - prepared)"
                " FROM pg_prepared_xacts"
                " WHERE database = current_database() AND gid LIKE :prefix"
                " ORDER BY prepared"
            ),
            {"prefix": f"{XID_PREFIX}.%"},
        ).all()
    found = []
    for gid, prepared_at, age in rows:
        match = XID_PATTERN.match(gid)
        if match is not None:
            found.append(
                _Prepared(cluster, gid, match.group(1), prepared_at, float(age))
            )
    return found


def _decided(router: Router, gtrids: list[str]) -> set[str]:
    """The global ids among ``gtrids`` that have a commit record."""
    with router.default.primary.connect() as connection:
        if not sa.inspect(connection).has_table(commit_log.name):
            return set()
        return set(
            connection.scalars(
                sa.select(commit_log.c.gtrid).where(commit_log.c.gtrid.in_(gtrids))
            )
        )


def _finish(item: _Prepared, *, commit: bool) -> None:
    verb = "COMMIT PREPARED" if commit else "ROLLBACK PREPARED"
    with item.cluster.primary.connect() as connection:
        connection = connection.execution_options(isolation_level="AUTOCOMMIT")
        connection.execute(
            sa.text(f"{verb} :gid").bindparams(
                sa.bindparam("gid", item.gid, literal_execute=True)
            )
        )
    _log.warning("recover: %s %s on %s", verb, item.gid, item.cluster.label)
