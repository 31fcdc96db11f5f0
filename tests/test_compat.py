"""Flask-SQLAlchemy compatibility, piece by piece: the ``SQLALCHEMY_*`` config
fallback, models as Flask-SQLAlchemy makes them, ``db.<name>`` shortcuts,
``db.Table``, the legacy query, pagination and the helpers Flask-Migrate
calls. Where Flask-SQLAlchemy defines the behaviour, the tests run it too
and compare.
"""

from __future__ import annotations

import itertools
import pathlib
import sqlite3
import sys
import threading
import typing as t

import flask_sqlalchemy
import pytest
import sqlalchemy as sa
import sqlalchemy.exc as sa_exc
import sqlalchemy.orm as sa_orm
from flask import Flask
from sqlalchemy.ext.horizontal_shard import ShardedQuery
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column
from werkzeug.exceptions import NotFound

from flask_partition import Pagination
from flask_partition import PartitionDB
from flask_partition import PartitionModel
from flask_partition import UnknownClusterError
from flask_partition.compat import FlaskModel
from flask_partition.compat import Query
from flask_partition.config import parse_config
from partition_models import AppFactory
from partition_models import Author
from partition_models import db

# -- configuration -----------------------------------------------------------


def _error(exc: type[Exception], **config: t.Any) -> str:
    with pytest.raises(exc) as info:
        parse_config(config)
    return str(info.value)


def test_sqlalchemy_keys_are_read_as_flask_sqlalchemy_reads_them() -> None:
    topology = parse_config(
        {
            "SQLALCHEMY_DATABASE_URI": "sqlite:///app.db",
            "SQLALCHEMY_ENGINE_OPTIONS": {"pool_pre_ping": True},
            "SQLALCHEMY_ECHO": True,
            "SQLALCHEMY_BINDS": {
                "audit": "sqlite:///audit.db",
                "auth": {"url": "sqlite://", "echo": False, "pool_timeout": 5},
            },
        },
        instance_path="/srv/instance",
    )
    assert list(topology.clusters) == [None, "audit", "auth"]
    default, audit, auth = topology.clusters.values()
    assert default.primary.database == "/srv/instance/app.db"
    assert default.replicas == ()
    assert dict(default.engine_options) == {
        "pool_pre_ping": True,
        "echo": True,
        "echo_pool": True,
    }
    # SQLALCHEMY_ENGINE_OPTIONS is the default engine's only, as in
    # Flask-SQLAlchemy; a bind's dict gives its own options.
    assert dict(audit.engine_options) == {"echo": True, "echo_pool": True}
    assert audit.primary.database == "/srv/instance/audit.db"
    assert dict(auth.engine_options) == {
        "echo": False,
        "pool_timeout": 5,
        "echo_pool": True,
    }
    assert topology.shards == {}


def test_a_none_bind_is_the_default_unless_the_uri_is_set() -> None:
    binds = {None: {"url": "sqlite:///binds.db", "pool_timeout": 5}}
    topology = parse_config({"SQLALCHEMY_BINDS": binds})
    assert topology.clusters[None].primary.database == "binds.db"
    topology = parse_config(
        {
            "SQLALCHEMY_BINDS": binds,
            "SQLALCHEMY_DATABASE_URI": "sqlite:///uri.db",
            "SQLALCHEMY_ENGINE_OPTIONS": {"pool_pre_ping": True},
        }
    )
    default = topology.clusters[None]
    assert default.primary.database == "uri.db"
    assert dict(default.engine_options) == {"pool_timeout": 5, "pool_pre_ping": True}


def test_mysql_gets_flask_sqlalchemys_defaults() -> None:
    topology = parse_config(
        {
            "SQLALCHEMY_DATABASE_URI": "mysql+pymysql://app:pw@db/app",
            "SQLALCHEMY_BINDS": {
                "latin": "mysql://app@db/latin?charset=latin1",
                "static": {"url": "mysql://app@db/s", "poolclass": sa.pool.StaticPool},
            },
        }
    )
    default, latin, static = topology.clusters.values()
    assert dict(default.primary.query) == {"charset": "utf8mb4"}
    assert default.engine_options["pool_recycle"] == 7200
    assert dict(latin.primary.query) == {"charset": "latin1"}
    assert "pool_recycle" not in static.engine_options


def test_mixing_both_families_is_an_error() -> None:
    assert _error(
        ValueError,
        PARTITION_DATABASE_URI="sqlite://",
        PARTITION_REPLICAS=[],
        SQLALCHEMY_DATABASE_URI="sqlite://",
        SQLALCHEMY_ECHO=False,
    ) == (
        "Both Flask-Partition's keys ('PARTITION_DATABASE_URI',"
        " 'PARTITION_REPLICAS') and Flask-SQLAlchemy's keys"
        " ('SQLALCHEMY_DATABASE_URI') are set. Configure the databases with one"
        " family of keys: the 'PARTITION_*' keys, or the 'SQLALCHEMY_*' keys,"
        " which are read only when no 'PARTITION_*' database key is set."
    )
    assert _error(
        ValueError,
        PARTITION_SHARDS={"a": "sqlite://"},
        SQLALCHEMY_BINDS={"b": "sqlite://"},
    ).startswith(
        "Both Flask-Partition's keys ('PARTITION_SHARDS') and Flask-SQLAlchemy's"
        " keys ('SQLALCHEMY_BINDS') are set."
    )
    # None and Flask-SQLAlchemy's own defaults mean unset.
    config: dict[str, t.Any] = {
        "PARTITION_DATABASE_URI": "sqlite://",
        "SQLALCHEMY_DATABASE_URI": None,
        "SQLALCHEMY_ECHO": False,
        "SQLALCHEMY_BINDS": {},
        "SQLALCHEMY_ENGINE_OPTIONS": {},
    }
    assert list(parse_config(config).clusters) == [None]
    # Keys that name no database may be used with either family.
    config = {"SQLALCHEMY_DATABASE_URI": "sqlite://", "PARTITION_SCATTER_WORKERS": 2}
    assert parse_config(config).scatter_workers == 2


