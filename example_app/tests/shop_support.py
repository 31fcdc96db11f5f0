"""Helpers for the shop's tests, importable from test modules."""

from __future__ import annotations

import os
import typing as t
from pathlib import Path

import pytest
from flask import Flask

from example_app import sqlite_config
from example_app.models import db

#: The SQLite files of the embedded setup, by short name.
FILES = ("shop", "audit", "orders-eu", "orders-us")


def require_postgres() -> None:
    """Skip the calling test when PostgreSQL cannot run here; in CI fail it
    instead, so a missing server never passes silently.
    """
    from flask_partition.testing import unavailable_reason

    reason = unavailable_reason()
    if reason is None:
        return
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI needs PostgreSQL: {reason}")
    pytest.skip(reason)


def sqlite_config_in(folder: Path) -> dict[str, t.Any]:
    """The shop's embedded config with every SQLite file in ``folder``."""

    def move(value: t.Any) -> t.Any:
        if isinstance(value, str):
            return value.replace("sqlite:///", f"sqlite:///{folder}/")
        if isinstance(value, list):
            return [move(item) for item in value]
        if isinstance(value, dict):
            return {key: move(item) for key, item in value.items()}
        return value

    return {key: move(value) for key, value in sqlite_config().items()}


def dispose(app: Flask) -> None:
    """Close the pooled connections of every engine of ``app``."""
    for engine in db.get_router(app).engines():
        engine.dispose()
