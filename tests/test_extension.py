"""PartitionDB as a Flask extension: registration, sessions, schema and the
Flask-SQLAlchemy-style helpers, on the embedded SQLite default.
"""

from __future__ import annotations

import sqlite3
import typing as t

import pytest
import sqlalchemy as sa
import sqlalchemy.orm as sa_orm
from flask import Flask
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column
from werkzeug.exceptions import NotFound

from flask_partition import PartitionDB
from flask_partition import PartitionSession
from flask_partition.model import camel_to_snake_case
from flask_partition.routing import Role
from flask_partition.testing import RoutingRecorder
from partition_models import AppFactory
from partition_models import Author
from partition_models import db
from partition_models import Event


def test_second_instance_on_same_app_is_refused(app: Flask) -> None:
    with pytest.raises(RuntimeError) as info:
        PartitionDB(app)
    assert str(info.value) == (
        "A 'PartitionDB' instance is already registered on this app"
        f" ({app.name!r}). Use that instance; one app has one."
    )
    assert app.extensions["partition"] is db


def test_one_instance_serves_two_apps(make_app: AppFactory, tmp_path: t.Any) -> None:
    first = make_app()
    second = make_app(
        PARTITION_DATABASE_URI="sqlite:///second.db", PARTITION_REPLICAS=None
    )
    with first.app_context():
        db.session.add(Author(name="first"))
        db.session.commit()
        assert db.engine.url.database == str(tmp_path / "app.db")
    with second.app_context():
        assert db.session.scalars(sa.select(Author)).all() == []
        assert db.get_router().default.replicas == ()
        assert set(db.engines) == {None, "analytics"}
    assert db.get_state(first).router is not db.get_state(second).router


def test_unregistered_app_is_a_clear_error() -> None:
    other = Flask("other")
    with other.app_context(), pytest.raises(RuntimeError) as info:
        db.session.get(Author, 1)
    assert str(info.value) == (
        "The Flask app 'other' is not registered with this 'PartitionDB'"
        " instance. Call 'db.init_app(app)' first."
    )


def test_session_scoped_to_app_context_and_removed_at_teardown(app: Flask) -> None:
    with app.app_context():
        session = db.session()
        assert isinstance(session, PartitionSession)
        assert db.session() is session
        with app.app_context():
            assert db.session() is not session  # a nested context: its own
        db.session.add(Author(name="pending"))
    assert len(session.new) == 0  # removed: closed and rolled back
    with app.app_context():
        assert db.session() is not session


def test_sqlite_replica_is_the_same_file_read_only(app: Flask) -> None:
    with app.app_context():
        db.session.add(Author(name="a"))
        db.session.commit()
    with app.app_context():
        with RoutingRecorder(db) as log:
            assert db.session.scalars(sa.select(Author.name)).all() == ["a"]
        assert log.roles() == [Role.REPLICA]
        replica = db.get_router().default.replicas[0]
        with pytest.raises(sa.exc.OperationalError, match="readonly database"):
            with replica.begin() as conn:
                conn.execute(sa.insert(Author).values(name="b", counter=0))


def test_create_all_and_drop_all_narrow_by_bind(app: Flask, tmp_path: t.Any) -> None:
    def tables(name: str) -> set[str]:
        with sqlite3.connect(tmp_path / name) as conn:
            rows = conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
            return {row[0] for row in rows}

    assert tables("app.db") == {"author", "book"}
    assert tables("analytics.db") == {"event"}
    with app.app_context():
        db.drop_all(bind="analytics")
        assert tables("analytics.db") == set()
        assert tables("app.db") == {"author", "book"}
        db.drop_all(bind=[None])
        assert tables("app.db") == set()
        db.create_all()
    assert tables("app.db") == {"author", "book"}
    assert tables("analytics.db") == {"event"}


def test_engines_and_metadatas_for_flask_migrate(app: Flask) -> None:
    with app.app_context():
        router = db.get_router()
        assert db.engines == {
            None: router.default.primary,
            "analytics": router.cluster("analytics").primary,
        }
        assert db.engine is router.default.primary
    assert db.metadatas[None] is db.metadata is Author.metadata
    assert db.metadatas["analytics"] is Event.metadata
    assert set(db.metadatas["analytics"].tables) == {"event"}


