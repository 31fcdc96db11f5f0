"""A small shop on Flask-Partition: customers on a primary with a read
replica, audit events in their own database.

Run it with ``flask --app example_app run``; the SQLite files are created in
the instance folder.
"""

from __future__ import annotations

import os
import typing as t

from flask import Flask

from .models import db


def create_app(test_config: t.Mapping[str, t.Any] | None = None) -> Flask:
    """Create and configure the app.

    Configuration comes, in increasing priority, from the SQLite defaults,
    the environment variables ``PARTITION_DATABASE_URI``,
    ``PARTITION_REPLICAS`` (comma-separated) and ``PARTITION_AUDIT_URI``, and
    ``test_config``.

    :param test_config: Config that overrides everything else, for tests.
    """
    app = Flask(__name__, instance_relative_config=True)
    # Relative SQLite paths resolve in the instance folder. The replica is the
    # primary's file, which Flask-Partition opens read-only.
    app.config.from_mapping(
        PARTITION_DATABASE_URI="sqlite:///shop.db",
        PARTITION_REPLICAS=["sqlite:///shop.db"],
        PARTITION_BINDS={"audit": "sqlite:///audit.db"},
    )
    app.config.update(_config_from_environ(os.environ))
    if test_config is not None:
        app.config.from_mapping(test_config)

    os.makedirs(app.instance_path, exist_ok=True)

    db.init_app(app)

    from . import views

    app.register_blueprint(views.bp)

    with app.app_context():
        db.create_all()

    return app


def _config_from_environ(environ: t.Mapping[str, str]) -> dict[str, t.Any]:
    config: dict[str, t.Any] = {}
    if "PARTITION_DATABASE_URI" in environ:
        config["PARTITION_DATABASE_URI"] = environ["PARTITION_DATABASE_URI"]
    if "PARTITION_REPLICAS" in environ:
        config["PARTITION_REPLICAS"] = [
            uri.strip()
            for uri in environ["PARTITION_REPLICAS"].split(",")
            if uri.strip()
        ]
    if "PARTITION_AUDIT_URI" in environ:
        config["PARTITION_BINDS"] = {"audit": environ["PARTITION_AUDIT_URI"]}
    return config
