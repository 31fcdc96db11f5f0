"""Flask-SQLAlchemy's model base: ``model_class``, the ``repr`` of its
models and ``db.Table`` with ``bind_key``.
"""

from __future__ import annotations

import types
import typing as t

import sqlalchemy as sa
import sqlalchemy.orm as sa_orm
import sqlalchemy.sql.schema as sa_schema

from .. import _sqla
from ..config import PARTITION_KEYS as PARTITION_KEYS
from ..config import read_sqlalchemy_config as read_sqlalchemy_config
from ..config import SQLALCHEMY_KEYS as SQLALCHEMY_KEYS
from ..model import PartitionModel
from .query import Query

if t.TYPE_CHECKING:
    from ..model import MetadataSource


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
        return _mixin_base(model_class, metadata)
    if not any(base in declarative for base in model_class.__bases__):
        raise TypeError(
            f"'model_class' {model_class.__name__!r} must subclass 'DeclarativeBase'"
            " directly. Pass the base class itself, not a subclass of it."
        )
    return _rebuilt_base(model_class)


def _mixin_base(
    model_class: type[t.Any] | None, metadata: sa.MetaData | None
) -> type[sa_orm.DeclarativeBase]:
    """A new base with ``model_class`` (if any) as a mixin of every model."""
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


def _rebuilt_base(model_class: type[t.Any]) -> type[sa_orm.DeclarativeBase]:
    """A direct ``DeclarativeBase`` subclass rebuilt from its body with our
    bases added.
    """
    skip = {"__dict__", "__weakref__"}
    if "type_annotation_map" in model_class.__dict__:
        # SQLAlchemy made this registry from the map; let it make another.
        skip |= {"registry", *_sqla.REGISTRY_ATTRIBUTES}
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
