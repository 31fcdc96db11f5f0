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
