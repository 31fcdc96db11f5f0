"""Helpers for the tests that run Flask-Migrate and Alembic."""

from __future__ import annotations

import contextlib
import logging
import pathlib
import re
import typing as t

from alembic.config import Config
from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from click.testing import Result
from flask import Flask

from flask_partition import PartitionDB


@contextlib.contextmanager
def preserved_logging() -> t.Iterator[None]:
    """Undo what Alembic's ``env.py`` does to logging: it calls
    ``logging.config.fileConfig``, which replaces the root handlers and
    disables every other logger.
    """
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    loggers = {
        name: (logger.disabled, logger.level, logger.handlers[:], logger.propagate)
        for name, logger in logging.Logger.manager.loggerDict.items()
        if isinstance(logger, logging.Logger)
    }
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        for name, logger in logging.Logger.manager.loggerDict.items():
            if not isinstance(logger, logging.Logger):
                continue
            if name in loggers:
                disabled, level, handlers, propagate = loggers[name]
                logger.disabled, logger.propagate = disabled, propagate
                logger.setLevel(level)
                logger.handlers[:] = handlers
            else:
                logger.handlers.clear()


def flask_db(app: Flask, *args: str) -> str:
    """Run ``flask db ARGS``, which must succeed; return its output."""
    result = app.test_cli_runner().invoke(args=["db", *args])
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output


def partition(app: Flask, *args: str) -> Result:
    """Run ``flask partition ARGS``."""
    return app.test_cli_runner().invoke(args=["partition", *args])


def function_body(source: str, name: str) -> str:
    """The body of the top-level function ``name`` in a revision script."""
    match = re.search(
        rf"^def {re.escape(name)}\(\):\n(.*?)(?=^def |\Z)", source, re.M | re.S
    )
    assert match, f"no function {name!r}"
    return match.group(1).strip()


def downgrade_alone(
    app: Flask, db: PartitionDB, directory: pathlib.Path, name: str | None
) -> str:
    """Downgrade one database by one revision, leaving the others alone, as a
    failed or partial deployment would; return the revision it is at now.

    Flask-Migrate's multi-database ``env.py`` always migrates every database,
    so this runs the revision's ``downgrade_<name>()`` with Alembic's API.
    """
    config = Config()
    config.set_main_option("script_location", str(directory))
    script = ScriptDirectory.from_config(config)
    with app.app_context():
        engine = db.get_engine(bind=name)
        with engine.begin() as conn:
            context = MigrationContext.configure(conn)
            (current,) = context.get_current_heads()
            revision = script.get_revision(current)
            assert revision is not None
            downgrade = getattr(revision.module, f"downgrade_{name or ''}")
            with Operations.context(context):
                downgrade()
            target = revision.down_revision
            assert target is None or isinstance(target, str)
            context.stamp(script, target or "base")
    return target or "base"