def test_options_without_a_database() -> None:
    message = (
        "No database is configured: 'SQLALCHEMY_DATABASE_URI' is not set and"
        " 'SQLALCHEMY_BINDS' names no database. Set 'SQLALCHEMY_DATABASE_URI'"
        " to the URI of the default database, for example 'sqlite:///app.db'."
    )
    assert _error(RuntimeError, SQLALCHEMY_ECHO=True) == message
    # An empty SQLALCHEMY_BINDS is Flask-SQLAlchemy's default: unset, so the
    # missing key reported is Flask-Partition's.
    assert _error(RuntimeError, SQLALCHEMY_BINDS={}).startswith(
        "'PARTITION_DATABASE_URI' is not set."
    )


def test_bad_sqlalchemy_values_name_the_key_and_mask_passwords() -> None:
    uri = "postgresql://app:s3cret@db/app"
    assert _error(TypeError, SQLALCHEMY_BINDS=[uri]) == (
        "'SQLALCHEMY_BINDS' must be a dict of bind names to database URIs or"
        " dicts with a 'url' key, got \"['postgresql://app:***@db/app']\"."
    )
    assert _error(TypeError, SQLALCHEMY_BINDS={"": uri}) == (
        "'SQLALCHEMY_BINDS' keys must be non-empty strings, got ''."
    )
    assert _error(ValueError, SQLALCHEMY_BINDS={"a": {"echo": True}}) == (
        "SQLALCHEMY_BINDS['a'] has no 'url'. A dict value is the engine options"
        " with the database URI under 'url'."
    )
    assert _error(TypeError, SQLALCHEMY_BINDS={"a": 5}) == (
        "SQLALCHEMY_BINDS['a'] must be a database URI or a dict with a 'url'"
        " key, got '5'."
    )
    assert _error(ValueError, SQLALCHEMY_BINDS={"a": {"url": "x//a:s3cret@b"}}) == (
        "SQLALCHEMY_BINDS['a']['url'] is not a valid database URI:"
        " 'x//a:***@b'. Expected 'dialect+driver://user:password@host/database'."
    )
    assert _error(ValueError, SQLALCHEMY_DATABASE_URI="x//a:s3cret@b").startswith(
        "'SQLALCHEMY_DATABASE_URI' is not a valid database URI: 'x//a:***@b'."
    )
    assert _error(
        TypeError, SQLALCHEMY_DATABASE_URI="sqlite://", SQLALCHEMY_ENGINE_OPTIONS=1
    ) == (
        "'SQLALCHEMY_ENGINE_OPTIONS' must be a dict of 'create_engine' arguments,"
        " got 1."
    )


@pytest.mark.parametrize(
    ("key", "lost"),
    [
        ("SQLALCHEMY_RECORD_QUERIES", "'get_recorded_queries()' is not available"),
        (
            "SQLALCHEMY_TRACK_MODIFICATIONS",
            "the 'models_committed' and 'before_models_committed' signals are not sent",
        ),
    ],
)
def test_unsupported_features_warn(key: str, lost: str) -> None:
    config = {"SQLALCHEMY_DATABASE_URI": "sqlite://", key: True}
    with pytest.warns(UserWarning) as record:
        parse_config(config)
    assert [str(w.message) for w in record] == [
        f"'{key}' is set, but Flask-Partition does not support it: {lost}."
        f" Remove '{key}' from the config."
    ]
    assert record[0].filename == __file__
    parse_config({**config, key: False})  # off: nothing lost, no warning


def test_unsupported_feature_warnings_point_at_the_apps_call(
    tmp_path: pathlib.Path,
) -> None:
    """The warning names the line of the application that set up the
    extension, however deep in the package it is raised.
    """
    config = {"SQLALCHEMY_DATABASE_URI": "sqlite://", "SQLALCHEMY_RECORD_QUERIES": 1}
    first = _sqlalchemy_app(tmp_path, "first", **config)
    second = _sqlalchemy_app(tmp_path, "second", **config)
    with pytest.warns(UserWarning) as record:
        line = sys._getframe().f_lineno + 1
        PartitionDB(first)
    with pytest.warns(UserWarning) as later:
        local = PartitionDB()
        line_later = sys._getframe().f_lineno + 1
        local.init_app(second)
    assert [(w.filename, w.lineno) for w in [*record, *later]] == [
        (__file__, line),
        (__file__, line_later),
    ]
    for app in (first, second):
        for engine in app.extensions["partition"].get_router(app).engines():
            engine.dispose()


