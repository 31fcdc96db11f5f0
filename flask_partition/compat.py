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
import functools
import types
import typing as t

import sqlalchemy as sa
import sqlalchemy.exc as sa_exc
import sqlalchemy.orm as sa_orm
import sqlalchemy.sql.schema as sa_schema
from flask import abort
from flask import current_app
from flask import has_app_context
from sqlalchemy.ext.horizontal_shard import ShardedQuery

from . import config as _config
from .config import PARTITION_KEYS as PARTITION_KEYS
from .config import read_sqlalchemy_config as read_sqlalchemy_config
from .config import SQLALCHEMY_KEYS as SQLALCHEMY_KEYS
from .model import PartitionModel
from .pagination import fetch_page
from .pagination import Pagination
from .replicas import Cluster
from .replicas import make_policy

if t.TYPE_CHECKING:
    from flask import Flask

    from .model import MetadataSource
    from .topology import Router

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


class Query(ShardedQuery[_T]):
    """The legacy :class:`~sqlalchemy.orm.Query` of ``Model.query``,
    ``db.session.query()`` and ``lazy="dynamic"`` relationships, with
    Flask-SQLAlchemy's helpers.

    It is a :class:`~sqlalchemy.ext.horizontal_shard.ShardedQuery`, so
    ``set_shard()`` works too. Prefer ``db.session.execute(select(...))`` in
    new code.

    .. versionadded:: 0.1.0
    """

    def get_or_404(self, ident: t.Any, description: str | None = None) -> _T:
        """Like :meth:`~sqlalchemy.orm.Query.get` (which SQLAlchemy warns is
        legacy), but abort with 404 instead of returning ``None``.

        :param ident: The primary key.
        :param description: The 404 error's description.
        """
        value = self.get(ident)
        if value is None:
            abort(404, description=description)
        return value

    def first_or_404(self, description: str | None = None) -> _T:
        """Like :meth:`~sqlalchemy.orm.Query.first`, but abort with 404
        instead of returning ``None``.

        :param description: The 404 error's description.
        """
        value = self.first()
        if value is None:
            abort(404, description=description)
        return value

    def one_or_404(self, description: str | None = None) -> _T:
        """Like :meth:`~sqlalchemy.orm.Query.one`, but abort with 404 when
        there is no row or more than one.

        :param description: The 404 error's description.
        """
        try:
            return self.one()
        except (sa_exc.NoResultFound, sa_exc.MultipleResultsFound):
            abort(404, description=description)

    def paginate(
        self,
        *,
        page: int | None = None,
        per_page: int | None = None,
        max_per_page: int | None = None,
        error_out: bool = True,
        count: bool = True,
    ) -> Pagination:
        """Return one page of this query's results; the arguments are those
        of :meth:`~flask_partition.PartitionDB.paginate`.
        """
        return fetch_page(
            functools.partial(QueryPagination, self),
            page=page,
            per_page=per_page,
            max_per_page=max_per_page,
            error_out=error_out,
            count=count,
        )


class QueryPagination(Pagination):
    """A page of a legacy :class:`Query`, made by :meth:`Query.paginate`.

    :param query: The query to paginate.

    .. versionadded:: 0.1.0
    """

    def __init__(
        self,
        query: sa_orm.Query[t.Any],
        *,
        page: int,
        per_page: int,
        count: bool = True,
        max_per_page: int | None = None,
    ) -> None:
        # The query replaces the base class's session and select: only the
        # two methods below read it.
        self._query = query
        self._load(page=page, per_page=per_page, count=count, max_per_page=max_per_page)

    def _query_items(self) -> list[t.Any]:
        offset = (self.page - 1) * self.per_page
        return self._query.limit(self.per_page).offset(offset).all()

    def _query_count(self) -> int:
        return self._query.order_by(None).count()


class _QueryProperty:
    """``Model.query``: a :class:`Query` for the model in ``db.session``."""

    def __get__(self, obj: object, cls: type[t.Any]) -> Query[t.Any]:
        db = t.cast("SQLAlchemyCompat", cls.__partition_metadata__)
        return t.cast("Query[t.Any]", cls.query_class(cls, session=db.session()))


class FlaskModel:
    """What Flask-SQLAlchemy's ``Model`` adds to every model: the legacy
    ``query`` attribute and a ``repr`` showing the primary key.

    ``db.Model`` includes it unless ``model_class`` is a base declared with
    :class:`~flask_partition.PartitionModel`.

    .. versionadded:: 0.1.0
    """

    #: The class of :attr:`query`: ``db.Query``, :class:`Query` by default.
    query_class: t.ClassVar[type[Query[t.Any]]] = Query
    #: ``Model.query``, as ``db.session.query(Model)``. Legacy; prefer
    #: ``db.session.execute(db.select(Model))``.
    query: t.ClassVar[Query[t.Any]]

    def __repr__(self) -> str:
        state = sa.inspect(self)
        if state.transient:
            ident = f"(transient {id(self)})"
        elif state.pending:
            ident = f"(pending {id(self)})"
        else:
            ident = ", ".join(str(value) for value in state.identity or ())
        return f"<{type(self).__name__} {ident}>"


