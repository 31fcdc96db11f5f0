from __future__ import annotations

import contextlib
import sqlite3
import typing as t
from pathlib import Path

import pytest
from flask import Flask

from example_app import create_app
from example_app.models import db


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
        for engine in db.get_router(app).engines():
            engine.dispose()


@pytest.fixture
def environ(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    """Point every ``PARTITION_*`` environment variable into ``tmp_path``."""
    shop = f"sqlite:///{tmp_path / 'env-shop.db'}"
    values = {
        "PARTITION_DATABASE_URI": shop,
        "PARTITION_REPLICAS": f"{shop}, {shop}",
        "PARTITION_AUDIT_URI": f"sqlite:///{tmp_path / 'env-audit.db'}",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


def tables(path: Path) -> set[str]:
    with contextlib.closing(sqlite3.connect(path)) as connection:
        result = connection.execute("SELECT name FROM sqlite_master WHERE type='table'")
        return {name for (name,) in result}


def test_testing_flag(
    environ: dict[str, str], make_app: t.Callable[..., Flask]
) -> None:
    assert not make_app().testing
    assert make_app({"TESTING": True}).testing


def test_config_from_environment(
    environ: dict[str, str], make_app: t.Callable[..., Flask], tmp_path: Path
) -> None:
    app = make_app()
    shop = environ["PARTITION_DATABASE_URI"]
    assert app.config["PARTITION_DATABASE_URI"] == shop
    assert app.config["PARTITION_REPLICAS"] == [shop, shop]
    assert app.config["PARTITION_BINDS"] == {"audit": environ["PARTITION_AUDIT_URI"]}
    assert len(db.get_router(app).default.replicas) == 2
    # create_app created every table, each in its own database.
    assert tables(tmp_path / "env-shop.db") == {"customer"}
    assert tables(tmp_path / "env-audit.db") == {"audit_event"}


def test_empty_replicas_variable_means_no_replica(
    environ: dict[str, str],
    make_app: t.Callable[..., Flask],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PARTITION_REPLICAS", "")
    app = make_app()
    assert app.config["PARTITION_REPLICAS"] == []
    assert db.get_router(app).default.replicas == ()


def test_test_config_overrides_environment(
    environ: dict[str, str], make_app: t.Callable[..., Flask], tmp_path: Path
) -> None:
    shop = f"sqlite:///{tmp_path / 'test-shop.db'}"
    app = make_app({"PARTITION_DATABASE_URI": shop, "PARTITION_REPLICAS": []})
    assert app.config["PARTITION_DATABASE_URI"] == shop
    assert app.config["PARTITION_REPLICAS"] == []
    assert app.config["PARTITION_BINDS"] == {"audit": environ["PARTITION_AUDIT_URI"]}
    assert tables(tmp_path / "test-shop.db") == {"customer"}