def _sqlalchemy_app(
    tmp_path: pathlib.Path, name: str = "fsa", **config: t.Any
) -> Flask:
    app = Flask(name, instance_path=str(tmp_path))
    app.config.update(config)
    return app


def test_engines_from_sqlalchemy_keys_and_constructor_defaults(
    tmp_path: pathlib.Path,
) -> None:
    local = PartitionDB(engine_options={"echo": True, "pool_pre_ping": True})
    app = _sqlalchemy_app(
        tmp_path,
        SQLALCHEMY_DATABASE_URI="sqlite:///app.db",
        SQLALCHEMY_ENGINE_OPTIONS={"echo": False},
        SQLALCHEMY_BINDS={"audit": "sqlite:///audit.db"},
    )
    local.init_app(app)
    with app.app_context():
        assert local.engine.url.database == str(tmp_path / "app.db")
        assert (local.engine.echo, local.engines["audit"].echo) == (False, True)
        assert local.engines["audit"].pool._pre_ping is True
        assert local.get_router().default.replicas == ()
    assert app.extensions["sqlalchemy"] is local
    for engine in local.get_router(app).engines():
        engine.dispose()


def test_binds_only_config(tmp_path: pathlib.Path) -> None:
    local = PartitionDB()

    class Record(local.Model):  # type: ignore[name-defined,misc]
        __bind_key__ = "audit"
        id: Mapped[int] = mapped_column(primary_key=True)

    app = _sqlalchemy_app(tmp_path, SQLALCHEMY_BINDS={"audit": "sqlite:///audit.db"})
    local.init_app(app)
    assert list(local.get_state(app).topology.clusters) == ["audit"]
    message = (
        "No default database is configured: 'SQLALCHEMY_BINDS' is set but"
        " 'SQLALCHEMY_DATABASE_URI' is not. Give the model or table a"
        " '__bind_key__' from 'SQLALCHEMY_BINDS', pass"
        " bind_arguments={'bind_key': ...} for raw SQL, or set"
        " 'SQLALCHEMY_DATABASE_URI'."
    )
    with app.app_context():
        assert list(local.engines) == ["audit"]
        assert local.bind_names() == ["audit"]
        local.create_all()  # the default metadata has no tables: skipped
        local.session.add(Record(id=1))
        local.session.commit()
        assert local.session.get(Record, 1) is not None
        with pytest.raises(sa_exc.UnboundExecutionError) as info:
            local.engine  # noqa: B018
        assert str(info.value) == message
        with pytest.raises(sa_exc.UnboundExecutionError) as info:
            local.get_engine()
        assert str(info.value) == message
        with pytest.raises(sa_exc.UnboundExecutionError) as info:
            local.session.execute(sa.text("SELECT 1"))
        assert str(info.value) == message

        class Orphan(local.Model):  # type: ignore[name-defined,misc]
            id: Mapped[int] = mapped_column(primary_key=True)

        with pytest.raises(sa_exc.UnboundExecutionError, match="No default database"):
            local.create_all()
        with pytest.raises(sa_exc.UnboundExecutionError, match="No default database"):
            local.session.get(Orphan, 1)
    for engine in local.get_router(app).engines():
        engine.dispose()


# -- models ------------------------------------------------------------------


def _declare(db: t.Any) -> dict[str, str | None]:
    """Declare models of every naming case on ``db``; return each class's
    table name, ``None`` when it shares its parent's table.
    """

    class Plain(db.Model):  # type: ignore[misc]
        id = db.Column(db.Integer, primary_key=True)

    class HTTPRequestLog(db.Model):  # type: ignore[misc]
        id = db.Column(db.Integer, primary_key=True)

    class Order_Line(db.Model):  # type: ignore[misc]
        id = db.Column(db.Integer, primary_key=True)

    class Named(db.Model):  # type: ignore[misc]
        __tablename__ = "explicit"
        id = db.Column(db.Integer, primary_key=True)

    class Vehicle(db.Model):  # type: ignore[misc]
        id = db.Column(db.Integer, primary_key=True)
        kind = db.Column(db.String(20))
        __mapper_args__ = {"polymorphic_on": kind, "polymorphic_identity": "v"}

    class RaceCar(Vehicle):  # joined: its own primary key
        id = db.Column(db.ForeignKey("vehicle.id"), primary_key=True)
        __mapper_args__ = {"polymorphic_identity": "car"}

    class Bicycle(Vehicle):  # single-table: no primary key
        gears = db.Column(db.Integer)
        __mapper_args__ = {"polymorphic_identity": "bike"}

    class Boat(Vehicle):  # joined: primary key in __table_args__
        id = db.Column(db.ForeignKey("vehicle.id"))
        __table_args__ = (db.PrimaryKeyConstraint("id"),)
        __mapper_args__ = {"polymorphic_identity": "boat"}

    db.Table("scooter", db.Column("id", db.ForeignKey("vehicle.id"), primary_key=True))

    class Scooter(Vehicle):  # joined: its table already exists
        __mapper_args__ = {"polymorphic_identity": "scooter"}

    class Created:
        created = db.Column(db.Integer)

    class Abstract(db.Model):  # type: ignore[misc]
        __abstract__ = True
        id = db.Column(db.Integer, primary_key=True)

    class FromAbstract(Created, Abstract):
        pass

    class NamedByMixin:
        __tablename__ = "from_mixin"

    class UsesMixinName(NamedByMixin, db.Model):  # type: ignore[misc]
        id = db.Column(db.Integer, primary_key=True)

    class NamedByFunction:
        @sa_orm.declared_attr.directive
        def __tablename__(cls) -> str:
            return t.cast("type[t.Any]", cls).__name__.upper()

    class UsesDeclaredName(NamedByFunction, db.Model):  # type: ignore[misc]
        id = db.Column(db.Integer, primary_key=True)

    class AbstractNamed(db.Model):  # type: ignore[misc]
        __abstract__ = True
        __tablename__ = "from_abstract_base"
        id = db.Column(db.Integer, primary_key=True)

    class UsesAbstractName(AbstractNamed):
        pass

    classes: list[t.Any] = [
        Plain,
        HTTPRequestLog,
        Order_Line,
        Named,
        Vehicle,
        RaceCar,
        Bicycle,
        Boat,
        Scooter,
        FromAbstract,
        UsesMixinName,
        UsesDeclaredName,
        UsesAbstractName,
    ]
    return {
        cls.__name__: (
            None
            if cls is not Vehicle and cls.__table__ is Vehicle.__table__
            else cls.__table__.name
        )
        for cls in classes
    }


