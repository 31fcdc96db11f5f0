"""Flask-Migrate's single- and multi-database templates run ``flask db init``,
``migrate``, ``upgrade`` and ``downgrade`` against the blog of
:mod:`fsa_blog` moved to Flask-Partition, configured with Flask-SQLAlchemy's
keys or with Flask-Partition's (a read-only SQLite replica included).
"""

from __future__ import annotations

import pathlib
import sqlite3
import typing as t

import pytest
from flask import Flask
from flask_migrate import Migrate

from alembic_support import flask_db
from alembic_support import preserved_logging
from blog_support import partition_blog

BLOG_TABLES = {"comment", "post", "post_tag", "tag", "user"}
FAMILIES = ["sqlalchemy", "partition"]


@pytest.fixture(autouse=True)
def _restore_logging() -> t.Iterator[None]:
    with preserved_logging():
        yield


def _tables(path: pathlib.Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        return {row[0] for row in rows}


def _app(folder: pathlib.Path, family: str, *, bind: bool) -> Flask:
    blog = partition_blog()
    app_db, audit_db = folder / "app.db", folder / "audit.db"
    if family == "sqlalchemy":
        config: dict[str, t.Any] = {
            "SQLALCHEMY_DATABASE_URI": f"sqlite:///{app_db}",
            "SQLALCHEMY_BINDS": {"audit": f"sqlite:///{audit_db}"} if bind else None,
        }
    else:
        config = {
            "SQLALCHEMY_DATABASE_URI": None,
            "SQLALCHEMY_BINDS": None,
            "PARTITION_DATABASE_URI": f"sqlite:///{app_db}",
            "PARTITION_REPLICAS": [f"sqlite:///{app_db}"],  # read-only
            "PARTITION_BINDS": (
                {"audit": {"primary": f"sqlite:///{audit_db}"}} if bind else None
            ),
        }
    app: Flask = blog.create_app({"TESTING": True, **config})
    Migrate(app, blog.db)
    return app


def _dispose(app: Flask) -> None:
    for engine in partition_blog().db.get_router(app).engines():
        engine.dispose()


@pytest.mark.parametrize("family", FAMILIES)
def test_single_database_template(tmp_path: pathlib.Path, family: str) -> None:
    app = _app(tmp_path, family, bind=False)
    migrations = str(tmp_path / "migrations")
    try:
        flask_db(app, "init", "-d", migrations)
        assert (tmp_path / "migrations" / "env.py").exists()
        output = flask_db(app, "migrate", "-d", migrations, "-m", "blog")
        for table in BLOG_TABLES:
            assert f"Detected added table '{table}'" in output
        (script,) = (tmp_path / "migrations" / "versions").glob("*_blog.py")
        assert "op.create_table('post_tag'" in script.read_text()
        assert _tables(tmp_path / "app.db") == {"alembic_version"}
        flask_db(app, "upgrade", "-d", migrations)
        assert _tables(tmp_path / "app.db") == {"alembic_version", *BLOG_TABLES}
        output = flask_db(app, "migrate", "-d", migrations)
        assert "No changes in schema detected." in output
        flask_db(app, "downgrade", "-d", migrations)
        assert _tables(tmp_path / "app.db") == {"alembic_version"}
    finally:
        _dispose(app)


@pytest.mark.parametrize("family", FAMILIES)
def test_multiple_database_template(tmp_path: pathlib.Path, family: str) -> None:
    app = _app(tmp_path, family, bind=True)
    migrations = str(tmp_path / "migrations")
    try:
        flask_db(app, "init", "--multidb", "-d", migrations)
        output = flask_db(app, "migrate", "-d", migrations, "-m", "blog")
        assert "Detected added table 'audit_log'" in output
        (script,) = (tmp_path / "migrations" / "versions").glob("*_blog.py")
        source = script.read_text()
        assert "def upgrade_audit():" in source
        assert "op.create_table('audit_log'" in source
        flask_db(app, "upgrade", "-d", migrations)
        assert _tables(tmp_path / "app.db") == {"alembic_version", *BLOG_TABLES}
        assert _tables(tmp_path / "audit.db") == {"alembic_version", "audit_log"}
        blog = partition_blog()
        with app.app_context():  # the app works on the migrated databases
            blog.db.session.add(blog.AuditLog(action="migrated", detail="ok"))
            blog.db.session.commit()
            assert blog.db.session.scalars(
                blog.db.select(blog.AuditLog.detail)
            ).all() == ["ok"]
        flask_db(app, "downgrade", "-d", migrations)
        assert _tables(tmp_path / "app.db") == {"alembic_version"}
        assert _tables(tmp_path / "audit.db") == {"alembic_version"}
    finally:
        _dispose(app)
