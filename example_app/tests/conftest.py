"""Fixtures for the shop's tests.

``app`` is the shop on SQLite files in a temporary folder; pytest-flask's
``client`` and the ``runner`` fixture use it. Note that pytest-flask pushes a
request context for every test using ``app``, so the requests a test makes
with ``client`` share that context's ``db.session``: a request after a write
reads the written cluster from its primary. The helpers below set data up in
their own application context, as a separate request would.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import typing as t
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskCliRunner

from example_app import create_app
from example_app import shop
from example_app.models import Customer
from example_app.models import db
from example_app.tests.shop_support import dispose
from example_app.tests.shop_support import FILES
from example_app.tests.shop_support import sqlite_config_in
from flask_partition import use_primary

Rows = t.Callable[[str, str], list[tuple[t.Any, ...]]]
AddCustomer = t.Callable[..., int]
PlaceOrder = t.Callable[..., uuid.UUID]


@pytest.fixture(autouse=True)
def _no_partition_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The developer's own ``PARTITION_*`` variables must not leak in."""
    for name in list(os.environ):
        if name.startswith("PARTITION_") and not name.startswith("PARTITION_PG_"):
            monkeypatch.delenv(name)


@pytest.fixture
def app(tmp_path: Path) -> t.Iterator[Flask]:
    app = create_app({"TESTING": True, **sqlite_config_in(tmp_path)})
    yield app
    dispose(app)


@pytest.fixture
def runner(app: Flask) -> FlaskCliRunner:
    """Run the app's CLI commands, as in Flask's tutorial."""
    return app.test_cli_runner()


@pytest.fixture
def rows(tmp_path: Path) -> Rows:
    """Query a database file directly, bypassing Flask-Partition:
    ``rows("audit", "SELECT action FROM audit_event")``.
    """

    def query(name: str, sql: str) -> list[tuple[t.Any, ...]]:
        assert name in FILES, name
        path = tmp_path / f"{name}.db"
        with contextlib.closing(sqlite3.connect(path)) as connection:
            return connection.execute(sql).fetchall()

    return query


@pytest.fixture
def add_customer(app: Flask) -> AddCustomer:
    """Add a customer in an application context of its own, so the test's
    session has not written anything; return the id. With ``shard``, the
    customer gets the lowest free id whose orders live on that shard.
    """

    def add(name: str = "Ada", email: str | None = None, *, shard: str = "") -> int:
        with app.app_context():
            if not shard:
                return shop.create_customer(name, email).id
            with use_primary():
                taken = set(db.session.scalars(sa.select(Customer.id)))
            customer_id = next(
                cid
                for cid in range(1, 10_000)
                if cid not in taken and shop.shard_of_customer(cid) == shard
            )
            db.session.add(Customer(id=customer_id, name=name, email=email))
            db.session.commit()
            return customer_id

    return add


@pytest.fixture
def place_order(app: Flask) -> PlaceOrder:
    """Place an order in an application context of its own; return its id.
    ``quantities`` default to one of product 1.
    """

    def place(customer_id: int, quantities: dict[int, int] | None = None) -> uuid.UUID:
        with app.app_context(), use_primary():
            return shop.place_order(customer_id, quantities or {1: 1}).id

    return place