def test_table_names_match_flask_sqlalchemy() -> None:
    names = _declare(PartitionDB())
    assert names == _declare(flask_sqlalchemy.SQLAlchemy())
    assert names == {
        "Plain": "plain",
        "HTTPRequestLog": "http_request_log",
        "Order_Line": "order__line",
        "Named": "explicit",
        "Vehicle": "vehicle",
        "RaceCar": "race_car",
        "Bicycle": None,
        "Boat": "boat",
        "Scooter": "scooter",
        "FromAbstract": "from_abstract",
        "UsesMixinName": "from_mixin",
        "UsesDeclaredName": "USESDECLAREDNAME",
        "UsesAbstractName": "from_abstract_base",
    }


def test_disable_autonaming() -> None:
    local = PartitionDB(disable_autonaming=True)
    with pytest.raises(sa_exc.InvalidRequestError, match="does not have a __table__"):

        class Unnamed(local.Model):  # type: ignore[name-defined,misc]
            id = local.Column(local.Integer, primary_key=True)


def test_legacy_annotations_as_in_flask_sqlalchemy() -> None:
    for extension in (PartitionDB(), flask_sqlalchemy.SQLAlchemy()):

        class User(extension.Model):  # type: ignore[name-defined,misc]
            id: int = extension.Column(extension.Integer, primary_key=True)
            name: str = extension.Column(extension.String(20))

        assert list(User.__table__.c.keys()) == ["id", "name"]
        # MappedAnnotationError on recent SQLAlchemy; its base ArgumentError
        # on older 2.0 releases.
        with pytest.raises(sa.exc.ArgumentError, match="User2.nickname"):

            class User2(extension.Model):  # type: ignore[name-defined,misc]
                id = extension.Column(extension.Integer, primary_key=True)
                nickname: str


def test_repr_shows_the_primary_key() -> None:
    local = PartitionDB()
    other = flask_sqlalchemy.SQLAlchemy()
    reprs = []
    for extension in (local, other):

        class Item(extension.Model):  # type: ignore[name-defined,misc]
            id = extension.Column(extension.Integer, primary_key=True)

        item = Item(id=3)
        engine = sa.create_engine("sqlite://")
        session = sa_orm.Session(engine)
        extension.metadata.create_all(engine)
        transient = repr(item)
        session.add(item)
        pending = repr(item)
        session.flush()
        reprs.append(
            (
                transient.replace(str(id(item)), "ID"),
                pending.replace(str(id(item)), "ID"),
                repr(item),
            )
        )
        session.close()
    assert (
        reprs[0]
        == reprs[1]
        == (
            "<Item (transient ID)>",
            "<Item (pending ID)>",
            "<Item 3>",
        )
    )


def test_model_class_plain_mixin() -> None:
    class Methods:
        def describe(self) -> str:
            return f"{type(self).__name__} {self.id}"  # type: ignore[attr-defined]

        def __repr__(self) -> str:
            return "custom"

    naming = sa.MetaData(naming_convention={"pk": "pk_%(table_name)s"})
    local = PartitionDB(model_class=Methods, metadata=naming)

    class Thing(local.Model):  # type: ignore[name-defined,misc]
        id = local.Column(local.Integer, primary_key=True)

    assert Thing(id=2).describe() == "Thing 2"
    assert repr(Thing(id=2)) == "custom"
    assert local.metadata is naming is Thing.metadata
    assert Thing.__table__.primary_key.name == "pk_thing"
    assert issubclass(local.Model, Methods)


