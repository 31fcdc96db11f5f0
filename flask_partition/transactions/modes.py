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
    correlated id; see :mod:`flask_partition.transactions.twophase`.
"""

from __future__ import annotations

import logging
import typing as t
import uuid

import sqlalchemy.orm as sa_orm

from .. import _sqla
from ..errors import CrossShardWriteError
from ..errors import PartialCommitError
from ..replicas import safe_message
from ..routing.plan import _plan
from .twophase import commit_prepared
from .twophase import current_gtrid
from .twophase import ensure_two_phase

if t.TYPE_CHECKING:
    from ..topology import Router

_log = logging.getLogger("flask_partition")


class TransactionState:
    """What a session's open transaction wrote, and how it commits.

    .. versionadded:: 0.1.0
    """

    __slots__ = ("mode", "gtrid", "written", "committed")

    def __init__(self, mode: str) -> None:
        #: The commit mode of the open transaction.
        self.mode = mode
        #: In two-phase mode, the open transaction's global id.
        self.gtrid: str | None = None
        #: Clusters written in the open transaction.
        self.written: set[str | None] = set()
        #: Clusters with consistency tokens whose writes committed, taken by
        #: the response (see :mod:`flask_partition.consistency`).
        self.committed: set[str | None] = set()


class _Session(t.Protocol):
    """What the commit modes need of a :class:`~flask_partition.PartitionSession`."""

    router: Router
    txn: TransactionState
    twophase: bool


class PartitionTransaction(sa_orm.SessionTransaction):
    """The root transaction of a :class:`~flask_partition.PartitionSession`:
    SQLAlchemy's own, with the final commit of its connections replaced as
    the commit mode says.

    .. versionadded:: 0.1.0
    """

    _partition_committed = False

    def close(self, invalidate: bool = False) -> None:
        # The root transaction ends (commit, rollback or close): what it
        # wrote no longer binds the next one. (A method, not an
        # after_transaction_end listener: that event fires for every
        # transaction of every session, savepoints and flushes included.)
        try:
            super().close(invalidate)
        finally:
            self.session.txn.written.clear()  # type: ignore[attr-defined]

    def commit(self, _to_root: bool = False) -> None:
        if self.parent is None and not self._partition_committed:
            if not _sqla.is_prepared(self):
                # As SessionTransaction.commit and prepare(): before_commit,
                # the flush and, in two-phase mode, PREPARE TRANSACTION on
                # every connection.
                _sqla.prepare(self)
            self._partition_committed = True
            _commit_connections(t.cast(_Session, self.session), self)
        super().commit(_to_root)


class TwoPhaseTransaction(PartitionTransaction):
    """The root transaction in ``"two_phase"`` mode: its connections'
    two-phase transactions get the correlated id. A class of its own, so
    connections of the other modes open without this override.

    .. versionadded:: 0.1.0
    """

    def _connection_for_bind(self, bind: t.Any, execution_options: t.Any) -> t.Any:
        # Every connection of the session's transaction is opened here
        # (subtransactions ask their root), the flush's too: in two-phase
        # mode, the new connection's transaction gets the correlated id.
        gtrid = self.session.txn.gtrid  # type: ignore[attr-defined]
        if gtrid is None or self.parent is not None:
            return super()._connection_for_bind(bind, execution_options)
        token = current_gtrid.set(gtrid)
        try:
            return super()._connection_for_bind(bind, execution_options)
        finally:
            current_gtrid.reset(token)


def _commit_connections(session: _Session, transaction: PartitionTransaction) -> None:
    """Commit the transaction's connections in cluster order; mark them done
    so SQLAlchemy's own loop, which follows, skips them.
    """
    entries: dict[int, tuple[t.Any, ...]] = {}
    for entry in _sqla.transaction_connections(transaction).values():
        if entry[2]:  # should_commit
            entries[id(entry[0])] = entry
    if len(entries) < 2:
        # One connection: nothing to order, and all or nothing already;
        # SQLAlchemy commits it (COMMIT PREPARED in two-phase mode).
        return
    router = session.router
    ordered = sorted(entries.values(), key=lambda e: router.rank(e[0].engine))
    _sqla.skip_commit(transaction)
    labels = [router.label_of(e[0].engine) for e in ordered]
    if session.txn.mode == "two_phase":
        assert session.txn.gtrid is not None
        commit_prepared(router, session.txn.gtrid, ordered, labels)
        return
    _commit_in_order(ordered, labels)


def _commit_in_order(ordered: list[tuple[t.Any, ...]], labels: list[str]) -> None:
    """``best_effort``: commit one by one; after a failure roll back the
    rest and report what committed.

    :raises PartialCommitError: When a commit failed after another one
        committed.
    """
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


# -- session hooks --------------------------------------------------------


def on_transaction_create(
    session: sa_orm.Session, transaction: sa_orm.SessionTransaction
) -> None:
    """Make a new root transaction a :class:`PartitionTransaction` and fix
    its commit mode; in two-phase mode, give it a global transaction id.
    """
    if transaction.parent is not None:
        return
    partition: _Session = session  # type: ignore[assignment]
    mode = _plan.get().commit_mode or partition.router.commit_mode
    partition.txn.mode = mode
    two_phase = mode == "two_phase"
    _sqla.replace_transaction_class(
        transaction, TwoPhaseTransaction if two_phase else PartitionTransaction
    )
    if two_phase:
        ensure_two_phase(partition.router)
        partition.twophase = True
        partition.txn.gtrid = uuid.uuid4().hex
    else:
        partition.twophase = False
        partition.txn.gtrid = None


def check_single(
    txn: TransactionState, shards_of_router: t.Container[str], shards: t.Iterable[str]
) -> None:
    """In ``"single"`` mode, refuse writing to more than one shard in one
    transaction.

    :param txn: The session's transaction state.
    :param shards_of_router: The configured shard names.
    :param shards: Shards about to be written.
    :raises CrossShardWriteError: Before any SQL for a second shard is sent.
    """
    touched = {n for n in txn.written if n in shards_of_router}
    touched.update(shards)
    if len(touched) > 1:
        names = ", ".join(repr(s) for s in sorted(t.cast("set[str]", touched)))
        raise CrossShardWriteError(
            f"This unit of work writes to shards {names}, but the commit mode"
            " is 'single': one transaction may write to one shard only."
            " Nothing more was sent; roll back, then write each shard in its"
            " own transaction, or use the 'two_phase' commit mode."
        )
