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

from .twophase import commit_log
from .twophase import XID_PATTERN
from .twophase import XID_PREFIX

if t.TYPE_CHECKING:
    from ..replicas import Cluster
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
    found: list[tuple[Cluster, str, str, datetime.datetime, float]] = []
    for cluster in router.by_name.values():
        if cluster.primary.dialect.name != "postgresql":
            continue
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
        for gid, prepared_at, age in rows:
            match = XID_PATTERN.match(gid)
            if match is not None:
                found.append((cluster, gid, match.group(1), prepared_at, float(age)))
    if not found:
        return []
    gtrids = sorted({item[2] for item in found})
    with router.default.primary.connect() as connection:
        if sa.inspect(connection).has_table(commit_log.name):
            decided = set(
                connection.scalars(
                    sa.select(commit_log.c.gtrid).where(commit_log.c.gtrid.in_(gtrids))
                )
            )
        else:
            decided = set()
    results: list[InDoubt] = []
    for cluster, gid, gtrid, prepared_at, age in found:
        if age < min_age:
            decision = "wait"
        else:
            decision = "commit" if gtrid in decided else "rollback"
        results.append(InDoubt(cluster.label, gid, prepared_at, decision))
        if dry_run or decision == "wait":
            continue
        verb = "COMMIT PREPARED" if decision == "commit" else "ROLLBACK PREPARED"
        with cluster.primary.connect() as connection:
            connection = connection.execution_options(isolation_level="AUTOCOMMIT")
            connection.execute(
                sa.text(f"{verb} :gid").bindparams(
                    sa.bindparam("gid", gid, literal_execute=True)
                )
            )
        _log.warning("recover: %s %s on %s", verb, gid, cluster.label)
    if not dry_run:
        done = {
            gtrid
            for _, _, gtrid, _, age in found
            if gtrid in decided and age >= min_age
        }
        waiting = {gtrid for _, _, gtrid, _, age in found if age < min_age}
        done -= waiting
        if done:
            with router.default.primary.connect() as connection:
                connection.execute(
                    commit_log.delete().where(commit_log.c.gtrid.in_(sorted(done)))
                )
                connection.commit()
    return results
