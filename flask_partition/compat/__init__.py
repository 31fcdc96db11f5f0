"""Flask-SQLAlchemy compatibility: what an application written for
Flask-SQLAlchemy 3.x needs to keep working after changing one import::

    from flask_partition import PartitionDB as SQLAlchemy

The rest of the package calls into this module at a few points:

-   :class:`SQLAlchemyCompat` is a base class of
    :class:`~flask_partition.PartitionDB`: ``db.Column`` and the other
    shortcuts, ``db.Table``, ``db.relationship``, ``db.get_engine``,
    ``db.bind_names``;
-   :class:`MetadataDict` is ``db.metadatas``, which also answers for shard
    names, so Flask-Migrate's multi-database template migrates the shards;
-   :func:`model_base` turns a Flask-SQLAlchemy style ``model_class`` into
    ``db.Model``, and :func:`install_query` gives it ``Model.query``;
-   :class:`Query` is the legacy query class with ``*_or_404`` and
    ``paginate``.

Reading the ``SQLALCHEMY_*`` keys is pure, so it lives in
:mod:`flask_partition.config` beside the ``PARTITION_*`` keys;
:func:`read_sqlalchemy_config`, :data:`SQLALCHEMY_KEYS` and
:data:`PARTITION_KEYS` are re-exported here.
"""

from __future__ import annotations

import dataclasses
import types
import typing as t

import sqlalchemy as sa
import sqlalchemy.exc as sa_exc
import sqlalchemy.orm as sa_orm
from flask import abort
from flask import current_app
from flask import has_app_context

from .. import config as _config
from ..config import PARTITION_KEYS as PARTITION_KEYS
from ..config import read_sqlalchemy_config as read_sqlalchemy_config
from ..config import SQLALCHEMY_KEYS as SQLALCHEMY_KEYS
from ..replicas import Cluster
from ..replicas import make_policy

if t.TYPE_CHECKING:
    from flask import Flask

    from ..topology import Router

from .models import FlaskModel as FlaskModel
from .models import model_base as model_base
from .models import Table as Table
from .query import install_query as install_query
from .query import Query as Query
from .query import QueryPagination as QueryPagination

_T = t.TypeVar("_T")


def with_engine_defaults(
    topology: _config.Topology, defaults: t.Mapping[str, t.Any]
) -> _config.Topology:
    """Put ``PartitionDB(engine_options=...)`` under every cluster's own
    engine options.

    :param topology: What :func:`~flask_partition.config.parse_config` read.
    :param defaults: The options given to the extension.
    """
    if not defaults:
        return topology

    def apply(cluster: _config.ClusterConfig) -> _config.ClusterConfig:
        options = {**defaults, **cluster.engine_options}
        return dataclasses.replace(
            cluster, engine_options=types.MappingProxyType(options)
        )

    return dataclasses.replace(
        topology,
        clusters=types.MappingProxyType(
            {name: apply(c) for name, c in topology.clusters.items()}
        ),
        shards=types.MappingProxyType(
            {name: apply(c) for name, c in topology.shards.items()}
        ),
    )


_NO_DEFAULT = (
    "No default database is configured: 'SQLALCHEMY_BINDS' is set but"
    " 'SQLALCHEMY_DATABASE_URI' is not. Give the model or table a"
    " '__bind_key__' from 'SQLALCHEMY_BINDS', pass"
    " bind_arguments={'bind_key': ...} for raw SQL, or set"
    " 'SQLALCHEMY_DATABASE_URI'."
)


def no_default_error() -> sa_exc.UnboundExecutionError:
    """The error for using the default cluster when only binds are set."""
    return sa_exc.UnboundExecutionError(_NO_DEFAULT)


def no_default_cluster() -> Cluster:
    """Stand in for the default cluster when only ``SQLALCHEMY_BINDS`` is
    set (the router needs one): its engine never connects, and raises
    :func:`no_default_error` instead.
    """

    def refuse() -> t.NoReturn:
        raise no_default_error()

    engine = sa.create_engine("sqlite://", creator=refuse, poolclass=sa.pool.NullPool)
    return Cluster(None, engine, [], make_policy("round_robin"))


