from __future__ import annotations

import contextlib
import json
import sqlite3
import typing as t
from pathlib import Path

import pytest
from flask import Flask

from example_app import config_from_environ
from example_app import create_app
from example_app import money
from example_app import shop
from example_app.models import db
from example_app.tests.shop_support import dispose
from example_app.tests.shop_support import sqlite_config_in


@pytest.fixture
def make_app() -> t.Iterator[t.Callable[..., Flask]]:
    """Call ``create_app`` and dispose the engines of each app afterwards."""
    apps: list[Flask] = []

    def make(test_config: t.Mapping[str, t.Any] | None = None) -> Flask:
        app = create_app(test_config)
        apps.append(app)
        return app

    yield make
    for app in apps:
        dispose(app)


def tables(path: Path) -> set[str]:
    with contextlib.closing(sqlite3.connect(path)) as connection:
        result = connection.execute("SELECT name FROM sqlite_master WHERE type='table'")
        return {name for (name,) in result}


def sqlite_uri(path: Path) -> str:
    return f"sqlite:///{path}"


@pytest.fixture
def environ(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    """Point the ``PARTITION_*`` variables at SQLite files in ``tmp_path``,
    in the JSON forms.
    """
    config = sqlite_config_in(tmp_path / "env")
    (tmp_path / "env").mkdir()
    audit = config["PARTITION_BINDS"]["audit"]["primary"]
    shards = config["PARTITION_SHARDS"]
    values = {
        "PARTITION_DATABASE_URI": config["PARTITION_DATABASE_URI"],
        "PARTITION_REPLICAS": json.dumps(config["PARTITION_REPLICAS"]),
        "PARTITION_BINDS": json.dumps({"audit": {"primary": audit, "replicas": []}}),
        "PARTITION_SHARDS": json.dumps(
            {name: shard["primary"] for name, shard in shards.items()}
        ),
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


def test_testing_flag(
    environ: dict[str, str], make_app: t.Callable[..., Flask]
) -> None:
    assert not make_app().testing
    assert make_app({"TESTING": True}).testing


def test_config_from_environment(
    environ: dict[str, str], make_app: t.Callable[..., Flask], tmp_path: Path
) -> None:
    app = make_app()
    folder = tmp_path / "env"
    shop_uri = sqlite_uri(folder / "shop.db")
    assert app.config["PARTITION_DATABASE_URI"] == shop_uri
    assert app.config["PARTITION_REPLICAS"] == [shop_uri]
    assert app.config["PARTITION_BINDS"] == {
        "audit": {"primary": sqlite_uri(folder / "audit.db"), "replicas": []}
    }
    assert app.config["PARTITION_SHARDS"] == {
        "eu": sqlite_uri(folder / "orders-eu.db"),
        "us": sqlite_uri(folder / "orders-us.db"),
    }
    router = db.get_router(app)
    assert len(router.default.replicas) == 1
    assert router.clusters["audit"].replicas == ()
    assert list(router.shards) == ["eu", "us"]
    # Every primary is SQLite: create_app created each table in its database
    # and added the demo products.
    assert tables(folder / "shop.db") == {"customer", "product"}
    assert tables(folder / "audit.db") == {"audit_event"}
    assert tables(folder / "orders-eu.db") == {"order", "order_line"}
    assert tables(folder / "orders-us.db") == {"order", "order_line"}
    with contextlib.closing(sqlite3.connect(folder / "shop.db")) as connection:
        names = connection.execute("SELECT name FROM product ORDER BY id").fetchall()
    assert [name for (name,) in names] == [p[0] for p in shop.DEMO_PRODUCTS]


def test_environment_replaces_every_sqlite_default(
    monkeypatch: pytest.MonkeyPatch, make_app: t.Callable[..., Flask], tmp_path: Path
) -> None:
    monkeypatch.setenv("PARTITION_DATABASE_URI", sqlite_uri(tmp_path / "only.db"))
    with pytest.raises(RuntimeError) as info:
        make_app()
    assert str(info.value) == (
        "The shop needs a bind 'audit' in 'PARTITION_BINDS' and shards in"
        " 'PARTITION_SHARDS'. Set them along with 'PARTITION_DATABASE_URI' (the"
        " output of 'flask --app example_app partition dev-cluster' sets all of"
        " them), or unset 'PARTITION_DATABASE_URI' to use SQLite files in the"
        " instance folder."
    )


def test_test_config_overrides_environment(
    environ: dict[str, str], make_app: t.Callable[..., Flask], tmp_path: Path
) -> None:
    shop_uri = sqlite_uri(tmp_path / "test-shop.db")
    app = make_app({"PARTITION_DATABASE_URI": shop_uri, "PARTITION_REPLICAS": []})
    assert app.config["PARTITION_DATABASE_URI"] == shop_uri
    assert app.config["PARTITION_REPLICAS"] == []
    assert app.config["PARTITION_BINDS"]["audit"]["primary"].endswith("/env/audit.db")
    assert tables(tmp_path / "test-shop.db") == {"customer", "product"}


def test_tables_are_created_only_when_asked(
    make_app: t.Callable[..., Flask], tmp_path: Path
) -> None:
    make_app({**sqlite_config_in(tmp_path), "SHOP_CREATE_TABLES": False})
    # The primaries' files exist (a read-only replica needs one), but empty.
    assert tables(tmp_path / "shop.db") == set()
    assert tables(tmp_path / "orders-eu.db") == set()


def test_config_from_environ_pairs_and_lists() -> None:
    environ = {
        "PARTITION_DATABASE_URI": "postgresql+psycopg://app@db1/app",
        "PARTITION_REPLICAS": (
            " postgresql+psycopg://app@r1/app, postgresql+psycopg://app@r2/app ,"
        ),
        "PARTITION_BINDS": "audit=postgresql+psycopg://app@db2/audit?sslmode=require",
        "PARTITION_SHARDS": (
            "eu=postgresql+psycopg://app@eu1/app, us=postgresql+psycopg://app@us1/app"
        ),
        "PARTITION_REPLICA_POLICY": "random",
        "PARTITION_SCATTER_WORKERS": "12",
        "PARTITION_ENGINE_OPTIONS": '{"pool_pre_ping": true}',
        "PARTITION_PG_BINDIR": "/usr/lib/postgresql/15/bin",
        "UNRELATED": "x",
    }
    assert config_from_environ(environ) == {
        "PARTITION_DATABASE_URI": "postgresql+psycopg://app@db1/app",
        "PARTITION_REPLICAS": [
            "postgresql+psycopg://app@r1/app",
            "postgresql+psycopg://app@r2/app",
        ],
        "PARTITION_BINDS": {
            "audit": "postgresql+psycopg://app@db2/audit?sslmode=require"
        },
        "PARTITION_SHARDS": {
            "eu": "postgresql+psycopg://app@eu1/app",
            "us": "postgresql+psycopg://app@us1/app",
        },
        "PARTITION_REPLICA_POLICY": "random",
        "PARTITION_SCATTER_WORKERS": 12,
        "PARTITION_ENGINE_OPTIONS": {"pool_pre_ping": True},
    }


def test_config_from_environ_empty_values_and_audit_shortcut() -> None:
    config = config_from_environ(
        {
            "PARTITION_REPLICAS": "",
            "PARTITION_BINDS": '{"other": "sqlite:///other.db"}',
            "PARTITION_SHARDS": "",
            "PARTITION_AUDIT_URI": "sqlite:///audit.db",
        }
    )
    assert config == {
        "PARTITION_REPLICAS": [],
        "PARTITION_BINDS": {
            "other": "sqlite:///other.db",
            "audit": "sqlite:///audit.db",
        },
        "PARTITION_SHARDS": {},
    }
    assert config_from_environ({}) == {}


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        (
            "PARTITION_SHARDS",
            '{"eu": "postgresql://app:s3cret@eu1/app"',
            "The environment variable 'PARTITION_SHARDS' must be a JSON object,"
            ' got \'{"eu": "postgresql://app:***@eu1/app"\'.',
        ),
        (
            "PARTITION_BINDS",
            "postgresql://app:s3cret@db2/audit",
            "The environment variable 'PARTITION_BINDS' must be a JSON object or"
            " 'name=uri' pairs separated by commas, got"
            " 'postgresql://app:***@db2/audit'.",
        ),
        (
            "PARTITION_REPLICAS",
            '["postgresql://app:s3cret@r1/app"',
            "The environment variable 'PARTITION_REPLICAS' must be a JSON list of"
            " URIs, got '[\"postgresql://app:***@r1/app\"'.",
        ),
        (
            "PARTITION_ENGINE_OPTIONS",
            "[1]",
            "The environment variable 'PARTITION_ENGINE_OPTIONS' must be a JSON"
            " object, got '[1]'.",
        ),
        (
            "PARTITION_SCATTER_WORKERS",
            "many",
            "The environment variable 'PARTITION_SCATTER_WORKERS' must be an"
            " integer, got 'many'.",
        ),
    ],
)
def test_config_from_environ_errors(name: str, value: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        config_from_environ({name: value})
    assert str(info.value) == message
    assert "s3cret" not in str(info.value)


def test_money() -> None:
    assert money(2400) == "24.00"
    assert money(123456789) == "1,234,567.89"
    assert money(None) == "0.00"