def model_base(
    model_class: type[t.Any] | None, metadata: sa.MetaData | None
) -> type[sa_orm.DeclarativeBase]:
    """Return the declarative base that becomes ``db.Model``.

    -   ``None``: a new base with :class:`FlaskModel`, using ``metadata``.
    -   A base declared with :class:`~flask_partition.PartitionModel`: used
        as it is.
    -   A direct subclass of :class:`~sqlalchemy.orm.DeclarativeBase` or
        :class:`~sqlalchemy.orm.DeclarativeBaseNoMeta`: rebuilt from its
        body with :class:`~flask_partition.PartitionModel` and
        :class:`FlaskModel` added, as Flask-SQLAlchemy 3.1 does; its
        ``metadata`` and ``type_annotation_map`` are kept (a
        ``type_annotation_map`` gets a new registry, since SQLAlchemy
        refuses one next to an existing ``registry``).
    -   Any other class: a mixin of every model, as Flask-SQLAlchemy's
        ``model_class``; ``metadata`` is used.

    :param model_class: The ``model_class`` argument of the extension.
    :param metadata: The ``metadata`` argument of the extension.
    :raises TypeError: For a base made with ``declarative_base()`` or
        ``DeclarativeMeta``, or an indirect subclass of a declarative base.
    """
    if model_class is not None and issubclass(model_class, PartitionModel):
        return t.cast("type[sa_orm.DeclarativeBase]", model_class)
    declarative = (sa_orm.DeclarativeBase, sa_orm.DeclarativeBaseNoMeta)
    if model_class is None or not issubclass(model_class, declarative):
        if isinstance(model_class, sa_orm.DeclarativeMeta):
            raise TypeError(
                f"'model_class' {model_class.__name__!r} is a 'declarative_base()'"
                " class, which Flask-Partition cannot extend. Declare it as"
                f" 'class {model_class.__name__}(DeclarativeBase)', or pass its"
                " methods as a plain mixin class."
            )
        mixins = () if model_class is None else (model_class,)
        namespace = {
            "metadata": metadata if metadata is not None else sa.MetaData(),
            "__module__": __name__,
        }
        return t.cast(
            "type[sa_orm.DeclarativeBase]",
            type(
                "Model",
                (PartitionModel, *mixins, FlaskModel, sa_orm.DeclarativeBase),
                namespace,
            ),
        )
    if not any(base in declarative for base in model_class.__bases__):
        raise TypeError(
            f"'model_class' {model_class.__name__!r} must subclass 'DeclarativeBase'"
            " directly. Pass the base class itself, not a subclass of it."
        )
    skip = {"__dict__", "__weakref__"}
    if "type_annotation_map" in model_class.__dict__:
        # SQLAlchemy made this registry from the map; let it make another.
        skip |= {"registry", "_sa_registry"}
    body = {
        name: value for name, value in model_class.__dict__.items() if name not in skip
    }
    return t.cast(
        "type[sa_orm.DeclarativeBase]",
        types.new_class(
            model_class.__name__,
            (PartitionModel, FlaskModel, *model_class.__bases__),
            {"metaclass": type(model_class)},
            lambda namespace: namespace.update(body),
        ),
    )


def install_query(base: type[t.Any], query_class: type[Query[t.Any]]) -> None:
    """Give every model of ``base`` Flask-SQLAlchemy's ``Model.query``.

    :param base: ``db.Model``.
    :param query_class: ``db.Query``.
    """
    base.query_class = query_class
    base.query = _QueryProperty()


class Table(sa.Table):
    """A :class:`~sqlalchemy.schema.Table` whose metadata may be left out,
    as ``db.Table`` of Flask-SQLAlchemy: ``bind_key`` then chooses the
    bind's metadata (``None``, the default, for the default cluster)::

        post_tag = db.Table(
            "post_tag",
            db.Column("post_id", db.ForeignKey("post.id"), primary_key=True),
            db.Column("tag_id", db.ForeignKey("tag.id"), primary_key=True),
        )

    With a metadata as second argument it is a plain ``Table``. Use it as
    ``db.Table``; each extension has its own subclass.

    .. versionadded:: 0.1.0
    """

    _metadata_source: t.ClassVar[MetadataSource]
    inherit_cache = True

    @t.overload
    def __init__(
        self,
        name: str,
        *args: sa_schema.SchemaItem,
        bind_key: str | None = None,
        **kwargs: t.Any,
    ) -> None: ...

    @t.overload
    def __init__(
        self,
        name: str,
        metadata: sa.MetaData,
        *args: sa_schema.SchemaItem,
        **kwargs: t.Any,
    ) -> None: ...

    def __init__(self, name: str, *args: t.Any, **kwargs: t.Any) -> None:
        # __new__ built the table; Python calls __init__ again with the
        # original arguments, which Table ignores (its _no_init default).
        kwargs.pop("bind_key", None)
        super().__init__(name, *args, **kwargs)

    def __new__(
        cls, *args: t.Any, bind_key: str | None = None, **kwargs: t.Any
    ) -> t.Any:
        if args and not (len(args) > 1 and isinstance(args[1], sa.MetaData)):
            metadata = cls._metadata_source._metadata_for(bind_key)
            args = (args[0], metadata, *args[1:])
        return super().__new__(cls, *args, **kwargs)


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
