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
