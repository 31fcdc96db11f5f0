from __future__ import annotations

import contextlib
import sqlite3
import typing as t
from pathlib import Path

import pytest
from flask import Flask

from example_app import create_app
from example_app.models import Customer
from example_app.models import db

Rows = t.Callable[[str, str], list[tuple[t.Any, ...]]]


@pytest.fixture
def db_paths(tmp_path: Path) -> dict[str, Path]:
    """The SQLite files of the default cluster and of the audit bind."""
    return {"shop": tmp_path / "shop.db", "audit": tmp_path / "audit.db"}


@pytest.fixture
def app(db_paths: dict[str, Path]) -> t.Iterator[Flask]:
    shop = f"sqlite:///{db_paths['shop']}"
    app = create_app(
        {
            "TESTING": True,
            "PARTITION_DATABASE_URI": shop,
            "PARTITION_REPLICAS": [shop],
            "PARTITION_BINDS": {"audit": f"sqlite:///{db_paths['audit']}"},
        }
    )
    yield app
    for engine in db.get_router(app).engines():
        engine.dispose()


@pytest.fixture
def rows(db_paths: dict[str, Path]) -> Rows:
    """Query a database file directly, bypassing Flask-Partition:
    ``rows("audit", "SELECT action FROM audit_event")``.
    """

    def query(name: str, sql: str) -> list[tuple[t.Any, ...]]:
        with contextlib.closing(sqlite3.connect(db_paths[name])) as connection:
            return connection.execute(sql).fetchall()

    return query


@pytest.fixture
def add_customers(app: Flask) -> t.Callable[..., list[int]]:
    """Insert customers in their own app context and return their ids, so
    the test's own session has not written anything yet.
    """

    def add(*names: str) -> list[int]:
        with app.app_context():
            customers = [Customer(name=name) for name in names]
            db.session.add_all(customers)
            db.session.commit()
            return [customer.id for customer in customers]

    return add
