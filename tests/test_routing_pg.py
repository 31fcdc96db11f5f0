"""Routing rules proven on a real primary with paused streaming replicas:
a row the replicas have not replayed shows which node answered.
"""

from __future__ import annotations

import sqlalchemy as sa
from flask import Flask

from flask_partition import PartitionSession
from flask_partition import ReadOnlyError
from flask_partition import use_primary
from flask_partition import use_replica
from flask_partition.routing import Role
from flask_partition.testing import PostgresTopology
from flask_partition.testing import RoutingRecorder
from partition_models import AppFactory
from partition_models import Author
from partition_models import Book
from partition_models import db
from partition_models import Event


def _names() -> list[str]:
    return list(db.session.scalars(sa.select(Author.name).order_by(Author.name)))


def _insert_on_primary(pg: PostgresTopology, name: str) -> None:
    assert pg.primary is not None
    pg.primary.query(
        "INSERT INTO author (name, counter) VALUES (%s, 0)", (name,), database="app"
    )


def test_row_written_behind_the_app_is_invisible_on_replicas(
    pg: PostgresTopology, pg_app: Flask
) -> None:
    pg.pause_replay()
    _insert_on_primary(pg, "direct")
    with pg_app.app_context():
        assert _names() == []  # a replica answered: it has not replayed the row
        with use_primary():
            assert _names() == ["direct"]
        assert _names() == []  # the pin ended with the block
    pg.resume_replay()
    with pg_app.app_context():
        assert _names() == ["direct"]


def test_own_write_visible_in_same_request_and_after_commit(
    pg: PostgresTopology, pg_app: Flask
) -> None:
    pg.pause_replay()
    with pg_app.app_context():
        db.session.add(Author(name="mine"))
        db.session.flush()
        assert _names() == ["mine"]  # same transaction, primary
        db.session.commit()
        assert _names() == ["mine"]  # after commit: still the primary
    with pg_app.app_context():
        assert _names() == []  # a new session without writes reads a replica


def test_expired_attributes_refresh_and_lazy_loads_read_the_primary(
    pg: PostgresTopology, pg_app: Flask
) -> None:
    pg.pause_replay()
    with pg_app.app_context():
        author = Author(name="ann", books=[Book(title="one")])
        db.session.add(author)
        db.session.commit()
        # expire_on_commit: reloading from a replica would raise
        # ObjectDeletedError, since the replica has no such row.
        assert author.name == "ann"
        _insert_on_primary(pg, "other")
        db.session.refresh(author)
        assert author.name == "ann"
        db.session.expire(author, ["books"])
        assert [b.title for b in author.books] == ["one"]  # lazy load
        with RoutingRecorder(db) as log:
            db.session.get(Author, author.id, populate_existing=True)
            db.session.scalars(sa.select(Book)).all()
        assert log.roles() == [Role.PRIMARY, Role.PRIMARY]


def test_core_writes_locks_and_text_go_to_the_primary(
    pg: PostgresTopology, pg_app: Flask
) -> None:
    pg.pause_replay()
    _insert_on_primary(pg, "locked")
    with pg_app.app_context():
        with RoutingRecorder(db) as log:
            row = db.session.execute(
                sa.select(Author.name).with_for_update()
            ).scalar_one()
        assert row == "locked"  # the replica has no row to lock
        assert log.roles() == [Role.PRIMARY]
    with pg_app.app_context():
        with RoutingRecorder(db) as log:
            db.session.execute(sa.insert(Author).values(name="core", counter=0))
            db.session.execute(
                sa.text("INSERT INTO author (name, counter) VALUES ('text', 0)")
            )
            db.session.commit()
        assert log.roles() == [Role.PRIMARY, Role.PRIMARY]
    assert pg.primary is not None
    rows = pg.primary.query("SELECT name FROM author ORDER BY name", database="app")
    assert rows == [("core",), ("locked",), ("text",)]
    with pg_app.app_context():
        with RoutingRecorder(db) as log:
            db.session.execute(sa.text("SELECT 1"))
            _names()
        # text() is ambiguous: primary, and the cluster counts as written.
        assert log.roles() == [Role.PRIMARY, Role.PRIMARY]


def test_sequence_next_value_goes_to_the_primary(pg_app: Flask) -> None:
    sequence = sa.Sequence("test_routing_seq")
    with pg_app.app_context():
        with db.engine.begin() as conn:
            conn.execute(sa.schema.CreateSequence(sequence, if_not_exists=True))
        with RoutingRecorder(db) as log:
            first = db.session.scalar(sequence.next_value())
            second = db.session.execute(sa.select(sequence.next_value())).scalar()
        assert first is not None and second == first + 1
        assert log.roles() == [Role.PRIMARY, Role.PRIMARY]


