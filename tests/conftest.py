from __future__ import annotations

import typing as t

import pytest
from flask import Flask

from flask_partition import PartitionDB
from flask_partition.testing import PostgresTopology
from partition_models import AppFactory
from partition_models import db
from pg_support import require_postgres
from shard_models import sdb
from shard_models import ShardAppFactory


def _dispose(app: Flask, extension: PartitionDB = db) -> None:
    for engine in extension.get_router(app).engines():
        engine.dispose()


@pytest.fixture
def make_app(tmp_path: t.Any) -> t.Iterator[AppFactory]:
    """Build an app on SQLite files in a temp folder: a primary, a read-only
    replica of the same file and an 'analytics' bind; keywords override config.
    """
    apps: list[Flask] = []

    def factory(**config: t.Any) -> Flask:
        app = Flask(f"test{len(apps)}", instance_path=str(tmp_path))
        app.config.update(
            TESTING=True,
            SECRET_KEY="test secret",
            PARTITION_DATABASE_URI="sqlite:///app.db",
            PARTITION_REPLICAS=["sqlite:///app.db"],
            PARTITION_BINDS={"analytics": "sqlite:///analytics.db"},
        )
        app.config.update(config)
        db.init_app(app)
        with app.app_context():
            db.create_all()
        apps.append(app)
        return app

    yield factory
    for app in apps:
        _dispose(app)


@pytest.fixture
def app(make_app: AppFactory) -> Flask:
    return make_app()


@pytest.fixture(scope="session")
def pg() -> t.Iterator[PostgresTopology]:
    """A PostgreSQL primary with two streaming replicas for the whole run.

    Databases: 'app' (default cluster) and 'analytics' (a bind). Locally
    without PostgreSQL the tests that use it skip; in CI they fail.
    """
    require_postgres()
    with PostgresTopology(
        replicas=2,
        databases=["app", "analytics"],
        shards={"eu": 1, "us": 0, "ap": 0},
    ) as topology:
        yield topology


@pytest.fixture
def make_pg_app(pg: PostgresTopology) -> t.Iterator[AppFactory]:
    """Build an app on the PostgreSQL topology with fresh tables; replay is
    resumed after the test whatever it paused.
    """
    apps: list[Flask] = []

    def factory(**config: t.Any) -> Flask:
        assert pg.primary is not None
        app = Flask(f"pg{len(apps)}")
        app.config.update(
            TESTING=True,
            SECRET_KEY="test secret",
            PARTITION_DATABASE_URI=pg.primary.url("app"),
            PARTITION_REPLICAS=[r.url("app") for r in pg.replicas],
            PARTITION_BINDS={
                "analytics": {
                    "primary": pg.primary.url("analytics"),
                    "replicas": [r.url("analytics") for r in pg.replicas],
                }
            },
        )
        app.config.update(config)
        db.init_app(app)
        if not apps:
            with app.app_context():
                db.drop_all()
                db.create_all()
            pg.wait_for_replay()
        apps.append(app)
        return app

    yield factory
    pg.resume_replay()
    for app in apps:
        _dispose(app)


@pytest.fixture
def pg_app(make_pg_app: AppFactory) -> Flask:
    return make_pg_app()


@pytest.fixture
def make_shard_app(tmp_path: t.Any) -> t.Iterator[ShardAppFactory]:
    """Build an app of :mod:`shard_models` on SQLite files: the default
    cluster, an 'analytics' bind and shards 'a', 'b' and 'c' ('c' with a
    read-only replica); keywords override config.
    """
    apps: list[Flask] = []

    def factory(**config: t.Any) -> Flask:
        app = Flask(f"shards{len(apps)}", instance_path=str(tmp_path))
        app.config.update(
            TESTING=True,
            SECRET_KEY="test secret",
            PARTITION_DATABASE_URI="sqlite:///app.db",
            PARTITION_BINDS={"analytics": "sqlite:///analytics.db"},
            PARTITION_SHARDS={
                "a": "sqlite:///a.db",
                "b": "sqlite:///b.db",
                "c": {"primary": "sqlite:///c.db", "replicas": ["sqlite:///c.db"]},
            },
        )
        app.config.update(config)
        sdb.init_app(app)
        with app.app_context():
            sdb.create_all()
        apps.append(app)
        return app

    yield factory
    for app in apps:
        _dispose(app, sdb)


@pytest.fixture
def make_pg_shard_app(pg: PostgresTopology) -> t.Iterator[ShardAppFactory]:
    """Build an app of :mod:`shard_models` on PostgreSQL: the default cluster
    (primary + 2 replicas), the 'analytics' bind and shard servers 'eu'
    (with a streaming replica), 'us' and 'ap'; tables are fresh.
    """
    apps: list[Flask] = []

    def factory(**config: t.Any) -> Flask:
        assert pg.primary is not None
        app = Flask(f"pgshards{len(apps)}")
        app.config.update(
            TESTING=True,
            SECRET_KEY="test secret",
            PARTITION_DATABASE_URI=pg.primary.url("app"),
            PARTITION_REPLICAS=[r.url("app") for r in pg.replicas],
            PARTITION_BINDS={"analytics": pg.primary.url("analytics")},
            PARTITION_SHARDS={name: s.config("app") for name, s in pg.shards.items()},
        )
        app.config.update(config)
        sdb.init_app(app)
        if not apps:
            with app.app_context():
                sdb.drop_all()
                sdb.create_all()
            pg.wait_for_replay()
        apps.append(app)
        return app

    yield factory
    for shard in pg.shards.values():
        if shard.replicas:
            pg.resume_replay(*shard.replicas)
    pg.resume_replay()
    for app in apps:
        _dispose(app, sdb)
