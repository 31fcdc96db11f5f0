"""Two-phase commit over the primaries of several clusters.

Every connection of a ``"two_phase"`` session is a PostgreSQL two-phase
transaction with a correlated id (``fp1.<gtrid>.<n>``, ``n`` the cluster's
commit rank). All are prepared (SQLAlchemy's ``prepare()``); then a commit
record is written on the default cluster's primary
(:func:`write_commit_record`); then each is committed
(:func:`commit_prepared`). :func:`~flask_partition.transactions.recovery.recover`
finishes what a crash left prepared: commit if the record exists, else roll
back.
"""

from __future__ import annotations

import contextvars
import logging
import re
import typing as t

import sqlalchemy as sa

from ..errors import TwoPhaseError
from ..replicas import safe_message

if t.TYPE_CHECKING:
    from ..topology import Router

_log = logging.getLogger("flask_partition")

#: The prefix of the prepared transaction ids Flask-Partition creates.
XID_PREFIX: t.Final = "fp1"
XID_PATTERN = re.compile(r"^fp1\.([0-9a-f]{32})\.(\d+)$")

#: The commit records of two-phase commits, on the default cluster's primary.
commit_log = sa.Table(
    "partition_commit_log",
    sa.MetaData(),
    sa.Column("gtrid", sa.String(32), primary_key=True),
    sa.Column(
        "committed_at",
        sa.DateTime(timezone=True),
        nullable=False,
        server_default=sa.func.now(),
    ),
)


#: The global id of the two-phase transaction whose connection is being
#: opened, read by the primaries' ``create_xid`` (see :func:`install_xid`).
current_gtrid: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "flask_partition_gtrid", default=None
)


def install_xid(engine: sa.Engine, rank: int) -> None:
    """Make ``engine`` name its two-phase transactions ``fp1.<gtrid>.<rank>``
    while :data:`current_gtrid` is set.

    SQLAlchemy's session begins them with ``Connection.begin_twophase()``,
    which asks the dialect for an id; psycopg fixes it at that moment
    (``tpc_begin``), so the id must come from there.
    """
    dialect = engine.dialect
    original = dialect.create_xid

    def create_xid() -> t.Any:
        gtrid = current_gtrid.get()
        return original() if gtrid is None else f"{XID_PREFIX}.{gtrid}.{rank}"

    dialect.create_xid = create_xid  # type: ignore[method-assign]


def ensure_two_phase(router: Router) -> None:
    """Check once that every primary can take part in two-phase commits and
    that the commit log exists.

    :raises TwoPhaseError: A primary is not PostgreSQL, or its
        ``max_prepared_transactions`` is 0.
    """
    if router.two_phase_checked:
        return
    if _sqlalchemy_version() < (2, 0, 58):
        # Earlier releases fail to roll back the other connections when one
        # PREPARE fails (sqlalchemy/sqlalchemy#13356): half-prepared work.
        raise TwoPhaseError(
            f"The 'two_phase' commit mode needs SQLAlchemy 2.0.58 or later"
            f" (this is {sa.__version__}): older releases (2.0.48 was tested)"
            " do not roll back the other clusters when one PREPARE fails."
            " Upgrade SQLAlchemy."
        )
    for cluster in router.by_name.values():
        engine = cluster.primary
        if engine.dialect.name != "postgresql":
            raise TwoPhaseError(
                f"The 'two_phase' commit mode needs PostgreSQL, but the primary"
                f" of {cluster.label} is {engine.dialect.name!r}. Use"
                " 'best_effort' or 'single'."
            )
        with engine.connect() as connection:
            limit = connection.exec_driver_sql(
                "SHOW max_prepared_transactions"
            ).scalar_one()
        if int(limit) <= 0:
            raise TwoPhaseError(
                f"The 'two_phase' commit mode needs prepared transactions, but"
                f" 'max_prepared_transactions' is 0 on the primary of"
                f" {cluster.label}. Set it above 0 in postgresql.conf (for"
                " example to max_connections) and restart that server."
            )
    commit_log.create(router.default.primary, checkfirst=True)
    for cluster in router.by_name.values():
        install_xid(cluster.primary, router.rank(cluster.primary))
    router.two_phase_checked = True


def _sqlalchemy_version() -> tuple[int, ...]:
    parts = []
    for part in sa.__version__.split(".")[:3]:
        digits = "".join(c for c in part if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def commit_prepared(
    router: Router, gtrid: str, ordered: list[tuple[t.Any, ...]], labels: list[str]
) -> None:
    """Write the commit record, then COMMIT PREPARED every connection in
    order, then delete the record.

    :param ordered: The transaction's connection entries in commit order.
    :param labels: Their clusters' labels, for messages.
    :raises TwoPhaseError: A COMMIT PREPARED failed after the decision.
    """
    write_commit_record(router, gtrid)
    failed: list[str] = []
    for entry, label in zip(ordered, labels, strict=True):
        try:
            entry[1].commit()
        except Exception as error:
            _log.error(
                "two-phase commit %s: COMMIT PREPARED on %s failed (%s); the"
                " commit is decided, 'flask partition recover' completes it",
                gtrid,
                label,
                safe_message(error, entry[0].engine),
            )
            failed.append(label)
    if failed:
        raise TwoPhaseError(
            f"Two-phase commit {gtrid} is decided but {', '.join(failed)} could"
            " not be committed yet; their prepared transactions remain until"
            " 'flask partition recover' commits them."
        )
    with router.default.primary.connect() as connection:
        connection.execute(commit_log.delete().where(commit_log.c.gtrid == gtrid))
        connection.commit()


def write_commit_record(router: Router, gtrid: str) -> None:
    """Record the decision to commit ``gtrid``: once this row exists,
    :func:`recover` commits what a crash left prepared. Written in its own
    transaction after every PREPARE succeeded and before any COMMIT
    PREPARED.
    """
    with router.default.primary.connect() as connection:
        connection.execute(commit_log.insert().values(gtrid=gtrid))
        connection.commit()