# SQLAlchemyCompat's attributes Query and Table hide these names in its body.
_Query = Query
_Table = Table


class SQLAlchemyCompat:
    """Flask-SQLAlchemy's ``SQLAlchemy`` API beyond what
    :class:`~flask_partition.PartitionDB` defines itself; its base class.

    Names of :mod:`sqlalchemy` and :mod:`sqlalchemy.orm` are available as
    attributes: ``db.Column``, ``db.Integer``, ``db.String``,
    ``db.ForeignKey``, ``db.select``, ``db.case``, ``db.func`` and so on, and
    ``db.event`` is :mod:`sqlalchemy.event`. Type checkers see them as
    ``Any``; import them from SQLAlchemy for precise types.

    .. versionadded:: 0.1.0
    """

    #: The legacy query class of ``Model.query``, ``db.session.query()`` and
    #: dynamic relationships; the ``query_class`` argument, :class:`Query`
    #: by default.
    Query: type[_Query[t.Any]]
    #: A :class:`Table` that picks the metadata of its ``bind_key``.
    Table: type[_Table]

    if t.TYPE_CHECKING:
        session: sa_orm.scoped_session[t.Any]

        def get_router(self, app: Flask | None = None) -> Router: ...

        @property
        def engines(self) -> t.Mapping[str | None, sa.Engine]: ...

    def _init_compat(self, query_class: type[_Query[t.Any]]) -> None:
        self.Query = query_class
        self.Table = t.cast(
            "type[_Table]",
            type(
                "Table", (_Table,), {"_metadata_source": self, "__module__": __name__}
            ),
        )

    def get_or_404(
        self,
        entity: type[_T],
        ident: t.Any,
        *,
        description: str | None = None,
        **kwargs: t.Any,
    ) -> _T:
        """Return the row with primary key ``ident``, or abort with 404.

        :param entity: The model class.
        :param ident: The primary key value.
        :param description: The 404 error's description.
        :param kwargs: Passed to :meth:`~sqlalchemy.orm.Session.get`.
        """
        value = self.session.get(entity, ident, **kwargs)
        if value is None:
            abort(404, description=description)
        return value

    def first_or_404(
        self, statement: sa.Select[t.Any], *, description: str | None = None
    ) -> t.Any:
        """Return the first scalar of ``statement``, or abort with 404."""
        value = self.session.execute(statement).scalar()
        if value is None:
            abort(404, description=description)
        return value

    def one_or_404(
        self, statement: sa.Select[t.Any], *, description: str | None = None
    ) -> t.Any:
        """Return the only scalar of ``statement``; abort with 404 when there
        is none or more than one.
        """
        try:
            return self.session.execute(statement).scalar_one()
        except (sa_exc.NoResultFound, sa_exc.MultipleResultsFound):
            abort(404, description=description)

    def get_engine(self, bind_key: str | None = None, **kwargs: t.Any) -> sa.Engine:
        """Return the primary engine of ``bind_key`` for the current app, as
        Flask-SQLAlchemy's deprecated ``get_engine`` (Flask-Migrate's
        templates call it). Prefer :attr:`engines`.

        A shard name returns the shard's primary engine, so that
        Flask-Migrate's multi-database template migrates each shard (see
        :doc:`/migrations`).

        :param bind_key: The bind key or shard name, ``None`` for the
            default cluster.
        :param kwargs: ``bind=`` is accepted for ``bind_key``.
        :raises UnknownClusterError: When no bind or shard has that name.

        .. versionchanged:: 0.1.0
            Shard names are accepted.
        """
        if "bind" in kwargs:
            bind_key = kwargs.pop("bind")
        if kwargs:
            raise TypeError(
                f"'get_engine' got unexpected arguments {', '.join(map(repr, kwargs))}."
            )
        engines = self.engines
        if bind_key in engines:
            return engines[bind_key]
        if bind_key is None:
            raise no_default_error()
        router = self.get_router()
        shard = router.shards.get(bind_key)
        if shard is not None:
            return shard.primary
        return router.cluster(bind_key).primary

    def bind_names(self) -> list[str]:
        """Return the names of the current app's binds, then of its shards,
        in configuration order: every database besides the default one.

        Flask-Migrate's multi-database template calls it when
        ``SQLALCHEMY_BINDS`` is not set, and writes an ``upgrade_<name>()``
        function for each name into every revision; with the shards listed,
        ``flask db upgrade`` migrates every shard (see :doc:`/migrations`).
        Bind and shard names share one namespace, so they never collide.

        .. versionchanged:: 0.1.0
            Shard names are listed after the binds.
        """
        binds = [name for name in self.engines if name is not None]
        return binds + list(self.get_router().shards)

    def relationship(self, *args: t.Any, **kwargs: t.Any) -> t.Any:
        """:func:`sqlalchemy.orm.relationship`, with :attr:`Query` as the
        query class of ``lazy="dynamic"`` relationships and their backrefs.
        """
        return sa_orm.relationship(*args, **self._with_query_class(kwargs))

    def dynamic_loader(self, argument: t.Any, **kwargs: t.Any) -> t.Any:
        """:func:`sqlalchemy.orm.dynamic_loader`, with :attr:`Query` as the
        query class.
        """
        return sa_orm.dynamic_loader(argument, **self._with_query_class(kwargs))

    def _with_query_class(self, kwargs: dict[str, t.Any]) -> dict[str, t.Any]:
        kwargs.setdefault("query_class", self.Query)
        backref = kwargs.get("backref")
        if backref is not None:
            name, options = (backref, {}) if isinstance(backref, str) else backref
            kwargs["backref"] = (name, {"query_class": self.Query, **options})
        return kwargs

    def __getattr__(self, name: str) -> t.Any:
        if name == "event":
            return sa.event
        if name == "relation":
            return self.relationship
        if not name.startswith("_"):
            for module in (sa, sa_orm):
                if hasattr(module, name):
                    return getattr(module, name)
        raise AttributeError(
            f"{type(self).__name__!r} object has no attribute {name!r}"
        )


