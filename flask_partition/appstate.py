"""What :meth:`PartitionDB.init_app <flask_partition.PartitionDB.init_app>`
built for an application, found through ``app.extensions["partition"]``.

The health checks and the ``flask partition`` commands look the extension up
here instead of importing :mod:`flask_partition.extension`, so that the
extension can leave them out of its own imports. :class:`AppState` names
what they use of :class:`~flask_partition.extension.PartitionState`.
"""

from __future__ import annotations

import typing as t

from flask import current_app

if t.TYPE_CHECKING:
    from flask import Flask

    from .config import Topology
    from .schema import SchemaOwner
    from .topology import Router


class AppState(t.Protocol):
    """What the checks and commands use of one application's state."""

    @property
    def db(self) -> SchemaOwner:
        """The extension."""

    @property
    def topology(self) -> Topology:
        """The parsed configuration."""

    @property
    def router(self) -> Router:
        """The application's clusters and shards."""


class _Extension(t.Protocol):
    def get_state(self, app: Flask | None = None) -> AppState: ...


def app_state(app: Flask | None = None) -> AppState:
    """Return what the extension built for ``app`` (default: the current
    application).

    :raises RuntimeError: If ``app`` has no :class:`~flask_partition.PartitionDB`.
    """
    if app is None:
        app = t.cast("Flask", current_app._get_current_object())  # type: ignore[attr-defined]
    db = app.extensions.get("partition")
    if db is None:
        raise RuntimeError(
            f"The Flask app {app.name!r} has no 'PartitionDB'. Call"
            " 'db.init_app(app)' first."
        )
    return t.cast("_Extension", db).get_state(app)
