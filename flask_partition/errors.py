"""Public exceptions.

Each one subclasses the SQLAlchemy error that generic handlers already catch, so
code written for Flask-SQLAlchemy keeps working.
"""

from __future__ import annotations

import sqlalchemy.exc as sa_exc


class ReadOnlyError(sa_exc.InvalidRequestError):
    """A write was attempted where only reads are allowed, for example inside
    :func:`~flask_partition.use_replica`.

    It is raised before any SQL is sent, so nothing is written.

    .. versionadded:: 0.1.0
    """


class UnknownClusterError(sa_exc.UnboundExecutionError):
    """A model, table or argument names a bind that the application did not
    configure.

    .. versionadded:: 0.1.0
    """


class CrossClusterError(sa_exc.UnboundExecutionError):
    """One statement refers to tables that live in different clusters, which no
    single database can answer.

    .. versionadded:: 0.1.0
    """


class UnknownShardError(UnknownClusterError):
    """A shard name (from code, a shard map or a request) is not configured in
    ``PARTITION_SHARDS``. The message names it and the configured shards.

    .. versionadded:: 0.1.0
    """


class ShardingError(sa_exc.InvalidRequestError):
    """Base class of the errors that keep sharded data where it belongs.

    .. versionadded:: 0.1.0
    """


class ShardKeyError(ShardingError):
    """A sharded row has no shard key value, its key was changed, or its key
    maps to another shard than the one pinned with
    :func:`~flask_partition.use_shard`. Raised before any SQL is sent.

    .. versionadded:: 0.1.0
    """


class ScatterError(ShardingError):
    """A statement would run on every shard and that is not allowed or not
    correct: a write without a shard, or a read whose results cannot be
    merged exactly (for example ``avg()`` or a window function).

    .. versionadded:: 0.1.0
    """


class AmbiguousShardError(ShardingError, sa_exc.MultipleResultsFound):
    """:meth:`Session.get <sqlalchemy.orm.Session.get>` found the primary key
    on more than one shard. Give the shard (``use_shard``,
    ``identity_token=``) or use keys unique across shards.

    .. versionadded:: 0.1.0
    """


class PrimaryUnavailableError(sa_exc.OperationalError):
    """A cluster's primary cannot be reached: the connection failed or broke.

    Writes (and reads pinned to the primary) fail with it while reads that
    may use replicas keep working. The transaction was not committed unless
    the connection broke during the COMMIT itself. Map it to ``503 Service
    Unavailable`` in the application::

        @app.errorhandler(PrimaryUnavailableError)
        def primary_down(error):
            return {"error": "try again shortly"}, 503

    :attr:`cluster` names the cluster (``None`` for the default one).

    .. versionadded:: 0.1.0
    """

    #: The bind or shard name of the cluster, ``None`` for the default one.
    cluster: str | None = None


class CrossShardWriteError(ShardingError):
    """In the ``"single"`` commit mode, a unit of work wrote (or was about
    to write) to more than one shard. Raised before the SQL for the second
    shard is sent; roll back and split the work per shard.

    .. versionadded:: 0.1.0
    """


class PartialCommitError(sa_exc.SQLAlchemyError):
    """A ``"best_effort"`` commit over several clusters failed after some of
    them committed. :attr:`committed` names the clusters whose commit went
    through, :attr:`failed` the cluster that failed, :attr:`rolled_back`
    those rolled back after it. The partial commit is also logged on the
    ``flask_partition`` logger.

    .. versionadded:: 0.1.0
    """

    def __init__(
        self,
        message: str,
        committed: list[str],
        failed: str,
        rolled_back: list[str],
    ) -> None:
        super().__init__(message)
        #: Labels of the clusters that committed.
        self.committed = committed
        #: Label of the cluster whose commit failed.
        self.failed = failed
        #: Labels of the clusters rolled back after the failure.
        self.rolled_back = rolled_back


class TwoPhaseError(sa_exc.InvalidRequestError):
    """The ``"two_phase"`` commit mode cannot be used here: a cluster is not
    PostgreSQL, its ``max_prepared_transactions`` is 0, or a prepared
    transaction could not be committed after the decision to commit (run
    ``flask partition recover``).

    .. versionadded:: 0.1.0
    """
