"""Schema migrations on real PostgreSQL servers: Flask-Migrate's
multi-database template upgrades and downgrades the default cluster, the
'analytics' bind and the shards 'eu', 'us' and 'ap' with one command, a
failure on one shard rolls every database back, and ``flask partition
status`` flags a shard left behind until it is upgraded.

The tests use databases of their own ('mig' and 'mig_analytics'), so that
their tables and version tables never meet the other tests'.
"""

from __future__ import annotations

import json
import pathlib
import typing as t

import pytest
from flask import Flask
from flask_migrate import Migrate

from alembic_support import downgrade_alone
from alembic_support import flask_db
from alembic_support import function_body
from alembic_support import partition
from alembic_support import preserved_logging
from flask_partition import cli
from flask_partition.testing import PostgresNode
from flask_partition.testing import PostgresTopology
from shard_models import sdb
from shard_models import ShardAppFactory

SHARDS = ["eu", "us", "ap"]
SHARD_TABLES = {"order", "order_line", "payment"}


@pytest.fixture(autouse=True)
def _restore_logging() -> t.Iterator[None]:
    with preserved_logging():
        yield


@pytest.fixture(scope="module")
def databases(pg: PostgresTopology) -> dict[str | None, tuple[PostgresNode, str]]:
    """The primary and database of each cluster, created once."""
    assert pg.primary is not None
    where: dict[str | None, tuple[PostgresNode, str]] = {
        None: (pg.primary, "mig"),
        "analytics": (pg.primary, "mig_analytics"),
    }
    where.update({name: (pg.shards[name].primary, "mig") for name in SHARDS})
    for node, name in where.values():
        if not node.query("SELECT 1 FROM pg_database WHERE datname = %s", (name,)):
            node.query(f'CREATE DATABASE "{name}"')
    pg.wait_for_replay()
    return where


def tables(node: PostgresNode, database: str) -> set[str]:
    rows = node.query(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public'",
        database=database,
    )
    return {row[0] for row in rows}


def versions(node: PostgresNode, database: str) -> list[str]:
    if "alembic_version" not in tables(node, database):
        return []
    rows = node.query("SELECT version_num FROM alembic_version", database=database)
    return [row[0] for row in rows]


def drop_everything(databases: dict[str | None, tuple[PostgresNode, str]]) -> None:
    for node, database in databases.values():
        for table in tables(node, database):
            node.query(f'DROP TABLE IF EXISTS "{table}" CASCADE', database=database)


@pytest.fixture
def app(
    pg: PostgresTopology,
    make_pg_shard_app: ShardAppFactory,
    databases: dict[str | None, tuple[PostgresNode, str]],
    tmp_path: pathlib.Path,
) -> t.Iterator[Flask]:
    """The app of :mod:`shard_models` on the 'mig' databases, empty, with
    Flask-Migrate's folder in a temporary directory.
    """
    assert pg.primary is not None
    app = make_pg_shard_app(
        PARTITION_DATABASE_URI=pg.primary.url("mig"),
        PARTITION_REPLICAS=[r.url("mig") for r in pg.replicas],
        PARTITION_BINDS={"analytics": pg.primary.url("mig_analytics")},
        PARTITION_SHARDS={name: pg.shards[name].config("mig") for name in SHARDS},
    )
    drop_everything(databases)
    Migrate(app, sdb, directory=str(tmp_path / "migrations"))
    yield app
    for engine in sdb.get_router(app).engines():
        engine.dispose()
    drop_everything(databases)


def expected_tables(name: str | None) -> set[str]:
    if name is None:
        return {"customer"}
    if name == "analytics":
        return {"audit_event"}
    return SHARD_TABLES


def only_revision(folder: pathlib.Path, message: str) -> str:
    (script,) = (folder / "versions").glob(f"*_{message}.py")
    return script.name.split("_")[0]


def status(app: Flask) -> tuple[int, dict[str | None, dict[str, t.Any]]]:
    result = partition(app, "status", "--json", "--timeout", "3")
    data = json.loads(result.stdout)
    primaries = {n["cluster"]: n for n in data["nodes"] if n["role"] == "primary"}
    return result.exit_code, primaries