def test_table_names_follow_flask_sqlalchemy() -> None:
    assert camel_to_snake_case("OrderLine") == "order_line"
    assert camel_to_snake_case("HTTPRequest") == "http_request"
    assert camel_to_snake_case("User2Role") == "user2_role"
    assert camel_to_snake_case("ABC") == "abc"

    local = PartitionDB()

    class Vehicle(local.Model):  # type: ignore[name-defined,misc]
        id: Mapped[int] = mapped_column(primary_key=True)
        kind: Mapped[str]
        __mapper_args__: t.ClassVar[dict[str, t.Any]] = {"polymorphic_on": "kind"}

    class RaceCar(Vehicle):  # joined inheritance: own primary key, own table
        id: Mapped[int] = mapped_column(sa.ForeignKey("vehicle.id"), primary_key=True)
        __mapper_args__: t.ClassVar[dict[str, t.Any]] = {"polymorphic_identity": "car"}

    class Bicycle(Vehicle):  # single-table inheritance: no table of its own
        __mapper_args__: t.ClassVar[dict[str, t.Any]] = {"polymorphic_identity": "bike"}

    class Named(local.Model):  # type: ignore[name-defined,misc]
        __tablename__ = "explicit_name"
        id: Mapped[int] = mapped_column(primary_key=True)

    assert Vehicle.__table__.name == "vehicle"
    assert RaceCar.__table__.name == "race_car"
    assert Bicycle.__table__ is Vehicle.__table__
    assert Named.__table__.name == "explicit_name"
    assert set(local.metadata.tables) == {"vehicle", "race_car", "explicit_name"}


def test_bind_key_is_inherited_from_a_mixin() -> None:
    local = PartitionDB()

    class InAnalytics:
        __bind_key__ = "analytics"

    class Metric(InAnalytics, local.Model):  # type: ignore[name-defined,misc]
        id: Mapped[int] = mapped_column(primary_key=True)

    class Plain(local.Model):  # type: ignore[name-defined,misc]
        id: Mapped[int] = mapped_column(primary_key=True)

    assert Metric.metadata is local.metadatas["analytics"]
    assert set(local.metadatas["analytics"].tables) == {"metric"}
    assert Plain.metadata is local.metadata


def test_or_404_helpers(app: Flask) -> None:
    with app.app_context():
        db.session.add_all([Author(name="a"), Author(name="b")])
        db.session.commit()
        assert db.get_or_404(Author, 1).name == "a"
        with pytest.raises(NotFound) as info:
            db.get_or_404(Author, 99, description="no such author")
        assert info.value.description == "no such author"
        by_name = sa.select(Author).order_by(Author.name)
        assert db.first_or_404(by_name).name == "a"
        with pytest.raises(NotFound):
            db.first_or_404(by_name.where(Author.name == "z"))
        assert db.one_or_404(by_name.where(Author.name == "b")).name == "b"
        with pytest.raises(NotFound):
            db.one_or_404(by_name)  # two rows


def test_paginate(app: Flask) -> None:
    with app.app_context():
        db.session.add_all([Author(name=f"a{i:02}") for i in range(45)])
        db.session.commit()
    query = sa.select(Author).order_by(Author.id)
    with app.test_request_context("/?page=2&per_page=10"):
        page = db.paginate(query)
        assert [a.name for a in page.items] == [f"a{i:02}" for i in range(10, 20)]
        assert (page.page, page.per_page, page.total, page.pages) == (2, 10, 45, 5)
        assert (page.has_prev, page.prev_num, page.has_next, page.next_num) == (
            True,
            1,
            True,
            3,
        )
        assert (page.first, page.last) == (11, 20)
        assert list(page.iter_pages()) == [1, 2, 3, 4, 5]
        last = page.next().next().next()
        assert (last.page, len(last.items), last.has_next) == (5, 5, False)
        assert last.prev().page == 4
        with pytest.raises(NotFound):
            db.paginate(query, page=9, per_page=10)
        empty = db.paginate(query, page=9, per_page=10, error_out=False)
        assert (empty.items, empty.first, empty.last) == ([], 0, 0)
        assert db.paginate(query, per_page=100, max_per_page=20).per_page == 20
        assert db.paginate(query, count=False).total is None
    with app.test_request_context("/?page=10&per_page=2"):
        page = db.paginate(query)
        assert list(page.iter_pages()) == [
            1,
            2,
            None,
            8,
            9,
            10,
            11,
            12,
            13,
            14,
            None,
            22,
            23,
        ]
    with app.test_request_context("/?page=0"):
        with pytest.raises(NotFound):
            db.paginate(query)
        assert db.paginate(query, error_out=False).page == 1


def test_session_options_and_standalone_session(tmp_path: t.Any) -> None:
    local = PartitionDB(session_options={"expire_on_commit": False})

    class Thing(local.Model):  # type: ignore[name-defined,misc]
        id: Mapped[int] = mapped_column(primary_key=True)

    app = Flask("opts", instance_path=str(tmp_path))
    app.config["PARTITION_DATABASE_URI"] = "sqlite:///opts.db"
    local.init_app(app)
    with app.app_context():
        local.create_all()
        assert local.session().expire_on_commit is False
        router = local.get_router()
    with PartitionSession(router=router) as session:
        session.add(Thing(id=7))
        session.commit()
        assert session.get(Thing, 7) is not None
    with pytest.raises(TypeError, match="needs 'db' or 'router'"):
        PartitionSession()
    for engine in router.engines():
        engine.dispose()
    assert isinstance(local.session, sa_orm.scoped_session)
