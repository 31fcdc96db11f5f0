"""Flask-Migrate's multi-database template migrates the default cluster, the
binds and every shard (SQLite files), and ``flask partition status`` reports
each cluster's revision and flags the ones behind.
"""

from __future__ import annotations

import json
import pathlib
import sqlite3
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
from shard_models import sdb
from shard_models import ShardAppFactory

SHARD_TABLES = {"order", "order_line", "payment"}
DATABASES = ["app", "analytics", "a", "b", "c"]


@pytest.fixture(autouse=True)
def _restore_logging() -> t.Iterator[None]:
    with preserved_logging():
        yield


def tables(path: pathlib.Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        return {row[0] for row in rows}


def version(path: pathlib.Path) -> list[str]:
    with sqlite3.connect(path) as conn:
        return [
            row[0] for row in conn.execute("SELECT version_num FROM alembic_version")
        ]


def set_version(path: pathlib.Path, revision: str) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS alembic_version (version_num TEXT)")
        conn.execute("DELETE FROM alembic_version")
        conn.execute("INSERT INTO alembic_version VALUES (?)", (revision,))


def empty_app(make_shard_app: ShardAppFactory, **config: t.Any) -> Flask:
    """An app of :mod:`shard_models` whose databases have no tables yet."""
    app = make_shard_app(**config)
    with app.app_context():
        sdb.drop_all()
    return app


def status(app: Flask) -> tuple[int, dict[str, t.Any]]:
    result = partition(app, "status", "--json")
    data = json.loads(result.stdout)
    return result.exit_code, data


def primaries(data: dict[str, t.Any]) -> dict[str | None, dict[str, t.Any]]:
    return {n["cluster"]: n for n in data["nodes"] if n["role"] == "primary"}


@pytest.fixture
def migrated(
    make_shard_app: ShardAppFactory, tmp_path: pathlib.Path
) -> tuple[Flask, str]:
    """An app migrated to its first revision with the multi-database
    template; returns it and the revision.
    """
    app = empty_app(make_shard_app)
    Migrate(app, sdb, directory=str(tmp_path / "migrations"))
    flask_db(app, "init", "--multidb")
    flask_db(app, "migrate", "-m", "initial")
    flask_db(app, "upgrade")
    (script,) = (tmp_path / "migrations" / "versions").glob("*_initial.py")
    return app, script.name.split("_")[0]


def test_names_flask_migrate_sees(
    make_shard_app: ShardAppFactory, tmp_path: pathlib.Path
) -> None:
    app = make_shard_app()
    other = Flask("noshards", instance_path=str(tmp_path))
    other.config.update(
        SECRET_KEY="test secret",
        PARTITION_DATABASE_URI="sqlite:///app.db",
        PARTITION_BINDS={"analytics": "sqlite:///analytics.db"},
    )
    sdb.init_app(other)
    with app.app_context():
        assert sdb.bind_names() == ["analytics", "a", "b", "c"]
        router = sdb.get_router()
        assert sdb.get_engine(bind="a") is router.shards["a"].primary
        assert sdb.get_engine("c") is router.shards["c"].primary
        assert sdb.get_engine(bind="analytics") is sdb.engines["analytics"]
        metadatas = sdb.metadatas
        assert metadatas["b"] is sdb.shard_metadata
        assert metadatas[None] is sdb.metadata
        # Shards answer lookups only: loops over db.metadatas see the binds.
        assert "b" not in metadatas
        assert metadatas.get("b") is None
        assert sdb.shard_metadata not in metadatas.values()
        with pytest.raises(KeyError):
            metadatas["nope"]
    with other.app_context():
        assert sdb.bind_names() == ["analytics"]
        with pytest.raises(KeyError):
            sdb.metadatas["a"]
    with pytest.raises(KeyError):
        sdb.metadatas["a"]  # no application context: no shards
    for engine in sdb.get_router(other).engines():
        engine.dispose()


def test_multidb_template_migrates_every_shard(
    migrated: tuple[Flask, str], tmp_path: pathlib.Path
) -> None:
    app, revision = migrated
    (script,) = (tmp_path / "migrations" / "versions").glob("*_initial.py")
    source = script.read_text()
    assert "op.create_table('customer'" in function_body(source, "upgrade_")
    assert "op.create_table('audit_event'" in function_body(source, "upgrade_analytics")
    bodies = {name: function_body(source, f"upgrade_{name}") for name in "abc"}
    assert "op.create_table('order_line'" in bodies["a"]
    assert bodies["a"] == bodies["b"] == bodies["c"]
    assert "op.drop_table('order')" in function_body(source, "downgrade_c")
    assert tables(tmp_path / "app.db") == {"alembic_version", "customer"}
    assert tables(tmp_path / "analytics.db") == {"alembic_version", "audit_event"}
    for shard in "abc":
        assert tables(tmp_path / f"{shard}.db") == {"alembic_version", *SHARD_TABLES}
    for name in DATABASES:
        assert version(tmp_path / f"{name}.db") == [revision]
    assert "No changes in schema detected." in flask_db(app, "migrate")
    flask_db(app, "downgrade")
    for name in DATABASES:
        assert tables(tmp_path / f"{name}.db") == {"alembic_version"}
        assert version(tmp_path / f"{name}.db") == []


def test_status_shows_revisions(
    migrated: tuple[Flask, str], tmp_path: pathlib.Path
) -> None:
    app, revision = migrated
    result = partition(app, "status")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split()[-2:] == ["REVISION", "URL"]
    rows = [line.split() for line in lines[1:-2]]
    assert [(row[0], row[2], row[6]) for row in rows] == [
        ("default", "primary", revision),
        ("analytics", "primary", revision),
        ("a", "primary", revision),
        ("b", "primary", revision),
        ("c", "primary", revision),
        ("c", "replica[0]", "-"),
    ]
    where = repr(str(tmp_path / "migrations"))
    assert lines[-2:] == [
        f"Migrations in {where} (head {revision}): 5 of 5 clusters at the head.",
        "6 of 6 nodes reachable.",
    ]
    assert result.stderr == ""
    code, data = status(app)
    assert code == 0 and data["ok"] is True
    assert data["migrations"] == {
        "directory": str(tmp_path / "migrations"),
        "heads": [revision],
        "error": None,
    }
    assert {k: v["revisions"] for k, v in primaries(data).items()} == dict.fromkeys(
        [None, "analytics", "a", "b", "c"], [revision]
    )
    (replica,) = [n for n in data["nodes"] if n["role"] == "replica"]
    assert replica["revisions"] is None  # a replica holds its primary's
    assert all(n["revision_error"] is None for n in data["nodes"])


def test_status_flags_a_shard_behind_until_upgraded(
    migrated: tuple[Flask, str], tmp_path: pathlib.Path
) -> None:
    app, revision = migrated
    assert downgrade_alone(app, sdb, tmp_path / "migrations", "b") == "base"
    assert tables(tmp_path / "b.db") == {"alembic_version"}
    assert tables(tmp_path / "a.db") == {"alembic_version", *SHARD_TABLES}
    result = partition(app, "status")
    assert result.exit_code == cli.EXIT_FAILED
    rows = [line.split() for line in result.stdout.splitlines()[1:]]
    assert rows[3][:7] == ["b", "shard", "primary", "ok", "-", "-", "none"]
    where = repr(str(tmp_path / "migrations"))
    assert result.stderr.splitlines() == [
        f"shard 'b' primary: no migration applied, the head of {where} is"
        f" {revision}: run 'flask db upgrade'",
        f"Migrations in {where} (head {revision}): 4 of 5 clusters at the head,"
        " 1 behind.",
        "6 of 6 nodes reachable.",
    ]
    # Autogenerate refuses to compare with a database that is behind.
    output = app.test_cli_runner().invoke(args=["db", "migrate"]).output
    assert "Target database is not up to date." in output
    # A revision that is not in the scripts is reported as such.
    set_version(tmp_path / "a.db", "feedface0000")
    code, data = status(app)
    assert code == cli.EXIT_FAILED and data["ok"] is False
    assert primaries(data)["a"]["revisions"] == ["feedface0000"]
    assert primaries(data)["a"]["revision_error"] == (
        f"at revision feedface0000, which the migration scripts in {where} do"
        " not have: a newer release, or another migrations folder, migrated it"
    )
    set_version(tmp_path / "a.db", revision)
    # Upgrading again migrates the shard that is behind; the others are
    # already at the head.
    output = flask_db(app, "upgrade")
    assert output.count(f"Running upgrade  -> {revision}") == 1
    assert tables(tmp_path / "b.db") == {"alembic_version", *SHARD_TABLES}
    code, data = status(app)
    assert code == 0 and data["ok"] is True
    assert all(n["revision_error"] is None for n in data["nodes"])


def test_status_tells_how_to_add_a_shard(
    migrated: tuple[Flask, str], make_shard_app: ShardAppFactory, tmp_path: pathlib.Path
) -> None:
    _, revision = migrated
    shards = {name: f"sqlite:///{name}.db" for name in "abcd"}
    app = make_shard_app(PARTITION_SHARDS=shards)
    Migrate(app, sdb, directory=str(tmp_path / "migrations"))
    with app.app_context():
        sdb.drop_all(shard="d")
    code, data = status(app)
    assert code == cli.EXIT_FAILED
    assert primaries(data)["d"]["revision_error"] == (
        "no migration applied, and the migration scripts have no 'upgrade_d()'"
        " (shard added after them), so 'flask db upgrade' fails: run 'flask"
        " partition create-all --shard d', then 'flask db stamp head'"
    )
    # As the message says: the old revisions cannot migrate the new shard.
    result = app.test_cli_runner().invoke(args=["db", "upgrade"])
    assert isinstance(result.exception, KeyError)
    assert str(result.exception) == "'upgrade_d'"
    assert partition(app, "create-all", "--shard", "d").exit_code == 0
    flask_db(app, "stamp", "head")
    assert version(tmp_path / "d.db") == [revision]
    assert tables(tmp_path / "d.db") == {"alembic_version", *SHARD_TABLES}
    assert status(app)[0] == 0
    # Flask-Migrate's env.py keeps the first command's empty-revision check
    # for the app's later commands; a new app gets a check of its own.
    fresh = make_shard_app(PARTITION_SHARDS=shards)
    Migrate(fresh, sdb, directory=str(tmp_path / "migrations"))
    assert "No changes in schema detected." in flask_db(fresh, "migrate")


def test_single_database_template_tracks_the_default_cluster(
    make_shard_app: ShardAppFactory, tmp_path: pathlib.Path
) -> None:
    app = empty_app(make_shard_app)
    Migrate(app, sdb, directory=str(tmp_path / "migrations"))
    flask_db(app, "init")
    flask_db(app, "migrate", "-m", "initial")
    flask_db(app, "upgrade")
    (script,) = (tmp_path / "migrations" / "versions").glob("*_initial.py")
    revision = script.name.split("_")[0]
    code, data = status(app)
    # The binds and shards are not this template's business: not flagged.
    assert code == 0, data
    assert {k: v["revisions"] for k, v in primaries(data).items()} == {
        None: [revision],
        "analytics": [],
        "a": [],
        "b": [],
        "c": [],
    }
    flask_db(app, "downgrade")
    code, data = status(app)
    assert code == cli.EXIT_FAILED
    where = repr(str(tmp_path / "migrations"))
    assert primaries(data)[None]["revision_error"] == (
        f"no migration applied, the head of {where} is {revision}:"
        " run 'flask db upgrade'"
    )
    assert [k for k, v in primaries(data).items() if v["revision_error"]] == [None]


def test_without_flask_migrate_shards_are_compared(
    make_shard_app: ShardAppFactory, tmp_path: pathlib.Path
) -> None:
    app = make_shard_app()
    code, data = status(app)
    assert code == 0 and data["migrations"] is None
    assert {k: v["revisions"] for k, v in primaries(data).items()} == dict.fromkeys(
        [None, "analytics", "a", "b", "c"], []
    )
    set_version(tmp_path / "app.db", "0001")  # not a shard: not compared
    for shard in "abc":
        set_version(tmp_path / f"{shard}.db", "0002")
    assert status(app)[0] == 0
    set_version(tmp_path / "c.db", "0001")
    result = partition(app, "status")
    assert result.exit_code == cli.EXIT_FAILED
    assert result.stderr.splitlines() == [
        "shard 'c' primary: at revision 0001, unlike the other shards ('a', 'b'"
        " at 0002): every shard should be at the same revision",
        "6 of 6 nodes reachable.",
    ]
    # Two shards, two revisions: which one is behind cannot be told.
    app = make_shard_app(
        PARTITION_SHARDS={"b": "sqlite:///b.db", "c": "sqlite:///c.db"}
    )
    code, data = status(app)
    assert code == cli.EXIT_FAILED
    assert primaries(data)["b"]["revision_error"] == (
        "at revision 0002, unlike the other shards ('c' at 0001): every shard"
        " should be at the same revision"
    )
    assert primaries(data)["c"]["revision_error"] is not None


def test_unreadable_migrations_folder(
    make_shard_app: ShardAppFactory, tmp_path: pathlib.Path
) -> None:
    app = make_shard_app()
    Migrate(app, sdb, directory=str(tmp_path / "nowhere"))
    result = partition(app, "status")
    assert result.exit_code == 0, result.output
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"Migrations: cannot read {str(tmp_path / 'nowhere')!r}")
    assert line.endswith("; the shards are only compared with each other.")
    assert "CommandError: Path doesn't exist" in line
    code, data = status(app)
    assert data["migrations"]["heads"] is None
    assert data["migrations"]["error"].startswith("CommandError: ")


def test_status_reads_the_configured_version_table(
    make_shard_app: ShardAppFactory, tmp_path: pathlib.Path
) -> None:
    app = empty_app(make_shard_app)
    Migrate(app, sdb, directory=str(tmp_path / "migrations"), version_table="schema")
    flask_db(app, "init", "--multidb")
    flask_db(app, "migrate", "-m", "initial")
    flask_db(app, "upgrade")
    revision = next((tmp_path / "migrations" / "versions").glob("*.py")).name[:12]
    assert tables(tmp_path / "a.db") == {"schema", *SHARD_TABLES}
    code, data = status(app)
    assert code == 0
    assert [v["revisions"] for v in primaries(data).values()] == [[revision]] * 5