def test_upgrade_and_downgrade_every_cluster(
    pg: PostgresTopology,
    app: Flask,
    databases: dict[str | None, tuple[PostgresNode, str]],
    tmp_path: pathlib.Path,
) -> None:
    folder = tmp_path / "migrations"
    flask_db(app, "init", "--multidb")
    flask_db(app, "migrate", "-m", "initial")
    first = only_revision(folder, "initial")
    source = next((folder / "versions").glob("*_initial.py")).read_text()
    bodies = [function_body(source, f"upgrade_{name}") for name in SHARDS]
    assert "op.create_table('order_line'" in bodies[0]
    assert bodies[0] == bodies[1] == bodies[2]
    for name, (node, database) in databases.items():
        assert tables(node, database) == {"alembic_version"}, name

    flask_db(app, "upgrade")
    for name, (node, database) in databases.items():
        assert tables(node, database) == {"alembic_version", *expected_tables(name)}
        assert versions(node, database) == [first], name
    pg.wait_for_replay()
    eu_replica = pg.shards["eu"].replicas[0]
    assert tables(eu_replica, "mig") == {"alembic_version", *SHARD_TABLES}

    # A second revision, written by hand: an index on every shard.
    flask_db(app, "revision", "-m", "note_index")
    second = only_revision(folder, "note_index")
    script = next((folder / "versions").glob("*_note_index.py"))
    text = script.read_text()
    for name in SHARDS:
        text = text.replace(
            f"def upgrade_{name}():\n    pass",
            f"def upgrade_{name}():\n    op.create_index('ix_order_note', 'order',"
            " ['note'])",
        ).replace(
            f"def downgrade_{name}():\n    pass",
            f"def downgrade_{name}():\n    op.drop_index('ix_order_note', 'order')",
        )
    script.write_text(text)
    flask_db(app, "upgrade")
    index = "SELECT indexname FROM pg_indexes WHERE indexname = 'ix_order_note'"
    for name in SHARDS:
        node, database = databases[name]
        assert node.query(index, database=database) == [("ix_order_note",)]
        assert versions(node, database) == [second]
    assert versions(*databases[None]) == [second]
    code, primaries = status(app)
    assert code == 0
    assert {k: v["revisions"] for k, v in primaries.items()} == dict.fromkeys(
        [None, "analytics", *SHARDS], [second]
    )

    # Shard 'eu' goes back one revision on its own: status flags it.
    assert downgrade_alone(app, sdb, folder, "eu") == first
    eu, database = databases["eu"]
    assert eu.query(index, database=database) == []
    result = partition(app, "status", "--timeout", "3")
    assert result.exit_code == cli.EXIT_FAILED
    rows = {
        (row[0], row[2]): row
        for row in (line.split() for line in result.stdout.splitlines()[1:])
    }
    assert rows[("eu", "primary")][6] == first
    assert rows[("us", "primary")][6] == second
    assert rows[("eu", "replica[0]")][6] == "-"
    assert (
        f"shard 'eu' primary: at revision {first}, behind the head {second} of"
        f" {str(folder)!r}: run 'flask db upgrade'"
    ) in result.stderr.splitlines()
    assert (
        f"Migrations in {str(folder)!r} (head {second}): 4 of 5 clusters at the"
        " head, 1 behind."
    ) in result.stderr.splitlines()
    code, primaries = status(app)
    assert code == cli.EXIT_FAILED
    assert [k for k, v in primaries.items() if v["revision_error"]] == ["eu"]

    # 'flask db upgrade' brings the shard that is behind to the head.
    output = flask_db(app, "upgrade")
    assert output.count(f"Running upgrade {first} -> {second}") == 1
    assert eu.query(index, database=database) == [("ix_order_note",)]
    code, primaries = status(app)
    assert code == 0
    assert all(v["revision_error"] is None for v in primaries.values())

    flask_db(app, "downgrade", "base")
    for name, (node, database) in databases.items():
        assert tables(node, database) == {"alembic_version"}, name
        assert versions(node, database) == [], name


def test_a_failing_shard_rolls_every_database_back(
    app: Flask, databases: dict[str | None, tuple[PostgresNode, str]]
) -> None:
    flask_db(app, "init", "--multidb")
    flask_db(app, "migrate", "-m", "initial")
    # Shard 'ap' is migrated last, and already has a table the revision
    # creates.
    ap, database = databases["ap"]
    ap.query("CREATE TABLE payment (id integer)", database=database)
    result = app.test_cli_runner().invoke(args=["db", "upgrade"])
    assert result.exit_code != 0
    assert 'relation "payment" already exists' in str(result.exception)
    # PostgreSQL's DDL is transactional, and the template commits only after
    # every database has run its steps: nothing was changed anywhere.
    for name, (node, database) in databases.items():
        expected = {"alembic_version", *(["payment"] if name == "ap" else [])}
        assert tables(node, database) == expected, name
    code, primaries = status(app)
    assert code == cli.EXIT_FAILED
    assert all(v["revisions"] == [] for v in primaries.values())
    # Fix the cause and run the same command again.
    ap.query("DROP TABLE payment", database=database)
    flask_db(app, "upgrade")
    for name, (node, database) in databases.items():
        assert tables(node, database) == {"alembic_version", *expected_tables(name)}
    assert status(app)[0] == 0


def test_two_phase_upgrade(
    app: Flask,
    databases: dict[str | None, tuple[PostgresNode, str]],
    tmp_path: pathlib.Path,
) -> None:
    flask_db(app, "init", "--multidb")
    env = tmp_path / "migrations" / "env.py"
    text = env.read_text()
    assert "USE_TWOPHASE = False" in text
    env.write_text(text.replace("USE_TWOPHASE = False", "USE_TWOPHASE = True"))
    flask_db(app, "migrate", "-m", "initial")
    first = only_revision(tmp_path / "migrations", "initial")
    flask_db(app, "upgrade")
    for name, (node, database) in databases.items():
        assert tables(node, database) == {"alembic_version", *expected_tables(name)}
        assert versions(node, database) == [first]
        assert node.query("SELECT gid FROM pg_prepared_xacts") == []
    flask_db(app, "downgrade")
    for name, (node, database) in databases.items():
        assert tables(node, database) == {"alembic_version"}, name