def test_model_class_subclassing_flask_sqlalchemys_model(
    tmp_path: pathlib.Path,
) -> None:
    class Methods(flask_sqlalchemy.model.Model):
        def hello(self) -> str:
            return "hi"

    local = PartitionDB(model_class=Methods)

    class Thing(local.Model):  # type: ignore[name-defined,misc]
        id = local.Column(local.Integer, primary_key=True)

    app = _sqlalchemy_app(tmp_path, SQLALCHEMY_DATABASE_URI="sqlite://")
    local.init_app(app)
    with app.app_context():
        local.create_all()
        local.session.add(Thing(id=1))
        local.session.commit()
        # Flask-SQLAlchemy's query property would need its extension; ours
        # replaces it, and its repr is kept.
        assert isinstance(Thing.query, Query)
        assert repr(Thing.query.one()) == "<Thing 1>"
        assert Thing(id=2).hello() == "hi"


class TypedBase(PartitionModel, FlaskModel, sa_orm.DeclarativeBase):
    """A static base with Flask-SQLAlchemy's model API, for type checkers."""


typed_db = PartitionDB(model_class=TypedBase)


class Gadget(TypedBase):
    id: Mapped[int] = mapped_column(primary_key=True)


def test_static_base_with_flask_model(tmp_path: pathlib.Path) -> None:
    app = _sqlalchemy_app(tmp_path, SQLALCHEMY_DATABASE_URI="sqlite://")
    typed_db.init_app(app)
    with app.app_context():
        typed_db.create_all()
        typed_db.session.add(Gadget(id=4))
        typed_db.session.commit()
        gadget: Gadget = Gadget.query.filter_by(id=4).one_or_404()
        assert (repr(gadget), Gadget.query.count()) == ("<Gadget 4>", 1)


def test_model_class_declarative_base_as_in_flask_sqlalchemy_3_1() -> None:
    results = []
    for extension_class in (PartitionDB, flask_sqlalchemy.SQLAlchemy):

        class Base(sa_orm.DeclarativeBase):
            metadata = sa.MetaData(naming_convention={"uq": "uq_%(column_0_name)s"})

            def label(self) -> str:
                return "base"

        extension = extension_class(model_class=Base)

        class Account(extension.Model):  # type: ignore[name-defined,misc]
            id: Mapped[int] = mapped_column(primary_key=True)
            email: Mapped[str] = mapped_column(sa.String(30), unique=True)

        results.append(
            (
                Account.__tablename__,
                sorted(c.name for c in Account.__table__.constraints if c.name),
                Account().label(),
                extension.metadata is Base.metadata,
                extension.Model is Base,
                issubclass(extension.Model, Base),
            )
        )
    expected = ("account", ["uq_email"], "base", True, False, False)
    assert results[0] == results[1] == expected


def test_model_class_with_a_type_annotation_map() -> None:
    # Flask-SQLAlchemy 3.1.1 raises here on SQLAlchemy 2.1 ("both a
    # 'registry' attribute and a type_annotation_map entry").
    class Base(sa_orm.DeclarativeBase):
        type_annotation_map = {str: sa.String(30)}

    local = PartitionDB(model_class=Base)

    class Account(local.Model):  # type: ignore[name-defined,misc]
        id: Mapped[int] = mapped_column(primary_key=True)
        email: Mapped[str]

    assert repr(Account.__table__.c.email.type) == "String(length=30)"
    assert local.metadata is Base.metadata


def test_model_class_declarative_base_no_meta() -> None:
    class Base(sa_orm.DeclarativeBaseNoMeta):
        pass

    local = PartitionDB(model_class=Base)

    class Widget(local.Model):  # type: ignore[name-defined,misc]
        __bind_key__ = "parts"
        id: Mapped[int] = mapped_column(primary_key=True)

    assert Widget.__tablename__ == "widget"
    assert Widget.metadata is local.metadatas["parts"]


def test_model_class_that_cannot_be_extended() -> None:
    legacy = sa_orm.declarative_base()
    with pytest.raises(TypeError) as info:
        PartitionDB(model_class=legacy)
    assert str(info.value) == (
        "'model_class' 'Base' is a 'declarative_base()' class, which"
        " Flask-Partition cannot extend. Declare it as 'class"
        " Base(DeclarativeBase)', or pass its methods as a plain mixin class."
    )

    class Base(sa_orm.DeclarativeBase):
        pass

    class Deeper(Base):
        __abstract__ = True

    with pytest.raises(TypeError) as info:
        PartitionDB(model_class=Deeper)
    assert str(info.value) == (
        "'model_class' 'Deeper' must subclass 'DeclarativeBase' directly. Pass"
        " the base class itself, not a subclass of it."
    )


# -- db.<name>, db.Table, relationships, events ------------------------------


def test_sqlalchemy_names_resolve_as_in_flask_sqlalchemy() -> None:
    local = PartitionDB()
    other = flask_sqlalchemy.SQLAlchemy()
    own, differ = set(), set()
    for name in sorted(set(dir(sa)) | set(dir(sa_orm))):
        if name.startswith("_"):
            continue
        if any(name in dir(type(e)) or name in vars(e) for e in (local, other)):
            own.add(name)  # defined by an extension, not looked up
        elif getattr(local, name) is not getattr(other, name):
            differ.add(name)
    assert differ == set()
    # Names both extensions define themselves, for both.
    assert own == {
        "Query",
        "Table",
        "dynamic_loader",
        "engine",
        "relationship",
        "session",
    }
    for name in own:
        assert name in dir(PartitionDB) or name in vars(local)
    assert local.event is sa.event
    assert local.Column is sa.Column and local.relationship is not sa_orm.relationship
    with pytest.raises(AttributeError) as info:
        local.no_such_name  # noqa: B018
    assert str(info.value) == "'PartitionDB' object has no attribute 'no_such_name'"
    with pytest.raises(AttributeError):
        local._private  # noqa: B018