class MetadataDict(dict[str | None, sa.MetaData]):
    """The dict :attr:`db.metadatas <flask_partition.PartitionDB.metadatas>`
    returns: every MetaData by bind key, ``None`` for the default cluster.

    Its keys are the binds only, so code that loops over it, as
    Flask-SQLAlchemy's ``create_all`` does, never meets the shards. Looking
    up a shard name of the current application, which is not a key, returns
    :attr:`db.shard_metadata <flask_partition.PartitionDB.shard_metadata>`:
    Flask-Migrate's multi-database template asks ``db.metadatas[name]`` for
    every name of :meth:`~SQLAlchemyCompat.bind_names`, the shards included.
    ``get()`` and ``in`` see the keys only.

    :param metadatas: The MetaData by bind key.
    :param db: The extension whose shards answer lookups.

    .. versionadded:: 0.1.0
    """

    def __init__(
        self, metadatas: t.Mapping[str | None, sa.MetaData], db: t.Any
    ) -> None:
        super().__init__(metadatas)
        self._db = db

    def __missing__(self, key: str | None) -> sa.MetaData:
        if isinstance(key, str) and has_app_context():
            state = current_app.extensions.get("partition.state")
            if state is not None and state.db is self._db:
                if key in state.router.shards:
                    return t.cast(sa.MetaData, self._db.shard_metadata)
        raise KeyError(key)


def shell_context(
    db: SQLAlchemyCompat, base: type[t.Any]
) -> t.Callable[[], dict[str, t.Any]]:
    """Return a shell context processor adding ``db`` and every model to
    ``flask shell``, as Flask-SQLAlchemy's ``add_models_to_shell`` does.

    :param db: The extension.
    :param base: ``db.Model``.
    """

    def processor() -> dict[str, t.Any]:
        names: dict[str, t.Any] = {
            mapper.class_.__name__: mapper.class_ for mapper in base.registry.mappers
        }
        names["db"] = db
        return names

    return processor
