"""Helpers for the shop's tests, importable from test modules."""

from __future__ import annotations

import os
import shutil
import sys
import typing as t
from pathlib import Path

from flask import Flask

from example_app import sqlite_config
from example_app.models import db
from flask_partition.testing import require_postgres as require_postgres

#: The SQLite files of the embedded setup, by short name.
FILES = ("shop", "audit", "orders-eu", "orders-us")


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


def copy_example(folder: Path) -> dict[str, str]:
    """Copy the ``example_app`` package (without its tests) into ``folder``
    and return an environment that runs ``flask --app example_app`` from
    there: its instance folder is then ``folder / "instance"``, and no
    ``PARTITION_*`` variable of the developer leaks in.
    """
    source = Path(__file__).resolve().parent.parent
    shutil.copytree(
        source,
        folder / "example_app",
        ignore=shutil.ignore_patterns("tests", "__pycache__", "instance"),
    )
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("PARTITION_", "FLASK_"))
        or name.startswith("PARTITION_PG_")
    }
    env["PYTHONPATH"] = str(folder)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def flask_command() -> str:
    """The ``flask`` executable of the running interpreter's environment."""
    candidate = Path(sys.executable).with_name("flask")
    return str(candidate) if candidate.exists() else "flask"