def test_table_picks_the_metadata_of_its_bind_key() -> None:
    local = PartitionDB()
    tag = local.Table("tag", local.Column("id", local.Integer, primary_key=True))
    audit = local.Table(
        "audit", local.Column("id", local.Integer, primary_key=True), bind_key="audit"
    )
    own = sa.MetaData()
    plain = local.Table("plain", own, local.Column("id", local.Integer))
    assert tag.metadata is local.metadata
    assert audit.metadata is local.metadatas["audit"]
    assert plain.metadata is own
    assert isinstance(tag, local.Table) and isinstance(tag, sa.Table)
    assert local.Table is not PartitionDB().Table
    # Compiles without a caching warning (pytest turns warnings into errors).
    assert str(sa.select(tag.c.id)) == "SELECT tag.id \nFROM tag"
    with pytest.raises(sa_exc.InvalidRequestError, match="already defined"):
        local.Table("tag", local.Column("id", local.Integer))


def test_relationship_helpers_set_the_query_class() -> None:
    class MyQuery(Query[t.Any]):
        pass

    local = PartitionDB(query_class=MyQuery)
    kwargs = local._with_query_class({"backref": "parent"})
    assert kwargs == {
        "query_class": MyQuery,
        "backref": ("parent", {"query_class": MyQuery}),
    }
    kwargs = local._with_query_class({"backref": ("p", {"lazy": "dynamic"})})
    assert kwargs["backref"] == ("p", {"query_class": MyQuery, "lazy": "dynamic"})
    assert local.relation == local.relationship
    loader = local.dynamic_loader("Other")
    assert loader.query_class is MyQuery


def test_session_events_apply_to_this_extensions_sessions(
    make_app: AppFactory, tmp_path: pathlib.Path
) -> None:
    app = make_app()
    calls: list[str] = []

    def before(session: sa_orm.Session) -> None:
        calls.append("before")

    def after(session: sa_orm.Session) -> None:
        calls.append("after")

    db.event.listen(db.session, "before_commit", before)
    db.event.listen(db.session, "after_commit", after)
    try:
        other = PartitionDB()
        other_app = Flask("other", instance_path=str(tmp_path))
        other_app.config["PARTITION_DATABASE_URI"] = "sqlite://"
        other.init_app(other_app)
        with other_app.app_context():
            other.session.commit()
        assert calls == []  # another extension's session
        with app.app_context():
            db.session.add(Author(name="a"))
            db.session.commit()
        assert calls == ["before", "after"]
    finally:
        db.event.remove(db.session, "before_commit", before)
        db.event.remove(db.session, "after_commit", after)
    with app.app_context():
        db.session.commit()
    assert calls == ["before", "after"]  # removed


# -- Flask-Migrate's needs, schema helpers ------------------------------------


def test_get_engine_and_bind_names(app: Flask) -> None:
    with app.app_context():
        assert db.get_engine() is db.engine
        assert db.get_engine(bind="analytics") is db.engines["analytics"]
        assert db.get_engine("analytics") is db.engines["analytics"]
        assert db.bind_names() == ["analytics"]
        with pytest.raises(UnknownClusterError, match="Bind key 'nope'"):
            db.get_engine("nope")
        with pytest.raises(TypeError) as info:
            db.get_engine(app=app)
        assert str(info.value) == "'get_engine' got unexpected arguments 'app'."


def test_bind_key_is_accepted_for_bind(app: Flask, tmp_path: pathlib.Path) -> None:
    def tables(name: str) -> set[str]:
        with sqlite3.connect(tmp_path / name) as conn:
            rows = conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
            return {row[0] for row in rows}

    with app.app_context():
        db.drop_all(bind_key="analytics")
        assert tables("analytics.db") == set()
        assert tables("app.db") == {"author", "book"}
        db.create_all(bind_key=["analytics"])
        assert tables("analytics.db") == {"event"}
        with pytest.raises(TypeError) as info:
            db.create_all(None, bind_key=None)
        assert str(info.value) == "Pass 'bind' or its alias 'bind_key', not both."


def test_reflect(app: Flask) -> None:
    local = PartitionDB()
    reflecting = Flask("reflecting", instance_path=app.instance_path)
    reflecting.config.update(
        PARTITION_DATABASE_URI="sqlite:///app.db",
        PARTITION_BINDS={"analytics": "sqlite:///analytics.db"},
    )
    local.init_app(reflecting)
    with reflecting.app_context():
        local.reflect(bind_key="analytics")
        assert set(local.metadatas["analytics"].tables) == {"event"}
        assert set(local.metadata.tables) == set()
        local.reflect()
        assert set(local.metadata.tables) == {"author", "book"}
    for engine in local.get_router(reflecting).engines():
        engine.dispose()


