"""Commits of a session that wrote to several clusters.

SQLAlchemy commits a session's connections one after another in no fixed
order, and says nothing when the second fails after the first committed.
Flask-Partition replaces that last step of the root transaction's commit,
keeping the rest of SQLAlchemy's machinery (``before_commit``, the flush,
``Connection.begin_twophase()``, ``after_commit``):

``"best_effort"``
    Commit the clusters in a fixed order (the default cluster, the binds,
    then the shards, each in configured order). If one fails after others
    committed, roll back the rest, log what committed and raise
    :class:`~flask_partition.errors.PartialCommitError`.
``"single"``
    Refuse a unit of work that writes to two shards, before the SQL for the
    second is sent; otherwise as ``"best_effort"``.
``"two_phase"``
    Every connection is a PostgreSQL two-phase transaction with a
    correlated id (``fp1.<gtrid>.<n>``). All are prepared; then a commit
    record is written on the default cluster's primary; then each is
    committed. :func:`recover` finishes what a crash left prepared: commit
    if the record exists, else roll back.
"""

from __future__ import annotations

import contextvars
import dataclasses
import datetime
import logging
import re
import typing as t
import uuid

import sqlalchemy as sa
import sqlalchemy.orm as sa_orm
from sqlalchemy.orm.session import SessionTransactionState

from .errors import CrossShardWriteError
from .errors import PartialCommitError
from .errors import TwoPhaseError
from .replicas import safe_message
from .routing import _plan

if t.TYPE_CHECKING:
    from .replicas import Cluster
    from .session import PartitionSession
    from .session import Router

_log = logging.getLogger("flask_partition")

#: The prefix of the prepared transaction ids Flask-Partition creates.
XID_PREFIX: t.Final = "fp1"
_XID = re.compile(r"^fp1\.([0-9a-f]{32})\.(\d+)$")

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


class PartitionTransaction(sa_orm.SessionTransaction):
    """The root transaction of a :class:`~flask_partition.PartitionSession`:
    SQLAlchemy's own, with the final commit of its connections replaced as
    the commit mode says.

    .. versionadded:: 0.1.0
    """

    _partition_committed = False

    def _connection_for_bind(self, bind: t.Any, execution_options: t.Any) -> t.Any:
        # Every connection of the session's transaction is opened here
        # (subtransactions ask their root), the flush's too: in two-phase
        # mode, the new connection's transaction gets the correlated id.
        gtrid = t.cast("PartitionSession", self.session)._gtrid
        if gtrid is None or self._parent is not None:
            return super()._connection_for_bind(bind, execution_options)
        token = current_gtrid.set(gtrid)
        try:
            return super()._connection_for_bind(bind, execution_options)
        finally:
            current_gtrid.reset(token)

    def commit(self, _to_root: bool = False) -> None:
        if self._parent is None and not self._partition_committed:
            if self._state is not SessionTransactionState.PREPARED:
                # As SessionTransaction.commit and prepare(): before_commit,
                # the flush and, in two-phase mode, PREPARE TRANSACTION on
                # every connection.
                self._prepare_impl()
            self._partition_committed = True
            session = t.cast("PartitionSession", self.session)
            _commit_connections(session, self)
        super().commit(_to_root)


def _commit_connections(
    session: PartitionSession, transaction: PartitionTransaction
) -> None:
    """Commit the transaction's connections in cluster order; mark them done
    so SQLAlchemy's own loop, which follows, skips them.
    """
    entries: dict[int, tuple[t.Any, ...]] = {}
    for entry in transaction._connections.values():
        if entry[2]:  # should_commit
            entries[id(entry[0])] = entry
    if len(entries) < 2:
        # One connection: nothing to order, and all or nothing already;
        # SQLAlchemy commits it (COMMIT PREPARED in two-phase mode).
        return
    router = session.router
    ordered = sorted(entries.values(), key=lambda e: router.rank(e[0].engine))
    for key, entry in list(transaction._connections.items()):
        transaction._connections[key] = (entry[0], entry[1], False, entry[3])
    labels = [router.label_of(e[0].engine) for e in ordered]
    if session._txn_mode == "two_phase":
        _commit_prepared(session, ordered, labels)
        return
    committed: list[str] = []
    for index, entry in enumerate(ordered):
        try:
            entry[1].commit()
        except Exception as error:
            rolled_back = labels[index + 1 :]
            for rest in ordered[index + 1 :]:
                try:
                    rest[1].rollback()
                except Exception:  # noqa: S110 - already failing; logged below
                    pass
            if not committed:
                raise
            message = (
                f"Partial commit: {', '.join(committed)} committed, then the"
                f" commit of {labels[index]} failed"
                f" ({safe_message(error, entry[0].engine)});"
                f" rolled back: {', '.join(rolled_back) or 'nothing else'}."
                " Use 'two_phase' mode where this must not happen."
            )
            _log.error(message)
            raise PartialCommitError(
                message, committed, labels[index], rolled_back
            ) from error
        committed.append(labels[index])


def _commit_prepared(
    session: PartitionSession, ordered: list[tuple[t.Any, ...]], labels: list[str]
) -> None:
    gtrid = session._gtrid
    assert gtrid is not None
    write_commit_record(session.router, gtrid)
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
    with session.router.default.primary.connect() as connection:
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


# -- session hooks --------------------------------------------------------


def on_transaction_create(
    session: PartitionSession, transaction: sa_orm.SessionTransaction
) -> None:
    """Make a new root transaction a :class:`PartitionTransaction` and fix
    its commit mode; in two-phase mode, give it a global transaction id.
    """
    if transaction.parent is not None:
        return
    # SessionTransaction objects are created inside SQLAlchemy (autobegin,
    # begin()); switching the class of the new root object is the one way
    # to replace its commit without copying SQLAlchemy's code.
    transaction.__class__ = PartitionTransaction
    mode = _plan.get().commit_mode or session.router.commit_mode
    session._txn_mode = mode
    if mode == "two_phase":
        ensure_two_phase(session.router)
        session.twophase = True
        session._gtrid = uuid.uuid4().hex
    else:
        session.twophase = False
        session._gtrid = None


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
    router.two_phase_checked = True


def _sqlalchemy_version() -> tuple[int, ...]:
    parts = []
    for part in sa.__version__.split(".")[:3]:
        digits = "".join(c for c in part if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


# -- recovery -------------------------------------------------------------


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
            match = _XID.match(gid)
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


def check_single(session: PartitionSession, shards: t.Iterable[str]) -> None:
    """In ``"single"`` mode, refuse writing to more than one shard in one
    transaction.

    :param shards: Shards about to be written.
    :raises CrossShardWriteError: Before any SQL for a second shard is sent.
    """
    shards_of_router = session.router.shards
    touched = {n for n in session._txn_written if n in shards_of_router}
    touched.update(shards)
    if len(touched) > 1:
        names = ", ".join(repr(s) for s in sorted(touched))
        raise CrossShardWriteError(
            f"This unit of work writes to shards {names}, but the commit mode"
            " is 'single': one transaction may write to one shard only."
            " Nothing more was sent; roll back, then write each shard in its"
            " own transaction, or use the 'two_phase' commit mode."
        )