def test_text_with_mapper_or_bind_key_runs_on_that_cluster(pg_app: Flask) -> None:
    query = sa.text("SELECT current_database()")
    with pg_app.app_context():
        assert db.session.scalar(query) == "app"
        on_event = db.session.scalar(query, bind_arguments={"mapper": Event})
        assert on_event == "analytics"
        by_key = db.session.scalar(query, bind_arguments={"bind_key": "analytics"})
        assert by_key == "analytics"
        conn = db.session.connection(bind_arguments={"mapper": Event})
        assert conn.exec_driver_sql("SELECT current_database()").scalar() == "analytics"
        assert db.get_router().node(conn.engine) == ("analytics", Role.PRIMARY, 0)


def test_atomic_counter_from_two_sessions(pg: PostgresTopology, pg_app: Flask) -> None:
    with pg_app.app_context():
        db.session.add(Author(name="count"))
        db.session.commit()
    pg.wait_for_replay()
    pg.pause_replay()
    with pg_app.app_context():
        first = PartitionSession(db=db)
        second = PartitionSession(db=db)
        a = first.scalars(sa.select(Author)).one()
        b = second.scalars(sa.select(Author)).one()
        assert a.counter == b.counter == 0  # both loaded before either wrote
        a.counter = Author.counter + 1
        b.counter = Author.counter + 1
        first.commit()
        second.commit()
        assert b.counter == 2  # reloaded from the primary, not the paused replica
        first.close()
        second.close()
        with use_primary():
            assert db.session.scalars(sa.select(Author.counter)).one() == 2


def test_one_replica_per_session_and_policy_spreads(
    pg: PostgresTopology, make_pg_app: AppFactory
) -> None:
    for policy in ("round_robin", "random"):
        app = make_pg_app(PARTITION_REPLICA_POLICY=policy)
        used: set[tuple[Role, int]] = set()
        for _request in range(40):
            with app.app_context():
                with RoutingRecorder(db) as log:
                    for _read in range(5):
                        _names()
                        db.session.scalars(sa.select(Event)).all()
                assert len(log.nodes(None)) == 1, policy  # monotonic reads
                assert len(log.nodes("analytics")) == 1, policy
                used |= log.nodes(None)
        assert used == {(Role.REPLICA, 0), (Role.REPLICA, 1)}, policy


def test_use_replica_refuses_writes_and_sends_nothing(
    pg: PostgresTopology, pg_app: Flask
) -> None:
    with pg_app.app_context():
        with RoutingRecorder(db) as log, use_replica():
            db.session.add(Author(name="nope"))
            try:
                db.session.commit()
            except ReadOnlyError as error:
                message = str(error)
            else:
                raise AssertionError("commit inside use_replica succeeded")
        db.session.rollback()
        assert message.startswith("Cannot flush 1 new, 0 changed and 0 deleted")
        assert log.statements == []
    assert pg.primary is not None
    assert pg.primary.query("SELECT count(*) FROM author", database="app") == [(0,)]


def test_text_under_use_replica_reaches_a_replica_which_refuses_writes(
    pg_app: Flask,
) -> None:
    with pg_app.app_context(), use_replica():
        assert db.session.scalar(sa.text("SELECT pg_is_in_recovery()")) is True
        try:
            db.session.execute(
                sa.text("INSERT INTO author (name, counter) VALUES ('x', 0)")
            )
        except sa.exc.InternalError as error:
            assert "read-only transaction" in str(error)
        else:
            raise AssertionError("a replica accepted an INSERT")


def test_bind_rows_land_in_the_bind_database_only(
    pg: PostgresTopology, pg_app: Flask
) -> None:
    pg.pause_replay()
    with pg_app.app_context():
        db.session.add(Event(name="signup"))
        db.session.add(Author(name="user"))
        db.session.commit()
        # Core select on the bound table: routed to analytics; this session
        # wrote there, so its primary answers despite the paused replicas.
        rows = db.session.execute(sa.select(Event.__table__.c.name)).all()
        assert [r.name for r in rows] == ["signup"]
    with pg_app.app_context():
        with RoutingRecorder(db) as log:
            assert db.session.execute(sa.select(Event.__table__)).all() == []
        assert log.nodes("analytics") <= {(Role.REPLICA, 0), (Role.REPLICA, 1)}
        assert len(log.nodes("analytics")) == 1
    assert pg.primary is not None
    assert pg.primary.query("SELECT name FROM event", database="analytics") == [
        ("signup",)
    ]
    tables = pg.primary.query(
        "SELECT table_name FROM information_schema.tables"
        " WHERE table_schema = 'public' ORDER BY 1",
        database="app",
    )
    assert tables == [("author",), ("book",)]