def test_shell_context_and_extension_registry(make_app: AppFactory) -> None:
    app = make_app()
    context = app.make_shell_context()
    assert context["db"] is db
    assert context["Author"] is Author
    assert app.extensions["sqlalchemy"] is db
    local = PartitionDB(add_models_to_shell=False)
    quiet = Flask("quiet", instance_path=app.instance_path)
    quiet.config["PARTITION_DATABASE_URI"] = "sqlite://"
    local.init_app(quiet)
    assert "db" not in quiet.make_shell_context()


@pytest.mark.parametrize(
    "scopefunc",
    [threading.get_ident, None],  # None: SQLAlchemy's thread-local registry
    ids=["get_ident", "thread-local"],
)
def test_scopefunc_session_option(
    tmp_path: pathlib.Path, scopefunc: t.Callable[[], t.Any] | None
) -> None:
    """Requests work with a session scope of the user's: the hook that
    writes the consistency token after a commit finds the session of that
    scope (it used to crash on a thread-local registry).
    """
    local = PartitionDB(session_options={"scopefunc": scopefunc})

    class Note(local.Model):  # type: ignore[name-defined,misc]
        id: Mapped[int] = mapped_column(primary_key=True)

    app = Flask("scoped", instance_path=str(tmp_path))
    app.config.update(
        SECRET_KEY="test secret",
        PARTITION_DATABASE_URI="sqlite:///app.db",
        PARTITION_REPLICAS=["sqlite:///app.db"],
        PARTITION_CONSISTENCY="time",  # SQLite gets no tokens in "auto"
    )
    local.init_app(app)
    with app.app_context():
        local.create_all()

    @app.post("/notes")
    def add_note() -> str:
        local.session.add(Note())
        local.session.commit()
        return "added"

    @app.get("/notes")
    def count_notes() -> str:
        return str(local.session.scalar(sa.select(sa.func.count()).select_from(Note)))

    client = app.test_client()
    added = client.post("/notes")
    assert (added.status_code, added.text) == (200, "added")
    assert added.headers["X-Partition-Token"]  # read from this scope's session
    counted = client.get(
        "/notes", headers={"X-Partition-Token": added.headers["X-Partition-Token"]}
    )
    assert (counted.status_code, counted.text) == (200, "1")
    assert not local.session.registry.has()  # removed at teardown
    for engine in local.get_router(app).engines():
        engine.dispose()


# -- legacy query and helpers -------------------------------------------------


def test_model_query_and_its_helpers(app: Flask) -> None:
    with app.app_context():
        db.session.add_all([Author(name=f"a{n}") for n in range(5)])
        db.session.commit()
        query = Author.query  # type: ignore[attr-defined]
        assert isinstance(query, Query) and isinstance(query, ShardedQuery)
        assert isinstance(db.session.query(Author), Query)
        assert query.filter_by(name="a1").first_or_404().name == "a1"
        assert query.filter_by(name="a2").one_or_404().name == "a2"
        with pytest.raises(NotFound) as info:
            query.filter_by(name="zz").first_or_404(description="none")
        assert info.value.description == "none"
        with pytest.raises(NotFound):
            query.one_or_404()  # five rows
        with pytest.warns(sa_exc.LegacyAPIWarning):  # as Query.get() warns
            assert query.get_or_404(1).name == "a0"
        with pytest.raises(NotFound), pytest.warns(sa_exc.LegacyAPIWarning):
            query.get_or_404(99)
        page = query.order_by(Author.id).paginate(page=2, per_page=2)
        assert ([a.name for a in page], page.total, page.pages) == (["a2", "a3"], 5, 3)
        assert [a.name for a in page.next().items] == ["a4"]
        with pytest.raises(NotFound):
            query.paginate(page=4, per_page=2)
        names: t.Any = db.session.query(Author.name).order_by(Author.name)
        rows = names.paginate(per_page=2)
        assert rows.items == [("a0",), ("a1",)]
    with app.test_request_context("/?page=3&per_page=2"):
        query = Author.query  # type: ignore[attr-defined]
        assert [a.name for a in query.order_by(Author.id).paginate()] == ["a4"]


def test_custom_query_class_everywhere(tmp_path: pathlib.Path) -> None:
    class MyQuery(Query[t.Any]):
        def names(self) -> list[str]:
            return [row.name for row in self]

    local = PartitionDB(query_class=MyQuery)

    class Parent(local.Model):  # type: ignore[name-defined,misc]
        id = local.Column(local.Integer, primary_key=True)
        name = local.Column(local.String(10))
        children = local.relationship("Child", lazy="dynamic")

    class Child(local.Model):  # type: ignore[name-defined,misc]
        id = local.Column(local.Integer, primary_key=True)
        name = local.Column(local.String(10))
        parent_id = local.Column(local.ForeignKey("parent.id"))

    app = Flask("custom", instance_path=str(tmp_path))
    app.config["SQLALCHEMY_DATABASE_URI"] = "sqlite:///custom.db"
    local.init_app(app)
    with app.app_context():
        local.create_all()
        parent = Parent(name="p", children=[Child(name="c1"), Child(name="c2")])
        local.session.add(parent)
        local.session.commit()
        assert local.Query is MyQuery
        assert Parent.query.names() == ["p"]
        children = t.cast(MyQuery, local.session.query(Child))
        assert children.order_by(Child.id).names() == ["c1", "c2"]
        assert parent.children.order_by(Child.id).names() == ["c1", "c2"]
        page = parent.children.order_by(Child.id).paginate(page=1, per_page=1)
        assert (page.total, page.has_next) == (2, True)
    for engine in local.get_router(app).engines():
        engine.dispose()


