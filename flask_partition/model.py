"""The declarative base behind ``db.Model``.

Two conveniences Flask-SQLAlchemy users rely on: ``__bind_key__`` puts a
model's table in that bind's :class:`~sqlalchemy.MetaData` (one metadata per
cluster, as Flask-Migrate expects), and ``__tablename__`` defaults to the class
name in snake_case.
"""

from __future__ import annotations

import re
import typing as t

import sqlalchemy as sa
import sqlalchemy.orm as sa_orm

# A capital starts a new word when a lowercase letter or digit precedes it
# ("OrderLine" -> "order_line"), or when a lowercase letter follows it and it
# is not the first character ("HTTPRequest" -> "http_request", and
# "Order_Line" -> "order__line" as in Flask-SQLAlchemy).
_WORD_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=.)(?=[A-Z][a-z])")
_DECLARATIVE_BASES = (sa_orm.DeclarativeBase, sa_orm.DeclarativeBaseNoMeta)


def camel_to_snake_case(name: str) -> str:
    """Convert a class name to the table name Flask-SQLAlchemy would derive.

    :param name: A class name such as ``"OrderLine"`` or ``"HTTPRequest"``.
    :return: ``"order_line"``, ``"http_request"``.

    .. versionadded:: 0.1.0
    """
    return _WORD_BOUNDARY.sub("_", name).lower().lstrip("_")


class MetadataSource(t.Protocol):
    """What the base needs from its extension: the metadata of a bind key,
    and the metadata of sharded tables.
    """

    def _metadata_for(self, bind_key: str | None) -> sa.MetaData: ...

    @property
    def shard_metadata(self) -> sa.MetaData: ...


class PartitionModel:
    """Mixin for a declarative base that handles ``__bind_key__`` and
    ``__shard_key__`` and derives ``__tablename__``.

    ``db.Model`` already includes it. Type-checked code can declare its base
    statically, which :pep:`484` checkers understand, and hand it over::

        class Base(PartitionModel, sa_orm.DeclarativeBase):
            pass

        db = PartitionDB(model_class=Base)

        class User(Base):
            ...

    .. versionadded:: 0.1.0
    """

    __partition_metadata__: t.ClassVar[MetadataSource]
    #: Derive ``__tablename__`` from the class name; false with
    #: ``PartitionDB(disable_autonaming=True)``.
    __partition_autoname__: t.ClassVar[bool] = True
    if t.TYPE_CHECKING:
        metadata: t.ClassVar[sa.MetaData]
        __tablename__: t.Any

    def __init_subclass__(cls, **kwargs: t.Any) -> None:
        own = cls.__dict__
        is_base = any(base in _DECLARATIVE_BASES for base in cls.__bases__)
        if (
            not is_base
            and not own.get("__abstract__", False)
            and "__table__" not in own
        ):
            # Inherited from a mixin or abstract base too, as in Flask-SQLAlchemy.
            bind_key = getattr(cls, "__bind_key__", None)
            shard_key = getattr(cls, "__shard_key__", None)
            inherited = getattr(cls, "metadata", None)
            if shard_key is not None:
                _use_shard_metadata(cls, bind_key, inherited)
            elif (
                bind_key is not None
                and "metadata" not in own
                and (inherited is None or inherited.info.get("bind_key") != bind_key)
            ):
                source = getattr(cls, "__partition_metadata__", None)
                if source is None:
                    raise RuntimeError(
                        f"Model {cls.__name__!r} has '__bind_key__' but its base"
                        " is not registered with a 'PartitionDB'. Pass the base as"
                        " 'PartitionDB(model_class=Base)' before declaring models."
                    )
                cls.metadata = source._metadata_for(bind_key)
            if _derives_tablename(cls):
                cls.__tablename__ = camel_to_snake_case(cls.__name__)
            super().__init_subclass__(**kwargs)
            if shard_key is not None:
                _mark_shard_key(cls, shard_key)
            return
        super().__init_subclass__(**kwargs)