def test_get_or_404_passes_arguments_to_session_get(app: Flask) -> None:
    with app.app_context():
        db.session.add(Author(name="a"))
        db.session.commit()
        author = db.get_or_404(Author, 1)
        with db.engine.begin() as conn:  # behind the session's back
            conn.execute(sa.update(Author).values(name="b"))
        assert db.get_or_404(Author, 1).name == "a"  # the identity map's
        assert db.get_or_404(Author, 1, populate_existing=True) is author
        assert author.name == "b"


# -- pagination --------------------------------------------------------------

PAGE_ATTRIBUTES = (
    "page",
    "per_page",
    "total",
    "pages",
    "has_prev",
    "prev_num",
    "has_next",
    "next_num",
    "first",
    "last",
)


def _page_state(page: t.Any) -> tuple[t.Any, ...]:
    return (
        [item.id for item in page.items],
        *(getattr(page, name) for name in PAGE_ATTRIBUTES),
        list(page.iter_pages()),
        list(
            page.iter_pages(left_edge=0, left_current=1, right_current=0, right_edge=1)
        ),
    )


def _outcome(paginate: t.Callable[..., t.Any], *args: t.Any, **kwargs: t.Any) -> t.Any:
    """The page ``paginate(*args, **kwargs)`` returns and its next and
    previous pages (with and without ``error_out``), or 404.
    """
    try:
        page = paginate(*args, **kwargs)
    except NotFound:
        return 404
    result: list[t.Any] = [_page_state(page)]
    for step in (page.next, page.prev):
        for error_out in (False, True):
            try:
                result.append(_page_state(step(error_out=error_out)))
            except NotFound:
                result.append(404)
    return result


def test_paginate_matches_flask_sqlalchemy(tmp_path: pathlib.Path) -> None:
    extensions: list[t.Any] = [PartitionDB(), flask_sqlalchemy.SQLAlchemy()]
    apps, models = [], []
    for number, extension in enumerate(extensions):

        class Row(extension.Model):  # type: ignore[name-defined,misc]
            id = extension.Column(extension.Integer, primary_key=True)

        app = Flask(f"pages{number}", instance_path=str(tmp_path))
        app.config["SQLALCHEMY_DATABASE_URI"] = f"sqlite:///{tmp_path}/rows{number}.db"
        extension.init_app(app)
        with app.app_context():
            extension.create_all()
            extension.session.add_all([Row(id=n) for n in range(1, 24)])
            extension.session.commit()
        apps.append(app)
        models.append(Row)
    cases = itertools.product(
        [None, 0, 1, 2, 5, 6, 12],  # page
        [None, -1, 0, 1, 5, 10, 30],  # per_page
        [None, 3],  # max_per_page
        [True, False],  # error_out
    )
    for page, per_page, max_per_page, error_out in cases:
        outcomes = []
        for extension, app, model in zip(extensions, apps, models, strict=True):
            with app.test_request_context("/?page=4&per_page=3"):
                outcomes.append(
                    _outcome(
                        extension.paginate,
                        sa.select(model).order_by(model.id),
                        page=page,
                        per_page=per_page,
                        max_per_page=max_per_page,
                        error_out=error_out,
                    )
                )
        assert outcomes[0] == outcomes[1], (page, per_page, max_per_page, error_out)
    for query_string in ("page=x", "per_page=y", "page=2&per_page=z"):
        for error_out in (True, False):
            outcomes = []
            for extension, app, model in zip(extensions, apps, models, strict=True):
                with app.test_request_context(f"/?{query_string}"):
                    outcomes.append(
                        _outcome(
                            extension.paginate,
                            sa.select(model).order_by(model.id),
                            error_out=error_out,
                        )
                    )
            assert outcomes[0] == outcomes[1], (query_string, error_out)
            assert (outcomes[0] == 404) is error_out
    for extension, app in zip(extensions, apps, strict=True):
        with app.app_context():
            for engine in extension.engines.values():
                engine.dispose()


def test_has_next_without_a_count_guesses_from_a_full_page(app: Flask) -> None:
    with app.app_context():
        db.session.add_all([Author(name=f"a{n}") for n in range(5)])
        db.session.commit()
        query = sa.select(Author).order_by(Author.id)
        full = db.paginate(query, page=1, per_page=5, count=False)
        short = db.paginate(query, page=2, per_page=4, count=False)
        assert isinstance(full, Pagination)
        assert (full.total, full.pages, full.has_next) == (None, 0, True)
        assert (short.total, short.has_next, list(short.iter_pages())) == (
            None,
            False,
            [],
        )
        assert full.max_per_page is None
        assert db.paginate(query, per_page=9, max_per_page=2).max_per_page == 2