def _use_shard_metadata(cls: type, bind_key: object, inherited: object) -> None:
    if bind_key is not None:
        raise TypeError(
            f"Model {cls.__name__!r} has both '__bind_key__' ({bind_key!r}) and"
            " '__shard_key__'. A sharded model lives on the shards of"
            " 'PARTITION_SHARDS'; remove one of them."
        )
    if "metadata" in cls.__dict__:
        return
    source = getattr(cls, "__partition_metadata__", None)
    if source is None:
        raise RuntimeError(
            f"Model {cls.__name__!r} has '__shard_key__' but its base is not"
            " registered with a 'PartitionDB'. Pass the base as"
            " 'PartitionDB(model_class=Base)' before declaring models."
        )
    if inherited is not source.shard_metadata:
        cls.metadata = source.shard_metadata  # type: ignore[attr-defined]


def _mark_shard_key(cls: type, shard_key: object) -> None:
    table = getattr(cls, "__table__", None)
    if not isinstance(table, sa.Table):
        return
    if not isinstance(shard_key, str) or shard_key not in table.c:
        raise TypeError(
            f"Model {cls.__name__!r} names shard key {shard_key!r}, but its"
            f" table {table.name!r} has no such column. Columns:"
            f" {', '.join(table.c.keys())}."
        )
    table.info["shard_key"] = shard_key


def _derives_tablename(cls: type) -> bool:
    """Whether ``cls`` gets ``__tablename__`` from its class name, by
    Flask-SQLAlchemy 3.x's rules: not when a name is given by the class
    itself, a ``declared_attr``, a mixin or an abstract base (the first one
    found in the MRO decides), and not for single-table inheritance.
    """
    if not getattr(cls, "__partition_autoname__", True):
        return False
    for base in cls.__mro__:
        if "__tablename__" not in base.__dict__:
            continue
        if (
            base is cls
            or isinstance(base.__dict__["__tablename__"], sa_orm.declared_attr)
            or base.__dict__.get("__abstract__", False)
            or not issubclass(base, _DECLARATIVE_BASES)
        ):
            return False
        break  # a mapped parent's name: a subclass may need its own
    return _needs_own_table(cls)


def _needs_own_table(cls: type) -> bool:
    """True for the first mapped class of a hierarchy, and for a subclass
    that declares a primary key (joined-table inheritance) in its body, in
    a mixin of its own or in ``__table_args__``, or whose name is already a
    table of its metadata (reflected); false for single-table inheritance,
    which shares the parent's table.
    """
    parents = [
        base
        for base in cls.__mro__[1:]
        if isinstance(sa.inspect(base, raiseerr=False), sa_orm.Mapper)
    ]
    if not parents:
        return True
    metadata = getattr(cls, "metadata", None)
    if metadata is not None and camel_to_snake_case(cls.__name__) in metadata.tables:
        return True
    inherited = set(parents[0].__mro__)
    for klass in cls.__mro__:
        if klass in inherited:
            continue
        for value in klass.__dict__.values():
            column = getattr(value, "column", value)
            if isinstance(column, sa.Column) and column.primary_key:
                return True
        table_args = klass.__dict__.get("__table_args__", ())
        if isinstance(table_args, tuple) and any(
            isinstance(arg, sa.PrimaryKeyConstraint) for arg in table_args
        ):
            return True
    return False


def make_model_base(
    source: MetadataSource,
    metadata: sa.MetaData,
    model_class: type[sa_orm.DeclarativeBase] | None = None,
) -> type[sa_orm.DeclarativeBase]:
    """Return the declarative base for one extension.

    :param source: Hands out the metadata for each ``__bind_key__``.
    :param metadata: The default cluster's metadata, used for a new base.
    :param model_class: A base the user declared; it must include
        :class:`PartitionModel` and is registered with ``source``.
    :raises TypeError: If ``model_class`` lacks :class:`PartitionModel`.
    """
    if model_class is not None:
        if not issubclass(model_class, PartitionModel):
            raise TypeError(
                f"'model_class' must subclass 'flask_partition.PartitionModel' and"
                f" 'DeclarativeBase', got {model_class.__name__!r}. Declare it as"
                f" 'class {model_class.__name__}(PartitionModel, DeclarativeBase)'."
            )
        model_class.__partition_metadata__ = source
        return model_class
    namespace: dict[str, t.Any] = {
        "__partition_metadata__": source,
        "metadata": metadata,
        "__module__": __name__,
    }
    return t.cast(
        "type[sa_orm.DeclarativeBase]",
        type("Model", (PartitionModel, sa_orm.DeclarativeBase), namespace),
    )
